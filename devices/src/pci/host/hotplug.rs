//! Hot-plug on the built host: a function added to or removed from a running machine
//! (mapped, interrupt sinks given, bridges told), and the handles the VMM announces it with.

use super::{lock, BusNode, FunctionEntry, PciHost, SharedFunction};
use crate::pci::acpi_hotplug::SharedPcihp;
use crate::pci::bridge::PciBridge;
use crate::pci::caps::pcie::link_status_of;
use crate::pci::kind::PciKind;
use crate::pci::PciError;
use machine::{BusKind, PciFunctionPlan};

impl PciHost {
    /// Add the model `func` of planned function `f` (a `device_add` after start), with the
    /// kind of the bus it provides if it is a bridge or port. Its interrupts go where the
    /// others' go; nothing decodes until the guest programs it.
    pub fn hot_add(
        &mut self,
        f: &PciFunctionPlan,
        func: SharedFunction,
        kind: &'static dyn PciKind,
        provides_kind: Option<BusKind>,
    ) -> Result<(), PciError> {
        let bus = self
            .bus_index(&f.bus)
            .ok_or_else(|| PciError::UnknownBus(f.bus.clone()))?;
        let key = (bus, f.devfn());
        if self.functions.contains_key(&key) {
            return Err(PciError::DuplicateFunction {
                bus: f.bus.clone(),
                devfn: key.1,
            });
        }
        {
            let mut m = lock(&func);
            if let Some(s) = &self.intx {
                m.set_intx_sink(s.clone());
            }
            if let Some(s) = &self.msi {
                m.set_msi_sink(s.clone());
            }
        }
        // A bridge or port brings its secondary bus; an id the guest ejected before is
        // reused (its node stays behind, unnamed, so bus indices keep their meaning).
        let provides = match (&f.provides_bus, provides_kind) {
            (Some(id), Some(kind)) => {
                self.buses.push(BusNode {
                    id: id.clone(),
                    kind,
                    parent: Some(key),
                });
                Some(self.buses.len() - 1)
            }
            (None, _) => None,
            (Some(id), None) => return Err(PciError::UnknownBus(id.clone())),
        };
        if let (Some(bus_id), Some(b)) = (&f.provides_bus, lock(&func).as_bridge_mut()) {
            // Empty behind it; its own controller handles the bus (plug_latched).
            b.attach(0, None, true);
            b.set_eject_target(self.lifecycle.clone(), bus_id.clone());
        }
        self.functions.insert(
            key,
            FunctionEntry {
                func,
                kind,
                type_name: f.type_name.clone(),
                id: f.id.clone(),
                provides,
                mapped: Vec::new(),
            },
        );
        self.sync_windows(key);
        Ok(())
    }

    /// Remove the function at `devfn` of `bus_id` (the guest ejected it; the caller
    /// removes what is behind a bridge first): its mappings go, its INTx lines drop, the
    /// bus it provides loses its name. Returns the model, for the VMM to stop its worker.
    pub fn hot_remove(&mut self, bus_id: &str, devfn: u8) -> Option<SharedFunction> {
        let bus = self.bus_index(bus_id)?;
        let key = (bus, devfn);
        let entry = self.functions.remove(&key)?;
        if let Some(child) = entry.provides.and_then(|c| self.buses.get_mut(c)) {
            child.id.clear();
        }
        self.unmap_removed(&entry.mapped, &entry.func);
        self.intx_levels.retain(|(k, _), _| *k != key);
        self.update_intx_lines();
        Some(entry.func)
    }

    /// The ACPI PCI hot-plug block of the south bridge, if the machine has one.
    pub fn acpi_hotplug(&self) -> Option<SharedPcihp> {
        self.functions
            .values()
            .find_map(|e| lock(&e.func).acpi_hotplug())
    }

    /// The ACPI CPU hot-plug block of the south bridge, if the machine has one.
    pub fn cpu_hotplug(&self) -> Option<crate::chipset::cpu_hotplug::SharedCpuHotplug> {
        self.functions
            .values()
            .find_map(|e| lock(&e.func).cpu_hotplug())
    }

    /// Run `op` on the bridge or port providing bus `bus_id`, then resample its INTx pin (a
    /// hot-plug event may have raised it). None when no bridge provides the bus.
    pub fn with_bridge<R>(
        &mut self,
        bus_id: &str,
        op: impl FnOnce(&mut PciBridge) -> R,
    ) -> Option<R> {
        let key = self.parent_of(self.bus_index(bus_id)?)?;
        let r = {
            let e = self.functions.get(&key)?;
            let mut f = lock(&e.func);
            op(f.as_bridge_mut()?)
        };
        self.sample_intx(key);
        Some(r)
    }

    /// The port or bridge that provides bus `bus_id`.
    pub fn bridge_of(&self, bus_id: &str) -> Option<SharedFunction> {
        let key = self.parent_of(self.bus_index(bus_id)?)?;
        self.functions.get(&key).map(|e| e.func.clone())
    }

    /// LNKSTA of the express function at devfn 0 of `bus_id` (the slot's link partner).
    pub fn link_partner(&self, bus_id: &str) -> Option<u16> {
        let bus = self.bus_index(bus_id)?;
        let e = self.functions.get(&(bus, 0))?;
        let f = lock(&e.func);
        link_status_of(f.config())
    }
}
