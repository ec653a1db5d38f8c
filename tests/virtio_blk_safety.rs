//! virtio-blk data safety (issue 12), with qtest as the driver of the modern interface:
//! a masked MSI-X vector's interrupt waits in the PBA and arrives on unmask (per-vector
//! mask and function mask); a device reset with requests in flight loses no write whose
//! completion the driver saw, and nothing completes into guest memory after the reset.
//!
//! Under qtest an MSI is the DWORD write it is on the bus: the test points the vector at
//! guest RAM and reads it there.

mod common;

use common::{machina, require_kvm};
use machina_tests::qtest_client::Qtest;
use machina_tests::TempDir;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const BDF: (u8, u8, u8) = (0, 5, 0);
/// Modern BAR (common cfg at 0, notify at 0x3000 with multiplier 4) and MSI-X BAR (table
/// at 0, PBA at 0x800), as QEMU lays them out.
const BAR4: u64 = 0xe000_0000;
const BAR1: u64 = 0xe100_0000;
const PBA: u64 = BAR1 + 0x800;
const NOTIFY: u64 = BAR4 + 0x3000;
const DESC: u64 = 0x10_0000;
const AVAIL: u64 = 0x10_1000;
const USED: u64 = 0x10_2000;
const MSI_ADDR: u64 = 0x10_3000;
const HEADERS: u64 = 0x10_4000;
const STATUS: u64 = 0x10_5000;
const DATA: u64 = 0x20_0000;
const MSI_DATA: u32 = 0xcafe;
const QSIZE: u16 = 64;
const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
const T_OUT: u32 = 1;
const DISK_BYTES: usize = 8 << 20;

struct Rig {
    q: Qtest,
    _dir: TempDir,
    image: PathBuf,
    /// Offset of the MSI-X capability in config space.
    msix_cap: u16,
    avail_idx: u16,
}

fn hang_guard() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

impl Rig {
    fn start(tag: &str) -> Rig {
        Rig::start_with(tag, "")
    }

    /// `start` with `extra` properties for the device (",num-queues=2").
    fn start_with(tag: &str, extra: &str) -> Rig {
        let dir = TempDir::new(&format!("blk-safety-{tag}"));
        let image = dir.join("disk.img");
        std::fs::write(&image, vec![0u8; DISK_BYTES]).unwrap();
        let args: Vec<String> = [
            "-machine".to_string(),
            "q35".into(),
            "-nodefaults".into(),
            "-drive".into(),
            format!("file={},if=none,id=d0,format=raw", image.display()),
            "-device".into(),
            format!("virtio-blk-pci,drive=d0,addr=05.0{extra}"),
        ]
        .into();
        let mut q = Qtest::start(&machina(), &args);
        let msix_cap = q
            .std_caps(BDF)
            .iter()
            .find(|(_, id)| *id == 0x11)
            .map(|(off, _)| *off)
            .expect("an MSI-X capability");
        Rig {
            q,
            _dir: dir,
            image,
            msix_cap,
            avail_idx: 0,
        }
    }

    fn ok(&mut self, cmd: String) {
        assert_eq!(self.q.cmd(&cmd), "OK", "{cmd}");
    }

    fn readw(&mut self, addr: u64) -> u64 {
        self.q.value(&format!("readw {addr:#x}"))
    }

    fn readl(&mut self, addr: u64) -> u64 {
        self.q.value(&format!("readl {addr:#x}"))
    }

    fn readb(&mut self, addr: u64) -> u64 {
        self.q.value(&format!("readb {addr:#x}"))
    }

    /// BARs, decode and bus mastering, MSI-X on with vector 1 aimed at MSI_ADDR (masked
    /// as msix_reset leaves it, unless `unmasked`).
    fn pci_up(&mut self, unmasked: bool) {
        let q = &mut self.q;
        q.cfg_write(BDF, 0x14, 4, BAR1 as u32);
        q.cfg_write(BDF, 0x20, 4, BAR4 as u32);
        q.cfg_write(BDF, 0x24, 4, (BAR4 >> 32) as u32);
        q.cfg_write(BDF, 0x04, 2, 0x6);
        let entry = BAR1 + 16;
        self.ok(format!("writel {entry:#x} {MSI_ADDR:#x}"));
        self.ok(format!("writel {:#x} 0x0", entry + 4));
        self.ok(format!("writel {:#x} {MSI_DATA:#x}", entry + 8));
        self.ok(format!("writel {:#x} {}", entry + 12, u32::from(!unmasked)));
        self.msix_control(0x8000);
    }

