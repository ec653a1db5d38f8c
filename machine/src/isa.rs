//! ISA and system devices: the board's fixed ones (PIC, PIT, RTC, DMA, i8042, HPET, IOAPIC,
//! serial/parallel/floppy defaults, ...) filtered by their conditions, and ISA devices
//! requested with `-device` (`isa-serial,index=N`).

use crate::board::IsaDeviceDef;
use crate::device_types::DeviceType;
use crate::error::PlanError;
use crate::plan::{FirmwareIoPlan, IsaDevicePlan, Range};
use crate::value::{PropValue, Properties};

/// The board's devices whose condition holds, in board order.
pub fn board_devices(defs: &[IsaDeviceDef], flag: impl Fn(&str) -> bool) -> Vec<IsaDevicePlan> {
    defs.iter()
        .filter(|d| d.when.eval(&flag))
        .map(|d| IsaDevicePlan {
            type_name: d.ty.clone(),
            id: d.id.clone(),
            io: d
                .io
                .iter()
                .map(|(b, s)| Range {
                    base: b.0,
                    size: s.0,
                })
                .collect(),
            irqs: d.irqs.clone(),
            mmio: d
                .mmio
                .iter()
                .map(|(b, s)| Range {
                    base: b.0,
                    size: s.0,
                })
                .collect(),
        })
        .collect()
}

/// ISA has IRQs 0-15 and a 16-bit I/O port space.
const ISA_IRQS: u64 = 16;
const IO_SPACE_END: u64 = 0x1_0000;

/// The board's firmware-mapped I/O blocks whose condition holds.
pub fn firmware_io(
    defs: &[crate::board::FirmwareIoDef],
    flag: impl Fn(&str) -> bool,
) -> Vec<FirmwareIoPlan> {
    defs.iter()
        .filter(|d| d.when.eval(&flag))
        .map(|d| FirmwareIoPlan {
            name: d.name.clone(),
            role: d.role,
            range: Range {
                base: d.base.0,
                size: d.size.0,
            },
        })
        .collect()
}

/// A requested ISA device: resources from `iobase`/`irq` if given, else from `index` (or the
/// first index whose I/O base is free). QEMU's index limit applies; ports must fit the I/O
/// space and not cover another device or a block the firmware maps (QEMU would let the later
/// region hide the earlier: on q35 an `iobase=0x600` serial port hides the ACPI PM block and
/// the guest can no longer power off), and the IRQ must exist.
pub fn requested_device(
    dev: &DeviceType,
    id: Option<String>,
    props: &Properties,
    existing: &[IsaDevicePlan],
    firmware: &[FirmwareIoPlan],
) -> Result<IsaDevicePlan, PlanError> {
    let Some(isa) = &dev.isa else {
        return Err(PlanError::NotPciDevice(dev.name.clone()));
    };
    let used = |base: u64| existing.iter().any(|d| d.io.iter().any(|r| r.base == base));
    let get = |k: &str| match props.get(k) {
        Some(PropValue::Int(v)) => Some(*v as u64),
        _ => props.uint(k),
    };
    let unset = |v: &u64| *v == u64::from(u32::MAX);
    let too_many = || PlanError::IsaIndexTooLarge {
        what: match isa.default_kind.as_deref() {
            Some("serial") => "ISA serial ports".to_string(),
            Some("parallel") => "parallel ports".to_string(),
            _ => format!("{} devices", dev.name),
        },
        max: isa.by_index.len(),
    };
    // `index` (like `iobase` and `irq`) defaults to -1, "unset".
    let index = match get("index").filter(|i| !unset(i)) {
        Some(i) if i as usize >= isa.by_index.len() => return Err(too_many()),
        Some(i) => i as usize,
        None => match isa.by_index.iter().position(|(b, _)| !used(b.0)) {
            Some(i) => i,
            None => return Err(too_many()),
        },
    };
    let (def_base, def_irq) = isa
        .by_index
        .get(index)
        .map(|(b, irq)| (b.0, u64::from(*irq)))
        .unwrap_or((0, 0));
    let base = get(isa.base_property.as_deref().unwrap_or("iobase"))
        .filter(|b| !unset(b))
        .unwrap_or(def_base);
    let irq = get("irq").filter(|i| !unset(i)).unwrap_or(def_irq);
    if irq >= ISA_IRQS {
        return Err(PlanError::IsaIrq(irq));
    }
    let io = Range {
        base,
        size: isa.io_size,
    };
    let end = base.saturating_add(isa.io_size.max(1)) - 1;
    if end >= IO_SPACE_END {
        return Err(PlanError::IsaIoOutOfRange { base, end });
    }
    let overlaps = |r: &Range| r.size > 0 && base < r.base + r.size && r.base <= end;
    let taken = existing
        .iter()
        .flat_map(|d| d.io.iter().map(move |r| (d.type_name.as_str(), r)))
        .chain(firmware.iter().map(|b| (b.name.as_str(), &b.range)))
        .find(|(_, r)| overlaps(r));
    if let Some((owner, r)) = taken {
        return Err(PlanError::IsaIoOverlap {
            base,
            end,
            owner: owner.to_string(),
            owner_base: r.base,
            owner_end: r.base + r.size - 1,
        });
    }
    Ok(IsaDevicePlan {
        type_name: dev.name.clone(),
        id,
        io: vec![io],
        irqs: if isa.no_irq {
            Vec::new()
        } else {
            vec![irq as u32]
        },
        mmio: Vec::new(),
    })
}
