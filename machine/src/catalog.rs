//! The catalog: machine types, boards, option sets and device types loaded from JSON (the
//! built-in files under `resources/machines/`, embedded at build time, plus any user file
//! merged with `-machine-definition FILE`), resolved once and queried many times.

use crate::board::BoardDef;
use crate::device_types::{
    resolution_order, resolve_device_type, resolve_device_types, DeviceDefs, DeviceType,
    DeviceTypeDef, WalkError, MAX_INHERITANCE_DEPTH,
};
use crate::error::CatalogError;
use crate::machine_types::{CompatProperty, MachineType, MachineTypeDef};
use crate::options::OptionDef;
use crate::properties::PropertyDef;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
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

// The built-in catalog split per definition at build time (build.rs): `OPTION_SETS`,
// `COMPAT_SETS`, `PROPERTY_SETS`, `BOARDS` as (name, JSON) and `MACHINE_TYPES`,
// `DEVICE_TYPES` as `BuiltinType`s.
include!(concat!(env!("OUT_DIR"), "/builtin_catalog.rs"));

/// A built-in machine or device type: what the catalog indexes it by, and its JSON.
struct BuiltinType {
    name: &'static str,
    alias: Option<&'static str>,
    is_default: bool,
    json: &'static str,
}

/// One definition: parsed from its built-in JSON text on first use, or given parsed. Boxed:
/// an unparsed slot costs a pointer, not a whole definition (the index of the built-in
/// catalog is made at every start, before the QMP greeting).
#[derive(Debug)]
struct Def<T> {
    json: &'static str,
    value: OnceLock<Box<T>>,
}

impl<T: serde::de::DeserializeOwned> Def<T> {
    fn builtin(json: &'static str) -> Self {
        Def {
            json,
            value: OnceLock::new(),
        }
    }

    fn parsed(value: T) -> Self {
        Def {
            json: "",
            value: OnceLock::from(Box::new(value)),
        }
    }

    fn get(&self) -> &T {
        self.value
            .get_or_init(|| match serde_json::from_str(self.json) {
                Ok(v) => Box::new(v),
                // Only built-in definitions are parsed here; the tests parse them all.
                Err(e) => panic!("built-in machine catalog is invalid: {e}"),
            })
    }
}

/// Named definitions in definition order, found by name.
#[derive(Debug)]
struct Defs<T> {
    names: Vec<Cow<'static, str>>,
    defs: Vec<Def<T>>,
    by_name: HashMap<Cow<'static, str>, usize>,
}

