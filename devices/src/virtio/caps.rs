//! virtio-pci's capability chain in QEMU's insertion order: behind a PCIe port the Express
//! endpoint and PM capabilities (virtio_pci_realize), then the vendor capabilities for the
//! modern interface and the PCI-config access window, then MSI-X (virtio_pci_device_plugged).
//! QEMU allocates each at the first free offset from 0x40, so they come out back to back:
//! transitional 0x40/0x50/0x60/0x70/0x84 + MSI-X 0x98; behind a root port PCIe 0x40, PM
//! 0x7c, vendor 0x84.. and MSI-X 0xdc.

use super::regs::*;
use crate::pci::caps::pcie::{self, PcieCap, PortType};
use crate::pci::caps::pm::{self, PmConfig};
use crate::pci::config::PciConfig;
use crate::pci::msix::{Msix, MsixLayout};
use crate::pci::regs::{EXT_CONFIG_START, HEADER_SIZE};
use crate::pci::PciError;

/// Vendor capability length (`struct virtio_pci_cap`), notify and cfg variants add a dword.
const VENDOR_CAP_LEN: usize = 16;
const NOTIFY_CAP_LEN: usize = 20;
const PCI_CFG_CAP_LEN: usize = 20;
/// Offset of `pci_cfg_data` in `struct virtio_pci_cfg_cap`.
pub const PCI_CFG_DATA: usize = 16;
const PCI_CFG_BAR: usize = 4;
const PCI_CFG_OFFSET: usize = 8;
const PCI_CFG_LENGTH: usize = 12;

/// QEMU's virtio-pci flags that shape the Express capabilities (10.2 defaults: every init
/// flag on, `x-pcie-pm-no-soft-reset` off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpressFlags {
    pub deverr_init: bool,
    pub lnkctl_init: bool,
    pub flr_init: bool,
    pub pm_no_soft_reset: bool,
}

impl Default for ExpressFlags {
    fn default() -> Self {
        Self {
            deverr_init: true,
            lnkctl_init: true,
            flr_init: true,
            pm_no_soft_reset: false,
        }
    }
}

/// Where each capability landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapLayout {
    pub pcie: Option<PcieCap>,
    pub pm: Option<usize>,
    pub common: Option<usize>,
    pub isr: Option<usize>,
    pub device: Option<usize>,
    pub notify: Option<usize>,
    pub pci_cfg: Option<usize>,
    pub msix: Option<usize>,
}

struct Allocator {
    next: usize,
}

impl Allocator {
    fn take(&mut self, len: usize) -> usize {
        let at = self.next;
        self.next += len;
        at
    }
}

fn vendor_cap(
    config: &mut PciConfig,
    at: usize,
    len: usize,
    cfg_type: u8,
    bar: u8,
    offset: u32,
    length: u32,
) -> Result<(), PciError> {
    config.add_capability(CAP_ID_VENDOR, at, len)?;
    config.set_u8(at + 2, len as u8);
    config.set_u8(at + 3, cfg_type);
    config.set_u8(at + 4, bar);
    config.set_u32(at + 8, offset);
    config.set_u32(at + 12, length);
    Ok(())
}

/// virtio_pci_realize on an express bus: pcie_endpoint_cap_init (a v2 endpoint) and the
/// init helpers its flags select, then the PM capability with a writable power state.
fn express_caps(
    config: &mut PciConfig,
    a: &mut Allocator,
    f: ExpressFlags,
) -> Result<(PcieCap, usize), PciError> {
    let exp = PcieCap::init(config, a.take(pcie::SIZE_V2), PortType::Endpoint, 0)?;
    if f.deverr_init {
        exp.deverr_init(config);
    }
    if f.lnkctl_init {
        exp.lnkctl_init(config);
    }
    if f.flr_init {
        exp.flr_init(config);
    }
    let pm_cfg = PmConfig {
        ctrl: if f.pm_no_soft_reset {
            pm::CTRL_NO_SOFT_RESET
        } else {
            0
        },
        ctrl_wmask: pm::CTRL_STATE_MASK,
        ..PmConfig::BASIC
    };
    let pm_at = pm::add(config, a.take(pm::SIZE), pm_cfg)?;
    // QEMU_PCIE_EXTCAP_INIT: a read-only null extended capability header at 0x100.
    config.set_read_only(EXT_CONFIG_START, 4);
    Ok((exp, pm_at))
}

/// Build the chain. `vectors == 0` leaves MSI-X out (and BAR 1 unregistered).
pub fn build(
    config: &mut PciConfig,
    modern: bool,
    express: Option<ExpressFlags>,
    vectors: u16,
) -> Result<(CapLayout, Option<Msix>), PciError> {
    let mut a = Allocator { next: HEADER_SIZE };
    let mut l = CapLayout::default();
    if let Some(f) = express {
        let (exp, pm_at) = express_caps(config, &mut a, f)?;
        l.pcie = Some(exp);
        l.pm = Some(pm_at);
    }
    if modern {
        let bar = modern::BAR as u8;
        let regions = [
            (CAP_COMMON_CFG, modern::COMMON, &mut l.common),
            (CAP_ISR_CFG, modern::ISR, &mut l.isr),
            (CAP_DEVICE_CFG, modern::DEVICE, &mut l.device),
        ];
        for (ty, off, slot) in regions {
            let at = a.take(VENDOR_CAP_LEN);
            vendor_cap(
                config,
                at,
                VENDOR_CAP_LEN,
                ty,
                bar,
                off as u32,
                modern::REGION_SIZE as u32,
            )?;
            *slot = Some(at);
        }
        let at = a.take(NOTIFY_CAP_LEN);
        let notify_len = u32::from(QUEUE_MAX) * modern::NOTIFY_MULTIPLIER;
        vendor_cap(
            config,
            at,
            NOTIFY_CAP_LEN,
            CAP_NOTIFY_CFG,
            bar,
            modern::NOTIFY as u32,
            notify_len,
        )?;
        config.set_u32(at + 16, modern::NOTIFY_MULTIPLIER);
        l.notify = Some(at);
        let at = a.take(PCI_CFG_CAP_LEN);
        vendor_cap(config, at, PCI_CFG_CAP_LEN, CAP_PCI_CFG, 0, 0, 0)?;
        // The window's bar/offset/length and data are the guest's to write.
        config.set_wmask_u8(at + PCI_CFG_BAR, 0xff);
        config.set_wmask_u32(at + PCI_CFG_OFFSET, 0xffff_ffff);
        config.set_wmask_u32(at + PCI_CFG_LENGTH, 0xffff_ffff);
        config.set_wmask_u32(at + PCI_CFG_DATA, 0xffff_ffff);
        l.pci_cfg = Some(at);
    }
    let msix = if vectors > 0 {
        let at = a.take(crate::pci::msix::MSIX_CAP_SIZE);
        let layout = MsixLayout::exclusive_bar(MSIX_BAR as u8, vectors);
        l.msix = Some(at);
        Some(Msix::init(config, at, vectors, layout)?)
    } else {
        None
    };
    Ok((l, msix))
}

/// The PCI-config access window as the guest programmed it: (bar, offset, length).
pub fn pci_cfg_window(config: &PciConfig, cap: usize) -> (u8, u32, u32) {
    (
        config.get_u8(cap + PCI_CFG_BAR),
        config.get_u32(cap + PCI_CFG_OFFSET),
        config.get_u32(cap + PCI_CFG_LENGTH),
    )
}
