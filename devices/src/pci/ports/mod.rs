//! PCI Express ports: root ports and the two halves of a switch.

pub mod root_port;
pub mod switch;

use super::caps::aer::AerConfig;
use super::caps::pcie::{width_from_enum, LinkSpeed, SlotConfig};
use super::PciError;
use machine::Properties;

/// The PCIEPort/PCIESlot properties every port reads.
pub(crate) struct PortProps {
    pub port: u8,
    pub slot: SlotConfig,
    pub aer: AerConfig,
    /// `x-pci-express-writeable-slt-bug` (pc-*-8.1 and older keep the latency timer RW).
    pub slt_writable: bool,
}

impl PortProps {
    pub fn read(p: &Properties) -> Result<Self, PciError> {
        let hotplug =
            p.bool("hotplug", true)? && !p.bool("x-do-not-expose-native-hotplug-cap", false)?;
        Ok(Self {
            port: p.u8("port", 0)?,
            slot: SlotConfig {
                number: p.u16("slot", 0)?,
                hotplug,
                power_controller: p.bool("power_controller_present", true)?,
            },
            aer: AerConfig {
                log_max: p.u16("aer_log_max", 8)?,
                unc_mask: p.bool("x-pcie-err-unc-mask", true)?,
            },
            slt_writable: p.bool("x-pci-express-writeable-slt-bug", false)?,
        })
    }
}

/// `x-speed` / `x-width` with the device's defaults.
pub(crate) fn link(p: &Properties, speed: &str, width: &str) -> Result<(LinkSpeed, u8), PciError> {
    let bad = |name: &str, value: &str| PciError::InvalidProperty {
        name: name.into(),
        value: value.into(),
    };
    let s = p.str("x-speed", speed)?;
    let w = p.str("x-width", width)?;
    Ok((
        LinkSpeed::from_enum(s).ok_or_else(|| bad("x-speed", s))?,
        width_from_enum(w).ok_or_else(|| bad("x-width", w))?,
    ))
}
