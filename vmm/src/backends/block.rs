//! Block backends: `-drive` and `-blockdev` (keyval or JSON; `raw` layers folded into their
//! `file` node), with QEMU's option checks and texts.

use super::*;
use devices::ide::disk::ErrorAction;
use std::os::unix::ffi::OsStrExt;

/// What serves a `null-co` drive, and its default size (QEMU's 1 GiB).
const NULL_CO_DEVICE: &str = "/dev/zero";
const NULL_CO_SIZE: u64 = 1 << 30;

/// A byte count as QEMU's size parameters take it (plain bytes or with a k/M/G/T suffix).
/// A QemuOpts size (`-drive file.size=`): QEMU's `parse_option_size`.
fn size_value(context: &str, key: &str, v: &str) -> Result<u64, BackendError> {
    machine::qemu_strtosz(v)
        .map(|(n, _)| n)
        .map_err(|e| match e {
            machine::SizeError::Invalid => err(
                context,
                format!("Parameter '{key}' expects a non-negative number below 2^64"),
            ),
            machine::SizeError::OutOfRange => err(
                context,
                format!("Value '{v}' is out of range for parameter '{key}'"),
            ),
        })
}

/// A keyval integer (`-blockdev size=`): QEMU's `qemu_strtoi64` with base 0, no suffixes.
fn integer_value(context: &str, key: &str, v: &str) -> Result<u64, BackendError> {
    machine::parse_u64_auto(v)
        .filter(|n| i64::try_from(*n).is_ok())
        .ok_or_else(|| err(context, format!("Parameter '{key}' expects integer")))
}

/// `blkdebug:CONFIG:IMAGE` (CONFIG may be empty): the rules of the config file and the image.
fn blkdebug_filename<'a>(
    context: &str,
    rest: &'a [u8],
) -> Result<(Vec<devices::blkdebug::Rule>, &'a [u8]), BackendError> {
    let colon = rest
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| err(context, "Invalid filename format"))?;
    let (config, image) = (&rest[..colon], &rest[colon + 1..]);
    let rules = if config.is_empty() {
        Vec::new()
    } else {
        blkdebug_config(context, Path::new(OsStr::from_bytes(config)), &|| false)?
    };
    Ok((rules, image))
}

fn blkdebug_config(
    context: &str,
    path: &Path,
    cancelled: &dyn Fn() -> bool,
) -> Result<Vec<devices::blkdebug::Rule>, BackendError> {
    let fail = |e: std::io::Error| {
        err(
            context,
            format!("Could not read blkdebug config file: {}", reason(&e)),
        )
    };
    let bytes = read_to_end_waiting(path, MAX_BLKDEBUG_CONFIG, cancelled).map_err(fail)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| fail(std::io::Error::from_raw_os_error(libc::EILSEQ)))?;
    devices::blkdebug::parse_config(&text).map_err(|e| err(context, e))
}

/// A blkdebug config larger than this is refused (QEMU reads it line by line, unbounded).
const MAX_BLKDEBUG_CONFIG: usize = 1 << 20;

