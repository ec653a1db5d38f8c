//! What the guest-driven benchmarks (guest_blk, guest_net) share: the binaries they run,
//! the host's TSC rate that turns the guest's tick counts into seconds, and the median.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The machina binary under test (`MACHINA_BIN`, or this build's).
pub fn machina() -> PathBuf {
    std::env::var_os("MACHINA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_machina")))
}

/// The guest ELF that vmm/build.rs built (QEMU boots it by PVH with -kernel).
pub fn guest() -> PathBuf {
    std::env::var_os("MACHINA_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/guest/release/machina-guest")
        })
}

/// The host's TSC rate, measured against the wall clock.
pub fn tsc_hz() -> f64 {
    // SAFETY: rdtsc has no memory effects.
    let t0 = unsafe { core::arch::x86_64::_rdtsc() };
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: as above.
    let t1 = unsafe { core::arch::x86_64::_rdtsc() };
    (t1 - t0) as f64 / w0.elapsed().as_secs_f64()
}

/// How the bench runs: a measurement under `cargo bench` (`--bench`: `MACHINA_BENCH_RUNS`
/// runs, default `default_runs`, of `MACHINA_BENCH_MS` per case, default 500) or a quick
/// smoke run otherwise (1 run of 20 ms). Returns (measuring, runs, ms).
pub fn run_length(default_runs: usize) -> (bool, usize, u64) {
    let runs: usize = std::env::var("MACHINA_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_runs);
    let ms: u64 = std::env::var("MACHINA_BENCH_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let full = std::env::args().any(|a| a == "--bench");
    if full {
        (true, runs, ms)
    } else {
        (false, 1, 20)
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// "QEMU x.y.z" of the `qemu-system-x86_64` on PATH, None without one.
pub fn qemu_version() -> Option<String> {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .and_then(|l| l.split("version ").nth(1))
                .and_then(|v| v.split_whitespace().next())
                .map(|v| format!("QEMU {v}"))
        })
}
