//! The one config-space walk: the expectations generator (`src/bin/gen_expectations.rs`)
//! runs it on QEMU, the conformance tests on machina: number bridges depth-first in devfn
//! order, enable ECAM on q35, read every function's 256 bytes, walk the capability lists,
//! probe BARs/ROM/bridge windows with all-ones and restore them. Then the comparison of two
//! walks (QEMU's expectations and machina's), with machina's known differences.

use crate::qtest_client::{fmt_bdf, hex_bytes, Bdf, Qtest, ECAM_BASE};
use serde_json::{json, Map, Value};
use std::path::Path;

/// Accesses to nothing, answered as the reset-state fact "unassigned".
pub const UNASSIGNED: [&str; 4] = [
    "inb 0x1234",
    "inl 0x1234",
    "readl 0xe0000000",
    "readq 0x100000000",
];

impl Qtest {
    pub fn present(&mut self, bdf: Bdf) -> bool {
        self.cfg_read(bdf, 0, 4) & 0xffff != 0xffff
    }

    pub fn is_bridge(&mut self, bdf: Bdf) -> bool {
        self.cfg_read(bdf, 0x0e, 1) & 0x7f == 1
    }

    /// Every function present on `bus`, scanning all 8 functions of every slot.
    pub fn scan_bus(&mut self, bus: u8) -> Vec<Bdf> {
        let mut found = Vec::new();
        for d in 0..32 {
            for f in 0..8 {
                if self.present((bus, d, f)) {
                    found.push((bus, d, f));
                }
            }
        }
        found
    }

    /// Depth-first bus numbering in devfn order, as SeaBIOS does: primary, secondary = next
    /// bus, subordinate 0xff while the secondary bus is walked, then the last bus found.
    /// Returns each bridge with the reset value of its dword 0x18, in numbering order.
    pub fn number_buses(&mut self) -> Vec<(Bdf, u32)> {
        let mut resets = Vec::new();
        let mut next = 1u8;
        self.number_bus(0, &mut next, &mut resets);
        resets
    }

    fn number_bus(&mut self, bus: u8, next: &mut u8, resets: &mut Vec<(Bdf, u32)>) {
        for bdf in self.scan_bus(bus) {
            if !self.is_bridge(bdf) {
                continue;
            }
            resets.push((bdf, self.cfg_read(bdf, 0x18, 4)));
            let sec = *next;
            *next = next.wrapping_add(1);
            self.cfg_write(bdf, 0x18, 1, u32::from(bus));
            self.cfg_write(bdf, 0x19, 1, u32::from(sec));
            self.cfg_write(bdf, 0x1a, 1, 0xff);
            self.number_bus(sec, next, resets);
            self.cfg_write(bdf, 0x1a, 1, u32::from(next.wrapping_sub(1)));
        }
    }

    /// Every function on every bus reachable through the bridges' secondary numbers, sorted.
    pub fn all_functions(&mut self) -> Vec<Bdf> {
        let mut out = Vec::new();
        let mut buses = vec![0u8];
        let mut i = 0;
        while i < buses.len() {
            for bdf in self.scan_bus(buses[i]) {
                out.push(bdf);
                if self.is_bridge(bdf) {
                    let sec = self.cfg_read(bdf, 0x19, 1) as u8;
                    if sec != 0 && !buses.contains(&sec) {
                        buses.push(sec);
                    }
                }
            }
            i += 1;
        }
        out.sort();
        out
    }

    /// The standard capability list: [[offset, id], ...].
    pub fn std_caps(&mut self, bdf: Bdf) -> Vec<(u16, u8)> {
        let mut caps = Vec::new();
        if self.cfg_read(bdf, 0x06, 2) & 0x10 == 0 {
            return caps;
        }
        let mut ptr = (self.cfg_read(bdf, 0x34, 1) & 0xfc) as u16;
        let mut seen = Vec::new();
        while ptr != 0 && !seen.contains(&ptr) && caps.len() < 48 {
            seen.push(ptr);
            caps.push((ptr, self.cfg_read(bdf, ptr, 1) as u8));
            ptr = (self.cfg_read(bdf, ptr + 1, 1) & 0xfc) as u16;
        }
        caps
    }

