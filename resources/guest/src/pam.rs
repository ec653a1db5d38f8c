//! The `pam` test: the BIOS area as machina's firmware step leaves it (like
//! SeaBIOS: 0xf0000-0xfffff read-only RAM, 0xc0000-0xeffff read-write RAM)
//! and one PAM segment of the host bridge switched through its RE/WE
//! settings, read and written from the guest. With KVM that exercises the
//! memslots the VMM derives from the chipset (read-only slots, exits to
//! the VMM for the PCI side). Nothing of this program lives below 1 MiB.

use crate::pci::{Bdf, Cf8, ConfigSpace};

const HOST: Bdf = Bdf {
    bus: 0,
    dev: 0,
    func: 0,
};
/// PAM segment 8 (16 KiB, PAM4's high nibble): clear of the ACPI tables at
/// 0xe0000 and of anything a VGA BIOS would use.
const SEGMENT: u64 = 0xdc000;
const SEGMENT_REG: u16 = 4;
const BIOS_AREA: u64 = 0xffff0;

fn peek(addr: u64) -> u8 {
    // SAFETY: `addr` is in 0xc0000..0x100000, inside the identity map and
    // unused by this program; a volatile byte read is one access that the
    // VMM (or RAM) answers.
    unsafe { core::ptr::read_volatile(addr as usize as *const u8) }
}

fn poke(addr: u64, value: u8) {
    // SAFETY: as in `peek`; nothing in this program refers to that memory.
    unsafe { core::ptr::write_volatile(addr as usize as *mut u8, value) }
}

/// Set PAM register `pam0 + index`'s high nibble (read-modify-write of the
/// aligned dword, the other PAM bytes written back unchanged).
fn set_high_nibble(pam0: u16, index: u16, attr: u8) {
    let reg = pam0 + index;
    let shift = u32::from(reg & 3) * 8;
    let dword = Cf8.read32(HOST, reg & !3);
    let byte = ((dword >> shift) as u8 & 0x0f) | (attr << 4);
    let dword = (dword & !(0xff << shift)) | (u32::from(byte) << shift);
    Cf8.write32(HOST, reg & !3, dword);
}

pub fn run() {
    let pam0 = match Cf8.read32(HOST, 0) >> 16 {
        0x1237 => 0x59,
        0x29c0 => 0x90,
        other => {
            println!("pam: unknown host bridge {:04x}", other);
            return;
        }
    };
    // The BIOS area is read-only: the write is lost.
    let before = peek(BIOS_AREA);
    poke(BIOS_AREA, !before);
    let bios_ro = peek(BIOS_AREA) == before;
    // RE|WE: plain RAM.
    poke(SEGMENT, 0xa5);
    let rw = peek(SEGMENT) == 0xa5;
    // Neither: the PCI side, where nothing answers (reads zero).
    set_high_nibble(pam0, SEGMENT_REG, 0);
    let off = peek(SEGMENT) == 0;
    // WE only: writes reach RAM, reads still the PCI side.
    set_high_nibble(pam0, SEGMENT_REG, 2);
    poke(SEGMENT, 0x5a);
    let we = peek(SEGMENT) == 0;
    // RE only: RAM holds what WE-only wrote; writes are lost.
    set_high_nibble(pam0, SEGMENT_REG, 1);
    let re = peek(SEGMENT) == 0x5a;
    poke(SEGMENT, 0x77);
    let re_ro = peek(SEGMENT) == 0x5a;
    set_high_nibble(pam0, SEGMENT_REG, 3);
    println!(
        "pam: bios-ro={} rw={} off={} we={} re={} re-ro={}",
        bios_ro as u8, rw as u8, off as u8, we as u8, re as u8, re_ro as u8
    );
}
