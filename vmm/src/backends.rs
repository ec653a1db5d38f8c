//! Device backends: `-drive`/`-blockdev` (raw files), `-netdev tap`, `-chardev`,
//! `-object rng-random`, from the command line or their QMP `*-add` commands. They are checked
//! when given (files open, ids unique) and when devices refer to them, with QEMU's texts.
//!
//! Nothing here may block the thread that asks (the QMP monitor under `-delay-machine-init`):
//! every file a user names is opened with O_NONBLOCK (a FIFO would block `open` itself) and
//! its type checked from the open descriptor. A drive's image is opened and locked when a
//! device takes it (QEMU's `file` driver lock bytes, so QEMU and machina see each other), and
//! the locked descriptor is kept for the life of the process.

mod block;
mod char_input;
mod char_output;
mod image_lock;

use block::{blockdev_from_pairs, flatten_json, os_pairs};
pub use block::{parse_blockdev, parse_drive};
pub use char_input::{open_char_io, CharInput, InputConsumer};
pub use char_output::open_char_output;
use image_lock::{
    lock_image, PERM_ALL, PERM_CONSISTENT_READ, PERM_RESIZE, PERM_WRITE, PERM_WRITE_UNCHANGED,
};

use crate::cli::{keyval_pairs_os, lossy};
use machine::{qapi_bool_parse, DeviceRequest};
use serde_json::Value;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// A pseudo-terminal (opened at start by config.rs; its path is in the config).
    Pty,
    /// A socket the management layer opened and passed (`fd=N`), for serial ports.
    SocketFd {
        fd: i32,
        server: bool,
    },
}

/// A descriptor opened for a backend and shared by every incarnation of the machine (resets
/// reuse it through `dup`); for an image it holds the lock bytes until the process ends.
#[derive(Debug, Clone)]
pub struct Handle(Arc<File>);

impl Handle {
    /// A new descriptor on the same open file (and so the same locks and flags).
    pub fn dup(&self) -> std::io::Result<File> {
        self.0.try_clone()
    }
}

impl PartialEq for Handle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Handle {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A raw image file (`-drive if=none,format=raw` or `-blockdev driver=file|raw`).
    Drive {
        id: String,
        file: PathBuf,
        read_only: bool,
        cache: CacheMode,
        /// `file.locking` (`-drive`) / `locking` (`-blockdev driver=file`): on unless `off`.
        locking: bool,
        /// The image as opened and locked for the device that took the drive (`attach`).
        attached: Option<Handle>,
        /// QEMU's `null-co` driver: no image, reads give zeros, writes are dropped (served by
        /// /dev/zero); the disk size in bytes.
        null_size: Option<u64>,
        /// `media=cdrom`: read-only media for an `ide-cd`; with no `file` the drive is empty.
        cdrom: bool,
        /// `if=ide`: the IDE slot (bus * 2 + unit) the board attaches the drive to.
        ide_index: Option<u32>,
        /// A `blkdebug` node over the image (`file=blkdebug:CONFIG:IMAGE`, `-blockdev
        /// blkdebug,image=NODE`): injected errors and breakpoints, shared by every build.
        debug: Option<Arc<devices::blkdebug::BlkDebug>>,
        /// `rerror=`/`werror=` of `-drive` (the device model's actions on failed reads and
        /// writes; IDE honours them).
        rerror: devices::ide::disk::ErrorAction,
        werror: devices::ide::disk::ErrorAction,
        /// The node this one is layered on (`-blockdev driver=raw,file=NODE`): that node
        /// cannot be deleted while this one exists (QEMU: "Block device NODE is in use").
        child: Option<String>,
        /// Made by `-drive`/HMP `drive_add` (QEMU's BlockBackend named by its id): listed by
        /// `query-block` as `device`, and deleted with the device that used it.
        legacy: bool,
        /// `-drive if=none,id=ID` without `file=`: no medium (nothing can use it).
        empty: bool,
    },
    /// `-netdev tap,id=,ifname=` (machina opens /dev/net/tun itself; no scripts), or
    /// `-netdev tap,id=,fd=N`: a tap the caller (libvirt) opened and passes down.
    Tap {
        id: String,
        ifname: Option<String>,
        fd: Option<i32>,
        /// `fds=a:b:...`: one passed descriptor per queue of a multiqueue tap.
        fds: Vec<i32>,
        /// `queues=N`: queues of the tap machina opens (1 without the option).
        queues: usize,
        /// The tap, opened when the netdev is added (as QEMU does), kept for the process.
        handle: Option<Handle>,
        /// The tap's other queues (`queues=`/`fds=`), in order.
        more: Vec<Handle>,
        /// Its entry in the network thread (`info network`, announcements).
        client: Option<crate::netdev::Netdev>,
    },
    /// `-netdev socket|stream|dgram|hubport`: sockets opened when the netdev is added, run
    /// by the network thread (crate::netdev) for the life of the netdev.
    Netdev {
        id: String,
        kind: String,
        /// The members as given (type first), until the netdev is opened.
        members: Vec<(String, OsString)>,
        numeric_fds: bool,
        handle: Option<crate::netdev::Netdev>,
    },
    Chardev {
        id: String,
        backend: CharBackend,
    },
    /// `-object filter-mirror|filter-redirector`: a packet filter on a netdev, run by the
    /// network thread once its chardevs are open (`open_filters`).
    Filter {
        id: String,
        redirector: bool,
        netdev: String,
        queue: String,
        outdev: Option<String>,
        indev: Option<String>,
    },
    /// `-object rng-random,id=,filename=`.
    RngRandom {
        id: String,
        filename: PathBuf,
    },
    /// `-object rng-builtin,id=`: the host kernel's generator (QEMU's getrandom(2); the
    /// same source as /dev/urandom, what a virtio-rng without `rng=` reads).
    RngBuiltin {
        id: String,
    },
}

