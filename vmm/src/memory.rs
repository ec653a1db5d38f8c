//! Guest RAM from the plan's memory map: RAM below the 32-bit PCI hole at 0 and the rest
//! from 4 GiB, as QEMU splits it for the machine type.

use machine::{MemoryMap, RegionKind};
use std::fs::File;
use std::sync::Arc;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// QEMU's text when the host refuses the RAM block.
    #[error("cannot set up guest memory '{id}': {reason}")]
    Allocate { id: String, reason: String },
    #[error("the memory map has no RAM")]
    NoRam,
    #[error("cannot map {size:#x} bytes of guest RAM at {base:#x} from memory backend '{backend}': {message}")]
    Backend {
        backend: String,
        base: u64,
        size: u64,
        message: String,
    },
}

/// Where guest RAM comes from: by default anonymous private memory; with `-machine
/// memory-backend=ID`, that backend's memory (its memfd or file, shared or private).
#[derive(Debug, Clone, Default)]
pub struct RamBacking {
    /// The backend's id (None: machina's default anonymous RAM).
    pub backend: Option<String>,
    /// The backend's size, which must be the guest's RAM size.
    pub size: u64,
    pub file: Option<Arc<File>>,
    pub share: bool,
    pub prealloc: bool,
    pub merge: bool,
    pub dump: bool,
}

/// Guest memory for the whole machine (no bitmap: no dirty tracking yet).
pub type GuestMemory = GuestMemoryMmap<()>;

/// The contiguous RAM blocks to back: adjacent RAM regions of the map are merged, and the
/// low reserved areas (EBDA, BIOS) stay backed by RAM as on a PC.
pub fn ram_blocks(map: &MemoryMap) -> Vec<(u64, u64)> {
    let mut blocks: Vec<(u64, u64)> = Vec::new();
    if map.ram_below_4g > 0 {
        blocks.push((0, map.ram_below_4g));
    }
    if map.ram_above_4g > 0 {
        let high = map
            .regions
            .iter()
            .find(|r| r.kind == RegionKind::Ram && r.range.base >= 1 << 32)
            .map(|r| r.range.base)
            .unwrap_or(1 << 32);
        blocks.push((high, map.ram_above_4g));
    }
    blocks
}

/// Whether `memory` consists of exactly the RAM blocks of `map`.
pub fn has_blocks(memory: &GuestMemory, map: &MemoryMap) -> bool {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let have: Vec<(u64, u64)> = memory.iter().map(|r| (r.start_addr().0, r.len())).collect();
    have == ram_blocks(map)
}

/// Allocate guest RAM for `map`: anonymous and private, or from a memory backend. The
/// anonymous mapping reserves swap space as QEMU's does (no MAP_NORESERVE), so the host's
/// overcommit policy refuses RAM it could never back (`-m 1T` on a small host) at start
/// instead of the guest dying later.
pub fn create_guest_memory(
    map: &MemoryMap,
    backing: &RamBacking,
) -> Result<GuestMemory, MemoryError> {
    let blocks = ram_blocks(map);
    if blocks.is_empty() {
        return Err(MemoryError::NoRam);
    }
    if let Some(backend) = &backing.backend {
        return backend_memory(&blocks, backend, backing);
    }
    let id = map.ram_id.clone().unwrap_or_else(|| "ram".to_string());
    let fail = |reason: String| MemoryError::Allocate {
        id: id.clone(),
        reason,
    };
    let mut regions = Vec::with_capacity(blocks.len());
    for &(base, size) in &blocks {
        let size = usize::try_from(size).map_err(|_| fail("Cannot allocate memory".into()))?;
        let mapping = MmapRegion::<()>::build(
            None,
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
        )
        .map_err(|e| match e {
            vm_memory::mmap::MmapRegionError::Mmap(io) => fail(os_reason(&io)),
            other => fail(other.to_string()),
        })?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(base))
            .ok_or_else(|| fail("Cannot allocate memory".into()))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| fail(e.to_string()))
}

