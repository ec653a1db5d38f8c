//! virtio-pci config space against QEMU through qtest (issue 5): virtio-net, -blk, -rng and
//! -serial as transitional devices on pc `pci.0`, q35 `pcie.0` and behind pcie-pci-bridge /
//! pci-bridge; modern-only behind pcie-root-port and xio3130-downstream;
//! `disable-legacy=off` behind a root port (I/O BAR back, PCIe capability kept);
//! `-non-transitional` (modern-only, no PCIe capability on a root bus) and `-transitional`.
//!
//! The expectations (`tests/data/qtest_virtio.json`) are QEMU 7.2's, from
//! `tests/src/bin/gen_expectations.rs`. Two checks: every register the walk reads matches QEMU
//! (IDs, revision, subsystem, class, BAR kinds and sizes, capability offsets, the virtio
//! vendor capabilities' cfg_type/BAR/offset/length bytes, the whole 256-byte header), and the
//! placement rules of QEMU's `virtio_pci_realize` hold, spelled out per BDF, both in the
//! oracle data and in machina.

mod common;

use common::{machina, require_kvm};
use machina_tests::config_walk::{
    assert_no_mismatches, assert_only_known, for_all_scenarios, reset_state_mismatches, substitute,
    Mismatch,
};
use machina_tests::qtest_client::Qtest;
use machina_tests::TempDir;
use serde_json::Value;
use std::sync::OnceLock;

const DATA: &str = include_str!("data/qtest_virtio.json");
const KNOWN: &str = include_str!("data/machina_known_mismatches.json");

fn scenarios() -> Vec<Value> {
    let data: Value = serde_json::from_str(DATA).expect("qtest_virtio.json");
    data["scenarios"].as_array().expect("scenarios").clone()
}

/// Backing files for virtio-blk (`-blockdev driver=file,...,filename={disk}N`), removed
/// with their folder.
struct Disks(TempDir);

impl Disks {
    fn new(name: &str) -> Disks {
        let dir = TempDir::new(&format!("qtest-virtio-{name}"));
        for n in 0..16 {
            let f = std::fs::File::create(dir.join(format!("disk{n}"))).unwrap();
            f.set_len(1 << 20).unwrap();
        }
        Disks(dir)
    }

    /// Disks of their own for scenario `s`: scenarios run in parallel, and a machina (like
    /// QEMU) refuses an image another process has open for writing.
    fn for_scenario(tag: &str, s: &Value) -> Disks {
        let name: String = s["name"]
            .as_str()
            .unwrap_or("?")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        Disks::new(&format!("{tag}-{name}"))
    }

    fn base(&self) -> String {
        self.0.join("disk").display().to_string()
    }
}

/// Every scenario's reset state against QEMU; walked once per test binary, read by the
/// tolerant and the strict test.
fn reset_state_all() -> Vec<Mismatch> {
    static ALL: OnceLock<Vec<Mismatch>> = OnceLock::new();
    ALL.get_or_init(|| {
        for_all_scenarios(&scenarios(), |s| {
            reset_state_mismatches(&machina(), s, &Disks::for_scenario("regs", s).base())
        })
    })
    .clone()
}

#[test]
fn virtio_reset_state_matches_qemu() {
    if !require_kvm() {
        return;
    }
    assert_only_known("virtio reset state", reset_state_all(), KNOWN, "config");
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Legacy + modern: legacy device ID, revision 0, subsystem = virtio type, I/O BAR0.
    Transitional,
    /// Modern only: 0x1040 + type, revision 1, subsystem 1af4:1100, no I/O BAR.
    Modern,
}
use Mode::*;

