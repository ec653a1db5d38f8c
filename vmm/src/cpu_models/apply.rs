//! How a named model becomes a guest CPUID under KVM: the model's vendor, signature, levels
//! and brand string; its features and KVM's defaults for named models (x2apic and the kvm-*
//! paravirt features on; acpi, monitor, svm off) where KVM supports them, nothing else.

use super::ModelDef;
use crate::cpuid::{feature_words, register, CpuModel, CpuidError, FeatureRequest, Reg};
use kvm_bindings::{kvm_cpuid_entry2, CpuId};
use machine::CpuTopology;

// The bits are `pub(super)` for the tests (tests.rs).

// CPUID.1:EDX bits.
pub(super) const FPU: u32 = 1;
pub(super) const VME: u32 = 1 << 1;
pub(super) const DE: u32 = 1 << 2;
pub(super) const PSE: u32 = 1 << 3;
pub(super) const TSC: u32 = 1 << 4;
pub(super) const MSR: u32 = 1 << 5;
pub(super) const PAE: u32 = 1 << 6;
pub(super) const MCE: u32 = 1 << 7;
pub(super) const CX8: u32 = 1 << 8;
pub(super) const APIC: u32 = 1 << 9;
#[cfg(test)]
pub(super) const SEP: u32 = 1 << 11;
pub(super) const MTRR: u32 = 1 << 12;
pub(super) const PGE: u32 = 1 << 13;
pub(super) const MCA: u32 = 1 << 14;
pub(super) const CMOV: u32 = 1 << 15;
pub(super) const PAT: u32 = 1 << 16;
pub(super) const PSE36: u32 = 1 << 17;
#[cfg(test)]
pub(super) const CLFLUSH: u32 = 1 << 19;
pub(super) const ACPI: u32 = 1 << 22;
pub(super) const MMX: u32 = 1 << 23;
pub(super) const FXSR: u32 = 1 << 24;
#[cfg(test)]
pub(super) const SSE: u32 = 1 << 25;
#[cfg(test)]
pub(super) const SSE2: u32 = 1 << 26;
pub(super) const HTT: u32 = 1 << 28;
/// QEMU's PPRO_FEATURES.
#[cfg(test)]
pub(super) const PPRO: u32 = FPU
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
pub(super) const AMD_ALIASES: u32 = FPU
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
#[cfg(test)]
pub(super) const SSE3: u32 = 1;
pub(super) const MONITOR: u32 = 1 << 3;
#[cfg(test)]
pub(super) const CX16: u32 = 1 << 13;
pub(super) const X2APIC: u32 = 1 << 21;
pub(super) const XSAVE: u32 = 1 << 26;
pub(super) const AVX: u32 = 1 << 28;
pub(super) const HYPERVISOR: u32 = 1 << 31;
// CPUID.7.0 bits.
pub(super) const MPX: u32 = 1 << 14;
pub(super) const AVX512F: u32 = 1 << 16;
pub(super) const PKU: u32 = 1 << 3;
// CPUID.0x80000001 bits.
#[cfg(test)]
pub(super) const LAHF_LM: u32 = 1;
pub(super) const SVM: u32 = 1 << 2;
#[cfg(test)]
pub(super) const SYSCALL: u32 = 1 << 11;
#[cfg(test)]
pub(super) const NX: u32 = 1 << 20;
#[cfg(test)]
pub(super) const LM: u32 = 1 << 29;
pub(super) const TOPOEXT: u32 = 1 << 22;
/// kvm-msi-ext-dest-id, off by default for named models.
pub(super) const KVM_MSI_EXT_DEST_ID: u32 = 1 << 15;

pub(super) const EXT: u32 = 0x8000_0000;

impl ModelDef {
    /// The model's own bits of a feature register.
    pub(super) fn mask(&self, leaf: u32, subleaf: Option<u32>, reg: Reg) -> u32 {
        self.features
            .iter()
            .filter(|(l, s, r, _)| *l == leaf && (s.is_none() || *s == subleaf) && *r == reg)
            .fold(0, |acc, (_, _, _, m)| acc | m)
    }

