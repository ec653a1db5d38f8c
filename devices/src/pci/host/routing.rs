//! Config cycles: the guest's bus numbers resolved through the bridges' programmed
//! secondary/subordinate numbers, writes with their side effects (secondary bus reset,
//! forwarding changes) and the check whether every bridge above forwards a range.

use super::{lock, FunctionKey, PciHost};
use crate::pci::device::Space;
use crate::pci::regs::*;
use crate::pci::window;

impl PciHost {
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
    pub(super) fn forwarded(&self, bus: usize, space: Space, base: u64, size: u64) -> bool {
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
}

/// A config access's bytes as a little-endian value (for traces).
fn le_value(data: &[u8]) -> u64 {
    data.iter()
        .take(8)
        .rev()
        .fold(0, |v, &b| (v << 8) | u64::from(b))
}
