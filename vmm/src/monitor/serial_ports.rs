//! virtio-serial ports on a running machine: `device_add virtserialport|virtconsole` into a
//! controller's bus and `device_del` of such a port (QEMU's virtio-serial bus takes both at
//! any time). The plan gets or loses the port; the controller's device announces it to its
//! driver (VIRTIO_CONSOLE_PORT_ADD / PORT_REMOVE) through its [`HotPorts`]; a removal is
//! DEVICE_DELETED at once, as QEMU unplugs a port synchronously.

use crate::control::{Controller, VmState};
use devices::virtio::console::HotPorts;
use machine::{DeviceRequest, Plan};
use qmp::{QmpError, Value};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// The hot-port table of the controller at `bus`/`devfn`, one per controller for the whole
/// process (a rebuilt controller keeps its ports).
pub fn of(bus: &str, devfn: u8) -> HotPorts {
    static PORTS: OnceLock<Mutex<HashMap<(String, u8), HotPorts>>> = OnceLock::new();
    PORTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry((bus.to_string(), devfn))
        .or_default()
        .clone()
}

/// Adds the port `new_plan` has beyond `state`'s plan (the planner checked the bus and the
/// number). A port with a chardev is refused: machina connects chardevs at start only.
pub(super) fn hot_add(
    state: &mut VmState,
    new_plan: Plan,
    mut req: DeviceRequest,
) -> Result<Value, QmpError> {
    let Some(port) = new_plan.virtio_ports.last().cloned() else {
        return Err(QmpError::generic("no port"));
    };
    if req.get("chardev").is_some_and(|c| !c.is_empty()) {
        return Err(QmpError::generic(format!(
            "{}: machina connects chardevs to virtio-serial ports at start only",
            req.driver
        )));
    }
    let controller = new_plan
        .pci
        .get(port.controller)
        .ok_or_else(|| QmpError::generic("no controller"))?;
    of(&controller.bus, controller.devfn()).add(port.nr, port.console);
    // The request as placed, so a rebuild (system_reset) plans the same port.
    req.properties.retain(|(k, _)| k != "bus" && k != "nr");
    req.properties.push(("bus".to_string(), port.bus.clone()));
    req.properties.push(("nr".to_string(), port.nr.to_string()));
    state.config.devices.push(req);
    state.plan = Some(new_plan);
    Ok(Value::Null)
}

/// `device_del` of port `id`; None if `id` is no port. Ports with a chardev stay.
pub(super) fn device_del(control: &Controller, id: &str) -> Option<Result<Value, QmpError>> {
    let mut state = control.state();
    let plan = state.plan.as_mut()?;
    let at = plan
        .virtio_ports
        .iter()
        .position(|p| p.id.as_deref() == Some(id))?;
    let port = plan.virtio_ports[at].clone();
    if port.properties.nonempty_str("chardev").is_some() {
        return Some(Err(QmpError::generic(format!(
            "{}: machina cannot unplug a port connected to a chardev",
            port.type_name
        ))));
    }
    let controller = plan.pci.get(port.controller)?;
    let ports = of(&controller.bus, controller.devfn());
    plan.virtio_ports.remove(at);
    state.config.devices.retain(|d| d.id() != Some(id));
    drop(state);
    ports.remove(port.nr);
    control.emit(
        "DEVICE_DELETED",
        json!({ "device": id, "path": format!("/machine/peripheral/{id}") }),
    );
    Some(Ok(Value::Null))
}
