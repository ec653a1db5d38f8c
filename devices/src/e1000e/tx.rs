//! Transmit: the descriptor ring of queue 0 walked when the guest moves TDT (or enables
//! TCTL), legacy descriptors and extended context + data descriptors gathered into a packet
//! until EOP, then checksums inserted and TCP/UDP segmentation done in software, VLAN tags
//! inserted, and the frames sent to the backend. Descriptors with RS get DD written back.

use super::mmio::{ERR_TSO, ERR_TX_PACKET, ERR_TX_RING};
use super::regs::*;
use super::E1000e;

/// The largest packet gathered: a 64 KiB TSO payload and its headers.
const MAX_PACKET: usize = 64 * 1024 + 512;

/// The offload context of the last context descriptor.
#[derive(Debug, Default, Clone, Copy)]
struct Context {
    ipcss: u8,
    ipcso: u8,
    ipcse: u16,
    tucss: u8,
    tucso: u8,
    tucse: u16,
    hdr_len: u8,
    mss: u16,
    /// IPv4 (else IPv6) and TCP (else UDP), for segmentation.
    ipv4: bool,
    tcp: bool,
}

#[derive(Debug, Default)]
pub(super) struct TxState {
    ctx: Context,
    /// The packet being gathered, and whether its first descriptor was seen.
    data: Vec<u8>,
    started: bool,
    /// Options of the packet from its first data descriptor: POPTS (IXSM/TXSM), TSE, and a
    /// legacy descriptor's checksum offsets (CSO, CSS) when IC asked for one.
    popts: u8,
    tse: bool,
    legacy_sum: Option<(u8, u8)>,
    vlan: Option<u16>,
    /// The packet outgrew MAX_PACKET: it is dropped at EOP.
    oversized: bool,
}

fn get16(f: &[u8], at: usize) -> u16 {
    f.get(at..at + 2)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
}

fn put16(f: &mut [u8], at: usize, v: u16) {
    if let Some(b) = f.get_mut(at..at + 2) {
        b.copy_from_slice(&v.to_be_bytes());
    }
}

fn get32(f: &[u8], at: usize) -> u32 {
    f.get(at..at + 4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn put32(f: &mut [u8], at: usize, v: u32) {
    if let Some(b) = f.get_mut(at..at + 4) {
        b.copy_from_slice(&v.to_be_bytes());
    }
}

/// The one's-complement sum of `data` as 16-bit big-endian words, added to `sum`.
pub(super) fn ones_sum(data: &[u8], mut sum: u32) -> u32 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([w[0], w[1]])));
    }
    if let [last] = words.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
    }
    sum
}

/// Fold a 32-bit sum to 16 bits with end-around carry.
pub(super) fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Store the checksum of `f[css..=cse]` (to the end when `cse` is 0 or past it) at `sloc`
/// (e1000's putsum); a zero result is sent as 0xffff, as UDP needs.
fn put_sum(f: &mut [u8], sloc: usize, css: usize, cse: usize) {
    let mut end = f.len();
    if cse != 0 && cse < end {
        end = cse + 1;
    }
    if css >= end || sloc + 2 > f.len() {
        return;
    }
    let sum = !fold(ones_sum(&f[css..end], 0));
    put16(f, sloc, if sum == 0 { 0xffff } else { sum });
}

