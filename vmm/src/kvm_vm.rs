//! The KVM virtual machine: guest RAM registered with KVM, the in-kernel irqchip (PIC +
//! IOAPIC + LAPICs), PIT, and the GSI routing QEMU uses with an in-kernel irqchip.

use crate::memory::{create_guest_memory, GuestMemory, MemoryError, RamBacking};
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_pit_config, kvm_userspace_memory_region, CpuId, KvmIrqRouting,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
    KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use machine::MemoryMap;
use std::sync::Arc;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

/// KVM's real-mode TSS (3 pages) and EPT identity map page, placed as QEMU does, just
/// below the 4 GiB BIOS area; the plan reserves [0xfeffc000, 0xff000000).
const KVM_IDENTITY_MAP: u64 = 0xfeff_c000;
const KVM_TSS: usize = 0xfeff_d000;
const IOAPIC_PINS: u32 = 24;

#[derive(Debug, thiserror::Error)]
pub enum KvmVmError {
    #[error("cannot open /dev/kvm: {0} (is KVM available and accessible?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM {what} failed: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

type Result<T> = std::result::Result<T, KvmVmError>;

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmVmError {
    move |source| KvmVmError::Kvm { what, source }
}

pub struct KvmVm {
    /// Shared with the interrupt sinks the device models hold.
    pub fd: Arc<VmFd>,
    pub memory: GuestMemory,
    pub supported_cpuid: CpuId,
}

impl KvmVm {
    pub fn new(kvm: &Kvm, map: &MemoryMap, ram: &RamBacking) -> Result<Self> {
        let fd = kvm.create_vm().map_err(kvm_err("VM creation"))?;
        fd.set_tss_address(KVM_TSS)
            .map_err(kvm_err("TSS address"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP)
            .map_err(kvm_err("identity map address"))?;
        fd.create_irq_chip().map_err(kvm_err("irqchip creation"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(kvm_err("PIT creation"))?;
        set_gsi_routing(&fd)?;

        let memory = create_guest_memory(map, ram)?;
        for (slot, region) in memory.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| KvmVmError::Memory(MemoryError::NoRam))?;
            let mem_region = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mmap owned by `memory`, which this struct keeps
            // for as long as the VM fd (and so the memslot) exists.
            unsafe { fd.set_user_memory_region(mem_region) }
                .map_err(kvm_err("memory slot registration"))?;
        }
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("supported CPUID query"))?;
        Ok(Self {
            fd: Arc::new(fd),
            memory,
            supported_cpuid,
        })
    }
}

fn irqchip_route(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

/// QEMU's routing: ISA IRQs 0-15 to the PICs (except the cascade, 2), GSIs 0-23 to the IOAPIC
/// with GSI 0 (the PIT) on IOAPIC pin 2 to match the MADT interrupt source override.
pub fn default_routes() -> Vec<kvm_irq_routing_entry> {
    let mut routes = Vec::new();
    for irq in 0..16u32 {
        if irq == 2 {
            continue;
        }
        let chip = if irq < 8 {
            KVM_IRQCHIP_PIC_MASTER
        } else {
            KVM_IRQCHIP_PIC_SLAVE
        };
        routes.push(irqchip_route(irq, chip, irq % 8));
    }
    for gsi in 0..IOAPIC_PINS {
        let pin = if gsi == 0 { 2 } else { gsi };
        routes.push(irqchip_route(gsi, KVM_IRQCHIP_IOAPIC, pin));
    }
    routes
}

fn set_gsi_routing(fd: &VmFd) -> Result<()> {
    let routes = default_routes();
    let table = KvmIrqRouting::from_entries(&routes).map_err(|_| KvmVmError::Kvm {
        what: "GSI routing table",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    fd.set_gsi_routing(&table).map_err(kvm_err("GSI routing"))
}
