//! The DSDT's CPU hot-plug objects as QEMU's build_cpus_aml (hw/acpi/cpu.c) generates
//! them for pc and q35: the register block `\_SB.PCI0.PRES` (fields CPEN, CINS, CRMV,
//! CEJ0, CEJF, CCMD, CSEL, CDAT, the lock CPLK, `_INI` leaving the legacy mode), the
//! container `\_SB.CPUS` with CTFY, CSTA, CEJ0, CSCN and COST, one `Processor(Cxxx)` per
//! possible CPU with `_STA`, `_MAT` (its MADT entry, enabled), `_EJ0` (not the boot CPU)
//! and `_OST`, and `\_GPE._E02` calling CSCN.

use acpi_tables::{aml, Aml};
use devices::aml::{bytes_of, RawAml};

/// Register block length (ACPI_CPU_HOTPLUG_REG_LEN).
const REG_LEN: u32 = 12;
/// CSCN's list capacity per pass (ACPI 1.0 PackageOp).
const PER_PASS: u8 = 255;

const RES: &str = "\\_SB_.PCI0.PRES";

fn pkg_length(inner: usize) -> Vec<u8> {
    // The length counts its own encoding bytes.
    for n in 1..=4usize {
        let total = inner + n;
        let fits = match n {
            1 => total < 0x40,
            2 => total < 0x1000,
            3 => total < 0x10_0000,
            _ => total < 0x1000_0000,
        };
        if fits {
            if n == 1 {
                return vec![total as u8];
            }
            let mut v = vec![((n - 1) << 6) as u8 | (total & 0xf) as u8];
            let mut rest = total >> 4;
            for _ in 1..n {
                v.push(rest as u8);
                rest >>= 8;
            }
            return v;
        }
    }
    Vec::new()
}

fn raw(op: &[u8], args: &[&dyn Aml]) -> RawAml {
    let mut v = op.to_vec();
    for a in args {
        v.extend(bytes_of(*a));
    }
    RawAml(v)
}

fn land(a: &dyn Aml, b: &dyn Aml) -> RawAml {
    raw(&[0x90], &[a, b])
}

fn lor(a: &dyn Aml, b: &dyn Aml) -> RawAml {
    raw(&[0x91], &[a, b])
}

fn increment(a: &dyn Aml) -> RawAml {
    raw(&[0x75], &[a])
}

fn brk() -> RawAml {
    RawAml(vec![0xa5])
}

fn debug() -> RawAml {
    RawAml(vec![0x5b, 0x31])
}

/// `Package(n) {}`: n uninitialized elements.
fn empty_package(n: u8) -> RawAml {
    let mut v = vec![0x12];
    v.extend(pkg_length(1));
    v.push(n);
    RawAml(v)
}

fn path(s: &str) -> aml::Path {
    aml::Path::new(s)
}

fn field(name: &str) -> aml::Path {
    path(&format!("{RES}.{name}"))
}

/// `Processor(name, id, 0, 0) { children }` (ACPI 1.0 compatible, as QEMU's pc/q35).
fn processor(name: &str, id: u8, children: &[&dyn Aml]) -> RawAml {
    let mut body = bytes_of(&path(name));
    body.push(id);
    body.extend(0u32.to_le_bytes());
    body.push(0);
    for c in children {
        body.extend(bytes_of(*c));
    }
    let mut v = vec![0x5b, 0x83];
    v.extend(pkg_length(body.len()));
    v.extend(body);
    RawAml(v)
}

/// What the CPU objects describe.
pub struct CpuHotplugAml {
    /// The register block's I/O base.
    pub base: u16,
    /// Each possible CPU's MADT entry (local APIC or x2APIC), by CPU index.
    pub madt_entries: Vec<Vec<u8>>,
}

