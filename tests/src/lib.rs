//! Helpers for integration tests that drive the real `machina` binary: run it with a time
//! limit, capture what the guest printed on the serial console, and parse the tiny guest's
//! machine-readable lines.

pub mod config_walk;
pub mod libvirt;
pub mod libvirt_domain;
pub mod netns;
pub mod paths;
pub mod pci_compare;
pub mod process;
pub mod qmp_client;
pub mod qtest_client;
pub mod rng;
pub mod temp;

pub use temp::TempDir;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a finished (or killed) run produced.
#[derive(Debug)]
pub struct RunResult {
    /// Exit status; None if the process was killed at the time limit.
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl RunResult {
    /// Lines the guest printed that start with `prefix` (e.g. "pci: ").
    pub fn lines_with(&self, prefix: &str) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with(prefix))
            .collect()
    }

    /// Panics with the whole output when `cond` is false.
    pub fn check(&self, cond: bool, what: &str) {
        assert!(
            cond,
            "{what}\n--- status: {:?}, elapsed {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.status, self.elapsed, self.stdout, self.stderr
        );
    }
}

/// Run `binary` with `args` and no stdin, killing it after `limit`.
pub fn run(binary: &Path, args: &[&str], limit: Duration) -> RunResult {
    run_until(binary, args, limit, |_| false)
}

/// Like `run`, but also stop (kill) the process once `done(stdout so far)` is true.
pub fn run_until(
    binary: &Path,
    args: &[&str],
    limit: Duration,
    done: impl Fn(&str) -> bool,
) -> RunResult {
    let start = Instant::now();
    let mut child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let mut stdout = Vec::new();
    let mut status = None;
    loop {
        while let Ok(chunk) = rx.try_recv() {
            stdout.extend(chunk);
        }
        if let Ok(Some(s)) = child.try_wait() {
            status = s.code();
            break;
        }
        if start.elapsed() > limit || done(&String::from_utf8_lossy(&stdout)) {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = reader.join();
    while let Ok(chunk) = rx.try_recv() {
        stdout.extend(chunk);
    }
    let stderr = err_reader.join().unwrap_or_default();
    RunResult {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// A PCI function line of the tiny guest: `pci: BB:DD.F VVVV:DDDD class=CCCCCC rev=RR hdr=HH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestPciFunction {
    pub bdf: String,
    pub vendor_device: String,
    pub class: String,
    pub revision: String,
    pub header: String,
}

pub fn parse_pci_lines(stdout: &str) -> Vec<GuestPciFunction> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("pci: "))
        .filter_map(|rest| {
            let mut words = rest.split_whitespace();
            let bdf = words.next()?.to_string();
            let vendor_device = words.next()?.to_string();
            let field = |key: &str| {
                rest.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .map(str::to_string)
            };
            Some(GuestPciFunction {
                bdf,
                vendor_device,
                class: field("class=")?,
                revision: field("rev=")?,
                header: field("hdr=")?,
            })
        })
        .collect()
}

/// The value of `key=` in the first line starting with `prefix`.
pub fn field<'a>(stdout: &'a str, prefix: &str, key: &str) -> Option<&'a str> {
    stdout
        .lines()
        .filter(|l| l.starts_with(prefix))
        .flat_map(|l| l.split_whitespace())
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

/// Whether KVM is usable here; integration tests that need it skip with a reason otherwise.
pub fn kvm_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// The tiny guest's virtio-blk data pattern (resources/guest/README.md): byte `i` of the
/// 4 KiB it writes at `sector` for `machina.blk-seed=SEED`.
pub fn guest_blk_pattern(seed: u64, sector: u64, i: usize) -> u8 {
    (seed
        .wrapping_mul(31)
        .wrapping_add(sector.wrapping_mul(7))
        .wrapping_add(i as u64)) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_guest_lines() {
        let out = "machina-guest: version=0.1 cmdline=\"\"\n\
                   pci: 00:00.0 8086:29c0 class=060000 rev=00 hdr=00\n\
                   pci: 00:1f.0 8086:2918 class=060100 rev=02 hdr=80\n\
                   acpi: fadt pm1a_evt=0x600 pm1a_cnt=0x604\n";
        let f = parse_pci_lines(out);
        assert_eq!(f.len(), 2);
        assert_eq!(f[1].vendor_device, "8086:2918");
        assert_eq!(f[1].header, "80");
        assert_eq!(field(out, "acpi: fadt", "pm1a_cnt"), Some("0x604"));
        assert_eq!(field(out, "acpi: fadt", "nope"), None);
    }
}
