//! The PCI host: every function of the machine keyed by (bus, devfn), config-cycle routing
//! through bridges by their programmed bus numbers, and the mapping of BARs and chipset
//! windows on the I/O and MMIO buses.
//!
//! Lock order: host, then a function. BAR and chipset-window devices lock only their
//! function (or their own state), never the host, so vCPU threads cannot deadlock.

use super::caps::pcie::link_status_of;
use super::config::{BarKind, NUM_BARS};
use super::device::{PciFunction, Space, Window, WindowTarget};
use super::ecam::PciConfigMmio;
use super::factory;
use super::interrupt::{ich9_map_irq, piix_map_irq, swizzle, IntxSink, MsiSink};
use super::regs::*;
use super::window;
use super::PciError;
use crate::bus::{Bus, BusDevice, SharedDevice};
use crate::chipset::acpi_pm::AcpiPm;
use crate::chipset::apm::Apm;
use crate::lifecycle::{Lifecycle, Request};
use machine::{BusKind, Family, Plan};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// A function shared between the host and the BAR windows that dispatch to it.
pub type SharedFunction = Arc<Mutex<dyn PciFunction>>;
/// The host shared by 0xcf8/0xcfc, ECAM and the VMM.
pub type SharedHost = Arc<Mutex<PciHost>>;

/// Index of a bus in plan order (0 = root) and a devfn on it.
pub type FunctionKey = (usize, u8);

/// Base I/O ports of the APM control/status registers (both chipsets).
pub const APM_CNT_PORT: u64 = 0xb2;

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct BusNode {
    id: String,
    kind: BusKind,
    /// The bridge that provides this bus (None for the root).
    parent: Option<FunctionKey>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Mapped {
    key: u32,
    space: Space,
    base: u64,
    size: u64,
}

struct FunctionEntry {
    func: SharedFunction,
    type_name: String,
    id: Option<String>,
    /// Bus index this function provides, for bridges and ports.
    provides: Option<usize>,
    mapped: Vec<Mapped>,
}

/// Dispatches a mapped BAR to its function.
struct BarWindow {
    func: SharedFunction,
    bar: usize,
}

impl BusDevice for BarWindow {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        lock(&self.func).bar_read(self.bar, offset, data);
    }
    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        lock(&self.func).bar_write(self.bar, offset, data);
    }
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

/// Window-key offset separating chipset windows from BAR indices in `Mapped::key`.
const WINDOW_KEY_BASE: u32 = 0x100;

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
    acpi_pm: Option<Arc<Mutex<AcpiPm>>>,
    intx: Option<Arc<dyn IntxSink>>,
    /// Level of each (function, pin) currently asserted, for wired-OR sharing of GSIs.
    intx_levels: HashMap<(FunctionKey, u8), bool>,
    /// Last level sent per GSI, so only changes reach the sink.
    gsi_out: BTreeMap<u32, bool>,
    /// Guest RAM ranges (start, end) of the plan: a memory BAR there is unreachable (KVM
    /// serves RAM first), which the guest is told through guest_errors.
    ram: Vec<(u64, u64)>,
}

/// Whether the ACPI PCI hot-plug handler owns the buses of cold-plugged bridges and ports:
/// acpi_pcihp_device_plug_cb (hw/acpi/pcihp.c) makes itself the hot-plug handler of every
/// cold-plugged bridge's secondary bus when bridge hot-plug is on, and returns early for
/// cold-plugged devices, so a port's pcie_cap_slot_plug_cb never runs for them. On q35 that
/// is ICH9-LPC `acpi-pci-hotplug-with-bridge-support` (on since pc-q35-6.1); on pc, PIIX4_PM
/// with the same property and `acpi-root-pci-hotplug` (it must handle pci.0 to see the
/// bridges plugged there).
fn acpi_owns_bridge_buses(plan: &Plan) -> bool {
    let prop = |f: &machine::PciFunctionPlan, name: &str| {
        super::props::Props::new(&f.properties)
            .bool(name, true)
            .unwrap_or(false)
    };
    plan.pci.iter().any(|f| match f.type_name.as_str() {
        "ICH9-LPC" => prop(f, "acpi-pci-hotplug-with-bridge-support"),
        "PIIX4_PM" => {
            prop(f, "acpi-pci-hotplug-with-bridge-support") && prop(f, "acpi-root-pci-hotplug")
        }
        _ => false,
    })
}

