//! The 82574L's config space: QEMU's BAR layout and capability chain (hw/net/e1000e.c
//! e1000e_pci_realize).
//!
//! | what       | where                    | QEMU                                           |
//! |------------|--------------------------|------------------------------------------------|
//! | BARs       | 0/1 mem 128 KiB, 2 io 32, 3 mem 16 KiB, ROM 256 KiB | MMIO, flash, I/O, MSI-X |
//! | MSI-X      | 0xa0, 5 vectors          | msix_init: table BAR3 + 0, PBA BAR3 + 0x2000    |
//! | PCIe (v1)  | 0xe0                     | pcie_endpoint_cap_v1_init: RC integrated endpoint (type 9) on a root PCIe bus, endpoint (0) elsewhere |
//! | MSI        | 0xd0, 1 vector, 64-bit   | msi_init(0xd0, 1, true, false)                  |
//! | PM         | 0xc8, PMC 0x0022         | e1000e_add_pm_capability(PCI_PM_CAP_DSI)        |
//! | AER (v2)   | 0x100                    | pcie_aer_init, no log (no multiple header)      |
//! | DSN        | 0x140                    | pcie_dev_ser_num_init(e1000e_gen_dsn(mac))      |
//!
//! Each capability is linked at the head of the list, so the chain reads PM 0xc8 -> MSI
//! 0xd0 -> PCIe 0xe0 -> MSI-X 0xa0. The extended capabilities exist only in a PCI Express
//! config space (an express bus).

use crate::pci::caps::aer::{self, AerConfig};
use crate::pci::caps::pcie::{PcieCap, PortType, Version};
use crate::pci::caps::pm::{self, PmConfig};
use crate::pci::config::{BarDef, PciConfig, ROM_BAR};
use crate::pci::device::BusPlacement;
use crate::pci::msi::MsiCap;
use crate::pci::msix::{Msix, MsixLayout};
use crate::pci::regs::*;
use crate::pci::PciError;
use machine::PciFunctionPlan;

const K: u64 = 1024;
pub const MMIO_BAR: usize = 0;
pub const FLASH_BAR: usize = 1;
pub const IO_BAR: usize = 2;
pub const MSIX_BAR: usize = 3;
const MSIX_CAP: usize = 0xa0;
const MSIX_VECTORS: u16 = super::regs::MSIX_VECTORS;
const MSIX_PBA: u32 = 0x2000;
const PM_CAP: usize = 0xc8;
const MSI_CAP: usize = 0xd0;
const EXP_CAP: usize = 0xe0;
const AER_CAP: usize = 0x100;
const DSN_CAP: usize = 0x140;

/// e1000e_add_pm_capability(PCI_PM_CAP_DSI): power state, PME enable and data select are
/// writable; PME status is RW1C.
const PM: PmConfig = PmConfig {
    pmc: pm::PMC_VER_1_1 | pm::PMC_DSI,
    ctrl: 0,
    ctrl_wmask: pm::CTRL_STATE_MASK | pm::CTRL_PME_ENABLE | pm::CTRL_DATA_SEL_MASK,
    ctrl_w1cmask: pm::CTRL_PME_STATUS,
};

const DSN_SIZE: usize = 0x0c;

/// e1000e_gen_dsn: the MAC with 0xffff spliced into the middle.
pub fn device_serial_number(mac: [u8; 6]) -> u64 {
    u64::from(mac[5])
        | u64::from(mac[4]) << 8
        | u64::from(mac[3]) << 16
        | 0xff << 24
        | 0xff << 32
        | u64::from(mac[2]) << 40
        | u64::from(mac[1]) << 48
        | u64::from(mac[0]) << 56
}

