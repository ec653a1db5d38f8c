//! Drive virtio-pci functions through config space and BAR accesses the way a guest driver
//! does (the shared `crate::testing::Driver`), against a GuestMemoryMmap and real files.

use super::console::ConsoleBackend;
use super::regs::{common, legacy, modern, status};
use super::*;
use crate::pci::PciFunction;
use crate::testing::{
    block_backend, virtio_plan as plan, Driver, Ring, DEVICE_BLK, DEVICE_CONSOLE, DEVICE_RNG,
};
use machina_tests::TempDir;
use machine::PropValue;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const DESC: u64 = 0x10000;
const AVAIL: u64 = 0x11000;
const USED: u64 = 0x12000;
const QSIZE: u16 = 256;
const DATA: u64 = 0x40000;
/// Queue 1's rings sit this far above queue 0's.
const Q1: u64 = 0x8000;

/// The shared driver with queue 0 (and queue 1) at fixed rings, as these tests lay them out:
/// the legacy layout for page frame DESC >> 12 is the same addresses.
struct Dev {
    d: Driver,
    rings: [Ring; 2],
}

impl std::ops::Deref for Dev {
    type Target = Driver;
    fn deref(&self) -> &Driver {
        &self.d
    }
}

impl std::ops::DerefMut for Dev {
    fn deref_mut(&mut self) -> &mut Driver {
        &mut self.d
    }
}

fn build(plan: &machine::PciFunctionPlan, backend: VirtioBackend) -> Dev {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    build_with_mem(plan, backend, mem)
}

fn build_with_mem(
    plan: &machine::PciFunctionPlan,
    backend: VirtioBackend,
    mem: GuestMemoryMmap,
) -> Dev {
    Dev {
        d: Driver::new(plan, backend, mem),
        rings: [
            Ring::new(QSIZE, DESC, AVAIL, USED),
            Ring::new(QSIZE, DESC + Q1, AVAIL + Q1, USED + Q1),
        ],
    }
}

/// A disk image in a folder of its own, removed with it.
struct Image {
    _dir: TempDir,
    path: PathBuf,
}

impl AsRef<Path> for Image {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

fn image(len: usize) -> (Image, std::fs::File) {
    let dir = TempDir::new("vblk");
    let path = dir.join("disk.img");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.set_len(len as u64).unwrap();
    (Image { _dir: dir, path }, file)
}

fn blk(legacy: bool, pcie: bool) -> (Dev, Image) {
    let (d, image, _) = blk_with_stats(legacy, pcie);
    (d, image)
}

fn blk_with_stats(legacy: bool, pcie: bool) -> (Dev, Image, Arc<super::blk::BlockStats>) {
    let (image, file) = image(1 << 20);
    let stats = Arc::new(super::blk::BlockStats::default());
    let d = build(
        &plan(DEVICE_BLK, legacy, pcie, &[("serial", "machina-disk-0")]),
        block_backend(file, stats.clone()),
    );
    (d, image, stats)
}

impl Dev {
    /// Modern driver init up to DRIVER_OK with `features` acked and queue 0 at DESC.
    fn modern_init(&mut self, features: u64) -> u8 {
        let got = self.d.modern_begin(features);
        let ring = self.rings[0];
        self.d.modern_ring(0, &ring);
        self.d.modern_driver_ok();
        got
    }

    /// Legacy driver init: features 0-15 and queue 0 by PFN (same ring addresses).
    fn legacy_init(&mut self) {
        self.d.legacy_begin(0x0000_ffff);
        assert_eq!(self.d.legacy_queue(0, (DESC >> 12) as u32), QSIZE);
        self.d.legacy_driver_ok();
    }

