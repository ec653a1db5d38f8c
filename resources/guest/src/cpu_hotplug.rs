//! The `cpu-hotplug` test: the guest side of ACPI CPU hot-plug (QEMU's modern interface,
//! what the DSDT's CSCN method does), polled: wait for GPE0 bit 2, ask the block for the
//! next CPU with an event, read its flags and APIC id, start it with INIT/SIPI through the
//! local APIC (its real-mode trampoline writes a marker), acknowledge the insertion; then
//! wait for the removal request and eject the CPU, printing each step.

use crate::acpi;
use crate::cmdline::Cmdline;
use crate::port::{inb, inl, outb, outl};
use crate::tsc::Deadline;

const GPE_CPU_HOTPLUG: u8 = 1 << 2;
const SELECTOR: u16 = 0;
const FLAGS: u16 = 4;
const COMMAND: u16 = 5;
const DATA: u16 = 8;
const FLAG_ENABLED: u8 = 1;
const FLAG_INSERTING: u8 = 2;
const FLAG_REMOVING: u8 = 4;
const FLAG_EJECT: u8 = 8;
const CMD_GET_NEXT_WITH_EVENT: u8 = 0;
const CMD_GET_CPU_ID: u8 = 3;
const WAIT_MS: u64 = 120_000;

/// The AP's real-mode start page (SIPI vector 0x70) and the byte it sets.
const TRAMPOLINE: u64 = 0x7_0000;
const MARKER: u64 = 0x7_0100;
const LAPIC: u64 = 0xfee0_0000;

fn wait_gpe(gpe0: u16) -> bool {
    let mut deadline = Deadline::after_ms(WAIT_MS);
    while inb(gpe0) & GPE_CPU_HOTPLUG == 0 {
        if deadline.expired() {
            return false;
        }
        core::hint::spin_loop();
    }
    outb(gpe0, GPE_CPU_HOTPLUG);
    true
}

/// CSCN's first step: the CPU with a pending event (selector and flags).
fn next_event(base: u16) -> (u32, u8) {
    outl(base + SELECTOR, 0);
    outb(base + COMMAND, CMD_GET_NEXT_WITH_EVENT);
    let sel = inl(base + DATA);
    outl(base + SELECTOR, sel);
    (sel, inb(base + FLAGS))
}

fn lapic_write(reg: u64, v: u32) {
    // SAFETY: the identity map covers the local APIC page; a 32-bit aligned register.
    unsafe { core::ptr::write_volatile((LAPIC + reg) as *mut u32, v) }
}

fn lapic_read(reg: u64) -> u32 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile((LAPIC + reg) as *const u32) }
}

/// INIT then SIPI to `apic_id`; true once its trampoline has run.
fn start_ap(apic_id: u32) -> bool {
    // mov byte [0x100], 1 (DS is 0x7000 after SIPI: CS:IP = 0x7000:0, and the reset DS
    // base is 0, so use a CS override); then cli; hlt; jmp $-1.
    let code: [u8; 10] = [0x2e, 0xc6, 0x06, 0x00, 0x01, 0x01, 0xfa, 0xf4, 0xeb, 0xfd];
    // SAFETY: low memory below the guest image, unused by the guest and its tables.
    unsafe {
        core::ptr::write_volatile(MARKER as *mut u8, 0);
        for (i, b) in code.iter().enumerate() {
            core::ptr::write_volatile((TRAMPOLINE + i as u64) as *mut u8, *b);
        }
    }
    // Software-enable the local APIC (spurious vector 0xff).
    lapic_write(0xf0, lapic_read(0xf0) | 0x1ff);
    lapic_write(0x310, apic_id << 24);
    lapic_write(0x300, 0x0000_4500); // INIT, assert
    lapic_write(0x310, apic_id << 24);
    lapic_write(0x300, 0x0000_4600 | (TRAMPOLINE >> 12) as u32); // SIPI
    let mut deadline = Deadline::after_ms(WAIT_MS);
    loop {
        // SAFETY: the marker byte written above.
        if unsafe { core::ptr::read_volatile(MARKER as *const u8) } == 1 {
            return true;
        }
        if deadline.expired() {
            return false;
        }
        core::hint::spin_loop();
    }
}

pub fn run(cmdline: &Cmdline<'_>, rsdp_hint: u64) {
    let gpe0 = acpi::find_fadt(rsdp_hint)
        .and_then(|f| u16::try_from(f.gpe0).ok())
        .unwrap_or(0);
    if gpe0 == 0 {
        println!("cpuhp: no-gpe0");
        return;
    }
    let base = cmdline.get_u64(b"machina.cpuhp", 0xaf00) as u16;
    let rounds = cmdline.get_u64(b"machina.cpuhp-rounds", 1);
    // What the DSDT's CPU hot-plug code does first: leave QEMU's legacy mode.
    outl(base, 0);
    println!("cpuhp: waiting gpe0=0x{:x} base=0x{:x}", gpe0, base);
    for round in 0..rounds {
        if !wait_gpe(gpe0) {
            println!("cpuhp: timeout waiting for a cpu");
            return;
        }
        let (sel, flags) = next_event(base);
        if flags & FLAG_INSERTING == 0 {
            println!("cpuhp: no insert event flags=0x{:x}", flags);
            return;
        }
        outb(base + COMMAND, CMD_GET_CPU_ID);
        let apic_id = inl(base + DATA);
        println!(
            "cpuhp: inserted round={} cpu={} apic-id={} enabled={}",
            round,
            sel,
            apic_id,
            flags & FLAG_ENABLED
        );
        outb(base + FLAGS, FLAG_INSERTING);
        let started = start_ap(apic_id);
        println!("cpuhp: ap apic-id={} started={}", apic_id, started as u8);
        if !wait_gpe(gpe0) {
            println!("cpuhp: timeout waiting for a remove request");
            return;
        }
        let (sel, flags) = next_event(base);
        if flags & FLAG_REMOVING == 0 {
            println!("cpuhp: no remove event flags=0x{:x}", flags);
            return;
        }
        println!("cpuhp: remove request cpu={}", sel);
        outb(base + FLAGS, FLAG_REMOVING);
        outb(base + FLAGS, FLAG_EJECT);
        println!(
            "cpuhp: ejected cpu={} enabled={}",
            sel,
            inb(base + FLAGS) & FLAG_ENABLED
        );
    }
}
