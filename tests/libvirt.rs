//! Debian's libvirt (9.0, QEMU driver) runs machina, with no wrapper between them: a private
//! libvirtd (tests/src/libvirt.rs) probes machina's capabilities, defines and starts a domain
//! on q35 and on pc that boots the tiny guest with a virtio disk, NIC and rng and serial ports
//! on a file and a pty, and takes it through virsh's everyday commands: dominfo, vcpuinfo,
//! domblkinfo, domblkstat, qemu-monitor-command, suspend/resume, reboot, a libvirtd restart
//! with the domain running, shutdown (ACPI power button), destroy. `virsh attach-device
//! --live` / `detach-device --live` are in tests/libvirt_hotplug.rs; the domain and virsh
//! helpers both use are in tests/src/libvirt_domain.rs.
//!
//! Needs root (libvirt's system driver, taps, mount namespaces) and /dev/kvm; without either it
//! prints why and skips. Everything else missing (libvirtd, virsh, ip) is a failure: the
//! README's test command (scripts/test) installs it.
//!
//! Each step prints `libvirt[MACHINE]: STEP`; a failure names the step and shows virsh's
//! output, the emulator's log, libvirtd's errors and the last QMP messages, and keeps the
//! private libvirt tree (its path is printed). The capability file libvirt cached for machina
//! is copied to `TARGET/libvirt/machina-capabilities.xml` and `virsh domcapabilities` to
//! `TARGET/libvirt/domcapabilities-MACHINE.xml`; where QEMU is installed, the q35
//! run also writes QEMU's and the flags machina lacks (`TARGET/libvirt/flags-diff.txt`).
//!
//! `MACHINA_LIBVIRT_EMULATOR=PATH` runs the same steps with another emulator in `<emulator>`
//! (e.g. /usr/bin/qemu-system-x86_64, to check the harness itself).

mod common;

use common::machina;
use machina_tests::libvirt::{capability_flags, process_alive, PtyReader};
use machina_tests::libvirt_domain::{emulator, setup, Run, DISK_SIZE};
use std::path::Path;
use std::time::{Duration, Instant};

const BLK_SEED: u64 = 7;

/// The tiny guest's tests: probe PCI, drive every virtio device, then wait for the power
/// button, so the domain stays up for the lifecycle steps.
fn guest_cmdline() -> String {
    let mut cmdline =
        format!("machina.test=pci-scan,virtio,powerbutton machina.blk-seed={BLK_SEED}");
    let is_qemu = emulator(&machina())
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("qemu"));
    if is_qemu {
        // QEMU with KVM on PVM hosts: legacy virtio I/O BARs above 0x8000 fault at CPL 3
        // (resources/guest/README.md).
        cmdline += " machina.virtio-io-base=0x7000";
    }
    cmdline
}

/// `Key:   value` lines of dominfo/vcpuinfo/domblkinfo.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
}

