//! Configuration over QMP before the machine exists (`-delay-machine-init`): machine type and
//! options, memory, CPUs, kernel; `device_add`, `blockdev-add`, `netdev_add`, `chardev-add`,
//! `object-add` are checked against the plan and queued for the build.

use super::introspection::devices_from;
use crate::backends::{self, Backend, CharBackend};
use crate::cli::SerialSpec;
use crate::control::Controller;
use qmp::{CommandDef, Map, QmpError, Registry, RegistryError, Session, Type, Value};
use std::path::PathBuf;
use std::sync::Arc;

fn before_build(control: &Controller, command: &str) -> Result<(), QmpError> {
    if control.state().plan.is_some() {
        return Err(QmpError::generic(format!(
            "The command '{command}' is permitted only before machine initialization"
        )));
    }
    Ok(())
}

/// The console a chardev id (or `stdio`/`null`/`none`) stands for.
fn serial_for(control: &Controller, name: &str) -> Result<SerialSpec, QmpError> {
    match name {
        "stdio" => return Ok(SerialSpec::Stdio),
        "null" => return Ok(SerialSpec::Null),
        "none" => return Ok(SerialSpec::None),
        _ => {}
    }
    let state = control.state();
    let backend = state
        .config
        .backends
        .iter()
        .find_map(|b| match b {
            Backend::Chardev { id, backend } if id == name => Some(backend.clone()),
            _ => None,
        })
        .ok_or_else(|| QmpError::device_not_found(format!("Chardev '{name}' not found")))?;
    match backend {
        CharBackend::File(path) => Ok(SerialSpec::File(path)),
        CharBackend::UnixServer { path, wait } => Ok(SerialSpec::UnixServer { path, wait }),
        CharBackend::Null => Ok(SerialSpec::Null),
        CharBackend::Stdio => Ok(SerialSpec::Stdio),
        // The pty was opened at start; its console is kept in the configuration.
        CharBackend::Pty | CharBackend::SocketFd { .. } => state
            .config
            .chardev_console(name)
            .ok_or_else(|| QmpError::generic(format!("Chardev '{name}' has no pty"))),
        CharBackend::UnixClient(_) => Err(QmpError::generic(
            "the serial port needs a listening (server=on) socket chardev",
        )),
    }
}

/// A `size` argument as QEMU's input visitor reads it: a negative number wraps (so -1 is
/// 2^64-1, refused by the planner as too large, never silently dropped).
pub(super) fn size_value(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_i64().map(|i| i as u64))
}

pub(super) fn register(reg: &mut Registry, control: &Arc<Controller>) -> Result<(), RegistryError> {
    let c = control.clone();
    reg.register(
        CommandDef::new("x-machine-set")
            .opt("machine", Type::Str)
            .opt("options", Type::Any)
            .opt("nodefaults", Type::Bool)
            .opt("memory", Type::Size)
            .opt("cpus", Type::Uint32)
            .opt("kernel", Type::Str)
            .opt("initrd", Type::Str)
            .opt("append", Type::Str)
            .opt("serial", Type::Str)
            .opt("name", Type::Str)
            .allow_preconfig(true),
        move |args: Map<String, Value>, _ctx: &mut Session| x_machine_set(&c, args),
    )?;

    let c = control.clone();
    reg.register(
        CommandDef::new("device_add")
            .arg("driver", Type::Str)
            .opt("bus", Type::Str)
            .opt("id", Type::Str)
            .extra_args(true)
            .allow_preconfig(true),
        move |args: Map<String, Value>, _ctx: &mut Session| device_add(&c, args),
    )?;

    for (name, kind) in [
        ("blockdev-add", "blockdev"),
        ("netdev_add", "netdev"),
        ("chardev-add", "chardev"),
        ("object-add", "object"),
    ] {
        let c = control.clone();
        let def = CommandDef::new(name).extra_args(true).allow_preconfig(true);
        let def = match kind {
            "blockdev" => def.arg("driver", Type::Str).opt("node-name", Type::Str),
            "netdev" => def.arg("type", Type::Str).arg("id", Type::Str),
            "chardev" => def.arg("id", Type::Str).arg("backend", Type::Any),
            _ => def.arg("qom-type", Type::Str).arg("id", Type::Str),
        };
        reg.register(def, move |args: Map<String, Value>, ctx: &mut Session| {
            add_backend(&c, name, args, ctx)
        })?;
    }
    Ok(())
}

