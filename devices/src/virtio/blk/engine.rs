//! The I/O engine (QEMU's `aio=threads`): a bounded pool of worker threads per device doing
//! preadv/pwritev/fdatasync/fallocate straight on guest-memory iovecs, so that a queue has
//! many requests in flight. Requests complete in any order; finished ones are collected
//! and the device's handler, woken through an EventFd, puts them in the used rings.
//!
//! Ordering: a request never starts while an earlier one it conflicts with is running
//! (overlapping ranges with a write on either side), and a flush waits for every earlier
//! write, so a flush covers each write submitted before it. Workers take requests in
//! submission order, so every earlier request is already running or done when a later one
//! waits: no cycle. A device reset (and the device's end) waits for every request in
//! flight and drops their completions, so nothing lands in guest memory afterwards.

use super::request::{Iovecs, StatusByte};
use super::stats::BlockStats;
use super::{SECTOR, S_IOERR, S_OK};
use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;

/// QEMU's thread pool grows to 64 threads. Here a device has two per host CPU, 4 to 32:
/// requests beyond them wait in order, and more threads than CPUs only contend on the
/// image's inode lock (buffered writes) and on the CPUs themselves.
fn max_workers() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (2 * cpus).clamp(4, 32)
}
/// The most requests a worker takes at once.
const BATCH: usize = 32;
/// An idle worker ends after this, as QEMU's do (10 s).
const IDLE: Duration = Duration::from_secs(10);
/// Bounce-buffer chunk for data transfers that cannot go straight to guest memory.
const CHUNK: usize = 1 << 20;
/// O_DIRECT wants block-aligned user buffers.
const ALIGN: usize = 4096;

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Read,
    /// `sync`: writethrough (no write cache), fdatasync after the data.
    Write {
        sync: bool,
    },
    Flush,
    Discard,
    WriteZeroes {
        unmap: bool,
        sync: bool,
    },
}

impl Op {
    fn writes(self) -> bool {
        matches!(
            self,
            Op::Write { .. } | Op::Discard | Op::WriteZeroes { .. }
        )
    }
}

/// A request handed to the engine.
pub(super) struct Job {
    pub op: Op,
    /// Byte range on the image.
    pub offset: u64,
    pub len: u64,
    /// Data buffers in guest RAM (reads and writes).
    pub iovs: Iovecs,
    pub queue: u16,
    pub head: u16,
    pub status: StatusByte,
    /// The used length to report.
    pub used: u32,
    pub started: Instant,
    /// Submission order, set by the engine.
    seq: u64,
}

// SAFETY: the iovecs point into guest RAM, which stays mapped while the device lives, and
// the device waits for every job before it goes (Engine's Drop) or resets; the kernel is
// the only one touching those bytes on the worker's behalf.
unsafe impl Send for Job {}

impl Job {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        op: Op,
        offset: u64,
        len: u64,
        iovs: Iovecs,
        queue: u16,
        head: u16,
        status: StatusByte,
        used: u32,
        started: Instant,
    ) -> Self {
        Self {
            op,
            offset,
            len,
            iovs,
            queue,
            head,
            status,
            used,
            started,
            seq: 0,
        }
    }

    fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }
}

/// A finished request: what the handler puts in the used ring.
pub(super) struct Done {
    pub queue: u16,
    pub head: u16,
    pub used: u32,
    pub status: StatusByte,
    pub result: u8,
}

/// A request a worker took: running, or waiting for earlier ones it conflicts with.
struct Running {
    seq: u64,
    op: Op,
    offset: u64,
    end: u64,
}

