//! The ATA/ATAPI state machine driven through its registers, with an image file and test
//! memory: what lands on disk and in memory, the status and error bits the guest sees.

use super::bmdma::tests::TestMemory;
use super::bmdma::{self, DmaMemory};
use super::channel::{Channel, DmaPort};
use super::disk::Disk;
use super::drive::*;
use super::geometry::{Chs, Translation};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

const SECTORS: u64 = 64;

struct Image(std::path::PathBuf);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn image(name: &str, bytes: Vec<u8>) -> (Image, Disk) {
    let path = std::env::temp_dir().join(format!("machina-ide-{name}-{}", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    (Image(path), Disk::new(file, false, true, None).unwrap())
}

fn info(kind: Kind) -> DriveInfo {
    DriveInfo {
        kind,
        serial: "SERIAL".into(),
        model: "MODEL".into(),
        version: "1.0".into(),
        wwn: 0,
        discard: true,
        rotation_rate: 0,
        chs: Chs {
            cyls: 4,
            heads: 1,
            secs: 16,
        },
        translation: Translation::None,
    }
}

fn channel(kind: Kind, disk: Disk) -> (Channel, Arc<TestMemory>) {
    let mem = Arc::new(TestMemory(Mutex::new(vec![0; 1 << 20])));
    let port = DmaPort {
        mem: mem.clone() as Arc<dyn DmaMemory>,
        bus_master: Arc::new(AtomicBool::new(true)),
    };
    let ch = Channel::new(
        [Drive::new(true, info(kind), Some(disk)), Drive::absent()],
        Some(port),
    );
    (ch, mem)
}

fn lba28(ch: &mut Channel, sector: u32, count: u8) {
    ch.ioport_write(6, DEV_LBA | ((sector >> 24) as u8 & 0xf));
    ch.ioport_write(2, count);
    ch.ioport_write(3, sector as u8);
    ch.ioport_write(4, (sector >> 8) as u8);
    ch.ioport_write(5, (sector >> 16) as u8);
}

fn status(ch: &mut Channel) -> u8 {
    ch.ioport_read(7)
}

#[test]
fn pio_write_then_read() {
    let (img, disk) = image("pio", vec![0; (SECTORS * 512) as usize]);
    let (mut ch, _) = channel(Kind::Hd, disk);
    lba28(&mut ch, 3, 2);
    ch.ioport_write(7, 0x30); // WRITE SECTORS
    for i in 0..512u32 {
        assert_ne!(status(&mut ch) & DRQ, 0);
        ch.data_write(2, 0x0100 + (i & 0xff));
    }
    assert_eq!(status(&mut ch) & (BSY | DRQ | ERR), 0);
    let on_disk = std::fs::read(&img.0).unwrap();
    assert_eq!(&on_disk[3 * 512..3 * 512 + 2], &[0, 1]);
    assert_eq!(on_disk[5 * 512], 0);
    lba28(&mut ch, 3, 2);
    ch.ioport_write(7, 0x20); // READ SECTORS
    let words: Vec<u32> = (0..512).map(|_| ch.data_read(2)).collect();
    assert!(words
        .iter()
        .enumerate()
        .all(|(i, &w)| w == 0x0100 + (i as u32 & 0xff)));
    assert_eq!(status(&mut ch) & (DRQ | ERR), 0);
}

#[test]
fn out_of_range_and_lba48() {
    let (_img, disk) = image("range", vec![0; (SECTORS * 512) as usize]);
    let (mut ch, _) = channel(Kind::Hd, disk);
    // The last sector reads; one past it aborts.
    lba28(&mut ch, SECTORS as u32 - 1, 1);
    ch.ioport_write(7, 0x20);
    assert_eq!(status(&mut ch) & (DRQ | ERR), DRQ);
    for _ in 0..256 {
        ch.data_read(2);
    }
    lba28(&mut ch, SECTORS as u32, 1);
    ch.ioport_write(7, 0x20);
    assert_eq!(status(&mut ch) & ERR, ERR);
    assert_eq!(ch.ioport_read(1), ABRT);
    // LBA48: a huge high-order LBA is refused, never reached.
    ch.ioport_write(6, DEV_LBA);
    for (reg, v) in [
        (2u64, 0u8),
        (2, 1),
        (3, 0xff),
        (3, 0),
        (4, 0xff),
        (4, 0),
        (5, 0xff),
        (5, 0),
    ] {
        ch.ioport_write(reg, v);
    }
    ch.ioport_write(7, 0x24); // READ SECTORS EXT
    assert_eq!(status(&mut ch) & ERR, ERR);
    // READ NATIVE MAX ADDRESS EXT names the last sector.
    ch.ioport_write(6, DEV_LBA);
    ch.ioport_write(7, 0x27);
    assert_eq!(ch.ioport_read(3), (SECTORS - 1) as u8);
}

fn prd(mem: &TestMemory, table: u64, entries: &[(u32, u32)]) {
    for (i, (addr, size)) in entries.iter().enumerate() {
        let mut e = [0u8; 8];
        e[..4].copy_from_slice(&addr.to_le_bytes());
        e[4..].copy_from_slice(&size.to_le_bytes());
        mem.write(table + 8 * i as u64, &e);
    }
}

/// ide-test's sequence: stop the bus master, clear its interrupt, point it at the table,
/// issue the command, start.
fn dma(ch: &mut Channel, cmd: u8, table: u32, to_memory: bool) {
    ch.bm_cmd_write(0);
    ch.bm.status_write(bmdma::STATUS_INT);
    ch.bm.addr_write(0, &table.to_le_bytes());
    ch.ioport_write(7, cmd);
    ch.bm_cmd_write(bmdma::CMD_START | if to_memory { bmdma::CMD_WRITE } else { 0 });
}

#[test]
fn dma_write_read_and_short_prds() {
    let (img, disk) = image("dma", vec![0; (SECTORS * 512) as usize]);
    let (mut ch, mem) = channel(Kind::Hd, disk);
    // Two PRDs (512 + 512 bytes) for a two-sector write.
    mem.write(0x10000, &[0xa5; 512]);
    mem.write(0x20000, &[0x5a; 512]);
    prd(
        &mem,
        0x1000,
        &[(0x10000, 512), (0x20000, 512 | 0x8000_0000)],
    );
    lba28(&mut ch, 8, 2);
    dma(&mut ch, 0xca, 0x1000, false);
    assert_eq!(ch.bm.status & 7, bmdma::STATUS_INT);
    assert!(ch.irq_level());
    assert_eq!(status(&mut ch) & (BSY | DRQ | ERR), 0);
    assert!(!ch.irq_level());
    let on_disk = std::fs::read(&img.0).unwrap();
    assert!(on_disk[8 * 512..9 * 512].iter().all(|&b| b == 0xa5));
    assert!(on_disk[9 * 512..10 * 512].iter().all(|&b| b == 0x5a));
    // Read them back into one bigger PRD: Active stays set.
    prd(&mem, 0x1000, &[(0x30000, 4096 | 0x8000_0000)]);
    lba28(&mut ch, 8, 2);
    dma(&mut ch, 0xc8, 0x1000, true);
    assert_eq!(ch.bm.status & 7, bmdma::STATUS_INT | bmdma::STATUS_ACTIVE);
    let mut back = [0u8; 1024];
    mem.read(0x30000, &mut back);
    assert!(back[..512].iter().all(|&b| b == 0xa5) && back[512..].iter().all(|&b| b == 0x5a));
    // A PRD shorter than the request: no interrupt, Active clears, no error.
    prd(&mem, 0x1000, &[(0x30000, 256 | 0x8000_0000)]);
    lba28(&mut ch, 8, 1);
    dma(&mut ch, 0xc8, 0x1000, true);
    assert_eq!(ch.bm.status & 7, 0);
    assert_eq!(status(&mut ch) & (ERR | DRQ | BSY), 0);
    // A request past the end of the disk is an ATA error with an interrupt.
    prd(&mem, 0x1000, &[(0x30000, 512 | 0x8000_0000)]);
    lba28(&mut ch, SECTORS as u32, 1);
    dma(&mut ch, 0xc8, 0x1000, true);
    assert_eq!(ch.bm.status & 7, bmdma::STATUS_INT);
    assert_eq!(status(&mut ch) & ERR, ERR);
    // PRDs pointing outside guest memory: the write lands nowhere, nothing breaks.
    prd(&mem, 0x1000, &[(0xffff_f000, 512 | 0x8000_0000)]);
    lba28(&mut ch, 0, 1);
    dma(&mut ch, 0xc8, 0x1000, true);
    assert_eq!(ch.bm.status & 7, bmdma::STATUS_INT);
}

#[test]
fn identify_and_set_features() {
    let (_img, disk) = image("id", vec![0; (SECTORS * 512) as usize]);
    let (mut ch, _) = channel(Kind::Hd, disk);
    ch.ioport_write(6, 0);
    ch.ioport_write(7, 0xec);
    let id: Vec<u16> = (0..256).map(|_| ch.data_read(2) as u16).collect();
    assert_eq!(id[1], 4);
    assert_eq!(id[6], 16);
    assert_eq!(id[10], u16::from_le_bytes([b'E', b'S']));
    assert_eq!(
        u32::from(id[60]) | (u32::from(id[61]) << 16),
        SECTORS as u32
    );
    assert_ne!(id[85] & (1 << 5), 0);
    // Write cache off: IDENTIFY says so.
    ch.ioport_write(1, 0x82);
    ch.ioport_write(7, 0xef);
    assert_eq!(status(&mut ch) & ERR, 0);
    ch.ioport_write(7, 0xec);
    let id: Vec<u16> = (0..256).map(|_| ch.data_read(2) as u16).collect();
    assert_eq!(id[85] & (1 << 5), 0);
    // Unknown commands and unknown features abort.
    ch.ioport_write(7, 0xff);
    assert_eq!(ch.ioport_read(1), ABRT);
    ch.ioport_write(1, 0x77);
    ch.ioport_write(7, 0xef);
    assert_eq!(status(&mut ch) & ERR, ERR);
}

fn packet(ch: &mut Channel, pkt: [u8; 12]) {
    for w in pkt.chunks(2) {
        ch.data_write(2, u32::from(u16::from_le_bytes([w[0], w[1]])));
    }
}

#[test]
fn atapi_pio_bursts_and_errors() {
    let mut bytes = vec![0u8; 8 * 2048];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i / 2048) as u8 + 1;
    }
    let (_img, disk) = image("cd", bytes);
    let (mut ch, _) = channel(Kind::Cd, disk);
    // READ(10) of 3 sectors with a byte count limit of 3000: bursts of 3000, 3000, 144.
    ch.ioport_write(6, 0);
    ch.ioport_write(4, (3000 & 0xff) as u8);
    ch.ioport_write(5, (3000 >> 8) as u8);
    ch.ioport_write(7, 0xa0);
    assert_eq!(status(&mut ch) & (DRQ | BSY), DRQ);
    packet(&mut ch, [0x28, 0, 0, 0, 0, 2, 0, 0, 3, 0, 0, 0]);
    let mut got = Vec::new();
    for burst in [3000usize, 3000, 144] {
        assert!(ch.irq_level());
        assert_eq!(status(&mut ch) & (DRQ | ERR), DRQ);
        let len = usize::from(ch.ioport_read(4)) | (usize::from(ch.ioport_read(5)) << 8);
        assert_eq!(len, burst);
        for _ in 0..burst / 2 {
            got.extend((ch.data_read(2) as u16).to_le_bytes());
        }
    }
    assert_eq!(status(&mut ch) & (DRQ | ERR), 0);
    assert_eq!(got.len(), 3 * 2048);
    assert!(got[..2048].iter().all(|&b| b == 3) && got[4096..].iter().all(|&b| b == 5));
    // Past the end of the medium: ILLEGAL REQUEST, LBA out of range.
    ch.ioport_write(7, 0xa0);
    packet(&mut ch, [0x28, 0, 0, 0, 0, 7, 0, 0, 2, 0, 0, 0]);
    assert_eq!(status(&mut ch) & ERR, ERR);
    assert_eq!(ch.ioport_read(1) >> 4, 0x05);
    // An unknown opcode, then REQUEST SENSE reports it.
    ch.ioport_write(7, 0xa0);
    packet(&mut ch, [0xee; 12]);
    assert_eq!(status(&mut ch) & ERR, ERR);
    ch.ioport_write(7, 0xa0);
    packet(&mut ch, [0x03, 0, 0, 0, 18, 0, 0, 0, 0, 0, 0, 0]);
    let sense: Vec<u8> = (0..9)
        .flat_map(|_| (ch.data_read(2) as u16).to_le_bytes())
        .collect();
    assert_eq!((sense[2], sense[12]), (0x05, 0x20));
    // ATA disk commands are refused by a CD-ROM.
    ch.ioport_write(7, 0xc8);
    assert_eq!(ch.ioport_read(1), ABRT);
}

