//! Network backends other than tap: `-netdev socket` (QEMU's older backend: `fd=`,
//! `listen=`, `connect=`, `mcast=`, `udp=`), `-netdev stream` (`server=on|off`,
//! `addr.type=inet|unix|fd`, `reconnect`/`reconnect-ms`, NETDEV_STREAM_CONNECTED and
//! NETDEV_STREAM_DISCONNECTED events), `-netdev dgram` (`local.*`/`remote.*`, multicast)
//! and `-netdev hubport,hubid=N` (QEMU's hubs), with QEMU's option checks and texts. Each
//! is a client of the network thread ([`engine`]); a NIC reaches its netdev through a
//! datagram socket pair ([`Netdev::attach_nic`]). Taps keep their direct path to the device
//! and are registered only to be shown (`info network`) and announced.

pub mod addr;
pub mod engine;
pub mod framing;

use addr::{RawAddr, SockAddr};
use engine::{Client, Io, StreamIo, StreamMode};
use framing::FrameReader;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

/// A netdev that cannot be created, with QEMU's text where QEMU has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NetdevError(pub String);

fn fail<T>(message: impl Into<String>) -> Result<T, NetdevError> {
    Err(NetdevError(message.into()))
}

/// An errno's text as QEMU prints it (no " (os error N)").
pub fn plain(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        // SAFETY: strerror returns a pointer to a NUL-terminated string, copied at once.
        Some(code) => unsafe { std::ffi::CStr::from_ptr(libc::strerror(code)) }
            .to_string_lossy()
            .into_owned(),
        None => e.to_string(),
    }
}

/// The netdev types this module creates.
pub const KINDS: &[&str] = &["socket", "stream", "dgram", "hubport"];

struct Registration {
    key: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(engine) = engine::running() {
            engine.lock().remove(self.key);
            engine.kick();
        }
    }
}

/// A netdev of the network thread; the client goes when the last handle does.
#[derive(Clone)]
pub struct Netdev(Arc<Registration>);

impl std::fmt::Debug for Netdev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Netdev({})", self.0.key)
    }
}

impl PartialEq for Netdev {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Netdev {}

/// The last value of `key`.
fn get<'a>(members: &'a [(String, OsString)], key: &str) -> Option<&'a OsString> {
    members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn text(members: &[(String, OsString)], key: &str) -> Option<String> {
    get(members, key).map(|v| v.to_string_lossy().into_owned())
}

fn flag(members: &[(String, OsString)], key: &str) -> Result<Option<bool>, NetdevError> {
    match text(members, key).as_deref() {
        None => Ok(None),
        Some("on" | "yes" | "true" | "y") => Ok(Some(true)),
        Some("off" | "no" | "false" | "n") => Ok(Some(false)),
        Some(_) => fail(format!("Parameter '{key}' expects 'on' or 'off'")),
    }
}

/// A descriptor number given as `fd=N` on the command line, taken over by the netdev (the
/// number stays the same, as QEMU's `info network` shows it), non-blocking, close-on-exec.
/// Over QMP a number is refused: any descriptor of the process could be named.
fn take_fd(value: &str, numeric_fds: bool) -> Result<OwnedFd, NetdevError> {
    if !numeric_fds {
        return fail(format!(
            "file descriptor '{value}': machina takes netdev descriptors on the command line only"
        ));
    }
    let fd: i32 = match value.parse() {
        Ok(n) if n > 2 => n,
        _ => return fail(format!("Invalid file descriptor number '{value}'")),
    };
    // SAFETY: F_GETFD only reads the descriptor table entry.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return fail(format!(
            "Can't use file descriptor {fd}: {}",
            plain(&std::io::Error::last_os_error())
        ));
    }
    let engine = engine::engine().map_err(NetdevError)?;
    engine.lock().take_fd(fd).map_err(NetdevError)?;
    addr::make_nonblocking_cloexec(fd)
        .map_err(|e| NetdevError(format!("Can't use file descriptor {fd}: {}", plain(&e))))?;
    // SAFETY: the caller passed `fd` for this netdev to own; `take_fd` above makes sure no
    // other netdev owns the same number.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `host:port` of `-netdev socket`, parsed as every netdev address is (addr.rs), as the
