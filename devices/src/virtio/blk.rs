//! virtio-blk (type 2) over a raw image file, following QEMU's hw/block/virtio-blk.c:
//! features SEG_MAX, GEOMETRY, BLK_SIZE, TOPOLOGY, FLUSH (write-back cache), CONFIG_WCE,
//! DISCARD, WRITE_ZEROES, RO; requests IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES.
//!
//! Data moves with preadv/pwritev straight between the image and guest memory: the
//! request's data descriptors become iovecs over guest RAM, each bounds-checked against the
//! guest's memory regions (the guest is untrusted). With O_DIRECT, buffers that are not
//! block-aligned go through an aligned bounce buffer instead.

use super::device::{read_config_bytes, DeviceError, QueueContext, VirtioDevice};
use super::iov::{data_ranges, guest_iovecs};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use virtio_queue::DescriptorChain;

/// virtio_blk_outhdr: type, ioprio, sector.
const REQ_HDR_LEN: usize = 16;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap};

pub const DEVICE_TYPE: u16 = 2;

const F_SEG_MAX: u64 = 1 << 2;
const F_GEOMETRY: u64 = 1 << 4;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_TOPOLOGY: u64 = 1 << 10;
const F_CONFIG_WCE: u64 = 1 << 11;
const F_MQ: u64 = 1 << 12;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;
/// Legacy barrier flag, ignored like QEMU does.
const T_BARRIER: u32 = 0x8000_0000;

const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

const SECTOR: u64 = 512;
/// VIRTIO_BLK_ID_BYTES.
const ID_BYTES: usize = 20;
/// BDRV_REQUEST_MAX_SECTORS, QEMU's default discard / write-zeroes limit.
const MAX_SECTORS: u32 = 0x3f_ffff;
const WRITE_ZEROES_UNMAP: u32 = 1;
/// Bounce-buffer chunk for data transfers that cannot go straight to guest memory.
const CHUNK: usize = 1 << 20;
/// O_DIRECT wants block-aligned user buffers.
const ALIGN: usize = 4096;

/// Config-space offsets (struct virtio_blk_config).
mod cfg {
    pub const CAPACITY: usize = 0x00;
    pub const SEG_MAX: usize = 0x0c;
    pub const CYLINDERS: usize = 0x10;
    pub const HEADS: usize = 0x12;
    pub const SECTORS: usize = 0x13;
    pub const BLK_SIZE: usize = 0x14;
    pub const WCE: usize = 0x20;
    pub const NUM_QUEUES: usize = 0x22;
    pub const MAX_DISCARD_SECTORS: usize = 0x24;
    pub const MAX_DISCARD_SEG: usize = 0x28;
    pub const DISCARD_ALIGN: usize = 0x2c;
    pub const MAX_WZ_SECTORS: usize = 0x30;
    pub const MAX_WZ_SEG: usize = 0x34;
    pub const WZ_MAY_UNMAP: usize = 0x38;
    /// Size with WRITE_ZEROES, with DISCARD only, and the minimum (endof topology/wce/mq).
    pub const LEN_WZ: usize = 0x3c;
    pub const LEN_DISCARD: usize = 0x30;
    pub const LEN_MIN: usize = 0x24;
}

/// Per-drive request counters (QMP's `query-blockstats`), shared with the VMM and kept
/// across device resets. Updated after each request completes.
#[derive(Debug, Default)]
pub struct BlockStats {
    pub rd_bytes: AtomicU64,
    pub wr_bytes: AtomicU64,
    pub rd_operations: AtomicU64,
    pub wr_operations: AtomicU64,
    pub flush_operations: AtomicU64,
    pub unmap_operations: AtomicU64,
    pub failed_rd_operations: AtomicU64,
    pub failed_wr_operations: AtomicU64,
    pub failed_flush_operations: AtomicU64,
    pub failed_unmap_operations: AtomicU64,
    /// Requests refused before any I/O (out of range, unaligned, read-only).
    pub invalid_rd_operations: AtomicU64,
    pub invalid_wr_operations: AtomicU64,
    /// One past the highest byte written.
    pub wr_highest_offset: AtomicU64,
    /// Time spent in completed requests, in nanoseconds.
    pub rd_total_time_ns: AtomicU64,
    pub wr_total_time_ns: AtomicU64,
    pub flush_total_time_ns: AtomicU64,
}

