//! The KVM virtual machine: guest RAM registered with KVM, the in-kernel irqchip (PIC +
//! IOAPIC + LAPICs), PIT, and the GSI routing QEMU uses with an in-kernel irqchip, plus MSI
//! routes that irqfds signal ([`GsiRouter`]).

use crate::memory::{
    create_guest_memory, GuestMemory, KvmSlots, MemoryError, MemoryView, RamBacking, SharedView,
};
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irqchip, kvm_pit_config, CpuId, KvmIrqRouting, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
    KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use machine::MemoryMap;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The plan's region for KVM's EPT identity map page (first) and real-mode TSS (the three
/// pages after it); QEMU puts it just below the 4 GiB BIOS area.
const KVM_TSS_REGION: &str = "kvm-tss";
/// Where QEMU puts that region, for boards whose flat memory map has no regions (`none`).
const FLAT_BOARD_KVM_TSS: u64 = 0xfeff_c000;
const PAGE: u64 = 0x1000;
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
    /// The GSI routing table (irqchip pins and MSI routes for irqfds).
    pub gsi: Arc<GsiRouter>,
    pub memory: GuestMemory,
    /// The guest-physical address space (KVM's memslots and the VMM's accesses follow it).
    pub view: SharedView,
    pub supported_cpuid: CpuId,
}

impl KvmVm {
    /// A VM for `map`; `kept` is the RAM of the incarnation a reset replaced, reused when it
    /// has the map's RAM blocks (its contents survive the reset); `layers` are the host
    /// bridge's reset-state remapping, in the first memslots.
    pub fn new(
        kvm: &Kvm,
        map: &MemoryMap,
        ram: &RamBacking,
        kept: Option<GuestMemory>,
        layers: devices::chipset::memory_view::LayerSet,
    ) -> Result<Self> {
        let fd = kvm.create_vm().map_err(kvm_err("VM creation"))?;
        let tss_region = map
            .region(KVM_TSS_REGION)
            .map_or(FLAT_BOARD_KVM_TSS, |r| r.range.base);
        fd.set_tss_address((tss_region + PAGE) as usize)
            .map_err(kvm_err("TSS address"))?;
        fd.set_identity_map_address(tss_region)
            .map_err(kvm_err("identity map address"))?;

        let memory = match kept {
            Some(m) if crate::memory::has_blocks(&m, map) => m,
            _ => create_guest_memory(map, ram)?,
        };
        let fd = Arc::new(fd);
        // Every memslot comes from the machine's address-space view (RAM, and later the
        // chipset's remapping of it).
        let view = MemoryView::new(memory.clone(), fd.check_extension(Cap::ReadonlyMem), layers);
        KvmSlots::follow(fd.clone(), &view).map_err(kvm_err("memory slot registration"))?;
        // The irqchip after the memslots: creating it leaves a normal SRCU grace period
        // pending on the VM, and the next memslot change (an expedited grace period)
        // waits for it, 4-10 ms on our hosts, on the path to the first guest instruction.
        fd.create_irq_chip().map_err(kvm_err("irqchip creation"))?;
        if let Some(ioapic) = map.region(devices::pci::firmware::IOAPIC_REGION) {
            place_ioapic(&fd, ioapic.range.base)?;
        }
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(kvm_err("PIT creation"))?;
        let gsi = Arc::new(GsiRouter::new(fd.clone())?);
        let supported_cpuid = match supported_cpuid() {
            Some(c) => c.clone(),
            // Asked again for the error.
            None => kvm
                .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
                .map_err(kvm_err("supported CPUID query"))?,
        };
        Ok(Self {
            fd,
            gsi,
            memory,
            view,
            supported_cpuid,
        })
    }
}

