//! Input from a device chardev to the guest (a virtconsole's socket): one "chardev-in" thread
//! per socket chardev reads what the client sends and hands it to the consumer of the
//! machine built now (its console). It reads only while the consumer has room, so a guest
//! that does not read stops the client (socket backpressure, as QEMU's can_read), and it
//! ends within a poll period once the chardev is gone.

use super::char_output::{socket_client, socket_server, DroppingWriter};
use super::*;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::{Mutex, Weak};

/// Whoever takes the chardev's input now (the console of the current machine).
pub trait InputConsumer: Send {
    /// Bytes it can take now.
    fn room(&self) -> usize;
    fn push(&self, bytes: &[u8]);
}

/// The current consumer of a chardev's input; a reset connects the new machine's console.
#[derive(Clone, Default)]
pub struct CharInput(Arc<Mutex<Option<Box<dyn InputConsumer>>>>);

impl CharInput {
    pub fn connect(&self, consumer: Box<dyn InputConsumer>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(consumer);
    }

    fn room(&self) -> usize {
        let consumer = self.0.lock().unwrap_or_else(|e| e.into_inner());
        consumer.as_ref().map_or(0, |c| c.room())
    }

    fn push(&self, bytes: &[u8]) {
        if let Some(c) = self.0.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            c.push(bytes);
        }
    }
}

/// How long the pump waits in poll before it looks again (room, whether the chardev is
/// still there); a hang guard, not a latency: data wakes it at once.
const POLL_MS: i32 = 200;
/// Bytes read at once.
const CHUNK: usize = 4096;

/// Wait until `fd` is readable or the period passes; true when readable (or hung up).
fn readable(fd: std::os::fd::RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, POLL_MS) > 0 }
}

/// Read what `stream` has into `input`, as much as the consumer has room for; false when
/// the peer is gone.
fn pass(stream: &mut std::os::unix::net::UnixStream, input: &CharInput) -> bool {
    let room = input.room().min(CHUNK);
    if room == 0 {
        // Leave it in the socket: the client waits until the guest reads.
        std::thread::sleep(std::time::Duration::from_millis(POLL_MS as u64));
        return true;
    }
    let mut buf = [0u8; CHUNK];
    match stream.read(&mut buf[..room]) {
        Ok(0) => false,
        Ok(n) => {
            input.push(&buf[..n]);
            true
        }
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
        ),
    }
}

/// A listening socket chardev with input: its output, and the pump that accepts clients
/// (one at a time, shared with the output) and reads from them.
fn server(path: &Path) -> Result<(Box<dyn std::io::Write + Send>, CharInput), String> {
    let mut out = socket_server(path)?;
    out.pumped = true;
    let listener = out
        .listener
        .try_clone()
        .map_err(|e| format!("Failed to bind socket to {}: {e}", path.display()))?;
    let shared = Arc::downgrade(&out.client);
    let input = CharInput::default();
    let pump_input = input.clone();
    let spawn = std::thread::Builder::new()
        .name("chardev-in".into())
        .spawn(move || serve(listener, shared, pump_input));
    spawn.map_err(|e| format!("cannot start the chardev input thread: {e}"))?;
    Ok((Box::new(out), input))
}

type SharedClient = Mutex<Option<std::os::unix::net::UnixStream>>;

fn serve(listener: std::os::unix::net::UnixListener, shared: Weak<SharedClient>, input: CharInput) {
    let mut current: Option<std::os::unix::net::UnixStream> = None;
    loop {
        // The chardev (its output side) is gone: so is its input.
        if shared.strong_count() == 0 {
            return;
        }
        let fd = current
            .as_ref()
            .map_or(listener.as_raw_fd(), |c| c.as_raw_fd());
        if !readable(fd) {
            continue;
        }
        match current.as_mut() {
            None => {
                let Ok((stream, _)) = listener.accept() else {
                    continue;
                };
                let (Ok(()), Ok(clone), Some(client)) = (
                    stream.set_nonblocking(true),
                    stream.try_clone(),
                    shared.upgrade(),
                ) else {
                    continue;
                };
                *client.lock().unwrap_or_else(|e| e.into_inner()) = Some(clone);
                current = Some(stream);
            }
            Some(stream) => {
                if !pass(stream, &input) {
                    current = None;
                    if let Some(client) = shared.upgrade() {
                        *client.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    }
                }
            }
        }
    }
}

/// A client socket chardev with input: its output, and the pump reading the connection
/// until the peer closes it or the chardev goes.
fn client(path: &Path) -> Result<(Box<dyn std::io::Write + Send>, CharInput), String> {
    let stream = socket_client(path)?;
    let mut reader = stream
        .try_clone()
        .map_err(|e| format!("Failed to connect to '{}': {e}", path.display()))?;
    let alive = Arc::new(());
    let token = Arc::downgrade(&alive);
    let input = CharInput::default();
    let pump_input = input.clone();
    std::thread::Builder::new()
        .name("chardev-in".into())
        .spawn(move || {
            while token.strong_count() > 0 {
                if readable(reader.as_raw_fd()) && !pass(&mut reader, &pump_input) {
                    return;
                }
            }
        })
        .map_err(|e| format!("cannot start the chardev input thread: {e}"))?;
    Ok((Box::new(Alive(DroppingWriter(stream), alive)), input))
}

/// A writer that keeps its input pump's token alive (the pump ends once it is dropped).
struct Alive<W>(W, #[allow(dead_code)] Arc<()>);

impl<W: std::io::Write> std::io::Write for Alive<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Where a device's output to chardev `backend` goes and, for socket chardevs, where its
/// input comes from (other backends give no input: a file, null; stdio belongs to the
/// serial console and the monitor).
pub fn open_char_io(
    backend: &CharBackend,
) -> Result<(Box<dyn std::io::Write + Send>, Option<CharInput>), String> {
    match backend {
        CharBackend::UnixServer { path, .. } => server(path).map(|(o, i)| (o, Some(i))),
        CharBackend::UnixClient(path) => client(path).map(|(o, i)| (o, Some(i))),
        _ => super::open_char_output(backend).map(|o| (o, None)),
    }
}
