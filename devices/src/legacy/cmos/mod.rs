//! MC146818 RTC and CMOS RAM at 0x70/0x71, modelled as QEMU's mc146818rtc: the clock runs on
//! a [`TimerQueue`] (the virtual clock for `-rtc clock=vm`, the host's otherwise), with the
//! periodic interrupt (register A rate, PIE), the alarm (AIE, "don't care" values), the
//! update-ended interrupt (UIE), UIP for the last 244 us before each update, SET and the
//! divider reset freezing the clock (the first update comes 500 ms after the divider is
//! released), BCD/binary and 12/24-hour formats, register C read-to-clear with IRQF driving
//! the interrupt line. Besides the clock, the memory-size bytes firmware and old kernels read.

use super::kind::{IsaBuilt, IsaContext, IsaError, IsaKind};
use super::IrqLine;
use crate::aml;
use crate::bus::BusDevice;
use crate::timer::{Timer, TimerDevice, TimerQueue, NANOSECONDS_PER_SECOND};
use acpi_tables::{aml as a, Aml};
use machine::IsaDevicePlan;
use std::sync::{Arc, Mutex};

mod clock;
pub use clock::period_to_clocks;

const REG_SECONDS: usize = 0x00;
const REG_SECONDS_ALARM: usize = 0x01;
const REG_MINUTES: usize = 0x02;
const REG_MINUTES_ALARM: usize = 0x03;
const REG_HOURS: usize = 0x04;
const REG_HOURS_ALARM: usize = 0x05;
const REG_WEEKDAY: usize = 0x06;
const REG_DAY: usize = 0x07;
const REG_MONTH: usize = 0x08;
const REG_YEAR: usize = 0x09;
const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
const REG_CENTURY: usize = 0x32;
const REG_IBM_PS2_CENTURY: usize = 0x37;

const REG_A_UIP: u8 = 0x80;
const REG_B_SET: u8 = 0x80;
const REG_B_PIE: u8 = 0x40;
const REG_B_AIE: u8 = 0x20;
const REG_B_UIE: u8 = 0x10;
const REG_B_SQWE: u8 = 0x08;
const REG_B_BINARY: u8 = 0x04;
const REG_B_24H: u8 = 0x02;
const REG_C_UF: u8 = 0x10;
const REG_C_IRQF: u8 = 0x80;
const REG_C_PF: u8 = 0x40;
const REG_C_AF: u8 = 0x20;
const REG_C_MASK: u8 = 0x70;

const RTC_CLOCK_RATE: i64 = 32768;
/// UIP is set for the last 8 cycles of the 32.768 kHz clock before an update.
const UIP_HOLD_LENGTH: i64 = 8 * NANOSECONDS_PER_SECOND / RTC_CLOCK_RATE;

const PERIODIC_TIMER: usize = 0;
const UPDATE_TIMER: usize = 1;

/// What survives a system reset (QEMU resets the RTC's interrupt state, not its RAM or
/// time), carried from one incarnation of the machine to the next.
#[derive(Debug, Clone)]
pub struct CmosState {
    ram: [u8; 128],
    base_rtc: i64,
    last_update: i64,
    offset: i64,
}

pub struct Cmos {
    index: usize,
    ram: [u8; 128],
    /// Seconds since the epoch at `last_update` (the time last set).
    base_rtc: i64,
    /// Clock time (ns) when `base_rtc` was set.
    last_update: i64,
    /// Sub-second phase (ns) added to the time since `last_update`.
    offset: i64,
    /// Periodic interrupt period in 32 kHz cycles (0: off) and its next deadline.
    period: u32,
    next_periodic_time: i64,
    next_alarm_time: i64,
    clock: Arc<TimerQueue>,
    periodic_timer: Option<Timer>,
    update_timer: Option<Timer>,
    irq: Option<Arc<dyn IrqLine>>,
}

