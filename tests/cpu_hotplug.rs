//! vCPU hot-plug on a running machine (issue 11), on pc and q35 with `-smp 1,maxcpus=4`:
//! `device_add` of the machine's CPU type into a free query-hotpluggable-cpus slot, the
//! announcement through the ACPI CPU hot-plug block (GPE0 bit 2; the block's "next CPU
//! with event" command, flags and APIC id), the new vCPU thread (/proc and
//! query-cpus-fast), `device_del` and the guest's eject (DEVICE_DELETED, the thread
//! gone), a second add into the freed slot, QEMU 7.2's refusal texts; then the tiny guest
//! doing the guest's side for real: it reads the new CPU's APIC id, starts it with
//! INIT/SIPI and ejects it on the removal request.

mod common;

use common::{machina, require_kvm};
use machina_tests::qmp_client::QmpClient;
use machina_tests::qtest_client::Qtest;
use machina_tests::TempDir;
use serde_json::{json, Value};
use std::time::Duration;

const PIIX4_CPUHP: u64 = 0xaf00;
const ICH9_CPUHP: u64 = 0x0cd8;

struct Machine {
    qtest: Qtest,
    qmp: QmpClient,
    _dir: TempDir,
}

impl Machine {
    fn start(machine: &str) -> Machine {
        Machine::start_smp(machine, "1,maxcpus=4")
    }

    fn start_smp(machine: &str, smp: &str) -> Machine {
        Machine::start_with(machine, smp, &[])
    }

    fn start_with(machine: &str, smp: &str, extra: &[&str]) -> Machine {
        let tmp = TempDir::new("cpu-hotplug");
        let sock = tmp.path.join("qmp.sock");
        let args: Vec<String> = [
            "-M",
            machine,
            "-nodefaults",
            "-smp",
            smp,
            "-qmp",
            &format!("unix:{},server=on,wait=off", sock.display()),
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
        let qtest = Qtest::start(&machina(), &args);
        let mut qmp = QmpClient::connect(&sock, Duration::from_secs(20));
        qmp.ok("qmp_capabilities", Value::Null);
        Machine {
            qtest,
            qmp,
            _dir: tmp,
        }
    }

    /// Names of the process's threads (QEMU's "CPU N/KVM" for vCPUs).
    fn threads(&self) -> Vec<(i64, String)> {
        let dir = format!("/proc/{}/task", self.qtest.pid());
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).expect("task dir").flatten() {
            let tid: i64 = entry.file_name().to_string_lossy().parse().unwrap_or(0);
            let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            out.push((tid, name.trim().to_string()));
        }
        out
    }

    fn vcpu_tid(&self, index: u32) -> Option<i64> {
        let want = format!("CPU {index}/KVM");
        self.threads()
            .into_iter()
            .find(|(_, n)| *n == want)
            .map(|(t, _)| t)
    }

    fn cpu_type(&mut self) -> String {
        let slots = self.qmp.ok("query-hotpluggable-cpus", Value::Null);
        slots[0]["type"].as_str().expect("type").to_string()
    }

    fn outb(&mut self, port: u64, v: u64) {
        assert_eq!(self.qtest.cmd(&format!("outb {port:#x} {v:#x}")), "OK");
    }

    fn outl(&mut self, port: u64, v: u64) {
        assert_eq!(self.qtest.cmd(&format!("outl {port:#x} {v:#x}")), "OK");
    }

    /// CSCN's scan: the CPU with an event, its flags and APIC id.
    fn next_event(&mut self, base: u64) -> (u64, u64, u64) {
        self.outl(base, 0);
        self.outb(base + 5, 0);
        let sel = self.qtest.value(&format!("inl {:#x}", base + 8));
        self.outl(base, sel);
        let flags = self.qtest.value(&format!("inb {:#x}", base + 4));
        self.outb(base + 5, 3);
        let apic = self.qtest.value(&format!("inl {:#x}", base + 8));
        (sel, flags, apic)
    }

    fn deleted(&self) -> Vec<Value> {
        self.qmp
            .events
            .iter()
            .filter(|e| e["event"] == "DEVICE_DELETED")
            .map(|e| e["data"].clone())
            .collect()
    }
}

