//! The PCI Express capability of every express function -- ports, the PCIe-to-PCI bridge,
//! endpoints and root-complex integrated endpoints, version 1 or 2 -- filled and masked like
//! QEMU's pcie_cap_v1_init / pcie_cap_init plus the slot, root, device-error, link-control,
//! ARI-forwarding and FLR helpers of hw/pci/pcie.c, and the slot-control side effects of
//! pcie_cap_slot_write_config.

use crate::pci::config::PciConfig;
use crate::pci::regs::CAP_ID_EXP;
use crate::pci::PciError;

/// PCI_EXP_VER1_SIZEOF / PCI_EXP_VER2_SIZEOF.
pub const SIZE_V1: usize = 0x14;
pub const SIZE_V2: usize = 0x3c;

pub const FLAGS: usize = 0x02;
pub const DEVCAP: usize = 0x04;
pub const DEVCTL: usize = 0x08;
pub const DEVSTA: usize = 0x0a;
pub const LNKCAP: usize = 0x0c;
pub const LNKCTL: usize = 0x10;
pub const LNKSTA: usize = 0x12;
pub const SLTCAP: usize = 0x14;
pub const SLTCTL: usize = 0x18;
pub const SLTSTA: usize = 0x1a;
pub const RTCTL: usize = 0x1c;
pub const DEVCAP2: usize = 0x24;
pub const DEVCTL2: usize = 0x28;
pub const LNKCAP2: usize = 0x2c;
pub const LNKCTL2: usize = 0x30;

/// Device/port type field of the flags register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortType {
    Endpoint = 0,
    RootPort = 4,
    Upstream = 5,
    Downstream = 6,
    PcieToPciBridge = 7,
    /// Root-complex integrated endpoint.
    RcEndpoint = 9,
}

/// Capability version: v1 ends after the link registers (no DEVCAP2 and beyond).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1 = 1,
    V2 = 2,
}

impl PortType {
    /// Root and downstream ports own a link to a device below them (and a slot).
    pub fn is_downstream(self) -> bool {
        matches!(self, Self::RootPort | Self::Downstream)
    }
}

const FLAGS_SLOT: u16 = 0x0100;
const DEVCAP_RBER: u32 = 0x0000_8000;
const DEVCAP_FLR: u32 = 0x1000_0000;
/// Correctable, non-fatal, fatal and unsupported-request reporting enables / detected bits.
const DEVCTL_ERR_ENABLES: u16 = 0x000f;
const DEVSTA_ERR_DETECTED: u16 = 0x000f;
pub const DEVCTL_BCR_FLR: u16 = 0x8000;
const LNKCAP_ASPMS_L0S: u32 = 1 << 10;
const LNKCAP_DLLLARC: u32 = 0x0010_0000;
const LNKCAP_LBNC: u32 = 0x0020_0000;
const LNKCAP_MLW: u32 = 0x3f0;
const LNKCAP_SLS: u32 = 0xf;
/// ASPM control (bits 1:0) and extended synch (bit 7), writable per pcie_cap_lnkctl_init.
const LNKCTL_INIT_WMASK: u16 = 0x0083;
pub const LNKSTA_DLLLA: u16 = 0x2000;
const LNKSTA_CLS: u16 = 0xf;
const LNKSTA_NLW: u16 = 0x3f0;
const LNKCTL2_TLS: u16 = 0xf;
const DEVCAP2_ARI: u32 = 0x20;
const DEVCAP2_EFF: u32 = 0x0010_0000;
const DEVCAP2_EETLPP: u32 = 0x0020_0000;
const DEVCTL2_ARI: u16 = 0x20;
const DEVCTL2_EETLPPB: u16 = 0x8000;

pub const SLTCAP_ABP: u32 = 0x01;
pub const SLTCAP_PCP: u32 = 0x02;
pub const SLTCAP_AIP: u32 = 0x08;
pub const SLTCAP_PIP: u32 = 0x10;
pub const SLTCAP_HPS: u32 = 0x20;
pub const SLTCAP_HPC: u32 = 0x40;
pub const SLTCAP_EIP: u32 = 0x0002_0000;
const SLTCAP_PSN_SHIFT: u32 = 19;

