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
