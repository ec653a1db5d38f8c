//! `set-action`, `watchdog-set-action` and the events of guest-triggered actions (WATCHDOG,
//! GUEST_PANICKED, GUEST_CRASHLOADED, GUEST_PVSHUTDOWN), as QEMU's qapi/run-state.json. The
//! schema validates the enum values, so a handler only stores them.

use crate::actions::{ActionEnum, PanicAction, RebootAction, ShutdownAction, WatchdogAction};
use crate::control::Controller;
use qmp::{CommandDef, EventDef, Map, QmpError, Registry, RegistryError, Session, Type, Value};
use std::sync::Arc;

fn enum_type<E: ActionEnum>(name: &str) -> Type {
    Type::enumeration(name, &E::names())
}

/// The schema has checked the value; an unknown one is still refused, never guessed.
fn value<E: ActionEnum>(args: &Map<String, Value>, key: &str) -> Result<Option<E>, QmpError> {
    match args.get(key).and_then(Value::as_str) {
        None => Ok(None),
        Some(s) => E::parse(s).map(Some).ok_or_else(|| {
            QmpError::generic(format!("Parameter '{key}' does not accept value '{s}'"))
        }),
    }
}

pub(super) fn register(reg: &mut Registry, control: &Arc<Controller>) -> Result<(), RegistryError> {
    let c = control.clone();
    reg.register(
        CommandDef::new("set-action")
            .opt("reboot", enum_type::<RebootAction>("RebootAction"))
            .opt("shutdown", enum_type::<ShutdownAction>("ShutdownAction"))
            .opt("panic", enum_type::<PanicAction>("PanicAction"))
            .opt("watchdog", enum_type::<WatchdogAction>("WatchdogAction"))
            .allow_preconfig(true),
        move |args: Map<String, Value>, _ctx: &mut Session| {
            let reboot = value::<RebootAction>(&args, "reboot")?;
            let shutdown = value::<ShutdownAction>(&args, "shutdown")?;
            let panic = value::<PanicAction>(&args, "panic")?;
            let watchdog = value::<WatchdogAction>(&args, "watchdog")?;
            let mut state = c.state();
            let a = &mut state.config.actions;
            a.reboot = reboot.unwrap_or(a.reboot);
            a.shutdown = shutdown.unwrap_or(a.shutdown);
            a.panic = panic.unwrap_or(a.panic);
            a.watchdog = watchdog.unwrap_or(a.watchdog);
            Ok(Value::Object(Map::new()))
        },
    )?;
    let c = control.clone();
    reg.register(
        CommandDef::new("watchdog-set-action")
            .arg("action", enum_type::<WatchdogAction>("WatchdogAction")),
        move |args: Map<String, Value>, _ctx: &mut Session| {
            if let Some(action) = value::<WatchdogAction>(&args, "action")? {
                c.state().config.actions.watchdog = action;
            }
            Ok(Value::Object(Map::new()))
        },
    )?;

    reg.register_event(
        EventDef::new("WATCHDOG").member("action", enum_type::<WatchdogAction>("WatchdogAction")),
    )?;
    let panic_action = Type::enumeration("GuestPanicAction", &["pause", "poweroff", "run"]);
    for event in ["GUEST_PANICKED", "GUEST_CRASHLOADED"] {
        reg.register_event(EventDef::new(event).member("action", panic_action.clone()))?;
    }
    reg.register_event(EventDef::new("GUEST_PVSHUTDOWN"))?;
    Ok(())
}
