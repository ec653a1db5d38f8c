//! QEMU-style command line: option spelling, argument syntax and error wording follow
//! qemu-system-x86_64 so that tools which build QEMU command lines can drive machina.
//!
//! This module holds the option types, the errors, the keyval helpers and the option loop
//! (`parse`, `apply`, `-readconfig`); the option families are parsed in the child modules
//! (`cpu`, `frontends`, `machine_opts`, `host_options`, `numa`, `size`; syntax and `--help`
//! in `syntax`).

mod cpu;
mod frontends;
mod host_options;
mod machine_opts;
mod numa;
pub mod readconfig;
mod size;
mod syntax;
#[cfg(test)]
mod tests;

pub use cpu::SmpSpec;
use cpu::*;
use frontends::*;
use machine_opts::*;
use syntax::*;
pub use syntax::{help_text, KEYVAL_OPTIONS};

use host_options::{
    parse_audiodev, parse_boot, parse_msg, parse_name, parse_overcommit, parse_rtc, parse_sandbox,
    parse_uuid,
};
pub use host_options::{
    BootOptions, MemLock, MsgOptions, NameOptions, RtcClock, RtcOptions, SandboxOptions,
};
pub use size::{parse_memory, parse_ram_size, MemoryOption};

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

/// Everything the command line asked for, before any machine is planned.
#[derive(Debug, Clone, PartialEq)]
pub struct CliOptions {
    /// `-machine TYPE[,k=v...]`: the type (None = catalog default) and its options in order.
    pub machine: Option<String>,
    pub machine_options: Vec<(String, String)>,
    /// Guest RAM in bytes.
    pub ram_size: u64,
    /// `-m` was given (otherwise a machine memory backend sets the size, as in QEMU).
    pub ram_size_given: bool,
    /// `-m slots=` and `maxmem=`.
    pub ram_slots: u64,
    pub max_ram_size: Option<u64>,
    /// The last `-m` and `-machine` arguments as given, to name them in planning errors.
    pub memory_arg: Option<String>,
    pub machine_arg: Option<String>,
    /// `-smp`.
    pub smp: SmpSpec,
    /// `-numa`, in order.
    pub numa: Vec<machine::NumaArg>,
    /// `-cpu`; None: machina's default, the same CPUID as `host`.
    pub cpu_model: Option<crate::cpuid::CpuModel>,
    /// `-cpu MODEL,+feat,-feat,feat=on|off`: each named feature on or off, in effect order.
    pub cpu_features: Vec<(String, bool)>,
    /// `-cpu ...,check=on|off` (default on): warn about features KVM cannot give;
    /// `enforce=on`: refuse to start instead.
    pub cpu_check: bool,
    pub cpu_enforce: bool,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub append: String,
    /// `-bios FILE` / `-machine firmware=FILE`: the ROM image mapped below 4 GiB.
    pub bios: Option<PathBuf>,
    /// `-L DIR`: where `-bios` names are looked up when not a readable path.
    pub data_dirs: Vec<PathBuf>,
    /// `-drive if=pflash`: the drive id of flash unit 0 and 1 (QEMU's pflash0/pflash1),
    /// with the option as given (for errors).
    pub pflash_drives: [Option<(String, String)>; 2],
    pub serial: Vec<SerialSpec>,
    pub nodefaults: bool,
    /// `-S`: build the machine but do not start the vCPUs.
    pub start_paused: bool,
    pub name: Option<String>,
    pub devices: Vec<String>,
    pub machine_definitions: Vec<PathBuf>,
    pub nographic: bool,
    /// `-vga none` (false) or `-vga std` (true); None keeps QEMU's default.
    pub vga: Option<bool>,
    /// `-nic none` / `-net none`: no default NIC.
    pub nic: Option<bool>,
    /// How many `-nic TYPE` options made a netdev and NIC (QEMU's `__org.qemu.nicN` ids).
    pub nic_count: usize,
    /// `-qmp SPEC` arguments, as given (OS strings: paths are bytes).
    pub qmp: Vec<OsString>,
    /// `-chardev` arguments, as given (resolved by the qmp crate and backends.rs).
    pub chardevs: Vec<OsString>,
    /// `-drive`, `-blockdev`, `-netdev`, `-object` arguments, as given, in order.
    pub backends: Vec<(BackendOption, OsString)>,
    pub monitors: Vec<String>,
    /// `-delay-machine-init` / `--preconfig`: QMP configures and builds the machine.
    pub delay_init: bool,
    /// `-qtest SPEC`: no vCPU runs; a test drives I/O and memory from outside.
    pub qtest: Option<String>,
    /// `-accel qtest` was given.
    pub accel_qtest: bool,
    /// `-pidfile PATH`: created and locked after daemonizing, removed at exit.
    pub pidfile: Option<PathBuf>,
    /// `-daemonize`: the invoking process exits once the monitors listen.
    pub daemonize: bool,
    /// `-name ...,debug-threads=on|off,process=NAME`.
    pub name_options: NameOptions,
    /// `-uuid`: the machine's UUID (16 bytes, as given).
    pub uuid: Option<[u8; 16]>,
    /// `-overcommit mem-lock=...`.
    pub mem_lock: MemLock,
    /// `-rtc` (machina honours base=utc, clock=host, driftfix=none).
    pub rtc: RtcOptions,
    /// `-boot` (machina boots the kernel directly; the options are kept, validated).
    pub boot: BootOptions,
    /// `-add-fd` arguments, as given.
    pub add_fds: Vec<String>,
    /// Ids of `-audiodev` / `-audio` backends (driver `none` only: machina has no sound).
    pub audiodevs: Vec<String>,
    /// `-sandbox`, parsed (machina installs no seccomp filter).
    pub sandbox: Option<SandboxOptions>,
    /// `-msg timestamp=on,guest-name=on`.
    pub msg: MsgOptions,
    /// `-d`, `-D`, `-trace` (applied by `logging::setup`).
    pub log: crate::logging::LogOptions,
    /// `-action`, `-watchdog-action`, `-no-reboot`, `-no-shutdown`, in order.
    pub actions: crate::actions::Actions,
    /// `-global DRIVER.PROPERTY=VALUE`.
    pub globals: Vec<crate::globals::Global>,
    pub action: Action,
}

