//! Power management capability as pcie-pci-bridge exposes it: version 1.2 (PMC = 3) and a
//! read-only PMCSR, since QEMU's pci_pm_init leaves the power state unwritable.

use crate::pci::config::PciConfig;
use crate::pci::regs::CAP_ID_PM;
use crate::pci::PciError;

pub const SIZE: usize = 8;
pub const PMC: usize = 2;

pub fn add(config: &mut PciConfig, offset: usize) -> Result<usize, PciError> {
    config.add_capability(CAP_ID_PM, offset, SIZE)?;
    config.set_u16(offset + PMC, 0x0003);
    Ok(offset)
}
