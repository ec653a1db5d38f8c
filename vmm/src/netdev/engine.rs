//! The network thread: QEMU's net layer for machina's socket-like netdevs. Each netdev and
//! each NIC attached to one is a client with at most one peer (QEMU's NetClientState); a
//! frame a client produces goes to its peer, a hub port hands it to every other port of its
//! hub. The thread polls every client's descriptors (non-blocking, never waiting on a peer),
//! so netdevs work without any NIC (`-M none`), across machine resets and while the QMP
//! monitor reads their state. A NIC reaches its peer through a datagram socket pair: the
//! device's I/O thread moves frames between guest memory and its end, this thread moves
//! them between the other end and the network.

use super::addr::{self, RawAddr, SockAddr};
use super::framing::{self, FrameReader, MAX_FRAME};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;

/// Bytes queued towards one client before its senders stop reading (QEMU stops reading a
/// socket whose peer cannot take the frame).
const QUEUE_LIMIT: usize = 256 << 10;
/// Frames read from one descriptor per wake-up, so one busy peer cannot starve the others.
const BURST: usize = 64;

pub type EventSink = Box<dyn Fn(&str, Value) + Send + Sync>;

/// How a stream connection is set up again after it ends.
#[derive(Debug)]
pub enum StreamMode {
    /// `server=on` / `listen=`: accept the next client.
    Server { listener: OwnedFd, unix: bool },
    /// `server=off` / `connect=`: connect to `addr`, again after `reconnect` if set.
    Client {
        addr: SockAddr,
        reconnect: Option<Duration>,
    },
    /// A connected socket the caller passed (`fd=`, `addr.type=fd`): once only.
    Fd,
}

#[derive(Debug)]
pub struct StreamIo {
    pub mode: StreamMode,
    pub conn: Option<OwnedFd>,
    /// A non-blocking connect is in progress on `conn`.
    pub connecting: bool,
    pub reader: FrameReader,
    pub retry_at: Option<Instant>,
    /// `-netdev socket` (QEMU's older backend: other info texts, no QMP events).
    pub legacy: bool,
}

#[derive(Debug)]
pub enum Io {
    /// A hub port: frames pass through the hub.
    Hub {
        hubid: i64,
    },
    /// The engine's end of a NIC's socket pair, and the device's end (duplicated per build).
    Nic {
        relay: OwnedFd,
        device: OwnedFd,
    },
    Stream(Box<StreamIo>),
    /// A datagram socket; `dest` when unconnected (sendto), none for a passed socket.
    Dgram {
        fd: OwnedFd,
        dest: Option<RawAddr>,
    },
    /// A tap whose frames the device moves itself; the engine only writes what QEMU's net
    /// layer originates (self-announcements), with a zeroed virtio-net header.
    Tap {
        fd: OwnedFd,
    },
    /// A NIC whose frames the device exchanges with a tap directly (shown, and announced
    /// through its tap peer).
    None,
}

pub struct Client {
    pub key: u64,
    pub name: String,
    /// QEMU's NetClientDriver name (`socket`, `stream`, `dgram`, `hubport`, `tap`, `nic`).
    pub driver: &'static str,
    pub info: String,
    pub peer: Option<u64>,
    pub link_down: bool,
    pub io: Io,
    out: OutQueue,
    /// A NIC: its model and MAC (for `info network` and announcements).
    pub nic: Option<(String, [u8; 6])>,
    /// A NIC whose guest may announce itself (virtio-net's GUEST_ANNOUNCE): signalled on
    /// each announcement round, besides the RARP (QEMU's NetClientInfo::announce).
    pub guest_announce: Option<Arc<EventFd>>,
    /// `-object filter-mirror|filter-redirector,netdev=` on this netdev, in creation order.
    pub filters: Vec<Filter>,
}

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
    reader: FrameReader,
    out: OutQueue,
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

