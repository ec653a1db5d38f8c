//! `-m`: QEMU's size syntax (`qemu_strtosz`) and its `size`/`slots`/`maxmem` keys.

use super::*;
use machine::{qemu_strtosz, SizeError};

/// `-m [size=]SIZE[,slots=N][,maxmem=SIZE]`, as QEMU reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryOption {
    /// Bytes (not yet aligned: the planner aligns to 8 KiB as QEMU does).
    pub size: u64,
    pub slots: u64,
    pub maxmem: Option<u64>,
}

/// Parse `-m` as QEMU does: the first item is `size`; a size without a suffix is MiB; a size
/// of 0 (or none) means the default. Unknown keys and bad numbers are refused with QEMU's
/// texts, prefixed by the option.
pub fn parse_memory(text: &str) -> Result<MemoryOption, CliError> {
    let fail = |message: String| CliError::Memory(text.to_string(), message);
    let expects_size = |key: &str| {
        fail(format!(
            "Parameter '{key}' expects a non-negative number below 2^64"
        ))
    };
    let mut size: Option<String> = None;
    let mut slots: Option<String> = None;
    let mut maxmem: Option<String> = None;
    for (i, item) in text.split(',').enumerate() {
        // `,,` escapes are not meaningful in any -m value; an empty item is skipped.
        if item.is_empty() && i > 0 {
            continue;
        }
        match item.split_once('=') {
            Some(("size", v)) => size = Some(v.to_string()),
            Some(("slots", v)) => slots = Some(v.to_string()),
            Some(("maxmem", v)) => maxmem = Some(v.to_string()),
            Some((k, _)) => return Err(fail(format!("Invalid parameter '{k}'"))),
            None if i == 0 => size = Some(item.to_string()),
            None => return Err(fail(format!("Invalid parameter '{item}'"))),
        }
    }
    let out_of_range =
        |key: &str, v: &str| fail(format!("Value '{v}' is out of range for parameter '{key}'"));
    let size = match size.as_deref() {
        None => 0,
        Some("") if text.is_empty() => 0,
        Some(v) => match qemu_strtosz(v) {
            Err(SizeError::Invalid) => return Err(expects_size("size")),
            Err(SizeError::OutOfRange) => return Err(out_of_range("size", v)),
            // The legacy suffix-less form is MiB.
            Ok((n, false)) => n
                .checked_mul(1 << 20)
                .ok_or_else(|| fail("Parameter 'memory.size' expects size".to_string()))?,
            Ok((n, true)) => n,
        },
    };
    let slots = match slots.as_deref() {
        None => 0,
        // QemuOpts numbers wrap negatives, as QEMU's later "unsupported amount" shows.
        Some(v) => v
            .parse::<u64>()
            .ok()
            .or_else(|| v.parse::<i64>().ok().map(|n| n as u64))
            .ok_or_else(|| fail("Parameter 'slots' expects a number".to_string()))?,
    };
    let maxmem = match maxmem.as_deref() {
        None => None,
        Some(v) => match qemu_strtosz(v) {
            Err(SizeError::Invalid) => return Err(expects_size("maxmem")),
            Err(SizeError::OutOfRange) => return Err(out_of_range("maxmem", v)),
            Ok((n, _)) => Some(n),
        },
    };
    Ok(MemoryOption {
        size: if size == 0 { DEFAULT_RAM_SIZE } else { size },
        slots,
        maxmem,
    })
}

/// The RAM size of a `-m` argument (see `parse_memory`).
pub fn parse_ram_size(text: &str) -> Result<u64, CliError> {
    parse_memory(text).map(|m| m.size)
}
