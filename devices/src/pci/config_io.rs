//! Configuration mechanism #1 (CONFIG_ADDRESS and CONFIG_DATA, 0xcf8 and 0xcfc on both
//! boards), plus the reset control register that both PIIX3 and ICH9 decode (0xcf9): a
//! byte access there never reaches CONFIG_ADDRESS, as in QEMU where the RCR region
//! overlaps 0xcf8's dword at higher priority. The ports are the plan's: its host-bridge
//! entry (address range, then data range) and its reset-control entry.

use super::host::SharedHost;
use crate::bus::BusDevice;
use crate::legacy::kind::BoardEntry;
use machine::{Plan, Range};

/// The board's host-bridge entry: CONFIG_ADDRESS's range, then CONFIG_DATA's.
pub static PCI_HOST: BoardEntry = BoardEntry {
    names: &["q35-pcihost", "i440FX-pcihost"],
};
/// The board's reset control register.
pub static RESET_CONTROL: BoardEntry = BoardEntry {
    names: &["lpc-reset-control", "piix-reset-control"],
};

const ENABLE: u32 = 1 << 31;
/// CONFIG_ADDRESS and CONFIG_DATA are dwords.
const PORT_SIZE: u64 = 4;

/// Where the config mechanism's registers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigPorts {
    pub address: u64,
    pub data: u64,
    /// The reset control register, when the machine has one.
    pub rcr: Option<u64>,
}

impl ConfigPorts {
    /// The plan's ports; None when the machine has no host bridge ports.
    pub fn from_plan(plan: &Plan) -> Option<Self> {
        let host = PCI_HOST.find(plan)?;
        let (address, data) = match host.io.as_slice() {
            [a, d, ..] => (a.base, d.base),
            _ => return None,
        };
        let rcr = RESET_CONTROL
            .find(plan)
            .and_then(|d| d.io.first())
            .map(|r| r.base);
        Some(Self { address, data, rcr })
    }

    /// From CONFIG_ADDRESS to the end of CONFIG_DATA (the DSDT's description of the ports).
    pub fn span(&self) -> Range {
        let base = self.address.min(self.data);
        let end = self.address.max(self.data) + PORT_SIZE;
        Range {
            base,
            size: end - base,
        }
    }

    /// The I/O ranges to map the device at: CONFIG_ADDRESS and CONFIG_DATA (one range when
    /// they are adjacent, as on both boards) and the RCR where it lies outside them.
    pub fn ranges(&self) -> Vec<Range> {
        let mut v = if self.data == self.address + PORT_SIZE {
            vec![Range {
                base: self.address,
                size: 2 * PORT_SIZE,
            }]
        } else {
            vec![
                Range {
                    base: self.address,
                    size: PORT_SIZE,
                },
                Range {
                    base: self.data,
                    size: PORT_SIZE,
                },
            ]
        };
        if let Some(rcr) = self.rcr {
            if !v.iter().any(|r| r.base <= rcr && rcr < r.end()) {
                v.push(Range { base: rcr, size: 1 });
            }
        }
        v
    }
}

pub struct PciConfigIo {
    host: SharedHost,
    ports: ConfigPorts,
    /// CONFIG_ADDRESS as last written (all 32 bits read back, like QEMU).
    address: u32,
}

impl PciConfigIo {
    /// The config ports of `host` (shared with [`PciHost::into_shared`], which binds its
    /// ECAM decoder), decoding at `ports`; map it at [`ConfigPorts::ranges`].
    ///
    /// [`PciHost::into_shared`]: super::PciHost::into_shared
    pub fn new(host: SharedHost, ports: ConfigPorts) -> Self {
        Self {
            host,
            ports,
            address: 0,
        }
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

    /// The offset into CONFIG_DATA of I/O port `port`, if it is one of its bytes.
    fn data_offset(&self, port: u64) -> Option<u64> {
        port.checked_sub(self.ports.data).filter(|&o| o < PORT_SIZE)
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        let port = base + offset;
        match port {
            p if p == self.ports.address && data.len() == 4 => {
                data.copy_from_slice(&self.address.to_le_bytes())
            }
            p if Some(p) == self.ports.rcr => {
                let v = self
                    .host
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .rcr_read();
                data.fill(v);
            }
            p => match self.data_offset(p) {
                Some(offset) => {
                    // The data window is 4 bytes; anything past it floats high.
                    let n = data.len().min((PORT_SIZE - offset) as usize);
                    data[n..].fill(0xff);
                    match self.target(offset) {
                        Some((bus, devfn, reg)) => self
                            .host
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .config_read(bus, devfn, reg, &mut data[..n]),
                        None => data[..n].fill(0xff),
                    }
                }
                None => data.fill(0xff),
            },
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let port = base + offset;
        match port {
            p if p == self.ports.address && data.len() == 4 => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                self.address = u32::from_le_bytes(b);
            }
            p if Some(p) == self.ports.rcr => {
                // The RCR is a byte register; wider writes reach it byte by byte.
                let mut host = self.host.lock().unwrap_or_else(|e| e.into_inner());
                for &b in data {
                    host.rcr_write(b);
                }
            }
            p => {
                let Some(offset) = self.data_offset(p) else {
                    return;
                };
                let n = data.len().min((PORT_SIZE - offset) as usize);
                if let Some((bus, devfn, reg)) = self.target(offset) {
                    self.host
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .config_write(bus, devfn, reg, &data[..n]);
                }
            }
        }
    }
}
