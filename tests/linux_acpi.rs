//! machina's ACPI tables against QEMU 7.2's, as ACPICA's disassembler (`iasl -d`, Debian's
//! `acpica-tools`) reads them: the tables the RSDT/XSDT lists, FACS referenced once, and the
//! DSDT's device set (path and `_HID`) and sleep states, for q35 and pc with defaults and
//! with `-nodefaults`. QEMU's tables are read from guest memory after SeaBIOS installed them
//! (`-accel tcg`, QMP `pmemsave`); machina's through its `MACHINA_ACPI_DUMP` hook.
//!
//! Every difference allowed is listed in `KNOWN` with its reason: each is hardware or an
//! interface machina does not model, which its tables must not describe.

mod common;

use machina_tests::TempDir;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const QEMU: &str = "/usr/bin/qemu-system-x86_64";
const IASL: &str = "/usr/bin/iasl";

/// (what QEMU has and machina does not, reason). Matched against a table signature, a
/// sleep state name, or the end of a DSDT device path / its `_HID`.
const KNOWN: &[(&str, &str)] = &[
    (
        "HPET",
        "machina models no HPET (HPET table and \\_SB.HPET absent)",
    ),
    (
        "_SB.LNK",
        "q35's LNKA-H exist for PIC mode only (QEMU's _PRT returns them when _PIC(0)); \
         machina's q35 _PRT is the APIC-mode one (GSIA-H) and machina does not route q35 \
         PIRQs to ISA IRQs",
    ),
    ("_S3", "no S3: machina cannot suspend to RAM and resume"),
    ("FDC0", "machina models no floppy controller"),
    ("LPT1", "machina models no parallel port"),
    (
        "PCI0.PRES",
        "no ACPI CPU hot-plug interface (QEMU's CPU hotplug registers at 0x0cd8)",
    ),
    (
        "_SB.CPUS",
        "no ACPI CPU hot-plug container; CPUs are described by the MADT",
    ),
    (
        "PCI0.GPE0",
        "no ACPI PCI hot-plug registers (QEMU's acpi-pci-hotplug at 0xae00)",
    ),
    (
        "PCI0.PHPR",
        "the ACPI PCI hot-plug objects (PHPR, \\_GPE with _E01) are declared only when a \
         bus is ACPI hot-plug: q35 without bridges or ports has none",
    ),
    (
        "_GPE",
        "the ACPI PCI hot-plug objects (PHPR, \\_GPE with _E01) are declared only when a \
         bus is ACPI hot-plug: q35 without bridges or ports has none",
    ),
];

fn known(item: &str) -> Option<&'static str> {
    KNOWN
        .iter()
        .find(|(k, _)| item.contains(k))
        .map(|(_, why)| *why)
}

fn tools_available() -> bool {
    for tool in [QEMU, IASL] {
        if !Path::new(tool).exists() {
            eprintln!(
                "SKIP: {tool} is not installed (apt-get install qemu-system-x86 acpica-tools)"
            );
            return false;
        }
    }
    true
}

fn le32(b: &[u8], off: usize) -> u64 {
    u64::from(u32::from_le_bytes(b[off..off + 4].try_into().unwrap()))
}

fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// X_FIRMWARE_CTRL, where the FADT is long enough to have it (pc's revision 1 FADT is not).
fn x_firmware_ctrl(fadt: &[u8]) -> u64 {
    if fadt.len() >= 140 {
        le64(fadt, 132)
    } else {
        0
    }
}

/// What one machine's tables say.
#[derive(Debug, Default)]
struct Tables {
    /// Signatures the RSDT/XSDT lists, in order.
    listed: Vec<String>,
    /// FADT FIRMWARE_CTRL, X_FIRMWARE_CTRL.
    facs_refs: (u64, u64),
    /// Raw DSDT.
    dsdt: Vec<u8>,
}

fn table_at(mem: &[u8], addr: u64) -> Vec<u8> {
    let a = addr as usize;
    let len = le32(mem, a + 4) as usize;
    mem[a..a + len].to_vec()
}

