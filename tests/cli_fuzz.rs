//! A bounded randomised test of the command line: argument vectors built from machina's
//! real option names and values, then mutated (cut, doubled commas, stray `=`, huge and
//! negative numbers, duplicate keys, bytes that are not UTF-8). Each vector goes through
//! `vmm::cli::parse` and `vmm::config::prepare` — exactly what `machina` does before it
//! builds anything — in process; a sample of the refused ones also runs as a process.
//!
//! Asserted: no panic; every refusal is one non-empty line that starts with the option
//! that was wrong, or (QEMU's texts without an option) quotes the parameter; a process run of a refusal exits 1 with that same line.
//! The seed is printed; `MACHINA_CLI_FUZZ_SEED=N` reproduces a run and
//! `MACHINA_CLI_FUZZ_ITERS=N` sets its length (default 4000 vectors, 60 process runs).

mod common;

use common::machina;
use machina_tests::rng::XorShift;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

/// Options with realistic values (valid and invalid), from machina's --help and QEMU's use.
const OPTIONS: &[(&str, &[&str])] = &[
    ("-machine", &["q35", "pc", "none", "q35,usb=off", "pc,acpi=off", "q35,help", "type=q35,smm=off", "q35,usb", "q35,max-ram-below-4g=2G", "q35,accel=kvm", "nosuch", "q35,foo=bar", "pc-q35-10.2,dump-guest-core=off"]),
    ("-m", &["256", "3.9G", "1025K", "129k", "1T", "0", "", "256,foo=bar", "size=256,slots=2,maxmem=1G", "256,maxmem=128M", "256,slots=2", "16E", "-1", "1.5", "0x100", "18446744073709551615", "256,maxmem=1G,slots=300"]),
    ("-smp", &["1", "2", "4,sockets=2,cores=2", "0", "300", "2,maxcpus=1", "abc", "cpus=2,threads=2"]),
    ("-device", &["virtio-rng-pci", "e1000", "isa-serial", "isa-serial,index=10", "isa-serial,iobase=0x600", "isa-serial,irq=16", "isa-serial,bus=pci.0", "virtio-rng-pci,bus=isa.0", "virtio-serial-pci,max_ports=0", "virtio-rng-pci,period=0", "pcie-root-port,id=rp1,chassis=1", "virtio-net-pci,bus=rp1", "pci-bridge,chassis_nr=1,id=b1", "e1000,addr=0x1f", "virtio-blk-pci,drive=d0,queue-size=3", "virtio-blk-pci,drive=d0,logical_block_size=513", "virtconsole,chardev=c0", "help", "e1000,help", "{\"driver\":\"virtio-rng-pci\",\"multifunction\":\"on\"}", "{\"driver\":\"virtio-rng-pci\",\"id\":\"a\",\"id\":\"b\"}", "{\"driver\":5}", "{\"driver\":\"e1000\",\"addr\":300}", "nosuch"]),
    ("-drive", &["if=none,id=d0,file=/nonexistent/d.img,format=raw", "file=/dev/null,if=none,id=d0,format=raw", "if=virtio,file=x", "id=d0"]),
    ("-blockdev", &["driver=file,node-name=f0,filename=/dev/null", "{\"driver\":\"file\",\"node-name\":\"f0\",\"filename\":5}", "{\"driver\":\"file\",\"node-name\":\"f0\",\"filename\":\"/dev/null\",\"read-only\":\"yes\"}", "driver=raw,node-name=r0,file=f0", "node-name=x"]),
    ("-netdev", &["user,id=n0", "bogus,id=n0", "tap", "tap,id=n0,script=/bin/true", "socket,id=n1"]),
    ("-chardev", &["null,id=c0", "file,id=c0", "bogus,id=c0", "stdio,id=c1", "socket,id=s0,path=/nonexistent/s,server=on,wait=off", "null", "ringbuf,id=c2", "null,id=1a"]),
    ("-mon", &["chardev=c0,mode=control", "chardev=missing,mode=control", "chardev=c0,mode=readline", "chardev=c0", "mode=control", "chardev=c0,mode=bogus"]),
    ("-object", &["rng-random,id=r0,filename=/dev/urandom", "rng-random,id=r0,filename=/nonexistent", "memory-backend-ram,id=m0,size=128M", "bogus,id=o0", "secret"]),
    ("-serial", &["stdio", "null", "none", "file:/nonexistent/x", "bogus:x", "unix:/nonexistent/s", "mon:stdio"]),
    ("-vga", &["none", "std", "cirrus", "bogus", "none,x=y"]),
    ("-nic", &["none", "user", "bogus", "none,model=e1000"]),
    ("-net", &["none", "nic", "bogus"]),
    ("-qmp", &["stdio", "bogus:x", "unix:", "tcp:localhost:notaport,server=on"]),
    ("-accel", &["kvm", "tcg", "qtest", "kvm,thread=single"]),
    ("-display", &["none", "gtk", "none,gl=off"]),
    ("-name", &["vm1", "guest=vm1,debug-threads=on", ""]),
    ("-kernel", &["/nonexistent/bzImage"]),
    ("-append", &["console=ttyS0", ""]),
    ("-machine-definition", &["/nonexistent/defs.json"]),
    ("-qtest", &["stdio", "unix:/nonexistent/q"]),
    // libvirt's domain options.
    ("-uuid", &["c0ffee00-0000-4000-8000-000000000001", "not-a-uuid"]),
    ("-rtc", &["base=utc", "base=localtime,driftfix=slew", "bogus"]),
    ("-boot", &["strict=on", "menu=on", "order=x"]),
    ("-overcommit", &["mem-lock=off", "cpu-pm=on", "bogus"]),
    ("-msg", &["timestamp=on", "bogus=1"]),
    ("-audiodev", &["none,id=a0", "pa,id=a1"]),
    ("-sandbox", &["off", "on,obsolete=deny"]),
];

