//! Removing backends from a running machine: `blockdev-del`, `chardev-remove`, `object-del`,
//! with QEMU 7.2's refusals for what a device (or another node, or a monitor) still uses.
//! Adding them is `preconfig`'s `blockdev-add`/`chardev-add`/`object-add`, which take them
//! at any time.

use crate::backends::Backend;
use crate::control::{Controller, VmState};
use qmp::{CommandDef, Map, QmpError, Registry, RegistryError, Session, Type, Value};
use std::sync::Arc;

/// Whether a device of the configuration or the running plan names backend `id` in `prop`.
fn used_by_device(state: &VmState, prop: &str, id: &str) -> bool {
    let configured = state
        .config
        .devices
        .iter()
        .any(|d| d.properties.iter().any(|(k, v)| k == prop && v == id));
    let planned = state.plan.as_ref().is_some_and(|p| {
        p.pci
            .iter()
            .any(|f| f.properties.nonempty_str(prop) == Some(id))
    });
    configured || planned
}

pub(super) fn blockdev_del(state: &mut VmState, node: &str) -> Result<(), QmpError> {
    let backends = &mut state.config.backends;
    let Some(pos) = backends
        .iter()
        .position(|b| matches!(b, Backend::Drive { id, .. } if id == node))
    else {
        return Err(QmpError::generic(format!(
            "Failed to find node with node-name='{node}'"
        )));
    };
    let attached = matches!(
        &backends[pos],
        Backend::Drive {
            attached: Some(_),
            ..
        }
    );
    if attached || used_by_device(state, "drive", node) {
        return Err(QmpError::generic(format!("Node {node} is in use")));
    }
    let backends = &mut state.config.backends;
    let parent = backends
        .iter()
        .any(|b| matches!(b, Backend::Drive { child: Some(c), id, .. } if c == node && id != node));
    if parent {
        return Err(QmpError::generic(format!("Block device {node} is in use")));
    }
    backends.remove(pos);
    Ok(())
}

fn chardev_remove(state: &mut VmState, label: &str) -> Result<(), QmpError> {
    let config = &state.config;
    let known = config.chardevs.iter().any(|c| c.label == label)
        || config
            .backends
            .iter()
            .any(|b| matches!(b, Backend::Chardev { id, .. } if id == label));
    if !known {
        return Err(QmpError::generic(format!("Chardev '{label}' not found")));
    }
    let filter = config.backends.iter().any(|b| {
        matches!(b, Backend::Filter { outdev, indev, .. }
            if outdev.as_deref() == Some(label) || indev.as_deref() == Some(label))
    });
    if filter
        || config.monitor_chardevs.iter().any(|m| m == label)
        || used_by_device(state, "chardev", label)
    {
        return Err(QmpError::generic(format!("Chardev '{label}' is busy")));
    }
    let config = &mut state.config;
    config.chardevs.retain(|c| c.label != label);
    config.chardev_consoles.retain(|(l, _)| l != label);
    config
        .backends
        .retain(|b| !matches!(b, Backend::Chardev { id, .. } if id == label));
    Ok(())
}

fn object_del(control: &Controller, id: &str) -> Result<(), QmpError> {
    let mut state = control.state();
    // Guest RAM (the machine's or a NUMA node's) or a DIMM maps a memory backend for the
    // life of the machine. An entropy
    // source or I/O thread a device names is refused too (QEMU 7.2 keeps such an object
    // alive through the device's reference; machina rebuilds devices from the configured
    // objects at reset, so it must stay until the device goes).
    let config = &state.config;
    let numa_memdev = config
        .numa
        .iter()
        .any(|a| matches!(&a.option, machine::NumaOption::Node { memdev: Some(m), .. } if m == id));
    let in_use = config.memory_backend.as_deref() == Some(id)
        || numa_memdev
        || used_by_device(&state, "memdev", id)
        || used_by_device(&state, "rng", id)
        || used_by_device(&state, "iothread", id);
    if in_use {
        return Err(QmpError::generic(format!(
            "object '{id}' is in use, can not be deleted"
        )));
    }
    let config = &mut state.config;
    if config.memory_backends.iter().any(|m| m.id == id) {
        // Nothing maps it: its memfd or file closes with it.
        config.memory_backends.retain(|m| m.id != id);
        return Ok(());
    }
    if config.iothreads.iter().any(|t| t.id == id) {
        config.iothreads.retain(|t| t.id != id);
        control.iothreads.remove(id);
        return Ok(());
    }
    let before = config.backends.len();
    config.backends.retain(|b| {
        !(matches!(
            b,
            Backend::RngRandom { .. } | Backend::RngBuiltin { .. } | Backend::Filter { .. }
        ) && b.id() == id)
    });
    if config.backends.len() == before {
        return Err(QmpError::generic(format!("object '{id}' not found")));
    }
    Ok(())
}

pub(super) fn register(reg: &mut Registry, control: &Arc<Controller>) -> Result<(), RegistryError> {
    let c = control.clone();
    reg.register(
        CommandDef::new("blockdev-del")
            .arg("node-name", Type::Str)
            .allow_preconfig(true),
        move |args: Map<String, Value>, _ctx: &mut Session| {
            let node = args.get("node-name").and_then(Value::as_str).unwrap_or("");
            blockdev_del(&mut c.state(), node)?;
            Ok(Value::Null)
        },
    )?;
    let c = control.clone();
    reg.register(
        CommandDef::new("chardev-remove")
            .arg("id", Type::Str)
            .allow_preconfig(true),
        move |args: Map<String, Value>, _ctx: &mut Session| {
            let id = args.get("id").and_then(Value::as_str).unwrap_or("");
            chardev_remove(&mut c.state(), id)?;
            Ok(Value::Null)
        },
    )?;
    let c = control.clone();
    reg.register(
        CommandDef::new("object-del")
            .arg("id", Type::Str)
            .allow_preconfig(true),
        move |args: Map<String, Value>, _ctx: &mut Session| {
            let id = args.get("id").and_then(Value::as_str).unwrap_or("");
            object_del(&c, id)?;
            Ok(Value::Null)
        },
    )?;
    Ok(())
}

/// `getfd`/`closefd`: descriptors passed over the monitor socket (SCM_RIGHTS), by name, for
/// `netdev_add type=tap,fd=NAME` (what libvirt does to hot-plug a NIC on a tap it opened).
pub(super) fn register_fds(reg: &mut Registry) -> Result<(), RegistryError> {
    reg.register(
        CommandDef::new("getfd").arg("fdname", Type::Str),
        |args: Map<String, Value>, _ctx: &mut Session| {
            let name = args.get("fdname").and_then(Value::as_str).unwrap_or("");
            let Some(fd) = qmp::take_passed_fd() else {
                return Err(QmpError::generic(
                    "No file descriptor supplied via SCM_RIGHTS",
                ));
            };
            if name.starts_with(|c: char| c.is_ascii_digit()) {
                return Err(QmpError::generic(
                    "Parameter 'fdname' expects a name not starting with a digit",
                ));
            }
            crate::fdset::put_named(name, fd);
            Ok(Value::Null)
        },
    )?;
    reg.register(
        CommandDef::new("closefd").arg("fdname", Type::Str),
        |args: Map<String, Value>, _ctx: &mut Session| {
            let name = args.get("fdname").and_then(Value::as_str).unwrap_or("");
            match crate::fdset::take_named(name) {
                Some(fd) => {
                    drop(fd);
                    Ok(Value::Null)
                }
                None => Err(QmpError::generic(format!(
                    "File descriptor named '{name}' not found"
                ))),
            }
        },
    )?;
    Ok(())
}
