//! QEMU's named x86 CPU models (resources/cpu-models.json): what the guest CPU is, what
//! query-cpu-definitions says the host's KVM cannot give, and QEMU's `check`/`enforce`.

mod common;

use common::{boot, machina};
use machina_tests::process::MachinaProcess;
use serde_json::{json, Value};
use std::time::Duration;

const WARNING: &str = "machina: warning: host doesn't support requested feature: ";

/// The feature names of the `-cpu` warnings in `stderr` (`CPUID.01H:ECX.pni [bit 0]`).
fn warned(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix(WARNING))
        .filter_map(|l| {
            // CPUID.01H:ECX.sse4.1 [bit 19]: after the register, up to the space.
            let name = l.split(' ').next()?.rsplit_once(':')?.1.split_once('.')?.1;
            Some(name.to_string())
        })
        .collect()
}

#[test]
fn enforce_refuses_what_kvm_lacks() {
    if !common::require_kvm() {
        return;
    }
    // No KVM offers IA-64 emulation (CPUID.01H:EDX bit 30).
    let r = boot(&[
        "-M",
        "q35",
        "-nodefaults",
        "-S",
        "-cpu",
        "qemu64,+ia64,enforce=on",
    ]);
    assert_eq!(r.status, Some(1), "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("{WARNING}CPUID.01H:EDX.ia64 [bit 30]\n")),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .trim_end()
            .ends_with("machina: Host doesn't support requested features"),
        "{}",
        r.stderr
    );
    let r = boot(&[
        "-M",
        "q35",
        "-nodefaults",
        "-S",
        "-cpu",
        "Haswell,check=maybe",
    ]);
    assert_eq!(r.status, Some(1));
    assert!(r.stderr.contains(
        "can't apply global Haswell-x86_64-cpu.check=maybe: Parameter 'check' expects 'on' or 'off'"
    ));
}

#[test]
fn a_named_model_is_the_guest_cpu_and_its_gaps_are_reported() {
    if !common::require_kvm() {
        return;
    }
    let args: Vec<String> = [
        "-M",
        "q35",
        "-nodefaults",
        "-S",
        "-smp",
        "2",
        "-cpu",
        "Haswell,+ia64",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut vm = MachinaProcess::start(&machina(), "cpu-models", &args);
    let mut c = vm.client();
    let cpu0 = json!({"path": "/machine/unattached/device[0]"});
    let get = |c: &mut machina_tests::qmp_client::QmpClient, p: &str| {
        let mut args = cpu0.clone();
        args["property"] = json!(p);
        c.ok("qom-get", args)
    };
    assert_eq!(get(&mut c, "type"), "Haswell-x86_64-cpu");
    assert_eq!(get(&mut c, "vendor"), "GenuineIntel");
    assert_eq!(get(&mut c, "family"), 6);
    assert_eq!(get(&mut c, "model"), 60);
    assert_eq!(get(&mut c, "stepping"), 4);
    assert_eq!(get(&mut c, "model-id"), "Intel Core Processor (Haswell)");
    // Not Haswell's (AMD's 3DNow!), not the host's either.
    assert_eq!(get(&mut c, "3dnow"), false);
    let defs = c.ok("query-cpu-definitions", Value::Null);
    let def = |name: &str| {
        defs.as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .unwrap_or_else(|| panic!("{name} offered"))
            .clone()
    };
    let haswell = def("Haswell");
    assert_eq!(haswell["alias-of"], "Haswell-v1");
    let unavailable: Vec<String> = haswell["unavailable-features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    // Whatever this KVM has: a feature it lacks is one the guest does not get.
    for name in &unavailable {
        assert_eq!(get(&mut c, name), false, "{name} is unavailable");
    }
    assert_eq!(def("Haswell-noTSX")["alias-of"], "Haswell-v2");
    assert!(def("Haswell-v4").get("alias-of").is_none());
    drop(c);
    vm.child.kill().unwrap();
    vm.wait_exit(Duration::from_secs(30));
    // One warning per missing feature per vCPU (QEMU filters at each CPU's realize),
    // naming the same features query-cpu-definitions lists, plus the +ia64 request.
    let stderr = vm.stderr_text();
    let lines = warned(&stderr);
    assert_eq!(lines.len(), 2 * (unavailable.len() + 1), "{stderr}");
    assert!(
        lines.iter().filter(|n| *n == "ia64").count() == 2,
        "{stderr}"
    );
    let once: Vec<String> = lines[..lines.len() / 2]
        .iter()
        .filter(|n| *n != "ia64")
        .cloned()
        .collect();
    assert_eq!(once, unavailable, "{stderr}");
}

/// QOM's level properties follow the features asked for (QEMU's auto-level), and QEMU's
/// warnings for ambiguous `-cpu` strings, where `+feat`/`-feat` wins.
#[test]
fn levels_and_ambiguous_feature_strings() {
    if !common::require_kvm() {
        return;
    }
    let args: Vec<String> = [
        "-M",
        "pc",
        "-nodefaults",
        "-S",
        "-cpu",
        "486,arat=on,+3dnow,-mce,mce=on,+cx8,cx8=off",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut vm = MachinaProcess::start(&machina(), "cpu-levels", &args);
    let mut c = vm.client();
    let mut get = |p: &str| {
        c.ok(
            "qom-get",
            json!({"path": "/machine/unattached/device[0]", "property": p}),
        )
    };
    assert_eq!(get("level"), 6, "arat lives in leaf 6");
    assert_eq!(get("xlevel"), 0x8000_0001u32, "3dnow in 0x80000001");
    assert_eq!(get("xlevel2"), 0);
    assert_eq!(get("mce"), false, "-mce wins over mce=on");
    drop(c);
    vm.child.kill().unwrap();
    vm.wait_exit(Duration::from_secs(30));
    let stderr = vm.stderr_text();
    for line in [
        "machina: warning: Ambiguous CPU model string. Don't mix both \"-mce\" and \"mce=on\"",
        "machina: warning: Ambiguous CPU model string. Don't mix both \"+cx8\" and \"cx8=off\"",
        "machina: warning: Compatibility of ambiguous CPU model strings won't be kept on future \
         QEMU versions",
    ] {
        assert!(stderr.lines().any(|l| l == line), "{line}\n{stderr}");
    }
}

/// Under `-accel qtest` no vCPU runs and QEMU filters nothing: a named model's feature reads
/// as asked for; under KVM it reads as KVM gives it (no KVM has IA-64).
#[test]
fn qtest_shows_features_as_asked_and_kvm_as_given() {
    if !common::require_kvm() {
        return;
    }
    for (qtest, want) in [(true, true), (false, false)] {
        let dir = machina_tests::TempDir::new("cpu-qtest");
        let sock = dir.join("qtest.sock");
        let mut args: Vec<String> = ["-M", "pc", "-nodefaults", "-cpu", "486,+ia64"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if qtest {
            args.extend([
                "-accel".into(),
                "qtest".into(),
                "-qtest".into(),
                format!("unix:{},server=on,wait=off", sock.display()),
            ]);
        } else {
            args.push("-S".into());
        }
        let mut vm = MachinaProcess::start(&machina(), "cpu-qtest", &args);
        let mut c = vm.client();
        let ia64 = c.ok(
            "qom-get",
            json!({"path": "/machine/unattached/device[0]", "property": "ia64"}),
        );
        assert_eq!(ia64, want, "qtest={qtest}");
        drop(c);
        vm.child.kill().unwrap();
        vm.wait_exit(Duration::from_secs(30));
    }
}
