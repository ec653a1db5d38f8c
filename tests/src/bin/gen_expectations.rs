//! Generate the qtest conformance expectations from QEMU (the oracle):
//!
//! ```text
//! cargo run -p machina-tests --bin gen_expectations            # writes tests/data/qtest_*.json
//! cargo run -p machina-tests --bin gen_expectations -- --only config
//! ```
//!
//! Needs qemu-system-x86_64 (Debian 12: QEMU 7.2, `apt-get install qemu-system-x86`; `QEMU`
//! names another binary). The tests read only the JSON files; they never run QEMU.
//!
//! QEMU is run as `-accel tcg -S -display none -qtest unix:...` (Debian's 7.2 has no qtest
//! accelerator; with -S no guest code runs, so PCI config space is QEMU's reset state). The
//! machine gets `smm=off` because machina resolves smm=auto to off (it has no SMM); the rest
//! of the command line is exactly what the tests give machina (`-accel qtest`).
//!
//! The walk is the tests' own ([`Qtest::walk`]): number bridges depth-first in devfn
//! order, enable ECAM on q35 (PCIEXBAR = 0xb0000001), read every function's 256 bytes, walk
//! capabilities, probe BARs/ROM/bridge windows with all-ones and restore. One walk drives
//! QEMU here and machina in the tests, so the two sides cannot drift apart.
//!
//! Firmware facts come from a second QEMU run without -S: SeaBIOS (with a debugcon log to
//! know when it is done) numbers the buses and programs the chipset; the tests compare
//! machina's `machina_firmware_init` with that.
//!
//! Where QEMU 7.2 differs from the QEMU 10.2 machina models, the 10.2 value is written
//! instead and listed in `version_overrides` with its source.

use machina_tests::qmp_client::QmpClient;
use machina_tests::qtest_client::{fmt_bdf, Bdf, Qtest};
use machina_tests::TempDir;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const RP: &str = "pcie-root-port";

/// Config-space scenarios: name, command line (shared by QEMU and machina).
fn config() -> Vec<(&'static str, String)> {
    vec![
        ("q35", "-M q35 -nodefaults".into()),
        ("pc", "-M pc -nodefaults".into()),
        ("q35_sata_off_smbus_off", "-M q35,sata=off,smbus=off -nodefaults".into()),
        ("pc_acpi_off", "-M pc,acpi=off -nodefaults".into()),
        ("q35_usb", "-M q35,usb=on -nodefaults".into()),
        ("pc_usb", "-M pc,usb=on -nodefaults".into()),
        ("q35_defaults", "-M q35".into()),
        ("pc_defaults", "-M pc".into()),
        (
            "q35_endpoints",
            "-M q35 -nodefaults -device VGA -device e1000 -device e1000e".into(),
        ),
        (
            "pc_endpoints",
            "-M pc -nodefaults -device VGA -device e1000 -device e1000e".into(),
        ),
        (
            "q35_root_port_pcie_pci_bridge",
            format!(
                "-M q35 -nodefaults -device {RP},id=rp1,chassis=1,addr=2 -device \
                 pcie-pci-bridge,id=ppb,bus=rp1 -device e1000,bus=ppb,addr=1 -device \
                 virtio-net-pci,bus=ppb,addr=2"
            ),
        ),
        (
            "q35_switch",
            format!(
                "-M q35 -nodefaults -device {RP},id=rp1,chassis=1 -device \
                 x3130-upstream,id=up,bus=rp1 -device \
                 xio3130-downstream,id=dn1,bus=up,chassis=2,slot=1 -device \
                 xio3130-downstream,id=dn2,bus=up,chassis=2,slot=2,addr=1 -device \
                 e1000e,bus=dn1 -device virtio-net-pci,bus=dn2"
            ),
        ),
        (
            "q35_ioh3420_multifunction_root_ports",
            format!(
                "-M q35 -nodefaults -device ioh3420,id=p1,chassis=1,slot=1 -device e1000e,bus=p1 \
                 -device {RP},id=rp2,chassis=2,port=16,addr=3.0,multifunction=on -device \
                 {RP},id=rp3,chassis=3,port=17,addr=3.1,slot=7 -device \
                 {RP},id=rp4,chassis=4,port=18,addr=3.2,hotplug=off -device e1000e,bus=rp3"
            ),
        ),
        (
            "q35_dmi_pci_bridge",
            "-M q35 -nodefaults -device i82801b11-bridge,id=dmi -device \
             pci-bridge,id=pb,bus=dmi,chassis_nr=1,addr=1 -device e1000,bus=pb,addr=1 -device \
             e1000,bus=dmi,addr=2"
                .into(),
        ),
        (
            "pc_pci_bridge",
            "-M pc -nodefaults -device pci-bridge,id=pb,chassis_nr=1 -device e1000,bus=pb,addr=1 \
             -device pci-bridge,id=pb2,bus=pb,chassis_nr=2,addr=2 -device \
             virtio-net-pci,bus=pb2,addr=3"
                .into(),
        ),
        (
            "q35_all_bridges",
            format!(
                "-M q35 -nodefaults -device {RP},id=rp1,chassis=1,addr=2 -device \
                 pcie-pci-bridge,id=ppb,bus=rp1 -device pci-bridge,id=pb,bus=ppb,chassis_nr=5,addr=1 \
                 -device e1000,bus=pb,addr=1 -device {RP},id=rp2,chassis=2,addr=3 -device \
                 x3130-upstream,id=up,bus=rp2 -device \
                 xio3130-downstream,id=dn,bus=up,chassis=3,slot=1 -device virtio-net-pci,bus=dn \
                 -device ioh3420,id=p3,chassis=4,slot=1,addr=4 -device e1000e,bus=p3 -device \
                 i82801b11-bridge,id=dmi,addr=5 -device pci-bridge,id=pb6,bus=dmi,chassis_nr=6,addr=1 \
                 -device virtio-rng-pci,bus=pb6,addr=2"
            ),
        ),
    ]
}

