//! The PVH `hvm_start_info` structure handed over in EBX at entry.

use crate::phys::{self, le32, le64};

pub const MAGIC: u32 = 0x336e_c578;
/// Size of `hvm_start_info` up to and including `reserved` (version 1).
const SIZE: usize = 56;
/// Longest command line read; the rest is ignored.
const CMDLINE_MAX: usize = 4096;
/// Upper bound on module/memory-map entries printed.
const MAX_ENTRIES: u32 = 128;

/// Parsed copy of `struct hvm_start_info`.
pub struct StartInfo {
    pub addr: u64,
    pub magic: u32,
    pub version: u32,
    pub flags: u32,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
}

/// Why the start_info pointer could not be used.
pub enum Error {
    Unmapped,
    BadMagic(u32),
}

impl StartInfo {
    /// Reads and validates the structure at `addr`.
    pub fn read(addr: u64) -> Result<Self, Error> {
        let b = phys::bytes(addr, SIZE).ok_or(Error::Unmapped)?;
        let magic = le32(b, 0);
        if magic != MAGIC {
            return Err(Error::BadMagic(magic));
        }
        let version = le32(b, 4);
        // The memory map fields only exist from version 1 on.
        let (memmap_paddr, memmap_entries) = if version >= 1 {
            (le64(b, 40), le32(b, 48))
        } else {
            (0, 0)
        };
        Ok(Self {
            addr,
            magic,
            version,
            flags: le32(b, 8),
            nr_modules: le32(b, 12),
            modlist_paddr: le64(b, 16),
            cmdline_paddr: le64(b, 24),
            rsdp_paddr: le64(b, 32),
            memmap_paddr,
            memmap_entries,
        })
    }

    /// The NUL-terminated command line (without the NUL), at most 4 KiB;
    /// empty when absent.
    pub fn cmdline(&self) -> &'static [u8] {
        let addr = self.cmdline_paddr;
        let mut len = 0;
        while len < CMDLINE_MAX {
            match phys::bytes(addr.wrapping_add(len as u64), 1) {
                Some([0]) | None => break,
                Some(_) => len += 1,
            }
        }
        phys::bytes(addr, len).unwrap_or(&[])
    }

    /// The `start-info` test: dumps the structure, modules and memory map.
    pub fn report(&self) {
        println!(
            "start-info: addr=0x{:x} magic=0x{:x} version={} flags=0x{:x} nr_modules={} modlist=0x{:x} cmdline=0x{:x} rsdp=0x{:x} memmap=0x{:x} memmap_entries={}",
            self.addr,
            self.magic,
            self.version,
            self.flags,
            self.nr_modules,
            self.modlist_paddr,
            self.cmdline_paddr,
            self.rsdp_paddr,
            self.memmap_paddr,
            self.memmap_entries
        );
        // struct hvm_modlist_entry { u64 paddr, size, cmdline_paddr, reserved; }
        for i in 0..self.nr_modules.min(MAX_ENTRIES) {
            let Some(e) = phys::bytes(self.modlist_paddr.wrapping_add(u64::from(i) * 32), 32)
            else {
                println!(
                    "error: start-info modlist unmapped addr=0x{:x}",
                    self.modlist_paddr
                );
                break;
            };
            println!(
                "module: addr=0x{:x} size=0x{:x} cmdline=0x{:x}",
                le64(e, 0),
                le64(e, 8),
                le64(e, 16)
            );
        }
        // struct hvm_memmap_table_entry { u64 addr, size; u32 type, reserved; }
        for i in 0..self.memmap_entries.min(MAX_ENTRIES) {
            let Some(e) = phys::bytes(self.memmap_paddr.wrapping_add(u64::from(i) * 24), 24) else {
                println!(
                    "error: start-info memmap unmapped addr=0x{:x}",
                    self.memmap_paddr
                );
                break;
            };
            println!(
                "memmap: addr=0x{:x} size=0x{:x} type={}",
                le64(e, 0),
                le64(e, 8),
                le32(e, 16)
            );
        }
    }
}