/// Where gen_expectations put each placement (BDFs after depth-first numbering), what QEMU
/// makes of it, and whether it has a PCIe capability (only on a non-root PCIe bus).
const Q35_PLACEMENTS: &[(&str, Mode, bool, &str)] = &[
    ("00:03.0", Transitional, false, "pcie.0"),
    ("00:04.0", Modern, false, "pcie.0 -non-transitional"),
    ("00:05.0", Transitional, false, "pcie.0 -transitional"),
    (
        "01:00.0",
        Modern,
        true,
        "behind pcie-root-port: legacy disabled",
    ),
    (
        "02:00.0",
        Transitional,
        true,
        "behind pcie-root-port, disable-legacy=off",
    ),
    (
        "03:00.0",
        Modern,
        true,
        "behind pcie-root-port -non-transitional",
    ),
    (
        "04:00.0",
        Transitional,
        true,
        "behind pcie-root-port -transitional",
    ),
    (
        "07:00.0",
        Modern,
        true,
        "behind xio3130-downstream: legacy disabled",
    ),
    ("09:01.0", Transitional, false, "behind pcie-pci-bridge"),
    (
        "0b:02.0",
        Transitional,
        false,
        "behind i82801b11-bridge + pci-bridge",
    ),
];
const PC_PLACEMENTS: &[(&str, Mode, bool, &str)] = &[
    ("00:03.0", Transitional, false, "pci.0"),
    ("00:04.0", Modern, false, "pci.0 -non-transitional"),
    ("00:05.0", Transitional, false, "pci.0 -transitional"),
    ("00:06.0", Modern, false, "pci.0 disable-legacy=on"),
    ("01:01.0", Transitional, false, "behind pci-bridge"),
];

/// (legacy device ID, virtio device type, class code, legacy I/O BAR size).
fn virtio_ids(name: &str) -> (u64, u64, u64, u64) {
    match name.split('_').next().unwrap() {
        "virtio-net-pci" => (0x1000, 1, 0x02_0000, 0x20),
        // 24 bytes of legacy header + 60 of virtio-blk config (discard, write zeroes): 0x80.
        "virtio-blk-pci" => (0x1001, 2, 0x01_0000, 0x80),
        "virtio-serial-pci" => (0x1003, 3, 0x07_8000, 0x40),
        "virtio-rng-pci" => (0x1005, 4, 0x00_ff00, 0x20),
        other => panic!("unknown virtio type {other}"),
    }
}

fn bar(f: &Value, reg: u64) -> &Value {
    f["bars"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["reg"] == reg)
        .unwrap_or(&Value::Null)
}

