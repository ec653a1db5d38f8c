//! A private libvirt for integration tests: Debian's `libvirtd` (QEMU driver) started by the
//! test with its own configuration, sockets, state, cache and logs under a temporary folder,
//! driven with `virsh`, stopped (and its domains killed) at the end.
//!
//! Running as root, libvirtd's QEMU driver uses fixed paths (/etc/libvirt, /run/libvirt,
//! /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt). The daemon therefore runs in its
//! own mount namespace (`unshare --mount`) where those five folders are bind mounts of the
//! temporary folder's `etc`, `run`, `lib`, `cache` and `log`: nothing of the host's libvirt
//! (if any) is read or changed, and several tests can each run a daemon at once. The
//! emulators libvirt starts inherit that namespace. From outside, `virsh` reaches the daemon
//! through `qemu+unix:///system?socket=DIR/run/libvirt-sock`.

use crate::RunResult;
use crate::TempDir;
use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Hang guard for one `virsh` call (a start includes libvirt's capability probe).
pub const VIRSH_LIMIT: Duration = Duration::from_secs(180);

/// (folder in the private tree, the path libvirtd uses as root).
const MOUNTS: [(&str, &str); 5] = [
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("cache", "/var/cache/libvirt"),
    ("log", "/var/log/libvirt"),
];

/// The QEMU driver's configuration for a test: no confinement, no cgroups, no namespaces, the
/// emulator runs as root and writes its log straight to a file (no virtlogd).
pub const QEMU_CONF: &str = r#"# written by the machina libvirt test
user = "root"
group = "root"
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
remember_owner = 0
"#;

/// libvirtd's own configuration: a debug log of the QEMU driver (with every QMP message
/// exchanged) under the private log folder.
pub const LIBVIRTD_CONF: &str = r#"# written by the machina libvirt test
log_outputs = "1:file:/var/log/libvirt/libvirtd.log"
log_filters = "1:qemu 1:libvirt 4:object 4:json 4:event 1:util.command 4:util 4:rpc"
"#;

/// `name` from PATH, else from the sbin folders (not always on a test's PATH).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn run_program(name: &str, args: &[&str]) -> Result<RunResult, String> {
    let program = find_program(name).ok_or_else(|| format!("`{name}` is not installed"))?;
    Ok(crate::run(&program, args, Duration::from_secs(60)))
}

fn succeeded(name: &str, args: &[&str]) -> Result<(), String> {
    let r = run_program(name, args)?;
    if r.status == Some(0) {
        Ok(())
    } else {
        Err(format!(
            "`{name} {}` failed ({:?}): {}{}",
            args.join(" "),
            r.status,
            r.stdout,
            r.stderr
        ))
    }
}

/// The system user and group `libvirt-qemu` that Debian's QEMU driver looks up when it starts
/// (before reading qemu.conf); Debian's libvirt-daemon-system would create them.
pub fn ensure_qemu_user() -> Result<(), String> {
    let exists =
        |db: &str| run_program("getent", &[db, "libvirt-qemu"]).map(|r| r.status == Some(0));
    if !exists("group")? {
        // Another test may create it at the same moment: only its absence afterwards is an error.
        let r = succeeded("groupadd", &["--system", "libvirt-qemu"]);
        if !exists("group")? {
            return r;
        }
    }
    if !exists("passwd")? {
        let r = succeeded(
            "useradd",
            &[
                "--system",
                "--gid",
                "libvirt-qemu",
                "--no-create-home",
                "--home-dir",
                "/var/lib/libvirt",
                "--shell",
                "/usr/sbin/nologin",
                "libvirt-qemu",
            ],
        );
        if !exists("passwd")? {
            return r;
        }
    }
    Ok(())
}

/// Whether process `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// A private libvirtd (see the module comment).
pub struct Libvirtd {
    dir: Option<TempDir>,
    root: PathBuf,
    child: Option<Child>,
    libvirtd: PathBuf,
    virsh: PathBuf,
    unshare: PathBuf,
}

