//! Bad input (issue 4): command lines QEMU refuses must fail the same way in machina, the
//! placements QEMU accepts must build, and random config writes and BAR programming through
//! qtest must never take machina down.
//!
//! The cases and QEMU 7.2's stderr/status are in `tests/data/qtest_errors.json` (from
//! `tests/src/bin/gen_expectations.rs`, QEMU run as `-accel tcg -S -display none -nodefaults
//! ARGS`; machina as `-S -nodefaults ARGS`). QEMU's lines are compared without the
//! `qemu-system-x86_64: ` / `machina: ` prefix and with pc-*-7.2 machine names read as
//! 10.2.

mod common;

use common::{machina, require_kvm};
use machina_tests::config_walk::{
    assert_no_mismatches, assert_only_known, for_all_scenarios, Mismatch,
};
use machina_tests::qtest_client::{fmt_bdf, Bdf, Qtest, XorShift};
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const DATA: &str = include_str!("data/qtest_errors.json");
const CONFIG: &str = include_str!("data/qtest_config.json");
const KNOWN: &str = include_str!("data/machina_known_mismatches.json");

fn cases() -> Vec<Value> {
    let data: Value = serde_json::from_str(DATA).expect("qtest_errors.json");
    data["cases"].as_array().expect("cases").clone()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// Run one case; mismatches in status, message, location prefix and extra lines.
fn check_case(case: &Value) -> Vec<Mismatch> {
    let args = strings(&case["args"]);
    let name = args.join(" ");
    let mut out = Vec::new();
    let mut push = |field: &str, e: Value, a: Value| {
        out.push(Mismatch {
            scenario: name.clone(),
            bdf: "-".into(),
            device: "*".into(),
            field: field.into(),
            expected: e,
            actual: a,
        })
    };
    if case["status"].is_null() {
        // QEMU builds this machine: so must machina (Qtest::start panics otherwise).
        let mut full = vec!["-nodefaults".to_string()];
        full.extend(args.iter().cloned());
        match Qtest::try_start(&machina(), &full) {
            Ok(mut q) => assert!(q.alive(), "{name}"),
            Err(e) => push("accepted", json!(true), json!(e)),
        }
        return out;
    }
    let mut full = vec!["-S".to_string(), "-nodefaults".to_string()];
    full.extend(args.iter().cloned());
    let argv: Vec<&str> = full.iter().map(String::as_str).collect();
    let r = machina_tests::run(&machina(), &argv, Duration::from_secs(20));
    if r.status != case["status"].as_i64().map(|s| s as i32) {
        push("status", case["status"].clone(), json!(r.status));
    }
    let lines: Vec<&str> = r.stderr.lines().collect();
    let first = lines.first().copied().unwrap_or("");
    let Some(text) = first.strip_prefix("machina: ") else {
        push("message", case["stderr"][0].clone(), json!(first));
        return out;
    };
    let message = case["message"].as_str().unwrap();
    match case["location"].as_str() {
        Some(loc) if text == format!("{loc}: {message}") => {}
        Some(loc) if text == message => {
            push("location", json!(format!("{loc}: {message}")), json!(text));
        }
        None if text == message => {}
        _ => push("message", json!(message), json!(text)),
    }
    let (want, got): (Vec<&str>, Vec<&str>) = (
        case["stderr"].as_array().unwrap()[1..]
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect(),
        lines[1..].to_vec(),
    );
    if want != got {
        push("hint", json!(want), json!(got));
    }
    out
}

/// Every case's mismatches; run once per test binary, read by the tolerant and the strict
/// test.
fn all_case_mismatches() -> Vec<Mismatch> {
    static ALL: OnceLock<Vec<Mismatch>> = OnceLock::new();
    ALL.get_or_init(|| for_all_scenarios(&cases(), check_case))
        .clone()
}

#[test]
fn bad_command_lines_fail_like_qemu() {
    if !require_kvm() {
        return;
    }
    let cases = cases();
    let refused = cases.iter().filter(|c| c["status"] == 1).count();
    // The oracle's spot checks: QEMU's wording for the classic mistakes.
    let text = |args: &str| -> String {
        let c = cases
            .iter()
            .find(|c| strings(&c["args"]).join(" ") == args)
            .unwrap_or_else(|| panic!("no case {args}"));
        c["message"].as_str().unwrap().to_string()
    };
    assert_eq!(
        text("-M q35 -device e1000,addr=0x1f"),
        "PCI: slot 31 function 0 not available for e1000, in use by ICH9-LPC,id=(null)"
    );
    assert_eq!(
        text("-M pc -device pci-bridge"),
        "Bridge chassis not specified. Each bridge is required to be assigned a unique chassis id > 0."
    );
    assert_eq!(
        text("-M q35 -device pcie-root-port -device pcie-root-port"),
        "Can't add chassis slot, error -16"
    );
    assert!(
        refused >= 20 && cases.len() > refused,
        "{refused} of {}",
        cases.len()
    );
    assert_only_known("bad command lines", all_case_mismatches(), KNOWN, "errors");
}

/// Status, message, location prefix and hint lines with no known differences tolerated.
#[test]
fn strict_error_text() {
    if !require_kvm() {
        return;
    }
    assert_no_mismatches("strict error text", &all_case_mismatches());
}

fn scenario_args(name: &str) -> (Vec<String>, bool) {
    let data: Value = serde_json::from_str(CONFIG).unwrap();
    let s = data["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no scenario {name}"));
    (strings(&s["args"]), s["q35"].as_bool().unwrap())
}

