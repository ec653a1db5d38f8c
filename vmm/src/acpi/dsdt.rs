//! The DSDT: PCI0 (`_CRS`, `_PRT`, `_OSC`), the ISA bridge and its devices, the interrupt
//! link devices, the ECAM reservation and the sleep states.

use super::*;

/// The root bus's `_PRT` entries as QEMU's chipsets wire them: the slot/pin -> PIRQ map of
/// the chipset, then PIRQ -> GSI (q35 in APIC mode: GSI 16 + PIRQ; pc: the IRQ firmware
/// routed the PIRQ to, except slot 1 INTA, PIIX4 PM's pin, which QEMU's DSDT wires to the
/// SCI, `sci`, through LNKS).
pub fn root_prt(family: Family, pirq_irqs: &[u8], sci: u32) -> Vec<(u8, u8, u32)> {
    use devices::pci::interrupt::{ich9_map_irq, piix_map_irq};
    let mut prt = Vec::new();
    for slot in 0..32u8 {
        for pin in 0..4u8 {
            let gsi = match family {
                Family::Q35 => 16 + u32::from(ich9_map_irq(slot, pin)),
                Family::I440fx if slot == 1 && pin == 0 => sci,
                Family::I440fx => {
                    let pirq = usize::from(piix_map_irq(slot, pin));
                    match pirq_irqs.get(pirq) {
                        Some(&irq) => u32::from(irq),
                        None => continue,
                    }
                }
                Family::None => continue,
            };
            prt.push((slot, pin, gsi));
        }
    }
    prt
}

/// SLP_TYP of S4 on QEMU's PM blocks (`s4_val`); `devices::chipset::acpi_pm` powers the
/// machine off for it, as QEMU does. S3 (suspend to RAM) is not offered: machina cannot
/// resume a suspended guest.
pub(super) const S4_SLP_TYP: u8 = 2;

/// The ISA and system devices of the DSDT in `scope`, each kind's fragment (`KBD_`/`MOU_`,
/// `COMn`, `RTC_` in the ISA bridge; `FWCF` in PCI0) in QEMU's DSDT order, which is also the
/// order Linux numbers PnP devices in (00:00, 00:01, ...).
pub(super) fn isa_aml(isa: &[machine::IsaDevicePlan], scope: AmlScope) -> Vec<u8> {
    let mut described: Vec<(&machine::IsaDevicePlan, &dyn IsaKind)> = isa
        .iter()
        .filter_map(|d| Some((d, devices::kinds::isa_kind(&d.type_name)?)))
        .filter(|(_, kind)| kind.aml_scope() == scope)
        .collect();
    described.sort_by_key(|(_, kind)| kind.aml_order());
    let mut out = Vec::new();
    // How many of each kind came before (COM port numbering).
    let mut seen: std::collections::BTreeMap<&str, usize> = Default::default();
    for (dev, kind) in described {
        let count = seen
            .entry(kind.names().first().copied().unwrap_or(""))
            .or_default();
        let n = *count;
        *count += 1;
        out.extend(kind.aml(dev, n));
    }
    out
}

/// A PCI interrupt link device (PNP0C0F) fixed to one interrupt: `_PRS` and `_CRS` both name
/// it, so `_SRS` (no-op) can only set what already is. machina routes INTx once, at build
/// (the firmware step), and does not re-route when a guest rewrites the PIRQ registers.
pub(super) fn link_device(name: &str, uid: u32, irq: u32) -> Vec<u8> {
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0F"));
    let uid = aml::Name::new("_UID".into(), &uid);
    // Present, enabled, functioning.
    let sta = aml::Name::new("_STA".into(), &0x0bu8);
    let level_high_shared = aml::Interrupt::new(true, false, false, true, irq);
    let prs_t = aml::ResourceTemplate::new(vec![&level_high_shared]);
    let prs = aml::Name::new("_PRS".into(), &prs_t);
    let crs_t = aml::ResourceTemplate::new(vec![&level_high_shared]);
    let crs = aml::Name::new("_CRS".into(), &crs_t);
    let srs = aml::Method::new("_SRS".into(), 1, false, vec![]);
    bytes_of(&aml::Device::new(
        name.into(),
        vec![&hid, &uid, &sta, &prs, &crs, &srs],
    ))
}

