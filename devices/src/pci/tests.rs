//! Guest-style tests of the PCI host and chipsets: plans from the builtin catalog, port I/O through
//! `PciConfigIo` as a guest would issue it, QEMU's reset values.

use super::*;
use crate::bus::{Bus, BusDevice};
use crate::lifecycle::{Lifecycle, Request};
use crate::testing;
use machina_tests::rng::XorShift;
use machine::*;
use std::sync::{Arc, Mutex};

/// The builtin catalog's plan for `machine` with 512 MiB, QEMU's default serial port and
/// VGA, no parallel port, the default NIC only with `nic`, and these `-device`s.
pub(super) fn catalog_plan(machine: &str, nic: bool, devices: &[&str]) -> Plan {
    let mut req = testing::request(machine, devices);
    req.ram_size = 512 << 20;
    req.parallel = Some(false);
    if !nic {
        req.nic = Some(false);
    }
    testing::catalog_plan(&req)
}

/// The -devices of [`q35_plan`]: two root ports at 00:02.0 (multifunction) and 00:02.1,
/// an e1000e behind the first.
pub(super) const Q35_PORTS: &[&str] = &[
    "pcie-root-port,id=pci.1,chassis=1,addr=0x2.0,multifunction=on",
    "pcie-root-port,id=pci.2,chassis=2,addr=0x2.1",
    "e1000e,bus=pci.1",
];

/// q35 with its implicit functions (MCH 00:00.0, ICH9 LPC/AHCI/SMBus 00:1f.0/2/3), VGA at
/// 00:01.0, COM1 and [`Q35_PORTS`] (no default NIC), plus `more` -devices.
pub(crate) fn q35_plan_with(more: &[&str]) -> Plan {
    let devices: Vec<&str> = Q35_PORTS.iter().chain(more).copied().collect();
    catalog_plan("q35", false, &devices)
}

pub(crate) fn q35_plan() -> Plan {
    q35_plan_with(&[])
}

/// [`q35_plan`] with SMM on. The planner refuses `smm=on` (machina has no SMM) and
/// resolves `auto` to off, but the MCH and ICH9 models keep QEMU's SMM-enabled registers
/// (SMRAM, ESMRAMC, the extended TSEG query, SCI enabled through APM), which only this
/// plan reaches.
pub(crate) fn q35_smm_plan() -> Plan {
    let mut plan = q35_plan();
    assert_eq!(plan.options.text("smm").as_deref(), Some("off"));
    plan.options
        .insert("smm", machine::PropValue::OnOffAuto(machine::OnOffAuto::On));
    plan
}

/// pc with QEMU's defaults: i440FX 00:00.0, PIIX3/IDE/PM 00:01.0/1/3, VGA 00:02.0, the
/// default e1000 at 00:03.0, COM1.
pub(crate) fn pc_plan() -> Plan {
    catalog_plan("pc", true, &[])
}

/// The plan's config ports (the board's host-bridge and reset-control entries).
pub(super) fn standard_ports(plan: &Plan) -> ConfigPorts {
    ConfigPorts::from_plan(plan).expect("the board's config ports")
}

/// A machine as the VMM would assemble it: host, buses, 0xcf8 device.
pub(super) struct Machine {
    pub(super) host: SharedHost,
    pub(super) io: Arc<Bus>,
    pub(super) mmio: Arc<Bus>,
    pub(super) lifecycle: Lifecycle,
}

