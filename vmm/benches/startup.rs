//! Start-up benchmark of the real binary against Debian's QEMU 7.2, side by side in one run
//! (runs alternate between the two, so both see the same host load):
//! * process start -> QMP greeting, and the VMM's VmRSS when the greeting arrives;
//! * process start -> the answer to the first command (`qmp_capabilities`: both serve
//!   commands only once the machine exists), and VmRSS then;
//!   both with `-machine q35 -accel kvm -nodefaults -display none -S -qmp unix:...`;
//! * machina only: process start -> the guest's first instruction on q35 (the bundled tiny
//!   guest's first instruction writes port 0x80; under MACHINA_TRACE machina reports vCPU 0's
//!   first exit with its CLOCK_MONOTONIC time, read here before the spawn), and process
//!   start -> first KVM_RUN.
//!
//! All figures are medians of N runs. `cargo bench -p vmm --bench startup`
//! (MACHINA_BENCH_RUNS=N, default 30; MACHINA_BENCH_BIN=PATH to time another machina binary;
//! MACHINA_BENCH_QEMU=PATH for another QEMU, default /usr/bin/qemu-system-x86_64). Under
//! `cargo test --benches` (no `--bench`) every measurement runs once, as a smoke test.
//!
//! On the shared nested test host the greeting median drifts by ±0.5 ms from one minute to
//! the next whatever is measured; this bench and `qmp_times` (`-M q35 -S`) read within
//! 0.1–0.3 ms of each other when run interleaved. Compare two builds only with runs
//! interleaved in one session (MACHINA_BENCH_BIN), several times over.

use machina_tests::process::rss_kib;
use machina_tests::TempDir;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);

fn machina() -> PathBuf {
    std::env::var_os("MACHINA_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_machina")))
}

fn qemu() -> PathBuf {
    std::env::var_os("MACHINA_BENCH_QEMU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/qemu-system-x86_64"))
}

/// A child killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An inotify watch for files created in a directory.
struct Watch(std::os::fd::OwnedFd);

impl Watch {
    fn new(dir: &Path) -> Option<Watch> {
        use std::os::fd::FromRawFd;
        use std::os::unix::ffi::OsStrExt;
        let cdir = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: inotify_init1 takes no pointers.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let watch = Watch(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        // SAFETY: `cdir` is a valid NUL-terminated path for the call.
        let wd = unsafe { libc::inotify_add_watch(fd, cdir.as_ptr(), libc::IN_CREATE) };
        (wd >= 0).then_some(watch)
    }

    /// Wait up to `limit` for a creation event, and drain what is queued.
    fn wait(&self, limit: Duration) {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, limit.as_millis() as i32) };
        let mut buf = [0u8; 4096];
        // SAFETY: reads at most buf.len() bytes into buf (non-blocking).
        unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    }
}

#[derive(Default)]
struct Sample {
    greeting: Duration,
    greeting_rss: u64,
    first_answer: Duration,
    first_answer_rss: u64,
}

