//! Guest-driven virtio-net throughput, machina against QEMU on the same host in the same
//! run: the bundled tiny guest's `virtio-bench` mode with `machina.bench-dev=net` (CPL 3,
//! polled, every doorbell a real notification) sends frames of 64 and 1514 bytes for a
//! fixed TSC budget each, then receives them from this process, which floods the tap's
//! host side (an AF_PACKET socket, sendmmsg past the qdisc) while the guest asks for it,
//! keeping a few thousand frames queued in the tap rather than spinning on a full queue.
//! The tap lives in a private network namespace this process enters
//! (`unshare(CLONE_NEWNET)`, so it needs root); machina and `qemu-system-x86_64 -accel kvm`
//! (same machine type, device, tap, guest binary; QEMU without vhost) run in pairs, a
//! warm-up pair discarded, the order alternating from pair to pair; each figure is the
//! median with its range, and the ratio of the medians comes with the range of the
//! ratios within each pair. The load average before and after is printed: on a shared
//! host the spread is what to read first.
//!
//! `cargo bench -p vmm --bench guest_net`; `MACHINA_BENCH_RUNS` (default 5) pairs,
//! `MACHINA_BENCH_MS` (default 500) per case. Without QEMU it prints machina's figures only.
//! Receive figures include this process's flooding, which shares the host's CPUs.

use std::collections::HashMap;
use std::io::BufRead;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[path = "guest_bench/mod.rs"]
mod guest_bench;
use guest_bench::{guest, machina, median, qemu_version, run_length, tsc_hz};

const TAP: &str = "bnet0";

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Enter a new network namespace and create the tap there; the flood socket on its host
/// side. None (with the reason printed) where the host does not allow it.
fn private_tap() -> Option<OwnedFd> {
    // SAFETY: unshare changes only this process's namespace membership (no threads yet).
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        println!(
            "guest_net: cannot enter a private network namespace ({}); run as root",
            std::io::Error::last_os_error()
        );
        return None;
    }
    if !(sh(&["ip", "link", "set", "lo", "up"])
        && sh(&["ip", "tuntap", "add", "dev", TAP, "mode", "tap", "vnet_hdr"])
        && sh(&[
            "ip",
            "link",
            "set",
            TAP,
            "txqueuelen",
            &TAP_QUEUE.to_string(),
        ])
        && sh(&["ip", "link", "set", TAP, "up"]))
    {
        println!("guest_net: cannot create tap {TAP} in the namespace (ip tuntap)");
        return None;
    }
    // No IPv6 chatter from the host side into the guest's receive counts.
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{TAP}/disable_ipv6"), "1");
    // SAFETY: plain socket creation; protocol 0 receives nothing, it only sends.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        println!("guest_net: no AF_PACKET socket");
        return None;
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(TAP).ok()?;
    // SAFETY: `name` is a NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    // SAFETY: an all-zero sockaddr_ll is valid; the fields are set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = index as i32;
    // SAFETY: `sll` is a sockaddr_ll of the stated size.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r != 0 {
        println!("guest_net: cannot bind to {TAP}");
        return None;
    }
    // Straight to the tap, past the queueing discipline (cheaper per frame); the tap's
    // own queue is the only one.
    let one: libc::c_int = 1;
    // SAFETY: PACKET_QDISC_BYPASS reads an int through the pointer, valid for the call.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    Some(sock)
}

/// The tap's frame counters from this network namespace's /proc/net/dev (sysfs would show
/// the namespace that mounted it): frames it took from the VMM (rx_packets: the guest's
/// tx), gave the VMM (tx_packets: the guest's rx), and dropped because its queue was full
/// (tx_dropped). `dev` is /proc/net/dev, read again from its start.
fn tap_counters(dev: &std::fs::File) -> Option<(u64, u64, u64)> {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 4096];
    let n = dev.read_at(&mut b, 0).ok()?;
    let text = std::str::from_utf8(&b[..n]).ok()?;
    let line = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(&format!("{TAP}:")))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    Some((*f.get(1)?, *f.get(9)?, *f.get(11)?))
}

fn proc_net_dev() -> Option<std::fs::File> {
    std::fs::File::open("/proc/net/dev").ok()
}

/// Frames the flooder keeps queued in the tap (whose queue holds TAP_QUEUE): enough for a
/// few milliseconds of the fastest VMM, so a late wake-up of the flooder on a loaded host
/// does not leave the VMM without frames.
const TAP_QUEUE: usize = 8192;
const IN_FLIGHT: u64 = 4096;
/// Frames per sendmmsg.
const BATCH: usize = 64;

