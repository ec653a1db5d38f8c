//! IDE through the real machina in qtest mode: an `if=ide` disk written and read by PIO and
//! by bus-master DMA (checked in the image file), an out-of-range request answered with an
//! ATA error, an `ide-cd` on the secondary channel read with ATAPI PIO, and the CMOS disk
//! bytes the board writes for the disk's geometry.

mod common;

use common::{machina, require_kvm};
use machina_tests::qtest_client::Qtest;
use machina_tests::temp::TempDir;

/// 00:01.1, the PIIX3 IDE function.
const IDE: (u8, u8, u8) = (0, 1, 1);
const BMDMA: u64 = 0xc000;
const SECTORS: u64 = 1024;

struct Files(TempDir);

impl Files {
    /// Files of their own for each test (tests run in parallel).
    fn new(tag: &str) -> Files {
        let dir = TempDir::new(&format!("qtest-ide-{tag}"));
        std::fs::write(dir.join("disk.img"), vec![0u8; (SECTORS * 512) as usize]).unwrap();
        let mut iso = vec![0u8; 4 * 2048];
        for (i, b) in iso.iter_mut().enumerate() {
            *b = (i / 2048) as u8 + 0x10;
        }
        std::fs::write(dir.join("cd.iso"), iso).unwrap();
        Files(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }

    fn disk(&self) -> Vec<u8> {
        std::fs::read(self.0.join("disk.img")).unwrap()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn out(q: &mut Qtest, size: char, port: u64, v: u64) {
    assert_eq!(q.cmd(&format!("out{size} {port:#x} {v:#x}")), "OK");
}

fn inb(q: &mut Qtest, port: u64) -> u8 {
    q.value(&format!("inb {port:#x}")) as u8
}

fn lba28(q: &mut Qtest, sector: u64, count: u8) {
    out(q, 'b', 0x1f6, 0x40 | ((sector >> 24) & 0xf));
    out(q, 'b', 0x1f2, u64::from(count));
    out(q, 'b', 0x1f3, sector & 0xff);
    out(q, 'b', 0x1f4, (sector >> 8) & 0xff);
    out(q, 'b', 0x1f5, (sector >> 16) & 0xff);
}

/// Run a DMA command through the bus master with one PRD at `buf`; the BM status after.
fn dma(q: &mut Qtest, cmd: u8, sector: u64, count: u8, buf: u64, to_memory: bool) -> u8 {
    let table = 0x8000u64;
    let len = u32::from(count) * 512;
    let mut prd = (buf as u32).to_le_bytes().to_vec();
    prd.extend((len | 0x8000_0000).to_le_bytes());
    assert_eq!(q.cmd(&format!("write {table:#x} 8 0x{}", hex(&prd))), "OK");
    out(q, 'b', BMDMA, 0);
    out(q, 'b', BMDMA + 2, 0x04);
    out(q, 'l', BMDMA + 4, table);
    lba28(q, sector, count);
    out(q, 'b', 0x1f7, u64::from(cmd));
    out(q, 'b', BMDMA, if to_memory { 0x09 } else { 0x01 });
    inb(q, BMDMA + 2)
}

#[test]
fn ide_disk_and_cdrom_through_qtest() {
    if !require_kvm() {
        return;
    }
    let files = Files::new("io");
    let args: Vec<String> = [
        "-machine",
        "pc",
        "-nodefaults",
        "-m",
        "64",
        "-drive",
        &format!("file={},if=ide,format=raw", files.path("disk.img")),
        "-drive",
        &format!("if=none,id=cd,media=cdrom,file={}", files.path("cd.iso")),
        "-device",
        "ide-cd,drive=cd,bus=ide.1,unit=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut q = Qtest::start(&machina(), &args);

    // CMOS: a hard disk at index 0, 1024 sectors -> 2 cylinders (the minimum), 16 heads,
    // 63 sectors (hd_geometry_guess), drive type 47.
    out(&mut q, 'b', 0x70, 0x12);
    assert_eq!(inb(&mut q, 0x71), 0xf0);
    out(&mut q, 'b', 0x70, 0x19);
    assert_eq!(inb(&mut q, 0x71), 47);
    out(&mut q, 'b', 0x70, 0x1d);
    assert_eq!(inb(&mut q, 0x71), 16);

    // I/O decode and bus mastering on, BAR4 at BMDMA.
    q.cfg_write(IDE, 0x20, 4, BMDMA as u32);
    q.cfg_write(IDE, 0x04, 2, 0x05);

    // PIO write of sector 5.
    lba28(&mut q, 5, 1);
    out(&mut q, 'b', 0x1f7, 0x30);
    for i in 0..256u64 {
        out(&mut q, 'w', 0x1f0, 0xa500 | (i & 0xff));
    }
    assert_eq!(inb(&mut q, 0x1f7) & 0x89, 0, "BSY/DRQ/ERR after the write");
    let disk = files.disk();
    assert_eq!(&disk[5 * 512..5 * 512 + 4], &[0x00, 0xa5, 0x01, 0xa5]);

    // PIO read of it back.
    lba28(&mut q, 5, 1);
    out(&mut q, 'b', 0x1f7, 0x20);
    assert_eq!(q.value("inw 0x1f0"), 0xa500);
    assert_eq!(q.value("inw 0x1f0"), 0xa501);
    for _ in 2..256 {
        q.value("inw 0x1f0");
    }
    assert_eq!(inb(&mut q, 0x1f7) & 0x89, 0, "BSY/DRQ/ERR after the read");

    // DMA write of two sectors at 100 from guest memory, then DMA read into other memory.
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    assert_eq!(
        q.cmd(&format!("write 0x100000 1024 0x{}", hex(&pattern))),
        "OK"
    );
    assert_eq!(dma(&mut q, 0xca, 100, 2, 0x100000, false), 0x04);
    assert_eq!(&files.disk()[100 * 512..102 * 512], &pattern[..]);
    assert_eq!(dma(&mut q, 0xc8, 100, 2, 0x200000, true), 0x04);
    assert_eq!(
        q.cmd("read 0x200000 1024"),
        format!("OK 0x{}", hex(&pattern))
    );

    // Past the end of the disk: ABRT, and machina goes on.
    assert_eq!(dma(&mut q, 0xc8, SECTORS, 1, 0x200000, true), 0x04);
    assert_eq!(inb(&mut q, 0x1f7) & 0x01, 0x01);
    assert_eq!(inb(&mut q, 0x1f1), 0x04);
    assert!(q.alive());

    // ATAPI on the secondary channel: READ(10) of CD sector 2 by PIO.
    out(&mut q, 'b', 0x176, 0);
    out(&mut q, 'b', 0x174, 0x00);
    out(&mut q, 'b', 0x175, 0x08);
    out(&mut q, 'b', 0x177, 0xa0);
    let pkt = [0x28u8, 0, 0, 0, 0, 2, 0, 0, 1, 0, 0, 0];
    for w in pkt.chunks(2) {
        out(
            &mut q,
            'w',
            0x170,
            u64::from(u16::from_le_bytes([w[0], w[1]])),
        );
    }
    assert_eq!(inb(&mut q, 0x177) & 0x89, 0x08, "DRQ for the data");
    for _ in 0..1024 {
        assert_eq!(q.value("inw 0x170"), 0x1212);
    }
    assert_eq!(inb(&mut q, 0x177) & 0x89, 0, "done");
}

/// Refused IDE configurations: exit status 1 and QEMU's one-line message.
#[test]
fn ide_option_errors() {
    let files = Files::new("errors");
    let img = files.path("disk.img");
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["-device".into(), "ide-hd,bus=ide.0".into()],
            "-device ide-hd,bus=ide.0: No drive specified".into(),
        ),
        (
            vec!["-device".into(), "ide-cd,bus=ide.0,unit=2".into()],
            "-device ide-cd,bus=ide.0,unit=2: Can't create IDE unit 2, bus supports only 2 units"
                .into(),
        ),
        (
            vec![
                "-device".into(),
                "ide-cd,bus=ide.0".into(),
                "-device".into(),
                "ide-cd,bus=ide.0,unit=0".into(),
            ],
            "-device ide-cd,bus=ide.0,unit=0: IDE unit 0 is in use".into(),
        ),
        (
            vec!["-device".into(), "ide-cd,bus=ide.5".into()],
            "-device ide-cd,bus=ide.5: Bus 'ide.5' not found".into(),
        ),
        (
            vec![
                "-drive".into(),
                format!("if=ide,file={img},format=raw,index=7"),
            ],
            format!(
                "-drive if=ide,file={img},format=raw,index=7: machine type does not support if=ide,bus=3,unit=1"
            ),
        ),
        (
            vec![
                "-drive".into(),
                format!("if=none,id=d,file={img},format=raw,readonly=on"),
                "-device".into(),
                "ide-hd,drive=d".into(),
            ],
            "-device ide-hd,drive=d: Block node is read-only".into(),
        ),
        (
            vec![
                "-drive".into(),
                "if=none,id=d,media=cdrom".into(),
                "-device".into(),
                "ide-hd,drive=d".into(),
            ],
            "-device ide-hd,drive=d: Device needs media, but drive is empty".into(),
        ),
        (
            vec![
                "-drive".into(),
                format!("if=none,id=d,file={img},format=raw"),
                "-device".into(),
                "ide-hd,drive=d,heads=17,cyls=3,secs=4".into(),
            ],
            "-device ide-hd,drive=d,heads=17,cyls=3,secs=4: heads must be between 1 and 16".into(),
        ),
    ];
    for (args, message) in cases {
        let out = std::process::Command::new(machina())
            .args(["-machine", "pc", "-nodefaults", "-display", "none", "-S"])
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end(), format!("machina: {message}"), "{args:?}");
    }
}

fn flush_status(q: &mut Qtest) -> u8 {
    out(q, 'b', 0x1f6, 0);
    out(q, 'b', 0x1f7, 0xe7);
    inb(q, 0x1f7)
}

/// blkdebug and werror=stop through the whole VMM: a flush failing once with EIO stops the
/// machine (BLOCK_IO_ERROR, STOP, status io-error) with the drive busy, `cont` retries it;
/// an HMP `qemu-io` breakpoint holds a flush until `resume`.
#[test]
fn blkdebug_flush_stop_and_breakpoint() {
    use machina_tests::qmp_client::QmpClient;
    use serde_json::json;
    if !require_kvm() {
        return;
    }
    let files = Files::new("blkdebug");
    let config = files.0.join("blkdebug.conf");
    std::fs::write(
        &config,
        "[inject-error]\nevent = \"flush_to_disk\"\nerrno = \"5\"\nstate = \"1\"\nonce = \"on\"\n\
         [set-state]\nevent = \"flush_to_disk\"\nnew_state = \"2\"\n",
    )
    .unwrap();
    let qmp_path = files.0.join("qmp.sock");
    let args: Vec<String> = vec![
        "-machine".into(),
        "pc".into(),
        "-nodefaults".into(),
        "-drive".into(),
        format!(
            "file=blkdebug:{}:{},if=ide,format=raw,werror=stop,rerror=stop",
            config.display(),
            files.path("disk.img")
        ),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp_path.display()),
    ];
    let mut q = Qtest::start(&machina(), &args);
    let mut qmp = QmpClient::connect(&qmp_path, std::time::Duration::from_secs(20));
    qmp.ok("qmp_capabilities", serde_json::Value::Null);
    q.cfg_write(IDE, 0x20, 4, BMDMA as u32);
    q.cfg_write(IDE, 0x04, 2, 0x05);

