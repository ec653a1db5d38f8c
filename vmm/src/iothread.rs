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
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Cleared when the thread's loop ends, however it ends (a device that panicked unwinds
/// it): nobody then waits for an answer that cannot come.
struct Alive(Arc<AtomicBool>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// One running I/O thread.
pub struct IoThread {
    pub spec: IoThreadSpec,
    /// Host thread id (gettid), what `query-iothreads` reports as `thread-id`.
    pub tid: i32,
    ops: Arc<Mutex<VecDeque<Op>>>,
    wake: Arc<EventFd>,
    alive: Arc<AtomicBool>,
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
        let alive = Arc::new(AtomicBool::new(true));
        let guard = Alive(alive.clone());
        let handle = std::thread::Builder::new()
            // QEMU's name (the kernel keeps the first 15 bytes).
            .name(format!("IO {}", spec.id))
            .spawn(move || {
                let _guard = guard;
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
            alive,
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
        let ids = wait(&rx, &self.alive).unwrap_or_default();
        Attached {
            ops: self.ops.clone(),
            wake: self.wake.clone(),
            alive: self.alive.clone(),
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

/// The thread's answer, unless the thread is gone (or, busy in a backend, does not answer
/// within `DETACH_WAIT`).
fn wait<T>(rx: &mpsc::Receiver<T>, alive: &AtomicBool) -> Option<T> {
    let deadline = std::time::Instant::now() + DETACH_WAIT;
    while std::time::Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(v) => return Some(v),
            Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            Err(mpsc::RecvTimeoutError::Timeout) if !alive.load(Ordering::SeqCst) => return None,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    None
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
    alive: Arc<AtomicBool>,
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
        if wait(&rx, &self.alive).is_none() && self.alive.load(Ordering::SeqCst) {
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

    /// Forget the thread of `id` (`object-del`); it stops once no device holds it (as QEMU's
    /// object goes with its last reference). False if there is none.
    pub fn remove(&self, id: &str) -> bool {
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        let before = threads.len();
        threads.retain(|t| t.spec.id != id);
        threads.len() != before
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the name of the thread it ran on each time its eventfd fires.
    struct Probe {
        fd: EventFd,
        ran_on: Arc<Mutex<Vec<String>>>,
    }

    impl MutEventSubscriber for Probe {
        fn init(&mut self, ops: &mut EventOps) {
            let _ = ops.add(Events::new(&self.fd, EventSet::IN));
        }
        fn process(&mut self, _events: Events, _ops: &mut EventOps) {
            let _ = self.fd.read();
            let name = std::thread::current().name().unwrap_or("").to_string();
            self.ran_on.lock().unwrap().push(name);
        }
    }

    fn spec(id: &str) -> IoThreadSpec {
        IoThreadSpec {
            id: id.into(),
            poll_max_ns: 0,
            poll_grow: 0,
            poll_shrink: 0,
            aio_max_batch: 0,
            thread_pool_min: 0,
            thread_pool_max: 64,
        }
    }

    #[test]
    fn devices_run_on_the_named_thread_until_detached() {
        let threads = IoThreads::default();
        threads.add(spec("t1")).unwrap();
        assert!(matches!(
            threads.add(spec("t1")),
            Err(IoThreadError::Duplicate(_))
        ));
        let t1 = threads.get("t1").unwrap();
        let tid = t1.tid;
        assert!(
            std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                .unwrap()
                .starts_with("IO t1"),
            "the TID is the named thread"
        );
        let ran_on = Arc::new(Mutex::new(Vec::new()));
        let probes: Vec<Arc<Mutex<Probe>>> = (0..2)
            .map(|_| {
                Arc::new(Mutex::new(Probe {
                    fd: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                    ran_on: ran_on.clone(),
                }))
            })
            .collect();
        let attached = t1.attach(probes.iter().map(|p| p.clone() as Subscriber).collect());
        for p in &probes {
            p.lock().unwrap().fd.write(1).unwrap();
        }
        while ran_on.lock().unwrap().len() < 2 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(*ran_on.lock().unwrap(), vec!["IO t1", "IO t1"]);
        // Detaching drops the thread's references: only ours are left.
        drop(attached);
        for p in &probes {
            assert_eq!(Arc::strong_count(p), 1);
        }
        assert_eq!(threads.list().len(), 1);
        // The last reference gone, the thread is stopped and joined.
        drop(t1);
        threads.clear();
        assert!(std::fs::metadata(format!("/proc/self/task/{tid}")).is_err());
    }

    #[test]
    fn references_use_qemus_texts() {
        let known = |id: &str| id == "io1";
        let other = |id: &str| id == "sec0";
        assert_eq!(check_reference("io1", known, other), Ok(()));
        assert_eq!(
            check_reference("sec0", known, other)
                .unwrap_err()
                .to_string(),
            "Invalid parameter type for 'iothread', expected: iothread"
        );
        assert_eq!(
            check_reference("nope", known, other)
                .unwrap_err()
                .to_string(),
            "Device 'nope' not found"
        );
    }
}
