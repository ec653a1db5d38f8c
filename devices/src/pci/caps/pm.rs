//! Power management capability: the PMC word and the PMCSR value and masks each model gives
//! it. QEMU's pci_pm_init alone (pcie-pci-bridge) leaves version 1.2 and a read-only PMCSR;
//! virtio-pci makes the power state writable, e1000e (e1000e_add_pm_capability) adds PME
//! enable, data select and a RW1C PME status.

use crate::pci::config::PciConfig;
use crate::pci::regs::CAP_ID_PM;
use crate::pci::PciError;

pub const SIZE: usize = 8;
pub const PMC: usize = 2;
pub const CTRL: usize = 4;

pub const PMC_VER_1_1: u16 = 0x0002;
pub const PMC_VER_1_2: u16 = 0x0003;
/// Device specific initialization required.
pub const PMC_DSI: u16 = 0x0020;

pub const CTRL_STATE_MASK: u16 = 0x0003;
pub const CTRL_NO_SOFT_RESET: u16 = 0x0008;
pub const CTRL_PME_ENABLE: u16 = 0x0100;
pub const CTRL_DATA_SEL_MASK: u16 = 0x1e00;
pub const CTRL_PME_STATUS: u16 = 0x8000;

/// What goes into the capability besides its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmConfig {
    pub pmc: u16,
    /// Initial PMCSR.
    pub ctrl: u16,
    pub ctrl_wmask: u16,
    pub ctrl_w1cmask: u16,
}

impl PmConfig {
    /// pci_pm_init as QEMU leaves it: version 1.2, PMCSR read-only.
    pub const BASIC: Self = Self {
        pmc: PMC_VER_1_2,
        ctrl: 0,
        ctrl_wmask: 0,
        ctrl_w1cmask: 0,
    };
}

pub fn add(config: &mut PciConfig, offset: usize, pm: PmConfig) -> Result<usize, PciError> {
    config.add_capability(CAP_ID_PM, offset, SIZE)?;
    config.set_u16(offset + PMC, pm.pmc);
    config.set_u16(offset + CTRL, pm.ctrl);
    config.set_wmask_u16(offset + CTRL, pm.ctrl_wmask);
    config.set_w1cmask_u16(offset + CTRL, pm.ctrl_w1cmask);
    Ok(offset)
}
