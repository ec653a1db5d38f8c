//! Drive images: opening them (`/dev/fdset/N` included), checking the file kind, locking and
//! `aio`/`cache` options, and attaching drives (IDE, flash) to the devices that take them.

use super::*;

/// An image: `open_nonblocking`, or for `/dev/fdset/N` a duplicate of the fd passed with
/// `-add-fd` whose access mode matches, as `qemu_open` resolves it.
pub(super) fn open_image(
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

/// Which kinds of file a block driver takes (QEMU's `file` and `host_device` drivers; `-drive`
/// picks whichever fits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileKind {
    Regular,
    Device,
    Any,
}

/// Check that a backing file can be opened as asked and is of a kind the driver takes, with
/// QEMU's text when not.
pub(super) fn check_file(
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
pub(super) fn locking_value(context: &str, key: &str, v: &str) -> Result<bool, BackendError> {
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
pub(super) fn check_aio(
    context: &str,
    aio: Option<&str>,
    direct: bool,
) -> Result<(), BackendError> {
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
pub(super) fn attach_drive(
    backend: &mut Backend,
    context: &str,
    removable: bool,
) -> Result<(), BackendError> {
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
