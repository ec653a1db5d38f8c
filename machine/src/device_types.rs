//! Device types as data: the JSON form (`DeviceTypeDef`, with QOM-style inheritance) and the
//! resolved `DeviceType` the planner and the help texts use (ancestry, interfaces, PCI
//! identity, virtio kind, the bus a bridge provides, properties with defaults).

use crate::error::CatalogError;
use crate::plan::BusKind;
use crate::properties::{parse_u64_auto, PropertyDef};
use crate::value::Properties;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

/// QEMU's device categories, in the order `-device help` prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    Bridge,
    Usb,
    Storage,
    Network,
    Input,
    Display,
    Sound,
    Misc,
    Cpu,
    Watchdog,
}

impl Category {
    /// All categories in help order.
    pub const ALL: [Category; 10] = [
        Category::Bridge,
        Category::Usb,
        Category::Storage,
        Category::Network,
        Category::Input,
        Category::Display,
        Category::Sound,
        Category::Misc,
        Category::Cpu,
        Category::Watchdog,
    ];

    /// The heading word `-device help` prints (`Controller/Bridge/Hub devices:`).
    pub fn heading(self) -> &'static str {
        match self {
            Category::Bridge => "Controller/Bridge/Hub",
            Category::Usb => "USB",
            Category::Storage => "Storage",
            Category::Network => "Network",
            Category::Input => "Input",
            Category::Display => "Display",
            Category::Sound => "Sound",
            Category::Misc => "Misc",
            Category::Cpu => "CPU",
            Category::Watchdog => "Watchdog",
        }
    }
}

/// A number written in JSON either as a number or as a string (`"0x8086"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Num(pub u64);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        match &v {
            serde_json::Value::Number(n) => n
                .as_u64()
                .map(Num)
                .ok_or_else(|| serde::de::Error::custom(format!("bad number {n}"))),
            serde_json::Value::String(s) => parse_u64_auto(s)
                .map(Num)
                .ok_or_else(|| serde::de::Error::custom(format!("bad number '{s}'"))),
            other => Err(serde::de::Error::custom(format!(
                "expected number, got {other}"
            ))),
        }
    }
}

/// How a function's subsystem IDs are set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubsystemDef {
    /// QEMU's default 1af4:1100 (`pci_set_default_subsystem_id`).
    Default,
    /// Type-1 header: no subsystem field.
    None,
    /// Fixed ids.
    Fixed { vendor: Num, id: Num },
}

/// Config-header identity of a PCI type; every field inherits from the parent type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PciDef {
    #[serde(default)]
    pub vendor: Option<Num>,
    #[serde(default)]
    pub device: Option<Num>,
    #[serde(default)]
    pub class: Option<Num>,
    #[serde(default)]
    pub revision: Option<Num>,
    #[serde(default)]
    pub subsystem: Option<SubsystemDef>,
    #[serde(default)]
    pub header_type: Option<u8>,
}

/// Resolved config-header identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PciSpec {
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
    pub revision: u8,
    pub subsystem: SubsystemDef,
    pub header_type: u8,
}

/// Which virtio-pci type variant a type is (QEMU's `virtio_pci_types_register`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VirtioVariant {
    /// `virtio-net-pci`: `disable-legacy`/`disable-modern` properties, auto rule.
    #[default]
    Generic,
    /// `...-transitional`: legacy forced on.
    Transitional,
    /// `...-non-transitional`: legacy forced off.
    NonTransitional,
}

/// What makes a type a virtio-pci proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct VirtioDef {
    /// Virtio device type (1 net, 2 blk, 3 console, 4 rng, 5 balloon, 8 scsi, 16 gpu, 18 input).
    pub device_type: u16,
    /// Legacy/transitional PCI device id (0x1000 + n); none for modern-only types.
    #[serde(default)]
    pub legacy_device_id: Option<Num>,
    #[serde(default)]
    pub variant: VirtioVariant,
    /// The proxy forces virtio 1.0 in realize (`virtio_pci_force_virtio_1`).
    #[serde(default)]
    pub force_virtio_1: bool,
    /// Whether the virtio type may run in legacy mode (`virtio_legacy_allowed`); defaults
    /// from the device type.
    #[serde(default)]
    pub legacy_allowed: Option<bool>,
    /// QOM type of the virtio backend device (`virtio-net-device`), whose compat properties
    /// also apply to the proxy.
    #[serde(default)]
    pub backend: Option<String>,
}

