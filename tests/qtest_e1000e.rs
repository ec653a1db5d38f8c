//! The e1000e through the real machina in qtest mode, driven as a driver would through its
//! registers and rings in guest memory: frames cross a `-netdev dgram` (unix sockets) both
//! ways, INTx rises and falls with ICR, MSI-X messages land in guest memory where the
//! table points, and a NIC without netdev still transmits (into nothing).

mod common;

use common::{machina, require_kvm};
use machina_tests::qtest_client::Qtest;
use machina_tests::temp::TempDir;
use std::io::Write;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::time::{Duration, Instant};

const NIC: (u8, u8, u8) = (0, 3, 0);
const MMIO: u64 = 0xfe00_0000;
const MSIX: u64 = 0xfe04_0000;
const TX_RING: u64 = 0x10_0000;
const RX_RING: u64 = 0x10_1000;
const TX_BUF: u64 = 0x11_0000;
const RX_BUF: u64 = 0x12_0000;
const MSI_ADDR: u64 = 0x13_0000;
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x99];

// Registers and bits (82574L datasheet).
const CTRL: u64 = 0x0;
const STATUS: u64 = 0x8;
const ICR: u64 = 0xc0;
const ICS: u64 = 0xc8;
const IMS: u64 = 0xd0;
const IVAR: u64 = 0xe4;
const RCTL: u64 = 0x100;
const TCTL: u64 = 0x400;
const RDBAL: u64 = 0x2800;
const RDLEN: u64 = 0x2808;
const RDH: u64 = 0x2810;
const RDT: u64 = 0x2818;
const TDBAL: u64 = 0x3800;
const TDLEN: u64 = 0x3808;
const TDH: u64 = 0x3810;
const TDT: u64 = 0x3818;
const RFCTL: u64 = 0x5008;
const RAL0: u64 = 0x5400;
const RAH0: u64 = 0x5404;
const GPTC: u64 = 0x4080;
const GPRC: u64 = 0x4074;
const ICR_TXDW: u32 = 1;
const ICR_RXT0: u32 = 1 << 7;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn w(q: &mut Qtest, reg: u64, v: u32) {
    assert_eq!(q.cmd(&format!("writel {:#x} {v:#x}", MMIO + reg)), "OK");
}

fn r(q: &mut Qtest, reg: u64) -> u32 {
    q.value(&format!("readl {:#x}", MMIO + reg)) as u32
}

fn q_value(reply: &str) -> u64 {
    let v = reply
        .strip_prefix("OK 0x")
        .unwrap_or_else(|| panic!("answered {reply:?}"));
    u64::from_str_radix(v, 16).unwrap()
}

fn put(q: &mut Qtest, addr: u64, data: &[u8]) {
    let line = format!("write {addr:#x} {:#x} 0x{}", data.len(), hex(data));
    assert_eq!(q.cmd(&line), "OK");
}

fn get(q: &mut Qtest, addr: u64, len: usize) -> Vec<u8> {
    let reply = q.cmd(&format!("read {addr:#x} {len:#x}"));
    let h = reply
        .strip_prefix("OK 0x")
        .unwrap_or_else(|| panic!("read answered {reply:?}"));
    (0..len)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn frame(dest: [u8; 6], tag: u8, len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i as u8) ^ tag).collect();
    f[..6].copy_from_slice(&dest);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

/// machina under qtest on `machine` with the e1000e `device` (and its `netdev`).
fn start(machine: &str, netdev: Option<&str>, device: &str) -> Qtest {
    let mut args: Vec<String> = vec!["-M".into(), machine.into(), "-nodefaults".into()];
    if let Some(netdev) = netdev {
        args.extend(["-netdev".into(), netdev.to_string()]);
    }
    args.extend(["-device".into(), device.to_string()]);
    Qtest::start(&machina(), &args)
}

/// Memory decoding and bus mastering on, BAR 0 (and BAR 3) where the test expects them.
fn enable(q: &mut Qtest) {
    q.cfg_write(NIC, 0x10, 4, MMIO as u32);
    q.cfg_write(NIC, 0x1c, 4, MSIX as u32);
    q.cfg_write(NIC, 0x04, 2, 0x06);
    assert_eq!(
        q.cfg_read(NIC, 0x00, 4),
        0x10d3_8086,
        "the 82574L at 00:03.0"
    );
}

