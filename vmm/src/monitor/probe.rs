//! What a management tool asks before and right after starting a machine (libvirt's
//! capability probe): the target, KVM, QOM properties of every type machina implements,
//! command-line options, migration capabilities (machina has no migration), iothreads and
//! jobs (none yet).

use super::cpus;
use crate::control::Controller;
use qmp::{CommandDef, Map, ObjectType, QmpError, Registry, RegistryError, Session, Type, Value};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// QEMU's name of the target architecture machina emulates.
fn target_arch() -> &'static str {
    // machina runs guests of its host's architecture under KVM.
    if cfg!(target_arch = "x86_64") {
        "x86_64"
    } else {
        std::env::consts::ARCH
    }
}

/// Whether /dev/kvm can be opened for use.
fn kvm_present() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// A QOM property: name, QOM type, description.
type PropertyInfo = (&'static str, &'static str, &'static str);

/// The non-device QOM types machina implements as `-object`/`object-add`, with their
/// properties.
pub(super) const OBJECT_TYPES: &[(&str, &[PropertyInfo])] = &[
    (
        "rng-random",
        &[(
            "filename",
            "string",
            "the file entropy is read from (default /dev/urandom)",
        )],
    ),
    ("memory-backend-ram", MEMORY_BACKEND),
    ("memory-backend-memfd", MEMORY_BACKEND),
    ("memory-backend-file", MEMORY_BACKEND_FILE),
    (
        "iothread",
        &[
            (
                "poll-max-ns",
                "int",
                "accepted; machina's I/O threads never poll",
            ),
            (
                "poll-grow",
                "int",
                "accepted; machina's I/O threads never poll",
            ),
            (
                "poll-shrink",
                "int",
                "accepted; machina's I/O threads never poll",
            ),
            ("aio-max-batch", "int", "accepted; no effect in machina"),
            ("thread-pool-min", "int", "accepted; no effect in machina"),
            ("thread-pool-max", "int", "accepted; no effect in machina"),
        ],
    ),
    (
        "secret",
        &[
            ("data", "string", "the secret's value"),
            ("file", "string", "a file holding the secret's value"),
            ("format", "QCryptoSecretFormat", "raw or base64"),
        ],
    ),
];

/// What `-object memory-backend-*` acts on (objects.rs); properties it accepts only at
/// their default (e.g. `hugetlb=off`) are not listed, so libvirt does not ask for them.
const MEMORY_BACKEND: &[PropertyInfo] = &[
    ("size", "int", "size of the memory region"),
    ("share", "bool", "map the memory shared (MAP_SHARED)"),
    ("prealloc", "bool", "touch every page at start"),
    ("merge", "bool", "let KSM merge the pages (MADV_MERGEABLE)"),
    ("dump", "bool", "include the memory in core dumps"),
];

const MEMORY_BACKEND_FILE: &[PropertyInfo] = &[
    ("size", "int", "size of the memory region"),
    ("share", "bool", "map the memory shared (MAP_SHARED)"),
    ("prealloc", "bool", "touch every page at start"),
    ("merge", "bool", "let KSM merge the pages (MADV_MERGEABLE)"),
    ("dump", "bool", "include the memory in core dumps"),
    (
        "mem-path",
        "string",
        "the file, or a directory to create it in",
    ),
];

/// The CPU types (`host-x86_64-cpu`, `max-x86_64-cpu`).
pub(super) fn cpu_types() -> Vec<&'static str> {
    crate::cpuid::CpuModel::all()
        .iter()
        .map(|m| m.type_name())
        .collect()
}

fn class_not_found(name: &str) -> QmpError {
    QmpError::device_not_found(format!("Class '{name}' not found"))
}

/// `qom-list-properties`: device types from the catalog, machine types with their options,
/// the CPU types, and the objects above.
fn list_properties(state: &crate::control::VmState, name: &str) -> Result<Value, QmpError> {
    let prop = |n: &str, t: &str| json!({"name": n, "type": t});
    if let Some(ty) = state.catalog.device_type(name).filter(|t| t.modelled) {
        let mut list = vec![prop("type", "string")];
        list.extend(ty.live_properties().map(|p| {
            let mut info = prop(&p.name, p.ty.help_name());
            if let Some(d) = &p.description {
                info["description"] = json!(d);
            }
            info
        }));
        return Ok(Value::Array(list));
    }
    if let Some(machine) = name
        .strip_suffix("-machine")
        .and_then(|m| state.catalog.machine_types().iter().find(|t| t.name == m))
    {
        let mut list = vec![prop("type", "string")];
        list.extend(
            machine
                .options
                .iter()
                .filter(|o| o.usable())
                .map(|o| prop(&o.name, "string")),
        );
        return Ok(Value::Array(list));
    }
    if let Some(props) = cpus::cpu_type_properties(name) {
        return Ok(Value::Array(props));
    }
    if let Some((_, props)) = OBJECT_TYPES.iter().find(|(t, _)| *t == name) {
        let mut list = vec![prop("type", "string")];
        list.extend(
            props
                .iter()
                .map(|(n, t, d)| json!({"name": n, "type": t, "description": d})),
        );
        return Ok(Value::Array(list));
    }
    Err(class_not_found(name))
}

