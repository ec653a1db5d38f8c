//! virtio-rng, virtio-net, virtio-console: the generic queue paths.

use crate::*;

#[derive(Clone, Default)]
pub(crate) struct Sink(pub(crate) Arc<Mutex<Vec<u8>>>);
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

pub(crate) enum Kind {
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
pub(crate) fn plain_chain(g: &mut Gen, len: usize, write: bool) -> Option<(Vec<Seg>, Vec<u8>)> {
    let content = if write {
        Vec::new()
    } else {
        g.random_bytes(len)
    };
    let segs = stream_segs(g, &content, len, write)?;
    Some((segs, content))
}

/// Broken chains: random segments, wrong directions, bad links.
pub(crate) fn broken_plain_chain(g: &mut Gen, write: bool) -> (Vec<Seg>, bool, Link) {
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

pub(crate) fn generic_iteration(rng: &mut XorShift, stats: &mut Stats, gm: &mut GuardedMemory) {
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
                // Merged receive buffers change which buffers a frame takes; the model
                // knows one buffer per frame (merging has its own tests in net/mod.rs).
                Driver::new(
                    &plan(
                        DEVICE_NET,
                        transitional,
                        false,
                        &[("romfile", ""), ("mrg_rxbuf", "off")],
                    ),
                    VirtioBackend::Net(NetBackend {
                        tap,
                        mac: machine::MacAddr::FIRST_DEFAULT,
                        more_queues: Vec::new(),
                        announce: None,
                    }),
                    mem.clone(),
                ),
                Kind::Net { peer: b, dev },
                vec![0, 1],
            )
        }
        _ => {
            let out = Sink::default();
            let ports = rng.choose(&["1", "2"]);
            (
                Driver::new(
                    &plan(DEVICE_CONSOLE, transitional, false, &[("max_ports", ports)]),
                    VirtioBackend::Console(ConsoleBackend {
                        output: Box::new(out.clone()),
                        ports: Default::default(),
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
        let healthy = up.healthy(&mut d, &g) && d.status() & status::DRIVER_OK != 0;
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
                    g.rng.choose(&[14usize, 60, 1514, 1600, 4000])
                } else {
                    g.rng.choose(&[0usize, 14, 60, 1514, 4000, 70_000])
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
                    let len = g.rng.choose(&[1usize, 8, 64, 100, 1600, 5000]);
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
            // The socket peer has no virtio-net header: the device strips the guest's on
            // transmit and writes its own on receive (10 bytes, 12 with VERSION_1).
            let hdr = if up.version1 { 12 } else { 10 };
            generic_clean_checks(&kind, &mem, &expect, &frames, hdr, stats);
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
pub(crate) type Expected = Vec<(u16, u16, Ring, Vec<(u16, Vec<Seg>, Vec<u8>)>)>;

/// Well-formed rounds: entropy fills buffers, transmitted frames reach the tap intact,
/// received frames land in order, console output arrives in order.
pub(crate) fn generic_clean_checks(
    kind: &Kind,
    mem: &GuestMemoryMmap,
    expect: &Expected,
    frames: &[Vec<u8>],
    hdr: usize,
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
                    // A chain with no frame after the header sends nothing.
                    if content.len() <= hdr {
                        continue;
                    }
                    let mut buf = vec![0u8; 70_000];
                    let n = peer.recv(&mut buf).expect("frame on the socket");
                    assert_eq!(&buf[..n], &content[hdr..], "transmitted frame");
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
                    if total >= hdr + f.len() {
                        assert_eq!(len as usize, hdr + f.len());
                        let got = read_segs(mem, segs);
                        let mut header = vec![0u8; hdr];
                        if hdr == 12 {
                            header[10] = 1;
                        }
                        assert_eq!(&got[..hdr], header.as_slice(), "the device's header");
                        assert_eq!(&got[hdr..hdr + f.len()], f.as_slice());
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
pub(crate) fn fuzz_virtqueue_rng_net_console() {
    let mut gm = GuardedMemory::new();
    run_target("fuzz_virtqueue_rng_net_console", |rng, stats| {
        generic_iteration(rng, stats, &mut gm)
    });
}
