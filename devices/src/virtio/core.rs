//! Device state shared by the transport and the worker: the device model, its queues, the
//! negotiated features and device status (QEMU's VirtIODevice).
//!
//! A multiqueue device splits off queue groups (`VirtioDevice::split`): each [`Group`] owns
//! its queues and their handler under a lock of its own, so its thread serves them while
//! other queues are served; the device-wide state stays here and the transport reaches a
//! group's queues through [`Core::with_queue`]. Lock order: the core, then a group; a
//! group's thread never takes the core while it holds its group.

use super::device::{DeviceError, QueueContext, VirtioDevice};
use super::interrupt::VirtioInterrupt;
use super::notify::Kicks;
use super::regs::{features, status};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

/// Queues `first..first + queues.len()` of a device and the handler that serves them.
pub(crate) struct Group {
    pub first: usize,
    pub queues: Vec<Queue>,
    pub handler: Box<dyn VirtioDevice>,
    /// The device's interrupt, seen with this group's queue numbers.
    irq: VirtioInterrupt,
    mem: GuestMemoryMmap,
    name: String,
    /// The features acked at DRIVER_OK.
    features: u64,
    /// The device's `broken` flag.
    broken: Arc<AtomicBool>,
}

pub(crate) type SharedGroup = Arc<Mutex<Group>>;

impl Group {
    fn context_and_handler(&mut self) -> (QueueContext<'_>, &mut dyn VirtioDevice) {
        (
            QueueContext {
                name: &self.name,
                queues: &mut self.queues,
                mem: &self.mem,
                features: self.features,
                irq: &self.irq,
            },
            self.handler.as_mut(),
        )
    }

    /// Serve the group's queue `local` (its queue numbering); an error is the device's, in
    /// the device's queue numbering, for the caller to report once it let go of the group.
    pub fn process_queue(&mut self, local: usize) -> Result<(), DeviceError> {
        if self.broken.load(Ordering::Acquire) || !self.queues.get(local).is_some_and(|q| q.ready())
        {
            return Ok(());
        }
        crate::trace_event!(
            virtio_queue_notify,
            "vdev {} n {}",
            self.name,
            self.first + local
        );
        let first = self.first;
        let (mut ctx, h) = self.context_and_handler();
        h.process_queue(local, &mut ctx)
            .map_err(|e| e.rebased(first))
    }

    /// Service the handler's event source `token`.
    pub fn process_event(&mut self, token: u32) -> Result<(), DeviceError> {
        if self.broken.load(Ordering::Acquire) {
            return Ok(());
        }
        let first = self.first;
        let (mut ctx, h) = self.context_and_handler();
        h.process_event(token, &mut ctx)
            .map_err(|e| e.rebased(first))
    }

    pub fn settle(&mut self) -> Result<(), DeviceError> {
        if self.broken.load(Ordering::Acquire) {
            return Ok(());
        }
        let first = self.first;
        let (mut ctx, h) = self.context_and_handler();
        h.settle(&mut ctx).map_err(|e| e.rebased(first))
    }
}

pub(crate) fn lock_group(g: &SharedGroup) -> std::sync::MutexGuard<'_, Group> {
    g.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) struct Core {
    /// How log lines name the device (`logging::pci_name`).
    pub name: String,
    pub device: Box<dyn VirtioDevice>,
    /// Every queue of the device; those of a group are only placeholders here (the group
    /// holds the real ones): use [`with_queue`](Self::with_queue).
    queues: Vec<Queue>,
    /// The queue groups split off the device, in queue order, with their queue ranges.
    pub groups: Vec<(std::ops::Range<usize>, SharedGroup)>,
    /// Per-queue notification EventFds (what the KVM ioeventfds signal), shared with the
    /// transport, which signals them without this lock.
    pub kicks: Arc<Kicks>,
    pub mem: GuestMemoryMmap,
    pub irq: Arc<VirtioInterrupt>,
    pub status: u8,
    /// Everything offered, legacy-only bits included.
    pub offered: u64,
    /// What the modern interface hides of `offered`.
    pub legacy_only: u64,
    pub acked: u64,
    /// Config generation, bumped on every device-side config change.
    pub generation: u8,
    /// A device error happened (QEMU's virtio_error): stop processing until reset. Shared
    /// with the groups.
    broken: Arc<AtomicBool>,
    /// Which interface the driver used the last time it set DRIVER_OK (kept across device
    /// resets): VERSION_1 acked means the modern interface. For the trace and tests.
    pub last_driver: Option<DriverInterface>,
}

