//! Robustness fuzzing of the virtio device models, driven exactly as a guest driver would:
//! config space and BAR accesses bring a virtio-pci function up (modern, sometimes legacy),
//! then random and structured-but-wrong virtqueue contents are written into guest memory
//! and the queues are notified and processed.
//!
//! Invariants checked after every round:
//! - nothing panics and every round finishes (a watchdog aborts with the seed on a hang);
//! - no host byte around the guest regions changes (guest memory is built over one host
//!   mapping with canaries before, between and after the regions);
//! - guest canary ranges no descriptor or ring points at stay unchanged;
//! - the virtio-blk backing file keeps its length;
//! - once the device reports NEEDS_RESET it completes nothing more until reset;
//! - rounds made only of well-formed requests complete exactly as a model of the device
//!   says (status, used length, data read back, file contents).
//!
//! Bounded for CI: each random target runs for `MACHINA_FUZZ_SECS` seconds (default 5) or
//! `MACHINA_FUZZ_ITERS` iterations, whichever comes first. `MACHINA_FUZZ_SEED` fixes the
//! base seed (default: from the clock, printed); `MACHINA_FUZZ_ITER` runs a single
//! iteration; `MACHINA_FUZZ_TRACE=1` logs what each iteration generated, printed on failure.

mod common;

use common::*;
use devices::virtio::blk::BlockBackend;
use devices::virtio::console::ConsoleBackend;
use devices::virtio::net::NetBackend;
use devices::virtio::regs::{common as cc, features, modern, status};
use devices::virtio::VirtioBackend;
use std::cell::RefCell;
use std::fs::File;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

// ---------------------------------------------------------------------------------------
// Configuration, reporting, watchdog
// ---------------------------------------------------------------------------------------

struct Config {
    seed: u64,
    secs: f64,
    max_iters: u64,
    only_iter: Option<u64>,
    trace: bool,
    hang_secs: u64,
}

fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    if let Some(hex) = v.strip_prefix("0x") {
        // Seeds are printed in hex.
        return u64::from_str_radix(hex, 16)
            .ok()
            .and_then(|n| n.to_string().parse().ok());
    }
    v.parse().ok()
}

fn config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Config {
            seed: env_num("MACHINA_FUZZ_SEED")
                .unwrap_or_else(|| splitmix64(clock ^ u64::from(std::process::id()))),
            secs: env_num("MACHINA_FUZZ_SECS").unwrap_or(5.0),
            max_iters: env_num("MACHINA_FUZZ_ITERS").unwrap_or(1_000_000),
            only_iter: env_num("MACHINA_FUZZ_ITER"),
            trace: std::env::var("MACHINA_FUZZ_TRACE").is_ok_and(|v| v != "0"),
            hang_secs: env_num("MACHINA_FUZZ_HANG_SECS").unwrap_or(60),
        }
    })
}

/// Written straight to stderr, past the test harness's capture, so the seed is visible
/// even if the process dies.
fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

thread_local! {
    static TRACE: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

macro_rules! trace {
    ($($t:tt)*) => {
        if config().trace {
            TRACE.with(|t| {
                let mut t = t.borrow_mut();
                if t.len() < 2000 {
                    t.push(format!($($t)*));
                }
            });
        }
    };
}

/// Prints how to reproduce when an iteration panics.
struct FailureReport {
    target: &'static str,
    seed: u64,
    iter: u64,
}

impl Drop for FailureReport {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        say(&format!(
            "fuzz target {} FAILED at iteration {} (base seed {:#x})\n  reproduce: \
             MACHINA_FUZZ_SEED={:#x} MACHINA_FUZZ_ITER={} MACHINA_FUZZ_TRACE=1 cargo test -p \
             devices --test virtio_fuzz {} -- --nocapture",
            self.target, self.iter, self.seed, self.seed, self.iter, self.target
        ));
        TRACE.with(|t| {
            for line in t.borrow().iter() {
                say(&format!("  | {line}"));
            }
        });
    }
}

struct Beat {
    target: &'static str,
    seed: u64,
    iter: u64,
    at: Instant,
}

fn heartbeats() -> &'static Mutex<Vec<Beat>> {
    static H: OnceLock<Mutex<Vec<Beat>>> = OnceLock::new();
    H.get_or_init(|| {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_millis(500));
            let h = heartbeats().lock().unwrap_or_else(|e| e.into_inner());
            for b in h.iter() {
                if b.at.elapsed() > Duration::from_secs(config().hang_secs) {
                    say(&format!(
                        "fuzz target {} HUNG in iteration {} (base seed {:#x}) for over {} s; \
                         reproduce: MACHINA_FUZZ_SEED={:#x} MACHINA_FUZZ_ITER={}",
                        b.target,
                        b.iter,
                        b.seed,
                        config().hang_secs,
                        b.seed,
                        b.iter
                    ));
                    std::process::abort();
                }
            }
        });
        Mutex::new(Vec::new())
    })
}

fn beat(target: &'static str, seed: u64, iter: Option<u64>) {
    let mut h = heartbeats().lock().unwrap_or_else(|e| e.into_inner());
    h.retain(|b| b.target != target);
    if let Some(iter) = iter {
        h.push(Beat {
            target,
            seed,
            iter,
            at: Instant::now(),
        });
    }
}

#[derive(Default, Debug)]
struct Stats {
    rounds: u64,
    /// Requests the device completed, by status byte (blk) or at all.
    completed: u64,
    st_ok: u64,
    st_ioerr: u64,
    st_unsupp: u64,
    /// Rounds that ended with the device stopped (NEEDS_RESET).
    device_errors: u64,
    /// Rounds where a descriptor or ring legitimately pointed at a guest canary.
    canary_targeted: u64,
    /// Rounds of well-formed requests checked against the model, and their requests.
    clean_rounds: u64,
    clean_checked: u64,
    legacy_bringups: u64,
}

/// Run `iteration` with per-iteration seeds derived from the base seed until the time or
/// iteration budget is spent.
fn run_target(target: &'static str, mut iteration: impl FnMut(&mut XorShift, &mut Stats)) {
    let cfg = config();
    let start = Instant::now();
    let budget = Duration::from_secs_f64(cfg.secs);
    let mut stats = Stats::default();
    say(&format!(
        "fuzz {target}: base seed {:#x} (MACHINA_FUZZ_SEED), up to {} s / {} iterations",
        cfg.seed, cfg.secs, cfg.max_iters
    ));
    let iters: Box<dyn Iterator<Item = u64>> = match cfg.only_iter {
        Some(i) => Box::new(std::iter::once(i)),
        None => Box::new(0..cfg.max_iters),
    };
    let mut done = 0u64;
    for i in iters {
        if cfg.only_iter.is_none() && start.elapsed() >= budget {
            break;
        }
        TRACE.with(|t| t.borrow_mut().clear());
        beat(target, cfg.seed, Some(i));
        let report = FailureReport {
            target,
            seed: cfg.seed,
            iter: i,
        };
        let mut rng = XorShift::new(cfg.seed ^ splitmix64(i.wrapping_add(0x5eed)));
        iteration(&mut rng, &mut stats);
        drop(report);
        done += 1;
    }
    beat(target, cfg.seed, None);
    say(&format!(
        "fuzz {target}: {done} iterations in {:.1} s (base seed {:#x}): {stats:?}",
        start.elapsed().as_secs_f64(),
        cfg.seed
    ));
}

// ---------------------------------------------------------------------------------------
// Guest layout
// ---------------------------------------------------------------------------------------

/// Region A: [page zero][rings of queues 0..8][indirect tables][canary][data]. Region B
/// (when present): [canary][data]. Canaries sit below data areas so that buffers in the
/// data areas never overlap them by accident; page zero is left to buffers at address 0.
const RINGS: u64 = 0x1000;
const RING_SLOT: u64 = 0x4000;
const MAX_RING_SLOTS: u64 = 8;
const INDIRECT: (u64, u64) = (0x2_1000, 0x2_9000);
const CANARY_MID: (u64, u64) = (0x2_9000, 0x3_0000);
const DATA: (u64, u64) = (0x3_0000, A_SIZE);
const CANARY_B: (u64, u64) = (B_BASE, B_BASE + 0x1000);
const DATA_B: (u64, u64) = (B_BASE + 0x1000, MEM_END);

fn guest_canaries(two_regions: bool) -> Vec<(u64, u64)> {
    let mut v = vec![CANARY_MID];
    if two_regions {
        v.push(CANARY_B);
    }
    v
}

/// The canary pattern for guest addresses `s..e`.
fn guest_canary(s: u64, e: u64) -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    let p = P.get_or_init(|| {
        (0..MEM_END)
            .map(|gpa| (gpa.wrapping_mul(0x9d) as u8) ^ 0x3c)
            .collect()
    });
    &p[s as usize..e as usize]
}

fn write_guest_canaries(mem: &GuestMemoryMmap, two_regions: bool) {
    for (s, e) in guest_canaries(two_regions) {
        mem.write_slice(guest_canary(s, e), GuestAddress(s))
            .unwrap();
    }
}

