//! `-chardev` and `-object` specs and the QMP `*-add` arguments turned into `Backend`s,
//! checked but not yet opened.

use super::*;

/// `-chardev TYPE,id=ID,...` for device backends (file, null, stdio, socket).
pub fn parse_chardev(spec: impl AsRef<OsStr>) -> Result<Backend, BackendError> {
    let spec = spec.as_ref();
    let context = format!("-chardev {}", lossy(spec));
    let pairs = keyval(spec);
    let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let id = get("id").ok_or_else(|| err(&context, "Parameter 'id' is missing"))?;
    let kind = pairs.first().map(|(k, _)| k.clone()).unwrap_or_default();
    let backend = match kind.as_str() {
        "null" => CharBackend::Null,
        "stdio" => CharBackend::Stdio,
        "pty" => CharBackend::Pty,
        "file" => CharBackend::File(PathBuf::from(
            raw_value(spec, "path").ok_or_else(|| err(&context, "Parameter 'path' is missing"))?,
        )),
        "socket" if raw_value(spec, "fd").is_some() => CharBackend::SocketFd {
            fd: get("fd")
                .and_then(|v| v.parse().ok())
                .filter(|fd: &i32| *fd >= 0)
                .ok_or_else(|| err(&context, "Parameter 'fd' expects an fd number"))?,
            server: get("server")
                .as_deref()
                .and_then(qapi_bool_parse)
                .unwrap_or(false),
        },
        "socket" => {
            let path =
                PathBuf::from(raw_value(spec, "path").ok_or_else(|| {
                    err(&context, "machina supports unix socket chardevs (path=)")
                })?);
            let server = get("server")
                .as_deref()
                .and_then(qapi_bool_parse)
                .unwrap_or(false);
            let wait = get("wait")
                .as_deref()
                .and_then(qapi_bool_parse)
                .unwrap_or(true);
            if server {
                CharBackend::UnixServer { path, wait }
            } else {
                CharBackend::UnixClient(path)
            }
        }
        other => {
            return Err(err(
                &context,
                format!("'{other}' is not a valid char driver"),
            ))
        }
    };
    Ok(Backend::Chardev { id, backend })
}

/// `-object rng-random,id=ID[,filename=PATH]` (other objects are refused).
pub fn parse_object(spec: impl AsRef<OsStr>) -> Result<Backend, BackendError> {
    let spec = spec.as_ref();
    object_from_pairs(&format!("-object {}", lossy(spec)), keyval_pairs_os(spec))
}

