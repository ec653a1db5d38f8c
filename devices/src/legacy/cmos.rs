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

/// Period in 32 kHz cycles of a register A rate selection (0: none).
pub fn period_to_clocks(rate: u8) -> u32 {
    let rate = u32::from(rate & 0xf);
    match rate {
        0 => 0,
        1 | 2 => 1 << (rate + 6),
        r => 1 << (r - 1),
    }
}

fn clocks_to_ns(clocks: i64) -> i64 {
    (i128::from(clocks) * i128::from(NANOSECONDS_PER_SECOND) / i128::from(RTC_CLOCK_RATE)) as i64
}

fn ns_to_clocks(ns: i64) -> i64 {
    (i128::from(ns) * i128::from(RTC_CLOCK_RATE) / i128::from(NANOSECONDS_PER_SECOND)) as i64
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Seconds since the epoch of a broken-down UTC time; out-of-range fields carry over, as
/// QEMU's mktimegm (the guest may write anything into the clock registers).
fn mktimegm(year: i64, month: i64, day: i64, hour: i64, min: i64, sec: i64) -> i64 {
    let (mut y, mut m) = (year, month);
    if m < 3 {
        m += 12;
        y -= 1;
    }
    let days = day + (153 * m - 457) / 5 + 365 * y + y.div_euclid(4) - y.div_euclid(100)
        + y.div_euclid(400)
        - 719_469;
    86_400 * days + 3600 * hour + 60 * min + sec
}

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

    fn running(&self) -> bool {
        self.ram[REG_B] & REG_B_SET == 0 && self.ram[REG_A] & 0x70 <= 0x20
    }

    fn ns_since_last_update(&self, now: i64) -> i64 {
        now.wrapping_sub(self.last_update).wrapping_add(self.offset)
    }

    fn encode(&self, v: i64) -> u8 {
        if self.ram[REG_B] & REG_B_BINARY != 0 {
            v as u8
        } else {
            let v = v.rem_euclid(100);
            (((v / 10) << 4) | (v % 10)) as u8
        }
    }

    /// A register's value; -1 for "don't care" (both top bits set).
    fn decode(&self, a: u8) -> i64 {
        if a & 0xc0 == 0xc0 {
            return -1;
        }
        if self.ram[REG_B] & REG_B_BINARY != 0 {
            i64::from(a)
        } else {
            i64::from(a >> 4) * 10 + i64::from(a & 0xf)
        }
    }

    /// The clock registers as seconds since the epoch.
    fn get_time(&self) -> i64 {
        let sec = self.decode(self.ram[REG_SECONDS]);
        let min = self.decode(self.ram[REG_MINUTES]);
        let mut hour = self.decode(self.ram[REG_HOURS] & 0x7f);
        if self.ram[REG_B] & REG_B_24H == 0 {
            hour %= 12;
            if self.ram[REG_HOURS] & 0x80 != 0 {
                hour += 12;
            }
        }
        let day = self.decode(self.ram[REG_DAY]);
        let month = self.decode(self.ram[REG_MONTH]);
        let year = self.decode(self.ram[REG_YEAR]) + self.decode(self.ram[REG_CENTURY]) * 100;
        mktimegm(year, month, day, hour, min, sec)
    }

    fn set_cmos(&mut self, secs: i64) {
        let days = secs.div_euclid(86_400);
        let tod = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        let hour = tod / 3600;
        self.ram[REG_SECONDS] = self.encode(tod % 60);
        self.ram[REG_MINUTES] = self.encode((tod / 60) % 60);
        self.ram[REG_HOURS] = if self.ram[REG_B] & REG_B_24H != 0 {
            self.encode(hour)
        } else {
            let h = if hour % 12 != 0 { hour % 12 } else { 12 };
            self.encode(h) | if hour >= 12 { 0x80 } else { 0 }
        };
        // 1970-01-01 was a Thursday; the RTC counts Sunday as 1.
        self.ram[REG_WEEKDAY] = self.encode((days + 4).rem_euclid(7) + 1);
        self.ram[REG_DAY] = self.encode(day);
        self.ram[REG_MONTH] = self.encode(month);
        self.ram[REG_YEAR] = self.encode(year.rem_euclid(100));
        self.ram[REG_CENTURY] = self.encode(year.div_euclid(100));
    }

    /// The clock registers were written: the clock runs from them now.
    fn set_time(&mut self, now: i64) {
        self.base_rtc = self.get_time();
        self.last_update = now;
    }

    /// Bring the clock registers up to `now` (unless SET holds them).
    fn update_time(&mut self, now: i64) {
        let secs = self
            .base_rtc
            .saturating_add(self.ns_since_last_update(now) / NANOSECONDS_PER_SECOND);
        if self.ram[REG_B] & REG_B_SET == 0 {
            self.set_cmos(secs);
        }
    }

    fn update_deadline(&self) -> Option<i64> {
        self.update_timer.as_ref().and_then(|t| t.deadline())
    }

    fn update_in_progress(&mut self, now: i64) -> bool {
        if !self.running() {
            return false;
        }
        if let Some(next) = self.update_deadline() {
            // UIP stays latched until the update timer runs.
            if now >= next - UIP_HOLD_LENGTH {
                self.ram[REG_A] |= REG_A_UIP;
                return true;
            }
        }
        self.ns_since_last_update(now)
            .rem_euclid(NANOSECONDS_PER_SECOND)
            >= NANOSECONDS_PER_SECOND - UIP_HOLD_LENGTH
    }

    fn convert_hour(&self, hour: i64) -> i64 {
        if self.ram[REG_B] & REG_B_24H == 0 {
            let mut h = hour % 12;
            if self.ram[REG_HOURS] & 0x80 != 0 {
                h += 12;
            }
            h
        } else {
            hour
        }
    }

    /// Seconds from the current time to the next alarm match (1 to a day).
    fn next_alarm(&mut self, now: i64) -> i64 {
        self.update_time(now);
        let mut alarm_sec = self.decode(self.ram[REG_SECONDS_ALARM]);
        let mut alarm_min = self.decode(self.ram[REG_MINUTES_ALARM]);
        let mut alarm_hour = self.decode(self.ram[REG_HOURS_ALARM]);
        if alarm_hour != -1 {
            alarm_hour = self.convert_hour(alarm_hour);
        }
        let cur_sec = self.decode(self.ram[REG_SECONDS]);
        let cur_min = self.decode(self.ram[REG_MINUTES]);
        let cur_hour = self.convert_hour(self.decode(self.ram[REG_HOURS]));

        if alarm_hour == -1 {
            alarm_hour = cur_hour;
            if alarm_min == -1 {
                alarm_min = cur_min;
                if alarm_sec == -1 {
                    alarm_sec = cur_sec + 1;
                } else if cur_sec > alarm_sec {
                    alarm_min += 1;
                }
            } else if cur_min == alarm_min {
                if alarm_sec == -1 {
                    alarm_sec = cur_sec + 1;
                } else if cur_sec > alarm_sec {
                    alarm_hour += 1;
                }
                if alarm_sec == 60 {
                    // Minutes are not "don't care": on to the next hour.
                    alarm_sec = 0;
                    alarm_hour += 1;
                }
            } else if cur_min > alarm_min {
                alarm_hour += 1;
            }
        } else if cur_hour == alarm_hour {
            if alarm_min == -1 {
                alarm_min = cur_min;
                if alarm_sec == -1 {
                    alarm_sec = cur_sec + 1;
                } else if cur_sec > alarm_sec {
                    alarm_min += 1;
                }
                if alarm_sec == 60 {
                    alarm_sec = 0;
                    alarm_min += 1;
                }
                // The hour is not "don't care": wrap to the next day.
                alarm_min %= 60;
            } else if cur_min == alarm_min {
                if alarm_sec == -1 {
                    alarm_sec = cur_sec + 1;
                }
                alarm_sec %= 60;
            }
        }
        // What is still "don't care" matches at the next minute/second.
        if alarm_min == -1 {
            alarm_min = 0;
        }
        if alarm_sec == -1 {
            alarm_sec = 0;
        }
        if alarm_sec == 60 {
            alarm_sec = 0;
            alarm_min += 1;
        }
        if alarm_min == 60 {
            alarm_min = 0;
            alarm_hour += 1;
        }
        alarm_hour %= 24;
        let hour = alarm_hour - cur_hour;
        let min = hour * 60 + alarm_min - cur_min;
        let sec = min * 60 + alarm_sec - cur_sec;
        if sec <= 0 {
            sec + 86_400
        } else {
            sec
        }
    }

    /// Program the update timer: the next second boundary, or (when UF is already set and
    /// nothing but AF can change) the alarm.
    fn check_update_timer(&mut self, now: i64) {
        let Some(timer) = &self.update_timer else {
            return;
        };
        // Dividers in reset: no updates, no interrupts.
        if self.ram[REG_A] & 0x60 == 0x60 {
            timer.disarm();
            return;
        }
        let guest_nsec = self
            .ns_since_last_update(now)
            .rem_euclid(NANOSECONDS_PER_SECOND);
        let mut next_update = now + NANOSECONDS_PER_SECOND - guest_nsec;
        let next_alarm_sec = self.next_alarm(now);
        self.next_alarm_time = next_update + (next_alarm_sec - 1) * NANOSECONDS_PER_SECOND;
        let Some(timer) = &self.update_timer else {
            return;
        };
        if self.ram[REG_A] & REG_A_UIP == 0 && self.ram[REG_C] & REG_C_UF != 0 {
            if self.ram[REG_B] & REG_B_SET != 0 || self.ram[REG_C] & REG_C_AF != 0 {
                timer.disarm();
                return;
            }
            next_update = self.next_alarm_time;
        }
        if timer.deadline() != Some(next_update) {
            timer.arm(next_update);
        }
    }

    fn periodic_timer_update(&mut self, now: i64, old_period: u32, period_change: bool) {
        let period = if self.ram[REG_B] & REG_B_PIE != 0 {
            period_to_clocks(self.ram[REG_A])
        } else {
            0
        };
        self.period = period;
        let Some(timer) = &self.periodic_timer else {
            return;
        };
        if period == 0 {
            timer.disarm();
            return;
        }
        let cur_clock = ns_to_clocks(now);
        let mut lost_clock = 0i64;
        // A new period counts from the last interrupt, not from now.
        if old_period != 0 && period_change {
            let next_clock = ns_to_clocks(self.next_periodic_time);
            let last_clock = next_clock - i64::from(old_period);
            lost_clock = (cur_clock - last_clock).max(0);
        }
        // Lost ticks are discarded (QEMU's default lost_tick_policy), time goes on.
        lost_clock = lost_clock.min(i64::from(period));
        let next_irq_clock = cur_clock + i64::from(period) - lost_clock;
        self.next_periodic_time = clocks_to_ns(next_irq_clock) + 1;
        timer.arm(self.next_periodic_time);
    }

    fn periodic_clocks(&self) -> u32 {
        if self.ram[REG_B] & REG_B_PIE != 0 {
            period_to_clocks(self.ram[REG_A])
        } else {
            0
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
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Line(AtomicBool);
    impl IrqLine for Line {
        fn set_level(&self, level: bool) {
            self.0.store(level, Ordering::SeqCst);
        }
    }

    fn read(c: &Arc<Mutex<Cmos>>, reg: u8) -> u8 {
        let mut c = c.lock().unwrap();
        c.write(0x70, 0, &[reg]);
        let mut b = [0u8];
        c.read(0x70, 1, &mut b);
        b[0]
    }

    fn write(c: &Arc<Mutex<Cmos>>, reg: u8, v: u8) {
        let mut c = c.lock().unwrap();
        c.write(0x70, 0, &[reg]);
        c.write(0x70, 1, &[v]);
    }

    const JUNE_1999: i64 = 929_577_600;

    #[test]
    fn memory_size_and_start_date() {
        let clock = TimerQueue::manual();
        let c = Cmos::new(256 << 20, 0, 2, JUNE_1999, &clock, None);
        assert_eq!(read(&c, 0x34), 0x00);
        assert_eq!(read(&c, 0x35), 0x0f); // (256-16) MiB / 64 KiB = 0x0f00
        assert_eq!(read(&c, 0x5f), 1);
        assert_eq!(read(&c, REG_D as u8), 0x80);
        assert_eq!(
            (read(&c, REG_CENTURY as u8), read(&c, REG_YEAR as u8)),
            (0x19, 0x99)
        );
        assert_eq!(read(&c, REG_MONTH as u8), 0x06);
        assert_eq!(civil_from_days(20_778), (2026, 11, 21));
        assert_eq!(mktimegm(1999, 6, 17, 0, 0, 0), JUNE_1999);
    }

    #[test]
    fn time_follows_the_clock_and_set_freezes_it() {
        let clock = TimerQueue::manual();
        let c = Cmos::new(256 << 20, 0, 1, JUNE_1999, &clock, None);
        write(&c, REG_B as u8, REG_B_24H);
        write(&c, REG_A as u8, 0x76);
        write(&c, REG_HOURS as u8, 0x23);
        write(&c, REG_MINUTES as u8, 0x59);
        write(&c, REG_SECONDS as u8, 0x00);
        write(&c, REG_A as u8, 0x26);
        clock.advance_to(clock.now() + 60 * NANOSECONDS_PER_SECOND);
        assert_eq!(read(&c, REG_HOURS as u8), 0x00);
        assert_eq!(read(&c, REG_MINUTES as u8), 0x00);
        assert_eq!(read(&c, REG_DAY as u8), 0x18);
        // 12-hour BCD: 11:59:59 PM -> 12 AM.
        write(&c, REG_B as u8, 0);
        write(&c, REG_A as u8, 0x76);
        write(&c, REG_HOURS as u8, 0x91);
        write(&c, REG_MINUTES as u8, 0x59);
        write(&c, REG_SECONDS as u8, 0x59);
        write(&c, REG_A as u8, 0x26);
        clock.advance_to(clock.now() + NANOSECONDS_PER_SECOND);
        assert_eq!(read(&c, REG_HOURS as u8), 0x12);
        // SET holds the registers.
        write(&c, REG_B as u8, REG_B_24H | REG_B_SET);
        write(&c, REG_SECONDS as u8, 0x10);
        clock.advance_to(clock.now() + 5 * NANOSECONDS_PER_SECOND);
        assert_eq!(read(&c, REG_SECONDS as u8), 0x10);
        write(&c, REG_B as u8, REG_B_24H);
        clock.advance_to(clock.now() + NANOSECONDS_PER_SECOND);
        assert_eq!(read(&c, REG_SECONDS as u8), 0x11);
    }

    #[test]
    fn periodic_interrupt_raises_irq_until_register_c_is_read() {
        let clock = TimerQueue::manual();
        let line = Arc::new(Line(AtomicBool::new(false)));
        let c = Cmos::new(256 << 20, 0, 1, JUNE_1999, &clock, Some(line.clone()));
        write(&c, REG_A as u8, 0x2f); // 2 Hz
        write(&c, REG_B as u8, REG_B_24H | REG_B_PIE);
        let next = clock.next_deadline().unwrap();
        assert!(next > clock.now());
        let mut ticks = 0;
        let end = clock.now() + 5 * NANOSECONDS_PER_SECOND + 1_000_000;
        loop {
            let step = clock.next_deadline().unwrap();
            if step > end {
                break;
            }
            clock.advance_to(step);
            if line.0.load(Ordering::SeqCst) {
                ticks += 1;
                assert_ne!(read(&c, REG_C as u8) & REG_C_PF, 0);
                assert!(!line.0.load(Ordering::SeqCst));
            }
        }
        assert_eq!(ticks, 10);
    }

    #[test]
    fn alarm_sets_af_and_interrupts() {
        let clock = TimerQueue::manual();
        let line = Arc::new(Line(AtomicBool::new(false)));
        let c = Cmos::new(256 << 20, 0, 1, JUNE_1999, &clock, Some(line.clone()));
        write(&c, REG_B as u8, REG_B_24H | REG_B_BINARY);
        read(&c, REG_C as u8);
        let sec = read(&c, REG_SECONDS as u8);
        write(&c, REG_SECONDS_ALARM as u8, (sec + 2) % 60);
        write(&c, REG_MINUTES_ALARM as u8, 0xc0);
        write(&c, REG_HOURS_ALARM as u8, 0xc0);
        write(&c, REG_B as u8, REG_B_24H | REG_B_BINARY | REG_B_AIE);
        assert!(!line.0.load(Ordering::SeqCst));
        clock.advance_to(clock.now() + 3 * NANOSECONDS_PER_SECOND);
        assert!(line.0.load(Ordering::SeqCst));
        assert_ne!(read(&c, REG_C as u8) & REG_C_AF, 0);
        assert_eq!(read(&c, REG_C as u8), 0);
    }

    #[test]
    fn boot_order_nibbles() {
        let clock = TimerQueue::manual();
        let c = Cmos::new(256 << 20, 0, 1, JUNE_1999, &clock, None);
        let order = |devs: &str, chk: bool| {
            c.lock().unwrap().set_boot_order(devs, chk)?;
            Ok::<u16, String>(u16::from(read(&c, 0x38)) | u16::from(read(&c, 0x3d)) << 8)
        };
        assert_eq!(order("cad", true), Ok(0x1230));
        assert_eq!(order("cad", false), Ok(0x1231));
        assert_eq!(order("nda", true), Ok(0x3410));
        assert_eq!(order("", true), Ok(0));
        assert_eq!(order("a", false), Ok(0x0101));
        assert_eq!(
            order("cdan", true),
            Err("Too many boot devices for PC".into())
        );
        assert_eq!(
            order("e", true),
            Err("Invalid boot device for PC: 'e'".into())
        );
    }

    #[test]
    fn time_and_ram_survive_a_reset_interrupt_enables_do_not() {
        let clock = TimerQueue::manual();
        let c = Cmos::new(256 << 20, 0, 1, JUNE_1999, &clock, None);
        write(&c, REG_A as u8, 0x76);
        write(&c, REG_YEAR as u8, 0x42);
        write(&c, REG_A as u8, 0x26);
        write(&c, 0x40, 0x5a);
        write(&c, REG_B as u8, REG_B_24H | REG_B_PIE | REG_B_AIE);
        clock.advance_to(clock.now() + 10 * NANOSECONDS_PER_SECOND);
        let state = c.lock().unwrap().state();
        drop(c);
        let c = Cmos::new(256 << 20, 0, 1, JUNE_1999, &clock, None);
        c.lock().unwrap().restore(&state);
        assert_eq!(read(&c, REG_YEAR as u8), 0x42);
        assert_eq!(read(&c, 0x40), 0x5a);
        assert_eq!(read(&c, REG_B as u8), REG_B_24H);
    }

    #[test]
    fn any_register_write_is_safe() {
        let clock = TimerQueue::manual();
        let c = Cmos::new(256 << 20, 0, 1, JUNE_1999, &clock, None);
        let mut x: u32 = 12345;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            write(&c, (x & 0x7f) as u8, (x >> 8) as u8);
            read(&c, ((x >> 16) & 0x7f) as u8);
            if x & 0x100 != 0 {
                clock.advance_to(clock.now() + i64::from(x >> 12));
            }
        }
        c.lock().unwrap().reset();
    }
}
