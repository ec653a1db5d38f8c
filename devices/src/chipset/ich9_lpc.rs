//! ICH9 LPC/ISA bridge (00:1f.0, 8086:2918 rev 2): PMBASE/ACPI_CNTL (maps the ACPI PM block),
//! PIRQ A-H routing, RCBA (maps the chipset-configuration register block) and LPC_EN bits
//! for the ISA devices present, with QEMU's ich9_lpc_reset values.

use super::acpi_pm::{AcpiPm, PmFlavor, PmParts, ICH9_GPE0_LEN, ICH9_PM_BLOCK_LEN};
use super::byte_regs;
use super::io_window::IoDecode;
use super::tco::{NoRebootSource, Tco, GCS_NO_REBOOT, GCS_OFFSET};
use crate::bus::BusDevice;
use crate::lifecycle::Lifecycle;
use crate::lock;
use crate::pci::acpi_hotplug::SharedPcihp;
use crate::pci::config::PciConfig;
use crate::pci::device::{PciFunction, Space, Window, WindowTarget};
use crate::pci::firmware::FirmwareFunction;
use crate::pci::host::SharedFunction;
use crate::pci::interrupt::IntxSink;
use crate::pci::kind::{shared, FunctionContext, PciKind};
use crate::pci::PciError;
use machine::{FirmwareRole, PciFunctionPlan, Plan};
use std::sync::{Arc, Mutex};

pub const PMBASE: usize = 0x40;
pub const PMBASE_MASK: u32 = 0xff80;
pub const ACPI_CNTL: usize = 0x44;
pub const ACPI_CNTL_ACPI_EN: u8 = 0x80;
pub const PIRQA_ROUT: usize = 0x60;
pub const PIRQE_ROUT: usize = 0x68;
pub const PIRQ_ROUT_DEFAULT: u8 = 0x80;
pub const LPC_EN: usize = 0x82;
pub const RCBA: usize = 0xf0;
pub const RCBA_EN: u32 = 1;
pub const RCBA_MASK: u32 = 0xffff_c000;
pub const CC_SIZE: usize = 16 * 1024;
/// The memory-map region where the firmware step maps the RCRB (the board's `rcrb`).
pub const RCRB_REGION: &str = "rcrb";

/// ACPI_CNTL's SCI_IRQ_SEL (bits 2:0) for SCI `irq` (ICH9 datasheet 13.1.11: 9, 10, 11,
/// then 20-23 from 4; 3 is reserved). QEMU 10 reads back only 9-11, 20 and 21.
fn sci_irq_sel(irq: u32) -> Option<u8> {
    match irq {
        9..=11 => Some((irq - 9) as u8),
        20..=23 => Some((irq - 16) as u8),
        _ => None,
    }
}

const PM_WINDOW: u32 = 1;
const RCRB_WINDOW: u32 = 2;
const APM_WINDOW: u32 = 3;
const PCIHP_WINDOW: u32 = 4;
const CPUHP_WINDOW: u32 = 5;
/// GPE0_STS is at PMBASE + 0x20 (ICH9 datasheet, 13.8.3).
const GPE0_OFFSET: u16 = 0x20;
/// APM commands that enable/disable ACPI mode (ICH9_APM_ACPI_ENABLE/DISABLE).
const APM_ACPI_ENABLE: u8 = 0x02;
const APM_ACPI_DISABLE: u8 = 0x03;
/// ACPI_EN in ACPI_CNTL enables the PM block at PMBASE.
const PM_DECODE: IoDecode = IoDecode {
    base_reg: PMBASE,
    base_mask: PMBASE_MASK,
    enable_reg: ACPI_CNTL,
    enable_bit: ACPI_CNTL_ACPI_EN,
};

/// Chipset configuration registers (RCRB), 16 KiB of little-endian registers.
pub struct Rcrb {
    regs: Vec<u8>,
}

