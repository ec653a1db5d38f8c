//! ACPI PCI hot-plug in the DSDT (QEMU 7.2's hw/acpi/pcihp.c layout): the register block,
//! per hot-plug bus its BSEL and slot devices, and the bridge tree they hang from.

use super::*;

/// ACPI PCI hot-plug as QEMU 7.2's DSDT describes it (hw/acpi/pcihp.c and
/// build_append_pci_bus_devices): the register block, per hot-plug bus its BSEL, a
/// `Device(Sxx)` with `_SUN` and `_EJ0` per slot open to hot-plug, `DVNT` and `PCNT`, and
/// the GPE handler `_E01`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciHotplugAml {
    /// Base of the register block (0xae00 PIIX4, 0x0cc0 ICH9).
    pub base: u16,
    /// The root bus's id.
    pub root: String,
    /// Hot-plug buses: id -> (BSEL, slots open to hot-plug).
    pub buses: BTreeMap<String, (u32, Vec<u8>)>,
}

impl PciHotplugAml {
    /// From the plan: the ACPI hot-plug buses in BSEL order; on each, the slots not taken
    /// by a function the machine type made or by a bridge (those are not hot-pluggable),
    /// only slot 0 behind a PCIe port.
    pub fn from_plan(plan: &machine::Plan, base: u16) -> Option<Self> {
        let root = plan.buses.iter().find(|b| b.is_root)?.id.clone();
        let buses: BTreeMap<String, (u32, Vec<u8>)> = plan
            .acpi_hotplug_buses()
            .into_iter()
            .enumerate()
            .map(|(bsel, id)| {
                let fixed: Vec<u8> = plan
                    .pci
                    .iter()
                    .filter(|f| f.bus == id && (f.implicit || f.provides_bus.is_some()))
                    .map(|f| f.slot)
                    .collect();
                let last = if plan.bus(&id).is_some_and(|b| b.port) {
                    0
                } else {
                    31
                };
                let slots = (0..=last).filter(|s| !fixed.contains(s)).collect();
                (id, (bsel as u32, slots))
            })
            .collect();
        (!buses.is_empty()).then_some(Self { base, root, buses })
    }

    /// Whether `bus` or a bus below it (per `children`) is a hot-plug bus.
    pub(super) fn reaches(&self, bus: &str, children: &[BridgeNode]) -> bool {
        self.buses.contains_key(bus) || children.iter().any(|c| self.reaches(&c.bus, &c.children))
    }
}

/// A bridge or port in the DSDT: its devfn on the parent bus, the bus it provides and
/// what sits behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeNode {
    pub devfn: u8,
    pub bus: String,
    pub children: Vec<BridgeNode>,
}

/// The bridge tree of `plan` below bus `bus_id`, in devfn order.
pub fn bridge_tree(plan: &machine::Plan, bus_id: &str) -> Vec<BridgeNode> {
    let mut nodes: Vec<BridgeNode> = plan
        .pci
        .iter()
        .filter(|f| f.bus == bus_id)
        .filter_map(|f| {
            let child = f.provides_bus.as_ref()?;
            Some(BridgeNode {
                devfn: f.devfn(),
                bus: child.clone(),
                children: bridge_tree(plan, child),
            })
        })
        .collect();
    nodes.sort_by_key(|n| n.devfn);
    nodes
}

