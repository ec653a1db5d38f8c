//! The RTC's clock: time since the last set, BCD/binary and 12/24-hour encoding, the
//! update cycle with UIP, the alarm and the periodic interrupt, on the device's timer queue.

use super::*;

/// Period in 32 kHz cycles of a register A rate selection (0: none).
pub fn period_to_clocks(rate: u8) -> u32 {
    let rate = u32::from(rate & 0xf);
    match rate {
        0 => 0,
        1 | 2 => 1 << (rate + 6),
        r => 1 << (r - 1),
    }
}

pub(super) fn clocks_to_ns(clocks: i64) -> i64 {
    (i128::from(clocks) * i128::from(NANOSECONDS_PER_SECOND) / i128::from(RTC_CLOCK_RATE)) as i64
}

pub(super) fn ns_to_clocks(ns: i64) -> i64 {
    (i128::from(ns) * i128::from(RTC_CLOCK_RATE) / i128::from(NANOSECONDS_PER_SECOND)) as i64
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's civil_from_days).
pub(super) fn civil_from_days(days: i64) -> (i64, i64, i64) {
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
pub(super) fn mktimegm(year: i64, month: i64, day: i64, hour: i64, min: i64, sec: i64) -> i64 {
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

impl Cmos {
    pub(super) fn running(&self) -> bool {
        self.ram[REG_B] & REG_B_SET == 0 && self.ram[REG_A] & 0x70 <= 0x20
    }

    pub(super) fn ns_since_last_update(&self, now: i64) -> i64 {
        now.wrapping_sub(self.last_update).wrapping_add(self.offset)
    }

    pub(super) fn encode(&self, v: i64) -> u8 {
        if self.ram[REG_B] & REG_B_BINARY != 0 {
            v as u8
        } else {
            let v = v.rem_euclid(100);
            (((v / 10) << 4) | (v % 10)) as u8
        }
    }

    /// A register's value; -1 for "don't care" (both top bits set).
    pub(super) fn decode(&self, a: u8) -> i64 {
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
    pub(super) fn get_time(&self) -> i64 {
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

    pub(super) fn set_cmos(&mut self, secs: i64) {
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
    pub(super) fn set_time(&mut self, now: i64) {
        self.base_rtc = self.get_time();
        self.last_update = now;
    }

    /// Bring the clock registers up to `now` (unless SET holds them).
    pub(super) fn update_time(&mut self, now: i64) {
        let secs = self
            .base_rtc
            .saturating_add(self.ns_since_last_update(now) / NANOSECONDS_PER_SECOND);
        if self.ram[REG_B] & REG_B_SET == 0 {
            self.set_cmos(secs);
        }
    }

    pub(super) fn update_deadline(&self) -> Option<i64> {
        self.update_timer.as_ref().and_then(|t| t.deadline())
    }

    pub(super) fn update_in_progress(&mut self, now: i64) -> bool {
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

    pub(super) fn convert_hour(&self, hour: i64) -> i64 {
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
    pub(super) fn next_alarm(&mut self, now: i64) -> i64 {
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
    pub(super) fn check_update_timer(&mut self, now: i64) {
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

    pub(super) fn periodic_timer_update(&mut self, now: i64, old_period: u32, period_change: bool) {
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

    pub(super) fn periodic_clocks(&self) -> u32 {
        if self.ram[REG_B] & REG_B_PIE != 0 {
            period_to_clocks(self.ram[REG_A])
        } else {
            0
        }
    }
}
