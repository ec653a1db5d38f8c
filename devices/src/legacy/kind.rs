//! An ISA (or system-bus) device kind: how a device of the plan's ISA list is built and what
//! it adds to the DSDT. Each kind implements [`IsaKind`] in its own module; `crate::kinds`
//! maps the plan's type names to them. Entries without a kind (KVM's in-kernel PIC, PIT and
//! IOAPIC; devices machina does not model) are not mapped and not described.

use super::cmos::{Cmos, CmosState};
use super::fw_cfg::FwCfg;
use super::serial::{SerialPort, SharedWriter};
use super::IrqLine;
use crate::bus::SharedDevice;
use crate::lifecycle::Lifecycle;
use crate::timer::TimerQueue;
use machine::{IsaDevicePlan, Plan};
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// Errors building an ISA device.
#[derive(Debug, thiserror::Error)]
pub enum IsaError {
    #[error("{device}: the plan gives it no {what}")]
    MissingResource { device: String, what: &'static str },
    #[error("cannot set up the interrupt of {device}: {source}")]
    Interrupt {
        device: String,
        #[source]
        source: std::io::Error,
    },
    /// A configuration the device refuses, in QEMU's words ("Too many boot devices for PC").
    #[error("{0}")]
    Config(String),
}

/// What the RTC is built with besides the plan.
pub struct RtcInputs {
    /// Seconds the RTC runs ahead of the host's UTC clock (`-rtc base=`).
    pub offset: i64,
    /// The clock it runs on (`-rtc clock=`).
    pub clock: Arc<TimerQueue>,
    /// Its RAM and time before a reset (None at the first build).
    pub state: Option<CmosState>,
    /// The boot order CMOS shows firmware (`-boot`), and the floppy signature check.
    pub boot_order: String,
    pub fd_bootchk: bool,
}

/// What a kind gets to build one device.
pub struct IsaContext<'a> {
    /// The device as planned: its ports and IRQs.
    pub device: &'a IsaDevicePlan,
    pub plan: &'a Plan,
    pub lifecycle: &'a Lifecycle,
    /// Wires ISA IRQ `irq` to the interrupt controller (an irqfd).
    pub irq_line: &'a dyn Fn(u32) -> std::io::Result<EventFd>,
    /// ISA IRQ `irq` as a line driven by level (an irqfd injecting on a rising edge; under
    /// qtest the test's view of the interrupt controller).
    pub level_line: &'a dyn Fn(u32) -> std::io::Result<Arc<dyn IrqLine>>,
    /// The console output, for the first device that takes it (the first COM port).
    pub console: &'a mut Option<SharedWriter>,
    pub rtc: RtcInputs,
    /// CMOS bytes the board writes (`(register, value)`: the IDE disks' geometry).
    pub board_cmos: &'a [(u8, u8)],
    /// What fw_cfg holds (the VMM decides from the plan), for the fw_cfg device to take.
    pub fw_cfg: &'a mut Option<FwCfg>,
}

impl IsaContext<'_> {
    /// The device's IRQ number `index` (as the plan lists them) wired up.
    pub fn irq(&self, index: usize) -> Result<Option<EventFd>, IsaError> {
        let Some(&irq) = self.device.irqs.get(index) else {
            return Ok(None);
        };
        (self.irq_line)(irq)
            .map(Some)
            .map_err(|source| IsaError::Interrupt {
                device: self.device.type_name.clone(),
                source,
            })
    }

    /// Like [`irq`](Self::irq), for a line the device cannot do without.
    pub fn required_irq(&self, index: usize) -> Result<EventFd, IsaError> {
        self.irq(index)?.ok_or_else(|| IsaError::MissingResource {
            device: self.device.type_name.clone(),
            what: "IRQ",
        })
    }
}

/// A built ISA device, mapped at the plan's ports.
pub struct IsaBuilt {
    pub device: SharedDevice,
    /// The serial port the console is attached to, when this device took it.
    pub console: Option<Arc<Mutex<SerialPort>>>,
    /// The RTC, whose RAM and time a reset carries over.
    pub rtc: Option<Arc<Mutex<Cmos>>>,
}

impl IsaBuilt {
    pub fn new(device: SharedDevice) -> Self {
        Self {
            device,
            console: None,
            rtc: None,
        }
    }
}

/// The DSDT scope a kind's device goes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmlScope {
    /// The ISA bridge's (`PCI0.SF8` on q35, `PCI0.S08` on pc): ISA devices.
    IsaBridge,
    /// The PCI root bridge's (`\_SB.PCI0`): system devices QEMU describes there (fw_cfg).
    PciRoot,
}

/// One ISA device kind.
pub trait IsaKind: Sync {
    /// The plan's type names this kind implements.
    fn names(&self) -> &'static [&'static str];

    fn build(&self, ctx: &mut IsaContext) -> Result<IsaBuilt, IsaError>;

    /// A device whose `chardev=` is a console (a COM port): the VMM connects that chardev
    /// to it.
    fn console(&self) -> bool {
        false
    }

    /// Its place in QEMU's DSDT order (keyboard 0, floppy 1, parallel 2, serial 3, RTC 4),
    /// which is also the order Linux numbers PnP devices in.
    fn aml_order(&self) -> u8 {
        u8::MAX
    }

    /// Where its DSDT device goes.
    fn aml_scope(&self) -> AmlScope {
        AmlScope::IsaBridge
    }

    /// Its DSDT device, as QEMU's `build_aml` of the device writes it; `nth` counts the
    /// devices of this kind before it. Empty for devices QEMU does not describe.
    fn aml(&self, _dev: &IsaDevicePlan, _nth: usize) -> Vec<u8> {
        Vec::new()
    }
}

/// Board entries a model decodes as part of itself (the APM ports of the PM function, the
/// host bridge's config ports): the plan gives their resources, no ISA device is built.
pub struct BoardEntry {
    pub names: &'static [&'static str],
}

impl BoardEntry {
    /// The plan's entry of this kind, if the machine has one.
    pub fn find<'p>(&self, plan: &'p Plan) -> Option<&'p IsaDevicePlan> {
        plan.isa
            .iter()
            .find(|d| self.names.contains(&d.type_name.as_str()))
    }
}
