//! Access to guest-physical memory. The boot stub identity maps 0..64 GiB,
//! so a physical address below 64 GiB is also a valid virtual address.

/// End of the identity map built in boot.rs (a multiple of 1 GiB).
pub const MAPPED_END: u64 = 64 << 30;
/// Firmware structures (start_info, command line, ACPI) are only read below
/// 4 GiB, as the boot contract promises; the rest of the map is for MMIO.
pub const TABLES_END: u64 = 1 << 32;

/// Returns whether `[addr, addr + len)` is non-null and below `end`.
fn below(addr: u64, len: u64, end: u64) -> bool {
    addr != 0 && addr.checked_add(len).is_some_and(|e| e <= end)
}

/// Returns whether `[addr, addr + len)` is non-null and inside the map.
pub fn in_range(addr: u64, len: u64) -> bool {
    below(addr, len, MAPPED_END)
}

/// Borrows `len` bytes of firmware-provided memory (start_info, command
/// line, ACPI tables), or `None` if the range is not below 4 GiB.
pub fn bytes(addr: u64, len: usize) -> Option<&'static [u8]> {
    if !below(addr, len as u64, TABLES_END) {
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

/// An integer type that MMIO can move in one access.
pub trait Mmio: Copy {}
impl Mmio for u8 {}
impl Mmio for u16 {}
impl Mmio for u32 {}

/// One MMIO read of `T` (e.g. PCI ECAM, a virtio register). Returns `None`
/// if `addr` is not mapped or not naturally aligned.
pub fn mmio_read<T: Mmio>(addr: u64) -> Option<T> {
    let size = core::mem::size_of::<T>() as u64;
    if !in_range(addr, size) || addr & (size - 1) != 0 {
        return None;
    }
    // SAFETY: aligned, non-null and inside the identity map (checked
    // above); a volatile read of u8/u16/u32 is exactly one access of that
    // width, as MMIO needs.
    Some(unsafe { core::ptr::read_volatile(addr as usize as *const T) })
}

/// One MMIO write of `T`. Returns whether `addr` was mapped and aligned.
pub fn mmio_write<T: Mmio>(addr: u64, value: T) -> bool {
    let size = core::mem::size_of::<T>() as u64;
    if !in_range(addr, size) || addr & (size - 1) != 0 {
        return false;
    }
    // SAFETY: aligned, non-null and inside the identity map (checked
    // above). Only device registers (addresses from firmware tables or PCI
    // BARs) are written this way, never memory the Rust program uses.
    unsafe { core::ptr::write_volatile(addr as usize as *mut T, value) };
    true
}

/// 32-bit MMIO read (e.g. PCI ECAM).
pub fn mmio_read32(addr: u64) -> Option<u32> {
    mmio_read(addr)
}

/// 8-bit MMIO write (e.g. an ACPI sleep control register). Returns
/// whether `addr` was mapped.
pub fn mmio_write8(addr: u64, value: u8) -> bool {
    mmio_write(addr, value)
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