fn register_block(base: u16) -> Vec<u8> {
    use aml::{FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, OpRegionSpace};
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A06"));
    let uid = aml::Name::new("_UID".into(), &"CPU Hotplug resources");
    let lock = aml::Mutex::new("CPLK".into(), 0);
    let io = aml::IO::new(base, base, 1, REG_LEN as u8);
    let template = aml::ResourceTemplate::new(vec![&io as &dyn Aml]);
    let crs = aml::Name::new("_CRS".into(), &template);
    let at = u32::from(base);
    let region = aml::OpRegion::new("PRST".into(), OpRegionSpace::SystemIO, &at, &REG_LEN);
    let flags = aml::Field::new(
        "PRST".into(),
        FieldAccessType::Byte,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![
            FieldEntry::Reserved(32),
            FieldEntry::Named(*b"CPEN", 1),
            FieldEntry::Named(*b"CINS", 1),
            FieldEntry::Named(*b"CRMV", 1),
            FieldEntry::Named(*b"CEJ0", 1),
            FieldEntry::Named(*b"CEJF", 1),
            FieldEntry::Reserved(3),
            FieldEntry::Named(*b"CCMD", 8),
        ],
    );
    let dwords = aml::Field::new(
        "PRST".into(),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        vec![
            FieldEntry::Named(*b"CSEL", 32),
            FieldEntry::Reserved(32),
            FieldEntry::Named(*b"CDAT", 32),
        ],
    );
    // Leave QEMU's legacy mode: writing 0 to CSEL selects the BSP, a no-op once modern.
    let csel = path("CSEL");
    let store = aml::Store::new(&csel, &aml::ZERO);
    let ini = aml::Method::new("_INI".into(), 0, true, vec![&store]);
    bytes_of(&aml::Device::new(
        RES.into(),
        vec![&hid, &uid, &lock, &crs, &region, &flags, &dwords, &ini],
    ))
}

