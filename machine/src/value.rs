//! Typed property values of a plan: decoded once by the planner with QEMU's grammars
//! (`properties.rs`), read by the devices through typed accessors.
//!
//! The plan's JSON form keeps every value as its canonical text (`true`, `16`, `02.0`,
//! `52:54:00:12:34:56`). A plan read back from JSON holds that text as [`PropValue::Text`],
//! which the accessors decode with the same grammars when asked for a type.

use crate::mac::MacAddr;
use crate::properties::{format_devfn, parse_devfn, parse_u64_wrapping, qapi_bool_parse};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

/// QEMU's OnOffAuto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnOffAuto {
    On,
    Off,
    Auto,
}

impl OnOffAuto {
    pub fn parse(text: &str) -> Option<OnOffAuto> {
        match text {
            "on" => Some(OnOffAuto::On),
            "off" => Some(OnOffAuto::Off),
            "auto" => Some(OnOffAuto::Auto),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OnOffAuto::On => "on",
            OnOffAuto::Off => "off",
            OnOffAuto::Auto => "auto",
        }
    }
}

/// One property value of a planned device.
#[derive(Debug, Clone)]
pub enum PropValue {
    /// `bool` (canonical text `true`/`false`).
    Bool(bool),
    OnOffAuto(OnOffAuto),
    /// `uint8`..`uint64` and `size`, in range for the declared type.
    Uint(u64),
    /// `int32`/`int64`.
    Int(i64),
    /// `str`, and `enum`/`OnOffSplit` values (one of the declared values).
    Str(String),
    /// PCI `addr`: a devfn, or unset (QEMU's -1).
    Devfn(Option<u8>),
    Mac(MacAddr),
    /// Canonical text of a plan read back from JSON, not yet given a type.
    Text(String),
}

impl fmt::Display for PropValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PropValue::Bool(b) => write!(f, "{b}"),
            PropValue::OnOffAuto(v) => f.write_str(v.as_str()),
            PropValue::Uint(v) => write!(f, "{v}"),
            PropValue::Int(v) => write!(f, "{v}"),
            PropValue::Str(s) | PropValue::Text(s) => f.write_str(s),
            PropValue::Devfn(Some(d)) => f.write_str(&format_devfn(*d)),
            PropValue::Devfn(None) => f.write_str("-1"),
            PropValue::Mac(m) => write!(f, "{m}"),
        }
    }
}

/// Values compare by canonical text, so a plan read back from JSON equals the plan written.
impl PartialEq for PropValue {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for PropValue {}

impl PartialEq<str> for PropValue {
    fn eq(&self, other: &str) -> bool {
        match self {
            PropValue::Str(s) | PropValue::Text(s) => s == other,
            _ => {
                let text = self.to_string();
                text == other
            }
        }
    }
}

impl PartialEq<&str> for PropValue {
    fn eq(&self, other: &&str) -> bool {
        <PropValue as PartialEq<str>>::eq(self, other)
    }
}

impl Serialize for PropValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PropValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(PropValue::Text)
    }
}

/// A property that does not hold what its reader asks for (the model and the catalog
/// disagree, or a plan read from JSON carries text that is not of that type).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid property {name}={value}")]
pub struct PropertyError {
    pub name: String,
    pub value: String,
}

/// All properties of a planned device, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Properties(BTreeMap<String, PropValue>);

impl FromIterator<(String, PropValue)> for Properties {
    fn from_iter<I: IntoIterator<Item = (String, PropValue)>>(iter: I) -> Self {
        Properties(iter.into_iter().collect())
    }
}

impl Properties {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, name: &str) -> Option<&PropValue> {
        self.0.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    pub fn insert(&mut self, name: impl Into<String>, value: PropValue) {
        self.0.insert(name.into(), value);
    }

    pub fn remove(&mut self, name: &str) -> Option<PropValue> {
        self.0.remove(name)
    }

    /// Set `name` to untyped canonical text (hand-written plans in tests).
    pub fn insert_text(&mut self, name: impl Into<String>, text: impl Into<String>) {
        self.0.insert(name.into(), PropValue::Text(text.into()));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &PropValue)> {
        self.0.iter()
    }

    /// The canonical text of `name` (what the plan's JSON shows).
    pub fn text(&self, name: &str) -> Option<String> {
        self.0.get(name).map(ToString::to_string)
    }

    fn invalid(name: &str, v: &PropValue) -> PropertyError {
        PropertyError {
            name: name.to_string(),
            value: v.to_string(),
        }
    }

    /// A `bool` or OnOffAuto property; `auto` and a missing property give `default`.
    pub fn bool(&self, name: &str, default: bool) -> Result<bool, PropertyError> {
        let Some(v) = self.0.get(name) else {
            return Ok(default);
        };
        let on_off = |o: OnOffAuto| match o {
            OnOffAuto::On => true,
            OnOffAuto::Off => false,
            OnOffAuto::Auto => default,
        };
        match v {
            PropValue::Bool(b) => Ok(*b),
            PropValue::OnOffAuto(o) => Ok(on_off(*o)),
            PropValue::Text(t) => qapi_bool_parse(t)
                .or_else(|| OnOffAuto::parse(t).map(on_off))
                .ok_or_else(|| Self::invalid(name, v)),
            _ => Err(Self::invalid(name, v)),
        }
    }

    /// An unsigned integer or size property; a missing property gives `default`.
    pub fn u64(&self, name: &str, default: u64) -> Result<u64, PropertyError> {
        let Some(v) = self.0.get(name) else {
            return Ok(default);
        };
        match v {
            PropValue::Uint(n) => Ok(*n),
            PropValue::Int(n) => u64::try_from(*n).map_err(|_| Self::invalid(name, v)),
            PropValue::Text(t) => parse_u64_wrapping(t).ok_or_else(|| Self::invalid(name, v)),
            _ => Err(Self::invalid(name, v)),
        }
    }

