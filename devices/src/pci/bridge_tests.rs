//! Bridge and port tests: QEMU's capability chains read the way a guest walks them, key
//! register values, PCIe slot/AER semantics, window forwarding through the host, secondary
//! bus reset and random-write robustness of every model.

use super::bridge::PciBridge;
use super::device::PciFunction;
use super::device::Space;
use super::interrupt::MsiSink;
use super::tests::{catalog_plan, q35_plan, q35_plan_with, Machine, Q35_PORTS};
use super::PciError;
use crate::testing;
use machina_tests::rng::XorShift;
use machine::PciFunctionPlan;
use std::sync::{Arc, Mutex};

/// A bridge of `type_name` as the catalog plans it (behind the parents it needs), with
/// `props` set as given, unchecked (some tests hand it values the planner refuses).
fn plan(type_name: &str, props: &[(&str, &str)]) -> PciFunctionPlan {
    let parents: &[&str] = match type_name {
        "x3130-upstream" => &["pcie-root-port,id=rp,chassis=1"],
        "xio3130-downstream" => &[
            "pcie-root-port,id=rp,chassis=1",
            "x3130-upstream,id=up,bus=rp",
        ],
        _ => &[],
    };
    let bus = match type_name {
        "x3130-upstream" => ",bus=rp",
        "xio3130-downstream" => ",bus=up",
        _ => "",
    };
    // The planner requires chassis numbers where QEMU does; tests that check the refusal
    // set their own through `props`.
    let chassis = match type_name {
        "pci-bridge" => ",chassis_nr=9",
        "pcie-root-port" | "ioh3420" | "xio3130-downstream" => ",chassis=9",
        _ => "",
    };
    let device = format!("{type_name},id=dut{bus}{chassis}");
    let devices: Vec<&str> = parents.iter().copied().chain([device.as_str()]).collect();
    let mut f = testing::dut_plan(&devices, &[]);
    // Only what the test gives: the planner's chassis above is not part of the case.
    for k in ["chassis", "chassis_nr"] {
        f.properties.remove(k);
    }
    testing::set_props(&mut f, props);
    f
}

fn make(type_name: &str, props: &[(&str, &str)]) -> Result<PciBridge, PciError> {
    let f = plan(type_name, props);
    match type_name {
        "pcie-root-port" => super::ports::root_port::generic(&f),
        "ioh3420" => super::ports::root_port::ioh3420(&f),
        "x3130-upstream" => super::ports::switch::upstream(&f),
        "xio3130-downstream" => super::ports::switch::downstream(&f),
        "pcie-pci-bridge" => super::bridges::pci_bridge::pcie_to_pci(&f),
        "pci-bridge" => super::bridges::pci_bridge::pci_bridge(&f),
        _ => super::bridges::dmi::i82801b11(&f),
    }
}

fn rd(f: &mut dyn PciFunction, off: u16, len: usize) -> u32 {
    let mut b = [0u8; 4];
    f.config_read(off, &mut b[..len]);
    u32::from_le_bytes(b)
}

fn wr(f: &mut dyn PciFunction, off: u16, len: usize, v: u32) {
    f.config_write(off, &v.to_le_bytes()[..len]);
}

/// The standard list as a guest walks it: (offset, id) from the pointer at 0x34.
fn cap_chain(f: &mut dyn PciFunction) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    if rd(f, 0x06, 2) & 0x10 == 0 {
        return out;
    }
    let mut at = rd(f, 0x34, 1) as u16 & !3;
    while at != 0 && out.len() < 48 {
        let h = rd(f, at, 2);
        out.push((at, h as u8));
        at = (h >> 8) as u16 & !3;
    }
    out
}

/// The extended list from 0x100: (offset, id, version).
fn ext_chain(f: &mut dyn PciFunction) -> Vec<(u16, u16, u8)> {
    let mut out = Vec::new();
    let mut at = 0x100u16;
    while at != 0 && out.len() < 64 {
        let h = rd(f, at, 4);
        if h == 0 || h == u32::MAX {
            break;
        }
        out.push((at, h as u16, ((h >> 16) & 0xf) as u8));
        at = (h >> 20) as u16;
    }
    out
}

struct Case {
    type_name: &'static str,
    props: &'static [(&'static str, &'static str)],
    caps: &'static [(u16, u8)],
    ext: &'static [(u16, u16, u8)],
    /// (offset, width, value) as read right after reset.
    regs: &'static [(u16, usize, u32)],
}

