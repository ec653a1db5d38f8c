//! `-netdev`: tap (ifname, passed fds, multiqueue) and the socket-like types, parsed and
//! opened, and taps registered with the network thread.

use super::*;

/// `-netdev tap,id=ID[,ifname=NAME][,script=no,downscript=no]`, or one of the socket-like
/// types of crate::netdev.
pub fn parse_netdev(spec: impl AsRef<OsStr>) -> Result<Backend, BackendError> {
    let spec = spec.as_ref();
    let context = format!("-netdev {}", lossy(spec));
    let raw = keyval_pairs_os(spec);
    if let Some(backend) = socket_netdev(&context, &raw, true)? {
        return Ok(backend);
    }
    netdev_from_pairs(&context, keyval(spec), true)
}

/// A netdev of a socket-like type (None for others), checked but not yet opened.
pub(super) fn socket_netdev(
    context: &str,
    raw: &[(String, OsString)],
    numeric_fds: bool,
) -> Result<Option<Backend>, BackendError> {
    let kind = raw
        .first()
        .map(|(k, v)| if v.is_empty() { k.clone() } else { lossy(v) })
        .unwrap_or_default();
    if !crate::netdev::KINDS.contains(&kind.as_str()) {
        return Ok(None);
    }
    let id = raw
        .iter()
        .rev()
        .find(|(k, _)| k == "id")
        .map(|(_, v)| lossy(v))
        .ok_or_else(|| err(context, "Parameter 'id' is missing"))?;
    Ok(Some(Backend::Netdev {
        id,
        kind,
        members: raw.to_vec(),
        numeric_fds,
        handle: None,
    }))
}

/// `-netdev tap,queues=N`.
pub(super) fn tap_queues(context: &str, text: &str) -> Result<usize, BackendError> {
    match text.parse::<u64>() {
        // QEMU 7.2 asserts on queues=0; there is no tap without a queue.
        Ok(0) => Err(err(context, "tap: queues must be at least 1")),
        // The kernel's limit on the queues of one tap (MAX_TAP_QUEUES).
        Ok(n) if n > 256 => Err(err(
            context,
            format!("tap: queues={n} is more than a tap can have (256)"),
        )),
        Ok(n) => Ok(n as usize),
        Err(_) => Err(err(context, "Parameter 'queues' expects a uint64 value")),
    }
}

/// A descriptor given as tap `fd=`/`fds=`: a name a monitor client passed with `getfd`
/// (the backend takes the fd), or on the command line a number.
pub(super) fn tap_fd(context: &str, text: &str, numeric_fds: bool) -> Result<i32, BackendError> {
    let named = if text.starts_with(|c: char| c.is_ascii_digit()) {
        None
    } else {
        crate::fdset::take_named(text)
    };
    match (named, text.parse::<i32>()) {
        (Some(fd), _) => Ok(std::os::fd::IntoRawFd::into_raw_fd(fd)),
        (None, Ok(n)) if n > 2 && numeric_fds => Ok(n),
        (None, Err(_)) if !numeric_fds => Err(err(
            context,
            format!("File descriptor named '{text}' has not been found"),
        )),
        _ => Err(err(
            context,
            format!("tap: unable to get fd: No file descriptor named {text} found"),
        )),
    }
}

