//! Human-readable help in QEMU's formats: `-machine help`, `-device help` and
//! `-device TYPE,help`.

use crate::catalog::Catalog;
use crate::device_types::{Category, DeviceType};
use crate::error::PlanError;
use crate::machine_types::MachineType;
use std::cmp::Ordering;
use std::fmt::Write as _;

/// `-machine help`: "Supported machines are:" then `%-20s %s` lines, sorted like QEMU's
/// `machine_class_cmp` (families alphabetically, within a family by QOM class name in
/// decreasing `strcmp` order, family-less types last in increasing order), an alias line
/// right before its target.
pub fn machine_help(catalog: &Catalog) -> String {
    let mut machines: Vec<&MachineType> = catalog.machine_types().iter().collect();
    machines.sort_by(|a, b| machine_cmp(a, b));
    let mut out = String::from("Supported machines are:\n");
    for m in machines {
        if let Some(alias) = &m.alias {
            let _ = writeln!(out, "{:<20} {} (alias of {})", alias, m.description, m.name);
        }
        let _ = writeln!(
            out,
            "{:<20} {}{}{}",
            m.name,
            m.description,
            if m.is_default { " (default)" } else { "" },
            if m.deprecated { " (deprecated)" } else { "" }
        );
    }
    out
}

fn machine_cmp(a: &MachineType, b: &MachineType) -> Ordering {
    match (&a.help_family, &b.help_family) {
        (None, None) => a.qom_type().cmp(&b.qom_type()),
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(fa), Some(fb)) => fa.cmp(fb).then_with(|| b.qom_type().cmp(&a.qom_type())),
    }
}

/// `-device help`: user-creatable, non-abstract types by category (types in no category
/// last, as "Uncategorized"), each category sorted case-insensitively, one
/// `name "x", bus PCI, alias "y", desc "z"` line per type.
pub fn device_help(catalog: &Catalog) -> String {
    let mut types: Vec<&DeviceType> = catalog
        .device_types()
        .iter()
        .filter(|t| !t.is_abstract && t.user_creatable)
        .collect();
    types.sort_by_key(|t| t.name.to_ascii_lowercase());
    let mut out = String::new();
    let mut groups: Vec<(String, Vec<&DeviceType>)> = Category::ALL
        .iter()
        .map(|c| {
            (
                c.heading().to_string(),
                types
                    .iter()
                    .copied()
                    .filter(|t| t.category == Some(*c))
                    .collect(),
            )
        })
        .collect();
    groups.push((
        "Uncategorized".to_string(),
        types
            .iter()
            .copied()
            .filter(|t| t.category.is_none())
            .collect(),
    ));
    for (i, (heading, list)) in groups.iter().enumerate() {
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{}{} devices:", if i > 0 { "\n" } else { "" }, heading);
        for t in list {
            out.push_str(&device_line(t));
            out.push('\n');
        }
    }
    out
}

/// One `-device help` line (without newline).
pub fn device_line(t: &DeviceType) -> String {
    let mut s = format!("name \"{}\"", t.name);
    if let Some(bus) = &t.bus {
        let _ = write!(s, ", bus {bus}");
    }
    if let Some(alias) = &t.alias {
        let _ = write!(s, ", alias \"{alias}\"");
    }
    if let Some(desc) = &t.description {
        let _ = write!(s, ", desc \"{desc}\"");
    }
    if !t.user_creatable {
        s.push_str(", no-user");
    }
    s
}

/// `-device TYPE,help`: `TYPE options:` then one line per property, sorted, as QEMU's
/// `object_property_help` prints them. An unknown type is QEMU's "'TYPE' is not a valid
/// device model name".
pub fn device_properties_help(catalog: &Catalog, type_name: &str) -> Result<String, PlanError> {
    let t = catalog
        .device_type(type_name)
        .ok_or_else(|| PlanError::UnknownDevice(type_name.to_string()))?;
    let mut lines: Vec<String> = t
        .properties
        .iter()
        .map(|p| {
            let mut line = format!("  {}=<{}>", p.name, p.ty.help_name());
            let desc = p
                .description
                .as_deref()
                .or_else(|| p.ty.default_description());
            if desc.is_some() || p.default.is_some() {
                if line.len() < 24 {
                    line.push_str(&" ".repeat(24 - line.len()));
                }
                line.push_str(" - ");
            }
            if let Some(d) = desc {
                line.push_str(d);
            }
            if let Some(d) = &p.default {
                let _ = write!(line, " (default: {d})");
            }
            line
        })
        .collect();
    lines.sort();
    let mut out = if lines.is_empty() {
        format!("There are no options for {}.\n", t.name)
    } else {
        format!("{} options:\n", t.name)
    };
    for l in lines {
        out.push_str(&l);
        out.push('\n');
    }
    Ok(out)
}

/// `-machine TYPE,help`: `TYPE-machine options:` then one line per option, sorted, in
/// QEMU 7.2's `object_property_help` layout (`  usb=<bool>             - Set on/off ...`).
pub fn machine_options_help(catalog: &Catalog, machine: &str) -> Result<String, PlanError> {
    let m = catalog
        .resolve_machine(machine)
        .ok_or_else(|| PlanError::UnknownMachine(machine.to_string()))?;
    let mut lines: Vec<String> = m
        .options
        .iter()
        .map(|o| {
            // Class properties of type string print as `string`; enums as `str`.
            let ty = match o.ty {
                crate::properties::PropType::Str => "string",
                other => other.help_name(),
            };
            let mut l = format!("  {}=<{}>", o.name, ty);
            if let Some(d) = &o.description {
                if l.len() < 24 {
                    l.push_str(&" ".repeat(24 - l.len()));
                }
                let _ = write!(l, " - {d}");
            }
            l
        })
        .collect();
    lines.sort();
    let mut out = format!("{} options:\n", m.qom_type());
    for l in lines {
        out.push_str(&l);
        out.push('\n');
    }
    Ok(out)
}
