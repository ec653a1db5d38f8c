//! ATAPI (PACKET) commands of an `ide-cd` (QEMU's hw/ide/atapi.c): the SCSI/MMC commands
//! a guest needs to find and read a CD, with PIO bursts bounded by the byte count limit
//! and bus-master DMA. Data is produced sector by sector, so no guest-given length sizes a
//! host allocation.

use super::bmdma::DmaMemory;
use super::channel::{Channel, DmaPort};
use super::drive::*;

pub const PACKET_SIZE: usize = 12;
const CD_SECTOR: u64 = 2048;
const RAW_SECTOR: u64 = 2352;

// Sense keys and additional sense codes.
const NOT_READY: u8 = 0x02;
const ILLEGAL_REQUEST: u8 = 0x05;
const UNIT_ATTENTION: u8 = 0x06;
const ASC_ILLEGAL_OPCODE: u8 = 0x20;
const ASC_LOGICAL_BLOCK_OOR: u8 = 0x21;
const ASC_INV_FIELD_IN_CMD_PACKET: u8 = 0x24;
const ASC_MEDIUM_NOT_PRESENT: u8 = 0x3a;
/// Error register: media change requested.
const MC_ERR: u8 = 0x08;
/// Interrupt reason bits in the sector count register.
const REASON_CD: u32 = 0x01;
const REASON_IO: u32 = 0x02;

const ALLOW_UA: u8 = 0x01;
const CHECK_READY: u8 = 0x02;
const NONDATA: u8 = 0x04;
const CONDDATA: u8 = 0x08;

fn flags(op: u8) -> Option<u8> {
    Some(match op {
        0x00 => CHECK_READY | NONDATA,
        0x03 | 0x12 => ALLOW_UA,
        0x1b | 0x1e | 0xbb => NONDATA,
        0x25 | 0x28 | 0x43 | 0xa8 => CHECK_READY,
        0x2b => CHECK_READY | NONDATA,
        0xbe => CHECK_READY | CONDDATA,
        _ => return None,
    })
}

