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

mod ctrl;
pub mod tap;

use super::device::{
    bad_queue, check_chain, read_config_bytes, DeviceError, QueueContext, VirtioDevice,
};
use super::iov::{chain_iovecs, data_ranges, guest_iovecs};
use super::regs::features::VERSION_1;
use machine::MacAddr;
use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

pub const DEVICE_TYPE: u16 = 1;

/// Device feature bits (virtio 1.x §5.1.3).
pub mod features {
    pub const F_CSUM: u64 = 1 << 0;
    pub const F_GUEST_CSUM: u64 = 1 << 1;
    pub const F_CTRL_GUEST_OFFLOADS: u64 = 1 << 2;
    pub const F_MAC: u64 = 1 << 5;
    /// Legacy: the device takes any GSO type (shown only through the legacy interface).
    pub const F_GSO: u64 = 1 << 6;
    pub const F_GUEST_TSO4: u64 = 1 << 7;
    pub const F_GUEST_TSO6: u64 = 1 << 8;
    pub const F_GUEST_ECN: u64 = 1 << 9;
    pub const F_GUEST_UFO: u64 = 1 << 10;
    pub const F_HOST_TSO4: u64 = 1 << 11;
    pub const F_HOST_TSO6: u64 = 1 << 12;
    pub const F_HOST_ECN: u64 = 1 << 13;
    pub const F_HOST_UFO: u64 = 1 << 14;
    pub const F_MRG_RXBUF: u64 = 1 << 15;
    pub const F_STATUS: u64 = 1 << 16;
    pub const F_CTRL_VQ: u64 = 1 << 17;
    pub const F_CTRL_RX: u64 = 1 << 18;
    pub const F_CTRL_VLAN: u64 = 1 << 19;
    pub const F_CTRL_RX_EXTRA: u64 = 1 << 20;
    pub const F_GUEST_ANNOUNCE: u64 = 1 << 21;
    pub const F_MQ: u64 = 1 << 22;
    pub const F_CTRL_MAC_ADDR: u64 = 1 << 23;
    /// The receive offloads (QEMU's guest_offloads_mask for what machina offers).
    pub const GUEST_OFFLOADS: u64 =
        F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_ECN | F_GUEST_UFO;
    /// What needs a backend that carries virtio-net headers (QEMU clears these when the
    /// peer has no vnet header).
    pub const NEED_VNET_HDR: u64 =
        F_CSUM | F_HOST_TSO4 | F_HOST_TSO6 | F_HOST_ECN | F_HOST_UFO | GUEST_OFFLOADS;
}
use features::*;

/// The feature properties machina implements (QEMU's virtio_net_properties) with their
/// bits and QEMU 7.2's defaults.
pub const FEATURE_PROPERTIES: &[(&str, u64, bool)] = &[
    ("csum", F_CSUM, true),
    ("guest_csum", F_GUEST_CSUM, true),
    ("ctrl_guest_offloads", F_CTRL_GUEST_OFFLOADS, true),
    ("gso", F_GSO, true),
    ("guest_tso4", F_GUEST_TSO4, true),
    ("guest_tso6", F_GUEST_TSO6, true),
    ("guest_ecn", F_GUEST_ECN, true),
    ("guest_ufo", F_GUEST_UFO, true),
    ("host_tso4", F_HOST_TSO4, true),
    ("host_tso6", F_HOST_TSO6, true),
    ("host_ecn", F_HOST_ECN, true),
    ("host_ufo", F_HOST_UFO, true),
    ("mrg_rxbuf", F_MRG_RXBUF, true),
    ("status", F_STATUS, true),
    ("ctrl_vq", F_CTRL_VQ, true),
    ("ctrl_rx", F_CTRL_RX, true),
    ("ctrl_vlan", F_CTRL_VLAN, true),
    ("ctrl_rx_extra", F_CTRL_RX_EXTRA, true),
    ("guest_announce", F_GUEST_ANNOUNCE, true),
    ("mq", F_MQ, false),
    ("ctrl_mac_addr", F_CTRL_MAC_ADDR, true),
];

/// QEMU's defaults of [`FEATURE_PROPERTIES`].
pub fn default_requested() -> u64 {
    FEATURE_PROPERTIES
        .iter()
        .filter(|(_, _, on)| *on)
        .fold(0, |acc, (_, bit, _)| acc | bit)
}

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

/// A receive chain taken from the ring and waiting for a frame, as iovecs over guest RAM.
struct RxChain {
    head: u16,
    iovs: Vec<libc::iovec>,
    capacity: usize,
}

// SAFETY: the iovecs point into the guest memory mapping the device's Core holds for its
// whole life; they are only used (by readv or a copy) on the worker while it holds the
// device, and dropped at reset.
unsafe impl Send for RxChain {}

