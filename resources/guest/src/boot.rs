//! PVH entry stub: 32-bit protected mode -> 64-bit long mode -> CPL 3.
//!
//! On the CI hosts (PVM) every CPL-0 instruction is emulated slowly and the
//! emulator rejects several instruction forms, so the CPL-0 part is a short
//! run of plain integer instructions with no loops at all: the page tables
//! and the GDT are initialised data copied in by the loader. Everything else,
//! including zeroing .bss, happens at CPL 3 where the guest runs natively.
//!
//! State on exit to Rust (`guest_main`): CPL 3, RFLAGS = IOPL 3 | IF 0 (so
//! `in`/`out` work and nothing interrupts us), no IDT (any exception
//! escalates to a triple fault), SSE enabled, RSP = top of a 64 KiB stack,
//! RDI = physical address of `hvm_start_info` (from EBX at entry).

use core::arch::global_asm;

/// GDT selectors. The user selectors carry RPL 3.
const KERNEL_CS: u16 = 0x08;
const KERNEL_DS: u16 = 0x10;
const USER_CS: u16 = 0x18 | 3;
const USER_DS: u16 = 0x20 | 3;

/// CR4 = PAE | OSFXSR | OSXMMEXCPT (TSD clear: rdtsc works at CPL 3).
const CR4_BITS: u32 = (1 << 5) | (1 << 9) | (1 << 10);
/// CR0.PG | CR0.NE | CR0.MP (CR0.PE is already set by the PVH contract).
const CR0_SET: u32 = (1 << 31) | (1 << 5) | (1 << 1);
/// CR0.EM | CR0.TS: both would make SSE instructions fault.
const CR0_CLEAR: u32 = (1 << 2) | (1 << 3);
/// IA32_EFER and its LME bit.
const MSR_EFER: u32 = 0xc000_0080;
const EFER_LME: u32 = 1 << 8;
/// RFLAGS for CPL 3: IOPL = 3, reserved bit 1 set, IF clear.
const USER_RFLAGS: u32 = 0x3002;
/// Size of the identity map in GiB (see `phys::MAPPED_END`).
const MAPPED_GIB: u64 = crate::phys::MAPPED_END >> 30;
/// XEN_ELFNOTE_PHYS32_ENTRY.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

global_asm!(
    // The PVH note. The descriptor is 8 bytes (like Linux's _ASM_PTR) with
    // the high half zero, so loaders reading either 4 or 8 bytes agree.
    ".pushsection .note.Xen, \"a\", @note",
    ".balign 4",
    ".long 4",            // n_namesz ("Xen\0")
    ".long 8",            // n_descsz
    ".long {note_type}",  // n_type
    ".asciz \"Xen\"",
    ".balign 4",
    ".quad pvh_start32",
    ".balign 4",
    ".popsection",

    // GDT: null, kernel code64, kernel data, user code64, user data. The
    // accessed bits are preset so the CPU never needs to write the table.
    ".pushsection .data.boot, \"aw\"",
    ".balign 16",
    "boot_gdt:",
    ".quad 0",
    ".quad 0x00af9b000000ffff",
    ".quad 0x00cf93000000ffff",
    ".quad 0x00affb000000ffff",
    ".quad 0x00cff3000000ffff",
    "boot_gdt_end:",
    ".balign 8",
    ".word 0",
    "boot_gdt_ptr:",
    ".word boot_gdt_end - boot_gdt - 1",
    ".long boot_gdt",
    ".popsection",

    // Identity map of 0..64 GiB with 2 MiB pages: RAM, ACPI tables and
    // 32-bit MMIO below 4 GiB, and 64-bit PCI BARs that firmware places in
    // a 64-bit hole right above RAM. U/S is set at every level so CPL 3 can
    // reach all of it. 1 GiB pages are avoided on purpose (unsupported by
    // PVM). 64 page directories = 256 KiB of data, which the loader copies.
    ".pushsection .data.boot.pagetables, \"aw\"",
    ".balign 4096",
    "boot_pml4:",
    ".quad boot_pdpt + 0x7",   // P | RW | US
    ".fill 511, 8, 0",
    "boot_pdpt:",
    ".set boot_pdpte, boot_pd + 0x7",
    ".rept {gib}",
    ".quad boot_pdpte",
    ".set boot_pdpte, boot_pdpte + 0x1000",
    ".endr",
    ".fill 512 - {gib}, 8, 0",
    "boot_pd:",
    ".set boot_pde, 0x87",     // P | RW | US | PS
    ".rept {gib} * 512",
    ".quad boot_pde",
    ".set boot_pde, boot_pde + 0x200000",
    ".endr",
    ".popsection",

    // The stack is never loaded nor zeroed (see link.ld).
    ".pushsection .stack, \"aw\", @nobits",
    ".balign 16",
    "boot_stack:",
    ".skip 0x10000",
    "boot_stack_top:",
    ".popsection",

    ".pushsection .text.boot, \"ax\"",
    ".global pvh_start32",
    ".code32",
    "pvh_start32:",
    // First instruction: a write to the POST port, the exit by which the VMM sees the
    // guest's first instruction run (machina's MACHINA_TRACE start-up timing).
    "outb %al, $0x80",
    // EBX = hvm_start_info; ESI survives everything below.
    "movl %ebx, %esi",
    "lgdt boot_gdt_ptr",
    // CR4 is set outright, not or-ed: whatever the loader left there (TSD,
    // PGE, ...) must not leak into our environment.
    "movl ${cr4}, %eax",
    "movl %eax, %cr4",
    "movl $boot_pml4, %eax",
    "movl %eax, %cr3",
    "movl ${efer}, %ecx",
    "rdmsr",
    "orl ${lme}, %eax",
    "wrmsr",
    "movl %cr0, %eax",
    "andl ${cr0_clear}, %eax",
    "orl ${cr0_set}, %eax",
    "movl %eax, %cr0",
    // Paging on: compatibility mode until CS is a 64-bit segment.
    "ljmpl ${kcs}, $boot_start64",
    ".code64",
    "boot_start64:",
    "movl ${kds}, %eax",
    "movl %eax, %ds",
    "movl %eax, %es",
    "movl %eax, %ss",
    // iretq frame on the (not yet used) user stack; iretq pops it all.
    "movq $boot_stack_top, %rsp",
    "pushq ${uds}",
    "pushq $boot_stack_top",
    "pushq ${rflags}",
    "pushq ${ucs}",
    "pushq $boot_user_entry",
    "iretq",

    // CPL 3 from here on: native speed.
    "boot_user_entry:",
    "movl ${uds}, %eax",
    "movl %eax, %ds",
    "movl %eax, %es",
    "movl $__bss_start, %edi",
    "movl $__bss_end, %ecx",
    "subl %edi, %ecx",
    "xorl %eax, %eax",
    "cld",
    "rep stosb",
    "movl %esi, %edi",
    "call guest_main",
    // guest_main never returns; fault (-> triple fault) if it somehow does.
    "ud2",
    ".popsection",

    note_type = const XEN_ELFNOTE_PHYS32_ENTRY,
    cr4 = const CR4_BITS,
    efer = const MSR_EFER,
    lme = const EFER_LME,
    cr0_clear = const !CR0_CLEAR,
    cr0_set = const CR0_SET,
    kcs = const KERNEL_CS,
    kds = const KERNEL_DS,
    ucs = const USER_CS,
    uds = const USER_DS,
    rflags = const USER_RFLAGS,
    gib = const MAPPED_GIB,
    options(att_syntax)
);
