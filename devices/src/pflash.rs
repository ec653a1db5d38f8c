//! The Intel command set (CFI01) parallel flash QEMU's pflash_cfi01 models, with QEMU's
//! PC wiring (`-drive if=pflash`, `-machine pflash0=,pflash1=`): byte-wide bank, device
//! width not given, 4 KiB sectors, identifiers 0.
//!
//! The array lives in a [`RomImage`] that the machine's memory view maps into the guest
//! read-only while the flash is in read-array mode (QEMU's "romd" mode); a [`RomdSink`]
//! hears when that mode changes, so the VMM takes the image out of the view while a
//! command is in progress and reads reach the model.

use crate::bus::BusDevice;
use crate::chipset::memory_view::RomImage;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// QEMU's FLASH_SECTOR_SIZE on PCs: the erase block, and the unit of a flash's size.
pub const SECTOR_SIZE: u64 = 4096;
/// Write-buffer size for a byte-wide bank (CFI byte 0x2a = 8: 2^8 bytes).
const WRITEBLOCK_SIZE: usize = 256;
/// Writes reach the backing file in whole 512-byte sectors, as QEMU's pflash_update.
const FILE_SECTOR: u64 = 512;

/// Status register bits.
const STATUS_READY: u8 = 0x80;
const STATUS_ERASE_ERROR: u8 = 0x20;
const STATUS_PROGRAM_ERROR: u8 = 0x10;

/// Read-array, QEMU's reset value of the command (0x00; 0xff selects it too).
const CMD_READ_ARRAY: u8 = 0x00;

#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    #[error("cannot allocate {size} bytes of firmware memory: {source}")]
    Allocate {
        size: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the firmware image: {0}")]
    Read(#[source] std::io::Error),
}

/// A firmware image in page-aligned host memory (a [`RomImage`] the memory view can map),
/// optionally written through to a file.
pub struct FirmwareImage {
    rom: Arc<RomImage>,
    /// The backing file writes land on (a flash that is not read-only).
    file: Option<File>,
}

impl std::fmt::Debug for FirmwareImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirmwareImage")
            .field("len", &self.rom.len())
            .field("write_through", &self.file.is_some())
            .finish()
    }
}

impl FirmwareImage {
    /// `bytes` copied into fresh firmware memory (a `-bios` image, read once at start).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FlashError> {
        let rom = RomImage::new(bytes).map_err(|source| FlashError::Allocate {
            size: bytes.len(),
            source,
        })?;
        Ok(Self { rom, file: None })
    }

    /// `len` bytes read from the start of `file`; with `write_through`, guest programming
    /// and erasing write the changed sectors back to it.
    pub fn from_file(file: File, len: usize, write_through: bool) -> Result<Self, FlashError> {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, 0).map_err(FlashError::Read)?;
        let mut image = Self::from_bytes(&buf)?;
        image.file = write_through.then_some(file);
        Ok(image)
    }

    /// The memory the view maps.
    pub fn rom(&self) -> &Arc<RomImage> {
        &self.rom
    }

    pub fn len(&self) -> u64 {
        self.rom.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rom.is_empty()
    }

    /// Copy out `buf.len()` bytes at `offset`; bytes past the end read as all-ones.
    pub fn read(&self, offset: u64, buf: &mut [u8]) {
        self.rom.read(offset, buf);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        self.rom.write(offset, data);
    }

    /// Write `[offset, offset + len)`, widened to whole file sectors, to the backing file.
    fn persist(&self, offset: u64, len: u64) {
        let Some(file) = &self.file else { return };
        let start = offset / FILE_SECTOR * FILE_SECTOR;
        let end = (offset + len).div_ceil(FILE_SECTOR) * FILE_SECTOR;
        let end = end.min(self.len());
        let mut buf = vec![0u8; (end - start) as usize];
        self.read(start, &mut buf);
        if let Err(e) = file.write_all_at(&buf, start) {
            log::error!("Could not update PFLASH: {e}");
        }
    }
}

/// Told when a flash enters (true) or leaves (false) read-array mode, so that the VMM
/// maps its memory straight into the guest only while reads are plain memory reads.
pub trait RomdSink: Send {
    fn set_romd(&mut self, romd: bool);
}

