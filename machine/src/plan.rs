//! The plan of a machine: everything the builder will create, computed before anything exists.
//!
//! The JSON form (serde) of these types is a documented, stable interface (docs/PLAN.md):
//! fields are only ever added, never renamed or removed.

use crate::value::Properties;
use serde::{Deserialize, Serialize};

/// Chipset family of a machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// `pc-q35-*`: MCH + ICH9, root bus `pcie.0` (PCIe).
    Q35,
    /// `pc-i440fx-*`: i440FX + PIIX3/PIIX4, root bus `pci.0` (conventional PCI).
    I440fx,
    /// `none`: no chipset, no buses.
    None,
}

/// A half-open guest-physical or I/O range `[base, base + size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub base: u64,
    pub size: u64,
}

impl Range {
    pub fn end(&self) -> u64 {
        self.base + self.size
    }
}

/// What a memory-map region is, as firmware would describe it to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegionKind {
    /// Guest RAM.
    Ram,
    /// Reserved for firmware/chipset; the guest must not use it as RAM (e820 type 2).
    Reserved,
    /// Window where PCI BARs are allocated (not in e820).
    PciHole,
    /// Device MMIO (IOAPIC, LAPIC, HPET); not in e820 as RAM.
    Mmio,
}

/// One named region of the memory map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRegion {
    pub name: String,
    pub kind: RegionKind,
    pub range: Range,
}

/// The machine's guest-physical layout, derived from the machine type and `-m`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryMap {
    /// Total RAM in bytes (`-m`).
    pub ram_size: u64,
    /// RAM mapped at 0 (below the 32-bit PCI hole).
    pub ram_below_4g: u64,
    /// RAM mapped from 4 GiB upwards.
    pub ram_above_4g: u64,
    /// PCI Express ECAM window (q35 only; firmware enables it at this address).
    pub ecam: Option<Range>,
    /// 32-bit PCI MMIO hole (BARs below 4 GiB).
    pub pci_hole32: Range,
    /// 64-bit PCI MMIO hole (above RAM above 4 GiB and the memory hot-plug area).
    pub pci_hole64: Range,
    /// QEMU's memory hot-plug area (`-m ...,maxmem=`), reserved address space only: machina
    /// plugs no DIMMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_memory: Option<Range>,
    /// The id of the RAM block (the machine type's `default-ram-id`, QEMU's `pc.ram`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram_id: Option<String>,
    /// Every region in address order: RAM, reserved low areas, ECAM, holes, device MMIO.
    pub regions: Vec<MemoryRegion>,
}

/// Conventional PCI or PCI Express.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BusKind {
    Pci,
    Pcie,
}

/// One PCI bus of the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusPlan {
    /// QEMU's bus id: `pcie.0`, `pci.0`, or the id of the bridge/port that provides it.
    pub id: String,
    pub kind: BusKind,
    /// True for the host bridge's root bus.
    pub is_root: bool,
    /// Index into `Plan::pci` of the bridge or port that provides this bus (None for the root).
    pub parent_function: Option<usize>,
    /// Usable slot range (inclusive); e.g. 0..=0 behind a root/downstream port.
    pub slot_min: u8,
    pub slot_max: u8,
    /// Whether devices can be hot-plugged on this bus (as QEMU would allow).
    pub hotplug: bool,
    /// Device kinds (libvirt-style connect types) this bus accepts, advisory.
    pub accepts: Vec<String>,
    /// libvirt model of the controller providing the bus (`pcie-root`, `pci-root`,
    /// `pcie-root-port`, `pcie-to-pci-bridge`, ...), for advisories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<String>,
    /// The providing bridge has a standard hot-plug controller that owns the bus: QEMU
    /// refuses slot 0 ("Unsupported PCI slot 0 for standard hotplug controller").
    #[serde(default)]
    pub shpc: bool,
    /// Secondary bus of a PCIe root or downstream port (QEMU warns for slot != 0).
    #[serde(default)]
    pub port: bool,
    /// Hot-plug on this bus is handled by ACPI (PIIX4/ICH9 PCI hotplug) rather than by the
    /// bridge itself.
    #[serde(default)]
    pub acpi_hotplug: bool,
    /// The providing bridge was hot-added: its own controller (SHPC, the port's slot)
    /// handles the bus, as ACPI takes over cold-plugged bridges only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hotplugged: bool,
}

