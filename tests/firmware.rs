//! System firmware: `-bios` ROM and CFI01 flash (`-drive if=pflash`, `-machine pflash0=`)
//! as the guest sees them (qtest reads at the top of 4 GiB and in the ISA window behind
//! PAM, flash commands whose results land in the image file), QEMU's refusals, libvirt's
//! `<loader>` command lines, and booting: the first vCPU starts at the reset vector, and
//! Debian's SeaBIOS boots a boot sector from an IDE disk.

mod common;

use common::{machina, require_kvm, LIMIT};
use machina_tests::qtest_client::{hex_bytes, Qtest};
use machina_tests::temp::TempDir;
use std::path::Path;

const FOUR_GIB: u64 = 1 << 32;

/// A ROM whose bytes differ across 64 KiB (so a wrong window or offset shows).
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn read(q: &mut Qtest, addr: u64, len: usize) -> Vec<u8> {
    let r = q.cmd(&format!("read {addr:#x} {len:#x}"));
    let hex = r
        .strip_prefix("OK 0x")
        .unwrap_or_else(|| panic!("read {addr:#x}: {r}"));
    hex_bytes(hex)
}

fn writeb(q: &mut Qtest, addr: u64, v: u8) {
    assert_eq!(q.cmd(&format!("writeb {addr:#x} {v:#x}")), "OK");
}

fn readb(q: &mut Qtest, addr: u64) -> u8 {
    q.value(&format!("readb {addr:#x}")) as u8
}

/// i440FX PAM register `reg` (0x59..0x5f) of 00:00.0.
fn set_pam(q: &mut Qtest, reg: u16, value: u8) {
    q.cfg_write((0, 0, 0), reg, 1, u32::from(value));
}

#[test]
fn bios_rom_below_4g_and_in_the_isa_window_behind_pam() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("fw-bios");
    let rom = pattern(256 << 10);
    std::fs::write(dir.join("rom.bin"), &rom).unwrap();
    // A bare name is found in a -L directory, as QEMU's qemu_find_file.
    let dirs = dir.display().to_string();
    let mut q = Qtest::start(
        &machina(),
        &args(&[
            "-machine",
            "pc",
            "-nodefaults",
            "-L",
            "/nonexistent",
            "-L",
            &dirs,
            "-bios",
            "rom.bin",
        ]),
    );
    let len = rom.len() as u64;
    assert_eq!(
        read(&mut q, FOUR_GIB - len, rom.len()),
        rom,
        "the image ends at 4 GiB"
    );
    // The ISA window: the last 128 KiB at 0xe0000.
    assert_eq!(
        read(&mut q, 0xe0000, 128 << 10),
        rom[rom.len() - (128 << 10)..]
    );
    // Read-only at both addresses.
    writeb(&mut q, FOUR_GIB - 16, !rom[rom.len() - 16]);
    assert_eq!(readb(&mut q, FOUR_GIB - 16), rom[rom.len() - 16]);
    writeb(&mut q, 0xf0000, !rom[rom.len() - 0x10000]);
    assert_eq!(readb(&mut q, 0xf0000), rom[rom.len() - 0x10000]);
    // PAM0 high nibble 3: 0xf0000-0xfffff is RAM (read/write), the ROM behind it.
    set_pam(&mut q, 0x59, 0x30);
    writeb(&mut q, 0xf0000, 0xa5);
    assert_eq!(readb(&mut q, 0xf0000), 0xa5);
    assert_eq!(
        readb(&mut q, 0xe0000),
        rom[rom.len() - (128 << 10)],
        "PAM5 still shows the ROM"
    );
    // Back to the PCI side: the ROM again, the RAM write kept underneath.
    set_pam(&mut q, 0x59, 0x00);
    assert_eq!(readb(&mut q, 0xf0000), rom[rom.len() - 0x10000]);
    set_pam(&mut q, 0x59, 0x10);
    assert_eq!(readb(&mut q, 0xf0000), 0xa5);
    q.finish();
}

/// A small ISA window when the image is smaller than 128 KiB: all of it, below 1 MiB.
#[test]
fn small_bios_fills_the_top_of_the_isa_window() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("fw-small");
    let rom = pattern(64 << 10);
    std::fs::write(dir.join("rom.bin"), &rom).unwrap();
    let path = dir.join("rom.bin").display().to_string();
    let mut q = Qtest::start(
        &machina(),
        &args(&["-machine", "q35", "-nodefaults", "-bios", &path]),
    );
    assert_eq!(read(&mut q, 0xf0000, rom.len()), rom);
    assert_eq!(read(&mut q, FOUR_GIB - 0x10000, rom.len()), rom);
    q.finish();
}

