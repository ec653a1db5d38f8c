//! The `hotplug` test: the guest side of ACPI PCI hot-plug on the root bus, as Linux's
//! acpiphp does it but polled (the guest takes no interrupts): wait for the GPE0 bit the
//! VMM raises for PCI hot-plug, read which slot came up, assign the new function's BARs,
//! drive it (a virtio-blk writes and reads back a block), release it, then wait for the
//! eject request and eject the slot through the eject register, printing each step.

use crate::acpi;
use crate::cmdline::Cmdline;
use crate::pci::{self, Bdf, BarKind, Cf8, ConfigSpace, Function};
use crate::port::{inb, inl, outb, outl};
use crate::tsc::Deadline;

/// GPE0 status bit of PCI hot-plug events.
const GPE_PCI_HOTPLUG: u8 = 1 << 1;
const UP: u16 = 0x00;
const DOWN: u16 = 0x04;
const EJECT: u16 = 0x08;
const SELECT: u16 = 0x10;
/// How long to wait for each announcement (the test's QMP commands come within it).
const WAIT_MS: u64 = 120_000;

/// Waits for the hot-plug GPE and acknowledges it; false on timeout.
fn wait_gpe(gpe0: u16) -> bool {
    let mut deadline = Deadline::after_ms(WAIT_MS);
    while inb(gpe0) & GPE_PCI_HOTPLUG == 0 {
        if deadline.expired() {
            return false;
        }
        core::hint::spin_loop();
    }
    outb(gpe0, GPE_PCI_HOTPLUG);
    true
}

/// Gives every BAR of `f` an address from `mmio` / `io` (bump allocators, each BAR
/// aligned to its size) and prints it.
fn assign_bars(f: &Function, mmio: &mut u64, io: &mut u64) {
    let cfg = &Cf8;
    for bar in pci::bars(cfg, f, true).iter().flatten() {
        let (next, kind) = match bar.kind {
            BarKind::Io => (&mut *io, "io"),
            _ => (&mut *mmio, "mem"),
        };
        let size = bar.size.max(4);
        let addr = (*next + size - 1) & !(size - 1);
        *next = addr + size;
        let reg = pci::REG_BAR0 + 4 * bar.index as u16;
        cfg.write32(f.bdf, reg, addr as u32);
        if bar.kind == BarKind::Mem64 {
            cfg.write32(f.bdf, reg + 4, (addr >> 32) as u32);
        }
        println!(
            "hotplug: {} bar{} {} addr=0x{:x} size=0x{:x}",
            f.bdf, bar.index, kind, addr, bar.size
        );
    }
}

pub fn run(cmdline: &Cmdline<'_>, rsdp_hint: u64) {
    let Some(gpe0) = acpi::find_fadt(rsdp_hint)
        .and_then(|f| u16::try_from(f.gpe0).ok())
        .filter(|&p| p != 0)
    else {
        println!("hotplug: no-gpe0");
        return;
    };
    let base = cmdline.get_u64(b"machina.pcihp", 0xae00) as u16;
    let mut mmio = cmdline.get_u64(b"machina.hotplug-mmio", 0xfe00_0000);
    let mut io = cmdline.get_u64(b"machina.hotplug-io", 0xe000);
    let rounds = cmdline.get_u64(b"machina.hotplug-rounds", 1);
    println!("hotplug: waiting gpe0=0x{:x} pcihp=0x{:x}", gpe0, base);
    for round in 0..rounds {
        if !wait_gpe(gpe0) {
            println!("hotplug: timeout waiting for a device");
            return;
        }
        outl(base + SELECT, 0);
        let up = inl(base + UP);
        println!("hotplug: event round={} up=0x{:x}", round, up);
        if up == 0 {
            println!("hotplug: nothing came up");
            return;
        }
        let slot = up.trailing_zeros() as u8;
        let bdf = Bdf {
            bus: 0,
            dev: slot,
            func: 0,
        };
        let cfg = &Cf8;
        let f = Function {
            bdf,
            id: cfg.read32(bdf, 0),
            class_rev: cfg.read32(bdf, 8),
            hdr: (cfg.read32(bdf, 0x0c) >> 16) as u8,
            bridge: None,
        };
        println!(
            "hotplug: found {} vendor=0x{:04x} device=0x{:04x}",
            bdf,
            f.vendor(),
            f.device()
        );
        assign_bars(&f, &mut mmio, &mut io);
        match crate::virtio::drive_modern(&f, round + 1) {
            Some(Ok(())) => println!("hotplug: {} driver result=ok", bdf),
            Some(Err(reason)) => println!("hotplug: {} driver result=error reason={}", bdf, reason),
            None => println!("hotplug: {} driver result=skipped", bdf),
        }
        // Released: no decoding, no bus mastering.
        cfg.write32(bdf, pci::REG_COMMAND, 0);
        println!("hotplug: released {}", bdf);
        if !wait_gpe(gpe0) {
            println!("hotplug: timeout waiting for the eject request");
            return;
        }
        let down = inl(base + DOWN);
        println!("hotplug: eject request down=0x{:x}", down);
        outl(base + EJECT, 1 << slot);
        // The VMM completes the eject on its own thread: poll the slot, bounded.
        let mut deadline = Deadline::after_ms(5000);
        let mut gone = false;
        while !gone && !deadline.expired() {
            gone = cfg.read32(bdf, 0) & 0xffff == 0xffff;
        }
        println!(
            "hotplug: ejected slot={} {}",
            slot,
            if gone { "gone" } else { "still-there" }
        );
    }
}
