//! QEMU's own Python QMP client (`qemu.qmp` from PyPI) against machina: it connects to the
//! unix socket, negotiates (OOB included), runs queries, gets QEMU's error classes and texts,
//! receives RESUME/STOP/POWERDOWN/SHUTDOWN through its event listener, and the machine powers
//! off. The checks are in tests/python/qmp_client_check.py.
//!
//! The module is installed by .ci/run (`python3 -m pip install --quiet qemu.qmp`); without it
//! this test fails, unless MACHINA_SKIP_PYTHON=1.

mod common;

use common::{machina, require_kvm};
use machina_tests::process::MachinaProcess;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const PIP_LINE: &str = "python3 -m pip install --quiet qemu.qmp";

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/python/qmp_client_check.py")
}

fn skip_python() -> bool {
    std::env::var("MACHINA_SKIP_PYTHON").is_ok_and(|v| v == "1")
}

/// Run `python3 args`, killing it after `limit`: (exit status, stdout, stderr).
fn python(args: &[&str], limit: Duration) -> (Option<i32>, String, String) {
    let r = machina_tests::run(Path::new("python3"), args, limit);
    (r.status, r.stdout, r.stderr)
}

#[test]
fn official_python_client_drives_machina() {
    if skip_python() {
        eprintln!("SKIP: MACHINA_SKIP_PYTHON=1");
        return;
    }
    let (status, _, stderr) = python(
        &["-c", "import qemu.qmp; print(qemu.qmp.__name__)"],
        Duration::from_secs(30),
    );
    assert_eq!(
        status,
        Some(0),
        "the Python module qemu.qmp is missing: run `{PIP_LINE}` (as .ci/run does), \
         or set MACHINA_SKIP_PYTHON=1 to skip this test\n{stderr}"
    );
    if !require_kvm() {
        return;
    }

    let mut vm = MachinaProcess::start(
        &machina(),
        "pyqmp",
        &[
            "-M",
            "q35",
            "-S",
            "-nodefaults",
            "-append",
            "machina.test=powerbutton",
        ]
        .map(String::from),
    );
    // The socket exists once machina listens (the client library does not retry).
    let start = Instant::now();
    while !vm.socket.exists() && start.elapsed() < Duration::from_secs(20) {
        assert!(vm.alive(), "machina exited: {}", vm.stderr_text());
        std::thread::sleep(Duration::from_millis(5));
    }
    let socket = vm.socket.display().to_string();
    let script = script().display().to_string();
    let (status, stdout, stderr) = python(&[&script, &socket], Duration::from_secs(50));
    assert_eq!(
        status,
        Some(0),
        "qmp_client_check.py failed\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}"
    );
    assert!(
        stdout.contains("qemu.qmp: all checks passed"),
        "stdout: {stdout}"
    );
    // The script powered the guest down: machina exits by itself, with status 0.
    assert_eq!(
        vm.wait_exit(Duration::from_secs(20)),
        Some(0),
        "machina's exit after system_powerdown; stderr: {}",
        vm.stderr_text()
    );
}
