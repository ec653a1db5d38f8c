//! `Catalog::place`: where devices would land (and their virtio mode) in a computed plan,
//! cold- or hot-plugged, without changing the plan.

mod common;

use common::{expect_eq, request, run_table};
use machine::{Catalog, DeviceRequest};

#[test]
fn placement_queries() {
    let c = Catalog::builtin();
    run_table(
        "place.tbl",
        include_str!("tables/place.tbl"),
        |left, want| {
            let (plan_req, dev) = left.split_once(" ;; ").ok_or("missing ;;")?;
            let plan = c
                .plan(&request(plan_req).map_err(|e| e.to_string())?)
                .map_err(|e| format!("plan: {e}"))?;
            let (hotplug, dev) = match dev.strip_prefix("hotplug ") {
                Some(d) => (true, d),
                None => (false, dev),
            };
            let req = DeviceRequest::parse(dev).map_err(|e| e.to_string())?;
            let before = plan.clone();
            let mut results = c.place(&plan, std::slice::from_ref(&req), hotplug);
            assert_eq!(plan, before, "place() changed the plan");
            let got = match results.remove(0) {
                Err(e) => e.to_string(),
                Ok(p) => {
                    let mut s = format!("{}:{:02x}.{:x}", p.bus, p.slot, p.function);
                    if let Some(m) = p.virtio {
                        let mut parts = Vec::new();
                        if m.legacy {
                            parts.push("legacy");
                        }
                        if m.modern {
                            parts.push("modern");
                        }
                        if m.pcie_capability {
                            parts.push("pcie");
                        }
                        s.push(' ');
                        s.push_str(&parts.join("+"));
                    }
                    s
                }
            };
            expect_eq(&got, want)
        },
    );
}

#[test]
fn queries_are_independent() {
    let c = Catalog::builtin();
    let plan = c.plan(&request("q35 -nodefaults").unwrap()).unwrap();
    let reqs = vec![
        DeviceRequest::parse("e1000").unwrap(),
        DeviceRequest::parse("e1000").unwrap(),
        DeviceRequest::parse("nope").unwrap(),
    ];
    let r = c.place(&plan, &reqs, false);
    assert_eq!(r[0].as_ref().unwrap().slot, 1);
    assert_eq!(r[1].as_ref().unwrap().slot, 1);
    assert_eq!(
        r[2].as_ref().unwrap_err().to_string(),
        "'nope' is not a valid device model name"
    );
    // A plan read back from JSON answers the same.
    let back: machine::Plan = serde_json::from_str(&serde_json::to_string(&plan).unwrap()).unwrap();
    assert_eq!(
        c.place(&back, &reqs[..1], false)[0].as_ref().unwrap().slot,
        1
    );
}

#[test]
fn pluggable_types_per_bus() {
    let c = Catalog::builtin();
    let plan = c
        .plan(&request("q35 -nodefaults -device pcie-root-port,id=rp,chassis=1").unwrap())
        .unwrap();
    let names = |bus: &str, hotplug: bool| -> Vec<String> {
        c.pluggable(&plan, bus, hotplug)
            .unwrap()
            .into_iter()
            .filter(|p| p.advisories.is_empty())
            .map(|p| p.type_name)
            .collect()
    };
    // libvirt-clean endpoints behind a root port: PCIe devices, not transitional virtio.
    let rp = names("rp", true);
    assert!(rp.contains(&"virtio-net-pci".to_string()));
    assert!(rp.contains(&"e1000e".to_string()));
    assert!(rp.contains(&"x3130-upstream".to_string()));
    assert!(!rp.contains(&"virtio-net-pci-transitional".to_string()));
    assert!(!rp.contains(&"e1000".to_string()));
    // Nothing can be hot-plugged on pcie.0; cold-plugged root ports are fine.
    assert!(c.pluggable(&plan, "pcie.0", true).unwrap().is_empty());
    assert!(names("pcie.0", false).contains(&"pcie-root-port".to_string()));
    assert_eq!(
        c.pluggable(&plan, "nope", false).unwrap_err().to_string(),
        "Bus 'nope' not found"
    );
    let vn = c
        .pluggable(&plan, "rp", false)
        .unwrap()
        .into_iter()
        .find(|p| p.type_name == "virtio-net-pci")
        .unwrap();
    assert!(!vn.virtio.unwrap().legacy);
}

