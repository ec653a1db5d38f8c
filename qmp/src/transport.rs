//! Sockets: binding (unix, tcp, inherited fd), accepting, and the byte streams
//! a session reads and writes.

use crate::error::ServerError;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::io::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a server ended up listening (or that it connected / serves stdio).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
    /// An inherited listening fd.
    Fd(RawFd),
    /// Client mode: connected to a listening peer.
    Connected,
    Stdio,
}

/// A connected stream.
pub(crate) enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    pub(crate) fn try_clone(&self) -> io::Result<Conn> {
        Ok(match self {
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
        })
    }

    /// Writes `buf` without blocking (MSG_DONTWAIT): how many bytes the socket took, 0 when
    /// it would block or failed (the caller queues what is left for the writer thread).
    pub(crate) fn send_now(&self, buf: &[u8]) -> usize {
        let fd = match self {
            Conn::Unix(s) => s.as_raw_fd(),
            Conn::Tcp(s) => s.as_raw_fd(),
        };
        // SAFETY: `fd` is this open socket and `buf` is valid for `buf.len()` bytes.
        let n = unsafe {
            libc::send(
                fd,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        usize::try_from(n).unwrap_or(0)
    }

    pub(crate) fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Conn::Unix(s) => s.shutdown(how),
            Conn::Tcp(s) => s.shutdown(how),
        };
    }

    pub(crate) fn set_write_timeout(&self, d: Option<Duration>) {
        let _ = match self {
            Conn::Unix(s) => s.set_write_timeout(d),
            Conn::Tcp(s) => s.set_write_timeout(d),
        };
    }
}

/// The most descriptors one message may carry (QEMU's chardev socket takes 253).
const MAX_PASSED_FDS: usize = 16;

thread_local! {
    /// Descriptors the client passed (SCM_RIGHTS) with the bytes this thread read last: a
    /// session's reader thread reads and then runs the commands of what it read, so the
    /// command of that message (`getfd`) finds them here.
    static PASSED: std::cell::RefCell<Vec<OwnedFd>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Take the oldest descriptor passed with the message being handled, if any.
pub fn take_passed_fd() -> Option<OwnedFd> {
    PASSED.with(|p| {
        let mut p = p.borrow_mut();
        (!p.is_empty()).then(|| p.remove(0))
    })
}

/// `read` on a unix socket that also takes the descriptors passed with the bytes (close on
/// exec), replacing those of the previous read that no command took (closed, as QEMU does).
fn recv_with_fds(s: &UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE((MAX_PASSED_FDS * std::mem::size_of::<RawFd>()) as u32) }
        as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: the socket is open; msg points at live buffers of the sizes given.
    let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control buffer recvmsg filled, with the kernel's lengths.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.add(i));
                    // The kernel installed it in this process for us: ours to own.
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if !fds.is_empty() {
        PASSED.with(|p| *p.borrow_mut() = fds);
    }
    Ok(n as usize)
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => recv_with_fds(s, buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.flush(),
            Conn::Tcp(s) => s.flush(),
        }
    }
}

/// A listening socket.
pub(crate) enum Listener {
    /// `owned_path`: the socket file we created, removed on shutdown.
    Unix(UnixListener, Option<PathBuf>),
    Tcp(TcpListener),
}

impl Listener {
    pub(crate) fn accept(&self) -> io::Result<Conn> {
        match self {
            Listener::Unix(l, _) => l.accept().map(|(s, _)| Conn::Unix(s)),
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                let _ = s.set_nodelay(true);
                Ok(Conn::Tcp(s))
            }
        }
    }

    pub(crate) fn addr(&self) -> BoundAddr {
        match self {
            Listener::Unix(l, path) => match path {
                Some(p) => BoundAddr::Unix(p.clone()),
                None => l
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(Path::to_path_buf))
                    .map(BoundAddr::Unix)
                    .unwrap_or(BoundAddr::Connected),
            },
            Listener::Tcp(l) => l
                .local_addr()
                .map(BoundAddr::Tcp)
                .unwrap_or(BoundAddr::Connected),
        }
    }

    /// Unblocks a thread sitting in `accept` by connecting to ourselves.
    pub(crate) fn wake(&self) -> bool {
        match self {
            Listener::Unix(l, _) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(UnixStream::connect))
                .is_some_and(|r| r.is_ok()),
            Listener::Tcp(l) => {
                let Ok(mut addr) = l.local_addr() else {
                    return false;
                };
                if addr.ip().is_unspecified() {
                    addr.set_ip(match addr.ip() {
                        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                    });
                }
                TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
            }
        }
    }

    /// Removes the socket file we created (QEMU does so at exit too).
    pub(crate) fn cleanup(&self) {
        if let Listener::Unix(_, Some(path)) = self {
            if is_socket(path) {
                let _ = fs::remove_file(path);
            }
        }
    }
}

