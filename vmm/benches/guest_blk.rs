//! Guest-driven virtio-blk throughput, machina against QEMU on the same host in the same
//! run: the bundled tiny guest's `virtio-bench` mode (CPL 3, polled, every doorbell a real
//! notification) drives a modern virtio-blk for a fixed TSC budget per case (4 KiB and
//! 64 KiB reads and writes at queue depth 1, 4 KiB reads at depth 32) on one raw image in
//! the page cache; machina and `qemu-system-x86_64 -accel kvm` (same machine type, device,
//! image, guest binary) alternate, and the medians are printed with their ratio.
//!
//! `cargo bench -p vmm --bench guest_blk`; `MACHINA_BENCH_RUNS` (default 3) alternations,
//! `MACHINA_BENCH_MS` (default 500) per case, `MACHINA_BASE_BIN` another machina binary (an
//! older build) to run beside them. Every VMM boots the same guest ELF with `-kernel`.
//! Without QEMU it prints machina's figures only.
//! TSC ticks become seconds with the host's TSC rate, measured here against the wall clock.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[path = "guest_bench/mod.rs"]
mod guest_bench;
use guest_bench::{guest, machina, median, qemu_version, run_length, tsc_hz};

/// (op, size, qd) -> requests per second.
type Results = Vec<((String, u64, u64), f64)>;

fn parse(stdout: &str, hz: f64) -> Option<Results> {
    if !stdout.contains("virtio-bench: result=ok") {
        return None;
    }
    let mut out = Vec::new();
    for line in stdout.lines().filter(|l| l.contains("virtio-bench: op=")) {
        let get = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_string)
        };
        let op = get("op=")?;
        let size: u64 = get("size=")?.parse().ok()?;
        let qd: u64 = get("qd=")?.parse().ok()?;
        let n: f64 = get("requests=")?.parse().ok()?;
        let tsc: f64 = get("tsc=")?.parse().ok()?;
        out.push(((op, size, qd), n / (tsc / hz)));
    }
    Some(out)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("start the VMM");
    String::from_utf8_lossy(&out.stdout).replace('\r', "")
}

fn machina_run(binary: &Path, image: &Path, append: &str) -> String {
    run(Command::new("timeout")
        .arg("300")
        .arg(binary)
        .arg("-kernel")
        .arg(guest())
        .args([
            "-M",
            "q35",
            "-m",
            "256",
            "-nodefaults",
            "-serial",
            "stdio",
            "-drive",
            &format!("file={},if=none,id=d0,format=raw", image.display()),
            "-device",
            "virtio-blk-pci,drive=d0,bus=pcie.0",
            "-append",
            append,
        ]))
}

fn qemu_run(image: &Path, append: &str) -> String {
    run(Command::new("timeout")
        .arg("300")
        .args([
            "qemu-system-x86_64",
            "-accel",
            "kvm",
            "-M",
            "q35",
            "-m",
            "256",
            "-nodefaults",
            "-nographic",
            "-serial",
            "stdio",
            "-no-reboot",
            "-kernel",
        ])
        .arg(guest())
        .args([
            "-drive",
            &format!("file={},if=none,id=d0,format=raw", image.display()),
            "-device",
            "virtio-blk-pci,drive=d0,bus=pcie.0",
            "-append",
            append,
        ]))
}

fn main() {
    let (full, runs, ms) = run_length(3);
    let scratch = machina_tests::TempDir::new("guest-blk");
    let image = scratch.join("disk.img");
    // 64 MiB of data, read once so that it is in the page cache.
    std::fs::write(&image, vec![0x5au8; 64 << 20]).expect("image");
    let _ = std::fs::read(&image);
    let qemu_version = qemu_version();
    let have_qemu = qemu_version.is_some() && guest().exists();
    let qemu_name = qemu_version.unwrap_or_default();
    let hz = tsc_hz();
    let append = format!("machina.test=virtio-bench machina.bench-ms={ms}");
    let base = std::env::var_os("MACHINA_BASE_BIN").map(PathBuf::from);
    let mut ours: Vec<Results> = Vec::new();
    let mut theirs: Vec<Results> = Vec::new();
    let mut older: Vec<Results> = Vec::new();
    for _ in 0..runs {
        match parse(&machina_run(&machina(), &image, &append), hz) {
            Some(r) => ours.push(r),
            None => eprintln!("machina run failed"),
        }
        if let Some(base) = &base {
            match parse(&machina_run(base, &image, &append), hz) {
                Some(r) => older.push(r),
                None => eprintln!("base machina run failed"),
            }
        }
        if have_qemu {
            match parse(&qemu_run(&image, &append), hz) {
                Some(r) => theirs.push(r),
                None => eprintln!("QEMU run failed"),
            }
        }
    }
    drop(scratch);
    println!(
        "guest-driven virtio-blk (q35, modern, polled at CPL 3, {ms} ms per case, median of {runs}; \
         64 MiB raw image in the page cache; TSC {:.0} MHz){}",
        hz / 1e6,
        if full { "" } else { " (quick run: pass --bench to measure)" }
    );
    let Some(first) = ours.first() else {
        println!("no machina result");
        return;
    };
    for (i, ((op, size, qd), _)) in first.iter().enumerate() {
        let m = median(ours.iter().filter_map(|r| r.get(i).map(|x| x.1)).collect());
        let line = format!(
            "{op:<5} {:>2} KiB qd{qd:<2}: machina {:>8.0} IOPS {:>7.1} MB/s",
            size / 1024,
            m,
            m * *size as f64 / 1e6
        );
        let line = if older.is_empty() {
            line
        } else {
            let b = median(older.iter().filter_map(|r| r.get(i).map(|x| x.1)).collect());
            format!("{line} (base {b:>8.0} IOPS, x{:.2})", m / b.max(1e-9))
        };
        if theirs.is_empty() {
            println!("{line}");
        } else {
            let q = median(
                theirs
                    .iter()
                    .filter_map(|r| r.get(i).map(|x| x.1))
                    .collect(),
            );
            println!(
                "{line} | {qemu_name} {:>8.0} IOPS {:>7.1} MB/s | ratio {:.2}",
                q,
                q * *size as f64 / 1e6,
                m / q.max(1e-9)
            );
        }
    }
}
