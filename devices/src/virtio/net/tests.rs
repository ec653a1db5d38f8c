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

/// A 1400-byte frame as it lies in the 600-byte buffers at BUFS, BUFS + 0x1000 and
/// BUFS + 0x2000: 588 bytes behind the header in the first, then 600 and 212.
fn frame_in_three_buffers(d: &Driver) -> Vec<u8> {
    let mut whole = vec![0u8; 1400];
    for (range, at) in [
        (0..588, BUFS + 12),
        (588..1188, BUFS + 0x1000),
        (1188..1400, BUFS + 0x2000),
    ] {
        d.mem
            .read_slice(&mut whole[range], GuestAddress(at))
            .unwrap();
    }
    whole
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
    assert_eq!(frame_in_three_buffers(&d), frame);
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

/// A modern virtio-net over `backend` (a socket or a tap-like descriptor).
fn net_over_file(backend: File) -> Driver {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let backend = VirtioBackend::Net(NetBackend {
        tap: backend,
        mac: machine::MacAddr::FIRST_DEFAULT,
        more_queues: Vec::new(),
        announce: None,
    });
    let plan = virtio_plan(DEVICE_NET, false, false, &[]);
    Driver::new(&plan, backend, mem)
}

/// A SOCK_SEQPACKET pair: frame boundaries kept like a datagram socket, but without the
/// 10-datagram queue limit of a Unix datagram pair, so a test can queue a long burst.
fn seqpacket_pair() -> (File, File) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into `fds`, which owns nothing yet.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by nobody else.
    unsafe {
        (
            File::from(std::os::fd::OwnedFd::from_raw_fd(fds[0])),
            File::from(std::os::fd::OwnedFd::from_raw_fd(fds[1])),
        )
    }
}

/// Frame `k` of a burst: its own length and bytes.
fn burst_frame(k: usize) -> Vec<u8> {
    vec![k as u8 + 1; 60 + 7 * k]
}

/// Receive chain `k` of a burst test (one 2 KiB buffer).
fn burst_buffer(r: &mut Ring, mem: &GuestMemoryMmap, k: u16) {
    r.push_chain(mem, k, &[(BUFS + u64::from(k) * 0x1000, 2048, true)]);
}

/// The used entries of a burst say, in order, which buffer got which frame, and each
/// buffer holds its frame: checked from used entry `from` to `to`.
fn check_burst(d: &Driver, r: &Ring, from: u16, to: u16) {
    for n in from..to {
        let k = usize::from(n);
        let frame = burst_frame(k);
        assert_eq!(
            r.used_elem(&d.mem, n),
            (u32::from(n), 12 + frame.len() as u32),
            "used entry {n}"
        );
        let mut got = vec![0u8; frame.len()];
        d.mem
            .read_slice(&mut got, GuestAddress(BUFS + u64::from(n) * 0x1000 + 12))
            .unwrap();
        assert_eq!(got, frame, "frame {k}");
    }
}

/// A burst longer than one publication batch arrives whole and in order; when the
/// buffers run out mid-burst, the device publishes what it received before it waits for
/// more (otherwise the driver, waiting for used buffers, would never add any), and the
/// rest follows the next kick.
#[test]
fn a_long_burst_arrives_in_order_also_when_buffers_run_out() {
    use std::io::Write;
    let (ours, mut peer) = seqpacket_pair();
    let mut d = net_over_file(ours);
    let mut r = rings();
    d.modern_begin(VERSION_1);
    d.modern_ring(0, &r[0]);
    for k in 0..40 {
        burst_buffer(&mut r[0], &d.mem, k);
    }
    d.modern_driver_ok();
    d.w.poll();
    let frames = 50;
    for k in 0..frames {
        assert_eq!(peer.write(&burst_frame(k)).unwrap(), 60 + 7 * k);
    }
    d.w.process_event(0);
    assert_eq!(
        r[0].used_idx(&d.mem),
        40,
        "every buffer used, all published"
    );
    check_burst(&d, &r[0], 0, 40);
    // The driver gives the rest of the buffers and kicks: the other frames arrive.
    for k in 40..60 {
        burst_buffer(&mut r[0], &d.mem, k);
    }
    d.notify_modern(0);
    d.w.poll();
    assert_eq!(r[0].used_idx(&d.mem), frames as u16);
    check_burst(&d, &r[0], 40, frames as u16);
}

/// A receive chain whose buffer lies outside guest RAM comes back empty, in its place in
/// the used ring among the frames received around it.
#[test]
fn a_receive_buffer_outside_guest_memory_comes_back_empty_in_order() {
    use std::io::Write;
    let (ours, mut peer) = seqpacket_pair();
    let mut d = net_over_file(ours);
    let mut r = rings();
    d.modern_begin(VERSION_1);
    d.modern_ring(0, &r[0]);
    burst_buffer(&mut r[0], &d.mem, 0);
    r[0].push_chain(&d.mem, 1, &[(2 << 20, 2048, true)]);
    burst_buffer(&mut r[0], &d.mem, 2);
    d.modern_driver_ok();
    d.w.poll();
    peer.write_all(&burst_frame(0)).unwrap();
    peer.write_all(&burst_frame(2)).unwrap();
    d.w.process_event(0);
    assert_eq!(r[0].used_idx(&d.mem), 3);
    assert_eq!(r[0].used_elem(&d.mem, 0), (0, 12 + 60));
    assert_eq!(r[0].used_elem(&d.mem, 1), (1, 0));
    assert_eq!(r[0].used_elem(&d.mem, 2), (2, 12 + 60 + 14));
    assert!(!d.needs_reset());
}