/// IPv4 address `-netdev socket` takes.
fn host_port(value: &str) -> Result<std::net::SocketAddrV4, NetdevError> {
    SockAddr::from_host_port(value)
        .and_then(|a| a.ipv4())
        .map_err(NetdevError)
}

fn stream_client(name: &str, legacy: bool, mode: StreamMode, conn: Option<OwnedFd>) -> Client {
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

fn check_keys(
    members: &[(String, OsString)],
    allowed: &[&str],
    legacy: bool,
) -> Result<(), NetdevError> {
    for (k, _) in members.iter().skip(1) {
        let base = k.split('.').next().unwrap_or(k);
        if !allowed.contains(&base) {
            return fail(if legacy {
                format!("Invalid parameter '{k}'")
            } else {
                format!("Parameter '{k}' is unexpected")
            });
        }
    }
    Ok(())
}

/// Why a unix socket could not be set up, for each backend to word as QEMU does.
enum UnixFail {
    Address(String),
    Unlink(std::io::Error),
    Create(std::io::Error),
    Bind(std::io::Error),
}

/// A unix socket of type `ty` bound to `path` (a stale socket file of an earlier run is
/// replaced, as QEMU's unix_listen_saddr and net/dgram.c do), listening when `listen`.
fn bound_unix(
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
fn unix_listener(
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
fn listen_on(addr: &SockAddr, numeric_fds: bool) -> Result<(OwnedFd, bool), NetdevError> {
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

/// `fd=N unix` / `fd=N inet`: the descriptor and its address family, as QEMU shows it.
fn fd_family_text(fd: &OwnedFd) -> String {
    let family = addr::name_of(fd.as_raw_fd(), false).map(|a| a.family());
    let name = match family {
        Ok(libc::AF_UNIX) => " unix",
        Ok(libc::AF_INET) | Ok(libc::AF_INET6) => " inet",
        _ => "",
    };
    format!("fd={}{name}", fd.as_raw_fd())
}

fn socket_netdev(
    id: &str,
    members: &[(String, OsString)],
    numeric_fds: bool,
) -> Result<(Client, bool), NetdevError> {
    check_keys(
        members,
        &["id", "fd", "listen", "connect", "mcast", "udp", "localaddr"],
        true,
    )?;
    let fd = text(members, "fd");
    let listen = text(members, "listen");
    let connect = text(members, "connect");
    let mcast = text(members, "mcast");
    let udp = text(members, "udp");
    let localaddr = text(members, "localaddr");
    let count = [&fd, &listen, &connect, &mcast, &udp]
        .iter()
        .filter(|o| o.is_some())
        .count();
    if count != 1 {
        return fail("exactly one of listen=, connect=, mcast= or udp= is required");
    }
    if localaddr.is_some() && mcast.is_none() && udp.is_none() {
        return fail("localaddr= is only valid with mcast= or udp=");
    }
    if let Some(fd) = fd {
        let owned = take_fd(&fd, numeric_fds)?;
        let ty = addr::socket_type(owned.as_raw_fd())
            .map_err(|_| NetdevError("can't get socket option SO_TYPE".into()))?;
        return match ty {
            libc::SOCK_STREAM => {
                let _ = addr::set_int_option(
                    owned.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    1,
                );
                let n = owned.as_raw_fd();
                let mut c = stream_client(id, true, StreamMode::Fd, Some(owned));
                c.info = format!("socket: fd={n}");
                Ok((c, false))
            }
            libc::SOCK_DGRAM => {
                let info = format!("socket: {}", fd_family_text(&owned));
                Ok((
                    Client::new(
                        id.into(),
                        "socket",
                        info,
                        Io::Dgram {
                            fd: owned,
                            dest: None,
                        },
                    ),
                    false,
                ))
            }
            other => fail(format!(
                "socket type={other} for fd={fd} must be either SOCK_DGRAM or SOCK_STREAM"
            )),
        };
    }
    if let Some(listen) = listen {
        let a = host_port(&listen)?;
        let fd = addr::socket(libc::AF_INET, libc::SOCK_STREAM)
            .map_err(|e| NetdevError(format!("can't create stream socket: {}", plain(&e))))?;
        let _ = addr::set_int_option(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
        addr::bind(&fd, &RawAddr::inet(&a.into())).map_err(|e| {
            NetdevError(format!("can't bind ip={} to socket: {}", a.ip(), plain(&e)))
        })?;
        addr::listen(&fd, 1)
            .map_err(|e| NetdevError(format!("can't listen on socket: {}", plain(&e))))?;
        let c = stream_client(
            id,
            true,
            StreamMode::Server {
                listener: fd,
                unix: false,
            },
            None,
        );
        return Ok((c, false));
    }
    if let Some(connect) = connect {
        let a = host_port(&connect)?;
        let mut c = stream_client(
            id,
            true,
            StreamMode::Client {
                addr: SockAddr::Inet {
                    host: a.ip().to_string(),
                    port: a.port().to_string(),
                    ipv4: None,
                    ipv6: None,
                },
                reconnect: None,
            },
            None,
        );
        c.info = format!("socket: connect to {}:{}", a.ip(), a.port());
        return Ok((c, true));
    }
    let local = match &localaddr {
        Some(l) if mcast.is_some() => Some(
            l.parse::<std::net::Ipv4Addr>()
                .map_err(|_| NetdevError(format!("localaddr '{l}' is not a valid IPv4 address")))?,
        ),
        _ => None,
    };
    if let Some(mcast) = mcast {
        let group = host_port(&mcast)?;
        let fd = addr::mcast_socket(&group.into(), local).map_err(NetdevError)?;
        let info = format!("socket: mcast={}:{}", group.ip(), group.port());
        let dest = Some(RawAddr::inet(&group.into()));
        return Ok((
            Client::new(id.into(), "socket", info, Io::Dgram { fd, dest }),
            false,
        ));
    }
    let udp = udp.unwrap_or_default();
    let Some(localaddr) = localaddr else {
        return fail("localaddr= is mandatory with udp=");
    };
    let l = host_port(&localaddr)?;
    let r = host_port(&udp)?;
    let fd = udp_socket(&l.into())?;
    let info = format!("socket: udp={}:{}", r.ip(), r.port());
    Ok((
        Client::new(
            id.into(),
            "socket",
            info,
            Io::Dgram {
                fd,
                dest: Some(RawAddr::inet(&r.into())),
            },
        ),
        false,
    ))
}

fn udp_socket(local: &std::net::SocketAddr) -> Result<OwnedFd, NetdevError> {
    let family = if local.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let fd = addr::socket(family, libc::SOCK_DGRAM)
        .map_err(|e| NetdevError(format!("can't create datagram socket: {}", plain(&e))))?;
    addr::set_int_option(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).map_err(|e| {
        NetdevError(format!(
            "can't set socket option SO_REUSEADDR: {}",
            plain(&e)
        ))
    })?;
    addr::bind(&fd, &RawAddr::inet(local)).map_err(|e| {
        NetdevError(format!(
            "can't bind ip={} to socket: {}",
            local.ip(),
            plain(&e)
        ))
    })?;
    Ok(fd)
}

fn stream_netdev(
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

fn dgram_netdev(
    id: &str,
    members: &[(String, OsString)],
    numeric_fds: bool,
) -> Result<(Client, bool), NetdevError> {
    check_keys(members, &["id", "local", "remote"], false)?;
    let local = SockAddr::from_members(members, "local").map_err(NetdevError)?;
    let remote = SockAddr::from_members(members, "remote").map_err(NetdevError)?;
    let ipv4_of = |a: &SockAddr| -> Result<std::net::SocketAddr, NetdevError> {
        match a.ipv4() {
            Ok(v4) => Ok(v4.into()),
            Err(e) if e.starts_with("not an IPv4") => {
                fail("only IPv4 addresses are supported by dgram")
            }
            Err(e) => Err(NetdevError(e)),
        }
    };
    if let Some(r @ SockAddr::Inet { .. }) = &remote {
        let group = ipv4_of(r)?;
        if group.ip().is_multicast() {
            let (fd, info) = match &local {
                None => (addr::mcast_socket(&group, None).map_err(NetdevError)?, None),
                Some(l @ SockAddr::Inet { .. }) => {
                    let std::net::IpAddr::V4(ip) = ipv4_of(l)?.ip() else {
                        return fail("only IPv4 addresses are supported by dgram");
                    };
                    (
                        addr::mcast_socket(&group, Some(ip)).map_err(NetdevError)?,
                        None,
                    )
                }
                Some(SockAddr::Fd(s)) => {
                    // QEMU clones a passed multicast socket: a new one joins the group and
                    // takes the passed number.
                    let passed = take_fd(s, numeric_fds)?;
                    let fresh = addr::mcast_socket(&group, None).map_err(NetdevError)?;
                    // SAFETY: dup3 replaces the descriptor this netdev owns with the new one.
                    if unsafe { libc::dup3(fresh.as_raw_fd(), passed.as_raw_fd(), libc::O_CLOEXEC) }
                        < 0
                    {
                        return fail(format!(
                            "can't clone multicast socket: {}",
                            plain(&std::io::Error::last_os_error())
                        ));
                    }
                    let n = passed.as_raw_fd();
                    (
                        passed,
                        Some(format!(
                            "fd={n} (cloned mcast={}:{})",
                            group.ip(),
                            group.port()
                        )),
                    )
                }
                Some(_) => return fail("only support inet or fd type for local"),
            };
            let info = info.unwrap_or_else(|| format!("mcast={}:{}", group.ip(), group.port()));
            return Ok((
                Client::new(
                    id.into(),
                    "dgram",
                    info,
                    Io::Dgram {
                        fd,
                        dest: Some(RawAddr::inet(&group)),
                    },
                ),
                false,
            ));
        }
    }
    let Some(local) = local else {
        return fail("dgram requires local= parameter");
    };
    match (&local, &remote) {
        (SockAddr::Fd(_), Some(_)) => return fail("don't set remote with local.fd"),
        (SockAddr::Fd(_), None) => {}
        (_, None) => return fail("type=inet or type=unix requires remote parameter"),
        (l, Some(r)) if std::mem::discriminant(l) != std::mem::discriminant(r) => {
            return fail("remote and local types must be the same")
        }
        _ => {}
    }
    match (local, remote) {
        (l @ SockAddr::Inet { .. }, Some(r)) => {
            let la = ipv4_of(&l)?;
            let ra = ipv4_of(&r)?;
            let fd = udp_socket(&la)?;
            let info = format!("udp={}:{}/{}:{}", la.ip(), la.port(), ra.ip(), ra.port());
            Ok((
                Client::new(
                    id.into(),
                    "dgram",
                    info,
                    Io::Dgram {
                        fd,
                        dest: Some(RawAddr::inet(&ra)),
                    },
                ),
                false,
            ))
        }
        (SockAddr::Unix { path: lp, .. }, Some(SockAddr::Unix { path: rp, .. })) => {
            RawAddr::unix(&lp, false, true).map_err(NetdevError)?;
            let ra = RawAddr::unix(&rp, false, true).map_err(NetdevError)?;
            let shown = lp.to_string_lossy();
            let fd = bound_unix(&lp, false, true, libc::SOCK_DGRAM, false).map_err(|f| {
                NetdevError(match f {
                    UnixFail::Address(e) => e,
                    UnixFail::Unlink(e) => {
                        format!("failed to unlink socket {shown}: {}", plain(&e))
                    }
                    UnixFail::Create(e) => {
                        format!("can't create datagram socket: {}", plain(&e))
                    }
                    UnixFail::Bind(e) => {
                        format!("can't bind unix={shown} to socket: {}", plain(&e))
                    }
                })
            })?;
            let info = format!("udp={}:{}", lp.to_string_lossy(), rp.to_string_lossy());
            Ok((
                Client::new(id.into(), "dgram", info, Io::Dgram { fd, dest: Some(ra) }),
                false,
            ))
        }
        (SockAddr::Fd(s), None) => {
            let fd = take_fd(&s, numeric_fds)?;
            let info = fd_family_text(&fd);
            Ok((
                Client::new(id.into(), "dgram", info, Io::Dgram { fd, dest: None }),
                false,
            ))
        }
        _ => fail("only support inet or fd type for local"),
    }
}

impl Netdev {
    /// Create netdev `id` of `kind` (one of [`KINDS`]) from its members (the type first,
    /// dotted keys for addresses), opening its sockets now. `numeric_fds`: `fd=N` names an
    /// inherited descriptor (command line only).
    pub fn create(
        kind: &str,
        id: &str,
        members: &[(String, OsString)],
        numeric_fds: bool,
    ) -> Result<Netdev, NetdevError> {
        let engine = engine::engine().map_err(NetdevError)?;
        let (client, connect) = match kind {
            "socket" => socket_netdev(id, members, numeric_fds)?,
            "stream" => stream_netdev(id, members, numeric_fds)?,
            "dgram" => dgram_netdev(id, members, numeric_fds)?,
            "hubport" => {
                check_keys(members, &["id", "hubid", "netdev"], false)?;
                let hubid: i64 = match text(members, "hubid") {
                    None => return fail("Parameter 'hubid' is missing"),
                    Some(v) => v
                        .parse::<i32>()
                        .map_err(|_| NetdevError("Parameter 'hubid' expects int32".into()))?
                        .into(),
                };
                let client = Client::new(id.into(), "hubport", String::new(), Io::Hub { hubid });
                let peer = text(members, "netdev");
                let mut state = engine.lock();
                let peer_key = match &peer {
                    None => None,
                    Some(name) => match state.find(name) {
                        None => return fail(format!("netdev '{name}' not found")),
                        Some(p) if p.peer.is_some() => {
                            return fail(format!("netdev '{name}' is already in use"))
                        }
                        Some(p) => Some(p.key),
                    },
                };
                let key = state.add(client);
                if let Some(p) = peer_key {
                    state.link(key, p);
                }
                drop(state);
                engine.kick();
                return Ok(Netdev(Arc::new(Registration { key })));
            }
            other => return fail(format!("Parameter 'type' does not accept value '{other}'")),
        };
        let legacy = client.driver == "socket";
        let key = {
            let mut state = engine.lock();
            let key = state.add(client);
            if connect {
                state.start_connect(key);
                // `-netdev socket,connect=` refuses to start when the connect fails at once
                // (QEMU's net_socket_connect_init); `stream` reports it in its state.
                let failed = state
                    .by_key(key)
                    .and_then(|c| c.info.strip_prefix("error: ").map(str::to_string));
                if let (true, Some(why)) = (legacy, failed) {
                    state.remove(key);
                    let why = why.rsplit(": ").next().unwrap_or_default().to_string();
                    return fail(format!("can't connect socket: {why}"));
                }
            } else {
                // A passed connected stream reports its connection like a finished connect.
                state.connect_done(key);
            }
            key
        };
        engine.emit_pending();
        engine.kick();
        Ok(Netdev(Arc::new(Registration { key })))
    }

    /// Register a tap (whose frames the device moves itself) for `info network` and
    /// announcements; `fd` is a duplicate of the tap.
    pub fn register_tap(id: &str, info: String, fd: OwnedFd) -> Result<Netdev, NetdevError> {
        let engine = engine::engine().map_err(NetdevError)?;
        let key = engine
            .lock()
            .add(Client::new(id.into(), "tap", info, Io::Tap { fd }));
        Ok(Netdev(Arc::new(Registration { key })))
    }

    /// Hand its NIC what the netdev's socket already holds, before returning (a NIC model
    /// calls it when the guest gives receive buffers, as QEMU flushes queued packets then).
    pub fn pull(&self) {
        if let Some(engine) = engine::running() {
            engine.pull(self.0.key);
        }
    }

    /// Attach NIC `name` (device model `model`, MAC `mac`) as this netdev's peer: the
    /// device's end of the socket pair the frames travel through (a new descriptor for each
    /// build; the pair lives as long as the netdev). A tap gives none: the device uses the
    /// tap itself. A netdev serves one NIC.
    pub fn attach_nic(
        &self,
        name: &str,
        model: &str,
        mac: [u8; 6],
    ) -> Result<Option<File>, NetdevError> {
        let engine = engine::engine().map_err(NetdevError)?;
        let mut state = engine.lock();
        let Some(me) = state.by_key(self.0.key) else {
            return fail("netdev was deleted");
        };
        let tap = me.driver == "tap";
        if let Some(peer) = me.peer.and_then(|p| state.by_key(p)) {
            if peer.driver == "nic" && peer.name == name {
                return match &peer.io {
                    Io::Nic { device, .. } => device
                        .try_clone()
                        .map(|fd| Some(File::from(fd)))
                        .map_err(|e| NetdevError(format!("cannot share the NIC's socket: {e}"))),
                    _ => Ok(None),
                };
            }
            return fail("in use");
        }
        let io = if tap {
            Io::None
        } else {
            let mut pair = [0; 2];
            // SAFETY: socketpair writes two new descriptors into `pair`.
            let r = unsafe {
                libc::socketpair(
                    libc::AF_UNIX,
                    libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    0,
                    pair.as_mut_ptr(),
                )
            };
            if r < 0 {
                return fail(format!(
                    "cannot create a socket pair: {}",
                    plain(&std::io::Error::last_os_error())
                ));
            }
            // SAFETY: both descriptors were just created and are owned by nobody else.
            let (relay, device) =
                unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
            // Room for a burst of full-size frames on each side.
            for fd in [&relay, &device] {
                let _ = addr::set_int_option(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUF,
                    1 << 20,
                );
                let _ = addr::set_int_option(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    1 << 20,
                );
            }
            Io::Nic { relay, device }
        };
        let info = format!(
            "model={model},macaddr={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
        );
        let mut client = Client::new(name.into(), "nic", info, io);
        client.nic = Some((model.to_string(), mac));
        let handle = match &client.io {
            Io::Nic { device, .. } => Some(
                device
                    .try_clone()
                    .map(File::from)
                    .map_err(|e| NetdevError(format!("cannot share the NIC's socket: {e}")))?,
            ),
            _ => None,
        };
        let key = state.add(client);
        state.link(key, self.0.key);
        drop(state);
        engine.kick();
        Ok(handle)
    }
}

/// Let NIC `name` (attached to a netdev) ask its guest to announce itself on each
/// `announce-self` round through `fd` (virtio-net's GUEST_ANNOUNCE); the last build's wins.
pub fn set_guest_announce(name: &str, fd: Arc<vmm_sys_util::eventfd::EventFd>) {
    let Some(engine) = engine::running() else {
        return;
    };
    let mut state = engine.lock();
    if let Some(c) = state.find_nic_mut(name) {
        c.guest_announce = Some(fd);
    }
}

/// The NIC name QEMU gives a device without `id`: its model and a per-model count.
pub fn nic_name(model: &str, id: Option<&str>) -> String {
    if let Some(id) = id {
        return id.to_string();
    }
    let taken = engine::running().map_or(0, |e| {
        e.lock()
            .clients()
            .iter()
            .filter(|c| c.nic.as_ref().is_some_and(|(m, _)| m == model))
            .count()
    });
    format!("{model}.{taken}")
}

/// Send the network's QMP events to `sink`.
pub fn set_event_sink(sink: engine::EventSink) {
    engine::set_sink(sink);
}

/// HMP `info network`, from the network thread's clients (QEMU's hmp_info_network).
pub fn info_network() -> String {
    let Some(engine) = engine::running() else {
        return String::new();
    };
    let state = engine.lock();
    let line = |c: &Client| format!("{}: index=0,type={},{}\n", c.name, c.driver, c.info);
    let mut out = String::new();
    for hubid in state.hubs() {
        let _ = writeln!(out, "hub {hubid}");
        for port in state.hub_ports(*hubid) {
            let _ = write!(out, " \\ {}", port.name);
            match port.peer.and_then(|p| state.by_key(p)) {
                Some(peer) => {
                    out.push_str(": ");
                    out.push_str(&line(peer));
                }
                None => out.push('\n'),
            }
        }
    }
    for c in state.clients() {
        let peer = c.peer.and_then(|p| state.by_key(p));
        if c.driver == "hubport" || peer.is_some_and(|p| p.driver == "hubport") {
            continue;
        }
        if peer.is_none() || c.driver == "nic" {
            out.push_str(&line(c));
        }
        if let (Some(peer), "nic") = (peer, c.driver) {
            out.push_str(" \\ ");
            out.push_str(&line(peer));
        }
    }
    out
}

/// QMP `announce-self`.
pub fn announce(
    id: String,
    interfaces: Option<Vec<String>>,
    initial: i64,
    max: i64,
    rounds: i64,
    step: i64,
) {
    // Without any netdev there is no NIC with a peer: nothing to announce to.
    let Some(engine) = engine::running() else {
        return;
    };
    engine
        .lock()
        .announce(id, interfaces, initial, max, rounds, step);
    engine.kick();
}

/// A socket chardev (`-chardev socket,...`) a packet filter reads or writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CharSocket {
    /// `path=,server=on`: listening now (a stale file is replaced), one client at a time.
    Server(std::path::PathBuf),
    /// `path=`: connected now.
    Client(std::path::PathBuf),
    /// `fd=N` (command line only).
    Fd(i32),
}

/// Open chardev `name` for packet filters, once (later calls find it open).
pub fn open_char(name: &str, spec: &CharSocket) -> Result<(), NetdevError> {
    let engine = engine::engine().map_err(NetdevError)?;
    if engine.lock().char_by_name(name).is_some() {
        return Ok(());
    }
    let unix_addr =
        |path: &std::path::Path| RawAddr::unix(path.as_os_str(), false, true).map_err(NetdevError);
    let end = match spec {
        CharSocket::Server(path) => {
            let fd = unix_listener(path.as_os_str(), false, true)?;
            engine::CharEnd::new(name.into(), Some(fd), None)
        }
        CharSocket::Client(path) => {
            let raw = unix_addr(path)?;
            let fd = addr::socket(libc::AF_UNIX, libc::SOCK_STREAM)
                .map_err(|e| NetdevError(format!("Failed to create socket: {}", plain(&e))))?;
            addr::connect(&fd, &raw).map_err(|e| {
                NetdevError(format!(
                    "Failed to connect to '{}': {}",
                    path.display(),
                    plain(&e)
                ))
            })?;
            engine::CharEnd::new(name.into(), None, Some(fd))
        }
        CharSocket::Fd(n) => {
            let fd = take_fd(&n.to_string(), true)?;
            engine::CharEnd::new(name.into(), None, Some(fd))
        }
    };
    engine.lock().add_char(end);
    engine.kick();
    Ok(())
}

/// `-object filter-mirror|filter-redirector`: a filter on netdev `netdev` (chardevs opened
/// with [`open_char`] first). `queue` is QEMU's `all`, `rx` or `tx`.
pub fn add_filter(
    id: &str,
    redirector: bool,
    netdev: &str,
    queue: &str,
    outdev: Option<&str>,
    indev: Option<&str>,
) -> Result<(), NetdevError> {
    let engine = engine::engine().map_err(NetdevError)?;
    let mut state = engine.lock();
    let dir = match queue {
        "all" => engine::DIR_TX | engine::DIR_RX,
        "rx" => engine::DIR_RX,
        "tx" => engine::DIR_TX,
        other => return fail(format!("Parameter 'queue' does not accept value '{other}'")),
    };
    let find = |name: Option<&str>| -> Result<Option<u64>, NetdevError> {
        match name {
            None => Ok(None),
            Some(n) => state
                .char_by_name(n)
                .map(Some)
                .ok_or_else(|| NetdevError(format!("Device '{n}' not found"))),
        }
    };
    let filter = engine::Filter {
        id: id.into(),
        redirector,
        dir,
        outdev: find(outdev)?,
        indev: find(indev)?,
    };
    if !state.add_filter(netdev, filter) {
        return fail(format!(
            "Property '{}.netdev' can't find value '{netdev}'",
            if redirector {
                "filter-redirector"
            } else {
                "filter-mirror"
            }
        ));
    }
    drop(state);
    engine.kick();
    Ok(())
}
