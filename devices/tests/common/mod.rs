//! Helpers shared by the virtio integration tests and the virtio-blk benchmark: a seedable
//! PRNG, plans for virtio-pci functions, guest memory surrounded by host-side canaries, a
//! driver that brings a function up through config space and BAR accesses the way a guest
//! does, and a driver-side split virtqueue.

// Each test or bench target uses a different subset.
#![allow(dead_code)]

use devices::pci::{MsiSink, PciFunction};
use devices::virtio::regs::{common, legacy, modern, status};
use devices::virtio::{create, IntxLine, VirtioBackend, VirtioPciFunction, VirtioWorker};
use machine::{PciFunctionPlan, PciIdentity, VirtioMode};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use vm_memory::mmap::MmapRegion;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

// ---------------------------------------------------------------------------------------
// Random numbers
// ---------------------------------------------------------------------------------------

/// SplitMix64 step: turns any seed (0 included) into a well-mixed 64-bit value.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// xorshift64* seeded through SplitMix64: deterministic, fast, no dependencies.
#[derive(Debug, Clone)]
pub struct XorShift {
    state: u64,
}

impl XorShift {
    pub fn new(seed: u64) -> Self {
        let s = splitmix64(seed);
        Self {
            state: if s == 0 { 0x2545_f491_4f6c_dd1d } else { s },
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability 1/n.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Plans, backends, images
// ---------------------------------------------------------------------------------------

pub const DEVICE_NET: u16 = 1;
pub const DEVICE_BLK: u16 = 2;
pub const DEVICE_CONSOLE: u16 = 3;
pub const DEVICE_RNG: u16 = 4;

/// A virtio-pci function plan as the machine planner resolves it: transitional
/// (`legacy`) or modern-only identity, with the given device properties.
pub fn plan(device_type: u16, legacy: bool, pcie: bool, props: &[(&str, &str)]) -> PciFunctionPlan {
    let (device_id, revision, subsystem_id) = if legacy {
        let id = if device_type == DEVICE_RNG {
            0x1005
        } else {
            0x1000 + device_type - 1
        };
        (id, 0, device_type)
    } else {
        (0x1040 + device_type, 1, 0x1100)
    };
    PciFunctionPlan {
        type_name: "virtio-test-pci".into(),
        id: None,
        bus: "pcie.0".into(),
        slot: 2,
        function: 0,
        implicit: false,
        identity: PciIdentity {
            vendor_id: 0x1af4,
            device_id,
            class_code: 0x010000,
            revision,
            subsystem_vendor_id: Some(0x1af4),
            subsystem_id: Some(subsystem_id),
            header_type: 0,
        },
        multifunction: false,
        provides_bus: None,
        virtio: Some(VirtioMode {
            device_type,
            legacy,
            modern: true,
            pcie_capability: pcie,
        }),
        properties: props
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// A scratch file under the temp dir, unique per process and `tag`; removed on drop.
pub struct TempImage {
    pub path: PathBuf,
}

impl TempImage {
    pub fn new(tag: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("machina-virtio-{}-{}.img", std::process::id(), tag));
        Self { path }
    }

    /// (Re)create the file with `len` bytes of `content` (repeated / truncated) and open it
    /// read-write, or read-only.
    pub fn create(&self, content: &[u8], len: u64, read_only: bool) -> File {
        {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&self.path)
                .expect("create image");
            f.set_len(len).expect("size image");
            if !content.is_empty() {
                use std::os::unix::fs::FileExt;
                let want = len.min(1 << 20) as usize;
                let mut chunk = Vec::with_capacity(want + content.len());
                while chunk.len() < want {
                    chunk.extend_from_slice(content);
                }
                let mut off = 0u64;
                while off < len {
                    let n = (len - off).min(chunk.len() as u64) as usize;
                    f.write_all_at(&chunk[..n], off).expect("fill image");
                    off += n as u64;
                }
            }
        }
        OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&self.path)
            .expect("open image")
    }

    pub fn len(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

// ---------------------------------------------------------------------------------------
// Guest memory with canaries around it
// ---------------------------------------------------------------------------------------

pub const PAGE: usize = 4096;
/// Region A: guest [0, 1 MiB).
pub const A_SIZE: u64 = 1 << 20;
/// The hole between the two regions, in guest physical and host virtual space alike.
pub const HOLE: u64 = 0x1_0000;
/// Region B (optional): guest [1 MiB + 64 KiB, + 64 KiB).
pub const B_BASE: u64 = A_SIZE + HOLE;
pub const B_SIZE: u64 = 0x1_0000;
/// One past the highest guest address that can ever be mapped.
pub const MEM_END: u64 = B_BASE + B_SIZE;

/// One anonymous host mapping laid out as
/// `[canary page][region A][hole canary][region B or canary][canary page]`, so the host
/// bytes right before, between and after the guest regions are the ones an address
/// computation that escaped a region would hit. The canaries hold a fixed pattern that
/// [`GuardedMemory::check_host_canaries`] verifies.
///
/// The mapping is never unmapped: `GuestMemoryMmap` handles to it may be cloned into device
/// models whose lifetime the harness does not control, so it lives for the whole process
/// (one per fuzz target, 1.2 MiB each).
pub struct GuardedMemory {
    base: *mut u8,
    total: usize,
    two_regions: bool,
    /// The canary pattern for every host offset.
    pattern: Vec<u8>,
}

fn canary_byte(off: usize) -> u8 {
    (off.wrapping_mul(131) as u8) ^ 0xa5
}

impl GuardedMemory {
    const A_OFF: usize = PAGE;
    const B_OFF: usize = PAGE + (A_SIZE + HOLE) as usize;

    pub fn new() -> Self {
        let total = Self::B_OFF + B_SIZE as usize + PAGE;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected and the
        // result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap guest memory");
        Self {
            base: p.cast(),
            total,
            two_regions: false,
            pattern: (0..total).map(canary_byte).collect(),
        }
    }

    fn host(&mut self) -> &mut [u8] {
        // SAFETY: `base..base+total` is our private mapping, never unmapped. The harness
        // drives devices from this thread only, and the slice is used between device calls,
        // so no device access overlaps it; `&mut self` keeps harness accesses exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.base, self.total) }
    }

    /// Host ranges that are not guest memory right now.
    fn canary_ranges(&self) -> Vec<std::ops::Range<usize>> {
        let a_end = Self::A_OFF + A_SIZE as usize;
        let b_end = Self::B_OFF + B_SIZE as usize;
        if self.two_regions {
            vec![0..Self::A_OFF, a_end..Self::B_OFF, b_end..self.total]
        } else {
            vec![0..Self::A_OFF, a_end..self.total]
        }
    }

    /// A fresh guest memory over the mapping (region B only with `two_regions`): guest bytes
    /// zeroed, canaries rewritten.
    pub fn guest(&mut self, two_regions: bool) -> GuestMemoryMmap {
        self.two_regions = two_regions;
        self.host().fill(0);
        self.reset_host_canaries();
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        let mut regions = Vec::new();
        let mut add = |off: usize, size: u64, gpa: u64| {
            // SAFETY: `base + off .. + size` lies inside our mapping (the layout constants
            // keep it there), which is page aligned, never unmapped, and has the protection
            // and flags given here.
            let r = unsafe {
                MmapRegion::<()>::build_raw(self.base.add(off), size as usize, prot, flags)
            }
            .expect("region over guarded mapping");
            regions.push(GuestRegionMmap::new(r, GuestAddress(gpa)).expect("guest region"));
        };
        add(Self::A_OFF, A_SIZE, 0);
        if two_regions {
            add(Self::B_OFF, B_SIZE, B_BASE);
        }
        GuestMemoryMmap::from_regions(regions).expect("guest memory")
    }

    pub fn reset_host_canaries(&mut self) {
        for r in self.canary_ranges() {
            let pat = self.pattern[r.clone()].to_vec();
            self.host()[r].copy_from_slice(&pat);
        }
    }

    /// Change one host byte in the hole between the regions, as a stray write would (for
    /// checking that the canary check notices).
    pub fn poke_hole(&mut self) {
        let off = Self::A_OFF + A_SIZE as usize + 100;
        self.host()[off] ^= 0xff;
    }

    /// The first host byte outside the guest regions that changed, if any.
    pub fn check_host_canaries(&mut self) -> Result<(), String> {
        for r in self.canary_ranges() {
            let pat = self.pattern[r.clone()].to_vec();
            let host = &self.host()[r.clone()];
            if host != pat.as_slice() {
                let i = host.iter().zip(&pat).position(|(a, b)| a != b).unwrap_or(0);
                return Err(format!(
                    "host byte {:#x} outside guest memory changed ({:#x}); region A starts at \
                     host offset {:#x}",
                    r.start + i,
                    host[i],
                    Self::A_OFF
                ));
            }
        }
        Ok(())
    }
}

impl Default for GuardedMemory {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------------------
// The driver
// ---------------------------------------------------------------------------------------

/// Counts MSI-X messages.
#[derive(Default)]
pub struct MsiCount(pub AtomicUsize);
impl MsiSink for MsiCount {
    fn send(&self, _address: u64, _data: u32) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts INTx level changes.
#[derive(Default)]
pub struct IntxCount(pub AtomicUsize);
impl IntxLine for IntxCount {
    fn set_level(&self, _level: bool) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// A virtio-pci function with its worker, driven through its config space and BARs.
pub struct Driver {
    pub f: VirtioPciFunction,
    pub w: VirtioWorker,
    pub msi: Arc<MsiCount>,
    pub intx: Arc<IntxCount>,
    pub console_input: Option<devices::virtio::console::ConsoleInput>,
}

impl Driver {
    pub fn new(plan: &PciFunctionPlan, backend: VirtioBackend, mem: GuestMemoryMmap) -> Self {
        let intx = Arc::new(IntxCount::default());
        let parts = create(plan, backend, mem, Some(intx.clone())).expect("create virtio device");
        let mut f = parts.function;
        let msi = Arc::new(MsiCount::default());
        f.set_msi_sink(msi.clone());
        Self {
            f,
            w: parts.worker,
            msi,
            intx,
            console_input: parts.console_input,
        }
    }

    pub fn cfg_read(&mut self, off: u16, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.f.config_read(off, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    pub fn cfg_write(&mut self, off: u16, v: u64, len: usize) {
        self.f.config_write(off, &v.to_le_bytes()[..len]);
    }

    pub fn bar_read(&mut self, bar: usize, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.f.bar_read(bar, off, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    pub fn bar_write(&mut self, bar: usize, off: u64, v: u64, len: usize) {
        self.f.bar_write(bar, off, &v.to_le_bytes()[..len]);
    }

    pub fn common_r(&mut self, off: u64, len: usize) -> u64 {
        self.bar_read(modern::BAR, modern::COMMON + off, len)
    }

    pub fn common_w(&mut self, off: u64, v: u64, len: usize) {
        self.bar_write(modern::BAR, modern::COMMON + off, v, len);
    }

    /// Device status through the modern common config.
    pub fn status(&mut self) -> u8 {
        self.common_r(common::STATUS, 1) as u8
    }

    pub fn needs_reset(&mut self) -> bool {
        self.status() & status::NEEDS_RESET != 0
    }

    /// Device features as the modern interface shows them.
    pub fn device_features(&mut self) -> u64 {
        self.common_w(common::DFSELECT, 0, 4);
        let lo = self.common_r(common::DF, 4);
        self.common_w(common::DFSELECT, 1, 4);
        let hi = self.common_r(common::DF, 4);
        lo | (hi << 32)
    }

    pub fn num_queues(&mut self) -> u16 {
        self.common_r(common::NUMQ, 2) as u16
    }

    /// Modern init up to FEATURES_OK; returns the status read back.
    pub fn modern_begin(&mut self, features: u64) -> u8 {
        self.common_w(common::STATUS, 0, 1);
        self.common_w(common::STATUS, u64::from(status::ACKNOWLEDGE), 1);
        self.common_w(
            common::STATUS,
            u64::from(status::ACKNOWLEDGE | status::DRIVER),
            1,
        );
        for sel in 0..2u64 {
            self.common_w(common::GFSELECT, sel, 4);
            self.common_w(common::GF, (features >> (32 * sel)) & 0xffff_ffff, 4);
        }
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.common_w(common::STATUS, u64::from(s), 1);
        self.status()
    }

    /// Select queue `q` and read its maximum / current size.
    pub fn modern_queue_size(&mut self, q: u16) -> u16 {
        self.common_w(common::Q_SELECT, u64::from(q), 2);
        self.common_r(common::Q_SIZE, 2) as u16
    }

    /// Program queue `q` (size and ring addresses) and enable it.
    pub fn modern_queue(&mut self, q: u16, size: u16, desc: u64, avail: u64, used: u64) {
        self.common_w(common::Q_SELECT, u64::from(q), 2);
        self.common_w(common::Q_SIZE, u64::from(size), 2);
        self.common_w(common::Q_DESCLO, desc & 0xffff_ffff, 4);
        self.common_w(common::Q_DESCHI, desc >> 32, 4);
        self.common_w(common::Q_AVAILLO, avail & 0xffff_ffff, 4);
        self.common_w(common::Q_AVAILHI, avail >> 32, 4);
        self.common_w(common::Q_USEDLO, used & 0xffff_ffff, 4);
        self.common_w(common::Q_USEDHI, used >> 32, 4);
        self.common_w(common::Q_ENABLE, 1, 2);
    }

    /// What the device holds for queue `q`: (size, desc, avail, used).
    pub fn modern_queue_state(&mut self, q: u16) -> (u16, u64, u64, u64) {
        self.common_w(common::Q_SELECT, u64::from(q), 2);
        let size = self.common_r(common::Q_SIZE, 2) as u16;
        let desc = self.common_r(common::Q_DESCLO, 4) | (self.common_r(common::Q_DESCHI, 4) << 32);
        let avail =
            self.common_r(common::Q_AVAILLO, 4) | (self.common_r(common::Q_AVAILHI, 4) << 32);
        let used = self.common_r(common::Q_USEDLO, 4) | (self.common_r(common::Q_USEDHI, 4) << 32);
        (size, desc, avail, used)
    }

    pub fn modern_driver_ok(&mut self) {
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
        self.common_w(common::STATUS, u64::from(s), 1);
    }

    pub fn notify_modern(&mut self, q: u16) {
        self.bar_write(
            modern::BAR,
            modern::NOTIFY + u64::from(q) * 4,
            u64::from(q),
            2,
        );
    }

    /// Legacy init: reset, ACKNOWLEDGE|DRIVER and the low 32 feature bits.
    pub fn legacy_begin(&mut self, features: u32) -> u32 {
        self.bar_write(0, legacy::STATUS, 0, 1);
        self.bar_write(
            0,
            legacy::STATUS,
            u64::from(status::ACKNOWLEDGE | status::DRIVER),
            1,
        );
        let host = self.bar_read(0, legacy::HOST_FEATURES, 4) as u32;
        self.bar_write(0, legacy::GUEST_FEATURES, u64::from(features & host), 4);
        host
    }

    /// Legacy queue `q` at page frame `pfn`; returns the (fixed) queue size.
    pub fn legacy_queue(&mut self, q: u16, pfn: u32) -> u16 {
        self.bar_write(0, legacy::QUEUE_SEL, u64::from(q), 2);
        let size = self.bar_read(0, legacy::QUEUE_NUM, 2) as u16;
        self.bar_write(0, legacy::QUEUE_PFN, u64::from(pfn), 4);
        size
    }

    pub fn legacy_driver_ok(&mut self) {
        self.bar_write(
            0,
            legacy::STATUS,
            u64::from(status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK),
            1,
        );
    }

    pub fn notify_legacy(&mut self, q: u16) {
        self.bar_write(0, legacy::QUEUE_NOTIFY, u64::from(q), 2);
    }
}

// ---------------------------------------------------------------------------------------
// Driver side of a split virtqueue
// ---------------------------------------------------------------------------------------

pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;
pub const VRING_DESC_F_INDIRECT: u16 = 4;

/// Ring addresses and the driver's indices for one split virtqueue.
#[derive(Debug, Clone, Copy)]
pub struct Ring {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// Next avail index the driver publishes.
    pub avail_idx: u16,
    /// Used entries the driver has consumed.
    pub used_seen: u16,
}

impl Ring {
    pub fn new(size: u16, desc: u64, avail: u64, used: u64) -> Self {
        Self {
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// The legacy layout for page frame `pfn` (virtio 0.9.5 vring_init, 4 KiB alignment).
    pub fn legacy(size: u16, pfn: u64) -> Self {
        let desc = pfn << 12;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 4 + 2 * u64::from(size)).next_multiple_of(4096);
        Self::new(size, desc, avail, used)
    }

    /// Bytes the used ring spans, avail_event included.
    pub fn used_bytes(&self) -> u64 {
        6 + 8 * u64::from(self.size)
    }

    pub fn avail_bytes(&self) -> u64 {
        6 + 2 * u64::from(self.size)
    }

    /// Encode one descriptor.
    pub fn desc_bytes(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        d
    }

    /// Write descriptor `idx` of the table (ignored where the table is not in memory).
    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        idx: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = self.desc.wrapping_add(16 * u64::from(idx));
        let _ = mem.write_slice(&Self::desc_bytes(addr, len, flags, next), GuestAddress(at));
    }

    /// Put `head` in the next avail slot without publishing it.
    pub fn stage(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        let _ = mem.write_obj(head, GuestAddress(self.avail.wrapping_add(4 + 2 * slot)));
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Publish the avail index.
    pub fn publish(&self, mem: &GuestMemoryMmap) {
        let _ = mem.write_obj(self.avail_idx, GuestAddress(self.avail.wrapping_add(2)));
    }

    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used.wrapping_add(2)))
            .unwrap_or(0)
    }

    /// Used element `n` (mod size): (id, len).
    pub fn used_elem(&self, mem: &GuestMemoryMmap, n: u16) -> (u32, u32) {
        let e = self.used.wrapping_add(4 + 8 * u64::from(n % self.size));
        (
            mem.read_obj(GuestAddress(e)).unwrap_or(u32::MAX),
            mem.read_obj(GuestAddress(e.wrapping_add(4)))
                .unwrap_or(u32::MAX),
        )
    }
}
