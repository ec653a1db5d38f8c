//! ISA and system devices: the board's fixed ones (PIC, PIT, RTC, DMA, i8042, HPET, IOAPIC,
//! serial/parallel/floppy defaults, ...) filtered by their conditions, and ISA devices
//! requested with `-device` (`isa-serial,index=N`).

use crate::board::IsaDeviceDef;
use crate::device_types::DeviceType;
use crate::error::PlanError;
use crate::plan::{IsaDevicePlan, Range};
use crate::properties::parse_u64_auto;
use std::collections::BTreeMap;

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

/// A requested ISA device: resources from `iobase`/`irq` if given, else from `index` (or the
/// first index whose I/O base is free).
pub fn requested_device(
    dev: &DeviceType,
    id: Option<String>,
    props: &BTreeMap<String, String>,
    existing: &[IsaDevicePlan],
) -> Result<IsaDevicePlan, PlanError> {
    let Some(isa) = &dev.isa else {
        return Err(PlanError::NotPciDevice(dev.name.clone()));
    };
    let used = |base: u64| existing.iter().any(|d| d.io.iter().any(|r| r.base == base));
    let get = |k: &str| {
        props
            .get(k)
            .and_then(|v| parse_u64_auto(v).or_else(|| v.parse::<i64>().ok().map(|x| x as u64)))
    };
    // `index` (like `iobase` and `irq`) defaults to -1, "unset".
    let index = match get("index") {
        Some(i) if i != u64::from(u32::MAX) => Some(i as usize).filter(|&i| i < isa.by_index.len()),
        _ => isa.by_index.iter().position(|(b, _)| !used(b.0)),
    };
    let (def_base, def_irq) = index
        .and_then(|i| isa.by_index.get(i))
        .map(|(b, irq)| (b.0, *irq))
        .unwrap_or((0, 0));
    let base = match get("iobase") {
        Some(b) if b != u64::from(u32::MAX) => b,
        _ => def_base,
    };
    let irq = match get("irq") {
        Some(i) if i != u64::from(u32::MAX) => i as u32,
        _ => def_irq,
    };
    Ok(IsaDevicePlan {
        type_name: dev.name.clone(),
        id,
        io: vec![Range {
            base,
            size: isa.io_size,
        }],
        irqs: vec![irq],
        mmio: Vec::new(),
    })
}
