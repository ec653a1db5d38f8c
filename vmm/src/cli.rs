//! QEMU-style command line: option spelling, argument syntax and error wording follow
//! qemu-system-x86_64 so that tools which build QEMU command lines can drive machina.

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
    pub cpus: u32,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub append: String,
    pub serial: Vec<SerialSpec>,
    pub nodefaults: bool,
    pub no_reboot: bool,
    /// `-S`: build the machine but do not start the vCPUs.
    pub start_paused: bool,
    pub name: Option<String>,
    pub devices: Vec<String>,
    pub machine_definitions: Vec<PathBuf>,
    pub nographic: bool,
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
    pub action: Action,
}

/// What the invocation is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Run,
    Help,
    Version,
    MachineHelp,
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
    #[error("-m {0}: Parameter 'size' expects a non-negative number below 2^64")]
    BadSize(String),
    #[error("-m {0}: memory size must be greater than zero")]
    ZeroMemory(String),
    #[error("-smp {0}: Parameter 'smp.cpus' expects integer")]
    BadCpus(String),
    #[error("-smp {0}: Invalid CPU topology: CPU topology parameters must be greater than zero")]
    ZeroCpus(String),
    #[error("-smp {0}: unsupported topology parameter '{1}'")]
    BadTopology(String, String),
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
}

impl Default for CliOptions {
    fn default() -> Self {
        Self {
            machine: None,
            machine_options: Vec::new(),
            ram_size: DEFAULT_RAM_SIZE,
            cpus: 1,
            kernel: None,
            initrd: None,
            append: String::new(),
            serial: Vec::new(),
            nodefaults: false,
            no_reboot: false,
            start_paused: false,
            name: None,
            devices: Vec::new(),
            machine_definitions: Vec::new(),
            nographic: false,
            qmp: Vec::new(),
            chardevs: Vec::new(),
            backends: Vec::new(),
            monitors: Vec::new(),
            delay_init: false,
            qtest: None,
            accel_qtest: false,
            pidfile: None,
            daemonize: false,
            action: Action::Run,
        }
    }
}

pub use machine::split_keyval;

/// `split_keyval` over an OS string: arguments are bytes (a path may be any bytes but NUL),
/// so they are split at ASCII commas without any UTF-8 decoding; `,,` is a literal comma.
pub fn split_keyval_os(arg: &OsStr) -> Vec<OsString> {
    let mut parts = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = arg.as_bytes().iter().copied().peekable();
    while let Some(b) = bytes.next() {
        if b == b',' {
            if bytes.peek() == Some(&b',') {
                bytes.next();
                cur.push(b',');
            } else {
                parts.push(OsString::from_vec(std::mem::take(&mut cur)));
            }
        } else {
            cur.push(b);
        }
    }
    parts.push(OsString::from_vec(cur));
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

/// Parse a size as QEMU does for `-m`: a plain number is MiB; suffixes k/M/G/T/P/E (and B).
pub fn parse_ram_size(text: &str) -> Result<u64, CliError> {
    let bad = || CliError::BadSize(text.to_string());
    let value = text.strip_prefix("size=").unwrap_or(text);
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(split);
    if number.is_empty() {
        return Err(bad());
    }
    let shift = match suffix {
        "" | "M" | "m" => 20,
        "B" | "b" => 0,
        "k" | "K" => 10,
        "G" | "g" => 30,
        "T" | "t" => 40,
        "P" | "p" => 50,
        "E" | "e" => 60,
        _ => return Err(bad()),
    };
    let bytes = if number.contains('.') {
        let n: f64 = number.parse().map_err(|_| bad())?;
        let b = n * (1u64 << shift) as f64;
        if !(0.0..1.8e19).contains(&b) {
            return Err(bad());
        }
        b as u64
    } else {
        let n: u64 = number.parse().map_err(|_| bad())?;
        n.checked_mul(1u64 << shift).ok_or_else(bad)?
    };
    if bytes == 0 {
        return Err(CliError::ZeroMemory(text.to_string()));
    }
    Ok(bytes)
}

/// Parse `-smp N[,cpus=N,sockets=..,cores=..,threads=..,maxcpus=..]`.
fn parse_smp(text: &str) -> Result<u32, CliError> {
    let mut cpus: Option<u32> = None;
    let mut product: u32 = 1;
    let mut saw_topology = false;
    for (i, item) in split_keyval(text).iter().enumerate() {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, v),
            None if i == 0 => ("cpus", item.as_str()),
            None => return Err(CliError::BadCpus(text.to_string())),
        };
        let n: u32 = value
            .parse()
            .map_err(|_| CliError::BadCpus(text.to_string()))?;
        if n == 0 {
            return Err(CliError::ZeroCpus(text.to_string()));
        }
        match key {
            "cpus" => cpus = Some(n),
            "sockets" | "cores" | "threads" | "dies" | "clusters" => {
                saw_topology = true;
                product = product.saturating_mul(n);
            }
            "maxcpus" => {}
            other => return Err(CliError::BadTopology(text.to_string(), other.to_string())),
        }
    }
    Ok(cpus.unwrap_or(if saw_topology { product } else { 1 }))
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
                ("server", v) => server = parse_bool(v).ok_or_else(bad)?,
                ("wait", v) => wait = parse_bool(v).ok_or_else(bad)?,
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

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "on" | "yes" | "true" => Some(true),
        "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