/// QEMU's tables: boot SeaBIOS under TCG until the RSDP exists, then read guest memory.
fn qemu_tables(machine: &str, nodefaults: bool, dir: &Path) -> Tables {
    // Debian's QEMU 7.2 under TCG sometimes exits (status 0, no message, no SHUTDOWN event)
    // right after SeaBIOS's start on this host; such a run is retried.
    for attempt in 1..=4 {
        match std::panic::catch_unwind(|| qemu_tables_once(machine, nodefaults, dir)) {
            Ok(t) => return t,
            Err(_) if attempt < 4 => eprintln!("QEMU run {attempt} failed; retrying"),
            Err(e) => std::panic::resume_unwind(e),
        }
    }
    unreachable!()
}

fn qemu_tables_once(machine: &str, nodefaults: bool, dir: &Path) -> Tables {
    let sock = dir.join("qmp.sock");
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let mut args = vec![
        "-machine",
        machine,
        "-accel",
        "tcg",
        "-m",
        "128M",
        "-display",
        "none",
        "-no-shutdown",
        "-qmp",
        &qmp,
    ];
    // The default COM1 stays, its output discarded; no human monitor.
    args.extend(if nodefaults {
        ["-nodefaults"].as_slice()
    } else {
        ["-serial", "null", "-monitor", "none"].as_slice()
    });
    let mut child = Command::new(QEMU)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start QEMU");
    let deadline = Instant::now() + Duration::from_secs(30);
    // Connect once the greeting comes: a connection made while QEMU is still starting can be
    // dropped without one.
    let (stream, greeting) = loop {
        assert!(Instant::now() < deadline, "QEMU's QMP socket never greeted");
        assert!(child.try_wait().unwrap().is_none(), "QEMU exited");
        std::thread::sleep(Duration::from_millis(50));
        let Ok(s) = std::os::unix::net::UnixStream::connect(&sock) else {
            continue;
        };
        let mut first = String::new();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        if reader.read_line(&mut first).is_ok() && first.contains("QMP") {
            break (s, reader);
        }
    };
    drop(greeting);
    let mut writer = stream.try_clone().unwrap();
    let mut lines = BufReader::new(stream).lines();
    let mut cmd = |text: &str| {
        if let Err(e) = writeln!(writer, "{text}") {
            std::thread::sleep(Duration::from_millis(500));
            panic!("sending {text} to QEMU: {e}; QEMU: {:?}", child.try_wait());
        }
        for line in lines.by_ref() {
            let line = line.expect("read QEMU's QMP socket");
            if line.contains("\"return\"") || line.contains("\"error\"") {
                return line;
            }
        }
        panic!("QEMU's monitor closed");
    };
    cmd(r#"{"execute":"qmp_capabilities"}"#);
    let dump = dir.join("qemu-mem");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mem, rsdp) = loop {
        assert!(Instant::now() < deadline, "SeaBIOS never installed an RSDP");
        std::thread::sleep(Duration::from_millis(200));
        cmd(&format!(
            r#"{{"execute":"pmemsave","arguments":{{"val":0,"size":{},"filename":"{}"}}}}"#,
            128u64 << 20,
            dump.display()
        ));
        let mem = std::fs::read(&dump).unwrap();
        // A valid RSDP (checksum) pointing at a complete RSDT: SeaBIOS has finished.
        let found = (0xe0000..0x100000).step_by(16).find(|&a| {
            &mem[a..a + 8] == b"RSD PTR "
                && mem[a..a + 20].iter().fold(0u8, |s, b| s.wrapping_add(*b)) == 0
                && {
                    let r = le32(&mem, a + 16) as usize;
                    r + 8 < mem.len()
                        && &mem[r..r + 4] == b"RSDT"
                        && r + le32(&mem, r + 4) as usize <= mem.len()
                }
        });
        if let Some(a) = found {
            break (mem, a);
        }
    };
    cmd(r#"{"execute":"quit"}"#);
    let _ = child.wait();
    let _ = std::fs::remove_file(&dump);
    // SeaBIOS writes a revision 0 RSDP and an RSDT (32-bit entries).
    let rsdt = table_at(&mem, le32(&mem, rsdp + 16));
    let mut t = Tables::default();
    for off in (36..rsdt.len()).step_by(4) {
        let table = table_at(&mem, le32(&rsdt, off));
        let sig = String::from_utf8_lossy(&table[0..4]).into_owned();
        if sig == "FACP" {
            t.facs_refs = (le32(&table, 36), x_firmware_ctrl(&table));
            t.dsdt = table_at(&mem, le32(&table, 40));
        }
        t.listed.push(sig);
    }
    t
}

/// machina's tables through MACHINA_ACPI_DUMP (index.txt names each table's address).
fn machina_tables(machine: &str, nodefaults: bool, dir: &Path) -> Tables {
    std::fs::create_dir_all(dir).unwrap();
    let mut args = vec![
        "-machine", machine, "-S", "-display", "none", "-qmp", "stdio",
    ];
    // The default COM1 stays (stdio is the monitor's).
    args.extend(if nodefaults {
        ["-nodefaults"].as_slice()
    } else {
        ["-serial", "null"].as_slice()
    });
    let mut child = Command::new(common::machina())
        .args(&args)
        .env("MACHINA_ACPI_DUMP", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start machina");
    let index = dir.join("index.txt");
    let deadline = Instant::now() + Duration::from_secs(60);
    // index.txt is written before the tables; the XSDT is the last one.
    while !dir.join("xsdt.dat").exists() {
        assert!(Instant::now() < deadline, "machina wrote no ACPI dump");
        assert!(child.try_wait().unwrap().is_none(), "machina exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n");
    drop(stdin);
    let _ = child.wait();
    let by_addr: BTreeMap<u64, String> = std::fs::read_to_string(&index)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (name, addr) = l.split_once(' ')?;
            let addr = u64::from_str_radix(addr.trim_start_matches("0x"), 16).ok()?;
            Some((addr, name.to_string()))
        })
        .collect();
    let read = |name: &str| std::fs::read(dir.join(format!("{name}.dat"))).unwrap();
    let xsdt = read("xsdt");
    let mut t = Tables::default();
    for off in (36..xsdt.len()).step_by(8) {
        let name = by_addr
            .get(&le64(&xsdt, off))
            .expect("XSDT entry points at a dumped table");
        let table = read(name);
        let sig = String::from_utf8_lossy(&table[0..4]).into_owned();
        if sig == "FACP" {
            t.facs_refs = (le32(&table, 36), x_firmware_ctrl(&table));
        }
        t.listed.push(sig);
    }
    t.dsdt = read("dsdt");
    t
}

/// `iasl -d` of a DSDT; the device set as "PATH HID" and the sleep state names.
fn dsdt_devices(dsdt: &[u8], dir: &Path) -> BTreeSet<String> {
    std::fs::create_dir_all(dir).unwrap();
    let dat = dir.join("dsdt.dat");
    std::fs::write(&dat, dsdt).unwrap();
    let out = Command::new(IASL)
        .arg("-d")
        .arg(&dat)
        .current_dir(dir)
        .output()
        .expect("run iasl");
    assert!(
        out.status.success(),
        "iasl -d failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dsl = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap();
    parse_dsl(&dsl)
}

/// Walk the disassembly's Device/Scope nesting; record each `_HID` with its full path and
/// each `_Sx` name.
fn parse_dsl(dsl: &str) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    let mut scopes: Vec<(String, i32)> = Vec::new();
    let mut depth = 0i32;
    let mut pending: Option<String> = None;
    for line in dsl.lines() {
        let code = line.split("//").next().unwrap_or("").trim();
        for kw in ["Device (", "Scope ("] {
            if let Some(rest) = code.strip_prefix(kw) {
                pending = rest.split(')').next().map(str::to_string);
            }
        }
        if code.starts_with('{') {
            if let Some(name) = pending.take() {
                scopes.push((name, depth));
            }
        }
        for ch in code.chars() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if scopes.last().is_some_and(|(_, d)| *d == depth) {
                        scopes.pop();
                    }
                }
                _ => {}
            }
        }
        if let Some(rest) = code.strip_prefix("Name (_HID, ") {
            let hid = rest.split('"').nth(1).unwrap_or("?");
            let mut path = String::new();
            for (name, _) in &scopes {
                // `\X.Y` is absolute; anything else is relative to the enclosing scope.
                path = match name.strip_prefix('\\') {
                    Some(abs) => abs.to_string(),
                    None if path.is_empty() => name.clone(),
                    None => format!("{path}.{name}"),
                };
            }
            set.insert(format!("{path} {hid}"));
        }
        for s in ["_S0", "_S1", "_S2", "_S3", "_S4", "_S5"] {
            if code.starts_with(&format!("Name ({s}")) {
                set.insert(s.to_string());
            }
        }
    }
    set
}

