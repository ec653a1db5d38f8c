//! How backends are opened: QEMU's image locks, one drive per device, nothing a user names
//! blocking the monitor (FIFOs), bounded reads of kernel/initrd/definition files, block
//! devices sized from the device, chardevs of a virtconsole opened or refused, unix sockets
//! private from the moment they exist, QEMU's aio and tap errors.

mod common;

use common::{machina, require_kvm};
use machina_tests::process::MachinaProcess;
use machina_tests::TempDir;
use serde_json::{json, Value};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const QEMU: &str = "/usr/bin/qemu-system-x86_64";

fn run(args: &[&str]) -> machina_tests::RunResult {
    machina_tests::run(&machina(), args, Duration::from_secs(60))
}

/// `args` exit 1 at once with `message` on stderr.
fn fails_with(args: &[&str], message: &str) {
    let r = run(args);
    r.check(r.status == Some(1), &format!("{args:?} exits 1"));
    r.check(
        r.stderr.contains(message),
        &format!("{args:?} says '{message}'"),
    );
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A machina held paused (-S) with `args`, up once its QMP greeting arrived.
fn holder(tag: &str, args: &[&str]) -> MachinaProcess {
    let mut all = strings(&["-S", "-nodefaults"]);
    all.extend(strings(args));
    let vm = MachinaProcess::start(&machina(), tag, &all);
    let _ = vm.raw_client();
    vm
}

fn image(dir: &Path, name: &str, size: u64) -> String {
    let path = dir.join(name);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(size).unwrap();
    path.display().to_string()
}

/// The OFD lock byte ranges held on `path`'s inode, from /proc/locks ("100 101", ...).
fn lock_ranges(path: &str) -> Vec<String> {
    let ino = std::fs::metadata(path).unwrap().ino();
    let locks = std::fs::read_to_string("/proc/locks").unwrap();
    let mut ranges: Vec<String> = locks
        .lines()
        .filter(|l| l.contains("OFDLCK") && l.contains(&format!(":{ino} ")))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {} {}", f[f.len() - 5], f[f.len() - 2], f[f.len() - 1])
        })
        .collect();
    ranges.sort();
    ranges
}

fn qemu_available() -> bool {
    if Path::new(QEMU).exists() {
        return true;
    }
    eprintln!("SKIP (QEMU part): {QEMU} is not installed");
    false
}

