//! Bad command lines and bad kernels: a one-line error naming what was wrong, status 1,
//! and no guest started.

mod common;

use common::{boot, machina};
use machina_tests::TempDir;
use std::time::Duration;

fn fails_with(args: &[&str], message: &str) {
    let r = machina_tests::run(&machina(), args, Duration::from_secs(30));
    r.check(r.status == Some(1), &format!("{args:?} exits 1"));
    r.check(
        r.stderr.contains(message),
        &format!("{args:?} says '{message}'"),
    );
    r.check(
        r.stderr.trim_end().lines().count() == 1,
        "the error is one line",
    );
    r.check(!r.stdout.contains("machina-guest"), "no guest ran");
}

#[test]
fn option_errors() {
    fails_with(&["-bogus"], "machina: -bogus: invalid option");
    fails_with(
        &["-m", "256,foo=bar"],
        "-m 256,foo=bar: Invalid parameter 'foo'",
    );
    fails_with(
        &["-m", "12Q"],
        "-m 12Q: Parameter 'size' expects a non-negative number below 2^64",
    );
    fails_with(
        &["-smp", "0"],
        "-smp 0: Invalid CPU topology: CPU topology parameters must be greater than zero",
    );
    fails_with(&["-m"], "-m: requires an argument");
    fails_with(
        &["-serial", "bogus:x"],
        "'bogus:x' is not a valid char driver",
    );
    fails_with(
        &["-M", "q35,foo=bar"],
        "Property 'pc-q35-10.2-machine.foo' not found",
    );
    fails_with(&["-M", "nosuch"], "unsupported machine type");
    fails_with(
        &["-smp", "300"],
        "Invalid SMP CPUs 300. The max CPUs supported by machine 'pc-i440fx-10.2' is 255",
    );
}

#[test]
fn kernel_errors() {
    fails_with(
        &["-kernel", "/nonexistent/bzImage"],
        "could not open kernel file '/nonexistent/bzImage'",
    );
    let dir = TempDir::new("garbage");
    let garbage = dir.join("bzImage");
    std::fs::write(&garbage, vec![0x5au8; 4096]).unwrap();
    let path = garbage.display().to_string();
    fails_with(&["-kernel", &path], "invalid kernel header");
    fails_with(
        &["-kernel", "/etc/hostname", "-initrd", "/nonexistent/initrd"],
        "invalid kernel header",
    );
}

#[test]
fn help_and_version_exit_zero() {
    let r = boot(&["--version"]);
    r.check(
        r.status == Some(0) && r.stdout.starts_with("machina version"),
        "--version",
    );
    let r = boot(&["--help"]);
    r.check(
        r.status == Some(0) && r.stdout.contains("-machine"),
        "--help",
    );
    let r = boot(&["-machine", "help"]);
    r.check(
        r.status == Some(0)
            && r.stdout.contains("pc-q35-10.2")
            && r.stdout.contains("(alias of pc-i440fx-10.2)"),
        "-machine help lists the catalog",
    );
}

#[test]
fn backend_errors() {
    let dir = TempDir::new("cli-backends");
    let img = dir.join("d.img");
    std::fs::write(&img, vec![0u8; 4096]).unwrap();
    let drive = format!("file={},if=none,id=d0,format=raw", img.display());
    fails_with(
        &["-drive", "file=/nonexistent/d.img,if=none,id=d0,format=raw"],
        "-drive file=/nonexistent/d.img,if=none,id=d0,format=raw: Could not open '/nonexistent/d.img': No such file or directory",
    );
    let bad_format = format!("file={},if=none,id=d0,format=qcow9", img.display());
    fails_with(&["-drive", &bad_format], "Unknown driver 'qcow9'");
    fails_with(
        &["-drive", &drive, "-drive", &drive],
        "Duplicate ID 'd0' for drive",
    );
    fails_with(
        &["-device", "virtio-blk-pci,drive=nope"],
        "Property 'virtio-blk-device.drive' can't find value 'nope'",
    );
    fails_with(&["-device", "virtio-blk-pci"], "drive property not set");
    fails_with(
        &["-device", "virtio-net-pci,netdev=nope"],
        "Property 'virtio-net-device.netdev' can't find value 'nope'",
    );
    fails_with(
        &["-device", "virtio-rng-pci,rng=nope"],
        "Device 'nope' not found",
    );
    fails_with(
        &["-netdev", "bogus,id=x"],
        "Parameter 'type' does not accept value 'bogus'",
    );
}

#[test]
fn machine_definition_file_adds_a_machine_type() {
    let dir = TempDir::new("def");
    let def = dir.join("acme.json");
    std::fs::write(
        &def,
        r#"{"machine-types": [{"name": "acme-q35-1.0", "inherits": "pc-q35-10.2",
             "description": "ACME q35", "cpu-max": 8}]}"#,
    )
    .unwrap();
    let path = def.display().to_string();
    let r = boot(&["-machine-definition", &path, "-machine", "help"]);
    r.check(
        r.status == Some(0) && r.stdout.contains("acme-q35-1.0") && r.stdout.contains("ACME q35"),
        "-machine help lists the user's machine type",
    );
    // The user's data is used for planning: its cpu-max is enforced with QEMU's text.
    fails_with(
        &[
            "-machine-definition",
            &path,
            "-M",
            "acme-q35-1.0",
            "-smp",
            "9",
        ],
        "Invalid SMP CPUs 9. The max CPUs supported by machine 'acme-q35-1.0' is 8",
    );
    std::fs::write(&def, "{ not json").unwrap();
    fails_with(
        &["-machine-definition", &path, "-M", "q35"],
        "-machine-definition",
    );
}
