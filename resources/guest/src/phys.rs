//! Access to guest-physical memory. The boot stub identity maps 0..4 GiB,
//! so a physical address below 4 GiB is also a valid virtual address.

/// End of the identity map built in boot.rs.
pub const MAPPED_END: u64 = 1 << 32;

/// Returns whether `[addr, addr + len)` is non-null and inside the map.
pub fn in_range(addr: u64, len: u64) -> bool {
    addr != 0 && addr.checked_add(len).is_some_and(|end| end <= MAPPED_END)
}

/// Borrows `len` bytes of firmware-provided memory (start_info, command
/// line, ACPI tables), or `None` if the range is not mapped.
pub fn bytes(addr: u64, len: usize) -> Option<&'static [u8]> {
    if !in_range(addr, len as u64) {
        return None;
    }
    // SAFETY: the range is non-null and inside the identity map, so every
    // byte is readable at CPL 3 (unbacked addresses read as whatever the
    // VMM returns for MMIO, never fault). The VMM hands these structures
    // over read-only for the guest's lifetime and nothing in the guest
    // writes them (the image itself lies elsewhere), so the shared borrow
    // is not aliased by a mutation.
    Some(unsafe { core::slice::from_raw_parts(addr as usize as *const u8, len) })
}

/// 32-bit MMIO read (e.g. PCI ECAM). Returns `None` if `addr` is not mapped
/// or not 4-byte aligned.
pub fn mmio_read32(addr: u64) -> Option<u32> {
    if !in_range(addr, 4) || addr & 3 != 0 {
        return None;
    }
    // SAFETY: aligned, non-null and inside the identity map (checked
    // above); a volatile read is exactly one 32-bit access, as MMIO needs.
    Some(unsafe { core::ptr::read_volatile(addr as usize as *const u32) })
}

/// 8-bit MMIO write (e.g. an ACPI sleep control register). Returns
/// whether `addr` was mapped.
pub fn mmio_write8(addr: u64, value: u8) -> bool {
    if !in_range(addr, 1) {
        return false;
    }
    // SAFETY: non-null and inside the identity map (checked above). Only
    // device registers named by firmware tables are written this way, never
    // memory the Rust program uses.
    unsafe { core::ptr::write_volatile(addr as usize as *mut u8, value) };
    true
}

/// Little-endian field readers over firmware tables. Fields past the end of
/// the slice read as zero, which is also how ACPI treats fields missing from
/// older (shorter) table revisions.
pub fn le8(b: &[u8], off: usize) -> u8 {
    b.get(off).copied().unwrap_or(0)
}

pub fn le16(b: &[u8], off: usize) -> u16 {
    field(b, off).map_or(0, u16::from_le_bytes)
}

pub fn le32(b: &[u8], off: usize) -> u32 {
    field(b, off).map_or(0, u32::from_le_bytes)
}

pub fn le64(b: &[u8], off: usize) -> u64 {
    field(b, off).map_or(0, u64::from_le_bytes)
}

fn field<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}