    /// The extended capability list through ECAM: [[offset, id, version], ...].
    pub fn ext_caps(&mut self, bdf: Bdf) -> Vec<(u16, u16, u8)> {
        let mut caps = Vec::new();
        let mut off = 0x100u16;
        let mut seen = Vec::new();
        while off >= 0x100 && !seen.contains(&off) && caps.len() < 64 {
            seen.push(off);
            let hdr = self.ecam_read(bdf, off);
            if hdr == 0 || hdr == 0xffff_ffff {
                break;
            }
            caps.push((off, (hdr & 0xffff) as u16, ((hdr >> 16) & 0xf) as u8));
            off = ((hdr >> 20) & 0xffc) as u16;
        }
        caps
    }

    fn cap_fields(&mut self, bdf: Bdf, caps: &[(u16, u8)]) -> Map<String, Value> {
        let mut out = Map::new();
        for &(off, id) in caps {
            let key = format!("0x{off:02x}");
            let v = match id {
                0x09 => {
                    let len = self.cfg_read(bdf, off + 2, 1).min(0x40) as u16;
                    let hex: String = (0..len)
                        .map(|i| format!("{:02x}", self.cfg_read(bdf, off + i, 1)))
                        .collect();
                    json!(hex)
                }
                0x11 => json!([
                    self.cfg_read(bdf, off + 2, 2),
                    self.cfg_read(bdf, off + 4, 4),
                    self.cfg_read(bdf, off + 8, 4)
                ]),
                0x05 | 0x01 => json!([self.cfg_read(bdf, off + 2, 2)]),
                0x10 => json!([
                    self.cfg_read(bdf, off + 2, 2),
                    self.cfg_read(bdf, off + 4, 4),
                    self.cfg_read(bdf, off + 0x0c, 4),
                    self.cfg_read(bdf, off + 0x14, 4)
                ]),
                0x0d => json!([self.cfg_read(bdf, off + 4, 4)]),
                0x04 => json!([self.cfg_read(bdf, off + 2, 1)]),
                _ => continue,
            };
            out.insert(key, v);
        }
        out
    }

    fn probe32(&mut self, bdf: Bdf, reg: u16, ones: u32) -> (u32, u32) {
        let orig = self.cfg_read(bdf, reg, 4);
        self.cfg_write(bdf, reg, 4, ones);
        let got = self.cfg_read(bdf, reg, 4);
        self.cfg_write(bdf, reg, 4, orig);
        (orig, got)
    }

    /// BAR0-5 (type 0) or BAR0-1 (type 1) and the ROM BAR, probed with all-ones.
    pub fn probe_bars(&mut self, bdf: Bdf, header: u8) -> Vec<Value> {
        let regs: &[u16] = if header == 0 {
            &[0x10, 0x14, 0x18, 0x1c, 0x20, 0x24]
        } else {
            &[0x10, 0x14]
        };
        let mut bars = Vec::new();
        let mut i = 0;
        while i < regs.len() {
            let reg = regs[i];
            let (reset, probe) = self.probe32(bdf, reg, 0xffff_ffff);
            if probe & 1 == 0 && (probe >> 1) & 3 == 2 && i + 1 < regs.len() {
                let (reset_hi, probe_hi) = self.probe32(bdf, reg + 4, 0xffff_ffff);
                bars.push(describe_bar(reg, reset, probe, Some((reset_hi, probe_hi))));
                i += 2;
                continue;
            }
            bars.push(describe_bar(reg, reset, probe, None));
            i += 1;
        }
        let rom = if header == 0 { 0x30 } else { 0x38 };
        let (reset, probe) = self.probe32(bdf, rom, 0xffff_fffe);
        bars.push(describe_bar(rom, reset, probe, None));
        bars
    }

    fn probe_windows(&mut self, bdf: Bdf) -> Map<String, Value> {
        let mut out = Map::new();
        for (reg, size) in [
            (0x1c, 2),
            (0x20, 4),
            (0x24, 4),
            (0x28, 4),
            (0x2c, 4),
            (0x30, 4),
        ] {
            let ones = if size == 2 { 0xffff } else { 0xffff_ffff };
            let orig = self.cfg_read(bdf, reg, size);
            self.cfg_write(bdf, reg, size, ones);
            let got = self.cfg_read(bdf, reg, size);
            self.cfg_write(bdf, reg, size, orig);
            out.insert(format!("0x{reg:02x}"), json!([orig, got]));
        }
        out
    }

