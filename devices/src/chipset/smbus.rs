//! The SMBus host controller register block (PIIX4 / ICH9 share QEMU's pm_smbus layout) with
//! no devices behind it: every transaction ends with DEV_ERR, so drivers probe and find none.

use crate::bus::BusDevice;

pub const SMBUS_IO_LEN: u64 = 64;
const HST_STS: usize = 0x00;
const HST_CNT: usize = 0x02;
const HST_CNT_START: u8 = 0x40;
const HST_STS_DEV_ERR: u8 = 0x04;

pub struct Smbus {
    regs: [u8; SMBUS_IO_LEN as usize],
}

impl Default for Smbus {
    fn default() -> Self {
        Self::new()
    }
}

impl Smbus {
    pub fn new() -> Self {
        Self {
            regs: [0; SMBUS_IO_LEN as usize],
        }
    }

    pub fn reset(&mut self) {
        self.regs.fill(0);
    }

    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset.saturating_add(i as u64))
                .ok()
                .and_then(|o| self.regs.get(o))
                .copied()
                .unwrap_or(0xff);
        }
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let Ok(o) = usize::try_from(offset.saturating_add(i as u64)) else {
                continue;
            };
            match o {
                HST_STS => self.regs[HST_STS] &= !v,
                HST_CNT => {
                    self.regs[HST_CNT] = v & !HST_CNT_START;
                    if v & HST_CNT_START != 0 {
                        // No slave answers any address.
                        self.regs[HST_STS] |= HST_STS_DEV_ERR;
                    }
                }
                _ => {
                    if let Some(r) = self.regs.get_mut(o) {
                        *r = v;
                    }
                }
            }
        }
    }
}

impl BusDevice for Smbus {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        Smbus::read(self, offset, data);
    }
    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        Smbus::write(self, offset, data);
    }
}