impl Machine {
    pub(super) fn new(plan: &Plan) -> Self {
        let io = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());
        let lifecycle = Lifecycle::new().unwrap();
        let host = PciHost::from_plan(
            plan,
            lifecycle.clone(),
            io.clone(),
            mmio.clone(),
            crate::kinds::kind_of,
        )
        .unwrap()
        .into_shared();
        let ports = standard_ports(plan);
        let cfg = Arc::new(Mutex::new(PciConfigIo::new(host.clone(), ports)));
        for r in ports.ranges() {
            io.insert(r.base, r.size, cfg.clone()).unwrap();
        }
        Self {
            host,
            io,
            mmio,
            lifecycle,
        }
    }

    pub(super) fn outl(&self, port: u64, v: u32) {
        assert!(self.io.write(port, &v.to_le_bytes()));
    }
    pub(super) fn outw(&self, port: u64, v: u16) {
        assert!(self.io.write(port, &v.to_le_bytes()));
    }
    pub(super) fn outb(&self, port: u64, v: u8) {
        assert!(self.io.write(port, &[v]));
    }
    pub(super) fn inl(&self, port: u64) -> u32 {
        let mut b = [0u8; 4];
        if !self.io.read(port, &mut b) {
            return u32::MAX;
        }
        u32::from_le_bytes(b)
    }
    pub(super) fn inw(&self, port: u64) -> u16 {
        let mut b = [0u8; 2];
        if !self.io.read(port, &mut b) {
            return u16::MAX;
        }
        u16::from_le_bytes(b)
    }
    pub(super) fn inb(&self, port: u64) -> u8 {
        let mut b = [0u8; 1];
        if !self.io.read(port, &mut b) {
            return u8::MAX;
        }
        b[0]
    }

    pub(super) fn addr(bus: u8, dev: u8, func: u8, reg: u16) -> u32 {
        0x8000_0000
            | u32::from(bus) << 16
            | u32::from(dev) << 11
            | u32::from(func) << 8
            | u32::from(reg & 0xfc)
    }
    pub(super) fn cfg_readl(&self, bus: u8, dev: u8, func: u8, reg: u16) -> u32 {
        self.outl(0xcf8, Self::addr(bus, dev, func, reg));
        self.inl(0xcfc)
    }
    pub(super) fn cfg_readw(&self, bus: u8, dev: u8, func: u8, reg: u16) -> u16 {
        self.outl(0xcf8, Self::addr(bus, dev, func, reg));
        self.inw(0xcfc + u64::from(reg & 2))
    }
    pub(super) fn cfg_readb(&self, bus: u8, dev: u8, func: u8, reg: u16) -> u8 {
        self.outl(0xcf8, Self::addr(bus, dev, func, reg));
        self.inb(0xcfc + u64::from(reg & 3))
    }
    pub(super) fn cfg_writel(&self, bus: u8, dev: u8, func: u8, reg: u16, v: u32) {
        self.outl(0xcf8, Self::addr(bus, dev, func, reg));
        self.outl(0xcfc, v);
    }
    pub(super) fn cfg_writew(&self, bus: u8, dev: u8, func: u8, reg: u16, v: u16) {
        self.outl(0xcf8, Self::addr(bus, dev, func, reg));
        self.outw(0xcfc + u64::from(reg & 2), v);
    }
    /// Write all-ones to a dword register and read back what sticks (BAR sizing).
    pub(super) fn probe(&self, bus: u8, dev: u8, func: u8, reg: u16) -> u32 {
        self.cfg_writel(bus, dev, func, reg, 0xffff_ffff);
        self.cfg_readl(bus, dev, func, reg)
    }
    pub(super) fn cfg_writeb(&self, bus: u8, dev: u8, func: u8, reg: u16, v: u8) {
        self.outl(0xcf8, Self::addr(bus, dev, func, reg));
        self.outb(0xcfc + u64::from(reg & 3), v);
    }
}

#[test]
fn i440fx_defaults_match_qemu_qtest() {
    let m = Machine::new(&pc_plan());
    // tests/qtest/i440fx-test.c, the assertions QEMU does not mark BROKEN.
    assert_eq!(m.cfg_readw(0, 0, 0, 0x00), 0x8086);
    assert_eq!(m.cfg_readw(0, 0, 0, 0x02), 0x1237);
    assert_eq!(m.cfg_readb(0, 0, 0, 0x09), 0x00);
    assert_eq!(m.cfg_readw(0, 0, 0, 0x0a), 0x0600);
    assert_eq!(m.cfg_readb(0, 0, 0, 0x0d), 0x00);
    assert_eq!(m.cfg_readb(0, 0, 0, 0x0e), 0x00);
    assert_eq!(m.cfg_readb(0, 0, 0, 0x0f), 0x00);
    assert_eq!(m.cfg_readw(0, 0, 0, 0x50) & (1 << 15 | 1 << 6), 0);
    assert_eq!(m.cfg_readb(0, 0, 0, 0x52), 0x00);
    assert_eq!(m.cfg_readb(0, 0, 0, 0x54), 0x00);
    assert_eq!(m.cfg_readw(0, 0, 0, 0x55), 0x0000);
    for pam in 0x59..=0x5f {
        assert_eq!(m.cfg_readb(0, 0, 0, pam), 0x00);
    }
    assert_eq!(m.cfg_readb(0, 0, 0, 0x68), 0x00);
    assert_eq!(m.cfg_readb(0, 0, 0, 0x70), 0x00);
    assert_eq!(m.cfg_readb(0, 0, 0, 0x72), 0x02);
    assert_eq!(m.cfg_readb(0, 0, 0, 0x90), 0x00);
    assert_eq!(m.cfg_readb(0, 0, 0, 0x91), 0x00);
    assert_eq!(m.cfg_readb(0, 0, 0, 0x93), 0x00);
    // QEMU's actual command/status (the data-sheet 0x0006/0x0280 are BROKEN there).
    assert_eq!(m.cfg_readw(0, 0, 0, 0x04), 0x0000);
    assert_eq!(m.cfg_readw(0, 0, 0, 0x06), 0x0000);
    assert_eq!(m.cfg_readb(0, 0, 0, 0x57), 64); // 512 MiB / 8 MiB
                                                // PAM is writable (i440fx/pam).
    m.cfg_writeb(0, 0, 0, 0x5a, 0x33);
    assert_eq!(m.cfg_readb(0, 0, 0, 0x5a), 0x33);
}

