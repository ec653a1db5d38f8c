//! virtio-balloon driven from outside as a guest driver would (qtest) while QMP watches:
//! the target the host sets reaches the config space, an inflated page's memory is given
//! back (it reads as zeros again), the guest's `actual` is BALLOON_CHANGE and
//! `query-balloon`, its stats are `guest-stats`, and `guest-stats-polling-interval` hands
//! the stats buffer back for a refill.

mod common;

use common::machina;
use machina_tests::qmp_client::QmpClient;
use machina_tests::qtest_client::Qtest;
use machina_tests::TempDir;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Where firmware would put BAR 4 (the modern virtio BAR): free q35 MMIO below 4 GiB.
const BAR4: u64 = 0xe000_0000;
const BDF: (u8, u8, u8) = (0, 4, 0);
const COMMON: u64 = BAR4;
const DEVICE_CFG: u64 = BAR4 + 0x2000;
const NOTIFY: u64 = BAR4 + 0x3000;
const RAM: u64 = 128 << 20;
const PATH: &str = "/machine/peripheral/balloon";

/// Queue `q`'s rings, 16 KiB apart from 1 MiB up; buffers from 2 MiB.
fn rings(q: u64) -> (u64, u64, u64) {
    let base = 0x10_0000 + q * 0x4000;
    (base, base + 0x1000, base + 0x2000)
}
const BUF: u64 = 0x20_0000;
/// The guest page put in the balloon.
const PAGE: u64 = 0x30_0000;