impl Client {
    pub fn new(name: String, driver: &'static str, info: String, io: Io) -> Self {
        Self {
            key: 0,
            name,
            driver,
            info,
            peer: None,
            link_down: false,
            io,
            out: OutQueue::default(),
            nic: None,
            guest_announce: None,
            filters: Vec::new(),
        }
    }
}

/// Messages waiting to be written to a client (whole datagrams, or framed stream bytes).
#[derive(Default)]
struct OutQueue {
    q: VecDeque<Vec<u8>>,
    /// Bytes of the first message already written (streams).
    offset: usize,
    bytes: usize,
}

impl OutQueue {
    fn clear(&mut self) {
        self.q.clear();
        self.offset = 0;
        self.bytes = 0;
    }
}

/// A running `announce-self` (QEMU's AnnounceTimer).
struct Announce {
    id: String,
    interfaces: Option<Vec<String>>,
    initial: i64,
    max: i64,
    rounds: i64,
    step: i64,
    /// Rounds left.
    round: i64,
    next: Instant,
}

#[derive(Default)]
pub struct State {
    clients: Vec<Client>,
    next_key: u64,
    /// Hub ids, newest first (QEMU inserts hubs at the head of its list).
    hubs: Vec<i64>,
    announces: Vec<Announce>,
    /// Descriptor numbers taken over from the command line (`fd=N`), never taken twice.
    taken_fds: Vec<RawFd>,
    events: Vec<(&'static str, Value)>,
    chars: Vec<CharEnd>,
}

pub struct Engine {
    state: Mutex<State>,
    wake: EventFd,
}

static ENGINE: OnceLock<Result<Arc<Engine>, String>> = OnceLock::new();
/// Where QMP events go (the monitor's event bus, once it exists).
static SINK: Mutex<Option<Arc<EventSink>>> = Mutex::new(None);

/// Send the network's QMP events (NETDEV_STREAM_*) to `sink` from now on.
pub fn set_sink(sink: EventSink) {
    *SINK.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(sink));
}

/// The engine if some netdev started it.
pub fn running() -> Option<Arc<Engine>> {
    ENGINE.get().and_then(|r| r.as_ref().ok()).cloned()
}

/// The process's network thread, started on first use (after any `-daemonize` fork).
pub fn engine() -> Result<Arc<Engine>, String> {
    ENGINE
        .get_or_init(|| {
            let engine = Arc::new(Engine {
                state: Mutex::new(State::default()),
                wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
                    .map_err(|e| format!("cannot create the network thread's eventfd: {e}"))?,
            });
            let thread = engine.clone();
            std::thread::Builder::new()
                .name("net".into())
                .spawn(move || thread.run())
                .map_err(|e| format!("cannot start the network thread: {e}"))?;
            Ok(engine)
        })
        .clone()
}

fn io_err_text(e: &std::io::Error) -> String {
    super::plain(e)
}

impl Engine {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wake the thread after a change to the clients (new descriptors to poll).
    pub fn kick(&self) {
        let _ = self.wake.write(1);
    }

    /// Emit the events the last changes queued (outside the state lock).
    pub fn emit_pending(&self) {
        let events = std::mem::take(&mut self.lock().events);
        self.emit(events);
    }

