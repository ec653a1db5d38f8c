//! Creating the plan's virtio-pci functions with their backends (files, taps, entropy,
//! consoles) and guest memory, and forwarding their INTx lines to the PCI host.

use crate::backends::{Backend, CacheMode};
use crate::memory::GuestMemory;
use devices::legacy::serial::SharedWriter;
use devices::pci::{PciError, SharedFunction, SharedHost};
use devices::virtio::blk::BlockBackend;
use devices::virtio::console::ConsoleBackend;
use devices::virtio::net::NetBackend;
use devices::virtio::{self, IntxLine, IoEventRegistrar, VirtioBackend, VirtioWorker};
use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use machine::{PciFunctionPlan, Plan};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// INTx changes of virtio functions, queued because a device raising its line holds its own
/// lock (and maybe the host's): the run loop applies them to the host afterwards.
pub struct IntxForwarder {
    pending: Mutex<Vec<(String, u8, bool)>>,
    wake: EventFd,
}

impl IntxForwarder {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            pending: Mutex::new(Vec::new()),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.wake
    }

    /// Apply the queued levels to `host` (INTA of each function).
    pub fn apply(&self, host: &SharedHost) {
        let _ = self.wake.read();
        let pending: Vec<_> = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        if pending.is_empty() {
            return;
        }
        let mut host = host.lock().unwrap_or_else(|e| e.into_inner());
        for (bus, devfn, level) in pending {
            host.set_intx(&bus, devfn, 1, level);
        }
    }
}

pub(crate) struct FunctionIntx {
    pub(crate) forwarder: Arc<IntxForwarder>,
    pub(crate) bus: String,
    pub(crate) devfn: u8,
}

impl IntxLine for FunctionIntx {
    fn set_level(&self, level: bool) {
        self.forwarder
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((self.bus.clone(), self.devfn, level));
        let _ = self.forwarder.wake.write(1);
    }
}

/// A device's backend side, run on its own thread or an `-object iothread`: a virtio
/// device's queues, or a NIC model's network backend (`crate::nic_devices`).
pub enum Worker {
    Virtio(VirtioWorker),
    Nic(Box<dyn devices::pci::nic::NicWorker>),
}

impl Worker {
    fn boxed(self) -> Arc<Mutex<dyn MutEventSubscriber + Send>> {
        Arc::new(Mutex::new(self))
    }

    fn name(&self) -> String {
        match self {
            Worker::Virtio(w) => w.name(),
            Worker::Nic(w) => w.name(),
        }
    }
}

impl MutEventSubscriber for Worker {
    fn init(&mut self, ops: &mut EventOps) {
        match self {
            Worker::Virtio(w) => w.init(ops),
            Worker::Nic(w) => w.init(ops),
        }
    }
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self {
            Worker::Virtio(w) => w.process(events, ops),
            Worker::Nic(w) => w.process(events, ops),
        }
    }
}

/// What creating the virtio functions (and NIC models) leaves for the run loop.
#[derive(Default)]
pub struct VirtioSet {
    /// Each device's worker, with the I/O thread it names (`iothread=ID`), if any.
    pub workers: Vec<(Worker, Option<String>)>,
    /// Peers of the socket pairs standing in for absent netdevs, kept open.
    keepalive: Vec<UnixDatagram>,
}

/// Backend handles opened once per process and shared by every build, for the backends
/// that `backends.rs` does not already hold open (drives and taps it does): entropy sources
/// and console outputs. The first build opens them; a reset gets a duplicate of the same
/// open file, or the same writer, so a console log is not truncated and a console socket
/// not rebound per boot, and nothing accumulates: duplicates close with the incarnation
/// that used them.
#[derive(Default)]
pub struct OpenBackends {
    files: HashMap<String, File>,
    outputs: HashMap<String, SharedWriter>,
    /// Input of the chardevs in `outputs` that have one (sockets), by the same key.
    inputs: HashMap<String, crate::backends::CharInput>,
}

