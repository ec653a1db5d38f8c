//! The ICH9 TCO watchdog: 32 bytes at PMBASE+0x60 inside the LPC's ACPI PM block. The timer
//! counts TCO_TMR ticks of 0.6 s down from TCO_RLD; the first expiry sets TIMEOUT and
//! reloads, the second also sets SECOND_TO_STS/BOOT_STS and, unless the no-reboot strap
//! (`-global ICH9-LPC.noreboot=on`) or GCS.NO_REBOOT in the chipset configuration registers
//! says otherwise, reports the watchdog to the VMM (`-watchdog-action`) and stops.
//! Registers are 16 bits wide; wider accesses split into 16-bit ones (QEMU's impl sizes).

use crate::lifecycle::{GuestEvent, Lifecycle};
use crate::timer::{Timer, TimerDevice, TimerQueue};
use std::sync::{Arc, Mutex};

pub const TCO_OFFSET: u64 = 0x60;
pub const TCO_LEN: u64 = 32;
/// One tick of the TCO timer.
pub const TCO_TICK_NSEC: i64 = 600_000_000;

const TCO_RLD: u64 = 0x00;
const TCO_DAT_IN: u64 = 0x02;
const TCO_DAT_OUT: u64 = 0x03;
const TCO1_STS: u64 = 0x04;
const TCO2_STS: u64 = 0x06;
const TCO1_CNT: u64 = 0x08;
const TCO2_CNT: u64 = 0x0a;
const TCO_MESSAGE1: u64 = 0x0c;
const TCO_MESSAGE2: u64 = 0x0d;
const TCO_WDCNT: u64 = 0x0e;
const SW_IRQ_GEN: u64 = 0x10;
const TCO_TMR: u64 = 0x12;

const SW_TCO_SMI: u16 = 1 << 1;
const TCO_INT_STS: u16 = 1 << 2;
const TCO_TIMEOUT: u16 = 1 << 3;
const TCO_TMR_HLT: u16 = 1 << 11;
const TCO_LOCK: u16 = 1 << 12;
const TCO_SECOND_TO_STS: u16 = 1 << 1;
const TCO_BOOT_STS: u16 = 1 << 2;
const TCO_RLD_MASK: u16 = 0x3ff;
const TCO1_STS_MASK: u16 = 0xe870;
const TCO2_STS_MASK: u16 = 0xfff8;
const TCO1_CNT_MASK: u16 = 0xfeff;
const TCO_TMR_MASK: u16 = 0x3ff;

/// GCS in the chipset configuration registers and its NO_REBOOT bit.
pub const GCS_OFFSET: usize = 0x3410;
pub const GCS_NO_REBOOT: u32 = 1 << 5;

/// Where the TCO reads GCS.NO_REBOOT at expiry.
pub trait NoRebootSource: Send + Sync {
    fn no_reboot(&self) -> bool;
}

pub struct Tco {
    rld: u16,
    din: u8,
    dout: u8,
    sts1: u16,
    sts2: u16,
    cnt1: u16,
    cnt2: u16,
    msg1: u8,
    msg2: u8,
    wdcnt: u8,
    tmr: u16,
    sw_irq_gen: u8,
    /// Clock time of the next expiry while running.
    expire_time: Option<i64>,
    timeouts: u8,
    /// The speaker strap (`noreboot`): never reboot.
    strap_noreboot: bool,
    gcs: Arc<dyn NoRebootSource>,
    lifecycle: Lifecycle,
    timer: Option<Timer>,
}

impl Tco {
    pub fn new(
        strap_noreboot: bool,
        gcs: Arc<dyn NoRebootSource>,
        lifecycle: Lifecycle,
        clock: &Arc<TimerQueue>,
    ) -> Arc<Mutex<Self>> {
        let dev = Arc::new(Mutex::new(Self {
            rld: 0,
            din: 0,
            dout: 0,
            sts1: 0,
            sts2: 0,
            cnt1: 0,
            cnt2: 0,
            msg1: 0,
            msg2: 0,
            wdcnt: 0,
            tmr: 0,
            sw_irq_gen: 0,
            expire_time: None,
            timeouts: 0,
            strap_noreboot,
            gcs,
            lifecycle,
            timer: None,
        }));
        let timer = clock.timer(&dev, 0);
        {
            let mut t = dev.lock().unwrap_or_else(|e| e.into_inner());
            t.timer = Some(timer);
            t.reset();
        }
        dev
    }