    fn emit(&self, events: Vec<(&'static str, Value)>) {
        if events.is_empty() {
            return;
        }
        let sink = SINK.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(sink) = sink {
            for (name, data) in events {
                sink(name, data);
            }
        }
    }

    /// Deliver what client `key`'s socket holds now (QEMU's qemu_flush_queued_packets when
    /// its NIC gains receive buffers): its frames are in the NIC's socket when this returns.
    /// The caller may hold a device lock: events this causes (a stream's disconnection)
    /// are left for the network thread to emit.
    pub fn pull(&self, key: u64) {
        let mut buf = vec![0u8; MAX_FRAME + 1];
        self.lock().read(key, &mut buf);
        // Output may be queued and events pending now: the thread takes them.
        self.kick();
    }

    fn run(&self) {
        // Process signals (SIGTERM, SIGINT, SIGHUP) belong to the run loop's signalfd: this
        // thread, which may start before the loop blocks them, must never take one.
        // SAFETY: sigfillset initialises the set; pthread_sigmask changes only this thread's
        // mask and reads the set through a valid pointer.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut set);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        let mut buf = vec![0u8; MAX_FRAME + 1];
        loop {
            let (mut fds, owners, timeout) = {
                let state = self.lock();
                state.poll_set(self.wake.as_raw_fd())
            };
            let timeout_ms = timeout.map_or(-1, |t| {
                let now = Instant::now();
                if t <= now {
                    0
                } else {
                    (t - now).as_millis().min(60_000) as i32 + 1
                }
            });
            // SAFETY: `fds` is a valid array of pollfd of the given length for the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    eprintln!("machina: network thread: poll: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            let _ = self.wake.read();
            let events = {
                let mut state = self.lock();
                for (pfd, owner) in fds.iter().zip(&owners) {
                    if pfd.revents == 0 {
                        continue;
                    }
                    if let Some((key, what)) = owner {
                        state.ready(*key, *what, pfd.revents, &mut buf);
                    }
                }
                state.timers();
                std::mem::take(&mut state.events)
            };
            self.emit(events);
        }
    }
}

/// The descriptors to poll, who owns each (none: the wake eventfd), and the next timer.
type PollSet = (
    Vec<libc::pollfd>,
    Vec<Option<(u64, Which)>>,
    Option<Instant>,
);

/// Which descriptor of a client a pollfd is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Main,
    Listener,
    Char,
    CharListener,
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

impl State {
    pub fn clients(&self) -> &[Client] {
        &self.clients
    }

    pub fn hubs(&self) -> &[i64] {
        &self.hubs
    }

    pub fn find(&self, name: &str) -> Option<&Client> {
        self.clients
            .iter()
            .find(|c| c.name == name && c.driver != "nic")
    }

    /// The NIC client named `name`.
    pub fn find_nic_mut(&mut self, name: &str) -> Option<&mut Client> {
        self.clients
            .iter_mut()
            .find(|c| c.name == name && c.driver == "nic")
    }

    pub fn by_key(&self, key: u64) -> Option<&Client> {
        self.clients.iter().find(|c| c.key == key)
    }

