//! The receive path: chains taken from a pair's receive queue, a frame read from the
//! backend into them (several chains with MRG_RXBUF; from a tap the first [`BOUNCE`]
//! bytes through the pair's bounce buffer, the rest straight in), the receive filter, and
//! the used entries published together: those of several frames at once (up to
//! [`PUBLISH_BATCH`], and whenever the device stops to wait), so the used index the
//! driver polls is written once per batch rather than once per frame.

use super::iovec::{
    bounce_front, chain_iovecs_into, read_iovs, skip_front, vectored, write_front_at,
};
use super::*;

/// A receive chain taken from the ring and waiting for a frame, as iovecs over guest RAM.
pub(super) struct RxChain {
    head: u16,
    iovs: Vec<libc::iovec>,
    capacity: usize,
}

// SAFETY: the iovecs point into the guest memory mapping the device's Core holds for its
// whole life; they are only used (by readv or a copy) on the worker while it holds the
// device, and dropped at reset.
unsafe impl Send for RxChain {}

/// Used entries gathered before they are published (the used index written).
const PUBLISH_BATCH: usize = 32;

/// Bytes of each frame read from a tap into the pair's bounce buffer and copied into the
/// guest's buffers from there (the rest goes straight into guest memory): a standard
/// frame with its header fits. Measured on a PVM host (guest_net, 1514-byte frames), the
/// kernel's copy into guest memory cost about 10% more CPU per frame than this copy
/// into a buffer the device thread keeps warm plus a copy in user space (QEMU always
/// bounces); 64-byte frames cost the same either way.
pub(super) const BOUNCE: usize = 2048;

/// Scratch iovecs for one read or write, reused from frame to frame.
#[derive(Default)]
pub(super) struct Scratch(pub(super) Vec<libc::iovec>);

// SAFETY: emptied after each use; the pointers it holds during a read point into guest
// memory kept mapped by the device's Core (see RxChain).
unsafe impl Send for Scratch {}

/// Emptied iovec vectors of used receive chains, for the next chains taken: no allocation
/// per frame.
#[derive(Default)]
pub(super) struct Spare(Vec<Vec<libc::iovec>>);

// SAFETY: every vector in it is empty (cleared before it is kept): no pointer is held.
unsafe impl Send for Spare {}

impl Spare {
    fn take(&mut self) -> Vec<libc::iovec> {
        self.0.pop().unwrap_or_default()
    }

    /// Keep `c`'s vector (a few: one per chain a frame may span is plenty).
    fn recycle(&mut self, c: RxChain) {
        let mut v = c.iovs;
        if self.0.len() < 64 {
            v.clear();
            self.0.push(v);
        }
    }
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
            let Some(c) = Net::pop_rx_chain(q, mem, rxq, &mut self.spare, &mut self.used)? else {
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

    /// Read the next frame into the parked buffer (a socket peer's bare frame behind a
    /// zeroed header); a frame longer than the buffer is dropped.
    fn read_aside(&mut self, socket: bool, hdr: usize) -> std::io::Result<()> {
        let buf = self
            .parked
            .get_or_insert_with(|| vec![0; MAX_FRAME].into_boxed_slice());
        let skip = if socket { hdr } else { 0 };
        buf[..skip].fill(0);
        let mut iov = [libc::iovec {
            iov_base: buf[skip..].as_mut_ptr().cast(),
            iov_len: buf.len() - skip,
        }];
        let n = receive_frame(self.tap.as_raw_fd(), socket, &mut iov)? + skip;
        if n <= buf.len() {
            self.parked_len = Some(n);
        }
        Ok(())
    }

    fn pending_iovs(&self) -> impl Iterator<Item = &libc::iovec> {
        self.pending.iter().flat_map(|c| c.iovs.iter())
    }

    /// A dropped frame: the first waiting chain goes back empty (published with the
    /// next batch).
    fn give_back_one(&mut self) {
        if let Some(c) = self.pending.pop_front() {
            self.used.push((c.head, 0));
            self.spare.recycle(c);
        }
    }

    /// A frame of `n` bytes (header included) landed in the first waiting chains: set
    /// num_buffers (how many it spans; 1 without MRG_RXBUF), or for a socket peer's bare
    /// frame the whole header (no offloads); their used entries join the batch, so they
    /// are published together.
    fn deliver(&mut self, n: usize, hdr: usize, socket: bool) {
        let used = &mut self.used;
        let first = used.len();
        let mut left = n;
        for c in &self.pending {
            if left == 0 && used.len() > first {
                break;
            }
            let take = left.min(c.capacity);
            used.push((c.head, take as u32));
            left -= take;
        }
        let spans = used.len() - first;
        let count = (spans as u16).to_le_bytes();
        let iovs = self.pending.iter().flat_map(|c| c.iovs.iter());
        if socket {
            let mut header = [0u8; 12];
            header[10..12].copy_from_slice(&count);
            write_front_at(iovs, 0, &header[..hdr]);
        } else if hdr == 12 {
            write_front_at(iovs, 10, &count);
        }
        for c in self.pending.drain(..spans) {
            self.spare.recycle(c);
        }
    }

    /// Publish the gathered used entries.
    fn publish(&mut self, q: &mut Queue, mem: &GuestMemoryMmap) -> Result<(), virtio_queue::Error> {
        let r = add_used_batch(q, mem, &self.used);
        self.used.clear();
        r
    }
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
    let event_idx = ctx.features & crate::virtio::regs::features::RING_EVENT_IDX != 0;
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
    if need && !crate::virtio::device::no_interrupt(q, mem, event_idx) {
        crate::trace_event!(virtio_notify, "vdev {} vq {}", ctx.name, idx);
        ctx.irq.signal_queue(idx);
    }
}

impl Net {
    /// Take the next receive chain from the ring; chains without device-writable buffers
    /// (or outside guest RAM) go back unused at once. (One too small for the header takes
    /// and drops the next frame, as one too small for the frame does.)
    fn pop_rx_chain(
        q: &mut Queue,
        mem: &GuestMemoryMmap,
        rxq: usize,
        spare: &mut Spare,
        used: &mut Vec<(u16, u32)>,
    ) -> Result<Option<RxChain>, DeviceError> {
        loop {
            let chain = q.iter(mem).map_err(|e| bad_queue(rxq, e))?.next();
            let Some(chain) = chain else {
                return Ok(None);
            };
            let head = chain.head_index();
            let mut iovs = spare.take();
            let in_ram = chain_iovecs_into(mem, &chain, true, &mut iovs).map_err(|e| {
                DeviceError::BadChain {
                    queue: rxq,
                    reason: e.reason().to_string(),
                }
            })?;
            let capacity = if in_ram {
                iovs.iter().map(|v| v.iov_len).sum()
            } else {
                0
            };
            if capacity > 0 {
                return Ok(Some(RxChain {
                    head,
                    iovs,
                    capacity,
                }));
            }
            spare.recycle(RxChain {
                head,
                iovs,
                capacity,
            });
            // After the entries gathered before it (a batch never outgrows the ring).
            used.push((head, 0));
            if used.len() >= PUBLISH_BATCH {
                add_used_batch(q, mem, used).map_err(|e| bad_queue(rxq, e))?;
                used.clear();
            }
        }
    }

