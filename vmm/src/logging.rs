//! The process's logger behind the `log` facade, with QEMU's spellings: `-d ITEMS` picks
//! the categories (`guest_errors`, `unimp`, `trace:PATTERN`), `-D FILE` where they go
//! (stderr without it), `-trace [enable=]PATTERN|events=FILE|file=FILE` the trace events
//! (the names in `devices::logging::TRACE_EVENTS` and [`VMM_TRACE_EVENTS`]). Errors and
//! warnings of machina's own crates always reach stderr as QEMU's error_report writes them
//! (`machina: ...`, with the `-msg` prefixes); other crates' records are dropped, since the
//! device models report those conditions themselves, naming the device.

use devices::logging::{GUEST_ERRORS, TRACE_EVENTS, TRACE_PREFIX, UNIMP};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Trace events the VMM itself emits (QEMU's names).
pub const VMM_TRACE_EVENTS: &[&str] = &["kvm_set_ioeventfd_mmio", "kvm_set_ioeventfd_pio"];

/// `-d` items machina has, with QEMU's help texts.
const ITEMS: &[(&str, &str)] = &[
    ("unimp", "log unimplemented functionality"),
    (
        "guest_errors",
        "log when the guest OS does something invalid (eg accessing a\nnon-existent register)",
    ),
];

/// The logging options of the command line, as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// `-d ITEMS` (the last one counts, as in QEMU).
    pub items: Option<String>,
    /// `-D FILE`.
    pub file: Option<PathBuf>,
    /// `-trace` arguments, in order.
    pub trace: Vec<String>,
}

/// What setting up the logger decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Setup {
    /// Go on running.
    Run,
    /// A help text was printed on stdout: exit with this status (`-d help`: 1, as QEMU).
    Exit(u8),
}

/// `-msg timestamp=on,guest-name=on`: the prefix of error messages, set once options are
/// parsed (option errors themselves come before it, as in QEMU).
static MSG_PREFIX: OnceLock<(bool, Option<String>)> = OnceLock::new();

/// Set the `-msg` prefixes of error messages (`timestamp=on`, the guest name).
pub fn set_message_prefix(timestamp: bool, guest_name: Option<String>) {
    let _ = MSG_PREFIX.set((timestamp, guest_name));
}

/// Now as QEMU's `real_time_iso8601` writes it: `2026-12-06T07:49:04.754995Z`.
fn iso8601_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    // Howard Hinnant's civil_from_days.
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let t = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        t / 3600,
        t / 60 % 60,
        t % 60,
        now.subsec_micros()
    )
}

/// Print an error as QEMU's error_report does, with the -msg prefixes.
pub fn report_error(message: &str) {
    let mut prefix = String::new();
    if let Some((timestamp, guest)) = MSG_PREFIX.get() {
        if *timestamp {
            prefix = format!("{} ", iso8601_now());
        }
        if let Some(name) = guest {
            prefix.push_str(name);
            prefix.push(' ');
        }
    }
    eprintln!("{prefix}machina: {message}");
}

/// `-d help`, and what an unknown item prints (QEMU's qemu_print_log_usage).
pub fn usage() -> String {
    let mut text = String::from("Log items (comma separated):\n");
    for (name, help) in ITEMS {
        text.push_str(&format!("{name:<15} {help}\n"));
    }
    text.push_str("trace:PATTERN   enable trace events\n");
    text.push_str("\nUse \"-d trace:help\" to get a list of trace events.\n\n");
    text
}

/// Every trace event name, sorted (`-trace help`).
pub fn trace_events() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = TRACE_EVENTS
        .iter()
        .chain(VMM_TRACE_EVENTS)
        .copied()
        .collect();
    all.sort_unstable();
    all
}

/// glib's g_pattern_match_simple: `*` any run, `?` one character.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.split_first(), name.split_first()) {
        (None, _) => name.is_empty(),
        (Some((b'*', rest)), _) => {
            glob(rest, name) || name.split_first().is_some_and(|(_, n)| glob(pattern, n))
        }
        (Some((b'?', rest)), Some((_, n))) => glob(rest, n),
        (Some((p, rest)), Some((c, n))) if p == c => glob(rest, n),
        _ => false,
    }
}

