//! Copies and vectored I/O over iovecs that point into guest RAM (bounds-checked by
//! chain_iovecs / guest_iovecs, kept mapped by the device's Core).

use std::os::fd::RawFd;

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

/// Copy `data` into the start of `iovs` (guest buffers); false if they hold fewer bytes.
pub(super) fn write_front(iovs: &[libc::iovec], mut data: &[u8]) -> bool {
    for v in iovs {
        if data.is_empty() {
            break;
        }
        let n = v.iov_len.min(data.len());
        // SAFETY: the iovec points into guest RAM, bounds-checked by chain_iovecs and kept
        // mapped by the caller's GuestMemoryMmap; `n` is within both buffers.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), v.iov_base as *mut u8, n) };
        data = &data[n..];
    }
    data.is_empty()
}

/// readv/writev on `fd` over `iovs` (at most IOV_MAX of them).
pub(super) fn vectored(fd: RawFd, write: bool, iovs: &[libc::iovec]) -> std::io::Result<usize> {
    let count = iovs.len().min(1024) as libc::c_int;
    // SAFETY: the iovecs point into guest RAM, bounds-checked by chain_iovecs against the
    // guest memory regions, which the caller's GuestMemoryMmap keeps mapped for the call;
    // the kernel only reads (writev) or writes (readv) those bytes.
    let n = unsafe {
        if write {
            libc::writev(fd, iovs.as_ptr(), count)
        } else {
            libc::readv(fd, iovs.as_ptr(), count)
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
        // SAFETY: the iovec points into guest RAM, bounds-checked by guest_iovecs and kept
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
        // SAFETY: the iovec points into guest RAM, bounds-checked by guest_iovecs and kept
        // mapped by the device's Core; `at + n` is within it.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), (v.iov_base as *mut u8).add(at), n) };
        data = &data[n..];
        at = 0;
    }
    data.is_empty()
}
