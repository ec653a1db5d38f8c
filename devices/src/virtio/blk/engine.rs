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

use super::io::Bounce;
pub(super) use super::io::Target;
use super::request::{Iovecs, StatusByte};
use super::S_IOERR;
use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
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
/// An inline write that took longer than this (throttled by the kernel)...
const SLOW_INLINE_WRITE: Duration = Duration::from_millis(1);
/// ...sends the writes of this long after it to the workers.
const SLOW_WRITE_BACK_OFF: Duration = Duration::from_secs(1);
/// A run of sequential inline writes has the page cache checked this far ahead of it with
/// one cachestat (which costs about as much for 256 pages as for one: it is the system
/// call, not the pages)...
const CHECK_AHEAD: u64 = 1 << 20;
/// ...and writes inside the checked range trust it for this long (within one pass).
const CHECK_FRESH: Duration = Duration::from_millis(1);
/// An idle worker ends after this, as QEMU's do (10 s).
const IDLE: Duration = Duration::from_secs(10);

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
    /// After a slow inline write: writes go to the workers until then.
    writes_inline_after: Option<Instant>,
    /// The handler thread's voluntary context switches when it first wrote inline in the
    /// current pass.
    sleeps_at_pass: Option<Option<u64>>,
    /// This pass: when the last inline write ended (it starts the next one's timing, one
    /// clock reading per write), where it ended on the image, the range seen cached and
    /// not under writeback ahead of it and when, and whether a look-ahead may be tried.
    clock: Option<Instant>,
    write_end: Option<u64>,
    checked: Option<(u64, u64, Instant)>,
    look_ahead: bool,
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
            writes_inline_after: None,
            sleeps_at_pass: None,
            clock: None,
            write_end: None,
            checked: None,
            look_ahead: true,
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

    /// A new pass of the handler over its queues begins (see `try_now`).
    pub fn new_pass(&mut self) {
        self.sleeps_at_pass = None;
        self.clock = None;
        self.write_end = None;
        self.checked = None;
        self.look_ahead = true;
    }

    /// Run `job` now on the calling thread if that cannot block (see Target::try_now):
    /// true when done (not yet counted), false when it must go to the workers. Only while
    /// no request is in flight, so that it overtakes none it conflicts with. A write
    /// without RWF_NOWAIT that took long and slept (the kernel throttled it, or it waited
    /// for a lock or the journal) sends the writes of the next second to the workers, so
    /// that the queue's handler is not held up again; one that took long because the
    /// thread was preempted (a loaded host) does not.
    pub fn try_now(&mut self, job: &Job) -> bool {
        let target = &self.shared.target;
        let plain_write = job.op == Op::Write { sync: false }
            && !target.direct
            && target.no_nowait[1].load(std::sync::atomic::Ordering::Relaxed);
        if !plain_write {
            return target.try_now(job, false);
        }
        // Timed from the end of the pass's last inline write: the parsing in between is
        // short next to SLOW_INLINE_WRITE and cannot sleep.
        let start = self.clock.unwrap_or_else(Instant::now);
        if self.writes_inline_after.is_some_and(|t| start < t) {
            return false;
        }
        self.writes_inline_after = None;
        if !self.cached(job, start) {
            return false;
        }
        // The thread's sleeps so far, once per pass (the handler sleeps between passes).
        if self.sleeps_at_pass.is_none() {
            self.sleeps_at_pass = Some(voluntary_switches());
        }
        let done = self.shared.target.try_now(job, true);
        let end = Instant::now();
        self.clock = Some(end);
        self.write_end = done.then(|| job.end());
        if end.duration_since(start) > SLOW_INLINE_WRITE {
            let before = self.sleeps_at_pass.take().flatten();
            let after = voluntary_switches();
            self.sleeps_at_pass = Some(after);
            // Unknown counts (getrusage failed) are taken as a sleep.
            if before.zip(after).is_none_or(|(b, a)| a != b) {
                self.writes_inline_after = Some(end + SLOW_WRITE_BACK_OFF);
                self.checked = None;
            }
        }
        done
    }

    /// Whether the range `job` writes is in the page cache and not under writeback (see
    /// Target::cached_overwrite), seen `now` or less than CHECK_FRESH before. A write that
    /// starts where the pass's last inline write ended checks CHECK_AHEAD bytes at once,
    /// so that a sequential run makes one cachestat call per CHECK_AHEAD bytes instead of
    /// one per write; where that look-ahead fails (past the end of the image, pages not
    /// cached or under writeback) the write's own range is checked and the pass tries no
    /// more look-aheads.
    fn cached(&mut self, job: &Job, now: Instant) -> bool {
        let target = &self.shared.target;
        let end = job.end();
        if let Some((lo, hi, at)) = self.checked {
            if lo <= job.offset && end <= hi && now.saturating_duration_since(at) < CHECK_FRESH {
                return true;
            }
        }
        if self.look_ahead && self.write_end == Some(job.offset) && job.len < CHECK_AHEAD {
            let hi = job.offset.saturating_add(CHECK_AHEAD);
            if target.cached_overwrite(job.offset, hi - job.offset) {
                self.checked = Some((job.offset, hi, now));
                return true;
            }
            self.look_ahead = false;
        }
        target.cached_overwrite(job.offset, job.len)
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

/// How often the calling thread has slept (its voluntary context switches), None if
/// getrusage fails.
fn voluntary_switches() -> Option<u64> {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage writes one rusage into the storage it is given.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, ru.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: getrusage returned 0, so it filled the struct.
    let ru = unsafe { ru.assume_init() };
    u64::try_from(ru.ru_nvcsw).ok()
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
    let mut w = Worker {
        shared,
        bounce: None,
        mine: Vec::new(),
        results: Vec::new(),
    };
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
            w.mine.push(job);
        }
        st = w.run_batch(st);
    }
    st.threads -= 1;
}

