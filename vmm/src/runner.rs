//! Runs a planned machine: builds it, starts one thread per vCPU, serves console input from
//! the event loop, and acts on what the guest asks for (power off, reset) or what failed.

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

/// The current serial port, replaced at every (re)build, fed by the console input.
type SerialSlot = Arc<Mutex<Option<Arc<Mutex<SerialPort>>>>>;

/// Feeds console input (stdin or a socket client) into the serial port.
struct ConsoleInputSubscriber {
    input: ConsoleInput,
    console: Console,
    serial: SerialSlot,
}

impl ConsoleInputSubscriber {
    fn deliver(&self, bytes: &[u8]) {
        let slot = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(port) = slot.as_ref() {
            // Input beyond the FIFO is dropped, as on a real UART with no flow control.
            port.lock()
                .unwrap_or_else(|e| e.into_inner())
                .enqueue_input(bytes);
        }
    }
}

impl MutEventSubscriber for ConsoleInputSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = match &self.input {
            ConsoleInput::None => Ok(()),
            ConsoleInput::Stdin => ops.add(Events::new_raw(0, EventSet::IN)),
            ConsoleInput::Fd(file) => ops.add(Events::new(file, EventSet::IN)),
            ConsoleInput::Socket { listener, client } => {
                let r = ops.add(Events::new(listener, EventSet::IN));
                if let Some(c) = client {
                    let _ = ops.add(Events::new(c, EventSet::IN));
                }
                r
            }
        };
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        let fd = events.fd();
        match &mut self.input {
            ConsoleInput::Stdin => match std::io::stdin().lock().read(&mut buf) {
                Ok(n) if n > 0 => self.deliver(&buf[..n]),
                // EOF or error: stop watching stdin.
                _ => {
                    let _ = ops.remove(Events::new_raw(fd, EventSet::IN));
                }
            },
            ConsoleInput::Socket { listener, client } => {
                if fd == listener.as_raw_fd() {
                    if let Ok((stream, _)) = listener.accept() {
                        // Non-blocking, as QEMU's chardevs: a client that stops reading loses
                        // output instead of blocking the vCPU in the UART write.
                        let _ = stream.set_nonblocking(true);
                        if let Ok(out) = stream.try_clone() {
                            self.console.output.replace(Box::new(out));
                        }
                        let _ = ops.add(Events::new(&stream, EventSet::IN));
                        if let Some(old) = client.replace(stream) {
                            let _ = ops.remove(Events::new(&old, EventSet::IN));
                        }
                    }
                } else if let Some(stream) = client.as_mut() {
                    match stream.read(&mut buf) {
                        Ok(n) if n > 0 => {
                            let data = buf[..n].to_vec();
                            self.deliver(&data);
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                            ) => {}
                        _ => {
                            let _ = ops.remove(Events::new(&*stream, EventSet::IN));
                            *client = None;
                            self.console.output.replace(Box::new(std::io::sink()));
                        }
                    }
                }
            }
            ConsoleInput::Fd(file) => match file.read(&mut buf) {
                Ok(n) if n > 0 => self.deliver(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // EOF or a hard error: stop watching it.
                _ => {
                    let _ = ops.remove(Events::new_raw(fd, EventSet::IN));
                }
            },
            ConsoleInput::None => {}
        }
    }
}

/// Wakes the event loop when a device or vCPU makes a lifecycle request.
struct LifecycleSubscriber {
    lifecycle: Lifecycle,
}

impl MutEventSubscriber for LifecycleSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.lifecycle.eventfd(), EventSet::IN));
    }
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // The request stays latched; the run loop reads it after the dispatch.
        let _ = self.lifecycle.eventfd().read();
    }
}

