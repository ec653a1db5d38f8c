//! QMP out-of-band execution (QEMU's monitor/qmp.c): with `oob` enabled, in-band commands run
//! in order on a dispatcher while the monitor goes on reading and answers `exec-oob` at once.
//! The in-band command that waits here is QEMU's own example (qmp-test's test_qmp_oob): a
//! blkdebug node whose config is a FIFO, read to its end once a writer comes.

mod common;

use common::machina;
use machina_tests::process::MachinaProcess;
use machina_tests::qmp_client::QmpClient;
use serde_json::{json, Value};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap().success();
    assert!(ok, "mkfifo {}", path.display());
}

fn oob_client(vm: &MachinaProcess) -> QmpClient {
    let mut c = vm.raw_client();
    assert_eq!(c.greeting["QMP"]["capabilities"], json!(["oob"]));
    c.ok("qmp_capabilities", json!({"enable": ["oob"]}));
    c
}

fn blocking_add(c: &mut QmpClient, id: &str, fifo: &Path) {
    c.send(&json!({"execute": "blockdev-add", "id": id, "arguments": {
        "driver": "blkdebug", "node-name": id, "config": fifo.display().to_string(),
        "image": {"driver": "null-co", "read-zeroes": true}}}));
}

fn threads_named(pid: u32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with(prefix))
        .count()
}

#[test]
fn oob_is_answered_while_an_in_band_command_waits() {
    let mut vm = MachinaProcess::start(
        &machina(),
        "qmp-oob",
        &strings(&["-machine", "none", "-nodefaults", "-S"]),
    );
    let fifo = vm.dir().join("config");
    mkfifo(&fifo);
    let mut c = oob_client(&vm);
    // Without `oob`, no dispatcher thread: the reader runs the commands itself.
    let mut plain = vm.client();

    blocking_add(&mut c, "ib-1", &fifo);
    c.send(&json!({"execute": "query-name", "id": "ib-2"}));
    c.send(&json!({"exec-oob": "query-name", "id": "oob-1"}));
    c.send(&json!({"exec-oob": "no-such-command", "id": "oob-2"}));
    // Answered first, although read after the waiting command.
    assert_eq!(
        c.recv(),
        json!({"id": "oob-1", "error": {"class": "GenericError",
            "desc": "The command query-name does not support OOB"}})
    );
    assert_eq!(c.recv()["id"], "oob-2");
    // One dispatcher, for the `oob` client only (the other's reader runs its commands).
    assert_eq!(threads_named(vm.pid(), "qmp-disp-"), 1);
    // The wait holds no machine lock: another client is served meanwhile.
    assert_eq!(plain.ok("query-status", Value::Null)["status"], "prelaunch");

    // The writer's text is the config: one rule, then EOF when it closes.
    let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    w.write_all(b"[set-state]\nstate = \"1\"\nevent = \"read_aio\"\nnew_state = \"2\"\n")
        .unwrap();
    drop(w);
    assert_eq!(c.recv(), json!({"return": {}, "id": "ib-1"}));
    assert_eq!(c.recv(), json!({"return": {}, "id": "ib-2"}));

    // A malformed in-band request waits its turn too; a config the writer filled with
    // nonsense fails the command, in order.
    blocking_add(&mut c, "ib-3", &fifo);
    c.send(&json!({"id": "err-4"}));
    c.send(&json!({"exec-oob": "query-name", "id": "oob-5"}));
    assert_eq!(c.recv()["id"], "oob-5");
    let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    w.write_all(b"[no-such-section]\n").unwrap();
    drop(w);
    let r = c.recv();
    assert_eq!(r["id"], "ib-3", "{r}");
    assert!(r["error"]["desc"].is_string(), "{r}");
    assert_eq!(
        c.recv(),
        json!({"id": "err-4", "error": {"class": "GenericError",
            "desc": "QMP input lacks member 'execute'"}})
    );
    assert_eq!(
        plain
            .ok("query-named-block-nodes", Value::Null)
            .as_array()
            .map(|l| l.iter().any(|n| n["node-name"] == "ib-1")),
        Some(true)
    );

    // SIGTERM while a command waits for its FIFO: a clean exit, not a hang.
    blocking_add(&mut c, "ib-6", &fifo);
    c.send(&json!({"exec-oob": "query-name", "id": "oob-7"}));
    assert_eq!(c.recv()["id"], "oob-7");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(vm.pid() as i32, libc::SIGTERM) }, 0);
    assert_eq!(vm.wait_exit(Duration::from_secs(60)), Some(0));
}

/// A client that leaves while its command waits for a FIFO: the wait ends (the helper that
/// opened the FIFO is released), the dispatcher and reader threads go away.
#[test]
fn a_client_that_leaves_ends_its_wait() {
    let vm = MachinaProcess::start(
        &machina(),
        "qmp-oob-leave",
        &strings(&["-machine", "none", "-nodefaults", "-S"]),
    );
    let fifo = vm.dir().join("config");
    mkfifo(&fifo);
    let mut plain = vm.client();
    let mut c = oob_client(&vm);
    blocking_add(&mut c, "n0", &fifo);
    c.send(&json!({"exec-oob": "query-name", "id": 1}));
    assert_eq!(c.recv()["id"], 1);
    drop(c);
    // Hang guard only: the threads go within a poll period or two.
    let start = std::time::Instant::now();
    while threads_named(vm.pid(), "qmp-disp-") + threads_named(vm.pid(), "fifo-open") > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the wait did not end"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Nothing was added, and the FIFO has no reader left (a writer's open would fail).
    let nodes = plain.ok("query-named-block-nodes", Value::Null);
    assert!(!nodes.to_string().contains("\"n0\""), "{nodes}");
    let w = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo);
    assert_eq!(w.unwrap_err().raw_os_error(), Some(libc::ENXIO));
}
