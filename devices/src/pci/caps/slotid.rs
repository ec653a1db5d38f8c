//! Slot identification capability (QEMU's slotid_cap_init) of pci-bridge: every bridge is
//! "first in chassis" and the chassis number is guest-writable.

use crate::pci::config::PciConfig;
use crate::pci::regs::CAP_ID_SLOTID;
use crate::pci::PciError;

pub const SIZE: usize = 4;
/// Expansion slot register and chassis number register.
pub const ESR: usize = 2;
pub const CHASSIS_NR: usize = 3;
const ESR_FIC: u8 = 0x20;

pub fn add(
    config: &mut PciConfig,
    offset: usize,
    nslots: u8,
    chassis: u8,
) -> Result<usize, PciError> {
    config.add_capability(CAP_ID_SLOTID, offset, SIZE)?;
    config.set_u8(offset + ESR, (nslots & 0x1f) | ESR_FIC);
    config.set_u8(offset + CHASSIS_NR, chassis);
    config.set_wmask_u8(offset + CHASSIS_NR, 0xff);
    Ok(offset)
}
