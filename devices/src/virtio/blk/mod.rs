//! virtio-blk (type 2) over a raw image file, following QEMU's hw/block/virtio-blk.c:
//! features SEG_MAX, GEOMETRY, BLK_SIZE, TOPOLOGY, FLUSH (write-back cache), CONFIG_WCE,
//! DISCARD, WRITE_ZEROES, RO, MQ; requests IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES.
//!
//! The handler walks each chain once ([`request`]), answers what needs no I/O at once
//! (GET_ID, refusals) and hands the rest to the device's I/O [`engine`], whose workers move
//! data with preadv/pwritev straight between the image and guest memory, many requests in
//! flight per queue. Finished requests come back through an EventFd (an event source of
//! the device) and go to their queue's used ring in the order they finish. With O_DIRECT,
//! buffers that are not block-aligned go through an aligned bounce buffer instead.

mod config;
mod engine;
mod io;
mod request;
mod stats;
#[cfg(test)]
mod tests;

pub use config::DiskSize;
pub use stats::BlockStats;

use super::device::{
    bad_queue, read_config_bytes, DeviceError, QueueContext, QueueGroup, VirtioDevice,
};
use super::regs::features::RING_EVENT_IDX;
use config::cfg;
use engine::{Done, Engine, Job, Op, Target};
use request::{no_iovecs, Chain, StatusByte, REQ_HDR_LEN};
use std::fs::File;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Instant;
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

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

/// The most queues the model serves (machine/src/device_checks.rs refuses more; an automatic
/// count, one per vCPU, is capped here).
pub const MAX_QUEUES: u16 = 64;

/// Event-source token of the engine's completion EventFd.
const COMPLETIONS: u32 = 0;

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
    /// What `num-queues` left at its default (auto) becomes: one queue per vCPU, as QEMU's
    /// virtio_pci_optimal_num_queues (machine types before 5.2 set 1 through their compat
    /// properties).
    pub auto_num_queues: u16,
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
    read_only: bool,
    writeback: bool,
    disk_size: Arc<DiskSize>,
    engine: Engine,
    opts: BlockOptions,
    /// Write cache enabled (the guest may toggle it through CONFIG_WCE).
    wce: bool,
    features: u64,
    config: Vec<u8>,
    /// Requests parsed by the current pass, handed to the engine together.
    batch: Vec<Job>,
    /// Requests of the current pass answered or run on the spot, for the used ring.
    ready: Vec<Ready>,
    /// Finished requests being put in the used rings.
    done: Vec<Done>,
    /// Queues that got used entries in the current completion pass.
    touched: Vec<bool>,
    /// The request queues were split off to handlers of their own (`split`): this one
    /// serves none.
    split: bool,
}

/// The most requests answered on the spot before they go to the used ring (see
/// `Block::pop_all`).
const PUBLISH_EVERY: usize = 8;

/// A request of the current pass answered or run on the spot.
struct Ready {
    head: u16,
    used: u32,
    status: StatusByte,
    result: u8,
    /// A read or write run on the spot, counted when it is published.
    count: Option<(Op, u64, u64)>,
}

/// The reads and writes of one publication, counted together.
#[derive(Default)]
struct Tally {
    reads: u64,
    read_bytes: u64,
    read_ns: u64,
    writes: u64,
    write_bytes: u64,
    write_ns: u64,
    write_end: u64,
}

impl Tally {
    fn add(&mut self, op: Op, offset: u64, len: u64, elapsed: u64) {
        if op == Op::Read {
            self.reads += 1;
            self.read_bytes += len;
            self.read_ns = self.read_ns.saturating_add(elapsed);
        } else {
            self.writes += 1;
            self.write_bytes += len;
            self.write_ns = self.write_ns.saturating_add(elapsed);
            self.write_end = self.write_end.max(offset.saturating_add(len));
        }
    }

    fn into(self, stats: &BlockStats) {
        if self.reads > 0 {
            stats.reads_done(self.reads, self.read_bytes, self.read_ns);
        }
        if self.writes > 0 {
            stats.writes_done(self.writes, self.write_bytes, self.write_ns, self.write_end);
        }
    }
}

