//! `-object` ids against QEMU 7.2 (Debian's qemu-system-x86_64, the answers recorded
//! below): one `/objects` namespace for every kind, keyval and JSON, `-readconfig` and
//! `object-add`, and the default RAM backend's reserved id. Each refusal is exit status 1
//! with one line; each acceptance is checked by what QMP lists.

mod common;

use common::{machina, refused, require_kvm, write_temp, LIMIT};
use machina_tests::{process::MachinaProcess, TempDir};
use serde_json::{json, Value};

/// Every kind of object machina makes, all with id `x`: keyval (QemuOpts options) and JSON.
const OBJECT_KINDS: [&str; 12] = [
    "iothread,id=x",
    "rng-random,id=x,filename=/dev/urandom",
    "rng-builtin,id=x",
    "secret,id=x,data=abc",
    "memory-backend-ram,id=x,size=1M",
    "memory-backend-memfd,id=x,size=1M",
    "filter-mirror,id=x,netdev=n0,outdev=c0",
    r#"{"qom-type":"iothread","id":"x"}"#,
    r#"{"qom-type":"rng-builtin","id":"x"}"#,
    r#"{"qom-type":"secret","id":"x","data":"a"}"#,
    r#"{"qom-type":"memory-backend-ram","id":"x","size":1048576}"#,
    r#"{"qom-type":"filter-redirector","id":"x","netdev":"n0","outdev":"c0"}"#,
];

/// QEMU 7.2's text for the default RAM backend's id taken by another object.
fn reserved(id: &str) -> String {
    format!(
        "object name '{id}' is reserved for the default RAM backend, it can't be used for any \
         other purposes. Change the object's 'id' to something else"
    )
}

#[test]
fn object_ids_share_one_namespace() {
    let base = [
        "-nodefaults",
        "-netdev",
        "hubport,id=n0,hubid=0",
        "-chardev",
        "null,id=c0",
    ];
    // Every pairing, as QEMU 7.2 answers: two keyval options meet QemuOpts' duplicate
    // (the second option named), a JSON one meets the container's when it is made.
    let mut pairs = 0;
    for first in OBJECT_KINDS {
        for second in OBJECT_KINDS {
            let mut args = base.to_vec();
            args.extend(["-object", first, "-object", second]);
            let want = if first.starts_with('{') || second.starts_with('{') {
                "attempt to add duplicate property 'x' to object (type 'container')".to_string()
            } else {
                format!("-object {second}: Duplicate ID 'x' for object")
            };
            assert_eq!(refused(&args), want, "{args:?}");
            pairs += 1;
        }
    }
    // `-readconfig` objects are made from their sections, as JSON ones are.
    let dir = TempDir::new("cli-validation-objects");
    let one = "[object]\n  qom-type = \"iothread\"\n  id = \"x\"\n";
    let cfg = write_temp(&dir, "one.cfg", one);
    let cfg = cfg.to_str().expect("utf-8 path");
    let two = write_temp(&dir, "two.cfg", &one.repeat(2));
    let two = two.to_str().expect("utf-8 path");
    let pc_ram = write_temp(&dir, "pc-ram.cfg", &one.replace("\"x\"", "\"pc.ram\""));
    let pc_ram = pc_ram.to_str().expect("utf-8 path");
    let container = "attempt to add duplicate property 'x' to object (type 'container')";
    let rows: &[(&[&str], String)] = &[
        (&["-readconfig", two], container.into()),
        (
            &["-readconfig", cfg, "-object", "iothread,id=x"],
            container.into(),
        ),
        (
            &["-object", "iothread,id=x", "-readconfig", cfg],
            container.into(),
        ),
        (&["-readconfig", pc_ram], reserved("pc.ram")),
        // QemuOpts checks every option's id before any object is made.
        (
            &[
                "-object",
                "iothread,id=x,poll-max-ns=-1",
                "-object",
                "iothread,id=x",
            ],
            "-object iothread,id=x: Duplicate ID 'x' for object".into(),
        ),
        // The default RAM backend's id, for any kind, unless no default backend is made.
        (&["-object", "iothread,id=pc.ram"], reserved("pc.ram")),
        (
            &["-object", "memory-backend-ram,id=pc.ram,size=1G"],
            reserved("pc.ram"),
        ),
        (
            &["-M", "q35", "-object", "rng-builtin,id=pc.ram"],
            reserved("pc.ram"),
        ),
        (
            &[
                "-object",
                r#"{"qom-type":"secret","id":"pc.ram","data":"a"}"#,
            ],
            reserved("pc.ram"),
        ),
        (
            &["-M", "none", "-m", "128", "-object", "iothread,id=ram"],
            reserved("ram"),
        ),
        (
            &[
                "-object",
                "iothread,id=pc.ram",
                "-machine",
                "memory-backend=pc.ram",
            ],
            "Memory backend 'pc.ram' not found".into(),
        ),
    ];
    for (args, want) in rows {
        let mut list = vec!["-nodefaults"];
        list.extend(*args);
        assert_eq!(refused(&list), *want, "{list:?}");
    }
    eprintln!("objects: {pairs} pairings, {} other refusals", rows.len());
}

/// The ids QEMU 7.2 accepts: the first `id=` is an option's, and the default RAM backend's
/// id is free when NUMA nodes take their RAM from memdevs; under --preconfig the id is
/// checked when x-exit-preconfig makes the board, and once it exists `object-add` meets
/// the backend itself.
#[test]
fn object_ids_qemu_accepts() {
    if !require_kvm() {
        return;
    }
    let args = [
        "-nodefaults",
        "-S",
        "-object",
        "iothread,id=pc.ram",
        "-object",
        "memory-backend-ram,id=m0,size=128M",
        "-numa",
        "node,memdev=m0",
        "-object",
        "iothread,id=a,id=b",
        "-object",
        "iothread,id=b",
    ]
    .map(String::from);
    let mut p = MachinaProcess::start(&machina(), "cli-validation-object-ids", &args);
    let mut c = p.client();
    let objects = c.ok("qom-list", json!({"path": "/objects"}));
    let mut children: Vec<(&str, &str)> = objects
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|o| Some((o["name"].as_str()?, o["type"].as_str()?)))
        .filter(|(name, _)| *name != "type")
        .collect();
    children.sort();
    assert_eq!(
        children,
        [
            ("a", "child<iothread>"),
            ("b", "child<iothread>"),
            ("m0", "child<memory-backend-ram>"),
            ("pc.ram", "child<iothread>"),
        ],
        "{objects}"
    );
    c.execute("quit", Value::Null);
    p.wait_exit(LIMIT);

    let args = [
        "-nodefaults",
        "--preconfig",
        "-object",
        "iothread,id=pc.ram",
    ]
    .map(String::from);
    let mut p = MachinaProcess::start(&machina(), "cli-validation-object-ids-pre", &args);
    let mut c = p.client();
    assert_eq!(c.error("x-exit-preconfig", json!({})), reserved("pc.ram"));
    c.ok("object-del", json!({"id": "pc.ram"}));
    c.ok("x-exit-preconfig", json!({}));
    assert_eq!(
        c.error(
            "object-add",
            json!({"qom-type": "iothread", "id": "pc.ram"})
        ),
        "attempt to add duplicate property 'pc.ram' to object (type 'container')"
    );
    let memdevs = c.ok("query-memdev", json!(null));
    assert_eq!(memdevs[0]["id"], "pc.ram", "{memdevs}");
    c.execute("quit", Value::Null);
    p.wait_exit(LIMIT);
}
