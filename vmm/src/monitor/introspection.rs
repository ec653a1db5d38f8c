//! Questions about machine and device types, answered from the catalog and from plans that
//! are computed on demand, before (or without) building anything: query-machines,
//! qom-list-types, device-list-properties, x-query-machine-definition, x-query-placement.

use crate::control::Controller;
use machine::{DeviceRequest, PlanRequest};
use qmp::{
    CommandDef, Map, ObjectType, QmpError, Registry, RegistryError, Session, TextHandler, Type,
    Value,
};
use serde_json::json;
use std::sync::Arc;

fn plan_error(e: machine::PlanError) -> QmpError {
    QmpError::generic(e.to_string())
}

/// `options` as an object of strings/bools/numbers (`{"usb": "off", "acpi": true}`).
fn options_from(value: Option<&Value>) -> Result<Vec<(String, String)>, QmpError> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let obj = value
        .as_object()
        .ok_or_else(|| QmpError::invalid_parameter_type("options", "object"))?;
    obj.iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Bool(true) => "on".to_string(),
                Value::Bool(false) => "off".to_string(),
                Value::Number(n) => n.to_string(),
                _ => {
                    return Err(QmpError::invalid_parameter_type(
                        &format!("options.{k}"),
                        "string",
                    ))
                }
            };
            Ok((k.clone(), text))
        })
        .collect()
}

/// Device definitions given as QMP objects (`{"driver": ..., "bus": ..., ...}`) or as
/// `-device` strings.
pub(super) fn devices_from(value: Option<&Value>) -> Result<Vec<DeviceRequest>, QmpError> {
    let Some(list) = value.and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|d| match d {
            Value::String(s) => DeviceRequest::parse(s).map_err(plan_error),
            other => DeviceRequest::from_json_object(other).map_err(plan_error),
        })
        .collect()
}

/// A flat CPU count from QMP's `cpus`: no maxcpus, no topology keys.
fn set_cpus(req: &mut PlanRequest, cpus: u64) {
    req.cpus = u32::try_from(cpus).unwrap_or(u32::MAX);
    req.max_cpus = None;
    req.smp = machine::SmpKeys::default();
}

/// A plan request from query arguments. With no `machine`, the configured machine (with its
/// queued devices) is the base; the arguments override its values.
fn request_from(args: &Map<String, Value>, control: &Controller) -> Result<PlanRequest, QmpError> {
    let state = control.state();
    if !args.contains_key("machine") {
        let mut req = state.config.plan_request();
        let extra = options_from(args.get("options"))?;
        req.options.extend(extra);
        if let Some(v) = args.get("nodefaults").and_then(Value::as_bool) {
            req.nodefaults = v;
        }
        if let Some(mem) = args.get("memory").and_then(super::preconfig::size_value) {
            req.ram_size = mem;
        }
        if let Some(cpus) = args.get("cpus").and_then(Value::as_u64) {
            set_cpus(&mut req, cpus);
        }
        req.devices.extend(devices_from(args.get("devices"))?);
        return Ok(req);
    }
    let mut req = PlanRequest {
        machine: args
            .get("machine")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| state.config.machine.clone()),
        options: options_from(args.get("options"))?,
        nodefaults: args
            .get("nodefaults")
            .and_then(Value::as_bool)
            .unwrap_or(state.config.nodefaults),
        ram_size: state.config.ram_size,
        cpus: state.config.cpus,
        phys_bits: crate::memory::host_phys_bits(),
        max_cpus: state.config.max_cpus,
        smp: state.config.smp,
        ..Default::default()
    };
    if let Some(mem) = args.get("memory").and_then(super::preconfig::size_value) {
        req.ram_size = mem;
    }
    if let Some(cpus) = args.get("cpus").and_then(Value::as_u64) {
        set_cpus(&mut req, cpus);
    }
    req.devices = devices_from(args.get("devices"))?;
    Ok(req)
}

fn plan_query_args(def: CommandDef) -> CommandDef {
    def.opt("machine", Type::Str)
        .opt("options", Type::Any)
        .opt("nodefaults", Type::Bool)
        .opt("memory", Type::Size)
        .opt("cpus", Type::Uint32)
        .opt("devices", Type::array(Type::Any))
        .allow_preconfig(true)
}

