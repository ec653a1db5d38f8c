//! Boots the bundled tiny guest on both machine types with the real binary and checks what
//! the guest saw: the PCI functions at their QEMU addresses, the ACPI tables, ECAM, and the
//! way the machine ends (poweroff, reset, triple fault).

mod common;

use common::{boot, machina, require_kvm, LIMIT};
use machina_tests::{field, parse_pci_lines};

fn assert_powered_off(r: &machina_tests::RunResult) {
    r.check(
        r.status == Some(0),
        "machina should exit 0 after the guest powers off",
    );
    r.check(
        r.stdout.starts_with("machina-guest: version="),
        "the guest banner comes first",
    );
    r.check(
        r.lines_with("poweroff: ")
            .iter()
            .any(|l| l.contains("pm1a_cnt=")),
        "the guest powered off through ACPI PM1a_CNT",
    );
}

#[test]
fn q35_guest_walks_pci_and_powers_off() {
    if !require_kvm() {
        return;
    }
    let r = boot(&["-machine", "q35", "-smp", "2", "-m", "256", "-nographic"]);
    assert_powered_off(&r);
    let pci = parse_pci_lines(&r.stdout);
    let find = |bdf: &str| pci.iter().find(|f| f.bdf == bdf);
    let mch = find("00:00.0");
    r.check(
        mch.map(|f| f.vendor_device.as_str()) == Some("8086:29c0"),
        "q35 host bridge (MCH) 8086:29c0 at 00:00.0",
    );
    r.check(
        mch.map(|f| f.class.as_str()) == Some("060000"),
        "MCH class 060000",
    );
    let lpc = find("00:1f.0");
    r.check(
        lpc.map(|f| {
            (
                f.vendor_device.as_str(),
                f.header.as_str(),
                f.revision.as_str(),
            )
        }) == Some(("8086:2918", "80", "02")),
        "ICH9 LPC 8086:2918 rev 02, multifunction, at 00:1f.0",
    );
    r.check(
        find("00:1f.2").map(|f| f.vendor_device.as_str()) == Some("8086:2922"),
        "ICH9 AHCI at 00:1f.2 (sata=on by default)",
    );
    r.check(
        find("00:1f.3").map(|f| f.vendor_device.as_str()) == Some("8086:2930"),
        "ICH9 SMBus at 00:1f.3 (smbus=on by default)",
    );
    r.check(
        r.lines_with("pci-scan: done").len() == 1,
        "the PCI walk finished",
    );
}

#[test]
fn pc_guest_walks_pci_and_powers_off() {
    if !require_kvm() {
        return;
    }
    let r = boot(&["-machine", "pc", "-smp", "2", "-m", "256", "-nographic"]);
    assert_powered_off(&r);
    let pci = parse_pci_lines(&r.stdout);
    let ids: Vec<(&str, &str)> = pci
        .iter()
        .map(|f| (f.bdf.as_str(), f.vendor_device.as_str()))
        .collect();
    for expected in [
        ("00:00.0", "8086:1237"),
        ("00:01.0", "8086:7000"),
        ("00:01.1", "8086:7010"),
        ("00:01.3", "8086:7113"),
    ] {
        r.check(ids.contains(&expected), &format!("pc has {expected:?}"));
    }
}

#[test]
fn nodefaults_leaves_only_the_chipset() {
    if !require_kvm() {
        return;
    }
    let r = boot(&["-M", "q35", "-nodefaults", "-serial", "stdio"]);
    assert_powered_off(&r);
    let bdfs: Vec<String> = parse_pci_lines(&r.stdout)
        .into_iter()
        .map(|f| f.bdf)
        .collect();
    r.check(
        bdfs == ["00:00.0", "00:1f.0", "00:1f.2", "00:1f.3"],
        "q35 -nodefaults: MCH, LPC, AHCI, SMBus only",
    );
}

#[test]
fn guest_finds_acpi_tables_and_ecam() {
    if !require_kvm() {
        return;
    }
    let r = boot(&[
        "-M",
        "q35",
        "-nographic",
        "-append",
        "machina.test=acpi,ecam",
    ]);
    assert_powered_off(&r);
    r.check(
        !r.stdout.contains("checksum=bad"),
        "every ACPI table checksum is valid",
    );
    for sig in ["FACP", "APIC", "MCFG"] {
        r.check(
            r.lines_with("acpi: table=")
                .iter()
                .any(|l| l.contains(&format!("table={sig}"))),
            &format!("XSDT lists {sig}"),
        );
    }
    r.check(
        field(&r.stdout, "acpi: fadt", "pm1a_cnt") == Some("0x604"),
        "FADT PM1a_CNT at PM base 0x600 + 4",
    );
    r.check(
        field(&r.stdout, "acpi: mcfg", "base") == Some("0xb0000000"),
        "MCFG describes ECAM at 0xb0000000",
    );
    r.check(
        field(&r.stdout, "ecam:", "match") == Some("yes"),
        "ECAM reads the same host bridge as 0xcf8/0xcfc",
    );
}

#[test]
fn command_line_reaches_the_guest() {
    if !require_kvm() {
        return;
    }
    let r = boot(&[
        "-nographic",
        "-append",
        "machina.test=echo machina.echo=hello-from-the-host",
    ]);
    assert_powered_off(&r);
    r.check(
        r.stdout.contains("echo: hello-from-the-host"),
        "-append reaches the guest",
    );
}

#[test]
fn serial_to_file() {
    if !require_kvm() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("machina-serial-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("console.log");
    let arg = format!("file:{}", path.display());
    let r = boot(&["-M", "pc", "-serial", &arg]);
    r.check(r.status == Some(0), "exit 0");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    r.check(
        text.contains("pci: 00:00.0 8086:1237"),
        &format!("the console file holds the guest output, got:\n{text}"),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn triple_fault_is_reported_not_hung() {
    if !require_kvm() {
        return;
    }
    let r = boot(&["-nographic", "-append", "machina.test=triple-fault"]);
    r.check(
        r.status == Some(1),
        "a triple fault ends machina with status 1",
    );
    r.check(
        r.stdout.contains("triple-fault: now"),
        "the guest got there",
    );
    r.check(
        r.stderr.contains("triple fault") && r.stderr.contains("RIP="),
        "stderr names the reason and shows the registers",
    );
}

#[test]
fn reset_reboots_unless_no_reboot() {
    if !require_kvm() {
        return;
    }
    let r = boot(&["-nographic", "-no-reboot", "-append", "machina.test=reset"]);
    r.check(r.status == Some(0), "-no-reboot: a guest reset exits 0");
    r.check(
        r.stdout.contains("reset: now"),
        "the guest asked for the reset",
    );
    r.check(
        !r.stdout.contains("reset: failed"),
        "0xcf9 reset took effect",
    );

    // Without -no-reboot the same kernel boots again: wait for the second banner.
    let r = machina_tests::run_until(
        &machina(),
        &["-nographic", "-append", "machina.test=reset"],
        LIMIT,
        |out| out.matches("machina-guest: version=").count() >= 2,
    );
    r.check(
        r.stdout.matches("machina-guest: version=").count() >= 2,
        "the guest booted again after the reset",
    );
}
