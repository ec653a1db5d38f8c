//! The image side of the I/O engine: what each request does to the file (preadv/pwritev
//! straight on guest-memory iovecs, an aligned bounce buffer where O_DIRECT needs one,
//! fdatasync, fallocate), counted in the drive's stats.

use super::engine::{Job, Op};
use super::stats::BlockStats;
use super::{SECTOR, S_IOERR, S_OK};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// Bounce-buffer chunk for data transfers that cannot go straight to guest memory.
const CHUNK: usize = 1 << 20;
/// O_DIRECT wants block-aligned user buffers.
const ALIGN: usize = 4096;

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
    /// cachestat failed: writes are not tried inline without RWF_NOWAIT.
    pub no_cachestat: AtomicBool,
}

/// A buffer aligned for O_DIRECT.
pub(super) struct Bounce {
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
    /// Run `job` now on the calling thread if that cannot block: a read whose data the
    /// page cache holds (preadv2 with RWF_NOWAIT, as io_uring tries before it hands a
    /// request to its workers), or a write-back write the page cache takes (pwritev2 with
    /// RWF_NOWAIT; where the file system refuses that, as ext4 does for buffered writes,
    /// a plain pwritev over pages that are all cached and none under writeback: no read
    /// and no I/O to wait for, see `cached_overwrite`). True when the whole transfer is
    /// done (nothing counted: the caller counts it); false, the job unchanged, when it
    /// must go to the workers. `cached`: the caller saw with `cached_overwrite` that the
    /// write's range is cached and not under writeback (a sequential run checked once for
    /// several writes), so that check is not made again.
    pub(super) fn try_now(&self, job: &Job, cached: bool) -> bool {
        let write = match job.op {
            Op::Read => false,
            Op::Write { sync: false } => true,
            _ => return false,
        };
        let iovs = job.iovs.as_slice();
        if self.direct || iovs.is_empty() || iovs.len() > 1024 {
            return false;
        }
        let Ok(off) = libc::off_t::try_from(job.offset) else {
            return false;
        };
        let count = iovs.len() as libc::c_int;
        let nowait = !self.no_nowait[usize::from(write)].load(Ordering::Relaxed);
        // SAFETY: the iovecs point into guest RAM, bounds-checked by Chain::walk and mapped
        // while the device lives; the kernel only writes (preadv2) or reads (pwritev2)
        // them and leaves the iovec array as it is.
        let n = unsafe {
            match (write, nowait) {
                (false, true) => {
                    libc::preadv2(self.fd(), iovs.as_ptr(), count, off, libc::RWF_NOWAIT)
                }
                (true, true) => {
                    libc::pwritev2(self.fd(), iovs.as_ptr(), count, off, libc::RWF_NOWAIT)
                }
                (true, false) if cached || self.cached_overwrite(job.offset, job.len) => {
                    libc::pwritev(self.fd(), iovs.as_ptr(), count, off)
                }
                _ => return false,
            }
        };
        if n < 0
            && nowait
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EOPNOTSUPP)
        {
            self.no_nowait[usize::from(write)].store(true, Ordering::Relaxed);
        }
        // Anything short of the whole transfer (would block, not supported, a short read,
        // an error) goes to the workers, which redo it whole and report failures.
        usize::try_from(n).is_ok_and(|n| n as u64 == job.len)
    }

    /// Whether every page of `len` bytes at `offset` is in the page cache and none is under
    /// writeback (cachestat, Linux 6.5): a buffered write there copies into the cache and
    /// returns, it reads nothing from the disk and waits for no I/O of ours. Writes are
    /// tried inline that way only while they stay quick (the caller backs off after a
    /// slow one: the kernel may still throttle a process that dirties too much).
    pub(super) fn cached_overwrite(&self, offset: u64, len: u64) -> bool {
        /// struct cachestat_range and struct cachestat of linux/mman.h.
        #[repr(C)]
        struct Range {
            off: u64,
            len: u64,
        }
        #[repr(C)]
        #[derive(Default)]
        struct Stat {
            nr_cache: u64,
            nr_dirty: u64,
            nr_writeback: u64,
            nr_evicted: u64,
            nr_recently_evicted: u64,
        }
        const SYS_CACHESTAT: libc::c_long = 451;
        const PAGE: u64 = 4096;
        if len == 0 || self.no_cachestat.load(Ordering::Relaxed) {
            return false;
        }
        let range = Range { off: offset, len };
        let mut st = Stat::default();
        // SAFETY: cachestat reads one cachestat_range and writes one cachestat, both ours
        // and of the kernel's layout; the file descriptor is ours.
        let r = unsafe {
            libc::syscall(
                SYS_CACHESTAT,
                self.fd(),
                &range as *const Range,
                &mut st as *mut Stat,
                0u32,
            )
        };
        if r != 0 {
            // No cachestat (an older kernel, a seccomp filter) or not a file it knows
            // (a character device): writes go to the workers from now on.
            self.no_cachestat.store(true, Ordering::Relaxed);
            return false;
        }
        let pages = (offset + len - 1) / PAGE - offset / PAGE + 1;
        st.nr_cache >= pages && st.nr_writeback == 0
    }

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
    pub(super) fn execute(&self, job: &mut Job, bounce: &mut Option<Bounce>) -> u8 {
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
