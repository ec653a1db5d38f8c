//! The firmware step: what SeaBIOS's pciinit would program before handing over to the OS,
//! for a VMM that boots kernels directly. Without it every register stays at reset, which
//! is what a qtest-style guest expects.
//!
//! * Bridges are numbered depth-first in devfn order (primary/secondary/subordinate).
//! * q35: PCIEXBAR = ECAM base | enable, length from the plan's ECAM size.
//! * ACPI PM block and SMBus at the plan's `firmware-io` blocks (SeaBIOS's 0x600, 0x700),
//!   ICH9 RCBA at the plan's `rcrb` region (SeaBIOS's 0xfed1c000).
//! * PIRQ A-D (and E-H on q35) route to the plan's `pirq_irqs` (SeaBIOS's 10, 10, 11, 11).
//! * BARs, largest alignment first: I/O upwards in the plan's PCI I/O window (0xc000..); 32-bit memory as one block placed
//!   at the top of the 32-bit hole (below the plan's IOAPIC, above ECAM), ascending inside it like
//!   SeaBIOS; 64-bit prefetchable BARs bottom-up from the 64-bit hole. Bridge windows are
//!   sized from what lies behind them (I/O 4 KiB, memory 1 MiB granules; an empty bridge
//!   still gets 2 MiB of memory window for hotplug).
//! * Command: I/O, memory and SERR decode on every function, bus master on bridges.
//! * Interrupt line = the IRQ of the PIRQ each pin reaches (QEMU's swizzle and slot map,
//!   which SeaBIOS's pci_slot_get_irq mirrors); a kind may override it after routing
//!   (PIIX4 PM's line is the SCI, the plan's `sci_irq`).
//!
//! The chipset steps (ECAM, PM and SMBus bases, RCBA, PIRQ routes, IDE decode) are each
//! kind's [`firmware_init`](super::kind::PciKind::firmware_init), run in (bus, devfn) order.

use super::config::{BarKind, ROM_BAR};
use super::host::{FunctionKey, PciHost};
use super::regs::*;
use super::{PciError, PciKind};
use machine::{FirmwareRole, Plan, Range};

/// The memory-map region of the IOAPIC's registers.
pub const IOAPIC_REGION: &str = "ioapic";
const MIB: u64 = 1 << 20;
const BRIDGE_IO_ALIGN: u64 = 0x1000;
const BRIDGE_MEM_ALIGN: u64 = MIB;
const BRIDGE_HOTPLUG_MEM: u64 = 2 * MIB;

/// A bus and the numbers the firmware step gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusNumbering {
    pub bus_id: String,
    pub number: u8,
    pub subordinate: u8,
}

/// How one function's interrupt pin is routed (for `_PRT` and the MP/PIR tables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntxRoute {
    pub bus_id: String,
    pub devfn: u8,
    /// 1 = INTA# .. 4 = INTD#.
    pub pin: u8,
    /// 0 = PIRQA .. 7 = PIRQH.
    pub pirq: u8,
    /// ISA IRQ the PIRQ is routed to (what the interrupt-line register holds).
    pub irq: u8,
}

/// What the firmware step did, for the VMM's ACPI tables (`_CRS`, `MCFG`, FADT, `_PRT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareLayout {
    pub buses: Vec<BusNumbering>,
    /// Highest bus number in use (MCFG / `_CRS` bus range end).
    pub last_bus: u8,
    /// I/O range BARs were allocated from.
    pub io_window: Range,
    /// 32-bit memory range BARs were allocated from.
    pub mem32_window: Range,
    /// 64-bit prefetchable range, when the plan has a 64-bit hole.
    pub mem64_window: Option<Range>,
    /// Enabled ECAM window (q35).
    pub ecam: Option<Range>,
    pub pm_base: Option<u16>,
    /// GPE0 block (base, length).
    pub gpe0: Option<(u16, u16)>,
    pub smbus_base: Option<u16>,
    /// The SCI's GSI, from the plan.
    pub sci_irq: Option<u32>,
    /// IRQ of each PIRQ (A-D on pc, A-H on q35).
    pub pirq_irqs: Vec<u8>,
    pub intx: Vec<IntxRoute>,
}

