//! The `hotplug` test: the guest side of PCI hot-plug, polled (the guest takes no
//! interrupts), for each mechanism: ACPI PCI hot-plug as Linux's acpiphp (the GPE0 bit,
//! the UP/DOWN/eject registers), a PCIe port's slot as pciehp, or a bridge's standard
//! hot-plug controller as shpchp (`machina.hotplug=shpc`: the slot's latched events, slot
//! commands through BAR0). Wait for the announcement, find the new function, assign its
//! BARs, drive it (a virtio-blk writes and reads back a block, a virtio-net sends a frame
//! and waits for one, a virtio-rng is read), release it, then wait for the eject request
//! and eject the slot, printing each step.

use crate::acpi;
use crate::cmdline::Cmdline;
use crate::pci::{self, BarKind, Bdf, Cf8, ConfigSpace, Function};
use crate::phys::{mmio_read, mmio_write};
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

// SHPC registers (offsets in BAR0) and bits.
const SHPC_CMD: u64 = 0x14;
const SHPC_SERR_INT: u64 = 0x20;
const SHPC_CMD_DETECTED: u32 = 0x1_0000;
const SHPC_EVENT_PRESENCE: u32 = 0x01;
const SHPC_EVENT_BUTTON: u32 = 0x04;
/// shpchp's slot commands: enable with the power LED blinking and attention off, power
/// LED on, and disable with the power LED off and attention on.
const SHPC_SLOT_ENABLE: u16 = 0x3a;
const SHPC_PWR_ON: u16 = 0x04;
const SHPC_SLOT_DISABLE: u16 = 0x1f;

fn shpc_slot_reg(slot: u8) -> u64 {
    0x24 + (u64::from(slot) - 1) * 4
}

fn shpc_read(base: u64, off: u64) -> u32 {
    mmio_read::<u32>(base + off).unwrap_or(0)
}

/// Acknowledges the slot's latched events in `mask` (W1C), keeping its event masks.
fn shpc_clear(base: u64, slot: u8, mask: u32) {
    let reg = shpc_slot_reg(slot);
    let v = shpc_read(base, reg);
    mmio_write::<u32>(base + reg, (v & 0xff00_0000) | (mask & 0xff) << 16);
}

/// Waits for a slot whose latched events include `want`, acknowledges them and returns
/// the slot (1..=31); `only` restricts the wait to one slot.
fn shpc_wait(base: u64, want: u32, only: Option<u8>) -> Option<u8> {
    let mut deadline = Deadline::after_ms(WAIT_MS);
    loop {
        for slot in 1..=31u8 {
            if only.is_some_and(|o| o != slot) {
                continue;
            }
            let latch = shpc_read(base, shpc_slot_reg(slot)) >> 16 & 0xff;
            if latch & want != 0 {
                shpc_clear(base, slot, latch);
                return Some(slot);
            }
        }
        if deadline.expired() {
            return None;
        }
        core::hint::spin_loop();
    }
}

/// One slot command, waiting for its completion (which it acknowledges); false when the
/// controller reports it invalid.
fn shpc_command(base: u64, slot: u8, code: u16) -> bool {
    mmio_write::<u16>(base + SHPC_CMD, u16::from(slot) << 8 | code);
    let mut deadline = Deadline::after_ms(5000);
    while shpc_read(base, SHPC_SERR_INT) & SHPC_CMD_DETECTED == 0 {
        if deadline.expired() {
            return false;
        }
        core::hint::spin_loop();
    }
    mmio_write::<u32>(base + SHPC_SERR_INT, SHPC_CMD_DETECTED);
    shpc_read(base, SHPC_CMD) >> 16 & 0xf == 0
}

/// Bridges on bus 0 (in scan order) with the slots populated behind each.
struct Bridges {
    list: [(Bdf, u8); 64],
    present: [u32; 64],
    len: usize,
}