const CASES: &[Case] = &[
    Case {
        type_name: "pcie-root-port",
        props: &[],
        caps: &[(0x54, 0x10), (0x48, 0x11), (0x40, 0x0d)],
        ext: &[(0x100, 0x0001, 2), (0x148, 0x000d, 1)],
        regs: &[
            (0x00, 4, 0x000c_1b36),
            (0x04, 4, 0x0010_0000), // status: capability list only
            (0x08, 4, 0x0604_0000),
            (0x0c, 4, 0x0001_0000),
            (0x1c, 4, 0x0000_00f0), // I/O window closed, secondary status 0
            (0x20, 4, 0x0000_fff0),
            (0x24, 4, 0x0001_fff1),
            (0x3c, 4, 0x0000_0100), // pin A, bridge control 0
            (0x44, 4, 0x0000_1b36), // SSVID 1b36:0000
            (0x48, 4, 0x0000_4011), // MSI-X, 1 vector, disabled
            (0x4c, 4, 0x0000_0000), // table BAR0 + 0
            (0x50, 4, 0x0000_0800), // PBA BAR0 + 0x800
            (0x56, 2, 0x0142),      // v2, root port, slot implemented
            (0x58, 4, 0x0000_8000),
            (0x60, 4, 0x0030_0604), // port 0, 16 GT/s x32, ASPM L0s, DLLLARC, LBNC
            (0x66, 2, 0x0204),      // nothing below: LNKCAP's width/speed, link not active
            (0x68, 4, 0x0002_007b), // measured SLTCAP
            (0x6c, 2, 0x07c0),      // empty slot: powered off, indicators off
            (0x6e, 2, 0x0000),
            (0x78, 4, 0x0030_0020), // DEVCAP2: EFF, EETLPP, ARI forwarding
            (0x80, 4, 0x0000_001e), // LNKCAP2: 2.5-16 GT/s
            (0x84, 2, 0x0004),      // target link speed 16 GT/s
            (0x104, 4, 0),
            (0x108, 4, 0x0240_0000),
            (0x10c, 4, 0x0046_2030),
            (0x114, 4, 0x0000_e000),
            (0x118, 4, 0x0000_02a0),
            (0x130, 4, 0),
            (0x14c, 4, 0x0000_005f),
        ],
    },
    Case {
        type_name: "pcie-root-port",
        props: &[("slot", "7"), ("port", "5"), ("chassis", "1")],
        caps: &[(0x54, 0x10), (0x48, 0x11), (0x40, 0x0d)],
        ext: &[(0x100, 0x0001, 2), (0x148, 0x000d, 1)],
        regs: &[(0x68, 4, 0x003a_007b), (0x60, 4, 0x0530_0604)],
    },
    Case {
        type_name: "pcie-root-port",
        props: &[("hotplug", "off")],
        caps: &[(0x54, 0x10), (0x48, 0x11), (0x40, 0x0d)],
        ext: &[(0x100, 0x0001, 2), (0x148, 0x000d, 1)],
        regs: &[(0x68, 4, 0x0002_001b)],
    },
    Case {
        type_name: "pcie-root-port",
        props: &[("x-speed", "8"), ("x-width", "16"), ("disable-acs", "true")],
        caps: &[(0x54, 0x10), (0x48, 0x11), (0x40, 0x0d)],
        ext: &[(0x100, 0x0001, 2)],
        regs: &[(0x60, 4, 0x0030_0503), (0x80, 4, 0x0e), (0x84, 2, 3)],
    },
    Case {
        type_name: "pcie-root-port",
        props: &[("io-reserve", "0"), ("bus-reserve", "1")],
        caps: &[(0x90, 0x09), (0x54, 0x10), (0x48, 0x11), (0x40, 0x0d)],
        ext: &[(0x100, 0x0001, 2), (0x148, 0x000d, 1)],
        regs: &[
            (0x90, 4, 0x0120_5409), // vendor cap, len 0x20, type 1 (resource reserve)
            (0x94, 4, 1),           // bus reserve
            (0x98, 4, 0),           // io reserve 0
            (0x9c, 4, 0),
            (0xa0, 4, u32::MAX), // mem: unset
        ],
    },
    Case {
        type_name: "ioh3420",
        props: &[("slot", "2")],
        caps: &[(0x90, 0x10), (0x60, 0x05), (0x40, 0x0d)],
        ext: &[(0x100, 0x0001, 2)],
        regs: &[
            (0x00, 4, 0x3420_8086),
            (0x08, 4, 0x0604_0002),
            (0x44, 4, 0x0000_8086), // SSVID 8086:0000
            (0x62, 2, 0x0102),      // 2 vectors, per-vector mask, 32-bit
            (0x92, 2, 0x0142),
            (0x9c, 4, 0x0000_0411), // 2.5 GT/s x1
            (0xa2, 2, 0x0011),      // no DLLLA before a plug
            (0xa4, 4, 0x0012_007b), // PSN 2
            (0x3d, 1, 1),
            (0x130, 4, 0), // AER vector 0 with one MSI vector
        ],
    },
    Case {
        type_name: "x3130-upstream",
        props: &[],
        caps: &[(0x90, 0x10), (0x80, 0x0d), (0x70, 0x05)],
        ext: &[(0x100, 0x0001, 2)],
        regs: &[
            (0x00, 4, 0x8232_104c),
            (0x08, 4, 0x0604_0002),
            (0x72, 2, 0x0080),      // 1 vector, 64-bit
            (0x84, 4, 0),           // SSVID 0:0
            (0x92, 2, 0x0052),      // v2, upstream port
            (0x94, 4, 0x1000_8000), // RBER, FLR
            (0x9c, 4, 0x0000_0411),
            (0xa2, 2, 0x0011),      // DLLLA clear: only slots latch it
            (0xb4, 4, 0x0030_0000), // no ARI forwarding on the upstream port
            (0x3d, 1, 0),
        ],
    },
    Case {
        type_name: "xio3130-downstream",
        props: &[("slot", "3"), ("port", "1")],
        caps: &[(0x90, 0x10), (0x80, 0x0d), (0x70, 0x05)],
        ext: &[(0x100, 0x0001, 2)],
        regs: &[
            (0x00, 4, 0x8233_104c),
            (0x08, 4, 0x0604_0001),
            (0x92, 2, 0x0162),
            (0x9c, 4, 0x0100_0400), // no x-speed/x-width: MLW and SLS 0, port 1
            (0xa2, 2, 0x0011),      // raised to x1 2.5 GT/s by pcie_sync_bridge_lnk
            (0xa4, 4, 0x001a_007b),
            (0xa8, 2, 0x07c0),
            (0xb4, 4, 0x0030_0020),
            (0x3d, 1, 0),
        ],
    },
    Case {
        type_name: "pcie-pci-bridge",
        props: &[],
        caps: &[(0x8c, 0x05), (0x84, 0x01), (0x48, 0x10), (0x40, 0x0c)],
        ext: &[(0x100, 0x0001, 2)],
        regs: &[
            (0x00, 4, 0x000e_1b36),
            (0x04, 4, 0x00b0_0000), // 66 MHz, fast back-to-back, capabilities
            (0x10, 4, 0x0000_0004), // BAR0 64-bit memory
            (0x1c, 4, 0x00a0_0000), // secondary status 66 MHz + FB2B, windows 0
            (0x24, 4, 0x0001_0001),
            (0x4a, 2, 0x0072), // v2, PCIe-to-PCI bridge
            (0x54, 4, 0x0000_0411),
            (0x5a, 2, 0x0011),  // x1 2.5 GT/s, DLLLA clear
            (0x86, 2, 0x0003),  // PM 1.2
            (0x118, 4, 0x00a0), // AER: ECRC only, no multiple header (no aer_log_max)
            (0x8e, 2, 0x0180),  // MSI 64-bit, maskable, 1 vector
            (0x3d, 1, 1),
        ],
    },
    Case {
        type_name: "pci-bridge",
        props: &[("chassis_nr", "1")],
        caps: &[(0x4c, 0x05), (0x48, 0x04), (0x40, 0x0c)],
        ext: &[],
        regs: &[
            (0x00, 4, 0x0001_1b36),
            (0x04, 4, 0x00b0_0000),
            (0x10, 4, 0x0000_0004),
            (0x48, 4, 0x0120_4004), // slot ID: first in chassis, chassis 1
            (0x4e, 2, 0x0180),
            (0x3d, 1, 1),
            (0x100, 4, u32::MAX), // conventional: no extended space
        ],
    },
    Case {
        type_name: "pci-bridge",
        props: &[("chassis_nr", "2"), ("shpc", "off")],
        caps: &[(0x40, 0x04)],
        ext: &[],
        regs: &[(0x40, 4, 0x0220_0004), (0x10, 4, 0), (0x3d, 1, 0)],
    },
    Case {
        type_name: "pci-bridge",
        props: &[("chassis_nr", "3"), ("msi", "off")],
        caps: &[(0x48, 0x04), (0x40, 0x0c)],
        ext: &[],
        regs: &[(0x48, 4, 0x0320_4004)],
    },
    Case {
        type_name: "i82801b11-bridge",
        props: &[],
        caps: &[(0x50, 0x0d)],
        ext: &[],
        regs: &[
            (0x00, 4, 0x244e_8086),
            (0x08, 4, 0x0604_0192),
            (0x04, 4, 0x00b0_0000),
            (0x54, 4, 0),
            (0x3d, 1, 0),
        ],
    },
];

