//! Type-1 forwarding windows as QEMU decodes them (pci_bridge_get_base/limit and the
//! aliases of pci_bridge_region_init): I/O (16- or 32-bit), memory and 64-bit prefetchable
//! memory, each open only while base <= limit and the bridge's command register enables that
//! space. A BAR behind a bridge is reachable only through one of these.

use super::config::PciConfig;
use super::device::Space;
use super::regs::*;

const IO_RANGE_TYPE_32: u8 = 0x01;
const IO_RANGE_MASK: u8 = 0xf0;
const MEMORY_RANGE_MASK: u16 = 0xfff0;
const PREF_RANGE_MASK: u16 = 0xfff0;

/// Inclusive [base, limit] of the I/O window, or None when closed or disabled.
pub fn io_window(cfg: &PciConfig) -> Option<(u64, u64)> {
    if cfg.command() & COMMAND_IO == 0 {
        return None;
    }
    let io = |lo: usize, hi: usize| {
        let b = cfg.get_u8(lo);
        let mut v = u64::from(b & IO_RANGE_MASK) << 8;
        if b & IO_RANGE_TYPE_32 != 0 {
            v |= u64::from(cfg.get_u16(hi)) << 16;
        }
        v
    };
    let base = io(IO_BASE, IO_BASE_UPPER16);
    let limit = io(IO_LIMIT, IO_LIMIT_UPPER16) | 0xfff;
    (base <= limit).then_some((base, limit))
}

/// Inclusive range of the non-prefetchable memory window.
pub fn mem_window(cfg: &PciConfig) -> Option<(u64, u64)> {
    if cfg.command() & COMMAND_MEMORY == 0 {
        return None;
    }
    let base = u64::from(cfg.get_u16(MEMORY_BASE) & MEMORY_RANGE_MASK) << 16;
    let limit = (u64::from(cfg.get_u16(MEMORY_LIMIT) & MEMORY_RANGE_MASK) << 16) | 0xf_ffff;
    (base <= limit).then_some((base, limit))
}

/// Inclusive range of the prefetchable memory window (64-bit when the type bits say so).
pub fn pref_window(cfg: &PciConfig) -> Option<(u64, u64)> {
    if cfg.command() & COMMAND_MEMORY == 0 {
        return None;
    }
    let pref = |lo: usize, hi: usize| {
        let w = cfg.get_u16(lo);
        let mut v = u64::from(w & PREF_RANGE_MASK) << 16;
        if w & PREF_RANGE_TYPE_64 != 0 {
            v |= u64::from(cfg.get_u32(hi)) << 32;
        }
        v
    };
    let base = pref(PREF_MEMORY_BASE, PREF_BASE_UPPER32);
    let limit = pref(PREF_MEMORY_LIMIT, PREF_LIMIT_UPPER32) | 0xf_ffff;
    (base <= limit).then_some((base, limit))
}

/// Whether the bridge forwards all of `[base, base + size)` in `space` to its secondary bus.
pub fn forwards(cfg: &PciConfig, space: Space, base: u64, size: u64) -> bool {
    let Some(last) = size.checked_sub(1).and_then(|s| base.checked_add(s)) else {
        return false;
    };
    let inside = |w: Option<(u64, u64)>| w.is_some_and(|(lo, hi)| lo <= base && last <= hi);
    match space {
        Space::Io => inside(io_window(cfg)),
        Space::Mmio => inside(mem_window(cfg)) || inside(pref_window(cfg)),
    }
}

/// pci_bridge_disable_base_limit: base above limit in every window, so nothing forwards.
pub fn disable_base_limit(cfg: &mut PciConfig) {
    let io_base = cfg.get_u8(IO_BASE) | IO_RANGE_MASK;
    cfg.set_u8(IO_BASE, io_base);
    let io_limit = cfg.get_u8(IO_LIMIT) & !IO_RANGE_MASK;
    cfg.set_u8(IO_LIMIT, io_limit);
    let mb = cfg.get_u16(MEMORY_BASE) | MEMORY_RANGE_MASK;
    cfg.set_u16(MEMORY_BASE, mb);
    let ml = cfg.get_u16(MEMORY_LIMIT) & !MEMORY_RANGE_MASK;
    cfg.set_u16(MEMORY_LIMIT, ml);
    let pb = cfg.get_u16(PREF_MEMORY_BASE) | PREF_RANGE_MASK;
    cfg.set_u16(PREF_MEMORY_BASE, pb);
    let pl = cfg.get_u16(PREF_MEMORY_LIMIT) & !PREF_RANGE_MASK;
    cfg.set_u16(PREF_MEMORY_LIMIT, pl);
    cfg.set_u32(PREF_BASE_UPPER32, 0);
    cfg.set_u32(PREF_LIMIT_UPPER32, 0);
}