impl Bridges {
    /// Every type-1 function of bus 0, its secondary bus and which slots answer there.
    fn scan() -> Bridges {
        let mut b = Bridges {
            list: [(
                Bdf {
                    bus: 0,
                    dev: 0,
                    func: 0,
                },
                0,
            ); 64],
            present: [0; 64],
            len: 0,
        };
        for dev in 0..32u8 {
            for func in 0..8u8 {
                let bdf = Bdf { bus: 0, dev, func };
                if Cf8.read32(bdf, 0) & 0xffff == 0xffff {
                    continue;
                }
                if (Cf8.read32(bdf, 0x0c) >> 16) & 0x7f != 1 || b.len == b.list.len() {
                    continue;
                }
                let sec = (Cf8.read32(bdf, 0x18) >> 8) as u8;
                b.list[b.len] = (bdf, sec);
                b.present[b.len] = slots_present(sec);
                b.len += 1;
            }
        }
        b
    }

    /// The bridge behind which `slot` answers now but did not at the scan.
    fn newly_populated(&self, slot: u8) -> Option<(Bdf, u8)> {
        (0..self.len).find_map(|i| {
            let (bdf, sec) = self.list[i];
            let now = slots_present(sec) & (1 << slot) != 0;
            (now && self.present[i] & (1 << slot) == 0).then_some((bdf, sec))
        })
    }
}

fn slots_present(bus: u8) -> u32 {
    if bus == 0 {
        return 0;
    }
    (0..32u8)
        .filter(|&dev| Cf8.read32(Bdf { bus, dev, func: 0 }, 0) & 0xffff != 0xffff)
        .fold(0, |m, dev| m | 1 << dev)
}