fn le32(d: &[u8; 16], at: usize) -> u32 {
    u32::from_le_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

impl E1000e {
    fn tx_ring_base(&self) -> u64 {
        (u64::from(self.mac[TDBAH]) << 32) | u64::from(self.mac[TDBAL])
    }

    /// e1000e_start_xmit: process descriptors from TDH to TDT, then signal TXQE and the
    /// write-backs (TXDW, or TXQ0 with MSI-X).
    pub(super) fn start_xmit(&mut self) {
        if self.mac[TCTL] & TCTL_EN == 0 || self.mac[TARC0] & TARC_ENABLE == 0 {
            return;
        }
        if !self.dma_enabled() {
            return;
        }
        let ring = u64::from(self.mac[TDLEN]) / DESC_LEN;
        if ring == 0 {
            return;
        }
        if u64::from(self.mac[TDT]) >= ring {
            let (t, l) = (self.mac[TDT], self.mac[TDLEN]);
            self.guest_error(
                ERR_TX_RING,
                format_args!("TDT {t} is past the transmit ring ({l} bytes)"),
            );
            return;
        }
        if u64::from(self.mac[TDH]) >= ring {
            let (h, l) = (self.mac[TDH], self.mac[TDLEN]);
            self.guest_error(
                ERR_TX_RING,
                format_args!("TDH {h} is past the transmit ring ({l} bytes)"),
            );
            self.mac[TDH] = 0;
        }
        let mut cause = ICR_TXQE;
        while self.mac[TDH] != self.mac[TDT] {
            let at = self
                .tx_ring_base()
                .wrapping_add(u64::from(self.mac[TDH]) * DESC_LEN);
            let mut desc = [0u8; 16];
            self.dma_read(at, &mut desc);
            self.process_tx_desc(&desc);
            let lower = le32(&desc, 8);
            if lower & TXD_CMD_RS != 0 || self.mac[IVAR] & IVAR_TX_INT_EVERY_WB != 0 {
                let upper = le32(&desc, 12) | TXD_STAT_DD;
                self.dma_write(at.wrapping_add(12), &upper.to_le_bytes());
                cause |= if self.msix.enabled() {
                    ICR_TXQ0
                } else {
                    ICR_TXDW
                };
            }
            let next = u64::from(self.mac[TDH]) + 1;
            self.mac[TDH] = if next >= ring { 0 } else { next as u32 };
        }
        self.raise(ICR, cause);
    }

    fn process_tx_desc(&mut self, d: &[u8; 16]) {
        let addr = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
        let lower = le32(d, 8);
        let extended = lower & TXD_CMD_DEXT != 0;
        let dtyp = lower & TXD_DTYP_MASK;
        if extended && dtyp == 0 {
            // Context descriptor: offsets for the packets that follow.
            self.tx.ctx = Context {
                ipcss: d[0],
                ipcso: d[1],
                ipcse: u16::from_le_bytes([d[2], d[3]]),
                tucss: d[4],
                tucso: d[5],
                tucse: u16::from_le_bytes([d[6], d[7]]),
                hdr_len: d[13],
                mss: u16::from_le_bytes([d[14], d[15]]),
                ipv4: lower & TXD_CMD_IP != 0,
                tcp: lower & TXD_CMD_TCP != 0,
            };
            return;
        }
        if extended && dtyp != TXD_DTYP_D {
            self.guest_error(
                ERR_TX_PACKET,
                format_args!("transmit descriptor of unknown type {:#x}", dtyp >> 20),
            );
            return;
        }
        let len = if extended {
            lower & 0xf_ffff
        } else {
            lower & 0xffff
        } as usize;
        if !self.tx.started {
            self.tx.started = true;
            if extended {
                self.tx.popts = d[13];
                self.tx.tse = lower & TXD_CMD_TSE != 0;
            } else if lower & TXD_CMD_IC != 0 {
                // Legacy: CSO in the second dword, CSS in the third.
                self.tx.legacy_sum = Some((d[10], d[13]));
            }
        }
        if lower & TXD_CMD_VLE != 0 && self.mac[CTRL] & CTRL_VME != 0 {
            self.tx.vlan = Some(u16::from_le_bytes([d[14], d[15]]));
        }
        if self.tx.data.len() + len > MAX_PACKET {
            if !self.tx.oversized {
                self.guest_error(
                    ERR_TX_PACKET,
                    format_args!("transmit packet longer than {MAX_PACKET} bytes dropped"),
                );
            }
            self.tx.oversized = true;
        } else if len > 0 {
            let start = self.tx.data.len();
            self.tx.data.resize(start + len, 0);
            let mut data = std::mem::take(&mut self.tx.data);
            self.dma_read(addr, &mut data[start..]);
            self.tx.data = data;
        }
        if lower & TXD_CMD_EOP != 0 {
            let tx = std::mem::take(&mut self.tx);
            self.tx.ctx = tx.ctx;
            if !tx.oversized {
                self.finish_packet(tx);
            }
        }
    }

    fn finish_packet(&mut self, tx: TxState) {
        let c = tx.ctx;
        let mut data = tx.data;
        if tx.tse {
            self.segment(&data, c, tx.popts, tx.vlan);
            return;
        }
        if let Some((cso, css)) = tx.legacy_sum {
            put_sum(&mut data, usize::from(cso), usize::from(css), 0);
        }
        if tx.popts & TXD_POPTS_TXSM != 0 {
            put_sum(
                &mut data,
                usize::from(c.tucso),
                usize::from(c.tucss),
                usize::from(c.tucse),
            );
        }
        if tx.popts & TXD_POPTS_IXSM != 0 {
            put_sum(
                &mut data,
                usize::from(c.ipcso),
                usize::from(c.ipcss),
                usize::from(c.ipcse),
            );
        }
        self.send_frame(data, tx.vlan);
    }

    /// TCP/UDP segmentation: the header (HDRLEN bytes) in front of each MSS of payload, IP
    /// length and ID, TCP sequence and flags (or UDP length) fixed per segment, the
    /// pseudo-header sum the driver seeded completed with the segment's length, checksums
    /// inserted as POPTS asks.
    fn segment(&mut self, data: &[u8], c: Context, popts: u8, vlan: Option<u16>) {
        let hdr = usize::from(c.hdr_len);
        let mss = usize::from(c.mss);
        let (css, tucss) = (usize::from(c.ipcss), usize::from(c.tucss));
        let l4_fixed = if c.tcp { tucss + 14 } else { tucss + 6 };
        if hdr == 0 || hdr > data.len() || mss == 0 || css + 6 > hdr || l4_fixed > hdr {
            self.guest_error(
                ERR_TSO,
                format_args!(
                    "TSO with header length {hdr}, MSS {mss}, IP at {css}, L4 at {tucss} for a {}-byte packet: dropped",
                    data.len()
                ),
            );
            return;
        }
        let payload = &data[hdr..];
        let mut off = 0;
        let mut frames: u16 = 0;
        loop {
            let n = mss.min(payload.len() - off);
            let last = off + n >= payload.len();
            let mut f = Vec::with_capacity(hdr + n);
            f.extend_from_slice(&data[..hdr]);
            f.extend_from_slice(&payload[off..off + n]);
            let len = f.len();
            if c.ipv4 {
                put16(&mut f, css + 2, (len - css) as u16);
                let id = get16(&f, css + 4).wrapping_add(frames);
                put16(&mut f, css + 4, id);
            } else {
                put16(&mut f, css + 4, len.saturating_sub(css + 40) as u16);
            }
            let l4_len = len - tucss;
            if c.tcp {
                let seq = get32(&f, tucss + 4).wrapping_add(off as u32);
                put32(&mut f, tucss + 4, seq);
                if !last {
                    // PSH and FIN only on the last segment.
                    f[tucss + 13] &= !0x09;
                }
            } else {
                put16(&mut f, tucss + 4, l4_len as u16);
            }
            if popts & TXD_POPTS_TXSM != 0 {
                let sloc = usize::from(c.tucso);
                let seeded = fold(u32::from(get16(&f, sloc)) + l4_len as u32);
                put16(&mut f, sloc, seeded);
                put_sum(&mut f, sloc, tucss, usize::from(c.tucse));
            }
            if popts & TXD_POPTS_IXSM != 0 {
                put_sum(&mut f, usize::from(c.ipcso), css, usize::from(c.ipcse));
            }
            self.send_frame(f, vlan);
            frames = frames.wrapping_add(1);
            off += n;
            if last {
                break;
            }
        }
        if frames > 1 {
            self.count(TSCTC, 1);
        }
    }

    /// Insert the VLAN tag if any, count the frame and send it.
    fn send_frame(&mut self, mut f: Vec<u8>, vlan: Option<u16>) {
        if let Some(tci) = vlan {
            if f.len() >= 12 {
                let vet = (self.mac[VET] & 0xffff) as u16;
                let mut tag = [0u8; 4];
                tag[..2].copy_from_slice(&vet.to_be_bytes());
                tag[2..].copy_from_slice(&tci.to_be_bytes());
                f.splice(12..12, tag);
            }
        }
        let len = f.len();
        self.count(TPT, 1);
        self.count(GPTC, 1);
        self.count64(GOTCL, len as u64);
        self.count64(TOTL, len as u64);
        self.count_size(PTC64, len + 4);
        if f.first().is_some_and(|b| b & 1 != 0) {
            if f.get(..6) == Some(&[0xff; 6]) {
                self.count(BPTC, 1);
            } else {
                self.count(MPTC, 1);
            }
        }
        let name = &self.name;
        if let Some(io) = self.io.as_mut() {
            io.send(&f, name);
        }
    }
}
