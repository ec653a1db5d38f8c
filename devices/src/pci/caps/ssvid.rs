//! Bridge subsystem vendor ID capability (QEMU's pci_bridge_ssvid_init): a type-1 header has
//! no subsystem fields, so bridges carry them in this capability.

use crate::pci::config::PciConfig;
use crate::pci::regs::CAP_ID_SSVID;
use crate::pci::PciError;

pub const SIZE: usize = 8;

pub fn add(config: &mut PciConfig, offset: usize, svid: u16, ssid: u16) -> Result<usize, PciError> {
    config.add_capability(CAP_ID_SSVID, offset, SIZE)?;
    config.set_u16(offset + 4, svid);
    config.set_u16(offset + 6, ssid);
    Ok(offset)
}
