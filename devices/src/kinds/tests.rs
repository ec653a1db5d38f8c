//! The registry against the catalog: every concrete PCI type of the builtin catalog has a
//! kind and is planned and built; a type is modelled when its kind gives it a model (not a
//! header only) or, for virtio, when `virtio::create` has a device for it.

use super::{kind_of, KINDS};
use crate::lifecycle::Lifecycle;
use crate::pci::{endpoints, BusPlacement, FunctionContext, PciKind};
use crate::virtio::{self, VirtioBackend, VirtioError};
use machine::{BusKind, Catalog, DeviceRequest, PciFunctionPlan, Plan, PlanRequest};
use vm_memory::{GuestAddress, GuestMemoryMmap};

fn request(machine: &str, devices: &[&str]) -> PlanRequest {
    PlanRequest {
        machine: Some(machine.into()),
        ram_size: 256 << 20,
        cpus: 1,
        devices: devices
            .iter()
            .map(|d| DeviceRequest::parse(d).expect("device"))
            .collect(),
        ..Default::default()
    }
}

/// A plan holding a function of type `name` (defaults, `-device`, or behind its parent).
fn plan_with(catalog: &Catalog, name: &str) -> Option<(Plan, PciFunctionPlan)> {
    let device = name.to_string();
    let with_chassis = format!("{name},chassis_nr=1");
    let upstream = "x3130-upstream,id=up,bus=rp".to_string();
    let downstream = format!("{name},bus=up,chassis=9");
    let attempts: Vec<(&str, Vec<&str>)> = vec![
        ("q35", vec![]),
        ("pc", vec![]),
        ("q35", vec![&device]),
        ("pc", vec![&device]),
        ("pc", vec![&with_chassis]),
        (
            "q35",
            vec!["pcie-root-port,id=rp,chassis=8", &upstream, &downstream],
        ),
    ];
    for (machine, devices) in attempts {
        let Ok(plan) = catalog.plan(&request(machine, &devices)) else {
            continue;
        };
        if let Some(f) = plan.pci.iter().find(|f| f.type_name == name) {
            let f = f.clone();
            return Some((plan, f));
        }
    }
    None
}

/// Whether machina builds a device model for `f` (and not just its header).
fn built_with_model(plan: &Plan, f: &PciFunctionPlan) -> bool {
    if let Some(mode) = f.virtio {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("memory");
        let any_backend = VirtioBackend::Rng(Box::new(std::io::empty()));
        return match virtio::create(f, any_backend, mem, None) {
            Ok(_) | Err(VirtioError::Backend { .. }) => true,
            Err(VirtioError::Unsupported(t)) => {
                assert_eq!(t, mode.device_type);
                false
            }
            Err(e) => panic!("{}: {e}", f.type_name),
        };
    }
    let bus = plan.buses.iter().find(|b| b.id == f.bus).expect("bus");
    let placement = BusPlacement {
        express: bus.kind == BusKind::Pcie,
        root: bus.is_root,
    };
    let lifecycle = Lifecycle::new().expect("lifecycle");
    let kind = kind_of(f);
    kind.build(&FunctionContext {
        function: f,
        plan,
        lifecycle: &lifecycle,
        placement,
        kind_of,
    })
    .unwrap_or_else(|e| panic!("{}: {e}", f.type_name));
    !kind.header_only()
}

/// The kind a concrete catalog type gets, unless it is only the fallback for types no kind
/// claims.
fn claimed(f: &PciFunctionPlan) -> bool {
    !std::ptr::addr_eq(kind_of(f), &endpoints::UNKNOWN as &dyn PciKind)
}

#[test]
fn every_concrete_catalog_type_has_a_kind() {
    let catalog = Catalog::builtin();
    let mut missing = Vec::new();
    for ty in catalog.device_types() {
        if ty.is_abstract || !ty.is_pci() {
            continue;
        }
        let (_, f) = plan_with(catalog, &ty.name)
            .unwrap_or_else(|| panic!("{}: no plan places it", ty.name));
        if !claimed(&f) {
            missing.push(ty.name.clone());
        }
    }
    assert!(missing.is_empty(), "no kind implements {missing:?}");
}

