//! QEMU's firmware configuration device (docs/specs/fw_cfg.rst) as x86 machines map it
//! (`fw_cfg_io`), at the plan's ports (the boards put it at 0x510): selector at base
//! (16-bit), data at base + 1 (byte-wide), DMA address at base + 4 (64-bit, big-endian;
//! writing the low half at base + 8 starts the transfer). Items are byte blobs under 16-bit
//! keys; named blobs ("files") get keys from 0x20 on and are listed, sorted by name, in the
//! directory at key 0x19. What the items hold is decided by the VMM from its plan; this
//! module only implements the interface.

use super::kind::{AmlScope, IsaBuilt, IsaContext, IsaError, IsaKind};
use crate::aml;
use crate::bus::BusDevice;
use acpi_tables::{aml as a, Aml};
use machine::IsaDevicePlan;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const FW_CFG_SIGNATURE: u16 = 0x00;
pub const FW_CFG_ID: u16 = 0x01;
pub const FW_CFG_UUID: u16 = 0x02;
pub const FW_CFG_RAM_SIZE: u16 = 0x03;
pub const FW_CFG_NOGRAPHIC: u16 = 0x04;
pub const FW_CFG_NB_CPUS: u16 = 0x05;
pub const FW_CFG_MACHINE_ID: u16 = 0x06;
pub const FW_CFG_KERNEL_ADDR: u16 = 0x07;
pub const FW_CFG_KERNEL_SIZE: u16 = 0x08;
pub const FW_CFG_KERNEL_CMDLINE: u16 = 0x09;
pub const FW_CFG_INITRD_ADDR: u16 = 0x0a;
pub const FW_CFG_INITRD_SIZE: u16 = 0x0b;
pub const FW_CFG_BOOT_DEVICE: u16 = 0x0c;
pub const FW_CFG_NUMA: u16 = 0x0d;
pub const FW_CFG_BOOT_MENU: u16 = 0x0e;
pub const FW_CFG_MAX_CPUS: u16 = 0x0f;
pub const FW_CFG_KERNEL_ENTRY: u16 = 0x10;
pub const FW_CFG_KERNEL_DATA: u16 = 0x11;
pub const FW_CFG_INITRD_DATA: u16 = 0x12;
pub const FW_CFG_CMDLINE_ADDR: u16 = 0x13;
pub const FW_CFG_CMDLINE_SIZE: u16 = 0x14;
pub const FW_CFG_CMDLINE_DATA: u16 = 0x15;
pub const FW_CFG_SETUP_ADDR: u16 = 0x16;
pub const FW_CFG_SETUP_SIZE: u16 = 0x17;
pub const FW_CFG_SETUP_DATA: u16 = 0x18;
pub const FW_CFG_FILE_DIR: u16 = 0x19;
pub const FW_CFG_FILE_FIRST: u16 = 0x20;
/// x86 architecture-local items.
pub const FW_CFG_E820_TABLE: u16 = 0x8003;

const FILE_NAME_LEN: usize = 56;
/// QEMU's default number of file slots (x-file-slots of current machine types).
const FILE_SLOTS: usize = 0x20;

const DMA_CTL_ERROR: u32 = 0x01;
const DMA_CTL_READ: u32 = 0x02;
const DMA_CTL_SKIP: u32 = 0x04;
const DMA_CTL_SELECT: u32 = 0x08;
const DMA_CTL_WRITE: u32 = 0x10;
/// "QEMU CFG" read back from the DMA register, as QEMU's fw_cfg_dma_mem_read answers.
const DMA_SIGNATURE: u64 = 0x5145_4d55_2043_4647;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FwCfgError {
    #[error("fw_cfg file name '{0}' is longer than 55 bytes")]
    NameTooLong(String),
    #[error("fw_cfg file '{0}' already exists")]
    Duplicate(String),
    #[error("fw_cfg has no free file slot for '{0}'")]
    NoSlot(String),
}

pub struct FwCfg {
    items: BTreeMap<u16, Vec<u8>>,
    /// File name -> key, for the directory.
    files: BTreeMap<String, u16>,
    /// Items the guest may overwrite through DMA (QEMU's allow_write files).
    writable: std::collections::BTreeSet<u16>,
    selector: u16,
    offset: usize,
    /// DMA address register halves as last written (big-endian on the bus).
    dma_high: u32,
    memory: Option<GuestMemoryMmap>,
}

