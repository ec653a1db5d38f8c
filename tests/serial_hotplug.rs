//! virtio-serial ports on a running machine (QEMU's qos-test virtio-serial/hotplug and
//! more): `device_add virtserialport|virtconsole` into a controller's bus with QEMU's
//! refusals, `device_del` with DEVICE_DELETED at once, the port in qom-list, and what a
//! machina that cannot do it says. The guest side (PORT_ADD / PORT_REMOVE) is checked by the
//! devices crate's console tests.

mod common;

use common::machina;
use machina_tests::qmp_client::QmpClient;
use machina_tests::qtest_client::Qtest;
use machina_tests::TempDir;
use serde_json::{json, Value};
use std::time::Duration;

fn start(dir: &TempDir, extra: &[&str]) -> (Qtest, QmpClient) {
    let sock = dir.join("qmp.sock");
    let mut args: Vec<String> = [
        "-machine",
        "pc",
        "-nodefaults",
        "-qmp",
        &format!("unix:{},server=on,wait=off", sock.display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let q = Qtest::start(&machina(), &args);
    let mut qmp = QmpClient::connect(&sock, Duration::from_secs(30));
    qmp.ok("qmp_capabilities", Value::Null);
    (q, qmp)
}

fn peripherals(qmp: &mut QmpClient) -> Vec<String> {
    common::names(
        &qmp.ok("qom-list", json!({"path": "/machine/peripheral"})),
        "name",
    )
}

#[test]
fn ports_come_and_go_on_a_running_machine() {
    let dir = TempDir::new("serial-hotplug");
    let (_q, mut qmp) = start(&dir, &["-device", "virtio-serial-pci,id=vser0,max_ports=3"]);
    qmp.ok(
        "device_add",
        json!({"driver": "virtserialport", "id": "hp-port"}),
    );
    assert!(peripherals(&mut qmp).contains(&"hp-port".to_string()));
    // QEMU's refusals: the number taken, port 0 kept for a console, the bus full.
    assert_eq!(
        qmp.error(
            "device_add",
            json!({"driver": "virtserialport", "id": "p2", "nr": 1})
        ),
        "virtio-serial-bus: A port already exists at id 1"
    );
    assert_eq!(
        qmp.error(
            "device_add",
            json!({"driver": "virtserialport", "id": "p2", "nr": 0})
        ),
        "virtio-serial-bus: Port number 0 on virtio-serial devices reserved for virtconsole \
         devices for backward compatibility."
    );
    qmp.ok("device_add", json!({"driver": "virtconsole", "id": "con0"}));
    qmp.ok(
        "device_add",
        json!({"driver": "virtserialport", "id": "p2"}),
    );
    assert_eq!(
        qmp.error(
            "device_add",
            json!({"driver": "virtserialport", "id": "p3"})
        ),
        "virtio-serial-bus: Maximum port limit for this device reached"
    );
    // A chardev cannot be connected after start: refused, nothing added.
    qmp.ok(
        "chardev-add",
        json!({"id": "c0", "backend": {"type": "null", "data": {}}}),
    );
    qmp.ok("device_del", json!({"id": "p2"}));
    assert_eq!(qmp.wait_event("DEVICE_DELETED")["data"]["device"], "p2");
    let e = qmp.error(
        "device_add",
        json!({"driver": "virtserialport", "id": "p4", "chardev": "c0"}),
    );
    assert!(
        e.contains("chardevs to virtio-serial ports at start only"),
        "{e}"
    );
    assert!(!peripherals(&mut qmp).contains(&"p4".to_string()));
    // device_del: DEVICE_DELETED at once; the number is free again.
    qmp.ok("device_del", json!({"id": "hp-port"}));
    let ev = qmp.wait_event("DEVICE_DELETED");
    assert_eq!(
        ev["data"],
        json!({"device": "hp-port", "path": "/machine/peripheral/hp-port"})
    );
    assert!(!peripherals(&mut qmp).contains(&"hp-port".to_string()));
    qmp.ok(
        "device_add",
        json!({"driver": "virtserialport", "id": "again", "nr": 1}),
    );
    assert_eq!(
        qmp.error("device_del", json!({"id": "hp-port"})),
        "Device 'hp-port' not found"
    );
}

/// Without a virtio-serial bus there is nowhere to put a port (QEMU's text).
#[test]
fn no_bus_no_port() {
    let dir = TempDir::new("serial-hotplug-nobus");
    let (_q, mut qmp) = start(&dir, &[]);
    assert_eq!(
        qmp.error("device_add", json!({"driver": "virtserialport", "id": "p"})),
        "No 'virtio-serial-bus' bus found for device 'virtserialport'"
    );
}
