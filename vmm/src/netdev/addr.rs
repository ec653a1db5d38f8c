//! QEMU's `SocketAddress` (qapi/sockets.json) as netdevs take it (`addr.type=inet|unix|fd`,
//! dotted keys on the command line, a nested object over QMP), its text form (`socket_uri`)
//! and its QMP form (for NETDEV_STREAM_CONNECTED), and the raw socket calls on it. Host
//! names are never looked up (a DNS query could block the monitor): numeric addresses and
//! `localhost` only.

use std::ffi::{OsStr, OsString};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// A socket address as QEMU's QAPI describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SockAddr {
    Inet {
        host: String,
        port: String,
        ipv4: Option<bool>,
        ipv6: Option<bool>,
    },
    Unix {
        path: OsString,
        abstract_: bool,
        tight: bool,
    },
    /// A descriptor the caller passed (`str` is its number).
    Fd(String),
}

fn bool_text(v: &str) -> Option<bool> {
    match v {
        "on" | "yes" | "true" | "y" => Some(true),
        "off" | "no" | "false" | "n" => Some(false),
        _ => None,
    }
}

impl SockAddr {
    /// The address under `prefix` (`addr`, `local`, `remote`) of dotted keyval members;
    /// `None` when no member has the prefix. Unknown members are refused, as QEMU's visitor.
    pub fn from_members(
        members: &[(String, OsString)],
        prefix: &str,
    ) -> Result<Option<SockAddr>, String> {
        let dotted = format!("{prefix}.");
        let mine: Vec<(&str, &OsStr)> = members
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&dotted).map(|k| (k, v.as_os_str())))
            .collect();
        if mine.is_empty() {
            return Ok(None);
        }
        let get = |key: &str| mine.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let text = |key: &str| get(key).map(|v| v.to_string_lossy().into_owned());
        let flag = |key: &str| -> Result<Option<bool>, String> {
            match text(key) {
                None => Ok(None),
                Some(v) => bool_text(&v)
                    .map(Some)
                    .ok_or_else(|| format!("Parameter '{prefix}.{key}' expects 'on' or 'off'")),
            }
        };
        let kind = text("type").ok_or_else(|| format!("Parameter '{prefix}.type' is missing"))?;
        let allowed: &[&str] = match kind.as_str() {
            "inet" => &[
                "type",
                "host",
                "port",
                "numeric",
                "to",
                "ipv4",
                "ipv6",
                "keep-alive",
                "mptcp",
            ],
            "unix" => &["type", "path", "abstract", "tight"],
            "fd" => &["type", "str"],
            "vsock" => return Err("machina has no vsock sockets".into()),
            other => {
                return Err(format!(
                    "Parameter '{prefix}.type' does not accept value '{other}'"
                ))
            }
        };
        if let Some((k, _)) = mine.iter().find(|(k, _)| !allowed.contains(k)) {
            return Err(format!("Parameter '{prefix}.{k}' is unexpected"));
        }
        let missing = |key: &str| format!("Parameter '{prefix}.{key}' is missing");
        Ok(Some(match kind.as_str() {
            "inet" => SockAddr::Inet {
                host: text("host").ok_or_else(|| missing("host"))?,
                port: text("port").ok_or_else(|| missing("port"))?,
                ipv4: flag("ipv4")?,
                ipv6: flag("ipv6")?,
            },
            "unix" => SockAddr::Unix {
                path: get("path").ok_or_else(|| missing("path"))?.to_os_string(),
                abstract_: flag("abstract")?.unwrap_or(false),
                tight: flag("tight")?.unwrap_or(true),
            },
            _ => SockAddr::Fd(text("str").ok_or_else(|| missing("str"))?),
        }))
    }

    /// `-netdev socket`'s `host:port` (QEMU's parse_host_port: IPv4, an empty host is any
    /// address; numeric hosts and `localhost` only, as everywhere here).
    pub fn from_host_port(value: &str) -> Result<SockAddr, String> {
        let Some((host, port)) = value.rsplit_once(':') else {
            return Err(format!(
                "host address '{value}' doesn't contain ':' separating host from port"
            ));
        };
        if host != "localhost" && !host.is_empty() && host.parse::<Ipv4Addr>().is_err() {
            return Err(format!("host not found: {host}"));
        }
        if port.parse::<u16>().is_err() {
            return Err(format!("invalid host port '{port}'"));
        }
        Ok(SockAddr::Inet {
            host: if host.is_empty() { "0.0.0.0" } else { host }.to_string(),
            port: port.to_string(),
            ipv4: Some(true),
            ipv6: None,
        })
    }

    /// The IPv4 address an inet address names (the first, where it names several).
    pub fn ipv4(&self) -> Result<SocketAddrV4, String> {
        self.resolve()?
            .into_iter()
            .find_map(|a| match a {
                SocketAddr::V4(v4) => Some(v4),
                SocketAddr::V6(_) => None,
            })
            .ok_or_else(|| "not an IPv4 address".to_string())
    }

    /// QEMU's `socket_uri`.
    pub fn uri(&self) -> String {
        match self {
            SockAddr::Inet { host, port, .. } => format!("tcp:{host}:{port}"),
            SockAddr::Unix { path, .. } => format!("unix:{}", path.to_string_lossy()),
            SockAddr::Fd(s) => format!("fd:{s}"),
        }
    }

    /// The QMP `SocketAddress` object.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            SockAddr::Inet {
                host,
                port,
                ipv4,
                ipv6,
            } => {
                let mut v = json!({"type": "inet", "host": host, "port": port});
                if let Some(b) = ipv4 {
                    v["ipv4"] = json!(b);
                }
                if let Some(b) = ipv6 {
                    v["ipv6"] = json!(b);
                }
                v
            }
            SockAddr::Unix {
                path,
                abstract_,
                tight,
            } => {
                let mut v = json!({"type": "unix", "path": path.to_string_lossy()});
                if *abstract_ {
                    v["abstract"] = json!(true);
                    v["tight"] = json!(tight);
                }
                v
            }
            SockAddr::Fd(s) => json!({"type": "fd", "str": s}),
        }
    }

    /// The IP addresses an inet address names, in the order to try (no DNS).
    pub fn resolve(&self) -> Result<Vec<SocketAddr>, String> {
        let SockAddr::Inet {
            host,
            port,
            ipv4,
            ipv6,
        } = self
        else {
            return Err("not an inet address".into());
        };
        let port_num: u16 = port
            .parse()
            .map_err(|_| format!("address resolution failed for {host}:{port}: Servname not supported for ai_socktype"))?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let candidates: Vec<IpAddr> = if bare.is_empty() {
            vec![
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            ]
        } else if bare == "localhost" {
            vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ]
        } else {
            vec![bare.parse::<IpAddr>().map_err(|_| {
                format!(
                    "address resolution failed for {host}:{port}: machina takes numeric addresses only"
                )
            })?]
        };
        // ipv4=on alone means IPv4 only, ipv6=on alone IPv6 only (QEMU's inet_ai_family_from_address).
        let want4 = ipv4.unwrap_or(*ipv6 != Some(true));
        let want6 = ipv6.unwrap_or(*ipv4 != Some(true));
        let out: Vec<SocketAddr> = candidates
            .into_iter()
            .filter(|ip| if ip.is_ipv4() { want4 } else { want6 })
            .map(|ip| SocketAddr::new(ip, port_num))
            .collect();
        if out.is_empty() {
            return Err(format!(
                "address resolution failed for {host}:{port}: Address family for hostname not supported"
            ));
        }
        Ok(out)
    }
}

