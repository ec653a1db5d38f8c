//! The TI XIO3130 PCIe switch halves: `x3130-upstream` (104c:8232 rev 2) and
//! `xio3130-downstream` (104c:8233 rev 1). Both: MSI 0x70 (1 vector, 64-bit), SSVID 0x80
//! (0:0), PCIe 0x90 with FLR, AER 0x100. The downstream port adds a slot and ARI
//! forwarding. Neither drives an INTx pin.

use super::PortProps;
use crate::pci::bridge::{Model, PciBridge};
use crate::pci::caps::pcie::{LinkSpeed, PcieCap, PortType};
use crate::pci::caps::{aer, ssvid};
use crate::pci::kind::{shared, Constructor};
use crate::pci::msi::MsiCap;
use crate::pci::regs::*;
use crate::pci::PciError;
use machine::PciFunctionPlan;

const MSI: usize = 0x70;
const SSVID: usize = 0x80;
const EXP: usize = 0x90;
const AER: usize = 0x100;

fn build(f: &PciFunctionPlan, model: Model, port_type: PortType) -> Result<PciBridge, PciError> {
    let props = PortProps::read(&f.properties)?;
    let mut b = PciBridge::new(model, &f.identity, f.multifunction, true);
    if !props.slt_writable {
        b.set_secondary_latency_ro();
    }
    let cfg = b.config_mut_ref();
    let msi = MsiCap::init(cfg, MSI, 1, true, false)?;
    ssvid::add(cfg, SSVID, 0, 0)?;
    let mut exp = PcieCap::init(cfg, EXP, port_type, props.port)?;
    exp.flr_init(cfg);
    exp.deverr_init(cfg);
    if port_type == PortType::Downstream {
        // The downstream port is a PCIESlot without x-speed/x-width (and no defaults for
        // them, unlike rp_instance_post_init's x1 2.5 GT/s for root ports), so
        // pcie_cap_fill_slot_lnk writes width 0 and speed 0: LNKCAP 0x00000400 (QEMU 7.2 and
        // 10.2 alike; hw/pci-bridge/xio3130_downstream.c, hw/pci/pcie.c).
        exp.fill_slot_link(cfg, LinkSpeed(0), 0);
        exp.slot_init(cfg, props.slot);
        exp.arifwd_init(cfg);
    }
    aer::add(cfg, AER, props.aer)?;
    let wm = u16::from(cfg.wmask_u8(BRIDGE_CONTROL)) | BRIDGE_CTL_SERR;
    cfg.set_wmask_u8(BRIDGE_CONTROL, wm as u8);
    b.set_msi(msi);
    b.set_exp(exp);
    b.set_aer(AER);
    Ok(b.finish())
}

pub fn upstream(f: &PciFunctionPlan) -> Result<PciBridge, PciError> {
    build(f, Model::SwitchUpstream, PortType::Upstream)
}

pub fn downstream(f: &PciFunctionPlan) -> Result<PciBridge, PciError> {
    build(f, Model::SwitchDownstream, PortType::Downstream)
}

/// The switch's upstream port.
pub static UPSTREAM_KIND: Constructor = Constructor {
    names: &["x3130-upstream"],
    build: |ctx| Ok(shared(upstream(ctx.function)?)),
};

/// A switch downstream port.
pub static DOWNSTREAM_KIND: Constructor = Constructor {
    names: &["xio3130-downstream"],
    build: |ctx| Ok(shared(downstream(ctx.function)?)),
};
