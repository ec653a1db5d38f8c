//! `human-monitor-command`: QEMU's human monitor over QMP, for the commands machina has.
//! Every answer comes from machina's state (run state, configuration, plan, catalog); a
//! command machina does not have gets the human monitor's own answer, as QEMU gives for a
//! command it does not know (`unknown command: 'X'`), in the returned text, not as a QMP
//! error, since the human monitor reports its errors as output.

use crate::control::{Controller, RunState, VmState};
use qmp::{CommandDef, Registry, RegistryError, Session, Type};
use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::sync::Arc;

/// (name, arguments, help) of the `info` subcommands machina answers.
const INFO: &[(&str, &str, &str)] = &[
    ("name", "", "show the current VM name"),
    ("network", "", "show the network state"),
    ("numa", "", "show NUMA information"),
    ("qom-tree", "[path]", "show QOM composition tree"),
    ("qtree", "", "show device tree"),
    ("status", "", "show the current VM status (running|paused)"),
];

/// (name, arguments, help) of the top-level commands.
const COMMANDS: &[(&str, &str, &str)] = &[
    (
        "device_add",
        "driver[,prop=value][,...]",
        "add device, like -device on the command line",
    ),
    (
        "drive_add",
        "[[<domain>:]<bus>:]<slot> if=none,id=ID[,file=FILE][,format=raw][,...]",
        "add drive, like -drive on the command line (if=none: for a later device_add)",
    ),
    ("drive_del", "device", "remove host block device"),
    ("help|?", "[cmd]", "show the help"),
    (
        "info",
        "[subcommand]",
        "show various information about the system state",
    ),
    (
        "qemu-io",
        "[-d] [device] \"[command]\"",
        "run a qemu-io command on a block device (blkdebug break/remove_break/resume/wait_break)",
    ),
];

fn help_line(out: &mut String, prefix: &str, (name, args, help): &(&str, &str, &str)) {
    let args = if args.is_empty() {
        String::new()
    } else {
        format!(" {args}")
    };
    let _ = writeln!(out, "{prefix}{name}{args} -- {help}");
}

fn help(topic: Option<&str>) -> String {
    let mut out = String::new();
    match topic {
        Some("info") => INFO.iter().for_each(|i| help_line(&mut out, "info ", i)),
        Some(cmd) => match COMMANDS
            .iter()
            .find(|(n, _, _)| n.split('|').any(|n| n == cmd))
        {
            Some(c) => help_line(&mut out, "", c),
            None => {
                let _ = writeln!(out, "unknown command: '{cmd}'");
            }
        },
        None => COMMANDS.iter().for_each(|c| help_line(&mut out, "", c)),
    }
    out
}

/// `info qtree`: the buses of the plan and the functions on each.
fn qtree(state: &VmState) -> String {
    let mut out = String::new();
    let Some(plan) = &state.plan else {
        return out;
    };
    for bus in &plan.buses {
        let kind = match bus.kind {
            machine::BusKind::Pci => "PCI",
            machine::BusKind::Pcie => "PCIE",
        };
        let _ = writeln!(out, "bus: {}\n  type {kind}", bus.id);
        for f in plan.pci.iter().filter(|f| f.bus == bus.id) {
            let _ = writeln!(
                out,
                "  dev: {}, id \"{}\"\n    addr = {:02x}.{}",
                f.type_name,
                f.id.as_deref().unwrap_or(""),
                f.slot,
                f.function
            );
        }
    }
    for isa in &plan.isa {
        let _ = writeln!(
            out,
            "  dev: {}, id \"{}\"",
            isa.type_name,
            isa.id.as_deref().unwrap_or("")
        );
    }
    out
}

