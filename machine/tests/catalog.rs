//! The catalog: machine types and their MachineInfo, aliases, loading and merging user
//! definitions, device types, and the help texts.

mod common;

use common::{expect_eq, request, run_table};
use machine::{help, Catalog, CatalogError, DeviceRequest, PlanError, PlanRequest};

#[test]
fn machine_info_table() {
    let c = Catalog::builtin();
    run_table(
        "machines.tbl",
        include_str!("tables/machines.tbl"),
        |name, want| {
            let m = c.resolve_machine(name).ok_or("unknown")?;
            let yn = |b: bool| if b { "yes" } else { "no" };
            let got = format!(
            "alias={} default={} cpu-max={} hotplug={} numa={} deprecated={} cpu={} ram={} acpi={} compat={}",
            m.alias.as_deref().unwrap_or("-"),
            yn(m.is_default),
            m.cpu_max,
            yn(m.hotpluggable_cpus),
            yn(m.numa_mem_supported),
            yn(m.deprecated),
            m.default_cpu_type.as_deref().unwrap_or("-"),
            m.default_ram_id.as_deref().unwrap_or("-"),
            yn(m.acpi),
            m.compat_props.len()
        );
            expect_eq(&got, want)
        },
    );
}

#[test]
fn versions_aliases_and_default() {
    let c = Catalog::builtin();
    let versions = [
        "5.0", "5.1", "5.2", "6.0", "6.1", "6.2", "7.0", "7.1", "7.2", "8.0", "8.1", "8.2", "9.0",
        "9.1", "9.2", "10.0", "10.1", "10.2",
    ];
    for v in versions {
        for fam in ["pc-i440fx", "pc-q35"] {
            let name = format!("{fam}-{v}");
            assert!(c.resolve_machine(&name).is_some(), "{name}");
        }
    }
    assert_eq!(c.resolve_machine("pc").unwrap().name, "pc-i440fx-10.2");
    assert_eq!(c.resolve_machine("q35").unwrap().name, "pc-q35-10.2");
    assert_eq!(c.default_machine().unwrap().name, "pc-i440fx-10.2");
    assert!(c.resolve_machine("pc-q35-4.2").is_none());
    // A request without a machine gets the default.
    let p = c.plan(&PlanRequest::default()).unwrap();
    assert_eq!(p.machine, "pc-i440fx-10.2");
}

#[test]
fn compat_props_are_qemus_and_inherited() {
    let c = Catalog::builtin();
    let has = |m: &str, t: &str, p: &str, v: &str| {
        c.resolve_machine(m)
            .unwrap()
            .compat_props
            .iter()
            .any(|x| x.qom_type == t && x.property == p && x.value == v)
    };
    assert!(has("pc-q35-7.2", "ICH9-LPC", "noreboot", "true"));
    assert!(has("pc-q35-5.0", "ICH9-LPC", "noreboot", "true"));
    assert!(!has("pc-q35-8.0", "ICH9-LPC", "noreboot", "true"));
    assert!(has("pc-q35-10.1", "mch", "extended-tseg-mbytes", "16"));
    assert!(!has("pc-q35-10.2", "mch", "extended-tseg-mbytes", "16"));
    assert!(has(
        "pc-i440fx-5.0",
        "virtio-device",
        "x-disable-legacy-check",
        "true"
    ));
    // Order: the newest machine's defaults first, then each older version's sets.
    let m = c.resolve_machine("pc-q35-10.1").unwrap();
    assert_eq!(m.compat_props[0].qom_type, "virtio-iommu-pci");
    assert_eq!(m.compat_props.last().unwrap().qom_type, "mch");
}

#[test]
fn machine_info_json() {
    let c = Catalog::builtin();
    let v = c.resolve_machine("q35").unwrap().machine_info(false);
    assert_eq!(
        v,
        serde_json::json!({"name":"pc-q35-10.2","alias":"q35","cpu-max":4096,"hotpluggable-cpus":true,
            "numa-mem-supported":false,"default-cpu-type":"qemu64-x86_64-cpu","acpi":true,
            "deprecated":false,"default-ram-id":"pc.ram"})
    );
    let v = c.resolve_machine("pc").unwrap().machine_info(true);
    assert_eq!(v["is-default"], true);
    assert_eq!(v["compat-props"].as_array().unwrap().len(), 2);
    let v = c.resolve_machine("none").unwrap().machine_info(false);
    assert!(v.get("default-cpu-type").is_none());
    assert_eq!(v["default-ram-id"], "ram");
}