/// The `_PRT` source of a root-bus entry and the link devices: q35's GSIA-GSIH (GSI 16-23,
/// as QEMU's APIC-mode _PRT), pc's LNKA-LNKD (the IRQ each PIRQ was routed to) and LNKS
/// (the SCI, PIIX4 PM's INTA).
pub(super) fn prt_link(family: Family, slot: u8, pin: u8, gsi: u32) -> Option<String> {
    match family {
        Family::Q35 if (16..24).contains(&gsi) => {
            Some(format!("GSI{}", char::from(b'A' + (gsi - 16) as u8)))
        }
        Family::I440fx if slot == 1 && pin == 0 => Some("LNKS".into()),
        Family::I440fx => {
            let pirq = devices::pci::interrupt::piix_map_irq(slot, pin);
            Some(format!("LNK{}", char::from(b'A' + pirq)))
        }
        _ => None,
    }
}

pub(super) fn link_devices(cfg: &AcpiConfig) -> Vec<u8> {
    let mut links: std::collections::BTreeMap<String, u32> = Default::default();
    for &(slot, pin, gsi) in &cfg.prt {
        if let Some(name) = prt_link(cfg.family, slot, pin, gsi) {
            links.entry(name).or_insert(gsi);
        }
    }
    let mut out = Vec::new();
    for (uid, (name, irq)) in links.iter().enumerate() {
        out.extend(link_device(name, uid as u32, *irq));
    }
    out
}

/// q35's `_OSC` for PCI0 (QEMU's build_q35_osc_method): grant the OS SHPC, PME, AER and
/// PCIe capability control, and native PCIe hot-plug where ACPI PCI hot-plug does not own
/// the ports (q35 < 6.1), so Linux's pciehp takes the slots there and acpiphp elsewhere,
/// as under QEMU.
pub(super) fn q35_osc(native_hotplug: bool) -> Vec<u8> {
    const PCI_HOST_BRIDGE_UUID: &str = "33db4d5b-1ff7-401c-9657-7441c03dd766";
    // SHPC (bit 1), PME (2), AER (3), PCIe capability (4), and native PCIe hot-plug (0)
    // unless ACPI PCI hot-plug owns the ports (QEMU's build_q35_osc_method: 0x1f / 0x1e).
    let granted: u32 = if native_hotplug { 0x1f } else { 0x1e };
    let cdw1 = aml::Path::new("CDW1");
    let cdw3 = aml::Path::new("CDW3");
    let local0 = aml::Local(0);
    let uuid = aml::Uuid::new(PCI_HOST_BRIDGE_UUID);
    let create1 = aml::CreateDWordField::new(&cdw1, &aml::Arg(3), &aml::ZERO);
    let cdw2 = aml::Path::new("CDW2");
    let create2 = aml::CreateDWordField::new(&cdw2, &aml::Arg(3), &4u8);
    let create3 = aml::CreateDWordField::new(&cdw3, &aml::Arg(3), &8u8);
    let load = aml::Store::new(&local0, &cdw3);
    let mask = aml::And::new(&local0, &local0, &granted);
    let bad_revision = aml::NotEqual::new(&aml::Arg(1), &aml::ONE);
    let flag_revision = aml::Or::new(&cdw1, &cdw1, &0x08u8);
    let if_revision = aml::If::new(&bad_revision, vec![&flag_revision]);
    let masked = aml::NotEqual::new(&cdw3, &local0);
    let flag_masked = aml::Or::new(&cdw1, &cdw1, &0x10u8);
    let if_masked = aml::If::new(&masked, vec![&flag_masked]);
    let store = aml::Store::new(&cdw3, &local0);
    let is_pci = aml::Equal::new(&aml::Arg(0), &uuid);
    let if_pci = aml::If::new(
        &is_pci,
        vec![
            &create2,
            &create3,
            &load,
            &mask,
            &if_revision,
            &if_masked,
            &store,
        ],
    );
    let flag_uuid = aml::Or::new(&cdw1, &cdw1, &0x04u8);
    let else_unknown = aml::Else::new(vec![&flag_uuid]);
    let ret = aml::Return::new(&aml::Arg(3));
    bytes_of(&aml::Method::new(
        "_OSC".into(),
        4,
        false,
        vec![&create1, &if_pci, &else_unknown, &ret],
    ))
}

