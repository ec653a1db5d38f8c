//! ACPI table discovery and the `acpi` test: RSDP -> XSDT/RSDT -> tables,
//! plus the FADT fields needed for power off and the MCFG (ECAM) entries.
//! Tables are read in place through the identity map, never copied.

use crate::phys::{self, le16, le32, le64, le8};
use crate::serial::Token;

const RSDP_SIGNATURE: &[u8] = b"RSD PTR ";
/// Legacy BIOS area searched when start_info carries no RSDP address.
const SCAN_START: u64 = 0xe0000;
const SCAN_END: u64 = 0x10_0000;
const HEADER_LEN: usize = 36;
/// Sanity cap on a table's length field (a bogus one must not make the
/// guest checksum gigabytes of MMIO).
const MAX_TABLE_LEN: u32 = 1 << 20;
/// Cap on XSDT/RSDT entries walked.
const MAX_ENTRIES: usize = 256;

/// A validated-signature RSDP.
pub struct Rsdp {
    pub addr: u64,
    pub revision: u8,
    pub oem: [u8; 6],
    pub checksum_ok: bool,
    rsdt: u32,
    xsdt: u64,
}

impl Rsdp {
    /// Parses the RSDP at `addr`; `None` if unmapped or the signature is
    /// wrong. Checksums are reported, not enforced, so that a VMM bug
    /// shows up as `checksum=bad` rather than as a missing table.
    fn parse(addr: u64) -> Option<Self> {
        let b = phys::bytes(addr, 20)?;
        if &b[..8] != RSDP_SIGNATURE {
            return None;
        }
        let revision = b[15];
        let mut checksum_ok = sum_is_zero(b);
        let mut xsdt = 0;
        // ACPI 2.0+: 36-byte structure with its own extended checksum.
        if revision >= 2 {
            let ext = phys::bytes(addr, 36)?;
            checksum_ok &= sum_is_zero(ext);
            xsdt = le64(ext, 24);
        }
        let mut oem = [0; 6];
        oem.copy_from_slice(&b[9..15]);
        Some(Self {
            addr,
            revision,
            oem,
            checksum_ok,
            rsdt: le32(b, 16),
            xsdt,
        })
    }

    /// Root table address and its entry size: the XSDT if the RSDP has
    /// one (revision >= 2 and non-zero), else the RSDT.
    fn root(&self) -> (u64, usize) {
        if self.revision >= 2 && self.xsdt != 0 {
            (self.xsdt, 8)
        } else {
            (u64::from(self.rsdt), 4)
        }
    }
}

/// Finds the RSDP: `hint` (start_info.rsdp_paddr) if non-zero and it holds
/// the signature, else the first checksum-valid one in 0xE0000..0xFFFFF.
pub fn find_rsdp(hint: u64) -> Option<Rsdp> {
    if hint != 0 {
        if let Some(rsdp) = Rsdp::parse(hint) {
            return Some(rsdp);
        }
    }
    (SCAN_START..SCAN_END)
        .step_by(16)
        .filter_map(Rsdp::parse)
        .find(|r| r.checksum_ok)
}

/// A system description table with a sane header, borrowed in place.
pub struct Table {
    pub addr: u64,
    pub bytes: &'static [u8],
}

enum TableError {
    Unmapped,
    BadLength(u32),
}

impl Table {
    fn at(addr: u64) -> Result<Self, TableError> {
        let header = phys::bytes(addr, HEADER_LEN).ok_or(TableError::Unmapped)?;
        let len = le32(header, 4);
        if !(HEADER_LEN as u32..=MAX_TABLE_LEN).contains(&len) {
            return Err(TableError::BadLength(len));
        }
        let bytes = phys::bytes(addr, len as usize).ok_or(TableError::Unmapped)?;
        Ok(Self { addr, bytes })
    }

    pub fn signature(&self) -> &[u8] {
        &self.bytes[..4]
    }

