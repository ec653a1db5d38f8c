//! One IDE channel (QEMU's IDEBus): two units sharing the task-file registers, the device
//! control register, the interrupt line and the bus-master DMA engine; register access and
//! PIO data phases here, the ATA command set in `commands`, the DMA phase in `dma`. Every
//! guest-controlled count and address is checked against the image and the buffers, so a
//! request the drive cannot serve ends as an ATA error.

use super::atapi;
use super::bmdma::{self, Bmdma, DmaMemory};
use super::disk::{DiskError, ErrorAction, FlushStage, Flushed, SECTOR};
use super::drive::*;
use crate::lifecycle::{IoError, Lifecycle};
use crate::pci::interrupt::IntxSink;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

mod commands;
mod dma;

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
}
