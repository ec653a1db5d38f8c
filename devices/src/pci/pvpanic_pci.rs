//! `pvpanic-pci` (1b36:0011): the pvpanic register behind memory BAR 0 (QEMU's region is 2
//! bytes; the BAR has the 16-byte minimum of a memory BAR, the rest reads as zero).

use super::config::{BarDef, PciConfig};
use super::device::PciFunction;
use super::kind::{shared, Constructor, FunctionContext};
use super::PciError;
use crate::bus::BusDevice;
use crate::legacy::pvpanic::{PvPanic, PVPANIC_EVENTS};
use crate::lifecycle::Lifecycle;
use machine::PciFunctionPlan;

/// The register's size in QEMU.
const PVPANIC_PCI_LEN: u64 = 2;

pub static KIND: Constructor = Constructor {
    names: &["pvpanic-pci"],
    build: |ctx: &FunctionContext| {
        Ok(shared(PvPanicPci::new(
            ctx.function,
            ctx.lifecycle.clone(),
        )?))
    },
};

pub struct PvPanicPci {
    config: PciConfig,
    panic: PvPanic,
}

impl PvPanicPci {
    pub fn new(f: &PciFunctionPlan, lifecycle: Lifecycle) -> Result<Self, PciError> {
        let mut c = PciConfig::new(&f.identity, f.multifunction, false);
        c.register_bar(0, BarDef::mem32(16))?;
        c.commit_reset_state();
        let events = f.properties.u8("events", PVPANIC_EVENTS)?;
        Ok(Self {
            config: c,
            panic: PvPanic::new(events, lifecycle),
        })
    }
}

impl PciFunction for PvPanicPci {
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar == 0 && offset < PVPANIC_PCI_LEN {
            self.panic.read(0, 0, data);
        } else {
            data.fill(0);
        }
    }
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar == 0 && offset < PVPANIC_PCI_LEN {
            self.panic.write(0, 0, data);
        }
    }
}
