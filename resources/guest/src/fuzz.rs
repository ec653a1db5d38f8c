//! The `config-fuzz` test: pseudo-random dword writes to the configuration
//! space of every PCI function (CF8/CFC), to check that the VMM survives
//! whatever a guest writes there. Devices may stop working afterwards; the
//! original values are written back at the end (best effort) so that power
//! off and later tests still have a chance.

use core::cell::UnsafeCell;

use crate::cmdline::Cmdline;
use crate::pci::{self, Bdf, Cf8, ConfigSpace};
use crate::power;

/// Functions fuzzed at most (the rest of a larger machine is left alone).
const MAX_FUNCTIONS: usize = 128;
/// Registers written per function per round: dwords 0x04..=0xfc.
const FIRST_REG: u16 = 0x04;
const DWORDS: usize = 64;
/// Default cap on fuzz writes (each is 2 port I/Os).
const DEFAULT_MAX_WRITES: u64 = 20_000;

/// Original config space of the fuzzed functions, for the restore.
struct Snapshot(UnsafeCell<[[u32; DWORDS]; MAX_FUNCTIONS]>);

// SAFETY: the guest is single-threaded and only `fuzz` below touches the
// snapshot, through one exclusive borrow at a time.
unsafe impl Sync for Snapshot {}

static SNAPSHOT: Snapshot = Snapshot(UnsafeCell::new([[0; DWORDS]; MAX_FUNCTIONS]));

/// xorshift64* seeded through splitmix64, so every seed (0 too) works.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Self(if z == 0 { 1 } else { z })
    }

    fn next_u32(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }
}

/// The `config-fuzz` test.
pub fn fuzz(cmdline: &Cmdline<'_>, rsdp_hint: u64) {
    let seed = cmdline.get_u64(b"machina.seed", 1);
    let rounds = cmdline.get_u64(b"machina.fuzz-rounds", 1);
    let max_writes = cmdline.get_u64(b"machina.fuzz-max-writes", DEFAULT_MAX_WRITES);
    let restore = cmdline.get(b"machina.fuzz-restore") != Some(b"0");
    // Power off must not depend on ACPI tables or registers the fuzz may
    // hide or move (e.g. a chipset's TSEG or PM base).
    power::cache(rsdp_hint);

    // The topology is recorded before anything is written: bridge bus
    // numbers are fuzzed too.
    let mut list = [Bdf {
        bus: 0,
        dev: 0,
        func: 0,
    }; MAX_FUNCTIONS];
    let mut count = 0;
    pci::walk(&Cf8, |f| {
        if count < MAX_FUNCTIONS {
            list[count] = f.bdf;
            count += 1;
        }
    });
    let list = &list[..count];
    println!(
        "config-fuzz: functions={} rounds={} seed={} max-writes={}",
        count, rounds, seed, max_writes
    );

    // SAFETY: the only borrow of the snapshot, released when `fuzz` returns
    // (see `Snapshot`'s Sync impl).
    let snapshot = unsafe { &mut *SNAPSHOT.0.get() };
    for (bdf, saved) in list.iter().zip(snapshot.iter_mut()) {
        for (i, v) in saved.iter_mut().enumerate() {
            *v = Cf8.read32(*bdf, 4 * i as u16);
        }
    }

    let mut rng = Rng::new(seed);
    let mut writes: u64 = 0;
    'rounds: for _ in 0..rounds {
        for &bdf in list {
            for reg in (FIRST_REG..0x100).step_by(4) {
                if writes >= max_writes {
                    break 'rounds;
                }
                Cf8.write32(bdf, reg, rng.next_u32());
                writes += 1;
            }
        }
    }

    // Read everything back (the values are not checked: only that the VMM
    // answers), folding them into a checksum.
    let mut reads: u64 = 0;
    let mut xor = 0u32;
    for &bdf in list {
        for reg in (0..0x100).step_by(4) {
            xor ^= Cf8.read32(bdf, reg).rotate_left(u32::from(reg) / 4);
            reads += 1;
        }
    }

    // Restore: every register but the command/status dword, then that one,
    // so decoding comes back on only once the BARs hold their old values.
    let mut restored = 0;
    if restore {
        for (&bdf, saved) in list.iter().zip(snapshot.iter()) {
            for reg in (0x08..0x100).step_by(4) {
                Cf8.write32(bdf, reg, saved[usize::from(reg) / 4]);
            }
            Cf8.write32(bdf, pci::REG_COMMAND, saved[1] & 0xffff);
            restored += 1;
        }
    }
    println!(
        "config-fuzz: done writes={} reads={} restored={} readback-xor=0x{:x}",
        writes, reads, restored, xor
    );
}
