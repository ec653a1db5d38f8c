//! Named x86 CPU models as data (facts from QEMU's builtin_x86_defs, target/i386/cpu.c) and
//! how one becomes a guest CPUID under KVM: the model's vendor, signature, levels and brand
//! string; its features and KVM's defaults for named models (x2apic and the kvm-* paravirt
//! features on; acpi, monitor, svm off) where KVM supports them, nothing else.

use crate::cpuid::{feature_words, register, CpuModel, CpuidError, FeatureRequest, Reg};
use kvm_bindings::{kvm_cpuid_entry2, CpuId};
use machine::CpuTopology;

/// One named model as the guest sees it: a QEMU model at one version (`Haswell-v2`), or
/// an alias of one (`Haswell` = `Haswell-v1`, `Haswell-noTSX` = `Haswell-v2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelDef {
    pub name: String,
    pub type_name: String,
    /// The versioned model this name stands for (`Haswell-v1` for `Haswell`).
    pub alias_of: Option<String>,
    pub vendor: [u8; 12],
    pub family: u32,
    pub model: u32,
    pub stepping: u32,
    /// Highest basic and extended leaves.
    pub level: u32,
    pub xlevel: u32,
    /// Highest Centaur leaf (`min-xlevel2`); 0 for QEMU's models.
    pub xlevel2: u32,
    /// `level=`, `xlevel=`, `xlevel2=` given with `-cpu`: fixed, never raised for features.
    pub fixed_levels: [Option<u32>; 3],
    /// Feature bits: (leaf, sub-leaf, register, mask).
    pub features: Vec<(u32, Option<u32>, Reg, u32)>,
    pub model_id: String,
}

/// QEMU's definitions, extracted from target/i386/cpu.c by scripts/gen-cpu-models.
static MODELS_JSON: &str = include_str!("../../resources/cpu-models.json");

#[derive(serde::Deserialize)]
struct ModelsFile {
    models: Vec<ModelJson>,
}

#[derive(serde::Deserialize)]
struct ModelJson {
    name: String,
    vendor: String,
    family: u32,
    model: u32,
    stepping: u32,
    level: u32,
    xlevel: u32,
    #[serde(rename = "model-id")]
    model_id: String,
    features: Vec<String>,
    versions: Vec<VersionJson>,
}

#[derive(serde::Deserialize)]
struct VersionJson {
    version: u32,
    alias: Option<String>,
    #[serde(default)]
    props: Vec<(String, String)>,
}

/// A resource that does not describe models machina can give.
#[derive(Debug, thiserror::Error)]
pub enum ModelDataError {
    #[error("resources/cpu-models.json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("resources/cpu-models.json: model {0}: {1}")]
    Model(String, String),
}

