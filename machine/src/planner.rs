//! `Catalog::plan` and `Catalog::place`: from a request to the whole machine (options,
//! memory map, buses, implicit and requested PCI functions, ISA devices, advisories), in
//! QEMU's order, with QEMU's checks and error texts.

use crate::advisory;
use crate::catalog::Catalog;
use crate::device_checks;
use crate::device_types::{ChassisRule, DeviceType, SubsystemDef};
use crate::error::PlanError;
use crate::isa;
use crate::machine_types::MachineType;
use crate::memory::memory_map;
use crate::options::{resolve_options, ResolvedOptions};
use crate::placement::{BusState, Topology};
use crate::plan::{
    Advisory, BusKind, BusPlan, IsaDevicePlan, PciFunctionPlan, PciIdentity, PlacedDevice,
    PlacedIsaDevice, Placement, Plan, VirtioMode,
};
use crate::properties::{format_devfn, parse_devfn, PropType, PropertyDef};
use crate::request::{DeviceRequest, DeviceSyntax, PlanRequest};
use crate::value::{OnOffAuto, PropValue, Properties};
use crate::virtio_mode;

/// Default devices of a request (QEMU's `default_vga`, `default_net`, ...).
struct Defaults {
    vga: bool,
    nic: bool,
    serial: bool,
    parallel: bool,
}

impl Defaults {
    fn compute(catalog: &Catalog, req: &PlanRequest) -> Defaults {
        let cleared = |kind: &str| {
            req.devices.iter().any(|d| {
                catalog.device_type(&d.driver).is_some_and(|t| {
                    t.clears_default.as_deref() == Some(kind)
                        || t.isa.as_ref().and_then(|i| i.default_kind.as_deref()) == Some(kind)
                })
            })
        };
        let dflt = |explicit: Option<bool>, kind: &str| match explicit {
            Some(v) => v,
            None => !req.nodefaults && !cleared(kind),
        };
        Defaults {
            vga: dflt(req.vga, "vga"),
            nic: req.nic.unwrap_or(!req.nodefaults),
            serial: dflt(req.serial, "serial"),
            parallel: dflt(req.parallel, "parallel"),
        }
    }
}

/// Everything the realize of one requested device needs.
struct Ctx<'a> {
    catalog: &'a Catalog,
    machine: &'a MachineType,
    topo: Topology,
    isa: Vec<IsaDevicePlan>,
    ports: Vec<crate::plan::VirtioPortPlan>,
    ide: Vec<crate::plan::IdeDrivePlan>,
    busless: Vec<crate::plan::BuslessDevicePlan>,
    /// I/O blocks the firmware maps (no ISA device may cover them).
    firmware_io: Vec<crate::plan::FirmwareIoPlan>,
    /// `-global` defaults, applied after compat properties (empty when re-planning from a
    /// finished plan: its functions carry their values already).
    globals: Vec<crate::request::GlobalProperty>,
}

/// The result of realizing one request.
enum Realized {
    Pci(usize, Vec<Advisory>),
    /// Index in `Ctx::isa`.
    Isa(usize),
    /// A port on a virtio-serial bus (index in `Ctx::ports`).
    Port(usize),
    /// A drive on an IDE bus (index in `Ctx::ide`).
    Ide(usize),
    /// A device on no bus (index in `Ctx::busless`).
    Busless(usize),
}

impl Catalog {
    /// The machine type a request names (`machine`, else a `type` option, else the default).
    pub fn machine_for(&self, req: &PlanRequest) -> Result<&MachineType, PlanError> {
        let name = req.machine.clone().or_else(|| {
            req.options
                .iter()
                .rev()
                .find(|(k, _)| k == "type")
                .map(|(_, v)| v.clone())
        });
        match name {
            Some(n) => self.resolve_machine(&n).ok_or(PlanError::UnknownMachine(n)),
            None => self
                .default_machine()
                .ok_or_else(|| PlanError::UnknownMachine(String::new())),
        }
    }

