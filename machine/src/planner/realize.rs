//! Realizing one `-device` (or `device_add`) request into the plan being built: the bus
//! it names or the one QEMU picks, then the PCI, ISA, IDE, busless or virtio-serial port
//! path with QEMU's checks and texts.

use super::checks::{check_json_kinds, id_wellformed, resolve_properties};
use super::{Ctx, Realized, ISA_BUS};
use crate::device_types::DeviceType;
use crate::error::PlanError;
use crate::isa;
use crate::plan::BusKind;
use crate::request::{DeviceRequest, DeviceSyntax};

impl<'a> Ctx<'a> {
    /// Realize one `-device`.
    pub(super) fn realize(
        &mut self,
        req: &DeviceRequest,
        hotplug: bool,
    ) -> Result<Realized, PlanError> {
        let catalog = self.catalog;
        let dev = catalog
            .device_type(&req.driver)
            .ok_or_else(|| PlanError::UnknownDevice(req.driver.clone()))?;
        if dev.is_abstract {
            return Err(PlanError::AbstractDevice(dev.name.clone()));
        }
        if !dev.user_creatable {
            return Err(PlanError::NotUserCreatable(dev.name.clone()));
        }
        let id = req.id().map(str::to_string);
        if let Some(id) = &id {
            if !id_wellformed(id) {
                return Err(PlanError::BadId(id.clone()));
            }
            if req.syntax == DeviceSyntax::Keyval && self.topo.ids.contains(id) {
                return Err(PlanError::DuplicateIdOpts(id.clone()));
            }
        }
        check_json_kinds(dev, req)?;
        if dev.is_busless() {
            return self.realize_busless(dev, req, id, hotplug);
        }
        let bus_type = dev.bus.clone().unwrap_or_else(|| "PCI".to_string());
        // Machines with PCI have an ISA bridge and so QEMU's `isa.0`.
        let has_isa = !self.topo.buses.is_empty();
        if dev.isa.is_some() {
            if !has_isa {
                return Err(PlanError::NoBusForDevice {
                    bus_type,
                    driver: req.driver.clone(),
                });
            }
            return self.realize_isa(dev, req, id);
        }
        if has_isa && req.get("bus") == Some(ISA_BUS) {
            return Err(PlanError::WrongBusKind {
                driver: req.driver.clone(),
                bus_kind: "ISA".to_string(),
            });
        }
        if bus_type == "virtio-serial-bus" {
            return self.realize_port(dev, req, id);
        }
        if bus_type == "IDE" {
            return self.realize_ide(dev, req, id, hotplug);
        }
        if !dev.is_pci() {
            return Err(PlanError::NoBusForDevice {
                bus_type,
                driver: req.driver.clone(),
            });
        }
        let bus = match req.get("bus") {
            Some(b) => self
                .topo
                .find_bus(b)
                .ok_or_else(|| PlanError::BusNotFound(b.to_string()))?,
            None => {
                if self.topo.buses.is_empty() {
                    return Err(PlanError::NoBusForDevice {
                        bus_type,
                        driver: req.driver.clone(),
                    });
                }
                0
            }
        };
        if hotplug && !self.topo.buses[bus].plan.hotplug {
            let b = &self.topo.buses[bus].plan;
            // When the south bridge's ACPI hot-plug owns the port's bus (q35 6.1+), the
            // bus has no handler of its own and QEMU 7.2 answers as for any bus.
            return Err(if b.port && !self.acpi_bridge_hotplug() {
                // The port's own pre-plug check (the bus itself has a hotplug handler).
                let port_id = b
                    .parent_function
                    .and_then(|i| self.topo.functions[i].id.clone())
                    .unwrap_or_else(|| "(null)".to_string());
                PlanError::PortHotplugUnsupported(port_id)
            } else {
                PlanError::BusNoHotplug(b.id.clone())
            });
        }
        self.check_json_dup(req, &id)?;
        let (idx, advisories) =
            self.add_pci(dev, id, bus, None, &req.properties, false, hotplug)?;
        Ok(Realized::Pci(idx, advisories))
    }