fn number(text: &str) -> Option<u32> {
    match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// The model `m` at `version` (the props of versions 2..=version applied in order, as
/// QEMU's x86_cpu_apply_version_props does), named `name`.
fn build(
    m: &ModelJson,
    version: u32,
    name: String,
    alias_of: Option<String>,
) -> Result<ModelDef, ModelDataError> {
    let bad = |what: String| ModelDataError::Model(m.name.clone(), what);
    let vendor: [u8; 12] = m
        .vendor
        .as_bytes()
        .try_into()
        .map_err(|_| bad(format!("vendor '{}' is not 12 bytes", m.vendor)))?;
    let mut features: Vec<String> = m.features.clone();
    let (mut family, mut model, mut stepping) = (m.family, m.model, m.stepping);
    let mut model_id = m.model_id.clone();
    for v in m.versions.iter().take_while(|v| v.version <= version) {
        for (key, value) in &v.props {
            match (key.as_str(), value.as_str()) {
                ("family", n) => family = number(n).ok_or_else(|| bad(format!("family {n}")))?,
                ("model", n) => model = number(n).ok_or_else(|| bad(format!("model {n}")))?,
                ("stepping", n) => {
                    stepping = number(n).ok_or_else(|| bad(format!("stepping {n}")))?
                }
                ("model-id", text) => model_id = text.to_string(),
                (feature, "on") => features.push(feature.to_string()),
                (feature, "off") => features.retain(|f| f != feature),
                (k, v) => return Err(bad(format!("version {}: {k}={v}", v))),
            }
        }
    }
    let mut bits: Vec<(u32, Option<u32>, Reg, u32)> = Vec::new();
    for f in &features {
        let (w, bit) = crate::cpuid::feature_bit(&crate::cpuid::canonical_feature(f))
            .ok_or_else(|| bad(format!("feature '{f}' has no CPUID bit in machina")))?;
        bits.push((w.leaf, w.subleaf, w.reg, 1 << bit));
    }
    Ok(ModelDef {
        type_name: format!("{name}-x86_64-cpu"),
        name,
        alias_of,
        vendor,
        family,
        model,
        stepping,
        level: m.level,
        xlevel: m.xlevel,
        xlevel2: 0,
        fixed_levels: [None; 3],
        features: bits,
        model_id,
    })
}

/// Every name QEMU registers for the models of `text`: `NAME` (version 1, the version
/// machines since 4.1 resolve it to), `NAME-vN`, and each version's alias.
fn load(text: &str) -> Result<Vec<ModelDef>, ModelDataError> {
    let file: ModelsFile = serde_json::from_str(text)?;
    let mut out = Vec::new();
    for m in &file.models {
        out.push(build(m, 1, m.name.clone(), Some(format!("{}-v1", m.name)))?);
        for v in &m.versions {
            let versioned = format!("{}-v{}", m.name, v.version);
            if let Some(alias) = &v.alias {
                out.push(build(m, v.version, alias.clone(), Some(versioned.clone()))?);
            }
            out.push(build(m, v.version, versioned, None)?);
        }
    }
    Ok(out)
}

/// The named models machina offers (QEMU's, as far as machina models their CPUID leaves).
pub fn models() -> &'static [ModelDef] {
    static MODELS: std::sync::OnceLock<Vec<ModelDef>> = std::sync::OnceLock::new();
    MODELS.get_or_init(|| match load(MODELS_JSON) {
        Ok(models) => models,
        // The resource is part of the build, checked by the tests below; a broken one
        // offers no named model rather than a wrong one.
        Err(e) => {
            log::error!("{e}");
            Vec::new()
        }
    })
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
#[cfg(test)]
const SEP: u32 = 1 << 11;
const MTRR: u32 = 1 << 12;
const PGE: u32 = 1 << 13;
const MCA: u32 = 1 << 14;
const CMOV: u32 = 1 << 15;
const PAT: u32 = 1 << 16;
const PSE36: u32 = 1 << 17;
#[cfg(test)]
const CLFLUSH: u32 = 1 << 19;
const ACPI: u32 = 1 << 22;
const MMX: u32 = 1 << 23;
const FXSR: u32 = 1 << 24;
#[cfg(test)]
const SSE: u32 = 1 << 25;
#[cfg(test)]
const SSE2: u32 = 1 << 26;
const HTT: u32 = 1 << 28;
/// QEMU's PPRO_FEATURES.
#[cfg(test)]
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
#[cfg(test)]
const SSE3: u32 = 1;
const MONITOR: u32 = 1 << 3;
#[cfg(test)]
const CX16: u32 = 1 << 13;
const X2APIC: u32 = 1 << 21;
const XSAVE: u32 = 1 << 26;
const AVX: u32 = 1 << 28;
const HYPERVISOR: u32 = 1 << 31;
// CPUID.7.0 bits.
const MPX: u32 = 1 << 14;
const AVX512F: u32 = 1 << 16;
const PKU: u32 = 1 << 3;
// CPUID.0x80000001 bits.
#[cfg(test)]
const LAHF_LM: u32 = 1;
const SVM: u32 = 1 << 2;
#[cfg(test)]
const SYSCALL: u32 = 1 << 11;
#[cfg(test)]
const NX: u32 = 1 << 20;
#[cfg(test)]
const LM: u32 = 1 << 29;
const TOPOEXT: u32 = 1 << 22;
/// kvm-msi-ext-dest-id, off by default for named models.
const KVM_MSI_EXT_DEST_ID: u32 = 1 << 15;

const EXT: u32 = 0x8000_0000;

impl ModelDef {
    /// The model's own bits of a feature register.
    fn mask(&self, leaf: u32, subleaf: Option<u32>, reg: Reg) -> u32 {
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

/// `def` with `-cpu` level properties (`level`, `xlevel`, `xlevel2` fixed; `min-level`,
/// `min-xlevel`, `min-xlevel2` as the model's own), as one more model for this process.
pub fn with_levels(def: &'static ModelDef, props: &[(String, u32)]) -> &'static ModelDef {
    if props.is_empty() {
        return def;
    }
    let mut d = def.clone();
    for (key, v) in props {
        match key.as_str() {
            "level" => d.fixed_levels[0] = Some(*v),
            "xlevel" => d.fixed_levels[1] = Some(*v),
            "xlevel2" => d.fixed_levels[2] = Some(*v),
            "min-level" => d.level = *v,
            "min-xlevel" => d.xlevel = *v,
            _ => d.xlevel2 = *v,
        }
    }
    // One per -cpu option of the process; the CPU model lives as long as the process.
    Box::leak(Box::new(d))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str) -> &'static ModelDef {
        models().iter().find(|m| m.name == name).unwrap()
    }

    fn sub(function: u32, index: u32, r: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: r[0],
            ebx: r[1],
            ecx: r[2],
            edx: r[3],
            ..Default::default()
        }
    }

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
            e(6, 0x4, 0, 0, 0),
            e(7, 0, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff),
            sub(0xd, 0, [0x2e7, 2696, 2696, 0]),
            sub(0xd, 1, [0xf, 0, 0, 0]),
            sub(0xd, 2, [256, 576, 0, 0]),
            sub(0xd, 5, [64, 1088, 0, 0]),
            sub(0xd, 9, [8, 2688, 0, 0]),
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
        let qemu64 = model("qemu64");
        let c = apply(qemu64, &supported(), &[], &CpuTopology::default()).unwrap();
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
        assert!(qemu64.unavailable(&supported()).is_empty());
        let mut poor = supported();
        for e in poor.as_mut_slice() {
            if e.function == 1 {
                e.ecx &= !CX16;
            }
        }
        assert_eq!(qemu64.unavailable(&poor), ["cx16"]);
    }

    #[test]
    fn the_resource_gives_qemus_names_and_versions() {
        let names: Vec<&str> = models().iter().map(|m| m.name.as_str()).collect();
        for name in [
            "qemu64",
            "qemu32",
            "kvm64",
            "Nehalem",
            "Westmere",
            "SandyBridge",
            "IvyBridge",
            "Haswell",
            "Haswell-noTSX",
            "Haswell-IBRS",
            "Haswell-noTSX-IBRS",
            "Haswell-v4",
            "Broadwell",
            "Skylake-Client",
            "Skylake-Server",
            "Cascadelake-Server",
            "Icelake-Server",
            "EPYC",
            "EPYC-IBPB",
            "EPYC-Rome",
            "Opteron_G5",
        ] {
            assert!(names.contains(&name), "{name} is offered");
        }
        let haswell = model("Haswell");
        assert_eq!(haswell.type_name, "Haswell-x86_64-cpu");
        assert_eq!(haswell.alias_of.as_deref(), Some("Haswell-v1"));
        assert_eq!(
            (haswell.family, haswell.model, haswell.stepping),
            (6, 60, 4)
        );
        assert_eq!(haswell.model_id, "Intel Core Processor (Haswell)");
        let no_tsx = model("Haswell-noTSX");
        assert_eq!(no_tsx.alias_of.as_deref(), Some("Haswell-v2"));
        assert_eq!(no_tsx.stepping, 1);
        let (hle, rtm) = (1 << 4, 1 << 11);
        assert_eq!(haswell.mask(7, Some(0), Reg::Ebx) & (hle | rtm), hle | rtm);
        assert_eq!(no_tsx.mask(7, Some(0), Reg::Ebx) & (hle | rtm), 0);
        // Versions accumulate: v3 turns TSX back on and adds spec-ctrl, v4 drops TSX again.
        let spec_ctrl = 1 << 26;
        assert_eq!(
            model("Haswell-v3").mask(7, Some(0), Reg::Edx) & spec_ctrl,
            spec_ctrl
        );
        assert_eq!(model("Haswell-v4").mask(7, Some(0), Reg::Ebx) & hle, 0);
        assert_eq!(
            model("Haswell-v4").mask(7, Some(0), Reg::Edx) & spec_ctrl,
            spec_ctrl
        );
        assert_eq!(model("Haswell-v4").alias_of, None);
        assert_eq!(&model("EPYC").vendor, b"AuthenticAMD");
        assert_eq!(model("Icelake-Server-v4").model, 106);
    }

    #[test]
    fn haswell_under_kvm() {
        let haswell = model("Haswell");
        let c = apply(haswell, &supported(), &[], &CpuTopology::default()).unwrap();
        let r = |leaf, sub, reg| register(&c, leaf, sub, reg);
        let sig = crate::cpuid::signature(&c);
        assert_eq!(sig.vendor, "GenuineIntel");
        assert_eq!((sig.family, sig.model, sig.stepping), (6, 60, 4));
        assert_eq!(sig.model_id, "Intel Core Processor (Haswell)");
        // Leaf 7: exactly Haswell's bits (all supported here).
        let named: Vec<&str> = crate::cpuid::features(&c)
            .into_iter()
            .filter(|(n, on)| *on && ["hle", "rtm", "avx2", "invpcid", "avx512f"].contains(n))
            .map(|(n, _)| n)
            .collect();
        assert_eq!(named, ["hle", "avx2", "invpcid", "rtm"]);
        assert_eq!(r(7, Some(0), Reg::Ecx), 0);
        assert_eq!(r(6, None, Reg::Eax), 4, "arat");
        // XSAVE: x87, SSE and AVX only; the area ends after AVX's 256 bytes at 576.
        assert_eq!(r(0xd, Some(0), Reg::Eax), 0b111);
        assert_eq!(r(0xd, Some(0), Reg::Ebx), 832);
        assert_eq!(r(0xd, Some(1), Reg::Eax), 1, "xsaveopt only");
        assert_eq!(r(0xd, Some(2), Reg::Eax), 256);
        assert!(c
            .as_slice()
            .iter()
            .all(|e| !(e.function == 0xd && e.index == 5)));
        // Intel: no AMD aliases in 0x80000001:EDX.
        assert_eq!(r(EXT + 1, None, Reg::Edx), LM | SYSCALL | NX | (1 << 27));
        // What a KVM lacks of the model, in QEMU's feature-word order.
        assert!(haswell.unavailable(&supported()).is_empty());
        let mut poor = supported();
        for e in poor.as_mut_slice() {
            match e.function {
                1 => e.ecx &= !XSAVE,
                7 => e.ebx &= !(1 << 5),
                _ => {}
            }
        }
        assert_eq!(haswell.unavailable(&poor), ["xsave", "avx2"]);
        // Without XSAVE from KVM the guest gets no XSAVE leaf.
        let c = apply(haswell, &poor, &[], &CpuTopology::default()).unwrap();
        assert_eq!(register(&c, 0xd, Some(0), Reg::Eax), 0);
    }

    #[test]
    fn missing_features_are_worded_as_qemu() {
        let mut poor = supported();
        for e in poor.as_mut_slice() {
            match e.function {
                1 => e.ecx &= !XSAVE,
                0xd => e.eax &= !1,
                _ => {}
            }
        }
        let haswell = CpuModel::Named(model("Haswell"));
        let lines = missing_features(haswell, &[], &poor);
        assert_eq!(
            lines,
            [
                "host doesn't support requested feature: CPUID.01H:ECX.xsave [bit 26]",
                "host doesn't support requested feature: CPUID.0DH:EAX.xsaveopt [bit 0]",
            ]
        );
        // -xsave silences its line; +svm asks for one KVM lacks here.
        let asked = [("xsave".to_string(), false), ("3dnow".to_string(), true)];
        assert_eq!(
            missing_features(haswell, &asked, &poor),
            [
                "host doesn't support requested feature: CPUID.80000001H:EDX.3dnow [bit 31]",
                "host doesn't support requested feature: CPUID.0DH:EAX.xsaveopt [bit 0]",
            ]
        );
        assert!(missing_features(CpuModel::Host, &[], &poor).is_empty());
    }

    #[test]
    fn levels_rise_to_the_leaves_of_requested_features() {
        let on = |f: &str| vec![(f.to_string(), true)];
        let lv = |name: &str, f: &[(String, bool)]| levels(model(name), f);
        assert_eq!(lv("486", &[]).level, 1);
        assert_eq!(lv("486", &[]).xlevel, 0);
        assert_eq!(lv("486", &on("arat")).level, 6);
        assert_eq!(lv("phenom", &on("fsgsbase")).level, 7);
        assert_eq!(lv("phenom", &on("xsaveopt")).level, 0xd);
        assert_eq!(lv("486", &on("3dnow")).xlevel, EXT + 1);
        assert_eq!(lv("486", &on("invtsc")).xlevel, EXT + 7);
        assert_eq!(lv("athlon", &on("svm")).xlevel, EXT + 0xa);
        assert_eq!(lv("phenom", &on("xstore")).xlevel2, 0xc000_0001);
        // Already high enough: unchanged; a feature turned off raises nothing.
        let many = [("arat".to_string(), true), ("fsgsbase".to_string(), true)];
        assert_eq!(lv("SandyBridge", &many).level, 0xd);
        assert_eq!(lv("486", &[("arat".to_string(), false)]).level, 1);
        // The guest's CPUID follows: leaf 6 exists for 486,+arat.
        let c = apply(
            model("486"),
            &supported(),
            &on("arat"),
            &CpuTopology::default(),
        )
        .unwrap();
        assert_eq!(register(&c, 0, None, Reg::Eax), 6);
        assert_eq!(register(&c, 6, None, Reg::Eax), 4);
    }

    #[test]
    fn explicit_levels_stay_and_min_levels_still_rise() {
        let f = [("arat".to_string(), true), ("3dnow".to_string(), true)];
        let fixed = with_levels(model("486"), &[("level".into(), 2), ("xlevel".into(), 0)]);
        assert_eq!(
            levels(fixed, &f),
            Levels {
                level: 2,
                xlevel: 0,
                xlevel2: 0
            }
        );
        let min = with_levels(model("486"), &[("min-level".into(), 4)]);
        assert_eq!(levels(min, &[]).level, 4);
        assert_eq!(levels(min, &f).level, 6);
        assert_eq!(with_levels(model("486"), &[]), model("486"));
    }
}
