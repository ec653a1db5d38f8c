//! Header-only kinds: functions machina builds as their guest-visible layout (identity, BARs
//! that size correctly, interrupt pin, the bytes QEMU's realize/reset preset) with no model
//! behind them. One table row per layout; the catalog marks these types `modelled: false`.

use super::config::{BarDef, ROM_BAR};
use super::device::GenericEndpoint;
use super::host::SharedFunction;
use super::kind::{shared, FunctionContext, PciKind};
use super::PciError;
use machine::PciFunctionPlan;

const K: u64 = 1024;
const M: u64 = 1024 * 1024;

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

fn layout(bars: Vec<(usize, BarDef)>, pin: u8, express: bool) -> EndpointLayout {
    EndpointLayout {
        bars,
        pin,
        express,
        registers: Vec::new(),
    }
}

/// A header-only kind: its type names and its layout on a bus (`express_bus`).
pub struct HeaderOnly {
    names: &'static [&'static str],
    layout: fn(&PciFunctionPlan, bool) -> EndpointLayout,
    nic: bool,
}

impl PciKind for HeaderOnly {
    fn names(&self) -> &'static [&'static str] {
        self.names
    }
    fn build(&self, ctx: &FunctionContext) -> Result<SharedFunction, PciError> {
        let f = ctx.function;
        let l = (self.layout)(f, ctx.placement.express);
        Ok(shared(GenericEndpoint::new(
            &f.identity,
            f.multifunction,
            l.express,
            &l.bars,
            l.pin,
            &l.registers,
        )?))
    }
    fn header_only(&self) -> bool {
        true
    }
    fn is_nic(&self, f: &PciFunctionPlan) -> bool {
        self.nic || f.virtio.is_some_and(|v| v.device_type == VIRTIO_NET)
    }
}

/// USB_SBRN (Serial Bus Release Number) of UHCI/EHCI.
const USB_SBRN: usize = 0x60;

/// usb_uhci_common_realize: SBRN = USB 1.0; uhci_reset: 0x6a = 0x01 (USB clock, "usb
/// clock" in hw/usb/hcd-uhci.c).
const UHCI_REGS: [(usize, u8); 2] = [(USB_SBRN, 0x10), (0x6a, 0x01)];

/// usb_ehci_pci_realize (hw/usb/hcd-ehci-pci.c): SBRN = USB 2.0, FLADJ 0x20, USBLEGSUP
/// capability ID 0x01 at 0x68 and USBLEGCTLSTS 0x6f = 0xc0.
const EHCI_REGS: [(usize, u8); 4] = [(USB_SBRN, 0x20), (0x61, 0x20), (0x68, 0x01), (0x6f, 0xc0)];

fn uhci(pin: u8) -> EndpointLayout {
    EndpointLayout {
        registers: UHCI_REGS.to_vec(),
        ..layout(vec![(4, BarDef::io(0x20))], pin, false)
    }
}

/// The header-only kinds with their QEMU layouts. UHCI pins: PIIX D; ICH9 UHCI1-6 A, B, C,
/// A, B, C (ich9_1..6 irq_pin).
pub static HEADER_ONLY: &[HeaderOnly] = &[
    HeaderOnly {
        names: &["VGA"],
        layout: |_, _| {
            layout(
                vec![
                    (0, BarDef::mem32(16 * M).prefetchable()),
                    (2, BarDef::mem32(4 * K)),
                    (ROM_BAR, BarDef::rom(64 * K)),
                ],
                0,
                false,
            )
        },
        nic: false,
    },
    HeaderOnly {
        names: &["e1000", "e1000-82544gc", "e1000-82545em"],
        layout: |_, _| {
            layout(
                vec![
                    (0, BarDef::mem32(128 * K)),
                    (1, BarDef::io(0x40)),
                    (ROM_BAR, BarDef::rom(256 * K)),
                ],
                1,
                false,
            )
        },
        nic: true,
    },
    HeaderOnly {
        names: &["piix3-usb-uhci", "piix4-usb-uhci"],
        layout: |_, _| uhci(4),
        nic: false,
    },
    HeaderOnly {
        names: &["ich9-usb-uhci1", "ich9-usb-uhci4"],
        layout: |_, _| uhci(1),
        nic: false,
    },
    HeaderOnly {
        names: &["ich9-usb-uhci2", "ich9-usb-uhci5"],
        layout: |_, _| uhci(2),
        nic: false,
    },
    HeaderOnly {
        names: &["ich9-usb-uhci3", "ich9-usb-uhci6"],
        layout: |_, _| uhci(3),
        nic: false,
    },
    HeaderOnly {
        names: &["ich9-usb-ehci1", "ich9-usb-ehci2"],
        layout: |_, _| EndpointLayout {
            registers: EHCI_REGS.to_vec(),
            ..layout(vec![(0, BarDef::mem32(4 * K))], 4, false)
        },
        nic: false,
    },
    HeaderOnly {
        names: &["qemu-xhci", "nec-usb-xhci"],
        layout: |_, express_bus| layout(vec![(0, BarDef::mem64(16 * K))], 1, express_bus),
        nic: false,
    },
];

/// Any function the catalog knows but no kind claims (a type a `-machine-definition`
/// adds): its identity and no BARs.
pub static UNKNOWN: HeaderOnly = HeaderOnly {
    names: &[],
    layout: |_, _| layout(Vec::new(), 0, false),
    nic: false,
};

/// virtio-net's virtio device type.
const VIRTIO_NET: u16 = 1;

/// A virtio-pci function's transport header, for the catalog's virtio types (found by their
/// `virtio` data, not by name). The VMM builds the device itself where it has a backend;
/// this is what stands in for it otherwise.
pub static VIRTIO: HeaderOnly = HeaderOnly {
    names: &[],
    layout: virtio_layout,
    nic: false,
};

fn virtio_layout(f: &PciFunctionPlan, express_bus: bool) -> EndpointLayout {
    let Some(v) = f.virtio else {
        return layout(Vec::new(), 0, false);
    };
    let mut bars = Vec::new();
    if v.legacy {
        bars.push((0, BarDef::io(virtio_legacy_bar_size(v.device_type))));
    }
    bars.push((1, BarDef::mem32(4 * K)));
    if v.modern {
        bars.push((4, BarDef::mem64(16 * K).prefetchable()));
    }
    if v.device_type == VIRTIO_NET {
        bars.push((ROM_BAR, BarDef::rom(256 * K)));
    }
    layout(bars, 1, v.pcie_capability && express_bus)
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