impl Cmos {
    /// `below_4g`/`above_4g`: guest RAM sizes; `cpus`: vCPU count (QEMU stores it at 0x5f);
    /// `start`: the date (seconds since the epoch, UTC) the clock shows now; `clock`: what it
    /// runs on; `irq`: IRQ 8.
    pub fn new(
        below_4g: u64,
        above_4g: u64,
        cpus: u32,
        start: i64,
        clock: &Arc<TimerQueue>,
        irq: Option<Arc<dyn IrqLine>>,
    ) -> Arc<Mutex<Self>> {
        let mut ram = [0u8; 128];
        ram[REG_A] = 0x26;
        ram[REG_B] = REG_B_24H;
        ram[REG_D] = 0x80;
        // Base memory: 640 KiB.
        ram[0x15] = 0x80;
        ram[0x16] = 0x02;
        // Extended memory between 1 MiB and 64 MiB, in KiB.
        let ext_kib = (below_4g.saturating_sub(1 << 20) >> 10).min(0xfc00) as u16;
        ram[0x17..0x19].copy_from_slice(&ext_kib.to_le_bytes());
        ram[0x30..0x32].copy_from_slice(&ext_kib.to_le_bytes());
        // Memory above 16 MiB (below 4 GiB), in 64 KiB units.
        let above_16m = (below_4g.saturating_sub(16 << 20) >> 16).min(0xffff) as u16;
        ram[0x34..0x36].copy_from_slice(&above_16m.to_le_bytes());
        // Memory above 4 GiB in 64 KiB units, 24 bits.
        let high = (above_4g >> 16).min(0xff_ffff) as u32;
        ram[0x5b..0x5e].copy_from_slice(&high.to_le_bytes()[..3]);
        ram[0x5f] = cpus.saturating_sub(1).min(255) as u8;
        let mut cmos = Self {
            index: 0,
            ram,
            base_rtc: start,
            last_update: clock.now(),
            offset: 0,
            period: 0,
            next_periodic_time: 0,
            next_alarm_time: 0,
            clock: clock.clone(),
            periodic_timer: None,
            update_timer: None,
            irq,
        };
        cmos.set_cmos(start);
        let dev = Arc::new(Mutex::new(cmos));
        let periodic = clock.timer(&dev, PERIODIC_TIMER);
        let update = clock.timer(&dev, UPDATE_TIMER);
        {
            let mut c = dev.lock().unwrap_or_else(|e| e.into_inner());
            c.periodic_timer = Some(periodic);
            c.update_timer = Some(update);
            let now = c.clock.now();
            c.check_update_timer(now);
        }
        dev
    }

    fn set_irq(&self, level: bool) {
        if let Some(irq) = &self.irq {
            irq.set_level(level);
        }
    }

    fn write_data(&mut self, v: u8) {
        let now = self.clock.now();
        match self.index {
            REG_SECONDS_ALARM | REG_MINUTES_ALARM | REG_HOURS_ALARM => {
                self.ram[self.index] = v;
                self.check_update_timer(now);
            }
            REG_IBM_PS2_CENTURY | REG_CENTURY | REG_SECONDS | REG_MINUTES | REG_HOURS
            | REG_WEEKDAY | REG_DAY | REG_MONTH | REG_YEAR => {
                if self.index == REG_IBM_PS2_CENTURY {
                    self.index = REG_CENTURY;
                }
                self.ram[self.index] = v;
                // While SET or the divider holds the clock, the registers just store.
                if self.running() {
                    self.set_time(now);
                    self.check_update_timer(now);
                }
            }
            REG_A => {
                let update_periodic = (self.ram[REG_A] ^ v) & 0x0f != 0;
                let old_period = self.periodic_clocks();
                if v & 0x60 == 0x60 {
                    if self.running() {
                        self.update_time(now);
                    }
                    self.ram[REG_A] &= !REG_A_UIP;
                } else if self.ram[REG_A] & 0x60 == 0x60 && v & 0x70 <= 0x20 {
                    // Divider released: the first update comes half a second later.
                    if self.ram[REG_B] & REG_B_SET == 0 {
                        self.offset = 500_000_000;
                        self.set_time(now);
                    }
                    self.ram[REG_A] &= !REG_A_UIP;
                }
                // UIP is read-only.
                self.ram[REG_A] = (v & !REG_A_UIP) | (self.ram[REG_A] & REG_A_UIP);
                if update_periodic {
                    self.periodic_timer_update(now, old_period, true);
                }
                self.check_update_timer(now);
            }
            REG_B => {
                let mut v = v;
                let update_periodic = (self.ram[REG_B] ^ v) & REG_B_PIE != 0;
                let old_period = self.periodic_clocks();
                if v & REG_B_SET != 0 {
                    // Freeze the registers at the time SET was written.
                    if self.running() {
                        self.update_time(now);
                    }
                    self.ram[REG_A] &= !REG_A_UIP;
                    v &= !REG_B_UIE;
                } else if self.ram[REG_B] & REG_B_SET != 0 && self.ram[REG_A] & 0x70 <= 0x20 {
                    // Leaving SET: the clock runs from the registers, same sub-second phase.
                    self.offset = self
                        .ns_since_last_update(now)
                        .rem_euclid(NANOSECONDS_PER_SECOND);
                    self.set_time(now);
                }
                // A flag already set when its interrupt is enabled interrupts at once.
                if v & self.ram[REG_C] & REG_C_MASK != 0 {
                    self.ram[REG_C] |= REG_C_IRQF;
                    self.set_irq(true);
                } else {
                    self.ram[REG_C] &= !REG_C_IRQF;
                    self.set_irq(false);
                }
                self.ram[REG_B] = v;
                if update_periodic {
                    self.periodic_timer_update(now, old_period, true);
                }
                self.check_update_timer(now);
            }
            REG_C | REG_D => {}
            i => self.ram[i] = v,
        }
    }

