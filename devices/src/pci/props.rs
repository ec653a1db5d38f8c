//! Tolerant reading of a function's plan properties (QEMU qtree-style strings with the
//! defaults applied). Missing keys fall back to the model's default; malformed values are
//! reported instead of guessed.

use super::PciError;
use std::collections::BTreeMap;

/// Read-only view over `PciFunctionPlan::properties`.
pub struct Props<'a> {
    map: &'a BTreeMap<String, String>,
}

impl<'a> Props<'a> {
    pub fn new(map: &'a BTreeMap<String, String>) -> Self {
        Self { map }
    }

    fn raw(&self, name: &str) -> Option<&'a str> {
        self.map
            .get(name)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    }

    fn invalid(name: &str, value: &str) -> PciError {
        PciError::InvalidProperty {
            name: name.into(),
            value: value.into(),
        }
    }

    /// A bool or OnOffAuto property: on/true/yes/1 and off/false/no/0; `auto` (and a missing
    /// key) gives `default`.
    pub fn bool(&self, name: &str, default: bool) -> Result<bool, PciError> {
        let Some(v) = self.raw(name) else {
            return Ok(default);
        };
        match v.to_ascii_lowercase().as_str() {
            "on" | "true" | "yes" | "y" | "1" => Ok(true),
            "off" | "false" | "no" | "n" | "0" => Ok(false),
            "auto" => Ok(default),
            _ => Err(Self::invalid(name, v)),
        }
    }

    /// An unsigned number: decimal or 0x-hex, with an optional binary size suffix (k, M, G,
    /// T); `-1` means all-ones, QEMU's "unset" for the reserve properties.
    pub fn u64(&self, name: &str, default: u64) -> Result<u64, PciError> {
        let Some(v) = self.raw(name) else {
            return Ok(default);
        };
        parse_u64(v).ok_or_else(|| Self::invalid(name, v))
    }

    pub fn u8(&self, name: &str, default: u8) -> Result<u8, PciError> {
        let v = self.u64(name, default.into())?;
        u8::try_from(v).map_err(|_| Self::invalid(name, &v.to_string()))
    }

    pub fn u16(&self, name: &str, default: u16) -> Result<u16, PciError> {
        let v = self.u64(name, default.into())?;
        u16::try_from(v).map_err(|_| Self::invalid(name, &v.to_string()))
    }

    /// A string property as given, or `default`.
    pub fn str(&self, name: &str, default: &'a str) -> &'a str {
        self.raw(name).unwrap_or(default)
    }
}

fn parse_u64(v: &str) -> Option<u64> {
    if v == "-1" {
        return Some(u64::MAX);
    }
    let (digits, shift) = match v.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() && !v.starts_with("0x") => {
            let shift = match c.to_ascii_lowercase() {
                'b' => 0,
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                _ => return None,
            };
            (&v[..i], shift)
        }
        _ => (v, 0),
    };
    let n = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16).ok()?,
        None => digits.parse::<u64>().ok()?,
    };
    n.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerant_values() {
        let mut m = BTreeMap::new();
        for (k, v) in [
            ("a", "on"),
            ("b", "False"),
            ("c", "auto"),
            ("d", "0x10"),
            ("e", "4K"),
            ("f", "-1"),
            ("g", "300"),
            ("h", "maybe"),
            ("i", " 7 "),
        ] {
            m.insert(k.to_string(), v.to_string());
        }
        let p = Props::new(&m);
        assert!(p.bool("a", false).unwrap());
        assert!(!p.bool("b", true).unwrap());
        assert!(p.bool("c", true).unwrap());
        assert!(p.bool("missing", true).unwrap());
        assert!(p.bool("h", true).is_err());
        assert_eq!(p.u64("d", 0).unwrap(), 16);
        assert_eq!(p.u64("e", 0).unwrap(), 4096);
        assert_eq!(p.u64("f", 0).unwrap(), u64::MAX);
        assert!(p.u8("g", 0).is_err());
        assert_eq!(p.u16("g", 0).unwrap(), 300);
        assert_eq!(p.u8("i", 0).unwrap(), 7);
        assert!(p.u64("h", 0).is_err());
    }
}