/// A worker's own state.
struct Worker<'a> {
    shared: &'a Shared,
    /// Its O_DIRECT bounce buffer, made on first use.
    bounce: Option<Bounce>,
    /// The batch it took, in order.
    mine: Vec<Job>,
    results: Vec<Done>,
}

impl<'a> Worker<'a> {
    /// Run the batch in order: each request once no earlier request of another worker
    /// blocks it, as many as can run without the lock between two reports.
    fn run_batch(&mut self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let shared = self.shared;
        // Earlier requests of other workers: all listed by now (requests are taken in
        // order), so a request they do not block now never waits.
        let first = self.mine[0].seq;
        let blocked =
            |st: &State, job: &Job| st.running.iter().any(|r| r.seq < first && r.blocks(job));
        let mut next = 0;
        while next < self.mine.len() {
            while blocked(&st, &self.mine[next]) {
                st.waiters += 1;
                st = shared.finished.wait(st).unwrap_or_else(|e| e.into_inner());
                st.waiters -= 1;
            }
            let mut end = next + 1;
            while end < self.mine.len() && !blocked(&st, &self.mine[end]) {
                end += 1;
            }
            drop(st);
            for job in &mut self.mine[next..end] {
                let result = shared.target.execute(job, &mut self.bounce);
                self.results.push(Done {
                    queue: job.queue,
                    head: job.head,
                    used: job.used,
                    status: job.status,
                    result,
                });
            }
            st = lock(&shared.state);
            let (lo, hi) = (self.mine[next].seq, self.mine[end - 1].seq);
            st.running.retain(|r| r.seq < lo || r.seq > hi);
            st.in_flight -= end - next;
            let signal = st.done.is_empty();
            st.done.append(&mut self.results);
            if st.waiters > 0 {
                shared.finished.notify_all();
            }
            if signal {
                let _ = shared.completions.write(1);
            }
            next = end;
        }
        self.mine.clear();
        st
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

    /// A sequential run of buffered writes over cached pages is done inline right up to the
    /// image's end: the look-ahead past the end fails and each write's own range is checked
    /// instead. Every write lands where it was aimed.
    #[test]
    fn sequential_inline_writes_run_up_to_the_end_of_the_image() {
        use std::os::unix::fs::FileExt;
        const IMAGE: usize = 1536 << 10;
        const WRITE: usize = 64 << 10;
        let dir = machina_tests::TempDir::new("blk-inline");
        let path = dir.join("disk.img");
        std::fs::write(&path, vec![0u8; IMAGE]).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let target = Target {
            file,
            direct: false,
            stats: Default::default(),
            name: Default::default(),
            no_nowait: Default::default(),
            no_cachestat: Default::default(),
        };
        // The path without RWF_NOWAIT (ext4's buffered writes): cachestat decides.
        target.no_nowait[1].store(true, std::sync::atomic::Ordering::Relaxed);
        let mut engine = Engine::new(target).unwrap();
        engine.new_pass();
        let mut status = 0u8;
        for (i, offset) in (0..IMAGE).step_by(WRITE).enumerate() {
            let mut buf = vec![i as u8 + 1; WRITE];
            let mut iovs = super::super::request::no_iovecs();
            iovs.push(libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: WRITE,
            });
            let w = Job::new(
                Op::Write { sync: false },
                offset as u64,
                WRITE as u64,
                iovs,
                0,
                i as u16,
                StatusByte::test_only(&mut status),
                1,
                Instant::now(),
            );
            let inline = engine.try_now(&w);
            if engine
                .target()
                .no_cachestat
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                // A kernel without cachestat (before 6.5): writes go to the workers.
                assert!(!inline);
                return;
            }
            assert!(inline, "write {i} at {offset} done inline");
        }
        let mut back = vec![0u8; IMAGE];
        engine.target().file.read_exact_at(&mut back, 0).unwrap();
        for (i, chunk) in back.chunks(WRITE).enumerate() {
            assert!(chunk.iter().all(|&b| b == i as u8 + 1), "chunk {i}");
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
