//! virtio-net's control queue (QEMU's virtio_net_handle_ctrl): rx mode, MAC filter table and
//! address, VLAN filter, announce acknowledgement, queue pairs and guest offloads; and the
//! receive filter those commands configure (QEMU's receive_filter).

use super::features::*;
use super::iovec::write_front;
use super::{chain_iovecs, data_ranges, DeviceError, Net, QueueContext, MAX_CTRL};
use vm_memory::Bytes;

pub const CLASS_RX: u8 = 0;
pub const CLASS_MAC: u8 = 1;
pub const CLASS_VLAN: u8 = 2;
pub const CLASS_ANNOUNCE: u8 = 3;
pub const CLASS_MQ: u8 = 4;
pub const CLASS_GUEST_OFFLOADS: u8 = 5;

pub const OK: u8 = 0;
pub const ERR: u8 = 1;

/// QEMU's MAC_TABLE_ENTRIES and MAX_VLAN.
pub const MAC_TABLE_ENTRIES: usize = 64;
pub const MAX_VLAN: usize = 4096;

/// What a receive filter lets through; reset to QEMU's power-on state (promiscuous).
#[derive(Debug, Clone)]
pub struct RxFilter {
    pub promisc: bool,
    pub allmulti: bool,
    pub alluni: bool,
    pub nomulti: bool,
    pub nouni: bool,
    pub nobcast: bool,
    /// Unicast entries first, then multicast from `first_multi`.
    pub macs: Vec<[u8; 6]>,
    pub first_multi: usize,
    pub uni_overflow: bool,
    pub multi_overflow: bool,
    pub vlans: [u32; MAX_VLAN / 32],
}

impl Default for RxFilter {
    fn default() -> Self {
        Self {
            promisc: true,
            allmulti: false,
            alluni: false,
            nomulti: false,
            nouni: false,
            nobcast: false,
            macs: Vec::new(),
            first_multi: 0,
            uni_overflow: false,
            multi_overflow: false,
            vlans: [0; MAX_VLAN / 32],
        }
    }
}

impl RxFilter {
    /// QEMU's receive_filter on the frame's first bytes (`head`: at least the Ethernet
    /// header and a VLAN tag when the frame has them) for a device whose MAC is `mac`.
    pub fn accepts(&self, mac: &[u8; 6], head: &[u8]) -> bool {
        if self.promisc {
            return true;
        }
        if head.len() >= 16 && head[12..14] == [0x81, 0x00] {
            let vid = usize::from(u16::from_be_bytes([head[14], head[15]]) & 0xfff);
            if self.vlans[vid >> 5] & (1 << (vid & 0x1f)) == 0 {
                return false;
            }
        }
        let Some(dest) = head.get(..6) else {
            return false;
        };
        if dest[0] & 1 != 0 {
            if dest == [0xff; 6] {
                return !self.nobcast;
            }
            if self.nomulti {
                return false;
            }
            if self.allmulti || self.multi_overflow {
                return true;
            }
            self.macs[self.first_multi..].iter().any(|m| m == dest)
        } else {
            if self.nouni {
                return false;
            }
            if self.alluni || self.uni_overflow || dest == mac {
                return true;
            }
            self.macs[..self.first_multi].iter().any(|m| m == dest)
        }
    }
}

/// What a command changes besides the filter, for the device to act on.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    /// New guest offloads (feature bits) for the taps.
    Offloads(u64),
    /// New number of active queue pairs.
    QueuePairs(usize),
}

/// The device state commands read and change.
pub struct CtrlState<'a> {
    pub filter: &'a mut RxFilter,
    pub mac: &'a mut [u8; 6],
    /// Features the driver acked.
    pub acked: u64,
    /// The backend carries virtio-net headers (a tap), so offloads can be set.
    pub vnet_hdr: bool,
    pub max_pairs: usize,
    /// VIRTIO_NET_S_ANNOUNCE is set (cleared by an acknowledgement).
    pub announce: &'a mut bool,
}

fn le32(b: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(..4)?.try_into().ok()?))
}