/// `x-machine-set`: machine options changed before the build, kept only if they plan.
fn x_machine_set(c: &Controller, args: Map<String, Value>) -> Result<Value, QmpError> {
    before_build(c, "x-machine-set")?;
    let serial = match args.get("serial").and_then(Value::as_str) {
        Some(name) => Some(serial_for(c, name)?),
        None => None,
    };
    let mut state = c.state();
    let mut config = state.config.clone();
    if let Some(m) = args.get("machine").and_then(Value::as_str) {
        config.machine = Some(m.to_string());
    }
    if let Some(opts) = args.get("options").and_then(Value::as_object) {
        for (k, v) in opts {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Bool(b) => if *b { "on" } else { "off" }.to_string(),
                other => other.to_string(),
            };
            config.options.retain(|(key, _)| key != k);
            config.options.push((k.clone(), text));
        }
    }
    if let Some(v) = args.get("nodefaults").and_then(Value::as_bool) {
        config.nodefaults = v;
    }
    if let Some(v) = args.get("memory").and_then(size_value) {
        config.ram_size = v;
    }
    if let Some(v) = args.get("cpus").and_then(Value::as_u64) {
        config.set_cpus(u32::try_from(v).unwrap_or(u32::MAX));
    }
    if let Some(v) = args.get("kernel").and_then(Value::as_str) {
        config.kernel = Some(PathBuf::from(v));
    }
    if let Some(v) = args.get("initrd").and_then(Value::as_str) {
        config.initrd = Some(PathBuf::from(v));
    }
    if let Some(v) = args.get("append").and_then(Value::as_str) {
        config.append = v.to_string();
    }
    if let Some(v) = args.get("name").and_then(Value::as_str) {
        config.name = Some(v.to_string());
    }
    if serial.is_some() {
        config.serial = serial;
    }
    // Refuse a configuration that cannot be planned, and keep the old one.
    state
        .catalog
        .plan(&config.plan_request())
        .map_err(|e| QmpError::generic(e.to_string()))?;
    state.config = config;
    Ok(Value::Null)
}

/// `device_add`: before the build into the configuration (checked by planning it), after
/// it a hot-plug through the run loop.
fn device_add(c: &Controller, args: Map<String, Value>) -> Result<Value, QmpError> {
    let args_copy = args.clone();
    let request = devices_from(Some(&Value::Array(vec![Value::Object(args)])))?;
    let mut state = c.state();
    if let Some(plan) = &state.plan {
        // Hot-plug: QEMU's refusals (the bus, the slot), then the backends; the run
        // loop builds and announces the function.
        let Some(req) = request.first().cloned() else {
            return Err(QmpError::generic("no device"));
        };
        if crate::cpu_hotplug::is_cpu_driver(&req.driver) {
            let index = crate::cpu_hotplug::check_add(&state, plan, &args_copy)?;
            drop(state);
            return c.submit(crate::control::Command::HotAddCpu {
                index,
                id: req.id().map(str::to_string),
            });
        }
        let new_plan = state
            .catalog
            .hot_add(plan, &req)
            .map_err(|e| QmpError::generic(e.to_string()))?;
        if new_plan.virtio_ports.len() > plan.virtio_ports.len() {
            return super::serial_ports::hot_add(&mut state, new_plan, req);
        }
        backends::check_references(&request, &state.config.backends)
            .map_err(|e| QmpError::generic(e.message))?;
        let mut config = state.config.clone();
        backends::attach_drives(&request, &[], &mut config.backends)
            .map_err(|e| QmpError::generic(e.message))?;
        state.config.backends = config.backends;
        drop(state);
        let drive = req.get("drive").map(str::to_string);
        let answer = c.submit(crate::control::Command::HotAdd {
            plan: Box::new(new_plan),
            request: Box::new(req),
        });
        // A device that could not be built does not keep its drive.
        if let (Err(_), Some(drive)) = (&answer, drive) {
            backends::detach_drive(&mut c.state().config.backends, &drive);
        }
        return answer;
    }
    backends::check_references(&request, &state.config.backends)
        .map_err(|e| QmpError::generic(e.message))?;
    let mut config = state.config.clone();
    config.devices.extend(request.clone());
    state
        .catalog
        .plan(&config.plan_request())
        .map_err(|e| QmpError::generic(e.to_string()))?;
    for r in &request {
        config.check_iothread(r).map_err(|e| match e {
            crate::iothread::ReferenceError::NotFound(_) => {
                QmpError::device_not_found(e.to_string())
            }
            _ => QmpError::generic(e.to_string()),
        })?;
    }
    // The device takes its drive (image opened and locked) only once it is accepted.
    backends::attach_drives(&request, &[], &mut config.backends)
        .map_err(|e| QmpError::generic(e.message))?;
    state.config = config;
    Ok(Value::Null)
}