impl PciHost {
    /// Build every function of `plan` at its reset state and map the fixed chipset ranges.
    /// Wrap it with `Arc::new(Mutex::new(host))` and hand that to
    /// [`PciConfigIo::new`](super::PciConfigIo::new), which also binds the ECAM decoder.
    pub fn from_plan(
        plan: &Plan,
        lifecycle: Lifecycle,
        io: Arc<Bus>,
        mmio: Arc<Bus>,
    ) -> Result<Self, PciError> {
        Self::from_plan_with(plan, lifecycle, io, mmio, &mut |_| None)
    }

    /// Like [`from_plan`](Self::from_plan), but `external` may supply the model of a plan
    /// function (the VMM builds virtio devices, which need backends and guest memory); it
    /// returns None for functions the host's own factory should build.
    pub fn from_plan_with(
        plan: &Plan,
        lifecycle: Lifecycle,
        io: Arc<Bus>,
        mmio: Arc<Bus>,
        external: &mut dyn FnMut(
            &machine::PciFunctionPlan,
        ) -> Option<Result<SharedFunction, PciError>>,
    ) -> Result<Self, PciError> {
        let mut host = Self::build(plan, lifecycle, io, mmio, external)?;
        host.attach_bridges(!acpi_owns_bridge_buses(plan));
        host.sync_all_windows();
        host.map_apm();
        Ok(host)
    }

    /// Give the ECAM decoder its back-reference to the shared host (idempotent).
    pub fn bind(shared: &SharedHost) {
        let ecam = lock(shared).ecam.clone();
        lock(&ecam).bind(Arc::downgrade(shared));
    }

    fn build(
        plan: &Plan,
        lifecycle: Lifecycle,
        io: Arc<Bus>,
        mmio: Arc<Bus>,
        external: &mut dyn FnMut(
            &machine::PciFunctionPlan,
        ) -> Option<Result<SharedFunction, PciError>>,
    ) -> Result<Self, PciError> {
        let root = plan
            .buses
            .iter()
            .position(|b| b.is_root)
            .ok_or(PciError::NoRootBus)?;
        // Root first, the rest in plan order.
        let mut order: Vec<usize> = vec![root];
        order.extend((0..plan.buses.len()).filter(|&i| i != root));
        let index_of: HashMap<&str, usize> = order
            .iter()
            .enumerate()
            .map(|(i, &p)| (plan.buses[p].id.as_str(), i))
            .collect();
        if index_of.len() != order.len() {
            return Err(PciError::InvalidPlan("duplicate bus id".into()));
        }

        let mut functions = BTreeMap::new();
        let mut acpi_pm = None;
        let mut key_of_plan = Vec::with_capacity(plan.pci.len());
        for f in &plan.pci {
            let bus = *index_of
                .get(f.bus.as_str())
                .ok_or_else(|| PciError::UnknownBus(f.bus.clone()))?;
            if f.slot > 31 || f.function > 7 {
                return Err(PciError::InvalidPlan(format!(
                    "{} at {}.{}",
                    f.type_name, f.slot, f.function
                )));
            }
            let key = (bus, f.devfn());
            if functions.contains_key(&key) {
                return Err(PciError::DuplicateFunction {
                    bus: f.bus.clone(),
                    devfn: key.1,
                });
            }
            let placement = super::e1000e::BusPlacement {
                express: plan.buses[order[bus]].kind == BusKind::Pcie,
                root: plan.buses[order[bus]].is_root,
            };
            let built = match external(f) {
                Some(func) => factory::Built {
                    func: func?,
                    acpi_pm: None,
                    header_only: false,
                },
                None => factory::build(f, plan, &lifecycle, placement)?,
            };
            if built.acpi_pm.is_some() {
                acpi_pm = built.acpi_pm;
            }
            let provides = match &f.provides_bus {
                Some(id) => Some(
                    *index_of
                        .get(id.as_str())
                        .ok_or_else(|| PciError::UnknownBus(id.clone()))?,
                ),
                None => None,
            };
            if provides.is_some() && !lock(&built.func).config().is_bridge() {
                return Err(PciError::InvalidPlan(format!(
                    "{} provides a bus but is no bridge",
                    f.type_name
                )));
            }
            functions.insert(
                key,
                FunctionEntry {
                    func: built.func,
                    type_name: f.type_name.clone(),
                    id: f.id.clone(),
                    provides,
                    mapped: Vec::new(),
                },
            );
            key_of_plan.push(key);
        }

        let mut buses = Vec::with_capacity(order.len());
        for (i, &p) in order.iter().enumerate() {
            let b = &plan.buses[p];
            let parent = if i == 0 {
                None
            } else {
                // The bridge that names this bus as provided, or the plan's parent index.
                let by_provides = functions
                    .iter()
                    .find(|(_, e)| e.provides == Some(i))
                    .map(|(k, _)| *k);
                let by_parent = b
                    .parent_function
                    .and_then(|pf| key_of_plan.get(pf).copied());
                Some(by_provides.or(by_parent).ok_or_else(|| {
                    PciError::InvalidPlan(format!("bus {} has no parent bridge", b.id))
                })?)
            };
            buses.push(BusNode {
                id: b.id.clone(),
                kind: b.kind,
                parent,
            });
        }
        for (i, b) in buses.iter().enumerate().skip(1) {
            if let Some(k) = b.parent {
                if let Some(e) = functions.get_mut(&k) {
                    if e.provides.is_none() {
                        e.provides = Some(i);
                    }
                }
            }
        }
        // The bus tree must be acyclic: every bus reaches the root.
        for start in 0..buses.len() {
            let mut at = start;
            let mut steps = 0;
            while let Some((pb, _)) = buses[at].parent {
                at = pb;
                steps += 1;
                if steps > buses.len() {
                    return Err(PciError::InvalidPlan("bus hierarchy has a cycle".into()));
                }
            }
        }

        let rcr_keep = match plan.family {
            Family::Q35 => 0x0a,
            _ => 0x02,
        };
        Ok(Self {
            family: plan.family,
            buses,
            functions,
            io,
            mmio,
            lifecycle,
            rcr: 0,
            rcr_keep,
            ecam: Arc::new(Mutex::new(PciConfigMmio::new(Weak::new()))),
            acpi_pm,
            intx: None,
            intx_levels: HashMap::new(),
            gsi_out: BTreeMap::new(),
            ram: vec![
                (0, plan.memory.ram_below_4g),
                (1 << 32, (1u64 << 32) + plan.memory.ram_above_4g),
            ],
        })
    }