/// One CFI01 flash device (QEMU's `cfi.pflash01` with PC properties).
pub struct PflashCfi01 {
    name: String,
    image: Arc<FirmwareImage>,
    /// No write permission on the backing drive: program and erase set error bits.
    read_only: bool,
    cmd: u8,
    wcycle: u8,
    status: u8,
    /// Bytes left in a write-to-buffer sequence.
    counter: u32,
    /// Start of the write buffer being filled, if a buffered write is in progress.
    blk_offset: Option<u64>,
    blk_bytes: [u8; WRITEBLOCK_SIZE],
    cfi_table: [u8; 0x52],
    romd: bool,
    sink: Option<Box<dyn RomdSink>>,
}

impl PflashCfi01 {
    /// A flash over `image` (its size a non-zero multiple of [`SECTOR_SIZE`]).
    pub fn new(name: &str, image: Arc<FirmwareImage>, read_only: bool) -> Self {
        let blocks = image.len() / SECTOR_SIZE;
        Self {
            name: name.to_string(),
            cfi_table: cfi_table(blocks, image.len()),
            image,
            read_only,
            cmd: CMD_READ_ARRAY,
            wcycle: 0,
            status: STATUS_READY,
            counter: 0,
            blk_offset: None,
            blk_bytes: [0; WRITEBLOCK_SIZE],
            romd: true,
            sink: None,
        }
    }