fn tx_setup(q: &mut Qtest) {
    w(q, TDBAL, TX_RING as u32);
    w(q, TDLEN, 0x100);
    w(q, TDH, 0);
    w(q, TDT, 0);
    w(q, TCTL, 1 << 1);
}

/// Send `f` with a legacy descriptor (EOP, IFCS, RS) at TDT; returns the INTx changes.
fn transmit(q: &mut Qtest, f: &[u8]) -> Vec<String> {
    let t = r(q, TDT);
    let at = TX_BUF + u64::from(t) * 0x800;
    put(q, at, f);
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&at.to_le_bytes());
    d[8..12].copy_from_slice(&(f.len() as u32 | 0x0b00_0000).to_le_bytes());
    put(q, TX_RING + u64::from(t) * 16, &d);
    let (reply, mut irqs) = q.cmd_irqs(&format!("writel {:#x} {:#x}", MMIO + TDT, (t + 1) % 16));
    assert_eq!(reply, "OK");
    // Read the status byte keeping the INTx lines that arrive meanwhile.
    let status = TX_RING + u64::from(t) * 16 + 12;
    let (reply, seen) = q.cmd_irqs(&format!("readb {status:#x}"));
    irqs.extend(seen);
    assert_eq!(q_value(&reply) & 1, 1, "DD written back");
    irqs
}

/// INTx changes reach qtest through the run loop, after the access that caused them: poll
/// (reading STATUS, which has no side effect) until a line starting with `want` came.
fn irqs_until(q: &mut Qtest, mut irqs: Vec<String>, want: &str) -> Vec<String> {
    let start = Instant::now();
    while !irqs.iter().any(|l| l.starts_with(want)) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no {want:?} in {irqs:?}"
        );
        let (_, seen) = q.cmd_irqs(&format!("readl {:#x}", MMIO + STATUS));
        irqs.extend(seen);
        std::thread::sleep(Duration::from_millis(2));
    }
    irqs
}

