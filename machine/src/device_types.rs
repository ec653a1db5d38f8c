//! Device types as data: the JSON form (`DeviceTypeDef`, with QOM-style inheritance) and the
//! resolved `DeviceType` the planner and the help texts use (ancestry, interfaces, PCI
//! identity, virtio kind, the bus a bridge provides, properties with defaults).

use crate::error::CatalogError;
use crate::plan::BusKind;
use crate::properties::{parse_u64_auto, PropertyDef};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::{BTreeMap, HashMap};

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
    pub fn eval(&self, props: &BTreeMap<String, String>) -> bool {
        match self {
            BoolOrProp::Fixed(b) => *b,
            BoolOrProp::Prop(p) => {
                let name = p.strip_prefix("prop:").unwrap_or(p);
                props
                    .get(name)
                    .map(|v| v == "true" || v == "on")
                    .unwrap_or(false)
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
    /// libvirt's controller model name for this type (`dmi-to-pci-bridge`).
    #[serde(default)]
    pub libvirt_model: Option<String>,
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
    pub libvirt_model: Option<String>,
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

/// Resolve every definition (inheritance, property sets) into `DeviceType`s, in definition
/// order. Definitions whose parent is not in `defs` are an error.
pub fn resolve_device_types(
    defs: &[DeviceTypeDef],
    property_sets: &BTreeMap<String, Vec<PropertyDef>>,
) -> Result<Vec<DeviceType>, CatalogError> {
    let by_name: HashMap<&str, &DeviceTypeDef> =
        defs.iter().map(|d| (d.name.as_str(), d)).collect();
    let mut out = Vec::with_capacity(defs.len());
    for def in defs {
        // Chain from the type up to the root.
        let mut chain = vec![def];
        let mut cur = def;
        while let Some(p) = &cur.parent {
            let parent =
                by_name
                    .get(p.as_str())
                    .ok_or_else(|| CatalogError::UnknownDeviceParent {
                        name: cur.name.clone(),
                        parent: p.clone(),
                    })?;
            if chain.iter().any(|c| c.name == parent.name) || chain.len() > 64 {
                return Err(CatalogError::UnknownDeviceParent {
                    name: def.name.clone(),
                    parent: p.clone(),
                });
            }
            chain.push(parent);
            cur = parent;
        }
        // Fold from the root down so nearer definitions win.
        let mut t = DeviceType {
            name: def.name.clone(),
            parent: def.parent.clone(),
            ancestors: chain[1..].iter().map(|d| d.name.clone()).collect(),
            is_abstract: def.is_abstract,
            user_creatable: true,
            category: None,
            description: def.description.clone(),
            alias: def.alias.clone(),
            bus: None,
            interfaces: Vec::new(),
            pci: None,
            virtio: None,
            bridge: None,
            isa: None,
            connect: None,
            clears_default: def.clears_default.clone(),
            libvirt_model: None,
            properties: Vec::new(),
            compat_match: Vec::new(),
        };
        let mut pci = PciDef::default();
        let mut has_pci = false;
        let mut props: BTreeMap<String, PropertyDef> = BTreeMap::new();
        for d in chain.iter().rev() {
            if let Some(u) = d.user_creatable {
                t.user_creatable = u;
            }
            if d.category.is_some() {
                t.category = d.category;
            }
            if d.bus.is_some() {
                t.bus = d.bus.clone();
            }
            for i in &d.interfaces {
                if !t.interfaces.contains(i) {
                    t.interfaces.push(i.clone());
                }
            }
            if let Some(p) = &d.pci {
                has_pci = true;
                merge_pci(&mut pci, p);
            }
            if d.virtio.is_some() {
                t.virtio = d.virtio.clone();
            }
            if let (Some(v), Some(variant)) = (t.virtio.as_mut(), d.virtio_variant) {
                v.variant = variant;
            }
            if d.bridge.is_some() {
                t.bridge = d.bridge.clone();
            }
            if d.isa.is_some() {
                t.isa = d.isa.clone();
            }
            if d.connect.is_some() {
                t.connect = d.connect.clone();
            }
            if d.libvirt_model.is_some() {
                t.libvirt_model = d.libvirt_model.clone();
            }
            for set in &d.property_sets {
                let list =
                    property_sets
                        .get(set)
                        .ok_or_else(|| CatalogError::UnknownPropertySet {
                            name: d.name.clone(),
                            set: set.clone(),
                        })?;
                for p in list {
                    props.insert(p.name.clone(), p.clone());
                }
            }
            for p in &d.properties {
                props.insert(p.name.clone(), p.clone());
            }
        }
        if has_pci {
            t.pci = Some(PciSpec {
                vendor: pci.vendor.map(|n| n.0 as u16).unwrap_or(0),
                device: pci.device.map(|n| n.0 as u16).unwrap_or(0),
                class: pci.class.map(|n| n.0 as u32).unwrap_or(0),
                revision: pci.revision.map(|n| n.0 as u8).unwrap_or(0),
                subsystem: pci.subsystem.unwrap_or(SubsystemDef::Default),
                header_type: pci.header_type.unwrap_or(0),
            });
        }
        t.properties = props.into_values().collect();
        t.compat_match.push(t.name.clone());
        t.compat_match.extend(t.ancestors.iter().cloned());
        if let Some(v) = &t.virtio {
            // The proxy always carries a virtio device; its compat properties apply.
            let backend = v
                .backend
                .clone()
                .unwrap_or_else(|| "virtio-device".to_string());
            let mut cur = Some(backend);
            while let Some(name) = cur {
                cur = by_name.get(name.as_str()).and_then(|d| d.parent.clone());
                if !t.compat_match.contains(&name) {
                    t.compat_match.push(name);
                }
            }
            if !t.compat_match.iter().any(|n| n == "virtio-device") {
                t.compat_match.push("virtio-device".to_string());
            }
        }
        out.push(t);
    }
    Ok(out)
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
