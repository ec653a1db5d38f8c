//! The catalog: machine types, boards, option sets and device types loaded from JSON (the
//! built-in files under `resources/machines/`, embedded at build time, plus any user file
//! merged with `-machine-definition FILE`), resolved once and queried many times.

use crate::board::BoardDef;
use crate::device_types::{
    resolution_order, resolve_device_types, DeviceType, DeviceTypeDef, WalkError,
    MAX_INHERITANCE_DEPTH,
};
use crate::error::CatalogError;
use crate::machine_types::{CompatProperty, MachineType, MachineTypeDef};
use crate::options::OptionDef;
use crate::properties::PropertyDef;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The built-in catalog files, in load order.
const BUILTIN_FILES: &[(&str, &str)] = &[
    (
        "options.json",
        include_str!("../../resources/machines/options.json"),
    ),
    (
        "boards.json",
        include_str!("../../resources/machines/boards.json"),
    ),
    (
        "devices.json",
        include_str!("../../resources/machines/devices.json"),
    ),
    (
        "machine-types.json",
        include_str!("../../resources/machines/machine-types.json"),
    ),
];

/// One catalog file. Every key is optional; entries replace earlier entries of the same name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CatalogFile {
    /// Free text, ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default)]
    pub option_sets: BTreeMap<String, Vec<OptionDef>>,
    #[serde(default)]
    pub boards: Vec<BoardDef>,
    #[serde(default)]
    pub compat_sets: BTreeMap<String, Vec<CompatProperty>>,
    #[serde(default)]
    pub machine_types: Vec<MachineTypeDef>,
    #[serde(default)]
    pub property_sets: BTreeMap<String, Vec<PropertyDef>>,
    #[serde(default)]
    pub device_types: Vec<DeviceTypeDef>,
}

impl CatalogFile {
    fn merge(&mut self, other: CatalogFile) {
        self.option_sets.extend(other.option_sets);
        self.compat_sets.extend(other.compat_sets);
        self.property_sets.extend(other.property_sets);
        replace_or_push(&mut self.boards, other.boards, |b| b.name.clone());
        replace_or_push(&mut self.machine_types, other.machine_types, |m| {
            m.name.clone()
        });
        replace_or_push(&mut self.device_types, other.device_types, |d| {
            d.name.clone()
        });
    }
}

/// Entries of `from` replace the entry of the same key in `into`, or are appended. Linear:
/// a file may hold many thousands of entries.
fn replace_or_push<T>(into: &mut Vec<T>, from: Vec<T>, key: impl Fn(&T) -> String) {
    let mut index: HashMap<String, usize> =
        into.iter().enumerate().map(|(i, e)| (key(e), i)).collect();
    for item in from {
        let k = key(&item);
        match index.get(&k) {
            Some(&i) => into[i] = item,
            None => {
                index.insert(k, into.len());
                into.push(item);
            }
        }
    }
}

/// Machine and device types, resolved and indexed.
#[derive(Debug, Clone)]
pub struct Catalog {
    defs: CatalogFile,
    machines: Vec<MachineType>,
    /// Names and aliases to index in `machines`.
    machine_index: HashMap<String, usize>,
    default_machine: Option<usize>,
    devices: Vec<DeviceType>,
    /// Names and qdev aliases to index in `devices`.
    device_index: HashMap<String, usize>,
}

/// The largest machine definition file `load_file` reads (16 MiB; the built-in catalog is
/// well under 1 MiB).
pub const MAX_DEFINITION_FILE: u64 = 16 << 20;

