//! Splits the built-in catalog (resources/machines/*.json) into one JSON text per definition,
//! merged in load order as `CatalogFile::merge` does, with the names, aliases and the default
//! flag the catalog indexes by. The process then parses only the definitions it looks up (a
//! q35 start parses a dozen of them instead of the whole catalog). The files themselves are
//! checked by the crate's tests, which parse them whole (`Catalog::try_builtin`).

use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::path::Path;

/// The built-in files, in load order (as `BUILTIN_FILES` in src/catalog.rs).
const FILES: [&str; 4] = [
    "options.json",
    "boards.json",
    "devices.json",
    "machine-types.json",
];
/// Sections keyed by name (later files replace whole entries).
const MAPS: [&str; 3] = ["option-sets", "compat-sets", "property-sets"];
/// Sections of named entries (replaced in place or appended).
const LISTS: [&str; 3] = ["boards", "machine-types", "device-types"];

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/machines");
    let mut maps: Vec<std::collections::BTreeMap<String, Value>> = vec![Default::default(); 3];
    let mut lists: Vec<Vec<Value>> = vec![Vec::new(); 3];
    for file in FILES {
        let path = dir.join(file);
        println!("cargo:rerun-if-changed={}", path.display());
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let value: Map<String, Value> =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (key, section) in value {
            if let Some(k) = MAPS.iter().position(|m| *m == key) {
                let Value::Object(entries) = section else {
                    panic!("{file}: {key} is not an object");
                };
                maps[k].extend(entries);
            } else if let Some(k) = LISTS.iter().position(|l| *l == key) {
                let Value::Array(entries) = section else {
                    panic!("{file}: {key} is not an array");
                };
                for entry in entries {
                    let name = entry["name"].clone();
                    match lists[k].iter_mut().find(|e| e["name"] == name) {
                        Some(e) => *e = entry,
                        None => lists[k].push(entry),
                    }
                }
            }
            // Anything else ("comment", or a typo the tests' strict parse refuses) is not
            // catalog data.
        }
    }

    let mut out = String::new();
    for (k, name) in ["OPTION_SETS", "COMPAT_SETS", "PROPERTY_SETS"]
        .iter()
        .enumerate()
    {
        writeln!(out, "static {name}: &[(&str, &str)] = &[").unwrap();
        for (key, value) in &maps[k] {
            writeln!(out, "    ({key:?}, {:?}),", value.to_string()).unwrap();
        }
        writeln!(out, "];").unwrap();
    }
    let str_of = |v: &Value| v.as_str().map(str::to_string);
    writeln!(out, "static BOARDS: &[(&str, &str)] = &[").unwrap();
    for b in &lists[0] {
        let name = str_of(&b["name"]).expect("a board has a name");
        writeln!(out, "    ({name:?}, {:?}),", b.to_string()).unwrap();
    }
    writeln!(out, "];").unwrap();
    writeln!(out, "static MACHINE_TYPES: &[BuiltinType] = &[").unwrap();
    for m in &lists[1] {
        let name = str_of(&m["name"]).expect("a machine type has a name");
        writeln!(
            out,
            "    BuiltinType {{ name: {name:?}, alias: {:?}, is_default: {}, json: {:?} }},",
            str_of(&m["alias"]),
            m["is-default"].as_bool().unwrap_or(false),
            m.to_string()
        )
        .unwrap();
    }
    writeln!(out, "];").unwrap();
    writeln!(out, "static DEVICE_TYPES: &[BuiltinType] = &[").unwrap();
    for d in &lists[2] {
        let name = str_of(&d["name"]).expect("a device type has a name");
        writeln!(
            out,
            "    BuiltinType {{ name: {name:?}, alias: {:?}, is_default: false, json: {:?} }},",
            str_of(&d["alias"]),
            d.to_string()
        )
        .unwrap();
    }
    writeln!(out, "];").unwrap();
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("builtin_catalog.rs");
    std::fs::write(&dest, out).unwrap_or_else(|e| panic!("{}: {e}", dest.display()));
}