#[test]
fn capability_layouts_match_qemu() {
    for c in CASES {
        let mut b = make(c.type_name, c.props).unwrap();
        let what = format!("{} {:?}", c.type_name, c.props);
        assert_eq!(cap_chain(&mut b), c.caps, "{what}: capability chain");
        assert_eq!(ext_chain(&mut b), c.ext, "{what}: extended chain");
        for &(off, len, v) in c.regs {
            assert_eq!(rd(&mut b, off, len), v, "{what}: register {off:#x}");
        }
    }
}

#[test]
fn invalid_properties_are_refused() {
    assert!(matches!(
        make("pci-bridge", &[]),
        Err(PciError::InvalidProperty { .. })
    ));
    assert!(make("pcie-root-port", &[("x-speed", "3")]).is_err());
    assert!(make("pcie-root-port", &[("hotplug", "perhaps")]).is_err());
    assert!(make(
        "pcie-root-port",
        &[("pref32-reserve", "1M"), ("pref64-reserve", "1G")]
    )
    .is_err());
}

#[test]
fn bridge_masks() {
    // Root port: no fast-back-to-back or discard bits; SLT read-only below express.
    let mut rp = make("pcie-root-port", &[]).unwrap();
    wr(&mut rp, 0x3e, 2, 0xffff);
    assert_eq!(rd(&mut rp, 0x3e, 2), 0x005f);
    wr(&mut rp, 0x18, 4, 0xffff_ffff);
    assert_eq!(rd(&mut rp, 0x18, 4), 0x00ff_ffff);
    wr(&mut rp, 0x1c, 2, 0xffff);
    assert_eq!(
        rd(&mut rp, 0x1c, 2),
        0xf0f0,
        "I/O window writable by default"
    );
    // io-reserve=0: no I/O window and no I/O decode.
    let mut rp0 = make("pcie-root-port", &[("io-reserve", "0")]).unwrap();
    wr(&mut rp0, 0x1c, 2, 0x0000);
    assert_eq!(rd(&mut rp0, 0x1c, 2), 0x00f0);
    wr(&mut rp0, 0x04, 2, 0xffff);
    assert_eq!(rd(&mut rp0, 0x04, 2), 0x0506);
    // Conventional bridge: everything QEMU's pci_init_mask_bridge allows.
    let mut pb = make("pci-bridge", &[("chassis_nr", "1")]).unwrap();
    wr(&mut pb, 0x3e, 2, 0xffff);
    assert_eq!(rd(&mut pb, 0x3e, 2), 0x0bff);
    wr(&mut pb, 0x18, 4, 0xffff_ffff);
    assert_eq!(rd(&mut pb, 0x18, 4), 0xffff_ffff);
    // Slot-ID chassis number is writable and survives reset (non-volatile in QEMU).
    wr(&mut pb, 0x4b, 1, 9);
    pb.reset();
    assert_eq!(rd(&mut pb, 0x4b, 1), 9);
    assert_eq!(rd(&mut pb, 0x18, 4), 0);
}

