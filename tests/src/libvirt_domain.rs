//! One libvirt domain of the tiny guest run by machina under a private libvirtd, shared by
//! the libvirt test targets (tests/libvirt.rs: everyday virsh commands; tests/
//! libvirt_hotplug.rs: attach/detach --live): the domain's files and XML (from
//! tests/data/libvirt), virsh with failure context, waits on the guest's serial output.

use crate::libvirt::{Libvirtd, Tap};
use crate::RunResult;
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Hang guard for waits on the guest or a state change (the tiny guest needs about a second).
pub const WAIT: Duration = Duration::from_secs(180);

pub const DISK_SIZE: u64 = 1 << 20;
pub fn data(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/libvirt")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The emulator in `<emulator>`: machina (`machina`, the binary under test) unless
/// `MACHINA_LIBVIRT_EMULATOR=PATH` names another (e.g. QEMU, to check the harness itself).
pub fn emulator(machina: &std::path::Path) -> PathBuf {
    match std::env::var_os("MACHINA_LIBVIRT_EMULATOR") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => machina.to_path_buf(),
    }
}

/// Why this host cannot run the test, if it cannot.
pub fn skip_reason() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (libvirt's system driver, taps and mount namespaces need root)");
    }
    if !crate::kvm_available() {
        return Some("/dev/kvm is not usable");
    }
    None
}

/// One machine type's run: the daemon, the domain's files, and the failure context.
pub struct Run {
    pub machine: &'static str,
    pub name: String,
    pub lv: Libvirtd,
    pub emulator: PathBuf,
    /// machina's binary (the tiny guest's ELF is found next to its build).
    pub machina: PathBuf,
    pub disk: PathBuf,
    pub serial_log: PathBuf,
    pub mac: String,
    pub cmdline: String,
    pub tap: Tap,
    /// The `<controller>` lines (a file of tests/data/libvirt).
    pub controllers: String,
}

impl Run {
    pub fn step(&self, what: &str) {
        eprintln!("libvirt[{}]: {what}", self.machine);
    }

    pub fn fail(&self, step: &str, detail: &str) -> ! {
        panic!(
            "libvirt[{}] step `{step}` failed: {detail}\n{}",
            self.machine,
            self.lv.diagnostics(Some(&self.name))
        );
    }

    /// `virsh ARGS` must succeed; its stdout.
    pub fn virsh(&self, step: &str, args: &[&str]) -> String {
        let r = self.lv.virsh(args);
        if r.status != Some(0) {
            self.fail(step, &virsh_failure(args, &r));
        }
        r.stdout
    }

    pub fn domstate(&self) -> String {
        self.lv
            .virsh(&["domstate", &self.name])
            .stdout
            .trim()
            .to_string()
    }

    pub fn expect_state(&self, step: &str, want: &str) {
        let state = self.domstate();
        if state != want {
            self.fail(step, &format!("domain state `{state}`, expected `{want}`"));
        }
    }

