//! Access Control Services extended capability (QEMU's pcie_acs_init / pcie_acs_reset).

use crate::pci::config::PciConfig;
use crate::pci::regs::EXT_CAP_ID_ACS;
use crate::pci::PciError;

pub const SIZE: usize = 8;
pub const CAP: usize = 4;
pub const CTRL: usize = 6;
/// SV, TB, RR, CR, UF, DT: what a downstream port must implement.
pub const DOWNSTREAM_BITS: u16 = 0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x40;

pub fn add(config: &mut PciConfig, offset: usize, downstream: bool) -> Result<usize, PciError> {
    config.add_ext_capability(EXT_CAP_ID_ACS, 1, offset, SIZE)?;
    let bits = if downstream { DOWNSTREAM_BITS } else { 0 };
    config.set_u16(offset + CAP, bits);
    config.set_wmask_u16(offset + CTRL, bits);
    Ok(offset)
}

pub fn reset(config: &mut PciConfig, offset: usize) {
    config.set_u16(offset + CTRL, 0);
}
