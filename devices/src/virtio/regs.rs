//! virtio-pci register layout and bits (virtio 1.x §4.1, legacy §4.1.4.8) as QEMU uses them.
//! virtio-bindings has none of the PCI transport's constants, so they are spelled out here.

/// Legacy (0.9.5) I/O BAR header.
pub mod legacy {
    pub const HOST_FEATURES: u64 = 0x00;
    pub const GUEST_FEATURES: u64 = 0x04;
    pub const QUEUE_PFN: u64 = 0x08;
    pub const QUEUE_NUM: u64 = 0x0c;
    pub const QUEUE_SEL: u64 = 0x0e;
    pub const QUEUE_NOTIFY: u64 = 0x10;
    pub const STATUS: u64 = 0x12;
    pub const ISR: u64 = 0x13;
    /// Present only while MSI-X is enabled; the device config moves from 20 to 24.
    pub const MSI_CONFIG_VECTOR: u64 = 0x14;
    pub const MSI_QUEUE_VECTOR: u64 = 0x16;
    /// Header length without and with the MSI-X vector registers.
    pub const HEADER: u64 = 20;
    pub const HEADER_MSIX: u64 = 24;
    /// Queue PFN shift and ring alignment (VIRTIO_PCI_QUEUE_ADDR_SHIFT, VIRTIO_PCI_VRING_ALIGN).
    pub const PFN_SHIFT: u32 = 12;
    pub const VRING_ALIGN: u64 = 4096;
}

/// `struct virtio_pci_common_cfg` offsets.
pub mod common {
    pub const DFSELECT: u64 = 0x00;
    pub const DF: u64 = 0x04;
    pub const GFSELECT: u64 = 0x08;
    pub const GF: u64 = 0x0c;
    pub const MSIX: u64 = 0x10;
    pub const NUMQ: u64 = 0x12;
    pub const STATUS: u64 = 0x14;
    pub const CFGGENERATION: u64 = 0x15;
    pub const Q_SELECT: u64 = 0x16;
    pub const Q_SIZE: u64 = 0x18;
    pub const Q_MSIX: u64 = 0x1a;
    pub const Q_ENABLE: u64 = 0x1c;
    pub const Q_NOFF: u64 = 0x1e;
    pub const Q_DESCLO: u64 = 0x20;
    pub const Q_DESCHI: u64 = 0x24;
    pub const Q_AVAILLO: u64 = 0x28;
    pub const Q_AVAILHI: u64 = 0x2c;
    pub const Q_USEDLO: u64 = 0x30;
    pub const Q_USEDHI: u64 = 0x34;
    /// virtio 1.2 fields machina does not implement (VIRTIO_F_NOTIF_CONFIG_DATA,
    /// VIRTIO_F_RING_RESET are not offered).
    pub const Q_NDATA: u64 = 0x38;
    pub const Q_RESET: u64 = 0x3a;
}

/// The modern memory BAR (QEMU's `modern_bar`, BAR 4): regions of 4 KiB each.
pub mod modern {
    pub const BAR: usize = 4;
    pub const COMMON: u64 = 0x0000;
    pub const ISR: u64 = 0x1000;
    pub const DEVICE: u64 = 0x2000;
    pub const NOTIFY: u64 = 0x3000;
    pub const REGION_SIZE: u64 = 0x1000;
    /// notify_off_multiplier (4, or 0x1000 with page-per-vq which we do not offer).
    pub const NOTIFY_MULTIPLIER: u32 = 4;
    /// pow2ceil(NOTIFY + 4 * VIRTIO_QUEUE_MAX).
    pub const BAR_SIZE: u64 = 0x4000;
}

pub const LEGACY_BAR: usize = 0;
pub const MSIX_BAR: usize = 1;
/// QEMU's VIRTIO_QUEUE_MAX: queue selectors at or past it are ignored.
pub const QUEUE_MAX: u16 = 1024;
/// VIRTIO_MSI_NO_VECTOR.
pub const NO_VECTOR: u16 = 0xffff;

/// Vendor capability `cfg_type` values.
pub const CAP_COMMON_CFG: u8 = 1;
pub const CAP_NOTIFY_CFG: u8 = 2;
pub const CAP_ISR_CFG: u8 = 3;
pub const CAP_DEVICE_CFG: u8 = 4;
pub const CAP_PCI_CFG: u8 = 5;
/// PCI_CAP_ID_VNDR.
pub const CAP_ID_VENDOR: u8 = 0x09;

/// Device status bits.
pub mod status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FEATURES_OK: u8 = 8;
    pub const NEEDS_RESET: u8 = 0x40;
    pub const FAILED: u8 = 0x80;
}

/// ISR bits: a used buffer, a configuration change.
pub const ISR_QUEUE: u8 = 1;
pub const ISR_CONFIG: u8 = 2;

/// Transport feature bits (virtio 1.x §6).
pub mod features {
    pub const NOTIFY_ON_EMPTY: u64 = 1 << 24;
    pub const ANY_LAYOUT: u64 = 1 << 27;
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// Legacy "bad feature" bit QEMU offers so broken drivers can be spotted.
    pub const BAD_FEATURE: u64 = 1 << 30;
    pub const VERSION_1: u64 = 1 << 32;
    /// Features only a legacy interface shows (QEMU's legacy_features for the modern view).
    pub const LEGACY_ONLY: u64 = NOTIFY_ON_EMPTY | ANY_LAYOUT | BAD_FEATURE;
}
