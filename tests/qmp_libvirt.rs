//! What libvirt asks a QEMU it probes and starts, answered by machina from its real state:
//! the capability probe (target, KVM, QOM types and properties, CPU models, command-line
//! options, migration capabilities), a running machine's CPUs (host thread ids, topology,
//! CPUID), block devices and their counters after guest I/O, chardevs; QEMU's `-smp`
//! topology rules and texts. (The QMP argument fuzz is tests/qmp_fuzz.rs.)

mod common;

use common::{boot, machina, names, require_kvm, schema_members};
use machina_tests::process::MachinaProcess;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn start(tag: &str, args: &[&str]) -> MachinaProcess {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    MachinaProcess::start(&machina(), tag, &args)
}

#[test]
fn capability_probe_answers_from_machina() {
    if !require_kvm() {
        return;
    }
    // libvirt's probe command line (without -daemonize/-pidfile, not this helper's part).
    let vm = start(
        "probe",
        &["-S", "-no-user-config", "-nodefaults", "-machine", "none"],
    );
    let mut qmp = vm.client();

    assert_eq!(
        qmp.ok("query-target", Value::Null)["arch"],
        std::env::consts::ARCH
    );
    let kvm = qmp.ok("query-kvm", Value::Null);
    let present = machina_tests::kvm_available();
    assert_eq!(kvm, json!({"enabled": present, "present": present}));

    // Unknown types: QEMU's classes and texts, which libvirt matches on.
    let r = qmp.execute("device-list-properties", json!({"typename": "nope"}));
    assert_eq!(r["error"]["class"], "DeviceNotFound", "{r}");
    assert_eq!(r["error"]["desc"], "Device 'nope' not found");
    let r = qmp.execute("qom-list-properties", json!({"typename": "nope"}));
    assert_eq!(r["error"]["class"], "DeviceNotFound", "{r}");
    assert_eq!(r["error"]["desc"], "Class 'nope' not found");
    let r = qmp.execute("device-list-properties", json!({"typename": "rng-random"}));
    assert_eq!(
        r["error"]["desc"],
        "Parameter 'typename' expects a non-abstract device type"
    );

    // Every listed type has properties; the non-device types machina implements are there.
    let types = names(&qmp.ok("qom-list-types", Value::Null), "name");
    for wanted in [
        "rng-random",
        "memory-backend-ram",
        "memory-backend-memfd",
        "memory-backend-file",
        "secret",
        "host-x86_64-cpu",
        "max-x86_64-cpu",
        "none-machine",
    ] {
        assert!(types.iter().any(|t| t == wanted), "{wanted} in {types:?}");
    }
    for t in &types {
        let props = qmp.ok("qom-list-properties", json!({ "typename": t }));
        assert!(
            names(&props, "name").iter().any(|n| n == "type"),
            "{t}: {props}"
        );
    }
    let max = names(
        &qmp.ok("qom-list-properties", json!({"typename": "max-x86_64-cpu"})),
        "name",
    );
    assert!(max.iter().any(|n| n == "fpu") && max.iter().any(|n| n == "feature-words"));

    // Command-line options: what the parser takes; no seccomp, so no `sandbox`.
    let opts = qmp.ok("query-command-line-options", Value::Null);
    let options = names(&opts, "option");
    assert!(!options.iter().any(|o| o == "sandbox"), "{options:?}");
    let smp = qmp.ok("query-command-line-options", json!({"option": "smp"}));
    let keys = names(&smp[0]["parameters"], "name");
    for k in ["cpus", "maxcpus", "sockets", "dies", "cores", "threads"] {
        assert!(keys.iter().any(|x| x == k), "{k} in {keys:?}");
    }

    // Migration: only the `events` capability, and its state is real.
    let caps = qmp.ok("query-migrate-capabilities", Value::Null);
    assert_eq!(caps, json!([{"capability": "events", "state": false}]));
    qmp.ok(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events", "state": true}]}),
    );
    let caps = qmp.ok("query-migrate-capabilities", Value::Null);
    assert_eq!(caps[0]["state"], true);
    let e = qmp.error(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "xbzrle", "state": true}]}),
    );
    assert!(e.contains("xbzrle"), "{e}");
    assert_eq!(qmp.ok("query-iothreads", Value::Null), json!([]));
    // `none` has no CPU hot-plug (query-machines says so), as in QEMU.
    assert_eq!(
        qmp.error("query-hotpluggable-cpus", Value::Null),
        "The feature 'query-hotpluggable-cpus' is not enabled"
    );

    // CPU models: host and max, expanded to KVM's supported CPUID.
    let defs = qmp.ok("query-cpu-definitions", Value::Null);
    let def_names = names(&defs, "name");
    assert_eq!(def_names[..3], ["host", "max", "qemu64"]);
    // QEMU's named models, the unversioned name an alias of its first version.
    let haswell = defs
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "Haswell")
        .expect("Haswell is offered");
    assert_eq!(haswell["alias-of"], "Haswell-v1");
    assert_eq!(haswell["typename"], "Haswell-x86_64-cpu");
    assert!(def_names.iter().any(|n| n == "Haswell-noTSX-IBRS"));
    let stat = qmp.ok(
        "query-cpu-model-expansion",
        json!({"type": "static", "model": {"name": "host"}}),
    );
    assert_eq!(stat["model"]["name"], "base");
    let props = &stat["model"]["props"];
    assert_eq!(props["hypervisor"], true, "machina sets the hypervisor bit");
    assert_eq!(props["lm"], true, "a 64-bit guest CPU");
    assert!(props["vendor"].as_str().is_some_and(|v| !v.is_empty()));
    // libvirt feeds the static result back for a full expansion.
    let full = qmp.ok(
        "query-cpu-model-expansion",
        json!({"type": "full", "model": stat["model"].clone()}),
    );
    assert_eq!(&full["model"]["props"], props);
    let max = qmp.ok(
        "query-cpu-model-expansion",
        json!({"type": "full", "model": {"name": "max"}}),
    );
    assert_eq!(
        &max["model"]["props"], props,
        "max and host are the same CPUID"
    );
    let r = qmp.execute(
        "query-cpu-model-expansion",
        json!({"type": "full", "model": {"name": "Haswell-v99"}}),
    );
    assert_eq!(r["error"]["class"], "GenericError", "{r}");
    let haswell = qmp.ok(
        "query-cpu-model-expansion",
        json!({"type": "full", "model": {"name": "Haswell"}}),
    );
    assert_eq!(haswell["model"]["props"]["vendor"], "GenuineIntel");
    assert_eq!(haswell["model"]["props"]["family"], 6);
    assert_eq!(haswell["model"]["props"]["model"], 60);
    let mut changed = stat["model"].clone();
    changed["props"]["hypervisor"] = json!(false);
    let r = qmp.execute(
        "query-cpu-model-expansion",
        json!({"type": "full", "model": changed}),
    );
    assert_eq!(r["error"]["class"], "GenericError", "{r}");

    // libvirt only sends what the schema lists, and reads capabilities from it.
    let schema = qmp.ok("query-qmp-schema", Value::Null);
    let commands: Vec<String> = schema
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["meta-type"] == "command")
        .filter_map(|e| e["name"].as_str().map(str::to_string))
        .collect();
    for c in [
        "query-target",
        "query-kvm",
        "qom-list-properties",
        "query-command-line-options",
        "query-migrate-capabilities",
        "migrate-set-capabilities",
        "query-cpu-definitions",
        "query-cpu-model-expansion",
        "query-iothreads",
        "query-chardev",
        "query-hotpluggable-cpus",
        "query-cpus-fast",
        "qom-list",
        "qom-get",
        "query-named-block-nodes",
        "query-block",
        "query-blockstats",
        "query-jobs",
    ] {
        assert!(commands.iter().any(|x| x == c), "{c} in the schema");
    }
    for c in ["query-tpm-models", "query-sev-capabilities"] {
        assert!(!commands.iter().any(|x| x == c), "{c} is not implemented");
    }
    assert!(
        schema_members(&schema, "query-named-block-nodes", "arg-type").contains(&"flat".into())
    );
    let hotplug = schema_members(&schema, "query-hotpluggable-cpus", "ret-type");
    assert!(hotplug.contains(&"props".into()), "{hotplug:?}");
}

