//! Device models: the address-decoded bus, PCI core and chipsets, bridges, legacy devices.

pub mod bus;
pub mod legacy;
pub mod lifecycle;
