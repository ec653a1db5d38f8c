//! ACPI tables for a direct boot (what firmware plus QEMU's table builder provide): RSDP,
//! XSDT, FADT, FACS, DSDT, MADT, WAET and, on q35, MCFG. They are written into the BIOS area
//! (0xe0000..0x100000) where an RSDP scan finds them.
//!
//! The DSDT describes what QEMU 7.2's describes for the devices machina models (PCI root,
//! ECAM reservation, the ISA devices with a model: i8042 keyboard and mouse, RTC, COM ports;
//! fw_cfg in PCI0; sleep states S4/S5, the interrupt link devices the `_PRT` names) and
//! nothing machina lacks: no HPET, floppy, parallel port, PCI/CPU/memory hot-plug interfaces.
//! `tests/linux_acpi.rs` compares the result with QEMU's, listing each difference.
//!
//! This module lays the tables out (`write_tables`); the tables themselves are built in
//! `dsdt` (with PCI hot-plug in `pcihp`), `fixed` (MADT, FADT, FACS, MCFG, WAET) and `numa`
//! (SRAT, SLIT, HMAT).

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::sdt::Sdt;
use acpi_tables::{aml, Aml};
use devices::aml::{bytes_of, RawAml};
use devices::legacy::kind::{AmlScope, IsaKind};
use machine::{Family, Range};
use std::collections::BTreeMap;
use vm_memory::{Bytes, GuestAddress};

use crate::boot::{ACPI_END, ACPI_START};
use crate::memory::GuestMemory;

mod dsdt;
mod fixed;
mod numa;
mod pcihp;

pub use dsdt::root_prt;
use dsdt::*;
use fixed::*;
use numa::*;
use pcihp::*;
pub use pcihp::{bridge_tree, BridgeNode, PciHotplugAml};

const OEM_ID: [u8; 6] = *b"BOCHS ";
const OEM_TABLE_ID: [u8; 8] = *b"MACHINA ";
const OEM_REVISION: u32 = 1;
const LAPIC_ADDR: u32 = 0xfee0_0000;
/// ISA IRQs QEMU declares level-triggered, active high (PCI interrupts and the SCI).
const PCI_ISA_IRQ_MASK: u16 = 0x0e20;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables need {needed} bytes but the BIOS area has {available}")]
    TooLarge { needed: u64, available: u64 },
    #[error("cannot write ACPI tables to guest memory")]
    GuestWrite,
}

/// What the tables describe, taken from the plan and the firmware step.
#[derive(Debug, Clone)]
pub struct AcpiConfig {
    pub family: Family,
    pub cpus: u32,
    /// Possible CPUs (`maxcpus`): the MADT lists them all, those beyond `cpus` disabled.
    pub max_cpus: u32,
    /// Gives each CPU its APIC id.
    pub topology: machine::CpuTopology,
    /// ACPI PM I/O base (PM1a event at +0, control at +4, timer at +8).
    pub pm_base: u16,
    /// GPE0 block base and length.
    pub gpe0: (u16, u8),
    /// The SCI's GSI (the plan's `sci_irq`).
    pub sci_irq: u32,
    /// The IOAPIC's register address (the plan's `ioapic` region).
    pub ioapic: u32,
    /// The PCI config ports (CONFIG_ADDRESS to the end of CONFIG_DATA).
    pub config_ports: Range,
    /// The root-bus devfn of the ISA bridge, whose scope holds the ISA devices.
    pub isa_bridge: Option<u8>,
    /// ECAM window (q35, once enabled).
    pub ecam: Option<Range>,
    /// Highest bus number behind the host bridge.
    pub last_bus: u8,
    pub pci_hole32: Range,
    pub pci_hole64: Range,
    /// The ISA devices that have a model (the DSDT declares those it knows).
    pub isa: Vec<machine::IsaDevicePlan>,
    /// Root-bus interrupt routing: (slot, pin 0=INTA, GSI) for every slot and pin.
    pub prt: Vec<(u8, u8, u32)>,
    /// Bridges and ports under the host bridge, nested as the buses are.
    pub bridges: Vec<BridgeNode>,
    /// NUMA nodes: with any, the SRAT (and the SLIT with distances) describe them.
    pub numa: machine::NumaPlan,
    /// RAM below 4 GiB (where the SRAT's node ranges skip the PCI hole).
    pub ram_below_4g: u64,
    /// The memory hot-plug area, which the SRAT gives to the last node.
    pub device_memory: Option<Range>,
    /// ACPI PCI hot-plug (the registers, each hot-plug bus's BSEL and slots), if any.
    pub pci_hotplug: Option<PciHotplugAml>,
    /// The OS may take native PCIe hot-plug (_OSC): ACPI does not own the ports.
    pub native_pcie_hotplug: bool,
    /// The ACPI CPU hot-plug block's base, if the machine has one (`\_SB.CPUS`).
    pub cpu_hotplug: Option<u16>,
}

fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut table = Sdt::new(*signature, 36, revision, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    table.append_slice(body);
    table.as_slice().to_vec()
}

/// Lay the tables out in the BIOS area, write them, and return the RSDP's address.
pub fn write_tables(mem: &GuestMemory, cfg: &AcpiConfig) -> Result<u64, AcpiError> {
    let mut image: Vec<u8> = Vec::new();
    let place = |image: &mut Vec<u8>, table: &[u8]| -> u64 {
        // Tables are 16-byte aligned; the RSDP must be.
        while !image.len().is_multiple_of(16) {
            image.push(0);
        }
        let addr = ACPI_START + image.len() as u64;
        image.extend_from_slice(table);
        addr
    };
    // RSDP first, at the start of the area; its contents are filled in last.
    let rsdp_len = acpi_tables::rsdp::Rsdp::len();
    let rsdp_addr = place(&mut image, &vec![0u8; rsdp_len]);
    let facs_addr = place(&mut image, &facs());
    let dsdt_addr = place(&mut image, &dsdt(cfg));
    let fadt_addr = place(&mut image, &fadt(cfg, dsdt_addr, facs_addr));
    let madt_addr = place(&mut image, &madt(cfg));
    let mut entries = vec![fadt_addr, madt_addr];
    let mut dump: Vec<(&str, u64)> = vec![
        ("facs", facs_addr),
        ("dsdt", dsdt_addr),
        ("facp", fadt_addr),
        ("apic", madt_addr),
    ];
    if let Some(ecam) = cfg.ecam {
        let addr = place(&mut image, &mcfg(ecam));
        entries.push(addr);
        dump.push(("mcfg", addr));
    }
    if cfg.numa.is_enabled() {
        let addr = place(&mut image, &srat(cfg));
        entries.push(addr);
        dump.push(("srat", addr));
        if !cfg.numa.distances.is_empty() {
            let addr = place(&mut image, &slit(&cfg.numa));
            entries.push(addr);
            dump.push(("slit", addr));
        }
        if let Some(h) = &cfg.numa.hmat {
            let addr = place(&mut image, &hmat(&cfg.numa, h));
            entries.push(addr);
            dump.push(("hmat", addr));
        }
    }
    let waet_addr = place(&mut image, &waet());
    entries.push(waet_addr);
    dump.push(("waet", waet_addr));
    let xsdt_body: Vec<u8> = entries.iter().flat_map(|a| a.to_le_bytes()).collect();
    let xsdt_addr = place(&mut image, &sdt(b"XSDT", 1, &xsdt_body));
    dump.push(("xsdt", xsdt_addr));
    let rsdp = bytes_of(&acpi_tables::rsdp::Rsdp::new(OEM_ID, xsdt_addr));
    let offset = (rsdp_addr - ACPI_START) as usize;
    image[offset..offset + rsdp.len()].copy_from_slice(&rsdp);

    let available = ACPI_END - ACPI_START;
    if image.len() as u64 > available {
        return Err(AcpiError::TooLarge {
            needed: image.len() as u64,
            available,
        });
    }
    mem.write_slice(&image, GuestAddress(ACPI_START))
        .map_err(|_| AcpiError::GuestWrite)?;
    dump_tables(&image, &dump);
    Ok(rsdp_addr)
}

