//! The QMP session protocol (docs/interop/qmp-spec.rst): greeting, capabilities
//! negotiation, request checks, dispatch and the response envelope. Texts and
//! the order of checks follow `qapi/qmp-dispatch.c` and `monitor/qmp.c`.

use crate::error::{ErrorClass, QmpError};
use crate::parser::ParseError;
use crate::registry::Answer;
use crate::session::Session;
use crate::validate::check_args;
use crate::writer;
use serde_json::{json, Map, Value};
use std::cell::Cell;

/// What the server reports as its version (greeting and `query-version`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The QEMU version emulated: libvirt requires at least 6.2.0.
    pub qemu_version: (u64, u64, u64),
    /// `package`, e.g. "machina-0.1.0".
    pub package: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            qemu_version: (10, 2, 2),
            package: format!("machina-{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

impl ServerConfig {
    /// VersionInfo, members in QEMU's output order.
    fn version_text(&self) -> String {
        let (major, minor, micro) = self.qemu_version;
        let triple = writer::object_text(&[
            ("micro", micro.to_string()),
            ("minor", minor.to_string()),
            ("major", major.to_string()),
        ]);
        writer::object_text(&[
            ("qemu", triple),
            (
                "package",
                writer::to_json(&Value::String(self.package.clone())),
            ),
        ])
    }

    /// VersionInfo as a value (the `query-version` return).
    pub fn version_value(&self) -> Value {
        let (major, minor, micro) = self.qemu_version;
        json!({"qemu": {"major": major, "minor": minor, "micro": micro}, "package": self.package})
    }

    /// The greeting line sent when a client connects.
    pub fn greeting(&self, oob_offered: bool) -> String {
        let caps = if oob_offered { "[\"oob\"]" } else { "[]" };
        let inner = writer::object_text(&[
            ("version", self.version_text()),
            ("capabilities", caps.to_string()),
        ]);
        let mut s = writer::object_text(&[("QMP", inner)]);
        s.push_str("\r\n");
        s
    }
}

thread_local! {
    /// The client whose command this thread is running, so `Server::shutdown`
    /// called from a handler does not wait for that very command.
    pub(crate) static CURRENT_CLIENT: Cell<Option<u64>> = const { Cell::new(None) };
}

/// The response line for one parsed message (every message gets exactly one).
pub(crate) fn handle_message(ctx: &mut Session, msg: Result<Value, ParseError>) -> String {
    match msg {
        Err(ParseError(desc)) => error_line(&QmpError::generic(desc), None),
        Ok(req) => {
            let (id, result) = dispatch(ctx, req);
            match result {
                Ok(Answer::Value(v)) => {
                    let mut members: Vec<(&str, &Value)> = vec![("return", &v)];
                    if let Some(id) = &id {
                        members.push(("id", id));
                    }
                    writer::line(&members)
                }
                Ok(Answer::Json(text)) => {
                    let mut line = String::with_capacity(text.len() + 32);
                    line.push_str("{\"return\": ");
                    line.push_str(&text);
                    if let Some(id) = &id {
                        line.push_str(", \"id\": ");
                        writer::write_value(&mut line, id);
                    }
                    line.push_str("}\r\n");
                    line
                }
                Err(e) => error_line(&e, id.as_ref()),
            }
        }
    }
}

/// The reply when a handler panicked (the id is lost with the unwound request).
pub(crate) fn internal_error_line() -> String {
    error_line(
        &QmpError::generic("Internal error: command handler failed"),
        None,
    )
}

fn error_line(e: &QmpError, id: Option<&Value>) -> String {
    let err = json!({"class": e.class.as_str(), "desc": e.desc});
    match id {
        Some(id) => writer::line(&[("id", id), ("error", &err)]),
        None => writer::line(&[("error", &err)]),
    }
}

/// `qmp_dispatch_check_obj`: only `execute`/`exec-oob`, `arguments` and `id`.
fn check_obj(dict: &Map<String, Value>, allow_oob: bool) -> Result<(String, bool), QmpError> {
    let mut exec_key: Option<&str> = None;
    for (k, v) in dict {
        match k.as_str() {
            "execute" | "exec-oob" if k == "execute" || allow_oob => {
                if !v.is_string() {
                    return Err(QmpError::generic(format!(
                        "QMP input member '{k}' must be a string"
                    )));
                }
                if let Some(prev) = exec_key {
                    return Err(QmpError::generic(format!(
                        "QMP input member '{k}' clashes with '{prev}'"
                    )));
                }
                exec_key = Some(k);
            }
            "arguments" => {
                if !v.is_object() {
                    return Err(QmpError::generic(
                        "QMP input member 'arguments' must be an object",
                    ));
                }
            }
            "id" => {}
            _ => {
                return Err(QmpError::generic(format!(
                    "QMP input member '{k}' is unexpected"
                )))
            }
        }
    }
    let Some(key) = exec_key else {
        return Err(QmpError::generic("QMP input lacks member 'execute'"));
    };
    let name = dict.get(key).and_then(Value::as_str).unwrap_or_default();
    Ok((name.to_string(), key == "exec-oob"))
}

/// Returns the request's id (echoed verbatim) and the command's outcome.
fn dispatch(ctx: &mut Session, req: Value) -> (Option<Value>, Result<Answer, QmpError>) {
    let Value::Object(mut dict) = req else {
        return (
            None,
            Err(QmpError::generic("QMP input must be a JSON object")),
        );
    };
    let id = dict.get("id").cloned();
    let negotiating = !ctx.negotiated();
    let mut result = run(ctx, &mut dict);
    // In negotiation mode only qmp_capabilities exists; QEMU rewrites the
    // "not found" text into a hint (monitor_qmp_dispatch).
    if negotiating && !ctx.negotiated() {
        if let Err(e) = &mut result {
            if e.class == ErrorClass::CommandNotFound {
                e.desc = "Expecting capabilities negotiation with 'qmp_capabilities'".to_string();
            }
        }
    }
    (id, result)
}

fn run(ctx: &mut Session, dict: &mut Map<String, Value>) -> Result<Answer, QmpError> {
    let (name, oob) = check_obj(dict, ctx.oob_enabled())?;
    if !ctx.negotiated() && name != "qmp_capabilities" {
        return Err(QmpError::command_not_found(&name));
    }
    let server = ctx.server().clone();
    let entry = server
        .registry()
        .entry(&name)
        .ok_or_else(|| QmpError::command_not_found(&name))?;
    let def = &entry.def;
    if oob && !def.allow_oob {
        return Err(QmpError::generic(format!(
            "The command {name} does not support OOB"
        )));
    }
    if !server.machine_ready() && !def.allow_preconfig {
        return Err(QmpError::not_permitted_before_init(&name));
    }
    let args = match dict.remove("arguments") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    check_args(&args, &def.args, def.extra_args)?;
    let handler = entry.handler.clone();
    CURRENT_CLIENT.with(|c| c.set(Some(ctx.client_id())));
    let ret = handler.answer(args, ctx);
    CURRENT_CLIENT.with(|c| c.set(None));
    let ret = ret?;
    // A command without a declared return type answers `{}`.
    if def.returns.is_none() && ret == Answer::Value(Value::Null) {
        return Ok(Answer::Value(Value::Object(Map::new())));
    }
    Ok(ret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_shape() {
        let c = ServerConfig {
            qemu_version: (10, 2, 2),
            package: "machina-1.2.3".into(),
        };
        assert_eq!(
            c.greeting(true),
            "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 2, \"major\": 10}, \
             \"package\": \"machina-1.2.3\"}, \"capabilities\": [\"oob\"]}}\r\n"
        );
        assert!(c.greeting(false).ends_with("\"capabilities\": []}}\r\n"));
    }

    #[test]
    fn request_checks() {
        let m = |v: Value| v.as_object().cloned().unwrap();
        let e = |v: Value, oob| check_obj(&m(v), oob).unwrap_err().desc;
        assert_eq!(e(json!({}), false), "QMP input lacks member 'execute'");
        assert_eq!(
            e(json!({"execute": 1}), false),
            "QMP input member 'execute' must be a string"
        );
        assert_eq!(
            e(json!({"execute": "x", "arguments": []}), false),
            "QMP input member 'arguments' must be an object"
        );
        assert_eq!(
            e(json!({"exec-oob": "x"}), false),
            "QMP input member 'exec-oob' is unexpected"
        );
        assert_eq!(
            e(json!({"execute": "x", "foo": 1}), false),
            "QMP input member 'foo' is unexpected"
        );
        assert_eq!(
            e(json!({"execute": "x", "exec-oob": "y"}), true),
            "QMP input member 'execute' clashes with 'exec-oob'"
        );
        assert_eq!(
            check_obj(&m(json!({"exec-oob": "y", "id": 1})), true).unwrap(),
            ("y".into(), true)
        );
    }
}
