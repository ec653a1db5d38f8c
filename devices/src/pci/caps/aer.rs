//! Advanced Error Reporting extended capability (QEMU's pcie_aer_init, pcie_aer_root_init).
//! No errors are ever injected, so the status registers only ever hold what the guest
//! cannot set; the masks still behave like QEMU's (status RW1C, masks and severity RW).

use crate::pci::config::PciConfig;
use crate::pci::regs::EXT_CAP_ID_ERR;
use crate::pci::PciError;

pub const VERSION: u8 = 2;
pub const SIZE: usize = 0x48;

pub const UNCOR_STATUS: usize = 0x04;
pub const UNCOR_MASK: usize = 0x08;
pub const UNCOR_SEVER: usize = 0x0c;
pub const COR_STATUS: usize = 0x10;
pub const COR_MASK: usize = 0x14;
pub const CAP: usize = 0x18;
pub const ROOT_COMMAND: usize = 0x2c;
pub const ROOT_STATUS: usize = 0x30;

/// DLP SDN POISON FCP COMP_TIME COMP_ABORT UNX_COMP RX_OVER MALF ECRC UNSUP ACSV INTN
/// MCBTLP ATOP_EBLOCKED TLP_PRF_BLOCKED.
pub const UNC_SUPPORTED: u32 = 0x03ff_f030;
/// INTN | TLP_PRF_BLOCKED (x-pcie-err-unc-mask, on since QEMU 8.0).
pub const UNC_MASK_DEFAULT: u32 = 0x0240_0000;
/// DLP SDN FCP RX_OVER MALF INTN.
pub const UNC_SEVERITY_DEFAULT: u32 = 0x0046_2030;
/// RCVR BAD_TLP BAD_DLLP REP_ROLL REP_TIMER ADV_NONFATAL INTERNAL HL_OVERFLOW.
pub const COR_SUPPORTED: u32 = 0x0000_f1c1;
/// ADV_NONFATAL INTERNAL HL_OVERFLOW.
pub const COR_MASK_DEFAULT: u32 = 0x0000_e000;
/// ECRC generation/check capable, multiple header recording capable.
const CAP_ECRC_GENC: u32 = 0x20;
const CAP_ECRC_GENE: u32 = 0x40;
const CAP_ECRC_CHKC: u32 = 0x80;
const CAP_ECRC_CHKE: u32 = 0x100;
const CAP_MHRC: u32 = 0x200;
const CAP_MHRE: u32 = 0x400;
/// Correctable, non-fatal and fatal reporting enables.
pub const ROOT_CMD_EN_MASK: u32 = 0x7;
/// The seven "received" bits of the root error status.
pub const ROOT_STATUS_REPORT_MASK: u32 = 0x7f;
/// Advanced Error Interrupt Message Number, bits 31:27.
pub const ROOT_IRQ_SHIFT: u32 = 27;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AerConfig {
    /// `aer_log_max`: with a log the multiple-header bits are offered.
    pub log_max: u16,
    /// `x-pcie-err-unc-mask`: default uncorrectable mask (QEMU >= 8.0 machines).
    pub unc_mask: bool,
}

impl Default for AerConfig {
    fn default() -> Self {
        Self {
            log_max: 8,
            unc_mask: true,
        }
    }
}

pub fn add(config: &mut PciConfig, offset: usize, aer: AerConfig) -> Result<usize, PciError> {
    config.add_ext_capability(EXT_CAP_ID_ERR, VERSION, offset, SIZE)?;
    config.set_w1cmask_u32(offset + UNCOR_STATUS, UNC_SUPPORTED);
    if aer.unc_mask {
        config.set_u32(offset + UNCOR_MASK, UNC_MASK_DEFAULT);
        config.set_wmask_u32(offset + UNCOR_MASK, UNC_SUPPORTED);
    }
    config.set_u32(offset + UNCOR_SEVER, UNC_SEVERITY_DEFAULT);
    config.set_wmask_u32(offset + UNCOR_SEVER, UNC_SUPPORTED);
    config.set_w1cmask_u32(offset + COR_STATUS, COR_SUPPORTED);
    config.set_u32(offset + COR_MASK, COR_MASK_DEFAULT);
    config.set_wmask_u32(offset + COR_MASK, COR_SUPPORTED);
    let (cap, wmask) = if aer.log_max > 0 {
        (
            CAP_ECRC_GENC | CAP_ECRC_CHKC | CAP_MHRC,
            CAP_ECRC_GENE | CAP_ECRC_CHKE | CAP_MHRE,
        )
    } else {
        (CAP_ECRC_GENC | CAP_ECRC_CHKC, CAP_ECRC_GENE | CAP_ECRC_CHKE)
    };
    config.set_u32(offset + CAP, cap);
    config.set_wmask_u32(offset + CAP, wmask);
    Ok(offset)
}

/// Root port additions: root error command writable, root status RW1C.
pub fn root_init(config: &mut PciConfig, offset: usize) {
    config.set_wmask_u32(offset + ROOT_COMMAND, ROOT_CMD_EN_MASK);
    config.set_w1cmask_u32(offset + ROOT_STATUS, ROOT_STATUS_REPORT_MASK);
}

pub fn root_reset(config: &mut PciConfig, offset: usize) {
    config.set_u32(offset + ROOT_COMMAND, 0);
}

/// pcie_aer_root_set_vector: the MSI vector AER interrupts use, reported in root status.
pub fn root_set_vector(config: &mut PciConfig, offset: usize, vector: u8) {
    let st = config.get_u32(offset + ROOT_STATUS) & !(0x1f << ROOT_IRQ_SHIFT);
    config.set_u32(
        offset + ROOT_STATUS,
        st | (u32::from(vector & 0x1f) << ROOT_IRQ_SHIFT),
    );
}
