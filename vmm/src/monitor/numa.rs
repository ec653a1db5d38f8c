//! QMP `set-numa-node` (QEMU's NumaOptions) before the machine exists: each option is checked
//! as QEMU checks it when given and appended to the configuration's `-numa` list; the whole
//! configuration is completed and checked when the machine is planned (x-exit-preconfig).

use crate::control::Controller;
use machine::{NumaArg, NumaOption};
use qmp::{CommandDef, Map, QmpError, Registry, RegistryError, Session, Type, Value};
use std::sync::Arc;

/// NumaHmatLBOptions / NumaHmatCacheOptions: members type-checked as QMP's input visitor
/// does, then the option's own rules (shared with `-numa`).
fn hmat_from(ty: &str, args: &Map<String, Value>) -> Result<NumaOption, QmpError> {
    let enums = ["hierarchy", "data-type", "associativity", "policy"];
    let mut pairs = Vec::new();
    for (k, v) in args.iter().filter(|(k, _)| *k != "type") {
        let text = match v {
            Value::String(s) if enums.contains(&k.as_str()) => s.clone(),
            Value::Number(n) if !enums.contains(&k.as_str()) => match n.as_u64() {
                Some(n) => n.to_string(),
                None => return Err(QmpError::invalid_parameter_type(k, "integer")),
            },
            _ if enums.contains(&k.as_str()) => {
                return Err(QmpError::invalid_parameter_type(k, "string"))
            }
            _ => return Err(QmpError::invalid_parameter_type(k, "integer")),
        };
        pairs.push((k.clone(), text));
    }
    machine::numa::hmat_option(ty, &pairs).map_err(|m| {
        // QMP names an unknown member as unexpected.
        QmpError::generic(match m.strip_prefix("Invalid parameter ") {
            Some(name) => format!("Parameter {name} is unexpected"),
            None => m,
        })
    })
}

fn u32_arg(args: &Map<String, Value>, key: &str) -> Result<Option<u32>, QmpError> {
    match args.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| QmpError::invalid_parameter_type(key, "integer")),
    }
}

/// The NumaOptions union as machina's `-numa` option.
fn option_from(args: &Map<String, Value>) -> Result<NumaOption, QmpError> {
    let ty = args.get("type").and_then(Value::as_str).unwrap_or_default();
    let known: &[&str] = match ty {
        "node" => &["nodeid", "cpus", "mem", "memdev", "initiator"],
        "cpu" => &[
            "node-id",
            "socket-id",
            "die-id",
            "cluster-id",
            "core-id",
            "thread-id",
        ],
        "dist" => &["src", "dst", "val"],
        "hmat-lb" | "hmat-cache" => return hmat_from(ty, args),
        other => {
            return Err(QmpError::generic(format!(
                "Parameter 'type' does not accept value '{other}'"
            )))
        }
    };
    if let Some(extra) = args
        .keys()
        .find(|k| *k != "type" && !known.contains(&k.as_str()))
    {
        return Err(QmpError::generic(format!(
            "Parameter '{extra}' is unexpected"
        )));
    }
    Ok(match ty {
        "node" => {
            let cpus = match args.get("cpus") {
                None => Vec::new(),
                Some(Value::Array(list)) => list
                    .iter()
                    .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
                    .collect::<Option<Vec<u32>>>()
                    .ok_or_else(|| QmpError::invalid_parameter_type("cpus", "integer"))?,
                Some(_) => return Err(QmpError::invalid_parameter_type("cpus", "array")),
            };
            let memdev = match args.get("memdev") {
                None => None,
                Some(v) => Some(
                    v.as_str()
                        .ok_or_else(|| QmpError::invalid_parameter_type("memdev", "string"))?
                        .to_string(),
                ),
            };
            let mem = match args.get("mem") {
                None => None,
                Some(v) => Some(
                    super::preconfig::size_value(v)
                        .ok_or_else(|| QmpError::invalid_parameter_type("mem", "size"))?,
                ),
            };
            NumaOption::Node {
                nodeid: u32_arg(args, "nodeid")?,
                cpus,
                mem,
                memdev,
                memdev_size: None,
                initiator: u32_arg(args, "initiator")?,
            }
        }
        "cpu" => NumaOption::Cpu {
            node_id: u32_arg(args, "node-id")?,
            socket_id: u32_arg(args, "socket-id")?,
            die_id: u32_arg(args, "die-id")?,
            cluster_id: u32_arg(args, "cluster-id")?,
            core_id: u32_arg(args, "core-id")?,
            thread_id: u32_arg(args, "thread-id")?,
        },
        _ => {
            let need = |k: &str| {
                u32_arg(args, k)?
                    .ok_or_else(|| QmpError::generic(format!("Parameter '{k}' is missing")))
            };
            NumaOption::Dist {
                src: need("src")?,
                dst: need("dst")?,
                val: need("val")?,
            }
        }
    })
}

pub(super) fn register(reg: &mut Registry, control: &Arc<Controller>) -> Result<(), RegistryError> {
    let c = control.clone();
    reg.register(
        CommandDef::new("set-numa-node")
            .arg("type", Type::Str)
            .extra_args(true)
            .allow_preconfig(true),
        move |args: Map<String, Value>, _ctx: &mut Session| {
            let mut state = c.state();
            if state.plan.is_some() {
                return Err(QmpError::generic(
                    "The command is permitted only before the machine has been created",
                ));
            }
            let option = option_from(&args)?;
            let mut config = state.config.clone();
            config.numa.push(NumaArg { text: None, option });
            state
                .catalog
                .check_numa(&config.plan_request())
                .map_err(|e| QmpError::generic(e.to_string()))?;
            state.config = config;
            Ok(Value::Null)
        },
    )
}
