//! `-d guest_errors` (issue 13): a guest that misprograms virtio-blk gets one line per
//! mistake naming the device and the reason, in the `-D` file or on stderr; without `-d`
//! nothing is printed. The guest here is a qtest client driving the modern interface: a
//! queue size the queue refuses, then a descriptor that chains to itself, which stops the
//! device (NEEDS_RESET, observable in the status register).

mod common;

use common::{machina, require_kvm};
use machina_tests::qtest_client::Qtest;
use machina_tests::TempDir;
use std::path::Path;
use std::time::{Duration, Instant};

/// Where firmware would put BAR 4 (the modern virtio BAR): free q35 MMIO below 4 GiB.
const BAR4: u64 = 0xe000_0000;
/// The device: slot 4 of pcie.0.
const BDF: (u8, u8, u8) = (0, 4, 0);
const DEVICE: &str = "virtio-blk-pci id=vblk0 (pcie.0:04.0)";
const SIZE_LINE: &str = "virtio-blk-pci id=vblk0 (pcie.0:04.0): queue 0: size 3 refused (max 256)";
const CHAIN_LINE: &str = "virtio-blk-pci id=vblk0 (pcie.0:04.0): descriptor chain on queue 0: \
                          looped, or next past the table, or unreadable descriptor; device \
                          stopped until reset";

// Guest-physical layout of the queue (guest RAM, 128 MiB by default).
const DESC: u64 = 0x10_0000;
const AVAIL: u64 = 0x10_1000;
const USED: u64 = 0x10_2000;

/// A per-test directory with a 1 MiB disk image, removed at the end.
fn scratch(tag: &str) -> TempDir {
    let dir = TempDir::new(&format!("guest-errors-{tag}"));
    let disk = std::fs::File::create(dir.join("disk.img")).expect("disk");
    disk.set_len(1 << 20).expect("disk size");
    dir
}

