//! ACPI CPU hot-plug registers (QEMU's "modern" interface, hw/acpi/cpu.c) at the plan's
//! `acpi-cpu-hotplug` block (ICH9 0x0cd8, PIIX4 0xaf00): a CPU selector (+0, write), the
//! selected CPU's flags (+4: enabled, inserting, removing, eject, firmware-remove), a
//! command (+5, write) and its data (+8; +0 reads the upper half of a CPU id). One slot per
//! possible CPU (`maxcpus`), with the APIC id the topology gives it. Events raise GPE0
//! bit 2 through the owning PM function; an eject is handed to the VMM through the
//! lifecycle, which parks the vCPU.
//!
//! As in QEMU, both chipsets start in the legacy mode (hw/acpi/cpu_hotplug.c): the block
//! reads as a bitmap of present CPUs by APIC id, a plug sets its bit and raises the GPE,
//! and unplug is not supported; the guest's AML switches to the modern interface by
//! writing 0 at the block's first byte, for the life of the process.

use crate::bus::BusDevice;
use crate::legacy::kind::BoardEntry;
use crate::lifecycle::Lifecycle;
use machine::{Plan, Range};
use std::sync::{Arc, Mutex};

/// The plan's register block.
pub static CPUHP: BoardEntry = BoardEntry {
    names: &["acpi-cpu-hotplug"],
};

/// GPE0 status bit of CPU hot-plug events (ACPI_CPU_HOTPLUG_STATUS).
pub const GPE_CPU_HOTPLUG: usize = 2;

const SELECTOR: u64 = 0;
const DATA2: u64 = 0;
const FLAGS: u64 = 4;
const COMMAND: u64 = 5;
const DATA: u64 = 8;

const FLAG_ENABLED: u8 = 1;
const FLAG_INSERTING: u8 = 2;
const FLAG_REMOVING: u8 = 4;
const FLAG_EJECT: u8 = 8;
const FLAG_FW_REMOVE: u8 = 16;

const CMD_GET_NEXT_WITH_EVENT: u8 = 0;
const CMD_OST_EVENT: u8 = 1;
const CMD_OST_STATUS: u8 = 2;
const CMD_GET_CPU_ID: u8 = 3;
const CMD_MAX: u8 = 4;
/// The legacy bitmap's length (ACPI_GPE_PROC_LEN): APIC ids 0..255.
const LEGACY_LEN: u64 = 32;

#[derive(Debug, Clone, Default)]
struct Slot {
    arch_id: u64,
    present: bool,
    inserting: bool,
    removing: bool,
    fw_remove: bool,
    ost_event: u32,
    ost_status: u32,
}

/// How the block raises its GPE (the chipset's PM block).
pub type Gpe = Arc<dyn Fn() + Send + Sync>;

pub struct CpuHotplug {
    slots: Vec<Slot>,
    selector: u32,
    command: u8,
    gpe: Gpe,
    lifecycle: Lifecycle,
    range: Range,
    /// Still in QEMU's legacy CPU hot-plug mode (until the guest switches).
    legacy: bool,
}

pub type SharedCpuHotplug = Arc<Mutex<CpuHotplug>>;

impl CpuHotplug {
    /// The block for `plan`, when the machine type has one.
    pub fn for_plan(plan: &Plan, gpe: Gpe, lifecycle: Lifecycle) -> Option<Self> {
        let range = *CPUHP.find(plan)?.io.first()?;
        let slots = (0..plan.max_cpus.max(plan.cpus))
            .map(|i| Slot {
                arch_id: u64::from(plan.topology.apic_id(i)),
                present: i < plan.cpus,
                ..Default::default()
            })
            .collect();
        Some(Self {
            slots,
            selector: 0,
            command: 0,
            gpe,
            lifecycle,
            range,
            legacy: true,
        })
    }

    /// Whether the guest has not switched the block to the modern interface yet (QEMU
    /// then refuses CPU unplug).
    pub fn is_legacy(&self) -> bool {
        self.legacy
    }

    fn legacy_byte(&self, offset: u64) -> u8 {
        self.slots
            .iter()
            .filter(|s| s.present && s.arch_id / 8 == offset)
            .fold(0, |b, s| b | 1 << (s.arch_id % 8))
    }

    pub fn range(&self) -> Range {
        self.range
    }

    /// acpi_cpu_plug_cb: CPU `index` is present and inserting; GPE.
    pub fn plug(&mut self, index: u32) -> bool {
        let Some(s) = self.slots.get_mut(index as usize) else {
            return false;
        };
        s.present = true;
        // legacy_acpi_cpu_plug_cb: an APIC id beyond the bitmap switches to modern.
        if self.legacy && s.arch_id / 8 >= LEGACY_LEN {
            self.legacy = false;
        }
        if !self.legacy {
            s.inserting = true;
        }
        (self.gpe)();
        true
    }