fn cscn(count: usize) -> Vec<u8> {
    let lock = field("CPLK");
    let csel = field("CSEL");
    let ccmd = field("CCMD");
    let cdat = field("CDAT");
    let cins = field("CINS");
    let crmv = field("CRMV");
    let has_event = aml::Local(0);
    let added = aml::Local(1);
    let idx = aml::Local(2);
    let uid = aml::Local(3);
    let has_job = aml::Local(4);
    let ejs = aml::Local(5);
    let cnew = path("CNEW");
    let cejl = path("CEJL");
    let per_pass = u32::from(PER_PASS);
    let count = count as u32;

    // The scan of CPUs with events.
    let s_has_event0 = aml::Store::new(&has_event, &aml::ZERO);
    let s_sel = aml::Store::new(&csel, &uid);
    let s_cmd = aml::Store::new(&ccmd, &aml::ZERO);
    let wrapped = aml::LessThan::new(&cdat, &uid);
    let b1 = brk();
    let if_wrapped = aml::If::new(&wrapped, vec![&b1]);
    let full_a = aml::Equal::new(&added, &per_pass);
    let full_b = aml::Equal::new(&ejs, &per_pass);
    let full = lor(&full_a, &full_b);
    let s_job1 = aml::Store::new(&has_job, &aml::ONE);
    let b2 = brk();
    let if_full = aml::If::new(&full, vec![&s_job1, &b2]);
    let s_uid = aml::Store::new(&uid, &cdat);
    let ins = aml::Equal::new(&cins, &aml::ONE);
    let new_at = aml::Index::new(&aml::ZERO, &cnew, &added);
    let s_new = aml::Store::new(&new_at, &uid);
    let inc_added = increment(&added);
    let s_ev1 = aml::Store::new(&has_event, &aml::ONE);
    let if_ins = aml::If::new(&ins, vec![&s_new, &inc_added, &s_ev1]);
    let rmv = aml::Equal::new(&crmv, &aml::ONE);
    let ej_at = aml::Index::new(&aml::ZERO, &cejl, &ejs);
    let s_ej = aml::Store::new(&ej_at, &uid);
    let inc_ejs = increment(&ejs);
    let s_ev2 = aml::Store::new(&has_event, &aml::ONE);
    let if_rmv = aml::If::new(&rmv, vec![&s_ej, &inc_ejs, &s_ev2]);
    let inc_uid = increment(&uid);
    let cond_a = aml::Equal::new(&has_event, &aml::ONE);
    let cond_b = aml::LessThan::new(&uid, &count);
    let cond = land(&cond_a, &cond_b);
    let scan = aml::While::new(
        &cond,
        vec![
            &s_has_event0,
            &s_sel,
            &s_cmd,
            &if_wrapped,
            &if_full,
            &s_uid,
            &if_ins,
            &if_rmv,
            &inc_uid,
        ],
    );

    // Notify the added CPUs (Device Check) and clear their insert events.
    let s_idx0 = aml::Store::new(&idx, &aml::ZERO);
    let at_new = aml::Index::new(&aml::ZERO, &cnew, &idx);
    let deref_new = aml::DeRefOf::new(&at_new);
    let s_uid_new = aml::Store::new(&uid, &deref_new);
    let ctfy1 = aml::MethodCall::new(path("CTFY"), vec![&uid, &aml::ONE]);
    let dbg = debug();
    let s_dbg = aml::Store::new(&dbg, &uid);
    let s_sel1 = aml::Store::new(&csel, &uid);
    let s_cins = aml::Store::new(&cins, &aml::ONE);
    let inc_idx1 = increment(&idx);
    let more_new = aml::LessThan::new(&idx, &added);
    let notify_new = aml::While::new(
        &more_new,
        vec![&s_uid_new, &ctfy1, &s_dbg, &s_sel1, &s_cins, &inc_idx1],
    );
    // Notify the CPUs asked to go (Eject Request) and clear their remove events.
    let s_idx0b = aml::Store::new(&idx, &aml::ZERO);
    let at_ej = aml::Index::new(&aml::ZERO, &cejl, &idx);
    let deref_ej = aml::DeRefOf::new(&at_ej);
    let s_uid_ej = aml::Store::new(&uid, &deref_ej);
    let ctfy3 = aml::MethodCall::new(path("CTFY"), vec![&uid, &3u8]);
    let s_sel2 = aml::Store::new(&csel, &uid);
    let s_crmv = aml::Store::new(&crmv, &aml::ONE);
    let inc_idx2 = increment(&idx);
    let more_ej = aml::LessThan::new(&idx, &ejs);
    let notify_ej = aml::While::new(
        &more_ej,
        vec![&s_uid_ej, &ctfy3, &s_sel2, &s_crmv, &inc_idx2],
    );

    let s_job0 = aml::Store::new(&has_job, &aml::ZERO);
    let s_ev = aml::Store::new(&has_event, &aml::ONE);
    let s_added0 = aml::Store::new(&added, &aml::ZERO);
    let s_ejs0 = aml::Store::new(&ejs, &aml::ZERO);
    let job = aml::Equal::new(&has_job, &aml::ONE);
    let outer = aml::While::new(
        &job,
        vec![
            &s_job0,
            &s_ev,
            &s_added0,
            &s_ejs0,
            &scan,
            &s_idx0,
            &notify_new,
            &s_idx0b,
            &notify_ej,
        ],
    );

    let acquire = aml::Acquire::new(field("CPLK"), 0xffff);
    let pkg_new = empty_package(PER_PASS);
    let pkg_ej = empty_package(PER_PASS);
    let cnew_decl = aml::Name::new("CNEW".into(), &pkg_new);
    let cejl_decl = aml::Name::new("CEJL".into(), &pkg_ej);
    let s_uid0 = aml::Store::new(&uid, &aml::ZERO);
    let s_job = aml::Store::new(&has_job, &aml::ONE);
    let release = aml::Release::new(lock);
    bytes_of(&aml::Method::new(
        "CSCN".into(),
        0,
        true,
        vec![
            &acquire, &cnew_decl, &cejl_decl, &s_uid0, &s_job, &outer, &release,
        ],
    ))
}

