//! virtio-blk: a table of hand-made bad chains.

use crate::*;

/// What a bad chain may do: fail the request with one of `statuses` (as the device's
/// status byte) or stop the device with NEEDS_RESET; `Zero` is a zero-length transfer
/// the device completes as QEMU does (the misdirected buffer must stay untouched).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Expect {
    FailOrReset,
    Reset,
    Zero,
}

pub(crate) struct BadCase {
    pub(crate) name: &'static str,
    /// (addr, len, flags, next) per descriptor of the table, head first.
    pub(crate) descs: Vec<(u64, u32, u16, u16)>,
    /// Extra descriptors written into an indirect table at INDIRECT.0.
    pub(crate) indirect: Vec<(u64, u32, u16, u16)>,
    pub(crate) header: [u8; 16],
    pub(crate) expect: Expect,
    /// A device-readable buffer the device must not write.
    pub(crate) readonly_buf: Option<(u64, u32)>,
}

pub(crate) const HDR: u64 = DATA.0;
pub(crate) const STATUS: u64 = DATA.0 + 0x100;
pub(crate) const BUF: u64 = DATA.0 + 0x1000;
pub(crate) const N: u16 = VRING_DESC_F_NEXT;
pub(crate) const W: u16 = VRING_DESC_F_WRITE;
pub(crate) const I: u16 = VRING_DESC_F_INDIRECT;

pub(crate) fn bad_cases(cap: u64) -> Vec<BadCase> {
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
pub(crate) fn blk_bad_chain_table() {
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
                block_backend(img.create(&[0x42], cap_bytes, false), Default::default()),
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