    /// Tell every bridge what is behind it (QEMU's cold-plug callbacks): which devices of
    /// the secondary bus exist, the link status of the express function at device 0 and
    /// whether slots latch cold-plugged devices (`plug_latched`, see [`PciBridge::attach`]).
    fn attach_bridges(&mut self, plug_latched: bool) {
        let bridges: Vec<(FunctionKey, usize)> = self
            .functions
            .iter()
            .filter_map(|(k, e)| e.provides.map(|c| (*k, c)))
            .collect();
        for (key, child) in bridges {
            let mut populated = 0u32;
            let mut partner = None;
            for (&(_, devfn), e) in self.functions.range((child, 0)..=(child, 0xff)) {
                if devfn & 7 == 0 {
                    populated |= 1 << (devfn >> 3);
                }
                if devfn == 0 {
                    partner = link_status_of(lock(&e.func).config());
                }
            }
            if let Some(e) = self.functions.get(&key) {
                if let Some(b) = lock(&e.func).as_bridge_mut() {
                    b.attach(populated, partner, plug_latched);
                }
            }
        }
    }

    /// Where functions that signal MSI/MSI-X (bridges and ports, so far) send messages.
    pub fn set_msi_sink(&mut self, sink: Arc<dyn MsiSink>) {
        for e in self.functions.values() {
            lock(&e.func).set_msi_sink(sink.clone());
        }
    }

    /// Pick up the INTx level of a function that reports it (bridges) after an access.
    fn sample_intx(&mut self, key: FunctionKey) {
        let Some(e) = self.functions.get(&key) else {
            return;
        };
        let (level, pin) = {
            let f = lock(&e.func);
            (f.intx_level(), f.config().interrupt_pin())
        };
        let Some(level) = level else { return };
        if !(1..=4).contains(&pin) {
            return;
        }
        let old = self.intx_levels.insert((key, pin), level);
        if old.unwrap_or(false) != level {
            self.update_intx_lines();
        }
    }