fn start(dir: &TempDir) -> (Qtest, QmpClient) {
    let sock = dir.join("qmp.sock");
    let args: Vec<String> = [
        "-machine",
        "q35",
        "-m",
        "128M",
        "-nodefaults",
        "-device",
        "virtio-balloon-pci,id=balloon,addr=04.0",
        "-qmp",
        &format!("unix:{},server=on,wait=off", sock.display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let q = Qtest::start(&machina(), &args);
    let mut qmp = QmpClient::connect(&sock, Duration::from_secs(30));
    qmp.ok("qmp_capabilities", Value::Null);
    (q, qmp)
}

fn ok(q: &mut Qtest, cmd: String) {
    assert_eq!(q.cmd(&cmd), "OK", "{cmd}");
}

/// Put a one-descriptor chain (device-readable) on queue `q` at avail slot `slot`.
fn submit(qt: &mut Qtest, q: u64, slot: u64, addr: u64, len: u32) {
    let (desc, avail, _) = rings(q);
    let d = desc + 16 * slot;
    ok(qt, format!("writeq {d:#x} {addr:#x}"));
    ok(qt, format!("writel {:#x} {len:#x}", d + 8));
    ok(qt, format!("writew {:#x} 0x0", d + 12));
    ok(qt, format!("writew {:#x} {slot:#x}", avail + 4 + 2 * slot));
    ok(qt, format!("writew {:#x} {:#x}", avail + 2, slot + 1));
    let off = {
        ok(qt, format!("writew {:#x} {q:#x}", COMMON + 0x16));
        qt.value(&format!("readw {:#x}", COMMON + 0x1e))
    };
    ok(qt, format!("writew {:#x} {q:#x}", NOTIFY + 4 * off));
}

/// Wait (a hang guard, not a timing) until queue `q`'s used index reaches `n`.
fn wait_used(qt: &mut Qtest, q: u64, n: u64) {
    let (_, _, used) = rings(q);
    let deadline = Instant::now() + Duration::from_secs(30);
    while qt.value(&format!("readw {:#x}", used + 2)) < n {
        assert!(
            Instant::now() < deadline,
            "queue {q}: used index never reached {n}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stats(qmp: &mut QmpClient) -> Value {
    qmp.ok("qom-get", json!({"path": PATH, "property": "guest-stats"}))
}

#[test]
fn balloon_driven_by_a_guest_driver() {
    let dir = TempDir::new("qtest-balloon");
    let (mut q, mut qmp) = start(&dir);

    // Before any driver: the whole RAM is the guest's, no stats yet (each one unset).
    assert_eq!(qmp.ok("query-balloon", Value::Null), json!({"actual": RAM}));
    let s = stats(&mut qmp);
    assert_eq!(s["last-update"], 0);
    let names = s["stats"].as_object().unwrap();
    assert_eq!(names.len(), 16);
    assert!(names.values().all(|v| *v == json!(u64::MAX)), "{s}");
    let props = qmp.ok("qom-list", json!({"path": PATH}));
    assert!(
        props.to_string().contains("guest-stats-polling-interval"),
        "{props}"
    );
    assert_eq!(
        qmp.error(
            "qom-set",
            json!({"path": PATH, "property": "guest-stats-polling-interval", "value": -1})
        ),
        "timer value must be greater than zero"
    );
    assert_eq!(
        qmp.error("balloon", json!({"value": 0})),
        "Parameter 'value' expects a size"
    );

    // Firmware's part, then a modern driver: features STATS_VQ (1) and PAGE_POISON (4), as
    // QEMU offers at its defaults, plus VERSION_1.
    q.cfg_write(BDF, 0x20, 4, BAR4 as u32);
    q.cfg_write(BDF, 0x24, 4, (BAR4 >> 32) as u32);
    q.cfg_write(BDF, 0x04, 2, 0x6);
    ok(&mut q, format!("writeb {:#x} 0x3", COMMON + 0x14));
    ok(&mut q, format!("writel {:#x} 0x0", COMMON));
    // (The transport's bits 28-29, indirect descriptors and EVENT_IDX, are there too.)
    assert_eq!(
        q.value(&format!("readl {:#x}", COMMON + 0x04)) & 0xff_ffff,
        0x12
    );
    ok(&mut q, format!("writel {:#x} 0x1", COMMON));
    assert_eq!(q.value(&format!("readl {:#x}", COMMON + 0x04)), 0x1);
    for (sel, bits) in [(0, 0x2), (1, 0x1)] {
        ok(&mut q, format!("writel {:#x} {sel}", COMMON + 0x08));
        ok(&mut q, format!("writel {:#x} {bits:#x}", COMMON + 0x0c));
    }
    ok(&mut q, format!("writeb {:#x} 0xb", COMMON + 0x14));
    assert_eq!(
        q.value(&format!("readw {:#x}", COMMON + 0x12)),
        3,
        "three queues"
    );
    for qi in 0..3u64 {
        let (desc, avail, used) = rings(qi);
        ok(&mut q, format!("writew {:#x} {qi:#x}", COMMON + 0x16));
        ok(&mut q, format!("writew {:#x} 0x8", COMMON + 0x18));
        for (off, addr) in [(0x20, desc), (0x28, avail), (0x30, used)] {
            ok(&mut q, format!("writeq {:#x} {addr:#x}", COMMON + off));
        }
        ok(&mut q, format!("writew {:#x} 0x1", COMMON + 0x1c));
    }
    ok(&mut q, format!("writeb {:#x} 0xf", COMMON + 0x14));

    // The host asks for 32 MiB: num_pages = 8192 in the config space.
    qmp.ok("balloon", json!({"value": 96 << 20}));
    assert_eq!(q.value(&format!("readl {DEVICE_CFG:#x}")), 8192);

    // Inflate one written page, and a frame beyond RAM (skipped): the page reads as zeros
    // afterwards, its memory given back to the host.
    ok(&mut q, format!("writeq {PAGE:#x} 0x5a5a5a5a5a5a5a5a"));
    ok(&mut q, format!("writel {BUF:#x} {:#x}", PAGE >> 12));
    ok(
        &mut q,
        format!("writel {:#x} {:#x}", BUF + 4, (8u64 << 30) >> 12),
    );
    submit(&mut q, 0, 0, BUF, 8);
    wait_used(&mut q, 0, 1);
    assert_eq!(q.value(&format!("readq {PAGE:#x}")), 0);

    // The guest reports 8192 pages in the balloon: BALLOON_CHANGE, and query-balloon.
    ok(&mut q, format!("writel {:#x} 0x2000", DEVICE_CFG + 4));
    let ev = qmp.wait_event("BALLOON_CHANGE");
    assert_eq!(ev["data"], json!({"actual": 96u64 << 20}));
    assert_eq!(
        qmp.ok("query-balloon", Value::Null),
        json!({"actual": 96u64 << 20})
    );

    // Deflate it again: the chain comes back.
    submit(&mut q, 1, 0, BUF, 4);
    wait_used(&mut q, 1, 1);
    ok(&mut q, format!("writeq {PAGE:#x} 0x1234"));
    assert_eq!(q.value(&format!("readq {PAGE:#x}")), 0x1234);

    // Stats: free memory 0x1234, total RAM, and a tag past the known ones (ignored).
    let stats_buf = BUF + 0x1000;
    for (i, (tag, val)) in [(4u64, 0x1234u64), (5, RAM), (99, 7)].iter().enumerate() {
        let at = stats_buf + 10 * i as u64;
        ok(&mut q, format!("writew {at:#x} {tag:#x}"));
        ok(&mut q, format!("writeq {:#x} {val:#x}", at + 2));
    }
    submit(&mut q, 2, 0, stats_buf, 30);
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s = stats(&mut qmp);
        if s["last-update"] != 0 {
            break s;
        }
        assert!(Instant::now() < deadline, "stats never recorded");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(s["stats"]["stat-free-memory"], 0x1234);
    assert_eq!(s["stats"]["stat-total-memory"], RAM);
    assert_eq!(s["stats"]["stat-swap-in"], json!(u64::MAX));
    // The buffer is kept until polling asks for more: then it is handed back.
    let (_, _, used) = rings(2);
    assert_eq!(q.value(&format!("readw {:#x}", used + 2)), 0);
    qmp.ok(
        "qom-set",
        json!({"path": PATH, "property": "guest-stats-polling-interval", "value": 30}),
    );
    assert_eq!(
        qmp.ok(
            "qom-get",
            json!({"path": PATH, "property": "guest-stats-polling-interval"})
        ),
        30
    );
    wait_used(&mut q, 2, 1);
}

/// Without a balloon, QEMU's DeviceNotActive.
#[test]
fn no_balloon_no_balloon_commands() {
    let dir = TempDir::new("qmp-no-balloon");
    let sock = dir.join("qmp.sock");
    let args: Vec<String> = [
        "-machine",
        "q35",
        "-nodefaults",
        "-qmp",
        &format!("unix:{},server=on,wait=off", sock.display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _q = Qtest::start(&machina(), &args);
    let mut qmp = QmpClient::connect(&sock, Duration::from_secs(30));
    qmp.ok("qmp_capabilities", Value::Null);
    for (cmd, args) in [
        ("query-balloon", Value::Null),
        ("balloon", json!({"value": 1})),
    ] {
        let r = qmp.execute(cmd, args);
        assert_eq!(
            r["error"],
            json!({"class": "DeviceNotActive", "desc": "No balloon device has been activated"})
        );
    }
}

/// QEMU registers one balloon: a second one is refused, naming the device.
#[test]
fn a_second_balloon_is_refused() {
    let r = machina_tests::run(
        &machina(),
        &[
            "-machine",
            "q35",
            "-nodefaults",
            "-S",
            "-display",
            "none",
            "-device",
            "virtio-balloon-pci,id=b1",
            "-device",
            "virtio-balloon-pci,id=b2",
        ],
        Duration::from_secs(60),
    );
    r.check(r.status == Some(1), "exit status 1");
    r.check(
        r.stderr.contains("b2") && r.stderr.contains("Only one balloon device is supported"),
        "QEMU's text naming the second balloon",
    );
}