    pub fn reset(&mut self) {
        self.rld = 0;
        self.din = 0;
        self.dout = 0;
        self.sts1 = 0;
        self.sts2 = 0;
        self.cnt1 = 0;
        self.cnt2 = 0x0008;
        self.msg1 = 0;
        self.msg2 = 0;
        self.wdcnt = 0;
        self.tmr = 0x0004;
        self.sw_irq_gen = 0x03;
        self.timeouts = 0;
        self.stop();
    }

    fn now(&self) -> i64 {
        self.timer.as_ref().map(|t| t.now()).unwrap_or(0)
    }

    fn reload(&mut self) {
        let ticks = i64::from(self.tmr & TCO_TMR_MASK);
        let expire = self.now() + ticks * TCO_TICK_NSEC;
        self.expire_time = Some(expire);
        if let Some(t) = &self.timer {
            t.arm(expire);
        }
    }

    fn stop(&mut self) {
        self.expire_time = None;
        if let Some(t) = &self.timer {
            t.disarm();
        }
    }

    /// TCO_TMR values 0 and 1 do not start the timer.
    fn can_start(&self) -> bool {
        self.cnt1 & TCO_TMR_HLT == 0 && self.tmr > 1
    }

    fn read_reg(&self, addr: u64) -> u16 {
        match addr {
            TCO_RLD => match self.expire_time {
                Some(expire) => {
                    let left = (expire - self.now()) / TCO_TICK_NSEC;
                    (left as u16) | (self.rld & !TCO_RLD_MASK)
                }
                None => self.rld,
            },
            TCO_DAT_IN => self.din.into(),
            TCO_DAT_OUT => self.dout.into(),
            TCO1_STS => self.sts1,
            TCO2_STS => self.sts2,
            TCO1_CNT => self.cnt1,
            TCO2_CNT => self.cnt2,
            TCO_MESSAGE1 => self.msg1.into(),
            TCO_MESSAGE2 => self.msg2.into(),
            TCO_WDCNT => self.wdcnt.into(),
            TCO_TMR => self.tmr,
            SW_IRQ_GEN => self.sw_irq_gen.into(),
            _ => 0,
        }
    }

    fn write_reg(&mut self, addr: u64, val: u16) {
        match addr {
            TCO_RLD => {
                self.timeouts = 0;
                if self.can_start() {
                    self.rld = self.tmr;
                    self.reload();
                } else {
                    self.rld = val;
                }
            }
            // No SMM and no TCO interrupt routing: only the status bits record these.
            TCO_DAT_IN => {
                self.din = val as u8;
                self.sts1 |= SW_TCO_SMI;
            }
            TCO_DAT_OUT => {
                self.dout = val as u8;
                self.sts1 |= TCO_INT_STS;
            }
            TCO1_STS => self.sts1 = val & TCO1_STS_MASK,
            TCO2_STS => self.sts2 = val & TCO2_STS_MASK,
            TCO1_CNT => {
                // TCO_LOCK sticks until reset.
                self.cnt1 = (val & TCO1_CNT_MASK) | (self.cnt1 & TCO_LOCK);
                if self.can_start() {
                    self.rld = self.tmr;
                    self.reload();
                } else {
                    self.stop();
                }
            }
            TCO2_CNT => self.cnt2 = val,
            TCO_MESSAGE1 => self.msg1 = val as u8,
            TCO_MESSAGE2 => self.msg2 = val as u8,
            TCO_WDCNT => self.wdcnt = val as u8,
            TCO_TMR => self.tmr = val,
            SW_IRQ_GEN => self.sw_irq_gen = val as u8,
            _ => {}
        }
    }

