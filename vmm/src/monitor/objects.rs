//! The user-creatable objects of QEMU's `/objects` container: `query-memdev` (the memory
//! backends, with the machine's default RAM backend once the board created it) and the
//! children `qom-list /objects` shows.

use crate::control::{Controller, VmState};
use qmp::{CommandDef, Map, ObjectType, Registry, RegistryError, Session, Type, Value};
use serde_json::json;
use std::sync::Arc;

/// The default RAM backend QEMU's machine_run_board_init creates (`pc.ram`, `ram` on
/// `none`): only once the machine exists, and only where the configuration lets the board
/// make one (`MachineConfig::default_ram_id`).
fn default_ram(state: &VmState) -> Option<(String, u64)> {
    let plan = state.plan.as_ref()?;
    let id = state.config.default_ram_id(plan.memory.ram_id.as_deref())?;
    Some((id.to_string(), state.config.ram_size))
}

/// `query-memdev`: every memory backend object, as machina maps it (without MAP_NORESERVE,
/// on no host-node policy: machina takes no other).
fn memdevs(state: &VmState) -> Value {
    let entry = |id: &str, size: u64, merge: bool, dump: bool, prealloc: bool, share: bool| {
        json!({"id": id, "size": size, "merge": merge, "dump": dump, "prealloc": prealloc,
               "share": share, "reserve": true, "host-nodes": [], "policy": "default"})
    };
    let mut list: Vec<Value> = state
        .config
        .memory_backends
        .iter()
        .map(|m| entry(&m.id, m.size, m.merge, m.dump, m.prealloc, m.share))
        .collect();
    if let Some((id, size)) = default_ram(state) {
        // QEMU's memory-backend-ram defaults.
        list.push(entry(&id, size, true, true, false, false));
    }
    Value::Array(list)
}

/// `/objects` children: (id, QOM type): what `-object` and `object-add` created and the
/// machine's default RAM backend. An `object-add` id must be none of them (QEMU's
/// container refuses a second child of a name: `crate::objects::check_new_id`).
pub(super) fn children(state: &VmState) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = state
        .config
        .user_objects()
        .into_iter()
        .map(|(id, qom_type)| (id.to_string(), qom_type.to_string()))
        .collect();
    if let Some((id, _)) = default_ram(state) {
        out.push((id, "memory-backend-ram".to_string()));
    }
    out
}

fn memdev_type() -> Type {
    Type::object(
        ObjectType::new("Memdev")
            .optional("id", Type::Str)
            .member("size", Type::Size)
            .member("merge", Type::Bool)
            .member("dump", Type::Bool)
            .member("prealloc", Type::Bool)
            .member("share", Type::Bool)
            .optional("reserve", Type::Bool)
            .member("host-nodes", Type::array(Type::Uint16))
            .member(
                "policy",
                Type::enumeration(
                    "HostMemPolicy",
                    &["default", "preferred", "bind", "interleave"],
                ),
            ),
    )
}

pub(super) fn register(reg: &mut Registry, control: &Arc<Controller>) -> Result<(), RegistryError> {
    let c = control.clone();
    reg.register(
        CommandDef::new("query-memdev")
            .returns(Type::array(memdev_type()))
            .allow_preconfig(true),
        move |_args: Map<String, Value>, _ctx: &mut Session| Ok(memdevs(&c.state())),
    )?;
    Ok(())
}
