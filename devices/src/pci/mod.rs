//! PCI core: configuration space, functions, the host with its config mechanisms (0xcf8 and
//! ECAM), BAR mapping, INTx routing and the firmware step that programs what SeaBIOS would;
//! the [`PciKind`] trait every device kind implements, the bridges and ports, and the
//! header-only kinds. Nothing here names a chipset: `crate::chipset` builds on this module,
//! and `crate::kinds` (the registry) on both.

pub mod acpi_hotplug;
pub mod bridge;
pub mod bridges;
pub mod caps;
pub mod config;
pub mod config_io;
pub mod device;
pub mod ecam;
pub mod endpoints;
pub mod firmware;
pub mod host;
pub mod interrupt;
pub mod kind;
pub mod msi;
pub mod msix;
pub mod nic;
pub mod ports;
pub mod pvpanic_pci;
pub mod regs;
pub mod window;

#[cfg(test)]
mod bridge_tests;
#[cfg(test)]
mod tests;

pub use config::{BarDef, BarKind, PciConfig};
pub use config_io::{ConfigPorts, PciConfigIo};
pub use device::{BusPlacement, GenericEndpoint, PciFunction, Space, Window, WindowTarget};
pub use ecam::PciConfigMmio;
pub use firmware::FirmwareLayout;
pub use host::{FunctionInfo, PciHost, SharedFunction, SharedHost};
pub use interrupt::{IntxSink, MsiSink};
pub use kind::{FunctionContext, PciKind};

/// Errors building the PCI topology or registering device resources.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    #[error("the plan has no root PCI bus")]
    NoRootBus,
    #[error("function on unknown bus {0}")]
    UnknownBus(String),
    #[error("two functions at devfn {devfn:#04x} on bus {bus}")]
    DuplicateFunction { bus: String, devfn: u8 },
    #[error("invalid plan: {0}")]
    InvalidPlan(String),
    #[error("BAR {index}: {reason}")]
    InvalidBar { index: usize, reason: &'static str },
    #[error("capability {id:#x} does not fit at {offset:#x}")]
    InvalidCapability { id: u32, offset: usize },
    #[error("invalid property {name}={value}")]
    InvalidProperty { name: String, value: String },
    #[error("{device}: {reason}")]
    Device { device: String, reason: String },
    #[error("firmware step: {0}")]
    Firmware(String),
}

/// A typed plan property that does not hold what the model reads (decoded by `machine`).
impl From<machine::PropertyError> for PciError {
    fn from(e: machine::PropertyError) -> Self {
        PciError::InvalidProperty {
            name: e.name,
            value: e.value,
        }
    }
}
