//! CPU commands: query-hotpluggable-cpus and query-cpus-fast from the plan's topology and
//! the vCPU threads, query-cpu-definitions and query-cpu-model-expansion for the models
//! machina offers (`host`, `max`), and the CPU objects' QOM properties (qom-list/qom-get of
//! `/machine/unattached/device[N]`), all read from the CPUID machina gives the guest.

use crate::control::{Controller, VmState};
use crate::cpu_models::ModelDef;
use crate::cpuid::{self, CpuModel};
use kvm_bindings::CpuId;
use machine::{CpuTopology, Plan};
use qmp::{CommandDef, Map, ObjectType, QmpError, Registry, RegistryError, Session, Type, Value};
use serde_json::json;
use std::sync::Arc;

/// KVM's supported CPUID, read once per process. None when /dev/kvm cannot be used.
pub(super) fn supported_cpuid() -> Option<&'static CpuId> {
    crate::kvm_vm::supported_cpuid()
}

fn no_kvm() -> QmpError {
    QmpError::generic("KVM is not available: machina's CPU models need /dev/kvm")
}

/// The CPUID vCPU `index` of `model` gets in `topo`.
fn vcpu_cpuid(
    model: CpuModel,
    features: &cpuid::FeatureRequest,
    index: u32,
    topo: &CpuTopology,
) -> Result<CpuId, QmpError> {
    let supported = supported_cpuid().ok_or_else(no_kvm)?;
    cpuid::for_vcpu(supported, model, features, index, topo)
        .map_err(|e| QmpError::generic(e.to_string()))
}

fn state_model(state: &VmState) -> CpuModel {
    state.config.cpu_model.unwrap_or(CpuModel::Host)
}

/// The plan of the built machine, or of the configured one before the build.
fn current_plan(state: &VmState) -> Result<Plan, QmpError> {
    match &state.plan {
        Some(plan) => Ok(plan.clone()),
        None => state
            .catalog
            .plan(&state.config.plan_request())
            .map_err(|e| QmpError::generic(e.to_string())),
    }
}

fn cpu_type(state: &VmState) -> &'static str {
    state.config.cpu_model.unwrap_or(CpuModel::Host).type_name()
}

/// CpuInstanceProperties of CPU `index`: die-id only when there are dies, node-id only with
/// NUMA nodes, as QEMU does.
fn cpu_props(topo: &CpuTopology, numa: &machine::NumaPlan, index: u32) -> Value {
    let ids = topo.ids(index);
    let mut props = json!({
        "socket-id": ids.socket,
        "core-id": ids.core,
        "thread-id": ids.thread,
    });
    if topo.dies > 1 {
        props["die-id"] = json!(ids.die);
    }
    if let Some(node) = numa.node_of(index) {
        props["node-id"] = json!(node);
    }
    props
}

fn instance_props_type() -> Type {
    Type::object(
        ObjectType::new("CpuInstanceProperties")
            .optional("node-id", Type::Int)
            .optional("socket-id", Type::Int)
            .optional("die-id", Type::Int)
            .optional("cluster-id", Type::Int)
            .optional("core-id", Type::Int)
            .optional("thread-id", Type::Int),
    )
}

fn model_info_type() -> Type {
    Type::object(
        ObjectType::new("CpuModelInfo")
            .member("name", Type::Str)
            .optional("props", Type::Any),
    )
}

/// Every named feature and signature property of `cpu` as a CPU model's `props`.
fn model_props(cpu: &CpuId) -> Map<String, Value> {
    let mut props = Map::new();
    for (name, on) in cpuid::features(cpu) {
        props.insert(name.to_string(), Value::Bool(on));
    }
    let sig = cpuid::signature(cpu);
    props.insert("vendor".into(), json!(sig.vendor));
    props.insert("family".into(), json!(sig.family));
    props.insert("model".into(), json!(sig.model));
    props.insert("stepping".into(), json!(sig.stepping));
    props.insert("model-id".into(), json!(sig.model_id));
    props
}

