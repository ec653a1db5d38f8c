//! Block queries: query-named-block-nodes, query-block, query-blockstats, from the
//! configured drives, the devices of the plan that use them, and the virtio-blk devices'
//! request counters.

use crate::backends::{Backend, CacheMode};
use crate::control::{Controller, VmState};
use devices::virtio::blk::{BlockStats, DiskSize};
use qmp::{CommandDef, Map, ObjectType, QmpError, Registry, RegistryError, Session, Type, Value};
use serde_json::json;
use std::collections::HashMap;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

/// The counters of drive `id`: one set per drive for the whole process, so that they
/// survive the devices being rebuilt by a reset, as QEMU's do.
pub fn drive_stats(id: &str) -> Arc<BlockStats> {
    static STATS: OnceLock<Mutex<HashMap<String, Arc<BlockStats>>>> = OnceLock::new();
    STATS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(id.to_string())
        .or_default()
        .clone()
}

/// The size the guest sees of drive `id` (what `block_resize` changes), one per drive for
/// the whole process like the counters, so a device rebuilt by a reset shares it.
pub fn drive_size(id: &str) -> Arc<DiskSize> {
    static SIZES: OnceLock<Mutex<HashMap<String, Arc<DiskSize>>>> = OnceLock::new();
    SIZES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(id.to_string())
        .or_default()
        .clone()
}

/// strerror's text of an I/O error (QEMU's error_setg_errno appends it).
fn os_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// block_resize (QEMU's qmp_block_resize over file-posix's raw_co_truncate): a regular
/// image file is truncated or extended to exactly `size`; a block device cannot grow and
/// keeps its size. The device using the drive sees the new capacity and gets a config
/// interrupt.
fn block_resize(state: &VmState, args: &Map<String, Value>) -> Result<Value, QmpError> {
    let device = args.get("device").and_then(Value::as_str);
    let node = args.get("node-name").and_then(Value::as_str);
    let size = args.get("size").and_then(Value::as_i64).unwrap_or(0);
    let list = drives(state);
    // bdrv_lookup_bs: the BlockBackend named `device` first, then the node.
    let found = device
        .and_then(|d| list.iter().find(|x| x.legacy && x.id == d))
        .map(|x| (x, true))
        .or_else(|| {
            node.and_then(|n| list.iter().find(|x| x.id == n))
                .map(|x| (x, false))
        });
    let Some((drive, by_device)) = found else {
        return Err(QmpError::generic(format!(
            "Cannot find device='{}' nor node-name='{}'",
            device.unwrap_or(""),
            node.unwrap_or("")
        )));
    };
    if drive.empty {
        return Err(QmpError::generic(if by_device {
            format!("Device '{}' has no medium", drive.id)
        } else {
            "No medium inserted".to_string()
        }));
    }
    if size < 0 {
        return Err(QmpError::invalid_parameter_value("size", "a >0 size"));
    }
    let size = size as u64;
    let Some(Backend::Drive {
        attached,
        null_size,
        ..
    }) = state.config.backends.iter().find(|b| b.id() == drive.id)
    else {
        return Err(QmpError::generic(format!("drive '{}' not found", drive.id)));
    };
    if drive.read_only {
        return Err(QmpError::generic("Image is read-only"));
    }
    // null-co has no truncate (bdrv_co_truncate's text).
    if null_size.is_some() {
        return Err(QmpError::generic(
            "Image format driver does not support resize",
        ));
    }
    let counted = drive.counted_as();
    // An IDE disk keeps the size it was built with: resizing its image would leave the
    // guest a disk of the wrong size.
    let ide = state.plan.as_ref().is_some_and(|p| {
        p.ide
            .iter()
            .any(|d| d.properties.nonempty_str("drive") == Some(counted))
    });
    if ide {
        return Err(QmpError::generic(format!(
            "drive '{counted}' is used by an IDE disk, which machina cannot resize"
        )));
    }
    let file = match attached {
        Some(handle) => handle.dup(),
        None => std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(drive.file),
    }
    .map_err(|e| {
        QmpError::generic(format!(
            "Could not open '{}': {}",
            drive.file.display(),
            os_text(&e)
        ))
    })?;
    let meta = file
        .metadata()
        .map_err(|e| QmpError::generic(format!("Failed to fstat() the file: {}", os_text(&e))))?;
    if meta.file_type().is_file() {
        file.set_len(size)
            .map_err(|e| QmpError::generic(format!("Could not resize file: {}", os_text(&e))))?;
    } else {
        let current = (&file).seek(SeekFrom::End(0)).unwrap_or(0);
        if size > current {
            return Err(QmpError::generic("Cannot grow device files"));
        }
    }
    let now = (&file)
        .seek(SeekFrom::End(0))
        .map_err(|e| QmpError::generic(format!("Could not resize file: {}", os_text(&e))))?;
    drive_size(counted).resize(now);
    Ok(Value::Null)
}

