//! virtio-net driver.

use super::*;

pub(crate) const NET_RX_BUFFERS: u16 = 4;
pub(crate) const NET_RX_STRIDE: usize = 2048;
/// Ethernet frame without FCS, as the device hands it over.
pub(crate) const NET_MAX_FRAME: usize = 1514;
pub(crate) const NET_TX: usize = DATA;
pub(crate) const NET_RX: usize = DATA + NET_RX_STRIDE;
pub(crate) const NET_ETHERTYPE: u16 = 0x88b5;
pub(crate) const NET_MIN_FRAME: usize = 60;
/// Source address used when the device offers no MAC.
pub(crate) const NET_DEFAULT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub(crate) const NET_PAYLOAD_MAX: usize = 64;
/// Receive buffer size with merged buffers: a full frame needs several.
pub(crate) const NET_MRG_BUF: usize = 512;

/// What `machina.net-test` asks of the net driver.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum NetTest {
    /// Only bring the device up and print its MAC.
    Off,
    /// `1`: a frame out and one back, one buffer per frame.
    Basic,
    /// `mrg`: the same with MRG_RXBUF and receive offloads (GUEST_CSUM, GUEST_TSO4)
    /// negotiated and 512-byte receive buffers: the answer spans several.
    Merged,
    /// `mq`: two queue pairs (modern interface): a UDP frame out on each tx queue, and
    /// the host's answers (the tap steers a flow back to the queue it came from) read
    /// from both rx queues.
    MultiQueue,
}

