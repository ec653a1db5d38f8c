//! PIIX4 power management function (00:01.3, 8086:7113 rev 3): PMBA at 0x40 with the enable
//! in PMREGMISC (0x80 bit 0) mapping the ACPI PM block, the SMBus base at 0x90 enabled by
//! 0xd2 bit 0, and GPE0 fixed at 0xafe0, with QEMU's piix4_pm_realize/piix4_reset values.

use super::acpi_pm::{
    AcpiPm, Gpe0Block, PmBlock, PmFlavor, PIIX4_GPE0_BASE, PIIX4_GPE0_LEN, PIIX4_PM_BLOCK_LEN,
};
use super::io_window::{io_window, IoDecode};
use super::smbus::{Smbus, SMBUS_IO_LEN};
use crate::bus::SharedDevice;
use crate::lifecycle::Lifecycle;
use crate::pci::config::PciConfig;
use crate::pci::device::{PciFunction, Window};
use machine::{PciFunctionPlan, Plan};
use std::sync::{Arc, Mutex};

pub const PMBA: usize = 0x40;
pub const PMREGMISC: usize = 0x80;
pub const SMBBA: usize = 0x90;
pub const SMBHSTCFG: usize = 0xd2;
/// QEMU's pc machine passes smb_io_base = 0xb100.
pub const DEFAULT_SMB_BASE: u32 = 0xb100;

const PM_WINDOW: u32 = 1;
const SMB_WINDOW: u32 = 2;
const GPE_WINDOW: u32 = 3;
/// PMREGMISC bit 0 enables the PM block at PMBA.
const PM_DECODE: IoDecode = IoDecode {
    base_reg: PMBA,
    base_mask: 0xffc0,
    enable_reg: PMREGMISC,
    enable_bit: 1,
};
/// SMBHSTCFG bit 0 enables the SMBus host registers at SMBBA.
const SMB_DECODE: IoDecode = IoDecode {
    base_reg: SMBBA,
    base_mask: 0xffc0,
    enable_reg: SMBHSTCFG,
    enable_bit: 1,
};

pub struct Piix4Pm {
    config: PciConfig,
    pm: Arc<Mutex<AcpiPm>>,
    pm_block: SharedDevice,
    gpe_block: SharedDevice,
    smbus: Arc<Mutex<Smbus>>,
}

impl Piix4Pm {
    pub fn new(f: &PciFunctionPlan, plan: &Plan, lifecycle: Lifecycle) -> Self {
        let mut c = PciConfig::new(&f.identity, f.multifunction, false);
        c.set_u16(0x06, 0x0280);
        c.set_interrupt_pin(1);
        let smm = super::smm_enabled(plan);
        if !smm {
            c.set_u8(0x5b, 0x02); // "SMM already initialised"
        }
        c.set_u32(SMBBA, DEFAULT_SMB_BASE | 1);
        c.set_u8(SMBHSTCFG, 0x09);
        c.set_u8(PMBA, 0x01);
        c.set_u8(PMREGMISC, 0);
        // piix4_pm_machine_ready: legacy device decode bits.
        let lpt = if super::isa_has_port(plan, 0x378) {
            0x80
        } else {
            0
        };
        c.set_u8(0x5f, 0x10 | lpt);
        c.set_u8(0x63, 0x60);
        let com1 = if super::isa_has_port(plan, 0x3f8) {
            0x08
        } else {
            0
        };
        let com2 = if super::isa_has_port(plan, 0x2f8) {
            0x90
        } else {
            0
        };
        c.set_u8(0x67, com1 | com2);
        c.commit_reset_state();
        let pm = Arc::new(Mutex::new(AcpiPm::new(PmFlavor::Piix4, lifecycle, !smm)));
        Self {
            config: c,
            pm_block: Arc::new(Mutex::new(PmBlock(pm.clone()))),
            gpe_block: Arc::new(Mutex::new(Gpe0Block(pm.clone()))),
            pm,
            smbus: Arc::new(Mutex::new(Smbus::new())),
        }
    }

    pub fn acpi_pm(&self) -> Arc<Mutex<AcpiPm>> {
        self.pm.clone()
    }

    pub fn pm_base(&self) -> Option<u16> {
        PM_DECODE.base(&self.config)
    }

    pub fn smbus_base(&self) -> Option<u16> {
        SMB_DECODE.base(&self.config)
    }
}

impl PciFunction for Piix4Pm {
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn reset(&mut self) {
        self.config.reset();
        self.pm.lock().unwrap_or_else(|e| e.into_inner()).reset();
        self.smbus.lock().unwrap_or_else(|e| e.into_inner()).reset();
    }

    fn windows(&self) -> Vec<Window> {
        let smbus: SharedDevice = self.smbus.clone();
        let gpe = io_window(
            GPE_WINDOW,
            PIIX4_GPE0_BASE,
            PIIX4_GPE0_LEN as u64,
            &self.gpe_block,
        );
        let pm = PM_DECODE.window(&self.config, PM_WINDOW, PIIX4_PM_BLOCK_LEN, &self.pm_block);
        let smb = SMB_DECODE.window(&self.config, SMB_WINDOW, SMBUS_IO_LEN, &smbus);
        std::iter::once(gpe).chain(pm).chain(smb).collect()
    }
}