    fn checksum_ok(&self) -> bool {
        sum_is_zero(self.bytes)
    }

    /// Prints `acpi: <what>addr=0x.. len=N[ checksum=bad]`.
    fn print(&self, what: core::fmt::Arguments<'_>) {
        print!(
            "acpi: {}addr=0x{:x} len={}",
            what,
            self.addr,
            self.bytes.len()
        );
        if !self.checksum_ok() {
            print!(" checksum=bad");
        }
        println!();
    }
}

fn sum_is_zero(b: &[u8]) -> bool {
    b.iter().fold(0u8, |sum, &x| sum.wrapping_add(x)) == 0
}

/// Addresses listed in the root table (XSDT or RSDT).
fn entries(root: &Table, entry_size: usize) -> impl Iterator<Item = u64> {
    root.bytes[HEADER_LEN..]
        .chunks_exact(entry_size)
        .take(MAX_ENTRIES)
        .map(move |e| {
            if entry_size == 8 {
                le64(e, 0)
            } else {
                u64::from(le32(e, 0))
            }
        })
}

/// Finds the first table with signature `sig`, without printing anything.
pub fn find_table(hint: u64, sig: &[u8]) -> Option<Table> {
    let rsdp = find_rsdp(hint)?;
    let (root_addr, entry_size) = rsdp.root();
    let root = Table::at(root_addr).ok()?;
    entries(&root, entry_size)
        .filter_map(|addr| Table::at(addr).ok())
        .find(|t| t.signature() == sig)
}

/// The FADT fields the guest uses. Port addresses come from the 32-bit
/// legacy fields, or, where those are zero, from the extended GAS fields
/// when they describe system I/O space; 0 means absent.
pub struct Fadt {
    pub pm1a_evt: u64,
    pub pm1a_cnt: u64,
    pub pm1b_cnt: u64,
    pub pm_tmr: u64,
    /// GPE0 block (status in the first half, enables in the second) and its length.
    pub gpe0: u64,
    pub gpe0_len: u8,
    pub sci: u16,
    /// RESET_REG address if it is in I/O space, else 0.
    pub reset_reg: u64,
    pub reset_value: u8,
    pub dsdt: u64,
    /// SLEEP_CONTROL_REG (hardware-reduced ACPI); address 0 when absent.
    pub sleep_ctl: Gas,
}