/// A receive chain with a device-readable buffer after a device-writable one is a device
/// error (QEMU's virtqueue_pop refuses it): NEEDS_RESET, nothing received.
#[test]
fn a_receive_chain_with_a_readable_buffer_last_stops_the_device() {
    use std::io::Write;
    let (ours, mut peer) = seqpacket_pair();
    let mut d = net_over_file(ours);
    let mut r = rings();
    d.modern_begin(VERSION_1);
    d.modern_ring(0, &r[0]);
    r[0].push_chain(&d.mem, 0, &[(BUFS, 1024, true), (BUFS + 1024, 1024, false)]);
    d.modern_driver_ok();
    d.w.poll();
    peer.write_all(&burst_frame(0)).unwrap();
    d.w.process_event(0);
    assert!(d.needs_reset());
    assert_eq!(r[0].used_idx(&d.mem), 0);
}

/// A FIFO opened for reading and writing: one descriptor that takes and gives bytes as a
/// tap does (not a socket, so the device passes the virtio-net header through), and a
/// second one on the same FIFO for the test's side.
fn tap_like() -> (machina_tests::TempDir, File, File) {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = machina_tests::TempDir::new("net-fifo");
    let path = dir.join("tap");
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap()
    };
    (dir, open(), open())
}

/// Over a tap the header and frame pass as they are, whether the guest gives them in one
/// buffer (one write/read) or several (writev/readv); a received frame's num_buffers says 1.
#[test]
fn over_a_tap_frames_pass_with_their_header_in_one_buffer_or_several() {
    use std::io::{Read, Write};
    let (_dir, ours, mut host) = tap_like();
    let mut d = net_over_file(ours);
    let mut r = rings();
    d.modern_begin(VERSION_1);
    d.modern_ring(0, &r[0]);
    d.modern_ring(1, &r[1]);
    d.modern_driver_ok();
    d.w.poll();
    let packet: Vec<u8> = (0..12 + 100).map(|i| (i * 3 + 1) as u8).collect();
    let out = 0x80000u64;
    d.mem.write_slice(&packet, GuestAddress(out)).unwrap();
    // Transmit: the header and frame in one buffer, then in two.
    r[1].push_chain(&d.mem, 0, &[(out, 112, false)]);
    d.notify_modern(1);
    d.w.poll();
    let mut got = [0u8; 512];
    assert_eq!(host.read(&mut got).unwrap(), 112);
    assert_eq!(&got[..112], &packet[..]);
    r[1].push_chain(&d.mem, 2, &[(out, 12, false), (out + 12, 100, false)]);
    d.notify_modern(1);
    d.w.poll();
    assert_eq!(host.read(&mut got).unwrap(), 112);
    assert_eq!(&got[..112], &packet[..]);
    assert_eq!(r[1].used_idx(&d.mem), 2);
    // Receive into one buffer, then into a header buffer and a data buffer.
    let mut want = packet.clone();
    want[10..12].copy_from_slice(&1u16.to_le_bytes());
    r[0].push_chain(&d.mem, 0, &[(BUFS, 2048, true)]);
    host.write_all(&packet).unwrap();
    d.w.process_event(0);
    assert_eq!(r[0].used_elem(&d.mem, 0), (0, 112));
    let mut buf = vec![0u8; 112];
    d.mem.read_slice(&mut buf, GuestAddress(BUFS)).unwrap();
    assert_eq!(buf, want);
    r[0].push_chain(
        &d.mem,
        1,
        &[(BUFS + 0x1000, 12, true), (BUFS + 0x2000, 2048, true)],
    );
    d.notify_modern(0);
    d.w.poll();
    host.write_all(&packet).unwrap();
    d.w.process_event(0);
    assert_eq!(r[0].used_idx(&d.mem), 2);
    assert_eq!(r[0].used_elem(&d.mem, 1), (1, 112));
    d.mem
        .read_slice(&mut buf[..12], GuestAddress(BUFS + 0x1000))
        .unwrap();
    d.mem
        .read_slice(&mut buf[12..], GuestAddress(BUFS + 0x2000))
        .unwrap();
    assert_eq!(buf, want);
}

