//! The ACPI PM register block shared by ICH9 (LPC, PMBASE) and PIIX4 (PM function, PMBA):
//! PM1 event (status RW1C / enable), PM1 control with sleep requests (QEMU's
//! hw/acpi/core.c acpi_pm1_cnt_write), the 3.579545 MHz 24-bit PM timer and GPE0.
//!
//! Layout from the block base: PM1_STS +0, PM1_EN +2, PM1_CNT +4, PM_TMR +8. ICH9 has GPE0 at
//! +0x20 (16 bytes) and SMI_EN/SMI_STS at +0x30/+0x34 in a 128-byte block; PIIX4 has a
//! 64-byte block and its GPE0 at the fixed port 0xafe0 (4 bytes), see [`Gpe0Block`].

use super::apm::{self, Apm};
use super::tco::{Tco, TCO_LEN, TCO_OFFSET};
use crate::bus::{BusDevice, SharedDevice};
use crate::legacy::kind::BoardEntry;
use crate::lifecycle::{Lifecycle, Request};
use crate::lock;
use crate::pci::acpi_hotplug::{self, Pcihp, SharedPcihp};
use crate::pci::device::Window;
use crate::pci::IntxSink;
use machine::{Plan, Range};
use std::sync::{Arc, Mutex};

pub const PM1_STS_TMR: u16 = 1 << 0;
pub const PM1_STS_GBL: u16 = 1 << 5;
pub const PM1_STS_PWRBTN: u16 = 1 << 8;
pub const PM1_STS_RTC: u16 = 1 << 10;
pub const PM1_CNT_SCI_EN: u16 = 1 << 0;
pub const PM1_CNT_SLP_EN: u16 = 1 << 13;
/// PM1 status bits that can raise an SCI (ACPI_BITMASK_PM1_COMMON_ENABLED).
const PM1_SCI_BITS: u16 = PM1_STS_TMR | PM1_STS_GBL | PM1_STS_PWRBTN | PM1_STS_RTC;
pub const PM_TIMER_HZ: u128 = 3_579_545;

/// PIIX4's GPE0 block, at a fixed place the plan gives (`acpi-gpe0`).
pub const PIIX4_GPE0_LEN: usize = 4;
pub static PIIX4_GPE0: BoardEntry = BoardEntry {
    names: &["acpi-gpe0"],
};
pub const ICH9_GPE0_LEN: usize = 16;
pub const ICH9_PM_BLOCK_LEN: u64 = 128;
pub const PIIX4_PM_BLOCK_LEN: u64 = 64;

/// Which chipset's block this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PmFlavor {
    Ich9,
    Piix4,
}

pub struct AcpiPm {
    flavor: PmFlavor,
    pm1_sts: u16,
    pm1_en: u16,
    pm1_cnt: u16,
    gpe_sts: Vec<u8>,
    gpe_en: Vec<u8>,
    smi_en: u32,
    smi_sts: u32,
    /// SLP_TYP value that means S4 (QEMU's s4_val, default 2): treated as power off.
    s4_val: u16,
    /// Without SMM QEMU starts in ACPI mode (SCI_EN set at reset).
    acpi_only: bool,
    lifecycle: Lifecycle,
    sci: Option<(Arc<dyn IntxSink>, u32)>,
    sci_level: bool,
    /// ICH9's TCO watchdog at +0x60.
    tco: Option<Arc<Mutex<Tco>>>,
}

impl AcpiPm {
    pub fn new(flavor: PmFlavor, lifecycle: Lifecycle, acpi_only: bool) -> Self {
        let gpe_len = match flavor {
            PmFlavor::Ich9 => ICH9_GPE0_LEN,
            PmFlavor::Piix4 => PIIX4_GPE0_LEN,
        };
        let mut pm = Self {
            flavor,
            pm1_sts: 0,
            pm1_en: 0,
            pm1_cnt: 0,
            gpe_sts: vec![0; gpe_len / 2],
            gpe_en: vec![0; gpe_len / 2],
            smi_en: 0,
            smi_sts: 0,
            s4_val: 2,
            acpi_only,
            lifecycle,
            sci: None,
            sci_level: false,
            tco: None,
        };
        pm.reset();
        pm
    }