impl Backend {
    pub fn id(&self) -> &str {
        match self {
            Backend::Drive { id, .. }
            | Backend::Tap { id, .. }
            | Backend::Netdev { id, .. }
            | Backend::Chardev { id, .. }
            | Backend::Filter { id, .. }
            | Backend::RngRandom { id, .. }
            | Backend::RngBuiltin { id } => id,
        }
    }

    /// The device property that refers to this kind of backend.
    fn property(&self) -> &'static str {
        match self {
            Backend::Drive { .. } => "drive",
            Backend::Tap { .. } | Backend::Netdev { .. } => "netdev",
            Backend::Chardev { .. } => "chardev",
            Backend::RngRandom { .. } | Backend::RngBuiltin { .. } => "rng",
            Backend::Filter { .. } => "filter",
        }
    }
}

/// An error naming the option as given (`-drive file=x,...: Could not open 'x': ...`), with
/// QEMU's hint on a line of its own where QEMU gives one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{context}: {message}{}", hint.as_ref().map(|h| format!("\n{h}")).unwrap_or_default())]
pub struct BackendError {
    pub context: String,
    pub message: String,
    pub hint: Option<String>,
}

fn err(context: &str, message: impl Into<String>) -> BackendError {
    BackendError {
        context: context.to_string(),
        message: message.into(),
        hint: None,
    }
}

/// QEMU's wording of an errno (`Could not open 'x': No such file or directory`).
pub(crate) fn reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        // SAFETY: strerror returns a pointer to a static (or thread-local) NUL-terminated
        // string, read at once and copied.
        Some(code) => unsafe { std::ffi::CStr::from_ptr(libc::strerror(code)) }
            .to_string_lossy()
            .into_owned(),
        None => e.to_string(),
    }
}

/// Open `path` without ever blocking in `open` (a FIFO with no peer would), keeping
/// O_NONBLOCK on the descriptor only if `keep_nonblock`.
pub fn open_nonblocking(
    path: &Path,
    options: &mut OpenOptions,
    extra_flags: i32,
    keep_nonblock: bool,
) -> std::io::Result<File> {
    let file = options
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | extra_flags)
        .open(path)?;
    if !keep_nonblock {
        let fd = file.as_raw_fd();
        // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no memory is passed.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(file)
}

/// An image: `open_nonblocking`, or for `/dev/fdset/N` a duplicate of the fd passed with
/// `-add-fd` whose access mode matches, as `qemu_open` resolves it.
fn open_image(
    path: &Path,
    read_only: bool,
    extra_flags: i32,
    keep_nonblock: bool,
) -> std::io::Result<File> {
    if crate::fdset::is_fdset(path) {
        let access = if read_only {
            libc::O_RDONLY
        } else {
            libc::O_RDWR
        };
        return crate::fdset::open(path, access | extra_flags, 0);
    }
    open_nonblocking(
        path,
        OpenOptions::new().read(true).write(!read_only),
        extra_flags,
        keep_nonblock,
    )
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

/// Which kinds of file a block driver takes (QEMU's `file` and `host_device` drivers; `-drive`
/// picks whichever fits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Regular,
    Device,
    Any,
}