/// `vda rd_req 1` lines of domblkstat.
fn blkstat(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        let (_, k, v) = (w.next()?, w.next()?, w.next()?);
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

/// The tiny guest's virtio-blk pattern at sector `s`.
fn blk_pattern(s: u64) -> Vec<u8> {
    (0..4096)
        .map(|i| machina_tests::guest_blk_pattern(BLK_SEED, s, i))
        .collect()
}

/// The capability files libvirt cached, saved under TARGET/libvirt/, and the flag comparison
/// with QEMU (for the report; the assertion is that libvirt accepted machina at all).
fn save_capabilities(run: &Run, qemu: Option<&Path>) {
    let out = machina_tests::paths::target_dir(&machina()).join("libvirt");
    let _ = std::fs::create_dir_all(&out);
    let Some(ours) = run.lv.cached_capabilities(&run.emulator) else {
        run.fail(
            "capability cache",
            &format!(
                "no file under cache/qemu/capabilities names {}",
                run.emulator.display()
            ),
        );
    };
    let _ = std::fs::write(out.join("machina-capabilities.xml"), &ours);
    let Some(qemu) = qemu else { return };
    let Some(theirs) = run.lv.cached_capabilities(qemu) else {
        eprintln!("libvirt: no capability file for {}", qemu.display());
        return;
    };
    let _ = std::fs::write(out.join("qemu-capabilities.xml"), &theirs);
    let (a, b) = (capability_flags(&ours), capability_flags(&theirs));
    let lacks: Vec<&String> = b.difference(&a).collect();
    let extra: Vec<&String> = a.difference(&b).collect();
    let summary = format!(
        "libvirt capability flags: machina {} , QEMU 7.2 {}\n\
         flags QEMU has and machina lacks ({}):\n{}\n\
         flags machina has and QEMU 7.2 lacks ({}):\n{}\n",
        a.len(),
        b.len(),
        lacks.len(),
        lacks
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        extra.len(),
        extra
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    );
    eprint!("{summary}");
    let _ = std::fs::write(out.join("flags-diff.txt"), summary);
}

fn drive(machine: &'static str) {
    let controllers = format!("controllers-{machine}.xml");
    let Some(mut run) = setup(&machina(), machine, "", guest_cmdline(), &controllers) else {
        return;
    };
    let emulator = run.emulator.display().to_string();

    // 1. Capability probe.
    let qemu = Path::new("/usr/bin/qemu-system-x86_64");
    let compare = machine == "q35" && qemu.is_file() && run.emulator != qemu;
    if compare {
        run.step("domcapabilities of QEMU (for the flag comparison)");
        let r = run.lv.virsh(&[
            "domcapabilities",
            "--emulatorbin",
            "/usr/bin/qemu-system-x86_64",
            "--arch",
            "x86_64",
            "--machine",
            machine,
            "--virttype",
            "kvm",
        ]);
        if r.status != Some(0) {
            eprintln!("libvirt: QEMU's probe failed: {}", r.stderr);
        }
    }
    let step = "domcapabilities";
    run.step(step);
    let caps = run.virsh(
        step,
        &[
            "domcapabilities",
            "--emulatorbin",
            &emulator,
            "--arch",
            "x86_64",
            "--machine",
            machine,
            "--virttype",
            "kvm",
        ],
    );
    for want in [
        format!("<path>{emulator}</path>"),
        "<domain>kvm</domain>".to_string(),
    ] {
        if !caps.contains(&want) {
            run.fail(step, &format!("no {want} in\n{caps}"));
        }
    }
    let prefix = if machine == "q35" {
        "<machine>pc-q35-"
    } else {
        "<machine>pc-i440fx-"
    };
    if !caps.contains(prefix) {
        run.fail(
            step,
            &format!("machine {machine} is not resolved to {prefix}...: \n{caps}"),
        );
    }
    // QEMU's named CPU models, each usable or not as query-cpu-definitions says.
    let custom = caps.split("<mode name='custom'").nth(1).unwrap_or_default();
    let custom = custom.split("</mode>").next().unwrap_or_default();
    if !custom.contains(">Haswell</model>") || !custom.contains(">qemu64</model>") {
        run.fail(step, &format!("no named CPU models in\n{caps}"));
    }
    let rng = caps.split("<rng ").nth(1).unwrap_or_default();
    let rng = rng.split("</rng>").next().unwrap_or_default();
    if !rng.starts_with("supported='yes'") || !rng.contains("<value>random</value>") {
        run.fail(
            step,
            &format!("no virtio rng with a random backend in\n{caps}"),
        );
    }
    let out = machina_tests::paths::target_dir(&machina()).join("libvirt");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join(format!("domcapabilities-{machine}.xml")), &caps);
    save_capabilities(&run, compare.then_some(qemu));

    // 2. Define and start; the guest runs its virtio drivers and waits for the power button.
    let step = "define + start";
    run.step(step);
    run.define(step, "serial-file.xml");
    run.virsh(step, &["start", &run.name]);
    run.expect_state(step, "running");
    // The domain's <cpu> model and <vmcoreinfo/> reached machina's command line.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", run.pid(step))).unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let after = |flag: &str| {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect::<Vec<_>>()
    };
    if !after("-cpu").iter().any(|c| c.starts_with("qemu64"))
        || !after("-device").iter().any(|d| d.contains("vmcoreinfo"))
    {
        run.fail(
            step,
            &format!("no -cpu qemu64 or vmcoreinfo device in {args:?}"),
        );
    }
    let step = "guest output in the serial file";
    run.step(step);
    run.wait_for(
        step,
        "`powerbutton: waiting`",
        || run.count("powerbutton: waiting") >= 1,
        true,
    );
    let serial = run.serial();
    check_guest_output(&run, step, &serial);
    let pid = run.pid(step);

    // 3. Queries.
    let step = "dominfo";
    run.step(step);
    let info = run.virsh(step, &["dominfo", &run.name]);
    for (key, want) in [
        ("State", "running"),
        ("CPU(s)", "1"),
        ("Max memory", "131072 KiB"),
    ] {
        if field(&info, key) != Some(want) {
            run.fail(step, &format!("{key}: expected {want}\n{info}"));
        }
    }
    let step = "vcpuinfo";
    run.step(step);
    let vcpus = run.virsh(step, &["vcpuinfo", &run.name]);
    if field(&vcpus, "VCPU") != Some("0") || field(&vcpus, "State") != Some("running") {
        run.fail(step, &format!("expected vCPU 0 running:\n{vcpus}"));
    }
    let step = "qemu-monitor-command query-cpus-fast";
    run.step(step);
    let cpus = run.monitor(step, "query-cpus-fast");
    let tids: Vec<u64> = cpus
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["thread-id"].as_u64()).collect())
        .unwrap_or_default();
    if tids.len() != 1 || !Path::new(&format!("/proc/{pid}/task/{}", tids[0])).exists() {
        run.fail(
            step,
            &format!("thread-id must be a thread of pid {pid}: {cpus}"),
        );
    }
    let step = "domblkinfo";
    run.step(step);
    let blk = run.virsh(step, &["domblkinfo", &run.name, "vda"]);
    if field(&blk, "Capacity") != Some(DISK_SIZE.to_string().as_str()) {
        run.fail(step, &format!("Capacity: expected {DISK_SIZE}\n{blk}"));
    }
    let step = "domblkstat";
    run.step(step);
    let stat = run.virsh(step, &["domblkstat", &run.name, "vda"]);
    // The guest wrote, read back and flushed 4096 bytes at least once.
    for (key, min) in [
        ("rd_req", 1),
        ("wr_req", 1),
        ("rd_bytes", 4096),
        ("wr_bytes", 4096),
    ] {
        if blkstat(&stat, key).is_none_or(|v| v < min) {
            run.fail(step, &format!("{key}: expected at least {min}\n{stat}"));
        }
    }
    // The disk runs on the domain's I/O thread (<iothreads>, <driver iothread='1'>): libvirt
    // reads it back with query-iothreads; its TID is the process's "IO iothread1" thread.
    let step = "iothreadinfo";
    run.step(step);
    let info = run.virsh(step, &["iothreadinfo", &run.name]);
    if !info.lines().any(|l| l.trim_start().starts_with('1')) {
        run.fail(step, &format!("expected IOThread 1:\n{info}"));
    }
    let iothreads = run.monitor(step, "query-iothreads");
    let named = iothreads
        .as_array()
        .and_then(|a| a.first())
        .and_then(|t| t["thread-id"].as_u64())
        .and_then(|tid| std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok());
    if named.as_deref().map(str::trim) != Some("IO iothread1") {
        run.fail(
            step,
            &format!("thread of pid {pid} named IO iothread1: {iothreads}"),
        );
    }
    let step = "qemu-monitor-command query-status";
    run.step(step);
    let status = run.monitor(step, "query-status");
    if status["status"] != "running" || status["running"] != true {
        run.fail(step, &format!("expected running: {status}"));
    }

    // The memballoon (virtio, stats every 5 s): libvirt set the polling interval at start,
    // reads `actual` and the guest's stats (the tiny guest has no balloon driver: the whole
    // RAM, no stats), and `setmem --live` sets the target the device offers its driver.
    let step = "dommemstat";
    run.step(step);
    let stat = run.virsh(step, &["dommemstat", &run.name]);
    // `KEY VALUE` lines.
    let actual = stat
        .lines()
        .find_map(|l| l.strip_prefix("actual "))
        .map(str::trim);
    if actual != Some("131072") {
        run.fail(step, &format!("actual: expected 131072 KiB\n{stat}"));
    }
    let interval = run.monitor_args(
        step,
        "qom-get",
        serde_json::json!({"path": "/machine/peripheral/balloon0",
            "property": "guest-stats-polling-interval"}),
    );
    if interval != 5 {
        run.fail(
            step,
            &format!("guest-stats-polling-interval: expected 5, got {interval}"),
        );
    }
    let step = "setmem --live";
    run.step(step);
    run.virsh(step, &["setmem", &run.name, "96M", "--live"]);
    let balloon = run.monitor(step, "query-balloon");
    if balloon["actual"] != 128u64 << 20 {
        run.fail(
            step,
            &format!("query-balloon: expected the whole RAM: {balloon}"),
        );
    }

    // vCPU hot-plug: libvirt fills the free query-hotpluggable-cpus slot with device_add
    // (`<vcpu current='1'>2</vcpu>` gives -smp 1,maxcpus=2) and reads it back.
    let step = "setvcpus --live";
    run.step(step);
    run.virsh(step, &["setvcpus", &run.name, "2", "--live"]);
    let info = run.virsh(step, &["dominfo", &run.name]);
    if field(&info, "CPU(s)") != Some("2") {
        run.fail(step, &format!("CPU(s): expected 2\n{info}"));
    }
    let count = run.virsh(step, &["vcpucount", &run.name, "--live", "--active"]);
    if count.trim() != "2" {
        run.fail(step, &format!("vcpucount: expected 2\n{count}"));
    }
    let cpus = run.monitor(step, "query-cpus-fast");
    let named = cpus.as_array().map_or(0, |a| {
        a.iter()
            .filter(|c| {
                c["thread-id"].as_u64().is_some_and(|tid| {
                    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                        .is_ok_and(|n| n.trim().starts_with("CPU "))
                })
            })
            .count()
    });
    if named != 2 {
        run.fail(step, &format!("two vCPU threads of pid {pid}: {cpus}"));
    }

    // 4. suspend / resume.
    let step = "suspend";
    run.step(step);
    run.virsh(step, &["suspend", &run.name]);
    run.expect_state(step, "paused");
    let status = run.monitor(step, "query-status");
    if status["status"] != "paused" || status["running"] != false {
        run.fail(step, &format!("expected paused: {status}"));
    }
    let step = "resume";
    run.step(step);
    run.virsh(step, &["resume", &run.name]);
    run.expect_state(step, "running");
    if run.monitor(step, "query-status")["status"] != "running" {
        run.fail(step, "query-status is not running after resume");
    }

    // 5. reboot: libvirt presses the power button, the guest powers off, libvirt resets and
    // continues the same process (-no-shutdown), the guest boots again.
    let step = "reboot";
    run.step(step);
    run.virsh(step, &["reboot", &run.name]);
    run.wait_for(
        step,
        "a second boot up to `powerbutton: waiting`",
        || run.count("powerbutton: waiting") >= 2,
        true,
    );
    let banner = format!("machina-guest: version=0.1 cmdline=\"{}\"", run.cmdline);
    if run.count(&banner) != 2 || run.count("powerbutton: pressed") != 1 {
        run.fail(
            step,
            &format!("expected 2 boots and 1 press:\n{}", run.serial()),
        );
    }
    run.expect_state(step, "running");
    if run.pid(step) != pid {
        run.fail(step, "the reboot replaced the emulator process");
    }

    // 6. libvirtd restart with the domain running: it reconnects to the same process.
    let step = "libvirtd restart";
    run.step(step);
    run.lv.stop();
    if !process_alive(pid) {
        run.fail(step, "the domain's process died with libvirtd");
    }
    if let Err(e) = run.lv.restart() {
        run.fail(step, &e);
    }
    run.expect_state(step, "running");
    if run.pid(step) != pid || !process_alive(pid) {
        run.fail(step, "the domain is not the same running process");
    }
    if run.monitor(step, "query-status")["status"] != "running" {
        run.fail(step, "query-status is not running after the reconnect");
    }

    // 7. shutdown: ACPI power button, the guest powers off, libvirt reports shut off.
    let step = "shutdown";
    run.step(step);
    run.virsh(step, &["shutdown", &run.name]);
    run.wait_for(step, "`shut off`", || run.domstate() == "shut off", false);
    if run.count("powerbutton: pressed") != 2 || run.count("poweroff: ") != 2 {
        run.fail(
            step,
            &format!("expected the second press and power-off:\n{}", run.serial()),
        );
    }
    run.wait_for(step, "the emulator's exit", || !process_alive(pid), false);

    // 8. Console on a pty: the guest's output read from the pty itself.
    let step = "define + start with the serial console on a pty";
    run.step(step);
    run.define(step, "serial-pty.xml");
    run.virsh(step, &["start", &run.name]);
    let pid = run.pid(step);
    let tty = run
        .virsh(step, &["ttyconsole", &run.name])
        .trim()
        .to_string();
    if !tty.starts_with("/dev/pts/") {
        run.fail(step, &format!("ttyconsole: `{tty}` is not a pty"));
    }
    let pty = PtyReader::open(Path::new(&tty)).unwrap_or_else(|e| run.fail(step, &e));
    // Output written while no one had the pty open may be dropped (QEMU's pty does): reboot
    // until a whole boot has been read (the first attempt usually suffices).
    let step = "guest output on the pty";
    run.step(step);
    let booted = |text: &str| text.contains(&banner) && text.contains("powerbutton: waiting");
    let mut attempts = 0;
    loop {
        let start = Instant::now();
        while !booted(&pty.text()) && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(100));
        }
        if booted(&pty.text()) {
            break;
        }
        attempts += 1;
        if attempts > 3 {
            run.fail(
                step,
                &format!("no boot read from {tty}; read:\n{}", pty.text()),
            );
        }
        run.virsh(step, &["reboot", &run.name]);
    }
    let text = pty.text();
    check_guest_lines(&run, step, &text);
    eprintln!("libvirt[{machine}]: read a whole boot from {tty} after {attempts} extra reboot(s)");

    // 9. destroy.
    let step = "destroy";
    run.step(step);
    run.virsh(step, &["destroy", &run.name]);
    run.expect_state(step, "shut off");
    run.wait_for(step, "the emulator's exit", || !process_alive(pid), false);
    run.virsh("undefine", &["undefine", &run.name]);
    run.step("done");
}