impl Rcrb {
    fn new() -> Self {
        let mut r = Self {
            regs: vec![0; CC_SIZE],
        };
        r.reset();
        r
    }

    fn reset(&mut self) {
        self.regs.fill(0);
        // D31IR..D25IR = 0x3210 (INTA-D -> PIRQA-D), D30IR = 0, GCS = 0x20.
        for off in [0x3140usize, 0x3144, 0x3146, 0x3148, 0x314c, 0x3150] {
            self.regs[off..off + 4].copy_from_slice(&0x3210u32.to_le_bytes());
        }
        self.regs[0x3410..0x3414].copy_from_slice(&0x20u32.to_le_bytes());
    }
}

/// GCS.NO_REBOOT as the TCO watchdog sees it at expiry.
struct RcrbGcs(Arc<Mutex<Rcrb>>);

impl NoRebootSource for RcrbGcs {
    fn no_reboot(&self) -> bool {
        let r = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut gcs = [0u8; 4];
        gcs.copy_from_slice(&r.regs[GCS_OFFSET..GCS_OFFSET + 4]);
        u32::from_le_bytes(gcs) & GCS_NO_REBOOT != 0
    }
}

impl BusDevice for Rcrb {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        byte_regs::read(&self.regs, offset, data, 0);
    }
    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        byte_regs::write(&mut self.regs, offset, data);
    }
}

pub struct Ich9Lpc {
    config: PciConfig,
    pm: PmParts,
    rcrb: Arc<Mutex<Rcrb>>,
}

impl Ich9Lpc {
    pub fn new(f: &PciFunctionPlan, plan: &Plan, lifecycle: Lifecycle) -> Result<Self, PciError> {
        let mut c = PciConfig::new(&f.identity, f.multifunction, false);
        for i in 0..4 {
            c.set_u8(PIRQA_ROUT + i, PIRQ_ROUT_DEFAULT);
            c.set_u8(PIRQE_ROUT + i, PIRQ_ROUT_DEFAULT);
        }
        c.set_u8(ACPI_CNTL, 0);
        c.set_u32(PMBASE, 1); // RTE, read-only
        c.set_wmask_u32(PMBASE, PMBASE_MASK);
        c.set_u32(RCBA, 0);
        // ich9_lpc_machine_ready: LPC decode enables for the legacy devices present.
        let mut lpc_en = 0u8;
        for (port, bit) in [(0x3f8, 0x01), (0x2f8, 0x02), (0x378, 0x04), (0x3f2, 0x08)] {
            if super::isa_has_port(plan, port) {
                lpc_en |= bit;
            }
        }
        c.set_u8(LPC_EN, lpc_en);
        c.commit_reset_state();
        let acpi_only = !super::smm_enabled(plan);
        let rcrb = Arc::new(Mutex::new(Rcrb::new()));
        let props = &f.properties;
        let clock = lifecycle.clock().clone();
        let mut acpi = AcpiPm::new(PmFlavor::Ich9, lifecycle.clone(), acpi_only);
        if props.bool("enable_tco", true)? {
            // The speaker strap (`noreboot`) keeps the TCO watchdog from rebooting.
            acpi.set_tco(Tco::new(
                props.bool("noreboot", false)?,
                Arc::new(RcrbGcs(rcrb.clone())),
                lifecycle.clone(),
                &clock,
            ));
        }
        Ok(Self {
            config: c,
            pm: PmParts::new(acpi, plan, lifecycle, (APM_ACPI_ENABLE, APM_ACPI_DISABLE)),
            rcrb,
        })
    }

    pub fn acpi_pm(&self) -> Arc<Mutex<AcpiPm>> {
        self.pm.pm.clone()
    }

    /// PM block base when ACPI decoding is enabled.
    pub fn pm_base(&self) -> Option<u16> {
        PM_DECODE.base(&self.config)
    }
}

