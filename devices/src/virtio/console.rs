//! virtio-serial (type 3) with one `virtconsole` on port 0, as QEMU's virtio-serial-bus.c:
//! MULTIPORT with a control queue pair when max_ports > 1 (DEVICE_READY -> PORT_ADD,
//! PORT_READY -> CONSOLE_PORT + PORT_OPEN), EMERG_WRITE, output to a writer and input from
//! bytes the VMM feeds through [`ConsoleInput`].

use super::device::{
    bad_queue, check_chain, read_config_bytes, DeviceError, QueueContext, VirtioDevice,
};
use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use virtio_queue::{QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

pub const DEVICE_TYPE: u16 = 3;

const F_MULTIPORT: u64 = 1 << 1;
const F_EMERG_WRITE: u64 = 1 << 2;

const DATA_QUEUE_SIZE: u16 = 128;
const CONTROL_QUEUE_SIZE: u16 = 32;
const RX0: usize = 0;
const TX0: usize = 1;
const CTRL_RX: usize = 2;
const CTRL_TX: usize = 3;

// Control events (struct virtio_console_control).
const DEVICE_READY: u16 = 0;
const DEVICE_ADD: u16 = 1;
const DEVICE_REMOVE: u16 = 2;
const PORT_READY: u16 = 3;
const CONSOLE_PORT: u16 = 4;
const PORT_OPEN: u16 = 6;

const CONFIG_LEN: usize = 12;
const CONFIG_EMERG_WR: usize = 8;
/// Token of the input EventFd among the device's event sources.
const INPUT_TOKEN: u32 = 0;
/// Bytes of guest output or control data taken per buffer at most.
const MAX_BUF: usize = 64 * 1024;

/// Where guest output goes (a chardev), and the ports added on the running machine.
pub struct ConsoleBackend {
    pub output: Box<dyn Write + Send>,
    pub ports: HotPorts,
}

#[derive(Default)]
struct HotPortState {
    /// Ports added on the running machine (number -> is a virtconsole). They have no
    /// chardev: like QEMU's ports without one, what the guest writes there is discarded.
    present: BTreeMap<u32, bool>,
    /// Additions (true) and removals waiting to be announced.
    changes: VecDeque<(u32, bool)>,
    wake: Option<Arc<EventFd>>,
}

/// The ports `device_add`/`device_del` change on a running controller, shared with the VMM
/// (kept across rebuilds): a driver that negotiated MULTIPORT hears of each change
/// (VIRTIO_CONSOLE_PORT_ADD / PORT_REMOVE).
#[derive(Clone, Default)]
pub struct HotPorts(Arc<Mutex<HotPortState>>);

impl HotPorts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HotPortState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Port `nr` joined the bus (`console`: a virtconsole).
    pub fn add(&self, nr: u32, console: bool) {
        let mut s = self.lock();
        s.present.insert(nr, console);
        s.changes.push_back((nr, true));
        if let Some(w) = &s.wake {
            let _ = w.write(1);
        }
    }

    /// Port `nr` left the bus.
    pub fn remove(&self, nr: u32) {
        let mut s = self.lock();
        s.present.remove(&nr);
        s.changes.push_back((nr, false));
        if let Some(w) = &s.wake {
            let _ = w.write(1);
        }
    }

    /// Whether port `nr` was added on the running machine (and is still there).
    pub fn contains(&self, nr: u32) -> bool {
        self.lock().present.contains_key(&nr)
    }
}

/// Feeds host input to the guest's console port; cheap to clone.
#[derive(Clone)]
pub struct ConsoleInput {
    pending: Arc<Mutex<VecDeque<u8>>>,
    event: Arc<EventFd>,
}

impl ConsoleInput {
    /// Bytes queued that the guest has not taken yet.
    pub fn pending(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Queue `bytes` for the guest and wake the worker.
    pub fn push(&self, bytes: &[u8]) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(bytes);
        let _ = self.event.write(1);
    }
}

pub struct Console {
    output: Box<dyn Write + Send>,
    ports: HotPorts,
    /// The driver sent DEVICE_READY: port changes are announced from then on.
    driver_ready: bool,
    input: ConsoleInput,
    max_ports: u32,
    /// Guest has port 0 open (always true without MULTIPORT).
    guest_open: bool,
    /// Control messages waiting for a control-rx buffer.
    control_out: VecDeque<[u8; 8]>,
    features: u64,
}