impl Libvirtd {
    /// Write the configuration and start the daemon; ready when `virsh version` answers.
    pub fn start(tag: &str) -> Result<Libvirtd, String> {
        let need = |name: &str| {
            find_program(name).ok_or_else(|| {
                format!("`{name}` is not installed (scripts/test installs what the tests need)")
            })
        };
        let (libvirtd, virsh, unshare) = (need("libvirtd")?, need("virsh")?, need("unshare")?);
        need("mount")?;
        ensure_qemu_user()?;
        let dir = TempDir::new(&format!("libvirt-{tag}"));
        let root = dir.path.clone();
        for (sub, mountpoint) in MOUNTS {
            std::fs::create_dir_all(root.join(sub)).map_err(|e| format!("{sub}: {e}"))?;
            // The bind mounts need their mount points; the packages create most of them.
            std::fs::create_dir_all(mountpoint).map_err(|e| format!("{mountpoint}: {e}"))?;
        }
        std::fs::write(root.join("etc/qemu.conf"), QEMU_CONF).map_err(|e| e.to_string())?;
        std::fs::write(root.join("etc/libvirtd.conf"), LIBVIRTD_CONF).map_err(|e| e.to_string())?;
        let mut d = Libvirtd {
            dir: Some(dir),
            root,
            child: None,
            libvirtd,
            virsh,
            unshare,
        };
        d.spawn()?;
        Ok(d)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let _ = std::fs::remove_file(self.socket());
        let mut script = String::from("set -e\n");
        for (sub, mountpoint) in MOUNTS {
            script += &format!(
                "mount --bind '{}' '{mountpoint}'\n",
                self.root.join(sub).display()
            );
        }
        script += &format!(
            "exec '{}' -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid\n",
            self.libvirtd.display()
        );
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("log/libvirtd.stderr"))
            .map_err(|e| e.to_string())?;
        let err2 = stderr.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&self.unshare)
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(stderr)
            .stderr(err2)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.unshare.display()))?;
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(format!(
                    "libvirtd exited ({status}) before answering\n{}",
                    self.diagnostics(None)
                ));
            }
            if self.socket().exists() && self.virsh(&["version"]).status == Some(0) {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(120) {
                return Err(format!(
                    "libvirtd did not answer within 120 s\n{}",
                    self.diagnostics(None)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The private tree: `etc`, `run`, `lib`, `cache`, `log`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn socket(&self) -> PathBuf {
        self.root.join("run/libvirt-sock")
    }

    pub fn uri(&self) -> String {
        format!("qemu+unix:///system?socket={}", self.socket().display())
    }

    /// `virsh -c URI ARGS...` with no input, within `VIRSH_LIMIT`.
    pub fn virsh(&self, args: &[&str]) -> RunResult {
        let uri = self.uri();
        let mut all = vec!["-c", uri.as_str()];
        all.extend_from_slice(args);
        crate::run(&self.virsh, &all, VIRSH_LIMIT)
    }

    /// Stop the daemon (SIGTERM, as its service manager does): its domains keep running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The child is libvirtd itself (unshare and sh exec it).
            let pid = child.id() as libc::pid_t;
            // SAFETY: signalling a child process this struct started and has not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stop and start the daemon again with the same configuration and state.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.spawn()
    }

    /// The pid libvirt recorded for a running domain (`/run/libvirt/qemu/NAME.pid`).
    pub fn domain_pid(&self, name: &str) -> Option<u32> {
        std::fs::read_to_string(self.root.join(format!("run/qemu/{name}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The emulator's log (`/var/log/libvirt/qemu/NAME.log`: command line, stderr).
    pub fn domain_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.root.join(format!("log/qemu/{name}.log"))).unwrap_or_default()
    }

    /// libvirtd's debug log.
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.root.join("log/libvirtd.log")).unwrap_or_default()
    }

    /// What to print when a step fails: the domain's log, libvirtd's errors and the last QMP
    /// exchange, and where the whole tree is kept.
    pub fn diagnostics(&self, domain: Option<&str>) -> String {
        let mut out = String::new();
        if let Some(name) = domain {
            out += &format!(
                "--- domain log ({}):\n{}\n",
                self.root.join(format!("log/qemu/{name}.log")).display(),
                tail(&self.domain_log(name), 60)
            );
        }
        let log = self.daemon_log();
        let errors: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" error : ") || l.contains(" warning : "))
            .collect();
        out += &format!(
            "--- libvirtd errors and warnings (last 25 of {}):\n{}\n",
            errors.len(),
            errors[errors.len().saturating_sub(25)..].join("\n")
        );
        let qmp: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("QEMU_MONITOR_SEND_MSG")
                    || l.contains("QEMU_MONITOR_RECV_REPLY")
                    || l.contains("QEMU_MONITOR_RECV_EVENT")
            })
            .collect();
        out += &format!(
            "--- last QMP messages (of {}):\n{}\n",
            qmp.len(),
            qmp[qmp.len().saturating_sub(12)..]
                .iter()
                .map(|l| shorten(l, 600))
                .collect::<Vec<_>>()
                .join("\n")
        );
        out += &format!(
            "--- libvirtd stderr:\n{}\n",
            tail(
                &std::fs::read_to_string(self.root.join("log/libvirtd.stderr")).unwrap_or_default(),
                20
            )
        );
        out += &format!(
            "--- the private tree is kept after a failure: {}\n",
            self.root.display()
        );
        out
    }

    /// The capability cache file libvirt wrote for `emulator` (`<emulator>` inside).
    pub fn cached_capabilities(&self, emulator: &Path) -> Option<String> {
        let wanted = format!("<emulator>{}</emulator>", emulator.display());
        std::fs::read_dir(self.root.join("cache/qemu/capabilities"))
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .find(|text| text.contains(&wanted))
    }

    /// Kill the emulators libvirt left running: domains (`run/qemu/NAME.pid`) and capability
    /// probes (`lib/qemu/qmp-XXXXXX/qmp.pid`, left behind when libvirtd dies mid-probe).
    fn kill_domains(&self) {
        let pidfiles = |dir: PathBuf, nested: Option<&str>| -> Vec<PathBuf> {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return Vec::new();
            };
            entries
                .filter_map(Result::ok)
                .map(|e| match nested {
                    Some(file) => e.path().join(file),
                    None => e.path(),
                })
                .filter(|p| p.extension().is_some_and(|x| x == "pid"))
                .collect()
        };
        let mut files = pidfiles(self.root.join("run/qemu"), None);
        files.extend(pidfiles(self.root.join("lib/qemu"), Some("qmp.pid")));
        for file in files {
            let pid = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok());
            if let Some(pid) = pid.filter(|&p| p > 1 && process_alive(p)) {
                // SAFETY: a process of this test's own libvirtd, named by its pidfile.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        self.kill_domains();
        self.stop();
        if std::thread::panicking() || std::env::var_os("MACHINA_LIBVIRT_KEEP").is_some() {
            // Kept for the post-mortem (the failure message names it).
            if let Some(dir) = self.dir.take() {
                std::mem::forget(dir);
            }
        }
    }
}

