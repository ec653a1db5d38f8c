//! One IDE channel (QEMU's IDEBus): two units sharing the task-file registers, the device
//! control register, the interrupt line and the bus-master DMA engine; the ATA command set
//! and PIO/DMA data phases. Every guest-controlled count and address is checked against the
//! image and the buffers, so a request the drive cannot serve ends as an ATA error.

use super::atapi;
use super::bmdma::{self, Bmdma, DmaMemory};
use super::disk::{DiskError, ErrorAction, FlushStage, Flushed, SECTOR};
use super::drive::*;
use crate::lifecycle::{IoError, Lifecycle};
use crate::pci::interrupt::IntxSink;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Device control register bits.
const CTRL_NIEN: u8 = 0x02;
const CTRL_SRST: u8 = 0x04;
const CTRL_HOB: u8 = 0x80;

/// Sectors a DMA request moves through the bounce buffer at a time.
const DMA_CHUNK: u64 = 256;

/// Where the channel's interrupt goes: an ISA line (IRQ 14 or 15).
#[derive(Clone)]
pub struct IrqLine {
    pub sink: Arc<dyn IntxSink>,
    pub gsi: u32,
}

/// Guest memory for the bus master, and whether the function may master the bus (PCI
/// command bit 2; without it reads give zeros and writes are dropped).
#[derive(Clone)]
pub struct DmaPort {
    pub mem: Arc<dyn DmaMemory>,
    pub bus_master: Arc<AtomicBool>,
}

impl DmaMemory for DmaPort {
    fn read(&self, addr: u64, buf: &mut [u8]) {
        if self.bus_master.load(Ordering::Acquire) {
            self.mem.read(addr, buf);
        } else {
            buf.fill(0);
        }
    }
    fn write(&self, addr: u64, data: &[u8]) {
        if self.bus_master.load(Ordering::Acquire) {
            self.mem.write(addr, data);
        }
    }
}

pub struct Channel {
    pub drives: [Drive; 2],
    /// The selected unit.
    pub unit: usize,
    /// Device control register.
    pub ctrl: u8,
    pub bm: Bmdma,
    /// The unit whose DMA command waits for the bus master (QEMU's dma_cb + retry_unit).
    dma_unit: Option<usize>,
    irq: Option<IrqLine>,
    irq_level: bool,
    dma: Option<DmaPort>,
    /// This channel, for requests a blkdebug breakpoint suspends and the monitor resumes.
    this: Weak<Mutex<Channel>>,
    /// Bumped by every reset: a resumed request of an earlier generation is dropped.
    generation: u64,
    /// Where a `stop` error action stops the machine.
    lifecycle: Option<Lifecycle>,
    /// A request stopped by an I/O error, run again when the machine resumes.
    retry: Option<(usize, Retry)>,
}

/// The request a `stop` error action keeps for the restart (QEMU's error_status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    Flush,
    Dma,
    PioRead,
    PioWrite,
}

fn is_present(d: &Drive) -> bool {
    d.attached
}

impl Channel {
    pub fn new(drives: [Drive; 2], dma: Option<DmaPort>) -> Self {
        Self {
            drives,
            unit: 0,
            ctrl: 0,
            bm: Bmdma::default(),
            dma_unit: None,
            irq: None,
            irq_level: false,
            dma,
            this: Weak::new(),
            generation: 0,
            lifecycle: None,
            retry: None,
        }
    }

    /// Where disk errors with the `stop` action stop the machine.
    pub fn set_lifecycle(&mut self, lifecycle: Lifecycle) {
        self.lifecycle = Some(lifecycle);
    }

    /// The machine runs again: a request an I/O error stopped is retried (ide_restart_bh).
    pub fn restart(&mut self) {
        let Some((unit, retry)) = self.retry.take() else {
            return;
        };
        match retry {
            Retry::Flush => self.flush_from(unit, FlushStage::ToOs),
            Retry::Dma => {
                self.bm.rewind();
                self.bm.begin();
                self.dma_unit = Some(unit);
                self.run_dma();
            }
            Retry::PioRead => self.sector_read(unit),
            Retry::PioWrite => self.sector_write(unit),
        }
    }

