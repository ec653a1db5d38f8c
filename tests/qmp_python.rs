//! QEMU's own Python QMP client (`qemu.qmp` from PyPI) against machina: it connects to the
//! unix socket, negotiates (OOB included), runs queries, gets QEMU's error classes and texts,
//! receives RESUME/STOP/POWERDOWN/SHUTDOWN through its event listener, and the machine powers
//! off. The checks are in tests/python/qmp_client_check.py.
//!
//! The module comes from the virtual environment that the README's test command
//! (scripts/test) creates under the target folder: the interpreter is `$MACHINA_PYTHON`
//! (which the script sets), else `TARGET/pyenv/bin/python`. Without it this test fails and
//! says how to get it, unless MACHINA_SKIP_PYTHON=1.

mod common;

use common::{machina, require_kvm};
use machina_tests::process::MachinaProcess;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/python/qmp_client_check.py")
}

fn skip_python() -> bool {
    std::env::var("MACHINA_SKIP_PYTHON").is_ok_and(|v| v == "1")
}

/// Run the venv's `python args`, killing it after `limit`: (exit status, stdout, stderr).
fn python(interpreter: &Path, args: &[&str], limit: Duration) -> (Option<i32>, String, String) {
    let r = machina_tests::run(interpreter, args, limit);
    (r.status, r.stdout, r.stderr)
}

#[test]
fn official_python_client_drives_machina() {
    if skip_python() {
        eprintln!("SKIP: MACHINA_SKIP_PYTHON=1");
        return;
    }
    let interpreter = machina_tests::paths::venv_python(&machina());
    assert!(
        interpreter.is_file(),
        "no Python virtual environment at {}: run scripts/test (the README's test command \
         creates it with qemu.qmp), point MACHINA_PYTHON at an interpreter that has qemu.qmp, \
         or set MACHINA_SKIP_PYTHON=1 to skip this test",
        interpreter.display()
    );
    let (status, _, stderr) = python(
        &interpreter,
        &["-c", "import qemu.qmp; print(qemu.qmp.__name__)"],
        Duration::from_secs(30),
    );
    assert_eq!(
        status,
        Some(0),
        "{} cannot import qemu.qmp: run scripts/test, which installs it in that virtual \
         environment, or set MACHINA_SKIP_PYTHON=1 to skip this test\n{stderr}",
        interpreter.display()
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
    let (status, stdout, stderr) =
        python(&interpreter, &[&script, &socket], Duration::from_secs(50));
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
