//! The command lines libvirt generates, run for real: non-UTF-8 arguments (OS strings),
//! the capability probe (`-daemonize`, `-pidfile`), and a domain's command line with its
//! serial chardev on a file, a pty and a passed fd.

mod common;

use common::{machina, require_kvm, LIMIT};
use machina_tests::process::TempDir;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a run printed and how it ended (None: killed at the limit).
struct Outcome {
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn check(&self, cond: bool, what: &str) {
        assert!(
            cond,
            "{what}\n--- status: {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.status, self.stdout, self.stderr
        );
    }
}

/// Run machina with OS-string arguments, stdin null, killed after `limit`.
fn run_os(args: &[OsString], limit: Duration) -> Outcome {
    let mut child = Command::new(machina())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start machina");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Outcome {
        status,
        stdout: String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned(),
    }
}

fn os(s: &str) -> OsString {
    OsString::from(s)
}

fn os_bytes(parts: &[&[u8]]) -> OsString {
    OsString::from_vec(parts.concat())
}

/// The guest's pattern (resources/guest/README.md): byte i of the 4 KiB written at `sector`.
fn pattern(seed: u64, sector: u64, i: usize) -> u8 {
    (seed
        .wrapping_mul(31)
        .wrapping_add(sector.wrapping_mul(7))
        .wrapping_add(i as u64)) as u8
}

#[test]
fn non_utf8_arguments_are_os_strings() {
    if !require_kvm() {
        return;
    }
    // A name with a byte that is not UTF-8: QEMU runs it; machina used to panic (exit 101).
    let r = run_os(
        &[
            os("-name"),
            os_bytes(&[b"ab\xffcd"]),
            os("-nodefaults"),
            os("-serial"),
            os("stdio"),
            os("-append"),
            os("machina.test=echo machina.echo=named"),
        ],
        LIMIT,
    );
    r.check(r.status == Some(0), "a non-UTF-8 -name runs and exits 0");
    r.check(r.stdout.contains("echo: named"), "the guest ran");

    // A disk whose path is not UTF-8 (Latin-1 'é'): opened by its bytes, and the guest's
    // writes land in that very file.
    let dir = TempDir::new("os-strings");
    let mut disk = dir.path.clone().into_os_string().into_vec();
    disk.extend_from_slice(b"/d\xe9.raw");
    let disk = std::path::PathBuf::from(OsString::from_vec(disk));
    std::fs::write(&disk, vec![0u8; 4 << 20]).expect("create the disk");
    let drive = os_bytes(&[
        b"file=",
        disk.as_os_str().as_bytes(),
        b",if=none,id=d0,format=raw",
    ]);
    let r = run_os(
        &[
            os("-M"),
            os("q35"),
            os("-nodefaults"),
            os("-serial"),
            os("stdio"),
            os("-drive"),
            drive,
            os("-device"),
            os("virtio-blk-pci,drive=d0,bus=pcie.0"),
            os("-append"),
            os("machina.test=virtio machina.blk-seed=3"),
        ],
        LIMIT,
    );
    r.check(r.status == Some(0), "the non-UTF-8 disk path runs");
    r.check(
        r.stdout.contains("write=ok read=ok match=yes flush=ok"),
        "the guest's disk I/O worked",
    );
    let data = std::fs::read(&disk).expect("read the disk back");
    let at = 16 * 512;
    r.check(
        (0..4096).all(|i| data[at + i] == pattern(3, 16, i)),
        "the guest's 4 KiB is in the file with the non-UTF-8 name",
    );
    // The error text shows such a path lossily, on one line, with status 1.
    let missing = os_bytes(&[b"file=/nonexistent/d\xe9.raw,if=none,id=d0,format=raw"]);
    let r = run_os(&[os("-drive"), missing], LIMIT);
    r.check(r.status == Some(1), "a missing non-UTF-8 path is an error");
    r.check(
        r.stderr
            .contains("Could not open '/nonexistent/d\u{fffd}.raw'"),
        "the error names the path",
    );
}
