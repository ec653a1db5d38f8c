//! Error types: `PlanError` for everything a request can get wrong (texts are QEMU's where QEMU
//! has one), `CatalogError` for catalog files that cannot be loaded.

use std::path::PathBuf;
use thiserror::Error;

/// Why a plan (or a placement query) was refused.
///
/// The `Display` text of each variant is exactly QEMU's message where QEMU has one, so a
/// management tool sees the same error from machina as from `qemu-system-x86_64`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlanError {
    /// `-machine foo` with an unknown machine type.
    #[error("unsupported machine type: \"{0}\"")]
    UnknownMachine(String),
    /// `-machine q35,foo=bar`: the machine has no such property.
    #[error("Property '{machine}-machine.{option}' not found")]
    UnknownMachineOption { machine: String, option: String },
    /// A boolean option or property that is not on/off (QEMU accepts on/yes/true/y, off/no/false/n).
    #[error("Parameter '{0}' expects 'on' or 'off'")]
    ExpectsBool(String),
    /// An enum option or property (OnOffAuto, ...) with a value outside the enum.
    #[error("Parameter '{name}' does not accept value '{value}'")]
    BadEnumValue { name: String, value: String },
    /// An integer property whose text is not a number.
    #[error("Parameter '{0}' expects integer")]
    ExpectsInteger(String),
    /// An integer property out of the range of its type (`uint8_t`, `uint16_t`, ...).
    #[error("Parameter '{name}' expects {ty}")]
    IntegerOutOfRange { name: String, ty: String },
    /// A size option that is not a size (`4G`, `512M`, `1024`).
    #[error("Parameter '{0}' expects size")]
    ExpectsSize(String),
    /// A value QEMU accepts but machina does not build (e.g. `smm=on`).
    #[error("Property '{machine}-machine.{option}' value '{value}' is not supported by machina (supported: {supported})")]
    UnsupportedOptionValue {
        machine: String,
        option: String,
        value: String,
        supported: String,
    },
    /// `smm=on` where the accelerator has no SMM (QEMU's x86_machine_is_smm_enabled).
    #[error("System Management Mode not supported by this hypervisor.")]
    SmmUnsupported,
    /// `max-ram-below-4g` above 4 GiB.
    #[error("Machine option 'max-ram-below-4g={0}' expects size less than or equal to 4G")]
    MaxRamBelow4gTooLarge(u64),
    /// `-smp 0`.
    #[error("Invalid CPU topology: CPU topology parameters must be greater than zero")]
    ZeroCpus,
    /// More CPUs than the machine type supports.
    #[error("Invalid SMP CPUs {cpus}. The max CPUs supported by machine '{machine}' is {max}")]
    TooManyCpus {
        cpus: u32,
        machine: String,
        max: u32,
    },
    /// An `-smp` topology QEMU refuses (its text).
    #[error("{0}")]
    Topology(String),
    /// A `-numa` configuration QEMU refuses (its text, naming the option where QEMU does).
    #[error("{0}")]
    Numa(String),
    /// `-m 0`.
    #[error("Invalid RAM size 0: RAM size must be greater than zero")]
    ZeroRam,
    /// A RAM size that does not fit once aligned.
    #[error("ram size too large")]
    RamTooLarge,
    /// `-m size=256M,maxmem=128M`.
    #[error("invalid value of maxmem: maximum memory size (0x{max:x}) must be at least the initial memory size (0x{size:x})")]
    MaxMemBelowRam { max: u64, size: u64 },
    /// `-m 256M,maxmem=256M,slots=1`.
    #[error("invalid value of maxmem: memory slots were specified but maximum memory size (0x{max:x}) is equal to the initial memory size (0x{size:x})")]
    MaxMemEqualsRam { max: u64, size: u64 },
    /// `-m 256,slots=2` without `maxmem`.
    #[error("slots specified but no max-size")]
    SlotsWithoutMaxMem,
    /// More memory slots than ACPI can describe (256).
    #[error("unsupported amount of memory slots: {0}")]
    TooManyMemorySlots(u64),
    /// `maxmem` not a multiple of the page size.
    #[error("maximum memory size must by aligned to multiple of 4096 bytes")]
    MaxMemUnaligned,
    /// The memory map (RAM, hot-plug area, 64-bit PCI hole) ends above what the CPU can
    /// address.
    #[error("Address space limit 0x{limit:x} < 0x{used:x} phys-bits too low ({bits})")]
    AddressSpaceLimit { limit: u64, used: u64, bits: u8 },
    /// A request in JSON form that is not a JSON object with a string `driver`.
    #[error("{0}")]
    BadDeviceSyntax(String),
    /// A virtio-serial port refused by the bus (QEMU's virtio-serial-bus texts).
    #[error("{0}")]
    VirtioPort(String),
    /// An IDE drive refused by its bus or realize (QEMU's hw/ide texts).
    #[error("{0}")]
    Ide(String),
    /// A device on no bus refused by qdev or its realize (`vmcoreinfo`'s texts).
    #[error("{0}")]
    Busless(String),
    /// `-device` without a driver.
    #[error("Parameter 'driver' is missing")]
    MissingDriver,
    /// `-device foo` with an unknown device type.
    #[error("'{0}' is not a valid device model name")]
    UnknownDevice(String),
    /// A type that is not user-creatable named in `-device`.
    #[error("Parameter 'driver' expects a pluggable device type")]
    NotUserCreatable(String),
    /// An abstract type named in `-device`.
    #[error("Parameter 'driver' expects a non-abstract device type")]
    AbstractDevice(String),
    /// `-device virtio-net-pci,foo=1`.
    #[error("Property '{ty}.{property}' not found")]
    UnknownProperty { ty: String, property: String },
    /// A property value its parser rejects (e.g. `addr=0x20`).
    #[error("Property '{ty}.{property}' doesn't take value '{value}'")]
    BadPropertyValue {
        ty: String,
        property: String,
        value: String,
    },
    /// JSON `"addr": N` outside -1..=255.
    #[error("Parameter 'addr' expects a value between -1 and 255")]
    DevfnOutOfRange,
    /// `id=` that is not an identifier.
    #[error("Parameter 'id' expects an identifier")]
    BadId(String),
    /// Two devices with the same `id` (JSON `-device` / QMP path of QEMU).
    #[error("Duplicate device ID '{0}'")]
    DuplicateId(String),
    /// Two devices with the same `id` (QemuOpts `-device` keyval path of QEMU).
    #[error("Duplicate ID '{0}' for device")]
    DuplicateIdOpts(String),
    /// `bus=` naming no bus.
    #[error("Bus '{0}' not found")]
    BusNotFound(String),
    /// A PCI device on a machine without a PCI bus (`-M none`).
    #[error("No '{bus_type}' bus found for device '{driver}'")]
    NoBusForDevice { bus_type: String, driver: String },
    /// Automatic addressing found no free slot.
    #[error("PCI: no slot/function available for {0}, all in use or reserved")]
    NoSlotAvailable(String),
    /// Explicit address already taken.
    #[error("PCI: slot {slot} function {function} not available for {device}, in use by {used_by},id={used_id}")]
    SlotInUse {
        slot: u8,
        function: u8,
        device: String,
        used_by: String,
        /// `(null)` for implicit devices, as glibc prints a NULL `%s`.
        used_id: String,
    },
    /// Explicit address in a reserved slot.
    #[error("PCI: slot {slot} function {function} not available for {device}, reserved")]
    SlotReserved {
        slot: u8,
        function: u8,
        device: String,
    },
    /// Hot-plugging function N>0 while function 0 is present.
    #[error("PCI: slot {slot} function 0 already occupied by {used_by}, new func {device} cannot be exposed to guest.")]
    HotplugFunctionBehindFunction0 {
        slot: u8,
        used_by: String,
        device: String,
    },
    /// Function > 0 while function 0 is present without multifunction=on.
    #[error("PCI: single function device can't be populated in function {slot:x}.{function:x}")]
    SingleFunctionSlot { slot: u8, function: u8 },
    /// Function 0 without multifunction=on while other functions of the slot exist.
    #[error("PCI: {slot:x}.0 indicates single function, but {slot:x}.{function:x} is already populated.")]
    IndicatesSingleFunction { slot: u8, function: u8 },
    /// Slot 0 of a bus whose bridge has a standard hot-plug controller.
    #[error("Unsupported PCI slot {slot} for standard hotplug controller. Valid slots are between {min} and {max}.")]
    ShpcSlot { slot: u8, min: u8, max: u8 },
    /// `pci-bridge` without `chassis_nr` (or with 0).
    #[error("Bridge chassis not specified. Each bridge is required to be assigned a unique chassis id > 0.")]
    BridgeChassisNotSpecified,
    /// Two PCIe slots with the same (chassis, slot).
    #[error("Can't add chassis slot, error -16")]
    ChassisSlotInUse,
    /// virtio with both legacy and modern disabled.
    #[error("device cannot work as neither modern nor legacy mode is enabled")]
    VirtioNoMode,
    /// A modern-only virtio type with legacy enabled.
    #[error("device is modern-only, use disable-legacy=on")]
    VirtioModernOnly,
    /// Hot-plug into a root or downstream port whose slot has no hot-plug capability
    /// (`hotplug=off`); `(null)` for a port without id.
    #[error("Hot-plug failed: unsupported by the port device '{0}'")]
    PortHotplugUnsupported(String),
    /// Hot-plug into a bus that has no hot-plug controller.
    #[error("Bus '{0}' does not support hotplugging")]
    BusNoHotplug(String),
    /// A `device_add` after start that QEMU would accept but machina cannot build on a
    /// running machine (bridges and ports, non-PCI devices).
    #[error("hot-plugging {0} is not supported by machina yet")]
    HotplugUnsupported(String),
    /// A JSON value of the wrong type for its property (QEMU's input visitor).
    #[error("Invalid parameter type for '{name}', expected: {expected}")]
    InvalidParameterType { name: String, expected: String },
    /// A property value a device's own checks refuse (QEMU's realize and setter texts).
    #[error("{0}")]
    InvalidValue(String),
    /// `isa-serial,index=4` (QEMU: "Max. supported number of ISA serial ports is 4.").
    #[error("Max. supported number of {what} is {max}.")]
    IsaIndexTooLarge { what: String, max: usize },
    /// A device named onto a bus of the wrong kind (`isa-serial,bus=pci.0`).
    #[error("Device '{driver}' can't go on {bus_kind} bus")]
    WrongBusKind { driver: String, bus_kind: String },
    /// An ISA IRQ beyond 15 (QEMU 7.2 aborts on an assertion).
    #[error("ISA IRQ {0} does not exist (ISA IRQs are 0-15)")]
    IsaIrq(u64),
    /// ISA ports beyond the 16-bit I/O space.
    #[error("I/O ports 0x{base:x}-0x{end:x} are outside the 16-bit I/O space")]
    IsaIoOutOfRange { base: u64, end: u64 },
    /// ISA ports over another device or a firmware-mapped block.
    #[error("I/O ports 0x{base:x}-0x{end:x} overlap {owner} at 0x{owner_base:x}-0x{owner_end:x}")]
    IsaIoOverlap {
        base: u64,
        end: u64,
        owner: String,
        owner_base: u64,
        owner_end: u64,
    },
    /// A device type that is not a PCI device (only PCI devices are planned with `-device`).
    #[error("device type '{0}' cannot be planned: only PCI devices are supported by -device")]
    NotPciDevice(String),
}