/// What the chipset part of the firmware step programmed, filled by the kinds'
/// [`firmware_init`](super::kind::PciKind::firmware_init).
#[derive(Debug, Default)]
pub struct ChipsetSetup {
    /// Enabled ECAM window (q35).
    pub ecam: Option<Range>,
    pub pm_base: Option<u16>,
    /// GPE0 block (base, length).
    pub gpe0: Option<(u16, u16)>,
    pub smbus: Option<u16>,
    /// IRQ of each PIRQ the router was given.
    pub pirqs: Vec<u8>,
}

/// One function as a kind's firmware hook sees it: config writes go through the host (so
/// the windows they open are mapped), with the plan and what the step has set so far.
pub struct FirmwareFunction<'a> {
    host: &'a mut PciHost,
    key: FunctionKey,
    pub plan: &'a Plan,
    pub setup: &'a mut ChipsetSetup,
}

impl FirmwareFunction<'_> {
    /// Write `len` bytes of `value` at config offset `offset`.
    pub fn write(&mut self, offset: usize, value: u32, len: usize) {
        self.host.wr(self.key, offset, value, len);
    }

    /// The I/O base where the plan has the firmware put the block with `role`.
    pub fn io_block(&self, role: FirmwareRole) -> Result<u16, PciError> {
        firmware_block(self.plan, role).map(|r| r.base as u16)
    }

    /// The memory-map region `name` of the plan (where the firmware maps a register block).
    pub fn mmio_region(&self, name: &str) -> Result<Range, PciError> {
        self.plan
            .memory
            .region(name)
            .map(|r| r.range)
            .ok_or_else(|| PciError::Firmware(format!("the plan has no '{name}' region")))
    }

    /// Route the router's PIRQ lines 0..`lines` to the plan's IRQs (`pirq_irqs`, repeated
    /// past its end) through `kind`'s route registers, and note them for the ACPI tables.
    pub fn route_pirqs(&mut self, kind: &dyn PciKind, lines: u8) -> Result<(), PciError> {
        let plan = self.plan;
        if plan.pirq_irqs.is_empty() {
            return Err(PciError::Firmware(
                "the plan routes no PIRQ lines (pirq-irqs)".to_string(),
            ));
        }
        for pirq in 0..lines {
            let irq = plan.pirq_irqs[usize::from(pirq) % plan.pirq_irqs.len()];
            if let Some(reg) = kind.pirq_route_register(pirq) {
                self.write(reg, irq.into(), 1);
            }
            self.setup.pirqs.push(irq);
        }
        Ok(())
    }
}