impl Catalog {
    /// The built-in catalog, parsed and resolved once per process.
    pub fn builtin() -> &'static Catalog {
        static BUILTIN: OnceLock<Catalog> = OnceLock::new();
        BUILTIN.get_or_init(|| match Self::try_builtin() {
            Ok(c) => c,
            // The embedded files are checked by the crate's tests; a broken build cannot load.
            Err(e) => panic!("built-in machine catalog is invalid: {e}"),
        })
    }

    /// Parse and resolve the built-in files (what `builtin()` caches).
    pub fn try_builtin() -> Result<Catalog, CatalogError> {
        let mut defs = CatalogFile::default();
        for (_, text) in BUILTIN_FILES {
            defs.merge(serde_json::from_str(text)?);
        }
        Self::from_defs(defs)
    }

    /// An empty catalog (no machine types, no devices).
    pub fn empty() -> Catalog {
        Catalog {
            defs: CatalogFile::default(),
            machines: Vec::new(),
            machine_index: HashMap::new(),
            default_machine: None,
            devices: Vec::new(),
            device_index: HashMap::new(),
        }
    }

    /// Merge a catalog file given as JSON text (same format as the built-in files) and
    /// re-resolve. On error the catalog is unchanged.
    pub fn merge_json(&mut self, text: &str) -> Result<(), CatalogError> {
        let file: CatalogFile = serde_json::from_str(text)?;
        let mut defs = self.defs.clone();
        defs.merge(file);
        *self = Self::from_defs(defs)?;
        Ok(())
    }

    /// Merge a catalog file from disk (`-machine-definition FILE`).
    ///
    /// Only a regular file of at most [`MAX_DEFINITION_FILE`] bytes is read (`/dev/zero` or a
    /// FIFO would otherwise be read without end or block).
    pub fn load_file(&mut self, path: &Path) -> Result<(), CatalogError> {
        use std::io::Read;
        let io = |source| CatalogError::Io {
            path: path.to_path_buf(),
            source,
        };
        let refuse = |why: String| io(std::io::Error::new(std::io::ErrorKind::InvalidInput, why));
        // The type is checked before opening: opening a FIFO would block.
        if !std::fs::metadata(path).map_err(io)?.is_file() {
            return Err(refuse("not a regular file".into()));
        }
        let file = std::fs::File::open(path).map_err(io)?;
        if !file.metadata().map_err(io)?.is_file() {
            return Err(refuse("not a regular file".into()));
        }
        let mut text = String::new();
        file.take(MAX_DEFINITION_FILE + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
        if text.len() as u64 > MAX_DEFINITION_FILE {
            return Err(refuse(format!(
                "larger than the limit of {MAX_DEFINITION_FILE} bytes (16 MiB)"
            )));
        }
        self.merge_json(&text)
    }

    /// The merged definitions (what a user file would extend).
    pub fn definitions(&self) -> &CatalogFile {
        &self.defs
    }

    fn from_defs(defs: CatalogFile) -> Result<Catalog, CatalogError> {
        let devices = resolve_device_types(&defs.device_types, &defs.property_sets)?;
        let mut device_index = HashMap::new();
        for (i, d) in devices.iter().enumerate() {
            device_index.insert(d.name.clone(), i);
        }
        for (i, d) in devices.iter().enumerate() {
            if let Some(a) = &d.alias {
                device_index.entry(a.clone()).or_insert(i);
            }
        }

        let mut boards: HashMap<String, (Arc<BoardDef>, Arc<Vec<OptionDef>>)> = HashMap::new();
        for b in &defs.boards {
            for imp in &b.implicit_pci {
                if !device_index.contains_key(&imp.ty) {
                    return Err(CatalogError::UnknownImplicitDevice {
                        board: b.name.clone(),
                        device: imp.ty.clone(),
                    });
                }
            }
            let mut opts: Vec<OptionDef> = Vec::new();
            for set in &b.option_sets {
                let list =
                    defs.option_sets
                        .get(set)
                        .ok_or_else(|| CatalogError::UnknownOptionSet {
                            board: b.name.clone(),
                            set: set.clone(),
                        })?;
                for o in list {
                    match opts.iter_mut().find(|e| e.name == o.name) {
                        Some(e) => *e = o.clone(),
                        None => opts.push(o.clone()),
                    }
                }
            }
            boards.insert(b.name.clone(), (Arc::new(b.clone()), Arc::new(opts)));
        }

        let by_name: HashMap<&str, usize> = defs
            .machine_types
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.as_str(), i))
            .collect();
        let types = &defs.machine_types;
        let parent = |i: usize| match &types[i].inherits {
            None => Ok(None),
            Some(p) => by_name.get(p.as_str()).copied().map(Some).ok_or(p.clone()),
        };
        let order = resolution_order(types.len(), parent, |i| types[i].name.clone()).map_err(
            |e| match e {
                WalkError::UnknownParent { name, parent } => {
                    CatalogError::UnknownParent { name, parent }
                }
                WalkError::Cycle(name) => CatalogError::InheritanceCycle(name),
                WalkError::TooDeep(name) => CatalogError::TooDeep {
                    kind: "machine type",
                    name,
                    limit: MAX_INHERITANCE_DEPTH,
                },
            },
        )?;
        // Each type's inherited fields are folded once, from its parent's fold.
        let mut folds: Vec<Option<MachineFold>> = vec![None; types.len()];
        for i in order {
            let mut fold = match parent(i).ok().flatten() {
                Some(p) => folds[p].clone().unwrap_or_default(),
                None => MachineFold::default(),
            };
            fold.extend(&types[i], &defs)?;
            folds[i] = Some(fold);
        }
        let mut machines = Vec::with_capacity(types.len());
        for (def, fold) in types.iter().zip(folds) {
            machines.push(resolve_machine(def, fold.unwrap_or_default(), &boards)?);
        }
        let mut machine_index = HashMap::new();
        let mut default_machine = None;
        for (i, m) in machines.iter().enumerate() {
            machine_index.insert(m.name.clone(), i);
        }
        for (i, m) in machines.iter().enumerate() {
            if let Some(a) = &m.alias {
                if let Some(&other) = machine_index.get(a) {
                    if other != i {
                        return Err(CatalogError::DuplicateAlias {
                            alias: a.clone(),
                            name: m.name.clone(),
                            other: machines[other].name.clone(),
                        });
                    }
                }
                machine_index.insert(a.clone(), i);
            }
            if m.is_default {
                if let Some(d) = default_machine {
                    let prev: &MachineType = &machines[d];
                    return Err(CatalogError::DuplicateDefault(
                        prev.name.clone(),
                        m.name.clone(),
                    ));
                }
                default_machine = Some(i);
            }
        }
        Ok(Catalog {
            defs,
            machines,
            machine_index,
            default_machine,
            devices,
            device_index,
        })
    }

    /// Machine types in definition order.
    pub fn machine_types(&self) -> &[MachineType] {
        &self.machines
    }

    /// A machine type by name or alias.
    pub fn resolve_machine(&self, name: &str) -> Option<&MachineType> {
        self.machine_index.get(name).map(|&i| &self.machines[i])
    }

    /// The machine used when none is named (`is-default`).
    pub fn default_machine(&self) -> Option<&MachineType> {
        self.default_machine.map(|i| &self.machines[i])
    }

    /// A device type by QOM name or qdev alias.
    pub fn device_type(&self, name: &str) -> Option<&DeviceType> {
        self.device_index.get(name).map(|&i| &self.devices[i])
    }

    /// A device type by libvirt controller model name (`dmi-to-pci-bridge`), for mapping
    /// libvirt XML; QEMU itself does not accept these names as drivers.
    pub fn device_type_by_libvirt_model(&self, model: &str) -> Option<&DeviceType> {
        self.devices
            .iter()
            .find(|d| d.libvirt_model.as_deref() == Some(model))
    }

    /// All device types (abstract ones included) in definition order.
    pub fn device_types(&self) -> &[DeviceType] {
        &self.devices
    }
}

