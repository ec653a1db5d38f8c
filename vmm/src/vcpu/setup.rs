//! Boot-time vCPU state: segments and control registers for the chosen entry, boot MSRs,
//! FPU, and the local APIC's LINT0/LINT1 wiring.

use crate::boot::gdt::{segment_from_entry, GDT_LONG_MODE, GDT_PVH};
use crate::boot::{
    Entry, BOOT_STACK, GDT_ADDR, IDT_ADDR, PD, PDPT, PML4, PVH_START_INFO, ZERO_PAGE,
};
use crate::memory::GuestMemory;
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot write boot {what} to guest memory")]
    GuestWrite { what: &'static str },
    #[error("KVM rejected the vCPU's {what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM accepted only {set} of {wanted} boot MSRs")]
    Msrs { set: usize, wanted: usize },
}

type Result<T> = std::result::Result<T, SetupError>;

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SetupError {
    move |source| SetupError::Kvm { what, source }
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const PDE_PRESENT_RW: u64 = 0x3;
const PDE_PS: u64 = 0x80;

/// Write the boot GDT and IDT for `entry` and the identity page tables a 64-bit entry needs.
pub fn write_boot_tables(mem: &GuestMemory, entry: Entry) -> Result<()> {
    let gdt: &[u64] = match entry {
        Entry::Linux64 { .. } => &GDT_LONG_MODE,
        Entry::Pvh { .. } => &GDT_PVH,
    };
    let write = |what, addr: u64, bytes: &[u8]| {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|_| SetupError::GuestWrite { what })
    };
    let gdt_bytes: Vec<u8> = gdt.iter().flat_map(|e| e.to_le_bytes()).collect();
    write("GDT", GDT_ADDR, &gdt_bytes)?;
    write("IDT", IDT_ADDR, &0u64.to_le_bytes())?;
    if let Entry::Linux64 { .. } = entry {
        write("PML4", PML4, &(PDPT | PDE_PRESENT_RW).to_le_bytes())?;
        write("PDPT", PDPT, &(PD | PDE_PRESENT_RW).to_le_bytes())?;
        // 512 x 2 MiB identity-mapped pages: the first GiB, where kernel and zero page are.
        let pd: Vec<u8> = (0..512u64)
            .flat_map(|i| ((i << 21) | PDE_PRESENT_RW | PDE_PS).to_le_bytes())
            .collect();
        write("page directory", PD, &pd)?;
    }
    Ok(())
}

/// Program the boot CPU's registers for `entry`. Application processors are left in KVM's
/// reset state, waiting for INIT/SIPI, as on real hardware.
pub fn setup_boot_cpu(vcpu: &VcpuFd, entry: Entry) -> Result<()> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("special registers"))?;
    let gdt: &[u64] = match entry {
        Entry::Linux64 { .. } => &GDT_LONG_MODE,
        Entry::Pvh { .. } => &GDT_PVH,
    };
    let code = segment_from_entry(gdt[1], 1);
    let data = segment_from_entry(gdt[2], 2);
    let tss = segment_from_entry(gdt[3], 3);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(gdt) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 0;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match entry {
        Entry::Linux64 { rip } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.cr3 = PML4;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
            regs.rip = rip;
            regs.rsp = BOOT_STACK;
            regs.rbp = BOOT_STACK;
            regs.rsi = ZERO_PAGE;
        }
        Entry::Pvh { eip } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = eip;
            regs.rbx = PVH_START_INFO;
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm("special registers"))?;
    vcpu.set_regs(&regs).map_err(kvm("registers"))?;
    Ok(())
}

/// The architectural reset state QEMU gives a vCPU (x86_cpu_reset_hold), for firmware:
/// real mode at the reset vector, CS selector 0xf000 with base 0xffff0000 and IP 0xfff0,
/// data segments at 0 with 64 KiB limits, EDX the CPU signature. Set explicitly rather
/// than trusting the VM's creation state.
pub fn setup_reset_vector(vcpu: &VcpuFd, signature: u32) -> Result<()> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("special registers"))?;
    let seg = |selector: u16, base: u64, type_: u8| kvm_bindings::kvm_segment {
        base,
        limit: 0xffff,
        selector,
        type_,
        present: 1,
        s: 1,
        ..Default::default()
    };
    // Code: execute/read, accessed; data: read/write, accessed.
    sregs.cs = seg(0xf000, 0xffff_0000, 0xb);
    for d in [
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
        &mut sregs.ss,
    ] {
        *d = seg(0, 0, 0x3);
    }
    sregs.ldt = kvm_bindings::kvm_segment {
        limit: 0xffff,
        type_: 2,
        present: 1,
        ..Default::default()
    };
    sregs.tr = kvm_bindings::kvm_segment {
        limit: 0xffff,
        type_: 0xb,
        present: 1,
        ..Default::default()
    };
    sregs.gdt.base = 0;
    sregs.gdt.limit = 0xffff;
    sregs.idt.base = 0;
    sregs.idt.limit = 0xffff;
    sregs.cr0 = 0x6000_0010;
    sregs.cr2 = 0;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: 0xfff0,
        rdx: u64::from(signature),
        ..Default::default()
    };
    vcpu.set_sregs(&sregs).map_err(kvm("special registers"))?;
    vcpu.set_regs(&regs).map_err(kvm("registers"))?;
    Ok(())
}

/// FPU, boot MSRs and LAPIC wiring, for every vCPU.
pub fn setup_common(vcpu: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("FPU state"))?;

    // The MSRs Linux expects zeroed or set at entry (what firmware leaves behind).
    let entries = [
        (0x174, 0),                     // IA32_SYSENTER_CS
        (0x175, 0),                     // IA32_SYSENTER_ESP
        (0x176, 0),                     // IA32_SYSENTER_EIP
        (0xc000_0081, 0),               // STAR
        (0xc000_0082, 0),               // LSTAR
        (0xc000_0083, 0),               // CSTAR
        (0xc000_0102, 0),               // KERNEL_GS_BASE
        (0xc000_0084, 0),               // SYSCALL_MASK
        (0x10, 0),                      // TSC
        (0x1a0, 1),                     // IA32_MISC_ENABLE: fast strings
        (0x277, 0x0007_0406_0007_0406), // IA32_PAT power-on value
    ];
    let msr_entries: Vec<kvm_msr_entry> = entries
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&msr_entries).map_err(|_| SetupError::Msrs {
        set: 0,
        wanted: entries.len(),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("MSRs"))?;
    if set != entries.len() {
        return Err(SetupError::Msrs {
            set,
            wanted: entries.len(),
        });
    }

    // LINT0 = ExtINT (the 8259 behind it), LINT1 = NMI, as the MP spec's virtual-wire mode.
    let mut lapic = vcpu.get_lapic().map_err(kvm("local APIC"))?;
    set_lvt(&mut lapic.regs, 0x350, 0x7);
    set_lvt(&mut lapic.regs, 0x360, 0x4);
    vcpu.set_lapic(&lapic).map_err(kvm("local APIC"))?;
    Ok(())
}

/// Set the delivery mode (bits 10:8) of the LVT register at `offset`.
fn set_lvt(regs: &mut [std::os::raw::c_char], offset: usize, mode: u32) {
    let mut bytes = [0u8; 4];
    for (b, r) in bytes.iter_mut().zip(&regs[offset..offset + 4]) {
        *b = *r as u8;
    }
    let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (r, b) in regs[offset..offset + 4].iter_mut().zip(value.to_le_bytes()) {
        *r = b as std::os::raw::c_char;
    }
}
