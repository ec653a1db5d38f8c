//! The ATA command set of a channel (ide_exec_cmd and its handlers): identify, diagnostics,
//! set features, cache flush, PIO sector reads and writes, and which commands each kind of
//! drive accepts.

use super::*;

impl Channel {
    /// ide_bus_exec_cmd.
    pub(super) fn exec_cmd(&mut self, cmd: u8) {
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
    pub(super) fn run_cmd(&mut self, unit: usize, cmd: u8) -> bool {
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

    pub(super) fn identify_reply(&mut self, unit: usize, id: &[u16; 256]) {
        let s = &mut self.drives[unit];
        for (i, w) in id.iter().enumerate() {
            s.io[2 * i..2 * i + 2].copy_from_slice(&w.to_le_bytes());
        }
        s.status = DRDY | DSC;
        self.transfer_start(unit, 512, End::Stop);
        self.set_irq();
    }

    /// EXECUTE DEVICE DIAGNOSTIC on one unit (also the end of a software reset).
    pub(super) fn diagnostic(&mut self, unit: usize) {
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

    pub(super) fn set_features(&mut self, unit: usize) -> bool {
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

    pub(super) fn flush_cache(&mut self, unit: usize) {
        self.flush_from(unit, FlushStage::ToOs);
    }

    /// ide_flush_cache from `stage`: done, failed, or suspended at a blkdebug breakpoint
    /// (BSY stays set until the monitor resumes it).
    pub(super) fn flush_from(&mut self, unit: usize, stage: FlushStage) {
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
    pub(super) fn rw_error(&mut self, unit: usize) {
        self.abort_command(unit);
        self.set_irq();
    }

    /// ide_sector_read: the next PIO block of a READ SECTORS/MULTIPLE.
    pub(super) fn sector_read(&mut self, unit: usize) {
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
    pub(super) fn sector_write(&mut self, unit: usize) {
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