    /// Who maps the flash into the guest while it is in read-array mode.
    pub fn set_romd_sink(&mut self, sink: Box<dyn RomdSink>) {
        self.sink = Some(sink);
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether reads are plain memory reads (read-array mode).
    pub fn romd(&self) -> bool {
        self.romd
    }

    fn set_romd(&mut self, romd: bool) {
        if self.romd != romd {
            self.romd = romd;
            if let Some(sink) = &mut self.sink {
                sink.set_romd(romd);
            }
        }
    }

    fn data_read(&self, offset: u64, width: usize) -> u32 {
        let mut b = [0u8; 4];
        self.image.read(offset, &mut b[..width]);
        u32::from_le_bytes(b)
    }

    /// pflash_read for one access of `width` (1, 2 or 4) bytes.
    fn read_value(&mut self, offset: u64, width: usize) -> u32 {
        match self.cmd {
            CMD_READ_ARRAY => self.data_read(offset, width),
            0x10 | 0x20 | 0x28 | 0x40 | 0x50 | 0x60 | 0x70 | 0xe8 => {
                // No device width given: a 32-bit read repeats the status in the high half.
                let s = u32::from(self.status);
                if width > 2 {
                    s | s << 16
                } else {
                    s
                }
            }
            // Identifiers id0..id3 are 0 on PCs; other offsets read 0 too.
            0x90 => 0,
            0x98 => {
                let boff = (offset & 0xff) as usize;
                self.cfi_table.get(boff).copied().map_or(0, u32::from)
            }
            _ => {
                // An unknown state: back to read-array, as QEMU does.
                self.wcycle = 0;
                self.cmd = CMD_READ_ARRAY;
                self.data_read(offset, width)
            }
        }
    }

    fn data_write(&mut self, offset: u64, value: u32, width: usize) {
        let bytes = value.to_le_bytes();
        match self.blk_offset {
            Some(start) => {
                if offset < start || offset + width as u64 > start + WRITEBLOCK_SIZE as u64 {
                    self.status |= STATUS_PROGRAM_ERROR;
                    return;
                }
                let i = (offset - start) as usize;
                self.blk_bytes[i..i + width].copy_from_slice(&bytes[..width]);
            }
            None => self.image.write(offset, &bytes[..width]),
        }
    }

    fn read_array_mode(&mut self) {
        self.wcycle = 0;
        self.cmd = CMD_READ_ARRAY;
        self.set_romd(true);
    }

    /// pflash_write for one access of `width` (1, 2 or 4) bytes.
    fn write_value(&mut self, offset: u64, value: u32, width: usize) {
        let cmd = value as u8;
        if self.wcycle == 0 {
            // A command sequence starts: reads must reach the model now.
            self.set_romd(false);
        }
        match self.wcycle {
            0 => match cmd {
                0x00 | 0xf0 | 0xff => return self.read_array_mode(),
                0x10 | 0x40 => {}
                0x20 => {
                    let start = offset & !(SECTOR_SIZE - 1);
                    if self.read_only {
                        self.status |= STATUS_ERASE_ERROR;
                    } else if start + SECTOR_SIZE <= self.image.len() {
                        self.image.write(start, &[0xff; SECTOR_SIZE as usize]);
                        self.image.persist(start, SECTOR_SIZE);
                    }
                    self.status |= STATUS_READY;
                }
                0x50 => {
                    self.status = 0;
                    return self.read_array_mode();
                }
                0x60 | 0x98 => {}
                0x70 | 0x90 => {
                    self.cmd = cmd;
                    return;
                }
                0xe8 => self.status |= STATUS_READY,
                _ => return self.error(offset, value),
            },
            1 => match self.cmd {
                0x10 | 0x40 => {
                    if self.read_only {
                        self.status |= STATUS_PROGRAM_ERROR;
                    } else {
                        self.data_write(offset, value, width);
                        self.image.persist(offset, width as u64);
                    }
                    self.status |= STATUS_READY;
                    self.wcycle = 0;
                    return;
                }
                0x20 | 0x28 => match cmd {
                    0xd0 => {
                        self.wcycle = 0;
                        self.status |= STATUS_READY;
                        return;
                    }
                    0xff => return self.read_array_mode(),
                    _ => return self.error(offset, value),
                },
                0xe8 => {
                    // Byte-wide bank: the count is the low byte.
                    self.counter = value & 0xff;
                    self.wcycle += 1;
                    return;
                }
                0x60 => match cmd {
                    0xd0 | 0x01 => {
                        self.wcycle = 0;
                        self.status |= STATUS_READY;
                        return;
                    }
                    _ => return self.read_array_mode(),
                },
                0x98 => {
                    if cmd == 0xff {
                        return self.read_array_mode();
                    }
                    // Anything else leaves query mode without a state change (QEMU).
                    return;
                }
                _ => return self.error(offset, value),
            },
            2 => match self.cmd {
                0xe8 => {
                    if self.blk_offset.is_none() && self.counter != 0 {
                        let start = offset & !(WRITEBLOCK_SIZE as u64 - 1);
                        self.blk_offset = Some(start);
                        self.image.read(start, &mut self.blk_bytes);
                    }
                    if !self.read_only && self.blk_offset.is_some() {
                        self.data_write(offset, value, width);
                    } else {
                        self.status |= STATUS_PROGRAM_ERROR;
                    }
                    self.status |= STATUS_READY;
                    if self.counter == 0 {
                        self.wcycle += 1;
                    } else {
                        self.counter -= 1;
                    }
                    return;
                }
                _ => return self.error(offset, value),
            },
            3 => match self.cmd {
                0xe8 => {
                    if cmd == 0xd0 && self.status & STATUS_PROGRAM_ERROR == 0 {
                        if let Some(start) = self.blk_offset.take() {
                            let end = (start + WRITEBLOCK_SIZE as u64).min(self.image.len());
                            let n = (end - start) as usize;
                            self.image.write(start, &self.blk_bytes[..n]);
                            self.image.persist(start, n as u64);
                        }
                        self.wcycle = 0;
                        self.status |= STATUS_READY;
                        return;
                    }
                    self.blk_offset = None;
                    return self.read_array_mode();
                }
                _ => {
                    self.blk_offset = None;
                    return self.error(offset, value);
                }
            },
            _ => return self.read_array_mode(),
        }
        // Only a first cycle gets here: the command it started.
        self.wcycle += 1;
        self.cmd = cmd;
    }

    fn error(&mut self, offset: u64, value: u32) {
        crate::unimp!(
            "{}: Unimplemented flash cmd sequence (offset {offset:#x}, wcycle {:#x} cmd {:#x} value {value:#x})",
            self.name,
            self.wcycle,
            self.cmd
        );
        self.read_array_mode();
    }

    /// Back to read-array mode with a ready status (system reset).
    pub fn reset(&mut self) {
        self.cmd = CMD_READ_ARRAY;
        self.wcycle = 0;
        self.status = STATUS_READY;
        self.blk_offset = None;
        self.set_romd(true);
    }
}

/// QEMU's CFI query table for a byte-wide bank of `blocks` 4 KiB sectors.
fn cfi_table(blocks: u64, device_len: u64) -> [u8; 0x52] {
    let mut t = [0u8; 0x52];
    t[0x10..0x13].copy_from_slice(b"QRY");
    t[0x13] = 0x01; // Intel command set
    t[0x15] = 0x31; // primary extended table address
    t[0x1b] = 0x45; // Vcc min
    t[0x1c] = 0x55; // Vcc max
    t[0x1f] = 0x07;
    t[0x20] = 0x07;
    t[0x21] = 0x0a;
    t[0x23] = 0x04;
    t[0x24] = 0x04;
    t[0x25] = 0x04;
    t[0x27] = device_len.trailing_zeros() as u8;
    t[0x28] = 0x02; // 8 & 16 bit interface
    t[0x2a] = WRITEBLOCK_SIZE.trailing_zeros() as u8;
    t[0x2c] = 0x01; // one uniform erase block region
    t[0x2d] = (blocks - 1) as u8;
    t[0x2e] = ((blocks - 1) >> 8) as u8;
    t[0x2f] = (SECTOR_SIZE >> 8) as u8;
    t[0x30] = (SECTOR_SIZE >> 16) as u8;
    t[0x31..0x34].copy_from_slice(b"PRI");
    t[0x34] = b'1';
    t[0x35] = b'0';
    t[0x3f] = 0x01;
    t
}

impl BusDevice for PflashCfi01 {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if self.cmd == CMD_READ_ARRAY && self.wcycle == 0 {
            // Read-array: plain memory, whatever the access size (a qtest memread).
            self.image.read(offset, data);
            return;
        }
        let mut done = 0;
        while done < data.len() {
            let at = offset + done as u64;
            let width = access_width(at, data.len() - done);
            let v = self.read_value(at, width);
            data[done..done + width].copy_from_slice(&v.to_le_bytes()[..width]);
            done += width;
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let at = offset + done as u64;
            let width = access_width(at, data.len() - done);
            let mut b = [0u8; 4];
            b[..width].copy_from_slice(&data[done..done + width]);
            self.write_value(at, u32::from_le_bytes(b), width);
            done += width;
        }
    }
}

