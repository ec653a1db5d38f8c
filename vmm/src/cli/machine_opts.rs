//! `-machine` and `-drive if=pflash` (legacy flash units turned into the machine's
//! pflash0/pflash1 drives).

use super::*;

/// `-drive if=pflash,...`: flash unit `unit=`/`index=` (or the first free one) of the board,
/// as QEMU maps legacy flash drives to the machine's pflash0/pflash1. The drive becomes a
/// plain `if=none` drive with QEMU's default id (`pflash0`, `pflash1`) unless it has one;
/// other drives pass through unchanged.
pub(super) fn pflash_drive(opts: &mut CliOptions, spec: OsString) -> Result<OsString, CliError> {
    let items = split_keyval_os(&spec);
    if !keyval_pairs_os(&spec)
        .iter()
        .any(|(k, v)| k == "if" && v == "pflash")
    {
        return Ok(spec);
    }
    let text = lossy(&spec);
    let number = |key: &str, v: &OsStr| -> Result<u32, CliError> {
        lossy(v).parse::<u32>().map_err(|_| {
            option_err(
                "drive",
                &text,
                format!("Parameter '{key}' expects a number"),
            )
        })
    };
    let (mut bus, mut unit, mut index, mut id) = (None, None, None, None);
    let mut kept: Vec<OsString> = Vec::new();
    for (item, (k, v)) in items.iter().zip(keyval_pairs_os(&spec)) {
        match k.as_str() {
            "if" => {}
            "bus" => bus = Some(number("bus", &v)?),
            "unit" => unit = Some(number("unit", &v)?),
            "index" => index = Some(number("index", &v)?),
            "id" => {
                id = Some(lossy(&v));
                kept.push(item.clone());
            }
            _ => kept.push(item.clone()),
        }
    }
    if index.is_some() && (bus.is_some() || unit.is_some()) {
        return Err(option_err(
            "drive",
            &text,
            "index cannot be used with bus and unit",
        ));
    }
    // Flash has one bus of unlimited units; the PC board wires two.
    let bus = bus.unwrap_or(0);
    let unit = match index.or(unit) {
        Some(u) => u,
        None => opts
            .pflash_drives
            .iter()
            .position(Option::is_none)
            .map_or(opts.pflash_drives.len() as u32, |u| u as u32),
    };
    let slot = opts
        .pflash_drives
        .get_mut(unit as usize)
        .filter(|_| bus == 0);
    let Some(slot) = slot else {
        return Err(option_err(
            "drive",
            &text,
            format!("machine type does not support if=pflash,bus={bus},unit={unit}"),
        ));
    };
    if slot.is_some() {
        return Err(option_err(
            "drive",
            &text,
            format!(
                "drive with bus=0, unit={unit} (index={}) exists",
                index.map_or(-1, i64::from)
            ),
        ));
    }
    let id = id.unwrap_or_else(|| {
        let id = format!("pflash{unit}");
        kept.push(OsString::from(format!("id={id}")));
        id
    });
    *slot = Some((id, format!("-drive {text}")));
    kept.push(OsString::from("if=none"));
    // Back to one keyval argument: literal commas are doubled again.
    let mut out = Vec::new();
    for (i, item) in kept.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        for &b in item.as_bytes() {
            out.push(b);
            if b == b',' {
                out.push(b',');
            }
        }
    }
    Ok(OsString::from_vec(out))
}

pub(super) fn parse_machine(opts: &mut CliOptions, value: &str) -> Result<(), CliError> {
    let mut wants_help = false;
    let mut smp_items: Vec<String> = Vec::new();
    opts.machine_arg = Some(value.to_string());
    for (i, item) in split_keyval(value).into_iter().enumerate() {
        match item.split_once('=') {
            Some(("type", ty)) => opts.machine = Some(ty.to_string()),
            // QEMU's -bios sets this property; both name the ROM image.
            Some(("firmware", f)) => {
                opts.bios = Some(PathBuf::from(f));
                opts.machine_options
                    .push(("firmware".into(), f.to_string()));
            }
            // QEMU's `smp` compound property: the `-smp` keys, e.g. `smp.cpus=8`.
            Some((k, v)) if k.starts_with("smp.") => {
                smp_items.push(format!("{}={}", &k[4..], v.replace(',', ",,")))
            }
            Some((k, v)) => {
                if k == "accel" && !v.split(':').any(|a| a == "kvm" || a == "qtest") {
                    return Err(CliError::Machine(
                        value.to_string(),
                        format!(
                            "invalid accelerator {v} (machina supports kvm, and qtest for tests)"
                        ),
                    ));
                }
                opts.machine_options.push((k.to_string(), v.to_string()))
            }
            None if item == "help" || item == "?" => wants_help = true,
            None if i == 0 => opts.machine = Some(item),
            // -machine is keyval in QEMU 7.2: every option after the type needs a value.
            None => {
                return Err(CliError::Machine(
                    value.to_string(),
                    format!("Expected '=' after parameter '{item}'"),
                ))
            }
        }
    }
    if !smp_items.is_empty() {
        // QEMU names no option in these texts.
        opts.smp = parse_smp(&smp_items.join(",")).map_err(|e| {
            CliError::Plain(match e {
                CliError::BadCpus(_) => "Parameter 'smp.cpus' expects integer".into(),
                CliError::BadSmpValue(_, k) => format!("Parameter 'smp.{k}' expects integer"),
                CliError::BadTopology(_, k) => format!("Parameter 'smp.{k}' is unexpected"),
                CliError::ZeroCpus(_) => "Invalid CPU topology: CPU topology parameters must be \
                                          greater than zero"
                    .into(),
                other => other.to_string(),
            })
        })?;
    }
    if wants_help {
        // `-machine help` lists machine types, `-machine TYPE,help` the type's options.
        opts.action = match &opts.machine {
            Some(ty) => Action::MachineOptions(ty.clone()),
            None => Action::MachineHelp,
        };
    }
    // `accel=` is not a machine property of its own; it was validated above.
    opts.machine_options.retain(|(k, _)| k != "accel");
    Ok(())
}