struct Msgs(Mutex<Vec<(u64, u32)>>);
impl MsiSink for Msgs {
    fn send(&self, address: u64, data: u32) {
        self.0.lock().unwrap().push((address, data));
    }
}

#[test]
fn slot_control_status_semantics() {
    let mut b = make("xio3130-downstream", &[]).unwrap();
    let (ctl, sta) = (0xa8u16, 0xaau16);
    // A command completes at once.
    wr(&mut b, ctl, 2, 0x0400);
    assert_eq!(rd(&mut b, sta, 2), 0x0010);
    // Blindly clearing bits that were not set leaves the events latched.
    wr(&mut b, sta, 2, 0xffff);
    assert_eq!(rd(&mut b, sta, 2), 0x0010);
    // Clearing exactly what is set works.
    wr(&mut b, sta, 2, 0x0010);
    assert_eq!(rd(&mut b, sta, 2), 0);
    // Electromechanical interlock control toggles the interlock status and reads 0.
    wr(&mut b, ctl, 2, 0x0800);
    assert_eq!(rd(&mut b, ctl, 2) & 0x0800, 0);
    assert_eq!(rd(&mut b, sta, 2), 0x0090);
    // Hot-plug interrupts go out as MSI once enabled.
    let sink = Arc::new(Msgs(Mutex::new(Vec::new())));
    b.set_msi_sink(sink.clone());
    wr(&mut b, 0x74, 4, 0xfee0_0000);
    wr(&mut b, 0x7c, 2, 0x0041);
    wr(&mut b, 0x72, 2, 0x0081);
    wr(&mut b, sta, 2, 0x0010);
    wr(&mut b, ctl, 2, 0x0030); // HPIE | CCIE
    assert_eq!(*sink.0.lock().unwrap(), vec![(0xfee0_0000, 0x41)]);
    // Reset: indicators off, enables clear, events cleared, interlock released.
    b.reset();
    assert_eq!(rd(&mut b, ctl, 2), 0x07c0);
    assert_eq!(rd(&mut b, sta, 2), 0);
}

