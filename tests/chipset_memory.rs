//! The chipsets' memory remapping as a test sees it over qtest: i440FX and MCH PAM
//! segments (every RE/WE combination, including WE-only, which QEMU treats as plain RAM),
//! the SMRAM window at 0xa0000 (D_OPEN, D_LCK, q35's H_SMRAME high alias), q35's TSEG black
//! hole (each size, the extended size from `-global mch.extended-tseg-mbytes`), the SMBASE
//! lock, RAM kept over a system reset, and `smm=off` (no SMRAM registers, nothing hidden).
//! The PCI side of these machines has nothing at 0xa0000-0xfffff: it reads as zero. With
//! KVM the tiny guest checks the same routing through the memslots.

mod common;

use common::{machina, require_kvm};
use machina_tests::qmp_client::QmpClient;
use machina_tests::qtest_client::{Bdf, Qtest};
use machina_tests::TempDir;
use serde_json::Value;
use std::time::Duration;

const HOST: Bdf = (0, 0, 0);
const MIB: u64 = 1 << 20;

fn start(args: &[&str]) -> Qtest {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    Qtest::start(&machina(), &args)
}

fn readb(q: &mut Qtest, addr: u64) -> u8 {
    q.value(&format!("readb {addr:#x}")) as u8
}

fn writeb(q: &mut Qtest, addr: u64, v: u8) {
    assert_eq!(q.cmd(&format!("writeb {addr:#x} {v:#x}")), "OK");
}

fn cfgb(q: &mut Qtest, off: u16) -> u8 {
    q.cfg_read(HOST, off, 1) as u8
}

fn set_cfgb(q: &mut Qtest, off: u16, v: u8) {
    q.cfg_write(HOST, off, 1, u32::from(v));
}

/// Set the RE/WE bits of PAM segment `seg` (0: 0xf0000, 1..=12: 16 KiB from 0xc0000).
fn pam_set(q: &mut Qtest, pam0: u16, seg: usize, attr: u8) {
    let reg = pam0 + seg.div_ceil(2) as u16;
    let v = cfgb(q, reg);
    let v = if seg & 1 == 1 {
        (v & 0xf0) | attr
    } else {
        (v & 0x0f) | (attr << 4)
    };
    set_cfgb(q, reg, v);
}

fn segment(seg: usize) -> u64 {
    if seg == 0 {
        0xf0000
    } else {
        0xc0000 + (seg as u64 - 1) * 0x4000
    }
}

fn pam_combinations(machine: &str, pam0: u16) {
    let mut q = start(&["-M", machine, "-nodefaults"]);
    for seg in 0..13 {
        let a = segment(seg);
        let last = a + if seg == 0 { 0xffff } else { 0x3fff };
        // Reset state: PCI side for both directions (nothing there: zero, writes lost).
        writeb(&mut q, a, 0x11);
        assert_eq!(readb(&mut q, a), 0, "segment {seg} at reset");
        // RE|WE: plain RAM.
        pam_set(&mut q, pam0, seg, 3);
        writeb(&mut q, a, 0x42);
        writeb(&mut q, last, 0x43);
        assert_eq!(readb(&mut q, a), 0x42, "segment {seg} RE|WE");
        assert_eq!(readb(&mut q, last), 0x43, "segment {seg} RE|WE, last byte");
        // WE only: writes reach RAM, reads come from the PCI side.
        pam_set(&mut q, pam0, seg, 2);
        assert_eq!(readb(&mut q, a), 0, "segment {seg} WE reads the PCI side");
        writeb(&mut q, a, 0x44);
        // RE only: reads RAM (what WE-only wrote), writes go to the PCI side.
        pam_set(&mut q, pam0, seg, 1);
        assert_eq!(readb(&mut q, a), 0x44, "segment {seg} RE shows RAM");
        writeb(&mut q, a, 0x45);
        assert_eq!(readb(&mut q, a), 0x44, "segment {seg} RE drops writes");
        // Off again: the RAM is hidden, not gone.
        pam_set(&mut q, pam0, seg, 0);
        assert_eq!(readb(&mut q, a), 0, "segment {seg} off");
        pam_set(&mut q, pam0, seg, 1);
        assert_eq!(readb(&mut q, a), 0x44, "segment {seg} kept its RAM");
        // The neighbours were not touched.
        if seg >= 2 {
            assert_eq!(readb(&mut q, segment(seg - 1)), 0x44, "segment {seg}");
        }
    }
    // A multi-byte read across a RAM segment and a PCI one.
    pam_set(&mut q, pam0, 1, 3);
    pam_set(&mut q, pam0, 2, 0);
    assert_eq!(q.cmd("writel 0xc3ffe 0x01020304"), "OK");
    assert_eq!(q.cmd("readl 0xc3ffe"), "OK 0x0000000000000304");
}

