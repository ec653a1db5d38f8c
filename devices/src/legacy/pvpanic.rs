//! pvpanic: the guest reports a panic through one byte (ISA `pvpanic` at `ioport`, 0x505 by
//! default; `pvpanic-pci` behind a 2-byte memory BAR). A read returns the events the device
//! offers (`events`); a write reports the first of them set: PANICKED, else CRASH_LOADED,
//! else SHUTDOWN. The VMM applies `-action panic=`/`shutdown=` to them.

use super::kind::{IsaBuilt, IsaContext, IsaError, IsaKind};
use crate::aml;
use crate::bus::BusDevice;
use crate::lifecycle::{GuestEvent, Lifecycle};
use acpi_tables::{aml as a, Aml};
use machine::IsaDevicePlan;
use std::sync::{Arc, Mutex};

pub const PVPANIC_PANICKED: u8 = 1 << 0;
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;
pub const PVPANIC_SHUTDOWN: u8 = 1 << 2;
/// What QEMU 10 offers by default.
pub const PVPANIC_EVENTS: u8 = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED | PVPANIC_SHUTDOWN;
pub const PVPANIC_IOPORT: u64 = 0x505;

pub struct PvPanic {
    events: u8,
    lifecycle: Lifecycle,
    /// An unknown event bit was logged (QEMU logs it once).
    logged_unknown: bool,
}

impl PvPanic {
    pub fn new(events: u8, lifecycle: Lifecycle) -> Self {
        Self {
            events,
            lifecycle,
            logged_unknown: false,
        }
    }

    /// The event a written value reports, if any. As QEMU, the value is not masked with the
    /// offered events.
    pub fn event_for(value: u8) -> Option<GuestEvent> {
        if value & PVPANIC_PANICKED != 0 {
            Some(GuestEvent::Panicked)
        } else if value & PVPANIC_CRASH_LOADED != 0 {
            Some(GuestEvent::CrashLoaded)
        } else if value & PVPANIC_SHUTDOWN != 0 {
            Some(GuestEvent::PvShutdown)
        } else {
            None
        }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        // One-byte register: every byte of a wider access reads the same byte (QEMU's
        // max_access_size 1 splits it).
        data.fill(self.events);
    }

    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
        for &v in data {
            if v & !PVPANIC_EVENTS != 0 && !self.logged_unknown {
                crate::guest_error!("pvpanic: unknown event {v:#x}");
                self.logged_unknown = true;
            }
            if let Some(event) = Self::event_for(v) {
                self.lifecycle.notify(event);
            }
        }
    }
}

/// The ISA pvpanic kind (the plan carries no properties for ISA devices: the default
/// events; the catalog offers no `events` for it).
pub struct PvPanicKind;
pub static KIND: PvPanicKind = PvPanicKind;

impl IsaKind for PvPanicKind {
    fn names(&self) -> &'static [&'static str] {
        &["pvpanic"]
    }
    fn build(&self, ctx: &mut IsaContext) -> Result<IsaBuilt, IsaError> {
        Ok(IsaBuilt::new(Arc::new(Mutex::new(PvPanic::new(
            PVPANIC_EVENTS,
            ctx.lifecycle.clone(),
        )))))
    }
    /// QEMU's `PEVT` (QEMU0001) with its port: Linux's pvpanic driver finds it by _HID.
    fn aml(&self, dev: &IsaDevicePlan, _nth: usize) -> Vec<u8> {
        let ios = aml::io_ranges(dev);
        let res: Vec<&dyn Aml> = ios.iter().map(|i| i as &dyn Aml).collect();
        let crs = a::ResourceTemplate::new(res);
        let hid = a::Name::new("_HID".into(), &"QEMU0001");
        let crs = a::Name::new("_CRS".into(), &crs);
        let sta = a::Name::new("_STA".into(), &0x0fu8);
        aml::bytes_of(&a::Device::new("PEVT".into(), vec![&hid, &crs, &sta]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_events_and_reports_writes() {
        let l = Lifecycle::new().unwrap();
        let mut p = PvPanic::new(PVPANIC_EVENTS, l.clone());
        let mut b = [0u8];
        p.read(0, 0, &mut b);
        assert_eq!(b, [7]);
        p.write(0, 0, &[0]);
        assert!(l.take_events().is_empty());
        p.write(0, 0, &[3]);
        p.write(0, 0, &[2]);
        p.write(0, 0, &[4]);
        p.write(0, 0, &[0xf8]);
        assert_eq!(
            l.take_events(),
            vec![
                GuestEvent::Panicked,
                GuestEvent::CrashLoaded,
                GuestEvent::PvShutdown
            ]
        );
    }
}