    /// Put a chain (addr, len, device-writable) on queue `q` and publish it; each chain
    /// starts 4 descriptors after the previous one.
    fn submit(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> u16 {
        let ring = &mut self.rings[q];
        let first = ((ring.avail_idx % QSIZE) as usize * 4) % QSIZE as usize;
        ring.push_chain(&self.d.mem, first as u16, bufs)
    }

    /// Queue 0's used element `n`: (id, len).
    fn used(&self, n: u16) -> (u32, u32) {
        self.rings[0].used_elem(&self.d.mem, n)
    }

    fn used_idx(&self) -> u16 {
        self.rings[0].used_idx(&self.d.mem)
    }

    /// One virtio-blk request; returns (status, used len).
    fn blk_req(
        &mut self,
        notify: &dyn Fn(&mut Dev),
        ty: u32,
        sector: u64,
        data: Option<(u64, u32, bool)>,
    ) -> (u8, u32) {
        let hdr = DATA - 0x100;
        let st = DATA - 0x10;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&ty.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(hdr)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(st)).unwrap();
        let mut bufs = vec![(hdr, 16, false)];
        bufs.extend(data);
        bufs.push((st, 1, true));
        let before = self.used_idx();
        self.submit(0, &bufs);
        notify(self);
        self.w.poll();
        assert_eq!(self.used_idx(), before.wrapping_add(1), "request completed");
        (
            self.mem.read_obj(GuestAddress(st)).unwrap(),
            self.used(before).1,
        )
    }
}

fn modern_notify(d: &mut Dev) {
    d.bar_write(modern::BAR, modern::NOTIFY, 0, 2);
}
fn legacy_notify(d: &mut Dev) {
    d.bar_write(0, legacy::QUEUE_NOTIFY, 0, 2);
}

#[test]
fn transitional_layout_matches_qemu() {
    let (mut d, _) = blk(true, false);
    assert_eq!(d.cfg_read(0, 4), 0x1001_1af4);
    assert_eq!(d.cfg_read(0x2c, 4), 0x0002_1af4);
    assert_eq!(d.cfg_read(0x34, 1), 0x98);
    // Vendor caps: common, ISR, device, notify (len 0x14, mult 4), PCI cfg; MSI-X last.
    assert_eq!(d.cfg_read(0x40, 4), 0x0110_0009);
    assert_eq!(d.cfg_read(0x50, 4), 0x0310_4009);
    assert_eq!(d.cfg_read(0x60, 4), 0x0410_5009);
    assert_eq!(d.cfg_read(0x70, 4), 0x0214_6009);
    assert_eq!(d.cfg_read(0x78, 4), 0x3000);
    assert_eq!(d.cfg_read(0x7c, 4), 0x1000);
    assert_eq!(d.cfg_read(0x80, 4), 4);
    assert_eq!(d.cfg_read(0x84, 4), 0x0514_7009);
    assert_eq!(d.cfg_read(0x98, 4), 0x0001_8411, "2 vectors for one queue");
    assert_eq!(d.cfg_read(0xa0, 4), 0x801);
    assert_eq!(d.f.caps().msix, Some(0x98));
    assert_eq!(
        d.bar_size(0),
        0x80,
        "blk legacy BAR with discard+write-zeroes config"
    );
    assert_eq!(d.bar_size(1), 0x1000);
    assert_eq!(d.bar_size(4), 0x4000);
    assert_eq!(d.cfg_read(0x10 + 16, 4) & 0xf, 0xc, "64-bit prefetchable");
    assert_eq!(d.cfg_read(0x3d, 1), 1);
}

#[test]
fn root_port_layout_matches_qemu() {
    let (mut d, _) = blk(false, true);
    assert_eq!(d.cfg_read(0, 4), 0x1042_1af4);
    assert_eq!(d.cfg_read(8, 1), 1);
    assert_eq!(d.cfg_read(0x2c, 4), 0x1100_1af4);
    assert_eq!(d.cfg_read(0x34, 1), 0xdc);
    // Measured on QEMU behind pcie-root-port: endpoint v2, RBER + FLR, x1 2.5 GT/s.
    assert_eq!(d.cfg_read(0x40, 4), 0x0002_0010);
    assert_eq!(d.cfg_read(0x44, 4), 0x1000_8000);
    assert_eq!(d.cfg_read(0x4c, 4), 0x0000_0411);
    assert_eq!(d.cfg_read(0x50, 4), 0x0011_0000);
    assert_eq!(d.cfg_read(0x64, 4), 0x0030_0000);
    assert_eq!(d.cfg_read(0x7c, 4), 0x0003_4001);
    assert_eq!(
        d.cfg_read(0x80, 2),
        0,
        "PMCSR: D0, No_Soft_Reset off (x-pcie-pm-no-soft-reset defaults to false)"
    );
    assert_eq!(d.cfg_read(0x84, 4), 0x0110_7c09);
    assert_eq!(d.cfg_read(0xc8, 4), 0x0514_b409);
    assert_eq!(d.cfg_read(0xdc, 4), 0x0001_c811);
    assert_eq!(d.bar_size(0), 0, "no legacy BAR");
    assert_eq!(d.bar_size(4), 0x4000);
    // Express config space: the extended header at 0x100 is read-only zero.
    d.cfg_write(0x100, 0xffff_ffff, 4);
    assert_eq!(d.cfg_read(0x100, 4), 0);
    // FLR resets the function.
    d.cfg_write(0x04, 6, 2);
    d.cfg_write(0x48, 0x8000, 2);
    assert_eq!(d.cfg_read(0x04, 2), 0);
    assert_eq!(d.cfg_read(0x48, 2), 0);
}

#[test]
fn non_transitional_on_root_bus_has_no_express_cap() {
    let mut d = build(
        &plan(DEVICE_RNG, false, false, &[]),
        VirtioBackend::Rng(Box::new(std::io::repeat(0x5a))),
    );
    assert_eq!(d.cfg_read(0, 4), 0x1044_1af4);
    assert_eq!(d.cfg_read(0x34, 1), 0x98);
    assert_eq!(d.cfg_read(0x40, 1), 0x09);
    assert_eq!(d.bar_size(0), 0);
    assert_eq!(d.f.caps().pcie, None);
    let mut t = build(
        &plan(DEVICE_RNG, true, false, &[]),
        VirtioBackend::Rng(Box::new(std::io::repeat(0))),
    );
    assert_eq!(t.bar_size(0), 0x20, "rng legacy BAR");
}

#[test]
fn modern_blk_write_read_flush_and_errors() {
    let (mut d, path, stats) = blk_with_stats(false, false);
    let f = super::regs::features::VERSION_1 | (1 << 9) | (1 << 6) | (1 << 29);
    let st = d.modern_init(f);
    assert_ne!(st & status::FEATURES_OK, 0);
    assert_eq!(d.common_r(common::NUMQ, 2), 1);
    assert_eq!(d.common_r(common::DF, 4) & (1 << 9), 1 << 9);
    d.common_w(common::DFSELECT, 1, 4);
    assert_eq!(d.common_r(common::DF, 4), 1, "VERSION_1");
    // Capacity in the device region: 1 MiB / 512.
    assert_eq!(d.bar_read(modern::BAR, modern::DEVICE, 8), 2048);
    // Write a pattern to sector 3.
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    d.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    let (s, len) = d.blk_req(&modern_notify, 1, 3, Some((DATA, 1024, false)));
    assert_eq!((s, len), (0, 1));
    let mut disk = vec![0u8; 1024];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact_at_compat(3 * 512, &mut disk);
    assert_eq!(disk, pattern);
    // Read it back elsewhere.
    let (s, len) = d.blk_req(&modern_notify, 0, 3, Some((DATA + 0x1000, 1024, true)));
    assert_eq!((s, len), (0, 1025));
    let mut back = vec![0u8; 1024];
    d.mem
        .read_slice(&mut back, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(back, pattern);
    // Flush, GET_ID, out of range, unsupported.
    assert_eq!(d.blk_req(&modern_notify, 4, 0, None).0, 0);
    let (s, len) = d.blk_req(&modern_notify, 8, 0, Some((DATA + 0x2000, 20, true)));
    assert_eq!((s, len), (0, 21));
    let mut id = [0u8; 20];
    d.mem
        .read_slice(&mut id, GuestAddress(DATA + 0x2000))
        .unwrap();
    assert_eq!(&id[..14], b"machina-disk-0");
    assert_eq!(
        d.blk_req(&modern_notify, 0, 2047, Some((DATA, 1024, true)))
            .0,
        1
    );
    assert_eq!(
        d.blk_req(&modern_notify, 1, u64::MAX / 2, Some((DATA, 512, false)))
            .0,
        1
    );
    assert_eq!(d.blk_req(&modern_notify, 99, 0, None).0, 2);
    // Write zeroes over the pattern.
    let mut seg = [0u8; 16];
    seg[0..8].copy_from_slice(&3u64.to_le_bytes());
    seg[8..12].copy_from_slice(&2u32.to_le_bytes());
    d.mem
        .write_slice(&seg, GuestAddress(DATA + 0x3000))
        .unwrap();
    assert_eq!(
        d.blk_req(&modern_notify, 13, 0, Some((DATA + 0x3000, 16, false)))
            .0,
        0
    );
    std::fs::File::open(&path)
        .unwrap()
        .read_exact_at_compat(3 * 512, &mut disk);
    assert!(disk.iter().all(|&b| b == 0));
    // Every request was counted as what it was.
    let get = |c: &std::sync::atomic::AtomicU64| super::blk::BlockStats::get(c);
    assert_eq!((get(&stats.wr_operations), get(&stats.wr_bytes)), (2, 1024));
    assert_eq!((get(&stats.rd_operations), get(&stats.rd_bytes)), (1, 1024));
    assert_eq!(get(&stats.flush_operations), 1);
    assert_eq!(get(&stats.wr_highest_offset), 3 * 512 + 1024);
    assert_eq!(get(&stats.invalid_rd_operations), 1, "read past the end");
    assert_eq!(get(&stats.invalid_wr_operations), 1, "write past the end");
    assert_eq!(get(&stats.failed_rd_operations), 0);
    // Interrupts went nowhere yet: MSI-X disabled, so INTx rose.
    assert!(d.intx.0.lock().unwrap().contains(&true));
    let isr = d.bar_read(modern::BAR, modern::ISR, 1);
    assert_eq!(isr, 1);
    assert_eq!(d.bar_read(modern::BAR, modern::ISR, 1), 0, "read clears");
    assert_eq!(d.intx.0.lock().unwrap().last(), Some(&false));
}

trait ReadAt {
    fn read_exact_at_compat(&self, off: u64, buf: &mut [u8]);
}
impl ReadAt for std::fs::File {
    fn read_exact_at_compat(&self, off: u64, buf: &mut [u8]) {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, off).unwrap();
    }
}

#[test]
fn the_driver_interface_is_recorded_at_driver_ok() {
    use super::core::DriverInterface;
    let (mut d, _path) = blk(true, false);
    assert_eq!(d.w.last_driver(), None, "no driver yet");
    d.legacy_init();
    assert_eq!(d.w.last_driver(), Some(DriverInterface::Legacy));
    // The same transitional function driven through its modern interface (VERSION_1).
    d.modern_init(1 << 32);
    assert_eq!(d.w.last_driver(), Some(DriverInterface::Modern));
    // A reset (status 0) keeps the record of what drove it last.
    d.common_w(common::STATUS, 0, 1);
    assert_eq!(d.w.last_driver(), Some(DriverInterface::Modern));
}

#[test]
fn legacy_blk_over_io_bar() {
    let (mut d, path) = blk(true, false);
    let host = d.bar_read(0, legacy::HOST_FEATURES, 4);
    assert_ne!(host & (1 << 30), 0, "BAD_FEATURE offered to legacy drivers");
    d.legacy_init();
    assert_eq!(d.bar_read(0, legacy::QUEUE_PFN, 4), DESC >> 12);
    // Device config at 20 with MSI-X off.
    assert_eq!(d.bar_read(0, 20, 4), 2048);
    let pattern = [0xa5u8; 512];
    d.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    assert_eq!(
        d.blk_req(&legacy_notify, 1, 7, Some((DATA, 512, false))).0,
        0
    );
    let mut disk = [0u8; 512];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact_at_compat(7 * 512, &mut disk);
    assert_eq!(disk, pattern);
    assert_eq!(d.bar_read(0, legacy::ISR, 1), 1);
    // Zero PFN resets the device.
    d.bar_write(0, legacy::QUEUE_PFN, 0, 4);
    assert_eq!(d.bar_read(0, legacy::STATUS, 1), 0);
}

#[test]
fn msix_delivery_and_masking() {
    let (mut d, _path) = blk(false, false);
    d.modern_init(super::regs::features::VERSION_1);
    // Program vector 1 and assign it to queue 0, then enable MSI-X.
    d.bar_write(1, 16, 0xfee0_0000, 4);
    d.bar_write(1, 24, 0x4055, 4);
    d.bar_write(1, 28, 0, 4);
    d.common_w(common::Q_SELECT, 0, 2);
    d.common_w(common::Q_MSIX, 1, 2);
    assert_eq!(d.common_r(common::Q_MSIX, 2), 1);
    d.common_w(common::Q_MSIX, 7, 2);
    assert_eq!(
        d.common_r(common::Q_MSIX, 2),
        0xffff,
        "out of range reads NO_VECTOR"
    );
    d.common_w(common::Q_MSIX, 1, 2);
    d.cfg_write(0x9b, 0xc0, 1);
    let (s, _) = d.blk_req(&modern_notify, 4, 0, None);
    assert_eq!(s, 0);
    assert!(d.msi.0.lock().unwrap().is_empty(), "function masked");
    assert_eq!(d.bar_read(1, 0x800, 1), 2, "pending bit");
    d.cfg_write(0x9b, 0x80, 1);
    assert_eq!(*d.msi.0.lock().unwrap(), vec![(0xfee0_0000, 0x4055)]);
    assert_eq!(d.bar_read(1, 0x800, 1), 0);
    assert!(
        d.intx.0.lock().unwrap().iter().all(|&l| !l),
        "no INTx with MSI-X"
    );
}

#[test]
fn pci_cfg_capability_window() {
    let (mut d, _path) = blk(true, false);
    // Read num_queues through the window: offset 0x12, length 2.
    d.cfg_write(0x84 + 4, 4, 1);
    d.cfg_write(0x84 + 8, common::NUMQ, 4);
    d.cfg_write(0x84 + 12, 2, 4);
    assert_eq!(d.cfg_read(0x84 + 16, 2), 1);
    // Write the device status through it.
    d.cfg_write(0x84 + 8, common::STATUS, 4);
    d.cfg_write(0x84 + 12, 1, 4);
    d.cfg_write(0x84 + 16, 1, 1);
    assert_eq!(d.common_r(common::STATUS, 1), 1);
    // Bad lengths and offsets do nothing.
    d.cfg_write(0x84 + 12, 3, 4);
    d.cfg_write(0x84 + 8, 0xffff_fff0, 4);
    d.cfg_write(0x84 + 16, 0xffff_ffff, 4);
    let _ = d.cfg_read(0x84 + 16, 4);
}

#[test]
fn bad_guest_input_gives_device_errors() {
    let (mut d, _path) = blk(false, false);
    d.modern_init(super::regs::features::VERSION_1);
    // Header descriptor far outside guest memory.
    d.submit(0, &[(0xdead_0000_0000, 16, false), (DATA, 1, true)]);
    modern_notify(&mut d);
    d.w.poll();
    assert_ne!(d.common_r(common::STATUS, 1) as u8 & status::NEEDS_RESET, 0);
    // Reset, then a descriptor loop and an oversized queue size.
    d.modern_init(super::regs::features::VERSION_1);
    assert_eq!(d.common_r(common::STATUS, 1) as u8 & status::NEEDS_RESET, 0);
    d.mem.write_obj(0u16, GuestAddress(USED + 2)).unwrap();
    d.rings[0].avail_idx = 0;
    let i = d.submit(0, &[(DATA, 16, false), (DATA, 16, false)]);
    // Point the second descriptor back at the first.
    d.mem
        .write_obj(i, GuestAddress(DESC + 16 * u64::from(i + 1) + 14))
        .unwrap();
    d.mem
        .write_obj(1u16, GuestAddress(DESC + 16 * u64::from(i + 1) + 12))
        .unwrap();
    modern_notify(&mut d);
    d.w.poll();
    assert_ne!(d.common_r(common::STATUS, 1) as u8 & status::NEEDS_RESET, 0);
    d.common_w(common::Q_SIZE, 300, 2);
    d.common_w(common::Q_SELECT, 5000, 2);
    d.common_w(common::Q_SIZE, 8, 2);
    // Out-of-range BAR accesses are harmless.
    d.bar_write(modern::BAR, 0x3fff, 0xffff, 2);
    let _ = d.bar_read(modern::BAR, 0x0ffe, 4);
    let _ = d.bar_read(0, 0x1000, 4);
}

#[test]
fn rng_fills_buffers() {
    let mut d = build(
        &plan(DEVICE_RNG, true, false, &[]),
        VirtioBackend::Rng(Box::new(std::io::repeat(0x5a))),
    );
    d.modern_init(super::regs::features::VERSION_1);
    d.submit(0, &[(DATA, 64, true)]);
    modern_notify(&mut d);
    d.w.poll();
    assert_eq!(d.used(0), (0, 64));
    let mut b = [0u8; 64];
    d.mem.read_slice(&mut b, GuestAddress(DATA)).unwrap();
    assert!(b.iter().all(|&x| x == 0x5a));
}

/// A tx chain whose buffers add up to more than 2^32 bytes (qos-test's large_tx/uint_max:
/// 65 descriptors of 64 MiB over one buffer) is returned unused with a guest_errors line
/// naming the device, and the device goes on; a looped chain still stops it.
#[test]
fn a_tx_chain_longer_than_4g_is_returned_unused() {
    use std::os::unix::net::UnixDatagram;
    let log = crate::logging::captured();
    let (ours, theirs) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let backend = VirtioBackend::Net(super::net::NetBackend {
        tap: std::fs::File::from(std::os::fd::OwnedFd::from(theirs)),
        mac: machine::MacAddr::FIRST_DEFAULT,
        more_queues: Vec::new(),
        announce: None,
    });
    let mut d = build_with_mem(
        &plan(crate::testing::DEVICE_NET, true, false, &[]),
        backend,
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap(),
    );
    d.d.modern_begin(super::regs::features::VERSION_1);
    let (rx, tx) = (d.rings[0], d.rings[1]);
    d.d.modern_ring(0, &rx);
    d.d.modern_ring(1, &tx);
    d.d.modern_driver_ok();
    let bufs = vec![(DATA, u32::MAX / 64, false); 65];
    let head = d.rings[1].push_chain(&d.d.mem, 0, &bufs);
    d.notify_modern(1);
    d.w.poll();
    assert_eq!(d.status() & status::NEEDS_RESET, 0);
    assert_eq!(d.rings[1].used_idx(&d.d.mem), 1);
    assert_eq!(d.rings[1].used_elem(&d.d.mem, 0), (u32::from(head), 0));
    let mut frame = [0u8; 2048];
    assert!(ours.recv(&mut frame).is_err(), "nothing is sent");
    let line = log
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(t, l)| t == "guest_errors" && l.contains("longer than 2^32 bytes"))
        .map(|(_, l)| l.clone())
        .expect("a guest_errors line");
    assert!(line.starts_with("virtio-net-pci"), "{line}");
    // The next frame (12-byte header, 60 bytes) goes out as usual.
    d.rings[1].push_chain(&d.d.mem, 100, &[(DATA, 12, false), (DATA + 12, 60, false)]);
    d.notify_modern(1);
    d.w.poll();
    assert_eq!(d.rings[1].used_idx(&d.d.mem), 2);
    assert_eq!(ours.recv(&mut frame).unwrap(), 60);
    // A chain that loops is still a device error.
    let at = d.rings[1].push_chain(&d.d.mem, 200, &[(DATA, 16, false), (DATA, 16, false)]);
    d.rings[1].write_desc(&d.d.mem, at + 1, DATA, 16, 1, at);
    d.notify_modern(1);
    d.w.poll();
    assert_ne!(d.status() & status::NEEDS_RESET, 0);
}

