//! What a virtio device model implements for the PCI transport, and the context it gets when
//! a queue or one of its own event sources needs service.

use super::interrupt::VirtioInterrupt;
use std::os::fd::RawFd;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

/// A request the guest got wrong badly enough that the device stops (virtio_error): the
/// transport sets NEEDS_RESET and raises a config interrupt.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("queue {queue}: {reason}")]
    BadQueue { queue: usize, reason: String },
    #[error("descriptor chain on queue {queue}: {reason}")]
    BadChain { queue: usize, reason: String },
}

impl DeviceError {
    /// The same error with its queue index moved by `base`: a split-off queue handler
    /// (see [`VirtioDevice::split`]) numbers its queues from 0.
    pub(crate) fn rebased(self, base: usize) -> Self {
        match self {
            DeviceError::BadQueue { queue, reason } => DeviceError::BadQueue {
                queue: queue + base,
                reason,
            },
            DeviceError::BadChain { queue, reason } => DeviceError::BadChain {
                queue: queue + base,
                reason,
            },
        }
    }
}

/// A group of a multiqueue device's queues, `first..first + count`, served by a handler of
/// its own (see [`VirtioDevice::split`]).
pub struct QueueGroup {
    pub first: usize,
    pub count: usize,
    pub handler: Box<dyn VirtioDevice>,
}

pub(crate) fn bad_queue(queue: usize, e: impl std::fmt::Display) -> DeviceError {
    DeviceError::BadQueue {
        queue,
        reason: e.to_string(),
    }
}

/// A device config read of `data.len()` bytes at `offset` from the config bytes `config`;
/// bytes past its end read as zero.
pub(crate) fn read_config_bytes(config: &[u8], offset: usize, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = config.get(offset + i).copied().unwrap_or(0);
    }
}

/// The checks QEMU's virtqueue_pop makes that virtio-queue's chain iterator leaves out (it
/// just stops): the chain must end (no loop, no `next` past the table, every descriptor
/// readable) and device-writable buffers must follow the device-readable ones. A chain that
/// fails them is a device error, as in QEMU.
pub(crate) fn check_chain(
    queue: usize,
    chain: &DescriptorChain<&GuestMemoryMmap>,
) -> Result<(), DeviceError> {
    let bad = |reason: &str| DeviceError::BadChain {
        queue,
        reason: reason.to_string(),
    };
    let mut seen_write = false;
    let mut last = None;
    for d in chain.clone() {
        if d.is_write_only() {
            seen_write = true;
        } else if seen_write {
            return Err(bad(
                "device-readable descriptor after a device-writable one",
            ));
        }
        last = Some(d);
    }
    match last {
        Some(d) if !d.has_next() => Ok(()),
        Some(_) => Err(bad(
            "looped, or next past the table, or unreadable descriptor",
        )),
        None => Err(bad(
            "head index past the table, or its descriptor unreadable",
        )),
    }
}

/// Without EVENT_IDX, the driver's VRING_AVAIL_F_NO_INTERRUPT asks for no interrupts
/// (QEMU's virtio_should_notify; virtio-queue's needs_notification ignores the flag).
pub(crate) fn no_interrupt(q: &Queue, mem: &GuestMemoryMmap, event_idx: bool) -> bool {
    use vm_memory::Bytes;
    !event_idx
        && mem
            .read_obj::<u16>(vm_memory::GuestAddress(q.avail_ring()))
            .is_ok_and(|flags| u16::from_le(flags) & 1 != 0)
}

/// Everything a device touches while processing: the queues, guest memory, negotiated
/// features and the interrupt it raises.
pub struct QueueContext<'a> {
    /// How log lines name the device (`logging::pci_name`).
    pub name: &'a str,
    pub queues: &'a mut [Queue],
    pub mem: &'a GuestMemoryMmap,
    pub features: u64,
    pub irq: &'a VirtioInterrupt,
}

