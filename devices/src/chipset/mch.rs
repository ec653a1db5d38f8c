//! q35 MCH host bridge (00:00.0, 8086:29c0): PCIEXBAR (ECAM window), PAM, SMRAM/ESMRAMC,
//! extended TSEG query and SMBASE registers with QEMU's reset values and write masks. PAM,
//! the SMRAM window, TSEG and the SMBASE lock remap memory through the machine's
//! [`MemoryView`](super::memory_view::MemoryView) as hw/pci-host/q35.c does for the
//! non-SMM address space (no vCPU runs in SMM here).

use super::i440fx::{firmware_pam, firmware_pam_config, overlaps, pam_registers, PAM_COUNT};
use super::memory_view::{
    pam_overlays, smram_overlays, Layer, LayerSet, Overlay, SharedView, Side,
};
use crate::pci::config::PciConfig;
use crate::pci::device::{PciFunction, Space, Window, WindowTarget};
use crate::pci::firmware::FirmwareFunction;
use crate::pci::host::SharedFunction;
use crate::pci::kind::{shared, FunctionContext, PciKind};
use crate::pci::PciError;
use machine::{PciFunctionPlan, Plan};

pub const PCIEXBAR: usize = 0x60;
/// QEMU's reset value (MCH_HOST_BRIDGE_PCIEXBAR_DEFAULT), for a plan without an ECAM window;
/// the built-in q35 board's `ecam` is the same address.
pub const PCIEXBAR_DEFAULT: u64 = 0xb000_0000;
pub const PCIEXBAR_EN: u64 = 1;
const PCIEXBAR_LENGTH_MASK: u64 = 0x6;
const PCIEXBAR_ADMSK: u64 = 0xf_f000_0000; // bits 35:28
const PCIEXBAR_128ADMSK: u64 = 1 << 27;
const PCIEXBAR_64ADMSK: u64 = 1 << 26;
pub const PAM0: usize = 0x90;
pub const SMRAM: usize = 0x9d;
pub const ESMRAMC: usize = 0x9e;
pub const F_SMBASE: usize = 0x9c;
pub const EXT_TSEG_MBYTES: usize = 0x50;
const SMRAM_DEFAULT: u8 = 0x02;
const SMRAM_D_OPEN: u8 = 0x40;
const SMRAM_D_CLS: u8 = 0x20;
const SMRAM_D_LCK: u8 = 0x10;
const SMRAM_G_SMRAME: u8 = 0x08;
const SMRAM_WMASK: u8 = SMRAM_D_OPEN | SMRAM_D_CLS | SMRAM_D_LCK | SMRAM_G_SMRAME;
const ESMRAMC_DEFAULT: u8 = 0x38;
const ESMRAMC_WMASK: u8 = 0x87; // H_SMRAME | TSEG_SZ | T_EN
const ESMRAMC_H_SMRAME: u8 = 0x80;
const ESMRAMC_TSEG_SZ_MASK: u8 = 0x06;
const ESMRAMC_T_EN: u8 = 0x01;
/// QEMU's limit for `extended-tseg-mbytes` (MCH_HOST_BRIDGE_EXT_TSEG_MBYTES_MAX).
pub const EXT_TSEG_MBYTES_MAX: u16 = 0xfff;
const SMBASE_ADDR: u64 = 0x30000;
const SMBASE_SIZE: u64 = 0x20000;
const MIB: u64 = 1 << 20;
const EXT_TSEG_QUERY: u16 = 0xffff;
const F_SMBASE_QUERY: u8 = 0xff;
const F_SMBASE_IN_RAM: u8 = 0x01;
const F_SMBASE_LCK: u8 = 0x02;

/// Window key of the ECAM window.
const ECAM_WINDOW: u32 = 1;

pub struct Mch {
    config: PciConfig,
    ext_tseg_mbytes: u16,
    smm_ranges: bool,
    /// `smbase-smram` (off for pc-q35-4.1 and older): F_SMBASE locks SMRAM at 0x30000.
    smbase_smram: bool,
    below_4g: u64,
    view: Option<SharedView>,
}