impl OpenBackends {
    /// A handle to the backend known as `key`, opened with `open` the first time.
    fn get_or_open<E>(
        &mut self,
        key: String,
        open: impl FnOnce() -> Result<File, E>,
        dup_error: impl Fn(std::io::Error) -> E,
    ) -> Result<File, E> {
        if let Some(file) = self.files.get(&key) {
            return file.try_clone().map_err(dup_error);
        }
        let file = open()?;
        let handle = file.try_clone().map_err(dup_error)?;
        self.files.insert(key, file);
        Ok(handle)
    }

    /// The chardev known as `key`, opened with `open` the first time: every build writes
    /// through the same output and reads the same input (its console is connected to it).
    fn char_io<E>(
        &mut self,
        key: String,
        open: impl FnOnce() -> Result<CharIo, E>,
    ) -> Result<(SharedWriter, Option<crate::backends::CharInput>), E> {
        if let Some(out) = self.outputs.get(&key) {
            return Ok((out.clone(), self.inputs.get(&key).cloned()));
        }
        let (out, input) = open()?;
        let out = SharedWriter::new(out);
        self.outputs.insert(key.clone(), out.clone());
        if let Some(input) = &input {
            self.inputs.insert(key, input.clone());
        }
        Ok((out, input))
    }
}

/// A chardev's output and, for sockets, its input.
type CharIo = (Box<dyn Write + Send>, Option<crate::backends::CharInput>);

/// What a console's chardev input feeds: the console of the machine built now. It takes at
/// most this much unread input; the chardev's client waits beyond it.
const CONSOLE_INPUT_ROOM: usize = 64 * 1024;

impl crate::backends::InputConsumer for virtio::console::ConsoleInput {
    fn room(&self) -> usize {
        CONSOLE_INPUT_ROOM.saturating_sub(self.pending())
    }

    fn push(&self, bytes: &[u8]) {
        virtio::console::ConsoleInput::push(self, bytes);
    }
}

impl OpenBackends {
    /// Open the console chardevs of the plan's virtio-serial controllers now, before the
    /// monitor greets (QEMU creates its chardevs before its monitor listens): a client that
    /// has the greeting finds their sockets. The build then shares what is open.
    pub fn open_consoles(&mut self, plan: &Plan, backends: &[Backend]) -> Result<(), PciError> {
        for f in &plan.pci {
            if f.virtio.is_some_and(|m| m.device_type == 3) {
                open_console(f, plan, backends, self)?;
            }
        }
        Ok(())
    }
}

fn prop<'a>(f: &'a PciFunctionPlan, name: &str) -> Option<&'a str> {
    f.properties.nonempty_str(name)
}

fn device_err(f: &PciFunctionPlan, reason: impl Into<String>) -> PciError {
    PciError::Device {
        device: f.id.clone().unwrap_or_else(|| f.type_name.clone()),
        reason: reason.into(),
    }
}

fn open_drive(
    f: &PciFunctionPlan,
    plan: &Plan,
    backends: &[Backend],
) -> Result<BlockBackend, PciError> {
    let id = prop(f, "drive").ok_or_else(|| device_err(f, "drive property not set"))?;
    let Some(Backend::Drive {
        file,
        read_only,
        cache,
        attached,
        null_size,
        ..
    }) = backends
        .iter()
        .find(|b| matches!(b, Backend::Drive { id: d, .. } if d == id))
    else {
        return Err(device_err(f, format!("drive '{id}' not found")));
    };
    let direct = *cache == CacheMode::Direct;
    // The image as opened and locked when the device took the drive (backends::attach_drives).
    let handle = match attached {
        Some(handle) => handle.dup(),
        None => {
            let mut options = OpenOptions::new();
            options.read(true).write(!read_only);
            if direct {
                options.custom_flags(libc::O_DIRECT);
            }
            options.open(file)
        }
    }
    .map_err(|e| device_err(f, format!("Could not open '{}': {e}", file.display())))?;
    Ok(BlockBackend {
        file: handle,
        read_only: *read_only,
        direct,
        writeback: *cache != CacheMode::WriteThrough,
        stats: crate::monitor::drive_stats(id),
        size: *null_size,
        disk_size: crate::monitor::drive_size(id),
        // QEMU's virtio_pci_optimal_num_queues: one per vCPU.
        auto_num_queues: u16::try_from(plan.cpus).unwrap_or(u16::MAX),
    })
}

