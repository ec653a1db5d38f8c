//! The event-manager side of a virtio device: one subscriber per device that waits on the
//! queue notification EventFds and the device's own sources (tap, console input) and runs
//! the device under its lock.

use super::core::{Core, DriverInterface};
use super::notify::{KickStats, Kicks};
use super::pci_transport::lock;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

/// Event data values at or above this are device event-source tokens.
const SOURCE_BASE: u32 = 0x1_0000;

/// Processes one device's queues; add it to an `event_manager::EventManager`.
pub struct VirtioWorker {
    core: Arc<Mutex<Core>>,
    kicks: Arc<Kicks>,
    /// Set by the VMM under MACHINA_TRACE: print the notification counters when dropped.
    trace: Option<String>,
}

impl VirtioWorker {
    pub(crate) fn new(core: Arc<Mutex<Core>>) -> Self {
        let kicks = lock(&core).kicks.clone();
        Self {
            core,
            kicks,
            trace: None,
        }
    }

    /// Print this device's notification counters, named `label`, when the worker goes.
    pub fn set_trace(&mut self, label: String) {
        self.trace = Some(label);
    }

    /// The device's name in log lines (its id, or its type and address).
    pub fn name(&self) -> String {
        lock(&self.core).name.clone()
    }

    /// The interface the driver used the last time it set DRIVER_OK.
    pub fn last_driver(&self) -> Option<DriverInterface> {
        lock(&self.core).last_driver
    }

    /// Notification counters of the device.
    pub fn kick_stats(&self) -> KickStats {
        self.kicks.stats()
    }

    /// Handle a kick of queue `idx` (what the subscriber does when its EventFd fires).
    pub fn process_queue(&mut self, idx: usize) {
        let mut core = lock(&self.core);
        core.kicks.take(idx);
        core.process_queue(idx);
    }

    /// Handle device event source `token` (see `VirtioDevice::event_sources`).
    pub fn process_event(&mut self, token: u32) {
        lock(&self.core).process_event(token);
    }

    /// Process every queue whose EventFd was signalled and complete the requests that
    /// started; for tests and benchmarks, which run no event loop (the VMM registers the
    /// worker with one).
    pub fn poll(&mut self) {
        let mut core = lock(&self.core);
        for idx in 0..core.kicks.len() {
            if core.kicks.take(idx) {
                core.process_queue(idx);
            }
        }
        core.settle();
    }
}

impl MutEventSubscriber for VirtioWorker {
    fn init(&mut self, ops: &mut EventOps) {
        let core = lock(&self.core);
        // Registration fails only for a closed fd or a full epoll set (a host failure);
        // nothing would then serve that queue or source, so it is reported.
        for (i, k) in core.kicks.fds().iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(k, i as u32, EventSet::IN)) {
                log::error!(
                    "{}: cannot watch queue {i}'s notifications ({e:?}): the queue is not served",
                    core.name
                );
            }
        }
        for (fd, token) in core.device.event_sources() {
            let added = ops.add(Events::with_data_raw(
                fd,
                SOURCE_BASE.saturating_add(token),
                // Edge-triggered: a device may leave data unread while it has no buffers.
                EventSet::IN | EventSet::EDGE_TRIGGERED,
            ));
            if let Err(e) = added {
                log::error!(
                    "{}: cannot watch backend fd {fd} ({e:?}): its input is not served",
                    core.name
                );
            }
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

impl Drop for VirtioWorker {
    fn drop(&mut self) {
        if let Some(label) = &self.trace {
            let s = self.kicks.stats();
            let driver = self.last_driver().map_or("none", DriverInterface::as_str);
            eprintln!(
                "machina-trace: virtio {label} driver={driver} notifications={} ioeventfd={} vmm-exits={}",
                s.served,
                s.by_ioeventfd(),
                s.exits
            );
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
                &core
                    .kicks
                    .fds()
                    .iter()
                    .map(|k| k.as_raw_fd())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}