/// The boot's lines the guest printed: banner, every virtio driver working, devices where
/// libvirt placed them, and what the disk holds afterwards.
fn check_guest_output(run: &Run, step: &str, serial: &str) {
    check_guest_lines(run, step, serial);
    let disk = std::fs::read(&run.disk).unwrap_or_default();
    for line in serial.lines().filter(|l| l.starts_with("virtio-blk: ")) {
        let sector = if line.contains("path=legacy") { 8 } else { 16 };
        let at = (sector * 512) as usize;
        if disk.get(at..at + 4096) != Some(blk_pattern(sector).as_slice()) {
            run.fail(
                step,
                &format!("the disk does not hold the pattern at sector {sector}"),
            );
        }
    }
}

fn check_guest_lines(run: &Run, step: &str, serial: &str) {
    let mut missing = Vec::new();
    let banner = format!("machina-guest: version=0.1 cmdline=\"{}\"", run.cmdline);
    if !serial.contains(&banner) {
        missing.push(banner);
    }
    let want = |prefix: &str, keys: &[&str]| {
        serial.lines().any(|l| {
            l.starts_with(prefix) && keys.iter().all(|k| l.split_whitespace().any(|w| w == *k))
        })
    };
    let mac = format!("mac={}", run.mac);
    for (prefix, keys) in [
        (
            "virtio-blk: ",
            &["write=ok", "read=ok", "match=yes", "flush=ok"][..],
        ),
        ("virtio-rng: ", &["bytes=64", "nonzero=yes"][..]),
        ("virtio-net: ", &[mac.as_str()][..]),
        // virtio-net, -blk, -rng and the balloon (which the guest does not drive).
        ("virtio: done", &["devices=4"][..]),
        ("powerbutton: waiting", &[][..]),
    ] {
        if !want(prefix, keys) {
            missing.push(format!("{prefix} {}", keys.join(" ")));
        }
    }
    // libvirt puts each virtio device behind its own root port on q35, on bus 0 on pc.
    let functions = machina_tests::parse_pci_lines(serial);
    for f in functions
        .iter()
        .filter(|f| f.vendor_device.starts_with("1af4:"))
    {
        let on_bus0 = f.bdf.starts_with("00:");
        if on_bus0 == (run.machine == "q35") {
            missing.push(format!("virtio function {} on the wrong bus", f.bdf));
        }
    }
    let ports = functions
        .iter()
        .filter(|f| f.vendor_device == "1b36:000c")
        .count();
    // The three of controllers-q35.xml, and one libvirt adds for the memballoon.
    if run.machine == "q35" && ports != 4 {
        missing.push(format!("4 pcie-root-ports (1b36:000c), found {ports}"));
    }
    if serial
        .lines()
        .any(|l| l.starts_with("error:") || l.starts_with("panic:"))
    {
        missing.push("no `error:`/`panic:` line".to_string());
    }
    if !missing.is_empty() {
        run.fail(
            step,
            &format!(
                "guest output lacks:\n  {}\n--- output:\n{serial}",
                missing.join("\n  ")
            ),
        );
    }
}

#[test]
fn libvirt_runs_machina_q35() {
    drive("q35");
}

#[test]
fn libvirt_runs_machina_pc() {
    drive("pc");
}