pub(crate) fn open_net(
    f: &PciFunctionPlan,
    plan: &Plan,
    backends: &[Backend],
    set: &mut VirtioSet,
) -> Result<NetBackend, PciError> {
    // QEMU numbers default MACs over every NIC of the machine in creation order.
    let mac = devices::kinds::mac_of(plan, f)?.unwrap_or(machine::MacAddr::FIRST_DEFAULT);
    let mut more_queues = Vec::new();
    let tap = match prop(f, "netdev") {
        Some(id) => match backends.iter().find(|b| b.id() == id) {
            Some(Backend::Tap {
                ifname,
                handle,
                more,
                client,
                ..
            }) => {
                // The other queues of a multiqueue tap: a queue pair each.
                for h in more {
                    more_queues.push(h.dup().map_err(|e| {
                        device_err(f, format!("cannot share the tap's queue: {e}"))
                    })?);
                }
                let ifname = ifname.clone().unwrap_or_default();
                if let Some(client) = client {
                    // Only shown and announced: the device moves the tap's frames itself.
                    let _ = client.attach_nic(&nic_name(f, plan), &f.type_name, mac.bytes());
                }
                // The tap opened when the netdev was added (backends::add), shared by resets.
                match handle {
                    Some(handle) => handle.dup(),
                    None => virtio::net::tap::open_tap(&ifname),
                }
                .map_err(|e| {
                    device_err(
                        f,
                        format!("could not configure /dev/net/tun ({ifname}): {e}"),
                    )
                })?
            }
            Some(Backend::Netdev {
                handle: Some(netdev),
                ..
            }) => {
                // The socket pair to the network thread, which runs the netdev.
                let attached = netdev
                    .attach_nic(&nic_name(f, plan), &f.type_name, mac.bytes())
                    .map_err(|e| {
                        device_err(
                            f,
                            if e.0 == "in use" {
                                format!(
                                    "Property '{}.netdev' can't take value '{id}', it's in use",
                                    f.type_name
                                )
                            } else {
                                e.0
                            },
                        )
                    })?;
                attached.ok_or_else(|| device_err(f, format!("netdev '{id}' has no data path")))?
            }
            _ => return Err(device_err(f, format!("netdev '{id}' not found"))),
        },
        // No netdev: QEMU's NIC without a peer. A socket pair stands in for the tap so the
        // device works and frames go nowhere.
        None => {
            let (ours, peer) = UnixDatagram::pair()
                .map_err(|e| device_err(f, format!("cannot create a socket pair: {e}")))?;
            ours.set_nonblocking(true)
                .map_err(|e| device_err(f, e.to_string()))?;
            let _ = peer.set_nonblocking(true);
            set.keepalive.push(peer);
            File::from(std::os::fd::OwnedFd::from(ours))
        }
    };
    // announce-self asks a virtio-net driver that negotiated GUEST_ANNOUNCE to announce
    // itself; only a NIC with a netdev is known to the network layer.
    let announce = match prop(f, "netdev") {
        Some(_) if f.virtio.is_some() => {
            let fd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)
                .map_err(|e| device_err(f, format!("cannot create an eventfd: {e}")))?;
            let fd = std::sync::Arc::new(fd);
            crate::netdev::set_guest_announce(&nic_name(f, plan), fd.clone());
            Some(fd)
        }
        _ => None,
    };
    Ok(NetBackend {
        tap,
        mac,
        more_queues,
        announce,
    })
}

/// The name QEMU gives NIC `f`: its id, or its model and how many NICs of that model come
/// before it (stable across resets, since the plan is).
fn nic_name(f: &PciFunctionPlan, plan: &Plan) -> String {
    if let Some(id) = &f.id {
        return id.clone();
    }
    let before = plan
        .pci
        .iter()
        .take_while(|g| !(g.bus == f.bus && g.devfn() == f.devfn()))
        .filter(|g| g.type_name == f.type_name && devices::kinds::is_nic(g))
        .count();
    format!("{}.{before}", f.type_name)
}