pub const SLTCTL_ABPE: u16 = 0x0001;
pub const SLTCTL_PDCE: u16 = 0x0008;
pub const SLTCTL_CCIE: u16 = 0x0010;
pub const SLTCTL_HPIE: u16 = 0x0020;
pub const SLTCTL_AIC: u16 = 0x00c0;
pub const SLTCTL_AIC_OFF: u16 = 0x00c0;
pub const SLTCTL_PIC: u16 = 0x0300;
pub const SLTCTL_PIC_ON: u16 = 0x0100;
pub const SLTCTL_PIC_OFF: u16 = 0x0300;
pub const SLTCTL_PCC: u16 = 0x0400;
pub const SLTCTL_EIC: u16 = 0x0800;

pub const SLTSTA_ABP: u16 = 0x0001;
pub const SLTSTA_PDC: u16 = 0x0008;
pub const SLTSTA_CC: u16 = 0x0010;
pub const SLTSTA_PDS: u16 = 0x0040;
pub const SLTSTA_EIS: u16 = 0x0080;
/// Attention button, presence detect changed and command completed: the hot-plug events
/// QEMU reports (same bit positions in the control register's enables).
pub const HP_EV_SUPPORTED: u16 = 0x0019;
/// ABP, PFD, MRLSC, PDC, CC: the latched slot events.
const SLOT_EVENTS: u16 = 0x001f;

/// System error on correctable/non-fatal/fatal error enables.
const RTCTL_SERR_ENABLES: u16 = 0x0007;

/// Link speed as QEMU's PCIExpLinkSpeed (LNKCAP encoding: 1 = 2.5 GT/s .. 6 = 64 GT/s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LinkSpeed(pub u8);

impl LinkSpeed {
    pub const GT2_5: Self = Self(1);
    pub const GT5: Self = Self(2);
    pub const GT8: Self = Self(3);
    pub const GT16: Self = Self(4);

    /// The `x-speed` enum value (QAPI PCIELinkSpeed names, checked by the planner).
    pub fn from_enum(v: &str) -> Option<Self> {
        Some(Self(match v {
            "2_5" => 1,
            "5" => 2,
            "8" => 3,
            "16" => 4,
            "32" => 5,
            "64" => 6,
            _ => return None,
        }))
    }
}

/// The `x-width` enum value (QAPI PCIELinkWidth names: 1, 2, 4, 8, 12, 16, 32 lanes).
pub fn width_from_enum(v: &str) -> Option<u8> {
    Some(match v {
        "1" => 1,
        "2" => 2,
        "4" => 4,
        "8" => 8,
        "12" => 12,
        "16" => 16,
        "32" => 32,
        _ => return None,
    })
}

/// What pcie_cap_slot_init needs from the PCIESlot properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotConfig {
    /// Physical slot number (`slot`).
    pub number: u16,
    /// Native hot-plug offered (`hotplug` and not `x-do-not-expose-native-hotplug-cap`).
    pub hotplug: bool,
    /// Power controller present (`power_controller_present`).
    pub power_controller: bool,
}

/// The capability's location and type, for the register helpers below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcieCap {
    pub offset: usize,
    pub port_type: PortType,
    pub slot: Option<SlotConfig>,
}

impl PcieCap {
    /// pcie_cap_init: v2 capability with QEMU's default x1 2.5 GT/s link. Data Link Layer
    /// Link Active stays clear: pcie_cap_v1_fill no longer sets it (QEMU >= 5.2); only a
    /// slot's plug callback does ([`slot_reset`](Self::slot_reset)).
    pub fn init(
        config: &mut PciConfig,
        offset: usize,
        port_type: PortType,
        port: u8,
    ) -> Result<Self, PciError> {
        Self::init_version(config, offset, port_type, port, Version::V2)
    }