/// machina still answers: the process lives and config space reads through 0xcf8/0xcfc.
fn assert_answers(q: &mut Qtest, what: &str) {
    assert!(q.alive(), "machina died: {what}");
    let r = q.try_cmd("outl 0xcf8 0x80000000");
    assert_eq!(r.as_deref(), Ok("OK"), "machina stopped answering: {what}");
    let r = q
        .try_cmd("inl 0xcfc")
        .unwrap_or_else(|e| panic!("machina stopped answering ({e}): {what}"));
    assert!(r.starts_with("OK 0x"), "inl 0xcfc answered {r:?}: {what}");
}

/// Each fuzz keeps going (fresh machines, new seeds) for about this long.
const FUZZ_BUDGET: Duration = Duration::from_secs(3);

/// Random writes of random sizes to every offset of every function (children first, so
/// every function is reached before its bridges are scrambled; the MCH last), and on q35
/// to every dword of the extended space through ECAM.
fn config_fuzz(name: &str, seed: u64) {
    let start = Instant::now();
    let mut pass = 0;
    while pass == 0 || start.elapsed() < FUZZ_BUDGET {
        config_fuzz_pass(name, seed.wrapping_add(pass), start);
        pass += 1;
    }
    eprintln!("{name}: {pass} config fuzz passes in {:?}", start.elapsed());
}

fn config_fuzz_pass(name: &str, seed: u64, deadline_from: Instant) {
    let (args, q35) = scenario_args(name);
    let mut q = Qtest::start(&machina(), &args);
    q.number_buses();
    if q35 {
        q.enable_ecam();
    }
    let mut functions: Vec<Bdf> = q.all_functions();
    functions.reverse();
    assert!(functions.len() >= 8, "{name}: {functions:?}");
    let mut rng = XorShift(seed);
    let start = Instant::now();
    let mut writes = 0u64;
    let budget = FUZZ_BUDGET * 3;
    for &bdf in &functions {
        let express = q35 && q.ecam_read(bdf, 0x100) != 0xffff_ffff;
        for off in 0u16..256 {
            let size = match (off % 4, rng.below(3)) {
                (0, 2) => 4,
                (0 | 2, 1) => 2,
                _ => 1,
            };
            let value = rng.next_u64() as u32;
            q.cfg_write(bdf, off, size, value);
            if rng.below(4) == 0 {
                q.cfg_read(bdf, rng.below(256) as u16, 1 << rng.below(3));
            }
            writes += 1;
        }
        if express {
            for off in (0x100u16..0x1000).step_by(4) {
                let cmd = format!(
                    "writel {:#x} {:#x}",
                    Qtest::ecam_addr(bdf, off),
                    rng.next_u64() as u32
                );
                assert_eq!(q.cmd(&cmd), "OK", "{name}");
                writes += 1;
            }
        }
        assert_answers(&mut q, &format!("{name}: after fuzzing {}", fmt_bdf(bdf)));
        if deadline_from.elapsed() > budget {
            break;
        }
    }
    assert_answers(
        &mut q,
        &format!("{name}: after {writes} config writes (seed {seed:#x})"),
    );
    eprintln!(
        "{name}: {writes} random config writes in {:?}",
        start.elapsed()
    );
}

#[test]
fn config_write_fuzz_keeps_machina_answering() {
    if !require_kvm() {
        return;
    }
    std::thread::scope(|s| {
        s.spawn(|| config_fuzz("q35_all_bridges", 0x9e37_79b9_7f4a_7c15));
        s.spawn(|| config_fuzz("pc_pci_bridge", 0xdead_beef_cafe_f00d));
    });
}

/// I/O ports where a write powers off or resets the machine; the fuzz only reads them.
fn dangerous_port(port: u64) -> bool {
    matches!(port, 0x60..=0x64 | 0x92 | 0xb2 | 0xcf8..=0xcff | 0x600..=0x63f | 0xb000..=0xb03f)
}

/// After the firmware step, BARs and bridge windows are moved at random onto each other,
/// RAM, ECAM, the IOAPIC/HPET/LAPIC/BIOS, legacy I/O ports, above 4 GiB; decoding is enabled
/// and the new ranges are read and written.
fn bar_fuzz(name: &str, seed: u64) {
    let start = Instant::now();
    let mut pass = 0;
    while pass == 0 || start.elapsed() < FUZZ_BUDGET {
        bar_fuzz_pass(name, seed.wrapping_add(pass));
        pass += 1;
    }
    eprintln!("{name}: {pass} BAR fuzz passes in {:?}", start.elapsed());
}

