//! One ATA/ATAPI device: its identity (IDENTIFY data), geometry, task-file registers and
//! PIO buffer state (QEMU's IDEState).

use super::disk::Disk;
use super::geometry::{Chs, Translation};

pub const BSY: u8 = 0x80;
pub const DRDY: u8 = 0x40;
pub const DSC: u8 = 0x10;
pub const DRQ: u8 = 0x08;
pub const ERR: u8 = 0x01;
pub const ABRT: u8 = 0x04;
/// Device/head register bits.
pub const DEV_ALWAYS_ON: u8 = 0xa0;
pub const DEV_LBA: u8 = 0x40;
pub const DEV_SELECT: u8 = 0x10;
pub const DEV_HS: u8 = 0x0f;
/// READ/WRITE MULTIPLE block size (QEMU's MAX_MULT_SECTORS).
pub const MAX_MULT_SECTORS: u32 = 16;
/// PIO buffer: 256 ATA sectors or the largest ATAPI burst (byte count limit 0xfffe).
pub const IO_BUFFER: usize = 256 * 512 + 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Hd,
    Cd,
}

/// What happens when the guest has moved the last byte of a PIO block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Nothing further (data reads as 0xffff until a command).
    Dummy,
    Stop,
    SectorRead,
    SectorWrite,
    AtapiCmd,
    AtapiReplyEnd,
}

impl End {
    /// Data flows from the device to the host.
    pub fn is_pio_out(self) -> bool {
        !matches!(self, End::SectorWrite | End::AtapiCmd)
    }
}

/// A DMA command waiting for (or running on) the bus master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaCmd {
    Read,
    Write,
    Trim,
    Atapi,
}

/// The data an ATAPI command returns: a reply built in `reply`, or CD sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtapiSource {
    Reply,
    Sectors { lba: u32, sector_size: u32 },
}

/// Identity and options of a drive, from the device's properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveInfo {
    pub kind: Kind,
    pub serial: String,
    pub model: String,
    pub version: String,
    pub wwn: u64,
    /// TRIM is offered (discard_granularity 512, the default).
    pub discard: bool,
    pub rotation_rate: u16,
    /// Physical geometry and BIOS translation (disks).
    pub chs: Chs,
    pub translation: Translation,
}

pub struct Drive {
    /// A device is attached at this unit (QEMU's `blk != NULL`).
    pub attached: bool,
    pub info: DriveInfo,
    /// The medium; None for an absent unit or an empty CD-ROM drive.
    pub disk: Option<Disk>,
    /// 512-byte sectors of the medium.
    pub nb_sectors: u64,
    pub cylinders: u32,
    pub heads: u32,
    pub sectors: u32,
    pub drive_heads: u32,
    pub drive_sectors: u32,
    pub reset_reverts: bool,
    pub write_cache: bool,

    // Task file.
    pub feature: u8,
    pub error: u8,
    /// Sector count; after a command's LBA48 transform, the whole count (up to 65536).
    pub nsector: u32,
    pub sector: u8,
    pub lcyl: u8,
    pub hcyl: u8,
    pub hob_feature: u8,
    pub hob_nsector: u8,
    pub hob_sector: u8,
    pub hob_lcyl: u8,
    pub hob_hcyl: u8,
    pub select: u8,
    pub status: u8,
    pub lba48: bool,

    // PIO.
    pub io: Vec<u8>,
    pub data_pos: usize,
    pub data_end: usize,
    pub end: End,
    pub req_nb_sectors: u32,
    pub mult_sectors: u32,
    pub identify: Option<[u16; 256]>,

    // ATAPI.
    pub sense_key: u8,
    pub asc: u8,
    pub atapi_dma: bool,
    pub source: AtapiSource,
    /// Reply data of a non-read command.
    pub reply: Vec<u8>,
    /// Bytes of the command's data still to go, and where in the data stream we are.
    pub packet_transfer_size: u64,
    pub stream_pos: u64,
    pub dma_cmd: Option<DmaCmd>,
}