impl VirtioDef {
    /// QEMU's `virtio_legacy_allowed()` list unless the data says otherwise.
    pub fn legacy_allowed(&self) -> bool {
        self.legacy_allowed.unwrap_or(matches!(
            self.device_type,
            1 | 2 | 3 | 4 | 5 | 7 | 8 | 9 | 11 | 12
        ))
    }
}

/// A boolean that is either fixed or read from one of the device's properties.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BoolOrProp {
    Fixed(bool),
    /// `"prop:NAME"`: the value of property NAME.
    Prop(String),
}

impl BoolOrProp {
    /// Evaluate against resolved properties.
    pub fn eval(&self, props: &Properties) -> bool {
        match self {
            BoolOrProp::Fixed(b) => *b,
            BoolOrProp::Prop(p) => {
                let name = p.strip_prefix("prop:").unwrap_or(p);
                props.bool(name, false).unwrap_or(false)
            }
        }
    }
}

/// Which unique-number rule a bridge's realize enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChassisRule {
    /// PCIe slot: (`chassis`, `slot`) must be unique (`pcie_chassis_add_slot`).
    PcieSlot,
    /// pci-bridge: `chassis_nr` must be set and nonzero (slot-id capability).
    SlotId,
}

/// The secondary bus a bridge or port provides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BridgeDef {
    /// PCI or PCIe secondary bus.
    pub bus_kind: BusKind,
    /// Guest-usable slot range (root/downstream port: 0..=0).
    pub slot_min: u8,
    pub slot_max: u8,
    /// Behind a root or downstream port: QEMU warns for slot != 0.
    #[serde(default)]
    pub port: bool,
    /// Standard hot-plug controller present (slot 0 refused, automatic addressing from 1).
    #[serde(default = "fixed_false")]
    pub shpc: BoolOrProp,
    /// Whether devices can be hot-plugged on the secondary bus.
    pub hotplug: BoolOrProp,
    /// libvirt connect types the secondary bus accepts (advisory).
    #[serde(default)]
    pub accepts: Vec<String>,
    /// Uniqueness rule checked at realize.
    #[serde(default)]
    pub chassis: Option<ChassisRule>,
    /// The only parent bus kinds libvirt would connect this to (advisory), e.g. a switch
    /// downstream port only under an upstream port.
    #[serde(default)]
    pub requires_parent: Option<String>,
}

fn fixed_false() -> BoolOrProp {
    BoolOrProp::Fixed(false)
}

/// Fixed ISA resources of an ISA device type, chosen by its `index` property.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct IsaTypeDef {
    /// Size of the I/O window at `iobase`.
    pub io_size: u64,
    /// (iobase, irq) per index.
    pub by_index: Vec<(Num, u32)>,
    /// Which default device (`serial`, `parallel`) a `-device` of this type replaces.
    #[serde(default)]
    pub default_kind: Option<String>,
    /// The property that moves the I/O window (`iobase` when absent; pvpanic's `ioport`).
    #[serde(default)]
    pub base_property: Option<String>,
    /// The device has no interrupt line (ib700, pvpanic).
    #[serde(default)]
    pub no_irq: bool,
}