/// virtio placements (issue 5): the device type and its backend properties (`{n}`: the
/// placement's number).
const VIRTIO_TYPES: &[(&str, &str)] = &[
    ("virtio-net-pci", ""),
    ("virtio-blk-pci", ",drive=d{n}"),
    ("virtio-rng-pci", ""),
    ("virtio-serial-pci", ""),
];
/// The backend a placement of this type needs (`{disk}`: the disk file prefix).
fn virtio_backend(dev: &str) -> Option<&'static str> {
    (dev == "virtio-blk-pci").then_some("-blockdev driver=file,node-name=d{n},filename={disk}{n}")
}

/// (what, -device lines); the device under test gets `{dev}{extra}`.
fn virtio_q35() -> Vec<(&'static str, Vec<String>)> {
    let rp = |rest: &str| format!("{RP},{rest}");
    vec![
        ("pcie.0", vec!["{dev}{extra},addr=3".into()]),
        (
            "pcie.0 -non-transitional",
            vec!["{dev}-non-transitional{extra},addr=4".into()],
        ),
        (
            "pcie.0 -transitional",
            vec!["{dev}-transitional{extra},addr=5".into()],
        ),
        (
            "behind pcie-root-port (modern-only)",
            vec![rp("id=rp1,chassis=1,addr=6"), "{dev}{extra},bus=rp1".into()],
        ),
        (
            "behind pcie-root-port, disable-legacy=off",
            vec![
                rp("id=rp2,chassis=2,addr=7"),
                "{dev}{extra},bus=rp2,disable-legacy=off".into(),
            ],
        ),
        (
            "behind pcie-root-port -non-transitional",
            vec![
                rp("id=rp3,chassis=3,addr=8"),
                "{dev}-non-transitional{extra},bus=rp3".into(),
            ],
        ),
        (
            "behind pcie-root-port -transitional",
            vec![
                rp("id=rp4,chassis=4,addr=9"),
                "{dev}-transitional{extra},bus=rp4".into(),
            ],
        ),
        (
            "behind xio3130-downstream (modern-only)",
            vec![
                rp("id=rp5,chassis=5,addr=0xa"),
                "x3130-upstream,id=up,bus=rp5".into(),
                "xio3130-downstream,id=dn,bus=up,chassis=6,slot=1".into(),
                "{dev}{extra},bus=dn".into(),
            ],
        ),
        (
            "behind pcie-pci-bridge (transitional)",
            vec![
                rp("id=rp7,chassis=7,addr=0xb"),
                "pcie-pci-bridge,id=ppb,bus=rp7".into(),
                "{dev}{extra},bus=ppb,addr=1".into(),
            ],
        ),
        (
            "behind i82801b11-bridge/pci-bridge (transitional)",
            vec![
                "i82801b11-bridge,id=dmi,addr=0xc".into(),
                "pci-bridge,id=pb,bus=dmi,chassis_nr=8,addr=1".into(),
                "{dev}{extra},bus=pb,addr=2".into(),
            ],
        ),
    ]
}

