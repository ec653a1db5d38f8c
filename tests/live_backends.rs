//! Backends on a running machine (issue 11, "live backends"): `blockdev-add`/`blockdev-del`,
//! `chardev-add`/`chardev-remove`, `object-add`/`object-del` after start, with QEMU 7.2's
//! in-use refusals (texts checked against Debian's qemu-system-x86_64 7.2), and a
//! device_del'd virtio-blk giving its node back so that blockdev-del then succeeds and the
//! image is closed (fd count). The guest's eject is played through qtest (ACPI PCI hot-plug
//! registers of PIIX4), as tests/hotplug.rs does.

mod common;

use common::{machina, require_kvm};
use machina_tests::qmp_client::QmpClient;
use machina_tests::qtest_client::Qtest;
use machina_tests::TempDir;
use serde_json::{json, Value};
use std::time::Duration;

struct Machine {
    qtest: Qtest,
    qmp: QmpClient,
    dir: TempDir,
}

impl Machine {
    fn start(args: &[&str]) -> Machine {
        let dir = TempDir::new("live-backends");
        let f = std::fs::File::create(dir.path.join("disk")).expect("disk");
        f.set_len(1 << 20).expect("size");
        let sock = dir.path.join("qmp.sock");
        let mut full: Vec<String> = vec![
            "-nodefaults".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", sock.display()),
        ];
        full.extend(args.iter().map(|s| s.to_string()));
        let qtest = Qtest::start(&machina(), &full);
        let mut qmp = QmpClient::connect(&sock, Duration::from_secs(20));
        qmp.ok("qmp_capabilities", Value::Null);
        Machine { qtest, qmp, dir }
    }