    fn map_apm(&mut self) {
        if let Some(pm) = &self.acpi_pm {
            let (enable, disable) = match self.family {
                Family::Q35 => (0x02, 0x03),
                _ => (0xf1, 0xf0),
            };
            let apm: SharedDevice = Arc::new(Mutex::new(Apm::new(pm.clone(), enable, disable)));
            // Nothing else decodes 0xb2 (the plan's `apm` entry is this device); a clash is
            // a machine-definition bug that leaves ACPI enable/disable unhandled.
            if let Err(e) = self.io.insert(APM_CNT_PORT, 2, apm) {
                log::error!("APM control port {APM_CNT_PORT:#x}: {e}");
            }
        }
    }

    pub fn family(&self) -> Family {
        self.family
    }

    /// The ACPI PM register block (ICH9 LPC or PIIX4 PM), for the power button and SCI.
    pub fn acpi_pm(&self) -> Option<Arc<Mutex<AcpiPm>>> {
        self.acpi_pm.clone()
    }

    /// Where INTx and the SCI are delivered; without a sink they are dropped.
    pub fn set_intx_sink(&mut self, sink: Arc<dyn IntxSink>) {
        if let Some(pm) = &self.acpi_pm {
            lock(pm).set_sci_sink(sink.clone(), 9);
        }
        self.intx = Some(sink);
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
    ) -> Vec<(u8, SharedFunction, Option<usize>, String)> {
        self.functions
            .range((bus, 0)..=(bus, 0xff))
            .map(|(&(_, devfn), e)| (devfn, e.func.clone(), e.provides, e.type_name.clone()))
            .collect()
    }

    pub(crate) fn parent_of(&self, bus: usize) -> Option<FunctionKey> {
        self.buses.get(bus).and_then(|b| b.parent)
    }

    pub(crate) fn function_by_type(
        &self,
        type_name: &str,
    ) -> Option<(FunctionKey, SharedFunction)> {
        self.functions
            .iter()
            .find(|(_, e)| e.type_name == type_name)
            .map(|(k, e)| (*k, e.func.clone()))
    }

    // ---- config cycles ----

    /// Bus index that decodes guest bus number `number`, walking bridges from the root by
    /// their programmed secondary/subordinate numbers (QEMU's pci_find_bus_nr).
    fn find_bus(&self, number: u8) -> Option<usize> {
        if number == 0 {
            return Some(0);
        }
        let mut at = 0usize;
        // Each step descends one level; the tree has at most buses.len() levels.
        for _ in 0..self.buses.len() {
            let mut next = None;
            for (&(bus, _), e) in self.functions.range((at, 0)..=(at, 0xff)) {
                debug_assert_eq!(bus, at);
                let Some(child) = e.provides else { continue };
                let (sec, sub) = {
                    let f = lock(&e.func);
                    (
                        f.config().get_u8(SECONDARY_BUS),
                        f.config().get_u8(SUBORDINATE_BUS),
                    )
                };
                if sec == 0 {
                    continue;
                }
                if sec == number {
                    return Some(child);
                }
                if sec < number && number <= sub {
                    next = Some(child);
                    break;
                }
            }
            at = next?;
        }
        None
    }

    fn resolve(&self, bus: u8, devfn: u8) -> Option<FunctionKey> {
        let b = self.find_bus(bus)?;
        let key = (b, devfn);
        self.functions.contains_key(&key).then_some(key)
    }

    /// A config read as the guest issues it; absent functions read all-ones.
    pub fn config_read(&self, bus: u8, devfn: u8, offset: u16, data: &mut [u8]) {
        match self
            .resolve(bus, devfn)
            .and_then(|k| self.functions.get(&k))
        {
            Some(e) => {
                lock(&e.func).config_read(offset, data);
                crate::trace_event!(
                    pci_cfg_read,
                    "{} {bus:02x}:{:02x}.{:x} @{offset:#x} -> {:#x}",
                    e.type_name,
                    devfn >> 3,
                    devfn & 7,
                    le_value(data)
                );
            }
            None => data.fill(0xff),
        }
    }

    /// A config write as the guest issues it; mappings are updated afterwards.
    pub fn config_write(&mut self, bus: u8, devfn: u8, offset: u16, data: &[u8]) {
        if let Some(key) = self.resolve(bus, devfn) {
            if let Some(e) = self.functions.get(&key) {
                crate::trace_event!(
                    pci_cfg_write,
                    "{} {bus:02x}:{:02x}.{:x} @{offset:#x} <- {:#x}",
                    e.type_name,
                    devfn >> 3,
                    devfn & 7,
                    le_value(data)
                );
            }
            self.write_function(key, offset, data);
        }
    }