/// What the invocation is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Run,
    Help,
    Version,
    MachineHelp,
    /// `-machine TYPE,help`: the options of TYPE.
    MachineOptions(String),
    DeviceHelp,
    DeviceProperties(String),
}

/// Which backend option an argument came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendOption {
    Drive,
    Blockdev,
    Netdev,
    Object,
}

/// A `-serial` backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialSpec {
    Stdio,
    Null,
    File(PathBuf),
    /// `-chardev file,...`: the file, opened at start as QEMU opens its chardevs.
    OpenFile(crate::console::FileHandle),
    /// `-chardev socket,fd=N,server=on`: a listening socket passed by the management layer.
    ListenFd(i32),
    /// `-chardev pty`: a pseudo-terminal, opened at start (input and output).
    Pty(crate::console::PtyHandle),
    /// `unix:PATH,server=on,wait=off`: listen on a socket, attach the first client.
    UnixServer {
        path: PathBuf,
        wait: bool,
    },
    /// `none`: no serial port at all.
    None,
}

/// QEMU's default RAM size.
pub const DEFAULT_RAM_SIZE: u64 = 128 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("{0}: invalid option")]
    InvalidOption(String),
    #[error("{0}: requires an argument")]
    MissingArgument(String),
    /// `-machine TEXT: MESSAGE`.
    #[error("-machine {0}: {1}")]
    Machine(String, String),
    /// `-vga TEXT: MESSAGE`.
    #[error("-vga {0}: {1}")]
    Vga(String, String),
    /// `-nic`/`-net` with what was given, and why it was refused.
    #[error("{0}: {1}")]
    Nic(String, String),
    /// `-m TEXT: MESSAGE` (QEMU's texts for `-m`).
    #[error("-m {0}: {1}")]
    Memory(String, String),
    #[error("-smp {0}: Parameter 'smp.cpus' expects integer")]
    BadCpus(String),
    #[error("-smp {0}: Invalid CPU topology: CPU topology parameters must be greater than zero")]
    ZeroCpus(String),
    #[error("-smp {0}: Parameter 'smp.{1}' is unexpected")]
    BadTopology(String, String),
    #[error("-smp {0}: Parameter 'smp.{1}' expects integer")]
    BadSmpValue(String, String),
    #[error(transparent)]
    Action(#[from] crate::actions::ActionError),
    #[error(transparent)]
    Global(#[from] crate::globals::GlobalError),
    #[error("-cpu option cannot be empty")]
    EmptyCpu,
    #[error("unable to find CPU model '{0}'")]
    UnknownCpuModel(String),
    #[error("can't apply global {0}.{1}: Property '{0}.{2}' not found")]
    CpuProperty(String, String, String),
    #[error("-serial {0}: '{0}' is not a valid char driver")]
    BadSerial(String),
    #[error("-{0} {1}: invalid value '{2}' for '{3}'")]
    BadOptionValue(String, String, String, String),
    #[error("-accel {0}: invalid accelerator {0} (machina supports kvm, and qtest for tests)")]
    BadAccel(String),
    #[error("-display {0}: machina has no display; only 'none' is supported")]
    BadDisplay(String),
    #[error("-machine: missing machine type before options in '{0}'")]
    MissingMachineType(String),
    /// `-OPTION VALUE: MESSAGE`, QEMU's usual shape.
    #[error("-{option} {value}: {message}")]
    Option {
        option: String,
        value: String,
        message: String,
    },
    /// A message QEMU prints without naming the option.
    #[error("{0}")]
    Plain(String),
}

fn option_err(option: &str, value: &str, message: impl Into<String>) -> CliError {
    CliError::Option {
        option: option.to_string(),
        value: value.to_string(),
        message: message.into(),
    }
}

/// `key=value` items of a keyval argument; a bare first item is `first_key=item`.
fn items(value: &str, first_key: Option<&str>) -> Vec<(String, String)> {
    split_keyval(value)
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => match first_key {
                Some(k) if i == 0 => (k.to_string(), item),
                _ => (item, "on".to_string()),
            },
        })
        .collect()
}

