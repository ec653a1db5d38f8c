//! Asynchronous events: `EventBus::emit` queues
//! `{"timestamp": {...}, "event": NAME, "data": {...}}` on every client that has
//! completed capabilities negotiation.
//!
//! Ordering guarantee: each client has one output queue that carries both
//! responses and events, and a command's response is queued only after its
//! handler returns. So an event emitted by a handler reaches that handler's
//! client before the handler's return value (`cont` → RESUME, then `{"return": {}}`).

use crate::transport::Conn;
use crate::writer;
use serde_json::Value;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Output a client has not yet read, past which it is disconnected: a client
/// that never reads must not make the VMM's memory grow without bound.
const MAX_PENDING_BYTES: usize = 64 << 20;

pub(crate) enum Outgoing {
    Line(String),
    Close,
}

/// The sending side of one client's output queue.
pub(crate) struct ClientPort {
    pub(crate) id: u64,
    tx: Mutex<Option<Sender<Outgoing>>>,
    negotiated: AtomicBool,
    /// The client's input ended (it left or half-closed): commands that wait give up.
    input_ended: AtomicBool,
    pending: AtomicUsize,
    /// The client's socket, shut down when the client is dropped for not reading, so that a
    /// writer blocked on it gives up (and frees the queue) at once.
    hangup: Mutex<Option<Conn>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking handler must not take the whole server down with a poisoned lock.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ClientPort {
    pub(crate) fn new(id: u64, tx: Sender<Outgoing>) -> Self {
        ClientPort {
            id,
            tx: Mutex::new(Some(tx)),
            negotiated: AtomicBool::new(false),
            input_ended: AtomicBool::new(false),
            pending: AtomicUsize::new(0),
            hangup: Mutex::new(None),
        }
    }

    /// The socket to shut down if the client leaves too much output unread.
    pub(crate) fn set_hangup(&self, conn: Conn) {
        *lock(&self.hangup) = Some(conn);
    }

    /// Queues a line; false when the client is gone (or was dropped for not reading).
    pub(crate) fn send(&self, line: String) -> bool {
        self.send_response(line, false)
    }

    /// Queues a command's response; `subscribe` (the response to `qmp_capabilities`) also
    /// starts events for this client, under the same lock: an event emitted once the client
    /// can have seen the response is never dropped, and none goes before the response.
    pub(crate) fn send_response(&self, line: String, subscribe: bool) -> bool {
        // Count what the line occupies, not just its text: that is what the bound is for.
        let len = line.capacity();
        let mut tx = lock(&self.tx);
        let Some(sender) = tx.as_ref() else {
            return false;
        };
        if self.pending.fetch_add(len, Ordering::SeqCst) + len > MAX_PENDING_BYTES {
            let _ = sender.send(Outgoing::Close);
            *tx = None;
            // The writer is most likely blocked writing to this client: make the write fail
            // rather than wait (for ever) for the client to read 64 MiB.
            if let Some(conn) = lock(&self.hangup).take() {
                conn.shutdown(Shutdown::Both);
            }
            return false;
        }
        if sender.send(Outgoing::Line(line)).is_err() {
            *tx = None;
            return false;
        }
        if subscribe {
            self.negotiated.store(true, Ordering::SeqCst);
        }
        true
    }

    /// Called by the writer once a line is on the wire, with the line's capacity.
    pub(crate) fn written(&self, len: usize) {
        self.pending.fetch_sub(len, Ordering::SeqCst);
    }

    /// Bytes queued for this client and not yet written.
    pub(crate) fn pending_bytes(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Lets the writer drain what is queued, then stop.
    pub(crate) fn close(&self) {
        if let Some(tx) = lock(&self.tx).take() {
            let _ = tx.send(Outgoing::Close);
        }
    }

    pub(crate) fn end_input(&self) {
        self.input_ended.store(true, Ordering::SeqCst);
    }

    pub(crate) fn input_ended(&self) -> bool {
        self.input_ended.load(Ordering::SeqCst)
    }

    pub(crate) fn is_open(&self) -> bool {
        lock(&self.tx).is_some()
    }

    #[cfg(test)]
    pub(crate) fn set_negotiated(&self) {
        self.negotiated.store(true, Ordering::SeqCst);
    }

    pub(crate) fn negotiated(&self) -> bool {
        self.negotiated.load(Ordering::SeqCst)
    }
}

/// Broadcasts events to all negotiated clients. Cheap to clone; share it with
/// whatever part of the VMM produces events (vCPU exits, device models, ...).
#[derive(Clone, Default)]
pub struct EventBus {
    ports: Arc<Mutex<Vec<Arc<ClientPort>>>>,
}

/// When an event happened: seconds and microseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    pub seconds: i64,
    pub microseconds: i64,
}

impl Timestamp {
    /// Now; both fields -1 if the clock fails, as in QEMU.
    pub fn now() -> Self {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                microseconds: i64::from(d.subsec_micros()),
            },
            Err(_) => Timestamp {
                seconds: -1,
                microseconds: -1,
            },
        }
    }

    fn text(&self) -> String {
        writer::object_text(&[
            ("seconds", self.seconds.to_string()),
            ("microseconds", self.microseconds.to_string()),
        ])
    }
}