/// `Device(Sxx) { Name(_ADR, slot << 16 | function) ... }` for each bridge, named by devfn
/// as QEMU's DSDT names them, with the bridges behind it nested inside and, for hot-plug
/// buses, the hot-plug objects; `parent` is the path of the device holding them.
pub(super) fn bridge_aml(
    nodes: &[BridgeNode],
    parent: &str,
    hp: Option<&PciHotplugAml>,
) -> Vec<u8> {
    let mut out = Vec::new();
    for node in nodes {
        let adr = (u32::from(node.devfn >> 3) << 16) | u32::from(node.devfn & 7);
        let adr_name = aml::Name::new("_ADR".into(), &adr);
        let name = format!("S{:02X}_", node.devfn);
        let path = format!("{parent}.{name}");
        let mut inner = bridge_aml(&node.children, &path, hp);
        if let Some(hp) = hp {
            inner.extend(bus_hotplug_aml(hp, &node.bus, &path, &node.children));
        }
        let raw = RawAml(inner);
        let dev = aml::Device::new(name.as_str().into(), vec![&adr_name, &raw]);
        out.extend(bytes_of(&dev));
    }
    out
}

/// The hot-plug objects of bus `bus` inside the device at `path` (PCI0 or a bridge): for a
/// hot-plug bus BSEL, a slot device per open slot, DVNT and a PCNT that reads the bus's
/// UP/DOWN bits; PCNT then calls the PCNT of bridges below that lead to hot-plug buses.
pub(super) fn bus_hotplug_aml(
    hp: &PciHotplugAml,
    bus: &str,
    path: &str,
    children: &[BridgeNode],
) -> Vec<u8> {
    if !hp.reaches(bus, children) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut pcnt_body: Vec<Vec<u8>> = Vec::new();
    if let Some((bsel, slots)) = hp.buses.get(bus) {
        out.extend(bytes_of(&aml::Name::new("BSEL".into(), bsel)));
        let bnum = aml::Path::new("\\_SB_.PCI0.BNUM");
        let bsel_path = aml::Path::new("BSEL");
        let sun_path = aml::Path::new("_SUN");
        let mut notifies: Vec<Vec<u8>> = Vec::new();
        for &slot in slots {
            let name = format!("S{:02X}_", slot << 3);
            let adr = u32::from(slot) << 16;
            let adr_name = aml::Name::new("_ADR".into(), &adr);
            let sun = aml::Name::new("_SUN".into(), &u32::from(slot));
            let call = aml::MethodCall::new(
                aml::Path::new("\\_SB_.PCI0.PCEJ"),
                vec![&bsel_path, &sun_path],
            );
            let ej0 = aml::Method::new("_EJ0".into(), 1, false, vec![&call]);
            out.extend(bytes_of(&aml::Device::new(
                name.as_str().into(),
                vec![&adr_name, &sun, &ej0],
            )));
            let mask = 1u32 << slot;
            let and = aml::And::new(&aml::ZERO, &aml::Arg(0), &mask);
            let target = aml::Path::new(&name);
            let notify = aml::Notify::new(&target, &aml::Arg(1));
            notifies.push(bytes_of(&aml::If::new(&and, vec![&notify])));
        }
        let raws: Vec<RawAml> = notifies.into_iter().map(RawAml).collect();
        let body: Vec<&dyn Aml> = raws.iter().map(|r| r as &dyn Aml).collect();
        out.extend(bytes_of(&aml::Method::new("DVNT".into(), 2, false, body)));
        let pciu = aml::Path::new("\\_SB_.PCI0.PCIU");
        let pcid = aml::Path::new("\\_SB_.PCI0.PCID");
        let dvnt = aml::Path::new("DVNT");
        pcnt_body.push(bytes_of(&aml::Store::new(&bnum, bsel)));
        pcnt_body.push(bytes_of(&aml::MethodCall::new(
            aml::Path::new("DVNT"),
            vec![&pciu, &aml::ONE],
        )));
        pcnt_body.push(bytes_of(&aml::MethodCall::new(dvnt, vec![&pcid, &3u8])));
    }
    for c in children {
        if hp.reaches(&c.bus, &c.children) {
            let child = aml::Path::new(&format!("{path}.S{:02X}_.PCNT", c.devfn));
            pcnt_body.push(bytes_of(&aml::MethodCall::new(child, vec![])));
        }
    }
    let raws: Vec<RawAml> = pcnt_body.into_iter().map(RawAml).collect();
    let body: Vec<&dyn Aml> = raws.iter().map(|r| r as &dyn Aml).collect();
    out.extend(bytes_of(&aml::Method::new("PCNT".into(), 0, false, body)));
    out
}

