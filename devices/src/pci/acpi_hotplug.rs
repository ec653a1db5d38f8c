//! ACPI PCI hot-plug registers (QEMU's hw/acpi/pcihp.c) of PIIX4 PM (0xae00) and ICH9 LPC
//! (0x0cc0), at the plan's `acpi-pci-hotplug` block: per selected bus (BSEL) the slots
//! coming up (+0x00) and going down (+0x04), the eject register (+0x08), the removable slots
//! (+0x0c), the bus select (+0x10) and the acpi-index window (+0x14). Events raise GPE0
//! bit 1 through the owning PM function; an eject is handed to the VMM through the
//! lifecycle.

use crate::bus::BusDevice;
use crate::legacy::kind::BoardEntry;
use crate::lifecycle::Lifecycle;
use machine::{Plan, Range};
use std::sync::{Arc, Mutex};

/// The plan's register block.
pub static PCIHP: BoardEntry = BoardEntry {
    names: &["acpi-pci-hotplug"],
};

const UP: u64 = 0x00;
const DOWN: u64 = 0x04;
const EJECT: u64 = 0x08;
const REMOVABLE: u64 = 0x0c;
const SELECT: u64 = 0x10;
const ACPI_INDEX: u64 = 0x14;
/// GPE0 status bit of PCI hot-plug events (ACPI_PCI_HOTPLUG_STATUS).
pub const GPE_PCI_HOTPLUG: usize = 1;

/// One ACPI hot-plug bus, in BSEL order.
#[derive(Debug, Clone)]
struct HpBus {
    id: String,
    up: u32,
    down: u32,
    /// Slots whose devices may be ejected (QEMU's hotplug_enable: not the chipset's).
    removable: u32,
}

pub struct Pcihp {
    buses: Vec<HpBus>,
    select: u32,
    /// `use_acpi_hotplug_bridge`: BSEL writable, UP cleared on read.
    bridges: bool,
    /// Raises GPE0 `GPE_PCI_HOTPLUG` on the owning PM block.
    gpe: Gpe,
    lifecycle: Lifecycle,
    range: Range,
}

/// How the block raises its GPE (the chipset's PM block).
pub type Gpe = Arc<dyn Fn() + Send + Sync>;

pub type SharedPcihp = Arc<Mutex<Pcihp>>;

impl Pcihp {
    /// The block for `plan`, when the machine has one and at least one bus is ACPI's.
    pub fn for_plan(plan: &Plan, gpe: Gpe, lifecycle: Lifecycle) -> Option<Self> {
        let range = *PCIHP.find(plan)?.io.first()?;
        let buses: Vec<HpBus> = plan
            .acpi_hotplug_buses()
            .into_iter()
            .map(|id| {
                // Slots of functions the machine type creates cannot be ejected.
                let fixed = plan
                    .pci
                    .iter()
                    .filter(|f| f.bus == id && f.implicit)
                    .fold(0u32, |m, f| m | (1 << f.slot));
                HpBus {
                    id,
                    up: 0,
                    down: 0,
                    removable: !fixed,
                }
            })
            .collect();
        if buses.is_empty() {
            return None;
        }
        Some(Self {
            buses,
            select: 0,
            bridges: plan.acpi_bridge_hotplug,
            gpe,
            lifecycle,
            range,
        })
    }

    pub fn range(&self) -> Range {
        self.range
    }

    fn bus_mut(&mut self, id: &str) -> Option<&mut HpBus> {
        self.buses.iter_mut().find(|b| b.id == id)
    }

    /// acpi_pcihp_device_plug_cb for a hot-added device: slot up, GPE.
    pub fn plug(&mut self, bus: &str, slot: u8) -> bool {
        let Some(b) = self.bus_mut(bus) else {
            return false;
        };
        b.up |= 1 << slot;
        (self.gpe)();
        true
    }

    /// acpi_pcihp_device_unplug_request_cb: slot down, GPE; the guest ejects it (or not).
    pub fn unplug_request(&mut self, bus: &str, slot: u8) -> bool {
        let Some(b) = self.bus_mut(bus) else {
            return false;
        };
        b.down |= 1 << slot;
        (self.gpe)();
        true
    }