/// What the options decided, before anything is installed.
#[derive(Debug, Default, PartialEq, Eq)]
struct Decided {
    guest_errors: bool,
    unimp: bool,
    events: BTreeSet<&'static str>,
    file: Option<PathBuf>,
    /// Warnings to print (QEMU goes on after them).
    warnings: Vec<String>,
    /// A help text to print on stdout, then exit with the status.
    exit: Option<(String, u8)>,
}

impl Decided {
    /// QEMU's do_trace_enable_events: `-` disables; a name that is not a pattern must exist.
    fn enable_events(&mut self, line: &str, location: &str) {
        if line == "help" || line == "?" {
            let mut text = String::new();
            for name in trace_events() {
                text.push_str(name);
                text.push('\n');
            }
            self.exit.get_or_insert((text, 0));
            return;
        }
        let (enable, pattern) = match line.strip_prefix('-') {
            Some(p) => (false, p),
            None => (true, line),
        };
        let is_pattern = pattern.contains(['*', '?']);
        let mut found = false;
        for name in trace_events() {
            if glob(pattern.as_bytes(), name.as_bytes()) {
                found = true;
                if enable {
                    self.events.insert(name);
                } else {
                    self.events.remove(name);
                }
            }
        }
        if !found && !is_pattern {
            self.warnings.push(format!(
                "{location}warning: trace event '{pattern}' does not exist"
            ));
        }
    }

    /// `-d ITEMS`: false for an unknown item (QEMU then prints the usage and exits 1).
    fn items(&mut self, items: &str) -> bool {
        let mut any = false;
        for item in items.split(',') {
            match item {
                "all" => {
                    self.guest_errors = true;
                    self.unimp = true;
                }
                "guest_errors" => self.guest_errors = true,
                "unimp" => self.unimp = true,
                _ => match item.strip_prefix("trace:") {
                    Some(pattern) if !pattern.is_empty() => self.enable_events(pattern, ""),
                    _ => return false,
                },
            }
            any = true;
        }
        any
    }

    /// One `-trace` argument: `[enable=]PATTERN`, `events=FILE`, `file=FILE`.
    fn trace_option(&mut self, value: &str) -> Result<(), String> {
        let location = format!("-trace {value}: ");
        let mut enable = None;
        let mut events = None;
        for (i, item) in crate::cli::split_keyval(value).into_iter().enumerate() {
            match item.split_once('=') {
                Some(("enable", v)) => enable = Some(v.to_string()),
                Some(("events", v)) => events = Some(v.to_string()),
                Some(("file", v)) => self.file = Some(PathBuf::from(v)),
                Some((k, _)) => return Err(format!("-trace {value}: Invalid parameter '{k}'")),
                None if i == 0 => enable = Some(item),
                None => return Err(format!("-trace {value}: Invalid parameter '{item}'")),
            }
        }
        if let Some(pattern) = enable {
            self.enable_events(&pattern, &location);
        }
        if let Some(path) = events {
            self.events_file(Path::new(&path))?;
        }
        Ok(())
    }

    /// QEMU's trace_init_events: one pattern a line, `#` comments, empty lines skipped.
    fn events_file(&mut self, path: &Path) -> Result<(), String> {
        let text = std::fs::read(path)
            .map_err(|e| format!("{}: {}", path.display(), crate::daemon::strerror(&e)))?;
        for (n, line) in String::from_utf8_lossy(&text).lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            self.enable_events(line, &format!("{}:{}: ", path.display(), n + 1));
        }
        Ok(())
    }
}

/// Decide what `opts` asks for: QEMU processes `-trace` first, then `-d`.
fn decide(opts: &LogOptions) -> Result<Decided, String> {
    let mut d = Decided::default();
    for value in &opts.trace {
        let file = d.file.take();
        d.trace_option(value)?;
        // `-trace file=` names the log file (QEMU's log backend); it wins over -D.
        if d.file.is_none() {
            d.file = file;
        }
        if d.exit.is_some() {
            return Ok(d);
        }
    }
    let trace_file = d.file.take();
    if let Some(items) = &opts.items {
        if !d.items(items) {
            d.exit = Some((usage(), 1));
            return Ok(d);
        }
    }
    d.file = trace_file.or_else(|| opts.file.clone());
    Ok(d)
}

