//! Hot-plug on a running machine: which mechanism announces a device on each bus (ACPI PCI
//! hot-plug with QEMU's BSEL order, a PCIe slot, a bridge's SHPC, none), `Catalog::hot_add`
//! (QEMU's `device_add` refusals and the address `place` predicts), removing a function,
//! and `Catalog::pluggable` (which device types a bus takes).

use super::{Ctx, Realized};
use crate::catalog::Catalog;
use crate::error::PlanError;
use crate::plan::{Advisory, BusPlan, Placement, Plan, VirtioMode};
use crate::request::DeviceRequest;

/// How a running machine announces a hot-added device on a bus and learns that the guest
/// released one (QEMU's hot-plug handler of the bus).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HotplugMechanism {
    /// The south bridge's ACPI PCI hot-plug (PIIX4 / ICH9 registers, GPE0 bit 1), with the
    /// bus's select number (BSEL) in the DSDT.
    Acpi { bsel: u32 },
    /// The PCIe slot of the port providing the bus (Linux's pciehp).
    Native,
    /// The standard hot-plug controller of the bridge providing the bus (`pci-bridge`,
    /// `pcie-pci-bridge` where ACPI does not own the bus; Linux's shpchp).
    Shpc,
    /// No hot-plug on this bus.
    None,
}

impl Plan {
    /// The hot-plug handler of bus `bus_id` as QEMU chooses it: ACPI where the bus's
    /// `acpi_hotplug` says so (pc's root bus and cold-plugged bridges) or, with
    /// `acpi_bridge_hotplug` (q35 6.1+), every non-root bus; the port's own slot or the
    /// bridge's standard hot-plug controller otherwise.
    pub fn hotplug_mechanism(&self, bus_id: &str) -> HotplugMechanism {
        let Some(bus) = self.bus(bus_id) else {
            return HotplugMechanism::None;
        };
        if !bus.hotplug {
            return HotplugMechanism::None;
        }
        if let Some(bsel) = self.acpi_bsel(bus_id) {
            return HotplugMechanism::Acpi { bsel };
        }
        if bus.port {
            HotplugMechanism::Native
        } else if bus.shpc {
            HotplugMechanism::Shpc
        } else {
            HotplugMechanism::None
        }
    }

    /// acpi_pcihp_is_hotpluggable_bus: with bridge hot-plug every cold-plugged bridge's
    /// bus is ACPI's (a switch's upstream bus too) except a slot with `hotplug=off`.
    fn acpi_owns(&self, bus: &BusPlan) -> bool {
        if bus.hotplugged {
            return false;
        }
        if self.acpi_bridge_hotplug && !bus.is_root {
            return bus.hotplug || !bus.port;
        }
        bus.hotplug && bus.acpi_hotplug
    }

    /// ACPI hot-plug buses in QEMU's BSEL order (acpi_set_pci_info: depth first from the
    /// root bus; a bus's child buses in reverse creation order, as pci_bridge_initfn puts
    /// each new one at the head of its parent's list).
    pub fn acpi_hotplug_buses(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(root) = self.buses.iter().find(|b| b.is_root) {
            self.bsel_walk(root, &mut out, 0);
        }
        out
    }

    fn bsel_walk(&self, bus: &BusPlan, out: &mut Vec<String>, depth: usize) {
        if depth > self.buses.len() {
            return;
        }
        if self.acpi_owns(bus) {
            out.push(bus.id.clone());
        }
        let children: Vec<&BusPlan> = self
            .pci
            .iter()
            .filter(|f| f.bus == bus.id)
            .filter_map(|f| f.provides_bus.as_deref())
            .filter_map(|id| self.bus(id))
            .collect();
        for child in children.into_iter().rev() {
            self.bsel_walk(child, out, depth + 1);
        }
    }

    /// The BSEL of an ACPI hot-plug bus.
    pub fn acpi_bsel(&self, bus_id: &str) -> Option<u32> {
        self.acpi_hotplug_buses()
            .iter()
            .position(|b| b == bus_id)
            .map(|i| i as u32)
    }

