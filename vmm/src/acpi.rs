//! ACPI tables for a direct boot (what firmware plus QEMU's table builder provide): RSDP,
//! XSDT, FADT, FACS, DSDT, MADT, WAET and, on q35, MCFG. They are written into the BIOS area
//! (0xe0000..0x100000) where an RSDP scan finds them.
//!
//! The DSDT describes what QEMU 7.2's describes for the devices machina models (PCI root,
//! ECAM reservation, the ISA devices with a model: i8042 keyboard and mouse, RTC, COM ports;
//! fw_cfg in PCI0; sleep states S4/S5, the interrupt link devices the `_PRT` names) and
//! nothing machina lacks: no HPET, floppy, parallel port, PCI/CPU/memory hot-plug interfaces.
//! `tests/linux_acpi.rs` compares the result with QEMU's, listing each difference.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::sdt::Sdt;
use acpi_tables::{aml, Aml};
use devices::aml::{bytes_of, RawAml};
use devices::legacy::kind::{AmlScope, IsaKind};
use machine::{Family, Range};
use std::collections::BTreeMap;
use vm_memory::{Bytes, GuestAddress};

use crate::boot::{ACPI_END, ACPI_START};
use crate::memory::GuestMemory;

const OEM_ID: [u8; 6] = *b"BOCHS ";
const OEM_TABLE_ID: [u8; 8] = *b"MACHINA ";
const OEM_REVISION: u32 = 1;
const LAPIC_ADDR: u32 = 0xfee0_0000;
/// ISA IRQs QEMU declares level-triggered, active high (PCI interrupts and the SCI).
const PCI_ISA_IRQ_MASK: u16 = 0x0e20;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables need {needed} bytes but the BIOS area has {available}")]
    TooLarge { needed: u64, available: u64 },
    #[error("cannot write ACPI tables to guest memory")]
    GuestWrite,
}

