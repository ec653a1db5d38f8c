//! PCI functions: placing one on its bus (address, multifunction, plug rules), the
//! identity its config header shows (virtio's `pcie_port` mode), the chassis/slot rules of
//! ports and bridges, the advisories a connection earns, and the bus a bridge brings.

use super::checks::resolve_properties;
use super::Ctx;
use crate::advisory;
use crate::device_checks;
use crate::device_types::{ChassisRule, DeviceType, SubsystemDef};
use crate::error::PlanError;
use crate::placement::BusState;
use crate::plan::{Advisory, BusPlan, PciFunctionPlan, PciIdentity, VirtioMode};
use crate::properties::format_devfn;
use crate::value::{OnOffAuto, PropValue, Properties};
use crate::virtio_mode;

impl<'a> Ctx<'a> {
    /// Create a PCI function of type `dev` on `bus` with the `given` properties. For
    /// implicit functions `requested` is the board's address; for requests the address comes
    /// from the `addr` property.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_pci(
        &mut self,
        dev: &DeviceType,
        id: Option<String>,
        bus: usize,
        requested: Option<u8>,
        given: &[(String, String)],
        implicit: bool,
        hotplug: bool,
    ) -> Result<(usize, Vec<Advisory>), PlanError> {
        let mut props = resolve_properties(dev, self.machine, &self.globals, given)?;
        device_checks::setter(dev, &props)?;
        let requested = match requested {
            Some(d) => Some(d),
            None => props.devfn("addr").ok().flatten(),
        };
        let multifunction = props.bool("multifunction", false).unwrap_or(false);
        let devfn = self.topo.choose_devfn(bus, &dev.name, requested, hotplug)?;
        let bus_plan = self.topo.buses[bus].plan.clone();
        let mut advisories = Vec::new();
        let label = match &id {
            Some(i) => i.clone(),
            None => format!("{}@{}:{}", dev.name, bus_plan.id, format_devfn(devfn)),
        };

        // The device's own realize.
        let (identity, virtio) =
            function_identity(dev, &mut props, &bus_plan, &label, &mut advisories)?;
        self.check_chassis(dev, &props)?;
        self.topo.check_multifunction(bus, devfn, multifunction)?;
        device_checks::realize(dev, &props)?;
        let express = dev.is_express_only() || virtio.is_some_and(|m| m.pcie_capability);
        if express && bus_plan.port && devfn >> 3 != 0 {
            advisories.push(Advisory {
                device: label.clone(),
                message: format!(
                    "PCI: slot {} is not valid for {}, parent device only allows plugging into slot 0.",
                    devfn >> 3,
                    dev.name
                ),
            });
        }
        self.topo.check_shpc(bus, devfn)?;

        if !implicit {
            advisories.extend(self.connect_advisories(dev, &bus_plan, &label));
        }

        props.insert("addr", PropValue::Devfn(Some(devfn)));
        let provides_bus = dev.bridge.as_ref().map(|b| match &id {
            Some(i) => i.clone(),
            None => self.topo.auto_bus_name(b.bus_kind),
        });
        let function = PciFunctionPlan {
            type_name: dev.name.clone(),
            id,
            bus: bus_plan.id.clone(),
            slot: devfn >> 3,
            function: devfn & 7,
            implicit,
            identity,
            multifunction,
            provides_bus: provides_bus.clone(),
            virtio,
            properties: props,
        };
        let idx = self.topo.insert(bus, function);
        if let Some(name) = provides_bus {
            self.add_bridge_bus(dev, idx, &bus_plan, name, hotplug);
        }
        Ok((idx, advisories))
    }

    /// QEMU's chassis rules of a bridge: `chassis_nr` required (SHPC bridges), unique
    /// (chassis, slot) pairs (PCIe slots).
    fn check_chassis(&mut self, dev: &DeviceType, props: &Properties) -> Result<(), PlanError> {
        let Some(bridge) = &dev.bridge else {
            return Ok(());
        };
        match bridge.chassis {
            Some(ChassisRule::SlotId) if props.uint("chassis_nr").is_none_or(|v| v == 0) => {
                Err(PlanError::BridgeChassisNotSpecified)
            }
            Some(ChassisRule::PcieSlot) => {
                let num = |k: &str| props.uint(k);
                self.topo.add_chassis_slot(
                    num("chassis").unwrap_or(0) as u8,
                    num("slot").unwrap_or(0) as u16,
                )
            }
            _ => Ok(()),
        }
    }

    /// libvirt's connect rules for a requested device, advisory only.
    fn connect_advisories(
        &self,
        dev: &DeviceType,
        bus_plan: &BusPlan,
        label: &str,
    ) -> Vec<Advisory> {
        let connect = advisory::check_connect(
            dev,
            self.machine.family,
            &bus_plan.id,
            bus_plan.controller.as_deref(),
            &bus_plan.accepts,
        );
        let parent =
            advisory::check_requires_parent(dev, bus_plan.controller.as_deref(), &bus_plan.id);
        [connect, parent]
            .into_iter()
            .flatten()
            .map(|message| Advisory {
                device: label.to_string(),
                message,
            })
            .collect()
    }

    /// The secondary bus `name` of bridge `dev`, the function at `idx` on `bus_plan`.
    /// `hotplugged`: a `device_add` after start; ACPI takes over cold-plugged bridges only.
    fn add_bridge_bus(
        &mut self,
        dev: &DeviceType,
        idx: usize,
        bus_plan: &BusPlan,
        name: String,
        hotplugged: bool,
    ) {
        if let Some(bridge) = &dev.bridge {
            let props = &self.topo.functions[idx].properties;
            // When the south bridge's ACPI hot-plug owns bridges (q35: ICH9-LPC 6.1 and
            // later; pc unless `acpi-pci-hotplug-with-bridge-support=off`) the ACPI plug
            // callback takes over cold-plugged bridges' buses from SHPC, so their slot 0 is
            // usable (measured on QEMU 7.2).
            let acpi_owns = self.acpi_bridge_hotplug() && !hotplugged;
            // Cold-plugged bridges on an ACPI-hotplug bus (pc's) get ACPI hot-plug for their
            // own bus too, which replaces the standard hot-plug controller.
            let acpi = bus_plan.acpi_hotplug && !bridge.port && acpi_owns;
            let shpc = bridge.shpc.eval(props) && !acpi && !acpi_owns;
            let hotplug = bridge.hotplug.eval(props) || acpi;
            self.topo.add_bus(BusState::new(BusPlan {
                id: name,
                kind: bridge.bus_kind,
                is_root: false,
                parent_function: Some(idx),
                slot_min: if shpc {
                    bridge.slot_min.max(1)
                } else {
                    bridge.slot_min
                },
                slot_max: bridge.slot_max,
                hotplug,
                accepts: bridge.accepts.clone(),
                controller: dev.libvirt_model.clone(),
                shpc,
                port: bridge.port,
                acpi_hotplug: acpi,
                hotplugged,
            }));
        }
    }
}

