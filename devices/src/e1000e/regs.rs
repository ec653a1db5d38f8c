//! Register offsets and bits of the 82574L (Intel's datasheet; QEMU's hw/net/e1000_regs.h and
//! e1000x_regs.h use the same names). Offsets are byte offsets into BAR 0; the register file
//! is indexed by `offset / 4` ([`idx`]).

/// Word index of the register at byte offset `off`.
pub const fn idx(off: u32) -> usize {
    (off >> 2) as usize
}

/// Words in the 128 KiB register window.
pub const MAC_WORDS: usize = 0x20000 / 4;

pub const CTRL: usize = idx(0x00000);
pub const CTRL_DUP: usize = idx(0x00004);
pub const STATUS: usize = idx(0x00008);
pub const EECD: usize = idx(0x00010);
pub const EERD: usize = idx(0x00014);
pub const CTRL_EXT: usize = idx(0x00018);
pub const FLA: usize = idx(0x0001c);
pub const MDIC: usize = idx(0x00020);
pub const FCAL: usize = idx(0x00028);
pub const FCAH: usize = idx(0x0002c);
pub const FCT: usize = idx(0x00030);
pub const VET: usize = idx(0x00038);
pub const ICR: usize = idx(0x000c0);
pub const ITR: usize = idx(0x000c4);
pub const ICS: usize = idx(0x000c8);
pub const IMS: usize = idx(0x000d0);
pub const IMC: usize = idx(0x000d8);
pub const EIAC: usize = idx(0x000dc);
pub const IAM: usize = idx(0x000e0);
pub const IVAR: usize = idx(0x000e4);
pub const EITR: usize = idx(0x000e8);
pub const RCTL: usize = idx(0x00100);
pub const FCTTV: usize = idx(0x00170);
pub const TCTL: usize = idx(0x00400);
pub const TCTL_EXT: usize = idx(0x00404);
pub const TIPG: usize = idx(0x00410);
pub const AIT: usize = idx(0x00458);
pub const LEDCTL: usize = idx(0x00e00);
pub const EXTCNF_CTRL: usize = idx(0x00f00);
pub const EXTCNF_SIZE: usize = idx(0x00f08);
pub const POEMB: usize = idx(0x00f10);
pub const PBA: usize = idx(0x01000);
pub const PBS: usize = idx(0x01008);
pub const EEMNGCTL: usize = idx(0x01010);
pub const FLASHT: usize = idx(0x01028);
pub const EEWR: usize = idx(0x0102c);
pub const FLSWCTL: usize = idx(0x01030);
pub const FLOL: usize = idx(0x01050);
pub const FCRTL: usize = idx(0x02160);
pub const FCRTH: usize = idx(0x02168);
pub const PSRCTL: usize = idx(0x02170);
pub const RDBAL: usize = idx(0x02800);
pub const RDBAH: usize = idx(0x02804);
pub const RDLEN: usize = idx(0x02808);
pub const RDH: usize = idx(0x02810);
pub const RDT: usize = idx(0x02818);
pub const RDTR: usize = idx(0x02820);
pub const RXDCTL: usize = idx(0x02828);
pub const RADV: usize = idx(0x0282c);
pub const RXDCTL1: usize = idx(0x02928);
pub const RSRPD: usize = idx(0x02c00);
pub const RAID: usize = idx(0x02c08);
pub const TDBAL: usize = idx(0x03800);
pub const TDBAH: usize = idx(0x03804);
pub const TDLEN: usize = idx(0x03808);
pub const TDH: usize = idx(0x03810);
pub const TDT: usize = idx(0x03818);
pub const TIDV: usize = idx(0x03820);
pub const TXDCTL: usize = idx(0x03828);
pub const TADV: usize = idx(0x0382c);
pub const TARC0: usize = idx(0x03840);
pub const TXDCTL1: usize = idx(0x03928);
pub const TARC1: usize = idx(0x03940);
/// First and last statistics counters.
pub const STATS_FIRST: usize = idx(0x04000);
pub const STATS_LAST: usize = idx(0x04124);
pub const MPC: usize = idx(0x04010);
pub const PRC64: usize = idx(0x0405c);
pub const GPRC: usize = idx(0x04074);
pub const BPRC: usize = idx(0x04078);
pub const MPRC: usize = idx(0x0407c);
pub const GPTC: usize = idx(0x04080);
pub const GORCL: usize = idx(0x04088);
pub const GORCH: usize = idx(0x0408c);
pub const GOTCL: usize = idx(0x04090);
pub const GOTCH: usize = idx(0x04094);
pub const RNBC: usize = idx(0x040a0);
pub const RUC: usize = idx(0x040a4);
pub const ROC: usize = idx(0x040ac);
pub const TORL: usize = idx(0x040c0);
pub const TORH: usize = idx(0x040c4);
pub const TOTL: usize = idx(0x040c8);
pub const TOTH: usize = idx(0x040cc);
pub const TPR: usize = idx(0x040d0);
pub const TPT: usize = idx(0x040d4);
pub const PTC64: usize = idx(0x040d8);
pub const MPTC: usize = idx(0x040f0);
pub const BPTC: usize = idx(0x040f4);
pub const TSCTC: usize = idx(0x040f8);
pub const RXCSUM: usize = idx(0x05000);
pub const RFCTL: usize = idx(0x05008);
pub const MTA: usize = idx(0x05200);
pub const MTA_WORDS: usize = 128;
pub const RA: usize = idx(0x05400);
/// 16 receive address pairs (RAL, RAH).
pub const RA_WORDS: usize = 32;
pub const VFTA: usize = idx(0x05600);
pub const VFTA_WORDS: usize = 128;
pub const WUC: usize = idx(0x05800);
pub const WUFC: usize = idx(0x05808);
pub const WUS: usize = idx(0x05810);
pub const MANC: usize = idx(0x05820);
pub const MANC2H: usize = idx(0x05860);
pub const MRQC: usize = idx(0x05818);
pub const RETA: usize = idx(0x05c00);
pub const RSSRK: usize = idx(0x05c80);
pub const GCR: usize = idx(0x05b00);
pub const FACTPS: usize = idx(0x05b30);
pub const SWSM: usize = idx(0x05b50);
pub const FWSM: usize = idx(0x05b54);
pub const SW_FW_SYNC: usize = idx(0x05b5c);
pub const GCR2: usize = idx(0x05b64);
pub const PBACLR: usize = idx(0x05b68);
pub const TIMINCA: usize = idx(0x0b608);
pub const SYSTIML: usize = idx(0x0b600);
pub const SYSTIMH: usize = idx(0x0b604);
pub const TSYNCTXCTL: usize = idx(0x0b614);
pub const TSYNCRXCTL: usize = idx(0x0b620);

