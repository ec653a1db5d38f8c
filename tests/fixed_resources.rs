//! Fixed resources come from the plan (issue 13): a `-machine-definition` whose board puts
//! the APM ports, the reset control register, fw_cfg and the firmware's PM block elsewhere
//! gets a machine that decodes them there, and nothing at the old places, as qtest sees it;
//! one that moves the SCI and the
//! IOAPIC gets ACPI tables (FADT SCI_INT, MADT IOAPIC address) that say so.

mod common;

use common::{machina, require_kvm};
use machina_tests::process::start_with_acpi_dump;
use machina_tests::qtest_client::Qtest;
use machina_tests::TempDir;
use serde_json::{json, Value};
use std::io::Write;
use std::process::Stdio;

/// The built-in q35 board.
fn q35_board() -> Value {
    let boards: Value =
        serde_json::from_str(include_str!("../resources/machines/boards.json")).expect("boards");
    boards["boards"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["name"] == "q35"))
        .expect("q35 board")
        .clone()
}

/// A definition file in `dir` with `board` and machine type `name` on it.
fn write_definition(dir: &std::path::Path, name: &str, board: Value) -> std::path::PathBuf {
    let definition = json!({
        "boards": [board],
        "machine-types": [
            {"name": name, "inherits": "pc-q35-10.2", "board": board["name"]}
        ]
    });
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, definition.to_string()).expect("write definition");
    path
}

/// The built-in q35 board as board `q35-moved`, with `apm` at 0xb4, the reset control
/// register at 0x5f0, fw_cfg at 0x520 and the firmware's ACPI PM block at 0x680, and machine
/// type `moved-q35` on it; written to `dir`.
fn moved_definition(dir: &std::path::Path) -> std::path::PathBuf {
    let mut board = q35_board();
    board["name"] = json!("q35-moved");
    let mut moved = 0;
    for dev in board["isa"].as_array_mut().expect("isa list") {
        let io = match dev["type"].as_str() {
            Some("apm") => json!([["0xb4", 2]]),
            Some("lpc-reset-control") => json!([["0x5f0", 1]]),
            Some("fw_cfg_io") => json!([["0x520", "0xc"]]),
            _ => continue,
        };
        dev["io"] = io;
        moved += 1;
    }
    for block in board["firmware-io"].as_array_mut().expect("firmware-io") {
        if block["role"] == "pm-block" {
            block["base"] = json!("0x680");
            moved += 1;
        }
    }
    assert_eq!(
        moved, 4,
        "the q35 board lists APM, reset control, fw_cfg, PM block"
    );
    write_definition(dir, "moved-q35", board)
}

#[test]
fn a_machine_definition_moves_apm_the_reset_control_register_fw_cfg_and_the_pm_block() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("fixed-resources");
    let file = moved_definition(dir.path());
    let args: Vec<String> = [
        "-machine-definition",
        file.to_str().expect("path"),
        "-machine",
        "moved-q35",
        "-nodefaults",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut q = Qtest::start(&machina(), &args);

    // APM_STS is a scratch register at the new APM_CNT + 1; the old ports decode nothing.
    assert_eq!(q.cmd("outb 0xb5 0x5a"), "OK");
    assert_eq!(q.value("inb 0xb5"), 0x5a);
    assert_eq!(q.value("inb 0xb3"), 0xff);
    // The firmware step puts the PM block where the plan says (ICH9 PMBASE, 00:1f.0 0x40,
    // = 0x680); the ACPI disable and enable commands at the new APM_CNT clear and set SCI_EN
    // in its PM1_CNT.
    assert_eq!(q.cmd("machina_firmware_init"), "OK");
    assert_eq!(q.cmd("outl 0xcf8 0x8000f840"), "OK");
    assert_eq!(q.value("inl 0xcfc") & 0xff80, 0x680, "ICH9 PMBASE");
    assert_eq!(q.cmd("outb 0xb4 0x03"), "OK");
    assert_eq!(q.value("inw 0x684") & 1, 0, "SCI_EN after APM ACPI disable");
    assert_eq!(q.cmd("outb 0xb4 0x02"), "OK");
    assert_eq!(q.value("inw 0x684") & 1, 1, "SCI_EN after APM ACPI enable");
    assert_eq!(q.value("inw 0x604"), 0xffff, "nothing at the old PM block");

    // The reset control register answers at 0x5f0 (SYS_RST kept, no reset requested) and
    // 0xcf9 is only part of CONFIG_ADDRESS's dword now.
    assert_eq!(q.cmd("outb 0x5f0 0x02"), "OK");
    assert_eq!(q.value("inb 0x5f0"), 0x02);
    assert_eq!(q.value("inb 0xcf9"), 0xff);
    assert_eq!(q.cmd("outl 0xcf8 0x80000000"), "OK");
    assert_eq!(q.value("inl 0xcf8"), 0x8000_0000);
    // Config cycles still work: the MCH's vendor ID at 00:00.0.
    assert_eq!(q.value("inw 0xcfc"), 0x8086);

    // fw_cfg: selecting the signature (key 0) at 0x520 reads "QEMU" from 0x521, and the DMA
    // register at 0x524 reads back "QEMU CFG"; the old selector and data ports are gone.
    assert_eq!(fw_cfg_signature(&mut q, 0x520), *b"QEMU");
    assert_eq!(
        q.value("inl 0x524"),
        u64::from(u32::from_le_bytes(*b"QEMU"))
    );
    assert_eq!(fw_cfg_signature(&mut q, 0x510), [0xff; 4]);
    assert!(q.alive());
}

