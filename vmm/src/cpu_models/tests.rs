//! The model table read from the resource, and models applied to a made-up KVM.

use super::apply::*;
use super::*;
use crate::cpuid::{register, CpuModel, Reg};
use kvm_bindings::{kvm_cpuid_entry2, CpuId};
use machine::CpuTopology;

fn model(name: &str) -> &'static ModelDef {
    models().iter().find(|m| m.name == name).unwrap()
}

fn sub(function: u32, index: u32, r: [u32; 4]) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        eax: r[0],
        ebx: r[1],
        ecx: r[2],
        edx: r[3],
        ..Default::default()
    }
}

fn supported() -> CpuId {
    let e = |function, eax, ebx, ecx, edx| kvm_cpuid_entry2 {
        function,
        eax,
        ebx,
        ecx,
        edx,
        ..Default::default()
    };
    CpuId::from_entries(&[
        e(0, 0x16, 0x756e_6547, 0x6c65_746e, 0x4965_6e69),
        e(
            1,
            0x000a_06a4,
            0,
            0xfffa_3203 | X2APIC | MONITOR,
            0x1fab_fbff,
        ),
        e(6, 0x4, 0, 0, 0),
        e(7, 0, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff),
        sub(0xd, 0, [0x2e7, 2696, 2696, 0]),
        sub(0xd, 1, [0xf, 0, 0, 0]),
        sub(0xd, 2, [256, 576, 0, 0]),
        sub(0xd, 5, [64, 1088, 0, 0]),
        sub(0xd, 9, [8, 2688, 0, 0]),
        e(0x16, 1, 2, 3, 4),
        e(EXT, 0x8000_0008, 0, 0, 0),
        e(
            EXT + 1,
            0,
            0,
            LAHF_LM | SVM | (1 << 5),
            LM | SYSCALL | NX | (1 << 27),
        ),
        e(EXT + 2, 1, 2, 3, 4),
        e(EXT + 7, 0, 0, 0, 1 << 8),
        e(EXT + 8, 0x3030, 0xffff, 0, 0),
    ])
    .unwrap()
}

#[test]
fn qemu64_under_kvm() {
    let qemu64 = model("qemu64");
    let c = apply(qemu64, &supported(), &[], &CpuTopology::default()).unwrap();
    let r = |leaf, reg| register(&c, leaf, None, reg);
    let sig = crate::cpuid::signature(&c);
    assert_eq!(sig.vendor, "AuthenticAMD");
    assert_eq!((sig.family, sig.model, sig.stepping), (15, 107, 1));
    assert_eq!(sig.model_id, "QEMU Virtual CPU version 2.5+");
    assert_eq!(r(0, Reg::Eax), 0xd);
    assert_eq!(r(EXT, Reg::Eax), 0x8000_000a);
    // Only the model's features (and x2apic), where KVM has them.
    assert_eq!(r(1, Reg::Ecx), SSE3 | CX16 | X2APIC | HYPERVISOR);
    assert_eq!(
        r(1, Reg::Edx),
        0x1fab_fbff & (PPRO | MTRR | CLFLUSH | MCA | PSE36 | HTT)
    );
    assert_eq!(r(7, Reg::Ebx), 0);
    assert_eq!(r(EXT + 1, Reg::Ecx), LAHF_LM);
    assert_eq!(r(EXT + 7, Reg::Edx), 0, "no invtsc");
    assert_eq!(r(EXT + 8, Reg::Eax), 0x3030);
    // Above the model's level: gone.
    assert!(c.as_slice().iter().all(|e| e.function != 0x16));
    assert!(qemu64.unavailable(&supported()).is_empty());
    let mut poor = supported();
    for e in poor.as_mut_slice() {
        if e.function == 1 {
            e.ecx &= !CX16;
        }
    }
    assert_eq!(qemu64.unavailable(&poor), ["cx16"]);
}

