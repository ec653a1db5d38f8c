//! virtio-net (type 1) over a tap with a vnet header (or a datagram socket to a netdev of
//! the network thread, which carries bare frames). As QEMU's hw/net/virtio-net.c:
//! - features from the device's properties with QEMU's defaults: checksum and TSO/UFO
//!   offloads both ways (only over a tap, which takes and gives the guest's headers; the
//!   guest's negotiated receive offloads go to the tap with TUNSETOFFLOAD), mergeable
//!   receive buffers, the control queue (rx mode, MAC table and address, VLAN filter,
//!   guest offloads), STATUS, and `mq` with one tap queue per queue pair;
//! - the 12-byte header with VERSION_1 or MRG_RXBUF and the 10-byte legacy one otherwise,
//!   the tap set to the same length, so frames pass through with their header: a
//!   transmitted chain is one writev from guest memory to the tap, a received frame one
//!   readv from the tap into the guest's buffers (several chains with MRG_RXBUF; iovecs
//!   bounds-checked against guest RAM);
//! - QEMU's receive filter once the driver leaves promiscuous mode.
//!
//! Queues: rx and tx of each pair (2i, 2i+1), then the control queue.
//!
//! Here: the device, its queue pairs and its config space. [`features`] holds the feature
//! bits and properties, `rx` the receive path, `tx` the transmit path, `ctrl` the control
//! queue and receive filter, `iovec` the copies over guest buffers, [`tap`] the tap ioctls.

mod ctrl;
pub mod features;
mod iovec;
mod rx;
pub mod tap;
#[cfg(test)]
mod tests;
mod tx;

use super::device::{
    bad_queue, read_config_bytes, DeviceError, QueueContext, QueueGroup, VirtioDevice,
};
use super::iov::{chain_iovecs, data_ranges};
use super::regs::features::VERSION_1;
use machine::MacAddr;
use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

pub const DEVICE_TYPE: u16 = 1;

use features::*;
pub use features::{default_requested, FEATURE_PROPERTIES};
use rx::{RxChain, Scratch, Spare};

const S_LINK_UP: u16 = 1;

const QUEUE_SIZE: u16 = 256;
const CTRL_QUEUE_SIZE: u16 = 64;
/// Largest frame plus header we move: a 64 KiB GSO frame with its Ethernet and VLAN headers.
const MAX_FRAME: usize = 65_562;
/// An untagged or tagged Ethernet frame of the standard MTU.
const MAX_PLAIN_FRAME: usize = 1518;
/// Largest control command read (a full MAC table is under 1 KiB).
const MAX_CTRL: usize = 4096;

/// The tap the VMM opened (see [`tap::open_tap`]) and the MAC the machine gives the device
/// (its `mac=`, or QEMU's default numbering: `devices::kinds::mac_of`).
pub struct NetBackend {
    pub tap: File,
    pub mac: MacAddr,
    /// The other queues of a multiqueue tap (`-netdev tap,queues=N`), one per further
    /// queue pair.
    pub more_queues: Vec<File>,
    /// Signalled by the network layer on each `announce-self` round: a driver that
    /// negotiated GUEST_ANNOUNCE is asked to announce itself.
    pub announce: Option<Arc<EventFd>>,
}

/// Event-source token of the announce EventFd (pair tokens are the pair indices).
const ANNOUNCE_TOKEN: u32 = 0x8000;

/// One queue pair's backend: a tap queue (or the socket) and its receive state.
struct Pair {
    tap: File,
    /// The tap may have frames (edge-triggered: set on readiness, cleared on EAGAIN).
    readable: bool,
    /// Receive chains taken from the ring, not yet used (several for one frame with
    /// MRG_RXBUF).
    pending: VecDeque<RxChain>,
    /// Sends to the backend are failing (reported once, when they start).
    tx_failing: bool,
    /// Used entries of received (or dropped) frames not yet published (see `rx`).
    used: Vec<(u16, u32)>,
    /// Iovec vectors of used receive chains, reused (see [`Spare`]).
    spare: Spare,
    /// Where a tap's frame lands first (see `rx::BOUNCE`).
    bounce: Box<[u8]>,
    /// A frame read while the guest's merged buffers were fewer than a largest frame
    /// needs (allocated then, kept), and its length while it waits for enough of them.
    parked: Option<Box<[u8]>>,
    parked_len: Option<usize>,
}

