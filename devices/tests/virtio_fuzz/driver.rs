//! Bringing a device up through config space and BARs, notifying, checking rounds.

use crate::*;

pub(crate) struct Up {
    pub(crate) modern: bool,
    /// Every ring sits in its standard slot with the size asked for.
    pub(crate) standard: bool,
    /// The driver did something QEMU treats as a device error during bring-up (the
    /// NEEDS_RESET bit it set is then overwritten by the driver's next status write).
    pub(crate) broken: bool,
    pub(crate) version1: bool,
    /// Rings the driver set up, by queue index.
    pub(crate) rings: Vec<(u16, Ring)>,
}

impl Up {
    pub(crate) fn ring(&self, q: u16) -> Option<Ring> {
        self.rings.iter().find(|(i, _)| *i == q).map(|(_, r)| *r)
    }

    /// A round on this bring-up can be checked against the model: a modern VERSION_1
    /// driver with standard rings, no device error, and nothing aimed at the canaries.
    pub(crate) fn healthy(&self, d: &mut Driver, g: &Gen) -> bool {
        self.modern
            && self.version1
            && self.standard
            && !self.broken
            && !d.needs_reset()
            && !g.any_targeted()
    }
}

/// Bring the device up through the modern interface, or the legacy one when `legacy`,
/// with random features and queue placements; `queues` are the queue indices to set up.
pub(crate) fn bring_up(d: &mut Driver, g: &mut Gen, queues: &[u16], legacy: bool) -> Up {
    let mut rings = Vec::new();
    if legacy {
        let host = d.bar_read(0, 0, 4) as u32;
        let feats = host & g.rng.next_u32();
        d.legacy_begin(feats);
        trace!("legacy bring-up, features {feats:#x}");
        for &q in queues {
            let (slot, _, _) = ring_slot(q);
            let pfn = match g.rng.below(20) {
                0..=16 => slot >> 12,
                17 | 18 => g.rng.range(1, (DATA.1 >> 12) - 1),
                _ => g
                    .rng
                    .choose(&[0u64, 0xffff_ffff, MEM_END >> 12, (A_SIZE >> 12) - 1]),
            };
            let size = d.legacy_queue(q, pfn as u32);
            if size == 0 {
                continue;
            }
            let r = Ring::legacy(size, pfn);
            note_rings(g, &r);
            zero_ring_headers(g, &r);
            trace!("queue {q}: legacy pfn {pfn:#x} size {size}");
            rings.push((q, r));
        }
        if !g.rng.one_in(20) {
            d.legacy_driver_ok();
        }
        return Up {
            standard: false,
            broken: false,
            modern: false,
            version1: false,
            rings,
        };
    }
    let mut broken = false;
    let mut standard = true;
    let offered = d.device_features();
    let mut feats = offered & g.rng.next_u64();
    if !g.rng.one_in(10) {
        feats |= features::VERSION_1;
    }
    if g.rng.one_in(20) {
        // Bits the device never offered are dropped.
        feats = g.rng.next_u64();
    }
    let st = d.modern_begin(feats);
    assert_ne!(st & status::FEATURES_OK, 0, "FEATURES_OK refused");
    assert_eq!(
        st & status::NEEDS_RESET,
        0,
        "reset did not clear NEEDS_RESET"
    );
    trace!("modern bring-up, features {feats:#x}");
    for &q in queues {
        let max = d.modern_queue_size(q);
        if max == 0 {
            continue;
        }
        let size = match g.rng.below(20) {
            0..=15 => max,
            16..=18 => 1 << g.rng.below(u64::from(max.trailing_zeros()) + 1),
            _ => g.rng.choose(&[0, 3, max.wrapping_mul(2), 0xffff, max - 1]),
        };
        let (sd, sa, su) = ring_slot(q);
        let placement = g.rng.below(20);
        standard &= placement <= 16;
        let (desc, avail, used) = match placement {
            0..=16 => (sd, sa, su),
            17 | 18 => (
                g.rng.range(DATA.0, DATA.1 - 0x1000) & !0xf,
                g.rng.range(DATA.0, DATA.1 - 0x1000) & !0x1,
                g.rng.range(DATA.0, DATA.1 - 0x1000) & !0x3,
            ),
            _ => (g.addr(16), g.addr(6), g.addr(6)),
        };
        d.modern_queue(q, size, desc, avail, used);
        if g.rng.one_in(30) {
            // QEMU: any value but 1 is a device error.
            let v = g.rng.below(4);
            d.common_w(cc::Q_ENABLE, v, 2);
            broken |= v != 1;
        }
        // What the device really holds (refused sizes/addresses keep the old values).
        let (size, desc, avail, used) = d.modern_queue_state(q);
        if size == 0 {
            continue;
        }
        let r = Ring::new(size, desc, avail, used);
        note_rings(g, &r);
        zero_ring_headers(g, &r);
        trace!("queue {q}: size {size} desc {desc:#x} avail {avail:#x} used {used:#x}");
        rings.push((q, r));
    }
    if g.rng.one_in(4) {
        enable_msix(d, g.rng);
    }
    if !g.rng.one_in(20) {
        d.modern_driver_ok();
    }
    trace!("bring-up done, broken {broken}, standard {standard}");
    Up {
        standard,
        broken,
        modern: true,
        version1: feats & features::VERSION_1 != 0,
        rings,
    }
}

