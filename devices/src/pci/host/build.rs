//! Building the host from the plan: the bus tree (root first, then plan order), one model
//! per planned function from its kind (or from the VMM, for functions it builds itself),
//! and QEMU's cold-plug callbacks on the bridges.

use super::{lock, BusNode, FunctionEntry, FunctionKey, PciHost, SharedFunction};
use crate::bus::Bus;
use crate::lifecycle::Lifecycle;
use crate::pci::caps::pcie::link_status_of;
use crate::pci::device::BusPlacement;
use crate::pci::ecam::PciConfigMmio;
use crate::pci::kind::{FunctionContext, KindOf};
use crate::pci::PciError;
use machine::{BusKind, Family, PciFunctionPlan, Plan};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// Models the VMM supplies for some plan functions (virtio devices, which need backends and
/// guest memory); None for functions the function's kind should build.
pub type ExternalModels<'a> =
    dyn FnMut(&PciFunctionPlan) -> Option<Result<SharedFunction, PciError>> + 'a;

/// The plan's buses, root first then in plan order, and each bus id's index in that order.
struct BusOrder<'p> {
    order: Vec<usize>,
    index_of: HashMap<&'p str, usize>,
}

impl<'p> BusOrder<'p> {
    fn new(plan: &'p Plan) -> Result<Self, PciError> {
        let root = plan
            .buses
            .iter()
            .position(|b| b.is_root)
            .ok_or(PciError::NoRootBus)?;
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
        Ok(Self { order, index_of })
    }

    fn index(&self, id: &str) -> Result<usize, PciError> {
        self.index_of
            .get(id)
            .copied()
            .ok_or_else(|| PciError::UnknownBus(id.to_string()))
    }
}

/// Everything the functions of a plan are built with.
struct FunctionBuilder<'a, 'e> {
    plan: &'a Plan,
    lifecycle: &'a Lifecycle,
    kind_of: KindOf,
    external: &'a mut ExternalModels<'e>,
}

impl FunctionBuilder<'_, '_> {
    /// The entry of planned function `f` on bus index `bus`.
    fn entry(
        &mut self,
        f: &PciFunctionPlan,
        buses: &BusOrder,
        bus: usize,
    ) -> Result<FunctionEntry, PciError> {
        let bus_plan = &self.plan.buses[buses.order[bus]];
        let kind = (self.kind_of)(f);
        let func = match (self.external)(f) {
            Some(func) => func?,
            None => kind.build(&FunctionContext {
                function: f,
                plan: self.plan,
                lifecycle: self.lifecycle,
                placement: BusPlacement {
                    express: bus_plan.kind == BusKind::Pcie,
                    root: bus_plan.is_root,
                },
                kind_of: self.kind_of,
            })?,
        };
        let provides = match &f.provides_bus {
            Some(id) => Some(buses.index(id)?),
            None => None,
        };
        if provides.is_some() && !lock(&func).config().is_bridge() {
            return Err(PciError::InvalidPlan(format!(
                "{} provides a bus but is no bridge",
                f.type_name
            )));
        }
        Ok(FunctionEntry {
            func,
            kind,
            type_name: f.type_name.clone(),
            id: f.id.clone(),
            provides,
            mapped: Vec::new(),
        })
    }

    /// Every function of the plan keyed by (bus index, devfn), and each plan function's key.
    fn all(
        &mut self,
        buses: &BusOrder,
    ) -> Result<(BTreeMap<FunctionKey, FunctionEntry>, Vec<FunctionKey>), PciError> {
        let mut functions = BTreeMap::new();
        let mut key_of_plan = Vec::with_capacity(self.plan.pci.len());
        for f in &self.plan.pci {
            let bus = buses.index(&f.bus)?;
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
            functions.insert(key, self.entry(f, buses, bus)?);
            key_of_plan.push(key);
        }
        Ok((functions, key_of_plan))
    }
}

