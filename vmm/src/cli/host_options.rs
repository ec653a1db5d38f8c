//! The options libvirt's domain command lines carry besides the machine itself: `-name`,
//! `-uuid`, `-overcommit`, `-rtc`, `-boot`, `-msg`, `-sandbox`, `-audiodev`/`-audio`, with
//! QEMU's keys and texts.

use super::*;

/// `-name` sub-options besides the guest name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameOptions {
    pub debug_threads: bool,
    pub process: Option<String>,
}

/// `-overcommit mem-lock=`: lock guest and VMM memory (mlockall) or not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MemLock {
    #[default]
    Off,
    On,
    OnFault,
}

/// `-rtc base=`: the RTC is the host's UTC clock plus `offset` seconds, fixed at start as
/// QEMU fixes it (0 for utc, the local zone's offset for localtime, start date - now).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RtcOptions {
    pub base: String,
    pub offset: i64,
    /// `clock=`: what the RTC runs on.
    pub clock: RtcClock,
}

/// `-rtc clock=`: `host` (the host's time, default), `rt` (the host's monotonic clock, the
/// guest's time not kept in sync) or `vm` (the virtual clock: stops with the machine, and
/// under qtest moves only when the test steps it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RtcClock {
    #[default]
    Host,
    Rt,
    Vm,
}

/// Seconds since the epoch of `2006-06-17T16:01:21` or `2006-06-17` (UTC, as QEMU's
/// mktimegm), None if it is not one of those forms.
pub(super) fn rtc_date_epoch(v: &str) -> Option<i64> {
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let (date, time) = match v.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (v, None),
    };
    let d: Vec<&str> = date.split('-').collect();
    if d.len() != 3 || !digits(d[0], 4) || !digits(d[1], 2) || !digits(d[2], 2) {
        return None;
    }
    let (y, m, day): (i64, i64, i64) = (d[0].parse().ok()?, d[1].parse().ok()?, d[2].parse().ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let mut secs = 0;
    if let Some(t) = time {
        let t: Vec<&str> = t.split(':').collect();
        if t.len() != 3 || !t.iter().all(|p| digits(p, 2)) {
            return None;
        }
        let (h, mi, s): (i64, i64, i64) =
            (t[0].parse().ok()?, t[1].parse().ok()?, t[2].parse().ok()?);
        if h > 23 || mi > 59 || s > 60 {
            return None;
        }
        secs = h * 3600 + mi * 60 + s;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400 + secs)
}

/// Now, in seconds since the epoch.
fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The local time zone's offset from UTC now, in seconds (localtime_r's tm_gmtoff).
fn local_utc_offset() -> i64 {
    let now = now_secs() as libc::time_t;
    // SAFETY: tm is plain data that localtime_r fills from a valid time_t.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return 0;
        }
        tm.tm_gmtoff
    }
}

/// `-boot`: kept for monitors; machina boots a kernel directly, without firmware.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootOptions {
    pub order: Option<String>,
    pub once: Option<String>,
    pub menu: Option<bool>,
    pub strict: bool,
    pub splash: Option<String>,
    pub splash_time: Option<i64>,
    pub reboot_timeout: Option<i64>,
    /// `-no-fd-bootchk`: the BIOS skips the floppy boot-sector signature check (CMOS 0x38
    /// bit 0).
    pub no_fd_bootchk: bool,
}

/// `-sandbox`: parsed and validated only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxOptions {
    pub enable: bool,
    pub settings: Vec<(String, String)>,
}

/// `-msg`: how error messages are prefixed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MsgOptions {
    pub timestamp: bool,
    pub guest_name: bool,
}

/// `-name [guest=]NAME[,debug-threads=on|off][,process=NAME]`.
pub(super) fn parse_name(opts: &mut CliOptions, value: &str) -> Result<(), CliError> {
    for (k, v) in items(value, Some("guest")) {
        match k.as_str() {
            "guest" => opts.name = Some(v),
            "debug-threads" => opts.name_options.debug_threads = on_off("name", value, &k, &v)?,
            "process" => opts.name_options.process = Some(v),
            other => {
                return Err(option_err(
                    "name",
                    value,
                    format!("Invalid parameter '{other}'"),
                ))
            }
        }
    }
    Ok(())
}

/// `-uuid XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX`.
pub(super) fn parse_uuid(value: &str) -> Result<[u8; 16], CliError> {
    let bad = || option_err("uuid", value, "failed to parse UUID string: wrong format");
    let groups: Vec<&str> = value.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    if lengths != [8, 4, 4, 4, 12] {
        return Err(bad());
    }
    let hex: String = groups.concat();
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
            .map_err(|_| bad())?;
    }
    Ok(out)
}