const USER_FILE: &str = r#"{
  "comment": "a user definition: a custom q35 with an extra compat property and a test device",
  "machine-types": [
    {"name": "acme-q35-1.0", "inherits": "pc-q35-10.2", "description": "ACME q35",
     "compat-props": [{"qom-type": "ICH9-LPC", "property": "noreboot", "value": "true"}]}
  ],
  "device-types": [
    {"name": "virtio-test-pci", "parent": "virtio-pci", "category": "misc",
     "pci": {"class": "0x00ff00"}, "interfaces": ["pci-express-device", "conventional-pci-device"],
     "connect": "pcie-device", "property-sets": ["virtio-pci-generic"],
     "virtio": {"device-type": 42}}
  ]
}"#;

#[test]
fn merge_user_definitions() {
    let mut c = Catalog::builtin().clone();
    c.merge_json(USER_FILE).unwrap();
    let m = c.resolve_machine("acme-q35-1.0").unwrap();
    assert_eq!(m.cpu_max, 4096);
    assert!(m.alias.is_none());
    assert_eq!(m.compat_props.len(), 4);
    let p = c.plan(&request("acme-q35-1.0").unwrap()).unwrap();
    let lpc = p.pci.iter().find(|f| f.type_name == "ICH9-LPC").unwrap();
    assert_eq!(lpc.properties.text("noreboot").as_deref(), Some("true"));
    // The built-in catalog is untouched.
    assert!(Catalog::builtin().resolve_machine("acme-q35-1.0").is_none());
    assert!(help::machine_help(&c).contains("acme-q35-1.0         ACME q35\n"));
}

#[test]
fn modern_only_virtio_from_data() {
    let mut c = Catalog::builtin().clone();
    c.merge_json(USER_FILE).unwrap();
    let plan = |req: &str| c.plan(&request(req).unwrap());
    // Type 42 is not in QEMU's legacy-allowed list and does not force virtio 1.0.
    let e = plan("q35 -nodefaults -device virtio-test-pci").unwrap_err();
    assert_eq!(
        e.to_string(),
        "device is modern-only, use disable-legacy=on"
    );
    let p = plan("q35 -nodefaults -device virtio-test-pci,disable-legacy=on").unwrap();
    let f = p.pci.last().unwrap();
    assert_eq!(
        (f.identity.device_id, f.identity.revision),
        (0x1040 + 42, 1)
    );
    // Behind a root port auto resolves to modern-only.
    plan("q35 -nodefaults -device pcie-root-port,id=rp,chassis=1 -device virtio-test-pci,bus=rp")
        .unwrap();
    // Machine types <= 5.0 only warn (virtio-device.x-disable-legacy-check=true).
    let p = plan("pc-q35-5.0 -nodefaults -device virtio-test-pci").unwrap();
    assert!(p.pci.last().unwrap().virtio.unwrap().legacy);
    assert_eq!(
        p.advisories[0].message,
        "device is modern-only, but for backward compatibility legacy is allowed"
    );
}

