//! `i82801b11-bridge` (ICH9 DMI-to-PCI, 8086:244e rev 0x92, class 060401 subtractive):
//! a conventional bridge whose only capability is SSVID 0:0 at 0x50. Like QEMU it decodes
//! positively through its windows; the subtractive prog-if is cosmetic.

use crate::pci::bridge::{Model, PciBridge};
use crate::pci::caps::ssvid;
use crate::pci::kind::{shared, Constructor};
use crate::pci::regs::CLASS_PROG;
use crate::pci::PciError;
use machine::PciFunctionPlan;

const SSVID: usize = 0x50;
/// PCI_CLASS_BRIDGE_PCI_INF_SUB.
const PROG_IF_SUBTRACTIVE: u8 = 0x01;

pub fn i82801b11(f: &PciFunctionPlan) -> Result<PciBridge, PciError> {
    let mut b = PciBridge::new(Model::Dmi, &f.identity, f.multifunction, false);
    let cfg = b.config_mut_ref();
    ssvid::add(cfg, SSVID, 0, 0)?;
    cfg.set_u8(CLASS_PROG, PROG_IF_SUBTRACTIVE);
    Ok(b.finish())
}

/// The DMI-to-PCI bridge.
pub static KIND: Constructor = Constructor {
    names: &["i82801b11-bridge"],
    build: |ctx| Ok(shared(i82801b11(ctx.function)?)),
};