impl<'a> QueueContext<'a> {
    /// Interrupt the driver for queue `idx` unless it suppressed notifications.
    pub fn notify(&mut self, idx: usize) {
        let event_idx = self.features & super::regs::features::RING_EVENT_IDX != 0;
        let Some(q) = self.queues.get_mut(idx) else {
            return;
        };
        // A used ring the guest made unreadable cannot say "no interrupt": send one.
        if q.needs_notification(self.mem).unwrap_or(true) && !no_interrupt(q, self.mem, event_idx) {
            crate::trace_event!(virtio_notify, "vdev {} vq {}", self.name, idx);
            self.irq.signal_queue(idx);
        }
    }

    pub fn has_feature(&self, bit: u32) -> bool {
        bit < 64 && self.features & (1 << bit) != 0
    }

    /// The ready queue `idx`, if the driver enabled it.
    pub fn ready_queue(&mut self, idx: usize) -> Option<&mut Queue> {
        self.queues.get_mut(idx).filter(|q| q.ready())
    }

    /// Serve every available chain of queue `idx` in order: pop it, check it, let `serve`
    /// consume it and return the used length, and put it in the used ring. None when the
    /// queue is not ready, else whether any chain was used (the caller then
    /// [`notify`](Self::notify)s). A bad queue or chain stops at once with the error.
    pub fn drain_queue(
        &mut self,
        idx: usize,
        mut serve: impl FnMut(
            &'a GuestMemoryMmap,
            DescriptorChain<&'a GuestMemoryMmap>,
        ) -> Result<u32, DeviceError>,
    ) -> Result<Option<bool>, DeviceError> {
        let mem = self.mem;
        let name = self.name;
        let event_idx = self.features & super::regs::features::RING_EVENT_IDX != 0;
        let Some(q) = self.ready_queue(idx) else {
            return Ok(None);
        };
        let mut used_any = false;
        let mut progressed = false;
        loop {
            let chain = q.iter(mem).map_err(|e| bad_queue(idx, e))?.next();
            if let Some(chain) = chain {
                let head = chain.head_index();
                if let Err(e) = check_chain(idx, &chain) {
                    let table = vm_memory::GuestAddress(q.desc_table());
                    if !super::iov::longer_than_4g(mem, table, q.size(), &chain) {
                        return Err(e);
                    }
                    // VIRTIO 1.2 2.7.5.2 forbids such a chain, but QEMU still takes it:
                    // dropped, and returned unused rather than stopping the device.
                    crate::guest_error!(
                        "{name}: descriptor chain on queue {idx} is longer than 2^32 bytes: dropped"
                    );
                    q.add_used(mem, head, 0).map_err(|e| bad_queue(idx, e))?;
                    used_any = true;
                    progressed = true;
                    continue;
                }
                let used = serve(mem, chain)?;
                q.add_used(mem, head, used).map_err(|e| bad_queue(idx, e))?;
                used_any = true;
                progressed = true;
                continue;
            }
            // Without EVENT_IDX the driver kicks for every chain: the next kick serves
            // what arrives from now on.
            if !event_idx {
                break;
            }
            // With EVENT_IDX the driver kicks only when it reaches avail_event: publish the
            // next index we want (without it avail_event stays 0 and the driver stops
            // kicking). A chain the driver added before it saw the new avail_event got no
            // kick, so it is served in another pass, but only after a pass that made
            // progress: an avail index the ring cannot back (a hostile driver) must not
            // spin the worker.
            let more = q.enable_notification(mem).map_err(|e| bad_queue(idx, e))?;
            if !more || !progressed {
                break;
            }
            progressed = false;
        }
        Ok(Some(used_any))
    }
}

/// A virtio device behind the transport.
pub trait VirtioDevice: Send {
    /// Virtio device ID (1 net, 2 block, 3 console, 4 entropy).
    fn device_type(&self) -> u16;

    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;

    /// Device feature bits (transport bits such as VERSION_1 are added by the transport).
    fn features(&self) -> u64;

    /// Device feature bits only a legacy interface shows (QEMU's per-class legacy_features,
    /// virtio-net's GSO); they must also be in [`features`](Self::features).
    fn legacy_features(&self) -> u64 {
        0
    }

