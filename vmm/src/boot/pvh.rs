//! PVH `hvm_start_info`: the memory map, command line and modules for a PVH entry.

use super::{BootError, Result, CMDLINE, PVH_MEMMAP, PVH_MODLIST, PVH_START_INFO};
use crate::memory::GuestMemory;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress};

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// Room between the memory map and the module list.
const MEMMAP_MAX_ENTRIES: usize = (PVH_MODLIST - PVH_MEMMAP) as usize / 24;

pub(super) fn write_start_info(
    mem: &GuestMemory,
    e820: &[(u64, u64, u32)],
    initrd: Option<(u64, u64)>,
    rsdp: Option<u64>,
) -> Result<()> {
    let write_err = |what, addr| BootError::GuestWrite { what, addr };
    let entries = &e820[..e820.len().min(MEMMAP_MAX_ENTRIES)];
    for (i, &(addr, size, kind)) in entries.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr,
            size,
            type_: kind,
            reserved: 0,
        };
        let at = PVH_MEMMAP + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(entry, GuestAddress(at))
            .map_err(|_| write_err("PVH memory map", at))?;
    }
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE,
        rsdp_paddr: rsdp.unwrap_or(0),
        memmap_paddr: PVH_MEMMAP,
        memmap_entries: entries.len() as u32,
        ..Default::default()
    };
    if let Some((paddr, size)) = initrd {
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(PVH_MODLIST))
            .map_err(|_| write_err("PVH module list", PVH_MODLIST))?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST;
    }
    mem.write_obj(info, GuestAddress(PVH_START_INFO))
        .map_err(|_| write_err("PVH start info", PVH_START_INFO))
}