impl FwCfg {
    /// A device with the signature and interface ID; `memory` enables the DMA interface.
    pub fn new(memory: Option<GuestMemoryMmap>) -> Self {
        let mut cfg = Self {
            items: BTreeMap::new(),
            files: BTreeMap::new(),
            writable: Default::default(),
            selector: 0,
            offset: 0,
            dma_high: 0,
            memory,
        };
        cfg.add(FW_CFG_SIGNATURE, b"QEMU".to_vec());
        // Bit 0: traditional interface; bit 1: DMA.
        let id: u32 = if cfg.memory.is_some() { 3 } else { 1 };
        cfg.add(FW_CFG_ID, id.to_le_bytes().to_vec());
        cfg.update_dir();
        cfg
    }

    pub fn add(&mut self, key: u16, data: Vec<u8>) {
        self.items.insert(key, data);
    }

    pub fn add_u16(&mut self, key: u16, v: u16) {
        self.add(key, v.to_le_bytes().to_vec());
    }

    pub fn add_u32(&mut self, key: u16, v: u32) {
        self.add(key, v.to_le_bytes().to_vec());
    }

    pub fn add_u64(&mut self, key: u16, v: u64) {
        self.add(key, v.to_le_bytes().to_vec());
    }

    /// Add a named blob; keys are given in insertion order, the directory lists by name.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        if name.len() >= FILE_NAME_LEN {
            return Err(FwCfgError::NameTooLong(name.to_string()));
        }
        if self.files.contains_key(name) {
            return Err(FwCfgError::Duplicate(name.to_string()));
        }
        if self.files.len() >= FILE_SLOTS {
            return Err(FwCfgError::NoSlot(name.to_string()));
        }
        let key = FW_CFG_FILE_FIRST + self.files.len() as u16;
        self.files.insert(name.to_string(), key);
        self.items.insert(key, data);
        self.update_dir();
        Ok(key)
    }

    /// Add a named blob the guest may overwrite in place through a DMA write (QEMU's
    /// fw_cfg_add_file_callback with read-only off; the size stays).
    pub fn add_writable_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        let key = self.add_file(name, data)?;
        self.writable.insert(key);
        Ok(key)
    }

    /// The contents under `key`, if any.
    pub fn item(&self, key: u16) -> Option<&[u8]> {
        self.items.get(&key).map(Vec::as_slice)
    }

    fn update_dir(&mut self) {
        let mut dir = (self.files.len() as u32).to_be_bytes().to_vec();
        for (name, key) in &self.files {
            let size = self.items.get(key).map_or(0, Vec::len) as u32;
            dir.extend_from_slice(&size.to_be_bytes());
            dir.extend_from_slice(&key.to_be_bytes());
            dir.extend_from_slice(&0u16.to_be_bytes());
            let mut n = [0u8; FILE_NAME_LEN];
            n[..name.len()].copy_from_slice(name.as_bytes());
            dir.extend_from_slice(&n);
        }
        self.items.insert(FW_CFG_FILE_DIR, dir);
    }

    fn select(&mut self, key: u16) {
        self.selector = key;
        self.offset = 0;
    }

    /// The next data byte of the selected item; past the end (or no item) reads 0.
    fn next_byte(&mut self) -> u8 {
        let b = self
            .items
            .get(&self.selector)
            .and_then(|d| d.get(self.offset).copied())
            .unwrap_or(0);
        if self.items.contains_key(&self.selector) {
            self.offset = self.offset.saturating_add(1);
        }
        b
    }

    /// Run the DMA request whose descriptor (control, length, address: big-endian) is at
    /// `desc`; the guest reads the result back from the control word.
    fn dma(&mut self, desc: u64) {
        let Some(mem) = self.memory.clone() else {
            return;
        };
        let mut raw = [0u8; 16];
        if mem.read_slice(&mut raw, GuestAddress(desc)).is_err() {
            return;
        }
        let control = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let length = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]) as usize;
        let mut a = [0u8; 8];
        a.copy_from_slice(&raw[8..16]);
        let address = u64::from_be_bytes(a);
        if control & DMA_CTL_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let mut status = 0u32;
        if control & (DMA_CTL_READ | DMA_CTL_WRITE | DMA_CTL_SKIP) != 0 {
            let data = self.items.get(&self.selector);
            let avail = data.map_or(0, |d| d.len().saturating_sub(self.offset));
            let n = length.min(avail);
            if control & DMA_CTL_READ != 0 {
                // Bytes past the item read as zero, as in QEMU.
                let mut buf = vec![0u8; length];
                if let Some(d) = data {
                    buf[..n].copy_from_slice(&d[self.offset..self.offset + n]);
                }
                if mem.write_slice(&buf, GuestAddress(address)).is_err() {
                    status = DMA_CTL_ERROR;
                }
            } else if control & DMA_CTL_WRITE != 0 {
                // Only writable files take a write, and only one that fits from the
                // current offset (QEMU: `len != dma.length` is an error); the rest are
                // read-only (QEMU's default since 2.4).
                let mut buf = vec![0u8; n];
                if !self.writable.contains(&self.selector)
                    || n != length
                    || mem.read_slice(&mut buf, GuestAddress(address)).is_err()
                {
                    status = DMA_CTL_ERROR;
                } else if let Some(item) = self.items.get_mut(&self.selector) {
                    item[self.offset..self.offset + n].copy_from_slice(&buf);
                }
            }
            if status == 0 {
                self.offset += n;
            }
        }
        let _ = mem.write_slice(&status.to_be_bytes(), GuestAddress(desc));
    }
}

