//! QEMU's qtest protocol (docs/devel/qtest.rst): with `-qtest` (and `-accel qtest`) no vCPU
//! runs and a test drives port I/O and memory accesses from outside, one command per line:
//! `outb/outw/outl ADDR VAL`, `inb/inw/inl ADDR`, `readb..readq ADDR`, `writeb..writeq ADDR
//! VAL`, `read ADDR LEN`, `write ADDR LEN 0xDATA`, `b64read ADDR LEN`, `b64write ADDR LEN B64`,
//! `memset ADDR LEN BYTE`, `endianness`, `clock_step [NS]`, `clock_set NS` (the virtual
//! clock: device timers fire in deadline order as it passes them; without NS, to the next),
//! `irq_intercept_in/out PATH`, answering `OK [value]` or `FAIL ...` with QEMU's formatting,
//! and sending `IRQ raise N` / `IRQ lower N` when an intercepted line changes. The firmware
//! step does not run unless the test asks with the machina command `machina_firmware_init`,
//! so a client first sees the reset state QEMU shows.
//!
//! Commands that need the machine and arrive before it exists (under `--preconfig` or
//! `-delay-machine-init`) wait until it is built, as QEMU only processes them then;
//! `endianness` is answered at once, since libqtest asks it before it sends
//! `x-exit-preconfig`. In qtest mode no vCPU and no local APIC run: an MSI is the memory
//! write it is on the bus (libqos polls the address), and INTx levels are what the test
//! intercepts.

use crate::memory::GuestMemory;
use devices::bus::Bus;
use devices::pci::SharedHost;
use devices::timer::TimerQueue;
use machine::Plan;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use vm_memory::{Bytes, GuestAddress};

/// Where the qtest protocol is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QtestEndpoint {
    /// `unix:PATH` (connect to the test's socket, as libqtest expects) or
    /// `unix:PATH,server=on` (listen).
    Unix {
        path: PathBuf,
        server: bool,
    },
    Stdio,
}

#[derive(Debug, thiserror::Error)]
pub enum QtestError {
    #[error("-qtest {0}: expected unix:PATH[,server=on] or stdio")]
    BadSpec(String),
    #[error("-qtest: cannot use {path}: {source}")]
    Socket {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl QtestEndpoint {
    pub fn parse(spec: &str) -> Result<Self, QtestError> {
        if spec == "stdio" {
            return Ok(QtestEndpoint::Stdio);
        }
        let rest = spec
            .strip_prefix("unix:")
            .ok_or_else(|| QtestError::BadSpec(spec.to_string()))?;
        let items = crate::cli::split_keyval(rest);
        let path = items
            .first()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| QtestError::BadSpec(spec.to_string()))?;
        let mut server = false;
        for item in &items[1..] {
            match item.split_once('=').unwrap_or((item.as_str(), "on")) {
                ("server", v) => {
                    server = machine::qapi_bool_parse(v)
                        .ok_or_else(|| QtestError::BadSpec(spec.to_string()))?
                }
                ("wait", _) | ("nowait", _) => {}
                _ => return Err(QtestError::BadSpec(spec.to_string())),
            }
        }
        Ok(QtestEndpoint::Unix {
            path: PathBuf::from(path),
            server,
        })
    }
}

/// The machine parts qtest reaches; replaced at every (re)build.
pub struct QtestMachine {
    pub io: Arc<Bus>,
    pub mmio: Arc<Bus>,
    /// The address space the test's memory accesses go through (RAM, PAM/SMRAM/TSEG
    /// remapping, ROMs, the MMIO bus), the same view KVM's memslots follow.
    pub view: crate::memory::SharedView,
    pub pci: Option<SharedHost>,
    pub plan: Plan,
}

/// Where asynchronous `IRQ` lines go: the client's stream, shared with the replies so that
/// lines never interleave.
type SharedWriter = Arc<Mutex<Option<Box<dyn Write + Send>>>>;

/// Interrupt lines as qtest sees them: levels by GSI, reported once intercepted.
pub struct IrqReporter {
    intercepted: AtomicBool,
    levels: Mutex<Vec<bool>>,
    out: SharedWriter,
}

impl IrqReporter {
    fn report(&self, gsi: u32, level: bool) {
        let changed = {
            let mut levels = self.levels.lock().unwrap_or_else(|e| e.into_inner());
            let i = gsi as usize;
            if levels.len() <= i {
                levels.resize(i + 1, false);
            }
            std::mem::replace(&mut levels[i], level) != level
        };
        if changed && self.intercepted.load(Ordering::SeqCst) {
            let line = format!("IRQ {} {gsi}\n", if level { "raise" } else { "lower" });
            if let Some(w) = self.out.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                let _ = w.write_all(line.as_bytes()).and_then(|_| w.flush());
            }
        }
    }
}

