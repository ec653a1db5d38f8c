//! Stream netdevs' connections (QEMU's net/stream.c): accepting as a server, connecting
//! and reconnecting as a client, disconnection, and the NETDEV_STREAM_* events.

use super::*;

impl State {
    pub(super) fn accept(&mut self, key: u64) {
        let Some(c) = self.by_key_mut(key) else {
            return;
        };
        let Io::Stream(s) = &mut c.io else {
            return;
        };
        let StreamMode::Server { listener, unix } = &s.mode else {
            return;
        };
        let unix = *unix;
        let conn = match addr::accept(listener.as_raw_fd()) {
            Ok(Some(conn)) => conn,
            _ => return,
        };
        let fd = conn.as_raw_fd();
        let _ = addr::set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
        s.conn = Some(conn);
        s.connecting = false;
        s.reader.reset();
        c.link_down = false;
        c.out.clear();
        // QEMU reports the local address of a unix connection, the peer of a TCP one.
        let raw = addr::name_of(fd, !unix);
        let found = raw.ok().and_then(|r| r.to_sockaddr());
        if s.legacy {
            c.info = match &found {
                Some(SockAddr::Inet { host, port, .. }) => {
                    format!("socket: connection from {host}:{port}")
                }
                _ => "socket: connection".into(),
            };
            return;
        }
        if let Some(a) = found {
            c.info = a.uri();
            let name = c.name.clone();
            self.events.push((
                "NETDEV_STREAM_CONNECTED",
                json!({"netdev-id": name, "addr": a.to_json()}),
            ));
        }
    }

    /// A stream client's connection is established (or failed).
    pub fn connect_done(&mut self, key: u64) {
        let Some(c) = self.by_key_mut(key) else {
            return;
        };
        let Io::Stream(s) = &mut c.io else {
            return;
        };
        let Some(conn) = &s.conn else {
            return;
        };
        let fd = conn.as_raw_fd();
        if let Err(e) = addr::take_error(fd) {
            let target = match &s.mode {
                StreamMode::Client { addr, .. } => connect_target(addr),
                _ => String::new(),
            };
            s.conn = None;
            s.connecting = false;
            c.info = format!(
                "error: Failed to connect to '{target}': {}",
                io_err_text(&e)
            );
            self.arm_reconnect(key);
            return;
        }
        s.connecting = false;
        s.reader.reset();
        c.link_down = false;
        c.out.clear();
        let _ = addr::set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
        if s.legacy {
            return;
        }
        let remote = addr::name_of(fd, true).ok().and_then(|r| r.to_sockaddr());
        if let Some(a) = remote {
            c.info = a.uri();
            let name = c.name.clone();
            self.events.push((
                "NETDEV_STREAM_CONNECTED",
                json!({"netdev-id": name, "addr": a.to_json()}),
            ));
        }
    }

    pub(super) fn arm_reconnect(&mut self, key: u64) {
        if let Some(c) = self.by_key_mut(key) {
            if let Io::Stream(s) = &mut c.io {
                if let StreamMode::Client {
                    reconnect: Some(d), ..
                } = &s.mode
                {
                    if s.retry_at.is_none() {
                        s.retry_at = Some(Instant::now() + *d);
                        c.info = "connecting".into();
                    }
                }
            }
        }
    }

    /// The peer of a stream closed (or broke) the connection.
    pub(super) fn disconnected(&mut self, key: u64) {
        let Some(c) = self.by_key_mut(key) else {
            return;
        };
        let Io::Stream(s) = &mut c.io else {
            return;
        };
        s.conn = None;
        s.connecting = false;
        s.reader.reset();
        c.link_down = true;
        c.out.clear();
        let server = matches!(s.mode, StreamMode::Server { .. });
        if s.legacy {
            c.info = String::new();
            return;
        }
        if server {
            c.info = "listening".into();
        }
        let name = c.name.clone();
        self.events
            .push(("NETDEV_STREAM_DISCONNECTED", json!({"netdev-id": name})));
        self.arm_reconnect(key);
    }

    /// Start (or retry) a stream client's connection.
    pub fn start_connect(&mut self, key: u64) {
        let Some(c) = self.by_key_mut(key) else {
            return;
        };
        let Io::Stream(s) = &mut c.io else {
            return;
        };
        s.retry_at = None;
        let StreamMode::Client { addr, .. } = &s.mode else {
            return;
        };
        match open_connect(addr) {
            Ok((fd, done)) => {
                s.conn = Some(fd);
                s.connecting = true;
                if done {
                    self.connect_done(key);
                }
            }
            Err(e) => {
                let target = connect_target(addr);
                c.info = format!("error: Failed to connect to '{target}': {e}");
                self.arm_reconnect(key);
            }
        }
    }
}

/// What QEMU names in a failed connect: the path, or host:port.
pub(super) fn connect_target(addr: &SockAddr) -> String {
    match addr {
        SockAddr::Inet { host, port, .. } => format!("{host}:{port}"),
        SockAddr::Unix { path, .. } => path.to_string_lossy().into_owned(),
        SockAddr::Fd(s) => s.clone(),
    }
}

/// A socket connecting to `addr`: (socket, connected already).
pub(super) fn open_connect(addr: &SockAddr) -> Result<(OwnedFd, bool), String> {
    match addr {
        SockAddr::Inet { .. } => {
            let mut last = String::from("no address");
            for target in addr.resolve()? {
                let family = if target.is_ipv4() {
                    libc::AF_INET
                } else {
                    libc::AF_INET6
                };
                let fd = addr::socket(family, libc::SOCK_STREAM).map_err(|e| io_err_text(&e))?;
                match addr::connect(&fd, &RawAddr::inet(&target)) {
                    Ok(done) => return Ok((fd, done)),
                    Err(e) => last = io_err_text(&e),
                }
            }
            Err(last)
        }
        SockAddr::Unix {
            path,
            abstract_,
            tight,
        } => {
            let raw = RawAddr::unix(path, *abstract_, *tight)?;
            let fd = addr::socket(libc::AF_UNIX, libc::SOCK_STREAM).map_err(|e| io_err_text(&e))?;
            match addr::connect(&fd, &raw) {
                Ok(done) => Ok((fd, done)),
                Err(e) => Err(io_err_text(&e)),
            }
        }
        SockAddr::Fd(_) => Err("a passed descriptor cannot be reconnected".into()),
    }
}