    /// Wait until `done()`; fail early if the domain ends (when `while_running`), and at the
    /// hang guard.
    pub fn wait_for(&self, step: &str, what: &str, done: impl Fn() -> bool, while_running: bool) {
        let start = Instant::now();
        loop {
            if done() {
                return;
            }
            if while_running {
                // Transient states ("in shutdown" during a reboot) are fine; an ended domain
                // is not.
                let state = self.domstate();
                if (state == "shut off" || state == "crashed") && !done() {
                    self.fail(
                        step,
                        &format!(
                            "the domain is `{state}` while waiting for {what}\n--- serial:\n{}",
                            self.serial()
                        ),
                    );
                }
            }
            if start.elapsed() > WAIT {
                self.fail(
                    step,
                    &format!("no {what} within {WAIT:?}\n--- serial:\n{}", self.serial()),
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn serial(&self) -> String {
        std::fs::read_to_string(&self.serial_log).unwrap_or_default()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.serial().matches(needle).count()
    }

    /// QMP through libvirt: `virsh qemu-monitor-command DOMAIN JSON`, the `return` value.
    pub fn monitor(&self, step: &str, command: &str) -> Value {
        self.monitor_args(step, command, Value::Null)
    }

    /// `qemu-monitor-command` with arguments.
    pub fn monitor_args(&self, step: &str, command: &str, args: Value) -> Value {
        let mut msg = serde_json::json!({ "execute": command });
        if !args.is_null() {
            msg["arguments"] = args;
        }
        let json = msg.to_string();
        let out = self.virsh(step, &["qemu-monitor-command", &self.name, &json]);
        let v: Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| self.fail(step, &format!("answer is not JSON ({e}): {out}")));
        match v.get("return") {
            Some(r) => r.clone(),
            None => self.fail(step, &format!("no `return` in {out}")),
        }
    }

    pub fn pid(&self, step: &str) -> u32 {
        self.lv
            .domain_pid(&self.name)
            .unwrap_or_else(|| self.fail(step, "libvirt recorded no pid for the running domain"))
    }

    pub fn domain_xml(&self, serial: &str) -> String {
        let controllers = data(&self.controllers);
        let serial = data(serial).replace("@SERIAL_LOG@", &self.serial_log.display().to_string());
        let kernel = crate::paths::guest_elf(&self.machina);
        data("domain.xml")
            .replace("@CONTROLLERS@", controllers.trim_end())
            .replace("@SERIAL@", serial.trim_end())
            .replace("@NAME@", &self.name)
            .replace("@MACHINE@", self.machine)
            .replace("@KERNEL@", &kernel.display().to_string())
            .replace("@CMDLINE@", &self.cmdline)
            .replace("@EMULATOR@", &self.emulator.display().to_string())
            .replace("@DISK@", &self.disk.display().to_string())
            .replace("@MAC@", &self.mac)
            .replace("@TAP@", &self.tap.name)
    }

    /// Define the domain, or redefine it (same UUID) with another serial configuration.
    pub fn define(&self, step: &str, serial: &str) {
        let mut xml = self.domain_xml(serial);
        let known = self.lv.virsh(&["domuuid", &self.name]);
        if known.status == Some(0) {
            let uuid = format!("<uuid>{}</uuid>", known.stdout.trim());
            let name = format!("<name>{}</name>", self.name);
            xml = xml.replacen(&name, &format!("{name}\n  {uuid}"), 1);
        }
        let path = self.lv.root().join(format!("{}.xml", self.name));
        std::fs::write(&path, xml).expect("write the domain XML");
        self.virsh(step, &["define", &path.display().to_string()]);
    }
}

pub fn virsh_failure(args: &[&str], r: &RunResult) -> String {
    format!(
        "`virsh {}` exited {:?} after {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
        args.join(" "),
        r.status,
        r.elapsed,
        r.stdout,
        r.stderr
    )
}

/// The private libvirtd, tap and disk of one machine type's run, booting the tiny guest with
/// `cmdline` with the controllers of file `controllers`; None (after printing why) where
/// this host cannot run it.
pub fn setup(
    machina: &std::path::Path,
    machine: &'static str,
    tag: &str,
    cmdline: String,
    controllers: &str,
) -> Option<Run> {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP: libvirt test on {machine}: {why}");
        return None;
    }
    let guest = crate::paths::guest_elf(machina);
    assert!(
        guest.is_file(),
        "the tiny guest's ELF is missing: {}",
        guest.display()
    );
    let lv = Libvirtd::start(machine).unwrap_or_else(|e| panic!("libvirt[{machine}]: {e}"));
    let tap_name = format!("mlv{}{tag}{}", &machine[..1], std::process::id() % 100_000);
    let tap = Tap::create(&tap_name).unwrap_or_else(|e| panic!("libvirt[{machine}]: tap: {e}"));
    let disk = lv.root().join("disk.raw");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(DISK_SIZE))
        .expect("create the disk image");
    Some(Run {
        machine,
        name: format!("machina-{machine}{tag}"),
        emulator: emulator(machina),
        machina: machina.to_path_buf(),
        controllers: controllers.to_string(),
        serial_log: lv.root().join("serial.log"),
        disk,
        mac: format!(
            "52:54:00:6d:{:02x}:01",
            if machine == "q35" { 0x35 } else { 0x01 }
        ),
        cmdline,
        tap,
        lv,
    })
}
