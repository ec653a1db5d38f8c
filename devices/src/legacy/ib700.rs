//! The iBASE 700 ISA watchdog (`-device ib700`): a write to 0x443-0x444 starts (or restarts)
//! the timer with the period its low nibble selects (30 s for 0 down to 0 s for 15, in 2 s
//! steps); a write to 0x441-0x442 stops it. Expiry reports the watchdog to the VMM, which
//! applies `-watchdog-action`; the timer then stays stopped. Reads return nothing (all ones).

use super::kind::{IsaBuilt, IsaContext, IsaError, IsaKind};
use crate::bus::BusDevice;
use crate::lifecycle::{GuestEvent, Lifecycle};
use crate::timer::{Timer, TimerDevice, TimerQueue, NANOSECONDS_PER_SECOND};
use std::sync::{Arc, Mutex};

/// The ports, from 0x441: disable at +0/+1, enable at +2/+3.
pub const IB700_BASE: u64 = 0x441;
pub const IB700_LEN: u64 = 4;

pub struct Ib700 {
    timer: Option<Timer>,
    lifecycle: Lifecycle,
}

impl Ib700 {
    /// The device, with its timer on `clock` (the virtual clock).
    pub fn new(lifecycle: Lifecycle, clock: &Arc<TimerQueue>) -> Arc<Mutex<Self>> {
        let dev = Arc::new(Mutex::new(Self {
            timer: None,
            lifecycle,
        }));
        let timer = clock.timer(&dev, 0);
        dev.lock().unwrap_or_else(|e| e.into_inner()).timer = Some(timer);
        dev
    }

    /// Seconds before expiry for the value written to the enable port.
    fn period_secs(value: u8) -> i64 {
        30 - 2 * i64::from(value & 0xf)
    }
}

impl BusDevice for Ib700 {
    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        let Some(timer) = &self.timer else { return };
        match offset {
            0 | 1 => timer.disarm(),
            2 | 3 => timer.arm(timer.now() + Self::period_secs(v) * NANOSECONDS_PER_SECOND),
            _ => {}
        }
    }
}

impl TimerDevice for Ib700 {
    fn timer_expired(&mut self, _token: usize, _now: i64) {
        self.lifecycle.notify(GuestEvent::WatchdogExpired);
    }
}

/// The ib700 kind: its timer runs on the virtual clock.
pub struct Ib700Kind;
pub static KIND: Ib700Kind = Ib700Kind;

impl IsaKind for Ib700Kind {
    fn names(&self) -> &'static [&'static str] {
        &["ib700"]
    }
    fn build(&self, ctx: &mut IsaContext) -> Result<IsaBuilt, IsaError> {
        Ok(IsaBuilt::new(Ib700::new(
            ctx.lifecycle.clone(),
            ctx.lifecycle.clock(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_after_the_programmed_period_unless_stopped() {
        let l = Lifecycle::new().unwrap();
        let clock = TimerQueue::manual();
        let dev = Ib700::new(l.clone(), &clock);
        let s = NANOSECONDS_PER_SECOND;
        // 14 -> 2 s; a ping restarts it.
        dev.lock().unwrap().write(IB700_BASE, 2, &[14]);
        clock.advance_to(s);
        dev.lock().unwrap().write(IB700_BASE, 2, &[14]);
        clock.advance_to(2 * s + s / 2);
        assert!(l.take_events().is_empty());
        // Disable: nothing fires.
        dev.lock().unwrap().write(IB700_BASE, 0, &[1]);
        clock.advance_to(10 * s);
        assert!(l.take_events().is_empty());
        // 13 -> 4 s.
        dev.lock().unwrap().write(IB700_BASE, 2, &[13]);
        clock.advance_to(13 * s);
        assert!(l.take_events().is_empty());
        clock.advance_to(14 * s);
        assert_eq!(l.take_events(), vec![GuestEvent::WatchdogExpired]);
        clock.advance_to(100 * s);
        assert!(l.take_events().is_empty(), "it fires once");
        let mut b = [0u8];
        dev.lock().unwrap().read(IB700_BASE, 0, &mut b);
        assert_eq!(b, [0xff]);
    }
}
