//! Where direct boot puts things in low guest memory (below the kernel at 1 MiB).

/// GDT used for the boot CPU's initial segments.
pub const GDT_ADDR: u64 = 0x500;
/// Empty IDT (limit 0): no interrupts before the guest loads its own.
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info`, then its memory map and module list.
pub const PVH_START_INFO: u64 = 0x6000;
pub const PVH_MEMMAP: u64 = 0x6040;
pub const PVH_MODLIST: u64 = 0x6800;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial stack of a 64-bit Linux entry.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Identity page tables of a 64-bit Linux entry: PML4, PDPT, PD (first 1 GiB, 2 MiB pages).
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xa000;
pub const PD: u64 = 0xb000;
/// Kernel command line and its maximum size (Linux's COMMAND_LINE_SIZE on x86 is 2048;
/// newer kernels accept more, bounded by `cmdline_size` in the setup header).
pub const CMDLINE: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 0x10000;
/// ACPI tables live in the BIOS area so that an RSDP scan of 0xe0000-0xfffff finds them.
pub const ACPI_START: u64 = 0xe0000;
pub const ACPI_END: u64 = 0x100000;
/// Where kernels are loaded (Linux's protected-mode code, the tiny guest's ELF).
pub const KERNEL_START: u64 = 0x100000;
