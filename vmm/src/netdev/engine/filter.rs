//! Packet filters on a netdev (QEMU's filter-mirror and filter-redirector) and the socket
//! chardevs they send frames to and read frames from.

use super::deliver::flush_stream;
use super::poll::Which;
use super::*;

/// QEMU's NetFilterDirection bits (`queue=`): TX is what the netdev sends, RX what it gets.
pub const DIR_TX: u8 = 1;
pub const DIR_RX: u8 = 2;

/// A packet filter on a netdev (QEMU's filter-mirror and filter-redirector).
#[derive(Debug, Clone)]
pub struct Filter {
    pub id: String,
    pub redirector: bool,
    /// DIR_TX, DIR_RX or both.
    pub dir: u8,
    /// Chardev endpoints (keys of [`CharEnd`]) frames go out to / come in from.
    pub outdev: Option<u64>,
    pub indev: Option<u64>,
}

/// A socket chardev a filter uses (`-chardev socket,...`): frames pass framed as on a
/// stream netdev.
pub struct CharEnd {
    pub key: u64,
    pub name: String,
    /// A server's listening socket (`server=on`): one client at a time.
    pub listener: Option<OwnedFd>,
    pub conn: Option<OwnedFd>,
    pub(super) reader: FrameReader,
    pub(super) out: OutQueue,
}

impl CharEnd {
    pub fn new(name: String, listener: Option<OwnedFd>, conn: Option<OwnedFd>) -> Self {
        Self {
            key: 0,
            name,
            listener,
            conn,
            reader: FrameReader::new(),
            out: OutQueue::default(),
        }
    }
}

impl State {
    pub fn char_by_name(&self, name: &str) -> Option<u64> {
        self.chars.iter().find(|c| c.name == name).map(|c| c.key)
    }

    pub fn add_char(&mut self, mut end: CharEnd) -> u64 {
        self.next_key += 1;
        end.key = self.next_key;
        self.chars.push(end);
        self.next_key
    }

    /// Add `filter` to the netdev named `netdev`; false if there is none.
    pub fn add_filter(&mut self, netdev: &str, filter: Filter) -> bool {
        match self
            .clients
            .iter_mut()
            .find(|c| c.name == netdev && c.driver != "nic")
        {
            Some(c) => {
                c.filters.push(filter);
                true
            }
            None => false,
        }
    }

    /// Filters that see a frame: `owner`'s filters `order` (indices) whose queue includes
    /// `dir`. A mirror copies the frame to its outdev; a redirector with an outdev takes it
    /// there. Returns false when a filter took the frame.
    pub(super) fn run_filters(
        &mut self,
        owner: u64,
        dir: u8,
        order: &[usize],
        frame: &[u8],
    ) -> bool {
        let Some(c) = self.by_key(owner) else {
            return true;
        };
        let filters: Vec<Filter> = order
            .iter()
            .filter_map(|i| c.filters.get(*i).cloned())
            .collect();
        for f in filters {
            if f.dir & dir == 0 {
                continue;
            }
            if let Some(out) = f.outdev {
                self.char_write(out, frame);
                if f.redirector {
                    return false;
                }
            }
        }
        true
    }

    pub(super) fn filter_count(&self, key: u64) -> usize {
        self.by_key(key).map_or(0, |c| c.filters.len())
    }

    /// A frame read from the indev of filter `index` of netdev `netdev` continues after that
    /// filter (QEMU's redirector_to_filter / qemu_netfilter_pass_to_next).
    pub(super) fn inject(&mut self, netdev: u64, index: usize, frame: &[u8]) {
        let Some(c) = self.by_key(netdev) else {
            return;
        };
        let Some(f) = c.filters.get(index) else {
            return;
        };
        let (dir, peer, n) = (f.dir, c.peer, c.filters.len());
        let Some(peer) = peer else {
            return;
        };
        if dir & DIR_TX != 0 {
            let after: Vec<usize> = (index + 1..n).collect();
            if self.run_filters(netdev, DIR_TX, &after, frame) {
                self.receive(peer, netdev, frame, 0);
            }
        }
        if dir & DIR_RX != 0 {
            let before: Vec<usize> = (0..index).rev().collect();
            if self.run_filters(netdev, DIR_RX, &before, frame) {
                self.receive(netdev, peer, frame, 0);
            }
        }
    }

    pub(super) fn char_write(&mut self, key: u64, frame: &[u8]) {
        let Some(ch) = self.chars.iter_mut().find(|c| c.key == key) else {
            return;
        };
        let Some(conn) = &ch.conn else {
            return;
        };
        if ch.out.bytes > QUEUE_LIMIT * 4 {
            return;
        }
        let message = framing::encode(frame);
        ch.out.bytes += message.len();
        ch.out.q.push_back(message);
        let fd = conn.as_raw_fd();
        if !flush_stream(fd, &mut ch.out) {
            ch.conn = None;
            ch.out.clear();
        }
    }

    pub(super) fn char_ready(
        &mut self,
        key: u64,
        which: Which,
        revents: libc::c_short,
        buf: &mut [u8],
    ) {
        let Some(pos) = self.chars.iter().position(|c| c.key == key) else {
            return;
        };
        if which == Which::CharListener {
            let ch = &mut self.chars[pos];
            if let Some(l) = &ch.listener {
                if let Ok(Some(conn)) = addr::accept(l.as_raw_fd()) {
                    ch.conn = Some(conn);
                    ch.reader.reset();
                    ch.out.clear();
                }
            }
            return;
        }
        if revents & libc::POLLOUT != 0 {
            let ch = &mut self.chars[pos];
            if let Some(conn) = &ch.conn {
                if !flush_stream(conn.as_raw_fd(), &mut ch.out) {
                    ch.conn = None;
                    ch.out.clear();
                    return;
                }
            }
        }
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) == 0 {
            return;
        }
        let ch = &mut self.chars[pos];
        let Some(conn) = &ch.conn else {
            return;
        };
        // SAFETY: reading into `buf`, valid for its whole length.
        let n = unsafe { libc::read(conn.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) {
                ch.conn = None;
                ch.out.clear();
            }
            return;
        }
        if n == 0 {
            ch.conn = None;
            ch.out.clear();
            return;
        }
        let mut frames = Vec::new();
        if ch
            .reader
            .feed(&buf[..n as usize], |f| frames.push(f.to_vec()))
            .is_err()
        {
            ch.conn = None;
            ch.out.clear();
        }
        // The filters that read this chardev (their indev).
        let feeds: Vec<(u64, usize)> = self
            .clients
            .iter()
            .flat_map(|c| {
                c.filters
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.indev == Some(key))
                    .map(move |(i, _)| (c.key, i))
            })
            .collect();
        for frame in frames {
            for (netdev, index) in &feeds {
                self.inject(*netdev, *index, &frame);
            }
        }
    }
}
