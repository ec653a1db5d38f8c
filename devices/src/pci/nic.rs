//! MAC addresses of network functions as QEMU assigns them: an explicit `mac=` is kept,
//! every other NIC gets 52:54:00:12:34:xx with the lowest free xx from 0x56, in creation
//! order (net/net.c qemu_macaddr_default_if_unset, qemu_macaddr_get_free/set_used).
//! Explicit MACs inside that range mark their index used for the NICs created after them.

use super::host::SharedFunction;
use super::PciError;
use machine::{MacAddr, MacAllocator, PciFunctionPlan, Plan};
use std::fs::File;
use std::sync::Arc;

/// What the VMM hands a NIC model that moves frames itself (`PciKind::build_nic`).
pub struct NicBackend {
    /// Where frames go and come from: a datagram socket (the netdev's socket pair, or a
    /// lone socket for a NIC without netdev) that passes bare frames, or a tap opened with
    /// a virtio-net header (see `is_socket`).
    pub file: File,
    pub mac: MacAddr,
    /// Guest memory for descriptor and buffer DMA (bounds-checked accesses).
    pub memory: Arc<dyn crate::ide::DmaMemory>,
    /// The function's INTx pin (queued by the VMM: it may be raised under device locks).
    pub intx: Arc<dyn crate::virtio::IntxLine>,
    /// Asks the network backend to hand over, before returning, the frames it already
    /// holds (a netdev relayed by the VMM's network thread); None where `file` is the
    /// whole backend.
    pub pull: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// A built NIC: the function for the PCI host and the worker that waits on its backend.
pub struct NicParts {
    pub function: SharedFunction,
    pub worker: Box<dyn NicWorker>,
}

/// The backend side of a NIC model, run on a device thread's event loop.
pub trait NicWorker: event_manager::MutEventSubscriber + Send {
    /// The device's name in log lines.
    fn name(&self) -> String;
}

/// The MAC QEMU gives `target` (matched by bus and devfn): its `mac=` or the next default
/// address of the NICs created before it; None if it is not a NIC of the plan. `is_nic`
/// says which functions are NICs (their kind).
pub fn mac_of(
    plan: &Plan,
    target: &PciFunctionPlan,
    is_nic: &dyn Fn(&PciFunctionPlan) -> bool,
) -> Result<Option<MacAddr>, PciError> {
    let mut table = MacAllocator::default();
    for f in plan.pci.iter().filter(|f| is_nic(f)) {
        let mac = table.assign(f.properties.mac("mac")?);
        if f.bus == target.bus && f.devfn() == target.devfn() {
            return Ok(Some(mac));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use machine::{Catalog, DeviceRequest, PlanRequest};

    /// QEMU 7.2 gives `-device virtio-net-pci -device e1000e,mac=52:54:00:12:34:57
    /// -device virtio-net-pci -device e1000e,mac=02:00:00:00:00:01 -device e1000e`
    /// 52:54:00:12:34:56, …:57, …:58, 02:00:00:00:00:01, …:59 (`info network`).
    #[test]
    fn default_macs_in_creation_order() {
        let mut req = PlanRequest::new("q35");
        req.nodefaults = true;
        for d in [
            "virtio-net-pci",
            "e1000e,mac=52:54:00:12:34:57",
            "virtio-net-pci",
            "e1000e,mac=02-00-00-00-00-01",
            "e1000e",
        ] {
            req.devices.push(DeviceRequest::parse(d).unwrap());
        }
        let plan = Catalog::builtin().plan(&req).unwrap();
        let macs: Vec<String> = plan
            .pci
            .iter()
            .filter(|f| !f.implicit)
            .map(|f| {
                mac_of(&plan, f, &crate::kinds::is_nic)
                    .unwrap()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            macs,
            [
                "52:54:00:12:34:56",
                "52:54:00:12:34:57",
                "52:54:00:12:34:58",
                "02:00:00:00:00:01",
                "52:54:00:12:34:59"
            ]
        );
        let bridge = plan.pci.iter().find(|f| f.implicit).unwrap();
        assert_eq!(mac_of(&plan, bridge, &crate::kinds::is_nic).unwrap(), None);
    }
}