/// A device type as written in a catalog file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DeviceTypeDef {
    pub name: String,
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default, rename = "abstract")]
    pub is_abstract: bool,
    #[serde(default)]
    pub user_creatable: Option<bool>,
    #[serde(default)]
    pub category: Option<Category>,
    #[serde(default)]
    pub description: Option<String>,
    /// qdev alias (`virtio-net` for `virtio-net-pci`), accepted as a driver name.
    #[serde(default)]
    pub alias: Option<String>,
    /// Bus type name (`PCI`, `ISA`).
    #[serde(default)]
    pub bus: Option<String>,
    /// QOM interfaces (inherited and extended).
    #[serde(default)]
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub pci: Option<PciDef>,
    #[serde(default)]
    pub virtio: Option<VirtioDef>,
    /// Overrides the inherited virtio variant (the `-transitional` / `-non-transitional`
    /// leaves of a virtio base type).
    #[serde(default)]
    pub virtio_variant: Option<VirtioVariant>,
    #[serde(default)]
    pub bridge: Option<BridgeDef>,
    #[serde(default)]
    pub isa: Option<IsaTypeDef>,
    /// libvirt connect type of the device (`pci-device`, `pcie-device`, `pcie-root-port`, ...).
    #[serde(default)]
    pub connect: Option<String>,
    /// Default device a `-device` of this type replaces (`vga`).
    #[serde(default)]
    pub clears_default: Option<String>,
    /// The NIC `-nic` creates when no `model=` is given (machina's choice: the one NIC it
    /// moves frames for; not inherited).
    #[serde(default)]
    pub nic_default: bool,
    /// libvirt's controller model name for this type (`dmi-to-pci-bridge`).
    #[serde(default)]
    pub libvirt_model: Option<String>,
    /// Whether a device model stands behind the type's identity (inherited; default true).
    /// `false`: machina builds only its guest-visible layout (a PCI header and BARs with
    /// nothing behind them, as devices/src/pci/endpoints.rs builds them) so the machine looks like
    /// QEMU's; such types stay accepted by `-device` but are absent from introspection.
    #[serde(default)]
    pub modelled: Option<bool>,
    /// A virtio-serial port that is a console (`virtconsole`; inherited).
    #[serde(default)]
    pub console: Option<bool>,
    /// IDE buses the controller provides (`ide.N`, two units each; inherited).
    #[serde(default)]
    pub ide_buses: Option<u8>,
    /// An ATAPI (packet) device on an IDE bus rather than an ATA disk (inherited).
    #[serde(default)]
    pub atapi: Option<bool>,
    /// A south bridge whose ACPI PCI hot-plug takes over the secondary buses of cold-plugged
    /// bridges and ports while all these bool properties are on (acpi_pcihp_device_plug_cb;
    /// inherited).
    #[serde(default)]
    pub acpi_bridge_hotplug: Option<Vec<String>>,
    /// Properties realize refuses to go without ("drive property not set"; inherited).
    #[serde(default)]
    pub required_properties: Option<Vec<String>>,
    /// Named property lists merged into this type without becoming ancestors.
    #[serde(default)]
    pub property_sets: Vec<String>,
    #[serde(default)]
    pub properties: Vec<PropertyDef>,
}

/// A device type with everything inherited resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DeviceType {
    pub name: String,
    pub parent: Option<String>,
    /// Parent chain, nearest first (not including the type itself).
    pub ancestors: Vec<String>,
    #[serde(rename = "abstract")]
    pub is_abstract: bool,
    pub user_creatable: bool,
    pub category: Option<Category>,
    pub description: Option<String>,
    pub alias: Option<String>,
    pub bus: Option<String>,
    pub interfaces: Vec<String>,
    pub pci: Option<PciSpec>,
    pub virtio: Option<VirtioDef>,
    pub bridge: Option<BridgeDef>,
    pub isa: Option<IsaTypeDef>,
    pub connect: Option<String>,
    pub clears_default: Option<String>,
    /// `-nic` without `model=` creates this type (see `DeviceTypeDef::nic_default`).
    pub nic_default: bool,
    pub libvirt_model: Option<String>,
    /// A device model stands behind the type (see `DeviceTypeDef::modelled`).
    pub modelled: bool,
    /// A virtio-serial console port (see `DeviceTypeDef::console`).
    #[serde(skip)]
    pub console: bool,
    /// IDE buses the controller provides (see `DeviceTypeDef::ide_buses`).
    #[serde(skip)]
    pub ide_buses: u8,
    /// An ATAPI device on an IDE bus (see `DeviceTypeDef::atapi`).
    #[serde(skip)]
    pub atapi: bool,
    /// Properties that, all on, make this south bridge's ACPI hot-plug own cold-plugged
    /// bridges' buses (see `DeviceTypeDef::acpi_bridge_hotplug`); empty for other types.
    #[serde(skip)]
    pub acpi_bridge_hotplug: Vec<String>,
    /// Properties a `-device` of this type must set (see
    /// `DeviceTypeDef::required_properties`).
    #[serde(skip)]
    pub required_properties: Vec<String>,
    /// All properties (own, inherited, from property sets), sorted by name.
    pub properties: Vec<PropertyDef>,
    /// QOM types whose global/compat properties apply: self, ancestors, virtio backend chain.
    #[serde(skip)]
    pub compat_match: Vec<String>,
}

impl DeviceType {
    /// A property by name.
    pub fn property(&self, name: &str) -> Option<&PropertyDef> {
        self.properties
            .binary_search_by(|p| p.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.properties[i])
    }

    /// The properties introspection lists: those the model acts on (not `inert`).
    pub fn live_properties(&self) -> impl Iterator<Item = &PropertyDef> {
        self.properties.iter().filter(|p| !p.inert)
    }

