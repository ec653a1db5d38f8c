//! The JSON types of `-blockdev` / `blockdev-add` members, checked as QEMU's input visitor
//! checks `BlockdevOptions`: `"read-only": "yes"` and `"filename": 5` are refused with
//! QEMU's texts instead of being turned into text and accepted.

use serde_json::Value;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Str,
    Bool,
    /// `BlockdevRef`: a node name or an inline node.
    Ref,
    Object,
}

/// The members machina reads (and the common ones libvirt sends), with their QAPI types.
fn member(name: &str) -> Option<Want> {
    Some(match name {
        "driver"
        | "node-name"
        | "filename"
        | "discard"
        | "detect-zeroes"
        | "aio"
        | "locking"
        | "pr-manager"
        | "x-check-cache-dropped" => Want::Str,
        "read-only" | "auto-read-only" | "force-share" | "direct" | "no-flush" => Want::Bool,
        "file" => Want::Ref,
        "cache" => Want::Object,
        _ => return None,
    })
}

fn expected(want: Want) -> &'static str {
    match want {
        Want::Str => "string",
        Want::Bool => "boolean",
        Want::Ref => "BlockdevRef",
        Want::Object => "object",
    }
}

/// Check `v` (a blockdev options object); `prefix` names nested members (`file.filename`).
pub fn check(v: &Value, prefix: &str) -> Result<(), String> {
    let Some(obj) = v.as_object() else {
        return Err("Invalid parameter type, expected: object".to_string());
    };
    for (k, val) in obj {
        let name = format!("{prefix}{k}");
        let Some(want) = member(k) else { continue };
        let ok = match want {
            Want::Str => val.is_string(),
            Want::Bool => val.is_boolean(),
            Want::Ref => val.is_string() || val.is_object(),
            Want::Object => val.is_object(),
        };
        if !ok {
            return Err(format!(
                "Invalid parameter type for '{name}', expected: {}",
                expected(want)
            ));
        }
        if val.is_object() {
            check(val, &format!("{name}."))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_texts() {
        // QEMU 7.2's answers for -blockdev JSON.
        let table: &[(&str, Option<&str>)] = &[
            (
                r#"{"driver":"file","node-name":"f0","filename":"/x","read-only":"yes"}"#,
                Some("Invalid parameter type for 'read-only', expected: boolean"),
            ),
            (
                r#"{"driver":"file","node-name":"f0","filename":5}"#,
                Some("Invalid parameter type for 'filename', expected: string"),
            ),
            (
                r#"{"driver":"file","node-name":5,"filename":"/x"}"#,
                Some("Invalid parameter type for 'node-name', expected: string"),
            ),
            (
                r#"{"driver":5,"node-name":"f0","filename":"/x"}"#,
                Some("Invalid parameter type for 'driver', expected: string"),
            ),
            (
                r#"{"driver":"file","node-name":"f0","filename":"/x","cache":{"direct":"on"}}"#,
                Some("Invalid parameter type for 'cache.direct', expected: boolean"),
            ),
            (
                r#"{"driver":"raw","node-name":"r0","file":{"driver":"file","filename":7}}"#,
                Some("Invalid parameter type for 'file.filename', expected: string"),
            ),
            (
                r#"{"driver":"raw","node-name":"r0","file":5}"#,
                Some("Invalid parameter type for 'file', expected: BlockdevRef"),
            ),
            (
                r#"{"driver":"file","node-name":"f0","filename":"/x","read-only":null}"#,
                Some("Invalid parameter type for 'read-only', expected: boolean"),
            ),
            (
                r#"{"driver":"raw","node-name":"r0","file":{"driver":"file","filename":"/x"},"read-only":true}"#,
                None,
            ),
            (r#"{"driver":"raw","node-name":"r0","file":"f0"}"#, None),
        ];
        for (text, want) in table {
            let v: Value = serde_json::from_str(text).unwrap();
            assert_eq!(check(&v, "").err().as_deref(), *want, "{text}");
        }
    }
}