    fn read_data(&mut self) -> u8 {
        let now = self.clock.now();
        match self.index {
            REG_IBM_PS2_CENTURY | REG_CENTURY | REG_SECONDS | REG_MINUTES | REG_HOURS
            | REG_WEEKDAY | REG_DAY | REG_MONTH | REG_YEAR => {
                if self.index == REG_IBM_PS2_CENTURY {
                    self.index = REG_CENTURY;
                }
                if self.running() {
                    self.update_time(now);
                }
                self.ram[self.index]
            }
            REG_A => {
                let mut v = self.ram[REG_A];
                if self.update_in_progress(now) {
                    v |= REG_A_UIP;
                }
                v
            }
            REG_C => {
                let v = self.ram[REG_C];
                self.set_irq(false);
                self.ram[REG_C] = 0;
                if v & (REG_C_UF | REG_C_AF) != 0 {
                    self.check_update_timer(now);
                }
                v
            }
            i => self.ram[i],
        }
    }

    /// Board-provided bytes (disk geometry, ...): `(register, value)` pairs.
    pub fn set_bytes(&mut self, bytes: &[(u8, u8)]) {
        for &(reg, v) in bytes {
            if let Some(r) = self.ram.get_mut(usize::from(reg)) {
                *r = v;
            }
        }
    }

    /// The boot order firmware reads from CMOS (QEMU's pc set_boot_dev): up to three
    /// devices (a/b floppy, c disk, d CD-ROM, n network) as nibbles in 0x3d and 0x38, and
    /// 0x38 bit 0 set when the floppy boot-sector check is off.
    pub fn set_boot_order(&mut self, devices: &str, fd_bootchk: bool) -> Result<(), String> {
        if devices.chars().count() > 3 {
            return Err("Too many boot devices for PC".to_string());
        }
        let mut nibbles = [0u8; 3];
        for (n, c) in nibbles.iter_mut().zip(devices.chars()) {
            *n = match c {
                'a' | 'b' => 1,
                'c' => 2,
                'd' => 3,
                'n' => 4,
                _ => return Err(format!("Invalid boot device for PC: '{c}'")),
            };
        }
        self.ram[0x3d] = (nibbles[1] << 4) | nibbles[0];
        self.ram[0x38] = (nibbles[2] << 4) | u8::from(!fd_bootchk);
        Ok(())
    }

    /// The RAM and time to carry over a reset.
    pub fn state(&self) -> CmosState {
        CmosState {
            ram: self.ram,
            base_rtc: self.base_rtc,
            last_update: self.last_update,
            offset: self.offset,
        }
    }

    /// Take over `state` from the previous incarnation (on the same clock), then reset as
    /// QEMU's system reset does.
    pub fn restore(&mut self, state: &CmosState) {
        self.ram = state.ram;
        self.base_rtc = state.base_rtc;
        self.last_update = state.last_update;
        self.offset = state.offset;
        self.ram[REG_A] &= !REG_A_UIP;
        self.reset();
    }

