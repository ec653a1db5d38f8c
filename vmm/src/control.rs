//! The machine's control state, shared by QMP handlers (on their client threads) and the run
//! loop (main thread). Queries read the state directly; anything that changes the running
//! machine is queued for the run loop, which answers once it is done, so that events such as
//! RESUME are emitted before the command's return, as QEMU orders them.

use crate::config::MachineConfig;
use devices::pci::{FirmwareLayout, SharedHost};
use machine::{Catalog, Plan};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::{mpsc, Mutex, MutexGuard};
use vmm_sys_util::eventfd::EventFd;

/// QEMU's RunState names for the states machina goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Prelaunch,
    Running,
    Paused,
    Shutdown,
    InternalError,
    /// Stopped by a watchdog (`-watchdog-action pause`).
    Watchdog,
    /// Stopped by a guest panic (`-action panic=pause` or shutdown).
    GuestPanicked,
    /// Stopped by a disk error with the `stop` action; `cont` retries the request.
    IoError,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Prelaunch => "prelaunch",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Shutdown => "shutdown",
            RunState::InternalError => "internal-error",
            RunState::Watchdog => "watchdog",
            RunState::GuestPanicked => "guest-panicked",
            RunState::IoError => "io-error",
        }
    }
}

/// What the run loop is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Plan and build the configured machine. `x-exit-preconfig` also starts the vCPUs
    /// (unless -S), as QEMU does; `machine-build` leaves them for `cont`.
    Build {
        start: bool,
    },
    Cont,
    Stop,
    Reset,
    PowerDown,
    Quit,
    /// `device_add` on the running machine: build the last function of the plan, plug it
    /// and announce it; the request (with its address) joins the configuration.
    HotAdd {
        plan: Box<Plan>,
        request: Box<machine::DeviceRequest>,
    },
    /// `device_add` of a CPU into free slot `index` of the running machine.
    HotAddCpu {
        index: u32,
        id: Option<String>,
    },
    /// Take what sits in `slot` of `bus` out at once (an unplug that needs no guest).
    Eject {
        bus: String,
        slot: u8,
    },
}

pub type Reply = Result<Value, qmp::QmpError>;

/// Everything QMP may read or (before the build) change.
pub struct VmState {
    pub status: RunState,
    pub config: MachineConfig,
    pub catalog: Catalog,
    /// The plan the machine was built from (after the build).
    pub plan: Option<Plan>,
    pub pci: Option<SharedHost>,
    pub layout: Option<FirmwareLayout>,
    /// Host thread id (gettid) of each vCPU thread, by vCPU index; replaced at every
    /// (re)build, empty before the first.
    pub vcpu_thread_ids: Vec<i32>,
    /// Ids of devices asked to go (`device_del`) until the guest ejects them, with when a
    /// repeated request is accepted again (QEMU's pending_deleted_expires_ms: 1 ms for ACPI,
    /// 5 s for a PCIe slot, of virtual time, which stands still while the vCPUs do).
    pub unplug_pending: std::collections::BTreeMap<String, std::time::Instant>,
    /// CPUs `device_add`ed to the running machine and present, by CPU index; cleared at
    /// every (re)build.
    pub hot_cpus: std::collections::BTreeMap<u32, crate::cpu_hotplug::HotCpu>,
}

/// Commands waiting for the run loop; `closed` once the loop has ended.
#[derive(Default)]
struct Queue {
    commands: VecDeque<(Command, mpsc::Sender<Reply>)>,
    closed: bool,
}

pub struct Controller {
    /// `-object iothread` / `object-add` I/O threads (they live as long as the process).
    pub iothreads: crate::iothread::IoThreads,
    state: Mutex<VmState>,
    queue: Mutex<Queue>,
    wake: EventFd,
    server: Mutex<Option<qmp::Server>>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot create the control eventfd: {0}")]
pub struct ControlError(#[source] std::io::Error);

impl Controller {
    pub fn new(state: VmState) -> Result<Self, ControlError> {
        Ok(Self {
            iothreads: Default::default(),
            state: Mutex::new(state),
            queue: Mutex::new(Queue::default()),
            wake: EventFd::new(libc::EFD_NONBLOCK).map_err(ControlError)?,
            server: Mutex::new(None),
        })
    }

    pub fn state(&self) -> MutexGuard<'_, VmState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attach the QMP server whose clients get events and whose preconfig gate opens when
    /// the machine is built.
    pub fn set_server(&self, server: qmp::Server) {
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(server);
    }

    /// The QMP server, if there is one.
    pub fn server(&self) -> Option<qmp::Server> {
        self.server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Emit a QMP event to every negotiated client (nothing without a QMP server).
    pub fn emit(&self, name: &str, data: Value) {
        if let Some(server) = self
            .server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            server.events().emit(name, data);
        }
    }

    /// The machine exists: commands gated on machine initialization become available.
    pub fn machine_ready(&self) {
        if let Some(server) = self
            .server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            server.set_machine_ready(true);
        }
    }

    /// From a QMP handler: queue `command` for the run loop and wait for its answer.
    pub fn submit(&self, command: Command) -> Reply {
        let (tx, rx) = mpsc::channel();
        {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if queue.closed {
                return Err(shutting_down());
            }
            queue.commands.push_back((command, tx));
        }
        let _ = self.wake.write(1);
        rx.recv().unwrap_or_else(|_| Err(shutting_down()))
    }

    /// From the run loop, when it ends: fail every queued command and refuse later ones, so
    /// that no QMP client waits for an answer that cannot come.
    pub fn close(&self) {
        let pending: Vec<_> = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.closed = true;
            queue.commands.drain(..).collect()
        };
        for (_, reply) in pending {
            let _ = reply.send(Err(shutting_down()));
        }
    }

    /// From the run loop: the queued commands.
    pub fn take(&self) -> Vec<(Command, mpsc::Sender<Reply>)> {
        let _ = self.wake.read();
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .commands
            .drain(..)
            .collect()
    }

    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }
}

fn shutting_down() -> qmp::QmpError {
    qmp::QmpError::generic("the machine is shutting down")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller() -> Controller {
        let opts = crate::cli::parse(Vec::<String>::new()).expect("empty command line");
        Controller::new(VmState {
            status: RunState::Prelaunch,
            config: MachineConfig::from_cli(&opts).expect("config"),
            catalog: Catalog::builtin().clone(),
            plan: None,
            pci: None,
            layout: None,
            vcpu_thread_ids: Vec::new(),
            unplug_pending: Default::default(),
            hot_cpus: Default::default(),
        })
        .expect("controller")
    }

    #[test]
    fn close_answers_queued_commands_and_refuses_later_ones() {
        let control = std::sync::Arc::new(controller());
        let waiter = {
            let control = control.clone();
            std::thread::spawn(move || control.submit(Command::Cont))
        };
        // Wait until the command is queued, then end the loop without serving it.
        while control.queue.lock().unwrap().commands.is_empty() {
            std::thread::yield_now();
        }
        control.close();
        let answer = waiter.join().expect("submitter");
        assert!(
            answer.is_err(),
            "a queued command gets an error, not a hang"
        );
        assert!(control.submit(Command::Stop).is_err());
        assert!(control.take().is_empty());
    }
}