/// Check the canaries no descriptor or ring pointed at (`targeted[i]` for canary `i`).
fn check_guest_canaries(
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

fn ring_slot(q: u16) -> (u64, u64, u64) {
    let base = RINGS + RING_SLOT * (u64::from(q) % MAX_RING_SLOTS);
    (base, base + 0x1000, base + 0x2000)
}

// ---------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------

/// A buffer of a chain: guest address, length, device-writable.
#[derive(Debug, Clone, Copy)]
struct Seg {
    addr: u64,
    len: u32,
    write: bool,
}

/// Random guest-memory contents and descriptors; remembers whether anything it wrote or
/// pointed at overlaps a guest canary (which the device may then legitimately change).
struct Gen<'a> {
    rng: &'a mut XorShift,
    mem: &'a GuestMemoryMmap,
    two_regions: bool,
    data_cursor: u64,
    data_b_cursor: u64,
    ind_cursor: u64,
    /// Per guest canary: something the device may write points at it.
    targeted: [bool; 2],
}

impl<'a> Gen<'a> {
    fn new(rng: &'a mut XorShift, mem: &'a GuestMemoryMmap, two_regions: bool) -> Self {
        Self {
            rng,
            mem,
            two_regions,
            data_cursor: DATA.0,
            data_b_cursor: DATA_B.0,
            ind_cursor: INDIRECT.0,
            targeted: [false; 2],
        }
    }

    fn any_targeted(&self) -> bool {
        self.targeted.iter().any(|&t| t)
    }

    /// Start a new round's allocations.
    fn rewind(&mut self) {
        self.data_cursor = DATA.0;
        self.data_b_cursor = DATA_B.0;
        self.ind_cursor = INDIRECT.0;
    }

    /// Note a guest range the device may touch.
    fn note(&mut self, addr: u64, len: u64) {
        if len == 0 {
            return;
        }
        let end = addr.saturating_add(len);
        for (i, (s, e)) in guest_canaries(self.two_regions).into_iter().enumerate() {
            if addr < e && s < end {
                self.targeted[i] = true;
            }
        }
    }

    /// `len` bytes of data area, without wrapping (None when the round's space is spent).
    fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        let use_b = self.two_regions && len <= 0x4000 && self.rng.one_in(4);
        let (cursor, end) = if use_b {
            (&mut self.data_b_cursor, DATA_B.1)
        } else {
            (&mut self.data_cursor, DATA.1)
        };
        let at = cursor.next_multiple_of(align.max(1));
        if at.checked_add(len)? > end {
            return None;
        }
        *cursor = at + len;
        Some(at)
    }

    /// Room for an indirect table of `n` descriptors.
    fn alloc_indirect(&mut self, n: u64) -> Option<u64> {
        let at = self.ind_cursor;
        if at + 16 * n > INDIRECT.1 {
            return None;
        }
        self.ind_cursor = at + 16 * n;
        Some(at)
    }

    fn write(&mut self, addr: u64, bytes: &[u8]) {
        self.note(addr, bytes.len() as u64);
        let _ = self.mem.write_slice(bytes, GuestAddress(addr));
    }

    fn random_bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.rng.fill(&mut v);
        v
    }

    /// Note a descriptor the device may write through: device-writable, not indirect, and
    /// wholly inside one guest region (a buffer that is not cannot be written at all).
    fn note_desc(&mut self, addr: u64, len: u32, flags: u16) {
        if flags & VRING_DESC_F_WRITE == 0 || flags & VRING_DESC_F_INDIRECT != 0 {
            return;
        }
        let Some(end) = addr.checked_add(u64::from(len)) else {
            return;
        };
        let in_a = end <= A_SIZE;
        let in_b = self.two_regions && addr >= B_BASE && end <= MEM_END;
        if in_a || in_b {
            self.note(addr, u64::from(len));
        }
    }

    /// Write one descriptor, noting where it points.
    fn desc(&mut self, table: u64, idx: u64, addr: u64, len: u32, flags: u16, next: u16) {
        self.note_desc(addr, len, flags);
        let at = table.wrapping_add(16 * idx);
        self.write(at, &Ring::desc_bytes(addr, len, flags, next));
        trace!("  desc {table:#x}[{idx}] = {addr:#x} len {len:#x} flags {flags:#x} next {next}");
    }

    /// An address of some interesting kind for a buffer of `len` bytes.
    fn addr(&mut self, len: u32) -> u64 {
        let len = u64::from(len).max(1);
        let r = self.rng.below(100);
        match r {
            0..=39 => self.rng.range(DATA.0, DATA.1 - 1),
            40..=47 if self.two_regions => self.rng.range(DATA_B.0, DATA_B.1 - 1),
            40..=47 => self.rng.range(DATA.0, DATA.1 - 1) & !0xfff,
            // Straddling the end of region A (into the hole, or the end of memory).
            48..=55 => A_SIZE - self.rng.range(1, len.min(A_SIZE - DATA.0)),
            // Straddling the end of region B / of memory.
            56..=60 => MEM_END - self.rng.range(1, len.min(B_SIZE - 0x1000)),
            // Straddling from the hole into region B.
            61..=64 => B_BASE - self.rng.range(1, HOLE),
            65..=68 => self.rng.range(A_SIZE, B_BASE - 1),
            69..=73 => MEM_END + self.rng.below(1 << 32),
            // Wrapping the address space.
            74..=78 => u64::MAX - self.rng.below(len + 16),
            79..=83 => self.rng.next_u64(),
            84..=88 => self.rng.range(RINGS, INDIRECT.1 - 1),
            89..=94 => self.rng.range(INDIRECT.0, INDIRECT.1 - 1),
            95 if self.rng.one_in(4) => {
                // Rarely, a canary itself: checking that canary is then skipped.
                let (s, e) = self.rng.pick(&guest_canaries(self.two_regions));
                self.rng.range(s, e - 1)
            }
            95 | 96 => self.rng.range(0, 0x1000),
            _ => 0,
        }
    }

    fn len(&mut self) -> u32 {
        match self.rng.below(20) {
            0 => 0,
            1 => 1,
            2 => self.rng.range(2, 15) as u32,
            3 => 16,
            4 => 512,
            5 => 4096,
            6..=9 => 512 * self.rng.range(1, 128) as u32,
            10..=12 => self.rng.below(0x1_0000) as u32,
            13 => u32::MAX,
            14 => 0x8000_0000,
            15 => u32::MAX - self.rng.below(4096) as u32,
            16 => 8,
            _ => self.rng.next_u32(),
        }
    }

    fn flags(&mut self) -> u16 {
        const N: u16 = VRING_DESC_F_NEXT;
        const W: u16 = VRING_DESC_F_WRITE;
        const I: u16 = VRING_DESC_F_INDIRECT;
        match self.rng.below(12) {
            0..=9 => self
                .rng
                .pick(&[0, N, W, N | W, N, N | W, I, I | N, I | W, N]),
            10 => self.rng.next_u32() as u16,
            _ => N | W | I,
        }
    }

    fn next(&mut self, size: u16, idx: u16) -> u16 {
        match self.rng.below(8) {
            0..=3 => self.rng.below(u64::from(size)) as u16,
            4 => idx,
            5 => idx.wrapping_sub(1),
            6 => size.wrapping_add(self.rng.below(4) as u16),
            _ => self.rng.next_u32() as u16,
        }
    }

    /// A garbage descriptor: random address, length, flags and next.
    fn random_desc(&mut self, table: u64, idx: u16, size: u16) {
        let flags = self.flags();
        let len = if flags & VRING_DESC_F_INDIRECT != 0 && self.rng.one_in(2) {
            16 * self.rng.range(0, 8) as u32
        } else {
            self.len()
        };
        let addr = if flags & VRING_DESC_F_INDIRECT != 0 && self.rng.one_in(2) {
            // An indirect table full of garbage.
            let n = u64::from(len / 16).max(1);
            match self.alloc_indirect(n) {
                Some(t) => {
                    for i in 0..n {
                        let f = self.flags();
                        let l = self.len();
                        let a = self.addr(l);
                        let nx = self.next(n as u16, i as u16);
                        self.desc(t, i, a, l, f, nx);
                    }
                    t
                }
                None => self.addr(len),
            }
        } else {
            self.addr(len)
        };
        let next = self.next(size, idx);
        self.desc(table, u64::from(idx), addr, len, flags, next);
    }
}

/// How a chain's links are broken.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Link {
    Fine,
    /// The last descriptor points back into the chain.
    Loop,
    /// The last descriptor points past the table.
    PastEnd,
    /// An indirect descriptor inside the indirect table.
    NestedIndirect,
    /// The indirect descriptor's length is not a multiple of 16 or exceeds the table.
    BadIndirectLen,
}

