//! virtio-net device tests over a datagram socket pair and a simulated driver.

use super::tx::send_reported;
use super::*;

#[test]
fn header_length_follows_features() {
    assert_eq!(Net::hdr_len(VERSION_1), 12);
    assert_eq!(Net::hdr_len(F_MRG_RXBUF), 12);
    assert_eq!(Net::hdr_len(F_MAC), 10);
}

#[test]
fn a_failing_send_is_an_error_naming_the_device_once() {
    let log = crate::logging::captured();
    let name = "virtio-net-pci id=txfail (pcie.0:03.0)";
    let frame = [0u8; 60];
    let iov = [libc::iovec {
        iov_base: frame.as_ptr() as *mut libc::c_void,
        iov_len: frame.len(),
    }];
    let lines = |log: &std::sync::Mutex<Vec<(String, String)>>| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l.starts_with(name))
            .count()
    };
    let before = lines(log);
    // A read-only descriptor refuses every write (EBADF): one line, not one per frame.
    let refusing = File::open("/dev/null").unwrap();
    let mut failing = false;
    for _ in 0..3 {
        send_reported(refusing.as_raw_fd(), &iov, name, &mut failing);
    }
    assert!(failing);
    assert_eq!(lines(log) - before, 1);
    let text = log
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(_, l)| l.starts_with(name))
        .map(|(_, l)| l.clone())
        .unwrap();
    assert!(text.contains("cannot send a frame"), "{text}");
    // A send that works ends the episode; the next failure is reported again.
    let working = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap();
    send_reported(working.as_raw_fd(), &iov, name, &mut failing);
    assert!(!failing);
    send_reported(refusing.as_raw_fd(), &iov, name, &mut failing);
    assert_eq!(lines(log) - before, 2);
}

use crate::testing::{virtio_plan, Driver, Ring, DEVICE_NET};
use crate::virtio::VirtioBackend;
use std::os::unix::net::UnixDatagram;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const QS: u16 = 64;
const BUFS: u64 = 0x40000;

/// A modern virtio-net over a datagram socket pair (the netdev side is returned).
fn net_over_socket(props: &[(&str, &str)]) -> (Driver, UnixDatagram) {
    net_with_announce(props, None)
}

fn net_with_announce(
    props: &[(&str, &str)],
    announce: Option<Arc<EventFd>>,
) -> (Driver, UnixDatagram) {
    let (ours, peer) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let backend = VirtioBackend::Net(NetBackend {
        tap: File::from(std::os::fd::OwnedFd::from(ours)),
        mac: machine::MacAddr::FIRST_DEFAULT,
        more_queues: Vec::new(),
        announce,
    });
    let plan = virtio_plan(DEVICE_NET, false, false, props);
    (Driver::new(&plan, backend, mem), peer)
}

fn rings() -> [Ring; 3] {
    [0u64, 1, 2].map(|q| {
        let base = 0x10000 + q * 0x4000;
        Ring::new(QS, base, base + 0x1000, base + 0x2000)
    })
}

#[test]
fn features_follow_properties_and_the_backend() {
    let (mut d, _peer) = net_over_socket(&[]);
    let f = d.device_features();
    // Over a socket (no vnet header) the offloads go, as QEMU clears them.
    assert_eq!(f & NEED_VNET_HDR, 0);
    let want = F_MAC | F_MRG_RXBUF | F_STATUS | F_CTRL_VQ | F_CTRL_RX | F_CTRL_VLAN;
    assert_eq!(f & want, want, "{f:#x}");
    assert_eq!(f & (F_GSO | F_MQ), 0, "{f:#x}");
    let (mut d, _peer) = net_over_socket(&[("mrg_rxbuf", "off"), ("ctrl_vq", "off")]);
    let f = d.device_features();
    assert_eq!(f & (F_MRG_RXBUF | F_CTRL_VQ), 0, "{f:#x}");
    // Over a tap the offloads are offered (the tap is not touched to ask).
    let tap = File::open("/dev/null").unwrap();
    let mac = machine::MacAddr::FIRST_DEFAULT;
    let more_queues = Vec::new();
    let n = Net::new(NetBackend {
        tap,
        mac,
        more_queues,
        announce: None,
    });
    let host = F_CSUM | F_HOST_TSO4 | F_HOST_TSO6 | F_HOST_ECN | F_HOST_UFO;
    assert_eq!(
        n.features() & (host | GUEST_OFFLOADS),
        host | GUEST_OFFLOADS
    );
    assert_eq!(n.legacy_features(), F_GSO);
    // QEMU 7.2's device features over a tap (x-query-virtio-status: bits 0-2, 5-21
    // and 23).
    let qemu72: u64 = [
        0, 1, 2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 23,
    ]
    .iter()
    .fold(0, |a, b| a | 1 << b);
    assert_eq!(n.features(), qemu72);
    // Over a socket peer QEMU keeps GSO, CTRL_GUEST_OFFLOADS and the control features.
    let (mut d, _peer) = net_over_socket(&[("mq", "on")]);
    let want = (qemu72 & !NEED_VNET_HDR) | F_MQ;
    let legacy_only = F_GSO;
    assert_eq!(d.device_features() & 0xff_ffff, want & !legacy_only);
    assert_eq!(tun_offloads(GUEST_OFFLOADS), 0x1f);
    assert_eq!(
        tun_offloads(F_GUEST_TSO4),
        0,
        "no TSO without checksum offload"
    );
}

