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
}

pub(crate) fn run_net(t: &Transport, bdf: Bdf, path: Path, test: NetTest) -> Result<(), Reason> {
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
