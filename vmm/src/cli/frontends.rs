//! Device-shaped shorthands: `-vga`, `-nic` (a netdev and its NIC) and `-serial`.

use super::*;

/// `-vga TYPE`: machina's only display is the default standard VGA.
pub(super) fn parse_vga(value: &str) -> Result<bool, CliError> {
    match value {
        "none" => Ok(false),
        "std" => Ok(true),
        "cirrus" | "vmware" | "qxl" | "xenfb" | "tcx" | "cg3" | "virtio" => Err(CliError::Vga(
            value.to_string(),
            "machina has only 'std' and 'none'".into(),
        )),
        other => Err(CliError::Vga(
            value.to_string(),
            format!("unknown vga type: {other}"),
        )),
    }
}

/// `-nic none` / `-net none` (no default NIC: any `-netdev` also clears it, see config.rs);
/// `-nic TYPE,...` (TYPE a netdev type machina has): that netdev (its `id=`, or QEMU's
/// `__org.qemu.nicN`) and a NIC on it, `model=` (default: the catalog's `nic-default` type, the NIC
/// machina moves frames for) with `mac=`. Returns the netdev's keyval text and the device's.
/// machina has no `-net` hubs (use `-netdev hubport`).
pub(super) fn parse_nic(
    name: &str,
    value: &OsStr,
    index: usize,
) -> Result<Option<(OsString, String)>, CliError> {
    let text = lossy(value);
    let pairs = keyval_pairs_os(value);
    let kind = pairs
        .first()
        .map(|(k, v)| if k == "type" { lossy(v) } else { k.clone() })
        .unwrap_or_default();
    let refuse = |message: String| Err(CliError::Nic(format!("-{name} {text}"), message));
    match kind.as_str() {
        "none" => return Ok(None),
        "tap" | "socket" | "stream" | "dgram" | "hubport" if name == "nic" => {}
        "nic" | "user" | "tap" | "bridge" | "socket" | "stream" | "dgram" | "vde"
        | "vhost-user" | "vhost-vdpa" | "l2tpv3" | "hubport" => {
            return refuse(format!(
                "network type '{kind}' is not supported by machina here (use -netdev with -device, or -nic tap|socket|stream|dgram|hubport)"
            ))
        }
        other => return refuse(format!("Parameter 'type' does not accept value '{other}'")),
    }
    let get = |key: &str| {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| lossy(v))
    };
    let id = get("id").unwrap_or_else(|| format!("__org.qemu.nic{index}"));
    let escape = |v: &OsStr| lossy(v).replace(',', ",,");
    let mut netdev = format!("{kind},id={}", id.replace(',', ",,"));
    for (k, v) in pairs.iter().skip(1) {
        if matches!(k.as_str(), "id" | "model" | "mac" | "type") {
            continue;
        }
        netdev.push_str(&format!(",{k}={}", escape(v)));
    }
    let model = match get("model") {
        Some(model) => model,
        None => machine::Catalog::builtin()
            .device_types()
            .iter()
            .find(|t| t.nic_default)
            .map(|t| t.name.clone())
            .ok_or_else(|| {
                CliError::Nic(
                    format!("-{name} {text}"),
                    "the device catalog names no default NIC model (nic-default)".into(),
                )
            })?,
    };
    let mut device = format!(
        "{},netdev={}",
        model.replace(',', ",,"),
        id.replace(',', ",,")
    );
    if let Some(mac) = get("mac") {
        device.push_str(&format!(",mac={}", mac.replace(',', ",,")));
    }
    Ok(Some((OsString::from(netdev), device)))
}

pub(super) fn parse_serial(arg: &OsStr) -> Result<SerialSpec, CliError> {
    let text = lossy(arg);
    let bad = || CliError::BadSerial(text.clone());
    match text.as_str() {
        "stdio" | "mon:stdio" => return Ok(SerialSpec::Stdio),
        "null" => return Ok(SerialSpec::Null),
        "none" => return Ok(SerialSpec::None),
        _ => {}
    }
    let bytes = arg.as_bytes();
    if let Some(path) = bytes.strip_prefix(b"file:") {
        if path.is_empty() {
            return Err(bad());
        }
        return Ok(SerialSpec::File(PathBuf::from(OsStr::from_bytes(path))));
    }
    if let Some(rest) = bytes.strip_prefix(b"unix:") {
        let items = split_keyval_os(OsStr::from_bytes(rest));
        let path = items.first().filter(|p| !p.is_empty()).ok_or_else(bad)?;
        let mut server = false;
        let mut wait = true;
        for item in items[1..].iter().map(|i| lossy(i)) {
            match item.split_once('=').unwrap_or((item.as_str(), "on")) {
                ("server", v) => server = machine::qapi_bool_parse(v).ok_or_else(bad)?,
                ("wait", v) => wait = machine::qapi_bool_parse(v).ok_or_else(bad)?,
                _ => return Err(bad()),
            }
        }
        if !server {
            return Err(bad());
        }
        return Ok(SerialSpec::UnixServer {
            path: PathBuf::from(path),
            wait,
        });
    }
    Err(bad())
}
