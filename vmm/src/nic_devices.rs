//! NIC models that move frames themselves (the e1000e; virtio-net is built with the virtio
//! devices): the function's netdev opened as for virtio-net (`virtio_devices::open_net`: a
//! tap, the socket pair to the network thread, or a lone socket without netdev), guest
//! memory, and its INTx pin queued through the run loop; the model's kind builds it
//! (`PciKind::build_nic`) and its backend worker joins the device threads.

use crate::backends::Backend;
use crate::memory::GuestMemory;
use crate::virtio_devices::{open_net, FunctionIntx, IntxForwarder, VirtioSet, Worker};
use devices::pci::nic::NicBackend;
use devices::pci::{BusPlacement, PciError, SharedFunction};
use machine::{BusKind, PciFunctionPlan, Plan};
use std::sync::Arc;

/// Build `f` if its kind moves frames itself; None for every other function.
pub fn build(
    f: &PciFunctionPlan,
    plan: &Plan,
    backends: &[Backend],
    memory: &GuestMemory,
    forwarder: &Arc<IntxForwarder>,
    set: &mut VirtioSet,
) -> Option<Result<SharedFunction, PciError>> {
    let kind = devices::kinds::kind_of(f);
    if !kind.moves_frames() {
        return None;
    }
    let mut build = || {
        let bus = plan
            .bus(&f.bus)
            .ok_or_else(|| PciError::UnknownBus(f.bus.clone()))?;
        let placement = BusPlacement {
            express: bus.kind == BusKind::Pcie,
            root: bus.is_root,
        };
        let net = open_net(f, plan, backends, set)?;
        let netdev = f.properties.nonempty_str("netdev").and_then(|id| {
            backends.iter().find_map(|b| match b {
                Backend::Netdev {
                    id: n,
                    handle: Some(netdev),
                    ..
                } if n == id => Some(netdev.clone()),
                _ => None,
            })
        });
        let parts = kind.build_nic(
            f,
            placement,
            NicBackend {
                file: net.tap,
                mac: net.mac,
                memory: Arc::new(memory.clone()),
                intx: Arc::new(FunctionIntx {
                    forwarder: forwarder.clone(),
                    bus: f.bus.clone(),
                    devfn: f.devfn(),
                }),
                pull: netdev.map(|n| Arc::new(move || n.pull()) as Arc<dyn Fn() + Send + Sync>),
            },
        )?;
        set.workers.push((Worker::Nic(parts.worker), None));
        Ok(parts.function)
    };
    Some(build())
}