/// Options that take an argument, with their canonical spelling.
fn takes_argument(name: &str) -> bool {
    matches!(
        name,
        "machine"
            | "M"
            | "m"
            | "smp"
            | "kernel"
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
            | "vga"
            | "nic"
            | "net"
            | "pidfile"
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
        // Names, numbers and keys are text; only path-carrying options use `os_value`.
        let value = lossy(&os_value);
        match name.as_str() {
            "h" | "help" => opts.action = Action::Help,
            "version" => opts.action = Action::Version,
            "machine" | "M" => parse_machine(&mut opts, &value)?,
            "m" => opts.ram_size = parse_ram_size(&value)?,
            "smp" => opts.cpus = parse_smp(&value)?,
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
            "vga" | "nic" | "net" => {
                if value != "none" {
                    return Err(CliError::BadOptionValue(
                        name.clone(),
                        value.clone(),
                        value,
                        name,
                    ));
                }
            }
            "no-reboot" => opts.no_reboot = true,
            "S" => opts.start_paused = true,
            "name" => {
                let first = split_keyval(&value).into_iter().next().unwrap_or_default();
                opts.name = Some(first.strip_prefix("guest=").unwrap_or(&first).to_string());
            }
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
            "drive" => opts.backends.push((BackendOption::Drive, os_value)),
            "blockdev" => opts.backends.push((BackendOption::Blockdev, os_value)),
            "netdev" => opts.backends.push((BackendOption::Netdev, os_value)),
            "object" => opts.backends.push((BackendOption::Object, os_value)),
            "mon" => opts.monitors.push(value),
            "delay-machine-init" | "preconfig" => opts.delay_init = true,
            "qtest" => opts.qtest = Some(value),
            "qtest-log" => {}
            "pidfile" => opts.pidfile = Some(PathBuf::from(os_value)),
            "daemonize" => opts.daemonize = true,
            _ => return Err(CliError::InvalidOption(arg)),
        }
    }
    Ok(opts)
}

fn parse_machine(opts: &mut CliOptions, value: &str) -> Result<(), CliError> {
    for (i, item) in split_keyval(value).into_iter().enumerate() {
        match item.split_once('=') {
            Some(("type", ty)) => opts.machine = Some(ty.to_string()),
            Some((k, v)) => {
                if k == "accel" && !v.split(':').any(|a| a == "kvm" || a == "qtest") {
                    return Err(CliError::BadAccel(v.to_string()));
                }
                opts.machine_options.push((k.to_string(), v.to_string()))
            }
            None if i == 0 => {
                if item == "help" || item == "?" {
                    opts.action = Action::MachineHelp;
                } else {
                    opts.machine = Some(item);
                }
            }
            // A bare flag means `flag=on` in QEMU keyval syntax.
            None if !item.is_empty() => opts.machine_options.push((item, "on".to_string())),
            None => {}
        }
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
-m SIZE                        guest RAM (512, 512M, 2G; default 128M)\n\
-smp N[,cpus=N,sockets=S,cores=C,threads=T]  number of vCPUs\n\
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
-chardev file|null|stdio|socket,id=ID,...   a character backend (-mon chardev=ID,mode=control for QMP)\n\
-object rng-random,id=ID,filename=PATH   an entropy source for virtio-rng-pci,rng=ID\n\
-nodefaults                    create no default devices\n\
-no-user-config                accepted (machina reads no user config)\n\
-no-reboot                     exit instead of rebooting when the guest resets\n\
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
        assert_eq!(
            parse_ram_size("512Q").unwrap_err().to_string(),
            "-m 512Q: Parameter 'size' expects a non-negative number below 2^64"
        );
        assert!(matches!(parse_ram_size("0"), Err(CliError::ZeroMemory(_))));
        assert!(parse_ram_size("99999999999999999999").is_err());
    }

    #[test]
    fn machine_and_options() {
        let o = p("-M q35,usb=off,accel=kvm -m 256 -smp 2 -nodefaults -S -name guest=vm1,debug-threads=on")
            .unwrap();
        assert_eq!(o.machine.as_deref(), Some("q35"));
        assert_eq!(o.machine_options, vec![("usb".into(), "off".into())]);
        assert_eq!(o.ram_size, 256 << 20);
        assert_eq!(o.cpus, 2);
        assert!(o.nodefaults && o.start_paused);
        assert_eq!(o.name.as_deref(), Some("vm1"));
        assert_eq!(p("-machine help").unwrap().action, Action::MachineHelp);
        assert_eq!(
            p("-device pcie-root-port,help").unwrap().action,
            Action::DeviceProperties("pcie-root-port".into())
        );
        assert_eq!(p("-smp cpus=3,sockets=3").unwrap().cpus, 3);
        assert_eq!(p("-smp sockets=2,cores=2").unwrap().cpus, 4);
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
            ("-m 0", "-m 0: memory size must be greater than zero"),
            ("stray", "stray: invalid option"),
        ];
        for (args, message) in cases {
            assert_eq!(p(args).unwrap_err().to_string(), message, "{args}");
        }
        assert!(p("-accel tcg").is_err());
        assert!(p("-display gtk").is_err());
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
