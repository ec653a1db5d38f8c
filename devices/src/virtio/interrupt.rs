//! Interrupt state shared by the transport (vCPU threads) and the device worker: the ISR,
//! the MSI-X table and the vectors the driver assigned, delivered as QEMU's
//! virtio_pci_notify does (MSI-X when enabled, otherwise INTx following ISR bit 0).

use super::regs::{ISR_CONFIG, ISR_QUEUE, NO_VECTOR};
use crate::pci::interrupt::MsiSink;
use crate::pci::msix::Msix;
use std::sync::{Arc, Mutex, MutexGuard};

/// The function's INTx pin. The VMM implements it; it is called with device locks held, so
/// an implementation must not wait for the PCI host or function locks (record the level and
/// let another thread call `PciHost::set_intx`, or drive the GSI directly).
pub trait IntxLine: Send + Sync {
    fn set_level(&self, level: bool);
}

pub(crate) struct IrqState {
    pub isr: u8,
    pub msix: Option<Msix>,
    pub msi: Option<Arc<dyn MsiSink>>,
    pub intx: Option<Arc<dyn IntxLine>>,
    pub intx_level: bool,
    pub config_vector: u16,
    pub queue_vectors: Vec<u16>,
    /// Config changes signalled (block_resize): added to the config generation.
    pub config_changes: u8,
}

/// A sink that drops messages, until the host hands out the real one.
struct NoMsi;
impl MsiSink for NoMsi {
    fn send(&self, _address: u64, _data: u32) {}
}

impl IrqState {
    pub fn msix_enabled(&self) -> bool {
        self.msix.as_ref().is_some_and(|m| m.enabled())
    }

    /// Split borrow: the MSI-X state and the sink to deliver through.
    pub fn msix_and_sink(&mut self) -> Option<(&mut Msix, &dyn MsiSink)> {
        let sink: &dyn MsiSink = match &self.msi {
            Some(s) => s.as_ref(),
            None => &NoMsi,
        };
        self.msix.as_mut().map(|m| (m, sink))
    }

    /// INTx follows ISR bit 0 while MSI-X is off (QEMU: pci_set_irq(isr & 1)).
    pub fn update_intx(&mut self) {
        let level = !self.msix_enabled() && self.isr & ISR_QUEUE != 0;
        self.set_intx(level);
    }

    pub fn set_intx(&mut self, level: bool) {
        if level != self.intx_level {
            self.intx_level = level;
            if let Some(l) = &self.intx {
                l.set_level(level);
            }
        }
    }

    fn notify_vector(&mut self, vector: u16) {
        if self.msix_enabled() {
            if vector != NO_VECTOR {
                if let Some((m, sink)) = self.msix_and_sink() {
                    m.notify(vector, sink);
                }
            }
        } else {
            self.update_intx();
        }
    }

    /// msix_vector_use: a vector outside the table reads back as NO_VECTOR.
    pub fn checked_vector(&self, v: u16) -> u16 {
        match &self.msix {
            Some(m) if v < m.vectors() => v,
            _ => NO_VECTOR,
        }
    }
}

/// Interrupt state of one virtio-pci function.
pub struct VirtioInterrupt {
    state: Mutex<IrqState>,
    /// A split-off queue handler's view (see `VirtioDevice::split`): its queue `i` is the
    /// function's queue `base + i`, signalled there.
    parent: Option<(Arc<VirtioInterrupt>, usize)>,
}

impl VirtioInterrupt {
    pub(crate) fn new(msix: Option<Msix>, queues: usize) -> Self {
        Self {
            state: Mutex::new(IrqState {
                isr: 0,
                msix,
                msi: None,
                intx: None,
                intx_level: false,
                config_vector: NO_VECTOR,
                queue_vectors: vec![NO_VECTOR; queues],
                config_changes: 0,
            }),
            parent: None,
        }
    }

    /// What a handler of the queues from `base` on signals: `parent`'s vectors, its queue
    /// numbers moved by `base`.
    pub(crate) fn offset(parent: &Arc<VirtioInterrupt>, base: usize) -> Self {
        let mut view = Self::new(None, 0);
        view.parent = Some((parent.clone(), base));
        view
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, IrqState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where MSI-X messages go (the VMM's KVM_SIGNAL_MSI sink).
    pub fn set_msi_sink(&self, sink: Arc<dyn MsiSink>) {
        self.lock().msi = Some(sink);
    }

    /// The INTx line used while MSI-X is disabled.
    pub fn set_intx_line(&self, line: Arc<dyn IntxLine>) {
        let mut s = self.lock();
        let level = s.intx_level;
        if level {
            line.set_level(true);
        }
        s.intx = Some(line);
    }

    /// Current INTx level (ISR bit 0 with MSI-X off).
    pub fn intx_level(&self) -> bool {
        self.lock().intx_level
    }

    /// A used buffer on queue `idx` (virtio_notify).
    pub fn signal_queue(&self, idx: usize) {
        if let Some((parent, base)) = &self.parent {
            return parent.signal_queue(base + idx);
        }
        let mut s = self.lock();
        s.isr |= ISR_QUEUE;
        let v = s.queue_vectors.get(idx).copied().unwrap_or(NO_VECTOR);
        s.notify_vector(v);
    }

    /// The device configuration changed (virtio_notify_config).
    pub fn signal_config(&self) {
        if let Some((parent, _)) = &self.parent {
            return parent.signal_config();
        }
        let mut s = self.lock();
        s.isr |= ISR_QUEUE | ISR_CONFIG;
        s.config_changes = s.config_changes.wrapping_add(1);
        let v = s.config_vector;
        s.notify_vector(v);
    }

    /// ISR read: return and clear, and drop INTx.
    pub(crate) fn read_isr(&self) -> u8 {
        let mut s = self.lock();
        let v = std::mem::take(&mut s.isr);
        s.set_intx(false);
        v
    }

    /// Device reset: ISR, vectors and the MSI-X table back to power-on state.
    pub(crate) fn reset(&self, reset_msix: bool) {
        let mut s = self.lock();
        s.isr = 0;
        s.config_vector = NO_VECTOR;
        s.queue_vectors.fill(NO_VECTOR);
        if reset_msix {
            if let Some(m) = s.msix.as_mut() {
                m.reset();
            }
        }
        s.set_intx(false);
    }
}
