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

pub(crate) fn run_net(t: &Transport, bdf: Bdf, path: Path, net_test: bool) -> Result<(), Reason> {
    let (_, features) = t.negotiate(NET_F_MAC)?;
    // virtio_net_hdr: 10 bytes, 12 (num_buffers) with VERSION_1.
    let hdr_len = if features & F_VERSION_1 != 0 { 12 } else { 10 };
    let mut rx = t.setup_queue(0, 0)?;
    let mut tx = t.setup_queue(1, 1)?;
    if net_test {
        dma_fill(NET_RX, NET_RX_STRIDE * usize::from(NET_RX_BUFFERS), 0);
        for k in 0..NET_RX_BUFFERS {
            let buf = NET_RX + usize::from(k) * NET_RX_STRIDE;
            let head = rx.chain(
                2 * k,
                &[
                    Buf::into(buf, hdr_len),
                    Buf::into(buf + hdr_len, NET_MAX_FRAME),
                ],
            )?;
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

    // Receive: the first frame with our ethertype; others are recycled.
    let mut payload = [0u8; NET_PAYLOAD_MAX];
    let mut payload_len = None;
    let mut deadline = Deadline::after_ms(RX_TIMEOUT_MS);
    while payload_len.is_none() {
        let Some((id, len)) = rx.wait_used(&mut deadline) else {
            break;
        };
        let k = (id / 2) as u16;
        if id % 2 != 0 || k >= NET_RX_BUFFERS {
            return Err("rx-bad-id");
        }
        let frame = NET_RX + usize::from(k) * NET_RX_STRIDE + hdr_len;
        let frame_len = (len as usize).saturating_sub(hdr_len).min(NET_MAX_FRAME);
        let ethertype = u16::from_be_bytes([dma_read(frame + 12), dma_read(frame + 13)]);
        if frame_len >= 14 && ethertype == NET_ETHERTYPE {
            let n = (frame_len - 14).min(NET_PAYLOAD_MAX);
            for (i, b) in payload[..n].iter_mut().enumerate() {
                *b = dma_read(frame + 14 + i);
            }
            // Padding to the minimum frame size is not payload.
            payload_len = Some(
                payload[..n]
                    .iter()
                    .rposition(|&b| b != 0)
                    .map_or(0, |p| p + 1),
            );
        } else {
            rx.publish(id as u16);
            rx.kick();
        }
    }
    println!(
        "virtio-net: {} path={} tx={} rx={} rx-payload={}",
        bdf,
        path,
        if tx_ok { "ok" } else { "timeout" },
        if payload_len.is_some() {
            "ok"
        } else {
            "timeout"
        },
        TokenBytes(&payload[..payload_len.unwrap_or(0)])
    );
    if tx_ok {
        Ok(())
    } else {
        Err("tx-timeout")
    }
}