    /// Compute the plan of the machine `req` describes, or QEMU's error for it.
    pub fn plan(&self, req: &PlanRequest) -> Result<Plan, PlanError> {
        let machine = self.machine_for(req)?;
        let rules = crate::smp::SmpRules {
            prefer_sockets: machine.smp_prefer_sockets,
            // x86 PC machines have dies; `none` has no CPU topology of its own.
            dies_supported: machine.family != crate::plan::Family::None,
        };
        let (topology, cpus, max_cpus) =
            crate::smp::CpuTopology::resolve(Some(req.cpus), req.max_cpus, &req.smp, rules)?;
        if max_cpus > machine.cpu_max {
            return Err(PlanError::TooManyCpus {
                cpus: max_cpus,
                machine: machine.name.clone(),
                max: machine.cpu_max,
            });
        }
        if req.ram_size == 0 {
            return Err(PlanError::ZeroRam);
        }
        let (ram_size, device_memory) = check_memory(req, &machine.board.memory)?;
        let numa = crate::numa::resolve(
            &req.numa,
            &topology,
            max_cpus,
            ram_size,
            crate::numa::NumaRules {
                mem_supported: machine.numa_mem_supported,
                supported: machine.family != crate::plan::Family::None,
                // PC machines enable NUMA (one node) for memory hot-plug, as QEMU's do.
                auto_enable: machine.family != crate::plan::Family::None
                    && (req.ram_slots > 0 || req.max_ram_size.is_some_and(|m| m > ram_size)),
                hmat: crate::numa::hmat_requested(&req.options),
            },
        )?;
        if numa.nodes.iter().any(|n| n.memdev.is_some())
            && req.options.iter().any(|(k, _)| k == "memory-backend")
        {
            return Err(PlanError::Numa(
                "'-machine memory-backend' and '-numa memdev' properties are mutually exclusive"
                    .into(),
            ));
        }
        let opts = resolve_options(&machine.name, &machine.options, &req.options, req.accel_smm)?;
        let defaults = Defaults::compute(self, req);
        let flag = |name: &str| match name {
            "nodefaults" => req.nodefaults,
            "default-vga" => defaults.vga,
            "default-nic" => defaults.nic,
            "default-serial" => defaults.serial,
            "default-parallel" => defaults.parallel,
            other => opts.is_on(other),
        };
        let mut memory = memory_map(&machine.board.memory, ram_size, device_memory, &opts, flag);
        memory.ram_id = machine.default_ram_id.clone();
        check_address_space(&memory, req.phys_bits)?;

        let mut ctx = Ctx {
            catalog: self,
            machine,
            topo: Topology::default(),
            isa: Vec::new(),
            ports: Vec::new(),
            ide: Vec::new(),
            busless: Vec::new(),
            firmware_io: isa::firmware_io(&machine.board.firmware_io, flag),
            globals: req.globals.clone(),
        };
        ctx.add_root_bus(&flag);
        ctx.add_implicit(&opts, &flag)?;
        ctx.isa = isa::board_devices(&machine.board.isa, flag);
        for dev in &req.devices {
            if let Realized::Pci(_, adv) = ctx.realize(dev, false)? {
                ctx.topo.advisories.extend(adv);
            }
        }
        let acpi_bridge_hotplug = ctx.acpi_bridge_hotplug();
        Ok(Plan {
            machine: machine.name.clone(),
            family: machine.family,
            options: opts.values,
            nodefaults: req.nodefaults,
            cpus,
            max_cpus,
            topology,
            numa,
            memory,
            buses: ctx.topo.buses.into_iter().map(|b| b.plan).collect(),
            pci: ctx.topo.functions,
            isa: ctx.isa,
            advisories: ctx.topo.advisories,
            sci_irq: machine.board.sci_irq,
            pirq_irqs: machine.board.pirq_irqs.clone(),
            acpi_bridge_hotplug,
            firmware_io: ctx.firmware_io,
            virtio_ports: ctx.ports,
            ide: ctx.ide,
            busless: ctx.busless,
        })
    }

    /// Where each PCI request would land in `plan` — each considered alone against the plan
    /// as it is — without changing anything. With `hotplug`, QEMU's hot-plug rules apply
    /// (`device_add` after start: the bus must support hot-plug, no function behind an
    /// existing function 0). Non-PCI requests are refused (see `place_any`).
    pub fn place(
        &self,
        plan: &Plan,
        requests: &[DeviceRequest],
        hotplug: bool,
    ) -> Vec<Result<PlacedDevice, PlanError>> {
        self.place_any(plan, requests, hotplug)
            .into_iter()
            .zip(requests)
            .map(|(r, req)| match r? {
                Placement::Pci(p) => Ok(p),
                Placement::Isa(_)
                | Placement::VirtioPort(_)
                | Placement::Ide(_)
                | Placement::Busless(_) => Err(PlanError::NotPciDevice(req.driver.clone())),
            })
            .collect()
    }

