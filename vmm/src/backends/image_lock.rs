//! QEMU's image locking (block/file-posix.c) with fcntl OFD locks, so that machina and QEMU
//! see each other's users of an image.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::reason;

// QEMU's image locking (block/file-posix.c): one byte per permission at 100 + bit, held
// (shared) by whoever uses that permission, and one at 200 + bit, held by whoever does not
// share it. A user checks that nobody else holds the byte that would contradict it.
const LOCK_PERM_BASE: i64 = 100;
const LOCK_SHARED_BASE: i64 = 200;
pub(super) const PERM_CONSISTENT_READ: u32 = 1 << 0;
pub(super) const PERM_WRITE: u32 = 1 << 1;
pub(super) const PERM_WRITE_UNCHANGED: u32 = 1 << 2;
pub(super) const PERM_RESIZE: u32 = 1 << 3;
const PERM_NAMES: [&str; 4] = ["consistent read", "write", "write unchanged", "resize"];
pub(super) const PERM_ALL: u32 = 0xf;

fn ofd_lock(file: &File, offset: i64, kind: libc::c_int, cmd: libc::c_int) -> std::io::Result<i32> {
    // SAFETY: an all-zero `flock` is valid (OFD locks require l_pid == 0).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = offset;
    fl.l_len = 1;
    // SAFETY: F_OFD_SETLK/F_OFD_GETLK read (and GETLK writes) the `flock` we pass, which
    // lives for the call; the descriptor is ours.
    if unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl as *mut libc::flock) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(i32::from(fl.l_type))
}

/// Take QEMU's lock bytes on `file` for a device using `perm` and sharing `shared`, then
/// check that no other open file (this process's or another's) contradicts them.
pub(super) fn lock_image(
    file: &File,
    path: &Path,
    perm: u32,
    shared: u32,
) -> Result<(), (String, String)> {
    let hint = format!("Is another process using the image [{}]?", path.display());
    let failed = |offset: i64, e: std::io::Error| {
        (
            format!("Failed to lock byte {offset}: {}", reason(&e)),
            hint.clone(),
        )
    };
    for bit in 0..PERM_NAMES.len() {
        let p = 1u32 << bit;
        for (wanted, base) in [
            (perm & p != 0, LOCK_PERM_BASE),
            (shared & p == 0, LOCK_SHARED_BASE),
        ] {
            if wanted {
                let offset = base + bit as i64;
                ofd_lock(file, offset, libc::F_RDLCK, libc::F_OFD_SETLK)
                    .map_err(|e| failed(offset, e))?;
            }
        }
    }
    // A test with a write lock reports any lock another open file holds on the byte.
    let held = |offset: i64| {
        ofd_lock(file, offset, libc::F_WRLCK, libc::F_OFD_GETLK)
            .map(|t| t != libc::F_UNLCK)
            .map_err(|e| failed(offset, e))
    };
    for (bit, name) in PERM_NAMES.iter().enumerate() {
        let p = 1u32 << bit;
        if perm & p != 0 && held(LOCK_SHARED_BASE + bit as i64)? {
            return Err((format!("Failed to get \"{name}\" lock"), hint));
        }
    }
    for (bit, name) in PERM_NAMES.iter().enumerate() {
        let p = 1u32 << bit;
        if shared & p == 0 && held(LOCK_PERM_BASE + bit as i64)? {
            return Err((format!("Failed to get shared \"{name}\" lock"), hint));
        }
    }
    Ok(())
}
