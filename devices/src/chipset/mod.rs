//! The chipset functions QEMU creates implicitly on `pc` (i440FX, PIIX3, PIIX4 PM, IDE) and
//! `q35` (MCH, ICH9 LPC, AHCI, SMBus), with their registers, reset values and the I/O blocks
//! they decode (ACPI PM, APM, SMBus, RCRB, ECAM via the host).

pub mod acpi_pm;
pub mod ahci;
pub mod apm;
pub mod byte_regs;
pub mod cpu_hotplug;
pub mod i440fx;
pub mod ich9_lpc;
pub mod ich9_smbus;
pub mod io_window;
pub mod mch;
pub mod memory_view;
pub mod piix3;
pub mod piix4_pm;
pub mod smbus;
pub mod tco;

use machine::Plan;

/// Whether an ISA device of the plan decodes I/O `port` (QEMU's memory_region_present).
pub(crate) fn isa_has_port(plan: &Plan, port: u64) -> bool {
    plan.isa
        .iter()
        .flat_map(|d| d.io.iter())
        .any(|r| r.base <= port && port < r.end())
}

/// QEMU enables SMM (and its SMRAM registers) unless `smm=off`.
pub(crate) fn smm_enabled(plan: &Plan) -> bool {
    plan.options.bool("smm", true).unwrap_or(true)
}