/// Wait until `path` has `count` lines containing `needle` (a hang guard, not a timing).
fn wait_for_lines(path: &std::path::Path, needle: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().filter(|l| l.contains(needle)).count() >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {count}x '{needle}' in:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Numbers from query-blockstats of the first device's drive.
fn blockstats(qmp: &mut machina_tests::qmp_client::QmpClient) -> Value {
    let s = qmp.ok("query-blockstats", Value::Null);
    s[0]["stats"].clone()
}

#[test]
fn running_machine_cpus_blocks_and_chardevs() {
    if !require_kvm() {
        return;
    }
    let dir = machina_tests::TempDir::new("libvirt-run");
    let disk = dir.path.join("disk.img");
    std::fs::write(&disk, vec![0u8; 4 << 20]).unwrap();
    let log = dir.path.join("console.log");
    let drive = format!("file={},if=none,id=d0,format=raw", disk.display());
    let chardev = format!("file,id=cf,path={}", log.display());
    let serial_log = dir.path.join("serial.log");
    let serial = format!("file:{}", serial_log.display());
    let vm = start(
        "libvirt-run",
        &[
            "-S",
            "-M",
            "q35",
            "-m",
            "256",
            "-nodefaults",
            "-serial",
            &serial,
            "-smp",
            "2,sockets=2,cores=2,maxcpus=4",
            "-cpu",
            "host",
            "-drive",
            &drive,
            "-device",
            "virtio-blk-pci,drive=d0,id=vd0,bus=pcie.0",
            "-chardev",
            &chardev,
            "-chardev",
            "null,id=spare",
            "-device",
            "virtio-serial-pci,id=vser",
            "-device",
            "virtconsole,chardev=cf,id=con0",
            "-append",
            "machina.test=virtio,powerbutton machina.blk-seed=5",
        ],
    );
    let mut qmp = vm.client();

    // vCPUs: host thread ids of this process, topology props, empty hotplug slots.
    let cpus = qmp.ok("query-cpus-fast", Value::Null);
    let tasks: Vec<i64> = std::fs::read_dir(format!("/proc/{}/task", vm.pid()))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    assert_eq!(cpus.as_array().unwrap().len(), 2, "{cpus}");
    for (i, cpu) in cpus.as_array().unwrap().iter().enumerate() {
        let tid = cpu["thread-id"].as_i64().unwrap();
        assert!(tasks.contains(&tid), "thread-id {tid} of {tasks:?}");
        let comm = std::fs::read_to_string(format!("/proc/{}/task/{tid}/comm", vm.pid())).unwrap();
        // The thread of vCPU i (QEMU names it "CPU i/KVM").
        let comm = comm.trim();
        assert!(
            comm == format!("vcpu{i}") || comm == format!("CPU {i}/KVM"),
            "thread {tid} is {comm}"
        );
        assert_eq!(cpu["props"]["socket-id"], 0);
        assert_eq!(cpu["props"]["core-id"], i);
        assert!(cpu["props"].get("die-id").is_none(), "no dies: {cpu}");
    }
    let slots = qmp.ok("query-hotpluggable-cpus", Value::Null);
    let slots = slots.as_array().unwrap();
    assert_eq!(slots.len(), 4);
    assert_eq!(
        slots[0]["props"],
        json!({"socket-id": 1, "core-id": 1, "thread-id": 0})
    );
    assert_eq!(slots[0]["type"], "host-x86_64-cpu");
    assert_eq!(
        slots.iter().filter(|s| s.get("qom-path").is_some()).count(),
        2
    );

    // The CPU object: its properties agree with the feature words of the same CPUID.
    let path = "/machine/unattached/device[1]";
    let props = names(&qmp.ok("qom-list", json!({ "path": path })), "name");
    assert!(props.iter().any(|p| p == "feature-words"));
    let words = qmp.ok(
        "qom-get",
        json!({"path": path, "property": "feature-words"}),
    );
    let word = |eax: u64, reg: &str| {
        words
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["cpuid-input-eax"] == eax && w["cpuid-register"] == reg)
            .and_then(|w| w["features"].as_u64())
            .unwrap()
    };
    assert_ne!(word(1, "ECX") & (1 << 31), 0, "hypervisor bit");
    let fpu = qmp.ok("qom-get", json!({"path": path, "property": "fpu"}));
    assert_eq!(fpu, json!(word(1, "EDX") & 1 != 0));
    assert_eq!(
        qmp.ok("qom-get", json!({"path": path, "property": "apic-id"})),
        1
    );
    let filtered = qmp.ok(
        "qom-get",
        json!({"path": path, "property": "filtered-features"}),
    );
    assert!(filtered
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w["features"] == 0));
    let r = qmp.execute("qom-get", json!({"path": path, "property": "nope"}));
    assert_eq!(
        r["error"]["desc"],
        "Property 'host-x86_64-cpu.nope' not found"
    );
    let r = qmp.execute("qom-list", json!({"path": "/machine/nope"}));
    assert_eq!(r["error"]["class"], "DeviceNotFound");

    // Devices with ids.
    let peripheral = qmp.ok("qom-list", json!({"path": "/machine/peripheral"}));
    let children: Vec<(String, String)> = peripheral
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (id, ty) in [("vd0", "virtio-blk-pci"), ("vser", "virtio-serial-pci")] {
        assert!(
            children.contains(&(id.to_string(), format!("child<{ty}>"))),
            "{children:?}"
        );
    }

    // Chardevs: the file one has a front end, the spare one has none.
    let chardevs = qmp.ok("query-chardev", Value::Null);
    let find = |label: &str| {
        chardevs
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["label"] == label)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(
        find("cf")["filename"],
        "file",
        "QEMU's name for a file chardev"
    );
    assert_eq!(find("cf")["frontend-open"], true);
    assert_eq!(find("spare")["frontend-open"], false);

    // Block: the drive, its size, and counters that move with the guest's I/O.
    let nodes = qmp.ok("query-named-block-nodes", json!({"flat": true}));
    assert_eq!(nodes[0]["node-name"], "d0");
    assert_eq!(nodes[0]["image"]["virtual-size"], 4 << 20);
    let block = qmp.ok("query-block", Value::Null);
    assert_eq!(block[0]["qdev"], "/machine/peripheral/vd0/virtio-backend");
    let before = blockstats(&mut qmp);
    assert_eq!(before["wr_operations"], 0);
    assert_eq!(before["rd_bytes"], 0);
    qmp.ok("cont", Value::Null);
    // The guest announces the end of its I/O by waiting for the power button.
    wait_for_lines(&serial_log, "powerbutton: waiting", 1);
    let after = blockstats(&mut qmp);
    assert!(after["flush_operations"].as_u64().unwrap() >= 1, "{after}");
    let wr = after["wr_bytes"].as_u64().unwrap();
    assert!(after["wr_operations"].as_u64().unwrap() >= 1, "{after}");
    assert!(wr > 0 && wr.is_multiple_of(512), "{after}");
    assert!(after["rd_operations"].as_u64().unwrap() >= 1, "{after}");
    assert!(after["rd_bytes"].as_u64().unwrap() > 0, "{after}");
    assert!(after["wr_highest_offset"].as_u64().unwrap() > 0);
    // What was counted as written really reached the image.
    let data = std::fs::read(&disk).unwrap();
    assert!(
        data.iter().any(|&b| b != 0),
        "the guest's writes are on disk"
    );

    // A reset rebuilds the vCPU threads (new thread ids, still this process's) and keeps
    // the drive's counters, which grow with the second boot's I/O.
    qmp.ok("system_reset", Value::Null);
    wait_for_lines(&serial_log, "powerbutton: waiting", 2);
    let again = blockstats(&mut qmp);
    for key in [
        "wr_operations",
        "rd_operations",
        "flush_operations",
        "wr_bytes",
        "rd_bytes",
    ] {
        assert_eq!(
            again[key].as_u64().unwrap(),
            2 * after[key].as_u64().unwrap(),
            "{key}: the same I/O again: {after} then {again}"
        );
    }
    let tasks: Vec<i64> = std::fs::read_dir(format!("/proc/{}/task", vm.pid()))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for cpu in qmp.ok("query-cpus-fast", Value::Null).as_array().unwrap() {
        let tid = cpu["thread-id"].as_i64().unwrap();
        assert!(
            tasks.contains(&tid),
            "after reset: thread-id {tid} of {tasks:?}"
        );
    }

    qmp.ok("system_powerdown", Value::Null);
    let mut vm = vm;
    assert_eq!(vm.wait_exit(Duration::from_secs(60)), Some(0));
}

