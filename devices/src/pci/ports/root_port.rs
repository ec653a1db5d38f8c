//! Root ports: the generic `pcie-root-port` (gen_pcie_root_port.c) and Intel's `ioh3420`,
//! both built by QEMU's rp_realize:
//!
//! | device         | SSVID       | interrupts             | PCIe (type 4) | AER   | ACS   |
//! |----------------|-------------|------------------------|---------------|-------|-------|
//! | pcie-root-port | 0x40 1b36:0 | MSI-X 0x48, 1 vector   | 0x54          | 0x100 | 0x148 |
//! | ioh3420        | 0x40 8086:0 | MSI 0x60, 2 vec, mask  | 0x90          | 0x100 | -     |
//!
//! The generic port links at 16 GT/s x32 by default; ioh3420 at 2.5 GT/s x1.

use super::{link, PortProps};
use crate::pci::bridge::{Model, PciBridge};
use crate::pci::caps::pcie::{LinkSpeed, PcieCap, PortType};
use crate::pci::caps::reserve::{self, Reserve};
use crate::pci::caps::{acs, aer, ssvid};
use crate::pci::kind::{shared, Constructor};
use crate::pci::msi::MsiCap;
use crate::pci::regs::*;
use crate::pci::PciError;
use machine::PciFunctionPlan;

const SSVID: usize = 0x40;
const GEN_MSIX: usize = 0x48;
const GEN_EXP: usize = 0x54;
/// First free dword after the PCIe capability, where pci_add_capability(.., 0, ..) puts the
/// resource-reserve capability.
const GEN_RESERVE: usize = 0x90;
const AER: usize = 0x100;
const GEN_ACS: usize = AER + aer::SIZE;
const IOH_MSI: usize = 0x60;
const IOH_EXP: usize = 0x90;

/// Common rp_realize part: header, interrupt pin, SSVID.
fn base(f: &PciFunctionPlan, model: Model) -> Result<(PciBridge, PortProps), PciError> {
    let props = PortProps::read(&f.properties)?;
    let mut b = PciBridge::new(model, &f.identity, f.multifunction, true);
    if !props.slt_writable {
        b.set_secondary_latency_ro();
    }
    let cfg = b.config_mut_ref();
    cfg.set_interrupt_pin(1);
    ssvid::add(cfg, SSVID, f.identity.vendor_id, 0)?;
    Ok((b, props))
}

/// The PCIe capability with slot and root registers, AER with root registers.
fn express(
    b: &mut PciBridge,
    props: &PortProps,
    exp_offset: usize,
    speed: LinkSpeed,
    width: u8,
) -> Result<(), PciError> {
    let cfg = b.config_mut_ref();
    let mut exp = PcieCap::init(cfg, exp_offset, PortType::RootPort, props.port)?;
    exp.fill_slot_link(cfg, speed, width);
    exp.arifwd_init(cfg);
    exp.deverr_init(cfg);
    exp.slot_init(cfg, props.slot);
    exp.root_init(cfg);
    aer::add(cfg, AER, props.aer)?;
    aer::root_init(cfg, AER);
    // AER on a port makes SERR forwarding writable (pcie_aer_init).
    let wm = u16::from(cfg.wmask_u8(BRIDGE_CONTROL)) | BRIDGE_CTL_SERR;
    cfg.set_wmask_u8(BRIDGE_CONTROL, wm as u8);
    b.set_exp(exp);
    b.set_aer(AER);
    Ok(())
}

/// `pcie-root-port` 1b36:000c.
pub fn generic(f: &PciFunctionPlan) -> Result<PciBridge, PciError> {
    let p = &f.properties;
    let (mut b, props) = base(f, Model::RootPort)?;
    b.add_msix_exclusive_bar(GEN_MSIX, 1)?;
    let (speed, width) = link(p, "16", "32")?;
    express(&mut b, &props, GEN_EXP, speed, width)?;
    if !p.bool("disable-acs", false)? {
        acs::add(b.config_mut_ref(), GEN_ACS, true)?;
        b.set_acs(GEN_ACS);
    }
    let unset = |v: u64| (v != u64::MAX).then_some(v);
    let mut r = Reserve {
        bus: unset(p.u64("bus-reserve", u64::MAX)?)
            .filter(|&v| v != u64::from(u32::MAX))
            .map(|v| v as u32),
        io: unset(p.u64("io-reserve", u64::MAX)?),
        mem: unset(p.u64("mem-reserve", u64::MAX)?),
        pref32: unset(p.u64("pref32-reserve", u64::MAX)?),
        pref64: unset(p.u64("pref64-reserve", u64::MAX)?),
    };
    // pc-q35-6.1 compat: ports hiding native hot-plug reserve 4 KiB of I/O.
    if p.bool("x-do-not-expose-native-hotplug-cap", false)?
        && r.io.is_none()
        && p.bool("hotplug", true)?
    {
        r.io = Some(0x1000);
    }
    r.validate().map_err(|e| PciError::InvalidProperty {
        name: "*-reserve".into(),
        value: e.into(),
    })?;
    let cfg = b.config_mut_ref();
    if r.any() {
        reserve::add(cfg, GEN_RESERVE, &r)?;
    }
    // An explicit io-reserve=0 means no I/O window at all.
    if r.io == Some(0) {
        let cmd = u16::from(cfg.wmask_u8(COMMAND)) & !COMMAND_IO;
        cfg.set_wmask_u8(COMMAND, cmd as u8);
        cfg.set_wmask_u8(IO_BASE, 0);
        cfg.set_wmask_u8(IO_LIMIT, 0);
    }
    Ok(b.finish())
}

/// `ioh3420` 8086:3420 rev 2.
pub fn ioh3420(f: &PciFunctionPlan) -> Result<PciBridge, PciError> {
    let (mut b, props) = base(f, Model::Ioh3420)?;
    let msi = MsiCap::init(b.config_mut_ref(), IOH_MSI, 2, false, true)?;
    b.set_msi(msi);
    express(&mut b, &props, IOH_EXP, LinkSpeed::GT2_5, 1)?;
    Ok(b.finish())
}

/// The generic PCI Express root port.
pub static GENERIC_KIND: Constructor = Constructor {
    names: &["pcie-root-port"],
    build: |ctx| Ok(shared(generic(ctx.function)?)),
};

/// Intel's IOH 3420 root port.
pub static IOH3420_KIND: Constructor = Constructor {
    names: &["ioh3420"],
    build: |ctx| Ok(shared(ioh3420(ctx.function)?)),
};