    /// CPU `index` is present from the start (a CPU added before a reset): no event.
    pub fn set_present(&mut self, index: u32) {
        if let Some(s) = self.slots.get_mut(index as usize) {
            s.present = true;
        }
    }

    /// acpi_cpu_unplug_request_cb: CPU `index` is asked to go; GPE.
    pub fn unplug_request(&mut self, index: u32) -> bool {
        if self.legacy {
            return false;
        }
        let Some(s) = self.slots.get_mut(index as usize).filter(|s| s.present) else {
            return false;
        };
        s.removing = true;
        (self.gpe)();
        true
    }

    /// Whether CPU `index` is present.
    pub fn is_present(&self, index: u32) -> bool {
        self.slots.get(index as usize).is_some_and(|s| s.present)
    }

    /// Machine reset: a pending removal request is dropped with the guest that saw it.
    pub fn reset(&mut self) {
        self.selector = 0;
        self.command = 0;
        for s in &mut self.slots {
            s.inserting = false;
            s.removing = false;
            s.fw_remove = false;
        }
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let Some(s) = self.slots.get(self.selector as usize) else {
            return 0;
        };
        match offset {
            FLAGS => {
                let mut v = 0u8;
                if s.present {
                    v |= FLAG_ENABLED;
                }
                if s.inserting {
                    v |= FLAG_INSERTING;
                }
                if s.removing {
                    v |= FLAG_REMOVING;
                }
                if s.fw_remove {
                    v |= FLAG_FW_REMOVE;
                }
                u32::from(v)
            }
            DATA => match self.command {
                CMD_GET_NEXT_WITH_EVENT => self.selector,
                CMD_GET_CPU_ID => s.arch_id as u32,
                _ => 0,
            },
            DATA2 => match self.command {
                CMD_GET_CPU_ID => (s.arch_id >> 32) as u32,
                _ => 0,
            },
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        if offset != SELECTOR && self.selector as usize >= self.slots.len() {
            return;
        }
        let sel = self.selector as usize;
        match offset {
            SELECTOR => self.selector = value,
            FLAGS => {
                let v = value as u8;
                let s = &mut self.slots[sel];
                if v & FLAG_INSERTING != 0 {
                    s.inserting = false;
                } else if v & FLAG_REMOVING != 0 {
                    s.removing = false;
                } else if v & FLAG_EJECT != 0 {
                    // The boot CPU never goes (QEMU: cdev->cpu == first_cpu).
                    if s.present && sel != 0 {
                        s.present = false;
                        s.fw_remove = false;
                        s.removing = false;
                        self.lifecycle.eject_cpu(sel as u32);
                    }
                } else if v & FLAG_FW_REMOVE != 0 && s.present && sel != 0 {
                    s.fw_remove = true;
                }
            }
            COMMAND => {
                let cmd = value as u8;
                if cmd >= CMD_MAX {
                    return;
                }
                self.command = cmd;
                if cmd == CMD_GET_NEXT_WITH_EVENT {
                    let n = self.slots.len();
                    let start = sel;
                    let mut i = start;
                    loop {
                        let s = &self.slots[i];
                        if s.inserting || s.removing || s.fw_remove {
                            self.selector = i as u32;
                            break;
                        }
                        i = (i + 1) % n;
                        if i == start {
                            break;
                        }
                    }
                }
            }
            DATA => match self.command {
                CMD_OST_EVENT => self.slots[sel].ost_event = value,
                CMD_OST_STATUS => self.slots[sel].ost_status = value,
                _ => {}
            },
            _ => {}
        }
    }
}

impl BusDevice for CpuHotplug {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if self.legacy {
            for (i, d) in data.iter_mut().enumerate() {
                *d = self.legacy_byte(offset + i as u64);
            }
            return;
        }
        let bytes = self.read_reg(offset).to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = bytes.get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if self.legacy {
            // Byte-wide in QEMU: a 0 written at the first byte switches to modern.
            if offset == 0 && data.first() == Some(&0) {
                self.legacy = false;
            }
            return;
        }
        let mut bytes = [0u8; 4];
        for (i, d) in data.iter().enumerate().take(4) {
            bytes[i] = *d;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

/// The CPU hot-plug block of `plan`, raising GPE0 bit 2 on `pm`.
pub(crate) fn for_pm(
    plan: &Plan,
    pm: &Arc<Mutex<super::acpi_pm::AcpiPm>>,
    lifecycle: &Lifecycle,
) -> Option<SharedCpuHotplug> {
    let pm = pm.clone();
    let gpe: Gpe = Arc::new(move || {
        pm.lock()
            .unwrap_or_else(|e| e.into_inner())
            .raise_gpe(GPE_CPU_HOTPLUG)
    });
    CpuHotplug::for_plan(plan, gpe, lifecycle.clone()).map(|c| Arc::new(Mutex::new(c)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn block(cpus: u32, max: u32) -> (CpuHotplug, Lifecycle, Arc<AtomicUsize>) {
        let lifecycle = Lifecycle::new().expect("eventfd");
        let raised = Arc::new(AtomicUsize::new(0));
        let r = raised.clone();
        let slots = (0..max)
            .map(|i| Slot {
                arch_id: u64::from(i),
                present: i < cpus,
                ..Default::default()
            })
            .collect();
        let c = CpuHotplug {
            slots,
            selector: 0,
            command: 0,
            gpe: Arc::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            }),
            lifecycle: lifecycle.clone(),
            range: Range {
                base: 0xcd8,
                size: 12,
            },
            legacy: false,
        };
        (c, lifecycle, raised)
    }

    fn rd(c: &mut CpuHotplug, off: u64, len: usize) -> u32 {
        let mut b = [0u8; 4];
        c.read(0, off, &mut b[..len]);
        u32::from_le_bytes(b)
    }

    fn wr(c: &mut CpuHotplug, off: u64, v: u32, len: usize) {
        c.write(0, off, &v.to_le_bytes()[..len]);
    }

    #[test]
    fn legacy_mode_until_the_guest_switches() {
        let (mut c, _lifecycle, raised) = block(1, 12);
        c.legacy = true;
        assert!(c.plug(9));
        assert_eq!(raised.load(Ordering::SeqCst), 1);
        assert_eq!(rd(&mut c, 0, 2), 0x0201, "bitmap of APIC ids 0 and 9");
        assert!(!c.unplug_request(9), "no unplug in legacy mode");
        wr(&mut c, 1, 0, 1);
        assert!(c.is_legacy(), "only the first byte switches");
        wr(&mut c, 0, 0, 4);
        assert!(!c.is_legacy());
        wr(&mut c, SELECTOR, 9, 4);
        assert_eq!(
            rd(&mut c, FLAGS, 1),
            u32::from(FLAG_ENABLED),
            "present, no event"
        );
    }

    #[test]
    fn plug_scan_and_eject_as_the_dsdt_does() {
        let (mut c, lifecycle, raised) = block(1, 4);
        assert!(c.plug(2));
        assert_eq!(raised.load(Ordering::SeqCst), 1);
        // CSCN: selector 0, command "next CPU with event", read the selector back.
        wr(&mut c, SELECTOR, 0, 4);
        wr(&mut c, COMMAND, u32::from(CMD_GET_NEXT_WITH_EVENT), 1);
        assert_eq!(rd(&mut c, DATA, 4), 2);
        assert_eq!(
            rd(&mut c, FLAGS, 1),
            u32::from(FLAG_ENABLED | FLAG_INSERTING)
        );
        wr(&mut c, COMMAND, u32::from(CMD_GET_CPU_ID), 1);
        assert_eq!(rd(&mut c, DATA, 4), 2);
        assert_eq!(rd(&mut c, DATA2, 4), 0);
        wr(&mut c, FLAGS, u32::from(FLAG_INSERTING), 1);
        assert_eq!(rd(&mut c, FLAGS, 1), u32::from(FLAG_ENABLED));
        // Removal: request, then the guest's _EJ0.
        assert!(c.unplug_request(2));
        assert_eq!(
            rd(&mut c, FLAGS, 1),
            u32::from(FLAG_ENABLED | FLAG_REMOVING)
        );
        wr(&mut c, FLAGS, u32::from(FLAG_EJECT), 1);
        assert_eq!(rd(&mut c, FLAGS, 1), 0);
        assert_eq!(lifecycle.take_cpu_ejects(), vec![2]);
        // The boot CPU cannot be ejected; an out-of-range selector reads as nothing.
        wr(&mut c, SELECTOR, 0, 4);
        wr(&mut c, FLAGS, u32::from(FLAG_EJECT), 1);
        assert!(c.is_present(0));
        assert!(lifecycle.take_cpu_ejects().is_empty());
        wr(&mut c, SELECTOR, 99, 4);
        assert_eq!(rd(&mut c, FLAGS, 1), 0);
        assert!(!c.unplug_request(3), "an absent CPU has nothing to remove");
    }
}