/// Floods frames of the size in `size` (0: pause) to the guest's MAC until `stop`, keeping
/// about IN_FLIGHT frames queued in the tap: it sends only what the VMM took away (paced by
/// the tap's counters) and sleeps while the queue is full, so its CPU use follows the
/// VMM's receive rate instead of spinning on a full queue (which took CPU from the VMM it
/// measures and made the figures depend on the scheduler). Returns the frames sent.
fn flood(sock: OwnedFd, size: Arc<AtomicUsize>, stop: Arc<AtomicBool>) -> u64 {
    let mut frame = [0u8; 1514];
    frame[..6].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    // Short sleeps wake when asked, not up to 50 us later (the default timer slack).
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000u64, 0, 0, 0) };
    let dev = proc_net_dev();
    let mut iov = [libc::iovec {
        iov_base: frame.as_mut_ptr().cast(),
        iov_len: 0,
    }];
    // SAFETY: an all-zero mmsghdr array is valid; each points at the one iovec below.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let mut total = 0u64;
    // Frames sent and frames gone from the tap when this flood began.
    let mut base: Option<(u64, u64)> = None;
    while !stop.load(Ordering::Relaxed) {
        let n = size.load(Ordering::Relaxed);
        if n == 0 {
            base = None;
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        // Frames that left the tap's queue: read by the VMM or dropped.
        let gone = dev
            .as_ref()
            .and_then(tap_counters)
            .map(|(_, read, dropped)| read + dropped);
        let (sent0, gone0) = *base.get_or_insert((total, gone.unwrap_or(0)));
        let queued = match gone {
            Some(g) => (total - sent0).saturating_sub(g.saturating_sub(gone0)),
            None => 0,
        };
        if queued >= IN_FLIGHT {
            std::thread::sleep(Duration::from_micros(20));
            continue;
        }
        iov[0].iov_len = n;
        for m in msgs.iter_mut() {
            m.msg_hdr.msg_iov = iov.as_mut_ptr();
            m.msg_hdr.msg_iovlen = 1;
        }
        let want = (IN_FLIGHT - queued).min(BATCH as u64) as u32;
        // SAFETY: each mmsghdr points at `iov`, which covers `n` <= 1514 bytes of `frame`;
        // all outlive the call.
        let r = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                want,
                libc::MSG_DONTWAIT,
            )
        };
        if r > 0 {
            total += r as u64;
        } else {
            // Nothing went: the VMM is behind, give it the CPU.
            std::thread::sleep(Duration::from_micros(20));
        }
    }
    total
}

/// One case of one run.
#[derive(Debug, Clone)]
struct Case {
    op: String,
    size: usize,
    /// Frames per second the guest counted.
    pps: f64,
    /// Host CPU time of the VMM's threads other than its vCPU threads (which spin, polling
    /// the rings) per frame the tap passed during the case, in microseconds: what a frame
    /// costs the VMM, which the host's load changes far less than the rate.
    cpu_us: Option<f64>,
}

type Results = Vec<Case>;

/// CPU time (ns) of each of process `pid`'s threads whose name does not start with "CPU "
/// (the vCPU threads of both VMMs; QEMU names them with `-name debug-threads=on`).
fn io_cpu_ns(pid: u32) -> Option<HashMap<String, u64>> {
    let mut threads = HashMap::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let t = t.ok()?;
        let dir = t.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.starts_with("CPU ") {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        let ns = stat.split_whitespace().next().and_then(|v| v.parse().ok());
        threads.insert(
            t.file_name().to_string_lossy().into_owned(),
            ns.unwrap_or(0),
        );
    }
    Some(threads)
}

/// The VMM's threads' CPU time and the tap's counters (frames taken, given) at one moment.
type Sample = (HashMap<String, u64>, (u64, u64));

fn sample(pid: u32, dev: Option<&std::fs::File>) -> Option<Sample> {
    let (took, gave, _) = tap_counters(dev?)?;
    Some((io_cpu_ns(pid)?, (took, gave)))
}

/// Host CPU per frame between two samples (rx: frames the tap gave, tx: frames it took);
/// a thread that started in between counts whole. None if a thread ended in between (the
/// VMM was already exiting when the case's last line was read: its time is lost).
fn cpu_per_frame(from: Option<Sample>, to: Option<Sample>, rx: bool) -> Option<f64> {
    let ((c0, (t0, r0)), (c1, (t1, r1))) = (from?, to?);
    let frames = if rx { r1 - r0 } else { t1 - t0 };
    if c0.keys().any(|tid| !c1.contains_key(tid)) {
        return None;
    }
    let ns: u64 = c1
        .iter()
        .map(|(tid, &ns)| ns.saturating_sub(c0.get(tid).copied().unwrap_or(0)))
        .sum();
    (frames > 0).then(|| ns as f64 / 1e3 / frames as f64)
}

