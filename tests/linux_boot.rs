//! Linux as an independent test guest (opt-in: a boot takes ~2-3 minutes on PVM hosts).
//!
//!     scripts/linux-guest --install-deps   # once: builds target/linux-guest/vmlinux
//!     cargo test -p vmm --test linux_boot -- --ignored --nocapture
//!
//! Boots the tinyconfig 6.1 kernel (tests/data/linux/guest.config) by PVH with `-no-reboot`
//! on q35 and pc, with root ports, a pcie-pci-bridge, virtio-blk modern and transitional
//! (images with an MBR partition table), virtio-net on a tap and virtio-rng; boots the same
//! kernel and command line under Debian's QEMU 7.2 (`-accel tcg`); compares the two kernel
//! logs, and checks from machina's trace which interface Linux drove each virtio function
//! through (`virtio_pci.force_legacy=1`: legacy for transitional functions on the root
//! buses and behind the pcie-pci-bridge, modern behind root ports and with
//! `disable-legacy=on`). No root file system is given: the kernel panics at the root mount (`panic=-1`
//! reboots, `-no-reboot` exits), after every driver has probed. Kernel-only because no Linux
//! user space runs on PVM hosts (see docs).
//!
//! Differences still seen between the two logs (same kernel, same command line), and why:
//! * ACPI tables: no HPET table (machina models no HPET: also no `hpet0` lines, and the RTC
//!   reports no "hpet irqs"); RSDP revision 2 + XSDT at 0xe0000 instead of SeaBIOS's RSDT
//!   in high memory; OEM table id and FADT revision differ.
//! * `ACPI: Enabled N GPEs`, `acpiphp: Slot [N] registered`: these come from the ACPI PCI/CPU
//!   hot-plug objects (GPE handlers, slot objects), which machina's DSDT has too since PCI
//!   and CPU hot-plug landed (tests/linux_hotplug.rs drives them); the lists were not
//!   compared again since.
//! * q35 `Interrupt link LNKA-H`: QEMU's PIC-mode links; machina's q35 `_PRT` is the
//!   APIC-mode one through GSIA-H, whose lines match (pc's LNKA-D/LNKS match too).
//! * PnP: no PNP0400 (parallel) nor PNP0700 (floppy): not modelled; the `00:0N` numbers of
//!   the devices after them shift, and `found N devices` is lower by that many.
//! * `rtc_cmos`: 114 bytes of NVRAM instead of 242: machina's CMOS is the 128-byte bank at
//!   0x70/0x71 (no second bank at 0x72/0x73).
//! * `root bus resource [mem ...]`: QEMU's low PCI window starts at the end of RAM (0x10000000
//!   with 256 MiB); machina's plan starts it at 0xc0000000 (q35) / 0xe0000000 (pc).
//! * BAR addresses: SeaBIOS's allocation against machina's firmware step (the enumeration
//!   itself, IDs, classes and bus numbers, is equal and asserted).
//! * CPU and clock lines (kvm-clock, TSC deadline, host CPU model, AMD extended config
//!   access on pc): KVM against TCG's qemu64.
//!
//! `random: crng init done` (virtio-rng feeding the pool) was missing until the device
//! published `avail_event` with VIRTIO_RING_F_EVENT_IDX (Linux then stopped kicking); it is
//! asserted.

mod common;

use machina_tests::TempDir;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// Keeps a stock kernel off instructions PVM's CPL 0 emulator rejects (test-hosts-kvm.md).
const CLEARCPUID: &str = "clearcpuid=cx16,xsave,popcnt,rdrand,rdseed,fsgsbase,smap,rdpid,\
                          clflushopt,clwb,bmi1,bmi2,ssse3,sse4_1,sse4_2,aes,pclmulqdq";

/// PnP IDs QEMU lists that machina does not model (see tests/linux_acpi.rs): floppy and
/// parallel port.
const PNP_NOT_MODELLED: &[&str] = &["PNP0700", "PNP0400"];

