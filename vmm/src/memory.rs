//! Guest RAM from the plan's memory map: RAM below the 32-bit PCI hole at 0 and the rest
//! from 4 GiB, as QEMU splits it for the machine type.

use machine::{MemoryMap, RegionKind};
use vm_memory::{GuestAddress, GuestMemoryMmap};

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot allocate {size:#x} bytes of guest RAM at {base:#x}: {source}")]
    Allocate {
        base: u64,
        size: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("the memory map has no RAM")]
    NoRam,
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

/// Allocate anonymous, private guest RAM for `map`.
pub fn create_guest_memory(map: &MemoryMap) -> Result<GuestMemory, MemoryError> {
    let blocks = ram_blocks(map);
    if blocks.is_empty() {
        return Err(MemoryError::NoRam);
    }
    let ranges: Vec<(GuestAddress, usize)> = blocks
        .iter()
        .map(|&(base, size)| (GuestAddress(base), size as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Allocate {
        base: blocks[0].0,
        size: blocks.iter().map(|b| b.1).sum(),
        source,
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
