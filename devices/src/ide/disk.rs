//! The image behind an IDE drive: positioned reads and writes of whole 512-byte sectors,
//! checked against the image size, through a page-aligned bounce buffer (O_DIRECT images
//! need aligned buffers, offsets and lengths; sector multiples keep the latter two so).

use crate::blkdebug::{BlkDebug, Event, IoType, Outcome};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

pub const SECTOR: u64 = 512;
const ALIGN: usize = 4096;

/// A zeroed, page-aligned byte buffer.
pub struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is exclusively owned heap memory, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        // Bounce buffers are small (a chunk of sectors); the cap keeps the layout valid.
        let len = len.clamp(1, 1 << 30);
        let layout = match Layout::from_size_align(len, ALIGN) {
            Ok(l) => l,
            Err(_) => std::alloc::handle_alloc_error(Layout::new::<u8>()),
        };
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Self { ptr, len }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialised (zeroed at allocation) bytes we own.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let Ok(layout) = Layout::from_size_align(self.len, ALIGN) {
            // SAFETY: allocated in `new` with this very layout.
            unsafe { dealloc(self.ptr, layout) };
        }
    }
}

/// Why a disk request failed; the drive reports it to the guest as an ATA error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiskError {
    #[error("sectors {0}+{1} are outside the image")]
    OutOfRange(u64, u64),
    #[error("the image is read-only")]
    ReadOnly,
    #[error("I/O error: errno {0}")]
    Io(i32),
}

/// What a failed request does (`rerror`/`werror`; QEMU's BlockdevOnError).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAction {
    Report,
    Ignore,
    /// Stop on ENOSPC, report anything else.
    Enospc,
    Stop,
}

impl ErrorAction {
    /// A `rerror`/`werror` value; `auto` is the drive default (`read` or write).
    pub fn parse(v: &str, read: bool) -> Option<Self> {
        Some(match v {
            "report" => Self::Report,
            "ignore" => Self::Ignore,
            "enospc" => Self::Enospc,
            "stop" => Self::Stop,
            "auto" if read => Self::Report,
            "auto" => Self::Enospc,
            _ => return None,
        })
    }

    /// The action for an error `errno` (blk_get_error_action): Stop turns into `Stop`,
    /// Enospc into Stop or Report.
    pub fn for_errno(self, errno: i32) -> Self {
        match self {
            Self::Enospc if errno == libc::ENOSPC => Self::Stop,
            Self::Enospc => Self::Report,
            other => other,
        }
    }
}

/// An opened image.
pub struct Disk {
    file: File,
    /// Bytes the guest sees (a null drive's size, else the file's at open).
    size: u64,
    read_only: bool,
    /// The guest sees a volatile write cache (cache=writeback/none/unsafe) that FLUSH CACHE
    /// commits; without it every write is synced.
    pub write_cache: bool,
    /// A null-co drive: reads give zeros, writes are dropped.
    null: bool,
    bounce: AlignedBuf,
    /// A blkdebug node between the drive and the image.
    debug: Option<Arc<BlkDebug>>,
    /// Written since the last guest flush (QEMU flushes, and raises the flush events, only
    /// then).
    dirty: bool,
    /// The drive's name (for error reports) and its read and write error actions.
    pub name: String,
    pub rerror: ErrorAction,
    pub werror: ErrorAction,
}

/// Where a guest FLUSH CACHE is: the flush_to_os and flush_to_disk events, then the sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushStage {
    ToOs,
    ToDisk,
    Sync,
}

/// How far a guest flush got.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    Done(Result<(), DiskError>),
    /// Stopped at a blkdebug breakpoint; `resume` continues at `next`.
    Suspended {
        debug: Arc<BlkDebug>,
        tag: String,
        next: FlushStage,
    },
}

impl PartialEq for BlkDebug {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for BlkDebug {}

/// Sectors moved through the bounce buffer at a time.
pub const CHUNK_SECTORS: u64 = 256;

impl Disk {
    /// `size`: the guest-visible size for a null drive (None: the file's own size).
    pub fn new(
        file: File,
        read_only: bool,
        write_cache: bool,
        size: Option<u64>,
    ) -> std::io::Result<Self> {
        let null = size.is_some();
        let size = match size {
            Some(s) => s,
            None => file_size(&file)?,
        };
        Ok(Self {
            file,
            size,
            read_only,
            write_cache,
            null,
            bounce: AlignedBuf::new((CHUNK_SECTORS * SECTOR) as usize),
            debug: None,
            dirty: false,
            name: String::new(),
            rerror: ErrorAction::Report,
            werror: ErrorAction::Enospc,
        })
    }

    /// The drive's name and error actions.
    pub fn with_policy(mut self, name: &str, rerror: ErrorAction, werror: ErrorAction) -> Self {
        self.name = name.to_string();
        self.rerror = rerror;
        self.werror = werror;
        self
    }

    /// Requests go through blkdebug node `debug`.
    pub fn with_debug(mut self, debug: Option<Arc<BlkDebug>>) -> Self {
        self.debug = debug;
        self
    }

    /// blkdebug's verdict on a request (its delay taken).
    fn debug_check(&self, io: IoType, sector: u64, count: u64) -> Result<(), DiskError> {
        match &self.debug {
            Some(d) => d
                .check(io, sector * SECTOR, count * SECTOR)
                .map_err(DiskError::Io),
            None => Ok(()),
        }
    }

