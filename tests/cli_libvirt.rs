//! The command lines libvirt generates, run for real: non-UTF-8 arguments (OS strings),
//! the capability probe (`-daemonize`, `-pidfile`), and a domain's command line with its
//! serial chardev on a file, a pty and a passed fd.

mod common;

use common::{machina, require_kvm, LIMIT};
use machina_tests::TempDir;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a run printed and how it ended (None: killed at the limit).
struct Outcome {
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn check(&self, cond: bool, what: &str) {
        assert!(
            cond,
            "{what}\n--- status: {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.status, self.stdout, self.stderr
        );
    }
}

/// Run machina with OS-string arguments, stdin null, killed after `limit`.
fn run_os(args: &[OsString], limit: Duration) -> Outcome {
    let mut child = Command::new(machina())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start machina");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Outcome {
        status,
        stdout: String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned(),
    }
}

fn os(s: &str) -> OsString {
    OsString::from(s)
}

fn os_bytes(parts: &[&[u8]]) -> OsString {
    OsString::from_vec(parts.concat())
}

#[test]
fn non_utf8_arguments_are_os_strings() {
    if !require_kvm() {
        return;
    }
    // A name with a byte that is not UTF-8: QEMU runs it; machina used to panic (exit 101).
    let r = run_os(
        &[
            os("-name"),
            os_bytes(&[b"ab\xffcd"]),
            os("-nodefaults"),
            os("-serial"),
            os("stdio"),
            os("-append"),
            os("machina.test=echo machina.echo=named"),
        ],
        LIMIT,
    );
    r.check(r.status == Some(0), "a non-UTF-8 -name runs and exits 0");
    r.check(r.stdout.contains("echo: named"), "the guest ran");

    // A disk whose path is not UTF-8 (Latin-1 'é'): opened by its bytes, and the guest's
    // writes land in that very file.
    let dir = TempDir::new("os-strings");
    let mut disk = dir.path.clone().into_os_string().into_vec();
    disk.extend_from_slice(b"/d\xe9.raw");
    let disk = std::path::PathBuf::from(OsString::from_vec(disk));
    std::fs::write(&disk, vec![0u8; 4 << 20]).expect("create the disk");
    let drive = os_bytes(&[
        b"file=",
        disk.as_os_str().as_bytes(),
        b",if=none,id=d0,format=raw",
    ]);
    let r = run_os(
        &[
            os("-M"),
            os("q35"),
            os("-nodefaults"),
            os("-serial"),
            os("stdio"),
            os("-drive"),
            drive,
            os("-device"),
            os("virtio-blk-pci,drive=d0,bus=pcie.0"),
            os("-append"),
            os("machina.test=virtio machina.blk-seed=3"),
        ],
        LIMIT,
    );
    r.check(r.status == Some(0), "the non-UTF-8 disk path runs");
    r.check(
        r.stdout.contains("write=ok read=ok match=yes flush=ok"),
        "the guest's disk I/O worked",
    );
    let data = std::fs::read(&disk).expect("read the disk back");
    let at = 16 * 512;
    r.check(
        (0..4096).all(|i| data[at + i] == machina_tests::guest_blk_pattern(3, 16, i)),
        "the guest's 4 KiB is in the file with the non-UTF-8 name",
    );
    // The error text shows such a path lossily, on one line, with status 1.
    let missing = os_bytes(&[b"file=/nonexistent/d\xe9.raw,if=none,id=d0,format=raw"]);
    let r = run_os(&[os("-drive"), missing], LIMIT);
    r.check(r.status == Some(1), "a missing non-UTF-8 path is an error");
    r.check(
        r.stderr
            .contains("Could not open '/nonexistent/d\u{fffd}.raw'"),
        "the error names the path",
    );
}

/// Whether process `pid` still exists (and is not a zombie).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_gone(pid: u32) -> bool {
    let start = Instant::now();
    while start.elapsed() < LIMIT {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(|s| os(s)).collect()
}

