//! PCI configuration space: the `pci-scan` test (legacy 0xCF8/0xCFC
//! mechanism), the `pci-scan-ecam` test (the same walk through ECAM found
//! via ACPI MCFG), the `ecam` test, BAR sizing, and the bus walk shared by
//! the virtio and config-fuzz tests.

use core::fmt;

use crate::acpi;
use crate::phys;
use crate::port::{inl, outl};

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;
const HEADER_TYPE_MULTIFUNCTION: u8 = 0x80;
const HEADER_TYPE_BRIDGE: u8 = 1;
const HEADER_TYPE_CARDBUS: u8 = 2;

pub const REG_COMMAND: u16 = 0x04;
pub const REG_BAR0: u16 = 0x10;
pub const REG_CAP_PTR: u16 = 0x34;
pub const COMMAND_IO: u32 = 1 << 0;
pub const COMMAND_MEM: u32 = 1 << 1;
pub const COMMAND_BUS_MASTER: u32 = 1 << 2;
/// Status register (high half of dword 0x04): capabilities list present.
const STATUS_CAP_LIST: u32 = 1 << 20;

/// Bus, device, function.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bdf {
    pub bus: u8,
    pub dev: u8,
    pub func: u8,
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.dev, self.func)
    }
}

/// A way to reach configuration space. Registers are dword-aligned dword
/// offsets (0..0xfc for CF8, 0..0xffc for ECAM).
pub trait ConfigSpace {
    fn read32(&self, bdf: Bdf, reg: u16) -> u32;
    fn write32(&self, bdf: Bdf, reg: u16, value: u32);
}

/// Configuration mechanism #1 (ports 0xCF8/0xCFC).
pub struct Cf8;

impl Cf8 {
    fn select(bdf: Bdf, reg: u16) {
        let addr = 0x8000_0000
            | u32::from(bdf.bus) << 16
            | u32::from(bdf.dev & 0x1f) << 11
            | u32::from(bdf.func & 7) << 8
            | u32::from(reg & 0xfc);
        outl(CONFIG_ADDRESS, addr);
    }
}

impl ConfigSpace for Cf8 {
    fn read32(&self, bdf: Bdf, reg: u16) -> u32 {
        Self::select(bdf, reg);
        inl(CONFIG_DATA)
    }

    fn write32(&self, bdf: Bdf, reg: u16, value: u32) {
        Self::select(bdf, reg);
        outl(CONFIG_DATA, value);
    }
}

/// Memory-mapped configuration space (one MCFG allocation). Buses outside
/// `bus_start..=bus_end` read as absent and ignore writes.
pub struct Ecam {
    pub base: u64,
    pub bus_start: u8,
    pub bus_end: u8,
}

impl Ecam {
    fn addr(&self, bdf: Bdf, reg: u16) -> Option<u64> {
        if !(self.bus_start..=self.bus_end).contains(&bdf.bus) {
            return None;
        }
        Some(
            self.base
                + (u64::from(bdf.bus - self.bus_start) << 20
                    | u64::from(bdf.dev & 0x1f) << 15
                    | u64::from(bdf.func & 7) << 12
                    | u64::from(reg & 0xffc)),
        )
    }
}

impl ConfigSpace for Ecam {
    fn read32(&self, bdf: Bdf, reg: u16) -> u32 {
        self.addr(bdf, reg)
            .and_then(phys::mmio_read::<u32>)
            .unwrap_or(u32::MAX)
    }

    fn write32(&self, bdf: Bdf, reg: u16, value: u32) {
        if let Some(addr) = self.addr(bdf, reg) {
            phys::mmio_write(addr, value);
        }
    }
}

/// Reads a config dword through CF8/CFC (mechanism #1).
pub fn read32(bus: u8, dev: u8, func: u8, reg: u8) -> u32 {
    Cf8.read32(Bdf { bus, dev, func }, u16::from(reg))
}

