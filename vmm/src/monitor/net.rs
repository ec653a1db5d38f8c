//! Network commands and events: `netdev_del`, `announce-self`, NETDEV_STREAM_CONNECTED and
//! NETDEV_STREAM_DISCONNECTED (emitted by the network thread, crate::netdev).

use crate::control::Controller;
use qmp::{CommandDef, EventDef, QmpError, Registry, RegistryError, Session, Type};
use serde_json::{Map, Value};
use std::sync::Arc;

pub(super) fn register(reg: &mut Registry, control: &Arc<Controller>) -> Result<(), RegistryError> {
    let c = control.clone();
    reg.register(
        CommandDef::new("netdev_del")
            .arg("id", Type::Str)
            .allow_preconfig(true),
        move |args: Map<String, Value>, _ctx: &mut Session| {
            let id = args.get("id").and_then(Value::as_str).unwrap_or("");
            let mut state = c.state();
            let backends = &mut state.config.backends;
            let Some(pos) = backends.iter().position(|b| {
                b.id() == id
                    && matches!(
                        b,
                        crate::backends::Backend::Tap { .. }
                            | crate::backends::Backend::Netdev { .. }
                    )
            }) else {
                return Err(QmpError::device_not_found(format!(
                    "Device '{id}' not found"
                )));
            };
            // The netdev's sockets close with its last handle; a NIC that had it as its
            // peer keeps working without one, as in QEMU.
            backends.remove(pos);
            Ok(Value::Null)
        },
    )?;
    reg.register(
        CommandDef::new("announce-self")
            .arg("initial", Type::Int)
            .arg("max", Type::Int)
            .arg("rounds", Type::Int)
            .arg("step", Type::Int)
            .opt("interfaces", Type::array(Type::Str))
            .opt("id", Type::Str),
        |args: Map<String, Value>, _ctx: &mut Session| {
            let int = |k: &str| args.get(k).and_then(Value::as_i64).unwrap_or(0);
            let interfaces = args
                .get("interfaces")
                .and_then(Value::as_array)
                .map(|list| {
                    list.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                });
            let id = args
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            crate::netdev::announce(
                id,
                interfaces,
                int("initial"),
                int("max"),
                int("rounds"),
                int("step"),
            );
            Ok(Value::Null)
        },
    )?;
    reg.register_event(
        EventDef::new("NETDEV_STREAM_CONNECTED")
            .member("netdev-id", Type::Str)
            .member("addr", Type::Any),
    )?;
    reg.register_event(EventDef::new("NETDEV_STREAM_DISCONNECTED").member("netdev-id", Type::Str))?;
    Ok(())
}
