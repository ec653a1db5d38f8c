//! Capability builders shared by the bridge and port models, each laid out and masked like
//! the QEMU helper it mirrors.

pub mod acs;
pub mod aer;
pub mod msix_cap;
pub mod pcie;
pub mod pm;
pub mod reserve;
pub mod shpc;
pub mod slotid;
pub mod ssvid;