impl Drive {
    pub fn new(attached: bool, info: DriveInfo, disk: Option<Disk>) -> Self {
        let nb_sectors = disk.as_ref().map_or(0, Disk::sectors);
        let write_cache = disk.as_ref().is_some_and(|d| d.write_cache);
        let mut d = Self {
            attached,
            nb_sectors,
            cylinders: info.chs.cyls,
            heads: info.chs.heads,
            sectors: info.chs.secs,
            drive_heads: info.chs.heads,
            drive_sectors: info.chs.secs,
            info,
            disk,
            reset_reverts: false,
            write_cache,
            feature: 0,
            error: 0,
            nsector: 0,
            sector: 0,
            lcyl: 0,
            hcyl: 0,
            hob_feature: 0,
            hob_nsector: 0,
            hob_sector: 0,
            hob_lcyl: 0,
            hob_hcyl: 0,
            select: DEV_ALWAYS_ON,
            status: 0,
            lba48: false,
            io: vec![0; IO_BUFFER],
            data_pos: 0,
            data_end: 0,
            end: End::Dummy,
            req_nb_sectors: 0,
            mult_sectors: MAX_MULT_SECTORS,
            identify: None,
            sense_key: 0,
            asc: 0,
            atapi_dma: false,
            source: AtapiSource::Reply,
            reply: Vec::new(),
            packet_transfer_size: 0,
            stream_pos: 0,
            dma_cmd: None,
        };
        d.reset();
        d
    }

    /// An empty unit.
    pub fn absent() -> Self {
        Self::new(
            false,
            DriveInfo {
                kind: Kind::Hd,
                serial: String::new(),
                model: String::new(),
                version: String::new(),
                wwn: 0,
                discard: false,
                rotation_rate: 0,
                chs: Chs {
                    cyls: 0,
                    heads: 0,
                    secs: 0,
                },
                translation: Translation::Auto,
            },
            None,
        )
    }

    pub fn is_cd(&self) -> bool {
        self.info.kind == Kind::Cd
    }

    /// ide_reset.
    pub fn reset(&mut self) {
        if self.reset_reverts {
            self.reset_reverts = false;
            self.heads = self.drive_heads;
            self.sectors = self.drive_sectors;
        }
        self.mult_sectors = MAX_MULT_SECTORS;
        self.feature = 0;
        self.error = 0;
        self.nsector = 0;
        self.sector = 0;
        self.lcyl = 0;
        self.hcyl = 0;
        self.hob_feature = 0;
        self.hob_sector = 0;
        self.hob_nsector = 0;
        self.hob_lcyl = 0;
        self.hob_hcyl = 0;
        self.select = DEV_ALWAYS_ON;
        self.status = DRDY | DSC;
        self.lba48 = false;
        self.sense_key = 0;
        self.asc = 0;
        self.packet_transfer_size = 0;
        self.stream_pos = 0;
        self.atapi_dma = false;
        self.req_nb_sectors = 0;
        self.dma_cmd = None;
        self.set_signature();
        self.end = End::Dummy;
        self.dummy_transfer_stop();
    }

    /// ide_set_signature.
    pub fn set_signature(&mut self) {
        self.select &= !DEV_HS;
        self.nsector = 1;
        self.sector = 1;
        (self.lcyl, self.hcyl) = if self.is_cd() {
            (0x14, 0xeb)
        } else if self.attached {
            (0, 0)
        } else {
            (0xff, 0xff)
        };
    }

    pub fn dummy_transfer_stop(&mut self) {
        self.data_pos = 0;
        self.data_end = 0;
        self.io[..4].fill(0xff);
    }