/// QEMU's texts that name no option, allowed to stay that way.
const UNPREFIXED: &[&str] = &[
    "Invalid SMP CPUs",
    "Invalid CPU topology",
    "Invalid boot device",
];

const FLAGS: &[&str] = &[
    "-nodefaults",
    "-S",
    "-no-reboot",
    "-nographic",
    "-no-user-config",
    "-delay-machine-init",
    "-bogus",
    "--version",
    "-help",
    "stray",
];

/// One argument vector: a few options, each maybe mutated.
fn vector(rng: &mut XorShift) -> Vec<OsString> {
    let mut argv: Vec<OsString> = Vec::new();
    for _ in 0..1 + rng.index(5) {
        if rng.index(6) == 0 {
            argv.push((*rng.pick(FLAGS)).into());
            continue;
        }
        let (name, values) = OPTIONS[rng.index(OPTIONS.len())];
        argv.push(name.into());
        // Sometimes the value is missing altogether (the option ends the vector).
        if rng.index(40) == 0 {
            break;
        }
        let value = *rng.pick(values);
        argv.push(mutate(rng, value));
    }
    argv
}

fn mutate(rng: &mut XorShift, value: &str) -> OsString {
    let mut bytes = value.as_bytes().to_vec();
    match rng.index(10) {
        0 if !bytes.is_empty() => bytes.truncate(rng.index(bytes.len())),
        1 => bytes.extend_from_slice(b",,"),
        2 => bytes.extend_from_slice(b",="),
        3 => bytes.extend_from_slice(format!(",size={}", rng.next_u64()).as_bytes()),
        4 => {
            // A byte that is not UTF-8 somewhere.
            let at = rng.index(bytes.len() + 1);
            bytes.insert(at, 0xff);
        }
        5 => bytes.extend_from_slice(b",id=x,id=y"),
        6 => {
            let n = [
                "-1",
                "0",
                "4294967296",
                "18446744073709551616",
                "0x",
                "1e99",
            ];
            bytes.extend_from_slice(format!(",index={}", n[rng.index(n.len())]).as_bytes());
        }
        _ => {}
    }
    OsString::from_vec(bytes)
}

/// The option names in an argument vector (what a message may name).
fn options_in(argv: &[OsString]) -> Vec<String> {
    argv.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .filter(|a| a.starts_with('-') || a == "stray")
        .collect()
}