impl Running {
    /// Whether `job` (submitted later) must wait for this one.
    fn blocks(&self, job: &Job) -> bool {
        if job.op == Op::Flush {
            return self.op.writes();
        }
        if self.op == Op::Flush {
            return false;
        }
        let overlap = self.offset < job.end() && job.offset < self.end;
        overlap && (self.op.writes() || job.op.writes())
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    running: Vec<Running>,
    done: Vec<Done>,
    /// Submitted and not yet in `done`.
    in_flight: usize,
    next_seq: u64,
    threads: usize,
    /// Threads started and not yet waiting for work.
    starting: usize,
    idle: usize,
    /// Threads waiting on `finished`.
    waiters: usize,
    shutdown: bool,
}

/// The image and how to reach it.
pub(super) struct Target {
    pub file: File,
    /// O_DIRECT: buffers that are not block-aligned go through an aligned bounce buffer.
    pub direct: bool,
    pub stats: Arc<BlockStats>,
    /// How log lines name the device.
    pub name: RwLock<String>,
    /// RWF_NOWAIT reads / writes refused with EOPNOTSUPP (the file system or kernel has
    /// none): not tried again.
    pub no_nowait: [AtomicBool; 2],
}

struct Shared {
    target: Target,
    state: Mutex<State>,
    /// A request was queued, or the engine is ending.
    work: Condvar,
    /// A request finished.
    finished: Condvar,
    /// Signalled when `done` gets its first entry.
    completions: EventFd,
}

pub(super) struct Engine {
    shared: Arc<Shared>,
    max_workers: usize,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Engine {
    pub fn new(target: Target) -> std::io::Result<Self> {
        Ok(Self {
            shared: Arc::new(Shared {
                target,
                state: Mutex::new(State::default()),
                work: Condvar::new(),
                finished: Condvar::new(),
                completions: EventFd::new(libc::EFD_NONBLOCK)?,
            }),
            threads: Vec::new(),
            max_workers: max_workers(),
        })
    }

    pub fn target(&self) -> &Target {
        &self.shared.target
    }

    /// The EventFd the handler waits on for completions.
    pub fn completions_fd(&self) -> std::os::fd::RawFd {
        self.shared.completions.as_raw_fd()
    }

    /// Queue `jobs` (emptied) in order, starting workers as needed.
    pub fn submit(&mut self, jobs: &mut Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let (spawn, wake) = {
            let mut st = lock(&self.shared.state);
            for mut job in jobs.drain(..) {
                job.seq = st.next_seq;
                st.next_seq += 1;
                st.in_flight += 1;
                st.queue.push_back(job);
            }
            let queued = st.queue.len();
            let spawn = queued
                .saturating_sub(st.idle + st.starting)
                .min(self.max_workers.saturating_sub(st.threads));
            st.threads += spawn;
            st.starting += spawn;
            (spawn, queued.min(st.idle))
        };
        match wake {
            0 => {}
            1 => self.shared.work.notify_one(),
            _ => self.shared.work.notify_all(),
        }
        if spawn > 0 {
            self.threads.retain(|t| !t.is_finished());
        }
        for _ in 0..spawn {
            let shared = self.shared.clone();
            let started = std::thread::Builder::new()
                .name("worker".into())
                .spawn(move || worker(&shared));
            match started {
                Ok(t) => self.threads.push(t),
                Err(e) => {
                    // The threads already running serve the queue; with none, fail the
                    // requests rather than leave them waiting.
                    let mut st = lock(&self.shared.state);
                    st.threads -= 1;
                    st.starting -= 1;
                    log::error!(
                        "{}: cannot start an I/O worker thread: {e}",
                        self.shared.target.name()
                    );
                    if st.threads == 0 {
                        fail_queued(&mut st);
                        drop(st);
                        self.shared.finished.notify_all();
                        let _ = self.shared.completions.write(1);
                    }
                }
            }
        }
    }

    /// Whether no request is in flight (so one run now conflicts with none).
    pub fn idle(&self) -> bool {
        lock(&self.shared.state).in_flight == 0
    }

    /// Run `job` now on the calling thread if that cannot block: a read or a write-back
    /// write whose data the page cache takes or holds (preadv2/pwritev2 with RWF_NOWAIT,
    /// as io_uring tries before it hands a request to its workers). Its status when done;
    /// None (nothing reported, the job unchanged) when it must go to the workers. Only
    /// while no request is in flight, so that it overtakes none it conflicts with.
    pub fn try_now(&self, job: &Job) -> Option<u8> {
        let target = &self.shared.target;
        let write = match job.op {
            Op::Read => false,
            Op::Write { sync: false } => true,
            _ => return None,
        };
        let iovs = job.iovs.as_slice();
        let unsupported = &target.no_nowait[usize::from(write)];
        if target.direct
            || iovs.is_empty()
            || iovs.len() > 1024
            || unsupported.load(Ordering::Relaxed)
        {
            return None;
        }
        let off = libc::off_t::try_from(job.offset).ok()?;
        // SAFETY: the iovecs point into guest RAM, bounds-checked by Chain::walk and mapped
        // while the device lives; the kernel only writes (preadv2) or reads (pwritev2)
        // them and leaves the iovec array as it is.
        let n = unsafe {
            if write {
                libc::pwritev2(
                    target.fd(),
                    iovs.as_ptr(),
                    iovs.len() as libc::c_int,
                    off,
                    libc::RWF_NOWAIT,
                )
            } else {
                libc::preadv2(
                    target.fd(),
                    iovs.as_ptr(),
                    iovs.len() as libc::c_int,
                    off,
                    libc::RWF_NOWAIT,
                )
            }
        };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EOPNOTSUPP) {
            unsupported.store(true, Ordering::Relaxed);
        }
        // Anything short of the whole transfer (would block, not supported, a short read,
        // an error) goes to the workers, which redo it whole and report failures.
        if usize::try_from(n).ok()? as u64 != job.len {
            return None;
        }
        let elapsed = u64::try_from(job.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Some(if write {
            target
                .stats
                .write_done(true, job.offset, job.len as usize, elapsed)
        } else {
            target.stats.read_done(true, job.len as usize, elapsed)
        })
    }

    /// Wait until no request is in flight.
    fn wait_idle(&self) -> MutexGuard<'_, State> {
        let mut st = lock(&self.shared.state);
        st.waiters += 1;
        while st.in_flight > 0 {
            st = self
                .shared
                .finished
                .wait(st)
                .unwrap_or_else(|e| e.into_inner());
        }
        st.waiters -= 1;
        st
    }