/// Check that a backing file can be opened as asked and is of a kind the driver takes, with
/// QEMU's text when not.
fn check_file(
    context: &str,
    path: &Path,
    read_only: bool,
    kind: FileKind,
) -> Result<(), BackendError> {
    let file = open_image(path, read_only, 0, true).map_err(|e| {
        err(
            context,
            format!("Could not open '{}': {}", path.display(), reason(&e)),
        )
    })?;
    let ty = file
        .metadata()
        .map_err(|e| {
            err(
                context,
                format!("Could not open '{}': {}", path.display(), reason(&e)),
            )
        })?
        .file_type();
    let device = ty.is_block_device() || ty.is_char_device();
    match kind {
        FileKind::Regular | FileKind::Any if ty.is_file() => Ok(()),
        FileKind::Device | FileKind::Any if device => Ok(()),
        FileKind::Device => Err(err(
            context,
            format!(
                "'host_device' driver requires '{}' to be either a character or block device",
                path.display()
            ),
        )),
        _ => Err(err(
            context,
            format!(
                "'file' driver requires '{}' to be a regular file",
                path.display()
            ),
        )),
    }
}

/// QEMU's `file.locking`/`locking` values.
fn locking_value(context: &str, key: &str, v: &str) -> Result<bool, BackendError> {
    match machine::OnOffAuto::parse(v) {
        Some(machine::OnOffAuto::On | machine::OnOffAuto::Auto) => Ok(true),
        Some(machine::OnOffAuto::Off) => Ok(false),
        None if key == "locking" => Err(err(
            context,
            format!("Parameter 'locking' does not accept value '{v}'"),
        )),
        None => Err(err(context, format!("invalid parameter value: {v}"))),
    }
}

/// QEMU's `aio=` check (file-posix): native AIO needs O_DIRECT. virtio-blk serves
/// `threads` and `native` with its pool of I/O threads (QEMU too falls back to threads
/// where Linux AIO cannot be set up); io_uring is refused as by a QEMU built without it.
fn check_aio(context: &str, aio: Option<&str>, direct: bool) -> Result<(), BackendError> {
    match aio {
        None | Some("threads") => Ok(()),
        Some("io_uring") => Err(err(
            context,
            "aio=io_uring was specified, but is not supported in this build.",
        )),
        Some("native") if direct => Ok(()),
        Some("native") => Err(err(
            context,
            "aio=native was specified, but it requires cache.direct=on, which was not specified.",
        )),
        Some(_) => Err(err(context, "invalid aio option")),
    }
}

/// Open (and unless `locking=off`, lock) the image of drive `backend` for a device, as QEMU
/// does when the device takes the drive: a drive serves one device.
fn attach_drive(backend: &mut Backend, context: &str, removable: bool) -> Result<(), BackendError> {
    let Backend::Drive {
        id,
        file: path,
        read_only,
        cache,
        locking,
        attached,
        empty,
        ..
    } = backend
    else {
        return Ok(());
    };
    // A CD-ROM (removable media) may start empty; a disk needs its medium.
    if *empty && !removable {
        return Err(err(context, "Device needs media, but drive is empty"));
    }
    if attached.is_some() {
        return Err(err(
            context,
            format!("Drive '{id}' is already in use by another device"),
        ));
    }
    // An empty CD-ROM drive has no image to open.
    if path.as_os_str().is_empty() {
        return Ok(());
    }
    let direct = if *cache == CacheMode::Direct {
        libc::O_DIRECT
    } else {
        0
    };
    let file = open_image(path, *read_only, direct, false).map_err(|e| {
        err(
            context,
            format!("Could not open '{}': {}", path.display(), reason(&e)),
        )
    })?;
    if *locking {
        // A device reads consistently and, unless read-only, writes; it lets others read,
        // write unchanged data and resize, never write (QEMU's defaults without share-rw).
        let perm = PERM_CONSISTENT_READ | if *read_only { 0 } else { PERM_WRITE };
        let shared = PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED | PERM_RESIZE;
        lock_image(&file, path, perm, shared & PERM_ALL).map_err(|(message, hint)| {
            BackendError {
                context: context.to_string(),
                message,
                hint: Some(hint),
            }
        })?;
    }
    *attached = Some(Handle(Arc::new(file)));
    Ok(())
}