/// The wire form of an event. `data` of `Value::Null` means "no data member".
pub fn event_line(name: &str, data: &Value, ts: Timestamp) -> String {
    let mut members = vec![
        ("timestamp", ts.text()),
        ("event", writer::to_json(&Value::String(name.to_string()))),
    ];
    if !data.is_null() {
        members.push(("data", writer::to_json(data)));
    }
    let mut s = writer::object_text(&members);
    s.push_str("\r\n");
    s
}

impl EventBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends event `name` to every client that has completed negotiation.
    /// `data` is the event's data object, or `Value::Null` for events without data.
    /// Never blocks on a client.
    pub fn emit(&self, name: &str, data: Value) {
        let line = event_line(name, &data, Timestamp::now());
        let mut ports = lock(&self.ports);
        ports.retain(|p| p.is_open());
        for p in ports.iter().filter(|p| p.negotiated()) {
            p.send(line.clone());
        }
    }

    /// Number of connected clients that would receive an event now.
    pub fn listeners(&self) -> usize {
        lock(&self.ports)
            .iter()
            .filter(|p| p.is_open() && p.negotiated())
            .count()
    }

    pub(crate) fn subscribe(&self, port: Arc<ClientPort>) {
        lock(&self.ports).push(port);
    }

    pub(crate) fn unsubscribe(&self, id: u64) {
        lock(&self.ports).retain(|p| p.id != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::mpsc::channel;

    #[test]
    fn only_negotiated_clients_get_events() {
        let bus = EventBus::new();
        let (tx1, rx1) = channel();
        let (tx2, rx2) = channel();
        let p1 = Arc::new(ClientPort::new(1, tx1));
        let p2 = Arc::new(ClientPort::new(2, tx2));
        p1.set_negotiated();
        bus.subscribe(p1.clone());
        bus.subscribe(p2.clone());
        bus.emit("STOP", Value::Null);
        match rx1.try_recv() {
            Ok(Outgoing::Line(l)) => {
                assert!(l.starts_with("{\"timestamp\": {\"seconds\": "));
                assert!(l.ends_with(", \"event\": \"STOP\"}\r\n"));
            }
            _ => panic!("no event"),
        }
        assert!(rx2.try_recv().is_err());
        assert_eq!(bus.listeners(), 1);
        p1.close();
        bus.emit("STOP", Value::Null);
        assert_eq!(bus.listeners(), 0);
    }

    #[test]
    fn event_with_data() {
        let ts = Timestamp {
            seconds: 1,
            microseconds: 2,
        };
        let l = event_line(
            "SHUTDOWN",
            &json!({"guest": false, "reason": "host-qmp-quit"}),
            ts,
        );
        assert_eq!(
            l,
            "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"SHUTDOWN\", \
             \"data\": {\"guest\": false, \"reason\": \"host-qmp-quit\"}}\r\n"
        );
    }
}
