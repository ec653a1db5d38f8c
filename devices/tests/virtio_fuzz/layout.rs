//! Guest memory layout and canaries.

use crate::*;

/// Region A: [page zero][rings of queues 0..8][indirect tables][canary][data]. Region B
/// (when present): [canary][data]. Canaries sit below data areas so that buffers in the
/// data areas never overlap them by accident; page zero is left to buffers at address 0.
pub(crate) const RINGS: u64 = 0x1000;
pub(crate) const RING_SLOT: u64 = 0x4000;
pub(crate) const MAX_RING_SLOTS: u64 = 8;
pub(crate) const INDIRECT: (u64, u64) = (0x2_1000, 0x2_9000);
pub(crate) const CANARY_MID: (u64, u64) = (0x2_9000, 0x3_0000);
pub(crate) const DATA: (u64, u64) = (0x3_0000, A_SIZE);
pub(crate) const CANARY_B: (u64, u64) = (B_BASE, B_BASE + 0x1000);
pub(crate) const DATA_B: (u64, u64) = (B_BASE + 0x1000, MEM_END);

pub(crate) fn guest_canaries(two_regions: bool) -> Vec<(u64, u64)> {
    let mut v = vec![CANARY_MID];
    if two_regions {
        v.push(CANARY_B);
    }
    v
}

/// The canary pattern for guest addresses `s..e`.
pub(crate) fn guest_canary(s: u64, e: u64) -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    let p = P.get_or_init(|| {
        (0..MEM_END)
            .map(|gpa| (gpa.wrapping_mul(0x9d) as u8) ^ 0x3c)
            .collect()
    });
    &p[s as usize..e as usize]
}

pub(crate) fn write_guest_canaries(mem: &GuestMemoryMmap, two_regions: bool) {
    for (s, e) in guest_canaries(two_regions) {
        mem.write_slice(guest_canary(s, e), GuestAddress(s))
            .unwrap();
    }
}

/// Check the canaries no descriptor or ring pointed at (`targeted[i]` for canary `i`).
pub(crate) fn check_guest_canaries(
    mem: &GuestMemoryMmap,
    two_regions: bool,
    targeted: &[bool],
) -> Result<(), String> {
    for (i, (s, e)) in guest_canaries(two_regions).into_iter().enumerate() {
        if targeted.get(i).copied().unwrap_or(false) {
            continue;
        }
        let mut got = vec![0u8; (e - s) as usize];
        mem.read_slice(&mut got, GuestAddress(s)).unwrap();
        let want = guest_canary(s, e);
        if got != want {
            let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
            return Err(format!(
                "guest canary byte {:#x} changed though no descriptor or ring points there",
                s + i as u64
            ));
        }
    }
    Ok(())
}

pub(crate) fn ring_slot(q: u16) -> (u64, u64, u64) {
    let base = RINGS + RING_SLOT * (u64::from(q) % MAX_RING_SLOTS);
    (base, base + 0x1000, base + 0x2000)
}
