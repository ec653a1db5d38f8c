//! virtio-balloon (type 5), as QEMU's hw/virtio/virtio-balloon.c at its defaults: the
//! inflate and deflate queues (4 KiB guest page frames: an inflated page's host memory is
//! given back with MADV_DONTNEED, a deflated one hinted back with MADV_WILLNEED; frames
//! outside guest RAM are skipped), the stats queue (the driver's buffer is kept and handed
//! back every `guest-stats-polling-interval` seconds), and the config space (`num_pages`
//! the host asks for, `actual` the guest reports, `poison_val`). Features: STATS_VQ always,
//! DEFLATE_ON_OOM and PAGE_POISON as their properties say; free-page hinting and reporting
//! (off by default) are not modelled and refused when asked for.
//!
//! [`BalloonControl`] is the host's side, shared by every build of the machine: the target
//! (QMP `balloon`), what the guest reports (`query-balloon`, BALLOON_CHANGE) and the stats.

use super::device::VirtioDevice;
use super::device::{bad_queue, check_chain, read_config_bytes, DeviceError, QueueContext};
use super::interrupt::VirtioInterrupt;
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::timerfd::TimerFd;

pub const DEVICE_TYPE: u16 = 5;

pub const F_STATS_VQ: u64 = 1 << 1;
pub const F_DEFLATE_ON_OOM: u64 = 1 << 2;
pub const F_PAGE_POISON: u64 = 1 << 4;

const QUEUE_SIZE: u16 = 128;
const INFLATE: usize = 0;
const DEFLATE: usize = 1;
const STATS: usize = 2;

/// Balloon pages are 4 KiB whatever the host's page size (VIRTIO_BALLOON_PFN_SHIFT).
const PFN_SHIFT: u32 = 12;
const PAGE: u64 = 1 << PFN_SHIFT;

/// Token of the stats timer among the device's event sources.
const STATS_TIMER: u32 = 0;

/// QEMU's names of the guest's statistics, by tag (VIRTIO_BALLOON_S_*), as `guest-stats`
/// shows them.
pub const STAT_NAMES: [&str; 16] = [
    "stat-swap-in",
    "stat-swap-out",
    "stat-major-faults",
    "stat-minor-faults",
    "stat-free-memory",
    "stat-total-memory",
    "stat-available-memory",
    "stat-disk-caches",
    "stat-htlb-pgalloc",
    "stat-htlb-pgfail",
    "stat-oom-kills",
    "stat-alloc-stalls",
    "stat-async-scans",
    "stat-direct-scans",
    "stat-async-reclaims",
    "stat-direct-reclaims",
];

/// Errors of the host's side (QEMU's texts).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BalloonError {
    #[error("timer value must be greater than zero")]
    NegativeInterval,
    #[error("timer value is too big")]
    IntervalTooBig,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct State {
    /// Guest RAM in bytes (QEMU's get_current_ram_size), set by the build.
    ram_size: u64,
    /// Pages the host wants in the balloon.
    num_pages: u32,
    /// Pages the guest says are in it.
    actual: u32,
    /// Each statistic, u64::MAX where the guest gave none.
    stats: [u64; 16],
    /// When the guest last reported (seconds since the epoch; 0 never).
    last_update: i64,
    /// Seconds between stats requests (0: none).
    poll_interval: i64,
}

/// The host's side of the balloon, shared by every build (QEMU keeps the target and the
/// stats across a reset too).
pub struct BalloonControl {
    state: Mutex<State>,
    /// Fires when the guest's stats buffer is to be handed back.
    timer: Mutex<TimerFd>,
    irq: Mutex<Weak<VirtioInterrupt>>,
    /// Called with the new `actual` in bytes when the guest changes it (BALLOON_CHANGE).
    on_change: Mutex<Option<ChangeSink>>,
}

/// Where BALLOON_CHANGE goes (the new `actual` in bytes).
pub type ChangeSink = Box<dyn Fn(u64) + Send>;

