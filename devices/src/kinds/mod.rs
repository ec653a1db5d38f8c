//! The registry of device kinds: each catalog type name (resources/machines/devices.json,
//! and the boards' ISA devices) maps to the one [`PciKind`] or [`IsaKind`] that implements
//! it, in its own module. Adding a kind is one entry in [`KINDS`] or [`ISA_KINDS`]; the
//! kind's module lists the names it implements.
//!
//! Virtio-pci types are found by the catalog's `virtio` data rather than by name (the VMM
//! builds their devices); a type no kind claims (one a `-machine-definition` adds) is built
//! as its header. `tests.rs` checks that every concrete catalog type is claimed, and that
//! exactly the types the catalog calls `modelled` get a model.

use crate::chipset::{ahci, i440fx, ich9_lpc, ich9_smbus, mch, piix3, piix4_pm};
use crate::e1000e;
use crate::legacy::kind::IsaKind;
use crate::legacy::{cmos, fw_cfg, i8042, ib700, port92, pvpanic, serial, sink};
use crate::pci::bridges::{dmi, pci_bridge};
use crate::pci::endpoints;
use crate::pci::ports::{root_port, switch};
use crate::pci::{PciError, PciKind};
use machine::{MacAddr, PciFunctionPlan, Plan};
use std::collections::HashMap;
use std::sync::OnceLock;

#[cfg(test)]
mod tests;

/// Every kind with a model of its own.
static KINDS: &[&dyn PciKind] = &[
    // Host bridges and south bridges.
    &mch::KIND,
    &i440fx::KIND,
    &ich9_lpc::KIND,
    &piix3::KIND,
    &crate::ide::piix::KIND,
    &piix4_pm::KIND,
    &ahci::KIND,
    &ich9_smbus::KIND,
    // Bridges and ports.
    &root_port::GENERIC_KIND,
    &root_port::IOH3420_KIND,
    &switch::UPSTREAM_KIND,
    &switch::DOWNSTREAM_KIND,
    &pci_bridge::PCI_BRIDGE_KIND,
    &pci_bridge::PCIE_TO_PCI_KIND,
    &dmi::KIND,
    // Endpoints.
    &e1000e::KIND,
    &crate::pci::pvpanic_pci::KIND,
];

/// Every ISA device kind.
static ISA_KINDS: &[&dyn IsaKind] = &[
    &serial::KIND,
    &cmos::KIND,
    &i8042::KIND,
    &port92::KIND,
    &sink::KIND,
    &ib700::KIND,
    &pvpanic::KIND,
    &fw_cfg::KIND,
];

/// The kind of the plan's ISA device type `name`; None for devices machina leaves to KVM
/// (PIC, PIT, IOAPIC) or does not model.
pub fn isa_kind(name: &str) -> Option<&'static dyn IsaKind> {
    ISA_KINDS
        .iter()
        .copied()
        .find(|k| k.names().contains(&name))
}

fn by_name() -> &'static HashMap<&'static str, &'static dyn PciKind> {
    static MAP: OnceLock<HashMap<&'static str, &'static dyn PciKind>> = OnceLock::new();
    MAP.get_or_init(|| {
        let header_only = endpoints::HEADER_ONLY.iter().map(|k| k as &dyn PciKind);
        let mut map = HashMap::new();
        for kind in KINDS.iter().copied().chain(header_only) {
            for &name in kind.names() {
                map.insert(name, kind);
            }
        }
        map
    })
}

/// The kind that implements PCI type `name`, if one does.
pub fn pci_kind(name: &str) -> Option<&'static dyn PciKind> {
    by_name().get(name).copied()
}

/// The kind that builds planned function `f`.
pub fn kind_of(f: &PciFunctionPlan) -> &'static dyn PciKind {
    if let Some(kind) = by_name().get(f.type_name.as_str()) {
        return *kind;
    }
    if f.virtio.is_some() {
        return &endpoints::VIRTIO;
    }
    &endpoints::UNKNOWN
}

/// Whether `f` is a network function (QEMU's default MAC numbering counts it).
pub fn is_nic(f: &PciFunctionPlan) -> bool {
    kind_of(f).is_nic(f)
}

/// The MAC QEMU gives `f`: its `mac=` or the next free default; None if it is not a NIC.
pub fn mac_of(plan: &Plan, f: &PciFunctionPlan) -> Result<Option<MacAddr>, PciError> {
    crate::pci::nic::mac_of(plan, f, &is_nic)
}
