//! MAC addresses of network functions as QEMU assigns them: an explicit `mac=` is kept,
//! every other NIC gets 52:54:00:12:34:xx with the lowest free xx from 0x56, in creation
//! order (net/net.c qemu_macaddr_default_if_unset, qemu_macaddr_get_free/set_used).
//! Explicit MACs inside that range mark their index used for the NICs created after them.

use machine::{PciFunctionPlan, Plan};

/// QEMU's locally administered default prefix.
pub const DEFAULT_MAC_PREFIX: [u8; 5] = [0x52, 0x54, 0x00, 0x12, 0x34];
/// First index handed out (…:56).
const FIRST_INDEX: u8 = 0x56;
/// The first default MAC, 52:54:00:12:34:56.
pub const FIRST_DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, FIRST_INDEX];

/// Parse `52:54:00:12:34:56` (':' or '-' separated hex bytes).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split([':', '-']);
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The MAC QEMU gives `target` (matched by bus and devfn), None if it is not a NIC of the
/// plan or its `mac=` does not parse. `is_nic` says which functions are NICs (their kind).
pub fn mac_of(
    plan: &Plan,
    target: &PciFunctionPlan,
    is_nic: &dyn Fn(&PciFunctionPlan) -> bool,
) -> Option<[u8; 6]> {
    let mut used = [0u32; 256];
    for f in plan.pci.iter().filter(|f| is_nic(f)) {
        let explicit = f
            .properties
            .get("mac")
            .map(|s| s.trim())
            .filter(|s| !s.is_empty() && *s != "00:00:00:00:00:00");
        let mac = match explicit {
            Some(s) => parse_mac(s),
            None => {
                let index = (FIRST_INDEX..0xff)
                    .find(|&i| used[usize::from(i)] == 0)
                    .unwrap_or(0xff);
                let mut m = [0u8; 6];
                m[..5].copy_from_slice(&DEFAULT_MAC_PREFIX);
                m[5] = index;
                Some(m)
            }
        };
        if let Some(m) = mac {
            if m[..5] == DEFAULT_MAC_PREFIX && m[5] >= FIRST_INDEX && m[5] < 0xff {
                used[usize::from(m[5])] += 1;
            }
        }
        if f.bus == target.bus && f.devfn() == target.devfn() {
            return mac;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_macs() {
        assert_eq!(
            parse_mac("52:54:00:12:34:56"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(
            parse_mac("0a-0B-0c-0d-0e-0f"),
            Some([10, 11, 12, 13, 14, 15])
        );
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
        assert_eq!(parse_mac("52:54:00:12:34:5g"), None);
        assert_eq!(parse_mac("52:54:00:12:34:567"), None);
    }
}