#[test]
fn i440fx_pam_routes_reads_and_writes() {
    if !require_kvm() {
        return;
    }
    pam_combinations("pc", 0x59);
}

#[test]
fn q35_pam_routes_reads_and_writes() {
    if !require_kvm() {
        return;
    }
    pam_combinations("q35", 0x90);
}

/// PAM written through ECAM: the memory write that reaches the MCH changes the view it
/// came through (a write lock taken while serving that write would deadlock).
#[test]
fn q35_pam_through_ecam() {
    if !require_kvm() {
        return;
    }
    let mut q = start(&["-M", "q35", "-nodefaults"]);
    q.enable_ecam();
    writeb(&mut q, 0xf0000, 0x11);
    let pam0 = Qtest::ecam_addr(HOST, 0x90);
    assert_eq!(q.cmd(&format!("writeb {pam0:#x} 0x30")), "OK");
    assert_eq!(cfgb(&mut q, 0x90), 0x30);
    writeb(&mut q, 0xf0000, 0x12);
    assert_eq!(readb(&mut q, 0xf0000), 0x12);
    assert_eq!(q.cmd(&format!("writeb {pam0:#x} 0x00")), "OK");
    assert_eq!(readb(&mut q, 0xf0000), 0);
}

#[test]
fn i440fx_smram_window_follows_d_open() {
    if !require_kvm() {
        return;
    }
    let mut q = start(&["-M", "pc", "-nodefaults"]);
    assert_eq!(cfgb(&mut q, 0x72), 0x02);
    writeb(&mut q, 0xa0000, 1);
    assert_eq!(readb(&mut q, 0xa0000), 0, "closed: the PCI side (no VGA)");
    set_cfgb(&mut q, 0x72, 0x42); // D_OPEN
    writeb(&mut q, 0xbffff, 7);
    assert_eq!(readb(&mut q, 0xbffff), 7, "open: RAM");
    set_cfgb(&mut q, 0x72, 0x02);
    assert_eq!(readb(&mut q, 0xbffff), 0, "closed again");
    set_cfgb(&mut q, 0x72, 0x42);
    assert_eq!(readb(&mut q, 0xbffff), 7, "the RAM kept its contents");
}

#[test]
fn q35_smram_open_lock_and_high_alias() {
    if !require_kvm() {
        return;
    }
    let mut q = start(&["-M", "q35", "-nodefaults"]);
    assert_eq!(cfgb(&mut q, 0x9d), 0x02);
    assert_eq!(cfgb(&mut q, 0x9e), 0x38);
    assert_eq!(readb(&mut q, 0xa0000), 0);
    // D_OPEN without H_SMRAME: RAM at 0xa0000.
    set_cfgb(&mut q, 0x9d, 0x4a);
    writeb(&mut q, 0xa0000, 0x5a);
    assert_eq!(readb(&mut q, 0xa0000), 0x5a);
    assert_eq!(readb(&mut q, 0xfeda_0000), 0);
    // With H_SMRAME the window's RAM moves to 0xfeda0000.
    set_cfgb(&mut q, 0x9e, 0x80 | 0x38);
    assert_eq!(readb(&mut q, 0xa0000), 0);
    assert_eq!(readb(&mut q, 0xfeda_0000), 0x5a);
    writeb(&mut q, 0xfeda_0001, 0x5b);
    set_cfgb(&mut q, 0x9e, 0x38);
    assert_eq!(readb(&mut q, 0xa0001), 0x5b);
    // D_LCK closes it for good: D_OPEN cleared and no longer settable.
    set_cfgb(&mut q, 0x9d, 0x5a);
    assert_eq!(cfgb(&mut q, 0x9d) & 0x40, 0);
    assert_eq!(readb(&mut q, 0xa0000), 0);
    set_cfgb(&mut q, 0x9d, 0x5a);
    assert_eq!(cfgb(&mut q, 0x9d) & 0x40, 0);
    assert_eq!(readb(&mut q, 0xa0000), 0);
}