/// The device that had drive `id` is gone (the guest ejected it): the drive is free for
/// another device; its image closes with the last handle (the device's dup went with it).
pub fn detach_drive(backends: &mut [Backend], drive: &str) {
    for b in backends.iter_mut() {
        if let Backend::Drive { id, attached, .. } = b {
            if id == drive {
                *attached = None;
            }
        }
    }
}

/// A drive a system flash took: its open image, whether it is read-only, and its size if
/// it is a null-co drive.
pub struct FlashDrive {
    pub file: File,
    pub read_only: bool,
    pub null_size: Option<u64>,
}

/// A system flash takes drive `id` (`-machine pflash0=ID`, `-drive if=pflash`): the image
/// opened and locked as for a device. None when no drive has that id.
pub fn attach_flash_drive(
    backends: &mut [Backend],
    id: &str,
    context: &str,
) -> Option<Result<FlashDrive, BackendError>> {
    let b = backends
        .iter_mut()
        .find(|b| matches!(b, Backend::Drive { id: d, .. } if d == id))?;
    Some(attach_drive(b, context, false).and_then(|()| {
        match b {
            Backend::Drive {
                attached: Some(handle),
                read_only,
                null_size,
                ..
            } => handle
                .dup()
                .map(|file| FlashDrive {
                    file,
                    read_only: *read_only,
                    null_size: *null_size,
                })
                .map_err(|e| err(context, format!("Could not open '{id}': {}", reason(&e)))),
            _ => Err(err(context, format!("Drive '{id}' has no image"))),
        }
    }))
}

/// Give each drive to the device that names it (`contexts[i]` names `devices[i]` in errors):
/// opens and locks its image; a second device on the same drive is refused.
pub fn attach_drives(
    devices: &[DeviceRequest],
    contexts: &[String],
    backends: &mut [Backend],
) -> Result<(), BackendError> {
    for (i, dev) in devices.iter().enumerate() {
        let context = contexts
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("-device {}", dev.driver));
        for (prop, value) in &dev.properties {
            if prop != "drive" {
                continue;
            }
            if let Some(b) = backends
                .iter_mut()
                .find(|b| matches!(b, Backend::Drive { id, .. } if id == value))
            {
                // An ATAPI drive (a CD) takes an empty drive; disks need media.
                let removable_media = machine::Catalog::builtin()
                    .device_type(&dev.driver)
                    .is_some_and(|t| t.atapi);
                attach_drive(b, &context, removable_media)?;
            }
        }
    }
    Ok(())
}

/// Open an entropy source without blocking (QEMU's rng-random opens O_RDONLY|O_NONBLOCK,
/// so a FIFO or any readable file is taken; reads that would block give no bytes).
pub fn open_rng(path: &Path) -> std::io::Result<File> {
    open_nonblocking(path, OpenOptions::new().read(true), 0, true)
}

/// `-netdev tap,id=ID[,ifname=NAME][,script=no,downscript=no]`, or one of the socket-like
/// types of crate::netdev.
pub fn parse_netdev(spec: impl AsRef<OsStr>) -> Result<Backend, BackendError> {
    let spec = spec.as_ref();
    let context = format!("-netdev {}", lossy(spec));
    let raw = keyval_pairs_os(spec);
    if let Some(backend) = socket_netdev(&context, &raw, true)? {
        return Ok(backend);
    }
    netdev_from_pairs(&context, keyval(spec), true)
}

/// A netdev of a socket-like type (None for others), checked but not yet opened.
fn socket_netdev(
    context: &str,
    raw: &[(String, OsString)],
    numeric_fds: bool,
) -> Result<Option<Backend>, BackendError> {
    let kind = raw
        .first()
        .map(|(k, v)| if v.is_empty() { k.clone() } else { lossy(v) })
        .unwrap_or_default();
    if !crate::netdev::KINDS.contains(&kind.as_str()) {
        return Ok(None);
    }
    let id = raw
        .iter()
        .rev()
        .find(|(k, _)| k == "id")
        .map(|(_, v)| lossy(v))
        .ok_or_else(|| err(context, "Parameter 'id' is missing"))?;
    Ok(Some(Backend::Netdev {
        id,
        kind,
        members: raw.to_vec(),
        numeric_fds,
        handle: None,
    }))
}