/// Scratch iovecs for one read, reused from frame to frame.
#[derive(Default)]
struct Scratch(Vec<libc::iovec>);

// SAFETY: emptied after each use; the pointers it holds during a read point into guest
// memory kept mapped by the device's Core (see RxChain).
unsafe impl Send for Scratch {}

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
    /// The used entries of the frame being delivered (kept to reuse its allocation).
    used: Vec<(u16, u32)>,
}

impl Pair {
    /// Take chains for the next frame from the ring: one, or with MRG_RXBUF enough for a
    /// largest frame (or all there are).
    fn fill(
        &mut self,
        q: &mut Queue,
        mem: &GuestMemoryMmap,
        rxq: usize,
        mrg: bool,
        largest: usize,
    ) -> Result<(), DeviceError> {
        let mut capacity: usize = self.pending.iter().map(|c| c.capacity).sum();
        while self.pending.is_empty() || (mrg && capacity < largest) {
            let Some(c) = Net::pop_rx_chain(q, mem, rxq)? else {
                break;
            };
            capacity += c.capacity;
            self.pending.push_back(c);
        }
        Ok(())
    }

    /// The iovecs one read fills (the first chain, or with MRG_RXBUF those a largest frame
    /// needs) into `scratch`; how many bytes they hold.
    fn gather(&self, scratch: &mut Vec<libc::iovec>, mrg: bool, largest: usize) -> usize {
        scratch.clear();
        let mut covered = 0;
        for (chains, c) in self.pending.iter().enumerate() {
            if (chains == 1 && !mrg) || covered >= largest || scratch.len() >= 1024 {
                break;
            }
            scratch.extend_from_slice(&c.iovs);
            covered += c.capacity;
        }
        // IOV_MAX bounds one read; what the kept iovecs hold is what a frame may fill.
        scratch.truncate(1024);
        scratch.iter().map(|v| v.iov_len).sum()
    }

    fn pending_iovs(&self) -> impl Iterator<Item = &libc::iovec> {
        self.pending.iter().flat_map(|c| c.iovs.iter())
    }