fn open_rng(
    f: &PciFunctionPlan,
    backends: &[Backend],
    open: &mut OpenBackends,
) -> Result<Box<dyn std::io::Read + Send>, PciError> {
    let path = match prop(f, "rng") {
        Some(id) => backends
            .iter()
            .find_map(|b| match b {
                Backend::RngRandom { id: r, filename } if r == id => Some(filename.clone()),
                Backend::RngBuiltin { id: r } if r == id => Some("/dev/urandom".into()),
                _ => None,
            })
            .ok_or_else(|| device_err(f, format!("Device '{id}' not found")))?,
        None => "/dev/urandom".into(),
    };
    let key = format!("rng {} {}", prop(f, "rng").unwrap_or(""), path.display());
    let file = open.get_or_open(
        key,
        || {
            crate::backends::open_rng(&path)
                .map_err(|e| device_err(f, format!("Could not open '{}': {e}", path.display())))
        },
        |e| device_err(f, format!("cannot share the entropy source: {e}")),
    )?;
    Ok(Box::new(file))
}

/// The console chardev of controller `f`: the chardev of its lowest-numbered port, as the
/// plan placed the `virtconsole`/`virtserialport` devices; its output, and its input for
/// sockets.
fn open_console(
    f: &PciFunctionPlan,
    plan: &Plan,
    backends: &[Backend],
    open: &mut OpenBackends,
) -> Result<(Box<dyn Write + Send>, Option<crate::backends::CharInput>), PciError> {
    let chardev = plan
        .virtio_ports
        .iter()
        .filter(|p| {
            plan.pci
                .get(p.controller)
                .is_some_and(|c| c.bus == f.bus && c.devfn() == f.devfn())
        })
        .min_by_key(|p| p.nr)
        .and_then(|p| p.properties.nonempty_str("chardev").map(str::to_string));
    let backend = chardev.and_then(|id| {
        backends.iter().find_map(|b| match b {
            Backend::Chardev { id: c, backend } if *c == id => Some((id.clone(), backend.clone())),
            _ => None,
        })
    });
    // A chardev that cannot be opened is an error, never silently lost output. It is opened
    // (a file truncated, a socket bound) once per process, as QEMU's chardevs: a reset keeps
    // the previous boot's output and the connected client.
    match backend {
        Some((id, backend)) => open
            .char_io(format!("chardev {id}"), || {
                crate::backends::open_char_io(&backend).map_err(|e| device_err(f, e))
            })
            .map(|(out, input)| (Box::new(out) as Box<dyn Write + Send>, input)),
        None => Ok((Box::new(std::io::sink()), None)),
    }
}