    /// pcie_cap_v1_init (v1) or pcie_cap_init (v2): pcie_cap_v1_fill -- flags, role-based
    /// error reporting, the x1 2.5 GT/s link with ASPM L0s -- and for v2 the extended
    /// fmt field and end-end TLP prefix capabilities. No write masks beyond v2's DEVCTL2
    /// end-end TLP prefix blocking; the *_init helpers below add the rest.
    pub fn init_version(
        config: &mut PciConfig,
        offset: usize,
        port_type: PortType,
        port: u8,
        version: Version,
    ) -> Result<Self, PciError> {
        let size = match version {
            Version::V1 => SIZE_V1,
            Version::V2 => SIZE_V2,
        };
        config.add_capability(CAP_ID_EXP, offset, size)?;
        config.set_u16(offset + FLAGS, ((port_type as u16) << 4) | version as u16);
        config.set_u32(offset + DEVCAP, DEVCAP_RBER);
        config.set_u32(
            offset + LNKCAP,
            (u32::from(port) << 24) | LNKCAP_ASPMS_L0S | (1 << 4) | 1,
        );
        config.set_u16(offset + LNKSTA, (1 << 4) | 1);
        if version == Version::V2 {
            config.set_u32(offset + DEVCAP2, DEVCAP2_EFF | DEVCAP2_EETLPP);
            config.set_wmask_u16(offset + DEVCTL2, DEVCTL2_EETLPPB);
        }
        Ok(Self {
            offset,
            port_type,
            slot: None,
        })
    }

    fn at(&self, reg: usize) -> usize {
        self.offset + reg
    }

    /// pcie_cap_fill_slot_lnk: the PCIESlot's configured width and speed. A slot without
    /// `x-speed`/`x-width` (xio3130-downstream) passes 0 and 0, which QEMU writes as is
    /// (LNKCAP MLW and SLS read 0). Hot-plug capable ports above 2.5 GT/s report DLLLARC;
    /// DLLLA itself is set only when a device is plugged ("the PCI_EXP_LNKSTA_DLLLA will
    /// be set in the hotplug function").
    pub fn fill_slot_link(&self, config: &mut PciConfig, speed: LinkSpeed, width: u8) {
        let mut cap = config.get_u32(self.at(LNKCAP)) & !(LNKCAP_MLW | LNKCAP_SLS);
        cap |= (u32::from(width) << 4) & LNKCAP_MLW;
        cap |= u32::from(speed.0) & LNKCAP_SLS;
        if width > 1 || speed > LinkSpeed::GT2_5 {
            cap |= LNKCAP_LBNC;
        }
        if speed > LinkSpeed::GT2_5 {
            cap |= LNKCAP_DLLLARC;
            let ctl2 = config.get_u16(self.at(LNKCTL2)) & !LNKCTL2_TLS;
            config.set_u16(self.at(LNKCTL2), ctl2 | (u16::from(speed.0) & LNKCTL2_TLS));
        }
        config.set_u32(self.at(LNKCAP), cap);
        if speed > LinkSpeed::GT5 {
            // Supported Link Speeds vector: every speed up to the maximum.
            let mut v = 0u32;
            for s in 1..=speed.0.min(7) {
                v |= 1 << s;
            }
            config.set_u32(self.at(LNKCAP2), v);
        }
    }

    /// pcie_cap_deverr_init.
    pub fn deverr_init(&self, config: &mut PciConfig) {
        let cap = config.get_u32(self.at(DEVCAP)) | DEVCAP_RBER;
        config.set_u32(self.at(DEVCAP), cap);
        config.set_wmask_u16(
            self.at(DEVCTL),
            DEVCTL_ERR_ENABLES | wm16(config, self.at(DEVCTL)),
        );
        config.set_w1cmask_u16(self.at(DEVSTA), DEVSTA_ERR_DETECTED);
    }

    pub fn deverr_reset(&self, config: &mut PciConfig) {
        let v = config.get_u16(self.at(DEVCTL)) & !DEVCTL_ERR_ENABLES;
        config.set_u16(self.at(DEVCTL), v);
    }

