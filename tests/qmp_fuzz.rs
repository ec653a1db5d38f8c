//! A bounded randomised fuzz of QMP argument decoding: every command in machina's schema gets
//! random and mutated arguments; every answer must be a well-formed QMP success or error.

mod common;

use common::{machina, require_kvm, schema_members};
use machina_tests::process::MachinaProcess;
use machina_tests::rng::XorShift;
use serde_json::{json, Value};

fn start(tag: &str, args: &[&str]) -> MachinaProcess {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    MachinaProcess::start(&machina(), tag, &args)
}

/// A random JSON value: scalars at the edges of their ranges, strings the handlers know
/// (and some they must refuse), nested arrays and objects.
fn fuzz_value(rng: &mut XorShift, depth: u32, names: &[String]) -> Value {
    let strings = [
        "",
        "host",
        "max",
        "base",
        "static",
        "full",
        "events",
        "d0",
        "/machine/peripheral",
        "/machine/unattached/device[0]",
        "/machine/unattached/device[99]",
        "/machine/unattached/device[-1]",
        "feature-words",
        "type",
        "nope",
        "\u{0}",
        "\u{fffd}\u{1f600}",
        "smp",
        "q35",
        "virtio-blk-pci",
        "rng-random",
    ];
    match rng.index(if depth > 3 { 7 } else { 10 }) {
        0 => Value::Null,
        1 => json!(rng.next_u64().is_multiple_of(2)),
        2 => json!(rng.next_u64() as i64),
        3 => [
            json!(0),
            json!(-1),
            json!(i64::MAX),
            json!(i64::MIN),
            json!(u64::MAX),
        ][rng.index(5)]
        .clone(),
        4 => json!(f64::from(rng.next_u64() as u32) / 7.0),
        5 => json!(strings[rng.index(strings.len())]),
        6 => json!("x".repeat(rng.index(300))),
        7 => Value::Array(
            (0..rng.index(4))
                .map(|_| fuzz_value(rng, depth + 1, names))
                .collect(),
        ),
        _ => fuzz_object(rng, depth + 1, names),
    }
}

/// An object whose keys are mostly the command's own argument names.
fn fuzz_object(rng: &mut XorShift, depth: u32, names: &[String]) -> Value {
    let mut map = serde_json::Map::new();
    for _ in 0..rng.index(5) {
        let key = if !names.is_empty() && rng.index(4) != 0 {
            names[rng.index(names.len())].clone()
        } else {
            [
                "model", "name", "props", "type", "path", "property", "flat", "x",
            ][rng.index(8)]
            .to_string()
        };
        map.insert(key, fuzz_value(rng, depth, names));
    }
    Value::Object(map)
}

/// Send `iterations` commands with random and mutated arguments to `vm`, every command in
/// its schema but `skip`, and check each answer is a well-formed QMP success or error (a
/// handler panic shows as QEMU's internal error, which fails the test).
fn fuzz_commands(
    vm: &MachinaProcess,
    rng: &mut XorShift,
    iterations: usize,
    skip: &[&str],
) -> usize {
    let mut qmp = vm.client();
    let schema = qmp.ok("query-qmp-schema", Value::Null);
    let commands: Vec<(String, Vec<String>)> = schema
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["meta-type"] == "command")
        .filter_map(|e| e["name"].as_str())
        .filter(|n| !skip.contains(n))
        .map(|n| (n.to_string(), schema_members(&schema, n, "arg-type")))
        .collect();
    let seed = rng.0;
    let mut errors = 0;
    for i in 0..iterations {
        let (name, arg_names) = &commands[i % commands.len()];
        let args = match rng.index(6) {
            0 => fuzz_value(rng, 0, arg_names),
            _ => fuzz_object(rng, 0, arg_names),
        };
        let reply = qmp.execute(name, args.clone());
        let ctx = format!("state={seed} iteration={i} {name} {args} -> {reply}");
        let keys: Vec<&String> = reply.as_object().expect(&ctx).keys().collect();
        if let Some(err) = reply.get("error") {
            errors += 1;
            assert_eq!(keys, ["error"], "{ctx}");
            assert!(
                err["class"].as_str().is_some_and(|c| !c.is_empty()),
                "{ctx}"
            );
            let desc = err["desc"].as_str().unwrap_or("");
            assert!(!desc.is_empty(), "{ctx}");
            assert_ne!(desc, "Internal error: command handler failed", "{ctx}");
        } else {
            assert_eq!(keys, ["return"], "{ctx}");
        }
    }
    let status = qmp.ok("query-status", Value::Null);
    assert!(status["status"].is_string(), "{status}");
    errors
}

/// Every command in the registry gets random and mutated arguments, on a built (paused)
/// machine and before the build (`-delay-machine-init`, where the configuration commands
/// decode their arguments); each answer must be a well-formed QMP success or error and the
/// monitor must keep serving. Iterations are fixed (MACHINA_QMP_FUZZ_ITERS per phase,
/// default 1500); the seed is printed and replayed with MACHINA_QMP_FUZZ_SEED.
#[test]
fn qmp_argument_decoding_fuzz() {
    if !require_kvm() {
        return;
    }
    let seed = std::env::var("MACHINA_QMP_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    let iterations: usize = std::env::var("MACHINA_QMP_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500);
    println!("qmp fuzz: seed={seed} iterations={iterations} (MACHINA_QMP_FUZZ_SEED replays)");
    let dir = machina_tests::TempDir::new("qmp-fuzz-disk");
    let disk = dir.path.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let drive = format!("file={},if=none,id=d0,format=raw", disk.display());
    let mut rng = XorShift(seed);

    // `quit` ends the process and `cont` would let the guest run to power-off: the fuzz
    // needs the monitor to stay.
    let mut vm = start(
        "qmp-fuzz",
        &[
            "-S",
            "-M",
            "q35",
            "-nodefaults",
            "-smp",
            "2,maxcpus=4",
            "-drive",
            &drive,
            "-device",
            "virtio-blk-pci,drive=d0,id=vd0",
            "-chardev",
            "null,id=c0",
        ],
    );
    let refused = fuzz_commands(&vm, &mut rng, iterations, &["quit", "cont"]);
    println!("qmp fuzz: built machine: {iterations} commands, {refused} refused");
    assert!(vm.alive(), "machina survived the fuzz");
    drop(vm);

    // Before the build, nothing is built either: the configuration commands only decode
    // and check. Taps and socket chardevs would touch the host, so netdev_add and
    // chardev-add are left out.
    let mut vm = start("qmp-fuzz-pre", &["-delay-machine-init", "-nodefaults"]);
    let refused = fuzz_commands(
        &vm,
        &mut rng,
        iterations,
        &[
            "quit",
            "cont",
            "x-exit-preconfig",
            "machine-build",
            "netdev_add",
            "chardev-add",
        ],
    );
    println!("qmp fuzz: before the build: {iterations} commands, {refused} refused");
    assert!(vm.alive(), "machina survived the fuzz");
}
