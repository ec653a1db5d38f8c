//! The `hotplug` test: the guest side of ACPI PCI hot-plug on the root bus, as Linux's
//! acpiphp does it but polled (the guest takes no interrupts): wait for the GPE0 bit the
//! VMM raises for PCI hot-plug, read which slot came up, assign the new function's BARs,
//! drive it (a virtio-blk writes and reads back a block), release it, then wait for the
//! eject request and eject the slot through the eject register, printing each step.

use crate::acpi;
use crate::cmdline::Cmdline;
use crate::pci::{self, BarKind, Bdf, Cf8, ConfigSpace, Function};
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

// PCIe slot registers (offsets in the PCIe capability) and bits.
const SLTCTL: u16 = 0x18;
const SLTSTA: u16 = 0x1a;
const SLTCTL_ENABLES: u32 = 0x0001 | 0x0008 | 0x0020; // ABPE, PDCE, HPIE
const SLTCTL_PIC: u32 = 0x0300;
const SLTCTL_PIC_ON: u32 = 0x0100;
const SLTCTL_PIC_OFF: u32 = 0x0300;
const SLTCTL_PCC: u32 = 0x0400;
const SLTSTA_ABP: u32 = 0x0001;
const SLTSTA_PDC: u32 = 0x0008;
const SLTSTA_EVENTS: u32 = 0x001f;

/// Where hot-plugged devices appear: the root bus (ACPI, `bsel` 0) or behind the root port
/// at device `port` of bus 0 (ACPI with the bus's `bsel`, or the port's own PCIe slot).
struct Target {
    port: Option<Bdf>,
    /// The PCIe capability of the port, for native hot-plug.
    native: Option<u16>,
    bsel: u32,
    bus: u8,
}

fn slot_regs(port: Bdf, cap: u16) -> (u32, u32) {
    let v = Cf8.read32(port, cap + SLTCTL);
    (v & 0xffff, v >> 16)
}

fn slot_write(port: Bdf, cap: u16, ctl: u32, sta_clear: u32) {
    Cf8.write32(port, cap + SLTCTL, (ctl & 0xffff) | (sta_clear << 16));
}

/// Waits for a slot event in `want` and acknowledges it; false on timeout.
fn wait_slot(port: Bdf, cap: u16, want: u32) -> bool {
    let mut deadline = Deadline::after_ms(WAIT_MS);
    loop {
        let (ctl, sta) = slot_regs(port, cap);
        if sta & want != 0 {
            slot_write(port, cap, ctl, sta & SLTSTA_EVENTS);
            return true;
        }
        if deadline.expired() {
            return false;
        }
        core::hint::spin_loop();
    }
}

/// The port forwards our BAR ranges, decodes and masters; for native hot-plug the slot is
/// powered on with its power indicator on, as pciehp leaves an empty slot it manages.
fn setup_port(t: &Target, mmio: u64, io: u64) {
    let Some(port) = t.port else { return };
    let cfg = &Cf8;
    // I/O base/limit (4 KiB granules) and memory base/limit (1 MiB granules), 16 MiB.
    let io_reg = cfg.read32(port, 0x1c) & 0xffff_0000;
    cfg.write32(
        port,
        0x1c,
        io_reg | ((io >> 8) as u32 & 0xf0) | (((io >> 8) as u32 & 0xf0) << 8),
    );
    let mem_base = (mmio >> 16) as u32 & 0xfff0;
    let mem_limit = ((mmio + 0xff_ffff) >> 16) as u32 & 0xfff0;
    cfg.write32(port, 0x20, mem_base | (mem_limit << 16));
    let command = cfg.read32(port, pci::REG_COMMAND) & 0xffff;
    cfg.write32(
        port,
        pci::REG_COMMAND,
        command | pci::COMMAND_IO | pci::COMMAND_MEM | pci::COMMAND_BUS_MASTER,
    );
    if let Some(cap) = t.native {
        let (ctl, sta) = slot_regs(port, cap);
        let ctl = (ctl & !(SLTCTL_PCC | SLTCTL_PIC)) | SLTCTL_PIC_ON | SLTCTL_ENABLES;
        slot_write(port, cap, ctl, sta & SLTSTA_EVENTS);
        println!("hotplug: slot powered on port={}", port);
    }
}