/// PCI0's `_CRS`: the bus range, the config ports, I/O around them, VGA memory and the holes.
pub(super) fn pci0_crs(cfg: &AcpiConfig) -> Vec<u8> {
    let hole32_end = cfg.pci_hole32.end().saturating_sub(1) as u32;
    // The whole bus range, as QEMU declares it (Linux numbers buses within it).
    let bus_range = aml::AddressSpace::new_bus_number(0u16, 0xffu16);
    let ports = cfg.config_ports;
    let cfg_io = aml::IO::new(ports.base as u16, ports.base as u16, 1, ports.size as u8);
    let io_low = aml::AddressSpace::new_io(0x0000u16, ports.base.saturating_sub(1) as u16, None);
    let io_high = aml::AddressSpace::new_io(ports.end() as u16, 0xffff, None);
    let vga_mem = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::Cacheable,
        true,
        0x000a_0000u32,
        0x000b_ffff,
        None,
    );
    let mem32 = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        cfg.pci_hole32.base as u32,
        hole32_end,
        None,
    );
    let mem64 = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::Cacheable,
        true,
        cfg.pci_hole64.base,
        cfg.pci_hole64.end().saturating_sub(1),
        None,
    );
    let mut resources: Vec<&dyn Aml> = vec![&bus_range, &cfg_io, &io_low, &io_high, &vga_mem];
    if cfg.pci_hole32.size > 0 {
        resources.push(&mem32);
    }
    if cfg.pci_hole64.size > 0 {
        resources.push(&mem64);
    }
    let crs = aml::ResourceTemplate::new(resources);
    bytes_of(&aml::Name::new("_CRS".into(), &crs))
}

/// PCI0's `_PRT` (nothing without entries); the sources are the interrupt link devices, as
/// in QEMU's _PRT (see prt_link).
pub(super) fn pci0_prt(cfg: &AcpiConfig) -> Vec<u8> {
    if cfg.prt.is_empty() {
        return Vec::new();
    }
    let prt_addrs: Vec<u32> = cfg
        .prt
        .iter()
        .map(|&(slot, _, _)| (u32::from(slot) << 16) | 0xffff)
        .collect();
    let prt_sources: Vec<Option<aml::Path>> = cfg
        .prt
        .iter()
        .map(|&(slot, pin, gsi)| prt_link(cfg.family, slot, pin, gsi).map(|n| aml::Path::new(&n)))
        .collect();
    let prt_rows: Vec<aml::Package> = cfg
        .prt
        .iter()
        .zip(&prt_addrs)
        .zip(&prt_sources)
        .map(|(((_, pin, gsi), addr), source)| match source {
            Some(link) => aml::Package::new(vec![addr as &dyn Aml, pin, link, &aml::ZERO]),
            None => aml::Package::new(vec![addr as &dyn Aml, pin, &aml::ZERO, gsi]),
        })
        .collect();
    let prt_pkg = aml::Package::new(prt_rows.iter().map(|p| p as &dyn Aml).collect());
    bytes_of(&aml::Name::new("_PRT".into(), &prt_pkg))
}

/// The ISA devices in the ISA bridge's scope (QEMU: PCI0.SF8 on q35, PCI0.S08 on pc);
/// nothing without devices.
pub(super) fn isa_bridge_aml(cfg: &AcpiConfig) -> Vec<u8> {
    let isa_devices = isa_aml(&cfg.isa, AmlScope::IsaBridge);
    let Some(devfn) = cfg.isa_bridge.filter(|_| !isa_devices.is_empty()) else {
        return Vec::new();
    };
    let adr = (u32::from(devfn >> 3) << 16) | u32::from(devfn & 7);
    let name = format!("S{devfn:02X}_");
    let adr = aml::Name::new("_ADR".into(), &adr);
    let isa_raw = RawAml(isa_devices);
    bytes_of(&aml::Device::new(
        name.as_str().into(),
        vec![&adr, &isa_raw],
    ))
}