    /// One function as the expectations describe it.
    pub fn read_function(&mut self, bdf: Bdf, ecam: bool) -> Value {
        let mut raw = Vec::with_capacity(256);
        for off in (0..256).step_by(4) {
            raw.extend_from_slice(&self.cfg_read(bdf, off, 4).to_le_bytes());
        }
        let w = |o: usize| u32::from(raw[o]) | u32::from(raw[o + 1]) << 8;
        let header = raw[0x0e];
        let mut f = Map::new();
        f.insert("bdf".into(), json!(fmt_bdf(bdf)));
        f.insert("vendor".into(), json!(w(0)));
        f.insert("device".into(), json!(w(2)));
        f.insert("command".into(), json!(w(4)));
        f.insert("status".into(), json!(w(6)));
        f.insert("revision".into(), json!(raw[8]));
        f.insert("class".into(), json!(w(9) | u32::from(raw[11]) << 16));
        f.insert("header_type".into(), json!(header));
        f.insert("interrupt_line".into(), json!(raw[0x3c]));
        f.insert("interrupt_pin".into(), json!(raw[0x3d]));
        if header & 0x7f == 0 {
            f.insert("subsystem_vendor".into(), json!(w(0x2c)));
            f.insert("subsystem".into(), json!(w(0x2e)));
        } else {
            f.insert(
                "bus_numbers".into(),
                json!(w(0x18) | u32::from(raw[0x1a]) << 16),
            );
            f.insert("secondary_status".into(), json!(w(0x1e)));
            f.insert("bridge_control".into(), json!(w(0x3e)));
        }
        let caps = self.std_caps(bdf);
        f.insert(
            "caps".into(),
            json!(caps.iter().map(|&(o, i)| json!([o, i])).collect::<Vec<_>>()),
        );
        f.insert(
            "cap_fields".into(),
            Value::Object(self.cap_fields(bdf, &caps)),
        );
        if ecam {
            f.insert("ext_0x100".into(), json!(self.ecam_read(bdf, 0x100)));
            let ext = self.ext_caps(bdf);
            f.insert(
                "ext_caps".into(),
                json!(ext
                    .iter()
                    .map(|&(o, i, v)| json!([o, i, v]))
                    .collect::<Vec<_>>()),
            );
            if f["ext_0x100"] != json!(0xffff_ffffu32) {
                // The extended space of a PCIe function: every non-zero dword.
                let mut nonzero = Map::new();
                for off in (0x100u16..0x1000).step_by(4) {
                    let v = self.ecam_read(bdf, off);
                    if v != 0 {
                        nonzero.insert(format!("0x{off:03x}"), json!(v));
                    }
                }
                f.insert("ext_nonzero".into(), Value::Object(nonzero));
            }
        }
        f.insert("bars".into(), json!(self.probe_bars(bdf, header & 0x7f)));
        if header & 0x7f == 1 {
            f.insert("windows".into(), Value::Object(self.probe_windows(bdf)));
        }
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        f.insert("dump".into(), json!(hex));
        Value::Object(f)
    }

    /// Enable ECAM at 0xb0000000 (256 MiB) as q35 firmware does.
    pub fn enable_ecam(&mut self) {
        self.cfg_write((0, 0, 0), 0x64, 4, 0);
        self.cfg_write((0, 0, 0), 0x60, 4, ECAM_BASE as u32 | 1);
    }

