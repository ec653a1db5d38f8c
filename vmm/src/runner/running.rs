//! The vCPU threads of one incarnation of the machine: started, paused, kicked and stopped
//! (giving the VM back for a reset or rebuild).

use super::*;

/// vCPU threads of one incarnation of the machine.
pub(super) struct Running {
    pub(super) threads: Vec<JoinHandle<()>>,
    pub(super) stop: Arc<AtomicBool>,
    /// Event-loop subscribers that belong to this incarnation (the INTx forwarder).
    pub(super) subscribers: Vec<event_manager::SubscriberId>,
    /// The virtio devices' I/O threads, stopped and joined after the vCPUs.
    pub(super) device_threads: crate::virtio_devices::DeviceThreads,
    /// Hot-added functions' I/O threads, likewise.
    pub(super) hot_added: crate::hotplug::HotAdded,
    /// Hot-added vCPUs' threads and the parked fds of ejected ones.
    pub(super) hot_cpus: crate::cpu_hotplug::HotCpus,
    /// The PCI host and the INTx forwarder, for hot-added functions.
    pub(super) pci: Option<devices::pci::SharedHost>,
    pub(super) intx_forwarder: Arc<crate::virtio_devices::IntxForwarder>,
    /// The buses, cleared at teardown to break the cycles through them (config ports ->
    /// PCI host -> buses) so that the whole incarnation is freed.
    pub(super) io: Arc<devices::bus::Bus>,
    pub(super) mmio: Arc<devices::bus::Bus>,
    /// The VM fd and guest memory, which must outlive the vCPU threads.
    pub(super) vm: crate::kvm_vm::KvmVm,
    /// Host thread id of each vCPU thread, by vCPU index.
    pub(super) thread_ids: Vec<i32>,
}

pub(super) extern "C" fn kick_handler(
    _: libc::c_int,
    _: *mut libc::siginfo_t,
    _: *mut libc::c_void,
) {
}

/// The calling thread's host thread id (what `query-cpus-fast` reports as `thread-id`).
pub(super) fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments, cannot fail and touches no memory.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

impl Running {
    pub(super) fn start(
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
    pub(super) fn pause(&self, gate: &RunGate) {
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
    pub(super) fn kick(&self) {
        for handle in self.threads.iter().filter(|h| !h.is_finished()) {
            let _ = handle.kill(SIGRTMIN());
        }
    }

    /// Stop every vCPU: raise the flag, then kick threads out of KVM_RUN until they return;
    /// then unmap every device so nothing of this incarnation keeps another part alive.
    /// Returns the VM, to be dropped after the threads that used it.
    pub(super) fn stop(self) -> crate::kvm_vm::KvmVm {
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
