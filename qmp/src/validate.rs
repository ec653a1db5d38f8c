//! Argument checking against the schema, with the error texts of QEMU's
//! QObject input visitor (`qapi/qobject-input-visitor.c`, `qapi-visit-core.c`).
//!
//! Members are visited in declaration order and the first error wins; keys
//! left unvisited are reported afterwards ("Parameter 'x' is unexpected"), as
//! the generated marshallers do with `visit_check_struct`.

use crate::error::QmpError;
use crate::schema::{ObjectType, Type};
use serde_json::{Map, Value};
use std::collections::HashSet;

#[derive(Clone)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// `full_name()`: `a.b`, `a[0]`, `a[0].b`.
fn full_name(path: &[Seg<'_>]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    if s.is_empty() {
        "<anonymous>".to_string()
    } else {
        s
    }
}

/// The bare member name, or "null" for list elements (QEMU's `name ? name : "null"`).
fn local_name<'a>(path: &[Seg<'a>]) -> &'a str {
    match path.last() {
        Some(Seg::Key(k)) => k,
        _ => "null",
    }
}

/// Checks a command's arguments. With `extra_ok`, undeclared members pass.
pub fn check_args(
    args: &Map<String, Value>,
    ty: &ObjectType,
    extra_ok: bool,
) -> Result<(), QmpError> {
    let mut path = Vec::new();
    visit_struct(args, ty, &mut path, !extra_ok)
}

/// Checks one value against a type (exposed for VMM-side checks of nested input).
pub fn check_value(name: &str, value: &Value, ty: &Type) -> Result<(), QmpError> {
    let mut path = vec![Seg::Key(name)];
    visit(value, ty, &mut path)
}

fn visit_struct<'a>(
    map: &'a Map<String, Value>,
    ty: &'a ObjectType,
    path: &mut Vec<Seg<'a>>,
    strict: bool,
) -> Result<(), QmpError> {
    let mut visited: HashSet<&str> = HashSet::new();
    visit_members(map, ty, path, &mut visited)?;
    if strict {
        if let Some(k) = map.keys().find(|k| !visited.contains(k.as_str())) {
            path.push(Seg::Key(k));
            let name = full_name(path);
            path.pop();
            return Err(QmpError::unexpected_parameter(&name));
        }
    }
    Ok(())
}

fn visit_members<'a>(
    map: &'a Map<String, Value>,
    ty: &'a ObjectType,
    path: &mut Vec<Seg<'a>>,
    visited: &mut HashSet<&'a str>,
) -> Result<(), QmpError> {
    for m in &ty.members {
        visited.insert(m.name.as_str());
        path.push(Seg::Key(&m.name));
        let r = match map.get(&m.name) {
            Some(v) => visit(v, &m.ty, path),
            None if m.optional => Ok(()),
            None => Err(QmpError::missing_parameter(&full_name(path))),
        };
        path.pop();
        r?;
    }
    if let Some(variants) = &ty.variants {
        let tag = map.get(&variants.tag).and_then(Value::as_str);
        if let Some((_, branch)) = variants.cases.iter().find(|(c, _)| Some(c.as_str()) == tag) {
            visit_members(map, branch, path, visited)?;
        }
    }
    Ok(())
}

fn int_of(v: &Value) -> Option<i64> {
    v.as_i64()
}

/// uint64 accepts negative integers too ("for backward compatibility").
fn uint_of(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_i64().map(|i| i as u64))
}