impl Pair {
    fn new(tap: File) -> Self {
        Pair {
            tap,
            readable: true,
            pending: VecDeque::new(),
            tx_failing: false,
            used: Vec::new(),
            spare: Spare::default(),
            bounce: vec![0; rx::BOUNCE].into_boxed_slice(),
            parked: None,
            parked_len: None,
        }
    }
}

pub struct Net {
    /// How log lines name the device (`logging::pci_name`).
    name: String,
    pairs: Vec<Pair>,
    /// Pairs the driver uses (1 until it sets more with VQ_PAIRS_SET).
    active_pairs: usize,
    mac: [u8; 6],
    /// The configured MAC, restored at reset.
    conf_mac: [u8; 6],
    /// The backend is a datagram socket (a NIC without netdev, or the socket pair to a
    /// socket-like netdev), not a tap: frames pass without the virtio-net header.
    socket: bool,
    /// Device features offered.
    offered: u64,
    /// Features the driver acked (at DRIVER_OK).
    acked: u64,
    /// Receive offloads in force (feature bits), also set by the control queue.
    guest_offloads: u64,
    /// Header length the guest negotiated (10, or 12 with VERSION_1 / MRG_RXBUF).
    hdr_len: usize,
    filter: ctrl::RxFilter,
    /// VIRTIO_NET_S_ANNOUNCE: the driver was asked to announce and has not acknowledged.
    announce: bool,
    /// What `announce-self` signals (see [`NetBackend::announce`]).
    announce_fd: Option<Arc<EventFd>>,
    scratch: Scratch,
    /// Multiqueue: the queue pairs run on handlers of their own (`split`); this device
    /// keeps the control queue, config space and announcements, and publishes here what
    /// the pairs need of the state they change.
    published: Option<Arc<PairView>>,
    /// A pair's handler: which pair it is and where the device publishes its state.
    view: Option<(Arc<PairView>, usize)>,
    /// The view generation this handler copied last.
    seen: u64,
    /// The iovecs of the frame being sent, reused from frame to frame.
    tx_scratch: Scratch,
}

/// What the control queue (and config writes, activation, reset) change that a split-off
/// pair's receive path needs: published by the device, copied by the pair's handler when
/// the generation moved (one atomic load per pass otherwise).
struct PairView {
    generation: AtomicU64,
    state: Mutex<ViewState>,
}

struct ViewState {
    generation: u64,
    filter: ctrl::RxFilter,
    mac: [u8; 6],
    guest_offloads: u64,
    active_pairs: usize,
}

/// A handler's `seen` that no generation matches: copy at the next pass.
const STALE: u64 = u64::MAX;

fn is_socket(file: &File) -> bool {
    use std::os::unix::fs::FileTypeExt;
    file.metadata().is_ok_and(|m| m.file_type().is_socket())
}

impl Net {
    pub fn new(backend: NetBackend) -> Self {
        Self::with_features(backend, default_requested())
    }

    /// A device offering the features `requested` (bits of [`FEATURE_PROPERTIES`]) that
    /// machina can give over this backend; a queue pair per tap queue (as QEMU, whether or
    /// not `mq=on` lets the driver use more than one).
    pub fn with_features(backend: NetBackend, requested: u64) -> Self {
        let socket = is_socket(&backend.tap);
        let mut pairs = vec![Pair::new(backend.tap)];
        pairs.extend(backend.more_queues.into_iter().map(Pair::new));
        let mut offered = (requested | F_MAC) & (default_requested() | F_MQ | F_MAC);
        if socket {
            offered &= !NEED_VNET_HDR;
        }
        Self {
            // Log lines name the function; the transport sets it (set_name).
            name: String::new(),
            pairs,
            active_pairs: 1,
            mac: backend.mac.bytes(),
            conf_mac: backend.mac.bytes(),
            socket,
            offered,
            acked: 0,
            guest_offloads: 0,
            hdr_len: 10,
            filter: ctrl::RxFilter::default(),
            announce: false,
            announce_fd: backend.announce,
            scratch: Scratch::default(),
            published: None,
            view: None,
            seen: STALE,
            tx_scratch: Scratch::default(),
        }
    }

    /// Publish the state split-off pairs need (after anything that changes it).
    fn publish(&self) {
        let Some(v) = &self.published else {
            return;
        };
        let mut st = v.state.lock().unwrap_or_else(|e| e.into_inner());
        st.generation += 1;
        st.filter.clone_from(&self.filter);
        st.mac = self.mac;
        st.guest_offloads = self.guest_offloads;
        st.active_pairs = self.active_pairs;
        v.generation.store(st.generation, Ordering::Release);
    }

