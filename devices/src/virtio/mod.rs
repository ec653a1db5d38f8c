//! virtio-pci devices as QEMU 10.2 builds them: the PCI transport (legacy, transitional and
//! modern-only, with MSI-X), and the block, network, entropy and console devices.
//!
//! The VMM builds a function with [`create`], inserts it in the PCI host and registers the
//! returned [`VirtioWorker`] with its event manager. KVM specifics stay outside: MSI-X goes
//! through the host's `MsiSink`, INTx through an [`IntxLine`], and queue notifications reach
//! per-queue EventFds (signalled from `bar_write`, or by the KVM ioeventfds the transport
//! registers through the VMM's [`IoEventRegistrar`]).

pub mod balloon;
pub mod blk;
mod caps;
pub mod console;
mod core;
mod create;
pub mod device;
pub mod interrupt;
mod iov;
pub mod net;
pub mod notify;
pub mod pci_transport;
pub mod regs;
pub mod rng;
pub mod worker;

#[cfg(test)]
mod tests;

pub use self::core::DriverInterface;
pub use caps::CapLayout;
pub use create::{create, VirtioBackend, VirtioParts};
pub use device::{DeviceError, QueueContext, QueueGroup, VirtioDevice};
pub use interrupt::{IntxLine, VirtioInterrupt};
pub use notify::{IoEvent, IoEventRegistrar, IoEventSpace, KickStats};
pub use pci_transport::{NotifyAddr, NotifyInfo, VirtioPciFunction};
pub use worker::VirtioWorker;

/// Errors building a virtio-pci function.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("{0} is not a virtio-pci function in the plan")]
    NotVirtio(String),
    #[error("{0}: plan identity does not match the virtio-pci rules")]
    Identity(String),
    #[error("{type_name}: backend {backend} does not fit device type {device_type}")]
    Backend {
        type_name: String,
        backend: &'static str,
        device_type: u16,
    },
    #[error("{0}")]
    Refused(String),
    #[error("virtio device type {0} is not implemented")]
    Unsupported(u16),
    #[error("PCI layout: {0}")]
    Pci(#[from] crate::pci::PciError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// A plan property the model cannot read, reported as the PCI layout errors are.
impl From<machine::PropertyError> for VirtioError {
    fn from(e: machine::PropertyError) -> Self {
        VirtioError::Pci(e.into())
    }
}
