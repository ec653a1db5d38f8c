//! Runs a planned machine: builds it, starts one thread per vCPU, serves console input from
//! the event loop, and acts on what the guest asks for (power off, reset) or what failed.

use crate::boot::{BootSpec, KernelImage};
use crate::builder::{self, BuildInputs, BuiltMachine};
use crate::console::{Console, ConsoleInput};
use crate::vcpu::{RunGate, Vcpu};
use devices::legacy::serial::SerialPort;
use devices::lifecycle::{Lifecycle, Request};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::Kvm;
use machine::Plan;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
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
    Failed,
}

impl Outcome {
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::PoweredOff | Outcome::ResetWithNoReboot => 0,
            Outcome::Failed => 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot open /dev/kvm: {0}")]
    Kvm(#[source] kvm_ioctls::Error),
    #[error(transparent)]
    Build(#[from] builder::BuildError),
    #[error("event loop: {0}")]
    EventLoop(String),
    #[error("cannot start vCPU thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("cannot create the lifecycle eventfd: {0}")]
    Lifecycle(#[source] std::io::Error),
}

/// What to run.
pub struct RunSpec {
    pub plan: Plan,
    pub kernel: Option<PathBuf>,
    pub bundled_kernel: &'static [u8],
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub no_reboot: bool,
    pub start_paused: bool,
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
                        _ => {
                            let _ = ops.remove(Events::new(&*stream, EventSet::IN));
                            *client = None;
                            self.console.output.replace(Box::new(std::io::sink()));
                        }
                    }
                }
            }
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
    _machine: BuiltMachineParts,
}

/// What must outlive the vCPU threads (the VM fd and guest memory).
struct BuiltMachineParts {
    _vm: crate::kvm_vm::KvmVm,
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

impl Running {
    fn start(
        machine: BuiltMachine,
        lifecycle: &Lifecycle,
        gate: &Arc<RunGate>,
        trace_start: Option<Instant>,
    ) -> Result<Self, RunError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (index, fd) in machine.vcpus.into_iter().enumerate() {
            let vcpu = Vcpu {
                fd,
                index: index as u32,
                io: machine.io.clone(),
                mmio: machine.mmio.clone(),
                lifecycle: lifecycle.clone(),
                stop: stop.clone(),
                gate: gate.clone(),
                trace_start,
            };
            let handle = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || vcpu.run())
                .map_err(RunError::Thread)?;
            threads.push(handle);
        }
        Ok(Self {
            threads,
            stop,
            _machine: BuiltMachineParts { _vm: machine.vm },
        })
    }

    /// Stop every vCPU: raise the flag, then kick threads out of KVM_RUN until they return.
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for handle in self.threads {
            while !handle.is_finished() {
                let _ = handle.kill(SIGRTMIN());
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = handle.join();
        }
    }
}

pub fn run(spec: RunSpec, console: Console) -> Result<Outcome, RunError> {
    let kvm = Kvm::new().map_err(RunError::Kvm)?;
    // A no-op handler: the signal only needs to interrupt KVM_RUN with EINTR.
    register_signal_handler(SIGRTMIN(), kick_handler)
        .map_err(|e| RunError::EventLoop(format!("cannot install the vCPU kick signal: {e}")))?;
    let lifecycle = Lifecycle::new().map_err(RunError::Lifecycle)?;
    let gate = Arc::new(RunGate::new(!spec.start_paused));
    let serial_slot: SerialSlot = Arc::new(Mutex::new(None));

    let mut events = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
        .map_err(|e| RunError::EventLoop(format!("{e:?}")))?;
    let console_output = console.output.clone();
    let mut console = console;
    let input = std::mem::replace(&mut console.input, ConsoleInput::None);
    events.add_subscriber(Arc::new(Mutex::new(ConsoleInputSubscriber {
        input,
        console,
        serial: serial_slot.clone(),
    })));
    events.add_subscriber(Arc::new(Mutex::new(LifecycleSubscriber {
        lifecycle: lifecycle.clone(),
    })));

    loop {
        let boot = BootSpec {
            kernel: match &spec.kernel {
                Some(path) => KernelImage::File(path.clone()),
                None => KernelImage::Bundled(spec.bundled_kernel),
            },
            initrd: spec.initrd.clone(),
            cmdline: spec.cmdline.clone(),
            rsdp: None,
        };
        let machine = builder::build(
            &kvm,
            &spec.plan,
            BuildInputs {
                console: console_output.clone(),
                lifecycle: lifecycle.clone(),
                boot: Some(boot),
            },
        )?;
        *serial_slot.lock().unwrap_or_else(|e| e.into_inner()) = machine.serial.clone();
        let running = Running::start(machine, &lifecycle, &gate, spec.trace_start)?;

        let request = loop {
            events
                .run_with_timeout(1000)
                .map_err(|e| RunError::EventLoop(format!("{e:?}")))?;
            match lifecycle.take() {
                Request::None => continue,
                r => break r,
            }
        };
        if spec.trace_start.is_some() {
            if let Some((vmm, guest)) = crate::memory::rss_split(&running._machine._vm.memory) {
                eprintln!("machina-trace: rss vmm_kib={vmm} guest_kib={guest}");
            }
        }
        running.stop();
        let _ = std::io::Write::flush(&mut console_output.clone());
        match request {
            Request::PowerOff => return Ok(Outcome::PoweredOff),
            Request::Crash => return Ok(Outcome::Failed),
            Request::Reset if spec.no_reboot => return Ok(Outcome::ResetWithNoReboot),
            Request::Reset | Request::None => {}
        }
    }
}