#[test]
fn smp_topology_follows_qemu() {
    if !require_kvm() {
        return;
    }
    // QEMU 7.2's refusals, word for word.
    for (smp, text) in [
        (
            "8,sockets=1,cores=1,threads=1",
            "Invalid CPU topology: product of the hierarchy must match maxcpus: sockets (1) * \
             dies (1) * cores (1) * threads (1) != maxcpus (8)",
        ),
        (
            "2,sockets=3",
            "Invalid CPU topology: product of the hierarchy must match maxcpus: sockets (3) * \
             dies (1) * cores (0) * threads (1) != maxcpus (2)",
        ),
        (
            "2,maxcpus=1",
            "Invalid CPU topology: maxcpus must be equal to or greater than smp: sockets (1) * \
             dies (1) * cores (1) * threads (1) == maxcpus (1) < smp_cpus (2)",
        ),
        ("2,foo=1", "Parameter 'smp.foo' is unexpected"),
    ] {
        let r = boot(&["-M", "q35", "-nodefaults", "-S", "-smp", smp]);
        assert_eq!(r.status, Some(1), "-smp {smp}");
        assert!(r.stderr.contains(text), "-smp {smp}: {}", r.stderr);
    }
    for (cpu, text) in [
        ("Haswell-v99", "unable to find CPU model 'Haswell-v99'"),
        ("max,+nosuch", "Property 'max-x86_64-cpu.nosuch' not found"),
    ] {
        let r = boot(&["-M", "q35", "-nodefaults", "-S", "-cpu", cpu]);
        assert_eq!(r.status, Some(1), "-cpu {cpu}");
        assert!(r.stderr.contains(text), "-cpu {cpu}: {}", r.stderr);
    }

    // What the guest sees: its CPUID levels and the MADT's APIC ids (3 cores take 2 bits,
    // so socket 1 starts at APIC id 4; CPUs beyond `cpus` are listed disabled).
    let r = boot(&[
        "-M",
        "q35",
        "-nodefaults",
        "-serial",
        "stdio",
        "-smp",
        "6,sockets=4,cores=3,maxcpus=12",
        "-append",
        "machina.test=cpuid,acpi",
    ]);
    assert_eq!(r.status, Some(0), "{}", r.stderr);
    let cpuid = r.lines_with("cpuid: ");
    assert_eq!(
        cpuid[..3],
        [
            "cpuid: leaf1 apic_id=0 logical=3 htt=1",
            "cpuid: leaf=0xb level=0 type=1 shift=0 count=1 x2apic_id=0",
            "cpuid: leaf=0xb level=1 type=2 shift=2 count=3 x2apic_id=0",
        ],
        "{}",
        r.stdout
    );
    let madt: Vec<String> = r
        .lines_with("acpi: madt ")
        .iter()
        .map(|l| l.to_string())
        .collect();
    let expected: Vec<String> = [0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14]
        .iter()
        .enumerate()
        .map(|(uid, id)| {
            format!(
                "acpi: madt lapic uid={uid} id={id} enabled={}",
                u8::from(uid < 6)
            )
        })
        .collect();
    assert_eq!(madt, expected);
    let r = boot(&[
        "-M",
        "pc",
        "-nodefaults",
        "-serial",
        "stdio",
        "-smp",
        "4,dies=2,cores=2",
        "-append",
        "machina.test=cpuid",
    ]);
    let cpuid = r.lines_with("cpuid: ");
    assert!(
        cpuid.contains(&"cpuid: leaf=0x1f level=2 type=5 shift=2 count=4 x2apic_id=0"),
        "the die level: {cpuid:?}"
    );

    // 4,sockets=2,cores=2 is 2 sockets of 2 cores; dies appear in the props when given.
    let vm = start(
        "smp",
        &[
            "-S",
            "-M",
            "q35",
            "-nodefaults",
            "-smp",
            "4,sockets=2,cores=2",
            "-cpu",
            "max",
        ],
    );
    let mut qmp = vm.client();
    let cpus = qmp.ok("query-cpus-fast", Value::Null);
    let sockets: Vec<u64> = cpus
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["props"]["socket-id"].as_u64().unwrap())
        .collect();
    assert_eq!(sockets, [0, 0, 1, 1]);
    let apic: Vec<Value> = (0..4)
        .map(|i| {
            qmp.ok(
                "qom-get",
                json!({"path": format!("/machine/unattached/device[{i}]"), "property": "apic-id"}),
            )
        })
        .collect();
    assert_eq!(apic, [json!(0), json!(1), json!(2), json!(3)]);
    drop(qmp);
    drop(vm);

    let vm = start(
        "smp-dies",
        &[
            "-S",
            "-M",
            "q35",
            "-nodefaults",
            "-smp",
            "sockets=1,dies=2,cores=3",
        ],
    );
    let mut qmp = vm.client();
    let cpus = qmp.ok("query-cpus-fast", Value::Null);
    assert_eq!(cpus.as_array().unwrap().len(), 6);
    assert_eq!(
        cpus[4]["props"],
        json!({"socket-id": 0, "die-id": 1, "core-id": 1, "thread-id": 0})
    );
    // Cores take 2 bits of the APIC id, so die 1 starts at 4.
    let apic = qmp.ok(
        "qom-get",
        json!({"path": "/machine/unattached/device[4]", "property": "apic-id"}),
    );
    assert_eq!(apic, 5);
}