fn vmlinux() -> PathBuf {
    machina_tests::paths::linux_guest(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
}

/// A 16 MiB raw image with an MBR holding one Linux partition (LBA 2048 to the end).
fn disk(path: &Path) {
    let mut img = vec![0u8; 16 << 20];
    let sectors = (img.len() / 512) as u32;
    let entry = &mut img[0x1be..0x1ce];
    entry[4] = 0x83;
    entry[8..12].copy_from_slice(&2048u32.to_le_bytes());
    entry[12..16].copy_from_slice(&(sectors - 2048).to_le_bytes());
    img[510] = 0x55;
    img[511] = 0xaa;
    std::fs::write(path, img).unwrap();
}

fn devices(machine: &str, dir: &Path) -> Vec<String> {
    let d0 = dir.join("d0.img");
    let d1 = dir.join("d1.img");
    disk(&d0);
    disk(&d1);
    let mut a: Vec<String> = Vec::new();
    let mut add = |s: &str| a.extend(["-device".to_string(), s.to_string()]);
    if machine == "q35" {
        add("pcie-root-port,id=rp1,chassis=1,addr=0x2");
        add("pcie-root-port,id=rp2,chassis=2,addr=0x3");
        add("pcie-root-port,id=rp3,chassis=3,addr=0x4");
        add("pcie-pci-bridge,id=br1,bus=rp3");
        // Modern behind a root port (1af4:1042), transitional behind the bridge (1af4:1001).
        add("virtio-blk-pci,drive=d0,bus=rp1");
        add("virtio-blk-pci,drive=d1,bus=br1,addr=0x1");
        add("virtio-net-pci,netdev=n0,bus=rp2");
        add("virtio-rng-pci,rng=r0,addr=0x5");
    } else {
        // Transitional on the root bus, and a modern-only one.
        add("virtio-blk-pci,drive=d0,addr=0x4");
        add("virtio-blk-pci,drive=d1,addr=0x5,disable-legacy=on");
        add("virtio-net-pci,netdev=n0,addr=0x6");
        add("virtio-rng-pci,rng=r0,addr=0x7");
    }
    for (id, img) in [("d0", &d0), ("d1", &d1)] {
        a.push("-drive".into());
        a.push(format!("file={},if=none,id={id},format=raw", img.display()));
    }
    a.extend(
        [
            "-netdev",
            "tap,id=n0,script=no,downscript=no",
            "-object",
            "rng-random,id=r0,filename=/dev/urandom",
        ]
        .map(String::from),
    );
    a
}

/// Run `program` with the common command line; its serial log and wall time.
/// What one boot printed: the serial log, machina's trace lines (stderr), the wall time.
struct Boot {
    log: String,
    trace: Vec<String>,
    time: Duration,
}

fn boot(program: &Path, extra: &[&str], machine: &str, dir: &Path) -> Boot {
    let kernel = vmlinux();
    // ignore_loglevel + dyndbg: PnP device IDs; ip=: eth0 brought up and reported;
    // virtio_pci.force_legacy: transitional devices take the legacy path (modern-only ones
    // still bind modern), so both of machina's interfaces are driven by Linux.
    let append = format!(
        "console=ttyS0 panic=-1 ignore_loglevel dyndbg=\"file drivers/pnp/core.c +p\" \
         ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off carrier_timeout=1 \
         virtio_pci.force_legacy=1 {CLEARCPUID}"
    );
    let mut cmd = Command::new(program);
    cmd.args([
        "-machine",
        machine,
        "-m",
        "256M",
        "-nographic",
        "-no-reboot",
    ])
    .args(extra)
    .arg("-kernel")
    .arg(&kernel)
    .args(["-append", &append])
    .args(devices(machine, dir));
    let start = Instant::now();
    let out = cmd
        .env("MACHINA_TRACE", "1")
        .output()
        .expect("start the VMM");
    let log = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // machina's counters of instructions emulated for PVM (MACHINA_TRACE).
    for line in stderr.lines() {
        if line.contains("emulated int3=") || line.contains("stopped") {
            println!("{machine}: {line}");
        }
    }
    let trace = stderr
        .lines()
        .filter(|l| l.starts_with("machina-trace: virtio "))
        .map(String::from)
        .collect();
    Boot {
        log,
        trace,
        time: start.elapsed(),
    }
}

/// The interface Linux drove each virtio function through, from machina's trace
/// (`machina-trace: virtio BUS:DD.F type=... driver=legacy|modern|none ...`).
fn driver_modes(trace: &[String]) -> Vec<(String, String)> {
    trace
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix("machina-trace: virtio ")?;
            let at = rest.split_whitespace().next()?.to_string();
            let mode = rest.split_once("driver=")?.1.split_whitespace().next()?;
            Some((at, mode.to_string()))
        })
        .collect()
}