impl BusDevice for FwCfg {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match offset {
            1 => {
                // The data port is one byte wide; a wider read takes consecutive bytes.
                for b in data.iter_mut() {
                    *b = self.next_byte();
                }
            }
            4..=11 if self.memory.is_some() => {
                let sig = DMA_SIGNATURE.to_be_bytes();
                for (i, b) in data.iter_mut().enumerate() {
                    *b = sig.get(offset as usize - 4 + i).copied().unwrap_or(0);
                }
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 2) => self.select(u16::from_le_bytes([data[0], data[1]])),
            (0, 1) => self.select(u16::from(data[0])),
            // Data writes are ignored (QEMU 2.4+).
            (1, _) => {}
            (4, 4) if self.memory.is_some() => {
                self.dma_high = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            }
            (8, 4) if self.memory.is_some() => {
                let low = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                let desc = (u64::from(self.dma_high) << 32) | u64::from(low);
                self.dma_high = 0;
                self.dma(desc);
            }
            (4, 8) if self.memory.is_some() => {
                let mut b = [0u8; 8];
                b.copy_from_slice(data);
                self.dma_high = 0;
                self.dma(u64::from_be_bytes(b));
            }
            _ => {}
        }
    }
}

/// The fw_cfg kind: the VMM's items at the plan's ports.
pub struct FwCfgKind;
pub static KIND: FwCfgKind = FwCfgKind;