    /// ide_handle_rw_error: what a failed request of `unit` does under its error action;
    /// true when the caller goes on as if it had succeeded (`ignore`).
    fn io_failed(&mut self, unit: usize, e: &DiskError, read: bool, retry: Retry) -> bool {
        // Range and read-only failures are the request's own fault: always reported.
        let (errno, policy) = match (e, self.drives[unit].disk.as_ref()) {
            (DiskError::Io(errno), Some(disk)) => {
                (*errno, if read { disk.rerror } else { disk.werror })
            }
            _ => (libc::EINVAL, ErrorAction::Report),
        };
        match policy.for_errno(errno) {
            ErrorAction::Ignore => true,
            ErrorAction::Stop if self.lifecycle.is_some() => {
                let info = IoError {
                    device: self.drives[unit]
                        .disk
                        .as_ref()
                        .map(|d| d.name.clone())
                        .unwrap_or_default(),
                    operation: if read { "read" } else { "write" },
                    reason: std::io::Error::from_raw_os_error(errno).to_string(),
                    nospace: errno == libc::ENOSPC,
                };
                // BSY stays set: the request is pending until the machine resumes.
                self.drives[unit].status |= BSY;
                self.retry = Some((unit, retry));
                if let Some(l) = &self.lifecycle {
                    l.io_error(info);
                }
                false
            }
            _ => {
                if retry == Retry::Dma {
                    self.dma_error(unit);
                } else {
                    self.rw_error(unit);
                }
                false
            }
        }
    }

    /// The shared handle of this channel (for resuming suspended requests).
    pub fn set_self(&mut self, this: Weak<Mutex<Channel>>) {
        self.this = this;
    }

    pub fn set_irq_line(&mut self, line: IrqLine) {
        line.sink.set_level(line.gsi, self.irq_level);
        self.irq = Some(line);
    }

    pub fn irq_level(&self) -> bool {
        self.irq_level
    }

    fn set_line(&mut self, level: bool) {
        if self.irq_level == level {
            return;
        }
        self.irq_level = level;
        if let Some(l) = &self.irq {
            l.sink.set_level(l.gsi, level);
        }
    }

    /// ide_bus_set_irq through bmdma_irq: the bus master's interrupt bit follows.
    fn raise_irq(&mut self) {
        if self.ctrl & CTRL_NIEN == 0 {
            self.bm.status |= bmdma::STATUS_INT;
            self.set_line(true);
        }
    }

    fn lower_irq(&mut self) {
        self.set_line(false);
    }

    fn no_drives(&self) -> bool {
        !is_present(&self.drives[0]) && !is_present(&self.drives[1])
    }

    /// The selected unit is an absent slave.
    fn absent_slave(&self) -> bool {
        self.unit != 0 && !is_present(&self.drives[1])
    }

    /// ide_bus_reset.
    pub fn reset(&mut self) {
        self.generation += 1;
        self.retry = None;
        self.unit = 0;
        self.ctrl = 0;
        self.dma_unit = None;
        for d in &mut self.drives {
            d.reset();
        }
        self.bm.reset();
        self.lower_irq();
    }

    // ---- register access ----

    /// Task-file register read (offset 1..=7; 0 is the data port).
    pub fn ioport_read(&mut self, reg: u64) -> u8 {
        let hob = self.ctrl & CTRL_HOB != 0;
        let none = self.no_drives();
        let absent = self.absent_slave();
        let unit = self.unit;
        let s = &self.drives[unit];
        match reg & 7 {
            0 => (self.data_read(2) & 0xff) as u8,
            1 if none || absent => 0,
            1 => {
                if hob {
                    s.hob_feature
                } else {
                    s.error
                }
            }
            _ if none => {
                if reg & 7 == 7 {
                    self.lower_irq();
                }
                0
            }
            2 => {
                if hob {
                    s.hob_nsector
                } else {
                    s.nsector as u8
                }
            }
            3 => {
                if hob {
                    s.hob_sector
                } else {
                    s.sector
                }
            }
            4 => {
                if hob {
                    s.hob_lcyl
                } else {
                    s.lcyl
                }
            }
            5 => {
                if hob {
                    s.hob_hcyl
                } else {
                    s.hcyl
                }
            }
            6 => s.select,
            _ => {
                let v = if absent { 0 } else { s.status };
                self.lower_irq();
                v
            }
        }
    }