pub(super) fn register(reg: &mut Registry, control: &Arc<Controller>) -> Result<(), RegistryError> {
    reg.register(
        CommandDef::new("query-target")
            .returns(Type::object(
                ObjectType::new("TargetInfo").member("arch", Type::Str),
            ))
            .allow_preconfig(true),
        |_args: Map<String, Value>, _ctx: &mut Session| Ok(json!({ "arch": target_arch() })),
    )?;

    let c = control.clone();
    reg.register(
        CommandDef::new("query-kvm")
            .returns(Type::object(
                ObjectType::new("KvmInfo")
                    .member("enabled", Type::Bool)
                    .member("present", Type::Bool),
            ))
            .allow_preconfig(true),
        move |_args: Map<String, Value>, _ctx: &mut Session| {
            let present = kvm_present();
            let enabled = present && c.state().config.kvm;
            Ok(json!({ "enabled": enabled, "present": present }))
        },
    )?;

    let c = control.clone();
    reg.register(
        CommandDef::new("qom-list-properties")
            .arg("typename", Type::Str)
            .returns(Type::array(object_property_info_type()))
            .allow_preconfig(true),
        move |args: Map<String, Value>, _ctx: &mut Session| {
            let name = args.get("typename").and_then(Value::as_str).unwrap_or("");
            list_properties(&c.state(), name)
        },
    )?;

    let c = control.clone();
    reg.register(
        CommandDef::new("query-command-line-options")
            .opt("option", Type::Str)
            .returns(Type::array(Type::object(
                ObjectType::new("CommandLineOptionInfo")
                    .member("option", Type::Str)
                    .member("parameters", Type::array(Type::Any)),
            )))
            .allow_preconfig(true),
        move |args: Map<String, Value>, _ctx: &mut Session| {
            let wanted = args.get("option").and_then(Value::as_str);
            let state = c.state();
            // -machine's keys are the configured machine type's options.
            let machine_keys: Vec<String> = state
                .catalog
                .plan(&state.config.plan_request())
                .ok()
                .and_then(|plan| {
                    state
                        .catalog
                        .machine_types()
                        .iter()
                        .find(|t| t.name == plan.machine)
                        .map(|t| t.options.iter().map(|o| o.name.clone()).collect())
                })
                .unwrap_or_default();
            let list: Vec<Value> = crate::cli::KEYVAL_OPTIONS
                .iter()
                .filter(|(opt, _)| wanted.is_none_or(|w| w == *opt))
                .map(|(opt, keys)| {
                    let mut params: Vec<Value> = keys
                        .iter()
                        .map(|k| json!({"name": k, "type": "string"}))
                        .collect();
                    if *opt == "machine" {
                        params.extend(
                            machine_keys
                                .iter()
                                .map(|k| json!({"name": k, "type": "string"})),
                        );
                    }
                    json!({"option": opt, "parameters": params})
                })
                .collect();
            if let (Some(w), true) = (wanted, list.is_empty()) {
                return Err(QmpError::generic(format!("invalid option name: {w}")));
            }
            Ok(Value::Array(list))
        },
    )?;

    // Migration: machina cannot migrate, so the only capability is `events` (MIGRATION
    // events), which libvirt turns on at every start; with no migration it emits none.
    let events = Arc::new(AtomicBool::new(false));
    let status = Type::object(
        ObjectType::new("MigrationCapabilityStatus")
            .member(
                "capability",
                Type::enumeration("MigrationCapability", &["events"]),
            )
            .member("state", Type::Bool),
    );
    let e = events.clone();
    reg.register(
        CommandDef::new("query-migrate-capabilities").returns(Type::array(status.clone())),
        move |_args: Map<String, Value>, _ctx: &mut Session| {
            Ok(json!([{"capability": "events", "state": e.load(Ordering::SeqCst)}]))
        },
    )?;
    reg.register(
        CommandDef::new("migrate-set-capabilities").arg("capabilities", Type::array(status)),
        move |args: Map<String, Value>, _ctx: &mut Session| {
            let list = args
                .get("capabilities")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            // Checked by the schema: every entry names `events` with a boolean state.
            for item in list {
                if let Some(on) = item.get("state").and_then(Value::as_bool) {
                    events.store(on, Ordering::SeqCst);
                }
            }
            Ok(Value::Null)
        },
    )?;

    // The `-object iothread` threads as they run: machina's loops block in epoll and never
    // poll (poll-max-ns 0: polling disabled; grow/shrink 0: no adaptive polling) and leave
    // batching to the backend (aio-max-batch 0: the engine's default).
    let c = control.clone();
    reg.register(
        CommandDef::new("query-iothreads")
            .returns(Type::array(Type::object(
                ObjectType::new("IOThreadInfo")
                    .member("id", Type::Str)
                    .member("thread-id", Type::Int)
                    .member("poll-max-ns", Type::Int)
                    .member("poll-grow", Type::Int)
                    .member("poll-shrink", Type::Int)
                    .member("aio-max-batch", Type::Int),
            )))
            .allow_preconfig(true),
        move |_args: Map<String, Value>, _ctx: &mut Session| {
            Ok(Value::Array(
                c.iothreads
                    .list()
                    .iter()
                    .map(|t| {
                        json!({
                            "id": t.spec.id,
                            "thread-id": t.tid,
                            "poll-max-ns": 0,
                            "poll-grow": 0,
                            "poll-shrink": 0,
                            "aio-max-batch": 0,
                        })
                    })
                    .collect(),
            ))
        },
    )?;
    // No block jobs: the list is truly empty.
    reg.register(
        CommandDef::new("query-jobs").returns(Type::array(Type::object(
            ObjectType::new("JobInfo")
                .member("id", Type::Str)
                .member("type", Type::Str)
                .member("status", Type::Str),
        ))),
        |_args: Map<String, Value>, _ctx: &mut Session| Ok(json!([])),
    )?;
    Ok(())
}

