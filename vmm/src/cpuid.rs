//! Guest CPUID: KVM's supported set (never the host's) with the topology leaves filled in
//! from the `-smp` topology so each vCPU knows its APIC id and the package's shape. Also the
//! CPU models machina offers (`host`, `max`: both this CPUID) and the feature names QMP's
//! CPU model expansion and `feature-words` report, read from the same entries.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};
use machine::CpuTopology;

const LEAF_VENDOR: u32 = 0x0;
const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;
const LEVEL_TYPE_DIE: u32 = 5;

/// The CPU models machina offers: `host` and `max` give the guest KVM's supported CPUID;
/// a named model (QEMU's builtin definition, `cpu_models.rs`) gives its own vendor,
/// signature, levels and features, each feature only where KVM supports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuModel {
    Host,
    Max,
    Named(&'static crate::cpu_models::ModelDef),
}

impl CpuModel {
    pub fn all() -> Vec<CpuModel> {
        let mut list = vec![CpuModel::Host, CpuModel::Max];
        list.extend(crate::cpu_models::models().iter().map(CpuModel::Named));
        list
    }

    pub fn from_name(name: &str) -> Option<CpuModel> {
        match name {
            "host" => Some(CpuModel::Host),
            "max" => Some(CpuModel::Max),
            _ => crate::cpu_models::models()
                .iter()
                .find(|m| m.name == name)
                .map(CpuModel::Named),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CpuModel::Host => "host",
            CpuModel::Max => "max",
            CpuModel::Named(m) => &m.name,
        }
    }

    /// The QOM type (`host-x86_64-cpu`).
    pub fn type_name(self) -> &'static str {
        match self {
            CpuModel::Host => "host-x86_64-cpu",
            CpuModel::Max => "max-x86_64-cpu",
            CpuModel::Named(m) => &m.type_name,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the guest CPUID needs {0} entries, more than KVM accepts")]
pub struct CpuidError(usize);

impl CpuidError {
    pub(crate) fn new(entries: usize) -> Self {
        CpuidError(entries)
    }
}

fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax: regs[0],
        ebx: regs[1],
        ecx: regs[2],
        edx: regs[3],
        ..Default::default()
    }
}