#[test]
fn aer_and_root_registers() {
    let mut b = make("ioh3420", &[]).unwrap();
    // Status registers are RW1C and start clear; the guest cannot set them.
    wr(&mut b, 0x104, 4, u32::MAX);
    assert_eq!(rd(&mut b, 0x104, 4), 0);
    wr(&mut b, 0x108, 4, u32::MAX);
    assert_eq!(rd(&mut b, 0x108, 4), 0x03ff_f030);
    wr(&mut b, 0x114, 4, u32::MAX);
    assert_eq!(rd(&mut b, 0x114, 4), 0x0000_f1c1);
    wr(&mut b, 0x118, 4, u32::MAX);
    assert_eq!(rd(&mut b, 0x118, 4), 0x0000_07e0);
    wr(&mut b, 0x12c, 4, u32::MAX);
    assert_eq!(rd(&mut b, 0x12c, 4), 7, "root error command");
    // Two MSI vectors allocated: AER uses message 1.
    wr(&mut b, 0x62, 2, 0x0010);
    assert_eq!(rd(&mut b, 0x130, 4), 1 << 27);
    // Root control: the three SERR enables.
    wr(&mut b, 0xac, 2, 0xffff);
    assert_eq!(rd(&mut b, 0xac, 2), 7);
    // Device control: the error reporting enables only.
    wr(&mut b, 0x98, 2, 0xffff);
    assert_eq!(rd(&mut b, 0x98, 2), 0x000f);
    b.reset();
    assert_eq!(rd(&mut b, 0x12c, 4), 0);
    assert_eq!(rd(&mut b, 0x98, 2), 0);
    assert_eq!(rd(&mut b, 0x130, 4), 0);
    assert_eq!(rd(&mut b, 0xac, 2), 0);
}

#[test]
fn switch_port_flr_resets_it() {
    let mut b = make("x3130-upstream", &[]).unwrap();
    wr(&mut b, 0x18, 4, 0x0003_0201);
    wr(&mut b, 0x98, 2, 0x8000);
    assert_eq!(rd(&mut b, 0x18, 4), 0);
    assert_eq!(rd(&mut b, 0x98, 2), 0);
}

#[test]
fn shpc_through_bar_and_intx() {
    let mut b = make("pcie-pci-bridge", &[]).unwrap();
    b.attach(1 << 1, None, false);
    let mut r = [0u8; 4];
    b.bar_read(0, 0x24, &mut r);
    assert_eq!(
        u32::from_le_bytes(r),
        0x7f00_0036,
        "device 1 present and enabled"
    );
    b.bar_read(0, 0x28, &mut r);
    assert_eq!(u32::from_le_bytes(r), 0x7f00_0d3f, "device 2 empty");
    assert_eq!(b.intx_level(), Some(false));
    // Unmask the controller interrupt and run a command: INTx without MSI.
    b.bar_write(0, 0x20, &0u32.to_le_bytes());
    b.bar_write(0, 0x14, &[0x4c, 2]);
    assert_eq!(b.intx_level(), Some(true));
    b.bar_write(0, 0x20, &0x1_0000u32.to_le_bytes());
    assert_eq!(b.intx_level(), Some(false));
    // The capability window reads the selected register.
    b.config_write(0x42, &[0x09]);
    assert_eq!(rd(&mut b, 0x44, 4), 0x7f00_0036);
}