/// QEMU's `ObjectPropertyInfo`, the element of `qom-list` and `qom-list-properties` answers.
pub fn object_property_info_type() -> Type {
    Type::object(
        ObjectType::new("ObjectPropertyInfo")
            .member("name", Type::Str)
            .member("type", Type::Str)
            .optional("description", Type::Str)
            .optional("default-value", Type::Any),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{self, ObjectSpec};
    use std::ffi::OsString;

    /// `-object TYPE,id=o0,...` with `prop` set (and what the type needs besides).
    fn spec(ty: &str, prop: &str, dir: &std::path::Path) -> String {
        let value = match prop {
            "size" => "1M".to_string(),
            "mem-path" => dir.display().to_string(),
            "filename" => "/dev/urandom".to_string(),
            "data" => "secret".to_string(),
            "format" => "raw".to_string(),
            "file" => dir.join("secret.txt").display().to_string(),
            _ if ty == "iothread" => "1".to_string(),
            _ => "on".to_string(),
        };
        let mut spec = format!("{ty},id=o0,{prop}={value}");
        if ty.starts_with("memory-backend") && prop != "size" {
            spec.push_str(",size=1M");
        }
        if ty == "memory-backend-file" && prop != "mem-path" {
            spec.push_str(&format!(",mem-path={}", dir.display()));
        }
        if ty == "secret" && prop == "format" {
            spec.push_str(",data=secret");
        }
        spec
    }

    /// Every property qom-list-properties reports for an object type is one `-object`
    /// really takes: what libvirt learns from the list, it may write on the command line.
    #[test]
    fn listed_object_properties_are_accepted() {
        let dir = machina_tests::TempDir::new("objprops");
        std::fs::write(dir.join("secret.txt"), "secret").unwrap();
        for (ty, props) in OBJECT_TYPES {
            for (prop, _, _) in *props {
                let text = spec(ty, prop, &dir);
                let accepted = match objects::parse(&OsString::from(&text)) {
                    Ok(ObjectSpec::Other(rest)) => crate::backends::parse_object(rest).is_ok(),
                    Ok(_) => true,
                    Err(e) => panic!("-object {text}: {e}"),
                };
                assert!(accepted, "-object {text}");
            }
        }
    }
}
