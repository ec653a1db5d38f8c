//! QMP and -delay-machine-init, driven like a management tool would: know the machine before
//! it exists, configure it over QMP, build it, check that what exists is what was predicted,
//! run it, power it down.

mod common;

use common::{machina, require_kvm};
use machina_tests::pci_compare::compare_plan_with_pci;
use machina_tests::process::MachinaProcess;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn start(tag: &str, args: &[&str]) -> MachinaProcess {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    MachinaProcess::start(&machina(), tag, &args)
}

#[test]
fn whole_startup_over_qmp() {
    if !require_kvm() {
        return;
    }
    let mut vm = start("startup", &["-delay-machine-init"]);
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
    let console = vm.dir().join("console.log");
    let disk = vm.dir().join("disk.img");
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
    // Once built, machine-build answers with the built machine's plan (qmp-cmd-test calls it
    // on a running machine and requires success).
    assert_eq!(
        qmp.ok("machine-build", Value::Null),
        predicted,
        "machine-build on a built machine returns its plan"
    );
    assert_eq!(qmp.ok("query-status", Value::Null)["status"], "prelaunch");

    // What exists equals what was predicted, field by field.
    let pci = qmp.ok("query-pci", Value::Null);
    if let Err(difference) = compare_plan_with_pci(&predicted, &pci) {
        panic!("query-pci differs from the prediction: {difference}\n{pci}");
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
    let mut vm = start(
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
    let mut raw = vm.raw_client();
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

#[test]
fn quit_works_before_the_machine_exists() {
    let mut vm = start("preconfig-quit", &["-delay-machine-init"]);
    let mut qmp = vm.client();
    assert_eq!(qmp.ok("query-status", Value::Null)["status"], "prelaunch");
    qmp.execute("quit", Value::Null);
    assert!(
        qmp.events.iter().any(|e| e["event"] == "SHUTDOWN"),
        "SHUTDOWN before quit returns"
    );
    assert_eq!(vm.wait_exit(Duration::from_secs(20)), Some(0));
}