fn cpus_device(cfg: &CpuHotplugAml) -> Vec<u8> {
    let csel = field("CSEL");
    let count = cfg.madt_entries.len();
    let hid = aml::Name::new("_HID".into(), &"ACPI0010");
    let cid = aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A05"));

    // CTFY(uid, event): Notify the CPU's object.
    let names: Vec<String> = (0..count).map(|i| format!("C{i:03X}")).collect();
    let ifs: Vec<Vec<u8>> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let index = i as u32;
            let eq = aml::Equal::new(&aml::Arg(0), &index);
            let target = path(n);
            let notify = aml::Notify::new(&target, &aml::Arg(1));
            bytes_of(&aml::If::new(&eq, vec![&notify]))
        })
        .collect();
    let ifs: Vec<RawAml> = ifs.into_iter().map(RawAml).collect();
    let ifs: Vec<&dyn Aml> = ifs.iter().map(|r| r as &dyn Aml).collect();
    let ctfy = aml::Method::new("CTFY".into(), 2, false, ifs);

    // CSTA(uid): 0xF when present.
    let acquire = aml::Acquire::new(field("CPLK"), 0xffff);
    let s_sel = aml::Store::new(&csel, &aml::Arg(0));
    let s_zero = aml::Store::new(&aml::Local(0), &aml::ZERO);
    let cpen = field("CPEN");
    let on = aml::Equal::new(&cpen, &aml::ONE);
    let s_f = aml::Store::new(&aml::Local(0), &0xfu8);
    let if_on = aml::If::new(&on, vec![&s_f]);
    let release = aml::Release::new(field("CPLK"));
    let ret = aml::Return::new(&aml::Local(0));
    let csta = aml::Method::new(
        "CSTA".into(),
        1,
        true,
        vec![&acquire, &s_sel, &s_zero, &if_on, &release, &ret],
    );

    // CEJ0(uid): eject.
    let cej0_field = field("CEJ0");
    let s_ej = aml::Store::new(&cej0_field, &aml::ONE);
    let cej0 = aml::Method::new(
        "CEJ0".into(),
        1,
        true,
        vec![&acquire, &s_sel, &s_ej, &release],
    );

    // COST(uid, event, status, info): _OST through the command register.
    let ccmd = field("CCMD");
    let cdat = field("CDAT");
    let s_ev_cmd = aml::Store::new(&ccmd, &aml::ONE);
    let s_ev = aml::Store::new(&cdat, &aml::Arg(1));
    let s_st_cmd = aml::Store::new(&ccmd, &2u8);
    let s_st = aml::Store::new(&cdat, &aml::Arg(2));
    let cost = aml::Method::new(
        "COST".into(),
        4,
        true,
        vec![
            &acquire, &s_sel, &s_ev_cmd, &s_ev, &s_st_cmd, &s_st, &release,
        ],
    );

    let scan = RawAml(cscn(count));
    let mut cpus: Vec<RawAml> = Vec::new();
    for (i, entry) in cfg.madt_entries.iter().enumerate() {
        let uid = i as u32;
        let call_sta = aml::MethodCall::new(path("CSTA"), vec![&uid]);
        let ret = aml::Return::new(&call_sta);
        let sta = aml::Method::new("_STA".into(), 0, true, vec![&ret]);
        let buf = aml::BufferData::new(entry.clone());
        let mat = aml::Name::new("_MAT".into(), &buf);
        let call_ej = aml::MethodCall::new(path("CEJ0"), vec![&uid]);
        let ej0 = aml::Method::new("_EJ0".into(), 1, false, vec![&call_ej]);
        let call_ost = aml::MethodCall::new(
            path("COST"),
            vec![&uid, &aml::Arg(0), &aml::Arg(1), &aml::Arg(2)],
        );
        let ost = aml::Method::new("_OST".into(), 3, true, vec![&call_ost]);
        let mut children: Vec<&dyn Aml> = vec![&sta, &mat];
        if i != 0 {
            children.push(&ej0);
        }
        children.push(&ost);
        cpus.push(processor(&names[i], i as u8, &children));
    }
    let mut children: Vec<&dyn Aml> = vec![&hid, &cid, &ctfy, &csta, &cej0, &scan, &cost];
    children.extend(cpus.iter().map(|c| c as &dyn Aml));
    bytes_of(&aml::Device::new("\\_SB_.CPUS".into(), children))
}

/// The objects that go in `\_SB` (the register block and `CPUS`).
pub fn sb_objects(cfg: &CpuHotplugAml) -> Vec<u8> {
    let mut v = register_block(cfg.base);
    v.extend(cpus_device(cfg));
    v
}

/// `Method(\_GPE._E02) { \_SB.CPUS.CSCN() }`, at the table's root.
pub fn gpe_method() -> Vec<u8> {
    let call = aml::MethodCall::new(path("\\_SB_.CPUS.CSCN"), vec![]);
    bytes_of(&aml::Method::new(
        "\\_GPE._E02".into(),
        0,
        false,
        vec![&call],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkg_length_encodings() {
        assert_eq!(pkg_length(1), vec![2]);
        assert_eq!(pkg_length(0x3e), vec![0x3f]);
        // 0x3f + 2 = 0x41: two bytes, low nibble 1, then 0x04.
        assert_eq!(pkg_length(0x3f), vec![0x41, 0x04]);
    }
}
