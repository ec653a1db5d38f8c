//! Named x86 CPU models as data (facts from QEMU's builtin_x86_defs, target/i386/cpu.c) and
//! how one becomes a guest CPUID under KVM: the model's vendor, signature, levels and brand
//! string; its features and KVM's defaults for named models (x2apic and the kvm-* paravirt
//! features on; acpi, monitor, svm off) where KVM supports them, nothing else.

use crate::cpuid::{feature_words, register, CpuidError, Reg};
use kvm_bindings::{kvm_cpuid_entry2, CpuId};
use machine::CpuTopology;

/// A builtin model.
#[derive(Debug, PartialEq, Eq)]
pub struct ModelDef {
    pub name: &'static str,
    pub type_name: &'static str,
    pub vendor: &'static [u8; 12],
    pub family: u32,
    pub model: u32,
    pub stepping: u32,
    /// Highest basic and extended leaves.
    pub level: u32,
    pub xlevel: u32,
    /// Feature bits: (leaf, sub-leaf, register, mask).
    pub features: &'static [(u32, Option<u32>, Reg, u32)],
    pub model_id: &'static str,
}

// CPUID.1:EDX bits.
const FPU: u32 = 1;
const VME: u32 = 1 << 1;
const DE: u32 = 1 << 2;
const PSE: u32 = 1 << 3;
const TSC: u32 = 1 << 4;
const MSR: u32 = 1 << 5;
const PAE: u32 = 1 << 6;
const MCE: u32 = 1 << 7;
const CX8: u32 = 1 << 8;
const APIC: u32 = 1 << 9;
const SEP: u32 = 1 << 11;
const MTRR: u32 = 1 << 12;
const PGE: u32 = 1 << 13;
const MCA: u32 = 1 << 14;
const CMOV: u32 = 1 << 15;
const PAT: u32 = 1 << 16;
const PSE36: u32 = 1 << 17;
const CLFLUSH: u32 = 1 << 19;
const ACPI: u32 = 1 << 22;
const MMX: u32 = 1 << 23;
const FXSR: u32 = 1 << 24;
const SSE: u32 = 1 << 25;
const SSE2: u32 = 1 << 26;
const HTT: u32 = 1 << 28;
/// QEMU's PPRO_FEATURES.
const PPRO: u32 = FPU
    | DE
    | PSE
    | TSC
    | MSR
    | MCE
    | CX8
    | PGE
    | CMOV
    | PAT
    | FXSR
    | MMX
    | SSE
    | SSE2
    | PAE
    | SEP
    | APIC;
/// The CPUID.1:EDX bits AMD repeats in CPUID.0x80000001:EDX (CPUID_EXT2_AMD_ALIASES).
const AMD_ALIASES: u32 = FPU
    | VME
    | DE
    | PSE
    | TSC
    | MSR
    | PAE
    | MCE
    | CX8
    | APIC
    | MTRR
    | PGE
    | MCA
    | CMOV
    | PAT
    | PSE36
    | MMX
    | FXSR;
// CPUID.1:ECX bits.
const SSE3: u32 = 1;
const MONITOR: u32 = 1 << 3;
const CX16: u32 = 1 << 13;
const X2APIC: u32 = 1 << 21;
const HYPERVISOR: u32 = 1 << 31;
// CPUID.0x80000001 bits.
const LAHF_LM: u32 = 1;
const SVM: u32 = 1 << 2;
const SYSCALL: u32 = 1 << 11;
const NX: u32 = 1 << 20;
const LM: u32 = 1 << 29;
/// kvm-msi-ext-dest-id, off by default for named models.
const KVM_MSI_EXT_DEST_ID: u32 = 1 << 15;

const EXT: u32 = 0x8000_0000;

pub static QEMU64: ModelDef = ModelDef {
    name: "qemu64",
    type_name: "qemu64-x86_64-cpu",
    vendor: b"AuthenticAMD",
    family: 15,
    model: 107,
    stepping: 1,
    level: 0xd,
    xlevel: 0x8000_000a,
    features: &[
        (1, None, Reg::Edx, PPRO | MTRR | CLFLUSH | MCA | PSE36),
        (1, None, Reg::Ecx, SSE3 | CX16),
        (EXT + 1, None, Reg::Edx, LM | SYSCALL | NX),
        (EXT + 1, None, Reg::Ecx, LAHF_LM | SVM),
    ],
    model_id: "QEMU Virtual CPU version 2.5+",
};