#[test]
fn flash_program_and_erase_land_in_the_file() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("fw-flash");
    let code = pattern(64 << 10);
    std::fs::write(dir.join("code.fd"), &code).unwrap();
    std::fs::write(dir.join("vars.fd"), vec![0x11u8; 8 << 10]).unwrap();
    let code_path = dir.join("code.fd").display().to_string();
    let vars_path = dir.join("vars.fd").display().to_string();
    let mut q = Qtest::start(
        &machina(),
        &args(&[
            "-machine",
            "q35",
            "-nodefaults",
            "-drive",
            &format!("if=pflash,format=raw,readonly=on,file={code_path}"),
            "-drive",
            &format!("if=pflash,format=raw,file={vars_path}"),
        ]),
    );
    // Flash 0 at the top, flash 1 right below it; the ISA window shows flash 0.
    let vars = FOUR_GIB - (64 << 10) - (8 << 10);
    assert_eq!(read(&mut q, FOUR_GIB - (64 << 10), code.len()), code);
    assert_eq!(read(&mut q, 0xf0000, code.len()), code);
    assert_eq!(read(&mut q, vars, 16), vec![0x11; 16]);

    // Program one byte: status until read-array, the byte in the file.
    writeb(&mut q, vars + 5, 0x40);
    writeb(&mut q, vars + 5, 0x42);
    assert_eq!(readb(&mut q, vars), 0x80, "status: ready");
    writeb(&mut q, vars, 0xff);
    assert_eq!(readb(&mut q, vars + 5), 0x42);
    assert_eq!(std::fs::read(&vars_path).unwrap()[5], 0x42);

    // Erase the second 4 KiB block.
    writeb(&mut q, vars + 0x1234, 0x20);
    writeb(&mut q, vars + 0x1234, 0xd0);
    assert_eq!(readb(&mut q, vars + 0x1234), 0x80);
    writeb(&mut q, vars, 0xff);
    let file = std::fs::read(&vars_path).unwrap();
    assert!(file[0x1000..].iter().all(|&b| b == 0xff), "block 1 erased");
    assert!(file[..0x1000]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == if i == 5 { 0x42 } else { 0x11 }));
    assert_eq!(read(&mut q, vars + 0x1000, 4), vec![0xff; 4]);

    // CFI query: "QRY", 8 KiB device, two 4 KiB blocks.
    writeb(&mut q, vars + 0x55, 0x98);
    let qry: Vec<u8> = (0x10..0x13).map(|o| readb(&mut q, vars + o)).collect();
    assert_eq!(qry, b"QRY".to_vec());
    assert_eq!(readb(&mut q, vars + 0x27), 13);
    assert_eq!(readb(&mut q, vars + 0x2d), 1);
    writeb(&mut q, vars, 0xff);

    // The read-only code flash: program and erase fail in the status, nothing changes.
    let top = FOUR_GIB - (64 << 10);
    writeb(&mut q, top + 1, 0x40);
    writeb(&mut q, top + 1, 0x00);
    assert_eq!(readb(&mut q, top), 0x90, "ready + program error");
    writeb(&mut q, top, 0x50);
    assert_eq!(read(&mut q, top, 4), code[..4].to_vec());
    assert_eq!(std::fs::read(&code_path).unwrap(), code);
    q.finish();
}

