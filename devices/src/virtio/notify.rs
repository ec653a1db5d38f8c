//! Queue notifications: one EventFd per queue, shared by the transport (vCPU threads), the
//! worker and the VMM's KVM ioeventfds, outside the device lock, so that a doorbell never
//! waits for the device's I/O. The transport registers an ioeventfd per queue at its notify
//! address through an [`IoEventRegistrar`] while the queue is live, and moves it with the BAR.

use std::sync::atomic::{AtomicU64, Ordering};
use vmm_sys_util::eventfd::EventFd;

/// Which address space an ioeventfd watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEventSpace {
    Pio,
    Mmio,
}

/// One ioeventfd registration: a write of `len` bytes (0: any length) at `addr`, matching
/// `datamatch` when given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoEvent {
    pub space: IoEventSpace,
    pub addr: u64,
    pub len: u32,
    pub datamatch: Option<u64>,
}

/// Registers ioeventfds with the hypervisor (KVM_IOEVENTFD). Called with device locks held:
/// an implementation must not take PCI host or function locks.
pub trait IoEventRegistrar: Send + Sync {
    fn register(&self, event: &IoEvent, fd: &EventFd) -> std::io::Result<()>;
    fn unregister(&self, event: &IoEvent, fd: &EventFd) -> std::io::Result<()>;
}

/// The queue EventFds of one device and counters of how notifications arrived.
pub struct Kicks {
    fds: Vec<EventFd>,
    /// Notifications that reached the transport (a vCPU exit to the VMM, or qtest).
    exits: AtomicU64,
    /// Kicks the device model gave itself (at DRIVER_OK).
    internal: AtomicU64,
    /// Notifications the worker consumed, whatever signalled them (eventfd counts add up).
    served: AtomicU64,
}

/// A snapshot of a device's notification counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KickStats {
    /// Notifications the worker saw.
    pub served: u64,
    /// Notifications that went through the VMM's exit path (not an ioeventfd).
    pub exits: u64,
    /// Kicks the device gave itself.
    pub internal: u64,
}

impl KickStats {
    /// Notifications that reached the worker without passing through the VMM: KVM
    /// ioeventfds. (Kicks dropped by a reset were counted as sent but never served.)
    pub fn by_ioeventfd(&self) -> u64 {
        self.served.saturating_sub(self.exits + self.internal)
    }
}

impl Kicks {
    pub(crate) fn new(queues: usize) -> std::io::Result<Self> {
        let fds = (0..queues)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<std::io::Result<_>>()?;
        Ok(Self {
            fds,
            exits: AtomicU64::new(0),
            internal: AtomicU64::new(0),
            served: AtomicU64::new(0),
        })
    }

    pub fn len(&self) -> usize {
        self.fds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    pub fn fd(&self, queue: usize) -> Option<&EventFd> {
        self.fds.get(queue)
    }

    pub(crate) fn fds(&self) -> &[EventFd] {
        &self.fds
    }

    /// A notification written by the guest and seen by the transport.
    pub(crate) fn kick_from_exit(&self, queue: usize) {
        if let Some(k) = self.fds.get(queue) {
            self.exits.fetch_add(1, Ordering::Relaxed);
            let _ = k.write(1);
        }
    }

    /// Signal queue `queue` from inside the device model (activation).
    pub(crate) fn kick(&self, queue: usize) {
        if let Some(k) = self.fds.get(queue) {
            self.internal.fetch_add(1, Ordering::Relaxed);
            let _ = k.write(1);
        }
    }

    /// Consume queue `queue`'s pending notifications; whether there were any.
    pub(crate) fn take(&self, queue: usize) -> bool {
        match self.fds.get(queue).map(EventFd::read) {
            Some(Ok(n)) => {
                self.served.fetch_add(n, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Drop pending notifications (device reset) without counting them as served.
    pub(crate) fn drain(&self) {
        for k in &self.fds {
            let _ = k.read();
        }
    }

    pub fn stats(&self) -> KickStats {
        KickStats {
            served: self.served.load(Ordering::Relaxed),
            exits: self.exits.load(Ordering::Relaxed),
            internal: self.internal.load(Ordering::Relaxed),
        }
    }
}
