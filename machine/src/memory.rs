//! The guest-physical memory map: QEMU's RAM split around the 32-bit PCI hole, the ECAM
//! window, the 32/64-bit PCI holes and the fixed chipset/firmware regions, in address order.
//!
//! Hole placement follows SeaBIOS (the firmware machina imitates): on q35 the 32-bit hole
//! starts above ECAM at 0xc0000000, on i440fx at `BUILD_PCIMEM_START` 0xe0000000; either is
//! raised above low RAM if a large `max-ram-below-4g` pushes RAM further. It ends at the
//! IOAPIC (0xfec00000). The 64-bit hole starts at the 1 GiB boundary after RAM above 4 GiB.

use crate::board::MemoryLayoutDef;
use crate::options::ResolvedOptions;
use crate::plan::{MemoryMap, MemoryRegion, Range, RegionKind};

const GIB: u64 = 1 << 30;
const FOUR_GIB: u64 = 1 << 32;
const MIB: u64 = 1 << 20;
/// End of conventional memory below the EBDA.
const EBDA_START: u64 = 0x9fc00;
/// Start of extended memory.
const HIGH_MEMORY: u64 = 0x10_0000;

/// The RAM below/above 4 GiB for `ram_size` under `layout`.
pub fn split_ram(layout: &MemoryLayoutDef, ram_size: u64, opts: &ResolvedOptions) -> (u64, u64) {
    if layout.flat {
        return (ram_size, 0);
    }
    let max_below = opts
        .size("max-ram-below-4g")
        .or(layout.max_ram_below_4g_default.map(|n| n.0))
        .unwrap_or(FOUR_GIB);
    let threshold = layout.lowmem_threshold.map(|n| n.0).unwrap_or(max_below);
    let cap = layout.lowmem_cap.map(|n| n.0).unwrap_or(threshold);
    let lowmem = if ram_size >= threshold {
        cap
    } else {
        threshold
    };
    let lowmem = lowmem.min(max_below);
    let below = ram_size.min(lowmem);
    (below, ram_size - below)
}

/// The 32-bit PCI hole: from the board's start (raised to the MiB above RAM below 4 GiB) to
/// its end.
fn pci_hole32(layout: &MemoryLayoutDef, below: u64) -> Range {
    let end = layout.pci_hole32_end.map(|n| n.0).unwrap_or(0xfec0_0000);
    let start = layout
        .pci_hole32_start
        .map(|n| n.0)
        .unwrap_or(below)
        .max(below.div_ceil(MIB) * MIB)
        .min(end);
    Range {
        base: start,
        size: end - start,
    }
}

/// What follows RAM above 4 GiB, each at a 1 GiB boundary: the memory hot-plug area (when
/// `device_memory` is not 0), then the 64-bit PCI hole.
fn above_ram(layout: &MemoryLayoutDef, above: u64, device_memory: u64) -> (Option<Range>, Range) {
    let round_gib = |a: u64| a.div_ceil(GIB).saturating_mul(GIB);
    let ram_end = round_gib(FOUR_GIB.saturating_add(above));
    let device_memory = (device_memory > 0).then_some(Range {
        base: ram_end,
        size: device_memory,
    });
    let hole64_base = match device_memory {
        Some(d) => round_gib(d.base.saturating_add(d.size)),
        None => ram_end,
    };
    let pci_hole64 = Range {
        base: hole64_base,
        size: layout.pci_hole64_size.map(|n| n.0).unwrap_or(0),
    };
    (device_memory, pci_hole64)
}

/// Compute the memory map. `device_memory` is the size of QEMU's memory hot-plug area
/// (`maxmem` - `size`, plus 1 GiB per slot), placed at the 1 GiB boundary after RAM above
/// 4 GiB; the 64-bit PCI hole follows it. `flag` evaluates region conditions (e.g. `hpet`).
/// Sizes that do not fit in 64 bits saturate (the planner refuses them by phys-bits).
pub fn memory_map(
    layout: &MemoryLayoutDef,
    ram_size: u64,
    device_memory: u64,
    opts: &ResolvedOptions,
    flag: impl Fn(&str) -> bool,
) -> MemoryMap {
    let (below, above) = split_ram(layout, ram_size, opts);
    let mut regions = Vec::new();
    let mut push = |name: &str, kind: RegionKind, base: u64, size: u64| {
        if size > 0 {
            regions.push(MemoryRegion {
                name: name.to_string(),
                kind,
                range: Range { base, size },
            });
        }
    };
    if layout.flat {
        push("ram", RegionKind::Ram, 0, below);
        return MemoryMap {
            ram_size,
            ram_below_4g: below,
            ram_above_4g: 0,
            ecam: None,
            pci_hole32: Range { base: 0, size: 0 },
            pci_hole64: Range { base: 0, size: 0 },
            device_memory: None,
            ram_id: None,
            regions,
        };
    }

    push("ram-low", RegionKind::Ram, 0, below.min(EBDA_START));
    if below > HIGH_MEMORY {
        push("ram", RegionKind::Ram, HIGH_MEMORY, below - HIGH_MEMORY);
    }
    let ecam = layout.ecam.map(|(b, s)| Range {
        base: b.0,
        size: s.0,
    });
    if let Some(e) = ecam {
        push("ecam", RegionKind::Reserved, e.base, e.size);
    }
    let pci_hole32 = pci_hole32(layout, below);
    push(
        "pci-hole32",
        RegionKind::PciHole,
        pci_hole32.base,
        pci_hole32.size,
    );
    for r in &layout.regions {
        if r.when.eval(&flag) {
            push(&r.name, r.kind, r.base.0, r.size.0);
        }
    }
    if above > 0 {
        push("ram-high", RegionKind::Ram, FOUR_GIB, above);
    }
    let (device_memory, pci_hole64) = above_ram(layout, above, device_memory);
    push(
        "pci-hole64",
        RegionKind::PciHole,
        pci_hole64.base,
        pci_hole64.size,
    );
    regions.sort_by_key(|r| (r.range.base, r.range.size));
    MemoryMap {
        ram_size,
        ram_below_4g: below,
        ram_above_4g: above,
        ecam,
        pci_hole32,
        pci_hole64,
        device_memory,
        ram_id: None,
        regions,
    }
}
