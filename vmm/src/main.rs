//! `machina`: a KVM virtual machine monitor for QEMU's q35 and i440fx machine types.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;
use vmm::cli::{self, Action};
use vmm::control::{Controller, RunState, VmState};
use vmm::runner::{self, RunOptions};

/// The tiny guest kernel from resources/guest, built by build.rs.
static BUNDLED_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/machina-guest.elf"));

fn main() -> ExitCode {
    let start = Instant::now();
    // OS strings: a non-UTF-8 argument (a name, a path) is valid, as it is for QEMU.
    match run(std::env::args_os().skip(1).collect(), start) {
        Ok(code) => ExitCode::from(code),
        Err(message) => {
            // An option read from -readconfig is named by its FILE:LINE.
            vmm::logging::report_error(&cli::readconfig::locate(&message));
            ExitCode::from(1)
        }
    }
}

/// Print help-style output for the non-run actions; false when the action is to run.
fn informational(action: &Action, catalog: &machine::Catalog) -> Result<bool, String> {
    let text = match action {
        Action::Run => return Ok(false),
        Action::Help => cli::help_text(),
        Action::Version => format!(
            "machina version {} (QEMU {} machine types)\nA KVM VMM for q35 and pc; see README.md\n",
            env!("CARGO_PKG_VERSION"),
            machine::QEMU_VERSION
        ),
        Action::MachineHelp => machine::help::machine_help(catalog),
        // An unknown type lists the types, as QEMU does.
        Action::MachineOptions(ty) => machine::help::machine_options_help(catalog, ty)
            .unwrap_or_else(|_| machine::help::machine_help(catalog)),
        Action::DeviceHelp => machine::help::device_help(catalog),
        Action::DeviceProperties(ty) => machine::help::device_properties_help(catalog, ty)
            .map_err(|e| format!("-device {ty},help: {e}"))?,
    };
    print!("{text}");
    Ok(true)
}

/// Whether a QMP monitor of the command line listens on a socket (errors are left to
/// `start_qmp`, which reports them where it always did).
fn qmp_listens(opts: &cli::CliOptions) -> bool {
    let listens = |ep: &qmp::QmpEndpoint| {
        matches!(
            ep,
            qmp::QmpEndpoint::Unix { server: true, .. }
                | qmp::QmpEndpoint::Tcp { server: true, .. }
                | qmp::QmpEndpoint::Fd { server: true, .. }
        )
    };
    if opts
        .qmp
        .iter()
        .any(|spec| qmp::QmpEndpoint::parse_qmp(spec).is_ok_and(|ep| listens(&ep)))
    {
        return true;
    }
    if opts.monitors.is_empty() {
        return false;
    }
    let Ok(chardevs) = opts
        .chardevs
        .iter()
        .map(qmp::ChardevSpec::parse)
        .collect::<Result<Vec<_>, _>>()
    else {
        return false;
    };
    opts.monitors.iter().any(|text| {
        qmp::MonSpec::parse(text)
            .and_then(|mon| qmp::resolve_monitors(&chardevs, &[mon]))
            .is_ok_and(|eps| eps.iter().any(listens))
    })
}