#[test]
fn pc_south_bridge_ids_and_reset_values() {
    let m = Machine::new(&pc_plan());
    assert_eq!(m.cfg_readl(0, 1, 0, 0), 0x7000_8086);
    assert_eq!(m.cfg_readb(0, 1, 0, 0x0e), 0x80, "PIIX3 is multifunction");
    assert_eq!(m.cfg_readl(0, 1, 0, 0x08), 0x0601_0000);
    assert_eq!(m.cfg_readl(0, 1, 0, 0x60), 0x8080_8080);
    assert_eq!(
        m.cfg_readw(0, 1, 0, 0x04),
        0x0000,
        "COMMAND cleared by the bus reset"
    );
    assert_eq!(m.cfg_readl(0, 1, 1, 0), 0x7010_8086);
    assert_eq!(m.cfg_readl(0, 1, 1, 0x08), 0x0101_8000);
    assert_eq!(m.cfg_readb(0, 1, 1, 0x0e), 0x00);
    assert_eq!(m.cfg_readl(0, 1, 3, 0), 0x7113_8086);
    assert_eq!(m.cfg_readl(0, 1, 3, 0x08), 0x0680_0003);
    assert_eq!(m.cfg_readw(0, 1, 3, 0x06), 0x0280);
    assert_eq!(m.cfg_readb(0, 1, 3, 0x3d), 1);
    assert_eq!(m.cfg_readl(0, 1, 3, 0x40), 0x0000_0001, "PMBA reset");
    assert_eq!(m.cfg_readl(0, 1, 3, 0x2c), 0x1100_1af4);
    assert_eq!(m.cfg_readb(0, 1, 3, 0x67), 0x08, "COM1 decode");
    // Absent functions read all-ones; so does a disabled CONFIG_ADDRESS.
    assert_eq!(m.cfg_readl(0, 1, 2, 0), 0xffff_ffff);
    assert_eq!(m.cfg_readl(0, 9, 0, 0), 0xffff_ffff);
    m.outl(0xcf8, 0x0000_0000);
    assert_eq!(m.inl(0xcfc), 0xffff_ffff);
    // Read-only IDs ignore writes.
    m.cfg_writel(0, 1, 0, 0, 0xdead_beef);
    assert_eq!(m.cfg_readl(0, 1, 0, 0), 0x7000_8086);
}

#[test]
fn config_address_latch_and_odd_accesses() {
    let m = Machine::new(&pc_plan());
    m.outl(0xcf8, 0x8000_0800 | 0x08);
    assert_eq!(m.inl(0xcf8), 0x8000_0808);
    // Byte/word writes to 0xcf8 do not latch.
    m.outb(0xcf8, 0x00);
    m.outw(0xcfa, 0x1234);
    assert_eq!(m.inl(0xcf8), 0x8000_0808);
    assert_eq!(m.inw(0xcf8), 0xffff);
    // Odd offsets in the data window: VGA 00:02.0 device id high byte at 0x03.
    assert_eq!(m.cfg_readb(0, 2, 0, 0x03), 0x11);
    assert_eq!(m.cfg_readb(0, 2, 0, 0x01), 0x12);
    m.outl(0xcf8, Machine::addr(0, 2, 0, 0));
    assert_eq!(m.inw(0xcfd), 0x1112);
    assert_eq!(m.inb(0xcfe), 0x11);
    // Interrupt line is RW, pin RO.
    m.cfg_writew(0, 3, 0, 0x3c, 0x0a0b);
    assert_eq!(m.cfg_readw(0, 3, 0, 0x3c), 0x010b);
}

