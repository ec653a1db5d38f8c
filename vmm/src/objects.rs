//! `-object` types machina implements besides the device backends of backends.rs: `secret`
//! (read and kept) and the host memory backends (`memory-backend-ram`, `-memfd`, `-file`)
//! that `-machine memory-backend=ID` makes the guest RAM. Both QEMU spellings are accepted:
//! keyval (`secret,id=s0,file=...`) and JSON (`{"qom-type":"secret",...}`, what libvirt
//! writes). Errors use QEMU's texts.

use crate::backends::Backend;
use crate::cli::{keyval_pairs_os, lossy};
use crate::config::MachineConfig;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{context}{message}")]
pub struct ObjectError {
    /// `-object SPEC: ` for option errors; empty where QEMU names no option.
    pub context: String,
    pub message: String,
}

/// What one `-object` is.
pub enum ObjectSpec {
    Secret(Secret),
    MemoryBackend(MemoryBackend),
    /// `iothread`: an I/O thread devices can run on (`iothread=ID`).
    IoThread(IoThreadSpec),
    /// Any other type, as keyval text for backends.rs (JSON converted with commas escaped).
    Other(OsString),
}

impl ObjectSpec {
    /// The id of a parsed object; `None` for types backends.rs parses.
    pub fn id(&self) -> Option<&str> {
        match self {
            ObjectSpec::Secret(s) => Some(&s.id),
            ObjectSpec::MemoryBackend(m) => Some(&m.id),
            ObjectSpec::IoThread(t) => Some(&t.id),
            ObjectSpec::Other(_) => None,
        }
    }
}

/// An `iothread` object as given. machina's event loops block in epoll and never poll, so
/// the polling parameters are checked as QEMU checks them and kept, but change nothing
/// (query-iothreads reports what the thread really does: no polling).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoThreadSpec {
    pub id: String,
    pub poll_max_ns: i64,
    pub poll_grow: i64,
    pub poll_shrink: i64,
    pub aio_max_batch: i64,
    pub thread_pool_min: i64,
    pub thread_pool_max: i64,
}

/// QEMU's `id_wellformed`: a letter, then letters, digits, '-', '.', '_'.
pub fn id_wellformed(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// Why an object cannot have its id in QEMU's one `/objects` container: the checks of
/// user_creatable_add_type and of the container's child list, met by `object-add`, JSON
/// and `-readconfig` objects (keyval `-object`s meet [`check_option_ids`] first).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("Parameter 'id' expects an identifier")]
    Malformed,
    #[error("attempt to add duplicate property '{0}' to object (type 'container')")]
    Duplicate(String),
}

/// Whether a new object may be called `id`, `taken` telling which ids the container holds.
pub fn check_new_id(id: &str, taken: impl Fn(&str) -> bool) -> Result<(), IdError> {
    if !id_wellformed(id) {
        return Err(IdError::Malformed);
    }
    if taken(id) {
        return Err(IdError::Duplicate(id.to_string()));
    }
    Ok(())
}

/// QEMU's QemuOpts list of keyval `-object`s, checked as each option is read, before any
/// object is made: an option's id (its first `id=`) is well-formed and no earlier option
/// of the list has it. JSON arguments are not in that list (their ids meet
/// [`check_new_id`] when the object is made).
pub fn check_option_ids<'a>(specs: impl IntoIterator<Item = &'a OsStr>) -> Result<(), ObjectError> {
    let mut seen: Vec<String> = Vec::new();
    for spec in specs {
        if is_json(spec) {
            continue;
        }
        let Some(id) = keyval_id(spec) else {
            continue;
        };
        let err = |message: String| ObjectError {
            context: format!("-object {}: ", lossy(spec)),
            message,
        };
        if !id_wellformed(&id) {
            return Err(err(IdError::Malformed.to_string()));
        }
        if seen.contains(&id) {
            return Err(err(format!("Duplicate ID '{id}' for object")));
        }
        seen.push(id);
    }
    Ok(())
}

fn is_json(spec: &OsStr) -> bool {
    lossy(spec).trim_start().starts_with('{')
}

/// A keyval option's id as QemuOpts takes it: the first `id=` (later ones are ignored).
fn keyval_id(spec: &OsStr) -> Option<String> {
    keyval_pairs_os(spec)
        .into_iter()
        .find(|(k, _)| k == "id")
        .map(|(_, v)| lossy(&v))
}