fn is_socket(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// Binds a listening unix socket at `path` whose file is 0600 from the moment it exists,
/// replacing a stale file (not a directory) as QEMU does. The mode is set on the socket with
/// fchmod before bind (Linux creates the file with the socket's mode less the umask), so
/// there is no window in which another user could connect, and no process-wide umask change
/// that would race with other threads creating files.
pub fn bind_unix_private(path: &Path) -> io::Result<UnixListener> {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    if let Ok(meta) = fs::symlink_metadata(path) {
        if !meta.is_dir() {
            fs::remove_file(path)?;
        }
    }
    // SAFETY: socket() takes no pointers; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fchmod on a descriptor we own; no memory is passed.
    if unsafe { libc::fchmod(socket.as_raw_fd(), 0o600) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path must be shorter than SUN_LEN",
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a sockaddr_un whose first `len` bytes hold the family and the
    // NUL-terminated path; it outlives the call.
    let r = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            len as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // A kernel that ignored the socket's mode: tighten at once rather than leave it open.
    if fs::symlink_metadata(path)?.permissions().mode() & 0o177 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    }
    // SAFETY: listen() on a bound socket we own; no memory is passed.
    if unsafe { libc::listen(socket.as_raw_fd(), 128) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixListener::from(socket))
}

/// Binds a unix socket, replacing a stale file, readable by the owner only.
pub(crate) fn bind_unix(path: &Path) -> Result<Listener, ServerError> {
    let l = bind_unix_private(path).map_err(|source| ServerError::Bind {
        addr: path.display().to_string(),
        source,
    })?;
    Ok(Listener::Unix(l, Some(path.to_path_buf())))
}

pub(crate) fn bind_tcp(host: &str, port: u16) -> Result<Listener, ServerError> {
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    let l = TcpListener::bind((host, port)).map_err(|source| ServerError::Bind {
        addr: format!("{host}:{port}"),
        source,
    })?;
    Ok(Listener::Tcp(l))
}

pub(crate) fn connect_unix(path: &Path) -> Result<Conn, ServerError> {
    UnixStream::connect(path)
        .map(Conn::Unix)
        .map_err(|source| ServerError::Connect {
            addr: path.display().to_string(),
            source,
        })
}

pub(crate) fn connect_tcp(host: &str, port: u16) -> Result<Conn, ServerError> {
    let host = if host.is_empty() { "localhost" } else { host };
    TcpStream::connect((host, port))
        .map(Conn::Tcp)
        .map_err(|source| ServerError::Connect {
            addr: format!("{host}:{port}"),
            source,
        })
}

/// Takes ownership of an inherited socket: a listener, or (`server: false`) a connection.
pub(crate) fn from_fd(fd: RawFd, server: bool) -> Result<Result<Listener, Conn>, ServerError> {
    if fd < 0 {
        return Err(ServerError::BadFd(fd));
    }
    if server {
        // SAFETY: the VMM was handed `fd` on its command line to own; nothing else
        // in this process uses it, so wrapping it transfers that ownership here.
        let ul = unsafe { UnixListener::from_raw_fd(fd) };
        if ul.local_addr().is_ok() {
            return Ok(Ok(Listener::Unix(ul, None)));
        }
        let fd = ul.into_raw_fd();
        // SAFETY: same descriptor, ownership handed back by `into_raw_fd` above.
        let tl = unsafe { TcpListener::from_raw_fd(fd) };
        if tl.local_addr().is_ok() {
            return Ok(Ok(Listener::Tcp(tl)));
        }
        return Err(ServerError::BadFd(fd));
    }
    // SAFETY: as above; an owned, connected socket passed by the parent.
    let us = unsafe { UnixStream::from_raw_fd(fd) };
    if us.local_addr().is_ok() {
        return Ok(Err(Conn::Unix(us)));
    }
    let fd = us.into_raw_fd();
    // SAFETY: same descriptor, ownership handed back by `into_raw_fd` above.
    let ts = unsafe { TcpStream::from_raw_fd(fd) };
    if ts.local_addr().is_ok() {
        return Ok(Err(Conn::Tcp(ts)));
    }
    Err(ServerError::BadFd(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The greeting's direct write takes what the socket has room for and never blocks: a
    /// client that reads nothing leaves a full buffer, and the rest goes to the writer thread.
    #[test]
    fn send_now_never_blocks() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let conn = Conn::Unix(ours);
        assert_eq!(conn.send_now(b"hello\n"), 6);
        let mut got = [0u8; 6];
        theirs.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello\n");
        // Fill the socket: the peer never reads.
        let chunk = vec![0u8; 64 << 10];
        let mut filled = 0;
        while conn.send_now(&chunk) > 0 {
            filled += 1;
            assert!(filled < 10_000, "the socket buffer never filled");
        }
        assert_eq!(conn.send_now(b"more"), 0);
    }
}