/// Legacy aliases of the queue-0 registers (82542 layout), folded onto the real ones.
pub const ALIASES: &[(u32, usize)] = &[
    (0x00108, RDTR),
    (0x00110, RDBAL),
    (0x00114, RDBAH),
    (0x00118, RDLEN),
    (0x00120, RDH),
    (0x00128, RDT),
    (0x00160, FCRTH),
    (0x00168, FCRTL),
    (0x00420, TDBAL),
    (0x00424, TDBAH),
    (0x00428, TDLEN),
    (0x00430, TDH),
    (0x00438, TDT),
    (0x00440, TIDV),
];
/// RA and VFTA also appear at these older offsets.
pub const RA_ALIAS: usize = idx(0x00040);
pub const VFTA_ALIAS: usize = idx(0x00600);

// CTRL
pub const CTRL_FD: u32 = 1 << 0;
pub const CTRL_GIO_MASTER_DISABLE: u32 = 1 << 2;
pub const CTRL_SLU: u32 = 1 << 6;
pub const CTRL_SPD_SEL: u32 = 3 << 8;
pub const CTRL_SPD_1000: u32 = 2 << 8;
pub const CTRL_SPD_100: u32 = 1 << 8;
pub const CTRL_FRCSPD: u32 = 1 << 11;
pub const CTRL_FRCDPX: u32 = 1 << 12;
pub const CTRL_SWDPIN0: u32 = 1 << 18;
pub const CTRL_SWDPIN2: u32 = 1 << 20;
pub const CTRL_ADVD3WUC: u32 = 1 << 20;
pub const CTRL_RST: u32 = 1 << 26;
pub const CTRL_VME: u32 = 1 << 30;
pub const CTRL_PHY_RST: u32 = 1 << 31;

// STATUS
pub const STATUS_FD: u32 = 1 << 0;
pub const STATUS_LU: u32 = 1 << 1;
pub const STATUS_SPEED_100: u32 = 1 << 6;
pub const STATUS_SPEED_1000: u32 = 2 << 6;
pub const STATUS_ASDV_1000: u32 = 2 << 8;
pub const STATUS_PHYRA: u32 = 1 << 10;
pub const STATUS_GIO_MASTER_ENABLE: u32 = 1 << 19;

// EECD / EERD
pub const EECD_PRES: u32 = 1 << 8;
pub const EECD_AUTO_RD: u32 = 1 << 9;
pub const EECD_SIZE_EX_MASK: u32 = 0xf << 11;
pub const EERW_START: u32 = 1 << 0;
pub const EERW_DONE: u32 = 1 << 1;
pub const EERW_ADDR_SHIFT: u32 = 2;
pub const EERW_ADDR_MASK: u32 = (1 << 14) - 1;
pub const EERW_DATA_SHIFT: u32 = 16;

