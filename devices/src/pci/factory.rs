//! Plan `type_name` to model: the chipset functions, bridges and ports, and a generic
//! endpoint with QEMU's BAR layout for everything whose behaviour is not modelled yet.

use super::bridge;
use super::config::{BarDef, ROM_BAR};
use super::device::GenericEndpoint;
use super::e1000e::{BusPlacement, E1000e};
use super::host::SharedFunction;
use super::PciError;
use crate::chipset::acpi_pm::AcpiPm;
use crate::chipset::{ahci, i440fx, ich9_lpc, ich9_smbus, mch, piix3, piix4_pm, piix_ide};
use crate::lifecycle::Lifecycle;
use machine::{PciFunctionPlan, Plan};
use std::sync::{Arc, Mutex};

pub(crate) struct Built {
    pub func: SharedFunction,
    /// The ACPI PM block, when this function owns it (ICH9-LPC, PIIX4_PM).
    pub acpi_pm: Option<Arc<Mutex<AcpiPm>>>,
    /// Built as a `GenericEndpoint`: identity and BARs with no device model behind them.
    /// The catalog's `modelled: false` must say the same (factory_tests.rs reads it).
    #[cfg_attr(not(test), allow(dead_code))]
    pub header_only: bool,
}

fn shared<T: super::PciFunction + 'static>(f: T) -> SharedFunction {
    Arc::new(Mutex::new(f))
}