    /// Move the finished requests into `out`.
    pub fn take_done(&self, out: &mut Vec<Done>) {
        let _ = self.shared.completions.read();
        let mut st = lock(&self.shared.state);
        out.append(&mut st.done);
    }

    /// Wait for every request in flight, then move them all into `out`.
    pub fn settle(&self, out: &mut Vec<Done>) {
        let mut st = self.wait_idle();
        let _ = self.shared.completions.read();
        out.append(&mut st.done);
    }

    /// Device reset: wait for every request in flight (their data is then on the image or
    /// in guest memory) and drop their completions: the reset queues know none of them.
    pub fn reset(&self) {
        let mut st = self.wait_idle();
        st.done.clear();
        let _ = self.shared.completions.read();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        drop(self.wait_idle());
        lock(&self.shared.state).shutdown = true;
        self.shared.work.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// No worker can run: every queued request fails.
fn fail_queued(st: &mut State) {
    while let Some(job) = st.queue.pop_front() {
        st.in_flight -= 1;
        st.done.push(Done {
            queue: job.queue,
            head: job.head,
            used: job.used,
            status: job.status,
            result: S_IOERR,
        });
    }
}

/// A worker thread: take requests in order, wait for earlier conflicting ones, run them.
/// When more requests wait than there are workers, a worker takes several at once (in
/// order) and reports them together: two lock round trips per batch instead of per request.
fn worker(shared: &Shared) {
    let mut bounce = None;
    let mut mine: Vec<Job> = Vec::new();
    let mut results: Vec<Done> = Vec::new();
    let mut st = lock(&shared.state);
    st.starting -= 1;
    loop {
        if st.queue.is_empty() {
            if st.shutdown {
                break;
            }
            st.idle += 1;
            let (guard, wait) = shared
                .work
                .wait_timeout(st, IDLE)
                .unwrap_or_else(|e| e.into_inner());
            st = guard;
            st.idle -= 1;
            if wait.timed_out() && st.queue.is_empty() {
                break;
            }
            continue;
        }
        let n = st.queue.len().div_ceil(st.threads.max(1)).clamp(1, BATCH);
        let State { queue, running, .. } = &mut *st;
        for job in queue.drain(..n) {
            // Listed at once, so that a later request taken by another worker while this
            // one waits sees it.
            running.push(Running {
                seq: job.seq,
                op: job.op,
                offset: job.offset,
                end: job.end(),
            });
            mine.push(job);
        }
        // Earlier requests of other workers: all listed by now (requests are taken in
        // order), so a request they do not block now never waits.
        let first = mine[0].seq;
        let blocked =
            |st: &State, job: &Job| st.running.iter().any(|r| r.seq < first && r.blocks(job));
        let mut next = 0;
        while next < mine.len() {
            while blocked(&st, &mine[next]) {
                st.waiters += 1;
                st = shared.finished.wait(st).unwrap_or_else(|e| e.into_inner());
                st.waiters -= 1;
            }
            let mut end = next + 1;
            while end < mine.len() && !blocked(&st, &mine[end]) {
                end += 1;
            }
            drop(st);
            for job in &mut mine[next..end] {
                let result = shared.target.execute(job, &mut bounce);
                results.push(Done {
                    queue: job.queue,
                    head: job.head,
                    used: job.used,
                    status: job.status,
                    result,
                });
            }
            st = lock(&shared.state);
            let (lo, hi) = (mine[next].seq, mine[end - 1].seq);
            st.running.retain(|r| r.seq < lo || r.seq > hi);
            st.in_flight -= end - next;
            let signal = st.done.is_empty();
            st.done.append(&mut results);
            if st.waiters > 0 {
                shared.finished.notify_all();
            }
            if signal {
                let _ = shared.completions.write(1);
            }
            next = end;
        }
        mine.clear();
    }
    st.threads -= 1;
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
        // regions by Chain::walk, mapped while the device lives (it waits for its requests
        // before it goes); the kernel only reads (pwritev) or writes (preadv) those bytes.
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

/// Copy between `buf` and the iovecs from byte `at` of the data on (`to_guest`: into guest
/// memory).
fn copy_iovecs(iovs: &[libc::iovec], mut at: usize, buf: &mut [u8], to_guest: bool) {
    let mut done = 0;
    for v in iovs {
        if done == buf.len() {
            break;
        }
        if at >= v.iov_len {
            at -= v.iov_len;
            continue;
        }
        let n = (v.iov_len - at).min(buf.len() - done);
        // SAFETY: at + n <= iov_len: the range is inside a guest RAM buffer (see
        // `vectored`); buf has n bytes at `done`. Guest memory never overlaps our buffer.
        unsafe {
            let g = v.iov_base.cast::<u8>().add(at);
            let b = buf.as_mut_ptr().add(done);
            if to_guest {
                std::ptr::copy_nonoverlapping(b, g, n);
            } else {
                std::ptr::copy_nonoverlapping(g, b, n);
            }
        }
        at = 0;
        done += n;
    }
}

impl Target {
    pub(super) fn name(&self) -> String {
        self.name.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn fd(&self) -> libc::c_int {
        self.file.as_raw_fd()
    }

    /// A backend failure: an error naming the device (the guest gets S_IOERR).
    fn failed(&self, what: &str, offset: u64, len: u64, e: &std::io::Error) {
        log::error!(
            "{}: {what} of {len} bytes at sector {} failed: {e}",
            self.name(),
            offset / SECTOR
        );
    }

    fn sync(&self) -> std::io::Result<()> {
        // SAFETY: fdatasync on a file descriptor we own; no memory is passed.
        match unsafe { libc::fdatasync(self.fd()) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> std::io::Result<()> {
        let (Ok(o), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: fallocate on a file descriptor we own with plain integer arguments.
        let r = unsafe { libc::fallocate(self.fd(), mode, o, l) };
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
            self.file.write_all_at(bounce.buf(n), offset)?;
            offset += n as u64;
            len -= n as u64;
        }
        Ok(())
    }

    /// Move the data of `job` through an aligned bounce buffer in CHUNK-sized pieces (O_DIRECT
    /// with unaligned guest buffers).
    fn bounced(
        &self,
        job: &Job,
        write: bool,
        bounce: &mut Option<Bounce>,
    ) -> (usize, std::io::Result<()>) {
        let bounce = bounce.get_or_insert_with(|| Bounce::new(CHUNK));
        let len = job.len as usize;
        let iovs = job.iovs.as_slice();
        let mut moved = 0;
        while moved < len {
            let n = (len - moved).min(CHUNK);
            let buf = bounce.buf(n);
            let offset = job.offset + moved as u64;
            let r = if write {
                copy_iovecs(iovs, moved, buf, false);
                self.file.write_all_at(buf, offset)
            } else {
                self.file
                    .read_exact_at(buf, offset)
                    .map(|()| copy_iovecs(iovs, moved, buf, true))
            };
            if let Err(e) = r {
                return (moved, Err(e));
            }
            moved += n;
        }
        (moved, Ok(()))
    }

    fn transfer(
        &self,
        job: &mut Job,
        write: bool,
        bounce: &mut Option<Bounce>,
    ) -> (usize, std::io::Result<()>) {
        if self.direct && !direct_aligned(job.iovs.as_slice()) {
            return self.bounced(job, write, bounce);
        }
        vectored(self.fd(), write, job.iovs.as_mut_slice(), job.offset)
    }

    /// Run `job` on the image; its virtio status. Counted in the drive's stats.
    fn execute(&self, job: &mut Job, bounce: &mut Option<Bounce>) -> u8 {
        let started = job.started;
        let elapsed = || u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let (offset, len) = (job.offset, job.len);
        match job.op {
            Op::Read => {
                let (moved, res) = self.transfer(job, false, bounce);
                if let Err(e) = &res {
                    self.failed("read", offset, len, e);
                }
                self.stats.read_done(res.is_ok(), moved, elapsed())
            }
            Op::Write { sync } => {
                let (_, res) = self.transfer(job, true, bounce);
                let res = res.and_then(|()| if sync { self.sync() } else { Ok(()) });
                if let Err(e) = &res {
                    self.failed("write", offset, len, e);
                }
                self.stats
                    .write_done(res.is_ok(), offset, len as usize, elapsed())
            }
            Op::Flush => {
                let res = self.sync();
                if let Err(e) = &res {
                    self.failed("flush", offset, 0, e);
                }
                self.stats.flush_done(res.is_ok(), elapsed())
            }
            Op::Discard => {
                // Discard is a hint; a filesystem without hole punching keeps the data.
                let _ = self.fallocate(
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    offset,
                    len,
                );
                self.stats.discard_done(false, S_OK)
            }
            Op::WriteZeroes { unmap, sync } => {
                let mode = if unmap {
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
                } else {
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
                };
                let res = self
                    .fallocate(mode, offset, len)
                    .or_else(|_| self.write_zeroes_slow(offset, len))
                    .and_then(|()| if sync { self.sync() } else { Ok(()) });
                let status = match res {
                    Ok(()) => S_OK,
                    Err(e) => {
                        self.failed("write-zeroes", offset, len, &e);
                        S_IOERR
                    }
                };
                self.stats.discard_done(true, status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(op: Op, offset: u64, len: u64) -> Job {
        let mut status = 0u8;
        let mut j = Job::new(
            op,
            offset,
            len,
            super::super::request::no_iovecs(),
            0,
            0,
            StatusByte::test_only(&mut status),
            1,
            Instant::now(),
        );
        j.seq = 1;
        j
    }

    fn running(op: Op, offset: u64, len: u64) -> Running {
        Running {
            seq: 0,
            op,
            offset,
            end: offset + len,
        }
    }

    /// Which earlier request a later one waits for: a flush for every earlier write (and
    /// only writes), overlapping requests when either writes, nothing else.
    #[test]
    fn later_requests_wait_for_earlier_conflicting_ones() {
        let w = Op::Write { sync: false };
        let wz = Op::WriteZeroes {
            unmap: false,
            sync: false,
        };
        let flush = job(Op::Flush, 0, 0);
        assert!(running(w, 1 << 20, 512).blocks(&flush));
        assert!(running(Op::Discard, 0, 512).blocks(&flush));
        assert!(running(wz, 0, 512).blocks(&flush));
        assert!(!running(Op::Read, 0, 512).blocks(&flush));
        assert!(!running(Op::Flush, 0, 0).blocks(&flush));
        // A write after a flush need not wait for it.
        assert!(!running(Op::Flush, 0, 0).blocks(&job(w, 0, 512)));
        // Overlap with a write on either side.
        assert!(running(w, 0, 4096).blocks(&job(Op::Read, 512, 512)));
        assert!(running(Op::Read, 0, 4096).blocks(&job(w, 4095, 1)));
        assert!(running(w, 0, 4096).blocks(&job(wz, 0, 4096)));
        assert!(!running(w, 0, 4096).blocks(&job(w, 4096, 512)));
        assert!(!running(Op::Read, 0, 4096).blocks(&job(Op::Read, 0, 4096)));
    }
}
