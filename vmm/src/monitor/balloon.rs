//! The balloon's monitor side (QEMU's system/balloon.c and the virtio-balloon QOM
//! properties): `balloon`, `query-balloon`, BALLOON_CHANGE, and `guest-stats` /
//! `guest-stats-polling-interval` on the device's QOM path. Answers come from the device's
//! [`BalloonControl`], which the guest's driver updates.

use crate::control::{Controller, VmState};
use devices::virtio::balloon::{BalloonControl, DEVICE_TYPE};
use qmp::{CommandDef, ErrorClass, Map, ObjectType, QmpError, Registry, RegistryError, Session};
use qmp::{EventDef, Type, Value};
use serde_json::json;
use std::sync::{Arc, OnceLock};

/// The process's balloon control, shared by every build (QEMU registers one balloon).
pub fn control() -> std::io::Result<Arc<BalloonControl>> {
    static CONTROL: OnceLock<Arc<BalloonControl>> = OnceLock::new();
    if let Some(c) = CONTROL.get() {
        return Ok(c.clone());
    }
    let c = BalloonControl::new()?;
    Ok(CONTROL.get_or_init(|| c).clone())
}

/// Whether the running machine has a balloon (QEMU's have_balloon).
fn active(state: &VmState) -> Result<Arc<BalloonControl>, QmpError> {
    let present = state.plan.as_ref().is_some_and(|p| {
        p.pci
            .iter()
            .any(|f| f.virtio.is_some_and(|v| v.device_type == DEVICE_TYPE))
    });
    if !present {
        return Err(QmpError::new(
            ErrorClass::DeviceNotActive,
            "No balloon device has been activated",
        ));
    }
    control().map_err(|e| QmpError::generic(format!("balloon: {e}")))
}

/// Whether the peripheral `id` of the running machine is a balloon.
fn is_balloon(state: &VmState, id: &str) -> bool {
    state.plan.as_ref().is_some_and(|p| {
        p.pci.iter().any(|f| {
            f.id.as_deref() == Some(id) && f.virtio.is_some_and(|v| v.device_type == DEVICE_TYPE)
        })
    })
}

/// `qom-get` of a balloon's own properties at `/machine/peripheral/ID`; None for any other
/// path or property.
pub(super) fn qom_get(state: &VmState, path: &str, property: &str) -> Option<Value> {
    let id = path.strip_prefix("/machine/peripheral/")?;
    if !is_balloon(state, id) {
        return None;
    }
    let c = control().ok()?;
    match property {
        "guest-stats" => {
            let (last, stats) = c.stats();
            let stats: Map<String, Value> = stats
                .into_iter()
                .map(|(n, v)| (n.to_string(), json!(v)))
                .collect();
            Some(json!({"last-update": last, "stats": stats}))
        }
        "guest-stats-polling-interval" => Some(json!(c.poll_interval())),
        _ => None,
    }
}

/// `qom-set` of a balloon's writable property; None where the path or property is not one.
pub(super) fn qom_set(
    state: &VmState,
    path: &str,
    property: &str,
    value: &Value,
) -> Option<Result<(), QmpError>> {
    let id = path.strip_prefix("/machine/peripheral/")?;
    if property != "guest-stats-polling-interval" || !is_balloon(state, id) {
        return None;
    }
    let Some(secs) = value.as_i64() else {
        return Some(Err(QmpError::generic(format!(
            "Invalid parameter type for '{property}', expected: integer"
        ))));
    };
    Some(
        control()
            .map_err(|e| QmpError::generic(format!("balloon: {e}")))
            .and_then(|c| {
                c.set_poll_interval(secs)
                    .map_err(|e| QmpError::generic(e.to_string()))
            }),
    )
}

/// The QOM properties `qom-list` shows for a balloon besides `type`.
pub(super) fn qom_properties(state: &VmState, path: &str) -> Vec<(&'static str, &'static str)> {
    match path.strip_prefix("/machine/peripheral/") {
        Some(id) if is_balloon(state, id) => vec![
            ("guest-stats", "guest statistics"),
            ("guest-stats-polling-interval", "int"),
        ],
        _ => Vec::new(),
    }
}

pub fn register(reg: &mut Registry, control_: &Arc<Controller>) -> Result<(), RegistryError> {
    // BALLOON_CHANGE carries what the guest has left, from the `actual` it reports.
    if let Ok(c) = control() {
        let events = control_.clone();
        c.set_change_sink(Box::new(move |actual| {
            events.emit("BALLOON_CHANGE", json!({ "actual": actual }));
        }));
    }
    reg.register_event(EventDef::new("BALLOON_CHANGE").member("actual", Type::Int))?;

    let c = control_.clone();
    reg.register(
        CommandDef::new("balloon").arg("value", Type::Int),
        move |args: Map<String, Value>, _ctx: &mut Session| {
            let balloon = active(&c.state())?;
            let value = args.get("value").and_then(Value::as_i64).unwrap_or(0);
            if value <= 0 {
                return Err(QmpError::generic("Parameter 'value' expects a size"));
            }
            balloon.to_target(value as u64);
            Ok(Value::Null)
        },
    )?;

    let c = control_.clone();
    reg.register(
        CommandDef::new("query-balloon").returns(Type::object(
            ObjectType::new("BalloonInfo").member("actual", Type::Int),
        )),
        move |_args: Map<String, Value>, _ctx: &mut Session| {
            let balloon = active(&c.state())?;
            Ok(json!({ "actual": balloon.actual_bytes() }))
        },
    )?;
    Ok(())
}