    /// QEMU's rtc reset: interrupts disabled and flags cleared, the line lowered; the time
    /// and CMOS RAM stay.
    pub fn reset(&mut self) {
        if self.ram[0x0f] != 0xfe {
            self.ram[0x0f] = 0;
        }
        self.ram[REG_B] &= !(REG_B_PIE | REG_B_AIE | REG_B_SQWE);
        self.ram[REG_C] &= !(REG_C_UF | REG_C_IRQF | REG_C_PF | REG_C_AF);
        let now = self.clock.now();
        self.check_update_timer(now);
        self.set_irq(false);
    }
}

impl TimerDevice for Cmos {
    fn timer_expired(&mut self, token: usize, now: i64) {
        match token {
            PERIODIC_TIMER => {
                let at = self.next_periodic_time;
                self.periodic_timer_update(at, self.period, false);
                self.ram[REG_C] |= REG_C_PF;
                if self.ram[REG_B] & REG_B_PIE != 0 {
                    self.ram[REG_C] |= REG_C_IRQF;
                    self.set_irq(true);
                }
            }
            _ => {
                // The dividers may have been put in reset since the timer was armed.
                if self.ram[REG_A] & 0x60 == 0x60 {
                    return;
                }
                // UIP may have been latched: update the time and clear it.
                self.update_time(now);
                self.ram[REG_A] &= !REG_A_UIP;
                let mut irqs = REG_C_UF;
                if now >= self.next_alarm_time {
                    irqs |= REG_C_AF;
                }
                let new_irqs = irqs & !self.ram[REG_C];
                self.ram[REG_C] |= irqs;
                if new_irqs & self.ram[REG_B] != 0 {
                    self.ram[REG_C] |= REG_C_IRQF;
                    self.set_irq(true);
                }
                self.check_update_timer(now);
            }
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(b) = data.first_mut() else { return };
        // The index port reads as all ones, as in QEMU.
        *b = match offset {
            1 => self.read_data(),
            _ => 0xff,
        };
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            0 => self.index = usize::from(v & 0x7f),
            1 => self.write_data(v),
            _ => {}
        }
    }
}

/// The MC146818 RTC/CMOS kind.
pub struct RtcKind;
pub static KIND: RtcKind = RtcKind;

impl IsaKind for RtcKind {
    fn names(&self) -> &'static [&'static str] {
        &["mc146818rtc"]
    }
    fn build(&self, ctx: &mut IsaContext) -> Result<IsaBuilt, IsaError> {
        let m = &ctx.plan.memory;
        let irq = match ctx.device.irqs.first() {
            Some(&irq) => Some((ctx.level_line)(irq).map_err(|source| IsaError::Interrupt {
                device: ctx.device.type_name.clone(),
                source,
            })?),
            None => None,
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let cmos = Cmos::new(
            m.ram_below_4g,
            m.ram_above_4g,
            ctx.plan.cpus,
            now.saturating_add(ctx.rtc.offset),
            &ctx.rtc.clock,
            irq,
        );
        {
            let mut c = cmos.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(state) = &ctx.rtc.state {
                c.restore(state);
            }
            c.set_boot_order(&ctx.rtc.boot_order, ctx.rtc.fd_bootchk)
                .map_err(IsaError::Config)?;
            c.set_bytes(ctx.board_cmos);
        }
        let mut built = IsaBuilt::new(cmos.clone());
        built.rtc = Some(cmos);
        Ok(built)
    }
    fn aml_order(&self) -> u8 {
        4
    }
    /// `RTC_` (PNP0B00) with its ports and IRQ.
    fn aml(&self, dev: &IsaDevicePlan, _nth: usize) -> Vec<u8> {
        let ios = aml::io_ranges(dev);
        let irqs = aml::irqs(dev);
        let mut res: Vec<&dyn Aml> = ios.iter().map(|i| i as &dyn Aml).collect();
        res.extend(irqs.iter().map(|i| i as &dyn Aml));
        let crs = a::ResourceTemplate::new(res);
        let hid = a::Name::new("_HID".into(), &a::EISAName::new("PNP0B00"));
        let crs = a::Name::new("_CRS".into(), &crs);
        aml::bytes_of(&a::Device::new("RTC_".into(), vec![&hid, &crs]))
    }
}

#[cfg(test)]
mod tests;
