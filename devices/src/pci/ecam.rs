//! PCI Express enhanced configuration access (ECAM/MMCONFIG): an MMIO window where
//! `bus << 20 | devfn << 12 | offset` addresses 4 KiB config spaces. The MCH maps it at
//! PCIEXBAR; the device only decodes and forwards to the host.

use super::host::PciHost;
use crate::bus::BusDevice;
use std::sync::{Mutex, Weak};

/// Decode an ECAM offset into (bus, devfn, register).
pub fn decode(offset: u64) -> (u8, u8, u16) {
    (
        (offset >> 20) as u8,
        (offset >> 12) as u8,
        (offset & 0xfff) as u16,
    )
}

/// The MMIO side of config access. Holds the host weakly: the host owns the bus mapping.
pub struct PciConfigMmio {
    host: Weak<Mutex<PciHost>>,
}

impl PciConfigMmio {
    pub fn new(host: Weak<Mutex<PciHost>>) -> Self {
        Self { host }
    }

    /// Point the decoder at its host (done when the host is first shared).
    pub fn bind(&mut self, host: Weak<Mutex<PciHost>>) {
        self.host = host;
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let (bus, devfn, reg) = decode(offset);
        // Accesses must not cross a 4 KiB function boundary; such reads float high.
        if usize::from(reg) + data.len() > 0x1000 || data.len() > 4 {
            data.fill(0xff);
            return;
        }
        match self.host.upgrade() {
            Some(h) => h
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_read(bus, devfn, reg, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let (bus, devfn, reg) = decode(offset);
        if usize::from(reg) + data.len() > 0x1000 || data.len() > 4 {
            return;
        }
        if let Some(h) = self.host.upgrade() {
            h.lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_write(bus, devfn, reg, data);
        }
    }
}