    /// pcie_cap_lnkctl_init: ASPM control and extended synch writable.
    pub fn lnkctl_init(&self, config: &mut PciConfig) {
        config.set_wmask_u16(
            self.at(LNKCTL),
            wm16(config, self.at(LNKCTL)) | LNKCTL_INIT_WMASK,
        );
    }

    /// pcie_cap_arifwd_init.
    pub fn arifwd_init(&self, config: &mut PciConfig) {
        let cap = config.get_u32(self.at(DEVCAP2)) | DEVCAP2_ARI;
        config.set_u32(self.at(DEVCAP2), cap);
        config.set_wmask_u16(
            self.at(DEVCTL2),
            wm16(config, self.at(DEVCTL2)) | DEVCTL2_ARI,
        );
    }

    pub fn arifwd_reset(&self, config: &mut PciConfig) {
        let v = config.get_u16(self.at(DEVCTL2)) & !DEVCTL2_ARI;
        config.set_u16(self.at(DEVCTL2), v);
    }

    /// pcie_cap_flr_init: FLR capable; the initiate bit is writable so a write can be seen.
    pub fn flr_init(&self, config: &mut PciConfig) {
        let cap = config.get_u32(self.at(DEVCAP)) | DEVCAP_FLR;
        config.set_u32(self.at(DEVCAP), cap);
        config.set_wmask_u16(
            self.at(DEVCTL),
            wm16(config, self.at(DEVCTL)) | DEVCTL_BCR_FLR,
        );
    }

    /// True (and the bit cleared) when the guest asked for a function-level reset.
    pub fn take_flr(&self, config: &mut PciConfig) -> bool {
        let ctl = config.get_u16(self.at(DEVCTL));
        if ctl & DEVCTL_BCR_FLR == 0 {
            return false;
        }
        config.set_u16(self.at(DEVCTL), ctl & !DEVCTL_BCR_FLR);
        true
    }

    /// pcie_cap_slot_init.
    pub fn slot_init(&mut self, config: &mut PciConfig, slot: SlotConfig) {
        let flags = config.get_u16(self.at(FLAGS)) | FLAGS_SLOT;
        config.set_u16(self.at(FLAGS), flags);
        let mut cap = (u32::from(slot.number) << SLTCAP_PSN_SHIFT)
            | SLTCAP_EIP
            | SLTCAP_PIP
            | SLTCAP_AIP
            | SLTCAP_ABP;
        if slot.hotplug {
            cap |= SLTCAP_HPS | SLTCAP_HPC;
        }
        let mut ctl = SLTCTL_PIC_OFF | SLTCTL_AIC_OFF;
        let mut wmask = SLTCTL_PIC
            | SLTCTL_AIC
            | SLTCTL_HPIE
            | SLTCTL_CCIE
            | SLTCTL_PDCE
            | SLTCTL_ABPE
            | SLTCTL_EIC;
        if slot.power_controller {
            cap |= SLTCAP_PCP;
            wmask |= SLTCTL_PCC;
            ctl &= !SLTCTL_PCC;
        }
        config.set_u32(self.at(SLTCAP), cap);
        config.set_u16(self.at(SLTCTL), ctl);
        config.set_wmask_u16(self.at(SLTCTL), wmask);
        config.set_w1cmask_u16(self.at(SLTSTA), HP_EV_SUPPORTED);
        self.slot = Some(slot);
    }