/// A hot-plug event on pci-bridge's SHPC with MSI enabled: one message per level change
/// (shpc_interrupt_update), no INTx; the guest turning the slot off reports the eject.
#[test]
fn shpc_hotplug_by_msi_and_eject_on_slot_off() {
    let mut b = make("pci-bridge", &[("chassis_nr", "1")]).unwrap();
    let lifecycle = crate::lifecycle::Lifecycle::new().unwrap();
    b.set_eject_target(lifecycle.clone(), "br".into());
    let sink = Arc::new(Msgs(Mutex::new(Vec::new())));
    b.set_msi_sink(sink.clone());
    // MSI at 0x4c (after SHPC 0x40 and slot-ID 0x48): address, data, enable.
    wr(&mut b, 0x50, 4, 0xfee0_0000);
    wr(&mut b, 0x54, 4, 0);
    wr(&mut b, 0x58, 2, 0x41);
    wr(&mut b, 0x4e, 2, 0x0081);
    b.bar_write(0, 0x20, &0u32.to_le_bytes());
    b.bar_write(0, 0x2c, &0u32.to_le_bytes());
    b.shpc_hot_plugged(3 << 3);
    assert_eq!(*sink.0.lock().unwrap(), vec![(0xfee0_0000, 0x41)]);
    assert_eq!(b.intx_level(), Some(false), "MSI, not INTx");
    // Acknowledging the events lowers the level: QEMU signals that edge too.
    b.bar_write(0, 0x2c, &0x001f_0000u32.to_le_bytes());
    assert_eq!(sink.0.lock().unwrap().len(), 2);
    assert!(lifecycle.take_ejects().is_empty());
    // Enable (power on), then disable with the power LED off: the slot's devices go.
    b.bar_write(0, 0x14, &[0x36, 3]);
    b.bar_write(0, 0x14, &[0x1f, 3]);
    assert_eq!(lifecycle.take_ejects(), vec![("br".to_string(), 3)]);
}

#[test]
fn root_port_msix_page() {
    let mut b = make("pcie-root-port", &[]).unwrap();
    let mut r = [0u8; 4];
    b.bar_read(0, 12, &mut r);
    assert_eq!(u32::from_le_bytes(r), 1, "vector 0 masked at reset");
    let sink = Arc::new(Msgs(Mutex::new(Vec::new())));
    b.set_msi_sink(sink.clone());
    b.bar_write(0, 0, &0xfee0_1000u32.to_le_bytes());
    b.bar_write(0, 8, &0x22u32.to_le_bytes());
    b.bar_write(0, 12, &0u32.to_le_bytes());
    wr(&mut b, 0x4b, 1, 0x80); // MSI-X enable
    let (ctl, sta) = (0x6cu16, 0x6eu16);
    wr(&mut b, ctl, 2, 0x0030);
    assert_eq!(*sink.0.lock().unwrap(), vec![(0xfee0_1000, 0x22)]);
    wr(&mut b, sta, 2, 0x0010);
    assert_eq!(rd(&mut b, sta, 2), 0);
}

// ---- through the host ----

/// q35 with two root ports at 00:02.0/1 and an e1000e behind the first (tests.rs plan).
fn numbered(m: &Machine) {
    m.cfg_writel(0, 2, 0, 0x18, 0x0001_0100);
    m.cfg_writel(0, 2, 1, 0x18, 0x0002_0200);
}

fn e1000e_ranges(m: &Machine) -> Vec<(Space, u64, u64)> {
    m.host.lock().unwrap().mapped_ranges("pci.1", 0)
}

#[test]
fn slot_presence_and_link_from_topology() {
    // q35 >= 6.1: ACPI PCI hot-plug owns the ports' buses, so the slots never latch the
    // cold-plugged e1000e (no PDS, no DLLLA) but still power it.
    let m = Machine::new(&q35_plan());
    // 00:02.0 has the e1000e below it, 00:02.1 nothing.
    assert_eq!(m.cfg_readw(0, 2, 0, 0x6e), 0, "no presence latched");
    assert_eq!(
        m.cfg_readw(0, 2, 0, 0x6c),
        0x01c0,
        "powered, power indicator on"
    );
    assert_eq!(m.cfg_readw(0, 2, 1, 0x6e), 0);
    assert_eq!(m.cfg_readw(0, 2, 1, 0x6c), 0x07c0);
    assert_eq!(m.cfg_readw(0, 2, 1, 0x66), 0x0204);

    // Without ACPI bridge hot-plug (pc-q35-6.0 and older: ICH9-LPC's
    // acpi-pci-hotplug-with-bridge-support off, which the planner turns into the plan's
    // acpi_bridge_hotplug) the slot's own plug callback latches presence and the data link
    // layer for the cold-plugged device.
    let plan = catalog_plan("pc-q35-6.0", false, Q35_PORTS);
    assert!(!plan.acpi_bridge_hotplug);
    let m = Machine::new(&plan);
    assert_eq!(m.cfg_readw(0, 2, 0, 0x6e), 0x0040, "presence detected");
    assert_eq!(m.cfg_readw(0, 2, 0, 0x66) & 0x2000, 0x2000, "DLLLA");
    assert_eq!(m.cfg_readw(0, 2, 1, 0x6e), 0);
    assert_eq!(m.cfg_readw(0, 2, 1, 0x66), 0x0204, "empty: no DLLLA");
    // Reset keeps what the plug latched.
    m.host.lock().unwrap().reset();
    assert_eq!(m.cfg_readw(0, 2, 0, 0x6e), 0x0040);
}

