//! Generators of descriptor chains in guest memory.

use crate::*;

/// A buffer of a chain: guest address, length, device-writable.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seg {
    pub(crate) addr: u64,
    pub(crate) len: u32,
    pub(crate) write: bool,
}

/// Random guest-memory contents and descriptors; remembers whether anything it wrote or
/// pointed at overlaps a guest canary (which the device may then legitimately change).
pub(crate) struct Gen<'a> {
    pub(crate) rng: &'a mut XorShift,
    pub(crate) mem: &'a GuestMemoryMmap,
    pub(crate) two_regions: bool,
    pub(crate) data_cursor: u64,
    pub(crate) data_b_cursor: u64,
    pub(crate) ind_cursor: u64,
    /// Per guest canary: something the device may write points at it.
    pub(crate) targeted: [bool; 2],
}

impl<'a> Gen<'a> {
    pub(crate) fn new(rng: &'a mut XorShift, mem: &'a GuestMemoryMmap, two_regions: bool) -> Self {
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

    pub(crate) fn any_targeted(&self) -> bool {
        self.targeted.iter().any(|&t| t)
    }

    /// Start a new round's allocations.
    pub(crate) fn rewind(&mut self) {
        self.data_cursor = DATA.0;
        self.data_b_cursor = DATA_B.0;
        self.ind_cursor = INDIRECT.0;
    }

    /// Note a guest range the device may touch.
    pub(crate) fn note(&mut self, addr: u64, len: u64) {
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
    pub(crate) fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
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
    pub(crate) fn alloc_indirect(&mut self, n: u64) -> Option<u64> {
        let at = self.ind_cursor;
        if at + 16 * n > INDIRECT.1 {
            return None;
        }
        self.ind_cursor = at + 16 * n;
        Some(at)
    }

    pub(crate) fn write(&mut self, addr: u64, bytes: &[u8]) {
        self.note(addr, bytes.len() as u64);
        let _ = self.mem.write_slice(bytes, GuestAddress(addr));
    }

    pub(crate) fn random_bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.rng.fill(&mut v);
        v
    }

    /// Note a descriptor the device may write through: device-writable, not indirect, and
    /// wholly inside one guest region (a buffer that is not cannot be written at all).
    pub(crate) fn note_desc(&mut self, addr: u64, len: u32, flags: u16) {
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
    pub(crate) fn desc(
        &mut self,
        table: u64,
        idx: u64,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        self.note_desc(addr, len, flags);
        let at = table.wrapping_add(16 * idx);
        self.write(at, &Ring::desc_bytes(addr, len, flags, next));
        trace!("  desc {table:#x}[{idx}] = {addr:#x} len {len:#x} flags {flags:#x} next {next}");
    }

    /// An address of some interesting kind for a buffer of `len` bytes.
    pub(crate) fn addr(&mut self, len: u32) -> u64 {
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
                let (s, e) = self.rng.choose(&guest_canaries(self.two_regions));
                self.rng.range(s, e - 1)
            }
            95 | 96 => self.rng.range(0, 0x1000),
            _ => 0,
        }
    }

    pub(crate) fn len(&mut self) -> u32 {
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

    pub(crate) fn flags(&mut self) -> u16 {
        const N: u16 = VRING_DESC_F_NEXT;
        const W: u16 = VRING_DESC_F_WRITE;
        const I: u16 = VRING_DESC_F_INDIRECT;
        match self.rng.below(12) {
            0..=9 => self
                .rng
                .choose(&[0, N, W, N | W, N, N | W, I, I | N, I | W, N]),
            10 => self.rng.next_u32() as u16,
            _ => N | W | I,
        }
    }

    pub(crate) fn next(&mut self, size: u16, idx: u16) -> u16 {
        match self.rng.below(8) {
            0..=3 => self.rng.below(u64::from(size)) as u16,
            4 => idx,
            5 => idx.wrapping_sub(1),
            6 => size.wrapping_add(self.rng.below(4) as u16),
            _ => self.rng.next_u32() as u16,
        }
    }

    /// A garbage descriptor: random address, length, flags and next.
    pub(crate) fn random_desc(&mut self, table: u64, idx: u16, size: u16) {
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
pub(crate) enum Link {
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
pub(crate) fn place_chain(
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
                    .choose(&[16 * n as u32 + 8, 16 * (n as u32 + 200), 0, 7, 0xffff_fff0])
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
pub(crate) fn stream_segs(
    g: &mut Gen,
    content: &[u8],
    len: usize,
    write: bool,
) -> Option<Vec<Seg>> {
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
        let align = g.rng.choose(&[1, 2, 8, 512, 4096]);
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

pub(crate) fn read_segs(mem: &GuestMemoryMmap, segs: &[Seg]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in segs {
        let mut b = vec![0u8; s.len as usize];
        mem.read_slice(&mut b, GuestAddress(s.addr)).unwrap();
        out.extend(b);
    }
    out
}