fn virtio_pc() -> Vec<(&'static str, Vec<String>)> {
    vec![
        ("pci.0", vec!["{dev}{extra},addr=3".into()]),
        (
            "pci.0 -non-transitional",
            vec!["{dev}-non-transitional{extra},addr=4".into()],
        ),
        (
            "pci.0 -transitional",
            vec!["{dev}-transitional{extra},addr=5".into()],
        ),
        (
            "pci.0 disable-legacy=on",
            vec!["{dev}{extra},addr=6,disable-legacy=on".into()],
        ),
        (
            "behind pci-bridge (transitional)",
            vec![
                "pci-bridge,id=pb,chassis_nr=1,addr=7".into(),
                "{dev}{extra},bus=pb,addr=1".into(),
            ],
        ),
    ]
}

/// Bad command lines (issue 4): QEMU's stderr and status with -S.
const ERRORS: &[&str] = &[
    "-M q35 -device e1000,addr=0x1f",
    "-M q35 -device e1000,addr=0x20",
    "-M q35 -device e1000,addr=0x3.0x8",
    "-M q35 -device e1000,addr=0",
    "-M pc -device e1000,addr=0",
    "-M pc -device e1000,addr=0x1.0x1",
    "-M q35 -device e1000,addr=0x3 -device e1000,addr=0x3",
    "-M pc -device e1000,addr=0x1f.0x7 -device e1000,addr=0x1f.0x7",
    "-M q35 -device e1000,addr=3.0 -device e1000,addr=3.1",
    "-M q35 -device e1000,addr=3.1 -device e1000,addr=3.0",
    "-M q35 -device e1000,addr=2.0,multifunction=off -device e1000,addr=2.1,multifunction=on",
    "-M q35,usb=on -device e1000,addr=0x1d.0x7",
    "-M q35 -device e1000,addr=0x1f.0x2",
    "-M q35 -device e1000,addr=0x1f.0x3",
    "-M pc -device pci-bridge",
    "-M pc -device pci-bridge,chassis_nr=0",
    "-M q35 -device i82801b11-bridge,id=dmi -device pci-bridge,bus=dmi",
    "-M q35 -device pcie-root-port -device pcie-root-port",
    "-M q35 -device ioh3420 -device pcie-root-port",
    "-M q35 -device pcie-root-port,chassis=1,slot=1 -device ioh3420,chassis=1,slot=1",
    "-M q35 -device x3130-upstream,id=u -device xio3130-downstream,bus=u -device xio3130-downstream,bus=u,addr=1",
    "-M q35 -device pcie-root-port,chassis=300",
    "-M q35 -device pcie-root-port,id=rp,chassis=1 -device pcie-root-port,id=rp,chassis=2",
    "-M q35 -device virtio-blk-pci",
    "-M q35 -device e1000,bus=nosuch",
    "-M q35 -device nosuch-dev",
    "-M q35 -device e1000,foo=bar",
    "-M q35 -device virtio-net-pci,disable-legacy=maybe",
    "-M q35 -device virtio-net-pci-transitional,disable-legacy=on",
    "-M q35 -device virtio-net-pci,disable-modern=on,disable-legacy=on",
    "-M q35 -device pcie-root-port,id=rp -device virtio-net-pci,bus=rp,disable-modern=on",
    // Accepted by QEMU (it is permissive about PCI vs PCIe placement, docs/pcie.txt section
    // 2): machina must build these too.
    "-M pc -device x3130-upstream",
    "-M pc -device xio3130-downstream",
    "-M q35 -device xio3130-downstream",
    "-M pc -device pcie-pci-bridge",
    "-M pc -device pcie-root-port",
    "-M q35 -device pcie-root-port,id=rp -device pcie-root-port,bus=rp,chassis=2",
    "-M q35 -device pcie-root-port,id=rp -device e1000,bus=rp,addr=1",
    "-M q35 -device pcie-root-port,id=rp -device virtio-net-pci-transitional,bus=rp",
    "-M q35 -device pcie-pci-bridge,id=b -device e1000,bus=b,addr=0",
    "-M q35 -device pcie-root-port,id=rp,chassis=1 -device pcie-pci-bridge,id=b,bus=rp -device e1000,bus=b,addr=0",
    "-M pc -device pci-bridge,chassis_nr=1,id=b -device e1000,bus=b,addr=0",
    "-M q35 -device i82801b11-bridge,id=b -device e1000,bus=b,addr=0",
    "-M q35,sata=off -device e1000,addr=0x1f.0x2",
    "-M q35 -device e1000,multifunction=on,addr=0x1f.0x5",
    "-M pc -device pci-bridge,chassis_nr=1,id=b -device pci-bridge,chassis_nr=1,bus=b",
];

