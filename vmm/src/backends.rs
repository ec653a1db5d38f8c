//! Device backends: `-drive`/`-blockdev` (raw files), `-netdev tap`, `-chardev`,
//! `-object rng-random`, from the command line or their QMP `*-add` commands. They are checked
//! when given (files open, ids unique) and when devices refer to them, with QEMU's texts.
//!
//! Nothing here may block the thread that asks (the QMP monitor under `-delay-machine-init`):
//! every file a user names is opened with O_NONBLOCK (a FIFO would block `open` itself) and
//! its type checked from the open descriptor. A drive's image is opened and locked when a
//! device takes it (QEMU's `file` driver lock bytes, so QEMU and machina see each other), and
//! the locked descriptor is kept for the life of the process.
//!
//! This module holds the backend types and the shared open/keyval helpers; drive images are
//! in `drive` (parsing in `block`), netdevs in `net`, `-chardev`/`-object`/QMP arguments in
//! `parse`, opening in `open`, the backend list and reference checks in `registry`.

mod block;
mod char_input;
mod char_output;
mod drive;
mod image_lock;
mod net;
mod open;
mod parse;
mod registry;

use drive::*;
pub use drive::{attach_drives, attach_flash_drive, detach_drive, FlashDrive};
pub use net::parse_netdev;
use net::*;
use open::*;
pub use open::{open_filter_chardev, open_filters, open_rng};
use parse::*;
pub use parse::{from_qmp, from_qmp_cancellable, parse_chardev, parse_object};
pub use registry::{add, check_references};

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
