//! `Catalog::plan` and `Catalog::place`: from a request to the whole machine (options,
//! memory map, buses, implicit and requested PCI functions, ISA devices, advisories), in
//! QEMU's order, with QEMU's checks and error texts. This file holds the planning state
//! (`Ctx`) and the order of the steps; the steps themselves live in the child modules.

mod checks;
mod hotplug;
mod pci;
mod realize;

pub use hotplug::{HotplugMechanism, Pluggable};

use checks::{check_address_space, check_memory};

use crate::catalog::Catalog;
use crate::device_types::ChassisRule;
use crate::error::PlanError;
use crate::isa;
use crate::machine_types::MachineType;
use crate::memory::memory_map;
use crate::options::{resolve_options, ResolvedOptions};
use crate::placement::{BusState, Topology};
use crate::plan::{
    Advisory, BusKind, BusPlan, IsaDevicePlan, PlacedDevice, PlacedIsaDevice, Placement, Plan,
};
use crate::properties::parse_devfn;
use crate::request::{DeviceRequest, PlanRequest};
use crate::value::PropValue;

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
}

/// The ISA bus of machines with an ISA bridge.
const ISA_BUS: &str = "isa.0";