/// Registers the firmware step programs, compared with SeaBIOS: (bdf, offset, size).
const FW_REGS_Q35: &[(Bdf, u16, u8)] = &[
    ((0, 0, 0), 0x60, 4),
    ((0, 0, 0), 0x64, 4),
    ((0, 0x1f, 0), 0x40, 4),
    ((0, 0x1f, 0), 0x44, 1),
    ((0, 0x1f, 0), 0x60, 4),
    ((0, 0x1f, 0), 0x68, 4),
    ((0, 0x1f, 0), 0xf0, 4),
    ((0, 0x1f, 3), 0x20, 4),
    ((0, 0x1f, 3), 0x40, 1),
];
const FW_REGS_PC: &[(Bdf, u16, u8)] = &[
    ((0, 1, 0), 0x60, 4),
    ((0, 1, 3), 0x40, 4),
    ((0, 1, 3), 0x80, 1),
    ((0, 1, 3), 0x90, 4),
    ((0, 1, 3), 0xd2, 1),
];

/// A QEMU 7.2 -> 10.2 difference in what the walk sees (machina models pc-*-10.2).
struct VersionOverride {
    device: (u64, u64),
    bytes: &'static [(usize, u8)],
    why: &'static str,
}

const VERSION_OVERRIDES: &[VersionOverride] = &[VersionOverride {
    device: (0x8086, 0x29c0),
    bytes: &[(0x50, 0x00), (0x9d, 0x00), (0x9e, 0x00)],
    why: "mch_reset (hw/pci-host/q35.c, QEMU >= 9.0) sets SMRAM 0x9d=0x02, ESMRAMC 0x9e=0x38 \
          and EXT_TSEG_MBYTES 0x50 only when has_smm_ranges (x86_machine_is_smm_enabled); with \
          smm=off they stay 0. QEMU 7.2 set them unconditionally.",
}];

const AER_UNC_MASK_WHY: &str = "AER Uncorrectable Error Mask (AER + 0x08) = 0x02400000 (INTN | \
     TLP prefix blocked): QEMU >= 8.1 sets it in pcie_aer_init (x-pcie-err-unc-mask, off only \
     for <= 8.0 machine types); 7.2 left it 0.";

fn qemu() -> PathBuf {
    std::env::var_os("QEMU")
        .map(PathBuf::from)
        .unwrap_or_else(|| "qemu-system-x86_64".into())
}

fn split(cmdline: &str) -> Vec<String> {
    cmdline.split_whitespace().map(String::from).collect()
}

/// machina resolves smm=auto to off (it has no SMM); QEMU is told so explicitly.
fn qemu_args(args: &[String]) -> Vec<String> {
    let mut out = args.to_vec();
    for i in 0..out.len().saturating_sub(1) {
        if (out[i] == "-M" || out[i] == "-machine") && !out[i + 1].contains("smm=") {
            out[i + 1].push_str(",smm=off");
        }
    }
    out
}