/// The identity a function's config header shows and, for virtio, its resolved mode
/// (QEMU's `pcie_port` rule), written back into `props` as realize does.
fn function_identity(
    dev: &DeviceType,
    props: &mut Properties,
    bus_plan: &BusPlan,
    label: &str,
    advisories: &mut Vec<Advisory>,
) -> Result<(PciIdentity, Option<VirtioMode>), PlanError> {
    let pci = dev
        .pci
        .as_ref()
        .ok_or_else(|| PlanError::NotPciDevice(dev.name.clone()))?;
    let Some(v) = &dev.virtio else {
        let (subsystem_vendor_id, subsystem_id) = match &pci.subsystem {
            SubsystemDef::Default => (
                Some(virtio_mode::VIRTIO_VENDOR),
                Some(virtio_mode::QEMU_SUBSYSTEM_ID),
            ),
            SubsystemDef::None => (None, None),
            SubsystemDef::Fixed { vendor, id } => (Some(vendor.0 as u16), Some(id.0 as u16)),
        };
        let identity = PciIdentity {
            vendor_id: pci.vendor,
            device_id: pci.device,
            class_code: pci.class,
            revision: pci.revision,
            subsystem_vendor_id,
            subsystem_id,
            header_type: pci.header_type,
        };
        return Ok((identity, None));
    };
    let r = virtio_mode::resolve(v, props, bus_plan.kind, bus_plan.is_root)?;
    if r.legacy_check_warning {
        advisories.push(Advisory {
            device: label.to_string(),
            message: "device is modern-only, but for backward compatibility legacy is allowed"
                .to_string(),
        });
    }
    // Realize writes the resolved mode back into the properties.
    if props.contains("disable-legacy") {
        let v = if r.mode.legacy {
            OnOffAuto::Off
        } else {
            OnOffAuto::On
        };
        props.insert("disable-legacy", PropValue::OnOffAuto(v));
    }
    if props.contains("disable-modern") {
        props.insert("disable-modern", PropValue::Bool(!r.mode.modern));
    }
    Ok((virtio_mode::identity(v, &r.mode, pci.class), Some(r.mode)))
}