    /// Alternate status (does not clear the interrupt).
    pub fn alt_status(&self) -> u8 {
        if self.no_drives() || self.absent_slave() {
            0
        } else {
            self.drives[self.unit].status
        }
    }

    pub fn ioport_write(&mut self, reg: u64, val: u8) {
        let reg = reg & 7;
        let busy = self.drives[self.unit].status & (BSY | DRQ) != 0;
        if reg != 7 && busy {
            return;
        }
        if reg != 0 {
            // Any write clears HOB.
            self.ctrl &= !CTRL_HOB;
        }
        match reg {
            0 => {}
            1 => {
                for d in &mut self.drives {
                    d.hob_feature = d.feature;
                    d.feature = val;
                }
            }
            2 => {
                for d in &mut self.drives {
                    d.hob_nsector = d.nsector as u8;
                    d.nsector = u32::from(val);
                }
            }
            3 => {
                for d in &mut self.drives {
                    d.hob_sector = d.sector;
                    d.sector = val;
                }
            }
            4 => {
                for d in &mut self.drives {
                    d.hob_lcyl = d.lcyl;
                    d.lcyl = val;
                }
            }
            5 => {
                for d in &mut self.drives {
                    d.hob_hcyl = d.hcyl;
                    d.hcyl = val;
                }
            }
            6 => {
                for d in &mut self.drives {
                    d.select = val | DEV_ALWAYS_ON;
                }
                self.unit = usize::from(val & DEV_SELECT != 0);
            }
            _ => {
                self.lower_irq();
                self.exec_cmd(val);
            }
        }
    }

    /// Device control register write (ide_ctrl_write): SRST resets both units; QEMU does it
    /// in a bottom half, here at once, with the same result for the guest.
    pub fn ctrl_write(&mut self, val: u8) {
        if self.ctrl & CTRL_SRST == 0 && val & CTRL_SRST != 0 {
            for i in 0..2 {
                self.software_reset(i);
            }
            self.ctrl = val & !CTRL_SRST;
            return;
        }
        self.ctrl = val;
    }

    fn software_reset(&mut self, i: usize) {
        self.generation += 1;
        if self.dma_unit == Some(i) {
            self.dma_unit = None;
        }
        let d = &mut self.drives[i];
        d.reset();
        self.diagnostic(i);
    }

    /// Data port read of `width` bytes (2 or 4; 1 reads a word and keeps its low byte).
    pub fn data_read(&mut self, width: usize) -> u32 {
        let unit = self.unit;
        let s = &mut self.drives[unit];
        if s.status & DRQ == 0 || !s.end.is_pio_out() {
            return 0;
        }
        let n = if width == 4 { 4 } else { 2 };
        if s.data_pos + n > s.data_end || s.data_end > s.io.len() {
            return 0;
        }
        let mut v = [0u8; 4];
        v[..n].copy_from_slice(&s.io[s.data_pos..s.data_pos + n]);
        s.data_pos += n;
        if s.data_pos >= s.data_end {
            s.status &= !DRQ;
            self.end_transfer(unit);
        }
        u32::from_le_bytes(v)
    }

    pub fn data_write(&mut self, width: usize, val: u32) {
        let unit = self.unit;
        let s = &mut self.drives[unit];
        if s.status & DRQ == 0 || s.end.is_pio_out() {
            return;
        }
        let n = if width == 4 { 4 } else { 2 };
        if s.data_pos + n > s.data_end || s.data_end > s.io.len() {
            return;
        }
        s.io[s.data_pos..s.data_pos + n].copy_from_slice(&val.to_le_bytes()[..n]);
        s.data_pos += n;
        if s.data_pos >= s.data_end {
            s.status &= !DRQ;
            self.end_transfer(unit);
        }
    }

    fn end_transfer(&mut self, unit: usize) {
        match self.drives[unit].end {
            End::Dummy => self.drives[unit].dummy_transfer_stop(),
            End::Stop => self.transfer_stop(unit),
            End::SectorRead => self.sector_read(unit),
            End::SectorWrite => self.sector_write(unit),
            End::AtapiCmd => atapi::command(self, unit),
            End::AtapiReplyEnd => atapi::reply_end(self, unit),
        }
    }

    // ---- helpers shared with the ATAPI layer ----