#[test]
fn bar_sizing_io_32_64_and_rom() {
    let m = Machine::new(&q35_plan());
    // VGA 00:01.0: BAR0 16 MiB prefetchable, BAR2 4 KiB, ROM 64 KiB.
    assert_eq!(m.probe(0, 1, 0, 0x10), 0xff00_0008);
    assert_eq!(m.probe(0, 1, 0, 0x18), 0xffff_f000);
    assert_eq!(m.probe(0, 1, 0, 0x30), 0xffff_0001);
    // AHCI BAR4 I/O 0x20.
    assert_eq!(m.probe(0, 31, 2, 0x20), 0xffff_ffe1);
    // pcie-root-port: unnumbered, so nothing behind it answers yet.
    assert_eq!(m.cfg_readl(1, 0, 0, 0), 0xffff_ffff);
    // Number it and size e1000e's BARs behind it.
    m.cfg_writel(0, 2, 0, 0x18, 0x0001_0100);
    assert_eq!(m.cfg_readl(1, 0, 0, 0), 0x10d3_8086);
    assert_eq!(m.probe(1, 0, 0, 0x10), 0xfffe_0000);
    assert_eq!(m.probe(1, 0, 0, 0x18), 0xffff_ffe1);
    assert_eq!(m.probe(1, 0, 0, 0x30), 0xfffc_0001);
    // Bus 2 (second port) is not numbered: nothing.
    assert_eq!(m.cfg_readl(2, 0, 0, 0), 0xffff_ffff);
}

#[test]
fn q35_reset_values() {
    let m = Machine::new(&q35_smm_plan());
    assert_eq!(m.cfg_readl(0, 0, 0, 0), 0x29c0_8086);
    assert_eq!(m.cfg_readl(0, 0, 0, 0x60), 0xb000_0000);
    assert_eq!(m.cfg_readl(0, 0, 0, 0x64), 0);
    assert_eq!(m.cfg_readb(0, 0, 0, 0x9d), 0x02);
    assert_eq!(m.cfg_readb(0, 0, 0, 0x9e), 0x38);
    assert_eq!(m.cfg_readw(0, 0, 0, 0x50), 0xffff);
    m.cfg_writew(0, 0, 0, 0x50, 0xffff);
    assert_eq!(m.cfg_readw(0, 0, 0, 0x50), 64, "extended TSEG query");
    assert_eq!(m.cfg_readl(0, 31, 0, 0), 0x2918_8086);
    assert_eq!(m.cfg_readb(0, 31, 0, 0x08), 0x02);
    assert_eq!(m.cfg_readb(0, 31, 0, 0x0e), 0x80);
    assert_eq!(m.cfg_readl(0, 31, 0, 0x40), 0x0000_0001, "PMBASE reset");
    assert_eq!(m.cfg_readb(0, 31, 0, 0x44), 0);
    assert_eq!(m.cfg_readl(0, 31, 0, 0x60), 0x8080_8080);
    assert_eq!(m.cfg_readl(0, 31, 0, 0x68), 0x8080_8080);
    assert_eq!(m.cfg_readl(0, 31, 0, 0xf0), 0);
    assert_eq!(m.cfg_readb(0, 31, 0, 0x82), 0x01, "COM1 LPC decode");
    assert_eq!(m.cfg_readl(0, 31, 2, 0), 0x2922_8086);
    assert_eq!(m.cfg_readl(0, 31, 2, 0x08), 0x0106_0102);
    assert_eq!(
        m.cfg_readw(0, 31, 2, 0x06) & 0x10,
        0x10,
        "AHCI has a capability list"
    );
    assert_eq!(m.cfg_readb(0, 31, 2, 0x34), 0x80);
    assert_eq!(m.cfg_readb(0, 31, 2, 0x80), 0x05);
    assert_eq!(m.cfg_readb(0, 31, 2, 0x81), 0xa8);
    assert_eq!(m.cfg_readb(0, 31, 2, 0xa8), 0x12);
    assert_eq!(m.cfg_readl(0, 31, 3, 0), 0x2930_8086);
    assert_eq!(m.cfg_readl(0, 31, 3, 0x20), 0x0000_0001);
    assert_eq!(m.cfg_readb(0, 2, 0, 0x0e), 0x81);
    assert_eq!(m.cfg_readl(0, 2, 0, 0x08), 0x0604_0000);
    // The PM block is not mapped until ACPI_CNTL enables it.
    assert_eq!(m.inw(0x604), 0xffff);
    m.cfg_writel(0, 31, 0, 0x40, 0x601);
    m.cfg_writeb(0, 31, 0, 0x44, 0x80);
    assert_eq!(m.cfg_readl(0, 31, 0, 0x40), 0x601);
    assert_eq!(m.inw(0x604), 0);
    // Moving it unmaps the old block.
    m.cfg_writel(0, 31, 0, 0x40, 0xb001);
    assert_eq!(m.inw(0x604), 0xffff);
    assert_eq!(m.inw(0xb004), 0);
    m.cfg_writeb(0, 31, 0, 0x44, 0x00);
    assert_eq!(m.inw(0xb004), 0xffff);
}