/// With `virtio_pci.force_legacy=1`: transitional functions (root buses, behind the
/// pcie-pci-bridge) bind legacy; modern-only ones (behind root ports, `disable-legacy=on`)
/// bind modern, as under QEMU.
fn expected_modes(machine: &str) -> Vec<(String, String)> {
    let rows: &[(&str, &str)] = if machine == "q35" {
        &[
            ("rp1:00.0", "modern"),
            ("br1:01.0", "legacy"),
            ("rp2:00.0", "modern"),
            ("pcie.0:05.0", "legacy"),
        ]
    } else {
        &[
            ("pci.0:04.0", "legacy"),
            ("pci.0:05.0", "modern"),
            ("pci.0:06.0", "legacy"),
            ("pci.0:07.0", "legacy"),
        ]
    };
    rows.iter()
        .map(|(a, m)| (a.to_string(), m.to_string()))
        .collect()
}

/// Log lines without the timestamp.
fn lines(log: &str) -> Vec<String> {
    log.lines()
        .map(|l| {
            let l = l.trim_end_matches('\r');
            match l.find("] ") {
                Some(i) if l.starts_with('[') => l[i + 2..].to_string(),
                _ => l.to_string(),
            }
        })
        .collect()
}

/// PCI enumeration: `pci BDF: [vid:did] type T class C` and bridges' bus numbers.
fn pci_identity(log: &[String]) -> Vec<String> {
    log.iter()
        .filter(|l| {
            (l.starts_with("pci 0000:") && l.contains("] type "))
                || l.contains(": PCI bridge to [bus")
        })
        .cloned()
        .collect()
}

/// `pnp 00:0N: Plug and Play ACPI device, IDs ...` (pnp.debug=1), IDs only.
fn pnp_ids(log: &[String]) -> BTreeSet<String> {
    log.iter()
        .filter_map(|l| l.split_once("Plug and Play ACPI device, IDs "))
        .map(|(_, ids)| ids.replace(" (active)", "").replace(" (disabled)", ""))
        .filter(|ids| !PNP_NOT_MODELLED.iter().any(|p| ids.contains(p)))
        .collect()
}

fn has(log: &[String], needle: &str) -> bool {
    log.iter().any(|l| l.contains(needle))
}