impl Mch {
    pub fn new(f: &PciFunctionPlan, plan: &Plan) -> Result<Self, PciError> {
        let ext = f.properties.u16("extended-tseg-mbytes", 64)?;
        if ext > EXT_TSEG_MBYTES_MAX {
            // QEMU's mch_realize check and text.
            return Err(PciError::Device {
                device: "mch".into(),
                reason: format!("invalid extended-tseg-mbytes value: {ext}"),
            });
        }
        let smbase_smram = f.properties.bool("smbase-smram", true)?;
        let smm_ranges = super::smm_enabled(plan);
        let mut config = PciConfig::new(&f.identity, f.multifunction, false);
        // Disabled at reset, its base where the plan has the ECAM window (the firmware step
        // enables it there).
        let ecam_base = plan.memory.ecam.map_or(PCIEXBAR_DEFAULT, |e| e.base);
        config.set_u64(PCIEXBAR, ecam_base & PCIEXBAR_ADMSK);
        if smm_ranges {
            config.set_u8(SMRAM, SMRAM_DEFAULT);
            config.set_wmask_u8(SMRAM, SMRAM_WMASK);
            config.set_u8(ESMRAMC, ESMRAMC_DEFAULT);
            config.set_wmask_u8(ESMRAMC, ESMRAMC_WMASK);
            if ext > 0 {
                config.set_u16(EXT_TSEG_MBYTES, EXT_TSEG_QUERY);
            }
            config.set_u8(F_SMBASE, 0);
            config.set_wmask_u8(F_SMBASE, 0xff);
        }
        config.commit_reset_state();
        Ok(Self {
            config,
            ext_tseg_mbytes: ext,
            smm_ranges,
            smbase_smram,
            below_4g: plan.memory.ram_below_4g,
            view: None,
        })
    }

    /// (base, size) of the ECAM window PCIEXBAR selects, if enabled (mch_update_pciexbar).
    pub fn ecam_window(&self) -> Option<(u64, u64)> {
        let bar = self.config.get_u64(PCIEXBAR);
        if bar & PCIEXBAR_EN == 0 {
            return None;
        }
        let (size, mask) = match bar & PCIEXBAR_LENGTH_MASK {
            0 => (256 << 20, PCIEXBAR_ADMSK),
            2 => (
                128 << 20,
                PCIEXBAR_ADMSK | PCIEXBAR_128ADMSK | PCIEXBAR_64ADMSK,
            ),
            4 => (64 << 20, PCIEXBAR_ADMSK | PCIEXBAR_64ADMSK),
            _ => return None, // reserved length: QEMU leaves the mapping alone
        };
        Some((bar & mask, size))
    }

    fn update_smram(&mut self) {
        if self.config.get_u8(SMRAM) & SMRAM_D_LCK != 0 {
            let v = self.config.get_u8(SMRAM) & !SMRAM_D_OPEN;
            self.config.set_u8(SMRAM, v);
            self.config.set_wmask_u8(SMRAM, SMRAM_D_CLS);
            self.config.set_wmask_u8(ESMRAMC, 0);
        }
    }

    fn update_smbase(&mut self) {
        if !self.smbase_smram {
            return;
        }
        let reg = self.config.get_u8(F_SMBASE);
        if reg == F_SMBASE_QUERY {
            self.config.set_wmask_u8(F_SMBASE, F_SMBASE_LCK);
            self.config.set_u8(F_SMBASE, F_SMBASE_IN_RAM);
        } else if reg == F_SMBASE_IN_RAM {
            self.config.set_wmask_u8(F_SMBASE, F_SMBASE_LCK);
        } else if reg & F_SMBASE_LCK != 0 {
            self.config.set_wmask_u8(F_SMBASE, 0);
            self.config.set_u8(F_SMBASE, F_SMBASE_LCK);
        }
    }
}

impl Mch {
    /// The TSEG size ESMRAMC selects while T_EN and G_SMRAME are set (mch_update_smram).
    fn tseg_size(&self) -> u64 {
        let esmramc = self.config.get_u8(ESMRAMC);
        if esmramc & ESMRAMC_T_EN == 0 || self.config.get_u8(SMRAM) & SMRAM_G_SMRAME == 0 {
            return 0;
        }
        match esmramc & ESMRAMC_TSEG_SZ_MASK {
            0x0 => MIB,
            0x2 => 2 * MIB,
            0x4 => 8 * MIB,
            _ => u64::from(self.ext_tseg_mbytes) * MIB,
        }
    }

    /// PAM and, with SMM ranges, the SMRAM window, TSEG and SMBASE black holes
    /// (mch_update_pam, mch_update_smram, mch_update_smbase_smram).
    fn layers(&self) -> LayerSet {
        let pam = (Layer::Pam, pam_overlays(&pam_registers(&self.config, PAM0)));
        if !self.smm_ranges {
            // Without SMM the window always shows the PCI side.
            return vec![pam, (Layer::Smram, smram_overlays(false, false))];
        }
        let smram = self.config.get_u8(SMRAM);
        let h_smrame = self.config.get_u8(ESMRAMC) & ESMRAMC_H_SMRAME != 0;
        let open = smram & SMRAM_D_OPEN != 0;
        // A TSEG larger than RAM below 4 GiB covers all of it (QEMU would wrap).
        let tseg = self.tseg_size().min(self.below_4g);
        let locked = self.smbase_smram && self.config.get_u8(F_SMBASE) & F_SMBASE_LCK != 0;
        vec![
            pam,
            (
                Layer::Smram,
                smram_overlays(open && !h_smrame, open && h_smrame),
            ),
            (
                Layer::Tseg,
                if tseg == 0 {
                    Vec::new()
                } else {
                    vec![Overlay::both(self.below_4g - tseg, tseg, Side::Blackhole)]
                },
            ),
            (
                Layer::Smbase,
                if locked {
                    vec![Overlay::both(SMBASE_ADDR, SMBASE_SIZE, Side::Blackhole)]
                } else {
                    Vec::new()
                },
            ),
        ]
    }

