//! Property test of the QMP configuration path against the command line: random `-device`
//! lists (bridges, ports, switches, virtio and e1000 endpoints with random bus=, addr=,
//! multifunction=, chassis, ids; some deliberately wrong) on every pc/q35 machine type.
//!
//! Some cases also get machine options (valid or not), over QMP with `x-machine-set`.
//!
//! For each case, a fresh `machina -delay-machine-init` gets the devices one by one over QMP:
//! * before each `device_add`, `x-query-placement` must predict its outcome: the same error
//!   text, or a placement that the final plan then has;
//! * valid lists: `x-query-machine-definition` == `machine-build`'s return, and `query-pci` of
//!   the built machine shows exactly the predicted functions (bus number through the bridges,
//!   slot, function, IDs, class, subsystem, qdev id); the same list given on the command line
//!   (`-S`) plans and builds the same machine;
//! * invalid lists: the command line with the same devices exits 1 with `machina: <error>`,
//!   the same text as `device_add` (and `x-query-placement`), `x-machine-set` or
//!   `machine-build` gave, after the `-device ARGS: ` / `-machine ARGS: ` location the
//!   command line names.
//!
//! Deterministic: MACHINA_PROPTEST_SEED=N and MACHINA_PROPTEST_CASES=N change the sample
//! (default: one case per machine type).

mod common;

use common::{machina, require_kvm};
use machina_tests::pci_compare::compare_plan_with_pci;
use machina_tests::process::MachinaProcess;
use machina_tests::qmp_client::QmpClient;
use machina_tests::rng::XorShift;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
enum Prop {
    Str(String),
    Int(u64),
    Bool(bool),
}

#[derive(Debug, Clone)]
struct Dev {
    driver: String,
    props: Vec<(String, Prop)>,
}