#[test]
fn the_resource_gives_qemus_names_and_versions() {
    let names: Vec<&str> = models().iter().map(|m| m.name.as_str()).collect();
    for name in [
        "qemu64",
        "qemu32",
        "kvm64",
        "Nehalem",
        "Westmere",
        "SandyBridge",
        "IvyBridge",
        "Haswell",
        "Haswell-noTSX",
        "Haswell-IBRS",
        "Haswell-noTSX-IBRS",
        "Haswell-v4",
        "Broadwell",
        "Skylake-Client",
        "Skylake-Server",
        "Cascadelake-Server",
        "Icelake-Server",
        "EPYC",
        "EPYC-IBPB",
        "EPYC-Rome",
        "Opteron_G5",
    ] {
        assert!(names.contains(&name), "{name} is offered");
    }
    let haswell = model("Haswell");
    assert_eq!(haswell.type_name, "Haswell-x86_64-cpu");
    assert_eq!(haswell.alias_of.as_deref(), Some("Haswell-v1"));
    assert_eq!(
        (haswell.family, haswell.model, haswell.stepping),
        (6, 60, 4)
    );
    assert_eq!(haswell.model_id, "Intel Core Processor (Haswell)");
    let no_tsx = model("Haswell-noTSX");
    assert_eq!(no_tsx.alias_of.as_deref(), Some("Haswell-v2"));
    assert_eq!(no_tsx.stepping, 1);
    let (hle, rtm) = (1 << 4, 1 << 11);
    assert_eq!(haswell.mask(7, Some(0), Reg::Ebx) & (hle | rtm), hle | rtm);
    assert_eq!(no_tsx.mask(7, Some(0), Reg::Ebx) & (hle | rtm), 0);
    // Versions accumulate: v3 turns TSX back on and adds spec-ctrl, v4 drops TSX again.
    let spec_ctrl = 1 << 26;
    assert_eq!(
        model("Haswell-v3").mask(7, Some(0), Reg::Edx) & spec_ctrl,
        spec_ctrl
    );
    assert_eq!(model("Haswell-v4").mask(7, Some(0), Reg::Ebx) & hle, 0);
    assert_eq!(
        model("Haswell-v4").mask(7, Some(0), Reg::Edx) & spec_ctrl,
        spec_ctrl
    );
    assert_eq!(model("Haswell-v4").alias_of, None);
    assert_eq!(&model("EPYC").vendor, b"AuthenticAMD");
    assert_eq!(model("Icelake-Server-v4").model, 106);
}

#[test]
fn haswell_under_kvm() {
    let haswell = model("Haswell");
    let c = apply(haswell, &supported(), &[], &CpuTopology::default()).unwrap();
    let r = |leaf, sub, reg| register(&c, leaf, sub, reg);
    let sig = crate::cpuid::signature(&c);
    assert_eq!(sig.vendor, "GenuineIntel");
    assert_eq!((sig.family, sig.model, sig.stepping), (6, 60, 4));
    assert_eq!(sig.model_id, "Intel Core Processor (Haswell)");
    // Leaf 7: exactly Haswell's bits (all supported here).
    let named: Vec<&str> = crate::cpuid::features(&c)
        .into_iter()
        .filter(|(n, on)| *on && ["hle", "rtm", "avx2", "invpcid", "avx512f"].contains(n))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(named, ["hle", "avx2", "invpcid", "rtm"]);
    assert_eq!(r(7, Some(0), Reg::Ecx), 0);
    assert_eq!(r(6, None, Reg::Eax), 4, "arat");
    // XSAVE: x87, SSE and AVX only; the area ends after AVX's 256 bytes at 576.
    assert_eq!(r(0xd, Some(0), Reg::Eax), 0b111);
    assert_eq!(r(0xd, Some(0), Reg::Ebx), 832);
    assert_eq!(r(0xd, Some(1), Reg::Eax), 1, "xsaveopt only");
    assert_eq!(r(0xd, Some(2), Reg::Eax), 256);
    assert!(c
        .as_slice()
        .iter()
        .all(|e| !(e.function == 0xd && e.index == 5)));
    // Intel: no AMD aliases in 0x80000001:EDX.
    assert_eq!(r(EXT + 1, None, Reg::Edx), LM | SYSCALL | NX | (1 << 27));
    // What a KVM lacks of the model, in QEMU's feature-word order.
    assert!(haswell.unavailable(&supported()).is_empty());
    let mut poor = supported();
    for e in poor.as_mut_slice() {
        match e.function {
            1 => e.ecx &= !XSAVE,
            7 => e.ebx &= !(1 << 5),
            _ => {}
        }
    }
    assert_eq!(haswell.unavailable(&poor), ["xsave", "avx2"]);
    // Without XSAVE from KVM the guest gets no XSAVE leaf.
    let c = apply(haswell, &poor, &[], &CpuTopology::default()).unwrap();
    assert_eq!(register(&c, 0xd, Some(0), Reg::Eax), 0);
}