/// vCPU threads of one incarnation of the machine.
struct Running {
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// Event-loop subscribers that belong to this incarnation (the INTx forwarder).
    subscribers: Vec<event_manager::SubscriberId>,
    /// The virtio devices' I/O threads, stopped and joined after the vCPUs.
    device_threads: crate::virtio_devices::DeviceThreads,
    /// Hot-added functions' I/O threads, likewise.
    hot_added: crate::hotplug::HotAdded,
    /// Hot-added vCPUs' threads and the parked fds of ejected ones.
    hot_cpus: crate::cpu_hotplug::HotCpus,
    /// The PCI host and the INTx forwarder, for hot-added functions.
    pci: Option<devices::pci::SharedHost>,
    intx_forwarder: Arc<crate::virtio_devices::IntxForwarder>,
    /// The buses, cleared at teardown to break the cycles through them (config ports ->
    /// PCI host -> buses) so that the whole incarnation is freed.
    io: Arc<devices::bus::Bus>,
    mmio: Arc<devices::bus::Bus>,
    /// The VM fd and guest memory, which must outlive the vCPU threads.
    vm: crate::kvm_vm::KvmVm,
    /// Host thread id of each vCPU thread, by vCPU index.
    thread_ids: Vec<i32>,
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The calling thread's host thread id (what `query-cpus-fast` reports as `thread-id`).
fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments, cannot fail and touches no memory.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

impl Running {
    fn start(
        machine: BuiltMachine,
        lifecycle: &Lifecycle,
        gate: &Arc<RunGate>,
        trace_start: Option<Instant>,
    ) -> Result<Self, RunError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let count = machine.vcpus.len();
        for (index, fd) in machine.vcpus.into_iter().enumerate() {
            let mut vcpu = Vcpu {
                fd,
                index: index as u32,
                io: machine.io.clone(),
                mmio: machine.mmio.clone(),
                view: machine.vm.view.clone(),
                lifecycle: lifecycle.clone(),
                stop: stop.clone(),
                gate: gate.clone(),
                trace_start,
            };
            let tid_tx = tid_tx.clone();
            let crash = lifecycle.clone();
            // QEMU's vCPU thread names, which libvirt and ps show.
            let handle = std::thread::Builder::new()
                .name(format!("CPU {index}/KVM"))
                .spawn(move || {
                    let _ = tid_tx.send((index, gettid()));
                    drop(tid_tx);
                    // A panicking vCPU is a failure to report, never a machine that hangs
                    // with one CPU gone.
                    let outcome =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| vcpu.run()));
                    if outcome.is_err() {
                        eprintln!("machina: vCPU {index} stopped: internal error (panic)");
                        crash.request(Request::Crash);
                    }
                })
                .map_err(RunError::Thread)?;
            threads.push(handle);
        }
        drop(tid_tx);
        let mut thread_ids = vec![0; count];
        // Each thread sends its id first thing; the loop ends when every sender is gone.
        for (index, tid) in tid_rx {
            if let Some(slot) = thread_ids.get_mut(index) {
                *slot = tid;
            }
        }
        Ok(Self {
            threads,
            stop,
            subscribers: Vec::new(),
            device_threads: Default::default(),
            hot_added: Default::default(),
            hot_cpus: Default::default(),
            pci: machine.pci,
            intx_forwarder: machine.intx_forwarder,
            io: machine.io,
            mmio: machine.mmio,
            vm: machine.vm,
            thread_ids,
        })
    }

    /// Hold every vCPU at the gate: close it, then kick threads out of KVM_RUN until all are
    /// parked (or gone).
    fn pause(&self, gate: &RunGate) {
        gate.set_running(false);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let alive: Vec<&JoinHandle<()>> = self
                .threads
                .iter()
                .chain(self.hot_cpus.handles())
                .filter(|h| !h.is_finished())
                .collect();
            if gate.parked() >= alive.len() || Instant::now() > deadline {
                return;
            }
            for handle in alive {
                let _ = handle.kill(SIGRTMIN());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Make every vCPU leave KVM_RUN once (it then sees what changed, e.g. an NMI request).
    fn kick(&self) {
        for handle in self.threads.iter().filter(|h| !h.is_finished()) {
            let _ = handle.kill(SIGRTMIN());
        }
    }

    /// Stop every vCPU: raise the flag, then kick threads out of KVM_RUN until they return;
    /// then unmap every device so nothing of this incarnation keeps another part alive.
    /// Returns the VM, to be dropped after the threads that used it.
    fn stop(self) -> crate::kvm_vm::KvmVm {
        self.stop.store(true, Ordering::SeqCst);
        for (index, handle) in self.threads.into_iter().enumerate() {
            // A vCPU blocked outside KVM_RUN (a device writing to a host file that does not
            // drain) must not hang a reset or the exit: past the deadline it is left to end
            // on its own (it owns what it uses and sees the stop flag when it returns).
            let deadline = Instant::now() + Duration::from_secs(10);
            while !handle.is_finished() && Instant::now() < deadline {
                let _ = handle.kill(SIGRTMIN());
                std::thread::sleep(Duration::from_millis(1));
            }
            if handle.is_finished() {
                let _ = handle.join();
            } else {
                eprintln!("machina: vCPU {index} does not stop (blocked in a device); left behind");
            }
        }
        drop(self.hot_cpus);
        // The devices' I/O threads next: no vCPU can kick them any more.
        drop(self.device_threads);
        drop(self.hot_added);
        drop(self.pci);
        self.io.clear();
        self.mmio.clear();
        self.vm
    }
}

/// Applies virtio INTx changes to the PCI host outside the devices' locks.
struct IntxSubscriber {
    forwarder: Arc<crate::virtio_devices::IntxForwarder>,
    host: devices::pci::SharedHost,
}

impl MutEventSubscriber for IntxSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.forwarder.eventfd(), EventSet::IN));
    }
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        self.forwarder.apply(&self.host);
    }
}

