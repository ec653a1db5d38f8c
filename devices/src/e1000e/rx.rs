//! Receive: frames from the backend through the filters (unicast RA, multicast MTA,
//! broadcast, promiscuous, VLAN VFTA), VLAN tags stripped with CTRL.VME, checksums verified
//! in software, written into the buffers of queue 0's ring (legacy descriptors, or extended
//! ones with RFCTL.EXSTEN) with as many descriptors as the frame needs, then RXT0 (RXQ0
//! with MSI-X) and RXDMT0 below the threshold. A frame without enough descriptors waits in
//! the device, and the backend is not read, until the guest adds some.

use super::mmio::{ERR_RX_DESC, ERR_RX_RING};
use super::regs::*;
use super::tx::{fold, ones_sum};
use super::E1000e;

/// The largest frame a backend delivers (a tap's 64 KiB).
const MAX_FRAME: usize = 65536;
/// Frames taken from the backend in one go.
const RX_BUDGET: usize = 256;
/// Frames shorter than this are padded (ETH_ZLEN, without FCS).
const MIN_FRAME: usize = 60;
/// Past this a frame is oversized without RCTL.LPE: an Ethernet header with one VLAN tag
/// and a 1500-byte payload; with LPE, 16 KiB less the FCS.
const MAX_SHORT: usize = 18 + 1500;
const MAX_LONG: usize = 16 * 1024 - 4;

#[derive(Debug, Default)]
pub(super) struct RxState {
    /// A frame read from the backend that waits for descriptors.
    pending: Option<Vec<u8>>,
    /// Frames wait for descriptors (counted once in RNBC per stall).
    stalled: bool,
    buf: Vec<u8>,
    /// Wakes the backend worker to go on receiving (`backend::RxWorker`).
    pub(super) kick: Option<std::sync::Arc<vmm_sys_util::eventfd::EventFd>>,
}

impl RxState {
    fn kick_worker(&self) {
        if let Some(k) = &self.kick {
            let _ = k.write(1);
        }
    }

    /// A device reset drops the frame that waited; the backend keeps what it holds.
    pub(super) fn reset(&mut self) {
        self.pending = None;
        self.stalled = false;
    }
}

/// What became of a frame offered to the ring.
enum Offer {
    /// Written to the guest, or dropped by a filter or for being malformed.
    Consumed,
    /// Not enough free descriptors: the frame waits.
    NoRoom,
}

fn be16(f: &[u8], at: usize) -> u16 {
    f.get(at..at + 2)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
}

impl E1000e {
    /// The backend signalled frames.
    pub(super) fn backend_readable(&mut self) {
        self.deliver(false);
    }

    /// Receiving is possible: enabled, bus master, link up, a ring configured.
    fn rx_ready(&self) -> bool {
        self.mac[RCTL] & RCTL_EN != 0
            && self.dma_enabled()
            && self.mac[STATUS] & STATUS_LU != 0
            && self.mac[RDLEN] != 0
    }

    /// The guest may have given descriptors: deliver what waits, including what the
    /// backend holds but has not passed on yet (QEMU delivers queued packets at once).
    pub(super) fn start_recv(&mut self) {
        self.deliver(true);
    }

    /// Deliver the waiting frame and then the backend's, while descriptors last; `pull`
    /// asks the backend once for frames it holds when its socket has none.
    fn deliver(&mut self, mut pull: bool) {
        // Frames the filters drop take no descriptor: a peer flooding them must not keep
        // the device (and the vCPU that wrote RDT) here. Past the budget the worker
        // continues, with the lock let go in between.
        let mut budget = RX_BUDGET;
        while self.rx_ready() {
            if budget == 0 {
                self.rx.kick_worker();
                return;
            }
            budget -= 1;
            let frame = match self.rx.pending.take() {
                Some(f) => f,
                // Always try the backend (a non-blocking read): the frame may be there
                // before the worker has seen its readiness.
                None => match self.read_frame() {
                    Some(f) => f,
                    None => match self.pull.clone() {
                        Some(pull_now) if std::mem::take(&mut pull) => {
                            pull_now();
                            continue;
                        }
                        _ => return,
                    },
                },
            };
            if frame.is_empty() {
                continue;
            }
            match self.offer(&frame) {
                Offer::Consumed => self.rx.stalled = false,
                Offer::NoRoom => {
                    self.rx.pending = Some(frame);
                    if !std::mem::replace(&mut self.rx.stalled, true) {
                        self.count(RNBC, 1);
                    }
                    return;
                }
            }
        }
    }