fn cpu(ty: &str, core: u32, id: &str) -> Value {
    json!({"driver": ty, "socket-id": 0, "core-id": core, "thread-id": 0, "id": id})
}

fn add_remove_readd(machine: &str, base: u64) {
    let mut m = Machine::start(machine);
    let ty = m.cpu_type();
    let slots = m.qmp.ok("query-hotpluggable-cpus", Value::Null);
    assert_eq!(slots.as_array().map(Vec::len), Some(4), "{slots}");
    assert_eq!(
        slots
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s.get("qom-path").is_some())
            .count(),
        1,
        "one present CPU: {slots}"
    );
    assert!(m.vcpu_tid(2).is_none());
    let threads_before = m.threads().len();
    // What the DSDT's code does at boot: leave QEMU's legacy CPU hot-plug mode.
    m.outb(base, 0);

    for round in 0..3 {
        m.qmp.ok("device_add", cpu(&ty, 2, "cpu2"));
        let tid = m.vcpu_tid(2).expect("a CPU 2/KVM thread");
        let fast = m.qmp.ok("query-cpus-fast", Value::Null);
        let entry = fast
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["cpu-index"] == 2)
            .cloned()
            .unwrap_or_else(|| panic!("cpu 2 in {fast}"));
        assert_eq!(entry["thread-id"], tid, "{entry}");
        assert_eq!(entry["qom-path"], "/machine/peripheral/cpu2");
        let slots = m.qmp.ok("query-hotpluggable-cpus", Value::Null);
        let slot = slots
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["props"]["core-id"] == 2)
            .cloned()
            .unwrap();
        assert_eq!(slot["qom-path"], "/machine/peripheral/cpu2", "{slots}");

        // The announcement: the block names CPU 2, present and inserting, APIC id 2.
        let (sel, flags, apic) = m.next_event(base);
        assert_eq!((sel, flags & 3, apic), (2, 3, 2), "round {round}");
        m.outb(base + 4, 2);
        assert_eq!(m.qtest.value(&format!("inb {:#x}", base + 4)) & 3, 1);

        assert_eq!(
            m.qmp.error("device_add", cpu(&ty, 2, "again")),
            "CPU[2] with APIC ID 2 exists"
        );

        m.qmp.ok("device_del", json!({"id": "cpu2"}));
        let (sel, flags, _) = m.next_event(base);
        assert_eq!((sel, flags & 5), (2, 5), "remove requested");
        assert!(m.deleted().is_empty(), "nothing deleted before the eject");
        assert!(m.vcpu_tid(2).is_some());
        // The guest's _EJ0.
        m.outb(base + 4, 4);
        m.outb(base + 4, 8);
        let ev = loop {
            let e = m.qmp.wait_event("DEVICE_DELETED");
            if e["data"]["device"] == "cpu2" {
                break e;
            }
        };
        assert_eq!(ev["data"]["path"], "/machine/peripheral/cpu2");
        m.qmp.events.clear();
        assert!(m.vcpu_tid(2).is_none(), "the ejected vCPU's thread is gone");
        let fast = m.qmp.ok("query-cpus-fast", Value::Null);
        assert_eq!(fast.as_array().map(Vec::len), Some(1), "{fast}");
        assert_eq!(
            m.threads().len(),
            threads_before,
            "thread count back to where it was (round {round})"
        );
    }

    // An anonymous CPU in another slot.
    m.qmp.ok(
        "device_add",
        json!({"driver": ty, "socket-id": 0, "core-id": 3, "thread-id": 0}),
    );
    let fast = m.qmp.ok("query-cpus-fast", Value::Null);
    assert!(
        fast.as_array()
            .unwrap()
            .iter()
            .any(|c| c["qom-path"] == "/machine/peripheral-anon/device[3]"),
        "{fast}"
    );
    let (sel, _, apic) = m.next_event(base);
    assert_eq!((sel, apic), (3, 3));
}