/// A tap's frame larger than the bounce buffer (its first 2 KiB are read there and copied
/// into the guest's buffers, the rest goes straight into guest memory) arrives whole,
/// in one large buffer and across several whose boundaries fall on either side of the
/// bounce buffer's end.
#[test]
fn over_a_tap_a_frame_longer_than_the_bounce_buffer_arrives_whole() {
    use std::io::Write;
    let (_dir, ours, mut host) = tap_like();
    let mut d = net_over_file(ours);
    let mut r = rings();
    d.modern_begin(VERSION_1);
    d.modern_ring(0, &r[0]);
    d.modern_driver_ok();
    d.w.poll();
    let len = super::rx::BOUNCE + 1000;
    let packet: Vec<u8> = (0..len).map(|i| (i % 253) as u8 + 1).collect();
    let mut want = packet.clone();
    want[10..12].copy_from_slice(&1u16.to_le_bytes());
    let layouts: [&[u32]; 3] = [&[4096], &[12, 1000, 3000], &[2100, 2000]];
    for (k, sizes) in layouts.iter().enumerate() {
        let base = BUFS + k as u64 * 0x4000;
        let mut at = base;
        let bufs: Vec<(u64, u32, bool)> = sizes
            .iter()
            .map(|&s| {
                let b = (at, s, true);
                at += 0x1000 * u64::from(s.div_ceil(0x1000));
                b
            })
            .collect();
        r[0].push_chain(&d.mem, 4 * k as u16, &bufs);
        d.notify_modern(0);
        d.w.poll();
        host.write_all(&packet).unwrap();
        d.w.process_event(0);
        assert_eq!(r[0].used_idx(&d.mem), k as u16 + 1, "layout {sizes:?}");
        assert_eq!(r[0].used_elem(&d.mem, k as u16), (4 * k as u32, len as u32));
        let mut got = Vec::new();
        for &(addr, size, _) in &bufs {
            let mut b = vec![0u8; (size as usize).min(len - got.len())];
            d.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
            got.extend_from_slice(&b);
        }
        assert_eq!(got, want, "layout {sizes:?}");
    }
}

/// With merged buffers, a frame that needs more buffers than the driver has given waits
/// for them, whole, and the frames behind it keep their order (a frame read into too few
/// buffers would be lost): over a socket peer and over a tap.
#[test]
fn a_merged_frame_waits_for_enough_buffers() {
    use std::io::Write;
    let frame: Vec<u8> = (0..1400u32).map(|i| (i % 251) as u8).collect();
    // Over a socket peer: the frame, then a small one behind it.
    let (mut d, peer) = net_over_socket(&[]);
    let mut r = rings();
    d.modern_begin(VERSION_1 | F_MRG_RXBUF);
    d.modern_ring(0, &r[0]);
    r[0].push_chain(&d.mem, 0, &[(BUFS, 600, true)]);
    d.modern_driver_ok();
    d.w.poll();
    peer.send(&frame).unwrap();
    peer.send(&[0xee; 60]).unwrap();
    d.w.process_event(0);
    assert_eq!(r[0].used_idx(&d.mem), 0, "one 600-byte buffer is too few");
    for k in 1..3u64 {
        r[0].push_chain(&d.mem, k as u16, &[(BUFS + k * 0x1000, 600, true)]);
    }
    d.notify_modern(0);
    d.w.poll();
    assert_eq!(r[0].used_idx(&d.mem), 3);
    let lens: Vec<(u32, u32)> = (0..3).map(|n| r[0].used_elem(&d.mem, n)).collect();
    assert_eq!(lens, [(0, 600), (1, 600), (2, 212)]);
    let num_buffers: u16 = d.mem.read_obj(GuestAddress(BUFS + 10)).unwrap();
    assert_eq!(num_buffers, 3);
    assert_eq!(frame_in_three_buffers(&d), frame);
    r[0].push_chain(&d.mem, 3, &[(BUFS + 0x3000, 600, true)]);
    d.notify_modern(0);
    d.w.poll();
    assert_eq!(r[0].used_idx(&d.mem), 4);
    assert_eq!(r[0].used_elem(&d.mem, 3), (3, 72));

    // Over a tap: the header comes with the frame.
    let (_dir, ours, mut host) = tap_like();
    let mut d = net_over_file(ours);
    let mut r = rings();
    d.modern_begin(VERSION_1 | F_MRG_RXBUF);
    d.modern_ring(0, &r[0]);
    r[0].push_chain(&d.mem, 0, &[(BUFS, 600, true)]);
    d.modern_driver_ok();
    d.w.poll();
    let mut packet = vec![0u8; 12];
    packet.extend_from_slice(&frame);
    host.write_all(&packet).unwrap();
    d.w.process_event(0);
    assert_eq!(r[0].used_idx(&d.mem), 0, "one 600-byte buffer is too few");
    for k in 1..3u64 {
        r[0].push_chain(&d.mem, k as u16, &[(BUFS + k * 0x1000, 600, true)]);
    }
    d.notify_modern(0);
    d.w.poll();
    assert_eq!(r[0].used_idx(&d.mem), 3);
    assert_eq!(frame_in_three_buffers(&d), frame);
    let num_buffers: u16 = d.mem.read_obj(GuestAddress(BUFS + 10)).unwrap();
    assert_eq!(num_buffers, 3);
}