    /// A device on no bus (QEMU's TYPE_DEVICE children such as `vmcoreinfo`): neither a
    /// PCI function nor an ISA device, and no bus type of its own or inherited.
    pub fn is_busless(&self) -> bool {
        self.bus.is_none() && !self.is_pci() && self.isa.is_none()
    }

    /// True for PCI function types (descendants of `pci-device`).
    pub fn is_pci(&self) -> bool {
        self.pci.is_some()
    }

    /// Whether the type implements QOM interface `iface`.
    pub fn implements(&self, iface: &str) -> bool {
        self.interfaces.iter().any(|i| i == iface)
    }

    /// QEMU's automatic `QEMU_PCI_CAP_EXPRESS`: implements only `pci-express-device`.
    pub fn is_express_only(&self) -> bool {
        self.implements("pci-express-device") && !self.implements("conventional-pci-device")
    }
}

/// The deepest inheritance chain a catalog may have (machine types and device types alike).
/// QEMU's own are under 20 deep; the limit keeps resolution of a hostile definition file
/// bounded (each type carries its ancestor list).
pub const MAX_INHERITANCE_DEPTH: usize = 256;

/// Where the resolution of one definition stands (for the memoised walk).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    Todo,
    /// On the chain being walked right now: meeting it again is a cycle.
    Walking,
    Done,
}

/// Why an inheritance walk failed (the callers word it for machine or device types).
#[derive(Debug)]
pub(crate) enum WalkError {
    UnknownParent { name: String, parent: String },
    Cycle(String),
    TooDeep(String),
}

/// The order in which to resolve `n` definitions so that every parent comes before its
/// children, in linear time: each definition is walked once (a walk stops at the first
/// resolved ancestor). `parent(i)` is the index of `i`'s parent, `Err(name)` for an unknown
/// parent, `Ok(None)` for a root.
pub(crate) fn resolution_order(
    n: usize,
    parent: impl Fn(usize) -> Result<Option<usize>, String>,
    name: impl Fn(usize) -> String,
) -> Result<Vec<usize>, WalkError> {
    let mut mark = vec![Mark::Todo; n];
    let mut depth = vec![0usize; n];
    let mut order = Vec::with_capacity(n);
    for start in 0..n {
        let mut chain = Vec::new();
        let mut cur = start;
        // Walk up to the first resolved ancestor (or a root).
        let base_depth = loop {
            match mark[cur] {
                Mark::Done => break Some(depth[cur]),
                Mark::Walking => return Err(WalkError::Cycle(name(cur))),
                Mark::Todo => {}
            }
            mark[cur] = Mark::Walking;
            chain.push(cur);
            if chain.len() > MAX_INHERITANCE_DEPTH + 1 {
                return Err(WalkError::TooDeep(name(start)));
            }
            match parent(cur).map_err(|p| WalkError::UnknownParent {
                name: name(cur),
                parent: p,
            })? {
                Some(p) => cur = p,
                None => break None,
            }
        };
        // Resolve from the top of the walked chain down.
        let first = base_depth.map_or(0, |b| b + 1);
        for (d, &i) in (first..).zip(chain.iter().rev()) {
            if d > MAX_INHERITANCE_DEPTH {
                return Err(WalkError::TooDeep(name(i)));
            }
            depth[i] = d;
            mark[i] = Mark::Done;
            order.push(i);
        }
    }
    Ok(order)
}

/// What a type inherits, folded from the root down (one per definition, memoised).
#[derive(Clone, Default)]
struct Folded {
    ancestors: Vec<String>,
    user_creatable: Option<bool>,
    category: Option<Category>,
    bus: Option<String>,
    interfaces: Vec<String>,
    pci: PciDef,
    has_pci: bool,
    virtio: Option<VirtioDef>,
    bridge: Option<BridgeDef>,
    isa: Option<IsaTypeDef>,
    connect: Option<String>,
    libvirt_model: Option<String>,
    modelled: Option<bool>,
    console: Option<bool>,
    ide_buses: Option<u8>,
    atapi: Option<bool>,
    acpi_bridge_hotplug: Option<Vec<String>>,
    required_properties: Option<Vec<String>>,
    props: BTreeMap<String, PropertyDef>,
}

