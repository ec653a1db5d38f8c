//! The backend list: adding a backend (unique ids, IDE drive slots) and checking that the
//! devices' references name backends that exist and fit.

use super::*;

/// Add `backend` unless its id is taken (QEMU: "Duplicate ID 'd0' for drive"), opening what
/// QEMU opens when the backend is created.
pub fn add(
    list: &mut Vec<Backend>,
    mut backend: Backend,
    context: &str,
) -> Result<(), BackendError> {
    let kind = match &backend {
        Backend::Drive { .. } => "drive",
        Backend::Tap { .. } | Backend::Netdev { .. } => "netdev",
        Backend::Chardev { .. } => "chardev",
        Backend::RngRandom { .. } | Backend::RngBuiltin { .. } | Backend::Filter { .. } => "object",
    };
    place_ide_drive(list, &mut backend, context)?;
    if list
        .iter()
        .any(|b| b.id() == backend.id() && b.property() == backend.property())
    {
        return Err(err(
            context,
            format!("Duplicate ID '{}' for {kind}", backend.id()),
        ));
    }
    open_backend(&mut backend, context)?;
    list.push(backend);
    Ok(())
}

/// Slots of `-drive if=ide` (QEMU's drive_new): a drive without index, bus or unit takes the
/// first free slot, a taken slot is refused; a drive without id gets QEMU's default one.
pub(super) fn place_ide_drive(
    list: &[Backend],
    backend: &mut Backend,
    context: &str,
) -> Result<(), BackendError> {
    const SLOTS: u32 = 4;
    let Backend::Drive {
        id,
        cdrom,
        ide_index: Some(index),
        ..
    } = backend
    else {
        return Ok(());
    };
    let taken = |i: u32| {
        list.iter()
            .any(|b| matches!(b, Backend::Drive { ide_index: Some(t), .. } if *t == i))
    };
    if *index == u32::MAX {
        *index = (0..SLOTS).find(|&i| !taken(i)).ok_or_else(|| {
            err(
                context,
                "machina has 4 IDE slots (2 buses of 2 units), all taken",
            )
        })?;
    } else if taken(*index) {
        return Err(err(
            context,
            format!(
                "drive with bus={}, unit={} (index={}) exists",
                *index / 2,
                *index % 2,
                *index
            ),
        ));
    }
    if id.is_empty() {
        *id = format!(
            "ide{}-{}{}",
            *index / 2,
            if *cdrom { "cd" } else { "hd" },
            *index % 2
        );
    }
    Ok(())
}

/// The QOM type whose property QEMU names in "can't find value" errors.
pub(super) fn property_owner(driver: &str, property: &str) -> String {
    let base = driver
        .trim_end_matches("-non-transitional")
        .trim_end_matches("-transitional");
    match (base.strip_suffix("-pci"), property) {
        (Some(virtio), "drive" | "netdev") => format!("{virtio}-device"),
        _ => driver.to_string(),
    }
}

/// Every backend a device refers to must exist, and what realize requires (virtio-blk's
/// drive) is set.
pub fn check_references(
    devices: &[DeviceRequest],
    backends: &[Backend],
) -> Result<(), BackendError> {
    for dev in devices {
        let context = format!("-device {}", dev.driver);
        for (prop, value) in &dev.properties {
            let wanted = match prop.as_str() {
                "drive" | "netdev" | "chardev" | "rng" => prop.as_str(),
                _ => continue,
            };
            let found = backends
                .iter()
                .any(|b| b.property() == wanted && b.id() == value);
            if !found {
                let message = if wanted == "rng" {
                    format!("Device '{value}' not found")
                } else {
                    format!(
                        "Property '{}.{wanted}' can't find value '{value}'",
                        property_owner(&dev.driver, wanted)
                    )
                };
                return Err(err(&context, message));
            }
        }
        // Realize's own refusal (virtio-blk: "drive property not set"), from the catalog.
        let required = machine::Catalog::builtin()
            .device_type(&dev.driver)
            .map(|t| t.required_properties.as_slice())
            .unwrap_or_default();
        if let Some(missing) = required
            .iter()
            .find(|p| !dev.properties.iter().any(|(k, _)| k == *p))
        {
            return Err(err(&context, format!("{missing} property not set")));
        }
    }
    Ok(())
}