/// A netdev from its members, the type first (from keyval text or a QMP object).
/// `numeric_fds`: a plain number names an inherited descriptor (command line only; over QMP
/// a number would let a client take any descriptor of the process, so QEMU only looks up
/// names passed with `getfd`, which machina does not implement).
pub(super) fn netdev_from_pairs(
    context: &str,
    pairs: Vec<(String, String)>,
    numeric_fds: bool,
) -> Result<Backend, BackendError> {
    let context = context.to_string();
    let kind = pairs
        .first()
        .map(|(k, v)| if v.is_empty() { k.clone() } else { v.clone() });
    let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    match kind.as_deref() {
        Some("tap") => {}
        Some(other @ ("user" | "bridge" | "vhost-user" | "vhost-vdpa" | "l2tpv3" | "vde")) => {
            return Err(err(
                &context,
                format!(
                    "netdev type '{other}' is not supported by machina (use tap, socket, stream, dgram or hubport)"
                ),
            ))
        }
        Some(other) => {
            return Err(err(
                &context,
                format!("Parameter 'type' does not accept value '{other}'"),
            ))
        }
        None => return Err(err(&context, "Parameter 'type' is missing")),
    }
    for (k, v) in &pairs[1..] {
        match (k.as_str(), v.as_str()) {
            ("id" | "ifname" | "fd" | "fds" | "queues", _) => {}
            ("script" | "downscript", "no" | "") => {}
            ("script" | "downscript", _) => {
                return Err(err(&context, "machina runs no network scripts: use script=no,downscript=no with an existing or new tap"))
            }
            // vhost=off in any of QEMU's spellings; machina has no vhost.
            ("vhost", v) => match machine::parse_bool("vhost", v) {
                Ok(false) => {}
                Ok(true) => return Err(err(&context, "Invalid parameter 'vhost'")),
                Err(e) => return Err(err(&context, e.to_string())),
            },
            (other, _) => return Err(err(&context, format!("Invalid parameter '{other}'"))),
        }
    }
    let id = get("id").ok_or_else(|| err(&context, "Parameter 'id' is missing"))?;
    let has = |keys: &[&str]| pairs.iter().any(|(k, _)| keys.contains(&k.as_str()));
    let queues = get("queues")
        .map(|text| tap_queues(&context, &text))
        .transpose()?
        .unwrap_or(1);
    let take_fd = |text: &str| tap_fd(&context, text, numeric_fds);
    let fd = match get("fd") {
        None => None,
        Some(text) => {
            // QEMU's text for options that configure a tap machina would not open itself.
            if has(&["ifname", "script", "downscript", "queues", "fds"]) {
                return Err(err(
                    &context,
                    "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, fds=, and vhostfds= are invalid with fd=",
                ));
            }
            Some(take_fd(&text)?)
        }
    };
    let fds = match get("fds") {
        None => Vec::new(),
        Some(text) => {
            if has(&["ifname", "script", "downscript", "queues"]) {
                return Err(err(
                    &context,
                    "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, and vhostfd= are invalid with fds=",
                ));
            }
            // QEMU's get_fds: `:`-separated, at most MAX_TAP_QUEUES.
            text.split(':')
                .take(1024)
                .map(take_fd)
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    Ok(Backend::Tap {
        id,
        ifname: get("ifname"),
        fd,
        queues: if fds.is_empty() { queues } else { fds.len() },
        fds,
        handle: None,
        more: Vec::new(),
        client: None,
    })
}

/// A tap's entry in the network thread; a tap works without it (only `info network` and
/// announcements would miss it), so a failure is not an error.
pub(super) fn register_tap(id: &str, info: String, file: &File) -> Option<crate::netdev::Netdev> {
    let fd = file.try_clone().ok()?;
    crate::netdev::Netdev::register_tap(id, info, std::os::fd::OwnedFd::from(fd)).ok()
}

/// The queues of `-netdev tap` (one, or `queues=`/`fds=` of a multiqueue tap) and how
/// `info network` shows the tap: passed descriptors adopted (`fd=`, `fds=`; each closed,
/// since it was given to machina to own, whether or not it is a usable tap), or the tap
/// `ifname=` opened (created if missing).
pub(super) fn tap_files(
    context: &str,
    backend_id: &str,
    fd: Option<i32>,
    fds: &[i32],
    ifname: &Option<String>,
    queues: usize,
) -> Result<(Vec<File>, String), BackendError> {
    use devices::virtio::net::tap;
    if let Some(fd) = fd {
        let adopted = tap::adopt_tap(fd);
        // SAFETY: `fd` was given to machina to own (an inherited number or a `getfd`
        // name); `adopt_tap` holds its own duplicate, and nothing else uses the number.
        unsafe { libc::close(fd) };
        let file = adopted.map_err(|e| {
            err(
                context,
                format!("tap: Can't use file descriptor {fd}: {}", plain_text(&e)),
            )
        })?;
        return Ok((vec![file], format!("fd={fd}")));
    }
    if !fds.is_empty() {
        let mut files = Vec::new();
        let mut failed = None;
        for &fd in fds {
            let adopted = tap::adopt_tap(fd);
            // SAFETY: as for `fd=` above.
            unsafe { libc::close(fd) };
            match adopted {
                Ok(f) => files.push(f),
                Err(e) => {
                    failed.get_or_insert(format!(
                        "{backend_id}: Can't use file descriptor {fd}: {}",
                        plain_text(&e)
                    ));
                }
            }
        }
        if let Some(message) = failed {
            return Err(err(context, message));
        }
        let list: Vec<String> = fds.iter().map(i32::to_string).collect();
        return Ok((files, format!("fds={}", list.join(":"))));
    }
    let name = ifname.clone().unwrap_or_default();
    let files = tap::open_tap_queues(&name, queues).map_err(|e| {
        err(
            context,
            format!(
                "could not configure /dev/net/tun ({name}): {}",
                plain_text(&e)
            ),
        )
    })?;
    Ok((files, format!("ifname={name},script=no,downscript=no")))
}
