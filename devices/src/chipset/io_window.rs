//! I/O blocks a chipset function decodes at a base address held in its own config space,
//! gated by an enable bit: ICH9 PMBASE/ACPI_CNTL, PIIX4 PMBA/PMREGMISC and SMBBA/SMBHSTCFG.

use crate::bus::SharedDevice;
use crate::pci::config::PciConfig;
use crate::pci::device::{Space, Window, WindowTarget};

/// Where the base and its enable bit live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoDecode {
    pub base_reg: usize,
    /// The address bits of the base register.
    pub base_mask: u32,
    pub enable_reg: usize,
    pub enable_bit: u8,
}

impl IoDecode {
    /// The block's base while decoding is enabled.
    pub fn base(&self, config: &PciConfig) -> Option<u16> {
        (config.get_u8(self.enable_reg) & self.enable_bit != 0)
            .then(|| (config.get_u32(self.base_reg) & self.base_mask) as u16)
    }

    /// The I/O window of `size` bytes onto `target`, while decoding is enabled.
    pub fn window(
        &self,
        config: &PciConfig,
        key: u32,
        size: u64,
        target: &SharedDevice,
    ) -> Option<Window> {
        self.base(config)
            .map(|base| io_window(key, base.into(), size, target))
    }
}

/// An I/O window onto `target`.
pub fn io_window(key: u32, base: u64, size: u64, target: &SharedDevice) -> Window {
    Window {
        key,
        space: Space::Io,
        base,
        size,
        target: WindowTarget::Device(target.clone()),
    }
}