/// The signals that end the process the way QEMU ends it (`virsh destroy`, qtest_quit and
/// a terminal's ^C send them).
const TERMINATION_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Reads termination signals from a signalfd in the event loop, so that no code runs in a
/// signal handler and the loop ends the machine in order (SHUTDOWN event, sockets removed).
struct SignalSubscriber {
    fd: std::os::fd::OwnedFd,
    received: Arc<Mutex<Option<(u32, u32)>>>,
}

impl SignalSubscriber {
    /// Block the termination signals in the calling thread (and so in every thread it
    /// starts later) and open a signalfd for them.
    fn new(received: Arc<Mutex<Option<(u32, u32)>>>) -> std::io::Result<Self> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t owned by this frame; the signal numbers are valid.
        unsafe {
            libc::sigemptyset(&mut set);
            for sig in TERMINATION_SIGNALS {
                libc::sigaddset(&mut set, sig);
            }
        }
        // SAFETY: `set` is initialised; the old mask is not wanted.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        // SAFETY: -1 asks for a new fd; `set` is initialised; the flags are valid.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a new fd that nothing else owns.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Ok(Self { fd, received })
    }
}

impl MutEventSubscriber for SignalSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new_raw(self.fd.as_raw_fd(), EventSet::IN));
    }
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        loop {
            // SAFETY: signalfd_siginfo is plain data, filled by read below.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: reads at most `size` bytes into `info`, which is that large.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    size,
                )
            };
            if n != size as isize {
                return;
            }
            let mut received = self.received.lock().unwrap_or_else(|e| e.into_inner());
            received.get_or_insert((info.ssi_signo, info.ssi_pid));
        }
    }
}

/// Wakes the event loop when QMP queues a command.
struct ControlSubscriber {
    control: Arc<Controller>,
}

