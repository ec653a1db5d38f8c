//! virtio-net's feature bits (virtio 1.x §5.1.3), the device properties that request them
//! with QEMU 7.2's defaults, and the TUN_F_* offloads a tap gets for the receive offloads
//! in force.

pub const F_CSUM: u64 = 1 << 0;
pub const F_GUEST_CSUM: u64 = 1 << 1;
pub const F_CTRL_GUEST_OFFLOADS: u64 = 1 << 2;
pub const F_MAC: u64 = 1 << 5;
/// Legacy: the device takes any GSO type (shown only through the legacy interface).
pub const F_GSO: u64 = 1 << 6;
pub const F_GUEST_TSO4: u64 = 1 << 7;
pub const F_GUEST_TSO6: u64 = 1 << 8;
pub const F_GUEST_ECN: u64 = 1 << 9;
pub const F_GUEST_UFO: u64 = 1 << 10;
pub const F_HOST_TSO4: u64 = 1 << 11;
pub const F_HOST_TSO6: u64 = 1 << 12;
pub const F_HOST_ECN: u64 = 1 << 13;
pub const F_HOST_UFO: u64 = 1 << 14;
pub const F_MRG_RXBUF: u64 = 1 << 15;
pub const F_STATUS: u64 = 1 << 16;
pub const F_CTRL_VQ: u64 = 1 << 17;
pub const F_CTRL_RX: u64 = 1 << 18;
pub const F_CTRL_VLAN: u64 = 1 << 19;
pub const F_CTRL_RX_EXTRA: u64 = 1 << 20;
pub const F_GUEST_ANNOUNCE: u64 = 1 << 21;
pub const F_MQ: u64 = 1 << 22;
pub const F_CTRL_MAC_ADDR: u64 = 1 << 23;
/// The receive offloads (QEMU's guest_offloads_mask for what machina offers).
pub const GUEST_OFFLOADS: u64 =
    F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_ECN | F_GUEST_UFO;
/// What needs a backend that carries virtio-net headers (QEMU clears these when the
/// peer has no vnet header).
pub const NEED_VNET_HDR: u64 =
    F_CSUM | F_HOST_TSO4 | F_HOST_TSO6 | F_HOST_ECN | F_HOST_UFO | GUEST_OFFLOADS;

/// The feature properties machina implements (QEMU's virtio_net_properties) with their
/// bits and QEMU 7.2's defaults.
pub const FEATURE_PROPERTIES: &[(&str, u64, bool)] = &[
    ("csum", F_CSUM, true),
    ("guest_csum", F_GUEST_CSUM, true),
    ("ctrl_guest_offloads", F_CTRL_GUEST_OFFLOADS, true),
    ("gso", F_GSO, true),
    ("guest_tso4", F_GUEST_TSO4, true),
    ("guest_tso6", F_GUEST_TSO6, true),
    ("guest_ecn", F_GUEST_ECN, true),
    ("guest_ufo", F_GUEST_UFO, true),
    ("host_tso4", F_HOST_TSO4, true),
    ("host_tso6", F_HOST_TSO6, true),
    ("host_ecn", F_HOST_ECN, true),
    ("host_ufo", F_HOST_UFO, true),
    ("mrg_rxbuf", F_MRG_RXBUF, true),
    ("status", F_STATUS, true),
    ("ctrl_vq", F_CTRL_VQ, true),
    ("ctrl_rx", F_CTRL_RX, true),
    ("ctrl_vlan", F_CTRL_VLAN, true),
    ("ctrl_rx_extra", F_CTRL_RX_EXTRA, true),
    ("guest_announce", F_GUEST_ANNOUNCE, true),
    ("mq", F_MQ, false),
    ("ctrl_mac_addr", F_CTRL_MAC_ADDR, true),
];

/// QEMU's defaults of [`FEATURE_PROPERTIES`].
pub fn default_requested() -> u64 {
    FEATURE_PROPERTIES
        .iter()
        .filter(|(_, _, on)| *on)
        .fold(0, |acc, (_, bit, _)| acc | bit)
}

/// QEMU's tap_fd_set_offload: TUN_F_* from the receive offloads in force.
pub(super) fn tun_offloads(offloads: u64) -> libc::c_uint {
    const TUN_F_CSUM: libc::c_uint = 0x01;
    const TUN_F_TSO4: libc::c_uint = 0x02;
    const TUN_F_TSO6: libc::c_uint = 0x04;
    const TUN_F_TSO_ECN: libc::c_uint = 0x08;
    const TUN_F_UFO: libc::c_uint = 0x10;
    let mut f = 0;
    if offloads & F_GUEST_CSUM != 0 {
        f |= TUN_F_CSUM;
        if offloads & F_GUEST_TSO4 != 0 {
            f |= TUN_F_TSO4;
        }
        if offloads & F_GUEST_TSO6 != 0 {
            f |= TUN_F_TSO6;
        }
        if offloads & (F_GUEST_TSO4 | F_GUEST_TSO6) != 0 && offloads & F_GUEST_ECN != 0 {
            f |= TUN_F_TSO_ECN;
        }
        if offloads & F_GUEST_UFO != 0 {
            f |= TUN_F_UFO;
        }
    }
    f
}