/// An OS error as QEMU prints it (`strerror`, without Rust's "(os error N)").
fn os_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// The guest's physical address width: machina passes the host's CPUID leaf 0x80000008
/// through (KVM reports the host's), so the memory map must fit the host's.
pub fn host_phys_bits() -> Option<u8> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        let max_ext = __cpuid(0x8000_0000).eax;
        if max_ext >= 0x8000_0008 {
            return Some((__cpuid(0x8000_0008).eax & 0xff) as u8);
        }
    }
    None
}

/// RAM from a memory backend: the blocks are consecutive pieces of the backend (the low
/// block at offset 0, the high one after it), as QEMU maps its one RAM block.
fn backend_memory(
    blocks: &[(u64, u64)],
    backend: &str,
    backing: &RamBacking,
) -> Result<GuestMemory, MemoryError> {
    let total: u64 = blocks.iter().map(|b| b.1).sum();
    if total != backing.size {
        return Err(MemoryError::Backend {
            backend: backend.to_string(),
            base: blocks[0].0,
            size: total,
            message: "Machine memory size does not match the size of the memory backend".into(),
        });
    }
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for &(base, size) in blocks {
        let fail = |message: String| MemoryError::Backend {
            backend: backend.to_string(),
            base,
            size,
            message,
        };
        let sharing = if backing.share {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        let populate = if backing.prealloc {
            libc::MAP_POPULATE
        } else {
            0
        };
        let mut builder = MmapRegionBuilder::new(size as usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE);
        builder = match &backing.file {
            Some(file) => builder
                .with_mmap_flags(sharing | populate | libc::MAP_NORESERVE)
                .with_file_offset(FileOffset::from_arc(file.clone(), offset)),
            None => builder
                .with_mmap_flags(libc::MAP_ANONYMOUS | sharing | populate | libc::MAP_NORESERVE),
        };
        let region = builder.build().map_err(|e| fail(e.to_string()))?;
        let host = region.as_ptr();
        // QEMU's defaults are merge=on and dump=on: pages may be merged (KSM) and are part
        // of core dumps unless the backend says otherwise.
        let advice = [
            (backing.merge, libc::MADV_MERGEABLE),
            (!backing.dump, libc::MADV_DONTDUMP),
        ];
        for (wanted, advice) in advice {
            if wanted {
                // SAFETY: advice on the mapping just created, of exactly its length; a
                // failure (e.g. no KSM in this kernel) leaves the memory as it was.
                unsafe { libc::madvise(host.cast(), size as usize, advice) };
            }
        }
        regions.push(
            GuestRegionMmap::new(region, GuestAddress(base))
                .ok_or_else(|| fail("the region would overflow the guest address space".into()))?,
        );
        offset += size;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Backend {
        backend: backend.to_string(),
        base: blocks[0].0,
        size: blocks.iter().map(|b| b.1).sum(),
        message: e.to_string(),
    })
}

/// Resident memory of this process split into guest RAM and everything else (the VMM),
/// in KiB, from /proc/self/smaps. None if smaps cannot be read.
pub fn rss_split(memory: &GuestMemory) -> Option<(u64, u64)> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let guest: Vec<(u64, u64)> = memory
        .iter()
        .filter_map(|r| {
            let host = r.get_host_address(vm_memory::MemoryRegionAddress(0)).ok()? as u64;
            Some((host, host + r.len()))
        })
        .collect();
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let (mut vmm, mut guest_kib) = (0u64, 0u64);
    let mut in_guest = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((start, _)) = first.split_once('-') {
            if let Ok(start) = u64::from_str_radix(start, 16) {
                in_guest = guest.iter().any(|&(s, e)| start >= s && start < e);
                continue;
            }
        }
        if first == "Rss:" {
            let kib: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            if in_guest {
                guest_kib += kib;
            } else {
                vmm += kib;
            }
        }
    }
    Some((vmm, guest_kib))
}