/// Start every QMP monitor the command line asked for; the first listening one accepts on
/// `accept_thread`.
fn start_qmp(
    opts: &cli::CliOptions,
    control: &Arc<Controller>,
    mut accept_thread: Option<qmp::AcceptThread>,
) -> Result<Option<qmp::Server>, String> {
    let mut endpoints = Vec::new();
    for spec in &opts.qmp {
        endpoints.push(
            qmp::QmpEndpoint::parse_qmp(spec)
                .map_err(|e| format!("-qmp {}: {e}", cli::lossy(spec)))?,
        );
    }
    if !opts.monitors.is_empty() {
        let chardevs = opts
            .chardevs
            .iter()
            .map(|c| {
                qmp::ChardevSpec::parse(c).map_err(|e| format!("-chardev {}: {e}", cli::lossy(c)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for text in &opts.monitors {
            let mon = qmp::MonSpec::parse(text).map_err(|e| format!("-mon {text}: {e}"))?;
            endpoints.extend(
                qmp::resolve_monitors(&chardevs, &[mon])
                    .map_err(|e| format!("-mon {text}: {e}"))?,
            );
        }
    }
    if endpoints.is_empty() {
        if opts.delay_init {
            return Err(
                "-delay-machine-init needs a QMP monitor (-qmp) to configure and build the machine"
                    .into(),
            );
        }
        return Ok(None);
    }
    // The commands are made once the sockets listen, while the first clients are greeted:
    // the greeting does not need them, and commands are held until they exist.
    let server = qmp::Server::registry_later(qmp::ServerConfig::default());
    server.set_machine_ready(!opts.delay_init);
    control.set_server(server.clone());
    let events = control.clone();
    vmm::netdev::set_event_sink(Box::new(move |name, data| events.emit(name, data)));
    for endpoint in &endpoints {
        server
            .listen_on(endpoint, accept_thread.take())
            .map_err(|e| format!("-qmp: {e}"))?;
    }
    server.set_registry(vmm::monitor::registry(control).map_err(|e| e.to_string())?);
    // Clients are greeted while the machine is built; their commands wait for it (released
    // by `monitor_ready` in `run`). Preconfig has nothing to wait for.
    server.hold_commands(!opts.delay_init);
    Ok(Some(server))
}

/// `-overcommit mem-lock=on|on-fault`: lock all current and future memory (QEMU's os_mlock).
fn lock_memory(lock: cli::MemLock) -> Result<(), String> {
    let flags = match lock {
        cli::MemLock::Off => return Ok(()),
        cli::MemLock::On => libc::MCL_CURRENT | libc::MCL_FUTURE,
        cli::MemLock::OnFault => libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT,
    };
    // SAFETY: mlockall only changes how this process's pages are kept in memory.
    if unsafe { libc::mlockall(flags) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!(
            "locking memory failed (mlockall: {})",
            vmm::daemon::strerror(&e)
        ));
    }
    Ok(())
}

/// `-name ...,process=NAME`: the process name shown by ps/top (at most 15 bytes).
fn set_process_name(name: &str) {
    let mut bytes: Vec<u8> = name.bytes().filter(|&b| b != 0).take(15).collect();
    bytes.push(0);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, bytes.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

/// `-daemonize` leaves no terminal: refuse what would use stdio, with QEMU's texts.
fn check_daemonize(opts: &cli::CliOptions) -> Result<(), String> {
    const STDIO: &str = "cannot use stdio with -daemonize";
    if opts.nographic && !opts.nodefaults {
        return Err("-nographic cannot be used with -daemonize".into());
    }
    if opts.serial.contains(&cli::SerialSpec::Stdio) {
        return Err(format!("-serial stdio: {STDIO}"));
    }
    for spec in &opts.qmp {
        if matches!(
            qmp::QmpEndpoint::parse_qmp(spec),
            Ok(qmp::QmpEndpoint::Stdio)
        ) {
            return Err(format!("-qmp {}: {STDIO}", cli::lossy(spec)));
        }
    }
    for spec in &opts.chardevs {
        if qmp::ChardevSpec::parse(spec).is_ok_and(|c| c.backend == "stdio") {
            return Err(format!("-chardev {}: {STDIO}", cli::lossy(spec)));
        }
    }
    Ok(())
}

fn run(args: Vec<std::ffi::OsString>, start: Instant) -> Result<u8, String> {
    let opts = cli::parse(args).map_err(|e| e.to_string())?;
    // Shares the process-wide catalog (and what it resolves) unless files are merged.
    let mut catalog = machine::Catalog::builtin().clone();
    for path in &opts.machine_definitions {
        catalog
            .load_file(path)
            .map_err(|e| format!("-machine-definition {}: {e}", path.display()))?;
    }
    if informational(&opts.action, &catalog)? {
        return Ok(0);
    }
    vmm::logging::set_message_prefix(
        opts.msg.timestamp,
        opts.name.clone().filter(|_| opts.msg.guest_name),
    );
    // -d, -D, -trace: help texts exit here, as in QEMU; the logger reports from now on.
    if let vmm::logging::Setup::Exit(code) = vmm::logging::setup(&opts.log, opts.msg.timestamp)? {
        return Ok(code);
    }
    if opts.daemonize {
        check_daemonize(&opts)?;
    }
    // The fds libvirt passed; the originals are closed once everything is set up.
    let mut inherited = Vec::new();
    for spec in &opts.add_fds {
        inherited.push(vmm::fdset::add_from_cli(spec).map_err(|e| e.to_string())?);
    }
    // As in QEMU, fork before anything else starts (no thread exists yet); from here on an
    // error is printed by the daemon on the stderr it shares with the waiting parent.
    let mut daemon = match opts.daemonize {
        true => Some(vmm::daemon::daemonize().map_err(|e| e.to_string())?),
        false => None,
    };
    let _pidfile = match &opts.pidfile {
        Some(path) => Some(vmm::daemon::PidFile::create(path).map_err(|e| e.to_string())?),
        None => None,
    };
    // After the fork: memory locks are not inherited.
    lock_memory(opts.mem_lock)?;
    if let Some(process) = &opts.name_options.process {
        set_process_name(process);
    }
    // The QMP accept thread starts now (after the fork), while the machine is planned, so
    // that it is waiting when the socket listens (see `qmp::AcceptThread`).
    let accept_thread = match qmp_listens(&opts) {
        true => Some(qmp::AcceptThread::spawn().map_err(|e| format!("-qmp: {e}"))?),
        false => None,
    };

    // The command line's machine must plan now, even if QMP builds it later.
    let (config, plan) = vmm::config::prepare(&opts, &catalog)?;
    check_cpu_features(&opts, plan.cpus)?;
    let inspect_only = opts.start_paused || opts.delay_init || opts.qtest.is_some();
    if plan.family == machine::Family::None && !inspect_only {
        // QEMU's `none` has no chipset, console or firmware interface: nothing could run.
        return Err(format!(
            "machine type '{}' has no chipset to boot a kernel on; use it with -S to inspect it",
            plan.machine
        ));
    }
    let control = Arc::new(
        Controller::new(VmState {
            status: RunState::Prelaunch,
            config,
            catalog,
            plan: None,
            pci: None,
            layout: None,
            vcpu_thread_ids: Vec::new(),
            unplug_pending: Default::default(),
            hot_cpus: Default::default(),
        })
        .map_err(|e| e.to_string())?,
    );
    // As QEMU does at -object: the I/O threads exist before the machine.
    let iothreads = control.state().config.iothreads.clone();
    for spec in iothreads {
        control.iothreads.add(spec).map_err(|e| e.to_string())?;
    }
    if opts.delay_init && opts.qmp.is_empty() && opts.monitors.is_empty() {
        return Err(
            "-delay-machine-init needs a QMP monitor (-qmp) to configure and build the machine"
                .into(),
        );
    }
    let qtest = match &opts.qtest {
        Some(spec) => Some(vmm::qtest::QtestEndpoint::parse(spec).map_err(|e| e.to_string())?),
        None if opts.accel_qtest => {
            return Err("-accel qtest: needs -qtest unix:PATH or -qtest stdio".into())
        }
        None => None,
    };
    let trace_start = std::env::var_os("MACHINA_TRACE").map(|_| start);
    let mut server = None;
    let result = runner::run(
        control.clone(),
        &RunOptions {
            bundled_kernel: BUNDLED_GUEST,
            start_paused: opts.start_paused,
            delay_init: opts.delay_init,
            qtest,
            trace_start,
        },
        || {
            // The sets hold duplicates; the originals go before any client is served.
            vmm::fdset::close_inherited(&inherited);
            server = start_qmp(&opts, &control, accept_thread)?;
            Ok(())
        },
        || {
            if let Some(server) = control.server() {
                server.hold_commands(false);
            }
            // The machine exists and the monitors serve: a daemon's parent may now exit 0.
            if let Some(daemon) = daemon.as_mut() {
                daemon.ready()?;
            }
            Ok(())
        },
    );
    if let Some(server) = server {
        // Flush SHUTDOWN and the last answers to every client before exiting.
        server.shutdown();
    }
    let outcome = result.map_err(|e| e.to_string())?;
    if let Some(start) = trace_start {
        eprintln!("machina-trace: exit us={}", start.elapsed().as_micros());
    }
    Ok(outcome.exit_code() as u8)
}

/// QEMU's x86_cpu_filter_features at each initial vCPU's realize: a warning per feature
/// the -cpu model asks for that KVM cannot give (`check`, on by default), or a refusal to
/// start (`enforce`). Under qtest no vCPU runs, so nothing is filtered.
fn check_cpu_features(opts: &cli::CliOptions, cpus: u32) -> Result<(), String> {
    let Some(model) = opts.cpu_model.filter(|_| !opts.accel_qtest) else {
        return Ok(());
    };
    let Some(supported) = vmm::kvm_vm::supported_cpuid() else {
        return Ok(());
    };
    let missing = vmm::cpu_models::missing_features(model, &opts.cpu_features, supported);
    if opts.cpu_check || opts.cpu_enforce {
        for _ in 0..cpus {
            for line in &missing {
                log::warn!("{line}");
            }
        }
    }
    if opts.cpu_enforce && !missing.is_empty() {
        return Err("Host doesn't support requested features".into());
    }
    Ok(())
}
