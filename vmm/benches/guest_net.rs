//! Guest-driven virtio-net throughput, machina against QEMU on the same host in the same
//! run: the bundled tiny guest's `virtio-bench` mode with `machina.bench-dev=net` (CPL 3,
//! polled, every doorbell a real notification) sends frames of 64 and 1514 bytes for a
//! fixed TSC budget each, then receives them from this process, which floods the tap's
//! host side (an AF_PACKET socket) while the guest asks for it. The tap lives in a private
//! network namespace this process enters (`unshare(CLONE_NEWNET)`, so it needs root);
//! machina and `qemu-system-x86_64 -accel kvm` (same machine type, device, tap, guest
//! binary; QEMU without vhost) alternate, and the medians are printed with their ratio.
//!
//! `cargo bench -p vmm --bench guest_net`; `MACHINA_BENCH_RUNS` (default 3) alternations,
//! `MACHINA_BENCH_MS` (default 500) per case. Without QEMU it prints machina's figures only.
//! Receive figures include this process's flooding, which shares the host's CPUs.

use std::io::BufRead;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[path = "guest_bench/mod.rs"]
mod guest_bench;
use guest_bench::{guest, machina, median, qemu_version, tsc_hz};

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
    Some(sock)
}

/// Floods frames of the size in `size` (0: pause) to the guest's MAC until `stop`.
fn flood(sock: OwnedFd, size: Arc<AtomicUsize>, stop: Arc<AtomicBool>) {
    let mut frame = [0u8; 1514];
    frame[..6].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    while !stop.load(Ordering::Relaxed) {
        let n = size.load(Ordering::Relaxed);
        if n == 0 {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        // SAFETY: `frame` is valid for `n` <= its length bytes.
        let r = unsafe {
            libc::send(
                sock.as_raw_fd(),
                frame.as_ptr().cast(),
                n,
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            // The tap's queue is full (the VMM is behind): give it the CPU.
            std::thread::yield_now();
        }
    }
}

/// (op, size) -> frames per second.
type Results = Vec<((String, usize), f64)>;

/// Run one VMM, flooding while the guest receives; its benchmark lines.
fn run(cmd: &mut Command, size: &Arc<AtomicUsize>, hz: f64) -> Option<Results> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let out = child.stdout.take()?;
    let mut results = Vec::new();
    let mut ok = false;
    for line in std::io::BufReader::new(out).lines() {
        let Ok(line) = line else { break };
        let line = line.replace('\r', "");
        let get = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_string)
        };
        if line.contains("virtio-bench: net rx-start") {
            size.store(
                get("size=").and_then(|s| s.parse().ok()).unwrap_or(0),
                Ordering::Relaxed,
            );
        } else if line.contains("virtio-bench: net rx-done") {
            size.store(0, Ordering::Relaxed);
        } else if line.contains("virtio-bench: net op=") {
            let parsed = (|| {
                let op = get("op=")?;
                let n: usize = get("size=")?.parse().ok()?;
                let frames: f64 = get("frames=")?.parse().ok()?;
                let tsc: f64 = get("tsc=")?.parse().ok()?;
                Some(((op, n), frames / (tsc / hz)))
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

fn main() {
    let runs: usize = std::env::var("MACHINA_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let ms: u64 = std::env::var("MACHINA_BENCH_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let full = std::env::args().any(|a| a == "--bench");
    let (runs, ms) = if full { (runs, ms) } else { (1, 20) };
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
    let mut ours: Vec<Results> = Vec::new();
    let mut theirs: Vec<Results> = Vec::new();
    for _ in 0..runs {
        let mut m = Command::new("timeout");
        m.arg("300").arg(machina()).arg("-kernel").arg(guest());
        m.args(vmm_args(&append));
        match run(&mut m, &size, hz) {
            Some(r) => ours.push(r),
            None => eprintln!("machina run failed"),
        }
        if have_qemu {
            let mut q = Command::new("timeout");
            q.args(["300", "qemu-system-x86_64", "-accel", "kvm", "-nographic"]);
            q.args(["-no-reboot", "-kernel"]).arg(guest());
            q.args(vmm_args(&append));
            match run(&mut q, &size, hz) {
                Some(r) => theirs.push(r),
                None => eprintln!("QEMU run failed"),
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = flooder.join();
    println!(
        "guest-driven virtio-net (q35, modern, polled at CPL 3, {ms} ms per case, median of {runs}; \
         tap in a private namespace, rx flooded by an AF_PACKET socket; TSC {:.0} MHz){}",
        hz / 1e6,
        if full { "" } else { " (quick run: pass --bench to measure)" }
    );
    let Some(first) = ours.first() else {
        println!("no machina result");
        return;
    };
    let show = |size: usize, pps: f64| {
        if size <= 64 {
            format!("{:>9.0} pkt/s", pps)
        } else {
            format!("{:>6.2} Gbit/s", pps * size as f64 * 8.0 / 1e9)
        }
    };
    for (i, ((op, n), _)) in first.iter().enumerate() {
        let m = median(ours.iter().filter_map(|r| r.get(i).map(|x| x.1)).collect());
        let line = format!("{op} {n:>4} B: machina {}", show(*n, m));
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
                "{line} | {qemu_name} {} | ratio {:.2}",
                show(*n, q),
                m / q.max(1e-9)
            );
        }
    }
}
