//! The `PciFunction` trait every model implements, the chipset windows a function can ask the
//! host to map, and the generic endpoint used for functions whose behaviour is not modelled.

use super::bridge::PciBridge;
use super::config::{BarDef, PciConfig};
use super::interrupt::{IntxSink, MsiSink};
use super::PciError;
use crate::bus::SharedDevice;
use machine::PciIdentity;
use std::sync::Arc;

/// Where a function sits, which decides the PCIe device type and config-space size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusPlacement {
    /// The bus is PCI Express (4 KiB config space).
    pub express: bool,
    /// The bus is the root bus (an integrated endpoint on pcie.0).
    pub root: bool,
}

/// Which bus a window lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Space {
    Io,
    Mmio,
}

/// What answers accesses to a window.
#[derive(Clone)]
pub enum WindowTarget {
    /// A device the function owns (ACPI PM block, SMBus, RCRB).
    Device(SharedDevice),
    /// The host's ECAM decoder (the MCH's PCIEXBAR).
    Ecam,
}

/// A non-BAR range a chipset function decodes, e.g. the PM block at PMBASE. The host maps it
/// while the function reports it and unmaps or moves it when the report changes.
#[derive(Clone)]
pub struct Window {
    /// Stable per-function key, so the host can tell a moved window from a new one.
    pub key: u32,
    pub space: Space,
    pub base: u64,
    pub size: u64,
    pub target: WindowTarget,
}

/// One PCI function as the host sees it. Offsets are within the function's config space;
/// every method must tolerate any offset and length the guest can produce.
pub trait PciFunction: Send {
    fn config(&self) -> &PciConfig;
    fn config_mut(&mut self) -> &mut PciConfig;

    /// Guest config read (`data.len()` is 1, 2 or 4).
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.config().read(usize::from(offset), data);
    }

    /// Guest config write; models with side effects override and call the masked write first.
    fn config_write(&mut self, offset: u16, data: &[u8]) {
        self.config_mut().write(usize::from(offset), data);
    }

    /// Device reset (#RST or secondary bus reset).
    fn reset(&mut self) {
        self.config_mut().reset();
    }

    /// Access to BAR `bar` at `offset` from its base; the default is an unclaimed range.
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}

    /// Non-BAR ranges the function decodes right now.
    fn windows(&self) -> Vec<Window> {
        Vec::new()
    }

    /// The host (re)mapped the function's BARs: `(bar, base)` of each BAR that decodes now
    /// (enabled, forwarded by every bridge above, not shadowed), after every change. Models
    /// that register addresses elsewhere (virtio's ioeventfds) follow it; others ignore it.
    fn bars_mapped(&mut self, _bars: &[(usize, u64)]) {}

    /// Where the function sends MSI/MSI-X messages; functions without them ignore it.
    fn set_msi_sink(&mut self, _sink: Arc<dyn MsiSink>) {}

    /// Where a function that drives ISA interrupt lines (the PIIX IDE's IRQ 14/15) sends
    /// them; others ignore it.
    fn set_isa_irq_sink(&mut self, _sink: Arc<dyn IntxSink>) {}

    /// The machine's address-space view: host bridges that remap memory (PAM, SMRAM, TSEG)
    /// publish their layers to it from now on; others ignore it.
    fn set_memory_view(&mut self, _view: crate::chipset::memory_view::SharedView) {}

    /// The machine runs again after a stop: requests a disk error stopped are retried.
    fn restart_io(&mut self) {}

    /// The level this function drives on its INTx pin, for models whose line the host
    /// samples after each config access (bridges); None for models that do not.
    fn intx_level(&self) -> Option<bool> {
        None
    }

    /// Where the function's platform interrupt goes (the ACPI SCI of the function that owns
    /// the PM block); functions without one ignore it.
    fn set_intx_sink(&mut self, _sink: Arc<dyn IntxSink>) {}

    /// Press the power button; false for functions without a PM block.
    fn power_button(&mut self) -> bool {
        false
    }

    /// The ACPI PCI hot-plug register block this function (a south bridge's PM) owns.
    fn acpi_hotplug(&self) -> Option<super::acpi_hotplug::SharedPcihp> {
        None
    }

    /// The ACPI CPU hot-plug register block this function (a south bridge's PM) owns.
    fn cpu_hotplug(&self) -> Option<crate::chipset::cpu_hotplug::SharedCpuHotplug> {
        None
    }

    /// The bridge model, for the host's bus-topology bookkeeping.
    fn as_bridge_mut(&mut self) -> Option<&mut PciBridge> {
        None
    }
}

/// A function that is only a header: IDs, class, BARs that size correctly, interrupt pin,
/// and the device-specific bytes QEMU's realize/reset leave in config space.
pub struct GenericEndpoint {
    config: PciConfig,
}

impl GenericEndpoint {
    /// `registers` are (offset, value) bytes past the header set at power-on (they stay
    /// writable, as QEMU's default write mask has them).
    pub fn new(
        identity: &PciIdentity,
        multifunction: bool,
        express: bool,
        bars: &[(usize, BarDef)],
        interrupt_pin: u8,
        registers: &[(usize, u8)],
    ) -> Result<Self, PciError> {
        let mut config = PciConfig::new(identity, multifunction, express);
        for &(index, def) in bars {
            config.register_bar(index, def)?;
        }
        config.set_interrupt_pin(interrupt_pin);
        for &(offset, value) in registers {
            config.set_u8(offset, value);
        }
        config.commit_reset_state();
        Ok(Self { config })
    }
}

impl PciFunction for GenericEndpoint {
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }
}