    /// ide_transfer_start: the guest moves `len` bytes of the PIO buffer.
    pub(super) fn transfer_start(&mut self, unit: usize, len: usize, end: End) {
        let s = &mut self.drives[unit];
        s.data_pos = 0;
        s.data_end = len.min(s.io.len());
        if s.status & ERR == 0 {
            s.status |= DRQ;
        }
        s.end = end;
    }

    pub(super) fn transfer_stop(&mut self, unit: usize) {
        let s = &mut self.drives[unit];
        s.end = End::Stop;
        s.data_pos = 0;
        s.data_end = 0;
        s.status &= !DRQ;
    }

    pub(super) fn abort_command(&mut self, unit: usize) {
        let s = &mut self.drives[unit];
        s.status = DRDY | ERR;
        s.error = ABRT;
        self.transfer_stop(unit);
    }

    pub(super) fn set_irq(&mut self) {
        self.raise_irq();
    }

    // ---- commands ----

    /// ide_bus_exec_cmd.
    fn exec_cmd(&mut self, cmd: u8) {
        let unit = self.unit;
        if unit != 0 && !is_present(&self.drives[unit]) {
            return;
        }
        let s = &self.drives[unit];
        if s.status & (BSY | DRQ) != 0 && !(cmd == 0x08 && s.is_cd()) {
            return;
        }
        let Some(set_dsc) = permitted(cmd, s.info.kind) else {
            self.abort_command(unit);
            self.set_irq();
            return;
        };
        {
            let s = &mut self.drives[unit];
            s.status = DRDY | BSY;
            s.error = 0;
        }
        if self.run_cmd(unit, cmd) {
            let s = &mut self.drives[unit];
            s.status &= !BSY;
            if set_dsc && s.error == 0 {
                s.status |= DSC;
            }
            self.set_irq();
        }
    }