/// What the handler does with a chain.
enum Step {
    /// Answered at once: the status and the used length.
    Now(u8, u32),
    /// Handed to the engine.
    Io(Job),
}

impl Block {
    pub fn new(backend: BlockBackend, opts: BlockOptions) -> std::io::Result<Self> {
        // Seeking to the end sizes regular files and block devices alike (a block device's
        // inode length is 0); I/O is positional, so the file offset does not matter.
        let len = match backend.size {
            Some(size) => size,
            None => std::io::Seek::seek(&mut &backend.file, std::io::SeekFrom::End(0))?,
        };
        backend.disk_size.set_bytes(len);
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
        let engine = Engine::new(Target {
            file: backend.file,
            direct: backend.direct,
            stats: backend.stats,
            name: Default::default(),
            no_nowait: Default::default(),
            no_cachestat: Default::default(),
        })?;
        let wce = backend.writeback;
        let config = config::build(&opts, features, backend.disk_size.sectors(), wce);
        Ok(Self {
            // Log lines name the function; the transport sets it (set_name).
            name: String::new(),
            read_only: backend.read_only,
            writeback: backend.writeback,
            disk_size: backend.disk_size,
            engine,
            touched: vec![false; usize::from(opts.num_queues.max(1))],
            opts,
            wce,
            features,
            config,
            batch: Vec::new(),
            ready: Vec::with_capacity(PUBLISH_EVERY),
            done: Vec::new(),
            split: false,
        })
    }

    /// A handler of one request queue of this device, with an I/O engine of its own on
    /// the same image (a duplicated descriptor), for `split`.
    fn queue_handler(&self) -> std::io::Result<Block> {
        let t = self.engine.target();
        let engine = Engine::new(Target {
            file: t.file.try_clone()?,
            direct: t.direct,
            stats: t.stats.clone(),
            name: Default::default(),
            no_nowait: Default::default(),
            no_cachestat: Default::default(),
        })?;
        Ok(Block {
            name: self.name.clone(),
            read_only: self.read_only,
            writeback: self.writeback,
            disk_size: self.disk_size.clone(),
            engine,
            opts: BlockOptions {
                num_queues: 1,
                ..self.opts.clone()
            },
            wce: self.wce,
            features: self.features,
            config: self.config.clone(),
            batch: Vec::new(),
            ready: Vec::with_capacity(PUBLISH_EVERY),
            done: Vec::new(),
            touched: vec![false],
            split: false,
        })
    }

    fn stats(&self) -> &BlockStats {
        &self.engine.target().stats
    }

    /// A request the guest should not have made (it gets S_IOERR or S_UNSUPP).
    fn refused(&self, why: std::fmt::Arguments) {
        crate::guest_error!("{}: {why}", self.name);
    }