/// Wait until RDH reaches `head` (frames arrive from the network thread); returns the INTx
/// changes seen meanwhile.
fn wait_rdh(q: &mut Qtest, head: u32) -> Vec<String> {
    let start = Instant::now();
    let mut irqs = Vec::new();
    loop {
        let (reply, seen) = q.cmd_irqs(&format!("readl {:#x}", MMIO + RDH));
        irqs.extend(seen);
        if reply == format!("OK 0x{head:x}") || reply == format!("OK 0x{head:016x}") {
            return irqs;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "RDH never reached {head} ({reply})"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn host_socket(dir: &TempDir) -> UnixDatagram {
    let host = UnixDatagram::bind(dir.join("host.sock")).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    host
}

#[test]
fn frames_cross_a_dgram_netdev_both_ways_with_intx() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("qtest-e1000e");
    let host = host_socket(&dir);
    let vm_sock = dir.join("vm.sock");
    let netdev = format!(
        "dgram,id=n0,local.type=unix,local.path={},remote.type=unix,remote.path={}",
        vm_sock.display(),
        dir.join("host.sock").display()
    );
    let mut q = start(
        "q35",
        Some(&netdev),
        "e1000e,netdev=n0,addr=3,mac=52:54:00:12:34:99",
    );
    enable(&mut q);
    assert_eq!(q.cmd("irq_intercept_in ioapic"), "OK");
    w(&mut q, CTRL, (1 << 26) | (1 << 6)); // RST, SLU
    assert_eq!(r(&mut q, STATUS) & 2, 2, "link up");
    assert_eq!(
        r(&mut q, RAL0),
        u32::from_le_bytes([0x52, 0x54, 0x00, 0x12])
    );
    assert_eq!(r(&mut q, RAH0), 0x8000_0000 | 0x9934);

    // Transmit: the frame reaches the host socket, TXDW raises INTx, reading ICR lowers it.
    tx_setup(&mut q);
    w(&mut q, IMS, ICR_TXDW | ICR_RXT0);
    let out = frame([0xff; 6], 1, 200);
    let irqs = transmit(&mut q, &out);
    irqs_until(&mut q, irqs, "IRQ raise");
    let mut buf = vec![0u8; 4096];
    let n = host.recv(&mut buf).expect("the frame on the netdev's peer");
    assert_eq!(&buf[..n], &out[..]);
    let (reply, irqs) = q.cmd_irqs(&format!("readl {:#x}", MMIO + ICR));
    assert_eq!(
        u32::from_str_radix(reply.trim_start_matches("OK 0x"), 16).unwrap() & ICR_TXDW,
        ICR_TXDW
    );
    irqs_until(&mut q, irqs, "IRQ lower");
    assert_eq!(r(&mut q, GPTC), 1);

    // Receive into extended descriptors: one frame for another MAC (filtered), then one
    // for ours and a broadcast.
    w(&mut q, RDBAL, RX_RING as u32);
    w(&mut q, RDLEN, 0x100);
    w(&mut q, RDH, 0);
    w(&mut q, RDT, 0);
    for i in 0..16u64 {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&(RX_BUF + i * 0x800).to_le_bytes());
        put(&mut q, RX_RING + i * 16, &d);
    }
    w(&mut q, RFCTL, 1 << 15);
    w(&mut q, RCTL, (1 << 1) | (1 << 15) | (1 << 26)); // EN, BAM, SECRC
    w(&mut q, RDT, 15);
    let other = frame([0x02, 0, 0, 0, 0, 0x77], 2, 100);
    let ours = frame(MAC, 3, 300);
    let bcast = frame([0xff; 6], 4, 64);
    for f in [&other, &ours, &bcast] {
        host.send_to(f, &vm_sock).unwrap();
    }
    let irqs = wait_rdh(&mut q, 2);
    irqs_until(&mut q, irqs, "IRQ raise");
    assert_eq!(get(&mut q, RX_BUF, ours.len()), ours);
    assert_eq!(get(&mut q, RX_BUF + 0x800, bcast.len()), bcast);
    let wb = get(&mut q, RX_RING, 16);
    assert_eq!(wb[8] & 3, 3, "DD and EOP");
    assert_eq!(u16::from_le_bytes([wb[12], wb[13]]), 300);
    assert_eq!(r(&mut q, GPRC), 2, "the other MAC's frame was filtered");
    assert_ne!(r(&mut q, ICR) & ICR_RXT0, 0);
    let err = q.finish();
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn msix_messages_land_in_guest_memory() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("qtest-e1000e-msix");
    let host = host_socket(&dir);
    let netdev = format!(
        "dgram,id=n0,local.type=unix,local.path={},remote.type=unix,remote.path={}",
        dir.join("vm.sock").display(),
        dir.join("host.sock").display()
    );
    let mut q = start("pc", Some(&netdev), "e1000e,netdev=n0,addr=3");
    enable(&mut q);
    assert_eq!(q.cmd("irq_intercept_in ioapic"), "OK");
    // MSI-X on (control word at 0xa2), vector 1 unmasked towards MSI_ADDR.
    q.cfg_write(NIC, 0xa2, 2, 0x8000);
    let entry = MSIX + 16;
    assert_eq!(q.cmd(&format!("writel {entry:#x} {MSI_ADDR:#x}")), "OK");
    assert_eq!(q.cmd(&format!("writel {:#x} 0", entry + 4)), "OK");
    assert_eq!(q.cmd(&format!("writel {:#x} 0xabcd", entry + 8)), "OK");
    assert_eq!(q.cmd(&format!("writel {:#x} 0", entry + 12)), "OK");
    // TXQ0 -> vector 1.
    w(&mut q, IVAR, (0x8 | 1) << 8);
    w(&mut q, IMS, u32::MAX);
    tx_setup(&mut q);
    let out = frame([0xff; 6], 5, 60);
    let mut irqs = transmit(&mut q, &out);
    assert_eq!(get(&mut q, MSI_ADDR, 4), 0xabcdu32.to_le_bytes());
    for _ in 0..20 {
        irqs.extend(q.cmd_irqs(&format!("readl {:#x}", MMIO + STATUS)).1);
    }
    assert!(irqs.is_empty(), "no INTx with MSI-X: {irqs:?}");
    let mut buf = vec![0u8; 4096];
    let n = host.recv(&mut buf).expect("the frame");
    assert_eq!(&buf[..n], &out[..]);
    // ICS of a cause without a valid IVAR entry sends nothing more.
    put(&mut q, MSI_ADDR, &[0; 4]);
    w(&mut q, ICS, 1 << 21);
    assert_eq!(get(&mut q, MSI_ADDR, 4), [0; 4]);
    drop(q.finish());
}

#[test]
fn a_nic_without_netdev_transmits_into_nothing() {
    if !require_kvm() {
        return;
    }
    let mut q = start("q35", None, "e1000e,addr=3");
    enable(&mut q);
    tx_setup(&mut q);
    for i in 0..40 {
        transmit(&mut q, &frame([0xff; 6], i, 1000));
    }
    assert_eq!(r(&mut q, TDH), 40 % 16);
    assert_eq!(r(&mut q, GPTC), 40);
    assert!(q.alive());
    drop(q.finish());
}

/// ICS sets a cause; INTx rises when IMS enables it and falls when IMC masks it.
#[test]
fn ics_ims_and_imc_drive_intx() {
    if !require_kvm() {
        return;
    }
    // On q35, whose PIRQs also reach IOAPIC inputs 16-23 directly (PIIX3's go only where
    // the route registers the firmware programs send them).
    let mut q = start("q35", None, "e1000e,addr=3");
    enable(&mut q);
    assert_eq!(q.cmd("irq_intercept_in ioapic"), "OK");
    let (_, mut irqs) = q.cmd_irqs(&format!("writel {:#x} 0x4", MMIO + ICS));
    for _ in 0..20 {
        irqs.extend(q.cmd_irqs(&format!("readl {:#x}", MMIO + STATUS)).1);
    }
    assert!(irqs.is_empty(), "masked: {irqs:?}");
    let (_, irqs) = q.cmd_irqs(&format!("writel {:#x} 0x4", MMIO + IMS));
    irqs_until(&mut q, irqs, "IRQ raise");
    let (_, irqs) = q.cmd_irqs(&format!("writel {:#x} 0x4", MMIO + 0xd8));
    irqs_until(&mut q, irqs, "IRQ lower");
    drop(q.finish());
}

/// QEMU delivers a frame its netdev already holds the moment the guest gives a descriptor
/// (libqos's rx test reads DD right after writing RDT): machina's network thread relays
/// asynchronously, so the device asks the netdev for what it holds (`Netdev::pull`). Each
/// frame here is sent on a stream netdev just before its descriptor; DD must be set when
/// the RDT write returns, every time.
#[test]
fn a_frame_waiting_in_the_netdev_is_delivered_when_rdt_moves() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("qtest-e1000e-pull");
    let path = dir.join("net.sock");
    let netdev = format!(
        "stream,id=n0,server=on,addr.type=unix,addr.path={}",
        path.display()
    );
    let mut q = start(
        "pc",
        Some(&netdev),
        "e1000e,netdev=n0,addr=3,mac=52:54:00:12:34:99",
    );
    let mut stream = UnixStream::connect(&path).unwrap();
    enable(&mut q);
    w(&mut q, RDBAL, RX_RING as u32);
    w(&mut q, RDLEN, 0x100);
    w(&mut q, RDH, 0);
    w(&mut q, RDT, 0);
    w(&mut q, RFCTL, 1 << 15);
    w(&mut q, RCTL, (1 << 1) | (1 << 26));
    let send = |stream: &mut UnixStream, tag: u8| {
        let f = frame(MAC, tag, 64);
        let mut m = (f.len() as u32).to_be_bytes().to_vec();
        m.extend_from_slice(&f);
        stream.write_all(&m).unwrap();
        f
    };
    let push = |q: &mut Qtest, slot: u64| {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&(RX_BUF + slot * 0x800).to_le_bytes());
        put(q, RX_RING + slot * 16, &d);
        w(q, RDT, ((slot + 1) % 16) as u32);
        get(q, RX_RING + slot * 16 + 8, 1)[0]
    };
    // The first frame also waits for the connection to be accepted.
    let first = send(&mut stream, 0);
    push(&mut q, 0);
    wait_rdh(&mut q, 1);
    assert_eq!(get(&mut q, RX_BUF, 64), first);
    for i in 1..1000u64 {
        let slot = i % 16;
        let f = send(&mut stream, i as u8);
        assert_eq!(push(&mut q, slot) & 3, 3, "frame {i}: DD and EOP at once");
        assert_eq!(get(&mut q, RX_BUF + slot * 0x800, 64), f, "frame {i}");
    }
    drop(q.finish());
}
