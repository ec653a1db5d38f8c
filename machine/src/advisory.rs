//! libvirt's connect rules (`virDomainPCIAddressBusSetModel` and
//! `qemuDomainDeviceCalculatePCIConnectFlags`) as an advisory check: QEMU accepts more than
//! libvirt would configure, so a mismatch is reported in `Plan::advisories`, never refused.

use crate::device_types::DeviceType;
use crate::plan::Family;

/// The libvirt connect type of `dev` on a machine of `family`: `pcie-device` falls back to
/// `pci-device` on machines without a PCIe root (libvirt's `pcieFlags`).
pub fn connect_type(dev: &DeviceType, family: Family) -> Option<String> {
    let c = dev.connect.as_deref()?;
    if c == "pcie-device" && family != Family::Q35 {
        return Some("pci-device".to_string());
    }
    Some(c.to_string())
}

/// A message when a bus whose controller is `bus_model` (accepting `accepts`) would not get
/// `dev` from libvirt; `None` when libvirt agrees or has no rule.
pub fn check_connect(
    dev: &DeviceType,
    family: Family,
    bus_id: &str,
    bus_model: Option<&str>,
    accepts: &[String],
) -> Option<String> {
    let connect = connect_type(dev, family)?;
    if accepts.is_empty() || accepts.contains(&connect) {
        return None;
    }
    let model = bus_model.unwrap_or("bus");
    let hint = if connect == "pci-device" && accepts.iter().any(|a| a == "pcie-device") {
        if dev.virtio.is_some() {
            " (transitional virtio devices only work in conventional PCI slots)"
        } else {
            " (a conventional PCI device on a PCIe bus)"
        }
    } else {
        ""
    };
    Some(format!(
        "libvirt would not connect {} ({connect}) to {model} '{bus_id}', which accepts {}{hint}",
        dev.name,
        accepts.join(", ")
    ))
}

/// A message when a switch port sits below something other than the controller libvirt
/// requires (a downstream port only below an upstream port).
pub fn check_requires_parent(
    dev: &DeviceType,
    parent_model: Option<&str>,
    bus_id: &str,
) -> Option<String> {
    let need = dev.bridge.as_ref()?.requires_parent.as_deref()?;
    if parent_model == Some(need) {
        return None;
    }
    Some(format!(
        "{} belongs below a {need}, not on '{bus_id}' ({})",
        dev.name,
        parent_model.unwrap_or("unknown controller")
    ))
}