impl IsaKind for FwCfgKind {
    fn names(&self) -> &'static [&'static str] {
        &["fw_cfg_io"]
    }
    fn build(&self, ctx: &mut IsaContext) -> Result<IsaBuilt, IsaError> {
        let cfg = ctx.fw_cfg.take().ok_or_else(|| IsaError::MissingResource {
            device: ctx.device.type_name.clone(),
            what: "fw_cfg contents (a second fw_cfg device)",
        })?;
        Ok(IsaBuilt::new(Arc::new(Mutex::new(cfg))))
    }
    fn aml_scope(&self) -> AmlScope {
        AmlScope::PciRoot
    }
    /// QEMU's fw_cfg_add_acpi_dsdt: `FWCF`, QEMU0002, present and decoding but hidden
    /// (`_STA` 0xB), its ports (selector to the end of the DMA register) in `_CRS`.
    fn aml(&self, dev: &IsaDevicePlan, _nth: usize) -> Vec<u8> {
        let ios = aml::io_ranges(dev);
        let crs = a::ResourceTemplate::new(ios.iter().map(|i| i as &dyn Aml).collect());
        let hid = a::Name::new("_HID".into(), &"QEMU0002");
        let sta = a::Name::new("_STA".into(), &0x0bu8);
        let crs = a::Name::new("_CRS".into(), &crs);
        aml::bytes_of(&a::Device::new("FWCF".into(), vec![&hid, &sta, &crs]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FW_CFG_IO_BASE: u64 = 0x510;

    fn read_item(cfg: &mut FwCfg, key: u16, len: usize) -> Vec<u8> {
        cfg.write(FW_CFG_IO_BASE, 0, &key.to_le_bytes());
        let mut out = vec![0u8; len];
        for b in out.iter_mut() {
            let mut v = [0u8];
            cfg.read(FW_CFG_IO_BASE, 1, &mut v);
            *b = v[0];
        }
        out
    }

    #[test]
    fn signature_id_and_items() {
        let mut cfg = FwCfg::new(None);
        cfg.add_u64(FW_CFG_RAM_SIZE, 128 << 20);
        assert_eq!(read_item(&mut cfg, FW_CFG_SIGNATURE, 4), b"QEMU");
        assert_eq!(read_item(&mut cfg, FW_CFG_ID, 4), 1u32.to_le_bytes());
        assert_eq!(
            read_item(&mut cfg, FW_CFG_RAM_SIZE, 8),
            (128u64 << 20).to_le_bytes()
        );
        // Past the end and unknown keys read 0.
        assert_eq!(read_item(&mut cfg, FW_CFG_SIGNATURE, 6)[4..], [0, 0]);
        assert_eq!(read_item(&mut cfg, 0x1234, 2), [0, 0]);
    }

    #[test]
    fn directory_sorted_by_name() {
        let mut cfg = FwCfg::new(None);
        assert_eq!(cfg.add_file("z/last", vec![1, 2, 3]), Ok(0x20));
        assert_eq!(cfg.add_file("a/first", vec![9]), Ok(0x21));
        assert!(cfg.add_file("a/first", vec![]).is_err());
        assert!(cfg.add_file(&"x".repeat(56), vec![]).is_err());
        let dir = read_item(&mut cfg, FW_CFG_FILE_DIR, 4 + 2 * 64);
        assert_eq!(dir[..4], 2u32.to_be_bytes());
        assert_eq!(dir[4..8], 1u32.to_be_bytes());
        assert_eq!(dir[8..10], 0x21u16.to_be_bytes());
        assert_eq!(&dir[12..19], b"a/first");
        assert_eq!(dir[68..72], 3u32.to_be_bytes());
        assert_eq!(&dir[76..82], b"z/last");
    }

    #[test]
    fn dma_read_select_and_error_on_write() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut cfg = FwCfg::new(Some(mem.clone()));
        cfg.add_file("etc/x", b"hello".to_vec()).unwrap();
        assert_eq!(read_item(&mut cfg, FW_CFG_ID, 4), 3u32.to_le_bytes());
        // Select etc/x (0x20) and read 8 bytes to 0x2000.
        let control = (0x20u32 << 16) | DMA_CTL_SELECT | DMA_CTL_READ;
        let mut desc = control.to_be_bytes().to_vec();
        desc.extend_from_slice(&8u32.to_be_bytes());
        desc.extend_from_slice(&0x2000u64.to_be_bytes());
        mem.write_slice(&desc, GuestAddress(0x1000)).unwrap();
        cfg.write(FW_CFG_IO_BASE, 4, &0u32.to_be_bytes());
        cfg.write(FW_CFG_IO_BASE, 8, &0x1000u32.to_be_bytes());
        let mut out = [0u8; 8];
        mem.read_slice(&mut out, GuestAddress(0x2000)).unwrap();
        assert_eq!(&out, b"hello\0\0\0");
        let mut status = [0u8; 4];
        mem.read_slice(&mut status, GuestAddress(0x1000)).unwrap();
        assert_eq!(status, [0; 4]);
        // A write is refused with the error bit.
        let control = DMA_CTL_WRITE;
        mem.write_slice(&control.to_be_bytes(), GuestAddress(0x1000))
            .unwrap();
        cfg.write(FW_CFG_IO_BASE, 4, &0x1000u64.to_be_bytes());
        mem.read_slice(&mut status, GuestAddress(0x1000)).unwrap();
        assert_eq!(u32::from_be_bytes(status), DMA_CTL_ERROR);
        // The DMA register reads back QEMU's signature.
        let mut sig = [0u8; 8];
        cfg.read(FW_CFG_IO_BASE, 4, &mut sig);
        assert_eq!(&sig, b"QEMU CFG");
    }

    #[test]
    fn dma_writes_reach_writable_files_only_within_their_size() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut cfg = FwCfg::new(Some(mem.clone()));
        let ro = cfg.add_file("etc/ro", vec![1; 4]).unwrap();
        let rw = cfg.add_writable_file("etc/rw", vec![0; 4]).unwrap();
        let mut run = |key: u16, control: u32, len: u32| {
            let mut desc = ((u32::from(key) << 16) | DMA_CTL_SELECT | control)
                .to_be_bytes()
                .to_vec();
            desc.extend_from_slice(&len.to_be_bytes());
            desc.extend_from_slice(&0x2000u64.to_be_bytes());
            mem.write_slice(&desc, GuestAddress(0x1000)).unwrap();
            cfg.write(FW_CFG_IO_BASE, 4, &0x1000u64.to_be_bytes());
            let mut status = [0u8; 4];
            mem.read_slice(&mut status, GuestAddress(0x1000)).unwrap();
            u32::from_be_bytes(status)
        };
        mem.write_slice(&[9, 8, 7, 6, 5], GuestAddress(0x2000))
            .unwrap();
        assert_eq!(run(rw, DMA_CTL_WRITE, 4), 0);
        assert_eq!(run(rw, DMA_CTL_WRITE, 5), DMA_CTL_ERROR, "past the end");
        assert_eq!(run(ro, DMA_CTL_WRITE, 4), DMA_CTL_ERROR, "read-only");
        assert_eq!(cfg.item(rw), Some(&[9u8, 8, 7, 6][..]));
        assert_eq!(cfg.item(ro), Some(&[1u8; 4][..]));
    }
}