/// The identity a guest reads from a function's config header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciIdentity {
    pub vendor_id: u16,
    pub device_id: u16,
    /// 24-bit class code: base class << 16 | subclass << 8 | prog-if.
    pub class_code: u32,
    pub revision: u8,
    /// Subsystem vendor/id (None for type-1 bridge headers, which have no such field).
    pub subsystem_vendor_id: Option<u16>,
    pub subsystem_id: Option<u16>,
    /// Header type byte without the multifunction bit: 0 endpoint, 1 PCI-PCI bridge.
    pub header_type: u8,
}

/// How a virtio-pci function was resolved (QEMU's `pcie_port` rule and the type variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioMode {
    /// Virtio device type (1 net, 2 blk, 3 console, 4 rng, ...).
    pub device_type: u16,
    /// Legacy (0.9) interface present: I/O BAR0.
    pub legacy: bool,
    /// Modern (1.0) interface present.
    pub modern: bool,
    /// PCIe endpoint + PM capabilities present (only behind a root/downstream port).
    pub pcie_capability: bool,
}

/// One PCI function, implicit or requested with `-device`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PciFunctionPlan {
    /// QOM type name (`mch`, `ICH9-LPC`, `pcie-root-port`, `virtio-net-pci`, ...).
    pub type_name: String,
    /// `id=` of the device (None for implicit devices, like QEMU's `id=(null)`).
    pub id: Option<String>,
    /// Id of the bus it sits on.
    pub bus: String,
    pub slot: u8,
    pub function: u8,
    /// Created by the machine type rather than by `-device`.
    pub implicit: bool,
    pub identity: PciIdentity,
    /// Header type has the multifunction bit (function 0 of a multifunction slot).
    pub multifunction: bool,
    /// Id of the bus this function provides, if it is a bridge or port.
    pub provides_bus: Option<String>,
    /// Set for virtio-pci functions.
    pub virtio: Option<VirtioMode>,
    /// All properties of the device with defaults applied, decoded (canonical text in JSON,
    /// QEMU's qtree style).
    pub properties: Properties,
}

impl PciFunctionPlan {
    /// devfn as used in config addresses: slot << 3 | function.
    pub fn devfn(&self) -> u8 {
        (self.slot << 3) | self.function
    }
}

/// A non-PCI (ISA or system-bus) device with its resources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsaDevicePlan {
    /// QOM type name (`isa-serial`, `mc146818rtc`, `i8042`, `hpet`, `ioapic`, ...).
    pub type_name: String,
    pub id: Option<String>,
    /// I/O port ranges.
    pub io: Vec<Range>,
    /// ISA/GSI interrupt lines.
    pub irqs: Vec<u32>,
    /// MMIO ranges.
    pub mmio: Vec<Range>,
}

/// An advisory finding (libvirt's connect rules) that does not stop the machine from building.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advisory {
    /// `id` or `type@bus:slot.fn` of the device concerned.
    pub device: String,
    pub message: String,
}

/// What a firmware-mapped I/O block is for (the firmware step programs it there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FirmwareRole {
    /// The ACPI PM register block (PMBASE / PMBA).
    PmBlock,
    /// The SMBus host registers.
    Smbus,
    /// The window PCI I/O BARs are allocated from.
    PciIo,
}

/// An I/O block the firmware maps, from the board's `firmware-io`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareIoPlan {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<FirmwareRole>,
    pub range: Range,
}

