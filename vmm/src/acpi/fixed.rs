//! The fixed-layout tables: MADT, FADT, FACS, MCFG and WAET.

use super::*;

/// CPU `cpu`'s MADT entry (also its `_MAT`, enabled, in the DSDT).
pub(super) fn madt_cpu(cfg: &AcpiConfig, cpu: u32, enabled: bool) -> Vec<u8> {
    let apic_id = cfg.topology.apic_id(cpu);
    let enabled = u32::from(enabled);
    let mut v = Vec::new();
    match u8::try_from(apic_id) {
        // Type 0: processor local APIC (UID = index, id from the topology).
        Ok(id) if id != 0xff => {
            v.extend([0u8, 8, cpu as u8, id]);
            v.extend(enabled.to_le_bytes());
        }
        // Type 9: processor local x2APIC, for ids that do not fit in 8 bits.
        _ => {
            v.extend([9u8, 16, 0, 0]);
            v.extend(apic_id.to_le_bytes());
            v.extend(enabled.to_le_bytes());
            v.extend(cpu.to_le_bytes());
        }
    }
    v
}

pub(super) fn madt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(LAPIC_ADDR.to_le_bytes());
    body.extend(1u32.to_le_bytes()); // PCAT_COMPAT: dual 8259s present
    for cpu in 0..cfg.max_cpus.max(cfg.cpus) {
        body.extend(madt_cpu(cfg, cpu, cpu < cfg.cpus));
    }
    // Type 1: IOAPIC id 0 at its address, GSI base 0.
    body.extend([1u8, 12, 0, 0]);
    body.extend(cfg.ioapic.to_le_bytes());
    body.extend(0u32.to_le_bytes());
    // Type 2: ISA IRQ 0 (PIT) is wired to GSI 2.
    body.extend([2u8, 10, 0, 0]);
    body.extend(2u32.to_le_bytes());
    body.extend(0u16.to_le_bytes());
    for irq in 1..16u8 {
        if PCI_ISA_IRQ_MASK & (1 << irq) != 0 {
            body.extend([2u8, 10, 0, irq]);
            body.extend(u32::from(irq).to_le_bytes());
            body.extend(0x000du16.to_le_bytes()); // level, active high
        }
    }
    // Type 4: LINT1 of every processor is NMI.
    body.extend([4u8, 6, 0xff, 0, 0, 1]);
    sdt(b"APIC", 3, &body)
}

pub(super) fn mcfg(ecam: Range) -> Vec<u8> {
    let mut body = vec![0u8; 8];
    body.extend(ecam.base.to_le_bytes());
    body.extend(0u16.to_le_bytes()); // segment
    body.push(0); // start bus
    body.push(((ecam.size >> 20).saturating_sub(1)).min(255) as u8);
    body.extend([0u8; 4]);
    sdt(b"MCFG", 1, &body)
}

/// WAET: QEMU sets "ACPI PM timer good" (one read of the PM timer is reliable), true of
/// `devices::chipset::acpi_pm`'s timer too.
pub(super) fn waet() -> Vec<u8> {
    const ACPI_WAET_PM_TIMER_GOOD: u32 = 1 << 1;
    sdt(b"WAET", 1, &ACPI_WAET_PM_TIMER_GOOD.to_le_bytes())
}

pub(super) fn facs() -> Vec<u8> {
    let mut t = vec![0u8; 64];
    t[0..4].copy_from_slice(b"FACS");
    t[4..8].copy_from_slice(&64u32.to_le_bytes());
    t[32] = 2; // version
    t
}

pub(super) fn io_gas(width_bits: u8, access: AccessSize, port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        width_bits,
        0,
        access,
        u64::from(port),
    )
}

pub(super) fn fadt(cfg: &AcpiConfig, dsdt_addr: u64, facs_addr: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::SlpButton)
        .flag(Flags::RtcS4)
        .flag(Flags::ResetRegSup)
        .flag(Flags::TmrValExt);
    let pm = cfg.pm_base;
    f.dsdt = (dsdt_addr as u32).into();
    // FACS through the 32-bit FIRMWARE_CTRL only, as QEMU's FADT: with X_FIRMWARE_CTRL also
    // set Linux reports the FACS twice.
    f.firmware_ctrl = (facs_addr as u32).into();
    f.sci_int = (cfg.sci_irq as u16).into();
    f.pm1a_evt_blk = u32::from(pm).into();
    f.pm1a_cnt_blk = u32::from(pm + 4).into();
    f.pm_tmr_blk = u32::from(pm + 8).into();
    f.gpe0_blk = u32::from(cfg.gpe0.0).into();
    f.pm1_evt_len = 4;
    f.pm1_cnt_len = 2;
    f.pm_tmr_len = 4;
    f.gpe0_blk_len = cfg.gpe0.1;
    f.x_pm1a_evt_blk = io_gas(32, AccessSize::WordAccess, pm);
    f.x_pm1a_cnt_blk = io_gas(16, AccessSize::WordAccess, pm + 4);
    f.x_pm_tmr_blk = io_gas(32, AccessSize::DwordAccess, pm + 8);
    f.x_gpe0_blk = io_gas(cfg.gpe0.1 * 8, AccessSize::ByteAccess, cfg.gpe0.0);
    f.reset_reg = io_gas(8, AccessSize::ByteAccess, 0xcf9);
    f.reset_value = 0x06;
    // 8042 present (IA-PC boot arch flag 2) so Linux probes the keyboard controller.
    f.iapc_boot_arch = 0x0002u16.into();
    f.century = 0x32;
    bytes_of(&f.finalize())
}