/// The CPUID of vCPU `index` in `topo`, from KVM's supported CPUID (QEMU's cpu_x86_cpuid
/// rules for leaves 1, 4, 0xb and 0x1f).
pub fn for_vcpu(
    supported: &CpuId,
    model: CpuModel,
    features: &FeatureRequest,
    index: u32,
    topo: &CpuTopology,
) -> Result<CpuId, CpuidError> {
    let modelled;
    let supported = match model {
        CpuModel::Named(def) => {
            modelled = crate::cpu_models::apply(def, supported, features, topo)?;
            &modelled
        }
        _ => supported,
    };
    let apic_id = topo.apic_id(index);
    let per_package = topo.per_package();
    let threads = topo.threads.max(1);
    let mut entries: Vec<kvm_cpuid_entry2> = supported
        .as_slice()
        .iter()
        .filter(|e| e.function != LEAF_TOPOLOGY && e.function != LEAF_TOPOLOGY_V2)
        .copied()
        .collect();
    let mut max_leaf = 0;
    for e in entries.iter_mut() {
        match e.function {
            LEAF_VENDOR => {
                // A die level needs leaf 0x1f, as QEMU raises the level for it.
                if topo.dies > 1 {
                    e.eax = e.eax.max(LEAF_TOPOLOGY_V2);
                }
                max_leaf = e.eax;
            }
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff)
                    | ((apic_id & 0xff) << 24)
                    | ((per_package.min(0xff)) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if per_package > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                    e.ebx &= !(0xff << 16);
                }
            }
            // Type 0 ends the list of caches: that entry stays all zero.
            LEAF_CACHE if e.eax & 0x1f != 0 => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: APIC ids sharing - 1.
                let cache_level = (e.eax >> 5) & 0x7;
                let sharing = if cache_level >= 3 {
                    (1u32 << topo.die_offset()) - 1
                } else {
                    threads - 1
                };
                let cores = topo.dies * topo.cores;
                e.eax = (e.eax & 0x3fff)
                    | ((cores.saturating_sub(1).min(63)) << 26)
                    | ((sharing.min(0xfff)) << 14);
            }
            _ => {}
        }
    }
    if max_leaf >= LEAF_TOPOLOGY {
        let core_level = topo.per_package() & 0xffff;
        entries.push(entry(
            LEAF_TOPOLOGY,
            0,
            [topo.core_offset(), threads, LEVEL_TYPE_SMT << 8, apic_id],
        ));
        entries.push(entry(
            LEAF_TOPOLOGY,
            1,
            [
                topo.pkg_offset(),
                core_level,
                (LEVEL_TYPE_CORE << 8) | 1,
                apic_id,
            ],
        ));
        entries.push(entry(LEAF_TOPOLOGY, 2, [0, 0, 2, apic_id]));
    }
    if topo.dies > 1 {
        let levels = [
            [topo.core_offset(), threads, LEVEL_TYPE_SMT << 8, apic_id],
            [
                topo.die_offset(),
                topo.cores * threads,
                (LEVEL_TYPE_CORE << 8) | 1,
                apic_id,
            ],
            [
                topo.pkg_offset(),
                per_package & 0xffff,
                (LEVEL_TYPE_DIE << 8) | 2,
                apic_id,
            ],
            [0, 0, 3, apic_id],
        ];
        for (i, regs) in levels.into_iter().enumerate() {
            entries.push(entry(LEAF_TOPOLOGY_V2, i as u32, regs));
        }
    }
    let n = entries.len();
    CpuId::from_entries(&entries).map_err(|_| CpuidError(n))
}

/// A CPUID register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

impl Reg {
    pub fn name(self) -> &'static str {
        match self {
            Reg::Eax => "EAX",
            Reg::Ebx => "EBX",
            Reg::Ecx => "ECX",
            Reg::Edx => "EDX",
        }
    }
}

