//! MAC addresses as QEMU reads, prints and assigns them: `set_mac` in
//! hw/core/qdev-properties-system.c (the `mac=` grammar) and `qemu_macaddr_default_if_unset`
//! in net/net.c (the default address of a NIC without `mac=`).

use std::fmt;

/// A 6-byte Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

/// QEMU's locally administered prefix of default addresses (52:54:00:12:34:xx).
const DEFAULT_PREFIX: [u8; 5] = [0x52, 0x54, 0x00, 0x12, 0x34];
/// The first last byte handed out (…:56); QEMU's table covers 0x56..0xff.
const FIRST_INDEX: u8 = 0x56;

impl MacAddr {
    /// The address of the first NIC without `mac=` (52:54:00:12:34:56).
    pub const FIRST_DEFAULT: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, FIRST_INDEX]);

    /// QEMU's `set_mac`: exactly six two-digit hex bytes, each separated by `:` or `-` (the
    /// two may be mixed), nothing before or after.
    pub fn parse(text: &str) -> Option<MacAddr> {
        let b = text.as_bytes();
        if b.len() != 17 {
            return None;
        }
        let mut mac = [0u8; 6];
        for (i, byte) in mac.iter_mut().enumerate() {
            let pos = i * 3;
            if i < 5 && !matches!(b[pos + 2], b':' | b'-') {
                return None;
            }
            let hex = |c: u8| (c as char).to_digit(16);
            *byte = (hex(b[pos])? * 16 + hex(b[pos + 1])?) as u8;
        }
        Some(MacAddr(mac))
    }

    pub fn bytes(self) -> [u8; 6] {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0 == [0; 6]
    }
}

/// `%02x:%02x:%02x:%02x:%02x:%02x`, as QEMU prints a `mac` property.
impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// QEMU's `mac_table`: which default last bytes are taken, NIC by NIC in creation order.
#[derive(Debug, Clone)]
pub struct MacAllocator {
    used: [u32; 256],
}

impl Default for MacAllocator {
    fn default() -> Self {
        Self { used: [0; 256] }
    }
}

impl MacAllocator {
    /// `qemu_macaddr_default_if_unset`: a NIC's address given its `mac=` (None or all
    /// zeros: unset). An explicit address with QEMU's prefix marks its last byte taken; an
    /// unset one gets the prefix and the lowest free byte from 0x56 (0xff once all are
    /// taken, as QEMU's -1 does).
    pub fn assign(&mut self, explicit: Option<MacAddr>) -> MacAddr {
        let mac = match explicit.filter(|m| !m.is_zero()) {
            Some(m) if m.0[..5] != DEFAULT_PREFIX => return m,
            Some(m) => m,
            None => {
                let last = (FIRST_INDEX..0xff)
                    .find(|&i| self.used[usize::from(i)] == 0)
                    .unwrap_or(0xff);
                let mut m = [0u8; 6];
                m[..5].copy_from_slice(&DEFAULT_PREFIX);
                m[5] = last;
                MacAddr(m)
            }
        };
        if (FIRST_INDEX..0xff).contains(&mac.0[5]) {
            self.used[usize::from(mac.0[5])] += 1;
        }
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_mac_grammar() {
        let ok: &[(&str, [u8; 6])] = &[
            ("52:54:00:12:34:56", [0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            ("0a-0B-0c-0d-0e-0f", [10, 11, 12, 13, 14, 15]),
            ("52-54-00:12:34:5f", [0x52, 0x54, 0, 0x12, 0x34, 0x5f]),
            ("FF:FF:FF:FF:FF:FF", [0xff; 6]),
        ];
        for (text, want) in ok {
            assert_eq!(MacAddr::parse(text), Some(MacAddr(*want)), "{text}");
        }
        // All refused by QEMU 7.2 ("Property 'e1000.mac' doesn't take value ...").
        for bad in [
            "",
            "zz",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52:54:00:12:34:5g",
            "52:54:00:12:34:567",
            "1:2:3:4:5:6",
            "52.54.00.12.34.56",
            " 52:54:00:12:34:56",
            "52:54:00:12:34:56 ",
            "0x:54:00:12:34:56",
            "+5:54:00:12:34:56",
            "52:54:00:12:34:é",
        ] {
            assert_eq!(MacAddr::parse(bad), None, "{bad:?}");
        }
        assert_eq!(
            MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 0xef]).to_string(),
            "52:54:00:ab:cd:ef"
        );
    }

    #[test]
    fn default_addresses_as_qemu_assigns_them() {
        let mut t = MacAllocator::default();
        assert_eq!(t.assign(None), MacAddr::FIRST_DEFAULT);
        // An explicit address in the range takes its byte; an explicit zero is unset.
        let taken = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x57]);
        assert_eq!(t.assign(Some(taken)), taken);
        assert_eq!(t.assign(Some(MacAddr([0; 6]))).0[5], 0x58);
        // Other prefixes leave the table alone.
        let other = MacAddr([0x02, 0, 0, 0, 0, 0x59]);
        assert_eq!(t.assign(Some(other)), other);
        assert_eq!(t.assign(None).0[5], 0x59);
        let mut full = MacAllocator::default();
        for _ in FIRST_INDEX..0xff {
            full.assign(None);
        }
        assert_eq!(full.assign(None).0[5], 0xff);
    }
}