fn on_off(option: &str, value: &str, key: &str, v: &str) -> Result<bool, CliError> {
    machine::parse_bool(key, v).map_err(|e| option_err(option, value, e.to_string()))
}

impl Default for CliOptions {
    fn default() -> Self {
        Self {
            machine: None,
            machine_options: Vec::new(),
            ram_size: DEFAULT_RAM_SIZE,
            ram_size_given: false,
            ram_slots: 0,
            max_ram_size: None,
            memory_arg: None,
            machine_arg: None,
            smp: SmpSpec::default(),
            numa: Vec::new(),
            cpu_model: None,
            cpu_features: Vec::new(),
            cpu_check: true,
            cpu_enforce: false,
            kernel: None,
            initrd: None,
            append: String::new(),
            bios: None,
            data_dirs: Vec::new(),
            pflash_drives: [None, None],
            serial: Vec::new(),
            nodefaults: false,
            start_paused: false,
            name: None,
            devices: Vec::new(),
            machine_definitions: Vec::new(),
            nographic: false,
            vga: None,
            nic: None,
            nic_count: 0,
            qmp: Vec::new(),
            chardevs: Vec::new(),
            backends: Vec::new(),
            monitors: Vec::new(),
            delay_init: false,
            qtest: None,
            accel_qtest: false,
            pidfile: None,
            daemonize: false,
            name_options: NameOptions::default(),
            uuid: None,
            mem_lock: MemLock::Off,
            rtc: RtcOptions {
                base: "utc".into(),
                offset: 0,
                clock: RtcClock::Host,
            },
            boot: BootOptions::default(),
            add_fds: Vec::new(),
            audiodevs: Vec::new(),
            sandbox: None,
            msg: MsgOptions::default(),
            log: Default::default(),
            actions: Default::default(),
            globals: Vec::new(),
            action: Action::Run,
        }
    }
}

pub use machine::split_keyval;

/// `split_keyval` over an OS string: arguments are bytes (a path may be any bytes but NUL),
/// so they are split at ASCII commas without any UTF-8 decoding; `,,` is a literal comma.
pub fn split_keyval_os(arg: &OsStr) -> Vec<OsString> {
    let mut parts = qmp::split_opts_os(arg);
    parts.retain(|p| !p.is_empty());
    parts
}

