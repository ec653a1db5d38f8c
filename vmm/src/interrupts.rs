//! KVM implementations of the device crate's interrupt seams: INTx lines as in-kernel
//! irqchip GSI levels, MSI/MSI-X messages through KVM_SIGNAL_MSI.

use devices::pci::interrupt::{IntxSink, MsiSink};
use kvm_bindings::kvm_msi;
use kvm_ioctls::VmFd;
use std::sync::Arc;

/// Level-triggered GSIs on the in-kernel PIC/IOAPIC.
pub struct KvmIntx(pub Arc<VmFd>);

impl IntxSink for KvmIntx {
    fn set_level(&self, gsi: u32, level: bool) {
        // A GSI outside the routing table is a device-model bug, not a guest one; losing
        // the edge is the only safe reaction at interrupt time.
        let _ = self.0.set_irq_line(gsi, level);
    }
}

/// MSI writes injected directly; the in-kernel LAPICs decode address and data.
pub struct KvmMsi(pub Arc<VmFd>);

impl MsiSink for KvmMsi {
    fn send(&self, address: u64, data: u32) {
        let msi = kvm_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            ..Default::default()
        };
        // A message to a nonexistent APIC is dropped by KVM, as on hardware.
        let _ = self.0.signal_msi(msi);
    }
}