/// A factory for `PciHost::from_plan_with`: builds every virtio function of the plan, its
/// queue notifications registered through `ioevents` (KVM ioeventfds) when given.
pub fn factory<'a>(
    backends: &'a [Backend],
    plan: &'a Plan,
    memory: &'a GuestMemory,
    forwarder: &'a Arc<IntxForwarder>,
    set: &'a mut VirtioSet,
    open: &'a mut OpenBackends,
    ioevents: Option<Arc<dyn IoEventRegistrar>>,
) -> impl FnMut(&PciFunctionPlan) -> Option<Result<SharedFunction, PciError>> + 'a {
    move |f: &PciFunctionPlan| {
        let Some(mode) = f.virtio else {
            // NIC models that move frames themselves also take a netdev and guest memory.
            return crate::nic_devices::build(f, plan, backends, memory, forwarder, set);
        };
        let mut char_input = None;
        let backend = match mode.device_type {
            1 => open_net(f, plan, backends, set).map(VirtioBackend::Net),
            2 => open_drive(f, plan, backends).map(VirtioBackend::Block),
            3 => open_console(f, plan, backends, open).map(|(output, input)| {
                char_input = input;
                VirtioBackend::Console(ConsoleBackend {
                    output,
                    ports: crate::monitor::serial_ports::of(&f.bus, f.devfn()),
                })
            }),
            4 => open_rng(f, backends, open).map(VirtioBackend::Rng),
            // QEMU registers one balloon (qemu_add_balloon_handler): a second is refused.
            5 if plan
                .pci
                .iter()
                .find(|g| g.virtio.is_some_and(|v| v.device_type == 5))
                .is_some_and(|first| {
                    (first.bus.as_str(), first.devfn()) != (f.bus.as_str(), f.devfn())
                }) =>
            {
                Err(device_err(f, "Only one balloon device is supported"))
            }
            5 => crate::monitor::balloon::control()
                .map(VirtioBackend::Balloon)
                .map_err(|e| device_err(f, format!("balloon stats timer: {e}"))),
            // Types we have no backend for keep the generic model (identity only).
            _ => return None,
        };
        let backend = match backend {
            Ok(b) => b,
            Err(e) => return Some(Err(e)),
        };
        let intx: Arc<dyn IntxLine> = Arc::new(FunctionIntx {
            forwarder: forwarder.clone(),
            bus: f.bus.clone(),
            devfn: f.devfn(),
        });
        Some(
            virtio::create(f, backend, memory.clone(), Some(intx))
                .map(|parts| {
                    // What the chardev's client sends goes to this machine's console now.
                    if let (Some(chardev), Some(console)) = (&char_input, parts.console_input) {
                        chardev.connect(Box::new(console));
                    }
                    let mut function = parts.function;
                    let mut worker = parts.worker;
                    if let Some(registrar) = &ioevents {
                        function.set_ioevent_registrar(registrar.clone());
                    }
                    if std::env::var_os("MACHINA_TRACE").is_some() {
                        worker.set_trace(format!(
                            "{}:{:02x}.{} type={}",
                            f.bus,
                            f.devfn() >> 3,
                            f.devfn() & 7,
                            mode.device_type
                        ));
                    }
                    set.workers
                        .push((Worker::Virtio(worker), f.properties.text("iothread")));
                    Arc::new(Mutex::new(function)) as SharedFunction
                })
                .map_err(|e| device_err(f, e.to_string())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_backend_is_opened_once_and_shared_by_every_build() {
        let dir = machina_tests::TempDir::new("open");
        let path = dir.join("backend");
        let mut open = OpenBackends::default();
        let mut opened = 0;
        let mut handles = Vec::new();
        for _ in 0..3 {
            let handle = open
                .get_or_open(
                    "rng r0".into(),
                    || {
                        opened += 1;
                        File::create(&path)
                    },
                    |e| e,
                )
                .expect("open");
            handles.push(handle);
        }
        assert_eq!(opened, 1, "opened (and truncated) once");
        // One open file: what one build wrote, the next continues after.
        handles[0].write_all(b"boot1 ").expect("write");
        drop(handles.remove(0));
        handles[0].write_all(b"boot2 ").expect("write");
        // Outputs: one writer for every build.
        let mut outputs = 0;
        for boot in ["boot3 ", "boot4"] {
            let (mut out, _) = open
                .char_io("chardev c0".into(), || {
                    outputs += 1;
                    handles[0]
                        .try_clone()
                        .map(|f| (Box::new(f) as Box<dyn Write + Send>, None))
                })
                .expect("output");
            out.write_all(boot.as_bytes()).expect("write");
        }
        assert_eq!(outputs, 1, "the output is opened once");
        let mut text = String::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .expect("read back");
        assert_eq!(text, "boot1 boot2 boot3 boot4");
    }
}

/// Ends a device thread's loop when signalled.
struct StopSubscriber {
    stop: Arc<EventFd>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

impl MutEventSubscriber for StopSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.stop.as_ref(), EventSet::IN));
    }
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.stop.read();
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// One I/O thread per virtio device ("virtio-io N"), each with its own epoll loop over the
/// device's queue EventFds (which KVM ioeventfds signal) and its backend (tap, console
/// input), so that a device's disk I/O never delays another device, QMP or the INTx
/// forwarding on the main loop; a multiqueue device has one more ("virtio-io N.K") per
/// further queue group (request queue, queue pair), each serving its queues in parallel
/// with the others. A device that names an `-object iothread` runs every queue on that
/// thread's loop instead (QEMU without `iothread-vq-mapping`).
/// Stopped and joined (or detached) when dropped (machine teardown and reset), leaving no
/// thread of the incarnation.
#[derive(Default)]
pub struct DeviceThreads {
    threads: Vec<(Arc<EventFd>, std::thread::JoinHandle<()>)>,
    attached: Vec<crate::iothread::Attached>,
    /// The device of each thread, for the report of one that does not stop.
    names: Vec<String>,
}

