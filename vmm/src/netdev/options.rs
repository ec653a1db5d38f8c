//! Reading a netdev's options: the last value of a key, QEMU's booleans, `host:port`,
//! the keys a backend accepts, and descriptors passed by number or name (`fd=`).

use super::*;

/// The last value of `key`.
pub(super) fn get<'a>(members: &'a [(String, OsString)], key: &str) -> Option<&'a OsString> {
    members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
}

pub(super) fn text(members: &[(String, OsString)], key: &str) -> Option<String> {
    get(members, key).map(|v| v.to_string_lossy().into_owned())
}

pub(super) fn flag(members: &[(String, OsString)], key: &str) -> Result<Option<bool>, NetdevError> {
    match text(members, key).as_deref() {
        None => Ok(None),
        Some("on" | "yes" | "true" | "y") => Ok(Some(true)),
        Some("off" | "no" | "false" | "n") => Ok(Some(false)),
        Some(_) => fail(format!("Parameter '{key}' expects 'on' or 'off'")),
    }
}

/// A descriptor number given as `fd=N` on the command line, taken over by the netdev (the
/// number stays the same, as QEMU's `info network` shows it), non-blocking, close-on-exec.
/// Over QMP a number is refused: any descriptor of the process could be named.
pub(super) fn take_fd(value: &str, numeric_fds: bool) -> Result<OwnedFd, NetdevError> {
    if !numeric_fds {
        return fail(format!(
            "file descriptor '{value}': machina takes netdev descriptors on the command line only"
        ));
    }
    let fd: i32 = match value.parse() {
        Ok(n) if n > 2 => n,
        _ => return fail(format!("Invalid file descriptor number '{value}'")),
    };
    // SAFETY: F_GETFD only reads the descriptor table entry.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return fail(format!(
            "Can't use file descriptor {fd}: {}",
            plain(&std::io::Error::last_os_error())
        ));
    }
    let engine = engine::engine().map_err(NetdevError)?;
    engine.lock().take_fd(fd).map_err(NetdevError)?;
    addr::make_nonblocking_cloexec(fd)
        .map_err(|e| NetdevError(format!("Can't use file descriptor {fd}: {}", plain(&e))))?;
    // SAFETY: the caller passed `fd` for this netdev to own; `take_fd` above makes sure no
    // other netdev owns the same number.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `host:port` of `-netdev socket`, parsed as every netdev address is (addr.rs), as the
/// IPv4 address `-netdev socket` takes.
pub(super) fn host_port(value: &str) -> Result<std::net::SocketAddrV4, NetdevError> {
    SockAddr::from_host_port(value)
        .and_then(|a| a.ipv4())
        .map_err(NetdevError)
}

pub(super) fn check_keys(
    members: &[(String, OsString)],
    allowed: &[&str],
    legacy: bool,
) -> Result<(), NetdevError> {
    for (k, _) in members.iter().skip(1) {
        let base = k.split('.').next().unwrap_or(k);
        if !allowed.contains(&base) {
            return fail(if legacy {
                format!("Invalid parameter '{k}'")
            } else {
                format!("Parameter '{k}' is unexpected")
            });
        }
    }
    Ok(())
}

/// `fd=N unix` / `fd=N inet`: the descriptor and its address family, as QEMU shows it.
pub(super) fn fd_family_text(fd: &OwnedFd) -> String {
    let family = addr::name_of(fd.as_raw_fd(), false).map(|a| a.family());
    let name = match family {
        Ok(libc::AF_UNIX) => " unix",
        Ok(libc::AF_INET) | Ok(libc::AF_INET6) => " inet",
        _ => "",
    };
    format!("fd={}{name}", fd.as_raw_fd())
}