impl BlockStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Count a read that moved `moved` bytes (or failed) and return its virtio status.
    fn read_done(&self, ok: bool, moved: usize, elapsed_ns: u64) -> u8 {
        if ok {
            Self::add(&self.rd_operations, 1);
            Self::add(&self.rd_bytes, moved as u64);
            Self::add(&self.rd_total_time_ns, elapsed_ns);
            S_OK
        } else {
            Self::add(&self.failed_rd_operations, 1);
            S_IOERR
        }
    }

    /// Count a write of `len` bytes at byte `offset` (or its failure) and return its status.
    fn write_done(&self, ok: bool, offset: u64, len: usize, elapsed_ns: u64) -> u8 {
        if ok {
            Self::add(&self.wr_operations, 1);
            Self::add(&self.wr_bytes, len as u64);
            Self::add(&self.wr_total_time_ns, elapsed_ns);
            self.wr_highest_offset
                .fetch_max(offset + len as u64, Ordering::Relaxed);
            S_OK
        } else {
            Self::add(&self.failed_wr_operations, 1);
            S_IOERR
        }
    }
}

/// The disk size the guest sees, in sectors, shared with the monitor: `block_resize`
/// changes it and raises the device's configuration interrupt (virtio_notify_config).
/// One per drive, so it outlives the device rebuilt by a reset.
#[derive(Default)]
pub struct DiskSize {
    sectors: AtomicU64,
    /// The interrupt of the device using the drive now (none before the build or after an
    /// unplug).
    irq: std::sync::Mutex<std::sync::Weak<super::interrupt::VirtioInterrupt>>,
}

impl DiskSize {
    pub fn sectors(&self) -> u64 {
        self.sectors.load(Ordering::Acquire)
    }

    /// The device using the drive signals its config changes on `irq`.
    pub fn attach(&self, irq: &Arc<super::interrupt::VirtioInterrupt>) {
        *self.irq.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(irq);
    }

    /// The image now holds `bytes`: the capacity follows (whole sectors) and the device,
    /// if any, raises a config-change interrupt.
    pub fn resize(&self, bytes: u64) {
        self.sectors.store(bytes / SECTOR, Ordering::Release);
        let irq = self.irq.lock().unwrap_or_else(|e| e.into_inner()).upgrade();
        if let Some(irq) = irq {
            irq.signal_config();
        }
    }
}

/// What the VMM hands the device: the open image and the `-drive` options that matter.
pub struct BlockBackend {
    /// Opened read-only or read-write (with O_DIRECT when `direct`).
    pub file: File,
    pub read_only: bool,
    /// cache.direct=on: transfers go through block-aligned bounce buffers.
    pub direct: bool,
    /// cache.writeback (QEMU's default): the guest sees a volatile cache and FLUSH.
    pub writeback: bool,
    /// Where this drive's requests are counted.
    pub stats: Arc<BlockStats>,
    /// The disk size when the file has none of its own (a null drive served by /dev/zero).
    pub size: Option<u64>,
    /// Where the capacity lives (block_resize changes it).
    pub disk_size: Arc<DiskSize>,
}

/// Device options from the plan's properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockOptions {
    /// `serial=`, at most 20 bytes reach the guest.
    pub serial: String,
    pub num_queues: u16,
    pub queue_size: u16,
    pub discard: bool,
    pub write_zeroes: bool,
    pub config_wce: bool,
}

impl Default for BlockOptions {
    fn default() -> Self {
        Self {
            serial: String::new(),
            num_queues: 1,
            queue_size: 256,
            discard: true,
            write_zeroes: true,
            config_wce: true,
        }
    }
}

pub struct Block {
    /// How log lines name the device (`logging::pci_name`).
    name: String,
    backend: BlockBackend,
    opts: BlockOptions,
    /// Write cache enabled (the guest may toggle it through CONFIG_WCE).
    wce: bool,
    features: u64,
    config: Vec<u8>,
}

/// A buffer aligned for O_DIRECT.
struct Bounce {
    raw: Vec<u8>,
    start: usize,
}

impl Bounce {
    fn new(len: usize) -> Self {
        let raw = vec![0u8; len + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN).min(ALIGN);
        Self { raw, start }
    }
    fn buf(&mut self, len: usize) -> &mut [u8] {
        &mut self.raw[self.start..self.start + len]
    }
}

