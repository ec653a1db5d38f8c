//! `-netdev dgram` (QEMU's net/dgram.c): `local.*`/`remote.*` inet or unix addresses,
//! multicast, or a passed datagram socket.

use super::options::{check_keys, fd_family_text, take_fd};
use super::stream::{bound_unix, UnixFail};
use super::*;

pub(super) fn udp_socket(local: &std::net::SocketAddr) -> Result<OwnedFd, NetdevError> {
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

pub(super) fn dgram_netdev(
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