/// `key=value` items of an OS-string keyval argument: keys are text (lossily decoded; no
/// key has non-ASCII characters), values stay bytes. A bare item has an empty value.
pub fn keyval_pairs_os(arg: &OsStr) -> Vec<(String, OsString)> {
    split_keyval_os(arg)
        .into_iter()
        .map(|item| {
            let bytes = item.as_bytes();
            match bytes.iter().position(|&b| b == b'=') {
                Some(eq) => (
                    String::from_utf8_lossy(&bytes[..eq]).into_owned(),
                    OsString::from_vec(bytes[eq + 1..].to_vec()),
                ),
                None => (String::from_utf8_lossy(bytes).into_owned(), OsString::new()),
            }
        })
        .collect()
}

/// An argument as text, for options whose values are names or numbers, and for messages.
pub fn lossy(arg: &OsStr) -> String {
    arg.to_string_lossy().into_owned()
}

/// Parse argv (without the program name). Arguments are OS strings, as QEMU takes them:
/// paths keep their bytes, whatever their encoding.
pub fn parse<I, S>(args: I) -> Result<CliOptions, CliError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut opts = CliOptions::default();
    let mut args = args.into_iter().map(Into::into);
    while let Some(raw) = args.next() {
        let arg = lossy(&raw);
        // QEMU accepts both -opt and --opt.
        let name = match arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => return Err(CliError::InvalidOption(arg)),
        };
        let os_value = if takes_argument(&name) {
            args.next()
                .ok_or_else(|| CliError::MissingArgument(format!("-{name}")))?
        } else {
            OsString::new()
        };
        apply(&mut opts, &name, &arg, os_value)?;
    }
    Ok(opts)
}

/// `-readconfig FILE`: each section is the option of its group, parsed as if given here.
fn read_config(opts: &mut CliOptions, path: &OsStr) -> Result<(), CliError> {
    let sections = readconfig::read(path).map_err(|e| CliError::Plain(e.to_string()))?;
    for section in &sections {
        let (name, value) =
            readconfig::to_option(section).map_err(|e| CliError::Plain(e.to_string()))?;
        let option = format!("-{name} {}", lossy(&value));
        apply(opts, name, name, value).map_err(|e| {
            let text = e.to_string();
            let message = text
                .strip_prefix(&option)
                .and_then(|t| t.strip_prefix(": "))
                .unwrap_or(&text);
            CliError::Plain(match &section.location {
                Some(l) => format!("{l}: {message}"),
                None => message.to_string(),
            })
        })?;
        readconfig::record_origin(option, section.location.clone());
    }
    Ok(())
}