/// The four signature bytes fw_cfg at `base` gives (key 0 selected, then byte reads).
fn fw_cfg_signature(q: &mut Qtest, base: u16) -> [u8; 4] {
    assert_eq!(q.cmd(&format!("outw {base:#x} 0x0")), "OK");
    let mut sig = [0u8; 4];
    for b in &mut sig {
        *b = q.value(&format!("inb {:#x}", base + 1)) as u8;
    }
    sig
}

#[test]
fn the_built_in_boards_keep_apm_and_the_reset_control_register() {
    if !require_kvm() {
        return;
    }
    let args: Vec<String> = ["-machine", "q35", "-nodefaults"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut q = Qtest::start(&machina(), &args);
    assert_eq!(q.cmd("outb 0xb3 0x5a"), "OK");
    assert_eq!(q.value("inb 0xb3"), 0x5a);
    assert_eq!(q.cmd("outb 0xcf9 0x02"), "OK");
    assert_eq!(q.value("inb 0xcf9"), 0x02);
    assert_eq!(fw_cfg_signature(&mut q, 0x510), *b"QEMU");
}

#[test]
fn a_machine_definition_moves_the_sci_and_the_ioapic_in_the_acpi_tables() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("fixed-resources");
    let mut board = q35_board();
    board["name"] = json!("q35-moved-acpi");
    board["sci-irq"] = json!(11);
    for r in board["memory"]["regions"].as_array_mut().expect("regions") {
        if r["name"] == "ioapic" {
            r["base"] = json!("0xfec10000");
        }
    }
    for d in board["isa"].as_array_mut().expect("isa list") {
        if d["type"] == "kvm-ioapic" {
            d["mmio"] = json!([["0xfec10000", "0x1000"]]);
        }
    }
    let file = write_definition(dir.path(), "moved-acpi", board);
    let tables = dir.join("tables");
    dump_acpi(
        &tables,
        &[
            "-machine-definition",
            file.to_str().expect("path"),
            "-machine",
            "moved-acpi",
        ],
    );
    let fadt = std::fs::read(tables.join("facp.dat")).expect("FADT");
    assert_eq!(u16::from_le_bytes([fadt[46], fadt[47]]), 11, "FADT SCI_INT");
    let madt = std::fs::read(tables.join("apic.dat")).expect("MADT");
    let mut ioapics = Vec::new();
    let mut at = 44;
    while at + 1 < madt.len() && madt[at + 1] > 0 {
        if madt[at] == 1 {
            ioapics.push(u32::from_le_bytes([
                madt[at + 4],
                madt[at + 5],
                madt[at + 6],
                madt[at + 7],
            ]));
        }
        at += usize::from(madt[at + 1]);
    }
    assert_eq!(ioapics, vec![0xfec1_0000], "MADT IOAPIC address");
}

/// Build the machine of `args` (stopped) with `MACHINA_ACPI_DUMP=dir` and wait for its
/// tables; the XSDT is written last.
fn dump_acpi(dir: &std::path::Path, args: &[&str]) {
    let mut child = start_with_acpi_dump(&machina(), dir, args, Stdio::null());
    // The caller reads the tables after machina has exited, so every file is complete.
    let mut stdin = child.stdin.take().expect("stdin");
    let _ = stdin.write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n");
    drop(stdin);
    let _ = child.wait();
}