#[test]
fn atapi_dma_raw_sector() {
    let (_img, disk) = image("cdraw", vec![0x77; 4 * 2048]);
    let (mut ch, mem) = channel(Kind::Cd, disk);
    prd(&mem, 0x1000, &[(0x40000, 2352 | 0x8000_0000)]);
    ch.ioport_write(6, 0);
    ch.ioport_write(1, 1); // DMA
    ch.bm.addr_write(0, &0x1000u32.to_le_bytes());
    ch.ioport_write(7, 0xa0);
    packet(&mut ch, [0xbe, 0, 0, 0, 0, 1, 0, 0, 1, 0xf8, 0, 0]);
    ch.bm_cmd_write(bmdma::CMD_START | bmdma::CMD_WRITE);
    assert_eq!(ch.bm.status & 7, bmdma::STATUS_INT);
    let mut raw = [0u8; 2352];
    mem.read(0x40000, &mut raw);
    assert_eq!(
        &raw[..12],
        &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]
    );
    // LBA 1 is MSF 00:02:01, mode 1.
    assert_eq!(&raw[12..16], &[0, 2, 1, 1]);
    assert!(raw[16..16 + 2048].iter().all(|&b| b == 0x77));
    assert!(raw[16 + 2048..].iter().all(|&b| b == 0));
}