/// Test hook: with `MACHINA_ACPI_DUMP=DIR` in the environment, each table is also written to
/// `DIR/<signature>.dat` (acpidump -b naming) for `iasl -d` (tests/linux_acpi.rs). Failures
/// are reported and ignored: the guest does not depend on the dump.
fn dump_tables(image: &[u8], tables: &[(&str, u64)]) {
    let Some(dir) = std::env::var_os("MACHINA_ACPI_DUMP") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    // index.txt: "name address" per table, so a test can follow the XSDT's entries.
    let index: String = tables
        .iter()
        .map(|(name, addr)| format!("{name} {addr:#x}\n"))
        .collect();
    if let Err(e) = std::fs::write(dir.join("index.txt"), index) {
        eprintln!("machina: MACHINA_ACPI_DUMP: {}: {e}", dir.display());
    }
    for &(name, addr) in tables {
        let off = (addr - ACPI_START) as usize;
        let Some(len) = image
            .get(off + 4..off + 8)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(|b| u32::from_le_bytes(b) as usize)
        else {
            continue;
        };
        let Some(bytes) = image.get(off..off + len) else {
            continue;
        };
        let path = dir.join(format!("{name}.dat"));
        if let Err(e) = std::fs::write(&path, bytes) {
            eprintln!("machina: MACHINA_ACPI_DUMP: {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(t: &[u8]) -> bool {
        t.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    fn cfg(family: Family) -> AcpiConfig {
        AcpiConfig {
            family,
            cpus: 2,
            max_cpus: 2,
            topology: machine::CpuTopology::default(),
            pm_base: 0x600,
            gpe0: (0x620, 16),
            sci_irq: 9,
            ioapic: 0xfec0_0000,
            config_ports: Range {
                base: 0xcf8,
                size: 8,
            },
            isa_bridge: match family {
                Family::Q35 => Some(0x1f << 3),
                _ => Some(0x01 << 3),
            },
            ecam: (family == Family::Q35).then_some(Range {
                base: 0xb000_0000,
                size: 0x1000_0000,
            }),
            last_bus: 0,
            pci_hole32: Range {
                base: 0xc000_0000,
                size: 0x3ec0_0000,
            },
            pci_hole64: Range {
                base: 0x1_0000_0000,
                size: 0x8_0000_0000,
            },
            isa: vec![
                machine::IsaDevicePlan {
                    type_name: "isa-serial".into(),
                    id: None,
                    io: vec![Range {
                        base: 0x3f8,
                        size: 8,
                    }],
                    irqs: vec![4],
                    mmio: vec![],
                },
                machine::IsaDevicePlan {
                    type_name: "i8042".into(),
                    id: None,
                    io: vec![
                        Range {
                            base: 0x60,
                            size: 1,
                        },
                        Range {
                            base: 0x64,
                            size: 1,
                        },
                    ],
                    irqs: vec![1, 12],
                    mmio: vec![],
                },
            ],
            prt: root_prt(family, &[10, 10, 11, 11], 9),
            bridges: vec![BridgeNode {
                devfn: 0x10,
                bus: "br".into(),
                children: vec![BridgeNode {
                    devfn: 0x08,
                    bus: "br2".into(),
                    children: vec![],
                }],
            }],
            numa: machine::NumaPlan::default(),
            ram_below_4g: 0x800_0000,
            device_memory: None,
            pci_hotplug: None,
            native_pcie_hotplug: true,
            cpu_hotplug: None,
        }
    }

    /// The `And(Local0, GRANTED, Local0)` of _OSC: AndOp, Local0, a byte const, Local0.
    fn osc_granted(d: &[u8]) -> Option<u8> {
        d.windows(5)
            .find(|w| w[0] == 0x7b && w[1] == 0x60 && w[2] == 0x0a && w[4] == 0x60)
            .map(|w| w[3])
    }

    #[test]
    fn cpu_hotplug_objects_for_every_possible_cpu() {
        let mut c = cfg(Family::Q35);
        assert!(!dsdt(&c).windows(4).any(|w| w == b"CSCN"));
        c.cpus = 1;
        c.max_cpus = 4;
        c.cpu_hotplug = Some(0xcd8);
        let d = dsdt(&c);
        for name in [
            b"PRES", b"CPUS", b"CSCN", b"CSTA", b"CTFY", b"COST", b"_E02",
        ] {
            assert!(d.windows(4).any(|w| w == name), "{name:?}");
        }
        // One Processor object per possible CPU, each with its enabled MADT entry as _MAT.
        for cpu in 0..4u8 {
            let name = format!("C{cpu:03X}");
            assert!(d.windows(4).any(|w| w == name.as_bytes()), "{name}");
            let mat = [0u8, 8, cpu, cpu, 1, 0, 0, 0];
            assert!(d.windows(8).any(|w| w == mat), "_MAT of {name}");
        }
        assert!(!d.windows(4).any(|w| w == b"C004"));
        // The MADT still lists the CPUs beyond `cpus` disabled.
        let m = madt(&c);
        assert!(m.windows(8).any(|w| w == [0u8, 8, 3, 3, 0, 0, 0, 0]));
    }

    #[test]
    fn pci_hotplug_in_the_dsdt_and_osc() {
        let mut c = cfg(Family::Q35);
        assert_eq!(
            osc_granted(&dsdt(&c)),
            Some(0x1f),
            "native hot-plug granted"
        );
        c.native_pcie_hotplug = false;
        assert_eq!(osc_granted(&dsdt(&c)), Some(0x1e), "ACPI keeps hot-plug");
        assert!(!dsdt(&c).windows(4).any(|w| w == b"PCNT"));
        // The root port's bus as BSEL 0, one slot: Sxx with _SUN/_EJ0, PCNT chained from
        // PCI0, the register block, _E01.
        c.pci_hotplug = Some(PciHotplugAml {
            base: 0x0cc0,
            root: "pcie.0".into(),
            buses: [("br".to_string(), (0, vec![0]))].into_iter().collect(),
        });
        let d = dsdt(&c);
        assert!(checksum_ok(&d));
        for name in [
            &b"BSEL"[..],
            b"_SUN",
            b"_EJ0",
            b"PCEJ",
            b"PCNT",
            b"DVNT",
            b"_E01",
            b"PHPR",
            b"B0EJ",
        ] {
            assert!(d.windows(4).any(|w| w == name), "{name:?}");
        }
        // PCI0's PCNT calls the bridge's (\\_SB_.PCI0.S10_.PCNT).
        assert!(d.windows(12).any(|w| w == b"PCI0S10_PCNT"));
    }

    #[test]
    fn srat_gives_cpus_and_ram_ranges_their_nodes_and_slit_the_distances() {
        let mut c = cfg(Family::Q35);
        const G: u64 = 1 << 30;
        c.ram_below_4g = 3 * G;
        c.numa = machine::NumaPlan {
            nodes: vec![
                machine::NumaNode {
                    mem: 64 << 20,
                    memdev: None,
                },
                machine::NumaNode {
                    mem: 4 * G - (64 << 20),
                    memdev: None,
                },
            ],
            cpu_nodes: vec![1, 0],
            distances: vec![vec![10, 21], vec![21, 10]],
            hmat: None,
        };
        c.device_memory = Some(Range {
            base: 5 * G,
            size: 2 * G,
        });
        let t = srat(&c);
        assert!(checksum_ok(&t));
        assert_eq!(&t[0..4], b"SRAT");
        let body = &t[36 + 12..];
        // CPU 0 (APIC id 0) on node 1, CPU 1 on node 0.
        assert_eq!(&body[0..4], &[0, 16, 1, 0]);
        assert_eq!(&body[16..20], &[0, 16, 0, 1]);
        let mems: Vec<(u32, u64, u64, u32)> = body[32..]
            .chunks(40)
            .map(|e| {
                assert_eq!(&e[0..2], &[1, 40]);
                let u32_at = |o: usize| u32::from_le_bytes(e[o..o + 4].try_into().unwrap());
                let u64_at = |o: usize| u64::from_le_bytes(e[o..o + 8].try_into().unwrap());
                (u32_at(2), u64_at(8), u64_at(16), u32_at(28))
            })
            .collect();
        assert_eq!(
            mems,
            [
                (0, 0, 640 << 10, 1),
                (0, 1 << 20, 63 << 20, 1),
                (1, 64 << 20, 3 * G - (64 << 20), 1),
                (1, 4 * G, G, 1),
                (1, 5 * G, 2 * G, 3),
            ]
        );
        let t = slit(&c.numa);
        assert!(checksum_ok(&t));
        assert_eq!(&t[36..], &[2, 0, 0, 0, 0, 0, 0, 0, 10, 21, 21, 10]);
    }

    #[test]
    fn tables_have_valid_checksums_and_fields() {
        let c = cfg(Family::Q35);
        for t in [
            dsdt(&c),
            madt(&c),
            mcfg(c.ecam.unwrap()),
            fadt(&c, 0x1000, 0x2000),
        ] {
            assert!(checksum_ok(&t), "{:?}", &t[0..4]);
            assert_eq!(
                u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize,
                t.len()
            );
        }
        let f = fadt(&c, 0x1000, 0x2000);
        assert_eq!(&f[0..4], b"FACP");
        // PM1a_CNT_BLK at offset 64, SCI at 46.
        assert_eq!(u32::from_le_bytes(f[64..68].try_into().unwrap()), 0x604);
        assert_eq!(u16::from_le_bytes(f[46..48].try_into().unwrap()), 9);
        // FACS referenced once, through FIRMWARE_CTRL (X_FIRMWARE_CTRL zero), as QEMU.
        assert_eq!(u32::from_le_bytes(f[36..40].try_into().unwrap()), 0x2000);
        assert_eq!(u64::from_le_bytes(f[132..140].try_into().unwrap()), 0);
        let m = mcfg(c.ecam.unwrap());
        assert_eq!(
            u64::from_le_bytes(m[44..52].try_into().unwrap()),
            0xb000_0000
        );
        assert_eq!(m[55], 255);
        let d = dsdt(&c);
        assert!(d.windows(4).any(|w| w == b"_S5_"));
        assert!(d.windows(4).any(|w| w == b"DRAC"));
        assert!(!dsdt(&cfg(Family::I440fx)).windows(4).any(|w| w == b"DRAC"));
        assert!(d.windows(4).any(|w| w == b"_PRT"));
        // ISA devices under the ISA bridge, S4 offered, link devices named by the _PRT.
        for name in [
            &b"SF8_"[..],
            b"KBD_",
            b"MOU_",
            b"COM1",
            b"_S4_",
            b"GSIA",
            b"GSIH",
        ] {
            assert!(d.windows(4).any(|w| w == name), "{name:?}");
        }
        assert!(!d.windows(4).any(|w| w == b"LNKA"));
        let p = dsdt(&cfg(Family::I440fx));
        for name in [&b"S08_"[..], b"LNKA", b"LNKD", b"LNKS"] {
            assert!(p.windows(4).any(|w| w == name), "{name:?}");
        }
        assert!(!p.windows(4).any(|w| w == b"GSIA"));
        // WAET: PM timer good.
        let w = waet();
        assert!(checksum_ok(&w));
        assert_eq!(w[36], 2);
        // Root port 00:02.0 as S10 with a bridge S08 nested inside it.
        let s10 = d
            .windows(4)
            .position(|w| w == b"S10_")
            .expect("S10 in the DSDT");
        let s08 = d
            .windows(4)
            .position(|w| w == b"S08_")
            .expect("S08 in the DSDT");
        assert!(s08 > s10);
        // q35 00:1f.0 INTA -> PIRQA -> GSI 16; 00:02.0 INTA -> PIRQG -> GSI 22.
        let q = root_prt(Family::Q35, &[], 9);
        assert!(q.contains(&(31, 0, 16)) && q.contains(&(2, 0, 22)));
        // pc: (slot - 1 + pin) & 3 as QEMU's pc_pci_slot_get_pirq: slot 3 INTA -> PIRQC
        // -> IRQ 11, slot 4 INTA -> PIRQD -> 11, slot 2 INTA -> PIRQB -> 10; slot 1 INTA
        // (PIIX4 PM) -> the SCI.
        let pc = root_prt(Family::I440fx, &[10, 10, 11, 11], 9);
        assert!(pc.contains(&(3, 0, 11)) && pc.contains(&(4, 0, 11)) && pc.contains(&(2, 0, 10)));
        assert!(pc.contains(&(1, 0, 9)));
    }

    #[test]
    fn pvpanic_is_described_as_qemu0001_at_its_port() {
        let isa = [machine::IsaDevicePlan {
            type_name: "pvpanic".into(),
            id: None,
            io: vec![Range {
                base: 0x505,
                size: 1,
            }],
            irqs: vec![],
            mmio: vec![],
        }];
        let aml = isa_aml(&isa, AmlScope::IsaBridge);
        assert!(aml.windows(4).any(|w| w == b"PEVT"));
        assert!(aml.windows(8).any(|w| w == b"QEMU0001"));
        // IO(Decode16, 0x505, 0x505, 1, 1).
        assert!(aml
            .windows(8)
            .any(|w| w == [0x47, 0x01, 0x05, 0x05, 0x05, 0x05, 0x01, 0x01]));
        assert!(isa_aml(&[], AmlScope::IsaBridge).is_empty());
        assert!(isa_aml(&isa, AmlScope::PciRoot).is_empty());
    }

    #[test]
    fn fw_cfg_is_described_in_pci0_as_qemu0002_at_its_ports() {
        let isa = [machine::IsaDevicePlan {
            type_name: "fw_cfg_io".into(),
            id: None,
            io: vec![Range {
                base: 0x520,
                size: 12,
            }],
            irqs: vec![],
            mmio: vec![],
        }];
        assert!(isa_aml(&isa, AmlScope::IsaBridge).is_empty());
        let aml = isa_aml(&isa, AmlScope::PciRoot);
        assert!(aml.windows(4).any(|w| w == b"FWCF"));
        assert!(aml.windows(8).any(|w| w == b"QEMU0002"));
        // IO(Decode16, 0x520, 0x520, 1, 12).
        assert!(aml
            .windows(8)
            .any(|w| w == [0x47, 0x01, 0x20, 0x05, 0x20, 0x05, 0x01, 0x0c]));
    }
}
