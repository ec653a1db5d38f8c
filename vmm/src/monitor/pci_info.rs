//! `query-pci` in QEMU's PciInfo shape, read from the built machine's live config space
//! (not from the plan), so that comparing it with the prediction checks what really exists.

use crate::control::Controller;
use devices::pci::{BarKind, PciHost};
use qmp::{CommandDef, Map, QmpError, Registry, RegistryError, Session, Type, Value};
use serde_json::json;
use std::sync::Arc;

/// QEMU's class descriptions (hw/pci/pci.c pci_class_descriptions) for the classes we build.
fn class_desc(class: u16) -> Option<&'static str> {
    Some(match class {
        0x0100 => "SCSI controller",
        0x0101 => "IDE controller",
        0x0106 => "SATA controller",
        0x0180 => "Storage controller",
        0x0200 => "Ethernet controller",
        0x0300 => "VGA controller",
        0x0380 => "Display controller",
        0x0600 => "Host bridge",
        0x0601 => "ISA bridge",
        0x0604 => "PCI bridge",
        0x0680 => "Bridge",
        0x0780 => "Communication controller",
        0x0c03 => "USB controller",
        0x0c05 => "SMBus",
        0x00ff => "Class 00ff",
        _ => return None,
    })
}

fn regions(config: &devices::pci::PciConfig, count: usize) -> Vec<Value> {
    (0..count)
        .filter_map(|i| {
            let def = config.bar(i)?;
            let address = config.bar_address(i).unwrap_or(0);
            Some(match def.kind {
                BarKind::Io => {
                    json!({"bar": i, "type": "io", "address": address, "size": def.size})
                }
                BarKind::Rom => return None,
                kind => json!({
                    "bar": i,
                    "type": "memory",
                    "address": address,
                    "size": def.size,
                    "prefetch": def.prefetchable,
                    "mem_type_64": kind == BarKind::Mem64,
                }),
            })
        })
        .collect()
}

fn range(base: u64, limit: u64) -> Value {
    json!({"base": base, "limit": limit})
}

/// The devices on bus `bus_id` (numbered `number`), bridges with their buses nested.
fn bus_devices(host: &PciHost, bus_id: &str, number: u8) -> Vec<Value> {
    let mut functions: Vec<_> = host
        .functions()
        .into_iter()
        .filter(|f| f.bus_id == bus_id)
        .collect();
    functions.sort_by_key(|f| f.devfn);
    functions
        .into_iter()
        .filter_map(|f| {
            let shared = host.function(&f.bus_id, f.devfn)?;
            let func = shared.lock().unwrap_or_else(|e| e.into_inner());
            let c = func.config();
            let class = c.get_u16(0x0a);
            let mut class_info = json!({ "class": class });
            if let Some(desc) = class_desc(class) {
                class_info["desc"] = json!(desc);
            }
            let is_bridge = c.header_type() & 0x7f == 1;
            let mut id = json!({"vendor": c.get_u16(0), "device": c.get_u16(2)});
            if !is_bridge {
                id["subsystem-vendor"] = json!(c.get_u16(0x2c));
                id["subsystem"] = json!(c.get_u16(0x2e));
            } else {
                id["subsystem-vendor"] = json!(0);
                id["subsystem"] = json!(0);
            }
            let mut dev = json!({
                "bus": number,
                "slot": f.devfn >> 3,
                "function": f.devfn & 7,
                "class_info": class_info,
                "id": id,
                "qdev_id": f.id.clone().unwrap_or_default(),
                "regions": regions(c, if is_bridge { 2 } else { 6 }),
            });
            let pin = c.get_u8(0x3d);
            if pin != 0 {
                dev["irq_pin"] = json!(pin);
                dev["irq"] = json!(c.get_u8(0x3c));
            }
            if is_bridge {
                let secondary = c.get_u8(0x19);
                let subordinate = c.get_u8(0x1a);
                let io_base =
                    (u64::from(c.get_u8(0x1c) & 0xf0) << 8) | (u64::from(c.get_u16(0x30)) << 16);
                let io_limit = (u64::from(c.get_u8(0x1d) & 0xf0) << 8)
                    | 0xfff
                    | (u64::from(c.get_u16(0x32)) << 16);
                let mem_base = u64::from(c.get_u16(0x20) & 0xfff0) << 16;
                let mem_limit = (u64::from(c.get_u16(0x22) & 0xfff0) << 16) | 0xf_ffff;
                let pf_base = (u64::from(c.get_u16(0x24) & 0xfff0) << 16)
                    | (u64::from(c.get_u32(0x28)) << 32);
                let pf_limit = (u64::from(c.get_u16(0x26) & 0xfff0) << 16)
                    | 0xf_ffff
                    | (u64::from(c.get_u32(0x2c)) << 32);
                drop(func);
                let children = match (&f.provides_bus, secondary) {
                    (Some(child), s) if s != 0 => bus_devices(host, child, s),
                    _ => Vec::new(),
                };
                dev["pci_bridge"] = json!({
                    "bus": {
                        "number": number,
                        "secondary": secondary,
                        "subordinate": subordinate,
                        "io_range": range(io_base, io_limit),
                        "memory_range": range(mem_base, mem_limit),
                        "prefetchable_range": range(pf_base, pf_limit),
                    },
                    "devices": children,
                });
            }
            Some(dev)
        })
        .collect()
}

pub(super) fn register(reg: &mut Registry, control: &Arc<Controller>) -> Result<(), RegistryError> {
    let c = control.clone();
    reg.register(
        CommandDef::new("query-pci").returns(Type::array(Type::Any)),
        move |_args: Map<String, Value>, _ctx: &mut Session| {
            let state = c.state();
            let (Some(host), Some(plan)) = (&state.pci, &state.plan) else {
                return Ok(Value::Array(Vec::new()));
            };
            let root = plan
                .buses
                .iter()
                .find(|b| b.is_root)
                .map(|b| b.id.clone())
                .ok_or_else(|| QmpError::generic("the machine has no PCI root bus"))?;
            let host = host.lock().unwrap_or_else(|e| e.into_inner());
            Ok(json!([{ "bus": 0, "devices": bus_devices(&host, &root, 0) }]))
        },
    )?;
    Ok(())
}