/// `-netdev tap,queues=N`.
fn tap_queues(context: &str, text: &str) -> Result<usize, BackendError> {
    match text.parse::<u64>() {
        // QEMU 7.2 asserts on queues=0; there is no tap without a queue.
        Ok(0) => Err(err(context, "tap: queues must be at least 1")),
        // The kernel's limit on the queues of one tap (MAX_TAP_QUEUES).
        Ok(n) if n > 256 => Err(err(
            context,
            format!("tap: queues={n} is more than a tap can have (256)"),
        )),
        Ok(n) => Ok(n as usize),
        Err(_) => Err(err(context, "Parameter 'queues' expects a uint64 value")),
    }
}

/// A descriptor given as tap `fd=`/`fds=`: a name a monitor client passed with `getfd`
/// (the backend takes the fd), or on the command line a number.
fn tap_fd(context: &str, text: &str, numeric_fds: bool) -> Result<i32, BackendError> {
    let named = if text.starts_with(|c: char| c.is_ascii_digit()) {
        None
    } else {
        crate::fdset::take_named(text)
    };
    match (named, text.parse::<i32>()) {
        (Some(fd), _) => Ok(std::os::fd::IntoRawFd::into_raw_fd(fd)),
        (None, Ok(n)) if n > 2 && numeric_fds => Ok(n),
        (None, Err(_)) if !numeric_fds => Err(err(
            context,
            format!("File descriptor named '{text}' has not been found"),
        )),
        _ => Err(err(
            context,
            format!("tap: unable to get fd: No file descriptor named {text} found"),
        )),
    }
}