#[test]
fn missing_features_are_worded_as_qemu() {
    let mut poor = supported();
    for e in poor.as_mut_slice() {
        match e.function {
            1 => e.ecx &= !XSAVE,
            0xd => e.eax &= !1,
            _ => {}
        }
    }
    let haswell = CpuModel::Named(model("Haswell"));
    let lines = missing_features(haswell, &[], &poor);
    assert_eq!(
        lines,
        [
            "host doesn't support requested feature: CPUID.01H:ECX.xsave [bit 26]",
            "host doesn't support requested feature: CPUID.0DH:EAX.xsaveopt [bit 0]",
        ]
    );
    // -xsave silences its line; +svm asks for one KVM lacks here.
    let asked = [("xsave".to_string(), false), ("3dnow".to_string(), true)];
    assert_eq!(
        missing_features(haswell, &asked, &poor),
        [
            "host doesn't support requested feature: CPUID.80000001H:EDX.3dnow [bit 31]",
            "host doesn't support requested feature: CPUID.0DH:EAX.xsaveopt [bit 0]",
        ]
    );
    assert!(missing_features(CpuModel::Host, &[], &poor).is_empty());
}

#[test]
fn levels_rise_to_the_leaves_of_requested_features() {
    let on = |f: &str| vec![(f.to_string(), true)];
    let lv = |name: &str, f: &[(String, bool)]| levels(model(name), f);
    assert_eq!(lv("486", &[]).level, 1);
    assert_eq!(lv("486", &[]).xlevel, 0);
    assert_eq!(lv("486", &on("arat")).level, 6);
    assert_eq!(lv("phenom", &on("fsgsbase")).level, 7);
    assert_eq!(lv("phenom", &on("xsaveopt")).level, 0xd);
    assert_eq!(lv("486", &on("3dnow")).xlevel, EXT + 1);
    assert_eq!(lv("486", &on("invtsc")).xlevel, EXT + 7);
    assert_eq!(lv("athlon", &on("svm")).xlevel, EXT + 0xa);
    assert_eq!(lv("phenom", &on("xstore")).xlevel2, 0xc000_0001);
    // Already high enough: unchanged; a feature turned off raises nothing.
    let many = [("arat".to_string(), true), ("fsgsbase".to_string(), true)];
    assert_eq!(lv("SandyBridge", &many).level, 0xd);
    assert_eq!(lv("486", &[("arat".to_string(), false)]).level, 1);
    // The guest's CPUID follows: leaf 6 exists for 486,+arat.
    let c = apply(
        model("486"),
        &supported(),
        &on("arat"),
        &CpuTopology::default(),
    )
    .unwrap();
    assert_eq!(register(&c, 0, None, Reg::Eax), 6);
    assert_eq!(register(&c, 6, None, Reg::Eax), 4);
}

#[test]
fn explicit_levels_stay_and_min_levels_still_rise() {
    let f = [("arat".to_string(), true), ("3dnow".to_string(), true)];
    let fixed = with_levels(model("486"), &[("level".into(), 2), ("xlevel".into(), 0)]);
    assert_eq!(
        levels(fixed, &f),
        Levels {
            level: 2,
            xlevel: 0,
            xlevel2: 0
        }
    );
    let min = with_levels(model("486"), &[("min-level".into(), 4)]);
    assert_eq!(levels(min, &[]).level, 4);
    assert_eq!(levels(min, &f).level, 6);
    assert_eq!(with_levels(model("486"), &[]), model("486"));
}
