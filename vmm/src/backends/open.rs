//! Opening backends when they are created (taps, chardev files, entropy sources) and the
//! packet filters' chardevs.

use super::*;

/// Open an entropy source without blocking (QEMU's rng-random opens O_RDONLY|O_NONBLOCK,
/// so a FIFO or any readable file is taken; reads that would block give no bytes).
pub fn open_rng(path: &Path) -> std::io::Result<File> {
    open_nonblocking(path, OpenOptions::new().read(true), 0, true)
}

/// What QEMU does when a backend is created: a tap is opened (and kept: a named tap exists
/// as long as its descriptor), a chardev's file is created.
pub(super) fn open_backend(backend: &mut Backend, context: &str) -> Result<(), BackendError> {
    let backend_id = backend.id().to_string();
    let backend_id = backend_id.as_str();
    match backend {
        Backend::Tap {
            fd,
            fds,
            ifname,
            queues,
            handle,
            more,
            client,
            ..
        } => {
            let (files, info) = tap_files(context, backend_id, *fd, fds, ifname, *queues)?;
            let mut files = files.into_iter();
            let first = files.next().ok_or_else(|| err(context, "tap: no queue"))?;
            *client = register_tap(backend_id, info, &first);
            *handle = Some(Handle(Arc::new(first)));
            *more = files.map(|f| Handle(Arc::new(f))).collect();
        }
        Backend::Netdev {
            id,
            kind,
            members,
            numeric_fds,
            handle,
        } => {
            let netdev = crate::netdev::Netdev::create(kind, id, members, *numeric_fds)
                .map_err(|e| err(context, e.0))?;
            *handle = Some(netdev);
        }
        // `/dev/fdset/N` is not a path to create: config.rs opened it through the fd set.
        Backend::Chardev {
            backend: CharBackend::File(path),
            ..
        } if crate::fdset::is_fdset(path) => {}
        Backend::Chardev {
            backend: CharBackend::File(path),
            ..
        } => {
            // Created (not truncated: the device truncates when it opens it) so that a path
            // that cannot be written is refused here, as QEMU does, instead of output being
            // lost later.
            open_nonblocking(path, OpenOptions::new().write(true).create(true), 0, true).map_err(
                |e| {
                    err(
                        context,
                        format!("Could not open '{}': {}", path.display(), reason(&e)),
                    )
                },
            )?;
        }
        Backend::Chardev {
            backend: CharBackend::UnixClient(path),
            ..
        } => {
            // QEMU connects when the chardev is created; machina connects when a device opens
            // it, so refuse here what could never connect (no file, or not a socket), without
            // a connection the listener would see.
            let refused = match std::fs::metadata(&path) {
                Err(e) => Some(reason(&e)),
                Ok(m) if !m.file_type().is_socket() => Some(reason(
                    &std::io::Error::from_raw_os_error(libc::ECONNREFUSED),
                )),
                Ok(_) => None,
            };
            if let Some(why) = refused {
                return Err(err(
                    context,
                    format!("Failed to connect to '{}': {why}", path.display()),
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Before chardev `chardev` is added: if a packet filter uses it, open it in the network
/// thread now (a server listens at once, as QEMU's chardevs do, so a client chardev created
/// after it can connect).
pub fn open_filter_chardev(
    list: &[Backend],
    chardev: &Backend,
    context: &str,
) -> Result<(), BackendError> {
    let Backend::Chardev { id, backend } = chardev else {
        return Ok(());
    };
    let used = list.iter().any(|b| {
        matches!(b, Backend::Filter { outdev, indev, .. }
            if outdev.as_deref() == Some(id.as_str()) || indev.as_deref() == Some(id.as_str()))
    });
    if !used {
        return Ok(());
    }
    let spec = match backend {
        CharBackend::UnixServer { path, .. } => crate::netdev::CharSocket::Server(path.clone()),
        CharBackend::UnixClient(path) => crate::netdev::CharSocket::Client(path.clone()),
        CharBackend::SocketFd { fd, .. } => crate::netdev::CharSocket::Fd(*fd),
        _ => {
            return Err(err(
                context,
                format!("chardev '{id}': machina's packet filters take socket chardevs"),
            ))
        }
    };
    crate::netdev::open_char(id, &spec).map_err(|e| err(context, e.0))
}

/// Start every packet filter of `list` on its netdev (after the netdevs and chardevs).
pub fn open_filters(list: &[Backend]) -> Result<(), BackendError> {
    for b in list {
        if let Backend::Filter {
            id,
            redirector,
            netdev,
            queue,
            outdev,
            indev,
        } = b
        {
            let kind = if *redirector {
                "filter-redirector"
            } else {
                "filter-mirror"
            };
            let context = format!("-object {kind},id={id}");
            for name in [outdev, indev].into_iter().flatten() {
                if !list
                    .iter()
                    .any(|c| matches!(c, Backend::Chardev { id, .. } if id == name))
                {
                    return Err(err(&context, format!("Device '{name}' not found")));
                }
            }
            crate::netdev::add_filter(
                id,
                *redirector,
                netdev,
                queue,
                outdev.as_deref(),
                indev.as_deref(),
            )
            .map_err(|e| err(&context, e.0))?;
        }
    }
    Ok(())
}