#[derive(Clone, Default)]
struct Out(Arc<Mutex<Vec<u8>>>);
impl Write for Out {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn console_output_and_emergency_write() {
    let out = Out::default();
    let mut p = plan(DEVICE_CONSOLE, true, false, &[]);
    p.properties.insert("max_ports", PropValue::Uint(1));
    let mut d = build(
        &p,
        VirtioBackend::Console(ConsoleBackend {
            ports: Default::default(),
            output: Box::new(out.clone()),
        }),
    );
    assert_eq!(d.bar_size(0), 0x40);
    d.modern_init(super::regs::features::VERSION_1);
    // Transmit queue 1 lives at a second ring.
    d.common_w(common::Q_SELECT, 1, 2);
    d.common_w(common::Q_DESCLO, DESC + Q1, 4);
    d.common_w(common::Q_AVAILLO, AVAIL + Q1, 4);
    d.common_w(common::Q_USEDLO, USED + Q1, 4);
    d.common_w(common::Q_ENABLE, 1, 2);
    d.mem.write_slice(b"hello", GuestAddress(DATA)).unwrap();
    d.submit(1, &[(DATA, 5, false)]);
    d.bar_write(modern::BAR, modern::NOTIFY + 4, 1, 2);
    d.w.poll();
    assert_eq!(&*out.0.lock().unwrap(), b"hello");
    d.bar_write(modern::BAR, modern::DEVICE + 8, u64::from(b'!'), 4);
    assert_eq!(&*out.0.lock().unwrap(), b"hello!");
    // Input is delivered into receive buffers.
    let input = d.console_input.clone().unwrap();
    d.submit(0, &[(DATA + 0x100, 16, true)]);
    modern_notify(&mut d);
    d.w.poll();
    input.push(b"ls\n");
    d.w.process_event(0);
    assert_eq!(d.used(0).1, 3);
    let mut b = [0u8; 3];
    d.mem
        .read_slice(&mut b, GuestAddress(DATA + 0x100))
        .unwrap();
    assert_eq!(&b, b"ls\n");
}

/// Ports added on the running machine reach a MULTIPORT driver: those present at
/// DEVICE_READY with it, later ones and removals as they happen (PORT_ADD / PORT_REMOVE);
/// their output is taken and discarded (no chardev).
#[test]
fn console_announces_hot_added_ports() {
    use super::console::HotPorts;
    let ports = HotPorts::default();
    let mut p = plan(DEVICE_CONSOLE, true, false, &[]);
    p.properties.insert("max_ports", PropValue::Uint(4));
    let mut d = build(
        &p,
        VirtioBackend::Console(ConsoleBackend {
            output: Box::new(std::io::sink()),
            ports: ports.clone(),
        }),
    );
    let ctrl_rx = Ring::new(8, 0x20000, 0x21000, 0x22000);
    let ctrl_tx = Ring::new(8, 0x24000, 0x25000, 0x26000);
    let port2_tx = Ring::new(8, 0x28000, 0x29000, 0x2a000);
    let (mut ctrl_rx, mut ctrl_tx, mut port2_tx) = (ctrl_rx, ctrl_tx, port2_tx);
    d.d.modern_begin(super::regs::features::VERSION_1 | 1 << 1);
    d.d.modern_ring(2, &ctrl_rx);
    d.d.modern_ring(3, &ctrl_tx);
    d.d.modern_ring(7, &port2_tx);
    d.d.modern_driver_ok();
    // Added before the driver is ready: announced with DEVICE_READY.
    ports.add(2, false);
    for i in 0..4u16 {
        ctrl_rx.push_chain(&d.d.mem, i, &[(DATA + 0x100 * u64::from(i), 8, true)]);
    }
    d.notify_modern(2);
    d.w.poll();
    let msg = |id: u32, event: u16, value: u16| {
        let mut m = [0u8; 8];
        m[0..4].copy_from_slice(&id.to_le_bytes());
        m[4..6].copy_from_slice(&event.to_le_bytes());
        m[6..8].copy_from_slice(&value.to_le_bytes());
        m
    };
    d.d.mem
        .write_slice(&msg(0, 0, 1), GuestAddress(DATA + 0x1000))
        .unwrap();
    ctrl_tx.push_chain(&d.d.mem, 0, &[(DATA + 0x1000, 8, false)]);
    d.notify_modern(3);
    d.w.poll();
    let got = |d: &Dev, i: u64| {
        let mut m = [0u8; 8];
        d.d.mem
            .read_slice(&mut m, GuestAddress(DATA + 0x100 * i))
            .unwrap();
        m
    };
    assert_eq!(ctrl_rx.used_idx(&d.d.mem), 2);
    assert_eq!(got(&d, 0), msg(0, 1, 1), "port 0 added");
    assert_eq!(got(&d, 1), msg(2, 1, 1), "port 2 added");
    // Its output is consumed.
    port2_tx.push_chain(&d.d.mem, 0, &[(DATA + 0x2000, 5, false)]);
    d.notify_modern(7);
    d.w.poll();
    assert_eq!(port2_tx.used_idx(&d.d.mem), 1);
    // Removed while the driver runs: PORT_REMOVE at once; added again: PORT_ADD.
    ports.remove(2);
    d.w.process_event(0);
    assert_eq!(ctrl_rx.used_idx(&d.d.mem), 3);
    assert_eq!(got(&d, 2), msg(2, 2, 1), "port 2 removed");
    ports.add(3, true);
    d.w.process_event(0);
    assert_eq!(got(&d, 3), msg(3, 1, 1), "port 3 added");
    // A removed port's queue is no longer served.
    port2_tx.push_chain(&d.d.mem, 1, &[(DATA + 0x2000, 5, false)]);
    d.notify_modern(7);
    d.w.poll();
    assert_eq!(port2_tx.used_idx(&d.d.mem), 1);
}

/// Records the ioeventfds registered now, as KVM would hold them.
#[derive(Default)]
struct Registrar(Mutex<Vec<notify::IoEvent>>);
impl notify::IoEventRegistrar for Registrar {
    fn register(
        &self,
        e: &notify::IoEvent,
        _fd: &vmm_sys_util::eventfd::EventFd,
    ) -> std::io::Result<()> {
        let mut v = self.0.lock().unwrap();
        if v.contains(e) {
            // KVM refuses a duplicate registration.
            return Err(std::io::Error::from_raw_os_error(libc::EEXIST));
        }
        v.push(*e);
        Ok(())
    }
    fn unregister(
        &self,
        e: &notify::IoEvent,
        _fd: &vmm_sys_util::eventfd::EventFd,
    ) -> std::io::Result<()> {
        let mut v = self.0.lock().unwrap();
        let at = v
            .iter()
            .position(|x| x == e)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT))?;
        v.remove(at);
        Ok(())
    }
}