impl Console {
    pub fn new(backend: ConsoleBackend, max_ports: u32) -> std::io::Result<Self> {
        let mut features = F_EMERG_WRITE;
        if max_ports > 1 {
            features |= F_MULTIPORT;
        }
        let input = ConsoleInput {
            pending: Arc::new(Mutex::new(VecDeque::new())),
            event: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
        };
        backend.ports.lock().wake = Some(input.event.clone());
        Ok(Self {
            output: backend.output,
            ports: backend.ports,
            driver_ready: false,
            input,
            max_ports,
            guest_open: false,
            control_out: VecDeque::new(),
            features,
        })
    }

    pub fn input(&self) -> ConsoleInput {
        self.input.clone()
    }

    fn multiport(&self, ctx: &QueueContext) -> bool {
        ctx.features & F_MULTIPORT != 0
    }

    fn control(&mut self, id: u32, event: u16, value: u16) {
        let mut m = [0u8; 8];
        m[0..4].copy_from_slice(&id.to_le_bytes());
        m[4..6].copy_from_slice(&event.to_le_bytes());
        m[6..8].copy_from_slice(&value.to_le_bytes());
        self.control_out.push_back(m);
    }

    /// Copy queued control messages into control-rx buffers.
    fn flush_control(&mut self, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        let mem = ctx.mem;
        let Some(q) = ctx.ready_queue(CTRL_RX) else {
            return Ok(());
        };
        let mut used_any = false;
        while let Some(msg) = self.control_out.front().copied() {
            let chain = q.iter(mem).map_err(|e| bad_queue(CTRL_RX, e))?.next();
            let Some(chain) = chain else { break };
            check_chain(CTRL_RX, &chain)?;
            let head = chain.head_index();
            let n = match chain.writer(mem) {
                Ok(mut w) if w.available_bytes() >= msg.len() => {
                    w.write_all(&msg).map(|_| msg.len()).unwrap_or(0)
                }
                _ => 0,
            };
            q.add_used(mem, head, n as u32)
                .map_err(|e| bad_queue(CTRL_RX, e))?;
            self.control_out.pop_front();
            used_any = true;
        }
        if used_any {
            ctx.notify(CTRL_RX);
        }
        Ok(())
    }

    /// Messages from the guest's control-tx queue.
    fn handle_control(&mut self, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        let mut msgs = Vec::new();
        let used = ctx.drain_queue(CTRL_TX, |mem, chain| {
            let mut m = [0u8; 8];
            if let Ok(mut r) = chain.reader(mem) {
                if r.read_exact(&mut m).is_ok() {
                    msgs.push(m);
                }
            }
            Ok(0)
        })?;
        let Some(used_any) = used else {
            return Ok(());
        };
        if used_any {
            ctx.notify(CTRL_TX);
        }
        for m in msgs {
            let id = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
            let event = u16::from_le_bytes([m[4], m[5]]);
            let value = u16::from_le_bytes([m[6], m[7]]);
            match (event, id) {
                (DEVICE_READY, _) if value == 1 => {
                    self.control(0, DEVICE_ADD, 1);
                    // Ports added on the running machine so far; later ones as they come.
                    self.driver_ready = true;
                    let present: Vec<u32> = {
                        let mut p = self.ports.lock();
                        p.changes.clear();
                        p.present.keys().copied().collect()
                    };
                    for nr in present {
                        self.control(nr, DEVICE_ADD, 1);
                    }
                }
                // A virtconsole added on the running machine is a console port.
                (PORT_READY, nr)
                    if nr > 0
                        && value == 1
                        && self.ports.lock().present.get(&nr) == Some(&true) =>
                {
                    self.control(nr, CONSOLE_PORT, 1);
                }
                (PORT_READY, 0) if value == 1 => {
                    self.control(0, CONSOLE_PORT, 1);
                    // The host side of a console is always connected.
                    self.control(0, PORT_OPEN, 1);
                }
                (PORT_OPEN, 0) => self.guest_open = value == 1,
                _ => {}
            }
        }
        self.flush_control(ctx)?;
        // Input typed before the guest opened the port is delivered now.
        self.handle_input(ctx)
    }

    /// Announce ports added or removed since the driver last heard (MULTIPORT only).
    fn port_changes(&mut self, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        let changes: Vec<(u32, bool)> = self.ports.lock().changes.drain(..).collect();
        if !self.multiport(ctx) || !self.driver_ready {
            // Announced with DEVICE_READY instead.
            return Ok(());
        }
        for (nr, added) in changes {
            self.control(nr, if added { DEVICE_ADD } else { DEVICE_REMOVE }, 1);
        }
        self.flush_control(ctx)
    }