/// INTx under qtest: no interrupt controller runs, the level goes to the test.
struct QtestIntx(Arc<IrqReporter>);

impl devices::pci::interrupt::IntxSink for QtestIntx {
    fn set_level(&self, gsi: u32, level: bool) {
        self.0.report(gsi, level);
    }
}

/// MSI under qtest: with no local APIC, the message is the DWORD write it is on the bus,
/// landing in guest memory where the test polls for it (as QEMU's qtest accelerator does).
struct QtestMsi(GuestMemory);

impl devices::pci::interrupt::MsiSink for QtestMsi {
    fn send(&self, address: u64, data: u32) {
        // An address outside RAM (the APIC window) is dropped, as the bus would.
        let _ = self
            .0
            .write_slice(&data.to_le_bytes(), GuestAddress(address));
    }
}

/// Everything qtest keeps across machine (re)builds.
pub struct QtestState {
    machine: Mutex<Option<QtestMachine>>,
    irq: Arc<IrqReporter>,
    /// The virtual clock: only qtest commands move it, as with QEMU's qtest accelerator;
    /// device timers on it fire as it passes their deadlines.
    clock: Arc<TimerQueue>,
    /// Held while a command runs and its reply is written: the process does not end
    /// between a command's effect (a guest shutdown) and its reply, as in QEMU.
    busy: Mutex<()>,
}

pub type QtestSlot = Arc<QtestState>;

impl QtestState {
    pub fn new(clock: Arc<TimerQueue>) -> QtestSlot {
        Arc::new(Self {
            machine: Mutex::new(None),
            irq: Arc::new(IrqReporter {
                intercepted: AtomicBool::new(false),
                levels: Mutex::new(Vec::new()),
                out: Arc::new(Mutex::new(None)),
            }),
            clock,
            busy: Mutex::new(()),
        })
    }