    /// A guest FLUSH CACHE from `stage` on: nothing to do unless written since the last
    /// one; blkdebug breakpoints may suspend it at flush_to_os or flush_to_disk.
    pub fn guest_flush(&mut self, stage: FlushStage) -> Flushed {
        if !self.dirty {
            return Flushed::Done(Ok(()));
        }
        let mut stage = stage;
        loop {
            let (event, next) = match stage {
                FlushStage::ToOs => (Event::FlushToOs, FlushStage::ToDisk),
                FlushStage::ToDisk => (Event::FlushToDisk, FlushStage::Sync),
                FlushStage::Sync => break,
            };
            if let Some(d) = &self.debug {
                if let Outcome::Suspend(tag) = d.event(event) {
                    return Flushed::Suspended {
                        debug: d.clone(),
                        tag,
                        next,
                    };
                }
            }
            stage = next;
        }
        let r = self
            .debug_check(IoType::Flush, 0, 0)
            .and_then(|_| self.flush());
        if r.is_ok() {
            self.dirty = false;
        }
        Flushed::Done(r)
    }

    /// Whole 512-byte sectors of the image (a partial last sector is not addressable).
    pub fn sectors(&self) -> u64 {
        self.size / SECTOR
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// QEMU's ide_sect_range_ok.
    pub fn range_ok(&self, sector: u64, count: u64) -> bool {
        let total = self.sectors();
        sector <= total && count <= total - sector
    }

    /// Read `buf.len() / 512` sectors at `sector` into `buf`.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let count = buf.len() as u64 / SECTOR;
        if !self.range_ok(sector, count) {
            return Err(DiskError::OutOfRange(sector, count));
        }
        if let Some(d) = &self.debug {
            let _ = d.event(Event::ReadAio);
        }
        self.debug_check(IoType::Read, sector, count)?;
        if self.null {
            buf.fill(0);
            return Ok(());
        }
        let mut done = 0usize;
        while done < buf.len() {
            let n = (buf.len() - done).min(self.bounce.len);
            let offset = sector * SECTOR + done as u64;
            let chunk = &mut self.bounce.as_mut_slice()[..n];
            read_full(&self.file, chunk, offset)?;
            buf[done..done + n].copy_from_slice(chunk);
            done += n;
        }
        Ok(())
    }

    /// Write `buf` (whole sectors) at `sector`.
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), DiskError> {
        let count = buf.len() as u64 / SECTOR;
        if !self.range_ok(sector, count) {
            return Err(DiskError::OutOfRange(sector, count));
        }
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        if let Some(d) = &self.debug {
            let _ = d.event(Event::WriteAio);
        }
        self.debug_check(IoType::Write, sector, count)?;
        self.dirty = true;
        if self.null {
            return Ok(());
        }
        let mut done = 0usize;
        while done < buf.len() {
            let n = (buf.len() - done).min(self.bounce.len);
            let offset = sector * SECTOR + done as u64;
            let chunk = &mut self.bounce.as_mut_slice()[..n];
            chunk.copy_from_slice(&buf[done..done + n]);
            self.file
                .write_all_at(chunk, offset)
                .map_err(|e| DiskError::Io(e.raw_os_error().unwrap_or(libc::EIO)))?;
            done += n;
        }
        if !self.write_cache {
            self.flush()?;
        }
        Ok(())
    }

    /// Commit written data to stable storage.
    pub fn flush(&mut self) -> Result<(), DiskError> {
        if self.null || self.read_only {
            return Ok(());
        }
        // SAFETY: fdatasync on a descriptor we own; no memory is passed.
        if unsafe { libc::fdatasync(self.file.as_raw_fd()) } == 0 {
            Ok(())
        } else {
            Err(DiskError::Io(
                std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO),
            ))
        }
    }

    /// Discard (TRIM) sectors: a hint, so a file system without hole punching keeps the data.
    pub fn discard(&mut self, sector: u64, count: u64) -> Result<(), DiskError> {
        if !self.range_ok(sector, count) {
            return Err(DiskError::OutOfRange(sector, count));
        }
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        self.debug_check(IoType::Discard, sector, count)?;
        if self.null || count == 0 {
            return Ok(());
        }
        let (Ok(o), Ok(l)) = (
            i64::try_from(sector * SECTOR),
            i64::try_from(count * SECTOR),
        ) else {
            return Err(DiskError::OutOfRange(sector, count));
        };
        // SAFETY: fallocate on a descriptor we own with plain integer arguments.
        let _ = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                o,
                l,
            )
        };
        Ok(())
    }
}

fn read_full(file: &File, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            // Past the end of a file that shrank: zeros, as a hole would read.
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DiskError::Io(e.raw_os_error().unwrap_or(libc::EIO))),
        }
    }
    Ok(())
}

/// The size of a regular file or a block device.
fn file_size(file: &File) -> std::io::Result<u64> {
    let meta = file.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    // A block device: seek to its end.
    use std::io::{Seek, SeekFrom};
    let mut f = file.try_clone()?;
    let end = f.seek(SeekFrom::End(0))?;
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_round_trip() {
        let path = std::env::temp_dir().join(format!("machina-ide-disk-{}", std::process::id()));
        std::fs::write(&path, vec![0u8; 4 * 512 + 100]).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut d = Disk::new(file, false, true, None).unwrap();
        assert_eq!(d.sectors(), 4);
        assert!(d.range_ok(3, 1) && !d.range_ok(3, 2) && !d.range_ok(u64::MAX, 1));
        d.write(1, &[0x5a; 512]).unwrap();
        let mut buf = [0u8; 1024];
        d.read(0, &mut buf).unwrap();
        assert!(buf[..512].iter().all(|&b| b == 0) && buf[512..].iter().all(|&b| b == 0x5a));
        assert_eq!(d.read(4, &mut [0u8; 512]), Err(DiskError::OutOfRange(4, 1)));
        assert_eq!(
            d.write(u64::MAX / 512, &[0u8; 512]),
            Err(DiskError::OutOfRange(u64::MAX / 512, 1))
        );
        std::fs::remove_file(&path).unwrap();
    }
}
