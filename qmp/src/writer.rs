//! Serialising QMP output the way QEMU's json-writer does: `": "` and `", "`
//! separators, pure ASCII (everything else as `\uXXXX`), one message per line
//! terminated by CRLF.

use serde_json::Value;
use std::fmt::Write as _;

/// Appends the JSON text of `v` to `out`.
pub fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_str(out, s),
        Value::Array(a) => {
            out.push('[');
            for (i, e) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, e);
            }
            out.push(']');
        }
        Value::Object(m) => {
            out.push('{');
            for (i, (k, e)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str(out, k);
                out.push_str(": ");
                write_value(out, e);
            }
            out.push('}');
        }
    }
}

/// A string literal; non-ASCII is escaped because QMP output is ASCII.
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
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
                    let _ = write!(out, "\\u{unit:04X}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
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
    let texts: Vec<(&str, String)> = members.iter().map(|(k, v)| (*k, to_json(v))).collect();
    let mut s = object_text(&texts);
    s.push_str("\r\n");
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

    #[test]
    fn line_keeps_member_order() {
        let l = line(&[("return", &json!({})), ("id", &json!("x"))]);
        assert_eq!(l, "{\"return\": {}, \"id\": \"x\"}\r\n");
    }
}