/// A driver starts a queue with both ring indices at zero.
/// The rings written outside [`Gen::write`]: the device writes the used ring, and the
/// harness writes the avail ring through `Ring::stage`/`publish` (a ring placed across a
/// canary puts its entries there). Descriptors and buffers are noted as they are written.
fn note_rings(g: &mut Gen, r: &Ring) {
    g.note(r.used, r.used_bytes());
    g.note(r.avail, r.avail_bytes());
}

pub(crate) fn zero_ring_headers(g: &mut Gen, r: &Ring) {
    g.write(r.avail, &[0; 4]);
    g.write(r.used, &[0; 4]);
}

/// Program a couple of MSI-X vectors and turn MSI-X on.
pub(crate) fn enable_msix(d: &mut Driver, rng: &mut XorShift) {
    let Some(cap) = d.f.caps().msix else { return };
    for v in 0..2u64 {
        d.bar_write(1, 16 * v, 0xfee0_0000, 4);
        d.bar_write(1, 16 * v + 8, 0x40 + v, 4);
        d.bar_write(1, 16 * v + 12, 0, 4);
    }
    d.common_w(cc::MSIX, rng.below(3), 2);
    d.common_w(cc::Q_SELECT, 0, 2);
    d.common_w(cc::Q_MSIX, rng.below(3), 2);
    d.cfg_write(cap as u16 + 3, 0x80, 1);
}

pub(crate) fn notify(d: &mut Driver, up: &Up, q: u16) {
    if up.modern {
        d.notify_modern(q);
    } else {
        d.notify_legacy(q);
    }
}

/// Snapshot of each ring's used index.
pub(crate) fn used_indices(mem: &GuestMemoryMmap, up: &Up) -> Vec<u16> {
    up.rings.iter().map(|(_, r)| r.used_idx(mem)).collect()
}

/// After a device error the device must stay stopped: kicks complete nothing.
pub(crate) fn check_stays_stopped(d: &mut Driver, mem: &GuestMemoryMmap, up: &Up) {
    let before = used_indices(mem, up);
    for (q, _) in &up.rings {
        notify(d, up, *q);
    }
    d.w.poll();
    assert_eq!(
        used_indices(mem, up),
        before,
        "device completed requests after NEEDS_RESET"
    );
}

/// Common per-round checks.
pub(crate) fn check_round(
    gm: &mut GuardedMemory,
    mem: &GuestMemoryMmap,
    targeted: &[bool],
    two: bool,
) {
    if let Err(e) = gm.check_host_canaries() {
        panic!("{e}");
    }
    if let Err(e) = check_guest_canaries(mem, two, targeted) {
        panic!("{e}");
    }
}