    /// acpi_pcihp_update_hotplug_bus at reset: "execute any pending removes". Returns the
    /// (bus, slot) pairs asked to go, now taken as ejected.
    pub fn take_pending_removes(&mut self) -> Vec<(String, u8)> {
        let mut out = Vec::new();
        for b in &mut self.buses {
            while b.down != 0 {
                let slot = b.down.trailing_zeros();
                b.down &= !(1 << slot);
                b.up &= !(1 << slot);
                if b.removable & (1 << slot) != 0 {
                    out.push((b.id.clone(), slot as u8));
                }
            }
        }
        out
    }

    /// Machine reset: nothing pending.
    pub fn reset(&mut self) {
        for b in &mut self.buses {
            b.up = 0;
            b.down = 0;
        }
        self.select = 0;
    }

    fn read_reg(&mut self, reg: u64) -> u32 {
        let bridges = self.bridges;
        let Some(b) = self.buses.get_mut(self.select as usize) else {
            return 0;
        };
        match reg {
            UP => {
                let v = b.up;
                if bridges {
                    b.up = 0;
                }
                v
            }
            DOWN => b.down,
            REMOVABLE => b.removable,
            SELECT => self.select,
            _ => 0,
        }
    }

    fn write_reg(&mut self, reg: u64, v: u32) {
        match reg {
            EJECT => {
                let Some(b) = self.buses.get_mut(self.select as usize) else {
                    return;
                };
                let slot = v.trailing_zeros();
                if slot > 31 {
                    return;
                }
                b.down &= !(1 << slot);
                b.up &= !(1 << slot);
                if b.removable & (1 << slot) != 0 {
                    self.lifecycle.eject(&b.id, slot as u8);
                }
            }
            SELECT => self.select = if self.bridges { v } else { 0 },
            _ => {}
        }
    }
}

impl BusDevice for Pcihp {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let reg = offset & !3;
        let v = if reg == ACPI_INDEX {
            0
        } else {
            self.read_reg(reg)
        };
        let bytes = v.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = bytes.get((offset & 3) as usize + i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let mut bytes = [0u8; 4];
        for (i, d) in data.iter().enumerate().take(4) {
            bytes[i] = *d;
        }
        self.write_reg(offset & !3, u32::from_le_bytes(bytes));
    }
}

/// A handle the PM function keeps and maps as one of its windows.
pub fn shared(p: Pcihp) -> SharedPcihp {
    Arc::new(Mutex::new(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn pcihp(buses: &[&str]) -> (Pcihp, Lifecycle, Arc<AtomicUsize>) {
        let lifecycle = Lifecycle::new().expect("lifecycle");
        let raised = Arc::new(AtomicUsize::new(0));
        let r = raised.clone();
        let p = Pcihp {
            buses: buses
                .iter()
                .map(|id| HpBus {
                    id: id.to_string(),
                    up: 0,
                    down: 0,
                    removable: !1,
                })
                .collect(),
            select: 0,
            bridges: true,
            gpe: Arc::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            }),
            lifecycle: lifecycle.clone(),
            range: Range {
                base: 0xae00,
                size: 0x18,
            },
        };
        (p, lifecycle, raised)
    }

    fn read32(p: &mut Pcihp, off: u64) -> u32 {
        let mut d = [0u8; 4];
        p.read(0, off, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn up_down_eject_per_selected_bus() {
        let (mut p, lifecycle, raised) = pcihp(&["pci.0", "br"]);
        assert!(p.plug("br", 3));
        assert_eq!(raised.load(Ordering::SeqCst), 1, "a GPE per event");
        assert_eq!(read32(&mut p, UP), 0, "bus 0 selected");
        p.write(0, SELECT, &1u32.to_le_bytes());
        assert_eq!(read32(&mut p, UP), 1 << 3);
        assert_eq!(
            read32(&mut p, UP),
            0,
            "up clears on read with bridge support"
        );
        assert!(p.unplug_request("br", 3));
        assert_eq!(read32(&mut p, DOWN), 1 << 3);
        p.write(0, EJECT, &(1u32 << 3).to_le_bytes());
        assert_eq!(read32(&mut p, DOWN), 0);
        assert_eq!(lifecycle.take_ejects(), vec![("br".to_string(), 3)]);
        // The chipset's slot 0 is not removable: an eject there does nothing.
        p.write(0, SELECT, &0u32.to_le_bytes());
        p.write(0, EJECT, &1u32.to_le_bytes());
        assert!(lifecycle.take_ejects().is_empty());
        assert_eq!(read32(&mut p, REMOVABLE), !1);
        assert!(!p.plug("nowhere", 1));
    }
}