/// `query-cpu-model-expansion`: machina runs exactly one CPUID (KVM's supported set), so a
/// model expands to it, and a request for anything else is refused rather than expanded to
/// a CPU machina could not give.
fn expand(args: &Map<String, Value>) -> Result<Value, QmpError> {
    let kind = args.get("type").and_then(Value::as_str).unwrap_or("");
    let model = args
        .get("model")
        .and_then(Value::as_object)
        .ok_or_else(|| QmpError::missing_parameter("model"))?;
    let name = model
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| QmpError::missing_parameter("name"))?;
    let expanded = CpuModel::from_name(name).unwrap_or(CpuModel::Host);
    let type_name = match CpuModel::from_name(name) {
        Some(m) => m.type_name().to_string(),
        // The static expansion's base: no features of its own, all given as props.
        None if name == "base" => "base-x86_64-cpu".to_string(),
        None => {
            return Err(QmpError::generic(format!(
                "The CPU type '{name}' is not a recognized X86 CPU type"
            )))
        }
    };
    let cpu = vcpu_cpuid(expanded, &[], 0, &CpuTopology::default())?;
    let offered = model_props(&cpu);
    let mut wanted = if name == "base" {
        offered
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    if v.is_boolean() {
                        json!(false)
                    } else {
                        v.clone()
                    },
                )
            })
            .collect()
    } else {
        offered.clone()
    };
    let given = match model.get("props") {
        None => Map::new(),
        Some(Value::Object(p)) => p.clone(),
        Some(_) => return Err(QmpError::invalid_parameter_type("props", "object")),
    };
    for (key, value) in given {
        let current = wanted
            .get(&key)
            .ok_or_else(|| QmpError::generic(format!("Property '{type_name}.{key}' not found")))?;
        let same_kind = matches!(
            (current, &value),
            (Value::Bool(_), Value::Bool(_))
                | (Value::String(_), Value::String(_))
                | (Value::Number(_), Value::Number(_))
        );
        if !same_kind {
            return Err(QmpError::invalid_parameter_type(&key, "boolean"));
        }
        wanted.insert(key, value);
    }
    if let Some((key, _)) = wanted.iter().find(|(k, v)| offered.get(*k) != Some(*v)) {
        return Err(QmpError::generic(format!(
            "CPU model '{name}' with '{key}' changed is not available: machina gives the guest \
             KVM's supported CPUID only"
        )));
    }
    let result = match kind {
        "static" => json!({"name": "base", "props": wanted}),
        "full" => json!({"name": name, "props": wanted}),
        other => {
            return Err(QmpError::generic(format!(
                "The requested expansion type '{other}' is not supported"
            )))
        }
    };
    Ok(json!({ "model": result }))
}

/// A QOM property of a CPU object: (name, QOM type).
fn cpu_qom_properties(cpu: &CpuId) -> Vec<(String, &'static str)> {
    let mut list: Vec<(String, &'static str)> = vec![
        ("type".into(), "string"),
        ("feature-words".into(), "X86CPUFeatureWordInfo"),
        ("filtered-features".into(), "X86CPUFeatureWordInfo"),
        ("apic-id".into(), "uint32"),
        ("socket-id".into(), "int32"),
        ("die-id".into(), "int32"),
        ("core-id".into(), "int32"),
        ("thread-id".into(), "int32"),
        ("vendor".into(), "string"),
        ("family".into(), "int"),
        ("model".into(), "int"),
        ("stepping".into(), "int"),
        ("model-id".into(), "string"),
    ];
    list.extend(
        cpuid::features(cpu)
            .into_iter()
            .map(|(n, _)| (n.to_string(), "bool")),
    );
    list
}

/// X86CPUFeatureWordInfo of every feature word: the guest's CPUID, or with `filtered` the
/// bits requested (`-cpu ...,+feat`) but withheld because KVM does not support them (as
/// (word index, mask) from `cpuid::apply_features`).
fn feature_words(cpu: &CpuId, filtered: Option<&[(usize, u32)]>) -> Value {
    Value::Array(
        cpuid::feature_words()
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let value = match filtered {
                    Some(list) => list
                        .iter()
                        .filter(|(word, _)| *word == i)
                        .fold(0, |acc, (_, mask)| acc | mask),
                    None => cpuid::register(cpu, w.leaf, w.subleaf, w.reg),
                };
                let mut o = json!({
                    "cpuid-input-eax": w.leaf,
                    "cpuid-register": w.reg.name(),
                    "features": value,
                });
                if let Some(s) = w.subleaf {
                    o["cpuid-input-ecx"] = json!(s);
                }
                o
            })
            .collect(),
    )
}

