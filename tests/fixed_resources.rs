//! Fixed resources come from the plan (issue 13): a `-machine-definition` whose board puts
//! the APM ports and the reset control register elsewhere gets a machine that decodes them
//! there, and nothing at the old places, as qtest sees it.

mod common;

use common::{machina, require_kvm};
use machina_tests::qtest_client::Qtest;
use serde_json::{json, Value};

/// The built-in q35 board as board `q35-moved`, with `apm` at 0xb4 and the reset control
/// register at 0x5f0, and machine type `moved-q35` on it; written to a per-test directory.
fn moved_definition(dir: &std::path::Path) -> std::path::PathBuf {
    let boards: Value =
        serde_json::from_str(include_str!("../resources/machines/boards.json")).expect("boards");
    let mut board = boards["boards"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["name"] == "q35"))
        .expect("q35 board")
        .clone();
    board["name"] = json!("q35-moved");
    let mut moved = 0;
    for dev in board["isa"].as_array_mut().expect("isa list") {
        let io = match dev["type"].as_str() {
            Some("apm") => json!([["0xb4", 2]]),
            Some("lpc-reset-control") => json!([["0x5f0", 1]]),
            _ => continue,
        };
        dev["io"] = io;
        moved += 1;
    }
    assert_eq!(
        moved, 2,
        "the q35 board lists APM and the reset control register"
    );
    let definition = json!({
        "boards": [board],
        "machine-types": [
            {"name": "moved-q35", "inherits": "pc-q35-10.2", "board": "q35-moved"}
        ]
    });
    let path = dir.join("moved-q35.json");
    std::fs::write(&path, definition.to_string()).expect("write definition");
    path
}

#[test]
fn a_machine_definition_moves_apm_and_the_reset_control_register() {
    if !require_kvm() {
        return;
    }
    let dir = tempdir();
    let file = moved_definition(&dir);
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
    // The ACPI disable and enable commands at the new APM_CNT clear and set SCI_EN in
    // PM1_CNT (PM block at the firmware step's 0x600).
    assert_eq!(q.cmd("machina_firmware_init"), "OK");
    assert_eq!(q.cmd("outb 0xb4 0x03"), "OK");
    assert_eq!(q.value("inw 0x604") & 1, 0, "SCI_EN after APM ACPI disable");
    assert_eq!(q.cmd("outb 0xb4 0x02"), "OK");
    assert_eq!(q.value("inw 0x604") & 1, 1, "SCI_EN after APM ACPI enable");

    // The reset control register answers at 0x5f0 (SYS_RST kept, no reset requested) and
    // 0xcf9 is only part of CONFIG_ADDRESS's dword now.
    assert_eq!(q.cmd("outb 0x5f0 0x02"), "OK");
    assert_eq!(q.value("inb 0x5f0"), 0x02);
    assert_eq!(q.value("inb 0xcf9"), 0xff);
    assert_eq!(q.cmd("outl 0xcf8 0x80000000"), "OK");
    assert_eq!(q.value("inl 0xcf8"), 0x8000_0000);
    // Config cycles still work: the MCH's vendor ID at 00:00.0.
    assert_eq!(q.value("inw 0xcfc"), 0x8086);
    assert!(q.alive());
    drop(q);
    let _ = std::fs::remove_dir_all(&dir);
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
}

/// A directory of this test's own, removed by the test.
fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("machina-fixed-resources-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