/// `line` cut to about `max` bytes (QMP replies can be megabytes long).
pub fn shorten(line: &str, max: usize) -> String {
    if line.len() <= max {
        return line.to_string();
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} ...({} bytes)", &line[..end], line.len())
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The `<flag name='X'/>` entries of a libvirt QEMU capability cache file.
pub fn capability_flags(xml: &str) -> BTreeSet<String> {
    xml.lines()
        .filter_map(|l| l.trim().strip_prefix("<flag name='"))
        .filter_map(|rest| rest.split('\'').next())
        .map(str::to_string)
        .collect()
}

/// A tap device that exists for the test (`<interface type='ethernet'>` with
/// `managed='no'` uses an existing one), deleted on drop.
pub struct Tap {
    pub name: String,
}

impl Tap {
    pub fn create(name: &str) -> Result<Tap, String> {
        let _ = run_program("ip", &["link", "delete", name]);
        succeeded("ip", &["tuntap", "add", "dev", name, "mode", "tap"])?;
        let tap = Tap {
            name: name.to_string(),
        };
        succeeded("ip", &["link", "set", name, "up"])?;
        Ok(tap)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = run_program("ip", &["link", "delete", &self.name]);
    }
}

/// Reads a pty slave (a domain's `<serial type='pty'>`) in the background.
pub struct PtyReader {
    text: Arc<Mutex<Vec<u8>>>,
}

impl PtyReader {
    pub fn open(path: &Path) -> Result<PtyReader, String> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // Raw, as a console client does: no echo back into the guest, no line editing.
        // SAFETY: termios calls on an open tty fd with a zeroed, then filled, struct.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(file.as_raw_fd(), &mut t) == 0 {
                libc::cfmakeraw(&mut t);
                libc::tcsetattr(file.as_raw_fd(), libc::TCSANOW, &t);
            }
        }
        let text = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&text);
        std::thread::spawn(move || {
            let mut file = file;
            let mut buf = [0u8; 4096];
            // Ends when the emulator closes the master (EIO) or exits.
            while let Ok(n) = file.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut t) = sink.lock() {
                    t.extend_from_slice(&buf[..n]);
                }
            }
        });
        Ok(PtyReader { text })
    }

    /// Everything read so far.
    pub fn text(&self) -> String {
        self.text
            .lock()
            .map(|t| String::from_utf8_lossy(&t).into_owned())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_of_a_cache_file() {
        let xml = "<qemuCaps>\n  <flag name='kvm'/>\n  <flag name='query-kvm'/>\n  \
                   <machine name='pc'/>\n</qemuCaps>\n";
        let flags = capability_flags(xml);
        assert_eq!(
            flags.into_iter().collect::<Vec<_>>(),
            vec!["kvm".to_string(), "query-kvm".to_string()]
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }

    #[test]
    fn own_process_is_alive() {
        assert!(process_alive(std::process::id()));
    }
}