#[test]
fn libvirt_probe_daemonizes_with_a_locked_pidfile() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("probe");
    let d = dir.path.display().to_string();
    let probe = |monitor: &str, pidfile: &str| {
        args(&[
            "-S",
            "-no-user-config",
            "-nodefaults",
            "-nographic",
            "-machine",
            "none,accel=kvm:tcg",
            "-qmp",
            &format!("unix:{d}/{monitor},server=on,wait=off"),
            "-pidfile",
            &format!("{d}/{pidfile}"),
            "-daemonize",
        ])
    };
    // libvirt's capability probe: the command returns 0 once the monitor listens.
    let r = run_os(&probe("qmp.monitor", "qmp.pid"), LIMIT);
    r.check(r.status == Some(0), "the probe's parent exits 0");
    r.check(r.stderr.is_empty(), "nothing on stderr");
    let text = std::fs::read_to_string(dir.path.join("qmp.pid")).expect("the pid file exists");
    r.check(text.ends_with('\n'), "the pid file is one line");
    let pid: u32 = text.trim().parse().expect("the pid file holds a pid");
    r.check(alive(pid), "the daemon runs");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat.rsplit_once(") ").expect("stat").1.split(' ').collect();
    let (ppid, session): (u32, u32) = (fields[1].parse().unwrap(), fields[3].parse().unwrap());
    r.check(ppid != std::process::id(), "the daemon is not our child");
    r.check(
        session != std::process::id() && session != 0,
        "the daemon has a session of its own",
    );
    for fd in 0..3 {
        let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).expect("stdio fd");
        r.check(
            target == std::path::Path::new("/dev/null"),
            &format!("fd {fd} of the daemon is /dev/null"),
        );
    }
    // The monitor is reachable at once: it listened before the parent exited.
    let mut qmp = machina_tests::qmp_client::QmpClient::connect(
        &dir.path.join("qmp.monitor"),
        Duration::from_millis(1),
    );
    qmp.ok("qmp_capabilities", serde_json::Value::Null);
    let status = qmp.ok("query-status", serde_json::Value::Null);
    assert_eq!(status["status"], "prelaunch", "{status}");

    // A second instance on the same pid file fails with QEMU's text; the file is untouched.
    let r = run_os(&probe("qmp2.monitor", "qmp.pid"), LIMIT);
    r.check(r.status == Some(1), "a second instance exits 1");
    r.check(
        r.stderr.trim_end()
            == "machina: cannot create PID file: Cannot lock pid file: Resource temporarily unavailable",
        "QEMU's lock error, on one line",
    );
    assert_eq!(
        std::fs::read_to_string(dir.path.join("qmp.pid")).unwrap(),
        text
    );
    assert!(!dir.path.join("qmp2.monitor").exists(), "no second monitor");

    // quit: the daemon exits and removes its pid file and socket.
    qmp.ok("quit", serde_json::Value::Null);
    assert!(wait_gone(pid), "the daemon exits after quit");
    assert!(
        !dir.path.join("qmp.pid").exists(),
        "the pid file is removed"
    );
    assert!(
        !dir.path.join("qmp.monitor").exists(),
        "the socket is removed"
    );

    // Errors before the monitors listen: printed, and the invoking process exits 1.
    let cases: [(Vec<OsString>, String); 3] = [
        (
            args(&["-S", "-nodefaults", "-machine", "none", "-daemonize", "-pidfile", &format!("{d}/no/such/dir.pid")]),
            format!("machina: cannot create PID file: Could not create '{d}/no/such/dir.pid': No such file or directory"),
        ),
        (
            args(&["-S", "-nodefaults", "-machine", "pc,memory-backend=nope", "-daemonize"]),
            "machina: Memory backend 'nope' not found".into(),
        ),
        (
            args(&["-S", "-machine", "none", "-serial", "stdio", "-daemonize"]),
            "machina: -serial stdio: cannot use stdio with -daemonize".into(),
        ),
    ];
    for (line, message) in cases {
        let r = run_os(&line, LIMIT);
        r.check(r.status == Some(1), &format!("{line:?} exits 1"));
        r.check(
            r.stderr.trim_end() == message,
            &format!("{line:?}: {message}"),
        );
    }
}