    /// One frame from the backend (empty for one that was dropped), None when it has none.
    fn read_frame(&mut self) -> Option<Vec<u8>> {
        let io = self.io.as_mut()?;
        if self.rx.buf.len() < MAX_FRAME {
            self.rx.buf.resize(MAX_FRAME, 0);
        }
        match io.recv(&mut self.rx.buf) {
            Ok(Some(n)) if n <= MAX_FRAME => Some(self.rx.buf[..n].to_vec()),
            // Truncated: larger than any frame the device takes.
            Ok(Some(_)) => {
                self.count(ROC, 1);
                Some(Vec::new())
            }
            Ok(None) => None,
            Err(e) => {
                log::error!(
                    "{}: cannot receive from its network backend: {e}",
                    self.name
                );
                None
            }
        }
    }

    /// e1000x_rx_group_filter and the VLAN filter: whether the guest asked for `f`.
    fn accepts(&self, f: &[u8]) -> bool {
        let rctl = self.mac[RCTL];
        let vet = (self.mac[VET] & 0xffff) as u16;
        if rctl & RCTL_VFE != 0 && be16(f, 12) == vet {
            let vid = usize::from(be16(f, 14) & 0x0fff);
            if self.mac[VFTA + (vid >> 5)] & (1 << (vid & 31)) == 0 {
                return false;
            }
        }
        let dest = &f[..6];
        if dest == [0xff; 6] {
            return rctl & RCTL_BAM != 0;
        }
        let multicast = dest[0] & 1 != 0;
        if multicast && rctl & RCTL_MPE != 0 || !multicast && rctl & RCTL_UPE != 0 {
            return true;
        }
        for pair in self.mac[RA..RA + RA_WORDS].chunks_exact(2) {
            if pair[1] & RAH_AV == 0 {
                continue;
            }
            let mut ra = [0u8; 8];
            ra[..4].copy_from_slice(&pair[0].to_le_bytes());
            ra[4..].copy_from_slice(&pair[1].to_le_bytes());
            if ra[..6] == *dest {
                return true;
            }
        }
        if !multicast {
            return false;
        }
        let shift = [4, 3, 2, 0][((rctl >> RCTL_MO_SHIFT) & 3) as usize];
        let hash = ((usize::from(dest[5]) << 8 | usize::from(dest[4])) >> shift) & 0xfff;
        self.mac[MTA + (hash >> 5)] & (1 << (hash & 31)) != 0
    }

    /// Receive buffer size of one descriptor (RCTL.BSIZE/BSEX, or FLXBUF in KiB).
    fn rx_buf_size(&self) -> usize {
        let rctl = self.mac[RCTL];
        let flex = (rctl & RCTL_FLXBUF_MASK) >> RCTL_FLXBUF_SHIFT;
        if flex != 0 {
            return flex as usize * 1024;
        }
        match ((rctl >> RCTL_SZ_SHIFT) & 3, rctl & RCTL_BSEX != 0) {
            (1, true) => 16384,
            (2, true) => 8192,
            (3, true) => 4096,
            (1, false) => 1024,
            (2, false) => 512,
            (3, false) => 256,
            _ => 2048,
        }
    }