    /// The command's handler; true when it completed (status and interrupt follow).
    fn run_cmd(&mut self, unit: usize, cmd: u8) -> bool {
        let has_disk = self.drives[unit].attached;
        match cmd {
            0x06 => {
                // DATA SET MANAGEMENT: TRIM only.
                let s = &self.drives[unit];
                if s.feature == 0x01 && has_disk && s.info.discard {
                    self.start_dma(unit, DmaCmd::Trim);
                    return false;
                }
                self.abort_command(unit);
                true
            }
            0x08 => {
                // DEVICE RESET (ATAPI).
                if self.dma_unit == Some(unit) {
                    self.dma_unit = None;
                    self.bm.status &= !bmdma::STATUS_ACTIVE;
                }
                self.drives[unit].reset();
                self.drives[unit].status = 0;
                false
            }
            0x10 | 0x70 | 0x94..=0x97 | 0x99 | 0xe0..=0xe3 | 0xe6 => true,
            0x20 | 0x21 | 0x24 => {
                if self.drives[unit].is_cd() {
                    self.drives[unit].set_signature();
                    self.abort_command(unit);
                    return true;
                }
                if !has_disk {
                    self.abort_command(unit);
                    return true;
                }
                self.drives[unit].lba48_transform(cmd == 0x24);
                self.drives[unit].req_nb_sectors = 1;
                self.sector_read(unit);
                false
            }
            0x29 | 0xc4 => {
                let s = &mut self.drives[unit];
                if !has_disk || s.mult_sectors == 0 {
                    self.abort_command(unit);
                    return true;
                }
                s.lba48_transform(cmd == 0x29);
                s.req_nb_sectors = s.mult_sectors;
                self.sector_read(unit);
                false
            }
            0x30 | 0x31 | 0x34 | 0x3c => {
                if !has_disk {
                    self.abort_command(unit);
                    return true;
                }
                let s = &mut self.drives[unit];
                s.lba48_transform(cmd == 0x34);
                s.req_nb_sectors = 1;
                s.status = DSC | DRDY;
                self.transfer_start(unit, SECTOR as usize, End::SectorWrite);
                false
            }
            0x39 | 0xc5 => {
                let s = &mut self.drives[unit];
                if !has_disk || s.mult_sectors == 0 {
                    self.abort_command(unit);
                    return true;
                }
                s.lba48_transform(cmd == 0x39);
                s.req_nb_sectors = s.mult_sectors;
                let n = s.nsector.min(s.req_nb_sectors) as usize;
                s.status = DSC | DRDY;
                self.transfer_start(unit, SECTOR as usize * n, End::SectorWrite);
                false
            }
            0x40..=0x42 => {
                self.drives[unit].lba48_transform(cmd == 0x42);
                true
            }
            0x25 | 0xc8 | 0xc9 | 0x35 | 0xca | 0xcb => {
                if !has_disk {
                    self.abort_command(unit);
                    return true;
                }
                let lba48 = matches!(cmd, 0x25 | 0x35);
                self.drives[unit].lba48_transform(lba48);
                let kind = if matches!(cmd, 0x25 | 0xc8 | 0xc9) {
                    DmaCmd::Read
                } else {
                    DmaCmd::Write
                };
                self.start_dma(unit, kind);
                false
            }
            0x27 | 0xf8 => {
                let s = &mut self.drives[unit];
                if s.nb_sectors == 0 {
                    self.abort_command(unit);
                } else {
                    // The native geometry, whatever INITIALIZE DEVICE PARAMETERS set.
                    let (h, sec) = (s.heads, s.sectors);
                    s.heads = s.drive_heads;
                    s.sectors = s.drive_sectors;
                    s.lba48_transform(cmd == 0x27);
                    let last = s.nb_sectors - 1;
                    s.set_sector(last);
                    s.heads = h;
                    s.sectors = sec;
                }
                true
            }
            0x90 => {
                self.drives[unit].select = DEV_ALWAYS_ON;
                self.diagnostic(unit);
                false
            }
            0x91 => {
                // INITIALIZE DEVICE PARAMETERS.
                let s = &mut self.drives[unit];
                if has_disk && !s.is_cd() {
                    s.heads = u32::from(s.select & DEV_HS) + 1;
                    s.sectors = s.nsector & 0xff;
                    self.set_irq();
                } else {
                    self.abort_command(unit);
                }
                true
            }
            0x98 | 0xe5 => {
                self.drives[unit].nsector = 0xff;
                true
            }
            0xa0 => {
                let s = &mut self.drives[unit];
                if s.feature & 0x02 != 0 {
                    self.abort_command(unit);
                    return true;
                }
                s.status = DRDY | DSC;
                s.atapi_dma = s.feature & 1 != 0;
                s.nsector = 1;
                self.transfer_start(unit, atapi::PACKET_SIZE, End::AtapiCmd);
                false
            }
            0xa1 => {
                let id = self.drives[unit].identify_cd();
                self.identify_reply(unit, &id);
                false
            }
            0xc6 => {
                let s = &mut self.drives[unit];
                let n = s.nsector & 0xff;
                if n != 0 && (n > MAX_MULT_SECTORS || n & (n - 1) != 0) {
                    self.abort_command(unit);
                } else {
                    s.mult_sectors = n;
                }
                true
            }
            0xe7 | 0xea => {
                self.flush_cache(unit);
                false
            }
            0xec => {
                if has_disk && !self.drives[unit].is_cd() {
                    let id = self.drives[unit].identify_hd();
                    self.identify_reply(unit, &id);
                    return false;
                }
                if self.drives[unit].is_cd() {
                    self.drives[unit].set_signature();
                }
                self.abort_command(unit);
                true
            }
            0xef => self.set_features(unit),
            _ => {
                self.abort_command(unit);
                true
            }
        }
    }

    fn identify_reply(&mut self, unit: usize, id: &[u16; 256]) {
        let s = &mut self.drives[unit];
        for (i, w) in id.iter().enumerate() {
            s.io[2 * i..2 * i + 2].copy_from_slice(&w.to_le_bytes());
        }
        s.status = DRDY | DSC;
        self.transfer_start(unit, 512, End::Stop);
        self.set_irq();
    }

    /// EXECUTE DEVICE DIAGNOSTIC on one unit (also the end of a software reset).
    fn diagnostic(&mut self, unit: usize) {
        let s = &mut self.drives[unit];
        s.select = DEV_ALWAYS_ON;
        s.set_signature();
        if s.is_cd() {
            // Packet devices return a clear status (DRDY not set).
            s.status = 0;
            s.error = 0x01;
        } else {
            s.status = DRDY | DSC;
            s.error = 0x01;
            self.set_irq();
        }
    }