    /// Size of the block mapped at PMBASE/PMBA.
    pub fn block_len(&self) -> u64 {
        match self.flavor {
            PmFlavor::Ich9 => ICH9_PM_BLOCK_LEN,
            PmFlavor::Piix4 => PIIX4_PM_BLOCK_LEN,
        }
    }

    pub fn reset(&mut self) {
        self.pm1_sts = 0;
        self.pm1_en = 0;
        self.pm1_cnt = if self.acpi_only { PM1_CNT_SCI_EN } else { 0 };
        self.gpe_sts.fill(0);
        self.gpe_en.fill(0);
        self.smi_en = 0;
        self.smi_sts = 0;
        if let Some(tco) = &self.tco {
            tco.lock().unwrap_or_else(|e| e.into_inner()).reset();
        }
        self.update_sci();
    }

    /// ICH9: the TCO registers at +0x60.
    pub fn set_tco(&mut self, tco: Arc<Mutex<Tco>>) {
        self.tco = Some(tco);
    }

    /// The TCO block, when `offset..offset+len` falls inside it.
    fn tco_at(&self, offset: u64, len: usize) -> Option<(&Arc<Mutex<Tco>>, u64)> {
        let tco = self.tco.as_ref()?;
        let rel = offset.checked_sub(TCO_OFFSET)?;
        (rel + len as u64 <= TCO_LEN).then_some((tco, rel))
    }

    pub fn set_sci_sink(&mut self, sink: Arc<dyn IntxSink>, gsi: u32) {
        self.sci = Some((sink, gsi));
        self.sci_level = false;
        self.update_sci();
    }

    /// The PM timer: 3.579545 MHz from the virtual clock (under qtest it moves only when
    /// the test steps it, as QEMU's), 24 bits.
    pub fn timer(&self) -> u32 {
        let ns = u128::try_from(self.lifecycle.clock().now()).unwrap_or(0);
        ((ns * PM_TIMER_HZ / 1_000_000_000) & 0xff_ffff) as u32
    }

    pub fn pm1_cnt(&self) -> u16 {
        self.pm1_cnt
    }

    pub fn pm1_sts(&self) -> u16 {
        self.pm1_sts
    }

    /// APM ACPI enable/disable command (acpi_pm1_cnt_update).
    pub fn set_sci_enabled(&mut self, on: bool) {
        if on {
            self.pm1_cnt |= PM1_CNT_SCI_EN;
        } else {
            self.pm1_cnt &= !PM1_CNT_SCI_EN;
        }
    }

    /// The power button was pressed (QMP system_powerdown): PWRBTN_STS and an SCI.
    pub fn power_button(&mut self) {
        self.pm1_sts |= PM1_STS_PWRBTN;
        self.update_sci();
    }

    /// Raise GPE0 status bit `bit` (PCI hot-plug events) and update the SCI.
    pub fn raise_gpe(&mut self, bit: usize) {
        if let Some(b) = self.gpe_sts.get_mut(bit / 8) {
            *b |= 1 << (bit % 8);
        }
        self.update_sci();
    }

    fn update_sci(&mut self) {
        let pm1 = self.pm1_sts & self.pm1_en & PM1_SCI_BITS != 0;
        let gpe = self
            .gpe_sts
            .iter()
            .zip(&self.gpe_en)
            .any(|(s, e)| s & e != 0);
        let level = pm1 || gpe;
        if let Some((sink, gsi)) = &self.sci {
            if level != self.sci_level {
                sink.set_level(*gsi, level);
            }
        }
        self.sci_level = level;
    }

    /// acpi_pm1_cnt_write: store everything but SLP_EN; SLP_EN with SLP_TYP 0 (S5) or the S4
    /// value powers the machine off. S1-S3 are not offered in our DSDT and are ignored.
    fn write_pm1_cnt(&mut self, val: u16) {
        self.pm1_cnt = val & !PM1_CNT_SLP_EN;
        if val & PM1_CNT_SLP_EN != 0 {
            let typ = (val >> 10) & 7;
            if typ == 0 || typ == self.s4_val {
                self.lifecycle.request(Request::PowerOff);
            } else {
                crate::unimp!("acpi-pm: sleep type {typ} (S1-S3) is not implemented; ignored");
            }
        }
    }