    /// Move frames from pair `pair`'s tap into its receive queue while both have some.
    pub(super) fn receive(
        &mut self,
        pair: usize,
        ctx: &mut QueueContext,
    ) -> Result<(), DeviceError> {
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
        // Whether the ring was looked at again since the last chain was taken: an avail
        // index the ring cannot back (a ring outside guest RAM) stays "more available" for
        // ever, and must not spin the device.
        let mut rechecked = false;
        while p.readable || p.parked_len.is_some() {
            if p.used.len() >= PUBLISH_BATCH {
                p.publish(q, mem).map_err(bad)?;
            }
            p.fill(q, mem, rxq, mrg, largest)?;
            let capacity: usize = p.pending.iter().map(|c| c.capacity).sum();
            if capacity == 0 || p.parked_len.is_some_and(|n| capacity < n) {
                // Out of buffers, or too few for the frame set aside: give the driver what
                // it has received, ask for a kick when it adds some (QEMU's
                // virtio_net_has_buffers), and look once more in case it just did.
                p.publish(q, mem).map_err(bad)?;
                if !rechecked && q.enable_notification(mem).map_err(bad)? {
                    rechecked = true;
                    continue;
                }
                break;
            }
            rechecked = false;
            if let Some(n) = p.parked_len.take() {
                if let Some(frame) = &p.parked {
                    write_front_at(p.pending_iovs(), 0, &frame[..n]);
                    let got = n.saturating_sub(hdr).min(18);
                    if self
                        .filter
                        .accepts(&mac, &frame[hdr.min(n)..hdr.min(n) + got])
                    {
                        p.deliver(n, hdr, socket);
                    }
                }
                continue;
            }
            if mrg && capacity < largest {
                // The next frame may need more buffers than the driver has given: read it
                // aside and hold it until they are there, as QEMU does (a frame read
                // into too few buffers would be lost).
                match p.read_aside(socket, hdr) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => p.readable = false,
                    // Anything else drops the frame; a buffer comes back empty.
                    Err(_) => p.give_back_one(),
                }
                continue;
            }
            let mut covered = p.gather(scratch, mrg, largest);
            // A socket peer sends bare frames: the device writes the header in front.
            let mut bounced = 0;
            if socket {
                skip_front(scratch, hdr);
            } else {
                (covered, bounced) = bounce_front(scratch, &mut p.bounce);
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
                    p.give_back_one();
                    continue;
                }
            };
            if n > covered {
                // Too large for the buffers: dropped (QEMU without MRG_RXBUF drops it
                // too, giving the buffer back empty; merged buffers stay for the next).
                if !mrg {
                    p.give_back_one();
                }
                continue;
            }
            write_front_at(p.pending_iovs(), 0, &p.bounce[..n.min(bounced)]);
            let mut head = [0u8; 18];
            let want = n.saturating_sub(hdr).min(head.len());
            let got = read_iovs(p.pending_iovs(), hdr, &mut head[..want]);
            if self.filter.accepts(&mac, &head[..got]) {
                p.deliver(n, hdr, socket);
            }
        }
        p.publish(q, mem).map_err(bad)?;
        scratch.clear();
        notify_since(ctx, rxq, start);
        Ok(())
    }
}
