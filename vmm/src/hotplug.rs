//! Hot-plug on the running machine, on the run loop's thread: a `device_add` built into
//! the PCI host and announced by the bus's mechanism (ACPI PCI hot-plug: the slot's UP bit
//! and GPE0 bit 1; a PCIe slot: presence detect and attention button), and slots the guest
//! ejected taken out (DEVICE_DELETED).

use crate::control::Controller;
use crate::virtio_devices::{DeviceThreads, IntxForwarder, OpenBackends, VirtioSet};
use devices::lifecycle::Lifecycle;
use devices::pci::kind::FunctionContext;
use devices::pci::{BusPlacement, SharedHost};
use machine::{BusKind, DeviceRequest, HotplugMechanism, PciFunctionPlan, Plan};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

/// The device threads (and socket peers) of hot-added virtio functions, by (bus, devfn),
/// stopped when the guest ejects the function or the machine goes.
#[derive(Default)]
pub struct HotAdded {
    devices: HashMap<(String, u8), (DeviceThreads, VirtioSet)>,
}

impl HotAdded {
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

/// What building a hot-added function needs from the running machine.
pub struct HotAddInputs<'a> {
    pub host: &'a SharedHost,
    pub vm: &'a crate::kvm_vm::KvmVm,
    pub forwarder: &'a Arc<IntxForwarder>,
    pub open: &'a mut OpenBackends,
    pub lifecycle: &'a Lifecycle,
    pub added: &'a mut HotAdded,
}

/// Build the last function of `plan` (what `Catalog::hot_add` appended), plug it and
/// announce it; the configuration gains `request` at its address so a reset keeps it.
pub fn hot_add(
    control: &Controller,
    plan: Plan,
    mut request: DeviceRequest,
    inputs: HotAddInputs,
) -> Result<(), String> {
    let f: PciFunctionPlan = plan.pci.last().cloned().ok_or("nothing to add")?;
    let backends = control.state().config.backends.clone();
    let mut set = VirtioSet::default();
    let built = {
        let mut factory = crate::virtio_devices::factory(
            &backends,
            &plan,
            &inputs.vm.memory,
            inputs.forwarder,
            &mut set,
            inputs.open,
            Some(Arc::new(crate::interrupts::KvmIoEvents(
                inputs.vm.fd.clone(),
            ))),
        );
        factory(&f)
    };
    let kind = devices::kinds::kind_of(&f);
    let func = match built {
        Some(r) => r.map_err(|e| e.to_string())?,
        None => {
            let bus = plan.bus(&f.bus).ok_or("no such bus")?;
            kind.build(&FunctionContext {
                function: &f,
                plan: &plan,
                lifecycle: inputs.lifecycle,
                placement: BusPlacement {
                    express: bus.kind == BusKind::Pcie,
                    root: bus.is_root,
                },
                kind_of: devices::kinds::kind_of,
            })
            .map_err(|e| e.to_string())?
        }
    };
    let threads = DeviceThreads::start(std::mem::take(&mut set.workers), &control.iothreads)
        .map_err(|e| format!("cannot start a device I/O thread: {e}"))?;
    let mut host = inputs.host.lock().unwrap_or_else(|e| e.into_inner());
    let provides_kind = f
        .provides_bus
        .as_deref()
        .and_then(|b| plan.bus(b))
        .map(|b| b.kind);
    host.hot_add(&f, func, kind, provides_kind)
        .map_err(|e| e.to_string())?;
    inputs
        .added
        .devices
        .insert((f.bus.clone(), f.devfn()), (threads, set));
    match plan.hotplug_mechanism(&f.bus) {
        HotplugMechanism::Acpi { .. } => {
            // acpi_pcihp_device_plug_cb powers a port's slot on for the device.
            host.with_bridge(&f.bus, |b| b.slot_enable_power());
            if let Some(p) = host.acpi_hotplug() {
                p.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .plug(&f.bus, f.slot);
            }
        }
        HotplugMechanism::Native => {
            let partner = host.link_partner(&f.bus);
            host.with_bridge(&f.bus, |b| b.slot_hot_plugged(f.devfn(), partner));
        }
        HotplugMechanism::Shpc => {
            host.with_bridge(&f.bus, |b| b.shpc_hot_plugged(f.devfn()));
        }
        HotplugMechanism::None => {}
    }
    drop(host);
    request
        .properties
        .retain(|(k, _)| k != "addr" && k != "bus");
    request.properties.push(("bus".to_string(), f.bus.clone()));
    request
        .properties
        .push(("addr".to_string(), machine::format_devfn(f.devfn())));
    let mut state = control.state();
    state.config.devices.push(request);
    state.plan = Some(plan);
    Ok(())
}