/// The objects `-object` and `object-add` created, as (id, QOM type): memory backends,
/// secrets, I/O threads, rng sources and packet filters: the children of QEMU's
/// `/objects`, one namespace.
pub fn user_objects<'a>(
    memory_backends: &'a [MemoryBackend],
    secrets: &'a [Arc<Secret>],
    iothreads: &'a [IoThreadSpec],
    backends: &'a [Backend],
) -> Vec<(&'a str, &'a str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    out.extend(
        memory_backends
            .iter()
            .map(|m| (m.id.as_str(), m.qom_type.as_str())),
    );
    out.extend(secrets.iter().map(|s| (s.id.as_str(), "secret")));
    out.extend(iothreads.iter().map(|t| (t.id.as_str(), "iothread")));
    out.extend(backends.iter().filter_map(|b| match b {
        Backend::RngRandom { id, .. } => Some((id.as_str(), "rng-random")),
        Backend::RngBuiltin { id } => Some((id.as_str(), "rng-builtin")),
        Backend::Filter { id, redirector, .. } => Some((
            id.as_str(),
            if *redirector {
                "filter-redirector"
            } else {
                "filter-mirror"
            },
        )),
        _ => None,
    }));
    out
}

impl MachineConfig {
    /// [`user_objects`] of this configuration.
    pub fn user_objects(&self) -> Vec<(&str, &str)> {
        user_objects(
            &self.memory_backends,
            &self.secrets,
            &self.iothreads,
            &self.backends,
        )
    }

    /// The id of the default RAM backend the machine makes when it is built (QEMU's
    /// machine_run_board_init), `ram_id` being its type's: only when no
    /// `memory-backend=` names one, the machine has RAM and no NUMA node takes its RAM
    /// from a memdev.
    pub fn default_ram_id<'a>(&self, ram_id: Option<&'a str>) -> Option<&'a str> {
        let numa_memdev = self.numa.iter().any(|a| {
            matches!(
                &a.option,
                machine::NumaOption::Node {
                    memdev: Some(_),
                    ..
                }
            )
        });
        if self.memory_backend.is_some() || numa_memdev || self.ram_size == 0 {
            return None;
        }
        ram_id
    }

    /// No object may have the id of the default RAM backend the build makes (QEMU 7.2's
    /// text; the command line and `x-exit-preconfig` check it, `object-add` after the
    /// build finds the backend itself in `/objects`).
    pub fn check_default_ram_id(&self, ram_id: Option<&str>) -> Result<(), ObjectError> {
        let Some(id) = self.default_ram_id(ram_id) else {
            return Ok(());
        };
        if !self.user_objects().iter().any(|(object, _)| *object == id) {
            return Ok(());
        }
        Err(ObjectError {
            context: String::new(),
            message: format!(
                "object name '{id}' is reserved for the default RAM backend, it can't be \
                 used for any other purposes. Change the object's 'id' to something else"
            ),
        })
    }
}

/// The `iothread` properties QEMU 7.2 has, all int64.
const IOTHREAD_INTS: [&str; 6] = [
    "poll-max-ns",
    "poll-grow",
    "poll-shrink",
    "aio-max-batch",
    "thread-pool-min",
    "thread-pool-max",
];

