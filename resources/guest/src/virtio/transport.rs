//! Transports: the legacy I/O BAR and the modern vendor capabilities.

use super::*;

/// Where a virtio structure lies: BAR `bar`, `offset`, `length`.
#[derive(Clone, Copy)]
pub(crate) struct CapLoc {
    pub(crate) bar: u8,
    pub(crate) offset: u32,
    pub(crate) length: u32,
}

/// What the vendor-specific capabilities describe.
#[derive(Clone, Copy, Default)]
pub(crate) struct ModernCaps {
    pub(crate) any: bool,
    pub(crate) common: Option<CapLoc>,
    pub(crate) notify: Option<(CapLoc, u32)>,
    pub(crate) device: Option<CapLoc>,
}

pub(crate) struct Modern {
    pub(crate) common: u64,
    pub(crate) notify: u64,
    pub(crate) notify_len: u32,
    pub(crate) notify_mult: u32,
    pub(crate) device: u64,
    pub(crate) device_len: u32,
}

pub(crate) enum Transport {
    Legacy { io: u16, config: u16 },
    Modern(Modern),
}

impl Modern {
    pub(crate) fn r8(&self, off: u64) -> u8 {
        phys::mmio_read(self.common + off).unwrap_or(0xff)
    }

    pub(crate) fn r16(&self, off: u64) -> u16 {
        phys::mmio_read(self.common + off).unwrap_or(0xffff)
    }

    pub(crate) fn r32(&self, off: u64) -> u32 {
        phys::mmio_read(self.common + off).unwrap_or(u32::MAX)
    }

    pub(crate) fn w8(&self, off: u64, v: u8) {
        phys::mmio_write(self.common + off, v);
    }

    pub(crate) fn w16(&self, off: u64, v: u16) {
        phys::mmio_write(self.common + off, v);
    }

    pub(crate) fn w32(&self, off: u64, v: u32) {
        phys::mmio_write(self.common + off, v);
    }

    pub(crate) fn w64(&self, off: u64, v: u64) {
        self.w32(off, v as u32);
        self.w32(off + 4, (v >> 32) as u32);
    }
}

impl Transport {
    pub(crate) fn status(&self) -> u8 {
        match self {
            Transport::Legacy { io, .. } => inb(io + LEG_STATUS),
            Transport::Modern(m) => m.r8(COM_DEVICE_STATUS),
        }
    }

    pub(crate) fn set_status(&self, status: u8) {
        match self {
            Transport::Legacy { io, .. } => outb(io + LEG_STATUS, status),
            Transport::Modern(m) => m.w8(COM_DEVICE_STATUS, status),
        }
    }

    /// Writes status 0 and waits (boundedly) until it reads back as 0.
    pub(crate) fn reset(&self) -> Result<(), Reason> {
        self.set_status(0);
        let mut deadline = Deadline::after_ms(RESET_TIMEOUT_MS);
        while self.status() != 0 {
            if deadline.expired() {
                return Err("reset-timeout");
            }
        }
        Ok(())
    }

    /// Reset, ACKNOWLEDGE, DRIVER, feature negotiation (and FEATURES_OK on
    /// the modern interface). Returns (offered, negotiated) features.
    pub(crate) fn negotiate(&self, wanted: u64) -> Result<(u64, u64), Reason> {
        self.reset()?;
        self.set_status(STATUS_ACKNOWLEDGE);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        match self {
            Transport::Legacy { io, .. } => {
                let offered = u64::from(inl(io + LEG_HOST_FEATURES));
                let features = offered & wanted & 0xffff_ffff;
                outl(io + LEG_GUEST_FEATURES, features as u32);
                Ok((offered, features))
            }
            Transport::Modern(m) => {
                m.w32(COM_DEVICE_FEATURE_SELECT, 0);
                let lo = m.r32(COM_DEVICE_FEATURE);
                m.w32(COM_DEVICE_FEATURE_SELECT, 1);
                let hi = m.r32(COM_DEVICE_FEATURE);
                let offered = u64::from(hi) << 32 | u64::from(lo);
                if offered & F_VERSION_1 == 0 {
                    return Err("no-version-1");
                }
                let features = offered & (wanted | F_VERSION_1);
                m.w32(COM_DRIVER_FEATURE_SELECT, 0);
                m.w32(COM_DRIVER_FEATURE, features as u32);
                m.w32(COM_DRIVER_FEATURE_SELECT, 1);
                m.w32(COM_DRIVER_FEATURE, (features >> 32) as u32);
                let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
                self.set_status(status);
                if self.status() & STATUS_FEATURES_OK == 0 {
                    return Err("features-not-ok");
                }
                Ok((offered, features))
            }
        }
    }

