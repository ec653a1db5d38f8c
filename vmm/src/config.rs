//! The configuration a machine is planned and booted from. The command line fills it; under
//! `-delay-machine-init` QMP edits it until the machine is built.

use crate::backends::{self, Backend, BackendError};
use crate::cli::{
    keyval_pairs_os, lossy, BackendOption, BootOptions, CliOptions, NameOptions, RtcOptions,
    SandboxOptions, SerialSpec,
};
use crate::memory::RamBacking;
use crate::objects::{self, IoThreadSpec, MemoryBackend, ObjectError, ObjectSpec, Secret};
use machine::{DeviceRequest, PlanError, PlanRequest};
use std::ffi::OsStr;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

/// What `query-chardev` reports of a chardev: QEMU's label and filename spellings
/// (`pty:/dev/pts/3`, `file`, `null`, `stdio`, `disconnected:unix:PATH,server=on`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChardevInfo {
    pub label: String,
    pub filename: String,
    /// The backend type (`pty`, `file`, `socket`, ...).
    pub backend: String,
}

#[derive(Debug, Clone)]
pub struct MachineConfig {
    pub machine: Option<String>,
    pub options: Vec<(String, String)>,
    pub nodefaults: bool,
    pub ram_size: u64,
    /// `-m slots=`, `maxmem=`.
    pub ram_slots: u64,
    pub max_ram_size: Option<u64>,
    pub cpus: u32,
    /// `-vga`: None is QEMU's default VGA (none with -nodefaults).
    pub vga: Option<bool>,
    /// The default NIC: `Some(false)` after `-nic none`, `-net none` or any `-netdev`.
    pub nic: Option<bool>,
    /// `-smp maxcpus=` and the topology keys, resolved by the planner.
    pub max_cpus: Option<u32>,
    pub smp: machine::SmpKeys,
    /// `-numa` options and QMP `set-numa-node`, in order.
    pub numa: Vec<machine::NumaArg>,
    /// `-cpu`; None is machina's default (the same CPUID as `host`).
    pub cpu_model: Option<crate::cpuid::CpuModel>,
    /// `-cpu MODEL,+feat,-feat,feat=on|off`: the features turned on or off, in effect order.
    pub cpu_features: Vec<(String, bool)>,
    /// The vCPUs run under KVM (false with `-accel qtest`, where none runs).
    pub kvm: bool,
    pub devices: Vec<DeviceRequest>,
    /// The option each of `devices` came from (`-device SPEC`, or `-drive SPEC` for the
    /// disk the board attaches for `-drive if=ide`), for error messages.
    pub device_contexts: Vec<String>,
    /// Console backend of COM1; None means QEMU's default (a port unless -nodefaults).
    pub serial: Option<SerialSpec>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub append: String,
    /// `-bios` / flash: the system firmware, read at start (None: a kernel boots directly).
    pub firmware: Option<crate::firmware::Firmware>,
    pub name: Option<String>,
    /// Drives, netdevs, chardevs and objects the devices refer to.
    pub backends: Vec<Backend>,
    /// `-daemonize`: there is no terminal, so the default console is null (QEMU's default
    /// `vc` with no display).
    pub daemonized: bool,
    /// `-uuid`.
    pub uuid: Option<[u8; 16]>,
    pub boot: BootOptions,
    pub rtc: RtcOptions,
    /// What guest events do (`-action`, `-watchdog-action`; QMP `set-action` changes them).
    pub actions: crate::actions::Actions,
    /// `-global`, applied to the plan before the build.
    pub globals: Vec<crate::globals::Global>,
    pub name_options: NameOptions,
    /// `-object secret` values, read at start.
    pub secrets: Vec<Arc<Secret>>,
    /// `-object memory-backend-*`.
    pub memory_backends: Vec<MemoryBackend>,
    /// `-object iothread`, in order (their threads start with the process).
    pub iothreads: Vec<IoThreadSpec>,
    /// `-machine memory-backend=ID`: the backend guest RAM comes from.
    pub memory_backend: Option<String>,
    /// Every `-chardev`, in order, as `query-chardev` reports them.
    pub chardevs: Vec<ChardevInfo>,
    /// The console a serial port connected to each chardev gets (chardevs a serial port
    /// can use: file, pty, null, stdio, listening unix socket).
    pub chardev_consoles: Vec<(String, SerialSpec)>,
    /// The console of `-device isa-serial,chardev=ID` (the first such device).
    pub serial_chardev: Option<SerialSpec>,
    /// The chardevs `-mon` monitors run on (`chardev-remove` refuses them as busy).
    pub monitor_chardevs: Vec<String>,
    /// `-audiodev`/`-audio` ids (driver none).
    pub audiodevs: Vec<String>,
    /// `-sandbox`, as parsed (no filter is installed).
    pub sandbox: Option<SandboxOptions>,
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
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error(transparent)]
    Firmware(#[from] crate::firmware::FirmwareError),
    #[error("-chardev {spec}: {message}")]
    Chardev { spec: String, message: String },
    #[error("{0}")]
    Plain(String),
}

