//! i440FX host bridge (00:00.0, 8086:1237 rev 2): PAM at 0x59-0x5f and SMRAM at 0x72 (0x02)
//! remap memory through the machine's [`MemoryView`](super::memory_view::MemoryView), and
//! the coreboot RAM-size byte at 0x57. Command and status read 0 as in QEMU (its
//! i440fx-test marks the data-sheet values 0x0006/0x0280 as BROKEN).

use super::memory_view::{pam_overlays, smram_overlays, Layer, LayerSet, SharedView};
use crate::pci::config::PciConfig;
use crate::pci::device::PciFunction;
use crate::pci::firmware::FirmwareFunction;
use crate::pci::host::SharedFunction;
use crate::pci::kind::{shared, FunctionContext, PciKind};
use crate::pci::PciError;
use machine::{PciFunctionPlan, Plan};

pub const PAM0: usize = 0x59;
pub const PAM_COUNT: usize = 7;
pub const SMRAM: usize = 0x72;
const SMRAM_D_OPEN: u8 = 0x40;
const COREBOOT_RAM_SIZE: usize = 0x57;

pub struct I440fx {
    config: PciConfig,
    view: Option<SharedView>,
}

impl I440fx {
    pub fn new(f: &PciFunctionPlan, plan: &Plan) -> Self {
        let mut config = PciConfig::new(&f.identity, f.multifunction, false);
        config.set_u8(SMRAM, 0x02);
        let ram = (plan.memory.ram_below_4g + plan.memory.ram_above_4g) / 8 / 1024 / 1024;
        config.set_u8(COREBOOT_RAM_SIZE, ram.min(255) as u8);
        config.commit_reset_state();
        Self { config, view: None }
    }

    /// i440fx_update_memory_mappings: the PAM segments and the SMRAM window (RAM while
    /// D_OPEN). G_SMRAME only changes what SMM code sees; no vCPU runs in SMM here.
    fn layers(&self) -> LayerSet {
        let open = self.config.get_u8(SMRAM) & SMRAM_D_OPEN != 0;
        vec![
            (Layer::Pam, pam_overlays(&pam_registers(&self.config, PAM0))),
            (Layer::Smram, smram_overlays(open, false)),
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

/// The seven PAM registers from `pam0`.
pub(crate) fn pam_registers(config: &PciConfig, pam0: usize) -> [u8; PAM_COUNT] {
    std::array::from_fn(|i| config.get_u8(pam0 + i))
}

pub(crate) fn overlaps(offset: usize, len: usize, reg: usize, reg_len: usize) -> bool {
    offset < reg + reg_len && reg < offset + len
}

impl PciFunction for I440fx {
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        let off = usize::from(offset);
        self.config.write(off, data);
        if overlaps(off, data.len(), PAM0, PAM_COUNT) || overlaps(off, data.len(), SMRAM, 1) {
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
}

/// The pc host bridge kind.
pub struct I440fxKind;
pub static KIND: I440fxKind = I440fxKind;

impl PciKind for I440fxKind {
    fn names(&self) -> &'static [&'static str] {
        &["i440FX"]
    }
    fn build(&self, ctx: &FunctionContext) -> Result<SharedFunction, PciError> {
        Ok(shared(I440fx::new(ctx.function, ctx.plan)))
    }

    fn reset_memory_layers(&self, f: &PciFunctionPlan, plan: &Plan) -> LayerSet {
        I440fx::new(f, plan).layers()
    }

    fn firmware_memory_layers(&self, f: &PciFunctionPlan, plan: &Plan) -> LayerSet {
        let mut m = I440fx::new(f, plan);
        firmware_pam_config(&mut m.config, PAM0);
        m.layers()
    }

    /// SeaBIOS's shadowing: the BIOS area 0xf0000-0xfffff read-only RAM, the rest of
    /// 0xc0000-0xeffff read-write RAM (make_bios_readonly with no option ROMs).
    fn firmware_init(&self, fw: &mut FirmwareFunction) -> Result<(), PciError> {
        firmware_pam(fw, PAM0);
        Ok(())
    }
}

/// The PAM values SeaBIOS leaves (shared by i440FX and the MCH), as (offset from PAM0,
/// value, length) writes in order.
const FIRMWARE_PAM: [(usize, u32, usize); 3] = [(1, 0x3333_3333, 4), (5, 0x3333, 2), (0, 0x10, 1)];

/// The firmware step's PAM writes.
pub(crate) fn firmware_pam(fw: &mut FirmwareFunction, pam0: usize) {
    for (offset, value, len) in FIRMWARE_PAM {
        fw.write(pam0 + offset, value, len);
    }
}

/// The same writes on a model's own config space (what `firmware_memory_layers` shows).
pub(crate) fn firmware_pam_config(config: &mut PciConfig, pam0: usize) {
    for (offset, value, len) in FIRMWARE_PAM {
        config.write(pam0 + offset, &value.to_le_bytes()[..len]);
    }
}
