//! Multiqueue devices split into queue groups, each served under a lock of its own: a busy
//! queue (its group's lock held, as its handler does while serving) holds up no other.

use super::*;

/// Hold `group` (a queue group's lock, as its handler does while it serves its queues) on
/// another thread until the returned sender is used or dropped.
fn hold_group(
    group: Arc<std::sync::Mutex<super::core::Group>>,
) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    use std::sync::mpsc::channel;
    let (held_tx, held_rx) = channel();
    let (release_tx, release_rx) = channel::<()>();
    let busy = std::thread::spawn(move || {
        let _guard = group.lock().unwrap_or_else(|e| e.into_inner());
        held_tx.send(()).unwrap();
        // Hang guard only: the test releases it once it has its answer.
        let _ = release_rx.recv_timeout(std::time::Duration::from_secs(120));
    });
    held_rx.recv().unwrap();
    (release_tx, busy)
}

/// Run `w.poll()` on a thread of its own: the worker back, unless it did not finish
/// within the hang guard.
fn poll_elsewhere(mut w: VirtioWorker) -> Option<VirtioWorker> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        w.poll();
        let _ = tx.send(w);
    });
    rx.recv_timeout(std::time::Duration::from_secs(60)).ok()
}

/// Multiqueue virtio-blk: each request queue is a group with a worker of its own, and a
/// write on queue 1 is served while queue 0's handler is busy (its lock held), then queue 0
/// works on.
#[test]
fn a_busy_request_queue_does_not_hold_up_another() {
    let (path, file) = image(1 << 20);
    let mut d = build(
        &plan(DEVICE_BLK, false, false, &[("num-queues", "2")]),
        block_backend(file, Default::default()),
    );
    d.d.modern_begin(super::regs::features::VERSION_1);
    let rings = d.rings;
    d.d.modern_ring(0, &rings[0]);
    d.d.modern_ring(1, &rings[1]);
    d.d.modern_driver_ok();
    d.w.poll();
    assert_eq!(d.w.groups(), 2, "a group per request queue");
    let mut lanes = d.w.split_lanes();
    assert_eq!(lanes.len(), 1, "queue 1 has a worker of its own");
    let lane = lanes.remove(0);
    let group0 = super::pci_transport::lock(&d.f.core_handle())
        .group_of(0)
        .cloned()
        .expect("queue 0's group");
    let (release, busy) = hold_group(group0);
    // A 4 KiB write at sector 8 on queue 1.
    let (hdr, data, st) = (DATA - 0x100, DATA, DATA - 0x10);
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&1u32.to_le_bytes());
    h[8..16].copy_from_slice(&8u64.to_le_bytes());
    d.mem.write_slice(&h, GuestAddress(hdr)).unwrap();
    d.mem
        .write_slice(&[0x5a; 4096], GuestAddress(data))
        .unwrap();
    d.mem.write_obj(0xffu8, GuestAddress(st)).unwrap();
    d.submit(1, &[(hdr, 16, false), (data, 4096, false), (st, 1, true)]);
    d.d.notify_modern(1);
    let lane = poll_elsewhere(lane);
    let _ = release.send(());
    busy.join().unwrap();
    assert!(lane.is_some(), "queue 1 was served while queue 0 was busy");
    assert_eq!(d.rings[1].used_idx(&d.mem), 1);
    assert_eq!(d.mem.read_obj::<u8>(GuestAddress(st)).unwrap(), 0);
    let mut disk = vec![0u8; 4096];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact_at_compat(8 * 512, &mut disk);
    assert!(disk.iter().all(|&b| b == 0x5a), "the write is on the image");
    // Queue 0, on the device's own worker, works on.
    let (s, _) = d.blk_req(&modern_notify, 1, 16, Some((DATA, 512, false)));
    assert_eq!(s, 0);
    // A reset reaches every group: the rings are gone, and so is the queue's state.
    d.d.common_w(common::Q_SELECT, 1, 2);
    assert_eq!(d.d.common_r(common::Q_ENABLE, 2), 1, "queue 1 enabled");
    d.d.common_w(common::STATUS, 0, 1);
    d.d.common_w(common::Q_SELECT, 1, 2);
    assert_eq!(d.d.common_r(common::Q_ENABLE, 2), 0, "queue 1 reset");
}