/// Move `len` bytes between the image at byte `offset` and the guest in CHUNK-sized pieces
/// through one bounce buffer; `step` moves one piece at its image offset. Stops at the first
/// piece that fails; returns the bytes moved and the failure, if any.
fn transfer(
    len: usize,
    mut offset: u64,
    mut step: impl FnMut(&mut [u8], u64) -> std::io::Result<()>,
) -> (usize, std::io::Result<()>) {
    let mut bounce = Bounce::new(len.min(CHUNK));
    let mut moved = 0;
    while moved < len {
        let n = (len - moved).min(CHUNK);
        if let Err(e) = step(bounce.buf(n), offset) {
            return (moved, Err(e));
        }
        offset += n as u64;
        moved += n;
    }
    (moved, Ok(()))
}

/// Whether every buffer suits O_DIRECT (block-aligned address and length).
fn direct_aligned(iovs: &[libc::iovec]) -> bool {
    iovs.iter()
        .all(|v| (v.iov_base as usize).is_multiple_of(ALIGN) && v.iov_len.is_multiple_of(ALIGN))
}

/// preadv/pwritev the whole of `iovs` at `offset`, continuing after short transfers;
/// returns the bytes moved and the failure, if any.
fn vectored(
    fd: libc::c_int,
    write: bool,
    iovs: &mut [libc::iovec],
    mut offset: u64,
) -> (usize, std::io::Result<()>) {
    let total: usize = iovs.iter().map(|v| v.iov_len).sum();
    let mut moved = 0;
    let mut first = 0;
    while moved < total {
        // Skip the buffers already done.
        while first < iovs.len() && iovs[first].iov_len == 0 {
            first += 1;
        }
        let batch = &iovs[first..];
        let count = batch.len().min(1024) as libc::c_int;
        let Ok(off) = libc::off_t::try_from(offset) else {
            return (moved, Err(std::io::Error::from_raw_os_error(libc::EINVAL)));
        };
        // SAFETY: every iovec points into guest RAM, bounds-checked against its memory
        // regions by guest_iovecs, and the GuestMemoryMmap that maps it is borrowed for the
        // whole request; the kernel only reads (pwritev) or writes (preadv) those bytes.
        // One buffer (the common 4 KiB page): pread/pwrite, which skip importing an iovec.
        let n = unsafe {
            match (write, batch) {
                (true, [one]) => libc::pwrite(fd, one.iov_base, one.iov_len, off),
                (false, [one]) => libc::pread(fd, one.iov_base, one.iov_len, off),
                (true, _) => libc::pwritev(fd, batch.as_ptr(), count, off),
                (false, _) => libc::preadv(fd, batch.as_ptr(), count, off),
            }
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return (moved, Err(e));
        }
        if n == 0 {
            return (moved, Err(std::io::ErrorKind::UnexpectedEof.into()));
        }
        let mut n = n as usize;
        moved += n;
        offset += n as u64;
        // Advance past what was transferred.
        for v in iovs[first..].iter_mut() {
            if n == 0 {
                break;
            }
            let k = n.min(v.iov_len);
            // SAFETY: k <= iov_len, so the new base stays inside the same buffer (or one
            // past its end when it is used up, with length 0).
            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(k) }.cast();
            v.iov_len -= k;
            n -= k;
        }
    }
    (moved, Ok(()))
}

impl Block {
    pub fn new(backend: BlockBackend, opts: BlockOptions) -> std::io::Result<Self> {
        // Seeking to the end sizes regular files and block devices alike (a block device's
        // inode length is 0); I/O is positional, so the file offset does not matter.
        let len = match backend.size {
            Some(size) => size,
            None => std::io::Seek::seek(&mut &backend.file, std::io::SeekFrom::End(0))?,
        };
        backend
            .disk_size
            .sectors
            .store(len / SECTOR, Ordering::Release);
        let mut features = F_SEG_MAX | F_GEOMETRY | F_BLK_SIZE | F_TOPOLOGY;
        if backend.writeback {
            features |= F_FLUSH;
        }
        if opts.config_wce {
            features |= F_CONFIG_WCE;
        }
        if backend.read_only {
            features |= F_RO;
        }
        if opts.num_queues > 1 {
            features |= F_MQ;
        }
        if opts.discard {
            features |= F_DISCARD;
        }
        if opts.write_zeroes {
            features |= F_WRITE_ZEROES;
        }
        let wce = backend.writeback;
        let mut dev = Self {
            // Log lines name the function; the transport sets it (set_name).
            name: String::new(),
            backend,
            opts,
            wce,
            features,
            config: Vec::new(),
        };
        dev.build_config();
        Ok(dev)
    }

    /// A backend failure: an error naming the device (the guest gets S_IOERR).
    fn failed(&self, what: &str, sector: u64, len: usize, e: &std::io::Error) {
        log::error!(
            "{}: {what} of {len} bytes at sector {sector} failed: {e}",
            self.name
        );
    }

