//! Conventional-PCI secondary buses: the SHPC bridges and the DMI-to-PCI bridge.

pub mod dmi;
pub mod pci_bridge;