    fn by_key_mut(&mut self, key: u64) -> Option<&mut Client> {
        self.clients.iter_mut().find(|c| c.key == key)
    }

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
    fn run_filters(&mut self, owner: u64, dir: u8, order: &[usize], frame: &[u8]) -> bool {
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

    fn filter_count(&self, key: u64) -> usize {
        self.by_key(key).map_or(0, |c| c.filters.len())
    }

    /// A frame read from the indev of filter `index` of netdev `netdev` continues after that
    /// filter (QEMU's redirector_to_filter / qemu_netfilter_pass_to_next).
    fn inject(&mut self, netdev: u64, index: usize, frame: &[u8]) {
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

    fn char_write(&mut self, key: u64, frame: &[u8]) {
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

    fn char_ready(&mut self, key: u64, which: Which, revents: libc::c_short, buf: &mut [u8]) {
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

    /// Take over descriptor `fd` named on the command line (once).
    pub fn take_fd(&mut self, fd: RawFd) -> Result<(), String> {
        if self.taken_fds.contains(&fd) {
            return Err(format!(
                "file descriptor {fd} is already used by another netdev"
            ));
        }
        self.taken_fds.push(fd);
        Ok(())
    }

    pub fn add(&mut self, mut client: Client) -> u64 {
        self.next_key += 1;
        client.key = self.next_key;
        if let Io::Hub { hubid } = client.io {
            if !self.hubs.contains(&hubid) {
                self.hubs.insert(0, hubid);
            }
        }
        let key = client.key;
        self.clients.push(client);
        key
    }

    /// Connect two clients as peers.
    pub fn link(&mut self, a: u64, b: u64) {
        if let Some(c) = self.by_key_mut(a) {
            c.peer = Some(b);
        }
        if let Some(c) = self.by_key_mut(b) {
            c.peer = Some(a);
        }
    }

    /// Remove a client (netdev_del, or its last handle dropped); its peer loses it.
    pub fn remove(&mut self, key: u64) {
        if let Some(pos) = self.clients.iter().position(|c| c.key == key) {
            let c = self.clients.remove(pos);
            if let Some(peer) = c.peer.and_then(|p| self.by_key_mut(p)) {
                peer.peer = None;
            }
            if let Io::Hub { hubid } = c.io {
                let left = self
                    .clients
                    .iter()
                    .any(|o| matches!(o.io, Io::Hub { hubid: h } if h == hubid));
                if !left {
                    self.hubs.retain(|h| *h != hubid);
                }
            }
        }
    }

    /// Hub ports of hub `hubid`, newest first (QEMU's list order).
    pub fn hub_ports(&self, hubid: i64) -> Vec<&Client> {
        self.clients
            .iter()
            .rev()
            .filter(|c| matches!(c.io, Io::Hub { hubid: h } if h == hubid))
            .collect()
    }

    fn poll_set(&self, wake: RawFd) -> PollSet {
        let mut fds = vec![pollfd(wake, libc::POLLIN)];
        let mut owners = vec![None];
        let mut timeout: Option<Instant> = None;
        let mut earliest = |t: Instant| {
            timeout = Some(timeout.map_or(t, |old: Instant| old.min(t)));
        };
        for c in &self.clients {
            let can_read = self.can_send(c);
            let want_out = !c.out.q.is_empty();
            let mut add = |fd: RawFd, events: libc::c_short, which: Which| {
                if events != 0 {
                    fds.push(pollfd(fd, events));
                    owners.push(Some((c.key, which)));
                }
            };
            let rw = |read: bool, write: bool| {
                (if read { libc::POLLIN } else { 0 }) | (if write { libc::POLLOUT } else { 0 })
            };
            match &c.io {
                Io::Nic { relay, .. } => {
                    add(relay.as_raw_fd(), rw(can_read, want_out), Which::Main)
                }
                Io::Dgram { fd, .. } => add(fd.as_raw_fd(), rw(can_read, want_out), Which::Main),
                Io::Stream(s) => {
                    if let Some(conn) = &s.conn {
                        let events = if s.connecting {
                            libc::POLLOUT
                        } else {
                            rw(can_read, want_out)
                        };
                        add(conn.as_raw_fd(), events, Which::Main);
                    } else if let StreamMode::Server { listener, .. } = &s.mode {
                        add(listener.as_raw_fd(), libc::POLLIN, Which::Listener);
                    }
                    if let Some(t) = s.retry_at {
                        earliest(t);
                    }
                }
                Io::Hub { .. } | Io::Tap { .. } | Io::None => {}
            }
        }
        for ch in &self.chars {
            if let Some(conn) = &ch.conn {
                let out = if ch.out.q.is_empty() {
                    0
                } else {
                    libc::POLLOUT
                };
                fds.push(pollfd(conn.as_raw_fd(), libc::POLLIN | out));
                owners.push(Some((ch.key, Which::Char)));
            } else if let Some(l) = &ch.listener {
                fds.push(pollfd(l.as_raw_fd(), libc::POLLIN));
                owners.push(Some((ch.key, Which::CharListener)));
            }
        }
        for a in &self.announces {
            earliest(a.next);
        }
        (fds, owners, timeout)
    }

    /// Whether a frame `c` produces now would be taken (QEMU's qemu_can_send_packet): a
    /// client without peer drops what it produces, so it may always read.
    fn can_send(&self, c: &Client) -> bool {
        match c.peer.and_then(|p| self.by_key(p)) {
            None => true,
            Some(peer) => self.can_receive(peer, 0),
        }
    }

    fn can_receive(&self, c: &Client, depth: u32) -> bool {
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
    fn deliver(&mut self, from: u64, frame: &[u8], depth: u32) {
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
    fn receive(&mut self, to: u64, _from: u64, frame: &[u8], depth: u32) {
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

    fn ready(&mut self, key: u64, which: Which, revents: libc::c_short, buf: &mut [u8]) {
        if matches!(which, Which::Char | Which::CharListener) {
            self.char_ready(key, which, revents, buf);
            return;
        }
        let Some(c) = self.by_key_mut(key) else {
            return;
        };
        if which == Which::Listener {
            self.accept(key);
            return;
        }
        if revents & libc::POLLOUT != 0 {
            if let Io::Stream(s) = &c.io {
                if s.connecting {
                    self.connect_done(key);
                    return;
                }
            }
            flush(c);
        }
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            self.read(key, buf);
        }
    }

    /// Read what client `key`'s socket has, delivering each frame to its peer.
    fn read(&mut self, key: u64, buf: &mut [u8]) {
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

    fn accept(&mut self, key: u64) {
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

    fn arm_reconnect(&mut self, key: u64) {
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
    fn disconnected(&mut self, key: u64) {
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

    fn timers(&mut self) {
        let now = Instant::now();
        let due: Vec<u64> = self
            .clients
            .iter()
            .filter(|c| matches!(&c.io, Io::Stream(s) if s.retry_at.is_some_and(|t| t <= now)))
            .map(|c| c.key)
            .collect();
        for key in due {
            self.start_connect(key);
        }
        let mut i = 0;
        while i < self.announces.len() {
            if self.announces[i].next > now {
                i += 1;
                continue;
            }
            let interfaces = self.announces[i].interfaces.clone();
            self.announce_once(interfaces.as_deref());
            let a = &mut self.announces[i];
            a.round -= 1;
            if a.round <= 0 {
                self.announces.remove(i);
            } else {
                a.next = now + Duration::from_millis(announce_step(a) as u64);
                i += 1;
            }
        }
    }

    /// QMP `announce-self`: a RARP from every NIC now, then `rounds - 1` more; a timer
    /// with the same id is replaced (rounds 0 stops it).
    pub fn announce(
        &mut self,
        id: String,
        interfaces: Option<Vec<String>>,
        initial: i64,
        max: i64,
        rounds: i64,
        step: i64,
    ) {
        self.announces.retain(|a| a.id != id);
        if rounds <= 0 {
            return;
        }
        self.announce_once(interfaces.as_deref());
        if rounds > 1 {
            let mut a = Announce {
                id,
                interfaces,
                initial,
                max,
                rounds,
                step,
                round: rounds - 1,
                next: Instant::now(),
            };
            a.next = Instant::now() + Duration::from_millis(announce_step(&a) as u64);
            self.announces.push(a);
        }
    }

    fn announce_once(&mut self, interfaces: Option<&[String]>) {
        let nics: Vec<(u64, [u8; 6])> = self
            .clients
            .iter()
            .filter_map(|c| c.nic.as_ref().map(|(_, mac)| (c.key, *mac, &c.name)))
            .filter(|(_, _, name)| interfaces.is_none_or(|list| list.iter().any(|i| i == *name)))
            .map(|(k, m, _)| (k, m))
            .collect();
        for (key, mac) in nics {
            self.deliver(key, &rarp(&mac), 0);
            if let Some(fd) = self.by_key(key).and_then(|c| c.guest_announce.as_ref()) {
                // The device reads the count; a full counter still means "announce".
                let _ = fd.write(1);
            }
        }
    }
}

fn c_name(state: &State, key: u64) -> String {
    state
        .by_key(key)
        .map(|c| c.name.clone())
        .unwrap_or_default()
}

/// QEMU's qemu_announce_timer_step: the delay before the next round.
fn announce_step(a: &Announce) -> i64 {
    let step = a.initial + (a.rounds - a.round - 1) * a.step;
    if step < 0 || step > a.max {
        a.max
    } else {
        step
    }
}

/// QEMU's announce_self_create: a broadcast RARP request from `mac`, padded to 60 bytes.
pub fn rarp(mac: &[u8; 6]) -> Vec<u8> {
    let mut buf = vec![0u8; 60];
    buf[..6].fill(0xff);
    buf[6..12].copy_from_slice(mac);
    buf[12..14].copy_from_slice(&0x8035u16.to_be_bytes());
    buf[14..16].copy_from_slice(&1u16.to_be_bytes());
    buf[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
    buf[18] = 6;
    buf[19] = 4;
    buf[20..22].copy_from_slice(&3u16.to_be_bytes());
    buf[22..28].copy_from_slice(mac);
    buf[32..38].copy_from_slice(mac);
    buf
}

/// What QEMU names in a failed connect: the path, or host:port.
fn connect_target(addr: &SockAddr) -> String {
    match addr {
        SockAddr::Inet { host, port, .. } => format!("{host}:{port}"),
        SockAddr::Unix { path, .. } => path.to_string_lossy().into_owned(),
        SockAddr::Fd(s) => s.clone(),
    }
}

/// A socket connecting to `addr`: (socket, connected already).
fn open_connect(addr: &SockAddr) -> Result<(OwnedFd, bool), String> {
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

/// One datagram (or the stream bytes of a partial write) from `fd`: Ok(Some(len)) with the
/// full length (MSG_TRUNC), Ok(None) when nothing is waiting.
fn recv(fd: RawFd, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
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
fn flush_stream(fd: RawFd, out: &mut OutQueue) -> bool {
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
fn flush(c: &mut Client) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rarp_matches_qemus_layout() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let f = rarp(&mac);
        assert_eq!(f.len(), 60);
        assert_eq!(&f[..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x80, 0x35]);
        assert_eq!(&f[20..22], &[0, 3]);
        assert_eq!(&f[32..38], &mac);
    }

    #[test]
    fn announce_steps_follow_qemus_formula() {
        let mut a = Announce {
            id: String::new(),
            interfaces: None,
            initial: 50,
            max: 550,
            rounds: 5,
            step: 100,
            round: 4,
            next: Instant::now(),
        };
        assert_eq!(announce_step(&a), 50);
        a.round = 1;
        assert_eq!(announce_step(&a), 350);
        a.step = 1000;
        assert_eq!(announce_step(&a), 550, "capped at max");
    }

    /// announce-self signals a NIC's guest-announce EventFd besides sending its RARP; a
    /// NIC left out by `interfaces` is not asked.
    #[test]
    fn announce_asks_the_guests_of_the_named_nics() {
        let mut state = State::default();
        let fds: Vec<Arc<EventFd>> = (0..2)
            .map(|_| Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()))
            .collect();
        for (i, name) in ["net0", "net1"].iter().enumerate() {
            let mut c = Client::new(name.to_string(), "nic", String::new(), Io::None);
            c.nic = Some((
                "virtio-net-pci".into(),
                [0x52, 0x54, 0, 0x12, 0x34, i as u8],
            ));
            state.add(c);
        }
        for (name, fd) in ["net0", "net1"].iter().zip(&fds) {
            state.find_nic_mut(name).unwrap().guest_announce = Some(fd.clone());
        }
        state.announce("a".into(), Some(vec!["net1".into()]), 50, 550, 1, 100);
        assert!(fds[0].read().is_err(), "net0 was not named");
        assert_eq!(fds[1].read().unwrap(), 1);
        state.announce("b".into(), None, 50, 550, 1, 100);
        assert_eq!(fds[0].read().unwrap(), 1);
        assert_eq!(fds[1].read().unwrap(), 1);
    }
}
