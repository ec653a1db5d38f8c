//! QEMU's virtio-pci mode rule (`virtio_pci_realize` / `virtio_pci_device_plugged`): legacy,
//! modern, PCIe capability and the resulting config-header identity, from the type variant,
//! the `disable-legacy`/`disable-modern` properties and the bus the function sits on.

use crate::device_types::{VirtioDef, VirtioVariant};
use crate::error::PlanError;
use crate::plan::{BusKind, PciIdentity, VirtioMode};
use crate::value::Properties;

/// Red Hat / Qumranet vendor id used by every virtio-pci function.
pub const VIRTIO_VENDOR: u16 = 0x1af4;
/// `PCI_DEVICE_ID_VIRTIO_10_BASE`.
pub const VIRTIO_10_BASE: u16 = 0x1040;
/// QEMU's default subsystem id (`PCI_SUBDEVICE_ID_QEMU`).
pub const QEMU_SUBSYSTEM_ID: u16 = 0x1100;

/// The outcome for one virtio-pci function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioResolution {
    pub mode: VirtioMode,
    /// Legacy was allowed only because the machine type disables the modern-only check
    /// (QEMU warns "device is modern-only, but for backward compatibility legacy is allowed").
    pub legacy_check_warning: bool,
}

/// Resolve the mode of a virtio-pci function.
///
/// `props` are the function's resolved properties (`disable-legacy` as on/off/auto,
/// `disable-modern`, `x-disable-pcie`, `x-disable-legacy-check` as true/false).
pub fn resolve(
    def: &VirtioDef,
    props: &Properties,
    bus_kind: BusKind,
    bus_is_root: bool,
) -> Result<VirtioResolution, PlanError> {
    let flag = |name: &str| props.bool(name, false).unwrap_or(false);
    let pcie_port = bus_kind == BusKind::Pcie && !bus_is_root;

    // Instance defaults of the variant (the variants have no disable-* properties).
    let (disable_legacy, mut modern) = match def.variant {
        VirtioVariant::Generic => (
            props
                .str("disable-legacy", "auto")
                .unwrap_or("auto")
                .to_string(),
            !flag("disable-modern"),
        ),
        VirtioVariant::Transitional => ("off".to_string(), true),
        VirtioVariant::NonTransitional => ("on".to_string(), true),
    };
    // virtio_pci_realize: auto becomes on only behind a PCIe port.
    let mut legacy = match disable_legacy.as_str() {
        "on" => false,
        "off" => true,
        _ => !pcie_port,
    };
    if !modern && !legacy {
        return Err(PlanError::VirtioNoMode);
    }
    // The proxy's own realize may force virtio 1.0.
    if def.force_virtio_1 {
        legacy = false;
        modern = true;
    }
    // virtio_pci_device_plugged: legacy only for types that support it.
    let mut legacy_check_warning = false;
    if legacy && !def.legacy_allowed() {
        if flag("x-disable-legacy-check") {
            legacy_check_warning = true;
        } else {
            return Err(PlanError::VirtioModernOnly);
        }
    }
    Ok(VirtioResolution {
        mode: VirtioMode {
            device_type: def.device_type,
            legacy,
            modern,
            pcie_capability: pcie_port && modern && !flag("x-disable-pcie"),
        },
        legacy_check_warning,
    })
}

/// The config-header identity for a resolved mode; `base` carries the class code.
pub fn identity(def: &VirtioDef, mode: &VirtioMode, class_code: u32) -> PciIdentity {
    let modern_id = VIRTIO_10_BASE + def.device_type;
    if mode.legacy {
        PciIdentity {
            vendor_id: VIRTIO_VENDOR,
            device_id: def
                .legacy_device_id
                .map(|n| n.0 as u16)
                .unwrap_or(modern_id),
            class_code,
            revision: 0,
            subsystem_vendor_id: Some(VIRTIO_VENDOR),
            subsystem_id: Some(def.device_type),
            header_type: 0,
        }
    } else {
        PciIdentity {
            vendor_id: VIRTIO_VENDOR,
            device_id: modern_id,
            class_code,
            revision: 1,
            subsystem_vendor_id: Some(VIRTIO_VENDOR),
            subsystem_id: Some(QEMU_SUBSYSTEM_ID),
            header_type: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_types::Num;

    fn net(variant: VirtioVariant) -> VirtioDef {
        VirtioDef {
            device_type: 1,
            legacy_device_id: Some(Num(0x1000)),
            variant,
            force_virtio_1: false,
            legacy_allowed: None,
            backend: None,
        }
    }

    fn props(pairs: &[(&str, &str)]) -> Properties {
        let mut p = Properties::new();
        for (k, v) in pairs {
            p.insert_text(*k, *v);
        }
        p
    }

    #[test]
    fn mode_table() {
        use BusKind::*;
        use VirtioVariant::*;
        // (variant, props, bus kind, root, legacy, modern, pcie cap)
        type Row<'a> = (
            VirtioVariant,
            &'a [(&'a str, &'a str)],
            BusKind,
            bool,
            bool,
            bool,
            bool,
        );
        let table: &[Row] = &[
            (Generic, &[], Pci, true, true, true, false),
            (Generic, &[], Pcie, true, true, true, false),
            (Generic, &[], Pcie, false, false, true, true),
            (
                Generic,
                &[("disable-legacy", "off")],
                Pcie,
                false,
                true,
                true,
                true,
            ),
            (Generic, &[], Pci, false, true, true, false),
            (NonTransitional, &[], Pcie, true, false, true, false),
            (Transitional, &[], Pcie, false, true, true, true),
            (
                Generic,
                &[("disable-modern", "true")],
                Pci,
                true,
                true,
                false,
                false,
            ),
        ];
        for (i, (v, p, kind, root, legacy, modern, cap)) in table.iter().enumerate() {
            let r = resolve(&net(*v), &props(p), *kind, *root).unwrap();
            assert_eq!(
                (r.mode.legacy, r.mode.modern, r.mode.pcie_capability),
                (*legacy, *modern, *cap),
                "row {i}"
            );
        }
        let e = resolve(
            &net(Generic),
            &props(&[("disable-modern", "true")]),
            BusKind::Pcie,
            false,
        )
        .unwrap_err();
        assert_eq!(e, PlanError::VirtioNoMode);
    }
}