    /// Wait (briefly) for the command in progress to be answered.
    pub fn quiesce(&self) {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::time::Instant::now() < end {
            if let Ok(guard) = self.busy.try_lock() {
                drop(guard);
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Where ISA interrupt levels go under qtest (the RTC's IRQ 8).
    pub fn intx_sink(&self) -> Arc<dyn devices::pci::interrupt::IntxSink> {
        Arc::new(QtestIntx(self.irq.clone()))
    }

    /// Serve a freshly built machine: its interrupts go to the test from now on.
    pub fn install(&self, machine: QtestMachine) {
        if let Some(host) = &machine.pci {
            let mut host = host.lock().unwrap_or_else(|e| e.into_inner());
            host.set_intx_sink(Arc::new(QtestIntx(self.irq.clone())));
            host.set_isa_irq_sink(Arc::new(QtestIntx(self.irq.clone())));
            host.set_msi_sink(Arc::new(QtestMsi(machine.view.memory().clone())));
        }
        *self.machine.lock().unwrap_or_else(|e| e.into_inner()) = Some(machine);
    }

    /// Commands that do not need the machine; None for the rest.
    fn command_without_machine(&self, words: &[&str]) -> Option<String> {
        Some(match *words.first()? {
            "endianness" => "OK little".to_string(),
            "clock_step" => {
                let now = self.clock.now();
                // Without an argument: to the next timer deadline, as QEMU.
                let Some(ns) = words.get(1) else {
                    return Some(match self.clock.next_deadline() {
                        Some(deadline) => {
                            format!("OK {}", self.clock.advance_to(deadline.max(now)))
                        }
                        None => "FAIL cannot advance clock to the next deadline because there \
                                 is no pending deadline"
                            .to_string(),
                    });
                };
                match parse_signed(ns) {
                    Some(ns) if ns > 0 => {
                        format!("OK {}", self.clock.advance_to(now.saturating_add(ns)))
                    }
                    Some(_) => "FAIL could not advance time".to_string(),
                    None => "FAIL invalid arguments".to_string(),
                }
            }
            "clock_set" => {
                let now = self.clock.now();
                match words.get(1).and_then(|w| parse_signed(w)) {
                    // The clock never goes back: QEMU answers FAIL with the time it has.
                    Some(ns) if ns >= now => format!("OK {}", self.clock.advance_to(ns)),
                    Some(_) => format!("FAIL {now}"),
                    None => "FAIL invalid arguments".to_string(),
                }
            }
            "irq_intercept_in" | "irq_intercept_out" => match words.get(1) {
                None => "FAIL Unknown device".to_string(),
                Some(_) => {
                    self.irq.intercepted.store(true, Ordering::SeqCst);
                    "OK".to_string()
                }
            },
            _ => return None,
        })
    }

    fn command(&self, line: &str) -> String {
        let words: Vec<&str> = line.split(' ').filter(|w| !w.is_empty()).collect();
        if let Some(reply) = self.command_without_machine(&words) {
            return reply;
        }
        // Wait for the machine: QEMU processes commands only once it exists.
        loop {
            if let Some(machine) = self
                .machine
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                return machine.command(&words);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

fn parse_signed(w: &str) -> Option<i64> {
    match w.strip_prefix('-') {
        Some(rest) => parse_num(Some(&rest))
            .and_then(|v| i64::try_from(v).ok())
            .map(|v| -v),
        None => parse_num(Some(&w)).and_then(|v| i64::try_from(v).ok()),
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// GLib's g_base64_decode: skips characters outside the alphabet, stops at padding.
fn base64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        if c == b'=' {
            break;
        }
        let Some(v) = B64.iter().position(|&x| x == c) else {
            continue;
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn parse_num(word: Option<&&str>) -> Option<u64> {
    let w = word?;
    match w.strip_prefix("0x").or_else(|| w.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None if w.len() > 1 && w.starts_with('0') => u64::from_str_radix(&w[1..], 8).ok(),
        None => w.parse().ok(),
    }
}

impl QtestMachine {
    /// A memory read as the chipset decodes it: RAM, ROM, a black hole, device MMIO, or
    /// nothing (reads as zero, as in QEMU).
    fn mem_read(&self, addr: u64, buf: &mut [u8]) {
        self.view.read(addr, buf, &self.mmio);
    }

    fn mem_write(&self, addr: u64, data: &[u8]) {
        self.view.write(addr, data, &self.mmio);
    }

    /// Process one command; returns the reply line (without newline).
    fn command(&self, words: &[&str]) -> String {
        let Some(&cmd) = words.first() else {
            return "FAIL Unknown command ''".to_string();
        };
        let arg = |i: usize| parse_num(words.get(i));
        let size = |c: char| match c {
            'b' => 1usize,
            'w' => 2,
            'l' => 4,
            _ => 8,
        };
        match cmd {
            "outb" | "outw" | "outl" => {
                let (Some(port), Some(value)) = (arg(1), arg(2)) else {
                    return "FAIL invalid arguments".to_string();
                };
                if port > 0xffff {
                    return "FAIL invalid port".to_string();
                }
                let n = size(cmd.chars().nth(3).unwrap_or('b'));
                self.io.write(port, &value.to_le_bytes()[..n]);
                "OK".to_string()
            }
            "inb" | "inw" | "inl" => {
                let Some(port) = arg(1).filter(|&p| p <= 0xffff) else {
                    return "FAIL invalid port".to_string();
                };
                let n = size(cmd.chars().nth(2).unwrap_or('b'));
                let mut buf = [0xffu8; 8];
                if !self.io.read(port, &mut buf[..n]) {
                    buf.fill(0xff);
                }
                let mut v = [0u8; 8];
                v[..n].copy_from_slice(&buf[..n]);
                format!("OK 0x{:04x}", u64::from_le_bytes(v))
            }
            "writeb" | "writew" | "writel" | "writeq" => {
                let (Some(addr), Some(value)) = (arg(1), arg(2)) else {
                    return "FAIL invalid arguments".to_string();
                };
                let n = size(cmd.chars().nth(5).unwrap_or('b'));
                self.mem_write(addr, &value.to_le_bytes()[..n]);
                "OK".to_string()
            }
            "readb" | "readw" | "readl" | "readq" => {
                let Some(addr) = arg(1) else {
                    return "FAIL invalid arguments".to_string();
                };
                let n = size(cmd.chars().nth(4).unwrap_or('b'));
                let mut v = [0u8; 8];
                self.mem_read(addr, &mut v[..n]);
                format!("OK 0x{:016x}", u64::from_le_bytes(v))
            }
            "read" => {
                let (Some(addr), Some(len)) = (arg(1), arg(2)) else {
                    return "FAIL invalid arguments".to_string();
                };
                if len == 0 || len > 1 << 24 {
                    return "FAIL invalid length".to_string();
                }
                let mut data = vec![0u8; len as usize];
                self.mem_read(addr, &mut data);
                let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
                format!("OK 0x{hex}")
            }
            "write" => {
                let (Some(addr), Some(len), Some(hex)) = (arg(1), arg(2), words.get(3)) else {
                    return "FAIL invalid arguments".to_string();
                };
                if hex.len() < 3 || len > 1 << 24 {
                    return "ERR invalid argument size".to_string();
                }
                let digits = hex.get(2..).unwrap_or("").as_bytes();
                let nib = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                let data: Vec<u8> = (0..len as usize)
                    .map(|i| match digits.get(i * 2..i * 2 + 2) {
                        Some(pair) => (nib(pair[0]) << 4) | nib(pair[1]),
                        None => 0,
                    })
                    .collect();
                self.mem_write(addr, &data);
                "OK".to_string()
            }
            "memset" => {
                let (Some(addr), Some(len), Some(byte)) = (arg(1), arg(2), arg(3)) else {
                    return "FAIL invalid arguments".to_string();
                };
                if len > 1 << 24 {
                    return "FAIL invalid length".to_string();
                }
                if len > 0 {
                    self.mem_write(addr, &vec![byte as u8; len as usize]);
                }
                "OK".to_string()
            }
            "b64read" => {
                let (Some(addr), Some(len)) = (arg(1), arg(2)) else {
                    return "FAIL invalid arguments".to_string();
                };
                if len > 1 << 24 {
                    return "FAIL invalid length".to_string();
                }
                let mut data = vec![0u8; len as usize];
                self.mem_read(addr, &mut data);
                format!("OK {}", base64_encode(&data))
            }
            "b64write" => {
                let (Some(addr), Some(len), Some(text)) = (arg(1), arg(2), words.get(3)) else {
                    return "FAIL invalid arguments".to_string();
                };
                if text.len() < 3 || len > 1 << 24 {
                    return "ERR invalid argument size".to_string();
                }
                // As QEMU: LEN bytes are written; a shorter payload is padded with zeroes.
                let mut data = base64_decode(text);
                data.resize(len as usize, 0);
                self.mem_write(addr, &data);
                "OK".to_string()
            }
            "machina_firmware_init" => match &self.pci {
                Some(host) => match host
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .firmware_init(&self.plan)
                {
                    Ok(_) => "OK".to_string(),
                    Err(e) => format!("FAIL {e}"),
                },
                None => "FAIL the machine has no PCI host".to_string(),
            },
            other => format!("FAIL Unknown command '{other}'"),
        }
    }
}

fn serve_stream<R: BufRead>(slot: &QtestSlot, reader: R, writer: Box<dyn Write + Send>) {
    let out = slot.irq.out.clone();
    *out.lock().unwrap_or_else(|e| e.into_inner()) = Some(writer);
    for line in reader.split(b'\n') {
        let Ok(line) = line else { break };
        let text = String::from_utf8_lossy(&line);
        let _busy = slot.busy.lock().unwrap_or_else(|e| e.into_inner());
        let reply = slot.command(text.trim_end_matches('\r'));
        let mut guard = out.lock().unwrap_or_else(|e| e.into_inner());
        let Some(w) = guard.as_mut() else { break };
        if w.write_all(format!("{reply}\n").as_bytes())
            .and_then(|_| w.flush())
            .is_err()
        {
            break;
        }
    }
    *out.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

fn serve_unix(slot: &QtestSlot, stream: UnixStream) {
    if let Ok(reader) = stream.try_clone() {
        serve_stream(slot, BufReader::new(reader), Box::new(stream));
    }
}

/// Start serving `endpoint` on a thread of its own.
pub fn start(endpoint: &QtestEndpoint, slot: QtestSlot) -> Result<(), QtestError> {
    match endpoint {
        QtestEndpoint::Stdio => {
            std::thread::spawn(move || {
                serve_stream(&slot, std::io::stdin().lock(), Box::new(std::io::stdout()));
            });
        }
        QtestEndpoint::Unix {
            path,
            server: false,
        } => {
            let stream = UnixStream::connect(path).map_err(|source| QtestError::Socket {
                path: path.display().to_string(),
                source,
            })?;
            std::thread::spawn(move || serve_unix(&slot, stream));
        }
        QtestEndpoint::Unix { path, server: true } => {
            let _ = std::fs::remove_file(path);
            let listener = UnixListener::bind(path).map_err(|source| QtestError::Socket {
                path: path.display().to_string(),
                source,
            })?;
            std::thread::spawn(move || {
                for stream in listener.incoming().map_while(Result::ok) {
                    serve_unix(&slot, stream);
                }
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            QtestEndpoint::parse("unix:/tmp/q,server=on,wait=off").unwrap(),
            QtestEndpoint::Unix {
                path: "/tmp/q".into(),
                server: true
            }
        );
        assert_eq!(
            QtestEndpoint::parse("unix:/tmp/q").unwrap(),
            QtestEndpoint::Unix {
                path: "/tmp/q".into(),
                server: false
            }
        );
        assert_eq!(QtestEndpoint::parse("stdio").unwrap(), QtestEndpoint::Stdio);
        assert!(QtestEndpoint::parse("tcp:1").is_err());
        assert_eq!(parse_num(Some(&"0x10")), Some(16));
        assert_eq!(parse_num(Some(&"10")), Some(10));
        assert_eq!(parse_num(Some(&"010")), Some(8));
        assert_eq!(parse_signed("-0x10"), Some(-16));
    }

    #[test]
    fn base64_as_glib() {
        for data in [
            &b""[..],
            b"a",
            b"ab",
            b"abc",
            b"hello world",
            &[0xff, 0, 0x80],
        ] {
            assert_eq!(base64_decode(&base64_encode(data)), data);
        }
        assert_eq!(base64_encode(b"hello"), "aGVsbG8=");
        // Characters outside the alphabet are skipped, padding ends the data.
        assert_eq!(base64_decode("aGVs\nbG8=ignored"), b"hello");
    }
}
