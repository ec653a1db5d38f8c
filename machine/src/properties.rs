//! Typed properties of device types and machine options: their declared types, how QEMU parses
//! a value of each type from text, and the canonical text a plan stores.

use crate::error::PlanError;
use serde::{Deserialize, Serialize};

/// A property's type, named as QEMU names it in `-device TYPE,help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PropType {
    #[serde(rename = "bool")]
    Bool,
    #[serde(rename = "OnOffAuto")]
    OnOffAuto,
    #[serde(rename = "OnOffSplit")]
    OnOffSplit,
    #[serde(rename = "uint8")]
    Uint8,
    #[serde(rename = "uint16")]
    Uint16,
    #[serde(rename = "uint32")]
    Uint32,
    #[serde(rename = "uint64")]
    Uint64,
    #[serde(rename = "int32")]
    Int32,
    #[serde(rename = "int64")]
    Int64,
    #[serde(rename = "size")]
    Size,
    #[serde(rename = "str")]
    Str,
    /// PCI `addr`: `SLOT[.FN]` in hex.
    #[serde(rename = "pci-devfn")]
    PciDevfn,
    /// An enum with its values listed in `PropertyDef::values`.
    #[serde(rename = "enum")]
    Enum,
}

impl PropType {
    /// The type name `-device TYPE,help` prints.
    pub fn help_name(self) -> &'static str {
        match self {
            PropType::Bool => "bool",
            PropType::OnOffAuto => "OnOffAuto",
            PropType::OnOffSplit => "OnOffSplit",
            PropType::Uint8 => "uint8",
            PropType::Uint16 => "uint16",
            PropType::Uint32 => "uint32",
            PropType::Uint64 => "uint64",
            PropType::Int32 | PropType::PciDevfn => "int32",
            PropType::Int64 => "int64",
            PropType::Size => "size",
            PropType::Str | PropType::Enum => "str",
        }
    }

    /// QEMU's generic description of the type, used when a property has none of its own.
    pub fn default_description(self) -> Option<&'static str> {
        match self {
            PropType::Bool => Some("on/off"),
            PropType::OnOffAuto => Some("on/off/auto"),
            PropType::OnOffSplit => Some("on/off/split"),
            PropType::PciDevfn => Some("Slot and optional function number, example: 06.0 or 06"),
            _ => None,
        }
    }
}

/// One property of a device type (or option of a machine type), as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PropertyDef {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: PropType,
    /// Default as QEMU reports it (`false`, `"auto"`, `-1`); absent when the property has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Allowed values of an `enum` property.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Accepted (QEMU's command lines set it) but machina does not do what QEMU does with it,
    /// at least at its default: virtio-net's `rss`, `acpi-index` without the ACPI method, a
    /// port's `hotplug=on` without hot-plug. Introspection leaves it out, so clients do not
    /// rely on it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inert: bool,
}

impl PropertyDef {
    /// The default in canonical plan text, if any.
    pub fn default_text(&self) -> Option<String> {
        let v = self.default.as_ref()?;
        Some(match v {
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => {
                if self.ty == PropType::PciDevfn {
                    match n.as_i64() {
                        Some(d) if (0..=255).contains(&d) => format_devfn(d as u8),
                        _ => "-1".to_string(),
                    }
                } else {
                    n.to_string()
                }
            }
            other => other.to_string(),
        })
    }

    /// Parse `text` given for this property into canonical plan text, with QEMU's errors.
    /// `owner` is the QOM type (for `Property 'type.name' ...` messages).
    pub fn canonical(&self, owner: &str, text: &str) -> Result<String, PlanError> {
        canonical_value(self.ty, &self.name, owner, &self.values, text)
    }
}