impl Folded {
    /// `self` (the parent's fold) extended by `d`.
    fn extend(&mut self, d: &DeviceTypeDef, defs: &dyn DeviceDefs) -> Result<(), CatalogError> {
        if let Some(u) = d.user_creatable {
            self.user_creatable = Some(u);
        }
        if d.category.is_some() {
            self.category = d.category;
        }
        if d.bus.is_some() {
            self.bus = d.bus.clone();
        }
        for i in &d.interfaces {
            if !self.interfaces.contains(i) {
                self.interfaces.push(i.clone());
            }
        }
        if let Some(p) = &d.pci {
            self.has_pci = true;
            merge_pci(&mut self.pci, p);
        }
        if d.virtio.is_some() {
            self.virtio = d.virtio.clone();
        }
        if let (Some(v), Some(variant)) = (self.virtio.as_mut(), d.virtio_variant) {
            v.variant = variant;
        }
        if d.bridge.is_some() {
            self.bridge = d.bridge.clone();
        }
        if d.isa.is_some() {
            self.isa = d.isa.clone();
        }
        if d.connect.is_some() {
            self.connect = d.connect.clone();
        }
        if d.libvirt_model.is_some() {
            self.libvirt_model = d.libvirt_model.clone();
        }
        if d.modelled.is_some() {
            self.modelled = d.modelled;
        }
        if d.console.is_some() {
            self.console = d.console;
        }
        if d.ide_buses.is_some() {
            self.ide_buses = d.ide_buses;
        }
        if d.atapi.is_some() {
            self.atapi = d.atapi;
        }
        if d.acpi_bridge_hotplug.is_some() {
            self.acpi_bridge_hotplug = d.acpi_bridge_hotplug.clone();
        }
        if d.required_properties.is_some() {
            self.required_properties = d.required_properties.clone();
        }
        for set in &d.property_sets {
            let list = defs
                .property_set(set)
                .ok_or_else(|| CatalogError::UnknownPropertySet {
                    name: d.name.clone(),
                    set: set.clone(),
                })?;
            for p in list {
                self.props.insert(p.name.clone(), p.clone());
            }
        }
        for p in &d.properties {
            self.props.insert(p.name.clone(), p.clone());
        }
        Ok(())
    }
}

/// The walk error of a device type, worded for device types.
fn device_walk_error(e: WalkError) -> CatalogError {
    match e {
        WalkError::UnknownParent { name, parent } => {
            CatalogError::UnknownDeviceParent { name, parent }
        }
        WalkError::Cycle(name) => CatalogError::DeviceInheritanceCycle(name),
        WalkError::TooDeep(name) => CatalogError::TooDeep {
            kind: "device type",
            name,
            limit: MAX_INHERITANCE_DEPTH,
        },
    }
}

/// The device type definitions of a catalog, as the resolution reads them.
pub(crate) trait DeviceDefs {
    /// How many definitions there are.
    fn count(&self) -> usize;
    /// Definition `i` (in definition order).
    fn def(&self, i: usize) -> &DeviceTypeDef;
    /// The index of the definition named `name` (names, not aliases).
    fn index_of(&self, name: &str) -> Option<usize>;
    /// The property set `name`.
    fn property_set(&self, name: &str) -> Option<&[PropertyDef]>;
}

/// Resolve every definition (inheritance, property sets) into `DeviceType`s, in definition
/// order. Definitions whose parent is not in `defs` are an error, as are cycles and chains
/// deeper than `MAX_INHERITANCE_DEPTH`. Linear in the number of definitions: each type's
/// inherited part is folded once and reused by its children.
pub(crate) fn resolve_device_types(defs: &dyn DeviceDefs) -> Result<Vec<DeviceType>, CatalogError> {
    let n = defs.count();
    let parent = |i: usize| match &defs.def(i).parent {
        None => Ok(None),
        Some(p) => defs.index_of(p).map(Some).ok_or(p.clone()),
    };
    let order =
        resolution_order(n, parent, |i| defs.def(i).name.clone()).map_err(device_walk_error)?;
    let mut folded: Vec<Option<Folded>> = vec![None; n];
    for i in order {
        let def = defs.def(i);
        let mut f = match parent(i).ok().flatten() {
            Some(p) => {
                let mut f = folded[p].clone().unwrap_or_default();
                f.ancestors.insert(0, defs.def(p).name.clone());
                f
            }
            None => Folded::default(),
        };
        f.extend(def, defs)?;
        folded[i] = Some(f);
    }
    Ok(folded
        .into_iter()
        .enumerate()
        .map(|(i, f)| finish(defs.def(i), f.unwrap_or_default(), defs))
        .collect())
}

