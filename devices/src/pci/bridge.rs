//! PCI-to-PCI bridges and PCIe ports: one type-1 function model whose capabilities are
//! chosen by the per-device constructors in `ports/` and `bridges/`. This file holds what
//! they share: the type-1 header as QEMU's pci_bridge_initfn leaves it, config-write side
//! effects of the capabilities, reset per QEMU model, BAR0 (SHPC registers or the MSI-X
//! page) and interrupt signalling (MSI-X, MSI or INTx, in QEMU's order of preference).
//!
//! The host tells a bridge what sits behind it ([`PciBridge::attach`]): QEMU derives slot
//! presence and the downstream link status from the secondary bus.

use super::caps::aer;
use super::caps::msix_cap;
use super::caps::pcie::{self, PcieCap};
use super::caps::shpc::{self, Shpc};
use super::caps::slotid;
use super::config::{BarDef, PciConfig};
use super::device::PciFunction;
use super::interrupt::MsiSink;
use super::msi::MsiCap;
use super::regs::*;
use super::window;
use super::PciError;
use crate::lifecycle::Lifecycle;
use machine::PciIdentity;
use std::sync::Arc;

/// Power indicator blinking (PCI_EXP_SLTCTL_PWR_IND_BLINK).
const PIC_BLINK: u16 = 0x0200;

/// The QEMU device a bridge models; selects reset and write-side-effect behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// pcie-root-port (generic, MSI-X).
    RootPort,
    /// ioh3420 (Intel root port, MSI whose vector count picks the AER vector).
    Ioh3420,
    /// x3130-upstream.
    SwitchUpstream,
    /// xio3130-downstream.
    SwitchDownstream,
    /// pcie-pci-bridge.
    PcieToPci,
    /// pci-bridge / pci-bridge-seat.
    PciBridge,
    /// i82801b11-bridge (DMI-to-PCI).
    Dmi,
}

/// MSI-X table page of the generic root port, kept only until `pci::msix` provides the
/// real table; it stores entries and PBA so the guest reads back what it wrote and
/// delivers vector messages when enabled and unmasked.
struct MsixPage {
    cap: usize,
    vectors: usize,
    page: Vec<u8>,
    pba_offset: usize,
}

impl MsixPage {
    const ENTRY: usize = 16;

    fn new(cap: usize, vectors: usize, pba_offset: usize) -> Self {
        let mut m = Self {
            cap,
            vectors,
            page: vec![0; 0x1000],
            pba_offset,
        };
        m.reset();
        m
    }

    /// msix_init/msix_reset: every vector masked, nothing pending.
    fn reset(&mut self) {
        self.page.fill(0);
        for v in 0..self.vectors {
            if let Some(b) = self.page.get_mut(v * Self::ENTRY + 12) {
                *b = 1;
            }
        }
    }

    fn control(&self, config: &PciConfig) -> u8 {
        config.get_u8(self.cap + msix_cap::CONTROL_HI)
    }

    fn enabled(&self, config: &PciConfig) -> bool {
        self.control(config) & msix_cap::ENABLE != 0
    }

    fn u32_at(&self, o: usize) -> u32 {
        let mut b = [0u8; 4];
        for (i, x) in b.iter_mut().enumerate() {
            *x = self.page.get(o + i).copied().unwrap_or(0);
        }
        u32::from_le_bytes(b)
    }

    fn set_pending(&mut self, vector: usize, pending: bool) {
        if let Some(b) = self.page.get_mut(self.pba_offset + vector / 8) {
            let bit = 1u8 << (vector % 8);
            if pending {
                *b |= bit;
            } else {
                *b &= !bit;
            }
        }
    }

    fn masked(&self, config: &PciConfig, vector: usize) -> bool {
        self.control(config) & msix_cap::MASKALL != 0
            || self.u32_at(vector * Self::ENTRY + 12) & 1 != 0
    }

