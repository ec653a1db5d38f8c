//! Build a virtio-pci function from its plan entry and a backend the VMM opened.

use super::balloon::{Balloon, BalloonControl};
use super::blk::{Block, BlockBackend, BlockOptions};
use super::caps::ExpressFlags;
use super::console::{Console, ConsoleBackend, ConsoleInput};
use super::core::Core;
use super::device::VirtioDevice;
use super::interrupt::{IntxLine, VirtioInterrupt};
use super::net::{Net, NetBackend};
use super::pci_transport::{TransportParams, VirtioPciFunction};
use super::rng::Rng;
use super::worker::VirtioWorker;
use super::{balloon, blk, console, net, rng, VirtioError};
use machine::PciFunctionPlan;
use std::io::Read;
use std::sync::Arc;
use vm_memory::GuestMemoryMmap;

/// What backs the device: chosen by the VMM from `-drive`, `-netdev`, `-object rng-*`,
/// `-chardev`.
pub enum VirtioBackend {
    Block(BlockBackend),
    Net(NetBackend),
    Rng(Box<dyn Read + Send>),
    Console(ConsoleBackend),
    /// The host's side of a balloon (one per process, kept across builds).
    Balloon(Arc<BalloonControl>),
}

impl VirtioBackend {
    fn name(&self) -> &'static str {
        match self {
            Self::Block(_) => "block",
            Self::Net(_) => "net",
            Self::Rng(_) => "rng",
            Self::Console(_) => "console",
            Self::Balloon(_) => "balloon",
        }
    }
}

/// A built device: the PCI function for the host, the worker for the event manager and,
/// for consoles, the handle that feeds guest input.
pub struct VirtioParts {
    pub function: VirtioPciFunction,
    pub worker: VirtioWorker,
    pub console_input: Option<ConsoleInput>,
}

/// VIRTIO_BLK_AUTO_NUM_QUEUES: `num-queues` left to the device.
const AUTO_NUM_QUEUES: u16 = u16::MAX;
/// QEMU's DEV_NVECTORS_UNSPECIFIED.
const VECTORS_UNSPECIFIED: u64 = 0xffff_ffff;
/// ROM BAR of virtio-net-pci (efi-virtio.rom).
const NET_ROM_SIZE: u64 = 256 * 1024;

