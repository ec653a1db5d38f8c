//! ICH9 AHCI (00:1f.2, 8086:2922): BAR4 the 32-byte index/data pair (IDP), BAR5 the 4 KiB ABAR,
//! MSI at 0x80 and SATA at 0xa8 as in QEMU's pci_ich9_ahci_realize. The HBA implements no
//! ports (PI = 0): a driver finds the controller, resets it and sees no disks.

use crate::pci::config::{BarDef, PciConfig};
use crate::pci::device::PciFunction;
use crate::pci::kind::{shared, Constructor};
use crate::pci::msi::MsiCap;
use crate::pci::regs::CAP_ID_SATA;
use crate::pci::PciError;
use machine::PciFunctionPlan;

const IDP_BAR: usize = 4;
const ABAR: usize = 5;
const ABAR_SIZE: u64 = 0x1000;
const IDP_INDEX: u64 = 0x10;
const IDP_DATA: u64 = 0x14;
const MSI_OFFSET: usize = 0x80;
const SATA_OFFSET: usize = 0xa8;

// Generic host control registers.
const HOST_CAP: u64 = 0x00;
const HOST_CTL: u64 = 0x04;
const HOST_IRQ_STAT: u64 = 0x08;
const HOST_PORTS_IMPL: u64 = 0x0c;
const HOST_VERSION: u64 = 0x10;
const HOST_CTL_RESET: u32 = 1 << 0;
const HOST_CTL_IRQ_EN: u32 = 1 << 1;
const HOST_CTL_AHCI_EN: u32 = 1 << 31;
/// S64A | SNCQ | SAM | Gen1 speed | 32 command slots | NP = 0 (QEMU's values, no ports).
const CAP_VALUE: u32 = (1 << 31) | (1 << 30) | (1 << 18) | (1 << 20) | (31 << 8);
const VERSION_1_0: u32 = 0x0001_0000;

pub struct Ich9Ahci {
    config: PciConfig,
    ghc: u32,
    irq_stat: u32,
    idp_index: u32,
    _msi: MsiCap,
}

impl Ich9Ahci {
    pub fn new(f: &PciFunctionPlan) -> Result<Self, PciError> {
        let mut c = PciConfig::new(&f.identity, f.multifunction, false);
        c.set_interrupt_pin(1);
        c.set_u8(0x90, 1 << 6); // address map: AHCI mode
        c.register_bar(IDP_BAR, BarDef::io(0x20))?;
        c.register_bar(ABAR, BarDef::mem32(ABAR_SIZE))?;
        c.add_capability(CAP_ID_SATA, SATA_OFFSET, 8)?;
        c.set_u16(SATA_OFFSET + 2, 0x10); // revision 1.0
        c.set_u32(SATA_OFFSET + 4, (IDP_BAR as u32 + 4) | (4 << 4)); // BAR4, index at 0x10
        let msi = MsiCap::init(&mut c, MSI_OFFSET, 1, true, false)?;
        c.commit_reset_state();
        Ok(Self {
            config: c,
            ghc: HOST_CTL_AHCI_EN,
            irq_stat: 0,
            idp_index: 0,
            _msi: msi,
        })
    }

    fn abar_read32(&self, offset: u64) -> u32 {
        match offset {
            HOST_CAP => CAP_VALUE,
            HOST_CTL => self.ghc,
            HOST_IRQ_STAT => self.irq_stat,
            HOST_PORTS_IMPL => 0,
            HOST_VERSION => VERSION_1_0,
            _ => 0,
        }
    }

    fn abar_write32(&mut self, offset: u64, v: u32) {
        match offset {
            HOST_CTL => {
                if v & HOST_CTL_RESET != 0 {
                    // HBA reset completes at once and clears the writable state.
                    self.ghc = HOST_CTL_AHCI_EN;
                    self.irq_stat = 0;
                } else {
                    self.ghc = HOST_CTL_AHCI_EN | (v & HOST_CTL_IRQ_EN);
                }
            }
            HOST_IRQ_STAT => self.irq_stat &= !v,
            _ => {}
        }
    }

    /// Byte-granular access on top of the 32-bit registers.
    fn abar_read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let o = offset.saturating_add(i as u64);
            *b = (self.abar_read32(o & !3) >> (8 * (o & 3))) as u8;
        }
    }

    fn abar_write(&mut self, offset: u64, data: &[u8]) {
        let base = offset & !3;
        if data.len() > 4 || offset - base + data.len() as u64 > 4 {
            return; // unaligned or straddling: ignored
        }
        let mut v = self.abar_read32(base).to_le_bytes();
        if base == HOST_IRQ_STAT {
            v = [0; 4]; // RW1C: only the written ones clear
        }
        let start = (offset - base) as usize;
        v[start..start + data.len()].copy_from_slice(data);
        self.abar_write32(base, u32::from_le_bytes(v));
    }
}

impl PciFunction for Ich9Ahci {
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn reset(&mut self) {
        self.config.reset();
        self.ghc = HOST_CTL_AHCI_EN;
        self.irq_stat = 0;
        self.idp_index = 0;
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        match (bar, offset) {
            (ABAR, o) if o < ABAR_SIZE => self.abar_read(o, data),
            (IDP_BAR, IDP_INDEX) => {
                data.copy_from_slice(&self.idp_index.to_le_bytes()[..data.len().min(4)])
            }
            (IDP_BAR, IDP_DATA) => {
                let idx = u64::from(self.idp_index) % ABAR_SIZE;
                self.abar_read(idx, data)
            }
            (IDP_BAR, _) => data.fill(0),
            _ => data.fill(0xff),
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        match (bar, offset) {
            (ABAR, o) if o < ABAR_SIZE => self.abar_write(o, data),
            (IDP_BAR, IDP_INDEX) if data.len() == 4 => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                self.idp_index = u32::from_le_bytes(b) & !3;
            }
            (IDP_BAR, IDP_DATA) => {
                let idx = u64::from(self.idp_index) % ABAR_SIZE;
                self.abar_write(idx, data)
            }
            _ => {}
        }
    }
}

/// The ICH9 AHCI controller kind.
pub static KIND: Constructor = Constructor {
    names: &["ich9-ahci"],
    build: |ctx| Ok(shared(Ich9Ahci::new(ctx.function)?)),
};