/// A Generic Address Structure reduced to what the guest can use.
#[derive(Clone, Copy)]
pub struct Gas {
    pub space: AddressSpace,
    pub addr: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum AddressSpace {
    Memory,
    Io,
    /// Any other address space id (PCI config, embedded controller, ...).
    Other(u8),
}

impl Gas {
    fn parse(b: &[u8], off: usize) -> Self {
        let space = match le8(b, off) {
            0 => AddressSpace::Memory,
            1 => AddressSpace::Io,
            id => AddressSpace::Other(id),
        };
        Self {
            space,
            addr: le64(b, off + 4),
        }
    }
}

/// Offsets into the FADT (ACPI 6.x, table 5.9).
mod fadt_off {
    pub const DSDT: usize = 40;
    pub const SCI_INT: usize = 46;
    pub const PM1A_EVT_BLK: usize = 56;
    pub const PM1A_CNT_BLK: usize = 64;
    pub const PM1B_CNT_BLK: usize = 68;
    pub const PM_TMR_BLK: usize = 76;
    pub const GPE0_BLK: usize = 80;
    pub const GPE0_BLK_LEN: usize = 92;
    pub const RESET_REG: usize = 116;
    pub const RESET_VALUE: usize = 128;
    pub const X_DSDT: usize = 140;
    pub const X_PM1A_EVT_BLK: usize = 148;
    pub const X_PM1A_CNT_BLK: usize = 172;
    pub const X_PM1B_CNT_BLK: usize = 184;
    pub const X_PM_TMR_BLK: usize = 208;
    pub const X_GPE0_BLK: usize = 220;
    pub const SLEEP_CONTROL_REG: usize = 244;
}

/// Address of a Generic Address Structure if it is in system I/O space.
fn gas_io(b: &[u8], off: usize) -> u64 {
    match Gas::parse(b, off) {
        Gas {
            space: AddressSpace::Io,
            addr,
        } => addr,
        _ => 0,
    }
}

impl Fadt {
    fn parse(b: &[u8]) -> Self {
        use fadt_off::*;
        let block = |legacy: usize, extended: usize| match le32(b, legacy) {
            0 => gas_io(b, extended),
            port => u64::from(port),
        };
        let dsdt = match le64(b, X_DSDT) {
            0 => u64::from(le32(b, DSDT)),
            x => x,
        };
        Self {
            pm1a_evt: block(PM1A_EVT_BLK, X_PM1A_EVT_BLK),
            pm1a_cnt: block(PM1A_CNT_BLK, X_PM1A_CNT_BLK),
            pm1b_cnt: block(PM1B_CNT_BLK, X_PM1B_CNT_BLK),
            pm_tmr: block(PM_TMR_BLK, X_PM_TMR_BLK),
            gpe0: block(GPE0_BLK, X_GPE0_BLK),
            gpe0_len: le8(b, GPE0_BLK_LEN),
            sci: le16(b, SCI_INT),
            reset_reg: gas_io(b, RESET_REG),
            reset_value: le8(b, RESET_VALUE),
            dsdt,
            sleep_ctl: Gas::parse(b, SLEEP_CONTROL_REG),
        }
    }
}

/// SLP_TYP for S5 from the DSDT's `\_S5_` package (first element), or
/// `None` if it cannot be found. Only the common encodings are handled:
/// `Name (_S5, Package () { <Zero|One|ByteConst|WordConst>, ... })`.
pub fn s5_slp_typ(dsdt_addr: u64) -> Option<u8> {
    const NAME_OP: u8 = 0x08;
    const PACKAGE_OP: u8 = 0x12;
    let dsdt = Table::at(dsdt_addr).ok()?;
    let aml = dsdt.bytes.get(HEADER_LEN..)?;
    let name = aml
        .windows(4)
        .enumerate()
        .skip(1)
        .find(|&(i, w)| {
            w == b"_S5_"
                && (aml[i - 1] == NAME_OP
                    || (aml[i - 1] == b'\\' && i >= 2 && aml[i - 2] == NAME_OP))
        })?
        .0;
    let mut p = name + 4;
    if *aml.get(p)? != PACKAGE_OP {
        return None;
    }
    // PkgLength: bits 7:6 of the lead byte count the extra length bytes.
    let lead = *aml.get(p + 1)?;
    p += 2 + usize::from(lead >> 6);
    p += 1; // NumElements
    match *aml.get(p)? {
        0x0a | 0x0b => aml.get(p + 1).copied(), // ByteConst / WordConst (low byte)
        0x00 => Some(0),                        // ZeroOp
        0x01 => Some(1),                        // OneOp
        _ => None,
    }
}

/// Finds and parses the FADT (signature "FACP").
pub fn find_fadt(hint: u64) -> Option<Fadt> {
    find_table(hint, b"FACP").map(|t| Fadt::parse(t.bytes))
}

/// One MCFG allocation: ECAM window `base` covers buses bus_start..=bus_end
/// of `segment` (the address of bus N is base + N << 20).
pub struct McfgEntry {
    pub base: u64,
    pub segment: u16,
    pub bus_start: u8,
    pub bus_end: u8,
}

/// The allocations of an MCFG table (after its 8 reserved bytes).
pub fn mcfg_entries(mcfg: &Table) -> impl Iterator<Item = McfgEntry> + '_ {
    mcfg.bytes
        .get(HEADER_LEN + 8..)
        .unwrap_or(&[])
        .chunks_exact(16)
        .map(|e| McfgEntry {
            base: le64(e, 0),
            segment: le16(e, 8),
            bus_start: le8(e, 10),
            bus_end: le8(e, 11),
        })
}