#[test]
fn load_file_and_errors() {
    let dir = machina_tests::TempDir::new("catalog-test");
    let path = dir.join("acme.json");
    std::fs::write(&path, USER_FILE).unwrap();
    let mut c = Catalog::builtin().clone();
    c.load_file(&path).unwrap();
    assert!(c.resolve_machine("acme-q35-1.0").is_some());
    drop(dir);

    let mut c = Catalog::builtin().clone();
    let missing = c.load_file(std::path::Path::new("/nonexistent/machina.json"));
    assert!(matches!(missing, Err(CatalogError::Io { .. })));
    let table: &[(&str, &str)] = &[
        ("{", "invalid machine definition JSON"),
        (r#"{"bogus": 1}"#, "unknown field `bogus`"),
        (
            r#"{"machine-types": [{"name": "x", "inherits": "y"}]}"#,
            "machine type 'x' inherits from unknown machine type 'y'",
        ),
        (
            r#"{"machine-types": [{"name": "x", "board": "nope", "cpu-max": 1}]}"#,
            "machine type 'x' uses unknown board 'nope'",
        ),
        (
            r#"{"machine-types": [{"name": "x", "inherits": "q35", "alias": "pc"}]}"#,
            "machine type 'x' inherits from unknown machine type 'q35'",
        ),
        (
            r#"{"machine-types": [{"name": "x", "inherits": "pc-q35-10.2", "alias": "pc"}]}"#,
            "alias 'pc' of 'x' is already used by 'pc-i440fx-10.2'",
        ),
        (
            r#"{"machine-types": [{"name": "x", "inherits": "pc-q35-10.2", "is-default": true}]}"#,
            "more than one machine type is marked as default",
        ),
        (
            r#"{"device-types": [{"name": "d", "parent": "nope"}]}"#,
            "device type 'd' has unknown parent 'nope'",
        ),
        (
            r#"{"machine-types": [{"name": "x", "inherits": "pc-q35-10.2", "compat-sets": ["nope"]}]}"#,
            "machine type 'x' uses unknown compat set 'nope'",
        ),
    ];
    for (json, want) in table {
        let e = c.merge_json(json).unwrap_err().to_string();
        assert!(e.contains(want), "{json}: {e}");
    }
    // Failed merges leave the catalog as it was.
    assert_eq!(c.machine_types().len(), 37);
}

#[test]
fn device_types_and_interfaces() {
    let c = Catalog::builtin();
    // (type, implements pci-express-device, implements conventional-pci-device, bridge kind)
    let table: &[(&str, bool, bool, Option<&str>)] = &[
        ("virtio-net-pci", true, true, None),
        ("virtio-net-pci-transitional", false, true, None),
        ("virtio-net-pci-non-transitional", true, true, None),
        ("virtio-blk-pci-transitional", false, true, None),
        ("pcie-root-port", true, false, Some("pcie")),
        ("ioh3420", true, false, Some("pcie")),
        ("x3130-upstream", true, false, Some("pcie")),
        ("xio3130-downstream", true, false, Some("pcie")),
        ("pcie-pci-bridge", true, false, Some("pci")),
        ("pci-bridge", false, true, Some("pci")),
        ("i82801b11-bridge", false, true, Some("pci")),
        ("e1000e", true, false, None),
        ("e1000", false, true, None),
    ];
    for (name, express, conventional, bridge) in table {
        let t = c.device_type(name).unwrap();
        assert_eq!(t.implements("pci-express-device"), *express, "{name}");
        assert_eq!(
            t.implements("conventional-pci-device"),
            *conventional,
            "{name}"
        );
        let kind = t
            .bridge
            .as_ref()
            .map(|b| serde_json::to_value(b.bus_kind).unwrap());
        assert_eq!(kind.as_ref().and_then(|k| k.as_str()), *bridge, "{name}");
        assert!(t.ancestors.iter().any(|a| a == "pci-device"), "{name}");
    }
    assert_eq!(c.device_type("virtio-net").unwrap().name, "virtio-net-pci");
    assert_eq!(c.device_type("e1000-82540em").unwrap().name, "e1000");
    assert_eq!(
        c.device_type_by_libvirt_model("dmi-to-pci-bridge")
            .unwrap()
            .name,
        "i82801b11-bridge"
    );
    // QEMU does not accept libvirt's model names as drivers.
    let e = c
        .plan(&request("q35 -device dmi-to-pci-bridge").unwrap())
        .unwrap_err();
    assert_eq!(e, PlanError::UnknownDevice("dmi-to-pci-bridge".into()));
}

#[test]
fn machine_help_format() {
    let text = help::machine_help(Catalog::builtin());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "Supported machines are:");
    // QEMU sorts by family, then by class name in decreasing strcmp order (9.2 before 10.2).
    assert_eq!(
        lines[1],
        "pc-i440fx-9.2        Standard PC (i440FX + PIIX, 1996)"
    );
    let pc = lines.iter().position(|l| l.starts_with("pc   ")).unwrap();
    assert_eq!(
        lines[pc],
        "pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-10.2)"
    );
    assert_eq!(
        lines[pc + 1],
        "pc-i440fx-10.2       Standard PC (i440FX + PIIX, 1996) (default)"
    );
    assert!(text.contains("pc-q35-7.2           Standard PC (Q35 + ICH9, 2009) (deprecated)\n"));
    assert!(text.contains("pc-q35-8.0           Standard PC (Q35 + ICH9, 2009)\n"));
    let q35 = lines.iter().position(|l| l.starts_with("q35 ")).unwrap();
    assert_eq!(
        lines[q35 + 1],
        "pc-q35-10.2          Standard PC (Q35 + ICH9, 2009)"
    );
    assert!(pc < q35);
    assert_eq!(*lines.last().unwrap(), "none                 empty machine");
    assert_eq!(lines.len(), 1 + 37 + 2);
}

