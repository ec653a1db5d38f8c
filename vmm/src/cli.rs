//! QEMU-style command line: option spelling, argument syntax and error wording follow
//! qemu-system-x86_64 so that tools which build QEMU command lines can drive machina.

mod host_options;
mod numa;
pub mod readconfig;
mod size;

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

/// `-vga TYPE`: machina's only display is the default standard VGA.
fn parse_vga(value: &str) -> Result<bool, CliError> {
    match value {
        "none" => Ok(false),
        "std" => Ok(true),
        "cirrus" | "vmware" | "qxl" | "xenfb" | "tcx" | "cg3" | "virtio" => Err(CliError::Vga(
            value.to_string(),
            "machina has only 'std' and 'none'".into(),
        )),
        other => Err(CliError::Vga(
            value.to_string(),
            format!("unknown vga type: {other}"),
        )),
    }
}

/// `-nic none` / `-net none` (no default NIC: any `-netdev` also clears it, see config.rs);
/// `-nic TYPE,...` (TYPE a netdev type machina has): that netdev (its `id=`, or QEMU's
/// `__org.qemu.nicN`) and a NIC on it, `model=` (default: the catalog's `nic-default` type, the NIC
/// machina moves frames for) with `mac=`. Returns the netdev's keyval text and the device's.
/// machina has no `-net` hubs (use `-netdev hubport`).
fn parse_nic(
    name: &str,
    value: &OsStr,
    index: usize,
) -> Result<Option<(OsString, String)>, CliError> {
    let text = lossy(value);
    let pairs = keyval_pairs_os(value);
    let kind = pairs
        .first()
        .map(|(k, v)| if k == "type" { lossy(v) } else { k.clone() })
        .unwrap_or_default();
    let refuse = |message: String| Err(CliError::Nic(format!("-{name} {text}"), message));
    match kind.as_str() {
        "none" => return Ok(None),
        "tap" | "socket" | "stream" | "dgram" | "hubport" if name == "nic" => {}
        "nic" | "user" | "tap" | "bridge" | "socket" | "stream" | "dgram" | "vde"
        | "vhost-user" | "vhost-vdpa" | "l2tpv3" | "hubport" => {
            return refuse(format!(
                "network type '{kind}' is not supported by machina here (use -netdev with -device, or -nic tap|socket|stream|dgram|hubport)"
            ))
        }
        other => return refuse(format!("Parameter 'type' does not accept value '{other}'")),
    }
    let get = |key: &str| {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| lossy(v))
    };
    let id = get("id").unwrap_or_else(|| format!("__org.qemu.nic{index}"));
    let escape = |v: &OsStr| lossy(v).replace(',', ",,");
    let mut netdev = format!("{kind},id={}", id.replace(',', ",,"));
    for (k, v) in pairs.iter().skip(1) {
        if matches!(k.as_str(), "id" | "model" | "mac" | "type") {
            continue;
        }
        netdev.push_str(&format!(",{k}={}", escape(v)));
    }
    let model = match get("model") {
        Some(model) => model,
        None => machine::Catalog::builtin()
            .device_types()
            .iter()
            .find(|t| t.nic_default)
            .map(|t| t.name.clone())
            .ok_or_else(|| {
                CliError::Nic(
                    format!("-{name} {text}"),
                    "the device catalog names no default NIC model (nic-default)".into(),
                )
            })?,
    };
    let mut device = format!(
        "{},netdev={}",
        model.replace(',', ",,"),
        id.replace(',', ",,")
    );
    if let Some(mac) = get("mac") {
        device.push_str(&format!(",mac={}", mac.replace(',', ",,")));
    }
    Ok(Some((OsString::from(netdev), device)))
}

/// `-smp` as given: the CPU count (computed as QEMU does when omitted), `maxcpus=` and the
/// topology keys, which the planner resolves with the machine type's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmpSpec {
    pub cpus: u32,
    pub max_cpus: Option<u32>,
    pub keys: machine::SmpKeys,
}

impl Default for SmpSpec {
    fn default() -> Self {
        Self {
            cpus: 1,
            max_cpus: None,
            keys: machine::SmpKeys::default(),
        }
    }
}

/// Parse `-smp [cpus=]N[,maxcpus=N][,sockets=S][,dies=D][,clusters=C][,cores=C][,threads=T]`.
fn parse_smp(text: &str) -> Result<SmpSpec, CliError> {
    let mut cpus: Option<u32> = None;
    let mut spec = SmpSpec::default();
    for (i, item) in split_keyval(text).iter().enumerate() {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, v),
            None if i == 0 => ("cpus", item.as_str()),
            None => return Err(CliError::BadCpus(text.to_string())),
        };
        let slot = match key {
            "cpus" => &mut cpus,
            "maxcpus" => &mut spec.max_cpus,
            "sockets" => &mut spec.keys.sockets,
            "dies" => &mut spec.keys.dies,
            "clusters" => &mut spec.keys.clusters,
            "cores" => &mut spec.keys.cores,
            "threads" => &mut spec.keys.threads,
            other => return Err(CliError::BadTopology(text.to_string(), other.to_string())),
        };
        let n: u32 = value
            .parse()
            .map_err(|_| CliError::BadSmpValue(text.to_string(), key.to_string()))?;
        if n == 0 {
            return Err(CliError::ZeroCpus(text.to_string()));
        }
        *slot = Some(n);
    }
    // Omitted cpus: maxcpus, else the product of the given keys (QEMU reaches the same
    // topology from either).
    let k = spec.keys;
    spec.cpus = cpus.or(spec.max_cpus).unwrap_or_else(|| {
        [k.sockets, k.dies, k.clusters, k.cores, k.threads]
            .iter()
            .map(|v| v.unwrap_or(1))
            .fold(1u32, u32::saturating_mul)
    });
    Ok(spec)
}