impl BalloonControl {
    pub fn new() -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(BalloonControl {
            state: Mutex::new(State {
                ram_size: 0,
                num_pages: 0,
                actual: 0,
                stats: [u64::MAX; 16],
                last_update: 0,
                poll_interval: 0,
            }),
            timer: Mutex::new(TimerFd::new()?),
            irq: Mutex::new(Weak::new()),
            on_change: Mutex::new(None),
        }))
    }

    /// Where BALLOON_CHANGE goes: called with the balloon's new `actual` in bytes.
    pub fn set_change_sink(&self, sink: ChangeSink) {
        *lock(&self.on_change) = Some(sink);
    }

    /// The build's device signals config changes on `irq`.
    pub(crate) fn attach(&self, irq: &Arc<VirtioInterrupt>) {
        *lock(&self.irq) = Arc::downgrade(irq);
    }

    /// QMP `balloon`: ask the guest to leave it `target` bytes (QEMU's
    /// virtio_balloon_to_target: capped at the RAM size, 0 ignored), with a config interrupt.
    pub fn to_target(&self, target: u64) {
        {
            let mut s = lock(&self.state);
            let target = target.min(s.ram_size);
            if target == 0 {
                return;
            }
            s.num_pages = ((s.ram_size - target) >> PFN_SHIFT) as u32;
        }
        if let Some(irq) = lock(&self.irq).upgrade() {
            irq.signal_config();
        }
    }

    /// `query-balloon`'s `actual`: the RAM the guest has outside the balloon, in bytes.
    pub fn actual_bytes(&self) -> u64 {
        let s = lock(&self.state);
        s.ram_size.saturating_sub(u64::from(s.actual) << PFN_SHIFT)
    }

    /// Pages the host asked for (`num_pages`).
    pub fn target_pages(&self) -> u32 {
        lock(&self.state).num_pages
    }

    /// `guest-stats`: when the guest last reported, and each statistic by name.
    pub fn stats(&self) -> (i64, Vec<(&'static str, u64)>) {
        let s = lock(&self.state);
        let named = STAT_NAMES.iter().copied().zip(s.stats).collect();
        (s.last_update, named)
    }

    pub fn poll_interval(&self) -> i64 {
        lock(&self.state).poll_interval
    }

    /// `guest-stats-polling-interval` (QEMU's balloon_stats_set_poll_interval): 0 stops
    /// polling; a new interval asks the guest at once, a changed one from now on.
    pub fn set_poll_interval(&self, secs: i64) -> Result<(), BalloonError> {
        if secs < 0 {
            return Err(BalloonError::NegativeInterval);
        }
        if secs > i64::from(u32::MAX) {
            return Err(BalloonError::IntervalTooBig);
        }
        let mut s = lock(&self.state);
        if secs == s.poll_interval {
            return Ok(());
        }
        let was = s.poll_interval;
        s.poll_interval = secs;
        drop(s);
        let delay = if secs == 0 {
            Duration::ZERO
        } else if was == 0 {
            // A zero duration disarms a timerfd: "now" is the shortest non-zero one.
            Duration::from_nanos(1)
        } else {
            Duration::from_secs(secs as u64)
        };
        self.arm(delay);
        Ok(())
    }

    fn arm(&self, delay: Duration) {
        if let Err(e) = lock(&self.timer).reset(delay, None) {
            log::error!("virtio-balloon: cannot arm the stats timer: {e}");
        }
    }

    /// The guest changed `actual`: QEMU's BALLOON_CHANGE carries the RAM left to it.
    fn set_actual(&self, actual: u32) {
        let mut s = lock(&self.state);
        if s.actual == actual {
            return;
        }
        s.actual = actual;
        let bytes = s.ram_size.saturating_sub(u64::from(actual) << PFN_SHIFT);
        drop(s);
        if let Some(sink) = lock(&self.on_change).as_ref() {
            sink(bytes);
        }
    }

    fn record_stats(&self, stats: [u64; 16]) {
        let mut s = lock(&self.state);
        s.stats = stats;
        s.last_update = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let interval = s.poll_interval;
        drop(s);
        if interval > 0 {
            self.arm(Duration::from_secs(interval as u64));
        }
    }
}

/// The device model of one build.
pub struct Balloon {
    name: String,
    control: Arc<BalloonControl>,
    features: u64,
    acked: u64,
    /// The config bytes the driver may write (`actual`, `poison_val`).
    config: [u8; 16],
    config_len: usize,
    /// The driver's stats buffer, kept until the next request (its head).
    stats_elem: Option<u16>,
    timer_fd: RawFd,
}