/// `info qom-tree`: /machine and the devices of the plan (user-named ones under
/// /machine/peripheral, the rest under /machine/peripheral-anon or /machine/unattached).
fn qom_tree(state: &VmState) -> String {
    let mut out = String::new();
    let Some(plan) = &state.plan else {
        return out;
    };
    let _ = writeln!(out, "/machine ({}-machine)", plan.machine);
    let named: Vec<(&str, &str)> = plan
        .pci
        .iter()
        .filter_map(|f| f.id.as_deref().map(|id| (id, f.type_name.as_str())))
        .collect();
    if !named.is_empty() {
        let _ = writeln!(out, "  /peripheral (container)");
        for (id, ty) in named {
            let _ = writeln!(out, "    /{id} ({ty})");
        }
    }
    let _ = writeln!(out, "  /unattached (container)");
    for (i, f) in plan.pci.iter().filter(|f| f.id.is_none()).enumerate() {
        let _ = writeln!(out, "    /device[{i}] ({})", f.type_name);
    }
    out
}

fn info(state: &VmState, sub: Option<&str>) -> String {
    match sub {
        None => help(Some("info")),
        Some("status") => {
            let text = match state.status {
                RunState::Running => "running",
                RunState::Paused => "paused",
                RunState::Prelaunch => "paused (prelaunch)",
                RunState::Shutdown => "paused (shutdown)",
                RunState::InternalError => "paused (internal-error)",
                RunState::Watchdog => "paused (watchdog)",
                RunState::GuestPanicked => "paused (guest-panicked)",
                RunState::IoError => "paused (io-error)",
            };
            format!("VM status: {text}\n")
        }
        Some("name") => match &state.config.name {
            Some(name) => format!("{name}\n"),
            None => String::new(),
        },
        Some("qtree") => qtree(state),
        Some("network") => crate::netdev::info_network(),
        Some("qom-tree") => qom_tree(state),
        Some("numa") => info_numa(state),
        Some(other) => format!("unknown command: 'info {other}'\n"),
    }
}

/// QEMU's `info numa`: each node's present CPUs (as `query-cpus-fast` lists them) and RAM;
/// "plugged" is RAM of hot-plugged memory devices, which machina has none of.
fn info_numa(state: &VmState) -> String {
    let Some(plan) = &state.plan else {
        return "0 nodes\n".into();
    };
    let numa = &plan.numa;
    let mut out = format!("{} nodes\n", numa.nodes.len());
    for (i, node) in numa.nodes.iter().enumerate() {
        let _ = write!(out, "node {i} cpus:");
        for cpu in (0..plan.cpus).filter(|&c| numa.node_of(c) == Some(i as u32)) {
            let _ = write!(out, " {cpu}");
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "node {i} size: {} MB", node.mem >> 20);
        let _ = writeln!(out, "node {i} plugged: 0 MB");
    }
    out
}

fn device_add(state: &VmState, args: &str) -> String {
    let args = args.trim().trim_matches('"');
    if args == "help" || args == "?" {
        return machine::help::device_help(&state.catalog);
    }
    match args
        .strip_suffix(",help")
        .or_else(|| args.strip_suffix(",?"))
    {
        Some(driver) => match machine::help::device_properties_help(&state.catalog, driver) {
            Ok(text) => text,
            Err(e) => format!("{e}\n"),
        },
        None => {
            let driver = args.split(',').next().unwrap_or("");
            if state.catalog.device_type(driver).is_none() {
                format!("'{driver}' is not a valid device model name\n")
            } else {
                // Adding devices goes through QMP's device_add, which knows when it may.
                "machina's human monitor does not add devices: use QMP device_add\n".to_string()
            }
        }
    }
}

