//! The register file (BAR 0, and the I/O window of BAR 2), the NVM and the PHY, and the
//! interrupt logic (QEMU's e1000e_core.c: e1000e_set_*/e1000e_mac_*_read, raise/lower
//! interrupts, MSI-X causes through IVAR with EIAC/IAM auto-clear and auto-mask).
//! Registers QEMU does not have read as 0 and ignore writes (logged under `-d unimp`).

use super::regs::*;
use super::{E1000e, NVM_WORDS};

/// Guest-error kinds reported once each (`E1000e::reported`).
pub(super) const ERR_TX_RING: u32 = 1 << 0;
pub(super) const ERR_RX_RING: u32 = 1 << 1;
pub(super) const ERR_TX_PACKET: u32 = 1 << 2;
pub(super) const ERR_RX_DESC: u32 = 1 << 3;
pub(super) const ERR_IO: u32 = 1 << 4;
pub(super) const ERR_TSO: u32 = 1 << 5;

/// The checksum the NVM's words 0..0x3f add up to.
const NVM_SUM: u16 = 0xbaba;
const NVM_CHECKSUM_WORD: usize = 0x3f;

/// The 82574L's NVM image: the MAC in words 0-2, the device ID in words 0x0b and 0x0d, and
/// the fields the datasheet defines (compatibility 0x03 with the LOM bit clear, PCIe and
/// PHY configuration, LED setup) with the values of an 82574L board, as QEMU ships them
/// (e1000e_eeprom_template); the last word makes the sum NVM_SUM.
pub(super) fn nvm_image(mac: [u8; 6], device_id: u16) -> [u16; NVM_WORDS] {
    let mut nvm: [u16; NVM_WORDS] = [
        0x0000, 0x0000, 0x0000, 0x0420, 0xf746, 0x2010, 0xffff, 0xffff, //
        0x0000, 0x0000, 0x026b, 0x0000, 0x8086, 0x0000, 0x0000, 0x8058, //
        0x0000, 0x2001, 0x7e7c, 0xffff, 0x1000, 0x00c8, 0x0000, 0x2704, //
        0x6cc9, 0x3150, 0x070e, 0x460b, 0x2d84, 0x0100, 0xf000, 0x0706, //
        0x6000, 0x0080, 0x0f04, 0x7fff, 0x4f01, 0xc600, 0x0000, 0x20ff, //
        0x0028, 0x0003, 0x0000, 0x0000, 0x0000, 0x0003, 0x0000, 0xffff, //
        0x0100, 0xc000, 0x121c, 0xc007, 0xffff, 0xffff, 0xffff, 0xffff, //
        0xffff, 0xffff, 0xffff, 0xffff, 0x0000, 0x0120, 0xffff, 0x0000,
    ];
    for i in 0..3 {
        nvm[i] = u16::from_le_bytes([mac[2 * i], mac[2 * i + 1]]);
    }
    nvm[0x0b] = device_id;
    nvm[0x0d] = device_id;
    let sum = nvm[..NVM_CHECKSUM_WORD]
        .iter()
        .fold(0u16, |s, w| s.wrapping_add(*w));
    nvm[NVM_CHECKSUM_WORD] = NVM_SUM.wrapping_sub(sum);
    nvm
}

