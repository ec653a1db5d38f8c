//! i440FX host bridge (00:00.0, 8086:1237 rev 2): PAM at 0x59-0x5f, SMRAM at 0x72 (0x02), and
//! the coreboot RAM-size byte at 0x57. Command and status read 0 as in QEMU (its
//! i440fx-test marks the data-sheet values 0x0006/0x0280 as BROKEN).

use crate::pci::config::PciConfig;
use crate::pci::device::PciFunction;
use crate::pci::kind::{shared, Constructor};
use machine::{PciFunctionPlan, Plan};

pub const PAM0: usize = 0x59;
pub const SMRAM: usize = 0x72;
const COREBOOT_RAM_SIZE: usize = 0x57;

pub struct I440fx {
    config: PciConfig,
}

impl I440fx {
    pub fn new(f: &PciFunctionPlan, plan: &Plan) -> Self {
        let mut config = PciConfig::new(&f.identity, f.multifunction, false);
        config.set_u8(SMRAM, 0x02);
        let ram = (plan.memory.ram_below_4g + plan.memory.ram_above_4g) / 8 / 1024 / 1024;
        config.set_u8(COREBOOT_RAM_SIZE, ram.min(255) as u8);
        config.commit_reset_state();
        Self { config }
    }
}

impl PciFunction for I440fx {
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }
}

/// The pc host bridge kind.
pub static KIND: Constructor = Constructor {
    names: &["i440FX"],
    build: |ctx| Ok(shared(I440fx::new(ctx.function, ctx.plan))),
};
