//! QMP and -delay-machine-init, driven like a management tool would: know the machine before
//! it exists, configure it over QMP, build it, check that what exists is what was predicted,
//! run it, power it down.

mod common;

use common::{machina, require_kvm};
use machina_tests::qmp_client::QmpClient;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Instance {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Instance {
    fn start(name: &str, extra: &[&str]) -> Instance {
        let dir = std::env::temp_dir().join(format!("machina-qmp-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("qmp.sock");
        let qmp = format!("unix:{},server=on,wait=off", socket.display());
        let child = Command::new(machina())
            .args(["-qmp", &qmp])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start machina");
        Instance { child, dir, socket }
    }

    fn client(&self) -> QmpClient {
        let mut c = QmpClient::connect(&self.socket, Duration::from_secs(20));
        c.ok("qmp_capabilities", Value::Null);
        c
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        None
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every function of a query-pci answer keyed by (bus number, slot, function), plus the bus
/// number each bridge (by qdev id) gave its secondary bus.
fn flatten(
    devices: &Value,
    out: &mut BTreeMap<(u64, u64, u64), Value>,
    buses: &mut BTreeMap<String, u64>,
) {
    for d in devices.as_array().into_iter().flatten() {
        let key = (
            d["bus"].as_u64().unwrap(),
            d["slot"].as_u64().unwrap(),
            d["function"].as_u64().unwrap(),
        );
        if let Some(bridge) = d.get("pci_bridge") {
            buses.insert(
                d["qdev_id"].as_str().unwrap_or("").to_string(),
                bridge["bus"]["secondary"].as_u64().unwrap(),
            );
            flatten(&bridge["devices"], out, buses);
        }
        out.insert(key, d.clone());
    }
}

#[test]
fn whole_startup_over_qmp() {
    if !require_kvm() {
        return;
    }
    let mut vm = Instance::start("startup", &["-delay-machine-init"]);
    let mut qmp = vm.client();
    assert_eq!(qmp.greeting["QMP"]["version"]["qemu"]["major"], 10);
    assert_eq!(qmp.ok("query-status", Value::Null)["status"], "prelaunch");

    // Know every machine type before anything exists, as often as we like.
    let machines = qmp.ok("query-machines", Value::Null);
    let names: Vec<String> = machines
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.len() >= 37, "{names:?}");
    for name in &names {
        let plan = qmp.ok("x-query-machine-definition", json!({ "machine": name }));
        if name != "none" {
            let root = &plan["buses"][0];
            assert!(root["is_root"].as_bool().unwrap(), "{name}: {root}");
            let host = &plan["pci"][0];
            assert_eq!(
                (host["slot"].as_u64(), host["function"].as_u64()),
                (Some(0), Some(0)),
                "{name}"
            );
        }
    }

    // Configure q35 with root ports, a transitional and a modern virtio device, a disk.
    let console = vm.dir.join("console.log");
    let disk = vm.dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    qmp.ok(
        "chardev-add",
        json!({"id": "serial0", "backend": {"type": "file", "data": {"out": console.display().to_string()}}}),
    );
    qmp.ok(
        "x-machine-set",
        json!({"machine": "q35", "nodefaults": true, "memory": 256u64 << 20, "cpus": 2,
               "serial": "serial0", "append": "machina.test=pci-scan,powerbutton"}),
    );
    qmp.ok(
        "blockdev-add",
        json!({"driver": "file", "node-name": "disk0", "filename": disk.display().to_string()}),
    );
    for dev in [
        json!({"driver": "pcie-root-port", "id": "rp1", "chassis": 1, "port": 16, "bus": "pcie.0", "addr": "0x2", "multifunction": true}),
        json!({"driver": "pcie-root-port", "id": "rp2", "chassis": 2, "port": 17, "bus": "pcie.0", "addr": "0x2.0x1"}),
        json!({"driver": "virtio-net-pci", "id": "net0", "bus": "pcie.0", "addr": "0x3"}),
        json!({"driver": "virtio-rng-pci", "id": "rng0", "bus": "rp1"}),
        json!({"driver": "virtio-blk-pci", "id": "blk0", "drive": "disk0", "bus": "rp2"}),
    ] {
        qmp.ok("device_add", dev);
    }
    // A placement that cannot work is refused with QEMU's text and changes nothing.
    let err = qmp.error(
        "device_add",
        json!({"driver": "virtio-rng-pci", "bus": "pcie.0", "addr": "0x2"}),
    );
    assert!(
        err.contains("PCI: slot 2 function 0 not available for virtio-rng-pci"),
        "{err}"
    );

    let predicted = qmp.ok("x-query-machine-definition", Value::Null);
    let find = |plan: &Value, id: &str| -> Value {
        plan["pci"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not in the plan"))
    };
    // QEMU's rule: transitional on pcie.0, modern-only behind a root port.
    assert_eq!(find(&predicted, "net0")["virtio"]["legacy"], true);
    assert_eq!(find(&predicted, "net0")["identity"]["device_id"], 0x1000);
    assert_eq!(find(&predicted, "rng0")["virtio"]["legacy"], false);
    assert_eq!(find(&predicted, "rng0")["identity"]["device_id"], 0x1044);
    assert_eq!(find(&predicted, "blk0")["identity"]["device_id"], 0x1042);

    // Build: the plan it returns is the prediction; QMP stays usable.
    let built = qmp.ok("machine-build", Value::Null);
    assert_eq!(
        built, predicted,
        "the machine was built from the predicted plan"
    );
    let err = qmp.error("x-exit-preconfig", Value::Null);
    assert_eq!(
        err,
        "The command is permitted only before machine initialization"
    );
    assert_eq!(qmp.ok("query-status", Value::Null)["status"], "prelaunch");

    // What exists equals what was predicted, field by field.
    let pci = qmp.ok("query-pci", Value::Null);
    let mut found = BTreeMap::new();
    let mut bus_numbers = BTreeMap::new();
    flatten(&pci[0]["devices"], &mut found, &mut bus_numbers);
    let root = predicted["buses"][0]["id"].as_str().unwrap().to_string();
    bus_numbers.insert(root, 0);
    let functions = predicted["pci"].as_array().unwrap();
    assert_eq!(found.len(), functions.len(), "query-pci: {pci}");
    for f in functions {
        let bus = bus_numbers[f["bus"].as_str().unwrap()];
        let key = (
            bus,
            f["slot"].as_u64().unwrap(),
            f["function"].as_u64().unwrap(),
        );
        let dev = found
            .get(&key)
            .unwrap_or_else(|| panic!("{} predicted at {key:?} is missing", f["type_name"]));
        let id = &f["identity"];
        assert_eq!(dev["id"]["vendor"], id["vendor_id"], "{f}");
        assert_eq!(dev["id"]["device"], id["device_id"], "{f}");
        assert_eq!(
            dev["class_info"]["class"].as_u64(),
            id["class_code"].as_u64().map(|c| c >> 8),
            "{f}"
        );
        if let Some(sub) = id["subsystem_id"].as_u64() {
            assert_eq!(dev["id"]["subsystem"].as_u64(), Some(sub), "{f}");
            assert_eq!(
                dev["id"]["subsystem-vendor"], id["subsystem_vendor_id"],
                "{f}"
            );
        }
        assert_eq!(
            dev["qdev_id"].as_str(),
            Some(f["id"].as_str().unwrap_or("")),
            "{f}"
        );
    }

    // Run: RESUME comes before cont's return; the guest prints on the serial chardev.
    qmp.execute("cont", Value::Null);
    assert!(
        qmp.events.iter().any(|e| e["event"] == "RESUME"),
        "RESUME before cont returns"
    );
    qmp.events.clear();
    assert_eq!(qmp.ok("query-status", Value::Null)["status"], "running");
    let start = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if text.contains("powerbutton: waiting") || start.elapsed() > Duration::from_secs(30) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(text.contains("pci: 00:00.0 8086:29c0"), "{text}");
    assert!(text.contains("powerbutton: waiting"), "{text}");

    // Power down: POWERDOWN, then the guest shuts down, SHUTDOWN, exit 0.
    qmp.ok("system_powerdown", Value::Null);
    qmp.wait_event("POWERDOWN");
    let shutdown = qmp.wait_event("SHUTDOWN");
    assert_eq!(
        shutdown["data"],
        json!({"guest": true, "reason": "guest-shutdown"})
    );
    assert!(shutdown["timestamp"]["seconds"].as_u64().unwrap() > 0);
    assert_eq!(vm.wait_exit(Duration::from_secs(20)), Some(0));
    let text = std::fs::read_to_string(&console).unwrap();
    assert!(text.contains("powerbutton: pressed"), "{text}");
}

#[test]
fn protocol_rules_and_lifecycle_commands() {
    if !require_kvm() {
        return;
    }
    let mut vm = Instance::start(
        "lifecycle",
        &[
            "-M",
            "pc",
            "-S",
            "-nodefaults",
            "-append",
            "machina.test=powerbutton",
        ],
    );
    let mut raw = QmpClient::connect(&vm.socket, Duration::from_secs(20));
    let err = raw.execute("query-status", Value::Null);
    assert_eq!(err["error"]["class"], "CommandNotFound");
    assert_eq!(
        err["error"]["desc"],
        "Expecting capabilities negotiation with 'qmp_capabilities'"
    );
    let mut qmp = vm.client();
    raw.ok("qmp_capabilities", Value::Null);
    assert_eq!(
        qmp.ok("query-status", Value::Null),
        json!({"status": "prelaunch", "running": false})
    );
    assert_eq!(
        qmp.error("query-nothing", Value::Null),
        "The command query-nothing has not been found"
    );
    assert_eq!(
        qmp.error("query-machines", json!({"bogus": 1})),
        "Parameter 'bogus' is unexpected"
    );
    let commands = qmp.ok("query-commands", Value::Null);
    for name in [
        "query-pci",
        "x-exit-preconfig",
        "machine-build",
        "x-query-machine-definition",
        "x-query-placement",
        "system_powerdown",
    ] {
        assert!(
            commands
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == name),
            "{name}"
        );
    }
    // pc pci.0: only the chipset functions with -nodefaults.
    let pci = qmp.ok("query-pci", Value::Null);
    let ids: Vec<(u64, u64)> = pci[0]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["id"]["vendor"].as_u64().unwrap(),
                d["id"]["device"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        vec![
            (0x8086, 0x1237),
            (0x8086, 0x7000),
            (0x8086, 0x7010),
            (0x8086, 0x7113)
        ]
    );

    qmp.execute("cont", Value::Null);
    assert_eq!(
        raw.wait_event("RESUME")["event"],
        "RESUME",
        "every client gets events"
    );
    qmp.execute("stop", Value::Null);
    assert!(
        qmp.events.iter().any(|e| e["event"] == "STOP"),
        "STOP before stop returns"
    );
    assert_eq!(qmp.ok("query-status", Value::Null)["status"], "paused");
    qmp.ok("cont", Value::Null);
    qmp.ok("system_reset", Value::Null);
    let reset = qmp.wait_event("RESET");
    assert_eq!(
        reset["data"],
        json!({"guest": false, "reason": "host-qmp-system-reset"})
    );
    assert_eq!(qmp.ok("query-status", Value::Null)["status"], "running");

    qmp.execute("quit", Value::Null);
    let shutdown = qmp
        .events
        .iter()
        .find(|e| e["event"] == "SHUTDOWN")
        .cloned()
        .expect("SHUTDOWN before quit returns");
    assert_eq!(
        shutdown["data"],
        json!({"guest": false, "reason": "host-qmp-quit"})
    );
    assert_eq!(vm.wait_exit(Duration::from_secs(20)), Some(0));
}
