//! The MSI capability (QEMU's msi_init layout) and delivery of its messages.

use super::config::PciConfig;
use super::interrupt::MsiSink;
use super::regs::CAP_ID_MSI;
use super::PciError;

const FLAGS: usize = 2;
const FLAGS_ENABLE: u16 = 0x0001;
const FLAGS_QSIZE: u16 = 0x0070;
const FLAGS_64BIT: u16 = 0x0080;
const FLAGS_MASKBIT: u16 = 0x0100;

/// Where an MSI capability lives and how it is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiCap {
    pub offset: usize,
    pub vectors: u8,
    pub is64: bool,
    pub per_vector_mask: bool,
}

impl MsiCap {
    fn data_offset(&self) -> usize {
        self.offset + if self.is64 { 0x0c } else { 0x08 }
    }

    fn mask_offset(&self) -> usize {
        self.data_offset() + 4
    }

    /// Add the capability to `config` with QEMU's write masks.
    pub fn init(
        config: &mut PciConfig,
        offset: usize,
        vectors: u8,
        is64: bool,
        per_vector_mask: bool,
    ) -> Result<Self, PciError> {
        let vectors = vectors.clamp(1, 32).next_power_of_two();
        let cap = Self {
            offset,
            vectors,
            is64,
            per_vector_mask,
        };
        let size = if per_vector_mask {
            cap.mask_offset() + 8
        } else {
            cap.data_offset() + 2
        } - offset;
        config.add_capability(CAP_ID_MSI, offset, size)?;
        let mmc = (vectors.trailing_zeros() as u16) << 1;
        let mut flags = mmc;
        if is64 {
            flags |= FLAGS_64BIT;
        }
        if per_vector_mask {
            flags |= FLAGS_MASKBIT;
        }
        config.set_u16(offset + FLAGS, flags);
        config.set_wmask_u16(offset + FLAGS, FLAGS_QSIZE | FLAGS_ENABLE);
        config.set_wmask_u32(offset + 4, 0xffff_fffc);
        if is64 {
            config.set_wmask_u32(offset + 8, 0xffff_ffff);
        }
        config.set_wmask_u16(cap.data_offset(), 0xffff);
        if per_vector_mask {
            let m = if vectors >= 32 {
                u32::MAX
            } else {
                (1u32 << vectors) - 1
            };
            config.set_wmask_u32(cap.mask_offset(), m);
        }
        Ok(cap)
    }

    pub fn enabled(&self, config: &PciConfig) -> bool {
        config.get_u16(self.offset + FLAGS) & FLAGS_ENABLE != 0
    }

    /// The (address, data) message for `vector`, if enabled and not masked.
    pub fn message(&self, config: &PciConfig, vector: u8) -> Option<(u64, u32)> {
        let flags = config.get_u16(self.offset + FLAGS);
        if flags & FLAGS_ENABLE == 0 {
            return None;
        }
        let allocated = 1u8 << ((flags & FLAGS_QSIZE) >> 4).min(5);
        if vector >= allocated {
            return None;
        }
        if self.per_vector_mask && config.get_u32(self.mask_offset()) & (1 << vector) != 0 {
            return None;
        }
        let lo = u64::from(config.get_u32(self.offset + 4));
        let hi = if self.is64 {
            u64::from(config.get_u32(self.offset + 8))
        } else {
            0
        };
        let data = u32::from(config.get_u16(self.data_offset()));
        // Multiple-message vectors replace the low bits of the data.
        let data = (data & !(u32::from(allocated) - 1)) | u32::from(vector);
        Some(((hi << 32) | lo, data))
    }

    /// Send `vector` through `sink` if the function may.
    pub fn notify(&self, config: &PciConfig, vector: u8, sink: &dyn MsiSink) -> bool {
        match self.message(config, vector) {
            Some((a, d)) => {
                sink.send(a, d);
                true
            }
            None => false,
        }
    }
}
