//! `-readconfig FILE`: QEMU's configuration file builds the same machine as the options
//! it stands for, and a bad file is refused with QEMU's `FILE:LINE: message` texts.

mod common;

use common::{machina, names};
use machina_tests::process::MachinaProcess;
use machina_tests::TempDir;
use serde_json::{json, Value};
use std::time::Duration;

fn write(dir: &TempDir, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The (name, type) pairs of a qom-list answer.
fn children(list: &Value) -> Vec<(String, String)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["type"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_config_file_builds_the_machine_it_describes() {
    let dir = TempDir::new("readconfig-ok");
    let cfg = write(
        &dir,
        "vm.cfg",
        "# a machine as QEMU's docs/config files write it\n\
         [machine]\n  type = \"q35\"\n\n\
         [memory]\n  size = \"200\"\n\
         [smp-opts]\n  cpus = \"2\"\n\
         [object]\n  qom-type = \"rng-builtin\"\n  id = \"rng0\"\n\
         [device \"rng-dev\"]\n  driver = \"virtio-rng-pci\"\n  rng = \"rng0\"\n",
    );
    let args: Vec<String> = ["-nodefaults", "-S", "-readconfig", &cfg]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut vm = MachinaProcess::start(&machina(), "readconfig-ok", &args);
    let mut c = vm.client();
    let memdevs = c.ok("query-memdev", json!(null));
    assert_eq!(memdevs.as_array().map(Vec::len), Some(1), "{memdevs}");
    assert_eq!(memdevs[0]["id"], "pc.ram");
    assert_eq!(memdevs[0]["size"], 200u64 << 20);
    let objects = children(&c.ok("qom-list", json!({"path": "/objects"})));
    assert!(
        objects.contains(&("rng0".into(), "child<rng-builtin>".into())),
        "{objects:?}"
    );
    let peripherals = children(&c.ok("qom-list", json!({"path": "/machine/peripheral"})));
    assert!(
        peripherals.contains(&("rng-dev".into(), "child<virtio-rng-pci>".into())),
        "{peripherals:?}"
    );
    let cpus = c.ok("query-cpus-fast", json!(null));
    assert_eq!(names(&cpus, "qom-path").len(), 2, "{cpus}");
    let machine = c.ok("qom-get", json!({"path": "/machine", "property": "type"}));
    assert!(
        machine.as_str().unwrap().starts_with("pc-q35-"),
        "{machine}"
    );
    drop(c);
    vm.child.kill().unwrap();
    vm.wait_exit(Duration::from_secs(30));
}

fn fails_with(args: &[&str], message: &str) {
    let r = machina_tests::run(&machina(), args, Duration::from_secs(30));
    r.check(r.status == Some(1), &format!("{args:?} exits 1"));
    r.check(
        r.stderr.trim_end() == format!("machina: {message}"),
        &format!("{args:?} says '{message}'"),
    );
}

#[test]
fn bad_files_are_refused_with_their_line() {
    let dir = TempDir::new("readconfig-bad");
    let none = ["-nodefaults", "-machine", "none", "-S"];
    let check = |name: &str, text: &str, message: &str| {
        let path = write(&dir, name, text);
        let mut args = none.to_vec();
        args.extend(["-readconfig", &path]);
        fails_with(&args, &message.replace("FILE", &path));
    };
    check("nogroup.cfg", "size = \"1\"\n", "FILE:1: no group defined");
    check("parse.cfg", "[memory]\n   \n", "FILE:2: parse error");
    check(
        "group.cfg",
        "# x\n[nosuch]\nsize = \"200\"\n[memory]\n",
        "FILE:3: There is no option group 'nosuch'",
    );
    check(
        "key.cfg",
        "[memory]\nfoo = \"200\"\n",
        "FILE:2: Invalid parameter 'foo'",
    );
    check(
        "size.cfg",
        "[memory]\nsize = \"abc\"\n",
        "FILE:2: Parameter 'size' expects a non-negative number below 2^64",
    );
    check(
        "driver.cfg",
        "[device \"d0\"]\ndriver = \"nosuchdev\"\n",
        "FILE:2: 'nosuchdev' is not a valid device model name",
    );
    check(
        "nodriver.cfg",
        "[device \"d0\"]\nfoo = \"bar\"\n",
        "FILE:2: Parameter 'driver' is missing",
    );
    check(
        "drive.cfg",
        "[drive \"d\"]\nfile = \"/nonexistent/disk.img\"\n",
        "FILE:2: Could not open '/nonexistent/disk.img': No such file or directory",
    );
    // Found when the machine is planned, long after the file was read: still its line.
    let path = write(
        &dir,
        "dup.cfg",
        "[device \"x\"]\ndriver = \"virtio-rng-pci\"\n\n[device \"x\"]\ndriver = \"virtio-rng-pci\"\n",
    );
    fails_with(
        &["-nodefaults", "-M", "q35", "-S", "-readconfig", &path],
        &format!("{path}:5: Duplicate ID 'x' for device"),
    );
    let missing = dir.join("missing.cfg").display().to_string();
    fails_with(
        &["-readconfig", &missing],
        &format!("-readconfig {missing}: Could not open '{missing}': No such file or directory"),
    );
}