fn bar_fuzz_pass(name: &str, seed: u64) {
    let (args, _) = scenario_args(name);
    let mut q = Qtest::start(&machina(), &args);
    assert_eq!(q.cmd("machina_firmware_init"), "OK");
    let functions = q.all_functions();
    let mut rng = XorShift(seed);
    // Where things are: the assigned BARs first.
    let mut targets: Vec<u64> = vec![
        0x0,
        0x9_f000,
        0xa_0000,
        0x7ff_f000,
        0xb000_0000,
        0xb010_0000,
        0xbfff_f000,
        0xfe00_0000,
        0xfec0_0000,
        0xfed0_0000,
        0xfed1_c000,
        0xfee0_0000,
        0xffff_f000,
        0xffff_fff0,
    ];
    let mut ports: Vec<u64> = vec![0x0, 0x20, 0x70, 0x3f8, 0x400, 0x510, 0x700, 0xc000, 0xfff0];
    for &bdf in &functions {
        let regs: &[u16] = if q.is_bridge(bdf) {
            &[0x10, 0x14]
        } else {
            &[0x10, 0x14, 0x18, 0x1c, 0x20, 0x24]
        };
        for &reg in regs {
            let v = u64::from(q.cfg_read(bdf, reg, 4));
            if v & 1 == 1 {
                ports.push(v & !3);
            } else if v != 0 {
                targets.push(v & !0xf);
            }
        }
    }
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < FUZZ_BUDGET && ops < 2000 {
        let bdf = functions[rng.below(functions.len() as u64) as usize];
        let bridge = q.is_bridge(bdf);
        let reg: u16 = match (bridge, rng.below(8)) {
            (true, 0..=1) => [0x10, 0x14][rng.below(2) as usize],
            (true, _) => [0x1c, 0x20, 0x24, 0x28, 0x2c, 0x30][rng.below(6) as usize],
            (false, 7) => 0x30,
            (false, _) => 0x10 + 4 * rng.below(6) as u16,
        };
        let current = q.cfg_read(bdf, reg, 4);
        let io = reg <= 0x24 && !bridge && current & 1 == 1;
        let addr = if io {
            ports[rng.below(ports.len() as u64) as usize] + rng.below(4) * 4
        } else if rng.below(5) == 0 {
            rng.next_u64() & 0xffff_fff0
        } else {
            targets[rng.below(targets.len() as u64) as usize]
        };
        let value = match reg {
            0x30 => (addr as u32 & !0x7ff) | 1,
            0x1c..=0x2c if bridge => rng.next_u64() as u32,
            _ => addr as u32 | (current & 0xf),
        };
        q.cfg_write(bdf, reg, 4, value);
        if !io && current & 0x6 == 0x4 && rng.below(2) == 0 && reg != 0x30 {
            // 64-bit BAR: sometimes move it above 4 GiB too.
            q.cfg_write(bdf, reg + 4, 4, rng.below(0x100) as u32);
        }
        let cmd = q.cfg_read(bdf, 4, 2);
        q.cfg_write(bdf, 4, 2, cmd | 0x7);
        // Access what now decodes there.
        for _ in 0..4 {
            let off = rng.below(0x40) * 4;
            if io {
                let port = (addr + off) & 0xffff;
                q.cmd(&format!("inl {port:#x}"));
                if !dangerous_port(port) {
                    q.cmd(&format!("outl {port:#x} {:#x}", rng.next_u64() as u32));
                }
            } else {
                let a = addr + off;
                q.cmd(&format!("readl {a:#x}"));
                q.cmd(&format!("readb {:#x}", a + 1));
                q.cmd(&format!("writel {a:#x} {:#x}", rng.next_u64() as u32));
                q.cmd(&format!("readq {a:#x}"));
            }
            ops += 1;
        }
        if ops & 0xff == 0 {
            assert_answers(
                &mut q,
                &format!("{name}: after {ops} BAR accesses (seed {seed:#x})"),
            );
        }
    }
    assert_answers(
        &mut q,
        &format!("{name}: after {ops} BAR accesses (seed {seed:#x})"),
    );
    eprintln!(
        "{name}: {ops} accesses through randomly placed BARs in {:?}",
        start.elapsed()
    );
}

#[test]
fn bar_programming_fuzz_keeps_machina_answering() {
    if !require_kvm() {
        return;
    }
    std::thread::scope(|s| {
        s.spawn(|| bar_fuzz("q35_all_bridges", 0x0123_4567_89ab_cdef));
        s.spawn(|| bar_fuzz("pc_pci_bridge", 0x1357_9bdf_2468_ace0));
    });
}
