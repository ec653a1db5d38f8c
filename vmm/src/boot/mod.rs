//! Direct kernel boot: load a bzImage (Linux boot protocol, 64-bit entry) or an ELF (PVH
//! entry if it has the note, else Linux's 64-bit ELF entry), the initrd and the command line,
//! and describe the machine's real memory map to the guest.

pub mod gdt;
pub mod layout;
mod linux;
mod pvh;

use crate::memory::GuestMemory;
use linux_loader::loader::{bzimage::BzImage, elf::Elf, elf::PvhBootCapability, KernelLoader};
use machine::{MemoryMap, RegionKind};
use std::io::{Read, Seek, SeekFrom};
use vm_memory::{Bytes, GuestAddress, ReadVolatile};

pub use layout::*;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("could not open kernel file '{path}': {source}")]
    OpenKernel {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not read kernel file '{path}': {source}")]
    ReadKernel {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid kernel header in '{0}': neither a bzImage nor an ELF executable")]
    InvalidKernel(String),
    #[error("cannot load kernel '{0}': unreadable program headers or a segment outside guest RAM")]
    ElfSegments(String),
    #[error("cannot load kernel '{path}': {source}")]
    LoadKernel {
        path: String,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("kernel '{0}' does not support the 64-bit boot protocol (needs boot protocol 2.12 and XLF_KERNEL_64)")]
    No64BitEntry(String),
    /// QEMU's `could not load kernel` (a directory, a FIFO, a device: nothing with a size).
    #[error("could not load kernel '{path}': {reason}")]
    KernelNotFile { path: String, reason: String },
    #[error("could not open initrd '{path}': {source}")]
    OpenInitrd {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// QEMU's `error reading initrd`.
    #[error("error reading initrd {path}: {reason}")]
    ReadInitrd { path: String, reason: String },
    /// QEMU's `initrd is too large`; the limit is what fits in guest RAM above the kernel.
    #[error("initrd is too large, cannot support (max: {limit}, need {size}): '{path}' does not fit in guest RAM above the kernel")]
    InitrdTooLarge { path: String, size: u64, limit: u64 },
    #[error("kernel command line is {len} bytes, the limit is {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("cannot write {what} to guest memory at {addr:#x}")]
    GuestWrite { what: &'static str, addr: u64 },
    #[error("guest RAM ({0:#x} bytes below 4 GiB) is too small to boot a kernel")]
    RamTooSmall(u64),
}

pub type Result<T> = std::result::Result<T, BootError>;

/// Where and how the boot CPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// 64-bit long mode at `rip` with RSI pointing to the zero page (bzImage or ELF vmlinux).
    Linux64 { rip: u64 },
    /// 32-bit protected mode at `eip`, paging off, EBX pointing to `hvm_start_info`.
    Pvh { eip: u64 },
}

/// A kernel image: a file given with `-kernel` or the bundled tiny guest.
pub enum KernelImage<'a> {
    File(std::path::PathBuf),
    Bundled(&'a [u8]),
}

impl KernelImage<'_> {
    fn name(&self) -> String {
        match self {
            KernelImage::File(p) => p.display().to_string(),
            KernelImage::Bundled(_) => "(bundled tiny guest)".to_string(),
        }
    }
}

/// What to boot.
pub struct BootSpec<'a> {
    pub kernel: KernelImage<'a>,
    pub initrd: Option<std::path::PathBuf>,
    pub cmdline: String,
    /// Guest-physical address of the ACPI RSDP, passed on so the kernel need not scan.
    pub rsdp: Option<u64>,
}

/// A loaded kernel and what the boot parameter writers need to know about it.
struct Loaded {
    entry: Entry,
    kernel_end: u64,
    setup_header: Option<linux_loader::loader::bootparam::setup_header>,
}

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const HDRS_MAGIC: u32 = 0x5372_6448;
const XLF_KERNEL_64: u16 = 1 << 0;