/// What the catalog's q35 really is (`smm=auto` resolved to off): QEMU >= 9.0 does not
/// initialise the SMRAM registers without SMM ranges, and ICH9 comes out of reset with
/// SCI_EN set (acpi-only), so no APM command is needed.
#[test]
fn q35_without_smm() {
    let plan = q35_plan();
    let m = Machine::new(&plan);
    assert_eq!(m.cfg_readb(0, 0, 0, 0x9d), 0, "SMRAM");
    assert_eq!(m.cfg_readb(0, 0, 0, 0x9e), 0, "ESMRAMC");
    assert_eq!(m.cfg_readw(0, 0, 0, 0x50), 0, "no extended TSEG query");
    m.host.lock().unwrap().firmware_init(&plan).unwrap();
    assert_eq!(m.inw(0x604) & 1, 1, "SCI_EN from reset");
}

#[test]
fn pm1_cnt_slp_en_powers_off() {
    let m = Machine::new(&pc_plan());
    m.cfg_writel(0, 1, 3, 0x40, 0x601);
    m.cfg_writeb(0, 1, 3, 0x80, 0x01);
    assert_eq!(m.lifecycle.pending(), Request::None);
    m.outw(0x604, 1 << 13);
    assert_eq!(m.lifecycle.take(), Request::PowerOff);
    // GPE0 of PIIX4 is always at 0xafe0.
    assert_eq!(m.inl(0xafe0), 0);
}

#[test]
fn cf9_reset_control() {
    for plan in [pc_plan(), q35_plan()] {
        let m = Machine::new(&plan);
        m.outb(0xcf9, 0x02);
        assert_eq!(m.inb(0xcf9), 0x02);
        assert_eq!(m.lifecycle.pending(), Request::None);
        m.outb(0xcf9, 0x06);
        assert_eq!(m.lifecycle.take(), Request::Reset);
        // The dword at 0xcf8 still latches CONFIG_ADDRESS.
        m.outl(0xcf8, 0x8000_0000);
        assert_eq!(m.inl(0xcf8), 0x8000_0000);
        m.host.lock().unwrap().reset();
        assert_eq!(m.inb(0xcf9), 0);
    }
}