    /// A dropped frame: the first waiting chain goes back empty.
    fn give_back_one(
        &mut self,
        q: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<(), virtio_queue::Error> {
        match self.pending.pop_front() {
            Some(c) => add_used_batch(q, mem, &[(c.head, 0)]),
            None => Ok(()),
        }
    }

    /// A frame of `n` bytes (header included) landed in the first waiting chains: set
    /// num_buffers (how many it spans; 1 without MRG_RXBUF), or for a socket peer's bare
    /// frame the whole header (no offloads), and publish them together.
    fn deliver(
        &mut self,
        q: &mut Queue,
        mem: &GuestMemoryMmap,
        n: usize,
        hdr: usize,
        socket: bool,
    ) -> Result<(), virtio_queue::Error> {
        let used = &mut self.used;
        used.clear();
        let mut left = n;
        for c in &self.pending {
            if left == 0 && !used.is_empty() {
                break;
            }
            let take = left.min(c.capacity);
            used.push((c.head, take as u32));
            left -= take;
        }
        let count = (used.len() as u16).to_le_bytes();
        let iovs = self.pending.iter().flat_map(|c| c.iovs.iter());
        if socket {
            let mut header = [0u8; 12];
            header[10..12].copy_from_slice(&count);
            write_front_at(iovs, 0, &header[..hdr]);
        } else if hdr == 12 {
            write_front_at(iovs, 10, &count);
        }
        self.pending.drain(..used.len());
        add_used_batch(q, mem, used)
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
}
/// Drop the first `n` bytes of `iovs`; false if they hold fewer.
fn skip_front(iovs: &mut Vec<libc::iovec>, mut n: usize) -> bool {
    while n > 0 {
        let Some(first) = iovs.first_mut() else {
            return false;
        };
        if first.iov_len > n {
            first.iov_base = (first.iov_base as usize + n) as *mut libc::c_void;
            first.iov_len -= n;
            return true;
        }
        n -= first.iov_len;
        iovs.remove(0);
    }
    true
}

/// Copy `data` into the start of `iovs` (guest buffers); false if they hold fewer bytes.
fn write_front(iovs: &[libc::iovec], mut data: &[u8]) -> bool {
    for v in iovs {
        if data.is_empty() {
            break;
        }
        let n = v.iov_len.min(data.len());
        // SAFETY: the iovec points into guest RAM, bounds-checked by chain_iovecs and kept
        // mapped by the caller's GuestMemoryMmap; `n` is within both buffers.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), v.iov_base as *mut u8, n) };
        data = &data[n..];
    }
    data.is_empty()
}

/// Receive one frame from `fd` into `iovs`; returns the frame's full length, which exceeds
/// the buffers' capacity when the frame was truncated. A tap's read returns the full length
/// already; a datagram socket says it with MSG_TRUNC.
fn receive_frame(fd: RawFd, socket: bool, iovs: &mut [libc::iovec]) -> std::io::Result<usize> {
    if !socket {
        return vectored(fd, false, iovs);
    }
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iovs.as_mut_ptr();
    msg.msg_iovlen = iovs.len().min(1024) as _;
    // SAFETY: the msghdr points at iovecs over guest RAM checked by chain_iovecs and kept
    // mapped by the caller's GuestMemoryMmap; recvmsg writes only into those buffers.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_TRUNC) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn is_socket(file: &File) -> bool {
    use std::os::unix::fs::FileTypeExt;
    file.metadata().is_ok_and(|m| m.file_type().is_socket())
}

/// readv/writev on `fd` over `iovs` (at most IOV_MAX of them).
fn vectored(fd: RawFd, write: bool, iovs: &[libc::iovec]) -> std::io::Result<usize> {
    let count = iovs.len().min(1024) as libc::c_int;
    // SAFETY: the iovecs point into guest RAM, bounds-checked by chain_iovecs against the
    // guest memory regions, which the caller's GuestMemoryMmap keeps mapped for the call;
    // the kernel only reads (writev) or writes (readv) those bytes.
    let n = unsafe {
        if write {
            libc::writev(fd, iovs.as_ptr(), count)
        } else {
            libc::readv(fd, iovs.as_ptr(), count)
        }
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Send one frame; a full backend drops it, as a congested link would. Another failure is
/// an error naming the device, reported once until a send works again (`failing`).
fn send_reported(fd: RawFd, iovs: &[libc::iovec], name: &str, failing: &mut bool) {
    match vectored(fd, true, iovs) {
        Ok(_) => *failing = false,
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.raw_os_error() == Some(libc::ENOBUFS) => {}
        Err(e) => {
            if !std::mem::replace(failing, true) {
                log::error!(
                    "{name}: cannot send a frame to its network backend: {e}; frames are dropped"
                );
            }
        }
    }
}

/// QEMU's tap_fd_set_offload: TUN_F_* from the receive offloads in force.
fn tun_offloads(offloads: u64) -> libc::c_uint {
    const TUN_F_CSUM: libc::c_uint = 0x01;
    const TUN_F_TSO4: libc::c_uint = 0x02;
    const TUN_F_TSO6: libc::c_uint = 0x04;
    const TUN_F_TSO_ECN: libc::c_uint = 0x08;
    const TUN_F_UFO: libc::c_uint = 0x10;
    let mut f = 0;
    if offloads & F_GUEST_CSUM != 0 {
        f |= TUN_F_CSUM;
        if offloads & F_GUEST_TSO4 != 0 {
            f |= TUN_F_TSO4;
        }
        if offloads & F_GUEST_TSO6 != 0 {
            f |= TUN_F_TSO6;
        }
        if offloads & (F_GUEST_TSO4 | F_GUEST_TSO6) != 0 && offloads & F_GUEST_ECN != 0 {
            f |= TUN_F_TSO_ECN;
        }
        if offloads & F_GUEST_UFO != 0 {
            f |= TUN_F_UFO;
        }
    }
    f
}

/// Copy the bytes at `offset` of the buffers `iovs` into `out`; how many there were.
fn read_iovs<'a>(
    iovs: impl IntoIterator<Item = &'a libc::iovec>,
    mut offset: usize,
    out: &mut [u8],
) -> usize {
    let mut done = 0;
    for v in iovs {
        if done == out.len() {
            break;
        }
        if offset >= v.iov_len {
            offset -= v.iov_len;
            continue;
        }
        let n = (v.iov_len - offset).min(out.len() - done);
        // SAFETY: the iovec points into guest RAM, bounds-checked by guest_iovecs and kept
        // mapped by the device's Core; `offset + n` is within it and `n` within `out`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (v.iov_base as *const u8).add(offset),
                out.as_mut_ptr().add(done),
                n,
            )
        };
        done += n;
        offset = 0;
    }
    done
}

/// Put `items` (head, length) in the used ring at once: the guest must see every buffer of
/// a merged frame when it sees the first (QEMU's virtqueue_fill then virtqueue_flush).
fn add_used_batch(
    q: &mut Queue,
    mem: &GuestMemoryMmap,
    items: &[(u16, u32)],
) -> Result<(), virtio_queue::Error> {
    let Some((&(last_head, last_len), rest)) = items.split_last() else {
        return Ok(());
    };
    let start = q.next_used();
    let size = q.size();
    for (i, &(head, len)) in rest.iter().enumerate() {
        let slot = u64::from(start.wrapping_add(i as u16) % size);
        let at = GuestAddress(q.used_ring() + 4 + 8 * slot);
        mem.write_obj(u32::from(head).to_le(), at)
            .and_then(|_| mem.write_obj(len.to_le(), GuestAddress(at.0 + 4)))
            .map_err(virtio_queue::Error::GuestMemory)?;
    }
    // add_used writes the last element and publishes the new index (release ordering).
    q.set_next_used(start.wrapping_add(rest.len() as u16));
    q.add_used(mem, last_head, last_len)
}

/// Interrupt the driver for `idx` if the used entries added since `old` cross its
/// used_event (the whole span: batched entries count once each).
fn notify_since(ctx: &mut QueueContext, idx: usize, old: u16) {
    let mem = ctx.mem;
    let event_idx = ctx.features & super::regs::features::RING_EVENT_IDX != 0;
    let Some(q) = ctx.queues.get_mut(idx) else {
        return;
    };
    let new = q.next_used();
    if new == old {
        return;
    }
    // Also resets the queue's own count of entries added.
    let mut need = q.needs_notification(mem).unwrap_or(true);
    if event_idx && !need {
        let at = GuestAddress(q.avail_ring() + 4 + 2 * u64::from(q.size()));
        need = match mem.read_obj::<u16>(at) {
            Ok(ev) => new.wrapping_sub(u16::from_le(ev)).wrapping_sub(1) < new.wrapping_sub(old),
            Err(_) => true,
        };
    }
    if need && !super::device::no_interrupt(q, mem, event_idx) {
        crate::trace_event!(virtio_notify, "vdev {} vq {}", ctx.name, idx);
        ctx.irq.signal_queue(idx);
    }
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
        let pair = |tap| Pair {
            tap,
            readable: true,
            pending: VecDeque::new(),
            tx_failing: false,
            used: Vec::new(),
        };
        let mut pairs = vec![pair(backend.tap)];
        pairs.extend(backend.more_queues.into_iter().map(pair));
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
        }
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