/// The rules of QEMU's virtio-pci placement, on one scenario's functions. Returns failures.
fn check_rules(name: &str, functions: &[Value], who: &str) -> Vec<String> {
    let (legacy_id, vtype, class, io_size) = virtio_ids(name);
    let placements = if name.ends_with("_q35") {
        Q35_PLACEMENTS
    } else {
        PC_PLACEMENTS
    };
    let mut errors = Vec::new();
    let virtio: Vec<&Value> = functions.iter().filter(|f| f["vendor"] == 0x1af4).collect();
    if virtio.len() != placements.len() {
        errors.push(format!(
            "{who} {name}: {} virtio functions, expected {}",
            virtio.len(),
            placements.len()
        ));
    }
    for &(bdf, mode, pcie, what) in placements {
        let Some(f) = virtio.iter().find(|f| f["bdf"] == bdf) else {
            errors.push(format!("{who} {name} {bdf} ({what}): missing"));
            continue;
        };
        let mut check = |ok: bool, rule: &str| {
            if !ok {
                errors.push(format!(
                    "{who} {name} {bdf} ({what}, {mode:?}): {rule}: {f}"
                ));
            }
        };
        let (dev, rev, sub) = match mode {
            Transitional => (legacy_id, 0, vtype),
            Modern => (0x1040 + vtype, 1, 0x1100),
        };
        check(f["device"] == dev, &format!("device ID {dev:#x}"));
        check(f["revision"] == rev, &format!("revision {rev}"));
        check(
            f["subsystem_vendor"] == 0x1af4 && f["subsystem"] == sub,
            &format!("subsystem 1af4:{sub:04x}"),
        );
        check(f["class"] == class, &format!("class {class:06x}"));
        check(f["interrupt_pin"] == 1, "INTA#");
        let b0 = bar(f, 0x10);
        match mode {
            Transitional => check(
                b0["kind"] == "io" && b0["size"] == io_size,
                &format!("BAR0 I/O {io_size:#x}"),
            ),
            Modern => check(b0["kind"] == "none", "no legacy I/O BAR"),
        }
        let b1 = bar(f, 0x14);
        check(
            b1["kind"] == "mem32" && b1["size"] == 0x1000,
            "BAR1 4 KiB MSI-X",
        );
        let b4 = bar(f, 0x20);
        check(
            b4["kind"] == "mem64" && b4["prefetch"] == true && b4["size"] == 0x4000,
            "BAR4 64-bit prefetchable 16 KiB",
        );
        let caps: Vec<(u64, u64)> = f["caps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c[0].as_u64().unwrap(), c[1].as_u64().unwrap()))
            .collect();
        let has = |id: u64| caps.iter().any(|c| c.1 == id);
        check(
            has(0x10) == pcie,
            &format!(
                "PCIe capability {}",
                if pcie { "present" } else { "absent" }
            ),
        );
        check(has(0x01) == pcie, "PM capability exactly with PCIe");
        check(has(0x11), "MSI-X capability");
        if pcie {
            let flags = f["cap_fields"]["0x40"][0].as_u64().unwrap_or(0);
            check(caps.contains(&(0x40, 0x10)), "PCIe capability at 0x40");
            check(caps.contains(&(0x7c, 0x01)), "PM capability at 0x7c");
            check(flags & 0xf0 == 0, "PCIe device/port type 0 (endpoint)");
        }
        // virtio vendor capabilities: common, ISR, device, notify, PCI cfg access, in order.
        let vendor: Vec<&str> = caps
            .iter()
            .filter(|c| c.1 == 0x09)
            .map(|c| {
                f["cap_fields"][format!("0x{:02x}", c.0)]
                    .as_str()
                    .unwrap_or("")
            })
            .collect();
        let types: Vec<&str> = vendor.iter().map(|h| h.get(6..8).unwrap_or("")).collect();
        // The list is walked from 0x34, which points at the last one added.
        check(
            types == ["05", "02", "04", "03", "01"],
            "vendor caps cfg_type 5,2,4,3,1 from the list head",
        );
        for h in &vendor {
            let cfg = &h[6..8];
            let barn = &h[8..10];
            let offset = h.get(16..24).unwrap_or("");
            let length = h.get(24..32).unwrap_or("");
            let (e_bar, e_off, e_len) = match cfg {
                "01" => ("04", "00000000", "00100000"),
                "03" => ("04", "00100000", "00100000"),
                "04" => ("04", "00200000", "00100000"),
                "02" => ("04", "00300000", "00100000"),
                _ => ("00", "00000000", "00000000"),
            };
            check(
                barn == e_bar && offset == e_off && length == e_len,
                &format!("vendor cap type {cfg}: BAR {e_bar}, offset/length {e_off}/{e_len} (LE)"),
            );
            if cfg == "02" {
                check(h.get(32..40) == Some("04000000"), "notify_off_multiplier 4");
            }
        }
    }
    errors
}

/// The rules hold in the oracle data (so the data is what QEMU's virtio_pci_realize says)
/// and in machina.
#[test]
fn virtio_placements_follow_qemu_rules() {
    let mut errors = Vec::new();
    for s in scenarios() {
        errors.extend(check_rules(
            s["name"].as_str().unwrap(),
            s["functions"].as_array().unwrap(),
            "QEMU",
        ));
    }
    assert!(
        errors.is_empty(),
        "the oracle data breaks the rules:\n{}",
        errors.join("\n")
    );
    if !require_kvm() {
        return;
    }
    let scenarios = scenarios();
    let errors: Vec<String> = std::thread::scope(|sc| {
        let handles: Vec<_> = scenarios
            .iter()
            .map(|s| {
                sc.spawn(move || {
                    let disks = Disks::for_scenario("rules", s);
                    let args = substitute(s["args"].as_array().unwrap(), &disks.base());
                    let mut q = Qtest::start(&machina(), &args);
                    let (_, functions) = q.walk(s["q35"].as_bool().unwrap());
                    check_rules(s["name"].as_str().unwrap(), &functions, "machina")
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(
        errors.is_empty(),
        "machina breaks QEMU's virtio placement rules:\n{}",
        errors.join("\n")
    );
}

/// The reset state with no known differences tolerated.
#[test]
fn strict_virtio_conformance() {
    if !require_kvm() {
        return;
    }
    assert_no_mismatches("strict virtio", &reset_state_all());
}