/// A register of CPUID that holds feature flags, with the flags' names (QEMU's spelling;
/// `None` where a bit has no name).
pub struct FeatureWord {
    pub leaf: u32,
    /// Sub-leaf, for leaves that have them.
    pub subleaf: Option<u32>,
    pub reg: Reg,
    pub names: [Option<&'static str>; 32],
}

macro_rules! names {
    ($($bit:literal => $name:literal),* $(,)?) => {{
        let mut n: [Option<&'static str>; 32] = [None; 32];
        $(n[$bit] = Some($name);)*
        n
    }};
}

/// The feature words machina reports, with the Intel SDM / AMD APM bit assignments, in
/// QEMU's FeatureWord order (the order of its feature lists, e.g. unavailable-features).
pub fn feature_words() -> Vec<FeatureWord> {
    vec![
        FeatureWord {
            leaf: 1,
            subleaf: None,
            reg: Reg::Edx,
            names: names!(0 => "fpu", 1 => "vme", 2 => "de", 3 => "pse", 4 => "tsc", 5 => "msr",
                6 => "pae", 7 => "mce", 8 => "cx8", 9 => "apic", 11 => "sep", 12 => "mtrr",
                13 => "pge", 14 => "mca", 15 => "cmov", 16 => "pat", 17 => "pse36", 18 => "pn",
                19 => "clflush", 21 => "ds", 22 => "acpi", 23 => "mmx", 24 => "fxsr", 25 => "sse",
                26 => "sse2", 27 => "ss", 28 => "ht", 29 => "tm", 30 => "ia64", 31 => "pbe"),
        },
        FeatureWord {
            leaf: 1,
            subleaf: None,
            reg: Reg::Ecx,
            names: names!(0 => "pni", 1 => "pclmulqdq", 2 => "dtes64", 3 => "monitor",
                4 => "ds-cpl", 5 => "vmx", 6 => "smx", 7 => "est", 8 => "tm2", 9 => "ssse3",
                10 => "cid", 12 => "fma", 13 => "cx16", 14 => "xtpr", 15 => "pdcm", 17 => "pcid",
                18 => "dca", 19 => "sse4.1", 20 => "sse4.2", 21 => "x2apic", 22 => "movbe",
                23 => "popcnt", 24 => "tsc-deadline", 25 => "aes", 26 => "xsave",
                28 => "avx", 29 => "f16c", 30 => "rdrand", 31 => "hypervisor"),
        },
        FeatureWord {
            leaf: 7,
            subleaf: Some(0),
            reg: Reg::Ebx,
            names: names!(0 => "fsgsbase", 1 => "tsc-adjust", 2 => "sgx", 3 => "bmi1", 4 => "hle",
                5 => "avx2", 7 => "smep", 8 => "bmi2", 9 => "erms", 10 => "invpcid", 11 => "rtm",
                14 => "mpx", 16 => "avx512f", 17 => "avx512dq", 18 => "rdseed", 19 => "adx",
                20 => "smap", 21 => "avx512ifma", 23 => "clflushopt", 24 => "clwb",
                25 => "intel-pt", 26 => "avx512pf", 27 => "avx512er", 28 => "avx512cd",
                29 => "sha-ni", 30 => "avx512bw", 31 => "avx512vl"),
        },
        FeatureWord {
            leaf: 7,
            subleaf: Some(0),
            reg: Reg::Ecx,
            names: names!(1 => "avx512vbmi", 2 => "umip", 3 => "pku", 5 => "waitpkg",
                6 => "avx512vbmi2", 8 => "gfni", 9 => "vaes", 10 => "vpclmulqdq",
                11 => "avx512vnni", 12 => "avx512bitalg", 14 => "avx512-vpopcntdq",
                16 => "la57", 22 => "rdpid", 25 => "cldemote", 27 => "movdiri",
                28 => "movdir64b", 30 => "sgxlc", 31 => "pks"),
        },
        FeatureWord {
            leaf: 7,
            subleaf: Some(0),
            reg: Reg::Edx,
            names: names!(2 => "avx512-4vnniw", 3 => "avx512-4fmaps", 4 => "fsrm",
                8 => "avx512-vp2intersect", 10 => "md-clear", 14 => "serialize",
                16 => "tsx-ldtrk", 22 => "amx-bf16", 23 => "avx512-fp16", 24 => "amx-tile",
                25 => "amx-int8", 26 => "spec-ctrl", 27 => "stibp", 29 => "arch-capabilities",
                30 => "core-capability", 31 => "ssbd"),
        },
        FeatureWord {
            leaf: 7,
            subleaf: Some(1),
            reg: Reg::Eax,
            names: names!(4 => "avx-vnni", 5 => "avx512-bf16", 10 => "fzrm", 11 => "fsrs",
                12 => "fsrc"),
        },
        FeatureWord {
            leaf: 0x8000_0001,
            subleaf: None,
            reg: Reg::Edx,
            names: names!(11 => "syscall", 20 => "nx", 22 => "mmxext", 25 => "fxsr-opt",
                26 => "pdpe1gb", 27 => "rdtscp", 29 => "lm", 30 => "3dnowext", 31 => "3dnow"),
        },
        FeatureWord {
            leaf: 0x8000_0001,
            subleaf: None,
            reg: Reg::Ecx,
            names: names!(0 => "lahf-lm", 1 => "cmp-legacy", 2 => "svm", 3 => "extapic",
                4 => "cr8legacy", 5 => "abm", 6 => "sse4a", 7 => "misalignsse",
                8 => "3dnowprefetch", 9 => "osvw", 10 => "ibs", 11 => "xop", 12 => "skinit",
                13 => "wdt", 15 => "lwp", 16 => "fma4", 17 => "tce", 19 => "nodeid-msr",
                21 => "tbm", 22 => "topoext", 23 => "perfctr-core", 24 => "perfctr-nb"),
        },
        FeatureWord {
            leaf: 0x8000_0007,
            subleaf: None,
            reg: Reg::Edx,
            names: names!(8 => "invtsc"),
        },
        FeatureWord {
            leaf: 0x8000_0008,
            subleaf: None,
            reg: Reg::Ebx,
            names: names!(0 => "clzero", 2 => "xsaveerptr", 9 => "wbnoinvd", 12 => "ibpb",
                14 => "ibrs", 15 => "amd-stibp", 24 => "amd-ssbd", 25 => "virt-ssbd"),
        },
        FeatureWord {
            leaf: 0xc000_0001,
            subleaf: None,
            reg: Reg::Edx,
            names: names!(2 => "xstore", 3 => "xstore-en", 6 => "xcrypt", 7 => "xcrypt-en",
                8 => "ace2", 9 => "ace2-en", 10 => "phe", 11 => "phe-en", 12 => "pmm",
                13 => "pmm-en"),
        },
        FeatureWord {
            leaf: 0x4000_0001,
            subleaf: None,
            reg: Reg::Eax,
            names: names!(0 => "kvmclock", 1 => "kvm-nopiodelay", 2 => "kvm-mmu",
                4 => "kvm-asyncpf", 5 => "kvm-steal-time", 6 => "kvm-pv-eoi",
                7 => "kvm-pv-unhalt", 9 => "kvm-pv-tlb-flush", 10 => "kvm-asyncpf-vmexit",
                11 => "kvm-pv-ipi", 12 => "kvm-poll-control", 13 => "kvm-pv-sched-yield",
                14 => "kvm-asyncpf-int", 15 => "kvm-msi-ext-dest-id",
                24 => "kvmclock-stable-bit"),
        },
        FeatureWord {
            leaf: 0x8000_000a,
            subleaf: None,
            reg: Reg::Edx,
            names: names!(0 => "npt", 1 => "lbrv", 2 => "svm-lock", 3 => "nrip-save",
                4 => "tsc-scale", 5 => "vmcb-clean", 6 => "flushbyasid", 7 => "decodeassists",
                10 => "pause-filter", 12 => "pfthreshold", 13 => "avic", 15 => "v-vmsave-vmload",
                16 => "vgif", 25 => "vnmi", 28 => "svme-addr-chk"),
        },
        FeatureWord {
            leaf: 6,
            subleaf: None,
            reg: Reg::Eax,
            names: names!(2 => "arat"),
        },
        FeatureWord {
            leaf: 0xd,
            subleaf: Some(1),
            reg: Reg::Eax,
            names: names!(0 => "xsaveopt", 1 => "xsavec", 2 => "xgetbv1", 3 => "xsaves",
                4 => "xfd"),
        },
    ]
}

/// QEMU's canonical spelling of a feature name: `_` as `-`, and the `sse4-1`/`sse4-2`
/// aliases of `sse4.1`/`sse4.2`.
pub fn canonical_feature(name: &str) -> String {
    let name = name.replace('_', "-");
    match name.as_str() {
        "sse4-1" => "sse4.1".into(),
        "sse4-2" => "sse4.2".into(),
        _ => name,
    }
}

/// The feature word and bit of feature `name` (canonical spelling).
pub fn feature_bit(name: &str) -> Option<(FeatureWord, u32)> {
    feature_words().into_iter().find_map(|w| {
        let bit = w.names.iter().position(|n| *n == Some(name))?;
        Some((w, bit as u32))
    })
}

/// A `-cpu MODEL,+feat,-feat,feat=on|off` request: each named feature on or off.
pub type FeatureRequest = [(String, bool)];

/// Apply `features` to `cpuid`: a feature turned off is cleared; one turned on is set only
/// where KVM supports it (`supported`), else it is filtered (QEMU's filtered-features).
/// Returns the filtered bits as (word index in `feature_words()`, mask).
pub fn apply_features(
    cpuid: &mut CpuId,
    supported: &CpuId,
    features: &FeatureRequest,
) -> Vec<(usize, u32)> {
    let words = feature_words();
    let mut filtered = Vec::new();
    for (name, on) in features {
        let Some((i, bit)) = words.iter().enumerate().find_map(|(i, w)| {
            let bit = w.names.iter().position(|n| *n == Some(name.as_str()))?;
            Some((i, bit))
        }) else {
            continue;
        };
        let w = &words[i];
        let mask = 1u32 << bit;
        let available = register(supported, w.leaf, w.subleaf, w.reg) & mask != 0;
        let set = *on && available;
        if *on && !available {
            filtered.push((i, mask));
        }
        for e in cpuid.as_mut_slice().iter_mut() {
            if e.function == w.leaf && w.subleaf.is_none_or(|s| e.index == s) {
                let r = match w.reg {
                    Reg::Eax => &mut e.eax,
                    Reg::Ebx => &mut e.ebx,
                    Reg::Ecx => &mut e.ecx,
                    Reg::Edx => &mut e.edx,
                };
                if set {
                    *r |= mask;
                } else if !*on {
                    *r &= !mask;
                }
            }
        }
    }
    filtered
}

/// The value of `reg` of leaf `leaf` (sub-leaf `subleaf`) in `cpuid`; 0 when absent.
pub fn register(cpuid: &CpuId, leaf: u32, subleaf: Option<u32>, reg: Reg) -> u32 {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == leaf && subleaf.is_none_or(|s| e.index == s))
        .map(|e| match reg {
            Reg::Eax => e.eax,
            Reg::Ebx => e.ebx,
            Reg::Ecx => e.ecx,
            Reg::Edx => e.edx,
        })
        .unwrap_or(0)
}

/// Every named feature with whether `cpuid` sets it.
pub fn features(cpuid: &CpuId) -> Vec<(&'static str, bool)> {
    let mut out = Vec::new();
    for word in feature_words() {
        let value = register(cpuid, word.leaf, word.subleaf, word.reg);
        for (bit, name) in word.names.iter().enumerate() {
            if let Some(name) = name {
                out.push((*name, value & (1 << bit) != 0));
            }
        }
    }
    out
}

/// Vendor string, family, model, stepping and brand string of `cpuid`.
pub struct Signature {
    pub vendor: String,
    pub family: u32,
    pub model: u32,
    pub stepping: u32,
    pub model_id: String,
}

fn regs_text(regs: &[u32]) -> String {
    let bytes: Vec<u8> = regs.iter().flat_map(|r| r.to_le_bytes()).collect();
    String::from_utf8_lossy(&bytes)
        .trim_end_matches('\0')
        .trim()
        .to_string()
}

pub fn signature(cpuid: &CpuId) -> Signature {
    let r = |leaf, reg| register(cpuid, leaf, None, reg);
    let vendor = regs_text(&[r(0, Reg::Ebx), r(0, Reg::Edx), r(0, Reg::Ecx)]);
    let eax = r(1, Reg::Eax);
    let base_family = (eax >> 8) & 0xf;
    let family = if base_family == 0xf {
        base_family + ((eax >> 20) & 0xff)
    } else {
        base_family
    };
    let model = if base_family == 0x6 || base_family == 0xf {
        ((eax >> 4) & 0xf) | (((eax >> 16) & 0xf) << 4)
    } else {
        (eax >> 4) & 0xf
    };
    let brand: Vec<u32> = (0x8000_0002..=0x8000_0004u32)
        .flat_map(|leaf| {
            [
                r(leaf, Reg::Eax),
                r(leaf, Reg::Ebx),
                r(leaf, Reg::Ecx),
                r(leaf, Reg::Edx),
            ]
        })
        .collect();
    Signature {
        vendor,
        family,
        model,
        stepping: eax & 0xf,
        model_id: regs_text(&brand),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supported() -> CpuId {
        let entries = [
            kvm_cpuid_entry2 {
                function: 0,
                eax: 0xd,
                ebx: u32::from_le_bytes(*b"Genu"),
                edx: u32::from_le_bytes(*b"ineI"),
                ecx: u32::from_le_bytes(*b"ntel"),
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 1,
                eax: 0x0005_0657,
                ebx: 0x0000_0800,
                ecx: (1 << 20) | (1 << 25),
                edx: 1 | (1 << 25),
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 0,
                ..Default::default()
            },
        ];
        CpuId::from_entries(&entries).unwrap()
    }

    #[test]
    fn topology_leaves_carry_apic_id_and_shape() {
        let topo = CpuTopology {
            sockets: 2,
            dies: 1,
            cores: 3,
            threads: 2,
        };
        // CPU 7: socket 1, core 0, thread 1 -> APIC id 9.
        let c = for_vcpu(&supported(), CpuModel::Host, &[], 7, &topo).unwrap();
        assert_eq!(register(&c, 1, None, Reg::Ebx) >> 24, 9);
        assert_eq!((register(&c, 1, None, Reg::Ebx) >> 16) & 0xff, 6);
        assert_ne!(register(&c, 1, None, Reg::Edx) & EDX_HTT, 0);
        assert_ne!(register(&c, 1, None, Reg::Ecx) & ECX_HYPERVISOR, 0);
        let l0 = |i, reg| register(&c, 0xb, Some(i), reg);
        assert_eq!(
            (l0(0, Reg::Eax), l0(0, Reg::Ebx), l0(0, Reg::Edx)),
            (1, 2, 9)
        );
        assert_eq!(
            (l0(1, Reg::Eax), l0(1, Reg::Ebx), l0(1, Reg::Ecx)),
            (3, 6, 0x201)
        );
        assert_eq!(l0(2, Reg::Ecx), 2);
        // No dies: no leaf 0x1f and the level stays.
        assert_eq!(register(&c, 0x1f, Some(0), Reg::Ebx), 0);
        assert_eq!(register(&c, 0, None, Reg::Eax), 0xd);

        let dies = CpuTopology {
            sockets: 1,
            dies: 2,
            cores: 2,
            threads: 1,
        };
        let c = for_vcpu(&supported(), CpuModel::Host, &[], 3, &dies).unwrap();
        assert_eq!(register(&c, 0, None, Reg::Eax), 0x1f);
        assert_eq!(
            register(&c, 0x1f, Some(2), Reg::Ecx),
            (LEVEL_TYPE_DIE << 8) | 2
        );
        assert_eq!(register(&c, 0x1f, Some(2), Reg::Edx), 3);
        assert_eq!(register(&c, 0x1f, Some(1), Reg::Eax), 1);
        assert_eq!(register(&c, 0x1f, Some(2), Reg::Eax), 2);

        let one = for_vcpu(
            &supported(),
            CpuModel::Host,
            &[],
            0,
            &CpuTopology::default(),
        )
        .unwrap();
        assert_eq!(register(&one, 1, None, Reg::Edx) & EDX_HTT, 0);
    }

    #[test]
    fn features_and_signature_come_from_the_entries() {
        let c = supported();
        let f = features(&c);
        let on = |n: &str| f.iter().find(|(name, _)| *name == n).unwrap().1;
        assert!(on("fpu") && on("aes") && on("sse4.2"));
        assert!(!on("avx") && !on("lm"));
        let s = signature(&c);
        assert_eq!(s.vendor, "GenuineIntel");
        assert_eq!((s.family, s.model, s.stepping), (6, 0x55, 7));
        let mut names: Vec<&str> = f.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "feature names are unique");
    }
}
