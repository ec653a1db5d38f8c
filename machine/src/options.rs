//! Machine options (`-machine q35,usb=on,...`) as data: their types and defaults, which ones
//! machina implements, which values of the others it accepts, and their resolution into the
//! plan's `options` map.

use crate::error::PlanError;
use crate::properties::{decode, parse_size, PropType};
use crate::value::{OnOffAuto, PropValue, Properties};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How machina treats an option.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptionSupport {
    /// The value changes the plan (`usb`, `acpi`, `sata`, ...).
    Implemented,
    /// Any well-typed value is accepted and recorded; it does not change the plan
    /// (`dump-guest-core`, `memory-backend`, `graphics`, ...).
    Any,
    /// Only these values are accepted (what machina builds); others are refused.
    Only(Vec<String>),
    /// A colon-separated accelerator list that must contain `kvm`.
    AccelKvm,
    /// An OnOffAuto that `on` needs the accelerator's SMM for (`smm`); `auto` resolves
    /// to whether it has it.
    AccelSmm,
}

/// One machine option.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct OptionDef {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: PropType,
    /// Default as text; absent when the option is unset by default.
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub support: OptionSupport,
    /// What `auto` resolves to for OnOffAuto options: `on`, `off`, or `follow:OPTION`
    /// (the resolved value of another option). Absent: `auto` stays `auto`.
    #[serde(default)]
    pub auto: Option<String>,
    /// Allowed values of an `enum` option.
    #[serde(default)]
    pub values: Vec<String>,
}

impl OptionDef {
    /// Whether any value of the option is accepted: an option with `{"only": []}`
    /// (`confidential-guest-support`, `memory-encryption`, ...) names something machina lacks, so
    /// introspection leaves it out.
    pub fn usable(&self) -> bool {
        !matches!(&self.support, OptionSupport::Only(v) if v.is_empty())
    }
}

/// Options of a plan after validation, decoded (bools as on/off switches, as `-machine`
/// spells them; OnOffAuto resolved where the option says how), unset options absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedOptions {
    pub values: Properties,
}

impl ResolvedOptions {
    /// True when the option resolved to on.
    pub fn is_on(&self, name: &str) -> bool {
        matches!(
            self.values.get(name),
            Some(PropValue::OnOffAuto(OnOffAuto::On))
        )
    }

    /// A size option in bytes (absent or `0`: `None`).
    pub fn size(&self, name: &str) -> Option<u64> {
        self.values.uint(name).filter(|v| *v != 0)
    }
}

/// Validate `given` against `defs` for machine `machine` (the QOM name prefix in errors) and
/// resolve every option.
pub fn resolve_options(
    machine: &str,
    defs: &[OptionDef],
    given: &[(String, String)],
    accel_smm: bool,
) -> Result<ResolvedOptions, PlanError> {
    let mut raw: BTreeMap<&str, PropValue> = BTreeMap::new();
    for (k, v) in given {
        if k == "type" {
            continue;
        }
        let def =
            defs.iter()
                .find(|d| d.name == *k)
                .ok_or_else(|| PlanError::UnknownMachineOption {
                    machine: machine.to_string(),
                    option: k.clone(),
                })?;
        let canon = decode_option(def, v)?;
        check_support(machine, def, &canon.to_string(), v)?;
        if def.support == OptionSupport::AccelSmm
            && !accel_smm
            && canon == PropValue::OnOffAuto(OnOffAuto::On)
        {
            return Err(PlanError::SmmUnsupported);
        }
        if def.name == "max-ram-below-4g" {
            if let Some(sz) = parse_size(v) {
                if sz > 1 << 32 {
                    return Err(PlanError::MaxRamBelow4gTooLarge(sz));
                }
            }
        }
        raw.insert(def.name.as_str(), canon);
    }
    let mut values = Properties::new();
    for def in defs {
        let v = match raw.get(def.name.as_str()) {
            Some(v) => v.clone(),
            None => match &def.default {
                Some(d) => decode_option(def, d)?,
                None => continue,
            },
        };
        values.insert(def.name.clone(), v);
    }
    // Resolve `auto` in definition order; `follow:` refers to an already resolved option.
    for def in defs {
        let Some(auto) = &def.auto else { continue };
        if !matches!(
            values.get(&def.name),
            Some(PropValue::OnOffAuto(OnOffAuto::Auto))
        ) {
            continue;
        }
        let resolved = match auto.strip_prefix("follow:") {
            None if def.support == OptionSupport::AccelSmm => PropValue::OnOffAuto(if accel_smm {
                OnOffAuto::On
            } else {
                OnOffAuto::Off
            }),
            Some(other) => values
                .get(other)
                .cloned()
                .unwrap_or(PropValue::OnOffAuto(OnOffAuto::Off)),
            None => OnOffAuto::parse(auto)
                .map(PropValue::OnOffAuto)
                .unwrap_or_else(|| PropValue::Str(auto.clone())),
        };
        values.insert(def.name.clone(), resolved);
    }
    Ok(ResolvedOptions { values })
}

/// An option's value: `-machine` bools are on/off switches (canonical text `on`/`off`),
/// sizes in bytes, enums verbatim.
fn decode_option(def: &OptionDef, text: &str) -> Result<PropValue, PlanError> {
    Ok(
        match decode(def.ty, &def.name, "machine", &def.values, text)? {
            PropValue::Bool(b) if def.ty == PropType::Bool => {
                PropValue::OnOffAuto(if b { OnOffAuto::On } else { OnOffAuto::Off })
            }
            v => v,
        },
    )
}

fn check_support(
    machine: &str,
    def: &OptionDef,
    canon: &str,
    given: &str,
) -> Result<(), PlanError> {
    let refuse = |supported: String| PlanError::UnsupportedOptionValue {
        machine: machine.to_string(),
        option: def.name.clone(),
        value: given.to_string(),
        supported,
    };
    match &def.support {
        OptionSupport::Implemented | OptionSupport::Any | OptionSupport::AccelSmm => Ok(()),
        OptionSupport::Only(vals) => {
            if vals.iter().any(|v| v == canon) {
                Ok(())
            } else if vals.is_empty() {
                Err(refuse("none".to_string()))
            } else {
                Err(refuse(vals.join(", ")))
            }
        }
        OptionSupport::AccelKvm => {
            if canon.split(':').any(|a| a == "kvm") {
                Ok(())
            } else {
                Err(refuse("kvm".to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Catalog, PlanError, PlanRequest};

    fn smm(machine: &str, accel_smm: bool) -> Result<String, PlanError> {
        let req = PlanRequest {
            accel_smm,
            ..PlanRequest::default().with_machine_arg(machine)
        };
        Catalog::builtin()
            .plan(&req)
            .map(|p| p.options.text("smm").unwrap_or_default())
    }

    /// `smm=auto` follows the accelerator (on under qtest, off under KVM here), as QEMU's
    /// x86_machine_is_smm_enabled; `smm=on` without SMM is QEMU's error.
    #[test]
    fn smm_follows_the_accelerator() {
        assert_eq!(smm("q35", true).unwrap(), "on");
        assert_eq!(smm("q35", false).unwrap(), "off");
        assert_eq!(smm("pc,smm=on", true).unwrap(), "on");
        assert_eq!(smm("pc,smm=off", true).unwrap(), "off");
        assert_eq!(
            smm("q35,smm=on", false).unwrap_err().to_string(),
            "System Management Mode not supported by this hypervisor."
        );
    }
}