/// A `struct sockaddr_*` ready for bind/connect/sendto.
#[derive(Clone)]
pub struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl std::fmt::Debug for RawAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawAddr({:?})", self.to_sockaddr())
    }
}

impl RawAddr {
    pub fn family(&self) -> libc::c_int {
        self.storage.ss_family as libc::c_int
    }

    pub fn ptr(&self) -> *const libc::sockaddr {
        &self.storage as *const libc::sockaddr_storage as *const libc::sockaddr
    }

    pub fn byte_len(&self) -> libc::socklen_t {
        self.len
    }

    fn zeroed() -> Self {
        // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid (AF_UNSPEC) value.
        let storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        Self {
            storage,
            len: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        }
    }

    pub fn inet(addr: &SocketAddr) -> Self {
        let mut raw = Self::zeroed();
        match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*a.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe {
                    std::ptr::write(
                        &mut raw.storage as *mut libc::sockaddr_storage as *mut libc::sockaddr_in,
                        sin,
                    )
                };
                raw.len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe {
                    std::ptr::write(
                        &mut raw.storage as *mut libc::sockaddr_storage as *mut libc::sockaddr_in6,
                        sin6,
                    )
                };
                raw.len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            }
        }
        raw
    }

    /// A unix address; an abstract one has a leading NUL and, when `tight`, no padding.
    pub fn unix(path: &OsStr, abstract_: bool, tight: bool) -> Result<Self, String> {
        let mut raw = Self::zeroed();
        // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_un.
        let sun = unsafe {
            &mut *(&mut raw.storage as *mut libc::sockaddr_storage as *mut libc::sockaddr_un)
        };
        sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_bytes();
        let offset = usize::from(abstract_);
        if bytes.len() + offset >= sun.sun_path.len() {
            return Err(format!(
                "UNIX socket path '{}' is too long",
                path.to_string_lossy()
            ));
        }
        for (i, b) in bytes.iter().enumerate() {
            sun.sun_path[i + offset] = *b as libc::c_char;
        }
        let base = std::mem::size_of::<libc::sa_family_t>();
        raw.len = if abstract_ && !tight {
            std::mem::size_of::<libc::sockaddr_un>()
        } else if abstract_ {
            base + 1 + bytes.len()
        } else {
            base + bytes.len() + 1
        } as libc::socklen_t;
        Ok(raw)
    }

    /// The address as QEMU reports it (`socket_sockaddr_to_address_*`).
    pub fn to_sockaddr(&self) -> Option<SockAddr> {
        match self.family() {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in.
                let sin = unsafe { &*(self.ptr() as *const libc::sockaddr_in) };
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                Some(SockAddr::Inet {
                    host: ip.to_string(),
                    port: u16::from_be(sin.sin_port).to_string(),
                    ipv4: Some(true),
                    ipv6: None,
                })
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a sockaddr_in6.
                let sin6 = unsafe { &*(self.ptr() as *const libc::sockaddr_in6) };
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(SockAddr::Inet {
                    host: ip.to_string(),
                    port: u16::from_be(sin6.sin6_port).to_string(),
                    ipv4: None,
                    ipv6: Some(true),
                })
            }
            libc::AF_UNIX => {
                // SAFETY: the family says the storage holds a sockaddr_un.
                let sun = unsafe { &*(self.ptr() as *const libc::sockaddr_un) };
                let base = std::mem::size_of::<libc::sa_family_t>();
                let n = (self.len as usize)
                    .saturating_sub(base)
                    .min(sun.sun_path.len());
                let bytes: Vec<u8> = sun.sun_path[..n].iter().map(|&c| c as u8).collect();
                if n > 0 && bytes[0] == 0 {
                    return Some(SockAddr::Unix {
                        path: OsString::from_vec(bytes[1..].to_vec()),
                        abstract_: true,
                        tight: n < sun.sun_path.len(),
                    });
                }
                let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                Some(SockAddr::Unix {
                    path: OsString::from_vec(bytes[..end].to_vec()),
                    abstract_: false,
                    tight: true,
                })
            }
            _ => None,
        }
    }
}

