//! Device models: the address-decoded bus, PCI core and chipsets, bridges, legacy devices.

pub mod aml;
pub mod blkdebug;
pub mod bus;
pub mod chipset;
pub mod ide;
pub mod kinds;
pub mod legacy;
pub mod lifecycle;
pub mod logging;
pub mod pci;
pub mod timer;
pub mod virtio;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
