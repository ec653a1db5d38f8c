//! Character backends for the serial console (`-serial`): where the guest's output goes and
//! where its input comes from. They outlive machine resets.

use crate::cli::SerialSpec;
use devices::legacy::serial::SharedWriter;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("-serial file:{path}: could not open '{path}': {source}")]
    OpenFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("-serial unix:{path}: could not listen: {source}")]
    Listen {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Could not open '{path}': {reason}")]
    OpenChardevFile { path: String, reason: String },
    #[error("cannot set up the pty: {0}")]
    Pty(String),
    #[error("-chardev socket,fd={0}: fd {0} is not a listening socket")]
    NotListening(i32),
}

/// A pseudo-terminal pair (`-chardev pty`): machina keeps the master for the guest's
/// console and also holds the slave open, so that the terminal stays in raw mode and
/// output written while no client is attached never fails with EIO (it is dropped once the
/// pty's buffer is full, as QEMU drops output for an unconnected pty).
#[derive(Debug)]
pub struct Pty {
    master: OwnedFd,
    _slave: OwnedFd,
    pub path: PathBuf,
}

/// A shared, opened pty: the spec of a serial port that uses it (compared by path).
#[derive(Debug, Clone)]
pub struct PtyHandle(pub Arc<Pty>);

impl PartialEq for PtyHandle {
    fn eq(&self, other: &Self) -> bool {
        self.0.path == other.0.path
    }
}
impl Eq for PtyHandle {}

fn last_error() -> String {
    crate::daemon::strerror(&std::io::Error::last_os_error())
}

impl Pty {
    /// Open a pty pair in raw mode, as QEMU's `pty` chardev does.
    pub fn open() -> Result<PtyHandle, ConsoleError> {
        // SAFETY: posix_openpt returns a new fd (or -1) that is owned below.
        let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
        if master < 0 {
            return Err(ConsoleError::Pty(last_error()));
        }
        // SAFETY: `master` is a fresh fd nothing else owns.
        let master = unsafe { OwnedFd::from_raw_fd(master) };
        // SAFETY: grantpt/unlockpt on the pty master just opened.
        let unlocked = unsafe {
            libc::grantpt(master.as_raw_fd()) == 0 && libc::unlockpt(master.as_raw_fd()) == 0
        };
        if !unlocked {
            return Err(ConsoleError::Pty(last_error()));
        }
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: ptsname_r writes a NUL-terminated name into the buffer of the given size.
        if unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) } != 0 {
            return Err(ConsoleError::Pty(last_error()));
        }
        // SAFETY: ptsname_r succeeded, so `name` is NUL-terminated.
        let cname = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(cname.to_bytes()));
        // SAFETY: opens the slave by the name just obtained; owned below.
        let slave = unsafe {
            libc::open(
                cname.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        };
        if slave < 0 {
            return Err(ConsoleError::Pty(last_error()));
        }
        // SAFETY: `slave` is a fresh fd nothing else owns.
        let slave = unsafe { OwnedFd::from_raw_fd(slave) };
        // SAFETY: termios is plain data; tcgetattr fills it, cfmakeraw edits it.
        unsafe {
            let mut tty: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(slave.as_raw_fd(), &mut tty) == 0 {
                libc::cfmakeraw(&mut tty);
                libc::tcsetattr(slave.as_raw_fd(), libc::TCSAFLUSH, &tty);
            }
            // The guest's output must never block a vCPU.
            let flags = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(master.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        Ok(PtyHandle(Arc::new(Pty {
            master,
            _slave: slave,
            path,
        })))
    }

    /// A new File on the master (for output or input).
    fn master_file(&self) -> Result<File, ConsoleError> {
        let fd = self
            .master
            .try_clone()
            .map_err(|e| ConsoleError::Pty(crate::daemon::strerror(&e)))?;
        Ok(File::from(fd))
    }
}

/// A chardev file opened at start (compared by path).
#[derive(Debug, Clone)]
pub struct FileHandle {
    pub file: Arc<File>,
    pub path: PathBuf,
}

impl PartialEq for FileHandle {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}
impl Eq for FileHandle {}

impl FileHandle {
    /// Open a `-chardev file` output as QEMU does (O_WRONLY|O_CREAT, and O_APPEND with
    /// append=on, else O_TRUNC); `/dev/fdset/N` takes the fd passed with `-add-fd`.
    pub fn open(path: &std::path::Path, append: bool) -> Result<FileHandle, ConsoleError> {
        Ok(FileHandle {
            file: Arc::new(open_output_file(path, append)?),
            path: path.to_path_buf(),
        })
    }
}

/// Output to the chardev's own open file (no second fd).
struct SharedFile(Arc<File>);

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self.0).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        (&*self.0).flush()
    }
}