/// The size of the next access of a longer one, as QEMU's memory core splits it for a
/// device of at most 4-byte accesses: no wider than 4, than what is left, or than the
/// address's alignment, and a power of two.
fn access_width(addr: u64, left: usize) -> usize {
    let align = if addr == 0 {
        4
    } else {
        1usize << addr.trailing_zeros().min(2)
    };
    let n = left.min(4).min(align);
    1 << (usize::BITS - 1 - n.leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn flash_over(bytes: &[u8], read_only: bool) -> (PflashCfi01, machina_tests::TempDir) {
        let dir = machina_tests::TempDir::new("pflash");
        let path = dir.path().join("flash.img");
        std::fs::write(&path, bytes).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let image = FirmwareImage::from_file(file, bytes.len(), !read_only).unwrap();
        (
            PflashCfi01::new("system.flash0", Arc::new(image), read_only),
            dir,
        )
    }

    fn file_bytes(dir: &machina_tests::TempDir) -> Vec<u8> {
        let mut v = Vec::new();
        std::fs::File::open(dir.path().join("flash.img"))
            .unwrap()
            .read_to_end(&mut v)
            .unwrap();
        v
    }

    fn rd(f: &mut PflashCfi01, off: u64, n: usize) -> Vec<u8> {
        let mut b = vec![0; n];
        f.read(0, off, &mut b);
        b
    }

    struct Count(Arc<AtomicUsize>, Arc<AtomicUsize>);
    impl RomdSink for Count {
        fn set_romd(&mut self, romd: bool) {
            if romd { &self.0 } else { &self.1 }.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn program_erase_land_in_the_file_and_romd_follows_the_mode() {
        let init: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
        let (mut f, dir) = flash_over(&init, false);
        let (on, off) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        f.set_romd_sink(Box::new(Count(on.clone(), off.clone())));
        // Program byte 0x10 at 5 (program can only clear bits on hardware; QEMU stores).
        f.write(0, 5, &[0x40]);
        assert!(!f.romd());
        assert_eq!(off.load(Ordering::SeqCst), 1);
        f.write(0, 5, &[0x10]);
        // Status until read-array.
        assert_eq!(rd(&mut f, 0, 1), vec![0x80]);
        assert_eq!(rd(&mut f, 0, 4), vec![0x80, 0, 0x80, 0]);
        f.write(0, 0, &[0xff]);
        assert!(f.romd());
        assert_eq!(on.load(Ordering::SeqCst), 1);
        assert_eq!(rd(&mut f, 4, 3), vec![4, 0x10, 6]);
        assert_eq!(file_bytes(&dir)[5], 0x10);
        // Erase the second sector.
        f.write(0, 0x1234, &[0x20]);
        f.write(0, 0x1234, &[0xd0]);
        f.write(0, 0, &[0xff]);
        let after = file_bytes(&dir);
        assert!(after[4096..].iter().all(|&b| b == 0xff));
        assert_eq!(after[4094], 0xfe, "the first sector is untouched");
        assert_eq!(rd(&mut f, 4096, 2), vec![0xff, 0xff]);
    }

    #[test]
    fn buffered_write_commits_on_confirm() {
        let (mut f, dir) = flash_over(&[0u8; 4096], false);
        f.write(0, 0x100, &[0xe8]);
        assert_eq!(rd(&mut f, 0, 1), vec![0x80]);
        f.write(0, 0x100, &[3]); // count - 1
        for (i, b) in [0xa1u8, 0xa2, 0xa3, 0xa4].iter().enumerate() {
            f.write(0, 0x100 + i as u64, &[*b]);
        }
        // Nothing lands before the confirm.
        assert_eq!(file_bytes(&dir)[0x100], 0);
        f.write(0, 0x100, &[0xd0]);
        f.write(0, 0, &[0xff]);
        assert_eq!(
            &file_bytes(&dir)[0x100..0x105],
            &[0xa1, 0xa2, 0xa3, 0xa4, 0]
        );
        assert_eq!(rd(&mut f, 0x100, 4), vec![0xa1, 0xa2, 0xa3, 0xa4]);
    }

    #[test]
    fn read_only_flash_reports_errors_and_keeps_data() {
        let (mut f, dir) = flash_over(&[7u8; 4096], true);
        f.write(0, 1, &[0x40]);
        f.write(0, 1, &[0x00]);
        assert_eq!(rd(&mut f, 0, 1), vec![0x90]); // ready + program error
        f.write(0, 0, &[0x20]);
        f.write(0, 0, &[0xd0]);
        assert_eq!(rd(&mut f, 0, 1), vec![0xb0]); // + erase error
        f.write(0, 0, &[0x50]); // clear status, read array
        assert_eq!(rd(&mut f, 0, 2), vec![7, 7]);
        assert!(file_bytes(&dir).iter().all(|&b| b == 7));
    }

    #[test]
    fn long_accesses_split_as_qemus_memory_core() {
        assert_eq!(access_width(0x10, 3), 2);
        assert_eq!(access_width(0x12, 1), 1);
        assert_eq!(access_width(0x11, 8), 1);
        assert_eq!(access_width(0x0, 8), 4);
        let (mut f, _dir) = flash_over(&[0u8; 4096], false);
        f.write(0, 0, &[0x98]);
        // 2 bytes at 0x10 (one CFI entry, zero-extended), then 1 byte at 0x12.
        assert_eq!(rd(&mut f, 0x10, 3), vec![b'Q', 0, b'Y']);
    }

    #[test]
    fn cfi_query_and_ids() {
        let (mut f, _dir) = flash_over(&[0u8; 8192], false);
        f.write(0, 0x55, &[0x98]);
        assert_eq!(rd(&mut f, 0x10, 1), b"Q".to_vec());
        assert_eq!(rd(&mut f, 0x11, 1), b"R".to_vec());
        assert_eq!(rd(&mut f, 0x12, 1), b"Y".to_vec());
        assert_eq!(rd(&mut f, 0x27, 1), vec![13]); // 8 KiB
        assert_eq!(rd(&mut f, 0x2d, 1), vec![1]); // 2 blocks
        assert_eq!(rd(&mut f, 0x2f, 1), vec![0x10]); // 4 KiB blocks
        f.write(0, 0, &[0xff]);
        f.write(0, 0, &[0x90]);
        assert_eq!(rd(&mut f, 0, 2), vec![0, 0]);
        f.reset();
        assert_eq!(rd(&mut f, 0, 2), vec![0, 0]);
        assert!(f.romd());
    }
}