#[test]
fn no_two_kinds_claim_a_name() {
    let header_only = endpoints::HEADER_ONLY.iter().map(|k| k as &dyn PciKind);
    let mut seen = std::collections::BTreeMap::new();
    for kind in KINDS.iter().copied().chain(header_only) {
        assert!(!kind.names().is_empty());
        for name in kind.names() {
            assert!(seen.insert(*name, ()).is_none(), "{name} claimed twice");
        }
    }
}

#[test]
fn catalog_modelled_flag_matches_what_is_built() {
    let catalog = Catalog::builtin();
    let mut checked = Vec::new();
    for ty in catalog.device_types() {
        if ty.is_abstract || !ty.is_pci() {
            continue;
        }
        let (plan, f) = plan_with(catalog, &ty.name)
            .unwrap_or_else(|| panic!("{}: no plan places it", ty.name));
        assert_eq!(
            ty.modelled,
            built_with_model(&plan, &f),
            "{}: catalog says modelled={}",
            ty.name,
            ty.modelled
        );
        checked.push(ty.name.clone());
    }
    // The sweep really covered both kinds.
    for name in [
        "VGA",
        "virtio-scsi-pci",
        "e1000",
        "piix3-usb-uhci",
        "ich9-usb-ehci1",
    ] {
        assert!(checked.iter().any(|c| c == name), "{name} not checked");
        assert!(!catalog.device_type(name).expect(name).modelled, "{name}");
    }
    for name in [
        "virtio-blk-pci",
        "e1000e",
        "pcie-root-port",
        "mch",
        "ich9-ahci",
    ] {
        assert!(checked.iter().any(|c| c == name), "{name} not checked");
        assert!(catalog.device_type(name).expect(name).modelled, "{name}");
    }
}

/// virtio-net's feature properties (QEMU's virtio_net_properties, DEFINE_PROP_BIT64) and
/// the feature bit each one offers.
const NET_FEATURE_PROPS: &[(&str, u32)] = &[
    ("csum", 0),
    ("guest_csum", 1),
    ("ctrl_guest_offloads", 2),
    ("host_mtu", 3),
    ("mac", 5),
    ("guest_tso4", 7),
    ("guest_tso6", 8),
    ("guest_ecn", 9),
    ("guest_ufo", 10),
    ("host_tso4", 11),
    ("host_tso6", 12),
    ("host_ecn", 13),
    ("host_ufo", 14),
    ("mrg_rxbuf", 15),
    ("status", 16),
    ("ctrl_vq", 17),
    ("ctrl_rx", 18),
    ("ctrl_vlan", 19),
    ("ctrl_rx_extra", 20),
    ("guest_announce", 21),
    ("mq", 22),
    ("ctrl_mac_addr", 23),
    ("hash", 57),
    ("rss", 60),
];

#[test]
fn virtio_net_lists_the_features_its_model_offers() {
    use crate::virtio::net::{Net, NetBackend};
    use crate::virtio::VirtioDevice;
    let catalog = Catalog::builtin();
    let ty = catalog
        .device_type("virtio-net-pci")
        .expect("virtio-net-pci");
    // The tap is not touched to ask for features.
    let tap = std::fs::File::open("/dev/null").expect("/dev/null");
    // Every feature property on: what the model can offer at all.
    let backend = NetBackend {
        tap,
        mac: machine::MacAddr::FIRST_DEFAULT,
        more_queues: Vec::new(),
        announce: None,
    };
    let offered = Net::with_features(backend, u64::MAX).features();
    for (name, bit) in NET_FEATURE_PROPS {
        let p = ty
            .property(name)
            .unwrap_or_else(|| panic!("{name} in the catalog"));
        assert_eq!(
            !p.inert,
            offered & (1u64 << bit) != 0,
            "virtio-net-pci.{name} (feature bit {bit}): listed={}",
            !p.inert
        );
    }
}

#[test]
fn catalog_isa_types_have_a_kind_exactly_when_modelled() {
    let catalog = Catalog::builtin();
    let mut checked = 0;
    for ty in catalog.device_types() {
        if ty.is_abstract || ty.isa.is_none() {
            continue;
        }
        assert_eq!(
            super::isa_kind(&ty.name).is_some(),
            ty.modelled,
            "{}: catalog says modelled={}",
            ty.name,
            ty.modelled
        );
        checked += 1;
    }
    assert!(checked >= 2, "the sweep covered the ISA types");
}