/// `Catalog::hot_add` puts the device where `place` predicts and nowhere else; bridges are
/// refused; the mechanism and BSELs follow QEMU 7.2 (measured from its DSDT: q35 root ports
/// get BSELs in reverse creation order, pc's root bus is BSEL 0).
#[test]
fn hot_add_matches_the_prediction_and_mechanisms_follow_qemu() {
    let c = Catalog::builtin();
    let plan = c
        .plan(
            &request(
                "pc-q35-10.2 -nodefaults -device pcie-root-port,id=rp1,chassis=1,addr=1 \
                 -device pcie-root-port,id=rp2,chassis=2,addr=2",
            )
            .unwrap(),
        )
        .unwrap();
    assert_eq!(plan.acpi_hotplug_buses(), vec!["rp2", "rp1"]);
    assert_eq!(
        plan.hotplug_mechanism("rp1"),
        machine::HotplugMechanism::Acpi { bsel: 1 }
    );
    assert_eq!(
        plan.hotplug_mechanism("pcie.0"),
        machine::HotplugMechanism::None
    );
    let req = DeviceRequest::parse("virtio-rng-pci,id=r,bus=rp1").unwrap();
    let predicted = c
        .place(&plan, std::slice::from_ref(&req), true)
        .remove(0)
        .unwrap();
    let added = c.hot_add(&plan, &req).unwrap();
    let f = added.pci.last().unwrap();
    assert_eq!(
        (f.bus.as_str(), f.slot, f.function),
        (predicted.bus.as_str(), predicted.slot, predicted.function)
    );
    assert_eq!(added.pci.len(), plan.pci.len() + 1);
    assert_eq!(added.without_function(added.pci.len() - 1), plan);
    // A hot-added bridge brings its bus, handled by its own SHPC (ACPI takes cold-plugged
    // bridges only).
    let bridge = DeviceRequest::parse("pci-bridge,id=b,chassis_nr=3,bus=rp1").unwrap();
    let with_bridge = c.hot_add(&plan, &bridge).unwrap();
    let b = with_bridge.bus("b").unwrap();
    assert!(b.hotplugged && b.shpc);
    assert_eq!(b.parent_function, Some(with_bridge.pci.len() - 1));
    assert_eq!(
        with_bridge.hotplug_mechanism("b"),
        machine::HotplugMechanism::Shpc
    );
    assert_eq!(with_bridge.acpi_hotplug_buses(), plan.acpi_hotplug_buses());
    assert_eq!(
        with_bridge.without_function(with_bridge.pci.len() - 1),
        plan
    );

    let old = c
        .plan(&request("pc-q35-6.0 -nodefaults -device pcie-root-port,id=rp1,chassis=1").unwrap())
        .unwrap();
    assert!(old.acpi_hotplug_buses().is_empty());
    let shpc = c
        .plan(&request("pc-q35-6.0 -nodefaults -device pci-bridge,id=br,chassis_nr=1").unwrap())
        .unwrap();
    let req = DeviceRequest::parse("virtio-rng-pci,bus=br,addr=1").unwrap();
    let added = c.hot_add(&shpc, &req).unwrap();
    assert_eq!(added.pci.last().map(|f| f.slot), Some(1));
    assert_eq!(
        shpc.hotplug_mechanism("br"),
        machine::HotplugMechanism::Shpc
    );
    // shpc=off outside ACPI's buses: nothing announces a device there (QEMU 7.2's text).
    let off = c
        .plan(
            &request("pc-q35-6.0 -nodefaults -device pci-bridge,id=br,chassis_nr=1,shpc=off")
                .unwrap(),
        )
        .unwrap();
    assert_eq!(
        c.hot_add(&off, &req).unwrap_err().to_string(),
        "Bus 'br' does not support hotplugging"
    );
    assert_eq!(
        old.hotplug_mechanism("rp1"),
        machine::HotplugMechanism::Native
    );

    // QEMU 7.2's DSDT: a switch's upstream bus has a BSEL too (rp1 0, up 1, dn 2, pb 3).
    let sw = c
        .plan(
            &request(
                "pc-q35-10.2 -nodefaults -device pcie-root-port,id=rp1,chassis=1,addr=3 \
                 -device x3130-upstream,id=up,bus=rp1 \
                 -device xio3130-downstream,id=dn,bus=up,chassis=5 \
                 -device pcie-pci-bridge,id=pb,bus=dn",
            )
            .unwrap(),
        )
        .unwrap();
    assert_eq!(sw.acpi_hotplug_buses(), vec!["rp1", "up", "dn", "pb"]);

    let pc = c
        .plan(&request("pc -nodefaults -device pci-bridge,id=br,chassis_nr=1").unwrap())
        .unwrap();
    assert_eq!(pc.acpi_hotplug_buses(), vec!["pci.0", "br"]);
}

/// `-global PIIX4_PM.acpi-pci-hotplug-with-bridge-support=off` reaches the planner: pc's
/// root bus stays ACPI's, a cold-plugged bridge's bus gets its standard hot-plug controller
/// (and so refuses slot 0), as QEMU 7.2 does.
#[test]
fn a_global_turns_acpi_bridge_hotplug_off() {
    let c = Catalog::builtin();
    let mut req = request("pc -nodefaults -device pci-bridge,id=br,chassis_nr=1").unwrap();
    req.globals.push(machine::GlobalProperty {
        driver: "PIIX4_PM".into(),
        property: "acpi-pci-hotplug-with-bridge-support".into(),
        value: "off".into(),
    });
    let plan = c.plan(&req).unwrap();
    assert!(!plan.acpi_bridge_hotplug);
    assert_eq!(plan.acpi_hotplug_buses(), vec!["pci.0"]);
    assert_eq!(
        plan.hotplug_mechanism("br"),
        machine::HotplugMechanism::Shpc
    );
    let slot0 = DeviceRequest::parse("virtio-rng-pci,bus=br").unwrap();
    assert_eq!(
        c.hot_add(&plan, &slot0).unwrap_err().to_string(),
        "Unsupported PCI slot 0 for standard hotplug controller. Valid slots are between 1 and 31."
    );
}
