//! PCI config-space conformance with QEMU through the qtest protocol (issue 4).
//!
//! Every scenario of `tests/data/qtest_config.json` (q35/pc with -nodefaults, machine
//! options, every bridge and port type, nested) is started as `machina -accel qtest`, walked
//! with the walk `tests/src/bin/gen_expectations.rs` ran on QEMU 7.2, and compared register by
//! register: the reset-state facts (PCIEXBAR, PM base, bridges' bus numbers), then for every
//! function BDF, IDs, revision, class, header type, subsystem, interrupt pin, capability
//! lists (standard, and extended through ECAM on q35), capability identity fields, BAR/ROM
//! and bridge-window probes, and the whole 256-byte header.
//!
//! After `machina_firmware_init` the bus numbers, interrupt lines, command decode bits and
//! chipset registers are compared with what SeaBIOS programmed under QEMU, and every BAR
//! must be assigned inside its windows without overlaps.
//!
//! Differences machina is known to have are listed in
//! `tests/data/machina_known_mismatches.json` (empty today); the tests above report them,
//! and the `strict_*` test fails on them.

mod common;

use common::{machina, require_kvm};
use machina_tests::config_walk::{
    assert_no_mismatches, assert_only_known, for_all_scenarios, oracle_args,
    reset_state_mismatches, Mismatch,
};
use machina_tests::qtest_client::{Bdf, Qtest};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::OnceLock;

const DATA: &str = include_str!("data/qtest_config.json");
const KNOWN: &str = include_str!("data/machina_known_mismatches.json");

fn scenarios() -> Vec<Value> {
    let data: Value = serde_json::from_str(DATA).expect("qtest_config.json");
    data["scenarios"].as_array().expect("scenarios").clone()
}

fn parse_bdf(s: &str) -> Bdf {
    let b = u8::from_str_radix(&s[0..2], 16).unwrap();
    let d = u8::from_str_radix(&s[3..5], 16).unwrap();
    let f = u8::from_str_radix(&s[6..7], 16).unwrap();
    (b, d, f)
}

fn mismatch(
    scenario: &Value,
    bdf: &str,
    device: &str,
    field: String,
    e: Value,
    a: Value,
) -> Mismatch {
    Mismatch {
        scenario: scenario["name"].as_str().unwrap_or("?").into(),
        bdf: bdf.into(),
        device: device.into(),
        field,
        expected: e,
        actual: a,
    }
}

/// Every scenario's reset state against QEMU; walked once per test binary, read by the
/// tolerant and the strict test.
fn reset_state_all() -> Vec<Mismatch> {
    static ALL: OnceLock<Vec<Mismatch>> = OnceLock::new();
    ALL.get_or_init(|| {
        for_all_scenarios(&scenarios(), |s| reset_state_mismatches(&machina(), s, ""))
    })
    .clone()
}

/// Every scenario after `machina_firmware_init` against SeaBIOS (once per test binary).
fn firmware_all() -> Vec<Mismatch> {
    static ALL: OnceLock<Vec<Mismatch>> = OnceLock::new();
    ALL.get_or_init(|| for_all_scenarios(&scenarios(), firmware_mismatches))
        .clone()
}

/// The reset state, every register the walk reads, against QEMU.
#[test]
fn reset_state_matches_qemu() {
    if !require_kvm() {
        return;
    }
    assert_only_known("reset state", reset_state_all(), KNOWN, "config");
}