impl PciFunction for Ich9Lpc {
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn reset(&mut self) {
        self.config.reset();
        self.pm.reset();
        lock(&self.rcrb).reset();
    }

    fn windows(&self) -> Vec<Window> {
        let mut w: Vec<Window> = PM_DECODE
            .window(&self.config, PM_WINDOW, ICH9_PM_BLOCK_LEN, &self.pm.block)
            .into_iter()
            .collect();
        let rcba = self.config.get_u32(RCBA);
        if rcba & RCBA_EN != 0 {
            w.push(Window {
                key: RCRB_WINDOW,
                space: Space::Mmio,
                base: (rcba & RCBA_MASK).into(),
                size: CC_SIZE as u64,
                target: WindowTarget::Device(self.rcrb.clone()),
            });
        }
        w.extend(self.pm.apm_window(APM_WINDOW));
        w.extend(self.pm.pcihp_window(PCIHP_WINDOW));
        w.extend(self.pm.cpuhp_window(CPUHP_WINDOW));
        w
    }

    fn cpu_hotplug(&self) -> Option<super::cpu_hotplug::SharedCpuHotplug> {
        self.pm.cpuhp.clone()
    }

    fn acpi_hotplug(&self) -> Option<SharedPcihp> {
        self.pm.pcihp.clone()
    }

    fn set_intx_sink(&mut self, sink: Arc<dyn IntxSink>) {
        self.pm.set_intx_sink(sink);
    }

    fn power_button(&mut self) -> bool {
        self.pm.power_button()
    }
}

/// The ICH9 LPC kind: the q35 south bridge, its PM block and the PIRQ router.
pub struct Ich9LpcKind;
pub static KIND: Ich9LpcKind = Ich9LpcKind;

impl PciKind for Ich9LpcKind {
    fn names(&self) -> &'static [&'static str] {
        &["ICH9-LPC"]
    }
    /// The TCO watchdog's no-reboot strap.
    fn globals(&self) -> &'static [&'static str] {
        &["noreboot"]
    }
    fn build(&self, ctx: &FunctionContext) -> Result<SharedFunction, PciError> {
        Ok(shared(Ich9Lpc::new(
            ctx.function,
            ctx.plan,
            ctx.lifecycle.clone(),
        )?))
    }
    /// SeaBIOS ich9_lpc_setup: PM block enabled at the plan's block with the SCI, RCBA,
    /// PIRQ A-H.
    fn firmware_init(&self, fw: &mut FirmwareFunction) -> Result<(), PciError> {
        let pm_base = fw.io_block(FirmwareRole::PmBlock)?;
        fw.write(PMBASE, u32::from(pm_base) | 1, 4);
        let sci_sel = match fw.plan.sci_irq {
            Some(sci) => sci_irq_sel(sci).ok_or_else(|| {
                PciError::Firmware(format!(
                    "ICH9 cannot route the SCI to IRQ {sci} (SCI_IRQ_SEL: 9, 10, 11, 20-23)"
                ))
            })?,
            None => 0,
        };
        fw.write(ACPI_CNTL, (ACPI_CNTL_ACPI_EN | sci_sel).into(), 1);
        let rcrb = fw.mmio_region(RCRB_REGION)?;
        fw.write(RCBA, (rcrb.base as u32 & RCBA_MASK) | RCBA_EN, 4);
        fw.route_pirqs(self, 8)?;
        fw.setup.pm_base = Some(pm_base);
        fw.setup.gpe0 = Some((pm_base + GPE0_OFFSET, ICH9_GPE0_LEN as u16));
        Ok(())
    }
    fn isa_bridge(&self) -> bool {
        true
    }
    fn pirq_route_register(&self, pirq: u8) -> Option<usize> {
        match pirq {
            0..=3 => Some(PIRQA_ROUT + usize::from(pirq)),
            4..=7 => Some(PIRQE_ROUT + usize::from(pirq - 4)),
            _ => None,
        }
    }
}
