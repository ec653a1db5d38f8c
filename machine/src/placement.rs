//! PCI placement as QEMU does it: buses with their occupancy, automatic addressing
//! (`do_pci_register_device`: first slot from the bus's minimum whose function 0 is free and
//! not reserved), explicit `addr`, the multifunction rules, the hot-plug rules, the
//! standard-hot-plug-controller slot rule and the PCIe (chassis, slot) uniqueness rule.

use crate::error::PlanError;
use crate::plan::{Advisory, BusKind, BusPlan, PciFunctionPlan};
use std::collections::HashSet;

const NONE: u16 = u16::MAX;

/// One bus while planning.
#[derive(Debug, Clone)]
pub(crate) struct BusState {
    pub plan: BusPlan,
    /// First slot automatic addressing tries (QEMU's `devfn_min`).
    pub auto_slot_min: u8,
    /// Bitmask of reserved slots (`slot_reserved_mask`).
    pub reserved_mask: u32,
    /// Index into the function list per devfn.
    occupant: Box<[u16; 256]>,
}

impl BusState {
    pub fn new(plan: BusPlan) -> BusState {
        BusState {
            plan,
            auto_slot_min: 0,
            reserved_mask: 0,
            occupant: Box::new([NONE; 256]),
        }
    }

    /// Index of the function at `devfn`.
    pub fn at(&self, devfn: u8) -> Option<usize> {
        match self.occupant[usize::from(devfn)] {
            NONE => None,
            i => Some(usize::from(i)),
        }
    }

    fn reserved(&self, devfn: u8) -> bool {
        self.reserved_mask & (1 << (devfn >> 3)) != 0
    }
}

/// Buses, functions and the realize-time registries of a machine being planned.
#[derive(Debug, Clone, Default)]
pub(crate) struct Topology {
    pub buses: Vec<BusState>,
    pub functions: Vec<PciFunctionPlan>,
    /// (chassis, slot) pairs of PCIe slots (root and downstream ports).
    pub chassis_slots: Vec<(u8, u16)>,
    /// Every device id in use (PCI and ISA).
    pub ids: HashSet<String>,
    /// Next automatic bus number per bus class (`pci.N`, `pcie.N`).
    pub next_auto_pci: u32,
    pub next_auto_pcie: u32,
    pub advisories: Vec<Advisory>,
}

impl Topology {
    /// The bus named `id` (first created wins, like QEMU's depth-first search).
    pub fn find_bus(&self, id: &str) -> Option<usize> {
        self.buses.iter().position(|b| b.plan.id == id)
    }

    /// QEMU's automatic name for a bridge bus without an id (`pci.N` / `pcie.N`, one counter
    /// per bus class); a name already taken by another bus is skipped.
    pub fn auto_bus_name(&mut self, kind: BusKind) -> String {
        loop {
            let (prefix, counter) = match kind {
                BusKind::Pci => ("pci", &mut self.next_auto_pci),
                BusKind::Pcie => ("pcie", &mut self.next_auto_pcie),
            };
            let name = format!("{prefix}.{counter}");
            *counter += 1;
            if self.find_bus(&name).is_none() {
                return name;
            }
        }
    }

    /// Choose the devfn for a new function named `name` (its QOM type) on `bus`:
    /// `requested` is the explicit devfn, `None` for automatic addressing.
    pub fn choose_devfn(
        &self,
        bus: usize,
        name: &str,
        requested: Option<u8>,
        hotplugged: bool,
    ) -> Result<u8, PlanError> {
        let b = &self.buses[bus];
        let devfn = match requested {
            None => {
                let mut found = None;
                let mut slot = b.auto_slot_min;
                while slot < 32 {
                    let devfn = slot << 3;
                    if b.at(devfn).is_none() && !b.reserved(devfn) {
                        found = Some(devfn);
                        break;
                    }
                    slot += 1;
                }
                found.ok_or_else(|| PlanError::NoSlotAvailable(name.to_string()))?
            }
            Some(devfn) => {
                if b.reserved(devfn) {
                    return Err(PlanError::SlotReserved {
                        slot: devfn >> 3,
                        function: devfn & 7,
                        device: name.to_string(),
                    });
                }
                if let Some(i) = b.at(devfn) {
                    let other = &self.functions[i];
                    return Err(PlanError::SlotInUse {
                        slot: devfn >> 3,
                        function: devfn & 7,
                        device: name.to_string(),
                        used_by: other.type_name.clone(),
                        used_id: other.id.clone().unwrap_or_else(|| "(null)".to_string()),
                    });
                }
                devfn
            }
        };
        if hotplugged && devfn & 7 != 0 {
            if let Some(i) = b.at(devfn & !7) {
                return Err(PlanError::HotplugFunctionBehindFunction0 {
                    slot: devfn >> 3,
                    used_by: self.functions[i].type_name.clone(),
                    device: name.to_string(),
                });
            }
        }
        Ok(devfn)
    }

    /// QEMU's `pci_init_multifunction` checks for a function at `devfn` with the given
    /// multifunction property.
    pub fn check_multifunction(
        &self,
        bus: usize,
        devfn: u8,
        multifunction: bool,
    ) -> Result<(), PlanError> {
        let b = &self.buses[bus];
        let slot = devfn >> 3;
        let func = devfn & 7;
        if func != 0 {
            if let Some(f0) = b.at(devfn & !7) {
                if !self.functions[f0].multifunction {
                    return Err(PlanError::SingleFunctionSlot {
                        slot,
                        function: func,
                    });
                }
            }
            return Ok(());
        }
        if multifunction {
            return Ok(());
        }
        for f in 1..8u8 {
            if b.at((slot << 3) | f).is_some() {
                return Err(PlanError::IndicatesSingleFunction { slot, function: f });
            }
        }
        Ok(())
    }

    /// The standard hot-plug controller's plug check (slots 1..=31 only).
    pub fn check_shpc(&self, bus: usize, devfn: u8) -> Result<(), PlanError> {
        if self.buses[bus].plan.shpc && devfn >> 3 == 0 {
            return Err(PlanError::ShpcSlot {
                slot: 0,
                min: 1,
                max: 31,
            });
        }
        Ok(())
    }

    /// Register a PCIe slot's (chassis, slot) (`pcie_chassis_add_slot`).
    pub fn add_chassis_slot(&mut self, chassis: u8, slot: u16) -> Result<(), PlanError> {
        if self.chassis_slots.contains(&(chassis, slot)) {
            return Err(PlanError::ChassisSlotInUse);
        }
        self.chassis_slots.push((chassis, slot));
        Ok(())
    }

    /// Put `f` at its bus/devfn; returns its index.
    pub fn insert(&mut self, bus: usize, f: PciFunctionPlan) -> usize {
        let idx = self.functions.len();
        let devfn = f.devfn();
        self.buses[bus].occupant[usize::from(devfn)] = idx as u16;
        if let Some(id) = &f.id {
            self.ids.insert(id.clone());
        }
        self.functions.push(f);
        idx
    }

    /// Add a bus (root or secondary); returns its index.
    pub fn add_bus(&mut self, bus: BusState) -> usize {
        self.buses.push(bus);
        self.buses.len() - 1
    }
}