/// Enable and lock a TSEG of ESMRAMC size bits `sz`; then the top `mib` MiB of RAM below
/// 4 GiB read all ones and drop writes, the byte below stays RAM.
fn tseg(args: &[&str], sz: u8, mib: u64) {
    let mut q = start(args);
    let top = 128 * MIB;
    writeb(&mut q, top - 1, 0x33);
    writeb(&mut q, top - mib * MIB - 1, 0x34);
    set_cfgb(&mut q, 0x9e, 0x38 | (sz << 1) | 1); // T_EN
    assert_eq!(readb(&mut q, top - 1), 0x33, "T_EN alone hides nothing");
    set_cfgb(&mut q, 0x9d, 0x02 | 0x20 | 0x08); // D_CLS | G_SMRAME
    set_cfgb(&mut q, 0x9d, 0x02 | 0x20 | 0x08 | 0x10); // D_LCK
    for a in [top - mib * MIB, top - 1] {
        assert_eq!(readb(&mut q, a), 0xff, "{mib} MiB TSEG at {a:#x}");
        writeb(&mut q, a, 1);
        assert_eq!(readb(&mut q, a), 0xff, "{mib} MiB TSEG drops writes");
    }
    assert_eq!(
        q.cmd(&format!("readl {:#x}", top - 4)),
        "OK 0x00000000ffffffff"
    );
    assert_eq!(
        readb(&mut q, top - mib * MIB - 1),
        0x34,
        "below TSEG is RAM"
    );
    // Locked: ESMRAMC can no longer turn it off.
    set_cfgb(&mut q, 0x9e, 0x38);
    assert_eq!(readb(&mut q, top - 1), 0xff);
}

#[test]
fn q35_tseg_sizes_hide_the_top_of_ram() {
    if !require_kvm() {
        return;
    }
    tseg(&["-M", "q35", "-m", "128M", "-nodefaults"], 0, 1);
    tseg(&["-M", "q35", "-m", "128M", "-nodefaults"], 1, 2);
    tseg(&["-M", "q35", "-m", "128M", "-nodefaults"], 2, 8);
    tseg(
        &[
            "-M",
            "q35",
            "-m",
            "128M",
            "-nodefaults",
            "-global",
            "mch.extended-tseg-mbytes=24",
        ],
        3,
        24,
    );
}

#[test]
fn q35_extended_tseg_query_answers_the_property() {
    if !require_kvm() {
        return;
    }
    let mut q = start(&[
        "-M",
        "q35",
        "-nodefaults",
        "-global",
        "mch.extended-tseg-mbytes=24",
    ]);
    assert_eq!(q.cfg_read(HOST, 0x50, 2), 0xffff);
    q.cfg_write(HOST, 0x50, 2, 0xffff);
    assert_eq!(q.cfg_read(HOST, 0x50, 2), 24);
    drop(q);
    // Over QEMU's limit: refused at start with QEMU's text.
    let out = std::process::Command::new(machina())
        .args([
            "-M",
            "q35",
            "-accel",
            "qtest",
            "-qtest",
            "stdio",
            "-nodefaults",
            "-global",
            "mch.extended-tseg-mbytes=5000",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run machina");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid extended-tseg-mbytes value: 5000"),
        "{err}"
    );
}