/// Parse `-cpu MODEL[,+feat][,-feat][,feat=on|off]...`: machina offers `host` and `max`
/// (both KVM's supported CPUID) with QEMU's feature names. As in QEMU, `-feat` beats `+feat`
/// and both beat `feat=`; other properties are refused with QEMU's text.
/// A CPU model request: the model, its feature requests, and `check`/`enforce`.
type CpuRequest = (crate::cpuid::CpuModel, Vec<(String, bool)>, [bool; 2]);

fn parse_cpu(text: &str) -> Result<CpuRequest, CliError> {
    let items = split_keyval(text);
    let name = items.first().map(String::as_str).unwrap_or("");
    if name.is_empty() {
        return Err(CliError::EmptyCpu);
    }
    let model = crate::cpuid::CpuModel::from_name(name)
        .ok_or_else(|| CliError::UnknownCpuModel(name.to_string()))?;
    let ty = model.type_name();
    let (mut plus, mut minus, mut props) = (Vec::new(), Vec::new(), Vec::<(String, bool)>::new());
    let mut checks = [true, false];
    let mut ambiguous = false;
    let mut levels: Vec<(String, u32)> = Vec::new();
    for item in &items[1..] {
        let known = |f: &str| crate::cpuid::feature_bit(f).is_some();
        if let Some(f) = item.strip_prefix('+').or_else(|| item.strip_prefix('-')) {
            let feature = crate::cpuid::canonical_feature(f);
            if !known(&feature) {
                return Err(CliError::Plain(format!(
                    "Property '{ty}.{feature}' not found"
                )));
            }
            if item.starts_with('+') {
                plus.push(feature);
            } else {
                minus.push(feature);
            }
            continue;
        }
        let (key, value) = item.split_once('=').unwrap_or((item.as_str(), "on"));
        // A global apic-id is overridden by the board, which numbers every CPU from the
        // topology (QEMU's pc boards set it after the globals): checked, not kept.
        if key == "apic-id" {
            value.parse::<u32>().map_err(|_| {
                CliError::Plain(format!(
                    "can't apply global {ty}.apic-id={value}: Parameter 'apic-id' expects uint64"
                ))
            })?;
            continue;
        }
        if matches!(
            key,
            "level" | "xlevel" | "xlevel2" | "min-level" | "min-xlevel" | "min-xlevel2"
        ) && matches!(model, crate::cpuid::CpuModel::Named(_))
        {
            let v = machine::parse_u64_auto(value)
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| {
                    CliError::Plain(format!(
                        "can't apply global {ty}.{key}={value}: Parameter '{key}' expects uint64"
                    ))
                })?;
            levels.push((key.to_string(), v));
            continue;
        }
        if key == "check" || key == "enforce" {
            let on = machine::qapi_bool_parse(value).ok_or_else(|| {
                CliError::Plain(format!(
                    "can't apply global {ty}.{key}={value}: Parameter '{key}' expects 'on' or 'off'"
                ))
            })?;
            checks[usize::from(key == "enforce")] = on;
            continue;
        }
        let feature = crate::cpuid::canonical_feature(key);
        if !known(&feature) {
            return Err(CliError::CpuProperty(
                ty.to_string(),
                format!("{key}={value}"),
                key.to_string(),
            ));
        }
        let on = machine::qapi_bool_parse(value).ok_or_else(|| {
            CliError::Plain(format!(
                "can't apply global {ty}.{key}={value}: Parameter '{key}' expects 'on' or 'off'"
            ))
        })?;
        // QEMU's x86_cpu_parse_featurestr: a +feat/-feat given before wins, with a warning.
        for (list, sign) in [(&plus, '+'), (&minus, '-')] {
            if list.contains(&feature) {
                ambiguous = true;
                crate::logging::report_error(&format!(
                    "warning: Ambiguous CPU model string. Don't mix both \"{sign}{feature}\" and \"{feature}={value}\""
                ));
            }
        }
        props.retain(|(f, _)| *f != feature);
        props.push((feature, on));
    }
    if ambiguous {
        crate::logging::report_error(
            "warning: Compatibility of ambiguous CPU model strings won't be kept on future QEMU \
             versions",
        );
    }
    let mut features = props;
    features.extend(plus.into_iter().map(|f| (f, true)));
    features.extend(minus.into_iter().map(|f| (f, false)));
    let model = match model {
        crate::cpuid::CpuModel::Named(def) => {
            crate::cpuid::CpuModel::Named(crate::cpu_models::with_levels(def, &levels))
        }
        other => other,
    };
    Ok((model, features, checks))
}

