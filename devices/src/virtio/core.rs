//! Device state shared by the transport and the worker: the device model, its queues, the
//! negotiated features and device status (QEMU's VirtIODevice).

use super::device::{QueueContext, VirtioDevice};
use super::interrupt::VirtioInterrupt;
use super::notify::Kicks;
use super::regs::{features, status};
use std::sync::Arc;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

pub(crate) struct Core {
    /// How log lines name the device (`logging::pci_name`).
    pub name: String,
    pub device: Box<dyn VirtioDevice>,
    pub queues: Vec<Queue>,
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
    /// A device error happened (QEMU's virtio_error): stop processing until reset.
    pub broken: bool,
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
        Ok(Self {
            name,
            legacy_only,
            device,
            queues,
            kicks,
            mem,
            irq,
            status: 0,
            offered,
            acked: 0,
            generation: 0,
            broken: false,
            last_driver: None,
        })
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
        // Drain stale kicks so the worker does not touch a reset queue.
        self.kicks.drain();
        self.status = 0;
        self.acked = 0;
        self.broken = false;
        self.irq.reset(false);
    }

    /// virtio_error: one guest_errors line naming the device and the reason; NEEDS_RESET
    /// (modern drivers) plus a config interrupt; the device stops until reset.
    pub fn device_error(&mut self, reason: &dyn std::fmt::Display) {
        crate::guest_error!("{}: {reason}; device stopped until reset", self.name);
        self.broken = true;
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
        if self.broken || !self.queues.get(idx).is_some_and(|q| q.ready()) {
            return;
        }
        crate::trace_event!(virtio_queue_notify, "vdev {} n {}", self.name, idx);
        let (mut ctx, dev) = self.context_and_device();
        if let Err(e) = dev.process_queue(idx, &mut ctx) {
            self.device_error(&e);
        }
    }

    /// Wait for the device's requests in flight and complete them.
    pub fn settle(&mut self) {
        if self.broken {
            return;
        }
        let (mut ctx, dev) = self.context_and_device();
        if let Err(e) = dev.settle(&mut ctx) {
            self.device_error(&e);
        }
    }

    /// Service a device event source.
    pub fn process_event(&mut self, token: u32) {
        if self.broken {
            return;
        }
        let (mut ctx, dev) = self.context_and_device();
        if let Err(e) = dev.process_event(token, &mut ctx) {
            self.device_error(&e);
        }
    }
}