/// Multiqueue virtio-net (two queue pairs over two sockets): each pair is a group with a
/// worker of its own; pair 1 runs once the control queue sets two pairs, and it sends and
/// receives while pair 0's handler is busy.
#[test]
fn each_queue_pair_of_a_multiqueue_net_is_served_on_its_own() {
    use super::net::features::{F_CTRL_VQ, F_MQ};
    use super::net::NetBackend;
    use std::os::unix::net::UnixDatagram;
    let socket = || {
        let (ours, peer) = UnixDatagram::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        peer.set_nonblocking(true).unwrap();
        (std::fs::File::from(std::os::fd::OwnedFd::from(ours)), peer)
    };
    let ((tap0, _peer0), (tap1, peer1)) = (socket(), socket());
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let backend = VirtioBackend::Net(NetBackend {
        tap: tap0,
        mac: machine::MacAddr::FIRST_DEFAULT,
        more_queues: vec![tap1],
        announce: None,
    });
    let mut d = Driver::new(
        &plan(crate::testing::DEVICE_NET, false, false, &[("mq", "on")]),
        backend,
        mem,
    );
    let mut r: Vec<Ring> = (0..5u64)
        .map(|q| {
            let base = 0x10000 + q * 0x4000;
            Ring::new(64, base, base + 0x1000, base + 0x2000)
        })
        .collect();
    d.modern_begin(super::regs::features::VERSION_1 | F_CTRL_VQ | F_MQ);
    for (q, ring) in r.iter().enumerate() {
        d.modern_ring(q as u16, ring);
    }
    d.modern_driver_ok();
    d.w.poll();
    assert_eq!(d.w.groups(), 2, "a group per queue pair");
    let mut lanes = d.w.split_lanes();
    assert_eq!(lanes.len(), 1, "pair 1 has a worker of its own");
    let mut lane = lanes.remove(0);
    let frame = [0xffu8; 60];
    let (tx_buf, rx_buf, cmd) = (0x40000u64, 0x41000u64, 0x42000u64);
    // A frame to send on pair 1 (12-byte header, stripped for the socket peer).
    d.mem.write_slice(&[0u8; 12], GuestAddress(tx_buf)).unwrap();
    d.mem
        .write_slice(&frame, GuestAddress(tx_buf + 12))
        .unwrap();
    r[3].push_chain(&d.mem, 0, &[(tx_buf, 72, false)]);
    d.notify_modern(3);
    lane = poll_elsewhere(lane).expect("pair 1's worker");
    assert_eq!(
        r[3].used_idx(&d.mem),
        0,
        "one pair until the driver sets two"
    );
    // VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET 2 on the control queue (the device's worker).
    d.mem.write_slice(&[4, 0, 2, 0], GuestAddress(cmd)).unwrap();
    r[4].push_chain(
        &d.mem,
        0,
        &[(cmd, 2, false), (cmd + 2, 2, false), (cmd + 0x100, 1, true)],
    );
    d.notify_modern(4);
    d.w.poll();
    assert_eq!(d.mem.read_obj::<u8>(GuestAddress(cmd + 0x100)).unwrap(), 0);
    let group0 = super::pci_transport::lock(&d.f.core_handle())
        .group_of(0)
        .cloned()
        .expect("pair 0's group");
    let (release, busy) = hold_group(group0);
    peer1.send(&frame).unwrap();
    r[2].push_chain(&d.mem, 0, &[(rx_buf, 2048, true)]);
    d.notify_modern(2);
    d.notify_modern(3);
    let lane = poll_elsewhere(lane);
    let _ = release.send(());
    busy.join().unwrap();
    assert!(lane.is_some(), "pair 1 was served while pair 0 was busy");
    let mut got = [0u8; 128];
    assert_eq!(peer1.recv(&mut got).ok(), Some(60), "pair 1 sent its frame");
    assert_eq!(r[3].used_idx(&d.mem), 1);
    assert_eq!(r[2].used_idx(&d.mem), 1, "pair 1 received");
    assert_eq!(r[2].used_elem(&d.mem, 0), (0, 72));
}
