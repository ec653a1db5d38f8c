//! Linux's own hot-plug drivers against machina (opt-in: a boot takes minutes on PVM hosts):
//!
//!     scripts/linux-guest --install-deps   # once: builds target/linux-guest/vmlinux
//!     cargo test -p vmm --test linux_hotplug -- --ignored --nocapture --test-threads=1
//!
//! (`MACHINA_LINUX_DIR=DIR` uses a kernel another checkout built, see scripts/linux-guest.)
//!
//! Boots the tinyconfig 6.1 kernel (tests/data/linux/guest.config: acpiphp and pciehp built
//! in) by PVH and leaves it waiting for a root device that never comes (`rootwait`), which
//! keeps the kernel alive and handling events: no Linux user space runs on PVM hosts (see
//! docs), so what the guest saw is read from its kernel log instead of /sys/bus/pci. Then
//! `device_add virtio-blk-pci`: Linux's acpiphp (pc) or pciehp (q35 6.0 root port) must
//! enumerate the function and virtio_blk bind it (`virtio_blk virtioN: [vdX]`); then
//! `device_del`: the driver releases it and ejects the slot (ACPI `_EJ0`; the slot powered
//! off), which gives DEVICE_DELETED. Each step's time is printed.

mod common;

use common::machina;
use machina_tests::process::{wait_console, MachinaProcess};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

/// Keeps a stock kernel off instructions PVM's CPL 0 emulator rejects (test-hosts-kvm.md).
const CLEARCPUID: &str = "clearcpuid=cx16,xsave,popcnt,rdrand,rdseed,fsgsbase,smap,rdpid,\
                          clflushopt,clwb,bmi1,bmi2,ssse3,sse4_1,sse4_2,aes,pclmulqdq";

/// Hang guard for each step (a boot measured ~2.5 minutes on an idle host).
const STEP: Duration = Duration::from_secs(900);

fn hotplug_round(tag: &str, machine_args: &[&str], placement: serde_json::Value) {
    let kernel =
        machina_tests::paths::linux_guest(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    let dir = machina_tests::TempDir::new(tag);
    let console = dir.path.join("console");
    let disk = dir.path.join("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(16 << 20))
        .expect("disk");
    let append =
        format!("console=ttyS0 panic=-1 ignore_loglevel root=/dev/vdz rootwait {CLEARCPUID}");
    let mut args: Vec<String> = machine_args.iter().map(|s| s.to_string()).collect();
    args.extend(
        [
            "-m",
            "256M",
            "-nodefaults",
            "-no-reboot",
            "-serial",
            &format!("file:{}", console.display()),
            "-kernel",
            &kernel.display().to_string(),
            "-append",
            &append,
            "-blockdev",
            &format!("driver=file,node-name=d1,filename={}", disk.display()),
        ]
        .map(String::from),
    );
    let start = Instant::now();
    let vm = MachinaProcess::start(&machina(), tag, &args);
    let mut qmp = vm.client();
    wait_console(&console, "Waiting for root device", 1, STEP);
    let booted = start.elapsed();
    println!("{tag}: kernel waiting for root after {booted:?}");

    let mut dev = json!({"driver": "virtio-blk-pci", "id": "hd1", "drive": "d1"});
    for (k, v) in placement.as_object().into_iter().flatten() {
        dev[k] = v.clone();
    }
    let added = Instant::now();
    qmp.ok("device_add", dev);
    let text = wait_console(&console, "virtio_blk virtio", 1, STEP);
    println!(
        "{tag}: virtio_blk bound {:?} after device_add",
        added.elapsed()
    );
    let after = text
        .split_once("Waiting for root device")
        .map(|(_, t)| t)
        .unwrap_or_default();
    assert!(
        after.contains("[1af4:1001]") || after.contains("[1af4:1042]"),
        "the kernel enumerated no virtio-blk function after device_add:\n{after}"
    );

    // pciehp blinks the power indicator until it has set the slot up, and QEMU refuses
    // device_del meanwhile ("guest is busy"): ask again until the guest is done.
    let deleted = Instant::now();
    loop {
        let r = qmp.execute("device_del", json!({"id": "hd1"}));
        if r.get("return").is_some() {
            break;
        }
        let busy = r["error"]["desc"]
            .as_str()
            .is_some_and(|d| d.contains("power indicator blinking"));
        assert!(busy && deleted.elapsed() < STEP, "device_del: {r}");
        std::thread::sleep(Duration::from_millis(500));
    }
    while qmp.wait_event("DEVICE_DELETED")["data"]["device"] != "hd1" {}
    println!(
        "{tag}: DEVICE_DELETED {:?} after device_del",
        deleted.elapsed()
    );
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    for line in text
        .lines()
        .skip_while(|l| !l.contains("Waiting for root device"))
    {
        println!("{tag}| {line}");
    }
}

#[test]
#[ignore = "boots Linux: minutes on PVM hosts (see the module doc)"]
fn linux_acpiphp_takes_a_hot_added_virtio_blk_on_pc() {
    if !common::require_kvm() {
        return;
    }
    hotplug_round("linux-hp-pc", &["-machine", "pc"], json!({}));
}

#[test]
#[ignore = "boots Linux: minutes on PVM hosts (see the module doc)"]
fn linux_pciehp_takes_a_hot_added_virtio_blk_on_q35() {
    if !common::require_kvm() {
        return;
    }
    hotplug_round(
        "linux-hp-q35",
        &[
            "-machine",
            "pc-q35-6.0",
            "-device",
            "pcie-root-port,id=rp1,chassis=1,addr=3",
        ],
        json!({"bus": "rp1"}),
    );
}