/// The register block's fields, the lock and PCEJ (in `\_SB.PCI0`), as QEMU names them.
pub(super) fn pcihp_registers(hp: &PciHotplugAml) -> Vec<u8> {
    use aml::{FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, OpRegionSpace};
    let base = u32::from(hp.base);
    let region = |name: &str, at: u32, len: u32, fields: Vec<FieldEntry>| {
        let mut v = bytes_of(&aml::OpRegion::new(
            name.into(),
            OpRegionSpace::SystemIO,
            &at,
            &len,
        ));
        v.extend(bytes_of(&aml::Field::new(
            name.into(),
            FieldAccessType::DWord,
            FieldLockRule::NoLock,
            FieldUpdateRule::WriteAsZeroes,
            fields,
        )));
        v
    };
    let mut out = region(
        "PCST",
        base,
        8,
        vec![
            FieldEntry::Named(*b"PCIU", 32),
            FieldEntry::Named(*b"PCID", 32),
        ],
    );
    out.extend(region(
        "SEJ_",
        base + 8,
        4,
        vec![FieldEntry::Named(*b"B0EJ", 32)],
    ));
    out.extend(region(
        "BNMR",
        base + 0x10,
        8,
        vec![
            FieldEntry::Named(*b"BNUM", 32),
            FieldEntry::Named(*b"PIDX", 32),
        ],
    ));
    out.extend(bytes_of(&aml::Mutex::new("BLCK".into(), 0)));
    let acquire = aml::Acquire::new("BLCK".into(), 0xffff);
    let bnum = aml::Path::new("BNUM");
    let b0ej = aml::Path::new("B0EJ");
    let store_bnum = aml::Store::new(&bnum, &aml::Arg(0));
    let shl = aml::ShiftLeft::new(&b0ej, &aml::ONE, &aml::Arg(1));
    let release = aml::Release::new("BLCK".into());
    let ret = aml::Return::new(&aml::ZERO);
    out.extend(bytes_of(&aml::Method::new(
        "PCEJ".into(),
        2,
        false,
        vec![&acquire, &store_bnum, &shl, &release, &ret],
    )));
    out
}

/// `PHPR`: the register block as a motherboard resource, as QEMU declares it.
pub(super) fn pcihp_resources(hp: &PciHotplugAml) -> Vec<u8> {
    let hid = aml::Name::new("_HID".into(), &"PNP0A06");
    let uid = aml::Name::new("_UID".into(), &"PCI Hotplug resources");
    let sta = aml::Name::new("_STA".into(), &0x0bu8);
    let io = aml::IO::new(hp.base, hp.base, 1, 0x18);
    let template = aml::ResourceTemplate::new(vec![&io as &dyn Aml]);
    let crs = aml::Name::new("_CRS".into(), &template);
    bytes_of(&aml::Device::new(
        "PHPR".into(),
        vec![&hid, &uid, &sta, &crs],
    ))
}

/// `\_GPE._E01`: PCI hot-plug events (GPE0 bit 1) run PCNT under the lock.
pub(super) fn pcihp_gpe() -> Vec<u8> {
    let acquire = aml::Acquire::new("\\_SB_.PCI0.BLCK".into(), 0xffff);
    let pcnt = aml::MethodCall::new(aml::Path::new("\\_SB_.PCI0.PCNT"), vec![]);
    let release = aml::Release::new("\\_SB_.PCI0.BLCK".into());
    let e01 = aml::Method::new("_E01".into(), 0, false, vec![&acquire, &pcnt, &release]);
    let hid = aml::Name::new("_HID".into(), &"ACPI0006");
    bytes_of(&aml::Scope::new("\\_GPE".into(), vec![&hid, &e01]))
}
