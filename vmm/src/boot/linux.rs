//! The Linux zero page (`boot_params`) for a 64-bit entry.

use super::{BootError, Result, CMDLINE, ZERO_PAGE};
use crate::memory::GuestMemory;
use linux_loader::loader::bootparam::{boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress};

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// "Undefined" boot loader id: we are not one of the registered loaders.
const KERNEL_LOADER_OTHER: u8 = 0xff;
const CAN_USE_HEAP: u8 = 0x80;
const E820_MAX_ENTRIES: usize = 128;

pub(super) fn write_zero_page(
    mem: &GuestMemory,
    header: Option<setup_header>,
    e820: &[(u64, u64, u32)],
    initrd: Option<(u64, u64)>,
    cmdline_len: usize,
    rsdp: Option<u64>,
) -> Result<()> {
    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    } else {
        // ELF vmlinux: no setup header in the image, so fill in what the kernel reads.
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = 0x0100_0000;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.loadflags |= CAN_USE_HEAP;
    params.hdr.heap_end_ptr = 0xfe00;
    params.hdr.cmd_line_ptr = CMDLINE as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    if let Some(rsdp) = rsdp {
        params.acpi_rsdp_addr = rsdp;
    }
    for (slot, &(addr, size, kind)) in params
        .e820_table
        .iter_mut()
        .zip(e820.iter().take(E820_MAX_ENTRIES))
    {
        slot.addr = addr;
        slot.size = size;
        slot.r#type = kind;
    }
    params.e820_entries = e820.len().min(E820_MAX_ENTRIES) as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE))
        .map_err(|_| BootError::GuestWrite {
            what: "zero page",
            addr: ZERO_PAGE,
        })
}