/// `-overcommit mem-lock=on|off|on-fault,cpu-pm=on|off`.
pub(super) fn parse_overcommit(opts: &mut CliOptions, value: &str) -> Result<(), CliError> {
    for (k, v) in items(value, None) {
        match k.as_str() {
            "mem-lock" => {
                opts.mem_lock = match v.as_str() {
                    "on-fault" => MemLock::OnFault,
                    _ if on_off("overcommit", value, &k, &v)? => MemLock::On,
                    _ => MemLock::Off,
                }
            }
            "cpu-pm" => {
                if on_off("overcommit", value, &k, &v)? {
                    return Err(option_err(
                        "overcommit",
                        value,
                        "machina does not hand idle exits (MWAIT/HLT/PAUSE) to the guest; only cpu-pm=off is supported",
                    ));
                }
            }
            other => {
                return Err(option_err(
                    "overcommit",
                    value,
                    format!("Invalid parameter '{other}'"),
                ))
            }
        }
    }
    Ok(())
}

/// `-rtc base=utc|localtime|DATE,clock=host|rt|vm,driftfix=none|slew`: the RTC starts at the
/// base given (an offset fixed at start, as in QEMU) and runs on the clock given;
/// driftfix=slew (re-injecting lost ticks) is not offered.
pub(super) fn parse_rtc(opts: &mut CliOptions, value: &str) -> Result<(), CliError> {
    let unsupported = |what: &str| {
        option_err(
            "rtc",
            value,
            format!("machina's RTC does not re-inject lost ticks: {what} is not supported"),
        )
    };
    for (k, v) in items(value, None) {
        match (k.as_str(), v.as_str()) {
            ("base", "utc") => (opts.rtc.base, opts.rtc.offset) = (v, 0),
            ("base", "localtime") => (opts.rtc.base, opts.rtc.offset) = (v, local_utc_offset()),
            ("base", d) if rtc_date_epoch(d).is_some() => {
                let start = rtc_date_epoch(d).unwrap_or_default();
                (opts.rtc.base, opts.rtc.offset) = (v, start - now_secs());
            }
            // QEMU's text, on one line and naming the option.
            ("base", _) => return Err(option_err(
                "rtc",
                value,
                "invalid datetime format (valid formats: '2006-06-17T16:01:21' or '2006-06-17')"
                    .to_string(),
            )),
            ("clock", "host") => opts.rtc.clock = RtcClock::Host,
            ("clock", "rt") => opts.rtc.clock = RtcClock::Rt,
            ("clock", "vm") => opts.rtc.clock = RtcClock::Vm,
            ("driftfix", "none") => {}
            ("driftfix", "slew") => return Err(unsupported("driftfix=slew")),
            ("clock" | "driftfix", _) => {
                return Err(option_err(
                    "rtc",
                    value,
                    format!("invalid option value '{v}'"),
                ))
            }
            (other, _) => {
                return Err(option_err(
                    "rtc",
                    value,
                    format!("Invalid parameter '{other}'"),
                ))
            }
        }
    }
    Ok(())
}

/// Boot device letters: `a`-`p`, each once.
fn check_boot_devices(devices: &str) -> Result<(), CliError> {
    let mut seen = 0u32;
    for c in devices.chars() {
        if !('a'..='p').contains(&c) {
            return Err(CliError::Plain(format!("Invalid boot device '{c}'")));
        }
        let bit = 1 << (c as u32 - 'a' as u32);
        if seen & bit != 0 {
            return Err(CliError::Plain(format!(
                "Boot device '{c}' was given twice"
            )));
        }
        seen |= bit;
    }
    Ok(())
}

