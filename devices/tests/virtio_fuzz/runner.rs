//! Configuration, reporting, watchdog: bounded random targets.

use crate::*;
use machina_tests::rng::splitmix64;

pub(crate) struct Config {
    pub(crate) seed: u64,
    pub(crate) secs: f64,
    pub(crate) max_iters: u64,
    pub(crate) only_iter: Option<u64>,
    pub(crate) trace: bool,
    pub(crate) hang_secs: u64,
}

pub(crate) fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    if let Some(hex) = v.strip_prefix("0x") {
        // Seeds are printed in hex.
        return u64::from_str_radix(hex, 16)
            .ok()
            .and_then(|n| n.to_string().parse().ok());
    }
    v.parse().ok()
}

pub(crate) fn config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Config {
            seed: env_num("MACHINA_FUZZ_SEED")
                .unwrap_or_else(|| splitmix64(clock ^ u64::from(std::process::id()))),
            secs: env_num("MACHINA_FUZZ_SECS").unwrap_or(5.0),
            max_iters: env_num("MACHINA_FUZZ_ITERS").unwrap_or(1_000_000),
            only_iter: env_num("MACHINA_FUZZ_ITER"),
            trace: std::env::var("MACHINA_FUZZ_TRACE").is_ok_and(|v| v != "0"),
            hang_secs: env_num("MACHINA_FUZZ_HANG_SECS").unwrap_or(60),
        }
    })
}

/// Written straight to stderr, past the test harness's capture, so the seed is visible
/// even if the process dies.
pub(crate) fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

thread_local! {
    pub(crate) static TRACE: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

macro_rules! trace {
    ($($t:tt)*) => {
        if $crate::runner::config().trace {
            $crate::runner::TRACE.with(|t| {
                let mut t = t.borrow_mut();
                if t.len() < 2000 {
                    t.push(format!($($t)*));
                }
            });
        }
    };
}

/// Prints how to reproduce when an iteration panics.
pub(crate) struct FailureReport {
    pub(crate) target: &'static str,
    pub(crate) seed: u64,
    pub(crate) iter: u64,
}

impl Drop for FailureReport {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        say(&format!(
            "fuzz target {} FAILED at iteration {} (base seed {:#x})\n  reproduce: \
             MACHINA_FUZZ_SEED={:#x} MACHINA_FUZZ_ITER={} MACHINA_FUZZ_TRACE=1 cargo test -p \
             devices --test virtio_fuzz {} -- --nocapture",
            self.target, self.iter, self.seed, self.seed, self.iter, self.target
        ));
        TRACE.with(|t| {
            for line in t.borrow().iter() {
                say(&format!("  | {line}"));
            }
        });
    }
}

pub(crate) struct Beat {
    pub(crate) target: &'static str,
    pub(crate) seed: u64,
    pub(crate) iter: u64,
    pub(crate) at: Instant,
}

pub(crate) fn heartbeats() -> &'static Mutex<Vec<Beat>> {
    static H: OnceLock<Mutex<Vec<Beat>>> = OnceLock::new();
    H.get_or_init(|| {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_millis(500));
            let h = heartbeats().lock().unwrap_or_else(|e| e.into_inner());
            for b in h.iter() {
                if b.at.elapsed() > Duration::from_secs(config().hang_secs) {
                    say(&format!(
                        "fuzz target {} HUNG in iteration {} (base seed {:#x}) for over {} s; \
                         reproduce: MACHINA_FUZZ_SEED={:#x} MACHINA_FUZZ_ITER={}",
                        b.target,
                        b.iter,
                        b.seed,
                        config().hang_secs,
                        b.seed,
                        b.iter
                    ));
                    std::process::abort();
                }
            }
        });
        Mutex::new(Vec::new())
    })
}

pub(crate) fn beat(target: &'static str, seed: u64, iter: Option<u64>) {
    let mut h = heartbeats().lock().unwrap_or_else(|e| e.into_inner());
    h.retain(|b| b.target != target);
    if let Some(iter) = iter {
        h.push(Beat {
            target,
            seed,
            iter,
            at: Instant::now(),
        });
    }
}

#[derive(Default, Debug)]
pub(crate) struct Stats {
    pub(crate) rounds: u64,
    /// Requests the device completed, by status byte (blk) or at all.
    pub(crate) completed: u64,
    pub(crate) st_ok: u64,
    pub(crate) st_ioerr: u64,
    pub(crate) st_unsupp: u64,
    /// Rounds that ended with the device stopped (NEEDS_RESET).
    pub(crate) device_errors: u64,
    /// Rounds where a descriptor or ring legitimately pointed at a guest canary.
    pub(crate) canary_targeted: u64,
    /// Rounds of well-formed requests checked against the model, and their requests.
    pub(crate) clean_rounds: u64,
    pub(crate) clean_checked: u64,
    pub(crate) legacy_bringups: u64,
}

/// Run `iteration` with per-iteration seeds derived from the base seed until the time or
/// iteration budget is spent.
pub(crate) fn run_target(
    target: &'static str,
    mut iteration: impl FnMut(&mut XorShift, &mut Stats),
) {
    let cfg = config();
    let start = Instant::now();
    let budget = Duration::from_secs_f64(cfg.secs);
    let mut stats = Stats::default();
    say(&format!(
        "fuzz {target}: base seed {:#x} (MACHINA_FUZZ_SEED), up to {} s / {} iterations",
        cfg.seed, cfg.secs, cfg.max_iters
    ));
    let iters: Box<dyn Iterator<Item = u64>> = match cfg.only_iter {
        Some(i) => Box::new(std::iter::once(i)),
        None => Box::new(0..cfg.max_iters),
    };
    let mut done = 0u64;
    for i in iters {
        if cfg.only_iter.is_none() && start.elapsed() >= budget {
            break;
        }
        TRACE.with(|t| t.borrow_mut().clear());
        beat(target, cfg.seed, Some(i));
        let report = FailureReport {
            target,
            seed: cfg.seed,
            iter: i,
        };
        let mut rng = XorShift::new(cfg.seed ^ splitmix64(i.wrapping_add(0x5eed)));
        iteration(&mut rng, &mut stats);
        drop(report);
        done += 1;
    }
    beat(target, cfg.seed, None);
    say(&format!(
        "fuzz {target}: {done} iterations in {:.1} s (base seed {:#x}): {stats:?}",
        start.elapsed().as_secs_f64(),
        cfg.seed
    ));
}