    fn update_memory(&self) {
        if let Some(view) = &self.view {
            for (layer, overlays) in self.layers() {
                view.set_layer(layer, overlays);
            }
        }
    }
}

impl PciFunction for Mch {
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        let off = usize::from(offset);
        self.config.write(off, data);
        if overlaps(off, data.len(), PAM0, PAM_COUNT) {
            self.update_memory();
        }
        if !self.smm_ranges {
            return;
        }
        if overlaps(off, data.len(), SMRAM, 1) {
            self.update_smram();
        }
        if overlaps(off, data.len(), EXT_TSEG_MBYTES, 2)
            && self.ext_tseg_mbytes > 0
            && self.config.get_u16(EXT_TSEG_MBYTES) == EXT_TSEG_QUERY
        {
            self.config.set_u16(EXT_TSEG_MBYTES, self.ext_tseg_mbytes);
        }
        if overlaps(off, data.len(), F_SMBASE, 1) {
            self.update_smbase();
        }
        if overlaps(off, data.len(), SMRAM, 2) || overlaps(off, data.len(), F_SMBASE, 1) {
            self.update_memory();
        }
    }

    fn reset(&mut self) {
        self.config.reset();
        self.update_memory();
    }

    fn set_memory_view(&mut self, view: SharedView) {
        self.view = Some(view);
        self.update_memory();
    }

    fn windows(&self) -> Vec<Window> {
        self.ecam_window()
            .map(|(base, size)| Window {
                key: ECAM_WINDOW,
                space: Space::Mmio,
                base,
                size,
                target: WindowTarget::Ecam,
            })
            .into_iter()
            .collect()
    }
}

/// The q35 host bridge kind.
pub struct MchKind;
pub static KIND: MchKind = MchKind;

impl PciKind for MchKind {
    fn names(&self) -> &'static [&'static str] {
        &["mch"]
    }
    /// The TSEG size the extended TSEG register offers (q35-test's tseg-size/ext) and
    /// whether F_SMBASE locks SMRAM at SMBASE (off on QEMU's pc-q35-4.2 and older).
    fn globals(&self) -> &'static [&'static str] {
        &["extended-tseg-mbytes", "smbase-smram"]
    }
    fn build(&self, ctx: &FunctionContext) -> Result<SharedFunction, PciError> {
        Ok(shared(Mch::new(ctx.function, ctx.plan)?))
    }

    fn reset_memory_layers(&self, f: &PciFunctionPlan, plan: &Plan) -> LayerSet {
        Mch::new(f, plan).map(|m| m.layers()).unwrap_or_default()
    }

    fn firmware_memory_layers(&self, f: &PciFunctionPlan, plan: &Plan) -> LayerSet {
        let Ok(mut m) = Mch::new(f, plan) else {
            return LayerSet::default();
        };
        firmware_pam_config(&mut m.config, PAM0);
        m.layers()
    }

    /// Enable ECAM at the plan's address (SeaBIOS mch_mem_addr_setup) and shadow the BIOS
    /// area as SeaBIOS leaves it (see the i440FX kind).
    fn firmware_init(&self, fw: &mut FirmwareFunction) -> Result<(), PciError> {
        firmware_pam(fw, PAM0);
        let Some(ecam) = fw.plan.memory.ecam else {
            return Ok(());
        };
        let len_bits = match ecam.size {
            s if s == 256 * MIB => 0,
            s if s == 128 * MIB => 2,
            s if s == 64 * MIB => 4,
            s => return Err(PciError::Firmware(format!("unsupported ECAM size {s:#x}"))),
        };
        if ecam.base & (ecam.size - 1) != 0 || ecam.base >= 1 << 36 {
            return Err(PciError::Firmware(format!(
                "misaligned ECAM base {:#x}",
                ecam.base
            )));
        }
        fw.write(PCIEXBAR, 0, 4);
        fw.write(PCIEXBAR + 4, (ecam.base >> 32) as u32, 4);
        fw.write(PCIEXBAR, (ecam.base as u32) | len_bits | 1, 4);
        fw.setup.ecam = Some(ecam);
        Ok(())
    }
}
