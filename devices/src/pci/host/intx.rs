//! INTx: each function's pin swizzled through the bridges to a root-bus PIRQ, the PIRQ
//! router's route registers, and the wired-OR level of every GSI sent to the sink.

use super::{lock, FunctionKey, PciHost};
use crate::pci::interrupt::{ich9_map_irq, piix_map_irq, swizzle};
use machine::Family;
use std::collections::BTreeMap;

impl PciHost {
    /// Pick up the INTx level of a function that reports it (bridges) after an access.
    pub(super) fn sample_intx(&mut self, key: FunctionKey) {
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
        let (_, kind, f) = self.function_where(|k| k.pirq_route_register(pirq).is_some())?;
        let offset = kind.pirq_route_register(pirq)?;
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

    pub(super) fn update_intx_lines(&mut self) {
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
