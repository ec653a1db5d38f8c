//! Bounded waits on the time-stamp counter. The TSC rate is not measured:
//! it is assumed to be about 3 GHz, so "N ms" means N ms on a 3 GHz TSC
//! (N * 1.5 ms at 2 GHz). An iteration cap also ends the wait should the
//! TSC not advance at all.

/// Assumed TSC ticks per millisecond.
const TICKS_PER_MS: u64 = 3_000_000;
/// Poll iterations per millisecond of cap; a `pause` takes at least ~10 ns.
const SPINS_PER_MS: u64 = 100_000;

pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no memory effects, and boot.rs loads CR4 with TSD
    // clear, so it is legal at CPL 3.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// A point in time a poll loop must not wait past.
pub struct Deadline {
    start: u64,
    ticks: u64,
    spins: u64,
    max_spins: u64,
}

impl Deadline {
    pub fn after_ms(ms: u64) -> Self {
        Self {
            start: rdtsc(),
            ticks: ms * TICKS_PER_MS,
            spins: 0,
            max_spins: ms * SPINS_PER_MS,
        }
    }

    /// Counts one poll (with a `pause`) and says whether time is up.
    pub fn expired(&mut self) -> bool {
        core::hint::spin_loop();
        self.spins += 1;
        self.spins > self.max_spins || rdtsc().wrapping_sub(self.start) > self.ticks
    }
}