fn last_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// A new non-blocking, close-on-exec socket.
pub fn socket(family: libc::c_int, ty: libc::c_int) -> std::io::Result<OwnedFd> {
    // SAFETY: socket() takes no pointers; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last_err());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn bind(fd: &OwnedFd, addr: &RawAddr) -> std::io::Result<()> {
    // SAFETY: `addr` points at `addr.byte_len()` valid bytes of a sockaddr.
    if unsafe { libc::bind(fd.as_raw_fd(), addr.ptr(), addr.byte_len()) } < 0 {
        return Err(last_err());
    }
    Ok(())
}

pub fn listen(fd: &OwnedFd, backlog: i32) -> std::io::Result<()> {
    // SAFETY: listen() takes no pointers.
    if unsafe { libc::listen(fd.as_raw_fd(), backlog) } < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// Start a non-blocking connect: Ok(true) when connected at once, Ok(false) in progress.
pub fn connect(fd: &OwnedFd, addr: &RawAddr) -> std::io::Result<bool> {
    loop {
        // SAFETY: `addr` points at `addr.byte_len()` valid bytes of a sockaddr.
        if unsafe { libc::connect(fd.as_raw_fd(), addr.ptr(), addr.byte_len()) } == 0 {
            return Ok(true);
        }
        let e = last_err();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EINPROGRESS) | Some(libc::EALREADY) => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// The pending error of a socket (SO_ERROR), as after a non-blocking connect.
pub fn take_error(fd: RawFd) -> std::io::Result<()> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_ERROR writes one int into `err`, whose size `len` gives.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut err as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if r < 0 {
        return Err(last_err());
    }
    if err != 0 {
        return Err(std::io::Error::from_raw_os_error(err));
    }
    Ok(())
}

/// Accept one connection (non-blocking, close-on-exec); Ok(None) when none is waiting.
pub fn accept(fd: RawFd) -> std::io::Result<Option<OwnedFd>> {
    loop {
        // SAFETY: null address pointers ask for no peer address.
        let c = unsafe {
            libc::accept4(
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if c >= 0 {
            // SAFETY: accept4 returned a new descriptor that nobody else owns.
            return Ok(Some(unsafe { OwnedFd::from_raw_fd(c) }));
        }
        let e = last_err();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) | Some(libc::ECONNABORTED) => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// getsockname (`peer` false) or getpeername (`peer` true).
pub fn name_of(fd: RawFd, peer: bool) -> std::io::Result<RawAddr> {
    let mut raw = RawAddr::zeroed();
    let ptr = &mut raw.storage as *mut libc::sockaddr_storage as *mut libc::sockaddr;
    // SAFETY: the kernel writes at most `raw.len` bytes into the storage and updates len.
    let r = unsafe {
        if peer {
            libc::getpeername(fd, ptr, &mut raw.len)
        } else {
            libc::getsockname(fd, ptr, &mut raw.len)
        }
    };
    if r < 0 {
        return Err(last_err());
    }
    Ok(raw)
}

/// An integer socket option.
pub fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: the option value is one int, passed with its size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// SO_TYPE of a descriptor (SOCK_STREAM, SOCK_DGRAM, ...).
pub fn socket_type(fd: RawFd) -> std::io::Result<libc::c_int> {
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_TYPE writes one int into `ty`, whose size `len` gives.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            &mut ty as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if r < 0 {
        return Err(last_err());
    }
    Ok(ty)
}

/// Set O_NONBLOCK and FD_CLOEXEC on a descriptor machina takes over.
pub fn make_nonblocking_cloexec(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor number; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(last_err());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// Join the IPv4 multicast group of `group` (bound to it, loopback on, as QEMU's
/// net_dgram_mcast_create), sending from `local` when given.
pub fn mcast_socket(group: &SocketAddr, local: Option<Ipv4Addr>) -> Result<OwnedFd, String> {
    let SocketAddr::V4(g) = group else {
        return Err("multicast only support inet type".into());
    };
    if !g.ip().is_multicast() {
        return Err(format!(
            "specified mcastaddr {} (0x{:08x}) does not contain a multicast address",
            g.ip(),
            u32::from(*g.ip())
        ));
    }
    let errno = |what: &str, e: std::io::Error| format!("{what}: {}", super::plain(&e));
    let fd = socket(libc::AF_INET, libc::SOCK_DGRAM)
        .map_err(|e| errno("can't create datagram socket", e))?;
    set_int_option(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
        .map_err(|e| errno("can't set socket option SO_REUSEADDR", e))?;
    bind(&fd, &RawAddr::inet(group))
        .map_err(|e| errno(&format!("can't bind ip={} to socket", g.ip()), e))?;
    let mreq = libc::ip_mreq {
        imr_multiaddr: libc::in_addr {
            s_addr: u32::from(*g.ip()).to_be(),
        },
        imr_interface: libc::in_addr {
            s_addr: u32::from(local.unwrap_or(Ipv4Addr::UNSPECIFIED)).to_be(),
        },
    };
    // SAFETY: IP_ADD_MEMBERSHIP reads one ip_mreq, passed with its size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_ADD_MEMBERSHIP,
            &mreq as *const libc::ip_mreq as *const libc::c_void,
            std::mem::size_of::<libc::ip_mreq>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(errno(
            &format!("can't add socket to multicast group {}", g.ip()),
            last_err(),
        ));
    }
    set_int_option(fd.as_raw_fd(), libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP, 1)
        .map_err(|e| errno("can't force multicast message to loopback", e))?;
    if let Some(local) = local {
        let addr = libc::in_addr {
            s_addr: u32::from(local).to_be(),
        };
        // SAFETY: IP_MULTICAST_IF reads one in_addr, passed with its size.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MULTICAST_IF,
                &addr as *const libc::in_addr as *const libc::c_void,
                std::mem::size_of::<libc::in_addr>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(errno(
                "can't set the default network send interface",
                last_err(),
            ));
        }
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_is_parsed_into_the_same_address_as_addr_members() {
        let a = SockAddr::from_host_port(":1234").unwrap();
        assert_eq!(a.ipv4().unwrap(), "0.0.0.0:1234".parse().unwrap());
        let a = SockAddr::from_host_port("localhost:7").unwrap();
        assert_eq!(a.ipv4().unwrap(), "127.0.0.1:7".parse().unwrap());
        let m = members(&[
            ("addr.type", "inet"),
            ("addr.host", "127.0.0.1"),
            ("addr.port", "7"),
        ]);
        let b = SockAddr::from_members(&m, "addr").unwrap().unwrap();
        assert_eq!(b.ipv4(), a.ipv4());
        for (bad, want) in [
            (
                "1234",
                "host address '1234' doesn't contain ':' separating host from port",
            ),
            ("example.org:1", "host not found: example.org"),
            ("1.2.3.4:x", "invalid host port 'x'"),
            ("1.2.3.4:70000", "invalid host port '70000'"),
        ] {
            assert_eq!(SockAddr::from_host_port(bad).unwrap_err(), want);
        }
    }

    fn members(list: &[(&str, &str)]) -> Vec<(String, OsString)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect()
    }

    #[test]
    fn addresses_parse_with_qemus_errors() {
        let m = members(&[
            ("addr.type", "inet"),
            ("addr.host", "127.0.0.1"),
            ("addr.port", "1234"),
            ("addr.ipv4", "on"),
        ]);
        let a = SockAddr::from_members(&m, "addr").unwrap().unwrap();
        assert_eq!(a.uri(), "tcp:127.0.0.1:1234");
        assert_eq!(
            a.resolve().unwrap(),
            vec!["127.0.0.1:1234".parse().unwrap()]
        );
        assert_eq!(SockAddr::from_members(&m, "local").unwrap(), None);
        let m = members(&[("addr.type", "unix")]);
        assert_eq!(
            SockAddr::from_members(&m, "addr").unwrap_err(),
            "Parameter 'addr.path' is missing"
        );
        let m = members(&[
            ("addr.type", "unix"),
            ("addr.path", "/x"),
            ("addr.bogus", "1"),
        ]);
        assert_eq!(
            SockAddr::from_members(&m, "addr").unwrap_err(),
            "Parameter 'addr.bogus' is unexpected"
        );
        let m = members(&[("remote.type", "tipc")]);
        assert_eq!(
            SockAddr::from_members(&m, "remote").unwrap_err(),
            "Parameter 'remote.type' does not accept value 'tipc'"
        );
        let v6 = SockAddr::Inet {
            host: "::1".into(),
            port: "5".into(),
            ipv4: Some(false),
            ipv6: Some(true),
        };
        assert_eq!(v6.uri(), "tcp:::1:5");
        assert_eq!(v6.resolve().unwrap(), vec!["[::1]:5".parse().unwrap()]);
        let name = SockAddr::Inet {
            host: "example.org".into(),
            port: "5".into(),
            ipv4: None,
            ipv6: None,
        };
        assert!(name.resolve().is_err(), "no DNS lookups");
    }

    #[test]
    fn unix_addresses_round_trip_through_the_kernel_form() {
        let raw = RawAddr::unix(OsStr::new("/tmp/s"), false, true).unwrap();
        assert_eq!(raw.to_sockaddr().unwrap().uri(), "unix:/tmp/s");
        let raw = RawAddr::unix(OsStr::new("name"), true, true).unwrap();
        let back = raw.to_sockaddr().unwrap();
        assert_eq!(back.uri(), "unix:name");
        assert_eq!(back.to_json()["abstract"], true);
        assert!(RawAddr::unix(OsStr::new(&"x".repeat(200)), false, true).is_err());
    }
}