#[test]
fn q35_smbase_lock_hides_ram_until_reset() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("chipset-memory");
    let qmp_path = dir.join("qmp.sock");
    let qmp_arg = format!("unix:{},server=on,wait=off", qmp_path.display());
    let mut q = start(&["-M", "q35", "-nodefaults", "-qmp", &qmp_arg]);
    let mut qmp = QmpClient::connect(&qmp_path, Duration::from_secs(20));
    qmp.ok("qmp_capabilities", Value::Null);
    writeb(&mut q, 0x30000, 0x32);
    writeb(&mut q, 0x4ffff, 0x31);
    set_cfgb(&mut q, 0x9c, 0xff);
    assert_eq!(cfgb(&mut q, 0x9c), 0x01, "the query answers SMRAM-in-RAM");
    assert_eq!(readb(&mut q, 0x30000), 0x32, "not locked yet");
    set_cfgb(&mut q, 0x9c, 0x02);
    assert_eq!(cfgb(&mut q, 0x9c), 0x02);
    for a in [0x30000, 0x4ffff] {
        assert_eq!(readb(&mut q, a), 0xff);
        writeb(&mut q, a, 0);
    }
    assert_eq!(readb(&mut q, 0x50000), 0, "RAM after the 128 KiB");
    set_cfgb(&mut q, 0x9c, 0);
    assert_eq!(cfgb(&mut q, 0x9c), 0x02, "locked");
    qmp.ok("system_reset", Value::Null);
    // The reset rebuilt the machine: RAM kept its contents, the lock is gone.
    assert_eq!(cfgb(&mut q, 0x9c), 0);
    assert_eq!(readb(&mut q, 0x30000), 0x32);
    assert_eq!(readb(&mut q, 0x4ffff), 0x31);
}

#[test]
fn without_smm_nothing_is_hidden() {
    if !require_kvm() {
        return;
    }
    // smm=off: no SMRAM registers (QEMU's has_smm_ranges), TSEG and SMBASE never hide RAM.
    let mut q = start(&["-M", "q35,smm=off", "-m", "128M", "-nodefaults"]);
    assert_eq!(cfgb(&mut q, 0x9d), 0);
    set_cfgb(&mut q, 0x9e, 0x01);
    set_cfgb(&mut q, 0x9d, 0x08 | 0x10);
    set_cfgb(&mut q, 0x9c, 0xff);
    set_cfgb(&mut q, 0x9c, 0x02);
    writeb(&mut q, 128 * MIB - 1, 9);
    assert_eq!(readb(&mut q, 128 * MIB - 1), 9);
    writeb(&mut q, 0x30000, 9);
    assert_eq!(readb(&mut q, 0x30000), 9);
    drop(q);
    // mch.smbase-smram=off (QEMU's pc-q35-4.2 and older): F_SMBASE is a plain register.
    let mut q = start(&[
        "-M",
        "q35",
        "-nodefaults",
        "-global",
        "mch.smbase-smram=off",
    ]);
    writeb(&mut q, 0x30000, 0x32);
    for v in [0xff, 0x02, 0x5a] {
        set_cfgb(&mut q, 0x9c, v);
        assert_eq!(cfgb(&mut q, 0x9c), v);
        assert_eq!(readb(&mut q, 0x30000), 0x32);
    }
}

/// With KVM: the tiny guest reads and writes the BIOS area and one PAM segment it switches
/// itself (read-only memslots, exits for the PCI side, RAM memslots), on both boards.
#[test]
fn guest_sees_pam_through_kvm_memslots() {
    if !require_kvm() {
        return;
    }
    for board in ["pc", "q35"] {
        let r = machina_tests::run_until(
            &machina(),
            &[
                "-M",
                board,
                "-nodefaults",
                "-serial",
                "stdio",
                "-append",
                "machina.test=pam",
            ],
            Duration::from_secs(120),
            // The whole line: a run under load may show part of it first.
            |out| {
                out.lines()
                    .any(|l| l.starts_with("pam: ") && l.contains("re-ro="))
                    && out.ends_with('\n')
            },
        );
        r.check(
            r.stdout
                .contains("pam: bios-ro=1 rw=1 off=1 we=1 re=1 re-ro=1"),
            board,
        );
    }
}