/// The reset-state facts spelled out (QEMU's values, also in the data): PCIEXBAR at
/// 0xb0000000 with the enable bit clear, PM base 0x1 (only the I/O space bit), bridges
/// unnumbered, BARs zero.
#[test]
fn reset_state_facts() {
    if !require_kvm() {
        return;
    }
    for s in scenarios() {
        let name = s["name"].as_str().unwrap();
        let q35 = s["q35"].as_bool().unwrap();
        // The oracle agrees with the literals below.
        if q35 {
            assert_eq!(s["facts"]["pciexbar"], json!(0xb000_0000u32), "{name}");
        }
        if s["facts"].get("pmbase").is_some() {
            assert_eq!(s["facts"]["pmbase"], json!(1), "{name}");
        }
        let args: Vec<String> = s["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        let mut q = Qtest::start(&machina(), &oracle_args(&args));
        if q35 {
            assert_eq!(
                q.cfg_read((0, 0, 0), 0x60, 4),
                0xb000_0000,
                "{name}: PCIEXBAR"
            );
            assert_eq!(q.cfg_read((0, 0, 0), 0x64, 4), 0, "{name}: PCIEXBAR high");
            assert_eq!(q.cfg_read((0, 0x1f, 0), 0x40, 4), 1, "{name}: ICH9 PMBASE");
            // ECAM is not decoded yet: nothing answers at 0xb0000000 with the MCH's ID.
            assert_ne!(q.value("readl 0xb0000000"), 0x29c0_8086, "{name}: ECAM off");
        } else if q.present((0, 1, 3)) {
            assert_eq!(q.cfg_read((0, 1, 3), 0x40, 4), 1, "{name}: PIIX4 PMBA");
        }
        for bdf in q.scan_bus(0) {
            if q.is_bridge(bdf) {
                assert_eq!(
                    q.cfg_read(bdf, 0x18, 4) & 0xff_ffff,
                    0,
                    "{name} {bdf:?}: bridge bus numbers at reset"
                );
            }
        }
        for f in s["functions"].as_array().unwrap() {
            let bdf = parse_bdf(f["bdf"].as_str().unwrap());
            if bdf.0 != 0 {
                continue; // not reachable before numbering
            }
            for bar in f["bars"].as_array().unwrap() {
                if bar["kind"] == "none" {
                    continue;
                }
                let reg = bar["reg"].as_u64().unwrap() as u16;
                let v = q.cfg_read(bdf, reg, 4);
                let addr = if bar["kind"] == "io" {
                    v & !3
                } else {
                    v & !0xf
                };
                let addr = if reg == 0x30 || reg == 0x38 {
                    v & !0x7ff
                } else {
                    addr
                };
                assert_eq!(addr, 0, "{name} {bdf:?} BAR {reg:#x} at reset");
            }
        }
    }
}

/// The firmware step's headline facts spelled out (SeaBIOS's values, also in the data):
/// ECAM enabled at 0xb0000000, PM base 0x600 enabled (0x601), bridges numbered depth-first.
#[test]
fn firmware_init_facts() {
    if !require_kvm() {
        return;
    }
    for s in scenarios() {
        let name = s["name"].as_str().unwrap();
        let q35 = s["q35"].as_bool().unwrap();
        let args: Vec<String> = s["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        let mut q = Qtest::start(&machina(), &oracle_args(&args));
        assert_eq!(q.cmd("machina_firmware_init"), "OK", "{name}");
        if q35 {
            assert_eq!(
                q.cfg_read((0, 0, 0), 0x60, 4),
                0xb000_0001,
                "{name}: PCIEXBAR"
            );
            assert_eq!(
                q.ecam_read((0, 0, 0), 0),
                0x29c0_8086,
                "{name}: MCH through ECAM"
            );
            assert_eq!(
                q.cfg_read((0, 0x1f, 0), 0x40, 4),
                0x601,
                "{name}: ICH9 PMBASE"
            );
        } else if q.present((0, 1, 3)) {
            assert_eq!(q.cfg_read((0, 1, 3), 0x40, 4), 0x601, "{name}: PIIX4 PMBA");
        }
        // Depth-first in devfn order: a bridge's secondary is the next number, its
        // subordinate the last bus numbered below it.
        let mut next = 1u32;
        check_dfs(&mut q, name, 0, &mut next);
        let bridges = s["functions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["header_type"].as_u64().unwrap() & 0x7f == 1)
            .count();
        assert_eq!(next - 1, bridges as u32, "{name}: every bridge numbered");
    }
}

fn check_dfs(q: &mut Qtest, name: &str, bus: u8, next: &mut u32) {
    for bdf in q.scan_bus(bus) {
        if !q.is_bridge(bdf) {
            continue;
        }
        let v = q.cfg_read(bdf, 0x18, 4);
        let (pri, sec, sub) = (v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff);
        assert_eq!(pri, u32::from(bus), "{name} {bdf:?}: primary bus");
        assert_eq!(sec, *next, "{name} {bdf:?}: secondary bus");
        *next += 1;
        check_dfs(q, name, sec as u8, next);
        assert_eq!(sub, *next - 1, "{name} {bdf:?}: subordinate bus");
    }
}

/// (base, limit) of a bridge window; None when closed.
fn window(q: &mut Qtest, bdf: Bdf, kind: &str) -> Option<(u64, u64)> {
    let (base, limit) = match kind {
        "io" => {
            let lo = q.cfg_read(bdf, 0x1c, 2);
            let hi = q.cfg_read(bdf, 0x30, 4);
            (
                u64::from(lo & 0xf0) << 8 | u64::from(hi & 0xffff) << 16,
                u64::from(lo & 0xf000) | 0xfff | u64::from(hi >> 16) << 16,
            )
        }
        "mem" => {
            let v = q.cfg_read(bdf, 0x20, 4);
            (
                u64::from(v & 0xfff0) << 16,
                u64::from(v & 0xfff0_0000) | 0xf_ffff,
            )
        }
        _ => {
            let v = q.cfg_read(bdf, 0x24, 4);
            let (bh, lh) = if v & 1 != 0 {
                (q.cfg_read(bdf, 0x28, 4), q.cfg_read(bdf, 0x2c, 4))
            } else {
                (0, 0)
            };
            (
                u64::from(v & 0xfff0) << 16 | u64::from(bh) << 32,
                (u64::from(v & 0xfff0_0000) | 0xf_ffff) | u64::from(lh) << 32,
            )
        }
    };
    (base <= limit).then_some((base, limit))
}

/// After `machina_firmware_init`: what SeaBIOS programmed under QEMU (bus numbers, chipset
/// registers, interrupt lines, I/O+memory+SERR decode), and BARs assigned inside windows.
fn firmware_mismatches(s: &Value) -> Vec<Mismatch> {
    let args: Vec<String> = s["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let q35 = s["q35"].as_bool().unwrap();
    let mut q = Qtest::start(&machina(), &oracle_args(&args));
    assert_eq!(q.cmd("machina_firmware_init"), "OK", "{args:?}");
    let mut out = Vec::new();
    let fw = &s["firmware"];
    for reg in fw["regs"].as_array().unwrap() {
        let bdf_s = reg[0].as_str().unwrap();
        let (off, size) = (
            reg[1].as_u64().unwrap() as u16,
            reg[2].as_u64().unwrap() as u8,
        );
        let got = q.cfg_read(parse_bdf(bdf_s), off, size);
        if json!(got) != reg[3] {
            out.push(mismatch(
                s,
                bdf_s,
                "*",
                format!("firmware.reg[0x{off:02x}]"),
                reg[3].clone(),
                json!(got),
            ));
        }
    }
    let expected_fns = fw["functions"].as_object().unwrap();
    let devices: BTreeMap<String, String> = s["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["bdf"].as_str().unwrap().to_string(),
                format!(
                    "{:04x}:{:04x}",
                    f["vendor"].as_u64().unwrap(),
                    f["device"].as_u64().unwrap()
                ),
            )
        })
        .collect();
    let found: Vec<String> = q
        .all_functions()
        .into_iter()
        .map(machina_tests::qtest_client::fmt_bdf)
        .collect();
    let expected_bdfs: Vec<String> = expected_fns.keys().cloned().collect();
    if found != expected_bdfs {
        out.push(mismatch(
            s,
            "-",
            "*",
            "firmware.functions".into(),
            json!(expected_bdfs),
            json!(found),
        ));
        return out;
    }
    for (bdf_s, e) in expected_fns {
        let bdf = parse_bdf(bdf_s);
        let dev = devices.get(bdf_s).cloned().unwrap_or_default();
        let cmd = q.cfg_read(bdf, 4, 2);
        let e_cmd = e["command"].as_u64().unwrap() as u32;
        if cmd & 0x103 != e_cmd & 0x103 {
            out.push(mismatch(
                s,
                bdf_s,
                &dev,
                "firmware.command&0x103".into(),
                json!(e_cmd & 0x103),
                json!(cmd & 0x103),
            ));
        }
        let line = q.cfg_read(bdf, 0x3c, 1);
        if json!(line) != e["interrupt_line"] {
            out.push(mismatch(
                s,
                bdf_s,
                &dev,
                "firmware.interrupt_line".into(),
                e["interrupt_line"].clone(),
                json!(line),
            ));
        }
        if let Some(bus) = e.get("bus_numbers") {
            let got = q.cfg_read(bdf, 0x18, 4) & 0xff_ffff;
            if json!(got) != *bus {
                out.push(mismatch(
                    s,
                    bdf_s,
                    &dev,
                    "firmware.bus_numbers".into(),
                    bus.clone(),
                    json!(got),
                ));
            }
        }
    }
    out.extend(bar_placement(&mut q, s, q35, &devices));
    out
}

/// Every BAR QEMU's device has is assigned (non-zero), aligned to its size, inside the
/// PCI hole / I/O range and inside every window on the way from the root, and no two
/// overlap.
fn bar_placement(
    q: &mut Qtest,
    s: &Value,
    q35: bool,
    devices: &BTreeMap<String, String>,
) -> Vec<Mismatch> {
    let mut out = Vec::new();
    // secondary bus -> bridge
    let mut parent: BTreeMap<u8, Bdf> = BTreeMap::new();
    for f in s["functions"].as_array().unwrap() {
        let bdf = parse_bdf(f["bdf"].as_str().unwrap());
        if f["header_type"].as_u64().unwrap() & 0x7f == 1 {
            parent.insert(q.cfg_read(bdf, 0x19, 1) as u8, bdf);
        }
    }
    let mut placed: Vec<(String, &'static str, u64, u64)> = Vec::new();
    for f in s["functions"].as_array().unwrap() {
        let bdf_s = f["bdf"].as_str().unwrap();
        let bdf = parse_bdf(bdf_s);
        let dev = devices.get(bdf_s).cloned().unwrap_or_default();
        for bar in f["bars"].as_array().unwrap() {
            let kind = bar["kind"].as_str().unwrap();
            let reg = bar["reg"].as_u64().unwrap() as u16;
            if kind == "none" || kind == "rom" {
                continue;
            }
            let size = bar["size"].as_u64().unwrap();
            let lo = q.cfg_read(bdf, reg, 4);
            let addr = match kind {
                "io" => u64::from(lo & !3),
                "mem64" => u64::from(lo & !0xf) | u64::from(q.cfg_read(bdf, reg + 4, 4)) << 32,
                _ => u64::from(lo & !0xf),
            };
            let space: &'static str = match kind {
                "io" => "io",
                _ if bar["prefetch"].as_bool().unwrap_or(false) => "pref",
                _ => "mem",
            };
            let mut bad = |why: String| {
                out.push(mismatch(
                    s,
                    bdf_s,
                    &dev,
                    format!("firmware.bar[0x{reg:02x}]"),
                    json!(why),
                    json!(format!("{addr:#x} size {size:#x}")),
                ));
            };
            if addr == 0 {
                bad("assigned".into());
                continue;
            }
            if addr & (size - 1) != 0 {
                bad("aligned to its size".into());
            }
            let end = addr + size - 1;
            let in_hole = match kind {
                // SeaBIOS itself puts the SMBus at 0x700 (pm_base + 0x100).
                "io" => (0x400..=0xffff).contains(&addr) && end <= 0xffff,
                _ if addr >= 1 << 32 => true,
                _ => {
                    addr >= 0x0800_0000 // above the 128 MiB of RAM
                        && end < 0xfec0_0000
                        && !(q35 && addr < 0xc000_0000 && end >= 0xb000_0000)
                }
            };
            if !in_hole {
                bad("inside the PCI hole (I/O 0x400-0xffff; memory above RAM, below 0xfec00000, outside ECAM)".into());
            }
            // Every bridge up to the root must forward it.
            let mut bus = bdf.0;
            while let Some(&br) = parent.get(&bus) {
                let ok = match space {
                    "io" => window(q, br, "io").is_some_and(|(b, l)| b <= addr && end <= l),
                    "mem" => window(q, br, "mem").is_some_and(|(b, l)| b <= addr && end <= l),
                    // Prefetchable BARs may sit in either memory window.
                    _ => [window(q, br, "pref"), window(q, br, "mem")]
                        .into_iter()
                        .flatten()
                        .any(|(b, l)| b <= addr && end <= l),
                };
                if !ok {
                    bad(format!("inside the {space} window of bridge {br:?}"));
                }
                bus = br.0;
            }
            for (other, ospace, oaddr, osize) in &placed {
                let same = (*ospace == "io") == (space == "io");
                if same && addr < oaddr + osize && *oaddr < addr + size {
                    bad(format!("not overlapping {other}"));
                }
            }
            placed.push((format!("{bdf_s} BAR {reg:#x}"), space, addr, size));
        }
    }
    out
}

#[test]
fn firmware_init_matches_seabios() {
    if !require_kvm() {
        return;
    }
    assert_only_known(
        "after machina_firmware_init",
        firmware_all(),
        KNOWN,
        "firmware",
    );
}

/// Every check above with no known differences tolerated: an entry added to
/// `machina_known_mismatches.json` keeps the tests above green but fails this one.
#[test]
fn strict_qemu_conformance() {
    if !require_kvm() {
        return;
    }
    let mut all = reset_state_all();
    all.extend(firmware_all());
    assert_no_mismatches("strict", &all);
}