    fn msix_control(&mut self, value: u32) {
        let cap = self.msix_cap;
        self.q.cfg_write(BDF, cap + 2, 2, value);
    }

    /// The modern handshake with VERSION_1 only; queue 0 of QSIZE entries on vector 1.
    fn virtio_up(&mut self) {
        self.ok(format!("writeb {:#x} 0x0", BAR4 + 0x14));
        self.ok(format!("writeb {:#x} 0x3", BAR4 + 0x14));
        self.ok(format!("writel {:#x} 0x1", BAR4 + 0x08));
        self.ok(format!("writel {:#x} 0x1", BAR4 + 0x0c));
        self.ok(format!("writel {:#x} 0x0", BAR4 + 0x08));
        self.ok(format!("writel {:#x} 0x0", BAR4 + 0x0c));
        self.ok(format!("writeb {:#x} 0xb", BAR4 + 0x14));
        assert_eq!(self.readb(BAR4 + 0x14), 0xb, "FEATURES_OK kept");
        self.ok(format!("writew {:#x} 0x0", BAR4 + 0x16));
        self.ok(format!("writew {:#x} {QSIZE:#x}", BAR4 + 0x18));
        self.ok(format!("writew {:#x} 0x1", BAR4 + 0x1a));
        assert_eq!(self.readw(BAR4 + 0x1a), 1, "queue 0 on vector 1");
        for (off, addr) in [(0x20, DESC), (0x28, AVAIL), (0x30, USED)] {
            self.ok(format!("writel {:#x} {addr:#x}", BAR4 + off));
            self.ok(format!("writel {:#x} 0x0", BAR4 + off + 4));
        }
        // Rings start empty (a previous run of the driver may have left them used).
        self.ok(format!("memset {AVAIL:#x} {:#x} 0", 4 + 2 * QSIZE));
        self.ok(format!("memset {USED:#x} {:#x} 0", 4 + 8 * QSIZE));
        self.avail_idx = 0;
        self.ok(format!("writew {:#x} 0x1", BAR4 + 0x1c));
        self.ok(format!("writeb {:#x} 0xf", BAR4 + 0x14));
    }

