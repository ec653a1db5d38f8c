//! PIIX4 power management function (00:01.3, 8086:7113 rev 3): PMBA at 0x40 with the enable
//! in PMREGMISC (0x80 bit 0) mapping the ACPI PM block, the SMBus base at 0x90 enabled by
//! 0xd2 bit 0, and GPE0 fixed at 0xafe0, with QEMU's piix4_pm_realize/piix4_reset values.

use super::acpi_pm::{AcpiPm, Gpe0Block, PmFlavor, PmParts, PIIX4_GPE0, PIIX4_PM_BLOCK_LEN};
use super::io_window::{io_window, IoDecode};
use super::smbus::{Smbus, SMBUS_IO_LEN};
use crate::bus::SharedDevice;
use crate::lifecycle::Lifecycle;
use crate::lock;
use crate::pci::acpi_hotplug::SharedPcihp;
use crate::pci::config::PciConfig;
use crate::pci::device::{PciFunction, Window};
use crate::pci::firmware::FirmwareFunction;
use crate::pci::host::SharedFunction;
use crate::pci::interrupt::IntxSink;
use crate::pci::kind::{shared, FunctionContext, PciKind};
use crate::pci::regs::INTERRUPT_LINE;
use crate::pci::PciError;
use machine::{FirmwareRole, PciFunctionPlan, Plan, Range};
use std::sync::{Arc, Mutex};

pub const PMBA: usize = 0x40;
pub const PMREGMISC: usize = 0x80;
pub const SMBBA: usize = 0x90;
pub const SMBHSTCFG: usize = 0xd2;

const PM_WINDOW: u32 = 1;
const SMB_WINDOW: u32 = 2;
const GPE_WINDOW: u32 = 3;
const APM_WINDOW: u32 = 4;
const PCIHP_WINDOW: u32 = 5;
const CPUHP_WINDOW: u32 = 6;
/// APM commands that enable/disable ACPI mode (piix4_pm's ACPI_ENABLE/ACPI_DISABLE).
const APM_ACPI_ENABLE: u8 = 0xf1;
const APM_ACPI_DISABLE: u8 = 0xf0;
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
    pm: PmParts,
    gpe_block: SharedDevice,
    smbus: Arc<Mutex<Smbus>>,
    /// GPE0, decoded where the plan puts it.
    gpe0: Option<Range>,
}

impl Piix4Pm {
    pub fn new(f: &PciFunctionPlan, plan: &Plan, lifecycle: Lifecycle) -> Result<Self, PciError> {
        // SMBBA before the firmware programs it: the `smb_io_base` the board gives (QEMU's
        // pc passes 0xb100).
        let smb_io_base = f.properties.u32("smb_io_base", 0)?;
        let mut c = PciConfig::new(&f.identity, f.multifunction, false);
        c.set_u16(0x06, 0x0280);
        c.set_interrupt_pin(1);
        let smm = super::smm_enabled(plan);
        if !smm {
            c.set_u8(0x5b, 0x02); // "SMM already initialised"
        }
        c.set_u32(SMBBA, smb_io_base | 1);
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
        let acpi = AcpiPm::new(PmFlavor::Piix4, lifecycle.clone(), !smm);
        let pm = PmParts::new(acpi, plan, lifecycle, (APM_ACPI_ENABLE, APM_ACPI_DISABLE));
        Ok(Self {
            config: c,
            gpe_block: Arc::new(Mutex::new(Gpe0Block(pm.pm.clone()))),
            gpe0: PIIX4_GPE0.find(plan).and_then(|d| d.io.first().copied()),
            pm,
            smbus: Arc::new(Mutex::new(Smbus::new())),
        })
    }

    pub fn acpi_pm(&self) -> Arc<Mutex<AcpiPm>> {
        self.pm.pm.clone()
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
        self.pm.reset();
        lock(&self.smbus).reset();
    }

    fn windows(&self) -> Vec<Window> {
        let smbus: SharedDevice = self.smbus.clone();
        let gpe = self
            .gpe0
            .map(|at| io_window(GPE_WINDOW, at.base, at.size, &self.gpe_block));
        let pm = PM_DECODE.window(&self.config, PM_WINDOW, PIIX4_PM_BLOCK_LEN, &self.pm.block);
        let smb = SMB_DECODE.window(&self.config, SMB_WINDOW, SMBUS_IO_LEN, &smbus);
        let apm = self.pm.apm_window(APM_WINDOW);
        let hp = self.pm.pcihp_window(PCIHP_WINDOW);
        let cpuhp = self.pm.cpuhp_window(CPUHP_WINDOW);
        gpe.into_iter()
            .chain(pm)
            .chain(smb)
            .chain(apm)
            .chain(hp)
            .chain(cpuhp)
            .collect()
    }

    fn acpi_hotplug(&self) -> Option<SharedPcihp> {
        self.pm.pcihp.clone()
    }

    fn cpu_hotplug(&self) -> Option<super::cpu_hotplug::SharedCpuHotplug> {
        self.pm.cpuhp.clone()
    }

    fn set_intx_sink(&mut self, sink: Arc<dyn IntxSink>) {
        self.pm.set_intx_sink(sink);
    }

    fn power_button(&mut self) -> bool {
        self.pm.power_button()
    }
}

/// The PIIX4 PM kind: the pc PM block, SMBus and GPE0.
pub struct Piix4PmKind;
pub static KIND: Piix4PmKind = Piix4PmKind;

impl PciKind for Piix4PmKind {
    fn names(&self) -> &'static [&'static str] {
        &["PIIX4_PM"]
    }
    fn build(&self, ctx: &FunctionContext) -> Result<SharedFunction, PciError> {
        Ok(shared(Piix4Pm::new(
            ctx.function,
            ctx.plan,
            ctx.lifecycle.clone(),
        )?))
    }
    /// SeaBIOS piix4_pm_setup: PM block and SMBus enabled at the plan's blocks.
    fn firmware_init(&self, fw: &mut FirmwareFunction) -> Result<(), PciError> {
        let pm_base = fw.io_block(FirmwareRole::PmBlock)?;
        let smbus_base = fw.io_block(FirmwareRole::Smbus)?;
        fw.write(PMBA, u32::from(pm_base) | 1, 4);
        fw.write(PMREGMISC, 1, 1);
        fw.write(SMBBA, u32::from(smbus_base) | 1, 4);
        fw.write(SMBHSTCFG, 0x09, 1);
        fw.setup.pm_base = Some(pm_base);
        fw.setup.gpe0 = PIIX4_GPE0
            .find(fw.plan)
            .and_then(|d| d.io.first())
            .map(|r| (r.base as u16, r.size as u16));
        fw.setup.smbus = Some(smbus_base);
        Ok(())
    }
    /// piix4_pm_setup then overwrites the function's interrupt line with the SCI, which
    /// PIIX4 hard-wires ("acpi sci is hardwired to 9", the plan's `sci-irq`).
    fn firmware_finish(&self, fw: &mut FirmwareFunction) {
        if let Some(sci) = fw.plan.sci_irq {
            fw.write(INTERRUPT_LINE, sci, 1);
        }
    }
}