#[test]
fn blockdev_nodes_as_libvirt_writes_them() {
    if !require_kvm() {
        return;
    }
    let dir = machina_tests::TempDir::new("libvirt-blockdev");
    let disk = dir.path.join("disk.img");
    std::fs::write(&disk, vec![0u8; 2 << 20]).unwrap();
    let storage = format!(
        r#"{{"driver":"file","filename":"{}","node-name":"libvirt-1-storage"}}"#,
        disk.display()
    );
    let vm = start(
        "libvirt-blockdev",
        &[
            "-S",
            "-M",
            "q35",
            "-nodefaults",
            "-blockdev",
            &storage,
            "-blockdev",
            r#"{"node-name":"libvirt-1-format","read-only":false,"driver":"raw","file":"libvirt-1-storage"}"#,
            "-device",
            "virtio-blk-pci,drive=libvirt-1-format,id=virtio-disk0",
        ],
    );
    let mut qmp = vm.client();
    let nodes = qmp.ok("query-named-block-nodes", json!({"flat": true}));
    let drv = |name: &str| {
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node-name"] == name)
            .map(|n| n["drv"].clone())
    };
    assert_eq!(drv("libvirt-1-format"), Some(json!("raw")), "{nodes}");
    assert_eq!(drv("libvirt-1-storage"), Some(json!("file")), "{nodes}");
    assert_eq!(nodes[0]["image"]["virtual-size"], 2 << 20);
    let block = qmp.ok("query-block", Value::Null);
    assert_eq!(block.as_array().unwrap().len(), 1, "{block}");
    assert_eq!(block[0]["inserted"]["node-name"], "libvirt-1-format");
    assert_eq!(
        block[0]["qdev"],
        "/machine/peripheral/virtio-disk0/virtio-backend"
    );
    let stats = qmp.ok("query-blockstats", json!({"query-nodes": true}));
    assert_eq!(stats.as_array().unwrap().len(), 2, "{stats}");
}

