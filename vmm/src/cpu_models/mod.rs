//! Named x86 CPU models as data (facts from QEMU's builtin_x86_defs, target/i386/cpu.c):
//! every model, version and alias QEMU registers, read from resources/cpu-models.json, and
//! `-cpu` level properties on top of one. How a model becomes a guest CPUID under KVM is
//! [`apply()`] (apply.rs).

use crate::cpuid::Reg;

mod apply;
#[cfg(test)]
mod tests;

pub use apply::{apply, levels, missing_features, Levels};

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
static MODELS_JSON: &str = include_str!("../../../resources/cpu-models.json");

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
