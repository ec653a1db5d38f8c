//! Configuration mechanism #1 at ports 0xcf8..=0xcff, plus the reset control register that
//! both PIIX3 and ICH9 decode at 0xcf9 (a byte access there never reaches CONFIG_ADDRESS,
//! as in QEMU where the RCR region overlaps 0xcf8's dword at higher priority).
//!
//! Map it with `io.insert(PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_SIZE, config_io)`.

use super::host::SharedHost;
use crate::bus::BusDevice;

pub const PCI_CONFIG_IO_BASE: u64 = 0xcf8;
pub const PCI_CONFIG_IO_SIZE: u64 = 8;

const RCR_OFFSET: u64 = 1;
const DATA_OFFSET: u64 = 4;
const ENABLE: u32 = 1 << 31;

pub struct PciConfigIo {
    host: SharedHost,
    /// CONFIG_ADDRESS as last written (all 32 bits read back, like QEMU).
    address: u32,
}

impl PciConfigIo {
    /// The config ports of `host` (shared with [`PciHost::into_shared`], which binds its
    /// ECAM decoder).
    ///
    /// [`PciHost::into_shared`]: super::PciHost::into_shared
    pub fn new(host: SharedHost) -> Self {
        Self { host, address: 0 }
    }

    /// (bus, devfn, register) selected by CONFIG_ADDRESS plus the data-port byte offset. As in
    /// QEMU, the register keeps CONFIG_ADDRESS's low two bits (ORed with the port offset): a
    /// client that selects 0x...02 and reads a word at 0xcfc gets the device ID.
    fn target(&self, port_offset: u64) -> Option<(u8, u8, u16)> {
        if self.address & ENABLE == 0 {
            return None;
        }
        let reg = (self.address & 0xff) as u16 | (port_offset & 3) as u16;
        Some(((self.address >> 16) as u8, (self.address >> 8) as u8, reg))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            RCR_OFFSET => {
                let v = self
                    .host
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .rcr_read();
                data.fill(v);
            }
            DATA_OFFSET..=7 => {
                // The data window is 4 bytes; anything past 0xcff floats high.
                let room = (8 - offset) as usize;
                let n = data.len().min(room);
                data[n..].fill(0xff);
                match self.target(offset) {
                    Some((bus, devfn, reg)) if n <= 4 => self
                        .host
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .config_read(bus, devfn, reg, &mut data[..n]),
                    _ => data[..n].fill(0xff),
                }
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                self.address = u32::from_le_bytes(b);
            }
            RCR_OFFSET => {
                // The RCR is a byte register; wider writes reach it byte by byte.
                let mut host = self.host.lock().unwrap_or_else(|e| e.into_inner());
                for &b in data {
                    host.rcr_write(b);
                }
            }
            DATA_OFFSET..=7 => {
                let n = data.len().min((8 - offset) as usize);
                if let Some((bus, devfn, reg)) = self.target(offset) {
                    if n <= 4 {
                        self.host
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .config_write(bus, devfn, reg, &data[..n]);
                    }
                }
            }
            _ => {}
        }
    }
}
