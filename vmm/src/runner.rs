//! Runs a planned machine: builds it, starts one thread per vCPU, serves console input from
//! the event loop, and acts on what the guest asks for (power off, reset) or what failed.
//!
//! This module holds the run loop (`run`) and the machine's state changes; building and
//! reset are in `build`, QMP commands and guest events in `handle`, the vCPU threads in
//! `running`, the event-loop subscribers in `subscribers`.

use crate::actions::{ActionEnum, PanicAction, RebootAction, ShutdownAction, WatchdogAction};
use crate::boot::{BootSpec, KernelImage};
use crate::builder::{self, BuildInputs, BuiltMachine};
use crate::console::{Console, ConsoleInput};
use crate::control::{Command, Controller, Reply, RunState};
use crate::vcpu::{RunGate, Vcpu};
use devices::legacy::serial::SerialPort;
use devices::lifecycle::{GuestEvent, Lifecycle, Request};
use devices::timer::TimerQueue;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::Kvm;
use machine::Plan;
use qmp::QmpError;
use serde_json::{json, Value};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

mod build;
mod handle;
mod running;
mod subscribers;

use running::*;
use subscribers::*;

/// How the machine ended; maps to the process exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    PoweredOff,
    ResetWithNoReboot,
    /// QMP `quit`.
    Quit,
    /// SIGTERM, SIGINT or SIGHUP.
    Signal,
    Failed,
}