/// Open the log file as QEMU does (truncated; one `%d` becomes the pid).
fn open_file(path: &Path) -> Result<std::fs::File, String> {
    let text = path.to_string_lossy();
    let path = match text.find('%') {
        Some(at) if text[at..].starts_with("%d") && !text[at + 2..].contains('%') => {
            PathBuf::from(text.replacen("%d", &std::process::id().to_string(), 1))
        }
        Some(_) => return Err(format!("Bad logfile template: {text}")),
        None => path.to_path_buf(),
    };
    std::fs::File::create(&path).map_err(|e| {
        format!(
            "Error opening logfile {}: {}",
            path.display(),
            crate::daemon::strerror(&e)
        )
    })
}

struct Logger {
    guest_errors: bool,
    unimp: bool,
    events: BTreeSet<&'static str>,
    /// Trace lines as QEMU's log backend with `-msg timestamp=on`: `TID@SECS.USECS:`.
    timestamps: bool,
    /// Where -d and -trace output goes: the -D file, or stderr.
    out: Mutex<Option<std::fs::File>>,
}

/// Crates whose warnings and errors are machina's own messages.
fn ours(target: &str) -> bool {
    ["vmm", "devices", "machine", "qmp", "machina"]
        .iter()
        .any(|c| target == *c || target.starts_with(&format!("{c}::")))
}

impl Logger {
    fn write_line(&self, line: &str) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // A log that cannot be written (a full disk) must not stop a device.
        let _ = match out.as_mut() {
            Some(file) => file.write_all(line.as_bytes()),
            None => std::io::stderr().lock().write_all(line.as_bytes()),
        };
    }
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        match m.target() {
            GUEST_ERRORS => self.guest_errors,
            UNIMP => self.unimp,
            t => match t.strip_prefix(TRACE_PREFIX) {
                Some(event) => self.events.contains(event),
                None => m.level() <= log::Level::Warn && ours(t),
            },
        }
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let target = record.target();
        if let Some(event) = target.strip_prefix(TRACE_PREFIX) {
            let line = if self.timestamps {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                // SAFETY: gettid has no arguments and cannot fail.
                let tid = unsafe { libc::gettid() };
                format!(
                    "{tid}@{}.{:06}:{event} {}\n",
                    now.as_secs(),
                    now.subsec_micros(),
                    record.args()
                )
            } else {
                format!("{event} {}\n", record.args())
            };
            self.write_line(&line);
        } else if target == GUEST_ERRORS || target == UNIMP {
            self.write_line(&format!("{}\n", record.args()));
        } else if record.level() == log::Level::Error {
            report_error(&record.args().to_string());
        } else {
            report_error(&format!("warning: {}", record.args()));
        }
    }

    fn flush(&self) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = out.as_mut() {
            let _ = file.flush();
        }
    }
}