    /// A device on no bus (`vmcoreinfo`): QEMU's qdev_device_add and the type's realize
    /// checks.
    fn realize_busless(
        &mut self,
        dev: &DeviceType,
        req: &DeviceRequest,
        id: Option<String>,
        hotplug: bool,
    ) -> Result<Realized, PlanError> {
        if let Some(b) = req.get("bus") {
            return Err(PlanError::Busless(format!(
                "Device '{}' can't go on {} bus",
                req.driver,
                self.topo
                    .find_bus(b)
                    .map(|i| match self.topo.buses[i].plan.kind {
                        BusKind::Pci => "PCI",
                        BusKind::Pcie => "PCIE",
                    })
                    .unwrap_or("a")
            )));
        }
        // Not hot-pluggable: once the machine is ready, qdev takes no such type.
        if hotplug {
            return Err(PlanError::Busless(
                "Parameter 'driver' expects a pluggable device type".into(),
            ));
        }
        self.check_json_dup(req, &id)?;
        resolve_properties(dev, self.machine, &self.globals, &req.properties)?;
        if dev.name == "vmcoreinfo" {
            if self.busless.iter().any(|d| d.type_name == dev.name) {
                return Err(PlanError::Busless(
                    "at most one vmcoreinfo device is permitted".into(),
                ));
            }
            // fw_cfg (with DMA) is a board device of the machines that have one.
            if !self.isa.iter().any(|d| d.type_name == "fw_cfg_io") {
                return Err(PlanError::Busless(
                    "vmcoreinfo device requires fw_cfg with DMA".into(),
                ));
            }
        }
        if let Some(id) = &id {
            self.topo.ids.insert(id.clone());
        }
        self.busless.push(crate::plan::BuslessDevicePlan {
            type_name: dev.name.clone(),
            id,
        });
        Ok(Realized::Busless(self.busless.len() - 1))
    }

    /// An ISA device request: on `isa.0` only, at its ports.
    fn realize_isa(
        &mut self,
        dev: &DeviceType,
        req: &DeviceRequest,
        id: Option<String>,
    ) -> Result<Realized, PlanError> {
        if let Some(b) = req.get("bus").filter(|b| *b != ISA_BUS) {
            return Err(match self.topo.find_bus(b) {
                Some(i) => PlanError::WrongBusKind {
                    driver: req.driver.clone(),
                    bus_kind: match self.topo.buses[i].plan.kind {
                        BusKind::Pci => "PCI",
                        BusKind::Pcie => "PCIE",
                    }
                    .to_string(),
                },
                None => PlanError::BusNotFound(b.to_string()),
            });
        }
        self.check_json_dup(req, &id)?;
        let props = resolve_properties(dev, self.machine, &self.globals, &req.properties)?;
        let d = isa::requested_device(dev, id.clone(), &props, &self.isa, &self.firmware_io)?;
        if let Some(id) = id {
            self.topo.ids.insert(id);
        }
        self.isa.push(d);
        Ok(Realized::Isa(self.isa.len() - 1))
    }

    /// A drive on an IDE bus (`ide-hd`, `ide-cd`): placed by `crate::ide` on the buses of
    /// the controllers the catalog says provide them. IDE buses take no hot-plug.
    fn realize_ide(
        &mut self,
        dev: &DeviceType,
        req: &DeviceRequest,
        id: Option<String>,
        hotplug: bool,
    ) -> Result<Realized, PlanError> {
        self.check_json_dup(req, &id)?;
        let props = resolve_properties(dev, self.machine, &self.globals, &req.properties)?;
        let catalog = self.catalog;
        let buses = crate::ide::buses(&self.topo.functions, &|f| {
            catalog.device_type(&f.type_name).map_or(0, |t| t.ide_buses)
        });
        let drive = crate::ide::place(
            crate::ide::Request {
                type_name: &dev.name,
                atapi: dev.atapi,
                id: id.clone(),
                bus: req.get("bus"),
            },
            &props,
            &buses,
            &self.ide,
        )?;
        if hotplug {
            return Err(PlanError::BusNoHotplug(drive.bus));
        }
        if let Some(id) = id {
            self.topo.ids.insert(id);
        }
        self.ide.push(drive);
        Ok(Realized::Ide(self.ide.len() - 1))
    }

    /// A port on a virtio-serial bus (`virtconsole`, `virtserialport`).
    fn realize_port(
        &mut self,
        dev: &DeviceType,
        req: &DeviceRequest,
        id: Option<String>,
    ) -> Result<Realized, PlanError> {
        self.check_json_dup(req, &id)?;
        let props = resolve_properties(dev, self.machine, &self.globals, &req.properties)?;
        let port = crate::virtio_ports::place(
            &dev.name,
            dev.console,
            id.clone(),
            &props,
            req.get("bus"),
            &self.topo.functions,
            &self.ports,
        )?;
        if let Some(id) = id {
            self.topo.ids.insert(id);
        }
        self.ports.push(port);
        Ok(Realized::Port(self.ports.len() - 1))
    }

    fn check_json_dup(&self, req: &DeviceRequest, id: &Option<String>) -> Result<(), PlanError> {
        match id {
            Some(id) if req.syntax == DeviceSyntax::Json && self.topo.ids.contains(id) => {
                Err(PlanError::DuplicateId(id.clone()))
            }
            _ => Ok(()),
        }
    }
}