/// pci_bridge_reset: bus numbers, secondary latency timer, windows (to zero) and bridge
/// control cleared; the read-only type bits stay.
pub fn bridge_reset(cfg: &mut PciConfig) {
    for r in [
        PRIMARY_BUS,
        SECONDARY_BUS,
        SUBORDINATE_BUS,
        SEC_LATENCY_TIMER,
    ] {
        cfg.set_u8(r, 0);
    }
    let b = cfg.get_u8(IO_BASE) & !IO_RANGE_MASK;
    cfg.set_u8(IO_BASE, b);
    let l = cfg.get_u8(IO_LIMIT) & !IO_RANGE_MASK;
    cfg.set_u8(IO_LIMIT, l);
    for r in [
        MEMORY_BASE,
        MEMORY_LIMIT,
        PREF_MEMORY_BASE,
        PREF_MEMORY_LIMIT,
    ] {
        let v = cfg.get_u16(r) & !0xfff0;
        cfg.set_u16(r, v);
    }
    cfg.set_u32(PREF_BASE_UPPER32, 0);
    cfg.set_u32(PREF_LIMIT_UPPER32, 0);
    cfg.set_u16(BRIDGE_CONTROL, 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use machine::PciIdentity;

    fn bridge() -> PciConfig {
        PciConfig::new(
            &PciIdentity {
                vendor_id: 0x1b36,
                device_id: 1,
                class_code: 0x060400,
                revision: 0,
                subsystem_vendor_id: None,
                subsystem_id: None,
                header_type: 1,
            },
            false,
            false,
        )
    }

    #[test]
    fn windows_decode_like_qemu() {
        let mut c = bridge();
        // Fresh header: base = limit = 0, i.e. open at 0 but disabled by the command register.
        assert_eq!(io_window(&c), None);
        c.write(COMMAND, &[3, 0]);
        assert_eq!(io_window(&c), Some((0, 0xfff)));
        assert_eq!(mem_window(&c), Some((0, 0xf_ffff)));
        disable_base_limit(&mut c);
        assert_eq!(c.get_u16(IO_BASE), 0x00f0);
        assert_eq!(c.get_u32(MEMORY_BASE), 0x0000_fff0);
        assert_eq!(c.get_u32(PREF_MEMORY_BASE), 0x0001_fff1);
        assert_eq!(
            (io_window(&c), mem_window(&c), pref_window(&c)),
            (None, None, None)
        );
        c.write(IO_BASE, &[0xc0, 0xc0]);
        assert_eq!(io_window(&c), Some((0xc000, 0xcfff)));
        c.write(MEMORY_BASE, &0xfe10_fe00u32.to_le_bytes());
        assert_eq!(mem_window(&c), Some((0xfe00_0000, 0xfe1f_ffff)));
        c.write(PREF_MEMORY_BASE, &0x0010_0000u32.to_le_bytes());
        c.write(PREF_BASE_UPPER32, &8u32.to_le_bytes());
        c.write(PREF_LIMIT_UPPER32, &8u32.to_le_bytes());
        assert_eq!(pref_window(&c), Some((0x8_0000_0000, 0x8_001f_ffff)));
        assert!(forwards(&c, Space::Mmio, 0xfe10_0000, 0x1000));
        assert!(forwards(&c, Space::Mmio, 0x8_0010_0000, 0x10_0000));
        assert!(
            !forwards(&c, Space::Mmio, 0xfe1f_f000, 0x2000),
            "straddles the limit"
        );
        assert!(!forwards(&c, Space::Io, 0xd000, 0x20));
        assert!(forwards(&c, Space::Io, 0xc020, 0x20));
        c.write(COMMAND, &[2, 0]);
        assert!(!forwards(&c, Space::Io, 0xc020, 0x20), "I/O decode off");
        bridge_reset(&mut c);
        assert_eq!(c.get_u32(PREF_MEMORY_BASE), 0x0001_0001);
        assert_eq!(c.get_u16(IO_BASE), 0);
    }
}