/// Issue 9: types machina builds only as a PCI header (for QEMU's guest-visible layout) and
/// properties nothing in machina honours are absent from introspection, so libvirt does not
/// put a disk on a virtio-scsi-pci that would hang the guest; `-device` still takes them.
#[test]
fn introspection_lists_only_what_machina_models() {
    if !require_kvm() {
        return;
    }
    let vm = start(
        "modelled",
        &[
            "-S",
            "-nodefaults",
            "-machine",
            "q35",
            "-device",
            "virtio-scsi-pci,id=scsi0",
            "-device",
            "VGA,id=video0",
        ],
    );
    let mut qmp = vm.client();

    // The header-only functions are on the bus, as in QEMU.
    let pci = qmp.ok("query-pci", Value::Null);
    let ids: Vec<String> = pci[0]["devices"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .filter_map(|d| d["qdev_id"].as_str().map(str::to_string))
        .collect();
    assert!(ids.iter().any(|i| i == "scsi0"), "{pci}");
    assert!(ids.iter().any(|i| i == "video0"), "{pci}");

    let header_only = [
        "virtio-scsi-pci",
        "virtio-gpu-pci",
        "virtio-keyboard-pci",
        "VGA",
        "e1000",
        "piix3-usb-uhci",
        "ich9-usb-ehci1",
        "isa-parallel",
    ];
    let modelled = [
        "virtio-blk-pci",
        "virtio-net-pci",
        "virtio-rng-pci",
        "virtio-serial-pci",
        "virtio-balloon-pci",
        "e1000e",
        "pcie-root-port",
        "ich9-ahci",
        "isa-serial",
    ];
    for args in [
        Value::Null,
        json!({"implements": "device", "abstract": true}),
    ] {
        let types = names(&qmp.ok("qom-list-types", args), "name");
        for t in header_only {
            assert!(!types.iter().any(|x| x == t), "{t} listed: {types:?}");
        }
        for t in modelled {
            assert!(types.iter().any(|x| x == t), "{t} missing: {types:?}");
        }
    }
    for t in header_only {
        let r = qmp.execute("device-list-properties", json!({ "typename": t }));
        assert_eq!(r["error"]["class"], "DeviceNotFound", "{t}: {r}");
        assert_eq!(r["error"]["desc"], format!("Device '{t}' not found"));
        let r = qmp.execute("qom-list-properties", json!({ "typename": t }));
        assert_eq!(r["error"]["class"], "DeviceNotFound", "{t}: {r}");
    }

    // Properties machina does not act on are left out; those it acts on stay.
    let props = |qmp: &mut machina_tests::qmp_client::QmpClient, cmd: &str, t: &str| {
        names(&qmp.ok(cmd, json!({ "typename": t })), "name")
    };
    for cmd in ["device-list-properties", "qom-list-properties"] {
        let net = props(&mut qmp, cmd, "virtio-net-pci");
        for p in ["rss", "hash", "acpi-index", "host_uso", "rx_queue_size"] {
            assert!(!net.iter().any(|x| x == p), "{cmd} virtio-net-pci {p}");
        }
        for p in [
            "mac",
            "netdev",
            "addr",
            "csum",
            "mq",
            "mrg_rxbuf",
            "ctrl_vq",
        ] {
            assert!(net.iter().any(|x| x == p), "{cmd} virtio-net-pci {p}");
        }
        let blk = props(&mut qmp, cmd, "virtio-blk-pci");
        assert!(blk.iter().any(|x| x == "queue-size"), "{cmd} {blk:?}");
        let port = props(&mut qmp, cmd, "pcie-root-port");
        assert!(!port.iter().any(|x| x == "hotplug"), "{cmd} {port:?}");
        assert!(port.iter().any(|x| x == "chassis"), "{cmd} {port:?}");
    }
    for t in ["PIIX4_PM", "ICH9-LPC"] {
        let pm = props(&mut qmp, "qom-list-properties", t);
        for p in ["disable_s3", "disable_s4", "acpi-root-pci-hotplug"] {
            assert!(!pm.iter().any(|x| x == p), "{t} {p}: {pm:?}");
        }
    }

    // Machine options that accept no value name something machina lacks.
    let types = names(&qmp.ok("qom-list-types", Value::Null), "name");
    let q35 = types
        .iter()
        .find(|t| t.starts_with("pc-q35-") && t.ends_with("-machine"))
        .expect("a q35 machine type");
    let opts = props(&mut qmp, "qom-list-properties", q35);
    assert!(opts.iter().any(|x| x == "usb"), "{opts:?}");
    for o in ["confidential-guest-support", "memory-encryption"] {
        assert!(!opts.iter().any(|x| x == o), "{o}: {opts:?}");
    }
    // System flash is modelled: libvirt sees pflash0/pflash1 and uses -blockdev for it.
    for o in ["pflash0", "pflash1"] {
        assert!(opts.iter().any(|x| x == o), "{o}: {opts:?}");
    }
}
