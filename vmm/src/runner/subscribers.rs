//! The run loop's event subscribers: console input, guest lifecycle requests, virtio INTx
//! changes, termination signals and QMP control commands.

use super::*;

/// The current serial port, replaced at every (re)build, fed by the console input.
pub(super) type SerialSlot = Arc<Mutex<Option<Arc<Mutex<SerialPort>>>>>;

/// Feeds console input (stdin or a socket client) into the serial port.
pub(super) struct ConsoleInputSubscriber {
    pub(super) input: ConsoleInput,
    pub(super) console: Console,
    pub(super) serial: SerialSlot,
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
pub(super) struct LifecycleSubscriber {
    pub(super) lifecycle: Lifecycle,
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
/// Applies virtio INTx changes to the PCI host outside the devices' locks.
pub(super) struct IntxSubscriber {
    pub(super) forwarder: Arc<crate::virtio_devices::IntxForwarder>,
    pub(super) host: devices::pci::SharedHost,
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
pub(super) const TERMINATION_SIGNALS: [libc::c_int; 3] =
    [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Reads termination signals from a signalfd in the event loop, so that no code runs in a
/// signal handler and the loop ends the machine in order (SHUTDOWN event, sockets removed).
pub(super) struct SignalSubscriber {
    pub(super) fd: std::os::fd::OwnedFd,
    pub(super) received: Arc<Mutex<Option<(u32, u32)>>>,
}

impl SignalSubscriber {
    /// Block the termination signals in the calling thread (and so in every thread it
    /// starts later) and open a signalfd for them.
    pub(super) fn new(received: Arc<Mutex<Option<(u32, u32)>>>) -> std::io::Result<Self> {
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
pub(super) struct ControlSubscriber {
    pub(super) control: Arc<Controller>,
}

impl MutEventSubscriber for ControlSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.control.wake_fd(), EventSet::IN));
    }
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // The commands stay queued; the run loop takes them after the dispatch.
    }
}