/// The virtio-pci interface a driver drove the device through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverInterface {
    Legacy,
    Modern,
}

impl DriverInterface {
    pub fn as_str(self) -> &'static str {
        match self {
            DriverInterface::Legacy => "legacy",
            DriverInterface::Modern => "modern",
        }
    }
}

impl Core {
    pub fn new(
        name: String,
        mut device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irq: Arc<VirtioInterrupt>,
        legacy: bool,
        modern: bool,
    ) -> std::io::Result<Self> {
        device.set_name(&name);
        let split = device.split()?;
        let mut queues = Vec::new();
        for max in device.queue_max_sizes() {
            // Model sizes are constants (powers of two up to 1024); fall back if one is not.
            let q = Queue::new(max)
                .or_else(|_| Queue::new(256))
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            queues.push(q);
        }
        let kicks = Arc::new(Kicks::new(queues.len())?);
        let mut offered =
            device.features() | features::RING_INDIRECT_DESC | features::RING_EVENT_IDX;
        if modern {
            offered |= features::VERSION_1;
        }
        if legacy {
            offered |= features::LEGACY_ONLY;
        }
        let legacy_only = features::LEGACY_ONLY | device.legacy_features();
        let broken = Arc::new(AtomicBool::new(false));
        let mut groups = Vec::new();
        for g in split {
            let range = g.first..g.first + g.count;
            let mut handler = g.handler;
            handler.set_name(&name);
            // The group gets queues of the same sizes; the placeholders here are never
            // enabled.
            let Some(sizes) = queues.get(range.clone()) else {
                return Err(std::io::Error::other(format!(
                    "{name}: queue group {range:?} past the device's {} queues",
                    queues.len()
                )));
            };
            let group_queues = sizes
                .iter()
                .map(|q| Queue::new(q.max_size()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let group = Group {
                first: g.first,
                queues: group_queues,
                handler,
                irq: VirtioInterrupt::offset(&irq, g.first),
                mem: mem.clone(),
                name: name.clone(),
                features: 0,
                broken: broken.clone(),
            };
            groups.push((range, Arc::new(Mutex::new(group))));
        }
        Ok(Self {
            name,
            legacy_only,
            device,
            queues,
            groups,
            kicks,
            mem,
            irq,
            status: 0,
            offered,
            acked: 0,
            generation: 0,
            broken,
            last_driver: None,
        })
    }

    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    /// The group holding queue `q`, if one does.
    pub fn group_of(&self, q: usize) -> Option<&SharedGroup> {
        self.groups
            .iter()
            .find(|(r, _)| r.contains(&q))
            .map(|(_, g)| g)
    }

    /// Run `f` on queue `q` wherever it lives (here, or in its group, under the group's
    /// lock: a transport access waits for that group's current pass, never for I/O).
    pub fn with_queue<R>(&mut self, q: usize, f: impl FnOnce(&mut Queue) -> R) -> Option<R> {
        match self.groups.iter().find(|(r, _)| r.contains(&q)) {
            Some((r, g)) => lock_group(g).queues.get_mut(q - r.start).map(f),
            None => self.queues.get_mut(q).map(f),
        }
    }

    pub fn queue_ready(&mut self, q: usize) -> bool {
        self.with_queue(q, |q| q.ready()).unwrap_or(false)
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// Every queue's readiness, in order.
    pub fn ready_queues(&mut self) -> Vec<bool> {
        (0..self.queues.len())
            .map(|q| self.queue_ready(q))
            .collect()
    }

    /// A guest write to the device config: the device's and its groups' (which keep what
    /// they need of it, e.g. virtio-blk's write cache).
    pub fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.device.write_config(offset, data);
        for (_, g) in &self.groups {
            lock_group(g).handler.write_config(offset, data);
        }
    }

    /// virtio_set_features: bits the device did not offer are dropped.
    pub fn set_driver_features(&mut self, value: u64) {
        // Features are fixed once FEATURES_OK is accepted (virtio 1.x §3.1.1).
        if self.status & status::FEATURES_OK != 0 {
            return;
        }
        self.acked = value & self.offered;
    }

    /// virtio_set_status plus virtio_pci's reset-on-zero. Returns true if the device reset.
    /// Feature validation always passes: acked bits are already a subset of the offer.
    pub fn set_status(&mut self, value: u8) -> bool {
        crate::trace_event!(virtio_set_status, "vdev {} val {}", self.name, value);
        if value == 0 {
            self.reset();
            return true;
        }
        let was_ok = self.status & status::DRIVER_OK != 0;
        self.status = value;
        if !was_ok && value & status::DRIVER_OK != 0 {
            self.last_driver = Some(if self.acked & features::VERSION_1 != 0 {
                DriverInterface::Modern
            } else {
                DriverInterface::Legacy
            });
            self.device.activate(self.acked);
            for (_, g) in &self.groups {
                let mut g = lock_group(g);
                g.features = self.acked;
                g.handler.activate(self.acked);
            }
            // Buffers queued before DRIVER_OK were not kicked; look at every queue.
            for q in 0..self.kicks.len() {
                self.kicks.kick(q);
            }
        }
        false
    }

    /// Device reset (status 0): queues, features, status.
    pub fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        // Each group after its current pass: its handler drains what it has in flight.
        for (_, g) in &self.groups {
            let mut g = lock_group(g);
            g.handler.reset();
            for q in &mut g.queues {
                q.reset();
            }
            g.features = 0;
        }
        // Drain stale kicks so the worker does not touch a reset queue.
        self.kicks.drain();
        self.status = 0;
        self.acked = 0;
        self.broken.store(false, Ordering::Release);
        self.irq.reset(false);
    }

    /// virtio_error: one guest_errors line naming the device and the reason; NEEDS_RESET
    /// (modern drivers) plus a config interrupt; the device stops until reset.
    pub fn device_error(&mut self, reason: &dyn std::fmt::Display) {
        crate::guest_error!("{}: {reason}; device stopped until reset", self.name);
        self.broken.store(true, Ordering::Release);
        if self.acked & features::VERSION_1 != 0 {
            self.status |= status::NEEDS_RESET;
            self.irq.signal_config();
        }
    }

    fn context_and_device(&mut self) -> (QueueContext<'_>, &mut dyn VirtioDevice) {
        (
            QueueContext {
                name: &self.name,
                queues: &mut self.queues,
                mem: &self.mem,
                features: self.acked,
                irq: &self.irq,
            },
            self.device.as_mut(),
        )
    }

    /// Service queue `idx` after a kick.
    pub fn process_queue(&mut self, idx: usize) {
        if self.is_broken()
            || self.group_of(idx).is_some()
            || !self.queues.get(idx).is_some_and(|q| q.ready())
        {
            return;
        }
        crate::trace_event!(virtio_queue_notify, "vdev {} n {}", self.name, idx);
        let (mut ctx, dev) = self.context_and_device();
        if let Err(e) = dev.process_queue(idx, &mut ctx) {
            self.device_error(&e);
        }
    }

    /// Wait for the device's requests in flight and complete them (not its groups').
    pub fn settle(&mut self) {
        if self.is_broken() {
            return;
        }
        let (mut ctx, dev) = self.context_and_device();
        if let Err(e) = dev.settle(&mut ctx) {
            self.device_error(&e);
        }
    }

    /// Service a device event source.
    pub fn process_event(&mut self, token: u32) {
        if self.is_broken() {
            return;
        }
        let (mut ctx, dev) = self.context_and_device();
        if let Err(e) = dev.process_event(token, &mut ctx) {
            self.device_error(&e);
        }
    }
}