/// The CPU a QOM path names (`/machine/unattached/device[N]` with N a present CPU).
fn cpu_at(path: &str, plan: &Plan) -> Option<u32> {
    let n: u32 = path
        .strip_prefix("/machine/unattached/device[")?
        .strip_suffix(']')?
        .parse()
        .ok()?;
    (n < plan.cpus).then_some(n)
}

/// Devices with an `id` (QEMU's /machine/peripheral children): (id, type).
fn peripherals(plan: &Plan) -> Vec<(String, String)> {
    let pci = plan
        .pci
        .iter()
        .filter_map(|f| Some((f.id.clone()?, f.type_name.clone())));
    let ports = plan
        .virtio_ports
        .iter()
        .filter_map(|p| Some((p.id.clone()?, p.type_name.clone())));
    let isa = plan
        .isa
        .iter()
        .filter_map(|d| Some((d.id.clone()?, d.type_name.clone())));
    let busless = plan
        .busless
        .iter()
        .filter_map(|d| Some((d.id.clone()?, d.type_name.clone())));
    pci.chain(ports).chain(isa).chain(busless).collect()
}

fn not_found(path: &str) -> QmpError {
    QmpError::device_not_found(format!("Device '{path}' not found"))
}

fn qom_list(state: &VmState, path: &str) -> Result<Value, QmpError> {
    let prop = |name: &str, ty: &str| json!({"name": name, "type": ty});
    // The user-created objects (and the default RAM backend), as QEMU's /objects.
    let objects = super::objects::children(state);
    if path == "/objects" {
        let mut list = vec![prop("type", "string")];
        list.extend(
            objects
                .iter()
                .map(|(id, ty)| prop(id, &format!("child<{ty}>"))),
        );
        return Ok(Value::Array(list));
    }
    if let Some(id) = path.strip_prefix("/objects/") {
        if objects.iter().any(|(o, _)| o == id) {
            return Ok(json!([prop("type", "string")]));
        }
    }
    let plan = state.plan.as_ref().ok_or_else(|| not_found(path))?;
    if let Some(index) = cpu_at(path, plan) {
        let cpu = vcpu_cpuid(
            state_model(state),
            &state.config.cpu_features,
            index,
            &plan.topology,
        )?;
        return Ok(Value::Array(
            cpu_qom_properties(&cpu)
                .iter()
                .map(|(n, t)| prop(n, t))
                .collect(),
        ));
    }
    let devices = peripherals(plan);
    // The containers above the CPUs and the named devices, so a client can walk from /machine.
    if path == "/machine" {
        return Ok(json!([
            prop("type", "string"),
            prop("peripheral", "child<container>"),
            prop("unattached", "child<container>"),
        ]));
    }
    if path == "/machine/unattached" {
        let ty = cpu_type(state);
        let mut list = vec![prop("type", "string")];
        list.extend((0..plan.cpus).map(|i| prop(&format!("device[{i}]"), &format!("child<{ty}>"))));
        return Ok(Value::Array(list));
    }
    if path == "/machine/peripheral" {
        let mut list = vec![prop("type", "string")];
        list.extend(
            devices
                .iter()
                .map(|(id, ty)| prop(id, &format!("child<{ty}>"))),
        );
        return Ok(Value::Array(list));
    }
    if let Some(id) = path.strip_prefix("/machine/peripheral/") {
        if devices.iter().any(|(d, _)| d == id) {
            let mut list = vec![prop("type", "string")];
            list.extend(
                super::balloon::qom_properties(state, path)
                    .into_iter()
                    .map(|(n, t)| prop(n, t)),
            );
            return Ok(Value::Array(list));
        }
    }
    Err(not_found(path))
}