impl Balloon {
    /// A balloon with QEMU's property values: `deflate_on_oom`, `page_poison`.
    pub fn new(
        control: Arc<BalloonControl>,
        mem: &GuestMemoryMmap,
        deflate_on_oom: bool,
        page_poison: bool,
        qemu_4_0_config_size: bool,
    ) -> Self {
        lock(&control.state).ram_size = mem.iter().map(|r| r.len()).sum();
        let mut features = F_STATS_VQ;
        if deflate_on_oom {
            features |= F_DEFLATE_ON_OOM;
        }
        if page_poison {
            features |= F_PAGE_POISON;
        }
        // QEMU's virtio_balloon_config_size (free-page hinting is never offered here).
        let config_len = if qemu_4_0_config_size || page_poison {
            16
        } else {
            8
        };
        let timer_fd = lock(&control.timer).as_raw_fd();
        Balloon {
            name: String::new(),
            control,
            features,
            acked: 0,
            config: [0; 16],
            config_len,
            stats_elem: None,
            timer_fd,
        }
    }

    /// Inflate or deflate the pages a chain lists.
    fn pages(&self, mem: &GuestMemoryMmap, frames: &[u8], inflate: bool) {
        for pfn in frames.chunks_exact(4) {
            let pfn = u32::from_le_bytes([pfn[0], pfn[1], pfn[2], pfn[3]]);
            let gpa = GuestAddress(u64::from(pfn) << PFN_SHIFT);
            // The whole page must be guest RAM (QEMU skips anything else).
            let host = match mem.get_slice(gpa, PAGE as usize) {
                Ok(s) if s.len() == PAGE as usize => s.ptr_guard_mut().as_ptr(),
                _ => {
                    crate::guest_error!(
                        "{}: balloon page frame {pfn:#x} is not guest RAM: skipped",
                        self.name
                    );
                    continue;
                }
            };
            let advice = if inflate {
                libc::MADV_DONTNEED
            } else {
                libc::MADV_WILLNEED
            };
            // SAFETY: `host` is the start of one page inside a guest RAM mapping this
            // process owns (checked above); the advice only drops or prefaults its contents,
            // which the guest has handed over (inflate) or takes back (deflate).
            let r = unsafe { libc::madvise(host.cast(), PAGE as usize, advice) };
            if r != 0 {
                log::warn!(
                    "{}: madvise on a balloon page failed: {}",
                    self.name,
                    std::io::Error::last_os_error()
                );
            }
        }
    }

    fn inflate_deflate(&mut self, idx: usize, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        let mut lists = Vec::new();
        let used = ctx.drain_queue(idx, |mem, chain| {
            let mut frames = Vec::new();
            if let Ok(mut r) = chain.reader(mem) {
                // At most a queue's worth of frames per buffer: 256 KiB of PFNs is already
                // 256 Mi pages, far beyond any guest.
                let _ = r.by_ref().take(1 << 18).read_to_end(&mut frames);
            }
            lists.push(frames);
            Ok(0)
        })?;
        for frames in &lists {
            self.pages(ctx.mem, frames, idx == INFLATE);
        }
        if used == Some(true) {
            ctx.notify(idx);
        }
        Ok(())
    }

    /// A stats buffer from the driver: keep it, record what it says.
    fn receive_stats(&mut self, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        let mem = ctx.mem;
        let Some(q) = ctx.ready_queue(STATS) else {
            return Ok(());
        };
        let mut returned = false;
        while let Some(chain) = q.iter(mem).map_err(|e| bad_queue(STATS, e))?.next() {
            check_chain(STATS, &chain)?;
            // A driver that follows the spec has one buffer out at a time (QEMU hands back
            // the previous one).
            if let Some(old) = self.stats_elem.take() {
                q.add_used(mem, old, 0).map_err(|e| bad_queue(STATS, e))?;
                returned = true;
            }
            let head = chain.head_index();
            let mut stats = [u64::MAX; 16];
            if let Ok(mut r) = chain.reader(mem) {
                let mut entry = [0u8; 10];
                while r.read_exact(&mut entry).is_ok() {
                    let tag = u16::from_le_bytes([entry[0], entry[1]]) as usize;
                    let mut val = [0u8; 8];
                    val.copy_from_slice(&entry[2..10]);
                    if let Some(s) = stats.get_mut(tag) {
                        *s = u64::from_le_bytes(val);
                    }
                }
            }
            self.stats_elem = Some(head);
            self.control.record_stats(stats);
        }
        if returned {
            ctx.notify(STATS);
        }
        Ok(())
    }