/// The system firmware the command line names (`-bios`, flash drives), read now as QEMU
/// reads it while building the board.
fn resolve_firmware(
    opts: &CliOptions,
    backends: &mut [Backend],
) -> Result<Option<crate::firmware::Firmware>, ConfigError> {
    let option = |name: &str| {
        opts.machine_options
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    // A bad size is the planner's to report (with QEMU's text); the default meanwhile.
    let max_fw_size = option("max-fw-size")
        .and_then(|v| machine::parse_size(&v))
        .unwrap_or(8 << 20);
    // QEMU's setter refuses more than 16 MiB (the flash would reach the IOAPIC).
    if max_fw_size > 16 << 20 {
        return Err(ConfigError::Plain(format!(
            "User specified max allowed firmware size {max_fw_size} is greater than 16MiB. \
             If combined firmware size exceeds 16MiB the system may not boot, or experience \
             intermittentstability issues."
        )));
    }
    let request = crate::firmware::FirmwareRequest {
        bios: opts.bios.as_deref(),
        data_dirs: &opts.data_dirs,
        drives: &opts.pflash_drives,
        properties: [option("pflash0"), option("pflash1")],
        max_fw_size,
    };
    Ok(crate::firmware::Firmware::resolve(&request, backends)?)
}

/// QEMU's chardev backend types that machina does not implement.
const QEMU_CHARDEVS: &[&str] = &[
    "udp",
    "msmouse",
    "wctablet",
    "memory",
    "ringbuf",
    "pipe",
    "parallel",
    "serial",
    "tty",
    "braille",
    "testdev",
    "spicevmc",
    "spiceport",
    "qemu-vdagent",
    "vc",
    "dbus",
    "mux",
];

/// The unix path a listening socket fd is bound to (for `query-chardev`).
fn socket_fd_path(fd: i32) -> Option<String> {
    // SAFETY: sockaddr_un is plain data; getsockname fills at most `len` bytes of it.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: a valid pointer/length pair for the sockaddr_un above.
    let r =
        unsafe { libc::getsockname(fd, (&mut addr as *mut libc::sockaddr_un).cast(), &mut len) };
    if r != 0 || i32::from(addr.sun_family) != libc::AF_UNIX {
        return None;
    }
    let bytes: Vec<u8> = addr
        .sun_path
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Open (pty) and describe one `-chardev`: its info and, if a serial port can use it, the
/// console it gives.
fn chardev_from_cli(spec: &OsStr) -> Result<(ChardevInfo, Option<SerialSpec>), ConfigError> {
    let text = lossy(spec);
    let err = |message: String| ConfigError::Chardev {
        spec: text.clone(),
        message,
    };
    let parsed = qmp::ChardevSpec::parse(spec).map_err(|e| {
        let m = e.to_string();
        err(if m.contains("'id' is missing") {
            "chardev: no id specified".into()
        } else {
            m
        })
    })?;
    let pairs = keyval_pairs_os(spec);
    let raw = |key: &str| {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    // A bare key is on (QEMU's implied value).
    let flag = |key: &str| -> Result<Option<bool>, ConfigError> {
        let Some(v) = raw(key).map(|v| lossy(&v)) else {
            return Ok(None);
        };
        if v.is_empty() {
            return Ok(Some(true));
        }
        machine::parse_bool(key, &v)
            .map(Some)
            .map_err(|e| err(e.to_string()))
    };
    let info = |filename: String| ChardevInfo {
        label: parsed.id.clone(),
        filename,
        backend: parsed.backend.clone(),
    };
    Ok(match parsed.backend.as_str() {
        "pty" => {
            let pty = crate::console::Pty::open().map_err(|e| err(e.to_string()))?;
            let path = pty.0.path.display().to_string();
            // QEMU 7.2 prints this on stdout (qemu_printf; older QEMU used stderr). A
            // closed stdout must not stop the machine.
            let _ = writeln!(
                std::io::stdout(),
                "char device redirected to {path} (label {})",
                parsed.id
            );
            (info(format!("pty:{path}")), Some(SerialSpec::Pty(pty)))
        }
        "file" => {
            let path = PathBuf::from(
                raw("path").ok_or_else(|| err("chardev: file: no filename given".into()))?,
            );
            // Opened now, as QEMU opens every chardev at start.
            let append = flag("append")?.unwrap_or(false);
            let handle =
                crate::console::FileHandle::open(&path, append).map_err(|e| err(e.to_string()))?;
            (info("file".into()), Some(SerialSpec::OpenFile(handle)))
        }
        "null" => (info("null".into()), Some(SerialSpec::Null)),
        "stdio" => (info("stdio".into()), Some(SerialSpec::Stdio)),
        "socket" => match parsed.endpoint {
            Some(qmp::QmpEndpoint::Unix { path, server, wait }) => {
                let shown = format!("unix:{}", path.display());
                if server {
                    (
                        info(format!("disconnected:{shown},server=on")),
                        Some(SerialSpec::UnixServer { path, wait }),
                    )
                } else {
                    (info(format!("disconnected:{shown}")), None)
                }
            }
            Some(qmp::QmpEndpoint::Fd { fd, server, .. }) => {
                let name = match socket_fd_path(fd) {
                    Some(p) if server => format!("disconnected:unix:{p},server=on"),
                    Some(p) => format!("disconnected:unix:{p}"),
                    None => "disconnected:socket".into(),
                };
                (info(name), server.then_some(SerialSpec::ListenFd(fd)))
            }
            Some(qmp::QmpEndpoint::Tcp {
                host, port, server, ..
            }) => {
                let suffix = if server { ",server=on" } else { "" };
                (
                    info(format!("disconnected:tcp:{host}:{port}{suffix}")),
                    None,
                )
            }
            _ => (info("socket".into()), None),
        },
        kind if QEMU_CHARDEVS.contains(&kind) => {
            return Err(err(format!(
                "chardev backend '{kind}' is not supported by machina"
            )))
        }
        kind => return Err(err(format!("'{kind}' is not a valid char driver name"))),
    })
}

/// The `ide-hd`/`ide-cd` requests of the `-drive if=ide` drives (id, the `-drive` option),
/// with that option as their context.
fn ide_drive_devices(
    ide_drives: &[(String, String)],
    backends: &[Backend],
) -> (Vec<DeviceRequest>, Vec<String>) {
    let mut devices = Vec::new();
    let mut contexts = Vec::new();
    for (id, context) in ide_drives {
        let Some((cdrom, index)) = backends.iter().find_map(|b| match b {
            Backend::Drive {
                id: d,
                cdrom,
                ide_index: Some(index),
                ..
            } if d == id => Some((*cdrom, *index)),
            _ => None,
        }) else {
            continue;
        };
        let Some(driver) = machine::Catalog::builtin().ide_drive_type(cdrom) else {
            continue;
        };
        let mut dev = DeviceRequest::new(driver);
        dev.properties.push(("drive".to_string(), id.clone()));
        dev.properties
            .push(("bus".to_string(), format!("ide.{}", index / 2)));
        dev.properties
            .push(("unit".to_string(), (index % 2).to_string()));
        devices.push(dev);
        contexts.push(context.clone());
    }
    (devices, contexts)
}

/// ide_dev_initfn's checks of the drive an `ide-hd`/`ide-cd` takes, in QEMU's words.
fn check_ide_devices(
    devices: &[DeviceRequest],
    contexts: &[String],
    backends: &[Backend],
) -> Result<(), ConfigError> {
    for (dev, context) in devices.iter().zip(contexts) {
        let ide = machine::Catalog::builtin()
            .device_type(&dev.driver)
            .filter(|t| t.bus.as_deref() == Some("IDE"));
        let Some(ide) = ide else {
            // Only IDE drives honour blkdebug's rules; elsewhere they would be ignored.
            let debugged = dev.properties.iter().any(|(k, v)| {
                k == "drive"
                    && backends
                        .iter()
                        .any(|b| matches!(b, Backend::Drive { id, debug: Some(_), .. } if id == v))
            });
            if debugged {
                return Err(ConfigError::Plain(format!(
                    "{context}: machina applies blkdebug only to IDE drives (ide-hd, ide-cd)"
                )));
            }
            continue;
        };
        let get = |k: &str| dev.properties.iter().find(|(p, _)| p == k).map(|(_, v)| v);
        let fail = |why: &str| Err(ConfigError::Plain(format!("{context}: {why}")));
        if let Some(g) = get("discard_granularity") {
            if !matches!(machine::parse_size(g), Some(0 | 512 | 0xffff_ffff)) {
                return fail("discard_granularity must be 512 for ide");
            }
        }
        if ide.atapi {
            continue;
        }
        let drive = get("drive").and_then(|id| {
            backends.iter().find_map(|b| match b {
                Backend::Drive {
                    id: d,
                    file,
                    read_only,
                    ..
                } if d == id => Some((file, *read_only)),
                _ => None,
            })
        });
        match drive {
            Some((file, _)) if file.as_os_str().is_empty() => {
                return fail("Device needs media, but drive is empty")
            }
            Some((_, true)) => return fail("Block node is read-only"),
            _ => {}
        }
    }
    Ok(())
}

/// `-global DRIVER.PROP=VALUE`: a default for the property of every device of that driver
/// that does not set it itself.
/// (IDE drives; PCI functions take theirs in `crate::globals::apply`.)
fn apply_globals(devices: &mut [DeviceRequest], globals: &[crate::globals::Global]) {
    for dev in devices {
        let ide = machine::Catalog::builtin()
            .device_type(&dev.driver)
            .is_some_and(|t| t.bus.as_deref() == Some("IDE"));
        if !ide {
            continue;
        }
        for g in globals {
            if g.driver == dev.driver && !dev.properties.iter().any(|(k, _)| *k == g.property) {
                dev.properties.push((g.property.clone(), g.value.clone()));
            }
        }
    }
}

/// A new object's id against the objects made before it (`made`, as (id, type)).
fn check_object_id(id: &str, made: &[(&str, &str)]) -> Result<(), ConfigError> {
    objects::check_new_id(id, |id| made.iter().any(|(object, _)| *object == id))
        .map_err(|e| ConfigError::Plain(e.to_string()))
}

impl MachineConfig {
    pub fn from_cli(opts: &CliOptions) -> Result<Self, ConfigError> {
        let mut devices = opts
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
        let mut secrets: Vec<Arc<Secret>> = Vec::new();
        let mut memory_backends: Vec<MemoryBackend> = Vec::new();
        let mut iothreads: Vec<IoThreadSpec> = Vec::new();
        let mut ide_drives: Vec<(String, String)> = Vec::new();
        // Keyval `-object`s are QEMU's QemuOpts: their ids are checked as the options are
        // read, before anything is made; `-readconfig` objects are made from their
        // sections directly, as JSON ones are.
        let from_file = |spec: &OsStr| {
            crate::cli::readconfig::from_file(&format!("-object {}", crate::cli::lossy(spec)))
        };
        objects::check_option_ids(
            opts.backends
                .iter()
                .filter(|(option, spec)| *option == BackendOption::Object && !from_file(spec))
                .map(|(_, spec)| spec.as_os_str()),
        )?;
        for (option, spec) in &opts.backends {
            let backend = match option {
                BackendOption::Drive => backends::parse_drive(spec)?,
                BackendOption::Blockdev => backends::parse_blockdev(spec, &list)?,
                BackendOption::Netdev => backends::parse_netdev(spec)?,
                BackendOption::Object => {
                    let object = objects::parse(spec)?;
                    // One namespace for every kind: QEMU's `/objects`.
                    let made =
                        || objects::user_objects(&memory_backends, &secrets, &iothreads, &list);
                    if let Some(id) = object.id() {
                        check_object_id(id, &made())?;
                    }
                    match object {
                        ObjectSpec::Secret(s) => {
                            secrets.push(Arc::new(s));
                            continue;
                        }
                        ObjectSpec::MemoryBackend(m) => {
                            memory_backends.push(m);
                            continue;
                        }
                        ObjectSpec::IoThread(t) => {
                            iothreads.push(t);
                            continue;
                        }
                        ObjectSpec::Other(text) => {
                            let backend = backends::parse_object(text)?;
                            check_object_id(backend.id(), &made())?;
                            backend
                        }
                    }
                }
            };
            let spec = crate::cli::lossy(spec);
            let context = match option {
                BackendOption::Drive => format!("-drive {spec}"),
                BackendOption::Blockdev => format!("-blockdev {spec}"),
                BackendOption::Netdev => format!("-netdev {spec}"),
                BackendOption::Object => format!("-object {spec}"),
            };
            backends::add(&mut list, backend, &context)?;
            if let Some(Backend::Drive {
                id,
                ide_index: Some(_),
                ..
            }) = list.last()
            {
                ide_drives.push((id.clone(), context.clone()));
            }
        }
        let mut chardevs = Vec::new();
        let mut chardev_consoles = Vec::new();
        for spec in &opts.chardevs {
            let (info, console) = chardev_from_cli(spec)?;
            if let Some(console) = console {
                chardev_consoles.push((info.label.clone(), console));
            }
            chardevs.push(info);
        }
        // Chardevs serve QMP monitors too; only those that parse as device backends count.
        for spec in &opts.chardevs {
            if let Ok(backend) = backends::parse_chardev(spec) {
                let context = format!("-chardev {}", crate::cli::lossy(spec));
                backends::open_filter_chardev(&list, &backend, &context)?;
                backends::add(&mut list, backend, &context)?;
            }
        }
        backends::open_filters(&list)?;
        let mut contexts: Vec<String> = opts
            .devices
            .iter()
            .map(|d| format!("-device {d}"))
            .collect();
        // `-drive if=ide`: the board creates the drive's device first (pc_init's
        // ide_drive_get), on the bus and unit of its index.
        let (implicit, implicit_contexts) = ide_drive_devices(&ide_drives, &list);
        devices.splice(0..0, implicit);
        contexts.splice(0..0, implicit_contexts);
        apply_globals(&mut devices, &opts.globals);
        backends::check_references(&devices, &list)?;
        // Devices take their drives now (images opened and locked), as QEMU's do at -device.
        backends::attach_drives(&devices, &contexts, &mut list)?;
        check_ide_devices(&devices, &contexts, &list)?;
        let firmware = resolve_firmware(opts, &mut list)?;
        // `-device isa-serial,chardev=ID`: that chardev is the port's console.
        let mut serial_chardev = None;
        let console_port =
            |driver: &str| devices::kinds::isa_kind(driver).is_some_and(|k| k.console());
        if let Some((dev, id)) = devices.iter().find_map(|d| {
            let id = d.properties.iter().find(|(k, _)| k == "chardev")?;
            console_port(&d.driver).then_some((d, id.1.clone()))
        }) {
            let console = chardev_consoles
                .iter()
                .find(|(c, _)| *c == id)
                .map(|(_, s)| s.clone())
                .ok_or_else(|| {
                    ConfigError::Plain(format!(
                        "-device {}: chardev '{id}': machina connects serial ports to file, pty, null, stdio and listening unix socket chardevs",
                        dev.driver
                    ))
                })?;
            serial_chardev = Some(console);
        }
        // `-machine memory-backend=ID`: QEMU's checks and texts.
        let memory_backend = opts
            .machine_options
            .iter()
            .rev()
            .find(|(k, _)| k == "memory-backend")
            .map(|(_, v)| v.clone());
        let mut ram_size = opts.ram_size;
        if let Some(id) = &memory_backend {
            let backend = memory_backends
                .iter()
                .find(|m| m.id == *id)
                .ok_or_else(|| ConfigError::Plain(format!("Memory backend '{id}' not found")))?;
            if !opts.ram_size_given {
                ram_size = backend.size;
            } else if backend.size != ram_size {
                return Err(ConfigError::Plain(
                    "Machine memory size does not match the size of the memory backend".into(),
                ));
            }
        }
        Ok(Self {
            machine: opts.machine.clone(),
            options: opts.machine_options.clone(),
            nodefaults: opts.nodefaults,
            ram_size,
            ram_slots: opts.ram_slots,
            max_ram_size: opts.max_ram_size,
            cpus: opts.smp.cpus,
            max_cpus: opts.smp.max_cpus,
            smp: opts.smp.keys,
            numa: opts.numa.clone(),
            cpu_model: opts.cpu_model,
            cpu_features: opts.cpu_features.clone(),
            kvm: !opts.accel_qtest,
            vga: opts.vga,
            // QEMU drops its default NIC for any -netdev, -nic or -net.
            nic: if opts
                .backends
                .iter()
                .any(|(o, _)| *o == BackendOption::Netdev)
            {
                Some(false)
            } else {
                opts.nic
            },
            devices,
            device_contexts: contexts,
            serial: opts.serial.first().cloned(),
            kernel: opts.kernel.clone(),
            initrd: opts.initrd.clone(),
            append: opts.append.clone(),
            firmware,
            name: opts.name.clone(),
            backends: list,
            daemonized: opts.daemonize,
            uuid: opts.uuid,
            boot: opts.boot.clone(),
            rtc: opts.rtc.clone(),
            actions: opts.actions,
            globals: opts.globals.clone(),
            name_options: opts.name_options.clone(),
            secrets,
            memory_backends,
            iothreads,
            memory_backend,
            chardevs,
            chardev_consoles,
            serial_chardev,
            monitor_chardevs: opts
                .monitors
                .iter()
                .filter_map(|m| qmp::MonSpec::parse(m).ok().map(|m| m.chardev))
                .collect(),
            audiodevs: opts.audiodevs.clone(),
            sandbox: opts.sandbox.clone(),
        })
    }

    /// A device's `iothread=ID` must name an `-object iothread` (QEMU's link texts).
    pub fn check_iothread(
        &self,
        request: &DeviceRequest,
    ) -> Result<(), crate::iothread::ReferenceError> {
        let Some((_, id)) = request
            .properties
            .iter()
            .rev()
            .find(|(k, _)| k == "iothread")
        else {
            return Ok(());
        };
        crate::iothread::check_reference(
            id,
            |id| self.iothreads.iter().any(|t| t.id == id),
            |id| {
                self.secrets.iter().any(|s| s.id == id)
                    || self.memory_backends.iter().any(|m| m.id == id)
            },
        )
    }

    /// The console COM1 is attached to: machina has no display, so the default console is
    /// the terminal; as in QEMU, -nodefaults drops the default port unless -serial names one.
    pub fn console_spec(&self) -> SerialSpec {
        match &self.serial {
            Some(spec) => spec.clone(),
            None if self.serial_chardev.is_some() => {
                self.serial_chardev.clone().unwrap_or(SerialSpec::None)
            }
            None if self.nodefaults => SerialSpec::None,
            None if self.daemonized => SerialSpec::Null,
            None => SerialSpec::Stdio,
        }
    }

    /// Set a flat CPU count (QMP's `cpus`): no maxcpus, no topology keys.
    pub fn set_cpus(&mut self, cpus: u32) {
        self.cpus = cpus;
        self.max_cpus = None;
        self.smp = machine::SmpKeys::default();
    }

    /// The console a serial port connected to chardev `id` gets.
    pub fn chardev_console(&self, id: &str) -> Option<SerialSpec> {
        self.chardev_consoles
            .iter()
            .find(|(c, _)| c == id)
            .map(|(_, s)| s.clone())
    }

    /// A secret's value by id (`-object secret`).
    pub fn secret(&self, id: &str) -> Option<&[u8]> {
        self.secrets.iter().find(|s| s.id == id).map(|s| s.data())
    }

    /// Where guest RAM comes from: the machine's memory backend, if any, or the `memdev` of
    /// a single NUMA node that holds all of it.
    pub fn ram_backing(&self) -> RamBacking {
        let memdevs: Vec<&String> = self
            .numa
            .iter()
            .filter_map(|a| match &a.option {
                machine::NumaOption::Node {
                    memdev: Some(id), ..
                } => Some(id),
                _ => None,
            })
            .collect();
        let numa_backend = match memdevs.as_slice() {
            [id] => Some(*id),
            _ => None,
        };
        let Some(backend) = self
            .memory_backend
            .as_ref()
            .or(numa_backend)
            .and_then(|id| self.memory_backends.iter().find(|m| m.id == *id))
            .filter(|m| m.size == self.ram_size)
        else {
            return RamBacking::default();
        };
        RamBacking {
            backend: Some(backend.id.clone()),
            size: backend.size,
            file: backend.file.clone(),
            share: backend.share,
            prealloc: backend.prealloc,
            merge: backend.merge,
            dump: backend.dump,
        }
    }

    /// The `-numa` options with each `memdev=`'s size filled in from the memory backends
    /// (a missing one keeps no size: the planner refuses it with QEMU's text).
    fn numa_request(&self) -> Vec<machine::NumaArg> {
        let mut numa = self.numa.clone();
        for arg in &mut numa {
            if let machine::NumaOption::Node {
                memdev: Some(id),
                memdev_size,
                ..
            } = &mut arg.option
            {
                *memdev_size = self
                    .memory_backends
                    .iter()
                    .find(|m| m.id == *id)
                    .map(|m| m.size);
            }
        }
        numa
    }

    /// The request the machine crate plans from.
    pub fn plan_request(&self) -> PlanRequest {
        PlanRequest {
            machine: self.machine.clone(),
            options: self.options.clone(),
            nodefaults: self.nodefaults,
            ram_size: self.ram_size,
            max_ram_size: self.max_ram_size,
            ram_slots: self.ram_slots,
            phys_bits: crate::memory::host_phys_bits(),
            cpus: self.cpus,
            max_cpus: self.max_cpus,
            smp: self.smp,
            numa: self.numa_request(),
            devices: self.devices.clone(),
            serial: self.serial.as_ref().map(|s| !matches!(s, SerialSpec::None)),
            vga: self.vga,
            nic: self.nic,
            // Under qtest no vCPU runs: SMM is the chipset's registers and remapping, as
            // with QEMU's qtest accelerator. machina runs no vCPU in SMM under KVM.
            accel_smm: !self.kvm,
            globals: self
                .globals
                .iter()
                .map(|g| machine::GlobalProperty {
                    driver: g.driver.clone(),
                    property: g.property.clone(),
                    value: g.value.clone(),
                })
                .collect(),
            ..Default::default()
        }
    }
}

/// Everything the command line asks for, checked and planned as at start: character
/// devices, backends, devices and the machine. An error is the one-line message `machina`
/// prints (exit status 1).
pub fn prepare(
    opts: &CliOptions,
    catalog: &machine::Catalog,
) -> Result<(MachineConfig, machine::Plan), String> {
    crate::chardev_check::check(opts).map_err(|e| e.to_string())?;
    let config = MachineConfig::from_cli(opts).map_err(|e| e.to_string())?;
    // QEMU checks the default RAM backend's id when it makes the board, before the
    // -device list; under --preconfig that is at x-exit-preconfig (runner/build.rs).
    if !opts.delay_init {
        if let Ok(machine) = catalog.machine_for(&config.plan_request()) {
            config
                .check_default_ram_id(machine.default_ram_id.as_deref())
                .map_err(|e| e.to_string())?;
        }
    }
    // Under --preconfig QMP may still add NUMA nodes (set-numa-node): the command line's
    // options are checked one by one now, the whole NUMA configuration when the machine is
    // built (QEMU's numa_complete_configuration runs at x-exit-preconfig).
    let mut checked = config.clone();
    if opts.delay_init && !config.numa.is_empty() {
        catalog
            .check_numa(&config.plan_request())
            .map_err(|e| e.to_string())?;
        checked.numa.clear();
    }
    let plan =
        plan_with_context(catalog, &checked, &config.device_contexts).map_err(|message| {
            // A machine-level refusal names the option it came from, as the CLI's own do.
            let base = config.plan_request();
            let base = machine::PlanRequest {
                devices: Vec::new(),
                ..base
            };
            match catalog.plan(&base) {
                Err(e) => match (option_of(&e), opts) {
                    (
                        Some("-m"),
                        CliOptions {
                            memory_arg: Some(a),
                            ..
                        },
                    ) => format!("-m {a}: {message}"),
                    (
                        Some("-machine"),
                        CliOptions {
                            machine_arg: Some(a),
                            ..
                        },
                    ) => {
                        format!("-machine {a}: {message}")
                    }
                    _ => message,
                },
                Ok(_) => message,
            }
        })?;
    // The planner knows which types have an `iothread` property; the id must name one.
    for (request, spec) in config.devices.iter().zip(&opts.devices) {
        config
            .check_iothread(request)
            .map_err(|e| format!("-device {spec}: {e}"))?;
    }
    Ok((config, plan))
}

/// The command-line option a machine-level planning error comes from.
fn option_of(e: &PlanError) -> Option<&'static str> {
    match e {
        PlanError::ZeroRam
        | PlanError::RamTooLarge
        | PlanError::MaxMemBelowRam { .. }
        | PlanError::MaxMemEqualsRam { .. }
        | PlanError::SlotsWithoutMaxMem
        | PlanError::TooManyMemorySlots(_)
        | PlanError::MaxMemUnaligned
        | PlanError::AddressSpaceLimit { .. } => Some("-m"),
        PlanError::UnknownMachine(_)
        | PlanError::UnknownMachineOption { .. }
        | PlanError::ExpectsBool(_)
        | PlanError::BadEnumValue { .. }
        | PlanError::ExpectsInteger(_)
        | PlanError::IntegerOutOfRange { .. }
        | PlanError::ExpectsSize(_)
        | PlanError::UnsupportedOptionValue { .. }
        | PlanError::MaxRamBelow4gTooLarge(_) => Some("-machine"),
        _ => None,
    }
}

/// Plan `config`; an error caused by a `-device` is prefixed with that option as QEMU does
/// (`-device e1000,addr=0x1f: PCI: slot 31 ...`): the first device whose addition makes the
/// plan fail is the one named.
pub fn plan_with_context(
    catalog: &machine::Catalog,
    config: &MachineConfig,
    device_specs: &[String],
) -> Result<machine::Plan, String> {
    // QEMU's hint, if any, follows on a line of its own.
    let text = |e: &machine::PlanError, prefix: String| match e.hint() {
        Some(hint) => format!("{prefix}{e}\n{hint}"),
        None => format!("{prefix}{e}"),
    };
    let full = config.plan_request();
    let error = match catalog.plan(&full) {
        Ok(plan) => return Ok(plan),
        Err(e) => e,
    };
    let mut request = full.clone();
    request.devices.clear();
    if catalog.plan(&request).is_err() {
        return Err(text(&error, String::new()));
    }
    for (device, spec) in full.devices.iter().zip(device_specs) {
        request.devices.push(device.clone());
        if let Err(e) = catalog.plan(&request) {
            return Err(text(&e, format!("{spec}: ")));
        }
    }
    Err(text(&error, String::new()))
}