fn qom_get(state: &VmState, path: &str, property: &str) -> Result<Value, QmpError> {
    let plan = state.plan.as_ref().ok_or_else(|| not_found(path))?;
    if let Some(index) = cpu_at(path, plan) {
        let mut cpu = vcpu_cpuid(
            state_model(state),
            &state.config.cpu_features,
            index,
            &plan.topology,
        )?;
        let supported = supported_cpuid().ok_or_else(no_kvm)?;
        let filtered = cpuid::apply_features(&mut cpu, supported, &state.config.cpu_features);
        let ty = cpu_type(state);
        let ids = plan.topology.ids(index);
        let sig = cpuid::signature(&cpu);
        let qtest_model = match state_model(state) {
            CpuModel::Named(def) if !state.config.kvm => Some(def),
            _ => None,
        };
        return Ok(match property {
            "type" => json!(ty),
            "feature-words" => feature_words(&cpu, None),
            "filtered-features" => feature_words(&cpu, Some(&filtered)),
            "apic-id" => json!(plan.topology.apic_id(index)),
            "socket-id" => json!(ids.socket),
            "die-id" => json!(ids.die),
            "core-id" => json!(ids.core),
            "thread-id" => json!(ids.thread),
            "vendor" => json!(sig.vendor),
            "family" => json!(sig.family),
            "model" => json!(sig.model),
            "stepping" => json!(sig.stepping),
            "model-id" => json!(sig.model_id),
            "level" | "min-level" | "xlevel" | "min-xlevel" | "xlevel2" | "min-xlevel2" => {
                let lv = match state_model(state) {
                    CpuModel::Named(def) => {
                        crate::cpu_models::levels(def, &state.config.cpu_features)
                    }
                    // host/max: what KVM's CPUID says.
                    _ => crate::cpu_models::Levels {
                        level: cpuid::register(&cpu, 0, None, cpuid::Reg::Eax),
                        xlevel: cpuid::register(&cpu, 0x8000_0000, None, cpuid::Reg::Eax),
                        xlevel2: cpuid::register(&cpu, 0xc000_0000, None, cpuid::Reg::Eax),
                    },
                };
                json!(match property.trim_start_matches("min-") {
                    "level" => lv.level,
                    "xlevel" => lv.xlevel,
                    _ => lv.xlevel2,
                })
            }
            // Under qtest no vCPU runs and nothing is filtered (QEMU's qtest accelerator
            // supports every feature): a named model's feature is what was asked for.
            name if qtest_model.is_some() => {
                let bit = cpuid::feature_bit(&cpuid::canonical_feature(name)).ok_or_else(|| {
                    QmpError::generic(format!("Property '{ty}.{name}' not found"))
                })?;
                let asked =
                    qtest_model.map_or(0, |def| def.requested(&bit.0, &state.config.cpu_features));
                json!(asked & (1 << bit.1) != 0)
            }
            name => match cpuid::features(&cpu)
                .iter()
                .find(|(n, _)| *n == cpuid::canonical_feature(name))
            {
                Some((_, on)) => json!(on),
                None => {
                    return Err(QmpError::generic(format!(
                        "Property '{ty}.{name}' not found"
                    )))
                }
            },
        });
    }
    let devices = peripherals(plan);
    if let Some(v) = super::balloon::qom_get(state, path, property) {
        return Ok(v);
    }
    if let Some(id) = path.strip_prefix("/machine/peripheral/") {
        if let Some((_, ty)) = devices.iter().find(|(d, _)| d == id) {
            return match property {
                "type" => Ok(json!(ty)),
                other => Err(QmpError::generic(format!(
                    "Property '{ty}.{other}' not found"
                ))),
            };
        }
    }
    if path == "/machine" {
        return match property {
            "type" => Ok(json!(format!("{}-machine", plan.machine))),
            other => Err(QmpError::generic(format!(
                "Property '{}-machine.{other}' not found",
                plan.machine
            ))),
        };
    }
    if path == "/machine/peripheral" || path == "/machine/unattached" {
        return match property {
            "type" => Ok(json!("container")),
            other => Err(QmpError::generic(format!(
                "Property 'container.{other}' not found"
            ))),
        };
    }
    Err(not_found(path))
}