/// Lay `segs` out as a chain in `ring`'s descriptor table (or in an indirect table it
/// points to) using descriptors from `free`; returns the head index.
fn place_chain(
    g: &mut Gen,
    ring: &Ring,
    free: &mut Vec<u16>,
    segs: &[Seg],
    indirect: bool,
    link: Link,
) -> Option<u16> {
    let n = segs.len();
    if n == 0 {
        return None;
    }
    let flags_of = |s: &Seg, last: bool| {
        let mut f = if s.write { VRING_DESC_F_WRITE } else { 0 };
        if !last {
            f |= VRING_DESC_F_NEXT;
        }
        f
    };
    if indirect {
        let head = free.pop()?;
        let table = g.alloc_indirect(n as u64 + 1)?;
        for (i, s) in segs.iter().enumerate() {
            let last = i + 1 == n;
            let mut f = flags_of(s, last);
            let mut next = (i + 1) as u16;
            if last {
                match link {
                    Link::Loop => {
                        f |= VRING_DESC_F_NEXT;
                        next = g.rng.below(n as u64) as u16;
                    }
                    Link::PastEnd => {
                        f |= VRING_DESC_F_NEXT;
                        next = n as u16 + g.rng.below(3) as u16;
                    }
                    _ => next = 0,
                }
            }
            if link == Link::NestedIndirect && i == n / 2 {
                f |= VRING_DESC_F_INDIRECT;
            }
            g.desc(table, i as u64, s.addr, s.len, f, next);
        }
        let len = match link {
            Link::BadIndirectLen => {
                g.rng
                    .pick(&[16 * n as u32 + 8, 16 * (n as u32 + 200), 0, 7, 0xffff_fff0])
            }
            _ => 16 * n as u32,
        };
        g.desc(
            ring.desc,
            u64::from(head),
            table,
            len,
            VRING_DESC_F_INDIRECT,
            0,
        );
        return Some(head);
    }
    if free.len() < n {
        return None;
    }
    let idx: Vec<u16> = (0..n).map(|_| free.pop().unwrap_or(0)).collect();
    for (i, s) in segs.iter().enumerate() {
        let last = i + 1 == n;
        let mut f = flags_of(s, last);
        let mut next = if last { 0 } else { idx[i + 1] };
        if last {
            match link {
                Link::Loop => {
                    f |= VRING_DESC_F_NEXT;
                    next = idx[g.rng.below(n as u64) as usize];
                }
                Link::PastEnd => {
                    f |= VRING_DESC_F_NEXT;
                    next = ring.size.wrapping_add(g.rng.below(5) as u16);
                }
                _ => {}
            }
        }
        g.desc(ring.desc, u64::from(idx[i]), s.addr, s.len, f, next);
    }
    Some(idx[0])
}

/// Split a byte stream into 1..=3 descriptors of the same direction, each in fresh data
/// space, writing `content` (device-readable streams) into them.
fn stream_segs(g: &mut Gen, content: &[u8], len: usize, write: bool) -> Option<Vec<Seg>> {
    if len == 0 {
        return Some(Vec::new());
    }
    let parts = g.rng.range(1, 3.min(len as u64)) as usize;
    let mut cuts: Vec<usize> = (0..parts - 1)
        .map(|_| g.rng.range(1, len as u64 - 1) as usize)
        .collect();
    cuts.push(0);
    cuts.push(len);
    cuts.sort_unstable();
    cuts.dedup();
    let mut segs = Vec::new();
    for w in cuts.windows(2) {
        let (s, e) = (w[0], w[1]);
        let align = g.rng.pick(&[1, 2, 8, 512, 4096]);
        let addr = g.alloc((e - s) as u64, align)?;
        if !write {
            g.write(addr, &content[s..e]);
        } else {
            // Poison device-writable space so stale bytes cannot pass for data.
            let junk = g.random_bytes(e - s);
            g.write(addr, &junk);
        }
        segs.push(Seg {
            addr,
            len: (e - s) as u32,
            write,
        });
    }
    Some(segs)
}

fn read_segs(mem: &GuestMemoryMmap, segs: &[Seg]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in segs {
        let mut b = vec![0u8; s.len as usize];
        mem.read_slice(&mut b, GuestAddress(s.addr)).unwrap();
        out.extend(b);
    }
    out
}

// ---------------------------------------------------------------------------------------
// Bring-up
// ---------------------------------------------------------------------------------------

struct Up {
    modern: bool,
    /// Every ring sits in its standard slot with the size asked for.
    standard: bool,
    /// The driver did something QEMU treats as a device error during bring-up (the
    /// NEEDS_RESET bit it set is then overwritten by the driver's next status write).
    broken: bool,
    version1: bool,
    /// Rings the driver set up, by queue index.
    rings: Vec<(u16, Ring)>,
}

impl Up {
    fn ring(&self, q: u16) -> Option<Ring> {
        self.rings.iter().find(|(i, _)| *i == q).map(|(_, r)| *r)
    }
}

/// Bring the device up through the modern interface, or the legacy one when `legacy`,
/// with random features and queue placements; `queues` are the queue indices to set up.
fn bring_up(d: &mut Driver, g: &mut Gen, queues: &[u16], legacy: bool) -> Up {
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
                    .pick(&[0u64, 0xffff_ffff, MEM_END >> 12, (A_SIZE >> 12) - 1]),
            };
            let size = d.legacy_queue(q, pfn as u32);
            if size == 0 {
                continue;
            }
            let r = Ring::legacy(size, pfn);
            g.note(r.used, r.used_bytes());
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
            _ => g.rng.pick(&[0, 3, max.wrapping_mul(2), 0xffff, max - 1]),
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
        // The device writes only the used ring; the harness's own writes to the others are
        // noted as they happen.
        g.note(used, r.used_bytes());
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
fn zero_ring_headers(g: &mut Gen, r: &Ring) {
    g.write(r.avail, &[0; 4]);
    g.write(r.used, &[0; 4]);
}

