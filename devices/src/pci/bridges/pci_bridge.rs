//! Bridges to a conventional PCI bus with a Standard Hot-Plug Controller:
//!
//! * `pci-bridge` 1b36:0001 (pci_bridge_dev.c): SHPC 0x40, slot-ID 0x48 (`chassis_nr`,
//!   mandatory and nonzero), MSI 0x4c (1 vector, 64-bit, maskable), BAR0 64-bit 256 B.
//!   With `shpc=off` only slot-ID at 0x40: no BAR, no pin, no MSI.
//! * `pcie-pci-bridge` 1b36:000e (pcie_pci_bridge.c): SHPC 0x40, PCIe 0x48 (type 7), PM
//!   0x84, MSI 0x8c, AER 0x100, BAR0 64-bit 256 B.

use crate::pci::bridge::{Model, PciBridge};
use crate::pci::caps::pcie::{PcieCap, PortType};
use crate::pci::caps::shpc::{self, Shpc};
use crate::pci::caps::{aer, pcie, pm, slotid};
use crate::pci::config::BarDef;
use crate::pci::kind::{shared, Constructor};
use crate::pci::msi::MsiCap;
use crate::pci::PciError;
use machine::PciFunctionPlan;

const SHPC: usize = 0x40;
const AER: usize = 0x100;

/// `pci-bridge` and `pci-bridge-seat`.
pub fn pci_bridge(f: &PciFunctionPlan) -> Result<PciBridge, PciError> {
    let p = &f.properties;
    let chassis = p.u8("chassis_nr", 0)?;
    if chassis == 0 {
        // slotid_cap_init: "Bridge chassis not specified. Each bridge is required to be
        // assigned a unique chassis id > 0."
        return Err(PciError::InvalidProperty {
            name: "chassis_nr".into(),
            value: "0".into(),
        });
    }
    let with_shpc = p.bool("shpc", true)?;
    // MSI is not applicable without SHPC.
    let with_msi = with_shpc && p.bool("msi", true)?;
    let mut b = PciBridge::new(Model::PciBridge, &f.identity, f.multifunction, false);
    let cfg = b.config_mut_ref();
    let mut next = SHPC;
    let mut shpc_dev = None;
    if with_shpc {
        cfg.set_interrupt_pin(1);
        shpc_dev = Some(Shpc::new(cfg, next)?);
        next += shpc::CAP_SIZE;
    }
    let sid = slotid::add(cfg, next, 0, chassis)?;
    next += slotid::SIZE;
    let msi = if with_msi {
        Some(MsiCap::init(cfg, next, 1, true, true)?)
    } else {
        None
    };
    if with_shpc {
        cfg.register_bar(0, BarDef::mem64(shpc::BAR_SIZE))?;
    }
    b.set_slotid(sid);
    if let Some(s) = shpc_dev {
        b.set_shpc(s);
    }
    if let Some(m) = msi {
        b.set_msi(m);
    }
    Ok(b.finish())
}

/// `pcie-pci-bridge`.
pub fn pcie_to_pci(f: &PciFunctionPlan) -> Result<PciBridge, PciError> {
    let p = &f.properties;
    let with_msi = p.bool("msi", true)?;
    // aer_log_max is a PCIEPort property; the pcie-pci-bridge is no port, so its log stays
    // empty and pcie_aer_init offers no multiple-header recording (AER CAP 0xa0).
    let aer_cfg = aer::AerConfig {
        log_max: 0,
        unc_mask: p.bool("x-pcie-err-unc-mask", true)?,
    };
    let mut b = PciBridge::new(Model::PcieToPci, &f.identity, f.multifunction, true);
    let cfg = b.config_mut_ref();
    cfg.set_interrupt_pin(1);
    let shpc_dev = Shpc::new(cfg, SHPC)?;
    let exp_at = SHPC + shpc::CAP_SIZE;
    let exp = PcieCap::init(cfg, exp_at, PortType::PcieToPciBridge, 0)?;
    let pm_at = exp_at + pcie::SIZE_V2;
    pm::add(cfg, pm_at, pm::PmConfig::BASIC)?;
    exp.arifwd_init(cfg);
    exp.deverr_init(cfg);
    aer::add(cfg, AER, aer_cfg)?;
    let msi = if with_msi {
        Some(MsiCap::init(cfg, pm_at + pm::SIZE, 1, true, true)?)
    } else {
        None
    };
    cfg.register_bar(0, BarDef::mem64(shpc::BAR_SIZE))?;
    b.set_shpc(shpc_dev);
    b.set_exp(exp);
    b.set_aer(AER);
    if let Some(m) = msi {
        b.set_msi(m);
    }
    Ok(b.finish())
}

/// The standard SHPC bridge (and its seat variant).
pub static PCI_BRIDGE_KIND: Constructor = Constructor {
    names: &["pci-bridge", "pci-bridge-seat"],
    build: |ctx| Ok(shared(pci_bridge(ctx.function)?)),
};

/// The PCIe-to-PCI bridge.
pub static PCIE_TO_PCI_KIND: Constructor = Constructor {
    names: &["pcie-pci-bridge"],
    build: |ctx| Ok(shared(pcie_to_pci(ctx.function)?)),
};
