//! `device_del` on the running machine and the DEVICE_DELETED event: the request goes to
//! the bus's hot-plug handler (ACPI PCI hot-plug, the port's PCIe slot or the bridge's
//! standard hot-plug controller) and returns at once; the device goes when the guest ejects
//! it (`crate::hotplug::eject`).

use crate::control::{Command, Controller};
use devices::pci::bridge::{Unplug, UnplugRefusal};
use machine::HotplugMechanism;
use qmp::{CommandDef, EventDef, Map, QmpError, Registry, RegistryError, Session, Type, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `device_del`'s `id`: a device id or its QOM path under /machine/peripheral.
fn device_id(arg: &str) -> &str {
    arg.strip_prefix("/machine/peripheral/").unwrap_or(arg)
}

pub(super) fn register(reg: &mut Registry, control: &Arc<Controller>) -> Result<(), RegistryError> {
    let c = control.clone();
    reg.register(
        CommandDef::new("device_del").arg("id", Type::Str),
        move |args: Map<String, Value>, _ctx: &mut Session| {
            let arg = args.get("id").and_then(Value::as_str).unwrap_or_default();
            device_del(&c, device_id(arg))
        },
    )?;
    reg.register_event(
        EventDef::new("DEVICE_DELETED")
            .optional("device", Type::Str)
            .member("path", Type::Str),
    )?;
    Ok(())
}

fn not_found(id: &str) -> QmpError {
    QmpError::device_not_found(format!("Device '{id}' not found"))
}

/// QEMU's refusal of a second `device_del` while the first is pending and not expired.
fn check_pending(state: &crate::control::VmState, id: &str) -> Result<(), QmpError> {
    let running = state.status == crate::control::RunState::Running;
    match state.unplug_pending.get(id) {
        Some(expires) if !running || Instant::now() < *expires => Err(QmpError::generic(format!(
            "Device {id} is already in the process of unplug"
        ))),
        _ => Ok(()),
    }
}

fn device_del(control: &Controller, id: &str) -> Result<Value, QmpError> {
    if let Some(answer) = super::serial_ports::device_del(control, id) {
        return answer;
    }
    let mut state = control.state();
    let Some(plan) = state.plan.clone() else {
        return Err(not_found(id));
    };
    if let Some(answer) = crate::cpu_hotplug::device_del(&mut state, id) {
        return answer;
    }
    let Some(f) = plan
        .pci
        .iter()
        .find(|f| f.id.as_deref() == Some(id))
        .cloned()
    else {
        let other = plan.isa.iter().any(|d| d.id.as_deref() == Some(id))
            || plan
                .virtio_ports
                .iter()
                .any(|p| p.id.as_deref() == Some(id));
        return Err(if other {
            QmpError::generic(format!("Device '{id}' does not support hotplugging"))
        } else {
            not_found(id)
        });
    };
    let host = state.pci.clone().ok_or_else(|| not_found(id))?;
    match plan.hotplug_mechanism(&f.bus) {
        HotplugMechanism::None => Err(QmpError::generic(format!(
            "Bus '{}' does not support hotplugging",
            f.bus
        ))),
        HotplugMechanism::Acpi { .. } => {
            check_pending(&state, id)?;
            state
                .unplug_pending
                .insert(id.to_string(), Instant::now() + Duration::from_millis(1));
            let pcihp = host
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .acpi_hotplug();
            if let Some(p) = pcihp {
                p.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .unplug_request(&f.bus, f.slot);
            }
            Ok(Value::Null)
        }
        HotplugMechanism::Native => {
            check_pending(&state, id)?;
            let port_id = plan
                .pci
                .iter()
                .find(|p| p.provides_bus.as_deref() == Some(f.bus.as_str()))
                .and_then(|p| p.id.clone())
                .unwrap_or_else(|| "(null)".to_string());
            let answer = host
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .with_bridge(&f.bus, |b| b.slot_unplug_request(f.devfn()));
            let unsupported =
                format!("Hot-unplug failed: unsupported by the port device '{port_id}'");
            bridge_answer(
                control,
                state,
                &f,
                answer,
                Some(Duration::from_secs(5)),
                unsupported,
            )
        }
        // shpc_device_unplug_request_cb: no pending state (a second request presses the
        // button again, as in QEMU).
        HotplugMechanism::Shpc => {
            let answer = host
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .with_bridge(&f.bus, |b| b.shpc_unplug_request(f.devfn()));
            let unsupported = format!("Bus '{}' does not support hotplugging", f.bus);
            bridge_answer(control, state, &f, answer, None, unsupported)
        }
    }
}

/// `device_del`'s answer from a port's or bridge's unplug request: pending for `pending`
/// (the guest was asked), the device gone now (the slot was off), or the refusal.
fn bridge_answer(
    control: &Controller,
    mut state: std::sync::MutexGuard<'_, crate::control::VmState>,
    f: &machine::PciFunctionPlan,
    answer: Option<Result<Unplug, UnplugRefusal>>,
    pending: Option<Duration>,
    unsupported: String,
) -> Result<Value, QmpError> {
    match answer {
        Some(Ok(Unplug::Requested)) => {
            if let (Some(p), Some(id)) = (pending, &f.id) {
                state.unplug_pending.insert(id.clone(), Instant::now() + p);
            }
            Ok(Value::Null)
        }
        Some(Ok(Unplug::Now)) => {
            drop(state);
            control.submit(Command::Eject {
                bus: f.bus.clone(),
                slot: f.slot,
            })
        }
        Some(Err(UnplugRefusal::Busy)) => Err(QmpError::generic(
            "Hot-unplug failed: guest is busy (power indicator blinking)",
        )),
        Some(Err(UnplugRefusal::NoHotplug)) | None => Err(QmpError::generic(unsupported)),
    }
}
