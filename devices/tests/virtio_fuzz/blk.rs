//! virtio-blk: a model of the device and the random target.

use crate::*;

pub(crate) const T_IN: u32 = 0;
pub(crate) const T_OUT: u32 = 1;
pub(crate) const T_FLUSH: u32 = 4;
pub(crate) const T_GET_ID: u32 = 8;
pub(crate) const T_DISCARD: u32 = 11;
pub(crate) const T_WRITE_ZEROES: u32 = 13;
pub(crate) const S_OK: u8 = 0;
pub(crate) const S_IOERR: u8 = 1;
pub(crate) const S_UNSUPP: u8 = 2;
pub(crate) const SECTOR: u64 = 512;
pub(crate) const MAX_DWZ_SECTORS: u32 = 0x3f_ffff;

/// What the device was built with, for the model.
#[derive(Debug, Clone)]
pub(crate) struct BlkSetup {
    pub(crate) capacity: u64,
    pub(crate) read_only: bool,
    pub(crate) writeback: bool,
    pub(crate) discard: bool,
    pub(crate) write_zeroes: bool,
    pub(crate) serial: String,
}

/// The disk as the model believes it is; sectors not `known` were discarded.
pub(crate) struct Shadow {
    pub(crate) data: Vec<u8>,
    pub(crate) known: Vec<bool>,
}

impl Shadow {
    pub(crate) fn new(data: Vec<u8>) -> Self {
        let sectors = data.len().div_ceil(SECTOR as usize);
        Self {
            data,
            known: vec![true; sectors],
        }
    }