impl<T: serde::de::DeserializeOwned> Defs<T> {
    fn new(entries: impl Iterator<Item = (Cow<'static, str>, Def<T>)>) -> Self {
        let n = entries.size_hint().0;
        let mut defs = Defs {
            names: Vec::with_capacity(n),
            defs: Vec::with_capacity(n),
            by_name: HashMap::with_capacity(n),
        };
        for (name, def) in entries {
            // Entries are merged already: a name is unique.
            defs.by_name.insert(name.clone(), defs.names.len());
            defs.names.push(name);
            defs.defs.push(def);
        }
        defs
    }

    fn builtin(entries: &'static [(&'static str, &'static str)]) -> Self {
        Self::new(
            entries
                .iter()
                .map(|(name, json)| (Cow::Borrowed(*name), Def::builtin(json))),
        )
    }

    fn parsed(entries: impl IntoIterator<Item = (String, T)>) -> Self {
        Self::new(
            entries
                .into_iter()
                .map(|(name, value)| (Cow::Owned(name), Def::parsed(value))),
        )
    }

    fn len(&self) -> usize {
        self.defs.len()
    }

    fn at(&self, i: usize) -> &T {
        self.defs[i].get()
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    fn get(&self, name: &str) -> Option<&T> {
        self.index_of(name).map(|i| self.at(i))
    }

    /// Every definition, parsed, by name in definition order.
    fn all(&self) -> impl Iterator<Item = (String, T)> + '_
    where
        T: Clone,
    {
        (0..self.len()).map(|i| (self.names[i].to_string(), self.at(i).clone()))
    }
}

/// Machine and device types, indexed, resolved when first asked for. Cheap to clone (the
/// clones share one set of definitions and resolutions).
#[derive(Debug, Clone)]
pub struct Catalog {
    inner: Arc<Inner>,
}

/// Board, with the option definitions of its option sets merged in order.
type ResolvedBoard = (Arc<BoardDef>, Arc<Vec<OptionDef>>);

/// A catalog's definitions (the built-in ones parsed one by one as they are needed), its
/// indexes, and its types resolved on first use.
#[derive(Debug)]
struct Inner {
    option_sets: Defs<Vec<OptionDef>>,
    compat_sets: Defs<Vec<CompatProperty>>,
    property_sets: Defs<Vec<PropertyDef>>,
    boards: Defs<BoardDef>,
    /// Machine type names (not aliases) index these: a type's parent is named.
    machine_defs: Defs<MachineTypeDef>,
    device_defs: Defs<DeviceTypeDef>,
    /// Names and aliases to index in `machine_defs`.
    machine_index: HashMap<Cow<'static, str>, usize>,
    default_machine: Option<usize>,
    /// qdev aliases to index in `device_defs` (a name wins over an alias).
    device_aliases: HashMap<Cow<'static, str>, usize>,
    /// Resolved boards, machine and device types by definition index, filled on first
    /// use (or all at once when a catalog is checked: user files are, so that an error
    /// shows at load).
    /// Boxed, as `Def`'s values: most slots stay empty for the life of the process.
    resolved_boards: Vec<OnceLock<ResolvedBoard>>,
    machines: Vec<OnceLock<Box<MachineType>>>,
    devices: Vec<OnceLock<Box<DeviceType>>>,
}

impl DeviceDefs for Inner {
    fn count(&self) -> usize {
        self.device_defs.len()
    }
    fn def(&self, i: usize) -> &DeviceTypeDef {
        self.device_defs.at(i)
    }
    fn index_of(&self, name: &str) -> Option<usize> {
        self.device_defs.index_of(name)
    }
    fn property_set(&self, name: &str) -> Option<&[PropertyDef]> {
        self.property_sets.get(name).map(Vec::as_slice)
    }
}

/// All machine or device types of a catalog in definition order, each resolved as it is
/// reached.
pub struct Resolved<'a, T> {
    catalog: &'a Catalog,
    len: usize,
    get: fn(&'a Catalog, usize) -> &'a T,
}

impl<'a, T> Resolved<'a, T> {
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &'a T> + 'a {
        let (catalog, get) = (self.catalog, self.get);
        (0..self.len).map(move |i| get(catalog, i))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<'a, T: 'a> IntoIterator for Resolved<'a, T> {
    type Item = &'a T;
    type IntoIter = Box<dyn ExactSizeIterator<Item = &'a T> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

/// The largest machine definition file `load_file` reads (16 MiB; the built-in catalog is
/// well under 1 MiB).
pub const MAX_DEFINITION_FILE: u64 = 16 << 20;

impl Catalog {
    /// The built-in catalog, indexed once per process from the definitions build.rs split
    /// out. Definitions are parsed and types resolved when first looked up, so that
    /// starting a machine touches only its own machine type, board and devices.
    pub fn builtin() -> &'static Catalog {
        static BUILTIN: OnceLock<Catalog> = OnceLock::new();
        BUILTIN.get_or_init(Self::lazy_builtin)
    }

    fn lazy_builtin() -> Catalog {
        fn types<T: serde::de::DeserializeOwned>(list: &'static [BuiltinType]) -> Defs<T> {
            Defs::new(
                list.iter()
                    .map(|t| (Cow::Borrowed(t.name), Def::builtin(t.json))),
            )
        }
        let inner = Inner {
            option_sets: Defs::builtin(OPTION_SETS),
            compat_sets: Defs::builtin(COMPAT_SETS),
            property_sets: Defs::builtin(PROPERTY_SETS),
            boards: Defs::builtin(BOARDS),
            machine_defs: types(MACHINE_TYPES),
            device_defs: types(DEVICE_TYPES),
            machine_index: HashMap::new(),
            default_machine: None,
            device_aliases: HashMap::new(),
            resolved_boards: Vec::new(),
            machines: Vec::new(),
            devices: Vec::new(),
        };
        let machines = MACHINE_TYPES.iter().map(|t| {
            (
                Cow::Borrowed(t.name),
                t.alias.map(Cow::Borrowed),
                t.is_default,
            )
        });
        let devices = DEVICE_TYPES.iter().map(|t| t.alias.map(Cow::Borrowed));
        match Self::index(inner, machines, devices, false) {
            Ok(c) => c,
            // The embedded files are checked by the crate's tests (`try_builtin`); a broken
            // build cannot load.
            Err(e) => panic!("built-in machine catalog is invalid: {e}"),
        }
    }

    /// Parse the built-in files whole, and resolve and check every type (what `builtin()`
    /// does lazily, from the same files).
    pub fn try_builtin() -> Result<Catalog, CatalogError> {
        let mut defs = CatalogFile::default();
        for (_, text) in BUILTIN_FILES {
            defs.merge(serde_json::from_str(text)?);
        }
        Self::from_file(defs)
    }

    /// An empty catalog (no machine types, no devices).
    pub fn empty() -> Catalog {
        match Self::from_file(CatalogFile::default()) {
            Ok(c) => c,
            Err(e) => unreachable!("an empty catalog has nothing to refuse: {e}"),
        }
    }

    /// Merge a catalog file given as JSON text (same format as the built-in files) and
    /// re-resolve. On error the catalog is unchanged.
    pub fn merge_json(&mut self, text: &str) -> Result<(), CatalogError> {
        let file: CatalogFile = serde_json::from_str(text)?;
        let mut defs = self.definitions();
        defs.merge(file);
        *self = Self::from_file(defs)?;
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

    /// The merged definitions (what a user file extends), every one parsed.
    pub fn definitions(&self) -> CatalogFile {
        let inner = &self.inner;
        CatalogFile {
            comment: None,
            option_sets: inner.option_sets.all().collect(),
            boards: inner.boards.all().map(|(_, b)| b).collect(),
            compat_sets: inner.compat_sets.all().collect(),
            machine_types: inner.machine_defs.all().map(|(_, m)| m).collect(),
            property_sets: inner.property_sets.all().collect(),
            device_types: inner.device_defs.all().map(|(_, d)| d).collect(),
        }
    }

    /// A catalog of the parsed definitions `defs`, every type resolved and checked now.
    fn from_file(defs: CatalogFile) -> Result<Catalog, CatalogError> {
        let machines: Vec<_> = defs
            .machine_types
            .iter()
            .map(|m| {
                (
                    Cow::Owned(m.name.clone()),
                    m.alias.clone().map(Cow::Owned),
                    m.is_default,
                )
            })
            .collect();
        let devices: Vec<_> = defs
            .device_types
            .iter()
            .map(|d| d.alias.clone().map(Cow::Owned))
            .collect();
        let inner = Inner {
            option_sets: Defs::parsed(defs.option_sets),
            compat_sets: Defs::parsed(defs.compat_sets),
            property_sets: Defs::parsed(defs.property_sets),
            boards: Defs::parsed(defs.boards.into_iter().map(|b| (b.name.clone(), b))),
            machine_defs: Defs::parsed(defs.machine_types.into_iter().map(|m| (m.name.clone(), m))),
            device_defs: Defs::parsed(defs.device_types.into_iter().map(|d| (d.name.clone(), d))),
            machine_index: HashMap::new(),
            default_machine: None,
            device_aliases: HashMap::new(),
            resolved_boards: Vec::new(),
            machines: Vec::new(),
            devices: Vec::new(),
        };
        Self::index(inner, machines.into_iter(), devices.into_iter(), true)
    }

    /// Index `inner`'s definitions by the machine types' (name, alias, is-default) and the
    /// device types' aliases, both in definition order, and check the aliases and the
    /// default. With `resolve_all` every board and type is resolved and checked now, in
    /// linear time however deep the chains; otherwise each resolves on first use.
    fn index(
        mut inner: Inner,
        machines: impl Iterator<Item = (Cow<'static, str>, Option<Cow<'static, str>>, bool)>,
        device_aliases: impl Iterator<Item = Option<Cow<'static, str>>>,
        resolve_all: bool,
    ) -> Result<Catalog, CatalogError> {
        for (i, alias) in device_aliases.enumerate() {
            if let Some(a) = alias {
                if inner.device_defs.index_of(&a).is_none() {
                    inner.device_aliases.entry(a).or_insert(i);
                }
            }
        }
        let devices = match resolve_all {
            true => resolve_device_types(&inner)?,
            false => Vec::new(),
        };
        let boards = match resolve_all {
            true => (0..inner.boards.len())
                .map(|i| resolve_board(&inner, i))
                .collect::<Result<Vec<_>, _>>()?,
            false => Vec::new(),
        };
        inner.resolved_boards = boards.into_iter().map(OnceLock::from).collect();
        inner
            .resolved_boards
            .resize_with(inner.boards.len(), OnceLock::new);
        let machines_resolved = match resolve_all {
            true => resolve_machines(&inner)?,
            false => Vec::new(),
        };

        let mut machine_index: HashMap<Cow<'static, str>, usize> = inner
            .machine_defs
            .by_name
            .iter()
            .map(|(k, &v)| (k.clone(), v))
            .collect();
        let mut default_machine = None;
        for (i, (name, alias, is_default)) in machines.enumerate() {
            if let Some(a) = alias {
                if let Some(&other) = machine_index.get(&a) {
                    if other != i {
                        return Err(CatalogError::DuplicateAlias {
                            alias: a.to_string(),
                            name: name.to_string(),
                            other: inner.machine_defs.names[other].to_string(),
                        });
                    }
                }
                machine_index.insert(a, i);
            }
            if is_default {
                if let Some(d) = default_machine {
                    let prev: &Cow<'static, str> = &inner.machine_defs.names[d];
                    return Err(CatalogError::DuplicateDefault(
                        prev.to_string(),
                        name.to_string(),
                    ));
                }
                default_machine = Some(i);
            }
        }
        inner.machine_index = machine_index;
        inner.default_machine = default_machine;
        inner.machines = machines_resolved
            .into_iter()
            .map(|m| OnceLock::from(Box::new(m)))
            .collect();
        inner
            .machines
            .resize_with(inner.machine_defs.len(), OnceLock::new);
        inner.devices = devices
            .into_iter()
            .map(|d| OnceLock::from(Box::new(d)))
            .collect();
        inner
            .devices
            .resize_with(inner.device_defs.len(), OnceLock::new);
        Ok(Catalog {
            inner: Arc::new(inner),
        })
    }

    /// The resolved machine type of definition `i`.
    fn machine_at(&self, i: usize) -> &MachineType {
        self.inner.machines[i].get_or_init(|| match resolve_machine_at(&self.inner, i) {
            Ok(m) => Box::new(m),
            // Only the built-in catalog resolves lazily, and its tests resolve it whole.
            Err(e) => panic!("built-in machine catalog is invalid: {e}"),
        })
    }

    /// The resolved device type of definition `i`.
    fn device_at(&self, i: usize) -> &DeviceType {
        self.inner.devices[i].get_or_init(|| match resolve_device_type(&*self.inner, i) {
            Ok(d) => Box::new(d),
            // Only the built-in catalog resolves lazily, and its tests resolve it whole.
            Err(e) => panic!("built-in machine catalog is invalid: {e}"),
        })
    }

    /// Machine types in definition order.
    pub fn machine_types(&self) -> Resolved<'_, MachineType> {
        Resolved {
            catalog: self,
            len: self.inner.machines.len(),
            get: Catalog::machine_at,
        }
    }

    /// A machine type by name or alias.
    pub fn resolve_machine(&self, name: &str) -> Option<&MachineType> {
        let i = *self.inner.machine_index.get(name)?;
        Some(self.machine_at(i))
    }

    /// The machine used when none is named (`is-default`).
    pub fn default_machine(&self) -> Option<&MachineType> {
        self.inner.default_machine.map(|i| self.machine_at(i))
    }

    /// A device type by QOM name or qdev alias.
    pub fn device_type(&self, name: &str) -> Option<&DeviceType> {
        let i = self
            .inner
            .device_defs
            .index_of(name)
            .or_else(|| self.inner.device_aliases.get(name).copied())?;
        Some(self.device_at(i))
    }

    /// The drive type the board attaches for `-drive if=ide` (an ATAPI one for
    /// `media=cdrom`): the user-creatable type on an `IDE` bus with that `atapi`.
    pub fn ide_drive_type(&self, atapi: bool) -> Option<&str> {
        self.device_types()
            .into_iter()
            .find(|d| d.bus.as_deref() == Some("IDE") && !d.is_abstract && d.atapi == atapi)
            .map(|d| d.name.as_str())
    }

    /// A device type by libvirt controller model name (`dmi-to-pci-bridge`), for mapping
    /// libvirt XML; QEMU itself does not accept these names as drivers.
    pub fn device_type_by_libvirt_model(&self, model: &str) -> Option<&DeviceType> {
        self.device_types()
            .iter()
            .find(|d| d.libvirt_model.as_deref() == Some(model))
    }

    /// All device types (abstract ones included) in definition order.
    pub fn device_types(&self) -> Resolved<'_, DeviceType> {
        Resolved {
            catalog: self,
            len: self.inner.devices.len(),
            get: Catalog::device_at,
        }
    }
}

/// Board `i` with its option sets merged in order; its implicit devices must exist.
fn resolve_board(inner: &Inner, i: usize) -> Result<ResolvedBoard, CatalogError> {
    let b = inner.boards.at(i);
    for imp in &b.implicit_pci {
        if inner.device_defs.index_of(&imp.ty).is_none()
            && !inner.device_aliases.contains_key(imp.ty.as_str())
        {
            return Err(CatalogError::UnknownImplicitDevice {
                board: b.name.clone(),
                device: imp.ty.clone(),
            });
        }
    }
    let mut opts: Vec<OptionDef> = Vec::new();
    for set in &b.option_sets {
        let list = inner
            .option_sets
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
    Ok((Arc::new(b.clone()), Arc::new(opts)))
}

/// The resolved board named `name`.
fn board_named<'a>(
    inner: &'a Inner,
    name: &str,
) -> Option<Result<&'a ResolvedBoard, CatalogError>> {
    let i = inner.boards.index_of(name)?;
    if let Some(b) = inner.resolved_boards[i].get() {
        return Some(Ok(b));
    }
    Some(resolve_board(inner, i).map(|b| inner.resolved_boards[i].get_or_init(|| b)))
}

/// Resolve every machine type in definition order. Linear in the number of definitions:
/// each type's inherited fields are folded once, from its parent's fold.
fn resolve_machines(inner: &Inner) -> Result<Vec<MachineType>, CatalogError> {
    let types = &inner.machine_defs;
    let parent = |i: usize| match &types.at(i).inherits {
        None => Ok(None),
        Some(p) => types.index_of(p).map(Some).ok_or(p.clone()),
    };
    let order = resolution_order(types.len(), parent, |i| types.at(i).name.clone())
        .map_err(machine_walk_error)?;
    let mut folds: Vec<Option<MachineFold>> = vec![None; types.len()];
    for i in order {
        let mut fold = match parent(i).ok().flatten() {
            Some(p) => folds[p].clone().unwrap_or_default(),
            None => MachineFold::default(),
        };
        fold.extend(types.at(i), inner)?;
        folds[i] = Some(fold);
    }
    folds
        .into_iter()
        .enumerate()
        .map(|(i, fold)| resolve_machine(inner, types.at(i), fold.unwrap_or_default()))
        .collect()
}

/// Resolve machine type `i` by folding its own chain (what `resolve_machines` does for all
/// at once).
fn resolve_machine_at(inner: &Inner, i: usize) -> Result<MachineType, CatalogError> {
    let types = &inner.machine_defs;
    let mut chain = vec![i];
    let mut cur = i;
    while let Some(p) = &types.at(cur).inherits {
        cur = types.index_of(p).ok_or_else(|| {
            machine_walk_error(WalkError::UnknownParent {
                name: types.at(cur).name.clone(),
                parent: p.clone(),
            })
        })?;
        // A cycle also ends here: it never reaches a root.
        if chain.len() > MAX_INHERITANCE_DEPTH {
            return Err(machine_walk_error(match chain.contains(&cur) {
                true => WalkError::Cycle(types.at(cur).name.clone()),
                false => WalkError::TooDeep(types.at(i).name.clone()),
            }));
        }
        chain.push(cur);
    }
    let mut fold = MachineFold::default();
    for &j in chain.iter().rev() {
        fold.extend(types.at(j), inner)?;
    }
    resolve_machine(inner, types.at(i), fold)
}

/// The walk error of a machine type, worded for machine types.
fn machine_walk_error(e: WalkError) -> CatalogError {
    match e {
        WalkError::UnknownParent { name, parent } => CatalogError::UnknownParent { name, parent },
        WalkError::Cycle(name) => CatalogError::InheritanceCycle(name),
        WalkError::TooDeep(name) => CatalogError::TooDeep {
            kind: "machine type",
            name,
            limit: MAX_INHERITANCE_DEPTH,
        },
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
    fn extend(&mut self, d: &MachineTypeDef, inner: &Inner) -> Result<(), CatalogError> {
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
            let list =
                inner
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
    inner: &Inner,
    def: &MachineTypeDef,
    fold: MachineFold,
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
    let (board, options) = board_named(inner, &board_name)
        .ok_or_else(|| CatalogError::UnknownBoard {
            name: def.name.clone(),
            board: board_name.clone(),
        })??
        .clone();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_resolves_whole() {
        let eager = Catalog::try_builtin().expect("the built-in catalog resolves and checks");
        assert!(eager.machine_types().len() > 30);
        assert!(eager.device_types().len() > 50);
    }

    /// Looking types up one by one (the built-in catalog) gives exactly what resolving the
    /// whole catalog at once (user files) gives.
    #[test]
    fn lazy_lookups_equal_whole_resolution() {
        let eager = Catalog::try_builtin().expect("built-in catalog");
        // A fresh lazy catalog, not the process-wide one other tests may have resolved.
        let lazy = Catalog::lazy_builtin();
        // build.rs split and merged the files as `CatalogFile::merge` does.
        assert_eq!(lazy.definitions(), eager.definitions());
        // Children before parents: a child's lookup must not depend on its parent's.
        for d in eager
            .device_types()
            .iter()
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            assert_eq!(lazy.device_type(&d.name), Some(d), "{}", d.name);
        }
        for m in eager
            .machine_types()
            .iter()
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            let l = lazy.resolve_machine(&m.name).expect("machine type");
            assert_eq!(l.machine_info(true), m.machine_info(true), "{}", m.name);
            assert_eq!(l.compat_props, m.compat_props, "{}", m.name);
            assert_eq!(l.compat_index, m.compat_index, "{}", m.name);
            assert_eq!(l.options, m.options, "{}", m.name);
            assert_eq!(l.board, m.board, "{}", m.name);
            assert_eq!(
                (
                    l.family,
                    &l.description,
                    &l.help_family,
                    l.smp_prefer_sockets
                ),
                (
                    m.family,
                    &m.description,
                    &m.help_family,
                    m.smp_prefer_sockets
                ),
                "{}",
                m.name
            );
        }
        assert_eq!(
            lazy.default_machine().map(|m| &m.name),
            eager.default_machine().map(|m| &m.name)
        );
    }

    #[test]
    fn clones_share_resolutions() {
        let a = Catalog::builtin().clone();
        let b = a.clone();
        let (x, y) = (a.resolve_machine("q35"), b.resolve_machine("q35"));
        assert!(std::ptr::eq(x.expect("q35"), y.expect("q35")));
    }
}
