//! Start-up: what the start-up work was cut down to stays cut (the timings themselves are
//! in `cargo bench -p vmm --bench startup`; no test here depends on time).

use machina_tests::process::MachinaProcess;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn machina() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_machina"))
}

/// The names of the process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) {
                names.push(comm.trim().to_string());
            }
        }
    }
    names
}

/// A directly booted machine (the bundled guest) makes no memslot change between creating
/// its VM and the guest's first instruction: its first memslots already have the shape
/// the firmware step leaves. KVM makes the first change after the irqchip exists wait out
/// an SRCU grace period (4-10 ms on our hosts), which was most of the time to the first
/// guest instruction.
#[test]
fn no_memslot_change_before_the_first_guest_instruction() {
    for machine in ["q35", "pc"] {
        let out = Command::new(machina())
            .args(["-machine", machine, "-m", "128", "-nographic"])
            .env("MACHINA_TRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run machina");
        assert!(out.status.success(), "{machine}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let entry = err
            .lines()
            .find(|l| l.starts_with("machina-trace: first-vcpu-entry "))
            .unwrap_or_else(|| panic!("{machine}: no first-vcpu-entry line in {err}"));
        assert!(
            entry.split_whitespace().any(|w| w == "memslot-changes=0"),
            "{machine}: {entry}"
        );
    }
}

/// The QMP accept thread, started before the socket listens, greets clients and is the
/// only one; without a QMP monitor there is none.
#[test]
fn one_accept_thread_with_qmp_and_none_without() {
    let mut vm = MachinaProcess::start(
        machina(),
        "startup-accept",
        &["-machine", "q35", "-nodefaults", "-display", "none", "-S"].map(String::from),
    );
    let mut client = vm.client();
    let status = client.ok("query-status", Value::Null);
    assert_eq!(status["status"], "prelaunch");
    // A second client is accepted by the same thread.
    let mut second = vm.client();
    second.ok("query-status", Value::Null);
    let names = thread_names(vm.pid());
    assert_eq!(
        names.iter().filter(|n| *n == "qmp-accept").count(),
        1,
        "{names:?}"
    );
    client.ok("quit", Value::Null);
    assert_eq!(vm.wait_exit(Duration::from_secs(20)), Some(0));

    // No QMP: no accept thread (a pre-started one would linger unused).
    let mut child = Command::new(machina())
        .args(["-machine", "q35", "-nodefaults", "-display", "none", "-S"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start machina");
    let pid = child.id();
    // The machine is built once the vCPU thread exists; then every start-up thread has
    // been started.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !thread_names(pid).iter().any(|n| n.starts_with("CPU 0")) {
        assert!(std::time::Instant::now() < deadline, "no vCPU thread");
        std::thread::sleep(Duration::from_millis(20));
    }
    let names = thread_names(pid);
    let _ = child.kill();
    let _ = child.wait();
    assert!(!names.iter().any(|n| n == "qmp-accept"), "{names:?}");
}

/// A command-line error still ends the process with status 1 and QEMU's text, the QMP
/// accept thread started or not.
#[test]
fn a_bad_device_still_fails_before_listening() {
    let dir = machina_tests::TempDir::new("startup-bad");
    let socket = dir.path.join("qmp.sock");
    let out = Command::new(machina())
        .args([
            "-machine",
            "q35",
            "-nodefaults",
            "-device",
            "no-such-device",
            "-qmp",
        ])
        .arg(format!("unix:{},server=on,wait=off", socket.display()))
        .stdin(Stdio::null())
        .output()
        .expect("run machina");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("-device no-such-device: 'no-such-device' is not a valid device model name"),
        "{err}"
    );
    assert!(!socket.exists(), "the socket was created before the error");
}

/// The accept thread starts before the VMM blocks the termination signals for its
/// signalfd: it must not be where a SIGTERM lands (the default action would kill the
/// process) and neither must the client threads it starts. SIGTERM ends the machine
/// cleanly (status 0, SHUTDOWN with reason host-signal).
#[test]
fn sigterm_after_the_greeting_is_a_clean_exit() {
    for _ in 0..3 {
        let mut vm = MachinaProcess::start(
            machina(),
            "startup-sigterm",
            &["-machine", "q35", "-nodefaults", "-display", "none", "-S"].map(String::from),
        );
        let mut client = vm.client();
        client.ok("query-status", Value::Null);
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(vm.pid() as i32, libc::SIGTERM) }, 0);
        assert_eq!(vm.wait_exit(Duration::from_secs(20)), Some(0));
    }
}
