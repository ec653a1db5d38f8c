//! Ports on virtio-serial buses (`virtconsole`, `virtserialport`) with QEMU's rules
//! (hw/char/virtio-serial-bus.c): bus `ID.0` of the controller, port 0 reserved for a
//! console, the first free number otherwise, `nr` checked against `max_ports`.

use crate::error::PlanError;
use crate::plan::{PciFunctionPlan, VirtioPortPlan};
use crate::value::Properties;

const BAD_ID: u32 = u32::MAX;

fn is_controller(f: &PciFunctionPlan) -> bool {
    f.virtio.is_some_and(|v| v.device_type == 3)
}

/// The virtio-serial buses of `functions`: (bus name, controller index).
pub fn buses(functions: &[PciFunctionPlan]) -> Vec<(String, usize)> {
    let mut anonymous = 0;
    functions
        .iter()
        .enumerate()
        .filter(|(_, f)| is_controller(f))
        .map(|(i, f)| match &f.id {
            Some(id) => (format!("{id}.0"), i),
            None => {
                anonymous += 1;
                (format!("virtio-serial-bus.{}", anonymous - 1), i)
            }
        })
        .collect()
}

/// Place a port of type `type_name` (`console` for virtconsole) given its properties.
pub fn place(
    type_name: &str,
    console: bool,
    id: Option<String>,
    properties: &Properties,
    bus: Option<&str>,
    functions: &[PciFunctionPlan],
    ports: &[VirtioPortPlan],
) -> Result<VirtioPortPlan, PlanError> {
    let buses = buses(functions);
    let (bus, controller) = match bus {
        Some(name) => buses
            .iter()
            .find(|(b, _)| b == name)
            .cloned()
            .ok_or_else(|| PlanError::BusNotFound(name.to_string()))?,
        None => buses
            .first()
            .cloned()
            .ok_or_else(|| PlanError::NoBusForDevice {
                bus_type: "virtio-serial-bus".to_string(),
                driver: type_name.to_string(),
            })?,
    };
    let max_ports = functions[controller]
        .properties
        .uint("max_ports")
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(31);
    let used = |nr: u32| ports.iter().any(|p| p.bus == bus && p.nr == nr);
    let requested = properties
        .uint("nr")
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(BAD_ID);
    let plugging_port0 = console && !used(0);
    let nr = if requested != BAD_ID {
        if used(requested) {
            return Err(PlanError::VirtioPort(format!(
                "virtio-serial-bus: A port already exists at id {requested}"
            )));
        }
        if requested == 0 && !plugging_port0 {
            return Err(PlanError::VirtioPort(
                "virtio-serial-bus: Port number 0 on virtio-serial devices reserved for virtconsole devices for backward compatibility.".to_string(),
            ));
        }
        requested
    } else if plugging_port0 {
        0
    } else {
        (1..max_ports).find(|&n| !used(n)).ok_or_else(|| {
            PlanError::VirtioPort(
                "virtio-serial-bus: Maximum port limit for this device reached".to_string(),
            )
        })?
    };
    if nr >= max_ports {
        return Err(PlanError::VirtioPort(format!(
            "virtio-serial-bus: Out-of-range port id specified, max. allowed: {}",
            max_ports - 1
        )));
    }
    Ok(VirtioPortPlan {
        type_name: type_name.to_string(),
        id,
        bus,
        controller,
        nr,
        console,
        properties: properties.clone(),
    })
}
