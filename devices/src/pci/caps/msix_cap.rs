//! MSI-X capability bytes as QEMU's msix_init writes them (cap ID 0x11, table size - 1,
//! table/PBA offset+BIR, enable and function-mask writable), for `pci::msix` and the
//! bridges' table page. Table and PBA behaviour lives with those.

use crate::pci::config::PciConfig;
use crate::pci::regs::CAP_ID_MSIX;
use crate::pci::PciError;

pub const SIZE: usize = 12;
pub const CONTROL: usize = 2;
const TABLE: usize = 4;
const PBA: usize = 8;
/// Message control, high byte: enable and function mask.
pub const CONTROL_HI: usize = 3;
pub const ENABLE: u8 = 0x80;
pub const MASKALL: u8 = 0x40;

pub fn add(
    config: &mut PciConfig,
    offset: usize,
    vectors: u16,
    table_bar: u8,
    table_offset: u32,
    pba_bar: u8,
    pba_offset: u32,
) -> Result<usize, PciError> {
    config.add_capability(CAP_ID_MSIX, offset, SIZE)?;
    config.set_u16(offset + CONTROL, vectors.clamp(1, 2048) - 1);
    config.set_u32(
        offset + TABLE,
        (table_offset & !7) | u32::from(table_bar & 7),
    );
    config.set_u32(offset + PBA, (pba_offset & !7) | u32::from(pba_bar & 7));
    config.set_wmask_u8(offset + CONTROL_HI, ENABLE | MASKALL);
    Ok(offset)
}
