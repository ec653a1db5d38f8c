//! The QMP server: listeners, one reader and one writer thread per client, and
//! an orderly shutdown that flushes what clients are owed.

use crate::accept_thread::{AcceptThread, ACCEPT_THREAD};
use crate::endpoint::QmpEndpoint;
use crate::error::ServerError;
use crate::events::{ClientPort, EventBus, Outgoing};
use crate::parser::JsonStreamParser;
use crate::protocol::{self, ServerConfig, CURRENT_CLIENT};
use crate::registry::Registry;
use crate::session::Session;
use crate::transport::{self, BoundAddr, Conn, Listener};
use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Stack of a client's reader thread, which parses its messages and runs its commands. A
/// message may nest 1024 levels deep (the parser's limit, QEMU's MAX_NESTING), and parsing,
/// checking, cloning, serialising and dropping such a value all recurse once per level: with
/// the default 2 MiB, one deeply nested message overflowed the stack and aborted the whole
/// process (a debug build needs 2 to 4 MiB at the limit). Only the pages actually touched
/// become resident.
const READER_STACK_SIZE: usize = 16 << 20;

/// At exit, how long a client's output may make no progress before it is cut off.
const STALLED_CLIENT: Duration = Duration::from_secs(3);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct ListenerCtl {
    listener: Arc<Listener>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// In-band requests a client may have waiting while one runs (QEMU's QMP_REQ_QUEUE_LEN_MAX);
/// with more, its input is not read until there is room.
const QMP_REQ_QUEUE_LEN_MAX: usize = 8;

type Message = Result<Value, crate::parser::ParseError>;

/// A client's in-band dispatcher (with `oob` enabled): runs its requests in order.
struct Dispatcher {
    queue: SyncSender<Message>,
    thread: JoinHandle<()>,
}

/// `qmp_is_oob`: a request naming `exec-oob` (and not `execute`) is out-of-band, whether or
/// not the client enabled `oob` (if not, it is answered at once with the error).
fn is_oob(msg: &Message) -> bool {
    matches!(msg, Ok(Value::Object(d)) if d.contains_key("exec-oob") && !d.contains_key("execute"))
}

/// Runs one request and queues its response; false when the client is gone.
fn run_one(session: &mut Session, msg: Message, port: &ClientPort) -> bool {
    // A panicking handler costs its client one error, not the server.
    let line = catch_unwind(AssertUnwindSafe(|| protocol::handle_message(session, msg)))
        .unwrap_or_else(|_| {
            CURRENT_CLIENT.with(|c| c.set(None));
            protocol::internal_error_line()
        });
    let subscribe = session.take_subscribe_pending();
    port.send_response(line, subscribe)
}

struct SessionCtl {
    port: Arc<ClientPort>,
    /// A handle on the socket to unblock the reader; `None` for stdio.
    conn: Option<Conn>,
    /// Held while a command runs, so shutdown can wait for it.
    busy: Arc<Mutex<()>>,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

impl SessionCtl {
    fn finished(&self) -> bool {
        self.reader.as_ref().is_none_or(JoinHandle::is_finished)
            && self.writer.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

struct Shared {
    config: ServerConfig,
    /// Set at creation, or after the sockets listen (`registry_later`): commands are held
    /// until it is, and `registry()` waits for it.
    registry: OnceLock<Registry>,
    schema: OnceLock<Value>,
    events: EventBus,
    machine_ready: AtomicBool,
    /// While true, clients are greeted but their messages wait (see `hold_commands`).
    held: Mutex<bool>,
    released: Condvar,
    stopping: AtomicBool,
    next_client: AtomicU64,
    listeners: Mutex<Vec<ListenerCtl>>,
    sessions: Mutex<Vec<SessionCtl>>,
}

/// A QMP server. Cheap to clone (all clones are the same server).
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl Server {
    /// A server for `registry`'s commands, reporting QEMU 10.2.2 / "machina-VERSION".
    pub fn new(registry: Registry) -> Self {
        Self::with_config(registry, ServerConfig::default())
    }

    pub fn with_config(registry: Registry, config: ServerConfig) -> Self {
        let server = Self::registry_later(config);
        server.set_registry(registry);
        server.hold_commands(false);
        server
    }

    /// A server whose commands come later ([`set_registry`](Self::set_registry)): the VMM
    /// listens and greets first and makes its commands meanwhile. Its commands are held
    /// until the registry is set.
    pub fn registry_later(config: ServerConfig) -> Self {
        Server {
            shared: Arc::new(Shared {
                config,
                registry: OnceLock::new(),
                schema: OnceLock::new(),
                events: EventBus::new(),
                machine_ready: AtomicBool::new(true),
                held: Mutex::new(true),
                released: Condvar::new(),
                stopping: AtomicBool::new(false),
                next_client: AtomicU64::new(1),
                listeners: Mutex::new(Vec::new()),
                sessions: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.shared.config
    }

    /// The commands (waiting for them if the server was made with `registry_later`).
    pub fn registry(&self) -> &Registry {
        if let Some(r) = self.shared.registry.get() {
            return r;
        }
        let mut held = lock(&self.shared.held);
        loop {
            if let Some(r) = self.shared.registry.get() {
                return r;
            }
            held = self.wait_a_while(held);
        }
    }

    /// Give a server made with `registry_later` its commands (a second registry is
    /// ignored). Commands stay held until `hold_commands(false)`.
    pub fn set_registry(&self, registry: Registry) {
        let _ = self.shared.registry.set(registry);
        let _held = lock(&self.shared.held);
        self.shared.released.notify_all();
    }

    /// The `query-qmp-schema` value, computed once.
    pub fn schema(&self) -> &Value {
        self.shared.schema.get_or_init(|| self.registry().schema())
    }

    pub fn events(&self) -> &EventBus {
        &self.shared.events
    }

    /// With `--preconfig`, set false before serving and true in `x-exit-preconfig`:
    /// until then only `allow_preconfig` commands run.
    pub fn set_machine_ready(&self, ready: bool) {
        self.shared.machine_ready.store(ready, Ordering::SeqCst);
    }

    pub fn machine_ready(&self) -> bool {
        self.shared.machine_ready.load(Ordering::SeqCst)
    }

    /// While `hold` is true, clients are accepted and greeted but none of their messages
    /// is handled: as in QEMU, whose monitor I/O thread greets while the main thread still
    /// creates the machine and whose commands run once it is done. Set before listening,
    /// cleared when the machine is initialised (or at shutdown).
    pub fn hold_commands(&self, hold: bool) {
        *lock(&self.shared.held) = hold;
        if !hold {
            self.shared.released.notify_all();
        }
    }

    /// Wait while commands are held; false if the server stops meanwhile.
    fn wait_released(&self) -> bool {
        let mut held = lock(&self.shared.held);
        while *held && !self.stopping() {
            held = self.wait_a_while(held);
        }
        !self.stopping()
    }

    /// Wait under the `held` lock until commands are released or registered, at most
    /// 100 ms so that a stopping server is noticed.
    fn wait_a_while<'a>(&self, held: MutexGuard<'a, bool>) -> MutexGuard<'a, bool> {
        self.shared
            .released
            .wait_timeout(held, Duration::from_millis(100))
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    /// True once `shutdown` has begun.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping()
    }

    fn stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }

    /// Connected clients.
    pub fn client_count(&self) -> usize {
        lock(&self.shared.sessions)
            .iter()
            .filter(|s| s.port.is_open())
            .count()
    }

    /// Starts serving `ep`. Listening sockets accept any number of clients on a
    /// background thread; with `wait: true` this first blocks until one connects.
    pub fn listen(&self, ep: &QmpEndpoint) -> Result<BoundAddr, ServerError> {
        self.listen_on(ep, None)
    }

    /// As [`listen`](Self::listen), running the accept loop on `thread` (started before the
    /// socket existed) when given; an unused `thread` ends when dropped.
    pub fn listen_on(
        &self,
        ep: &QmpEndpoint,
        thread: Option<AcceptThread>,
    ) -> Result<BoundAddr, ServerError> {
        if self.stopping() {
            return Err(ServerError::ShutDown);
        }
        let (listener, wait) = match ep {
            QmpEndpoint::Stdio => {
                self.serve_stdio();
                return Ok(BoundAddr::Stdio);
            }
            QmpEndpoint::Unix { path, server, wait } => {
                if !*server {
                    self.serve_conn(transport::connect_unix(path)?)?;
                    return Ok(BoundAddr::Connected);
                }
                (transport::bind_unix(path)?, *wait)
            }
            QmpEndpoint::Tcp {
                host,
                port,
                server,
                wait,
            } => {
                if !*server {
                    self.serve_conn(transport::connect_tcp(host, *port)?)?;
                    return Ok(BoundAddr::Connected);
                }
                (transport::bind_tcp(host, *port)?, *wait)
            }
            QmpEndpoint::Fd { fd, server, wait } => match transport::from_fd(*fd, *server)? {
                Ok(l) => (l, *wait),
                Err(conn) => {
                    self.serve_conn(conn)?;
                    return Ok(BoundAddr::Connected);
                }
            },
        };
        let addr = match (&listener, ep) {
            (_, QmpEndpoint::Fd { fd, .. }) => BoundAddr::Fd(*fd),
            (l, _) => l.addr(),
        };
        let listener = Arc::new(listener);
        if wait {
            // `wait=on`: the VMM does not proceed until a client is there.
            let conn = listener.accept()?;
            self.serve_conn(conn)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let server = self.clone();
            let listener = listener.clone();
            let stop = stop.clone();
            let accept_loop = move || server.accept_loop(&listener, &stop);
            match thread {
                Some(t) => t.run(Box::new(accept_loop)),
                None => Some(
                    thread::Builder::new()
                        .name(ACCEPT_THREAD.into())
                        .spawn(accept_loop)?,
                ),
            }
        };
        lock(&self.shared.listeners).push(ListenerCtl {
            listener,
            stop,
            thread,
        });
        Ok(addr)
    }

    fn accept_loop(&self, listener: &Listener, stop: &AtomicBool) {
        loop {
            let r = listener.accept();
            if stop.load(Ordering::SeqCst) || self.stopping() {
                break;
            }
            match r {
                Ok(conn) => {
                    // One bad connection must not stop the listener.
                    let _ = self.serve_conn(conn);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // E.g. out of file descriptors: back off instead of spinning.
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn serve_conn(&self, conn: Conn) -> Result<u64, ServerError> {
        let reader = conn.try_clone()?;
        let ctl = conn.try_clone()?;
        Ok(self.start_session(Box::new(reader), Box::new(conn), Some(ctl), true))
    }

    /// Serves QMP on stdin/stdout (`-qmp stdio`); `oob` is not offered there.
    pub fn serve_stdio(&self) -> u64 {
        self.start_session(
            Box::new(std::io::stdin()),
            Box::new(std::io::stdout()),
            None,
            false,
        )
    }

    /// Serves one client over any byte stream (custom transports, tests).
    /// Returns the client id.
    pub fn serve_stream(
        &self,
        reader: impl Read + Send + 'static,
        writer: impl Write + Send + 'static,
        oob_offered: bool,
    ) -> u64 {
        self.start_session(Box::new(reader), Box::new(writer), None, oob_offered)
    }

    fn start_session(
        &self,
        mut reader: Box<dyn Read + Send>,
        mut writer: Box<dyn Write + Send>,
        conn: Option<Conn>,
        oob_offered: bool,
    ) -> u64 {
        let id = self.shared.next_client.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = channel();
        let port = Arc::new(ClientPort::new(id, tx));
        if let Some(c) = conn.as_ref().and_then(|c| c.try_clone().ok()) {
            port.set_hangup(c);
        }
        // A socket client is greeted from this thread when its fresh socket takes the line at
        // once (it always has room): the greeting does not wait for the writer thread to
        // start. Nothing else is queued yet, so the order holds.
        let greeting = self.config().greeting(oob_offered);
        let sent = conn.as_ref().map_or(0, |c| c.send_now(greeting.as_bytes()));
        match greeting.get(sent..) {
            Some("") => {}
            Some(rest) => {
                port.send(rest.to_string());
            }
            // Cut inside a character (the line is ASCII; never seen): the stream is broken.
            None => port.close(),
        }
        self.events().subscribe(port.clone());
        let busy = Arc::new(Mutex::new(()));

        let w_port = port.clone();
        let w_conn = conn.as_ref().and_then(|c| c.try_clone().ok());
        let writer_thread = thread::Builder::new()
            .name(format!("qmp-out-{id}"))
            .spawn(move || {
                while let Ok(Outgoing::Line(line)) = rx.recv() {
                    let ok = writer
                        .write_all(line.as_bytes())
                        .and_then(|()| writer.flush())
                        .is_ok();
                    w_port.written(line.capacity());
                    if !ok {
                        // The client is gone: stop its reader as well.
                        w_port.close();
                        if let Some(c) = &w_conn {
                            c.shutdown(Shutdown::Both);
                        }
                        return;
                    }
                }
                if let Some(c) = &w_conn {
                    c.shutdown(Shutdown::Write);
                }
            })
            .ok();

        let server = self.clone();
        let r_port = port.clone();
        let r_busy = busy.clone();
        let r_conn = conn.as_ref().and_then(|c| c.try_clone().ok());
        let reader_thread = thread::Builder::new()
            .name(format!("qmp-in-{id}"))
            .stack_size(READER_STACK_SIZE)
            .spawn(move || {
                let mut session = Session::new(server.clone(), r_port.clone(), oob_offered);
                server.read_loop(&mut *reader, &mut session, &r_port, &r_busy);
                r_port.close();
                server.events().unsubscribe(id);
                if let Some(c) = &r_conn {
                    c.shutdown(Shutdown::Read);
                }
            })
            .ok();

        if reader_thread.is_none() {
            port.close();
        }
        let mut sessions = lock(&self.shared.sessions);
        // Reap clients that are gone.
        sessions.retain_mut(|s| {
            if s.finished() {
                if let Some(t) = s.reader.take() {
                    let _ = t.join();
                }
                if let Some(t) = s.writer.take() {
                    let _ = t.join();
                }
                false
            } else {
                true
            }
        });
        sessions.push(SessionCtl {
            port,
            conn,
            busy,
            reader: reader_thread,
            writer: writer_thread,
        });
        id
    }

    fn read_loop(
        &self,
        reader: &mut dyn Read,
        session: &mut Session,
        port: &Arc<ClientPort>,
        busy: &Arc<Mutex<()>>,
    ) {
        let mut parser = JsonStreamParser::new();
        let mut buf = vec![0u8; 16 << 10];
        let mut msgs = Vec::new();
        // Once the client enables `oob`, its in-band commands go to a dispatcher thread and
        // this thread goes on reading (and runs `exec-oob` commands at once). Before that,
        // as QEMU's monitor does without `oob`, it runs each command itself and reads on
        // only when it is done.
        let mut dispatcher: Option<Dispatcher> = None;
        'read: loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            parser.feed(&buf[..n], &mut msgs);
            for msg in msgs.drain(..) {
                if !self.wait_released() || self.stopping() || !port.is_open() {
                    break 'read;
                }
                if is_oob(&msg) {
                    // Answered now, ahead of queued in-band commands, without waiting for
                    // the one running (monitor/qmp.c handle_qmp_command).
                    if !run_one(session, msg, port) {
                        break 'read;
                    }
                    continue;
                }
                if let Some(d) = &dispatcher {
                    // Blocks only while QMP_REQ_QUEUE_LEN_MAX requests wait: QEMU suspends
                    // reading then, too.
                    if d.queue.send(msg).is_err() {
                        break 'read;
                    }
                    continue;
                }
                let guard = lock(busy);
                if self.stopping() || !port.is_open() {
                    break 'read;
                }
                let sent = run_one(session, msg, port);
                drop(guard);
                if !sent || self.stopping() {
                    break 'read;
                }
                if session.oob_enabled() {
                    dispatcher = self.start_dispatcher(session, port, busy);
                    if dispatcher.is_none() {
                        break 'read;
                    }
                }
            }
        }
        // At end of input, what was read is still answered (a client may half-close and
        // read on), then the session ends; a command that waits gives up.
        port.end_input();
        if let Some(d) = dispatcher {
            drop(d.queue);
            let _ = d.thread.join();
        }
    }

    fn start_dispatcher(
        &self,
        session: &Session,
        port: &Arc<ClientPort>,
        busy: &Arc<Mutex<()>>,
    ) -> Option<Dispatcher> {
        let (queue, requests) = sync_channel::<Message>(QMP_REQ_QUEUE_LEN_MAX);
        let mut session = session.fork();
        let server = self.clone();
        let port = port.clone();
        let busy = busy.clone();
        // Wait until the thread runs: it names itself then, and whoever lists the
        // process's threads once the client's first command is queued sees it by name.
        let (started, running) = sync_channel(1);
        let thread = thread::Builder::new()
            .name(format!("qmp-disp-{}", port.id))
            .stack_size(READER_STACK_SIZE)
            .spawn(move || {
                let _ = started.send(());
                while let Ok(msg) = requests.recv() {
                    let _guard = lock(&busy);
                    if server.stopping() || !port.is_open() {
                        // QEMU drops the queue of a monitor that is closed.
                        return;
                    }
                    if !run_one(&mut session, msg, &port) || server.stopping() {
                        return;
                    }
                }
            })
            .ok()?;
        let _ = running.recv();
        Some(Dispatcher { queue, thread })
    }

    /// Stops accepting, lets running commands finish, flushes every client's
    /// pending output, then disconnects them and removes socket files. Call it
    /// before the process exits (after `quit`), preferably not from a handler:
    /// from a handler, that handler's own client is closed after its response.
    pub fn shutdown(&self) {
        if self.shared.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        // Readers waiting for held commands see `stopping` now.
        self.hold_commands(false);
        let listeners: Vec<ListenerCtl> = lock(&self.shared.listeners).drain(..).collect();
        for mut l in listeners {
            l.stop.store(true, Ordering::SeqCst);
            if l.listener.wake() {
                if let Some(t) = l.thread.take() {
                    let _ = t.join();
                }
            }
            l.listener.cleanup();
        }
        let me = CURRENT_CLIENT.with(|c| c.get());
        let sessions: Vec<SessionCtl> = lock(&self.shared.sessions).drain(..).collect();
        for mut s in sessions {
            if Some(s.port.id) == me {
                continue;
            }
            drop(lock(&s.busy));
            s.port.close();
            if let Some(c) = &s.conn {
                // Don't hang on a client that stopped reading.
                c.set_write_timeout(Some(Duration::from_secs(1)));
                c.shutdown(Shutdown::Read);
            }
            if let Some(t) = s.writer.take() {
                // A writer already blocked in a write to a client that stopped reading does
                // not see the new timeout: let it flush while it makes progress, and once
                // nothing moved for a while cut the socket so the write fails and the
                // thread ends. (Progress, not a fixed time: a busy host may be slow to
                // schedule a writer that is not stalled at all.)
                let mut pending = s.port.pending_bytes();
                let mut deadline = std::time::Instant::now() + STALLED_CLIENT;
                while !t.is_finished() && std::time::Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(5));
                    let now = s.port.pending_bytes();
                    if now != pending {
                        pending = now;
                        deadline = std::time::Instant::now() + STALLED_CLIENT;
                    }
                }
                if !t.is_finished() {
                    if let Some(c) = &s.conn {
                        c.shutdown(Shutdown::Both);
                    }
                }
                let _ = t.join();
            }
            if let Some(c) = &s.conn {
                c.shutdown(Shutdown::Both);
                if let Some(t) = s.reader.take() {
                    let _ = t.join();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::QmpEndpoint;
    use crate::{CommandDef, QmpError, Type};
    use std::io::{BufRead, BufReader, Read};
    use std::os::unix::net::UnixStream;

    fn client(server: &Server) -> (UnixStream, BufReader<UnixStream>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        server.serve_stream(theirs.try_clone().unwrap(), theirs, false);
        let out = ours.try_clone().unwrap();
        let mut input = BufReader::new(ours);
        let mut line = String::new();
        input.read_line(&mut line).unwrap(); // greeting
        (out, input)
    }

    /// A `TextHandler`'s text is the return value, as it is, with the id after it.
    #[test]
    fn text_handler_answers_verbatim() {
        let mut reg = Registry::new();
        reg.register(
            CommandDef::new("big").returns(Type::Any),
            crate::TextHandler(|_: serde_json::Map<String, Value>, _: &mut Session| {
                crate::writer::to_json_text(&serde_json::json!({"z": [1, "\u{e9}"], "a": {}}))
                    .map_err(|e| QmpError::generic(e.to_string()))
            }),
        )
        .unwrap();
        let server = Server::new(reg);
        let (mut out, mut input) = client(&server);
        let mut line = String::new();
        out.write_all(b"{'execute': 'qmp_capabilities'}{'execute': 'big', 'id': ['x', 1]}")
            .unwrap();
        input.read_line(&mut line).unwrap();
        line.clear();
        input.read_line(&mut line).unwrap();
        assert_eq!(
            line,
            "{\"return\": {\"a\": {}, \"z\": [1, \"\\u00E9\"]}, \"id\": [\"x\", 1]}\r\n"
        );
        // Called directly, it is a Value like any handler's.
        let entry = server.registry().entry("big").unwrap();
        let mut session = Session::new(
            server.clone(),
            Arc::new(ClientPort::new(0, channel().0)),
            false,
        );
        assert_eq!(
            entry
                .handler
                .call(serde_json::Map::new(), &mut session)
                .unwrap(),
            serde_json::json!({"a": {}, "z": [1, "é"]})
        );
        server.shutdown();
    }

    /// Held commands: the client is greeted at once, its commands are answered, in order,
    /// only once released; a shutdown while held ends the session instead of hanging it.
    #[test]
    fn held_commands_wait_for_release() {
        let server = Server::new(Registry::new());
        server.hold_commands(true);
        let (mut out, mut input) = client(&server);
        out.write_all(
            b"{'execute': 'qmp_capabilities', 'id': 1}{'execute': 'query-version', 'id': 2}",
        )
        .unwrap();
        // Nothing may come while held (a wrong early answer would show here; a slow host
        // can only make this pass, never fail).
        input
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut line = String::new();
        let early = input.read_line(&mut line);
        assert!(
            early.is_err() && line.is_empty(),
            "answered while held: {line}"
        );
        input
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        server.hold_commands(false);
        input.read_line(&mut line).unwrap();
        assert_eq!(line, "{\"return\": {}, \"id\": 1}\r\n");
        line.clear();
        input.read_line(&mut line).unwrap();
        assert!(
            line.contains("\"id\": 2") && line.contains("qemu"),
            "{line}"
        );

        let server = Server::new(Registry::new());
        server.hold_commands(true);
        let (mut out, mut input) = client(&server);
        out.write_all(b"{'execute': 'qmp_capabilities'}").unwrap();
        server.shutdown();
        line.clear();
        assert_eq!(input.read_line(&mut line).unwrap(), 0, "{line}");
    }

    /// A client that sends commands but never reads is disconnected once 64 MiB of output
    /// wait for it, and the queued output goes with it: it gets little more than what the
    /// socket buffers held, not the whole 64 MiB.
    #[test]
    fn a_client_that_never_reads_is_hung_up() {
        const MIB: usize = 1 << 20;
        let mut reg = Registry::new();
        reg.register(
            CommandDef::new("big").returns(Type::Any),
            crate::TextHandler(|_: serde_json::Map<String, Value>, _: &mut Session| {
                Ok(format!("\"{}\"", "x".repeat(MIB)))
            }),
        )
        .unwrap();
        let server = Server::new(reg);
        let dir = machina_tests::TempDir::new("qmp-hangup");
        let path = dir.join("qmp.sock");
        let ep = QmpEndpoint::Unix {
            path: path.clone(),
            server: true,
            wait: false,
        };
        server.listen(&ep).unwrap();
        let stream = UnixStream::connect(&path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut out = stream.try_clone().unwrap();
        let mut input = BufReader::new(stream);
        let mut line = String::new();
        input.read_line(&mut line).unwrap();
        out.write_all(b"{'execute': 'qmp_capabilities'}").unwrap();
        line.clear();
        input.read_line(&mut line).unwrap();
        assert_eq!(line, "{\"return\": {}}\r\n");
        // Ask for 1 MiB answers, read none, until the server stops taking requests.
        let start = std::time::Instant::now();
        let mut sent = 0;
        while out.write_all(b"{'execute': 'big'}").is_ok() {
            sent += 1;
            assert!(start.elapsed() < Duration::from_secs(20), "never hung up");
        }
        // What is left to read: without the hang-up, all that was queued (64 MiB).
        let mut unread = 0;
        let mut buf = vec![0u8; MIB];
        loop {
            match input.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => unread += n,
            }
        }
        assert!(
            unread < 16 * MIB,
            "read {unread} bytes after {sent} requests"
        );
        server.shutdown();
        assert!(!path.exists());
    }

    /// Messages nested as deep as the parser allows are answered, not a stack overflow that
    /// aborts the process; one level deeper is QEMU's nesting error.
    #[test]
    fn deepest_messages_are_answered() {
        let mut reg = Registry::new();
        reg.register(
            CommandDef::new("echo")
                .opt("v", Type::Any)
                .returns(Type::Any),
            |args: serde_json::Map<String, Value>, _: &mut Session| Ok(Value::Object(args)),
        )
        .unwrap();
        let server = Server::new(reg);
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        server.serve_stream(theirs.try_clone().unwrap(), theirs, false);
        let mut out = ours.try_clone().unwrap();
        let mut input = BufReader::new(ours);
        let mut line = String::new();
        let mut recv = |line: &mut String| {
            line.clear();
            input.read_line(line).unwrap();
        };
        recv(&mut line); // greeting
        out.write_all(b"{\"execute\": \"qmp_capabilities\"}")
            .unwrap();
        recv(&mut line);
        assert_eq!(line, "{\"return\": {}}\r\n");

        // {"execute": "echo", "arguments": {"v": DEEP}, "id": DEEP}: 1024 levels in all.
        let depth = 1024 - 2;
        let deep =
            |open: &str, close: &str| format!("{}1{}", open.repeat(depth), close.repeat(depth));
        for (open, close) in [("{\"a\": ", "}"), ("[", "]")] {
            let v = deep(open, close);
            let id = deep(open, close);
            let msg =
                format!("{{\"execute\": \"echo\", \"arguments\": {{\"v\": {v}}}, \"id\": {id}}}");
            out.write_all(msg.as_bytes()).unwrap();
            recv(&mut line);
            assert!(line.starts_with("{\"return\": {\"v\": "), "{}", &line[..60]);
            assert!(line.ends_with(&format!("\"id\": {id}}}\r\n")));
        }
        // A bare value nested to the limit, then one level more.
        for (depth, reply) in [
            (1024, "QMP input must be a JSON object"),
            (1025, "JSON nesting depth limit exceeded"),
        ] {
            out.write_all(format!("{}{}", "[".repeat(depth), "]".repeat(depth)).as_bytes())
                .unwrap();
            recv(&mut line);
            assert!(line.contains(reply), "{line}");
            if depth > 1024 {
                // The rest of the brackets: each `]` is an error of its own.
                for _ in 0..depth {
                    recv(&mut line);
                }
            }
        }
        out.write_all(b"{\"execute\": \"echo\", \"id\": 1}")
            .unwrap();
        recv(&mut line);
        assert_eq!(line, "{\"return\": {}, \"id\": 1}\r\n");
        server.shutdown();
    }
}