#[test]
fn bars_behind_a_bridge_decode_only_through_its_window() {
    let m = Machine::new(&q35_plan());
    numbered(&m);
    // e1000e BAR0 (128 KiB) at 0xfe000000, memory decode on.
    m.cfg_writel(1, 0, 0, 0x10, 0xfe00_0000);
    m.cfg_writew(1, 0, 0, 0x04, 0x0002);
    assert!(
        e1000e_ranges(&m).is_empty(),
        "root port windows closed at reset"
    );
    // Window 0xfe000000-0xfe0fffff, but the port's memory decode is off.
    m.cfg_writel(0, 2, 0, 0x20, 0xfe00_fe00);
    assert!(
        e1000e_ranges(&m).is_empty(),
        "port command register gates it"
    );
    m.cfg_writew(0, 2, 0, 0x04, 0x0002);
    assert_eq!(
        e1000e_ranges(&m),
        vec![(Space::Mmio, 0xfe00_0000, 0x2_0000)]
    );
    // Move the window away: the BAR stops decoding.
    m.cfg_writel(0, 2, 0, 0x20, 0xfd00_fd00);
    assert!(e1000e_ranges(&m).is_empty());
    // Prefetchable window covering it works too.
    m.cfg_writel(0, 2, 0, 0x24, 0xfe01_fe01);
    assert_eq!(e1000e_ranges(&m).len(), 1);
    m.cfg_writel(0, 2, 0, 0x24, 0x0001_fff1);
    // BAR moved inside the window again.
    m.cfg_writel(1, 0, 0, 0x10, 0xfd00_0000);
    assert_eq!(
        e1000e_ranges(&m),
        vec![(Space::Mmio, 0xfd00_0000, 0x2_0000)]
    );
    // I/O BAR2 (0x20 ports) needs the I/O window and I/O decode on the port.
    m.cfg_writel(1, 0, 0, 0x18, 0xc000);
    m.cfg_writew(1, 0, 0, 0x04, 0x0003);
    assert_eq!(e1000e_ranges(&m).len(), 1);
    m.cfg_writew(0, 2, 0, 0x1c, 0xc0c0);
    m.cfg_writew(0, 2, 0, 0x04, 0x0003);
    assert!(e1000e_ranges(&m).contains(&(Space::Io, 0xc000, 0x20)));
    assert!(!m.io.read(0xd000, &mut [0u8; 4]));
    // Memory decode off on the port: only I/O stays.
    m.cfg_writew(0, 2, 0, 0x04, 0x0001);
    assert_eq!(e1000e_ranges(&m), vec![(Space::Io, 0xc000, 0x20)]);
}

#[test]
fn secondary_bus_reset_resets_everything_behind() {
    let m = Machine::new(&q35_plan());
    numbered(&m);
    m.cfg_writel(0, 2, 0, 0x20, 0xfe00_fe00);
    m.cfg_writew(0, 2, 0, 0x04, 0x0002);
    m.cfg_writel(1, 0, 0, 0x10, 0xfe00_0000);
    m.cfg_writew(1, 0, 0, 0x04, 0x0002);
    assert_eq!(e1000e_ranges(&m).len(), 1);
    m.cfg_writew(0, 2, 0, 0x3e, 0x0040);
    assert_eq!(m.cfg_readw(1, 0, 0, 0x04), 0, "command cleared");
    assert_eq!(m.cfg_readl(1, 0, 0, 0x10), 0, "BAR cleared");
    assert!(e1000e_ranges(&m).is_empty());
    // The bridge itself keeps its numbers and windows.
    assert_eq!(m.cfg_readl(0, 2, 0, 0x18), 0x0001_0100);
    assert_eq!(m.cfg_readl(0, 2, 0, 0x20), 0xfe00_fe00);
    m.cfg_writew(0, 2, 0, 0x3e, 0);
    assert_eq!(m.cfg_readl(1, 0, 0, 0), 0x10d3_8086);
}