fn parse_serial(arg: &OsStr) -> Result<SerialSpec, CliError> {
    let text = lossy(arg);
    let bad = || CliError::BadSerial(text.clone());
    match text.as_str() {
        "stdio" | "mon:stdio" => return Ok(SerialSpec::Stdio),
        "null" => return Ok(SerialSpec::Null),
        "none" => return Ok(SerialSpec::None),
        _ => {}
    }
    let bytes = arg.as_bytes();
    if let Some(path) = bytes.strip_prefix(b"file:") {
        if path.is_empty() {
            return Err(bad());
        }
        return Ok(SerialSpec::File(PathBuf::from(OsStr::from_bytes(path))));
    }
    if let Some(rest) = bytes.strip_prefix(b"unix:") {
        let items = split_keyval_os(OsStr::from_bytes(rest));
        let path = items.first().filter(|p| !p.is_empty()).ok_or_else(bad)?;
        let mut server = false;
        let mut wait = true;
        for item in items[1..].iter().map(|i| lossy(i)) {
            match item.split_once('=').unwrap_or((item.as_str(), "on")) {
                ("server", v) => server = machine::qapi_bool_parse(v).ok_or_else(bad)?,
                ("wait", v) => wait = machine::qapi_bool_parse(v).ok_or_else(bad)?,
                _ => return Err(bad()),
            }
        }
        if !server {
            return Err(bad());
        }
        return Ok(SerialSpec::UnixServer {
            path: PathBuf::from(path),
            wait,
        });
    }
    Err(bad())
}

/// The options that take `key=value` lists, with the keys the parser acts on: what QMP's
/// `query-command-line-options` reports (`-machine` adds the machine type's options).
pub const KEYVAL_OPTIONS: &[(&str, &[&str])] = &[
    ("machine", &["type", "accel"]),
    (
        "smp",
        &[
            "cpus", "maxcpus", "sockets", "dies", "clusters", "cores", "threads",
        ],
    ),
    ("name", &["guest"]),
    ("trace", &["enable", "events", "file"]),
];

/// Options that take an argument, with their canonical spelling.
fn takes_argument(name: &str) -> bool {
    matches!(
        name,
        "machine"
            | "M"
            | "m"
            | "smp"
            | "numa"
            | "cpu"
            | "kernel"
            | "bios"
            | "L"
            | "initrd"
            | "append"
            | "serial"
            | "display"
            | "name"
            | "accel"
            | "device"
            | "machine-definition"
            | "qmp"
            | "drive"
            | "blockdev"
            | "netdev"
            | "object"
            | "qtest"
            | "qtest-log"
            | "qmp-pretty"
            | "chardev"
            | "mon"
            | "monitor"
            | "vga"
            | "nic"
            | "net"
            | "pidfile"
            | "uuid"
            | "overcommit"
            | "rtc"
            | "boot"
            | "add-fd"
            | "audiodev"
            | "audio"
            | "sandbox"
            | "msg"
            | "d"
            | "D"
            | "trace"
            | "action"
            | "watchdog-action"
            | "global"
            | "readconfig"
    )
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

/// `-drive if=pflash,...`: flash unit `unit=`/`index=` (or the first free one) of the board,
/// as QEMU maps legacy flash drives to the machine's pflash0/pflash1. The drive becomes a
/// plain `if=none` drive with QEMU's default id (`pflash0`, `pflash1`) unless it has one;
/// other drives pass through unchanged.
fn pflash_drive(opts: &mut CliOptions, spec: OsString) -> Result<OsString, CliError> {
    let items = split_keyval_os(&spec);
    if !keyval_pairs_os(&spec)
        .iter()
        .any(|(k, v)| k == "if" && v == "pflash")
    {
        return Ok(spec);
    }
    let text = lossy(&spec);
    let number = |key: &str, v: &OsStr| -> Result<u32, CliError> {
        lossy(v).parse::<u32>().map_err(|_| {
            option_err(
                "drive",
                &text,
                format!("Parameter '{key}' expects a number"),
            )
        })
    };
    let (mut bus, mut unit, mut index, mut id) = (None, None, None, None);
    let mut kept: Vec<OsString> = Vec::new();
    for (item, (k, v)) in items.iter().zip(keyval_pairs_os(&spec)) {
        match k.as_str() {
            "if" => {}
            "bus" => bus = Some(number("bus", &v)?),
            "unit" => unit = Some(number("unit", &v)?),
            "index" => index = Some(number("index", &v)?),
            "id" => {
                id = Some(lossy(&v));
                kept.push(item.clone());
            }
            _ => kept.push(item.clone()),
        }
    }
    if index.is_some() && (bus.is_some() || unit.is_some()) {
        return Err(option_err(
            "drive",
            &text,
            "index cannot be used with bus and unit",
        ));
    }
    // Flash has one bus of unlimited units; the PC board wires two.
    let bus = bus.unwrap_or(0);
    let unit = match index.or(unit) {
        Some(u) => u,
        None => opts
            .pflash_drives
            .iter()
            .position(Option::is_none)
            .map_or(opts.pflash_drives.len() as u32, |u| u as u32),
    };
    let slot = opts
        .pflash_drives
        .get_mut(unit as usize)
        .filter(|_| bus == 0);
    let Some(slot) = slot else {
        return Err(option_err(
            "drive",
            &text,
            format!("machine type does not support if=pflash,bus={bus},unit={unit}"),
        ));
    };
    if slot.is_some() {
        return Err(option_err(
            "drive",
            &text,
            format!(
                "drive with bus=0, unit={unit} (index={}) exists",
                index.map_or(-1, i64::from)
            ),
        ));
    }
    let id = id.unwrap_or_else(|| {
        let id = format!("pflash{unit}");
        kept.push(OsString::from(format!("id={id}")));
        id
    });
    *slot = Some((id, format!("-drive {text}")));
    kept.push(OsString::from("if=none"));
    // Back to one keyval argument: literal commas are doubled again.
    let mut out = Vec::new();
    for (i, item) in kept.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        for &b in item.as_bytes() {
            out.push(b);
            if b == b',' {
                out.push(b',');
            }
        }
    }
    Ok(OsString::from_vec(out))
}

