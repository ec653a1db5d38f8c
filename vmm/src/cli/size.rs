//! `-m`: QEMU's size syntax (`qemu_strtosz`) and its `size`/`slots`/`maxmem` keys.

use super::*;

/// `-m [size=]SIZE[,slots=N][,maxmem=SIZE]`, as QEMU reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryOption {
    /// Bytes (not yet aligned: the planner aligns to 8 KiB as QEMU does).
    pub size: u64,
    pub slots: u64,
    pub maxmem: Option<u64>,
}

/// `qemu_strtosz`: a decimal (or `0x` hex) number, a fraction only with a suffix, and an
/// optional suffix b/k/M/G/T/P/E (any case). `Ok(None)` when the value is out of range,
/// `Ok(Some((bytes, had_suffix)))`, `Err(())` when it is not a size.
fn strtosz(text: &str) -> Result<Option<(u64, bool)>, ()> {
    let t = text.trim_start();
    let (body, shift) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() && !(t.starts_with("0x") && c.is_ascii_hexdigit()) => {
            let shift = match c.to_ascii_lowercase() {
                'b' => 0,
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                'p' => 50,
                'e' => 60,
                _ => return Err(()),
            };
            (&t[..t.len() - 1], Some(shift))
        }
        _ => (t, None),
    };
    let mult = 1u64 << shift.unwrap_or(0);
    if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(());
        }
        return Ok(u64::from_str_radix(hex, 16)
            .ok()
            .and_then(|n| n.checked_mul(mult))
            .map(|n| (n, shift.is_some())));
    }
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() || !int.chars().all(|c| c.is_ascii_digit()) {
        return Err(());
    }
    if !frac.chars().all(|c| c.is_ascii_digit()) || (body.contains('.') && shift.is_none()) {
        return Err(());
    }
    let Ok(whole) = int.parse::<u64>() else {
        return Ok(None);
    };
    let Some(mut bytes) = whole.checked_mul(mult) else {
        return Ok(None);
    };
    if !frac.is_empty() {
        let f: f64 = format!("0.{frac}").parse().map_err(|_| ())?;
        bytes = match bytes.checked_add((f * mult as f64) as u64) {
            Some(b) => b,
            None => return Ok(None),
        };
    }
    Ok(Some((bytes, shift.is_some())))
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
        Some(v) => match strtosz(v) {
            Err(()) => return Err(expects_size("size")),
            Ok(None) => return Err(out_of_range("size", v)),
            // The legacy suffix-less form is MiB.
            Ok(Some((n, false))) => n
                .checked_mul(1 << 20)
                .ok_or_else(|| fail("Parameter 'memory.size' expects size".to_string()))?,
            Ok(Some((n, true))) => n,
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
        Some(v) => match strtosz(v) {
            Err(()) => return Err(expects_size("maxmem")),
            Ok(None) => return Err(out_of_range("maxmem", v)),
            Ok(Some((n, _))) => Some(n),
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