fn start(scratch: &TempDir, extra: &[&str]) -> Qtest {
    let mut args: Vec<String> = [
        "-machine",
        "q35",
        "-nodefaults",
        "-blockdev",
        &format!(
            "driver=file,node-name=d0,filename={}",
            scratch.join("disk.img").display()
        ),
        "-device",
        "virtio-blk-pci,drive=d0,id=vblk0,addr=04.0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    Qtest::start(&machina(), &args)
}

/// Drive the device as a careless modern driver would; returns the device status it ends
/// with (NEEDS_RESET set by the looped chain).
fn misprogram(q: &mut Qtest) -> u64 {
    // What firmware does: BAR 4 (64-bit) placed, memory decoding and bus mastering on.
    q.cfg_write(BDF, 0x20, 4, BAR4 as u32);
    q.cfg_write(BDF, 0x24, 4, (BAR4 >> 32) as u32);
    q.cfg_write(BDF, 0x04, 2, 0x6);
    let common = |off: u64| BAR4 + off;
    let ok = |q: &mut Qtest, cmd: String| assert_eq!(q.cmd(&cmd), "OK", "{cmd}");
    // ACKNOWLEDGE, DRIVER; VERSION_1 only; FEATURES_OK.
    ok(q, format!("writeb {:#x} 0x1", common(0x14)));
    ok(q, format!("writeb {:#x} 0x3", common(0x14)));
    ok(q, format!("writel {:#x} 0x1", common(0x08)));
    ok(q, format!("writel {:#x} 0x1", common(0x0c)));
    ok(q, format!("writel {:#x} 0x0", common(0x08)));
    ok(q, format!("writel {:#x} 0x0", common(0x0c)));
    ok(q, format!("writeb {:#x} 0xb", common(0x14)));
    // Queue 0: a size that is not a power of two (refused), then 8.
    ok(q, format!("writew {:#x} 0x0", common(0x16)));
    ok(q, format!("writew {:#x} 0x3", common(0x18)));
    ok(q, format!("writew {:#x} 0x8", common(0x18)));
    for (off, addr) in [(0x20, DESC), (0x28, AVAIL), (0x30, USED)] {
        ok(q, format!("writel {:#x} {addr:#x}", common(off)));
        ok(q, format!("writel {:#x} 0x0", common(off + 4)));
    }
    // Descriptor 0: 16 bytes at 0x103000, NEXT set, next = 0: a chain that never ends.
    ok(q, format!("writeq {DESC:#x} 0x103000"));
    ok(q, format!("writel {:#x} 0x10", DESC + 8));
    ok(q, format!("writew {:#x} 0x1", DESC + 12));
    ok(q, format!("writew {:#x} 0x0", DESC + 14));
    // Available ring: one entry, head 0.
    ok(q, format!("writew {:#x} 0x0", AVAIL + 4));
    ok(q, format!("writew {:#x} 0x1", AVAIL + 2));
    ok(q, format!("writew {:#x} 0x1", common(0x1c)));
    ok(q, format!("writeb {:#x} 0xf", common(0x14)));
    // Kick queue 0 (notify region at 0x3000, multiplier 4).
    ok(q, format!("writew {:#x} 0x0", BAR4 + 0x3000));
    // The device thread serves the kick; wait (a hang guard, not a timing) for NEEDS_RESET.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = q.value(&format!("readb {:#x}", common(0x14)));
        if status & 0x40 != 0 || Instant::now() > deadline {
            return status;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The lines of `path` once `want` lines arrived (bounded wait: the device thread writes
/// them).
fn wait_lines(path: &Path, want: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= want || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn misprogrammed_virtio_blk_is_named_in_the_log_file() {
    if !require_kvm() {
        return;
    }
    let scratch = scratch("file");
    let log = scratch.join("machina.log");
    let log_arg = log.display().to_string();
    let mut q = start(&scratch, &["-d", "guest_errors", "-D", &log_arg]);
    let status = misprogram(&mut q);
    assert_eq!(status & 0x40, 0x40, "NEEDS_RESET after the looped chain");
    let lines = wait_lines(&log, 2);
    let stderr = q.finish();
    assert_eq!(lines, [SIZE_LINE, CHAIN_LINE], "the -D file");
    assert!(
        !stderr.contains(DEVICE),
        "with -D the lines go to the file only; stderr: {stderr}"
    );
}

#[test]
fn misprogrammed_virtio_blk_is_named_on_stderr() {
    if !require_kvm() {
        return;
    }
    let scratch = scratch("stderr");
    let mut q = start(&scratch, &["-d", "guest_errors"]);
    let status = misprogram(&mut q);
    assert_eq!(status & 0x40, 0x40, "NEEDS_RESET after the looped chain");
    let stderr = q.finish();
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(DEVICE)).collect();
    assert_eq!(lines, [SIZE_LINE, CHAIN_LINE], "stderr: {stderr}");
}

#[test]
fn without_d_nothing_is_printed() {
    if !require_kvm() {
        return;
    }
    let scratch = scratch("quiet");
    let log = scratch.join("machina.log");
    let log_arg = log.display().to_string();
    // -D alone opens the file (as QEMU does) but no category writes to it.
    let mut q = start(&scratch, &["-D", &log_arg]);
    let status = misprogram(&mut q);
    assert_eq!(status & 0x40, 0x40, "the device stops all the same");
    let stderr = q.finish();
    assert_eq!(stderr, "", "nothing on stderr without -d");
    assert_eq!(
        std::fs::read_to_string(&log).expect("the -D file exists"),
        ""
    );
}

#[test]
fn a_bar_programmed_over_ram_is_a_guest_error() {
    if !require_kvm() {
        return;
    }
    let scratch = scratch("bar");
    let log = scratch.join("machina.log");
    let log_arg = log.display().to_string();
    let mut q = start(&scratch, &["-d", "guest_errors", "-D", &log_arg]);
    // BAR 4 (64-bit, 16 KiB) at 1 MiB, inside the 128 MiB of guest RAM; decoding on.
    q.cfg_write(BDF, 0x20, 4, 0x10_0000);
    q.cfg_write(BDF, 0x24, 4, 0);
    q.cfg_write(BDF, 0x04, 2, 0x2);
    let lines = wait_lines(&log, 1);
    drop(q);
    assert_eq!(
        lines,
        [format!(
            "{DEVICE}: BAR 4 at 0x100000 (size 0x4000) overlaps guest RAM; RAM answers there"
        )]
    );
}

/// `-trace PATTERN` events go to the `-D` file as QEMU's log backend writes them (`NAME
/// ARGS`), and only the enabled ones: no guest_errors line without `-d`.
#[test]
fn trace_events_go_to_the_log_file() {
    if !require_kvm() {
        return;
    }
    let scratch = scratch("trace");
    let log = scratch.join("machina.log");
    let log_arg = log.display().to_string();
    let mut q = start(
        &scratch,
        &[
            "-trace",
            "virtio_*",
            "-trace",
            "-virtio_notify",
            "-D",
            &log_arg,
        ],
    );
    misprogram(&mut q);
    let lines = wait_lines(&log, 5);
    let stderr = q.finish();
    let status: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("virtio_set_status "))
        .collect();
    assert_eq!(
        status,
        [1, 3, 11, 15]
            .map(|v| format!("virtio_set_status vdev {DEVICE} val {v}"))
            .iter()
            .collect::<Vec<_>>(),
        "{lines:?}"
    );
    assert!(
        lines.contains(&format!("virtio_queue_notify vdev {DEVICE} n 0")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("virtio_set_status ") || l.starts_with("virtio_queue_notify ")),
        "only the enabled events: {lines:?}"
    );
    assert_eq!(stderr, "");
}

/// The option texts of QEMU: `-d help` and unknown items print the item list on stdout and
/// exit 1; `-trace help` lists the events and exits 0; a log file that cannot be opened
/// and a bad `-trace` key are one-line errors, exit 1.
#[test]
fn option_help_and_errors_as_qemu() {
    let run = |args: &[&str]| common::boot(args);
    let usage = "Log items (comma separated):\n\
                 unimp           log unimplemented functionality\n\
                 guest_errors    log when the guest OS does something invalid (eg accessing a\n\
                 non-existent register)\n\
                 trace:PATTERN   enable trace events\n\
                 \n\
                 Use \"-d trace:help\" to get a list of trace events.\n\n";
    for items in ["help", "foo", "guest_errors,nosuch"] {
        let r = run(&["-d", items]);
        assert_eq!(
            (r.status, r.stdout.as_str(), r.stderr.as_str()),
            (Some(1), usage, ""),
            "-d {items}"
        );
    }
    let r = run(&["-trace", "help"]);
    assert_eq!(r.status, Some(0));
    assert!(
        r.stdout.lines().any(|l| l == "virtio_blk_req_complete"),
        "{}",
        r.stdout
    );
    let r = run(&["-d", "guest_errors", "-D", "/nonexistent/dir/log"]);
    assert_eq!(r.status, Some(1));
    assert_eq!(
        r.stderr,
        "machina: Error opening logfile /nonexistent/dir/log: No such file or directory\n"
    );
    let r = run(&["-trace", "foo=bar"]);
    assert_eq!(r.status, Some(1));
    assert_eq!(
        r.stderr,
        "machina: -trace foo=bar: Invalid parameter 'foo'\n"
    );
}

/// `-d unimp` shows what machina lacks and nothing of guest_errors: a write to virtio 1.2's
/// queue_reset is one line, the refused queue size none.
#[test]
fn unimp_is_its_own_category() {
    if !require_kvm() {
        return;
    }
    let scratch = scratch("unimp");
    let log = scratch.join("machina.log");
    let log_arg = log.display().to_string();
    let mut q = start(&scratch, &["-d", "unimp", "-D", &log_arg]);
    q.cfg_write(BDF, 0x20, 4, BAR4 as u32);
    q.cfg_write(BDF, 0x24, 4, (BAR4 >> 32) as u32);
    q.cfg_write(BDF, 0x04, 2, 0x6);
    assert_eq!(q.cmd(&format!("writew {:#x} 0x3", BAR4 + 0x18)), "OK");
    assert_eq!(q.cmd(&format!("writew {:#x} 0x1", BAR4 + 0x3a)), "OK");
    let lines = wait_lines(&log, 1);
    drop(q);
    assert_eq!(
        lines,
        [format!(
            "{DEVICE}: write of 0x1 to common config offset 0x3a (queue_notify_data / \
             queue_reset) is not implemented"
        )]
    );
}
