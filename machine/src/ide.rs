//! Drives on the IDE buses of a PCI IDE controller (`ide-hd`, `ide-cd`) with QEMU's rules
//! (hw/ide/ide-dev.c ide_qdev_realize, hw/block/block.c blkconf_geometry): each PIIX IDE
//! function provides two buses, `ide.N` and `ide.N+1` (numbered over all controllers in
//! creation order), each with a master (unit 0) and a slave (unit 1).

use crate::error::PlanError;
use crate::plan::{IdeDrivePlan, PciFunctionPlan};
use crate::value::Properties;

/// Units per IDE bus (master and slave).
pub const UNITS: u32 = 2;

/// The IDE buses of `functions`, `buses_of(f)` per function (the catalog's `ide-buses`):
/// (bus name, controller index, channel).
pub fn buses(
    functions: &[PciFunctionPlan],
    buses_of: &dyn Fn(&PciFunctionPlan) -> u8,
) -> Vec<(String, usize, u8)> {
    functions
        .iter()
        .enumerate()
        .flat_map(|(i, f)| (0..buses_of(f)).map(move |ch| (i, ch)))
        .enumerate()
        .map(|(n, (i, ch))| (format!("ide.{n}"), i, ch))
        .collect()
}

fn num(props: &Properties, key: &str) -> u32 {
    props.u32(key, 0).unwrap_or(0)
}

/// A drive to place: its type, whether it is an ATAPI device, its id and the bus the request
/// named.
pub struct Request<'a> {
    pub type_name: &'a str,
    pub atapi: bool,
    pub id: Option<String>,
    pub bus: Option<&'a str>,
}

/// Place drive `req` with its (resolved) properties among `drives` on the IDE buses of
/// `buses`.
pub fn place(
    req: Request,
    properties: &Properties,
    buses: &[(String, usize, u8)],
    drives: &[IdeDrivePlan],
) -> Result<IdeDrivePlan, PlanError> {
    let Request {
        type_name,
        atapi,
        id,
        bus,
    } = req;
    let used = |b: &str, unit: u32| {
        drives
            .iter()
            .any(|d| d.bus == b && u32::from(d.unit) == unit)
    };
    let (bus, controller, channel) = match bus {
        Some(name) => buses
            .iter()
            .find(|(b, _, _)| b == name)
            .cloned()
            .ok_or_else(|| PlanError::BusNotFound(name.to_string()))?,
        // qdev picks the first bus of the type that has room.
        None => buses
            .iter()
            .find(|(b, _, _)| (0..UNITS).any(|u| !used(b, u)))
            .cloned()
            .ok_or_else(|| PlanError::NoBusForDevice {
                bus_type: "IDE".to_string(),
                driver: type_name.to_string(),
            })?,
    };
    let requested = properties.u32("unit", u32::MAX).unwrap_or(u32::MAX);
    let unit = if requested == u32::MAX {
        // ide_qdev_realize: the slave once a master exists.
        u32::from(used(&bus, 0))
    } else {
        requested
    };
    if unit >= UNITS {
        return Err(PlanError::Ide(format!(
            "Can't create IDE unit {unit}, bus supports only {UNITS} units"
        )));
    }
    if used(&bus, unit) {
        return Err(PlanError::Ide(format!("IDE unit {unit} is in use")));
    }
    let cdrom = atapi;
    let drive = properties.nonempty_str("drive");
    if !cdrom && drive.is_none() {
        return Err(PlanError::Ide("No drive specified".to_string()));
    }
    if !cdrom {
        check_geometry(properties)?;
    }
    let mut props = properties.clone();
    props.remove("bus");
    props.remove("id");
    props.remove("unit");
    Ok(IdeDrivePlan {
        type_name: type_name.to_string(),
        id,
        bus,
        controller,
        channel,
        unit: unit as u8,
        cdrom,
        properties: props,
    })
}

/// blkconf_geometry's limits for IDE (65535 cylinders, 16 heads, 255 sectors), checked
/// when any of the three is given.
fn check_geometry(props: &Properties) -> Result<(), PlanError> {
    let (c, h, s) = (num(props, "cyls"), num(props, "heads"), num(props, "secs"));
    if c == 0 && h == 0 && s == 0 {
        return Ok(());
    }
    for (name, v, max) in [("cyls", c, 65535), ("heads", h, 16), ("secs", s, 255)] {
        if v < 1 || v > max {
            return Err(PlanError::Ide(format!(
                "{name} must be between 1 and {max}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> Properties {
        let mut p = Properties::new();
        for (k, v) in pairs {
            p.insert_text(*k, *v);
        }
        p
    }

    #[test]
    fn geometry_limits() {
        assert!(check_geometry(&props(&[])).is_ok());
        assert!(check_geometry(&props(&[("cyls", "60"), ("heads", "16"), ("secs", "63")])).is_ok());
        assert_eq!(
            check_geometry(&props(&[("cyls", "60"), ("heads", "17"), ("secs", "63")]))
                .unwrap_err()
                .to_string(),
            "heads must be between 1 and 16"
        );
        assert_eq!(
            check_geometry(&props(&[("heads", "4")]))
                .unwrap_err()
                .to_string(),
            "cyls must be between 1 and 65535"
        );
    }
}