/// Program a couple of MSI-X vectors and turn MSI-X on.
fn enable_msix(d: &mut Driver, rng: &mut XorShift) {
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

fn notify(d: &mut Driver, up: &Up, q: u16) {
    if up.modern {
        d.notify_modern(q);
    } else {
        d.notify_legacy(q);
    }
}

/// Snapshot of each ring's used index.
fn used_indices(mem: &GuestMemoryMmap, up: &Up) -> Vec<u16> {
    up.rings.iter().map(|(_, r)| r.used_idx(mem)).collect()
}

/// After a device error the device must stay stopped: kicks complete nothing.
fn check_stays_stopped(d: &mut Driver, mem: &GuestMemoryMmap, up: &Up) {
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
fn check_round(gm: &mut GuardedMemory, mem: &GuestMemoryMmap, targeted: &[bool], two: bool) {
    if let Err(e) = gm.check_host_canaries() {
        panic!("{e}");
    }
    if let Err(e) = check_guest_canaries(mem, two, targeted) {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------------------
// virtio-blk
// ---------------------------------------------------------------------------------------

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
const SECTOR: u64 = 512;
const MAX_DWZ_SECTORS: u32 = 0x3f_ffff;

/// What the device was built with, for the model.
#[derive(Debug, Clone)]
struct BlkSetup {
    capacity: u64,
    read_only: bool,
    writeback: bool,
    discard: bool,
    write_zeroes: bool,
    serial: String,
}

/// The disk as the model believes it is; sectors not `known` were discarded.
struct Shadow {
    data: Vec<u8>,
    known: Vec<bool>,
}

impl Shadow {
    fn new(data: Vec<u8>) -> Self {
        let sectors = data.len().div_ceil(SECTOR as usize);
        Self {
            data,
            known: vec![true; sectors],
        }
    }

    /// Compare `got` with the known sectors at byte offset `off` (sector aligned); the
    /// first differing byte.
    fn mismatch(&self, off: usize, got: &[u8]) -> Option<usize> {
        let sec = SECTOR as usize;
        for (k, chunk) in got.chunks(sec).enumerate() {
            let at = off + k * sec;
            if self.known[at / sec] && chunk != &self.data[at..at + chunk.len()] {
                let i = chunk
                    .iter()
                    .zip(&self.data[at..])
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Some(k * sec + i);
            }
        }
        None
    }
}

/// What the device should have written into a request's data buffers.
enum ReadBack {
    Nothing,
    /// `len` bytes of the disk at byte offset `off`.
    Disk {
        off: usize,
        len: usize,
    },
    Bytes(Vec<u8>),
}

/// A well-formed request: the readable stream after the header, the writable length.
#[derive(Debug, Clone)]
struct CleanReq {
    ty: u32,
    sector: u64,
    out: Vec<u8>,
    in_len: usize,
    in_segs: Vec<Seg>,
    head: u16,
}

fn range_ok(cap: u64, sector: u64, bytes: u64) -> bool {
    bytes.is_multiple_of(SECTOR)
        && sector
            .checked_mul(SECTOR)
            .and_then(|o| o.checked_add(bytes))
            .is_some_and(|end| end <= cap * SECTOR)
}

/// Expected (status, used length, bytes read into the writable data) for `r`, applying
/// writes to `shadow`.
fn model_blk(s: &BlkSetup, shadow: &mut Shadow, r: &CleanReq) -> (u8, u32, ReadBack) {
    let ty = r.ty & !0x8000_0000;
    let one = |st: u8| (st, 1u32, ReadBack::Nothing);
    match ty {
        T_IN => {
            let len = r.in_len - 1;
            if !range_ok(s.capacity, r.sector, len as u64) {
                return (S_IOERR, r.in_len as u32, ReadBack::Nothing);
            }
            let off = (r.sector * SECTOR) as usize;
            (S_OK, r.in_len as u32, ReadBack::Disk { off, len })
        }
        T_OUT => {
            let len = r.out.len() as u64;
            if s.read_only || !range_ok(s.capacity, r.sector, len) {
                return one(S_IOERR);
            }
            let off = (r.sector * SECTOR) as usize;
            shadow.data[off..off + r.out.len()].copy_from_slice(&r.out);
            let sec = SECTOR as usize;
            for k in &mut shadow.known[off / sec..(off + r.out.len()) / sec] {
                *k = true;
            }
            one(S_OK)
        }
        T_FLUSH if s.writeback => one(S_OK),
        T_GET_ID => {
            let mut id = [0u8; 20];
            let n = s.serial.len().min(20);
            id[..n].copy_from_slice(&s.serial.as_bytes()[..n]);
            let n = (r.in_len - 1).min(20);
            (S_OK, n as u32 + 1, ReadBack::Bytes(id[..n].to_vec()))
        }
        T_DISCARD | T_WRITE_ZEROES
            if (ty == T_DISCARD && s.discard) || (ty == T_WRITE_ZEROES && s.write_zeroes) =>
        {
            if r.out.len() != 16 {
                return one(S_UNSUPP);
            }
            let sector = u64::from_le_bytes(r.out[0..8].try_into().unwrap());
            let num = u32::from_le_bytes(r.out[8..12].try_into().unwrap());
            let flags = u32::from_le_bytes(r.out[12..16].try_into().unwrap());
            let allowed = if ty == T_WRITE_ZEROES { 1 } else { 0 };
            if flags & !allowed != 0 {
                return one(S_UNSUPP);
            }
            let bytes = u64::from(num) * SECTOR;
            if num > MAX_DWZ_SECTORS || !range_ok(s.capacity, sector, bytes) || s.read_only {
                return one(S_IOERR);
            }
            let (off, end) = (
                (sector * SECTOR) as usize,
                (sector * SECTOR + bytes) as usize,
            );
            shadow.data[off..end].fill(0);
            let sec = SECTOR as usize;
            for k in &mut shadow.known[off / sec..end / sec] {
                // Discarded data may read back as before or as zeroes.
                *k = ty == T_WRITE_ZEROES;
            }
            one(S_OK)
        }
        _ => one(S_UNSUPP),
    }
}

fn blk_header(ty: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&ty.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

fn random_type(rng: &mut XorShift) -> u32 {
    match rng.below(16) {
        0..=3 => T_IN,
        4..=7 => T_OUT,
        8 => T_FLUSH,
        9 => T_GET_ID,
        10 => T_DISCARD,
        11 => T_WRITE_ZEROES,
        12 => T_IN | 0x8000_0000,
        13 => rng.pick(&[2, 3, 5, 7, 9, 12, 14, 0xff, 0x7fff_ffff]),
        _ => rng.next_u32(),
    }
}

fn random_sector(rng: &mut XorShift, cap: u64) -> u64 {
    match rng.below(10) {
        0..=5 => rng.below(cap.max(1)),
        6 => cap.saturating_sub(rng.below(4)),
        7 => cap + rng.below(4),
        8 => rng.pick(&[u64::MAX, u64::MAX / SECTOR, u64::MAX / SECTOR + 1, 1 << 55]),
        _ => rng.next_u64(),
    }
}

/// Data length for a request of type `ty` on a disk of `cap` sectors.
fn random_data_len(rng: &mut XorShift, ty: u32, cap: u64) -> usize {
    match ty & !0x8000_0000 {
        T_IN | T_OUT => match rng.below(10) {
            0..=6 => (SECTOR * rng.range(1, cap.clamp(1, 16))) as usize,
            7 => 0,
            8 => rng.range(1, 2000) as usize,
            _ => (SECTOR * rng.range(1, 128)) as usize,
        },
        T_GET_ID => rng.pick(&[20, 20, 0, 1, 19, 21, 64]),
        T_DISCARD | T_WRITE_ZEROES => rng.pick(&[16, 16, 16, 0, 8, 32]),
        _ => rng.pick(&[0, 0, 16, 512]),
    }
}

/// The discard / write-zeroes segment.
fn dwz_segment(rng: &mut XorShift, ty: u32, cap: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    if len >= 16 {
        let sector = random_sector(rng, cap);
        let num = match rng.below(6) {
            0..=3 => rng.range(0, cap.saturating_sub(sector).min(64)) as u32,
            4 => MAX_DWZ_SECTORS + 1,
            _ => rng.next_u32(),
        };
        let flags = match rng.below(6) {
            0..=2 => 0,
            3 | 4 if ty == T_WRITE_ZEROES => 1,
            _ => rng.next_u32(),
        };
        v[0..8].copy_from_slice(&sector.to_le_bytes());
        v[8..12].copy_from_slice(&num.to_le_bytes());
        v[12..16].copy_from_slice(&flags.to_le_bytes());
    }
    v
}

/// A well-formed request: header + out data readable, in data + status writable, each
/// stream split into 1..=3 descriptors at random cut points.
fn clean_blk_request(g: &mut Gen, cap: u64) -> Option<(Vec<Seg>, CleanReq)> {
    let ty = random_type(g.rng);
    let sector = random_sector(g.rng, cap);
    let dlen = random_data_len(g.rng, ty, cap);
    let base = ty & !0x8000_0000;
    let writes_guest = matches!(base, T_IN | T_GET_ID);
    let mut out = blk_header(ty, sector).to_vec();
    let out_data = if writes_guest {
        Vec::new()
    } else if matches!(base, T_DISCARD | T_WRITE_ZEROES) {
        dwz_segment(g.rng, base, cap, dlen)
    } else {
        g.random_bytes(dlen)
    };
    out.extend(&out_data);
    let in_len = if writes_guest { dlen + 1 } else { 1 };
    let mut segs = stream_segs(g, &out, out.len(), false)?;
    let in_segs = stream_segs(g, &[], in_len, true)?;
    segs.extend(&in_segs);
    Some((
        segs,
        CleanReq {
            ty,
            sector,
            out: out_data,
            in_len,
            in_segs,
            head: 0,
        },
    ))
}

/// A request with one or more things wrong with it.
fn broken_blk_request(g: &mut Gen, cap: u64) -> (Vec<Seg>, bool, Link) {
    let (mut segs, _) = clean_blk_request(g, cap).unwrap_or_else(|| {
        (
            vec![
                Seg {
                    addr: DATA.0,
                    len: 16,
                    write: false,
                },
                Seg {
                    addr: DATA.0 + 16,
                    len: 1,
                    write: true,
                },
            ],
            CleanReq {
                ty: 0,
                sector: 0,
                out: Vec::new(),
                in_len: 1,
                in_segs: Vec::new(),
                head: 0,
            },
        )
    });
    for _ in 0..g.rng.range(1, 3) {
        let n = segs.len();
        let i = g.rng.below(n as u64) as usize;
        match g.rng.below(11) {
            0 => segs[i].write = !segs[i].write,
            1 => {
                let l = segs[i].len;
                segs[i].addr = g.addr(l);
            }
            2 => segs[i].len = g.len(),
            3 if n > 1 => {
                segs.remove(i);
            }
            4 => {
                // Status byte missing, read-only or empty.
                let last = segs.len() - 1;
                match g.rng.below(3) {
                    0 if last > 0 => {
                        segs.pop();
                    }
                    1 => segs[last].write = false,
                    _ => segs[last].len = 0,
                }
            }
            5 => {
                // Header too short.
                segs[0].len = g.rng.below(16) as u32;
            }
            6 => {
                let len = g.len();
                let addr = g.addr(len);
                let write = g.rng.one_in(2);
                segs.insert(i, Seg { addr, len, write });
            }
            7 => {
                // Many tiny descriptors (up to a chain longer than the queue).
                let extra = g.rng.range(1, 300);
                let s = segs[i];
                for _ in 0..extra {
                    segs.insert(i, s);
                }
            }
            8 => segs[i].addr = segs[i].addr.wrapping_add(g.rng.below(A_SIZE)),
            9 => segs[i].len = segs[i].len.wrapping_mul(512),
            _ => segs.swap(i, g.rng.below(n as u64) as usize),
        }
    }
    let indirect = g.rng.one_in(4);
    let link = match g.rng.below(10) {
        0..=4 => Link::Fine,
        5 | 6 => Link::Loop,
        7 => Link::PastEnd,
        8 => Link::NestedIndirect,
        _ => Link::BadIndirectLen,
    };
    (segs, indirect, link)
}

struct BlkCase {
    setup: BlkSetup,
    transitional: bool,
    pcie: bool,
    queue_size: u16,
    num_queues: u16,
    config_wce: bool,
}

fn random_blk_case(rng: &mut XorShift) -> (BlkCase, u64) {
    let len = rng.pick(&[0u64, 512, 4096, 0x1_0000, 0x1_0000 + 300, 0x4_0000]);
    let serial_len = rng.pick(&[0usize, 5, 20, 30]);
    let serial: String = (0..serial_len)
        .map(|_| (b'a' + rng.below(26) as u8) as char)
        .collect();
    let setup = BlkSetup {
        capacity: len / SECTOR,
        read_only: rng.one_in(5),
        writeback: !rng.one_in(4),
        discard: !rng.one_in(4),
        write_zeroes: !rng.one_in(4),
        serial,
    };
    (
        BlkCase {
            setup,
            transitional: rng.one_in(2),
            pcie: rng.one_in(4),
            queue_size: rng.pick(&[256, 256, 128, 16, 4, 2, 1]),
            num_queues: rng.pick(&[1, 1, 2]),
            config_wce: !rng.one_in(3),
        },
        len,
    )
}

fn blk_device(
    c: &BlkCase,
    img: &TempImage,
    len: u64,
    content: &[u8],
    mem: &GuestMemoryMmap,
) -> Driver {
    let qs = c.queue_size.to_string();
    let nq = c.num_queues.to_string();
    let onoff = |b: bool| if b { "on" } else { "off" };
    let props = [
        ("serial", c.setup.serial.as_str()),
        ("queue-size", qs.as_str()),
        ("num-queues", nq.as_str()),
        ("discard", onoff(c.setup.discard)),
        ("write-zeroes", onoff(c.setup.write_zeroes)),
        ("config-wce", onoff(c.config_wce)),
    ];
    let file = img.create(content, len, c.setup.read_only);
    Driver::new(
        &plan(DEVICE_BLK, c.transitional, c.pcie, &props),
        VirtioBackend::Block(BlockBackend {
            file,
            read_only: c.setup.read_only,
            direct: false,
            writeback: c.setup.writeback,
        }),
        mem.clone(),
    )
}

/// One round of well-formed requests on queue 0, checked against the model.
fn blk_clean_round(
    d: &mut Driver,
    g: &mut Gen,
    up: &Up,
    setup: &BlkSetup,
    img: &TempImage,
    stats: &mut Stats,
) {
    let Some(mut ring) = up.ring(0) else { return };
    let mem = g.mem;
    let bytes = std::fs::read(&img.path).unwrap();
    let mut shadow = Shadow::new(bytes);
    let mut free: Vec<u16> = (0..ring.size).collect();
    g.rng.shuffle(&mut free);
    let mut reqs = Vec::new();
    let want = g.rng.range(1, u64::from(ring.size).min(12));
    ring.avail_idx = mem
        .read_obj(GuestAddress(ring.avail.wrapping_add(2)))
        .unwrap_or(0);
    let used_before = ring.used_idx(mem);
    for _ in 0..want {
        let Some((segs, mut req)) = clean_blk_request(g, setup.capacity) else {
            break;
        };
        let indirect = g.rng.one_in(5);
        let Some(head) = place_chain(g, &ring, &mut free, &segs, indirect, Link::Fine) else {
            break;
        };
        req.head = head;
        trace!("clean req {req:?}");
        ring.stage(mem, head);
        reqs.push(req);
    }
    ring.publish(mem);
    notify(d, up, 0);
    d.w.poll();
    stats.clean_rounds += 1;
    assert!(
        !(up.modern && d.needs_reset()),
        "well-formed requests set NEEDS_RESET"
    );
    assert_eq!(
        ring.used_idx(mem),
        used_before.wrapping_add(reqs.len() as u16),
        "not every well-formed request completed"
    );
    for (k, r) in reqs.iter().enumerate() {
        let (status_exp, used_exp, data_exp) = model_blk(setup, &mut shadow, r);
        let (id, used_len) = ring.used_elem(mem, used_before.wrapping_add(k as u16));
        assert_eq!(id, u32::from(r.head), "used ring order");
        let written = read_segs(mem, &r.in_segs);
        let status = written[r.in_len - 1];
        assert_eq!(
            (status, used_len),
            (status_exp, used_exp),
            "request {k} {r:?}: status / used length"
        );
        match data_exp {
            ReadBack::Nothing => {}
            ReadBack::Disk { off, len } => {
                if let Some(i) = shadow.mismatch(off, &written[..len]) {
                    panic!("request {k} {r:?}: byte {i} read from the disk differs");
                }
            }
            ReadBack::Bytes(b) => assert_eq!(&written[..b.len()], b.as_slice(), "GET_ID"),
        }
        match status {
            S_OK => stats.st_ok += 1,
            S_IOERR => stats.st_ioerr += 1,
            _ => stats.st_unsupp += 1,
        }
        stats.clean_checked += 1;
        stats.completed += 1;
    }
    let disk = std::fs::read(&img.path).unwrap();
    assert_eq!(disk.len(), shadow.data.len(), "disk length");
    if let Some(i) = shadow.mismatch(0, &disk) {
        panic!("disk byte {i:#x} after a well-formed round differs from the model");
    }
}

/// One round of random and broken requests on the set-up queues.
fn blk_random_round(d: &mut Driver, g: &mut Gen, up: &Up, setup: &BlkSetup, stats: &mut Stats) {
    let mem = g.mem;
    for &(q, ring) in &up.rings {
        let mut ring = ring;
        if g.rng.one_in(3) {
            continue;
        }
        // Descriptor table full of garbage first.
        let garbage = g.rng.one_in(2);
        if garbage {
            for i in 0..ring.size {
                g.random_desc(ring.desc, i, ring.size);
            }
        }
        let mut free: Vec<u16> = (0..ring.size).collect();
        g.rng.shuffle(&mut free);
        ring.avail_idx = mem
            .read_obj(GuestAddress(ring.avail.wrapping_add(2)))
            .unwrap_or(0);
        let n = match g.rng.below(10) {
            0 => 0,
            1..=6 => g.rng.range(1, 8),
            7 | 8 => g.rng.range(1, u64::from(ring.size)),
            _ => u64::from(ring.size) + g.rng.range(1, 100),
        };
        for _ in 0..n {
            let head = match g.rng.below(10) {
                0..=4 => {
                    let (segs, indirect, link) = broken_blk_request(g, setup.capacity);
                    trace!("broken req on q{q}: {segs:?} indirect {indirect} {link:?}");
                    place_chain(g, &ring, &mut free, &segs, indirect, link)
                }
                5..=7 => clean_blk_request(g, setup.capacity).and_then(|(segs, _)| {
                    let ind = g.rng.one_in(5);
                    place_chain(g, &ring, &mut free, &segs, ind, Link::Fine)
                }),
                _ => None,
            };
            let head = head.unwrap_or_else(|| match g.rng.below(4) {
                0 => ring.size.wrapping_add(g.rng.below(10) as u16),
                _ => g.rng.below(u64::from(ring.size)) as u16,
            });
            ring.stage(mem, head);
        }
        if g.rng.one_in(10) {
            // The driver's index jumps arbitrarily.
            ring.avail_idx = g.rng.next_u32() as u16;
        }
        if g.rng.one_in(10) {
            // Random flags / used_event.
            let f = g.rng.next_u32() as u16;
            g.write(ring.avail, &f.to_le_bytes());
            let ue = g.rng.next_u32() as u16;
            let at = ring.avail.wrapping_add(4 + 2 * u64::from(ring.size));
            g.write(at, &ue.to_le_bytes());
        }
        ring.publish(mem);
        let before = ring.used_idx(mem);
        notify(d, up, q);
        if g.rng.one_in(8) {
            // A notification for a queue that does not exist.
            notify(d, up, g.rng.range(2, 2000) as u16);
        }
        d.w.poll();
        let done = ring.used_idx(mem).wrapping_sub(before);
        stats.completed += u64::from(done.min(ring.size));
    }
}

fn blk_iteration(rng: &mut XorShift, stats: &mut Stats, gm: &mut GuardedMemory, img: &TempImage) {
    let (case, len) = random_blk_case(rng);
    let two = rng.one_in(3);
    let mem = gm.guest(two);
    write_guest_canaries(&mem, two);
    let mut content = vec![0u8; 4096];
    rng.fill(&mut content);
    trace!(
        "blk: len {len} {:?} transitional {} qsize {} nq {} two regions {two}",
        case.setup,
        case.transitional,
        case.queue_size,
        case.num_queues
    );
    let mut d = blk_device(&case, img, len, &content, &mem);
    let mut g = Gen::new(rng, &mem, two);
    let queues: Vec<u16> = (0..case.num_queues).collect();
    let mut legacy = case.transitional && g.rng.one_in(4);
    let mut up = bring_up(&mut d, &mut g, &queues, legacy);
    stats.legacy_bringups += u64::from(legacy);
    let rounds = g.rng.range(1, 4);
    for _ in 0..rounds {
        g.rewind();
        stats.rounds += 1;
        let healthy = up.modern
            && up.version1
            && up.standard
            && !up.broken
            && !d.needs_reset()
            && !g.any_targeted();
        if healthy && up.ring(0).is_some() && d.status() & status::DRIVER_OK != 0 && g.rng.one_in(3)
        {
            blk_clean_round(&mut d, &mut g, &up, &case.setup, img, stats);
        } else {
            blk_random_round(&mut d, &mut g, &up, &case.setup, stats);
        }
        check_round(gm, &mem, &g.targeted, two);
        assert_eq!(img.len(), len, "backing file length changed");
        if g.any_targeted() {
            stats.canary_targeted += 1;
        }
        if up.modern && up.version1 && d.needs_reset() {
            stats.device_errors += 1;
            let isr = d.bar_read(modern::BAR, modern::ISR, 1);
            let msix_on =
                d.f.caps()
                    .msix
                    .is_some_and(|c| d.cfg_read(c as u16 + 3, 1) & 0x80 != 0);
            assert!(
                msix_on || isr & 2 != 0,
                "device error without a config interrupt"
            );
            check_stays_stopped(&mut d, &mem, &up);
            check_round(gm, &mem, &g.targeted, two);
            // Recover the way a driver would: reset and start over.
            legacy = case.transitional && g.rng.one_in(4);
            up = bring_up(&mut d, &mut g, &queues, legacy);
        } else if g.rng.one_in(6) {
            // Flip the write cache through the device config, then carry on.
            d.bar_write(modern::BAR, modern::DEVICE + 0x20, g.rng.below(2), 1);
        }
    }
    drop(d);
    check_round(gm, &mem, &g.targeted, two);
    assert_eq!(img.len(), len, "backing file length changed");
}

#[test]
fn fuzz_blk_random_queues() {
    let mut gm = GuardedMemory::new();
    let img = TempImage::new("fuzz-blk");
    run_target("fuzz_blk_random_queues", |rng, stats| {
        blk_iteration(rng, stats, &mut gm, &img)
    });
}

/// The harness itself: a buffer the guest points at a canary changes it and the check
/// notices (unless told the canary was targeted); a stray host write is noticed too.
#[test]
fn canary_checks_notice_writes() {
    let mut gm = GuardedMemory::new();
    let mem = gm.guest(true);
    write_guest_canaries(&mem, true);
    let mut d = Driver::new(
        &plan(DEVICE_RNG, false, false, &[]),
        VirtioBackend::Rng(Box::new(std::io::repeat(0x5a))),
        mem.clone(),
    );
    let (sd, sa, su) = ring_slot(0);
    d.modern_begin(features::VERSION_1);
    d.modern_queue(0, 8, sd, sa, su);
    d.modern_driver_ok();
    let mut ring = Ring::new(8, sd, sa, su);
    ring.write_desc(&mem, 0, CANARY_MID.0 + 8, 64, VRING_DESC_F_WRITE, 0);
    ring.stage(&mem, 0);
    ring.publish(&mem);
    d.notify_modern(0);
    d.w.poll();
    assert_eq!(ring.used_elem(&mem, 0), (0, 64));
    assert!(check_guest_canaries(&mem, true, &[]).is_err());
    assert!(check_guest_canaries(&mem, true, &[true, false]).is_ok());
    assert!(gm.check_host_canaries().is_ok());
    gm.poke_hole();
    assert!(gm.check_host_canaries().is_err());
}

// ---------------------------------------------------------------------------------------
// virtio-blk: a table of hand-made bad chains
// ---------------------------------------------------------------------------------------

/// What a bad chain may do: fail the request with one of `statuses` (as the device's
/// status byte) or stop the device with NEEDS_RESET; `Zero` is a zero-length transfer
/// the device completes as QEMU does (the misdirected buffer must stay untouched).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    FailOrReset,
    Reset,
    Zero,
}

struct BadCase {
    name: &'static str,
    /// (addr, len, flags, next) per descriptor of the table, head first.
    descs: Vec<(u64, u32, u16, u16)>,
    /// Extra descriptors written into an indirect table at INDIRECT.0.
    indirect: Vec<(u64, u32, u16, u16)>,
    header: [u8; 16],
    expect: Expect,
    /// A device-readable buffer the device must not write.
    readonly_buf: Option<(u64, u32)>,
}

const HDR: u64 = DATA.0;
const STATUS: u64 = DATA.0 + 0x100;
const BUF: u64 = DATA.0 + 0x1000;
const N: u16 = VRING_DESC_F_NEXT;
const W: u16 = VRING_DESC_F_WRITE;
const I: u16 = VRING_DESC_F_INDIRECT;

fn bad_cases(cap: u64) -> Vec<BadCase> {
    let rd = blk_header(T_IN, 0);
    let wr = blk_header(T_OUT, 0);
    let case = |name, descs: Vec<(u64, u32, u16, u16)>, header, expect| BadCase {
        name,
        descs,
        indirect: Vec::new(),
        header,
        expect,
        readonly_buf: None,
    };
    let mut v = vec![
        case(
            "header outside memory",
            vec![(0xdead_0000_0000, 16, N, 1), (STATUS, 1, W, 0)],
            rd,
            Expect::Reset,
        ),
        case(
            "header straddles the end of region A",
            vec![(A_SIZE - 8, 16, N, 1), (STATUS, 1, W, 0)],
            rd,
            Expect::Reset,
        ),
        case(
            "header wraps the address space",
            vec![(u64::MAX - 7, 16, N, 1), (STATUS, 1, W, 0)],
            rd,
            Expect::Reset,
        ),
        case(
            "header too short",
            vec![(HDR, 8, N, 1), (STATUS, 1, W, 0)],
            rd,
            Expect::Reset,
        ),
        case(
            "zero-length header",
            vec![(HDR, 0, N, 1), (STATUS, 1, W, 0)],
            rd,
            Expect::Reset,
        ),
        case(
            "header device-writable",
            vec![(HDR, 16, N | W, 1), (STATUS, 1, W, 0)],
            rd,
            Expect::Reset,
        ),
        case("status missing", vec![(HDR, 16, 0, 0)], rd, Expect::Reset),
        case(
            "status read-only",
            vec![(HDR, 16, N, 1), (STATUS, 1, 0, 0)],
            rd,
            Expect::Reset,
        ),
        case(
            "status zero length",
            vec![(HDR, 16, N, 1), (STATUS, 0, W, 0)],
            rd,
            Expect::Reset,
        ),
        case(
            "status outside memory",
            vec![(HDR, 16, N, 1), (MEM_END + 0x1000, 1, W, 0)],
            rd,
            Expect::Reset,
        ),
        case(
            "status in the hole",
            vec![(HDR, 16, N, 1), (A_SIZE + 0x10, 1, W, 0)],
            rd,
            Expect::Reset,
        ),
        case(
            "read data straddles the end of memory",
            vec![
                (HDR, 16, N, 1),
                (A_SIZE - 256, 512, N | W, 2),
                (STATUS, 1, W, 0),
            ],
            rd,
            Expect::Reset,
        ),
        case(
            "write data outside memory",
            vec![(HDR, 16, N, 1), (1 << 40, 512, N, 2), (STATUS, 1, W, 0)],
            wr,
            Expect::Reset,
        ),
        case(
            "write data wraps the address space",
            vec![
                (HDR, 16, N, 1),
                (u64::MAX - 255, 512, N, 2),
                (STATUS, 1, W, 0),
            ],
            wr,
            Expect::Reset,
        ),
        case(
            "read past capacity",
            vec![(HDR, 16, N, 1), (BUF, 1024, N | W, 2), (STATUS, 1, W, 0)],
            blk_header(T_IN, cap - 1),
            Expect::FailOrReset,
        ),
        case(
            "write past capacity",
            vec![(HDR, 16, N, 1), (BUF, 1024, N, 2), (STATUS, 1, W, 0)],
            blk_header(T_OUT, cap - 1),
            Expect::FailOrReset,
        ),
        case(
            "sector overflows",
            vec![(HDR, 16, N, 1), (BUF, 512, N | W, 2), (STATUS, 1, W, 0)],
            blk_header(T_IN, u64::MAX / 512 + 1),
            Expect::FailOrReset,
        ),
        case(
            "read length not a sector multiple",
            vec![(HDR, 16, N, 1), (BUF, 100, N | W, 2), (STATUS, 1, W, 0)],
            rd,
            Expect::FailOrReset,
        ),
        case(
            "write length not a sector multiple",
            vec![(HDR, 16, N, 1), (BUF, 513, N, 2), (STATUS, 1, W, 0)],
            wr,
            Expect::FailOrReset,
        ),
        case(
            "huge read",
            vec![
                (HDR, 16, N, 1),
                (BUF, 0xffff_fe00, N | W, 2),
                (STATUS, 1, W, 0),
            ],
            rd,
            Expect::FailOrReset,
        ),
        case(
            "unknown request type",
            vec![(HDR, 16, N, 1), (STATUS, 1, W, 0)],
            blk_header(0x7777, 0),
            Expect::FailOrReset,
        ),
        case(
            "discard segment too short",
            vec![(HDR, 16, N, 1), (BUF, 8, N, 2), (STATUS, 1, W, 0)],
            blk_header(T_DISCARD, 0),
            Expect::FailOrReset,
        ),
        case(
            "write-zeroes segment missing",
            vec![(HDR, 16, N, 1), (STATUS, 1, W, 0)],
            blk_header(T_WRITE_ZEROES, 0),
            Expect::FailOrReset,
        ),
        case(
            "loop of two descriptors",
            vec![(HDR, 16, N, 1), (STATUS, 1, N | W, 0)],
            rd,
            Expect::FailOrReset,
        ),
        case("self loop", vec![(HDR, 16, N, 0)], rd, Expect::FailOrReset),
        case(
            "loop through the data with a status descriptor",
            vec![(HDR, 16, N, 1), (BUF, 512, N | W, 2), (STATUS, 1, N | W, 1)],
            rd,
            Expect::FailOrReset,
        ),
        // 1 + 255 trips through a 255-byte buffer: 65024 bytes (127 sectors) plus a status
        // byte, a read that would succeed if the loop went unnoticed.
        case(
            "self loop adding up to a valid read",
            vec![(HDR, 16, N, 1), (BUF, 255, N | W, 1)],
            rd,
            Expect::FailOrReset,
        ),
        case(
            "next past the queue",
            vec![(HDR, 16, N, 300)],
            rd,
            Expect::Reset,
        ),
        case(
            "next past the queue after the status",
            vec![(HDR, 16, N, 1), (STATUS, 1, N | W, 0xffff)],
            rd,
            Expect::FailOrReset,
        ),
        case(
            "indirect table outside memory",
            vec![(1 << 50, 32, I, 0)],
            rd,
            Expect::Reset,
        ),
        case(
            "indirect length not a multiple of 16",
            vec![(INDIRECT.0, 24, I, 0)],
            rd,
            Expect::Reset,
        ),
        case(
            "indirect of zero length",
            vec![(INDIRECT.0, 0, I, 0)],
            rd,
            Expect::Reset,
        ),
    ];
    // Indirect tables with broken insides.
    let ind = |name, inner: Vec<(u64, u32, u16, u16)>, len: u32, expect| BadCase {
        name,
        descs: vec![(INDIRECT.0, len, I, 0)],
        indirect: inner,
        header: rd,
        expect,
        readonly_buf: None,
    };
    v.push(ind(
        "indirect inside indirect",
        vec![
            (HDR, 16, N, 1),
            (INDIRECT.0, 32, I | N, 2),
            (STATUS, 1, W, 0),
        ],
        48,
        Expect::Reset,
    ));
    v.push(ind(
        "loop inside an indirect table",
        vec![(HDR, 16, N, 1), (STATUS, 1, N | W, 0)],
        32,
        Expect::FailOrReset,
    ));
    v.push(ind(
        "next past the indirect table",
        vec![(HDR, 16, N, 5), (STATUS, 1, W, 0)],
        32,
        Expect::Reset,
    ));
    v.push(ind(
        "indirect table longer than written, chain runs on into zeroes",
        vec![(HDR, 16, N, 1), (STATUS, 1, W | N, 2)],
        16 * 64,
        Expect::FailOrReset,
    ));
    v.push(ind(
        "indirect table straddles the end of memory",
        vec![],
        0,
        Expect::Reset,
    ));
    v.push(case(
        "device-readable buffer after the status",
        vec![(HDR, 16, N, 1), (STATUS, 1, N | W, 2), (BUF, 512, 0, 0)],
        wr,
        Expect::Reset,
    ));
    v.push(case(
        "device-readable data between writable buffers",
        vec![
            (HDR, 16, N, 1),
            (BUF, 512, N | W, 2),
            (BUF + 512, 512, N, 3),
            (STATUS, 1, W, 0),
        ],
        rd,
        Expect::Reset,
    ));
    // Wrong directions with data: QEMU completes a zero-length transfer.
    let mut c = case(
        "read into a device-readable buffer",
        vec![(HDR, 16, N, 1), (BUF, 512, N, 2), (STATUS, 1, W, 0)],
        rd,
        Expect::Zero,
    );
    c.readonly_buf = Some((BUF, 512));
    v.push(c);
    v.push(case(
        "write from a device-writable buffer",
        vec![(HDR, 16, N, 1), (BUF, 512, N | W, 2), (STATUS, 1, W, 0)],
        wr,
        Expect::Zero,
    ));
    v
}

#[test]
fn blk_bad_chain_table() {
    let mut gm = GuardedMemory::new();
    let img = TempImage::new("bad-chains");
    let cap_bytes = 0x1_0000u64;
    let mut failures = Vec::new();
    for (legacy_iface, two) in [(false, false), (false, true), (true, false)] {
        for c in bad_cases(cap_bytes / SECTOR) {
            let mem = gm.guest(two);
            write_guest_canaries(&mem, two);
            let mut d = Driver::new(
                &plan(DEVICE_BLK, legacy_iface, false, &[]),
                VirtioBackend::Block(BlockBackend {
                    file: img.create(&[0x42], cap_bytes, false),
                    read_only: false,
                    direct: false,
                    writeback: true,
                }),
                mem.clone(),
            );
            let (sd, sa, su) = ring_slot(0);
            let mut ring = if legacy_iface {
                d.legacy_begin(0);
                let size = d.legacy_queue(0, (sd >> 12) as u32);
                d.legacy_driver_ok();
                Ring::legacy(size, sd >> 12)
            } else {
                d.modern_begin(features::VERSION_1 | features::RING_INDIRECT_DESC);
                d.modern_queue(0, 256, sd, sa, su);
                d.modern_driver_ok();
                Ring::new(256, sd, sa, su)
            };
            mem.write_slice(&c.header, GuestAddress(HDR)).unwrap();
            mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
            let pattern = [0x77u8; 1024];
            mem.write_slice(&pattern, GuestAddress(BUF)).unwrap();
            for (i, &(a, l, f, n)) in c.descs.iter().enumerate() {
                ring.write_desc(&mem, i as u16, a, l, f, n);
            }
            for (i, &(a, l, f, n)) in c.indirect.iter().enumerate() {
                let at = INDIRECT.0 + 16 * i as u64;
                mem.write_slice(&Ring::desc_bytes(a, l, f, n), GuestAddress(at))
                    .unwrap();
            }
            if c.name == "indirect table straddles the end of memory" {
                let end = if two { MEM_END } else { A_SIZE };
                ring.write_desc(&mem, 0, end - 16, 32, I, 0);
            }
            ring.stage(&mem, 0);
            ring.publish(&mem);
            if legacy_iface {
                d.notify_legacy(0);
            } else {
                d.notify_modern(0);
            }
            d.w.poll();
            let completed = ring.used_idx(&mem) == 1;
            let status: u8 = mem.read_obj(GuestAddress(STATUS)).unwrap();
            let reset = !legacy_iface && d.needs_reset();
            // On the legacy interface NEEDS_RESET is not visible: the device just stops.
            let stopped = !completed && (reset || legacy_iface);
            let failed = completed && !reset && matches!(status, S_IOERR | S_UNSUPP);
            let ok = match c.expect {
                Expect::Reset => stopped,
                Expect::FailOrReset => stopped || failed,
                Expect::Zero => completed && !reset && status == S_OK,
            };
            if !ok {
                failures.push(format!(
                    "{} (legacy {legacy_iface}, two regions {two}): completed {completed}, \
                     status {status:#x}, NEEDS_RESET {reset}, expected {:?}",
                    c.name, c.expect
                ));
            }
            if let Some((a, l)) = c.readonly_buf {
                let mut b = vec![0u8; l as usize];
                mem.read_slice(&mut b, GuestAddress(a)).unwrap();
                assert!(
                    b.iter().all(|&x| x == 0x77),
                    "{}: device wrote into a device-readable buffer",
                    c.name
                );
            }
            if reset {
                let up = Up {
                    standard: true,
                    broken: false,
                    modern: true,
                    version1: true,
                    rings: vec![(0, ring)],
                };
                check_stays_stopped(&mut d, &mem, &up);
            }
            gm.check_host_canaries()
                .unwrap_or_else(|e| panic!("{}: {e}", c.name));
            check_guest_canaries(&mem, two, &[]).unwrap_or_else(|e| panic!("{}: {e}", c.name));
            assert_eq!(img.len(), cap_bytes, "{}: file length", c.name);
        }
    }
    assert!(failures.is_empty(), "bad chains:\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// virtio-rng, virtio-net, virtio-console: the generic queue paths
// ---------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let mut v = self.0.lock().unwrap();
        if v.len() < (1 << 20) {
            v.extend_from_slice(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Kind {
    Rng,
    /// The far end of the "tap", and a second handle on the device's end to drain it.
    Net {
        peer: UnixDatagram,
        dev: UnixDatagram,
    },
    Console {
        out: Sink,
    },
}

/// A chain of buffers with the direction the queue expects, `len` bytes in all.
fn plain_chain(g: &mut Gen, len: usize, write: bool) -> Option<(Vec<Seg>, Vec<u8>)> {
    let content = if write {
        Vec::new()
    } else {
        g.random_bytes(len)
    };
    let segs = stream_segs(g, &content, len, write)?;
    Some((segs, content))
}

/// Broken chains: random segments, wrong directions, bad links.
fn broken_plain_chain(g: &mut Gen, write: bool) -> (Vec<Seg>, bool, Link) {
    let n = g.rng.range(1, 5);
    let mut segs = Vec::new();
    for _ in 0..n {
        let len = if g.rng.one_in(2) {
            g.rng.range(0, 2000) as u32
        } else {
            g.len()
        };
        let addr = if g.rng.one_in(2) {
            g.alloc(u64::from(len).min(0x1000), 8).unwrap_or(DATA.0)
        } else {
            g.addr(len)
        };
        let w = if g.rng.one_in(4) { !write } else { write };
        segs.push(Seg {
            addr,
            len,
            write: w,
        });
    }
    let link = match g.rng.below(8) {
        0..=3 => Link::Fine,
        4 | 5 => Link::Loop,
        6 => Link::PastEnd,
        _ => Link::NestedIndirect,
    };
    (segs, g.rng.one_in(4), link)
}

fn generic_iteration(rng: &mut XorShift, stats: &mut Stats, gm: &mut GuardedMemory) {
    let which = rng.below(3);
    let transitional = rng.one_in(2);
    let two = rng.one_in(3);
    let mem = gm.guest(two);
    write_guest_canaries(&mem, two);
    let (mut d, kind, queues): (Driver, Kind, Vec<u16>) = match which {
        0 => (
            Driver::new(
                &plan(DEVICE_RNG, transitional, false, &[]),
                VirtioBackend::Rng(Box::new(std::io::repeat(0x5a))),
                mem.clone(),
            ),
            Kind::Rng,
            vec![0],
        ),
        1 => {
            let (a, b) = UnixDatagram::pair().expect("socketpair");
            a.set_nonblocking(true).unwrap();
            b.set_nonblocking(true).unwrap();
            let dev = a.try_clone().expect("dup socket");
            let tap = File::from(OwnedFd::from(a));
            (
                Driver::new(
                    &plan(DEVICE_NET, transitional, false, &[("romfile", "")]),
                    VirtioBackend::Net(NetBackend {
                        tap,
                        default_mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
                    }),
                    mem.clone(),
                ),
                Kind::Net { peer: b, dev },
                vec![0, 1],
            )
        }
        _ => {
            let out = Sink::default();
            let ports = rng.pick(&["1", "2"]);
            (
                Driver::new(
                    &plan(DEVICE_CONSOLE, transitional, false, &[("max_ports", ports)]),
                    VirtioBackend::Console(ConsoleBackend {
                        output: Box::new(out.clone()),
                    }),
                    mem.clone(),
                ),
                Kind::Console { out },
                if ports == "1" {
                    vec![0, 1]
                } else {
                    vec![0, 1, 2, 3]
                },
            )
        }
    };
    trace!("generic device {which}, transitional {transitional}, two regions {two}");
    let mut g = Gen::new(rng, &mem, two);
    let legacy = transitional && g.rng.one_in(4);
    stats.legacy_bringups += u64::from(legacy);
    let mut up = bring_up(&mut d, &mut g, &queues, legacy);
    for _ in 0..g.rng.range(1, 4) {
        g.rewind();
        stats.rounds += 1;
        let healthy = up.modern
            && up.version1
            && up.standard
            && !up.broken
            && !d.needs_reset()
            && !g.any_targeted()
            && d.status() & status::DRIVER_OK != 0;
        // Buffers still waiting for input (rx, console) from an earlier round would take
        // this round's data first.
        let drained = up.rings.iter().all(|(_, r)| {
            let avail: u16 = mem
                .read_obj(GuestAddress(r.avail.wrapping_add(2)))
                .unwrap_or(0);
            avail == r.used_idx(&mem)
        });
        let clean = healthy && drained && g.rng.one_in(3);
        // Which queues take device-writable buffers.
        let writable_q = |q: u16| match kind {
            Kind::Rng => true,
            Kind::Net { .. } => q == 0,
            Kind::Console { .. } => q == 0 || q == 2,
        };
        let mut expect: Expected = Vec::new();
        // Frames waiting on the tap, input waiting for the console.
        let mut frames = Vec::new();
        if let Kind::Net { peer, dev } = &kind {
            let mut buf = [0u8; 256];
            while peer.recv(&mut buf).is_ok() {}
            if clean {
                // Frames left from earlier rounds would come first.
                while dev.recv(&mut buf).is_ok() {}
            }
            for _ in 0..g.rng.below(6) {
                // A tap never delivers empty frames; a socket can, and the device must
                // cope, but the model leaves them to the random rounds.
                let len = if clean {
                    g.rng.pick(&[14usize, 60, 1514, 1600, 4000])
                } else {
                    g.rng.pick(&[0usize, 14, 60, 1514, 4000, 70_000])
                };
                let f = g.random_bytes(len);
                if peer.send(&f).is_ok() {
                    frames.push(f);
                }
            }
        }
        if let Some(input) = &d.console_input {
            let n = g.rng.below(300) as usize;
            let bytes = g.random_bytes(n);
            input.push(&bytes);
        }
        if let Kind::Console { out } = &kind {
            out.0.lock().unwrap().clear();
        }
        for &(q, ring) in &up.rings {
            let mut ring = ring;
            if !clean && g.rng.one_in(3) {
                continue;
            }
            let mut free: Vec<u16> = (0..ring.size).collect();
            g.rng.shuffle(&mut free);
            if !clean && g.rng.one_in(2) {
                for i in 0..ring.size {
                    g.random_desc(ring.desc, i, ring.size);
                }
            }
            ring.avail_idx = mem
                .read_obj(GuestAddress(ring.avail.wrapping_add(2)))
                .unwrap_or(0);
            let before = ring.used_idx(&mem);
            let w = writable_q(q);
            let mut chains = Vec::new();
            let n = if clean {
                g.rng.range(1, 4)
            } else {
                match g.rng.below(10) {
                    0 => 0,
                    1..=7 => g.rng.range(1, 8),
                    8 => g.rng.range(1, u64::from(ring.size)),
                    _ => u64::from(ring.size) + g.rng.range(1, 20),
                }
            };
            for _ in 0..n {
                let head = if clean || g.rng.one_in(3) {
                    let len = g.rng.pick(&[1usize, 8, 64, 100, 1600, 5000]);
                    let Some((segs, content)) = plain_chain(&mut g, len, w) else {
                        break;
                    };
                    let ind = g.rng.one_in(5);
                    let h = place_chain(&mut g, &ring, &mut free, &segs, ind, Link::Fine);
                    if let Some(h) = h {
                        chains.push((h, segs, content));
                    }
                    h
                } else if g.rng.one_in(2) {
                    let (segs, ind, link) = broken_plain_chain(&mut g, w);
                    place_chain(&mut g, &ring, &mut free, &segs, ind, link)
                } else {
                    None
                };
                let Some(head) = head.or_else(|| {
                    (!clean).then(|| match g.rng.below(4) {
                        0 => ring.size.wrapping_add(g.rng.below(10) as u16),
                        _ => g.rng.below(u64::from(ring.size)) as u16,
                    })
                }) else {
                    break;
                };
                ring.stage(&mem, head);
            }
            ring.publish(&mem);
            trace!(
                "q{q}: clean {clean}, avail idx {}, used before {before}, {} clean chains",
                ring.avail_idx,
                chains.len()
            );
            expect.push((q, before, ring, chains));
        }
        for (q, _, _, _) in &expect {
            notify(&mut d, &up, *q);
        }
        if g.rng.one_in(2) || matches!(kind, Kind::Net { .. }) {
            // The tap / console input became readable.
            d.w.process_event(0);
        }
        d.w.poll();
        check_round(gm, &mem, &g.targeted, two);
        if g.any_targeted() {
            stats.canary_targeted += 1;
        }
        for (_, before, ring, _) in &expect {
            let done = ring.used_idx(&mem).wrapping_sub(*before);
            stats.completed += u64::from(done.min(ring.size));
        }
        if clean {
            stats.clean_rounds += 1;
            assert!(!d.needs_reset(), "well-formed buffers set NEEDS_RESET");
            generic_clean_checks(&kind, &mem, &expect, &frames, stats);
        }
        if up.modern && up.version1 && d.needs_reset() {
            stats.device_errors += 1;
            check_stays_stopped(&mut d, &mem, &up);
            check_round(gm, &mem, &g.targeted, two);
            let legacy = transitional && g.rng.one_in(4);
            up = bring_up(&mut d, &mut g, &queues, legacy);
        }
    }
    drop(d);
    check_round(gm, &mem, &g.targeted, two);
}

/// Per queue: (queue, used index before, ring, chains as (head, buffers, content)).
type Expected = Vec<(u16, u16, Ring, Vec<(u16, Vec<Seg>, Vec<u8>)>)>;

/// Well-formed rounds: entropy fills buffers, transmitted frames reach the tap intact,
/// received frames land in order, console output arrives in order.
fn generic_clean_checks(
    kind: &Kind,
    mem: &GuestMemoryMmap,
    expect: &Expected,
    frames: &[Vec<u8>],
    stats: &mut Stats,
) {
    for (q, before, ring, chains) in expect {
        let done = ring.used_idx(mem).wrapping_sub(*before);
        match kind {
            Kind::Rng => {
                assert_eq!(
                    usize::from(done),
                    chains.len(),
                    "rng completed every buffer"
                );
                for (k, (head, segs, _)) in chains.iter().enumerate() {
                    let (id, len) = ring.used_elem(mem, before.wrapping_add(k as u16));
                    let total: usize = segs.iter().map(|s| s.len as usize).sum();
                    assert_eq!((id, len as usize), (u32::from(*head), total.min(65536)));
                    let got = read_segs(mem, segs);
                    assert!(got[..len as usize].iter().all(|&b| b == 0x5a));
                    stats.clean_checked += 1;
                }
            }
            Kind::Net { peer, .. } if *q == 1 => {
                assert_eq!(usize::from(done), chains.len(), "tx completed every frame");
                for (_, _, content) in chains {
                    let mut buf = vec![0u8; 70_000];
                    let n = peer.recv(&mut buf).expect("frame on the tap");
                    assert_eq!(&buf[..n], content.as_slice(), "transmitted frame");
                    stats.clean_checked += 1;
                }
            }
            Kind::Net { .. } => {
                // Each receive buffer takes the next frame, or drops it when too small.
                let got = usize::from(done);
                assert_eq!(got, chains.len().min(frames.len()), "rx buffers used");
                for (k, (head, segs, _)) in chains.iter().take(got).enumerate() {
                    let (id, len) = ring.used_elem(mem, before.wrapping_add(k as u16));
                    assert_eq!(id, u32::from(*head));
                    let total: usize = segs.iter().map(|s| s.len as usize).sum();
                    let f = &frames[k];
                    if total >= f.len() {
                        assert_eq!(len as usize, f.len());
                        assert_eq!(&read_segs(mem, segs)[..f.len()], f.as_slice());
                    } else {
                        assert_eq!(len, 0, "a frame too big for the buffer is dropped");
                    }
                    stats.clean_checked += 1;
                }
            }
            Kind::Console { out } if *q == 1 => {
                assert_eq!(usize::from(done), chains.len(), "console output completed");
                let want: Vec<u8> = chains.iter().flat_map(|c| c.2.clone()).collect();
                assert_eq!(*out.0.lock().unwrap(), want, "console output");
                stats.clean_checked += chains.len() as u64;
            }
            Kind::Console { .. } => {}
        }
    }
}

#[test]
fn fuzz_virtqueue_rng_net_console() {
    let mut gm = GuardedMemory::new();
    run_target("fuzz_virtqueue_rng_net_console", |rng, stats| {
        generic_iteration(rng, stats, &mut gm)
    });
}