    fn set_features(&mut self, unit: usize) -> bool {
        let s = &mut self.drives[unit];
        if !s.attached {
            self.abort_command(unit);
            return true;
        }
        let feature = s.feature;
        match feature {
            0x02 | 0x82 => {
                s.write_cache = feature == 0x02;
                if let Some(d) = s.disk.as_mut() {
                    d.write_cache = feature == 0x02;
                }
                if let Some(id) = s.identify.as_mut() {
                    id[85] = (1 << 14) | if feature == 0x02 { 1 << 5 } else { 0 } | 1;
                }
                if feature == 0x82 {
                    self.flush_cache(unit);
                    return false;
                }
                true
            }
            0xcc => {
                s.reset_reverts = true;
                true
            }
            0x66 => {
                s.reset_reverts = false;
                true
            }
            0xaa | 0x55 | 0x05 | 0x85 | 0x69 | 0x67 | 0x96 | 0x9a | 0x42 | 0xc2 => true,
            0x03 => {
                let val = (s.nsector & 7) as u16;
                let (w62, w63, w88) = match s.nsector >> 3 {
                    0 | 1 => (0x07, 0x07, 0x3f),
                    2 => (0x07 | (1 << (val + 8)), 0x07, 0x3f),
                    4 => (0x07, 0x07 | (1 << (val + 8)), 0x3f),
                    8 => (0x07, 0x07, 0x3f | (1 << (val + 8))),
                    _ => {
                        self.abort_command(unit);
                        return true;
                    }
                };
                let id = if s.is_cd() {
                    s.identify_cd()
                } else {
                    s.identify_hd()
                };
                let mut id = id;
                id[62] = w62;
                id[63] = w63;
                id[88] = w88;
                s.identify = Some(id);
                true
            }
            _ => {
                self.abort_command(unit);
                true
            }
        }
    }

    fn flush_cache(&mut self, unit: usize) {
        self.flush_from(unit, FlushStage::ToOs);
    }

    /// ide_flush_cache from `stage`: done, failed, or suspended at a blkdebug breakpoint
    /// (BSY stays set until the monitor resumes it).
    fn flush_from(&mut self, unit: usize, stage: FlushStage) {
        let s = &mut self.drives[unit];
        let result = match s.disk.as_mut() {
            Some(d) => d.guest_flush(stage),
            None => Flushed::Done(Ok(())),
        };
        match result {
            Flushed::Done(Ok(())) => {
                let s = &mut self.drives[unit];
                s.status = DRDY | DSC;
                self.set_irq();
            }
            Flushed::Done(Err(e)) => {
                if self.io_failed(unit, &e, false, Retry::Flush) {
                    let s = &mut self.drives[unit];
                    s.status = DRDY | DSC;
                    self.set_irq();
                }
            }
            Flushed::Suspended { debug, tag, next } => {
                self.drives[unit].status |= BSY;
                let this = self.this.clone();
                let generation = self.generation;
                debug.suspend(
                    tag,
                    Box::new(move || {
                        let Some(ch) = this.upgrade() else {
                            return;
                        };
                        let mut ch = ch.lock().unwrap_or_else(|e| e.into_inner());
                        if ch.generation == generation {
                            ch.flush_from(unit, next);
                        }
                    }),
                );
            }
        }
    }

    /// ide_rw_error: the request failed; werror/rerror=report.
    fn rw_error(&mut self, unit: usize) {
        self.abort_command(unit);
        self.set_irq();
    }

    /// ide_sector_read: the next PIO block of a READ SECTORS/MULTIPLE.
    fn sector_read(&mut self, unit: usize) {
        let s = &mut self.drives[unit];
        s.status = DRDY | DSC;
        s.error = 0;
        let sector = s.get_sector();
        let n = s.nsector;
        if n == 0 {
            self.transfer_stop(unit);
            return;
        }
        let n = n.min(s.req_nb_sectors).max(1) as usize;
        let len = n * SECTOR as usize;
        let Some(disk) = s.disk.as_mut() else {
            self.rw_error(unit);
            return;
        };
        if len > s.io.len() {
            self.rw_error(unit);
            return;
        }
        if let Err(e) = disk.read(sector, &mut s.io[..len]) {
            if !self.io_failed(unit, &e, true, Retry::PioRead) {
                return;
            }
        }
        let s = &mut self.drives[unit];
        s.set_sector(sector + n as u64);
        s.nsector -= n as u32;
        self.transfer_start(unit, len, End::SectorRead);
        self.set_irq();
    }