pub(crate) fn run_net(t: &Transport, bdf: Bdf, path: Path, test: NetTest) -> Result<(), Reason> {
    if test == NetTest::MultiQueue {
        return match t {
            Transport::Modern(m) => run_mq(t, m, bdf),
            Transport::Legacy { .. } => run_net(t, bdf, path, NetTest::Off),
        };
    }
    let wanted = match test {
        NetTest::Merged => NET_F_MAC | NET_F_MRG_RXBUF | NET_F_GUEST_CSUM | NET_F_GUEST_TSO4,
        _ => NET_F_MAC,
    };
    let (_, features) = t.negotiate(wanted)?;
    let merged = features & NET_F_MRG_RXBUF != 0;
    let net_test = test != NetTest::Off;
    // virtio_net_hdr: 10 bytes, 12 (num_buffers) with VERSION_1 or MRG_RXBUF.
    let hdr_len = if features & F_VERSION_1 != 0 || merged {
        12
    } else {
        10
    };
    let mut rx = t.setup_queue(0, 0)?;
    let mut tx = t.setup_queue(1, 1)?;
    if net_test {
        dma_fill(NET_RX, NET_RX_STRIDE * usize::from(NET_RX_BUFFERS), 0);
        for k in 0..NET_RX_BUFFERS {
            let buf = NET_RX + usize::from(k) * NET_RX_STRIDE;
            // With merged buffers the header shares the first buffer with the frame.
            let head = if merged {
                rx.chain(2 * k, &[Buf::into(buf, NET_MRG_BUF)])?
            } else {
                rx.chain(
                    2 * k,
                    &[
                        Buf::into(buf, hdr_len),
                        Buf::into(buf + hdr_len, NET_MAX_FRAME),
                    ],
                )?
            };
            rx.publish(head);
        }
    }
    t.driver_ok();
    if net_test {
        rx.kick();
    }
    let mac = (features & NET_F_MAC != 0).then(|| {
        let mut mac = [0u8; 6];
        for (i, b) in mac.iter_mut().enumerate() {
            *b = t.cfg8(i as u16);
        }
        mac
    });
    match mac {
        Some(mac) => println!("virtio-net: {} path={} mac={}", bdf, path, Mac(mac)),
        None => println!("virtio-net: {} path={} mac=none", bdf, path),
    }
    if !net_test {
        return Ok(());
    }

    // Transmit: broadcast, ethertype 0x88b5, "machina-guest-ping-<path>".
    let frame_at = NET_TX + 16;
    dma_fill(NET_TX, 16 + NET_MIN_FRAME, 0);
    dma_copy_in(frame_at, &[0xff; 6]);
    dma_copy_in(frame_at + 6, &mac.unwrap_or(NET_DEFAULT_MAC));
    dma_copy_in(frame_at + 12, &NET_ETHERTYPE.to_be_bytes());
    let payload: &[u8] = match path {
        Path::Legacy => b"machina-guest-ping-legacy",
        Path::Modern => b"machina-guest-ping-modern",
    };
    dma_copy_in(frame_at + 14, payload);
    let tx_ok = tx
        .request(
            &[Buf::out(NET_TX, hdr_len), Buf::out(frame_at, NET_MIN_FRAME)],
            "tx-timeout",
        )
        .is_ok();

    // Receive: the first frame with our ethertype; others are recycled. A frame is
    // gathered from num_buffers used buffers (one without MRG_RXBUF).
    let mut frame = [0u8; NET_MAX_FRAME];
    let mut payload = [0u8; NET_PAYLOAD_MAX];
    let mut payload_len = None;
    let (mut buffers, mut frame_len, mut sum) = (0u16, 0usize, 0u32);
    let mut deadline = Deadline::after_ms(RX_TIMEOUT_MS);
    'frames: while payload_len.is_none() {
        let mut ids = [0u16; NET_RX_BUFFERS as usize];
        let mut count = 0u16;
        let mut want = 1u16;
        let mut len_total = 0usize;
        while count < want {
            let Some((id, len)) = rx.wait_used(&mut deadline) else {
                break 'frames;
            };
            let k = (id / 2) as u16;
            if id % 2 != 0 || k >= NET_RX_BUFFERS {
                return Err("rx-bad-id");
            }
            let buf = NET_RX + usize::from(k) * NET_RX_STRIDE;
            let (from, len) = if count == 0 {
                if merged {
                    want = dma_read(buf + 10);
                    if want == 0 || want > NET_RX_BUFFERS {
                        return Err("rx-bad-num-buffers");
                    }
                }
                (buf + hdr_len, (len as usize).saturating_sub(hdr_len))
            } else {
                (buf, len as usize)
            };
            for i in 0..len.min(NET_MAX_FRAME - len_total) {
                frame[len_total + i] = dma_read(from + i);
            }
            len_total = (len_total + len).min(NET_MAX_FRAME);
            ids[usize::from(count)] = id as u16;
            count += 1;
        }
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        if len_total >= 14 && ethertype == NET_ETHERTYPE {
            let n = (len_total - 14).min(NET_PAYLOAD_MAX);
            payload[..n].copy_from_slice(&frame[14..14 + n]);
            // Padding to the minimum frame size is not payload.
            payload_len = Some(
                payload[..n]
                    .iter()
                    .rposition(|&b| b != 0)
                    .map_or(0, |p| p + 1),
            );
            buffers = count;
            frame_len = len_total;
            sum = frame[..len_total]
                .iter()
                .fold(0u32, |a, &b| a.wrapping_add(u32::from(b)));
        } else {
            for &id in &ids[..usize::from(count)] {
                rx.publish(id);
            }
            rx.kick();
        }
    }
    println!(
        "virtio-net: {} path={} tx={} rx={} rx-payload={} rx-buffers={} rx-len={} rx-sum={}",
        bdf,
        path,
        if tx_ok { "ok" } else { "timeout" },
        if payload_len.is_some() {
            "ok"
        } else {
            "timeout"
        },
        TokenBytes(&payload[..payload_len.unwrap_or(0)]),
        buffers,
        frame_len,
        sum
    );
    if tx_ok {
        Ok(())
    } else {
        Err("tx-timeout")
    }
}