    /// An access at `offset` within the TCO block, split into 16-bit register accesses.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, chunk) in data.chunks_mut(2).enumerate() {
            let v = self.read_reg(offset + 2 * i as u64).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, chunk) in data.chunks(2).enumerate() {
            let mut v = [0u8; 2];
            v[..chunk.len()].copy_from_slice(chunk);
            self.write_reg(offset + 2 * i as u64, u16::from_le_bytes(v));
        }
    }
}

impl TimerDevice for Tco {
    fn timer_expired(&mut self, _token: usize, _now: i64) {
        self.rld = 0;
        self.sts1 |= TCO_TIMEOUT;
        self.timeouts += 1;
        if self.timeouts == 2 {
            self.sts2 |= TCO_SECOND_TO_STS | TCO_BOOT_STS;
            self.timeouts = 0;
            if !self.strap_noreboot && !self.gcs.no_reboot() {
                self.lifecycle.notify(GuestEvent::WatchdogExpired);
                self.stop();
                return;
            }
        }
        self.rld = self.tmr;
        self.reload();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Gcs(AtomicBool);
    impl NoRebootSource for Gcs {
        fn no_reboot(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn rw(t: &Arc<Mutex<Tco>>, addr: u64) -> u16 {
        let mut b = [0u8; 2];
        t.lock().unwrap().read(addr, &mut b);
        u16::from_le_bytes(b)
    }

    fn ww(t: &Arc<Mutex<Tco>>, addr: u64, v: u16) {
        t.lock().unwrap().write(addr, &v.to_le_bytes());
    }

    fn start(t: &Arc<Mutex<Tco>>, ticks: u16) {
        ww(t, TCO1_CNT, rw(t, TCO1_CNT) | TCO_TMR_HLT);
        ww(t, TCO_TMR, ticks);
        ww(t, TCO_RLD, 4);
        ww(t, TCO1_CNT, rw(t, TCO1_CNT) & !TCO_TMR_HLT);
    }

    #[test]
    fn defaults_counter_and_timeouts() {
        let l = Lifecycle::new().unwrap();
        let clock = TimerQueue::manual();
        let gcs = Arc::new(Gcs(AtomicBool::new(true)));
        let t = Tco::new(false, gcs.clone(), l.clone(), &clock);
        let mut b = [0u8; 4];
        t.lock().unwrap().read(TCO1_CNT, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x0008_0000);
        assert_eq!(rw(&t, TCO_TMR), 4);
        let mut one = [0u8];
        t.lock().unwrap().read(SW_IRQ_GEN, &mut one);
        assert_eq!(one, [3]);

        start(&t, 6);
        for left in (1..=6).rev() {
            assert_eq!(rw(&t, TCO_RLD) & TCO_RLD_MASK, left);
            clock.advance_to(clock.now() + TCO_TICK_NSEC);
        }
        assert_ne!(rw(&t, TCO1_STS) & TCO_TIMEOUT, 0);
        ww(&t, TCO1_STS, TCO_TIMEOUT);
        assert_eq!(rw(&t, TCO1_STS) & TCO_TIMEOUT, 0);
        // Second timeout with NO_REBOOT: status only.
        clock.advance_to(clock.now() + 6 * TCO_TICK_NSEC);
        assert_ne!(rw(&t, TCO2_STS) & TCO_SECOND_TO_STS, 0);
        assert!(l.take_events().is_empty());
        // Without it the watchdog fires.
        gcs.0.store(false, Ordering::SeqCst);
        clock.advance_to(clock.now() + 12 * TCO_TICK_NSEC);
        assert_eq!(l.take_events(), vec![GuestEvent::WatchdogExpired]);
        clock.advance_to(clock.now() + 100 * TCO_TICK_NSEC);
        assert!(l.take_events().is_empty(), "stopped after the action");
        // TCO_LOCK sticks.
        ww(&t, TCO1_CNT, TCO_LOCK);
        ww(&t, TCO1_CNT, 0);
        assert_eq!(rw(&t, TCO1_CNT), TCO_LOCK);
    }
}
