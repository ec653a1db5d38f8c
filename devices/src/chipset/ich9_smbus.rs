//! ICH9 SMBus controller (00:1f.3, 8086:2930): BAR4 I/O (64 bytes) is the SMBus host register
//! block, decoding while HOSTC (0x40) bit 0 (HST_EN) is set; no devices answer.

use super::smbus::{Smbus, SMBUS_IO_LEN};
use crate::pci::config::{BarDef, PciConfig};
use crate::pci::device::PciFunction;
use crate::pci::firmware::FirmwareFunction;
use crate::pci::host::SharedFunction;
use crate::pci::kind::{shared, FunctionContext, PciKind};
use crate::pci::regs::BAR0;
use crate::pci::PciError;
use machine::{FirmwareRole, PciFunctionPlan};

pub const SMB_BASE_BAR: usize = 4;
pub const HOSTC: usize = 0x40;
pub const HOSTC_HST_EN: u8 = 1;

pub struct Ich9Smbus {
    config: PciConfig,
    smbus: Smbus,
}

impl Ich9Smbus {
    pub fn new(f: &PciFunctionPlan) -> Result<Self, PciError> {
        let mut c = PciConfig::new(&f.identity, f.multifunction, false);
        c.set_interrupt_pin(1);
        c.register_bar(SMB_BASE_BAR, BarDef::io(SMBUS_IO_LEN))?;
        c.commit_reset_state();
        Ok(Self {
            config: c,
            smbus: Smbus::new(),
        })
    }

    fn enabled(&self) -> bool {
        self.config.get_u8(HOSTC) & HOSTC_HST_EN != 0
    }
}

impl PciFunction for Ich9Smbus {
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }
    fn reset(&mut self) {
        self.config.reset();
        self.smbus.reset();
    }
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar == SMB_BASE_BAR && self.enabled() {
            self.smbus.read(offset, data);
        } else {
            data.fill(0xff);
        }
    }
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar == SMB_BASE_BAR && self.enabled() {
            self.smbus.write(offset, data);
        }
    }
}

/// The ICH9 SMBus function kind.
pub struct Ich9SmbusKind;
pub static KIND: Ich9SmbusKind = Ich9SmbusKind;

impl PciKind for Ich9SmbusKind {
    fn names(&self) -> &'static [&'static str] {
        &["ICH9-SMB"]
    }
    fn build(&self, ctx: &FunctionContext) -> Result<SharedFunction, PciError> {
        Ok(shared(Ich9Smbus::new(ctx.function)?))
    }
    /// SeaBIOS ich9_smbus_setup: the host block at the plan's SMBus block, then HST_EN.
    fn firmware_init(&self, fw: &mut FirmwareFunction) -> Result<(), PciError> {
        let base = fw.io_block(FirmwareRole::Smbus)?;
        fw.write(BAR0 + 4 * SMB_BASE_BAR, u32::from(base), 4);
        fw.write(HOSTC, HOSTC_HST_EN.into(), 1);
        fw.setup.smbus = Some(base);
        Ok(())
    }
    fn fixed_bar(&self, bar: usize) -> bool {
        bar == SMB_BASE_BAR
    }
}
