//! Flat boot GDT entries and the matching KVM segment registers.

use kvm_bindings::kvm_segment;

/// A GDT descriptor from access/flags (`0xFA0AA` style: flags nibble << 12 | access byte),
/// base and limit, in the x86 packed layout.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The hidden part of a segment register that loading `entry` from slot `index` would give.
pub fn segment_from_entry(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let mut limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let granularity = ((entry >> 55) & 1) as u8;
    if granularity == 1 {
        limit = (limit << 12) | 0xfff;
    }
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// GDT for a 64-bit Linux entry: null, code64, data, TSS.
pub const GDT_LONG_MODE: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// GDT for a PVH entry (32-bit protected mode): null, code32, data, TSS. The TSS keeps the
/// x86 reset state's base 0 / limit 0xffff (what a guest inherits from firmware under QEMU):
/// on PVM hosts a CPL 3 guest's port I/O is checked against the TSS I/O bitmap, and a
/// 0x67-byte TSS would deny every port.
pub const GDT_PVH: [u64; 4] = [
    0,
    gdt_entry(0xc09b, 0, 0xffff_ffff),
    gdt_entry(0xc093, 0, 0xffff_ffff),
    gdt_entry(0x008b, 0, 0xffff),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_segments_decode() {
        assert_eq!(GDT_LONG_MODE[1], 0x00af_9b00_0000_ffff);
        assert_eq!(GDT_PVH[1], 0x00cf_9b00_0000_ffff);
        let cs = segment_from_entry(GDT_LONG_MODE[1], 1);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.type_, cs.present),
            (8, 1, 0, 0xb, 1)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment_from_entry(GDT_PVH[2], 2);
        assert_eq!((ds.selector, ds.db, ds.type_, ds.s), (0x10, 1, 3, 1));
    }
}