    fn transmit(&mut self, pair: usize, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        let Some(p) = self.pairs.get_mut(pair) else {
            return Ok(());
        };
        let tap = p.tap.as_raw_fd();
        // A socket peer takes the bare frame: the guest's header stays behind.
        let strip = if self.socket { self.hdr_len } else { 0 };
        let (name, tx_failing) = (&self.name, &mut p.tx_failing);
        let txq = 2 * pair + 1;
        let used = ctx.drain_queue(txq, |mem, chain| {
            // Buffers outside guest RAM or a frame too large for a tap: dropped.
            if let Some(mut iovs) = chain_iovecs(mem, &chain, false) {
                let n: usize = iovs.iter().map(|v| v.iov_len).sum();
                if n > strip && n <= MAX_FRAME && skip_front(&mut iovs, strip) {
                    send_reported(tap, &iovs, name, tx_failing);
                }
            }
            Ok(0)
        })?;
        if used == Some(true) {
            ctx.notify(txq);
        }
        Ok(())
    }

    /// Take the next receive chain from the ring; chains without device-writable buffers
    /// (or outside guest RAM) go back unused at once. (One too small for the header takes
    /// and drops the next frame, as one too small for the frame does.)
    fn pop_rx_chain(
        q: &mut Queue,
        mem: &GuestMemoryMmap,
        rxq: usize,
    ) -> Result<Option<RxChain>, DeviceError> {
        loop {
            let chain = q.iter(mem).map_err(|e| bad_queue(rxq, e))?.next();
            let Some(chain) = chain else {
                return Ok(None);
            };
            check_chain(rxq, &chain)?;
            let head = chain.head_index();
            let iovs = guest_iovecs(mem, &data_ranges(&chain, true, 0, usize::MAX));
            let capacity = iovs
                .as_ref()
                .map_or(0, |v| v.iter().map(|v| v.iov_len).sum());
            match iovs {
                Some(iovs) if capacity > 0 => {
                    return Ok(Some(RxChain {
                        head,
                        iovs,
                        capacity,
                    }))
                }
                _ => q.add_used(mem, head, 0).map_err(|e| bad_queue(rxq, e))?,
            }
        }
    }

