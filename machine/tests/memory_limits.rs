//! `-m size,slots,maxmem` and huge sizes: QEMU 7.2's alignment and refusals, and no memory
//! map that overflows (a huge `memory` from QMP used to wrap the map or panic).

use machine::{Catalog, PlanRequest};

fn plan(
    machine: &str,
    size: u64,
    slots: u64,
    max: Option<u64>,
    bits: Option<u8>,
) -> Result<machine::Plan, String> {
    let mut req = PlanRequest::new(machine);
    req.ram_size = size;
    req.ram_slots = slots;
    req.max_ram_size = max;
    req.phys_bits = bits;
    Catalog::builtin().plan(&req).map_err(|e| e.to_string())
}

const M: u64 = 1 << 20;
const G: u64 = 1 << 30;

#[test]
fn sizes_align_to_8k_as_qemu() {
    // query-memory-size-summary's base-memory on QEMU 7.2 for -m 3.9G, 1025K, 129k, 1b.
    for (given, aligned) in [
        (4187593113, 4187594752),
        (1025 << 10, 1056768),
        (129 << 10, 139264),
        (1, 8192),
    ] {
        for machine in ["q35", "pc"] {
            let p = plan(machine, given, 0, None, None).unwrap();
            assert_eq!(p.memory.ram_size, aligned, "{machine} {given}");
            assert_eq!(p.memory.ram_below_4g + p.memory.ram_above_4g, aligned);
            assert_eq!(p.memory.ram_id.as_deref(), Some("pc.ram"));
        }
    }
}

#[test]
fn qemu_refusals() {
    // (size, slots, maxmem, phys-bits, QEMU's text)
    type Row<'a> = (u64, u64, Option<u64>, Option<u8>, &'a str);
    let table: &[Row] = &[
        (256 * M, 0, Some(128 * M), None, "invalid value of maxmem: maximum memory size (0x8000000) must be at least the initial memory size (0x10000000)"),
        (256 * M, 1, Some(256 * M), None, "invalid value of maxmem: memory slots were specified but maximum memory size (0x10000000) is equal to the initial memory size (0x10000000)"),
        (256 * M, 0, Some(0), None, "invalid value of maxmem: maximum memory size (0x0) must be at least the initial memory size (0x10000000)"),
        (256 * M, 2, None, None, "slots specified but no max-size"),
        (256 * M, 300, Some(G), None, "unsupported amount of memory slots: 300"),
        (256 * M, u64::MAX, Some(G), None, "unsupported amount of memory slots: 18446744073709551615"),
        (256 * M, 2, Some(G + 1), None, "maximum memory size must by aligned to multiple of 4096 bytes"),
        // QEMU 7.2 under TCG (phys-bits 40, -cpu qemu64,vendor=GenuineIntel: an AMD vendor
        // moves RAM above 1 TiB) for -m 256,maxmem=1T,slots=2 on q35 (pc: 0x101ffffffff).
        (256 * M, 2, Some(1 << 40), Some(40), "Address space limit 0xffffffffff < 0x1097fffffff phys-bits too low (40)"),
        (u64::MAX, 0, None, None, "ram size too large"),
        (u64::MAX - 16 * G, 0, None, None, "Address space limit 0xfffffffffffff < "),
        (1 << 52, 0, None, None, "Address space limit 0xfffffffffffff < "),
    ];
    for &(size, slots, max, bits, want) in table {
        for machine in ["q35", "pc"] {
            let got = plan(machine, size, slots, max, bits)
                .map(|_| ())
                .unwrap_err();
            if want.contains("0x1097fffffff") && machine == "pc" {
                assert_eq!(
                    got,
                    "Address space limit 0xffffffffff < 0x101ffffffff phys-bits too low (40)"
                );
                continue;
            }
            if want.ends_with("< ") {
                // Sizes near 2^64: the end saturates; the refusal is what matters.
                assert!(
                    got.starts_with(want) && got.ends_with("phys-bits too low (52)"),
                    "{got}"
                );
                continue;
            }
            assert_eq!(got, want, "{machine} size={size} slots={slots} max={max:?}");
        }
    }
}

#[test]
fn hotplug_area_moves_the_64bit_hole() {
    let plain = plan("q35", 256 * M, 0, None, None).unwrap();
    let p = plan("q35", 256 * M, 2, Some(G), None).unwrap();
    let d = p.memory.device_memory.unwrap();
    // pc_get_device_memory_range: from 4 GiB (no RAM above), maxmem - size + 1 GiB a slot.
    assert_eq!((d.base, d.size), (4 * G, 768 * M + 2 * G));
    assert_eq!(p.memory.pci_hole64.base, 7 * G);
    assert_eq!(plain.memory.device_memory, None);
    assert_eq!(plain.memory.pci_hole64.base, 4 * G);
    // maxmem equal to size: no area.
    assert_eq!(
        plan("q35", 256 * M, 0, Some(256 * M), None)
            .unwrap()
            .memory
            .device_memory,
        None
    );
}