    /// ide_sector_write: the guest filled a PIO block; write it, ask for the next.
    fn sector_write(&mut self, unit: usize) {
        let s = &mut self.drives[unit];
        s.status = DRDY | DSC | BSY;
        let sector = s.get_sector();
        let n = s.nsector.min(s.req_nb_sectors).max(1) as usize;
        let len = n * SECTOR as usize;
        let Some(disk) = s.disk.as_mut() else {
            self.rw_error(unit);
            return;
        };
        if len > s.io.len() {
            self.rw_error(unit);
            return;
        }
        if let Err(e) = disk.write(sector, &s.io[..len]) {
            if !self.io_failed(unit, &e, false, Retry::PioWrite) {
                return;
            }
        }
        let s = &mut self.drives[unit];
        s.status &= !BSY;
        s.nsector = s.nsector.saturating_sub(n as u32);
        s.set_sector(sector + n as u64);
        if s.nsector == 0 {
            self.transfer_stop(unit);
        } else {
            let n1 = s.nsector.min(s.req_nb_sectors) as usize;
            self.transfer_start(unit, n1 * SECTOR as usize, End::SectorWrite);
        }
        self.set_irq();
    }

    // ---- DMA ----

    /// ide_sector_start_dma / ide_start_dma: the command waits for the bus master, or runs
    /// at once when the bus master is already active.
    pub(super) fn start_dma(&mut self, unit: usize, cmd: DmaCmd) {
        let s = &mut self.drives[unit];
        if cmd != DmaCmd::Atapi {
            s.status = DRDY | DSC | DRQ;
        }
        s.dma_cmd = Some(cmd);
        self.dma_unit = Some(unit);
        self.bm.begin();
        if self.bm.status & bmdma::STATUS_ACTIVE != 0 {
            self.run_dma();
        }
    }

    /// Bus-master command register write (bmdma_cmd_writeb).
    pub fn bm_cmd_write(&mut self, val: u8) {
        if (val & bmdma::CMD_START) != (self.bm.cmd & bmdma::CMD_START) {
            if val & bmdma::CMD_START == 0 {
                // Requests complete synchronously: nothing is in flight to cancel.
                self.bm.status &= !bmdma::STATUS_ACTIVE;
            } else {
                self.bm.rewind();
                if self.bm.status & bmdma::STATUS_ACTIVE == 0 {
                    self.bm.status |= bmdma::STATUS_ACTIVE;
                    if self.dma_unit.is_some() {
                        self.run_dma();
                    }
                }
            }
        }
        self.bm.cmd = val & (bmdma::CMD_START | bmdma::CMD_WRITE);
    }

    /// ide_set_inactive.
    pub(super) fn set_inactive(&mut self, unit: usize, more: bool) {
        self.dma_unit = None;
        self.drives[unit].dma_cmd = None;
        if more {
            self.bm.status |= bmdma::STATUS_ACTIVE;
        } else {
            self.bm.status &= !bmdma::STATUS_ACTIVE;
        }
    }

    /// ide_dma_error.
    fn dma_error(&mut self, unit: usize) {
        self.abort_command(unit);
        self.set_inactive(unit, false);
        self.set_irq();
    }

    fn run_dma(&mut self) {
        let Some(unit) = self.dma_unit else {
            return;
        };
        let Some(mem) = self.dma.clone() else {
            // No guest memory to move data to: the request cannot complete.
            self.dma_error(unit);
            return;
        };
        match self.drives[unit].dma_cmd {
            Some(DmaCmd::Atapi) => atapi::run_dma(self, unit, &mem),
            Some(cmd) => self.run_ata_dma(unit, cmd, &mem),
            None => self.dma_unit = None,
        }
    }