    /// A pair's handler: take what the device published since the last pass.
    fn pull(&mut self) {
        let Some((v, pair)) = &self.view else {
            return;
        };
        if v.generation.load(Ordering::Acquire) == self.seen {
            return;
        }
        let st = v.state.lock().unwrap_or_else(|e| e.into_inner());
        self.filter.clone_from(&st.filter);
        self.mac = st.mac;
        self.guest_offloads = st.guest_offloads;
        // The handler's only pair is its pair 0.
        self.active_pairs = usize::from(*pair < st.active_pairs);
        self.seen = st.generation;
    }

    /// The handler of queue pair `pair` (queues 2 * pair and 2 * pair + 1 of the device,
    /// its 0 and 1), on a duplicate of that pair's tap queue.
    fn pair_handler(&self, pair: usize, view: &Arc<PairView>) -> std::io::Result<Net> {
        let tap = self
            .pairs
            .get(pair)
            .ok_or_else(|| std::io::Error::other(format!("no queue pair {pair}")))?
            .tap
            .try_clone()?;
        Ok(Net {
            name: self.name.clone(),
            pairs: vec![Pair::new(tap)],
            active_pairs: 0,
            mac: self.mac,
            conf_mac: self.conf_mac,
            socket: self.socket,
            offered: self.offered,
            acked: 0,
            guest_offloads: 0,
            hdr_len: 10,
            filter: ctrl::RxFilter::default(),
            announce: false,
            announce_fd: None,
            scratch: Scratch::default(),
            tx_scratch: Scratch::default(),
            published: None,
            view: Some((view.clone(), pair)),
            seen: STALE,
        })
    }

    fn hdr_len(features: u64) -> usize {
        if features & (VERSION_1 | F_MRG_RXBUF) != 0 {
            12
        } else {
            10
        }
    }

    fn ctrl_queue(&self) -> usize {
        2 * self.pairs.len()
    }

    /// Tell every tap the receive offloads in force; a tap that refuses is reported.
    fn apply_offloads(&self) {
        if self.socket {
            return;
        }
        let flags = tun_offloads(self.guest_offloads);
        for p in &self.pairs {
            // QEMU retries without UFO, which newer kernels may refuse.
            let set = tap::set_offload(&p.tap, flags)
                .or_else(|_| tap::set_offload(&p.tap, flags & !0x10));
            if let Err(e) = set {
                log::error!(
                    "{}: cannot set the tap's offloads to {flags:#x}: {e}",
                    self.name
                );
            }
        }
    }