    /// KVM's defaults for named models, on top of the model's bits (kvm_default_props).
    /// topoext is left out too: it promises AMD's cache and topology leaves
    /// (0x8000001D/1E), which machina does not build.
    fn wanted(&self, leaf: u32, subleaf: Option<u32>, reg: Reg) -> u32 {
        let mut m = self.mask(leaf, subleaf, reg);
        match (leaf, reg) {
            (1, Reg::Ecx) => m = (m | X2APIC) & !MONITOR,
            (1, Reg::Edx) => m &= !ACPI,
            (0x8000_0001, Reg::Ecx) => m &= !(SVM | TOPOEXT),
            _ => {}
        }
        m
    }

    /// `requested` for the word at (leaf, sub-leaf, register); the model's bits where
    /// machina names no such word.
    fn requested_at(
        &self,
        leaf: u32,
        subleaf: Option<u32>,
        reg: Reg,
        features: &FeatureRequest,
    ) -> u32 {
        feature_words()
            .iter()
            .find(|w| {
                w.leaf == leaf && w.reg == reg && (w.subleaf.is_none() || w.subleaf == subleaf)
            })
            .map(|w| self.requested(w, features))
            .unwrap_or_else(|| self.wanted(leaf, subleaf, reg))
    }

    fn has(&self, leaf: u32, subleaf: Option<u32>, reg: Reg, bits: u32) -> bool {
        self.mask(leaf, subleaf, reg) & bits != 0
    }

    /// The XSAVE state components the model's features use (QEMU's x86_ext_save_areas):
    /// x87 and SSE always, AVX, MPX's two, AVX-512's three, PKRU.
    fn xsave_components(&self) -> u64 {
        let mut c = 0b11u64;
        if self.has(1, None, Reg::Ecx, AVX) {
            c |= 1 << 2;
        }
        if self.has(7, Some(0), Reg::Ebx, MPX) {
            c |= 0b11 << 3;
        }
        if self.has(7, Some(0), Reg::Ebx, AVX512F) {
            c |= 0b111 << 5;
        }
        if self.has(7, Some(0), Reg::Ecx, PKU) {
            c |= 1 << 9;
        }
        c
    }