    /// The plan without function `idx` (a device the guest ejected) and the bus it
    /// provides, if any (the caller removes what is on that bus first): bus parents and
    /// virtio-serial controllers that pointed past it move down by one.
    pub fn without_function(&self, idx: usize) -> Plan {
        let mut plan = self.clone();
        if idx >= plan.pci.len() {
            return plan;
        }
        plan.pci.remove(idx);
        plan.buses.retain(|b| b.parent_function != Some(idx));
        for b in &mut plan.buses {
            if let Some(p) = b.parent_function.as_mut() {
                if *p > idx {
                    *p -= 1;
                }
            }
        }
        for p in &mut plan.virtio_ports {
            if p.controller > idx {
                p.controller -= 1;
            }
        }
        plan
    }
}

impl Catalog {
    /// `device_add` on the running machine of `plan`: QEMU's hot-plug refusals, then the
    /// plan with the new function appended (the address is the one `place` predicts) and,
    /// for a bridge or port, its secondary bus (handled by the bridge's own controller), or
    /// the virtio-serial port. ISA devices are refused: machina cannot add them to a
    /// running machine.
    pub fn hot_add(&self, plan: &Plan, req: &DeviceRequest) -> Result<Plan, PlanError> {
        let placed = self
            .place_any(plan, std::slice::from_ref(req), true)
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(PlanError::UnknownDevice(req.driver.clone())))?;
        match placed {
            // A port joins a virtio-serial bus (QEMU's refusals: bus full, number taken).
            Placement::Pci(_) | Placement::VirtioPort(_) => {}
            _ => return Err(PlanError::HotplugUnsupported(req.driver.clone())),
        }
        let machine = self
            .resolve_machine(&plan.machine)
            .ok_or_else(|| PlanError::UnknownMachine(plan.machine.clone()))?;
        let mut ctx = Ctx::from_plan(self, machine, plan);
        let mut out = plan.clone();
        match ctx.realize(req, true)? {
            Realized::Pci(i, _) => {
                out.pci.push(ctx.topo.functions[i].clone());
                let new_idx = out.pci.len() - 1;
                if let Some(bus) = ctx.topo.functions[i].provides_bus.as_deref() {
                    if let Some(b) = ctx.topo.buses.iter().find(|b| b.plan.id == bus) {
                        let mut b = b.plan.clone();
                        b.parent_function = Some(new_idx);
                        out.buses.push(b);
                    }
                }
            }
            Realized::Port(i) => out.virtio_ports.push(ctx.ports[i].clone()),
            _ => return Err(PlanError::HotplugUnsupported(req.driver.clone())),
        }
        Ok(out)
    }
}

/// A device type that can go on a bus, and where (`Catalog::pluggable`).
#[derive(Debug, Clone, PartialEq)]
pub struct Pluggable {
    pub type_name: String,
    pub slot: u8,
    pub function: u8,
    /// Set for virtio types: the mode the device would get there.
    pub virtio: Option<VirtioMode>,
    /// QEMU warnings and libvirt-rule mismatches for this placement (empty: libvirt would
    /// place the type there too).
    pub advisories: Vec<Advisory>,
}

impl Catalog {
    /// Which user-creatable PCI device types could be plugged on bus `bus` of `plan` (cold or
    /// hot), with the address QEMU would pick and the virtio mode they would get. Types whose
    /// creation needs properties (a `pci-bridge` needs `chassis_nr`) are tried with none and
    /// so are left out. Unknown bus: QEMU's "Bus '...' not found".
    pub fn pluggable(
        &self,
        plan: &Plan,
        bus: &str,
        hotplug: bool,
    ) -> Result<Vec<Pluggable>, PlanError> {
        if plan.bus(bus).is_none() {
            return Err(PlanError::BusNotFound(bus.to_string()));
        }
        let candidates: Vec<DeviceRequest> = self
            .device_types()
            .iter()
            .filter(|t| t.is_pci() && t.user_creatable && !t.is_abstract)
            .map(|t| DeviceRequest::new(&t.name).prop("bus", bus))
            .collect();
        Ok(self
            .place(plan, &candidates, hotplug)
            .into_iter()
            .filter_map(Result::ok)
            .map(|p| Pluggable {
                type_name: p.type_name,
                slot: p.slot,
                function: p.function,
                virtio: p.virtio,
                advisories: p.advisories,
            })
            .collect())
    }
}