/// `-boot [order=]DRIVES,once=DRIVES,menu=on|off,splash=FILE,splash-time=MS,
/// reboot-timeout=MS,strict=on|off`.
pub(super) fn parse_boot(opts: &mut CliOptions, value: &str) -> Result<(), CliError> {
    let number = |k: &str, v: &str| {
        v.parse::<i64>()
            .map_err(|_| CliError::Plain(format!("Parameter 'boot.{k}' expects a number")))
    };
    let flag = |k: &str, v: &str| {
        machine::parse_bool(&format!("boot.{k}"), v).map_err(|e| CliError::Plain(e.to_string()))
    };
    for (k, v) in items(value, Some("order")) {
        match k.as_str() {
            "order" => {
                check_boot_devices(&v)?;
                opts.boot.order = Some(v);
            }
            "once" => {
                check_boot_devices(&v)?;
                opts.boot.once = Some(v);
            }
            "menu" => opts.boot.menu = Some(flag(&k, &v)?),
            "strict" => opts.boot.strict = flag(&k, &v)?,
            "splash" => opts.boot.splash = Some(v),
            "splash-time" => opts.boot.splash_time = Some(number(&k, &v)?),
            "reboot-timeout" => opts.boot.reboot_timeout = Some(number(&k, &v)?),
            other => {
                return Err(CliError::Plain(format!(
                    "Parameter 'boot.{other}' is unexpected"
                )))
            }
        }
    }
    Ok(())
}

/// `-msg timestamp=on|off,guest-name=on|off`.
pub(super) fn parse_msg(opts: &mut CliOptions, value: &str) -> Result<(), CliError> {
    for (k, v) in items(value, None) {
        match k.as_str() {
            "timestamp" => opts.msg.timestamp = on_off("msg", value, &k, &v)?,
            "guest-name" => opts.msg.guest_name = on_off("msg", value, &k, &v)?,
            other => {
                return Err(option_err(
                    "msg",
                    value,
                    format!("Invalid parameter '{other}'"),
                ))
            }
        }
    }
    Ok(())
}

/// `-sandbox on|off[,obsolete=allow|deny][,elevateprivileges=allow|deny|children]
/// [,spawn=allow|deny][,resourcecontrol=allow|deny]`: validated and kept.
pub(super) fn parse_sandbox(opts: &mut CliOptions, value: &str) -> Result<(), CliError> {
    let mut sandbox = SandboxOptions::default();
    for (k, v) in items(value, Some("enable")) {
        let allowed: &[&str] = match k.as_str() {
            "enable" => {
                sandbox.enable = on_off("sandbox", value, "enable", &v)?;
                continue;
            }
            "obsolete" | "spawn" | "resourcecontrol" => &["allow", "deny"],
            "elevateprivileges" => &["allow", "deny", "children"],
            other => {
                return Err(option_err(
                    "sandbox",
                    value,
                    format!("Invalid parameter '{other}'"),
                ))
            }
        };
        if !allowed.contains(&v.as_str()) {
            return Err(option_err(
                "sandbox",
                value,
                format!("invalid argument for {k}"),
            ));
        }
        sandbox.settings.push((k, v));
    }
    opts.sandbox = Some(sandbox);
    Ok(())
}

/// `-audiodev [driver=]none,id=ID[,timer-period=..][,in.*|out.*]` (keyval or JSON), and
/// `-audio [driver=]none`: machina has no sound device, so only the `none` driver exists.
pub(super) fn parse_audiodev(
    opts: &mut CliOptions,
    option: &str,
    value: &str,
) -> Result<(), CliError> {
    let pairs: Vec<(String, String)> = if value.trim_start().starts_with('{') {
        let v: serde_json::Value =
            serde_json::from_str(value).map_err(|e| option_err(option, value, e.to_string()))?;
        let obj = v.as_object().ok_or_else(|| {
            option_err(option, value, "Invalid parameter type, expected 'object'")
        })?;
        obj.iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect()
    } else {
        items(value, Some("driver"))
    };
    let mut id = None;
    let mut driver = None;
    for (k, v) in &pairs {
        match k.as_str() {
            "id" => id = Some(v.clone()),
            "driver" => driver = Some(v.clone()),
            "model" if option == "audio" => {
                return Err(option_err(
                    option,
                    value,
                    "machina has no sound devices: 'model' is not supported",
                ))
            }
            "timer-period" => {}
            k if k.starts_with("in.") || k.starts_with("out.") => {}
            other => {
                return Err(option_err(
                    option,
                    value,
                    format!("Invalid parameter '{other}'"),
                ))
            }
        }
    }
    match driver.as_deref() {
        Some("none") => {}
        Some(other) => {
            return Err(option_err(
                option,
                value,
                format!("Parameter 'driver' does not accept value '{other}'"),
            ))
        }
        None => return Err(option_err(option, value, "Parameter 'driver' is missing")),
    }
    let id = match (option, id) {
        (_, Some(id)) => id,
        ("audio", None) => "audio0".to_string(),
        (_, None) => return Err(option_err(option, value, "Parameter 'id' is missing")),
    };
    opts.audiodevs.push(id);
    Ok(())
}