/// A netdev from its members, the type first (from keyval text or a QMP object).
/// `numeric_fds`: a plain number names an inherited descriptor (command line only; over QMP
/// a number would let a client take any descriptor of the process, so QEMU only looks up
/// names passed with `getfd`, which machina does not implement).
fn netdev_from_pairs(
    context: &str,
    pairs: Vec<(String, String)>,
    numeric_fds: bool,
) -> Result<Backend, BackendError> {
    let context = context.to_string();
    let kind = pairs
        .first()
        .map(|(k, v)| if v.is_empty() { k.clone() } else { v.clone() });
    let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    match kind.as_deref() {
        Some("tap") => {}
        Some(other @ ("user" | "bridge" | "vhost-user" | "vhost-vdpa" | "l2tpv3" | "vde")) => {
            return Err(err(
                &context,
                format!(
                    "netdev type '{other}' is not supported by machina (use tap, socket, stream, dgram or hubport)"
                ),
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
            ("id" | "ifname" | "fd" | "fds" | "queues", _) => {}
            ("script" | "downscript", "no" | "") => {}
            ("script" | "downscript", _) => {
                return Err(err(&context, "machina runs no network scripts: use script=no,downscript=no with an existing or new tap"))
            }
            // vhost=off in any of QEMU's spellings; machina has no vhost.
            ("vhost", v) => match machine::parse_bool("vhost", v) {
                Ok(false) => {}
                Ok(true) => return Err(err(&context, "Invalid parameter 'vhost'")),
                Err(e) => return Err(err(&context, e.to_string())),
            },
            (other, _) => return Err(err(&context, format!("Invalid parameter '{other}'"))),
        }
    }
    let id = get("id").ok_or_else(|| err(&context, "Parameter 'id' is missing"))?;
    let has = |keys: &[&str]| pairs.iter().any(|(k, _)| keys.contains(&k.as_str()));
    let queues = get("queues")
        .map(|text| tap_queues(&context, &text))
        .transpose()?
        .unwrap_or(1);
    let take_fd = |text: &str| tap_fd(&context, text, numeric_fds);
    let fd = match get("fd") {
        None => None,
        Some(text) => {
            // QEMU's text for options that configure a tap machina would not open itself.
            if has(&["ifname", "script", "downscript", "queues", "fds"]) {
                return Err(err(
                    &context,
                    "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, fds=, and vhostfds= are invalid with fd=",
                ));
            }
            Some(take_fd(&text)?)
        }
    };
    let fds = match get("fds") {
        None => Vec::new(),
        Some(text) => {
            if has(&["ifname", "script", "downscript", "queues"]) {
                return Err(err(
                    &context,
                    "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, and vhostfd= are invalid with fds=",
                ));
            }
            // QEMU's get_fds: `:`-separated, at most MAX_TAP_QUEUES.
            text.split(':')
                .take(1024)
                .map(take_fd)
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    Ok(Backend::Tap {
        id,
        ifname: get("ifname"),
        fd,
        queues: if fds.is_empty() { queues } else { fds.len() },
        fds,
        handle: None,
        more: Vec::new(),
        client: None,
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
fn object_from_pairs(context: &str, raw: Vec<(String, OsString)>) -> Result<Backend, BackendError> {
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
fn qmp_members(
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
fn plain_text(e: &std::io::Error) -> String {
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

/// A tap's entry in the network thread; a tap works without it (only `info network` and
/// announcements would miss it), so a failure is not an error.
fn register_tap(id: &str, info: String, file: &File) -> Option<crate::netdev::Netdev> {
    let fd = file.try_clone().ok()?;
    crate::netdev::Netdev::register_tap(id, info, std::os::fd::OwnedFd::from(fd)).ok()
}

/// The queues of `-netdev tap` (one, or `queues=`/`fds=` of a multiqueue tap) and how
/// `info network` shows the tap: passed descriptors adopted (`fd=`, `fds=`; each closed,
/// since it was given to machina to own, whether or not it is a usable tap), or the tap
/// `ifname=` opened (created if missing).
fn tap_files(
    context: &str,
    backend_id: &str,
    fd: Option<i32>,
    fds: &[i32],
    ifname: &Option<String>,
    queues: usize,
) -> Result<(Vec<File>, String), BackendError> {
    use devices::virtio::net::tap;
    if let Some(fd) = fd {
        let adopted = tap::adopt_tap(fd);
        // SAFETY: `fd` was given to machina to own (an inherited number or a `getfd`
        // name); `adopt_tap` holds its own duplicate, and nothing else uses the number.
        unsafe { libc::close(fd) };
        let file = adopted.map_err(|e| {
            err(
                context,
                format!("tap: Can't use file descriptor {fd}: {}", plain_text(&e)),
            )
        })?;
        return Ok((vec![file], format!("fd={fd}")));
    }
    if !fds.is_empty() {
        let mut files = Vec::new();
        let mut failed = None;
        for &fd in fds {
            let adopted = tap::adopt_tap(fd);
            // SAFETY: as for `fd=` above.
            unsafe { libc::close(fd) };
            match adopted {
                Ok(f) => files.push(f),
                Err(e) => {
                    failed.get_or_insert(format!(
                        "{backend_id}: Can't use file descriptor {fd}: {}",
                        plain_text(&e)
                    ));
                }
            }
        }
        if let Some(message) = failed {
            return Err(err(context, message));
        }
        let list: Vec<String> = fds.iter().map(i32::to_string).collect();
        return Ok((files, format!("fds={}", list.join(":"))));
    }
    let name = ifname.clone().unwrap_or_default();
    let files = tap::open_tap_queues(&name, queues).map_err(|e| {
        err(
            context,
            format!(
                "could not configure /dev/net/tun ({name}): {}",
                plain_text(&e)
            ),
        )
    })?;
    Ok((files, format!("ifname={name},script=no,downscript=no")))
}

/// What QEMU does when a backend is created: a tap is opened (and kept: a named tap exists
/// as long as its descriptor), a chardev's file is created.
fn open_backend(backend: &mut Backend, context: &str) -> Result<(), BackendError> {
    let backend_id = backend.id().to_string();
    let backend_id = backend_id.as_str();
    match backend {
        Backend::Tap {
            fd,
            fds,
            ifname,
            queues,
            handle,
            more,
            client,
            ..
        } => {
            let (files, info) = tap_files(context, backend_id, *fd, fds, ifname, *queues)?;
            let mut files = files.into_iter();
            let first = files.next().ok_or_else(|| err(context, "tap: no queue"))?;
            *client = register_tap(backend_id, info, &first);
            *handle = Some(Handle(Arc::new(first)));
            *more = files.map(|f| Handle(Arc::new(f))).collect();
        }
        Backend::Netdev {
            id,
            kind,
            members,
            numeric_fds,
            handle,
        } => {
            let netdev = crate::netdev::Netdev::create(kind, id, members, *numeric_fds)
                .map_err(|e| err(context, e.0))?;
            *handle = Some(netdev);
        }
        // `/dev/fdset/N` is not a path to create: config.rs opened it through the fd set.
        Backend::Chardev {
            backend: CharBackend::File(path),
            ..
        } if crate::fdset::is_fdset(path) => {}
        Backend::Chardev {
            backend: CharBackend::File(path),
            ..
        } => {
            // Created (not truncated: the device truncates when it opens it) so that a path
            // that cannot be written is refused here, as QEMU does, instead of output being
            // lost later.
            open_nonblocking(path, OpenOptions::new().write(true).create(true), 0, true).map_err(
                |e| {
                    err(
                        context,
                        format!("Could not open '{}': {}", path.display(), reason(&e)),
                    )
                },
            )?;
        }
        Backend::Chardev {
            backend: CharBackend::UnixClient(path),
            ..
        } => {
            // QEMU connects when the chardev is created; machina connects when a device opens
            // it, so refuse here what could never connect (no file, or not a socket), without
            // a connection the listener would see.
            let refused = match std::fs::metadata(&path) {
                Err(e) => Some(reason(&e)),
                Ok(m) if !m.file_type().is_socket() => Some(reason(
                    &std::io::Error::from_raw_os_error(libc::ECONNREFUSED),
                )),
                Ok(_) => None,
            };
            if let Some(why) = refused {
                return Err(err(
                    context,
                    format!("Failed to connect to '{}': {why}", path.display()),
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Before chardev `chardev` is added: if a packet filter uses it, open it in the network
/// thread now (a server listens at once, as QEMU's chardevs do, so a client chardev created
/// after it can connect).
pub fn open_filter_chardev(
    list: &[Backend],
    chardev: &Backend,
    context: &str,
) -> Result<(), BackendError> {
    let Backend::Chardev { id, backend } = chardev else {
        return Ok(());
    };
    let used = list.iter().any(|b| {
        matches!(b, Backend::Filter { outdev, indev, .. }
            if outdev.as_deref() == Some(id.as_str()) || indev.as_deref() == Some(id.as_str()))
    });
    if !used {
        return Ok(());
    }
    let spec = match backend {
        CharBackend::UnixServer { path, .. } => crate::netdev::CharSocket::Server(path.clone()),
        CharBackend::UnixClient(path) => crate::netdev::CharSocket::Client(path.clone()),
        CharBackend::SocketFd { fd, .. } => crate::netdev::CharSocket::Fd(*fd),
        _ => {
            return Err(err(
                context,
                format!("chardev '{id}': machina's packet filters take socket chardevs"),
            ))
        }
    };
    crate::netdev::open_char(id, &spec).map_err(|e| err(context, e.0))
}

/// Start every packet filter of `list` on its netdev (after the netdevs and chardevs).
pub fn open_filters(list: &[Backend]) -> Result<(), BackendError> {
    for b in list {
        if let Backend::Filter {
            id,
            redirector,
            netdev,
            queue,
            outdev,
            indev,
        } = b
        {
            let kind = if *redirector {
                "filter-redirector"
            } else {
                "filter-mirror"
            };
            let context = format!("-object {kind},id={id}");
            for name in [outdev, indev].into_iter().flatten() {
                if !list
                    .iter()
                    .any(|c| matches!(c, Backend::Chardev { id, .. } if id == name))
                {
                    return Err(err(&context, format!("Device '{name}' not found")));
                }
            }
            crate::netdev::add_filter(
                id,
                *redirector,
                netdev,
                queue,
                outdev.as_deref(),
                indev.as_deref(),
            )
            .map_err(|e| err(&context, e.0))?;
        }
    }
    Ok(())
}

/// Add `backend` unless its id is taken (QEMU: "Duplicate ID 'd0' for drive"), opening what
/// QEMU opens when the backend is created.
pub fn add(
    list: &mut Vec<Backend>,
    mut backend: Backend,
    context: &str,
) -> Result<(), BackendError> {
    let kind = match &backend {
        Backend::Drive { .. } => "drive",
        Backend::Tap { .. } | Backend::Netdev { .. } => "netdev",
        Backend::Chardev { .. } => "chardev",
        Backend::RngRandom { .. } | Backend::RngBuiltin { .. } | Backend::Filter { .. } => "object",
    };
    place_ide_drive(list, &mut backend, context)?;
    if list
        .iter()
        .any(|b| b.id() == backend.id() && b.property() == backend.property())
    {
        return Err(err(
            context,
            format!("Duplicate ID '{}' for {kind}", backend.id()),
        ));
    }
    open_backend(&mut backend, context)?;
    list.push(backend);
    Ok(())
}

/// Slots of `-drive if=ide` (QEMU's drive_new): a drive without index, bus or unit takes the
/// first free slot, a taken slot is refused; a drive without id gets QEMU's default one.
fn place_ide_drive(
    list: &[Backend],
    backend: &mut Backend,
    context: &str,
) -> Result<(), BackendError> {
    const SLOTS: u32 = 4;
    let Backend::Drive {
        id,
        cdrom,
        ide_index: Some(index),
        ..
    } = backend
    else {
        return Ok(());
    };
    let taken = |i: u32| {
        list.iter()
            .any(|b| matches!(b, Backend::Drive { ide_index: Some(t), .. } if *t == i))
    };
    if *index == u32::MAX {
        *index = (0..SLOTS).find(|&i| !taken(i)).ok_or_else(|| {
            err(
                context,
                "machina has 4 IDE slots (2 buses of 2 units), all taken",
            )
        })?;
    } else if taken(*index) {
        return Err(err(
            context,
            format!(
                "drive with bus={}, unit={} (index={}) exists",
                *index / 2,
                *index % 2,
                *index
            ),
        ));
    }
    if id.is_empty() {
        *id = format!(
            "ide{}-{}{}",
            *index / 2,
            if *cdrom { "cd" } else { "hd" },
            *index % 2
        );
    }
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

/// Every backend a device refers to must exist, and what realize requires (virtio-blk's
/// drive) is set.
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
        // Realize's own refusal (virtio-blk: "drive property not set"), from the catalog.
        let required = machine::Catalog::builtin()
            .device_type(&dev.driver)
            .map(|t| t.required_properties.as_slice())
            .unwrap_or_default();
        if let Some(missing) = required
            .iter()
            .find(|p| !dev.properties.iter().any(|(k, _)| k == *p))
        {
            return Err(err(&context, format!("{missing} property not set")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drives_and_errors() {
        let dir = machina_tests::TempDir::new("backends");
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
        // Every virtio-blk variant and the alias need a drive (the catalog's
        // required-properties), as QEMU's realize says.
        for driver in [
            "virtio-blk-pci",
            "virtio-blk-pci-transitional",
            "virtio-blk-pci-non-transitional",
            "virtio-blk",
        ] {
            let blk = DeviceRequest::parse(driver).unwrap();
            assert_eq!(
                check_references(&[blk], &list).unwrap_err().message,
                "drive property not set",
                "{driver}"
            );
        }
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
    }

    #[test]
    fn lock_bytes_conflict_between_open_files() {
        let dir = machina_tests::TempDir::new("locks");
        let img = dir.join("l.img");
        std::fs::write(&img, [0u8; 512]).unwrap();
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&img)
                .unwrap()
        };
        let rw = PERM_CONSISTENT_READ | PERM_WRITE;
        let shared = PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED | PERM_RESIZE;
        let first = open();
        lock_image(&first, &img, rw, shared).unwrap();
        // OFD locks belong to the open file, so a second open in this process conflicts.
        let second = open();
        let (message, hint) = lock_image(&second, &img, rw, shared).unwrap_err();
        assert_eq!(message, "Failed to get \"write\" lock");
        assert_eq!(
            hint,
            format!("Is another process using the image [{}]?", img.display())
        );
        let reader = open();
        let (message, _) = lock_image(&reader, &img, PERM_CONSISTENT_READ, shared).unwrap_err();
        assert_eq!(message, "Failed to get shared \"write\" lock");
        // Sharing write (share-rw) and not writing coexists with the writer.
        let sharing = open();
        lock_image(&sharing, &img, PERM_CONSISTENT_READ, PERM_ALL).unwrap();
        drop(first);
        drop(second);
        drop(reader);
        drop(sharing);
        // Once closed, the locks are gone.
        lock_image(&open(), &img, rw, shared).unwrap();
    }

    #[test]
    fn a_server_socket_chardev_gives_output_to_its_client_and_never_blocks() {
        use std::io::{Read, Write};
        let dir = machina_tests::TempDir::new("sockout");
        let path = dir.join("c.sock");
        let mut out = open_char_output(&CharBackend::UnixServer {
            path: path.clone(),
            wait: true,
        })
        .unwrap();
        // No client yet: output is dropped, not queued or blocked on.
        out.write_all(b"lost\n").unwrap();
        let mut client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        out.write_all(b"hello\n").unwrap();
        let mut buf = [0u8; 6];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello\n");
        // A client that never reads: writes keep returning once its buffer is full.
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..64 {
            out.write_all(&chunk).unwrap();
        }
        drop(out);
        assert!(
            !path.exists(),
            "the socket file is removed with the chardev"
        );
    }
}
