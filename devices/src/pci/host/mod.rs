//! The PCI host: every function of the machine keyed by (bus, devfn), what it is (its kind)
//! and the bus tree. Its jobs live in submodules: building it from the plan (`build`),
//! routing config cycles through bridges by their programmed bus numbers (`routing`),
//! mapping BARs and chipset windows on the I/O and MMIO buses (`mapping`) and INTx routing
//! to GSIs (`intx`).
//!
//! Lock order: host, then a function. BAR and chipset-window devices lock only their
//! function (or their own state) while they dispatch; a BAR of a function that drives its
//! own INTx pin (a bridge's SHPC registers) takes the host only after releasing the
//! function, to resample the pin, as the ECAM decoder takes it for config cycles.

mod build;
mod hotplug;
mod intx;
mod mapping;
mod routing;

use super::device::PciFunction;
use super::ecam::PciConfigMmio;
use super::interrupt::{IntxSink, MsiSink};
use super::kind::PciKind;
use super::regs::*;
use crate::bus::Bus;
use crate::lifecycle::{Lifecycle, Request};
use machine::{BusKind, Family};
use mapping::Mapped;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// A function shared between the host and the BAR windows that dispatch to it.
pub type SharedFunction = Arc<Mutex<dyn PciFunction>>;
/// The host shared by 0xcf8/0xcfc, ECAM and the VMM.
pub type SharedHost = Arc<Mutex<PciHost>>;

/// Index of a bus in plan order (0 = root) and a devfn on it.
pub type FunctionKey = (usize, u8);

use crate::lock;

struct BusNode {
    id: String,
    kind: BusKind,
    /// The bridge that provides this bus (None for the root).
    parent: Option<FunctionKey>,
}

struct FunctionEntry {
    func: SharedFunction,
    kind: &'static dyn PciKind,
    type_name: String,
    id: Option<String>,
    /// Bus index this function provides, for bridges and ports.
    provides: Option<usize>,
    mapped: Vec<Mapped>,
}

/// Public description of one function, for the VMM's ACPI and QMP code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionInfo {
    pub bus_id: String,
    pub devfn: u8,
    pub type_name: String,
    pub id: Option<String>,
    pub provides_bus: Option<String>,
}

pub struct PciHost {
    family: Family,
    buses: Vec<BusNode>,
    functions: BTreeMap<FunctionKey, FunctionEntry>,
    io: Arc<Bus>,
    mmio: Arc<Bus>,
    lifecycle: Lifecycle,
    /// Reset control register at 0xcf9 (PIIX RCR / ICH9 RST_CNT).
    rcr: u8,
    rcr_keep: u8,
    ecam: Arc<Mutex<PciConfigMmio>>,
    intx: Option<Arc<dyn IntxSink>>,
    /// Where MSI goes (kept for functions added later).
    msi: Option<Arc<dyn MsiSink>>,
    /// Level of each (function, pin) currently asserted, for wired-OR sharing of GSIs.
    intx_levels: HashMap<(FunctionKey, u8), bool>,
    /// Last level sent per GSI, so only changes reach the sink.
    gsi_out: BTreeMap<u32, bool>,
    /// Guest RAM ranges (start, end) of the plan: a memory BAR there is unreachable (KVM
    /// serves RAM first), which the guest is told through guest_errors.
    ram: Vec<(u64, u64)>,
    /// The shared host, once bound: BAR windows resample INTx through it.
    shared: Arc<OnceLock<Weak<Mutex<PciHost>>>>,
}

impl PciHost {
    /// Share the host and bind its ECAM decoder to it.
    pub fn into_shared(self) -> SharedHost {
        let shared = Arc::new(Mutex::new(self));
        Self::bind(&shared);
        shared
    }

    /// Give the ECAM decoder its back-reference to the shared host (idempotent).
    pub fn bind(shared: &SharedHost) {
        let (ecam, cell) = {
            let h = lock(shared);
            (h.ecam.clone(), h.shared.clone())
        };
        lock(&ecam).bind(Arc::downgrade(shared));
        let _ = cell.set(Arc::downgrade(shared));
    }
    /// Where functions that signal MSI/MSI-X (bridges and ports, so far) send messages.
    pub fn set_msi_sink(&mut self, sink: Arc<dyn MsiSink>) {
        for e in self.functions.values() {
            lock(&e.func).set_msi_sink(sink.clone());
        }
        self.msi = Some(sink);
    }

    /// The machine's address-space view, for the functions that remap memory.
    pub fn set_memory_view(&mut self, view: crate::chipset::memory_view::SharedView) {
        for e in self.functions.values() {
            lock(&e.func).set_memory_view(view.clone());
        }
    }

    /// Where INTx and the SCI are delivered; without a sink they are dropped.
    pub fn set_intx_sink(&mut self, sink: Arc<dyn IntxSink>) {
        for e in self.functions.values() {
            lock(&e.func).set_intx_sink(sink.clone());
        }
        self.intx = Some(sink);
    }

    /// Where functions with ISA interrupt lines (legacy IDE) deliver them: edge-triggered
    /// lines, so not the INTx sink.
    pub fn set_isa_irq_sink(&mut self, sink: Arc<dyn IntxSink>) {
        for e in self.functions.values() {
            lock(&e.func).set_isa_irq_sink(sink.clone());
        }
    }