/// One function found by [`walk`].
pub struct Function {
    pub bdf: Bdf,
    /// Config dword 0x00: vendor ID (low half), device ID (high half).
    pub id: u32,
    /// Config dword 0x08: class code (bits 31:8) and revision.
    pub class_rev: u32,
    /// Header type byte, including the multifunction bit.
    pub hdr: u8,
    /// Secondary and subordinate bus numbers of a PCI-PCI bridge.
    pub bridge: Option<(u8, u8)>,
}

impl Function {
    pub fn vendor(&self) -> u16 {
        self.id as u16
    }

    pub fn device(&self) -> u16 {
        (self.id >> 16) as u16
    }

    /// Number of BAR registers of this header type.
    pub fn bar_count(&self) -> usize {
        match self.hdr & !HEADER_TYPE_MULTIFUNCTION {
            0 => 6,
            HEADER_TYPE_BRIDGE => 2,
            HEADER_TYPE_CARDBUS => 1,
            _ => 0,
        }
    }
}

/// Totals of a walk.
pub struct WalkStats {
    pub functions: u32,
    pub buses: u32,
}

/// Depth-first walk from bus 0 through PCI-PCI bridges, in devfn order,
/// each bus at most once. `visit` sees every present function before the
/// walk descends behind it (when it is a bridge).
pub fn walk(cfg: &impl ConfigSpace, mut visit: impl FnMut(&Function)) -> WalkStats {
    let mut visited = [false; 256];
    // Explicit DFS stack of (bus, next devfn to probe): a deep bridge chain
    // must not exhaust the 64 KiB stack, and at most 256 buses can be on it.
    let mut stack = [(0u8, 0u16); 256];
    let mut depth = 1;
    visited[0] = true;
    let mut stats = WalkStats {
        functions: 0,
        buses: 1,
    };

    while depth > 0 {
        let (bus, devfn) = stack[depth - 1];
        if devfn >= 256 {
            depth -= 1;
            continue;
        }
        let bdf = Bdf {
            bus,
            dev: (devfn >> 3) as u8,
            func: (devfn & 7) as u8,
        };
        // Default: next function; skipping the rest of the slot is decided
        // below once function 0's header type is known.
        stack[depth - 1].1 = devfn + 1;

        let id = cfg.read32(bdf, 0x00);
        if id & 0xffff == 0xffff {
            if bdf.func == 0 {
                stack[depth - 1].1 = devfn + 8; // empty slot
            }
            continue;
        }
        let class_rev = cfg.read32(bdf, 0x08);
        let hdr = (cfg.read32(bdf, 0x0c) >> 16) as u8;
        stats.functions += 1;
        if bdf.func == 0 && hdr & HEADER_TYPE_MULTIFUNCTION == 0 {
            stack[depth - 1].1 = devfn + 8; // single-function device
        }
        let bridge = (hdr & !HEADER_TYPE_MULTIFUNCTION == HEADER_TYPE_BRIDGE).then(|| {
            let buses_reg = cfg.read32(bdf, 0x18);
            ((buses_reg >> 8) as u8, (buses_reg >> 16) as u8)
        });
        let function = Function {
            bdf,
            id,
            class_rev,
            hdr,
            bridge,
        };
        visit(&function);

        if let Some((secondary, _)) = bridge {
            let seen = &mut visited[usize::from(secondary)];
            if secondary != 0 && !*seen && depth < stack.len() {
                *seen = true;
                stats.buses += 1;
                stack[depth] = (secondary, 0);
                depth += 1;
            }
        }
    }
    stats
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32,
    Mem64,
}

/// One implemented BAR. `size` is 0 when it was not probed.
#[derive(Clone, Copy)]
pub struct Bar {
    pub index: usize,
    pub kind: BarKind,
    pub prefetchable: bool,
    pub addr: u64,
    pub size: u64,
}

