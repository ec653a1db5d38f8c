//! The qtest protocol as QEMU's own suite (libqtest/libqos) drives it (issue 14): fw_cfg at
//! 0x510, CONFIG_ADDRESS keeping its low bits, b64read/b64write, the virtual clock,
//! interception replies, commands queued before the machine exists, and the human monitor
//! over QMP. scripts/qemu-qtest runs QEMU's suite itself; these are the regression tests of
//! what it needed.

mod common;

use common::{machina, require_kvm};
use machina_tests::qmp_client::QmpClient;
use machina_tests::qtest_client::Qtest;
use machina_tests::TempDir;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// machina under qtest on q35 with `extra` arguments, as libqtest starts it: the qtest
/// socket is ours to listen on (the accepted connection is returned) and a QMP socket in
/// `dir`.
fn start_with_qmp(dir: &TempDir, extra: &[&str]) -> (std::process::Child, UnixStream, PathBuf) {
    let qtest_path = dir.join("qtest.sock");
    let qmp_path = dir.join("qmp.sock");
    let listener = std::os::unix::net::UnixListener::bind(&qtest_path).unwrap();
    let child = Command::new(machina())
        .args(["-accel", "qtest", "-M", "q35", "-nodefaults"])
        .args(extra)
        .arg("-qtest")
        .arg(format!("unix:{}", qtest_path.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (stream, _) = listener.accept().unwrap();
    (child, stream, qmp_path)
}

fn fw_cfg_read(q: &mut Qtest, key: u16, len: usize) -> Vec<u8> {
    assert_eq!(q.cmd(&format!("outw 0x510 {key:#x}")), "OK");
    (0..len).map(|_| q.value("inb 0x511") as u8).collect()
}

/// The directory entries: (name, key, size).
fn fw_cfg_files(q: &mut Qtest) -> Vec<(String, u16, u32)> {
    let count = u32::from_be_bytes(fw_cfg_read(q, 0x19, 4).try_into().unwrap()) as usize;
    let dir = fw_cfg_read(q, 0x19, 4 + 64 * count);
    dir[4..]
        .chunks(64)
        .map(|e| {
            let size = u32::from_be_bytes(e[0..4].try_into().unwrap());
            let key = u16::from_be_bytes(e[4..6].try_into().unwrap());
            let name = String::from_utf8_lossy(&e[8..])
                .trim_end_matches('\0')
                .to_string();
            (name, key, size)
        })
        .collect()
}

#[test]
fn fw_cfg_items_follow_the_command_line() {
    if !require_kvm() {
        return;
    }
    let mut q = Qtest::start(
        &machina(),
        &args(&[
            "-M",
            "q35",
            "-m",
            "256",
            "-smp",
            "2",
            "-uuid",
            "4600cb32-38ec-4b2f-8acb-81c6ea54f2d8",
            "-boot",
            "reboot-timeout=15,splash-time=12",
            "-nodefaults",
        ]),
    );
    assert_eq!(fw_cfg_read(&mut q, 0, 4), b"QEMU");
    // Traditional interface and DMA.
    assert_eq!(fw_cfg_read(&mut q, 1, 4), 3u32.to_le_bytes());
    assert_eq!(
        fw_cfg_read(&mut q, 2, 16),
        [
            0x46, 0x00, 0xcb, 0x32, 0x38, 0xec, 0x4b, 0x2f, 0x8a, 0xcb, 0x81, 0xc6, 0xea, 0x54,
            0xf2, 0xd8
        ]
    );
    assert_eq!(fw_cfg_read(&mut q, 3, 8), (256u64 << 20).to_le_bytes());
    assert_eq!(fw_cfg_read(&mut q, 5, 2), 2u16.to_le_bytes());
    let files = fw_cfg_files(&mut q);
    let names: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(
        names,
        ["etc/boot-fail-wait", "etc/boot-menu-wait", "etc/e820"],
        "sorted by name"
    );
    let (_, key, size) = files[0].clone();
    assert_eq!(size, 4);
    assert_eq!(fw_cfg_read(&mut q, key, 4), 15u32.to_le_bytes());
    assert_eq!(fw_cfg_read(&mut q, files[1].1, 2), 12u16.to_le_bytes());

    // DMA: read etc/e820 into guest memory through a descriptor at 0x1000.
    let (_, e820_key, e820_size) = files[2].clone();
    assert_eq!(e820_size % 20, 0);
    let control: u32 = (u32::from(e820_key) << 16) | 0x08 | 0x02;
    let mut desc = control.to_be_bytes().to_vec();
    desc.extend_from_slice(&e820_size.to_be_bytes());
    desc.extend_from_slice(&0x2000u64.to_be_bytes());
    let hex: String = desc.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(q.cmd(&format!("write 0x1000 {} 0x{hex}", desc.len())), "OK");
    // As libqos does: low half (starts the transfer), then the high half.
    assert_eq!(
        q.cmd(&format!("outl 0x518 {:#x}", 0x1000u32.swap_bytes())),
        "OK"
    );
    assert_eq!(q.cmd("outl 0x514 0x0"), "OK");
    assert_eq!(q.value("readl 0x1000"), 0, "DMA status: done, no error");
    // The first entry: RAM from 0, type 1, as the plan's memory map says.
    assert_eq!(q.value("readq 0x2000"), 0);
    assert_eq!(q.value("readl 0x2010"), 1);
    assert!(q.value("readq 0x2008") >= 0x9_f000);
}

#[test]
fn config_address_keeps_its_low_bits_and_memory_round_trips() {
    if !require_kvm() {
        return;
    }
    let mut q = Qtest::start(&machina(), &args(&["-M", "q35", "-nodefaults"]));
    // libqos selects the word at offset 2 and reads it at 0xcfc: the device ID (MCH 29c0).
    assert_eq!(q.cmd("outl 0xcf8 0x80000002"), "OK");
    assert_eq!(q.value("inw 0xcfc"), 0x29c0);
    assert_eq!(q.cmd("outl 0xcf8 0x80000000"), "OK");
    assert_eq!(q.value("inw 0xcfc"), 0x8086);

    // b64write / b64read (GLib's base64), and a payload shorter than LEN padded with zeroes.
    assert_eq!(q.cmd("b64write 0x3000 0x5 aGVsbG8="), "OK");
    assert_eq!(q.cmd("b64read 0x3000 0x5"), "OK aGVsbG8=");
    assert_eq!(q.cmd("read 0x3000 0x6"), "OK 0x68656c6c6f00");
    assert_eq!(q.cmd("b64write 0x3000 0x4 YQ=="), "OK");
    assert_eq!(q.cmd("read 0x3000 0x5"), "OK 0x610000006f");

    // The virtual clock moves only when the test says so, never backwards.
    assert_eq!(q.cmd("clock_step 100"), "OK 100");
    assert_eq!(q.cmd("clock_step 50"), "OK 150");
    assert_eq!(q.cmd("clock_set 1000"), "OK 1000");
    assert_eq!(q.cmd("clock_set 10"), "FAIL 1000");
    // No timer runs on the virtual clock here (the RTC follows the host's, -rtc clock=host).
    assert!(q.cmd("clock_step").starts_with("FAIL cannot advance clock"));
    assert_eq!(q.cmd("irq_intercept_in ioapic"), "OK");
    assert_eq!(q.cmd("irq_intercept_out ioapic"), "OK");
    assert_eq!(
        q.cmd("no_such_command 1"),
        "FAIL Unknown command 'no_such_command'"
    );
}

/// Under --preconfig libqtest asks `endianness` before it sends x-exit-preconfig: that
/// answer comes at once, and other commands wait until the machine exists.
#[test]
fn commands_before_the_build_wait_for_it() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("qtest-pre");
    let (mut child, stream, qmp_path) = start_with_qmp(&dir, &["--preconfig"]);
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    writer.write_all(b"endianness\nreadb 0x0\n").unwrap();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "OK little\n");
    // The read is held until the machine is built.
    let mut qmp = QmpClient::connect(&qmp_path, Duration::from_secs(20));
    qmp.ok("qmp_capabilities", Value::Null);
    assert_eq!(
        qmp.ok("query-status", Value::Null)["status"],
        json!("prelaunch")
    );
    // QEMU's x-exit-preconfig returns an empty object (the plan stays with machine-build
    // and x-query-machine-definition).
    assert_eq!(qmp.ok("x-exit-preconfig", Value::Null), json!({}));
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "OK 0x0000000000000000\n");

    // The human monitor answers from machina's state.
    let hmp = |qmp: &mut QmpClient, cmd: &str| -> String {
        qmp.ok("human-monitor-command", json!({"command-line": cmd}))
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(hmp(&mut qmp, "info status"), "VM status: running\r\n");
    let info = hmp(&mut qmp, "help info");
    assert!(info.lines().all(|l| l.starts_with("info ")), "{info}");
    assert!(hmp(&mut qmp, "device_add help").contains("name \"virtio-blk-pci\""));
    assert_eq!(hmp(&mut qmp, "xyzzy"), "unknown command: 'xyzzy'\r\n");
    assert!(hmp(&mut qmp, "info qtree").contains("bus: pcie.0"));

    let _ = child.kill();
    let _ = child.wait();
}