/// Run one command: `class`, `cmd` and the rest of the device-readable bytes `data`
/// (`total` of them in the chain; `data` may hold fewer when the chain is huge). Returns the
/// status byte and what the device must do.
pub fn handle(st: &mut CtrlState, class: u8, cmd: u8, data: &[u8], total: usize) -> (u8, Effect) {
    let done = match class {
        CLASS_RX => rx_mode(st, cmd, data),
        CLASS_MAC => mac(st, cmd, data, total),
        CLASS_VLAN => vlan(st, cmd, data),
        // VIRTIO_NET_CTRL_ANNOUNCE_ACK, only while an announcement is pending.
        CLASS_ANNOUNCE => (cmd == 0 && std::mem::take(st.announce)).then_some(Effect::None),
        CLASS_MQ => queue_pairs(st, cmd, data),
        CLASS_GUEST_OFFLOADS => guest_offloads(st, cmd, data),
        _ => None,
    };
    match done {
        Some(effect) => (OK, effect),
        None => (ERR, Effect::None),
    }
}

fn le16(data: &[u8]) -> Option<usize> {
    data.get(..2)
        .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
}

/// VIRTIO_NET_CTRL_RX_*: promiscuous, all-multicast, all-unicast, no multicast, no
/// unicast, no broadcast.
fn rx_mode(st: &mut CtrlState, cmd: u8, data: &[u8]) -> Option<Effect> {
    let on = *data.first()? != 0;
    let f = &mut *st.filter;
    match cmd {
        0 => f.promisc = on,
        1 => f.allmulti = on,
        2 => f.alluni = on,
        3 => f.nomulti = on,
        4 => f.nouni = on,
        5 => f.nobcast = on,
        _ => return None,
    }
    Some(Effect::None)
}

fn mac(st: &mut CtrlState, cmd: u8, data: &[u8], total: usize) -> Option<Effect> {
    match cmd {
        // VIRTIO_NET_CTRL_MAC_ADDR_SET: exactly six bytes.
        1 if total == 6 && data.len() >= 6 => st.mac.copy_from_slice(&data[..6]),
        // VIRTIO_NET_CTRL_MAC_TABLE_SET: two tables, each a count and its addresses.
        0 => {
            let f = &mut *st.filter;
            (f.macs, f.first_multi, f.uni_overflow, f.multi_overflow) = mac_table(data, total)?;
        }
        _ => return None,
    }
    Some(Effect::None)
}

/// VIRTIO_NET_CTRL_VLAN_ADD / _DEL.
fn vlan(st: &mut CtrlState, cmd: u8, data: &[u8]) -> Option<Effect> {
    let vid = le16(data).filter(|v| *v < MAX_VLAN)?;
    let bit = 1u32 << (vid & 0x1f);
    match cmd {
        0 => st.filter.vlans[vid >> 5] |= bit,
        1 => st.filter.vlans[vid >> 5] &= !bit,
        _ => return None,
    }
    Some(Effect::None)
}

/// VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET (RSS and hash configuration are not offered).
fn queue_pairs(st: &mut CtrlState, cmd: u8, data: &[u8]) -> Option<Effect> {
    if cmd != 0 || st.acked & F_MQ == 0 {
        return None;
    }
    // VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN/MAX and the device's own maximum.
    let pairs = le16(data).filter(|p| (1..=0x8000).contains(p) && *p <= st.max_pairs)?;
    Some(Effect::QueuePairs(pairs))
}

/// VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET, within what the driver negotiated.
fn guest_offloads(st: &mut CtrlState, cmd: u8, data: &[u8]) -> Option<Effect> {
    if st.acked & F_CTRL_GUEST_OFFLOADS == 0 {
        return None;
    }
    let offloads = u64::from_le_bytes(data.get(..8)?.try_into().ok()?);
    if cmd != 0 || !st.vnet_hdr || offloads & !(st.acked & GUEST_OFFLOADS) != 0 {
        return None;
    }
    Some(Effect::Offloads(offloads))
}

type MacTable = (Vec<[u8; 6]>, usize, bool, bool);

/// QEMU's virtio_net_handle_mac for MAC_TABLE_SET: None where QEMU answers ERR.
fn mac_table(data: &[u8], total: usize) -> Option<MacTable> {
    let macs_of = |b: &[u8], n: usize| -> Vec<[u8; 6]> {
        b[..n * 6]
            .chunks_exact(6)
            .map(|c| [c[0], c[1], c[2], c[3], c[4], c[5]])
            .collect()
    };
    let uni = le32(data)? as usize;
    let rest = total.checked_sub(4)?;
    let uni_bytes = uni.checked_mul(6)?;
    if uni_bytes > rest {
        return None;
    }
    let mut macs = Vec::new();
    let mut uni_overflow = false;
    let body = data.get(4..)?;
    if uni <= MAC_TABLE_ENTRIES {
        macs = macs_of(body.get(..uni_bytes)?, uni);
    } else {
        uni_overflow = true;
    }
    let first_multi = macs.len();
    let after = body.get(uni_bytes..)?;
    let multi = le32(after)? as usize;
    let rest = rest - uni_bytes;
    let multi_bytes = multi.checked_mul(6)?;
    if rest.checked_sub(4)? != multi_bytes {
        return None;
    }
    let mut multi_overflow = false;
    if multi <= MAC_TABLE_ENTRIES - macs.len() {
        macs.extend(macs_of(after.get(4..4 + multi_bytes)?, multi));
    } else {
        multi_overflow = true;
    }
    Some((macs, first_multi, uni_overflow, multi_overflow))
}