    fn gpe_read(&self, offset: usize) -> u8 {
        let half = self.gpe_sts.len();
        if offset < half {
            self.gpe_sts[offset]
        } else {
            self.gpe_en.get(offset - half).copied().unwrap_or(0xff)
        }
    }

    fn gpe_write(&mut self, offset: usize, v: u8) {
        let half = self.gpe_sts.len();
        if offset < half {
            self.gpe_sts[offset] &= !v;
        } else if let Some(e) = self.gpe_en.get_mut(offset - half) {
            *e = v;
        }
        self.update_sci();
    }

    /// Byte read of the PM block; unimplemented offsets float high like unassigned I/O.
    fn read_byte(&self, offset: u64) -> u8 {
        let byte = |v: u32, at: u64| (v >> (8 * at)) as u8;
        match (self.flavor, offset) {
            (_, 0..=1) => byte(self.pm1_sts.into(), offset),
            (_, 2..=3) => byte(self.pm1_en.into(), offset - 2),
            (_, 4..=5) => byte(self.pm1_cnt.into(), offset - 4),
            (_, 8..=11) => byte(self.timer(), offset - 8),
            (PmFlavor::Ich9, 0x20..=0x2f) => self.gpe_read((offset - 0x20) as usize),
            (PmFlavor::Ich9, 0x30..=0x33) => byte(self.smi_en, offset - 0x30),
            (PmFlavor::Ich9, 0x34..=0x37) => byte(self.smi_sts, offset - 0x34),
            _ => 0xff,
        }
    }

    fn read_block(&self, offset: u64, data: &mut [u8]) {
        if let Some((tco, rel)) = self.tco_at(offset, data.len()) {
            tco.lock()
                .unwrap_or_else(|e| e.into_inner())
                .read(rel, data);
            return;
        }
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.read_byte(offset.saturating_add(i as u64));
        }
    }

    /// Writes are applied per 16-bit register so a word write of SLP_TYP|SLP_EN is one event.
    fn write_block(&mut self, offset: u64, data: &[u8]) {
        if let Some((tco, rel)) = self.tco_at(offset, data.len()) {
            tco.lock()
                .unwrap_or_else(|e| e.into_inner())
                .write(rel, data);
            return;
        }
        let merge = |old: u16, at: u64, data: &[u8]| -> (u16, u16) {
            // (new value, mask of bytes written) for the register at `at`.
            let mut v = old;
            let mut m = 0u16;
            for (i, &b) in data.iter().enumerate() {
                let o = offset.saturating_add(i as u64);
                if o == at || o == at + 1 {
                    let sh = 8 * (o - at);
                    v = (v & !(0xff << sh)) | (u16::from(b) << sh);
                    m |= 0xff << sh;
                }
            }
            (v, m)
        };
        let end = offset.saturating_add(data.len() as u64);
        let touches = |at: u64, len: u64| offset < at + len && at < end;
        if touches(0, 2) {
            let (v, m) = merge(0, 0, data);
            self.pm1_sts &= !(v & m);
        }
        if touches(2, 2) {
            let (v, _) = merge(self.pm1_en, 2, data);
            self.pm1_en = v;
        }
        if touches(4, 2) {
            let (v, _) = merge(self.pm1_cnt, 4, data);
            self.write_pm1_cnt(v);
        }
        for (i, &b) in data.iter().enumerate() {
            let o = offset.saturating_add(i as u64);
            match (self.flavor, o) {
                (PmFlavor::Ich9, 0x20..=0x2f) => self.gpe_write((o - 0x20) as usize, b),
                (PmFlavor::Ich9, 0x30..=0x33) => {
                    let sh = 8 * (o - 0x30);
                    self.smi_en = (self.smi_en & !(0xff << sh)) | (u32::from(b) << sh);
                }
                (PmFlavor::Ich9, 0x34..=0x37) => {
                    self.smi_sts &= !(u32::from(b) << (8 * (o - 0x34)))
                }
                _ => {}
            }
        }
        self.update_sci();
    }
}