// CTRL_EXT
pub const CTRL_EXT_ASDCHK: u32 = 1 << 12;
pub const CTRL_EXT_EE_RST: u32 = 1 << 13;
pub const CTRL_EXT_SPD_BYPS: u32 = 1 << 15;
pub const CTRL_EXT_EIAME: u32 = 1 << 24;
pub const CTRL_EXT_IAME: u32 = 1 << 27;
pub const CTRL_EXT_PBA_CLR: u32 = 1 << 31;

// MDIC
pub const MDIC_DATA_MASK: u32 = 0xffff;
pub const MDIC_REG_SHIFT: u32 = 16;
pub const MDIC_REG_MASK: u32 = 0x1f << 16;
pub const MDIC_PHY_SHIFT: u32 = 21;
pub const MDIC_PHY_MASK: u32 = 0x1f << 21;
pub const MDIC_OP_WRITE: u32 = 1 << 26;
pub const MDIC_OP_READ: u32 = 1 << 27;
pub const MDIC_READY: u32 = 1 << 28;
pub const MDIC_INT_EN: u32 = 1 << 29;
pub const MDIC_ERROR: u32 = 1 << 30;

// Interrupt causes (ICR/ICS/IMS/IMC).
pub const ICR_TXDW: u32 = 1 << 0;
pub const ICR_TXQE: u32 = 1 << 1;
pub const ICR_LSC: u32 = 1 << 2;
pub const ICR_RXDMT0: u32 = 1 << 4;
pub const ICR_RXO: u32 = 1 << 6;
pub const ICR_RXT0: u32 = 1 << 7;
pub const ICR_MDAC: u32 = 1 << 9;
pub const ICR_TXD_LOW: u32 = 1 << 15;
pub const ICR_SRPD: u32 = 1 << 16;
pub const ICR_ACK: u32 = 1 << 17;
pub const ICR_MNG: u32 = 1 << 18;
pub const ICR_RXQ0: u32 = 1 << 20;
pub const ICR_RXQ1: u32 = 1 << 21;
pub const ICR_TXQ0: u32 = 1 << 22;
pub const ICR_TXQ1: u32 = 1 << 23;
pub const ICR_OTHER: u32 = 1 << 24;
pub const ICR_ASSERTED: u32 = 1 << 31;
/// Causes that MSI-X signals through the "other" vector.
pub const ICR_OTHER_CAUSES: u32 = ICR_LSC | ICR_RXO | ICR_MDAC | ICR_SRPD | ICR_ACK | ICR_MNG;
/// The causes IMS can enable.
pub const IMS_VALID: u32 = ICR_TXDW
    | ICR_TXQE
    | ICR_LSC
    | ICR_RXDMT0
    | ICR_RXO
    | ICR_RXT0
    | ICR_MDAC
    | ICR_TXD_LOW
    | ICR_SRPD
    | ICR_ACK
    | ICR_MNG
    | ICR_RXQ0
    | ICR_RXQ1
    | ICR_TXQ0
    | ICR_TXQ1
    | ICR_OTHER;
/// The per-queue causes with MSI-X vectors of their own.
pub const IMS_EXT: u32 = ICR_RXQ0 | ICR_RXQ1 | ICR_TXQ0 | ICR_TXQ1 | ICR_OTHER;

// IVAR: 4-bit entries (vector, bit 3 = valid) for RXQ0, RXQ1, TXQ0, TXQ1, OTHER.
pub const IVAR_VALID: u32 = 0x8;
pub const IVAR_TX_INT_EVERY_WB: u32 = 1 << 31;

// RCTL
pub const RCTL_EN: u32 = 1 << 1;
pub const RCTL_SBP: u32 = 1 << 2;
pub const RCTL_UPE: u32 = 1 << 3;
pub const RCTL_MPE: u32 = 1 << 4;
pub const RCTL_LPE: u32 = 1 << 5;
pub const RCTL_RDMTS_SHIFT: u32 = 8;
pub const RCTL_DTYP_MASK: u32 = 3 << 10;
pub const RCTL_MO_SHIFT: u32 = 12;
pub const RCTL_BAM: u32 = 1 << 15;
pub const RCTL_SZ_SHIFT: u32 = 16;
pub const RCTL_VFE: u32 = 1 << 18;
pub const RCTL_BSEX: u32 = 1 << 25;
pub const RCTL_SECRC: u32 = 1 << 26;
pub const RCTL_FLXBUF_SHIFT: u32 = 27;
pub const RCTL_FLXBUF_MASK: u32 = 0xf << 27;

pub const RFCTL_EXTEN: u32 = 1 << 15;
pub const RXCSUM_IPOFLD: u32 = 1 << 8;
pub const RXCSUM_TUOFLD: u32 = 1 << 9;