    /// The stats timer fired: hand the buffer back so the guest refills it.
    fn request_stats(&mut self, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        let mut buf = [0u8; 8];
        // SAFETY: reads 8 bytes (the expiry count) into a buffer of 8 from the timerfd we
        // own; non-blocking use is fine because the worker only calls this when it polled
        // readable.
        let _ = unsafe { libc::read(self.timer_fd, buf.as_mut_ptr().cast(), 8) };
        let interval = self.control.poll_interval();
        if interval == 0 {
            return Ok(());
        }
        let mem = ctx.mem;
        match (self.stats_elem.take(), ctx.ready_queue(STATS)) {
            (Some(head), Some(q)) => {
                q.add_used(mem, head, 0).map_err(|e| bad_queue(STATS, e))?;
                ctx.notify(STATS);
            }
            (elem, _) => {
                // Nothing to hand back yet: ask again later (QEMU re-schedules).
                self.stats_elem = elem;
                self.control.arm(Duration::from_secs(interval as u64));
            }
        }
        Ok(())
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn config_len(&self) -> usize {
        self.config_len
    }

    fn set_name(&mut self, name: &str) {
        self.name = name.to_string();
    }

    fn read_config(&self, offset: usize, data: &mut [u8]) {
        let mut config = self.config;
        config[0..4].copy_from_slice(&self.control.target_pages().to_le_bytes());
        read_config_bytes(&config[..self.config_len], offset, data);
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        // num_pages (bytes 0-3) is the host's; the driver writes `actual` and `poison_val`.
        for (i, b) in data.iter().enumerate() {
            let at = offset + i;
            if (4..self.config_len).contains(&at) {
                self.config[at] = *b;
            }
        }
        let actual = u32::from_le_bytes([
            self.config[4],
            self.config[5],
            self.config[6],
            self.config[7],
        ]);
        self.control.set_actual(actual);
        if self.acked & F_PAGE_POISON == 0 {
            self.config[12..16].fill(0);
        }
    }

    fn activate(&mut self, features: u64) {
        self.acked = features;
    }

    fn reset(&mut self) {
        // The queues go with the reset, and the buffer with them; poison_val is cleared as
        // QEMU's reset does.
        self.stats_elem = None;
        self.config[12..16].fill(0);
    }

    fn process_queue(&mut self, idx: usize, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        match idx {
            INFLATE | DEFLATE => self.inflate_deflate(idx, ctx),
            STATS => self.receive_stats(ctx),
            _ => Ok(()),
        }
    }

    fn event_sources(&self) -> Vec<(RawFd, u32)> {
        vec![(self.timer_fd, STATS_TIMER)]
    }

    fn process_event(&mut self, token: u32, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        match token {
            STATS_TIMER => self.request_stats(ctx),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_interval_checks_are_qemus() {
        let c = BalloonControl::new().unwrap();
        assert_eq!(c.set_poll_interval(-1), Err(BalloonError::NegativeInterval));
        assert_eq!(
            c.set_poll_interval(i64::from(u32::MAX) + 1),
            Err(BalloonError::IntervalTooBig)
        );
        assert_eq!(
            BalloonError::NegativeInterval.to_string(),
            "timer value must be greater than zero"
        );
        c.set_poll_interval(5).unwrap();
        assert_eq!(c.poll_interval(), 5);
        c.set_poll_interval(0).unwrap();
        assert_eq!(c.poll_interval(), 0);
    }

    #[test]
    fn target_and_actual_are_in_bytes_of_ram() {
        let c = BalloonControl::new().unwrap();
        lock(&c.state).ram_size = 128 << 20;
        let changes = Arc::new(Mutex::new(Vec::new()));
        let seen = changes.clone();
        c.set_change_sink(Box::new(move |b| seen.lock().unwrap().push(b)));
        c.to_target(96 << 20);
        assert_eq!(c.target_pages(), (32 << 20) >> 12);
        // Beyond the RAM: capped (no pages asked); 0: ignored.
        c.to_target(1 << 40);
        assert_eq!(c.target_pages(), 0);
        c.to_target(96 << 20);
        c.to_target(0);
        assert_eq!(c.target_pages(), (32 << 20) >> 12);
        c.set_actual(8192);
        c.set_actual(8192);
        assert_eq!(c.actual_bytes(), 96 << 20);
        assert_eq!(*changes.lock().unwrap(), vec![96 << 20]);
    }
}
