//! The `virtio` test: polled virtio-pci drivers (blk, rng, net, console)
//! through the legacy (virtio 0.9, I/O BAR0) and the modern (virtio 1.0,
//! vendor capabilities) interface of every virtio-pci function.
//!
//! The guest takes no interrupts: requests are published on the available
//! ring, the device is notified, and the used ring is polled with a bounded
//! TSC deadline. Queues and buffers live in one static, page-aligned area
//! of the image's .bss (identity mapped, so its virtual address is the
//! physical address the device sees). Only one device is driven at a time.

use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::{fence, Ordering};

use crate::cmdline::Cmdline;
use crate::pci::{self, Bar, BarKind, Bdf, Cf8, ConfigSpace, Function};
use crate::phys;
use crate::port::{inb, inl, inw, outb, outl, outw};
use crate::tsc::Deadline;

const VENDOR_VIRTIO: u16 = 0x1af4;
const FIRST_TRANSITIONAL: u16 = 0x1000;
const FIRST_MODERN: u16 = 0x1040;
const LAST_MODERN: u16 = 0x107f;
const MAX_DEVICES: usize = 64;

const TYPE_NET: u16 = 1;
const TYPE_BLK: u16 = 2;
const TYPE_CONSOLE: u16 = 3;
const TYPE_RNG: u16 = 4;

// Device status bits.
const STATUS_ACKNOWLEDGE: u8 = 1;
const STATUS_DRIVER: u8 = 2;
const STATUS_DRIVER_OK: u8 = 4;
const STATUS_FEATURES_OK: u8 = 8;

const F_VERSION_1: u64 = 1 << 32;
const BLK_F_RO: u64 = 1 << 5;
const BLK_F_FLUSH: u64 = 1 << 9;
const NET_F_MAC: u64 = 1 << 5;
const CONSOLE_F_MULTIPORT: u64 = 1 << 1;

// PCI capability IDs and virtio capability types.
const CAP_VENDOR: u8 = 0x09;
const CAP_MSIX: u8 = 0x11;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_DEVICE: u8 = 4;
const CFG_PCI: u8 = 5;

// Legacy I/O BAR0 registers.
const LEG_HOST_FEATURES: u16 = 0x00;
const LEG_GUEST_FEATURES: u16 = 0x04;
const LEG_QUEUE_PFN: u16 = 0x08;
const LEG_QUEUE_SIZE: u16 = 0x0c;
const LEG_QUEUE_SELECT: u16 = 0x0e;
const LEG_QUEUE_NOTIFY: u16 = 0x10;
const LEG_STATUS: u16 = 0x12;
/// Device config offset with MSI-X disabled (0x18 when it is enabled).
const LEG_CONFIG: u16 = 0x14;
const LEG_CONFIG_MSIX: u16 = 0x18;
/// Bytes of I/O space the legacy registers (up to the config) need.
const LEG_MIN_IO: u64 = 0x20;
/// Default `machina.max-io-port`: every port. Under QEMU with KVM on PVM hosts a CPL-3
/// `in`/`out` to ports >= 0x8000 faults (the TSS QEMU's firmware leaves denies them), so
/// runs there pass 0x7fff (see README); machina's PVH entry state allows every port.
const DEFAULT_MAX_IO_PORT: u64 = 0xffff;

// Modern common configuration structure.
const COM_DEVICE_FEATURE_SELECT: u64 = 0x00;
const COM_DEVICE_FEATURE: u64 = 0x04;
const COM_DRIVER_FEATURE_SELECT: u64 = 0x08;
const COM_DRIVER_FEATURE: u64 = 0x0c;
const COM_DEVICE_STATUS: u64 = 0x14;
const COM_CONFIG_GENERATION: u64 = 0x15;
const COM_QUEUE_SELECT: u64 = 0x16;
const COM_QUEUE_SIZE: u64 = 0x18;
const COM_QUEUE_ENABLE: u64 = 0x1c;
const COM_QUEUE_NOTIFY_OFF: u64 = 0x1e;
const COM_QUEUE_DESC: u64 = 0x20;
const COM_QUEUE_DRIVER: u64 = 0x28;
const COM_QUEUE_DEVICE: u64 = 0x30;
const COM_LEN: u32 = 0x38;

