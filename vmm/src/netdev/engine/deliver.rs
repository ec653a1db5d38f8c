//! Frames between clients: what a client may send and take (queue limits, hubs), delivery
//! through the filters to the peer or every other hub port, and the reads and writes of
//! each client's socket.

use super::*;

impl State {
    /// Whether a frame `c` produces now would be taken (QEMU's qemu_can_send_packet): a
    /// client without peer drops what it produces, so it may always read.
    pub(super) fn can_send(&self, c: &Client) -> bool {
        match c.peer.and_then(|p| self.by_key(p)) {
            None => true,
            Some(peer) => self.can_receive(peer, 0),
        }
    }

    pub(super) fn can_receive(&self, c: &Client, depth: u32) -> bool {
        match &c.io {
            // A hub takes a frame when any other port's peer does (net_hub_port_can_receive).
            Io::Hub { hubid } if depth < 4 => self.clients.iter().any(|p| {
                p.key != c.key
                    && matches!(p.io, Io::Hub { hubid: h } if h == *hubid)
                    && p.peer
                        .and_then(|q| self.by_key(q))
                        .is_none_or(|q| self.can_receive(q, depth + 1))
            }),
            Io::Hub { .. } => false,
            _ => c.out.bytes < QUEUE_LIMIT,
        }
    }

    /// A frame produced by client `from` (read from its socket, or originated for it).
    pub(super) fn deliver(&mut self, from: u64, frame: &[u8], depth: u32) {
        let Some(src) = self.by_key(from) else {
            return;
        };
        if src.link_down {
            return;
        }
        let Some(to) = src.peer else {
            return;
        };
        // The sender's filters see it as TX in order, then the receiver's as RX in reverse
        // (QEMU's qemu_send_packet_async_with_flags).
        let tx: Vec<usize> = (0..self.filter_count(from)).collect();
        if !tx.is_empty() && !self.run_filters(from, DIR_TX, &tx, frame) {
            return;
        }
        let rx: Vec<usize> = (0..self.filter_count(to)).rev().collect();
        if !rx.is_empty() && !self.run_filters(to, DIR_RX, &rx, frame) {
            return;
        }
        self.receive(to, from, frame, depth);
    }

    /// Client `to` receives `frame` from its peer.
    pub(super) fn receive(&mut self, to: u64, _from: u64, frame: &[u8], depth: u32) {
        let Some(target) = self.by_key(to) else {
            return;
        };
        if target.link_down {
            return;
        }
        if let Io::Hub { hubid } = target.io {
            if depth >= 4 {
                return;
            }
            let ports: Vec<u64> = self
                .clients
                .iter()
                .filter(|p| p.key != to && matches!(p.io, Io::Hub { hubid: h } if h == hubid))
                .map(|p| p.key)
                .collect();
            for port in ports {
                self.deliver(port, frame, depth + 1);
            }
            return;
        }
        let Some(target) = self.by_key_mut(to) else {
            return;
        };
        let message = match &target.io {
            Io::Stream(s) if s.conn.is_none() || s.connecting => return,
            Io::Stream(_) => framing::encode(frame),
            Io::Tap { fd } => {
                // The header length the device negotiated; zeroes mean "no offload".
                let mut size: libc::c_int = 0;
                // SAFETY: TUNGETVNETHDRSZ writes one int through the valid pointer.
                let r = unsafe { libc::ioctl(fd.as_raw_fd(), 0x8004_54d7, &mut size) };
                let hdr = if r == 0 {
                    size.clamp(0, 64) as usize
                } else {
                    10
                };
                let mut m = vec![0u8; hdr];
                m.extend_from_slice(frame);
                m
            }
            Io::Hub { .. } | Io::None => return,
            Io::Nic { .. } | Io::Dgram { .. } => frame.to_vec(),
        };
        // A peer far behind loses frames rather than machina's memory.
        if target.out.bytes > QUEUE_LIMIT * 4 {
            return;
        }
        target.out.bytes += message.len();
        target.out.q.push_back(message);
        flush(target);
    }

