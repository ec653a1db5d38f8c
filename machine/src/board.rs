//! Boards as data: what a chipset family builds regardless of version — its root bus, the
//! implicit PCI functions and ISA/system devices (each with the condition under which QEMU
//! creates it), its memory layout rules and the option sets its machine types accept.

use crate::condition::Condition;
use crate::device_types::Num;
use crate::plan::{BusKind, Family, RegionKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The host bridge's root bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RootBusDef {
    /// `pcie.0` or `pci.0`.
    pub id: String,
    pub kind: BusKind,
    pub slot_min: u8,
    pub slot_max: u8,
    /// When devices can be hot-plugged on the root bus (i440fx: while ACPI is on, through
    /// PIIX4_PM; q35: never). Absent: never.
    #[serde(default)]
    pub hotplug_when: Option<Condition>,
    /// libvirt connect types the root bus accepts (advisory).
    #[serde(default)]
    pub accepts: Vec<String>,
    /// libvirt's model name (`pcie-root`, `pci-root`).
    #[serde(default)]
    pub libvirt_model: Option<String>,
    /// The root bus got its name from QEMU's per-bus-class counter (i440fx `pci.0`), so
    /// anonymous bridge buses of the same kind are numbered from 1.
    #[serde(default)]
    pub auto_named: bool,
}

/// An implicit PCI function, created before any `-device`, in list order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ImplicitPciDef {
    #[serde(rename = "type")]
    pub ty: String,
    /// Fixed `SLOT.FN` (hex); absent for automatic addressing.
    #[serde(default)]
    pub addr: Option<String>,
    /// Same slot as the earlier implicit function of this type, at `function`.
    #[serde(default)]
    pub function_of: Option<String>,
    #[serde(default)]
    pub function: u8,
    #[serde(default)]
    pub multifunction: bool,
    #[serde(default)]
    pub when: Condition,
    /// Properties the board sets; a value `$OPTION` is that machine option as a bool.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// An ISA or system-bus device with fixed resources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct IsaDeviceDef {
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default)]
    pub id: Option<String>,
    /// (base, size) I/O port ranges.
    #[serde(default)]
    pub io: Vec<(Num, Num)>,
    #[serde(default)]
    pub irqs: Vec<u32>,
    /// (base, size) MMIO ranges.
    #[serde(default)]
    pub mmio: Vec<(Num, Num)>,
    #[serde(default)]
    pub when: Condition,
}

/// A fixed region of the memory map (IOAPIC, LAPIC, HPET, EBDA, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FixedRegionDef {
    pub name: String,
    pub kind: RegionKind,
    pub base: Num,
    pub size: Num,
    #[serde(default)]
    pub when: Condition,
}

/// How RAM is split around the 32-bit hole and where the holes are.
///
/// `lowmem = ram >= threshold ? cap : threshold` then `lowmem = min(lowmem,
/// max-ram-below-4g)`, RAM below 4 GiB is `min(ram, lowmem)` and the rest goes above 4 GiB.
/// An absent `lowmem-threshold` means "equal to max-ram-below-4g" (i440fx).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MemoryLayoutDef {
    /// All RAM at 0, no holes (`-M none`).
    #[serde(default)]
    pub flat: bool,
    #[serde(default)]
    pub lowmem_threshold: Option<Num>,
    #[serde(default)]
    pub lowmem_cap: Option<Num>,
    #[serde(default)]
    pub max_ram_below_4g_default: Option<Num>,
    /// (base, size) of the PCIe ECAM window.
    #[serde(default)]
    pub ecam: Option<(Num, Num)>,
    /// Lowest start of the 32-bit PCI hole (raised above RAM if RAM reaches further).
    #[serde(default)]
    pub pci_hole32_start: Option<Num>,
    #[serde(default)]
    pub pci_hole32_end: Option<Num>,
    /// Size of the 64-bit hole placed after RAM above 4 GiB (1 GiB aligned).
    #[serde(default)]
    pub pci_hole64_size: Option<Num>,
    #[serde(default)]
    pub regions: Vec<FixedRegionDef>,
}

/// A board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BoardDef {
    pub name: String,
    pub family: Family,
    #[serde(default)]
    pub root_bus: Option<RootBusDef>,
    /// Option sets, later ones overriding same-named options of earlier ones.
    #[serde(default)]
    pub option_sets: Vec<String>,
    #[serde(default)]
    pub implicit_pci: Vec<ImplicitPciDef>,
    #[serde(default)]
    pub isa: Vec<IsaDeviceDef>,
    /// I/O port blocks the firmware step maps (ACPI PM, SMBus, the window PCI I/O BARs are
    /// allocated from): an ISA device placed over one would hide it.
    #[serde(default)]
    pub firmware_io: Vec<FirmwareIoDef>,
    /// The ACPI SCI's interrupt (GSI), wired by the south bridge's PM block.
    #[serde(default)]
    pub sci_irq: Option<u32>,
    /// The ISA IRQ the firmware routes each PIRQ line to (SeaBIOS's `pci_irq_list`: PIRQ A,
    /// B, C, D; E-H repeat it on q35).
    #[serde(default)]
    pub pirq_irqs: Vec<u8>,
    pub memory: MemoryLayoutDef,
}

/// One I/O port block the firmware maps (see `devices::pci::firmware`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FirmwareIoDef {
    pub name: String,
    /// What the firmware step puts there (absent: only a block the planner keeps free).
    #[serde(default)]
    pub role: Option<crate::plan::FirmwareRole>,
    pub base: Num,
    pub size: Num,
    #[serde(default)]
    pub when: Condition,
}
