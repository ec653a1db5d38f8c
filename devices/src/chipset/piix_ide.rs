//! PIIX3 IDE (00:01.1, 8086:7010, prog-if 0x80 = legacy ports): BAR4 is the 16-byte bus-master
//! DMA block; status reads DEVSEL medium | fast back-to-back like QEMU's piix_ide_reset.
//! Only the function is modelled here: with no drives the BMDMA registers read as zero.

use super::byte_regs;
use crate::pci::config::{BarDef, PciConfig};
use crate::pci::device::PciFunction;
use crate::pci::firmware::FirmwareFunction;
use crate::pci::host::SharedFunction;
use crate::pci::kind::{shared, FunctionContext, PciKind};
use crate::pci::PciError;
use machine::PciFunctionPlan;

pub struct PiixIde {
    config: PciConfig,
    bmdma: [u8; 16],
}

impl PiixIde {
    pub fn new(f: &PciFunctionPlan) -> Result<Self, PciError> {
        let mut c = PciConfig::new(&f.identity, f.multifunction, false);
        c.register_bar(4, BarDef::io(0x10))?;
        c.set_u16(0x06, 0x0280);
        c.commit_reset_state();
        Ok(Self {
            config: c,
            bmdma: [0; 16],
        })
    }
}

impl PciFunction for PiixIde {
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }
    fn reset(&mut self) {
        self.config.reset();
        self.bmdma = [0; 16];
    }
    fn bar_read(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
        byte_regs::read(&self.bmdma, offset, data, 0xff);
    }
    fn bar_write(&mut self, _bar: usize, offset: u64, data: &[u8]) {
        byte_regs::write(&mut self.bmdma, offset, data);
    }
}

/// The PIIX IDE function kind.
pub struct PiixIdeKind;
pub static KIND: PiixIdeKind = PiixIdeKind;

impl PciKind for PiixIdeKind {
    fn names(&self) -> &'static [&'static str] {
        &["piix3-ide", "piix4-ide"]
    }
    fn build(&self, ctx: &FunctionContext) -> Result<SharedFunction, PciError> {
        Ok(shared(PiixIde::new(ctx.function)?))
    }
    /// SeaBIOS piix_ide_setup: enable both channels' decode (IDETIM bit 15).
    fn firmware_init(&self, fw: &mut FirmwareFunction) -> Result<(), PciError> {
        fw.write(0x40, 0x8000, 2);
        fw.write(0x42, 0x8000, 2);
        Ok(())
    }
}