/// Queue size of the multiqueue test: five rings fit the two queue slots.
const MQ_QUEUE: u16 = 16;
const MQ_RING_SPAN: usize = 8 * 1024;
const MQ_TX: usize = DATA;
const MQ_CTRL: usize = DATA + 2048;
const MQ_RX: usize = DATA + 4096;
const MQ_RX_BUF: usize = 1536;
const MQ_RX_BUFFERS: u16 = 4;
const MQ_PORT: u16 = 7777;
const MQ_FIRST_SOURCE_PORT: u16 = 40000;

fn mq_queue(m: &Modern, index: u16, size: u16) -> Result<Queue, Reason> {
    m.w16(COM_QUEUE_SELECT, index);
    if m.r16(COM_QUEUE_SIZE) < size {
        return Err("queue-too-small");
    }
    let off = u64::from(m.r16(COM_QUEUE_NOTIFY_OFF)) * u64::from(m.notify_mult);
    let slot = usize::from(index) * MQ_RING_SPAN;
    let q = Queue::new(index, slot, size, Notify::Mmio(m.notify + off))?;
    m.w16(COM_QUEUE_SIZE, size);
    m.w64(COM_QUEUE_DESC, dma_addr(q.desc));
    m.w64(COM_QUEUE_DRIVER, dma_addr(q.avail));
    m.w64(COM_QUEUE_DEVICE, dma_addr(q.used));
    m.w16(COM_QUEUE_ENABLE, 1);
    Ok(q)
}

