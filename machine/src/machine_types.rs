//! Machine types as data: the JSON form (`MachineTypeDef`, inheriting from a newer version as
//! QEMU's `pc_q35_machine_X_Y_options()` call chain does) and the resolved `MachineType` that
//! answers QMP `query-machines` (`MachineInfo`) and drives the planner.

use crate::board::BoardDef;
use crate::options::OptionDef;
use crate::plan::Family;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// One compat (global) property of a machine type: `qom-type.property=value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CompatProperty {
    pub qom_type: String,
    pub property: String,
    pub value: String,
}

/// A machine type as written in a catalog file. Every field except `name`, `alias` and
/// `is-default` is inherited from `inherits`; compat properties accumulate (the parent's
/// first, then `compat-sets` in order, then `compat-props`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MachineTypeDef {
    pub name: String,
    #[serde(default)]
    pub inherits: Option<String>,
    #[serde(default)]
    pub alias: Option<String>,
    #[serde(default)]
    pub is_default: bool,
    #[serde(default)]
    pub board: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// QEMU's `MachineClass.family` (`pc_q35`), used to sort `-machine help`.
    #[serde(default)]
    pub help_family: Option<String>,
    #[serde(default)]
    pub cpu_max: Option<u32>,
    #[serde(default)]
    pub hotpluggable_cpus: Option<bool>,
    /// QEMU's `smp_props.prefer_sockets` (machine types before 6.2).
    #[serde(default)]
    pub smp_prefer_sockets: Option<bool>,
    #[serde(default)]
    pub numa_mem_supported: Option<bool>,
    #[serde(default)]
    pub deprecated: Option<bool>,
    #[serde(default)]
    pub default_cpu_type: Option<String>,
    #[serde(default)]
    pub default_ram_id: Option<String>,
    #[serde(default)]
    pub acpi: Option<bool>,
    #[serde(default)]
    pub compat_sets: Vec<String>,
    #[serde(default)]
    pub compat_props: Vec<CompatProperty>,
}

/// A resolved machine type. Serializes as QMP `MachineInfo` (without `compat-props`; see
/// [`MachineType::machine_info`]).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct MachineType {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(skip_serializing_if = "is_false")]
    pub is_default: bool,
    pub cpu_max: u32,
    pub hotpluggable_cpus: bool,
    #[serde(skip)]
    pub smp_prefer_sockets: bool,
    pub numa_mem_supported: bool,
    pub deprecated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_cpu_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_ram_id: Option<String>,
    pub acpi: bool,
    #[serde(skip)]
    pub compat_props: Vec<CompatProperty>,
    #[serde(skip)]
    pub family: Family,
    #[serde(skip)]
    pub description: String,
    #[serde(skip)]
    pub help_family: Option<String>,
    #[serde(skip)]
    pub board: Arc<BoardDef>,
    #[serde(skip)]
    pub options: Arc<Vec<OptionDef>>,
    /// Compat properties by QOM type, each list in application order (later wins).
    #[serde(skip)]
    pub(crate) compat_index: HashMap<String, Vec<(String, String)>>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl MachineType {
    /// QMP `MachineInfo`; `compat-props` included when asked (`query-machines
    /// compat-props=true`).
    pub fn machine_info(&self, with_compat_props: bool) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if with_compat_props {
            if let Some(obj) = v.as_object_mut() {
                obj.insert(
                    "compat-props".to_string(),
                    serde_json::to_value(&self.compat_props).unwrap_or_default(),
                );
            }
        }
        v
    }

    /// QOM class name (`pc-q35-10.2-machine`).
    pub fn qom_type(&self) -> String {
        format!("{}-machine", self.name)
    }

    /// The option definition `name`.
    pub fn option(&self, name: &str) -> Option<&OptionDef> {
        self.options.iter().find(|o| o.name == name)
    }

    pub(crate) fn build_compat_index(
        props: &[CompatProperty],
    ) -> HashMap<String, Vec<(String, String)>> {
        let mut idx: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for p in props {
            idx.entry(p.qom_type.clone())
                .or_default()
                .push((p.property.clone(), p.value.clone()));
        }
        idx
    }
}