    /// The whole conformance walk: reset-state facts, then every function.
    pub fn walk(&mut self, q35: bool) -> (Value, Vec<Value>) {
        let mut facts = Map::new();
        // What reads of nothing return (I/O: all-ones; unassigned memory: QEMU's 0).
        let unassigned: Map<String, Value> = UNASSIGNED
            .iter()
            .map(|c| (c.to_string(), json!(self.cmd(c))))
            .collect();
        facts.insert("unassigned".into(), Value::Object(unassigned));
        if q35 {
            facts.insert("pciexbar".into(), json!(self.cfg_read((0, 0, 0), 0x60, 4)));
            facts.insert(
                "pciexbar_hi".into(),
                json!(self.cfg_read((0, 0, 0), 0x64, 4)),
            );
            facts.insert("pmbase".into(), json!(self.cfg_read((0, 0x1f, 0), 0x40, 4)));
            facts.insert(
                "acpi_cntl".into(),
                json!(self.cfg_read((0, 0x1f, 0), 0x44, 1)),
            );
        } else if self.present((0, 1, 3)) {
            facts.insert("pmbase".into(), json!(self.cfg_read((0, 1, 3), 0x40, 4)));
            facts.insert("pmregmisc".into(), json!(self.cfg_read((0, 1, 3), 0x80, 1)));
        }
        let bridges: Map<String, Value> = self
            .number_buses()
            .into_iter()
            .map(|(bdf, v)| (fmt_bdf(bdf), json!(v)))
            .collect();
        facts.insert("bridges".into(), Value::Object(bridges));
        if q35 {
            self.enable_ecam();
        }
        let functions = self
            .all_functions()
            .into_iter()
            .map(|bdf| self.read_function(bdf, q35))
            .collect();
        (Value::Object(facts), functions)
    }
}

fn lowest_bit(mask: u64) -> u64 {
    mask & mask.wrapping_neg()
}

/// Kind and size of a BAR from its probe value.
pub fn describe_bar(reg: u16, reset: u32, probe: u32, hi: Option<(u32, u32)>) -> Value {
    let mut bar = Map::new();
    bar.insert("reg".into(), json!(reg));
    bar.insert("reset".into(), json!(reset));
    bar.insert("probe".into(), json!(probe));
    let mut set = |k: &str, v: Value| {
        bar.insert(k.into(), v);
    };
    if reg == 0x30 || reg == 0x38 {
        let mask = probe & 0xffff_f800;
        set("kind", json!(if mask != 0 { "rom" } else { "none" }));
        set("size", json!(lowest_bit(u64::from(mask))));
    } else if probe == 0 {
        set("kind", json!("none"));
        set("size", json!(0));
    } else if probe & 1 != 0 {
        set("kind", json!("io"));
        set("size", json!(lowest_bit(u64::from(probe & 0xffff_fffc))));
    } else {
        let prefetch = probe & 8 != 0;
        match hi {
            Some((reset_hi, probe_hi)) if (probe >> 1) & 3 == 2 => {
                let mask = u64::from(probe_hi) << 32 | u64::from(probe & 0xffff_fff0);
                set("kind", json!("mem64"));
                set("prefetch", json!(prefetch));
                set("size", json!(lowest_bit(mask)));
                set("reset_hi", json!(reset_hi));
                set("probe_hi", json!(probe_hi));
            }
            _ => {
                set("kind", json!("mem32"));
                set("prefetch", json!(prefetch));
                set("size", json!(lowest_bit(u64::from(probe & 0xffff_fff0))));
            }
        }
    }
    Value::Object(bar)
}

/// One difference between what QEMU showed (expected) and what machina shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    pub scenario: String,
    pub bdf: String,
    /// "vvvv:dddd" of the expected function.
    pub device: String,
    /// e.g. "revision", "caps", "dump[0x67]", "bars[0x10]", "cap_fields[0x40]".
    pub field: String,
    pub expected: Value,
    pub actual: Value,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Value| match v.as_u64() {
            Some(n) => format!("{n:#x}"),
            None => v.to_string(),
        };
        write!(
            f,
            "{} {} ({}) {}: QEMU {} machina {}",
            self.scenario,
            self.bdf,
            self.device,
            self.field,
            show(&self.expected),
            show(&self.actual)
        )
    }
}

fn device_id(f: &Value) -> String {
    format!(
        "{:04x}:{:04x}",
        f["vendor"].as_u64().unwrap_or(0xffff),
        f["device"].as_u64().unwrap_or(0xffff)
    )
}