#[test]
fn pc_cpu_add_announce_eject_and_readd() {
    if !require_kvm() {
        return;
    }
    add_remove_readd("pc", PIIX4_CPUHP);
}

#[test]
fn q35_cpu_add_announce_eject_and_readd() {
    if !require_kvm() {
        return;
    }
    add_remove_readd("q35", ICH9_CPUHP);
}

/// What QEMU's cpu-plug-test does: every free slot of a 1x3x2 topology filled by
/// device_add with the props query-hotpluggable-cpus gives, each CPU with its own thread
/// and the APIC id the topology gives its slot.
#[test]
fn every_free_slot_of_a_smt_topology_takes_a_cpu() {
    if !require_kvm() {
        return;
    }
    for machine in ["pc", "q35"] {
        let mut m = Machine::start_smp(machine, "1,sockets=1,cores=3,threads=2,maxcpus=6");
        m.outb(
            if machine == "pc" {
                PIIX4_CPUHP
            } else {
                ICH9_CPUHP
            },
            0,
        );
        let slots = m.qmp.ok("query-hotpluggable-cpus", Value::Null);
        let free: Vec<Value> = slots
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s.get("qom-path").is_none())
            .cloned()
            .collect();
        assert_eq!(free.len(), 5, "{slots}");
        for slot in &free {
            let mut dev = slot["props"].clone();
            dev["driver"] = slot["type"].clone();
            m.qmp.ok("device_add", dev);
        }
        let fast = m.qmp.ok("query-cpus-fast", Value::Null);
        assert_eq!(fast.as_array().map(Vec::len), Some(6), "{fast}");
        for index in 0..6u32 {
            assert!(m.vcpu_tid(index).is_some(), "CPU {index}/KVM on {machine}");
        }
        // Core 2, thread 1 is CPU 5; threads take 1 bit, cores 2: APIC id (2 << 1) | 1.
        let base = if machine == "pc" {
            PIIX4_CPUHP
        } else {
            ICH9_CPUHP
        };
        m.outl(base, 5);
        m.outb(base + 5, 3);
        assert_eq!(m.qtest.value(&format!("inl {:#x}", base + 8)), 5);
        assert!(slots
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["type"] == slots[0]["type"]));
    }
}

/// QEMU's legacy CPU hot-plug mode, where both chipsets start: a plug sets the CPU's bit in
/// the present bitmap and raises GPE0 bit 2, unplug is refused, and a 0 written at the
/// block's first byte switches to the modern interface, where the CPU is present.
#[test]
fn pc_legacy_mode_gpe0_bit_2_and_the_switch_to_modern() {
    if !require_kvm() {
        return;
    }
    let mut m = Machine::start("pc");
    let ty = m.cpu_type();
    m.outb(0xafe2, 4);
    assert_eq!(m.qtest.value("inb 0xafe0") & 4, 0);
    assert_eq!(m.qtest.value("inb 0xaf00"), 0b1, "the boot CPU's bit");
    m.qmp.ok("device_add", cpu(&ty, 1, "c1"));
    assert_eq!(m.qtest.value("inb 0xafe0") & 4, 4, "GPE0 status bit 2");
    assert_eq!(
        m.qtest.value("inb 0xaf00"),
        0b11,
        "APIC ids 0 and 1 present"
    );
    assert_eq!(
        m.qmp.error("device_del", json!({"id": "c1"})),
        format!("acpi: device unplug request for not supported device type: {ty}")
    );
    m.outb(0xaf00, 0);
    m.outl(0xaf00, 1);
    assert_eq!(m.qtest.value("inb 0xaf04"), 1, "CPU 1 present, no event");
    m.qmp
        .ok("device_del", json!({"id": "/machine/peripheral/c1"}));
    assert_eq!(m.qtest.value("inb 0xaf04"), 5, "CPU 1 removal requested");
}

