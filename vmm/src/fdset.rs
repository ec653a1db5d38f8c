//! File descriptor sets (`-add-fd set=N,fd=M[,opaque=TEXT]`, QEMU's monitor/fds.c): fds a
//! management layer passes down, opened later through paths `/dev/fdset/N`. Opening such a
//! path duplicates the fd of set N whose access mode (O_RDONLY/O_WRONLY/O_RDWR) matches the
//! one asked for, as `qemu_open` does; any other path is opened normally.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FdSetError {
    #[error("-add-fd {0}: fd option is required and must be non-negative")]
    NoFd(String),
    #[error("-add-fd {0}: fd cannot be a standard I/O stream")]
    StdioFd(String),
    #[error("-add-fd {0}: fd is not valid or already in use")]
    BadFd(String),
    #[error("-add-fd {0}: set option is required and must be non-negative")]
    NoSet(String),
    #[error("-add-fd {0}: Invalid parameter '{1}'")]
    BadParameter(String, String),
    #[error("-add-fd {0}: error duplicating fd: {1}")]
    Dup(String, String),
}

/// One fd of a set, with the text the caller attached.
#[derive(Debug)]
pub struct FdEntry {
    pub fd: OwnedFd,
    pub opaque: Option<String>,
}

#[derive(Debug)]
pub struct FdSet {
    pub id: i64,
    pub fds: Vec<FdEntry>,
}

/// The process's fd sets: one registry, as in QEMU, so that every opener (chardevs, disks,
/// QMP's `query-fdsets` later) sees the same sets.
static SETS: Mutex<Vec<FdSet>> = Mutex::new(Vec::new());

/// `-add-fd set=N,fd=M[,opaque=TEXT]`: the fd is duplicated (close-on-exec) into set N; the
/// original is closed once everything is set up, as QEMU does (`close_inherited`).
pub fn add_from_cli(spec: &str) -> Result<i32, FdSetError> {
    let mut fd: i64 = -1;
    let mut set: i64 = -1;
    let mut opaque = None;
    for item in crate::cli::split_keyval(spec) {
        let (k, v) = item.split_once('=').unwrap_or((item.as_str(), ""));
        match k {
            "fd" => fd = v.parse().unwrap_or(-1),
            "set" => set = v.parse().unwrap_or(-1),
            "opaque" => opaque = Some(v.to_string()),
            other => return Err(FdSetError::BadParameter(spec.into(), other.into())),
        }
    }
    if fd < 0 || fd > i64::from(i32::MAX) {
        return Err(FdSetError::NoFd(spec.into()));
    }
    let fd = fd as i32;
    if fd <= libc::STDERR_FILENO {
        return Err(FdSetError::StdioFd(spec.into()));
    }
    // SAFETY: F_GETFD only reads the flags of whatever fd number this is.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    // Inherited fds have FD_CLOEXEC clear; machina's own fds all have it set.
    if flags == -1 || flags & libc::FD_CLOEXEC != 0 {
        return Err(FdSetError::BadFd(spec.into()));
    }
    if set < 0 {
        return Err(FdSetError::NoSet(spec.into()));
    }
    // SAFETY: duplicates a valid fd (checked above) into a new one owned below.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        let e = std::io::Error::last_os_error();
        return Err(FdSetError::Dup(spec.into(), crate::daemon::strerror(&e)));
    }
    // SAFETY: `dup` is a fresh fd that nothing else owns.
    let fd_owned = unsafe { OwnedFd::from_raw_fd(dup) };
    let entry = FdEntry {
        fd: fd_owned,
        opaque,
    };
    let mut sets = SETS.lock().unwrap_or_else(|e| e.into_inner());
    match sets.iter_mut().find(|s| s.id == set) {
        Some(s) => s.fds.push(entry),
        None => sets.push(FdSet {
            id: set,
            fds: vec![entry],
        }),
    }
    Ok(fd)
}

/// Close the inherited originals of `-add-fd` once the sets hold their duplicates.
pub fn close_inherited(fds: &[i32]) {
    for &fd in fds {
        // SAFETY: these fds were handed to machina for -add-fd; the sets own duplicates,
        // and nothing else in machina uses the original numbers.
        unsafe { libc::close(fd) };
    }
}