impl PlanError {
    /// The hint QEMU prints on a line of its own after some errors (`error_append_hint`).
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            PlanError::VirtioNoMode => Some("Set either disable-modern or disable-legacy to off"),
            _ => None,
        }
    }
}

/// Why a catalog file (built-in or user-supplied) could not be loaded.
#[derive(Debug, Error)]
pub enum CatalogError {
    #[error("cannot read machine definition file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid machine definition JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("machine type '{name}' inherits from unknown machine type '{parent}'")]
    UnknownParent { name: String, parent: String },
    #[error("machine type '{0}' has an inheritance cycle")]
    InheritanceCycle(String),
    #[error("machine type '{name}' uses unknown board '{board}'")]
    UnknownBoard { name: String, board: String },
    #[error("machine type '{name}' uses unknown compat set '{set}'")]
    UnknownCompatSet { name: String, set: String },
    #[error("board '{board}' uses unknown option set '{set}'")]
    UnknownOptionSet { board: String, set: String },
    #[error("machine type '{0}' lacks required field '{1}'")]
    MissingField(String, &'static str),
    #[error("device type '{0}' has an inheritance cycle")]
    DeviceInheritanceCycle(String),
    #[error("{kind} '{name}' inherits through more than {limit} levels")]
    TooDeep {
        kind: &'static str,
        name: String,
        limit: usize,
    },
    #[error("device type '{name}' has unknown parent '{parent}'")]
    UnknownDeviceParent { name: String, parent: String },
    #[error("device type '{name}' uses unknown property set '{set}'")]
    UnknownPropertySet { name: String, set: String },
    #[error("board '{board}' names unknown device type '{device}'")]
    UnknownImplicitDevice { board: String, device: String },
    #[error("invalid number '{0}' in machine definition")]
    BadNumber(String),
    #[error("invalid condition '{0}' in machine definition")]
    BadCondition(String),
    #[error("alias '{alias}' of '{name}' is already used by '{other}'")]
    DuplicateAlias {
        alias: String,
        name: String,
        other: String,
    },
    #[error("more than one machine type is marked as default ('{0}' and '{1}')")]
    DuplicateDefault(String, String),
}