#[test]
fn refusals_have_qemus_texts() {
    if !require_kvm() {
        return;
    }
    let mut m = Machine::start("q35");
    let ty = m.cpu_type();
    let other = if ty == "host-x86_64-cpu" {
        "max-x86_64-cpu"
    } else {
        "host-x86_64-cpu"
    };
    assert_eq!(
        m.qmp.error("device_add", cpu(other, 1, "x")),
        format!("Invalid CPU type, expected cpu type: '{ty}'")
    );
    assert_eq!(
        m.qmp.error(
            "device_add",
            json!({"driver": ty, "core-id": 1, "thread-id": 0})
        ),
        "CPU socket-id is not set"
    );
    assert_eq!(
        m.qmp.error(
            "device_add",
            json!({"driver": ty, "socket-id": 0, "thread-id": 0})
        ),
        "CPU core-id is not set"
    );
    assert_eq!(
        m.qmp.error("device_add", cpu(&ty, 4, "x")),
        "Invalid CPU core-id: 4 must be in range 0:3"
    );
    assert_eq!(
        m.qmp.error(
            "device_add",
            json!({"driver": ty, "socket-id": 1, "core-id": 0, "thread-id": 0})
        ),
        "Invalid CPU socket-id: 1 must be in range 0:0"
    );
    assert_eq!(
        m.qmp.error(
            "device_add",
            json!({"driver": ty, "socket-id": 0, "core-id": 0, "thread-id": 1})
        ),
        "Invalid CPU thread-id: 1 must be in range 0:0"
    );
    assert_eq!(
        m.qmp.error("device_add", cpu(&ty, 0, "x")),
        "CPU[0] with APIC ID 0 exists"
    );
    m.qmp.ok("device_add", cpu(&ty, 1, "c1"));
    assert_eq!(
        m.qmp.error("device_add", cpu(&ty, 2, "c1")),
        "Duplicate device ID 'c1'"
    );
    assert_eq!(
        m.qmp.error(
            "device_add",
            json!({"driver": ty, "socket-id": 0, "core-id": "x", "thread-id": 0})
        ),
        "Parameter 'core-id' expects integer"
    );
    assert_eq!(
        m.qmp
            .error("device_del", json!({"id": "/machine/unattached/device[0]"})),
        "Boot CPU is unpluggable"
    );
    m.outb(ICH9_CPUHP, 0);
    m.qmp.ok("device_del", json!({"id": "c1"}));
    // QEMU's repeat window is of virtual time, which stands still while the machine is
    // stopped: a repeat then is always refused.
    m.qmp.ok("stop", Value::Null);
    assert_eq!(
        m.qmp.error("device_del", json!({"id": "c1"})),
        "Device c1 is already in the process of unplug"
    );
    // Nothing was half-built by the refusals: one hot-added CPU.
    let fast = m.qmp.ok("query-cpus-fast", Value::Null);
    assert_eq!(fast.as_array().map(Vec::len), Some(2), "{fast}");
}

/// The console's whole lines once `line` appeared `count` times.
fn wait_console(path: &std::path::Path, line: &str, count: usize) -> String {
    machina_tests::process::wait_console(path, line, count, Duration::from_secs(180))
}

/// The tiny guest's `cpu-hotplug` mode: twice, it waits for GPE0 bit 2, finds the new CPU
/// through the block, reports its APIC id, starts it with INIT/SIPI (its trampoline writes
/// a marker), and on the removal request ejects it, which gives DEVICE_DELETED.
fn guest_round_trip(machine: &str, base: u64) {
    let dir = TempDir::new("cpu-hotplug-guest");
    let console = dir.path.join("console");
    let args: Vec<String> = [
        "-M",
        machine,
        "-nodefaults",
        "-smp",
        "1,sockets=1,cores=4,threads=1,maxcpus=4",
        "-serial",
        &format!("file:{}", console.display()),
        "-append",
        &format!("machina.test=cpu-hotplug machina.cpuhp={base:#x} machina.cpuhp-rounds=2"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut vm = machina_tests::process::MachinaProcess::start(&machina(), "cpu-hotplug", &args);
    let mut qmp = vm.client();
    wait_console(&console, "cpuhp: waiting", 1);
    let ty = qmp.ok("query-hotpluggable-cpus", Value::Null)[0]["type"]
        .as_str()
        .expect("type")
        .to_string();
    for round in 1..=2 {
        qmp.ok("device_add", cpu(&ty, 3, "vcpu3"));
        let text = wait_console(&console, "cpuhp: ap apic-id=", round);
        assert_eq!(
            text.matches("cpuhp: inserted round=").count(),
            round,
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "cpuhp: inserted round={} cpu=3 apic-id=3 enabled=1",
                round - 1
            )),
            "{text}"
        );
        assert_eq!(
            text.matches("cpuhp: ap apic-id=3 started=1").count(),
            round,
            "the new vCPU ran its trampoline:\n{text}"
        );
        qmp.ok("device_del", json!({"id": "vcpu3"}));
        while qmp.wait_event("DEVICE_DELETED")["data"]["device"] != "vcpu3" {}
        qmp.events.clear();
        let text = wait_console(&console, "cpuhp: ejected cpu=3 enabled=0", round);
        assert!(text.contains("cpuhp: remove request cpu=3"), "{text}");
    }
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    assert_eq!(vm.wait_exit(Duration::from_secs(60)), Some(0), "{text}");
}