    /// Read what client `key`'s socket has, delivering each frame to its peer.
    pub(super) fn read(&mut self, key: u64, buf: &mut [u8]) {
        for _ in 0..BURST {
            let Some(c) = self.by_key(key) else {
                return;
            };
            if !self.can_send(c) {
                return;
            }
            let Some(c) = self.by_key_mut(key) else {
                return;
            };
            match &mut c.io {
                Io::Nic { relay, .. } => match recv(relay.as_raw_fd(), buf) {
                    Ok(Some(n)) if n <= MAX_FRAME => {
                        let frame = buf[..n].to_vec();
                        self.deliver(key, &frame, 0);
                    }
                    Ok(Some(_)) => {}
                    _ => return,
                },
                Io::Dgram { fd, .. } => match recv(fd.as_raw_fd(), buf) {
                    Ok(Some(n)) if n <= MAX_FRAME => {
                        let frame = buf[..n].to_vec();
                        self.deliver(key, &frame, 0);
                    }
                    Ok(Some(_)) => {}
                    _ => return,
                },
                Io::Stream(s) => {
                    let Some(conn) = &s.conn else {
                        return;
                    };
                    // SAFETY: reading into `buf`, valid for its whole length.
                    let n =
                        unsafe { libc::read(conn.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                    if n < 0 {
                        let e = std::io::Error::last_os_error();
                        match e.raw_os_error() {
                            Some(libc::EAGAIN) | Some(libc::EINTR) => return,
                            _ => {
                                self.disconnected(key);
                                return;
                            }
                        }
                    }
                    if n == 0 {
                        self.disconnected(key);
                        return;
                    }
                    let mut frames = Vec::new();
                    let fed = s
                        .reader
                        .feed(&buf[..n as usize], |f| frames.push(f.to_vec()));
                    for f in frames {
                        self.deliver(key, &f, 0);
                    }
                    if let Err(e) = fed {
                        eprintln!("machina: netdev {}: {e}", c_name(self, key));
                        self.disconnected(key);
                        return;
                    }
                }
                Io::Hub { .. } | Io::Tap { .. } | Io::None => return,
            }
        }
    }
}

pub(super) fn c_name(state: &State, key: u64) -> String {
    state
        .by_key(key)
        .map(|c| c.name.clone())
        .unwrap_or_default()
}

/// One datagram (or the stream bytes of a partial write) from `fd`: Ok(Some(len)) with the
/// full length (MSG_TRUNC), Ok(None) when nothing is waiting.
pub(super) fn recv(fd: RawFd, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    loop {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
        let n = unsafe {
            libc::recv(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(None),
            // A datagram peer that went away (ECONNREFUSED from an earlier send): nothing.
            _ => return Err(e),
        }
    }
}

/// Write a stream's queued bytes as far as `fd` takes them now; false if the peer is gone.
pub(super) fn flush_stream(fd: RawFd, out: &mut OutQueue) -> bool {
    while let Some(front) = out.q.front() {
        let data = &front[out.offset..];
        // SAFETY: `data` is valid for its length; MSG_NOSIGNAL turns SIGPIPE into EPIPE.
        let n = unsafe {
            libc::send(
                fd,
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return true,
                _ => return false,
            }
        }
        if (n as usize) < data.len() {
            out.offset += n as usize;
            return true;
        }
        if let Some(done) = out.q.pop_front() {
            out.bytes -= done.len();
        }
        out.offset = 0;
    }
    true
}

/// Write what client `c` has queued, as far as its socket takes it now.
pub(super) fn flush(c: &mut Client) {
    while let Some(front) = c.out.q.front() {
        let (fd, dest, stream) = match &c.io {
            Io::Nic { relay, .. } => (relay.as_raw_fd(), None, false),
            Io::Dgram { fd, dest } => (fd.as_raw_fd(), dest.as_ref(), false),
            Io::Tap { fd } => (fd.as_raw_fd(), None, false),
            Io::Stream(s) => match &s.conn {
                Some(conn) if !s.connecting => (conn.as_raw_fd(), None, true),
                _ => return,
            },
            Io::Hub { .. } | Io::None => return,
        };
        let data = &front[if stream { c.out.offset } else { 0 }..];
        // SAFETY: `data` is valid for its length; `dest` (when given) points at a sockaddr
        // of its stated length. MSG_NOSIGNAL: a closed peer gives EPIPE, not SIGPIPE.
        let n = unsafe {
            match dest {
                Some(d) => libc::sendto(
                    fd,
                    data.as_ptr().cast(),
                    data.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                    d.ptr(),
                    d.byte_len(),
                ),
                None if matches!(c.io, Io::Tap { .. }) => {
                    libc::write(fd, data.as_ptr().cast(), data.len())
                }
                None => libc::send(
                    fd,
                    data.as_ptr().cast(),
                    data.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                ),
            }
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return,
                // Any other error loses this frame (a datagram with no listener, a broken
                // stream that the read side reports).
                _ => {
                    if stream {
                        c.out.clear();
                        return;
                    }
                }
            }
        } else if stream && (n as usize) < data.len() {
            c.out.offset += n as usize;
            return;
        }
        if let Some(done) = c.out.q.pop_front() {
            c.out.bytes -= done.len();
        }
        c.out.offset = 0;
    }
}