    /// `place` for every kind of device `-device` accepts: PCI functions, ISA devices
    /// (with the ports and IRQ they would take) and virtio-serial ports.
    pub fn place_any(
        &self,
        plan: &Plan,
        requests: &[DeviceRequest],
        hotplug: bool,
    ) -> Vec<Result<Placement, PlanError>> {
        let Some(machine) = self.resolve_machine(&plan.machine) else {
            return requests
                .iter()
                .map(|_| Err(PlanError::UnknownMachine(plan.machine.clone())))
                .collect();
        };
        let base = Ctx::from_plan(self, machine, plan);
        requests
            .iter()
            .map(|r| {
                let mut ctx = Ctx {
                    catalog: self,
                    machine,
                    topo: base.topo.clone(),
                    isa: base.isa.clone(),
                    ports: base.ports.clone(),
                    ide: base.ide.clone(),
                    busless: base.busless.clone(),
                    firmware_io: base.firmware_io.clone(),
                    globals: Vec::new(),
                };
                Ok(match ctx.realize(r, hotplug)? {
                    Realized::Pci(i, advisories) => {
                        let f = &ctx.topo.functions[i];
                        // No handler announces a device there (a pci-bridge with
                        // shpc=off outside ACPI's buses): QEMU's bus refuses it.
                        if hotplug && plan.hotplug_mechanism(&f.bus) == HotplugMechanism::None {
                            return Err(PlanError::BusNoHotplug(f.bus.clone()));
                        }
                        Placement::Pci(PlacedDevice {
                            type_name: f.type_name.clone(),
                            id: f.id.clone(),
                            bus: f.bus.clone(),
                            slot: f.slot,
                            function: f.function,
                            identity: f.identity,
                            virtio: f.virtio,
                            provides_bus: f.provides_bus.clone(),
                            advisories,
                        })
                    }
                    Realized::Isa(i) => {
                        let d = &ctx.isa[i];
                        Placement::Isa(PlacedIsaDevice {
                            type_name: d.type_name.clone(),
                            id: d.id.clone(),
                            bus: ISA_BUS.to_string(),
                            io: d.io.clone(),
                            irqs: d.irqs.clone(),
                        })
                    }
                    Realized::Port(i) => Placement::VirtioPort(ctx.ports[i].clone()),
                    Realized::Ide(i) => Placement::Ide(ctx.ide[i].clone()),
                    Realized::Busless(i) => Placement::Busless(ctx.busless[i].clone()),
                })
            })
            .collect()
    }
}

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