fn parse_machine(opts: &mut CliOptions, value: &str) -> Result<(), CliError> {
    let mut wants_help = false;
    let mut smp_items: Vec<String> = Vec::new();
    opts.machine_arg = Some(value.to_string());
    for (i, item) in split_keyval(value).into_iter().enumerate() {
        match item.split_once('=') {
            Some(("type", ty)) => opts.machine = Some(ty.to_string()),
            // QEMU's -bios sets this property; both name the ROM image.
            Some(("firmware", f)) => {
                opts.bios = Some(PathBuf::from(f));
                opts.machine_options
                    .push(("firmware".into(), f.to_string()));
            }
            // QEMU's `smp` compound property: the `-smp` keys, e.g. `smp.cpus=8`.
            Some((k, v)) if k.starts_with("smp.") => {
                smp_items.push(format!("{}={}", &k[4..], v.replace(',', ",,")))
            }
            Some((k, v)) => {
                if k == "accel" && !v.split(':').any(|a| a == "kvm" || a == "qtest") {
                    return Err(CliError::Machine(
                        value.to_string(),
                        format!(
                            "invalid accelerator {v} (machina supports kvm, and qtest for tests)"
                        ),
                    ));
                }
                opts.machine_options.push((k.to_string(), v.to_string()))
            }
            None if item == "help" || item == "?" => wants_help = true,
            None if i == 0 => opts.machine = Some(item),
            // -machine is keyval in QEMU 7.2: every option after the type needs a value.
            None => {
                return Err(CliError::Machine(
                    value.to_string(),
                    format!("Expected '=' after parameter '{item}'"),
                ))
            }
        }
    }
    if !smp_items.is_empty() {
        // QEMU names no option in these texts.
        opts.smp = parse_smp(&smp_items.join(",")).map_err(|e| {
            CliError::Plain(match e {
                CliError::BadCpus(_) => "Parameter 'smp.cpus' expects integer".into(),
                CliError::BadSmpValue(_, k) => format!("Parameter 'smp.{k}' expects integer"),
                CliError::BadTopology(_, k) => format!("Parameter 'smp.{k}' is unexpected"),
                CliError::ZeroCpus(_) => "Invalid CPU topology: CPU topology parameters must be \
                                          greater than zero"
                    .into(),
                other => other.to_string(),
            })
        })?;
    }
    if wants_help {
        // `-machine help` lists machine types, `-machine TYPE,help` the type's options.
        opts.action = match &opts.machine {
            Some(ty) => Action::MachineOptions(ty.clone()),
            None => Action::MachineHelp,
        };
    }
    // `accel=` is not a machine property of its own; it was validated above.
    opts.machine_options.retain(|(k, _)| k != "accel");
    Ok(())
}