/// libvirt's `<loader readonly='yes' type='pflash'>` with `<nvram>`: -blockdev nodes and
/// `-machine ...,pflash0=,pflash1=`; and `<loader type='rom'>`: `-bios`.
#[test]
fn libvirt_loader_forms_are_accepted() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("fw-libvirt");
    let code = pattern(128 << 10);
    std::fs::write(dir.join("OVMF_CODE.fd"), &code).unwrap();
    std::fs::write(dir.join("guest_VARS.fd"), vec![0u8; 16 << 10]).unwrap();
    let d = dir.display();
    let line = args(&[
        "-machine",
        "pc-q35-10.2,usb=off,dump-guest-core=off,pflash0=libvirt-pflash0-format,pflash1=libvirt-pflash1-format",
        "-nodefaults",
        "-blockdev",
        &format!(r#"{{"driver":"file","filename":"{d}/OVMF_CODE.fd","node-name":"libvirt-pflash0-storage","auto-read-only":true,"discard":"unmap"}}"#),
        "-blockdev",
        r#"{"node-name":"libvirt-pflash0-format","read-only":true,"driver":"raw","file":"libvirt-pflash0-storage"}"#,
        "-blockdev",
        &format!(r#"{{"driver":"file","filename":"{d}/guest_VARS.fd","node-name":"libvirt-pflash1-storage","auto-read-only":true,"discard":"unmap"}}"#),
        "-blockdev",
        r#"{"node-name":"libvirt-pflash1-format","read-only":false,"driver":"raw","file":"libvirt-pflash1-storage"}"#,
    ]);
    let mut q = Qtest::start(&machina(), &line);
    assert_eq!(
        read(&mut q, FOUR_GIB - (128 << 10), 64),
        code[..64].to_vec()
    );
    let vars = FOUR_GIB - (128 << 10) - (16 << 10);
    writeb(&mut q, vars + 7, 0x10);
    writeb(&mut q, vars + 7, 0x5a);
    writeb(&mut q, vars, 0xff);
    assert_eq!(std::fs::read(dir.join("guest_VARS.fd")).unwrap()[7], 0x5a);
    q.finish();

    let rom = dir.join("OVMF_CODE.fd").display().to_string();
    let mut q = Qtest::start(
        &machina(),
        &args(&[
            "-machine",
            "pc-i440fx-10.2,usb=off",
            "-nodefaults",
            "-bios",
            &rom,
        ]),
    );
    assert_eq!(read(&mut q, 0xe0000, 64), code[..64].to_vec());
    q.finish();
}

fn refusal(list: &[&str]) -> String {
    let r = machina_tests::run(&machina(), list, LIMIT);
    assert_eq!(r.status, Some(1), "{list:?} exits 1: {r:?}");
    r.stderr
}

#[test]
fn firmware_refusals_use_qemus_texts() {
    let dir = TempDir::new("fw-refusals");
    std::fs::write(dir.join("odd.bin"), vec![0u8; 1000]).unwrap();
    std::fs::write(dir.join("f5k"), vec![0u8; 5000]).unwrap();
    std::fs::write(dir.join("f8k"), vec![0u8; 8192]).unwrap();
    let p = |n: &str| dir.join(n).display().to_string();
    let base = ["-machine", "pc", "-nodefaults", "-display", "none"];
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            args(&["-bios", "/nonexistent/bios.bin"]),
            "machina: could not load PC BIOS '/nonexistent/bios.bin'".into(),
        ),
        (args(&["-bios", &p("odd.bin")]), format!("machina: could not load PC BIOS '{}'", p("odd.bin"))),
        (args(&["-bios", &dir.display().to_string()]), format!("machina: could not load PC BIOS '{}'", dir.display())),
        (
            args(&["-drive", &format!("if=pflash,format=raw,file={}", p("f5k"))]),
            "machina: system firmware block device pflash0 has invalid size 5000 (its size must be a non-zero multiple of 0x1000)".into(),
        ),
        (
            args(&["-drive", &format!("if=pflash,format=raw,file={},unit=1", p("f8k"))]),
            "machina: pflash1 requires pflash0".into(),
        ),
        (
            args(&["-machine", "pc,pflash0=nonode"]),
            "machina: Property 'cfi.pflash01.drive' can't find value 'nonode'".into(),
        ),
        (
            args(&["-machine", "pc,max-fw-size=4k", "-drive", &format!("if=pflash,format=raw,file={}", p("f8k"))]),
            "machina: combined size of system firmware exceeds 4096 bytes".into(),
        ),
        (
            args(&["-machine", "pc,max-fw-size=17M"]),
            "machina: User specified max allowed firmware size 17825792 is greater than 16MiB. \
             If combined firmware size exceeds 16MiB the system may not boot, or experience \
             intermittentstability issues."
                .into(),
        ),
        (
            args(&["-drive", &format!("if=pflash,format=raw,file={},unit=2", p("f8k"))]),
            format!("machina: -drive if=pflash,format=raw,file={},unit=2: machine type does not support if=pflash,bus=0,unit=2", p("f8k")),
        ),
        (
            args(&[
                "-machine",
                "pc,pflash0=n",
                "-blockdev",
                &format!("driver=file,filename={},node-name=n", p("f8k")),
                "-drive",
                &format!("if=pflash,format=raw,file={}", p("f8k")),
            ]),
            format!("machina: -drive if=pflash,format=raw,file={}: clashes with -machine", p("f8k")),
        ),
    ];
    for (extra, expected) in cases {
        let mut list: Vec<&str> = base.to_vec();
        list.extend(extra.iter().map(String::as_str));
        let stderr = refusal(&list);
        assert_eq!(stderr.trim_end(), expected, "{extra:?}");
    }
}