/// A frame larger than one buffer spans several, num_buffers says how many, and all
/// of them are in the used ring together.
#[test]
fn a_large_frame_spans_merged_buffers() {
    let (mut d, peer) = net_over_socket(&[]);
    let mut r = rings();
    d.modern_begin(VERSION_1 | F_MRG_RXBUF);
    d.modern_ring(0, &r[0]);
    d.modern_ring(1, &r[1]);
    for k in 0..8u64 {
        r[0].push_chain(&d.mem, k as u16, &[(BUFS + k * 0x1000, 600, true)]);
    }
    d.modern_driver_ok();
    d.w.poll();
    let frame: Vec<u8> = (0..1400u32).map(|i| (i % 251) as u8).collect();
    peer.send(&frame).unwrap();
    d.w.process_event(0);
    let used = r[0].used_idx(&d.mem);
    assert_eq!(used, 3, "1412 bytes with the header in 600-byte buffers");
    let lens: Vec<(u32, u32)> = (0..3).map(|n| r[0].used_elem(&d.mem, n)).collect();
    assert_eq!(lens, [(0, 600), (1, 600), (2, 212)]);
    let num_buffers: u16 = d.mem.read_obj(GuestAddress(BUFS + 10)).unwrap();
    assert_eq!(num_buffers, 3);
    // Reassemble: 588 bytes in the first buffer, then 600 and 212.
    let mut whole = vec![0u8; 1400];
    d.mem
        .read_slice(&mut whole[..588], GuestAddress(BUFS + 12))
        .unwrap();
    d.mem
        .read_slice(&mut whole[588..1188], GuestAddress(BUFS + 0x1000))
        .unwrap();
    d.mem
        .read_slice(&mut whole[1188..], GuestAddress(BUFS + 0x2000))
        .unwrap();
    assert_eq!(whole, frame);
    // A small frame takes one buffer and says so.
    peer.send(&[0xff; 60]).unwrap();
    d.w.process_event(0);
    assert_eq!(r[0].used_idx(&d.mem), 4);
    assert_eq!(r[0].used_elem(&d.mem, 3), (3, 72));
    let nb: u16 = d
        .mem
        .read_obj(GuestAddress(BUFS + 3 * 0x1000 + 10))
        .unwrap();
    assert_eq!(nb, 1);
}

/// Without MRG_RXBUF a frame larger than the buffer is dropped and the buffer comes
/// back empty; VERSION_1's num_buffers is 1.
#[test]
fn without_merging_one_buffer_per_frame() {
    let (mut d, peer) = net_over_socket(&[]);
    let mut r = rings();
    d.modern_begin(VERSION_1);
    d.modern_ring(0, &r[0]);
    for k in 0..2u64 {
        r[0].push_chain(&d.mem, k as u16, &[(BUFS + k * 0x1000, 600, true)]);
    }
    d.modern_driver_ok();
    d.w.poll();
    peer.send(&[7u8; 1000]).unwrap();
    peer.send(&[8u8; 100]).unwrap();
    d.w.process_event(0);
    assert_eq!(r[0].used_idx(&d.mem), 2);
    assert_eq!(r[0].used_elem(&d.mem, 0), (0, 0));
    assert_eq!(r[0].used_elem(&d.mem, 1), (1, 112));
    let nb: u16 = d.mem.read_obj(GuestAddress(BUFS + 0x1000 + 10)).unwrap();
    assert_eq!(nb, 1);
}