#[test]
fn firmware_init_q35_enables_ecam_pm_and_routes() {
    let plan = q35_smm_plan();
    let m = Machine::new(&plan);
    let layout = m.host.lock().unwrap().firmware_init(&plan).unwrap();
    assert_eq!(layout.pm_base, Some(0x600));
    assert_eq!(layout.smbus_base, Some(0x700));
    assert_eq!(
        layout.ecam,
        Some(Range {
            base: 0xb000_0000,
            size: 0x1000_0000
        })
    );
    assert_eq!(m.cfg_readl(0, 0, 0, 0x60), 0xb000_0001);
    assert_eq!(m.cfg_readl(0, 31, 0, 0x40), 0x601);
    assert_eq!(m.cfg_readb(0, 31, 0, 0x44), 0x80);
    assert_eq!(m.cfg_readl(0, 31, 0, 0x60), 0x0b0b_0a0a);
    // Guest reads 00:00.0 through ECAM.
    let mut b = [0u8; 4];
    assert!(m.mmio.read(0xb000_0000, &mut b));
    assert_eq!(u32::from_le_bytes(b), 0x29c0_8086);
    // And the e1000e behind the first root port, at bus 1.
    assert!(m.mmio.read(0xb000_0000 + (1 << 20), &mut b));
    assert_eq!(u32::from_le_bytes(b), 0x10d3_8086);
    // Extended config of a conventional function reads all-ones; ECAM writes work.
    assert!(m.mmio.read(0xb000_0000 + (31 << 15) + 0x100, &mut b));
    assert_eq!(u32::from_le_bytes(b), 0xffff_ffff);
    assert!(m.mmio.write(0xb000_0000 + (31 << 15) + 0x3c, &[0x05]));
    assert_eq!(m.cfg_readb(0, 31, 0, 0x3c), 0x05);
    // Buses numbered depth-first.
    assert_eq!(layout.last_bus, 2);
    let nums: Vec<_> = layout
        .buses
        .iter()
        .map(|b| (b.bus_id.as_str(), b.number, b.subordinate))
        .collect();
    assert_eq!(
        nums,
        vec![("pcie.0", 0, 2), ("pci.1", 1, 1), ("pci.2", 2, 2)]
    );
    // PM timer is there.
    assert_ne!(m.inl(0x608), 0xffff_ffff);
    // SCI_EN via APM 0xb2 (ICH9 ACPI enable command 0x02).
    assert_eq!(m.inw(0x604) & 1, 0);
    m.outb(0xb2, 0x02);
    assert_eq!(m.inw(0x604) & 1, 1);
    // SMBus at 0x700 answers (HST_STS reads 0).
    assert_eq!(m.inb(0x700), 0);
    // VGA framebuffer placed in the 32-bit hole above ECAM, decode enabled.
    let fb = m.cfg_readl(0, 1, 0, 0x10) & !0xf;
    assert!((0xc000_0000..0xfec0_0000).contains(&fb), "{fb:#x}");
    assert_eq!(fb % (16 << 20), 0);
    assert_eq!(m.cfg_readw(0, 1, 0, 0x04) & 3, 3);
    // Interrupt line: e1000e behind root port 00:02.0 pin A -> PIRQ (2+0)%4+4 = G -> 11.
    assert_eq!(m.cfg_readb(1, 0, 0, 0x3c), 11);
    // AHCI 00:1f.2 pin A -> PIRQA -> 10.
    assert_eq!(m.cfg_readb(0, 31, 2, 0x3c), 10);
    // Root port window covers e1000e's BAR0.
    let bar0 = m.cfg_readl(1, 0, 0, 0x10) & !0xf;
    let mw = m.cfg_readl(0, 2, 0, 0x20);
    let (mbase, mlimit) = ((mw & 0xfff0) << 16, ((mw >> 16) & 0xfff0) << 16 | 0xf_ffff);
    assert!(
        mbase <= bar0 && bar0 + 0x20000 - 1 <= mlimit,
        "{bar0:#x} in {mbase:#x}-{mlimit:#x}"
    );
    // Mapped BARs dispatch: AHCI ABAR VS register.
    let abar = u64::from(m.cfg_readl(0, 31, 2, 0x24) & !0xf);
    assert!(m.mmio.read(abar + 0x10, &mut b));
    assert_eq!(u32::from_le_bytes(b), 0x0001_0000);
    assert!(m.mmio.read(abar + 0x0c, &mut b));
    assert_eq!(u32::from_le_bytes(b), 0, "no ports implemented");
    // Rewriting PCIEXBAR to 128 MiB at 0xe0000000 moves ECAM.
    assert!(m
        .mmio
        .write(0xb000_0060, &(0xe000_0000u32 | 2 | 1).to_le_bytes()));
    assert!(!m.mmio.read(0xb000_0000, &mut b));
    assert!(m.mmio.read(0xe000_0000, &mut b));
    assert_eq!(u32::from_le_bytes(b), 0x29c0_8086);
    assert!(!m.mmio.read(0xe800_0000, &mut b));
}