fn target(cmdline: &Cmdline<'_>) -> Option<Target> {
    let Some(dev) = cmdline
        .get(b"machina.hotplug-port")
        .map(|_| cmdline.get_u64(b"machina.hotplug-port", 0) as u8)
    else {
        return Some(Target {
            port: None,
            native: None,
            bsel: 0,
            bus: 0,
        });
    };
    let port = Bdf {
        bus: 0,
        dev,
        func: 0,
    };
    let bus = (Cf8.read32(port, 0x18) >> 8) as u8;
    let native = if cmdline.get(b"machina.hotplug") == Some(b"native") {
        Some(pci::capabilities(&Cf8, port).find(|&o| Cf8.read32(port, o) & 0xff == 0x10)?)
    } else {
        None
    };
    Some(Target {
        port: Some(port),
        native,
        bsel: cmdline.get_u64(b"machina.hotplug-bsel", 0) as u32,
        bus,
    })
}

pub fn run(cmdline: &Cmdline<'_>, rsdp_hint: u64) {
    let gpe0 = acpi::find_fadt(rsdp_hint)
        .and_then(|f| u16::try_from(f.gpe0).ok())
        .unwrap_or(0);
    let Some(t) = target(cmdline) else {
        println!("hotplug: no-slot-capability");
        return;
    };
    if t.native.is_none() && gpe0 == 0 {
        println!("hotplug: no-gpe0");
        return;
    }
    let base = cmdline.get_u64(b"machina.pcihp", 0xae00) as u16;
    let mut mmio = cmdline.get_u64(b"machina.hotplug-mmio", 0xfe00_0000);
    let mut io = cmdline.get_u64(b"machina.hotplug-io", 0xe000);
    let rounds = cmdline.get_u64(b"machina.hotplug-rounds", 1);
    setup_port(&t, mmio, io);
    println!(
        "hotplug: waiting gpe0=0x{:x} pcihp=0x{:x} bus={} mechanism={}",
        gpe0,
        base,
        t.bus,
        if t.native.is_some() { "native" } else { "acpi" }
    );
    for round in 0..rounds {
        let slot = match (t.port, t.native) {
            (Some(port), Some(cap)) => {
                if !wait_slot(port, cap, SLTSTA_PDC) {
                    println!("hotplug: timeout waiting for a device");
                    return;
                }
                println!(
                    "hotplug: event round={} presence-detect port={}",
                    round, port
                );
                0
            }
            _ => {
                if !wait_gpe(gpe0) {
                    println!("hotplug: timeout waiting for a device");
                    return;
                }
                outl(base + SELECT, t.bsel);
                let up = inl(base + UP);
                println!("hotplug: event round={} up=0x{:x}", round, up);
                if up == 0 {
                    println!("hotplug: nothing came up");
                    return;
                }
                up.trailing_zeros() as u8
            }
        };
        let bdf = Bdf {
            bus: t.bus,
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
        match (t.port, t.native) {
            (Some(port), Some(cap)) => {
                if !wait_slot(port, cap, SLTSTA_ABP) {
                    println!("hotplug: timeout waiting for the eject request");
                    return;
                }
                println!("hotplug: eject request attention-button port={}", port);
                // pciehp: power the slot off, indicator off; the device goes.
                let (ctl, _) = slot_regs(port, cap);
                slot_write(
                    port,
                    cap,
                    (ctl & !SLTCTL_PIC) | SLTCTL_PCC | SLTCTL_PIC_OFF,
                    0,
                );
                // Ready for the next device: power back on once presence is gone.
                wait_slot(port, cap, SLTSTA_PDC);
                let (ctl, _) = slot_regs(port, cap);
                slot_write(
                    port,
                    cap,
                    (ctl & !(SLTCTL_PCC | SLTCTL_PIC)) | SLTCTL_PIC_ON,
                    0,
                );
            }
            _ => {
                if !wait_gpe(gpe0) {
                    println!("hotplug: timeout waiting for the eject request");
                    return;
                }
                outl(base + SELECT, t.bsel);
                let down = inl(base + DOWN);
                println!("hotplug: eject request down=0x{:x}", down);
                outl(base + EJECT, 1 << slot);
            }
        }
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