#[test]
fn firmware_step_still_maps_bars_behind_ports() {
    let plan = q35_plan();
    let m = Machine::new(&plan);
    m.host.lock().unwrap().firmware_init(&plan).unwrap();
    let r = e1000e_ranges(&m);
    assert!(r.iter().any(|(s, _, _)| *s == Space::Mmio), "{r:?}");
    assert!(r.iter().any(|(s, _, _)| *s == Space::Io), "{r:?}");
}

#[test]
fn random_writes_to_every_bridge_never_panic() {
    let types: &[(&str, &[(&str, &str)])] = &[
        ("pcie-root-port", &[]),
        (
            "pcie-root-port",
            &[("io-reserve", "0"), ("mem-reserve", "2M")],
        ),
        ("ioh3420", &[]),
        ("x3130-upstream", &[]),
        ("xio3130-downstream", &[]),
        ("pcie-pci-bridge", &[]),
        ("pci-bridge", &[("chassis_nr", "1")]),
        ("pci-bridge", &[("chassis_nr", "1"), ("shpc", "off")]),
        ("i82801b11-bridge", &[]),
    ];
    let sink = Arc::new(Msgs(Mutex::new(Vec::new())));
    let mut s = XorShift::new(0x0bad_cafe_f00d_1234u64);
    for (t, props) in types {
        let mut b = make(t, props).unwrap();
        b.set_msi_sink(sink.clone());
        b.attach(0xffff_ffff, Some(0x2041), true);
        for off in 0..4100u16 {
            for n in [1usize, 2, 4] {
                let v = s.next_u64() as u32;
                wr(&mut b, off, n, v);
                rd(&mut b, off, n);
            }
        }
        for _ in 0..20_000 {
            let r = s.next_u64();
            let bar = (r % 8) as usize;
            let off = (r >> 8) % 0x1100;
            let n = [1usize, 2, 4, 8][((r >> 40) % 4) as usize];
            let v = s.next_u64().to_le_bytes();
            if r & 1 == 0 {
                b.bar_write(bar, off, &v[..n]);
            } else {
                let mut buf = [0u8; 8];
                b.bar_read(bar, off, &mut buf[..n]);
            }
            let cfg = (r >> 16) as u16 % 0x1000;
            wr(&mut b, cfg, 4, s.next_u64() as u32);
            if r.is_multiple_of(997) {
                b.reset();
            }
        }
        b.bar_read(0, u64::MAX, &mut [0u8; 8]);
        b.bar_write(0, u64::MAX - 2, &[1u8; 8]);
        b.config_write(u16::MAX, &[0xff; 4]);
    }
}

#[test]
fn host_with_every_bridge_type_survives_fuzz() {
    // pcie.0: one of each, with a switch under a root port.
    let plan = q35_plan_with(&[
        "pcie-root-port,id=rp4,chassis=4,addr=4",
        "x3130-upstream,id=up,bus=rp4",
        "xio3130-downstream,id=down,bus=up,chassis=5",
        "pcie-pci-bridge,id=ppb,bus=down",
        "pci-bridge,id=pb,bus=ppb,addr=1,chassis_nr=7",
        "ioh3420,id=ioh,addr=5,chassis=6",
        "i82801b11-bridge,id=dmi,addr=0x1e",
    ]);
    let m = Machine::new(&plan);
    let layout = m.host.lock().unwrap().firmware_init(&plan).unwrap();
    assert!(layout.last_bus >= 9, "{layout:?}");
    let mut s = XorShift::new(0x5eed_u64);
    let mut h = m.host.lock().unwrap();
    for _ in 0..200_000 {
        let r = s.next_u64();
        let bus = (r % 12) as u8;
        let devfn = (r >> 8) as u8;
        let off = (r >> 16) as u16 % 4096;
        let n = [1usize, 2, 4][((r >> 32) % 3) as usize];
        let v = s.next_u64().to_le_bytes();
        if r & 3 == 0 {
            let mut b = [0u8; 4];
            h.config_read(bus, devfn, off, &mut b[..n]);
        } else {
            h.config_write(bus, devfn, off, &v[..n]);
        }
    }
    h.reset();
}