pub(crate) fn build(
    f: &PciFunctionPlan,
    plan: &Plan,
    lifecycle: &Lifecycle,
    bus: BusPlacement,
) -> Result<Built, PciError> {
    let express_bus = bus.express;
    let plain = |func| Built {
        func,
        acpi_pm: None,
        header_only: false,
    };
    Ok(match f.type_name.as_str() {
        "mch" => plain(shared(mch::Mch::new(f, plan)?)),
        "i440FX" => plain(shared(i440fx::I440fx::new(f, plan))),
        "ICH9-LPC" => {
            let lpc = ich9_lpc::Ich9Lpc::new(f, plan, lifecycle.clone())?;
            let pm = lpc.acpi_pm();
            Built {
                func: shared(lpc),
                acpi_pm: Some(pm),
                header_only: false,
            }
        }
        "PIIX3" | "piix4-isa" => plain(shared(piix3::Piix3::new(f))),
        "piix3-ide" | "piix4-ide" => plain(shared(piix_ide::PiixIde::new(f)?)),
        "PIIX4_PM" => {
            let pm = piix4_pm::Piix4Pm::new(f, plan, lifecycle.clone());
            let acpi = pm.acpi_pm();
            Built {
                func: shared(pm),
                acpi_pm: Some(acpi),
                header_only: false,
            }
        }
        "ich9-ahci" => plain(shared(ahci::Ich9Ahci::new(f)?)),
        "ICH9-SMB" => plain(shared(ich9_smbus::Ich9Smbus::new(f)?)),
        name if bridge::is_bridge_type(name) => plain(bridge::build(f)?),
        "e1000e" => {
            let mac = super::nic::mac_of(plan, f).unwrap_or([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
            plain(shared(E1000e::new(f, bus, mac)?))
        }
        _ => {
            let l = endpoint_layout(f, express_bus);
            Built {
                header_only: true,
                ..plain(shared(GenericEndpoint::new(
                    &f.identity,
                    f.multifunction,
                    l.express,
                    &l.bars,
                    l.pin,
                    &l.registers,
                )?))
            }
        }
    })
}

/// What a header-only function looks like in QEMU.
struct EndpointLayout {
    bars: Vec<(usize, BarDef)>,
    /// Interrupt pin (1 = INTA#, 0 = none).
    pin: u8,
    /// PCI Express config-space size (4 KiB).
    express: bool,
    /// Device-specific bytes past the header that QEMU's realize/reset set.
    registers: Vec<(usize, u8)>,
}

/// USB_SBRN (Serial Bus Release Number) of UHCI/EHCI.
const USB_SBRN: usize = 0x60;

/// usb_uhci_common_realize: SBRN = USB 1.0; uhci_reset: 0x6a = 0x01 (USB clock, "usb
/// clock" in hw/usb/hcd-uhci.c).
const UHCI_REGS: [(usize, u8); 2] = [(USB_SBRN, 0x10), (0x6a, 0x01)];

/// usb_ehci_pci_realize (hw/usb/hcd-ehci-pci.c): SBRN = USB 2.0, FLADJ 0x20, USBLEGSUP
/// capability ID 0x01 at 0x68 and USBLEGCTLSTS 0x6f = 0xc0.
const EHCI_REGS: [(usize, u8); 4] = [(USB_SBRN, 0x20), (0x61, 0x20), (0x68, 0x01), (0x6f, 0xc0)];

/// QEMU's BARs, interrupt pin, config-space size and preset registers for functions
/// modelled as a header only.
fn endpoint_layout(f: &PciFunctionPlan, express_bus: bool) -> EndpointLayout {
    const K: u64 = 1024;
    const M: u64 = 1024 * 1024;
    let layout = |bars: Vec<(usize, BarDef)>, pin: u8, express: bool| EndpointLayout {
        bars,
        pin,
        express,
        registers: Vec::new(),
    };
    let uhci = |pin: u8| EndpointLayout {
        registers: UHCI_REGS.to_vec(),
        ..layout(vec![(4, BarDef::io(0x20))], pin, false)
    };
    if let Some(v) = f.virtio {
        let mut bars = Vec::new();
        if v.legacy {
            bars.push((0, BarDef::io(virtio_legacy_bar_size(v.device_type))));
        }
        bars.push((1, BarDef::mem32(4 * K)));
        if v.modern {
            bars.push((4, BarDef::mem64(16 * K).prefetchable()));
        }
        if v.device_type == 1 {
            bars.push((ROM_BAR, BarDef::rom(256 * K)));
        }
        return layout(bars, 1, v.pcie_capability && express_bus);
    }
    match f.type_name.as_str() {
        "VGA" => layout(
            vec![
                (0, BarDef::mem32(16 * M).prefetchable()),
                (2, BarDef::mem32(4 * K)),
                (ROM_BAR, BarDef::rom(64 * K)),
            ],
            0,
            false,
        ),
        "e1000" | "e1000-82544gc" | "e1000-82545em" => layout(
            vec![
                (0, BarDef::mem32(128 * K)),
                (1, BarDef::io(0x40)),
                (ROM_BAR, BarDef::rom(256 * K)),
            ],
            1,
            false,
        ),
        // UHCI pins: PIIX D; ICH9 UHCI1-6 A, B, C, A, B, C (ich9_1..6 irq_pin).
        "piix3-usb-uhci" | "piix4-usb-uhci" => uhci(4),
        "ich9-usb-uhci1" | "ich9-usb-uhci4" => uhci(1),
        "ich9-usb-uhci2" | "ich9-usb-uhci5" => uhci(2),
        "ich9-usb-uhci3" | "ich9-usb-uhci6" => uhci(3),
        "ich9-usb-ehci1" | "ich9-usb-ehci2" => EndpointLayout {
            registers: EHCI_REGS.to_vec(),
            ..layout(vec![(0, BarDef::mem32(4 * K))], 4, false)
        },
        "qemu-xhci" | "nec-usb-xhci" => layout(vec![(0, BarDef::mem64(16 * K))], 1, express_bus),
        _ => layout(Vec::new(), 0, false),
    }
}

/// Legacy I/O BAR of a virtio-pci function: pow2ceil(24-byte header with MSI-X + the
/// device config QEMU 10.2 exposes) -- net and rng 0x20, blk 0x80 (60+ byte
/// virtio_blk_config), console/scsi/balloon 0x40 (measured; virtio_pci_device_plugged).
fn virtio_legacy_bar_size(device_type: u16) -> u64 {
    match device_type {
        1 | 4 => 0x20,
        2 => 0x80,
        _ => 0x40,
    }
}
