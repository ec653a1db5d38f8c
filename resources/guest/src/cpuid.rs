//! The `cpuid` test: what the boot CPU's CPUID says about its APIC id and the topology
//! (leaf 1 EBX, the levels of leaves 0xb and 0x1f), one line per level.

use core::arch::x86_64::{__cpuid_count, CpuidResult};

fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    // SAFETY: CPUID exists on every x86-64 CPU and has no side effects.
    #[allow(unused_unsafe)]
    unsafe {
        __cpuid_count(leaf, subleaf)
    }
}

pub fn report() {
    let max = cpuid(0, 0).eax;
    let l1 = cpuid(1, 0);
    println!(
        "cpuid: leaf1 apic_id={} logical={} htt={}",
        l1.ebx >> 24,
        (l1.ebx >> 16) & 0xff,
        (l1.edx >> 28) & 1
    );
    for leaf in [0xbu32, 0x1f] {
        if max < leaf {
            continue;
        }
        for level in 0..4 {
            let r = cpuid(leaf, level);
            let kind = (r.ecx >> 8) & 0xff;
            println!(
                "cpuid: leaf=0x{:x} level={} type={} shift={} count={} x2apic_id={}",
                leaf,
                level,
                kind,
                r.eax & 0x1f,
                r.ebx & 0xffff,
                r.edx
            );
            if kind == 0 {
                break;
            }
        }
    }
}