/// Parse `text` for a property of type `ty` into canonical text.
pub fn canonical_value(
    ty: PropType,
    name: &str,
    owner: &str,
    values: &[String],
    text: &str,
) -> Result<String, PlanError> {
    match ty {
        PropType::Bool => parse_bool(name, text).map(|b| b.to_string()),
        PropType::OnOffAuto => parse_enum(name, text, &["on", "off", "auto"]),
        PropType::OnOffSplit => parse_enum(name, text, &["on", "off", "split"]),
        PropType::Enum => {
            let vals: Vec<&str> = values.iter().map(String::as_str).collect();
            parse_enum(name, text, &vals)
        }
        PropType::Uint8 => parse_uint(name, text, u8::MAX as u64, "uint8_t").map(|v| v.to_string()),
        PropType::Uint16 => {
            parse_uint(name, text, u16::MAX as u64, "uint16_t").map(|v| v.to_string())
        }
        PropType::Uint32 => {
            parse_uint(name, text, u32::MAX as u64, "uint32_t").map(|v| v.to_string())
        }
        PropType::Uint64 => parse_uint(name, text, u64::MAX, "uint64_t").map(|v| v.to_string()),
        PropType::Int32 => parse_int(name, text, i32::MIN as i64, i32::MAX as i64, "int32_t")
            .map(|v| v.to_string()),
        PropType::Int64 => {
            parse_int(name, text, i64::MIN, i64::MAX, "int64_t").map(|v| v.to_string())
        }
        PropType::Size => parse_size(text)
            .map(|v| v.to_string())
            .ok_or_else(|| PlanError::ExpectsSize(name.to_string())),
        PropType::Str => Ok(text.to_string()),
        PropType::PciDevfn => {
            parse_devfn(text)
                .map(format_devfn)
                .ok_or_else(|| PlanError::BadPropertyValue {
                    ty: owner.to_string(),
                    property: name.to_string(),
                    value: text.to_string(),
                })
        }
    }
}

/// QEMU's `qapi_bool_parse`: on/yes/true/y and off/no/false/n.
pub fn parse_bool(name: &str, text: &str) -> Result<bool, PlanError> {
    match text {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => Err(PlanError::ExpectsBool(name.to_string())),
    }
}

fn parse_enum(name: &str, text: &str, values: &[&str]) -> Result<String, PlanError> {
    if values.contains(&text) {
        Ok(text.to_string())
    } else {
        Err(PlanError::BadEnumValue {
            name: name.to_string(),
            value: text.to_string(),
        })
    }
}

/// `strtoull(text, 0)`-style: `0x` hex, leading-0 octal, else decimal.
pub fn parse_u64_auto(text: &str) -> Option<u64> {
    let t = text.trim();
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else if t.len() > 1 && t.starts_with('0') {
        u64::from_str_radix(&t[1..], 8).ok()
    } else {
        t.parse().ok()
    }
}

fn parse_uint(name: &str, text: &str, max: u64, ty: &str) -> Result<u64, PlanError> {
    // Like QEMU's strtou64, a negative number wraps (and so is out of range below 64 bits).
    let v = parse_u64_auto(text)
        .or_else(|| {
            text.trim()
                .strip_prefix('-')
                .and_then(parse_u64_auto)
                .map(u64::wrapping_neg)
        })
        .ok_or_else(|| PlanError::ExpectsInteger(name.to_string()))?;
    if v > max {
        return Err(PlanError::IntegerOutOfRange {
            name: name.to_string(),
            ty: ty.to_string(),
        });
    }
    Ok(v)
}

fn parse_int(name: &str, text: &str, min: i64, max: i64, ty: &str) -> Result<i64, PlanError> {
    let t = text.trim();
    let (neg, body) = match t.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, t),
    };
    let mag = parse_u64_auto(body).ok_or_else(|| PlanError::ExpectsInteger(name.to_string()))?;
    let v = if neg {
        -(i128::from(mag))
    } else {
        i128::from(mag)
    };
    if v < i128::from(min) || v > i128::from(max) {
        return Err(PlanError::IntegerOutOfRange {
            name: name.to_string(),
            ty: ty.to_string(),
        });
    }
    Ok(v as i64)
}

