//! Table-driven plan tests: each table under `tests/tables/` pairs a command-line-like
//! request with what the plan must contain (or the exact QEMU error).

mod common;

use common::{expect_eq, request, run_table};
use machine::{Catalog, Plan, PlanError};

fn plan(req: &str) -> Result<Plan, PlanError> {
    Catalog::builtin().plan(&request(req)?)
}

fn ok(req: &str) -> Result<Plan, String> {
    plan(req).map_err(|e| format!("unexpected error: {e}"))
}

fn or_none(v: Vec<String>, sep: &str) -> String {
    if v.is_empty() {
        "(none)".to_string()
    } else {
        v.join(sep)
    }
}

#[test]
fn implicit_topology_and_placement() {
    run_table(
        "topology.tbl",
        include_str!("tables/topology.tbl"),
        |req, want| expect_eq(&or_none(ok(req)?.pci_summary(), "; "), want),
    );
}

#[test]
fn qemu_error_texts() {
    run_table(
        "errors.tbl",
        include_str!("tables/errors.tbl"),
        |req, want| match plan(req) {
            Ok(p) => Err(format!("planned instead of failing: {:?}", p.pci_summary())),
            Err(e) => expect_eq(&e.to_string(), want),
        },
    );
}

#[test]
fn virtio_modes() {
    run_table(
        "virtio.tbl",
        include_str!("tables/virtio.tbl"),
        |req, want| {
            let p = ok(req)?;
            let f = p.pci.last().ok_or("no PCI function")?;
            let m = f.virtio.ok_or("not a virtio function")?;
            let i = f.identity;
            let got = format!(
                "{} {} {} {:04x}:{:04x} rev {} subsys {:04x}:{:04x} class {:06x}",
                if m.legacy { "legacy" } else { "-" },
                if m.modern { "modern" } else { "-" },
                if m.pcie_capability { "pcie-cap" } else { "-" },
                i.vendor_id,
                i.device_id,
                i.revision,
                i.subsystem_vendor_id.unwrap_or(0),
                i.subsystem_id.unwrap_or(0),
                i.class_code
            );
            expect_eq(&got, want)
        },
    );
}

#[test]
fn memory_split_and_holes() {
    run_table(
        "memory.tbl",
        include_str!("tables/memory.tbl"),
        |req, want| {
            let m = ok(req)?.memory;
            let got = format!(
                "below={:#x} above={:#x} hole32={:#x}+{:#x} hole64={:#x}+{:#x} ecam={}",
                m.ram_below_4g,
                m.ram_above_4g,
                m.pci_hole32.base,
                m.pci_hole32.size,
                m.pci_hole64.base,
                m.pci_hole64.size,
                m.ecam
                    .map(|e| format!("{:#x}+{:#x}", e.base, e.size))
                    .unwrap_or_else(|| "-".to_string())
            );
            expect_eq(&got, want)
        },
    );
}

#[test]
fn memory_regions_and_e820() {
    run_table(
        "regions.tbl",
        include_str!("tables/regions.tbl"),
        |req, want| {
            if let Some(r) = req.strip_prefix("e820 ") {
                let got: Vec<String> = ok(r)?
                    .e820()
                    .iter()
                    .map(|e| format!("{:#x}+{:#x} {}", e.base, e.size, e.kind))
                    .collect();
                return expect_eq(&got.join("; "), want);
            }
            let got: Vec<String> = ok(req)?
                .memory
                .regions
                .iter()
                .map(|r| {
                    let kind = serde_json::to_value(r.kind).unwrap_or_default();
                    format!(
                        "{} {} {:#x}+{:#x}",
                        r.name,
                        kind.as_str().unwrap_or("?"),
                        r.range.base,
                        r.range.size
                    )
                })
                .collect();
            expect_eq(&got.join("; "), want)
        },
    );
}

#[test]
fn isa_devices() {
    run_table("isa.tbl", include_str!("tables/isa.tbl"), |req, want| {
        expect_eq(&or_none(ok(req)?.isa_summary(), " "), want)
    });
}