/// One set as monitors show it: its id and (fd, opaque) of each member.
pub type SetInfo = (i64, Vec<(i32, Option<String>)>);

/// Every set, for monitors (`query-fdsets`).
pub fn snapshot() -> Vec<SetInfo> {
    SETS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|s| {
            (
                s.id,
                s.fds
                    .iter()
                    .map(|f| (f.fd.as_raw_fd(), f.opaque.clone()))
                    .collect(),
            )
        })
        .collect()
}

/// The set number of a `/dev/fdset/N` path.
pub fn set_of(path: &Path) -> Option<Result<i64, ()>> {
    let rest = path.as_os_str().as_bytes().strip_prefix(b"/dev/fdset/")?;
    Some(
        std::str::from_utf8(rest)
            .ok()
            .and_then(|n| n.parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or(()),
    )
}

/// Open `path` with `flags` (O_ACCMODE plus O_APPEND/O_TRUNC/O_CREAT/O_DIRECT ...) as QEMU's
/// `qemu_open`: `/dev/fdset/N` yields a duplicate of the set's fd with the same access mode
/// (ENOENT if there is no such set, EACCES if no fd matches), anything else `open(2)`.
pub fn open(path: &Path, flags: i32, mode: u32) -> std::io::Result<File> {
    let Some(set) = set_of(path) else {
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a NUL-terminated path; the returned fd is owned by the File below.
        let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd was just opened and nothing else owns it.
        return Ok(unsafe { File::from_raw_fd(fd) });
    };
    let set = set.map_err(|()| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let sets = SETS.lock().unwrap_or_else(|e| e.into_inner());
    let entries = &sets
        .iter()
        .find(|s| s.id == set)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT))?
        .fds;
    for entry in entries {
        // SAFETY: F_GETFL reads the status flags of an fd the set owns.
        let have = unsafe { libc::fcntl(entry.fd.as_raw_fd(), libc::F_GETFL) };
        if have == -1 || have & libc::O_ACCMODE != flags & libc::O_ACCMODE {
            continue;
        }
        // SAFETY: duplicates an fd the set owns into a new one owned by the File below.
        let dup = unsafe { libc::fcntl(entry.fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `dup` is fresh and owned by nobody else.
        let file = unsafe { File::from_raw_fd(dup) };
        // Status flags the caller asked for (append, direct, non-blocking), as
        // qemu_dup_flags sets them; they are shared with the set's fd, as in QEMU.
        let settable = libc::O_APPEND | libc::O_DIRECT | libc::O_NONBLOCK;
        let want = (have & !settable) | (flags & settable);
        if want != have {
            // SAFETY: F_SETFL on the fd the File owns.
            if unsafe { libc::fcntl(dup, libc::F_SETFL, want) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if flags & libc::O_TRUNC != 0 {
            file.set_len(0)?;
        }
        return Ok(file);
    }
    Err(std::io::Error::from_raw_os_error(libc::EACCES))
}

/// Whether `path` names an fd set (so that callers skip checks a path needs, like stat).
pub fn is_fdset(path: &Path) -> bool {
    set_of(path).is_some()
}

/// Descriptors a monitor client passed with `getfd` (QEMU's per-monitor fd list; here one
/// list for the process), by name, until a backend takes one (`netdev_add ...,fd=NAME`) or
/// `closefd` closes it.
static NAMED: Mutex<Vec<(String, OwnedFd)>> = Mutex::new(Vec::new());

/// `getfd`: keep `fd` as `name`, closing a previous fd of that name (as QEMU does).
pub fn put_named(name: &str, fd: OwnedFd) {
    let mut named = NAMED.lock().unwrap_or_else(|e| e.into_inner());
    named.retain(|(n, _)| n != name);
    named.push((name.to_string(), fd));
}

/// Take the fd named `name` (a backend now owns it).
pub fn take_named(name: &str) -> Option<OwnedFd> {
    let mut named = NAMED.lock().unwrap_or_else(|e| e.into_inner());
    let pos = named.iter().position(|(n, _)| n == name)?;
    Some(named.remove(pos).1)
}