/// The PCI root bridge `PCI0` with its resources, routing and children.
pub(super) fn pci0(cfg: &AcpiConfig) -> Vec<u8> {
    let (hid, cid) = match cfg.family {
        Family::Q35 => ("PNP0A08", Some("PNP0A03")),
        _ => ("PNP0A03", None),
    };
    let hid_name = aml::Name::new("_HID".into(), &aml::EISAName::new(hid));
    let cid_eisa = aml::EISAName::new(cid.unwrap_or("PNP0A03"));
    let cid_name = aml::Name::new("_CID".into(), &cid_eisa);
    let adr = aml::Name::new("_ADR".into(), &aml::ZERO);
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let seg = aml::Name::new("_SEG".into(), &aml::ZERO);
    let bbn = aml::Name::new("_BBN".into(), &aml::ZERO);
    let crs = RawAml(pci0_crs(cfg));
    let mut children: Vec<&dyn Aml> = vec![&hid_name];
    if cid.is_some() {
        children.push(&cid_name);
    }
    children.extend([&adr as &dyn Aml, &uid, &seg, &bbn, &crs]);
    let prt = RawAml(pci0_prt(cfg));
    let osc = RawAml(if cfg.family == Family::Q35 {
        q35_osc(cfg.native_pcie_hotplug)
    } else {
        Vec::new()
    });
    let hp = cfg.pci_hotplug.as_ref();
    let mut bridges = bridge_aml(&cfg.bridges, "\\_SB_.PCI0", hp);
    if let Some(hp) = hp {
        bridges.extend(pcihp_registers(hp));
        bridges.extend(pcihp_resources(hp));
        bridges.extend(bus_hotplug_aml(hp, &hp.root, "\\_SB_.PCI0", &cfg.bridges));
    }
    let bridges = RawAml(bridges);
    let isa = RawAml(isa_bridge_aml(cfg));
    let system = RawAml(isa_aml(&cfg.isa, AmlScope::PciRoot));
    children.extend([&prt as &dyn Aml, &osc, &bridges, &isa, &system]);
    bytes_of(&aml::Device::new("PCI0".into(), children))
}

/// The ECAM window as a motherboard resource (`DRAC`), or Linux refuses to use it.
pub(super) fn ecam_reservation(cfg: &AcpiConfig) -> Vec<u8> {
    let Some(r) = cfg.ecam else {
        return Vec::new();
    };
    let ecam_mem = aml::Memory32Fixed::new(false, r.base as u32, r.size as u32);
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C01"));
    let uid = aml::Name::new("_UID".into(), &aml::ONE);
    let template = aml::ResourceTemplate::new(vec![&ecam_mem as &dyn Aml]);
    let crs = aml::Name::new("_CRS".into(), &template);
    bytes_of(&aml::Device::new("DRAC".into(), vec![&hid, &uid, &crs]))
}

pub(super) fn dsdt(cfg: &AcpiConfig) -> Vec<u8> {
    let pci0 = RawAml(pci0(cfg));
    let drac = RawAml(ecam_reservation(cfg));
    let links = RawAml(link_devices(cfg));
    let cpus = RawAml(match cfg.cpu_hotplug {
        Some(base) => crate::acpi_cpus::sb_objects(&crate::acpi_cpus::CpuHotplugAml {
            base,
            madt_entries: (0..cfg.max_cpus.max(cfg.cpus))
                .map(|cpu| madt_cpu(cfg, cpu, true))
                .collect(),
        }),
        None => Vec::new(),
    });
    let sb = aml::Scope::new("_SB_".into(), vec![&pci0, &drac, &links, &cpus]);

    // SLP_TYP 0 is S5 (soft off) on QEMU's ACPI PM blocks; S4 as QEMU's s4_val.
    let s4_pkg = aml::Package::new(vec![&S4_SLP_TYP, &aml::ZERO, &aml::ZERO, &aml::ZERO]);
    let s4 = aml::Name::new("_S4_".into(), &s4_pkg);
    let s5_pkg = aml::Package::new(vec![&aml::ZERO, &aml::ZERO, &aml::ZERO, &aml::ZERO]);
    let s5 = aml::Name::new("_S5_".into(), &s5_pkg);

    let mut body = bytes_of(&sb);
    if cfg.pci_hotplug.is_some() {
        body.extend(pcihp_gpe());
    }
    if cfg.cpu_hotplug.is_some() {
        body.extend(crate::acpi_cpus::gpe_method());
    }
    if cfg.family != Family::None {
        body.extend(bytes_of(&s4));
    }
    body.extend(bytes_of(&s5));
    sdt(b"DSDT", 1, &body)
}
