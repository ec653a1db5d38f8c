//! Hostile `-machine-definition` files: deep and long inheritance chains resolve in linear
//! time, with a clear depth limit, and cycles and unknown parents are named correctly.
//! No timing is asserted; the large cases run on a thread with a generous hang guard (they
//! took minutes when resolution was quadratic).

use machine::{Catalog, DeviceRequest, PlanRequest, MAX_INHERITANCE_DEPTH};
use std::sync::mpsc;
use std::time::Duration;

/// Run `f` on a thread; fail (instead of hanging the suite) if it takes over ten minutes.
fn guarded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(600))
        .unwrap_or_else(|_| panic!("{what}: no result within the hang guard"))
}

/// A chain of `depth` machine types m1 <- m2 <- ... each inheriting from the previous, the
/// first from the built-in q35.
fn machine_chain(prefix: &str, depth: usize) -> Vec<String> {
    (1..=depth)
        .map(|i| {
            let parent = if i == 1 {
                "pc-q35-10.2".to_string()
            } else {
                format!("{prefix}{}", i - 1)
            };
            format!(r#"{{"name":"{prefix}{i}","inherits":"{parent}"}}"#)
        })
        .collect()
}

fn machine_file(types: &[String]) -> String {
    format!(r#"{{"machine-types":[{}]}}"#, types.join(","))
}

/// A chain of `depth` device types d1 <- d2 <- ..., d1 a child of virtio-rng-pci.
fn device_chain(depth: usize) -> String {
    let types: Vec<String> = (1..=depth)
        .map(|i| {
            let parent = if i == 1 {
                "virtio-rng-pci".to_string()
            } else {
                format!("d{}", i - 1)
            };
            format!(r#"{{"name":"d{i}","parent":"{parent}"}}"#)
        })
        .collect();
    format!(r#"{{"device-types":[{}]}}"#, types.join(","))
}

fn load(text: &str) -> Result<Catalog, String> {
    let mut c = Catalog::builtin().clone();
    c.merge_json(text).map_err(|e| e.to_string())?;
    Ok(c)
}

#[test]
fn machine_chain_at_the_limit_resolves_and_plans() {
    // The built-in chain under pc-q35-10.2 is under 20 deep: stay inside the limit.
    let depth = MAX_INHERITANCE_DEPTH - 20;
    let c = load(&machine_file(&machine_chain("m", depth))).unwrap();
    let leaf = format!("m{depth}");
    let plan = c.plan(&PlanRequest::new(&leaf)).unwrap();
    assert_eq!(plan.machine, leaf);
    // It inherited the q35 board.
    assert!(plan.pci.iter().any(|f| f.type_name == "ICH9-LPC"));
}

#[test]
fn machine_chain_over_the_limit_is_refused_by_name() {
    let err = load(&machine_file(&machine_chain(
        "m",
        MAX_INHERITANCE_DEPTH + 1,
    )))
    .unwrap_err();
    assert!(
        err.contains(&format!(
            "inherits through more than {MAX_INHERITANCE_DEPTH} levels"
        )) && err.starts_with("machine type 'm"),
        "{err}"
    );
}

#[test]
fn very_deep_and_very_long_files_finish() {
    // 20,000 deep: refused at the limit (took minutes when every type walked its chain).
    let err = guarded("20,000-deep machine chain", || {
        load(&machine_file(&machine_chain("m", 20_000))).unwrap_err()
    });
    assert!(err.contains("inherits through more than"), "{err}");
    // 100 chains of 200 levels (20,000 types, each within the limit): all resolve.
    let catalog = guarded("100 x 200 machine chains", || {
        let mut types = Vec::new();
        for chain in 0..100 {
            types.extend(machine_chain(&format!("c{chain}x"), 200));
        }
        load(&machine_file(&types)).map(|c| c.machine_types().len())
    })
    .unwrap();
    assert!(catalog >= 20_000, "{catalog} machine types");
    // 20,000 device types in one deep chain: refused at the limit, by name.
    let err = guarded("20,000-deep device chain", || {
        load(&device_chain(20_000)).unwrap_err()
    });
    assert!(
        err.starts_with("device type 'd") && err.contains("inherits through more than"),
        "{err}"
    );
}

#[test]
fn device_chain_deeper_than_64_resolves_and_plans() {
    // Used to fail with a wrong "unknown parent" message past ~60 levels.
    let c = load(&device_chain(200)).unwrap();
    let t = c.device_type("d200").unwrap();
    assert_eq!(t.ancestors.first().map(String::as_str), Some("d199"));
    assert!(t.ancestors.iter().any(|a| a == "virtio-rng-pci"));
    let mut req = PlanRequest::new("q35");
    req.nodefaults = true;
    req.devices.push(DeviceRequest::new("d200"));
    let plan = c.plan(&req).unwrap();
    assert!(plan.pci.iter().any(|f| f.type_name == "d200"));
}

#[test]
fn cycles_and_unknown_parents_are_named() {
    let cycle = r#"{"device-types":[{"name":"a","parent":"b"},{"name":"b","parent":"c"},{"name":"c","parent":"a"}]}"#;
    let err = load(cycle).unwrap_err();
    assert!(err.ends_with("has an inheritance cycle"), "{err}");
    assert!(err.starts_with("device type '"), "{err}");
    let unknown = r#"{"device-types":[{"name":"a","parent":"b"},{"name":"b","parent":"nosuch"}]}"#;
    assert_eq!(
        load(unknown).unwrap_err(),
        "device type 'b' has unknown parent 'nosuch'"
    );
    let cycle = r#"{"machine-types":[{"name":"x","inherits":"y"},{"name":"y","inherits":"x"}]}"#;
    assert!(load(cycle)
        .unwrap_err()
        .ends_with("has an inheritance cycle"));
    let unknown = r#"{"machine-types":[{"name":"x","inherits":"nosuch"}]}"#;
    assert_eq!(
        load(unknown).unwrap_err(),
        "machine type 'x' inherits from unknown machine type 'nosuch'"
    );
}