    /// A request the guest should not have made (it gets S_IOERR or S_UNSUPP).
    fn refused(&self, why: std::fmt::Arguments) {
        crate::guest_error!("{}: {why}", self.name);
    }

    fn config_len_for(features: u64) -> usize {
        if features & F_WRITE_ZEROES != 0 {
            cfg::LEN_WZ
        } else if features & F_DISCARD != 0 {
            cfg::LEN_DISCARD
        } else {
            cfg::LEN_MIN
        }
    }

    /// virtio_blk_update_config.
    fn build_config(&mut self) {
        let mut c = vec![0u8; cfg::LEN_WZ];
        let put = |c: &mut [u8], at: usize, v: &[u8]| c[at..at + v.len()].copy_from_slice(v);
        put(&mut c, cfg::CAPACITY, &self.capacity().to_le_bytes());
        // seg-max-adjust: queue size minus the header and status descriptors.
        let seg_max = u32::from(self.opts.queue_size.saturating_sub(2));
        put(&mut c, cfg::SEG_MAX, &seg_max.to_le_bytes());
        // hd_geometry_guess for an unpartitioned image: 16 heads, 63 sectors.
        let cyls = (self.capacity() / (16 * 63)).clamp(2, 16383) as u16;
        put(&mut c, cfg::CYLINDERS, &cyls.to_le_bytes());
        c[cfg::HEADS] = 16;
        c[cfg::SECTORS] = 63;
        put(&mut c, cfg::BLK_SIZE, &(SECTOR as u32).to_le_bytes());
        c[cfg::WCE] = u8::from(self.wce);
        put(&mut c, cfg::NUM_QUEUES, &self.opts.num_queues.to_le_bytes());
        put(&mut c, cfg::MAX_DISCARD_SECTORS, &MAX_SECTORS.to_le_bytes());
        put(&mut c, cfg::MAX_DISCARD_SEG, &1u32.to_le_bytes());
        put(&mut c, cfg::DISCARD_ALIGN, &1u32.to_le_bytes());
        put(&mut c, cfg::MAX_WZ_SECTORS, &MAX_SECTORS.to_le_bytes());
        put(&mut c, cfg::MAX_WZ_SEG, &1u32.to_le_bytes());
        c[cfg::WZ_MAY_UNMAP] = 1;
        c.truncate(Self::config_len_for(self.features));
        self.config = c;
    }

    /// A read or write the disk cannot serve: past its end, not whole sectors, or a write to
    /// a read-only drive.
    fn out_of_range(&self, what: &str, sector: u64, len: usize) {
        if what != "read" && self.backend.read_only {
            self.refused(format_args!(
                "{what} on a read-only drive (sector {sector})"
            ));
        } else {
            self.refused(format_args!(
                "{what} of {len} bytes at sector {sector} is past the end of the disk \
                 ({} sectors) or not whole sectors",
                self.capacity()
            ));
        }
    }

    fn sector_range_ok(&self, sector: u64, bytes: u64) -> bool {
        bytes.is_multiple_of(SECTOR)
            && sector
                .checked_mul(SECTOR)
                .and_then(|o| o.checked_add(bytes))
                .is_some_and(|end| end <= self.capacity().saturating_mul(SECTOR))
    }

    /// The disk size in sectors now (block_resize may change it at any time).
    fn capacity(&self) -> u64 {
        self.backend.disk_size.sectors()
    }

    fn fd(&self) -> libc::c_int {
        self.backend.file.as_raw_fd()
    }

    /// The iovecs of a request's data in guest memory, or None where it must go through a
    /// bounce buffer: O_DIRECT with unaligned buffers, or data not all in guest RAM (the
    /// bounce path then fails the request with S_IOERR).
    fn zero_copy(
        &self,
        mem: &GuestMemoryMmap,
        chain: &DescriptorChain<&GuestMemoryMmap>,
        writable: bool,
        skip: usize,
        len: usize,
    ) -> Option<Vec<libc::iovec>> {
        let iovs = guest_iovecs(mem, &data_ranges(chain, writable, skip, len))?;
        if iovs.iter().map(|v| v.iov_len).sum::<usize>() != len {
            return None;
        }
        if self.backend.direct && !direct_aligned(&iovs) {
            return None;
        }
        Some(iovs)
    }

