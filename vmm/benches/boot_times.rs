//! Boot-time and memory benchmark of the real binary with the bundled tiny guest:
//! wall time from process start to the first vCPU entry, to the guest's banner and to exit
//! (median of N runs), and the VMM's resident memory excluding guest RAM. Beside it, from
//! the same run, Debian's QEMU 7.2 booting the same guest ELF (`-kernel`, through its
//! firmware: SeaBIOS and the PVH option ROM) to the same banner.
//!
//! `cargo bench -p vmm --bench boot_times` (MACHINA_BENCH_RUNS=N to change N, default 20;
//! MACHINA_BENCH_QEMU_RUNS=N for QEMU, default 3: each takes seconds on PVM hosts, where
//! its firmware's kernel-mode code is emulated; MACHINA_BENCH_QEMU=PATH for another QEMU).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Sample {
    first_entry: Option<Duration>,
    banner: Option<Duration>,
    exit: Duration,
    vmm_rss_kib: Option<u64>,
    guest_rss_kib: Option<u64>,
}

fn one_run(machine: &str) -> Sample {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_machina"))
        .args(["-M", machine, "-smp", "2", "-m", "256", "-nographic"])
        .env("MACHINA_TRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start machina");
    let (tx, rx) = mpsc::channel::<(bool, String, Duration)>();
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    let tx2 = tx.clone();
    let t_out = std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send((false, line, start.elapsed()));
        }
    });
    let t_err = std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx2.send((true, line, start.elapsed()));
        }
    });
    let status = child.wait().expect("wait");
    let exit = start.elapsed();
    let _ = t_out.join();
    let _ = t_err.join();
    assert!(status.success(), "machina failed: {status}");
    let mut s = Sample {
        exit,
        ..Default::default()
    };
    for (is_err, line, at) in rx.try_iter() {
        if is_err && line.starts_with("machina-trace: first-vcpu-entry") {
            s.first_entry = Some(at);
        } else if !is_err && line.starts_with("machina-guest:") && s.banner.is_none() {
            s.banner = Some(at);
        } else if is_err && line.starts_with("machina-trace: rss") {
            let value = |key: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .and_then(|v| v.parse().ok())
            };
            s.vmm_rss_kib = value("vmm_kib=");
            s.guest_rss_kib = value("guest_kib=");
        }
    }
    s
}

/// QEMU booting the bundled guest ELF on `machine`: process start -> the guest's banner.
fn qemu_banner(machine: &str) -> Option<Duration> {
    let qemu = std::env::var_os("MACHINA_BENCH_QEMU")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/qemu-system-x86_64".into());
    let elf = machina_tests::paths::guest_elf(std::path::Path::new(env!("CARGO_BIN_EXE_machina")));
    let start = Instant::now();
    let mut child = Command::new(qemu)
        .args([
            "-M",
            machine,
            "-accel",
            "kvm",
            "-smp",
            "2",
            "-m",
            "256",
            "-nodefaults",
        ])
        .args(["-display", "none", "-serial", "stdio", "-kernel"])
        .arg(elf)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let out = child.stdout.take()?;
    let banner = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("machina-guest:"))
        .map(|_| start.elapsed());
    let _ = child.kill();
    let _ = child.wait();
    banner
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: run once then.
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let runs: usize = if bench_mode {
        std::env::var("MACHINA_BENCH_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20)
    } else {
        1
    };
    let qemu_runs: usize = if bench_mode {
        std::env::var("MACHINA_BENCH_QEMU_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3)
    } else {
        1
    };
    for machine in ["q35", "pc"] {
        let samples: Vec<Sample> = (0..runs).map(|_| one_run(machine)).collect();
        let qemu: Vec<Duration> = (0..qemu_runs)
            .filter_map(|_| qemu_banner(machine))
            .collect();
        let pick = |f: &dyn Fn(&Sample) -> Option<Duration>| {
            median(samples.iter().filter_map(f).collect())
        };
        let vmm_rss: Vec<u64> = samples.iter().filter_map(|s| s.vmm_rss_kib).collect();
        let guest_rss: Vec<u64> = samples.iter().filter_map(|s| s.guest_rss_kib).collect();
        let mid = |mut v: Vec<u64>| {
            v.sort();
            v.get(v.len() / 2).copied().unwrap_or(0)
        };
        println!(
            "boot_times machine={machine} runs={runs} -smp 2 -m 256: \
             start->first-vcpu-entry {:.2} ms, start->guest-banner {:.2} ms, start->exit {:.2} ms (medians); \
             VMM RSS excluding guest RAM {} KiB (guest RAM resident {} KiB)",
            pick(&|s| s.first_entry).as_secs_f64() * 1e3,
            pick(&|s| s.banner).as_secs_f64() * 1e3,
            pick(&|s| Some(s.exit)).as_secs_f64() * 1e3,
            mid(vmm_rss),
            mid(guest_rss),
        );
        match qemu.is_empty() {
            true => println!("boot_times machine={machine} QEMU: not installed or no banner"),
            false => println!(
                "boot_times machine={machine} QEMU 7.2 (same guest ELF through its firmware, {} runs): \
                 start->guest-banner {:.2} ms (median)",
                qemu.len(),
                median(qemu).as_secs_f64() * 1e3
            ),
        }
    }
}