pub(super) fn register(reg: &mut Registry, control: &Arc<Controller>) -> Result<(), RegistryError> {
    let c = control.clone();
    reg.register(
        CommandDef::new("query-machines")
            .opt("compat-props", Type::Bool)
            .returns(Type::array(Type::Any))
            .allow_preconfig(true),
        move |args: Map<String, Value>, _ctx: &mut Session| {
            let compat = args
                .get("compat-props")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let state = c.state();
            Ok(Value::Array(
                state
                    .catalog
                    .machine_types()
                    .iter()
                    .map(|m| m.machine_info(compat))
                    .collect(),
            ))
        },
    )?;

    let c = control.clone();
    reg.register(
        CommandDef::new("qom-list-types")
            .opt("implements", Type::Str)
            .opt("abstract", Type::Bool)
            .returns(Type::array(Type::object(
                ObjectType::new("ObjectTypeInfo")
                    .member("name", Type::Str)
                    .optional("abstract", Type::Bool)
                    .optional("parent", Type::Str),
            )))
            .allow_preconfig(true),
        move |args: Map<String, Value>, _ctx: &mut Session| {
            let implements = args.get("implements").and_then(Value::as_str);
            let with_abstract = args
                .get("abstract")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let state = c.state();
            let list = state
                .catalog
                .device_types()
                .iter()
                .filter(|t| with_abstract || !t.is_abstract)
                // Header-only types are built for layout fidelity; nothing may be put on them.
                .filter(|t| t.modelled)
                .filter(|t| match implements {
                    None => true,
                    Some(i) => {
                        t.name == i
                            || t.ancestors.iter().any(|a| a == i)
                            || t.interfaces.iter().any(|x| x == i)
                    }
                })
                .map(|t| {
                    let mut info = json!({ "name": t.name });
                    if t.is_abstract {
                        info["abstract"] = json!(true);
                    }
                    if let Some(p) = &t.parent {
                        info["parent"] = json!(p);
                    }
                    info
                })
                .collect();
            // The other concrete types machina implements: objects, CPU and machine types.
            let mut list: Vec<Value> = list;
            let extra = super::probe::OBJECT_TYPES
                .iter()
                .map(|(t, _)| t.to_string())
                .chain(super::probe::cpu_types().into_iter().map(str::to_string))
                .chain(state.catalog.machine_types().iter().map(|m| m.qom_type()))
                .filter(|t| implements.is_none_or(|i| i == t.as_str()));
            list.extend(extra.map(|name| json!({ "name": name })));
            Ok(Value::Array(list))
        },
    )?;

    let c = control.clone();
    reg.register(
        CommandDef::new("device-list-properties")
            .arg("typename", Type::Str)
            .returns(Type::array(Type::Any))
            .allow_preconfig(true),
        move |args: Map<String, Value>, _ctx: &mut Session| {
            let name = args.get("typename").and_then(Value::as_str).unwrap_or("");
            let state = c.state();
            let is_object = super::probe::OBJECT_TYPES.iter().any(|(t, _)| *t == name)
                || super::probe::cpu_types().contains(&name)
                || state
                    .catalog
                    .machine_types()
                    .iter()
                    .any(|m| m.qom_type() == name);
            let ty = match state.catalog.device_type(name) {
                Some(ty) if ty.modelled => ty,
                // A QOM type that is not a device, as QEMU answers for it.
                None if is_object => {
                    return Err(QmpError::generic(
                        "Parameter 'typename' expects a non-abstract device type",
                    ))
                }
                // Unknown, or header-only (what machina lacks is absent).
                _ => {
                    return Err(QmpError::device_not_found(format!(
                        "Device '{name}' not found"
                    )))
                }
            };
            if ty.is_abstract {
                return Err(QmpError::generic(
                    "Parameter 'typename' expects a non-abstract device type",
                ));
            }
            Ok(Value::Array(
                ty.live_properties()
                    .map(|p| {
                        let mut info = json!({ "name": p.name, "type": p.ty.help_name() });
                        if let Some(d) = p
                            .description
                            .clone()
                            .or_else(|| p.ty.default_description().map(str::to_string))
                        {
                            info["description"] = json!(d);
                        }
                        if let Some(d) = &p.default {
                            info["default-value"] = d.clone();
                        }
                        info
                    })
                    .collect(),
            ))
        },
    )?;

    // The whole plan of any machine type with any options, without building anything.
    // Serialised straight to text: through a Value tree it took several times longer.
    let c = control.clone();
    reg.register(
        plan_query_args(CommandDef::new("x-query-machine-definition")).returns(Type::Any),
        TextHandler(move |args: Map<String, Value>, _ctx: &mut Session| {
            let req = request_from(&args, &c)?;
            let plan = c.state().catalog.plan(&req).map_err(plan_error)?;
            qmp::writer::to_json_text(&plan).map_err(|e| QmpError::generic(e.to_string()))
        }),
    )?;

    // Where would these devices land (and in which virtio mode), or which error, without
    // changing anything. Against the built machine's plan if there is one, else against the
    // plan of the arguments (or the configured machine).
    let c = control.clone();
    reg.register(
        plan_query_args(CommandDef::new("x-query-placement"))
            .opt("hotplug", Type::Bool)
            .returns(Type::array(Type::Any)),
        move |args: Map<String, Value>, _ctx: &mut Session| {
            let requests = devices_from(args.get("devices"))?;
            let mut base_args = args.clone();
            base_args.remove("devices");
            let req = request_from(&base_args, &c)?;
            let state = c.state();
            let explicit_machine = ["machine", "options", "nodefaults", "memory", "cpus"]
                .iter()
                .any(|k| args.contains_key(*k));
            let plan = match (&state.plan, explicit_machine) {
                (Some(plan), false) => plan.clone(),
                _ => state.catalog.plan(&req).map_err(plan_error)?,
            };
            let hotplug = args
                .get("hotplug")
                .and_then(Value::as_bool)
                .unwrap_or(state.plan.is_some());
            let results = state.catalog.place_any(&plan, &requests, hotplug);
            Ok(Value::Array(
                results
                    .into_iter()
                    .map(|r| match r {
                        Ok(placed) => json!({ "placement": placed }),
                        Err(e) => json!({ "error": e.to_string() }),
                    })
                    .collect(),
            ))
        },
    )?;
    Ok(())
}