impl MutEventSubscriber for ControlSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.control.wake_fd(), EventSet::IN));
    }
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // The commands stay queued; the run loop takes them after the dispatch.
    }
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
    fn console(&mut self) -> Result<devices::legacy::serial::SharedWriter, RunError> {
        if let Some(out) = &self.console {
            return Ok(out.clone());
        }
        let spec = self.control.state().config.console_spec();
        let mut console = Console::open(&spec)?;
        let output = console.output.clone();
        let input = std::mem::replace(&mut console.input, ConsoleInput::None);
        self.events
            .add_subscriber(Arc::new(Mutex::new(ConsoleInputSubscriber {
                input,
                console,
                serial: self.serial_slot.clone(),
            })));
        self.console = Some(output.clone());
        Ok(output)
    }

    /// Open the serial console and the virtio consoles' chardevs (what a client may look
    /// for once it has the greeting), before the monitors listen, as QEMU creates chardevs
    /// first.
    fn open_chardevs(&mut self) -> Result<(), RunError> {
        self.console()?;
        let (plan, backends) = {
            let state = self.control.state();
            let chardevs = state
                .config
                .backends
                .iter()
                .any(|b| matches!(b, crate::backends::Backend::Chardev { .. }));
            if !chardevs {
                return Ok(());
            }
            (
                state.catalog.plan(&state.config.plan_request())?,
                state.config.backends.clone(),
            )
        };
        self.backends
            .open_consoles(&plan, &backends)
            .map_err(|e| RunError::Build(e.into()))
    }

    /// Plan from the current configuration, build exactly that plan, start the vCPU threads
    /// (held by the gate while not running). Returns the plan.
    fn build(&mut self) -> Result<Plan, RunError> {
        let (mut plan, config) = {
            let state = self.control.state();
            (
                state.catalog.plan(&state.config.plan_request())?,
                state.config.clone(),
            )
        };
        crate::globals::apply(&mut plan, &config.globals)?;
        let rtc_clock = match config.rtc.clock {
            crate::cli::RtcClock::Host | crate::cli::RtcClock::Rt => self
                .rtc_host_clock
                .get_or_insert_with(TimerQueue::host)
                .clone(),
            crate::cli::RtcClock::Vm => self.lifecycle.clock().clone(),
        };
        let boot = BootSpec {
            kernel: match &config.kernel {
                Some(path) => KernelImage::File(path.clone()),
                None => KernelImage::Bundled(self.options.bundled_kernel),
            },
            initrd: config.initrd.clone(),
            cmdline: config.append.clone(),
            rsdp: None,
        };
        let console = self.console()?;
        let firmware_boots = config.kernel.is_none()
            && config.firmware.is_some()
            && plan.family != machine::Family::None;
        let mut built = builder::build(
            &self.kvm,
            &plan,
            BuildInputs {
                console,
                lifecycle: self.lifecycle.clone(),
                // Under qtest nothing boots: the machine stays in its reset state. With
                // firmware and no -kernel the firmware boots: the vCPUs start at reset.
                boot: (self.options.qtest.is_none() && !firmware_boots).then_some(boot),
                backends: &config.backends,
                ram: config.ram_backing(),
                kept_ram: self.kept_ram.take(),
                rtc_offset: config.rtc.offset,
                rtc_clock,
                rtc_state: self.rtc_state.take(),
                boot_order: match (&config.boot.once, self.booted_once) {
                    (Some(once), false) => once.clone(),
                    _ => config
                        .boot
                        .order
                        .clone()
                        .unwrap_or_else(|| "cad".to_string()),
                },
                fd_bootchk: !config.boot.no_fd_bootchk,
                isa_irq_sink: self.options.qtest.as_ref().map(|_| self.qtest.intx_sink()),
                open: &mut self.backends,
                fw_cfg: crate::fw_cfg::FwCfgInputs::from_config(&config),
                cpu_model: config.cpu_model.unwrap_or(crate::cpuid::CpuModel::Host),
                cpu_features: &config.cpu_features,
                firmware: config.firmware.as_ref(),
            },
        )?;
        self.booted_once = true;
        // Each virtio device gets its own I/O thread; the INTx forwarder joins the event
        // loop for this incarnation of the machine.
        let device_threads = crate::virtio_devices::DeviceThreads::start(
            std::mem::take(&mut built.virtio.workers),
            &self.control.iothreads,
        )
        .map_err(|e| RunError::EventLoop(format!("cannot start a device I/O thread: {e}")))?;
        let mut subscribers = Vec::new();
        if let Some(host) = &built.pci {
            subscribers.push(
                self.events
                    .add_subscriber(Arc::new(Mutex::new(IntxSubscriber {
                        forwarder: built.intx_forwarder.clone(),
                        host: host.clone(),
                    }))),
            );
        }
        if self.options.qtest.is_some() {
            self.qtest.install(crate::qtest::QtestMachine {
                io: built.io.clone(),
                mmio: built.mmio.clone(),
                view: built.vm.view.clone(),
                pci: built.pci.clone(),
                plan: plan.clone(),
            });
        }
        *self.serial_slot.lock().unwrap_or_else(|e| e.into_inner()) = built.serial.clone();
        self.rtc = built.rtc.clone();
        {
            let mut state = self.control.state();
            state.plan = Some(plan.clone());
            state.pci = built.pci.clone();
            state.layout = built.layout.clone();
        }
        let mut running =
            Running::start(built, &self.lifecycle, &self.gate, self.options.trace_start)?;
        running.subscribers = subscribers;
        running.device_threads = device_threads;
        let kept = {
            let mut state = self.control.state();
            state.vcpu_thread_ids = running.thread_ids.clone();
            std::mem::take(&mut state.hot_cpus)
        };
        // CPUs added at run time stay over a reset, as in QEMU.
        for (index, cpu) in kept {
            let ctx = crate::cpu_hotplug::VcpuContext {
                control: &self.control,
                vm: &running.vm,
                plan: &plan,
                io: &running.io,
                mmio: &running.mmio,
                lifecycle: &self.lifecycle,
                gate: &self.gate,
            };
            if let Err(e) = crate::cpu_hotplug::plug(
                &self.control,
                &mut running.hot_cpus,
                ctx,
                index,
                cpu.id,
                false,
            ) {
                eprintln!("machina: CPU {index} not restored after the reset: {e}");
            }
        }
        self.running = Some(running);
        self.control.machine_ready();
        Ok(plan)
    }

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

    /// Stop the vCPUs and rebuild the same plan (a system reset). The old incarnation is
    /// freed before the new one is built; backends stay open. As in QEMU, a machine that was
    /// not running comes back in `prelaunch`, waiting for `cont`.
    fn reset(&mut self) -> Result<(), RunError> {
        // Taken (and the device let go) before the teardown frees the old incarnation.
        self.rtc_state = self
            .rtc
            .take()
            .map(|c| c.lock().unwrap_or_else(|e| e.into_inner()).state());
        // QEMU's ACPI hot-plug reset executes pending removes; the rebuild then leaves the
        // devices out.
        let host = self.control.state().pci.clone();
        let pending = host
            .and_then(|h| h.lock().unwrap_or_else(|e| e.into_inner()).acpi_hotplug())
            .map(|p| {
                p.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take_pending_removes()
            })
            .unwrap_or_default();
        if let Some(running) = self.running.as_mut() {
            for (bus, slot) in pending {
                crate::hotplug::eject(&self.control, &bus, slot, &mut running.hot_added);
            }
        }
        self.kept_ram = self.running.as_ref().map(|r| r.vm.memory.clone());
        drop(self.stop_running());
        // What the replaced incarnation asked for (a second reset, a power-off racing with a
        // host reset) does not apply to the new one.
        let _ = self.lifecycle.take();
        self.build()?;
        let mut state = self.control.state();
        if state.status != RunState::Running {
            state.status = RunState::Prelaunch;
        }
        Ok(())
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

    /// Act on an event a device reported, by the configured actions (watchdog.c's
    /// watchdog_perform_action, runstate.c's qemu_system_guest_panicked and friends).
    fn guest_event(&mut self, event: GuestEvent) -> Result<Option<Outcome>, RunError> {
        let actions = self.actions();
        match event {
            GuestEvent::WatchdogExpired => {
                let action = actions.watchdog;
                self.control
                    .emit("WATCHDOG", json!({ "action": action.as_str() }));
                match action {
                    WatchdogAction::Reset => self.guest_request(Request::Reset),
                    WatchdogAction::Shutdown => {
                        self.powerdown();
                        Ok(None)
                    }
                    // QEMU exits at once, with no SHUTDOWN event.
                    WatchdogAction::Poweroff => Ok(Some(Outcome::Quit)),
                    WatchdogAction::Pause => {
                        self.vm_stop(RunState::Watchdog);
                        Ok(None)
                    }
                    WatchdogAction::Debug => {
                        eprintln!("watchdog: timer fired");
                        Ok(None)
                    }
                    WatchdogAction::None => Ok(None),
                    // An NMI on every vCPU (QEMU's nmi_monitor_handle); under qtest no vCPU
                    // runs to take it.
                    WatchdogAction::InjectNmi => {
                        self.gate.request_nmi();
                        if let Some(running) = &self.running {
                            running.kick();
                        }
                        Ok(None)
                    }
                }
            }
            GuestEvent::Panicked => {
                let pause = actions.panic == PanicAction::Pause
                    || (actions.panic == PanicAction::Shutdown
                        && actions.shutdown == ShutdownAction::Pause);
                if pause {
                    self.control
                        .emit("GUEST_PANICKED", json!({ "action": "pause" }));
                    self.vm_stop(RunState::GuestPanicked);
                    Ok(None)
                } else if matches!(
                    actions.panic,
                    PanicAction::Shutdown | PanicAction::ExitFailure
                ) {
                    self.control
                        .emit("GUEST_PANICKED", json!({ "action": "poweroff" }));
                    self.vm_stop(RunState::GuestPanicked);
                    let outcome = if actions.panic == PanicAction::ExitFailure {
                        Outcome::Failed
                    } else {
                        Outcome::PoweredOff
                    };
                    Ok(self
                        .guest_shutdown(json!({"guest": true, "reason": "guest-panic"}), outcome))
                } else {
                    self.control
                        .emit("GUEST_PANICKED", json!({ "action": "run" }));
                    Ok(None)
                }
            }
            GuestEvent::CrashLoaded => {
                self.control
                    .emit("GUEST_CRASHLOADED", json!({ "action": "run" }));
                Ok(None)
            }
            GuestEvent::PvShutdown => {
                self.control.emit("GUEST_PVSHUTDOWN", Value::Null);
                self.guest_request(Request::PowerOff)
            }
        }
    }

    fn handle(&mut self, command: Command) -> (Reply, Option<Outcome>) {
        let built = self.running.is_some();
        match command {
            // x-exit-preconfig is QEMU's: once only, returning nothing.
            Command::Build { start: true } if built => (Err(QmpError::only_before_init()), None),
            // machine-build makes sure the machine is built and returns its plan: once
            // built, the plan of the machine as it stands (hot-plugged devices included).
            Command::Build { start: false } if built => {
                let plan = self.control.state().plan.clone();
                let value = serde_json::to_value(&plan).unwrap_or(Value::Null);
                (Ok(value), None)
            }
            Command::Build { start } => match self.build() {
                Ok(plan) => {
                    if self.options.start_paused || !start {
                        self.set_status(RunState::Prelaunch);
                    } else {
                        self.resume();
                    }
                    let value = if start {
                        Value::Null
                    } else {
                        serde_json::to_value(&plan).unwrap_or(Value::Null)
                    };
                    (Ok(value), None)
                }
                Err(e) => (Err(QmpError::generic(e.to_string())), None),
            },
            // Allowed in preconfig too, as in QEMU.
            Command::Quit => {
                self.control.emit(
                    "SHUTDOWN",
                    json!({"guest": false, "reason": "host-qmp-quit"}),
                );
                (Ok(Value::Null), Some(Outcome::Quit))
            }
            _ if !built => (
                Err(QmpError::generic(
                    "the machine has not been built yet (use x-exit-preconfig)",
                )),
                None,
            ),
            Command::Cont => {
                let status = self.control.state().status;
                if matches!(
                    status,
                    RunState::Shutdown | RunState::InternalError | RunState::GuestPanicked
                ) {
                    // QEMU's text (runstate_needs_reset): only system_reset leaves these.
                    return (
                        Err(QmpError::generic(
                            "Resetting the Virtual Machine is required",
                        )),
                        None,
                    );
                }
                // Whether the machine runs is its run state, not the vCPU gate: under qtest
                // no vCPU ever runs, yet QEMU's `stop`/`cont` still pause and resume it.
                if status != RunState::Running {
                    self.resume();
                    // Requests a disk error stopped run again (ide_restart_cb).
                    let host = self.control.state().pci.clone();
                    if let Some(host) = host {
                        host.lock().unwrap_or_else(|e| e.into_inner()).restart_io();
                    }
                }
                (Ok(Value::Null), None)
            }
            Command::Stop => {
                if self.control.state().status == RunState::Running {
                    if let Some(running) = &self.running {
                        running.pause(&self.gate);
                    }
                    self.sync_clock();
                    self.set_status(RunState::Paused);
                    self.control.emit("STOP", Value::Null);
                }
                (Ok(Value::Null), None)
            }
            // As QEMU's qemu_system_reset, RESET comes once the machine is reset: a client
            // acting on it (qtest) reaches the new incarnation.
            Command::Reset => match self.reset() {
                Ok(()) => {
                    self.control.emit(
                        "RESET",
                        json!({"guest": false, "reason": "host-qmp-system-reset"}),
                    );
                    (Ok(Value::Null), None)
                }
                Err(e) => (Err(QmpError::generic(e.to_string())), Some(Outcome::Failed)),
            },
            Command::HotAdd { plan, request } => {
                let Some(running) = self.running.as_mut() else {
                    return (Err(QmpError::generic("the machine is not running")), None);
                };
                let Some(host) = running.pci.clone() else {
                    return (Err(QmpError::generic("the machine has no PCI bus")), None);
                };
                let answer = crate::hotplug::hot_add(
                    &self.control,
                    *plan,
                    *request,
                    crate::hotplug::HotAddInputs {
                        host: &host,
                        vm: &running.vm,
                        forwarder: &running.intx_forwarder,
                        open: &mut self.backends,
                        lifecycle: &self.lifecycle,
                        added: &mut running.hot_added,
                    },
                );
                (
                    answer.map(|()| Value::Null).map_err(QmpError::generic),
                    None,
                )
            }
            Command::HotAddCpu { index, id } => {
                let Some(running) = self.running.as_mut() else {
                    return (Err(QmpError::generic("the machine is not running")), None);
                };
                let Some(plan) = self.control.state().plan.clone() else {
                    return (Err(QmpError::generic("the machine is not built")), None);
                };
                let answer = crate::cpu_hotplug::plug(
                    &self.control,
                    &mut running.hot_cpus,
                    crate::cpu_hotplug::VcpuContext {
                        control: &self.control,
                        vm: &running.vm,
                        plan: &plan,
                        io: &running.io,
                        mmio: &running.mmio,
                        lifecycle: &self.lifecycle,
                        gate: &self.gate,
                    },
                    index,
                    id,
                    true,
                );
                (answer, None)
            }
            Command::Eject { bus, slot } => {
                if let Some(running) = self.running.as_mut() {
                    crate::hotplug::eject(&self.control, &bus, slot, &mut running.hot_added);
                }
                (Ok(Value::Null), None)
            }
            Command::PowerDown => {
                self.powerdown();
                (Ok(Value::Null), None)
            }
        }
    }

    /// Act on what the guest (or a failed vCPU) asked for.
    fn guest_request(&mut self, request: Request) -> Result<Option<Outcome>, RunError> {
        let held = self.control.state().status == RunState::Shutdown;
        match request {
            Request::None => Ok(None),
            // -no-shutdown holds the machine: a request latched as it stopped changes nothing.
            Request::PowerOff | Request::Reset if held => Ok(None),
            Request::PowerOff => Ok(self.guest_shutdown(
                json!({"guest": true, "reason": "guest-shutdown"}),
                Outcome::PoweredOff,
            )),
            Request::Crash => {
                self.set_status(RunState::InternalError);
                Ok(Some(Outcome::Failed))
            }
            Request::IoError => {
                self.io_error_stop();
                Ok(None)
            }
            Request::Reset if self.actions().reboot == RebootAction::Shutdown => Ok(self
                .guest_shutdown(
                    json!({"guest": true, "reason": "guest-reset"}),
                    Outcome::ResetWithNoReboot,
                )),
            Request::Reset => {
                self.reset()?;
                self.control
                    .emit("RESET", json!({"guest": true, "reason": "guest-reset"}));
                Ok(None)
            }
        }
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
