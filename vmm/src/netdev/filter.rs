//! Packet filters (`-object filter-mirror|filter-redirector`) on netdevs and the socket
//! chardevs (`-chardev socket`) they use, handed to the network thread.

use super::options::take_fd;
use super::stream::unix_listener;
use super::*;

/// A socket chardev (`-chardev socket,...`) a packet filter reads or writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CharSocket {
    /// `path=,server=on`: listening now (a stale file is replaced), one client at a time.
    Server(std::path::PathBuf),
    /// `path=`: connected now.
    Client(std::path::PathBuf),
    /// `fd=N` (command line only).
    Fd(i32),
}

/// Open chardev `name` for packet filters, once (later calls find it open).
pub fn open_char(name: &str, spec: &CharSocket) -> Result<(), NetdevError> {
    let engine = engine::engine().map_err(NetdevError)?;
    if engine.lock().char_by_name(name).is_some() {
        return Ok(());
    }
    let unix_addr =
        |path: &std::path::Path| RawAddr::unix(path.as_os_str(), false, true).map_err(NetdevError);
    let end = match spec {
        CharSocket::Server(path) => {
            let fd = unix_listener(path.as_os_str(), false, true)?;
            engine::CharEnd::new(name.into(), Some(fd), None)
        }
        CharSocket::Client(path) => {
            let raw = unix_addr(path)?;
            let fd = addr::socket(libc::AF_UNIX, libc::SOCK_STREAM)
                .map_err(|e| NetdevError(format!("Failed to create socket: {}", plain(&e))))?;
            addr::connect(&fd, &raw).map_err(|e| {
                NetdevError(format!(
                    "Failed to connect to '{}': {}",
                    path.display(),
                    plain(&e)
                ))
            })?;
            engine::CharEnd::new(name.into(), None, Some(fd))
        }
        CharSocket::Fd(n) => {
            let fd = take_fd(&n.to_string(), true)?;
            engine::CharEnd::new(name.into(), None, Some(fd))
        }
    };
    engine.lock().add_char(end);
    engine.kick();
    Ok(())
}

/// `-object filter-mirror|filter-redirector`: a filter on netdev `netdev` (chardevs opened
/// with [`open_char`] first). `queue` is QEMU's `all`, `rx` or `tx`.
pub fn add_filter(
    id: &str,
    redirector: bool,
    netdev: &str,
    queue: &str,
    outdev: Option<&str>,
    indev: Option<&str>,
) -> Result<(), NetdevError> {
    let engine = engine::engine().map_err(NetdevError)?;
    let mut state = engine.lock();
    let dir = match queue {
        "all" => engine::DIR_TX | engine::DIR_RX,
        "rx" => engine::DIR_RX,
        "tx" => engine::DIR_TX,
        other => return fail(format!("Parameter 'queue' does not accept value '{other}'")),
    };
    let find = |name: Option<&str>| -> Result<Option<u64>, NetdevError> {
        match name {
            None => Ok(None),
            Some(n) => state
                .char_by_name(n)
                .map(Some)
                .ok_or_else(|| NetdevError(format!("Device '{n}' not found"))),
        }
    };
    let filter = engine::Filter {
        id: id.into(),
        redirector,
        dir,
        outdev: find(outdev)?,
        indev: find(indev)?,
    };
    if !state.add_filter(netdev, filter) {
        return fail(format!(
            "Property '{}.netdev' can't find value '{netdev}'",
            if redirector {
                "filter-redirector"
            } else {
                "filter-mirror"
            }
        ));
    }
    drop(state);
    engine.kick();
    Ok(())
}