// Split virtqueue.
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Queue size the modern path asks for (the device's maximum if smaller).
const MODERN_QUEUE_SIZE: u16 = 16;

/// Bounded waits (see tsc.rs for what a millisecond means).
const REQUEST_TIMEOUT_MS: u64 = 3000;
const RX_TIMEOUT_MS: u64 = 5000;
const RESET_TIMEOUT_MS: u64 = 1000;

// ---------------------------------------------------------------------------
// DMA area: two queue slots and a data area.

const QUEUE_SLOT: usize = 32 * 1024;
const DATA_AREA: usize = 16 * 1024;
const DATA: usize = 2 * QUEUE_SLOT;
const DMA_SIZE: usize = DATA + DATA_AREA;

#[repr(C, align(4096))]
struct DmaArea(UnsafeCell<[u8; DMA_SIZE]>);

// SAFETY: the guest is single-threaded, and the area is only ever accessed
// through the volatile raw-pointer helpers below, never through references,
// so sharing the static cannot create aliasing references.
unsafe impl Sync for DmaArea {}

static DMA: DmaArea = DmaArea(UnsafeCell::new([0; DMA_SIZE]));

/// Physical (= virtual) address of offset `off` of the DMA area.
fn dma_addr(off: usize) -> u64 {
    DMA.0.get() as u64 + off as u64
}

fn dma_ptr<T>(off: usize) -> *mut T {
    assert!(
        off + core::mem::size_of::<T>() <= DMA_SIZE && off & (core::mem::align_of::<T>() - 1) == 0
    );
    // SAFETY: `off` plus the access size lies inside the static (asserted),
    // so the resulting pointer stays within the same allocation.
    unsafe { DMA.0.get().cast::<u8>().add(off).cast::<T>() }
}

fn dma_read<T: Copy>(off: usize) -> T {
    // SAFETY: dma_ptr checked bounds and alignment; the area is plain
    // memory in the image that only volatile accesses touch (the device may
    // write it concurrently, hence volatile).
    unsafe { core::ptr::read_volatile(dma_ptr::<T>(off)) }
}

fn dma_write<T: Copy>(off: usize, value: T) {
    // SAFETY: as for dma_read.
    unsafe { core::ptr::write_volatile(dma_ptr::<T>(off), value) }
}

fn dma_fill(off: usize, len: usize, byte: u8) {
    for i in off..off + len {
        dma_write(i, byte);
    }
}

fn dma_copy_in(off: usize, bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        dma_write(off + i, b);
    }
}

// ---------------------------------------------------------------------------
// Errors and small helpers.

/// Why a path failed: printed as `reason=<str>`.
type Reason = &'static str;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Legacy,
    Modern,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Path::Legacy => "legacy",
            Path::Modern => "modern",
        })
    }
}

/// Bytes as one `key=value` token: non-graphic bytes become `_`.
struct TokenBytes<'a>(&'a [u8]);

impl fmt::Display for TokenBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            let c = if b.is_ascii_graphic() { b } else { b'_' };
            fmt::Write::write_char(f, char::from(c))?;
        }
        Ok(())
    }
}

