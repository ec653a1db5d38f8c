//! The Intel 82574L (`e1000e`, 8086:10d3), a PCI Express gigabit NIC, as QEMU 10.0 models it
//! (hw/net/e1000e.c, e1000e_core.c): the config space of [`config`], the register file in
//! BAR 0 and through the I/O window of BAR 2 ([`mmio`]: NVM, PHY over MDIC, interrupt cause
//! and mask registers, filters, statistics), MSI-X in BAR 3 with QEMU's 5 vectors, MSI and
//! INTx, one transmit ([`tx`]: legacy, context and data descriptors, checksum offload and
//! TCP segmentation done in software) and one receive queue ([`rx`]: legacy and extended
//! descriptors, address/multicast/VLAN filters, checksum verification).
//!
//! Frames go to and come from a [`backend::NetIo`]: the datagram socket pair of a netdev
//! (or a lone socket for a NIC without one) or a tap with a virtio-net header. Transmission
//! runs when the guest writes TDT, on its vCPU thread; reception runs when the backend has
//! frames ([`backend::RxWorker`] on a device thread) and when the guest gives descriptors
//! (RDT, RCTL). A frame that finds no descriptor stays in the device and the backend is not
//! read until the guest adds some, so the netdev's socket buffers hold the rest (flow
//! control, as QEMU's e1000e_can_receive).
//!
//! What QEMU has and this model does not: interrupt moderation timers (ITR, EITR, RDTR,
//! RADV, TIDV, TADV are kept but interrupts are not delayed), packet-split receive
//! descriptors (RCTL.DTYP; logged as unimplemented, frames dropped), the second queue pair
//! and RSS, IEEE 1588 time stamps, wake-up filters.

pub mod backend;
mod config;
mod mmio;
pub mod regs;
mod rx;
mod tx;

#[cfg(test)]
mod tests;

pub use config::device_serial_number;

use crate::ide::DmaMemory;
use crate::pci::config::PciConfig;
use crate::pci::device::{BusPlacement, PciFunction};
use crate::pci::host::SharedFunction;
use crate::pci::interrupt::MsiSink;
use crate::pci::kind::{FunctionContext, PciKind};
use crate::pci::msi::MsiCap;
use crate::pci::msix::Msix;
use crate::pci::nic::{NicBackend, NicParts};
use crate::pci::regs::COMMAND_MASTER;
use crate::pci::PciError;
use crate::virtio::IntxLine;
use backend::NetIo;
use machine::PciFunctionPlan;
use regs::*;
use std::sync::{Arc, Mutex};

/// Words of the NVM (EEPROM) image.
const NVM_WORDS: usize = 64;

pub struct E1000e {
    /// How log lines name the device.
    name: String,
    config: PciConfig,
    msix: Msix,
    msi: MsiCap,
    msi_sink: Option<Arc<dyn MsiSink>>,
    intx: Option<Arc<dyn IntxLine>>,
    intx_level: bool,
    /// The register file, one word per 4 bytes of BAR 0.
    mac: Box<[u32]>,
    phy: [[u16; PHY_PAGE_SIZE]; PHY_PAGES],
    nvm: [u16; NVM_WORDS],
    permanent_mac: [u8; 6],
    /// ITR and EITR as the guest wrote them.
    itr_guest: u32,
    eitr_guest: [u32; MSIX_VECTORS as usize],
    /// The I/O window's address register (IOADDR).
    ioaddr: u32,
    tx: tx::TxState,
    rx: rx::RxState,
    /// Guest memory; None only for a model built without a backend (no DMA).
    mem: Option<Arc<dyn DmaMemory>>,
    io: Option<NetIo>,
    /// Asks the backend for the frames it holds (`NicBackend::pull`).
    pull: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Guest errors already reported (each kind once, so a looping guest cannot flood).
    reported: u32,
}

/// A sink that drops messages until the host hands over the real one.
struct NoSink;

impl MsiSink for NoSink {
    fn send(&self, _address: u64, _data: u32) {}
}

impl E1000e {
    /// The model at power-on, without a network backend or guest memory.
    pub fn new(f: &PciFunctionPlan, bus: BusPlacement, mac: [u8; 6]) -> Result<Self, PciError> {
        let (config, msix, msi) = config::build(f, bus, mac)?;
        let mut dev = Self {
            name: crate::logging::pci_name(f),
            config,
            msix,
            msi,
            msi_sink: None,
            intx: None,
            intx_level: false,
            mac: vec![0; MAC_WORDS].into_boxed_slice(),
            phy: [[0; PHY_PAGE_SIZE]; PHY_PAGES],
            nvm: mmio::nvm_image(mac, f.identity.device_id),
            permanent_mac: mac,
            itr_guest: 0,
            eitr_guest: [0; MSIX_VECTORS as usize],
            ioaddr: 0,
            tx: tx::TxState::default(),
            rx: rx::RxState::default(),
            mem: None,
            io: None,
            pull: None,
            reported: 0,
        };
        dev.reset_core(false);
        Ok(dev)
    }