/// Start `binary` with the common arguments and QMP on `socket`; time the greeting and the
/// answer to `qmp_capabilities`. None if the VMM exited or never listened.
fn one_start(binary: &Path, socket: &Path) -> Option<Sample> {
    let _ = std::fs::remove_file(socket);
    let watch = Watch::new(socket.parent()?)?;
    let start = Instant::now();
    let child = Command::new(binary)
        .args([
            "-machine",
            "q35",
            "-accel",
            "kvm",
            "-nodefaults",
            "-display",
            "none",
            "-S",
            "-qmp",
        ])
        .arg(format!("unix:{},server=on,wait=off", socket.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut vm = Killed(child);
    let pid = vm.0.id();
    let stream = loop {
        if let Ok(s) = UnixStream::connect(socket) {
            break s;
        }
        if start.elapsed() > LIMIT || !matches!(vm.0.try_wait(), Ok(None)) {
            return None;
        }
        if socket.exists() {
            // Bound, not yet listening: that is a few instructions away.
            std::thread::sleep(Duration::from_micros(20));
        } else {
            // Sleep until something is created in the socket's directory rather than poll:
            // on 2 cores a polling client takes CPU time from the VMM it measures.
            watch.wait(Duration::from_millis(5));
        }
    };
    stream.set_read_timeout(Some(LIMIT)).ok()?;
    let mut out = stream.try_clone().ok()?;
    let mut input = BufReader::new(stream);
    let mut line = String::new();
    input.read_line(&mut line).ok()?;
    let greeting = start.elapsed();
    let greeting_rss = rss_kib(pid)?;
    if !line.starts_with("{\"QMP\": ") {
        return None;
    }
    out.write_all(b"{\"execute\": \"qmp_capabilities\"}\n")
        .ok()?;
    line.clear();
    input.read_line(&mut line).ok()?;
    let first_answer = start.elapsed();
    let first_answer_rss = rss_kib(pid)?;
    if !line.starts_with("{\"return\": {}") {
        return None;
    }
    drop(vm);
    // Let the kernel finish tearing the VM down before the next start (not measured).
    std::thread::sleep(Duration::from_millis(100));
    Some(Sample {
        greeting,
        greeting_rss,
        first_answer,
        first_answer_rss,
    })
}

/// CLOCK_MONOTONIC in microseconds (machina's trace reports the same clock).
fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1000
}

/// machina booting the bundled guest on q35: (start -> first KVM_RUN, start -> first exit),
/// from process start (the clock read just before the spawn; the trace's `monotonic-us=`),
/// and whether any memslot changed between the VM's creation and its first KVM_RUN.
fn first_instruction() -> Option<(Duration, Duration, u64)> {
    let spawned = monotonic_us();
    let out = Command::new(machina())
        .args(["-machine", "q35", "-m", "128", "-nographic"])
        .env("MACHINA_TRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .ok()?;
    let err = String::from_utf8_lossy(&out.stderr);
    let field = |line: &str, key: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
    };
    let at = |prefix: &str| {
        let line = err.lines().find(|l| l.starts_with(prefix))?;
        let us = field(line, "monotonic-us=")?.checked_sub(spawned)?;
        Some((Duration::from_micros(us), field(line, "memslot-changes=")))
    };
    let (entry, changes) = at("machina-trace: first-vcpu-entry ")?;
    let (exit, _) = at("machina-trace: first-vcpu-exit ")?;
    Some((entry, exit, changes.unwrap_or(0)))
}

fn median<T: Ord + Copy + Default>(mut v: Vec<T>) -> T {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// (10th, 90th) percentile: the spread around a median on a shared host.
fn spread<T: Ord + Copy + Default>(mut v: Vec<T>) -> (T, T) {
    v.sort();
    let at = |q: usize| v.get(v.len() * q / 10).copied().unwrap_or_default();
    (at(1), at(9))
}

/// The host's 1-minute load average (the figures depend on it).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

struct Summary {
    greeting_spread: (Duration, Duration),
    greeting: Duration,
    greeting_rss: u64,
    first_answer: Duration,
    first_answer_rss: u64,
}

fn summarize(samples: &[Sample]) -> Summary {
    Summary {
        greeting_spread: spread(samples.iter().map(|s| s.greeting).collect()),
        greeting: median(samples.iter().map(|s| s.greeting).collect()),
        greeting_rss: median(samples.iter().map(|s| s.greeting_rss).collect()),
        first_answer: median(samples.iter().map(|s| s.first_answer).collect()),
        first_answer_rss: median(samples.iter().map(|s| s.first_answer_rss).collect()),
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: run once then.
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let runs: usize = if bench_mode {
        std::env::var("MACHINA_BENCH_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30)
    } else {
        1
    };
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let dir = TempDir::new("bench-startup");
    let qemu = qemu();
    let qemu_version = Command::new(&qemu)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        });
    println!(
        "startup: {runs} runs each, alternating; machina {} ({profile} build of this bench); {}; \
         load average {}",
        machina().display(),
        qemu_version.as_deref().unwrap_or("QEMU not installed"),
        load_average()
    );
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for i in 0..runs {
        let sample = one_start(&machina(), &dir.path.join(format!("m{i}.sock")))
            .expect("machina starts and answers QMP");
        ours.push(sample);
        if qemu_version.is_some() {
            theirs.extend(one_start(&qemu, &dir.path.join(format!("q{i}.sock"))));
        }
    }
    let m = summarize(&ours);
    let row = |who: &str, s: &Summary| {
        println!(
            "startup {who:<8} start->greeting {:>9} (p10-p90 {}-{})  VmRSS at greeting {:>8}  \
             start->first answer {:>9}  VmRSS then {:>8}",
            ms(s.greeting),
            ms(s.greeting_spread.0),
            ms(s.greeting_spread.1),
            mib(s.greeting_rss),
            ms(s.first_answer),
            mib(s.first_answer_rss)
        );
    };
    row("machina", &m);
    if theirs.is_empty() {
        println!("startup QEMU: not installed or it did not start; comparison skipped");
    } else {
        let q = summarize(&theirs);
        row("QEMU", &q);
        println!(
            "startup QEMU/machina: greeting {:.1}x, RSS at greeting {:.1}x, first answer {:.1}x",
            q.greeting.as_secs_f64() / m.greeting.as_secs_f64(),
            q.greeting_rss as f64 / m.greeting_rss.max(1) as f64,
            q.first_answer.as_secs_f64() / m.first_answer.as_secs_f64()
        );
    }

    let boots: Vec<(Duration, Duration, u64)> =
        (0..runs).filter_map(|_| first_instruction()).collect();
    if boots.is_empty() {
        // A binary from before MACHINA_TRACE reported these (MACHINA_BENCH_BIN).
        println!("startup machina: this binary does not report its first guest exit");
        return;
    }
    println!(
        "startup machina q35 -m 128 (bundled guest), from process start: first KVM_RUN {}, \
         first guest instruction (vCPU 0's first exit) {} (medians of {}); \
         memslot changes before the first KVM_RUN: {} at most",
        ms(median(boots.iter().map(|b| b.0).collect())),
        ms(median(boots.iter().map(|b| b.1).collect())),
        boots.len(),
        boots.iter().map(|b| b.2).max().unwrap_or(0)
    );
}