/// Run one VMM, flooding while the guest receives; its benchmark lines.
fn run(cmd: &mut Command, size: &Arc<AtomicUsize>, hz: f64) -> Option<Results> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let pid = child.id();
    // Hang guard: a VMM that stops talking is killed after 5 minutes.
    let (done, watch) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            watch.recv_timeout(Duration::from_secs(300))
        {
            // SAFETY: kill only sends a signal; the child is not reaped yet (run waits
            // for it after this channel closes), so `pid` is still the VMM.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    });
    let out = child.stdout.take()?;
    let mut results = Vec::new();
    let mut ok = false;
    let mut started = None;
    let dev = proc_net_dev();
    for line in std::io::BufReader::new(out).lines() {
        let Ok(line) = line else { break };
        let line = line.replace('\r', "");
        let get = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_string)
        };
        if line.contains("virtio-bench: net tx-start") {
            started = sample(pid, dev.as_ref());
        } else if line.contains("virtio-bench: net rx-start") {
            started = sample(pid, dev.as_ref());
            size.store(
                get("size=").and_then(|s| s.parse().ok()).unwrap_or(0),
                Ordering::Relaxed,
            );
        } else if line.contains("virtio-bench: net rx-done") {
            size.store(0, Ordering::Relaxed);
        } else if line.contains("virtio-bench: net op=") {
            let ended = sample(pid, dev.as_ref());
            let parsed = (|| {
                let op = get("op=")?;
                let size: usize = get("size=")?.parse().ok()?;
                let frames: f64 = get("frames=")?.parse().ok()?;
                let tsc: f64 = get("tsc=")?.parse().ok()?;
                let cpu_us = cpu_per_frame(started.take(), ended, op == "rx");
                Some(Case {
                    op,
                    size,
                    pps: frames / (tsc / hz),
                    cpu_us,
                })
            })();
            results.extend(parsed);
        } else if line.contains("virtio-bench: result=ok") {
            ok = true;
        } else if line.contains("virtio-bench: result=") {
            eprintln!("{line} (after {results:?})");
        }
    }
    size.store(0, Ordering::Relaxed);
    let _ = child.wait();
    drop(done);
    ok.then_some(results)
}

fn vmm_args(append: &str) -> Vec<String> {
    [
        "-M",
        "q35",
        "-m",
        "256",
        "-nodefaults",
        "-serial",
        "stdio",
        "-netdev",
        &format!("tap,id=n0,ifname={TAP},script=no,downscript=no"),
        "-device",
        "virtio-net-pci,netdev=n0,bus=pcie.0",
        "-append",
        append,
    ]
    .map(String::from)
    .to_vec()
}

/// The host's load averages (1, 5, 15 minutes) as /proc/loadavg gives them.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

/// Median and range of `v`.
fn summary(v: &[f64]) -> (f64, f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(v.to_vec()), min, max)
}

fn machina_cmd(append: &str) -> Command {
    let mut m = Command::new(machina());
    m.arg("-kernel").arg(guest());
    m.args(vmm_args(append));
    m
}

fn qemu_cmd(append: &str) -> Command {
    let mut q = Command::new("qemu-system-x86_64");
    q.args(["-accel", "kvm", "-nographic", "-no-reboot"]);
    // Thread names, so its vCPU thread ("CPU 0/KVM", as machina's) is told apart.
    q.args(["-name", "bench,debug-threads=on", "-kernel"])
        .arg(guest());
    q.args(vmm_args(append));
    q
}