fn media_present(s: &Drive) -> bool {
    s.nb_sectors > 0
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn byte_count_limit(s: &Drive) -> u64 {
    let bcl = u16::from(s.lcyl) | (u16::from(s.hcyl) << 8);
    u64::from(if bcl == 0xffff { 0xfffe } else { bcl })
}

pub fn cmd_ok(ch: &mut Channel, unit: usize) {
    let s = &mut ch.drives[unit];
    s.error = 0;
    s.status = DRDY | DSC;
    s.nsector = (s.nsector & !7) | REASON_IO | REASON_CD;
    ch.transfer_stop(unit);
    ch.set_irq();
}

pub fn cmd_error(ch: &mut Channel, unit: usize, sense_key: u8, asc: u8) {
    let s = &mut ch.drives[unit];
    s.error = sense_key << 4;
    s.status = DRDY | ERR;
    s.nsector = (s.nsector & !7) | REASON_IO | REASON_CD;
    s.sense_key = sense_key;
    s.asc = asc;
    ch.transfer_stop(unit);
    ch.set_irq();
}

/// The packet arrived (ide_atapi_cmd).
pub fn command(ch: &mut Channel, unit: usize) {
    let mut pkt = [0u8; PACKET_SIZE];
    pkt.copy_from_slice(&ch.drives[unit].io[..PACKET_SIZE]);
    let op = pkt[0];
    let f = flags(op);
    let s = &mut ch.drives[unit];
    if s.sense_key == UNIT_ATTENTION && f.is_none_or(|f| f & ALLOW_UA == 0) {
        s.error = MC_ERR | (UNIT_ATTENTION << 4);
        s.status = ERR;
        s.nsector = 0;
        ch.set_irq();
        return;
    }
    let Some(f) = f else {
        cmd_error(ch, unit, ILLEGAL_REQUEST, ASC_ILLEGAL_OPCODE);
        return;
    };
    if f & CHECK_READY != 0 && !media_present(s) {
        cmd_error(ch, unit, NOT_READY, ASC_MEDIUM_NOT_PRESENT);
        return;
    }
    if f & (NONDATA | CONDDATA) == 0 && !validate_bcl(ch, unit) {
        return;
    }
    let total = ch.drives[unit].nb_sectors / 4;
    match op {
        0x00 | 0x1b | 0x1e | 0xbb => cmd_ok(ch, unit),
        0x03 => {
            let s = &mut ch.drives[unit];
            let mut buf = vec![0u8; 18];
            buf[0] = 0x70 | 0x80;
            buf[2] = s.sense_key;
            buf[7] = 10;
            buf[12] = s.asc;
            if s.sense_key == UNIT_ATTENTION {
                s.sense_key = 0;
            }
            reply(ch, unit, buf, u64::from(pkt[4]));
        }
        0x12 => inquiry(ch, unit, &pkt),
        0x25 => {
            let mut buf = vec![0u8; 8];
            buf[..4].copy_from_slice(&(total.saturating_sub(1) as u32).to_be_bytes());
            buf[4..].copy_from_slice(&(CD_SECTOR as u32).to_be_bytes());
            reply(ch, unit, buf, 8);
        }
        0x28 | 0xa8 => {
            let n = if op == 0x28 {
                u64::from(u16::from_be_bytes([pkt[7], pkt[8]]))
            } else {
                u64::from(be32(&pkt[6..10]))
            };
            if n == 0 {
                cmd_ok(ch, unit);
                return;
            }
            read(ch, unit, be32(&pkt[2..6]), n, total, CD_SECTOR);
        }
        0x2b => {
            if u64::from(be32(&pkt[2..6])) >= total {
                cmd_error(ch, unit, ILLEGAL_REQUEST, ASC_LOGICAL_BLOCK_OOR);
            } else {
                cmd_ok(ch, unit);
            }
        }
        0x43 => read_toc(ch, unit, &pkt, total),
        0xbe => {
            let n = (u64::from(pkt[6]) << 16) | (u64::from(pkt[7]) << 8) | u64::from(pkt[8]);
            if n == 0 {
                cmd_ok(ch, unit);
                return;
            }
            let lba = be32(&pkt[2..6]);
            if u64::from(lba) >= total || u64::from(lba) + n > total {
                cmd_error(ch, unit, ILLEGAL_REQUEST, ASC_LOGICAL_BLOCK_OOR);
                return;
            }
            match pkt[9] & 0xf8 {
                0x00 => cmd_ok(ch, unit),
                0x10 if validate_bcl(ch, unit) => read(ch, unit, lba, n, total, CD_SECTOR),
                0xf8 if validate_bcl(ch, unit) => read(ch, unit, lba, n, total, RAW_SECTOR),
                0x10 | 0xf8 => {}
                _ => cmd_error(ch, unit, ILLEGAL_REQUEST, ASC_INV_FIELD_IN_CMD_PACKET),
            }
        }
        _ => cmd_error(ch, unit, ILLEGAL_REQUEST, ASC_ILLEGAL_OPCODE),
    }
}

/// A data command with a byte count limit of 0 is aborted at the ATA level (PIO only).
fn validate_bcl(ch: &mut Channel, unit: usize) -> bool {
    let s = &ch.drives[unit];
    if s.atapi_dma || byte_count_limit(s) != 0 {
        return true;
    }
    ch.abort_command(unit);
    false
}

fn inquiry(ch: &mut Channel, unit: usize, pkt: &[u8; PACKET_SIZE]) {
    let max_len = u64::from(pkt[4]);
    if pkt[1] & 1 != 0 {
        // Vital product data pages: only the list of them (no page beyond it is offered).
        if pkt[2] != 0 {
            cmd_error(ch, unit, ILLEGAL_REQUEST, ASC_INV_FIELD_IN_CMD_PACKET);
            return;
        }
        reply(ch, unit, vec![0x05, 0x00, 0x00, 1, 0x00], max_len);
        return;
    }
    let s = &ch.drives[unit];
    let mut buf = vec![0u8; 36];
    buf[0] = 0x05;
    buf[1] = 0x80;
    buf[3] = 0x21;
    buf[4] = 31;
    pad(&mut buf[8..16], "QEMU");
    pad(&mut buf[16..32], "QEMU DVD-ROM");
    pad(&mut buf[32..36], &s.info.version);
    reply(ch, unit, buf, max_len);
}

fn pad(dst: &mut [u8], s: &str) {
    dst.fill(b' ');
    for (d, b) in dst.iter_mut().zip(s.bytes()) {
        *d = b;
    }
}

fn lba_to_msf(lba: u64) -> [u8; 3] {
    let l = lba + 150;
    [((l / 75) / 60) as u8, ((l / 75) % 60) as u8, (l % 75) as u8]
}

/// READ TOC/PMA/ATIP: format 0 (one data track) and 1 (one session).
fn read_toc(ch: &mut Channel, unit: usize, pkt: &[u8; PACKET_SIZE], total: u64) {
    let max_len = u64::from(u16::from_be_bytes([pkt[7], pkt[8]]));
    let msf = pkt[1] & 2 != 0;
    let start = pkt[6];
    let addr = |lba: u64| -> [u8; 4] {
        if msf {
            let m = lba_to_msf(lba);
            [0, m[0], m[1], m[2]]
        } else {
            (lba as u32).to_be_bytes()
        }
    };
    match pkt[9] >> 6 {
        0 => {
            if start > 1 && start != 0xaa {
                cmd_error(ch, unit, ILLEGAL_REQUEST, ASC_INV_FIELD_IN_CMD_PACKET);
                return;
            }
            let mut buf = vec![0, 0, 1, 1];
            if start <= 1 {
                buf.extend([0, 0x14, 1, 0]);
                buf.extend(addr(0));
            }
            buf.extend([0, 0x16, 0xaa, 0]);
            buf.extend(addr(total));
            let len = (buf.len() - 2) as u16;
            buf[..2].copy_from_slice(&len.to_be_bytes());
            reply(ch, unit, buf, max_len);
        }
        1 => {
            let mut buf = vec![0u8; 12];
            buf[1] = 0x0a;
            buf[2] = 1;
            buf[3] = 1;
            reply(ch, unit, buf, max_len);
        }
        _ => cmd_error(ch, unit, ILLEGAL_REQUEST, ASC_INV_FIELD_IN_CMD_PACKET),
    }
}

/// ide_atapi_cmd_reply: send `data` (at most `max_len` bytes).
fn reply(ch: &mut Channel, unit: usize, mut data: Vec<u8>, max_len: u64) {
    data.truncate(max_len.min(data.len() as u64) as usize);
    let s = &mut ch.drives[unit];
    s.packet_transfer_size = data.len() as u64;
    s.reply = data;
    s.source = AtapiSource::Reply;
    s.stream_pos = 0;
    if s.atapi_dma {
        s.status = DRDY | DSC | DRQ;
        ch.start_dma(unit, DmaCmd::Atapi);
    } else {
        s.status = DRDY | DSC;
        reply_end(ch, unit);
    }
}

/// Start a CD read of `n` sectors at `lba` (checked against the medium's `total`).
fn read(ch: &mut Channel, unit: usize, lba: u32, n: u64, total: u64, sector_size: u64) {
    if u64::from(lba) >= total || u64::from(lba) + n > total {
        cmd_error(ch, unit, ILLEGAL_REQUEST, ASC_LOGICAL_BLOCK_OOR);
        return;
    }
    let s = &mut ch.drives[unit];
    s.source = AtapiSource::Sectors {
        lba,
        sector_size: sector_size as u32,
    };
    s.packet_transfer_size = n * sector_size;
    s.stream_pos = 0;
    if s.atapi_dma {
        s.status = DRDY | DSC | DRQ | BSY;
        ch.start_dma(unit, DmaCmd::Atapi);
    } else {
        reply_end(ch, unit);
    }
}

/// Fill `out` with the command's data from stream position `pos` (reply bytes, or CD
/// sectors with raw framing for 2352-byte sectors).
fn fill(s: &mut Drive, pos: u64, out: &mut [u8]) -> bool {
    match s.source {
        AtapiSource::Reply => {
            let start = (pos as usize).min(s.reply.len());
            let n = out.len().min(s.reply.len() - start);
            out[..n].copy_from_slice(&s.reply[start..start + n]);
            out[n..].fill(0);
            true
        }
        AtapiSource::Sectors { lba, sector_size } => {
            let ss = u64::from(sector_size);
            let Some(disk) = s.disk.as_mut() else {
                return false;
            };
            let mut sector = [0u8; RAW_SECTOR as usize];
            let mut done = 0usize;
            while done < out.len() {
                let p = pos + done as u64;
                let index = p / ss;
                let within = (p % ss) as usize;
                let cd_lba = u64::from(lba) + index;
                let data_at = if ss == RAW_SECTOR { 16 } else { 0 };
                if disk
                    .read(
                        cd_lba * 4,
                        &mut sector[data_at..data_at + CD_SECTOR as usize],
                    )
                    .is_err()
                {
                    return false;
                }
                if ss == RAW_SECTOR {
                    raw_frame(&mut sector, cd_lba);
                }
                let n = (ss as usize - within).min(out.len() - done);
                out[done..done + n].copy_from_slice(&sector[within..within + n]);
                done += n;
            }
            true
        }
    }
}

/// cd_data_to_raw: sync pattern, MSF header (mode 1) and an empty EDC/ECC area around the
/// 2048 data bytes at 16.
fn raw_frame(buf: &mut [u8; RAW_SECTOR as usize], lba: u64) {
    buf[0] = 0;
    buf[1..11].fill(0xff);
    buf[11] = 0;
    buf[12..15].copy_from_slice(&lba_to_msf(lba));
    buf[15] = 1;
    buf[16 + CD_SECTOR as usize..].fill(0);
}

/// ide_atapi_cmd_reply_end: the next PIO burst, or the end of the command.
pub fn reply_end(ch: &mut Channel, unit: usize) {
    let s = &mut ch.drives[unit];
    if s.packet_transfer_size == 0 {
        cmd_ok(ch, unit);
        return;
    }
    let mut limit = byte_count_limit(s);
    let mut size = s.packet_transfer_size;
    if size > limit {
        // The limit must be even then.
        limit &= !1;
        size = limit;
    }
    let size = size.min(s.io.len() as u64) as usize;
    if size == 0 {
        cmd_ok(ch, unit);
        return;
    }
    let pos = s.stream_pos;
    let mut io = std::mem::take(&mut s.io);
    let ok = fill(s, pos, &mut io[..size]);
    s.io = io;
    if !ok {
        cmd_error(ch, unit, ILLEGAL_REQUEST, ASC_LOGICAL_BLOCK_OOR);
        return;
    }
    s.status &= !BSY;
    s.nsector = (s.nsector & !7) | REASON_IO;
    s.lcyl = size as u8;
    s.hcyl = (size >> 8) as u8;
    s.packet_transfer_size -= size as u64;
    s.stream_pos += size as u64;
    ch.transfer_start(unit, size, End::AtapiReplyEnd);
    ch.set_irq();
}

/// ide_atapi_cmd_read_dma_cb, all at once: the data goes along the PRDs in chunks.
pub fn run_dma(ch: &mut Channel, unit: usize, mem: &DmaPort) {
    const CHUNK: usize = 32 * RAW_SECTOR as usize;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let s = &mut ch.drives[unit];
        if s.packet_transfer_size == 0 {
            break;
        }
        let n = (s.packet_transfer_size as usize).min(CHUNK);
        let pos = s.stream_pos;
        if !fill(s, pos, &mut buf[..n]) {
            cmd_error(ch, unit, ILLEGAL_REQUEST, ASC_LOGICAL_BLOCK_OOR);
            ch.set_inactive(unit, false);
            return;
        }
        s.packet_transfer_size -= n as u64;
        s.stream_pos += n as u64;
        if !ch.bm.transfer(mem as &dyn DmaMemory, &mut buf[..n], true) {
            // The PRDs ended first: the command stops where it is (as QEMU's does).
            ch.set_inactive(unit, false);
            return;
        }
    }
    let s = &mut ch.drives[unit];
    s.status = DRDY | DSC;
    s.nsector = (s.nsector & !7) | REASON_IO | REASON_CD;
    ch.set_irq();
    ch.set_inactive(unit, false);
}
