//! Serialising QMP output the way QEMU's json-writer does: `": "` and `", "`
//! separators, pure ASCII (everything else as `\uXXXX`), one message per line
//! terminated by CRLF.

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter, Serializer};
use serde_json::Value;
use std::io;

/// serde_json output in QEMU's format: `": "` and `", "` separators, and only ASCII, with
/// every other character (and DEL) as `\uXXXX` (upper-case hex, UTF-16 surrogate pairs).
#[derive(Debug, Clone, Copy, Default)]
pub struct QemuFormatter;

fn write_u16_escape<W: ?Sized + io::Write>(w: &mut W, unit: u16) -> io::Result<()> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let n = usize::from(unit);
    w.write_all(&[
        b'\\',
        b'u',
        HEX[n >> 12],
        HEX[(n >> 8) & 0xf],
        HEX[(n >> 4) & 0xf],
        HEX[n & 0xf],
    ])
}

impl Formatter for QemuFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // serde_json has already split off quotes, backslashes and control characters.
        let bytes = fragment.as_bytes();
        let mut run = 0;
        for (i, c) in fragment.char_indices() {
            if c.is_ascii() && c != '\u{7f}' {
                continue;
            }
            w.write_all(&bytes[run..i])?;
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                write_u16_escape(w, *unit)?;
            }
            run = i + c.len_utf8();
        }
        w.write_all(&bytes[run..])
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        let text: &[u8] = match escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Solidus => b"\\/",
            CharEscape::Backspace => b"\\b",
            CharEscape::FormFeed => b"\\f",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(byte) => return write_u16_escape(w, u16::from(byte)),
        };
        w.write_all(text)
    }
}

/// Appends the QEMU-format JSON text of anything serde can serialise (a `Value`, or a
/// handler's own answer struct, without building a `Value` first).
pub fn write_serialize<T: Serialize + ?Sized>(
    out: &mut String,
    v: &T,
) -> Result<(), serde_json::Error> {
    let mut bytes = std::mem::take(out).into_bytes();
    let result = v.serialize(&mut Serializer::with_formatter(&mut bytes, QemuFormatter));
    // Only ASCII was written after the String's own (valid) contents.
    *out = String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    result
}

/// The QEMU-format JSON text of anything serde can serialise: what a `TextHandler` returns.
/// Struct members come in declaration order, map entries in the map's order.
pub fn to_json_text<T: Serialize + ?Sized>(v: &T) -> Result<String, serde_json::Error> {
    let mut s = String::new();
    write_serialize(&mut s, v)?;
    Ok(s)
}

/// Appends the JSON text of `v` to `out`.
pub fn write_value(out: &mut String, v: &Value) {
    // A Value always serialises (its map keys are strings).
    let _ = write_serialize(out, v);
}

/// A string literal; non-ASCII is escaped because QMP output is ASCII.
pub fn write_str(out: &mut String, s: &str) {
    let _ = write_serialize(out, s);
}

/// The JSON text of `v`.
pub fn to_json(v: &Value) -> String {
    let mut s = String::new();
    write_value(&mut s, v);
    s
}

/// An object from members whose values are already JSON text, in the given
/// order: serde_json maps are sorted, but the envelope should read like QEMU's
/// (`{"return": {}, "id": 1}`, `{"seconds": 1, "microseconds": 2}`).
pub fn object_text(members: &[(&str, String)]) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        write_str(&mut s, k);
        s.push_str(": ");
        s.push_str(v);
    }
    s.push('}');
    s
}

/// One output line (CRLF-terminated) from `(key, value)` members in order.
pub fn line(members: &[(&str, &Value)]) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        write_str(&mut s, k);
        s.push_str(": ");
        write_value(&mut s, v);
    }
    s.push_str("}\r\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn qemu_spacing_and_ascii() {
        let v = json!({"b": [1, "é", "\u{1}"], "a": {}});
        assert_eq!(to_json(&v), r#"{"a": {}, "b": [1, "\u00E9", "\u0001"]}"#);
        assert_eq!(to_json(&json!("😀")), r#""\uD83D\uDE00""#);
    }

    /// The escaping rules spelled out one character at a time (QEMU's to_json).
    fn reference(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 || (c as u32) >= 0x7f => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{unit:04X}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    #[test]
    fn every_character_is_escaped_like_qemu() {
        let all: String = (0u32..0x800).filter_map(char::from_u32).collect();
        for s in [
            all.as_str(),
            "",
            "plain ascii",
            "tab\tdel\u{7f}é😀\u{ffff}\u{10ffff}x",
            "\"quoted\" \\ back",
        ] {
            assert_eq!(to_json(&json!(s)), reference(s), "{s:?}");
        }
    }

    #[test]
    fn structs_serialise_in_member_order() {
        #[derive(Serialize)]
        struct Answer {
            zeta: u32,
            alpha: Vec<&'static str>,
            nested: Option<Value>,
            float: f64,
        }
        let a = Answer {
            zeta: 1,
            alpha: vec!["a", "é"],
            nested: Some(json!({"b": null, "a": true})),
            float: 1.0,
        };
        assert_eq!(
            to_json_text(&a).unwrap(),
            r#"{"zeta": 1, "alpha": ["a", "\u00E9"], "nested": {"a": true, "b": null}, "float": 1.0}"#
        );
        // The same text as through a Value, but for the order of the members.
        let via_value = to_json(&serde_json::to_value(&a).unwrap());
        assert_eq!(
            serde_json::from_str::<Value>(&via_value).unwrap(),
            serde_json::from_str::<Value>(&to_json_text(&a).unwrap()).unwrap()
        );
    }

    #[test]
    fn line_keeps_member_order() {
        let l = line(&[("return", &json!({})), ("id", &json!("x"))]);
        assert_eq!(l, "{\"return\": {}, \"id\": \"x\"}\r\n");
    }
}