fn compare(machine: &str, nodefaults: bool) -> Vec<String> {
    let label = format!("{machine}{}", if nodefaults { " -nodefaults" } else { "" });
    // Removed however the comparison ends (QEMU's memory image is 128 MiB).
    let scratch = TempDir::new(&format!("linux-acpi-{machine}-{nodefaults}"));
    let base: PathBuf = scratch.path.clone();
    let q = qemu_tables(machine, nodefaults, &base);
    let m = machina_tables(machine, nodefaults, &base.join("machina"));
    let qd = dsdt_devices(&q.dsdt, &base.join("qemu"));
    let md = dsdt_devices(&m.dsdt, &base.join("machina-dsl"));
    let mut problems = Vec::new();
    println!("== {label}");
    println!("QEMU tables:    {:?}", q.listed);
    println!("machina tables: {:?}", m.listed);
    println!("QEMU DSDT:    {qd:?}");
    println!("machina DSDT: {md:?}");

    let q_tables: BTreeSet<&String> = q.listed.iter().collect();
    let m_tables: BTreeSet<&String> = m.listed.iter().collect();
    for sig in q_tables.difference(&m_tables) {
        match known(sig) {
            Some(why) => println!("known difference: table {sig} absent: {why}"),
            None => problems.push(format!("{label}: table {sig} missing")),
        }
    }
    for sig in m_tables.difference(&q_tables) {
        problems.push(format!("{label}: table {sig} QEMU does not have"));
    }
    // FACS: QEMU references it through FIRMWARE_CTRL only.
    if (q.facs_refs.0 != 0) != (m.facs_refs.0 != 0) || (q.facs_refs.1 != 0) != (m.facs_refs.1 != 0)
    {
        problems.push(format!(
            "{label}: FACS references (FIRMWARE_CTRL, X_FIRMWARE_CTRL) set as {:?}, QEMU {:?}",
            (m.facs_refs.0 != 0, m.facs_refs.1 != 0),
            (q.facs_refs.0 != 0, q.facs_refs.1 != 0)
        ));
    }
    for item in qd.difference(&md) {
        match known(item) {
            Some(why) => println!("known difference: {item} absent: {why}"),
            None => problems.push(format!("{label}: DSDT lacks {item}")),
        }
    }
    for item in md.difference(&qd) {
        problems.push(format!("{label}: DSDT has {item}, QEMU's does not"));
    }
    problems
}