/// The whole machine, computed before anything is built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Resolved machine type name (`pc-q35-10.2`), never an alias.
    pub machine: String,
    pub family: Family,
    /// Every machine option with its resolved value (`usb=off`, `acpi=on`, ...).
    pub options: Properties,
    pub nodefaults: bool,
    pub cpus: u32,
    pub max_cpus: u32,
    /// Sockets, dies, cores and threads of the `max_cpus` possible CPUs.
    #[serde(default)]
    pub topology: crate::smp::CpuTopology,
    /// NUMA nodes, their RAM and each possible CPU's node (empty without `-numa`).
    #[serde(default)]
    pub numa: crate::numa::NumaPlan,
    pub memory: MemoryMap,
    /// Buses, root first, then in the order their bridges appear in `pci`.
    pub buses: Vec<BusPlan>,
    /// PCI functions in creation order (implicit first, then `-device` in command-line order).
    pub pci: Vec<PciFunctionPlan>,
    pub isa: Vec<IsaDevicePlan>,
    pub advisories: Vec<Advisory>,
    /// Ports on virtio-serial buses (`virtconsole`, `virtserialport`).
    #[serde(default)]
    pub virtio_ports: Vec<VirtioPortPlan>,
    /// The ACPI SCI's interrupt (GSI) (the board's `sci-irq`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sci_irq: Option<u32>,
    /// The ISA IRQ the firmware step routes each PIRQ line to (the board's `pirq-irqs`:
    /// PIRQ A, B, C, D; a router with more lines repeats the list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pirq_irqs: Vec<u8>,
    /// The south bridge's ACPI PCI hot-plug owns the secondary buses of cold-plugged bridges
    /// and ports (QEMU's acpi_pcihp_device_plug_cb): no standard hot-plug controller claims
    /// them and slots do not latch cold-plugged devices.
    #[serde(default)]
    pub acpi_bridge_hotplug: bool,
    /// The I/O blocks the firmware maps (PM block, SMBus, PCI I/O window) whose board
    /// condition holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub firmware_io: Vec<FirmwareIoPlan>,
    /// Drives on IDE buses (`ide-hd`, `ide-cd`).
    #[serde(default)]
    pub ide: Vec<IdeDrivePlan>,
    /// Devices on no bus (`vmcoreinfo`), in command-line order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub busless: Vec<BuslessDevicePlan>,
}

/// A device on no bus: what it is and its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuslessDevicePlan {
    pub type_name: String,
    pub id: Option<String>,
}

/// A drive on an IDE bus of a PCI IDE controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdeDrivePlan {
    pub type_name: String,
    pub id: Option<String>,
    /// `ide.N`.
    pub bus: String,
    /// Index in `Plan::pci` of the IDE function that owns the bus.
    pub controller: usize,
    /// Channel of that function (0 primary, 1 secondary).
    pub channel: u8,
    /// 0 master, 1 slave.
    pub unit: u8,
    /// An ATAPI CD-ROM (`ide-cd`) rather than a disk.
    pub cdrom: bool,
    /// Resolved properties (`drive`, `serial`, `cyls`, ...).
    pub properties: Properties,
}

/// A port of a virtio-serial-pci controller, with QEMU's port number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioPortPlan {
    pub type_name: String,
    pub id: Option<String>,
    /// The virtio-serial bus (`ID.0` of the controller, `virtio-serial-bus.N` without id).
    pub bus: String,
    /// Index in `Plan::pci` of the virtio-serial-pci function that owns the bus.
    pub controller: usize,
    /// Port number (0 is the legacy console port).
    pub nr: u32,
    /// `virtconsole` (a console port) rather than a plain `virtserialport`.
    pub console: bool,
    /// Properties with defaults (`chardev`, `name`, ...).
    pub properties: Properties,
}

/// e820 memory type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 memory type: reserved.
pub const E820_RESERVED: u32 = 2;