    /// Output on a port added on the running machine: it has no chardev, so it is
    /// discarded (QEMU's ports without one do the same).
    fn discard_output(&mut self, idx: usize, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        if ctx.drain_queue(idx, |_, _| Ok(0))? == Some(true) {
            ctx.notify(idx);
        }
        Ok(())
    }

    /// Guest output on port 0.
    fn handle_output(&mut self, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        let output = &mut self.output;
        let used = ctx.drain_queue(TX0, |mem, chain| {
            if let Ok(mut r) = chain.reader(mem) {
                let n = r.available_bytes().min(MAX_BUF);
                let mut buf = vec![0u8; n];
                if r.read_exact(&mut buf).is_ok() {
                    // A chardev that cannot take output loses it, like QEMU's.
                    let _ = output.write_all(&buf);
                }
            }
            Ok(0)
        })?;
        let Some(used_any) = used else {
            return Ok(());
        };
        let _ = self.output.flush();
        if used_any {
            ctx.notify(TX0);
        }
        Ok(())
    }

    /// Host input into port 0's receive buffers.
    fn handle_input(&mut self, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        if self.multiport(ctx) && !self.guest_open {
            return Ok(());
        }
        let mem = ctx.mem;
        let pending = self.input.pending.clone();
        let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
        let Some(q) = ctx.ready_queue(RX0) else {
            return Ok(());
        };
        let mut used_any = false;
        while !pending.is_empty() {
            let chain = q.iter(mem).map_err(|e| bad_queue(RX0, e))?.next();
            let Some(chain) = chain else { break };
            check_chain(RX0, &chain)?;
            let head = chain.head_index();
            let n = match chain.writer(mem) {
                Ok(mut w) => {
                    let n = w.available_bytes().min(pending.len()).min(MAX_BUF);
                    let chunk: Vec<u8> = pending.drain(..n).collect();
                    w.write_all(&chunk).map(|_| n).unwrap_or(0)
                }
                Err(_) => 0,
            };
            q.add_used(mem, head, n as u32)
                .map_err(|e| bad_queue(RX0, e))?;
            used_any = true;
        }
        drop(pending);
        if used_any {
            ctx.notify(RX0);
        }
        Ok(())
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        if self.features & F_MULTIPORT == 0 {
            return vec![DATA_QUEUE_SIZE; 2];
        }
        // Port 0, the control pair, then ports 1.. (virtio_serial_device_realize).
        let mut v = vec![
            DATA_QUEUE_SIZE,
            DATA_QUEUE_SIZE,
            CONTROL_QUEUE_SIZE,
            CONTROL_QUEUE_SIZE,
        ];
        v.extend(std::iter::repeat_n(
            DATA_QUEUE_SIZE,
            2 * (self.max_ports as usize - 1),
        ));
        v
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: usize, data: &mut [u8]) {
        let mut c = [0u8; CONFIG_LEN];
        c[4..8].copy_from_slice(&self.max_ports.to_le_bytes());
        read_config_bytes(&c, offset, data);
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        // Emergency write: one character straight to the output.
        if offset == CONFIG_EMERG_WR && !data.is_empty() {
            let _ = self.output.write_all(&data[..1]);
            let _ = self.output.flush();
        }
    }

    fn activate(&mut self, features: u64) {
        // Without MULTIPORT port 0 is connected from the start.
        self.guest_open = features & F_MULTIPORT == 0;
    }

    fn reset(&mut self) {
        self.guest_open = false;
        self.driver_ready = false;
        self.control_out.clear();
    }

    fn process_queue(&mut self, idx: usize, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        match idx {
            RX0 => self.handle_input(ctx),
            TX0 => self.handle_output(ctx),
            CTRL_RX => self.flush_control(ctx),
            CTRL_TX => self.handle_control(ctx),
            // Transmit queues of ports 1.. (4 + 2 * (nr - 1) + 1): only ports added on the
            // running machine are announced, and their output has nowhere to go.
            i if i > CTRL_TX && i % 2 == 1 && self.ports.contains(((i - 4) / 2 + 1) as u32) => {
                self.discard_output(i, ctx)
            }
            _ => Ok(()),
        }
    }

    fn event_sources(&self) -> Vec<(RawFd, u32)> {
        vec![(self.input.event.as_raw_fd(), INPUT_TOKEN)]
    }

    fn process_event(&mut self, token: u32, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        if token == INPUT_TOKEN {
            let _ = self.input.event.read();
            self.handle_input(ctx)?;
            self.port_changes(ctx)?;
        }
        Ok(())
    }
}