/// Output to a pty master: what does not fit (no reader, full buffer) is dropped.
struct DroppingWriter(File);

impl Write for DroppingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.write(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(buf.len()),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(buf.len()),
            other => other,
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Open a chardev's output file as QEMU does (O_WRONLY|O_CREAT, O_APPEND or O_TRUNC);
/// `/dev/fdset/N` takes the fd passed with `-add-fd`.
fn open_output_file(path: &std::path::Path, append: bool) -> Result<File, ConsoleError> {
    let mode = if append {
        libc::O_APPEND
    } else {
        libc::O_TRUNC
    };
    crate::fdset::open(path, libc::O_WRONLY | libc::O_CREAT | mode, 0o666).map_err(|e| {
        ConsoleError::OpenChardevFile {
            path: path.display().to_string(),
            reason: crate::daemon::strerror(&e),
        }
    })
}

/// Where console input comes from.
pub enum ConsoleInput {
    None,
    Stdin,
    /// A listening socket; a connected client is input and output.
    Socket {
        listener: UnixListener,
        client: Option<UnixStream>,
    },
    /// A readable fd (a pty master), non-blocking.
    Fd(File),
}

pub struct Console {
    pub output: SharedWriter,
    pub input: ConsoleInput,
    /// A socket path to remove on exit.
    pub socket_path: Option<PathBuf>,
}

impl Console {
    pub fn open(spec: &SerialSpec) -> Result<Self, ConsoleError> {
        let (output, input, socket_path): (Box<dyn Write + Send>, _, _) = match spec {
            SerialSpec::Stdio => (Box::new(std::io::stdout()), ConsoleInput::Stdin, None),
            SerialSpec::Null | SerialSpec::None => {
                (Box::new(std::io::sink()), ConsoleInput::None, None)
            }
            SerialSpec::File(path) if crate::fdset::is_fdset(path) => {
                let file = open_output_file(path, false)?;
                (Box::new(file), ConsoleInput::None, None)
            }
            SerialSpec::File(path) => {
                let file =
                    std::fs::File::create(path).map_err(|source| ConsoleError::OpenFile {
                        path: path.display().to_string(),
                        source,
                    })?;
                (Box::new(file), ConsoleInput::None, None)
            }
            SerialSpec::OpenFile(handle) => (
                Box::new(SharedFile(handle.file.clone())),
                ConsoleInput::None,
                None,
            ),
            SerialSpec::ListenFd(fd) => {
                let fd = *fd;
                let mut listening: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: SO_ACCEPTCONN writes one c_int into `listening`; a bad fd fails.
                let r = unsafe {
                    libc::getsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_ACCEPTCONN,
                        (&mut listening as *mut libc::c_int).cast(),
                        &mut len,
                    )
                };
                if r != 0 || listening == 0 {
                    return Err(ConsoleError::NotListening(fd));
                }
                // SAFETY: the fd was handed to machina for this chardev, which alone owns it
                // from here; close-on-exec as for every fd machina keeps.
                let listener = unsafe {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                    UnixListener::from_raw_fd(fd)
                };
                listener
                    .set_nonblocking(true)
                    .map_err(|_| ConsoleError::NotListening(fd))?;
                (
                    Box::new(std::io::sink()),
                    ConsoleInput::Socket {
                        listener,
                        client: None,
                    },
                    None,
                )
            }
            SerialSpec::Pty(pty) => {
                let output = DroppingWriter(pty.0.master_file()?);
                (
                    Box::new(output),
                    ConsoleInput::Fd(pty.0.master_file()?),
                    None,
                )
            }
            SerialSpec::UnixServer { path, wait } => {
                let listen_err = |source| ConsoleError::Listen {
                    path: path.display().to_string(),
                    source,
                };
                // Like QEMU, replace a stale socket file; 0600 from the start.
                let listener = qmp::bind_unix_private(path).map_err(listen_err)?;
                // wait=on: block until the first client connects, as QEMU does.
                let client = if *wait {
                    let stream = listener.accept().map_err(listen_err)?.0;
                    // Output to a client that stops reading is dropped, never waited for.
                    stream.set_nonblocking(true).map_err(listen_err)?;
                    Some(stream)
                } else {
                    None
                };
                listener.set_nonblocking(true).map_err(listen_err)?;
                let output: Box<dyn Write + Send> = match &client {
                    Some(stream) => Box::new(stream.try_clone().map_err(listen_err)?),
                    None => Box::new(std::io::sink()),
                };
                (
                    output,
                    ConsoleInput::Socket { listener, client },
                    Some(path.clone()),
                )
            }
        };
        Ok(Self {
            output: SharedWriter::new(output),
            input,
            socket_path,
        })
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}
