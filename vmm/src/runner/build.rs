//! Building the machine (console, chardevs, the plan turned into a VM) and system reset.

use super::*;

impl Machine<'_> {
    pub(super) fn console(&mut self) -> Result<devices::legacy::serial::SharedWriter, RunError> {
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
    pub(super) fn open_chardevs(&mut self) -> Result<(), RunError> {
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
    pub(super) fn build(&mut self) -> Result<Plan, RunError> {
        let (mut plan, config) = {
            let state = self.control.state();
            (
                state.catalog.plan(&state.config.plan_request())?,
                state.config.clone(),
            )
        };
        config.check_default_ram_id(plan.memory.ram_id.as_deref())?;
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

    /// Stop the vCPUs and rebuild the same plan (a system reset). The old incarnation is
    /// freed before the new one is built; backends stay open. As in QEMU, a machine that was
    /// not running comes back in `prelaunch`, waiting for `cont`.
    pub(super) fn reset(&mut self) -> Result<(), RunError> {
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
}