/// Apply the logging options: print what help asks for, open the log file, install the
/// logger. Errors are QEMU's texts.
pub fn setup(opts: &LogOptions, timestamps: bool) -> Result<Setup, String> {
    let d = decide(opts)?;
    if let Some((text, code)) = d.exit {
        print!("{text}");
        return Ok(Setup::Exit(code));
    }
    for w in &d.warnings {
        report_error(w);
    }
    let out = match &d.file {
        Some(path) => Some(open_file(path)?),
        None => None,
    };
    let max = if d.events.is_empty() {
        log::LevelFilter::Warn
    } else {
        log::LevelFilter::Trace
    };
    let logger = Logger {
        guest_errors: d.guest_errors,
        unimp: d.unimp,
        events: d.events,
        timestamps,
        out: Mutex::new(out),
    };
    // Only the first setup of the process installs a logger (the binary calls it once).
    if log::set_logger(Box::leak(Box::new(logger))).is_ok() {
        log::set_max_level(max);
    }
    Ok(Setup::Run)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(items: Option<&str>, trace: &[&str]) -> LogOptions {
        LogOptions {
            items: items.map(str::to_string),
            file: None,
            trace: trace.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn items_as_qemu_parses_them() {
        let d = decide(&opts(Some("guest_errors"), &[])).unwrap();
        assert!(d.guest_errors && !d.unimp && d.exit.is_none());
        let d = decide(&opts(Some("all"), &[])).unwrap();
        assert!(d.guest_errors && d.unimp);
        // Unknown items, `help`, empty items: the usage on stdout, status 1.
        for bad in ["foo", "help", ",", "guest_errors,", "", "trace:"] {
            let d = decide(&opts(Some(bad), &[])).unwrap();
            assert_eq!(d.exit, Some((usage(), 1)), "{bad:?}");
        }
        let d = decide(&opts(Some("unimp,trace:virtio_blk_*"), &[])).unwrap();
        assert!(d.unimp && d.events.contains("virtio_blk_req_complete"));
        assert!(!d.events.contains("virtio_set_status"));
    }

    #[test]
    fn trace_patterns_and_warnings() {
        let d = decide(&opts(None, &["virtio_*", "-virtio_notify"])).unwrap();
        assert!(d.events.contains("virtio_set_status"));
        assert!(!d.events.contains("virtio_notify"));
        assert!(!d.events.contains("pci_cfg_read"));
        let d = decide(&opts(None, &["enable=pci_cfg_?ead", "nosuch"])).unwrap();
        assert_eq!(
            d.events.iter().copied().collect::<Vec<_>>(),
            ["pci_cfg_read"]
        );
        assert_eq!(
            d.warnings,
            ["-trace nosuch: warning: trace event 'nosuch' does not exist"]
        );
        // A pattern that matches nothing is no warning.
        assert!(decide(&opts(None, &["nosuch*"]))
            .unwrap()
            .warnings
            .is_empty());
        assert_eq!(
            decide(&opts(None, &["foo=bar"])).unwrap_err(),
            "-trace foo=bar: Invalid parameter 'foo'"
        );
        let d = decide(&opts(None, &["help"])).unwrap();
        let (text, code) = d.exit.unwrap();
        assert_eq!(code, 0);
        assert!(text.lines().any(|l| l == "virtio_blk_req_complete"));
    }

    #[test]
    fn events_file_and_log_file_choice() {
        let dir = std::env::temp_dir().join(format!("machina-logging-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let events = dir.join("events");
        std::fs::write(&events, "# comment\n\npci_cfg_write\nnosuch\n").unwrap();
        let mut o = opts(None, &[&format!("events={}", events.display())]);
        o.file = Some(dir.join("d.log"));
        let d = decide(&o).unwrap();
        assert_eq!(
            d.events.iter().copied().collect::<Vec<_>>(),
            ["pci_cfg_write"]
        );
        assert_eq!(
            d.warnings,
            [format!(
                "{}:4: warning: trace event 'nosuch' does not exist",
                events.display()
            )]
        );
        assert_eq!(d.file, Some(dir.join("d.log")));
        // `-trace file=` wins over -D.
        o.trace
            .push(format!("file={}", dir.join("t.log").display()));
        assert_eq!(decide(&o).unwrap().file, Some(dir.join("t.log")));
        let missing = opts(None, &["events=/nonexistent/events"]);
        assert_eq!(
            decide(&missing).unwrap_err(),
            "/nonexistent/events: No such file or directory"
        );
        assert_eq!(
            open_file(Path::new("/nonexistent/x")).unwrap_err(),
            "Error opening logfile /nonexistent/x: No such file or directory"
        );
        assert_eq!(
            open_file(Path::new("/tmp/x%s")).unwrap_err(),
            "Bad logfile template: /tmp/x%s"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn glob_matches_as_glib() {
        assert!(glob(b"virtio_*", b"virtio_notify"));
        assert!(glob(b"*", b""));
        assert!(glob(b"a?c", b"abc"));
        assert!(!glob(b"a?c", b"ac"));
        assert!(!glob(b"virtio", b"virtio_notify"));
    }
}