/// Zero what each PT_LOAD segment has beyond its file data (its bss), as QEMU's ELF ROMs
/// are zero-filled at every reset: guest RAM keeps its contents over a reset, and
/// linux-loader writes only the file data.
fn zero_bss<F: Read + Seek>(mem: &GuestMemory, image: &mut F, name: &str) -> Result<()> {
    let bad = || BootError::ElfSegments(name.to_string());
    let mut read = |offset: u64, buf: &mut [u8]| {
        image
            .seek(SeekFrom::Start(offset))
            .and_then(|_| image.read_exact(buf))
            .map_err(|_| bad())
    };
    let mut ehdr = [0u8; 64];
    read(0, &mut ehdr)?;
    let phoff = u64::from_le_bytes(ehdr[0x20..0x28].try_into().map_err(|_| bad())?);
    let phentsize = u64::from(u16::from_le_bytes([ehdr[0x36], ehdr[0x37]]));
    let phnum = u64::from(u16::from_le_bytes([ehdr[0x38], ehdr[0x39]]));
    if phentsize < 0x38 {
        return Err(bad());
    }
    const PT_LOAD: u32 = 1;
    for i in 0..phnum {
        let mut ph = [0u8; 0x38];
        read(phoff.checked_add(i * phentsize).ok_or_else(bad)?, &mut ph)?;
        let word = |at: usize| u64::from_le_bytes(ph[at..at + 8].try_into().unwrap_or([0; 8]));
        let (paddr, filesz, memsz) = (word(0x18), word(0x20), word(0x28));
        if u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) != PT_LOAD || memsz <= filesz {
            continue;
        }
        let start = paddr.checked_add(filesz).ok_or_else(bad)?;
        let len = memsz - filesz;
        start.checked_add(len).ok_or_else(bad)?;
        const CHUNK: u64 = 1 << 16;
        let zeros = [0u8; CHUNK as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            // Outside guest RAM: the image does not fit this machine.
            mem.write_slice(&zeros[..n as usize], GuestAddress(start + done))
                .map_err(|_| bad())?;
            done += n;
        }
    }
    Ok(())
}

fn load_image<F>(mem: &GuestMemory, image: &mut F, name: &str) -> Result<Loaded>
where
    F: Read + ReadVolatile + Seek,
{
    let mut magic = [0u8; 4];
    let read_err = |source| BootError::ReadKernel {
        path: name.to_string(),
        source,
    };
    image.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let is_elf = image.read_exact(&mut magic).is_ok() && magic == ELF_MAGIC;
    let mut hdrs = [0u8; 4];
    let is_bzimage = image.seek(SeekFrom::Start(0x202)).is_ok()
        && image.read_exact(&mut hdrs).is_ok()
        && u32::from_le_bytes(hdrs) == HDRS_MAGIC;
    image.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let load_err = |source| BootError::LoadKernel {
        path: name.to_string(),
        source,
    };
    let highmem = Some(GuestAddress(KERNEL_START));
    if is_elf {
        let result = Elf::load(mem, None, image, highmem).map_err(load_err)?;
        zero_bss(mem, image, name)?;
        let entry = match result.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => Entry::Pvh { eip: addr.0 },
            _ => Entry::Linux64 {
                rip: result.kernel_load.0,
            },
        };
        Ok(Loaded {
            entry,
            kernel_end: result.kernel_end,
            setup_header: None,
        })
    } else if is_bzimage {
        let result = BzImage::load(mem, None, image, highmem).map_err(load_err)?;
        let header = result
            .setup_header
            .ok_or_else(|| BootError::InvalidKernel(name.to_string()))?;
        let version = header.version;
        let xloadflags = header.xloadflags;
        if version < 0x020c || xloadflags & XLF_KERNEL_64 == 0 {
            return Err(BootError::No64BitEntry(name.to_string()));
        }
        // The 64-bit entry point sits 0x200 bytes into the protected-mode kernel.
        Ok(Loaded {
            entry: Entry::Linux64 {
                rip: result.kernel_load.0 + 0x200,
            },
            kernel_end: result.kernel_end,
            setup_header: Some(header),
        })
    } else {
        Err(BootError::InvalidKernel(name.to_string()))
    }
}

