//! QEMU's resource-reserve vendor capability (pci_bridge_qemu_reserve_cap_init): firmware
//! hints telling SeaBIOS/OVMF how much bus, I/O and memory space to leave behind a port.
//! Only present when one of the `*-reserve` properties is set.

use crate::pci::config::PciConfig;
use crate::pci::PciError;

pub const CAP_ID_VNDR: u8 = 0x09;
/// Packed struct: id, next, len, type, bus u32, io u64, mem u32, pref32 u32, pref64 u64.
pub const SIZE: usize = 32;
const TYPE_RESOURCE_RESERVE: u8 = 1;

/// Requested reservations; `None` is QEMU's -1 ("not set").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reserve {
    pub bus: Option<u32>,
    pub io: Option<u64>,
    pub mem: Option<u64>,
    pub pref32: Option<u64>,
    pub pref64: Option<u64>,
}

impl Reserve {
    pub fn any(&self) -> bool {
        self.bus.is_some()
            || self.io.is_some()
            || self.mem.is_some()
            || self.pref32.is_some()
            || self.pref64.is_some()
    }

    /// QEMU's realize-time checks.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.pref32.is_some() && self.pref64.is_some() {
            return Err("PREF32 and PREF64 conflict");
        }
        if self.mem.is_some_and(|m| m >= 1 << 32) || self.pref32.is_some_and(|m| m >= 1 << 32) {
            return Err("32-bit reservation must be less than 4G");
        }
        Ok(())
    }
}

pub fn add(config: &mut PciConfig, offset: usize, r: &Reserve) -> Result<usize, PciError> {
    config.add_capability(CAP_ID_VNDR, offset, SIZE)?;
    config.set_u8(offset + 2, SIZE as u8);
    config.set_u8(offset + 3, TYPE_RESOURCE_RESERVE);
    config.set_u32(offset + 4, r.bus.unwrap_or(u32::MAX));
    config.set_u64(offset + 8, r.io.unwrap_or(u64::MAX));
    config.set_u32(offset + 16, r.mem.map_or(u32::MAX, |v| v as u32));
    config.set_u32(offset + 20, r.pref32.map_or(u32::MAX, |v| v as u32));
    config.set_u64(offset + 24, r.pref64.unwrap_or(u64::MAX));
    Ok(offset)
}