/// 64 KiB of firmware: at the reset vector a far jump to F000:FF80, i.e. into the ISA
/// window below 1 MiB (the same image), where code writes "OK" to COM1 and halts.
fn reset_vector_firmware(path: &Path) {
    let mut img = vec![0xffu8; 64 << 10];
    let code = [
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'O', 0xee, // mov al, 'O'; out dx, al
        0xb0, b'K', 0xee, // mov al, 'K'; out dx, al
        0xb0, b'\n', 0xee, // mov al, '\n'; out dx, al
        0xf4, 0xeb, 0xfd, // hlt; jmp $-3
    ];
    img[0xff80..0xff80 + code.len()].copy_from_slice(&code);
    img[0xfff0..0xfff5].copy_from_slice(&[0xea, 0x80, 0xff, 0x00, 0xf0]);
    std::fs::write(path, img).unwrap();
}

#[test]
fn firmware_starts_at_the_reset_vector() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("fw-reset");
    let fw = dir.join("fw.bin");
    reset_vector_firmware(&fw);
    let fw = fw.display().to_string();
    for extra in [
        vec!["-machine", "pc", "-bios", &fw],
        vec![
            "-machine",
            "q35",
            "-drive",
            &format!("if=pflash,format=raw,readonly=on,file={fw}"),
        ],
    ] {
        let mut list = vec!["-nodefaults", "-display", "none", "-serial", "stdio"];
        list.extend(extra.iter().map(|s| &**s));
        let r = machina_tests::run_until(&machina(), &list, LIMIT, |out| out.contains("OK\n"));
        assert!(r.stdout.contains("OK\n"), "{list:?}: {r:?}");
    }
}

/// A system reset starts the firmware again at the reset vector (the flash keeps what was
/// programmed: it is the same image).
#[test]
fn system_reset_restarts_the_firmware() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("fw-sysreset");
    let fw = dir.join("fw.bin");
    reset_vector_firmware(&fw);
    let serial = dir.join("serial.log");
    let qmp_sock = dir.join("qmp.sock");
    let mut child = std::process::Command::new(machina())
        .args(["-machine", "pc", "-nodefaults", "-display", "none", "-bios"])
        .arg(&fw)
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp_sock.display()))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start machina");
    let printed = |n: usize| {
        let start = std::time::Instant::now();
        while start.elapsed() < LIMIT {
            if std::fs::read_to_string(&serial).is_ok_and(|t| t.matches("OK\n").count() >= n) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    };
    let first = printed(1);
    let mut qmp = machina_tests::qmp_client::QmpClient::connect(&qmp_sock, LIMIT);
    qmp.ok("qmp_capabilities", serde_json::Value::Null);
    let again = first && {
        qmp.ok("system_reset", serde_json::Value::Null);
        printed(2)
    };
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&serial).unwrap_or_default();
    assert!(first, "the firmware ran: {text:?}");
    assert!(again, "it ran again after system_reset: {text:?}");
}

/// Debian's SeaBIOS (`apt-get install seabios`) boots a boot sector from an IDE disk.
#[test]
fn seabios_boots_a_boot_sector_from_ide() {
    let bios = Path::new("/usr/share/seabios/bios.bin");
    if !bios.exists() {
        eprintln!(
            "SKIP: {} is not installed (apt-get install seabios)",
            bios.display()
        );
        return;
    }
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("fw-seabios");
    // xor ax,ax; mov ds,ax; mov dx,0x3f8; mov si,msg; print loop; hlt.
    let mut code = vec![0x31, 0xc0, 0x8e, 0xd8, 0xba, 0xf8, 0x03, 0xbe, 0, 0];
    code.extend([
        0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8, 0xf4, 0xeb, 0xfd,
    ]);
    let msg = code.len();
    code.extend(b"MBR: booted by firmware\n\0");
    code[8..10].copy_from_slice(&(0x7c00 + msg as u16).to_le_bytes());
    let mut disk = vec![0u8; 1 << 20];
    disk[..code.len()].copy_from_slice(&code);
    disk[510] = 0x55;
    disk[511] = 0xaa;
    std::fs::write(dir.join("disk.img"), disk).unwrap();
    let drive = format!("file={},format=raw,if=ide", dir.join("disk.img").display());
    let list = [
        "-machine",
        "pc",
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-bios",
        "/usr/share/seabios/bios.bin",
        "-drive",
        &drive,
    ];
    let r = machina_tests::run_until(&machina(), &list, LIMIT, |out| {
        out.contains("booted by firmware")
    });
    assert!(r.stdout.contains("MBR: booted by firmware\n"), "{r:?}");
}