/// The fields a machine type inherits, folded from the root of its chain down.
#[derive(Clone, Default)]
struct MachineFold {
    board: Option<String>,
    description: Option<String>,
    help_family: Option<String>,
    cpu_max: Option<u32>,
    hotpluggable_cpus: Option<bool>,
    smp_prefer_sockets: Option<bool>,
    numa_mem_supported: Option<bool>,
    deprecated: Option<bool>,
    default_cpu_type: Option<String>,
    default_ram_id: Option<String>,
    acpi: Option<bool>,
    compat_props: Vec<CompatProperty>,
}

impl MachineFold {
    fn extend(&mut self, d: &MachineTypeDef, defs: &CatalogFile) -> Result<(), CatalogError> {
        macro_rules! take {
            ($field:ident) => {
                if d.$field.is_some() {
                    self.$field = d.$field.clone();
                }
            };
        }
        take!(board);
        take!(description);
        take!(help_family);
        take!(cpu_max);
        take!(hotpluggable_cpus);
        take!(smp_prefer_sockets);
        take!(numa_mem_supported);
        take!(deprecated);
        take!(default_cpu_type);
        take!(default_ram_id);
        take!(acpi);
        for set in &d.compat_sets {
            let list = defs
                .compat_sets
                .get(set)
                .ok_or_else(|| CatalogError::UnknownCompatSet {
                    name: d.name.clone(),
                    set: set.clone(),
                })?;
            self.compat_props.extend(list.iter().cloned());
        }
        self.compat_props.extend(d.compat_props.iter().cloned());
        Ok(())
    }
}

fn resolve_machine(
    def: &MachineTypeDef,
    fold: MachineFold,
    boards: &HashMap<String, (Arc<BoardDef>, Arc<Vec<OptionDef>>)>,
) -> Result<MachineType, CatalogError> {
    let MachineFold {
        board,
        description,
        help_family,
        cpu_max,
        hotpluggable_cpus,
        smp_prefer_sockets,
        numa_mem_supported,
        deprecated,
        default_cpu_type,
        default_ram_id,
        acpi,
        compat_props,
    } = fold;
    let board_name = board.ok_or_else(|| CatalogError::MissingField(def.name.clone(), "board"))?;
    let (board, options) =
        boards
            .get(&board_name)
            .cloned()
            .ok_or_else(|| CatalogError::UnknownBoard {
                name: def.name.clone(),
                board: board_name.clone(),
            })?;
    let compat_index = MachineType::build_compat_index(&compat_props);
    Ok(MachineType {
        name: def.name.clone(),
        alias: def.alias.clone(),
        is_default: def.is_default,
        cpu_max: cpu_max.ok_or_else(|| CatalogError::MissingField(def.name.clone(), "cpu-max"))?,
        hotpluggable_cpus: hotpluggable_cpus.unwrap_or(false),
        smp_prefer_sockets: smp_prefer_sockets.unwrap_or(false),
        numa_mem_supported: numa_mem_supported.unwrap_or(false),
        deprecated: deprecated.unwrap_or(false),
        default_cpu_type,
        default_ram_id,
        acpi: acpi.unwrap_or(false),
        compat_props,
        family: board.family,
        description: description.unwrap_or_default(),
        help_family,
        board,
        options,
        compat_index,
    })
}
