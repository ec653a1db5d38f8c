//! Mapping: BARs and chipset windows of every function on the I/O and MMIO buses, kept in
//! line with config space after each change.

use super::{lock, FunctionKey, PciHost, SharedFunction};
use crate::bus::{Bus, BusDevice, SharedDevice};
use crate::pci::config::{BarKind, NUM_BARS};
use crate::pci::device::{PciFunction, Space, WindowTarget};
use std::sync::{Arc, Mutex, OnceLock, Weak};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Mapped {
    key: u32,
    space: Space,
    base: u64,
    size: u64,
}

/// Dispatches a mapped BAR to its function.
struct BarWindow {
    func: SharedFunction,
    bar: usize,
    key: FunctionKey,
    host: Arc<OnceLock<Weak<Mutex<PciHost>>>>,
}

impl BusDevice for BarWindow {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        lock(&self.func).bar_read(self.bar, offset, data);
    }
    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let drives_intx = {
            let mut f = lock(&self.func);
            f.bar_write(self.bar, offset, data);
            f.intx_level().is_some()
        };
        // A register write may move the function's own INTx pin (SHPC command completion,
        // cleared events): the host resamples it, the function's lock released first.
        if drives_intx {
            if let Some(host) = self.host.get().and_then(Weak::upgrade) {
                lock(&host).sample_intx(self.key);
            }
        }
    }
}

/// Window-key offset separating chipset windows from BAR indices in `Mapped::key`.
const WINDOW_KEY_BASE: u32 = 0x100;

impl PciHost {
    pub(super) fn sync_all_windows(&mut self) {
        let keys: Vec<FunctionKey> = self.functions.keys().copied().collect();
        for k in keys {
            self.sync_windows(k);
        }
    }

    /// Bring the bus mappings of function `key` in line with its BARs and chipset windows.
    pub(super) fn sync_windows(&mut self, key: FunctionKey) {
        let Some(entry) = self.functions.get(&key) else {
            return;
        };
        let func = entry.func.clone();
        let mut desired = wanted(&*lock(&func));
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
                    key,
                    host: self.shared.clone(),
                })),
                Some(WindowTarget::Device(d)) => d,
                Some(WindowTarget::Ecam) => self.ecam.clone(),
            };
            // A guest may program overlapping ranges; like a real bus only one claims the
            // addresses, the other stays unmapped until it moves.
            if self.bus_for(m.space).insert(m.base, m.size, device).is_ok() {
                self.trace_mapping(key, &m, true);
                self.check_over_ram(key, &m);
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
            } else {
                // A chipset window (PM block, SMBus, RCRB, or APM/GPE0 at the plan's ports)
                // over another device's range; the guest can move most of them, so this is
                // its error to see.
                crate::guest_error!(
                    "{}: {} at {:#x} (size {:#x}) overlaps another device's range; left unmapped",
                    self.function_name(key),
                    match m.space {
                        Space::Io => "I/O window",
                        Space::Mmio => "MMIO window",
                    },
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

    /// A memory BAR over guest RAM is unreachable (KVM serves RAM first): tell the guest.
    fn check_over_ram(&self, key: FunctionKey, m: &Mapped) {
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

    /// Take every mapping of a removed function off the buses; the function learns its BARs
    /// decode nowhere (a virtio function drops its queue notifications).
    pub(super) fn unmap_removed(&self, mapped: &[Mapped], func: &SharedFunction) {
        for m in mapped {
            let _ = self.bus_for(m.space).remove(m.base);
        }
        lock(func).bars_mapped(&[]);
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
}

/// What function `f` decodes right now: its enabled BARs (no target: a [`BarWindow`]) and
/// its chipset windows with their targets.
fn wanted(f: &dyn PciFunction) -> Vec<(Mapped, Option<WindowTarget>)> {
    let cfg = f.config();
    let mut desired = Vec::new();
    for bar in 0..NUM_BARS {
        let (Some(def), Some(base)) = (cfg.bar(bar), cfg.bar_address(bar)) else {
            continue;
        };
        let space = if def.kind == BarKind::Io {
            Space::Io
        } else {
            Space::Mmio
        };
        let mapped = Mapped {
            key: bar as u32,
            space,
            base,
            size: def.size,
        };
        desired.push((mapped, None));
    }
    for w in f.windows().into_iter().filter(|w| w.size > 0) {
        let mapped = Mapped {
            key: WINDOW_KEY_BASE + w.key,
            space: w.space,
            base: w.base,
            size: w.size,
        };
        desired.push((mapped, Some(w.target)));
    }
    desired
}
