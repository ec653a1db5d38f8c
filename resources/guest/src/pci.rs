//! PCI configuration space: the `pci-scan` test (legacy 0xCF8/0xCFC
//! mechanism) and the `ecam` test (memory-mapped config space from MCFG).

use crate::acpi;
use crate::phys;
use crate::port::{inl, outl};

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;
const HEADER_TYPE_MULTIFUNCTION: u8 = 0x80;
const HEADER_TYPE_BRIDGE: u8 = 1;

/// Reads a config dword through CF8/CFC (mechanism #1).
pub fn read32(bus: u8, dev: u8, func: u8, reg: u8) -> u32 {
    let addr = 0x8000_0000
        | u32::from(bus) << 16
        | u32::from(dev) << 11
        | u32::from(func) << 8
        | u32::from(reg & 0xfc);
    outl(CONFIG_ADDRESS, addr);
    inl(CONFIG_DATA)
}

/// The `pci-scan` test: depth-first walk from bus 0 through PCI-PCI
/// bridges, in devfn order, each bus at most once.
pub fn scan() {
    let mut visited = [false; 256];
    // Explicit DFS stack of (bus, next devfn to probe): a deep bridge chain
    // must not exhaust the 64 KiB stack, and at most 256 buses can be on it.
    let mut stack = [(0u8, 0u16); 256];
    let mut depth = 1;
    visited[0] = true;
    let mut buses = 1;
    let mut functions = 0;

    while depth > 0 {
        let (bus, devfn) = stack[depth - 1];
        if devfn >= 256 {
            depth -= 1;
            continue;
        }
        let (dev, func) = ((devfn >> 3) as u8, (devfn & 7) as u8);
        // Default: next function; skipping the rest of the slot is decided
        // below once function 0's header type is known.
        stack[depth - 1].1 = devfn + 1;

        let id = read32(bus, dev, func, 0x00);
        if id & 0xffff == 0xffff {
            if func == 0 {
                stack[depth - 1].1 = devfn + 8; // empty slot
            }
            continue;
        }
        let class_rev = read32(bus, dev, func, 0x08);
        let hdr = (read32(bus, dev, func, 0x0c) >> 16) as u8;
        functions += 1;
        println!(
            "pci: {:02x}:{:02x}.{} {:04x}:{:04x} class={:06x} rev={:02x} hdr={:02x}",
            bus,
            dev,
            func,
            id & 0xffff,
            id >> 16,
            class_rev >> 8,
            class_rev & 0xff,
            hdr
        );
        if func == 0 && hdr & HEADER_TYPE_MULTIFUNCTION == 0 {
            stack[depth - 1].1 = devfn + 8; // single-function device
        }

        if hdr & !HEADER_TYPE_MULTIFUNCTION == HEADER_TYPE_BRIDGE {
            let buses_reg = read32(bus, dev, func, 0x18);
            let secondary = (buses_reg >> 8) as u8;
            let subordinate = (buses_reg >> 16) as u8;
            println!(
                "bridge: {:02x}:{:02x}.{} secondary={:02x} subordinate={:02x}",
                bus, dev, func, secondary, subordinate
            );
            let seen = &mut visited[usize::from(secondary)];
            if secondary != 0 && !*seen && depth < stack.len() {
                *seen = true;
                buses += 1;
                stack[depth] = (secondary, 0);
                depth += 1;
            }
        }
    }
    println!("pci-scan: done functions={} buses={}", functions, buses);
}

/// The `ecam` test: reads 00:00.0's vendor/device ID through the ECAM
/// window of PCI segment 0 and compares it with the CF8/CFC read.
pub fn ecam_test(rsdp_hint: u64) {
    let Some(mcfg) = acpi::find_table(rsdp_hint, b"MCFG") else {
        println!("ecam: no-mcfg");
        return;
    };
    let Some(entry) = acpi::mcfg_entries(&mcfg).find(|e| e.segment == 0 && e.bus_start == 0) else {
        println!("ecam: no-segment0-bus0");
        return;
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