/// The control queue's chains: each command read from guest memory, handled, its status
/// written back, then its effects applied to the device.
impl Net {
    /// Serve the control queue (QEMU processes commands whether or not CTRL_VQ was acked).
    pub(super) fn control(&mut self, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        let idx = self.ctrl_queue();
        let mut effects = Vec::new();
        let mut st = CtrlState {
            filter: &mut self.filter,
            mac: &mut self.mac,
            acked: self.acked,
            vnet_hdr: !self.socket,
            max_pairs: self.pairs.len(),
            announce: &mut self.announce,
        };
        let used = ctx.drain_queue(idx, |mem, chain| {
            let out = data_ranges(&chain, false, 0, usize::MAX);
            let total: usize = out.iter().map(|r| r.1).sum();
            let mut cmd = vec![0u8; total.min(MAX_CTRL)];
            let mut at = 0;
            for &(addr, len) in &out {
                let n = len.min(cmd.len() - at);
                if mem.read_slice(&mut cmd[at..at + n], addr).is_err() {
                    return Err(DeviceError::BadChain {
                        queue: idx,
                        reason: "control command outside guest memory".into(),
                    });
                }
                at += n;
            }
            let status_iovs = chain_iovecs(mem, &chain, true).unwrap_or_default();
            if total < 2 || status_iovs.iter().map(|v| v.iov_len).sum::<usize>() < 1 {
                return Err(DeviceError::BadChain {
                    queue: idx,
                    reason: "virtio-net ctrl missing headers".into(),
                });
            }
            let (status, effect) = handle(&mut st, cmd[0], cmd[1], &cmd[2..], total - 2);
            effects.push(effect);
            write_front(&status_iovs, &[status]);
            Ok(1)
        })?;
        for e in effects {
            match e {
                Effect::None => {}
                Effect::Offloads(o) => {
                    self.guest_offloads = o;
                    self.apply_offloads();
                }
                Effect::QueuePairs(n) => self.set_active_pairs(n),
            }
        }
        if used == Some(true) {
            ctx.notify(idx);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn frame(dest: [u8; 6], vlan: Option<u16>) -> Vec<u8> {
        let mut f = dest.to_vec();
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        if let Some(v) = vlan {
            f.extend_from_slice(&[0x81, 0]);
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&[0x08, 0]);
        f
    }

    fn state<'a>(
        filter: &'a mut RxFilter,
        mac: &'a mut [u8; 6],
        announce: &'a mut bool,
        acked: u64,
    ) -> CtrlState<'a> {
        CtrlState {
            filter,
            mac,
            acked,
            vnet_hdr: true,
            max_pairs: 2,
            announce,
        }
    }

    fn table(uni: &[[u8; 6]], multi: &[[u8; 6]]) -> Vec<u8> {
        let mut d = (uni.len() as u32).to_le_bytes().to_vec();
        uni.iter().for_each(|m| d.extend_from_slice(m));
        d.extend_from_slice(&(multi.len() as u32).to_le_bytes());
        multi.iter().for_each(|m| d.extend_from_slice(m));
        d
    }