/// `qemu_strtosz`: a number with an optional B/K/M/G/T/P/E suffix (binary multiples).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    let (num, mult) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() && !t.starts_with("0x") => {
            let m: u64 = match c.to_ascii_uppercase() {
                'B' => 1,
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'P' => 1 << 50,
                'E' => 1 << 60,
                _ => return None,
            };
            (&t[..t.len() - 1], m)
        }
        _ => (t, 1),
    };
    if let Some(h) = num.strip_prefix("0x") {
        return u64::from_str_radix(h, 16).ok()?.checked_mul(mult);
    }
    if num.contains('.') {
        let f: f64 = num.parse().ok()?;
        if !(0.0..1.8e19).contains(&f) {
            return None;
        }
        return Some((f * mult as f64) as u64);
    }
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// QEMU's `set_pci_devfn` text form: `SLOT` or `SLOT.FN`, both hex (`sscanf("%x.%x")`), so
/// `10` is slot 0x10. Returns the devfn.
pub fn parse_devfn(text: &str) -> Option<u8> {
    fn hex(s: &str) -> Option<u32> {
        let s = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .unwrap_or(s);
        if s.is_empty() || s.len() > 8 {
            return None;
        }
        u32::from_str_radix(s, 16).ok()
    }
    let (slot, func) = match text.split_once('.') {
        Some((s, f)) => (hex(s)?, hex(f)?),
        None => (hex(text)?, 0),
    };
    if slot > 31 || func > 7 {
        return None;
    }
    Some(((slot << 3) | func) as u8)
}

/// QEMU's `print_pci_devfn`: `%02x.%x`.
pub fn format_devfn(devfn: u8) -> String {
    format!("{:02x}.{:x}", devfn >> 3, devfn & 7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devfn_is_hex_like_qemu() {
        let table: &[(&str, Option<u8>)] = &[
            ("0x2", Some(0x10)),
            ("2", Some(0x10)),
            ("0x2.0x1", Some(0x11)),
            ("2.1", Some(0x11)),
            ("10", Some(0x80)),
            ("1f.7", Some(0xff)),
            ("0x20", None),
            ("2.8", None),
            ("zz", None),
            ("", None),
        ];
        for (text, want) in table {
            assert_eq!(parse_devfn(text), *want, "{text}");
        }
        assert_eq!(format_devfn(0x11), "02.1");
    }

    #[test]
    fn sizes() {
        let table: &[(&str, Option<u64>)] = &[
            ("4G", Some(4 << 30)),
            ("512M", Some(512 << 20)),
            ("1024", Some(1024)),
            ("1.5G", Some(3 << 29)),
            ("0x1000", Some(4096)),
            ("x", None),
        ];
        for (text, want) in table {
            assert_eq!(parse_size(text), *want, "{text}");
        }
    }

    #[test]
    fn scalar_errors() {
        assert_eq!(
            canonical_value(PropType::Bool, "usb", "m", &[], "maybe")
                .unwrap_err()
                .to_string(),
            "Parameter 'usb' expects 'on' or 'off'"
        );
        assert_eq!(
            canonical_value(PropType::OnOffAuto, "acpi", "m", &[], "maybe")
                .unwrap_err()
                .to_string(),
            "Parameter 'acpi' does not accept value 'maybe'"
        );
        assert_eq!(
            canonical_value(PropType::Uint8, "chassis", "m", &[], "300")
                .unwrap_err()
                .to_string(),
            "Parameter 'chassis' expects uint8_t"
        );
        assert_eq!(
            canonical_value(PropType::Int32, "x", "m", &[], "-5").unwrap(),
            "-5"
        );
        assert_eq!(
            canonical_value(PropType::PciDevfn, "addr", "e1000", &[], "0x20")
                .unwrap_err()
                .to_string(),
            "Property 'e1000.addr' doesn't take value '0x20'"
        );
    }
}
