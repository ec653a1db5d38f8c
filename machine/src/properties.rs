//! Typed properties of device types and machine options: their declared types, how QEMU parses
//! a value of each type from text, and the canonical text a plan stores.

use crate::error::PlanError;
use crate::mac::MacAddr;
use crate::value::{OnOffAuto, PropValue};
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
    /// An Ethernet address (QEMU's `qdev_prop_macaddr`, shown as `str`).
    #[serde(rename = "macaddr")]
    MacAddr,
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
            PropType::Str | PropType::Enum | PropType::MacAddr => "str",
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
    /// The default as a typed value, if any (a default that does not fit the declared type,
    /// from a machine definition, is kept as text).
    pub fn default_value(&self) -> Option<PropValue> {
        let v = self.default.as_ref()?;
        let text = match v {
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) if self.ty == PropType::PciDevfn => {
                return Some(PropValue::Devfn(
                    n.as_i64()
                        .filter(|d| (0..=255).contains(d))
                        .map(|d| d as u8),
                ));
            }
            serde_json::Value::Number(n) => n.to_string(),
            other => other.to_string(),
        };
        Some(
            self.decode(&self.name, &text)
                .unwrap_or(PropValue::Text(text)),
        )
    }

    /// Decode `text` given for this property, with QEMU's grammar and errors. `owner` is
    /// the QOM type (for `Property 'type.name' ...` messages).
    pub fn decode(&self, owner: &str, text: &str) -> Result<PropValue, PlanError> {
        decode(self.ty, &self.name, owner, &self.values, text)
    }
}

/// Decode `text` for a property `name` of type `ty` (of QOM type `owner`), as QEMU's
/// setters do, with their error texts.
pub fn decode(
    ty: PropType,
    name: &str,
    owner: &str,
    values: &[String],
    text: &str,
) -> Result<PropValue, PlanError> {
    let uint = |max: u64, c_type: &str| parse_uint(name, text, max, c_type).map(PropValue::Uint);
    let int = |min: i64, max: i64, c_type: &str| {
        parse_int(name, text, min, max, c_type).map(PropValue::Int)
    };
    let bad_value = || PlanError::BadPropertyValue {
        ty: owner.to_string(),
        property: name.to_string(),
        value: text.to_string(),
    };
    match ty {
        PropType::Bool => parse_bool(name, text).map(PropValue::Bool),
        PropType::OnOffAuto => OnOffAuto::parse(text)
            .map(PropValue::OnOffAuto)
            .ok_or_else(|| PlanError::BadEnumValue {
                name: name.to_string(),
                value: text.to_string(),
            }),
        PropType::OnOffSplit => parse_enum(name, text, &["on", "off", "split"]),
        PropType::Enum => {
            let vals: Vec<&str> = values.iter().map(String::as_str).collect();
            parse_enum(name, text, &vals)
        }
        PropType::Uint8 => uint(u8::MAX.into(), "uint8_t"),
        PropType::Uint16 => uint(u16::MAX.into(), "uint16_t"),
        PropType::Uint32 => uint(u32::MAX.into(), "uint32_t"),
        PropType::Uint64 => uint(u64::MAX, "uint64_t"),
        PropType::Int32 => int(i32::MIN.into(), i32::MAX.into(), "int32_t"),
        PropType::Int64 => int(i64::MIN, i64::MAX, "int64_t"),
        PropType::Size => parse_size(text)
            .map(PropValue::Uint)
            .ok_or_else(|| PlanError::ExpectsSize(name.to_string())),
        PropType::Str => Ok(PropValue::Str(text.to_string())),
        PropType::PciDevfn => parse_devfn(text)
            .map(|d| PropValue::Devfn(Some(d)))
            .ok_or_else(bad_value),
        PropType::MacAddr => MacAddr::parse(text)
            .map(PropValue::Mac)
            .ok_or_else(bad_value),
    }
}

/// QEMU's `qapi_bool_parse` (qapi/qapi-util.c), the one boolean grammar of every option
/// and property: `on`/`yes`/`true`/`y` and `off`/`no`/`false`/`n`, case-sensitive.
pub fn qapi_bool_parse(text: &str) -> Option<bool> {
    match text {
        "on" | "yes" | "true" | "y" => Some(true),
        "off" | "no" | "false" | "n" => Some(false),
        _ => None,
    }
}

/// [`qapi_bool_parse`] with QEMU's error: `Parameter 'NAME' expects 'on' or 'off'`.
pub fn parse_bool(name: &str, text: &str) -> Result<bool, PlanError> {
    qapi_bool_parse(text).ok_or_else(|| PlanError::ExpectsBool(name.to_string()))
}

fn parse_enum(name: &str, text: &str, values: &[&str]) -> Result<PropValue, PlanError> {
    if values.contains(&text) {
        Ok(PropValue::Str(text.to_string()))
    } else {
        Err(PlanError::BadEnumValue {
            name: name.to_string(),
            value: text.to_string(),
        })
    }
}

