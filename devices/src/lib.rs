//! Device models: the address-decoded bus, PCI core and chipsets, bridges, legacy devices.

pub mod aml;
pub mod blkdebug;
pub mod bus;
pub mod chipset;
pub mod e1000e;
pub mod ide;
pub mod kinds;
pub mod legacy;
pub mod lifecycle;
pub mod logging;
pub mod pci;
pub mod pflash;
pub mod timer;
pub mod virtio;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// A device's lock: a thread that panicked holding it leaves the device usable (its state
/// is plain data), so the poison is ignored rather than spread to every later access.
pub(crate) fn lock<T: ?Sized>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
