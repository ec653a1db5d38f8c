//! Where a device chardev's output goes (file, null, stdio, sockets): never blocking the
//! device, dropping output a stalled or absent reader cannot take, as QEMU does.

use super::*;

/// Guest output to a listening socket: the connected client gets it; with no client, or one
/// that does not keep up, output is dropped (as QEMU does) so the device never blocks.
pub(super) struct SocketOutput {
    pub(super) listener: std::os::unix::net::UnixListener,
    /// The connected client, shared with the input pump (`char_input`) when there is one:
    /// then the pump accepts clients and this side only writes.
    pub(super) client: Arc<std::sync::Mutex<Option<std::os::unix::net::UnixStream>>>,
    pub(super) pumped: bool,
    path: PathBuf,
    /// (device, inode) of the socket we bound, so that dropping removes only our own file.
    identity: (u64, u64),
}

impl std::io::Write for SocketOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut client = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if client.is_none() && !self.pumped {
            if let Ok((stream, _)) = self.listener.accept() {
                if stream.set_nonblocking(true).is_ok() {
                    *client = Some(stream);
                }
            }
        }
        if let Some(c) = client.as_mut() {
            match c.write(buf) {
                Ok(n) if n > 0 => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // Gone (or closed): wait for the next client.
                _ => *client = None,
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SocketOutput {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.identity)
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Where a device's output to chardev `backend` goes, opened now; QEMU's text when it cannot
/// be. Nothing here blocks: a server socket is not waited on (`wait=on` is not honoured for
/// device chardevs), files open with O_NONBLOCK.
pub fn open_char_output(backend: &CharBackend) -> Result<Box<dyn std::io::Write + Send>, String> {
    match backend {
        CharBackend::Null => Ok(Box::new(std::io::sink())),
        CharBackend::Stdio => Ok(Box::new(std::io::stdout())),
        // `/dev/fdset/N`: the fd passed with -add-fd (write access), as qemu_open.
        CharBackend::File(path) if crate::fdset::is_fdset(path) => crate::fdset::open(
            path,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NONBLOCK,
            0o666,
        )
        .map(|f| Box::new(f) as Box<dyn std::io::Write + Send>)
        .map_err(|e| format!("Could not open '{}': {}", path.display(), reason(&e))),
        CharBackend::SocketFd { .. } => {
            Err("machina connects fd-passed socket chardevs to serial ports (isa-serial) and monitors only".into())
        }
        CharBackend::Pty => {
            Err("machina connects pty chardevs to serial ports (isa-serial) only".into())
        }
        CharBackend::File(path) => open_nonblocking(
            path,
            OpenOptions::new().write(true).create(true).truncate(true),
            0,
            true,
        )
        .map(|f| Box::new(f) as Box<dyn std::io::Write + Send>)
        .map_err(|e| format!("Could not open '{}': {}", path.display(), reason(&e))),
        CharBackend::UnixServer { path, .. } => {
            Ok(Box::new(socket_server(path)?) as Box<dyn std::io::Write + Send>)
        }
        CharBackend::UnixClient(path) => Ok(Box::new(DroppingWriter(socket_client(path)?))),
    }
}

/// A listening socket at `path` (private, non-blocking), as QEMU's `server=on` chardev.
pub(super) fn socket_server(path: &Path) -> Result<SocketOutput, String> {
    use std::os::unix::fs::MetadataExt;
    let listen_err = |e: std::io::Error| {
        format!(
            "Failed to bind socket to {}: {}",
            path.display(),
            plain_text(&e)
        )
    };
    let listener = qmp::bind_unix_private(path).map_err(listen_err)?;
    listener.set_nonblocking(true).map_err(listen_err)?;
    let meta = std::fs::symlink_metadata(path).map_err(listen_err)?;
    Ok(SocketOutput {
        listener,
        client: Arc::default(),
        pumped: false,
        path: path.to_path_buf(),
        identity: (meta.dev(), meta.ino()),
    })
}

/// A non-blocking connection to the socket at `path`, as QEMU's client chardev.
pub(super) fn socket_client(path: &Path) -> Result<std::os::unix::net::UnixStream, String> {
    let stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        format!(
            "Failed to connect to '{}': {}",
            path.display(),
            plain_text(&e)
        )
    })?;
    stream
        .set_nonblocking(true)
        .map_err(|e| format!("Failed to connect to '{}': {e}", path.display()))?;
    Ok(stream)
}

/// A non-blocking stream whose output is dropped when the peer does not keep up or is gone.
pub(super) struct DroppingWriter(pub(super) std::os::unix::net::UnixStream);

impl std::io::Write for DroppingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.write(buf) {
            Ok(n) if n > 0 => Ok(n),
            _ => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