    /// Move frames from pair `pair`'s tap into its receive queue while both have some.
    fn receive(&mut self, pair: usize, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        let mem = ctx.mem;
        let rxq = 2 * pair;
        let mrg = self.acked & F_MRG_RXBUF != 0;
        let hdr = self.hdr_len;
        // With merged buffers, chains are gathered until a largest frame fits.
        let largest = hdr
            + if self.guest_offloads & (F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_UFO) != 0 {
                MAX_FRAME - 12
            } else {
                MAX_PLAIN_FRAME
            };
        let (socket, mac) = (self.socket, self.mac);
        let Some(p) = self.pairs.get_mut(pair) else {
            return Ok(());
        };
        let Some(q) = ctx.queues.get_mut(rxq).filter(|q| q.ready()) else {
            return Ok(());
        };
        let start = q.next_used();
        let scratch = &mut self.scratch.0;
        let bad = |e| bad_queue(rxq, e);
        while p.readable {
            p.fill(q, mem, rxq, mrg, largest)?;
            if p.pending.is_empty() {
                // Out of buffers: ask for a kick when the driver adds some (QEMU's
                // virtio_net_has_buffers), and look once more in case it just did.
                if q.enable_notification(mem).map_err(bad)? {
                    continue;
                }
                break;
            }
            let covered = p.gather(scratch, mrg, largest);
            // A socket peer sends bare frames: the device writes the header in front.
            if socket {
                skip_front(scratch, hdr);
            }
            let n = match receive_frame(p.tap.as_raw_fd(), socket, scratch) {
                Ok(n) => n + if socket { hdr } else { 0 },
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Drained until the next readiness edge; the buffers stay.
                    p.readable = false;
                    break;
                }
                // Anything else drops the frame; a buffer comes back empty.
                Err(_) => {
                    p.give_back_one(q, mem).map_err(bad)?;
                    continue;
                }
            };
            if n > covered {
                // Too large for the buffers: dropped (QEMU without MRG_RXBUF drops it
                // too, giving the buffer back empty; merged buffers stay for the next).
                if !mrg {
                    p.give_back_one(q, mem).map_err(bad)?;
                }
                continue;
            }
            let mut head = [0u8; 18];
            let want = n.saturating_sub(hdr).min(head.len());
            let got = read_iovs(p.pending_iovs(), hdr, &mut head[..want]);
            if self.filter.accepts(&mac, &head[..got]) {
                p.deliver(q, mem, n, hdr, socket).map_err(bad)?;
            }
        }
        scratch.clear();
        notify_since(ctx, rxq, start);
        Ok(())
    }

    /// Serve the control queue (QEMU processes commands whether or not CTRL_VQ was acked).
    fn control(&mut self, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        let idx = self.ctrl_queue();
        let mut effects = Vec::new();
        let mut st = ctrl::CtrlState {
            filter: &mut self.filter,
            mac: &mut self.mac,
            acked: self.acked,
            vnet_hdr: !self.socket,
            max_pairs: self.pairs.len(),
            announce: &mut self.announce,
        };
        let used = ctx.drain_queue(idx, |mem, chain| {
            let out = data_ranges(&chain, false, 0, usize::MAX);
            let total: usize = out.iter().map(|r| r.1).sum();
            let mut cmd = vec![0u8; total.min(MAX_CTRL)];
            let mut at = 0;
            for &(addr, len) in &out {
                let n = len.min(cmd.len() - at);
                if mem.read_slice(&mut cmd[at..at + n], addr).is_err() {
                    return Err(DeviceError::BadChain {
                        queue: idx,
                        reason: "control command outside guest memory".into(),
                    });
                }
                at += n;
            }
            let status_iovs = chain_iovecs(mem, &chain, true).unwrap_or_default();
            if total < 2 || status_iovs.iter().map(|v| v.iov_len).sum::<usize>() < 1 {
                return Err(DeviceError::BadChain {
                    queue: idx,
                    reason: "virtio-net ctrl missing headers".into(),
                });
            }
            let (status, effect) = ctrl::handle(&mut st, cmd[0], cmd[1], &cmd[2..], total - 2);
            effects.push(effect);
            write_front(&status_iovs, &[status]);
            Ok(1)
        })?;
        for e in effects {
            match e {
                ctrl::Effect::None => {}
                ctrl::Effect::Offloads(o) => {
                    self.guest_offloads = o;
                    self.apply_offloads();
                }
                ctrl::Effect::QueuePairs(n) => self.set_active_pairs(n),
            }
        }
        if used == Some(true) {
            ctx.notify(idx);
        }
        Ok(())
    }

    /// Use `n` queue pairs: the taps of the others are detached so the host sends them
    /// nothing (QEMU's virtio_net_set_queue_pairs).
    fn set_active_pairs(&mut self, n: usize) {
        self.active_pairs = n;
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

/// Copy `data` to offset `at` of the buffers `iovs`; false if they hold fewer bytes.
fn write_front_at<'a>(
    iovs: impl IntoIterator<Item = &'a libc::iovec>,
    mut at: usize,
    mut data: &[u8],
) -> bool {
    for v in iovs {
        if data.is_empty() {
            break;
        }
        if at >= v.iov_len {
            at -= v.iov_len;
            continue;
        }
        let n = (v.iov_len - at).min(data.len());
        // SAFETY: the iovec points into guest RAM, bounds-checked by guest_iovecs and kept
        // mapped by the device's Core; `at + n` is within it.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), (v.iov_base as *mut u8).add(at), n) };
        data = &data[n..];
        at = 0;
    }
    data.is_empty()
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
        // Legacy drivers without CTRL_MAC_ADDR set the MAC through config space.
        for (i, &b) in data.iter().enumerate() {
            if let Some(m) = self.mac.get_mut(offset + i) {
                *m = b;
            }
        }
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
    }

    fn reset(&mut self) {
        self.filter = ctrl::RxFilter::default();
        self.mac = self.conf_mac;
        self.announce = false;
        self.acked = 0;
        for p in &mut self.pairs {
            p.pending.clear();
        }
    }

    fn process_queue(&mut self, idx: usize, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        if idx == self.ctrl_queue() {
            return self.control(ctx);
        }
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
        let mut v: Vec<(RawFd, u32)> = (0..self.pairs.len())
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
        let pair = token as usize;
        if let Some(p) = self.pairs.get_mut(pair) {
            p.readable = true;
            if pair < self.active_pairs {
                self.receive(pair, ctx)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_length_follows_features() {
        assert_eq!(Net::hdr_len(VERSION_1), 12);
        assert_eq!(Net::hdr_len(F_MRG_RXBUF), 12);
        assert_eq!(Net::hdr_len(F_MAC), 10);
    }

    #[test]
    fn a_failing_send_is_an_error_naming_the_device_once() {
        let log = crate::logging::captured();
        let name = "virtio-net-pci id=txfail (pcie.0:03.0)";
        let frame = [0u8; 60];
        let iov = [libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        }];
        let lines = |log: &std::sync::Mutex<Vec<(String, String)>>| {
            log.lock()
                .unwrap()
                .iter()
                .filter(|(_, l)| l.starts_with(name))
                .count()
        };
        let before = lines(log);
        // A read-only descriptor refuses every write (EBADF): one line, not one per frame.
        let refusing = File::open("/dev/null").unwrap();
        let mut failing = false;
        for _ in 0..3 {
            send_reported(refusing.as_raw_fd(), &iov, name, &mut failing);
        }
        assert!(failing);
        assert_eq!(lines(log) - before, 1);
        let text = log
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(_, l)| l.starts_with(name))
            .map(|(_, l)| l.clone())
            .unwrap();
        assert!(text.contains("cannot send a frame"), "{text}");
        // A send that works ends the episode; the next failure is reported again.
        let working = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap();
        send_reported(working.as_raw_fd(), &iov, name, &mut failing);
        assert!(!failing);
        send_reported(refusing.as_raw_fd(), &iov, name, &mut failing);
        assert_eq!(lines(log) - before, 2);
    }

    use crate::testing::{virtio_plan, Driver, Ring, DEVICE_NET};
    use crate::virtio::VirtioBackend;
    use std::os::unix::net::UnixDatagram;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const QS: u16 = 64;
    const BUFS: u64 = 0x40000;

    /// A modern virtio-net over a datagram socket pair (the netdev side is returned).
    fn net_over_socket(props: &[(&str, &str)]) -> (Driver, UnixDatagram) {
        net_with_announce(props, None)
    }

    fn net_with_announce(
        props: &[(&str, &str)],
        announce: Option<Arc<EventFd>>,
    ) -> (Driver, UnixDatagram) {
        let (ours, peer) = UnixDatagram::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let backend = VirtioBackend::Net(NetBackend {
            tap: File::from(std::os::fd::OwnedFd::from(ours)),
            mac: machine::MacAddr::FIRST_DEFAULT,
            more_queues: Vec::new(),
            announce,
        });
        let plan = virtio_plan(DEVICE_NET, false, false, props);
        (Driver::new(&plan, backend, mem), peer)
    }

    fn rings() -> [Ring; 3] {
        [0u64, 1, 2].map(|q| {
            let base = 0x10000 + q * 0x4000;
            Ring::new(QS, base, base + 0x1000, base + 0x2000)
        })
    }

    #[test]
    fn features_follow_properties_and_the_backend() {
        let (mut d, _peer) = net_over_socket(&[]);
        let f = d.device_features();
        // Over a socket (no vnet header) the offloads go, as QEMU clears them.
        assert_eq!(f & NEED_VNET_HDR, 0);
        let want = F_MAC | F_MRG_RXBUF | F_STATUS | F_CTRL_VQ | F_CTRL_RX | F_CTRL_VLAN;
        assert_eq!(f & want, want, "{f:#x}");
        assert_eq!(f & (F_GSO | F_MQ), 0, "{f:#x}");
        let (mut d, _peer) = net_over_socket(&[("mrg_rxbuf", "off"), ("ctrl_vq", "off")]);
        let f = d.device_features();
        assert_eq!(f & (F_MRG_RXBUF | F_CTRL_VQ), 0, "{f:#x}");
        // Over a tap the offloads are offered (the tap is not touched to ask).
        let tap = File::open("/dev/null").unwrap();
        let mac = machine::MacAddr::FIRST_DEFAULT;
        let more_queues = Vec::new();
        let n = Net::new(NetBackend {
            tap,
            mac,
            more_queues,
            announce: None,
        });
        let host = F_CSUM | F_HOST_TSO4 | F_HOST_TSO6 | F_HOST_ECN | F_HOST_UFO;
        assert_eq!(
            n.features() & (host | GUEST_OFFLOADS),
            host | GUEST_OFFLOADS
        );
        assert_eq!(n.legacy_features(), F_GSO);
        // QEMU 7.2's device features over a tap (x-query-virtio-status: bits 0-2, 5-21
        // and 23).
        let qemu72: u64 = [
            0, 1, 2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 23,
        ]
        .iter()
        .fold(0, |a, b| a | 1 << b);
        assert_eq!(n.features(), qemu72);
        // Over a socket peer QEMU keeps GSO, CTRL_GUEST_OFFLOADS and the control features.
        let (mut d, _peer) = net_over_socket(&[("mq", "on")]);
        let want = (qemu72 & !NEED_VNET_HDR) | F_MQ;
        let legacy_only = F_GSO;
        assert_eq!(d.device_features() & 0xff_ffff, want & !legacy_only);
        assert_eq!(tun_offloads(GUEST_OFFLOADS), 0x1f);
        assert_eq!(
            tun_offloads(F_GUEST_TSO4),
            0,
            "no TSO without checksum offload"
        );
    }

    /// A frame larger than one buffer spans several, num_buffers says how many, and all
    /// of them are in the used ring together.
    #[test]
    fn a_large_frame_spans_merged_buffers() {
        let (mut d, peer) = net_over_socket(&[]);
        let mut r = rings();
        d.modern_begin(VERSION_1 | F_MRG_RXBUF);
        d.modern_ring(0, &r[0]);
        d.modern_ring(1, &r[1]);
        for k in 0..8u64 {
            r[0].push_chain(&d.mem, k as u16, &[(BUFS + k * 0x1000, 600, true)]);
        }
        d.modern_driver_ok();
        d.w.poll();
        let frame: Vec<u8> = (0..1400u32).map(|i| (i % 251) as u8).collect();
        peer.send(&frame).unwrap();
        d.w.process_event(0);
        let used = r[0].used_idx(&d.mem);
        assert_eq!(used, 3, "1412 bytes with the header in 600-byte buffers");
        let lens: Vec<(u32, u32)> = (0..3).map(|n| r[0].used_elem(&d.mem, n)).collect();
        assert_eq!(lens, [(0, 600), (1, 600), (2, 212)]);
        let num_buffers: u16 = d.mem.read_obj(GuestAddress(BUFS + 10)).unwrap();
        assert_eq!(num_buffers, 3);
        // Reassemble: 588 bytes in the first buffer, then 600 and 212.
        let mut whole = vec![0u8; 1400];
        d.mem
            .read_slice(&mut whole[..588], GuestAddress(BUFS + 12))
            .unwrap();
        d.mem
            .read_slice(&mut whole[588..1188], GuestAddress(BUFS + 0x1000))
            .unwrap();
        d.mem
            .read_slice(&mut whole[1188..], GuestAddress(BUFS + 0x2000))
            .unwrap();
        assert_eq!(whole, frame);
        // A small frame takes one buffer and says so.
        peer.send(&[0xff; 60]).unwrap();
        d.w.process_event(0);
        assert_eq!(r[0].used_idx(&d.mem), 4);
        assert_eq!(r[0].used_elem(&d.mem, 3), (3, 72));
        let nb: u16 = d
            .mem
            .read_obj(GuestAddress(BUFS + 3 * 0x1000 + 10))
            .unwrap();
        assert_eq!(nb, 1);
    }

    /// Without MRG_RXBUF a frame larger than the buffer is dropped and the buffer comes
    /// back empty; VERSION_1's num_buffers is 1.
    #[test]
    fn without_merging_one_buffer_per_frame() {
        let (mut d, peer) = net_over_socket(&[]);
        let mut r = rings();
        d.modern_begin(VERSION_1);
        d.modern_ring(0, &r[0]);
        for k in 0..2u64 {
            r[0].push_chain(&d.mem, k as u16, &[(BUFS + k * 0x1000, 600, true)]);
        }
        d.modern_driver_ok();
        d.w.poll();
        peer.send(&[7u8; 1000]).unwrap();
        peer.send(&[8u8; 100]).unwrap();
        d.w.process_event(0);
        assert_eq!(r[0].used_idx(&d.mem), 2);
        assert_eq!(r[0].used_elem(&d.mem, 0), (0, 0));
        assert_eq!(r[0].used_elem(&d.mem, 1), (1, 112));
        let nb: u16 = d.mem.read_obj(GuestAddress(BUFS + 0x1000 + 10)).unwrap();
        assert_eq!(nb, 1);
    }

    /// Control commands through the queue change what the device receives.
    #[test]
    fn the_control_queue_sets_the_receive_filter() {
        let (mut d, peer) = net_over_socket(&[]);
        let mut r = rings();
        d.modern_begin(VERSION_1 | F_CTRL_VQ | F_CTRL_RX);
        d.modern_ring(0, &r[0]);
        d.modern_ring(2, &r[2]);
        d.modern_driver_ok();
        d.w.poll();
        // VIRTIO_NET_CTRL_RX_PROMISC off.
        let cmd = 0x30000u64;
        d.mem.write_slice(&[0, 0, 0], GuestAddress(cmd)).unwrap();
        d.mem.write_obj(0xffu8, GuestAddress(cmd + 0x100)).unwrap();
        r[2].push_chain(
            &d.mem,
            0,
            &[(cmd, 2, false), (cmd + 2, 1, false), (cmd + 0x100, 1, true)],
        );
        d.notify_modern(2);
        d.w.poll();
        assert_eq!(r[2].used_elem(&d.mem, 0), (0, 1));
        assert_eq!(d.mem.read_obj::<u8>(GuestAddress(cmd + 0x100)).unwrap(), 0);
        // An unknown class is refused.
        d.mem.write_slice(&[9, 0], GuestAddress(cmd)).unwrap();
        r[2].push_chain(&d.mem, 4, &[(cmd, 2, false), (cmd + 0x100, 1, true)]);
        d.notify_modern(2);
        d.w.poll();
        assert_eq!(d.mem.read_obj::<u8>(GuestAddress(cmd + 0x100)).unwrap(), 1);
        // Another station's frame is filtered; ours and broadcast pass.
        for k in 0..4u64 {
            r[0].push_chain(&d.mem, k as u16, &[(BUFS + k * 0x1000, 2048, true)]);
        }
        d.notify_modern(0);
        d.w.poll();
        let mut other = [0u8; 60];
        other[..6].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 0x99]);
        let mut mine = [0u8; 60];
        mine[..6].copy_from_slice(&machine::MacAddr::FIRST_DEFAULT.bytes());
        peer.send(&other).unwrap();
        peer.send(&mine).unwrap();
        peer.send(&[0xff; 60]).unwrap();
        d.w.process_event(0);
        assert_eq!(r[0].used_idx(&d.mem), 2);
        let mut dest = [0u8; 6];
        d.mem
            .read_slice(&mut dest, GuestAddress(BUFS + 12))
            .unwrap();
        assert_eq!(dest, machine::MacAddr::FIRST_DEFAULT.bytes());
    }

    /// announce-self (the EventFd) sets VIRTIO_NET_S_ANNOUNCE with a config interrupt for a
    /// driver that negotiated GUEST_ANNOUNCE; its ANNOUNCE_ACK clears it.
    #[test]
    fn an_announcement_asks_the_guest_and_its_ack_clears_it() {
        use crate::virtio::regs::{modern, ISR_CONFIG};
        let fd = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let (mut d, _peer) = net_with_announce(&[], Some(fd.clone()));
        let mut r = rings();
        d.modern_begin(VERSION_1 | F_CTRL_VQ | F_GUEST_ANNOUNCE | F_STATUS);
        d.modern_ring(2, &r[2]);
        d.modern_driver_ok();
        d.w.poll();
        let status = |d: &mut Driver| d.bar_read(modern::BAR, modern::DEVICE + 6, 2);
        assert_eq!(status(&mut d), 1, "link up, no announcement");
        fd.write(1).unwrap();
        d.w.process_event(ANNOUNCE_TOKEN);
        assert_eq!(status(&mut d), 3, "VIRTIO_NET_S_ANNOUNCE");
        let isr = d.bar_read(modern::BAR, modern::ISR, 1) as u8;
        assert_ne!(isr & ISR_CONFIG, 0, "a config interrupt");
        let cmd = 0x30000u64;
        for (k, want) in [(0u16, 0u8), (4, 1)] {
            d.mem.write_slice(&[3, 0], GuestAddress(cmd)).unwrap();
            r[2].push_chain(&d.mem, k, &[(cmd, 2, false), (cmd + 0x100, 1, true)]);
            d.notify_modern(2);
            d.w.poll();
            let got: u8 = d.mem.read_obj(GuestAddress(cmd + 0x100)).unwrap();
            assert_eq!(
                got, want,
                "ack {k}: OK, then ERR with nothing to acknowledge"
            );
        }
        assert_eq!(status(&mut d), 1);
        // A driver without GUEST_ANNOUNCE is not asked.
        d.modern_begin(VERSION_1 | F_CTRL_VQ | F_STATUS);
        d.modern_driver_ok();
        fd.write(1).unwrap();
        d.w.process_event(ANNOUNCE_TOKEN);
        assert_eq!(status(&mut d), 1);
    }
}
