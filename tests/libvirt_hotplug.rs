//! `virsh attach-device --live` / `detach-device --live` (Debian's libvirt 9.0, QEMU driver)
//! of a virtio disk and a virtio NIC on a running machina domain, pc and q35, with the tiny
//! guest in hotplug mode driving each device between attach and detach. The private
//! libvirtd and the domain come from tests/src/libvirt_domain.rs (shared with
//! tests/libvirt.rs).
//!
//! Needs root (libvirt's system driver, taps, mount namespaces) and /dev/kvm; without either
//! it prints why and skips.

mod common;

use common::machina;
use machina_tests::libvirt::{process_alive, Tap};
use machina_tests::libvirt_domain::{setup, DISK_SIZE};
use serde_json::Value;

/// `virsh attach-device --live` / `detach-device --live` of a virtio disk and then a virtio
/// NIC on a running domain. For the disk libvirt 9.0 adds the file and raw nodes
/// (blockdev-add) and the device (device_add); for the NIC it opens the tap, passes it with
/// `getfd` (SCM_RIGHTS), then netdev_add and device_add. The tiny guest (hotplug mode) sees
/// each ACPI announcement, drives the device and releases it; on detach libvirt sends
/// device_del, the guest ejects the slot, and on DEVICE_DELETED libvirt removes the backends
/// (blockdev-del, netdev_del). On q35 libvirt puts each hot-added device into a free
/// pcie-root-port of the domain (ACPI hot-plug on q35 10.2, ICH9's block at 0xcc0); the
/// guest is not told which (`machina.hotplug-scan`).
fn hotplug_disk_and_nic(machine: &'static str) {
    // Three rounds (disk, NIC, none): after each eject the guest waits for the next device,
    // so the domain is still running when libvirt's clean-up is checked.
    let mut cmdline = "machina.test=hotplug machina.hotplug-rounds=3".to_string();
    let controllers = match machine {
        "q35" => {
            cmdline += " machina.pcihp=0xcc0 machina.hotplug-scan=1";
            "controllers-q35-hotplug.xml".to_string()
        }
        _ => format!("controllers-{machine}.xml"),
    };
    let Some(run) = setup(&machina(), machine, "h", cmdline, &controllers) else {
        return;
    };
    let step = "define + start (guest in hotplug mode)";
    run.step(step);
    run.define(step, "serial-file.xml");
    run.virsh(step, &["start", &run.name]);
    run.wait_for(
        step,
        "`hotplug: waiting`",
        || run.count("hotplug: waiting") >= 1,
        true,
    );
    let pid = run.pid(step);

    let step = "attach-device --live (disk)";
    run.step(step);
    let extra = run.lv.root().join("extra.raw");
    std::fs::File::create(&extra)
        .and_then(|f| f.set_len(DISK_SIZE))
        .expect("create the second disk");
    let xml = run.lv.root().join("extra-disk.xml");
    std::fs::write(
        &xml,
        format!(
            "<disk type='file' device='disk'>\n  <driver name='qemu' type='raw'/>\n  \
             <source file='{}'/>\n  <target dev='vdb' bus='virtio'/>\n</disk>\n",
            extra.display()
        ),
    )
    .expect("write the disk XML");
    let xml = xml.display().to_string();
    run.virsh(step, &["attach-device", &run.name, &xml, "--live"]);
    let list = run.virsh(step, &["domblklist", &run.name]);
    if !list
        .lines()
        .any(|l| l.split_whitespace().next() == Some("vdb"))
    {
        run.fail(step, &format!("no vdb in domblklist:\n{list}"));
    }
    let nodes = run.monitor(step, "query-named-block-nodes");
    let extra_text = extra.display().to_string();
    let on_extra = |nodes: &Value| {
        nodes
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|n| n["file"] == extra_text.as_str())
                    .count()
            })
            .unwrap_or(0)
    };
    if on_extra(&nodes) == 0 {
        run.fail(step, &format!("no node on {extra_text}: {nodes}"));
    }
    let step = "the guest drives the hot-added disk";
    run.step(step);
    run.wait_for(
        step,
        "`hotplug: released`",
        || run.count("hotplug: released") >= 1,
        true,
    );
    let serial = run.serial();
    // On q35 the device is behind the free root port libvirt chose, found by rescanning.
    let behind_port = (machine == "q35").then_some("hotplug: found behind port=");
    for want in ["driver result=ok", "write=ok read=ok match=yes"]
        .into_iter()
        .chain(behind_port)
    {
        if !serial.contains(want) {
            run.fail(
                step,
                &format!("no `{want}` in the guest's output:\n{serial}"),
            );
        }
    }

    let step = "detach-device --live (disk)";
    run.step(step);
    run.virsh(step, &["detach-device", &run.name, &xml, "--live"]);
    // virsh returns once the request is sent; the disk goes when the guest has ejected it.
    run.wait_for(
        step,
        "vdb gone from domblklist",
        || {
            let r = run.lv.virsh(&["domblklist", &run.name]);
            r.status == Some(0)
                && !r
                    .stdout
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some("vdb"))
        },
        false,
    );
    if run.count("hotplug: ejected") != 1 {
        run.fail(step, &format!("the guest did not eject:\n{}", run.serial()));
    }
    // libvirt removed both nodes after DEVICE_DELETED (blockdev-del).
    run.expect_state(step, "running");
    let nodes = run.monitor(step, "query-named-block-nodes");
    if on_extra(&nodes) != 0 {
        run.fail(step, &format!("nodes on {extra_text} remain: {nodes}"));
    }

    // A NIC on a tap libvirt opens and passes (getfd over the monitor socket, netdev_add
    // type=tap,fd=NAME, device_add virtio-net-pci).
    let step = "attach-device --live (NIC)";
    run.step(step);
    let tap_name = format!("mlvn{}{}", &machine[..1], std::process::id() % 100_000);
    let _tap = Tap::create(&tap_name).unwrap_or_else(|e| run.fail(step, &e));
    let mac = "52:54:00:6d:02:02";
    let xml = run.lv.root().join("extra-nic.xml");
    std::fs::write(
        &xml,
        format!(
            "<interface type='ethernet'>\n  <mac address='{mac}'/>\n  \
             <target dev='{tap_name}' managed='no'/>\n  <model type='virtio'/>\n</interface>\n"
        ),
    )
    .expect("write the NIC XML");
    let xml = xml.display().to_string();
    let has_nic = || {
        let r = run.lv.virsh(&["domiflist", &run.name]);
        (r.status == Some(0)).then(|| r.stdout.contains(mac))
    };
    run.virsh(step, &["attach-device", &run.name, &xml, "--live"]);
    if has_nic() != Some(true) {
        run.fail(step, "the NIC is not in domiflist");
    }
    let step = "the guest drives the hot-added NIC";
    run.step(step);
    run.wait_for(
        step,
        "a second `hotplug: released`",
        || run.count("hotplug: released") >= 2,
        true,
    );
    if run.count("driver result=ok") != 2 {
        run.fail(
            step,
            &format!("the guest's NIC driver failed:\n{}", run.serial()),
        );
    }
    let step = "detach-device --live (NIC)";
    run.step(step);
    run.virsh(step, &["detach-device", &run.name, &xml, "--live"]);
    run.wait_for(
        step,
        "the NIC gone from domiflist",
        || has_nic() == Some(false),
        false,
    );
    if run.count("hotplug: ejected") != 2 {
        run.fail(step, &format!("the guest did not eject:\n{}", run.serial()));
    }
    run.expect_state(step, "running");

    let step = "destroy";
    run.step(step);
    if run.domstate() != "shut off" {
        run.virsh(step, &["destroy", &run.name]);
    }
    run.wait_for(step, "the emulator's exit", || !process_alive(pid), false);
    run.virsh("undefine", &["undefine", &run.name]);
    run.step("done");
}

#[test]
fn libvirt_hotplugs_a_disk_and_a_nic_on_pc() {
    hotplug_disk_and_nic("pc");
}

#[test]
fn libvirt_hotplugs_a_disk_and_a_nic_on_q35() {
    hotplug_disk_and_nic("q35");
}