/// The PHY at reset (an 82574's internal PHY, ID 0x0141:0x0cb1): 1000 Mb/s full duplex
/// with auto-negotiation, which completes at once (the link is always up).
fn phy_reset_values() -> [[u16; PHY_PAGE_SIZE]; PHY_PAGES] {
    let mut phy = [[0u16; PHY_PAGE_SIZE]; PHY_PAGES];
    let p0 = &mut phy[0];
    p0[MII_BMCR] = 0x0040 | 0x0100 | BMCR_AUTOEN; // 1000 Mb/s, full duplex, autoneg
    p0[MII_BMSR] = 0x7909 | 0x0040 | BMSR_LINK_ST | BMSR_AN_COMP; // abilities, link, done
    p0[MII_PHYID1] = 0x0141;
    p0[MII_PHYID2] = 0x0cb1;
    p0[MII_ANAR] = 0x0de1; // 10/100 half/full, pause, asymmetric pause
    p0[MII_ANLPAR] = 0x05e1 | 0x0200 | ANLPAR_ACK; // partner: 10/100, T4, pause
    p0[MII_ANER] = 0x0005; // next page able, partner autoneg able
    p0[MII_ANNP] = 0x2001;
    p0[MII_CTRL1000] = 0x0300 | 0x0400 | 0x0800; // 1000 half/full, multi-port, master
    p0[MII_STAT1000] = 0x0c00 | 0x1000 | 0x2000; // partner 1000 half/full, rx status ok
    p0[MII_EXTSTAT] = 0x3000; // 1000BASE-T half/full
    p0[PHY_COPPER_CTRL1] = 0x3360;
    p0[PHY_COPPER_STAT1] = 0xac08; // 1000 Mb/s, full duplex, resolved, link
    phy[2][0x10] = 0x0088; // MAC control 1
    phy[2][0x15] = 0x1046; // MAC control 2
    phy[3][0x12] = 0x4005; // LED timer control
    phy
}

/// PHY registers the guest may read and write: (page or None for every page, register,
/// writable).
fn phy_access(page: u16, reg: usize) -> Option<(usize, bool)> {
    let any = match reg {
        MII_BMCR | MII_ANAR | MII_ANNP | MII_CTRL1000 | PHY_PAGE => Some(true),
        MII_BMSR | MII_PHYID1 | MII_PHYID2 | MII_ANLPAR | MII_ANER | MII_ANLPRNP | MII_STAT1000
        | MII_EXTSTAT => Some(false),
        _ => None,
    };
    if let Some(w) = any {
        return Some((0, w));
    }
    let page = usize::from(page);
    let w = match (page, reg) {
        (0, PHY_COPPER_CTRL1 | PHY_COPPER_CTRL3 | PHY_OEM_BITS | PHY_BIAS_1 | PHY_BIAS_2) => true,
        (0, PHY_COPPER_INT_ENABLE | PHY_COPPER_CTRL2) => true,
        (0, PHY_COPPER_STAT1 | PHY_RX_ERR_CNTR | PHY_COPPER_STAT2) => false,
        (2, 0x10 | 0x12 | 0x15) => true,
        (2, 0x13) => false,
        (3, 0x10..=0x13) => true,
        (5, 0x14 | 0x15) | (6, 0x11) => false,
        _ => return None,
    };
    Some((page, w))
}

/// How a plain register is written: the bits it keeps (others read back as 0).
fn plain_mask(i: usize) -> Option<u32> {
    let m = match i {
        FLA | FCAL | IAM | EIAC | IVAR | PBA | SWSM | SW_FW_SYNC | GCR2 | TIPG | LEDCTL
        | EXTCNF_CTRL | EXTCNF_SIZE | POEMB | EEMNGCTL | FLSWCTL | FLOL | PSRCTL | TXDCTL
        | TXDCTL1 | TARC0 | TARC1 | RXCSUM | RFCTL | WUC | WUFC | WUS | MANC | MANC2H | MRQC
        | FACTPS | TCTL_EXT | TIMINCA | SYSTIML | SYSTIMH | TSYNCTXCTL | TSYNCRXCTL => u32::MAX,
        FCAH | FCT | FCTTV | RDTR | RADV | TIDV | TADV | AIT | RAID | VET => 0xffff,
        FLASHT => 0xffff,
        RSRPD => 0xfff,
        PBS => 0x3f,
        FCRTL => 0x8000_fff8,
        FCRTH => 0xfff8,
        // The second queue pair's ring registers (kept; the model serves queue 0).
        i if (idx(0x2900)..=idx(0x2918)).contains(&i) => u32::MAX,
        i if (idx(0x3900)..=idx(0x3918)).contains(&i) => u32::MAX,
        i if (RA..RA + RA_WORDS).contains(&i) => u32::MAX,
        i if (MTA..MTA + MTA_WORDS).contains(&i) => u32::MAX,
        i if (VFTA..VFTA + VFTA_WORDS).contains(&i) => u32::MAX,
        i if (RETA..RETA + 32).contains(&i) || (RSSRK..RSSRK + 10).contains(&i) => u32::MAX,
        // Flexible filters, IP address tables, wake-up packet memory.
        i if (idx(0x5838)..idx(0x58a0)).contains(&i) => u32::MAX,
        i if (idx(0x5a00)..idx(0x5a80)).contains(&i) => u32::MAX,
        i if (idx(0x9000)..idx(0x9800)).contains(&i) => u32::MAX,
        _ => return None,
    };
    Some(m)
}