/// The named models machina offers.
pub static MODELS: [&ModelDef; 1] = [&QEMU64];

impl ModelDef {
    /// The model's own bits of a feature register.
    fn mask(&self, leaf: u32, subleaf: Option<u32>, reg: Reg) -> u32 {
        self.features
            .iter()
            .filter(|(l, s, r, _)| *l == leaf && (s.is_none() || *s == subleaf) && *r == reg)
            .fold(0, |acc, (_, _, _, m)| acc | m)
    }

    /// KVM's defaults for named models, on top of the model's bits (kvm_default_props).
    fn wanted(&self, leaf: u32, subleaf: Option<u32>, reg: Reg) -> u32 {
        let mut m = self.mask(leaf, subleaf, reg);
        match (leaf, reg) {
            (1, Reg::Ecx) => m = (m | X2APIC) & !MONITOR,
            (1, Reg::Edx) => m &= !ACPI,
            (0x8000_0001, Reg::Ecx) => m &= !SVM,
            _ => {}
        }
        m
    }

    /// The model's features KVM cannot give (query-cpu-definitions' unavailable-features).
    pub fn unavailable(&self, supported: &CpuId) -> Vec<&'static str> {
        let mut out = Vec::new();
        for w in feature_words() {
            let missing = self.wanted(w.leaf, w.subleaf, w.reg)
                & !register(supported, w.leaf, w.subleaf, w.reg);
            for (bit, name) in w.names.iter().enumerate() {
                if let Some(name) = name.filter(|_| missing & (1 << bit) != 0) {
                    out.push(name);
                }
            }
        }
        out
    }

    /// CPUID.1:EAX (and AMD's 0x80000001:EAX).
    fn signature(&self) -> u32 {
        let base_family = self.family.min(0xf);
        let ext_family = self.family.saturating_sub(0xf);
        self.stepping
            | ((self.model & 0xf) << 4)
            | (base_family << 8)
            | (((self.model >> 4) & 0xf) << 16)
            | (ext_family << 20)
    }

    fn vendor_regs(&self) -> [u32; 3] {
        let w = |i: usize| {
            u32::from_le_bytes([
                self.vendor[i],
                self.vendor[i + 1],
                self.vendor[i + 2],
                self.vendor[i + 3],
            ])
        };
        // EBX, EDX, ECX hold "Auth", "enti", "cAMD".
        [w(0), w(4), w(8)]
    }
}

fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        eax: regs[0],
        ebx: regs[1],
        ecx: regs[2],
        edx: regs[3],
        ..Default::default()
    }
}