fn apply_overrides(f: &mut Value, notes: &mut BTreeSet<String>) {
    let aer: Vec<u64> = f["ext_caps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c[1] == json!(0x0001))
        .filter_map(|c| c[0].as_u64())
        .collect();
    for off in aer {
        f["ext_nonzero"][format!("0x{:03x}", off + 8)] = json!(0x0240_0000u32);
        notes.insert(AER_UNC_MASK_WHY.into());
    }
    for o in VERSION_OVERRIDES {
        if (f["vendor"].as_u64(), f["device"].as_u64()) != (Some(o.device.0), Some(o.device.1)) {
            continue;
        }
        let mut raw = machina_tests::qtest_client::hex_bytes(f["dump"].as_str().expect("dump"));
        for &(off, v) in o.bytes {
            raw[off] = v;
        }
        f["dump"] = json!(raw.iter().map(|b| format!("{b:02x}")).collect::<String>());
        notes.insert(o.why.into());
    }
}

fn run_walk(args: &[String], q35: bool) -> (Value, Vec<Value>) {
    let mut q =
        Qtest::start_qemu(&qemu(), &qemu_args(args), true, &[]).unwrap_or_else(|e| panic!("{e}"));
    q.walk(q35)
}

/// Run SeaBIOS and read what it programmed.
fn seabios(args: &[String], q35: bool) -> Value {
    let dir = TempDir::new("seabios");
    let log = dir.join("debugcon.log");
    let qmp_path = dir.join("qmp.sock");
    let extra = [
        "-chardev".to_string(),
        format!("file,id=dbg,path={}", log.display()),
        "-device".into(),
        "isa-debugcon,iobase=0x402,chardev=dbg".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp_path.display()),
    ];
    let mut q = Qtest::start_qemu(&qemu(), &qemu_args(args), false, &extra)
        .unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    while !std::fs::read(&log)
        .map(|t| String::from_utf8_lossy(&t).contains("enter handle_19"))
        .unwrap_or(false)
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "SeaBIOS did not finish: {args:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Stop the vCPU: option ROMs and the boot loop also use 0xcf8/0xcfc.
    let mut qmp = QmpClient::connect(&qmp_path, Duration::from_secs(20));
    qmp.ok("qmp_capabilities", Value::Null);
    qmp.ok("stop", Value::Null);
    let mut regs = Vec::new();
    for &(bdf, off, size) in if q35 { FW_REGS_Q35 } else { FW_REGS_PC } {
        if q.present(bdf) {
            regs.push(json!([fmt_bdf(bdf), off, size, q.cfg_read(bdf, off, size)]));
        }
    }
    let mut functions = Map::new();
    for bdf in q.all_functions() {
        let mut f = Map::new();
        f.insert("command".into(), json!(q.cfg_read(bdf, 4, 2)));
        f.insert("interrupt_line".into(), json!(q.cfg_read(bdf, 0x3c, 1)));
        if q.is_bridge(bdf) {
            f.insert(
                "bus_numbers".into(),
                json!(q.cfg_read(bdf, 0x18, 4) & 0xff_ffff),
            );
        }
        functions.insert(fmt_bdf(bdf), Value::Object(f));
    }
    json!({"regs": regs, "functions": functions})
}

fn config_scenarios() -> Vec<Value> {
    let mut out = Vec::new();
    for (name, cmdline) in config() {
        let args = split(&cmdline);
        let q35 = args[1].contains("q35");
        let (facts, mut funcs) = run_walk(&args, q35);
        let mut notes = BTreeSet::new();
        for f in &mut funcs {
            apply_overrides(f, &mut notes);
        }
        let fw = seabios(&args, q35);
        let fw_bdfs: Vec<&String> = fw["functions"].as_object().expect("map").keys().collect();
        let bdfs: Vec<&str> = funcs.iter().filter_map(|f| f["bdf"].as_str()).collect();
        assert!(
            fw_bdfs.iter().map(|s| s.as_str()).eq(bdfs.iter().copied()),
            "{name}: SeaBIOS saw {fw_bdfs:?}, the walk {bdfs:?}"
        );
        eprintln!("config {name:<40} {} functions", funcs.len());
        out.push(
            json!({"name": name, "args": args, "q35": q35, "facts": facts,
            "functions": funcs, "firmware": fw, "notes": notes}),
        );
    }
    out
}

fn virtio_scenarios(disk: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for &(dev, extra) in VIRTIO_TYPES {
        for (machine, placements) in [("q35", virtio_q35()), ("pc", virtio_pc())] {
            let mut args = split(&format!("-M {machine} -nodefaults"));
            let mut what = Vec::new();
            for (n, (label, devices)) in placements.iter().enumerate() {
                let n = n.to_string();
                if let Some(backend) = virtio_backend(dev) {
                    args.extend(split(&backend.replace("{n}", &n)));
                }
                let extra = extra.replace("{n}", &n);
                for d in devices {
                    args.push("-device".into());
                    args.push(d.replace("{dev}", dev).replace("{extra}", &extra));
                }
                what.push(*label);
            }
            let real: Vec<String> = args.iter().map(|a| a.replace("{disk}", disk)).collect();
            let q35 = machine == "q35";
            let (facts, mut funcs) = run_walk(&real, q35);
            let mut notes = BTreeSet::new();
            for f in &mut funcs {
                apply_overrides(f, &mut notes);
            }
            let name = format!("{dev}_{machine}");
            eprintln!("virtio {name:<40} {} functions", funcs.len());
            out.push(
                json!({"name": name, "args": args, "q35": q35, "placements": what,
                "facts": facts, "functions": funcs, "notes": notes}),
            );
        }
    }
    out
}

