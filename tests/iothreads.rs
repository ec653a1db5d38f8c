//! QEMU's I/O threads: `-object iothread` / `object-add`, devices' `iothread=ID` (several
//! devices on one thread, the others on threads of their own), `query-iothreads` from the
//! real threads (their TIDs and names in /proc), QEMU's texts for bad objects and references,
//! and the tiny guest's virtio-blk test through two disks that share one I/O thread.

mod common;

use common::{boot, machina, require_kvm};
use machina_tests::process::MachinaProcess;
use machina_tests::TempDir;
use serde_json::{json, Value};
use std::time::Duration;

/// Two 4 MiB raw images in a directory of their own, removed at the end.
struct Disks {
    dir: TempDir,
}

impl Disks {
    fn new(tag: &str) -> Disks {
        let dir = TempDir::new(&format!("iothreads-{tag}"));
        for i in 0..2 {
            std::fs::write(dir.path.join(format!("d{i}.img")), vec![0u8; 4 << 20]).unwrap();
        }
        Disks { dir }
    }

    fn drive(&self, i: usize) -> String {
        format!(
            "file={},if=none,id=d{i},format=raw",
            self.dir.path.join(format!("d{i}.img")).display()
        )
    }

    fn image(&self, i: usize) -> Vec<u8> {
        std::fs::read(self.dir.path.join(format!("d{i}.img"))).unwrap()
    }
}

/// (tid, name) of every thread of `pid`.
fn threads(pid: u32) -> Vec<(i64, String)> {
    let mut list: Vec<(i64, String)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let tid = e.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(e.path().join("comm")).ok()?;
            Some((tid, name.trim().to_string()))
        })
        .collect();
    list.sort();
    list
}