/// A drive as the queries see it.
struct Drive<'a> {
    id: &'a str,
    file: &'a Path,
    read_only: bool,
    cache: CacheMode,
    /// QOM path of the device's block backend, when a device with an id uses the drive.
    qdev: Option<String>,
    attached: bool,
    /// Made by `-drive`/`drive_add`: a BlockBackend named by its id.
    legacy: bool,
    /// No medium (`-drive` without `file=`): no node.
    empty: bool,
    /// The node a device's drive sits on (`-blockdev driver=file` under `driver=raw`):
    /// not used by a device itself, same file as a drive that is. Its I/O is that drive's.
    under: Option<&'a str>,
}

impl Drive<'_> {
    /// The node whose requests this one carries.
    fn counted_as(&self) -> &str {
        self.under.unwrap_or(self.id)
    }
}

fn drives(state: &VmState) -> Vec<Drive<'_>> {
    let mut list = configured_drives(state);
    let attached: Vec<(String, std::path::PathBuf)> = list
        .iter()
        .filter(|d| d.attached)
        .map(|d| (d.id.to_string(), d.file.to_path_buf()))
        .collect();
    for d in list.iter_mut().filter(|d| !d.attached) {
        d.under = attached
            .iter()
            .find(|(_, file)| file == d.file)
            .and_then(|(id, _)| state.config.backends.iter().find(|b| b.id() == id))
            .map(|b| b.id());
    }
    list
}

fn configured_drives(state: &VmState) -> Vec<Drive<'_>> {
    let plan = state.plan.as_ref();
    state
        .config
        .backends
        .iter()
        .filter_map(|b| match b {
            Backend::Drive {
                id,
                file,
                read_only,
                cache,
                legacy,
                empty,
                ..
            } => {
                let user = plan.and_then(|p| {
                    p.pci
                        .iter()
                        .find(|f| f.properties.nonempty_str("drive") == Some(id.as_str()))
                });
                // An IDE drive's device is the qdev itself (no virtio backend below it).
                let ide_user = plan.and_then(|p| {
                    p.ide
                        .iter()
                        .find(|d| d.properties.nonempty_str("drive") == Some(id.as_str()))
                });
                Some(Drive {
                    id,
                    file,
                    read_only: *read_only,
                    cache: *cache,
                    qdev: match (user, ide_user) {
                        (Some(f), _) => {
                            f.id.as_ref()
                                .map(|d| format!("/machine/peripheral/{d}/virtio-backend"))
                        }
                        (None, Some(d)) => {
                            d.id.as_ref().map(|d| format!("/machine/peripheral/{d}"))
                        }
                        (None, None) => None,
                    },
                    attached: user.is_some() || ide_user.is_some(),
                    legacy: *legacy,
                    empty: *empty,
                    under: None,
                })
            }
            _ => None,
        })
        .collect()
}

/// Size of the image in bytes (block devices: their end) and bytes allocated on the host.
/// Drives are regular files or block devices (the backends refuse anything else), so
/// opening one here cannot block.
fn sizes(path: &Path) -> (u64, u64) {
    let Ok(meta) = std::fs::metadata(path) else {
        return (0, 0);
    };
    let virtual_size = if meta.file_type().is_block_device() {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .and_then(|mut f| f.seek(SeekFrom::End(0)))
            .unwrap_or(0)
    } else {
        meta.len()
    };
    (virtual_size, meta.blocks() * 512)
}

/// BlockDeviceInfo of a drive (machina's drives are raw images).
fn node_info(d: &Drive) -> Value {
    let file = d.file.display().to_string();
    let (virtual_size, actual_size) = sizes(d.file);
    json!({
        "node-name": d.id,
        "file": file,
        "ro": d.read_only,
        // A node under another is the file (protocol) node; machina's images are raw.
        "drv": if d.under.is_some() { "file" } else { "raw" },
        "encrypted": false,
        "backing_file_depth": 0,
        "detect_zeroes": "off",
        "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0,
        "write_threshold": 0,
        "cache": {
            "writeback": d.cache != CacheMode::WriteThrough,
            "direct": d.cache == CacheMode::Direct,
            "no-flush": d.cache == CacheMode::Unsafe,
        },
        "image": {
            "filename": file,
            "format": "raw",
            "virtual-size": virtual_size,
            "actual-size": actual_size,
            "dirty-flag": false,
        },
    })
}