#[test]
fn acpi_tables_match_qemu() {
    if !tools_available() {
        return;
    }
    let mut problems = Vec::new();
    for machine in ["q35", "pc"] {
        for nodefaults in [false, true] {
            problems.extend(compare(machine, nodefaults));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn dsl_parser_reads_nested_paths() {
    let dsl = r#"
DefinitionBlock ("", "DSDT", 1, "BOCHS ", "BXPC    ", 0x00000001)
{
    Scope (\_SB)
    {
        Device (PCI0)
        {
            Name (_HID, EisaId ("PNP0A08") /* PCI Express Bus */)  // _HID: Hardware ID
            Device (SF8)
            {
                Device (KBD)
                {
                    Name (_HID, EisaId ("PNP0303"))
                    Name (_CRS, ResourceTemplate ()
                    {
                        IRQNoFlags ()
                            {1}
                    })
                }
                Device (RTC)
                {
                    Name (_HID, EisaId ("PNP0B00"))
                }
            }
        }
    }
    Scope (\_SB.PCI0)
    {
        Device (FWCF)
        {
            Name (_HID, "QEMU0002")
        }
    }
    Name (_S5, Package (0x04) { Zero, Zero, Zero, Zero })
}
"#;
    let set = parse_dsl(dsl);
    let want: BTreeSet<String> = [
        "_SB.PCI0 PNP0A08",
        "_SB.PCI0.SF8.KBD PNP0303",
        "_SB.PCI0.SF8.RTC PNP0B00",
        "_SB.PCI0.FWCF QEMU0002",
        "_S5",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(set, want);
}