fn live(r: &Registrar) -> Vec<notify::IoEvent> {
    let mut v = r.0.lock().unwrap().clone();
    v.sort_by_key(|e| (e.addr, e.len));
    v
}

#[test]
fn ioeventfds_follow_driver_ok_bar_moves_decode_and_reset() {
    use notify::{IoEvent, IoEventSpace};
    let (mut d, _image) = blk(true, false);
    let reg = Arc::new(Registrar::default());
    d.f.set_ioevent_registrar(reg.clone());
    d.f.bars_mapped(&[(0, 0xc000), (modern::BAR, 0xfe00_0000)]);
    assert!(live(&reg).is_empty(), "nothing before DRIVER_OK");
    d.modern_init(super::regs::features::VERSION_1);
    let modern_at = |base: u64| IoEvent {
        space: IoEventSpace::Mmio,
        addr: base + modern::NOTIFY,
        len: 0,
        datamatch: None,
    };
    let legacy_at = |base: u64| IoEvent {
        space: IoEventSpace::Pio,
        addr: base + legacy::QUEUE_NOTIFY,
        len: 2,
        datamatch: Some(0),
    };
    // Queue 0 is live: both notify addresses of the transitional function.
    assert_eq!(live(&reg), vec![legacy_at(0xc000), modern_at(0xfe00_0000)]);
    // The guest moves the memory BAR: the registration moves with it.
    d.f.bars_mapped(&[(0, 0xc000), (modern::BAR, 0xfd00_0000)]);
    assert_eq!(live(&reg), vec![legacy_at(0xc000), modern_at(0xfd00_0000)]);
    // I/O decode off: the legacy doorbell is gone, the modern one stays.
    d.f.bars_mapped(&[(modern::BAR, 0xfd00_0000)]);
    assert_eq!(live(&reg), vec![modern_at(0xfd00_0000)]);
    // A request still completes through the moved doorbell's EventFd.
    let (s, _) = d.blk_req(&modern_notify, 4, 0, None);
    assert_eq!(s, 0);
    // Device reset: nothing stays registered.
    d.common_w(common::STATUS, 0, 1);
    assert!(live(&reg).is_empty(), "reset unregisters");
    // The legacy driver registers its doorbell at DRIVER_OK too.
    d.f.bars_mapped(&[(0, 0xc100), (modern::BAR, 0xfd00_0000)]);
    d.legacy_init();
    assert_eq!(live(&reg), vec![legacy_at(0xc100), modern_at(0xfd00_0000)]);
    // Function reset (FLR, bus reset) and the function's end leave nothing behind.
    d.f.reset();
    assert!(live(&reg).is_empty(), "function reset unregisters");
    d.legacy_init();
    assert_eq!(live(&reg).len(), 2);
    drop(d);
    assert!(live(&reg).is_empty(), "a dropped function unregisters");
}

