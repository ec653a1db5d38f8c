//! Copies and vectored I/O over iovecs that point into guest RAM (bounds-checked by
//! [`chain_iovecs_into`], kept mapped by the device's Core).

use std::os::fd::RawFd;
use virtio_queue::DescriptorChain;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

/// Why a chain is refused (QEMU's virtqueue_pop checks; see `device::check_chain`).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum BadChain {
    /// A device-readable descriptor after a device-writable one.
    ReadableAfterWritable,
    /// The chain does not end: a loop, a `next` past the table, an unreadable descriptor.
    Unterminated,
    /// No descriptor at all: the head is past the table or unreadable.
    Empty,
}

impl BadChain {
    pub(super) fn reason(&self) -> &'static str {
        match self {
            BadChain::ReadableAfterWritable => {
                "device-readable descriptor after a device-writable one"
            }
            BadChain::Unterminated => "looped, or next past the table, or unreadable descriptor",
            BadChain::Empty => "head index past the table, or its descriptor unreadable",
        }
    }
}

/// One walk over `chain`: its device-writable (`writable`) or device-readable buffers
/// appended to `out` as iovecs over guest RAM (split where memory regions meet), with the
/// checks of `device::check_chain`. Ok(false) if a buffer lies outside guest RAM (`out`
/// then holds only part of the chain). What the per-frame path does instead of
/// check_chain, data_ranges and guest_iovecs, which walk the chain three times and
/// allocate twice.
pub(super) fn chain_iovecs_into(
    mem: &GuestMemoryMmap,
    chain: &DescriptorChain<&GuestMemoryMmap>,
    writable: bool,
    out: &mut Vec<libc::iovec>,
) -> Result<bool, BadChain> {
    let mut seen_write = false;
    let mut in_ram = true;
    let mut last_has_next = None;
    for d in chain.clone() {
        if d.is_write_only() {
            seen_write = true;
        } else if seen_write {
            return Err(BadChain::ReadableAfterWritable);
        }
        last_has_next = Some(d.has_next());
        if !in_ram || d.is_write_only() != writable || d.len() == 0 {
            continue;
        }
        let len = d.len() as usize;
        let mut covered = 0;
        for slice in mem.get_slices(d.addr(), len) {
            let Ok(slice) = slice else { break };
            out.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
            covered += slice.len();
        }
        in_ram = covered == len;
    }
    match last_has_next {
        Some(false) => Ok(in_ram),
        Some(true) => Err(BadChain::Unterminated),
        None => Err(BadChain::Empty),
    }
}

/// Drop the first `n` bytes of `iovs`; false if they hold fewer.
pub(super) fn skip_front(iovs: &mut Vec<libc::iovec>, mut n: usize) -> bool {
    while n > 0 {
        let Some(first) = iovs.first_mut() else {
            return false;
        };
        if first.iov_len > n {
            first.iov_base = (first.iov_base as usize + n) as *mut libc::c_void;
            first.iov_len -= n;
            return true;
        }
        n -= first.iov_len;
        iovs.remove(0);
    }
    true
}

/// Put `bounce` in place of the first `bounce.len()` bytes (at most) of `iovs`, so that a
/// read fills the bounce buffer first and only the bytes past it go straight into guest
/// memory; how many bytes the iovecs now take (IOV_MAX of them kept) and how many of
/// them the bounce buffer.
pub(super) fn bounce_front(iovs: &mut Vec<libc::iovec>, bounce: &mut [u8]) -> (usize, usize) {
    let total: usize = iovs.iter().map(|v| v.iov_len).sum();
    let b = bounce.len().min(total);
    if b > 0 && skip_front(iovs, b) {
        iovs.insert(
            0,
            libc::iovec {
                iov_base: bounce.as_mut_ptr().cast(),
                iov_len: b,
            },
        );
        iovs.truncate(1024);
    }
    (iovs.iter().map(|v| v.iov_len).sum(), b)
}

/// Copy `data` into the start of `iovs` (guest buffers); false if they hold fewer bytes.
pub(super) fn write_front(iovs: &[libc::iovec], mut data: &[u8]) -> bool {
    for v in iovs {
        if data.is_empty() {
            break;
        }
        let n = v.iov_len.min(data.len());
        // SAFETY: the iovec points into guest RAM, bounds-checked by chain_iovecs_into and kept
        // mapped by the caller's GuestMemoryMmap; `n` is within both buffers.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), v.iov_base as *mut u8, n) };
        data = &data[n..];
    }
    data.is_empty()
}

/// readv/writev on `fd` over `iovs` (at most IOV_MAX of them); read/write for one buffer,
/// which spares the kernel copying and checking an iovec array (a frame in one guest
/// buffer is the common case: Linux's mergeable receive buffers, a header pushed in
/// front of a small frame).
pub(super) fn vectored(fd: RawFd, write: bool, iovs: &[libc::iovec]) -> std::io::Result<usize> {
    let count = iovs.len().min(1024) as libc::c_int;
    // SAFETY: the iovecs point into guest RAM, bounds-checked by chain_iovecs_into against
    // the guest memory regions, which the caller's GuestMemoryMmap keeps mapped for the
    // call; the kernel only reads (write, writev) or writes (read, readv) those bytes.
    let n = unsafe {
        match (write, iovs) {
            (true, [one]) => libc::write(fd, one.iov_base, one.iov_len),
            (false, [one]) => libc::read(fd, one.iov_base, one.iov_len),
            (true, _) => libc::writev(fd, iovs.as_ptr(), count),
            (false, _) => libc::readv(fd, iovs.as_ptr(), count),
        }
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Copy the bytes at `offset` of the buffers `iovs` into `out`; how many there were.
pub(super) fn read_iovs<'a>(
    iovs: impl IntoIterator<Item = &'a libc::iovec>,
    mut offset: usize,
    out: &mut [u8],
) -> usize {
    let mut done = 0;
    for v in iovs {
        if done == out.len() {
            break;
        }
        if offset >= v.iov_len {
            offset -= v.iov_len;
            continue;
        }
        let n = (v.iov_len - offset).min(out.len() - done);
        // SAFETY: the iovec points into guest RAM, bounds-checked by chain_iovecs_into and kept
        // mapped by the device's Core; `offset + n` is within it and `n` within `out`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (v.iov_base as *const u8).add(offset),
                out.as_mut_ptr().add(done),
                n,
            )
        };
        done += n;
        offset = 0;
    }
    done
}

/// Copy `data` to offset `at` of the buffers `iovs`; false if they hold fewer bytes.
pub(super) fn write_front_at<'a>(
    iovs: impl IntoIterator<Item = &'a libc::iovec>,
    mut at: usize,
    mut data: &[u8],
) -> bool {
    for v in iovs {
        if data.is_empty() {
            break;
        }
        if at >= v.iov_len {
            at -= v.iov_len;
            continue;
        }
        let n = (v.iov_len - at).min(data.len());
        // SAFETY: the iovec points into guest RAM, bounds-checked by chain_iovecs_into and kept
        // mapped by the device's Core; `at + n` is within it.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), (v.iov_base as *mut u8).add(at), n) };
        data = &data[n..];
        at = 0;
    }
    data.is_empty()
}
