//! Run-state commands and events: query-status, stop, cont, system_reset, system_powerdown,
//! quit, x-exit-preconfig (and its alias), query-name.

use crate::control::{Command, Controller};
use qmp::{
    CommandDef, EventDef, Map, ObjectType, QmpError, Registry, RegistryError, Session, Type, Value,
};
use serde_json::json;
use std::sync::Arc;

const RUN_STATES: &[&str] = &[
    "debug",
    "inmigrate",
    "internal-error",
    "io-error",
    "paused",
    "postmigrate",
    "prelaunch",
    "finish-migrate",
    "restore-vm",
    "running",
    "save-vm",
    "shutdown",
    "suspended",
    "watchdog",
    "guest-panicked",
    "colo",
];

const SHUTDOWN_CAUSES: &[&str] = &[
    "none",
    "host-error",
    "host-qmp-quit",
    "host-qmp-system-reset",
    "host-signal",
    "host-ui",
    "guest-shutdown",
    "guest-reset",
    "guest-panic",
    "subsystem-reset",
    "snapshot-load",
];

fn queued(
    control: &Arc<Controller>,
    command: Command,
) -> impl Fn(Map<String, Value>, &mut Session) -> Result<Value, QmpError> {
    let control = control.clone();
    move |_args, _ctx| control.submit(command.clone())
}

pub(super) fn register(reg: &mut Registry, control: &Arc<Controller>) -> Result<(), RegistryError> {
    let status_info = ObjectType::new("StatusInfo")
        .member("running", Type::Bool)
        .member("status", Type::enumeration("RunState", RUN_STATES));
    let c = control.clone();
    reg.register(
        CommandDef::new("query-status")
            .returns(Type::object(status_info))
            .allow_preconfig(true),
        move |_args: Map<String, Value>, _ctx: &mut Session| {
            let status = c.state().status;
            Ok(json!({
                "status": status.as_str(),
                "running": status == crate::control::RunState::Running,
            }))
        },
    )?;
    let c = control.clone();
    reg.register(
        CommandDef::new("query-name")
            .returns(Type::object(
                ObjectType::new("NameInfo").optional("name", Type::Str),
            ))
            .allow_preconfig(true),
        move |_args: Map<String, Value>, _ctx: &mut Session| {
            Ok(match &c.state().config.name {
                Some(name) => json!({ "name": name }),
                None => json!({}),
            })
        },
    )?;
    reg.register(CommandDef::new("stop"), queued(control, Command::Stop))?;
    reg.register(CommandDef::new("cont"), queued(control, Command::Cont))?;
    reg.register(
        CommandDef::new("system_reset"),
        queued(control, Command::Reset),
    )?;
    reg.register(
        CommandDef::new("system_powerdown"),
        queued(control, Command::PowerDown),
    )?;
    reg.register(
        CommandDef::new("quit").allow_preconfig(true),
        queued(control, Command::Quit),
    )?;
    // QEMU's name (build, then run unless -S; returns nothing, once only), and a clearer
    // one that builds and stops there and returns the plan, so a tool can compare the
    // machine with its prediction before `cont`; on a built machine it returns its plan.
    reg.register(
        CommandDef::new("x-exit-preconfig").allow_preconfig(true),
        queued(control, Command::Build { start: true }),
    )?;
    reg.register(
        CommandDef::new("machine-build")
            .returns(Type::Any)
            .allow_preconfig(true),
        queued(control, Command::Build { start: false }),
    )?;

    for event in ["STOP", "RESUME", "POWERDOWN"] {
        reg.register_event(EventDef::new(event))?;
    }
    // A disk error whose action is `stop` (machina reports only those).
    reg.register_event(
        EventDef::new("BLOCK_IO_ERROR")
            .member("device", Type::Str)
            .optional("node-name", Type::Str)
            .member(
                "operation",
                Type::enumeration("IoOperationType", &["read", "write"]),
            )
            .member(
                "action",
                Type::enumeration("BlockErrorAction", &["ignore", "report", "stop"]),
            )
            .optional("nospace", Type::Bool)
            .member("reason", Type::Str),
    )?;
    for event in ["SHUTDOWN", "RESET"] {
        reg.register_event(EventDef::new(event).member("guest", Type::Bool).member(
            "reason",
            Type::enumeration("ShutdownCause", SHUTDOWN_CAUSES),
        ))?;
    }
    Ok(())
}