/// The threads once every one has taken its name (a new thread names itself when it first
/// runs, so right after a build it may still show the process's name). The wait is only a
/// hang guard.
fn named_threads(pid: u32) -> Vec<(i64, String)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let list = threads(pid);
        let unnamed = list
            .iter()
            .any(|(tid, name)| *tid != i64::from(pid) && name == "machina");
        if !unnamed || std::time::Instant::now() > deadline {
            return list;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn count(list: &[(i64, String)], prefix: &str) -> usize {
    list.iter().filter(|(_, n)| n.starts_with(prefix)).count()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn query_iothreads_reports_the_real_threads_and_shared_devices_use_them() {
    if !require_kvm() {
        return;
    }
    let disks = Disks::new("query");
    let (d0, d1) = (disks.drive(0), disks.drive(1));
    let vm = MachinaProcess::start(
        &machina(),
        "iothreads",
        &args(&[
            "-S",
            "-M",
            "q35",
            "-nodefaults",
            "-object",
            "iothread,id=io1",
            "-object",
            "iothread,id=io2,poll-max-ns=50000",
            "-device",
            "virtio-blk-pci,drive=d0,iothread=io1",
            "-device",
            "virtio-blk-pci,drive=d1,iothread=io1",
            "-drive",
            &d0,
            "-drive",
            &d1,
            "-device",
            "virtio-rng-pci",
        ]),
    );
    let mut qmp = vm.client();
    let list = qmp.ok("query-iothreads", Value::Null);
    let before = named_threads(vm.pid());
    let entries = list.as_array().expect("a list");
    assert_eq!(entries.len(), 2, "{list}");
    for (entry, id) in entries.iter().zip(["io1", "io2"]) {
        assert_eq!(entry["id"], id, "{list}");
        let tid = entry["thread-id"].as_i64().expect("thread-id");
        let name = format!("IO {id}");
        assert!(
            before.iter().any(|(t, n)| *t == tid && *n == name),
            "{id}: TID {tid} named '{name}' in {before:?}"
        );
        // machina's loops block in epoll: no polling, whatever was asked.
        assert_eq!(
            (
                &entry["poll-max-ns"],
                &entry["poll-grow"],
                &entry["poll-shrink"],
                &entry["aio-max-batch"]
            ),
            (&json!(0), &json!(0), &json!(0), &json!(0)),
            "{list}"
        );
    }
    // The two disks run on io1; only the rng has a thread of its own.
    assert_eq!(count(&before, "IO "), 2, "{before:?}");
    assert_eq!(count(&before, "virtio-io "), 1, "{before:?}");

    // A reset rebuilds the devices on the same I/O threads: same TIDs, no thread more.
    for _ in 0..3 {
        qmp.ok("system_reset", Value::Null);
    }
    qmp.ok("query-status", Value::Null);
    assert_eq!(qmp.ok("query-iothreads", Value::Null), list);
    let after = named_threads(vm.pid());
    assert_eq!(before.len(), after.len(), "{before:?} -> {after:?}");
    assert_eq!(count(&after, "virtio-io "), 1, "{after:?}");

    // object-add starts one at once; a second with the same id is refused.
    qmp.ok(
        "object-add",
        json!({"qom-type": "iothread", "id": "io3", "poll-max-ns": 0}),
    );
    let list = qmp.ok("query-iothreads", Value::Null);
    let io3 = list
        .as_array()
        .and_then(|l| l.iter().find(|e| e["id"] == "io3"))
        .and_then(|e| e["thread-id"].as_i64())
        .expect("io3 listed");
    assert!(
        threads(vm.pid())
            .iter()
            .any(|(t, n)| *t == io3 && n == "IO io3"),
        "io3's thread"
    );
    let e = qmp.error("object-add", json!({"qom-type": "iothread", "id": "io3"}));
    assert!(e.contains("duplicate"), "{e}");
    let _ = qmp.execute("quit", Value::Null);
}

/// The tiny guest's virtio-blk test on two disks served by one I/O thread: both paths of
/// both devices write, read back and flush, and the data is on each image.
#[test]
fn two_disks_on_one_iothread_do_their_io() {
    if !require_kvm() {
        return;
    }
    let disks = Disks::new("io");
    let (d0, d1) = (disks.drive(0), disks.drive(1));
    let r = boot(&[
        "-M",
        "q35",
        "-m",
        "256",
        "-nodefaults",
        "-serial",
        "stdio",
        "-object",
        "iothread,id=io1",
        "-device",
        "virtio-blk-pci,drive=d0,iothread=io1",
        "-device",
        "virtio-blk-pci,drive=d1,iothread=io1",
        "-drive",
        &d0,
        "-drive",
        &d1,
        "-append",
        "machina.test=virtio machina.blk-seed=9",
    ]);
    r.check(
        r.status == Some(0),
        "machina exits 0 after the guest powers off",
    );
    let lines = r.lines_with("virtio-blk: ");
    r.check(lines.len() == 4, "two devices, two paths each");
    for line in &lines {
        r.check(
            line.contains("write=ok read=ok match=yes flush=ok"),
            &format!("virtio-blk I/O: {line}"),
        );
    }
    // The guest's pattern (resources/guest/README.md) at sectors 8 (legacy) and 16 (modern).
    let pattern = |sector: u64, i: usize| {
        9u64.wrapping_mul(31)
            .wrapping_add(sector.wrapping_mul(7))
            .wrapping_add(i as u64) as u8
    };
    for disk in 0..2 {
        let data = disks.image(disk);
        for sector in [8u64, 16] {
            let at = (sector * 512) as usize;
            r.check(
                (0..4096).all(|i| data[at + i] == pattern(sector, i)),
                &format!("disk {disk}: the guest's 4 KiB at sector {sector}"),
            );
        }
    }
}

/// Bad objects and references fail the start with QEMU's texts, exit status 1.
#[test]
fn bad_iothreads_and_references_are_refused_with_qemus_texts() {
    let disks = Disks::new("errors");
    let d0 = disks.drive(0);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "-device",
                "virtio-blk-pci,drive=d0,iothread=nope",
                "-drive",
                &d0,
            ],
            "-device virtio-blk-pci,drive=d0,iothread=nope: Device 'nope' not found",
        ),
        (
            vec![
                "-object",
                "secret,id=s0,data=x",
                "-device",
                "virtio-blk-pci,drive=d0,iothread=s0",
                "-drive",
                &d0,
            ],
            "Invalid parameter type for 'iothread', expected: iothread",
        ),
        (
            vec![
                "-object",
                "iothread,id=io1",
                "-device",
                "virtio-rng-pci,iothread=io1",
            ],
            "Property 'virtio-rng-pci.iothread' not found",
        ),
        (
            vec!["-object", "iothread"],
            "-object iothread: Parameter 'id' is missing",
        ),
        (
            vec!["-object", "iothread,id=io1,bogus=1"],
            "Invalid parameter 'bogus'",
        ),
        (
            vec!["-object", "iothread,id=io1,poll-max-ns=abc"],
            "Parameter 'poll-max-ns' expects an int64 value",
        ),
        (
            vec!["-object", "iothread,id=io1,poll-max-ns=-1"],
            "poll-max-ns value must be in range [0, 9223372036854775807]",
        ),
        (
            vec!["-object", "iothread,id=1x"],
            "Parameter 'id' expects an identifier",
        ),
        (
            vec![
                "-object",
                "iothread,id=io1,thread-pool-min=5,thread-pool-max=2",
            ],
            "bad thread-pool-min/thread-pool-max values",
        ),
        (
            vec![
                "-object",
                r#"{"qom-type":"iothread","id":"io1","poll-grow":"5"}"#,
            ],
            "Invalid parameter type for 'poll-grow', expected: integer",
        ),
        (
            vec!["-object", "iothread,id=io1", "-object", "iothread,id=io1"],
            "-object iothread,id=io1: Duplicate ID 'io1' for object",
        ),
    ];
    for (extra, want) in cases {
        let mut list = vec!["-M", "q35", "-nodefaults", "-S"];
        list.extend(&extra);
        let r = machina_tests::run(&machina(), &list, Duration::from_secs(60));
        r.check(r.status == Some(1), &format!("{extra:?}: exit status 1"));
        r.check(r.stderr.contains(want), &format!("{extra:?}: '{want}'"));
    }
}
