//! A function's configuration space: the bytes plus QEMU's per-byte write mask and
//! write-1-to-clear mask, the BAR table used for sizing and decoding, and a reset snapshot.
//!
//! Guest writes go through [`PciConfig::write`], which applies the masks exactly like QEMU's
//! `pci_default_write_config`; device models set up their registers with the raw `set_*`
//! helpers and then call [`PciConfig::commit_reset_state`].

use super::regs::*;
use super::PciError;
use machine::PciIdentity;

/// Size of a conventional configuration space.
pub const CONFIG_SPACE_SIZE: usize = 256;
/// Size of a PCI Express configuration space.
pub const EXPRESS_CONFIG_SPACE_SIZE: usize = 4096;
/// Index of the expansion ROM in the BAR table.
pub const ROM_BAR: usize = 6;
/// BAR slots: six BARs plus the ROM.
pub const NUM_BARS: usize = 7;

/// PCI_SUBVENDOR_ID_REDHAT_QUMRANET:PCI_SUBDEVICE_ID_QEMU, QEMU's default subsystem.
pub const DEFAULT_SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
pub const DEFAULT_SUBSYSTEM_ID: u16 = 0x1100;

/// What address space a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32,
    Mem64,
    Rom,
}

/// A BAR as the device model registers it: its kind, power-of-two size and prefetchability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarDef {
    pub kind: BarKind,
    pub size: u64,
    pub prefetchable: bool,
}

impl BarDef {
    pub fn io(size: u64) -> Self {
        Self {
            kind: BarKind::Io,
            size,
            prefetchable: false,
        }
    }
    pub fn mem32(size: u64) -> Self {
        Self {
            kind: BarKind::Mem32,
            size,
            prefetchable: false,
        }
    }
    pub fn mem64(size: u64) -> Self {
        Self {
            kind: BarKind::Mem64,
            size,
            prefetchable: false,
        }
    }
    pub fn rom(size: u64) -> Self {
        Self {
            kind: BarKind::Rom,
            size,
            prefetchable: false,
        }
    }
    pub fn prefetchable(mut self) -> Self {
        self.prefetchable = true;
        self
    }

    /// The read-only low bits of the BAR register.
    fn type_bits(&self) -> u32 {
        let pf = if self.prefetchable {
            BAR_MEM_PREFETCH
        } else {
            0
        };
        match self.kind {
            BarKind::Io => BAR_SPACE_IO,
            BarKind::Mem32 => pf,
            BarKind::Mem64 => BAR_MEM_TYPE_64 | pf,
            BarKind::Rom => 0,
        }
    }

    pub fn is_io(&self) -> bool {
        self.kind == BarKind::Io
    }
}

#[derive(Clone)]
struct Snapshot {
    data: Vec<u8>,
    wmask: Vec<u8>,
    w1cmask: Vec<u8>,
}

/// Configuration space of one function.
#[derive(Clone)]
pub struct PciConfig {
    data: Vec<u8>,
    wmask: Vec<u8>,
    w1cmask: Vec<u8>,
    bars: [Option<BarDef>; NUM_BARS],
    /// Power-on state restored by `reset`.
    reset_state: Option<Box<Snapshot>>,
}

impl PciConfig {
    /// An empty space of `size` bytes (256 or 4096) with QEMU's generic masks and no identity.
    pub fn empty(express: bool) -> Self {
        let size = if express {
            EXPRESS_CONFIG_SPACE_SIZE
        } else {
            CONFIG_SPACE_SIZE
        };
        let mut cfg = Self {
            data: vec![0; size],
            wmask: vec![0; size],
            w1cmask: vec![0; size],
            bars: [None; NUM_BARS],
            reset_state: None,
        };
        // pci_init_wmask: everything past the header is writable unless a model says otherwise.
        cfg.wmask[CACHE_LINE_SIZE] = 0xff;
        cfg.wmask[INTERRUPT_LINE] = 0xff;
        cfg.set_wmask_u16(
            COMMAND,
            COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER | COMMAND_INTX_DISABLE | COMMAND_SERR,
        );
        cfg.wmask[HEADER_SIZE..].fill(0xff);
        // pci_init_w1cmask
        cfg.set_w1cmask_u16(
            STATUS,
            STATUS_PARITY
                | STATUS_SIG_TARGET_ABORT
                | STATUS_REC_TARGET_ABORT
                | STATUS_REC_MASTER_ABORT
                | STATUS_SIG_SYSTEM_ERROR
                | STATUS_DETECTED_PARITY,
        );
        cfg
    }

