//! Plan `type_name` to model: the chipset functions, bridges and ports, and a generic
//! endpoint with QEMU's BAR layout for everything whose behaviour is not modelled yet.

use super::bridge;
use super::config::{BarDef, ROM_BAR};
use super::device::GenericEndpoint;
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
}

fn shared<T: super::PciFunction + 'static>(f: T) -> SharedFunction {
    Arc::new(Mutex::new(f))
}

pub(crate) fn build(
    f: &PciFunctionPlan,
    plan: &Plan,
    lifecycle: &Lifecycle,
    express_bus: bool,
) -> Result<Built, PciError> {
    let plain = |func| Built {
        func,
        acpi_pm: None,
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
            }
        }
        "ich9-ahci" => plain(shared(ahci::Ich9Ahci::new(f)?)),
        "ICH9-SMB" => plain(shared(ich9_smbus::Ich9Smbus::new(f)?)),
        name if bridge::is_bridge_type(name) => plain(bridge::build(f)?),
        _ => {
            let (bars, pin, express) = endpoint_layout(f, express_bus);
            plain(shared(GenericEndpoint::new(
                &f.identity,
                f.multifunction,
                express,
                &bars,
                pin,
            )?))
        }
    })
}

/// QEMU's BARs, interrupt pin and config-space size for functions modelled as a header only.
fn endpoint_layout(f: &PciFunctionPlan, express_bus: bool) -> (Vec<(usize, BarDef)>, u8, bool) {
    const K: u64 = 1024;
    const M: u64 = 1024 * 1024;
    if let Some(v) = f.virtio {
        let mut bars = Vec::new();
        if v.legacy {
            // pow2ceil(20-byte common header + device config): 0x20 for net and rng.
            let io = if matches!(v.device_type, 1 | 4) {
                0x20
            } else {
                0x40
            };
            bars.push((0, BarDef::io(io)));
        }
        bars.push((1, BarDef::mem32(4 * K)));
        if v.modern {
            bars.push((4, BarDef::mem64(16 * K).prefetchable()));
        }
        if v.device_type == 1 {
            bars.push((ROM_BAR, BarDef::rom(256 * K)));
        }
        return (bars, 1, v.pcie_capability && express_bus);
    }
    match f.type_name.as_str() {
        "VGA" => (
            vec![
                (0, BarDef::mem32(16 * M).prefetchable()),
                (2, BarDef::mem32(4 * K)),
                (ROM_BAR, BarDef::rom(64 * K)),
            ],
            0,
            false,
        ),
        "e1000" | "e1000-82544gc" | "e1000-82545em" => (
            vec![
                (0, BarDef::mem32(128 * K)),
                (1, BarDef::io(0x40)),
                (ROM_BAR, BarDef::rom(256 * K)),
            ],
            1,
            false,
        ),
        "e1000e" => (
            vec![
                (0, BarDef::mem32(128 * K)),
                (1, BarDef::mem32(128 * K)),
                (2, BarDef::io(0x20)),
                (3, BarDef::mem32(16 * K)),
                (ROM_BAR, BarDef::rom(256 * K)),
            ],
            1,
            express_bus,
        ),
        "piix3-usb-uhci" | "piix4-usb-uhci" => (vec![(4, BarDef::io(0x20))], 4, false),
        "ich9-usb-uhci1" => (vec![(4, BarDef::io(0x20))], 1, false),
        "ich9-usb-uhci2" => (vec![(4, BarDef::io(0x20))], 2, false),
        "ich9-usb-uhci3" => (vec![(4, BarDef::io(0x20))], 3, false),
        "ich9-usb-ehci1" | "ich9-usb-ehci2" => (vec![(0, BarDef::mem32(4 * K))], 4, false),
        "qemu-xhci" | "nec-usb-xhci" => (vec![(0, BarDef::mem64(16 * K))], 1, express_bus),
        _ => (Vec::new(), 0, false),
    }
}