/// Start machina with `fds` inherited (as libvirt passes its monitor socket and `-add-fd`
/// files), stdout piped.
/// A machina process killed when dropped, so that a failed assertion leaves nothing behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Child {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Child {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

fn spawn_with_fds(list: &[OsString], fds: Vec<i32>) -> Child {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(machina());
    command
        .args(list)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure only calls fcntl, which is async-signal-safe, between fork and
    // exec, to let these fds survive the exec.
    unsafe {
        command.pre_exec(move || {
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Child(command.spawn().expect("start machina"))
}

/// Poll `cond` until it holds or the hang guard expires.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < LIMIT {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The domain command line libvirt 9.0 writes for a q35 guest (issue 9), item by item:
/// `serial` is the chardev of the serial port, `monitor_fd` libvirt's listening socket.
fn domain_line(
    dir: &std::path::Path,
    monitor_fd: i32,
    serial: &[&str],
    tests: &str,
) -> Vec<OsString> {
    let d = dir.display();
    let mut line: Vec<String> = [
        "-name",
        "guest=m2,debug-threads=on",
        "-S",
        "-object",
        &format!(r#"{{"qom-type":"secret","id":"masterKey0","format":"raw","file":"{d}/master-key.aes"}}"#),
        "-machine",
        "pc-q35-10.2,usb=off,dump-guest-core=off,memory-backend=pc.ram",
        "-accel",
        "kvm",
        "-m",
        "256",
        "-object",
        r#"{"qom-type":"memory-backend-memfd","id":"pc.ram","size":268435456}"#,
        "-overcommit",
        "mem-lock=off",
        "-smp",
        "1,sockets=1,cores=1,threads=1",
        "-uuid",
        "5b527e88-b569-4732-a094-f2b6cc2aaa31",
        "-display",
        "none",
        "-no-user-config",
        "-nodefaults",
        "-chardev",
        &format!("socket,id=charmonitor,fd={monitor_fd},server=on,wait=off"),
        "-mon",
        "chardev=charmonitor,id=monitor,mode=control",
        "-rtc",
        "base=utc",
        "-boot",
        "strict=on",
        "-device",
        "pcie-root-port,port=8,chassis=1,id=pci.1,bus=pcie.0,addr=0x1",
        "-blockdev",
        &format!(r#"{{"driver":"file","filename":"{d}/disk.raw","node-name":"libvirt-1-storage","auto-read-only":true,"discard":"unmap"}}"#),
        "-blockdev",
        r#"{"node-name":"libvirt-1-format","read-only":false,"driver":"raw","file":"libvirt-1-storage"}"#,
        "-device",
        "virtio-blk-pci,bus=pci.1,addr=0x0,drive=libvirt-1-format,id=virtio-disk0,bootindex=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    line.extend(serial.iter().map(|s| s.to_string()));
    line.extend(
        [
            "-device",
            "isa-serial,chardev=charserial0,id=serial0,index=0",
            "-audiodev",
            r#"{"id":"audio1","driver":"none"}"#,
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            "-msg",
            "timestamp=on",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    line.extend([
        "-append".to_string(),
        format!("machina.test={tests} machina.blk-seed=4"),
    ]);
    line.into_iter().map(OsString::from).collect()
}

/// The files a domain needs: a master key, a disk, and libvirt's monitor socket.
fn domain_files(dir: &std::path::Path) -> std::os::unix::net::UnixListener {
    std::fs::write(dir.join("master-key.aes"), [0x5au8; 32]).expect("master key");
    std::fs::write(dir.join("disk.raw"), vec![0u8; 4 << 20]).expect("disk");
    std::os::unix::net::UnixListener::bind(dir.join("monitor.sock")).expect("monitor socket")
}

#[test]
fn libvirt_domain_line_with_the_serial_on_a_passed_file() {
    use std::os::fd::AsRawFd;
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("domain-file");
    let monitor = domain_files(&dir.path);
    // libvirt opens the log itself (append) and passes the fd; the path never appears on
    // the command line. What was there before stays (append=on).
    let log = dir.path.join("serial0.log");
    std::fs::write(&log, "previous boot\n").unwrap();
    let serial = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .expect("open the log");
    let serial_fd = serial.as_raw_fd().to_string();
    let line = domain_line(
        &dir.path,
        monitor.as_raw_fd(),
        &[
            "-add-fd",
            &format!("set=0,fd={serial_fd},opaque=serial0-source"),
            "-chardev",
            "file,id=charserial0,path=/dev/fdset/0,append=on",
        ],
        "pci-scan,virtio",
    );
    let mut child = spawn_with_fds(&line, vec![monitor.as_raw_fd(), serial.as_raw_fd()]);
    drop(serial);
    let pid = child.id();
    let mut qmp =
        machina_tests::qmp_client::QmpClient::connect(&dir.path.join("monitor.sock"), LIMIT);
    qmp.ok("qmp_capabilities", serde_json::Value::Null);
    assert_eq!(
        qmp.ok("query-status", serde_json::Value::Null)["status"],
        "prelaunch"
    );
    // Guest RAM is the memfd backend's: its mapping is in the process's maps.
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(
        maps.contains("memfd:machina:pc.ram"),
        "guest RAM is the memfd"
    );
    // The -add-fd original is closed once the machine is set up, as QEMU does: the log is
    // open twice, as the set's duplicate and as the serial port's chardev.
    let on_log = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| *target == log)
        .count();
    assert_eq!(on_log, 2, "the inherited -add-fd fd {serial_fd} is closed");
    qmp.ok("cont", serde_json::Value::Null);
    let done = eventually(|| std::fs::read_to_string(&log).is_ok_and(|t| t.contains("poweroff:")));
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        done,
        "the guest's console reached the file\n{text}\n{stderr}"
    );
    assert!(text.starts_with("previous boot\nmachina-guest: "), "{text}");
    assert!(
        text.contains("pci: 01:00.0 1af4:1042"),
        "the disk behind the root port: {text}"
    );
    assert!(
        text.contains("write=ok read=ok match=yes flush=ok"),
        "disk I/O: {text}"
    );
}

#[test]
fn libvirt_domain_line_with_the_serial_on_a_pty() {
    use std::io::BufRead;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("domain-pty");
    let monitor = domain_files(&dir.path);
    // The guest waits for the power button after its tests: a pty's unread output is gone
    // once the process exits (the master closes), so the test reads before pressing it.
    let line = domain_line(
        &dir.path,
        monitor.as_raw_fd(),
        &["-chardev", "pty,id=charserial0"],
        "pci-scan,virtio,powerbutton",
    );
    let mut child = spawn_with_fds(&line, vec![monitor.as_raw_fd()]);
    // QEMU's announcement names the pty.
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("read stdout");
    let path = first
        .trim_end()
        .strip_prefix("char device redirected to ")
        .and_then(|rest| rest.strip_suffix(" (label charserial0)"))
        .unwrap_or_else(|| panic!("announcement: {first:?}"))
        .to_string();
    let pty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&path)
        .expect("open the pty");
    let mut qmp =
        machina_tests::qmp_client::QmpClient::connect(&dir.path.join("monitor.sock"), LIMIT);
    qmp.ok("qmp_capabilities", serde_json::Value::Null);
    qmp.ok("cont", serde_json::Value::Null);
    let mut seen = Vec::new();
    let done = eventually(|| {
        let mut buf = [0u8; 4096];
        if let Ok(n) = (&pty).read(&mut buf) {
            seen.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&seen).contains("powerbutton: waiting")
    });
    qmp.ok("system_powerdown", serde_json::Value::Null);
    let start = Instant::now();
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = String::from_utf8_lossy(&seen);
    assert!(done, "the guest's console reached the pty: {text}");
    assert!(text.starts_with("machina-guest: "), "raw output: {text}");
    assert!(text.contains("pci: 01:00.0 1af4:1042"), "{text}");
    assert!(
        text.contains("write=ok read=ok match=yes flush=ok"),
        "disk I/O: {text}"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "the guest powered off at the button: {status:?}"
    );
}

#[test]
fn libvirt_option_errors_use_qemus_texts() {
    let dir = TempDir::new("option-errors");
    let d = dir.path.display().to_string();
    std::fs::write(dir.path.join("key"), "c2VjcmV0").unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["-uuid", "xyz"], "machina: -uuid xyz: failed to parse UUID string: wrong format"),
        (
            &["-rtc", "base=2006-06-17x"],
            "machina: -rtc base=2006-06-17x: invalid datetime format (valid formats: '2006-06-17T16:01:21' or '2006-06-17')",
        ),
        (&["-rtc", "clock=foo"], "machina: -rtc clock=foo: invalid option value 'foo'"),
        (
            &["-rtc", "base=localtime,driftfix=slew"],
            "machina: -rtc base=localtime,driftfix=slew: machina's RTC does not re-inject lost ticks: driftfix=slew is not supported",
        ),
        (&["-boot", "order=z"], "machina: Invalid boot device 'z'"),
        (&["-boot", "menu=foo"], "machina: Parameter 'boot.menu' expects 'on' or 'off'"),
        (&["-boot", "bogus=1"], "machina: Parameter 'boot.bogus' is unexpected"),
        (&["-overcommit", "mem-lock=foo"], "machina: -overcommit mem-lock=foo: Parameter 'mem-lock' expects 'on' or 'off'"),
        (&["-sandbox", "on,obsolete=maybe"], "machina: -sandbox on,obsolete=maybe: invalid argument for obsolete"),
        (&["-sandbox", "foo"], "machina: -sandbox foo: Parameter 'enable' expects 'on' or 'off'"),
        (&["-msg", "foo=bar"], "machina: -msg foo=bar: Invalid parameter 'foo'"),
        (&["-audiodev", "foo,id=a"], "machina: -audiodev foo,id=a: Parameter 'driver' does not accept value 'foo'"),
        (&["-audiodev", "none"], "machina: -audiodev none: Parameter 'id' is missing"),
        (&["-name", "guest=x,bogus=1"], "machina: -name guest=x,bogus=1: Invalid parameter 'bogus'"),
        (&["-add-fd", "set=0,fd=1"], "machina: -add-fd set=0,fd=1: fd cannot be a standard I/O stream"),
        (&["-add-fd", "set=0,fd=900"], "machina: -add-fd set=0,fd=900: fd is not valid or already in use"),
        (&["-add-fd", "set=0"], "machina: -add-fd set=0: fd option is required and must be non-negative"),
        (
            &["-chardev", "file,id=x,path=/dev/fdset/3"],
            "machina: -chardev file,id=x,path=/dev/fdset/3: Could not open '/dev/fdset/3': No such file or directory",
        ),
        (&["-chardev", "bogus,id=c0"], "machina: -chardev bogus,id=c0: 'bogus' is not a valid char driver name"),
        (&["-chardev", "file,id=c0"], "machina: -chardev file,id=c0: chardev: file: no filename given"),
        (&["-machine", "pc,memory-backend=nope"], "machina: Memory backend 'nope' not found"),
        (&["-mon", "chardev=missing"], "machina: -mon chardev=missing: chardev \"missing\" not found"),
        (
            &["-chardev", "null,id=m", "-mon", "chardev=m"],
            "machina: -mon chardev=m: machina has no human monitor (HMP): use mode=control for QMP",
        ),
        (
            &["-chardev", "null,id=m", "-mon", "chardev=m,mode=bogus"],
            "machina: -mon chardev=m,mode=bogus: Parameter 'mode' does not accept value 'bogus'",
        ),
        (&["-audio", "none,model=hda"], "machina: -audio none,model=hda: machina has no sound devices: 'model' is not supported"),
        (
            &["-machine", "pc,memory-backend=r", "-object", "memory-backend-ram,id=r,size=64M", "-m", "128"],
            "machina: Machine memory size does not match the size of the memory backend",
        ),
        (&["-object", "memory-backend-ram,id=r"], "machina: -object memory-backend-ram,id=r: Parameter 'size' is missing"),
        (&["-object", "secret,id=s"], "machina: Either 'file' or 'data' must be provided"),
        (&["-object", "secret,id=s,data=@@,format=base64"], "machina: Base64 data contains invalid characters"),
        (
            &["-object", "secret,id=s,file=/nonexistent"],
            "machina: Unable to read /nonexistent: Failed to open file “/nonexistent”: No such file or directory",
        ),
    ];
    for (line, message) in cases {
        let mut full = vec!["-S", "-nodefaults", "-machine", "none"];
        // These set the machine type themselves.
        if line.first() == Some(&"-machine") {
            full.truncate(2);
        }
        full.extend_from_slice(line);
        let r = run_os(&args(&full), LIMIT);
        r.check(r.status == Some(1), &format!("{line:?} exits 1"));
        r.check(
            r.stderr.trim_end() == *message,
            &format!("{line:?}: {message}"),
        );
    }
    // A secret file is read (a good one passes), and `-msg timestamp=on` prefixes errors
    // that come after option parsing with the UTC time, as QEMU's error_report.
    let secret = format!("secret,id=s,format=base64,file={d}/key");
    let r = run_os(
        &args(&[
            "-msg",
            "timestamp=on",
            "-nodefaults",
            "-S",
            "-object",
            &secret,
            "-machine",
            "pc,memory-backend=nope",
        ]),
        LIMIT,
    );
    r.check(r.status == Some(1), "exits 1");
    let (stamp, rest) = r.stderr.trim_end().split_once(' ').expect("a prefix");
    r.check(
        rest == "machina: Memory backend 'nope' not found",
        "the message follows the time",
    );
    let b = stamp.as_bytes();
    r.check(
        b.len() == 27
            && b[4] == b'-'
            && b[10] == b'T'
            && b[19] == b'.'
            && b[26] == b'Z'
            && stamp[..4].parse::<u32>().is_ok_and(|y| y >= 2024),
        &format!("an ISO 8601 UTC time with microseconds: {stamp}"),
    );
}

#[test]
fn guest_ram_comes_from_a_shared_file_backend() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("mem-file");
    let ram = dir.path.join("guest.ram");
    let backend = format!(
        "memory-backend-file,id=pc.ram,size=64M,share=on,mem-path={}",
        ram.display()
    );
    // -m defaults to the backend's size, as in QEMU.
    let r = run_os(
        &args(&[
            "-nodefaults",
            "-M",
            "q35,memory-backend=pc.ram",
            "-object",
            &backend,
            "-serial",
            "stdio",
            "-append",
            "machina.test=echo machina.echo=ram-marker-6b1f",
        ]),
        LIMIT,
    );
    r.check(r.status == Some(0), "the guest runs from the file's memory");
    r.check(r.stdout.contains("echo: ram-marker-6b1f"), "the guest ran");
    // share=on: what was loaded into guest RAM (the kernel command line) is in the file.
    let data = std::fs::read(&ram).expect("the backing file");
    assert_eq!(data.len(), 64 << 20, "the file is the backend's size");
    let marker = b"machina.echo=ram-marker-6b1f";
    assert!(
        data.windows(marker.len()).any(|w| w == marker),
        "guest RAM is the file"
    );
}

#[test]
fn mem_lock_on_locks_the_guest_ram() {
    if !require_kvm() {
        return;
    }
    let mut vm = machina_tests::process::MachinaProcess::start(
        &machina(),
        "mem-lock",
        &[
            "-S",
            "-nodefaults",
            "-m",
            "64",
            "-overcommit",
            "mem-lock=on",
        ]
        .map(String::from),
    );
    let mut qmp = vm.client();
    qmp.ok("query-status", serde_json::Value::Null);
    let status = std::fs::read_to_string(format!("/proc/{}/status", vm.pid())).unwrap();
    let locked_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmLck");
    assert!(
        locked_kib >= 64 << 10,
        "all guest RAM is locked: {locked_kib} KiB"
    );
    qmp.ok("quit", serde_json::Value::Null);
    assert_eq!(vm.wait_exit(LIMIT), Some(0));
}

#[test]
fn rtc_base_sets_the_guests_clock() {
    use machina_tests::qtest_client::Qtest;
    // Read the RTC as a guest would (index 0x70, data 0x71), through qtest.
    let year_month = |base: &str| {
        let mut q = Qtest::start(
            &machina(),
            &["-M", "q35", "-nodefaults", "-rtc", &format!("base={base}")].map(String::from),
        );
        let mut reg = |r: u8| {
            assert_eq!(q.cmd(&format!("outb 0x70 {r:#x}")), "OK");
            q.value("inb 0x71")
        };
        (reg(0x32), reg(0x09), reg(0x08))
    };
    // BCD century, year, month of a start date: the clock starts there, as QEMU's.
    assert_eq!(year_month("2006-06-17T16:01:21"), (0x20, 0x06, 0x06));
    assert_eq!(year_month("1999-12-01"), (0x19, 0x99, 0x12));
    let (century, _, _) = year_month("utc");
    assert_eq!(century, 0x20, "utc is the host's clock");
}

#[test]
fn libvirt_domain_line_with_the_serial_on_a_passed_listening_socket() {
    use std::io::Read as _;
    use std::os::fd::AsRawFd;
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("domain-socket");
    let monitor = domain_files(&dir.path);
    // `<serial type='unix' mode='bind'>`: libvirt binds the socket and passes its fd.
    let serial = std::os::unix::net::UnixListener::bind(dir.path.join("serial.sock")).unwrap();
    let line = domain_line(
        &dir.path,
        monitor.as_raw_fd(),
        &[
            "-chardev",
            &format!(
                "socket,id=charserial0,fd={},server=on,wait=off",
                serial.as_raw_fd()
            ),
        ],
        "pci-scan,powerbutton",
    );
    let mut child = spawn_with_fds(&line, vec![monitor.as_raw_fd(), serial.as_raw_fd()]);
    let mut qmp =
        machina_tests::qmp_client::QmpClient::connect(&dir.path.join("monitor.sock"), LIMIT);
    qmp.ok("qmp_capabilities", serde_json::Value::Null);
    let sockets = || {
        std::fs::read_dir(format!("/proc/{}/fd", child.id()))
            .map(|d| {
                d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .filter(|t| t.to_string_lossy().starts_with("socket:"))
                    .count()
            })
            .unwrap_or(0)
    };
    let before = sockets();
    let mut console =
        std::os::unix::net::UnixStream::connect(dir.path.join("serial.sock")).expect("connect");
    console.set_read_timeout(Some(LIMIT)).unwrap();
    // The client is attached (accepted: machina holds more sockets) before the guest runs,
    // so it gets everything the guest prints.
    assert!(
        eventually(|| sockets() > before),
        "the console client is accepted"
    );
    qmp.ok("cont", serde_json::Value::Null);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("powerbutton: waiting") {
        match console.read(&mut buf) {
            Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&seen).into_owned();
    qmp.ok("system_powerdown", serde_json::Value::Null);
    let _ = child.wait();
    assert!(text.contains("pci: 01:00.0 1af4:1042"), "{text}");
    assert!(text.contains("powerbutton: waiting"), "{text}");
}