/// The PM block as mapped at PMBASE (ICH9) or PMBA (PIIX4).
/// What ICH9 LPC and PIIX4 PM both hold of their PM block: the registers, the block as an I/O
/// target, the APM ports (decoded where the plan puts them, with the chipset's ACPI
/// enable/disable commands) and the SCI line the plan gives.
pub struct PmParts {
    pub pm: Arc<Mutex<AcpiPm>>,
    pub block: SharedDevice,
    apm: SharedDevice,
    apm_ports: Option<Range>,
    /// The SCI's GSI (the plan's `sci-irq`).
    sci_irq: Option<u32>,
    /// ACPI PCI hot-plug registers (ICH9 0x0cc0, PIIX4 0xae00), when the plan has them;
    /// they raise GPE0 bit 1.
    pub pcihp: Option<SharedPcihp>,
    /// ACPI CPU hot-plug registers (ICH9 0x0cd8, PIIX4 0xaf00); they raise GPE0 bit 2.
    pub cpuhp: Option<super::cpu_hotplug::SharedCpuHotplug>,
}

impl PmParts {
    /// `acpi_enable`/`acpi_disable`: the chipset's APM commands for ACPI mode.
    /// `acpi`: the chipset's registers as it configured them.
    pub fn new(acpi: AcpiPm, plan: &Plan, lifecycle: Lifecycle, commands: (u8, u8)) -> Self {
        let pm = Arc::new(Mutex::new(acpi));
        let gpe_pm = pm.clone();
        let gpe = Arc::new(move || lock(&gpe_pm).raise_gpe(acpi_hotplug::GPE_PCI_HOTPLUG));
        Self {
            cpuhp: super::cpu_hotplug::for_pm(plan, &pm, &lifecycle),
            pcihp: Pcihp::for_plan(plan, gpe, lifecycle).map(acpi_hotplug::shared),
            block: Arc::new(Mutex::new(PmBlock(pm.clone()))),
            apm: Arc::new(Mutex::new(Apm::new(pm.clone(), commands.0, commands.1))),
            apm_ports: apm::ports(plan),
            sci_irq: plan.sci_irq,
            pm,
        }
    }

    pub fn reset(&self) {
        lock(&self.pm).reset();
        if let Some(p) = &self.pcihp {
            lock(p).reset();
        }
        if let Some(c) = &self.cpuhp {
            lock(c).reset();
        }
    }

    /// The CPU hot-plug registers as window `key`, where the plan has them.
    pub fn cpuhp_window(&self, key: u32) -> Option<Window> {
        let c = self.cpuhp.as_ref()?;
        let at = lock(c).range();
        let dev: SharedDevice = c.clone();
        Some(super::io_window::io_window(key, at.base, at.size, &dev))
    }

    /// The hot-plug registers as window `key`, where the plan has them.
    pub fn pcihp_window(&self, key: u32) -> Option<Window> {
        let p = self.pcihp.as_ref()?;
        let at = lock(p).range();
        let dev: SharedDevice = p.clone();
        Some(super::io_window::io_window(key, at.base, at.size, &dev))
    }

    /// The APM ports as window `key`, where the plan has them.
    pub fn apm_window(&self, key: u32) -> Option<Window> {
        self.apm_ports.map(|at| apm::window(key, at, &self.apm))
    }

    /// Wire the SCI to `sink` at the plan's GSI.
    pub fn set_intx_sink(&self, sink: Arc<dyn IntxSink>) {
        if let Some(gsi) = self.sci_irq {
            lock(&self.pm).set_sci_sink(sink, gsi);
        }
    }

    pub fn power_button(&self) -> bool {
        lock(&self.pm).power_button();
        true
    }
}

pub struct PmBlock(pub Arc<Mutex<AcpiPm>>);

impl BusDevice for PmBlock {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read_block(offset, data);
    }
    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_block(offset, data);
    }
}