impl Outcome {
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::PoweredOff | Outcome::ResetWithNoReboot | Outcome::Quit | Outcome::Signal => 0,
            Outcome::Failed => 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot open /dev/kvm: {0}")]
    Kvm(#[source] kvm_ioctls::Error),
    #[error(transparent)]
    Plan(#[from] machine::PlanError),
    #[error(transparent)]
    Build(#[from] builder::BuildError),
    #[error("event loop: {0}")]
    EventLoop(String),
    #[error("cannot start vCPU thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("cannot create the lifecycle eventfd: {0}")]
    Lifecycle(#[source] std::io::Error),
    #[error(transparent)]
    Console(#[from] crate::console::ConsoleError),
    #[error("{0}")]
    Monitor(String),
    #[error(transparent)]
    Global(#[from] crate::globals::GlobalError),
    #[error(transparent)]
    Object(#[from] crate::objects::ObjectError),
}

/// How to run (what to boot comes from the controller's configuration).
pub struct RunOptions {
    pub bundled_kernel: &'static [u8],
    pub start_paused: bool,
    /// `-delay-machine-init`: wait for QMP to build the machine.
    pub delay_init: bool,
    /// `-qtest`: build without booting (reset state), never run vCPUs, serve qtest.
    pub qtest: Option<crate::qtest::QtestEndpoint>,
    pub trace_start: Option<Instant>,
}

type EventLoop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// The run loop's state between events.
struct Machine<'a> {
    kvm: Kvm,
    control: Arc<Controller>,
    options: &'a RunOptions,
    lifecycle: Lifecycle,
    gate: Arc<RunGate>,
    events: EventLoop,
    /// COM1's console, opened at the first build (QMP may choose it before).
    console: Option<devices::legacy::serial::SharedWriter>,
    serial_slot: SerialSlot,
    running: Option<Running>,
    qtest: crate::qtest::QtestSlot,
    /// Backend handles that backends.rs does not hold open itself (entropy sources, console
    /// outputs), opened at the first build and shared by every later one: a reset must not
    /// truncate a log or rebind a socket. (Drives and taps are held by their `Backend`.)
    backends: crate::virtio_devices::OpenBackends,
    /// The termination signal received (signal number, sending pid), if any.
    signal: Arc<Mutex<Option<(u32, u32)>>>,
    /// The host clock an RTC with `-rtc clock=host|rt` runs on: it goes on while the
    /// machine is stopped (the virtual clock does not) and under qtest (where only the test
    /// moves the virtual clock); made at the first build.
    rtc_host_clock: Option<Arc<TimerQueue>>,
    /// A build happened: `-boot once=` no longer applies (QEMU restores `order=` at the
    /// first reset).
    booted_once: bool,
    /// The RTC of the current incarnation, and its state taken at a reset for the next.
    rtc: Option<Arc<Mutex<devices::legacy::cmos::Cmos>>>,
    rtc_state: Option<devices::legacy::cmos::CmosState>,
    /// Guest RAM kept over a system reset (QEMU does not clear RAM on reset).
    kept_ram: Option<crate::memory::GuestMemory>,
}

impl Machine<'_> {
    /// The virtual clock runs while the vCPUs may (QEMU's cpu_enable_ticks/disable_ticks);
    /// call after every change of the gate.
    fn sync_clock(&self) {
        self.lifecycle.clock().set_running(self.gate.is_running());
    }

    fn set_status(&self, status: RunState) {
        self.control.state().status = status;
    }

    fn resume(&mut self) {
        // Under qtest the accelerator runs no vCPU code at all.
        if self.options.qtest.is_none() {
            self.gate.set_running(true);
        }
        self.sync_clock();
        self.set_status(RunState::Running);
        self.control.emit("RESUME", Value::Null);
    }

    /// A disk request failed with the `stop` action (QEMU's blk_error_action): its
    /// BLOCK_IO_ERROR, then the machine stops in `io-error` until `cont` retries it.
    fn io_error_stop(&mut self) {
        for e in self.lifecycle.take_io_errors() {
            self.control.emit(
                "BLOCK_IO_ERROR",
                json!({"device": e.device, "node-name": e.device, "operation": e.operation,
                       "action": "stop", "nospace": e.nospace, "reason": e.reason}),
            );
        }
        if self.control.state().status != RunState::Running {
            return;
        }
        if let Some(running) = &self.running {
            running.pause(&self.gate);
        }
        self.set_status(RunState::IoError);
        self.control.emit("STOP", Value::Null);
    }

    /// Stop the vCPUs and drop the machine's event-loop subscribers.
    fn stop_running(&mut self) -> Option<crate::kvm_vm::KvmVm> {
        let mut running = self.running.take()?;
        for id in std::mem::take(&mut running.subscribers) {
            let _ = self.events.remove_subscriber(id);
        }
        Some(running.stop())
    }

    /// The guest ended the machine (`shutdown` is the SHUTDOWN event's data). Without
    /// `-no-shutdown` that ends the process with `outcome`; with it the process (and QMP)
    /// stays, the vCPUs stopped in state `shutdown`, as QEMU does: SHUTDOWN, then STOP if
    /// it ran. The state changes before the events, so a client that sees them and asks
    /// `query-status` gets `shutdown`.
    fn guest_shutdown(&mut self, shutdown: Value, outcome: Outcome) -> Option<Outcome> {
        if self.actions().shutdown != ShutdownAction::Pause {
            self.control.emit("SHUTDOWN", shutdown);
            return Some(outcome);
        }
        let was_running = self.gate.is_running();
        if let Some(running) = &self.running {
            running.pause(&self.gate);
        }
        self.gate.set_running(false);
        self.sync_clock();
        self.set_status(RunState::Shutdown);
        self.control.emit("SHUTDOWN", shutdown);
        if was_running {
            self.control.emit("STOP", Value::Null);
        }
        None
    }

    fn actions(&self) -> crate::actions::Actions {
        self.control.state().config.actions
    }

    /// Stop a running machine in `status` (QEMU's vm_stop): STOP if it ran.
    fn vm_stop(&mut self, status: RunState) {
        let was_running = self.control.state().status == RunState::Running;
        if let Some(running) = &self.running {
            running.pause(&self.gate);
        }
        self.gate.set_running(false);
        self.sync_clock();
        if was_running {
            self.set_status(status);
            self.control.emit("STOP", Value::Null);
        }
    }

    /// The ACPI power button (QMP system_powerdown, watchdog action shutdown).
    fn powerdown(&mut self) {
        if let Some(host) = self.control.state().pci.as_ref() {
            host.lock()
                .unwrap_or_else(|e| e.into_inner())
                .power_button();
        }
        self.control.emit("POWERDOWN", Value::Null);
    }

    fn finish(&mut self, outcome: Outcome) -> Outcome {
        if self.options.qtest.is_some() {
            self.qtest.quiesce();
        }
        if let Some(running) = &self.running {
            if self.options.trace_start.is_some() {
                if let Some((vmm, guest)) = crate::memory::rss_split(&running.vm.memory) {
                    eprintln!("machina-trace: rss vmm_kib={vmm} guest_kib={guest}");
                }
            }
        }
        drop(self.stop_running());
        // Commands queued now would wait for ever for an answer (and hold their QMP client
        // open at exit): fail them, and any later one.
        self.control.close();
        if outcome != Outcome::Failed {
            self.set_status(RunState::Shutdown);
        }
        if let Some(console) = &self.console {
            let _ = std::io::Write::flush(&mut console.clone());
        }
        outcome
    }
}

/// Run the machine described by `control`'s configuration until it ends. `start_monitor`
/// runs before the machine is built, so that clients are greeted while it is (QEMU's monitor
/// I/O thread does the same); `monitor_ready` runs once the machine exists (at once under
/// `-delay-machine-init`) and lets the monitors serve commands, so that, as in QEMU,
/// commands are only served after machine initialization unless preconfig asks.
pub fn run(
    control: Arc<Controller>,
    options: &RunOptions,
    start_monitor: impl FnOnce() -> Result<(), String>,
    monitor_ready: impl FnOnce() -> Result<(), String>,
) -> Result<Outcome, RunError> {
    let kvm = Kvm::new().map_err(RunError::Kvm)?;
    // A no-op handler: the signal only needs to interrupt KVM_RUN with EINTR.
    register_signal_handler(SIGRTMIN(), kick_handler)
        .map_err(|e| RunError::EventLoop(format!("cannot install the vCPU kick signal: {e}")))?;
    // Device timers: under qtest only the test moves the virtual clock.
    let clock = if options.qtest.is_some() {
        TimerQueue::manual()
    } else {
        TimerQueue::host()
    };
    // Stopped until the vCPUs first run (the gate starts closed).
    clock.set_running(false);
    let lifecycle = Lifecycle::with_clock(clock.clone()).map_err(RunError::Lifecycle)?;
    let mut events = EventLoop::new().map_err(|e| RunError::EventLoop(format!("{e:?}")))?;
    // Before any thread starts, so that every thread inherits the blocked mask and only the
    // signalfd sees the termination signals.
    let signal = Arc::new(Mutex::new(None));
    let signals = SignalSubscriber::new(signal.clone())
        .map_err(|e| RunError::EventLoop(format!("cannot watch termination signals: {e}")))?;
    events.add_subscriber(Arc::new(Mutex::new(signals)));
    events.add_subscriber(Arc::new(Mutex::new(LifecycleSubscriber {
        lifecycle: lifecycle.clone(),
    })));
    events.add_subscriber(Arc::new(Mutex::new(ControlSubscriber {
        control: control.clone(),
    })));

    let mut machine = Machine {
        kvm,
        control,
        options,
        lifecycle,
        gate: Arc::new(RunGate::new(false)),
        events,
        console: None,
        serial_slot: Arc::new(Mutex::new(None)),
        running: None,
        backends: Default::default(),
        signal,
        qtest: crate::qtest::QtestState::new(clock),
        rtc_host_clock: None,
        booted_once: false,
        rtc: None,
        rtc_state: None,
        kept_ram: None,
    };
    if let Some(endpoint) = &options.qtest {
        crate::qtest::start(endpoint, machine.qtest.clone())
            .map_err(|e| RunError::Monitor(e.to_string()))?;
    }
    if !options.delay_init {
        machine.open_chardevs()?;
    }
    start_monitor().map_err(RunError::Monitor)?;
    if !options.delay_init {
        machine.build()?;
        if options.start_paused {
            machine.set_status(RunState::Prelaunch);
        } else {
            if options.qtest.is_none() {
                machine.gate.set_running(true);
            }
            machine.sync_clock();
            machine.set_status(RunState::Running);
        }
    }
    monitor_ready().map_err(RunError::Monitor)?;

    loop {
        machine
            .events
            .run_with_timeout(1000)
            .map_err(|e| RunError::EventLoop(format!("{e:?}")))?;
        for (command, reply) in machine.control.take() {
            let (answer, outcome) = machine.handle(command);
            let _ = reply.send(answer);
            if let Some(outcome) = outcome {
                return Ok(machine.finish(outcome));
            }
        }
        for event in machine.lifecycle.take_events() {
            if let Some(outcome) = machine.guest_event(event)? {
                return Ok(machine.finish(outcome));
            }
        }
        let request = machine.lifecycle.take();
        for (bus, slot) in machine.lifecycle.take_ejects() {
            if let Some(running) = machine.running.as_mut() {
                crate::hotplug::eject(&machine.control, &bus, slot, &mut running.hot_added);
            }
        }
        for index in machine.lifecycle.take_cpu_ejects() {
            if let Some(running) = machine.running.as_mut() {
                crate::cpu_hotplug::eject(&machine.control, &mut running.hot_cpus, index);
            }
        }
        if let Some(outcome) = machine.guest_request(request)? {
            return Ok(machine.finish(outcome));
        }
        let signal = machine
            .signal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((signo, pid)) = signal {
            // QEMU's report and event (qemu_system_killed / qemu_kill_report).
            eprintln!("machina: terminating on signal {signo} from pid {pid}");
            machine
                .control
                .emit("SHUTDOWN", json!({"guest": false, "reason": "host-signal"}));
            return Ok(machine.finish(Outcome::Signal));
        }
    }
}