#[test]
fn guest_sees_starts_and_ejects_a_hot_added_cpu_on_pc() {
    if !require_kvm() {
        return;
    }
    guest_round_trip("pc", PIIX4_CPUHP);
}

#[test]
fn guest_sees_starts_and_ejects_a_hot_added_cpu_on_q35() {
    if !require_kvm() {
        return;
    }
    guest_round_trip("q35", ICH9_CPUHP);
}

/// A CPU added at run time stays over a system reset, as in QEMU: the rebuilt machine has
/// its vCPU thread and its slot present (without a new insert event).
#[test]
fn a_hot_added_cpu_survives_a_reset() {
    if !require_kvm() {
        return;
    }
    let mut m = Machine::start("q35");
    let ty = m.cpu_type();
    m.outb(ICH9_CPUHP, 0);
    m.qmp.ok("device_add", cpu(&ty, 1, "c1"));
    let before = m.vcpu_tid(1).expect("CPU 1/KVM");
    m.qmp.ok("system_reset", Value::Null);
    let after = m.vcpu_tid(1).expect("CPU 1/KVM after the reset");
    assert_ne!(before, after, "a new vCPU thread for the rebuilt machine");
    let fast = m.qmp.ok("query-cpus-fast", Value::Null);
    let entry = fast
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cpu-index"] == 1)
        .cloned()
        .unwrap_or_else(|| panic!("cpu 1 in {fast}"));
    assert_eq!(entry["thread-id"], after);
    assert_eq!(entry["qom-path"], "/machine/peripheral/c1");
    assert_eq!(
        m.threads().iter().filter(|(_, n)| n == "CPU 1/KVM").count(),
        1
    );
    m.outb(ICH9_CPUHP, 0);
    m.outl(ICH9_CPUHP, 1);
    assert_eq!(m.qtest.value("inb 0xcdc"), 1, "present, no insert event");
    m.qmp.ok("device_del", json!({"id": "c1"}));
    m.outb(ICH9_CPUHP + 4, 8);
    while m.qmp.wait_event("DEVICE_DELETED")["data"]["device"] != "c1" {}
}

/// With -S the machine is built and stopped: QEMU accepts a CPU then, and so does machina
/// (the vCPU waits at the gate with the others until `cont`).
#[test]
fn a_cpu_can_be_added_before_cont_with_dash_s() {
    if !require_kvm() {
        return;
    }
    let mut m = Machine::start_with("pc", "1,maxcpus=2", &["-S"]);
    let status = m.qmp.ok("query-status", Value::Null);
    assert_eq!(status["status"], "prelaunch", "{status}");
    let ty = m.cpu_type();
    m.qmp.ok("device_add", cpu(&ty, 1, "c1"));
    assert!(m.vcpu_tid(1).is_some());
    let fast = m.qmp.ok("query-cpus-fast", Value::Null);
    assert_eq!(fast.as_array().map(Vec::len), Some(2), "{fast}");
    assert_eq!(
        m.qtest.value("inb 0xaf00"),
        0b11,
        "present in the legacy bitmap"
    );
}