/// PIIX4's GPE0 block (0xafe0 on pc): status (RW1C) then enable, 2 bytes each.
pub struct Gpe0Block(pub Arc<Mutex<AcpiPm>>);

impl BusDevice for Gpe0Block {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let pm = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (i, b) in data.iter_mut().enumerate() {
            let o = offset.saturating_add(i as u64) as usize;
            *b = if o < PIIX4_GPE0_LEN {
                pm.gpe_read(o)
            } else {
                0xff
            };
        }
    }
    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let mut pm = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (i, &b) in data.iter().enumerate() {
            let o = offset.saturating_add(i as u64) as usize;
            if o < PIIX4_GPE0_LEN {
                pm.gpe_write(o, b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slp_en_s5_powers_off_and_sts_is_rw1c() {
        let l = Lifecycle::new().unwrap();
        let pm = Arc::new(Mutex::new(AcpiPm::new(PmFlavor::Ich9, l.clone(), false)));
        let mut blk = PmBlock(pm.clone());
        pm.lock().unwrap().power_button();
        let mut b = [0u8; 2];
        blk.read(0, 0, &mut b);
        assert_eq!(u16::from_le_bytes(b), PM1_STS_PWRBTN);
        blk.write(0, 0, &PM1_STS_PWRBTN.to_le_bytes());
        blk.read(0, 0, &mut b);
        assert_eq!(b, [0, 0]);
        // SCI_EN + SLP_TYP=5 (S1-ish): no power off.
        blk.write(0, 4, &(1u16 | (5 << 10) | PM1_CNT_SLP_EN).to_le_bytes());
        assert_eq!(l.pending(), Request::None);
        blk.read(0, 4, &mut b);
        assert_eq!(u16::from_le_bytes(b), 1 | (5 << 10));
        blk.write(0, 4, &(PM1_CNT_SLP_EN | 1).to_le_bytes());
        assert_eq!(l.take(), Request::PowerOff);
        // Byte write of the high half with SLP_TYP=0 also powers off.
        blk.write(0, 5, &[0x20]);
        assert_eq!(l.take(), Request::PowerOff);
    }

    #[test]
    fn timer_runs_and_is_24_bit() {
        let l = Lifecycle::new().unwrap();
        let pm = Arc::new(Mutex::new(AcpiPm::new(PmFlavor::Piix4, l, true)));
        let mut blk = PmBlock(pm.clone());
        let mut t0 = [0u8; 4];
        blk.read(0, 8, &mut t0);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let mut t1 = [0u8; 4];
        blk.read(0, 8, &mut t1);
        let (a, b) = (u32::from_le_bytes(t0), u32::from_le_bytes(t1));
        assert!(a <= 0xff_ffff && b <= 0xff_ffff);
        assert_ne!(a, b);
        blk.write(0, 8, &[0; 4]);
        let mut c = [0u8; 2];
        blk.read(0, 4, &mut c);
        assert_eq!(
            u16::from_le_bytes(c),
            PM1_CNT_SCI_EN,
            "acpi_only starts with SCI_EN"
        );
        let mut g = Gpe0Block(pm);
        g.write(0, 2, &[0x02]);
        pm_gpe_roundtrip(&mut g);
    }

    #[test]
    fn timer_follows_the_virtual_clock() {
        let clock = crate::timer::TimerQueue::manual();
        let l = Lifecycle::with_clock(clock.clone()).unwrap();
        let pm = AcpiPm::new(PmFlavor::Ich9, l, true);
        assert_eq!(pm.timer(), 0);
        clock.advance_to(1_000_000_000);
        assert_eq!(pm.timer(), 3_579_545);
        // 24 bits: wraps after 2^24 ticks (about 4.69 s).
        clock.advance_to(5_000_000_000);
        assert_eq!(pm.timer(), (5 * 3_579_545) & 0xff_ffff);
    }

    fn pm_gpe_roundtrip(g: &mut Gpe0Block) {
        let mut b = [0u8; 4];
        g.read(0, 0, &mut b);
        assert_eq!(b, [0, 0, 2, 0]);
    }
}
