//! Discovery of virtio-pci functions and their interfaces.

use super::*;

#[derive(Clone, Copy)]
pub(crate) struct Device {
    pub(crate) bdf: Bdf,
    pub(crate) device_id: u16,
    pub(crate) kind: u16,
    pub(crate) bars: [Option<Bar>; 6],
    pub(crate) caps: ModernCaps,
    pub(crate) msix_enabled: bool,
}

impl Device {
    pub(crate) fn probe(f: &Function) -> Self {
        let cfg = &Cf8;
        let bdf = f.bdf;
        let device_id = f.device();
        let kind = if device_id >= FIRST_MODERN {
            device_id - FIRST_MODERN
        } else {
            // Transitional: the subsystem device ID is the virtio type
            // (as Linux's legacy driver reads it).
            (cfg.read32(bdf, 0x2c) >> 16) as u16
        };
        let mut caps = ModernCaps::default();
        let mut msix_enabled = false;
        for off in pci::capabilities(cfg, bdf) {
            let head = cfg.read32(bdf, off);
            match head as u8 {
                CAP_MSIX => msix_enabled = head & (1 << 31) != 0,
                CAP_VENDOR => {
                    let cfg_type = (head >> 24) as u8;
                    if !(CFG_COMMON..=CFG_PCI).contains(&cfg_type) {
                        continue;
                    }
                    caps.any = true;
                    let loc = CapLoc {
                        bar: cfg.read32(bdf, off + 4) as u8,
                        offset: cfg.read32(bdf, off + 8),
                        length: cfg.read32(bdf, off + 12),
                    };
                    // The first capability of each type is the one to use.
                    match cfg_type {
                        CFG_COMMON => caps.common = caps.common.or(Some(loc)),
                        CFG_NOTIFY if caps.notify.is_none() => {
                            caps.notify = Some((loc, cfg.read32(bdf, off + 16)))
                        }
                        CFG_DEVICE => caps.device = caps.device.or(Some(loc)),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        Self {
            bdf,
            device_id,
            kind,
            bars: pci::bars(cfg, f, false),
            caps,
            msix_enabled,
        }
    }

    /// BAR0 as a legacy I/O window, if it is one.
    pub(crate) fn io_bar0(&self) -> Option<Bar> {
        self.bars[0].filter(|b| b.kind == BarKind::Io)
    }

    pub(crate) fn legacy(&self) -> bool {
        self.io_bar0().is_some() && self.device_id < FIRST_MODERN
    }

    pub(crate) fn legacy_transport(&self) -> Result<Transport, Reason> {
        let bar = self.io_bar0().ok_or("no-io-bar")?;
        if bar.addr == 0 || bar.addr + LEG_MIN_IO > 0x1_0000 {
            return Err("io-bar-unassigned");
        }
        let config = if self.msix_enabled {
            LEG_CONFIG_MSIX
        } else {
            LEG_CONFIG
        };
        Ok(Transport::Legacy {
            io: bar.addr as u16,
            config,
        })
    }

    /// Address of a structure described by a capability, checked to lie
    /// in an assigned memory BAR inside the identity map.
    pub(crate) fn locate(&self, loc: CapLoc) -> Result<u64, Reason> {
        let bar = self
            .bars
            .get(usize::from(loc.bar))
            .copied()
            .flatten()
            .ok_or("cap-bar-missing")?;
        if bar.kind == BarKind::Io {
            return Err("cap-bar-io");
        }
        if bar.addr == 0 {
            return Err("bar-unassigned");
        }
        let addr = bar.addr + u64::from(loc.offset);
        if !phys::in_range(addr, u64::from(loc.length)) {
            return Err("bar-unmapped");
        }
        Ok(addr)
    }

    pub(crate) fn modern_transport(&self) -> Result<Transport, Reason> {
        let common = self.caps.common.ok_or("no-common-cap")?;
        let (notify, notify_mult) = self.caps.notify.ok_or("no-notify-cap")?;
        if common.length < COM_LEN {
            return Err("common-cap-short");
        }
        let device = self.caps.device;
        Ok(Transport::Modern(Modern {
            common: self.locate(common)?,
            notify: self.locate(notify)?,
            notify_len: notify.length,
            notify_mult,
            device: device.map(|d| self.locate(d)).transpose()?.unwrap_or(0),
            device_len: device.map_or(0, |d| d.length),
        }))
    }
}

/// Enables I/O and memory decoding and bus mastering.
pub(crate) fn enable(bdf: Bdf) {
    let cfg = &Cf8;
    let command = cfg.read32(bdf, pci::REG_COMMAND) & 0xffff;
    let wanted = command | pci::COMMAND_IO | pci::COMMAND_MEM | pci::COMMAND_BUS_MASTER;
    if wanted != command {
        cfg.write32(bdf, pci::REG_COMMAND, wanted);
    }
}