/// The CPUID of model `def` under KVM, before the per-vCPU topology leaves (which
/// `cpuid::for_vcpu` then adds from `topo`).
pub fn apply(def: &ModelDef, supported: &CpuId, topo: &CpuTopology) -> Result<CpuId, CpuidError> {
    let reg = |leaf, reg| register(supported, leaf, None, reg);
    let vendor = def.vendor_regs();
    let level = if topo.dies > 1 {
        def.level.max(0x1f)
    } else {
        def.level
    };
    let mut entries: Vec<kvm_cpuid_entry2> = Vec::new();
    for e in supported.as_slice() {
        let f = e.function;
        let keep = match f {
            0..=0x3fff_ffff => f <= level,
            0x4000_0000..=0x4000_ffff => true,
            _ => f >= EXT && f <= def.xlevel,
        };
        if !keep {
            continue;
        }
        let mut e = *e;
        match f {
            0 => [e.eax, e.ebx, e.edx, e.ecx] = [level, vendor[0], vendor[1], vendor[2]],
            1 => {
                e.eax = def.signature();
                e.ecx = (e.ecx & def.wanted(1, None, Reg::Ecx)) | HYPERVISOR;
                e.edx &= def.wanted(1, None, Reg::Edx) | HTT;
            }
            // Cache descriptors and parameters are the host's; topology leaves are rebuilt.
            2 | 4 | 0xb | 0x1f => {}
            0x4000_0001 => e.eax &= !KVM_MSI_EXT_DEST_ID,
            0x4000_0000..=0x4000_ffff => {}
            EXT => [e.eax, e.ebx, e.edx, e.ecx] = [def.xlevel, vendor[0], vendor[1], vendor[2]],
            0x8000_0001 => {
                let leaf1_edx = reg(1, Reg::Edx) & def.wanted(1, None, Reg::Edx);
                e.eax = def.signature();
                e.ebx = 0;
                e.ecx &= def.wanted(f, None, Reg::Ecx);
                e.edx = (e.edx & def.wanted(f, None, Reg::Edx)) | (leaf1_edx & AMD_ALIASES);
            }
            0x8000_0002..=0x8000_0004 => {}
            // L1/L2 cache information: the host's.
            0x8000_0005 | 0x8000_0006 => {}
            // Address sizes and core count stay; no features of the model live there.
            0x8000_0008 => e.ebx = 0,
            // Leaves whose bits are features the model lacks (leaf 7, XSAVE, power
            // management, SVM, ...): empty.
            _ => [e.eax, e.ebx, e.ecx, e.edx] = [0; 4],
        }
        entries.push(e);
    }
    // The brand string, 48 bytes NUL-padded, in 0x80000002..4.
    if def.xlevel >= EXT + 4 {
        entries.retain(|e| !(EXT + 2..=EXT + 4).contains(&e.function));
        let mut brand = [0u8; 48];
        brand[..def.model_id.len().min(47)]
            .copy_from_slice(&def.model_id.as_bytes()[..def.model_id.len().min(47)]);
        for (i, chunk) in brand.chunks(16).enumerate() {
            let r =
                |j: usize| u32::from_le_bytes([chunk[j], chunk[j + 1], chunk[j + 2], chunk[j + 3]]);
            entries.push(entry(EXT + 2 + i as u32, 0, [r(0), r(4), r(8), r(12)]));
        }
    }
    let n = entries.len();
    CpuId::from_entries(&entries).map_err(|_| CpuidError::new(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supported() -> CpuId {
        let e = |function, eax, ebx, ecx, edx| kvm_cpuid_entry2 {
            function,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        };
        CpuId::from_entries(&[
            e(0, 0x16, 0x756e_6547, 0x6c65_746e, 0x4965_6e69),
            e(
                1,
                0x000a_06a4,
                0,
                0xfffa_3203 | X2APIC | MONITOR,
                0x1fab_fbff,
            ),
            e(7, 0, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff),
            e(0x16, 1, 2, 3, 4),
            e(EXT, 0x8000_0008, 0, 0, 0),
            e(
                EXT + 1,
                0,
                0,
                LAHF_LM | SVM | (1 << 5),
                LM | SYSCALL | NX | (1 << 27),
            ),
            e(EXT + 2, 1, 2, 3, 4),
            e(EXT + 7, 0, 0, 0, 1 << 8),
            e(EXT + 8, 0x3030, 0xffff, 0, 0),
        ])
        .unwrap()
    }

    #[test]
    fn qemu64_under_kvm() {
        let c = apply(&QEMU64, &supported(), &CpuTopology::default()).unwrap();
        let r = |leaf, reg| register(&c, leaf, None, reg);
        let sig = crate::cpuid::signature(&c);
        assert_eq!(sig.vendor, "AuthenticAMD");
        assert_eq!((sig.family, sig.model, sig.stepping), (15, 107, 1));
        assert_eq!(sig.model_id, "QEMU Virtual CPU version 2.5+");
        assert_eq!(r(0, Reg::Eax), 0xd);
        assert_eq!(r(EXT, Reg::Eax), 0x8000_000a);
        // Only the model's features (and x2apic), where KVM has them.
        assert_eq!(r(1, Reg::Ecx), SSE3 | CX16 | X2APIC | HYPERVISOR);
        assert_eq!(
            r(1, Reg::Edx),
            0x1fab_fbff & (PPRO | MTRR | CLFLUSH | MCA | PSE36 | HTT)
        );
        assert_eq!(r(7, Reg::Ebx), 0);
        assert_eq!(r(EXT + 1, Reg::Ecx), LAHF_LM);
        assert_eq!(r(EXT + 7, Reg::Edx), 0, "no invtsc");
        assert_eq!(r(EXT + 8, Reg::Eax), 0x3030);
        // Above the model's level: gone.
        assert!(c.as_slice().iter().all(|e| e.function != 0x16));
        assert!(QEMU64.unavailable(&supported()).is_empty());
        let mut poor = supported();
        for e in poor.as_mut_slice() {
            if e.function == 1 {
                e.ecx &= !CX16;
            }
        }
        assert_eq!(QEMU64.unavailable(&poor), ["cx16"]);
    }
}
