//! A channel's bus-master DMA phase: starting a DMA command, the bus-master command
//! register, walking the PRDs and moving the data, TRIM by DMA.

use super::*;

impl Channel {
    /// ide_sector_start_dma / ide_start_dma: the command waits for the bus master, or runs
    /// at once when the bus master is already active.
    pub(in crate::ide) fn start_dma(&mut self, unit: usize, cmd: DmaCmd) {
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
    pub(in crate::ide) fn set_inactive(&mut self, unit: usize, more: bool) {
        self.dma_unit = None;
        self.drives[unit].dma_cmd = None;
        if more {
            self.bm.status |= bmdma::STATUS_ACTIVE;
        } else {
            self.bm.status &= !bmdma::STATUS_ACTIVE;
        }
    }

    /// ide_dma_error.
    pub(super) fn dma_error(&mut self, unit: usize) {
        self.abort_command(unit);
        self.set_inactive(unit, false);
        self.set_irq();
    }

    pub(super) fn run_dma(&mut self) {
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
    pub(super) fn run_ata_dma(&mut self, unit: usize, cmd: DmaCmd, mem: &DmaPort) {
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

    pub(super) fn dma_rw(
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
    pub(super) fn dma_trim(
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