    fn sync(&self) -> std::io::Result<()> {
        // SAFETY: fdatasync on a file descriptor we own; no memory is passed.
        match unsafe { libc::fdatasync(self.backend.file.as_raw_fd()) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    }

    /// What a write needs after its data went out: fdatasync without a write cache.
    fn settle(&self, done: std::io::Result<()>) -> std::io::Result<()> {
        done.and_then(|()| if self.wce { Ok(()) } else { self.sync() })
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> std::io::Result<()> {
        let (Ok(o), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: fallocate on a file descriptor we own with plain integer arguments.
        let r = unsafe { libc::fallocate(self.backend.file.as_raw_fd(), mode, o, l) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    fn write_zeroes_slow(&self, mut offset: u64, mut len: u64) -> std::io::Result<()> {
        let mut bounce = Bounce::new(CHUNK);
        while len > 0 {
            let n = len.min(CHUNK as u64) as usize;
            self.backend.file.write_all_at(bounce.buf(n), offset)?;
            offset += n as u64;
            len -= n as u64;
        }
        Ok(())
    }

    /// DISCARD and WRITE_ZEROES with their single 16-byte segment.
    fn discard_write_zeroes(
        &self,
        write_zeroes: bool,
        reader: &mut virtio_queue::Reader<'_, ()>,
    ) -> u8 {
        let avail = reader.available_bytes();
        if avail != 16 {
            // max_discard_seg / max_write_zeroes_seg is 1.
            self.refused(format_args!(
                "discard/write-zeroes with {avail} bytes of segments (one 16-byte segment)"
            ));
            return S_UNSUPP;
        }
        let mut seg = [0u8; 16];
        if reader.read_exact(&mut seg).is_err() {
            return S_IOERR;
        }
        let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
        let num = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
        let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
        let allowed = if write_zeroes { WRITE_ZEROES_UNMAP } else { 0 };
        if flags & !allowed != 0 {
            self.refused(format_args!(
                "discard/write-zeroes with unknown flags {flags:#x}"
            ));
            return S_UNSUPP;
        }
        let bytes = u64::from(num) * SECTOR;
        if num > MAX_SECTORS || !self.sector_range_ok(sector, bytes) || self.backend.read_only {
            let what = if write_zeroes {
                "write-zeroes"
            } else {
                "discard"
            };
            self.out_of_range(what, sector, bytes as usize);
            return S_IOERR;
        }
        let offset = sector * SECTOR;
        if !write_zeroes {
            // Discard is a hint; a filesystem without hole punching just keeps the data.
            let _ = self.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                bytes,
            );
            return S_OK;
        }
        let mode = if flags & WRITE_ZEROES_UNMAP != 0 {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        let done = self
            .fallocate(mode, offset, bytes)
            .or_else(|_| self.write_zeroes_slow(offset, bytes));
        match self.settle(done) {
            Ok(()) => S_OK,
            Err(e) => {
                self.failed("write-zeroes", sector, bytes as usize, &e);
                S_IOERR
            }
        }
    }

    /// The common requests without building a Reader and a Writer: a read whose chain is a
    /// 16-byte header, data buffers and the status byte, or a write whose chain is the
    /// header (and data) then the status byte. One pass over the descriptors, one lookup
    /// per buffer. None for anything else (other types, unusual framing, a buffer outside
    /// guest RAM, O_DIRECT with unaligned buffers): `execute` then handles it, errors
    /// included.
    fn execute_fast(
        &self,
        mem: &GuestMemoryMmap,
        chain: &DescriptorChain<&GuestMemoryMmap>,
    ) -> Option<u32> {
        let mut header: Option<(vm_memory::GuestAddress, usize)> = None;
        let (mut readable, mut writable) = (0usize, 0usize);
        let mut last_writable = None;
        for d in chain.clone() {
            let len = d.len() as usize;
            if d.is_write_only() {
                writable += len;
                if len > 0 {
                    last_writable = Some((d.addr(), len));
                }
            } else {
                header.get_or_insert((d.addr(), len));
                readable += len;
            }
        }
        let (haddr, hlen) = header?;
        if hlen < REQ_HDR_LEN || writable < 1 {
            return None;
        }
        let mut hdr = [0u8; REQ_HDR_LEN];
        vm_memory::Bytes::read_slice(mem, &mut hdr, haddr).ok()?;
        let ty = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) & !T_BARRIER;
        let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or_default());
        let (saddr, slen) = last_writable?;
        let status_at = saddr.checked_add(slen as u64 - 1)?;
        mem.get_slice(status_at, 1).ok()?;
        let started = std::time::Instant::now();
        let elapsed = || u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let (status, used) = match ty {
            // The whole writable size, as QEMU pushes for reads.
            T_IN if readable == REQ_HDR_LEN => {
                let len = writable - 1;
                (
                    self.read_request(mem, chain, sector, len, None, elapsed)?.0,
                    writable,
                )
            }
            T_OUT if writable == 1 => {
                let len = readable - REQ_HDR_LEN;
                (
                    self.write_request(mem, chain, sector, len, None, elapsed)?,
                    1,
                )
            }
            _ => return None,
        };
        vm_memory::Bytes::write_obj(mem, status, status_at).ok()?;
        crate::trace_event!(
            virtio_blk_req_complete,
            "vdev {} status {status}",
            self.name
        );
        Some(used as u32)
    }

    /// A read (T_IN) of `len` bytes at `sector` into the chain's writable buffers, straight
    /// from the file into guest RAM or, where that cannot be, through `writer`: its status and
    /// the bytes moved. None (nothing done) when it cannot go straight and there is no
    /// `writer` (the fast path then leaves the request to `execute`).
    fn read_request(
        &self,
        mem: &GuestMemoryMmap,
        chain: &DescriptorChain<&GuestMemoryMmap>,
        sector: u64,
        len: usize,
        writer: Option<&mut virtio_queue::Writer<'_, ()>>,
        elapsed: impl Fn() -> u64,
    ) -> Option<(u8, usize)> {
        let stats = &self.backend.stats;
        if !self.sector_range_ok(sector, len as u64) {
            self.out_of_range("read", sector, len);
            BlockStats::add(&stats.invalid_rd_operations, 1);
            return Some((S_IOERR, 0));
        }
        let direct = self.zero_copy(mem, chain, true, 0, len);
        if direct.is_none() && writer.is_none() {
            return None;
        }
        crate::trace_event!(
            virtio_blk_handle_read,
            "vdev {} sector {sector} nsectors {}",
            self.name,
            len as u64 / SECTOR
        );
        let (moved, res) = match direct {
            Some(mut iovs) => vectored(self.fd(), false, &mut iovs, sector * SECTOR),
            None => {
                let writer = writer?;
                transfer(len, sector * SECTOR, |buf, offset| {
                    self.backend.file.read_exact_at(buf, offset)?;
                    writer.write_all(buf)
                })
            }
        };
        if let Err(e) = &res {
            self.failed("read", sector, len, e);
        }
        Some((stats.read_done(res.is_ok(), moved, elapsed()), moved))
    }

    /// A write (T_OUT) of the `len` bytes after the request header to `sector`, straight
    /// from guest RAM or through `reader`; None as for [`read_request`](Self::read_request).
    fn write_request(
        &self,
        mem: &GuestMemoryMmap,
        chain: &DescriptorChain<&GuestMemoryMmap>,
        sector: u64,
        len: usize,
        reader: Option<&mut virtio_queue::Reader<'_, ()>>,
        elapsed: impl Fn() -> u64,
    ) -> Option<u8> {
        let stats = &self.backend.stats;
        if self.backend.read_only || !self.sector_range_ok(sector, len as u64) {
            self.out_of_range("write", sector, len);
            BlockStats::add(&stats.invalid_wr_operations, 1);
            return Some(S_IOERR);
        }
        let direct = self.zero_copy(mem, chain, false, REQ_HDR_LEN, len);
        if direct.is_none() && reader.is_none() {
            return None;
        }
        crate::trace_event!(
            virtio_blk_handle_write,
            "vdev {} sector {sector} nsectors {}",
            self.name,
            len as u64 / SECTOR
        );
        let (_, res) = match direct {
            Some(mut iovs) => vectored(self.fd(), true, &mut iovs, sector * SECTOR),
            None => {
                let reader = reader?;
                transfer(len, sector * SECTOR, |buf, offset| {
                    reader.read_exact(buf)?;
                    self.backend.file.write_all_at(buf, offset)
                })
            }
        };
        let res = self.settle(res);
        if let Err(e) = &res {
            self.failed("write", sector, len, e);
        }
        Some(stats.write_done(res.is_ok(), sector * SECTOR, len, elapsed()))
    }

    fn flush_request(&self, sector: u64, elapsed: impl Fn() -> u64) -> u8 {
        let stats = &self.backend.stats;
        match self.sync() {
            Ok(()) => {
                BlockStats::add(&stats.flush_operations, 1);
                BlockStats::add(&stats.flush_total_time_ns, elapsed());
                S_OK
            }
            Err(e) => {
                self.failed("flush", sector, 0, &e);
                BlockStats::add(&stats.failed_flush_operations, 1);
                S_IOERR
            }
        }
    }

    /// T_GET_ID: the serial, cut to the ID size and to the buffer; its status and length.
    fn get_id(&self, writer: &mut virtio_queue::Writer<'_, ()>) -> (u8, usize) {
        let mut id = [0u8; ID_BYTES];
        let s = self.opts.serial.as_bytes();
        let n = s.len().min(ID_BYTES);
        id[..n].copy_from_slice(&s[..n]);
        let n = writer.available_bytes().min(ID_BYTES);
        match writer.write_all(&id[..n]) {
            Ok(()) => (S_OK, n),
            Err(_) => (S_IOERR, 0),
        }
    }

    /// A discard or write-zeroes request, counted as QEMU counts it (unmap operations, or
    /// writes for write-zeroes).
    fn counted_discard_write_zeroes(
        &self,
        write_zeroes: bool,
        reader: &mut virtio_queue::Reader<'_, ()>,
    ) -> u8 {
        let stats = &self.backend.stats;
        let status = self.discard_write_zeroes(write_zeroes, reader);
        let counter = match (write_zeroes, status == S_OK) {
            (false, true) => &stats.unmap_operations,
            (false, false) => &stats.failed_unmap_operations,
            (true, true) => &stats.wr_operations,
            (true, false) => &stats.failed_wr_operations,
        };
        BlockStats::add(counter, 1);
        status
    }

    /// Run one request and write its status byte; returns the used length to report, or
    /// why the chain is malformed (a device error, as in QEMU).
    fn execute(
        &self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<u32, String> {
        let mut reader = chain
            .clone()
            .reader(mem)
            .map_err(|e| format!("readable buffers: {e}"))?;
        let mut writer = chain
            .clone()
            .writer(mem)
            .map_err(|e| format!("writable buffers: {e}"))?;
        let mut hdr = [0u8; REQ_HDR_LEN];
        reader
            .read_exact(&mut hdr)
            .map_err(|_| "request outhdr too short".to_string())?;
        let in_len = writer.available_bytes();
        if in_len < 1 {
            return Err("request inhdr too short".into());
        }
        let mut status_w = writer
            .split_at(in_len - 1)
            .map_err(|e| format!("status byte: {e}"))?;
        let ty = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) & !T_BARRIER;
        let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or_default());
        let mut data_len = 0usize;
        let started = std::time::Instant::now();
        let elapsed = || u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let status = match ty {
            T_IN => {
                let len = writer.available_bytes();
                let (status, moved) = self
                    .read_request(mem, &chain, sector, len, Some(&mut writer), elapsed)
                    .unwrap_or((S_IOERR, 0));
                data_len = moved;
                status
            }
            T_OUT => {
                let len = reader.available_bytes();
                self.write_request(mem, &chain, sector, len, Some(&mut reader), elapsed)
                    .unwrap_or(S_IOERR)
            }
            T_FLUSH if self.features & F_FLUSH != 0 => self.flush_request(sector, elapsed),
            T_GET_ID => {
                let (status, n) = self.get_id(&mut writer);
                data_len = n;
                status
            }
            T_DISCARD if self.features & F_DISCARD != 0 => {
                self.counted_discard_write_zeroes(false, &mut reader)
            }
            T_WRITE_ZEROES if self.features & F_WRITE_ZEROES != 0 => {
                self.counted_discard_write_zeroes(true, &mut reader)
            }
            _ => {
                self.refused(format_args!("request type {ty:#x} not supported"));
                S_UNSUPP
            }
        };
        status_w
            .write_all(&[status])
            .map_err(|e| format!("status byte: {e}"))?;
        crate::trace_event!(
            virtio_blk_req_complete,
            "vdev {} status {status}",
            self.name
        );
        // QEMU pushes the whole writable size for reads, data plus status otherwise.
        let used = if ty == T_IN { in_len } else { data_len + 1 };
        Ok(used as u32)
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![self.opts.queue_size; usize::from(self.opts.num_queues.max(1))]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn config_len(&self) -> usize {
        self.config.len()
    }

    fn read_config(&self, offset: usize, data: &mut [u8]) {
        // The capacity as it is now: block_resize changes it behind the built config.
        let mut config = self.config.clone();
        if let Some(c) = config.get_mut(cfg::CAPACITY..cfg::CAPACITY + 8) {
            c.copy_from_slice(&self.capacity().to_le_bytes());
        }
        read_config_bytes(&config, offset, data);
    }

    fn set_name(&mut self, name: &str) {
        self.name = name.to_string();
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        // Only the writeback byte is writable, and only with CONFIG_WCE.
        if self.features & F_CONFIG_WCE != 0 && offset <= cfg::WCE && cfg::WCE < offset + data.len()
        {
            self.wce = data[cfg::WCE - offset] != 0;
            if let Some(b) = self.config.get_mut(cfg::WCE) {
                *b = u8::from(self.wce);
            }
        }
    }

    fn activate(&mut self, features: u64) {
        // virtio_blk_set_status: a driver without CONFIG_WCE gets a write cache only if it
        // negotiated FLUSH; one that cannot flush gets writethrough (every write synced).
        if features & F_CONFIG_WCE == 0 {
            self.wce = self.backend.writeback && features & F_FLUSH != 0;
            if let Some(b) = self.config.get_mut(cfg::WCE) {
                *b = u8::from(self.wce);
            }
        }
    }

    fn reset(&mut self) {
        self.wce = self.backend.writeback;
        self.build_config();
    }

    fn process_queue(&mut self, idx: usize, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        let bad = |reason: String| DeviceError::BadChain { queue: idx, reason };
        let used = ctx.drain_queue(idx, |mem, chain| match self.execute_fast(mem, &chain) {
            Some(used) => Ok(used),
            None => self.execute(mem, chain).map_err(bad),
        })?;
        if used == Some(true) {
            ctx.notify(idx);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress};

    /// A write the image refuses (opened read-only behind a writable drive) is an error
    /// naming the device, and the guest gets S_IOERR.
    #[test]
    fn a_backend_failure_is_an_error_naming_the_device() {
        let log = crate::logging::captured();
        let dir = machina_tests::TempDir::new("blk-fail");
        let path = dir.join("disk.img");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let backend = BlockBackend {
            file: File::open(&path).unwrap(),
            read_only: false,
            direct: false,
            writeback: true,
            stats: Arc::default(),
            size: None,
            disk_size: Arc::default(),
        };
        let mut dev = Block::new(backend, BlockOptions::default()).unwrap();
        let name = "virtio-blk-pci id=failing (pcie.0:04.0)";
        dev.set_name(name);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let (desc, avail, used) = (0x1000u64, 0x2000u64, 0x3000u64);
        let mut q = Queue::new(16).unwrap();
        q.set_desc_table_address(Some(desc as u32), Some(0));
        q.set_avail_ring_address(Some(avail as u32), Some(0));
        q.set_used_ring_address(Some(used as u32), Some(0));
        q.set_ready(true);
        // OUT request for sector 0: header, 512 bytes of data, the status byte.
        mem.write_obj(T_OUT, GuestAddress(0x8000)).unwrap();
        mem.write_obj(0u64, GuestAddress(0x8008)).unwrap();
        let descs = [(0x8000u64, 16u32, 1u16), (0x9000, 512, 1), (0xa000, 1, 2)];
        for (i, (addr, len, flags)) in descs.iter().enumerate() {
            let d = desc + 16 * i as u64;
            mem.write_obj(*addr, GuestAddress(d)).unwrap();
            mem.write_obj(*len, GuestAddress(d + 8)).unwrap();
            mem.write_obj(*flags, GuestAddress(d + 12)).unwrap();
            mem.write_obj(i as u16 + 1, GuestAddress(d + 14)).unwrap();
        }
        mem.write_obj(0u16, GuestAddress(avail + 4)).unwrap();
        mem.write_obj(1u16, GuestAddress(avail + 2)).unwrap();
        let irq = super::super::VirtioInterrupt::new(None, 1);
        let mut queues = [q];
        let mut ctx = QueueContext {
            name,
            queues: &mut queues,
            mem: &mem,
            features: 0,
            irq: &irq,
        };
        dev.process_queue(0, &mut ctx).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0xa000)).unwrap(), S_IOERR);
        let lines = log.lock().unwrap().clone();
        let ours: Vec<_> = lines.iter().filter(|(_, m)| m.starts_with(name)).collect();
        assert_eq!(ours.len(), 1, "{lines:?}");
        assert!(ours[0].0.starts_with("devices::virtio::blk"), "{ours:?}");
        assert!(
            ours[0]
                .1
                .starts_with(&format!("{name}: write of 512 bytes at sector 0 failed: ")),
            "{ours:?}"
        );
    }
}