struct Mac([u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

// ---------------------------------------------------------------------------
// Split virtqueue.

enum Notify {
    Io(u16),
    Mmio(u64),
}

struct Queue {
    index: u16,
    size: u16,
    desc: usize,
    avail: usize,
    used: usize,
    next_avail: u16,
    last_used: u16,
    notify: Notify,
}

/// One buffer of a descriptor chain.
#[derive(Clone, Copy)]
struct Buf {
    off: usize,
    len: u32,
    device_writes: bool,
}

impl Buf {
    fn out(off: usize, len: usize) -> Self {
        Self {
            off,
            len: len as u32,
            device_writes: false,
        }
    }

    fn into(off: usize, len: usize) -> Self {
        Self {
            off,
            len: len as u32,
            device_writes: true,
        }
    }
}

/// Offsets of the split-ring parts inside a queue slot, laid out as the
/// legacy interface requires (the used ring on the next 4096 boundary);
/// `None` if that does not fit in the slot.
fn ring_layout(slot: usize, size: u16) -> Option<(usize, usize, usize)> {
    let size = usize::from(size);
    let desc = slot;
    let avail = desc + 16 * size;
    let used = (avail + 6 + 2 * size).next_multiple_of(4096);
    (used + 6 + 8 * size <= slot + QUEUE_SLOT).then_some((desc, avail, used))
}

impl Queue {
    /// Zeroes the slot and returns the queue laid out in it.
    fn new(index: u16, slot: usize, size: u16, notify: Notify) -> Result<Self, Reason> {
        let (desc, avail, used) = ring_layout(slot, size).ok_or("queue-too-big")?;
        dma_fill(slot, QUEUE_SLOT, 0);
        dma_write(avail, AVAIL_F_NO_INTERRUPT);
        Ok(Self {
            index,
            size,
            desc,
            avail,
            used,
            next_avail: 0,
            last_used: 0,
            notify,
        })
    }

    /// Writes `bufs` as a chain at descriptors `first..` and returns `first`.
    fn chain(&mut self, first: u16, bufs: &[Buf]) -> Result<u16, Reason> {
        if usize::from(first) + bufs.len() > usize::from(self.size) {
            return Err("queue-too-small");
        }
        for (k, b) in bufs.iter().enumerate() {
            let d = first + k as u16;
            let at = self.desc + 16 * usize::from(d);
            let mut flags = if b.device_writes { DESC_F_WRITE } else { 0 };
            if k + 1 < bufs.len() {
                flags |= DESC_F_NEXT;
            }
            dma_write(at, dma_addr(b.off));
            dma_write(at + 8, b.len);
            dma_write(at + 12, flags);
            dma_write(at + 14, d + 1);
        }
        Ok(first)
    }

    /// Makes the chain at `head` available (the device is not notified).
    fn publish(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * usize::from(self.next_avail % self.size);
        dma_write(slot, head);
        fence(Ordering::SeqCst);
        self.next_avail = self.next_avail.wrapping_add(1);
        dma_write(self.avail + 2, self.next_avail);
        fence(Ordering::SeqCst);
    }

    fn kick(&self) {
        match self.notify {
            Notify::Io(port) => outw(port, self.index),
            Notify::Mmio(addr) => {
                phys::mmio_write(addr, self.index);
            }
        }
    }

    /// The next used element (head id, written length) if there is one.
    fn try_used(&mut self) -> Option<(u32, u32)> {
        let idx: u16 = dma_read(self.used + 2);
        if idx == self.last_used {
            return None;
        }
        fence(Ordering::SeqCst);
        let at = self.used + 4 + 8 * usize::from(self.last_used % self.size);
        self.last_used = self.last_used.wrapping_add(1);
        Some((dma_read(at), dma_read(at + 4)))
    }

    fn wait_used(&mut self, deadline: &mut Deadline) -> Option<(u32, u32)> {
        loop {
            if let Some(used) = self.try_used() {
                return Some(used);
            }
            if deadline.expired() {
                return None;
            }
        }
    }

    /// Publishes a chain, notifies, and waits for its completion.
    fn request(&mut self, bufs: &[Buf], timeout: Reason) -> Result<u32, Reason> {
        let head = self.chain(0, bufs)?;
        self.publish(head);
        self.kick();
        let (_, len) = self
            .wait_used(&mut Deadline::after_ms(REQUEST_TIMEOUT_MS))
            .ok_or(timeout)?;
        Ok(len)
    }
}

// ---------------------------------------------------------------------------
// Transports.

/// Where a virtio structure lies: BAR `bar`, `offset`, `length`.
#[derive(Clone, Copy)]
struct CapLoc {
    bar: u8,
    offset: u32,
    length: u32,
}

/// What the vendor-specific capabilities describe.
#[derive(Clone, Copy, Default)]
struct ModernCaps {
    any: bool,
    common: Option<CapLoc>,
    notify: Option<(CapLoc, u32)>,
    device: Option<CapLoc>,
}

struct Modern {
    common: u64,
    notify: u64,
    notify_len: u32,
    notify_mult: u32,
    device: u64,
    device_len: u32,
}

enum Transport {
    Legacy { io: u16, config: u16 },
    Modern(Modern),
}

impl Modern {
    fn r8(&self, off: u64) -> u8 {
        phys::mmio_read(self.common + off).unwrap_or(0xff)
    }

    fn r16(&self, off: u64) -> u16 {
        phys::mmio_read(self.common + off).unwrap_or(0xffff)
    }

    fn r32(&self, off: u64) -> u32 {
        phys::mmio_read(self.common + off).unwrap_or(u32::MAX)
    }

    fn w8(&self, off: u64, v: u8) {
        phys::mmio_write(self.common + off, v);
    }

    fn w16(&self, off: u64, v: u16) {
        phys::mmio_write(self.common + off, v);
    }

    fn w32(&self, off: u64, v: u32) {
        phys::mmio_write(self.common + off, v);
    }

    fn w64(&self, off: u64, v: u64) {
        self.w32(off, v as u32);
        self.w32(off + 4, (v >> 32) as u32);
    }
}

impl Transport {
    fn status(&self) -> u8 {
        match self {
            Transport::Legacy { io, .. } => inb(io + LEG_STATUS),
            Transport::Modern(m) => m.r8(COM_DEVICE_STATUS),
        }
    }

    fn set_status(&self, status: u8) {
        match self {
            Transport::Legacy { io, .. } => outb(io + LEG_STATUS, status),
            Transport::Modern(m) => m.w8(COM_DEVICE_STATUS, status),
        }
    }

    /// Writes status 0 and waits (boundedly) until it reads back as 0.
    fn reset(&self) -> Result<(), Reason> {
        self.set_status(0);
        let mut deadline = Deadline::after_ms(RESET_TIMEOUT_MS);
        while self.status() != 0 {
            if deadline.expired() {
                return Err("reset-timeout");
            }
        }
        Ok(())
    }

    /// Reset, ACKNOWLEDGE, DRIVER, feature negotiation (and FEATURES_OK on
    /// the modern interface). Returns (offered, negotiated) features.
    fn negotiate(&self, wanted: u64) -> Result<(u64, u64), Reason> {
        self.reset()?;
        self.set_status(STATUS_ACKNOWLEDGE);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        match self {
            Transport::Legacy { io, .. } => {
                let offered = u64::from(inl(io + LEG_HOST_FEATURES));
                let features = offered & wanted & 0xffff_ffff;
                outl(io + LEG_GUEST_FEATURES, features as u32);
                Ok((offered, features))
            }
            Transport::Modern(m) => {
                m.w32(COM_DEVICE_FEATURE_SELECT, 0);
                let lo = m.r32(COM_DEVICE_FEATURE);
                m.w32(COM_DEVICE_FEATURE_SELECT, 1);
                let hi = m.r32(COM_DEVICE_FEATURE);
                let offered = u64::from(hi) << 32 | u64::from(lo);
                if offered & F_VERSION_1 == 0 {
                    return Err("no-version-1");
                }
                let features = offered & (wanted | F_VERSION_1);
                m.w32(COM_DRIVER_FEATURE_SELECT, 0);
                m.w32(COM_DRIVER_FEATURE, features as u32);
                m.w32(COM_DRIVER_FEATURE_SELECT, 1);
                m.w32(COM_DRIVER_FEATURE, (features >> 32) as u32);
                let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
                self.set_status(status);
                if self.status() & STATUS_FEATURES_OK == 0 {
                    return Err("features-not-ok");
                }
                Ok((offered, features))
            }
        }
    }

    /// Sets up queue `index` in DMA queue slot `slot` (0 or 1).
    fn setup_queue(&self, index: u16, slot: usize) -> Result<Queue, Reason> {
        let slot = slot * QUEUE_SLOT;
        match self {
            Transport::Legacy { io, .. } => {
                outw(io + LEG_QUEUE_SELECT, index);
                // The legacy queue size is fixed by the device.
                let size = inw(io + LEG_QUEUE_SIZE);
                if size == 0 {
                    return Err("no-queue");
                }
                let q = Queue::new(index, slot, size, Notify::Io(io + LEG_QUEUE_NOTIFY))?;
                outl(io + LEG_QUEUE_PFN, (dma_addr(q.desc) >> 12) as u32);
                Ok(q)
            }
            Transport::Modern(m) => {
                m.w16(COM_QUEUE_SELECT, index);
                let max = m.r16(COM_QUEUE_SIZE);
                if max == 0 {
                    return Err("no-queue");
                }
                let size = max.min(MODERN_QUEUE_SIZE);
                let off = u64::from(m.r16(COM_QUEUE_NOTIFY_OFF)) * u64::from(m.notify_mult);
                if off + 2 > u64::from(m.notify_len) {
                    return Err("notify-out-of-range");
                }
                let q = Queue::new(index, slot, size, Notify::Mmio(m.notify + off))?;
                m.w16(COM_QUEUE_SIZE, size);
                m.w64(COM_QUEUE_DESC, dma_addr(q.desc));
                m.w64(COM_QUEUE_DRIVER, dma_addr(q.avail));
                m.w64(COM_QUEUE_DEVICE, dma_addr(q.used));
                m.w16(COM_QUEUE_ENABLE, 1);
                Ok(q)
            }
        }
    }

    fn driver_ok(&self) {
        let status = self.status() & (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        self.set_status(status | STATUS_DRIVER_OK);
    }

    fn cfg8(&self, off: u16) -> u8 {
        match self {
            Transport::Legacy { io, config } => inb(io + config + off),
            Transport::Modern(m) if u32::from(off) < m.device_len => {
                phys::mmio_read(m.device + u64::from(off)).unwrap_or(0xff)
            }
            Transport::Modern(_) => 0xff,
        }
    }

    fn cfg32(&self, off: u16) -> u32 {
        match self {
            Transport::Legacy { io, config } => inl(io + config + off),
            Transport::Modern(m) if u32::from(off) + 4 <= m.device_len => {
                phys::mmio_read(m.device + u64::from(off)).unwrap_or(u32::MAX)
            }
            Transport::Modern(_) => u32::MAX,
        }
    }

    /// A 64-bit config field read as two dwords; on the modern interface
    /// retried until config_generation is stable.
    fn cfg64(&self, off: u16) -> u64 {
        let read = || u64::from(self.cfg32(off + 4)) << 32 | u64::from(self.cfg32(off));
        match self {
            Transport::Legacy { .. } => read(),
            Transport::Modern(m) => {
                let mut value = 0;
                for _ in 0..16 {
                    let before = m.r8(COM_CONFIG_GENERATION);
                    value = read();
                    if m.r8(COM_CONFIG_GENERATION) == before {
                        break;
                    }
                }
                value
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Discovery.

#[derive(Clone, Copy)]
struct Device {
    bdf: Bdf,
    device_id: u16,
    kind: u16,
    bars: [Option<Bar>; 6],
    caps: ModernCaps,
    msix_enabled: bool,
}

impl Device {
    fn probe(f: &Function) -> Self {
        let cfg = &Cf8;
        let bdf = f.bdf;
        let device_id = f.device();
        let kind = if device_id >= FIRST_MODERN {
            device_id - FIRST_MODERN
        } else {
            // Transitional: the subsystem device ID is the virtio type
            // (as Linux's legacy driver reads it).
            (cfg.read32(bdf, 0x2c) >> 16) as u16
        };
        let mut caps = ModernCaps::default();
        let mut msix_enabled = false;
        for off in pci::capabilities(cfg, bdf) {
            let head = cfg.read32(bdf, off);
            match head as u8 {
                CAP_MSIX => msix_enabled = head & (1 << 31) != 0,
                CAP_VENDOR => {
                    let cfg_type = (head >> 24) as u8;
                    if !(CFG_COMMON..=CFG_PCI).contains(&cfg_type) {
                        continue;
                    }
                    caps.any = true;
                    let loc = CapLoc {
                        bar: cfg.read32(bdf, off + 4) as u8,
                        offset: cfg.read32(bdf, off + 8),
                        length: cfg.read32(bdf, off + 12),
                    };
                    // The first capability of each type is the one to use.
                    match cfg_type {
                        CFG_COMMON => caps.common = caps.common.or(Some(loc)),
                        CFG_NOTIFY if caps.notify.is_none() => {
                            caps.notify = Some((loc, cfg.read32(bdf, off + 16)))
                        }
                        CFG_DEVICE => caps.device = caps.device.or(Some(loc)),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        Self {
            bdf,
            device_id,
            kind,
            bars: pci::bars(cfg, f, false),
            caps,
            msix_enabled,
        }
    }

    /// BAR0 as a legacy I/O window, if it is one.
    fn io_bar0(&self) -> Option<Bar> {
        self.bars[0].filter(|b| b.kind == BarKind::Io)
    }

    fn legacy(&self) -> bool {
        self.io_bar0().is_some() && self.device_id < FIRST_MODERN
    }

    fn legacy_transport(&self) -> Result<Transport, Reason> {
        let bar = self.io_bar0().ok_or("no-io-bar")?;
        if bar.addr == 0 || bar.addr + LEG_MIN_IO > 0x1_0000 {
            return Err("io-bar-unassigned");
        }
        let config = if self.msix_enabled {
            LEG_CONFIG_MSIX
        } else {
            LEG_CONFIG
        };
        Ok(Transport::Legacy {
            io: bar.addr as u16,
            config,
        })
    }

    /// Address of a structure described by a capability, checked to lie
    /// in an assigned memory BAR inside the identity map.
    fn locate(&self, loc: CapLoc) -> Result<u64, Reason> {
        let bar = self
            .bars
            .get(usize::from(loc.bar))
            .copied()
            .flatten()
            .ok_or("cap-bar-missing")?;
        if bar.kind == BarKind::Io {
            return Err("cap-bar-io");
        }
        if bar.addr == 0 {
            return Err("bar-unassigned");
        }
        let addr = bar.addr + u64::from(loc.offset);
        if !phys::in_range(addr, u64::from(loc.length)) {
            return Err("bar-unmapped");
        }
        Ok(addr)
    }

    fn modern_transport(&self) -> Result<Transport, Reason> {
        let common = self.caps.common.ok_or("no-common-cap")?;
        let (notify, notify_mult) = self.caps.notify.ok_or("no-notify-cap")?;
        if common.length < COM_LEN {
            return Err("common-cap-short");
        }
        let device = self.caps.device;
        Ok(Transport::Modern(Modern {
            common: self.locate(common)?,
            notify: self.locate(notify)?,
            notify_len: notify.length,
            notify_mult,
            device: device.map(|d| self.locate(d)).transpose()?.unwrap_or(0),
            device_len: device.map_or(0, |d| d.length),
        }))
    }
}

/// Enables I/O and memory decoding and bus mastering.
fn enable(bdf: Bdf) {
    let cfg = &Cf8;
    let command = cfg.read32(bdf, pci::REG_COMMAND) & 0xffff;
    let wanted = command | pci::COMMAND_IO | pci::COMMAND_MEM | pci::COMMAND_BUS_MASTER;
    if wanted != command {
        cfg.write32(bdf, pci::REG_COMMAND, wanted);
    }
}

// ---------------------------------------------------------------------------
// Device drivers. Each prints its own line(s) and returns the path result.

/// virtio-blk request types and status values.
const BLK_T_IN: u32 = 0;
const BLK_T_OUT: u32 = 1;
const BLK_T_FLUSH: u32 = 4;
const BLK_T_GET_ID: u32 = 8;
const BLK_ID_BYTES: usize = 20;
const BLK_BLOCK: usize = 4096;

/// Layout of the data area for virtio-blk.
const BLK_HDR: usize = DATA;
const BLK_STATUS: usize = DATA + 16;
const BLK_ID: usize = DATA + 32;
const BLK_BUF: usize = DATA + 4096;

/// The documented test pattern: byte `i` of the 4096-byte block written at
/// `sector`.
pub fn blk_pattern(seed: u64, sector: u64, i: usize) -> u8 {
    (seed
        .wrapping_mul(31)
        .wrapping_add(sector.wrapping_mul(7))
        .wrapping_add(i as u64)) as u8
}

/// Outcome of one virtio-blk request.
enum BlkStatus {
    Ok,
    IoErr,
    Unsupp,
    Other(u8),
    NotOffered,
}

impl fmt::Display for BlkStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlkStatus::Ok => f.write_str("ok"),
            BlkStatus::IoErr => f.write_str("ioerr"),
            BlkStatus::Unsupp => f.write_str("unsupp"),
            BlkStatus::Other(s) => write!(f, "status-{}", s),
            BlkStatus::NotOffered => f.write_str("not-offered"),
        }
    }
}

impl BlkStatus {
    fn ok(&self) -> bool {
        matches!(self, BlkStatus::Ok)
    }
}

fn blk_request(
    q: &mut Queue,
    kind: u32,
    sector: u64,
    data: Option<Buf>,
    timeout: Reason,
) -> Result<BlkStatus, Reason> {
    dma_write(BLK_HDR, kind);
    dma_write(BLK_HDR + 4, 0u32);
    dma_write(BLK_HDR + 8, sector);
    dma_write(BLK_STATUS, 0xffu8);
    let hdr = Buf::out(BLK_HDR, 16);
    let status = Buf::into(BLK_STATUS, 1);
    match data {
        Some(d) => q.request(&[hdr, d, status], timeout)?,
        None => q.request(&[hdr, status], timeout)?,
    };
    Ok(match dma_read::<u8>(BLK_STATUS) {
        0 => BlkStatus::Ok,
        1 => BlkStatus::IoErr,
        2 => BlkStatus::Unsupp,
        s => BlkStatus::Other(s),
    })
}

fn run_blk(t: &Transport, bdf: Bdf, path: Path, seed: u64) -> Result<(), Reason> {
    let (offered, features) = t.negotiate(BLK_F_FLUSH)?;
    let mut q = t.setup_queue(0, 0)?;
    t.driver_ok();
    let capacity = t.cfg64(0);
    let sector: u64 = match path {
        Path::Legacy => 8,
        Path::Modern => 16,
    };
    if capacity < sector + (BLK_BLOCK / 512) as u64 {
        println!(
            "virtio-blk: {} path={} capacity={} result=error reason=disk-too-small",
            bdf, path, capacity
        );
        return Err("disk-too-small");
    }

    for i in 0..BLK_BLOCK {
        dma_write(BLK_BUF + i, blk_pattern(seed, sector, i));
    }
    let write = blk_request(
        &mut q,
        BLK_T_OUT,
        sector,
        Some(Buf::out(BLK_BUF, BLK_BLOCK)),
        "write-timeout",
    )?;

    dma_fill(BLK_BUF, BLK_BLOCK, 0);
    let read = blk_request(
        &mut q,
        BLK_T_IN,
        sector,
        Some(Buf::into(BLK_BUF, BLK_BLOCK)),
        "read-timeout",
    )?;
    let matches =
        (0..BLK_BLOCK).all(|i| dma_read::<u8>(BLK_BUF + i) == blk_pattern(seed, sector, i));

    let flush = if features & BLK_F_FLUSH != 0 {
        blk_request(&mut q, BLK_T_FLUSH, 0, None, "flush-timeout")?
    } else {
        BlkStatus::NotOffered
    };

    dma_fill(BLK_ID, BLK_ID_BYTES, 0);
    let get_id = blk_request(
        &mut q,
        BLK_T_GET_ID,
        0,
        Some(Buf::into(BLK_ID, BLK_ID_BYTES)),
        "get-id-timeout",
    )?;
    let mut id = [0u8; BLK_ID_BYTES];
    for (i, b) in id.iter_mut().enumerate() {
        *b = dma_read(BLK_ID + i);
    }
    let id_len = if get_id.ok() {
        id.iter().position(|&b| b == 0).unwrap_or(BLK_ID_BYTES)
    } else {
        0
    };

    println!(
        "virtio-blk: {} path={} capacity={} ro={} write={} read={} match={} flush={} get-id={} id={}",
        bdf,
        path,
        capacity,
        if offered & BLK_F_RO != 0 { "yes" } else { "no" },
        write,
        read,
        if matches { "yes" } else { "no" },
        flush,
        get_id,
        TokenBytes(&id[..id_len])
    );
    if !write.ok() {
        Err("write-failed")
    } else if !read.ok() {
        Err("read-failed")
    } else if !matches {
        Err("mismatch")
    } else if !(flush.ok() || matches!(flush, BlkStatus::NotOffered)) {
        Err("flush-failed")
    } else {
        Ok(())
    }
}

const RNG_BYTES: usize = 64;

fn run_rng(t: &Transport, bdf: Bdf, path: Path) -> Result<(), Reason> {
    t.negotiate(0)?;
    let mut q = t.setup_queue(0, 0)?;
    t.driver_ok();
    dma_fill(DATA, RNG_BYTES, 0);
    let mut got = 0;
    // The device may return fewer bytes than asked; ask again (boundedly).
    for _ in 0..RNG_BYTES {
        if got == RNG_BYTES {
            break;
        }
        let len = q.request(&[Buf::into(DATA + got, RNG_BYTES - got)], "timeout")?;
        got += (len as usize).min(RNG_BYTES - got);
    }
    let nonzero = (0..got).any(|i| dma_read::<u8>(DATA + i) != 0);
    println!(
        "virtio-rng: {} path={} bytes={} nonzero={}",
        bdf,
        path,
        got,
        if nonzero { "yes" } else { "no" }
    );
    if got == RNG_BYTES {
        Ok(())
    } else {
        Err("short-read")
    }
}

const NET_RX_BUFFERS: u16 = 4;
const NET_RX_STRIDE: usize = 2048;
/// Ethernet frame without FCS, as the device hands it over.
const NET_MAX_FRAME: usize = 1514;
const NET_TX: usize = DATA;
const NET_RX: usize = DATA + NET_RX_STRIDE;
const NET_ETHERTYPE: u16 = 0x88b5;
const NET_MIN_FRAME: usize = 60;
/// Source address used when the device offers no MAC.
const NET_DEFAULT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const NET_PAYLOAD_MAX: usize = 64;

fn run_net(t: &Transport, bdf: Bdf, path: Path, net_test: bool) -> Result<(), Reason> {
    let (_, features) = t.negotiate(NET_F_MAC)?;
    // virtio_net_hdr: 10 bytes, 12 (num_buffers) with VERSION_1.
    let hdr_len = if features & F_VERSION_1 != 0 { 12 } else { 10 };
    let mut rx = t.setup_queue(0, 0)?;
    let mut tx = t.setup_queue(1, 1)?;
    if net_test {
        dma_fill(NET_RX, NET_RX_STRIDE * usize::from(NET_RX_BUFFERS), 0);
        for k in 0..NET_RX_BUFFERS {
            let buf = NET_RX + usize::from(k) * NET_RX_STRIDE;
            let head = rx.chain(
                2 * k,
                &[
                    Buf::into(buf, hdr_len),
                    Buf::into(buf + hdr_len, NET_MAX_FRAME),
                ],
            )?;
            rx.publish(head);
        }
    }
    t.driver_ok();
    if net_test {
        rx.kick();
    }
    let mac = (features & NET_F_MAC != 0).then(|| {
        let mut mac = [0u8; 6];
        for (i, b) in mac.iter_mut().enumerate() {
            *b = t.cfg8(i as u16);
        }
        mac
    });
    match mac {
        Some(mac) => println!("virtio-net: {} path={} mac={}", bdf, path, Mac(mac)),
        None => println!("virtio-net: {} path={} mac=none", bdf, path),
    }
    if !net_test {
        return Ok(());
    }

    // Transmit: broadcast, ethertype 0x88b5, "machina-guest-ping-<path>".
    let frame_at = NET_TX + 16;
    dma_fill(NET_TX, 16 + NET_MIN_FRAME, 0);
    dma_copy_in(frame_at, &[0xff; 6]);
    dma_copy_in(frame_at + 6, &mac.unwrap_or(NET_DEFAULT_MAC));
    dma_copy_in(frame_at + 12, &NET_ETHERTYPE.to_be_bytes());
    let payload: &[u8] = match path {
        Path::Legacy => b"machina-guest-ping-legacy",
        Path::Modern => b"machina-guest-ping-modern",
    };
    dma_copy_in(frame_at + 14, payload);
    let tx_ok = tx
        .request(
            &[Buf::out(NET_TX, hdr_len), Buf::out(frame_at, NET_MIN_FRAME)],
            "tx-timeout",
        )
        .is_ok();

    // Receive: the first frame with our ethertype; others are recycled.
    let mut payload = [0u8; NET_PAYLOAD_MAX];
    let mut payload_len = None;
    let mut deadline = Deadline::after_ms(RX_TIMEOUT_MS);
    while payload_len.is_none() {
        let Some((id, len)) = rx.wait_used(&mut deadline) else {
            break;
        };
        let k = (id / 2) as u16;
        if id % 2 != 0 || k >= NET_RX_BUFFERS {
            return Err("rx-bad-id");
        }
        let frame = NET_RX + usize::from(k) * NET_RX_STRIDE + hdr_len;
        let frame_len = (len as usize).saturating_sub(hdr_len).min(NET_MAX_FRAME);
        let ethertype = u16::from_be_bytes([dma_read(frame + 12), dma_read(frame + 13)]);
        if frame_len >= 14 && ethertype == NET_ETHERTYPE {
            let n = (frame_len - 14).min(NET_PAYLOAD_MAX);
            for (i, b) in payload[..n].iter_mut().enumerate() {
                *b = dma_read(frame + 14 + i);
            }
            // Padding to the minimum frame size is not payload.
            payload_len = Some(
                payload[..n]
                    .iter()
                    .rposition(|&b| b != 0)
                    .map_or(0, |p| p + 1),
            );
        } else {
            rx.publish(id as u16);
            rx.kick();
        }
    }
    println!(
        "virtio-net: {} path={} tx={} rx={} rx-payload={}",
        bdf,
        path,
        if tx_ok { "ok" } else { "timeout" },
        if payload_len.is_some() {
            "ok"
        } else {
            "timeout"
        },
        TokenBytes(&payload[..payload_len.unwrap_or(0)])
    );
    if tx_ok {
        Ok(())
    } else {
        Err("tx-timeout")
    }
}

fn run_console(t: &Transport, bdf: Bdf, path: Path) -> Result<(), Reason> {
    let (_, features) = t.negotiate(CONSOLE_F_MULTIPORT)?;
    t.driver_ok();
    let multiport = features & CONSOLE_F_MULTIPORT != 0;
    // config: cols u16, rows u16, max_nr_ports u32 (valid with MULTIPORT).
    let ports = if multiport { t.cfg32(4) } else { 1 };
    println!(
        "virtio-serial: {} path={} multiport={} ports={}",
        bdf,
        path,
        if multiport { "yes" } else { "no" },
        ports
    );
    Ok(())
}

/// Options of the virtio test.
struct Options {
    blk_seed: u64,
    net_test: bool,
    /// Highest I/O port the legacy path may touch (see README: under PVM,
    /// CPL-3 port I/O at 0x8000 and above kills the guest).
    max_io_port: u64,
    /// `machina.virtio-io-base`: where to move an I/O BAR0 above
    /// `max_io_port` (bus 0 only), 0x100 apart per device.
    io_relocate: Option<u64>,
}

/// Runs the driver for `dev`'s type over `t`; `None` for types without one.
fn run_driver(
    dev: &Device,
    t: &Transport,
    path: Path,
    opts: &Options,
) -> Option<Result<(), Reason>> {
    let bdf = dev.bdf;
    let result = match dev.kind {
        TYPE_BLK => run_blk(t, bdf, path, opts.blk_seed),
        TYPE_RNG => run_rng(t, bdf, path),
        TYPE_NET => run_net(t, bdf, path, opts.net_test),
        TYPE_CONSOLE => run_console(t, bdf, path),
        _ => return None,
    };
    // Leave the device quiescent whatever happened.
    let reset = t.reset();
    Some(result.and(reset))
}

fn print_result(word: &str, bdf: Bdf, result: Result<Option<()>, Reason>) {
    match result {
        Ok(Some(())) => println!("{}: {} result=ok", word, bdf),
        Ok(None) => println!("{}: {} result=skipped", word, bdf),
        Err(reason) => println!("{}: {} result=error reason={}", word, bdf, reason),
    }
}

/// Moves BAR0 of `dev` (on bus 0) to `port` with I/O decoding off meanwhile.
fn relocate_io_bar0(dev: &mut Device, port: u64) {
    let cfg = &Cf8;
    let bdf = dev.bdf;
    let command = cfg.read32(bdf, pci::REG_COMMAND) & 0xffff;
    cfg.write32(bdf, pci::REG_COMMAND, command & !pci::COMMAND_IO);
    cfg.write32(bdf, pci::REG_BAR0, port as u32 | 1);
    cfg.write32(bdf, pci::REG_COMMAND, command);
    if let Some(bar) = dev.bars[0].as_mut() {
        bar.addr = u64::from(cfg.read32(bdf, pci::REG_BAR0) & !3);
    }
}

fn run_device(dev: &Device, opts: &Options, relocated: &mut u64) {
    let mut dev = *dev;
    let dev = &mut dev;
    let bdf = dev.bdf;
    println!(
        "virtio: {} type={} legacy={} modern={}",
        bdf,
        dev.kind,
        if dev.legacy() { "yes" } else { "no" },
        if dev.caps.any { "yes" } else { "no" }
    );
    enable(bdf);

    // Legacy (virtio 0.9) path.
    if dev.io_bar0().is_none() {
        println!("virtio-legacy: {} result=no-io-bar", bdf);
    } else if !dev.legacy() {
        println!("virtio-legacy: {} result=not-transitional", bdf);
    } else if let Some(bar) = dev
        .io_bar0()
        .filter(|b| b.addr + LEG_MIN_IO - 1 > opts.max_io_port)
        .filter(|_| !(opts.io_relocate.is_some() && bdf.bus == 0))
    {
        println!(
            "virtio-legacy: {} result=io-port-above-limit port=0x{:x}",
            bdf, bar.addr
        );
    } else {
        if let (Some(bar), Some(base)) = (dev.io_bar0(), opts.io_relocate) {
            if bar.addr + LEG_MIN_IO - 1 > opts.max_io_port {
                let to = base + 0x100 * *relocated;
                *relocated += 1;
                relocate_io_bar0(dev, to);
                println!(
                    "virtio-legacy: {} relocated from=0x{:x} to=0x{:x}",
                    bdf,
                    bar.addr,
                    dev.io_bar0().map_or(0, |b| b.addr)
                );
            }
        }
        let result = dev
            .legacy_transport()
            .and_then(|t| run_driver(dev, &t, Path::Legacy, opts).transpose());
        print_result("virtio-legacy", bdf, result);
    }

    // Modern (virtio 1.0) path.
    if !dev.caps.any {
        println!("virtio-modern: {} result=no-caps", bdf);
    } else {
        let result = dev
            .modern_transport()
            .and_then(|t| run_driver(dev, &t, Path::Modern, opts).transpose());
        print_result("virtio-modern", bdf, result);
    }
}

/// The `virtio` test.
pub fn run(cmdline: &Cmdline<'_>) {
    let opts = Options {
        blk_seed: cmdline.get_u64(b"machina.blk-seed", 1),
        net_test: cmdline.get(b"machina.net-test") == Some(b"1"),
        max_io_port: cmdline.get_u64(b"machina.max-io-port", DEFAULT_MAX_IO_PORT),
        io_relocate: cmdline
            .get(b"machina.virtio-io-base")
            .map(|_| cmdline.get_u64(b"machina.virtio-io-base", 0) & 0xff00),
    };
    let mut found = [None::<Device>; MAX_DEVICES];
    let mut count = 0;
    pci::walk(&Cf8, |f| {
        let is_virtio =
            f.vendor() == VENDOR_VIRTIO && (FIRST_TRANSITIONAL..=LAST_MODERN).contains(&f.device());
        if is_virtio && count < MAX_DEVICES {
            found[count] = Some(Device::probe(f));
            count += 1;
        }
    });
    let mut relocated = 0;
    for dev in found.iter().flatten() {
        run_device(dev, &opts, &mut relocated);
    }
    println!("virtio: done devices={}", count);
}
