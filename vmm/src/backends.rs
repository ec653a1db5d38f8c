//! Device backends: `-drive`/`-blockdev` (raw files), `-netdev tap`, `-chardev`,
//! `-object rng-random`, from the command line or their QMP `*-add` commands. They are checked
//! when given (files open, ids unique) and when devices refer to them, with QEMU's texts.

use crate::cli::{keyval_pairs_os, lossy};
use machine::DeviceRequest;
use serde_json::Value;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

/// How the host page cache is used (QEMU's `cache=` modes reduced to what matters here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// writeback (default), none/directsync (O_DIRECT), writethrough, unsafe.
    WriteBack,
    Direct,
    WriteThrough,
    Unsafe,
}

/// What a chardev backend is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CharBackend {
    Null,
    Stdio,
    File(PathBuf),
    /// A listening unix socket (`server=on`).
    UnixServer {
        path: PathBuf,
        wait: bool,
    },
    /// A unix socket machina connects to.
    UnixClient(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A raw image file (`-drive if=none,format=raw` or `-blockdev driver=file|raw`).
    Drive {
        id: String,
        file: PathBuf,
        read_only: bool,
        cache: CacheMode,
    },
    /// `-netdev tap,id=,ifname=` (machina opens /dev/net/tun itself; no scripts).
    Tap {
        id: String,
        ifname: Option<String>,
    },
    Chardev {
        id: String,
        backend: CharBackend,
    },
    /// `-object rng-random,id=,filename=`.
    RngRandom {
        id: String,
        filename: PathBuf,
    },
}

impl Backend {
    pub fn id(&self) -> &str {
        match self {
            Backend::Drive { id, .. }
            | Backend::Tap { id, .. }
            | Backend::Chardev { id, .. }
            | Backend::RngRandom { id, .. } => id,
        }
    }

    /// The device property that refers to this kind of backend.
    fn property(&self) -> &'static str {
        match self {
            Backend::Drive { .. } => "drive",
            Backend::Tap { .. } => "netdev",
            Backend::Chardev { .. } => "chardev",
            Backend::RngRandom { .. } => "rng",
        }
    }
}

/// An error naming the option as given (`-drive file=x,...: Could not open 'x': ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{context}: {message}")]
pub struct BackendError {
    pub context: String,
    pub message: String,
}

fn err(context: &str, message: impl Into<String>) -> BackendError {
    BackendError {
        context: context.to_string(),
        message: message.into(),
    }
}