    /// The machine runs again: functions retry requests a disk error stopped.
    pub fn restart_io(&mut self) {
        for e in self.functions.values() {
            lock(&e.func).restart_io();
        }
    }

    /// Press the power button of the function that owns the ACPI PM block; false when the
    /// machine has none.
    pub fn power_button(&self) -> bool {
        self.functions
            .values()
            .any(|e| lock(&e.func).power_button())
    }

    pub fn family(&self) -> Family {
        self.family
    }

    /// Every function, root bus first, in (bus, devfn) order.
    pub fn functions(&self) -> Vec<FunctionInfo> {
        self.functions
            .iter()
            .map(|(&(bus, devfn), e)| FunctionInfo {
                bus_id: self.buses[bus].id.clone(),
                devfn,
                type_name: e.type_name.clone(),
                id: e.id.clone(),
                provides_bus: e.provides.map(|b| self.buses[b].id.clone()),
            })
            .collect()
    }

    /// The function at `devfn` on the bus with QEMU id `bus_id`.
    pub fn function(&self, bus_id: &str, devfn: u8) -> Option<SharedFunction> {
        let bus = self.bus_index(bus_id)?;
        self.functions.get(&(bus, devfn)).map(|e| e.func.clone())
    }

    fn bus_index(&self, bus_id: &str) -> Option<usize> {
        self.buses.iter().position(|b| b.id == bus_id)
    }

    /// Bus number the guest currently decodes for `bus_id` (0 for the root, the bridge's
    /// secondary bus number otherwise; None while the bridge is unnumbered).
    pub fn bus_number(&self, bus_id: &str) -> Option<u8> {
        let i = self.bus_index(bus_id)?;
        self.bus_number_of(i)
    }

    fn bus_number_of(&self, bus: usize) -> Option<u8> {
        match self.buses.get(bus)?.parent {
            None => Some(0),
            Some(k) => {
                let sec = lock(&self.functions.get(&k)?.func)
                    .config()
                    .get_u8(SECONDARY_BUS);
                (sec != 0).then_some(sec)
            }
        }
    }

    pub(crate) fn bus_ids(&self) -> Vec<String> {
        self.buses.iter().map(|b| b.id.clone()).collect()
    }

    /// Whether the bus with QEMU id `bus_id` is PCI Express.
    pub fn bus_kind(&self, bus_id: &str) -> Option<BusKind> {
        self.bus_index(bus_id).map(|b| self.buses[b].kind)
    }

    /// Functions on bus index `bus`, in devfn order.
    pub(crate) fn functions_on(
        &self,
        bus: usize,
    ) -> Vec<(u8, SharedFunction, Option<usize>, &'static dyn PciKind)> {
        self.functions
            .range((bus, 0)..=(bus, 0xff))
            .map(|(&(_, devfn), e)| (devfn, e.func.clone(), e.provides, e.kind))
            .collect()
    }

    /// The kind of the function at `key`.
    pub(crate) fn kind_at(&self, key: FunctionKey) -> Option<&'static dyn PciKind> {
        self.functions.get(&key).map(|e| e.kind)
    }

    /// The first function whose kind satisfies `pred`.
    pub(crate) fn function_where(
        &self,
        pred: impl Fn(&dyn PciKind) -> bool,
    ) -> Option<(FunctionKey, &'static dyn PciKind, SharedFunction)> {
        self.functions
            .iter()
            .find(|(_, e)| pred(e.kind))
            .map(|(k, e)| (*k, e.kind, e.func.clone()))
    }

    pub(crate) fn parent_of(&self, bus: usize) -> Option<FunctionKey> {
        self.buses.get(bus).and_then(|b| b.parent)
    }

    /// Machine reset: every function back to power-on state, mappings follow, RCR cleared.
    pub fn reset(&mut self) {
        for e in self.functions.values() {
            lock(&e.func).reset();
        }
        self.rcr = 0;
        for v in self.intx_levels.values_mut() {
            *v = false;
        }
        self.update_intx_lines();
        self.sync_all_windows();
    }

    // ---- reset control register (0xcf9) ----

    pub fn rcr_read(&self) -> u8 {
        self.rcr
    }

    /// PIIX rcr_write / ICH9 ich9_rst_cnt_write: RST_CPU (bit 2) resets the machine at once;
    /// otherwise only SYS_RST (and FULL_RST on ICH9) are kept.
    pub fn rcr_write(&mut self, value: u8) {
        if value & 0x04 != 0 {
            self.lifecycle.request(Request::Reset);
            return;
        }
        self.rcr = value & self.rcr_keep;
    }

    /// How log lines name function `key` (`logging::pci_name`'s form).
    fn function_name(&self, key: FunctionKey) -> String {
        let Some(e) = self.functions.get(&key) else {
            return "?".into();
        };
        let place = format!(
            "{}:{:02x}.{}",
            self.buses.get(key.0).map_or("?", |b| b.id.as_str()),
            key.1 >> 3,
            key.1 & 7
        );
        match &e.id {
            Some(id) => format!("{} id={id} ({place})", e.type_name),
            None => format!("{} ({place})", e.type_name),
        }
    }
}