#[test]
fn srst_and_diagnostic_signatures() {
    let (_img, disk) = image("srst", vec![0; 4 * 2048]);
    let (mut ch, _) = channel(Kind::Cd, disk);
    ch.ctrl_write(0x04);
    ch.ctrl_write(0);
    assert_eq!((ch.ioport_read(4), ch.ioport_read(5)), (0x14, 0xeb));
    // The absent slave reads as zeros.
    ch.ioport_write(6, DEV_SELECT);
    assert_eq!(status(&mut ch), 0);
}

/// Random register, data-port and bus-master traffic from an untrusted guest: no panic, no
/// access outside the image, and the drive keeps answering.
#[test]
fn random_guest_traffic_never_panics() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for kind in [Kind::Hd, Kind::Cd] {
        let (img, disk) = image("fuzz", vec![0x11; 32 * 2048]);
        let (mut ch, mem) = channel(kind, disk);
        // Random PRD tables all over the low megabyte.
        for a in (0..0x10_0000u64).step_by(0x1000) {
            let r = next();
            mem.write(a, &r.to_le_bytes());
        }
        // Commands that matter most, and any byte.
        const CMDS: [u8; 16] = [
            0x20, 0x24, 0x30, 0x34, 0xc8, 0xca, 0x25, 0x35, 0x06, 0xa0, 0xec, 0xef, 0x91, 0xf8,
            0xe7, 0x90,
        ];
        for _ in 0..20_000 {
            let r = next();
            let v = (r >> 8) as u8;
            match r % 11 {
                0 => ch.ioport_write(7, CMDS[(r >> 16) as usize % CMDS.len()]),
                1 => ch.ioport_write(7, v),
                2 | 3 => ch.ioport_write((r >> 16) % 7 + 1, v),
                4 => ch.data_write(if r & 0x100 != 0 { 4 } else { 2 }, (r >> 20) as u32),
                5 => {
                    ch.data_read(if r & 0x100 != 0 { 4 } else { 2 });
                }
                6 => {
                    ch.ioport_read((r >> 16) % 8);
                }
                7 => ch.bm_cmd_write(v),
                8 => ch.bm.addr_write((r >> 16) % 4, &[v]),
                9 => ch.bm.status_write(v),
                _ => ch.ctrl_write(v & 0x86),
            }
        }
        // Still a working drive: a reset brings back the signature.
        ch.ctrl_write(0x04);
        ch.ctrl_write(0);
        let sig = (ch.ioport_read(4), ch.ioport_read(5));
        assert_eq!(
            sig,
            if kind == Kind::Cd {
                (0x14, 0xeb)
            } else {
                (0, 0)
            }
        );
        // Nothing was written past the image.
        assert_eq!(std::fs::metadata(&img.0).unwrap().len(), 32 * 2048);
    }
}