fn normalize(text: &str) -> String {
    text.replace("pc-q35-7.2", "pc-q35-10.2")
        .replace("pc-i440fx-7.2", "pc-i440fx-10.2")
}

fn error_cases() -> Vec<Value> {
    let mut out = Vec::new();
    for cmdline in ERRORS {
        let args = split(cmdline);
        let mut argv: Vec<&str> = vec!["-accel", "tcg", "-S", "-display", "none", "-nodefaults"];
        argv.extend(args.iter().map(String::as_str));
        let r = machina_tests::run(&qemu(), &argv, Duration::from_secs(3));
        let prefix = "qemu-system-x86_64: ";
        let lines: Vec<String> = r
            .stderr
            .lines()
            .filter(|l| !l.contains("has no peer") && !l.contains("terminating on signal"))
            .map(|l| normalize(l.strip_prefix(prefix).unwrap_or(l)))
            .collect();
        let mut case = Map::new();
        case.insert("args".into(), json!(args));
        case.insert("status".into(), json!(r.status));
        case.insert("stderr".into(), json!(lines));
        if r.status.is_some() {
            // "-device ARGS: message": the message without QEMU's location prefix.
            let first = lines.first().map(String::as_str).unwrap_or("");
            let options: Vec<String> = args
                .windows(2)
                .filter(|w| w[0].starts_with('-'))
                .map(|w| format!("{} {}", w[0], w[1]))
                .collect();
            let loc = options
                .iter()
                .find(|o| first.starts_with(&format!("{o}: ")));
            case.insert("location".into(), json!(loc));
            let message = match loc {
                Some(l) => &first[l.len() + 2..],
                None => first,
            };
            case.insert("message".into(), json!(message));
        }
        eprintln!("error {cmdline:<80} -> {:?} {:?}", r.status, lines.first());
        out.push(Value::Object(case));
    }
    out
}

fn qemu_version() -> String {
    let out = Command::new(qemu())
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", qemu().display()));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Write `data` as the files have always been written: keys sorted, one space of indent.
fn write(dir: &Path, name: &str, data: &Value) {
    let path = dir.join(name);
    let mut text = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(
        &mut text,
        serde_json::ser::PrettyFormatter::with_indent(b" "),
    );
    data.serialize(&mut ser).expect("serialize");
    text.push(b'\n');
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    eprintln!("wrote {}", path.display());
}

fn main() {
    let mut only = None;
    let mut out = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        match (flag.as_str(), argv.next()) {
            ("--only", Some(what)) if ["config", "virtio", "errors"].contains(&what.as_str()) => {
                only = Some(what)
            }
            ("--out", Some(dir)) => out = PathBuf::from(dir),
            _ => {
                eprintln!(
                    "usage: gen_expectations [--only config|virtio|errors] [--out DIR (default \
                     tests/data)]"
                );
                std::process::exit(1);
            }
        }
    }
    let only = only.as_deref();
    let mut header = Map::new();
    header.insert(
        "generated_by".into(),
        json!("cargo run -p machina-tests --bin gen_expectations"),
    );
    header.insert("qemu".into(), json!(qemu_version()));
    header.insert("qemu_extra_machine_options".into(), json!("smm=off"));
    let mut why: Vec<&str> = VERSION_OVERRIDES.iter().map(|o| o.why).collect();
    why.push(AER_UNC_MASK_WHY);
    header.insert("version_overrides".into(), json!(why));
    let with = |key: &str, v: Vec<Value>| {
        let mut data = header.clone();
        data.insert(key.into(), json!(v));
        Value::Object(data)
    };
    if only.is_none_or(|o| o == "config") {
        write(
            &out,
            "qtest_config.json",
            &with("scenarios", config_scenarios()),
        );
    }
    if only.is_none_or(|o| o == "virtio") {
        let dir = TempDir::new("virtio-disk");
        for n in 0..virtio_q35().len() {
            let f = std::fs::File::create(dir.join(format!("disk{n}"))).expect("disk");
            f.set_len(1 << 20).expect("disk size");
        }
        let disk = dir.join("disk").display().to_string();
        write(
            &out,
            "qtest_virtio.json",
            &with("scenarios", virtio_scenarios(&disk)),
        );
    }
    if only.is_none_or(|o| o == "errors") {
        write(&out, "qtest_errors.json", &with("cases", error_cases()));
    }
}