/// The register a legacy alias offset stands for.
fn unalias(i: usize) -> usize {
    let off = (i as u32) << 2;
    if let Some(&(_, real)) = ALIASES.iter().find(|(a, _)| *a == off) {
        return real;
    }
    if (RA_ALIAS..RA_ALIAS + RA_WORDS).contains(&i) {
        return RA + (i - RA_ALIAS);
    }
    if (VFTA_ALIAS..VFTA_ALIAS + VFTA_WORDS).contains(&i) {
        return VFTA + (i - VFTA_ALIAS);
    }
    i
}

/// Whether statistics register `i` is the low half of a 64-bit counter (read without
/// clearing; its high half clears both).
fn stat_low_half(i: usize) -> bool {
    matches!(i, GORCL | GOTCL | TORL | TOTL)
}

impl E1000e {
    /// e1000e_reset: registers to their reset values (a software reset keeps the packet
    /// buffer allocation and the flash access register), the PHY too, RA[0] from the MAC.
    pub(super) fn reset_core(&mut self, software: bool) {
        let keep = [PBA, PBS, FLA].map(|i| self.mac[i]);
        self.mac.fill(0);
        if software {
            for (i, v) in [PBA, PBS, FLA].into_iter().zip(keep) {
                self.mac[i] = v;
            }
        } else {
            self.mac[PBA] = 0x0014_0014;
            self.mac[PBS] = 0x28;
        }
        self.phy = phy_reset_values();
        let m = &mut self.mac;
        m[LEDCTL] = 0x0006_8302;
        m[EXTCNF_CTRL] = 1 << 3;
        m[EEMNGCTL] = 1 << 31;
        m[FLASHT] = 2;
        m[FLSWCTL] = 3 << 30;
        m[FLOL] = 1;
        m[RXDCTL] = 1 << 16;
        m[RXDCTL1] = 1 << 16;
        m[TIPG] = 0x8 | (0x8 << 10) | (0x6 << 20);
        m[CTRL] = CTRL_FD | CTRL_SWDPIN2 | CTRL_SWDPIN0 | CTRL_SPD_1000 | CTRL_SLU;
        m[STATUS] = STATUS_ASDV_1000 | STATUS_LU;
        m[PSRCTL] = 2 | (4 << 8) | (4 << 16); // BSIZE0 256, BSIZE1/2 4 KiB
        m[TARC0] = 3 | TARC_ENABLE;
        m[TARC1] = 3 | TARC_ENABLE;
        m[EECD] = EECD_AUTO_RD | EECD_PRES;
        m[EERD] = EERW_DONE;
        m[EEWR] = EERW_DONE;
        m[GCR] = (1 << 9) | GCR_RO_BITS; // L0s adjust, L1 entry latency
        m[POEMB] = 0x30d;
        m[MANC] = 1 << 28; // DIS_IP_CHK_ARP
        m[FACTPS] = (1 << 2) | 0x2000_0000; // LAN0 on
        m[SWSM] = 1;
        m[RXCSUM] = RXCSUM_IPOFLD | RXCSUM_TUOFLD;
        m[RA] = u32::from_le_bytes([
            self.permanent_mac[0],
            self.permanent_mac[1],
            self.permanent_mac[2],
            self.permanent_mac[3],
        ]);
        m[RA + 1] = u32::from(u16::from_le_bytes([
            self.permanent_mac[4],
            self.permanent_mac[5],
        ])) | RAH_AV;
        self.itr_guest = 0;
        self.eitr_guest = [0; MSIX_VECTORS as usize];
        self.tx = Default::default();
        self.rx.reset();
        self.reported = 0;
    }

