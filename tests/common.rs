// Shared by the integration test targets (included with `mod common;`).
#![allow(dead_code)] // each test target uses a different part of these helpers

use machina_tests::RunResult;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// Generous: the tiny guest needs well under a second even where guest kernel code is
/// emulated; the limit only turns a hang into a failure.
pub const LIMIT: Duration = Duration::from_secs(60);

pub fn machina() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_machina"))
}

/// KVM is required; set MACHINA_TESTS_ALLOW_NO_KVM=1 to skip instead on a host without it.
pub fn require_kvm() -> bool {
    if machina_tests::kvm_available() {
        return true;
    }
    if std::env::var_os("MACHINA_TESTS_ALLOW_NO_KVM").is_some() {
        eprintln!("SKIP: /dev/kvm is not usable on this host");
        return false;
    }
    panic!("/dev/kvm is not usable; these tests boot a guest (MACHINA_TESTS_ALLOW_NO_KVM=1 skips)");
}

pub fn boot(args: &[&str]) -> RunResult {
    machina_tests::run(&machina(), args, LIMIT)
}

/// The values of `key` in a JSON array of objects.
pub fn names(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .filter_map(|e| e[key].as_str().map(str::to_string))
        .collect()
}

/// The member names of a command's argument or return type in a query-qmp-schema answer.
pub fn schema_members(schema: &Value, command: &str, which: &str) -> Vec<String> {
    let find = |name: &str| {
        schema
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let mut ty = find(find(command)[which].as_str().unwrap_or(""));
    if ty["meta-type"] == "array" {
        ty = find(ty["element-type"].as_str().unwrap_or(""));
    }
    names(&ty["members"], "name")
}

/// The error `machina ARGS` prints, checked in process: exit 1, one line, "machina: " first.
pub fn refused(args: &[&str]) -> String {
    let r = machina_tests::run(&machina(), args, Duration::from_secs(60));
    r.check(r.status == Some(1), &format!("{args:?} exits 1"));
    let text = r.stderr.trim_end();
    r.check(text.lines().count() == 1, &format!("{args:?}: one line"));
    r.check(!r.stdout.contains("machina-guest"), "no guest ran");
    text.strip_prefix("machina: ")
        .unwrap_or_else(|| panic!("{args:?}: {text}"))
        .to_string()
}

/// Write `text` to `name` in `dir`; its path.
pub fn write_temp(dir: &machina_tests::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}