/// An object from its members, the type first (from keyval text or a QMP object); values
/// stay bytes (a file name is not text).
pub(super) fn object_from_pairs(
    context: &str,
    raw: Vec<(String, OsString)>,
) -> Result<Backend, BackendError> {
    let context = context.to_string();
    let pairs: Vec<(String, String)> = raw.iter().map(|(k, v)| (k.clone(), lossy(v))).collect();
    let raw_value = |key: &str| {
        raw.iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let kind = pairs
        .first()
        .map(|(k, v)| if v.is_empty() { k.clone() } else { v.clone() });
    match kind.as_deref() {
        Some("rng-random") => {
            let id = get("id").ok_or_else(|| err(&context, "Parameter 'id' is missing"))?;
            let filename =
                PathBuf::from(raw_value("filename").unwrap_or_else(|| "/dev/urandom".into()));
            open_rng(&filename).map_err(|e| {
                err(
                    &context,
                    format!("Could not open '{}': {}", filename.display(), reason(&e)),
                )
            })?;
            Ok(Backend::RngRandom { id, filename })
        }
        Some("rng-builtin") => {
            let id = get("id").ok_or_else(|| err(&context, "Parameter 'id' is missing"))?;
            if let Some((k, _)) = pairs[1..].iter().find(|(k, _)| k != "id") {
                return Err(err(&context, format!("Invalid parameter '{k}'")));
            }
            Ok(Backend::RngBuiltin { id })
        }
        Some(kind @ ("filter-mirror" | "filter-redirector")) => {
            let id = get("id").ok_or_else(|| err(&context, "Parameter 'id' is missing"))?;
            for (k, v) in &pairs[1..] {
                match (k.as_str(), v.as_str()) {
                    ("id" | "netdev" | "queue" | "outdev" | "indev", _) => {}
                    ("status", "on") | ("vnet_hdr_support", "off") | ("position", "tail") => {}
                    (other, _) => {
                        return Err(err(
                            &context,
                            format!("{kind}: machina does not take '{other}={v}'"),
                        ))
                    }
                }
            }
            let netdev =
                get("netdev").ok_or_else(|| err(&context, "Parameter 'netdev' is missing"))?;
            let outdev = get("outdev");
            let indev = get("indev");
            let redirector = kind == "filter-redirector";
            if !redirector && outdev.is_none() {
                return Err(err(
                    &context,
                    "filter-mirror parameter 'outdev' cannot be empty",
                ));
            }
            if redirector && outdev.is_none() && indev.is_none() {
                return Err(err(
                    &context,
                    "filter redirector needs 'indev' or 'outdev' at least one property set",
                ));
            }
            if redirector && outdev.is_some() && outdev == indev {
                return Err(err(
                    &context,
                    "'indev' and 'outdev' could not be same for filter redirector",
                ));
            }
            Ok(Backend::Filter {
                id,
                redirector,
                netdev,
                queue: get("queue").unwrap_or_else(|| "all".into()),
                outdev,
                indev,
            })
        }
        Some(other) => Err(err(
            &context,
            format!("object type '{other}' is not supported by machina"),
        )),
        None => Err(err(&context, "Parameter 'qom-type' is missing")),
    }
}

/// A QMP `blockdev-add`/`netdev_add`/`chardev-add`/`object-add` argument object.
/// A backend from a QMP `*-add` command's arguments.
pub fn from_qmp(kind: &str, args: &Value, existing: &[Backend]) -> Result<Backend, BackendError> {
    from_qmp_cancellable(kind, args, existing, &|| false)
}

/// `from_qmp`, where `cancelled` ends what may wait on a client's behalf (a blkdebug config
/// on a FIFO).
pub fn from_qmp_cancellable(
    kind: &str,
    args: &Value,
    existing: &[Backend],
    cancelled: &dyn Fn() -> bool,
) -> Result<Backend, BackendError> {
    let context = kind.to_string();
    match kind {
        "blockdev-add" => {
            crate::blockdev_json::check(args, "").map_err(|e| err(&context, e))?;
            blockdev_from_pairs(&context, &os_pairs(flatten_json(args)), existing, cancelled)
        }
        // The members are passed as they are, never rebuilt into keyval text (where a comma
        // in a value would split it: `ifname "tap0,id=x"`).
        "netdev_add" => {
            let members = qmp_members(&context, args, "type")?;
            let raw = os_pairs(members.clone());
            match socket_netdev(&context, &raw, false)? {
                Some(backend) => Ok(backend),
                None => netdev_from_pairs(&context, members, false),
            }
        }
        "chardev-add" => {
            let id = args["id"].as_str().unwrap_or("").to_string();
            let data = &args["backend"]["data"];
            let backend = match args["backend"]["type"].as_str() {
                Some("null") => CharBackend::Null,
                Some("stdio") => CharBackend::Stdio,
                Some("file") => {
                    CharBackend::File(PathBuf::from(data["out"].as_str().ok_or_else(|| {
                        err(&context, "Parameter 'backend.data.out' is missing")
                    })?))
                }
                Some("socket") => {
                    let path =
                        PathBuf::from(data["addr"]["data"]["path"].as_str().ok_or_else(|| {
                            err(&context, "machina supports unix socket chardevs")
                        })?);
                    if data["server"].as_bool().unwrap_or(false) {
                        CharBackend::UnixServer {
                            path,
                            wait: data["wait"].as_bool().unwrap_or(false),
                        }
                    } else {
                        CharBackend::UnixClient(path)
                    }
                }
                other => {
                    return Err(err(
                        &context,
                        format!(
                            "chardev backend '{}' is not supported by machina",
                            other.unwrap_or("?")
                        ),
                    ))
                }
            };
            Ok(Backend::Chardev { id, backend })
        }
        "object-add" => {
            object_from_pairs(&context, os_pairs(qmp_members(&context, args, "qom-type")?))
        }
        _ => Err(err(&context, "unknown backend kind")),
    }
}

/// The members of a QMP `netdev_add`/`object-add` object, the type member first, as text.
/// Strings must be strings (QEMU's input visitor); booleans read as on/off.
pub(super) fn qmp_members(
    context: &str,
    args: &Value,
    type_key: &str,
) -> Result<Vec<(String, String)>, BackendError> {
    let Some(obj) = args.as_object() else {
        return Err(err(context, "Invalid parameter type, expected: object"));
    };
    let mut out = vec![(
        type_key.to_string(),
        obj.get(type_key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    )];
    fn flatten(
        context: &str,
        prefix: &str,
        obj: &serde_json::Map<String, Value>,
        skip: &str,
        out: &mut Vec<(String, String)>,
    ) -> Result<(), BackendError> {
        for (k, v) in obj {
            if prefix.is_empty() && k == skip {
                continue;
            }
            let key = format!("{prefix}{k}");
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Bool(b) => if *b { "on" } else { "off" }.to_string(),
                // The integer members of QEMU's netdev types, as their decimal text.
                Value::Number(n)
                    if matches!(k.as_str(), "hubid" | "reconnect" | "reconnect-ms") =>
                {
                    n.to_string()
                }
                // Nested members (a netdev's `addr`, `local`, `remote`) as dotted keys.
                Value::Object(inner) => {
                    flatten(context, &format!("{key}."), inner, skip, out)?;
                    continue;
                }
                _ => {
                    return Err(err(
                        context,
                        format!("Invalid parameter type for '{key}', expected: string"),
                    ))
                }
            };
            out.push((key, text));
        }
        Ok(())
    }
    flatten(context, "", obj, type_key, &mut out)?;
    Ok(out)
}

/// An io::Error's text without Rust's " (os error N)" tail and the ioctl name our own
/// helpers prefix, as QEMU prints errno texts.
pub(super) fn plain_text(e: &std::io::Error) -> String {
    if e.raw_os_error().is_some() {
        return reason(e);
    }
    let text = e.to_string();
    let text = text.split_once(": ").map_or(text.as_str(), |(_, t)| t);
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text.to_string(),
    }
}