/// `strtoull(text, 0)`-style: leading blanks, `0x` hex, leading-0 octal, else decimal;
/// nothing after the number.
pub fn parse_u64_auto(text: &str) -> Option<u64> {
    let t = text.trim_start();
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else if t.len() > 1 && t.starts_with('0') {
        u64::from_str_radix(&t[1..], 8).ok()
    } else {
        t.parse().ok()
    }
}

/// QEMU's `qemu_strtou64`: [`parse_u64_auto`], and a negative number wraps (`-1` is all
/// ones, and so out of range below 64 bits).
pub fn parse_u64_wrapping(text: &str) -> Option<u64> {
    parse_u64_auto(text).or_else(|| {
        text.trim_start()
            .strip_prefix('-')
            .and_then(parse_u64_auto)
            .map(u64::wrapping_neg)
    })
}

fn parse_uint(name: &str, text: &str, max: u64, ty: &str) -> Result<u64, PlanError> {
    let v = parse_u64_wrapping(text).ok_or_else(|| PlanError::ExpectsInteger(name.to_string()))?;
    if v > max {
        return Err(PlanError::IntegerOutOfRange {
            name: name.to_string(),
            ty: ty.to_string(),
        });
    }
    Ok(v)
}

fn parse_int(name: &str, text: &str, min: i64, max: i64, ty: &str) -> Result<i64, PlanError> {
    let t = text.trim_start();
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

/// Why [`qemu_strtosz`] refused a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeError {
    /// Not a size at all (QEMU: "expects size" for -device and -machine, "expects a size value" for -object, "a non-negative number below 2^64" for QemuOpts).
    Invalid,
    /// A size beyond 2^64 - 1 (QEMU: "Value 'X' is out of range for parameter 'Y'").
    OutOfRange,
}

/// QEMU 7.2's `qemu_strtosz` (util/cutils.c), the one size grammar of `-m`, `-object`,
/// `-drive`, device `size` properties and `-machine` options: leading blanks, a decimal
/// number (a fraction only with a suffix, or a zero one), or `0x` hex; then an optional
/// suffix b/k/M/G/T/P/E (any case, binary multiples) and nothing else. Returns the bytes and
/// whether a suffix was given (`-m` reads a bare number as MiB).
pub fn qemu_strtosz(text: &str) -> Result<(u64, bool), SizeError> {
    let t = text.trim_start();
    // A hex digit ends a hex number rather than being a suffix (0x1B is 27).
    let (body, shift) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() && !(t.starts_with("0x") && c.is_ascii_hexdigit()) => {
            let shift = match c.to_ascii_lowercase() {
                'b' => 0,
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                'p' => 50,
                'e' => 60,
                _ => return Err(SizeError::Invalid),
            };
            (&t[..t.len() - 1], Some(shift))
        }
        _ => (t, None),
    };
    let mult = 1u64 << shift.unwrap_or(0);
    if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(SizeError::Invalid);
        }
        return u64::from_str_radix(hex, 16)
            .ok()
            .and_then(|n| n.checked_mul(mult))
            .map(|n| (n, shift.is_some()))
            .ok_or(SizeError::OutOfRange);
    }
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() || !int.chars().all(|c| c.is_ascii_digit()) {
        return Err(SizeError::Invalid);
    }
    if !frac.chars().all(|c| c.is_ascii_digit()) {
        return Err(SizeError::Invalid);
    }
    // "When a fraction is present, a scale is required" (a zero fraction is no fraction).
    if shift.is_none() && frac.chars().any(|c| c != '0') {
        return Err(SizeError::Invalid);
    }
    let whole = int.parse::<u64>().map_err(|_| SizeError::OutOfRange)?;
    let mut bytes = whole.checked_mul(mult).ok_or(SizeError::OutOfRange)?;
    if !frac.is_empty() {
        let f: f64 = format!("0.{frac}")
            .parse()
            .map_err(|_| SizeError::Invalid)?;
        bytes = bytes
            .checked_add((f * mult as f64) as u64)
            .ok_or(SizeError::OutOfRange)?;
    }
    Ok((bytes, shift.is_some()))
}

/// A size in bytes ([`qemu_strtosz`]), None when QEMU refuses it.
pub fn parse_size(text: &str) -> Option<u64> {
    qemu_strtosz(text).ok().map(|(n, _)| n)
}

