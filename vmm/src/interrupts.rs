//! KVM implementations of the device crate's interrupt and notification seams: INTx lines
//! as in-kernel irqchip GSI levels, MSI/MSI-X messages through irqfds on GSI routes
//! (KVM_SIGNAL_MSI for the first message of a route), queue notifications as ioeventfds.

use devices::pci::interrupt::{IntxSink, MsiSink};
use devices::virtio::{IoEvent, IoEventRegistrar, IoEventSpace};
use kvm_bindings::kvm_msi;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

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

/// Queue notifications as KVM ioeventfds (KVM_IOEVENTFD): a guest write to a notify address
/// signals the queue's EventFd inside KVM, without an exit to the VMM.
pub struct KvmIoEvents(pub Arc<VmFd>);

fn ioevent_call(
    event: &IoEvent,
    assign: bool,
    vm: &VmFd,
    fd: &EventFd,
) -> std::result::Result<(), kvm_ioctls::Error> {
    let addr = match event.space {
        IoEventSpace::Pio => IoEventAddress::Pio(event.addr),
        IoEventSpace::Mmio => IoEventAddress::Mmio(event.addr),
    };
    // The datamatch type's size is the access length KVM matches.
    macro_rules! call {
        ($d:expr) => {
            if assign {
                vm.register_ioevent(fd, &addr, $d)
            } else {
                vm.unregister_ioevent(fd, &addr, $d)
            }
        };
    }
    match (event.len, event.datamatch) {
        (0, None) => call!(NoDatamatch),
        (1, Some(d)) => call!(d as u8),
        (2, Some(d)) => call!(d as u16),
        (4, Some(d)) => call!(d as u32),
        (8, Some(d)) => call!(d),
        _ => Err(kvm_ioctls::Error::new(libc::EINVAL)),
    }
}

impl IoEventRegistrar for KvmIoEvents {
    fn register(&self, event: &IoEvent, fd: &EventFd) -> std::io::Result<()> {
        ioevent_call(event, true, &self.0, fd)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    fn unregister(&self, event: &IoEvent, fd: &EventFd) -> std::io::Result<()> {
        ioevent_call(event, false, &self.0, fd)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}