    /// Status bits (and error bits: legacy byte at 8-15, extended at 24-31) from verifying
    /// the IP header and TCP/UDP checksums, as RXCSUM enables them.
    fn rx_checksum(&self, f: &[u8], extended: bool) -> u32 {
        let rxcsum = self.mac[RXCSUM];
        if rxcsum & (RXCSUM_IPOFLD | RXCSUM_TUOFLD) == 0 {
            return RXD_STAT_IXSM;
        }
        let (ipe, tcpe) = if extended {
            (RXDEXT_ERR_IPE, RXDEXT_ERR_TCPE)
        } else {
            (RXD_ERR_IPE_LEGACY, RXD_ERR_TCPE_LEGACY)
        };
        let mut status = 0;
        let mut l3 = 14;
        let mut ethertype = be16(f, 12);
        if ethertype == (self.mac[VET] & 0xffff) as u16 {
            ethertype = be16(f, 16);
            l3 = 18;
        }
        let (proto, l4, l4_end, pseudo, ipv4) = match ethertype {
            0x0800 => {
                let Some(&vihl) = f.get(l3) else {
                    return 0;
                };
                let ihl = usize::from(vihl & 0xf) * 4;
                if vihl >> 4 != 4 || ihl < 20 || l3 + ihl > f.len() {
                    return 0;
                }
                if rxcsum & RXCSUM_IPOFLD != 0 {
                    status |= RXD_STAT_IPCS;
                    if fold(ones_sum(&f[l3..l3 + ihl], 0)) != 0xffff {
                        status |= ipe;
                    }
                }
                let total = usize::from(be16(f, l3 + 2));
                // Fragments carry no whole L4 header to verify.
                if be16(f, l3 + 6) & 0x3fff != 0 || total < ihl {
                    return status;
                }
                let end = (l3 + total).min(f.len());
                let proto = f[l3 + 9];
                let pseudo = ones_sum(&f[l3 + 12..l3 + 20], 0)
                    + u32::from(proto)
                    + (end - (l3 + ihl)) as u32;
                (proto, l3 + ihl, end, pseudo, true)
            }
            0x86dd => {
                if l3 + 40 > f.len() {
                    return 0;
                }
                let end = (l3 + 40 + usize::from(be16(f, l3 + 4))).min(f.len());
                let proto = f[l3 + 6];
                let pseudo =
                    ones_sum(&f[l3 + 8..l3 + 40], 0) + u32::from(proto) + (end - (l3 + 40)) as u32;
                (proto, l3 + 40, end, pseudo, false)
            }
            _ => return 0,
        };
        if rxcsum & RXCSUM_TUOFLD == 0 {
            return status;
        }
        let (flag, min) = match proto {
            6 => (RXD_STAT_TCPCS, 20),
            17 => (RXD_STAT_UDPCS, 8),
            _ => return status,
        };
        if l4_end < l4 + min {
            return status;
        }
        status |= flag;
        // An IPv4 UDP checksum of zero means none was computed.
        if proto == 17 && ipv4 && be16(f, l4 + 6) == 0 {
            return status;
        }
        if fold(ones_sum(&f[l4..l4_end], pseudo)) != 0xffff {
            status |= tcpe;
        }
        status
    }

    /// Filter `frame` and write it to the ring.
    fn offer(&mut self, frame: &[u8]) -> Offer {
        if frame.len() < 14 || !self.accepts(frame) {
            return Offer::Consumed;
        }
        let rctl = self.mac[RCTL];
        let max = if rctl & RCTL_LPE != 0 {
            MAX_LONG
        } else {
            MAX_SHORT
        };
        if frame.len() > max && rctl & RCTL_SBP == 0 {
            self.count(ROC, 1);
            return Offer::Consumed;
        }
        if rctl & RCTL_DTYP_MASK != 0 {
            crate::unimp!(
                "{}: packet-split receive descriptors (RCTL {rctl:#x}): frame dropped",
                self.name
            );
            return Offer::Consumed;
        }
        let ring = u64::from(self.mac[RDLEN]) / DESC_LEN;
        let (head, tail) = (u64::from(self.mac[RDH]), u64::from(self.mac[RDT]));
        if tail >= ring || head >= ring {
            let l = self.mac[RDLEN];
            self.guest_error(
                ERR_RX_RING,
                format_args!("RDH {head} or RDT {tail} is past the receive ring ({l} bytes)"),
            );
            return Offer::NoRoom;
        }
        let free = if head <= tail {
            tail - head
        } else {
            ring + tail - head
        };

        // What the guest gets: VLAN tag stripped into the descriptor, padded, FCS space.
        let vet = (self.mac[VET] & 0xffff) as u16;
        let mut f = frame.to_vec();
        let mut vlan = None;
        if self.mac[CTRL] & CTRL_VME != 0 && be16(&f, 12) == vet && f.len() >= 18 {
            vlan = Some(be16(&f, 14));
            f.drain(12..16);
        }
        if f.len() < MIN_FRAME {
            self.count(RUC, 1);
            f.resize(MIN_FRAME, 0);
        }
        let fcs = if rctl & RCTL_SECRC != 0 { 0 } else { 4 };
        let total = f.len() + fcs;
        let buf_size = self.rx_buf_size();
        let needed = total.div_ceil(buf_size) as u64;
        if needed >= ring {
            self.guest_error(
                ERR_RX_DESC,
                format_args!(
                    "a {total}-byte frame needs {needed} descriptors of {buf_size} bytes; the ring has {ring}: dropped"
                ),
            );
            return Offer::Consumed;
        }
        if free < needed {
            return Offer::NoRoom;
        }

        let extended = self.mac[RFCTL] & RFCTL_EXTEN != 0;
        let status = self.rx_checksum(&f, extended);
        f.resize(total, 0);
        self.write_frame(&f, buf_size, status, vlan);
        self.received(frame, total, free - needed);
        Offer::Consumed
    }

