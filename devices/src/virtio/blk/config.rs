//! The virtio-blk configuration space (struct virtio_blk_config) and the disk size behind
//! its capacity, which `block_resize` changes while the guest runs.

use super::{BlockOptions, F_DISCARD, F_WRITE_ZEROES, MAX_SECTORS, SECTOR};
use crate::virtio::interrupt::VirtioInterrupt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Config-space offsets (struct virtio_blk_config).
pub(super) mod cfg {
    pub const CAPACITY: usize = 0x00;
    pub const SEG_MAX: usize = 0x0c;
    pub const CYLINDERS: usize = 0x10;
    pub const HEADS: usize = 0x12;
    pub const SECTORS: usize = 0x13;
    pub const BLK_SIZE: usize = 0x14;
    pub const WCE: usize = 0x20;
    pub const NUM_QUEUES: usize = 0x22;
    pub const MAX_DISCARD_SECTORS: usize = 0x24;
    pub const MAX_DISCARD_SEG: usize = 0x28;
    pub const DISCARD_ALIGN: usize = 0x2c;
    pub const MAX_WZ_SECTORS: usize = 0x30;
    pub const MAX_WZ_SEG: usize = 0x34;
    pub const WZ_MAY_UNMAP: usize = 0x38;
    /// Size with WRITE_ZEROES, with DISCARD only, and the minimum (endof topology/wce/mq).
    pub const LEN_WZ: usize = 0x3c;
    pub const LEN_DISCARD: usize = 0x30;
    pub const LEN_MIN: usize = 0x24;
}

/// The disk size the guest sees, in sectors, shared with the monitor: `block_resize`
/// changes it and raises the device's configuration interrupt (virtio_notify_config).
/// One per drive, so it outlives the device rebuilt by a reset.
#[derive(Default)]
pub struct DiskSize {
    sectors: AtomicU64,
    /// The interrupt of the device using the drive now (none before the build or after an
    /// unplug).
    irq: Mutex<Weak<VirtioInterrupt>>,
}

impl DiskSize {
    pub fn sectors(&self) -> u64 {
        self.sectors.load(Ordering::Acquire)
    }

    pub(super) fn set_bytes(&self, bytes: u64) {
        self.sectors.store(bytes / SECTOR, Ordering::Release);
    }

    /// The device using the drive signals its config changes on `irq`.
    pub fn attach(&self, irq: &Arc<VirtioInterrupt>) {
        *self.irq.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(irq);
    }

    /// The image now holds `bytes`: the capacity follows (whole sectors) and the device,
    /// if any, raises a config-change interrupt.
    pub fn resize(&self, bytes: u64) {
        self.set_bytes(bytes);
        let irq = self.irq.lock().unwrap_or_else(|e| e.into_inner()).upgrade();
        if let Some(irq) = irq {
            irq.signal_config();
        }
    }
}

fn config_len_for(features: u64) -> usize {
    if features & F_WRITE_ZEROES != 0 {
        cfg::LEN_WZ
    } else if features & F_DISCARD != 0 {
        cfg::LEN_DISCARD
    } else {
        cfg::LEN_MIN
    }
}

/// virtio_blk_update_config: the config bytes for a disk of `capacity` sectors.
pub(super) fn build(opts: &BlockOptions, features: u64, capacity: u64, wce: bool) -> Vec<u8> {
    let mut c = vec![0u8; cfg::LEN_WZ];
    let put = |c: &mut [u8], at: usize, v: &[u8]| c[at..at + v.len()].copy_from_slice(v);
    put(&mut c, cfg::CAPACITY, &capacity.to_le_bytes());
    // seg-max-adjust: queue size minus the header and status descriptors.
    let seg_max = u32::from(opts.queue_size.saturating_sub(2));
    put(&mut c, cfg::SEG_MAX, &seg_max.to_le_bytes());
    // hd_geometry_guess for an unpartitioned image: 16 heads, 63 sectors.
    let cyls = (capacity / (16 * 63)).clamp(2, 16383) as u16;
    put(&mut c, cfg::CYLINDERS, &cyls.to_le_bytes());
    c[cfg::HEADS] = 16;
    c[cfg::SECTORS] = 63;
    put(&mut c, cfg::BLK_SIZE, &(SECTOR as u32).to_le_bytes());
    c[cfg::WCE] = u8::from(wce);
    put(&mut c, cfg::NUM_QUEUES, &opts.num_queues.to_le_bytes());
    put(&mut c, cfg::MAX_DISCARD_SECTORS, &MAX_SECTORS.to_le_bytes());
    put(&mut c, cfg::MAX_DISCARD_SEG, &1u32.to_le_bytes());
    put(&mut c, cfg::DISCARD_ALIGN, &1u32.to_le_bytes());
    put(&mut c, cfg::MAX_WZ_SECTORS, &MAX_SECTORS.to_le_bytes());
    put(&mut c, cfg::MAX_WZ_SEG, &1u32.to_le_bytes());
    c[cfg::WZ_MAY_UNMAP] = 1;
    c.truncate(config_len_for(features));
    c
}
