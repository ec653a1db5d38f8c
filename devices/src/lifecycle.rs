//! Requests from devices and vCPUs to the VMM to end or restart the machine (ACPI S5, 0xcf9,
//! i8042, a failed vCPU).
//!
//! Devices run on vCPU threads; the request is latched here and the VMM's event loop is woken
//! through an eventfd so that it, not the device, tears down or resets the machine.

use crate::timer::TimerQueue;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// What a device asked for. Later requests never downgrade an earlier, stronger one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Request {
    None = 0,
    /// A disk request failed with the `stop` error action (see `take_io_errors`).
    IoError = 1,
    Reset = 2,
    PowerOff = 3,
    /// A vCPU failed (emulation error, triple fault, unhandled exit); already reported.
    Crash = 4,
}

impl Request {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Request::IoError,
            2 => Request::Reset,
            3 => Request::PowerOff,
            4 => Request::Crash,
            _ => Request::None,
        }
    }
}

/// A failed disk request that stops the machine (QEMU's BLOCK_IO_ERROR data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoError {
    /// The drive (block backend) name.
    pub device: String,
    /// `read` or `write` (flushes count as writes).
    pub operation: &'static str,
    /// The error text (strerror).
    pub reason: String,
    pub nospace: bool,
}

/// Events a device reports for the VMM to act on by its configured actions (`-action`,
/// `-watchdog-action`); unlike [`Request`]s each one counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestEvent {
    /// A watchdog (ib700, the ICH9 TCO timer) expired.
    WatchdogExpired,
    /// pvpanic: the guest panicked.
    Panicked,
    /// pvpanic: the guest loaded a crash kernel.
    CrashLoaded,
    /// pvpanic: the guest asks to be shut down.
    PvShutdown,
}

struct Inner {
    /// The virtual clock the devices' timers run on (qtest steps it; else the host's).
    clock: Arc<TimerQueue>,
    state: AtomicU8,
    wake: EventFd,
    /// Slots the guest ejected (ACPI eject register, a PCIe slot powered off): (secondary
    /// bus id, slot), for the VMM to unplug on its own thread.
    ejects: Mutex<Vec<(String, u8)>>,
    events: Mutex<Vec<GuestEvent>>,
    io_errors: Mutex<Vec<IoError>>,
    /// CPUs the guest ejected (ACPI CPU hot-plug), by index, for the VMM to park.
    cpu_ejects: Mutex<Vec<u32>>,
}

/// Cloneable handle shared by every device that can power off or reset the machine.
#[derive(Clone)]
pub struct Lifecycle {
    inner: Arc<Inner>,
}

impl Lifecycle {
    /// A handle whose devices' timers run on the host's monotonic clock.
    pub fn new() -> std::io::Result<Self> {
        Self::with_clock(TimerQueue::host())
    }

    /// A handle whose devices' timers run on `clock`.
    pub fn with_clock(clock: Arc<TimerQueue>) -> std::io::Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                clock,
                state: AtomicU8::new(Request::None as u8),
                wake: EventFd::new(libc::EFD_NONBLOCK)?,
                ejects: Mutex::new(Vec::new()),
                events: Mutex::new(Vec::new()),
                io_errors: Mutex::new(Vec::new()),
                cpu_ejects: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Latch `request` (keeping the stronger of it and any pending one) and wake the VMM.
    pub fn request(&self, request: Request) {
        self.inner.state.fetch_max(request as u8, Ordering::SeqCst);
        // A full eventfd counter still wakes the reader, so a failed write loses nothing.
        let _ = self.inner.wake.write(1);
    }

    /// The virtual clock (QEMU_CLOCK_VIRTUAL) for device timers.
    pub fn clock(&self) -> &Arc<TimerQueue> {
        &self.inner.clock
    }

    /// Queue `event` and wake the VMM.
    pub fn notify(&self, event: GuestEvent) {
        let mut events = self.inner.events.lock().unwrap_or_else(|e| e.into_inner());
        // A guest writing pvpanic in a loop must not grow memory without bound.
        if events.len() < 1024 {
            events.push(event);
        }
        drop(events);
        let _ = self.inner.wake.write(1);
    }

    /// The events queued since the last call, oldest first.
    pub fn take_events(&self) -> Vec<GuestEvent> {
        std::mem::take(&mut *self.inner.events.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The pending request, without clearing it.
    pub fn pending(&self) -> Request {
        Request::from_u8(self.inner.state.load(Ordering::SeqCst))
    }

    /// Take the pending request, leaving none.
    /// A disk request failed and its error action is `stop`: report it and stop the machine.
    pub fn io_error(&self, e: IoError) {
        self.inner
            .io_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
        self.request(Request::IoError);
    }

    /// The disk errors reported since the last call.
    pub fn take_io_errors(&self) -> Vec<IoError> {
        std::mem::take(
            &mut *self
                .inner
                .io_errors
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    pub fn take(&self) -> Request {
        let _ = self.inner.wake.read();
        Request::from_u8(self.inner.state.swap(Request::None as u8, Ordering::SeqCst))
    }

    /// The guest released slot `slot` of bus `bus`: the VMM removes what sits there (it
    /// cannot be done on the vCPU thread, which holds the PCI host).
    pub fn eject(&self, bus: &str, slot: u8) {
        self.inner
            .ejects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((bus.to_string(), slot));
        let _ = self.inner.wake.write(1);
    }

    /// The slots ejected since the last call, in order.
    pub fn take_ejects(&self) -> Vec<(String, u8)> {
        std::mem::take(&mut *self.inner.ejects.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The guest ejected CPU `index`: the VMM parks its vCPU.
    pub fn eject_cpu(&self, index: u32) {
        self.inner
            .cpu_ejects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(index);
        let _ = self.inner.wake.write(1);
    }

    /// The CPUs ejected since the last call, in order.
    pub fn take_cpu_ejects(&self) -> Vec<u32> {
        std::mem::take(
            &mut *self
                .inner
                .cpu_ejects
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// The eventfd that becomes readable when a request is made.
    pub fn eventfd(&self) -> &EventFd {
        &self.inner.wake
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poweroff_wins_over_reset_and_take_clears() {
        let l = Lifecycle::new().unwrap();
        assert_eq!(l.pending(), Request::None);
        l.request(Request::PowerOff);
        l.clone().request(Request::Reset);
        assert_eq!(l.take(), Request::PowerOff);
        assert_eq!(l.pending(), Request::None);
    }
}