/// QEMU paused with `args`, once its devices exist; its stderr if it exited instead.
fn qemu(args: &[&str]) -> Result<std::process::Child, String> {
    let mut child = Command::new(QEMU)
        .args(["-display", "none", "-S", "-nodefaults", "-qmp", "stdio"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // QEMU greets before it creates devices; an answer to query-status means they exist.
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(
        &mut stdin,
        b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-status\"}\n",
    )
    .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let ready = lines.any(|l| l.is_ok_and(|l| l.contains("\"status\"")));
    if !ready {
        let out = child.wait_with_output().unwrap();
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    // Keep QEMU's stdin open (EOF on its monitor would not matter, but be explicit).
    std::mem::forget(stdin);
    Ok(child)
}

#[test]
fn images_are_locked_like_qemus_file_driver() {
    let dir = TempDir::new("locks");
    let img = image(&dir.path, "a.raw", 1 << 20);
    let drive = format!("file={img},if=none,id=d0,format=raw");
    let ro_drive = format!("{drive},readonly=on");
    let write_lock = "Failed to get \"write\" lock";
    let hint = format!("Is another process using the image [{img}]?");

    // A device on a read-write drive holds QEMU's bytes: perm 100 (consistent read) and 101
    // (write), and 201 (write not shared).
    let first = holder(
        "lock1",
        &["-drive", &drive, "-device", "virtio-blk-pci,drive=d0"],
    );
    assert_eq!(
        lock_ranges(&img),
        vec!["READ 100 101", "READ 201 201"],
        "lock bytes of machina {}",
        first.pid()
    );
    // 1-2: a second machina, read-write or read-only, is refused with QEMU's text and hint.
    let r = run(&[
        "-S",
        "-nodefaults",
        "-drive",
        &drive,
        "-device",
        "virtio-blk-pci,drive=d0",
    ]);
    r.check(r.status == Some(1), "second read-write user refused");
    r.check(
        r.stderr.contains(&format!(
            "-device virtio-blk-pci,drive=d0: {write_lock}\n{hint}"
        )),
        "QEMU's lock text and hint",
    );
    let r = run(&[
        "-S",
        "-nodefaults",
        "-drive",
        &ro_drive,
        "-device",
        "virtio-blk-pci,drive=d0",
    ]);
    r.check(r.status == Some(1), "read-only user refused while written");
    r.check(
        r.stderr.contains("Failed to get shared \"write\" lock") && r.stderr.contains(&hint),
        "QEMU's shared lock text",
    );
    // 3: the same through -blockdev.
    let node = format!("driver=file,node-name=f0,filename={img}");
    let r = run(&[
        "-S",
        "-nodefaults",
        "-blockdev",
        &node,
        "-device",
        "virtio-blk-pci,drive=f0",
    ]);
    r.check(
        r.status == Some(1) && r.stderr.contains(write_lock),
        "-blockdev user refused",
    );
    // A drive no device uses takes no lock (as in QEMU).
    let idle = holder("lock-idle", &["-drive", &drive]);
    drop(idle);
    // locking=off opts out (file.locking on -drive, locking on -blockdev driver=file).
    let off = holder(
        "lock-off",
        &[
            "-drive",
            &format!("{drive},file.locking=off"),
            "-device",
            "virtio-blk-pci,drive=d0",
        ],
    );
    drop(off);
    let off = holder(
        "lock-off2",
        &[
            "-blockdev",
            &format!("{node},locking=off"),
            "-device",
            "virtio-blk-pci,drive=f0",
        ],
    );
    drop(off);
    // 4: QEMU sees machina's lock.
    if qemu_available() {
        match qemu(&["-drive", &drive, "-device", "virtio-blk-pci,drive=d0"]) {
            Ok(mut q) => {
                let _ = q.kill();
                let _ = q.wait();
                panic!("QEMU opened an image machina has open read-write");
            }
            Err(stderr) => assert!(stderr.contains(write_lock), "QEMU says: {stderr}"),
        }
    }
    drop(first);

    // Read-only users share; a writer is refused while one reads.
    let ro1 = holder(
        "lock-ro1",
        &["-drive", &ro_drive, "-device", "virtio-blk-pci,drive=d0"],
    );
    assert_eq!(lock_ranges(&img), vec!["READ 100 100", "READ 201 201"]);
    let ro2 = holder(
        "lock-ro2",
        &["-drive", &ro_drive, "-device", "virtio-blk-pci,drive=d0"],
    );
    // 5: a writer while others read.
    fails_with(
        &[
            "-S",
            "-nodefaults",
            "-drive",
            &drive,
            "-device",
            "virtio-blk-pci,drive=d0",
        ],
        write_lock,
    );
    drop((ro1, ro2));

    // 6: machina sees QEMU's lock.
    if qemu_available() {
        let mut q = qemu(&["-drive", &drive, "-device", "virtio-blk-pci,drive=d0"])
            .expect("QEMU starts on a free image");
        let r = run(&[
            "-S",
            "-nodefaults",
            "-drive",
            &drive,
            "-device",
            "virtio-blk-pci,drive=d0",
        ]);
        let _ = q.kill();
        let _ = q.wait();
        r.check(
            r.status == Some(1) && r.stderr.contains(write_lock) && r.stderr.contains(&hint),
            "machina refuses an image QEMU has open read-write",
        );
    }
}

#[test]
fn a_drive_serves_one_device() {
    let dir = TempDir::new("onedrive");
    let img = image(&dir.path, "a.raw", 1 << 20);
    let drive = format!("file={img},if=none,id=d0,format=raw");
    // 1: on the command line (QEMU 7.2's text, naming the second -device).
    fails_with(
        &[
            "-S",
            "-nodefaults",
            "-drive",
            &drive,
            "-device",
            "virtio-blk-pci,drive=d0",
            "-device",
            "virtio-blk-pci,drive=d0,id=second",
        ],
        "-device virtio-blk-pci,drive=d0,id=second: Drive 'd0' is already in use by another device",
    );
    // 2: through device_add before the build; the configuration is unchanged after it.
    let vm = MachinaProcess::start(
        &machina(),
        "onedrive-qmp",
        &strings(&["-delay-machine-init", "-nodefaults"]),
    );
    let mut qmp = vm.client();
    qmp.ok(
        "blockdev-add",
        json!({"driver": "file", "node-name": "disk0", "filename": img}),
    );
    qmp.ok(
        "device_add",
        json!({"driver": "virtio-blk-pci", "id": "b1", "drive": "disk0"}),
    );
    let err = qmp.error(
        "device_add",
        json!({"driver": "virtio-blk-pci", "id": "b2", "drive": "disk0"}),
    );
    assert_eq!(err, "Drive 'disk0' is already in use by another device");
    let plan = qmp.ok("x-query-machine-definition", Value::Null);
    let ids: Vec<&Value> = plan["pci"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| &f["id"])
        .collect();
    assert!(
        ids.contains(&&json!("b1")) && !ids.contains(&&json!("b2")),
        "{ids:?}"
    );
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap().success();
    assert!(ok, "mkfifo {}", path.display());
}

#[test]
fn fifos_never_block_the_monitor() {
    let dir = TempDir::new("fifo");
    let fifo = dir.path.join("fifo");
    mkfifo(&fifo);
    let fifo_s = fifo.display().to_string();

    // 1: -object rng-random on a FIFO: QEMU takes it (opened non-blocking); so does machina,
    // and QMP answers.
    let vm = holder(
        "fifo-cli",
        &[
            "-object",
            &format!("rng-random,id=r0,filename={fifo_s}"),
            "-device",
            "virtio-rng-pci,rng=r0",
        ],
    );
    let mut qmp = vm.client();
    assert_eq!(qmp.ok("query-status", Value::Null)["status"], "prelaunch");
    drop(vm);

    let vm = MachinaProcess::start(
        &machina(),
        "fifo-qmp",
        &strings(&["-delay-machine-init", "-nodefaults"]),
    );
    let mut qmp = vm.client();
    // 2: object-add on a FIFO returns (the QMP client's read timeout is the hang guard).
    qmp.ok(
        "object-add",
        json!({"qom-type": "rng-random", "id": "r1", "filename": fifo_s}),
    );
    // 3: a FIFO as a read-only image is refused, QEMU's text.
    let err = qmp.error(
        "blockdev-add",
        json!({"driver": "file", "node-name": "f0", "filename": fifo_s, "read-only": true}),
    );
    assert_eq!(
        err,
        format!("'file' driver requires '{fifo_s}' to be a regular file")
    );
    // 4: a file chardev on a FIFO nobody reads: refused, not blocked on.
    let err = qmp.error(
        "chardev-add",
        json!({"id": "c1", "backend": {"type": "file", "data": {"out": fifo_s}}}),
    );
    assert!(
        err.starts_with(&format!("Could not open '{fifo_s}'")),
        "{err}"
    );
    // 5-6: a FIFO as kernel or initrd: machine-build is refused with QEMU's texts.
    if !require_kvm() {
        return;
    }
    let other = MachinaProcess::start(
        &machina(),
        "fifo-initrd",
        &strings(&["-delay-machine-init", "-nodefaults"]),
    );
    let mut qmp2 = other.client();
    qmp2.ok("x-machine-set", json!({"initrd": fifo_s}));
    let err = qmp2.error("machine-build", Value::Null);
    assert!(
        err.contains(&format!(
            "error reading initrd {fifo_s}: not a regular file"
        )),
        "{err}"
    );
    qmp.ok("x-machine-set", json!({"kernel": fifo_s}));
    let err = qmp.error("machine-build", Value::Null);
    assert!(
        err.contains(&format!(
            "could not load kernel '{fifo_s}': not a regular file"
        )),
        "{err}"
    );
    assert_eq!(qmp.ok("query-status", Value::Null)["status"], "prelaunch");
}

#[test]
fn reads_are_bounded() {
    let dir = TempDir::new("bounded");
    // 1-2: -machine-definition of a device or a file over the documented 16 MiB limit.
    fails_with(
        &["-machine-definition", "/dev/zero", "-M", "help"],
        "-machine-definition /dev/zero: cannot read machine definition file /dev/zero: not a regular file",
    );
    let big = image(&dir.path, "big.json", (16 << 20) + 1);
    fails_with(
        &["-machine-definition", &big, "-M", "help"],
        "larger than the limit of 16777216 bytes (16 MiB)",
    );
    if !require_kvm() {
        return;
    }
    // 3: -initrd of a device (QEMU reads /dev/zero until memory runs out).
    fails_with(
        &["-nodefaults", "-initrd", "/dev/zero"],
        "error reading initrd /dev/zero: not a regular file",
    );
    // 4: an initrd larger than guest RAM is refused before a byte is read (sparse: 1 GiB
    // that reads as zeros; the old code read all of it first).
    let huge = image(&dir.path, "huge.img", 1 << 30);
    let r = run(&["-nodefaults", "-m", "128", "-initrd", &huge]);
    r.check(r.status == Some(1), "exit 1");
    r.check(
        r.stderr
            .contains("initrd is too large, cannot support (max: ")
            && r.stderr.contains("need 1073741824)"),
        "QEMU's initrd is too large text",
    );
    // 5: the same through x-machine-set initrd.
    let vm = MachinaProcess::start(
        &machina(),
        "bounded-qmp",
        &strings(&["-delay-machine-init", "-nodefaults"]),
    );
    let mut qmp = vm.client();
    qmp.ok("x-machine-set", json!({"initrd": "/dev/zero"}));
    let err = qmp.error("machine-build", Value::Null);
    assert!(
        err.contains("error reading initrd /dev/zero: not a regular file"),
        "{err}"
    );
    // 6: a directory as kernel, QEMU's text.
    let dir_s = dir.path.display().to_string();
    fails_with(
        &["-nodefaults", "-kernel", &dir_s],
        &format!("could not load kernel '{dir_s}': Is a directory"),
    );
}

/// A loop device over a file of `size` bytes, detached when dropped.
struct Loop(String);

impl Loop {
    fn new(file: &str) -> Result<Loop, String> {
        let out = Command::new("losetup")
            .args(["-f", "--show", file])
            .output()
            .map_err(|e| format!("losetup: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Loop(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn a_block_device_shows_its_size_to_the_guest() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("blockdev");
    let file = image(&dir.path, "loop.img", 4 << 20);
    let dev = match Loop::new(&file) {
        Ok(dev) => dev,
        Err(e) => {
            eprintln!("SKIP: no loop device ({e})");
            return;
        }
    };
    for (option, spec) in [
        ("-drive", format!("file={},if=none,id=d0,format=raw", dev.0)),
        (
            "-blockdev",
            format!("driver=host_device,node-name=d0,filename={}", dev.0),
        ),
    ] {
        let r = run(&[
            "-nodefaults",
            "-serial",
            "stdio",
            option,
            &spec,
            "-device",
            "virtio-blk-pci,drive=d0",
            "-append",
            "machina.test=virtio",
        ]);
        r.check(r.status == Some(0), "exit 0");
        let lines = r.lines_with("virtio-blk: ");
        r.check(
            !lines.is_empty() && lines.iter().all(|l| l.contains("capacity=8192 ")),
            "4 MiB = 8192 sectors",
        );
        r.check(
            lines
                .iter()
                .all(|l| l.contains("write=ok read=ok match=yes")),
            "I/O works",
        );
    }
    // QEMU's driver rules for the device node: 'file' wants a regular file.
    fails_with(
        &[
            "-S",
            "-blockdev",
            &format!("driver=file,node-name=d0,filename={}", dev.0),
        ],
        &format!("'file' driver requires '{}' to be a regular file", dev.0),
    );
    fails_with(
        &[
            "-S",
            "-blockdev",
            &format!("driver=host_device,node-name=d0,filename={file}"),
        ],
        &format!("'host_device' driver requires '{file}' to be either a character or block device"),
    );
}

#[test]
fn virtconsole_chardevs_are_opened_or_refused() {
    let dir = TempDir::new("vcon");
    let serial = [
        "-device",
        "virtio-serial-pci",
        "-device",
        "virtconsole,chardev=c0",
    ];
    // 1: a file that cannot be created: QEMU's text under -chardev.
    let mut args = vec![
        "-S",
        "-nodefaults",
        "-chardev",
        "file,id=c0,path=/nonexistent/dir/log",
    ];
    args.extend(serial);
    fails_with(
        &args,
        "-chardev file,id=c0,path=/nonexistent/dir/log: Could not open '/nonexistent/dir/log': No such file or directory",
    );
    // 2: a client socket with nobody listening: QEMU's text, under -chardev.
    let absent = dir.path.join("absent.sock").display().to_string();
    let spec = format!("socket,id=c0,path={absent}");
    let mut args = vec!["-S", "-nodefaults", "-chardev", &spec];
    args.extend(serial);
    fails_with(
        &args,
        &format!("-chardev {spec}: Failed to connect to '{absent}': No such file or directory"),
    );
    // 3: a server socket exists, private, and takes a client.
    let path = dir.path.join("console.sock");
    let spec = format!("socket,id=c0,path={},server=on,wait=off", path.display());
    let mut args = vec!["-chardev", spec.as_str()];
    args.extend(serial);
    let vm = holder("vcon-server", &args);
    let meta = std::fs::symlink_metadata(&path).expect("the console socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    std::os::unix::net::UnixStream::connect(&path).expect("a client connects");
    drop(vm);
}

/// An inotify watch on everything that happens in `dir`.
fn watch(dir: &Path) -> std::fs::File {
    let cdir = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: inotify_init1 takes no pointers.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: `cdir` is a valid NUL-terminated path for the call.
    let wd = unsafe { libc::inotify_add_watch(fd, cdir.as_ptr(), libc::IN_ALL_EVENTS) };
    assert!(wd >= 0);
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) }
}

/// The (mask, name) events queued on `watch` so far.
fn events(watch: &mut std::fs::File) -> Vec<(u32, String)> {
    let mut buf = vec![0u8; 65536];
    let n = std::io::Read::read(watch, &mut buf).unwrap_or(0);
    let mut out = Vec::new();
    let mut at = 0;
    let header = std::mem::size_of::<libc::inotify_event>();
    while at + header <= n {
        let mask = u32::from_ne_bytes(buf[at + 4..at + 8].try_into().unwrap());
        let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
        let name = &buf[at + header..at + header + len];
        let name = String::from_utf8_lossy(name)
            .trim_end_matches('\0')
            .to_string();
        out.push((mask, name));
        at += header + len;
    }
    out
}

#[test]
fn unix_sockets_are_private_from_creation() {
    let dir = TempDir::new("sockmode");
    let qmp_path = dir.path.join("qmp.sock");
    let serial_path = dir.path.join("serial.sock");
    let mut watcher = watch(&dir.path);
    // umask 0: a socket created with the umask would be 0777 until changed.
    let script = format!(
        "umask 0; exec {} -S -nodefaults -qmp unix:{},server=on,wait=off -serial unix:{},server=on,wait=off",
        machina().display(),
        qmp_path.display(),
        serial_path.display()
    );
    let child = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed however the test ends (`sh` execs machina, so this is machina's pid).
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Kill(child);
    let client = machina_tests::qmp_client::QmpClient::connect(&qmp_path, Duration::from_secs(30));
    let modes: Vec<u32> = [&qmp_path, &serial_path]
        .iter()
        .map(|p| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777)
        .collect();
    drop(client);
    drop(child);
    assert_eq!(modes, vec![0o600, 0o600], "QMP and serial socket modes");
    // No window: once a socket's name appeared, its mode was never changed (a chmod after
    // bind shows as IN_ATTRIB on the name).
    let seen = events(&mut watcher);
    for name in ["qmp.sock", "serial.sock"] {
        let created = seen
            .iter()
            .position(|(m, n)| n == name && m & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0);
        let created = created.unwrap_or_else(|| panic!("{name} never created: {seen:?}"));
        assert!(
            !seen[created..]
                .iter()
                .any(|(m, n)| n == name && m & libc::IN_ATTRIB != 0),
            "{name} was chmod'ed after it existed: {seen:?}"
        );
    }
}

#[test]
fn aio_and_tap_errors_are_qemus() {
    let dir = TempDir::new("aio");
    let img = image(&dir.path, "a.raw", 1 << 20);
    let drive = format!("file={img},if=none,id=d0,format=raw");
    let native =
        "aio=native was specified, but it requires cache.direct=on, which was not specified.";
    // 1-3: aio=native without O_DIRECT (-drive, -blockdev), and a bad aio value.
    fails_with(
        &["-S", "-drive", &format!("{drive},aio=native")],
        &format!("-drive {drive},aio=native: {native}"),
    );
    fails_with(
        &[
            "-S",
            "-blockdev",
            &format!("driver=file,node-name=f0,filename={img},aio=native"),
        ],
        native,
    );
    fails_with(
        &["-S", "-drive", &format!("{drive},aio=bogus")],
        "invalid aio option",
    );
    // io_uring is refused as by a QEMU built without it (virtio-blk runs a thread pool).
    let uring = "aio=io_uring was specified, but is not supported in this build.";
    fails_with(
        &["-S", "-drive", &format!("{drive},aio=io_uring")],
        &format!("-drive {drive},aio=io_uring: {uring}"),
    );
    fails_with(
        &[
            "-S",
            "-blockdev",
            &format!("driver=file,node-name=f0,filename={img},aio=io_uring"),
        ],
        uring,
    );
    // 4-5: bad locking values, QEMU's texts.
    fails_with(
        &["-S", "-drive", &format!("{drive},file.locking=bogus")],
        "invalid parameter value: bogus",
    );
    fails_with(
        &[
            "-S",
            "-blockdev",
            &format!("driver=file,node-name=f0,filename={img},locking=bogus"),
        ],
        "Parameter 'locking' does not accept value 'bogus'",
    );
    // With cache.direct=on native AIO is accepted (where the filesystem takes O_DIRECT).
    let r = machina_tests::run_until(
        &machina(),
        &[
            "-S",
            "-nodefaults",
            "-drive",
            &format!("{drive},aio=native,cache.direct=on"),
        ],
        Duration::from_secs(5),
        |_| false,
    );
    r.check(
        !r.stderr.contains(native),
        "aio=native with cache.direct=on passes the aio check",
    );
    // 6: a tap that cannot be configured is reported under -netdev (QEMU's text), not by
    // the NIC that uses it.
    let netdev = "tap,id=n0,ifname=bad/name,script=no,downscript=no";
    fails_with(
        &[
            "-S",
            "-nodefaults",
            "-netdev",
            netdev,
            "-device",
            "virtio-net-pci,netdev=n0",
        ],
        &format!("-netdev {netdev}: could not configure /dev/net/tun (bad/name): "),
    );
}
