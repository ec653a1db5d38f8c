//! PCI-to-PCI bridges and PCIe ports: a type-1 header whose bus numbers route config cycles
//! (the host reads them) and whose windows the firmware step programs. Capability layouts
//! per QEMU model are added by the constructors in this file.

use super::config::{BarDef, PciConfig};
use super::device::PciFunction;
use super::PciError;
use machine::PciIdentity;

pub struct PciBridge {
    config: PciConfig,
}

impl PciBridge {
    /// A bare type-1 function: header, QEMU's bridge masks, optional BAR0 and pin.
    pub fn new(
        identity: &PciIdentity,
        multifunction: bool,
        express: bool,
        bar0: Option<BarDef>,
        interrupt_pin: u8,
    ) -> Result<Self, PciError> {
        let mut config = PciConfig::new(identity, multifunction, express);
        if let Some(def) = bar0 {
            config.register_bar(0, def)?;
        }
        config.set_interrupt_pin(interrupt_pin);
        Ok(Self { config })
    }

    /// Finish construction: the current state becomes the reset state.
    pub fn finish(mut self) -> Self {
        self.config.commit_reset_state();
        self
    }

    pub fn config_mut_ref(&mut self) -> &mut PciConfig {
        &mut self.config
    }
}

impl PciFunction for PciBridge {
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }
}

/// Plan type names modelled as bridges or ports.
pub fn is_bridge_type(name: &str) -> bool {
    matches!(
        name,
        "pcie-root-port"
            | "ioh3420"
            | "x3130-upstream"
            | "xio3130-downstream"
            | "pcie-pci-bridge"
            | "pci-bridge"
            | "pci-bridge-seat"
            | "i82801b11-bridge"
    )
}

/// Build the bridge model for `f` (capability layouts per QEMU device).
pub(crate) fn build(
    f: &machine::PciFunctionPlan,
    _express_bus: bool,
) -> Result<super::host::SharedFunction, PciError> {
    let id = &f.identity;
    let mf = f.multifunction;
    let b = match f.type_name.as_str() {
        "pcie-root-port" => PciBridge::new(id, mf, true, Some(BarDef::mem32(0x1000)), 1)?,
        "ioh3420" | "xio3130-downstream" => PciBridge::new(id, mf, true, None, 1)?,
        "x3130-upstream" => PciBridge::new(id, mf, true, None, 0)?,
        "pcie-pci-bridge" => PciBridge::new(id, mf, true, Some(BarDef::mem64(0x100)), 1)?,
        "pci-bridge" | "pci-bridge-seat" => {
            PciBridge::new(id, mf, false, Some(BarDef::mem64(0x100)), 1)?
        }
        // i82801b11-bridge (DMI-to-PCI) is conventional PCI.
        _ => PciBridge::new(id, mf, false, None, 0)?,
    };
    Ok(std::sync::Arc::new(std::sync::Mutex::new(b.finish())))
}