    /// Write `f` into the buffers from RDH on (the caller checked there are enough), each
    /// descriptor written back with DD, the last with EOP, `csum` status and the VLAN tag.
    fn write_frame(&mut self, f: &[u8], buf_size: usize, csum: u32, vlan: Option<u16>) {
        let extended = self.mac[RFCTL] & RFCTL_EXTEN != 0;
        let ring = u64::from(self.mac[RDLEN]) / DESC_LEN;
        let total = f.len();
        let base = (u64::from(self.mac[RDBAH]) << 32) | u64::from(self.mac[RDBAL]);
        let mut done = 0;
        while done < total {
            let at = base.wrapping_add(u64::from(self.mac[RDH]) * DESC_LEN);
            let mut desc = [0u8; 16];
            self.dma_read(at, &mut desc);
            let addr = u64::from_le_bytes([
                desc[0], desc[1], desc[2], desc[3], desc[4], desc[5], desc[6], desc[7],
            ]);
            let n = buf_size.min(total - done);
            if addr != 0 {
                self.dma_write(addr, &f[done..done + n]);
            }
            done += n;
            let last = done >= total;
            let mut status = RXD_STAT_DD;
            if last {
                status |= RXD_STAT_EOP | csum;
                if vlan.is_some() {
                    status |= RXD_STAT_VP;
                }
            }
            let tci = if last { vlan.unwrap_or(0) } else { 0 };
            if extended {
                // Write-back format: MRQ and RSS hash (none), status/errors, length, VLAN.
                let mut wb = [0u8; 16];
                wb[8..12].copy_from_slice(&status.to_le_bytes());
                wb[12..14].copy_from_slice(&(n as u16).to_le_bytes());
                wb[14..16].copy_from_slice(&tci.to_le_bytes());
                self.dma_write(at, &wb);
            } else {
                let mut wb = [0u8; 8];
                wb[..2].copy_from_slice(&(n as u16).to_le_bytes());
                wb[4] = status as u8;
                wb[5] = (status >> 8) as u8;
                wb[6..8].copy_from_slice(&tci.to_le_bytes());
                self.dma_write(at.wrapping_add(8), &wb);
            }
            let next = u64::from(self.mac[RDH]) + 1;
            self.mac[RDH] = if next >= ring { 0 } else { next as u32 };
        }
    }

    /// Count a received frame (`total` bytes in the buffers) and signal it: RXT0 (RXQ0
    /// with MSI-X), and RXDMT0 when the free descriptors fell to the RCTL.RDMTS threshold.
    fn received(&mut self, frame: &[u8], total: usize, free_after: u64) {
        self.count(TPR, 1);
        self.count(GPRC, 1);
        self.count64(GORCL, total as u64);
        self.count64(TORL, total as u64);
        self.count_size(PRC64, total.max(64));
        if frame[0] & 1 != 0 {
            if frame[..6] == [0xff; 6] {
                self.count(BPRC, 1);
            } else {
                self.count(MPRC, 1);
            }
        }
        let rdmts = (self.mac[RCTL] >> RCTL_RDMTS_SHIFT) & 3;
        let mut cause = if self.msix.enabled() {
            ICR_RXQ0
        } else {
            ICR_RXT0
        };
        if (u64::from(self.mac[RDLEN]) / DESC_LEN) >> (rdmts + 1) >= free_after {
            cause |= ICR_RXDMT0;
        }
        self.raise(ICR, cause);
    }
}