impl DeviceThreads {
    /// Start a thread for each worker without an I/O thread and attach the others to theirs
    /// (the build checked that it exists); a thread that cannot start is an error.
    pub fn start(
        workers: Vec<(Worker, Option<String>)>,
        iothreads: &crate::iothread::IoThreads,
    ) -> std::io::Result<Self> {
        let mut threads = DeviceThreads::default();
        let mut own = Vec::new();
        let mut shared: Vec<(
            Arc<crate::iothread::IoThread>,
            Vec<crate::iothread::Subscriber>,
        )> = Vec::new();
        for (worker, iothread) in workers {
            match iothread {
                Some(id) => {
                    let thread = iothreads
                        .get(&id)
                        .ok_or_else(|| std::io::Error::other(format!("Device '{id}' not found")))?;
                    let subscriber: crate::iothread::Subscriber = Arc::new(Mutex::new(worker));
                    match shared.iter_mut().find(|(t, _)| Arc::ptr_eq(t, &thread)) {
                        Some((_, list)) => list.push(subscriber),
                        None => shared.push((thread, vec![subscriber])),
                    }
                }
                None => own.push(worker),
            }
        }
        for (thread, subscribers) in shared {
            threads.attached.push(thread.attach(subscribers));
        }
        for (i, mut worker) in own.into_iter().enumerate() {
            let name = worker.name();
            // A multiqueue device's queue groups after the first (virtio-blk's request
            // queues, virtio-net's queue pairs) each get a thread of their own; the first
            // keeps the device-level queues (a control queue) and config changes.
            let lanes = match &mut worker {
                Worker::Virtio(w) => w.split_lanes(),
                Worker::Nic(_) => Vec::new(),
            };
            threads.spawn(format!("virtio-io {i}"), worker.boxed(), &name)?;
            for (k, lane) in lanes.into_iter().enumerate() {
                let lane = Worker::Virtio(lane);
                threads.spawn(format!("virtio-io {i}.{}", k + 1), lane.boxed(), &name)?;
            }
        }
        Ok(threads)
    }

    /// Start thread `thread` running `subscriber` (of device `device`) on a loop of its own.
    fn spawn(
        &mut self,
        thread: String,
        subscriber: Arc<Mutex<dyn MutEventSubscriber + Send>>,
        device: &str,
    ) -> std::io::Result<()> {
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut events: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        events.add_subscriber(subscriber);
        events.add_subscriber(Arc::new(Mutex::new(StopSubscriber {
            stop: stop.clone(),
            stopped: stopped.clone(),
        })));
        // QEMU names its I/O threads "IO <id>"; these are per device (and per queue group).
        // As QEMU's iothread_complete, wait until the thread runs: its name is set then, so
        // whoever lists the threads once the machine is built sees it.
        let (started, running) = std::sync::mpsc::sync_channel(1);
        let handle = std::thread::Builder::new().name(thread).spawn(move || {
            let _ = started.send(());
            while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
                if events.run().is_err() {
                    break;
                }
            }
        })?;
        let _ = running.recv();
        self.threads.push((stop, handle));
        self.names.push(device.to_string());
        Ok(())
    }

    /// Threads of this incarnation's own (devices on an `-object iothread` not counted).
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }
}

impl Drop for DeviceThreads {
    fn drop(&mut self) {
        for (stop, _) in &self.threads {
            let _ = stop.write(1);
        }
        // A device busy in its backend sees the stop after its current request. One stuck
        // there (a hung network file system) must not hang a reset or the exit: past the
        // deadline it is left to end on its own (it owns everything it touches).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let names = std::mem::take(&mut self.names);
        for ((_, handle), name) in self.threads.drain(..).zip(names) {
            while !handle.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            if handle.is_finished() {
                let _ = handle.join();
            } else {
                log::error!(
                    "{name}: its virtio I/O thread does not stop (blocked in its backend); left behind"
                );
            }
        }
    }
}