/// QEMU's `set_pci_devfn` text form: `SLOT` or `SLOT.FN`, both hex (`sscanf("%x.%x")`), so
/// `10` is slot 0x10. Returns the devfn.
pub fn parse_devfn(text: &str) -> Option<u8> {
    // sscanf's %x: leading blanks, an optional sign, an optional 0x.
    fn hex(s: &str) -> Option<u32> {
        let s = s.trim_start();
        let s = s.strip_prefix('+').unwrap_or(s);
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
            // QEMU 7.2: -device virtio-net-pci,addr=...
            (" 2", Some(0x10)),
            ("2. 1", Some(0x11)),
            ("+2", Some(0x10)),
            ("2 ", None),
            ("-1", None),
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
            // QEMU 7.2's answers for -object memory-backend-ram,size=...
            ("1.M", Some(1 << 20)),
            ("1.0", Some(1)),
            (" 1M", Some(1 << 20)),
            ("0x1B", Some(0x1b)),
            ("0x1M", Some(1 << 20)),
            ("1e", Some(1 << 60)),
            ("1k", Some(1024)),
            ("1b", Some(1)),
            ("1.5", None),
            ("1M ", None),
            ("1Q", None),
            ("-1", None),
            ("", None),
            ("16E", None),
            ("18446744073709551616", None),
        ];
        for (text, want) in table {
            assert_eq!(parse_size(text), *want, "{text}");
        }
        assert_eq!(qemu_strtosz("16E"), Err(SizeError::OutOfRange));
        assert_eq!(qemu_strtosz("12Q"), Err(SizeError::Invalid));
        assert_eq!(qemu_strtosz("2"), Ok((2, false)));
        assert_eq!(qemu_strtosz("2k"), Ok((2048, true)));
    }

    #[test]
    fn one_bool_grammar_with_qemus_spellings() {
        for t in ["on", "yes", "true", "y"] {
            assert_eq!(qapi_bool_parse(t), Some(true), "{t}");
            assert_eq!(parse_bool("x", t), Ok(true));
        }
        for f in ["off", "no", "false", "n"] {
            assert_eq!(qapi_bool_parse(f), Some(false), "{f}");
        }
        // QEMU 7.2 refuses these (case-sensitive, no numbers, no empty value).
        for bad in ["", "ON", "True", "Y", "1", "0", "enable", " on", "on "] {
            assert_eq!(qapi_bool_parse(bad), None, "{bad:?}");
            assert_eq!(
                parse_bool("usb", bad).unwrap_err().to_string(),
                "Parameter 'usb' expects 'on' or 'off'"
            );
        }
    }

    #[test]
    fn typed_decoding() {
        let d = |ty, text| decode(ty, "p", "t", &[], text);
        assert_eq!(d(PropType::Bool, "y").unwrap(), PropValue::Bool(true));
        assert!(matches!(d(PropType::Bool, "n"), Ok(PropValue::Bool(false))));
        assert!(matches!(
            d(PropType::OnOffAuto, "auto"),
            Ok(PropValue::OnOffAuto(OnOffAuto::Auto))
        ));
        assert!(matches!(
            d(PropType::Uint32, "0x10"),
            Ok(PropValue::Uint(16))
        ));
        assert!(matches!(
            d(PropType::Uint64, "-1"),
            Ok(PropValue::Uint(u64::MAX))
        ));
        assert!(matches!(d(PropType::Int32, "-1"), Ok(PropValue::Int(-1))));
        assert!(matches!(
            d(PropType::Size, "1M"),
            Ok(PropValue::Uint(1048576))
        ));
        assert!(matches!(
            d(PropType::PciDevfn, "1f.7"),
            Ok(PropValue::Devfn(Some(0xff)))
        ));
        assert!(matches!(
            d(PropType::MacAddr, "52-54-00-12-34-AB"),
            Ok(PropValue::Mac(m)) if m.to_string() == "52:54:00:12:34:ab"
        ));
        assert_eq!(
            d(PropType::MacAddr, "52:54:00:12:34")
                .unwrap_err()
                .to_string(),
            "Property 't.p' doesn't take value '52:54:00:12:34'"
        );
        assert_eq!(
            d(PropType::Size, "1Q").unwrap_err().to_string(),
            "Parameter 'p' expects size"
        );
        assert_eq!(
            d(PropType::Int32, "x").unwrap_err().to_string(),
            "Parameter 'p' expects integer"
        );
        let vals = ["report".to_string(), "stop".to_string()];
        assert!(decode(PropType::Enum, "p", "t", &vals, "stop").is_ok());
        assert_eq!(
            decode(PropType::Enum, "p", "t", &vals, "STOP")
                .unwrap_err()
                .to_string(),
            "Parameter 'p' does not accept value 'STOP'"
        );
    }

    #[test]
    fn scalar_errors() {
        assert_eq!(
            decode(PropType::Bool, "usb", "m", &[], "maybe")
                .unwrap_err()
                .to_string(),
            "Parameter 'usb' expects 'on' or 'off'"
        );
        assert_eq!(
            decode(PropType::OnOffAuto, "acpi", "m", &[], "maybe")
                .unwrap_err()
                .to_string(),
            "Parameter 'acpi' does not accept value 'maybe'"
        );
        assert_eq!(
            decode(PropType::Uint8, "chassis", "m", &[], "300")
                .unwrap_err()
                .to_string(),
            "Parameter 'chassis' expects uint8_t"
        );
        assert_eq!(
            decode(PropType::Int32, "x", "m", &[], "-5")
                .unwrap()
                .to_string(),
            "-5"
        );
        assert_eq!(
            decode(PropType::PciDevfn, "addr", "e1000", &[], "0x20")
                .unwrap_err()
                .to_string(),
            "Property 'e1000.addr' doesn't take value '0x20'"
        );
    }
}