/// The bus nodes in `buses` order, each with the bridge that provides it; bridges the plan
/// links only by `parent_function` learn which bus they provide.
fn link_buses(
    plan: &Plan,
    buses: &BusOrder,
    functions: &mut BTreeMap<FunctionKey, FunctionEntry>,
    key_of_plan: &[FunctionKey],
) -> Result<Vec<BusNode>, PciError> {
    let mut nodes = Vec::with_capacity(buses.order.len());
    for (i, &p) in buses.order.iter().enumerate() {
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
        nodes.push(BusNode {
            id: b.id.clone(),
            kind: b.kind,
            parent,
        });
    }
    for (i, b) in nodes.iter().enumerate().skip(1) {
        if let Some(e) = b.parent.and_then(|k| functions.get_mut(&k)) {
            if e.provides.is_none() {
                e.provides = Some(i);
            }
        }
    }
    // The bus tree must be acyclic: every bus reaches the root.
    for start in 0..nodes.len() {
        let mut at = start;
        let mut steps = 0;
        while let Some((pb, _)) = nodes[at].parent {
            at = pb;
            steps += 1;
            if steps > nodes.len() {
                return Err(PciError::InvalidPlan("bus hierarchy has a cycle".into()));
            }
        }
    }
    Ok(nodes)
}

impl PciHost {
    /// Build every function of `plan` at its reset state (each by its kind, `kind_of` being
    /// the registry) and map the fixed chipset ranges. Share it with
    /// [`into_shared`](Self::into_shared), which binds the ECAM decoder.
    pub fn from_plan(
        plan: &Plan,
        lifecycle: Lifecycle,
        io: Arc<Bus>,
        mmio: Arc<Bus>,
        kind_of: KindOf,
    ) -> Result<Self, PciError> {
        Self::from_plan_with(plan, lifecycle, io, mmio, kind_of, &mut |_| None)
    }

    /// Like [`from_plan`](Self::from_plan), but `external` may supply the model of a plan
    /// function (the VMM builds virtio devices, which need backends and guest memory); it
    /// returns None for functions their kind should build.
    pub fn from_plan_with(
        plan: &Plan,
        lifecycle: Lifecycle,
        io: Arc<Bus>,
        mmio: Arc<Bus>,
        kind_of: KindOf,
        external: &mut ExternalModels,
    ) -> Result<Self, PciError> {
        let buses = BusOrder::new(plan)?;
        let (mut functions, key_of_plan) = FunctionBuilder {
            plan,
            lifecycle: &lifecycle,
            kind_of,
            external,
        }
        .all(&buses)?;
        let buses = link_buses(plan, &buses, &mut functions, &key_of_plan)?;
        let rcr_keep = match plan.family {
            Family::Q35 => 0x0a,
            _ => 0x02,
        };
        let mut host = Self {
            family: plan.family,
            buses,
            functions,
            io,
            mmio,
            lifecycle,
            rcr: 0,
            rcr_keep,
            ecam: Arc::new(Mutex::new(PciConfigMmio::new(Weak::new()))),
            intx: None,
            msi: None,
            intx_levels: HashMap::new(),
            gsi_out: BTreeMap::new(),
            ram: vec![
                (0, plan.memory.ram_below_4g),
                (1 << 32, (1u64 << 32) + plan.memory.ram_above_4g),
            ],
            shared: Arc::new(OnceLock::new()),
        };
        // acpi_pcihp_device_plug_cb (hw/acpi/pcihp.c) makes itself the hot-plug handler of
        // every cold-plugged bridge's secondary bus and returns early for cold-plugged
        // devices, so a port's pcie_cap_slot_plug_cb never runs for them.
        host.attach_bridges(!plan.acpi_bridge_hotplug);
        host.sync_all_windows();
        Ok(host)
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
                    b.set_eject_target(self.lifecycle.clone(), self.buses[child].id.clone());
                }
            }
        }
    }
}
