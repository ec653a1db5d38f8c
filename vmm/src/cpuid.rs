//! Guest CPUID: KVM's supported set (never the host's) with the topology leaves filled in so
//! each vCPU knows its APIC id and the package's size.

use kvm_bindings::CpuId;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Bits needed to number `count` cores (x2APIC id shift of the core level).
fn shift_for(count: u32) -> u32 {
    32 - count.saturating_sub(1).leading_zeros()
}

/// Adjust `cpuid` for vCPU `index` of `count`: one socket, `count` cores, one thread each.
pub fn filter(cpuid: &mut CpuId, index: u32, count: u32) {
    for entry in cpuid.as_mut_slice().iter_mut() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx = (entry.ebx & 0x0000_ffff) | (index << 24) | ((count & 0xff) << 16);
                entry.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing - 1.
                let cache_level = (entry.eax >> 5) & 0x7;
                let sharing = if cache_level >= 3 { count - 1 } else { 0 };
                entry.eax = (entry.eax & 0x3fff)
                    | ((count.saturating_sub(1).min(63)) << 26)
                    | ((sharing.min(0xfff)) << 14);
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                entry.edx = index;
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = LEVEL_TYPE_SMT << 8;
                    }
                    1 => {
                        entry.eax = shift_for(count);
                        entry.ebx = count;
                        entry.ecx = (LEVEL_TYPE_CORE << 8) | 1;
                    }
                    n => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = n;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn topology_leaves_carry_apic_id_and_count() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0x0000_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 0,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
        ];
        let mut cpuid = CpuId::from_entries(&entries).unwrap();
        filter(&mut cpuid, 2, 3);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx >> 24, 2);
        assert_eq!((e[0].ebx >> 16) & 0xff, 3);
        assert_eq!(e[0].ebx & 0xffff, 0x0800);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!((e[2].eax, e[2].ebx, e[2].edx), (2, 3, 2));
        assert_eq!(shift_for(1), 0);
        assert_eq!(shift_for(4), 2);
        assert_eq!(shift_for(5), 3);
    }
}