    /// pcie_cap_slot_reset (power controller and indicators follow whether device 0 of the
    /// secondary bus exists), plus what pcie_cap_slot_plug_cb latches when a device is
    /// cold-plugged -- Presence Detect State and Data Link Layer Link Active -- if the slot
    /// itself saw the plug (`plug_latched`). It does not when the ACPI PCI hot-plug handler
    /// owns cold-plugged bridges' buses (q35 >= 6.1, pc with bridge hot-plug):
    /// acpi_pcihp_device_plug_cb returns early for cold-plugged devices, so QEMU 10.2 shows
    /// both bits clear. Neither bit is touched by QEMU's reset, so re-applying them here
    /// after restoring the power-on snapshot keeps them as plugged.
    pub fn slot_reset(&self, config: &mut PciConfig, populated: bool, plug_latched: bool) {
        let Some(slot) = self.slot else { return };
        let mut ctl = config.get_u16(self.at(SLTCTL))
            & !(SLTCTL_EIC
                | SLTCTL_PIC
                | SLTCTL_AIC
                | SLTCTL_HPIE
                | SLTCTL_CCIE
                | SLTCTL_PDCE
                | SLTCTL_ABPE);
        ctl |= SLTCTL_AIC_OFF;
        if slot.power_controller {
            if populated {
                ctl &= !SLTCTL_PCC;
                ctl |= SLTCTL_PIC_ON;
            } else {
                ctl |= SLTCTL_PCC | SLTCTL_PIC_OFF;
            }
        }
        config.set_u16(self.at(SLTCTL), ctl);
        let mut sta =
            config.get_u16(self.at(SLTSTA)) & !(SLTSTA_EIS | SLTSTA_CC | SLTSTA_PDC | SLTSTA_ABP);
        if populated && plug_latched {
            sta |= SLTSTA_PDS;
            // The plugged device has x-pcie-lnksta-dllla (on for every machine type newer
            // than 2.3), so DLLLA is set whatever the port's LNKCAP says.
            let lnk = config.get_u16(self.at(LNKSTA)) | LNKSTA_DLLLA;
            config.set_u16(self.at(LNKSTA), lnk);
        }
        config.set_u16(self.at(SLTSTA), sta);
    }

    /// pcie_cap_root_init / pcie_cap_root_reset.
    pub fn root_init(&self, config: &mut PciConfig) {
        config.set_wmask_u16(self.at(RTCTL), RTCTL_SERR_ENABLES);
    }

    pub fn root_reset(&self, config: &mut PciConfig) {
        config.set_u16(self.at(RTCTL), 0);
    }

    pub fn slot_regs(&self, config: &PciConfig) -> (u16, u16) {
        (
            config.get_u16(self.at(SLTCTL)),
            config.get_u16(self.at(SLTSTA)),
        )
    }

    /// pcie_cap_slot_write_config after the masked write; `old` is (SLTCTL, SLTSTA) before
    /// it and `written_sta` the bytes the guest wrote to SLTSTA, if any. Returns whether the
    /// slot control register was written (a command, which completes at once).
    pub fn slot_write(
        &self,
        config: &mut PciConfig,
        old: (u16, u16),
        written_sta: Option<u16>,
        wrote_ctl: bool,
    ) -> bool {
        if self.slot.is_none() {
            return false;
        }
        let (_, old_sta) = old;
        let mut sta = config.get_u16(self.at(SLTSTA));
        if let Some(v) = written_sta {
            // Guests clear every bit at init; clearing a bit that was not set would lose an
            // event, so such a write leaves the latched events alone.
            if v & !old_sta & SLOT_EVENTS != 0 {
                sta = (sta & !SLOT_EVENTS) | (old_sta & SLOT_EVENTS);
                config.set_u16(self.at(SLTSTA), sta);
            }
        }
        if !wrote_ctl {
            return false;
        }
        let ctl = config.get_u16(self.at(SLTCTL));
        if ctl & SLTCTL_EIC != 0 {
            // The interlock control bit reads as zero and toggles the interlock status.
            config.set_u16(self.at(SLTCTL), ctl & !SLTCTL_EIC);
            sta ^= SLTSTA_EIS;
            config.set_u16(self.at(SLTSTA), sta);
        }
        true
    }

    /// pcie_sltctl_powered_off: power controller off and power indicator off.
    pub fn powered_off(ctl: u16) -> bool {
        ctl & SLTCTL_PCC != 0 && ctl & SLTCTL_PIC == SLTCTL_PIC_OFF
    }