fn parse_iothread(
    spec: &OsStr,
    context: &str,
    pairs: &[(String, OsString)],
) -> Result<IoThreadSpec, ObjectError> {
    let err = |message: String| ObjectError {
        context: context.to_string(),
        message,
    };
    // Range errors come without the option, as in QEMU (the property setter's text).
    let plain = |message: String| ObjectError {
        context: String::new(),
        message,
    };
    // JSON values keep their type: a string is not an integer there.
    if let Some(text) = spec.to_str().filter(|t| t.trim_start().starts_with('{')) {
        if let Ok(serde_json::Value::Object(obj)) = serde_json::from_str(text) {
            for key in IOTHREAD_INTS {
                if obj.get(key).is_some_and(|v| !v.is_i64() && !v.is_u64()) {
                    return Err(err(format!(
                        "Invalid parameter type for '{key}', expected: integer"
                    )));
                }
            }
        }
    }
    let mut spec = IoThreadSpec {
        id: String::new(),
        // QEMU's defaults (IOTHREAD_POLL_MAX_NS_DEFAULT on Linux; thread pool 0..64).
        poll_max_ns: 32768,
        poll_grow: 0,
        poll_shrink: 0,
        aio_max_batch: 0,
        thread_pool_min: 0,
        thread_pool_max: 64,
    };
    let mut id = None;
    for (k, v) in pairs {
        let text = lossy(v);
        let int = || {
            text.parse::<i64>()
                .map_err(|_| err(format!("Parameter '{k}' expects an int64 value")))
        };
        let slot = match k.as_str() {
            "qom-type" => continue,
            "id" => {
                id = Some(text.clone());
                continue;
            }
            "poll-max-ns" => &mut spec.poll_max_ns,
            "poll-grow" => &mut spec.poll_grow,
            "poll-shrink" => &mut spec.poll_shrink,
            "aio-max-batch" => &mut spec.aio_max_batch,
            "thread-pool-min" => &mut spec.thread_pool_min,
            "thread-pool-max" => &mut spec.thread_pool_max,
            other => return Err(err(format!("Invalid parameter '{other}'"))),
        };
        let value = int()?;
        if value < 0 {
            return Err(plain(format!(
                "{k} value must be in range [0, {}]",
                i64::MAX
            )));
        }
        *slot = value;
    }
    // The id's form is checked with every object's (check_option_ids, check_new_id).
    let id = id.ok_or_else(|| err("Parameter 'id' is missing".into()))?;
    if spec.thread_pool_min > spec.thread_pool_max {
        return Err(plain("bad thread-pool-min/thread-pool-max values".into()));
    }
    spec.id = id;
    Ok(spec)
}

/// A `secret` object's value (decoded), wiped when dropped.
pub struct Secret {
    pub id: String,
    data: Vec<u8>,
}

impl Secret {
    pub fn data(&self) -> &[u8] {
        &self.data
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the value.
        write!(
            f,
            "Secret {{ id: {:?}, len: {} }}",
            self.id,
            self.data.len()
        )
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        for b in self.data.iter_mut() {
            // SAFETY: a volatile write to a byte this Vec owns, so that the wipe is kept.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// Where a memory backend's pages come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryKind {
    /// Anonymous memory (`memory-backend-ram`).
    Ram,
    /// A memfd (`memory-backend-memfd`), shared by default.
    Memfd,
    /// A file or, for a directory, an unlinked file in it (`memory-backend-file`).
    File(PathBuf),
}

/// A host memory backend, parsed; `open` makes its file (memfd, file) once per process.
#[derive(Debug, Clone)]
pub struct MemoryBackend {
    pub id: String,
    pub qom_type: String,
    pub kind: MemoryKind,
    pub size: u64,
    pub share: bool,
    pub prealloc: bool,
    pub merge: bool,
    pub dump: bool,
    /// The file behind memfd/file backends, opened once so that every (re)build of the
    /// machine maps the same pages, as QEMU keeps the RAM block across resets.
    pub file: Option<Arc<File>>,
}

/// `key=value` pairs of a keyval or JSON `-object`, values as given (bytes for keyval).
fn pairs(spec: &OsStr, context: &str) -> Result<Vec<(String, OsString)>, ObjectError> {
    let err = |message: String| ObjectError {
        context: context.to_string(),
        message,
    };
    if !is_json(spec) {
        let mut out = keyval_pairs_os(spec);
        // QemuOpts keeps the first `id=` as the option's id and drops the others.
        let mut ids = 0;
        out.retain(|(k, _)| {
            ids += usize::from(k == "id");
            k != "id" || ids == 1
        });
        // `TYPE,id=...`: the bare first item is the type.
        if let Some(first) = out.first_mut() {
            if first.1.is_empty() && first.0 != "qom-type" {
                *first = ("qom-type".into(), OsString::from(first.0.clone()));
            }
        }
        return Ok(out);
    }
    let text = spec
        .to_str()
        .ok_or_else(|| err("JSON parse error, invalid UTF-8 sequence in string".into()))?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| err(format!("JSON parse error, {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| err("Invalid parameter type, expected 'object'".into()))?;
    Ok(obj
        .iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Bool(b) => if *b { "on" } else { "off" }.to_string(),
                other => other.to_string(),
            };
            (k.clone(), OsString::from(text))
        })
        .collect())
}

/// Classify one `-object` argument, reading secrets and checking memory backends.
pub fn parse(spec: &OsStr) -> Result<ObjectSpec, ObjectError> {
    let context = format!("-object {}: ", lossy(spec));
    let pairs = pairs(spec, &context)?;
    let qom_type = pairs
        .iter()
        .find(|(k, _)| k == "qom-type")
        .map(|(_, v)| lossy(v))
        .ok_or_else(|| ObjectError {
            context: context.clone(),
            message: "Parameter 'qom-type' is missing".into(),
        })?;
    match qom_type.as_str() {
        "secret" => parse_secret(&context, &pairs).map(ObjectSpec::Secret),
        "iothread" => parse_iothread(spec, &context, &pairs).map(ObjectSpec::IoThread),
        "memory-backend-ram" | "memory-backend-memfd" | "memory-backend-file" => {
            parse_memory(&context, &qom_type, &pairs).map(ObjectSpec::MemoryBackend)
        }
        _ if lossy(spec).trim_start().starts_with('{') => {
            // Keyval text for backends.rs: the type first, then key=value with `,,` for
            // each comma in a value, so that nothing is cut at a comma.
            let mut text = qom_type.into_bytes();
            for (k, v) in pairs.iter().filter(|(k, _)| k != "qom-type") {
                text.push(b',');
                text.extend_from_slice(k.as_bytes());
                text.push(b'=');
                for &b in v.as_bytes() {
                    text.push(b);
                    if b == b',' {
                        text.push(b',');
                    }
                }
            }
            Ok(ObjectSpec::Other(OsStr::from_bytes(&text).to_os_string()))
        }
        _ => Ok(ObjectSpec::Other(spec.to_os_string())),
    }
}

fn get<'a>(pairs: &'a [(String, OsString)], key: &str) -> Option<&'a OsString> {
    pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Read a small regular file (secrets): bounded, and never a FIFO or device that could