/// The BARs of `f`, read (and with `probe`, sized) in index order; a 64-bit
/// BAR takes two slots and is reported at the lower index. Sizing is the
/// standard all-ones probe with I/O and memory decoding disabled in the
/// command register meanwhile; every register is restored afterwards.
/// Without `probe`, a BAR reading as 0 is not reported (it cannot be told
/// from an unimplemented one).
pub fn bars(cfg: &impl ConfigSpace, f: &Function, probe: bool) -> [Option<Bar>; 6] {
    let bdf = f.bdf;
    let count = f.bar_count();
    let mut out = [None; 6];
    let command = cfg.read32(bdf, REG_COMMAND) & 0xffff;
    if probe {
        // The status half is written as 0: its bits are read-only or RW1C.
        cfg.write32(bdf, REG_COMMAND, command & !(COMMAND_IO | COMMAND_MEM));
    }
    let mut i = 0;
    while i < count {
        let reg = REG_BAR0 + 4 * i as u16;
        let orig = cfg.read32(bdf, reg);
        let probe_reg = |reg: u16, orig: u32| {
            cfg.write32(bdf, reg, u32::MAX);
            let mask = cfg.read32(bdf, reg);
            cfg.write32(bdf, reg, orig);
            mask
        };
        let bar = if orig & 1 == 1 {
            let addr = u64::from(orig & !3);
            let size = if probe {
                let mask = probe_reg(reg, orig) & !3;
                match mask {
                    0 => 0,
                    // A 16-bit I/O decoder reads the upper half as zero.
                    m if m & 0xffff_0000 == 0 => u64::from((!(m | 0xffff_0000)).wrapping_add(1)),
                    m => u64::from((!m).wrapping_add(1)),
                }
            } else {
                0
            };
            Bar {
                index: i,
                kind: BarKind::Io,
                prefetchable: false,
                addr,
                size,
            }
        } else if (orig >> 1) & 3 == 2 && i + 1 < count {
            let orig_hi = cfg.read32(bdf, reg + 4);
            let addr = u64::from(orig_hi) << 32 | u64::from(orig & !0xf);
            let size = if probe {
                let lo = probe_reg(reg, orig);
                let hi = probe_reg(reg + 4, orig_hi);
                let mask = u64::from(hi) << 32 | u64::from(lo & !0xf);
                if mask == 0 {
                    0
                } else {
                    (!mask).wrapping_add(1)
                }
            } else {
                0
            };
            Bar {
                index: i,
                kind: BarKind::Mem64,
                prefetchable: orig & 8 != 0,
                addr,
                size,
            }
        } else {
            let size = if probe {
                let mask = probe_reg(reg, orig) & !0xf;
                if mask == 0 {
                    0
                } else {
                    u64::from((!mask).wrapping_add(1))
                }
            } else {
                0
            };
            Bar {
                index: i,
                kind: BarKind::Mem32,
                prefetchable: orig & 8 != 0,
                addr: u64::from(orig & !0xf),
                size,
            }
        };
        i += if bar.kind == BarKind::Mem64 { 2 } else { 1 };
        let implemented = if probe { bar.size != 0 } else { orig != 0 };
        if implemented {
            out[bar.index] = Some(bar);
        }
    }
    if probe {
        cfg.write32(bdf, REG_COMMAND, command);
    }
    out
}

/// Config-space offsets of the capabilities of `bdf`, in list order (at
/// most 48, so a looping list ends).
pub fn capabilities(cfg: &impl ConfigSpace, bdf: Bdf) -> impl Iterator<Item = u16> + '_ {
    let mut next = if cfg.read32(bdf, REG_COMMAND) & STATUS_CAP_LIST != 0 {
        (cfg.read32(bdf, REG_CAP_PTR) & 0xfc) as u16
    } else {
        0
    };
    let mut left = 48;
    core::iter::from_fn(move || {
        if next < 0x40 || left == 0 {
            return None;
        }
        left -= 1;
        let here = next;
        next = ((cfg.read32(bdf, here) >> 8) & 0xfc) as u16;
        Some(here)
    })
}

fn print_function(f: &Function) {
    println!(
        "pci: {} {:04x}:{:04x} class={:06x} rev={:02x} hdr={:02x}",
        f.bdf,
        f.vendor(),
        f.device(),
        f.class_rev >> 8,
        f.class_rev & 0xff,
        f.hdr
    );
}