fn main() {
    let (full, runs, ms) = run_length(5);
    let runs = runs.max(1);
    // The VMMs (and the flooder) run at a higher priority than the host's other work
    // (MACHINA_BENCH_NICE, default -10 as root, 0 leaves it): on a shared host the
    // figures otherwise measure the other tenants' builds more than the VMMs. Both VMMs
    // get the same.
    let nice: i32 = std::env::var("MACHINA_BENCH_NICE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(-10);
    // SAFETY: setpriority changes only this thread's scheduling priority, which the
    // threads and processes it starts inherit.
    let reniced = nice != 0 && unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } == 0;
    let Some(sock) = private_tap() else {
        return;
    };
    let qemu_version = qemu_version();
    let have_qemu = qemu_version.is_some() && guest().exists();
    let qemu_name = qemu_version.unwrap_or_default();
    let hz = tsc_hz();
    let size = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = {
        let (size, stop) = (size.clone(), stop.clone());
        std::thread::spawn(move || flood(sock, size, stop))
    };
    let append = format!("machina.test=virtio-bench machina.bench-dev=net machina.bench-ms={ms}");
    let load_before = loadavg();
    // One warm-up run of each (page cache, the tap's first use, CPU frequency) is thrown
    // away. Then pairs in alternating order (machina first, then QEMU first, ...), so a
    // load that grows or fades during the bench weighs on both alike; each pair also gives
    // a ratio of its own, whose spread says how far one pair can be trusted.
    let mut ours: Vec<Option<Results>> = Vec::new();
    let mut theirs: Vec<Option<Results>> = Vec::new();
    for i in 0..=runs {
        let warm_up = i == 0 && full;
        let qemu_first = i % 2 == 0 && !warm_up;
        let mut pair = [None, None];
        for k in 0..2 {
            let is_qemu = (k == 0) == qemu_first;
            if is_qemu && !have_qemu {
                continue;
            }
            let mut cmd = if is_qemu {
                qemu_cmd(&append)
            } else {
                machina_cmd(&append)
            };
            let r = run(&mut cmd, &size, hz);
            if r.is_none() {
                eprintln!("{} run failed", if is_qemu { "QEMU" } else { "machina" });
            }
            pair[usize::from(is_qemu)] = r;
        }
        if std::env::var_os("MACHINA_BENCH_VERBOSE").is_some() {
            let tag = if warm_up { "warm-up" } else { "pair" };
            eprintln!("{tag} {i}: machina {:?}", pair[0]);
            eprintln!("{tag} {i}: QEMU {:?}", pair[1]);
        }
        if warm_up {
            continue;
        }
        let [m, q] = pair;
        ours.push(m);
        theirs.push(q);
        if !full {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let sent = flooder.join().unwrap_or(0);
    if std::env::var_os("MACHINA_BENCH_VERBOSE").is_some() {
        // How well the flooder kept the tap fed: frames it dropped on a full queue.
        let counters = proc_net_dev().as_ref().and_then(tap_counters);
        if let Some((_, gave, dropped)) = counters {
            eprintln!(
                "flooder: {sent} frames sent; the tap gave {gave} to the VMMs, dropped {dropped}"
            );
        }
    }
    println!(
        "guest-driven virtio-net (q35, modern, polled at CPL 3, {ms} ms per case; median of {runs} \
         runs each (min-max){}, order alternating; tap in a private namespace, rx from an \
         AF_PACKET socket keeping {IN_FLIGHT} frames queued; TSC {:.0} MHz; load average {load_before} before, {} after; nice {}){}",
        if full {
            ", a warm-up run each discarded"
        } else {
            ""
        },
        hz / 1e6,
        loadavg(),
        if reniced { nice } else { 0 },
        if full { "" } else { " (quick run: pass --bench to measure)" }
    );
    let Some(first) = ours.iter().flatten().next() else {
        println!("no machina result");
        return;
    };
    let show = |size: usize, pps: f64| {
        if size <= 64 {
            format!("{:.0} pkt/s", pps)
        } else {
            format!("{:.2} Gbit/s", pps * size as f64 * 8.0 / 1e9)
        }
    };
    // "median (min-max)" of `v` shown by `f`.
    let spread = |v: &[f64], f: &dyn Fn(f64) -> String| {
        let (m, lo, hi) = summary(v);
        format!("{} ({}-{})", f(m), f(lo), f(hi))
    };
    let us = |v: f64| format!("{v:.2}");
    type Pick = fn(&Case) -> Option<f64>;
    let rate: Pick = |c| Some(c.pps);
    let cpu: Pick = |c| c.cpu_us;
    let at = |r: &Option<Results>, i: usize, pick: Pick| r.as_ref()?.get(i).and_then(pick);
    for (i, c) in first.iter().enumerate() {
        let size = c.size;
        let fmt = move |v: f64| show(size, v);
        for (what, pick, f, higher_better) in [
            ("rate", rate, &fmt as &dyn Fn(f64) -> String, true),
            ("host CPU us/frame", cpu, &us, false),
        ] {
            let m: Vec<f64> = ours.iter().filter_map(|r| at(r, i, pick)).collect();
            if m.is_empty() {
                continue;
            }
            let mut line = format!(
                "{:>2} {:>4} B {what:>17}: machina {}",
                c.op,
                c.size,
                spread(&m, f)
            );
            let q: Vec<f64> = theirs.iter().filter_map(|r| at(r, i, pick)).collect();
            if !q.is_empty() {
                // machina's advantage (> 1: machina better), overall and within each pair
                // (both runs of a pair saw about the same host).
                let adv = |a: f64, b: f64| {
                    if higher_better {
                        a / b.max(1e-9)
                    } else {
                        b / a.max(1e-9)
                    }
                };
                let pairs: Vec<f64> = ours
                    .iter()
                    .zip(&theirs)
                    .filter_map(|(a, b)| Some(adv(at(a, i, pick)?, at(b, i, pick)?)))
                    .collect();
                let (_, plo, phi) = summary(&pairs);
                line += &format!(
                    " | {qemu_name} {} | machina/QEMU {:.2} (pairs {plo:.2}-{phi:.2})",
                    spread(&q, f),
                    adv(median(m.clone()), median(q.clone())),
                );
            }
            println!("{line}");
        }
    }
}
