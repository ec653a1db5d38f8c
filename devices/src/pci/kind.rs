//! A device kind: how a planned function of one catalog type is built, and what it declares
//! to the host and the firmware step. Every kind implements [`PciKind`] in its own module;
//! `crate::kinds` is the registry that maps catalog type names to kinds. The host, the
//! firmware step and the VMM ask the kind (or the built function), never the type name.

use super::device::BusPlacement;
use super::firmware::FirmwareFunction;
use super::host::SharedFunction;
use super::PciError;
use crate::lifecycle::Lifecycle;
use machine::{MacAddr, PciFunctionPlan, Plan};
use std::sync::{Arc, Mutex};

/// What a kind gets to build one function.
pub struct FunctionContext<'a> {
    /// The function as planned: identity, address, typed-as-planned properties.
    pub function: &'a PciFunctionPlan,
    /// The whole plan (for chipset functions that depend on the ISA devices present, the
    /// memory map or the fixed resources).
    pub plan: &'a Plan,
    pub lifecycle: &'a Lifecycle,
    /// The bus the function sits on.
    pub placement: BusPlacement,
    /// The registry, for kinds that depend on other functions' kinds (MAC numbering).
    pub kind_of: KindOf,
}

impl FunctionContext<'_> {
    /// The MAC QEMU gives this function: its `mac=` or the next free default; None if it
    /// is not a NIC.
    pub fn mac(&self) -> Result<Option<MacAddr>, PciError> {
        let kind_of = self.kind_of;
        super::nic::mac_of(self.plan, self.function, &|f| kind_of(f).is_nic(f))
    }
}

/// One device kind (one implementation for one or more catalog type names).
pub trait PciKind: Sync {
    /// The catalog type names this kind implements.
    fn names(&self) -> &'static [&'static str];

    /// The model of `ctx.function` at its power-on state.
    fn build(&self, ctx: &FunctionContext) -> Result<SharedFunction, PciError>;

    /// The memory remapping layers the function's model publishes at its power-on state
    /// (host bridges: PAM, SMRAM), so that the VM's first memslots already have that
    /// shape; the model publishes the same through `set_memory_view`.
    fn reset_memory_layers(
        &self,
        _f: &machine::PciFunctionPlan,
        _plan: &machine::Plan,
    ) -> crate::chipset::memory_view::LayerSet {
        Vec::new()
    }

    /// The layers as [`firmware_init`](Self::firmware_init) leaves them (host bridges: PAM
    /// as SeaBIOS programs it). A machine whose firmware step runs before any vCPU starts
    /// registers its first memslots in this shape: KVM makes the first memslot change after
    /// the irqchip exists wait out an SRCU grace period (4-10 ms on our hosts), and with the
    /// final shape from the start the firmware step changes no memslot.
    fn firmware_memory_layers(
        &self,
        f: &machine::PciFunctionPlan,
        plan: &machine::Plan,
    ) -> crate::chipset::memory_view::LayerSet {
        self.reset_memory_layers(f, plan)
    }

    /// Properties a `-global` may set: the ones this model reads from the plan and honours
    /// (other globals are refused rather than silently kept).
    fn globals(&self) -> &'static [&'static str] {
        &[]
    }

    /// Built as a header only (identity and BARs, nothing behind them): the catalog's
    /// `modelled: false` says the same (checked by `crate::kinds` tests).
    fn header_only(&self) -> bool {
        false
    }

    /// A network function: it takes part in QEMU's default MAC numbering.
    fn is_nic(&self, _f: &PciFunctionPlan) -> bool {
        false
    }

    /// A NIC model that moves frames itself: the VMM opens its netdev and builds it with
    /// [`build_nic`](Self::build_nic) rather than [`build`](Self::build).
    fn moves_frames(&self) -> bool {
        false
    }

    /// The model of NIC `f` with its network backend and guest memory.
    fn build_nic(
        &self,
        f: &PciFunctionPlan,
        _placement: BusPlacement,
        _backend: super::nic::NicBackend,
    ) -> Result<super::nic::NicParts, PciError> {
        Err(PciError::Device {
            device: f.type_name.clone(),
            reason: "not a NIC model".into(),
        })
    }

    /// What firmware programs in this function before the BARs are assigned (chipset bases,
    /// PIRQ routes, ECAM), reporting what it set in `fw.layout`.
    fn firmware_init(&self, _fw: &mut FirmwareFunction) -> Result<(), PciError> {
        Ok(())
    }

    /// What firmware programs after interrupt routing (e.g. an interrupt line that is not
    /// the routed PIRQ's IRQ).
    fn firmware_finish(&self, _fw: &mut FirmwareFunction) {}

    /// BAR `bar` is programmed by [`firmware_init`](Self::firmware_init) at a fixed place and
    /// left out of resource assignment.
    fn fixed_bar(&self, _bar: usize) -> bool {
        false
    }

    /// The PCI-to-ISA bridge (ICH9 LPC, PIIX3): the ISA devices sit in its ACPI scope.
    fn isa_bridge(&self) -> bool {
        false
    }

    /// On the PIRQ router (ICH9 LPC, PIIX3): the config offset of PIRQ `pirq`'s route
    /// register (IRQ number, bit 7 = disabled).
    fn pirq_route_register(&self, _pirq: u8) -> Option<usize> {
        None
    }
}

/// A kind that is a constructor and nothing else (bridges, ports, most chipset functions).
pub struct Constructor {
    pub names: &'static [&'static str],
    pub build: fn(&FunctionContext) -> Result<SharedFunction, PciError>,
}

impl PciKind for Constructor {
    fn names(&self) -> &'static [&'static str] {
        self.names
    }
    fn build(&self, ctx: &FunctionContext) -> Result<SharedFunction, PciError> {
        (self.build)(ctx)
    }
}

/// Share a built model with the host.
pub fn shared<T: super::PciFunction + 'static>(f: T) -> SharedFunction {
    Arc::new(Mutex::new(f))
}

/// The registry the host builds functions with: the kind of a planned function.
pub type KindOf = fn(&PciFunctionPlan) -> &'static dyn PciKind;
