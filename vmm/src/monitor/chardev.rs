//! `query-chardev`: every configured chardev as QEMU reports it (`label`, `filename` in
//! QEMU's spelling, e.g. `pty:/dev/pts/3`, and whether a device front end uses it).

use crate::control::{Controller, VmState};
use qmp::{CommandDef, Map, ObjectType, Registry, RegistryError, Session, Type, Value};
use serde_json::json;
use std::sync::Arc;

/// Whether a configured device (`isa-serial`, `virtconsole`, ...) is connected to chardev
/// `id`.
fn frontend_open(state: &VmState, id: &str) -> bool {
    state
        .config
        .devices
        .iter()
        .any(|d| d.properties.iter().any(|(k, v)| k == "chardev" && v == id))
}

pub(super) fn register(reg: &mut Registry, control: &Arc<Controller>) -> Result<(), RegistryError> {
    let c = control.clone();
    reg.register(
        CommandDef::new("query-chardev")
            .returns(Type::array(Type::object(
                ObjectType::new("ChardevInfo")
                    .member("label", Type::Str)
                    .member("filename", Type::Str)
                    .member("frontend-open", Type::Bool),
            )))
            .allow_preconfig(true),
        move |_args: Map<String, Value>, _ctx: &mut Session| {
            let state = c.state();
            Ok(Value::Array(
                state
                    .config
                    .chardevs
                    .iter()
                    .map(|info| {
                        json!({
                            "label": info.label,
                            "filename": info.filename,
                            "frontend-open": frontend_open(&state, &info.label),
                        })
                    })
                    .collect(),
            ))
        },
    )?;
    Ok(())
}