    /// Sets up queue `index` in DMA queue slot `slot` (0 or 1).
    pub(crate) fn setup_queue(&self, index: u16, slot: usize) -> Result<Queue, Reason> {
        let slot = slot * QUEUE_SLOT;
        match self {
            Transport::Legacy { io, .. } => {
                outw(io + LEG_QUEUE_SELECT, index);
                // The legacy queue size is fixed by the device.
                let size = inw(io + LEG_QUEUE_SIZE);
                if size == 0 {
                    return Err("no-queue");
                }
                let q = Queue::new(index, slot, size, Notify::Io(io + LEG_QUEUE_NOTIFY))?;
                outl(io + LEG_QUEUE_PFN, (dma_addr(q.desc) >> 12) as u32);
                Ok(q)
            }
            Transport::Modern(m) => {
                m.w16(COM_QUEUE_SELECT, index);
                let max = m.r16(COM_QUEUE_SIZE);
                if max == 0 {
                    return Err("no-queue");
                }
                let size = max.min(MODERN_QUEUE_SIZE);
                let off = u64::from(m.r16(COM_QUEUE_NOTIFY_OFF)) * u64::from(m.notify_mult);
                if off + 2 > u64::from(m.notify_len) {
                    return Err("notify-out-of-range");
                }
                let q = Queue::new(index, slot, size, Notify::Mmio(m.notify + off))?;
                m.w16(COM_QUEUE_SIZE, size);
                m.w64(COM_QUEUE_DESC, dma_addr(q.desc));
                m.w64(COM_QUEUE_DRIVER, dma_addr(q.avail));
                m.w64(COM_QUEUE_DEVICE, dma_addr(q.used));
                m.w16(COM_QUEUE_ENABLE, 1);
                Ok(q)
            }
        }
    }

    pub(crate) fn driver_ok(&self) {
        let status = self.status() & (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        self.set_status(status | STATUS_DRIVER_OK);
    }

    pub(crate) fn cfg8(&self, off: u16) -> u8 {
        match self {
            Transport::Legacy { io, config } => inb(io + config + off),
            Transport::Modern(m) if u32::from(off) < m.device_len => {
                phys::mmio_read(m.device + u64::from(off)).unwrap_or(0xff)
            }
            Transport::Modern(_) => 0xff,
        }
    }

    pub(crate) fn cfg32(&self, off: u16) -> u32 {
        match self {
            Transport::Legacy { io, config } => inl(io + config + off),
            Transport::Modern(m) if u32::from(off) + 4 <= m.device_len => {
                phys::mmio_read(m.device + u64::from(off)).unwrap_or(u32::MAX)
            }
            Transport::Modern(_) => u32::MAX,
        }
    }

    /// A 64-bit config field read as two dwords; on the modern interface
    /// retried until config_generation is stable.
    pub(crate) fn cfg64(&self, off: u16) -> u64 {
        let read = || u64::from(self.cfg32(off + 4)) << 32 | u64::from(self.cfg32(off));
        match self {
            Transport::Legacy { .. } => read(),
            Transport::Modern(m) => {
                let mut value = 0;
                for _ in 0..16 {
                    let before = m.r8(COM_CONFIG_GENERATION);
                    value = read();
                    if m.r8(COM_CONFIG_GENERATION) == before {
                        break;
                    }
                }
                value
            }
        }
    }
}
