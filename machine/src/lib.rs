//! Machine types as data: the catalog of machine and device types, the plan of a machine
//! (buses, PCI functions, ISA devices, memory map) and QEMU's placement rules.
//!
//! Pure Rust, no KVM. The plan computed here is the single source of truth: the VMM's
//! builder, `-machine help` / `-device help` and every QMP answer come from it.
//!
//! ```
//! use machine::{Catalog, DeviceRequest, PlanRequest};
//! let catalog = Catalog::builtin();
//! let mut req = PlanRequest::new("q35");
//! req.nodefaults = true;
//! req.devices.push(DeviceRequest::parse("pcie-root-port,id=rp1,chassis=1").unwrap());
//! req.devices.push(DeviceRequest::parse("virtio-net-pci,bus=rp1").unwrap());
//! let plan = catalog.plan(&req).unwrap();
//! let net = plan.pci.last().unwrap();
//! assert_eq!((net.bus.as_str(), net.slot), ("rp1", 0));
//! assert!(!net.virtio.unwrap().legacy);
//! ```

mod advisory;
mod board;
mod catalog;
mod condition;
mod device_checks;
mod device_types;
mod error;
pub mod help;
mod ide;
mod isa;
mod mac;
mod machine_types;
mod memory;
pub mod numa;
mod options;
mod placement;
pub mod plan;
mod planner;
mod properties;
mod request;
pub mod smp;
mod value;
mod virtio_mode;
mod virtio_ports;

pub use board::{
    BoardDef, FixedRegionDef, ImplicitPciDef, IsaDeviceDef, MemoryLayoutDef, RootBusDef,
};
pub use catalog::{Catalog, CatalogFile, Resolved};
pub use condition::Condition;
pub use device_types::{
    BoolOrProp, BridgeDef, Category, ChassisRule, DeviceType, DeviceTypeDef, IsaTypeDef, Num,
    PciDef, PciSpec, SubsystemDef, VirtioDef, VirtioVariant, MAX_INHERITANCE_DEPTH,
};
pub use error::{CatalogError, PlanError};
pub use mac::{MacAddr, MacAllocator};
pub use machine_types::{CompatProperty, MachineType, MachineTypeDef};
pub use memory::split_ram;
pub use numa::{
    HmatAssociativity, HmatCacheInfo, HmatDataType, HmatHierarchy, HmatLbTable, HmatPlan,
    HmatPolicy, NumaArg, NumaNode, NumaOption, NumaPlan,
};
pub use options::{OptionDef, OptionSupport, ResolvedOptions};
pub use plan::*;
pub use planner::{HotplugMechanism, Pluggable};
pub use properties::{
    format_devfn, parse_bool, parse_devfn, parse_size, parse_u64_auto, qapi_bool_parse,
    qemu_strtosz, PropType, PropertyDef, SizeError,
};
pub use request::{
    parse_json_strict, split_keyval, DeviceRequest, DeviceSyntax, GlobalProperty, JsonKind,
    PlanRequest,
};
pub use smp::{CpuIds, CpuTopology, SmpKeys, SmpRules};
pub use value::{OnOffAuto, PropValue, Properties, PropertyError};

/// The QEMU release whose x86 machine types the built-in catalog reproduces.
pub const QEMU_VERSION: &str = "10.2";
