//! The machina VMM: KVM glue, direct boot, ACPI, the machine builder and the run loop.
//! The `machina` binary (src/main.rs) is a thin command-line front end over this library.

pub mod acpi;
pub mod boot;
pub mod builder;
pub mod cli;
pub mod console;
pub mod cpuid;
pub mod interrupts;
pub mod kvm_vm;
pub mod memory;
pub mod runner;
pub mod vcpu;

/// Translate the command line into a plan request for the machine crate.
pub fn plan_request(
    opts: &cli::CliOptions,
    serial: &cli::SerialSpec,
) -> Result<machine::PlanRequest, machine::PlanError> {
    let devices = opts
        .devices
        .iter()
        .map(|d| machine::DeviceRequest::parse(d))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(machine::PlanRequest {
        machine: opts.machine.clone(),
        options: opts.machine_options.clone(),
        nodefaults: opts.nodefaults,
        ram_size: opts.ram_size,
        cpus: opts.cpus,
        devices,
        serial: if opts.serial.is_empty() {
            None
        } else {
            Some(!matches!(serial, cli::SerialSpec::None))
        },
        ..Default::default()
    })
}
