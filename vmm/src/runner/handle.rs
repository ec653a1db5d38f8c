//! What the run loop acts on: QMP commands (`Machine::handle`), guest events (watchdog,
//! panic, ...) and guest requests (power off, reset).

use super::*;

impl Machine<'_> {
    /// Act on an event a device reported, by the configured actions (watchdog.c's
    /// watchdog_perform_action, runstate.c's qemu_system_guest_panicked and friends).
    pub(super) fn guest_event(&mut self, event: GuestEvent) -> Result<Option<Outcome>, RunError> {
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

    pub(super) fn handle(&mut self, command: Command) -> (Reply, Option<Outcome>) {
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
    pub(super) fn guest_request(&mut self, request: Request) -> Result<Option<Outcome>, RunError> {
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
}