fn bool_value(v: &str) -> Option<bool> {
    match v {
        "on" | "yes" | "true" => Some(true),
        "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

/// Keyval items with text values (for names, numbers, flags); paths come from `raw_value`.
fn keyval(spec: &OsStr) -> Vec<(String, String)> {
    keyval_pairs_os(spec)
        .into_iter()
        .map(|(k, v)| (k, lossy(&v)))
        .collect()
}

/// The value of `key` (the last one given) as the bytes given: a path is not text.
fn raw_value(spec: &OsStr, key: &str) -> Option<OsString> {
    keyval_pairs_os(spec)
        .into_iter()
        .rev()
        .find_map(|(k, v)| (k == key).then_some(v))
}

/// Check that a backing file can be opened as asked, with QEMU's text when not.
fn check_file(context: &str, path: &PathBuf, read_only: bool) -> Result<(), BackendError> {
    let result = std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path);
    result.map(|_| ()).map_err(|e| {
        let reason = match e.kind() {
            std::io::ErrorKind::NotFound => "No such file or directory".to_string(),
            std::io::ErrorKind::PermissionDenied => "Permission denied".to_string(),
            _ => e.to_string(),
        };
        err(
            context,
            format!("Could not open '{}': {reason}", path.display()),
        )
    })
}

fn cache_mode(context: &str, v: &str) -> Result<CacheMode, BackendError> {
    Ok(match v {
        "writeback" => CacheMode::WriteBack,
        "none" | "directsync" => CacheMode::Direct,
        "writethrough" => CacheMode::WriteThrough,
        "unsafe" => CacheMode::Unsafe,
        _ => return Err(err(context, "invalid cache option")),
    })
}

/// `-drive file=PATH,if=none,id=ID,format=raw[,readonly=on][,cache=MODE]`.
pub fn parse_drive(spec: impl AsRef<OsStr>) -> Result<Backend, BackendError> {
    let spec = spec.as_ref();
    let context = format!("-drive {}", lossy(spec));
    let mut file = None;
    let mut id = None;
    let mut read_only = false;
    let mut cache = CacheMode::WriteBack;
    for (k, v) in keyval(spec) {
        match k.as_str() {
            "file" => file = raw_value(spec, "file").map(PathBuf::from),
            "id" => id = Some(v),
            "if" if v == "none" => {}
            "if" => {
                return Err(err(
                    &context,
                    format!("machina attaches drives only through -device (if=none), not if={v}"),
                ))
            }
            "format" if v == "raw" => {}
            "format" => return Err(err(&context, format!("Unknown driver '{v}'"))),
            "readonly" => {
                read_only = bool_value(&v)
                    .ok_or_else(|| err(&context, "Parameter 'readonly' expects 'on' or 'off'"))?
            }
            "cache" => cache = cache_mode(&context, &v)?,
            "media" if v == "disk" => {}
            "discard" | "detect-zeroes" | "aio" | "werror" | "rerror" | "node-name" => {}
            other => {
                return Err(err(&context, format!("Invalid parameter '{other}'")));
            }
        }
    }
    let id = id.ok_or_else(|| {
        err(
            &context,
            "machina needs id= on -drive (use it with -device ...,drive=ID)",
        )
    })?;
    let file = file.ok_or_else(|| err(&context, "Parameter 'file' is missing"))?;
    check_file(&context, &file, read_only)?;
    Ok(Backend::Drive {
        id,
        file,
        read_only,
        cache,
    })
}

/// `-blockdev driver=file,node-name=N,filename=PATH[,read-only=on]` (keyval or JSON);
/// `driver=raw,file=NODE` layers are folded into the file node they name.
pub fn parse_blockdev(
    spec: impl AsRef<OsStr>,
    existing: &[Backend],
) -> Result<Backend, BackendError> {
    let spec = spec.as_ref();
    let context = format!("-blockdev {}", lossy(spec));
    let pairs: Vec<(String, OsString)> = if lossy(spec).trim_start().starts_with('{') {
        // JSON text is UTF-8 by definition.
        let text = spec.to_str().ok_or_else(|| {
            err(
                &context,
                "JSON parse error, invalid UTF-8 sequence in string",
            )
        })?;
        let v: Value = serde_json::from_str(text).map_err(|e| err(&context, e.to_string()))?;
        os_pairs(flatten_json(&v))
    } else {
        keyval_pairs_os(spec)
    };
    blockdev_from_pairs(&context, &pairs, existing)
}

fn flatten_json(v: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(obj) = v.as_object() {
        for (k, v) in obj {
            match v {
                Value::String(s) => out.push((k.clone(), s.clone())),
                Value::Bool(b) => out.push((k.clone(), if *b { "on" } else { "off" }.to_string())),
                Value::Number(n) => out.push((k.clone(), n.to_string())),
                Value::Object(_) => {
                    for (sub, val) in flatten_json(v) {
                        out.push((format!("{k}.{sub}"), val));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

fn os_pairs(pairs: Vec<(String, String)>) -> Vec<(String, OsString)> {
    pairs
        .into_iter()
        .map(|(k, v)| (k, OsString::from(v)))
        .collect()
}

fn blockdev_from_pairs(
    context: &str,
    pairs: &[(String, OsString)],
    existing: &[Backend],
) -> Result<Backend, BackendError> {
    let get_raw = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let get = |key: &str| get_raw(key).map(|v| lossy(&v));
    let node =
        get("node-name").ok_or_else(|| err(context, "A block device must be given a name"))?;
    let read_only = match get("read-only") {
        Some(v) => bool_value(&v)
            .ok_or_else(|| err(context, "Parameter 'read-only' expects 'on' or 'off'"))?,
        None => false,
    };
    let cache = match get("cache.direct").as_deref().and_then(bool_value) {
        Some(true) => CacheMode::Direct,
        _ => CacheMode::WriteBack,
    };
    match get("driver").as_deref() {
        Some("file") | Some("host_device") => {
            let file = PathBuf::from(
                get_raw("filename")
                    .ok_or_else(|| err(context, "Parameter 'filename' is missing"))?,
            );
            check_file(context, &file, read_only)?;
            Ok(Backend::Drive {
                id: node,
                file,
                read_only,
                cache,
            })
        }
        Some("raw") => {
            // A raw format node over a file node, or with an inline file.
            let file = match (get("file"), get_raw("file.filename")) {
                (_, Some(path)) => PathBuf::from(path),
                (Some(child), None) => match existing.iter().find(|b| b.id() == child) {
                    Some(Backend::Drive { file, .. }) => file.clone(),
                    _ => {
                        return Err(err(
                            context,
                            format!("Cannot find device='' nor node-name='{child}'"),
                        ))
                    }
                },
                (None, None) => return Err(err(context, "Parameter 'file' is missing")),
            };
            check_file(context, &file, read_only)?;
            Ok(Backend::Drive {
                id: node,
                file,
                read_only,
                cache,
            })
        }
        Some(other) => Err(err(
            context,
            format!("Parameter 'driver' does not accept value '{other}'"),
        )),
        None => Err(err(context, "Parameter 'driver' is missing")),
    }
}

/// `-netdev tap,id=ID[,ifname=NAME][,script=no,downscript=no]`.
pub fn parse_netdev(spec: impl AsRef<OsStr>) -> Result<Backend, BackendError> {
    let spec = spec.as_ref();
    let context = format!("-netdev {}", lossy(spec));
    let pairs = keyval(spec);
    let kind = pairs
        .first()
        .map(|(k, v)| if v.is_empty() { k.clone() } else { v.clone() });
    let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    match kind.as_deref() {
        Some("tap") => {}
        Some(other @ ("user" | "bridge" | "socket" | "vhost-user" | "stream" | "dgram")) => {
            return Err(err(
                &context,
                format!("netdev type '{other}' is not supported by machina (use tap)"),
            ))
        }
        Some(other) => {
            return Err(err(
                &context,
                format!("Parameter 'type' does not accept value '{other}'"),
            ))
        }
        None => return Err(err(&context, "Parameter 'type' is missing")),
    }
    for (k, v) in &pairs[1..] {
        match (k.as_str(), v.as_str()) {
            ("id" | "ifname", _) => {}
            ("script" | "downscript", "no" | "") => {}
            ("script" | "downscript", _) => {
                return Err(err(&context, "machina runs no network scripts: use script=no,downscript=no with an existing or new tap"))
            }
            ("vhost", "off") => {}
            (other, _) => return Err(err(&context, format!("Invalid parameter '{other}'"))),
        }
    }
    let id = get("id").ok_or_else(|| err(&context, "Parameter 'id' is missing"))?;
    Ok(Backend::Tap {
        id,
        ifname: get("ifname"),
    })
}

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
        "file" => CharBackend::File(PathBuf::from(
            raw_value(spec, "path").ok_or_else(|| err(&context, "Parameter 'path' is missing"))?,
        )),
        "socket" => {
            let path =
                PathBuf::from(raw_value(spec, "path").ok_or_else(|| {
                    err(&context, "machina supports unix socket chardevs (path=)")
                })?);
            let server = get("server")
                .as_deref()
                .and_then(bool_value)
                .unwrap_or(false);
            let wait = get("wait").as_deref().and_then(bool_value).unwrap_or(true);
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
    let context = format!("-object {}", lossy(spec));
    let pairs = keyval(spec);
    let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let kind = pairs
        .first()
        .map(|(k, v)| if v.is_empty() { k.clone() } else { v.clone() });
    match kind.as_deref() {
        Some("rng-random") => {
            let id = get("id").ok_or_else(|| err(&context, "Parameter 'id' is missing"))?;
            let filename =
                PathBuf::from(raw_value(spec, "filename").unwrap_or_else(|| "/dev/urandom".into()));
            check_file(&context, &filename, true)?;
            Ok(Backend::RngRandom { id, filename })
        }
        Some(other) => Err(err(
            &context,
            format!("object type '{other}' is not supported by machina"),
        )),
        None => Err(err(&context, "Parameter 'qom-type' is missing")),
    }
}

/// A QMP `blockdev-add`/`netdev_add`/`chardev-add`/`object-add` argument object.
pub fn from_qmp(kind: &str, args: &Value, existing: &[Backend]) -> Result<Backend, BackendError> {
    let context = kind.to_string();
    match kind {
        "blockdev-add" => blockdev_from_pairs(&context, &os_pairs(flatten_json(args)), existing),
        "netdev_add" => {
            let mut spec = args["type"].as_str().unwrap_or("").to_string();
            for (k, v) in flatten_json(args) {
                if k != "type" {
                    spec.push_str(&format!(",{k}={v}"));
                }
            }
            parse_netdev(&spec).map_err(|e| err(&context, e.message))
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
            let mut spec = args["qom-type"].as_str().unwrap_or("").to_string();
            for (k, v) in flatten_json(args) {
                if k != "qom-type" {
                    spec.push_str(&format!(",{k}={v}"));
                }
            }
            parse_object(&spec).map_err(|e| err(&context, e.message))
        }
        _ => Err(err(&context, "unknown backend kind")),
    }
}

/// Add `backend` unless its id is taken (QEMU: "Duplicate ID 'd0' for drive").
pub fn add(list: &mut Vec<Backend>, backend: Backend, context: &str) -> Result<(), BackendError> {
    let kind = match &backend {
        Backend::Drive { .. } => "drive",
        Backend::Tap { .. } => "netdev",
        Backend::Chardev { .. } => "chardev",
        Backend::RngRandom { .. } => "object",
    };
    if list
        .iter()
        .any(|b| b.id() == backend.id() && b.property() == backend.property())
    {
        return Err(err(
            context,
            format!("Duplicate ID '{}' for {kind}", backend.id()),
        ));
    }
    list.push(backend);
    Ok(())
}

/// The QOM type whose property QEMU names in "can't find value" errors.
fn property_owner(driver: &str, property: &str) -> String {
    let base = driver
        .trim_end_matches("-non-transitional")
        .trim_end_matches("-transitional");
    match (base.strip_suffix("-pci"), property) {
        (Some(virtio), "drive" | "netdev") => format!("{virtio}-device"),
        _ => driver.to_string(),
    }
}

/// Every backend a device refers to must exist, and virtio-blk needs a drive.
pub fn check_references(
    devices: &[DeviceRequest],
    backends: &[Backend],
) -> Result<(), BackendError> {
    for dev in devices {
        let context = format!("-device {}", dev.driver);
        for (prop, value) in &dev.properties {
            let wanted = match prop.as_str() {
                "drive" | "netdev" | "chardev" | "rng" => prop.as_str(),
                _ => continue,
            };
            let found = backends
                .iter()
                .any(|b| b.property() == wanted && b.id() == value);
            if !found {
                let message = if wanted == "rng" {
                    format!("Device '{value}' not found")
                } else {
                    format!(
                        "Property '{}.{wanted}' can't find value '{value}'",
                        property_owner(&dev.driver, wanted)
                    )
                };
                return Err(err(&context, message));
            }
        }
        let base = dev
            .driver
            .trim_end_matches("-non-transitional")
            .trim_end_matches("-transitional");
        if base == "virtio-blk-pci" && !dev.properties.iter().any(|(k, _)| k == "drive") {
            return Err(err(&context, "drive property not set"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drives_and_errors() {
        let dir = std::env::temp_dir().join(format!("machina-backends-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("d.img");
        std::fs::write(&img, [0u8; 512]).unwrap();
        let spec = format!("file={},if=none,id=d0,format=raw,cache=none", img.display());
        let d = parse_drive(&spec).unwrap();
        assert_eq!(d.id(), "d0");
        assert!(matches!(
            d,
            Backend::Drive {
                cache: CacheMode::Direct,
                ..
            }
        ));
        assert_eq!(
            parse_drive("file=/nonexistent,if=none,id=d0,format=raw").unwrap_err().to_string(),
            "-drive file=/nonexistent,if=none,id=d0,format=raw: Could not open '/nonexistent': No such file or directory"
        );
        let bad_format = format!("file={},if=none,id=d0,format=qcow9", img.display());
        assert!(parse_drive(&bad_format)
            .unwrap_err()
            .to_string()
            .ends_with("Unknown driver 'qcow9'"));
        let bad_cache = format!(
            "file={},if=none,id=d0,format=raw,cache=bogus",
            img.display()
        );
        assert!(parse_drive(&bad_cache)
            .unwrap_err()
            .to_string()
            .ends_with("invalid cache option"));
        let mut list = vec![];
        add(&mut list, d.clone(), "-drive x").unwrap();
        assert_eq!(
            add(&mut list, d, "-drive x").unwrap_err().to_string(),
            "-drive x: Duplicate ID 'd0' for drive"
        );
        let node = format!("driver=file,node-name=f0,filename={}", img.display());
        let file_node = parse_blockdev(&node, &list).unwrap();
        add(&mut list, file_node, "").unwrap();
        let raw =
            parse_blockdev(r#"{"driver":"raw","node-name":"r0","file":"f0"}"#, &list).unwrap();
        assert!(matches!(raw, Backend::Drive { ref file, .. } if *file == img));

        let blk = DeviceRequest::parse("virtio-blk-pci,drive=nope").unwrap();
        assert_eq!(
            check_references(&[blk], &list).unwrap_err().message,
            "Property 'virtio-blk-device.drive' can't find value 'nope'"
        );
        let net = DeviceRequest::parse("virtio-net-pci,netdev=n0").unwrap();
        assert_eq!(
            check_references(&[net], &list).unwrap_err().message,
            "Property 'virtio-net-device.netdev' can't find value 'n0'"
        );
        let blk = DeviceRequest::parse("virtio-blk-pci").unwrap();
        assert_eq!(
            check_references(&[blk], &list).unwrap_err().message,
            "drive property not set"
        );
        let blk = DeviceRequest::parse("virtio-blk-pci,drive=d0").unwrap();
        check_references(&[blk], &list).unwrap();
        assert_eq!(
            parse_netdev("bogus,id=x").unwrap_err().message,
            "Parameter 'type' does not accept value 'bogus'"
        );
        assert!(
            matches!(parse_netdev("tap,id=n0,ifname=tap7,script=no,downscript=no").unwrap(),
            Backend::Tap { ref ifname, .. } if ifname.as_deref() == Some("tap7"))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