/// QOM properties of the CPU types (for qom-list-properties).
pub(super) fn cpu_type_properties(type_name: &str) -> Option<Vec<Value>> {
    let model = CpuModel::all()
        .into_iter()
        .find(|m| m.type_name() == type_name)?;
    let cpu = vcpu_cpuid(model, &[], 0, &CpuTopology::default()).ok()?;
    Some(
        cpu_qom_properties(&cpu)
            .into_iter()
            .map(|(n, t)| json!({"name": n, "type": t}))
            .collect(),
    )
}

pub(super) fn register(reg: &mut Registry, control: &Arc<Controller>) -> Result<(), RegistryError> {
    let c = control.clone();
    reg.register(
        CommandDef::new("query-hotpluggable-cpus")
            .returns(Type::array(Type::object(
                ObjectType::new("HotpluggableCPU")
                    .member("type", Type::Str)
                    .member("vcpus-count", Type::Int)
                    .member("props", instance_props_type())
                    .optional("qom-path", Type::Str),
            )))
            .allow_preconfig(true),
        move |_args: Map<String, Value>, _ctx: &mut Session| {
            let state = c.state();
            let plan = current_plan(&state)?;
            let hotpluggable = state
                .catalog
                .machine_types()
                .iter()
                .any(|m| m.name == plan.machine && m.hotpluggable_cpus);
            if !hotpluggable {
                return Err(QmpError::generic(
                    "The feature 'query-hotpluggable-cpus' is not enabled",
                ));
            }
            let built = state.plan.is_some();
            let ty = cpu_type(&state);
            // Every possible CPU, newest first as QEMU lists them; the ones beyond `cpus`
            // are empty slots (no qom-path).
            let list: Vec<Value> = (0..plan.max_cpus)
                .rev()
                .map(|i| {
                    let mut cpu = json!({
                        "type": ty,
                        "vcpus-count": 1,
                        "props": cpu_props(&plan.topology, &plan.numa, i),
                    });
                    if built && crate::cpu_hotplug::present(&state, &plan, i) {
                        cpu["qom-path"] = json!(crate::cpu_hotplug::qom_path(&state, i));
                    }
                    cpu
                })
                .collect();
            Ok(Value::Array(list))
        },
    )?;

    let c = control.clone();
    reg.register(
        CommandDef::new("query-cpus-fast").returns(Type::array(Type::object(
            ObjectType::new("CpuInfoFast")
                .member("cpu-index", Type::Int)
                .member("qom-path", Type::Str)
                .member("thread-id", Type::Int)
                .optional("props", instance_props_type())
                .member("target", Type::Str),
        ))),
        move |_args: Map<String, Value>, _ctx: &mut Session| {
            let state = c.state();
            let Some(plan) = &state.plan else {
                return Ok(json!([]));
            };
            Ok(Value::Array(
                (0..plan.max_cpus.max(plan.cpus))
                    .filter(|&i| crate::cpu_hotplug::present(&state, plan, i))
                    .map(|i| {
                        let tid = state.vcpu_thread_ids.get(i as usize).copied().unwrap_or(0);
                        json!({
                            "cpu-index": i,
                            "qom-path": crate::cpu_hotplug::qom_path(&state, i),
                            "thread-id": tid,
                            "props": cpu_props(&plan.topology, &plan.numa, i),
                            "target": "x86_64",
                        })
                    })
                    .collect(),
            ))
        },
    )?;

    reg.register(
        CommandDef::new("query-cpu-definitions")
            .returns(Type::array(Type::object(
                ObjectType::new("CpuDefinitionInfo")
                    .member("name", Type::Str)
                    .optional("migration-safe", Type::Bool)
                    .member("static", Type::Bool)
                    .optional("unavailable-features", Type::array(Type::Str))
                    .member("typename", Type::Str)
                    .optional("alias-of", Type::Str)
                    .member("deprecated", Type::Bool),
            )))
            .allow_preconfig(true),
        move |_args: Map<String, Value>, _ctx: &mut Session| {
            let supported = supported_cpuid();
            Ok(Value::Array(
                CpuModel::all()
                    .iter()
                    .map(|m| {
                        // A named model lacks the features KVM cannot give.
                        let unavailable: Vec<&str> = match (supported, m) {
                            (None, _) => vec!["kvm"],
                            (Some(s), CpuModel::Named(def)) => def.unavailable(s),
                            (Some(_), _) => Vec::new(),
                        };
                        let mut def = json!({
                            "name": m.name(),
                            "typename": m.type_name(),
                            "unavailable-features": unavailable,
                            "static": false,
                            // host/max are whatever the host's KVM offers; a named model
                            // is the same CPU everywhere it runs.
                            "migration-safe": matches!(m, CpuModel::Named(_)),
                            "deprecated": false,
                        });
                        if let CpuModel::Named(ModelDef {
                            alias_of: Some(a), ..
                        }) = m
                        {
                            def["alias-of"] = json!(a);
                        }
                        def
                    })
                    .collect(),
            ))
        },
    )?;

    reg.register(
        CommandDef::new("query-cpu-model-expansion")
            .arg(
                "type",
                Type::enumeration("CpuModelExpansionType", &["static", "full"]),
            )
            .arg("model", model_info_type())
            .returns(Type::object(
                ObjectType::new("CpuModelExpansionInfo").member("model", model_info_type()),
            ))
            .allow_preconfig(true),
        move |args: Map<String, Value>, _ctx: &mut Session| expand(&args),
    )?;

    let c = control.clone();
    reg.register(
        CommandDef::new("qom-list")
            .arg("path", Type::Str)
            .returns(Type::array(super::probe::object_property_info_type()))
            .allow_preconfig(true),
        move |args: Map<String, Value>, _ctx: &mut Session| {
            let path = args.get("path").and_then(Value::as_str).unwrap_or("");
            qom_list(&c.state(), path)
        },
    )?;

    let c = control.clone();
    reg.register(
        CommandDef::new("qom-get")
            .arg("path", Type::Str)
            .arg("property", Type::Str)
            .returns(Type::Any)
            .allow_preconfig(true),
        move |args: Map<String, Value>, _ctx: &mut Session| {
            let path = args.get("path").and_then(Value::as_str).unwrap_or("");
            let property = args.get("property").and_then(Value::as_str).unwrap_or("");
            qom_get(&c.state(), path, property)
        },
    )?;

    // Only the balloon's stats interval can be changed at run time: any other property that
    // exists is read-only, one that does not gets qom-get's error.
    let c = control.clone();
    reg.register(
        CommandDef::new("qom-set")
            .arg("path", Type::Str)
            .arg("property", Type::Str)
            .arg("value", Type::Any)
            .allow_preconfig(true),
        move |args: Map<String, Value>, _ctx: &mut Session| {
            let path = args.get("path").and_then(Value::as_str).unwrap_or("");
            let property = args.get("property").and_then(Value::as_str).unwrap_or("");
            let state = c.state();
            let value = args.get("value").unwrap_or(&Value::Null);
            if let Some(done) = super::balloon::qom_set(&state, path, property, value) {
                return done.map(|()| Value::Null);
            }
            qom_get(&state, path, property)?;
            let ty = qom_get(&state, path, "type")
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            Err(QmpError::generic(format!(
                "Property '{ty}.{property}' is not writable"
            )))
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn props_follow_topology() {
        let topo = CpuTopology {
            sockets: 2,
            dies: 2,
            cores: 2,
            threads: 1,
        };
        assert_eq!(
            cpu_props(&topo, &machine::NumaPlan::default(), 5),
            json!({"socket-id": 1, "die-id": 0, "core-id": 1, "thread-id": 0})
        );
        let flat = CpuTopology {
            sockets: 1,
            dies: 1,
            cores: 4,
            threads: 1,
        };
        assert_eq!(
            cpu_props(&flat, &machine::NumaPlan::default(), 3),
            json!({"socket-id": 0, "core-id": 3, "thread-id": 0})
        );
    }
}