    /// Config write to a known function (also used by the firmware step).
    pub(crate) fn write_function(&mut self, key: FunctionKey, offset: u16, data: &[u8]) {
        let Some(e) = self.functions.get(&key) else {
            return;
        };
        let (was_bus_reset, is_bus_reset) = {
            let mut f = lock(&e.func);
            let bridge = f.config().is_bridge();
            let before = f.config().get_u16(BRIDGE_CONTROL);
            f.config_write(offset, data);
            let after = f.config().get_u16(BRIDGE_CONTROL);
            (
                bridge && before & BRIDGE_CTL_BUS_RESET != 0,
                bridge && after & BRIDGE_CTL_BUS_RESET != 0,
            )
        };
        let child = self.functions.get(&key).and_then(|e| e.provides);
        // A 0->1 edge of Secondary Bus Reset resets everything below the bridge.
        if !was_bus_reset && is_bus_reset {
            if let Some(child) = child {
                self.reset_below(child);
            }
        }
        self.sync_windows(key);
        // Command, windows or bridge control changed: what the bridge forwards changed.
        if let Some(child) = child {
            let o = usize::from(offset);
            let end = o + data.len();
            let hits = |start: usize, len: usize| o < start + len && end > start;
            if hits(COMMAND, 2)
                || hits(IO_BASE, 2)
                || hits(MEMORY_BASE, IO_LIMIT_UPPER16 + 2 - MEMORY_BASE)
                || hits(BRIDGE_CONTROL, 2)
            {
                self.sync_subtree(child);
            }
        }
        self.sample_intx(key);
    }

    /// Re-evaluate the mappings of everything on bus `bus` and below.
    fn sync_subtree(&mut self, bus: usize) {
        let entries: Vec<(FunctionKey, Option<usize>)> = self
            .functions
            .range((bus, 0)..=(bus, 0xff))
            .map(|(k, e)| (*k, e.provides))
            .collect();
        for (k, child) in entries {
            self.sync_windows(k);
            if let Some(c) = child {
                self.sync_subtree(c);
            }
        }
    }

    /// Whether every bridge between bus `bus` and the root forwards `[base, base+size)`
    /// (and has the command bit for that space set): QEMU's nested bridge aliases.
    fn forwarded(&self, bus: usize, space: Space, base: u64, size: u64) -> bool {
        let mut at = bus;
        for _ in 0..=self.buses.len() {
            let Some(parent) = self.buses.get(at).and_then(|b| b.parent) else {
                return true;
            };
            let Some(e) = self.functions.get(&parent) else {
                return false;
            };
            if !window::forwards(lock(&e.func).config(), space, base, size) {
                return false;
            }
            at = parent.0;
        }
        false
    }

    pub(crate) fn read_function(&self, key: FunctionKey, offset: usize, len: usize) -> u32 {
        let mut buf = [0u8; 4];
        let len = len.min(4);
        if let Some(e) = self.functions.get(&key) {
            lock(&e.func).config().read(offset, &mut buf[..len]);
        }
        u32::from_le_bytes(buf)
    }

    fn reset_below(&mut self, bus: usize) {
        let keys: Vec<FunctionKey> = self
            .functions
            .range((bus, 0)..=(bus, 0xff))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            let child = self.functions.get(&k).and_then(|e| {
                lock(&e.func).reset();
                e.provides
            });
            if let Some(c) = child {
                self.reset_below(c);
            }
            self.sync_windows(k);
            self.sample_intx(k);
        }
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
        if let Some(pm) = &self.acpi_pm {
            lock(pm).reset();
        }
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

    // ---- mapping ----

    fn sync_all_windows(&mut self) {
        let keys: Vec<FunctionKey> = self.functions.keys().copied().collect();
        for k in keys {
            self.sync_windows(k);
        }
    }

