//! `-daemonize` and `-pidfile` with QEMU's semantics (os-posix.c, util/oslib-posix.c): the
//! invoking process waits until the daemon's monitors listen and exits 0, or exits 1 if the
//! daemon failed first (the daemon prints its error on the stderr they share); the pid file
//! is created after the fork, locked with fcntl so that a second instance fails, holds the
//! daemon's pid and is removed at exit.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create PID file: Could not create '{path}': {reason}")]
    Create { path: String, reason: String },
    #[error("cannot create PID file: Cannot stat file: {0}")]
    Stat(String),
    #[error("cannot create PID file: Cannot lock pid file: {0}")]
    Lock(String),
    #[error("cannot create PID file: Failed to truncate pid file: {0}")]
    Truncate(String),
    #[error("cannot create PID file: Failed to write pid file")]
    Write,
    #[error("cannot daemonize: {0}")]
    Fork(String),
}

/// strerror(3) text of an I/O error, without Rust's " (os error N)" suffix.
pub fn strerror(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// The pid file to remove at exit, for exit paths that do not unwind to the `PidFile`'s
/// drop (`std::process::exit` runs atexit handlers, as QEMU's exit notifier).
static REMOVE_AT_EXIT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

extern "C" fn remove_at_exit() {
    if let Ok(mut path) = REMOVE_AT_EXIT.try_lock() {
        if let Some(path) = path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A locked pid file; the lock lives as long as the open file, the file until drop.
pub struct PidFile {
    /// The resolved path to remove at exit (None: could not be resolved, left in place).
    remove: Option<PathBuf>,
    _file: File,
}

impl PidFile {
    pub fn create(path: &Path) -> Result<PidFile, DaemonError> {
        let shown = path.display().to_string();
        let file = loop {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(|e| DaemonError::Create {
                    path: shown.clone(),
                    reason: strerror(&e),
                })?;
            let opened = file
                .metadata()
                .map_err(|e| DaemonError::Stat(strerror(&e)))?;
            let lock = libc::flock {
                l_type: libc::F_WRLCK as libc::c_short,
                l_whence: libc::SEEK_SET as libc::c_short,
                l_start: 0,
                l_len: 0,
                l_pid: 0,
            };
            // SAFETY: F_SETLK with a valid flock struct on an fd this function owns.
            if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) } != 0 {
                return Err(DaemonError::Lock(
                    strerror(&std::io::Error::last_os_error()),
                ));
            }
            // The path locked must still be the file on disk: another instance may have
            // removed and recreated it meanwhile (QEMU's loop).
            match std::fs::metadata(path) {
                Ok(now) if now.ino() == opened.ino() && now.dev() == opened.dev() => break file,
                _ => continue,
            }
        };
        file.set_len(0)
            .map_err(|e| DaemonError::Truncate(strerror(&e)))?;
        (&file)
            .write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(|_| DaemonError::Write)?;
        let remove = match std::fs::canonicalize(path) {
            Ok(p) => Some(p),
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    eprintln!(
                        "machina: warning: not removing PID file on exit: cannot resolve PID file path: {}: {}",
                        path.display(),
                        strerror(&e)
                    );
                }
                None
            }
        };
        if let Some(path) = &remove {
            *REMOVE_AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()) = Some(path.clone());
            // SAFETY: registers a plain extern "C" function without arguments.
            unsafe { libc::atexit(remove_at_exit) };
        }
        Ok(PidFile {
            remove,
            _file: file,
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Some(path) = &self.remove {
            let _ = std::fs::remove_file(path);
            REMOVE_AT_EXIT
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
        }
    }
}

/// The daemon's end of the pipe to the waiting parent.
pub struct Daemon {
    pipe: Option<OwnedFd>,
}

/// Fork into the background as QEMU does: the caller returns only in the daemon (a
/// grandchild in its own session); the original process waits for `Daemon::ready` and exits
/// 0, or exits 1 if the daemon exits first. Must run before any thread is started.
pub fn daemonize() -> Result<Daemon, DaemonError> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(DaemonError::Fork(
            strerror(&std::io::Error::last_os_error()),
        ));
    }
    // SAFETY: both fds were just created by pipe2 and are owned here alone.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the process is single-threaded here (the caller's contract), so the child
    // may keep running Rust code after fork.
    match unsafe { libc::fork() } {
        -1 => {
            return Err(DaemonError::Fork(
                strerror(&std::io::Error::last_os_error()),
            ))
        }
        0 => {}
        _ => {
            drop(write_end);
            let mut status = [1u8; 1];
            let n = loop {
                // SAFETY: reads at most one byte into a one-byte buffer.
                let n = unsafe { libc::read(read_end.as_raw_fd(), status.as_mut_ptr().cast(), 1) };
                if n < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                break n;
            };
            // Only a zero byte written by the daemon once it is ready means success.
            let code = if n == 1 && status[0] == 0 { 0 } else { 1 };
            // SAFETY: ends the waiting parent without running anything else.
            unsafe { libc::_exit(code) }
        }
    }
    drop(read_end);
    // SAFETY: setsid and fork in the (single-threaded) child.
    unsafe {
        libc::setsid();
        match libc::fork() {
            -1 => libc::_exit(1),
            0 => {}
            _ => libc::_exit(0),
        }
        libc::umask(0o027);
        libc::signal(libc::SIGTSTP, libc::SIG_IGN);
        libc::signal(libc::SIGTTOU, libc::SIG_IGN);
        libc::signal(libc::SIGTTIN, libc::SIG_IGN);
    }
    Ok(Daemon {
        pipe: Some(write_end),
    })
}

impl Daemon {
    /// The monitors listen: stdio goes to /dev/null and the parent exits 0.
    pub fn ready(&mut self) -> Result<(), String> {
        let Some(pipe) = self.pipe.take() else {
            return Ok(());
        };
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| format!("cannot open /dev/null: {}", strerror(&e)))?;
        // SAFETY: dup2 onto the standard fds, from a file that is open.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
            libc::dup2(null.as_raw_fd(), 2);
        }
        let status = [0u8; 1];
        // SAFETY: writes one byte from a one-byte buffer to the pipe this struct owns.
        let n = unsafe { libc::write(pipe.as_raw_fd(), status.as_ptr().cast(), 1) };
        if n != 1 {
            return Err("cannot notify the parent process".into());
        }
        Ok(())
    }
}