    fn notify(&mut self, config: &PciConfig, vector: usize, sink: Option<&Arc<dyn MsiSink>>) {
        if vector >= self.vectors || !self.enabled(config) {
            return;
        }
        if self.masked(config, vector) {
            self.set_pending(vector, true);
            return;
        }
        let e = vector * Self::ENTRY;
        let addr = u64::from(self.u32_at(e)) | (u64::from(self.u32_at(e + 4)) << 32);
        if let Some(s) = sink {
            s.send(addr, self.u32_at(e + 8));
        }
    }

    /// Deliver what became unmasked.
    fn flush(&mut self, config: &PciConfig, sink: Option<&Arc<dyn MsiSink>>) {
        for v in 0..self.vectors {
            let pending = self
                .page
                .get(self.pba_offset + v / 8)
                .is_some_and(|b| b & (1 << (v % 8)) != 0);
            if pending && self.enabled(config) && !self.masked(config, v) {
                self.set_pending(v, false);
                self.notify(config, v, sink);
            }
        }
    }

    fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| self.page.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let table_end = self.vectors * Self::ENTRY;
        for (i, &v) in data.iter().enumerate() {
            let Some(o) = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
            else {
                break;
            };
            // Only the table is writable; the PBA is read-only.
            if o < table_end {
                let v = if o % Self::ENTRY == 12 { v & 1 } else { v };
                let v = if o % Self::ENTRY > 12 { 0 } else { v };
                self.page[o] = v;
            }
        }
    }
}

/// A bridge or port function.
pub struct PciBridge {
    model: Model,
    config: PciConfig,
    exp: Option<PcieCap>,
    aer: Option<usize>,
    acs: Option<usize>,
    msi: Option<MsiCap>,
    msix: Option<MsixPage>,
    shpc: Option<Shpc>,
    slotid: Option<usize>,
    /// Devices present on the secondary bus (bit n = device n).
    populated: u32,
    /// LNKSTA of the express function at device 0 behind a downstream port.
    link_partner: Option<u16>,
    /// Whether the slot's own plug callback saw the cold-plugged devices (see `attach`).
    plug_latched: bool,
    msi_sink: Option<Arc<dyn MsiSink>>,
    intx: bool,
    /// Slot hot-plug interrupt state (QEMU's hpev_notified).
    hp_notified: bool,
    /// Where a slot the guest powers off is reported: the lifecycle and the secondary bus.
    eject: Option<(Lifecycle, String)>,
}

/// Why a port refuses `device_del` (pcie_cap_slot_unplug_request_cb's texts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnplugRefusal {
    /// "Hot-unplug failed: unsupported by the port device '%s'".
    NoHotplug,
    /// "Hot-unplug failed: guest is busy (power indicator blinking)".
    Busy,
}

/// What a port did with an unplug request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unplug {
    /// The attention button was pressed: the guest powers the slot off when it is done.
    Requested,
    /// The slot was powered off (or the function never shown): the caller removes the
    /// device at once.
    Now,
}

impl PciBridge {
    /// Type-1 header as pci_bridge_initfn leaves it: 66 MHz and fast back-to-back in both
    /// status registers; PCIe ports then clear them (pcie_port_init_reg) and lose the
    /// conventional-only bridge control bits. An express secondary bus has a read-only
    /// secondary latency timer (unless the pre-8.2 compat bug is asked for).
    pub fn new(model: Model, identity: &PciIdentity, multifunction: bool, express: bool) -> Self {
        let mut config = PciConfig::new(identity, multifunction, express);
        let fast = STATUS_66MHZ | STATUS_FAST_BACK;
        config.set_u16(STATUS, fast);
        config.set_u16(SEC_STATUS, fast);
        let mut b = Self {
            model,
            config,
            exp: None,
            aer: None,
            acs: None,
            msi: None,
            msix: None,
            shpc: None,
            slotid: None,
            populated: 0,
            link_partner: None,
            plug_latched: false,
            msi_sink: None,
            intx: false,
            hp_notified: false,
            eject: None,
        };
        if b.is_pcie_port() {
            b.config.set_u16(STATUS, 0);
            b.config.set_u16(SEC_STATUS, 0);
            let wm = BRIDGE_CTL_PARITY
                | BRIDGE_CTL_SERR
                | BRIDGE_CTL_ISA
                | BRIDGE_CTL_VGA
                | BRIDGE_CTL_VGA_16BIT
                | BRIDGE_CTL_BUS_RESET;
            b.config.set_wmask_u16(BRIDGE_CONTROL, wm);
        }
        b
    }