/// What machina would print for `argv`, or None when it would go on to build a machine
/// (or print help); panics propagate.
fn outcome(argv: &[OsString]) -> Option<String> {
    let opts = match vmm::cli::parse(argv.iter().cloned()) {
        Ok(o) => o,
        Err(e) => return Some(e.to_string()),
    };
    let mut catalog = machine::Catalog::builtin().clone();
    for path in &opts.machine_definitions {
        if let Err(e) = catalog.load_file(path) {
            return Some(format!("-machine-definition {}: {e}", path.display()));
        }
    }
    if opts.action != vmm::cli::Action::Run {
        return None;
    }
    vmm::config::prepare(&opts, &catalog).err()
}

#[test]
fn command_line_fuzz() {
    let seed = std::env::var("MACHINA_CLI_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    let iterations: usize = std::env::var("MACHINA_CLI_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4000);
    eprintln!(
        "cli fuzz: seed {seed} (MACHINA_CLI_FUZZ_SEED={seed} reproduces), {iterations} vectors"
    );
    let mut rng = XorShift(seed);
    let mut refusals: Vec<(Vec<OsString>, String)> = Vec::new();
    // Refusals that do not start with their option, by their text up to the first quote.
    let mut unprefixed: std::collections::BTreeSet<String> = Default::default();
    let mut accepted = 0;
    for i in 0..iterations {
        let argv = vector(&mut rng);
        let shown: Vec<String> = argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let result = catch_unwind(AssertUnwindSafe(|| outcome(&argv)));
        let message = match result {
            Ok(Some(m)) => m,
            Ok(None) => {
                accepted += 1;
                continue;
            }
            Err(_) => panic!("vector {i} (seed {seed}) panicked: {shown:?}"),
        };
        assert!(
            !message.is_empty() && !message.contains('\n'),
            "vector {i} (seed {seed}) {shown:?}: not one line: {message:?}"
        );
        // The option comes first, as in `-m 256,foo=bar: Invalid parameter 'foo'`, or, where
        // QEMU's own text names no option, the parameter is quoted ("Either 'file' or
        // 'data' must be provided", "Parameter 'boot.size' is unexpected"); QEMU's
        // machine-level -smp texts and its -boot order text are the only others.
        let named = options_in(&argv)
            .iter()
            .any(|o| message.starts_with(o.as_str()))
            || message.contains('\'')
            || UNPREFIXED.iter().any(|p| message.starts_with(p));
        assert!(
            named,
            "vector {i} (seed {seed}) {shown:?}: names no option or parameter: {message}"
        );
        if !message.starts_with('-') && !message.starts_with("stray") {
            unprefixed.insert(message.split('\'').next().unwrap_or_default().to_string());
        }
        refusals.push((argv, message));
    }
    eprintln!(
        "cli fuzz: {} refused, {accepted} accepted (would build or print help); kinds of refusal not prefixed by their option: {unprefixed:?}",
        refusals.len()
    );
    // A sample of the refusals as real processes: exit 1 and the same line.
    let runs = refusals.len().min(60);
    let step = (refusals.len() / runs.max(1)).max(1);
    for (argv, message) in refusals.iter().step_by(step).take(runs) {
        let args: Vec<&std::ffi::OsStr> = argv.iter().map(|a| a.as_os_str()).collect();
        let r = run_os(&args);
        assert_eq!(r.0, Some(1), "{argv:?}: exit status (seed {seed})");
        // One line, the same text (after the timestamp `-msg timestamp=on` puts first).
        let line = r.1.trim_end();
        assert!(
            !line.contains('\n') && line.ends_with(format!("machina: {message}").trim_end()),
            "{argv:?} (seed {seed}): {line:?} vs {message:?}"
        );
    }
    eprintln!("cli fuzz: {runs} refusals checked as processes");
}

/// Run machina with OS-string arguments; (status, stderr). No guest can start: every
/// vector here was refused before anything is built.
fn run_os(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(machina())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("machina starts");
    let start = std::time::Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return (status.code(), err);
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            return (None, "timed out".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