enum OpenError {
    Io(std::io::Error),
    NotFile(String),
}

/// Open a kernel or initrd: never blocking in `open` (a FIFO would, and the build may run on
/// behalf of a QMP command), and only a regular file, whose size bounds what is read.
fn open_regular(path: &std::path::Path) -> std::result::Result<std::fs::File, OpenError> {
    let file =
        crate::backends::open_nonblocking(path, std::fs::OpenOptions::new().read(true), 0, false)
            .map_err(OpenError::Io)?;
    let meta = file.metadata().map_err(OpenError::Io)?;
    if meta.is_dir() {
        return Err(OpenError::NotFile("Is a directory".into()));
    }
    if !meta.is_file() {
        return Err(OpenError::NotFile("not a regular file".into()));
    }
    Ok(file)
}

/// e820 entries (address, size, type) from the plan: RAM is type 1, reserved areas type 2.
pub fn e820_entries(map: &MemoryMap) -> Vec<(u64, u64, u32)> {
    map.regions
        .iter()
        .filter_map(|r| match r.kind {
            RegionKind::Ram => Some((r.range.base, r.range.size, 1)),
            RegionKind::Reserved => Some((r.range.base, r.range.size, 2)),
            _ => None,
        })
        .collect()
}

/// Place `size` bytes of initrd as high as allowed below `limit`, page aligned, above the
/// kernel.
fn initrd_address(size: u64, kernel_end: u64, limit: u64) -> Option<u64> {
    let top = limit.checked_sub(size)? & !0xfff;
    (top >= kernel_end.next_multiple_of(0x1000)).then_some(top)
}

fn write_cmdline(mem: &GuestMemory, cmdline: &str, max: usize) -> Result<()> {
    if cmdline.len() + 1 > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: max - 1,
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE))
        .map_err(|_| BootError::GuestWrite {
            what: "command line",
            addr: CMDLINE,
        })
}

