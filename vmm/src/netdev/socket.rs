//! `-netdev socket` (QEMU's older net/socket.c): `fd=`, `listen=`, `connect=`, `mcast=`
//! and `udp=`, with its option checks and info texts.

use super::dgram::udp_socket;
use super::options::{check_keys, fd_family_text, host_port, take_fd, text};
use super::stream::stream_client;
use super::*;

pub(super) fn socket_netdev(
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
