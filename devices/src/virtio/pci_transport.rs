//! The virtio-pci function (QEMU's VirtIOPCIProxy): config space with the capability chain,
//! the legacy I/O BAR, the MSI-X BAR and the modern memory BAR with common, ISR, device and
//! notify regions, plus the PCI-config access window. Queue notifications signal the queue's
//! EventFd without the device lock; the worker (see [`super::worker`]) processes the queue.
//! With an [`IoEventRegistrar`], each live queue's notify address is a KVM ioeventfd on that
//! EventFd (QEMU's virtio_pci_ioeventfd_assign), so a doorbell does not exit to the VMM;
//! registrations follow DRIVER_OK, queue enable, reset and the BAR mappings.

use super::caps::{self, CapLayout, ExpressFlags, PCI_CFG_DATA};
use super::core::Core;
use super::interrupt::{IntxLine, VirtioInterrupt};
use super::notify::{IoEvent, IoEventRegistrar, IoEventSpace, Kicks};
use super::regs::{self, common, features, legacy, modern, status, NO_VECTOR, QUEUE_MAX};
use super::VirtioError;
use crate::pci::caps::pcie;
use crate::pci::config::{BarDef, PciConfig, NUM_BARS, ROM_BAR};
use crate::pci::device::PciFunction;
use crate::pci::interrupt::MsiSink;
use crate::pci::regs::{COMMAND, COMMAND_MASTER};
use machine::PciFunctionPlan;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use virtio_queue::QueueT;
use vm_memory::GuestAddress;

/// Where a queue notification lands, for registering KVM ioeventfds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyAddr {
    /// A memory write of any length at this BAR-relative offset of the modern BAR.
    Modern { bar: usize, offset: u64 },
    /// A 2-byte I/O write of the queue index at this offset of the legacy BAR.
    Legacy {
        bar: usize,
        offset: u64,
        datamatch: u16,
    },
}

/// One queue's notification EventFd and the addresses that should signal it.
#[derive(Debug)]
pub struct NotifyInfo {
    pub queue: u16,
    pub fd: RawFd,
    pub addrs: Vec<NotifyAddr>,
}

pub(crate) use crate::lock;

/// What the plan says about the function, reduced to what the transport needs.
pub(crate) struct TransportParams {
    pub legacy: bool,
    pub modern: bool,
    /// QEMU's `ioeventfd` property: off keeps every notification on the exit path.
    pub ioeventfd: bool,
    pub express: Option<ExpressFlags>,
    pub vectors: u16,
    pub rom: Option<u64>,
}

pub struct VirtioPciFunction {
    config: PciConfig,
    core: Arc<Mutex<Core>>,
    /// The queue EventFds, signalled without the core lock (the worker holds it across I/O).
    kicks: Arc<Kicks>,
    ioevents: Option<Arc<dyn IoEventRegistrar>>,
    ioeventfd_allowed: bool,
    /// Base of each BAR while the host decodes it.
    bar_bases: [Option<u64>; NUM_BARS],
    /// ioeventfds registered now, with their queue.
    registered: Vec<(IoEvent, usize)>,
    irq: Arc<VirtioInterrupt>,
    legacy: bool,
    modern: bool,
    caps: CapLayout,
    device_type: u16,
    queue_sel: u16,
    dfselect: u32,
    gfselect: u32,
    guest_features: [u32; 2],
}

/// pow2ceil of the legacy header plus device config (QEMU sizes it with MSI-X present).
fn legacy_bar_size(msix: bool, config_len: usize) -> u64 {
    let header = if msix {
        legacy::HEADER_MSIX
    } else {
        legacy::HEADER
    };
    (header + config_len as u64).next_power_of_two()
}