/// Load kernel, initrd and command line into `mem` and write the boot parameters for `map`.
pub fn load(mem: &GuestMemory, map: &MemoryMap, spec: &BootSpec) -> Result<Entry> {
    if map.ram_below_4g < 8 << 20 {
        return Err(BootError::RamTooSmall(map.ram_below_4g));
    }
    let name = spec.kernel.name();
    let loaded = match &spec.kernel {
        KernelImage::File(path) => {
            let mut file = open_regular(path).map_err(|e| match e {
                OpenError::Io(source) => BootError::OpenKernel {
                    path: name.clone(),
                    source,
                },
                OpenError::NotFile(reason) => BootError::KernelNotFile {
                    path: name.clone(),
                    reason,
                },
            })?;
            load_image(mem, &mut file, &name)?
        }
        KernelImage::Bundled(bytes) => load_image(mem, &mut std::io::Cursor::new(*bytes), &name)?,
    };

    let initrd = match &spec.initrd {
        None => None,
        Some(path) => {
            let path_name = path.display().to_string();
            let mut file = open_regular(path).map_err(|e| match e {
                OpenError::Io(source) => BootError::OpenInitrd {
                    path: path_name.clone(),
                    source,
                },
                OpenError::NotFile(reason) => BootError::ReadInitrd {
                    path: path_name.clone(),
                    reason,
                },
            })?;
            let read_err = |e: std::io::Error| BootError::ReadInitrd {
                path: path_name.clone(),
                reason: e.to_string(),
            };
            let size = file.metadata().map_err(read_err)?.len();
            let limit = match &loaded.setup_header {
                Some(h) if h.version >= 0x0203 => u64::from(h.initrd_addr_max) + 1,
                Some(_) => 0x3800_0000,
                None => map.ram_below_4g,
            }
            .min(map.ram_below_4g);
            // Checked before reading: the read is bounded by what fits in guest RAM.
            let addr = initrd_address(size, loaded.kernel_end, limit).ok_or(
                BootError::InitrdTooLarge {
                    path: path_name.clone(),
                    size,
                    limit: limit.saturating_sub(loaded.kernel_end.next_multiple_of(0x1000)),
                },
            )?;
            let mut data = Vec::with_capacity(size as usize);
            (&mut file)
                .take(size)
                .read_to_end(&mut data)
                .map_err(read_err)?;
            if data.len() as u64 != size {
                return Err(BootError::ReadInitrd {
                    path: path_name,
                    reason: "the file changed size while being read".into(),
                });
            }
            mem.write_slice(&data, GuestAddress(addr))
                .map_err(|_| BootError::GuestWrite {
                    what: "initrd",
                    addr,
                })?;
            Some((addr, data.len() as u64))
        }
    };

    let cmdline_max = match &loaded.setup_header {
        Some(h) if h.cmdline_size > 0 => (h.cmdline_size as usize + 1).min(CMDLINE_MAX),
        _ => CMDLINE_MAX,
    };
    write_cmdline(mem, &spec.cmdline, cmdline_max)?;

    let e820 = e820_entries(map);
    match loaded.entry {
        Entry::Pvh { .. } => pvh::write_start_info(mem, &e820, initrd, spec.rsdp)?,
        Entry::Linux64 { .. } => linux::write_zero_page(
            mem,
            loaded.setup_header,
            &e820,
            initrd,
            spec.cmdline.len(),
            spec.rsdp,
        )?,
    }
    Ok(loaded.entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF64 header and one PT_LOAD program header (file data 0x10 bytes at paddr,
    /// `memsz` in memory).
    fn elf(paddr: u64, memsz: u64) -> Vec<u8> {
        let mut e = vec![0u8; 0x40 + 0x38];
        e[..4].copy_from_slice(&ELF_MAGIC);
        e[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let ph = &mut e[0x40..];
        ph[..4].copy_from_slice(&1u32.to_le_bytes());
        ph[0x18..0x20].copy_from_slice(&paddr.to_le_bytes());
        ph[0x20..0x28].copy_from_slice(&0x10u64.to_le_bytes());
        ph[0x28..0x30].copy_from_slice(&memsz.to_le_bytes());
        e
    }

    /// RAM survives a reset: the reloaded image's bss must be zero again.
    #[test]
    fn elf_bss_is_zeroed_on_every_load() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        mem.write_slice(&[0xffu8; 0x30000], GuestAddress(0x10_0000))
            .unwrap();
        let mut image = std::io::Cursor::new(elf(0x10_0000, 0x2_0010));
        zero_bss(&mem, &mut image, "k").unwrap();
        let mut got = [0u8; 0x30000];
        mem.read_slice(&mut got, GuestAddress(0x10_0000)).unwrap();
        assert!(
            got[..0x10].iter().all(|&b| b == 0xff),
            "file data untouched"
        );
        assert!(got[0x10..0x2_0010].iter().all(|&b| b == 0), "bss zeroed");
        assert!(
            got[0x2_0010..].iter().all(|&b| b == 0xff),
            "nothing past it"
        );
        // A segment past guest RAM is an error, not a write elsewhere.
        let mut image = std::io::Cursor::new(elf(0x3f_0000, 0x2_0000));
        assert!(matches!(
            zero_bss(&mem, &mut image, "k"),
            Err(BootError::ElfSegments(_))
        ));
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        assert_eq!(
            initrd_address(0x1800, 0x20_0000, 0x1000_0000),
            Some(0x0fff_e000)
        );
        assert_eq!(initrd_address(0x1000_0000, 0x20_0000, 0x1000_0000), None);
        assert_eq!(initrd_address(0x2000_0000, 0x20_0000, 0x1000_0000), None);
    }
}