    /// A space with the header a guest reads for `identity` (QEMU's do_pci_register_device).
    pub fn new(identity: &PciIdentity, multifunction: bool, express: bool) -> Self {
        let mut cfg = Self::empty(express);
        cfg.set_u16(VENDOR_ID, identity.vendor_id);
        cfg.set_u16(DEVICE_ID, identity.device_id);
        cfg.set_u8(REVISION_ID, identity.revision);
        cfg.set_u8(CLASS_PROG, identity.class_code as u8);
        cfg.set_u16(CLASS_PROG + 1, (identity.class_code >> 8) as u16);
        let header = identity.header_type & 0x7f;
        let mf = if multifunction {
            HEADER_TYPE_MULTI_FUNCTION
        } else {
            0
        };
        cfg.set_u8(HEADER_TYPE, header | mf);
        if header == HEADER_TYPE_BRIDGE {
            cfg.init_bridge_masks();
        } else {
            let sv = identity
                .subsystem_vendor_id
                .unwrap_or(DEFAULT_SUBSYSTEM_VENDOR_ID);
            let sd = identity.subsystem_id.unwrap_or(DEFAULT_SUBSYSTEM_ID);
            cfg.set_u16(SUBSYSTEM_VENDOR_ID, sv);
            cfg.set_u16(SUBSYSTEM_ID, sd);
        }
        cfg
    }

    /// pci_init_mask_bridge: bus numbers, windows and bridge control of a type-1 header.
    fn init_bridge_masks(&mut self) {
        self.wmask[PRIMARY_BUS..PRIMARY_BUS + 4].fill(0xff);
        self.wmask[IO_BASE] = 0xf0;
        self.wmask[IO_LIMIT] = 0xf0;
        self.set_wmask_u16(MEMORY_BASE, 0xfff0);
        self.set_wmask_u16(MEMORY_LIMIT, 0xfff0);
        self.set_wmask_u16(PREF_MEMORY_BASE, 0xfff0);
        self.set_wmask_u16(PREF_MEMORY_LIMIT, 0xfff0);
        self.wmask[PREF_BASE_UPPER32..PREF_BASE_UPPER32 + 8].fill(0xff);
        // 16-bit I/O decode (type bits 0), 64-bit prefetchable windows.
        self.set_u16(PREF_MEMORY_BASE, PREF_RANGE_TYPE_64);
        self.set_u16(PREF_MEMORY_LIMIT, PREF_RANGE_TYPE_64);
        self.set_wmask_u16(
            BRIDGE_CONTROL,
            BRIDGE_CTL_PARITY
                | BRIDGE_CTL_SERR
                | BRIDGE_CTL_ISA
                | BRIDGE_CTL_VGA
                | BRIDGE_CTL_VGA_16BIT
                | BRIDGE_CTL_MASTER_ABORT
                | BRIDGE_CTL_BUS_RESET
                | BRIDGE_CTL_FAST_BACK
                | BRIDGE_CTL_DISCARD
                | BRIDGE_CTL_SEC_DISCARD
                | BRIDGE_CTL_DISCARD_SERR,
        );
        self.set_w1cmask_u16(BRIDGE_CONTROL, BRIDGE_CTL_DISCARD_STATUS);
    }

    /// Size of the space in bytes.
    pub fn size(&self) -> usize {
        self.data.len()
    }

    pub fn is_express(&self) -> bool {
        self.data.len() == EXPRESS_CONFIG_SPACE_SIZE
    }

    /// Header layout (0 endpoint, 1 bridge) without the multifunction bit.
    pub fn header_type(&self) -> u8 {
        self.data[HEADER_TYPE] & 0x7f
    }

    pub fn is_bridge(&self) -> bool {
        self.header_type() == HEADER_TYPE_BRIDGE
    }

    pub fn command(&self) -> u16 {
        self.get_u16(COMMAND)
    }