fn read_le(data: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    let n = data.len().min(8);
    v[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(v)
}

fn write_le(data: &mut [u8], v: u64) {
    let b = v.to_le_bytes();
    for (i, d) in data.iter_mut().enumerate() {
        *d = b.get(i).copied().unwrap_or(0);
    }
}

impl VirtioPciFunction {
    pub(crate) fn new(
        plan: &PciFunctionPlan,
        core: Core,
        irq_queues: usize,
        p: TransportParams,
    ) -> Result<(Self, Arc<Mutex<Core>>), VirtioError> {
        let device_type = core.device.device_type();
        let id = &plan.identity;
        // The plan resolved the identity (virtio_pci_device_plugged); check it agrees.
        let ok = if p.legacy {
            id.vendor_id == 0x1af4 && id.revision == 0 && id.subsystem_id == Some(device_type)
        } else {
            id.vendor_id == 0x1af4 && id.device_id == 0x1040 + device_type && id.revision == 1
        };
        if !ok || !(p.legacy || p.modern) {
            return Err(VirtioError::Identity(plan.type_name.clone()));
        }
        let mut config = PciConfig::new(id, plan.multifunction, p.express.is_some());
        let (caps, msix) = caps::build(&mut config, p.modern, p.express, p.vectors)?;
        if p.legacy {
            let size = legacy_bar_size(msix.is_some(), core.device.config_len());
            config.register_bar(regs::LEGACY_BAR, BarDef::io(size))?;
        }
        if let Some(m) = &msix {
            config.register_bar(regs::MSIX_BAR, BarDef::mem32(m.layout().bar_size))?;
        }
        if p.modern {
            config.register_bar(modern::BAR, BarDef::mem64(modern::BAR_SIZE).prefetchable())?;
        }
        if let Some(size) = p.rom {
            config.register_bar(ROM_BAR, BarDef::rom(size))?;
        }
        config.set_interrupt_pin(1);
        config.commit_reset_state();
        let irq = core.irq.clone();
        let kicks = core.kicks.clone();
        {
            let mut s = irq.lock();
            s.msix = msix;
            s.queue_vectors = vec![NO_VECTOR; irq_queues];
        }
        let core = Arc::new(Mutex::new(core));
        Ok((
            Self {
                config,
                core: core.clone(),
                kicks,
                ioevents: None,
                ioeventfd_allowed: p.ioeventfd,
                bar_bases: [None; NUM_BARS],
                registered: Vec::new(),
                irq,
                legacy: p.legacy,
                modern: p.modern,
                caps,
                device_type,
                queue_sel: 0,
                dfselect: 0,
                gfselect: 0,
                guest_features: [0; 2],
            },
            core,
        ))
    }

    pub fn device_type(&self) -> u16 {
        self.device_type
    }

    pub fn caps(&self) -> CapLayout {
        self.caps
    }

    pub fn interrupt(&self) -> Arc<VirtioInterrupt> {
        self.irq.clone()
    }

    /// The INTx line used while MSI-X is off.
    pub fn set_intx_line(&self, line: Arc<dyn IntxLine>) {
        self.irq.set_intx_line(line);
    }

    /// Queue EventFds and the BAR offsets whose writes should signal them: the VMM may
    /// register KVM ioeventfds there (at the BAR's current base); without them, writes
    /// reach `bar_write`, which signals the same EventFds.
    pub fn notify_info(&self) -> Vec<NotifyInfo> {
        self.kicks
            .fds()
            .iter()
            .enumerate()
            .map(|(q, fd)| NotifyInfo {
                queue: q as u16,
                fd: fd.as_raw_fd(),
                addrs: self.notify_addrs(q as u16),
            })
            .collect()
    }

    /// Where queue `q`'s notifications land: the modern notify region (queue_notify_off =
    /// the queue index, times the multiplier) and the legacy QUEUE_NOTIFY register.
    fn notify_addrs(&self, q: u16) -> Vec<NotifyAddr> {
        let mut addrs = Vec::new();
        if self.modern {
            addrs.push(NotifyAddr::Modern {
                bar: modern::BAR,
                offset: modern::NOTIFY + u64::from(q) * u64::from(modern::NOTIFY_MULTIPLIER),
            });
        }
        if self.legacy {
            addrs.push(NotifyAddr::Legacy {
                bar: regs::LEGACY_BAR,
                offset: legacy::QUEUE_NOTIFY,
                datamatch: q,
            });
        }
        addrs
    }

    /// The notification counters of this device.
    pub fn kick_stats(&self) -> super::notify::KickStats {
        self.kicks.stats()
    }

    /// Register queue notify addresses as ioeventfds through `registrar` from now on.
    /// (Ignored with `ioeventfd=off`.)
    pub fn set_ioevent_registrar(&mut self, registrar: Arc<dyn IoEventRegistrar>) {
        self.unregister_all();
        if !self.ioeventfd_allowed {
            return;
        }
        self.ioevents = Some(registrar);
        self.sync_ioevents();
    }

    /// The ioeventfds queue notifications should have now: each ready queue's notify
    /// addresses in the BARs the host decodes, once the driver set DRIVER_OK (QEMU starts
    /// ioeventfds at DRIVER_OK); none after a reset or a device error.
    fn wanted_ioevents(&self) -> Vec<(IoEvent, usize)> {
        if self.ioevents.is_none() {
            return Vec::new();
        }
        let ready: Vec<bool> = {
            let mut core = self.core();
            if core.status & status::DRIVER_OK == 0 || core.is_broken() {
                return Vec::new();
            }
            core.ready_queues()
        };
        let mut wanted = Vec::new();
        for (q, _) in ready.iter().enumerate().filter(|(_, r)| **r) {
            for addr in self.notify_addrs(q as u16) {
                let event = match addr {
                    NotifyAddr::Modern { bar, offset } => {
                        self.bar_bases[bar].map(|base| IoEvent {
                            space: IoEventSpace::Mmio,
                            addr: base + offset,
                            // Any length, no datamatch: QEMU's modern notify eventfd.
                            len: 0,
                            datamatch: None,
                        })
                    }
                    NotifyAddr::Legacy {
                        bar,
                        offset,
                        datamatch,
                    } => self.bar_bases[bar].map(|base| IoEvent {
                        space: IoEventSpace::Pio,
                        addr: base + offset,
                        len: 2,
                        datamatch: Some(u64::from(datamatch)),
                    }),
                };
                if let Some(e) = event {
                    wanted.push((e, q));
                }
            }
        }
        wanted
    }

    /// Bring the registered ioeventfds in line with the device state and the BAR mappings.
    fn sync_ioevents(&mut self) {
        let Some(registrar) = self.ioevents.clone() else {
            return;
        };
        let wanted = self.wanted_ioevents();
        let old = std::mem::take(&mut self.registered);
        for (e, q) in old {
            if wanted.contains(&(e, q)) {
                self.registered.push((e, q));
            } else if let Some(fd) = self.kicks.fd(q) {
                let _ = registrar.unregister(&e, fd);
            }
        }
        for (e, q) in wanted {
            if self.registered.contains(&(e, q)) {
                continue;
            }
            // A refused registration (an address another device claimed) leaves the
            // notification on the exit path, which signals the same EventFd.
            if let Some(fd) = self.kicks.fd(q) {
                if registrar.register(&e, fd).is_ok() {
                    self.registered.push((e, q));
                }
            }
        }
    }

    fn unregister_all(&mut self) {
        let Some(registrar) = self.ioevents.clone() else {
            return;
        };
        for (e, q) in std::mem::take(&mut self.registered) {
            if let Some(fd) = self.kicks.fd(q) {
                let _ = registrar.unregister(&e, fd);
            }
        }
    }

    /// The ioeventfds registered now (for tests and traces).
    pub fn ioevents(&self) -> Vec<IoEvent> {
        self.registered.iter().map(|(e, _)| *e).collect()
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        lock(&self.core)
    }

    /// The device state, for tests that hold the lock as a busy worker would.
    #[cfg(test)]
    pub(crate) fn core_handle(&self) -> Arc<Mutex<Core>> {
        self.core.clone()
    }

    /// A notification that reached the transport: signal the queue's EventFd. Never takes
    /// the core lock, so a vCPU does not wait for the worker's I/O.
    fn kick(&self, queue: u64) {
        if let Ok(q) = usize::try_from(queue) {
            self.kicks.kick_from_exit(q);
        }
    }

    fn msix_enabled(&self) -> bool {
        self.irq.lock().msix_enabled()
    }

    // ---- device config (legacy and modern views) ----

    fn device_config_read(&self, offset: u64, data: &mut [u8]) {
        let core = self.core();
        let len = core.device.config_len() as u64;
        match offset.checked_add(data.len() as u64) {
            Some(end) if end <= len => core.device.read_config(offset as usize, data),
            _ => data.fill(0xff),
        }
    }

    fn device_config_write(&self, offset: u64, data: &[u8]) {
        let mut core = self.core();
        let len = core.device.config_len() as u64;
        if offset
            .checked_add(data.len() as u64)
            .is_some_and(|e| e <= len)
        {
            core.write_config(offset as usize, data);
        } else {
            crate::guest_error!(
                "{}: device config write of {} bytes at {offset:#x}, past its {len} bytes",
                core.name,
                data.len()
            );
        }
    }

    // ---- status shared by both interfaces ----

    fn write_status(&mut self, value: u8) {
        let reset = self.core().set_status(value);
        if reset {
            self.transport_reset();
        }
        self.sync_ioevents();
    }

    /// virtio_pci_reset minus the PCI side: selectors and staged features.
    fn transport_reset(&mut self) {
        self.queue_sel = 0;
        self.dfselect = 0;
        self.gfselect = 0;
        self.guest_features = [0; 2];
    }

    fn set_queue_vector(&self, v: u16) {
        let mut s = self.irq.lock();
        let v = s.checked_vector(v);
        if let Some(slot) = s.queue_vectors.get_mut(usize::from(self.queue_sel)) {
            *slot = v;
        }
    }

    fn queue_vector(&self) -> u16 {
        self.irq
            .lock()
            .queue_vectors
            .get(usize::from(self.queue_sel))
            .copied()
            .unwrap_or(NO_VECTOR)
    }

    fn set_config_vector(&self, v: u16) {
        let mut s = self.irq.lock();
        s.config_vector = s.checked_vector(v);
    }

    // ---- legacy BAR 0 ----

    fn legacy_read(&mut self, offset: u64, data: &mut [u8]) {
        let header = if self.msix_enabled() {
            legacy::HEADER_MSIX
        } else {
            legacy::HEADER
        };
        if offset >= header {
            return self.device_config_read(offset - header, data);
        }
        let sel = usize::from(self.queue_sel);
        let v: u64 = match offset {
            legacy::HOST_FEATURES => u64::from(self.core().offered as u32),
            legacy::GUEST_FEATURES => u64::from(self.core().acked as u32),
            legacy::QUEUE_PFN => self
                .core()
                .with_queue(sel, |q| match q.ready() {
                    true => q.desc_table() >> legacy::PFN_SHIFT,
                    false => 0,
                })
                .unwrap_or(0),
            legacy::QUEUE_NUM => self
                .core()
                .with_queue(sel, |q| u64::from(q.size()))
                .unwrap_or(0),
            legacy::QUEUE_SEL => u64::from(self.queue_sel),
            legacy::STATUS => u64::from(self.core().status),
            legacy::ISR => u64::from(self.irq.read_isr()),
            legacy::MSI_CONFIG_VECTOR => u64::from(self.irq.lock().config_vector),
            legacy::MSI_QUEUE_VECTOR => u64::from(self.queue_vector()),
            _ => u64::MAX,
        };
        write_le(data, v);
    }

    fn legacy_write(&mut self, offset: u64, data: &[u8]) {
        let header = if self.msix_enabled() {
            legacy::HEADER_MSIX
        } else {
            legacy::HEADER
        };
        if offset >= header {
            return self.device_config_write(offset - header, data);
        }
        let val = read_le(data);
        match offset {
            legacy::GUEST_FEATURES => {
                let mut v = val & 0xffff_ffff;
                if v & features::BAD_FEATURE != 0 {
                    // The driver did not negotiate properly: assume nothing.
                    v = 0;
                }
                self.core().set_driver_features(v);
            }
            legacy::QUEUE_PFN => {
                if val == 0 {
                    // QEMU resets the whole device on a zero PFN.
                    self.core().reset();
                    self.transport_reset();
                } else {
                    self.legacy_set_pfn(val & 0xffff_ffff);
                }
                self.sync_ioevents();
            }
            legacy::QUEUE_SEL if val < u64::from(QUEUE_MAX) => self.queue_sel = val as u16,
            legacy::QUEUE_NOTIFY => self.kick(val & 0xffff),
            legacy::STATUS => {
                let v = val as u8;
                self.write_status(v);
                // Old Linux drove the device without enabling bus mastering.
                if v == status::ACKNOWLEDGE | status::DRIVER {
                    let cmd = self.config.command() | COMMAND_MASTER;
                    self.config.write(COMMAND, &cmd.to_le_bytes());
                }
            }
            legacy::MSI_CONFIG_VECTOR => self.set_config_vector(val as u16),
            legacy::MSI_QUEUE_VECTOR => self.set_queue_vector(val as u16),
            legacy::QUEUE_SEL => {}
            _ => crate::guest_error!(
                "{}: write of {val:#x} to legacy register {offset:#x}, not a writable register",
                self.core().name
            ),
        }
    }

    /// Legacy ring layout: descriptors at PFN << 12, the available ring right after them,
    /// the used ring at the next 4 KiB boundary (virtio_queue_update_rings).
    fn legacy_set_pfn(&mut self, pfn: u64) {
        let sel = usize::from(self.queue_sel);
        let mut core = self.core();
        let event_idx = core.acked & features::RING_EVENT_IDX != 0;
        let set = core.with_queue(sel, |q| {
            let num = u64::from(q.size());
            let desc = pfn << legacy::PFN_SHIFT;
            let avail = desc + 16 * num;
            let used = (avail + 4 + 2 * num).next_multiple_of(legacy::VRING_ALIGN);
            let ok = q.try_set_desc_table_address(GuestAddress(desc)).is_ok()
                && q.try_set_avail_ring_address(GuestAddress(avail)).is_ok()
                && q.try_set_used_ring_address(GuestAddress(used)).is_ok();
            q.set_event_idx(event_idx);
            q.set_ready(ok);
            ok
        });
        if set == Some(false) {
            crate::guest_error!(
                "{}: queue {sel}: PFN {pfn:#x} puts the rings outside the address space",
                core.name
            );
        }
    }

    // ---- modern BAR 4 ----

    fn common_read(&mut self, offset: u64) -> u64 {
        let sel = usize::from(self.queue_sel);
        let mut core = self.core();
        // The selected queue's registers, read under its group's lock if it has one.
        let queue_reg = |core: &mut Core, read: fn(&virtio_queue::Queue) -> u64| {
            core.with_queue(sel, |q| read(q)).unwrap_or(0)
        };
        match offset {
            common::DFSELECT => u64::from(self.dfselect),
            common::DF => {
                let f = core.offered & !core.legacy_only;
                match self.dfselect {
                    0 => f & 0xffff_ffff,
                    1 => f >> 32,
                    _ => 0,
                }
            }
            common::GFSELECT => u64::from(self.gfselect),
            common::GF => self
                .guest_features
                .get(self.gfselect as usize)
                .map_or(0, |&v| u64::from(v)),
            common::MSIX => u64::from(self.irq.lock().config_vector),
            common::NUMQ => core.num_queues() as u64,
            common::STATUS => u64::from(core.status),
            common::CFGGENERATION => {
                u64::from(core.generation.wrapping_add(self.irq.lock().config_changes))
            }
            common::Q_SELECT => u64::from(self.queue_sel),
            common::Q_SIZE => queue_reg(&mut core, |q| u64::from(q.size())),
            common::Q_MSIX => {
                drop(core);
                u64::from(self.queue_vector())
            }
            common::Q_ENABLE => queue_reg(&mut core, |q| u64::from(q.ready())),
            common::Q_NOFF => u64::from(self.queue_sel),
            common::Q_DESCLO => queue_reg(&mut core, |q| q.desc_table() & 0xffff_ffff),
            common::Q_DESCHI => queue_reg(&mut core, |q| q.desc_table() >> 32),
            common::Q_AVAILLO => queue_reg(&mut core, |q| q.avail_ring() & 0xffff_ffff),
            common::Q_AVAILHI => queue_reg(&mut core, |q| q.avail_ring() >> 32),
            common::Q_USEDLO => queue_reg(&mut core, |q| q.used_ring() & 0xffff_ffff),
            common::Q_USEDHI => queue_reg(&mut core, |q| q.used_ring() >> 32),
            _ => 0,
        }
    }

    fn common_write(&mut self, offset: u64, val: u64) {
        let sel = usize::from(self.queue_sel);
        let lo = val as u32;
        match offset {
            common::DFSELECT => self.dfselect = lo,
            common::GFSELECT => self.gfselect = lo,
            common::GF => {
                if let Some(w) = self.guest_features.get_mut(self.gfselect as usize) {
                    *w = lo;
                    let f = (u64::from(self.guest_features[1]) << 32)
                        | u64::from(self.guest_features[0]);
                    self.core().set_driver_features(f);
                }
            }
            common::MSIX => self.set_config_vector(val as u16),
            common::STATUS => {
                let v = val as u8;
                self.write_status(v);
            }
            common::Q_SELECT if val < u64::from(QUEUE_MAX) => self.queue_sel = val as u16,
            common::Q_MSIX => self.set_queue_vector(val as u16),
            _ => {
                let mut guard = self.core();
                let core = &mut *guard;
                let event_idx = core.acked & features::RING_EVENT_IDX != 0;
                let name = core.name.clone();
                let Some(refused) =
                    core.with_queue(sel, |q| write_queue_field(q, offset, val, event_idx, &name))
                else {
                    crate::guest_error!(
                        "{name}: common config write at {offset:#x} for queue {sel}, which does \
                         not exist"
                    );
                    return;
                };
                if let Some(reason) = refused {
                    crate::guest_error!("{name}: queue {sel}: {reason}");
                }
                if offset == common::Q_ENABLE && val != 1 {
                    // QEMU's virtio_pci_common_write: a device error.
                    core.device_error(&format!("wrong value for queue_enable {val:x}"));
                }
                drop(guard);
                if offset == common::Q_ENABLE {
                    self.sync_ioevents();
                }
            }
        }
    }

    fn modern_read(&mut self, offset: u64, data: &mut [u8]) {
        let region = offset / modern::REGION_SIZE;
        let off = offset % modern::REGION_SIZE;
        // Accesses must stay inside one region and be 1, 2 or 4 bytes (8 splits in two).
        if off + data.len() as u64 > modern::REGION_SIZE {
            data.fill(0);
            return;
        }
        match (region, data.len()) {
            (0, 8) => {
                let lo = self.common_read(off) & 0xffff_ffff;
                let hi = self.common_read(off + 4) & 0xffff_ffff;
                write_le(data, lo | (hi << 32));
            }
            (0, _) => {
                let v = self.common_read(off);
                write_le(data, v);
            }
            (1, _) => {
                let v = self.irq.read_isr();
                write_le(data, u64::from(v));
            }
            (2, _) => self.device_config_read(off, data),
            _ => data.fill(0),
        }
    }

    fn modern_write(&mut self, offset: u64, data: &[u8]) {
        let region = offset / modern::REGION_SIZE;
        let off = offset % modern::REGION_SIZE;
        if off + data.len() as u64 > modern::REGION_SIZE {
            return;
        }
        match (region, data.len()) {
            (0, 8) => {
                let v = read_le(data);
                self.common_write(off, v & 0xffff_ffff);
                self.common_write(off + 4, v >> 32);
            }
            (0, _) => self.common_write(off, read_le(data)),
            (2, _) => self.device_config_write(off, data),
            (3, _) => {
                let queue = off / u64::from(modern::NOTIFY_MULTIPLIER);
                if queue < u64::from(QUEUE_MAX) {
                    self.kick(queue);
                }
            }
            _ => {}
        }
    }

    // ---- VIRTIO_PCI_CAP_PCI_CFG window ----

    fn pci_cfg_overlaps(&self, offset: usize, len: usize) -> Option<usize> {
        let cap = self.caps.pci_cfg?;
        let data = cap + PCI_CFG_DATA;
        (offset < data + 4 && data < offset + len).then_some(cap)
    }

    /// virtio_address_space_lookup: only the modern BAR's regions are reachable, the offset is
    /// aligned down to the length, and the access must fit one region.
    fn pci_cfg_target(&self, cap: usize) -> Option<(u64, usize)> {
        let (_bar, off, len) = caps::pci_cfg_window(&self.config, cap);
        let len = match len {
            1 | 2 | 4 => len as usize,
            _ => return None,
        };
        let off = u64::from(off) & !(len as u64 - 1);
        let end = off + len as u64;
        (end <= modern::NOTIFY + u64::from(QUEUE_MAX) * 4
            && off / modern::REGION_SIZE == (end - 1) / modern::REGION_SIZE)
            .then_some((off, len))
    }
}

impl PciFunction for VirtioPciFunction {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        let offset = usize::from(offset);
        if let Some(cap) = self.pci_cfg_overlaps(offset, data.len()) {
            if let Some((off, len)) = self.pci_cfg_target(cap) {
                let mut buf = [0u8; 4];
                self.modern_read(off, &mut buf[..len]);
                self.config
                    .set_u32(cap + PCI_CFG_DATA, u32::from_le_bytes(buf));
            }
        }
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        let offset = usize::from(offset);
        self.config.write(offset, data);
        let touches = |at: usize, len: usize| offset < at + len && at < offset + data.len();
        if touches(COMMAND, 1) && self.config.command() & COMMAND_MASTER == 0 {
            // Bus mastering off: the driver can no longer be running.
            self.core().status &= !status::DRIVER_OK;
            self.sync_ioevents();
        }
        let msix_cap = self.irq.lock().msix.as_ref().map(|m| m.cap_offset());
        if let Some(cap) = msix_cap {
            if touches(cap + 2, 2) {
                let mut s = self.irq.lock();
                if let Some((m, sink)) = s.msix_and_sink() {
                    m.config_written(&self.config, sink);
                }
                // Enabling MSI-X takes the function off INTx.
                s.update_intx();
            }
        }
        if let Some(exp) = self.caps.pcie {
            if touches(exp.offset + pcie::DEVCTL, 2) && exp.take_flr(&mut self.config) {
                // Function-level reset; the initiate bit always reads as zero.
                self.reset();
                return;
            }
        }
        if let Some(cap) = self.pci_cfg_overlaps(offset, data.len()) {
            if let Some((off, len)) = self.pci_cfg_target(cap) {
                let v = self.config.get_u32(cap + PCI_CFG_DATA).to_le_bytes();
                self.modern_write(off, &v[..len]);
            }
        }
    }

    fn reset(&mut self) {
        self.config.reset();
        self.core().reset();
        self.irq.reset(true);
        self.transport_reset();
        self.sync_ioevents();
    }

    fn bars_mapped(&mut self, bars: &[(usize, u64)]) {
        let mut bases = [None; NUM_BARS];
        for &(bar, base) in bars {
            if let Some(slot) = bases.get_mut(bar) {
                *slot = Some(base);
            }
        }
        if bases != self.bar_bases {
            self.bar_bases = bases;
            self.sync_ioevents();
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        match bar {
            regs::LEGACY_BAR if self.legacy => self.legacy_read(offset, data),
            regs::MSIX_BAR => match self.irq.lock().msix.as_ref() {
                Some(m) => m.bar_read(offset, data),
                None => data.fill(0xff),
            },
            modern::BAR if self.modern => self.modern_read(offset, data),
            _ => data.fill(0xff),
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        match bar {
            regs::LEGACY_BAR if self.legacy => self.legacy_write(offset, data),
            regs::MSIX_BAR => {
                let mut s = self.irq.lock();
                if let Some((m, sink)) = s.msix_and_sink() {
                    m.bar_write(offset, data, sink);
                }
            }
            modern::BAR if self.modern => self.modern_write(offset, data),
            _ => {}
        }
    }

    fn set_msi_sink(&mut self, sink: Arc<dyn MsiSink>) {
        self.irq.set_msi_sink(sink);
    }
}

impl Drop for VirtioPciFunction {
    fn drop(&mut self) {
        // The VM may outlive this function (a hot-unplug, a test): leave nothing registered.
        self.unregister_all();
    }
}

/// A guest write of `val` to queue register `offset` of common config (the selected queue
/// `q`); why a value was refused, for the guest_errors line. Refused values leave the field
/// as it was and a queue that cannot work stops the device when used.
fn write_queue_field(
    q: &mut virtio_queue::Queue,
    offset: u64,
    val: u64,
    event_idx: bool,
    name: &str,
) -> Option<String> {
    let lo = val as u32;
    // Replace the low or high half of a 64-bit ring address.
    let half = |old: u64, high: bool| match high {
        false => (old & !0xffff_ffff) | u64::from(lo),
        true => (old & 0xffff_ffff) | (u64::from(lo) << 32),
    };
    match offset {
        common::Q_SIZE => q
            .try_set_size(val as u16)
            .err()
            .map(|_| format!("size {val} refused (max {})", q.max_size())),
        common::Q_ENABLE if val == 1 => {
            q.set_event_idx(event_idx);
            q.set_ready(true);
            None
        }
        common::Q_ENABLE => None,
        common::Q_DESCLO | common::Q_DESCHI => {
            let a = half(q.desc_table(), offset == common::Q_DESCHI);
            q.try_set_desc_table_address(GuestAddress(a))
                .err()
                .map(|_| format!("descriptor table at {a:#x} is not 16-byte aligned"))
        }
        common::Q_AVAILLO | common::Q_AVAILHI => {
            let a = half(q.avail_ring(), offset == common::Q_AVAILHI);
            q.try_set_avail_ring_address(GuestAddress(a))
                .err()
                .map(|_| format!("available ring at {a:#x} is not 2-byte aligned"))
        }
        common::Q_USEDLO | common::Q_USEDHI => {
            let a = half(q.used_ring(), offset == common::Q_USEDHI);
            q.try_set_used_ring_address(GuestAddress(a))
                .err()
                .map(|_| format!("used ring at {a:#x} is not 4-byte aligned"))
        }
        // virtio 1.2's queue_notify_data and queue_reset (QEMU 10 has them; their
        // features are not offered here).
        common::Q_NDATA | common::Q_RESET => {
            crate::unimp!(
                "{name}: write of {val:#x} to common config offset {offset:#x} \
                 (queue_notify_data / queue_reset) is not implemented"
            );
            None
        }
        _ => {
            crate::guest_error!(
                "{name}: write of {val:#x} to common config offset {offset:#x}, \
                 not a writable register"
            );
            None
        }
    }
}