#[test]
fn device_help_format() {
    let text = help::device_help(Catalog::builtin());
    assert!(
        text.starts_with("Controller/Bridge/Hub devices:\nname \"i82801b11-bridge\", bus PCI\n")
    );
    for line in [
        "name \"ioh3420\", bus PCI, desc \"Intel IOH device id 3420 PCIE Root Port\"",
        "name \"pci-bridge\", bus PCI, desc \"Standard PCI Bridge\"",
        "name \"pcie-pci-bridge\", bus PCI",
        "name \"pcie-root-port\", bus PCI, desc \"PCI Express Root Port\"",
        "name \"x3130-upstream\", bus PCI, desc \"TI X3130 Upstream Port of PCI Express Switch\"",
        "name \"e1000\", bus PCI, alias \"e1000-82540em\", desc \"Intel Gigabit Ethernet\"",
        "name \"e1000e\", bus PCI, desc \"Intel 82574L GbE Controller\"",
        "name \"virtio-net-pci\", bus PCI, alias \"virtio-net\"",
        "name \"virtio-net-pci-transitional\", bus PCI",
        "name \"ich9-ahci\", bus PCI, alias \"ahci\"",
        "name \"virtio-net-device\", bus virtio-bus",
        "name \"isa-serial\", bus ISA",
    ] {
        assert!(text.contains(&format!("{line}\n")), "missing: {line}");
    }
    for heading in [
        "\n\nUSB devices:\n",
        "\n\nStorage devices:\n",
        "\n\nNetwork devices:\n",
        "\n\nMisc devices:\n",
    ] {
        assert!(text.contains(heading), "{heading}");
    }
    // Not user-creatable and abstract types are not listed.
    assert!(!text.contains("\"mch\""));
    assert!(!text.contains("\"virtio-pci\""));
    // Categories in QEMU's order.
    let pos = |s: &str| text.find(s).unwrap();
    assert!(pos("USB devices:") < pos("Storage devices:"));
    assert!(pos("Storage devices:") < pos("Network devices:"));
    assert!(pos("Network devices:") < pos("Input devices:"));
    assert!(pos("Display devices:") < pos("Misc devices:"));
}

#[test]
fn device_properties_help_format() {
    let c = Catalog::builtin();
    let text = help::device_properties_help(c, "pcie-root-port").unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "pcie-root-port options:");
    for l in [
        "  addr=<int32>           - Slot and optional function number, example: 06.0 or 06 (default: -1)",
        "  chassis=<uint8>        -  (default: 0)",
        "  hotplug=<bool>         - on/off (default: true)",
        "  multifunction=<bool>   - on/off (default: false)",
        "  romfile=<str>",
        "  x-speed=<str>          -  (default: \"16\")",
    ] {
        assert!(lines.contains(&l), "missing {l:?} in\n{text}");
    }
    let mut sorted = lines[1..].to_vec();
    sorted.sort();
    assert_eq!(sorted, lines[1..].to_vec());
    let text = help::device_properties_help(c, "virtio-net").unwrap();
    assert!(text.starts_with("virtio-net-pci options:\n"));
    assert!(text.contains("  disable-legacy=<OnOffAuto> - on/off/auto (default: \"auto\")\n"));
    assert_eq!(
        help::device_properties_help(c, "nope")
            .unwrap_err()
            .to_string(),
        "'nope' is not a valid device model name"
    );
    let text = help::machine_options_help(c, "q35").unwrap();
    assert!(text.starts_with("pc-q35-10.2-machine options:\n"), "{text}");
    // QEMU 7.2's layout for the same option.
    assert!(text.contains("\n  usb=<bool>             - Set on/off to enable/disable usb\n"));
}