    pub fn u32(&self, name: &str, default: u32) -> Result<u32, PropertyError> {
        self.narrow(name, default)
    }

    pub fn u16(&self, name: &str, default: u16) -> Result<u16, PropertyError> {
        self.narrow(name, default)
    }

    pub fn u8(&self, name: &str, default: u8) -> Result<u8, PropertyError> {
        self.narrow(name, default)
    }

    fn narrow<T: TryFrom<u64> + Into<u64>>(
        &self,
        name: &str,
        default: T,
    ) -> Result<T, PropertyError> {
        let n = self.u64(name, default.into())?;
        T::try_from(n).map_err(|_| PropertyError {
            name: name.to_string(),
            value: n.to_string(),
        })
    }

    /// An unsigned property's value; None when it is unset or not a non-negative number.
    pub fn uint(&self, name: &str) -> Option<u64> {
        self.0.get(name)?;
        self.u64(name, 0).ok()
    }

    /// A string or enum property; a missing property gives `default`.
    pub fn str<'a>(&'a self, name: &str, default: &'a str) -> Result<&'a str, PropertyError> {
        match self.0.get(name) {
            None => Ok(default),
            Some(v) => Self::as_str(v).ok_or_else(|| Self::invalid(name, v)),
        }
    }

    /// A string property that is set and not empty (`netdev=`, `drive=`, `chardev=`).
    pub fn nonempty_str(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .and_then(Self::as_str)
            .filter(|s| !s.is_empty())
    }

    fn as_str(v: &PropValue) -> Option<&str> {
        match v {
            PropValue::Str(s) | PropValue::Text(s) => Some(s),
            PropValue::OnOffAuto(o) => Some(o.as_str()),
            _ => None,
        }
    }

    /// A MAC address property (None when unset).
    pub fn mac(&self, name: &str) -> Result<Option<MacAddr>, PropertyError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(PropValue::Mac(m)) => Ok(Some(*m)),
            // A machine definition may declare `mac` as a plain string.
            Some(v @ (PropValue::Str(t) | PropValue::Text(t))) => MacAddr::parse(t)
                .map(Some)
                .ok_or_else(|| Self::invalid(name, v)),
            Some(v) => Err(Self::invalid(name, v)),
        }
    }

    /// A PCI address property (None when unset).
    pub fn devfn(&self, name: &str) -> Result<Option<u8>, PropertyError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(PropValue::Devfn(d)) => Ok(*d),
            Some(PropValue::Text(t)) if t == "-1" => Ok(None),
            Some(v @ PropValue::Text(t)) => parse_devfn(t)
                .map(Some)
                .ok_or_else(|| Self::invalid(name, v)),
            Some(v) => Err(Self::invalid(name, v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_reads() {
        let mut p = Properties::new();
        p.insert("b", PropValue::Bool(true));
        p.insert("auto", PropValue::OnOffAuto(OnOffAuto::Auto));
        p.insert("off", PropValue::OnOffAuto(OnOffAuto::Off));
        p.insert("n", PropValue::Uint(300));
        p.insert("i", PropValue::Int(-1));
        p.insert("s", PropValue::Str("x".into()));
        p.insert("addr", PropValue::Devfn(Some(0x11)));
        p.insert("mac", PropValue::Mac(MacAddr::FIRST_DEFAULT));
        assert!(p.bool("b", false).unwrap());
        assert!(p.bool("auto", true).unwrap());
        assert!(!p.bool("auto", false).unwrap());
        assert!(!p.bool("off", true).unwrap());
        assert!(p.bool("missing", true).unwrap());
        assert_eq!(p.u16("n", 0).unwrap(), 300);
        assert_eq!(
            p.u8("n", 0).unwrap_err().to_string(),
            "invalid property n=300"
        );
        assert!(p.u64("i", 0).is_err());
        assert!(p.bool("n", false).is_err());
        assert!(p.u64("b", 0).is_err());
        assert_eq!(p.str("s", "d").unwrap(), "x");
        assert_eq!(p.str("missing", "d").unwrap(), "d");
        assert!(p.str("n", "d").is_err());
        assert_eq!(p.devfn("addr").unwrap(), Some(0x11));
        assert_eq!(p.mac("mac").unwrap(), Some(MacAddr::FIRST_DEFAULT));
        assert_eq!(p.text("addr").as_deref(), Some("02.1"));
        assert_eq!(p.text("mac").as_deref(), Some("52:54:00:12:34:56"));
    }

    #[test]
    fn json_text_round_trip() {
        let mut p = Properties::new();
        p.insert("b", PropValue::Bool(false));
        p.insert("addr", PropValue::Devfn(None));
        p.insert("vectors", PropValue::Uint(u64::from(u32::MAX)));
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"addr":"-1","b":"false","vectors":"4294967295"}"#);
        let back: Properties = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
        assert!(!back.bool("b", true).unwrap());
        assert_eq!(back.devfn("addr").unwrap(), None);
        assert_eq!(back.u32("vectors", 0).unwrap(), u32::MAX);
        // Text is decoded with QEMU's grammars, not guessed.
        let mut t = Properties::new();
        t.insert_text("b", "yes");
        t.insert_text("c", "True");
        t.insert_text("r", "-1");
        t.insert_text("m", "52-54-00-12-34-57");
        assert!(t.bool("b", false).unwrap());
        assert!(t.bool("c", false).is_err());
        assert_eq!(t.u64("r", 0).unwrap(), u64::MAX);
        assert_eq!(t.mac("m").unwrap().unwrap().0[5], 0x57);
    }
}
