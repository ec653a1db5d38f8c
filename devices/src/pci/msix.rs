//! MSI-X (PCI Local Bus 3.0 §6.8.2) as QEMU's `hw/pci/msix.c` lays it out: the capability in
//! config space, the vector table and pending-bit array in a BAR, per-vector and function
//! masking with pending bits, and delivery through an [`MsiSink`].
//!
//! The state here is plain data; callers that share it between vCPU and device threads wrap
//! it in a mutex. The sink must not take locks that may be held while calling in here.

use super::caps::msix_cap;
use super::config::PciConfig;
use super::interrupt::MsiSink;
use super::regs::CAP_ID_MSIX;
use super::PciError;

/// Length of the capability structure.
pub const MSIX_CAP_SIZE: usize = msix_cap::SIZE;
/// Bytes per table entry: address low, address high, data, vector control.
pub const MSIX_ENTRY_SIZE: usize = 16;
/// The architectural maximum number of vectors.
pub const MSIX_MAX_VECTORS: u16 = 2048;

const CONTROL_ENABLE: u16 = 0x8000;
const CONTROL_MASKALL: u16 = 0x4000;
const ENTRY_CONTROL: usize = 12;
const ENTRY_MASKED: u8 = 0x01;

/// Where the table and PBA live in their BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixLayout {
    pub bar: u8,
    pub table_offset: u32,
    pub pba_offset: u32,
    /// Size of the BAR when it holds nothing else.
    pub bar_size: u64,
}

impl MsixLayout {
    /// QEMU's `msix_init_exclusive_bar`: table at 0, PBA at half the (4 KiB minimum) BAR or
    /// right after the table when that is larger.
    pub fn exclusive_bar(bar: u8, vectors: u16) -> Self {
        let table_size = u32::from(vectors) * MSIX_ENTRY_SIZE as u32;
        let pba_size = u32::from(vectors).div_ceil(64) * 8;
        let mut bar_size: u32 = 4096;
        let pba_offset = (bar_size / 2).max(table_size);
        if pba_offset + pba_size > 4096 {
            bar_size = pba_offset + pba_size;
        }
        Self {
            bar,
            table_offset: 0,
            pba_offset,
            bar_size: u64::from(bar_size.next_power_of_two()),
        }
    }
}

/// MSI-X state of one function.
#[derive(Debug, Clone)]
pub struct Msix {
    cap: usize,
    vectors: u16,
    layout: MsixLayout,
    table: Vec<u8>,
    pba: Vec<u8>,
    enabled: bool,
    function_masked: bool,
}

impl Msix {
    /// Add the capability at `cap` with `vectors` entries (1..=2048) and QEMU's write masks.
    pub fn init(
        config: &mut PciConfig,
        cap: usize,
        vectors: u16,
        layout: MsixLayout,
    ) -> Result<Self, PciError> {
        if vectors == 0 || vectors > MSIX_MAX_VECTORS || layout.bar > 5 {
            return Err(PciError::InvalidCapability {
                id: CAP_ID_MSIX.into(),
                offset: cap,
            });
        }
        msix_cap::add(
            config,
            cap,
            vectors,
            layout.bar,
            layout.table_offset,
            layout.bar,
            layout.pba_offset,
        )?;
        let mut m = Self {
            cap,
            vectors,
            layout,
            table: vec![0; usize::from(vectors) * MSIX_ENTRY_SIZE],
            pba: vec![0; usize::from(vectors).div_ceil(64) * 8],
            enabled: false,
            function_masked: false,
        };
        m.reset();
        Ok(m)
    }

    pub fn vectors(&self) -> u16 {
        self.vectors
    }

    pub fn layout(&self) -> MsixLayout {
        self.layout
    }

