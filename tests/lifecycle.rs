//! The run-time lifecycle of the real binary: resets that free what they replace and keep
//! their backends, termination signals, `-no-shutdown`, clients that stop reading, vCPU
//! thread names. Counts come from /proc/PID (fds, threads, RSS), never from timing.

mod common;

use common::{machina, require_kvm};
use machina_tests::netns::Netns;
use machina_tests::qmp_client::QmpClient;
use machina_tests::TempDir;
use serde_json::{json, Value};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Hang guard only: every wait below normally ends in well under a second.
const GUARD: Duration = Duration::from_secs(60);

/// A machina process with a QMP socket and its serial console in a log file.
struct Vm {
    child: Child,
    dir: TempDir,
}

impl Vm {
    /// Start machina (inside network namespace `netns` if given) with `args`.
    fn start(tag: &str, netns: Option<&str>, args: &[&str]) -> Vm {
        let dir = TempDir::new(tag);
        let qmp = format!(
            "unix:{},server=on,wait=off",
            dir.path.join("qmp.sock").display()
        );
        let serial = format!("file:{}", dir.path.join("serial.log").display());
        let binary = machina();
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        let child = command
            .args(["-qmp", &qmp, "-display", "none", "-serial", &serial])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start machina");
        Vm { child, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path.join(name)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn client(&self) -> QmpClient {
        let mut c = QmpClient::connect(&self.path("qmp.sock"), GUARD);
        c.ok("qmp_capabilities", Value::Null);
        c
    }

    fn serial(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.path("serial.log")).unwrap_or_default())
            .into_owned()
    }

    fn boots(&self) -> usize {
        self.serial().matches("machina-guest: version=").count()
    }