/// Text of `--help`.
pub fn help_text() -> String {
    format!(
        "machina {} - a KVM virtual machine monitor for QEMU's q35 and pc machine types\n\
usage: machina [options]\n\
\n\
-machine TYPE[,prop=value...]  select the machine type (pc, q35, pc-q35-X.Y, none); -machine help lists them\n\
-M TYPE[,...]                  same as -machine\n\
-machine-definition FILE       load extra machine/device type definitions (JSON, see docs/PLAN.md)\n\
-m [size=]SIZE[,slots=N,maxmem=SIZE]  guest RAM (512, 512M, 2G; default 128M)\n\
-smp N[,maxcpus=M,sockets=S,dies=D,cores=C,threads=T]  vCPUs and their topology (QEMU's rules)\n\
-numa node[,nodeid=N][,cpus=A-B][,memdev=ID][,initiator=N] | cpu,node-id=N[,socket-id=S,...] | dist,src=A,dst=B,val=D\n\
       | hmat-lb,initiator=N,target=N,hierarchy=H,data-type=T,latency=NS|bandwidth=SIZE | hmat-cache,node-id=N,...\n\
                               NUMA nodes, their CPUs and RAM, distances, HMAT with -machine hmat=on (ACPI SRAT/SLIT/HMAT)\n\
-cpu host|max|MODEL[,+feat,-feat,feat=on|off,enforce=on]  the guest CPU: KVM's supported CPUID (host,\n\
                               max, the default) or a QEMU model (qemu64, Haswell, EPYC, ...; query-cpu-definitions);\n\
                               features off, or on where KVM has them (a warning each, or refused with enforce=on)\n\
-kernel FILE                   bzImage or ELF with a PVH note (default: the bundled tiny guest)\n\
-initrd FILE                   initial ram disk\n\
-append CMDLINE                kernel command line\n\
-serial stdio|null|none|file:PATH|unix:PATH,server=on,wait=off\n\
-nographic                     serial on stdio, no display\n\
-display none                  no display (machina has none)\n\
-device TYPE[,prop=value...]   add a device; -device help lists types, -device TYPE,help its properties\n\
-drive file=PATH,if=none,id=ID,format=raw[,readonly=on][,cache=MODE]   a raw disk for -device ...,drive=ID\n\
-blockdev driver=file,node-name=ID,filename=PATH   the same as a block node\n\
-netdev tap,id=ID,ifname=NAME,script=no,downscript=no   a tap backend for -device ...,netdev=ID\n\
-chardev file|null|stdio|socket|pty,id=ID,...   a character backend (-mon chardev=ID,mode=control for QMP;\n\
                               -device isa-serial,chardev=ID for a serial port)\n\
-add-fd set=N,fd=M[,opaque=TEXT]   pass an fd; open it as /dev/fdset/N\n\
-object secret,id=ID,format=raw|base64,file=PATH|data=TEXT   a secret\n\
-object memory-backend-ram|memory-backend-memfd|memory-backend-file,id=ID,size=SIZE[,mem-path=PATH]\n\
                               guest RAM from that backend with -machine memory-backend=ID\n\
-uuid UUID                     the machine's UUID\n\
-overcommit mem-lock=on|off    lock all memory\n\
-rtc base=utc|localtime|DATE,clock=host|rt|vm   the RTC's start and the clock it runs on\n\
-boot [order=]DRIVES,once=DRIVES,strict=on|off,...   the CMOS boot order and firmware settings\n\
-no-fd-bootchk                 the CMOS tells firmware to skip the floppy signature check\n\
-action reboot=reset|shutdown,shutdown=poweroff|pause,panic=pause|shutdown|exit-failure|none,\n\
        watchdog=reset|shutdown|poweroff|pause|debug|none|inject-nmi   what guest events do\n\
-watchdog-action ACTION        the same as -action watchdog=ACTION\n\
-global ICH9-LPC.noreboot=on|off   the TCO watchdog's no-reboot strap\n\
-audiodev none,id=ID | -audio none   no sound (machina has no sound device)\n\
-sandbox on|off,...            parsed only: machina installs no seccomp filter\n\
-msg timestamp=on              prefix errors with the time\n\
-d guest_errors,unimp,trace:PATTERN   log what the guest got wrong, what machina lacks, trace events (-d help)\n\
-D FILE                        write the -d and -trace log to FILE instead of stderr\n\
-trace [enable=]PATTERN|events=FILE|file=FILE   enable trace events (-trace help lists them)\n\
-object rng-random,id=ID,filename=PATH | rng-builtin,id=ID   an entropy source for virtio-rng-pci,rng=ID\n\
-readconfig FILE               read options from QEMU's configuration file ([device \"id\"], [memory], ...)\n\
-nodefaults                    create no default devices\n\
-no-user-config                accepted (machina reads no user config)\n\
-no-reboot                     exit instead of rebooting when the guest resets\n\
-no-hpet                       same as -machine hpet=off\n\
-no-shutdown                   stop, not exit, when the guest powers off (QMP system_reset, cont)\n\
-S                             do not start the vCPUs\n\
-qmp unix:PATH,server=on,wait=off | tcp:HOST:PORT,server=on,wait=off | stdio   QMP monitor\n\
-chardev socket,id=ID,path=PATH,server=on,wait=off  -mon chardev=ID,mode=control   QMP on a chardev\n\
-delay-machine-init (also --preconfig)  start QMP before the machine exists; build on x-exit-preconfig\n\
-name NAME                     guest name\n\
-pidfile FILE                  write the process id to FILE (locked; removed at exit)\n\
-daemonize                     detach once the monitors listen (the caller exits 0, or 1 on error)\n\
-accel kvm                     the accelerator (-accel qtest with -qtest: no vCPU runs)\n\
-qtest unix:PATH[,server=on] | stdio   QEMU's qtest protocol: drive I/O and memory from a test\n\
-h, --help                     this text\n\
--version                      version\n",
        env!("CARGO_PKG_VERSION")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &str) -> Result<CliOptions, CliError> {
        parse(args.split_whitespace())
    }

    #[test]
    fn sizes_follow_qemu() {
        for (text, bytes) in [
            ("512", 512u64 << 20),
            ("512M", 512 << 20),
            ("2G", 2 << 30),
            ("1.5G", 3 << 29),
            ("65536k", 64 << 20),
            ("size=256M", 256 << 20),
        ] {
            assert_eq!(parse_ram_size(text), Ok(bytes), "{text}");
        }
        // QEMU 7.2's answers (query-memory-size-summary before alignment, or its error).
        type Row<'a> = (&'a str, Result<(u64, u64, Option<u64>), &'a str>);
        let table: &[Row] = &[
            ("0", Ok((DEFAULT_RAM_SIZE, 0, None))),
            ("", Ok((DEFAULT_RAM_SIZE, 0, None))),
            ("1", Ok((1 << 20, 0, None))),
            ("0.5k", Ok((512, 0, None))),
            ("1b", Ok((1, 0, None))),
            ("1.5M", Ok((3 << 19, 0, None))),
            ("0x100", Ok((256 << 20, 0, None))),
            ("256k", Ok((256 << 10, 0, None))),
            (" 256", Ok((256 << 20, 0, None))),
            ("512,size=256", Ok((256 << 20, 0, None))),
            ("size=256,slots=2,maxmem=1G", Ok((256 << 20, 2, Some(1 << 30)))),
            ("256M,maxmem=1G,slots=2,slots=3", Ok((256 << 20, 3, Some(1 << 30)))),
            ("256,slots=-1,maxmem=1G", Ok((256 << 20, u64::MAX, Some(1 << 30)))),
            ("256,foo=bar", Err("-m 256,foo=bar: Invalid parameter 'foo'")),
            ("256,foo", Err("-m 256,foo: Invalid parameter 'foo'")),
            ("512Q", Err("-m 512Q: Parameter 'size' expects a non-negative number below 2^64")),
            ("1.5", Err("-m 1.5: Parameter 'size' expects a non-negative number below 2^64")),
            ("-1", Err("-m -1: Parameter 'size' expects a non-negative number below 2^64")),
            ("1e3", Err("-m 1e3: Parameter 'size' expects a non-negative number below 2^64")),
            ("256KiB", Err("-m 256KiB: Parameter 'size' expects a non-negative number below 2^64")),
            ("size=", Err("-m size=: Parameter 'size' expects a non-negative number below 2^64")),
            (",slots=0", Err("-m ,slots=0: Parameter 'size' expects a non-negative number below 2^64")),
            ("16E", Err("-m 16E: Value '16E' is out of range for parameter 'size'")),
            (
                "18446744073709551616",
                Err("-m 18446744073709551616: Value '18446744073709551616' is out of range for parameter 'size'"),
            ),
            ("99999999999999", Err("-m 99999999999999: Parameter 'memory.size' expects size")),
            ("256,slots=", Err("-m 256,slots=: Parameter 'slots' expects a number")),
            (
                "256,maxmem=x",
                Err("-m 256,maxmem=x: Parameter 'maxmem' expects a non-negative number below 2^64"),
            ),
        ];
        for (text, want) in table {
            let got = parse_memory(text)
                .map(|m| (m.size, m.slots, m.maxmem))
                .map_err(|e| e.to_string());
            assert_eq!(got, want.map_err(str::to_string), "-m {text}");
        }
    }

    #[test]
    fn no_hpet_is_machine_hpet_off() {
        let catalog = machine::Catalog::builtin();
        let plan_of = |args: &str| {
            let opts = p(args).unwrap();
            crate::config::prepare(&opts, catalog).unwrap().1
        };
        let with = plan_of("-M q35");
        let without = plan_of("-M q35 -no-hpet");
        assert_eq!(without.options.text("hpet").as_deref(), Some("off"));
        let has_hpet = |plan: &machine::Plan| {
            let value = serde_json::to_value(plan).unwrap();
            value["isa"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["type_name"] == "hpet")
        };
        assert!(has_hpet(&with), "q35 has an HPET by default");
        assert!(!has_hpet(&without), "-no-hpet removes it from the plan");
    }

    #[test]
    fn machine_and_options() {
        let o = p("-M q35,usb=off,accel=kvm -m 256 -smp 2 -nodefaults -S -name guest=vm1,debug-threads=on")
            .unwrap();
        assert_eq!(o.machine.as_deref(), Some("q35"));
        assert_eq!(o.machine_options, vec![("usb".into(), "off".into())]);
        assert_eq!(o.ram_size, 256 << 20);
        assert_eq!(o.smp.cpus, 2);
        assert!(o.nodefaults && o.start_paused);
        assert_eq!(o.name.as_deref(), Some("vm1"));
        assert_eq!(p("-machine help").unwrap().action, Action::MachineHelp);
        assert_eq!(
            p("-device pcie-root-port,help").unwrap().action,
            Action::DeviceProperties("pcie-root-port".into())
        );
        assert_eq!(p("-smp cpus=3,sockets=3").unwrap().smp.cpus, 3);
        let smp = p("-smp sockets=2,cores=2").unwrap().smp;
        assert_eq!(
            (smp.cpus, smp.keys.sockets, smp.keys.cores),
            (4, Some(2), Some(2))
        );
        assert_eq!(p("-smp maxcpus=8").unwrap().smp.cpus, 8);
        assert_eq!(p("-smp 2,maxcpus=4").unwrap().smp.max_cpus, Some(4));
    }

    #[test]
    fn cpu_features_follow_qemus_precedence_and_names() {
        let o = p("-cpu max,-fpu,+fpu,-mce,mce=on,+cx8,cx8=off,+sse4_1,sse4-2=on,mmx=off").unwrap();
        assert_eq!(o.cpu_model, Some(crate::cpuid::CpuModel::Max));
        let f = |name: &str| {
            o.cpu_features
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, on)| *on)
        };
        // `-feat` beats `+feat`; both beat `feat=`; underscores and `sse4-N` are aliases.
        assert_eq!(f("fpu"), Some(false));
        assert_eq!(f("mce"), Some(false));
        assert_eq!(f("cx8"), Some(true));
        assert_eq!(f("sse4.1"), Some(true));
        assert_eq!(f("sse4.2"), Some(true));
        assert_eq!(f("mmx"), Some(false));
        assert_eq!(
            p("-cpu max,+foo").unwrap_err().to_string(),
            "Property 'max-x86_64-cpu.foo' not found"
        );
        assert_eq!(
            p("-cpu max,mmx=maybe").unwrap_err().to_string(),
            "can't apply global max-x86_64-cpu.mmx=maybe: Parameter 'mmx' expects 'on' or 'off'"
        );
    }

    #[test]
    fn machine_smp_keys_and_numa_options() {
        let o = p("-machine q35,smp.cpus=8,smp.sockets=2 -numa node,cpus=0-3 -numa node").unwrap();
        assert_eq!((o.smp.cpus, o.smp.keys.sockets), (8, Some(2)));
        assert_eq!(o.machine.as_deref(), Some("q35"));
        assert!(o
            .machine_options
            .iter()
            .all(|(k, _)| !k.starts_with("smp.")));
        assert_eq!(o.numa.len(), 2);
        assert_eq!(
            p("-machine smp.cpus=x").unwrap_err().to_string(),
            "Parameter 'smp.cpus' expects integer"
        );
    }

    #[test]
    fn errors_name_the_option() {
        let cases = [
            ("-foo", "-foo: invalid option"),
            ("-m", "-m: requires an argument"),
            (
                "-smp 0",
                "-smp 0: Invalid CPU topology: CPU topology parameters must be greater than zero",
            ),
            ("-smp abc", "-smp abc: Parameter 'smp.cpus' expects integer"),
            (
                "-serial bogus:x",
                "-serial bogus:x: 'bogus:x' is not a valid char driver",
            ),
            ("stray", "stray: invalid option"),
            ("-smp 2,foo=1", "-smp 2,foo=1: Parameter 'smp.foo' is unexpected"),
            ("-smp 2,cores=x", "-smp 2,cores=x: Parameter 'smp.cores' expects integer"),
            ("-cpu foo", "unable to find CPU model 'foo'"),
            (
                "-cpu host,xyz=on",
                "can't apply global host-x86_64-cpu.xyz=on: Property 'host-x86_64-cpu.xyz' not found",
            ),
        ];
        for (args, message) in cases {
            assert_eq!(p(args).unwrap_err().to_string(), message, "{args}");
        }
        assert!(p("-accel tcg").is_err());
        assert!(p("-display gtk").is_err());
    }

    #[test]
    fn firmware_options_follow_qemu() {
        let o = p("-bios /fw/bios.bin -L /a -L /b").unwrap();
        assert_eq!(o.bios, Some(PathBuf::from("/fw/bios.bin")));
        assert_eq!(o.data_dirs, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        // -machine firmware= names the same image; the later one wins, as in QEMU.
        let o = p("-bios a.bin -machine pc,firmware=b.bin").unwrap();
        assert_eq!(o.bios, Some(PathBuf::from("b.bin")));
        // Legacy flash drives: QEMU's default ids, the next free unit, commas kept.
        let o = p("-drive if=pflash,format=raw,file=/x,,y -drive file=/v,if=pflash,readonly=on")
            .unwrap();
        let ids = o.pflash_drives.clone().map(|d| d.map(|(id, _)| id));
        assert_eq!(ids, [Some("pflash0".into()), Some("pflash1".into())]);
        let specs: Vec<String> = o.backends.iter().map(|(_, s)| lossy(s)).collect();
        assert_eq!(
            specs,
            [
                "format=raw,file=/x,,y,id=pflash0,if=none",
                "file=/v,readonly=on,id=pflash1,if=none"
            ]
        );
        let o = p("-drive if=pflash,unit=1,id=vars,file=/v").unwrap();
        assert_eq!(
            o.pflash_drives[1].as_ref().map(|d| d.0.as_str()),
            Some("vars")
        );
        let o = p("-drive if=pflash,index=1,file=/v").unwrap();
        assert_eq!(
            o.pflash_drives,
            [
                None,
                Some(("pflash1".into(), "-drive if=pflash,index=1,file=/v".into()))
            ]
        );
        let cases = [
            (
                "-drive if=pflash,file=f,unit=2",
                "-drive if=pflash,file=f,unit=2: machine type does not support if=pflash,bus=0,unit=2",
            ),
            (
                "-drive if=pflash,file=f,bus=1",
                "-drive if=pflash,file=f,bus=1: machine type does not support if=pflash,bus=1,unit=0",
            ),
            (
                "-drive if=pflash,file=f,unit=x",
                "-drive if=pflash,file=f,unit=x: Parameter 'unit' expects a number",
            ),
            (
                "-drive if=pflash,file=f,unit=1,index=1",
                "-drive if=pflash,file=f,unit=1,index=1: index cannot be used with bus and unit",
            ),
            (
                "-drive if=pflash,file=f -drive if=pflash,file=f,unit=0",
                "-drive if=pflash,file=f,unit=0: drive with bus=0, unit=0 (index=-1) exists",
            ),
            ("-bios", "-bios: requires an argument"),
            ("-L", "-L: requires an argument"),
        ];
        for (args, message) in cases {
            assert_eq!(p(args).unwrap_err().to_string(), message, "{args}");
        }
    }

    #[test]
    fn os_string_keyval_keeps_bytes() {
        let arg = OsString::from_vec(b"file=/tmp/a,,\xe9,id=d0,,x".to_vec());
        let pairs = keyval_pairs_os(&arg);
        assert_eq!(pairs[0].0, "file");
        assert_eq!(pairs[0].1.as_bytes(), b"/tmp/a,\xe9");
        assert_eq!(
            (pairs[1].0.as_str(), pairs[1].1.as_bytes()),
            ("id", &b"d0,x"[..])
        );
        let o = parse([
            OsString::from("-kernel"),
            OsString::from_vec(b"/k\xff".to_vec()),
        ])
        .unwrap();
        assert_eq!(o.kernel.unwrap().as_os_str().as_bytes(), b"/k\xff");
    }

    #[test]
    fn libvirt_options() {
        use super::host_options::rtc_date_epoch;
        let o = p("-uuid 5b527e88-b569-4732-a094-f2b6cc2aaa31 -rtc base=utc -boot strict=on -overcommit mem-lock=off -msg timestamp=on -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny -audiodev none,id=a -name guest=g,debug-threads=on,process=p")
            .unwrap();
        assert_eq!(o.uuid.unwrap()[..4], [0x5b, 0x52, 0x7e, 0x88]);
        assert!(o.boot.strict && o.msg.timestamp && o.name_options.debug_threads);
        assert_eq!(o.name.as_deref(), Some("g"));
        assert_eq!(o.name_options.process.as_deref(), Some("p"));
        assert_eq!(o.audiodevs, vec!["a".to_string()]);
        assert_eq!(o.sandbox.unwrap().settings.len(), 4);
        assert_eq!(rtc_date_epoch("2006-06-17T16:01:21"), Some(1_150_560_081));
        assert_eq!(rtc_date_epoch("1970-01-01"), Some(0));
        assert_eq!(rtc_date_epoch("2006-6-17"), None);
        assert_eq!(rtc_date_epoch("2006-13-17"), None);
        let o = p("-rtc base=2006-06-17").unwrap();
        assert!(o.rtc.offset < 0 && o.rtc.base == "2006-06-17");
        assert_eq!(p("-overcommit mem-lock=on").unwrap().mem_lock, MemLock::On);
        assert!(p("-overcommit cpu-pm=on").is_err());
        assert!(p("-boot order=cc").is_err());
        assert!(p("-uuid 5b527e88-b569-4732-a094-f2b6cc2aaa3").is_err());
    }

    #[test]
    fn reported_keyval_options_are_accepted() {
        for (option, keys) in KEYVAL_OPTIONS {
            for key in *keys {
                let value = match (*option, *key) {
                    ("machine", "accel") => "q35,accel=kvm".to_string(),
                    ("machine", _) => format!("{key}=q35"),
                    _ => format!("{key}=1"),
                };
                let args = [format!("-{option}"), value];
                assert!(parse(args.iter().cloned()).is_ok(), "-{option} {key}");
            }
        }
    }

    #[test]
    fn serial_backends() {
        assert_eq!(p("-serial stdio").unwrap().serial, vec![SerialSpec::Stdio]);
        assert_eq!(
            p("-serial file:/tmp/x").unwrap().serial,
            vec![SerialSpec::File("/tmp/x".into())]
        );
        assert_eq!(
            p("-serial unix:/tmp/s,server=on,wait=off").unwrap().serial,
            vec![SerialSpec::UnixServer {
                path: "/tmp/s".into(),
                wait: false
            }]
        );
        assert!(p("-serial unix:/tmp/s").is_err());
    }
}
