//! QMP latency benchmark of the real binary:
//! * process start → QMP greeting (median of N runs) for `-M none -S`, `-M q35 -S` and
//!   `-delay-machine-init`, with the VMM's VmRSS at the greeting;
//! * `query-status` round trip (median of 1000 on one connection);
//! * `x-query-machine-definition` of every machine type in one connection (total; the goal
//!   is under 10 ms for all of them, in a release build). Round trips are timed on raw
//!   lines; parsing the answers (a client's cost, not the monitor's) is timed apart;
//! * for comparison, QEMU's start → greeting with `-M none -S -display none -nodefaults`
//!   when `qemu-system-x86_64` is installed.
//!
//! `cargo bench -p vmm --bench qmp_times` (MACHINA_BENCH_RUNS=N for N, default 20;
//! MACHINA_BENCH_BIN=PATH to time another machina binary).
//! Under `cargo test --benches` (no `--bench`) every measurement runs once, as a smoke test.

use machina_tests::process::{rss_kib, MachinaProcess};
use machina_tests::qmp_client::QmpClient;
use machina_tests::TempDir;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);

/// The binary built with this bench, or MACHINA_BENCH_BIN (to compare two builds).
fn machina() -> PathBuf {
    std::env::var_os("MACHINA_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_machina")))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn median_u64(mut v: Vec<u64>) -> u64 {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// Poll-connect to `socket` until the greeting line arrives: (time since `start`, VmRSS).
fn wait_greeting(socket: &Path, pid: u32, start: Instant) -> (Duration, Option<u64>) {
    loop {
        if let Ok(stream) = UnixStream::connect(socket) {
            stream.set_read_timeout(Some(LIMIT)).expect("timeout");
            let mut line = String::new();
            BufReader::new(stream)
                .read_line(&mut line)
                .expect("read the greeting");
            let at = start.elapsed();
            assert!(line.starts_with("{\"QMP\": "), "greeting: {line}");
            return (at, rss_kib(pid));
        }
        assert!(
            start.elapsed() < LIMIT,
            "no QMP socket at {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// start → greeting and VmRSS at the greeting, medians of `runs`.
fn machina_startup(args: &[&str], runs: usize) -> (Duration, u64) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut times = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..runs {
        let vm = MachinaProcess::start(&machina(), "bench-qmp", &args);
        let (t, r) = wait_greeting(&vm.socket, vm.pid(), vm.started);
        times.push(t);
        rss.extend(r);
    }
    (median(times), median_u64(rss))
}

/// A negotiated connection that sends text and reads answer lines without parsing them.
struct Raw {
    out: UnixStream,
    input: BufReader<UnixStream>,
}

impl Raw {
    fn connect(socket: &Path) -> Raw {
        let out = UnixStream::connect(socket).expect("connect");
        out.set_read_timeout(Some(LIMIT)).expect("timeout");
        let mut raw = Raw {
            input: BufReader::with_capacity(1 << 16, out.try_clone().expect("clone")),
            out,
        };
        let mut greeting = String::new();
        raw.input.read_line(&mut greeting).expect("greeting");
        let answer = raw.round_trip("{\"execute\": \"qmp_capabilities\"}\n");
        assert_eq!(answer, "{\"return\": {}}\r\n");
        raw
    }

    /// Send one request and read its answer line (there are no events in between here).
    fn round_trip(&mut self, request: &str) -> String {
        self.out.write_all(request.as_bytes()).expect("send");
        let mut line = String::new();
        self.input.read_line(&mut line).expect("answer");
        assert!(line.ends_with("\r\n"), "{line}");
        line
    }
}

/// A QEMU child killed on drop.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qemu_startup(runs: usize) -> Option<(String, Duration, u64)> {
    let version = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let version = String::from_utf8_lossy(&version.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let dir = TempDir::new("bench-qemu");
    let mut times = Vec::new();
    let mut rss = Vec::new();
    for i in 0..runs {
        let socket = dir.path.join(format!("qmp{i}.sock"));
        let start = Instant::now();
        let child = Command::new("qemu-system-x86_64")
            .args([
                "-M",
                "none",
                "-S",
                "-display",
                "none",
                "-nodefaults",
                "-qmp",
            ])
            .arg(format!("unix:{},server=on,wait=off", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let qemu = Qemu(child);
        let (t, r) = wait_greeting(&socket, qemu.0.id(), start);
        times.push(t);
        rss.extend(r);
    }
    Some((version, median(times), median_u64(rss)))
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
    let round_trips = if bench_mode { 1000 } else { 1 };
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "qmp_times: {profile} build of this bench, {runs} runs per start-up figure, {}",
        machina().display()
    );

    for args in [
        &["-M", "none", "-S", "-nodefaults"][..],
        &["-M", "q35", "-S", "-nodefaults"][..],
        &["-delay-machine-init"][..],
    ] {
        let (t, rss) = machina_startup(args, runs);
        println!(
            "qmp_times machina {}: start->greeting {} (median), VmRSS at greeting {rss} KiB",
            args.join(" "),
            ms(t)
        );
    }

    let vm = MachinaProcess::start(
        &machina(),
        "bench-qmp",
        &["-delay-machine-init".to_string()],
    );
    let mut qmp = QmpClient::connect(&vm.socket, LIMIT);
    qmp.ok("qmp_capabilities", Value::Null);
    let machines: Vec<String> = qmp
        .ok("query-machines", Value::Null)
        .as_array()
        .expect("machine list")
        .iter()
        .filter_map(|m| m["name"].as_str().map(str::to_string))
        .collect();
    // Raw lines from here: what is timed is the monitor, not this client's JSON parser.
    let mut raw = Raw::connect(&vm.socket);
    let mut rtts = Vec::with_capacity(round_trips);
    for _ in 0..round_trips {
        let t = Instant::now();
        let line = raw.round_trip("{\"execute\": \"query-status\"}\n");
        rtts.push(t.elapsed());
        assert!(line.contains("\"status\": \"prelaunch\""), "{line}");
    }
    println!(
        "qmp_times query-status round trip: {} (median of {round_trips})",
        ms(median(rtts))
    );

    let requests: Vec<String> = machines
        .iter()
        .map(|m| {
            let msg = json!({"execute": "x-query-machine-definition", "arguments": {"machine": m}});
            format!("{msg}\n")
        })
        .collect();
    let passes = if bench_mode { 20 } else { 1 };
    let mut totals = Vec::new();
    let mut first = None;
    let mut answers = Vec::new();
    for _ in 0..passes {
        answers.clear();
        let t = Instant::now();
        for request in &requests {
            answers.push(raw.round_trip(request));
        }
        let total = t.elapsed();
        first.get_or_insert(total);
        totals.push(total);
    }
    let t = Instant::now();
    let bytes: usize = answers.iter().map(String::len).sum();
    for (name, line) in machines.iter().zip(&answers) {
        let v: Value = serde_json::from_str(line).expect("JSON answer");
        assert!(v["return"]["machine"].is_string(), "{name}: {line}");
    }
    let parse = t.elapsed();
    println!(
        "qmp_times x-query-machine-definition of all {} machine types in one connection: {} \
         total (median of {passes} passes, first pass {}; goal < 10 ms); {} KiB of answers, \
         which this client's serde_json takes another {} to parse",
        machines.len(),
        ms(median(totals)),
        ms(first.unwrap_or_default()),
        bytes / 1024,
        ms(parse),
    );
    let _ = qmp.execute("quit", Value::Null);
    drop(vm);

    match qemu_startup(runs) {
        Some((version, t, rss)) => println!(
            "qmp_times QEMU ({version}) -M none -S -display none -nodefaults: \
             start->greeting {} (median), VmRSS at greeting {rss} KiB",
            ms(t)
        ),
        None => println!("qmp_times QEMU: qemu-system-x86_64 is not installed; comparison skipped"),
    }
}
