//! PIIX3 PCI-to-ISA bridge (00:01.0, 8086:7000, multifunction): PIRQ route registers
//! 0x60-0x63 (0x80 = disabled) and the rest of QEMU's piix_reset values.
//!
//! COMMAND reads 0 at reset although piix_reset (hw/isa/piix.c) writes 0x07: the PCI bus's
//! reset hold phase (pcibus_reset_hold -> pci_do_device_reset, hw/pci/pci.c) runs after the
//! device's own reset and clears every writable COMMAND bit.

use crate::pci::config::PciConfig;
use crate::pci::device::PciFunction;
use crate::pci::firmware::FirmwareFunction;
use crate::pci::host::SharedFunction;
use crate::pci::kind::{shared, FunctionContext, PciKind};
use crate::pci::PciError;
use machine::PciFunctionPlan;

pub const PIRQRC: usize = 0x60;

pub struct Piix3 {
    config: PciConfig,
}

impl Piix3 {
    pub fn new(f: &PciFunctionPlan) -> Self {
        let mut c = PciConfig::new(&f.identity, f.multifunction, false);
        c.set_u16(0x06, 0x0200); // DEVSEL medium
        for (reg, v) in [
            (0x4c, 0x4d),
            (0x4e, 0x03),
            (0x60, 0x80),
            (0x61, 0x80),
            (0x62, 0x80),
            (0x63, 0x80),
            (0x69, 0x02),
            (0x70, 0x80),
            (0x76, 0x0c),
            (0x77, 0x0c),
            (0x78, 0x02),
            (0xa0, 0x08),
            (0xa8, 0x0f),
        ] {
            c.set_u8(reg, v);
        }
        c.commit_reset_state();
        Self { config: c }
    }
}

impl PciFunction for Piix3 {
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }
}

/// The PIIX3 ISA bridge kind: the pc PIRQ router.
pub struct Piix3Kind;
pub static KIND: Piix3Kind = Piix3Kind;

impl PciKind for Piix3Kind {
    fn names(&self) -> &'static [&'static str] {
        &["PIIX3", "piix4-isa"]
    }
    fn build(&self, ctx: &FunctionContext) -> Result<SharedFunction, PciError> {
        Ok(shared(Piix3::new(ctx.function)))
    }
    /// SeaBIOS piix_isa_bridge_setup: PIRQ A-D to the IRQs of its list.
    fn firmware_init(&self, fw: &mut FirmwareFunction) -> Result<(), PciError> {
        fw.route_pirqs(self, 4)
    }
    fn isa_bridge(&self) -> bool {
        true
    }
    fn pirq_route_register(&self, pirq: u8) -> Option<usize> {
        (pirq < 4).then(|| PIRQRC + usize::from(pirq))
    }
}