impl Dev {
    fn new(driver: &str) -> Dev {
        Dev {
            driver: driver.to_string(),
            props: Vec::new(),
        }
    }
    fn set(&mut self, key: &str, value: Prop) {
        self.props.retain(|(k, _)| k != key);
        self.props.push((key.to_string(), value));
    }
    fn get(&self, key: &str) -> Option<&Prop> {
        self.props.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    /// QMP `device_add` arguments / JSON `-device`.
    fn json(&self) -> Value {
        let mut m = Map::new();
        m.insert("driver".into(), json!(self.driver));
        for (k, v) in &self.props {
            let v = match v {
                Prop::Str(s) => json!(s),
                Prop::Int(n) => json!(n),
                Prop::Bool(b) => json!(b),
            };
            m.insert(k.clone(), v);
        }
        Value::Object(m)
    }
    /// `driver,key=value,...`
    fn keyval(&self) -> String {
        let mut s = self.driver.clone();
        for (k, v) in &self.props {
            let v = match v {
                Prop::Str(s) => s.clone(),
                Prop::Int(n) => n.to_string(),
                Prop::Bool(b) => if *b { "on" } else { "off" }.to_string(),
            };
            s.push_str(&format!(",{k}={v}"));
        }
        s
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BusKind {
    Root,
    /// Root port or downstream port: one slot (0).
    Port,
    /// Switch upstream port: downstream ports only.
    Upstream,
    /// pci-bridge / pcie-pci-bridge: SHPC, slots 1..31.
    Shpc,
    /// i82801b11-bridge: conventional, slots 0..31.
    Dmi,
}

struct GenBus {
    name: String,
    kind: BusKind,
    /// Slots given multifunction=on at function 0 (more functions may follow).
    multi: Vec<u64>,
}

const BRIDGES: &[&str] = &[
    "pcie-root-port",
    "ioh3420",
    "x3130-upstream",
    "xio3130-downstream",
    "pcie-pci-bridge",
    "pci-bridge",
    "i82801b11-bridge",
];

const ENDPOINTS: &[&str] = &[
    "virtio-net-pci",
    "virtio-net-pci-transitional",
    "virtio-net-pci-non-transitional",
    "virtio-rng-pci",
    "virtio-rng-pci-transitional",
    "virtio-rng-pci-non-transitional",
    "virtio-balloon-pci",
    "virtio-balloon-pci-non-transitional",
    "virtio-scsi-pci",
    "virtio-scsi-pci-transitional",
    "virtio-serial-pci",
    "virtio-serial-pci-non-transitional",
    "virtio-keyboard-pci",
    "virtio-gpu-pci",
    "e1000",
];

/// Machine options to sample, with values QEMU takes and values it refuses (a bad
/// boolean, an unknown property, a size too large, a value machina does not build).
const OPTIONS: &[(&str, &[&str])] = &[
    ("acpi", &["on", "off"]),
    ("bogus", &["1"]),
    ("graphics", &["on", "off"]),
    ("hpet", &["on", "off"]),
    ("max-ram-below-4g", &["2G", "5G"]),
    ("sata", &["on", "off"]),
    ("smbus", &["on", "off"]),
    ("smm", &["off", "on"]),
    ("usb", &["on", "off", "maybe"]),
    ("vmport", &["on", "off", "auto"]),
];

/// One random configuration.
#[derive(Debug)]
struct Case {
    machine: String,
    /// `-M machine,key=value` / `x-machine-set {"options": ...}`, sorted by key.
    options: Vec<(String, String)>,
    nodefaults: bool,
    /// Give the command line JSON `-device` (else keyval).
    json_cli: bool,
    devices: Vec<Dev>,
}

fn generate(rng: &mut XorShift, machine: &str) -> Case {
    let q35 = machine.contains("q35");
    let mut buses = vec![GenBus {
        name: if q35 { "pcie.0" } else { "pci.0" }.to_string(),
        kind: BusKind::Root,
        multi: Vec::new(),
    }];
    let mut ids: Vec<String> = Vec::new();
    let mut chassis = 0u64;
    let mut devices = Vec::new();
    let count = 1 + rng.below(9);
    for n in 0..count {
        let bridge = rng.chance(45);
        let driver = if bridge {
            *rng.pick(BRIDGES)
        } else {
            *rng.pick(ENDPOINTS)
        };
        let mut dev = Dev::new(driver);
        // Where it plausibly goes; sometimes anywhere at all.
        let wanted: &[BusKind] = match driver {
            "pcie-root-port" | "ioh3420" | "i82801b11-bridge" => &[BusKind::Root],
            "x3130-upstream" => &[BusKind::Port],
            "xio3130-downstream" => &[BusKind::Upstream],
            "pcie-pci-bridge" => &[BusKind::Root, BusKind::Port],
            "pci-bridge" => &[BusKind::Root, BusKind::Shpc, BusKind::Dmi, BusKind::Port],
            _ => &[
                BusKind::Root,
                BusKind::Port,
                BusKind::Shpc,
                BusKind::Dmi,
                BusKind::Root,
            ],
        };
        let candidates: Vec<usize> = (0..buses.len())
            .filter(|&i| wanted.contains(&buses[i].kind))
            .collect();
        let bus_index = if candidates.is_empty() || rng.chance(10) {
            rng.below(buses.len() as u64) as usize
        } else {
            *rng.pick(&candidates)
        };
        let bus = &mut buses[bus_index];
        if rng.chance(2) {
            dev.set("bus", Prop::Str("nosuchbus".into()));
        } else if bus.kind != BusKind::Root || rng.chance(60) {
            dev.set("bus", Prop::Str(bus.name.clone()));
        }
        // Address: mostly what the bus takes, sometimes not.
        let addr = match bus.kind {
            BusKind::Port => match rng.below(10) {
                0..=6 => None,
                7 | 8 => Some("0".to_string()),
                _ => Some(format!("{:#x}", rng.below(32))),
            },
            BusKind::Upstream => match rng.below(3) {
                0 => None,
                _ => Some(format!("{:#x}", rng.below(32))),
            },
            BusKind::Shpc => match rng.below(10) {
                0 => None,
                _ => Some(format!("{:#x}", 1 + rng.below(31))),
            },
            BusKind::Root | BusKind::Dmi => match rng.below(10) {
                0..=4 => None,
                5 if !bus.multi.is_empty() => {
                    let slot = *rng.pick(&bus.multi);
                    Some(format!("{slot:#x}.{}", 1 + rng.below(7)))
                }
                _ => Some(format!("{:#x}", 1 + rng.below(30))),
            },
        };
        if let Some(a) = &addr {
            dev.set("addr", Prop::Str(a.clone()));
            if !a.contains('.') && rng.chance(25) {
                dev.set("multifunction", Prop::Bool(true));
                if let Ok(slot) = u64::from_str_radix(a.trim_start_matches("0x"), 16) {
                    bus.multi.push(slot);
                }
            }
        }
        match driver {
            "pcie-root-port" | "ioh3420" | "xio3130-downstream" => {
                if !rng.chance(8) {
                    chassis += 1;
                    dev.set("chassis", Prop::Int(chassis));
                }
                if rng.chance(60) {
                    dev.set("port", Prop::Int(rng.below(256)));
                }
                if rng.chance(10) {
                    dev.set("slot", Prop::Int(rng.below(4)));
                }
            }
            "pci-bridge" if !rng.chance(8) => {
                chassis += 1;
                dev.set("chassis_nr", Prop::Int(chassis));
            }
            _ => {}
        }
        // Bridges need an id to be named as a bus; endpoints mostly get one.
        if bridge || rng.chance(70) {
            let id = if !ids.is_empty() && rng.chance(4) {
                rng.pick(&ids).clone()
            } else if rng.chance(2) {
                "1bad".to_string()
            } else {
                format!("{}{n}", if bridge { "br" } else { "dev" })
            };
            dev.set("id", Prop::Str(id.clone()));
            ids.push(id.clone());
            let kind = match driver {
                "pcie-root-port" | "ioh3420" | "xio3130-downstream" => Some(BusKind::Port),
                "x3130-upstream" => Some(BusKind::Upstream),
                "pcie-pci-bridge" | "pci-bridge" => Some(BusKind::Shpc),
                "i82801b11-bridge" => Some(BusKind::Dmi),
                _ => None,
            };
            if let Some(kind) = kind {
                buses.push(GenBus {
                    name: id,
                    kind,
                    multi: Vec::new(),
                });
            }
        }
        // A few plainly wrong properties.
        match rng.below(100) {
            0 | 1 => dev.set("bogus", Prop::Int(1)),
            2 => dev.set("addr", Prop::Str("0x20".into())),
            3 => dev.driver = "no-such-device".into(),
            _ => {}
        }
        devices.push(dev);
    }
    let mut options = Vec::new();
    if rng.chance(30) {
        for _ in 0..1 + rng.below(2) {
            let (key, values) = rng.pick(OPTIONS);
            options.push((key.to_string(), rng.pick(values).to_string()));
        }
        options.sort();
        options.dedup_by(|a, b| a.0 == b.0);
    }
    Case {
        machine: machine.to_string(),
        options,
        nodefaults: rng.chance(50),
        json_cli: rng.chance(50),
        devices,
    }
}

fn base_args(case: &Case) -> Vec<String> {
    let mut machine = case.machine.clone();
    for (k, v) in &case.options {
        machine.push_str(&format!(",{k}={v}"));
    }
    let mut args = vec!["-M".to_string(), machine];
    if case.nodefaults {
        args.push("-nodefaults".into());
    }
    args
}

fn cli_devices(case: &Case, devices: &[Dev]) -> Vec<String> {
    devices
        .iter()
        .flat_map(|d| {
            let text = if case.json_cli {
                d.json().to_string()
            } else {
                d.keyval()
            };
            ["-device".to_string(), text]
        })
        .collect()
}

/// The command line's one-line error (`machina: X`) says what QMP said. QEMU's command line
/// may put the option in front (`-device T: X`), and its keyval parser words a duplicate id
/// differently from QMP/JSON ("Duplicate ID 'a' for device" vs "Duplicate device ID 'a'").
fn same_error(cli_stderr: &str, qmp: &str, keyval: bool) -> bool {
    let Some(line) = cli_stderr.trim_end().strip_prefix("machina: ") else {
        return false;
    };
    if cli_stderr.trim_end().lines().count() != 1 {
        return false;
    }
    // The command line names the option an error came from (`-device ARGS: `, `-machine
    // ARGS: `); QMP has no such location.
    let text = match line.split_once(": ") {
        Some((loc, rest))
            if ["-device ", "-machine "].iter().any(|o| loc.starts_with(o))
                && !qmp.starts_with(loc) =>
        {
            rest
        }
        _ => line,
    };
    if text == qmp {
        return true;
    }
    keyval
        && qmp
            .strip_prefix("Duplicate device ID '")
            .and_then(|r| r.strip_suffix('\''))
            .is_some_and(|id| text == format!("Duplicate ID '{id}' for device"))
}

/// How one case came out.
struct Outcome {
    valid: bool,
    /// The error of an invalid list.
    error: Option<String>,
    /// Bridge types present in a machine that was built.
    built_bridges: BTreeSet<String>,
}

fn error_of(r: &Value) -> Option<String> {
    r.get("error")
        .map(|e| e["desc"].as_str().unwrap_or("").to_string())
}

fn run_case(case: &Case) -> Result<Outcome, String> {
    // The machine type on the command line, its options over QMP.
    let mut args = vec!["-M".to_string(), case.machine.clone()];
    if case.nodefaults {
        args.push("-nodefaults".into());
    }
    args.push("-delay-machine-init".into());
    let vm = MachinaProcess::start(&machina(), "prop", &args);
    let mut qmp = vm.client();

    let mut placed: Vec<(String, Value)> = Vec::new();
    let mut failure: Option<(usize, String)> = None;
    if !case.options.is_empty() {
        let options: Map<String, Value> = case
            .options
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let r = qmp.execute("x-machine-set", json!({ "options": options }));
        if let Some(e) = error_of(&r) {
            failure = Some((usize::MAX, e));
        }
    }
    // Configure device by device; each time the placement query predicts device_add.
    for (i, dev) in case.devices.iter().enumerate() {
        if failure.is_some() {
            break;
        }
        let q = qmp.execute("x-query-placement", json!({ "devices": [dev.json()] }));
        let prediction = q["return"]
            .get(0)
            .cloned()
            .ok_or_else(|| format!("x-query-placement for {}: {q}", dev.keyval()))?;
        let r = qmp.execute("device_add", dev.json());
        match (error_of(&r), prediction.get("error")) {
            (None, None) => {
                let p = prediction["placement"].clone();
                let want_id = match dev.get("id") {
                    Some(Prop::Str(id)) => json!(id),
                    _ => Value::Null,
                };
                if !p.is_object() || p["id"] != want_id {
                    return Err(format!("placement of {}: {prediction}", dev.keyval()));
                }
                placed.push((dev.keyval(), p));
            }
            (Some(e), Some(pe)) => {
                if pe != &json!(e) {
                    return Err(format!(
                        "device_add {} failed with \"{e}\", x-query-placement said {pe}",
                        dev.keyval()
                    ));
                }
                failure = Some((i, e));
                break;
            }
            (e, _) => {
                return Err(format!(
                    "device_add {} gave {r} ({e:?}), x-query-placement predicted {prediction}",
                    dev.keyval()
                ))
            }
        }
    }

    let mut built_bridges = BTreeSet::new();
    let mut plan = Value::Null;
    if failure.is_none() {
        let predicted = qmp.ok("x-query-machine-definition", Value::Null);
        let r = qmp.execute("machine-build", Value::Null);
        match error_of(&r) {
            Some(e) => failure = Some((case.devices.len(), e)),
            None => {
                let built = r["return"].clone();
                if built != predicted {
                    return Err("machine-build returned another plan than predicted".into());
                }
                let pci = qmp.ok("query-pci", Value::Null);
                compare_plan_with_pci(&built, &pci).map_err(|e| format!("QMP-built: {e}"))?;
                // Each device is where its placement query said it would be.
                let functions = built["pci"].as_array().cloned().unwrap_or_default();
                for (what, p) in &placed {
                    let hit = functions.iter().any(|f| {
                        [
                            "bus",
                            "slot",
                            "function",
                            "type_name",
                            "id",
                            "identity",
                            "virtio",
                        ]
                        .iter()
                        .all(|k| f[*k] == p[*k])
                    });
                    if !hit {
                        return Err(format!("{what} placed at {p} is not in the plan"));
                    }
                }
                for f in &functions {
                    if let Some(t) = f["type_name"].as_str() {
                        if BRIDGES.contains(&t) {
                            built_bridges.insert(t.to_string());
                        }
                    }
                }
                plan = built;
            }
        }
    }
    let _ = qmp.execute("quit", Value::Null);
    drop(vm);

    let mut cli = base_args(case);
    cli.extend(cli_devices(case, &case.devices));
    cli.push("-S".into());
    match failure {
        Some((index, error)) => {
            let cli_args: Vec<&str> = cli.iter().map(String::as_str).collect();
            let exit = machina_tests::run(&machina(), &cli_args, Duration::from_secs(20));
            if exit.status != Some(1) || !same_error(&exit.stderr, &error, !case.json_cli) {
                let what = match index {
                    usize::MAX => "x-machine-set".to_string(),
                    i if i == case.devices.len() => "machine-build".to_string(),
                    i => format!("device_add of device {i}"),
                };
                return Err(format!(
                    "{what} failed over QMP with \"{error}\"; the command line \
                     exited {:?} with {:?}",
                    exit.status, exit.stderr
                ));
            }
            Ok(Outcome {
                valid: false,
                error: Some(error),
                built_bridges,
            })
        }
        None => {
            // The same devices on the command line make the same machine.
            let vm = MachinaProcess::start(&machina(), "prop-cli", &cli);
            let mut qmp = QmpClient::connect(&vm.socket, Duration::from_secs(20));
            qmp.ok("qmp_capabilities", Value::Null);
            let cli_plan = qmp.ok("x-query-machine-definition", Value::Null);
            if cli_plan != plan {
                return Err("the command line planned another machine than QMP built".into());
            }
            let pci = qmp.ok("query-pci", Value::Null);
            compare_plan_with_pci(&plan, &pci).map_err(|e| format!("CLI-built: {e}"))?;
            let _ = qmp.execute("quit", Value::Null);
            Ok(Outcome {
                valid: true,
                error: None,
                built_bridges,
            })
        }
    }
}

/// An error text without its details (quoted names, numbers), to count kinds of errors.
fn error_kind(error: &str) -> String {
    let mut kind = String::new();
    let mut quoted = false;
    for c in error.replace("n't", "nt").chars() {
        match c {
            '\'' => {
                if !quoted {
                    kind.push_str("'X'");
                }
                quoted = !quoted;
            }
            _ if quoted => {}
            '0'..='9' => {
                if !kind.ends_with('N') {
                    kind.push('N');
                }
            }
            c => kind.push(c),
        }
    }
    kind.chars().take(40).collect()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn random_device_lists_agree_across_qmp_plan_build_and_command_line() {
    if !require_kvm() {
        return;
    }
    let start = Instant::now();
    // The default seed's sample builds every bridge type and has refused machine options
    // (unknown property, smm=on, max-ram-below-4g too large) besides refused device lists.
    let seed = env_u64("MACHINA_PROPTEST_SEED").unwrap_or(6);
    let mut rng = XorShift::new(seed);

    // Every pc/q35 machine type, in a random order.
    let machines: Vec<String> = {
        let vm = MachinaProcess::start(
            &machina(),
            "prop-list",
            &["-delay-machine-init".to_string()],
        );
        let mut qmp = vm.client();
        let list = qmp.ok("query-machines", Value::Null);
        let _ = qmp.execute("quit", Value::Null);
        let mut names: Vec<String> = list
            .as_array()
            .expect("machine list")
            .iter()
            .filter_map(|m| m["name"].as_str().map(str::to_string))
            .filter(|n| n.starts_with("pc-"))
            .collect();
        names.sort();
        for i in (1..names.len()).rev() {
            names.swap(i, rng.below(i as u64 + 1) as usize);
        }
        names
    };
    assert!(machines.len() >= 30, "{machines:?}");
    let cases = env_u64("MACHINA_PROPTEST_CASES").unwrap_or(machines.len() as u64) as usize;

    let mut valid = 0;
    let mut bridges = BTreeSet::new();
    let mut errors = std::collections::BTreeMap::<String, usize>::new();
    let mut failures = Vec::new();
    for i in 0..cases {
        let case = generate(&mut rng, &machines[i % machines.len()]);
        match run_case(&case) {
            Ok(outcome) => {
                valid += usize::from(outcome.valid);
                bridges.extend(outcome.built_bridges);
                if let Some(e) = outcome.error {
                    *errors.entry(error_kind(&e)).or_default() += 1;
                }
            }
            Err(e) => failures.push(format!(
                "case {i} (seed {seed:#x}): {} nodefaults={} {}\n    {e}",
                base_args(&case)[1],
                case.nodefaults,
                cli_devices(&case, &case.devices).join(" ")
            )),
        }
    }
    eprintln!(
        "{cases} cases ({valid} valid, {} invalid) in {:?}; bridges built: {bridges:?}",
        cases - valid,
        start.elapsed()
    );
    for (kind, n) in &errors {
        eprintln!("  {n:4} x {kind}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The sample is worth something: both kinds of list, every bridge type built somewhere.
    if cases >= 30 {
        assert!(
            valid * 4 >= cases,
            "only {valid} of {cases} lists were valid"
        );
        assert!(
            (cases - valid) * 6 >= cases,
            "only {} of {cases} lists were invalid",
            cases - valid
        );
        let missing: Vec<_> = BRIDGES.iter().filter(|b| !bridges.contains(**b)).collect();
        assert!(missing.is_empty(), "never built: {missing:?}");
    }
}

#[test]
fn error_comparison_rules() {
    assert!(same_error(
        "machina: Bus 'x' not found\n",
        "Bus 'x' not found",
        false
    ));
    assert!(same_error(
        "machina: -device virtio-blk-pci: drive property not set\n",
        "drive property not set",
        true
    ));
    assert!(same_error(
        "machina: Duplicate ID 'a' for device\n",
        "Duplicate device ID 'a'",
        true
    ));
    assert!(!same_error(
        "machina: Duplicate ID 'a' for device\n",
        "Duplicate device ID 'a'",
        false
    ));
    assert!(!same_error("machina: other\n", "Bus 'x' not found", false));
    assert!(!same_error(
        "Bus 'x' not found\n",
        "Bus 'x' not found",
        false
    ));
}