/// Memslot updates made after a VM's first registration, in this process (MACHINA_TRACE
/// reports them at the first guest instruction: the first one after the irqchip exists
/// waits out an SRCU grace period, so a build makes none).
static SLOT_CHANGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn slot_changes() -> u64 {
    SLOT_CHANGES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether `current` already is the set `wanted` (nothing for KVM to do).
fn same_slots(current: &[(u32, SlotSpec)], wanted: &[SlotSpec]) -> bool {
    current.len() == wanted.len() && wanted.iter().all(|w| current.iter().any(|(_, s)| s == w))
}

/// KVM memslots following the machine's [`MemoryView`]: on every change of the view the
/// slots that no longer match are deleted and the new ones added (KVM refuses overlapping
/// slots, so deletions go first). Read-only slots (PAM RE-only, ROMs) use KVM_MEM_READONLY;
/// their writes exit to the VMM, which asks the view where they go.
pub struct KvmSlots {
    fd: Arc<kvm_ioctls::VmFd>,
    /// Registered slots by id. Each keeps its ROM image (if any) alive while KVM maps it;
    /// RAM lives as long as the view's guest memory, which outlives the VM fd.
    current: Vec<(u32, SlotSpec)>,
}

pub use devices::chipset::memory_view::{MemoryView, SharedView, SlotSpec};

impl KvmSlots {
    pub fn new(fd: Arc<kvm_ioctls::VmFd>) -> Self {
        Self {
            fd,
            current: Vec::new(),
        }
    }

    fn set(&self, id: u32, spec: &SlotSpec, size: u64) -> Result<(), kvm_ioctls::Error> {
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: id,
            guest_phys_addr: spec.gpa,
            memory_size: size,
            userspace_addr: spec.host,
            flags: if spec.readonly && size > 0 {
                kvm_bindings::KVM_MEM_READONLY
            } else {
                0
            },
        };
        // SAFETY: `spec.host` points into guest RAM (a live mapping of the view's guest
        // memory, which the VM keeps for as long as its fd exists) or into a ROM image that
        // `self.current` keeps alive until the slot is deleted; the view only produces
        // host ranges that lie wholly inside one such mapping. A zero size deletes.
        unsafe { self.fd.set_user_memory_region(region) }
    }

    /// Make KVM's slots those of `wanted`.
    pub fn apply(&mut self, wanted: &[SlotSpec]) -> Result<(), kvm_ioctls::Error> {
        let mut kept = Vec::with_capacity(wanted.len());
        let mut first_error = None;
        for (id, spec) in std::mem::take(&mut self.current) {
            if wanted.contains(&spec) {
                kept.push((id, spec));
            } else if let Err(e) = self.set(id, &spec, 0) {
                // Still mapped: keep it (and its ROM) so that nothing is freed under KVM.
                first_error.get_or_insert(e);
                kept.push((id, spec));
            }
        }
        self.current = kept;
        for spec in wanted {
            if self.current.iter().any(|(_, s)| s == spec) {
                continue;
            }
            let id = (0u32..)
                .find(|i| self.current.iter().all(|(j, _)| j != i))
                .unwrap_or(0);
            match self.set(id, spec, spec.size) {
                Ok(()) => self.current.push((id, spec.clone())),
                // The range is left to exits, which the view serves the same way.
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Register the view's slots now and follow its changes from then on.
    pub fn follow(fd: Arc<kvm_ioctls::VmFd>, view: &MemoryView) -> Result<(), kvm_ioctls::Error> {
        let mut slots = Self::new(fd);
        slots.apply(&view.slots())?;
        let slots = std::sync::Mutex::new(slots);
        view.set_listener(Box::new(move |wanted| {
            let mut s = slots.lock().unwrap_or_else(|e| e.into_inner());
            if !same_slots(&s.current, wanted) {
                SLOT_CHANGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if let Err(e) = s.apply(wanted) {
                log::error!("memory remapping: KVM memory slot update failed: {e}");
            }
        }));
        Ok(())
    }
}
