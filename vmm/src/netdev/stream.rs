//! `-netdev stream` (QEMU's net/stream.c): a server listening on an inet or unix address
//! (or a passed socket), a client connecting (with `reconnect`), or a connected `fd`.

use super::options::{check_keys, flag, take_fd, text};
use super::*;

pub(super) fn stream_client(
    name: &str,
    legacy: bool,
    mode: StreamMode,
    conn: Option<OwnedFd>,
) -> Client {
    let driver = if legacy { "socket" } else { "stream" };
    let link_down = conn.is_none();
    let mut c = Client::new(
        name.to_string(),
        driver,
        String::new(),
        Io::Stream(Box::new(StreamIo {
            mode,
            conn,
            connecting: false,
            reader: FrameReader::new(),
            retry_at: None,
            legacy,
        })),
    );
    c.link_down = link_down;
    c
}

/// Why a unix socket could not be set up, for each backend to word as QEMU does.
pub(super) enum UnixFail {
    Address(String),
    Unlink(std::io::Error),
    Create(std::io::Error),
    Bind(std::io::Error),
}

/// A unix socket of type `ty` bound to `path` (a stale socket file of an earlier run is
/// replaced, as QEMU's unix_listen_saddr and net/dgram.c do), listening when `listen`.
pub(super) fn bound_unix(
    path: &std::ffi::OsStr,
    abstract_: bool,
    tight: bool,
    ty: libc::c_int,
    listen: bool,
) -> Result<OwnedFd, UnixFail> {
    let raw = RawAddr::unix(path, abstract_, tight).map_err(UnixFail::Address)?;
    if !abstract_ {
        if let Err(e) = std::fs::remove_file(path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(UnixFail::Unlink(e));
            }
        }
    }
    let fd = addr::socket(libc::AF_UNIX, ty).map_err(UnixFail::Create)?;
    addr::bind(&fd, &raw)
        .and_then(|_| if listen { addr::listen(&fd, 1) } else { Ok(()) })
        .map_err(UnixFail::Bind)?;
    Ok(fd)
}

/// A listening unix stream socket with QEMU's texts (`stream` servers, socket chardevs).
pub(super) fn unix_listener(
    path: &std::ffi::OsStr,
    abstract_: bool,
    tight: bool,
) -> Result<OwnedFd, NetdevError> {
    let shown = path.to_string_lossy();
    bound_unix(path, abstract_, tight, libc::SOCK_STREAM, true).map_err(|f| {
        NetdevError(match f {
            UnixFail::Address(e) => e,
            UnixFail::Unlink(e) => format!("Failed to unlink socket {shown}: {}", plain(&e)),
            UnixFail::Create(e) => format!("Failed to create socket: {}", plain(&e)),
            UnixFail::Bind(e) => format!("Failed to bind socket to {shown}: {}", plain(&e)),
        })
    })
}

/// A listening stream socket on `addr`.
pub(super) fn listen_on(
    addr: &SockAddr,
    numeric_fds: bool,
) -> Result<(OwnedFd, bool), NetdevError> {
    match addr {
        SockAddr::Inet { .. } => {
            let mut last = String::new();
            for target in addr.resolve().map_err(NetdevError)? {
                let family = if target.is_ipv4() {
                    libc::AF_INET
                } else {
                    libc::AF_INET6
                };
                let fd = addr::socket(family, libc::SOCK_STREAM)
                    .map_err(|e| NetdevError(format!("Failed to create socket: {}", plain(&e))))?;
                let _ =
                    addr::set_int_option(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
                if target.is_ipv6() {
                    let _ = addr::set_int_option(
                        fd.as_raw_fd(),
                        libc::IPPROTO_IPV6,
                        libc::IPV6_V6ONLY,
                        1,
                    );
                }
                match addr::bind(&fd, &RawAddr::inet(&target)).and_then(|_| addr::listen(&fd, 1)) {
                    Ok(()) => return Ok((fd, false)),
                    Err(e) => last = format!("Failed to bind socket: {}", plain(&e)),
                }
            }
            fail(last)
        }
        SockAddr::Unix {
            path,
            abstract_,
            tight,
        } => Ok((unix_listener(path, *abstract_, *tight)?, true)),
        SockAddr::Fd(s) => {
            let fd = take_fd(s, numeric_fds)?;
            addr::listen(&fd, 1)
                .map_err(|e| NetdevError(format!("Failed to listen on fd {s}: {}", plain(&e))))?;
            let unix =
                addr::name_of(fd.as_raw_fd(), false).is_ok_and(|a| a.family() == libc::AF_UNIX);
            Ok((fd, unix))
        }
    }
}

pub(super) fn stream_netdev(
    id: &str,
    members: &[(String, OsString)],
    numeric_fds: bool,
) -> Result<(Client, bool), NetdevError> {
    check_keys(
        members,
        &["id", "server", "addr", "reconnect", "reconnect-ms"],
        false,
    )?;
    let addr = SockAddr::from_members(members, "addr")
        .map_err(NetdevError)?
        .ok_or_else(|| NetdevError("Parameter 'addr' is missing".into()))?;
    let server = flag(members, "server")?.unwrap_or(false);
    let number = |key: &str| -> Result<Option<u64>, NetdevError> {
        text(members, key)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| NetdevError(format!("Parameter '{key}' expects uint32")))
            })
            .transpose()
    };
    let reconnect = number("reconnect")?;
    let reconnect_ms = number("reconnect-ms")?;
    if server {
        if reconnect.is_some() || reconnect_ms.is_some() {
            return fail("'reconnect' and 'reconnect-ms' options are incompatible with socket in server mode");
        }
        let (listener, unix) = listen_on(&addr, numeric_fds)?;
        let mut c = stream_client(id, false, StreamMode::Server { listener, unix }, None);
        c.info = "listening".into();
        return Ok((c, false));
    }
    if reconnect.is_some() && reconnect_ms.is_some() {
        return fail("'reconnect' and 'reconnect-ms' are mutually exclusive");
    }
    let reconnect = reconnect_ms
        .or(reconnect.map(|s| s.saturating_mul(1000)))
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis);
    if let SockAddr::Fd(s) = &addr {
        let fd = take_fd(s, numeric_fds)?;
        let mut c = stream_client(id, false, StreamMode::Fd, Some(fd));
        c.info = "connecting".into();
        // Connected already: reported (and evented) by the thread as a finished connect.
        if let Io::Stream(s) = &mut c.io {
            s.connecting = true;
        }
        return Ok((c, false));
    }
    let mut c = stream_client(id, false, StreamMode::Client { addr, reconnect }, None);
    c.info = "connecting".into();
    Ok((c, true))
}
