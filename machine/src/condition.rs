//! Conditions in board data (`"when": "i8042 & vmport"`): a conjunction of possibly negated
//! terms, each naming a resolved machine option or a default-device flag.

use crate::error::CatalogError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `term & !term & ...`; the empty condition is always true.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Condition {
    terms: Vec<(bool, String)>,
    text: String,
}

impl Condition {
    /// Parse `a & !b`.
    pub fn parse(text: &str) -> Result<Condition, CatalogError> {
        let mut terms = Vec::new();
        if !text.trim().is_empty() {
            for raw in text.split('&') {
                let t = raw.trim();
                let (neg, name) = match t.strip_prefix('!') {
                    Some(n) => (true, n.trim()),
                    None => (false, t),
                };
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(CatalogError::BadCondition(text.to_string()));
                }
                terms.push((neg, name.to_string()));
            }
        }
        Ok(Condition {
            terms,
            text: text.to_string(),
        })
    }

    /// Evaluate with `flag(name)` giving each term's truth.
    pub fn eval(&self, flag: impl Fn(&str) -> bool) -> bool {
        self.terms.iter().all(|(neg, name)| flag(name) != *neg)
    }

    /// The source text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Condition::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_eval() {
        let table: &[(&str, &[&str], bool)] = &[
            ("", &[], true),
            ("usb", &["usb"], true),
            ("usb", &[], false),
            ("i8042 & vmport", &["i8042", "vmport"], true),
            ("i8042 & vmport", &["i8042"], false),
            ("!nodefaults", &[], true),
            ("acpi & !nodefaults", &["acpi", "nodefaults"], false),
        ];
        for (text, on, want) in table {
            let c = Condition::parse(text).unwrap();
            assert_eq!(c.eval(|n| on.contains(&n)), *want, "{text}");
        }
        assert!(Condition::parse("a | b").is_err());
        assert!(Condition::parse("a & ").is_err());
    }
}
