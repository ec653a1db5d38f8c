//! Device timers on the virtual clock. Under qtest only `clock_step`/`clock_set` move time,
//! and the RTC's periodic interrupt, the ib700 and TCO watchdogs and pvpanic act when it
//! passes their deadlines, with QEMU's events and actions (`-watchdog-action`, `-action`).
//! With KVM the clock is the host's while the vCPUs run: the tiny guest arms the ib700 and
//! the watchdog's action ends it.

mod common;

use common::{machina, require_kvm};
use machina_tests::qmp_client::QmpClient;
use machina_tests::qtest_client::Qtest;
use machina_tests::TempDir;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A qtest machine with a QMP socket too (in a directory removed on drop).
struct Machine {
    q: Qtest,
    qmp: QmpClient,
    _dir: TempDir,
}

fn start(name: &str, extra: &[&str]) -> Machine {
    let dir = TempDir::new(&format!("timers-{name}"));
    let qmp_path = dir.join("qmp.sock");
    let mut args: Vec<String> = vec![
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp_path.display()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let q = Qtest::start(&machina(), &args);
    let mut qmp = QmpClient::connect(&qmp_path, Duration::from_secs(20));
    qmp.ok("qmp_capabilities", Value::Null);
    Machine { q, qmp, _dir: dir }
}

fn cmos_write(q: &mut Qtest, reg: u8, v: u8) {
    assert_eq!(q.cmd(&format!("outb 0x70 {reg:#x}")), "OK");
    assert_eq!(q.cmd(&format!("outb 0x71 {v:#x}")), "OK");
}

/// `clock_step` without an argument moves to the RTC's next deadline; at 2 Hz the periodic
/// interrupt raises IRQ 8 every half second of virtual time, and reading register C (PF set)
/// lowers it.
#[test]
fn rtc_periodic_interrupt_follows_clock_step() {
    if !require_kvm() {
        return;
    }
    let mut m = start("rtc", &["-M", "q35", "-nodefaults", "-rtc", "clock=vm"]);
    let q = &mut m.q;
    assert_eq!(q.cmd("irq_intercept_in ioapic"), "OK");
    cmos_write(q, 0x0a, 0x2f); // 32 kHz divider, rate 15: 2 Hz
    cmos_write(q, 0x0b, 0x02 | 0x40); // 24h, PIE
    let start: i64 = q
        .cmd("clock_step 1")
        .trim_start_matches("OK ")
        .parse()
        .unwrap();
    let mut raised = Vec::new();
    let mut now = start;
    while now < start + 3_000_000_000 {
        let (reply, irqs) = q.cmd_irqs("clock_step");
        now = reply
            .strip_prefix("OK ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("clock_step: {reply}"));
        if irqs.contains(&"IRQ raise 8".to_string()) {
            raised.push(now);
            let (_, irqs) = q.cmd_irqs("outb 0x70 0x0c");
            assert!(irqs.is_empty());
            let (c, irqs) = q.cmd_irqs("inb 0x71");
            let c = u64::from_str_radix(c.trim_start_matches("OK 0x"), 16).unwrap();
            assert_ne!(c & 0x40, 0, "PF in register C");
            assert_eq!(irqs, vec!["IRQ lower 8".to_string()]);
        }
    }
    assert_eq!(
        raised.len(),
        6,
        "two interrupts per virtual second: {raised:?}"
    );
    for pair in raised.windows(2) {
        let period = pair[1] - pair[0];
        assert!(
            (499_000_000..=501_000_000).contains(&period),
            "half a second apart: {raised:?}"
        );
    }
    // Interrupts off: no deadline is left for the periodic timer to fire.
    cmos_write(q, 0x0b, 0x02);
    let (_, irqs) = q.cmd_irqs("clock_step 5000000000");
    assert!(irqs.iter().all(|l| l != "IRQ raise 8"), "{irqs:?}");
}

/// ib700 with `-watchdog-action pause`: nothing happens while the guest pings in time;
/// expiry sends WATCHDOG {action: pause} and stops the machine in state `watchdog`.
#[test]
fn ib700_expiry_pauses_with_the_watchdog_event() {
    if !require_kvm() {
        return;
    }
    let mut m = start("ib700", &["-watchdog-action", "pause", "-device", "ib700"]);
    assert_eq!(m.q.cmd("outb 0x443 14"), "OK"); // 2 s
    assert_eq!(m.q.cmd("clock_step 1000000000"), "OK 1000000000");
    assert_eq!(m.q.cmd("outb 0x443 14"), "OK"); // ping
    assert_eq!(m.q.cmd("clock_step 1500000000"), "OK 2500000000");
    assert_eq!(
        m.qmp.ok("query-status", Value::Null)["status"],
        json!("running")
    );
    m.q.cmd("clock_step 1000000000");
    let ev = m.qmp.wait_event("WATCHDOG");
    assert_eq!(ev["data"], json!({"action": "pause"}));
    m.qmp.wait_event("STOP");
    assert_eq!(
        m.qmp.ok("query-status", Value::Null),
        json!({"status": "watchdog", "running": false})
    );
    // `cont` leaves the watchdog state (a panic would need a reset).
    m.qmp.ok("cont", Value::Null);
    assert_eq!(
        m.qmp.ok("query-status", Value::Null)["status"],
        json!("running")
    );
}

/// The TCO watchdog's second timeout resets the machine (`-watchdog-action reset`) once
/// GCS.NO_REBOOT is cleared; `watchdog-set-action` changes the action at run time.
#[test]
fn tco_second_timeout_resets_and_set_action_applies() {
    if !require_kvm() {
        return;
    }
    let mut m = start("tco", &["-M", "q35", "-watchdog-action", "pause"]);
    m.qmp.ok("watchdog-set-action", json!({"action": "reset"}));
    let q = &mut m.q;
    // LPC 00:1f.0: PMBASE 0xb000 with ACPI decoding, RCBA at 0xfed1c000.
    let cfg = |q: &mut Qtest, off: u32, size: &str, v: u32| {
        assert_eq!(q.cmd(&format!("outl 0xcf8 {:#x}", 0x8000_f800 | off)), "OK");
        assert_eq!(q.cmd(&format!("out{size} 0xcfc {v:#x}")), "OK");
    };
    cfg(q, 0x40, "l", 0xb001);
    cfg(q, 0x44, "b", 0x80);
    cfg(q, 0xf0, "l", 0xfed1_c001);
    let gcs = q.value("readl 0xfed1f410");
    assert_ne!(gcs & 0x20, 0, "NO_REBOOT is set at reset");
    assert_eq!(
        q.cmd(&format!("writel 0xfed1f410 {:#x}", gcs & !0x20)),
        "OK"
    );
    assert_eq!(q.cmd("outw 0xb072 10"), "OK"); // TCO_TMR: 6 s
    assert_eq!(q.cmd("outw 0xb060 4"), "OK"); // reload
    assert_eq!(q.value("inw 0xb060") & 0x3ff, 10);
    assert_eq!(q.cmd("clock_step 6000000000"), "OK 6000000000");
    assert_ne!(q.value("inw 0xb064") & 0x8, 0, "first timeout: TIMEOUT");
    q.cmd("clock_step 6000000000");
    let ev = m.qmp.wait_event("WATCHDOG");
    assert_eq!(ev["data"], json!({"action": "reset"}));
    let reset = m.qmp.wait_event("RESET");
    assert_eq!(
        reset["data"],
        json!({"guest": true, "reason": "guest-reset"})
    );
    // The rebuilt machine: the PM block is unmapped again, GCS back to NO_REBOOT.
    assert_eq!(q.cmd("outl 0xcf8 0x8000f840"), "OK");
    assert_eq!(q.value("inl 0xcfc"), 1);
}

/// pvpanic (`-action panic=pause`): a write of PANICKED sends GUEST_PANICKED {action:
/// pause} and stops in `guest-panicked`, which `cont` refuses; `set-action` switches a
/// panic to nothing but the event.
#[test]
fn pvpanic_panic_actions() {
    if !require_kvm() {
        return;
    }
    let mut m = start("pvpanic", &["-device", "pvpanic", "-action", "panic=none"]);
    assert_eq!(m.q.value("inb 0x505"), 7);
    assert_eq!(m.q.cmd("outb 0x505 2"), "OK");
    let ev = m.qmp.wait_event("GUEST_CRASHLOADED");
    assert_eq!(ev["data"], json!({"action": "run"}));
    assert_eq!(m.q.cmd("outb 0x505 1"), "OK");
    let ev = m.qmp.wait_event("GUEST_PANICKED");
    assert_eq!(ev["data"], json!({"action": "run"}));
    m.qmp.ok("set-action", json!({"panic": "pause"}));
    assert_eq!(m.q.cmd("outb 0x505 1"), "OK");
    let ev = m.qmp.wait_event("GUEST_PANICKED");
    assert_eq!(ev["data"], json!({"action": "pause"}));
    m.qmp.wait_event("STOP");
    assert_eq!(
        m.qmp.ok("query-status", Value::Null)["status"],
        json!("guest-panicked")
    );
    assert_eq!(
        m.qmp.error("cont", Value::Null),
        "Resetting the Virtual Machine is required"
    );
    assert!(m
        .qmp
        .error("set-action", json!({"panic": "explode"}))
        .contains("panic"));
}

fn cmos_read(q: &mut Qtest, reg: u8) -> u8 {
    assert_eq!(q.cmd(&format!("outb 0x70 {reg:#x}")), "OK");
    q.value("inb 0x71") as u8
}

/// A system reset keeps the CMOS RAM and the time the guest set (QEMU resets only the RTC's
/// interrupt state), and ends `-boot once=`: the order is `order=` again.
#[test]
fn cmos_survives_a_reset_and_boot_once_ends() {
    if !require_kvm() {
        return;
    }
    let mut m = start(
        "cmos",
        &["-M", "pc", "-rtc", "clock=vm", "-boot", "once=n,order=dc"],
    );
    // Boot order nibbles: 0x3d = second << 4 | first, 0x38 = third << 4 | !fd_bootchk.
    assert_eq!(cmos_read(&mut m.q, 0x3d), 0x04);
    cmos_write(&mut m.q, 0x0b, 0x02 | 0x04); // 24h, binary
    cmos_write(&mut m.q, 0x0a, 0x76); // divider reset: set the time
    cmos_write(&mut m.q, 0x09, 77);
    cmos_write(&mut m.q, 0x0a, 0x26);
    cmos_write(&mut m.q, 0x50, 0xa5);
    m.qmp.ok("system_reset", Value::Null);
    m.qmp.wait_event("RESET");
    assert_eq!(cmos_read(&mut m.q, 0x09), 77);
    assert_eq!(cmos_read(&mut m.q, 0x50), 0xa5);
    assert_eq!(cmos_read(&mut m.q, 0x3d), 0x23);
}

/// The tiny guest with `machina.test=watchdog` under KVM, a QMP socket, its console in a
/// file; returns the child, the negotiated QMP client and the directory.
fn kvm_watchdog_guest(
    name: &str,
    action: &str,
    extra: &[&str],
) -> (std::process::Child, QmpClient, TempDir) {
    let dir = TempDir::new(&format!("wdt-{name}"));
    let qmp_path = dir.join("qmp.sock");
    let child = Command::new(machina())
        .args(["-qmp"])
        .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
        .args(["-display", "none", "-serial"])
        .arg(format!("file:{}", dir.join("serial.log").display()))
        .args(["-device", "ib700", "-watchdog-action", action])
        .args(["-append", "machina.test=watchdog"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start machina");
    // Hang guard only: PVM is slow, the watchdog itself takes 2 s of guest time.
    let mut qmp = QmpClient::connect(&qmp_path, Duration::from_secs(120));
    qmp.ok("qmp_capabilities", Value::Null);
    (child, qmp, dir)
}

fn wait_exit(child: &mut std::process::Child) -> (i32, String) {
    let end = std::time::Instant::now() + Duration::from_secs(120);
    while std::time::Instant::now() < end {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return (status.code().unwrap_or(-1), err);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("machina did not exit");
}

/// A guest that stops pinging its ib700 is reset by it (`-watchdog-action reset`); with
/// `-no-reboot` the reset ends the process, as a guest reset does.
#[test]
fn kvm_guest_ib700_expiry_resets() {
    if !require_kvm() {
        return;
    }
    let (mut child, mut qmp, dir) = kvm_watchdog_guest("reset", "reset", &["-no-reboot"]);
    let ev = qmp.wait_event("WATCHDOG");
    assert_eq!(ev["data"], json!({"action": "reset"}));
    let ev = qmp.wait_event("SHUTDOWN");
    assert_eq!(ev["data"], json!({"guest": true, "reason": "guest-reset"}));
    let (code, err) = wait_exit(&mut child);
    assert_eq!(code, 0, "{err}");
    let log = std::fs::read_to_string(dir.join("serial.log")).unwrap_or_default();
    assert!(log.contains("watchdog: armed"), "{log}");
}

/// `inject-nmi`: every vCPU takes an NMI; the tiny guest has no IDT, so the NMI escalates to
/// a triple fault, which machina reports as a failed guest (exit 1).
#[test]
fn kvm_guest_ib700_inject_nmi_reaches_the_vcpu() {
    if !require_kvm() {
        return;
    }
    let (mut child, mut qmp, dir) = kvm_watchdog_guest("nmi", "inject-nmi", &[]);
    let ev = qmp.wait_event("WATCHDOG");
    assert_eq!(ev["data"], json!({"action": "inject-nmi"}));
    let (code, err) = wait_exit(&mut child);
    assert_eq!(code, 1, "a triple fault after the NMI: {err}");
    assert!(err.contains("triple fault"), "{err}");
    drop(dir);
}
