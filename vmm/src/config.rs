//! The configuration a machine is planned and booted from. The command line fills it; under
//! `-delay-machine-init` QMP edits it until the machine is built.

use crate::backends::{self, Backend, BackendError};
use crate::cli::{BackendOption, CliOptions, SerialSpec};
use machine::{DeviceRequest, PlanError, PlanRequest};
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct MachineConfig {
    pub machine: Option<String>,
    pub options: Vec<(String, String)>,
    pub nodefaults: bool,
    pub ram_size: u64,
    pub cpus: u32,
    pub devices: Vec<DeviceRequest>,
    /// Console backend of COM1; None means QEMU's default (a port unless -nodefaults).
    pub serial: Option<SerialSpec>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub append: String,
    pub name: Option<String>,
    /// Drives, netdevs, chardevs and objects the devices refer to.
    pub backends: Vec<Backend>,
    /// `-daemonize`: there is no terminal, so the default console is null (QEMU's default
    /// `vc` with no display).
    pub daemonized: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("-device {spec}: {source}")]
    Device {
        spec: String,
        #[source]
        source: PlanError,
    },
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl MachineConfig {
    pub fn from_cli(opts: &CliOptions) -> Result<Self, ConfigError> {
        let devices = opts
            .devices
            .iter()
            .map(|d| {
                DeviceRequest::parse(d).map_err(|source| ConfigError::Device {
                    spec: d.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut list = Vec::new();
        for (option, spec) in &opts.backends {
            let backend = match option {
                BackendOption::Drive => backends::parse_drive(spec)?,
                BackendOption::Blockdev => backends::parse_blockdev(spec, &list)?,
                BackendOption::Netdev => backends::parse_netdev(spec)?,
                BackendOption::Object => backends::parse_object(spec)?,
            };
            let spec = crate::cli::lossy(spec);
            let context = match option {
                BackendOption::Drive => format!("-drive {spec}"),
                BackendOption::Blockdev => format!("-blockdev {spec}"),
                BackendOption::Netdev => format!("-netdev {spec}"),
                BackendOption::Object => format!("-object {spec}"),
            };
            backends::add(&mut list, backend, &context)?;
        }
        // Chardevs serve QMP monitors too; only those that parse as device backends count.
        for spec in &opts.chardevs {
            if let Ok(backend) = backends::parse_chardev(spec) {
                let context = format!("-chardev {}", crate::cli::lossy(spec));
                backends::add(&mut list, backend, &context)?;
            }
        }
        backends::check_references(&devices, &list)?;
        // Devices take their drives now (images opened and locked), as QEMU's do at -device.
        let contexts: Vec<String> = opts
            .devices
            .iter()
            .map(|d| format!("-device {d}"))
            .collect();
        backends::attach_drives(&devices, &contexts, &mut list)?;
        Ok(Self {
            machine: opts.machine.clone(),
            options: opts.machine_options.clone(),
            nodefaults: opts.nodefaults,
            ram_size: opts.ram_size,
            cpus: opts.cpus,
            devices,
            serial: opts.serial.first().cloned(),
            kernel: opts.kernel.clone(),
            initrd: opts.initrd.clone(),
            append: opts.append.clone(),
            name: opts.name.clone(),
            backends: list,
            daemonized: opts.daemonize,
        })
    }

    /// The console COM1 is attached to: machina has no display, so the default console is
    /// the terminal; as in QEMU, -nodefaults drops the default port unless -serial names one.
    pub fn console_spec(&self) -> SerialSpec {
        match &self.serial {
            Some(spec) => spec.clone(),
            None if self.nodefaults => SerialSpec::None,
            None if self.daemonized => SerialSpec::Null,
            None => SerialSpec::Stdio,
        }
    }

    /// The request the machine crate plans from.
    pub fn plan_request(&self) -> PlanRequest {
        PlanRequest {
            machine: self.machine.clone(),
            options: self.options.clone(),
            nodefaults: self.nodefaults,
            ram_size: self.ram_size,
            cpus: self.cpus,
            devices: self.devices.clone(),
            serial: self.serial.as_ref().map(|s| !matches!(s, SerialSpec::None)),
            ..Default::default()
        }
    }
}