/// Resolve the one definition `i` (what [`resolve_device_types`] gives for it), by folding
/// its own chain: for looking up a few types without resolving the whole catalog.
pub(crate) fn resolve_device_type(
    defs: &dyn DeviceDefs,
    i: usize,
) -> Result<DeviceType, CatalogError> {
    let mut chain = vec![i];
    let mut cur = i;
    while let Some(p) = &defs.def(cur).parent {
        cur = defs.index_of(p).ok_or_else(|| {
            device_walk_error(WalkError::UnknownParent {
                name: defs.def(cur).name.clone(),
                parent: p.clone(),
            })
        })?;
        // A cycle also ends here: it never reaches a root.
        if chain.len() > MAX_INHERITANCE_DEPTH {
            return Err(device_walk_error(match chain.contains(&cur) {
                true => WalkError::Cycle(defs.def(cur).name.clone()),
                false => WalkError::TooDeep(defs.def(i).name.clone()),
            }));
        }
        chain.push(cur);
    }
    let mut f = Folded::default();
    for (n, &j) in chain.iter().rev().enumerate() {
        if n > 0 {
            // Nearest ancestor first, as the memoised walk builds it.
            f.ancestors
                .insert(0, defs.def(chain[chain.len() - n]).name.clone());
        }
        f.extend(defs.def(j), defs)?;
    }
    Ok(finish(defs.def(i), f, defs))
}

/// A resolved type from its definition and its folded inheritance.
fn finish(def: &DeviceTypeDef, f: Folded, defs: &dyn DeviceDefs) -> DeviceType {
    let mut t = DeviceType {
        name: def.name.clone(),
        parent: def.parent.clone(),
        ancestors: f.ancestors,
        is_abstract: def.is_abstract,
        user_creatable: f.user_creatable.unwrap_or(true),
        category: f.category,
        description: def.description.clone(),
        alias: def.alias.clone(),
        bus: f.bus,
        interfaces: f.interfaces,
        pci: None,
        virtio: f.virtio,
        bridge: f.bridge,
        isa: f.isa,
        connect: f.connect,
        clears_default: def.clears_default.clone(),
        nic_default: def.nic_default,
        libvirt_model: f.libvirt_model,
        modelled: f.modelled.unwrap_or(true),
        console: f.console.unwrap_or(false),
        ide_buses: f.ide_buses.unwrap_or(0),
        atapi: f.atapi.unwrap_or(false),
        acpi_bridge_hotplug: f.acpi_bridge_hotplug.unwrap_or_default(),
        required_properties: f.required_properties.unwrap_or_default(),
        properties: f.props.into_values().collect(),
        compat_match: Vec::new(),
    };
    if f.has_pci {
        let pci = f.pci;
        t.pci = Some(PciSpec {
            vendor: pci.vendor.map(|n| n.0 as u16).unwrap_or(0),
            device: pci.device.map(|n| n.0 as u16).unwrap_or(0),
            class: pci.class.map(|n| n.0 as u32).unwrap_or(0),
            revision: pci.revision.map(|n| n.0 as u8).unwrap_or(0),
            subsystem: pci.subsystem.unwrap_or(SubsystemDef::Default),
            header_type: pci.header_type.unwrap_or(0),
        });
    }
    t.compat_match.push(t.name.clone());
    t.compat_match.extend(t.ancestors.iter().cloned());
    if let Some(v) = &t.virtio {
        // The proxy always carries a virtio device; its compat properties apply. The
        // chain was checked above, but the backend may be any name: stop at a repeat.
        let backend = v
            .backend
            .clone()
            .unwrap_or_else(|| "virtio-device".to_string());
        let mut cur = Some(backend);
        let mut steps = 0;
        while let Some(name) = cur {
            steps += 1;
            if steps > MAX_INHERITANCE_DEPTH + 1 {
                break;
            }
            cur = defs
                .index_of(&name)
                .and_then(|i| defs.def(i).parent.clone());
            if !t.compat_match.contains(&name) {
                t.compat_match.push(name);
            }
        }
        if !t.compat_match.iter().any(|n| n == "virtio-device") {
            t.compat_match.push("virtio-device".to_string());
        }
    }
    t
}

fn merge_pci(into: &mut PciDef, from: &PciDef) {
    if from.vendor.is_some() {
        into.vendor = from.vendor;
    }
    if from.device.is_some() {
        into.device = from.device;
    }
    if from.class.is_some() {
        into.class = from.class;
    }
    if from.revision.is_some() {
        into.revision = from.revision;
    }
    if from.subsystem.is_some() {
        into.subsystem = from.subsystem.clone();
    }
    if from.header_type.is_some() {
        into.header_type = from.header_type;
    }
}
