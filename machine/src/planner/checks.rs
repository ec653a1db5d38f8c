//! The planner's checks of what a request gives: `-m` sizes and the physical address
//! space, property values (defaults, compat properties, `-global`s, JSON value kinds) and
//! QEMU's `id_wellformed`.

use crate::device_types::DeviceType;
use crate::error::PlanError;
use crate::machine_types::MachineType;
use crate::properties::{PropType, PropertyDef};
use crate::request::{DeviceRequest, PlanRequest};
use crate::value::Properties;

/// QEMU aligns RAM to 8 KiB (`machine_set_mem`).
const RAM_ALIGN: u64 = 8192;
/// ACPI_MAX_RAM_SLOTS.
const MAX_RAM_SLOTS: u64 = 256;
/// x86-64's architectural limit of physical address bits (QEMU's TARGET_PHYS_ADDR_SPACE_BITS).
const MAX_PHYS_BITS: u8 = 52;

/// QEMU's `-m size=,slots=,maxmem=` rules (`machine_set_mem`, `pc_memory_init`): the RAM size
/// aligned up to 8 KiB, and the size of the memory hot-plug area.
pub(super) fn check_memory(
    req: &PlanRequest,
    layout: &crate::board::MemoryLayoutDef,
) -> Result<(u64, u64), PlanError> {
    let size = req
        .ram_size
        .checked_next_multiple_of(RAM_ALIGN)
        .ok_or(PlanError::RamTooLarge)?;
    let Some(max) = req.max_ram_size else {
        if req.ram_slots > 0 {
            return Err(PlanError::SlotsWithoutMaxMem);
        }
        return Ok((size, 0));
    };
    if max < size {
        return Err(PlanError::MaxMemBelowRam { max, size });
    }
    if req.ram_slots > 0 && max == size {
        return Err(PlanError::MaxMemEqualsRam { max, size });
    }
    if max == size || layout.flat {
        return Ok((size, 0));
    }
    if req.ram_slots > MAX_RAM_SLOTS {
        return Err(PlanError::TooManyMemorySlots(req.ram_slots));
    }
    if max % 4096 != 0 {
        return Err(PlanError::MaxMemUnaligned);
    }
    // pc_get_device_memory_range: the hot-pluggable part plus 1 GiB of alignment per slot.
    let device = (max - size).saturating_add(req.ram_slots.saturating_mul(1 << 30));
    Ok((size, device))
}

/// `pc_memory_init`'s check that everything mapped fits the CPU's physical address width.
pub(super) fn check_address_space(
    memory: &crate::plan::MemoryMap,
    phys_bits: Option<u8>,
) -> Result<(), PlanError> {
    let bits = phys_bits.unwrap_or(MAX_PHYS_BITS).min(MAX_PHYS_BITS);
    let limit = (1u64 << bits) - 1;
    let ram_end = |base: u64, size: u64| base.saturating_add(size).saturating_sub(1);
    let used = memory
        .regions
        .iter()
        .filter(|r| r.range.size > 0)
        .map(|r| ram_end(r.range.base, r.range.size))
        .chain(memory.device_memory.map(|d| ram_end(d.base, d.size)))
        .max()
        .unwrap_or(0);
    if used > limit {
        return Err(PlanError::AddressSpaceLimit { limit, used, bits });
    }
    Ok(())
}

/// Every property of `dev` with defaults, then the machine type's compat properties, then
/// `-global`s for its type or a parent type (QEMU's object_apply_global_props; a value that
/// does not decode is left for the VMM to report), then `given` (`id` and `bus` are not
/// properties).
pub(super) fn resolve_properties(
    dev: &DeviceType,
    machine: &MachineType,
    globals: &[crate::request::GlobalProperty],
    given: &[(String, String)],
) -> Result<Properties, PlanError> {
    let mut map = Properties::new();
    for p in &dev.properties {
        if let Some(d) = p.default_value() {
            map.insert(p.name.clone(), d);
        }
    }
    for ty in &dev.compat_match {
        if let Some(list) = machine.compat_index.get(ty) {
            for (prop, value) in list {
                if let Some(def) = dev.property(prop) {
                    if let Ok(v) = def.decode(owner(dev, def), value) {
                        map.insert(prop.clone(), v);
                    }
                }
            }
        }
    }
    for g in globals {
        if g.driver != dev.name && !dev.compat_match.contains(&g.driver) {
            continue;
        }
        if let Some(def) = dev.property(&g.property) {
            if let Ok(v) = def.decode(owner(dev, def), &g.value) {
                map.insert(g.property.clone(), v);
            }
        }
    }
    for (k, v) in given {
        if k == "id" || k == "bus" {
            continue;
        }
        let def = dev.property(k).ok_or_else(|| PlanError::UnknownProperty {
            ty: dev.name.clone(),
            property: k.clone(),
        })?;
        map.insert(k.clone(), def.decode(owner(dev, def), v)?);
    }
    Ok(map)
}

/// The QOM type that owns property `def` of `dev`, as QEMU's errors name it: a virtio
/// proxy's `mac` is an alias of its virtio device's (`Property 'virtio-net-device.mac'
/// doesn't take value ...`); everything else is the device's own.
fn owner<'a>(dev: &'a DeviceType, def: &PropertyDef) -> &'a str {
    match (&dev.virtio, def.ty) {
        (Some(v), PropType::MacAddr) => v.backend.as_deref().unwrap_or(&dev.name),
        _ => &dev.name,
    }
}

/// A JSON request's values against the types of the properties they set, as QEMU's
/// QObject input visitor reads them. Unknown properties are left to `resolve_properties`.
pub(super) fn check_json_kinds(dev: &DeviceType, req: &DeviceRequest) -> Result<(), PlanError> {
    use crate::request::JsonKind;
    for (name, kind) in &req.json_kinds {
        let Some(def) = dev.property(name) else {
            return Err(PlanError::UnknownProperty {
                ty: dev.name.clone(),
                property: name.clone(),
            });
        };
        let wrong = |expected: &str| {
            Err(PlanError::InvalidParameterType {
                name: name.clone(),
                expected: expected.to_string(),
            })
        };
        match def.ty {
            PropType::Bool if *kind != JsonKind::Bool => return wrong("boolean"),
            PropType::Uint8
            | PropType::Uint16
            | PropType::Uint32
            | PropType::Uint64
            | PropType::Size
                if *kind != JsonKind::Integer =>
            {
                return Err(PlanError::IntegerOutOfRange {
                    name: name.clone(),
                    ty: "uint64".to_string(),
                })
            }
            PropType::Int32 | PropType::Int64 if *kind != JsonKind::Integer => {
                return wrong("integer")
            }
            PropType::Str
            | PropType::Enum
            | PropType::OnOffAuto
            | PropType::OnOffSplit
            | PropType::MacAddr
                if *kind != JsonKind::String =>
            {
                return wrong("string")
            }
            _ => {}
        }
    }
    Ok(())
}

/// QEMU's `id_wellformed`: a letter, then letters, digits, `-`, `.`, `_`.
pub(super) fn id_wellformed(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
}