    // Dirty the disk, then flush: EIO once, the machine stops with the drive busy.
    assert_eq!(q.cmd("write 0x100000 4 0x01020304"), "OK");
    assert_eq!(dma(&mut q, 0xca, 1, 1, 0x100000, false), 0x04);
    assert_eq!(flush_status(&mut q) & 0xc1, 0xc0, "BSY|DRDY while stopped");
    let e = qmp.wait_event("BLOCK_IO_ERROR");
    assert_eq!(e["data"]["device"], "ide0-hd0");
    assert_eq!(e["data"]["operation"], "write");
    assert_eq!(e["data"]["action"], "stop");
    qmp.wait_event("STOP");
    assert_eq!(
        qmp.ok("query-status", serde_json::Value::Null)["status"],
        "io-error"
    );
    qmp.ok("cont", serde_json::Value::Null);
    assert_eq!(
        inb(&mut q, 0x1f7) & 0xc9,
        0x40,
        "the retried flush succeeded"
    );

    // A breakpoint at flush_to_os holds the next flush until resumed.
    let hmp = |qmp: &mut QmpClient, line: &str| {
        qmp.ok("human-monitor-command", json!({"command-line": line}))
    };
    assert_eq!(
        hmp(&mut qmp, "qemu-io ide0-hd0 \"break flush_to_os A\""),
        ""
    );
    assert_eq!(dma(&mut q, 0xca, 1, 1, 0x100000, false), 0x04);
    assert_eq!(flush_status(&mut q) & 0xc1, 0xc0);
    assert_eq!(hmp(&mut qmp, "qemu-io ide0-hd0 \"resume A\""), "");
    assert_eq!(inb(&mut q, 0x1f7) & 0xc9, 0x40);
    assert_ne!(hmp(&mut qmp, "qemu-io ide0-hd0 \"resume A\""), "");
}