    pub fn cap_offset(&self) -> usize {
        self.cap
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn function_masked(&self) -> bool {
        self.function_masked
    }

    /// msix_reset: every vector masked, nothing pending, disabled. The control bits in config
    /// space are reset with the rest of the config by `PciConfig::reset`.
    pub fn reset(&mut self) {
        self.table.fill(0);
        for v in 0..usize::from(self.vectors) {
            self.table[v * MSIX_ENTRY_SIZE + ENTRY_CONTROL] = ENTRY_MASKED;
        }
        self.pba.fill(0);
        self.enabled = false;
        self.function_masked = false;
    }

    fn vector_masked(&self, v: u16) -> bool {
        self.table
            .get(usize::from(v) * MSIX_ENTRY_SIZE + ENTRY_CONTROL)
            .is_none_or(|c| c & ENTRY_MASKED != 0)
    }

    /// Whether `vector` cannot be delivered now (QEMU's msix_is_masked).
    pub fn is_masked(&self, vector: u16) -> bool {
        !self.enabled || self.function_masked || self.vector_masked(vector)
    }

    pub fn is_pending(&self, vector: u16) -> bool {
        self.pba
            .get(usize::from(vector / 8))
            .is_some_and(|b| b & (1 << (vector % 8)) != 0)
    }

    fn set_pending(&mut self, vector: u16, pending: bool) {
        if let Some(b) = self.pba.get_mut(usize::from(vector / 8)) {
            if pending {
                *b |= 1 << (vector % 8);
            } else {
                *b &= !(1 << (vector % 8));
            }
        }
    }

    /// msix_clr_pending: forget a pending `vector` (a device's own PBA-clear control).
    pub fn clear_pending(&mut self, vector: u16) {
        self.set_pending(vector, false);
    }

    /// The programmed (address, data) of `vector`.
    pub fn message(&self, vector: u16) -> Option<(u64, u32)> {
        let at = usize::from(vector) * MSIX_ENTRY_SIZE;
        let e = self.table.get(at..at + MSIX_ENTRY_SIZE)?;
        let word = |i: usize| u32::from_le_bytes([e[i], e[i + 1], e[i + 2], e[i + 3]]);
        Some((u64::from(word(0)) | (u64::from(word(4)) << 32), word(8)))
    }

    /// msix_notify: send `vector` or, while it is masked, mark it pending. Returns whether a
    /// message was sent. Vectors past the table are ignored.
    pub fn notify(&mut self, vector: u16, sink: &dyn MsiSink) -> bool {
        if vector >= self.vectors {
            return false;
        }
        if self.is_masked(vector) {
            self.set_pending(vector, true);
            return false;
        }
        match self.message(vector) {
            Some((a, d)) => {
                sink.send(a, d);
                true
            }
            None => false,
        }
    }

    /// Deliver and clear pending vectors that are no longer masked.
    fn flush_pending(&mut self, sink: &dyn MsiSink) {
        for v in 0..self.vectors {
            if self.is_pending(v) && !self.is_masked(v) {
                self.set_pending(v, false);
                self.notify(v, sink);
            }
        }
    }

    /// Follow the guest's control-register write (call after the masked config write).
    pub fn config_written(&mut self, config: &PciConfig, sink: &dyn MsiSink) {
        let ctl = config.get_u16(self.cap + msix_cap::CONTROL);
        self.enabled = ctl & CONTROL_ENABLE != 0;
        self.function_masked = ctl & CONTROL_MASKALL != 0;
        self.flush_pending(sink);
    }

    /// A read of the MSI-X BAR at `offset`; unclaimed bytes read as zero like QEMU's region.
    pub fn bar_read(&self, offset: u64, data: &mut [u8]) {
        let t = u64::from(self.layout.table_offset);
        let p = u64::from(self.layout.pba_offset);
        for (i, b) in data.iter_mut().enumerate() {
            let o = offset.saturating_add(i as u64);
            *b = if o >= t && o - t < self.table.len() as u64 {
                self.table[(o - t) as usize]
            } else if o >= p && o - p < self.pba.len() as u64 {
                self.pba[(o - p) as usize]
            } else {
                0
            };
        }
    }

    /// A write to the MSI-X BAR; the PBA is read-only. Unmasking a pending vector sends it.
    pub fn bar_write(&mut self, offset: u64, data: &[u8], sink: &dyn MsiSink) {
        let t = u64::from(self.layout.table_offset);
        let mut touched = false;
        for (i, &b) in data.iter().enumerate() {
            let o = offset.saturating_add(i as u64);
            if o >= t && o - t < self.table.len() as u64 {
                self.table[(o - t) as usize] = b;
                touched = true;
            }
        }
        if touched {
            self.flush_pending(sink);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::regs::{CAPABILITY_LIST, STATUS, STATUS_CAP_LIST};
    use machine::PciIdentity;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Sent(Mutex<Vec<(u64, u32)>>);
    impl MsiSink for Sent {
        fn send(&self, address: u64, data: u32) {
            self.0.lock().unwrap().push((address, data));
        }
    }
    impl Sent {
        fn take(&self) -> Vec<(u64, u32)> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
    }

    fn config() -> PciConfig {
        PciConfig::new(
            &PciIdentity {
                vendor_id: 0x1af4,
                device_id: 0x1001,
                class_code: 0x010000,
                revision: 0,
                subsystem_vendor_id: None,
                subsystem_id: None,
                header_type: 0,
            },
            false,
            false,
        )
    }

    fn program(m: &mut Msix, sink: &Sent, v: u16, addr: u64, data: u32, masked: bool) {
        let at = u64::from(v) * 16;
        m.bar_write(at, &(addr as u32).to_le_bytes(), sink);
        m.bar_write(at + 4, &((addr >> 32) as u32).to_le_bytes(), sink);
        m.bar_write(at + 8, &data.to_le_bytes(), sink);
        m.bar_write(at + 12, &u32::from(masked).to_le_bytes(), sink);
    }

    #[test]
    fn layout_matches_qemu_exclusive_bar() {
        let l = MsixLayout::exclusive_bar(1, 4);
        assert_eq!(
            (l.table_offset, l.pba_offset, l.bar_size),
            (0, 0x800, 0x1000)
        );
        let l = MsixLayout::exclusive_bar(1, 300);
        assert_eq!((l.pba_offset, l.bar_size), (300 * 16, 0x2000));
    }

    #[test]
    fn capability_bytes_and_masks() {
        let mut c = config();
        let m = Msix::init(&mut c, 0x98, 4, MsixLayout::exclusive_bar(1, 4)).unwrap();
        assert_eq!(c.get_u8(CAPABILITY_LIST), 0x98);
        assert_ne!(c.get_u16(STATUS) & STATUS_CAP_LIST, 0);
        assert_eq!(c.get_u32(0x98), 0x0003_0011);
        assert_eq!(c.get_u32(0x9c), 0x0000_0001);
        assert_eq!(c.get_u32(0xa0), 0x0000_0801);
        // Only enable and function mask are writable.
        c.write(0x9a, &[0xff, 0xff]);
        assert_eq!(c.get_u16(0x9a), 0xc003);
        c.write(0x9c, &[0xff; 8]);
        assert_eq!(c.get_u32(0x9c), 1);
        assert!(!m.enabled());
        assert!(Msix::init(&mut c, 0xa8, 0, MsixLayout::exclusive_bar(1, 1)).is_err());
    }

    #[test]
    fn masking_and_pending() {
        let sink = Sent::default();
        let mut c = config();
        let mut m = Msix::init(&mut c, 0x98, 4, MsixLayout::exclusive_bar(1, 4)).unwrap();
        // Disabled: nothing goes out, the vector becomes pending.
        assert!(!m.notify(1, &sink));
        assert!(m.is_pending(1));
        // Table reads back what was written; entries start masked.
        let mut b = [0u8; 4];
        m.bar_read(16 + 12, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1);
        program(&mut m, &sink, 1, 0xfee0_0000, 0x4041, true);
        m.bar_read(16 + 8, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x4041);
        // Enable with the function mask set: still held.
        c.write(0x9b, &[0xc0]);
        m.config_written(&c, &sink);
        assert!(sink.take().is_empty());
        c.write(0x9b, &[0x80]);
        m.config_written(&c, &sink);
        assert!(sink.take().is_empty(), "vector itself is masked");
        // Unmasking the vector delivers the pending message and clears the PBA bit.
        m.bar_write(16 + 12, &0u32.to_le_bytes(), &sink);
        assert_eq!(sink.take(), vec![(0xfee0_0000, 0x4041)]);
        assert!(!m.is_pending(1));
        let mut pba = [0u8; 8];
        m.bar_read(0x800, &mut pba);
        assert_eq!(pba, [0; 8]);
        // Unmasked: immediate delivery.
        assert!(m.notify(1, &sink));
        assert_eq!(sink.take(), vec![(0xfee0_0000, 0x4041)]);
        // Masked vector: pending bit visible in the PBA, PBA writes are ignored.
        program(&mut m, &sink, 2, 0xfee0_1000, 0x22, true);
        assert!(!m.notify(2, &sink));
        m.bar_read(0x800, &mut pba);
        assert_eq!(pba[0], 0x04);
        m.bar_write(0x800, &[0; 8], &sink);
        assert!(m.is_pending(2));
        // Out-of-range vectors and offsets are harmless.
        assert!(!m.notify(4, &sink));
        m.bar_write(u64::MAX - 1, &[1, 2, 3, 4], &sink);
        let mut far = [0xaau8; 4];
        m.bar_read(0xfff, &mut far);
        assert_eq!(far, [0; 4]);
        // Reset masks everything and clears pending state.
        m.reset();
        assert!(!m.is_pending(2));
        assert!(m.is_masked(1));
    }
}