/// Where the plan has the firmware map the block with `role` (the board's `firmware-io`).
fn firmware_block(plan: &Plan, role: FirmwareRole) -> Result<Range, PciError> {
    plan.firmware_block(role).ok_or_else(|| {
        let what = match role {
            FirmwareRole::PmBlock => "ACPI PM block",
            FirmwareRole::Smbus => "SMBus block",
            FirmwareRole::PciIo => "PCI I/O window",
        };
        PciError::Firmware(format!("the plan places no {what}"))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Io = 0,
    Mem = 1,
    Pref = 2,
}

enum Target {
    Bar(FunctionKey, usize),
    Window {
        bridge: FunctionKey,
        children: Vec<Req>,
    },
}

struct Req {
    size: u64,
    align: u64,
    target: Target,
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    v.checked_add(a - 1).map(|x| x & !(a - 1))
}

/// Size and alignment of `reqs` packed largest alignment first.
fn packed(reqs: &mut [Req]) -> (u64, u64) {
    reqs.sort_by(|a, b| b.align.cmp(&a.align).then(b.size.cmp(&a.size)));
    let mut end = 0u64;
    let mut align = 1u64;
    for r in reqs.iter() {
        end = align_up(end, r.align)
            .unwrap_or(u64::MAX)
            .saturating_add(r.size);
        align = align.max(r.align);
    }
    (end, align)
}

impl PciHost {
    fn wr(&mut self, key: FunctionKey, offset: usize, value: u32, len: usize) {
        let bytes = value.to_le_bytes();
        self.write_function(key, offset as u16, &bytes[..len.min(4)]);
    }

    /// Program the machine like SeaBIOS would and describe the result; see the module docs.
    pub fn firmware_init(&mut self, plan: &Plan) -> Result<FirmwareLayout, PciError> {
        let mut next = 0u8;
        self.number_bus(0, 0, &mut next)?;
        let mut setup = ChipsetSetup::default();
        self.each_kind(plan, &mut setup, |kind, fw| kind.firmware_init(fw))?;
        let (io_window, mem32_window, mem64_window) = self.assign_resources(plan, setup.ecam)?;
        self.enable_decode();
        let intx = self.route_interrupts();
        self.each_kind(plan, &mut setup, |kind, fw| {
            kind.firmware_finish(fw);
            Ok(())
        })?;
        let buses = self.numbered_buses(next);
        Ok(FirmwareLayout {
            buses,
            last_bus: next,
            io_window,
            mem32_window,
            mem64_window,
            ecam: setup.ecam,
            pm_base: setup.pm_base,
            gpe0: setup.gpe0,
            smbus_base: setup.smbus,
            sci_irq: plan.sci_irq,
            pirq_irqs: setup.pirqs,
            intx,
        })
    }

    /// Every numbered bus with its number and subordinate number.
    fn numbered_buses(&self, last: u8) -> Vec<BusNumbering> {
        self.bus_ids()
            .into_iter()
            .enumerate()
            .filter_map(|(i, id)| {
                let number = if i == 0 {
                    Some(0)
                } else {
                    self.bus_number(&id)
                }?;
                let subordinate = match self.parent_of(i) {
                    None => last,
                    Some(k) => self.read_function(k, SUBORDINATE_BUS, 1) as u8,
                };
                Some(BusNumbering {
                    bus_id: id,
                    number,
                    subordinate,
                })
            })
            .collect()
    }

    /// Depth-first numbering; returns the subordinate number of `bus`.
    fn number_bus(&mut self, bus: usize, number: u8, next: &mut u8) -> Result<u8, PciError> {
        for (devfn, _, provides, _) in self.functions_on(bus) {
            let Some(child) = provides else { continue };
            *next = next
                .checked_add(1)
                .ok_or_else(|| PciError::Firmware("more than 255 bridged buses".into()))?;
            let sec = *next;
            let key = (bus, devfn);
            self.wr(
                key,
                PRIMARY_BUS,
                u32::from(number) | (u32::from(sec) << 8) | (0xff << 16),
                3,
            );
            let sub = self.number_bus(child, sec, next)?;
            self.wr(key, SUBORDINATE_BUS, sub.into(), 1);
        }
        Ok(*next)
    }

    fn collect(&self, bus: usize, pref_high: bool) -> [Vec<Req>; 3] {
        let mut out: [Vec<Req>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for (devfn, func, provides, kind) in self.functions_on(bus) {
            let key = (bus, devfn);
            let bars: Vec<_> = {
                let f = func.lock().unwrap_or_else(|e| e.into_inner());
                (0..=ROM_BAR)
                    .filter_map(|i| f.config().bar(i).map(|d| (i, d)))
                    .collect()
            };
            for (i, def) in bars {
                if kind.fixed_bar(i) {
                    continue;
                }
                let class = match def.kind {
                    BarKind::Io => Class::Io,
                    BarKind::Mem64 if def.prefetchable && pref_high => Class::Pref,
                    _ => Class::Mem,
                };
                out[class as usize].push(Req {
                    size: def.size,
                    align: def.size,
                    target: Target::Bar(key, i),
                });
            }
            let Some(child) = provides else { continue };
            let mut sub = self.collect(child, pref_high);
            for class in [Class::Io, Class::Mem, Class::Pref] {
                let mut children = std::mem::take(&mut sub[class as usize]);
                let (size, align) = packed(&mut children);
                let (size, align) = match class {
                    Class::Io if size == 0 => continue,
                    Class::Io => (
                        align_up(size, BRIDGE_IO_ALIGN).unwrap_or(u64::MAX),
                        BRIDGE_IO_ALIGN,
                    ),
                    Class::Mem if size == 0 => (BRIDGE_HOTPLUG_MEM, BRIDGE_MEM_ALIGN),
                    Class::Pref if size == 0 => continue,
                    _ => (
                        align_up(size, BRIDGE_MEM_ALIGN).unwrap_or(u64::MAX),
                        align.max(BRIDGE_MEM_ALIGN),
                    ),
                };
                out[class as usize].push(Req {
                    size,
                    align,
                    target: Target::Window {
                        bridge: key,
                        children,
                    },
                });
            }
        }
        out
    }

    fn program(&mut self, class: Class, reqs: &mut [Req], base: u64) {
        let mut addr = base;
        for r in reqs.iter_mut() {
            addr = align_up(addr, r.align).unwrap_or(addr);
            match &mut r.target {
                Target::Bar(key, bar) => {
                    let key = *key;
                    let bar = *bar;
                    let Some(off) = self.function_config_bar_offset(key, bar) else {
                        continue;
                    };
                    let is64 = self.bar_kind(key, bar) == Some(BarKind::Mem64);
                    self.wr(key, off, addr as u32, 4);
                    if is64 {
                        self.wr(key, off + 4, (addr >> 32) as u32, 4);
                    }
                }
                Target::Window { bridge, children } => {
                    let bridge = *bridge;
                    let end = addr + r.size - 1;
                    match class {
                        Class::Io => {
                            self.wr(
                                bridge,
                                IO_BASE,
                                (((addr >> 8) & 0xf0) | (end & 0xf000)) as u32,
                                2,
                            );
                        }
                        Class::Mem => {
                            let v = ((addr >> 16) & 0xfff0) as u32
                                | (((end >> 16) & 0xfff0) << 16) as u32;
                            self.wr(bridge, MEMORY_BASE, v, 4);
                        }
                        Class::Pref => {
                            let v = ((addr >> 16) & 0xfff0) as u32
                                | (((end >> 16) & 0xfff0) << 16) as u32;
                            self.wr(bridge, PREF_MEMORY_BASE, v, 4);
                            self.wr(bridge, PREF_BASE_UPPER32, (addr >> 32) as u32, 4);
                            self.wr(bridge, PREF_LIMIT_UPPER32, (end >> 32) as u32, 4);
                        }
                    }
                    let mut children = std::mem::take(children);
                    let _ = packed(&mut children);
                    self.program(class, &mut children, addr);
                }
            }
            addr = addr.saturating_add(r.size);
        }
    }

    /// `read` applied to the config space of the function at `key`.
    fn with_config<T>(
        &self,
        key: FunctionKey,
        read: impl FnOnce(&super::config::PciConfig) -> Option<T>,
    ) -> Option<T> {
        let (_, f, _, _) = self
            .functions_on(key.0)
            .into_iter()
            .find(|(d, _, _, _)| *d == key.1)?;
        let f = crate::lock(&f);
        read(f.config())
    }

    fn function_config_bar_offset(&self, key: FunctionKey, bar: usize) -> Option<usize> {
        self.with_config(key, |c| c.bar_offset(bar))
    }

    fn bar_kind(&self, key: FunctionKey, bar: usize) -> Option<BarKind> {
        self.with_config(key, |c| c.bar(bar).map(|d| d.kind))
    }

    /// Close every bridge window (base above limit) before assigning the used ones.
    fn close_bridge_windows(&mut self, bus: usize) {
        for (devfn, _, provides, _) in self.functions_on(bus) {
            let Some(child) = provides else { continue };
            let key = (bus, devfn);
            self.wr(key, IO_BASE, 0x00f0, 2);
            self.wr(key, MEMORY_BASE, 0x0000_fff0, 4);
            self.wr(key, PREF_MEMORY_BASE, 0x0000_fff0, 4);
            self.wr(key, PREF_BASE_UPPER32, 0, 4);
            self.wr(key, PREF_LIMIT_UPPER32, 0, 4);
            self.close_bridge_windows(child);
        }
    }

    fn assign_resources(
        &mut self,
        plan: &Plan,
        ecam: Option<Range>,
    ) -> Result<(Range, Range, Option<Range>), PciError> {
        let hole32 = plan.memory.pci_hole32;
        let mut lo = hole32.base;
        // BARs stay below the IOAPIC where the plan puts it inside the hole.
        let ioapic = plan.memory.region(IOAPIC_REGION).map(|r| r.range.base);
        let hi = hole32.end().min(ioapic.unwrap_or(u64::MAX));
        // ECAM sits in the hole on q35; allocate above it like SeaBIOS.
        if let Some(e) = ecam.or(plan.memory.ecam) {
            if e.base < hi && e.end() > lo {
                lo = lo.max(e.end());
            }
        }
        if hi <= lo {
            return Err(PciError::Firmware("empty 32-bit PCI hole".into()));
        }
        let hole64 = (plan.memory.pci_hole64.size > 0).then_some(plan.memory.pci_hole64);
        self.close_bridge_windows(0);
        let mut reqs = self.collect(0, hole64.is_some());

        let io_window = firmware_block(plan, FirmwareRole::PciIo)?;
        let (io_size, _) = packed(&mut reqs[Class::Io as usize]);
        if io_size > io_window.size {
            return Err(PciError::Firmware(format!(
                "I/O BARs need {io_size:#x} bytes"
            )));
        }
        let (mem_size, mem_align) = packed(&mut reqs[Class::Mem as usize]);
        let mem_base = (hi.checked_sub(mem_size).map(|b| b & !(mem_align - 1)))
            .filter(|&b| b >= lo)
            .ok_or_else(|| PciError::Firmware(format!("32-bit BARs need {mem_size:#x} bytes")))?;
        let (pref_size, pref_align) = packed(&mut reqs[Class::Pref as usize]);
        let pref_base = match hole64 {
            Some(h) => {
                let b = align_up(h.base, pref_align).unwrap_or(u64::MAX);
                if b.saturating_add(pref_size) > h.end() {
                    return Err(PciError::Firmware(format!(
                        "64-bit BARs need {pref_size:#x} bytes"
                    )));
                }
                b
            }
            None => 0,
        };
        let [mut io, mut mem, mut pref] = reqs;
        self.program(Class::Io, &mut io, io_window.base);
        self.program(Class::Mem, &mut mem, mem_base);
        self.program(Class::Pref, &mut pref, pref_base);
        Ok((
            io_window,
            Range {
                base: lo,
                size: hi - lo,
            },
            hole64,
        ))
    }

    /// Run one of the kinds' firmware hooks on every function, in (bus, devfn) order.
    fn each_kind(
        &mut self,
        plan: &Plan,
        setup: &mut ChipsetSetup,
        mut hook: impl FnMut(&dyn PciKind, &mut FirmwareFunction) -> Result<(), PciError>,
    ) -> Result<(), PciError> {
        for (key, _) in self.all_keys() {
            if let Some(kind) = self.kind_at(key) {
                hook(
                    kind,
                    &mut FirmwareFunction {
                        host: self,
                        key,
                        plan,
                        setup,
                    },
                )?;
            }
        }
        Ok(())
    }

    fn all_keys(&self) -> Vec<(FunctionKey, bool)> {
        let mut keys = Vec::new();
        for bus in 0..self.bus_ids().len() {
            for (devfn, f, _, _) in self.functions_on(bus) {
                let bridge = f
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .config()
                    .is_bridge();
                keys.push(((bus, devfn), bridge));
            }
        }
        keys
    }

    fn enable_decode(&mut self) {
        for (key, bridge) in self.all_keys() {
            let cmd = self.read_function(key, COMMAND, 2) as u16;
            let mut new = cmd | COMMAND_IO | COMMAND_MEMORY | COMMAND_SERR;
            if bridge {
                new |= COMMAND_MASTER;
                let ctl = self.read_function(key, BRIDGE_CONTROL, 2) as u16;
                self.wr(key, BRIDGE_CONTROL, (ctl | BRIDGE_CTL_SERR).into(), 2);
            }
            self.wr(key, COMMAND, new.into(), 2);
        }
    }

    fn route_interrupts(&mut self) -> Vec<IntxRoute> {
        let ids = self.bus_ids();
        let mut routes = Vec::new();
        for (key, _) in self.all_keys() {
            let pin = self.read_function(key, INTERRUPT_PIN, 1) as u8;
            let Some(pirq) = self.pirq_of(key, pin) else {
                continue;
            };
            let Some(route) = self.pirq_route(pirq) else {
                continue;
            };
            if route & 0x80 != 0 {
                continue;
            }
            let irq = route & 0x0f;
            self.wr(key, INTERRUPT_LINE, irq.into(), 1);
            routes.push(IntxRoute {
                bus_id: ids[key.0].clone(),
                devfn: key.1,
                pin,
                pirq,
                irq,
            });
        }
        routes
    }
}
