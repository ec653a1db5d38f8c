//! The network thread: QEMU's net layer for machina's socket-like netdevs. Each netdev and
//! each NIC attached to one is a client with at most one peer (QEMU's NetClientState); a
//! frame a client produces goes to its peer, a hub port hands it to every other port of its
//! hub. The thread polls every client's descriptors (non-blocking, never waiting on a peer),
//! so netdevs work without any NIC (`-M none`), across machine resets and while the QMP
//! monitor reads their state. A NIC reaches its peer through a datagram socket pair: the
//! device's I/O thread moves frames between guest memory and its end, this thread moves
//! them between the other end and the network.
//!
//! Here: the clients, the state and the thread's handle. `poll` holds the thread's loop,
//! `deliver` the frames between clients, `stream` stream connections, `filter` packet
//! filters and their chardevs, `announce` announce-self.

mod announce;
mod deliver;
mod filter;
mod poll;
mod stream;

pub use announce::rarp;
use announce::Announce;
pub use filter::{CharEnd, Filter, DIR_RX, DIR_TX};

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

    pub(super) fn by_key_mut(&mut self, key: u64) -> Option<&mut Client> {
        self.clients.iter_mut().find(|c| c.key == key)
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
}
