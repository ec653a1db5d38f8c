//! The event-manager side of a virtio device: subscribers that wait on the queue
//! notification EventFds and the device's own sources (tap, console input) and run the
//! device under its lock. A multiqueue device's queue groups (see `VirtioDevice::split`)
//! each have a lock of their own: [`VirtioWorker::split_lanes`] gives each group after the
//! first a subscriber of its own, so that a thread per group serves them in parallel.

use super::core::{lock_group, Core, DriverInterface, SharedGroup};
use super::device::DeviceError;
use super::notify::{KickStats, Kicks};
use super::pci_transport::lock;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

/// Event data values at or above this (and below `GROUP_BASE`) are device event-source
/// tokens.
const SOURCE_BASE: u32 = 0x1_0000;
/// Event data of a group's event source: this, the group's index << 16, the token.
const GROUP_BASE: u32 = 0x8000_0000;

/// Processes one device's queues, or a part of them; add it to an
/// `event_manager::EventManager`.
pub struct VirtioWorker {
    core: Arc<Mutex<Core>>,
    kicks: Arc<Kicks>,
    /// Every group of the device, with its queue range.
    groups: Vec<(std::ops::Range<usize>, SharedGroup)>,
    /// Whether this worker serves the device-level queues and sources.
    device: bool,
    /// The groups this worker serves (indices into `groups`).
    serves: Vec<usize>,
    /// Set by the VMM under MACHINA_TRACE: print the notification counters when dropped.
    trace: Option<String>,
}

impl VirtioWorker {
    pub(crate) fn new(core: Arc<Mutex<Core>>) -> Self {
        let (kicks, groups) = {
            let c = lock(&core);
            (c.kicks.clone(), c.groups.clone())
        };
        Self {
            serves: (0..groups.len()).collect(),
            core,
            kicks,
            groups,
            device: true,
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

    /// How many queue groups the device has (0: one handler serves every queue).
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// Take every queue group but the first off this worker, each into a worker of its
    /// own (to run on a thread of its own); this one keeps the device-level queues and
    /// sources (a control queue, config changes) and the first group. Empty for a device
    /// without groups.
    pub fn split_lanes(&mut self) -> Vec<VirtioWorker> {
        let lanes: Vec<usize> = self.serves.drain(..).collect();
        let mut rest = lanes.into_iter();
        self.serves.extend(rest.next());
        rest.map(|g| VirtioWorker {
            core: self.core.clone(),
            kicks: self.kicks.clone(),
            groups: self.groups.clone(),
            device: false,
            serves: vec![g],
            trace: None,
        })
        .collect()
    }

    fn group_index(&self, queue: usize) -> Option<usize> {
        self.groups.iter().position(|(r, _)| r.contains(&queue))
    }

    /// A group failed: reported as the device's error, once the group is let go (lock
    /// order: the core before a group).
    fn group_failed(&self, e: Result<(), DeviceError>) {
        if let Err(e) = e {
            lock(&self.core).device_error(&e);
        }
    }

    /// Handle a kick of queue `idx` (what the subscriber does when its EventFd fires).
    pub fn process_queue(&mut self, idx: usize) {
        self.kicks.take(idx);
        self.serve(idx);
    }

    /// Serve queue `idx`: in its group, under the group's lock only, or under the core's.
    fn serve(&self, idx: usize) {
        match self.group_index(idx) {
            Some(g) => {
                let (range, group) = &self.groups[g];
                let r = lock_group(group).process_queue(idx - range.start);
                self.group_failed(r);
            }
            None => lock(&self.core).process_queue(idx),
        }
    }

    /// Handle device event source `token` (see `VirtioDevice::event_sources`).
    pub fn process_event(&mut self, token: u32) {
        lock(&self.core).process_event(token);
    }

    /// Handle event source `token` of group `g`.
    fn process_group_event(&mut self, g: usize, token: u32) {
        if let Some((_, group)) = self.groups.get(g) {
            let r = lock_group(group).process_event(token);
            self.group_failed(r);
        }
    }

    /// Process every queue whose EventFd was signalled and complete the requests that
    /// started; for tests and benchmarks, which run no event loop (the VMM registers the
    /// worker with one).
    pub fn poll(&mut self) {
        for idx in 0..self.kicks.len() {
            if self.serves_queue(idx) && self.kicks.take(idx) {
                self.serve(idx);
            }
        }
        if self.device {
            lock(&self.core).settle();
        }
        for &g in &self.serves {
            if let Some((_, group)) = self.groups.get(g) {
                let r = lock_group(group).settle();
                self.group_failed(r);
            }
        }
    }

    /// Whether this worker serves queue `idx`.
    fn serves_queue(&self, idx: usize) -> bool {
        match self.group_index(idx) {
            Some(g) => self.serves.contains(&g),
            None => self.device,
        }
    }
}

impl MutEventSubscriber for VirtioWorker {
    fn init(&mut self, ops: &mut EventOps) {
        let core = lock(&self.core);
        // Registration fails only for a closed fd or a full epoll set (a host failure);
        // nothing would then serve that queue or source, so it is reported.
        for (i, k) in core.kicks.fds().iter().enumerate() {
            if !self.serves_queue(i) {
                continue;
            }
            if let Err(e) = ops.add(Events::with_data(k, i as u32, EventSet::IN)) {
                log::error!(
                    "{}: cannot watch queue {i}'s notifications ({e:?}): the queue is not served",
                    core.name
                );
            }
        }
        let mut sources = Vec::new();
        if self.device {
            for (fd, token) in core.device.event_sources() {
                sources.push((fd, SOURCE_BASE.saturating_add(token)));
            }
        }
        for &g in &self.serves {
            if let Some((_, group)) = self.groups.get(g) {
                for (fd, token) in lock_group(group).handler.event_sources() {
                    sources.push((fd, GROUP_BASE | ((g as u32) << 16) | (token & 0xffff)));
                }
            }
        }
        for (fd, data) in sources {
            let added = ops.add(Events::with_data_raw(
                fd,
                data,
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
        if data >= GROUP_BASE {
            let g = ((data & !GROUP_BASE) >> 16) as usize;
            self.process_group_event(g, data & 0xffff);
        } else if data >= SOURCE_BASE {
            self.process_event(data - SOURCE_BASE);
        } else {
            self.process_queue(data as usize);
        }
    }
}

impl Drop for VirtioWorker {
    fn drop(&mut self) {
        if let Some(label) = self.trace.as_ref().filter(|_| self.device) {
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