    /// ide_cmd_lba48_transform: the whole sector count into `nsector`.
    pub fn lba48_transform(&mut self, lba48: bool) {
        self.lba48 = lba48;
        if !lba48 {
            if self.nsector == 0 {
                self.nsector = 256;
            }
        } else if self.nsector == 0 && self.hob_nsector == 0 {
            self.nsector = 65536;
        } else {
            self.nsector = (u32::from(self.hob_nsector) << 8) | (self.nsector & 0xff);
        }
    }

    /// ide_get_sector: the LBA the task file names (CHS converted with the current
    /// geometry; a geometry of zero names sector 0 rather than dividing by it).
    pub fn get_sector(&self) -> u64 {
        if self.select & DEV_LBA != 0 {
            if self.lba48 {
                (u64::from(self.hob_hcyl) << 40)
                    | (u64::from(self.hob_lcyl) << 32)
                    | (u64::from(self.hob_sector) << 24)
                    | (u64::from(self.hcyl) << 16)
                    | (u64::from(self.lcyl) << 8)
                    | u64::from(self.sector)
            } else {
                (u64::from(self.select & DEV_HS) << 24)
                    | (u64::from(self.hcyl) << 16)
                    | (u64::from(self.lcyl) << 8)
                    | u64::from(self.sector)
            }
        } else {
            let cyl = (u64::from(self.hcyl) << 8) | u64::from(self.lcyl);
            (cyl * u64::from(self.heads) * u64::from(self.sectors))
                .wrapping_add(u64::from(self.select & DEV_HS) * u64::from(self.sectors))
                .wrapping_add(u64::from(self.sector))
                .wrapping_sub(1)
        }
    }

    /// ide_set_sector.
    pub fn set_sector(&mut self, n: u64) {
        if self.select & DEV_LBA != 0 {
            if self.lba48 {
                self.sector = n as u8;
                self.lcyl = (n >> 8) as u8;
                self.hcyl = (n >> 16) as u8;
                self.hob_sector = (n >> 24) as u8;
                self.hob_lcyl = (n >> 32) as u8;
                self.hob_hcyl = (n >> 40) as u8;
            } else {
                self.select = (self.select & !DEV_HS) | ((n >> 24) as u8 & DEV_HS);
                self.hcyl = (n >> 16) as u8;
                self.lcyl = (n >> 8) as u8;
                self.sector = n as u8;
            }
        } else {
            let per_cyl = u64::from(self.heads) * u64::from(self.sectors);
            if per_cyl == 0 {
                return;
            }
            let cyl = n / per_cyl;
            let r = n % per_cyl;
            self.hcyl = (cyl >> 8) as u8;
            self.lcyl = cyl as u8;
            self.select = (self.select & !DEV_HS) | ((r / u64::from(self.sectors)) as u8 & DEV_HS);
            self.sector = (r % u64::from(self.sectors)) as u8 + 1;
        }
    }

