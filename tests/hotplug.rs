//! PCI hot-plug on a running machine (issue 11), driven as QEMU's own qtests drive it: QMP
//! `device_add`/`device_del`, and the guest's side (ACPI PCI hot-plug registers, the PCIe
//! slot registers of a port) played through the qtest protocol, as libqos does
//! (qpci_unplug_acpi_device_test). Checked: the address x-query-placement predicts is the
//! one device_add assigns (query-pci, x-query-machine-definition), the announcement each
//! mechanism makes (UP bit + GPE0 bit 1; presence detect + attention button), DEVICE_DELETED
//! after the eject and not before, QEMU 7.2's refusal texts, a second add into the freed
//! slot, and 100 add/remove rounds with the fd count flat. The tiny guest's own rounds
//! (finding, using and ejecting hot-added devices) are in tests/hotplug_guest.rs.

mod common;

use common::{machina, require_kvm};
use machina_tests::qmp_client::QmpClient;
use machina_tests::qtest_client::{Bdf, Qtest};
use machina_tests::TempDir;
use serde_json::{json, Value};
use std::time::Duration;

/// A machine under qtest with a QMP socket and a scratch directory (disk images).
struct Machine {
    qtest: Qtest,
    qmp: QmpClient,
    _dir: TempDir,
}

impl Machine {
    fn start(args: &[&str]) -> Machine {
        let tmp = TempDir::new("hotplug");
        let dir = tmp.path.clone();
        for d in 0..2 {
            let f = std::fs::File::create(dir.join(format!("disk{d}"))).expect("disk");
            f.set_len(1 << 20).expect("size");
        }
        let sock = dir.join("qmp.sock");
        let mut full: Vec<String> = vec![
            "-nodefaults".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", sock.display()),
        ];
        for d in 0..2 {
            full.push("-blockdev".into());
            full.push(format!(
                "driver=file,node-name=disk{d},filename={}",
                dir.join(format!("disk{d}")).display()
            ));
        }
        full.extend(args.iter().map(|s| s.to_string()));
        let qtest = Qtest::start(&machina(), &full);
        let mut qmp = QmpClient::connect(&sock, Duration::from_secs(20));
        qmp.ok("qmp_capabilities", Value::Null);
        Machine {
            qtest,
            qmp,
            _dir: tmp,
        }
    }

    /// `start` of machine type `machine` with `devices` (`-device` each) and `extra`
    /// arguments; None where /dev/kvm is not usable (the test is skipped).
    fn kvm(machine: &str, devices: &[&str], extra: &[&str]) -> Option<Machine> {
        if !require_kvm() {
            return None;
        }
        let mut args = vec!["-machine", machine];
        args.extend_from_slice(extra);
        for d in devices {
            args.extend(["-device", d]);
        }
        Some(Machine::start(&args))
    }

    /// Where x-query-placement says `device` would go: (bus, slot, function).
    fn predict(&mut self, device: Value) -> (String, u64, u64) {
        let r = self
            .qmp
            .ok("x-query-placement", json!({ "devices": [device] }));
        let p = &r[0]["placement"];
        assert!(p.is_object(), "no placement: {r}");
        (
            p["bus"].as_str().unwrap_or_default().to_string(),
            p["slot"].as_u64().unwrap_or(99),
            p["function"].as_u64().unwrap_or(99),
        )
    }

    /// (slot, function) of `id` in query-pci, anywhere.
    fn in_query_pci(&mut self, id: &str) -> Option<(u64, u64)> {
        fn walk(buses: &Value, id: &str) -> Option<(u64, u64)> {
            for bus in buses.as_array()? {
                for dev in bus["devices"].as_array()? {
                    if dev["qdev_id"] == id {
                        return Some((dev["slot"].as_u64()?, dev["function"].as_u64()?));
                    }
                    if let Some(found) = walk(&json!([dev["pci_bridge"]["bus"]]), id) {
                        return Some(found);
                    }
                }
            }
            None
        }
        let pci = self.qmp.ok("query-pci", Value::Null);
        walk(&pci, id)
    }

    /// (bus, slot, function) of `id` in the machine definition (the plan a reset rebuilds;
    /// query-pci needs bus numbers, which no firmware gave bridges under qtest).
    fn placed(&mut self, id: &str) -> Option<(String, u64, u64)> {
        let def = self.qmp.ok("x-query-machine-definition", json!({}));
        def["pci"]
            .as_array()?
            .iter()
            .find(|f| f["id"] == id)
            .map(|f| {
                (
                    f["bus"].as_str().unwrap_or_default().to_string(),
                    f["slot"].as_u64().unwrap_or(99),
                    f["function"].as_u64().unwrap_or(99),
                )
            })
    }