/// One e820 entry as the VMM hands it to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct E820Entry {
    pub base: u64,
    pub size: u64,
    /// `E820_RAM` (1) or `E820_RESERVED` (2).
    #[serde(rename = "type")]
    pub kind: u32,
}

/// Where a queried device of any kind would land (`Catalog::place_any`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Placement {
    Pci(PlacedDevice),
    Isa(PlacedIsaDevice),
    VirtioPort(VirtioPortPlan),
    Ide(IdeDrivePlan),
    Busless(BuslessDevicePlan),
}

/// Where a queried ISA device would land: its bus and the resources it would take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedIsaDevice {
    pub type_name: String,
    pub id: Option<String>,
    /// `isa.0`.
    pub bus: String,
    pub io: Vec<Range>,
    pub irqs: Vec<u32>,
}

/// Where a queried device would land (`Catalog::place`), without anything being changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacedDevice {
    /// Resolved QOM type (an alias given as driver is resolved).
    pub type_name: String,
    pub id: Option<String>,
    pub bus: String,
    pub slot: u8,
    pub function: u8,
    pub identity: PciIdentity,
    pub virtio: Option<VirtioMode>,
    /// Bus this device would provide (bridges and ports).
    pub provides_bus: Option<String>,
    /// Warnings QEMU would print and libvirt-rule mismatches.
    pub advisories: Vec<Advisory>,
}

impl MemoryMap {
    /// The e820 table: RAM (1) and Reserved (2) regions in address order, adjacent entries of
    /// the same type merged.
    pub fn e820(&self) -> Vec<E820Entry> {
        let mut out: Vec<E820Entry> = Vec::new();
        for r in &self.regions {
            let kind = match r.kind {
                RegionKind::Ram => E820_RAM,
                RegionKind::Reserved => E820_RESERVED,
                RegionKind::PciHole | RegionKind::Mmio => continue,
            };
            if let Some(last) = out.last_mut() {
                if last.kind == kind && last.base + last.size == r.range.base {
                    last.size += r.range.size;
                    continue;
                }
            }
            out.push(E820Entry {
                base: r.range.base,
                size: r.range.size,
                kind,
            });
        }
        out
    }

    /// The region named `name`.
    pub fn region(&self, name: &str) -> Option<&MemoryRegion> {
        self.regions.iter().find(|r| r.name == name)
    }
}

impl Plan {
    /// Where the firmware maps the block with `role`.
    pub fn firmware_block(&self, role: FirmwareRole) -> Option<Range> {
        self.firmware_io
            .iter()
            .find(|b| b.role == Some(role))
            .map(|b| b.range)
    }

    /// The e820 table of the machine (see [`MemoryMap::e820`]).
    pub fn e820(&self) -> Vec<E820Entry> {
        self.memory.e820()
    }

    /// The bus with id `id`.
    pub fn bus(&self, id: &str) -> Option<&BusPlan> {
        self.buses.iter().find(|b| b.id == id)
    }

    /// The function at `bus`:`slot`.`function`.
    pub fn function_at(&self, bus: &str, slot: u8, function: u8) -> Option<&PciFunctionPlan> {
        self.pci
            .iter()
            .find(|f| f.bus == bus && f.slot == slot && f.function == function)
    }

    /// The device (PCI) with id `id`.
    pub fn function_by_id(&self, id: &str) -> Option<&PciFunctionPlan> {
        self.pci.iter().find(|f| f.id.as_deref() == Some(id))
    }

    /// `bus:slot.fn type` lines of the PCI functions, e.g. `pcie.0:1f.0 ICH9-LPC` (handy in
    /// tests and logs).
    pub fn pci_summary(&self) -> Vec<String> {
        self.pci
            .iter()
            .map(|f| format!("{}:{:02x}.{:x} {}", f.bus, f.slot, f.function, f.type_name))
            .collect()
    }

    /// ISA/system device type names in plan order.
    pub fn isa_summary(&self) -> Vec<String> {
        self.isa.iter().map(|d| d.type_name.clone()).collect()
    }
}