    /// The bits the guest asks for in one feature word: the model's (with KVM's
    /// defaults), then the `-cpu` feature requests in effect order.
    pub fn requested(&self, w: &crate::cpuid::FeatureWord, features: &FeatureRequest) -> u32 {
        let mut m = self.wanted(w.leaf, w.subleaf, w.reg);
        for (name, on) in features {
            if let Some(bit) = w.names.iter().position(|n| *n == Some(name.as_str())) {
                if *on {
                    m |= 1 << bit;
                } else {
                    m &= !(1 << bit);
                }
            }
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

    fn is_amd(&self) -> bool {
        &self.vendor == b"AuthenticAMD"
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

/// QEMU's x86_cpu_filter_features report: one line per feature the guest CPU asks for
/// (the named model's, `+feat`/`feat=on`) that KVM cannot give, as QEMU words it
/// (`host doesn't support requested feature: CPUID.01H:ECX.pni [bit 0]`).
pub fn missing_features(
    model: CpuModel,
    features: &FeatureRequest,
    supported: &CpuId,
) -> Vec<String> {
    let mut out = Vec::new();
    for w in feature_words() {
        let asked = match model {
            CpuModel::Named(def) => def.requested(&w, features),
            // host/max already are what KVM gives; only explicit requests can miss.
            _ => features
                .iter()
                .filter(|(_, on)| *on)
                .filter_map(|(n, _)| w.names.iter().position(|x| *x == Some(n.as_str())))
                .fold(0, |m, bit| m | 1 << bit),
        };
        let missing = asked & !register(supported, w.leaf, w.subleaf, w.reg);
        for (bit, name) in w.names.iter().enumerate() {
            if let Some(name) = name.filter(|_| missing & (1 << bit) != 0) {
                let leaf = if w.leaf >= EXT {
                    format!("{:08X}H", w.leaf)
                } else {
                    format!("{:02X}H", w.leaf)
                };
                out.push(format!(
                    "host doesn't support requested feature: CPUID.{leaf}:{}.{name} [bit {bit}]",
                    w.reg.name()
                ));
            }
        }
    }
    out
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

/// A CPU's highest basic, extended and Centaur leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    pub level: u32,
    pub xlevel: u32,
    pub xlevel2: u32,
}

/// The levels of `def` with `features` as QEMU's x86_cpu_expand_features sets them
/// (full-cpuid-auto-level, on for every machine machina offers): the model's, raised to the
/// leaf of each feature word the guest asks a bit of, and to 0x8000000A with SVM.
pub fn levels(def: &ModelDef, features: &FeatureRequest) -> Levels {
    let mut l = Levels {
        level: def.level,
        xlevel: def.xlevel,
        xlevel2: def.xlevel2,
    };
    for w in feature_words() {
        // QEMU adjusts for every CPUID word but leaf 7's EDX and the KVM leaf.
        if (w.leaf == 7 && w.subleaf == Some(0) && w.reg == Reg::Edx) || w.leaf == 0x4000_0001 {
            continue;
        }
        if def.requested(&w, features) == 0 {
            continue;
        }
        let slot = match w.leaf & 0xf000_0000 {
            0 => &mut l.level,
            0x8000_0000 => &mut l.xlevel,
            _ => &mut l.xlevel2,
        };
        *slot = (*slot).max(w.leaf);
    }
    if def.requested_at(EXT + 1, None, Reg::Ecx, features) & SVM != 0 {
        l.xlevel = l.xlevel.max(EXT + 0xa);
    }
    let [level, xlevel, xlevel2] = def.fixed_levels;
    Levels {
        level: level.unwrap_or(l.level),
        xlevel: xlevel.unwrap_or(l.xlevel),
        xlevel2: xlevel2.unwrap_or(l.xlevel2),
    }
}

/// The CPUID of model `def` under KVM, before the per-vCPU topology leaves (which
/// `cpuid::for_vcpu` then adds from `topo`): each feature leaf is the model's bits that KVM
/// supports (QEMU's cpu_x86_cpuid after x86_cpu_filter_features).
pub fn apply(
    def: &ModelDef,
    supported: &CpuId,
    features: &FeatureRequest,
    topo: &CpuTopology,
) -> Result<CpuId, CpuidError> {
    let reg = |leaf, reg| register(supported, leaf, None, reg);
    let vendor = def.vendor_regs();
    let lv = levels(def, features);
    let level = if topo.dies > 1 {
        lv.level.max(0x1f)
    } else {
        lv.level
    };
    let want_at = |leaf, subleaf, r| def.requested_at(leaf, subleaf, r, features);
    let leaf7_1 = def
        .features
        .iter()
        .any(|(l, s, _, _)| *l == 7 && *s == Some(1));
    let xsave = def.has(1, None, Reg::Ecx, XSAVE) && reg(1, Reg::Ecx) & XSAVE != 0;
    let components = def.xsave_components()
        & (u64::from(register(supported, 0xd, Some(0), Reg::Eax))
            | u64::from(register(supported, 0xd, Some(0), Reg::Edx)) << 32);
    // The XSAVE area of those components: the end of the highest one, at least the legacy
    // area and header (QEMU's xsave_area_size).
    let xsave_size = (2..64)
        .filter(|i| components & (1 << i) != 0)
        .map(|i| {
            register(supported, 0xd, Some(i), Reg::Ebx)
                + register(supported, 0xd, Some(i), Reg::Eax)
        })
        .fold(576, u32::max);
    let mut entries: Vec<kvm_cpuid_entry2> = Vec::new();
    for e in supported.as_slice() {
        let f = e.function;
        let keep = match f {
            7 => e.index == 0 || (e.index == 1 && leaf7_1),
            0xd => xsave && (e.index < 2 || components & (1u64 << e.index.min(63)) != 0),
            0..=0x3fff_ffff => f <= level,
            0x4000_0000..=0x4000_ffff => true,
            0xc000_0000..=0xcfff_ffff => f <= lv.xlevel2,
            _ => f >= EXT && f <= lv.xlevel,
        };
        if !keep || (f < 0x4000_0000 && f > level) {
            continue;
        }
        let mut e = *e;
        let want = |r: Reg| want_at(f, Some(e.index), r);
        match f {
            0 => [e.eax, e.ebx, e.edx, e.ecx] = [level, vendor[0], vendor[1], vendor[2]],
            1 => {
                e.eax = def.signature();
                e.ecx = (e.ecx & want_at(1, None, Reg::Ecx)) | HYPERVISOR;
                e.edx &= want_at(1, None, Reg::Edx) | HTT;
            }
            // Cache descriptors and parameters are the host's; topology leaves are rebuilt.
            2 | 4 | 0xb | 0x1f => {}
            6 => [e.eax, e.ebx, e.ecx, e.edx] = [e.eax & want(Reg::Eax), 0, 0, 0],
            7 if e.index == 0 => {
                e.eax = e.eax.min(u32::from(leaf7_1));
                e.ebx &= want(Reg::Ebx);
                e.ecx &= want(Reg::Ecx);
                e.edx &= want(Reg::Edx);
            }
            7 => [e.eax, e.ebx, e.ecx, e.edx] = [e.eax & want(Reg::Eax), 0, 0, 0],
            0xd if e.index == 0 => {
                e.eax = components as u32;
                e.edx = (components >> 32) as u32;
                e.ebx = xsave_size;
                e.ecx = xsave_size;
            }
            // XSAVEOPT and friends; no supervisor state (IA32_XSS) components.
            0xd if e.index == 1 => [e.eax, e.ebx, e.ecx, e.edx] = [e.eax & want(Reg::Eax), 0, 0, 0],
            // The components the model uses: their sizes and offsets as KVM reports them.
            0xd => {}
            0x4000_0001 => e.eax &= !KVM_MSI_EXT_DEST_ID,
            0x4000_0000..=0x4000_ffff => {}
            EXT => [e.eax, e.ebx, e.edx, e.ecx] = [lv.xlevel, vendor[0], vendor[1], vendor[2]],
            0x8000_0001 => {
                e.eax = def.signature();
                e.ebx = 0;
                e.ecx &= want_at(f, None, Reg::Ecx);
                e.edx &= want_at(f, None, Reg::Edx);
                // AMD repeats leaf 1's bits here (QEMU copies them for AMD vendors only).
                if def.is_amd() {
                    e.edx |= reg(1, Reg::Edx) & want_at(1, None, Reg::Edx) & AMD_ALIASES;
                }
            }
            0x8000_0002..=0x8000_0004 => {}
            // L1/L2 cache information: the host's.
            0x8000_0005 | 0x8000_0006 => {}
            0x8000_0007 => [e.eax, e.ebx, e.ecx, e.edx] = [0, 0, 0, e.edx & want(Reg::Edx)],
            // Address sizes and core count stay; the model's features in EBX.
            0x8000_0008 => e.ebx &= want_at(f, None, Reg::Ebx),
            // SVM's features, with svm on.
            0x8000_000a if want_at(EXT + 1, None, Reg::Ecx) & SVM != 0 => {
                [e.eax, e.ebx, e.ecx, e.edx] = [e.eax, e.ebx, 0, e.edx & want(Reg::Edx)]
            }
            0xc000_0000 => [e.eax, e.ebx, e.ecx, e.edx] = [lv.xlevel2, 0, 0, 0],
            0xc000_0001 => [e.eax, e.ebx, e.ecx, e.edx] = [0, 0, 0, e.edx & want(Reg::Edx)],
            // Leaves whose bits are features no model here has (power management, SVM,
            // PMU, SGX, PT, AMD topology): empty.
            _ => [e.eax, e.ebx, e.ecx, e.edx] = [0; 4],
        }
        entries.push(e);
    }
    // The brand string, 48 bytes NUL-padded, in 0x80000002..4.
    if lv.xlevel >= EXT + 4 {
        entries.retain(|e| !(EXT + 2..=EXT + 4).contains(&e.function));
        let mut brand = [0u8; 48];
        let id = def.model_id.as_bytes();
        brand[..id.len().min(47)].copy_from_slice(&id[..id.len().min(47)]);
        for (i, chunk) in brand.chunks(16).enumerate() {
            let r =
                |j: usize| u32::from_le_bytes([chunk[j], chunk[j + 1], chunk[j + 2], chunk[j + 3]]);
            entries.push(entry(EXT + 2 + i as u32, 0, [r(0), r(4), r(8), r(12)]));
        }
    }
    let n = entries.len();
    CpuId::from_entries(&entries).map_err(|_| CpuidError::new(n))
}