    #[test]
    fn the_filter_follows_rx_mode_mac_table_and_vlans() {
        let (mut f, mut mac, mut ann) = (RxFilter::default(), MAC, false);
        let other = [0x52, 0x54, 0, 0, 0, 9];
        let group = [0x01, 0, 0x5e, 0, 0, 1];
        assert!(f.accepts(&MAC, &frame(other, None)), "promiscuous at reset");
        let mut st = state(&mut f, &mut mac, &mut ann, 0);
        assert_eq!(handle(&mut st, CLASS_RX, 0, &[0], 1).0, OK);
        assert!(!st.filter.accepts(&MAC, &frame(other, None)));
        assert!(st.filter.accepts(&MAC, &frame(MAC, None)));
        assert!(st.filter.accepts(&MAC, &frame([0xff; 6], None)));
        assert!(!st.filter.accepts(&MAC, &frame(group, None)));
        let t = table(&[other], &[group]);
        assert_eq!(handle(&mut st, CLASS_MAC, 0, &t, t.len()).0, OK);
        assert!(st.filter.accepts(&MAC, &frame(other, None)));
        assert!(st.filter.accepts(&MAC, &frame(group, None)));
        assert_eq!(handle(&mut st, CLASS_RX, 5, &[1], 1).0, OK);
        assert!(!st.filter.accepts(&MAC, &frame([0xff; 6], None)));
        // A tagged frame needs its VLAN in the table.
        assert!(!st.filter.accepts(&MAC, &frame(MAC, Some(5))));
        assert_eq!(handle(&mut st, CLASS_VLAN, 0, &5u16.to_le_bytes(), 2).0, OK);
        assert!(st.filter.accepts(&MAC, &frame(MAC, Some(5))));
        assert_eq!(handle(&mut st, CLASS_VLAN, 1, &5u16.to_le_bytes(), 2).0, OK);
        assert!(!st.filter.accepts(&MAC, &frame(MAC, Some(5))));
        assert_eq!(
            handle(&mut st, CLASS_VLAN, 0, &4096u16.to_le_bytes(), 2).0,
            ERR
        );
    }

    #[test]
    fn bad_commands_are_refused_as_qemu_refuses_them() {
        let (mut f, mut mac, mut ann) = (RxFilter::default(), MAC, false);
        let mut st = state(&mut f, &mut mac, &mut ann, 0);
        // MAC_ADDR_SET takes exactly six bytes.
        assert_eq!(handle(&mut st, CLASS_MAC, 1, &[1; 7], 7).0, ERR);
        assert_eq!(handle(&mut st, CLASS_MAC, 1, &[2; 6], 6).0, OK);
        assert_eq!(*st.mac, [2; 6]);
        // A table whose second count does not match the bytes left.
        let mut t = table(&[[1; 6]], &[[3; 6]]);
        t.push(0);
        assert_eq!(handle(&mut st, CLASS_MAC, 0, &t, t.len()).0, ERR);
        // Too many unicast entries overflow (accept all unicast) rather than fail.
        let many: Vec<[u8; 6]> = (0..65).map(|i| [0, 0, 0, 0, 0, i as u8]).collect();
        let t = table(&many, &[]);
        assert_eq!(handle(&mut st, CLASS_MAC, 0, &t, t.len()).0, OK);
        assert!(st.filter.uni_overflow && st.filter.macs.is_empty());
        // Offloads and queue pairs need their features; announce needs a pending announce.
        assert_eq!(handle(&mut st, CLASS_GUEST_OFFLOADS, 0, &[0; 8], 8).0, ERR);
        assert_eq!(handle(&mut st, CLASS_MQ, 0, &2u16.to_le_bytes(), 2).0, ERR);
        assert_eq!(handle(&mut st, CLASS_ANNOUNCE, 0, &[], 0).0, ERR);
        assert_eq!(handle(&mut st, 9, 0, &[], 0).0, ERR);
        let acked = F_CTRL_GUEST_OFFLOADS | F_GUEST_CSUM | F_MQ;
        let mut st = state(&mut f, &mut mac, &mut ann, acked);
        let csum = F_GUEST_CSUM.to_le_bytes();
        assert_eq!(
            handle(&mut st, CLASS_GUEST_OFFLOADS, 0, &csum, 8),
            (OK, Effect::Offloads(F_GUEST_CSUM))
        );
        let tso = F_GUEST_TSO4.to_le_bytes();
        assert_eq!(handle(&mut st, CLASS_GUEST_OFFLOADS, 0, &tso, 8).0, ERR);
        assert_eq!(
            handle(&mut st, CLASS_MQ, 0, &2u16.to_le_bytes(), 2),
            (OK, Effect::QueuePairs(2))
        );
        assert_eq!(handle(&mut st, CLASS_MQ, 0, &3u16.to_le_bytes(), 2).0, ERR);
        assert_eq!(handle(&mut st, CLASS_MQ, 0, &0u16.to_le_bytes(), 2).0, ERR);
        st.max_pairs = 1;
        assert_eq!(
            handle(&mut st, CLASS_MQ, 0, &1u16.to_le_bytes(), 2),
            (OK, Effect::QueuePairs(1))
        );
    }
}