/// Move the in-kernel IOAPIC's registers to `base` (the plan's), as QEMU's kvm_ioapic_put
/// does; KVM creates it at 0xfec00000.
fn place_ioapic(fd: &VmFd, base: u64) -> Result<()> {
    let mut chip = kvm_irqchip {
        chip_id: KVM_IRQCHIP_IOAPIC,
        ..Default::default()
    };
    fd.get_irqchip(&mut chip)
        .map_err(kvm_err("IOAPIC state query"))?;
    // SAFETY: KVM filled the `ioapic` member of the union, which chip_id selects.
    let ioapic = unsafe { &mut chip.chip.ioapic };
    if ioapic.base_address != base {
        ioapic.base_address = base;
        fd.set_irqchip(&chip).map_err(kvm_err("IOAPIC placement"))?;
    }
    Ok(())
}

/// KVM's supported CPUID, read once per process (it does not change while the process
/// runs; the ioctl costs about half a millisecond, which a reset's rebuild no longer pays).
/// None when /dev/kvm cannot be used.
pub fn supported_cpuid() -> Option<&'static CpuId> {
    static SUPPORTED: std::sync::OnceLock<Option<CpuId>> = std::sync::OnceLock::new();
    SUPPORTED
        .get_or_init(|| {
            Kvm::new()
                .ok()?
                .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
                .ok()
        })
        .as_ref()
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

fn set_gsi_routing(fd: &VmFd, routes: &[kvm_irq_routing_entry]) -> Result<()> {
    let table = KvmIrqRouting::from_entries(routes).map_err(|_| KvmVmError::Kvm {
        what: "GSI routing table",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    fd.set_gsi_routing(&table).map_err(kvm_err("GSI routing"))
}

/// First GSI for MSI routes, past the IOAPIC pins (QEMU's kvm_irqchip_get_virq does the same).
const FIRST_MSI_GSI: u32 = IOAPIC_PINS;
/// MSI routes at most: well below KVM_MAX_IRQ_ROUTES (4096) with the irqchip routes.
pub const MAX_MSI_ROUTES: usize = 1024;

/// The VM's whole GSI routing table. KVM_SET_GSI_ROUTING replaces the table, so every change
/// re-sends the irqchip routes with the current MSI routes.
pub struct GsiRouter {
    fd: Arc<VmFd>,
    msi: Mutex<BTreeMap<u32, (u64, u32)>>,
}

impl GsiRouter {
    /// The irqchip routes, no MSI route yet.
    pub fn new(fd: Arc<VmFd>) -> Result<Self> {
        set_gsi_routing(&fd, &default_routes())?;
        Ok(Self {
            fd,
            msi: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn vm(&self) -> &Arc<VmFd> {
        &self.fd
    }

    fn commit(&self, msi: &BTreeMap<u32, (u64, u32)>) -> Result<()> {
        let mut routes = default_routes();
        for (&gsi, &(address, data)) in msi {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = address as u32;
            e.u.msi.address_hi = (address >> 32) as u32;
            e.u.msi.data = data;
            routes.push(e);
        }
        set_gsi_routing(&self.fd, &routes)
    }

    /// Route a new GSI to the MSI message (address, data); returns the GSI.
    pub fn add_msi(&self, address: u64, data: u32) -> Result<u32> {
        let mut msi = self.msi.lock().unwrap_or_else(|e| e.into_inner());
        if msi.len() >= MAX_MSI_ROUTES {
            return Err(KvmVmError::Kvm {
                what: "MSI route allocation",
                source: kvm_ioctls::Error::new(libc::ENOSPC),
            });
        }
        // The lowest free GSI, so that freed ones are reused.
        let mut gsi = FIRST_MSI_GSI;
        for &used in msi.keys() {
            if used != gsi {
                break;
            }
            gsi += 1;
        }
        msi.insert(gsi, (address, data));
        if let Err(e) = self.commit(&msi) {
            msi.remove(&gsi);
            return Err(e);
        }
        Ok(gsi)
    }

    /// Drop the MSI route of `gsi`.
    pub fn remove_msi(&self, gsi: u32) {
        let mut msi = self.msi.lock().unwrap_or_else(|e| e.into_inner());
        if msi.remove(&gsi).is_some() {
            // Removing entries cannot fail for lack of room; the old table stays otherwise.
            let _ = self.commit(&msi);
        }
    }

    /// MSI routes in the table now.
    pub fn msi_routes(&self) -> usize {
        self.msi.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