fn stats_value(s: &BlockStats) -> Value {
    let g = BlockStats::get;
    json!({
        "rd_bytes": g(&s.rd_bytes),
        "wr_bytes": g(&s.wr_bytes),
        "unmap_bytes": 0,
        "rd_operations": g(&s.rd_operations),
        "wr_operations": g(&s.wr_operations),
        "flush_operations": g(&s.flush_operations),
        "unmap_operations": g(&s.unmap_operations),
        "rd_total_time_ns": g(&s.rd_total_time_ns),
        "wr_total_time_ns": g(&s.wr_total_time_ns),
        "flush_total_time_ns": g(&s.flush_total_time_ns),
        "unmap_total_time_ns": 0,
        "wr_highest_offset": g(&s.wr_highest_offset),
        // machina never merges requests.
        "rd_merged": 0, "wr_merged": 0, "unmap_merged": 0,
        "failed_rd_operations": g(&s.failed_rd_operations),
        "failed_wr_operations": g(&s.failed_wr_operations),
        "failed_flush_operations": g(&s.failed_flush_operations),
        "failed_unmap_operations": g(&s.failed_unmap_operations),
        "invalid_rd_operations": g(&s.invalid_rd_operations),
        "invalid_wr_operations": g(&s.invalid_wr_operations),
        "invalid_flush_operations": 0,
        "invalid_unmap_operations": 0,
        "account_invalid": true,
        "account_failed": true,
        "timed_stats": [],
    })
}

pub(super) fn register(reg: &mut Registry, control: &Arc<Controller>) -> Result<(), RegistryError> {
    let c = control.clone();
    reg.register(
        CommandDef::new("block_resize")
            .opt("device", Type::Str)
            .opt("node-name", Type::Str)
            .arg("size", Type::Int),
        move |args: Map<String, Value>, _ctx: &mut Session| block_resize(&c.state(), &args),
    )?;

    let c = control.clone();
    reg.register(
        CommandDef::new("query-named-block-nodes")
            .opt("flat", Type::Bool)
            .returns(Type::array(Type::Any))
            .allow_preconfig(true),
        move |_args: Map<String, Value>, _ctx: &mut Session| {
            // One node per drive (machina's raw drives have no child nodes), so the flat
            // and the nested lists are the same.
            let state = c.state();
            Ok(Value::Array(
                drives(&state)
                    .iter()
                    .filter(|d| !d.empty)
                    .map(node_info)
                    .collect(),
            ))
        },
    )?;

    let c = control.clone();
    reg.register(
        CommandDef::new("query-block").returns(Type::array(Type::object(
            ObjectType::new("BlockInfo")
                .member("device", Type::Str)
                .optional("qdev", Type::Str)
                .member("type", Type::Str)
                .member("removable", Type::Bool)
                .member("locked", Type::Bool)
                .optional("inserted", Type::Any),
        ))),
        move |_args: Map<String, Value>, _ctx: &mut Session| {
            let state = c.state();
            Ok(Value::Array(
                drives(&state)
                    .iter()
                    // A -blockdev node has a BlockBackend only while a device uses it;
                    // a -drive is one from the start, named by its id.
                    .filter(|d| d.attached || d.legacy)
                    .map(|d| {
                        let mut info = json!({
                            "device": if d.legacy { d.id } else { "" },
                            "type": "unknown",
                            "removable": !d.attached,
                            "locked": false,
                        });
                        // Only a device (virtio-blk) keeps an I/O status.
                        if d.attached {
                            info["io-status"] = json!("ok");
                        }
                        if !d.empty {
                            info["inserted"] = node_info(d);
                        }
                        if let Some(q) = &d.qdev {
                            info["qdev"] = json!(q);
                        }
                        info
                    })
                    .collect(),
            ))
        },
    )?;

    let c = control.clone();
    reg.register(
        CommandDef::new("query-blockstats")
            .opt("query-nodes", Type::Bool)
            .returns(Type::array(Type::Any)),
        move |args: Map<String, Value>, _ctx: &mut Session| {
            let nodes = args
                .get("query-nodes")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let state = c.state();
            Ok(Value::Array(
                drives(&state)
                    .iter()
                    .filter(|d| nodes || d.attached)
                    .map(|d| {
                        let mut info = json!({
                            "device": "",
                            "node-name": d.id,
                            "stats": stats_value(&drive_stats(d.counted_as())),
                        });
                        if let Some(q) = &d.qdev {
                            info["qdev"] = json!(q);
                        }
                        info
                    })
                    .collect(),
            ))
        },
    )?;
    Ok(())
}
