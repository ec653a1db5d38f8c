use super::clock::{civil_from_days, mktimegm};
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