impl<'a> Ctx<'a> {
    /// Rebuild the planning state from a finished plan (for `place`).
    fn from_plan(catalog: &'a Catalog, machine: &'a MachineType, plan: &Plan) -> Ctx<'a> {
        let mut topo = Topology::default();
        for b in &plan.buses {
            topo.add_bus(BusState::new(b.clone()));
        }
        for f in &plan.pci {
            if let Some(bus) = topo.find_bus(&f.bus) {
                topo.insert(bus, f.clone());
            }
            let rule = catalog
                .device_type(&f.type_name)
                .and_then(|t| t.bridge.as_ref())
                .and_then(|b| b.chassis);
            if rule == Some(ChassisRule::PcieSlot) {
                let num = |k: &str| f.properties.uint(k);
                topo.chassis_slots.push((
                    num("chassis").unwrap_or(0) as u8,
                    num("slot").unwrap_or(0) as u16,
                ));
            }
        }
        for id in plan
            .isa
            .iter()
            .filter_map(|d| d.id.as_ref())
            .chain(plan.busless.iter().filter_map(|d| d.id.as_ref()))
        {
            topo.ids.insert(id.clone());
        }
        let next = |prefix: &str| {
            plan.buses
                .iter()
                .filter_map(|b| b.id.strip_prefix(prefix))
                .filter_map(|n| n.parse::<u32>().ok())
                .max()
                .map_or(0, |n| n + 1)
        };
        topo.next_auto_pci = next("pci.");
        topo.next_auto_pcie = next("pcie.");
        for p in &plan.virtio_ports {
            if let Some(id) = &p.id {
                topo.ids.insert(id.clone());
            }
        }
        for d in &plan.ide {
            if let Some(id) = &d.id {
                topo.ids.insert(id.clone());
            }
        }
        let opts = ResolvedOptions {
            values: plan.options.clone(),
        };
        let flag = |name: &str| match name {
            "nodefaults" => plan.nodefaults,
            other => opts.is_on(other),
        };
        Ctx {
            catalog,
            machine,
            topo,
            isa: plan.isa.clone(),
            ports: plan.virtio_ports.clone(),
            ide: plan.ide.clone(),
            busless: plan.busless.clone(),
            firmware_io: isa::firmware_io(&machine.board.firmware_io, flag),
            globals: Vec::new(),
        }
    }

    /// Whether the south bridge's ACPI PCI hot-plug owns cold-plugged bridges' buses: its
    /// catalog type's `acpi-bridge-hotplug` properties are all on (compat properties
    /// applied). On q35 that is ICH9-LPC `acpi-pci-hotplug-with-bridge-support` (on since
    /// pc-q35-6.1); on pc, PIIX4_PM with the same property and `acpi-root-pci-hotplug` (it
    /// must handle pci.0 to see the bridges plugged there). The plan carries the answer
    /// (`Plan::acpi_bridge_hotplug`) to the devices.
    fn acpi_bridge_hotplug(&self) -> bool {
        self.topo.functions.iter().any(|f| {
            let Some(ty) = self.catalog.device_type(&f.type_name) else {
                return false;
            };
            !ty.acpi_bridge_hotplug.is_empty()
                && ty
                    .acpi_bridge_hotplug
                    .iter()
                    .all(|name| match f.properties.get(name) {
                        Some(PropValue::Bool(b)) => *b,
                        Some(_) => false,
                        None => ty
                            .property(name)
                            .and_then(|p| p.default_value())
                            .is_some_and(|v| v == PropValue::Bool(true)),
                    })
        })
    }

    fn add_root_bus(&mut self, flag: &impl Fn(&str) -> bool) {
        let Some(root) = &self.machine.board.root_bus else {
            return;
        };
        let hotplug = root.hotplug_when.as_ref().is_some_and(|c| c.eval(flag));
        self.topo.add_bus(BusState::new(BusPlan {
            id: root.id.clone(),
            kind: root.kind,
            is_root: true,
            parent_function: None,
            slot_min: root.slot_min,
            slot_max: root.slot_max,
            hotplug,
            accepts: root.accepts.clone(),
            controller: root.libvirt_model.clone(),
            shpc: false,
            port: false,
            acpi_hotplug: hotplug,
            hotplugged: false,
        }));
        if root.auto_named {
            match root.kind {
                BusKind::Pci => self.topo.next_auto_pci = 1,
                BusKind::Pcie => self.topo.next_auto_pcie = 1,
            }
        }
    }

    /// The board's implicit PCI functions whose condition holds.
    fn add_implicit(
        &mut self,
        opts: &ResolvedOptions,
        flag: &impl Fn(&str) -> bool,
    ) -> Result<(), PlanError> {
        let board = self.machine.board.clone();
        for imp in &board.implicit_pci {
            if !imp.when.eval(flag) {
                continue;
            }
            let dev = self
                .catalog
                .device_type(&imp.ty)
                .ok_or_else(|| PlanError::UnknownDevice(imp.ty.clone()))?;
            let mut given: Vec<(String, String)> = imp
                .properties
                .iter()
                .map(|(k, v)| {
                    let v = match v.strip_prefix('$') {
                        Some(opt) => if opts.is_on(opt) { "on" } else { "off" }.to_string(),
                        None => v.clone(),
                    };
                    (k.clone(), v)
                })
                .collect();
            if imp.multifunction {
                given.push(("multifunction".to_string(), "on".to_string()));
            }
            let requested = match (&imp.addr, &imp.function_of) {
                (Some(a), _) => parse_devfn(a),
                (None, Some(of)) => self
                    .topo
                    .functions
                    .iter()
                    .find(|f| f.implicit && f.type_name == *of)
                    .map(|f| (f.slot << 3) | imp.function),
                (None, None) => None,
            };
            self.add_pci(dev, None, 0, requested, &given, true, false)?;
        }
        Ok(())
    }

    /// Realize one `-device`.
    fn realize(&mut self, req: &DeviceRequest, hotplug: bool) -> Result<Realized, PlanError> {
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

    /// Create a PCI function of type `dev` on `bus` with the `given` properties. For
    /// implicit functions `requested` is the board's address; for requests the address comes
    /// from the `addr` property.
    #[allow(clippy::too_many_arguments)]
    fn add_pci(
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

/// The ISA bus of machines with an ISA bridge.
const ISA_BUS: &str = "isa.0";

/// QEMU aligns RAM to 8 KiB (`machine_set_mem`).
const RAM_ALIGN: u64 = 8192;
/// ACPI_MAX_RAM_SLOTS.
const MAX_RAM_SLOTS: u64 = 256;
/// x86-64's architectural limit of physical address bits (QEMU's TARGET_PHYS_ADDR_SPACE_BITS).
const MAX_PHYS_BITS: u8 = 52;

/// QEMU's `-m size=,slots=,maxmem=` rules (`machine_set_mem`, `pc_memory_init`): the RAM size
/// aligned up to 8 KiB, and the size of the memory hot-plug area.
fn check_memory(
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
fn check_address_space(
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
fn resolve_properties(
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
fn check_json_kinds(dev: &DeviceType, req: &DeviceRequest) -> Result<(), PlanError> {
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
fn id_wellformed(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
}