/// One option and its argument (empty for options without one).
fn apply(opts: &mut CliOptions, name: &str, arg: &str, os_value: OsString) -> Result<(), CliError> {
    let name = name.to_string();
    let arg = arg.to_string();
    {
        // Names, numbers and keys are text; only path-carrying options use `os_value`.
        let value = lossy(&os_value);
        match name.as_str() {
            "h" | "help" => opts.action = Action::Help,
            "version" => opts.action = Action::Version,
            "machine" | "M" => parse_machine(opts, &value)?,
            "m" => {
                let m = parse_memory(&value)?;
                (opts.ram_size, opts.ram_slots, opts.max_ram_size) = (m.size, m.slots, m.maxmem);
                opts.ram_size_given = true;
                opts.memory_arg = Some(value.clone());
            }
            "smp" => opts.smp = parse_smp(&value)?,
            "numa" => opts.numa.push(numa::parse_numa(&value)?),
            "cpu" => {
                let (model, features, [check, enforce]) = parse_cpu(&value)?;
                opts.cpu_model = Some(model);
                opts.cpu_features = features;
                (opts.cpu_check, opts.cpu_enforce) = (check, enforce);
            }
            "kernel" => opts.kernel = Some(PathBuf::from(os_value)),
            "initrd" => opts.initrd = Some(PathBuf::from(os_value)),
            "append" => opts.append = value,
            "serial" => opts.serial.push(parse_serial(&os_value)?),
            "nographic" => opts.nographic = true,
            "display" => {
                if split_keyval(&value).first().map(String::as_str) != Some("none") {
                    return Err(CliError::BadDisplay(value));
                }
            }
            "vga" => opts.vga = Some(parse_vga(&value)?),
            "nic" | "net" => {
                let index = opts.nic_count;
                if let Some((netdev, device)) = parse_nic(&name, &os_value, index)? {
                    opts.nic_count += 1;
                    opts.backends.push((BackendOption::Netdev, netdev));
                    opts.devices.push(device);
                }
                opts.nic = Some(false);
            }
            "no-reboot" => {
                opts.actions.reboot = crate::actions::RebootAction::Shutdown;
            }
            "no-shutdown" => {
                opts.actions.shutdown = crate::actions::ShutdownAction::Pause;
            }
            "action" => opts.actions.apply_cli(&value)?,
            "watchdog-action" => opts.actions.apply_watchdog_cli(&value)?,
            "global" => {
                let g = crate::globals::Global::parse(&value)?;
                g.check_honoured()?;
                opts.globals.push(g);
            }
            // QEMU's older spelling of `-machine hpet=off` (libvirt sends it for
            // `<timer name='hpet' present='no'/>`).
            "no-hpet" => opts.machine_options.push(("hpet".into(), "off".into())),
            "S" => opts.start_paused = true,
            "name" => parse_name(opts, &value)?,
            "uuid" => opts.uuid = Some(parse_uuid(&value)?),
            "overcommit" => parse_overcommit(opts, &value)?,
            "rtc" => parse_rtc(opts, &value)?,
            "boot" => parse_boot(opts, &value)?,
            "add-fd" => opts.add_fds.push(value),
            "audiodev" | "audio" => parse_audiodev(opts, &name, &value)?,
            "sandbox" => parse_sandbox(opts, &value)?,
            "msg" => parse_msg(opts, &value)?,
            // Checked by logging::setup once every option is read, as QEMU does.
            "d" => opts.log.items = Some(value),
            "D" => opts.log.file = Some(PathBuf::from(os_value)),
            "trace" => opts.log.trace.push(value),
            "accel" | "enable-kvm" => {
                let accel = split_keyval(&value).into_iter().next().unwrap_or_default();
                match accel.as_str() {
                    "qtest" if name == "accel" => opts.accel_qtest = true,
                    "kvm" => {}
                    _ if name == "accel" => return Err(CliError::BadAccel(value)),
                    _ => {}
                }
            }
            "nodefaults" => opts.nodefaults = true,
            "no-fd-bootchk" => opts.boot.no_fd_bootchk = true,
            "no-user-config" | "nodefconfig" => {}
            "device" => {
                if value == "help" || value == "?" {
                    opts.action = Action::DeviceHelp;
                } else if let Some(ty) = value
                    .strip_suffix(",help")
                    .or_else(|| value.strip_suffix(",?"))
                {
                    opts.action = Action::DeviceProperties(ty.to_string());
                } else {
                    opts.devices.push(value);
                }
            }
            "machine-definition" => opts.machine_definitions.push(PathBuf::from(os_value)),
            "qmp" | "qmp-pretty" => opts.qmp.push(os_value),
            "chardev" => opts.chardevs.push(os_value),
            "drive" => {
                let spec = pflash_drive(opts, os_value)?;
                opts.backends.push((BackendOption::Drive, spec));
            }
            "bios" => opts.bios = Some(PathBuf::from(os_value)),
            "L" => opts.data_dirs.push(PathBuf::from(os_value)),
            "blockdev" => opts.backends.push((BackendOption::Blockdev, os_value)),
            "netdev" => opts.backends.push((BackendOption::Netdev, os_value)),
            "object" => opts.backends.push((BackendOption::Object, os_value)),
            "mon" => opts.monitors.push(value),
            // `-monitor none` turns QEMU's default human monitor off; machina has none to
            // turn off, and offers QMP only (-qmp, -mon mode=control).
            "monitor" if value == "none" => {}
            "monitor" => {
                return Err(option_err(
                    "monitor",
                    &value,
                    "machina has no human monitor (use -qmp or -mon mode=control)",
                ))
            }
            "delay-machine-init" | "preconfig" => opts.delay_init = true,
            "qtest" => opts.qtest = Some(value),
            "qtest-log" => {}
            "pidfile" => opts.pidfile = Some(PathBuf::from(os_value)),
            "daemonize" => opts.daemonize = true,
            "readconfig" => read_config(opts, &os_value)?,
            _ => return Err(CliError::InvalidOption(arg)),
        }
    }
    Ok(())
}