/// FLUSH CACHE stopped at a blkdebug breakpoint stays busy until resumed, then completes
/// with an interrupt; an injected flush error is an ATA error.
#[test]
fn flush_breakpoint_and_injected_error() {
    use crate::blkdebug::{parse_config, BlkDebug};
    let (_img, disk) = image("flush", vec![0; (SECTORS * 512) as usize]);
    let debug = BlkDebug::new(Vec::new());
    debug.add_breakpoint("flush_to_os", "A").unwrap();
    let (ch, _) = channel(Kind::Hd, disk.with_debug(Some(debug.clone())));
    let ch = Arc::new_cyclic(|this| {
        let mut ch = ch;
        ch.set_self(this.clone());
        Mutex::new(ch)
    });
    let write_one = |ch: &mut Channel| {
        lba28(ch, 1, 1);
        ch.ioport_write(7, 0x30);
        for _ in 0..256 {
            ch.data_write(2, 0x1234);
        }
    };
    {
        let mut c = ch.lock().unwrap();
        // Clean media: the flush does not reach the block layer, so no breakpoint.
        c.ioport_write(7, 0xe7);
        assert_eq!(status(&mut c) & (BSY | DRDY), DRDY);
        write_one(&mut c);
        c.ioport_write(7, 0xe7);
        assert_eq!(status(&mut c) & (BSY | DRDY | ERR), BSY | DRDY);
    }
    debug.resume("A").unwrap();
    {
        let mut c = ch.lock().unwrap();
        assert!(c.irq_level());
        assert_eq!(status(&mut c) & (BSY | DRDY | ERR | DRQ), DRDY);
    }
    // An injected EIO on the flush: ABRT.
    let (_img2, disk) = image("flusherr", vec![0; (SECTORS * 512) as usize]);
    let rules = parse_config("[inject-error]\nevent = \"flush_to_disk\"\nerrno = \"5\"\n").unwrap();
    let (mut c, _) = channel(Kind::Hd, disk.with_debug(Some(BlkDebug::new(rules))));
    write_one(&mut c);
    c.ioport_write(7, 0xe7);
    assert_eq!(status(&mut c) & ERR, ERR);
    assert_eq!(c.ioport_read(1), ABRT);
}

