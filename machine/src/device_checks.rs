//! The value checks QEMU 7.2 makes on virtio devices' properties, when a property is set
//! (`setter`) and when the device is realized (`realize`), with QEMU's texts. Which checks
//! apply follows the virtio device type of the proxy (2 block, 3 console/serial, 4 rng).

use crate::device_types::DeviceType;
use crate::error::PlanError;
use crate::value::Properties;

/// VIRTIO_QUEUE_MAX.
const VIRTIO_QUEUE_MAX: u64 = 1024;
/// `num-queues` default: one queue per vCPU.
const VIRTIO_BLK_AUTO_NUM_QUEUES: u64 = u16::MAX as u64;
/// The block size range of `DEFINE_PROP_BLOCKSIZE`.
const MIN_BLOCK_SIZE: u64 = 512;
const MAX_BLOCK_SIZE: u64 = 2 << 20;
/// What the file backend reports when a size is left at 0.
const BACKEND_BLOCK_SIZE: u64 = 512;
/// virtio-blk error policies machina implements: an I/O error is reported to the guest.
const ERROR_POLICIES: &[&str] = &["report", "auto"];
/// What machina's device models implement (devices::virtio): more would be dropped
/// silently, so it is refused here.
const MACHINA_MAX_SERIAL_PORTS: u64 = 31;
const MACHINA_MAX_BLK_QUEUES: u64 = 64;

fn num(props: &Properties, name: &str) -> Option<u64> {
    props.uint(name)
}

fn virtio_type(dev: &DeviceType) -> Option<u16> {
    dev.virtio.as_ref().map(|v| v.device_type)
}

fn err(text: String) -> PlanError {
    PlanError::InvalidValue(text)
}

/// Checks made when the properties are set (before any address is chosen).
pub fn setter(dev: &DeviceType, props: &Properties) -> Result<(), PlanError> {
    if virtio_type(dev) != Some(2) {
        return Ok(());
    }
    for name in ["logical_block_size", "physical_block_size"] {
        let Some(v) = num(props, name) else { continue };
        if v == 0 {
            continue;
        }
        if !v.is_power_of_two() {
            return Err(err(format!(
                "Property .{name} doesn't take value '{v}', it's not a power of 2"
            )));
        }
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&v) {
            return Err(err(format!(
                "Property .{name} doesn't take value {v} (minimum: {MIN_BLOCK_SIZE}, maximum: {MAX_BLOCK_SIZE})"
            )));
        }
    }
    Ok(())
}

/// Checks made by the device's realize.
pub fn realize(dev: &DeviceType, props: &Properties) -> Result<(), PlanError> {
    match virtio_type(dev) {
        Some(2) => blk(props),
        Some(3) => match num(props, "max_ports") {
            Some(0) => Err(err(
                "Maximum number of serial ports not specified".to_string()
            )),
            Some(n) if n > VIRTIO_QUEUE_MAX / 2 - 1 => Err(err(format!(
                "maximum ports supported: {}",
                VIRTIO_QUEUE_MAX / 2 - 1
            ))),
            Some(n) if n > MACHINA_MAX_SERIAL_PORTS => Err(err(format!(
                "max_ports={n} is not supported by machina (at most {MACHINA_MAX_SERIAL_PORTS})"
            ))),
            _ => Ok(()),
        },
        Some(4) if num(props, "period") == Some(0) => Err(err(
            "'period' parameter expects a positive integer".to_string(),
        )),
        // The rng model has no rate limit: only the default "unlimited" is honest.
        Some(4) => match num(props, "max-bytes") {
            Some(n) if n != i64::MAX as u64 => Err(err(format!(
                "max-bytes={n} is not supported by machina (no rate limit)"
            ))),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

fn blk(props: &Properties) -> Result<(), PlanError> {
    let size = |name: &str| {
        num(props, name)
            .filter(|&v| v != 0)
            .unwrap_or(BACKEND_BLOCK_SIZE)
    };
    let logical = size("logical_block_size");
    let physical = size("physical_block_size");
    if logical > physical {
        return Err(err(
            "logical_block_size > physical_block_size not supported".to_string(),
        ));
    }
    for name in ["min_io_size", "opt_io_size"] {
        if num(props, name).is_some_and(|v| v % logical != 0) {
            return Err(err(format!(
                "{name} must be a multiple of logical_block_size"
            )));
        }
    }
    // -1 (u32) is "let the backend decide".
    if num(props, "discard_granularity")
        .is_some_and(|v| v != u64::from(u32::MAX) && v % logical != 0)
    {
        return Err(err(
            "discard_granularity must be a multiple of logical_block_size".to_string(),
        ));
    }
    match num(props, "num-queues") {
        Some(0) => return Err(err("num-queues property must be larger than 0".to_string())),
        // QEMU 7.2 aborts on an assertion here.
        Some(n) if n != VIRTIO_BLK_AUTO_NUM_QUEUES && n > VIRTIO_QUEUE_MAX => {
            return Err(err(format!(
                "num-queues property must be at most {VIRTIO_QUEUE_MAX}"
            )))
        }
        Some(n) if n != VIRTIO_BLK_AUTO_NUM_QUEUES && n > MACHINA_MAX_BLK_QUEUES => {
            return Err(err(format!(
                "num-queues={n} is not supported by machina (at most {MACHINA_MAX_BLK_QUEUES})"
            )))
        }
        _ => {}
    }
    // The block model has 512-byte sectors and advertises no I/O topology.
    for name in [
        "logical_block_size",
        "physical_block_size",
        "min_io_size",
        "opt_io_size",
    ] {
        if let Some(v) = num(props, name).filter(|&v| v != 0 && v != BACKEND_BLOCK_SIZE) {
            return Err(err(format!(
                "{name}={v} is not supported by machina (512-byte sectors, no I/O topology)"
            )));
        }
    }
    if let Some(q) = num(props, "queue-size") {
        if q <= 2 {
            return Err(err(format!(
                "invalid queue-size property ({q}), must be > 2"
            )));
        }
        if !q.is_power_of_two() || q > VIRTIO_QUEUE_MAX {
            return Err(err(format!(
                "invalid queue-size property ({q}), must be a power of 2 (max {VIRTIO_QUEUE_MAX})"
            )));
        }
    }
    for name in ["werror", "rerror"] {
        if let Some(v) = props.get(name) {
            if !ERROR_POLICIES.iter().any(|p| v == p) {
                return Err(err(format!(
                    "{name}={v} is not supported by machina (I/O errors are reported to the guest: {})",
                    ERROR_POLICIES.join(", ")
                )));
            }
        }
    }
    Ok(())
}