    /// The IDENTIFY DEVICE data (ide_identify), built once.
    pub fn identify_hd(&mut self) -> [u16; 256] {
        if let Some(id) = self.identify {
            return id;
        }
        let mut p = [0u16; 256];
        p[0] = 0x0040;
        p[1] = self.cylinders as u16;
        p[3] = self.heads as u16;
        p[4] = (512 * self.sectors) as u16;
        p[5] = 512;
        p[6] = self.sectors as u16;
        put_str(&mut p[10..20], &self.info.serial);
        p[20] = 3;
        p[21] = 512;
        p[22] = 4;
        put_str(&mut p[23..27], &self.info.version);
        put_str(&mut p[27..47], &self.info.model);
        p[47] = 0x8000 | MAX_MULT_SECTORS as u16;
        p[48] = 1;
        p[49] = (1 << 11) | (1 << 9) | (1 << 8);
        p[51] = 0x200;
        p[52] = 0x200;
        p[53] = 1 | (1 << 1) | (1 << 2);
        p[54] = self.cylinders as u16;
        p[55] = self.heads as u16;
        p[56] = self.sectors as u16;
        let oldsize = self.cylinders * self.heads * self.sectors;
        p[57] = oldsize as u16;
        p[58] = (oldsize >> 16) as u16;
        if self.mult_sectors != 0 {
            p[59] = 0x100 | self.mult_sectors as u16;
        }
        p[62] = 0x07;
        p[63] = 0x07;
        p[64] = 0x03;
        p[65..69].fill(120);
        if self.info.discard {
            p[69] = 1 << 14;
        }
        p[80] = 0xf0;
        p[81] = 0x16;
        p[82] = (1 << 14) | (1 << 5) | 1;
        p[83] = (1 << 14) | (1 << 13) | (1 << 12) | (1 << 10);
        let wwn = self.info.wwn;
        p[84] = (1 << 14) | if wwn != 0 { 1 << 8 } else { 0 };
        p[85] = (1 << 14) | if self.write_cache { 1 << 5 } else { 0 } | 1;
        p[86] = (1 << 13) | (1 << 12) | (1 << 10);
        p[87] = (1 << 14) | if wwn != 0 { 1 << 8 } else { 0 };
        p[88] = 0x3f | (1 << 13);
        p[93] = 1 | (1 << 14) | 0x2000;
        if wwn != 0 {
            p[108] = (wwn >> 48) as u16;
            p[109] = (wwn >> 32) as u16;
            p[110] = (wwn >> 16) as u16;
            p[111] = wwn as u16;
        }
        if self.info.discard {
            p[169] = 1;
        }
        p[217] = self.info.rotation_rate;
        let lba28 = self.nb_sectors.min((1 << 28) - 1);
        p[60] = lba28 as u16;
        p[61] = (lba28 >> 16) as u16;
        p[100] = self.nb_sectors as u16;
        p[101] = (self.nb_sectors >> 16) as u16;
        p[102] = (self.nb_sectors >> 32) as u16;
        p[103] = (self.nb_sectors >> 48) as u16;
        self.identify = Some(p);
        p
    }

    /// IDENTIFY PACKET DEVICE data (ide_atapi_identify, with DMA as QEMU builds it).
    pub fn identify_cd(&mut self) -> [u16; 256] {
        if let Some(id) = self.identify {
            return id;
        }
        let mut p = [0u16; 256];
        p[0] = (2 << 14) | (5 << 8) | (1 << 7) | (2 << 5);
        put_str(&mut p[10..20], &self.info.serial);
        p[20] = 3;
        p[21] = 512;
        p[22] = 4;
        put_str(&mut p[23..27], &self.info.version);
        put_str(&mut p[27..47], &self.info.model);
        p[48] = 1;
        p[49] = (1 << 9) | (1 << 8);
        p[53] = 7;
        p[62] = 7;
        p[63] = 7;
        p[64] = 3;
        p[65] = 0xb4;
        p[66] = 0xb4;
        p[67] = 0x12c;
        p[68] = 0xb4;
        p[71] = 30;
        p[72] = 30;
        p[80] = 0x1e;
        let wwn = self.info.wwn;
        if wwn != 0 {
            p[84] = 1 << 8;
            p[87] = 1 << 8;
            p[108] = (wwn >> 48) as u16;
            p[109] = (wwn >> 32) as u16;
            p[110] = (wwn >> 16) as u16;
            p[111] = wwn as u16;
        }
        p[88] = 0x3f | (1 << 13);
        self.identify = Some(p);
        p
    }
}

/// ATA strings: space padded, the two bytes of each word swapped (QEMU's padstr).
fn put_str(words: &mut [u16], s: &str) {
    let bytes = s.as_bytes();
    let len = words.len() * 2;
    let mut buf = vec![b' '; len];
    for (i, b) in bytes.iter().take(len).enumerate() {
        buf[i ^ 1] = *b;
    }
    for (i, w) in words.iter_mut().enumerate() {
        *w = u16::from_le_bytes([buf[2 * i], buf[2 * i + 1]]);
    }
}