/// werror=stop: a failed write keeps the drive busy, asks the VMM to stop, and is written
/// when the machine resumes; werror=report would have been an ABRT.
#[test]
fn write_error_stop_then_retry() {
    use super::disk::ErrorAction;
    use crate::blkdebug::{BlkDebug, Rule};
    use crate::lifecycle::{Lifecycle, Request};
    let (img, disk) = image("werror", vec![0; (SECTORS * 512) as usize]);
    let pairs: Vec<(String, String)> = [
        ("event", "none"),
        ("iotype", "write"),
        ("errno", "5"),
        ("once", "on"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let debug = BlkDebug::new(vec![Rule::from_pairs("inject-error", &pairs).unwrap()]);
    let disk =
        disk.with_debug(Some(debug))
            .with_policy("d0", ErrorAction::Report, ErrorAction::Stop);
    let (mut ch, mem) = channel(Kind::Hd, disk);
    let lifecycle = Lifecycle::new().unwrap();
    ch.set_lifecycle(lifecycle.clone());
    mem.write(0x10000, &[0x3c; 512]);
    prd(&mem, 0x1000, &[(0x10000, 512 | 0x8000_0000)]);
    lba28(&mut ch, 2, 1);
    dma(&mut ch, 0xca, 0x1000, false);
    assert_eq!(status(&mut ch) & (BSY | ERR), BSY);
    assert_eq!(lifecycle.take(), Request::IoError);
    let errors = lifecycle.take_io_errors();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        (errors[0].device.as_str(), errors[0].operation),
        ("d0", "write")
    );
    assert!(std::fs::read(&img.0).unwrap()[2 * 512..3 * 512]
        .iter()
        .all(|&b| b == 0));
    ch.restart();
    assert_eq!(status(&mut ch) & (BSY | ERR | DRQ), 0);
    assert!(std::fs::read(&img.0).unwrap()[2 * 512..3 * 512]
        .iter()
        .all(|&b| b == 0x3c));
}