/// Compare the functions of one scenario, field by field (byte by byte for the dump, BAR by
/// BAR, capability by capability).
pub fn compare_functions(scenario: &str, expected: &[Value], actual: &[Value]) -> Vec<Mismatch> {
    let mut out = Vec::new();
    let by_bdf = |fs: &[Value]| -> std::collections::BTreeMap<String, Value> {
        fs.iter()
            .map(|f| (f["bdf"].as_str().unwrap_or("").to_string(), f.clone()))
            .collect()
    };
    let exp = by_bdf(expected);
    let act = by_bdf(actual);
    let mut push = |bdf: &str, device: &str, field: String, e: &Value, a: &Value| {
        out.push(Mismatch {
            scenario: scenario.into(),
            bdf: bdf.into(),
            device: device.into(),
            field,
            expected: e.clone(),
            actual: a.clone(),
        });
    };
    for (bdf, e) in &exp {
        let dev = device_id(e);
        let Some(a) = act.get(bdf) else {
            push(bdf, &dev, "present".into(), &json!(true), &json!(false));
            continue;
        };
        let keys: std::collections::BTreeSet<&String> = e
            .as_object()
            .into_iter()
            .chain(a.as_object())
            .flat_map(|m| m.keys())
            .collect();
        for key in keys {
            let (ev, av) = (&e[key.as_str()], &a[key.as_str()]);
            if ev == av {
                continue;
            }
            match key.as_str() {
                "dump" => {
                    let eb = hex_bytes(ev.as_str().unwrap_or(""));
                    let ab = hex_bytes(av.as_str().unwrap_or(""));
                    for i in 0..eb.len().max(ab.len()) {
                        let (x, y) = (eb.get(i), ab.get(i));
                        if x != y {
                            push(bdf, &dev, format!("dump[0x{i:02x}]"), &json!(x), &json!(y));
                        }
                    }
                }
                "bars" => {
                    let regs = |v: &Value| -> std::collections::BTreeMap<u64, Value> {
                        v.as_array()
                            .into_iter()
                            .flatten()
                            .map(|b| (b["reg"].as_u64().unwrap_or(0), b.clone()))
                            .collect()
                    };
                    let (eb, ab) = (regs(ev), regs(av));
                    for reg in eb
                        .keys()
                        .chain(ab.keys())
                        .collect::<std::collections::BTreeSet<_>>()
                    {
                        let (x, y) = (
                            eb.get(reg).cloned().unwrap_or(Value::Null),
                            ab.get(reg).cloned().unwrap_or(Value::Null),
                        );
                        if x != y {
                            push(bdf, &dev, format!("bars[0x{reg:02x}]"), &x, &y);
                        }
                    }
                }
                "cap_fields" | "windows" | "ext_nonzero" => {
                    let empty = Map::new();
                    let (eo, ao) = (
                        ev.as_object().unwrap_or(&empty),
                        av.as_object().unwrap_or(&empty),
                    );
                    for k in eo
                        .keys()
                        .chain(ao.keys())
                        .collect::<std::collections::BTreeSet<_>>()
                    {
                        let (x, y) = (&ev[k.as_str()], &av[k.as_str()]);
                        if x != y {
                            push(bdf, &dev, format!("{key}[{k}]"), x, y);
                        }
                    }
                }
                _ => push(bdf, &dev, key.clone(), ev, av),
            }
        }
    }
    for (bdf, a) in &act {
        if !exp.contains_key(bdf) {
            push(
                bdf,
                &device_id(a),
                "present".into(),
                &json!(false),
                &json!(true),
            );
        }
    }
    out
}

/// A difference machina is known to have, from `tests/data/machina_known_mismatches.json`.
#[derive(Debug, Clone)]
pub struct KnownMismatch {
    /// "vvvv:dddd"; a trailing `*` matches a prefix ("1af4:*", "*").
    pub device: String,
    /// Field names; a trailing `*` matches a prefix (`dump*` = any dump byte).
    pub fields: Vec<String>,
    /// Only in these scenarios (empty = all).
    pub scenarios: Vec<String>,
    pub why: String,
}

impl KnownMismatch {
    pub fn load(json_text: &str, section: &str) -> Vec<KnownMismatch> {
        let v: Value = serde_json::from_str(json_text).expect("known mismatches JSON");
        v[section]
            .as_array()
            .into_iter()
            .flatten()
            .map(|k| KnownMismatch {
                device: k["device"].as_str().unwrap_or("*").to_string(),
                fields: strings(&k["fields"]),
                scenarios: strings(&k["scenarios"]),
                why: k["why"].as_str().unwrap_or("").to_string(),
            })
            .collect()
    }