/// Where hot-plugged devices appear: the root bus (ACPI, `bsel` 0) or behind the root port
/// at device `port` of bus 0 (ACPI with the bus's `bsel`, or the port's own PCIe slot).
struct Target {
    port: Option<Bdf>,
    /// The bridges between bus 0 and `port` (`machina.hotplug-down`: a switch's upstream
    /// port and its downstream port below a root port), outermost first.
    above: [Option<Bdf>; MAX_DOWN],
    /// The PCIe capability of the port, for native hot-plug.
    native: Option<u16>,
    /// The SHPC register file (the bridge's BAR0), for SHPC hot-plug.
    shpc: Option<u64>,
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

/// How many bridge levels `machina.hotplug-down` may descend.
const MAX_DOWN: usize = 4;

/// The port (and every bridge above it) forwards our BAR ranges, decodes and masters; for
/// native hot-plug the slot is powered on with its power indicator on, as pciehp leaves an
/// empty slot it manages.
fn setup_port(t: &Target, mmio: u64, io: u64) {
    let Some(port) = t.port else { return };
    for &b in t.above.iter().flatten() {
        open_bridge(b, mmio, io);
    }
    open_bridge(port, mmio, io);
    if let Some(cap) = t.native {
        let (ctl, sta) = slot_regs(port, cap);
        let ctl = (ctl & !(SLTCTL_PCC | SLTCTL_PIC)) | SLTCTL_PIC_ON | SLTCTL_ENABLES;
        slot_write(port, cap, ctl, sta & SLTSTA_EVENTS);
        println!("hotplug: slot powered on port={}", port);
    }
}

/// The bridge `port` forwards the 16 MiB at `mmio` and the 4 KiB at `io`, decodes and
/// masters.
fn open_bridge(port: Bdf, mmio: u64, io: u64) {
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
}

fn target(cmdline: &Cmdline<'_>) -> Option<Target> {
    let Some(dev) = cmdline
        .get(b"machina.hotplug-port")
        .map(|_| cmdline.get_u64(b"machina.hotplug-port", 0) as u8)
    else {
        return Some(Target {
            port: None,
            above: [None; MAX_DOWN],
            native: None,
            shpc: None,
            bsel: 0,
            bus: 0,
        });
    };
    let mut port = Bdf {
        bus: 0,
        dev,
        func: 0,
    };
    // `machina.hotplug-down=N`: the port is N levels further down, each time device 0 of
    // the bridge's secondary bus (root port, switch upstream port, downstream port).
    let mut above = [None; MAX_DOWN];
    let down = (cmdline.get_u64(b"machina.hotplug-down", 0) as usize).min(MAX_DOWN);
    for slot in above.iter_mut().take(down) {
        *slot = Some(port);
        port = Bdf {
            bus: (Cf8.read32(port, 0x18) >> 8) as u8,
            dev: 0,
            func: 0,
        };
    }
    let bus = (Cf8.read32(port, 0x18) >> 8) as u8;
    let native = if cmdline.get(b"machina.hotplug") == Some(b"native") {
        Some(pci::capabilities(&Cf8, port).find(|&o| Cf8.read32(port, o) & 0xff == 0x10)?)
    } else {
        None
    };
    let shpc = if cmdline.get(b"machina.hotplug") == Some(b"shpc") {
        let lo = u64::from(Cf8.read32(port, pci::REG_BAR0) & !0xf);
        let hi = u64::from(Cf8.read32(port, pci::REG_BAR0 + 4));
        Some(lo | hi << 32).filter(|&b| b != 0)
    } else {
        None
    };
    if cmdline.get(b"machina.hotplug") == Some(b"shpc") && shpc.is_none() {
        return None;
    }
    Some(Target {
        port: Some(port),
        above,
        native,
        shpc,
        bsel: cmdline.get_u64(b"machina.hotplug-bsel", 0) as u32,
        bus,
    })
}

/// What every round needs besides the target.
struct Ctx {
    gpe0: u16,
    /// The ACPI PCI hot-plug block (PIIX4 0xae00, ICH9 0xcc0).
    pcihp: u16,
    scan: bool,
    bridges: Bridges,
    mmio: u64,
    io: u64,
}

/// Waits for the announcement of round `round` by the target's mechanism and prepares the
/// slot the guest side would (SHPC: slot enabled; scan: the port found and set up); the
/// new function's slot, None on timeout or a failure it printed.
fn announce(t: &mut Target, ctx: &Ctx, round: u64) -> Option<u8> {
    let slot = match (t.port, t.native, t.shpc) {
        (_, _, Some(base)) => {
            let Some(slot) = shpc_wait(base, SHPC_EVENT_PRESENCE, None) else {
                println!("hotplug: timeout waiting for a device");
                return None;
            };
            println!("hotplug: event round={} shpc presence slot={}", round, slot);
            // shpchp's board_added: enable (power LED blinking), then power LED on.
            let ok =
                shpc_command(base, slot, SHPC_SLOT_ENABLE) && shpc_command(base, slot, SHPC_PWR_ON);
            println!("hotplug: shpc slot={} enabled={}", slot, ok);
            slot
        }
        (Some(port), Some(cap), _) => {
            if !wait_slot(port, cap, SLTSTA_PDC) {
                println!("hotplug: timeout waiting for a device");
                return None;
            }
            println!(
                "hotplug: event round={} presence-detect port={}",
                round, port
            );
            0
        }
        _ => {
            if !wait_gpe(ctx.gpe0) {
                println!("hotplug: timeout waiting for a device");
                return None;
            }
            let mut up = 0;
            for bsel in if ctx.scan { 0..32 } else { t.bsel..t.bsel + 1 } {
                outl(ctx.pcihp + SELECT, bsel);
                up = inl(ctx.pcihp + UP);
                if up != 0 {
                    t.bsel = bsel;
                    break;
                }
            }
            println!(
                "hotplug: event round={} bsel={} up=0x{:x}",
                round, t.bsel, up
            );
            if up == 0 {
                println!("hotplug: nothing came up");
                return None;
            }
            let slot = up.trailing_zeros() as u8;
            if ctx.scan {
                let Some((port, bus)) = ctx.bridges.newly_populated(slot) else {
                    println!("hotplug: no bridge gained slot {}", slot);
                    return None;
                };
                t.port = Some(port);
                t.bus = bus;
                setup_port(t, ctx.mmio, ctx.io);
                println!("hotplug: found behind port={} bus={}", port, bus);
            }
            slot
        }
    };
    Some(slot)
}

/// Waits for the eject request for `slot` and ejects it as the target's driver does; false
/// on timeout.
fn eject(t: &Target, ctx: &Ctx, slot: u8) -> bool {
    match (t.port, t.native, t.shpc) {
        (_, _, Some(base)) => {
            if shpc_wait(base, SHPC_EVENT_BUTTON, Some(slot)).is_none() {
                println!("hotplug: timeout waiting for the eject request");
                return false;
            }
            println!("hotplug: eject request attention-button slot={}", slot);
            // hpc_slot_disable; the slot's devices go. The MRL and presence events it
            // latches are acknowledged now, before the next device can come.
            let ok = shpc_command(base, slot, SHPC_SLOT_DISABLE);
            shpc_clear(base, slot, 0xff);
            println!("hotplug: shpc slot={} disabled={}", slot, ok);
        }
        (Some(port), Some(cap), _) => {
            if !wait_slot(port, cap, SLTSTA_ABP) {
                println!("hotplug: timeout waiting for the eject request");
                return false;
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
            if !wait_gpe(ctx.gpe0) {
                println!("hotplug: timeout waiting for the eject request");
                return false;
            }
            outl(ctx.pcihp + SELECT, t.bsel);
            let down = inl(ctx.pcihp + DOWN);
            println!("hotplug: eject request down=0x{:x}", down);
            outl(ctx.pcihp + EJECT, 1 << slot);
        }
    }
    true
}

pub fn run(cmdline: &Cmdline<'_>, rsdp_hint: u64) {
    let gpe0 = acpi::find_fadt(rsdp_hint)
        .and_then(|f| u16::try_from(f.gpe0).ok())
        .unwrap_or(0);
    let Some(mut t) = target(cmdline) else {
        println!("hotplug: no-slot-capability");
        return;
    };
    if t.native.is_none() && t.shpc.is_none() && gpe0 == 0 {
        println!("hotplug: no-gpe0");
        return;
    }
    let rounds = cmdline.get_u64(b"machina.hotplug-rounds", 1);
    let mut ctx = Ctx {
        gpe0,
        pcihp: cmdline.get_u64(b"machina.pcihp", 0xae00) as u16,
        // `machina.hotplug-scan`: the bus is not known in advance (a management tool picks
        // a free port): every BSEL is read after the event and the bridge whose bus gained
        // the slot is found by rescanning, as Linux's acpiphp rescans.
        scan: cmdline.get(b"machina.hotplug-scan").is_some(),
        bridges: Bridges::scan(),
        mmio: cmdline.get_u64(b"machina.hotplug-mmio", 0xfe00_0000),
        io: cmdline.get_u64(b"machina.hotplug-io", 0xe000),
    };
    setup_port(&t, ctx.mmio, ctx.io);
    if let Some(base) = t.shpc {
        println!("hotplug: shpc registers at 0x{:x}", base);
    }
    println!(
        "hotplug: waiting gpe0=0x{:x} pcihp=0x{:x} bus={} mechanism={}",
        gpe0,
        ctx.pcihp,
        t.bus,
        match (t.native, t.shpc) {
            (Some(_), _) => "native",
            (_, Some(_)) => "shpc",
            _ => "acpi",
        }
    );
    for round in 0..rounds {
        let Some(slot) = announce(&mut t, &ctx, round) else {
            return;
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
        assign_bars(&f, &mut ctx.mmio, &mut ctx.io);
        // Whatever virtio device came: its driver uses it (blk: a block written and read
        // back; net: a frame out, one back; rng: bytes read), printing its own line.
        match crate::virtio::drive_modern(&f, round + 1) {
            Some((kind, result)) => {
                let name = match kind {
                    1 => "virtio-net",
                    2 => "virtio-blk",
                    4 => "virtio-rng",
                    _ => "virtio",
                };
                match result {
                    Some(Ok(())) => println!("hotplug: {} {} driver result=ok", bdf, name),
                    Some(Err(reason)) => println!(
                        "hotplug: {} {} driver result=error reason={}",
                        bdf, name, reason
                    ),
                    None => println!("hotplug: {} {} driver result=skipped", bdf, name),
                }
            }
            None => println!("hotplug: {} driver result=skipped", bdf),
        }
        // Released: no decoding, no bus mastering.
        cfg.write32(bdf, pci::REG_COMMAND, 0);
        println!("hotplug: released {}", bdf);
        if !eject(&t, &ctx, slot) {
            return;
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