/// `qemu-io DRIVE "COMMAND"`: the blkdebug breakpoint commands of qemu-io on a drive that
/// has a blkdebug node.
fn qemu_io(state: &VmState, args: &str) -> String {
    let args = args.strip_prefix("-d ").unwrap_or(args).trim();
    let (device, command) = args.split_once(char::is_whitespace).unwrap_or((args, ""));
    let command = command.trim().trim_matches('"');
    let debug = state.config.backends.iter().find_map(|b| match b {
        crate::backends::Backend::Drive { id, debug, .. } if id == device => Some(debug),
        _ => None,
    });
    let Some(debug) = debug else {
        return format!("Device '{device}' not found\n");
    };
    let words: Vec<&str> = command.split_whitespace().collect();
    let Some(debug) = debug else {
        return match words.first().copied() {
            Some(w @ ("break" | "remove_break" | "resume" | "wait_break")) => {
                format!("{w}: Operation not supported\n")
            }
            Some(w) => format!("command \"{w}\" not found\n"),
            None => String::new(),
        };
    };
    let result = match words.as_slice() {
        ["break", event, tag] => debug.add_breakpoint(event, tag),
        ["remove_break", tag] => debug.remove_breakpoint(tag),
        ["resume", tag] => debug.resume(tag),
        // Requests here suspend synchronously: one waits at the breakpoint or none will.
        ["wait_break", tag] if debug.is_suspended(tag) => Ok(()),
        ["wait_break", tag] => Err(format!("no request is suspended at '{tag}'")),
        [w, ..] if matches!(*w, "break" | "remove_break" | "resume" | "wait_break") => {
            Err(format!("{w}: bad number of arguments"))
        }
        [w, ..] => Err(format!("command \"{w}\" not found")),
        [] => Ok(()),
    };
    match result {
        Ok(()) => String::new(),
        Err(e) => format!("{e}\n"),
    }
}

/// QEMU's text for a command missing its argument (`what`: "string", "block device name").
fn missing(cmd: &str, what: &str) -> String {
    format!("{cmd}: {what} expected\nTry \"help {cmd}\" for more information\n")
}

/// `drive_add ADDR SPEC`: a `-drive` on the running machine (the address is for QEMU's
/// if=pci drives, which machina does not make).
fn drive_add(state: &mut VmState, rest: &str) -> String {
    let mut words = rest.split_whitespace();
    let (Some(_addr), Some(spec)) = (words.next(), words.next()) else {
        return missing("drive_add", "string");
    };
    let added = crate::backends::parse_drive(spec)
        .and_then(|b| crate::backends::add(&mut state.config.backends, b, "drive_add"));
    match added {
        Ok(()) => "OK\n".to_string(),
        Err(e) => format!("{}\n", e.message),
    }
}

/// `drive_del ID`: a drive (or node) no device uses goes, as `blockdev-del` would take it.
fn drive_del(state: &mut VmState, rest: &str) -> String {
    let Some(id) = rest.split_whitespace().next() else {
        return missing("drive_del", "block device name");
    };
    if !state
        .config
        .backends
        .iter()
        .any(|b| matches!(b, crate::backends::Backend::Drive { id: d, .. } if d == id))
    {
        return format!("Device '{id}' not found\n");
    }
    match super::live::blockdev_del(state, id) {
        Ok(()) => String::new(),
        Err(e) => format!("{}\n", e.desc),
    }
}

/// Run one human monitor command line against `state`.
pub(super) fn execute(state: &mut VmState, line: &str) -> String {
    let line = line.trim();
    let (cmd, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim();
    let arg = (!rest.is_empty()).then_some(rest);
    match cmd {
        "" => String::new(),
        "help" | "?" => help(arg),
        "info" => info(state, arg.and_then(|a| a.split_whitespace().next())),
        "device_add" => device_add(state, rest),
        "qemu-io" => qemu_io(state, rest),
        "drive_add" => drive_add(state, rest),
        "drive_del" => drive_del(state, rest),
        other => format!("unknown command: '{other}'\n"),
    }
}

pub(super) fn register(reg: &mut Registry, control: &Arc<Controller>) -> Result<(), RegistryError> {
    let c = control.clone();
    reg.register(
        CommandDef::new("human-monitor-command")
            .arg("command-line", Type::Str)
            .opt("cpu-index", Type::Int)
            .returns(Type::Str)
            .allow_preconfig(true),
        move |args: Map<String, Value>, _ctx: &mut Session| {
            let line = args
                .get("command-line")
                .and_then(Value::as_str)
                .unwrap_or("");
            // The human monitor ends its lines with CR LF, as QEMU's monitor_puts does.
            Ok(Value::String(
                execute(&mut c.state(), line).replace('\n', "\r\n"),
            ))
        },
    )?;
    Ok(())
}
