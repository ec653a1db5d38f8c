//! MC146818 RTC and CMOS RAM at 0x70/0x71: a real clock (UTC, BCD, 24-hour, as QEMU's
//! default) and the memory-size bytes firmware and old kernels read.

use super::kind::{IsaBuilt, IsaContext, IsaError, IsaKind};
use crate::aml;
use crate::bus::BusDevice;
use acpi_tables::{aml as a, Aml};
use machine::IsaDevicePlan;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;
/// Register B: 24-hour mode; BCD (bit 2 clear).
const REG_B_24H: u8 = 0x02;
const REG_B_BINARY: u8 = 0x04;

pub struct Cmos {
    index: u8,
    ram: [u8; 128],
    /// Seconds added to the host's UTC clock (`-rtc base=localtime` or a start date).
    offset: i64,
}

fn bcd(v: u64) -> u8 {
    (((v / 10) % 10) << 4 | (v % 10)) as u8
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl Cmos {
    /// `below_4g`/`above_4g`: guest RAM sizes; `cpus`: vCPU count (QEMU stores it at 0x5f).
    pub fn new(below_4g: u64, above_4g: u64, cpus: u32) -> Self {
        let mut ram = [0u8; 128];
        ram[REG_A as usize] = 0x26;
        ram[REG_B as usize] = REG_B_24H;
        ram[REG_D as usize] = 0x80;
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
        Self {
            index: 0,
            ram,
            offset: 0,
        }
    }

    /// The clock runs `secs` ahead of the host's UTC clock (negative: behind).
    pub fn with_offset(mut self, secs: i64) -> Self {
        self.offset = secs;
        self
    }

    fn clock_register(&self, reg: u8) -> Option<u8> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let now = (now as i64).saturating_add(self.offset).max(0) as u64;
        let days = (now / 86_400) as i64;
        let secs = now % 86_400;
        let (year, month, day) = civil_from_days(days);
        let encode = |v: u64| {
            if self.ram[REG_B as usize] & REG_B_BINARY != 0 {
                v as u8
            } else {
                bcd(v)
            }
        };
        Some(match reg {
            REG_SECONDS => encode(secs % 60),
            REG_MINUTES => encode((secs / 60) % 60),
            REG_HOURS => encode(secs / 3600),
            // 1970-01-01 was a Thursday; the RTC counts Sunday as 1.
            REG_WEEKDAY => encode(((days + 4).rem_euclid(7) + 1) as u64),
            REG_DAY => encode(day),
            REG_MONTH => encode(month),
            REG_YEAR => encode(year.rem_euclid(100) as u64),
            REG_CENTURY => encode((year / 100) as u64),
            _ => return None,
        })
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(b) = data.first_mut() else { return };
        *b = match offset {
            0 => self.index,
            1 => {
                let reg = self.index & 0x7f;
                match reg {
                    // Interrupt flags are read-to-clear; no interrupts are raised here.
                    REG_C => 0,
                    _ => self.clock_register(reg).unwrap_or(self.ram[reg as usize]),
                }
            }
            _ => 0xff,
        };
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            0 => self.index = v,
            1 => {
                let reg = self.index & 0x7f;
                match reg {
                    REG_C | REG_D => {}
                    // The clock follows the host; setting it is accepted and ignored.
                    r if self.clock_register(r).is_some() => {
                        crate::unimp!(
                            "mc146818rtc: setting clock register {r:#x} is not implemented (the \
                             clock follows the host); ignored"
                        );
                    }
                    r => self.ram[r as usize] = v,
                }
            }
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
        let cmos =
            Cmos::new(m.ram_below_4g, m.ram_above_4g, ctx.plan.cpus).with_offset(ctx.rtc_offset);
        Ok(IsaBuilt::new(Arc::new(Mutex::new(cmos))))
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

    fn read(c: &mut Cmos, reg: u8) -> u8 {
        c.write(0x70, 0, &[reg]);
        let mut b = [0u8];
        c.read(0x70, 1, &mut b);
        b[0]
    }

    #[test]
    fn memory_size_and_clock() {
        let mut c = Cmos::new(256 << 20, 0, 2);
        assert_eq!(read(&mut c, 0x34), 0x00);
        assert_eq!(read(&mut c, 0x35), 0x0f); // (256-16) MiB / 64 KiB = 0x0f00
        assert_eq!(read(&mut c, 0x5f), 1);
        assert_eq!(read(&mut c, REG_D), 0x80);
        let century = read(&mut c, REG_CENTURY);
        assert_eq!(century, 0x20);
        let month = read(&mut c, REG_MONTH);
        assert!((0x01..=0x12).contains(&month));
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_778), (2026, 11, 21));
        // A base date far in the past: 1999 (an offset of about -27 years).
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut c = Cmos::new(256 << 20, 0, 2).with_offset(929_577_600 - now);
        assert_eq!(
            (read(&mut c, REG_CENTURY), read(&mut c, REG_YEAR)),
            (0x19, 0x99)
        );
        assert_eq!(read(&mut c, REG_MONTH), 0x06);
    }
}