    /// Use `n` queue pairs: the taps of the others are detached so the host sends them
    /// nothing (QEMU's virtio_net_set_queue_pairs).
    fn set_active_pairs(&mut self, n: usize) {
        self.active_pairs = n;
        // Split-off pairs learn it before their taps get frames.
        self.publish();
        if self.socket || self.pairs.len() < 2 {
            return;
        }
        for (i, p) in self.pairs.iter().enumerate() {
            if let Err(e) = tap::set_queue_enabled(&p.tap, i < n) {
                log::error!("{}: cannot switch tap queue {i}: {e}", self.name);
            }
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        let mut q = vec![QUEUE_SIZE; 2 * self.pairs.len()];
        q.push(CTRL_QUEUE_SIZE);
        q
    }

    fn features(&self) -> u64 {
        self.offered
    }

    fn legacy_features(&self) -> u64 {
        F_GSO
    }

    fn config_len(&self) -> usize {
        // QEMU's virtio_net_config_size: up to the last field a feature offered needs.
        if self.offered & F_MQ != 0 {
            10
        } else if self.offered & F_STATUS != 0 {
            8
        } else {
            6
        }
    }

    fn read_config(&self, offset: usize, data: &mut [u8]) {
        let mut c = [0u8; 10];
        c[..6].copy_from_slice(&self.mac);
        let status = S_LINK_UP | if self.announce { 2 } else { 0 };
        c[6..8].copy_from_slice(&status.to_le_bytes());
        c[8..10].copy_from_slice(&(self.pairs.len() as u16).to_le_bytes());
        read_config_bytes(&c[..self.config_len()], offset, data);
    }

    fn set_name(&mut self, name: &str) {
        self.name = name.to_string();
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        // A pair's handler takes the MAC from the device's view.
        if self.view.is_some() {
            return;
        }
        // Legacy drivers without CTRL_MAC_ADDR set the MAC through config space.
        for (i, &b) in data.iter().enumerate() {
            if let Some(m) = self.mac.get_mut(offset + i) {
                *m = b;
            }
        }
        self.publish();
    }

    fn activate(&mut self, features: u64) {
        self.acked = features;
        // The tap must frame packets with the header length the guest negotiated; if it
        // refuses, frames are misframed both ways: say so, naming the device. (A socket
        // peer takes bare frames: the device strips and writes the header itself.)
        let len = Self::hdr_len(features);
        self.hdr_len = len;
        if !self.socket {
            for p in &self.pairs {
                if let Err(e) = tap::set_vnet_hdr_size(&p.tap, len as i32) {
                    log::error!(
                        "{}: cannot set the tap's vnet header size to {len}: {e}",
                        self.name
                    );
                }
            }
        }
        // Without CTRL_VLAN every VLAN passes (QEMU's virtio_net_set_features).
        let all = if features & F_CTRL_VLAN != 0 {
            0
        } else {
            u32::MAX
        };
        self.filter.vlans = [all; ctrl::MAX_VLAN / 32];
        self.guest_offloads = features & GUEST_OFFLOADS;
        self.apply_offloads();
        self.set_active_pairs(1);
        for p in &mut self.pairs {
            p.readable = true;
        }
        // A pair's handler takes the rest (filter, active pairs) from the device's view.
        self.seen = STALE;
    }

    fn reset(&mut self) {
        self.filter = ctrl::RxFilter::default();
        self.mac = self.conf_mac;
        self.announce = false;
        self.acked = 0;
        for p in &mut self.pairs {
            p.pending.clear();
            p.used.clear();
            p.parked_len = None;
        }
        self.seen = STALE;
        self.publish();
    }

    fn process_queue(&mut self, idx: usize, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        if idx == self.ctrl_queue() && self.view.is_none() {
            let r = self.control(ctx);
            self.publish();
            return r;
        }
        if self.published.is_some() {
            // The pairs' queues are their handlers'.
            return Ok(());
        }
        self.pull();
        let pair = idx / 2;
        if pair >= self.active_pairs {
            return Ok(());
        }
        if idx.is_multiple_of(2) {
            self.receive(pair, ctx)
        } else {
            self.transmit(pair, ctx)
        }
    }

    fn event_sources(&self) -> Vec<(RawFd, u32)> {
        // Split: each pair's tap is watched by its handler.
        let watched = if self.published.is_some() {
            0
        } else {
            self.pairs.len()
        };
        let mut v: Vec<(RawFd, u32)> = (0..watched)
            .map(|i| (self.pairs[i].tap.as_raw_fd(), i as u32))
            .collect();
        if let Some(fd) = &self.announce_fd {
            v.push((fd.as_raw_fd(), ANNOUNCE_TOKEN));
        }
        v
    }

    fn process_event(&mut self, token: u32, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        if token == ANNOUNCE_TOKEN {
            if let Some(fd) = &self.announce_fd {
                let _ = fd.read();
            }
            // QEMU's virtio_net_announce: only a driver that can acknowledge is asked.
            let both = F_GUEST_ANNOUNCE | F_CTRL_VQ;
            if self.acked & both == both {
                self.announce = true;
                ctx.irq.signal_config();
            }
            return Ok(());
        }
        if self.published.is_some() {
            return Ok(());
        }
        self.pull();
        let pair = token as usize;
        if let Some(p) = self.pairs.get_mut(pair) {
            p.readable = true;
            if pair < self.active_pairs {
                self.receive(pair, ctx)?;
            }
        }
        Ok(())
    }

    /// With several queue pairs (a multiqueue tap), each pair on a handler (and a thread)
    /// of its own; the control queue stays here.
    fn split(&mut self) -> std::io::Result<Vec<QueueGroup>> {
        if self.pairs.len() < 2 {
            return Ok(Vec::new());
        }
        let view = Arc::new(PairView {
            generation: AtomicU64::new(0),
            state: Mutex::new(ViewState {
                generation: 0,
                filter: self.filter.clone(),
                mac: self.mac,
                guest_offloads: self.guest_offloads,
                active_pairs: self.active_pairs,
            }),
        });
        let mut groups = Vec::with_capacity(self.pairs.len());
        for pair in 0..self.pairs.len() {
            groups.push(QueueGroup {
                first: 2 * pair,
                count: 2,
                handler: Box::new(self.pair_handler(pair, &view)?),
            });
        }
        self.published = Some(view);
        Ok(groups)
    }
}