    pub fn model(&self) -> Model {
        self.model
    }

    /// Root, upstream and downstream ports (QEMU's TYPE_PCIE_PORT).
    pub fn is_pcie_port(&self) -> bool {
        matches!(
            self.model,
            Model::RootPort | Model::Ioh3420 | Model::SwitchUpstream | Model::SwitchDownstream
        )
    }

    /// The secondary latency timer is read-only 0 below an express port.
    pub(crate) fn set_secondary_latency_ro(&mut self) {
        self.config.set_wmask_u8(SEC_LATENCY_TIMER, 0);
    }

    pub(crate) fn config_mut_ref(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    pub(crate) fn set_exp(&mut self, exp: PcieCap) {
        self.exp = Some(exp);
    }
    pub(crate) fn set_aer(&mut self, offset: usize) {
        self.aer = Some(offset);
    }
    pub(crate) fn set_acs(&mut self, offset: usize) {
        self.acs = Some(offset);
    }
    pub(crate) fn set_msi(&mut self, msi: MsiCap) {
        self.msi = Some(msi);
    }
    pub(crate) fn set_shpc(&mut self, shpc: Shpc) {
        self.shpc = Some(shpc);
    }
    pub(crate) fn set_slotid(&mut self, offset: usize) {
        self.slotid = Some(offset);
    }

    /// MSI-X capability plus its table page in BAR0 (msix_init_exclusive_bar: 4 KiB 32-bit
    /// BAR, table at 0, PBA in the upper half).
    pub(crate) fn add_msix_exclusive_bar(
        &mut self,
        offset: usize,
        vectors: u16,
    ) -> Result<(), PciError> {
        let pba = 0x800;
        msix_cap::add(&mut self.config, offset, vectors, 0, 0, 0, pba)?;
        self.config.register_bar(0, BarDef::mem32(0x1000))?;
        self.msix = Some(MsixPage::new(offset, usize::from(vectors), pba as usize));
        Ok(())
    }

    pub fn pcie_cap(&self) -> Option<PcieCap> {
        self.exp
    }

    /// Construction done: the current state becomes the power-on state, then QEMU's reset.
    pub(crate) fn finish(mut self) -> Self {
        self.config.commit_reset_state();
        self.reset_model();
        self
    }

    /// What lies behind the bridge: devices present on the secondary bus (bit n = device
    /// n) and the link status of the express function at device 0. `plug_latched`: the
    /// secondary bus's hot-plug handler is the port's own slot (pcie_cap_slot_plug_cb),
    /// which latches Presence Detect State and DLLLA for a cold-plugged device; false when
    /// the ACPI PCI hot-plug handler took the bus over. Takes effect now, as QEMU's
    /// cold-plug callbacks do, and on every later reset.
    pub fn attach(&mut self, populated: u32, link_partner: Option<u16>, plug_latched: bool) {
        self.populated = populated;
        self.link_partner = link_partner;
        self.plug_latched = plug_latched;
        if let Some(s) = &mut self.shpc {
            s.set_populated(populated);
        }
        self.reset_model();
    }

    /// The secondary bus's id and where ejects go (set by the host when it is built).
    pub fn set_eject_target(&mut self, lifecycle: Lifecycle, bus_id: String) {
        self.eject = Some((lifecycle, bus_id));
    }

    /// Whether the bridge has a standard hot-plug controller.
    pub fn has_shpc(&self) -> bool {
        self.shpc.is_some()
    }

    /// shpc_device_plug_cb for a device hot-added at `devfn` of the secondary bus.
    pub fn shpc_hot_plugged(&mut self, devfn: u8) {
        self.populated |= 1 << (devfn >> 3);
        let change = match &mut self.shpc {
            Some(s) => s.plug(&mut self.config, devfn >> 3),
            None => None,
        };
        self.shpc_level_change(change);
    }

    /// shpc_device_unplug_request_cb for the device at `devfn` (pci_bridge_dev's: refused
    /// without a controller).
    pub fn shpc_unplug_request(&mut self, devfn: u8) -> Result<Unplug, UnplugRefusal> {
        let Some(s) = &mut self.shpc else {
            return Err(UnplugRefusal::NoHotplug);
        };
        let (now, change) =
            s.unplug_request(&mut self.config, devfn >> 3)
                .map_err(|e| match e {
                    shpc::UnplugError::Busy => UnplugRefusal::Busy,
                    shpc::UnplugError::NoSlot => UnplugRefusal::NoHotplug,
                })?;
        if now {
            self.populated &= !(1 << (devfn >> 3));
        }
        self.shpc_level_change(change);
        Ok(if now { Unplug::Now } else { Unplug::Requested })
    }

    /// Slots the guest turned off through the controller: their devices go (the VMM
    /// removes them and sends DEVICE_DELETED).
    fn shpc_eject_freed(&mut self) {
        let Some(s) = &mut self.shpc else { return };
        let freed = s.take_freed();
        if freed == 0 {
            return;
        }
        self.populated &= !freed;
        if let Some((lifecycle, bus)) = &self.eject {
            for slot in (0..32u8).filter(|n| freed & (1 << n) != 0) {
                lifecycle.eject(bus, slot);
            }
        }
    }

    /// Whether the port's slot offers native hot-plug (SLTCAP HPC).
    pub fn native_hotplug(&self) -> bool {
        self.exp.is_some_and(|e| {
            e.slot.is_some() && self.config.get_u32(e.offset + pcie::SLTCAP) & pcie::SLTCAP_HPC != 0
        })
    }

    /// pcie_cap_slot_plug_cb for a hot-added device at `devfn`: function 0 makes the slot
    /// present (PDS, DLLLA, the partner's link) and signals presence-detect changed and
    /// the attention button.
    pub fn slot_hot_plugged(&mut self, devfn: u8, link_partner: Option<u16>) {
        self.populated |= 1 << (devfn >> 3);
        let Some(e) = self.exp else { return };
        if e.slot.is_none() || devfn != 0 {
            return;
        }
        self.link_partner = link_partner;
        e.slot_present(&mut self.config, true);
        e.sync_link(&mut self.config, link_partner);
        if e.slot_event(&mut self.config, pcie::SLTSTA_PDC | pcie::SLTSTA_ABP) {
            self.hotplug_notify();
        }
    }

    /// pcie_cap_slot_enable_power (ACPI hot-plug into a port's bus).
    pub fn slot_enable_power(&mut self) {
        if let Some(e) = self.exp.filter(|e| e.slot.is_some()) {
            e.slot_enable_power(&mut self.config);
        }
    }

    /// pcie_cap_slot_unplug_request_cb for the device at `devfn`.
    pub fn slot_unplug_request(&mut self, devfn: u8) -> Result<Unplug, UnplugRefusal> {
        if !self.native_hotplug() {
            return Err(UnplugRefusal::NoHotplug);
        }
        let Some(e) = self.exp else {
            return Err(UnplugRefusal::NoHotplug);
        };
        let (ctl, _) = e.slot_regs(&self.config);
        if ctl & pcie::SLTCTL_PIC == PIC_BLINK {
            return Err(UnplugRefusal::Busy);
        }
        // A function other than 0 with no function 0 was never shown to the guest.
        if devfn != 0 && self.populated & 1 == 0 {
            return Ok(Unplug::Now);
        }
        if PcieCap::powered_off(ctl) {
            self.slot_do_unplug();
            self.hotplug_notify();
            e.slot_clear(&mut self.config, pcie::SLTSTA_ABP);
            return Ok(Unplug::Now);
        }
        if e.slot_event(&mut self.config, pcie::SLTSTA_ABP) {
            self.hotplug_notify();
        }
        Ok(Unplug::Requested)
    }

    /// pcie_cap_slot_do_unplug: nothing present any more, presence-detect changed.
    fn slot_do_unplug(&mut self) {
        let Some(e) = self.exp else { return };
        self.populated &= !1;
        self.link_partner = None;
        e.slot_present(&mut self.config, false);
        let sta = self.config.get_u16(e.offset + pcie::SLTSTA);
        self.config
            .set_u16(e.offset + pcie::SLTSTA, sta | pcie::SLTSTA_PDC);
    }

    /// QEMU's per-model reset on top of the restored power-on snapshot.
    fn reset_model(&mut self) {
        let chassis = self
            .slotid
            .map(|o| self.config.get_u8(o + slotid::CHASSIS_NR));
        self.config.reset();
        // The slot-ID chassis number is non-volatile in QEMU: it survives reset.
        if let (Some(o), Some(c)) = (self.slotid, chassis) {
            self.config.set_u8(o + slotid::CHASSIS_NR, c);
        }
        let cfg = &mut self.config;
        if let Some(e) = self.exp {
            e.deverr_reset(cfg);
            match self.model {
                Model::RootPort | Model::Ioh3420 => {
                    e.root_reset(cfg);
                    e.slot_reset(cfg, self.populated & 1 != 0, self.plug_latched);
                    e.arifwd_reset(cfg);
                }
                Model::SwitchDownstream => {
                    e.slot_reset(cfg, self.populated & 1 != 0, self.plug_latched);
                    e.arifwd_reset(cfg);
                }
                _ => {}
            }
            if e.port_type.is_downstream() {
                e.sync_link(cfg, self.link_partner);
            }
        }
        if let Some(a) = self.acs {
            super::caps::acs::reset(cfg, a);
        }
        if let Some(a) = self.aer {
            if matches!(self.model, Model::RootPort | Model::Ioh3420) {
                aer::root_reset(cfg, a);
            }
        }
        window::bridge_reset(cfg);
        if matches!(self.model, Model::RootPort | Model::Ioh3420) {
            window::disable_base_limit(cfg);
        }
        if let Some(s) = &mut self.shpc {
            s.reset(cfg);
        }
        if let Some(m) = &mut self.msix {
            m.reset();
        }
        self.intx = false;
        self.hp_notified = false;
        self.update_aer_vector();
    }

    /// rp_aer_vector_update: the generic port always uses vector 0; ioh3420 uses 1 when two
    /// MSI vectors are allocated.
    fn update_aer_vector(&mut self) {
        let Some(a) = self.aer else { return };
        let vector = match self.model {
            Model::RootPort => 0,
            Model::Ioh3420 => {
                let qsize = self
                    .msi
                    .map(|m| (self.config.get_u16(m.offset + 2) >> 4) & 7)
                    .unwrap_or(0);
                u8::from(qsize == 1)
            }
            _ => return,
        };
        aer::root_set_vector(&mut self.config, a, vector);
    }

    /// Send `vector` the way QEMU's hotplug and AER code does: MSI-X, else MSI, else the
    /// INTx line follows `level`.
    fn signal(&mut self, vector: u8, level: bool) {
        let sink = self.msi_sink.clone();
        if let Some(m) = &mut self.msix {
            if m.enabled(&self.config) {
                m.notify(&self.config, usize::from(vector), sink.as_ref());
                return;
            }
        }
        if let Some(msi) = self.msi {
            if msi.enabled(&self.config) {
                if let Some(s) = &sink {
                    msi.notify(&self.config, vector, s.as_ref());
                }
                return;
            }
        }
        self.intx = level;
    }

    fn message_enabled(&self) -> bool {
        self.msix.as_ref().is_some_and(|m| m.enabled(&self.config))
            || self.msi.is_some_and(|m| m.enabled(&self.config))
    }

    /// hotplug_event_notify.
    fn hotplug_notify(&mut self) {
        let Some(e) = self.exp else { return };
        let now = e.hotplug_pending(&self.config);
        if now == self.hp_notified {
            return;
        }
        self.hp_notified = now;
        let v = e.msg_vector(&self.config);
        self.signal(v, now);
    }

    /// Side effects of the slot registers after a masked write (pcie_cap_slot_write_config).
    fn slot_write(&mut self, old: (u16, u16), offset: usize, data: &[u8]) {
        let Some(e) = self.exp else { return };
        if e.slot.is_none() {
            return;
        }
        let sta_at = e.offset + pcie::SLTSTA;
        let ctl_at = e.offset + pcie::SLTCTL;
        let end = offset + data.len();
        let written_sta = (offset < sta_at + 2 && end > sta_at).then(|| {
            let mut v = [0u8; 2];
            for (i, b) in v.iter_mut().enumerate() {
                if let Some(x) = (sta_at + i).checked_sub(offset).and_then(|j| data.get(j)) {
                    *b = *x;
                }
            }
            u16::from_le_bytes(v)
        });
        let wrote_ctl = offset < ctl_at + 2 && end > ctl_at;
        let command = e.slot_write(&mut self.config, old, written_sta, wrote_ctl);
        // The guest powered a populated slot off: the device goes (the VMM removes it).
        let (new_ctl, sta) = e.slot_regs(&self.config);
        if wrote_ctl
            && sta & pcie::SLTSTA_PDS != 0
            && PcieCap::powered_off(new_ctl)
            && !PcieCap::powered_off(old.0)
        {
            self.slot_do_unplug();
            if let Some((lifecycle, bus)) = &self.eject {
                lifecycle.eject(bus, 0);
            }
        }
        if written_sta.is_some() {
            // hotplug_event_clear
            self.hp_notified = e.hotplug_pending(&self.config);
            if !self.message_enabled() && !self.hp_notified {
                self.intx = false;
            }
        }
        if command {
            self.hotplug_notify();
            // Commands complete at once: latch Command Completed.
            if e.slot_event(&mut self.config, pcie::SLTSTA_CC) {
                self.hotplug_notify();
            }
        }
    }

    fn shpc_level_change(&mut self, level: Option<bool>) {
        let Some(level) = level else { return };
        if self.msi.is_some_and(|m| m.enabled(&self.config)) {
            if let (Some(msi), Some(s)) = (self.msi, self.msi_sink.clone()) {
                msi.notify(&self.config, 0, s.as_ref());
            }
        } else {
            self.intx = level;
        }
    }
}

impl PciFunction for PciBridge {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        let offset = usize::from(offset);
        let old_slot = self.exp.map(|e| e.slot_regs(&self.config));
        self.config.write(offset, data);
        self.update_aer_vector();
        if let Some(old) = old_slot {
            self.slot_write(old, offset, data);
        }
        if let Some(e) = self.exp {
            if e.take_flr(&mut self.config) {
                self.reset_model();
                return;
            }
        }
        let change = match &mut self.shpc {
            Some(s) => s.cap_write(&mut self.config, offset, data.len()),
            None => None,
        };
        self.shpc_level_change(change);
        self.shpc_eject_freed();
        if let Some(m) = &mut self.msix {
            let sink = self.msi_sink.clone();
            m.flush(&self.config, sink.as_ref());
        }
    }

    fn reset(&mut self) {
        self.reset_model();
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if bar != 0 {
            return;
        }
        if let Some(s) = &self.shpc {
            s.read(offset, data);
        } else if let Some(m) = &self.msix {
            m.read(offset, data);
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != 0 {
            return;
        }
        if let Some(s) = &mut self.shpc {
            let change = s.write(&mut self.config, offset, data);
            self.shpc_level_change(change);
            self.shpc_eject_freed();
            return;
        }
        if let Some(m) = &mut self.msix {
            m.write(offset, data);
            let sink = self.msi_sink.clone();
            m.flush(&self.config, sink.as_ref());
        }
    }

    fn set_msi_sink(&mut self, sink: Arc<dyn MsiSink>) {
        self.msi_sink = Some(sink);
    }

    fn intx_level(&self) -> Option<bool> {
        (self.config.interrupt_pin() != 0).then_some(self.intx)
    }

    fn as_bridge_mut(&mut self) -> Option<&mut PciBridge> {
        Some(self)
    }
}