pub const TCTL_EN: u32 = 1 << 1;
pub const TARC_ENABLE: u32 = 1 << 10;
pub const RAH_AV: u32 = 1 << 31;
pub const SWSM_SMBI: u32 = 1;
pub const XDLEN_MASK: u32 = ((1 << 20) - 1) & !((1 << 7) - 1);
pub const XDBAL_MASK: u32 = !((1 << 4) - 1);
pub const GCR_RO_BITS: u32 = (1 << 23) | (1 << 25) | (1 << 26);

// Transmit descriptor command/status (in the descriptor's second and third dwords).
pub const TXD_CMD_EOP: u32 = 1 << 24;
pub const TXD_CMD_IFCS: u32 = 1 << 25;
pub const TXD_CMD_IC: u32 = 1 << 26;
pub const TXD_CMD_RS: u32 = 1 << 27;
pub const TXD_CMD_RPS: u32 = 1 << 28;
pub const TXD_CMD_DEXT: u32 = 1 << 29;
pub const TXD_CMD_VLE: u32 = 1 << 30;
pub const TXD_CMD_IDE: u32 = 1 << 31;
/// Context descriptor: TCP (else UDP), IPv4 (else IPv6), segmentation.
pub const TXD_CMD_TCP: u32 = 1 << 24;
pub const TXD_CMD_IP: u32 = 1 << 25;
pub const TXD_CMD_TSE: u32 = 1 << 26;
pub const TXD_DTYP_MASK: u32 = 0xf << 20;
pub const TXD_DTYP_D: u32 = 1 << 20;
pub const TXD_STAT_DD: u32 = 1;
pub const TXD_POPTS_IXSM: u8 = 1;
pub const TXD_POPTS_TXSM: u8 = 2;

// Receive descriptor status and errors.
pub const RXD_STAT_DD: u32 = 1 << 0;
pub const RXD_STAT_EOP: u32 = 1 << 1;
pub const RXD_STAT_IXSM: u32 = 1 << 2;
pub const RXD_STAT_VP: u32 = 1 << 3;
pub const RXD_STAT_UDPCS: u32 = 1 << 4;
pub const RXD_STAT_TCPCS: u32 = 1 << 5;
pub const RXD_STAT_IPCS: u32 = 1 << 6;
/// Legacy descriptor error byte (bits 8-15 of our combined status) and the extended
/// descriptor's error bits (24-31).
pub const RXD_ERR_TCPE_LEGACY: u32 = 1 << (8 + 5);
pub const RXD_ERR_IPE_LEGACY: u32 = 1 << (8 + 6);
pub const RXDEXT_ERR_TCPE: u32 = 1 << 29;
pub const RXDEXT_ERR_IPE: u32 = 1 << 30;

// PHY registers (MII and the 82574's Marvell-style pages).
pub const PHY_PAGES: usize = 7;
pub const PHY_PAGE_SIZE: usize = 0x20;
pub const MII_BMCR: usize = 0x00;
pub const MII_BMSR: usize = 0x01;
pub const MII_PHYID1: usize = 0x02;
pub const MII_PHYID2: usize = 0x03;
pub const MII_ANAR: usize = 0x04;
pub const MII_ANLPAR: usize = 0x05;
pub const MII_ANER: usize = 0x06;
pub const MII_ANNP: usize = 0x07;
pub const MII_ANLPRNP: usize = 0x08;
pub const MII_CTRL1000: usize = 0x09;
pub const MII_STAT1000: usize = 0x0a;
pub const MII_EXTSTAT: usize = 0x0f;
pub const PHY_COPPER_CTRL1: usize = 0x10;
pub const PHY_COPPER_STAT1: usize = 0x11;
pub const PHY_COPPER_INT_ENABLE: usize = 0x12;
pub const PHY_COPPER_STAT2: usize = 0x13;
pub const PHY_COPPER_CTRL3: usize = 0x14;
pub const PHY_RX_ERR_CNTR: usize = 0x15;
pub const PHY_PAGE: usize = 0x16;
pub const PHY_OEM_BITS: usize = 0x19;
pub const PHY_COPPER_CTRL2: usize = 0x1a;
pub const PHY_BIAS_1: usize = 0x1d;
pub const PHY_BIAS_2: usize = 0x1e;
pub const PHY_PAGE_RW_MASK: u16 = 0x7f;

pub const BMCR_ANRESTART: u16 = 1 << 9;
pub const BMCR_AUTOEN: u16 = 1 << 12;
pub const BMCR_RESET: u16 = 1 << 15;
pub const BMSR_LINK_ST: u16 = 1 << 2;
pub const BMSR_AN_COMP: u16 = 1 << 5;
pub const ANLPAR_ACK: u16 = 1 << 14;

/// Bytes of one descriptor (legacy and extended alike).
pub const DESC_LEN: u64 = 16;
/// MSI-X vectors.
pub const MSIX_VECTORS: u16 = 5;