    fn disk(&self) -> String {
        self.dir.path.join("disk").display().to_string()
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.qtest.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.qtest.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Whether the process has `path` open.
    fn has_open(&self, path: &str) -> bool {
        std::fs::read_dir(format!("/proc/{}/fd", self.qtest.pid()))
            .map(|d| {
                d.flatten().any(|e| {
                    std::fs::read_link(e.path()).is_ok_and(|l| l.display().to_string() == path)
                })
            })
            .unwrap_or(false)
    }

    fn node_names(&mut self) -> Vec<String> {
        let nodes = self.qmp.ok("query-named-block-nodes", Value::Null);
        nodes
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n["node-name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn chardev_labels(&mut self) -> Vec<String> {
        let list = self.qmp.ok("query-chardev", Value::Null);
        list.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["label"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// (slot) of `id` on pci.0 in query-pci.
    fn slot_of(&mut self, id: &str) -> Option<u64> {
        let pci = self.qmp.ok("query-pci", Value::Null);
        pci[0]["devices"]
            .as_array()?
            .iter()
            .find(|d| d["qdev_id"] == id)
            .and_then(|d| d["slot"].as_u64())
    }

    /// device_del, then the guest's ACPI _EJ0 on pci.0 (PIIX4 at 0xae00), then the event.
    fn unplug(&mut self, id: &str) {
        let slot = self.slot_of(id).expect("device on pci.0");
        self.qmp.ok("device_del", json!({ "id": id }));
        assert_eq!(self.qtest.cmd("outl 0xae10 0x0"), "OK");
        assert_eq!(
            self.qtest.cmd(&format!("outl 0xae08 {:#x}", 1u64 << slot)),
            "OK"
        );
        while self.qmp.wait_event("DEVICE_DELETED")["data"]["device"] != id {}
    }
}

#[test]
fn blockdev_add_use_unplug_and_del_on_a_running_machine() {
    if !require_kvm() {
        return;
    }
    let mut m = Machine::start(&["-machine", "pc"]);
    let disk = m.disk();
    let fds_before = m.fds();
    // libvirt's pair: a file (protocol) node and a raw (format) node over it.
    m.qmp.ok(
        "blockdev-add",
        json!({"driver": "file", "filename": disk, "node-name": "s1"}),
    );
    m.qmp.ok(
        "blockdev-add",
        json!({"driver": "raw", "file": "s1", "node-name": "f1"}),
    );
    assert_eq!(
        m.qmp.error(
            "blockdev-add",
            json!({"driver": "file", "filename": disk, "node-name": "s1"})
        ),
        "Duplicate nodes with node-name='s1'"
    );
    assert_eq!(
        m.qmp.error("blockdev-del", json!({"node-name": "nope"})),
        "Failed to find node with node-name='nope'"
    );
    let names = m.node_names();
    assert!(
        names.contains(&"s1".into()) && names.contains(&"f1".into()),
        "{names:?}"
    );

    m.qmp.ok(
        "device_add",
        json!({"driver": "virtio-blk-pci", "id": "hd", "drive": "f1"}),
    );
    assert!(m.has_open(&disk), "the device opened the image");
    let busy = [
        ("f1", "Node f1 is in use"),
        ("s1", "Block device s1 is in use"),
    ];
    for (node, text) in busy {
        assert_eq!(
            m.qmp.error("blockdev-del", json!({"node-name": node})),
            text
        );
    }
    // Asked to go but not yet ejected by the guest: still in use.
    let slot = m.slot_of("hd").expect("hd on pci.0");
    m.qmp.ok("device_del", json!({"id": "hd"}));
    assert_eq!(
        m.qmp.error("blockdev-del", json!({"node-name": "f1"})),
        "Node f1 is in use"
    );
    assert_eq!(m.qtest.cmd("outl 0xae10 0x0"), "OK");
    assert_eq!(
        m.qtest.cmd(&format!("outl 0xae08 {:#x}", 1u64 << slot)),
        "OK"
    );
    while m.qmp.wait_event("DEVICE_DELETED")["data"]["device"] != "hd" {}

    // The device gave the node back: the format node goes, then the file node under it.
    assert_eq!(
        m.qmp.error("blockdev-del", json!({"node-name": "s1"})),
        "Block device s1 is in use"
    );
    m.qmp.ok("blockdev-del", json!({"node-name": "f1"}));
    m.qmp.ok("blockdev-del", json!({"node-name": "s1"}));
    let names = m.node_names();
    assert!(!names.iter().any(|n| n == "s1" || n == "f1"), "{names:?}");
    assert!(!m.has_open(&disk), "the image is closed");
    assert_eq!(m.fds(), fds_before, "fds back to where they were");

    // The names are free again, and a second device uses the re-added node.
    m.qmp.ok(
        "blockdev-add",
        json!({"driver": "raw", "node-name": "f1",
               "file": {"driver": "file", "filename": disk}}),
    );
    m.qmp.ok(
        "device_add",
        json!({"driver": "virtio-blk-pci", "id": "hd2", "drive": "f1"}),
    );
    m.unplug("hd2");
    m.qmp.ok("blockdev-del", json!({"node-name": "f1"}));
    assert_eq!(m.fds(), fds_before);
}

/// drive_del-test's blockdev-add: a raw node with an inline null-co file, on a running
/// machine.
#[test]
fn blockdev_add_of_an_inline_null_co_file_after_start() {
    if !require_kvm() {
        return;
    }
    let mut m = Machine::start(&["-machine", "pc"]);
    m.qmp.ok(
        "blockdev-add",
        json!({"driver": "raw", "node-name": "drive0",
               "file": {"driver": "null-co", "read-zeroes": true}}),
    );
    assert!(m.node_names().contains(&"drive0".into()));
    m.qmp.ok(
        "device_add",
        json!({"driver": "virtio-blk-pci", "id": "dev0", "drive": "drive0"}),
    );
    m.unplug("dev0");
    // The node stays (drive_del-test: "it doesn't go away") until blockdev-del.
    assert!(m.node_names().contains(&"drive0".into()));
    m.qmp.ok("blockdev-del", json!({"node-name": "drive0"}));
    assert!(!m.node_names().contains(&"drive0".into()));
}

#[test]
fn chardev_add_and_remove_on_a_running_machine() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("live-chardev");
    let mon = dir.path.join("mon.sock");
    let mut m = Machine::start(&[
        "-machine",
        "pc",
        "-chardev",
        "null,id=c0",
        "-device",
        "isa-serial,chardev=c0",
        "-chardev",
        &format!("socket,id=mon0,path={},server=on,wait=off", mon.display()),
        "-mon",
        "chardev=mon0,mode=control",
    ]);
    for busy in ["c0", "mon0"] {
        assert_eq!(
            m.qmp.error("chardev-remove", json!({"id": busy})),
            format!("Chardev '{busy}' is busy")
        );
    }
    let null = json!({"id": "c1", "backend": {"type": "null", "data": {}}});
    m.qmp.ok("chardev-add", null.clone());
    assert_eq!(
        m.qmp.error("chardev-add", null),
        "Chardev with id 'c1' already exists"
    );
    assert!(m.chardev_labels().contains(&"c1".into()));
    m.qmp.ok("chardev-remove", json!({"id": "c1"}));
    assert!(!m.chardev_labels().contains(&"c1".into()));
    assert_eq!(
        m.qmp.error("chardev-remove", json!({"id": "c1"})),
        "Chardev 'c1' not found"
    );
    // The id is free again.
    m.qmp.ok(
        "chardev-add",
        json!({"id": "c1", "backend": {"type": "null", "data": {}}}),
    );
    assert!(m.chardev_labels().contains(&"c0".into()), "c0 stayed");
}

#[test]
fn object_add_and_del_on_a_running_machine() {
    if !require_kvm() {
        return;
    }
    let mut m = Machine::start(&["-machine", "pc"]);
    let rng = json!({"qom-type": "rng-random", "id": "r1", "filename": "/dev/urandom"});
    m.qmp.ok("object-add", rng.clone());
    assert_eq!(
        m.qmp.error("object-add", rng),
        "attempt to add duplicate property 'r1' to object (type 'container')"
    );
    m.qmp.ok(
        "device_add",
        json!({"driver": "virtio-rng-pci", "id": "rng", "rng": "r1"}),
    );
    // In use by the device (machina rebuilds devices from their objects at reset; QEMU 7.2
    // would delete it and keep it alive through the device's reference).
    assert_eq!(
        m.qmp.error("object-del", json!({"id": "r1"})),
        "object 'r1' is in use, can not be deleted"
    );
    m.qmp.ok("system_reset", Value::Null);
    assert!(m.slot_of("rng").is_some(), "the device survives a reset");
    m.unplug("rng");
    m.qmp.ok("object-del", json!({"id": "r1"}));
    assert_eq!(
        m.qmp.error("object-del", json!({"id": "r1"})),
        "object 'r1' not found"
    );

    let threads = m.threads();
    m.qmp
        .ok("object-add", json!({"qom-type": "iothread", "id": "io1"}));
    assert_eq!(m.threads(), threads + 1, "the I/O thread started");
    let listed = m.qmp.ok("query-iothreads", Value::Null);
    assert!(listed
        .as_array()
        .is_some_and(|a| a.iter().any(|t| t["id"] == "io1")));
    m.qmp.ok("object-del", json!({"id": "io1"}));
    let listed = m.qmp.ok("query-iothreads", Value::Null);
    assert!(!listed
        .as_array()
        .is_some_and(|a| a.iter().any(|t| t["id"] == "io1")));
    assert_eq!(m.threads(), threads, "the I/O thread was joined");
    assert_eq!(
        m.qmp.error("object-del", json!({"id": "io1"})),
        "object 'io1' not found"
    );

    // An I/O thread a hot-added disk runs on stays until the disk goes.
    m.qmp
        .ok("object-add", json!({"qom-type": "iothread", "id": "io2"}));
    let disk = m.disk();
    m.qmp.ok(
        "blockdev-add",
        json!({"driver": "file", "filename": disk, "node-name": "d0"}),
    );
    m.qmp.ok(
        "device_add",
        json!({"driver": "virtio-blk-pci", "id": "hd", "drive": "d0", "iothread": "io2"}),
    );
    assert_eq!(
        m.qmp.error("object-del", json!({"id": "io2"})),
        "object 'io2' is in use, can not be deleted"
    );
    m.unplug("hd");
    m.qmp.ok("object-del", json!({"id": "io2"}));
    assert_eq!(m.threads(), threads, "both I/O threads were joined");
}

/// `getfd`/`closefd` with a descriptor passed over the monitor socket, and `netdev_add
/// type=tap,fd=NAME` taking it (a pipe is no tap: QEMU's refusal, and the fd is consumed).
#[test]
fn getfd_closefd_and_a_named_fd_for_netdev_add() {
    if !require_kvm() {
        return;
    }
    let mut m = Machine::start(&["-machine", "pc"]);
    assert_eq!(
        m.qmp.error("getfd", json!({"fdname": "x"})),
        "No file descriptor supplied via SCM_RIGHTS"
    );
    let (read, write) = {
        let mut fds = [0; 2];
        // SAFETY: pipe() writes two descriptors into the array it is given.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        (fds[0], fds[1])
    };
    let before = m.fds();
    let r = m
        .qmp
        .execute_with_fd("getfd", json!({"fdname": "p1"}), read);
    assert!(r.get("return").is_some(), "{r}");
    assert_eq!(m.fds(), before + 1, "machina holds the passed fd");
    m.qmp.ok("closefd", json!({"fdname": "p1"}));
    assert_eq!(m.fds(), before, "closefd closed it");
    assert_eq!(
        m.qmp.error("closefd", json!({"fdname": "p1"})),
        "File descriptor named 'p1' not found"
    );
    let r = m
        .qmp
        .execute_with_fd("getfd", json!({"fdname": "1p"}), read);
    assert_eq!(
        r["error"]["desc"],
        "Parameter 'fdname' expects a name not starting with a digit"
    );
    assert_eq!(m.fds(), before, "a refused fd is not kept");

    assert_eq!(
        m.qmp
            .error("netdev_add", json!({"type": "tap", "id": "n1", "fd": "zz"})),
        "File descriptor named 'zz' has not been found"
    );
    let r = m
        .qmp
        .execute_with_fd("getfd", json!({"fdname": "tapfd"}), read);
    assert!(r.get("return").is_some(), "{r}");
    let err = m.qmp.error(
        "netdev_add",
        json!({"type": "tap", "id": "n1", "fd": "tapfd"}),
    );
    assert!(err.contains("is not a tap device"), "{err}");
    assert_eq!(m.fds(), before, "the refused tap fd is closed");
    assert_eq!(
        m.qmp.error("closefd", json!({"fdname": "tapfd"})),
        "File descriptor named 'tapfd' not found",
        "netdev_add took the named fd"
    );
    // SAFETY: both are this test's own descriptors, closed once.
    unsafe {
        libc::close(read);
        libc::close(write);
    }
}

fn hmp(m: &mut Machine, line: &str) -> String {
    let r = m
        .qmp
        .ok("human-monitor-command", json!({ "command-line": line }));
    r.as_str().unwrap_or_default().to_string()
}

fn block_devices(m: &mut Machine) -> Vec<String> {
    let list = m.qmp.ok("query-block", Value::Null);
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| b["device"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// HMP `drive_add`/`drive_del` and an empty `-drive` (drive_del-test's paths, QEMU 7.2's
/// texts): a device refuses the empty drive, a -drive's drive goes with its device, and the
/// id is free again afterwards.
#[test]
fn drive_add_and_drive_del_on_a_running_machine() {
    if !require_kvm() {
        return;
    }
    let mut m = Machine::start(&["-machine", "pc", "-drive", "if=none,id=drive0"]);
    let list = m.qmp.ok("query-block", Value::Null);
    assert_eq!(list[0]["device"], "drive0", "{list}");
    assert!(list[0].get("inserted").is_none(), "no medium: {list}");
    assert_eq!(
        m.qmp.error(
            "device_add",
            json!({"driver": "virtio-blk-pci", "drive": "drive0"})
        ),
        "Device needs media, but drive is empty"
    );
    assert_eq!(hmp(&mut m, "drive_del drive0"), "");
    assert!(!block_devices(&mut m).contains(&"drive0".into()));
    assert_eq!(
        hmp(&mut m, "drive_del drive0"),
        "Device 'drive0' not found\r\n"
    );
    assert_eq!(
        hmp(&mut m, "drive_del"),
        "drive_del: block device name expected\r\nTry \"help drive_del\" for more information\r\n"
    );
    assert_eq!(
        hmp(&mut m, "drive_add 0"),
        "drive_add: string expected\r\nTry \"help drive_add\" for more information\r\n"
    );
    assert_eq!(hmp(&mut m, "drive_add 0 if=none,id=drive0"), "OK\r\n");
    assert_eq!(
        hmp(&mut m, "drive_add 0 if=none,id=drive0"),
        "Duplicate ID 'drive0' for drive\r\n"
    );
    assert_eq!(hmp(&mut m, "drive_del drive0"), "");

    // With a medium: used by a hot-added device, gone with it.
    let disk = m.disk();
    let spec = format!("drive_add 0 if=none,id=drive1,file={disk},format=raw");
    assert_eq!(hmp(&mut m, &spec), "OK\r\n");
    m.qmp.ok(
        "device_add",
        json!({"driver": "virtio-blk-pci", "id": "dev1", "drive": "drive1"}),
    );
    assert!(m.has_open(&disk));
    assert_eq!(hmp(&mut m, "drive_del drive1"), "Node drive1 is in use\r\n");
    m.unplug("dev1");
    assert!(!block_devices(&mut m).contains(&"drive1".into()));
    assert!(!m.has_open(&disk), "the image closed with its device");
    assert_eq!(hmp(&mut m, &spec), "OK\r\n", "the id is free again");
}

/// Memory backends through QMP (qmp-cmd-test's object-add failure modes, QEMU 7.2's texts):
/// added and deleted at any time, except the one guest RAM comes from.
#[test]
fn memory_backend_object_add_and_del() {
    if !require_kvm() {
        return;
    }
    let mut m = Machine::start(&[
        "-machine",
        "pc,memory-backend=ram0",
        "-m",
        "128M",
        "-object",
        "memory-backend-ram,id=ram0,size=128M",
    ]);
    assert_eq!(
        m.qmp.error("object-del", json!({"id": "ram0"})),
        "object 'ram0' is in use, can not be deleted"
    );
    let ram = |size: Value| json!({"qom-type": "memory-backend-ram", "id": "ram1", "size": size});
    assert_eq!(
        m.qmp.error("object-add", ram(json!("1048576"))),
        "Parameter 'size' expects uint64"
    );
    m.qmp.ok("object-add", ram(json!(1048576)));
    assert_eq!(
        m.qmp.error("object-add", ram(json!(1048576))),
        "attempt to add duplicate property 'ram1' to object (type 'container')"
    );
    m.qmp.ok("object-del", json!({"id": "ram1"}));
    m.qmp.ok("object-add", ram(json!(1048576)));
    m.qmp.ok("object-del", json!({"id": "ram1"}));
    assert_eq!(
        m.qmp.error("object-del", json!({"id": "ram1"})),
        "object 'ram1' not found"
    );
}

/// `object-add` refuses an id that `/objects` already holds, whatever its kind, as QEMU
/// 7.2's one container does: an I/O thread named as an rng object, any object named as the
/// machine's default RAM backend (`pc.ram`, there once the machine is built).
#[test]
fn object_add_refuses_every_id_objects_holds() {
    let mut m = Machine::start(&[
        "-machine",
        "pc",
        "-object",
        "rng-random,id=r1,filename=/dev/urandom",
    ]);
    for id in ["r1", "pc.ram"] {
        for object in [
            json!({"qom-type": "iothread", "id": id}),
            json!({"qom-type": "memory-backend-ram", "id": id, "size": 1048576}),
            json!({"qom-type": "rng-builtin", "id": id}),
        ] {
            assert_eq!(
                m.qmp.error("object-add", object.clone()),
                format!("attempt to add duplicate property '{id}' to object (type 'container')"),
                "{object}"
            );
        }
    }
    let objects = m.qmp.ok("qom-list", json!({"path": "/objects"}));
    let names: Vec<&str> = objects
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["type", "r1", "pc.ram"], "{objects}");
}