#[test]
fn firmware_init_pc() {
    let plan = pc_plan();
    let m = Machine::new(&plan);
    let layout = m.host.lock().unwrap().firmware_init(&plan).unwrap();
    assert_eq!(layout.pm_base, Some(0x600));
    assert_eq!(layout.ecam, None);
    assert_eq!(m.cfg_readl(0, 1, 0, 0x60), 0x0b0b_0a0a);
    // pc: PIRQ (pin - 1 + slot - 1) & 3 -> e1000 slot 3 pin A -> PIRQC -> 11; PIIX4_PM gets
    // the SCI (IRQ 9) from SeaBIOS's piix4_pm_setup, not its PIRQA route (10).
    assert_eq!(m.cfg_readb(0, 3, 0, 0x3c), 11);
    assert_eq!(m.cfg_readb(0, 1, 3, 0x3c), 9);
    let layout_pm = layout
        .intx
        .iter()
        .find(|r| r.devfn == (1 << 3) | 3)
        .unwrap();
    assert_eq!((layout_pm.pirq, layout_pm.irq), (0, 10));
    // e1000 I/O BAR from 0xc000 upwards.
    let io = m.cfg_readl(0, 3, 0, 0x14);
    assert!(
        (0xc000..0x10000).contains(&(io & !3)) && io & 1 == 1,
        "{io:#x}"
    );
    m.outw(0x604, 5 << 10 | 1 << 13); // SLP_TYP 5: no power off
    assert_eq!(m.lifecycle.pending(), Request::None);
    m.outw(0x604, 1 << 13);
    assert_eq!(m.lifecycle.take(), Request::PowerOff);
    // SMBus at 0x700 and not at QEMU's pre-firmware 0xb100 any more.
    assert_eq!(m.inb(0x700), 0);
    assert_eq!(m.inb(0xb100), 0xff);
}

#[test]
fn firmware_init_follows_the_plans_sci_rcrb_and_pirq_irqs() {
    // ICH9's SCI_IRQ_SEL encodes the plan's SCI; RCBA and the PIRQ routes are the plan's.
    for (sci, sel) in [(9, 0), (10, 1), (11, 2), (20, 4), (23, 7)] {
        let mut plan = q35_plan();
        plan.sci_irq = Some(sci);
        plan.pirq_irqs = vec![5, 7];
        let region = plan
            .memory
            .regions
            .iter_mut()
            .find(|r| r.name == "rcrb")
            .expect("q35 rcrb region");
        region.range.base = 0xfed2_0000;
        let m = Machine::new(&plan);
        let layout = m.host.lock().unwrap().firmware_init(&plan).unwrap();
        assert_eq!(m.cfg_readb(0, 31, 0, 0x44), 0x80 | sel, "SCI {sci}");
        assert_eq!(m.cfg_readl(0, 31, 0, 0xf0), 0xfed2_0001);
        assert_eq!(m.cfg_readl(0, 31, 0, 0x60), 0x0705_0705);
        assert_eq!(m.cfg_readl(0, 31, 0, 0x68), 0x0705_0705);
        assert_eq!(layout.pirq_irqs, vec![5, 7, 5, 7, 5, 7, 5, 7]);
    }
    // An SCI ICH9 cannot select is a firmware-step error, not a silent IRQ 9.
    let mut plan = q35_plan();
    plan.sci_irq = Some(12);
    let m = Machine::new(&plan);
    let err = m.host.lock().unwrap().firmware_init(&plan).unwrap_err();
    assert!(err.to_string().contains("SCI to IRQ 12"), "{err}");
    // pc: PIIX3's PIRQRC from the plan; SMBBA before the firmware is PIIX4_PM's smb_io_base.
    let mut plan = pc_plan();
    plan.pirq_irqs = vec![3, 4, 5, 6];
    let pm = plan
        .pci
        .iter_mut()
        .find(|f| f.type_name == "PIIX4_PM")
        .expect("PIIX4_PM");
    pm.properties
        .insert("smb_io_base", machine::PropValue::Uint(0xb200));
    let m = Machine::new(&plan);
    assert_eq!(m.cfg_readl(0, 1, 3, 0x90), 0xb201);
    m.host.lock().unwrap().firmware_init(&plan).unwrap();
    assert_eq!(m.cfg_readl(0, 1, 0, 0x60), 0x0605_0403);
}

#[test]
fn machine_reset_restores_everything() {
    let plan = q35_plan();
    let m = Machine::new(&plan);
    m.host.lock().unwrap().firmware_init(&plan).unwrap();
    m.host.lock().unwrap().reset();
    assert_eq!(m.cfg_readl(0, 0, 0, 0x60), 0xb000_0000);
    let mut b = [0u8; 4];
    assert!(
        !m.mmio.read(0xb000_0000, &mut b),
        "ECAM unmapped after reset"
    );
    assert_eq!(m.inw(0x604), 0xffff, "PM block unmapped after reset");
    assert_eq!(m.cfg_readl(1, 0, 0, 0), 0xffff_ffff, "bridges unnumbered");
}