    /// Wait until the guest has booted `n` times (false if the process ended first).
    fn wait_boots(&mut self, n: usize) -> bool {
        let start = Instant::now();
        while start.elapsed() < GUARD {
            if self.boots() >= n {
                return true;
            }
            if !matches!(self.child.try_wait(), Ok(None)) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn wait_exit(&mut self) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < GUARD {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s
    }

    fn usage(&self) -> Usage {
        let pid = self.pid();
        let count = |what: &str| {
            std::fs::read_dir(format!("/proc/{pid}/{what}"))
                .map(|d| d.count())
                .unwrap_or(0)
        };
        Usage {
            fds: count("fd"),
            threads: count("task"),
            rss_kib: machina_tests::process::rss_kib(pid).unwrap_or(0),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed when the test ends, passed or not.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    fds: usize,
    threads: usize,
    rss_kib: u64,
}

fn raw_disk(dir: &Path) -> String {
    let path = dir.join("disk.raw");
    std::fs::write(&path, vec![0u8; 1 << 20]).expect("disk image");
    path.display().to_string()
}

/// The long run of the issue: 300 resets, guest-initiated and `system_reset` mixed, with a
/// virtio disk, a named tap (where a network namespace can be made), a virtio-rng and a
/// virtconsole: fds, threads and RSS stay flat, the console log keeps what was written
/// before, and the guest's virtio drivers still work on the last boot.
#[test]
fn three_hundred_resets_keep_fds_threads_and_rss_flat() {
    if !require_kvm() {
        return;
    }
    let scratch = TempDir::new("lifecycle-disk");
    let disk = raw_disk(&scratch.path);
    let console_log = scratch.path.join("console.log");
    // Without a namespace only the tap part is skipped.
    let netns = Netns::create_or_skip("long");
    let drive = format!("file={disk},if=none,id=d0,format=raw");
    let chardev = format!("file,id=c0,path={}", console_log.display());
    let mut args = vec![
        "-M",
        "q35",
        "-smp",
        "2",
        "-drive",
        &drive,
        "-device",
        "virtio-blk-pci,drive=d0",
        "-object",
        "rng-random,id=r0,filename=/dev/urandom",
        "-device",
        "virtio-rng-pci,rng=r0",
        "-device",
        "virtio-serial-pci",
        "-chardev",
        &chardev,
        "-device",
        "virtconsole,chardev=c0",
        "-append",
        "machina.test=virtio,reset",
    ];
    if netns.is_some() {
        args.extend([
            "-netdev",
            "tap,id=n0,ifname=rsttap,script=no,downscript=no",
            "-device",
            "virtio-net-pci,netdev=n0",
        ]);
    }
    let mut vm = Vm::start("long", netns.as_ref().map(Netns::name), &args);
    // Warm up (allocator, lazily created threads), then measure.
    assert!(vm.wait_boots(10), "the guest reboots: {}", vm.stderr());
    let mut qmp = vm.client();
    // Written after the first open (which truncates, as QEMU's chardev does); a reset that
    // reopened the log would lose it.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&console_log)
        .and_then(|mut f| f.write_all(b"marker-before-resets\n"))
        .expect("append to the console log");
    let before = vm.usage();
    let first = vm.boots();
    let mut host_resets = 0;
    while vm.boots() < first + 300 {
        // Mixed with the guest's own resets: every third boot or so is a host reset.
        qmp.ok("system_reset", Value::Null);
        host_resets += 1;
        let target = vm.boots() + 2;
        assert!(
            vm.wait_boots(target),
            "the guest keeps rebooting: {}",
            vm.stderr()
        );
    }
    let resets = vm.boots() - first;
    assert!(
        vm.wait_boots(vm.boots() + 2),
        "the guest boots after the last reset"
    );
    let after = vm.usage();
    eprintln!(
        "lifecycle: {resets} resets ({host_resets} system_reset, the rest guest-initiated): \
         fds {} -> {}, threads {} -> {}, RSS {} -> {} KiB",
        before.fds, after.fds, before.threads, after.threads, before.rss_kib, after.rss_kib
    );
    // vCPU threads come and go around each reset, and a rebuild holds a duplicate of each
    // backend for a moment: allow that much, never growth per reset.
    assert!(
        after.fds <= before.fds + 8,
        "fds grew: {before:?} -> {after:?}"
    );
    assert!(
        after.threads <= before.threads + 2,
        "threads grew: {before:?} -> {after:?}"
    );
    assert!(
        after.rss_kib <= before.rss_kib + 4096,
        "RSS grew: {before:?} -> {after:?}"
    );
    let log = std::fs::read_to_string(&console_log).unwrap_or_default();
    assert!(
        log.contains("marker-before-resets"),
        "the virtconsole log was truncated by a reset"
    );
    // The last complete boot's drivers worked.
    let serial = vm.serial();
    let last_boot = serial
        .rsplit("machina-guest: version=")
        .nth(1)
        .unwrap_or_default();
    assert!(
        last_boot.contains("read=ok match=yes"),
        "the disk works after the resets: {last_boot}"
    );
    assert!(
        last_boot.contains("virtio-rng: ") && !last_boot.contains("result=fail"),
        "the rng works after the resets: {last_boot}"
    );
    if let Some(ns) = &netns {
        assert_eq!(
            ns.taps(),
            vec!["rsttap".to_string()],
            "one tap, the named one"
        );
    }
    qmp.execute("quit", Value::Null);
    assert_eq!(vm.wait_exit(), Some(0));
}

/// A named tap is attached once per process: a guest reboot must not fail with EBUSY, and
/// an unnamed tap is not created anew at every boot.
#[test]
fn taps_survive_guest_reboots() {
    if !require_kvm() {
        return;
    }
    for (tag, netdev) in [
        ("named", "tap,id=n0,ifname=rsttap,script=no,downscript=no"),
        ("unnamed", "tap,id=n0,script=no,downscript=no"),
    ] {
        let Some(ns) = Netns::create_or_skip(tag) else {
            return;
        };
        let mut vm = Vm::start(
            tag,
            Some(ns.name()),
            &[
                "-netdev",
                netdev,
                "-device",
                "virtio-net-pci,netdev=n0",
                "-append",
                "machina.test=reset",
            ],
        );
        let booted = vm.wait_boots(6);
        let stderr = if booted { String::new() } else { vm.stderr() };
        if stderr.contains("could not configure /dev/net/tun") && vm.boots() == 0 {
            eprintln!("SKIP: this host forbids tap creation: {}", stderr.trim());
            return;
        }
        assert!(booted, "{tag}: the guest reboots with a tap: {stderr}");
        assert_eq!(
            ns.taps().len(),
            1,
            "{tag}: one tap for all boots: {:?}",
            ns.taps()
        );
    }
}

/// SIGTERM, SIGINT and SIGHUP end the process as QEMU does: a SHUTDOWN event with
/// `host-signal`, socket files removed, exit status 0.
#[test]
fn termination_signals_shut_down_cleanly() {
    if !require_kvm() {
        return;
    }
    for (name, signal) in [
        ("TERM", libc::SIGTERM),
        ("INT", libc::SIGINT),
        ("HUP", libc::SIGHUP),
    ] {
        let dir = TempDir::new("signal-serial");
        let serial_sock = dir.path.join("serial.sock");
        let serial = format!("unix:{},server=on,wait=off", serial_sock.display());
        // The QMP socket first (this helper logs the serial console to a file); the
        // serial socket case follows with its own process.
        let mut vm = Vm::start("signal", None, &["-S"]);
        let mut qmp = vm.client();
        assert!(vm.path("qmp.sock").exists());
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(vm.pid() as i32, signal) }, 0);
        let event = qmp.wait_event("SHUTDOWN");
        assert_eq!(
            event["data"],
            json!({"guest": false, "reason": "host-signal"}),
            "SIG{name}"
        );
        assert_eq!(vm.wait_exit(), Some(0), "SIG{name}: exit status");
        assert!(
            !vm.path("qmp.sock").exists(),
            "SIG{name}: the QMP socket file is removed"
        );
        assert!(
            vm.stderr()
                .contains(&format!("terminating on signal {signal}")),
            "SIG{name}: reported on stderr"
        );

        // The serial socket goes too.
        let mut child = Reaped(
            Command::new(machina())
                .args(["-S", "-display", "none", "-serial", &serial])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start machina"),
        );
        // Wait until the socket listens (it is bound once the signals are watched).
        let start = Instant::now();
        while UnixStream::connect(&serial_sock).is_err() {
            assert!(start.elapsed() < GUARD, "the serial socket never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(child.0.id() as i32, signal) }, 0);
        let status = child.0.wait().expect("wait");
        assert_eq!(
            status.code(),
            Some(0),
            "SIG{name}: exit status (serial socket)"
        );
        assert!(
            !serial_sock.exists(),
            "SIG{name}: the serial socket file is removed"
        );
    }
}

/// `-no-shutdown`: a guest power-off leaves the process in state `shutdown` with QMP
/// usable; `cont` needs a reset first; `system_reset` + `cont` boots the guest again.
#[test]
fn no_shutdown_holds_the_machine_after_poweroff() {
    if !require_kvm() {
        return;
    }
    let mut vm = Vm::start(
        "noshutdown",
        None,
        &["-S", "-no-shutdown", "-append", "machina.test=echo"],
    );
    let mut qmp = vm.client();
    qmp.ok("cont", Value::Null);
    let shutdown = qmp.wait_event("SHUTDOWN");
    assert_eq!(
        shutdown["data"],
        json!({"guest": true, "reason": "guest-shutdown"})
    );
    let stop = qmp.wait_event("STOP");
    let when = |e: &Value| {
        (
            e["timestamp"]["seconds"].as_i64(),
            e["timestamp"]["microseconds"].as_i64(),
        )
    };
    assert!(when(&stop) >= when(&shutdown), "STOP follows SHUTDOWN");
    assert_eq!(qmp.ok("query-status", Value::Null)["status"], "shutdown");
    assert!(
        vm.child.try_wait().expect("try_wait").is_none(),
        "still alive"
    );
    assert_eq!(vm.boots(), 1);
    assert_eq!(
        qmp.error("cont", Value::Null),
        "Resetting the Virtual Machine is required"
    );
    qmp.ok("system_reset", Value::Null);
    assert_eq!(
        qmp.wait_event("RESET")["data"],
        json!({"guest": false, "reason": "host-qmp-system-reset"})
    );
    assert_eq!(qmp.ok("query-status", Value::Null)["status"], "prelaunch");
    qmp.ok("cont", Value::Null);
    qmp.wait_event("RESUME");
    // The guest runs again and powers off again; the process stays.
    qmp.wait_event("SHUTDOWN");
    assert_eq!(vm.boots(), 2, "the guest booted again");
    assert_eq!(qmp.ok("query-status", Value::Null)["status"], "shutdown");
    qmp.execute("quit", Value::Null);
    assert_eq!(vm.wait_exit(), Some(0));

    // Without -no-shutdown the process ends, as before.
    let mut vm = Vm::start("shutdown", None, &["-append", "machina.test=echo"]);
    assert_eq!(vm.wait_exit(), Some(0));
}

/// A QMP client that never reads its answers, and whose output so fills its socket, can
/// still `quit`: the process exits instead of waiting for ever to flush that client.
#[test]
fn a_stalled_qmp_client_does_not_block_exit() {
    if !require_kvm() {
        return;
    }
    let mut vm = Vm::start("stalled-qmp", None, &["-S"]);
    // Another client first, so the monitor is known to be up.
    vm.client().ok("query-status", Value::Null);
    let mut stalled = UnixStream::connect(vm.path("qmp.sock")).expect("connect");
    // Far more output than a socket buffer holds, never read, then quit.
    let mut input = String::from("{\"execute\": \"qmp_capabilities\"}\n");
    input.push_str(&"{\"execute\": \"query-qmp-schema\"}\n".repeat(200));
    input.push_str("{\"execute\": \"quit\"}\n");
    stalled
        .set_write_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stalled.write_all(input.as_bytes()).expect("send");
    assert_eq!(vm.wait_exit(), Some(0), "the process exits");
    drop(stalled);
}

/// A serial socket client that never reads loses output; the guest, `system_reset` and
/// `quit` go on.
#[test]
fn a_stalled_serial_client_does_not_block_the_guest() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("stalled-serial");
    let serial_sock = dir.path.join("serial.sock");
    let qmp_sock = dir.path.join("qmp.sock");
    // Every boot prints ~4.5 KB (a long echo, five times) and then resets. The UART writes
    // one byte at a time, and each write takes a socket buffer slot of its own: a client
    // that never reads is full after a few hundred bytes.
    let echo = "x".repeat(900);
    let tests = "echo,".repeat(5);
    let append = format!("machina.echo={echo} machina.test={tests}reset");
    let mut child = Reaped(
        Command::new(machina())
            .args([
                "-qmp",
                &format!("unix:{},server=on,wait=off", qmp_sock.display()),
                "-display",
                "none",
                "-serial",
                &format!("unix:{},server=on,wait=on", serial_sock.display()),
                "-append",
                &append,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start machina"),
    );
    let start = Instant::now();
    let stalled = loop {
        match UnixStream::connect(&serial_sock) {
            Ok(s) => break s,
            Err(_) if start.elapsed() < GUARD => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("serial socket: {e}"),
        }
    };
    let mut qmp = QmpClient::connect(&qmp_sock, GUARD);
    qmp.ok("qmp_capabilities", Value::Null);
    // Two guest resets at least: the guest got past a full buffer, twice.
    qmp.wait_event("RESET");
    qmp.wait_event("RESET");
    qmp.ok("system_reset", Value::Null);
    qmp.execute("quit", Value::Null);
    let start = Instant::now();
    let status = loop {
        if let Ok(Some(s)) = child.0.try_wait() {
            break s.code();
        }
        if start.elapsed() > GUARD {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status, Some(0));
    drop(stalled);
}

/// vCPU threads carry QEMU's names, which libvirt and `ps` show.
#[test]
fn vcpu_threads_are_named_as_in_qemu() {
    if !require_kvm() {
        return;
    }
    let vm = Vm::start("names", None, &["-S", "-smp", "2"]);
    let mut qmp = vm.client();
    qmp.ok("query-status", Value::Null);
    let pid = vm.pid();
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect();
    for want in ["CPU 0/KVM", "CPU 1/KVM"] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
}
