//! Device timers on a clock: a deadline list per clock, as QEMU's QEMUTimerList.
//!
//! A [`TimerQueue`] is either *manual* (the virtual clock under qtest: time moves only when
//! the test steps it, and every timer that falls due on the way fires in deadline order at its
//! own deadline) or *host* (the host's monotonic clock: a thread started with the first armed
//! timer sleeps until the earliest deadline and fires what is due).
//!
//! A device owns its [`Timer`]s; a timer calls back into the device through a weak reference,
//! so a machine that is torn down (its buses cleared) frees its devices and their timers.
//! Callbacks run without the queue's lock held: a device may re-arm its timer from them, and a
//! device may arm its timer while holding its own lock.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

pub const NANOSECONDS_PER_SECOND: i64 = 1_000_000_000;

/// A device with timers: `token` says which of its timers fired, `now` is the clock's time
/// (the timer's deadline under a manual clock).
pub trait TimerDevice: Send {
    fn timer_expired(&mut self, token: usize, now: i64);
}

type Callback = Arc<dyn Fn(i64) + Send + Sync>;

struct Entry {
    deadline: Option<i64>,
    callback: Callback,
}

enum Source {
    /// Virtual time in ns, moved only by [`TimerQueue::advance_to`].
    Manual(i64),
    /// The host's monotonic time since `start`, less the time spent stopped (QEMU's
    /// virtual clock does not run while the machine is stopped).
    Host {
        start: Instant,
        stopped_at: Option<Instant>,
        stopped_total: Duration,
    },
}

struct Inner {
    source: Source,
    timers: BTreeMap<u64, Entry>,
    next_id: u64,
    /// The host-clock thread exists.
    thread: bool,
}

/// One clock and the timers armed on it.
pub struct TimerQueue {
    inner: Mutex<Inner>,
    /// Wakes the host-clock thread when a deadline changes.
    changed: Condvar,
    /// Serialises firing (qtest steps and the host thread never fire at the same time).
    firing: Mutex<()>,
}

impl TimerQueue {
    /// A clock that only [`advance_to`](Self::advance_to) moves (qtest's virtual clock).
    pub fn manual() -> Arc<Self> {
        Self::with_source(Source::Manual(0))
    }

    /// The host's monotonic clock, from 0 now.
    pub fn host() -> Arc<Self> {
        Self::with_source(Source::Host {
            start: Instant::now(),
            stopped_at: None,
            stopped_total: Duration::ZERO,
        })
    }

    /// Host clock: stop or restart time (the machine stopped or runs again). A manual clock
    /// only moves when stepped, whatever the machine does.
    pub fn set_running(&self, running: bool) {
        let mut inner = self.lock();
        if let Source::Host {
            stopped_at,
            stopped_total,
            ..
        } = &mut inner.source
        {
            match (running, stopped_at.as_ref()) {
                (true, Some(at)) => {
                    *stopped_total += at.elapsed();
                    *stopped_at = None;
                }
                (false, None) => *stopped_at = Some(Instant::now()),
                _ => {}
            }
        }
        self.changed.notify_all();
    }

    fn with_source(source: Source) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                source,
                timers: BTreeMap::new(),
                next_id: 0,
                thread: false,
            }),
            changed: Condvar::new(),
            firing: Mutex::new(()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_locked(inner: &Inner) -> i64 {
        match &inner.source {
            Source::Manual(ns) => *ns,
            Source::Host {
                start,
                stopped_at,
                stopped_total,
            } => {
                let end = stopped_at.unwrap_or_else(Instant::now);
                let ran = end
                    .saturating_duration_since(*start)
                    .saturating_sub(*stopped_total);
                i64::try_from(ran.as_nanos()).unwrap_or(i64::MAX)
            }
        }
    }

    /// The clock's time in ns.
    pub fn now(&self) -> i64 {
        Self::now_locked(&self.lock())
    }

    pub fn is_manual(&self) -> bool {
        matches!(self.lock().source, Source::Manual(_))
    }

    /// The earliest armed deadline.
    pub fn next_deadline(&self) -> Option<i64> {
        self.lock().timers.values().filter_map(|e| e.deadline).min()
    }

    /// A timer that calls `device.timer_expired(token, now)`; it holds the device weakly.
    pub fn timer<D: TimerDevice + 'static>(
        self: &Arc<Self>,
        device: &Arc<Mutex<D>>,
        token: usize,
    ) -> Timer {
        let weak: Weak<Mutex<D>> = Arc::downgrade(device);
        self.timer_fn(Arc::new(move |now| {
            if let Some(dev) = weak.upgrade() {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .timer_expired(token, now);
            }
        }))
    }

    fn timer_fn(self: &Arc<Self>, callback: Callback) -> Timer {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.timers.insert(
            id,
            Entry {
                deadline: None,
                callback,
            },
        );
        Timer {
            queue: self.clone(),
            id,
        }
    }

    fn set_deadline(self: &Arc<Self>, id: u64, deadline: Option<i64>) {
        let start_thread = {
            let mut inner = self.lock();
            if let Some(e) = inner.timers.get_mut(&id) {
                e.deadline = deadline;
            }
            let start = deadline.is_some()
                && matches!(inner.source, Source::Host { .. })
                && !std::mem::replace(&mut inner.thread, true);
            self.changed.notify_all();
            start
        };
        if start_thread {
            let weak = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("timers".to_string())
                .spawn(move || host_thread(weak));
            if spawned.is_err() {
                // Without the thread, host timers fire on the next arm (a later attempt).
                self.lock().thread = false;
            }
        }
    }

    /// Take the earliest timer due at or before `limit`, disarmed, with its deadline.
    fn take_due(&self, limit: i64) -> Option<(i64, Callback)> {
        let mut inner = self.lock();
        let (id, deadline) = inner
            .timers
            .iter()
            .filter_map(|(id, e)| e.deadline.map(|d| (*id, d)))
            .filter(|&(_, d)| d <= limit)
            .min_by_key(|&(id, d)| (d, id))?;
        if let Source::Manual(ns) = &mut inner.source {
            *ns = (*ns).max(deadline);
        }
        let entry = inner.timers.get_mut(&id)?;
        entry.deadline = None;
        Some((deadline, entry.callback.clone()))
    }

    /// Manual clock: move time to `target` (never back), firing every timer due on the way
    /// at its deadline, in order. Returns the new time. A host clock only fires what is due.
    pub fn advance_to(&self, target: i64) -> i64 {
        let _firing = self.firing.lock().unwrap_or_else(|e| e.into_inner());
        let limit = {
            let inner = self.lock();
            match inner.source {
                Source::Manual(ns) => target.max(ns),
                Source::Host { .. } => Self::now_locked(&inner),
            }
        };
        // A timer that re-arms itself at or before its own deadline would loop for ever:
        // bound the work of one step.
        for _ in 0..10_000_000u32 {
            let Some((deadline, callback)) = self.take_due(limit) else {
                break;
            };
            callback(deadline);
        }
        let mut inner = self.lock();
        if let Source::Manual(ns) = &mut inner.source {
            *ns = (*ns).max(limit);
        }
        Self::now_locked(&inner)
    }
}