    /// A read or write the disk cannot serve: past its end, not whole sectors, or a write to
    /// a read-only drive.
    fn out_of_range(&self, what: &str, sector: u64, len: u64) {
        if what != "read" && self.read_only {
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
        self.disk_size.sectors()
    }

    /// Turn one chain of queue `queue`, available since `started`, into a status now or a
    /// job for the engine, with where its status byte goes; an error for a malformed chain
    /// (a device error, as in QEMU).
    fn parse(
        &self,
        queue: usize,
        mem: &GuestMemoryMmap,
        chain: &DescriptorChain<&GuestMemoryMmap>,
        started: Instant,
    ) -> Result<(Step, StatusByte), DeviceError> {
        let bad = |reason: &str| DeviceError::BadChain {
            queue,
            reason: reason.to_string(),
        };
        let c = Chain::walk(queue, mem, chain)?;
        let mut hdr = [0u8; REQ_HDR_LEN];
        if c.read(0, &mut hdr) < REQ_HDR_LEN {
            return Err(bad("request outhdr too short"));
        }
        let status = c.status().ok_or_else(|| bad("request inhdr too short"))?;
        let ty = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) & !T_BARRIER;
        let sector = u64::from_le_bytes([
            hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15],
        ]);
        let in_len = c.writable;
        let offset = sector.wrapping_mul(SECTOR);
        let job = |op, offset, len: usize, iovs, used: usize| {
            Step::Io(Job::new(
                op,
                offset,
                len as u64,
                iovs,
                queue as u16,
                chain.head_index(),
                status,
                used as u32,
                started,
            ))
        };
        let step = match ty {
            T_IN => {
                // QEMU pushes the whole writable size for reads.
                let len = in_len - 1;
                if !self.sector_range_ok(sector, len as u64) {
                    self.out_of_range("read", sector, len as u64);
                    BlockStats::add(&self.stats().invalid_rd_operations, 1);
                    Step::Now(S_IOERR, in_len as u32)
                } else {
                    crate::trace_event!(
                        virtio_blk_handle_read,
                        "vdev {} sector {sector} nsectors {}",
                        self.name,
                        len as u64 / SECTOR
                    );
                    job(Op::Read, offset, len, c.iovecs(true, 0, len), in_len)
                }
            }
            T_OUT => {
                let len = c.readable - REQ_HDR_LEN;
                if self.read_only || !self.sector_range_ok(sector, len as u64) {
                    self.out_of_range("write", sector, len as u64);
                    BlockStats::add(&self.stats().invalid_wr_operations, 1);
                    Step::Now(S_IOERR, 1)
                } else {
                    crate::trace_event!(
                        virtio_blk_handle_write,
                        "vdev {} sector {sector} nsectors {}",
                        self.name,
                        len as u64 / SECTOR
                    );
                    let iovs = c.iovecs(false, REQ_HDR_LEN, len);
                    job(Op::Write { sync: !self.wce }, offset, len, iovs, 1)
                }
            }
            T_FLUSH if self.features & F_FLUSH != 0 => job(Op::Flush, offset, 0, no_iovecs(), 1),
            T_GET_ID => {
                let mut id = [0u8; ID_BYTES];
                let s = self.opts.serial.as_bytes();
                let n = s.len().min(ID_BYTES);
                id[..n].copy_from_slice(&s[..n]);
                let n = (in_len - 1).min(ID_BYTES);
                Step::Now(S_OK, (c.write(&id[..n]) + 1) as u32)
            }
            T_DISCARD if self.features & F_DISCARD != 0 => self.discard(&c, false, &job),
            T_WRITE_ZEROES if self.features & F_WRITE_ZEROES != 0 => self.discard(&c, true, &job),
            _ => {
                self.refused(format_args!("request type {ty:#x} not supported"));
                Step::Now(S_UNSUPP, 1)
            }
        };
        Ok((step, status))
    }

    /// DISCARD and WRITE_ZEROES with their single 16-byte segment: checked here, done by
    /// the engine.
    fn discard(
        &self,
        c: &Chain,
        write_zeroes: bool,
        job: &dyn Fn(Op, u64, usize, request::Iovecs, usize) -> Step,
    ) -> Step {
        let refuse = |status| Step::Now(self.stats().discard_done(write_zeroes, status), 1);
        let avail = c.readable - REQ_HDR_LEN;
        if avail != 16 {
            // max_discard_seg / max_write_zeroes_seg is 1.
            self.refused(format_args!(
                "discard/write-zeroes with {avail} bytes of segments (one 16-byte segment)"
            ));
            return refuse(S_UNSUPP);
        }
        let mut seg = [0u8; 16];
        c.read(REQ_HDR_LEN, &mut seg);
        let le32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let sector = u64::from(le32(&seg[0..4])) | u64::from(le32(&seg[4..8])) << 32;
        let num = le32(&seg[8..12]);
        let flags = le32(&seg[12..16]);
        let allowed = if write_zeroes { WRITE_ZEROES_UNMAP } else { 0 };
        if flags & !allowed != 0 {
            self.refused(format_args!(
                "discard/write-zeroes with unknown flags {flags:#x}"
            ));
            return refuse(S_UNSUPP);
        }
        let bytes = u64::from(num) * SECTOR;
        if num > MAX_SECTORS || !self.sector_range_ok(sector, bytes) || self.read_only {
            let what = if write_zeroes {
                "write-zeroes"
            } else {
                "discard"
            };
            self.out_of_range(what, sector, bytes);
            return refuse(S_IOERR);
        }
        let op = if write_zeroes {
            Op::WriteZeroes {
                unmap: flags & WRITE_ZEROES_UNMAP != 0,
                sync: !self.wce,
            }
        } else {
            Op::Discard
        };
        // The job's range is the segment's, not the header's sector.
        job(op, sector * SECTOR, bytes as usize, no_iovecs(), 1)
    }

    /// Pop and parse every available chain of queue `idx`: answers that need no I/O and
    /// requests run on the spot go to the used ring in groups of `PUBLISH_EVERY`, the rest
    /// to `self.batch`. Whether anything was used.
    ///
    /// The avail index is read once per group and the group is counted with one clock
    /// reading, instead of both per request. Groups stay small: a polling driver that sees
    /// its first completions resubmits them while the rest of the ring is served (with
    /// groups of 32 the guest benchmark's queue-depth-32 reads lost a fifth; 2 and 8 were
    /// alike).
    fn pop_all(&mut self, idx: usize, ctx: &mut QueueContext) -> Result<bool, DeviceError> {
        let mem = ctx.mem;
        let event_idx = ctx.features & RING_EVENT_IDX != 0;
        let Some(q) = ctx.ready_queue(idx) else {
            return Ok(false);
        };
        let mut used_any = false;
        // Requests run here, without a hand-off, while nothing is in flight and none of
        // this pass went to the workers (so none is overtaken); see Engine::try_now.
        let mut now_ok = self.batch.is_empty() && self.engine.idle();
        self.engine.new_pass();
        loop {
            // One clock reading per pass: the requests it finds were all waiting at its
            // start.
            let started = Instant::now();
            let mut failed = None;
            let mut progressed = false;
            for chain in q.iter(mem).map_err(|e| bad_queue(idx, e))? {
                progressed = true;
                let head = chain.head_index();
                let parsed = match self.parse(idx, mem, &chain, started) {
                    Ok(p) => p,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                };
                match parsed {
                    (Step::Io(job), at) if now_ok && self.engine.try_now(&job) => {
                        self.ready.push(Ready {
                            head,
                            used: job.used,
                            status: at,
                            result: S_OK,
                            count: Some((job.op, job.offset, job.len)),
                        });
                    }
                    (Step::Io(job), _) => {
                        now_ok = false;
                        self.batch.push(job);
                    }
                    (Step::Now(result, used), at) => self.ready.push(Ready {
                        head,
                        used,
                        status: at,
                        result,
                        count: None,
                    }),
                }
                if self.ready.len() >= PUBLISH_EVERY {
                    break;
                }
            }
            let cut = self.ready.len() >= PUBLISH_EVERY;
            // What was answered before a bad chain still completes (QEMU pushes as it pops).
            let published = self.publish_ready(idx, q, mem, started);
            if let Some(e) = failed {
                return Err(e);
            }
            used_any |= published?;
            if cut {
                // Stopped at PUBLISH_EVERY: the rest of the ring is still there.
                continue;
            }
            // Look again only after a pass that made progress: an avail index the ring
            // cannot back (a hostile driver) must not spin the handler (see
            // QueueContext::drain_queue).
            if !progressed {
                break;
            }
            // With EVENT_IDX the driver kicks only when it reaches avail_event: publish
            // the next index we want and look again (a chain added before the driver saw
            // it got no kick). Without it the driver kicks for every chain.
            if !(event_idx && q.enable_notification(mem).map_err(|e| bad_queue(idx, e))?) {
                break;
            }
        }
        Ok(used_any)
    }

    /// Put the answers of the current pass (`self.ready`) in queue `idx`'s used ring, their
    /// status bytes first, and count the requests run on the spot with one clock reading
    /// (the driver sees them complete now). Whether anything was used.
    fn publish_ready(
        &mut self,
        idx: usize,
        q: &mut virtio_queue::Queue,
        mem: &GuestMemoryMmap,
        started: Instant,
    ) -> Result<bool, DeviceError> {
        if self.ready.is_empty() {
            return Ok(false);
        }
        let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut tally = Tally::default();
        let mut res = Ok(true);
        for r in self.ready.drain(..) {
            if let Some((op, offset, len)) = r.count {
                tally.add(op, offset, len, elapsed);
            }
            r.status.set(r.result);
            crate::trace_event!(
                virtio_blk_req_complete,
                "vdev {} status {}",
                self.name,
                r.result
            );
            if res.is_ok() {
                res = q
                    .add_used(mem, r.head, r.used)
                    .map(|()| true)
                    .map_err(|e| bad_queue(idx, e));
            }
        }
        tally.into(self.stats());
        res
    }

    /// Put the requests the engine finished in their used rings and interrupt the driver.
    fn complete(&mut self, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        let mem = ctx.mem;
        for d in self.done.drain(..) {
            let idx = usize::from(d.queue);
            // A queue the driver reset or disabled since takes nothing.
            let Some(q) = ctx.queues.get_mut(idx).filter(|q| q.ready()) else {
                continue;
            };
            d.status.set(d.result);
            crate::trace_event!(
                virtio_blk_req_complete,
                "vdev {} status {}",
                self.name,
                d.result
            );
            q.add_used(mem, d.head, d.used)
                .map_err(|e| bad_queue(idx, e))?;
            if let Some(t) = self.touched.get_mut(idx) {
                *t = true;
            }
        }
        for (idx, t) in self.touched.iter_mut().enumerate() {
            if std::mem::take(t) {
                ctx.notify(idx);
            }
        }
        Ok(())
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
        *self
            .engine
            .target()
            .name
            .write()
            .unwrap_or_else(|e| e.into_inner()) = name.to_string();
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
            self.wce = self.writeback && features & F_FLUSH != 0;
            if let Some(b) = self.config.get_mut(cfg::WCE) {
                *b = u8::from(self.wce);
            }
        }
    }

    fn reset(&mut self) {
        // virtio_blk_reset drains: every request in flight finishes (a write the driver
        // was told about is on the image), and none of them completes into the reset rings.
        self.engine.reset();
        self.wce = self.writeback;
        self.config = config::build(&self.opts, self.features, self.capacity(), self.wce);
    }

    fn process_queue(&mut self, idx: usize, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        let popped = self.pop_all(idx, ctx);
        // What was parsed before a bad chain still runs (QEMU submits as it pops).
        self.engine.submit(&mut self.batch);
        if popped? {
            ctx.notify(idx);
        }
        Ok(())
    }

    fn event_sources(&self) -> Vec<(RawFd, u32)> {
        if self.split {
            return Vec::new();
        }
        vec![(self.engine.completions_fd(), COMPLETIONS)]
    }

    /// With several request queues, each on a handler (and a thread) of its own, as QEMU
    /// runs each virtqueue's requests where its ioeventfd is handled: a request queue's
    /// requests never wait behind another's.
    fn split(&mut self) -> std::io::Result<Vec<QueueGroup>> {
        let queues = usize::from(self.opts.num_queues.max(1));
        if queues < 2 {
            return Ok(Vec::new());
        }
        let mut groups = Vec::with_capacity(queues);
        for first in 0..queues {
            groups.push(QueueGroup {
                first,
                count: 1,
                handler: Box::new(self.queue_handler()?),
            });
        }
        self.split = true;
        Ok(groups)
    }

    fn process_event(&mut self, _token: u32, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        self.engine.take_done(&mut self.done);
        self.complete(ctx)
    }

    fn settle(&mut self, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        self.engine.settle(&mut self.done);
        self.complete(ctx)
    }
}