    pub fn matches(&self, m: &Mismatch) -> bool {
        let device = match self.device.strip_suffix('*') {
            Some(prefix) => m.device.starts_with(prefix),
            None => self.device == m.device,
        };
        device
            && (self.scenarios.is_empty() || self.scenarios.contains(&m.scenario))
            && self.fields.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => m.field.starts_with(prefix),
                None => *p == m.field,
            })
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// Split mismatches into (unexpected, known). Prints the known ones.
pub fn triage(all: Vec<Mismatch>, known: &[KnownMismatch]) -> (Vec<Mismatch>, Vec<Mismatch>) {
    let (k, u): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|m| known.iter().any(|k| k.matches(m)));
    for m in &k {
        eprintln!("known machina mismatch: {m}");
    }
    (u, k)
}

/// Substitute `{disk}` in scenario arguments.
pub fn substitute(args: &[Value], disk: &str) -> Vec<String> {
    args.iter()
        .map(|a| a.as_str().unwrap_or("").replace("{disk}", disk))
        .collect()
}

/// The expectations were taken with `smm=off` added to QEMU's `-M` (their
/// `qemu_extra_machine_options`; QEMU 7.2 has no qtest accelerator, and under TCG SMM is
/// on): machina is run on the same machine. Under qtest machina's own `smm=auto` is on,
/// as QEMU 10's qtest accelerator.
pub fn oracle_args(args: &[String]) -> Vec<String> {
    let mut out = args.to_vec();
    for i in 0..out.len().saturating_sub(1) {
        if (out[i] == "-M" || out[i] == "-machine") && !out[i + 1].contains("smm=") {
            out[i + 1].push_str(",smm=off");
        }
    }
    out
}

/// Start machina on a scenario of the expectation files, walk it and compare with QEMU's
/// reset state: the facts (PCIEXBAR, PM base, bridges' bus numbers) and every function.
pub fn reset_state_mismatches(binary: &Path, scenario: &Value, disk: &str) -> Vec<Mismatch> {
    let name = scenario["name"].as_str().unwrap_or("?");
    let args = oracle_args(&substitute(
        scenario["args"].as_array().expect("args"),
        disk,
    ));
    let q35 = scenario["q35"].as_bool().unwrap_or(false);
    let mut q = Qtest::start(binary, &args);
    let (facts, functions) = q.walk(q35);
    let mut out = Vec::new();
    let empty = Map::new();
    let (ef, af) = (
        scenario["facts"].as_object().unwrap_or(&empty),
        facts.as_object().unwrap_or(&empty),
    );
    for key in ef
        .keys()
        .chain(af.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        if ef.get(key) != af.get(key) {
            out.push(Mismatch {
                scenario: name.into(),
                bdf: "-".into(),
                device: "*".into(),
                field: format!("facts.{key}"),
                expected: ef.get(key).cloned().unwrap_or(Value::Null),
                actual: af.get(key).cloned().unwrap_or(Value::Null),
            });
        }
    }
    let expected = scenario["functions"].as_array().expect("functions");
    out.extend(compare_functions(name, expected, &functions));
    out
}

/// Run `f` on every scenario (or case) in parallel (one machina each); all mismatches, in
/// order.
pub fn for_all_scenarios(
    scenarios: &[Value],
    f: impl Fn(&Value) -> Vec<Mismatch> + Sync,
) -> Vec<Mismatch> {
    std::thread::scope(|s| {
        let handles: Vec<_> = scenarios.iter().map(|sc| s.spawn(|| f(sc))).collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// Fail listing every mismatch that the `section` of the known-mismatch list (`known_json`)
/// does not name.
pub fn assert_only_known(what: &str, all: Vec<Mismatch>, known_json: &str, section: &str) {
    let (unexpected, _) = triage(all, &KnownMismatch::load(known_json, section));
    assert_no_mismatches(what, &unexpected);
}

/// Fail listing every mismatch.
pub fn assert_no_mismatches(what: &str, mismatches: &[Mismatch]) {
    if mismatches.is_empty() {
        return;
    }
    let list: Vec<String> = mismatches.iter().map(|m| format!("  {m}")).collect();
    panic!(
        "{what}: {} difference(s) from QEMU:\n{}",
        mismatches.len(),
        list.join("\n")
    );
}