#[test]
fn random_guest_accesses_never_panic() {
    for plan in [pc_plan(), q35_plan()] {
        let m = Machine::new(&plan);
        m.host.lock().unwrap().firmware_init(&plan).unwrap();
        let mut s = XorShift::new(0x1234_5678_9abc_def0u64);
        for _ in 0..20_000 {
            let r = s.next_u64();
            let bus = (r >> 8) as u8 % 4;
            let dev = [0u8, 1, 2, 3, 31][(r >> 16) as usize % 5];
            let f = (r >> 24) as u8 % 8;
            let reg = (r >> 32) as u16 & 0xff;
            let v = s.next_u64() as u32;
            // Never reset the machine or power it off from the fuzz loop's own writes.
            m.outl(0xcf8, Machine::addr(bus, dev, f, reg));
            match r % 6 {
                0 => m.outb(0xcfc + u64::from(reg & 3), v as u8),
                1 => m.outw(0xcfc + u64::from(reg & 3).min(2), v as u16),
                2 => m.outl(0xcfc, v),
                3 => {
                    m.inb(0xcfc + u64::from(reg & 3));
                }
                4 => {
                    m.inw(0xcfd);
                }
                _ => {
                    m.inl(0xcfc);
                }
            }
            // ECAM too, at any offset and size, when mapped.
            let off = s.next_u64() & 0x0fff_ffff;
            let mut buf = [0u8; 8];
            let n = [1usize, 2, 4, 8][(off % 4) as usize];
            m.mmio.read(0xb000_0000 + off, &mut buf[..n]);
            if off.is_multiple_of(3) {
                m.mmio.write(0xb000_0000 + off, &buf[..n]);
            }
        }
        // Every byte offset and size on every present function, directly on the host.
        let mut h = m.host.lock().unwrap();
        for bus in 0..3u8 {
            for devfn in 0..=255u8 {
                for off in (0..4096u16).step_by(7) {
                    for n in [1usize, 2, 4] {
                        let mut b = [0u8; 4];
                        h.config_read(bus, devfn, off, &mut b[..n]);
                        h.config_write(bus, devfn, off, &b[..n]);
                    }
                }
            }
        }
        let _ = m.lifecycle.take();
    }
}

#[test]
fn devices_implement_bus_device_defaults() {
    // PciConfigIo ignores accesses outside its 8 ports without panicking.
    let m = Machine::new(&pc_plan());
    let cfg = PciConfigIo::new(m.host.clone(), standard_ports(&pc_plan()));
    let mut c = cfg;
    let mut b = [0u8; 8];
    c.read(0xcf8, 9, &mut b);
    c.write(0xcf8, 2, &b[..3]);
    c.read(0xcf8, 7, &mut b[..4]);
    assert_eq!(b[1..4], [0xff; 3]);
}

/// A directly booted machine registers its first memslots in the shape the firmware step
/// leaves (`firmware_memory_layers`), so that the step changes none (the first memslot
/// change after the irqchip exists waits out an SRCU grace period): that shape must be the
/// one the models publish once the firmware step ran.
#[test]
fn firmware_memory_layers_are_what_the_firmware_step_leaves() {
    use crate::chipset::memory_view::{MemoryView, ViewMemory};
    use vm_memory::GuestAddress;
    for plan in [pc_plan(), q35_plan()] {
        let layers = |firmware: bool| -> Vec<_> {
            plan.pci
                .iter()
                .flat_map(|f| match firmware {
                    true => crate::kinds::kind_of(f).firmware_memory_layers(f, &plan),
                    false => crate::kinds::kind_of(f).reset_memory_layers(f, &plan),
                })
                .collect()
        };
        let ram = ViewMemory::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        let view = MemoryView::new(ram.clone(), true, layers(false));
        let reset_slots = view.slots();
        let m = Machine::new(&plan);
        m.host.lock().unwrap().set_memory_view(view.clone());
        m.host.lock().unwrap().firmware_init(&plan).unwrap();
        let expected = MemoryView::new(ram, true, layers(true)).slots();
        assert_ne!(
            reset_slots, expected,
            "{}: the firmware step remaps",
            plan.machine
        );
        assert_eq!(view.slots(), expected, "{}", plan.machine);
    }
}