    pub fn interrupt_pin(&self) -> u8 {
        self.data[INTERRUPT_PIN]
    }

    /// Set the read-only interrupt pin (1 = INTA# .. 4 = INTD#, 0 = none).
    pub fn set_interrupt_pin(&mut self, pin: u8) {
        self.data[INTERRUPT_PIN] = pin;
    }

    // ---- guest-visible accesses ----

    /// Guest read: bytes past the end read as all-ones.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i)
                .and_then(|o| self.data.get(o))
                .copied()
                .unwrap_or(0xff);
        }
    }

    /// Guest write through the write and W1C masks; bytes past the end are dropped.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i) else {
                break;
            };
            if o >= self.data.len() {
                break;
            }
            let w = self.wmask[o];
            let c = self.w1cmask[o];
            self.data[o] = (self.data[o] & !w) | (v & w);
            self.data[o] &= !(v & c);
        }
    }

    // ---- raw accessors for device models (no masks; out of range reads all-ones) ----

    fn raw(&self, offset: usize, len: usize) -> u64 {
        let mut v = 0u64;
        for i in (0..len).rev() {
            let b = offset
                .checked_add(i)
                .and_then(|o| self.data.get(o))
                .copied()
                .unwrap_or(0xff);
            v = (v << 8) | u64::from(b);
        }
        v
    }

    fn set_raw(buf: &mut [u8], offset: usize, len: usize, value: u64) {
        for i in 0..len {
            if let Some(b) = offset.checked_add(i).and_then(|o| buf.get_mut(o)) {
                *b = (value >> (8 * i)) as u8;
            }
        }
    }

    pub fn get_u8(&self, offset: usize) -> u8 {
        self.raw(offset, 1) as u8
    }
    pub fn get_u16(&self, offset: usize) -> u16 {
        self.raw(offset, 2) as u16
    }
    pub fn get_u32(&self, offset: usize) -> u32 {
        self.raw(offset, 4) as u32
    }
    pub fn get_u64(&self, offset: usize) -> u64 {
        self.raw(offset, 8)
    }
    pub fn set_u8(&mut self, offset: usize, v: u8) {
        Self::set_raw(&mut self.data, offset, 1, v.into());
    }
    pub fn set_u16(&mut self, offset: usize, v: u16) {
        Self::set_raw(&mut self.data, offset, 2, v.into());
    }
    pub fn set_u32(&mut self, offset: usize, v: u32) {
        Self::set_raw(&mut self.data, offset, 4, v.into());
    }
    pub fn set_u64(&mut self, offset: usize, v: u64) {
        Self::set_raw(&mut self.data, offset, 8, v);
    }
    pub fn set_wmask_u8(&mut self, offset: usize, v: u8) {
        Self::set_raw(&mut self.wmask, offset, 1, v.into());
    }
    pub fn set_wmask_u16(&mut self, offset: usize, v: u16) {
        Self::set_raw(&mut self.wmask, offset, 2, v.into());
    }
    pub fn set_wmask_u32(&mut self, offset: usize, v: u32) {
        Self::set_raw(&mut self.wmask, offset, 4, v.into());
    }
    pub fn set_wmask_u64(&mut self, offset: usize, v: u64) {
        Self::set_raw(&mut self.wmask, offset, 8, v);
    }
    pub fn set_w1cmask_u8(&mut self, offset: usize, v: u8) {
        Self::set_raw(&mut self.w1cmask, offset, 1, v.into());
    }
    pub fn set_w1cmask_u16(&mut self, offset: usize, v: u16) {
        Self::set_raw(&mut self.w1cmask, offset, 2, v.into());
    }
    pub fn set_w1cmask_u32(&mut self, offset: usize, v: u32) {
        Self::set_raw(&mut self.w1cmask, offset, 4, v.into());
    }
    /// Make `[offset, offset + len)` read-only for the guest (wmask and w1cmask cleared).
    pub fn set_read_only(&mut self, offset: usize, len: usize) {
        let end = offset.saturating_add(len).min(self.data.len());
        if offset < end {
            self.wmask[offset..end].fill(0);
            self.w1cmask[offset..end].fill(0);
        }
    }
    pub fn wmask_u8(&self, offset: usize) -> u8 {
        self.wmask.get(offset).copied().unwrap_or(0)
    }

    // ---- BARs ----

    /// Config offset of BAR `index` for this header type, or None if the header has no such BAR.
    pub fn bar_offset(&self, index: usize) -> Option<usize> {
        let bridge = self.is_bridge();
        match index {
            ROM_BAR if bridge => Some(ROM_ADDRESS1),
            ROM_BAR => Some(ROM_ADDRESS),
            0..=1 => Some(BAR0 + 4 * index),
            2..=5 if !bridge => Some(BAR0 + 4 * index),
            _ => None,
        }
    }

    /// pci_register_bar: type bits in the register, size bits in the write mask.
    pub fn register_bar(&mut self, index: usize, def: BarDef) -> Result<(), PciError> {
        let bad = |reason: &'static str| PciError::InvalidBar { index, reason };
        let offset = self
            .bar_offset(index)
            .ok_or(bad("no such BAR in this header"))?;
        if !def.size.is_power_of_two() {
            return Err(bad("size is not a power of two"));
        }
        if (index == ROM_BAR) != (def.kind == BarKind::Rom) {
            return Err(bad("ROM kind only in the ROM slot"));
        }
        let min = if def.is_io() { 4 } else { 16 };
        if def.size < min || (def.kind != BarKind::Mem64 && def.size > 1 << 31) {
            return Err(bad("size out of range"));
        }
        if def.kind == BarKind::Mem64 {
            if self.bar_offset(index + 1).is_none() || index + 1 == ROM_BAR {
                return Err(bad("64-bit BAR needs the next slot"));
            }
            if self.bars[index + 1].is_some() {
                return Err(bad("upper half already in use"));
            }
        }
        if self.bars[index].is_some()
            || (index > 0 && matches!(self.bars[index - 1], Some(b) if b.kind == BarKind::Mem64))
        {
            return Err(bad("slot already in use"));
        }
        let wmask = !(def.size - 1);
        if def.kind == BarKind::Mem64 {
            self.set_u64(offset, def.type_bits().into());
            self.set_wmask_u64(offset, wmask);
        } else {
            self.set_u32(offset, def.type_bits());
            let rom_en = if index == ROM_BAR {
                ROM_ADDRESS_ENABLE
            } else {
                0
            };
            self.set_wmask_u32(offset, (wmask as u32) | rom_en);
        }
        self.bars[index] = Some(def);
        Ok(())
    }

    pub fn bar(&self, index: usize) -> Option<BarDef> {
        self.bars.get(index).copied().flatten()
    }

    /// Raw programmed base of BAR `index` (type bits stripped), regardless of decode enables.
    pub fn bar_base(&self, index: usize) -> Option<u64> {
        let def = self.bar(index)?;
        let off = self.bar_offset(index)?;
        let raw = match def.kind {
            BarKind::Mem64 => self.get_u64(off),
            _ => u64::from(self.get_u32(off)),
        };
        Some(raw & !(def.size - 1))
    }

    /// Where BAR `index` decodes right now, QEMU's pci_bar_address(): None when the command
    /// register disables it, the ROM enable bit is clear, the address is 0 or it wraps.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let def = self.bar(index)?;
        let off = self.bar_offset(index)?;
        let cmd = self.command();
        if def.is_io() {
            if cmd & COMMAND_IO == 0 {
                return None;
            }
        } else if cmd & COMMAND_MEMORY == 0 {
            return None;
        }
        if def.kind == BarKind::Rom && self.get_u32(off) & ROM_ADDRESS_ENABLE == 0 {
            return None;
        }
        let base = self.bar_base(index)?;
        let last = base.checked_add(def.size - 1)?;
        if base == 0 || last == u64::MAX {
            return None;
        }
        if def.kind != BarKind::Mem64 && last >= u64::from(u32::MAX) {
            return None;
        }
        Some(base)
    }

    // ---- capabilities ----

    /// Link a standard capability at `offset` (head of the list, like QEMU's
    /// pci_add_capability) and make its `size` bytes read-only. Returns `offset`.
    pub fn add_capability(
        &mut self,
        id: u8,
        offset: usize,
        size: usize,
    ) -> Result<usize, PciError> {
        if offset < HEADER_SIZE || offset & 3 != 0 || offset + size > CONFIG_SPACE_SIZE || size < 2
        {
            return Err(PciError::InvalidCapability {
                id: id.into(),
                offset,
            });
        }
        let head = self.data[CAPABILITY_LIST];
        self.set_read_only(offset, size);
        self.data[offset] = id;
        self.data[offset + 1] = head;
        self.data[CAPABILITY_LIST] = offset as u8;
        self.wmask[CAPABILITY_LIST] = 0;
        let st = self.get_u16(STATUS) | STATUS_CAP_LIST;
        self.set_u16(STATUS, st);
        Ok(offset)
    }

    /// Append a PCIe extended capability at `offset` (>= 0x100) to the extended list.
    pub fn add_ext_capability(
        &mut self,
        id: u16,
        version: u8,
        offset: usize,
        size: usize,
    ) -> Result<usize, PciError> {
        if !self.is_express()
            || offset < EXT_CONFIG_START
            || offset & 3 != 0
            || offset + size > self.size()
            || size < 4
        {
            return Err(PciError::InvalidCapability {
                id: id.into(),
                offset,
            });
        }
        let header = u32::from(id) | (u32::from(version & 0xf) << 16);
        if offset == EXT_CONFIG_START {
            self.set_u32(offset, header);
        } else {
            // Walk the chain from 0x100 and link the new one at its end.
            let mut at = EXT_CONFIG_START;
            for _ in 0..(EXPRESS_CONFIG_SPACE_SIZE / 4) {
                let h = self.get_u32(at);
                let next = (h >> 20) as usize;
                if next == 0 {
                    self.set_u32(at, h | ((offset as u32) << 20));
                    break;
                }
                at = next;
            }
            self.set_u32(offset, header);
        }
        self.set_read_only(offset, size);
        Ok(offset)
    }

    /// Offset of the first standard capability with `id`.
    pub fn find_capability(&self, id: u8) -> Option<usize> {
        if self.get_u16(STATUS) & STATUS_CAP_LIST == 0 {
            return None;
        }
        let mut at = usize::from(self.data[CAPABILITY_LIST]);
        for _ in 0..48 {
            if !(HEADER_SIZE..CONFIG_SPACE_SIZE).contains(&at) {
                return None;
            }
            if self.data[at] == id {
                return Some(at);
            }
            at = usize::from(self.data[at + 1]);
        }
        None
    }

    // ---- reset ----

    /// Record the current bytes and masks as the power-on state that [`reset`](Self::reset)
    /// restores. Models call this once, at the end of construction.
    pub fn commit_reset_state(&mut self) {
        self.reset_state = Some(Box::new(Snapshot {
            data: self.data.clone(),
            wmask: self.wmask.clone(),
            w1cmask: self.w1cmask.clone(),
        }));
    }

    /// Back to the committed power-on state (all-zero writable state if none was committed).
    pub fn reset(&mut self) {
        if let Some(s) = &self.reset_state {
            self.data.copy_from_slice(&s.data);
            self.wmask.copy_from_slice(&s.wmask);
            self.w1cmask.copy_from_slice(&s.w1cmask);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(header_type: u8) -> PciIdentity {
        PciIdentity {
            vendor_id: 0x8086,
            device_id: 0x1234,
            class_code: 0x020000,
            revision: 3,
            subsystem_vendor_id: None,
            subsystem_id: None,
            header_type,
        }
    }

    #[test]
    fn header_and_masks() {
        let mut c = PciConfig::new(&ident(0), true, false);
        assert_eq!(c.get_u32(0), 0x1234_8086);
        assert_eq!(c.get_u8(HEADER_TYPE), 0x80);
        assert_eq!(c.get_u16(SUBSYSTEM_VENDOR_ID), 0x1af4);
        assert_eq!(c.get_u16(SUBSYSTEM_ID), 0x1100);
        c.write(0, &[0xff; 4]);
        assert_eq!(c.get_u32(0), 0x1234_8086);
        c.write(COMMAND, &[0xff, 0xff]);
        assert_eq!(c.command(), 0x0507);
        c.set_u16(STATUS, 0xf900);
        c.write(STATUS, &[0x00, 0x09]);
        assert_eq!(c.get_u16(STATUS), 0xf000);
        let mut b = [0u8; 4];
        c.read(254, &mut b);
        assert_eq!(b, [0, 0, 0xff, 0xff]);
        c.write(255, &[1, 2, 3]);
        c.write(usize::MAX, &[1, 2]);
        c.read(usize::MAX, &mut b);
        assert_eq!(b, [0xff; 4]);
    }

    #[test]
    fn bar_sizing() {
        let mut c = PciConfig::new(&ident(0), false, false);
        c.register_bar(0, BarDef::mem64(0x4000).prefetchable())
            .unwrap();
        c.register_bar(2, BarDef::io(0x40)).unwrap();
        c.register_bar(3, BarDef::mem32(0x1000)).unwrap();
        c.register_bar(ROM_BAR, BarDef::rom(0x40000)).unwrap();
        assert!(c.register_bar(1, BarDef::io(0x10)).is_err());
        assert!(c.register_bar(5, BarDef::mem64(0x1000)).is_err());
        assert!(c.register_bar(4, BarDef::mem32(0x1001)).is_err());
        for off in [0x10, 0x14, 0x18, 0x1c, 0x30] {
            c.write(off, &[0xff; 4]);
        }
        assert_eq!(c.get_u32(0x10), 0xffff_c00c);
        assert_eq!(c.get_u32(0x14), 0xffff_ffff);
        assert_eq!(c.get_u32(0x18), 0xffff_ffc1);
        assert_eq!(c.get_u32(0x1c), 0xffff_f000);
        assert_eq!(c.get_u32(0x30), 0xfffc_0001);
        c.write(0x10, &0xfe00_0000u32.to_le_bytes());
        c.write(0x14, &1u32.to_le_bytes());
        assert_eq!(c.bar_address(0), None);
        c.write(COMMAND, &[3, 0]);
        assert_eq!(c.bar_address(0), Some(0x1_fe00_0000));
        c.write(0x18, &0xc000u32.to_le_bytes());
        assert_eq!(c.bar_address(2), Some(0xc000));
        // ROM enable bit gates the ROM.
        c.write(0x30, &0xfeb0_0000u32.to_le_bytes());
        assert_eq!(c.bar_address(ROM_BAR), None);
        c.write(0x30, &0xfeb0_0001u32.to_le_bytes());
        assert_eq!(c.bar_address(ROM_BAR), Some(0xfeb0_0000));
    }

    #[test]
    fn bridge_header_and_caps() {
        let mut c = PciConfig::new(&ident(1), false, true);
        assert_eq!(c.get_u16(SUBSYSTEM_VENDOR_ID), 0);
        assert_eq!(c.get_u16(PREF_MEMORY_BASE), 1);
        c.write(IO_BASE, &[0xff, 0xff]);
        assert_eq!(c.get_u16(IO_BASE), 0xf0f0);
        c.add_capability(CAP_ID_SSVID, 0x40, 8).unwrap();
        c.add_capability(CAP_ID_MSIX, 0x48, 12).unwrap();
        assert_eq!(c.get_u8(CAPABILITY_LIST), 0x48);
        assert_eq!(c.get_u8(0x49), 0x40);
        assert_eq!(c.find_capability(CAP_ID_SSVID), Some(0x40));
        c.add_ext_capability(EXT_CAP_ID_ERR, 2, 0x100, 0x48)
            .unwrap();
        c.add_ext_capability(EXT_CAP_ID_ACS, 1, 0x148, 8).unwrap();
        assert_eq!(c.get_u32(0x100), 0x1482_0001);
        assert_eq!(c.get_u32(0x148), 0x0001_000d);
        c.write(0x40, &[0xff; 8]);
        assert_eq!(c.get_u8(0x40), CAP_ID_SSVID);
    }

    #[test]
    fn reset_restores_snapshot() {
        let mut c = PciConfig::new(&ident(0), false, false);
        c.set_u8(0x60, 0x80);
        c.commit_reset_state();
        c.write(0x60, &[0x0b]);
        c.write(COMMAND, &[7]);
        c.reset();
        assert_eq!(c.get_u8(0x60), 0x80);
        assert_eq!(c.command(), 0);
    }
}