    /// Compare `got` with the known sectors at byte offset `off` (sector aligned); the
    /// first differing byte.
    pub(crate) fn mismatch(&self, off: usize, got: &[u8]) -> Option<usize> {
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
pub(crate) enum ReadBack {
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
pub(crate) struct CleanReq {
    pub(crate) ty: u32,
    pub(crate) sector: u64,
    pub(crate) out: Vec<u8>,
    pub(crate) in_len: usize,
    pub(crate) in_segs: Vec<Seg>,
    pub(crate) head: u16,
}

pub(crate) fn range_ok(cap: u64, sector: u64, bytes: u64) -> bool {
    bytes.is_multiple_of(SECTOR)
        && sector
            .checked_mul(SECTOR)
            .and_then(|o| o.checked_add(bytes))
            .is_some_and(|end| end <= cap * SECTOR)
}

/// Expected (status, used length, bytes read into the writable data) for `r`, applying
/// writes to `shadow`.
pub(crate) fn model_blk(s: &BlkSetup, shadow: &mut Shadow, r: &CleanReq) -> (u8, u32, ReadBack) {
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

pub(crate) fn blk_header(ty: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&ty.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

pub(crate) fn random_type(rng: &mut XorShift) -> u32 {
    match rng.below(16) {
        0..=3 => T_IN,
        4..=7 => T_OUT,
        8 => T_FLUSH,
        9 => T_GET_ID,
        10 => T_DISCARD,
        11 => T_WRITE_ZEROES,
        12 => T_IN | 0x8000_0000,
        13 => rng.choose(&[2, 3, 5, 7, 9, 12, 14, 0xff, 0x7fff_ffff]),
        _ => rng.next_u32(),
    }
}

pub(crate) fn random_sector(rng: &mut XorShift, cap: u64) -> u64 {
    match rng.below(10) {
        0..=5 => rng.below(cap.max(1)),
        6 => cap.saturating_sub(rng.below(4)),
        7 => cap + rng.below(4),
        8 => rng.choose(&[u64::MAX, u64::MAX / SECTOR, u64::MAX / SECTOR + 1, 1 << 55]),
        _ => rng.next_u64(),
    }
}

/// Data length for a request of type `ty` on a disk of `cap` sectors.
pub(crate) fn random_data_len(rng: &mut XorShift, ty: u32, cap: u64) -> usize {
    match ty & !0x8000_0000 {
        T_IN | T_OUT => match rng.below(10) {
            0..=6 => (SECTOR * rng.range(1, cap.clamp(1, 16))) as usize,
            7 => 0,
            8 => rng.range(1, 2000) as usize,
            _ => (SECTOR * rng.range(1, 128)) as usize,
        },
        T_GET_ID => rng.choose(&[20, 20, 0, 1, 19, 21, 64]),
        T_DISCARD | T_WRITE_ZEROES => rng.choose(&[16, 16, 16, 0, 8, 32]),
        _ => rng.choose(&[0, 0, 16, 512]),
    }
}

/// The discard / write-zeroes segment.
pub(crate) fn dwz_segment(rng: &mut XorShift, ty: u32, cap: u64, len: usize) -> Vec<u8> {
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
pub(crate) fn clean_blk_request(g: &mut Gen, cap: u64) -> Option<(Vec<Seg>, CleanReq)> {
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
pub(crate) fn broken_blk_request(g: &mut Gen, cap: u64) -> (Vec<Seg>, bool, Link) {
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

pub(crate) struct BlkCase {
    pub(crate) setup: BlkSetup,
    pub(crate) transitional: bool,
    pub(crate) pcie: bool,
    pub(crate) queue_size: u16,
    pub(crate) num_queues: u16,
    pub(crate) config_wce: bool,
}

pub(crate) fn random_blk_case(rng: &mut XorShift) -> (BlkCase, u64) {
    let len = rng.choose(&[0u64, 512, 4096, 0x1_0000, 0x1_0000 + 300, 0x4_0000]);
    let serial_len = rng.choose(&[0usize, 5, 20, 30]);
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
            queue_size: rng.choose(&[256, 256, 128, 16, 4, 2, 1]),
            num_queues: rng.choose(&[1, 1, 2]),
            config_wce: !rng.one_in(3),
        },
        len,
    )
}

pub(crate) fn blk_device(
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
            stats: Default::default(),
            size: None,
            disk_size: Default::default(),
            auto_num_queues: 1,
        }),
        mem.clone(),
    )
}

/// One round of well-formed requests on queue 0, checked against the model.
pub(crate) fn blk_clean_round(
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
    // Requests complete in any order (several are in flight): find each one's used
    // element by its head. The device runs conflicting requests in submission order, so
    // the model applies them in that order.
    let used: Vec<(u32, u32)> = (0..reqs.len())
        .map(|k| ring.used_elem(mem, used_before.wrapping_add(k as u16)))
        .collect();
    for (k, r) in reqs.iter().enumerate() {
        let (status_exp, used_exp, data_exp) = model_blk(setup, &mut shadow, r);
        let matching: Vec<_> = used
            .iter()
            .filter(|(id, _)| *id == u32::from(r.head))
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "request {k}: one used element for head {}",
            r.head
        );
        let used_len = matching[0].1;
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
pub(crate) fn blk_random_round(
    d: &mut Driver,
    g: &mut Gen,
    up: &Up,
    setup: &BlkSetup,
    stats: &mut Stats,
) {
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

pub(crate) fn blk_iteration(
    rng: &mut XorShift,
    stats: &mut Stats,
    gm: &mut GuardedMemory,
    img: &TempImage,
) {
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
        let healthy = up.healthy(&mut d, &g);
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
pub(crate) fn fuzz_blk_random_queues() {
    let mut gm = GuardedMemory::new();
    let img = TempImage::new("fuzz-blk");
    run_target("fuzz_blk_random_queues", |rng, stats| {
        blk_iteration(rng, stats, &mut gm, &img)
    });
}

/// The harness itself: a buffer the guest points at a canary changes it and the check
/// notices (unless told the canary was targeted); a stray host write is noticed too.
#[test]
pub(crate) fn canary_checks_notice_writes() {
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