/// Control commands through the queue change what the device receives.
#[test]
fn the_control_queue_sets_the_receive_filter() {
    let (mut d, peer) = net_over_socket(&[]);
    let mut r = rings();
    d.modern_begin(VERSION_1 | F_CTRL_VQ | F_CTRL_RX);
    d.modern_ring(0, &r[0]);
    d.modern_ring(2, &r[2]);
    d.modern_driver_ok();
    d.w.poll();
    // VIRTIO_NET_CTRL_RX_PROMISC off.
    let cmd = 0x30000u64;
    d.mem.write_slice(&[0, 0, 0], GuestAddress(cmd)).unwrap();
    d.mem.write_obj(0xffu8, GuestAddress(cmd + 0x100)).unwrap();
    r[2].push_chain(
        &d.mem,
        0,
        &[(cmd, 2, false), (cmd + 2, 1, false), (cmd + 0x100, 1, true)],
    );
    d.notify_modern(2);
    d.w.poll();
    assert_eq!(r[2].used_elem(&d.mem, 0), (0, 1));
    assert_eq!(d.mem.read_obj::<u8>(GuestAddress(cmd + 0x100)).unwrap(), 0);
    // An unknown class is refused.
    d.mem.write_slice(&[9, 0], GuestAddress(cmd)).unwrap();
    r[2].push_chain(&d.mem, 4, &[(cmd, 2, false), (cmd + 0x100, 1, true)]);
    d.notify_modern(2);
    d.w.poll();
    assert_eq!(d.mem.read_obj::<u8>(GuestAddress(cmd + 0x100)).unwrap(), 1);
    // Another station's frame is filtered; ours and broadcast pass.
    for k in 0..4u64 {
        r[0].push_chain(&d.mem, k as u16, &[(BUFS + k * 0x1000, 2048, true)]);
    }
    d.notify_modern(0);
    d.w.poll();
    let mut other = [0u8; 60];
    other[..6].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 0x99]);
    let mut mine = [0u8; 60];
    mine[..6].copy_from_slice(&machine::MacAddr::FIRST_DEFAULT.bytes());
    peer.send(&other).unwrap();
    peer.send(&mine).unwrap();
    peer.send(&[0xff; 60]).unwrap();
    d.w.process_event(0);
    assert_eq!(r[0].used_idx(&d.mem), 2);
    let mut dest = [0u8; 6];
    d.mem
        .read_slice(&mut dest, GuestAddress(BUFS + 12))
        .unwrap();
    assert_eq!(dest, machine::MacAddr::FIRST_DEFAULT.bytes());
}

/// announce-self (the EventFd) sets VIRTIO_NET_S_ANNOUNCE with a config interrupt for a
/// driver that negotiated GUEST_ANNOUNCE; its ANNOUNCE_ACK clears it.
#[test]
fn an_announcement_asks_the_guest_and_its_ack_clears_it() {
    use crate::virtio::regs::{modern, ISR_CONFIG};
    let fd = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let (mut d, _peer) = net_with_announce(&[], Some(fd.clone()));
    let mut r = rings();
    d.modern_begin(VERSION_1 | F_CTRL_VQ | F_GUEST_ANNOUNCE | F_STATUS);
    d.modern_ring(2, &r[2]);
    d.modern_driver_ok();
    d.w.poll();
    let status = |d: &mut Driver| d.bar_read(modern::BAR, modern::DEVICE + 6, 2);
    assert_eq!(status(&mut d), 1, "link up, no announcement");
    fd.write(1).unwrap();
    d.w.process_event(ANNOUNCE_TOKEN);
    assert_eq!(status(&mut d), 3, "VIRTIO_NET_S_ANNOUNCE");
    let isr = d.bar_read(modern::BAR, modern::ISR, 1) as u8;
    assert_ne!(isr & ISR_CONFIG, 0, "a config interrupt");
    let cmd = 0x30000u64;
    for (k, want) in [(0u16, 0u8), (4, 1)] {
        d.mem.write_slice(&[3, 0], GuestAddress(cmd)).unwrap();
        r[2].push_chain(&d.mem, k, &[(cmd, 2, false), (cmd + 0x100, 1, true)]);
        d.notify_modern(2);
        d.w.poll();
        let got: u8 = d.mem.read_obj(GuestAddress(cmd + 0x100)).unwrap();
        assert_eq!(
            got, want,
            "ack {k}: OK, then ERR with nothing to acknowledge"
        );
    }
    assert_eq!(status(&mut d), 1);
    // A driver without GUEST_ANNOUNCE is not asked.
    d.modern_begin(VERSION_1 | F_CTRL_VQ | F_STATUS);
    d.modern_driver_ok();
    fd.write(1).unwrap();
    d.w.process_event(ANNOUNCE_TOKEN);
    assert_eq!(status(&mut d), 1);
}

/// A driver whose avail index is in guest RAM but whose ring entries are not says "more
/// available" for ever: the receive path gives up after looking once more instead of
/// spinning (virtio_fuzz found the hang with MACHINA_FUZZ_SEED=0x4621fecf95b9a6bb).
#[test]
fn an_avail_ring_outside_guest_memory_does_not_spin_the_receive_path() {
    let (mut d, peer) = net_over_socket(&[]);
    let end = 1u64 << 20;
    let rx = Ring::new(QS, 0x10000, end - 4, 0x12000);
    d.modern_begin(VERSION_1);
    d.modern_ring(0, &rx);
    d.modern_driver_ok();
    d.w.poll();
    // One chain "available": the index (at the last two bytes of RAM) says so, the entry
    // it points at lies past the end of RAM.
    d.mem.write_obj(1u16, GuestAddress(end - 2)).unwrap();
    peer.send(&[0u8; 60]).unwrap();
    d.w.process_event(0);
    let used: u16 = d.mem.read_obj(GuestAddress(0x12002)).unwrap();
    assert_eq!(used, 0, "nothing was received");
}