/// (bus, devfn) of `f` and of everything behind it when it is a bridge, children first.
fn subtree(plan: &Plan, f: &PciFunctionPlan, out: &mut Vec<(String, u8)>, depth: usize) {
    if depth > plan.buses.len() {
        return;
    }
    if let Some(child) = &f.provides_bus {
        for g in plan.pci.iter().filter(|g| &g.bus == child) {
            subtree(plan, g, out, depth + 1);
        }
    }
    out.push((f.bus.clone(), f.devfn()));
}

/// The guest ejected slot `slot` of `bus`: every function there that the machine type did
/// not create leaves the host, the plan and the configuration; DEVICE_DELETED for each
/// (its virtio backend first, as QEMU unrealizes the child before the proxy).
pub fn eject(control: &Controller, bus: &str, slot: u8, added: &mut HotAdded) {
    let (host, plan) = {
        let state = control.state();
        match (state.pci.clone(), state.plan.clone()) {
            (Some(h), Some(p)) => (h, p),
            _ => return,
        }
    };
    let mut plan = plan;
    let mut events = Vec::new();
    // Everything in the slot that the machine type did not create, and for a bridge what
    // is behind it, deepest first (QEMU unrealizes a bridge's bus before the bridge).
    let mut order = Vec::new();
    for f in plan
        .pci
        .iter()
        .filter(|f| f.bus == bus && f.slot == slot && !f.implicit)
    {
        subtree(&plan, f, &mut order, 0);
    }
    for (bus_id, devfn) in order {
        let Some(idx) = plan
            .pci
            .iter()
            .position(|f| f.bus == bus_id && f.devfn() == devfn)
        else {
            continue;
        };
        let f = plan.pci[idx].clone();
        host.lock()
            .unwrap_or_else(|e| e.into_inner())
            .hot_remove(&bus_id, devfn);
        // Its I/O thread stops (joined) now that nothing can reach the function.
        drop(added.devices.remove(&(bus_id.clone(), devfn)));
        plan = plan.without_function(idx);
        events.push(f);
    }
    if events.is_empty() {
        return;
    }
    {
        let mut state = control.state();
        for f in &events {
            if let Some(drive) = f.properties.nonempty_str("drive") {
                crate::backends::detach_drive(&mut state.config.backends, drive);
                // A -drive/drive_add drive goes with its device (QEMU's blockdev_auto_del);
                // a -blockdev node stays for blockdev-del.
                state.config.backends.retain(|b| {
                    !matches!(b, crate::backends::Backend::Drive { id, legacy: true, .. }
                        if id == drive)
                });
            }
            if let Some(id) = &f.id {
                state.unplug_pending.remove(id.as_str());
                state.config.devices.retain(|d| d.id() != Some(id.as_str()));
            } else {
                let addr = machine::format_devfn(f.devfn());
                state.config.devices.retain(|d| {
                    !(d.driver == f.type_name
                        && d.get("bus") == Some(f.bus.as_str())
                        && d.get("addr") == Some(addr.as_str()))
                });
            }
        }
        state.plan = Some(plan);
    }
    for f in events {
        // QOM paths exist for devices with an id (/machine/peripheral/ID).
        let Some(id) = f.id else { continue };
        let path = format!("/machine/peripheral/{id}");
        if f.virtio.is_some() {
            control.emit(
                "DEVICE_DELETED",
                json!({ "path": format!("{path}/virtio-backend") }),
            );
        }
        control.emit("DEVICE_DELETED", json!({ "device": id, "path": path }));
    }
}