#[test]
fn device_request_help_flag() {
    assert!(DeviceRequest::parse("virtio-net-pci,help")
        .unwrap()
        .wants_help());
    assert!(DeviceRequest::parse("help").unwrap().wants_help());
    assert!(!DeviceRequest::parse("e1000").unwrap().wants_help());
}

/// The one place of the rule "the south bridge's ACPI hot-plug owns cold-plugged bridges'
/// buses": each south bridge's catalog `acpi-bridge-hotplug` properties, all on, with the
/// machine type's compat properties applied; the plan carries the answer to the devices.
#[test]
fn acpi_bridge_hotplug_follows_the_south_bridge_properties() {
    let owns = |c: &Catalog, req: &str| c.plan(&request(req).unwrap()).unwrap().acpi_bridge_hotplug;
    let c = Catalog::builtin();
    assert!(owns(c, "pc-q35-10.2"));
    // pc-q35-6.0 turns ICH9-LPC's acpi-pci-hotplug-with-bridge-support off.
    assert!(!owns(c, "pc-q35-6.0"));
    assert!(owns(c, "pc-i440fx-10.2"));
    // No PIIX4_PM without ACPI.
    assert!(!owns(c, "pc-i440fx-10.2,acpi=off"));
    // PIIX4_PM needs acpi-root-pci-hotplug as well (it must handle pci.0 to see bridges).
    let mut c = Catalog::builtin().clone();
    c.merge_json(
        r#"{"machine-types": [{"name": "acme-pc-1.0", "inherits": "pc-i440fx-10.2",
            "compat-props": [{"qom-type": "PIIX4_PM", "property": "acpi-root-pci-hotplug",
                              "value": "off"}]}]}"#,
    )
    .unwrap();
    assert!(!owns(&c, "acme-pc-1.0"));
}

/// Every default of the built-in catalog decodes to a value of its declared type (a plan
/// never carries an undecoded default to the devices).
#[test]
fn catalog_defaults_are_typed() {
    let c = Catalog::builtin();
    for t in c.device_types() {
        for p in &t.properties {
            if let Some(v) = p.default_value() {
                assert!(
                    !matches!(v, machine::PropValue::Text(_)),
                    "{}.{}: default {:?} is not a {:?}",
                    t.name,
                    p.name,
                    p.default,
                    p.ty
                );
            }
        }
    }
}

/// `mac=` is decoded when the plan is made, with QEMU's grammar and error (the property of
/// a virtio proxy is its virtio device's).
#[test]
fn mac_is_decoded_at_plan_time() {
    let c = Catalog::builtin();
    let plan = |dev: &str| {
        let mut req = machine::PlanRequest::new("q35");
        req.devices
            .push(machine::DeviceRequest::parse(dev).unwrap());
        c.plan(&req)
    };
    let p = plan("virtio-net-pci,id=n,mac=52-54-00-AB-cd-01").unwrap();
    let f = p.function_by_id("n").unwrap();
    assert_eq!(
        f.properties.mac("mac").unwrap(),
        Some(machine::MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 1]))
    );
    assert_eq!(
        f.properties.text("mac").as_deref(),
        Some("52:54:00:ab:cd:01")
    );
    for (dev, owner) in [
        ("virtio-net-pci", "virtio-net-device"),
        ("e1000e", "e1000e"),
    ] {
        for bad in ["zz", "", "52:54:00:12:34", "1:2:3:4:5:6"] {
            assert_eq!(
                plan(&format!("{dev},mac={bad}")).unwrap_err().to_string(),
                format!("Property '{owner}.mac' doesn't take value '{bad}'")
            );
        }
    }
}