/// Reads a file to its end, as QEMU reads a blkdebug config. A FIFO waits for a writer and
/// then for the writers to close it, as in QEMU; but here the wait polls, so `cancelled`
/// (the QMP client gone, the monitor stopping) ends it, and the caller holds no lock.
pub(super) fn read_to_end_waiting(
    path: &Path,
    limit: usize,
    cancelled: &dyn Fn() -> bool,
) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;
    let fifo = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo());
    let mut file = if fifo {
        open_fifo_waiting(path, cancelled)?
    } else {
        open_nonblocking(path, OpenOptions::new().read(true), 0, true)?
    };
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match file.read(&mut buf) {
            // With a writer connected once, end of file is all writers gone.
            Ok(0) => return Ok(out),
            Ok(n) => {
                if out.len() + n > limit {
                    return Err(std::io::Error::from_raw_os_error(libc::EFBIG));
                }
                out.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if cancelled() {
                    return Err(std::io::Error::from_raw_os_error(libc::ECANCELED));
                }
                let mut pfd = libc::pollfd {
                    fd: file.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one pollfd that lives across the call; the fd is ours and open.
                if unsafe { libc::poll(&mut pfd, 1, 100) } < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Opens a FIFO for reading once a writer comes (a non-blocking open cannot tell "no writer
/// yet" from "writer gone"). The blocking `open` runs on a helper thread; if `cancelled`,
/// the helper is released by a writer of our own that closes at once.
fn open_fifo_waiting(path: &Path, cancelled: &dyn Fn() -> bool) -> std::io::Result<File> {
    use std::sync::mpsc::{channel, RecvTimeoutError};
    use std::time::Duration;
    let (tx, rx) = channel();
    let (started, running) = channel();
    let target = path.to_path_buf();
    std::thread::Builder::new()
        .name("fifo-open".into())
        .spawn(move || {
            let _ = started.send(());
            let r = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(&target);
            let _ = tx.send(r);
        })?;
    // Until it runs, the helper carries its creator's name (a QMP dispatcher's): whoever
    // lists the threads meanwhile would count it as one.
    let _ = running.recv();
    let mut cancelling = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(file)) if !cancelling => {
                set_nonblocking(&file)?;
                return Ok(file);
            }
            Ok(Ok(_)) => return Err(std::io::Error::from_raw_os_error(libc::ECANCELED)),
            Ok(Err(e)) => return Err(e),
            Err(RecvTimeoutError::Disconnected) => {
                return Err(std::io::Error::from_raw_os_error(libc::EIO))
            }
            Err(RecvTimeoutError::Timeout) => {
                if cancelled() {
                    cancelling = true;
                    // Fails (ENXIO) only while the helper is not yet in `open`: try again.
                    let _ = OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                        .open(path);
                }
            }
        }
    }
}

fn set_nonblocking(file: &File) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// blkdebug rules given as options: `inject-error.N.KEY` and `set-state.N.KEY`.
fn blkdebug_rules(
    context: &str,
    pairs: &[(String, OsString)],
) -> Result<Vec<devices::blkdebug::Rule>, BackendError> {
    // (section, rule number, its options)
    type Group = (String, String, Vec<(String, String)>);
    let mut groups: Vec<Group> = Vec::new();
    for (k, v) in pairs {
        let Some((section, rest)) = k
            .strip_prefix("inject-error.")
            .map(|r| ("inject-error", r))
            .or_else(|| k.strip_prefix("set-state.").map(|r| ("set-state", r)))
        else {
            continue;
        };
        let Some((n, key)) = rest.split_once('.') else {
            return Err(err(context, format!("Invalid parameter '{k}'")));
        };
        let v = lossy(v);
        match groups.iter_mut().find(|(s, i, _)| s == section && i == n) {
            Some(g) => g.2.push((key.to_string(), v)),
            None => groups.push((section.into(), n.into(), vec![(key.to_string(), v)])),
        }
    }
    groups
        .iter()
        .map(|(section, _, pairs)| {
            devices::blkdebug::Rule::from_pairs(section, pairs).map_err(|e| err(context, e))
        })
        .collect()
}

/// A non-negative `index`/`bus`/`unit` of `-drive`.
fn drive_number(context: &str, key: &str, v: &str) -> Result<u32, BackendError> {
    v.parse()
        .map_err(|_| err(context, format!("Parameter '{key}' expects a number")))
}

/// The IDE index (bus * 2 + unit) of a `-drive if=ide`; without any of them the drive
/// gets the first free index later (`backends::add`), marked by `u32::MAX` here.
fn ide_index(
    context: &str,
    index: Option<u32>,
    bus: Option<u32>,
    unit: Option<u32>,
) -> Result<u32, BackendError> {
    const UNITS_PER_BUS: u32 = 2;
    const MAX_BUS: u32 = 1;
    if let Some(index) = index {
        if bus.is_some() || unit.is_some() {
            return Err(err(context, "index cannot be used with bus and unit"));
        }
        if index > MAX_BUS * UNITS_PER_BUS + 1 {
            return Err(err(
                context,
                format!(
                    "machine type does not support if=ide,bus={},unit={}",
                    index / UNITS_PER_BUS,
                    index % UNITS_PER_BUS
                ),
            ));
        }
        return Ok(index);
    }
    if bus.is_none() && unit.is_none() {
        return Ok(u32::MAX);
    }
    let bus = bus.unwrap_or(0);
    let unit = unit.unwrap_or(0);
    if unit >= UNITS_PER_BUS {
        return Err(err(
            context,
            format!("unit {unit} too big (max is {})", UNITS_PER_BUS - 1),
        ));
    }
    if bus > MAX_BUS {
        return Err(err(
            context,
            format!("machine type does not support if=ide,bus={bus},unit={unit}"),
        ));
    }
    Ok(bus * UNITS_PER_BUS + unit)
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

/// `-drive file=PATH,if=none,id=ID,format=raw[,readonly=on][,cache=MODE][,aio=A]
/// [,file.locking=on|off|auto]`.
pub fn parse_drive(spec: impl AsRef<OsStr>) -> Result<Backend, BackendError> {
    let spec = spec.as_ref();
    let context = format!("-drive {}", lossy(spec));
    let mut file = None;
    let mut id = None;
    let mut read_only = false;
    let mut cache = CacheMode::WriteBack;
    let mut direct = None;
    let mut aio = None;
    let mut locking = true;
    let mut cdrom = false;
    let mut debug = None;
    let (mut rerror, mut werror) = (ErrorAction::Report, ErrorAction::Enospc);
    let mut interface_ide = false;
    let (mut index, mut bus, mut unit) = (None, None, None);
    let null = lossy(spec).split(',').any(|item| item == "file=null-co://");
    let mut null_size = null.then_some(NULL_CO_SIZE);
    for (k, v) in keyval(spec) {
        match k.as_str() {
            "file" if null => file = Some(PathBuf::from(NULL_CO_DEVICE)),
            "file.read-zeroes" if null => {
                machine::parse_bool("read-zeroes", &v).map_err(|e| err(&context, e.to_string()))?;
            }
            "file.size" if null => null_size = Some(size_value(&context, "size", &v)?),
            "file" => {
                let raw = raw_value(spec, "file").unwrap_or_default();
                match raw.as_bytes().strip_prefix(b"blkdebug:") {
                    Some(rest) => {
                        let (rules, image) = blkdebug_filename(&context, rest)?;
                        debug = Some(devices::blkdebug::BlkDebug::new(rules));
                        file = Some(PathBuf::from(OsStr::from_bytes(image)));
                    }
                    None => file = Some(PathBuf::from(raw)),
                }
            }
            "id" => id = Some(v),
            "if" if v == "none" => interface_ide = false,
            "if" if v == "ide" => interface_ide = true,
            "if" => {
                return Err(err(
                    &context,
                    format!(
                        "machina attaches drives through -device (if=none) or to IDE (if=ide), \
                         not if={v}"
                    ),
                ))
            }
            "index" => index = Some(drive_number(&context, "index", &v)?),
            "bus" => bus = Some(drive_number(&context, "bus", &v)?),
            "unit" => unit = Some(drive_number(&context, "unit", &v)?),
            "format" if v == "raw" => {}
            "format" => return Err(err(&context, format!("Unknown driver '{v}'"))),
            "readonly" => {
                read_only =
                    machine::parse_bool("readonly", &v).map_err(|e| err(&context, e.to_string()))?
            }
            "cache" => cache = cache_mode(&context, &v)?,
            "cache.direct" => {
                direct = Some(
                    machine::parse_bool("cache.direct", &v)
                        .map_err(|e| err(&context, e.to_string()))?,
                )
            }
            "aio" => aio = Some(v),
            // Only matters for a file that cannot be opened read-write, which machina
            // refuses either way (libqtest passes auto-read-only=off).
            "auto-read-only" => {
                machine::parse_bool("auto-read-only", &v)
                    .map_err(|e| err(&context, e.to_string()))?;
            }
            "file.locking" => locking = locking_value(&context, &k, &v)?,
            "locking" => {
                return Err(err(
                    &context,
                    "Block format 'raw' does not support the option 'locking'",
                ))
            }
            "media" if v == "disk" => cdrom = false,
            "media" if v == "cdrom" => cdrom = true,
            "media" => return Err(err(&context, format!("'{v}' invalid media"))),
            "rerror" => {
                rerror = match ErrorAction::parse(&v, true) {
                    Some(ErrorAction::Enospc) | None => {
                        return Err(err(&context, format!("'{v}' invalid read error action")))
                    }
                    Some(a) => a,
                }
            }
            "werror" => {
                werror = ErrorAction::parse(&v, false)
                    .ok_or_else(|| err(&context, format!("'{v}' invalid write error action")))?
            }
            "discard" | "detect-zeroes" | "node-name" => {}
            other => {
                return Err(err(&context, format!("Invalid parameter '{other}'")));
            }
        }
    }
    // cache.direct overrides the direct part of cache=.
    match direct {
        Some(true) if cache != CacheMode::Direct => cache = CacheMode::Direct,
        Some(false) if cache == CacheMode::Direct => cache = CacheMode::WriteBack,
        _ => {}
    }
    check_aio(&context, aio.as_deref(), cache == CacheMode::Direct)?;
    let ide_index = if interface_ide {
        Some(ide_index(&context, index, bus, unit)?)
    } else {
        // QEMU accepts (and ignores) a slot for if=none.
        None
    };
    // QEMU's default id of a drive on an interface: ide0-hd0, ide1-cd1, ...
    // (given by `backends::add` once the slot is known).
    let id = match (id, ide_index) {
        (Some(id), _) => id,
        (None, Some(_)) => String::new(),
        (None, None) => {
            return Err(err(
                &context,
                "machina needs id= on -drive (use it with -device ...,drive=ID)",
            ))
        }
    };
    // No file: a drive without a medium (QEMU's empty BlockBackend), for a later
    // `drive_del` or nothing; a disk device refuses it. A CD-ROM's is read-only.
    let Some(file) = file else {
        return Ok(Backend::Drive {
            id,
            file: PathBuf::new(),
            read_only: read_only || cdrom,
            cache,
            locking: false,
            attached: None,
            null_size: None,
            cdrom,
            ide_index,
            debug: None,
            rerror,
            werror,
            child: None,
            legacy: true,
            empty: true,
        });
    };
    // A CD-ROM is read-only media (blkconf_apply_backend_options for ide-cd).
    let read_only = read_only || cdrom;
    if null {
        // Nothing to lock or check: there is no image.
        locking = false;
    } else {
        check_file(&context, &file, read_only, FileKind::Any)?;
    }
    Ok(Backend::Drive {
        id,
        file,
        read_only,
        cache,
        locking,
        attached: None,
        null_size,
        cdrom,
        ide_index,
        debug,
        rerror,
        werror,
        child: None,
        legacy: true,
        empty: false,
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
        let v = machine::parse_json_strict(text).map_err(|e| err(&context, e))?;
        crate::blockdev_json::check(&v, "").map_err(|e| err(&context, e))?;
        os_pairs(flatten_json(&v))
    } else {
        let mut pairs = keyval_pairs_os(spec);
        // The implied key of -blockdev is `driver` (`-blockdev file,filename=...`).
        if let Some(first) = pairs.first_mut() {
            if first.1.is_empty() && !lossy(spec).starts_with(&format!("{}=", first.0)) {
                *first = ("driver".to_string(), OsString::from(first.0.clone()));
            }
        }
        pairs
    };
    blockdev_from_pairs(&context, &pairs, existing, &|| false)
}

pub(super) fn flatten_json(v: &Value) -> Vec<(String, String)> {
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

pub(super) fn os_pairs(pairs: Vec<(String, String)>) -> Vec<(String, OsString)> {
    pairs
        .into_iter()
        .map(|(k, v)| (k, OsString::from(v)))
        .collect()
}

/// `cancelled` ends a wait for a FIFO (a blkdebug `config`).
pub(super) fn blockdev_from_pairs(
    context: &str,
    pairs: &[(String, OsString)],
    existing: &[Backend],
    cancelled: &dyn Fn() -> bool,
) -> Result<Backend, BackendError> {
    let get_raw = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let get = |key: &str| get_raw(key).map(|v| lossy(&v));
    let node =
        get("node-name").ok_or_else(|| err(context, "A block device must be given a name"))?;
    let read_only = match get("read-only") {
        Some(v) => machine::parse_bool("read-only", &v).map_err(|e| err(context, e.to_string()))?,
        None => false,
    };
    let cache = match get("cache.direct").as_deref().and_then(qapi_bool_parse) {
        Some(true) => CacheMode::Direct,
        _ => CacheMode::WriteBack,
    };
    let driver = get("driver");
    // The file node's own keys, or those of a raw node's inline file.
    let file_key = |key: &str| match driver.as_deref() {
        Some("raw") => get(&format!("file.{key}")),
        _ => get(key),
    };
    let locking = match file_key("locking") {
        Some(v) => locking_value(context, "locking", &v)?,
        None => true,
    };
    check_aio(
        context,
        file_key("aio").as_deref(),
        cache == CacheMode::Direct
            || file_key("cache.direct")
                .as_deref()
                .and_then(qapi_bool_parse)
                == Some(true),
    )?;
    match driver.as_deref() {
        Some("null-co") => null_co_node(context, node, read_only, cache, &get, ""),
        Some(kind @ ("file" | "host_device")) => {
            let file = PathBuf::from(
                get_raw("filename")
                    .ok_or_else(|| err(context, "Parameter 'filename' is missing"))?,
            );
            let kind = if kind == "file" {
                FileKind::Regular
            } else {
                FileKind::Device
            };
            check_file(context, &file, read_only, kind)?;
            Ok(Backend::Drive {
                id: node,
                file,
                read_only,
                cache,
                locking,
                attached: None,
                null_size: None,
                cdrom: false,
                ide_index: None,
                debug: None,
                rerror: ErrorAction::Report,
                werror: ErrorAction::Enospc,
                child: None,
                legacy: false,
                empty: false,
            })
        }
        // A raw node with an inline null-co file (drive_del-test's blockdev-add).
        Some("raw") if get("file.driver").as_deref() == Some("null-co") => {
            null_co_node(context, node, read_only, cache, &get, "file.")
        }
        Some("raw") => {
            // A raw format node over a file node, or with an inline file.
            let child = get("file").filter(|_| get_raw("file.filename").is_none());
            let (file, locking) = match (get("file"), get_raw("file.filename")) {
                (_, Some(path)) => (PathBuf::from(path), locking),
                (Some(child), None) => match existing.iter().find(|b| b.id() == child) {
                    Some(Backend::Drive {
                        file,
                        locking,
                        null_size: Some(size),
                        cdrom: false,
                        ide_index: None,
                        debug: None,
                        rerror: ErrorAction::Report,
                        werror: ErrorAction::Enospc,
                        ..
                    }) => {
                        return Ok(Backend::Drive {
                            id: node,
                            file: file.clone(),
                            read_only,
                            cache,
                            locking: *locking,
                            attached: None,
                            null_size: Some(*size),
                            cdrom: false,
                            ide_index: None,
                            debug: None,
                            rerror: ErrorAction::Report,
                            werror: ErrorAction::Enospc,
                            child: Some(child),
                            legacy: false,
                            empty: false,
                        })
                    }
                    Some(Backend::Drive { file, locking, .. }) => (file.clone(), *locking),
                    _ => {
                        return Err(err(
                            context,
                            format!("Cannot find device='' nor node-name='{child}'"),
                        ))
                    }
                },
                (None, None) => return Err(err(context, "Parameter 'file' is missing")),
            };
            let kind = match get("file.driver").as_deref() {
                Some("host_device") => FileKind::Device,
                Some("file") => FileKind::Regular,
                _ => FileKind::Any,
            };
            check_file(context, &file, read_only, kind)?;
            Ok(Backend::Drive {
                id: node,
                file,
                read_only,
                cache,
                locking,
                attached: None,
                null_size: None,
                cdrom: false,
                ide_index: None,
                debug: None,
                rerror: ErrorAction::Report,
                werror: ErrorAction::Enospc,
                child,
                legacy: false,
                empty: false,
            })
        }
        Some("blkdebug") => {
            // A blkdebug node over the node (or inline file) `image`.
            let inline_null = get("image.driver").as_deref() == Some("null-co");
            let (file, locking, null_size) = match (get("image"), get_raw("image.filename")) {
                // An inline null-co image (qmp-test's blocking blockdev-add).
                _ if inline_null => {
                    match null_co_node(context, node.clone(), read_only, cache, &get, "image.")? {
                        Backend::Drive {
                            file,
                            locking,
                            null_size,
                            ..
                        } => (file, locking, null_size),
                        _ => return Err(err(context, "Parameter 'image' is missing")),
                    }
                }
                (_, Some(path)) => (PathBuf::from(path), locking, None),
                (Some(child), None) => match existing.iter().find(|b| b.id() == child) {
                    Some(Backend::Drive {
                        file,
                        locking,
                        null_size,
                        ..
                    }) => (file.clone(), *locking, *null_size),
                    _ => {
                        return Err(err(
                            context,
                            format!("Cannot find device='' nor node-name='{child}'"),
                        ))
                    }
                },
                (None, None) => return Err(err(context, "Parameter 'image' is missing")),
            };
            let mut rules = match get_raw("config") {
                Some(path) => blkdebug_config(context, Path::new(&path), cancelled)?,
                None => Vec::new(),
            };
            rules.extend(blkdebug_rules(context, pairs)?);
            if null_size.is_none() {
                check_file(context, &file, read_only, FileKind::Any)?;
            }
            Ok(Backend::Drive {
                id: node,
                file,
                read_only,
                cache,
                locking,
                attached: None,
                null_size,
                cdrom: false,
                ide_index: None,
                debug: Some(devices::blkdebug::BlkDebug::new(rules)),
                rerror: ErrorAction::Report,
                werror: ErrorAction::Enospc,
                child: None,
                legacy: false,
                empty: false,
            })
        }
        Some(other) => Err(err(
            context,
            format!("Parameter 'driver' does not accept value '{other}'"),
        )),
        None => Err(err(context, "Parameter 'driver' is missing")),
    }
}

/// A `null-co` node, given directly or as a raw node's inline `file` (`prefix` "file."):
/// its `read-zeroes` checked, its `size` (default NULL_CO_SIZE) read.
fn null_co_node(
    context: &str,
    node: String,
    read_only: bool,
    cache: CacheMode,
    get: &dyn Fn(&str) -> Option<String>,
    prefix: &str,
) -> Result<Backend, BackendError> {
    if let Some(v) = get(&format!("{prefix}read-zeroes")) {
        machine::parse_bool("read-zeroes", &v).map_err(|e| err(context, e.to_string()))?;
    }
    let size = match get(&format!("{prefix}size")) {
        Some(v) => integer_value(context, "size", &v)?,
        None => NULL_CO_SIZE,
    };
    Ok(Backend::Drive {
        id: node,
        file: PathBuf::from(NULL_CO_DEVICE),
        read_only,
        cache,
        locking: false,
        attached: None,
        null_size: Some(size),
        cdrom: false,
        ide_index: None,
        debug: None,
        rerror: ErrorAction::Report,
        werror: ErrorAction::Enospc,
        child: None,
        legacy: false,
        empty: false,
    })
}