    /// Whether the machine definition (the plan a reset rebuilds) lists `id`.
    fn in_definition(&mut self, id: &str) -> bool {
        let def = self.qmp.ok("x-query-machine-definition", json!({}));
        def["pci"]
            .as_array()
            .is_some_and(|fs| fs.iter().any(|f| f["id"] == id))
    }

    /// `device_add` that must fail: QEMU's text.
    fn refused(&mut self, device: Value) -> String {
        self.qmp.error("device_add", device)
    }

    /// `device_add` that must succeed.
    fn add(&mut self, device: Value) {
        self.qmp.ok("device_add", device);
    }

    fn deleted_events(&self, id: &str) -> usize {
        self.qmp
            .events
            .iter()
            .filter(|e| e["event"] == "DEVICE_DELETED" && e["data"]["device"] == id)
            .count()
    }

    fn inl(&mut self, port: u64) -> u64 {
        self.qtest.value(&format!("inl {port:#x}"))
    }

    fn outl(&mut self, port: u64, v: u64) {
        assert_eq!(self.qtest.cmd(&format!("outl {port:#x} {v:#x}")), "OK");
    }

    fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.qtest.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

const PIIX4_PCIHP: u64 = 0xae00;
const ICH9_PCIHP: u64 = 0x0cc0;
const UP: u64 = 0;
const DOWN: u64 = 4;
const EJECT: u64 = 8;
const SELECT: u64 = 0x10;

/// The guest's ACPI _EJ0: select the bus, write the slot's bit to the eject register.
fn acpi_eject(m: &mut Machine, base: u64, bsel: u64, slot: u64) {
    m.outl(base + SELECT, bsel);
    m.outl(base + EJECT, 1 << slot);
}

#[test]
fn pc_acpi_hotplug_add_use_remove_and_readd() {
    let Some(mut m) = Machine::kvm("pc", &[], &[]) else {
        return;
    };
    let dev = json!({"driver": "virtio-blk-pci", "id": "hd1", "drive": "disk0"});
    let (bus, slot, function) = m.predict(dev.clone());
    assert_eq!((bus.as_str(), function), ("pci.0", 0));
    m.qmp.ok("device_add", dev.clone());
    assert_eq!(
        m.in_query_pci("hd1"),
        Some((slot, 0)),
        "where the planner said"
    );
    assert!(
        m.in_definition("hd1"),
        "the definition (and a reset) keeps it"
    );
    // The announcement: the slot's UP bit on bus 0 and GPE0 bit 1 (0xafe0).
    m.outl(PIIX4_PCIHP + SELECT, 0);
    assert_eq!(m.inl(PIIX4_PCIHP + UP) & (1 << slot), 1 << slot);
    assert_eq!(m.qtest.value("inb 0xafe0") & 2, 2, "GPE0 status bit 1");
    // The guest sees the function at the slot (vendor 0x1af4).
    let bdf: Bdf = (0, slot as u8, 0);
    assert_eq!(m.qtest.cfg_read(bdf, 0, 2), 0x1af4);

    // device_del only asks: DOWN set, the device stays until the guest ejects it.
    m.qmp.ok("device_del", json!({"id": "hd1"}));
    assert_eq!(m.inl(PIIX4_PCIHP + DOWN) & (1 << slot), 1 << slot);
    assert_eq!(m.deleted_events("hd1"), 0);
    assert!(
        m.in_query_pci("hd1").is_some(),
        "a guest that does not answer keeps it"
    );
    acpi_eject(&mut m, PIIX4_PCIHP, 0, slot);
    let ev = m.qmp.wait_event("DEVICE_DELETED");
    // The virtio backend goes first, as QEMU unrealizes the child before the proxy.
    assert_eq!(ev["data"]["path"], "/machine/peripheral/hd1/virtio-backend");
    let ev = m.qmp.wait_event("DEVICE_DELETED");
    assert_eq!(
        ev["data"],
        json!({"device": "hd1", "path": "/machine/peripheral/hd1"})
    );
    assert_eq!(m.in_query_pci("hd1"), None);
    assert!(!m.in_definition("hd1"));
    assert_eq!(m.qtest.cfg_read(bdf, 0, 2), 0xffff, "the slot is empty");
    assert_eq!(
        m.inl(PIIX4_PCIHP + DOWN) & (1 << slot),
        0,
        "eject completes the request"
    );
    assert_eq!(
        m.qmp.execute("device_del", json!({"id": "hd1"}))["error"]["class"],
        "DeviceNotFound"
    );

    // A second device takes the freed slot, as the planner predicts.
    let rng = json!({"driver": "virtio-rng-pci", "id": "rng1"});
    assert_eq!(m.predict(rng.clone()).1, slot);
    m.qmp.ok("device_add", rng);
    assert_eq!(m.in_query_pci("rng1"), Some((slot, 0)));
}

#[test]
fn pc_acpi_hotplug_behind_a_cold_plugged_bridge() {
    let Some(mut m) = Machine::kvm("pc", &["pci-bridge,id=br,chassis_nr=1"], &[]) else {
        return;
    };
    m.qmp.ok(
        "device_add",
        json!({"driver": "virtio-net-pci", "id": "nic1", "bus": "br", "addr": "5"}),
    );
    // pci.0 is BSEL 0, the bridge's bus BSEL 1.
    m.outl(PIIX4_PCIHP + SELECT, 1);
    assert_eq!(m.inl(PIIX4_PCIHP + UP), 1 << 5);
    m.qmp.ok("device_del", json!({"id": "nic1"}));
    assert_eq!(m.inl(PIIX4_PCIHP + DOWN), 1 << 5);
    acpi_eject(&mut m, PIIX4_PCIHP, 1, 5);
    m.qmp.wait_event("DEVICE_DELETED");
    assert_eq!(m.placed("nic1"), None);
}

#[test]
fn q35_acpi_hotplug_into_a_root_port() {
    let Some(mut m) = Machine::kvm(
        "pc-q35-10.2",
        &["pcie-root-port,id=rp1,chassis=1,addr=3"],
        &[],
    ) else {
        return;
    };
    m.qmp.ok(
        "device_add",
        json!({"driver": "virtio-blk-pci", "id": "hd1", "drive": "disk1", "bus": "rp1"}),
    );
    assert_eq!(m.placed("hd1"), Some(("rp1".to_string(), 0, 0)));
    // pcie.0 has no ACPI hot-plug on q35: the port's bus is BSEL 0 (ICH9 at 0xcc0).
    m.outl(ICH9_PCIHP + SELECT, 0);
    assert_eq!(m.inl(ICH9_PCIHP + UP), 1);
    m.qmp.ok("device_del", json!({"id": "hd1"}));
    assert_eq!(m.deleted_events("hd1"), 0);
    acpi_eject(&mut m, ICH9_PCIHP, 0, 0);
    m.qmp.wait_event("DEVICE_DELETED");
    assert_eq!(m.placed("hd1"), None);
}

/// The PCIe capability offset of the function at `bdf`.
fn exp_cap(m: &mut Machine, bdf: Bdf) -> u16 {
    m.qtest
        .std_caps(bdf)
        .into_iter()
        .find(|&(_, id)| id == 0x10)
        .map(|(o, _)| o)
        .expect("PCIe capability")
}

const SLTCTL: u16 = 0x18;
const SLTSTA: u16 = 0x1a;
const LNKSTA: u16 = 0x12;

#[test]
fn q35_native_hotplug_on_a_root_port() {
    let Some(mut m) = Machine::kvm(
        "pc-q35-6.0",
        &["pcie-root-port,id=rp1,chassis=1,addr=3"],
        &[],
    ) else {
        return;
    };
    let port: Bdf = (0, 3, 0);
    let cap = exp_cap(&mut m, port);
    // Empty slot at reset: powered off, nothing present.
    assert_eq!(m.qtest.cfg_read(port, cap + SLTSTA, 2) & 0x40, 0);
    // pciehp powers the slot on and turns the power indicator on (PCC clear, PIC on).
    let ctl = m.qtest.cfg_read(port, cap + SLTCTL, 2);
    m.qtest.cfg_write(
        port,
        cap + SLTCTL,
        2,
        (ctl & !0x0700) | 0x0100 | 0x0020 | 0x0009,
    );
    m.qtest.cfg_write(port, cap + SLTSTA, 2, 0x1f);
    m.qmp.ok(
        "device_add",
        json!({"driver": "virtio-net-pci", "id": "nic1", "bus": "rp1"}),
    );
    let sta = m.qtest.cfg_read(port, cap + SLTSTA, 2);
    assert_eq!(
        sta & 0x49,
        0x49,
        "presence detect state, changed and attention: {sta:#x}"
    );
    assert_ne!(m.qtest.cfg_read(port, cap + LNKSTA, 2) & 0x2000, 0, "DLLLA");
    m.qtest.cfg_write(port, cap + SLTSTA, 2, 0x1f);
    // device_del presses the attention button; the device stays until the slot is off.
    m.qmp.ok("device_del", json!({"id": "nic1"}));
    assert_eq!(
        m.qtest.cfg_read(port, cap + SLTSTA, 2) & 1,
        1,
        "attention button"
    );
    assert_eq!(
        m.qmp.error("device_del", json!({"id": "nic1"})),
        "Device nic1 is already in the process of unplug"
    );
    assert!(m.placed("nic1").is_some());
    assert_eq!(m.deleted_events("nic1"), 0);
    let ctl = m.qtest.cfg_read(port, cap + SLTCTL, 2);
    m.qtest
        .cfg_write(port, cap + SLTCTL, 2, (ctl & !0x0300) | 0x0400 | 0x0300);
    m.qmp.wait_event("DEVICE_DELETED");
    let ev = m.qmp.wait_event("DEVICE_DELETED");
    assert_eq!(ev["data"]["device"], "nic1");
    assert_eq!(m.placed("nic1"), None);
    assert_eq!(
        m.qtest.cfg_read(port, cap + SLTSTA, 2) & 0x40,
        0,
        "not present"
    );
}

/// A slot no guest turned on: QEMU unplugs without a round trip (DEVICE_DELETED before
/// device_del answers), and the slot takes a device again.
fn unplug_of_an_off_slot_is_immediate(
    machine: &str,
    bridge: &str,
    rng: Value,
    at: (&str, u64, u64),
) {
    let Some(mut m) = Machine::kvm(machine, &[bridge], &[]) else {
        return;
    };
    m.add(rng.clone());
    m.qmp.ok("device_del", json!({"id": "rng1"}));
    assert_eq!(m.deleted_events("rng1"), 1);
    assert_eq!(
        m.qmp.execute("device_del", json!({"id": "rng1"}))["error"]["class"],
        "DeviceNotFound"
    );
    m.add(rng);
    assert_eq!(m.placed("rng1"), Some((at.0.to_string(), at.1, at.2)));
}

#[test]
fn q35_native_unplug_of_a_powered_off_slot_is_immediate() {
    unplug_of_an_off_slot_is_immediate(
        "pc-q35-6.0",
        "pcie-root-port,id=rp1,chassis=1",
        json!({"driver": "virtio-rng-pci", "id": "rng1", "bus": "rp1"}),
        ("rp1", 0, 0),
    );
}

#[test]
fn shpc_unplug_of_a_slot_never_enabled_is_immediate() {
    unplug_of_an_off_slot_is_immediate(
        "pc-q35-6.0",
        "pci-bridge,id=br,chassis_nr=1",
        json!({"driver": "virtio-rng-pci", "id": "rng1", "bus": "br", "addr": "4"}),
        ("br", 4, 0),
    );
}

/// The standard hot-plug controller of the bridge at `bdf`, driven through its BAR0 as
/// Linux's shpchp does (the capability's dword window only finds the registers): BAR0 at
/// `SHPC_BAR`, memory decoding on, secondary bus 1.
fn shpc_setup(m: &mut Machine, bdf: Bdf) {
    m.qtest.cfg_write(bdf, 0x10, 4, SHPC_BAR as u32);
    m.qtest.cfg_write(bdf, 0x14, 4, 0);
    m.qtest.cfg_write(bdf, 0x18, 4, 0x0001_0100);
    m.qtest.cfg_write(bdf, 0x04, 2, 0x0006);
    // The capability's dword select/data window reads the same registers.
    let cap = m
        .qtest
        .std_caps(bdf)
        .into_iter()
        .find(|&(_, id)| id == 0x0c)
        .map(|(o, _)| o)
        .expect("SHPC capability");
    m.qtest.cfg_write(bdf, cap + 2, 1, 3);
    assert_eq!(m.qtest.cfg_read(bdf, cap + 4, 4), 0xe001_011f, "31 slots");
}

const SHPC_BAR: u64 = 0xfe00_0000;
const SHPC_CMD: u64 = 0x14;
const SHPC_LOCATOR: u64 = 0x18;
const SHPC_SERR_INT: u64 = 0x20;

fn shpc_slot_reg(slot: u64) -> u64 {
    0x24 + (slot - 1) * 4
}

fn shpc_rd(m: &mut Machine, off: u64) -> u64 {
    m.qtest.value(&format!("readl {:#x}", SHPC_BAR + off))
}

/// A register write; returns the intercepted IOAPIC lines it moved.
fn shpc_wr(m: &mut Machine, off: u64, v: u64, size: u8) -> Vec<String> {
    let op = if size == 2 { "writew" } else { "writel" };
    let (r, irqs) = m
        .qtest
        .cmd_irqs(&format!("{op} {:#x} {v:#x}", SHPC_BAR + off));
    assert_eq!(r, "OK");
    irqs
}

/// A slot command (code, target) as shpchp writes it, then the completion acknowledged.
fn shpc_command(m: &mut Machine, slot: u64, code: u64) {
    shpc_wr(m, SHPC_CMD, slot << 8 | code, 2);
    assert_eq!(shpc_rd(m, SHPC_CMD) >> 16 & 0xf, 0, "command accepted");
    assert_ne!(shpc_rd(m, SHPC_SERR_INT) & 0x1_0000, 0, "command completed");
    shpc_wr(m, SHPC_SERR_INT, 0x1_0000, 4);
}

/// SHPC hot-plug on q35 6.0's pci-bridge (QEMU 10.0 hw/pci/shpc.c): the add closes the
/// MRL, shows the device present and latches the presence, MRL and button events, with
/// the bridge's INTx raised (INTA of 0:5.0 is PIRQF, IOAPIC pin 21); device_del presses the
/// button; turning the slot off (disabled, power LED off) frees it, DEVICE_DELETED follows.
/// Measured on QEMU 7.2 through BAR0 (its capability window writes the wrong dword): the
/// same values, except that 7.2's reset leaves the attention LED field 0, it accepts
/// device_del while the power LED blinks (10.0 refuses, as here) and frees a slot only
/// when the state becomes disabled with the LED already off (10.0: any turn to off).
#[test]
fn q35_shpc_hotplug_on_a_pci_bridge() {
    let Some(mut m) = Machine::kvm(
        "pc-q35-6.0",
        &["pci-bridge,id=br,chassis_nr=1,addr=5,msi=off"],
        &[],
    ) else {
        return;
    };
    let bridge: Bdf = (0, 5, 0);
    shpc_setup(&mut m, bridge);
    assert_eq!(m.qtest.cmd("irq_intercept_in ioapic"), "OK");
    let slot = 3;
    let reg = shpc_slot_reg(slot);
    // Empty: disabled, LEDs off, MRL open, nothing present, every event masked.
    assert_eq!(shpc_rd(&mut m, reg), 0x7f00_0d3f);
    // shpchp unmasks the controller's interrupts and the slot's events.
    shpc_wr(&mut m, SHPC_SERR_INT, 0, 4);
    shpc_wr(&mut m, reg, 0x0000_0000, 4);
    let dev = json!({"driver": "virtio-net-pci", "id": "n1", "bus": "br", "addr": "3"});
    assert_eq!(m.predict(dev.clone()), ("br".to_string(), slot, 0));
    m.add(dev);
    assert_eq!(m.placed("n1"), Some(("br".to_string(), slot, 0)));
    let (_, irqs) = m.qtest.cmd_irqs(&format!("readl {:#x}", SHPC_BAR + reg));
    assert_eq!(irqs, vec!["IRQ raise 21".to_string()], "INTA of the bridge");
    assert_eq!(
        shpc_rd(&mut m, reg),
        0x000d_003f,
        "present, MRL closed; presence, MRL and button latched"
    );
    assert_eq!(shpc_rd(&mut m, SHPC_LOCATOR), 1 << slot);
    assert_eq!(m.qtest.cfg_read((1, slot as u8, 0), 0, 2), 0x1af4);
    // The guest acknowledges the events (W1C): the line drops.
    let irqs = shpc_wr(&mut m, reg, 0x001f_0000, 4);
    assert_eq!(irqs, vec!["IRQ lower 21".to_string()]);
    // Slot enable with the power LED blinking, then on (shpchp's board_added).
    shpc_command(&mut m, slot, 0x3a);
    shpc_command(&mut m, slot, 0x04);
    assert_eq!(
        shpc_rd(&mut m, reg) & 0x3f,
        0x36,
        "enabled, power on, attention off"
    );

    // device_del presses the attention button; the device stays.
    m.qmp.ok("device_del", json!({"id": "n1"}));
    assert_eq!(shpc_rd(&mut m, reg) >> 16 & 0xff, 0x04, "button latched");
    // No pending state for SHPC: a second request presses the button again.
    m.qmp.ok("device_del", json!({"id": "n1"}));
    assert_eq!(m.deleted_events("n1"), 0);
    shpc_wr(&mut m, reg, 0x001f_0000, 4);
    // shpchp blinks the power LED for 5 s before it acts: QEMU refuses device_del then.
    shpc_command(&mut m, slot, 0x08);
    assert_eq!(
        m.qmp.error("device_del", json!({"id": "n1"})),
        "Hot-unplug failed: guest is busy (power indicator blinking)"
    );
    // hpc_slot_disable: disabled, power LED off, attention on. The slot frees.
    shpc_command(&mut m, slot, 0x1f);
    assert_eq!(
        shpc_rd(&mut m, reg),
        0x0009_0d1f,
        "MRL open, empty; MRL and presence latched"
    );
    while m.qmp.wait_event("DEVICE_DELETED")["data"]["device"] != "n1" {}
    assert_eq!(m.placed("n1"), None);
    assert_eq!(m.qtest.cfg_read((1, slot as u8, 0), 0, 2), 0xffff);

    // The freed slot takes the next device; the MRL closes again.
    shpc_wr(&mut m, reg, 0x001f_0000, 4);
    m.add(json!({"driver": "virtio-rng-pci", "id": "r2", "bus": "br", "addr": "3"}));
    assert_eq!(shpc_rd(&mut m, reg) & 0x00ff_0f00, 0x000d_0000);
}

/// pc with `-global PIIX4_PM.acpi-pci-hotplug-with-bridge-support=off`: pci.0 keeps ACPI
/// hot-plug, a cold-plugged bridge's bus gets SHPC (no BSEL), as in QEMU 7.2.
#[test]
fn pc_without_acpi_bridge_hotplug_uses_shpc() {
    let Some(mut m) = Machine::kvm(
        "pc",
        &["pci-bridge,id=br,chassis_nr=1,addr=5"],
        &[
            "-global",
            "PIIX4_PM.acpi-pci-hotplug-with-bridge-support=off",
        ],
    ) else {
        return;
    };
    shpc_setup(&mut m, (0, 5, 0));
    m.add(json!({"driver": "virtio-rng-pci", "id": "a", "bus": "br", "addr": "1"}));
    assert_eq!(shpc_rd(&mut m, shpc_slot_reg(1)) >> 16 & 0xff, 0x0d);
    // The bridge's bus has no BSEL: only pci.0 (BSEL 0) is ACPI's.
    m.outl(PIIX4_PCIHP + SELECT, 1);
    assert_eq!(m.inl(PIIX4_PCIHP + UP), 0);
    m.add(json!({"driver": "virtio-rng-pci", "id": "b"}));
    m.outl(PIIX4_PCIHP + SELECT, 0);
    assert_ne!(m.inl(PIIX4_PCIHP + UP), 0, "pci.0 still ACPI");
    assert_eq!(
        m.refused(json!({"driver": "virtio-rng-pci", "id": "c", "bus": "br"})),
        "Unsupported PCI slot 0 for standard hotplug controller. Valid slots are between 1 and 31."
    );
}

/// QEMU 7.2's answers, measured with `qemu-system-x86_64 -accel tcg -S -qmp`.
#[test]
fn refusals_have_qemus_texts() {
    let Some(mut m) = Machine::kvm(
        "pc-q35-6.0",
        &[
            "pcie-root-port,id=rp1,chassis=1",
            "pcie-root-port,id=rp2,chassis=2,hotplug=off",
            "x3130-upstream,id=up,bus=rp1",
            "xio3130-downstream,id=dn,bus=up,chassis=5",
        ],
        &[],
    ) else {
        return;
    };
    assert_eq!(
        m.refused(json!({"driver": "virtio-rng-pci", "id": "a"})),
        "Bus 'pcie.0' does not support hotplugging"
    );
    assert_eq!(
        m.refused(json!({"driver": "pcie-root-port", "id": "rp3", "chassis": 3})),
        "Bus 'pcie.0' does not support hotplugging"
    );
    assert_eq!(
        m.refused(json!({"driver": "virtio-rng-pci", "id": "b", "bus": "rp2"})),
        "Hot-plug failed: unsupported by the port device 'rp2'"
    );
    m.qmp.ok(
        "device_add",
        json!({"driver": "virtio-rng-pci", "id": "c", "bus": "dn"}),
    );
    m.qmp.ok(
        "device_add",
        json!({"driver": "virtio-rng-pci", "id": "d", "bus": "dn"}),
    );
    assert_eq!(
        m.refused(json!({"driver": "virtio-rng-pci", "id": "e", "bus": "dn", "addr": "1"})),
        "PCI: slot 1 function 0 not available for virtio-rng-pci, in use by virtio-rng-pci,id=d"
    );
    assert_eq!(
        m.qmp.execute("device_del", json!({"id": "zz"}))["error"]["desc"],
        "Device 'zz' not found"
    );

    // q35 6.1+: ACPI owns the ports; a hotplug=off port's bus refuses like any bus.
    let Some(mut m) = Machine::kvm(
        "pc-q35-10.2",
        &["pcie-root-port,id=rp2,chassis=2,hotplug=off"],
        &[],
    ) else {
        return;
    };
    assert_eq!(
        m.refused(json!({"driver": "virtio-rng-pci", "id": "b", "bus": "rp2"})),
        "Bus 'rp2' does not support hotplugging"
    );

    let Some(mut m) = Machine::kvm("pc", &["virtio-rng-pci,id=x,addr=3"], &[]) else {
        return;
    };
    assert_eq!(
        m.refused(json!({"driver": "virtio-rng-pci", "id": "e", "addr": "3.1"})),
        "PCI: slot 3 function 0 already occupied by virtio-rng-pci, new func virtio-rng-pci cannot be exposed to guest."
    );
}

/// Bridges and ports hot-added as QEMU 7.2 takes them (measured with `-accel tcg -S`):
/// ACPI takes over cold-plugged bridges only, so what is hot-added behind a hot-added
/// bridge goes through its standard hot-plug controller (slot 0 refused), and behind a
/// hot-added port through the port's own slot; a switch's upstream bus takes nothing.
#[test]
fn bridges_and_ports_hot_added_as_qemu_does() {
    let Some(mut m) = Machine::kvm("pc", &[], &[]) else {
        return;
    };
    m.add(json!({"driver": "pci-bridge", "id": "hb", "chassis_nr": 2}));
    let (bus, slot, _) = m.placed("hb").expect("bridge placed");
    assert_eq!(bus, "pci.0");
    m.outl(PIIX4_PCIHP + SELECT, 0);
    assert_ne!(
        m.inl(PIIX4_PCIHP + UP) & (1 << slot),
        0,
        "announced by ACPI"
    );
    shpc_setup(&mut m, (0, slot as u8, 0));
    m.add(json!({"driver": "virtio-rng-pci", "id": "a", "bus": "hb", "addr": "1"}));
    assert_eq!(
        shpc_rd(&mut m, shpc_slot_reg(1)) >> 16 & 0xff,
        0x0d,
        "through the hot-added bridge's SHPC"
    );
    assert_eq!(m.qtest.cfg_read((1, 1, 0), 0, 2), 0x1af4);
    assert_eq!(
        m.refused(json!({"driver": "virtio-rng-pci", "id": "b", "bus": "hb"})),
        "Unsupported PCI slot 0 for standard hotplug controller. Valid slots are between 1 and 31."
    );
    m.add(json!({"driver": "pci-bridge", "id": "hb2", "chassis_nr": 3, "bus": "hb", "addr": "2"}));
    m.add(json!({"driver": "pci-bridge", "id": "off", "chassis_nr": 4, "shpc": false}));
    assert_eq!(
        m.refused(json!({"driver": "virtio-rng-pci", "id": "c", "bus": "off", "addr": "1"})),
        "Bus 'off' does not support hotplugging"
    );
    // The guest ejects the bridge's slot: the bridge and everything behind it go.
    m.qmp.ok("device_del", json!({"id": "hb"}));
    acpi_eject(&mut m, PIIX4_PCIHP, 0, slot);
    let mut gone = Vec::new();
    while gone.len() < 3 {
        let ev = m.qmp.wait_event("DEVICE_DELETED");
        if let Some(id) = ev["data"]["device"].as_str() {
            gone.push(id.to_string());
        }
    }
    gone.sort();
    assert_eq!(gone, ["a", "hb", "hb2"]);
    for id in ["a", "hb", "hb2"] {
        assert_eq!(m.placed(id), None, "{id}");
    }
    // The id and the slot are free again.
    m.add(json!({"driver": "pci-bridge", "id": "hb", "chassis_nr": 2}));
    assert_eq!(m.placed("hb"), Some(("pci.0".to_string(), slot, 0)));
    m.add(json!({"driver": "virtio-rng-pci", "id": "a", "bus": "hb", "addr": "1"}));

    let Some(mut m) = Machine::kvm(
        "pc-q35-6.0",
        &["pcie-root-port,id=rp,chassis=1,addr=3"],
        &[],
    ) else {
        return;
    };
    assert_eq!(
        m.refused(json!({"driver": "pci-bridge", "id": "hb", "chassis_nr": 2})),
        "Bus 'pcie.0' does not support hotplugging"
    );
    m.add(json!({"driver": "pcie-pci-bridge", "id": "pb", "bus": "rp"}));
    m.add(json!({"driver": "virtio-rng-pci", "id": "a", "bus": "pb", "addr": "1"}));
    assert_eq!(
        m.refused(json!({"driver": "virtio-rng-pci", "id": "b", "bus": "pb"})),
        "Unsupported PCI slot 0 for standard hotplug controller. Valid slots are between 1 and 31."
    );

    let Some(mut m) = Machine::kvm(
        "pc-q35-10.2",
        &[
            "pcie-root-port,id=rp,chassis=1,addr=3",
            "pcie-root-port,id=rp2,chassis=2,addr=4",
            "pcie-root-port,id=rp4,chassis=4,addr=5",
        ],
        &[],
    ) else {
        return;
    };
    m.add(json!({"driver": "pcie-pci-bridge", "id": "pb", "bus": "rp"}));
    // Hot-added: SHPC, not ACPI, although ACPI owns the cold-plugged bridges here.
    assert_eq!(
        m.refused(json!({"driver": "virtio-rng-pci", "id": "b", "bus": "pb"})),
        "Unsupported PCI slot 0 for standard hotplug controller. Valid slots are between 1 and 31."
    );
    m.add(json!({"driver": "virtio-rng-pci", "id": "a", "bus": "pb", "addr": "1"}));
    m.add(json!({"driver": "pcie-root-port", "id": "rp3", "chassis": 3, "bus": "rp2"}));
    m.add(json!({"driver": "virtio-rng-pci", "id": "c", "bus": "rp3"}));
    assert_eq!(m.placed("c"), Some(("rp3".to_string(), 0, 0)));
    m.add(json!({"driver": "x3130-upstream", "id": "up", "bus": "rp4"}));
    assert_eq!(
        m.refused(json!({"driver": "xio3130-downstream", "id": "dn", "bus": "up", "chassis": 5})),
        "Bus 'up' does not support hotplugging"
    );
}

#[test]
fn add_remove_100_times_keeps_fds_threads_and_memory_flat() {
    let Some(mut m) = Machine::kvm("pc", &[], &[]) else {
        return;
    };
    let round = |m: &mut Machine| {
        m.qmp.ok(
            "device_add",
            json!({"driver": "virtio-blk-pci", "id": "hd", "drive": "disk0"}),
        );
        let (slot, _) = m.in_query_pci("hd").expect("added");
        m.qmp.ok("device_del", json!({"id": "hd"}));
        acpi_eject(m, PIIX4_PCIHP, 0, slot);
        while m.qmp.wait_event("DEVICE_DELETED")["data"]["device"] != "hd" {}
    };
    let threads = |m: &Machine| {
        std::fs::read_dir(format!("/proc/{}/task", m.qtest.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    // Warm up (first-use allocations), then count.
    round(&mut m);
    let (fds, tasks) = (m.fd_count(), threads(&m));
    let rss = machina_tests::process::rss_kib(m.qtest.pid()).unwrap_or(0);
    for _ in 0..100 {
        round(&mut m);
    }
    assert_eq!(fds, m.fd_count(), "fds before and after 100 rounds");
    assert_eq!(tasks, threads(&m), "threads before and after 100 rounds");
    let grown = machina_tests::process::rss_kib(m.qtest.pid())
        .unwrap_or(0)
        .saturating_sub(rss);
    eprintln!("hotplug: 100 rounds: fds {fds}, threads {tasks}, RSS grew {grown} KiB");
    // A bound for allocator noise (92 KiB measured); the fd and thread counts above are the
    // exact checks that each round's device, image handle and I/O thread went.
    assert!(grown < 4096, "RSS grew {grown} KiB over 100 rounds");
}

/// A hot-added multiqueue virtio-blk runs a thread per request queue ("virtio-io 0",
/// "virtio-io 0.1", ...); its unplug takes every one of them and every fd it had.
#[test]
fn a_multiqueue_disk_has_a_thread_per_queue_and_unplug_leaves_none() {
    let Some(mut m) = Machine::kvm("pc", &[], &[]) else {
        return;
    };
    let io_threads = |m: &Machine| {
        let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", m.qtest.pid()))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
                    .map(|n| n.trim().to_string())
                    .filter(|n| n.starts_with("virtio-io"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    let mut fds = None;
    for _ in 0..3 {
        m.qmp.ok(
            "device_add",
            json!({"driver": "virtio-blk-pci", "id": "hd", "drive": "disk0", "num-queues": 3}),
        );
        let (slot, _) = m.in_query_pci("hd").expect("added");
        assert_eq!(
            io_threads(&m),
            ["virtio-io 0", "virtio-io 0.1", "virtio-io 0.2"],
            "a thread per request queue"
        );
        m.qmp.ok("device_del", json!({"id": "hd"}));
        acpi_eject(&mut m, PIIX4_PCIHP, 0, slot);
        while m.qmp.wait_event("DEVICE_DELETED")["data"]["device"] != "hd" {}
        assert!(io_threads(&m).is_empty(), "{:?}", io_threads(&m));
        // The first round's first-use allocations stay; later rounds leave nothing.
        let now = m.fd_count();
        assert_eq!(*fds.get_or_insert(now), now, "fds after each unplug");
    }
}

/// QEMU's ACPI hot-plug reset executes pending removes (drive_del-test's "device that
/// unplugs after reset"); a device nobody asked to remove stays.
#[test]
fn pc_reset_executes_a_pending_acpi_remove() {
    let Some(mut m) = Machine::kvm("pc", &["virtio-rng-pci,id=keep"], &[]) else {
        return;
    };
    m.qmp.ok(
        "device_add",
        json!({"driver": "virtio-blk-pci", "id": "hd1", "drive": "disk0"}),
    );
    m.qmp.ok("device_del", json!({"id": "hd1"}));
    assert_eq!(m.deleted_events("hd1"), 0);
    m.qmp.ok("system_reset", Value::Null);
    while m.qmp.wait_event("DEVICE_DELETED")["data"]["device"] != "hd1" {}
    assert_eq!(m.in_query_pci("hd1"), None);
    assert!(!m.in_definition("hd1"), "the rebuilt machine has no hd1");
    assert!(m.in_query_pci("keep").is_some());
}