    /// BAR 0 access: registers are 32-bit; narrower accesses read the register and take
    /// their bytes, or write their bytes with zeros around (QEMU's adjusted access size).
    pub(super) fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        let mut at = 0;
        while at < data.len() {
            let o = offset.saturating_add(at as u64);
            let word = self.read_reg(((o & 0x1ffff) >> 2) as usize);
            let shift = (o & 3) as usize;
            let n = (4 - shift).min(data.len() - at);
            data[at..at + n].copy_from_slice(&word.to_le_bytes()[shift..shift + n]);
            at += n;
        }
    }

    pub(super) fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        let mut at = 0;
        while at < data.len() {
            let o = offset.saturating_add(at as u64);
            let shift = (o & 3) as usize;
            let n = (4 - shift).min(data.len() - at);
            let mut bytes = [0u8; 4];
            bytes[shift..shift + n].copy_from_slice(&data[at..at + n]);
            self.write_reg(((o & 0x1ffff) >> 2) as usize, u32::from_le_bytes(bytes));
            at += n;
        }
    }

    /// BAR 2: IOADDR at 0 selects a register, IODATA at 4 accesses it (e1000e_io_read).
    pub(super) fn io_read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset & !3 {
            0 => self.ioaddr,
            4 if self.ioaddr < 0x1ffff => self.read_reg((self.ioaddr >> 2) as usize),
            4 => {
                crate::unimp!(
                    "{}: I/O window: IOADDR {:#x} is outside the registers",
                    self.name,
                    self.ioaddr
                );
                0
            }
            _ => 0,
        };
        let shift = (offset & 3) as usize;
        let bytes = v.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(shift + i).copied().unwrap_or(0);
        }
    }

    pub(super) fn io_write(&mut self, offset: u64, data: &[u8]) {
        let mut bytes = [0u8; 4];
        let shift = (offset & 3) as usize;
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = bytes.get_mut(shift + i) {
                *slot = *b;
            }
        }
        let v = u32::from_le_bytes(bytes);
        match offset & !3 {
            0 => self.ioaddr = v,
            4 if self.ioaddr < 0x1ffff => self.write_reg((self.ioaddr >> 2) as usize, v),
            4 => {
                let a = self.ioaddr;
                self.guest_error(
                    ERR_IO,
                    format_args!("I/O window: IOADDR {a:#x} is outside the registers"),
                );
            }
            _ => {}
        }
    }

    /// Read register word `i` with its side effects.
    pub(super) fn read_reg(&mut self, i: usize) -> u32 {
        let i = unalias(i);
        match i {
            CTRL | CTRL_DUP => self.mac[CTRL],
            STATUS => self.status(),
            EECD | EERD | EEWR | CTRL_EXT | MDIC | IMS | ICS | RCTL | TCTL => self.mac[i],
            RDBAL | RDBAH | RDLEN | RDH | RDT | TDBAL | TDBAH | TDLEN | TDH | TDT => self.mac[i],
            RXDCTL | RXDCTL1 | GCR | PBACLR => self.mac[i],
            ICR => self.icr_read(),
            ITR => self.itr_guest,
            i if (EITR..EITR + usize::from(MSIX_VECTORS)).contains(&i) => self.eitr_guest[i - EITR],
            SWSM => {
                let v = self.mac[SWSM];
                self.mac[SWSM] = v | SWSM_SMBI;
                v
            }
            TARC0 | TARC1 => self.mac[i] & (((1 << 11) - 1) | (0xf << 27)),
            FWSM => 0,
            i if (STATS_FIRST..=STATS_LAST).contains(&i) => {
                let v = self.mac[i];
                if !stat_low_half(i) {
                    self.mac[i] = 0;
                    if stat_low_half(i - 1) {
                        self.mac[i - 1] = 0;
                    }
                }
                v
            }
            i if plain_mask(i).is_some() => self.mac[i],
            _ => {
                crate::unimp!("{}: read of unknown register {:#x}", self.name, i << 2);
                0
            }
        }
    }

    /// Write register word `i` with its side effects.
    pub(super) fn write_reg(&mut self, i: usize, v: u32) {
        let i = unalias(i);
        if self.write_queue_reg(i, v) {
            return;
        }
        match i {
            CTRL | CTRL_DUP => self.set_ctrl(v),
            STATUS => {
                if v & STATUS_PHYRA == 0 {
                    self.mac[STATUS] &= !STATUS_PHYRA;
                }
            }
            EECD => {
                let ro = EECD_PRES | EECD_AUTO_RD | EECD_SIZE_EX_MASK;
                self.mac[EECD] = (self.mac[EECD] & ro) | (v & !ro);
            }
            EERD | EEWR => self.nvm_access(i == EEWR, v),
            CTRL_EXT => self.mac[CTRL_EXT] = v & !(CTRL_EXT_ASDCHK | CTRL_EXT_EE_RST),
            MDIC => self.set_mdic(v),
            ICR => self.icr_write(v),
            ICS => self.raise(ICR, v),
            IMS => self.ims_write(v),
            IMC => self.lower(IMS, v),
            ITR => {
                self.itr_guest = v & 0xffff;
                self.mac[ITR] = v & 0xffff;
            }
            i if (EITR..EITR + usize::from(MSIX_VECTORS)).contains(&i) => {
                self.eitr_guest[i - EITR] = v & 0xffff;
                self.mac[i] = v & 0xffff;
            }
            GCR => self.mac[GCR] = (v & !GCR_RO_BITS) | (self.mac[GCR] & GCR_RO_BITS),
            PBACLR => {
                self.mac[PBACLR] = v & 0x1f;
                if self.msix.enabled() {
                    for vec in 0..MSIX_VECTORS {
                        if v & (1 << vec) != 0 {
                            self.msix.clear_pending(vec);
                        }
                    }
                }
            }
            PSRCTL
                if self.mac[RCTL] & RCTL_DTYP_MASK != 0 && (v & 0x7f == 0 || v & 0x3f00 == 0) =>
            {
                crate::guest_error!("{}: PSRCTL.BSIZE0/BSIZE1 cannot be zero", self.name);
            }
            i if plain_mask(i).is_some() => {
                let mask = plain_mask(i).unwrap_or(0);
                self.mac[i] = v & mask;
            }
            i if (STATS_FIRST..=STATS_LAST).contains(&i) || i == FWSM => {
                crate::guest_error!(
                    "{}: write {v:#x} to read-only register {:#x}",
                    self.name,
                    i << 2
                );
            }
            _ => crate::unimp!(
                "{}: write {v:#x} to unknown register {:#x}",
                self.name,
                i << 2
            ),
        }
    }

    /// Writes of the queue registers (rings and their control); false for other registers.
    fn write_queue_reg(&mut self, i: usize, v: u32) -> bool {
        match i {
            RCTL => {
                self.mac[RCTL] = v;
                if v & RCTL_EN != 0 {
                    self.start_recv();
                }
            }
            RDT => {
                self.mac[RDT] = v & 0xffff;
                self.start_recv();
            }
            RDH | TDH => self.mac[i] = v & 0xffff,
            RDLEN | TDLEN => self.mac[i] = v & XDLEN_MASK,
            RDBAL | TDBAL => self.mac[i] = v & XDBAL_MASK,
            RDBAH | TDBAH => self.mac[i] = v,
            RXDCTL | RXDCTL1 => {
                self.mac[RXDCTL] = v;
                self.mac[RXDCTL1] = v;
            }
            TCTL => {
                self.mac[TCTL] = v;
                self.start_xmit();
            }
            TDT => {
                self.mac[TDT] = v & 0xffff;
                self.start_xmit();
            }
            _ => return false,
        }
        true
    }

    /// e1000e_get_status: link, speed and duplex as CTRL forces them.
    fn status(&self) -> u32 {
        let ctrl = self.mac[CTRL];
        let mut v = self.mac[STATUS];
        if ctrl & CTRL_GIO_MASTER_DISABLE == 0 {
            v |= STATUS_GIO_MASTER_ENABLE;
        }
        if ctrl & CTRL_FRCDPX == 0 || ctrl & CTRL_FD != 0 {
            v |= STATUS_FD;
        }
        let forced = ctrl & CTRL_FRCSPD != 0 || self.mac[CTRL_EXT] & CTRL_EXT_SPD_BYPS != 0;
        v |= match ctrl & CTRL_SPD_SEL {
            0 if forced => 0,
            CTRL_SPD_100 if forced => STATUS_SPEED_100,
            _ => STATUS_SPEED_1000,
        };
        v
    }

    fn set_ctrl(&mut self, v: u32) {
        // RST is self-clearing.
        self.mac[CTRL] = v & !CTRL_RST;
        self.mac[CTRL_DUP] = self.mac[CTRL];
        if v & CTRL_RST != 0 {
            self.reset_core(true);
            // Causes and masks are gone: so is the line.
            if !self.msix.enabled() && !self.msi.enabled(&self.config) {
                self.set_intx(false);
            }
        }
        if v & CTRL_PHY_RST != 0 {
            self.mac[STATUS] |= STATUS_PHYRA;
        }
    }

    /// EERD/EEWR: read or write NVM word `addr` when START is set.
    fn nvm_access(&mut self, write: bool, v: u32) {
        let addr = (v >> EERW_ADDR_SHIFT) & EERW_ADDR_MASK;
        let mut data = (v >> EERW_DATA_SHIFT) & 0xffff;
        let mut flags = 0;
        if v & EERW_START != 0 {
            if let Some(word) = self.nvm.get_mut(addr as usize) {
                if write {
                    *word = data as u16;
                } else {
                    data = u32::from(*word);
                }
                flags = EERW_DONE;
            }
        }
        if !write && flags == 0 {
            data = 0;
        }
        self.mac[EERD] = flags | (addr << EERW_ADDR_SHIFT) | (data << EERW_DATA_SHIFT);
    }

    /// MDIC: one PHY register access, done at once (READY), ERROR for another PHY address
    /// or a register the PHY does not have.
    fn set_mdic(&mut self, v: u32) {
        let data = (v & MDIC_DATA_MASK) as u16;
        let reg = ((v & MDIC_REG_MASK) >> MDIC_REG_SHIFT) as usize;
        let mut v = v;
        if (v & MDIC_PHY_MASK) >> MDIC_PHY_SHIFT != 1 {
            v = self.mac[MDIC] | MDIC_ERROR;
        } else if v & MDIC_OP_READ != 0 {
            match phy_access(self.phy[0][PHY_PAGE], reg) {
                Some((page, _)) if page < PHY_PAGES => {
                    v = (v & !MDIC_DATA_MASK) | u32::from(self.phy[page][reg]);
                }
                _ => v |= MDIC_ERROR,
            }
        } else if v & MDIC_OP_WRITE != 0 {
            match phy_access(self.phy[0][PHY_PAGE], reg) {
                Some((page, true)) if page < PHY_PAGES => self.phy_write(page, reg, data),
                _ => v |= MDIC_ERROR,
            }
        }
        self.mac[MDIC] = v | MDIC_READY;
        if v & MDIC_INT_EN != 0 {
            self.raise(ICR, ICR_MDAC);
        }
    }

    fn phy_write(&mut self, page: usize, reg: usize, data: u16) {
        match (page, reg) {
            (0, MII_BMCR) => {
                // Reset and restart are self-clearing; negotiation completes at once.
                self.phy[0][MII_BMCR] = data & !(0x3f | BMCR_RESET | BMCR_ANRESTART);
                if data & BMCR_ANRESTART != 0 && data & BMCR_AUTOEN != 0 {
                    self.autoneg_done();
                }
            }
            (0, PHY_PAGE) => self.phy[0][PHY_PAGE] = data & PHY_PAGE_RW_MASK,
            (0, PHY_OEM_BITS) => {
                self.phy[0][PHY_OEM_BITS] = data & !(1 << 10);
                if data & (1 << 10) != 0 {
                    self.autoneg_done();
                }
            }
            _ => self.phy[page][reg] = data,
        }
    }

    /// Auto-negotiation completed (immediately: the backend's link is always up): link up
    /// in STATUS and the PHY, flow control as negotiated, LSC.
    fn autoneg_done(&mut self) {
        self.mac[STATUS] |= STATUS_LU;
        self.phy[0][MII_BMSR] |= BMSR_LINK_ST | BMSR_AN_COMP;
        self.phy[0][MII_ANLPAR] |= ANLPAR_ACK;
        self.mac[CTRL] |= (1 << 27) | (1 << 28); // RFCE, TFCE as negotiated
        self.raise(ICR, ICR_LSC);
        self.start_recv();
    }

    /// e1000e_mac_icr_read: ICR clears on read with IMS zero, without MSI-X, or (asserted)
    /// with auto-mask or a cause that is enabled.
    fn icr_read(&mut self) -> u32 {
        let v = self.mac[ICR];
        if self.mac[IMS] == 0 || !self.msix.enabled() {
            self.lower(ICR, u32::MAX);
        }
        if self.mac[ICR] & ICR_ASSERTED != 0 {
            if self.mac[CTRL_EXT] & CTRL_EXT_IAME != 0 {
                self.lower(ICR, u32::MAX);
                let iam = self.mac[IAM];
                self.lower(IMS, iam);
            }
            if self.mac[ICR] & self.mac[IMS] != 0 {
                self.lower(ICR, u32::MAX);
            }
        }
        v
    }

    fn icr_write(&mut self, mut v: u32) {
        if self.mac[ICR] & ICR_ASSERTED != 0 && self.mac[CTRL_EXT] & CTRL_EXT_IAME != 0 {
            let iam = self.mac[IAM];
            self.lower(IMS, iam);
        }
        // Clearing OTHER clears the causes it stands for (Windows' driver relies on it).
        if v & ICR_OTHER != 0 {
            v |= ICR_OTHER_CAUSES;
        }
        self.lower(ICR, v);
    }

    fn ims_write(&mut self, v: u32) {
        let v = v & IMS_VALID;
        if v & IMS_EXT != 0 && self.mac[CTRL_EXT] & CTRL_EXT_PBA_CLR != 0 && self.msix.enabled() {
            for (cause, vector) in self.vectors(v) {
                let _ = cause;
                self.msix.clear_pending(vector);
            }
        }
        self.raise(IMS, v);
    }

    /// The MSI-X vectors IVAR gives `causes` (valid entries only), with each cause.
    fn vectors(&self, causes: u32) -> Vec<(u32, u16)> {
        let ivar = self.mac[IVAR];
        [
            (ICR_RXQ0, 0),
            (ICR_RXQ1, 4),
            (ICR_TXQ0, 8),
            (ICR_TXQ1, 12),
            (ICR_OTHER, 16),
        ]
        .into_iter()
        .filter(|(c, _)| causes & c != 0)
        .filter_map(|(c, shift)| {
            let entry = (ivar >> shift) & 0xf;
            let vector = (entry & 7) as u16;
            (entry & IVAR_VALID != 0 && vector < MSIX_VECTORS).then_some((c, vector))
        })
        .collect()
    }

    /// Set `causes` in ICR (or enable them in IMS) and signal what became pending.
    pub(super) fn raise(&mut self, reg: usize, causes: u32) {
        let msix = self.msix.enabled();
        let old = self.mac[IMS] & self.mac[ICR];
        self.mac[reg] |= causes;
        if msix && self.mac[ICR] & ICR_OTHER_CAUSES != 0 {
            self.mac[ICR] |= ICR_OTHER;
        }
        self.mac[ICR] &= !ICR_ASSERTED;
        if self.mac[ICR] != 0 {
            self.mac[ICR] |= ICR_ASSERTED;
        }
        // ICS reads as ICR without clearing (the VxWorks driver reads it).
        self.mac[ICS] = self.mac[ICR];
        let raised = self.mac[IMS] & self.mac[ICR] & !old;
        if raised == 0 {
            return;
        }
        if msix {
            self.msix_notify(raised & !ICR_ASSERTED);
        } else if self.msi.enabled(&self.config) {
            let sink = self.sink();
            self.msi.notify(&self.config, 0, sink.as_ref());
        } else {
            self.set_intx(true);
        }
    }

    /// Clear `causes` in ICR or IMS; INTx drops when nothing enabled is pending.
    pub(super) fn lower(&mut self, reg: usize, causes: u32) {
        self.mac[reg] &= !causes;
        self.mac[ICS] = self.mac[ICR];
        if self.mac[IMS] & self.mac[ICR] == 0
            && !self.msix.enabled()
            && !self.msi.enabled(&self.config)
        {
            self.set_intx(false);
        }
    }

    /// e1000e_msix_notify: each cause to its IVAR vector, then EIAC auto-clear (and with
    /// EIAME auto-mask through IAM).
    fn msix_notify(&mut self, causes: u32) {
        for cause in [ICR_RXQ0, ICR_RXQ1, ICR_TXQ0, ICR_TXQ1, ICR_OTHER] {
            if causes & cause == 0 {
                continue;
            }
            match self.vectors(cause).first() {
                Some(&(_, vector)) => {
                    let sink = self.sink();
                    self.msix.notify(vector, sink.as_ref());
                }
                None => {
                    let ivar = self.mac[IVAR];
                    crate::guest_error!(
                        "{}: interrupt cause {cause:#x} has no valid MSI-X vector (IVAR {ivar:#x})",
                        self.name
                    );
                }
            }
            if self.mac[CTRL_EXT] & CTRL_EXT_EIAME != 0 {
                self.mac[IAM] &= !cause;
            }
            let auto_clear = self.mac[EIAC] & cause;
            self.mac[ICR] &= !auto_clear;
            if self.mac[CTRL_EXT] & CTRL_EXT_IAME == 0 {
                self.mac[IMS] &= !auto_clear;
            }
        }
    }

    pub(super) fn set_intx(&mut self, level: bool) {
        if level != self.intx_level {
            self.intx_level = level;
            if let Some(line) = &self.intx {
                line.set_level(level);
            }
        }
    }

    /// Statistics counter `i` plus `n`, saturating (e1000x_inc_reg_if_not_full).
    pub(super) fn count(&mut self, i: usize, n: u32) {
        self.mac[i] = self.mac[i].saturating_add(n);
    }

    /// A 64-bit counter (low word `lo`, high word `lo + 1`) plus `n`.
    pub(super) fn count64(&mut self, lo: usize, n: u64) {
        let v = (u64::from(self.mac[lo + 1]) << 32 | u64::from(self.mac[lo])).saturating_add(n);
        self.mac[lo] = v as u32;
        self.mac[lo + 1] = (v >> 32) as u32;
    }

    /// The size-bucket counter of a frame of `len` bytes, counting from `base` (PRC64 or
    /// PTC64: 64, 127, 255, 511, 1023, 1522 and larger).
    pub(super) fn count_size(&mut self, base: usize, len: usize) {
        let bucket = match len {
            0..=64 => 0,
            65..=127 => 1,
            128..=255 => 2,
            256..=511 => 3,
            512..=1023 => 4,
            _ => 5,
        };
        self.count(base + bucket, 1);
    }
}