#[test]
fn isa_resources() {
    run_table(
        "isa-resources.tbl",
        include_str!("tables/isa-resources.tbl"),
        |left, want| {
            let (req, sel) = left.rsplit_once(' ').ok_or("no TYPE@N")?;
            let (ty, n) = sel.split_once('@').ok_or("no @")?;
            let n: usize = n.parse().map_err(|_| "bad index")?;
            let p = ok(req)?;
            let d = p
                .isa
                .iter()
                .filter(|d| d.type_name == ty)
                .nth(n)
                .ok_or_else(|| format!("no {ty} #{n}"))?;
            let ranges = |v: &[machine::Range]| {
                or_none(
                    v.iter()
                        .map(|r| format!("{:#x}+{:#x}", r.base, r.size))
                        .collect(),
                    ",",
                )
                .replace("(none)", "-")
            };
            let irqs =
                or_none(d.irqs.iter().map(|i| i.to_string()).collect(), ",").replace("(none)", "-");
            let got = format!(
                "io {}; irq {}; mmio {}",
                ranges(&d.io),
                irqs,
                ranges(&d.mmio)
            );
            expect_eq(&got, want)
        },
    );
}

#[test]
fn resolved_options() {
    run_table(
        "options.tbl",
        include_str!("tables/options.tbl"),
        |req, want| {
            let p = ok(req)?;
            for pair in want.split("; ") {
                let (k, v) = pair.split_once('=').ok_or("bad pair")?;
                let got = p.options.text(k).unwrap_or_else(|| "<unset>".to_string());
                if got != v {
                    return Err(format!("{k}: want {v}, got {got}"));
                }
            }
            Ok(())
        },
    );
}

#[test]
fn compat_and_device_properties() {
    run_table(
        "compat.tbl",
        include_str!("tables/compat.tbl"),
        |req, want| {
            let p = ok(req)?;
            for pair in want.split("; ") {
                let (key, v) = pair.split_once('=').ok_or("bad pair")?;
                let (ty, prop) = key.split_once('.').ok_or("bad key")?;
                let f = p
                    .pci
                    .iter()
                    .find(|f| f.type_name == ty)
                    .ok_or_else(|| format!("no {ty} in plan"))?;
                let got = f
                    .properties
                    .text(prop)
                    .unwrap_or_else(|| "<unset>".to_string());
                if got != v {
                    return Err(format!("{key}: want {v}, got {got}"));
                }
            }
            Ok(())
        },
    );
}

#[test]
fn advisories() {
    run_table(
        "advisories.tbl",
        include_str!("tables/advisories.tbl"),
        |req, want| {
            let got: Vec<String> = ok(req)?.advisories.into_iter().map(|a| a.message).collect();
            expect_eq(&or_none(got, "; "), want)
        },
    );
}

#[test]
fn every_machine_type_plans_with_and_without_defaults() {
    let c = Catalog::builtin();
    assert_eq!(c.machine_types().len(), 37);
    for m in c.machine_types() {
        for nodefaults in [false, true] {
            let mut r = machine::PlanRequest::new(&m.name);
            r.nodefaults = nodefaults;
            let p = c.plan(&r).unwrap_or_else(|e| panic!("{}: {e}", m.name));
            assert_eq!(p.machine, m.name);
            assert_eq!(p.family, m.family);
            // Every function sits on a bus of the plan, at most once per devfn.
            let mut seen = std::collections::HashSet::new();
            for f in &p.pci {
                assert!(p.bus(&f.bus).is_some(), "{}: bus {}", m.name, f.bus);
                assert!(seen.insert((f.bus.clone(), f.devfn())), "{}: twice", m.name);
            }
        }
    }
}

#[test]
fn plan_json_roundtrip() {
    let p = plan(
        "q35 -nodefaults -device pcie-root-port,id=rp1,chassis=1 -device virtio-net-pci,bus=rp1,id=net0",
    )
    .unwrap();
    let text = serde_json::to_string(&p).unwrap();
    let back: Plan = serde_json::from_str(&text).unwrap();
    assert_eq!(back, p);
    let net = back.function_by_id("net0").unwrap();
    assert_eq!((net.bus.as_str(), net.slot, net.function), ("rp1", 0, 0));
    let rp = back.bus("rp1").unwrap();
    assert_eq!(
        (rp.slot_min, rp.slot_max, rp.hotplug, rp.port),
        (0, 0, true, true)
    );
    assert_eq!(rp.parent_function, Some(4));
    assert_eq!(back.pci[4].provides_bus.as_deref(), Some("rp1"));
    assert!(!back.bus("pcie.0").unwrap().hotplug);
}