/// `blockdev-add`, `netdev_add`, `chardev-add`, `object-add` (`name`): a backend or object
/// for devices to use.
fn add_backend(
    c: &Controller,
    name: &'static str,
    args: Map<String, Value>,
    ctx: &Session,
) -> Result<Value, QmpError> {
    if name == "object-add" && args.get("qom-type") == Some(&Value::from("iothread")) {
        // As in QEMU, an I/O thread can be added at any time: it starts now.
        return add_iothread(c, args);
    }
    let memory = args
        .get("qom-type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.starts_with("memory-backend-"));
    if name == "object-add" && memory {
        // Checked as `-object` is; RAM for a later user (a NUMA node before the
        // build), mapped by nothing until then.
        return add_memory_backend(c, args);
    }
    // Backends are host objects, not part of the machine: as in QEMU they may come
    // at any time, for a device_add to use (or a blockdev-del/chardev-remove/
    // object-del to take away again).
    // Built without the state lock: a blkdebug config on a FIFO waits for its
    // writer (as in QEMU), and only this client's in-band commands may wait with it.
    let existing = c.state().config.backends.clone();
    let args = Value::Object(args);
    let backend = backends::from_qmp_cancellable(name, &args, &existing, &|| ctx.cancelled())
        .map_err(|e| QmpError::generic(e.message))?;
    drop(existing);
    let mut state = c.state();
    let running = state.plan.is_some();
    if running && matches!(backend, Backend::Filter { .. }) {
        // Filters join the network thread with their chardevs at start only.
        return Err(QmpError::generic(
            "object-add of a packet filter after start is not supported by machina",
        ));
    }
    if let Some(text) = duplicate(&state, name, backend.id()) {
        return Err(QmpError::generic(text));
    }
    let info = match &backend {
        Backend::Chardev { id, backend } if running => Some(chardev_info(id, backend)),
        _ => None,
    };
    backends::add(&mut state.config.backends, backend, name)
        .map_err(|e| QmpError::generic(e.message))?;
    if let Some(info) = info {
        state.config.chardevs.push(info);
    }
    Ok(Value::Null)
}

/// QEMU's text for an id that `name` cannot take because it exists (or, for an object,
/// is not an identifier).
fn duplicate(state: &crate::control::VmState, name: &str, id: &str) -> Option<String> {
    let config = &state.config;
    match name {
        "blockdev-add" => config
            .backends
            .iter()
            .any(|b| matches!(b, Backend::Drive { .. }) && b.id() == id)
            .then(|| format!("Duplicate nodes with node-name='{id}'")),
        "chardev-add" => (config.chardevs.iter().any(|c| c.label == id)
            || config
                .backends
                .iter()
                .any(|b| matches!(b, Backend::Chardev { .. }) && b.id() == id))
        .then(|| format!("Chardev with id '{id}' already exists")),
        // QMP drops the hint of an ill-formed id.
        "object-add" => crate::objects::check_new_id(id, |id| {
            super::objects::children(state)
                .iter()
                .any(|(object, _)| object == id)
        })
        .err()
        .map(|e| e.to_string()),
        _ => None,
    }
}

/// A chardev added on the running machine as `query-chardev` lists it (QEMU's filenames).
fn chardev_info(id: &str, backend: &CharBackend) -> crate::config::ChardevInfo {
    let (kind, filename) = match backend {
        CharBackend::Null => ("null", "null".to_string()),
        CharBackend::Stdio => ("stdio", "stdio".to_string()),
        CharBackend::File(_) => ("file", "file".to_string()),
        CharBackend::UnixServer { path, .. } => (
            "socket",
            format!("disconnected:unix:{},server=on", path.display()),
        ),
        CharBackend::UnixClient(path) => {
            ("socket", format!("disconnected:unix:{}", path.display()))
        }
        CharBackend::Pty => ("pty", "pty".to_string()),
        CharBackend::SocketFd { .. } => ("socket", "disconnected:socket".to_string()),
    };
    crate::config::ChardevInfo {
        label: id.to_string(),
        filename,
        backend: kind.to_string(),
    }
}

/// `object-add` of a `memory-backend-*`: checked and kept (its memfd or file opened) as
/// `-object` does.
fn add_memory_backend(control: &Controller, args: Map<String, Value>) -> Result<Value, QmpError> {
    // QMP's input is typed: a size given as a string is refused (QEMU 7.2's text), not
    // read as its digits.
    if args.get("size").is_some_and(|v| !v.is_u64()) {
        return Err(QmpError::generic("Parameter 'size' expects uint64"));
    }
    let text = Value::Object(args).to_string();
    let backend = match crate::objects::parse(std::ffi::OsStr::new(&text)) {
        Ok(crate::objects::ObjectSpec::MemoryBackend(b)) => b,
        Ok(_) => return Err(QmpError::generic("not a memory backend")),
        Err(e) => return Err(QmpError::generic(e.message)),
    };
    let mut state = control.state();
    if let Some(text) = duplicate(&state, "object-add", &backend.id) {
        return Err(QmpError::generic(text));
    }
    state.config.memory_backends.push(backend);
    Ok(Value::Null)
}

/// `object-add` of an `iothread`: checked as `-object` is, then its thread started.
fn add_iothread(control: &Controller, args: Map<String, Value>) -> Result<Value, QmpError> {
    let text = Value::Object(args).to_string();
    let spec = match crate::objects::parse(std::ffi::OsStr::new(&text)) {
        Ok(crate::objects::ObjectSpec::IoThread(spec)) => spec,
        Ok(_) => return Err(QmpError::generic("not an iothread")),
        Err(e) => return Err(QmpError::generic(e.message)),
    };
    let mut state = control.state();
    if let Some(text) = duplicate(&state, "object-add", &spec.id) {
        return Err(QmpError::generic(text));
    }
    control
        .iothreads
        .add(spec.clone())
        .map_err(|e| QmpError::generic(e.to_string()))?;
    state.config.iothreads.push(spec);
    Ok(Value::Null)
}
