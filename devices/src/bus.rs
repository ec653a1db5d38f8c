//! An address-decoded bus (port I/O or MMIO): ranges mapped to devices.
//!
//! vCPU threads look up the device for each exit; the PCI layer remaps BARs and ECAM at run
//! time, so the range table sits behind a read-write lock and devices behind their own mutex.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device that answers reads and writes on a bus. `offset` is relative to the start of the
/// range it was mapped at; `data.len()` is the access size (1, 2, 4 or 8 bytes).
pub trait BusDevice: Send {
    /// Fill `data`; the default reads all-ones like an unclaimed bus.
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    /// Accept a write; the default ignores it.
    fn write(&mut self, _base: u64, _offset: u64, _data: &[u8]) {}
}

/// A device shared between the bus and its owner.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("range {base:#x}+{size:#x} is empty or wraps")]
    InvalidRange { base: u64, size: u64 },
    #[error("range {base:#x}+{size:#x} overlaps {other_base:#x}+{other_size:#x}")]
    Overlap {
        base: u64,
        size: u64,
        other_base: u64,
        other_size: u64,
    },
    #[error("nothing is mapped at {0:#x}")]
    NotMapped(u64),
}

pub type Result<T> = std::result::Result<T, BusError>;

#[derive(Clone)]
struct Mapping {
    size: u64,
    device: SharedDevice,
}

/// The bus: non-overlapping ranges keyed by base address.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Mapping>>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Map `device` at `[base, base + size)`.
    pub fn insert(&self, base: u64, size: u64, device: SharedDevice) -> Result<()> {
        if size == 0 || base.checked_add(size).is_none() {
            return Err(BusError::InvalidRange { base, size });
        }
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        if let Some((&other_base, other)) = ranges.range(..base + size).next_back() {
            if other_base + other.size > base {
                return Err(BusError::Overlap {
                    base,
                    size,
                    other_base,
                    other_size: other.size,
                });
            }
        }
        ranges.insert(base, Mapping { size, device });
        Ok(())
    }

    /// Unmap the range that starts at `base`.
    pub fn remove(&self, base: u64) -> Result<SharedDevice> {
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        ranges
            .remove(&base)
            .map(|m| m.device)
            .ok_or(BusError::NotMapped(base))
    }

    /// Unmap everything. Devices on a bus may refer back to the bus's owner (the PCI
    /// config ports hold the host, which holds the buses): clearing breaks those cycles so a
    /// machine that is torn down is freed.
    pub fn clear(&self) {
        let ranges = std::mem::take(&mut *self.ranges.write().unwrap_or_else(|e| e.into_inner()));
        // Dropped outside the lock: a device's Drop may use the bus.
        drop(ranges);
    }

    fn lookup(&self, addr: u64) -> Option<(u64, SharedDevice)> {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (&base, mapping) = ranges.range(..=addr).next_back()?;
        (addr - base < mapping.size).then(|| (base, mapping.device.clone()))
    }

    /// Dispatch a read; returns false (and leaves `data` alone) if nothing claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.lookup(addr) {
            Some((base, device)) => {
                let mut device = device.lock().unwrap_or_else(|e| e.into_inner());
                device.read(base, addr - base, data);
                true
            }
            None => false,
        }
    }

    /// Dispatch a write; returns false if nothing claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.lookup(addr) {
            Some((base, device)) => {
                let mut device = device.lock().unwrap_or_else(|e| e.into_inner());
                device.write(base, addr - base, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn dispatches_by_range_and_rejects_overlap() {
        let bus = Bus::new();
        let dev: SharedDevice = Arc::new(Mutex::new(Echo(0x10)));
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        assert!(matches!(
            bus.insert(0x3fc, 8, dev.clone()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0x3f0, 9, dev.clone()),
            Err(BusError::Overlap { .. })
        ));
        bus.insert(0x3f0, 8, dev).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b[0], 0x12);
        assert!(!bus.read(0x400, &mut b));
        assert!(bus.write(0x3f8, &[0x20]));
        bus.read(0x3f9, &mut b);
        assert_eq!(b[0], 0x21);
        bus.remove(0x3f8).unwrap();
        assert!(!bus.read(0x3f8, &mut b));
        assert_eq!(bus.remove(0x3f8).err(), Some(BusError::NotMapped(0x3f8)));
    }
}