#[test]
fn a_doorbell_does_not_wait_for_the_device_lock() {
    use std::sync::mpsc::channel;
    use std::time::Duration;
    let (mut d, _image) = blk(false, false);
    d.modern_init(super::regs::features::VERSION_1);
    // DRIVER_OK's own kick first.
    d.w.poll();
    let served_before = d.w.kick_stats().served;
    // A worker busy in I/O holds the device lock.
    let core = d.f.core_handle();
    let (held_tx, held_rx) = channel();
    let (release_tx, release_rx) = channel::<()>();
    let busy = std::thread::spawn(move || {
        let _guard = core.lock().unwrap();
        held_tx.send(()).unwrap();
        // Hang guard only: the test releases it as soon as the doorbell returned.
        let _ = release_rx.recv_timeout(Duration::from_secs(120));
    });
    held_rx.recv().unwrap();
    let mut f = d.d.f;
    let (done_tx, done_rx) = channel();
    let vcpu = std::thread::spawn(move || {
        f.bar_write(modern::BAR, modern::NOTIFY, &0u16.to_le_bytes());
        done_tx.send(()).unwrap();
        f
    });
    let rang = done_rx.recv_timeout(Duration::from_secs(60));
    release_tx.send(()).unwrap();
    busy.join().unwrap();
    d.d.f = vcpu.join().unwrap();
    assert!(
        rang.is_ok(),
        "the doorbell returned while the device lock was held"
    );
    // The worker then serves it.
    d.w.poll();
    let stats = d.w.kick_stats();
    assert_eq!(stats.served, served_before + 1);
    assert_eq!(
        stats.exits, 1,
        "it came through the exit path (no ioeventfd here)"
    );
}