/// block or stream forever.
fn read_small_file(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let file = crate::fdset::open(path, libc::O_RDONLY | libc::O_NONBLOCK, 0).map_err(|e| {
        format!(
            "Unable to read {shown}: Failed to open file “{shown}”: {}",
            crate::daemon::strerror(&e)
        )
    })?;
    let meta = file
        .metadata()
        .map_err(|e| format!("Unable to read {shown}: {}", crate::daemon::strerror(&e)))?;
    if !meta.is_file() {
        return Err(format!("Unable to read {shown}: not a regular file"));
    }
    if meta.len() > limit {
        return Err(format!("Unable to read {shown}: larger than {limit} bytes"));
    }
    let mut data = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("Unable to read {shown}: {}", crate::daemon::strerror(&e)))?;
    Ok(data)
}

/// Standard base64 (QEMU's qbase64_decode: whitespace is not allowed).
fn base64_decode(text: &[u8]) -> Result<Vec<u8>, String> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    if text.contains(&0) {
        return Err("Base64 data contains embedded NUL characters".into());
    }
    let body = text
        .strip_suffix(b"==")
        .or_else(|| text.strip_suffix(b"="))
        .unwrap_or(text);
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for &c in body {
        let v = value(c).ok_or("Base64 data contains invalid characters")?;
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

fn parse_secret(context: &str, pairs: &[(String, OsString)]) -> Result<Secret, ObjectError> {
    let err = |message: String| ObjectError {
        context: context.to_string(),
        message,
    };
    // Errors after the properties are set come without the option, as in QEMU.
    let plain = |message: String| ObjectError {
        context: String::new(),
        message,
    };
    let mut id = None;
    let mut base64 = false;
    for (k, v) in pairs {
        let text = lossy(v);
        match k.as_str() {
            "qom-type" | "data" | "file" => {}
            "id" => id = Some(text),
            "format" => {
                base64 = match text.as_str() {
                    "raw" => false,
                    "base64" => true,
                    other => {
                        return Err(err(format!(
                            "Parameter 'format' does not accept value '{other}'"
                        )))
                    }
                }
            }
            "keyid" | "iv" => {
                return Err(err(format!(
                    "machina does not decrypt secrets: '{k}' is not supported"
                )))
            }
            "loaded" => {}
            other => return Err(err(format!("Invalid parameter '{other}'"))),
        }
    }
    let id = id.ok_or_else(|| err("Parameter 'id' is missing".into()))?;
    let raw = match (get(pairs, "data"), get(pairs, "file")) {
        (Some(_), Some(_)) => return Err(plain("'file' and 'data' are mutually exclusive".into())),
        (None, None) => return Err(plain("Either 'file' or 'data' must be provided".into())),
        (Some(data), None) => data.as_bytes().to_vec(),
        (None, Some(path)) => read_small_file(Path::new(path), 64 << 10).map_err(plain)?,
    };
    let data = if base64 {
        base64_decode(&raw).map_err(plain)?
    } else {
        raw
    };
    Ok(Secret { id, data })
}

fn parse_memory(
    context: &str,
    qom_type: &str,
    pairs: &[(String, OsString)],
) -> Result<MemoryBackend, ObjectError> {
    let err = |message: String| ObjectError {
        context: context.to_string(),
        message,
    };
    let flag = |k: &str, v: &str| machine::parse_bool(k, v).map_err(|e| err(e.to_string()));
    let mut backend = MemoryBackend {
        id: String::new(),
        qom_type: qom_type.to_string(),
        kind: MemoryKind::Ram,
        size: 0,
        share: qom_type == "memory-backend-memfd",
        prealloc: false,
        merge: true,
        dump: true,
        file: None,
    };
    let mut size = None;
    let mut mem_path = None;
    for (k, v) in pairs {
        let text = lossy(v);
        match (k.as_str(), qom_type) {
            ("qom-type", _) => {}
            ("id", _) => backend.id = text,
            ("size", _) => {
                size = Some(
                    machine::parse_size(&text)
                        .ok_or_else(|| err("Parameter 'size' expects a size value".into()))?,
                )
            }
            ("share", _) => backend.share = flag(k, &text)?,
            ("prealloc", _) => backend.prealloc = flag(k, &text)?,
            ("merge", _) => backend.merge = flag(k, &text)?,
            ("dump", _) => backend.dump = flag(k, &text)?,
            // Naming of the RAM block for migration, which machina does not do.
            ("x-use-canonical-path-for-ramblock-id", _) => {
                flag(k, &text)?;
            }
            ("policy", _) if text == "default" => {}
            ("mem-path", "memory-backend-file") => mem_path = Some(PathBuf::from(v)),
            ("hugetlb", "memory-backend-memfd") | ("seal", "memory-backend-memfd")
                if !flag(k, &text)? => {}
            ("discard-data" | "readonly", "memory-backend-file") if !flag(k, &text)? => {}
            (other, _) => {
                return Err(err(format!(
                    "Property '{qom_type}.{other}' is not supported by machina"
                )))
            }
        }
    }
    if backend.id.is_empty() {
        return Err(err("Parameter 'id' is missing".into()));
    }
    backend.size = size.ok_or_else(|| err("Parameter 'size' is missing".into()))?;
    if backend.size == 0 {
        return Err(ObjectError {
            context: String::new(),
            message: "property 'size' of memory-backend not set".into(),
        });
    }
    if qom_type == "memory-backend-file" {
        backend.kind = MemoryKind::File(
            mem_path.ok_or_else(|| err("Parameter 'mem-path' is missing".into()))?,
        );
    } else if qom_type == "memory-backend-memfd" {
        backend.kind = MemoryKind::Memfd;
    }
    backend.file = open_backing(&backend).map_err(|message| ObjectError {
        context: String::new(),
        message,
    })?;
    Ok(backend)
}

/// The file behind a memfd/file backend, sized to the backend.
fn open_backing(b: &MemoryBackend) -> Result<Option<Arc<File>>, String> {
    use std::os::fd::FromRawFd;
    let file = match &b.kind {
        MemoryKind::Ram => return Ok(None),
        MemoryKind::Memfd => {
            let name = std::ffi::CString::new(format!("machina:{}", b.id))
                .map_err(|_| "the memory backend id contains a NUL byte".to_string())?;
            // SAFETY: a NUL-terminated name; the fd returned is owned by the File below.
            let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
            if fd < 0 {
                return Err(format!(
                    "cannot create memfd: {}",
                    crate::daemon::strerror(&std::io::Error::last_os_error())
                ));
            }
            // SAFETY: fd was just created and nothing else owns it.
            unsafe { File::from_raw_fd(fd) }
        }
        MemoryKind::File(path) => {
            let shown = path.display();
            let is_dir = std::fs::metadata(path).is_ok_and(|m| m.is_dir());
            // A directory gets an unlinked file of its own, as QEMU's temporary file.
            let (target, flags) = if is_dir {
                (path.clone(), libc::O_RDWR | libc::O_TMPFILE)
            } else {
                (path.clone(), libc::O_RDWR | libc::O_CREAT)
            };
            let file = crate::fdset::open(&target, flags, 0o600).map_err(|e| {
                format!(
                    "can't open backing store {shown} for guest RAM: {}",
                    crate::daemon::strerror(&e)
                )
            })?;
            let len = file
                .metadata()
                .map_err(|e| format!("{shown}: {}", crate::daemon::strerror(&e)))?
                .len();
            if len > 0 && len < b.size {
                return Err(format!(
                    "backing store size 0x{len:x} does not match 'size' option 0x{:x}",
                    b.size
                ));
            }
            file
        }
    };
    if file.metadata().map(|m| m.len()).unwrap_or(0) < b.size {
        file.set_len(b.size).map_err(|e| {
            format!(
                "cannot size the backing of memory backend '{}': {}",
                b.id,
                crate::daemon::strerror(&e)
            )
        })?;
    }
    Ok(Some(Arc::new(file)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> OsString {
        OsString::from(s)
    }

    #[test]
    fn secrets_are_read_and_decoded() {
        let Ok(ObjectSpec::Secret(s)) = parse(&os("secret,id=s0,data=aGVsbG8=,format=base64"))
        else {
            panic!("secret");
        };
        assert_eq!((s.id.as_str(), s.data()), ("s0", &b"hello"[..]));
        let dir = machina_tests::TempDir::new("objects");
        let key = dir.join("master-key.aes");
        std::fs::write(&key, [7u8; 32]).unwrap();
        let json = format!(
            r#"{{"qom-type":"secret","id":"masterKey0","format":"raw","file":"{}"}}"#,
            key.display()
        );
        let Ok(ObjectSpec::Secret(s)) = parse(&os(&json)) else {
            panic!("json secret");
        };
        assert_eq!(s.data(), &[7u8; 32][..]);
        let msg = |spec: &str| match parse(&os(spec)) {
            Err(e) => e.to_string(),
            Ok(_) => String::new(),
        };
        assert_eq!(
            msg("secret,id=s"),
            "Either 'file' or 'data' must be provided"
        );
        assert_eq!(
            msg("secret,id=s,data=a,file=/x"),
            "'file' and 'data' are mutually exclusive"
        );
        assert_eq!(
            msg("secret,id=s,data=@@@,format=base64"),
            "Base64 data contains invalid characters"
        );
        assert_eq!(
            msg("secret,id=s,file=/nonexistent"),
            "Unable to read /nonexistent: Failed to open file “/nonexistent”: No such file or directory"
        );
        assert!(msg("secret,id=s,file=/dev/zero").ends_with("not a regular file"));
    }

    /// What `prepare` (every check before the machine is built) answers for `args`.
    fn prepared(args: &str) -> Result<(), String> {
        let opts = crate::cli::parse(args.split_whitespace()).map_err(|e| e.to_string())?;
        crate::config::prepare(&opts, machine::Catalog::builtin()).map(|_| ())
    }

    #[test]
    fn object_ids_as_qemu() {
        const NAMESPACE: &str = "-nodefaults -netdev hubport,id=n0,hubid=0 -chardev null,id=c0";
        let dup = |second: &str| format!("-object {second}: Duplicate ID 'x' for object");
        let container = "attempt to add duplicate property 'x' to object (type 'container')";
        let malformed = "Parameter 'id' expects an identifier".to_string();
        let reserved = |id: &str| {
            format!(
                "object name '{id}' is reserved for the default RAM backend, it can't be used \
                 for any other purposes. Change the object's 'id' to something else"
            )
        };
        // QEMU 7.2's answers.
        let table: Vec<(String, Option<String>)> = vec![
            // Keyval options: QemuOpts' duplicate, whatever the kinds, before any object
            // is made (the first one's bad poll-max-ns is never seen).
            ("-object iothread,id=x -object iothread,id=x".into(), Some(dup("iothread,id=x"))),
            ("-object rng-random,id=x,filename=/dev/urandom -object iothread,id=x".into(), Some(dup("iothread,id=x"))),
            ("-object iothread,id=x -object rng-random,id=x,filename=/dev/urandom".into(), Some(dup("rng-random,id=x,filename=/dev/urandom"))),
            ("-object secret,id=x,data=a -object memory-backend-memfd,id=x,size=1M".into(), Some(dup("memory-backend-memfd,id=x,size=1M"))),
            ("-object filter-mirror,id=x,netdev=n0,outdev=c0 -object rng-builtin,id=x".into(), Some(dup("rng-builtin,id=x"))),
            ("-object iothread,id=x,poll-max-ns=-1 -object iothread,id=x".into(), Some(dup("iothread,id=x"))),
            ("-object iothread,id=x -object bogus,id=x".into(), Some(dup("bogus,id=x"))),
            // The first `id=` is the option's.
            ("-object iothread,id=x,id=y -object iothread,id=y".into(), None),
            ("-object iothread,id=y,id=x -object iothread,id=y".into(), Some("-object iothread,id=y: Duplicate ID 'y' for object".into())),
            // A JSON object on either side: the container's refusal when it is made.
            (r#"-object {"qom-type":"iothread","id":"x"} -object iothread,id=x"#.into(), Some(container.into())),
            (r#"-object iothread,id=x -object {"qom-type":"rng-builtin","id":"x"}"#.into(), Some(container.into())),
            (r#"-object {"qom-type":"secret","id":"x","data":"a"} -object {"qom-type":"memory-backend-ram","id":"x","size":1048576}"#.into(), Some(container.into())),
            (r#"-object filter-redirector,id=x,netdev=n0,outdev=c0 -object {"qom-type":"filter-mirror","id":"x","netdev":"n0","outdev":"c0"}"#.into(), Some(container.into())),
            // Ill-formed ids, for every kind (keyval: named with the option).
            ("-object rng-builtin,id=1x".into(), Some(format!("-object rng-builtin,id=1x: {malformed}"))),
            ("-object secret,id=,data=a".into(), Some(format!("-object secret,id=,data=a: {malformed}"))),
            (r#"-object {"qom-type":"iothread","id":"1x"}"#.into(), Some(malformed.clone())),
            // The default RAM backend's id.
            ("-object iothread,id=pc.ram".into(), Some(reserved("pc.ram"))),
            ("-M q35 -object memory-backend-ram,id=pc.ram,size=1G".into(), Some(reserved("pc.ram"))),
            (r#"-m 0 -object {"qom-type":"rng-builtin","id":"pc.ram"}"#.into(), Some(reserved("pc.ram"))),
            ("-M none -m 128 -object secret,id=ram,data=a".into(), Some(reserved("ram"))),
            ("-object memory-backend-ram,id=pc.ram,size=128M -machine memory-backend=pc.ram".into(), None),
            ("-object iothread,id=pc.ram -machine memory-backend=pc.ram".into(), Some("Memory backend 'pc.ram' not found".into())),
            ("-object iothread,id=pc.ram -object memory-backend-ram,id=m0,size=128M -numa node,memdev=m0".into(), None),
            // Under --preconfig the board, and its check, wait for x-exit-preconfig.
            ("--preconfig -object iothread,id=pc.ram".into(), None),
        ];
        for (args, want) in &table {
            let got = prepared(&format!("{NAMESPACE} {args}")).err();
            assert_eq!(got.as_deref(), want.as_deref(), "{args}");
        }
    }

    #[test]
    fn memory_backends() {
        let Ok(ObjectSpec::MemoryBackend(m)) = parse(&os(
            r#"{"qom-type":"memory-backend-ram","id":"pc.ram","size":268435456}"#,
        )) else {
            panic!("ram");
        };
        assert_eq!(
            (m.id.as_str(), m.size, m.kind.clone()),
            ("pc.ram", 256 << 20, MemoryKind::Ram)
        );
        let Ok(ObjectSpec::MemoryBackend(m)) = parse(&os("memory-backend-memfd,id=m,size=2M"))
        else {
            panic!("memfd");
        };
        assert!(m.share);
        assert_eq!(m.file.as_ref().unwrap().metadata().unwrap().len(), 2 << 20);
        let msg = |spec: &str| match parse(&os(spec)) {
            Err(e) => e.to_string(),
            Ok(_) => String::new(),
        };
        assert_eq!(
            msg("memory-backend-ram,id=r"),
            "-object memory-backend-ram,id=r: Parameter 'size' is missing"
        );
        assert_eq!(
            msg("memory-backend-file,id=r,size=1M"),
            "-object memory-backend-file,id=r,size=1M: Parameter 'mem-path' is missing"
        );
        let Ok(ObjectSpec::Other(text)) = parse(&os(
            r#"{"qom-type":"rng-random","id":"r0","filename":"/tmp/a,b"}"#,
        )) else {
            panic!("other");
        };
        assert_eq!(text, os("rng-random,filename=/tmp/a,,b,id=r0"));
    }
}