/// What the tables describe, taken from the plan and the firmware step.
#[derive(Debug, Clone)]
pub struct AcpiConfig {
    pub family: Family,
    pub cpus: u32,
    /// Possible CPUs (`maxcpus`): the MADT lists them all, those beyond `cpus` disabled.
    pub max_cpus: u32,
    /// Gives each CPU its APIC id.
    pub topology: machine::CpuTopology,
    /// ACPI PM I/O base (PM1a event at +0, control at +4, timer at +8).
    pub pm_base: u16,
    /// GPE0 block base and length.
    pub gpe0: (u16, u8),
    /// The SCI's GSI (the plan's `sci_irq`).
    pub sci_irq: u32,
    /// The IOAPIC's register address (the plan's `ioapic` region).
    pub ioapic: u32,
    /// The PCI config ports (CONFIG_ADDRESS to the end of CONFIG_DATA).
    pub config_ports: Range,
    /// The root-bus devfn of the ISA bridge, whose scope holds the ISA devices.
    pub isa_bridge: Option<u8>,
    /// ECAM window (q35, once enabled).
    pub ecam: Option<Range>,
    /// Highest bus number behind the host bridge.
    pub last_bus: u8,
    pub pci_hole32: Range,
    pub pci_hole64: Range,
    /// The ISA devices that have a model (the DSDT declares those it knows).
    pub isa: Vec<machine::IsaDevicePlan>,
    /// Root-bus interrupt routing: (slot, pin 0=INTA, GSI) for every slot and pin.
    pub prt: Vec<(u8, u8, u32)>,
    /// Bridges and ports under the host bridge, nested as the buses are.
    pub bridges: Vec<BridgeNode>,
    /// NUMA nodes: with any, the SRAT (and the SLIT with distances) describe them.
    pub numa: machine::NumaPlan,
    /// RAM below 4 GiB (where the SRAT's node ranges skip the PCI hole).
    pub ram_below_4g: u64,
    /// The memory hot-plug area, which the SRAT gives to the last node.
    pub device_memory: Option<Range>,
    /// ACPI PCI hot-plug (the registers, each hot-plug bus's BSEL and slots), if any.
    pub pci_hotplug: Option<PciHotplugAml>,
    /// The OS may take native PCIe hot-plug (_OSC): ACPI does not own the ports.
    pub native_pcie_hotplug: bool,
    /// The ACPI CPU hot-plug block's base, if the machine has one (`\_SB.CPUS`).
    pub cpu_hotplug: Option<u16>,
}

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
    fn reaches(&self, bus: &str, children: &[BridgeNode]) -> bool {
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
fn bridge_aml(nodes: &[BridgeNode], parent: &str, hp: Option<&PciHotplugAml>) -> Vec<u8> {
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
fn bus_hotplug_aml(hp: &PciHotplugAml, bus: &str, path: &str, children: &[BridgeNode]) -> Vec<u8> {
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
fn pcihp_registers(hp: &PciHotplugAml) -> Vec<u8> {
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
fn pcihp_resources(hp: &PciHotplugAml) -> Vec<u8> {
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
fn pcihp_gpe() -> Vec<u8> {
    let acquire = aml::Acquire::new("\\_SB_.PCI0.BLCK".into(), 0xffff);
    let pcnt = aml::MethodCall::new(aml::Path::new("\\_SB_.PCI0.PCNT"), vec![]);
    let release = aml::Release::new("\\_SB_.PCI0.BLCK".into());
    let e01 = aml::Method::new("_E01".into(), 0, false, vec![&acquire, &pcnt, &release]);
    let hid = aml::Name::new("_HID".into(), &"ACPI0006");
    bytes_of(&aml::Scope::new("\\_GPE".into(), vec![&hid, &e01]))
}

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
const S4_SLP_TYP: u8 = 2;

/// The ISA and system devices of the DSDT in `scope`, each kind's fragment (`KBD_`/`MOU_`,
/// `COMn`, `RTC_` in the ISA bridge; `FWCF` in PCI0) in QEMU's DSDT order, which is also the
/// order Linux numbers PnP devices in (00:00, 00:01, ...).
fn isa_aml(isa: &[machine::IsaDevicePlan], scope: AmlScope) -> Vec<u8> {
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
fn link_device(name: &str, uid: u32, irq: u32) -> Vec<u8> {
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
fn prt_link(family: Family, slot: u8, pin: u8, gsi: u32) -> Option<String> {
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

fn link_devices(cfg: &AcpiConfig) -> Vec<u8> {
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
fn q35_osc(native_hotplug: bool) -> Vec<u8> {
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

fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut table = Sdt::new(*signature, 36, revision, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    table.append_slice(body);
    table.as_slice().to_vec()
}

/// PCI0's `_CRS`: the bus range, the config ports, I/O around them, VGA memory and the holes.
fn pci0_crs(cfg: &AcpiConfig) -> Vec<u8> {
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
fn pci0_prt(cfg: &AcpiConfig) -> Vec<u8> {
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
fn isa_bridge_aml(cfg: &AcpiConfig) -> Vec<u8> {
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
fn pci0(cfg: &AcpiConfig) -> Vec<u8> {
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
fn ecam_reservation(cfg: &AcpiConfig) -> Vec<u8> {
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

fn dsdt(cfg: &AcpiConfig) -> Vec<u8> {
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

/// CPU `cpu`'s MADT entry (also its `_MAT`, enabled, in the DSDT).
fn madt_cpu(cfg: &AcpiConfig, cpu: u32, enabled: bool) -> Vec<u8> {
    let apic_id = cfg.topology.apic_id(cpu);
    let enabled = u32::from(enabled);
    let mut v = Vec::new();
    match u8::try_from(apic_id) {
        // Type 0: processor local APIC (UID = index, id from the topology).
        Ok(id) if id != 0xff => {
            v.extend([0u8, 8, cpu as u8, id]);
            v.extend(enabled.to_le_bytes());
        }
        // Type 9: processor local x2APIC, for ids that do not fit in 8 bits.
        _ => {
            v.extend([9u8, 16, 0, 0]);
            v.extend(apic_id.to_le_bytes());
            v.extend(enabled.to_le_bytes());
            v.extend(cpu.to_le_bytes());
        }
    }
    v
}

fn madt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(LAPIC_ADDR.to_le_bytes());
    body.extend(1u32.to_le_bytes()); // PCAT_COMPAT: dual 8259s present
    for cpu in 0..cfg.max_cpus.max(cfg.cpus) {
        body.extend(madt_cpu(cfg, cpu, cpu < cfg.cpus));
    }
    // Type 1: IOAPIC id 0 at its address, GSI base 0.
    body.extend([1u8, 12, 0, 0]);
    body.extend(cfg.ioapic.to_le_bytes());
    body.extend(0u32.to_le_bytes());
    // Type 2: ISA IRQ 0 (PIT) is wired to GSI 2.
    body.extend([2u8, 10, 0, 0]);
    body.extend(2u32.to_le_bytes());
    body.extend(0u16.to_le_bytes());
    for irq in 1..16u8 {
        if PCI_ISA_IRQ_MASK & (1 << irq) != 0 {
            body.extend([2u8, 10, 0, irq]);
            body.extend(u32::from(irq).to_le_bytes());
            body.extend(0x000du16.to_le_bytes()); // level, active high
        }
    }
    // Type 4: LINT1 of every processor is NMI.
    body.extend([4u8, 6, 0xff, 0, 0, 1]);
    sdt(b"APIC", 3, &body)
}

/// One SRAT memory affinity structure (type 1).
fn srat_memory(body: &mut Vec<u8>, base: u64, len: u64, node: u32, flags: u32) {
    body.extend([1u8, 40]);
    body.extend(node.to_le_bytes());
    body.extend(0u16.to_le_bytes());
    body.extend(base.to_le_bytes());
    body.extend(len.to_le_bytes());
    body.extend(0u32.to_le_bytes());
    body.extend(flags.to_le_bytes());
    body.extend(0u64.to_le_bytes());
}

/// The SRAT as QEMU's build_srat lays it out: every possible CPU's node by APIC id, each
/// node's RAM ranges (around the legacy and PCI holes), padding entries, and the memory
/// hot-plug area on the last node.
fn srat(cfg: &AcpiConfig) -> Vec<u8> {
    const ENABLED: u32 = 1;
    const HOTPLUGGABLE: u32 = 2;
    let numa = &cfg.numa;
    let mut body = Vec::new();
    body.extend(1u32.to_le_bytes()); // reserved, 1 for compatibility
    body.extend(0u64.to_le_bytes());
    for cpu in 0..cfg.max_cpus.max(cfg.cpus) {
        let node = numa.node_of(cpu).unwrap_or(0);
        let apic_id = cfg.topology.apic_id(cpu);
        match u8::try_from(apic_id) {
            // Processor local APIC affinity (type 0): proximity domain bits 7:0 here,
            // 31:8 after the SAPIC EID.
            Ok(id) if id != 0xff => {
                body.extend([0u8, 16, node as u8, id]);
                body.extend(ENABLED.to_le_bytes());
                body.push(0);
                body.extend(&(node >> 8).to_le_bytes()[..3]);
                body.extend(0u32.to_le_bytes());
            }
            // Processor local x2APIC affinity (type 2).
            _ => {
                body.extend([2u8, 24, 0, 0]);
                body.extend(node.to_le_bytes());
                body.extend(apic_id.to_le_bytes());
                body.extend(ENABLED.to_le_bytes());
                body.extend(0u32.to_le_bytes());
                body.extend(0u32.to_le_bytes());
            }
        }
    }
    let ranges = numa.memory_ranges(cfg.ram_below_4g);
    for &(node, base, len) in &ranges {
        srat_memory(&mut body, base, len, node, ENABLED);
    }
    // QEMU pads to (nodes + 2) memory entries for old guests.
    for _ in ranges.len()..numa.nodes.len() + 2 {
        srat_memory(&mut body, 0, 0, 0, 0);
    }
    if let Some(area) = cfg.device_memory.filter(|r| r.size > 0) {
        let last = numa.nodes.len().saturating_sub(1) as u32;
        srat_memory(
            &mut body,
            area.base,
            area.size,
            last,
            ENABLED | HOTPLUGGABLE,
        );
    }
    sdt(b"SRAT", 1, &body)
}

/// The SLIT: the node count, then the distance matrix row by row.
fn slit(numa: &machine::NumaPlan) -> Vec<u8> {
    let mut body = (numa.nodes.len() as u64).to_le_bytes().to_vec();
    for row in &numa.distances {
        body.extend(row);
    }
    sdt(b"SLIT", 1, &body)
}

/// The HMAT (revision 2) as QEMU's build_hmat lays it out (hw/acpi/hmat.c): a Memory
/// Proximity Domain Attributes structure per node with RAM, a System Locality Latency and
/// Bandwidth structure per given hierarchy and data type, a Memory Side Cache structure per
/// given cache.
fn hmat(numa: &machine::NumaPlan, hmat: &machine::HmatPlan) -> Vec<u8> {
    const INITIATOR_VALID: u16 = 1;
    let mut body = 0u32.to_le_bytes().to_vec(); // reserved
    for (i, node) in numa.nodes.iter().enumerate() {
        // Linux rejects the whole table if a node without memory is a target.
        if node.mem == 0 {
            continue;
        }
        let initiator = hmat.initiators.get(i).copied().flatten();
        body.extend(0u16.to_le_bytes()); // type 0
        body.extend(0u16.to_le_bytes());
        body.extend(40u32.to_le_bytes());
        let flags = if initiator.is_some() {
            INITIATOR_VALID
        } else {
            0
        };
        body.extend(flags.to_le_bytes());
        body.extend(0u16.to_le_bytes());
        // QEMU writes MAX_NODES for "no initiator".
        body.extend(initiator.unwrap_or(machine::numa::MAX_NODES).to_le_bytes());
        body.extend((i as u32).to_le_bytes());
        body.extend(0u32.to_le_bytes());
        body.extend(0u64.to_le_bytes()); // deprecated address range
        body.extend(0u64.to_le_bytes());
    }
    let initiators = &hmat.initiator_nodes;
    let targets = numa.nodes.len() as u32;
    for table in &hmat.lb {
        let n = initiators.len() as u32;
        let len = 32 + 4 * n + 4 * targets + 2 * n * targets;
        body.extend(1u16.to_le_bytes()); // type 1
        body.extend(0u16.to_le_bytes());
        body.extend(len.to_le_bytes());
        body.push(table.hierarchy.code());
        body.push(table.data_type.code());
        body.extend(0u16.to_le_bytes());
        body.extend(n.to_le_bytes());
        body.extend(targets.to_le_bytes());
        body.extend(0u32.to_le_bytes());
        // Latencies in picoseconds, bandwidths in MB/s.
        let base = if table.data_type.is_latency() {
            table.base.saturating_mul(1000)
        } else {
            table.base >> 20
        };
        body.extend(base.to_le_bytes());
        for &i in initiators {
            body.extend(i.to_le_bytes());
        }
        for t in 0..targets {
            body.extend(t.to_le_bytes());
        }
        let mut entries = vec![0u16; (n * targets) as usize];
        for &(i, t, data) in &table.entries {
            if let Some(row) = initiators.iter().position(|&x| x == i) {
                let slot = row * targets as usize + t as usize;
                if let Some(e) = entries.get_mut(slot) {
                    *e = (data / table.base.max(1)) as u16;
                }
            }
        }
        for e in entries {
            body.extend(e.to_le_bytes());
        }
    }
    for cache in &hmat.caches {
        let attributes = u32::from(cache.total_levels)
            | u32::from(cache.level) << 4
            | u32::from(cache.associativity.code()) << 8
            | u32::from(cache.policy.code()) << 12
            | u32::from(cache.line) << 16;
        body.extend(2u16.to_le_bytes()); // type 2
        body.extend(0u16.to_le_bytes());
        body.extend(32u32.to_le_bytes());
        body.extend(cache.node.to_le_bytes());
        body.extend(0u32.to_le_bytes());
        body.extend(cache.size.to_le_bytes());
        body.extend(attributes.to_le_bytes());
        body.extend(0u16.to_le_bytes());
        body.extend(0u16.to_le_bytes()); // no SMBIOS handles
    }
    sdt(b"HMAT", 2, &body)
}

fn mcfg(ecam: Range) -> Vec<u8> {
    let mut body = vec![0u8; 8];
    body.extend(ecam.base.to_le_bytes());
    body.extend(0u16.to_le_bytes()); // segment
    body.push(0); // start bus
    body.push(((ecam.size >> 20).saturating_sub(1)).min(255) as u8);
    body.extend([0u8; 4]);
    sdt(b"MCFG", 1, &body)
}

/// WAET: QEMU sets "ACPI PM timer good" (one read of the PM timer is reliable), true of
/// `devices::chipset::acpi_pm`'s timer too.
fn waet() -> Vec<u8> {
    const ACPI_WAET_PM_TIMER_GOOD: u32 = 1 << 1;
    sdt(b"WAET", 1, &ACPI_WAET_PM_TIMER_GOOD.to_le_bytes())
}

fn facs() -> Vec<u8> {
    let mut t = vec![0u8; 64];
    t[0..4].copy_from_slice(b"FACS");
    t[4..8].copy_from_slice(&64u32.to_le_bytes());
    t[32] = 2; // version
    t
}

fn io_gas(width_bits: u8, access: AccessSize, port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        width_bits,
        0,
        access,
        u64::from(port),
    )
}

fn fadt(cfg: &AcpiConfig, dsdt_addr: u64, facs_addr: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::SlpButton)
        .flag(Flags::RtcS4)
        .flag(Flags::ResetRegSup)
        .flag(Flags::TmrValExt);
    let pm = cfg.pm_base;
    f.dsdt = (dsdt_addr as u32).into();
    // FACS through the 32-bit FIRMWARE_CTRL only, as QEMU's FADT: with X_FIRMWARE_CTRL also
    // set Linux reports the FACS twice.
    f.firmware_ctrl = (facs_addr as u32).into();
    f.sci_int = (cfg.sci_irq as u16).into();
    f.pm1a_evt_blk = u32::from(pm).into();
    f.pm1a_cnt_blk = u32::from(pm + 4).into();
    f.pm_tmr_blk = u32::from(pm + 8).into();
    f.gpe0_blk = u32::from(cfg.gpe0.0).into();
    f.pm1_evt_len = 4;
    f.pm1_cnt_len = 2;
    f.pm_tmr_len = 4;
    f.gpe0_blk_len = cfg.gpe0.1;
    f.x_pm1a_evt_blk = io_gas(32, AccessSize::WordAccess, pm);
    f.x_pm1a_cnt_blk = io_gas(16, AccessSize::WordAccess, pm + 4);
    f.x_pm_tmr_blk = io_gas(32, AccessSize::DwordAccess, pm + 8);
    f.x_gpe0_blk = io_gas(cfg.gpe0.1 * 8, AccessSize::ByteAccess, cfg.gpe0.0);
    f.reset_reg = io_gas(8, AccessSize::ByteAccess, 0xcf9);
    f.reset_value = 0x06;
    // 8042 present (IA-PC boot arch flag 2) so Linux probes the keyboard controller.
    f.iapc_boot_arch = 0x0002u16.into();
    f.century = 0x32;
    bytes_of(&f.finalize())
}

/// Lay the tables out in the BIOS area, write them, and return the RSDP's address.
pub fn write_tables(mem: &GuestMemory, cfg: &AcpiConfig) -> Result<u64, AcpiError> {
    let mut image: Vec<u8> = Vec::new();
    let place = |image: &mut Vec<u8>, table: &[u8]| -> u64 {
        // Tables are 16-byte aligned; the RSDP must be.
        while !image.len().is_multiple_of(16) {
            image.push(0);
        }
        let addr = ACPI_START + image.len() as u64;
        image.extend_from_slice(table);
        addr
    };
    // RSDP first, at the start of the area; its contents are filled in last.
    let rsdp_len = acpi_tables::rsdp::Rsdp::len();
    let rsdp_addr = place(&mut image, &vec![0u8; rsdp_len]);
    let facs_addr = place(&mut image, &facs());
    let dsdt_addr = place(&mut image, &dsdt(cfg));
    let fadt_addr = place(&mut image, &fadt(cfg, dsdt_addr, facs_addr));
    let madt_addr = place(&mut image, &madt(cfg));
    let mut entries = vec![fadt_addr, madt_addr];
    let mut dump: Vec<(&str, u64)> = vec![
        ("facs", facs_addr),
        ("dsdt", dsdt_addr),
        ("facp", fadt_addr),
        ("apic", madt_addr),
    ];
    if let Some(ecam) = cfg.ecam {
        let addr = place(&mut image, &mcfg(ecam));
        entries.push(addr);
        dump.push(("mcfg", addr));
    }
    if cfg.numa.is_enabled() {
        let addr = place(&mut image, &srat(cfg));
        entries.push(addr);
        dump.push(("srat", addr));
        if !cfg.numa.distances.is_empty() {
            let addr = place(&mut image, &slit(&cfg.numa));
            entries.push(addr);
            dump.push(("slit", addr));
        }
        if let Some(h) = &cfg.numa.hmat {
            let addr = place(&mut image, &hmat(&cfg.numa, h));
            entries.push(addr);
            dump.push(("hmat", addr));
        }
    }
    let waet_addr = place(&mut image, &waet());
    entries.push(waet_addr);
    dump.push(("waet", waet_addr));
    let xsdt_body: Vec<u8> = entries.iter().flat_map(|a| a.to_le_bytes()).collect();
    let xsdt_addr = place(&mut image, &sdt(b"XSDT", 1, &xsdt_body));
    dump.push(("xsdt", xsdt_addr));
    let rsdp = bytes_of(&acpi_tables::rsdp::Rsdp::new(OEM_ID, xsdt_addr));
    let offset = (rsdp_addr - ACPI_START) as usize;
    image[offset..offset + rsdp.len()].copy_from_slice(&rsdp);

    let available = ACPI_END - ACPI_START;
    if image.len() as u64 > available {
        return Err(AcpiError::TooLarge {
            needed: image.len() as u64,
            available,
        });
    }
    mem.write_slice(&image, GuestAddress(ACPI_START))
        .map_err(|_| AcpiError::GuestWrite)?;
    dump_tables(&image, &dump);
    Ok(rsdp_addr)
}

/// Test hook: with `MACHINA_ACPI_DUMP=DIR` in the environment, each table is also written to
/// `DIR/<signature>.dat` (acpidump -b naming) for `iasl -d` (tests/linux_acpi.rs). Failures
/// are reported and ignored: the guest does not depend on the dump.
fn dump_tables(image: &[u8], tables: &[(&str, u64)]) {
    let Some(dir) = std::env::var_os("MACHINA_ACPI_DUMP") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    // index.txt: "name address" per table, so a test can follow the XSDT's entries.
    let index: String = tables
        .iter()
        .map(|(name, addr)| format!("{name} {addr:#x}\n"))
        .collect();
    if let Err(e) = std::fs::write(dir.join("index.txt"), index) {
        eprintln!("machina: MACHINA_ACPI_DUMP: {}: {e}", dir.display());
    }
    for &(name, addr) in tables {
        let off = (addr - ACPI_START) as usize;
        let Some(len) = image
            .get(off + 4..off + 8)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(|b| u32::from_le_bytes(b) as usize)
        else {
            continue;
        };
        let Some(bytes) = image.get(off..off + len) else {
            continue;
        };
        let path = dir.join(format!("{name}.dat"));
        if let Err(e) = std::fs::write(&path, bytes) {
            eprintln!("machina: MACHINA_ACPI_DUMP: {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(t: &[u8]) -> bool {
        t.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    fn cfg(family: Family) -> AcpiConfig {
        AcpiConfig {
            family,
            cpus: 2,
            max_cpus: 2,
            topology: machine::CpuTopology::default(),
            pm_base: 0x600,
            gpe0: (0x620, 16),
            sci_irq: 9,
            ioapic: 0xfec0_0000,
            config_ports: Range {
                base: 0xcf8,
                size: 8,
            },
            isa_bridge: match family {
                Family::Q35 => Some(0x1f << 3),
                _ => Some(0x01 << 3),
            },
            ecam: (family == Family::Q35).then_some(Range {
                base: 0xb000_0000,
                size: 0x1000_0000,
            }),
            last_bus: 0,
            pci_hole32: Range {
                base: 0xc000_0000,
                size: 0x3ec0_0000,
            },
            pci_hole64: Range {
                base: 0x1_0000_0000,
                size: 0x8_0000_0000,
            },
            isa: vec![
                machine::IsaDevicePlan {
                    type_name: "isa-serial".into(),
                    id: None,
                    io: vec![Range {
                        base: 0x3f8,
                        size: 8,
                    }],
                    irqs: vec![4],
                    mmio: vec![],
                },
                machine::IsaDevicePlan {
                    type_name: "i8042".into(),
                    id: None,
                    io: vec![
                        Range {
                            base: 0x60,
                            size: 1,
                        },
                        Range {
                            base: 0x64,
                            size: 1,
                        },
                    ],
                    irqs: vec![1, 12],
                    mmio: vec![],
                },
            ],
            prt: root_prt(family, &[10, 10, 11, 11], 9),
            bridges: vec![BridgeNode {
                devfn: 0x10,
                bus: "br".into(),
                children: vec![BridgeNode {
                    devfn: 0x08,
                    bus: "br2".into(),
                    children: vec![],
                }],
            }],
            numa: machine::NumaPlan::default(),
            ram_below_4g: 0x800_0000,
            device_memory: None,
            pci_hotplug: None,
            native_pcie_hotplug: true,
            cpu_hotplug: None,
        }
    }

    /// The `And(Local0, GRANTED, Local0)` of _OSC: AndOp, Local0, a byte const, Local0.
    fn osc_granted(d: &[u8]) -> Option<u8> {
        d.windows(5)
            .find(|w| w[0] == 0x7b && w[1] == 0x60 && w[2] == 0x0a && w[4] == 0x60)
            .map(|w| w[3])
    }

    #[test]
    fn cpu_hotplug_objects_for_every_possible_cpu() {
        let mut c = cfg(Family::Q35);
        assert!(!dsdt(&c).windows(4).any(|w| w == b"CSCN"));
        c.cpus = 1;
        c.max_cpus = 4;
        c.cpu_hotplug = Some(0xcd8);
        let d = dsdt(&c);
        for name in [
            b"PRES", b"CPUS", b"CSCN", b"CSTA", b"CTFY", b"COST", b"_E02",
        ] {
            assert!(d.windows(4).any(|w| w == name), "{name:?}");
        }
        // One Processor object per possible CPU, each with its enabled MADT entry as _MAT.
        for cpu in 0..4u8 {
            let name = format!("C{cpu:03X}");
            assert!(d.windows(4).any(|w| w == name.as_bytes()), "{name}");
            let mat = [0u8, 8, cpu, cpu, 1, 0, 0, 0];
            assert!(d.windows(8).any(|w| w == mat), "_MAT of {name}");
        }
        assert!(!d.windows(4).any(|w| w == b"C004"));
        // The MADT still lists the CPUs beyond `cpus` disabled.
        let m = madt(&c);
        assert!(m.windows(8).any(|w| w == [0u8, 8, 3, 3, 0, 0, 0, 0]));
    }

    #[test]
    fn pci_hotplug_in_the_dsdt_and_osc() {
        let mut c = cfg(Family::Q35);
        assert_eq!(
            osc_granted(&dsdt(&c)),
            Some(0x1f),
            "native hot-plug granted"
        );
        c.native_pcie_hotplug = false;
        assert_eq!(osc_granted(&dsdt(&c)), Some(0x1e), "ACPI keeps hot-plug");
        assert!(!dsdt(&c).windows(4).any(|w| w == b"PCNT"));
        // The root port's bus as BSEL 0, one slot: Sxx with _SUN/_EJ0, PCNT chained from
        // PCI0, the register block, _E01.
        c.pci_hotplug = Some(PciHotplugAml {
            base: 0x0cc0,
            root: "pcie.0".into(),
            buses: [("br".to_string(), (0, vec![0]))].into_iter().collect(),
        });
        let d = dsdt(&c);
        assert!(checksum_ok(&d));
        for name in [
            &b"BSEL"[..],
            b"_SUN",
            b"_EJ0",
            b"PCEJ",
            b"PCNT",
            b"DVNT",
            b"_E01",
            b"PHPR",
            b"B0EJ",
        ] {
            assert!(d.windows(4).any(|w| w == name), "{name:?}");
        }
        // PCI0's PCNT calls the bridge's (\\_SB_.PCI0.S10_.PCNT).
        assert!(d.windows(12).any(|w| w == b"PCI0S10_PCNT"));
    }

    #[test]
    fn srat_gives_cpus_and_ram_ranges_their_nodes_and_slit_the_distances() {
        let mut c = cfg(Family::Q35);
        const G: u64 = 1 << 30;
        c.ram_below_4g = 3 * G;
        c.numa = machine::NumaPlan {
            nodes: vec![
                machine::NumaNode {
                    mem: 64 << 20,
                    memdev: None,
                },
                machine::NumaNode {
                    mem: 4 * G - (64 << 20),
                    memdev: None,
                },
            ],
            cpu_nodes: vec![1, 0],
            distances: vec![vec![10, 21], vec![21, 10]],
            hmat: None,
        };
        c.device_memory = Some(Range {
            base: 5 * G,
            size: 2 * G,
        });
        let t = srat(&c);
        assert!(checksum_ok(&t));
        assert_eq!(&t[0..4], b"SRAT");
        let body = &t[36 + 12..];
        // CPU 0 (APIC id 0) on node 1, CPU 1 on node 0.
        assert_eq!(&body[0..4], &[0, 16, 1, 0]);
        assert_eq!(&body[16..20], &[0, 16, 0, 1]);
        let mems: Vec<(u32, u64, u64, u32)> = body[32..]
            .chunks(40)
            .map(|e| {
                assert_eq!(&e[0..2], &[1, 40]);
                let u32_at = |o: usize| u32::from_le_bytes(e[o..o + 4].try_into().unwrap());
                let u64_at = |o: usize| u64::from_le_bytes(e[o..o + 8].try_into().unwrap());
                (u32_at(2), u64_at(8), u64_at(16), u32_at(28))
            })
            .collect();
        assert_eq!(
            mems,
            [
                (0, 0, 640 << 10, 1),
                (0, 1 << 20, 63 << 20, 1),
                (1, 64 << 20, 3 * G - (64 << 20), 1),
                (1, 4 * G, G, 1),
                (1, 5 * G, 2 * G, 3),
            ]
        );
        let t = slit(&c.numa);
        assert!(checksum_ok(&t));
        assert_eq!(&t[36..], &[2, 0, 0, 0, 0, 0, 0, 0, 10, 21, 21, 10]);
    }

    #[test]
    fn tables_have_valid_checksums_and_fields() {
        let c = cfg(Family::Q35);
        for t in [
            dsdt(&c),
            madt(&c),
            mcfg(c.ecam.unwrap()),
            fadt(&c, 0x1000, 0x2000),
        ] {
            assert!(checksum_ok(&t), "{:?}", &t[0..4]);
            assert_eq!(
                u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize,
                t.len()
            );
        }
        let f = fadt(&c, 0x1000, 0x2000);
        assert_eq!(&f[0..4], b"FACP");
        // PM1a_CNT_BLK at offset 64, SCI at 46.
        assert_eq!(u32::from_le_bytes(f[64..68].try_into().unwrap()), 0x604);
        assert_eq!(u16::from_le_bytes(f[46..48].try_into().unwrap()), 9);
        // FACS referenced once, through FIRMWARE_CTRL (X_FIRMWARE_CTRL zero), as QEMU.
        assert_eq!(u32::from_le_bytes(f[36..40].try_into().unwrap()), 0x2000);
        assert_eq!(u64::from_le_bytes(f[132..140].try_into().unwrap()), 0);
        let m = mcfg(c.ecam.unwrap());
        assert_eq!(
            u64::from_le_bytes(m[44..52].try_into().unwrap()),
            0xb000_0000
        );
        assert_eq!(m[55], 255);
        let d = dsdt(&c);
        assert!(d.windows(4).any(|w| w == b"_S5_"));
        assert!(d.windows(4).any(|w| w == b"DRAC"));
        assert!(!dsdt(&cfg(Family::I440fx)).windows(4).any(|w| w == b"DRAC"));
        assert!(d.windows(4).any(|w| w == b"_PRT"));
        // ISA devices under the ISA bridge, S4 offered, link devices named by the _PRT.
        for name in [
            &b"SF8_"[..],
            b"KBD_",
            b"MOU_",
            b"COM1",
            b"_S4_",
            b"GSIA",
            b"GSIH",
        ] {
            assert!(d.windows(4).any(|w| w == name), "{name:?}");
        }
        assert!(!d.windows(4).any(|w| w == b"LNKA"));
        let p = dsdt(&cfg(Family::I440fx));
        for name in [&b"S08_"[..], b"LNKA", b"LNKD", b"LNKS"] {
            assert!(p.windows(4).any(|w| w == name), "{name:?}");
        }
        assert!(!p.windows(4).any(|w| w == b"GSIA"));
        // WAET: PM timer good.
        let w = waet();
        assert!(checksum_ok(&w));
        assert_eq!(w[36], 2);
        // Root port 00:02.0 as S10 with a bridge S08 nested inside it.
        let s10 = d
            .windows(4)
            .position(|w| w == b"S10_")
            .expect("S10 in the DSDT");
        let s08 = d
            .windows(4)
            .position(|w| w == b"S08_")
            .expect("S08 in the DSDT");
        assert!(s08 > s10);
        // q35 00:1f.0 INTA -> PIRQA -> GSI 16; 00:02.0 INTA -> PIRQG -> GSI 22.
        let q = root_prt(Family::Q35, &[], 9);
        assert!(q.contains(&(31, 0, 16)) && q.contains(&(2, 0, 22)));
        // pc: (slot - 1 + pin) & 3 as QEMU's pc_pci_slot_get_pirq: slot 3 INTA -> PIRQC
        // -> IRQ 11, slot 4 INTA -> PIRQD -> 11, slot 2 INTA -> PIRQB -> 10; slot 1 INTA
        // (PIIX4 PM) -> the SCI.
        let pc = root_prt(Family::I440fx, &[10, 10, 11, 11], 9);
        assert!(pc.contains(&(3, 0, 11)) && pc.contains(&(4, 0, 11)) && pc.contains(&(2, 0, 10)));
        assert!(pc.contains(&(1, 0, 9)));
    }

    #[test]
    fn pvpanic_is_described_as_qemu0001_at_its_port() {
        let isa = [machine::IsaDevicePlan {
            type_name: "pvpanic".into(),
            id: None,
            io: vec![Range {
                base: 0x505,
                size: 1,
            }],
            irqs: vec![],
            mmio: vec![],
        }];
        let aml = isa_aml(&isa, AmlScope::IsaBridge);
        assert!(aml.windows(4).any(|w| w == b"PEVT"));
        assert!(aml.windows(8).any(|w| w == b"QEMU0001"));
        // IO(Decode16, 0x505, 0x505, 1, 1).
        assert!(aml
            .windows(8)
            .any(|w| w == [0x47, 0x01, 0x05, 0x05, 0x05, 0x05, 0x01, 0x01]));
        assert!(isa_aml(&[], AmlScope::IsaBridge).is_empty());
        assert!(isa_aml(&isa, AmlScope::PciRoot).is_empty());
    }

    #[test]
    fn fw_cfg_is_described_in_pci0_as_qemu0002_at_its_ports() {
        let isa = [machine::IsaDevicePlan {
            type_name: "fw_cfg_io".into(),
            id: None,
            io: vec![Range {
                base: 0x520,
                size: 12,
            }],
            irqs: vec![],
            mmio: vec![],
        }];
        assert!(isa_aml(&isa, AmlScope::IsaBridge).is_empty());
        let aml = isa_aml(&isa, AmlScope::PciRoot);
        assert!(aml.windows(4).any(|w| w == b"FWCF"));
        assert!(aml.windows(8).any(|w| w == b"QEMU0002"));
        // IO(Decode16, 0x520, 0x520, 1, 12).
        assert!(aml
            .windows(8)
            .any(|w| w == [0x47, 0x01, 0x20, 0x05, 0x20, 0x05, 0x01, 0x0c]));
    }
}