/// Build the function `plan` describes. MSI-X messages go to the sink the PCI host hands
/// every function (`PciFunction::set_msi_sink`); INTx, used while MSI-X is off, to `intx`.
pub fn create(
    plan: &PciFunctionPlan,
    backend: VirtioBackend,
    mem: GuestMemoryMmap,
    intx: Option<Arc<dyn IntxLine>>,
) -> Result<VirtioParts, VirtioError> {
    let mode = plan
        .virtio
        .ok_or_else(|| VirtioError::NotVirtio(plan.type_name.clone()))?;
    let props = &plan.properties;
    let mismatch = |b: &VirtioBackend| VirtioError::Backend {
        type_name: plan.type_name.clone(),
        backend: b.name(),
        device_type: mode.device_type,
    };
    let mut console_input = None;
    let mut rom = None;
    let mut disk_size = None;
    let mut balloon_control = None;
    // QEMU's per-type "vectors" defaults when the property is left unspecified.
    let (device, default_vectors): (Box<dyn VirtioDevice>, u16) = match (mode.device_type, backend)
    {
        (blk::DEVICE_TYPE, VirtioBackend::Block(b)) => {
            let nq = props.u16("num-queues", AUTO_NUM_QUEUES)?;
            let opts = BlockOptions {
                serial: props.str("serial", "")?.to_string(),
                // The planner refused 0 and more than the model serves.
                num_queues: if nq == AUTO_NUM_QUEUES {
                    b.auto_num_queues
                } else {
                    nq
                }
                .clamp(1, blk::MAX_QUEUES),
                queue_size: props.u16("queue-size", 256)?,
                discard: props.bool("discard", true)?,
                write_zeroes: props.bool("write-zeroes", true)?,
                config_wce: props.bool("config-wce", true)?,
            };
            let nq = opts.num_queues;
            disk_size = Some(b.disk_size.clone());
            let dev = Block::new(b, opts).map_err(|source| VirtioError::Io {
                what: "virtio-blk image size".into(),
                source,
            })?;
            (Box::new(dev), nq + 1)
        }
        (net::DEVICE_TYPE, VirtioBackend::Net(n)) => {
            if !props.str("romfile", "efi-virtio.rom")?.is_empty() {
                rom = Some(NET_ROM_SIZE);
            }
            let mut requested = 0;
            for &(name, bit, default) in net::FEATURE_PROPERTIES {
                if props.bool(name, default)? {
                    requested |= bit;
                }
            }
            let dev = Net::with_features(n, requested);
            // QEMU's default: a vector per queue (two per pair), one for the control
            // queue and one for config changes.
            let vectors = dev.queue_max_sizes().len() as u16 + 1;
            (Box::new(dev), vectors)
        }
        (rng::DEVICE_TYPE, VirtioBackend::Rng(src)) => (Box::new(Rng::new(src)), 2),
        (console::DEVICE_TYPE, VirtioBackend::Console(c)) => {
            let ports = props.u64("max_ports", 31)?.clamp(1, 31) as u32;
            let dev = Console::new(c, ports).map_err(|source| VirtioError::Io {
                what: "virtio-serial input".into(),
                source,
            })?;
            console_input = Some(dev.input());
            (Box::new(dev), 2)
        }
        (balloon::DEVICE_TYPE, VirtioBackend::Balloon(control)) => {
            // Free-page hinting and reporting need queues and a migration/reporting
            // protocol machina does not have: refused rather than offered and ignored.
            for prop in ["free-page-hint", "free-page-reporting"] {
                if props.bool(prop, false)? {
                    return Err(VirtioError::Refused(format!(
                        "{}: machina does not model the balloon's {prop}",
                        plan.type_name
                    )));
                }
            }
            balloon_control = Some(control.clone());
            let dev = Balloon::new(
                control,
                &mem,
                props.bool("deflate-on-oom", false)?,
                props.bool("page-poison", true)?,
                props.bool("qemu-4-0-config-size", false)?,
            );
            (Box::new(dev), 2)
        }
        (t @ (1..=5), b) => {
            let _ = t;
            return Err(mismatch(&b));
        }
        (t, _) => return Err(VirtioError::Unsupported(t)),
    };
    let vectors = match props.u64("vectors", VECTORS_UNSPECIFIED)? {
        VECTORS_UNSPECIFIED => default_vectors,
        v => v.min(u64::from(crate::pci::msix::MSIX_MAX_VECTORS)) as u16,
    };
    let express = if mode.pcie_capability {
        Some(ExpressFlags {
            deverr_init: props.bool("x-pcie-deverr-init", true)?,
            lnkctl_init: props.bool("x-pcie-lnkctl-init", true)?,
            flr_init: props.bool("x-pcie-flr-init", true)?,
            // Off by default since QEMU 9.1 added it ("Set it false by default for safety",
            // hw/virtio/virtio-pci.c virtio_pci_properties; hw_compat_9_0 repeats "off").
            pm_no_soft_reset: props.bool("x-pcie-pm-no-soft-reset", false)?,
        })
    } else {
        None
    };
    let queues = device.queue_max_sizes().len();
    let irq = Arc::new(VirtioInterrupt::new(None, queues));
    if let Some(line) = intx {
        irq.set_intx_line(line);
    }
    if let Some(size) = &disk_size {
        size.attach(&irq);
    }
    if let Some(control) = &balloon_control {
        control.attach(&irq);
    }
    let name = crate::logging::pci_name(plan);
    let core = Core::new(name, device, mem, irq, mode.legacy, mode.modern).map_err(|source| {
        VirtioError::Io {
            what: "queue EventFd".into(),
            source,
        }
    })?;
    let params = TransportParams {
        legacy: mode.legacy,
        modern: mode.modern,
        ioeventfd: props.bool("ioeventfd", true)?,
        express,
        vectors,
        rom,
    };
    let (function, core) = VirtioPciFunction::new(plan, core, queues, params)?;
    Ok(VirtioParts {
        function,
        worker: VirtioWorker::new(core),
        console_input,
    })
}
