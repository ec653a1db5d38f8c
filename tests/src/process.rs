//! A `machina` process with a QMP unix socket, in its own temporary folder, killed and
//! cleaned up when dropped: for tests that drive the monitor.

use crate::qmp_client::QmpClient;
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TempDir;

/// A running `machina -qmp unix:DIR/qmp.sock,server=on,wait=off ARGS...`.
pub struct MachinaProcess {
    pub child: Child,
    pub socket: PathBuf,
    pub started: Instant,
    dir: TempDir,
}

impl MachinaProcess {
    /// Start `binary` with a QMP socket and `args`; stdout and stdin are null, stderr is
    /// kept for `stderr_text` after exit.
    pub fn start(binary: &Path, tag: &str, args: &[String]) -> MachinaProcess {
        let dir = TempDir::new(tag);
        let socket = dir.path.join("qmp.sock");
        let qmp = format!("unix:{},server=on,wait=off", socket.display());
        let started = Instant::now();
        let child = Command::new(binary)
            .arg("-qmp")
            .arg(&qmp)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        MachinaProcess {
            child,
            socket,
            started,
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A client that has read the greeting (not negotiated).
    pub fn raw_client(&self) -> QmpClient {
        QmpClient::connect(&self.socket, Duration::from_secs(20))
    }

    /// A client that has negotiated capabilities.
    pub fn client(&self) -> QmpClient {
        let mut c = self.raw_client();
        c.ok("qmp_capabilities", Value::Null);
        c
    }

    /// VmRSS of the process in KiB (None once it is gone).
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid())
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait up to `limit` for the exit status; kills the process and returns None at the limit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    /// What the process wrote on stderr (reads to EOF: call it after the exit).
    pub fn stderr_text(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for MachinaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS of process `pid` in KiB, from /proc/PID/status.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Reads a console log file until `line` appears `count` times in whole lines (the guest
/// may be mid-line), returning those lines; panics after `limit` (a hang guard, not a
/// timing).
pub fn wait_console(path: &Path, line: &str, count: usize, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let mut text = std::fs::read_to_string(path).unwrap_or_default();
        text.truncate(text.rfind('\n').map_or(0, |end| end + 1));
        if text.matches(line).count() >= count {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no {line:?} x{count} on the console:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Start `binary` with `args`, stopped, with QMP on stdio and its ACPI tables dumped to
/// `dir` (`MACHINA_ACPI_DUMP`), and wait until the tables are there (the XSDT is written
/// last). `stdout` is where QMP's answers go.
pub fn start_with_acpi_dump(binary: &Path, dir: &Path, args: &[&str], stdout: Stdio) -> Child {
    std::fs::create_dir_all(dir).expect("dump dir");
    let mut child = Command::new(binary)
        .args(args)
        .args(["-S", "-display", "none", "-nodefaults", "-qmp", "stdio"])
        .env("MACHINA_ACPI_DUMP", dir)
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start machina");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.join("xsdt.dat").exists() {
        assert!(Instant::now() < deadline, "machina wrote no ACPI dump");
        assert!(child.try_wait().expect("wait").is_none(), "machina exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}