    /// A device appeared in the slot (pcie_cap_slot_plug_cb for a hot-added function 0):
    /// Presence Detect State and Data Link Layer Link Active set.
    pub fn slot_present(&self, config: &mut PciConfig, present: bool) {
        let sta = config.get_u16(self.at(SLTSTA));
        let lnk = config.get_u16(self.at(LNKSTA));
        if present {
            config.set_u16(self.at(SLTSTA), sta | SLTSTA_PDS);
            config.set_u16(self.at(LNKSTA), lnk | LNKSTA_DLLLA);
        } else {
            config.set_u16(self.at(SLTSTA), sta & !SLTSTA_PDS);
            config.set_u16(self.at(LNKSTA), lnk & !LNKSTA_DLLLA);
        }
    }

    /// pcie_cap_slot_enable_power: the power controller on (ACPI hot-plug into a port).
    pub fn slot_enable_power(&self, config: &mut PciConfig) {
        let ctl = config.get_u16(self.at(SLTCTL));
        config.set_u16(self.at(SLTCTL), ctl & !SLTCTL_PCC);
    }

    /// Clear `bits` of SLTSTA without an event.
    pub fn slot_clear(&self, config: &mut PciConfig, bits: u16) {
        let sta = config.get_u16(self.at(SLTSTA));
        config.set_u16(self.at(SLTSTA), sta & !bits);
    }

    /// Latch `event` in SLTSTA; true when it was not already set (pcie_cap_slot_event).
    pub fn slot_event(&self, config: &mut PciConfig, event: u16) -> bool {
        let sta = config.get_u16(self.at(SLTSTA));
        if sta & event == event {
            return false;
        }
        config.set_u16(self.at(SLTSTA), sta | event);
        true
    }

    /// hotplug_event_update_event_status: whether the slot wants an interrupt.
    pub fn hotplug_pending(&self, config: &PciConfig) -> bool {
        if self.slot.is_none() {
            return false;
        }
        let (ctl, sta) = self.slot_regs(config);
        ctl & SLTCTL_HPIE != 0 && sta & ctl & HP_EV_SUPPORTED != 0
    }

    /// Interrupt message number in the flags register (MSI/MSI-X vector for slot events).
    pub fn msg_vector(&self, config: &PciConfig) -> u8 {
        ((config.get_u16(self.at(FLAGS)) >> 9) & 0x1f) as u8
    }

    /// pcie_sync_bridge_lnk: a downstream port reports the link of the device at function 0
    /// below it (clamped to its own capabilities), or its own maximum with nothing there.
    /// Since QEMU 10.0 ("pci: ensure valid link status bits for downstream ports") a zero
    /// width or speed is then raised to x1 / 2.5 GT/s in either case, so a port whose LNKCAP
    /// has none (xio3130-downstream) still reports x1 2.5 GT/s.
    pub fn sync_link(&self, config: &mut PciConfig, partner: Option<u16>) {
        let cap = config.get_u32(self.at(LNKCAP));
        let mlw = (cap & LNKCAP_MLW) as u16;
        let sls = (cap & LNKCAP_SLS) as u16;
        let mut link = match partner {
            None => (cap as u16) & (LNKSTA_NLW | LNKSTA_CLS),
            Some(p) => ((p & LNKSTA_NLW).min(mlw)) | ((p & LNKSTA_CLS).min(sls)),
        };
        if link & LNKSTA_NLW == 0 {
            link |= 1 << 4;
        }
        if link & LNKSTA_CLS == 0 {
            link |= 1;
        }
        let sta = config.get_u16(self.at(LNKSTA)) & !(LNKSTA_NLW | LNKSTA_CLS);
        config.set_u16(self.at(LNKSTA), sta | link);
    }
}

fn wm16(config: &PciConfig, offset: usize) -> u16 {
    u16::from(config.wmask_u8(offset)) | (u16::from(config.wmask_u8(offset + 1)) << 8)
}

/// LNKSTA of an express function's capability, for a port above it.
pub fn link_status_of(config: &PciConfig) -> Option<u16> {
    config
        .find_capability(CAP_ID_EXP)
        .map(|o| config.get_u16(o + LNKSTA))
}