fn visit<'a>(v: &'a Value, ty: &'a Type, path: &mut Vec<Seg<'a>>) -> Result<(), QmpError> {
    let bad_type = |path: &[Seg<'_>], expected: &str| {
        Err(QmpError::invalid_parameter_type(&full_name(path), expected))
    };
    let signed = |path: &[Seg<'_>], min: i64, max: i64, cname: &str| match int_of(v) {
        None => Err(QmpError::invalid_parameter_type(
            &full_name(path),
            "integer",
        )),
        Some(i) if i < min || i > max => {
            Err(QmpError::invalid_parameter_value(local_name(path), cname))
        }
        Some(_) => Ok(()),
    };
    let unsigned = |path: &[Seg<'_>], max: u64, cname: &str| match uint_of(v) {
        None => Err(QmpError::invalid_parameter_value(
            &full_name(path),
            "uint64",
        )),
        Some(u) if u > max => Err(QmpError::invalid_parameter_value(local_name(path), cname)),
        Some(_) => Ok(()),
    };
    match ty {
        Type::Str => {
            if !v.is_string() {
                return bad_type(path, "string");
            }
        }
        Type::Int => return signed(path, i64::MIN, i64::MAX, "int64_t"),
        Type::Int8 => return signed(path, i8::MIN.into(), i8::MAX.into(), "int8_t"),
        Type::Int16 => return signed(path, i16::MIN.into(), i16::MAX.into(), "int16_t"),
        Type::Int32 => return signed(path, i32::MIN.into(), i32::MAX.into(), "int32_t"),
        Type::Uint8 => return unsigned(path, u8::MAX.into(), "uint8_t"),
        Type::Uint16 => return unsigned(path, u16::MAX.into(), "uint16_t"),
        Type::Uint32 => return unsigned(path, u32::MAX.into(), "uint32_t"),
        Type::Uint64 | Type::Size => return unsigned(path, u64::MAX, "uint64"),
        Type::Bool => {
            if !v.is_boolean() {
                return bad_type(path, "boolean");
            }
        }
        Type::Number => {
            if !v.is_number() {
                return bad_type(path, "number");
            }
        }
        Type::Any => {}
        Type::Null => {
            if !v.is_null() {
                return bad_type(path, "null");
            }
        }
        Type::Array(elem) => {
            let Some(list) = v.as_array() else {
                return bad_type(path, "array");
            };
            for (i, e) in list.iter().enumerate() {
                path.push(Seg::Index(i));
                let r = visit(e, elem, path);
                path.pop();
                r?;
            }
        }
        Type::Enum(en) => {
            let Some(s) = v.as_str() else {
                return bad_type(path, "string");
            };
            if !en.values.iter().any(|x| x == s) {
                return Err(QmpError::invalid_enum_value(local_name(path), s));
            }
        }
        Type::Object(obj) => {
            let Some(map) = v.as_object() else {
                return bad_type(path, "object");
            };
            visit_struct(map, obj, path, true)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn desc(r: Result<(), QmpError>) -> String {
        r.unwrap_err().desc
    }

    fn caps() -> ObjectType {
        ObjectType::new("q_obj_qmp_capabilities-arg").optional(
            "enable",
            Type::array(Type::enumeration("QMPCapability", &["oob"])),
        )
    }

    #[test]
    fn qemu_texts() {
        let t = ObjectType::new("a")
            .member("path", Type::Str)
            .optional("n", Type::Uint8)
            .optional("i", Type::Int)
            .optional(
                "o",
                Type::object(ObjectType::new("o").member("x", Type::Bool)),
            );
        assert!(check_args(&args(json!({"path": "/"})), &t, false).is_ok());
        assert_eq!(
            desc(check_args(&args(json!({})), &t, false)),
            "Parameter 'path' is missing"
        );
        assert_eq!(
            desc(check_args(&args(json!({"path": 1})), &t, false)),
            "Invalid parameter type for 'path', expected: string"
        );
        assert_eq!(
            desc(check_args(
                &args(json!({"path": "/", "bogus": 1})),
                &t,
                false
            )),
            "Parameter 'bogus' is unexpected"
        );
        assert!(check_args(&args(json!({"path": "/", "bogus": 1})), &t, true).is_ok());
        assert_eq!(
            desc(check_args(&args(json!({"path": "/", "n": 256})), &t, false)),
            "Parameter 'n' expects uint8_t"
        );
        assert_eq!(
            desc(check_args(&args(json!({"path": "/", "n": "x"})), &t, false)),
            "Parameter 'n' expects uint64"
        );
        assert_eq!(
            desc(check_args(&args(json!({"path": "/", "i": 1.5})), &t, false)),
            "Invalid parameter type for 'i', expected: integer"
        );
        assert_eq!(
            desc(check_args(&args(json!({"path": "/", "o": {}})), &t, false)),
            "Parameter 'o.x' is missing"
        );
        assert_eq!(
            desc(check_args(
                &args(json!({"path": "/", "o": {"x": true, "y": 1}})),
                &t,
                false
            )),
            "Parameter 'o.y' is unexpected"
        );
        // Missing mandatory members are reported before unexpected ones.
        assert_eq!(
            desc(check_args(&args(json!({"bogus": 1})), &t, false)),
            "Parameter 'path' is missing"
        );
    }

    #[test]
    fn lists_and_enums() {
        let t = caps();
        assert!(check_args(&args(json!({"enable": ["oob"]})), &t, false).is_ok());
        assert_eq!(
            desc(check_args(&args(json!({"enable": "oob"})), &t, false)),
            "Invalid parameter type for 'enable', expected: array"
        );
        assert_eq!(
            desc(check_args(&args(json!({"enable": [1]})), &t, false)),
            "Invalid parameter type for 'enable[0]', expected: string"
        );
        assert_eq!(
            desc(check_args(&args(json!({"enable": ["foo"]})), &t, false)),
            "Parameter 'null' does not accept value 'foo'"
        );
    }

    #[test]
    fn union_branches() {
        let t = ObjectType::new("ObjectOptions")
            .member("qom-type", Type::enumeration("ObjectType", &["a", "b"]))
            .member("id", Type::Str)
            .tag("qom-type")
            .variant("a", ObjectType::new("A").member("size", Type::Size));
        assert!(check_args(
            &args(json!({"qom-type": "a", "id": "x", "size": 5})),
            &t,
            false
        )
        .is_ok());
        assert_eq!(
            desc(check_args(
                &args(json!({"qom-type": "a", "id": "x"})),
                &t,
                false
            )),
            "Parameter 'size' is missing"
        );
        assert_eq!(
            desc(check_args(
                &args(json!({"qom-type": "b", "id": "x", "size": 5})),
                &t,
                false
            )),
            "Parameter 'size' is unexpected"
        );
    }
}