fn check(machine: &str) -> Vec<String> {
    let scratch = TempDir::new(&format!("linux-{machine}"));
    let dir = scratch.path.clone();
    let qemu = boot(Path::new(QEMU), &["-accel", "tcg"], machine, &dir);
    let ours = boot(&common::machina(), &[], machine, &dir);
    let (qlog, qtime, mlog, mtime) = (qemu.log, qemu.time, ours.log, ours.time);
    println!(
        "{machine}: QEMU 7.2 TCG boot {:.1} s, machina boot {:.1} s",
        qtime.as_secs_f64(),
        mtime.as_secs_f64()
    );
    std::fs::write(dir.join("qemu.log"), &qlog).unwrap();
    std::fs::write(dir.join("machina.log"), &mlog).unwrap();
    let q = lines(&qlog);
    let m = lines(&mlog);
    let mut problems = Vec::new();
    let mut want = |ok: bool, what: String| {
        if !ok {
            problems.push(format!("{machine}: {what}"));
        }
    };
    want(
        has(&q, "VFS: Unable to mount root fs"),
        "QEMU's boot did not reach the root mount".into(),
    );
    want(
        has(&m, "VFS: Unable to mount root fs"),
        "machina's boot did not reach the root mount".into(),
    );
    let (qp, mp) = (pci_identity(&q), pci_identity(&m));
    want(!qp.is_empty(), "no PCI enumeration in QEMU's log".into());
    want(
        qp == mp,
        format!("PCI enumeration differs:\nQEMU:    {qp:#?}\nmachina: {mp:#?}"),
    );
    let (qn, mn) = (pnp_ids(&q), pnp_ids(&m));
    want(!qn.is_empty(), "no PnP devices in QEMU's log".into());
    want(
        qn == mn,
        format!("PnP devices differ: QEMU {qn:?}, machina {mn:?}"),
    );
    for bad in ["ACPI Error", "ACPI BIOS Error", "ACPI Warning"] {
        let hits: Vec<&String> = m.iter().filter(|l| l.contains(bad)).collect();
        want(hits.is_empty(), format!("{bad} in machina's log: {hits:?}"));
    }
    for needle in [
        " vda: vda1",
        " vdb: vdb1",
        "serio: i8042 KBD port at 0x60,0x64 irq 1",
        "serio: i8042 AUX port at 0x60,0x64 irq 12",
        "AT Translated Set 2 keyboard",
        "rtc_cmos 00:",
        "ttyS0 at I/O 0x3f8 (irq = 4",
        // virtio-net registered eth0 (kernel IP autoconfiguration brought it up).
        "device=eth0, hwaddr=52:54:00:12:34:56",
        // virtio-rng registered and fed the kernel's pool (hwrng thread).
        "random: crng init done",
    ] {
        want(has(&q, needle), format!("QEMU's log lacks {needle:?}"));
        want(has(&m, needle), format!("machina's log lacks {needle:?}"));
    }
    want(
        !has(&m, "i8042: Can't read CTR"),
        "machina's i8042 probe failed".into(),
    );
    let mut modes = driver_modes(&ours.trace);
    modes.sort();
    let mut expected = expected_modes(machine);
    expected.sort();
    println!("{machine}: virtio driver paths {modes:?}");
    want(
        modes == expected,
        format!("virtio driver paths: machina saw {modes:?}, expected {expected:?}"),
    );
    if !problems.is_empty() {
        // The boot logs explain a failure; the disk images are not worth keeping.
        let _ = std::fs::remove_file(dir.join("d0.img"));
        let _ = std::fs::remove_file(dir.join("d1.img"));
        println!("{machine}: logs kept in {}", scratch.keep().display());
    }
    problems
}

fn prerequisites() -> bool {
    if !Path::new(QEMU).exists() {
        eprintln!("SKIP: {QEMU} is not installed");
        return false;
    }
    common::require_kvm()
}

#[test]
#[ignore = "boots Linux twice per machine type (minutes on PVM hosts); run with --ignored"]
fn linux_boots_like_under_qemu() {
    if !prerequisites() {
        return;
    }
    let mut problems = Vec::new();
    for machine in ["q35", "pc"] {
        problems.extend(check(machine));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn log_parsers() {
    let log = lines(
        "[    0.455185] pci 0000:00:00.0: [8086:29c0] type 00 class 0x060000\n\
         [    0.460240] pci 0000:00:01.0: BAR 0 [mem 0xfc000000-0xfcffffff pref]\n\
         [    0.533432] pci 0000:00:02.0: PCI bridge to [bus 01]\n\
         [    0.607331] pnp 00:00: Plug and Play ACPI device, IDs PNP0303 (active)\n\
         [    0.607331] pnp 00:01: Plug and Play ACPI device, IDs PNP0400 (active)\n",
    );
    assert_eq!(
        pci_identity(&log),
        vec![
            "pci 0000:00:00.0: [8086:29c0] type 00 class 0x060000".to_string(),
            "pci 0000:00:02.0: PCI bridge to [bus 01]".to_string()
        ]
    );
    assert_eq!(pnp_ids(&log), BTreeSet::from(["PNP0303".to_string()]));
}