/// The function's config space at power-on, its MSI-X state and its MSI capability.
pub fn build(
    f: &PciFunctionPlan,
    bus: BusPlacement,
    mac: [u8; 6],
) -> Result<(PciConfig, Msix, MsiCap), PciError> {
    let p = &f.properties;
    let mut c = PciConfig::new(&f.identity, f.multifunction, bus.express);
    c.set_u16(SUBSYSTEM_VENDOR_ID, p.u16("subsys_ven", 0x8086)?);
    c.set_u16(SUBSYSTEM_ID, p.u16("subsys", 0)?);
    for (i, def) in [
        (MMIO_BAR, BarDef::mem32(128 * K)),
        (FLASH_BAR, BarDef::mem32(128 * K)),
        (IO_BAR, BarDef::io(0x20)),
        (MSIX_BAR, BarDef::mem32(16 * K)),
        (ROM_BAR, BarDef::rom(256 * K)),
    ] {
        c.register_bar(i, def)?;
    }
    c.set_interrupt_pin(1);

    // e1000e_init_msix
    let layout = MsixLayout {
        bar: MSIX_BAR as u8,
        table_offset: 0,
        pba_offset: MSIX_PBA,
        bar_size: 16 * K,
    };
    let msix = Msix::init(&mut c, MSIX_CAP, MSIX_VECTORS, layout)?;

    // pcie_endpoint_cap_v1_init: no write masks, no DLLLA.
    let ty = if bus.express && bus.root {
        PortType::RcEndpoint
    } else {
        PortType::Endpoint
    };
    PcieCap::init_version(&mut c, EXP_CAP, ty, 0, Version::V1)?;

    let msi = MsiCap::init(&mut c, MSI_CAP, 1, true, false)?;

    pm::add(&mut c, PM_CAP, PM)?;

    if bus.express {
        let cfg = AerConfig {
            log_max: 0,
            unc_mask: p.bool("x-pcie-err-unc-mask", true)?,
        };
        aer::add(&mut c, AER_CAP, cfg)?;
        c.add_ext_capability(EXT_CAP_ID_DSN, 1, DSN_CAP, DSN_SIZE)?;
        c.set_u64(DSN_CAP + 4, device_serial_number(mac));
    }
    c.commit_reset_state();
    Ok((c, msix, msi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e1000e::E1000e;
    use crate::pci::interrupt::MsiSink;
    use crate::pci::PciFunction;
    use std::sync::Arc;

    /// The e1000e function as the catalog plans it.
    fn plan() -> PciFunctionPlan {
        crate::testing::dut_plan(&["e1000e,id=dut"], &[])
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn rd(f: &mut E1000e, off: u16, len: usize) -> u32 {
        let mut b = [0u8; 4];
        f.config_read(off, &mut b[..len]);
        u32::from_le_bytes(b)
    }

    /// Measured on QEMU (q35 pcie.0, QEMU 7.2 with the 10.2 AER mask).
    #[test]
    fn integrated_endpoint_matches_qemu() {
        let root = BusPlacement {
            express: true,
            root: true,
        };
        let mut f = E1000e::new(&plan(), root, MAC).unwrap();
        assert_eq!(rd(&mut f, 0x04, 4), 0x0010_0000);
        assert_eq!(rd(&mut f, 0x2c, 4), 0x0000_8086);
        assert_eq!(rd(&mut f, 0x34, 1), 0xc8);
        for (off, v) in [
            (0xa0, 0x0004_0011u32),
            (0xa4, 0x0000_0003),
            (0xa8, 0x0000_2003),
            (0xc8, 0x0022_d001),
            (0xcc, 0),
            (0xd0, 0x0080_e005),
            (0xe0, 0x0091_a010),
            (0xe4, 0x0000_8000),
            (0xec, 0x0000_0411),
            (0xf0, 0x0011_0000),
            (0x100, 0x1402_0001),
            (0x108, 0x0240_0000),
            (0x10c, 0x0046_2030),
            (0x114, 0x0000_e000),
            (0x118, 0x0000_00a0),
            (0x140, 0x0001_0003),
            (0x144, 0xff12_3456),
            (0x148, 0x5254_00ff),
        ] {
            assert_eq!(rd(&mut f, off, 4), v, "{off:#x}");
        }
        // Capabilities are read-only; PM control takes the state and PME enable.
        f.config_write(0xe0, &[0xff; 4]);
        assert_eq!(rd(&mut f, 0xe0, 4), 0x0091_a010);
        f.config_write(0xcc, &[0x03, 0x01]);
        assert_eq!(rd(&mut f, 0xcc, 2), 0x0103);
    }

    #[test]
    fn endpoint_behind_a_port_or_on_pci() {
        let port = BusPlacement {
            express: true,
            root: false,
        };
        let mut f = E1000e::new(&plan(), port, MAC).unwrap();
        assert_eq!(rd(&mut f, 0xe2, 2), 0x0001);
        let pci = BusPlacement {
            express: false,
            root: true,
        };
        let mut f = E1000e::new(&plan(), pci, MAC).unwrap();
        assert_eq!(rd(&mut f, 0xe2, 2), 0x0001);
        assert_eq!(rd(&mut f, 0x34, 1), 0xc8);
        assert_eq!(f.config().size(), 256, "no extended capabilities on PCI");
    }

    #[derive(Default)]
    struct Sent(std::sync::Mutex<Vec<(u64, u32)>>);
    impl MsiSink for Sent {
        fn send(&self, address: u64, data: u32) {
            self.0.lock().unwrap().push((address, data));
        }
    }

    #[test]
    fn msix_table_in_bar3() {
        let root = BusPlacement {
            express: true,
            root: true,
        };
        let mut f = E1000e::new(&plan(), root, MAC).unwrap();
        let sent = Arc::new(Sent::default());
        f.set_msi_sink(sent.clone());
        let mut b = [0u8; 4];
        f.bar_read(MSIX_BAR, 12, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1, "vector 0 masked at reset");
        f.bar_write(MSIX_BAR, 0, &0xfee0_0000u32.to_le_bytes());
        f.bar_write(MSIX_BAR, 8, &0x41u32.to_le_bytes());
        f.bar_read(MSIX_BAR, 0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0xfee0_0000);
        f.config_write(0xa3, &[0x80]);
        assert_eq!(rd(&mut f, 0xa2, 2), 0x8004);
        f.reset();
        assert_eq!(rd(&mut f, 0xa2, 2), 0x0004);
        f.bar_read(MSIX_BAR, 0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0);
        assert!(sent.0.lock().unwrap().is_empty());
    }

    #[test]
    fn dsn_from_mac() {
        assert_eq!(
            device_serial_number([0x52, 0x54, 0x00, 0x12, 0x34, 0x58]),
            0x5254_00ff_ff12_3458
        );
    }
}