    /// ide_dma_cb, all at once: the PRDs are walked, the data moved, the command ended.
    fn run_ata_dma(&mut self, unit: usize, cmd: DmaCmd, mem: &DmaPort) {
        let n = u64::from(self.drives[unit].nsector);
        let bytes = n * SECTOR;
        let (segs, described) = self.bm.prepare(mem, bytes);
        let prepared: u64 = segs.iter().map(|s| s.len).sum();
        if prepared < bytes {
            // The PRDs are too short: Active clears, no interrupt.
            self.drives[unit].status = DRDY | DSC;
            self.set_inactive(unit, false);
            return;
        }
        let stay_active = described > bytes;
        let sector = self.drives[unit].get_sector();
        let result = match cmd {
            DmaCmd::Read | DmaCmd::Write => self.dma_rw(unit, cmd, sector, n, &segs, mem),
            _ => self.dma_trim(unit, &segs, bytes, mem),
        };
        if let Err(e) = result {
            if !self.io_failed(unit, &e, cmd == DmaCmd::Read, Retry::Dma) {
                return;
            }
        }
        let s = &mut self.drives[unit];
        s.set_sector(sector + n);
        s.nsector = 0;
        s.status = DRDY | DSC;
        self.set_irq();
        self.set_inactive(unit, stay_active);
    }

    fn dma_rw(
        &mut self,
        unit: usize,
        cmd: DmaCmd,
        sector: u64,
        n: u64,
        segs: &[bmdma::Segment],
        mem: &DmaPort,
    ) -> Result<(), DiskError> {
        let s = &mut self.drives[unit];
        let disk = s.disk.as_mut().ok_or(DiskError::OutOfRange(sector, n))?;
        if !disk.range_ok(sector, n) {
            return Err(DiskError::OutOfRange(sector, n));
        }
        let mut buf = vec![0u8; (DMA_CHUNK.min(n) * SECTOR) as usize];
        let mut done = 0u64;
        while done < n {
            let k = DMA_CHUNK.min(n - done);
            let chunk = &mut buf[..(k * SECTOR) as usize];
            if cmd == DmaCmd::Read {
                disk.read(sector + done, chunk)?;
                bmdma::copy_segments(mem, segs, done * SECTOR, chunk, true);
            } else {
                bmdma::copy_segments(mem, segs, done * SECTOR, chunk, false);
                disk.write(sector + done, chunk)?;
            }
            done += k;
        }
        Ok(())
    }

    /// TRIM: 8-byte entries (6-byte LBA, 2-byte count); a range outside the disk fails.
    fn dma_trim(
        &mut self,
        unit: usize,
        segs: &[bmdma::Segment],
        bytes: u64,
        mem: &DmaPort,
    ) -> Result<(), DiskError> {
        let s = &mut self.drives[unit];
        let disk = s.disk.as_mut().ok_or(DiskError::ReadOnly)?;
        let mut buf = [0u8; SECTOR as usize];
        let mut off = 0u64;
        while off < bytes {
            bmdma::copy_segments(mem, segs, off, &mut buf, false);
            for e in buf.chunks_exact(8) {
                let entry = u64::from_le_bytes(e.try_into().unwrap_or([0; 8]));
                let sector = entry & 0x0000_ffff_ffff_ffff;
                let count = entry >> 48;
                if count == 0 {
                    continue;
                }
                disk.discard(sector, count)?;
            }
            off += SECTOR;
        }
        Ok(())
    }
}

/// ide_cmd_table: whether `cmd` is allowed for the kind of drive, and whether completion
/// sets DSC.
fn permitted(cmd: u8, kind: Kind) -> Option<bool> {
    let hd = kind == Kind::Hd;
    let cd = kind == Kind::Cd;
    let (ok, dsc) = match cmd {
        0x06 => (hd, false),
        0x08 => (cd, false),
        0x10 => (hd, true),
        0x20 => (true, false),
        0x21 | 0x24 | 0x25 | 0x29 | 0x30 | 0x31 | 0x34 | 0x35 | 0x39 | 0x3c => (hd, false),
        0x27 | 0x40 | 0x41 | 0x42 | 0x70 | 0x91 | 0x98 | 0xc6 | 0xe5 | 0xf8 => (hd, true),
        0x90 | 0xe7 | 0xec => (true, false),
        0x94..=0x97 | 0x99 | 0xe0..=0xe3 | 0xe6 => (hd, false),
        0xa0 | 0xa1 => (cd, false),
        0xc4 | 0xc5 | 0xc8 | 0xc9 | 0xca | 0xcb | 0xea => (hd, false),
        0xef => (true, true),
        _ => (false, false),
    };
    ok.then_some(dsc)
}