fn print_table_error(what: &str, addr: u64, err: TableError) {
    match err {
        TableError::Unmapped => println!("error: acpi {} addr=0x{:x} unmapped", what, addr),
        TableError::BadLength(len) => {
            println!("error: acpi {} addr=0x{:x} bad-length={}", what, addr, len)
        }
    }
}

/// One line per processor of a MADT: local APIC (type 0) and local x2APIC (type 9)
/// entries with their UID, APIC id and enabled flag.
fn madt_report(madt: &Table) {
    let mut rest = madt.bytes.get(HEADER_LEN + 8..).unwrap_or(&[]);
    while rest.len() >= 2 {
        let (kind, len) = (rest[0], usize::from(rest[1]));
        if len < 2 || len > rest.len() {
            println!("error: acpi madt entry type={} len={}", kind, len);
            return;
        }
        let e = &rest[..len];
        match (kind, len) {
            (0, 8) => println!(
                "acpi: madt lapic uid={} id={} enabled={}",
                e[2],
                e[3],
                le32(e, 4) & 1
            ),
            (9, 16) => println!(
                "acpi: madt x2apic uid={} id={} enabled={}",
                le32(e, 12),
                le32(e, 4),
                le32(e, 8) & 1
            ),
            _ => {}
        }
        rest = &rest[len..];
    }
}

/// The `acpi` test.
pub fn report(hint: u64) {
    if hint != 0 && Rsdp::parse(hint).is_none() {
        println!(
            "error: acpi start_info rsdp=0x{:x} has no RSDP signature",
            hint
        );
    }
    let Some(rsdp) = find_rsdp(hint) else {
        println!("acpi: no-rsdp");
        return;
    };
    print!(
        "acpi: rsdp=0x{:x} revision={} oem={}",
        rsdp.addr,
        rsdp.revision,
        Token(&rsdp.oem)
    );
    if !rsdp.checksum_ok {
        print!(" checksum=bad");
    }
    println!();

    let (root_addr, entry_size) = rsdp.root();
    let root = match Table::at(root_addr) {
        Ok(root) => root,
        Err(err) => return print_table_error("root", root_addr, err),
    };
    let count = entries(&root, entry_size).count();
    root.print(format_args!(
        "root={} entries={} ",
        Token(root.signature()),
        count
    ));

    let mut fadt = None;
    let mut mcfg = None;
    for addr in entries(&root, entry_size) {
        match Table::at(addr) {
            Ok(table) => {
                table.print(format_args!("table={} ", Token(table.signature())));
                match table.signature() {
                    b"APIC" => madt_report(&table),
                    b"FACP" if fadt.is_none() => fadt = Some(Fadt::parse(table.bytes)),
                    b"MCFG" if mcfg.is_none() => mcfg = Some(table),
                    _ => {}
                }
            }
            Err(err) => print_table_error("table", addr, err),
        }
    }

    match fadt {
        Some(f) => {
            println!(
                "acpi: fadt pm1a_evt=0x{:x} pm1a_cnt=0x{:x} pm_tmr=0x{:x} sci={} reset_reg=0x{:x} reset_value=0x{:x}",
                f.pm1a_evt, f.pm1a_cnt, f.pm_tmr, f.sci, f.reset_reg, f.reset_value
            );
            match Table::at(f.dsdt) {
                Ok(dsdt) => dsdt.print(format_args!("dsdt ")),
                Err(err) => print_table_error("dsdt", f.dsdt, err),
            }
        }
        None => println!("acpi: no-fadt"),
    }
    if let Some(mcfg) = &mcfg {
        for e in mcfg_entries(mcfg) {
            println!(
                "acpi: mcfg base=0x{:x} segment={} bus_start={} bus_end={}",
                e.base, e.segment, e.bus_start, e.bus_end
            );
        }
    }
    println!("acpi: done tables={}", count);
}
