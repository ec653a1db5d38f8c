//! The event-manager side of a virtio device: one subscriber per device that waits on the
//! queue notification EventFds and the device's own sources (tap, console input) and runs
//! the device under its lock.

use super::core::Core;
use super::pci_transport::lock;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

/// Event data values at or above this are device event-source tokens.
const SOURCE_BASE: u32 = 0x1_0000;

/// Processes one device's queues; add it to an `event_manager::EventManager`.
pub struct VirtioWorker {
    core: Arc<Mutex<Core>>,
}

impl VirtioWorker {
    pub(crate) fn new(core: Arc<Mutex<Core>>) -> Self {
        Self { core }
    }

    /// Handle a kick of queue `idx` (what the subscriber does when its EventFd fires).
    pub fn process_queue(&mut self, idx: usize) {
        let mut core = lock(&self.core);
        if let Some(k) = core.kicks.get(idx) {
            let _ = k.read();
        }
        core.process_queue(idx);
    }

    /// Handle device event source `token` (see `VirtioDevice::event_sources`).
    pub fn process_event(&mut self, token: u32) {
        lock(&self.core).process_event(token);
    }

    /// Process every queue whose EventFd was signalled; for callers without an event loop
    /// (tests, a polling VMM).
    pub fn poll(&mut self) {
        let mut core = lock(&self.core);
        for idx in 0..core.kicks.len() {
            if core.kicks[idx].read().is_ok() {
                core.process_queue(idx);
            }
        }
    }
}

impl MutEventSubscriber for VirtioWorker {
    fn init(&mut self, ops: &mut EventOps) {
        let core = lock(&self.core);
        for (i, k) in core.kicks.iter().enumerate() {
            // Registration fails only for a closed fd or a full epoll set; the queue then
            // still works through `poll`.
            let _ = ops.add(Events::with_data(k, i as u32, EventSet::IN));
        }
        for (fd, token) in core.device.event_sources() {
            let _ = ops.add(Events::with_data_raw(
                fd,
                SOURCE_BASE.saturating_add(token),
                // Edge-triggered: a device may leave data unread while it has no buffers.
                EventSet::IN | EventSet::EDGE_TRIGGERED,
            ));
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let data = events.data();
        if data >= SOURCE_BASE {
            self.process_event(data - SOURCE_BASE);
        } else {
            self.process_queue(data as usize);
        }
    }
}

impl std::fmt::Debug for VirtioWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let core = lock(&self.core);
        f.debug_struct("VirtioWorker")
            .field("device_type", &core.device.device_type())
            .field(
                "kick_fds",
                &core.kicks.iter().map(|k| k.as_raw_fd()).collect::<Vec<_>>(),
            )
            .finish()
    }
}