fn host_thread(queue: Weak<TimerQueue>) {
    loop {
        let Some(q) = queue.upgrade() else { return };
        q.advance_to(0);
        let inner = q.lock();
        let now = TimerQueue::now_locked(&inner);
        let wait = match inner.timers.values().filter_map(|e| e.deadline).min() {
            Some(d) if d <= now => continue,
            Some(d) => Duration::from_nanos((d - now) as u64).min(Duration::from_secs(1)),
            None => Duration::from_secs(1),
        };
        // Woken early by a changed deadline; the queue is re-checked at least every second
        // so that the thread ends once the queue is gone.
        let _ = q
            .changed
            .wait_timeout(inner, wait)
            .unwrap_or_else(|e| e.into_inner());
    }
}

/// One timer of a device. Dropping it removes it from its queue.
pub struct Timer {
    queue: Arc<TimerQueue>,
    id: u64,
}

impl Timer {
    /// Fire at `deadline` (clock ns); replaces any earlier deadline.
    pub fn arm(&self, deadline: i64) {
        self.queue.set_deadline(self.id, Some(deadline));
    }

    pub fn disarm(&self) {
        self.queue.set_deadline(self.id, None);
    }

    pub fn deadline(&self) -> Option<i64> {
        self.queue
            .lock()
            .timers
            .get(&self.id)
            .and_then(|e| e.deadline)
    }

    pub fn now(&self) -> i64 {
        self.queue.now()
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.queue.lock().timers.remove(&self.id);
    }
}

impl std::fmt::Debug for Timer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timer").field("id", &self.id).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rec {
        fired: Vec<(usize, i64)>,
        rearm: Option<Timer>,
    }

    impl TimerDevice for Rec {
        fn timer_expired(&mut self, token: usize, now: i64) {
            self.fired.push((token, now));
            if let Some(t) = &self.rearm {
                if self.fired.len() < 3 {
                    t.arm(now + 10);
                }
            }
        }
    }

    #[test]
    fn manual_clock_fires_in_deadline_order_at_each_deadline() {
        let q = TimerQueue::manual();
        let dev = Arc::new(Mutex::new(Rec {
            fired: vec![],
            rearm: None,
        }));
        let a = q.timer(&dev, 1);
        let b = q.timer(&dev, 2);
        a.arm(50);
        b.arm(20);
        assert_eq!(q.next_deadline(), Some(20));
        assert_eq!(q.advance_to(30), 30);
        assert_eq!(dev.lock().unwrap().fired, vec![(2, 20)]);
        assert_eq!(q.advance_to(100), 100);
        assert_eq!(dev.lock().unwrap().fired, vec![(2, 20), (1, 50)]);
        assert_eq!(q.next_deadline(), None);
        // Time never goes back.
        assert_eq!(q.advance_to(10), 100);
        b.arm(150);
        drop(b);
        assert_eq!(q.next_deadline(), None, "a dropped timer leaves the queue");
        drop(a);
    }

    #[test]
    fn a_timer_rearmed_from_its_callback_fires_again_within_one_step() {
        let q = TimerQueue::manual();
        let dev = Arc::new(Mutex::new(Rec {
            fired: vec![],
            rearm: None,
        }));
        let t = q.timer(&dev, 7);
        dev.lock().unwrap().rearm = Some(t);
        dev.lock().unwrap().rearm.as_ref().unwrap().arm(5);
        q.advance_to(100);
        assert_eq!(dev.lock().unwrap().fired, vec![(7, 5), (7, 15), (7, 25)]);
    }

    #[test]
    fn a_stopped_host_clock_does_not_advance() {
        let q = TimerQueue::host();
        q.set_running(false);
        let t0 = q.now();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(q.now(), t0);
        q.set_running(true);
        std::thread::sleep(Duration::from_millis(2));
        assert!(q.now() > t0);
    }

    #[test]
    fn host_clock_fires_on_its_thread() {
        let q = TimerQueue::host();
        let dev = Arc::new(Mutex::new(Rec {
            fired: vec![],
            rearm: None,
        }));
        let t = q.timer(&dev, 3);
        t.arm(q.now() + 1_000_000);
        // Hang guard only: the thread fires a millisecond from now.
        let end = Instant::now() + Duration::from_secs(30);
        while dev.lock().unwrap().fired.is_empty() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(dev.lock().unwrap().fired.len(), 1);
    }
}