/// RFC 1071 checksum of `bytes` in the DMA area.
fn ip_checksum(at: usize, len: usize) -> u16 {
    let mut sum = 0u32;
    for i in (0..len).step_by(2) {
        sum += u32::from(u16::from_be_bytes([dma_read(at + i), dma_read(at + i + 1)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A UDP/IPv4 broadcast frame from `mac`, source port `port`, payload `payload`, at `at`
/// (after a zeroed virtio-net header of `hdr` bytes); returns the frame length.
fn mq_frame(at: usize, hdr: usize, mac: [u8; 6], port: u16, payload: &[u8]) -> usize {
    let f = at + hdr;
    let udp_len = 8 + payload.len();
    let ip_len = 20 + udp_len;
    dma_fill(at, hdr + 14 + ip_len, 0);
    dma_copy_in(f, &[0xff; 6]);
    dma_copy_in(f + 6, &mac);
    dma_copy_in(f + 12, &[0x08, 0x00]);
    let ip = f + 14;
    dma_copy_in(ip, &[0x45, 0]);
    dma_copy_in(ip + 2, &(ip_len as u16).to_be_bytes());
    dma_copy_in(ip + 8, &[64, 17]);
    dma_copy_in(ip + 12, &[10, 0, 2, 15, 10, 0, 2, 2]);
    let csum = ip_checksum(ip, 20);
    dma_copy_in(ip + 10, &csum.to_be_bytes());
    let udp = ip + 20;
    dma_copy_in(udp, &port.to_be_bytes());
    dma_copy_in(udp + 2, &MQ_PORT.to_be_bytes());
    dma_copy_in(udp + 4, &(udp_len as u16).to_be_bytes());
    dma_copy_in(udp + 8, payload);
    (14 + ip_len).max(NET_MIN_FRAME)
}

fn run_mq(t: &Transport, m: &Modern, bdf: Bdf) -> Result<(), Reason> {
    let (_, features) = t.negotiate(NET_F_MAC | NET_F_CTRL_VQ | NET_F_MQ)?;
    if features & (NET_F_MQ | NET_F_CTRL_VQ) != NET_F_MQ | NET_F_CTRL_VQ {
        return Err("no-mq");
    }
    let pairs = u16::from(t.cfg8(8)) | u16::from(t.cfg8(9)) << 8;
    if pairs < 2 {
        return Err("one-queue-pair");
    }
    let hdr = 12;
    let mut rx0 = mq_queue(m, 0, MQ_QUEUE)?;
    let mut tx0 = mq_queue(m, 1, MQ_QUEUE)?;
    let mut rx1 = mq_queue(m, 2, MQ_QUEUE)?;
    let mut tx1 = mq_queue(m, 3, MQ_QUEUE)?;
    let mut ctrl = mq_queue(m, 2 * pairs, MQ_QUEUE)?;
    for (q, rx) in [(0usize, &mut rx0), (1, &mut rx1)] {
        for k in 0..MQ_RX_BUFFERS {
            let buf = MQ_RX + (q * usize::from(MQ_RX_BUFFERS) + usize::from(k)) * MQ_RX_BUF;
            let head = rx.chain(k, &[Buf::into(buf, MQ_RX_BUF)])?;
            rx.publish(head);
        }
    }
    t.driver_ok();
    rx0.kick();
    rx1.kick();
    let mut mac = [0u8; 6];
    for (i, b) in mac.iter_mut().enumerate() {
        *b = t.cfg8(i as u16);
    }
    // VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET 2.
    dma_copy_in(MQ_CTRL, &[4, 0, 2, 0]);
    dma_write(MQ_CTRL + 8, 0xffu8);
    ctrl.request(
        &[
            Buf::out(MQ_CTRL, 2),
            Buf::out(MQ_CTRL + 2, 2),
            Buf::into(MQ_CTRL + 8, 1),
        ],
        "ctrl-timeout",
    )?;
    let ack: u8 = dma_read(MQ_CTRL + 8);
    // One frame out on each pair's tx queue.
    let mut tx_ok = [false; 2];
    for (i, tx) in [&mut tx0, &mut tx1].into_iter().enumerate() {
        let at = MQ_TX + i * 512;
        let payload: &[u8] = if i == 0 {
            b"machina-mq-0"
        } else {
            b"machina-mq-1"
        };
        let len = mq_frame(at, hdr, mac, MQ_FIRST_SOURCE_PORT + i as u16, payload);
        tx_ok[i] = tx.request(&[Buf::out(at, hdr + len)], "tx-timeout").is_ok();
    }
    // The answers: which rx queue each flow's answer came back on.
    let mut answer_queue = [None::<usize>; 2];
    let mut deadline = Deadline::after_ms(RX_TIMEOUT_MS);
    while answer_queue.iter().any(Option::is_none) && !deadline.expired() {
        for (q, rx) in [(0usize, &mut rx0), (1, &mut rx1)] {
            let Some((id, len)) = rx.try_used() else {
                continue;
            };
            if id >= u32::from(MQ_RX_BUFFERS) {
                return Err("rx-bad-id");
            }
            let buf = MQ_RX + (q * usize::from(MQ_RX_BUFFERS) + id as usize) * MQ_RX_BUF;
            let f = buf + hdr;
            let ethertype = u16::from_be_bytes([dma_read(f + 12), dma_read(f + 13)]);
            let proto: u8 = dma_read(f + 23);
            let dport = u16::from_be_bytes([dma_read(f + 36), dma_read(f + 37)]);
            let which = dport.wrapping_sub(MQ_FIRST_SOURCE_PORT);
            if len as usize >= hdr + 42 && ethertype == 0x0800 && proto == 17 && which < 2 {
                answer_queue[usize::from(which)].get_or_insert(q);
            }
            rx.publish(id as u16);
            rx.kick();
        }
    }
    let show = |a: Option<usize>| match a {
        Some(0) => "0",
        Some(_) => "1",
        None => "none",
    };
    println!(
        "virtio-net: {} path=modern mq pairs={} ctrl={} tx0={} tx1={} answer0-rxq={} answer1-rxq={}",
        bdf,
        pairs,
        if ack == 0 { "ok" } else { "err" },
        if tx_ok[0] { "ok" } else { "timeout" },
        if tx_ok[1] { "ok" } else { "timeout" },
        show(answer_queue[0]),
        show(answer_queue[1])
    );
    Ok(())
}