    /// Request `slot` (descriptors 3*slot..3*slot+2): write `len` bytes of `fill` to
    /// byte `offset` of the disk; its status byte reads 0xff until the device answers.
    fn stage_write(&mut self, slot: u16, offset: u64, len: u32, fill: u8) {
        let d = DESC + 48 * u64::from(slot);
        let hdr = HEADERS + 16 * u64::from(slot);
        let data = DATA + 0x1_0000 * u64::from(slot);
        let status = STATUS + u64::from(slot);
        self.ok(format!("writel {hdr:#x} {T_OUT:#x}"));
        self.ok(format!("writel {:#x} 0x0", hdr + 4));
        self.ok(format!("writeq {:#x} {:#x}", hdr + 8, offset / 512));
        self.ok(format!("memset {data:#x} {len:#x} {fill:#x}"));
        self.ok(format!("writeb {status:#x} 0xff"));
        let first = 3 * slot;
        let descs = [
            (hdr, 16u32, VRING_DESC_F_NEXT, first + 1),
            (data, len, VRING_DESC_F_NEXT, first + 2),
            (status, 1, VRING_DESC_F_WRITE, 0),
        ];
        for (i, (addr, len, flags, next)) in descs.into_iter().enumerate() {
            let at = d + 16 * i as u64;
            self.ok(format!("writeq {at:#x} {addr:#x}"));
            self.ok(format!("writel {:#x} {len:#x}", at + 8));
            self.ok(format!("writew {:#x} {flags:#x}", at + 12));
            self.ok(format!("writew {:#x} {next:#x}", at + 14));
        }
        let ring = AVAIL + 4 + 2 * u64::from(self.avail_idx % QSIZE);
        self.ok(format!("writew {ring:#x} {first:#x}"));
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Publish the staged requests and ring queue 0's doorbell.
    fn kick(&mut self) {
        let idx = self.avail_idx;
        self.ok(format!("writew {:#x} {idx:#x}", AVAIL + 2));
        self.ok(format!("writew {NOTIFY:#x} 0x0"));
    }

    fn used_idx(&mut self) -> u16 {
        self.readw(USED + 2) as u16
    }

    fn wait_used(&mut self, idx: u16) {
        let deadline = hang_guard();
        while self.used_idx() != idx && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(self.used_idx(), idx, "the device used the requests");
    }

    fn pending(&mut self) -> bool {
        self.readl(PBA) & 0b10 != 0
    }

    fn wait_pending(&mut self) {
        let deadline = hang_guard();
        while !self.pending() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(self.pending(), "vector 1 pending in the PBA while masked");
    }

    fn msi(&mut self) -> u64 {
        self.readl(MSI_ADDR)
    }
}

#[test]
fn a_masked_msix_vector_is_pending_and_delivered_on_unmask() {
    if !require_kvm() {
        return;
    }
    let mut r = Rig::start("mask");
    r.pci_up(false);
    r.virtio_up();

    // Per-vector mask: the completion leaves vector 1 pending and writes no message.
    r.stage_write(0, 0, 4096, 0x11);
    r.kick();
    r.wait_used(1);
    r.wait_pending();
    assert_eq!(r.readb(STATUS), 0, "request 0 succeeded");
    assert_eq!(r.msi(), 0, "no message while the vector is masked");
    // Unmasking delivers it and clears the pending bit.
    r.ok(format!("writel {:#x} 0x0", BAR1 + 16 + 12));
    assert_eq!(
        r.msi(),
        u64::from(MSI_DATA),
        "the message arrives on unmask"
    );
    assert!(!r.pending(), "no longer pending");

    // Function mask: the same with the vector itself unmasked.
    r.ok(format!("writel {MSI_ADDR:#x} 0x0"));
    r.msix_control(0xc000);
    r.stage_write(1, 4096, 4096, 0x22);
    r.kick();
    r.wait_used(2);
    r.wait_pending();
    assert_eq!(r.readb(STATUS + 1), 0, "request 1 succeeded");
    assert_eq!(r.msi(), 0, "no message while the function is masked");
    r.msix_control(0x8000);
    assert_eq!(
        r.msi(),
        u64::from(MSI_DATA),
        "the message arrives on unmask"
    );
    assert!(!r.pending(), "no longer pending");

    // Unmasked, a completion sends its message at once (no pending bit).
    r.ok(format!("writel {MSI_ADDR:#x} 0x0"));
    r.stage_write(2, 8192, 4096, 0x33);
    r.kick();
    r.wait_used(3);
    let deadline = hang_guard();
    while r.msi() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(r.msi(), u64::from(MSI_DATA), "delivered unmasked");
    assert!(!r.pending(), "never pending");
    drop(r.q);
    let disk = std::fs::read(&r.image).unwrap();
    for (i, fill) in [0x11u8, 0x22, 0x33].into_iter().enumerate() {
        assert!(
            disk[i * 4096..(i + 1) * 4096].iter().all(|&b| b == fill),
            "write {i} on the disk"
        );
    }
}

/// The used elements (head, length) the driver can see.
fn used_elems(r: &mut Rig, n: u16) -> Vec<(u16, u32)> {
    (0..n)
        .map(|k| {
            let at = USED + 4 + 8 * u64::from(k % QSIZE);
            (r.readl(at) as u16, r.readl(at + 4) as u32)
        })
        .collect()
}

/// Guest memory the device could complete into: the used ring, the status bytes and the
/// page at 0 (where a reset queue's rings point).
fn completion_area(r: &mut Rig) -> Vec<String> {
    [
        (USED, 4 + 8 * u64::from(QSIZE)),
        (STATUS, u64::from(QSIZE)),
        (0, 0x100),
    ]
    .into_iter()
    .map(|(a, n)| r.q.cmd(&format!("read {a:#x} {n:#x}")))
    .collect()
}

#[test]
fn a_reset_with_requests_in_flight_loses_no_completed_write() {
    reset_with_requests_in_flight("reset", "");
}

/// The same with two request queues: queue 0 then runs in its queue group, on its own
/// thread and I/O engine, which the device reset reaches too.
#[test]
fn a_reset_of_a_multiqueue_disk_loses_no_completed_write() {
    reset_with_requests_in_flight("reset-mq", ",num-queues=2");
}

fn reset_with_requests_in_flight(tag: &str, extra: &str) {
    if !require_kvm() {
        return;
    }
    let mut r = Rig::start_with(tag, extra);
    r.pci_up(true);
    const ROUNDS: u8 = 4;
    const REQS: u16 = 21;
    const LEN: u32 = 64 * 1024;
    for round in 0..ROUNDS {
        r.virtio_up();
        // Each request writes its own 64 KiB block with a byte naming round and slot.
        let fill = |slot: u16| 0x10 * (round + 1) + slot as u8;
        let block = |slot: u16| u64::from(round) * u64::from(REQS) + u64::from(slot);
        for slot in 0..REQS {
            r.stage_write(slot, block(slot) * u64::from(LEN), LEN, fill(slot));
        }
        r.kick();
        // Reset while the device works through them: at once in the first round, after
        // the driver saw the first completion in the others. The reset returns once the
        // device has settled.
        if round > 0 {
            let deadline = hang_guard();
            while r.used_idx() == 0 && Instant::now() < deadline {}
        }
        r.ok(format!("writeb {:#x} 0x0", BAR4 + 0x14));
        assert_eq!(r.readb(BAR4 + 0x14), 0, "reset");
        let seen = r.used_idx();
        let used = used_elems(&mut r, seen);
        let before = completion_area(&mut r);
        // Nothing completes into guest memory after the reset (the wait gives a late
        // completion the time to land; the assertion does not depend on it).
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            completion_area(&mut r),
            before,
            "round {round}: memory after reset"
        );
        // Every write the driver saw completed is on the disk, with a successful status.
        let disk = std::fs::read(&r.image).unwrap();
        for (head, _len) in used {
            assert_eq!(head % 3, 0, "round {round}: a head the driver made");
            let slot = head / 3;
            assert!(slot < REQS, "round {round}: head {head}");
            assert_eq!(r.readb(STATUS + u64::from(slot)), 0, "slot {slot} status");
            let at = (block(slot) * u64::from(LEN)) as usize;
            assert!(
                disk[at..at + LEN as usize].iter().all(|&b| b == fill(slot)),
                "round {round}: completed write {slot} on the disk"
            );
        }
        let on_disk = (0..REQS)
            .filter(|&slot| {
                let at = (block(slot) * u64::from(LEN)) as usize;
                disk[at..at + LEN as usize].iter().all(|&b| b == fill(slot))
            })
            .count();
        eprintln!(
            "round {round}: {seen} of {REQS} completions seen before the reset, {on_disk} \
             writes on the disk"
        );
        if round > 0 {
            assert!(seen > 0, "round {round}: completions seen before the reset");
        }
    }
    // The device still works after the resets: one more write completes.
    r.virtio_up();
    r.stage_write(0, 0, 512, 0x99);
    r.kick();
    r.wait_used(1);
    assert_eq!(r.readb(STATUS), 0, "a write after the resets");
    drop(r.q);
    let disk = std::fs::read(&r.image).unwrap();
    assert!(disk[..512].iter().all(|&b| b == 0x99));
}