    /// Length of the device configuration space as QEMU sizes it for these features.
    fn config_len(&self) -> usize;

    /// Read the device config at `offset`; bytes past the end read as zero.
    fn read_config(&self, offset: usize, data: &mut [u8]);

    /// How log lines name this device (`logging::pci_name`); set once by the transport.
    fn set_name(&mut self, _name: &str) {}

    /// Guest write to the device config; read-only by default.
    fn write_config(&mut self, _offset: usize, _data: &[u8]) {}

    /// The driver set DRIVER_OK with these features.
    fn activate(&mut self, _features: u64) {}

    /// Device reset: forget in-flight state (queues are reset by the transport).
    fn reset(&mut self) {}

    /// Service queue `idx` after the driver notified it.
    fn process_queue(&mut self, idx: usize, ctx: &mut QueueContext) -> Result<(), DeviceError>;

    /// Extra file descriptors to poll (a tap, an input EventFd), each with a token.
    fn event_sources(&self) -> Vec<(RawFd, u32)> {
        Vec::new()
    }

    /// One of `event_sources` is readable.
    fn process_event(&mut self, _token: u32, _ctx: &mut QueueContext) -> Result<(), DeviceError> {
        Ok(())
    }

    /// Wait for the requests in flight and complete them (tests and benchmarks, through
    /// `VirtioWorker::poll`, which runs no event loop).
    fn settle(&mut self, _ctx: &mut QueueContext) -> Result<(), DeviceError> {
        Ok(())
    }

    /// Multiqueue: hand off groups of queues that can be served in parallel, each to a
    /// handler of its own that owns what those queues need (virtio-blk: a request queue
    /// and its I/O engine; virtio-net: a queue pair and its tap queue), so that each group
    /// runs on a thread of its own without a device-wide lock. A handler sees its queues as
    /// 0..count and gets the device's `activate`, `reset` and config writes as well;
    /// device-wide state it needs from elsewhere (a control queue) it takes from the
    /// device itself. Queues in no group stay with this device. Called once, at build.
    fn split(&mut self) -> std::io::Result<Vec<QueueGroup>> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::Queue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    /// With EVENT_IDX, draining publishes the next avail index in the used ring's
    /// avail_event (QEMU's virtio-blk idx test found it left at 0: the driver stops kicking).
    #[test]
    fn drain_publishes_avail_event() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let size = 16u16;
        let (desc, avail, used) = (0x1000u64, 0x2000u64, 0x3000u64);
        let mut q = Queue::new(size).unwrap();
        q.set_desc_table_address(Some(desc as u32), Some(0));
        q.set_avail_ring_address(Some(avail as u32), Some(0));
        q.set_used_ring_address(Some(used as u32), Some(0));
        q.set_event_idx(true);
        q.set_ready(true);
        // Two one-descriptor chains (device-writable, 16 bytes at 0x8000).
        for i in 0..2u16 {
            let d = desc + 16 * u64::from(i);
            mem.write_obj(0x8000u64, GuestAddress(d)).unwrap();
            mem.write_obj(16u32, GuestAddress(d + 8)).unwrap();
            mem.write_obj(2u16, GuestAddress(d + 12)).unwrap();
            mem.write_obj(i, GuestAddress(avail + 4 + 2 * u64::from(i)))
                .unwrap();
        }
        mem.write_obj(2u16, GuestAddress(avail + 2)).unwrap();
        let irq = VirtioInterrupt::new(None, 1);
        let mut queues = [q];
        let mut ctx = QueueContext {
            name: "test",
            queues: &mut queues,
            mem: &mem,
            features: super::super::regs::features::RING_EVENT_IDX,
            irq: &irq,
        };
        assert_eq!(ctx.drain_queue(0, |_, _| Ok(0)).unwrap(), Some(true));
        let avail_event = GuestAddress(used + 4 + 8 * u64::from(size));
        assert_eq!(mem.read_obj::<u16>(GuestAddress(used + 2)).unwrap(), 2);
        assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), 2);
    }
}