fn print_bars(cfg: &impl ConfigSpace, f: &Function) {
    for bar in bars(cfg, f, true).iter().flatten() {
        let kind = match bar.kind {
            BarKind::Io => "io",
            BarKind::Mem32 => "mem32",
            BarKind::Mem64 => "mem64",
        };
        println!(
            "bar: {} index={} kind={} pf={} addr=0x{:x} size=0x{:x}",
            f.bdf,
            bar.index,
            kind,
            u8::from(bar.prefetchable),
            bar.addr,
            bar.size
        );
    }
}

fn print_bridge(f: &Function) {
    if let Some((secondary, subordinate)) = f.bridge {
        println!(
            "bridge: {} secondary={:02x} subordinate={:02x}",
            f.bdf, secondary, subordinate
        );
    }
}

/// Prints `pci:` (then `bar:` lines when `with_bars`, then `bridge:`) for
/// every function of the walk.
fn scan_with(cfg: &impl ConfigSpace, with_bars: bool) -> WalkStats {
    walk(cfg, |f| {
        print_function(f);
        if with_bars {
            print_bars(cfg, f);
        }
        print_bridge(f);
    })
}

/// The `pci-scan` test; `with_bars` adds the `bar:` lines.
pub fn scan(with_bars: bool) {
    let stats = scan_with(&Cf8, with_bars);
    println!(
        "pci-scan: done functions={} buses={}",
        stats.functions, stats.buses
    );
}

/// The ECAM window of segment 0 that covers bus 0, from the MCFG.
enum EcamLookup {
    NoMcfg,
    NoSegment0Bus0,
    Found(Ecam),
}

fn find_ecam(rsdp_hint: u64) -> EcamLookup {
    let Some(mcfg) = acpi::find_table(rsdp_hint, b"MCFG") else {
        return EcamLookup::NoMcfg;
    };
    let found = acpi::mcfg_entries(&mcfg).find(|e| e.segment == 0 && e.bus_start == 0);
    match found {
        Some(e) => EcamLookup::Found(Ecam {
            base: e.base,
            bus_start: e.bus_start,
            bus_end: e.bus_end,
        }),
        None => EcamLookup::NoSegment0Bus0,
    }
}

/// The `pci-scan-ecam` test: `pci-scan` (with BARs) through the ECAM window
/// of segment 0 found via RSDP -> XSDT/RSDT -> MCFG.
pub fn scan_ecam(rsdp_hint: u64) {
    let ecam = match find_ecam(rsdp_hint) {
        EcamLookup::NoMcfg => return println!("pci-scan-ecam: no-mcfg"),
        EcamLookup::NoSegment0Bus0 => return println!("pci-scan-ecam: no-segment0-bus0"),
        EcamLookup::Found(ecam) => ecam,
    };
    let window = (u64::from(ecam.bus_end) + 1 - u64::from(ecam.bus_start)) << 20;
    if ecam.base & 0xfffff != 0 || !phys::in_range(ecam.base, window) {
        println!("pci-scan-ecam: unmapped base=0x{:x}", ecam.base);
        return;
    }
    let stats = scan_with(&ecam, true);
    println!(
        "pci-scan-ecam: done functions={} buses={}",
        stats.functions, stats.buses
    );
}

/// The `ecam` test: reads 00:00.0's vendor/device ID through the ECAM
/// window of PCI segment 0 and compares it with the CF8/CFC read.
pub fn ecam_test(rsdp_hint: u64) {
    let entry = match find_ecam(rsdp_hint) {
        EcamLookup::NoMcfg => return println!("ecam: no-mcfg"),
        EcamLookup::NoSegment0Bus0 => return println!("ecam: no-segment0-bus0"),
        EcamLookup::Found(ecam) => ecam,
    };
    // Bus 0, device 0, function 0, register 0: offset 0 of the window.
    let Some(id) = phys::mmio_read32(entry.base) else {
        println!("ecam: unmapped base=0x{:x}", entry.base);
        return;
    };
    println!("ecam: 00:00.0 {:04x}:{:04x}", id & 0xffff, id >> 16);
    let legacy = read32(0, 0, 0, 0);
    if legacy == id {
        println!("ecam: match=yes");
    } else {
        println!(
            "ecam: match=no cf8={:04x}:{:04x}",
            legacy & 0xffff,
            legacy >> 16
        );
    }
}