/// (num_queues in the device config, MSI-X table size) of the virtio-blk-pci of a q35
/// machine `machine` with `smp` vCPUs and `extra` device properties.
fn queues_and_vectors(machine: &str, smp: &str, extra: &str) -> (u64, u32) {
    let dir = TempDir::new("blk-queues");
    let image = dir.join("disk.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let args: Vec<String> = [
        "-machine".to_string(),
        machine.into(),
        "-smp".into(),
        smp.into(),
        "-nodefaults".into(),
        "-drive".into(),
        format!("file={},if=none,id=d0,format=raw", image.display()),
        "-device".into(),
        format!("virtio-blk-pci,drive=d0,addr=05.0{extra}"),
    ]
    .into();
    let mut q = Qtest::start(&machina(), &args);
    let cap = q
        .std_caps(BDF)
        .iter()
        .find(|(_, id)| *id == 0x11)
        .map(|(off, _)| *off)
        .expect("an MSI-X capability");
    let table = (q.cfg_read(BDF, cap + 2, 2) & 0x7ff) + 1;
    q.cfg_write(BDF, 0x20, 4, BAR4 as u32);
    q.cfg_write(BDF, 0x24, 4, (BAR4 >> 32) as u32);
    q.cfg_write(BDF, 0x04, 2, 0x2);
    // struct virtio_blk_config's num_queues, in the device-specific window at 0x2000.
    let nq = q.value(&format!("readw {:#x}", BAR4 + 0x2000 + 0x22));
    assert_eq!(
        q.value(&format!("readw {:#x}", BAR4 + 0x12)),
        nq,
        "common cfg num_queues"
    );
    (nq, table)
}

/// QEMU's virtio-blk-pci: num-queues left at its default is one queue per vCPU on machine
/// types from 5.2 (virtio_pci_optimal_num_queues), one on older ones (hw_compat_5_1), with
/// a vector per queue plus the config vector.
#[test]
fn num_queues_defaults_to_one_per_vcpu() {
    if !require_kvm() {
        return;
    }
    assert_eq!(queues_and_vectors("q35", "1", ""), (1, 2));
    assert_eq!(queues_and_vectors("q35", "3", ""), (3, 4));
    assert_eq!(queues_and_vectors("pc-q35-5.1", "3", ""), (1, 2));
    assert_eq!(queues_and_vectors("q35", "3", ",num-queues=2"), (2, 3));
}
