//! QEMU's I/O threads: `-object iothread,id=ID` (or `object-add`) starts one long-lived
//! thread, named `IO ID` as QEMU names it, with its own epoll loop; the virtio devices that
//! name it (`iothread=ID`, what libvirt's `<iothreads>` and `<driver iothread='N'>` become)
//! run their queues and backends on that loop, several devices sharing one thread, while a
//! device without one keeps a thread of its own. The thread outlives machine resets (each
//! incarnation's devices are attached at the build and detached at teardown), so its host
//! thread id stays what `query-iothreads` first reported, as in QEMU.

use crate::objects::IoThreadSpec;
use event_manager::{
    EventManager, EventOps, Events, MutEventSubscriber, SubscriberId, SubscriberOps,
};
use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// How long a teardown waits for an I/O thread to let go of a device busy in its backend (a
/// hung network file system): past it the device is left to finish on its own.
const DETACH_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum IoThreadError {
    #[error("cannot start I/O thread '{id}': {source}")]
    Start {
        id: String,
        #[source]
        source: std::io::Error,
    },
    /// QEMU's text for a second object with the same id.
    #[error("attempt to add duplicate property '{0}' to object (type 'container')")]
    Duplicate(String),
}

/// What the thread is asked to do, between two rounds of its loop.
enum Op {
    Attach(Vec<Subscriber>, mpsc::Sender<Vec<SubscriberId>>),
    Detach(Vec<SubscriberId>, mpsc::Sender<()>),
    Stop,
}

/// Wakes the loop so that it takes its queued operations.
struct Wake(Arc<EventFd>);

impl MutEventSubscriber for Wake {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.0.as_ref(), EventSet::IN));
    }
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.read();
    }
}

/// One running I/O thread.
pub struct IoThread {
    pub spec: IoThreadSpec,
    /// Host thread id (gettid), what `query-iothreads` reports as `thread-id`.
    pub tid: i32,
    ops: Arc<Mutex<VecDeque<Op>>>,
    wake: Arc<EventFd>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl IoThread {
    fn start(spec: IoThreadSpec) -> Result<IoThread, IoThreadError> {
        let err = |source| IoThreadError::Start {
            id: spec.id.clone(),
            source,
        };
        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(err)?);
        let ops: Arc<Mutex<VecDeque<Op>>> = Arc::default();
        let mut events: EventManager<Subscriber> =
            EventManager::new().map_err(|e| err(std::io::Error::other(format!("{e:?}"))))?;
        events.add_subscriber(Arc::new(Mutex::new(Wake(wake.clone()))));
        let (tid_tx, tid_rx) = mpsc::channel();
        let queue = ops.clone();
        let handle = std::thread::Builder::new()
            // QEMU's name (the kernel keeps the first 15 bytes).
            .name(format!("IO {}", spec.id))
            .spawn(move || {
                // SAFETY: gettid takes no arguments and cannot fail.
                let _ = tid_tx.send(unsafe { libc::syscall(libc::SYS_gettid) } as i32);
                run(events, &queue)
            })
            .map_err(err)?;
        let tid = tid_rx.recv().unwrap_or(0);
        Ok(IoThread {
            spec,
            tid,
            ops,
            wake,
            handle: Mutex::new(Some(handle)),
        })
    }

    fn send(&self, op: Op) {
        self.ops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(op);
        let _ = self.wake.write(1);
    }

    /// Run `subscribers` (a device's queues and backend) on this thread's loop until
    /// `detach`.
    pub fn attach(&self, subscribers: Vec<Subscriber>) -> Attached {
        let (tx, rx) = mpsc::channel();
        self.send(Op::Attach(subscribers, tx));
        let ids = rx.recv_timeout(DETACH_WAIT).unwrap_or_default();
        Attached {
            ops: self.ops.clone(),
            wake: self.wake.clone(),
            ids,
        }
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.send(Op::Stop);
        let handle = self.handle.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let deadline = std::time::Instant::now() + DETACH_WAIT;
            while !handle.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
    }
}

/// The thread's loop: dispatch events, then apply what was queued.
fn run(mut events: EventManager<Subscriber>, ops: &Mutex<VecDeque<Op>>) {
    loop {
        if events.run().is_err() {
            return;
        }
        let pending: Vec<Op> = ops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for op in pending {
            match op {
                Op::Attach(subscribers, reply) => {
                    let ids = subscribers
                        .into_iter()
                        .map(|s| events.add_subscriber(s))
                        .collect();
                    let _ = reply.send(ids);
                }
                Op::Detach(ids, reply) => {
                    for id in ids {
                        // Dropping the subscriber here frees the device's side.
                        let _ = events.remove_subscriber(id);
                    }
                    let _ = reply.send(());
                }
                Op::Stop => return,
            }
        }
    }
}

/// Devices of one machine incarnation attached to an I/O thread; detached (and dropped on
/// that thread) when this is dropped, at teardown.
pub struct Attached {
    ops: Arc<Mutex<VecDeque<Op>>>,
    wake: Arc<EventFd>,
    ids: Vec<SubscriberId>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        let (tx, rx) = mpsc::channel();
        self.ops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(Op::Detach(std::mem::take(&mut self.ids), tx));
        let _ = self.wake.write(1);
        // A device busy in its backend is let go after its current request; one stuck there
        // must not hang a reset or the exit.
        if rx.recv_timeout(DETACH_WAIT).is_err() {
            eprintln!("machina: an I/O thread does not let go of a device (blocked in its backend); left behind");
        }
    }
}

/// Every I/O thread of the process, in creation order.
#[derive(Default)]
pub struct IoThreads {
    threads: Mutex<Vec<Arc<IoThread>>>,
}

impl IoThreads {
    /// Start the thread of `spec`.
    pub fn add(&self, spec: IoThreadSpec) -> Result<(), IoThreadError> {
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        if threads.iter().any(|t| t.spec.id == spec.id) {
            return Err(IoThreadError::Duplicate(spec.id));
        }
        threads.push(Arc::new(IoThread::start(spec)?));
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<Arc<IoThread>> {
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|t| t.spec.id == id)
            .cloned()
    }

    pub fn list(&self) -> Vec<Arc<IoThread>> {
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stop and join every thread (process exit).
    pub fn clear(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        drop(threads);
    }
}

/// Why a device's `iothread=ID` names no I/O thread (QEMU's link property texts).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("Device '{0}' not found")]
    NotFound(String),
    #[error("Invalid parameter type for 'iothread', expected: iothread")]
    NotAnIoThread,
}

/// Check a device's `iothread=ID` against the I/O threads (`known`) and the other objects'
/// ids (`others`).
pub fn check_reference(
    id: &str,
    known: impl Fn(&str) -> bool,
    others: impl Fn(&str) -> bool,
) -> Result<(), ReferenceError> {
    if known(id) {
        Ok(())
    } else if others(id) {
        Err(ReferenceError::NotAnIoThread)
    } else {
        Err(ReferenceError::NotFound(id.to_string()))
    }
}