/// Under qtest no vCPU runs, yet `stop` and `cont` change the run state as in QEMU: `stop`
/// pauses a running machine (STOP), a second `stop` does nothing, `cont` resumes it
/// (RESUME) and a `cont` while running sends no event. (machina once decided "running" from
/// its vCPU gate, which qtest never opens: `stop` was a no-op, and a repeated `device_del`
/// of a CPU was accepted after `stop`.)
#[test]
fn stop_and_cont_change_the_run_state_under_qtest() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("qtest-stop");
    let (mut child, _stream, qmp_path) = start_with_qmp(&dir, &[]);
    let mut qmp = QmpClient::connect(&qmp_path, Duration::from_secs(20));
    qmp.ok("qmp_capabilities", Value::Null);
    let status = |qmp: &mut QmpClient| qmp.ok("query-status", Value::Null)["status"].clone();
    let count =
        |qmp: &QmpClient, name: &str| qmp.events.iter().filter(|e| e["event"] == name).count();
    assert_eq!(status(&mut qmp), json!("running"));

    qmp.ok("stop", Value::Null);
    qmp.wait_event("STOP");
    assert_eq!(status(&mut qmp), json!("paused"));
    qmp.ok("stop", Value::Null);
    assert_eq!(status(&mut qmp), json!("paused"));
    assert_eq!(count(&qmp, "STOP"), 0, "a second stop sends no STOP");

    qmp.ok("cont", Value::Null);
    qmp.wait_event("RESUME");
    assert_eq!(status(&mut qmp), json!("running"));
    qmp.ok("cont", Value::Null);
    assert_eq!(status(&mut qmp), json!("running"));
    assert_eq!(
        count(&qmp, "RESUME"),
        0,
        "cont while running sends no RESUME"
    );

    qmp.ok("quit", Value::Null);
    let _ = child.wait();
}