    /// The model with its backend, guest memory and INTx line.
    pub fn with_backend(
        f: &PciFunctionPlan,
        bus: BusPlacement,
        backend: NicBackend,
    ) -> Result<Self, PciError> {
        let mut dev = Self::new(f, bus, backend.mac.bytes())?;
        let io = NetIo::new(backend.file).map_err(|e| PciError::Device {
            device: dev.name.clone(),
            reason: format!("cannot use its network backend: {e}"),
        })?;
        dev.io = Some(io);
        dev.mem = Some(backend.memory);
        dev.intx = Some(backend.intx);
        dev.pull = backend.pull;
        Ok(dev)
    }

    fn sink(&self) -> Arc<dyn MsiSink> {
        self.msi_sink.clone().unwrap_or_else(|| Arc::new(NoSink))
    }

    /// Bus mastering: without it the device makes no DMA (QEMU's pci_dma_* fail).
    fn dma_enabled(&self) -> bool {
        self.mem.is_some() && self.config.command() & COMMAND_MASTER != 0
    }

    fn dma_read(&self, addr: u64, buf: &mut [u8]) {
        match &self.mem {
            Some(m) => m.read(addr, buf),
            None => buf.fill(0),
        }
    }

    fn dma_write(&self, addr: u64, data: &[u8]) {
        if let Some(m) = &self.mem {
            m.write(addr, data);
        }
    }

    /// Report guest misprogramming `bit` once (until the next reset).
    fn guest_error(&mut self, bit: u32, what: std::fmt::Arguments) {
        if self.reported & bit == 0 {
            self.reported |= bit;
            crate::guest_error!("{}: {what}", self.name);
        }
    }
}

impl PciFunction for E1000e {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        let mastering = self.dma_enabled();
        self.config.write(usize::from(offset), data);
        let sink = self.sink();
        self.msix.config_written(&self.config, sink.as_ref());
        // Frames may have waited for bus mastering.
        if !mastering && self.dma_enabled() {
            self.start_recv();
            self.start_xmit();
        }
    }

    fn reset(&mut self) {
        self.config.reset();
        self.msix.reset();
        self.set_intx(false);
        self.reset_core(false);
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        match bar {
            config::MMIO_BAR => self.mmio_read(offset, data),
            config::IO_BAR => self.io_read(offset, data),
            config::MSIX_BAR => self.msix.bar_read(offset, data),
            // The flash window decodes nothing (QEMU's is an empty region).
            _ => data.fill(0),
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        match bar {
            config::MMIO_BAR => self.mmio_write(offset, data),
            config::IO_BAR => self.io_write(offset, data),
            config::MSIX_BAR => {
                let sink = self.sink();
                self.msix.bar_write(offset, data, sink.as_ref());
            }
            _ => {}
        }
    }

    fn set_msi_sink(&mut self, sink: Arc<dyn MsiSink>) {
        self.msi_sink = Some(sink);
    }
}

/// The e1000e kind.
pub struct E1000eKind;
pub static KIND: E1000eKind = E1000eKind;

impl PciKind for E1000eKind {
    fn names(&self) -> &'static [&'static str] {
        &["e1000e"]
    }
    fn build(&self, ctx: &FunctionContext) -> Result<SharedFunction, PciError> {
        let mac = ctx.mac()?.unwrap_or(machine::MacAddr::FIRST_DEFAULT);
        Ok(crate::pci::kind::shared(E1000e::new(
            ctx.function,
            ctx.placement,
            mac.bytes(),
        )?))
    }
    fn is_nic(&self, _f: &PciFunctionPlan) -> bool {
        true
    }
    fn moves_frames(&self) -> bool {
        true
    }
    fn build_nic(
        &self,
        f: &PciFunctionPlan,
        placement: BusPlacement,
        backend: NicBackend,
    ) -> Result<NicParts, PciError> {
        let dev = Arc::new(Mutex::new(E1000e::with_backend(f, placement, backend)?));
        let worker = backend::RxWorker::new(dev.clone());
        Ok(NicParts {
            function: dev,
            worker: Box::new(worker),
        })
    }
}
