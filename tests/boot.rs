//! Boots the bundled tiny guest on both machine types with the real binary and checks what
//! the guest saw: the PCI functions at their QEMU addresses, the ACPI tables, ECAM, and the
//! way the machine ends (poweroff, reset, triple fault).

mod common;

use common::{boot, machina, require_kvm, LIMIT};
use machina_tests::{field, parse_pci_lines, TempDir};

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
    let dir = TempDir::new("serial");
    let path = dir.join("console.log");
    let arg = format!("file:{}", path.display());
    let r = boot(&["-M", "pc", "-serial", &arg]);
    r.check(r.status == Some(0), "exit 0");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    r.check(
        text.contains("pci: 00:00.0 8086:1237"),
        &format!("the console file holds the guest output, got:\n{text}"),
    );
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

/// Every `bar:` line's address is assigned, and every bridge got a bus number.
fn assert_numbered_and_assigned(r: &machina_tests::RunResult, expected_functions: usize) {
    let pci = parse_pci_lines(&r.stdout);
    r.check(
        pci.len() == expected_functions,
        &format!(
            "the walk found {expected_functions} functions, found {}",
            pci.len()
        ),
    );
    let bridges = r.lines_with("bridge: ");
    r.check(!bridges.is_empty(), "bridges are listed");
    for b in &bridges {
        r.check(
            !b.contains("secondary=00"),
            &format!("firmware step numbered the bridge: {b}"),
        );
    }
    for bar in r.lines_with("bar: ") {
        r.check(
            !bar.contains("addr=0x0 "),
            &format!("firmware step assigned the BAR: {bar}"),
        );
    }
}

#[test]
fn q35_guest_walks_the_whole_tree_through_ecam() {
    if !require_kvm() {
        return;
    }
    let r = boot(&[
        "-M",
        "q35",
        "-nodefaults",
        "-serial",
        "stdio",
        "-device",
        "pcie-root-port,id=rp1,chassis=1,addr=0x2,multifunction=on",
        "-device",
        "pcie-root-port,id=rp2,chassis=2,addr=0x2.0x1",
        "-device",
        "pcie-pci-bridge,id=br1,bus=rp1",
        "-device",
        "e1000,bus=br1,addr=0x1",
        "-device",
        "virtio-rng-pci,bus=rp2",
        "-device",
        "x3130-upstream,id=up,bus=pcie.0,addr=0x4",
        "-device",
        "xio3130-downstream,id=dn,bus=up,chassis=3",
        "-device",
        "virtio-net-pci,bus=dn",
        "-device",
        "i82801b11-bridge,id=dmi,bus=pcie.0,addr=0x1e",
        "-device",
        "pci-bridge,id=pb,bus=dmi,chassis_nr=4,addr=0x1",
        "-device",
        "virtio-rng-pci,bus=pb,addr=0x3",
        "-append",
        "machina.test=pci-scan-ecam,acpi",
    ]);
    assert_powered_off(&r);
    r.check(
        r.lines_with("pci-scan-ecam: done").len() == 1,
        "the walk went through ECAM found via MCFG",
    );
    // 4 chipset + 2 root ports + pcie-pci-bridge + e1000 + rng + upstream + downstream + net
    // + dmi bridge + pci-bridge + rng.
    assert_numbered_and_assigned(&r, 15);
    r.check(
        r.stdout.contains("pci: 02:01.0 8086:100e"),
        "e1000 behind root port -> pcie-pci-bridge, on the bridge's bus, slot 1",
    );
}

#[test]
fn pc_guest_walks_bridges_through_cf8() {
    if !require_kvm() {
        return;
    }
    let r = boot(&[
        "-M",
        "pc",
        "-nodefaults",
        "-serial",
        "stdio",
        "-device",
        "pci-bridge,id=pb1,chassis_nr=1,addr=0x5",
        "-device",
        "pci-bridge,id=pb2,chassis_nr=2,bus=pb1,addr=0x2",
        "-device",
        "virtio-net-pci,bus=pb2,addr=0x3",
        "-device",
        "e1000,bus=pb1,addr=0x4",
        "-append",
        "machina.test=pci-scan",
    ]);
    assert_powered_off(&r);
    // 4 chipset + 2 bridges + net + e1000.
    assert_numbered_and_assigned(&r, 8);
    r.check(
        r.stdout.contains("pci: 02:03.0 1af4:1000"),
        "transitional virtio-net two bridges down",
    );
}