#[test]
fn blk_data_crossing_guest_memory_regions_goes_straight_to_and_from_the_image() {
    // Two separately mapped regions back to back: a buffer across the seam is two iovecs.
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 1 << 20),
        (GuestAddress(1 << 20), 1 << 20),
    ])
    .unwrap();
    let (path, file) = image(1 << 20);
    let mut d = build_with_mem(
        &plan(DEVICE_BLK, false, false, &[]),
        block_backend(file, Default::default()),
        mem,
    );
    d.modern_init(super::regs::features::VERSION_1);
    let seam = (1u64 << 20) - 1536;
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 13 + 5) as u8).collect();
    d.mem.write_slice(&pattern, GuestAddress(seam)).unwrap();
    let (s, _) = d.blk_req(&modern_notify, 1, 5, Some((seam, 8192, false)));
    assert_eq!(s, 0);
    let mut disk = vec![0u8; 8192];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact_at_compat(5 * 512, &mut disk);
    assert_eq!(disk, pattern, "what crossed the seam is on disk");
    // Read back to another buffer across the seam, shifted.
    let back_at = seam - 512;
    d.mem
        .write_slice(&vec![0u8; 8192], GuestAddress(back_at))
        .unwrap();
    let (s, len) = d.blk_req(&modern_notify, 0, 5, Some((back_at, 8192, true)));
    assert_eq!((s, len), (0, 8193));
    let mut back = vec![0u8; 8192];
    d.mem.read_slice(&mut back, GuestAddress(back_at)).unwrap();
    assert_eq!(back, pattern);
    // A buffer running past guest RAM is a device error (NEEDS_RESET), never a host access.
    let past = (2u64 << 20) - 1024;
    let hdr = DATA - 0x100;
    d.mem.write_slice(&[0u8; 16], GuestAddress(hdr)).unwrap();
    let before = d.used_idx();
    d.submit(
        0,
        &[(hdr, 16, false), (past, 4096, true), (DATA - 0x10, 1, true)],
    );
    modern_notify(&mut d);
    d.w.poll();
    assert_eq!(d.used_idx(), before, "not completed");
    assert_ne!(d.common_r(common::STATUS, 1) as u8 & status::NEEDS_RESET, 0);
}

#[test]
fn a_driver_that_cannot_flush_gets_a_writethrough_disk() {
    // QEMU's virtio_blk_set_status: without CONFIG_WCE, the write cache follows FLUSH.
    let wce_at = modern::DEVICE + 0x20;
    let (mut d, _image) = blk(false, false);
    d.modern_init(super::regs::features::VERSION_1);
    assert_eq!(
        d.bar_read(modern::BAR, wce_at, 1),
        0,
        "no FLUSH: writethrough"
    );
    d.modern_init(super::regs::features::VERSION_1 | (1 << 9));
    assert_eq!(d.bar_read(modern::BAR, wce_at, 1), 1, "FLUSH: write cache");
    // With CONFIG_WCE the driver chooses through the config byte.
    d.modern_init(super::regs::features::VERSION_1 | (1 << 11));
    assert_eq!(d.bar_read(modern::BAR, wce_at, 1), 1);
}

mod queue_groups;