    /// Bring the bus mappings of function `key` in line with its BARs and chipset windows.
    fn sync_windows(&mut self, key: FunctionKey) {
        let Some(entry) = self.functions.get(&key) else {
            return;
        };
        let func = entry.func.clone();
        let mut desired: Vec<(Mapped, Option<WindowTarget>)> = Vec::new();
        {
            let f = lock(&func);
            let cfg = f.config();
            for bar in 0..NUM_BARS {
                let (Some(def), Some(base)) = (cfg.bar(bar), cfg.bar_address(bar)) else {
                    continue;
                };
                let space = if def.kind == BarKind::Io {
                    Space::Io
                } else {
                    Space::Mmio
                };
                desired.push((
                    Mapped {
                        key: bar as u32,
                        space,
                        base,
                        size: def.size,
                    },
                    None,
                ));
            }
            for Window {
                key: wk,
                space,
                base,
                size,
                target,
            } in f.windows()
            {
                if size == 0 {
                    continue;
                }
                desired.push((
                    Mapped {
                        key: WINDOW_KEY_BASE + wk,
                        space,
                        base,
                        size,
                    },
                    Some(target),
                ));
            }
        }
        // A BAR behind bridges decodes only where every bridge above forwards it.
        desired.retain(|(m, target)| {
            target.is_some() || self.forwarded(key.0, m.space, m.base, m.size)
        });
        let old = match self.functions.get_mut(&key) {
            Some(e) => std::mem::take(&mut e.mapped),
            None => return,
        };
        let mut kept = Vec::new();
        for m in old {
            if desired.iter().any(|(d, _)| *d == m) {
                kept.push(m);
            } else {
                self.trace_mapping(key, &m, false);
                let _ = self.bus_for(m.space).remove(m.base);
            }
        }
        for (m, target) in desired {
            if kept.contains(&m) {
                continue;
            }
            let device: SharedDevice = match target {
                None => Arc::new(Mutex::new(BarWindow {
                    func: func.clone(),
                    bar: m.key as usize,
                })),
                Some(WindowTarget::Device(d)) => d,
                Some(WindowTarget::Ecam) => self.ecam.clone(),
            };
            // A guest may program overlapping ranges; like a real bus only one claims the
            // addresses, the other stays unmapped until it moves.
            if self.bus_for(m.space).insert(m.base, m.size, device).is_ok() {
                self.trace_mapping(key, &m, true);
                let over_ram = m.space == Space::Mmio
                    && self
                        .ram
                        .iter()
                        .any(|&(s, e)| m.base < e && s < m.base.saturating_add(m.size));
                if over_ram && m.key < WINDOW_KEY_BASE {
                    crate::guest_error!(
                        "{}: BAR {} at {:#x} (size {:#x}) overlaps guest RAM; RAM answers there",
                        self.function_name(key),
                        m.key,
                        m.base,
                        m.size
                    );
                }
                kept.push(m);
            } else if m.key < WINDOW_KEY_BASE {
                crate::guest_error!(
                    "{}: BAR {} at {:#x} (size {:#x}) overlaps another device's range; \
                     left unmapped",
                    self.function_name(key),
                    m.key,
                    m.base,
                    m.size
                );
            }
        }
        let bars: Vec<(usize, u64)> = kept
            .iter()
            .filter(|m| m.key < WINDOW_KEY_BASE)
            .map(|m| (m.key as usize, m.base))
            .collect();
        lock(&func).bars_mapped(&bars);
        if let Some(e) = self.functions.get_mut(&key) {
            e.mapped = kept;
        }
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

    /// pci_update_mappings_add / _del for a BAR of function `key`.
    fn trace_mapping(&self, key: FunctionKey, m: &Mapped, add: bool) {
        let event = match add {
            true => "pci_update_mappings_add",
            false => "pci_update_mappings_del",
        };
        if m.key >= WINDOW_KEY_BASE || !crate::logging::trace_enabled(event) {
            return;
        }
        let name = self
            .functions
            .get(&key)
            .map_or("?", |e| e.type_name.as_str());
        let bus = self.bus_number_of(key.0).unwrap_or(0);
        let (dev, func) = (key.1 >> 3, key.1 & 7);
        if add {
            crate::trace_event!(
                pci_update_mappings_add,
                "{name} {bus:02x}:{dev:02x}.{func:x} {},{:#x}+{:#x}",
                m.key,
                m.base,
                m.size
            );
        } else {
            crate::trace_event!(
                pci_update_mappings_del,
                "{name} {bus:02x}:{dev:02x}.{func:x} {},{:#x}+{:#x}",
                m.key,
                m.base,
                m.size
            );
        }
    }

    fn bus_for(&self, space: Space) -> &Bus {
        match space {
            Space::Io => &self.io,
            Space::Mmio => &self.mmio,
        }
    }

    /// Ranges currently mapped for the function at `devfn` on `bus_id`: (space, base, size).
    pub fn mapped_ranges(&self, bus_id: &str, devfn: u8) -> Vec<(Space, u64, u64)> {
        self.bus_index(bus_id)
            .and_then(|b| self.functions.get(&(b, devfn)))
            .map(|e| e.mapped.iter().map(|m| (m.space, m.base, m.size)).collect())
            .unwrap_or_default()
    }

    // ---- INTx ----

    /// The PIRQ index (0..=7) and the root-bus slot/pin a function's pin (1..=4) lands on.
    pub(crate) fn pirq_of(&self, key: FunctionKey, pin: u8) -> Option<u8> {
        if !(1..=4).contains(&pin) {
            return None;
        }
        let (mut bus, mut devfn) = key;
        let mut pin0 = pin - 1;
        for _ in 0..=self.buses.len() {
            match self.buses.get(bus)?.parent {
                None => break,
                Some((pb, pdevfn)) => {
                    pin0 = swizzle(devfn >> 3, pin0);
                    bus = pb;
                    devfn = pdevfn;
                }
            }
        }
        let slot = devfn >> 3;
        Some(match self.family {
            Family::Q35 => ich9_map_irq(slot, pin0),
            _ => piix_map_irq(slot, pin0),
        })
    }

    /// Route register value (IRQ number, or >= 0x80 for disabled) of PIRQ `pirq`.
    pub(crate) fn pirq_route(&self, pirq: u8) -> Option<u8> {
        let (type_name, offset) = match (self.family, pirq) {
            (Family::Q35, 0..=3) => ("ICH9-LPC", 0x60 + usize::from(pirq)),
            (Family::Q35, 4..=7) => ("ICH9-LPC", 0x68 + usize::from(pirq - 4)),
            (Family::I440fx, 0..=3) => ("PIIX3", 0x60 + usize::from(pirq)),
            _ => return None,
        };
        let (_, f) = self.function_by_type(type_name)?;
        let v = lock(&f).config().get_u8(offset);
        Some(v)
    }

    /// GSIs an asserted PIRQ drives: the legacy route (if enabled) and, on q35, the IOAPIC
    /// pin 16 + PIRQ that QEMU's ich9_lpc_set_irq also drives.
    fn pirq_gsis(&self, pirq: u8) -> Vec<u32> {
        let mut v = Vec::new();
        if let Some(r) = self.pirq_route(pirq) {
            if r & 0x80 == 0 {
                v.push(u32::from(r & 0x0f));
            }
        }
        if self.family == Family::Q35 {
            v.push(16 + u32::from(pirq));
        }
        v
    }

    /// Assert or deassert INTx `pin` (1..=4) of the function at `devfn` on `bus_id`.
    /// Lines are wired-OR: a GSI stays high while any function drives it.
    pub fn set_intx(&mut self, bus_id: &str, devfn: u8, pin: u8, level: bool) {
        let Some(bus) = self.bus_index(bus_id) else {
            return;
        };
        let key = (bus, devfn);
        if !self.functions.contains_key(&key) || self.pirq_of(key, pin).is_none() {
            return;
        }
        self.intx_levels.insert((key, pin), level);
        self.update_intx_lines();
    }

    fn update_intx_lines(&mut self) {
        let Some(sink) = self.intx.clone() else {
            return;
        };
        let mut gsi_level: BTreeMap<u32, bool> = BTreeMap::new();
        // Every GSI any PIRQ can reach gets a definite level, so deasserts propagate.
        for pirq in 0..8u8 {
            for g in self.pirq_gsis(pirq) {
                gsi_level.entry(g).or_insert(false);
            }
        }
        for (&(key, pin), &level) in &self.intx_levels {
            if !level {
                continue;
            }
            if let Some(pirq) = self.pirq_of(key, pin) {
                for g in self.pirq_gsis(pirq) {
                    gsi_level.insert(g, true);
                }
            }
        }
        for (g, l) in gsi_level {
            if self.gsi_out.get(&g) != Some(&l) {
                self.gsi_out.insert(g, l);
                sink.set_level(g, l);
            }
        }
    }
}

/// A config access's bytes as a little-endian value (for traces).
fn le_value(data: &[u8]) -> u64 {
    data.iter()
        .take(8)
        .rev()
        .fold(0, |v, &b| (v << 8) | u64::from(b))
}
