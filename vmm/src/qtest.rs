//! QEMU's qtest protocol (docs/devel/qtest.rst): with `-qtest` (and `-accel qtest`) no vCPU
//! runs and a test drives port I/O and memory accesses from outside, one command per line:
//! `outb/outw/outl ADDR VAL`, `inb/inw/inl ADDR`, `readb..readq ADDR`, `writeb..writeq ADDR
//! VAL`, `read ADDR LEN`, `write ADDR LEN 0xDATA`, `memset ADDR LEN BYTE`, `endianness`,
//! answering `OK [value]` or `FAIL ...` with QEMU's formatting. The firmware step does not run
//! unless the test asks with the machina command `machina_firmware_init`, so a client first
//! sees the reset state QEMU shows.

use crate::memory::GuestMemory;
use devices::bus::Bus;
use devices::pci::SharedHost;
use machine::Plan;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
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
                ("server", v) => server = matches!(v, "on" | "yes" | "true"),
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
    pub memory: GuestMemory,
    pub pci: Option<SharedHost>,
    pub plan: Plan,
}

pub type QtestSlot = Arc<Mutex<Option<QtestMachine>>>;

fn parse_num(word: Option<&&str>) -> Option<u64> {
    let w = word?;
    match w.strip_prefix("0x").or_else(|| w.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None if w.len() > 1 && w.starts_with('0') => u64::from_str_radix(&w[1..], 8).ok(),
        None => w.parse().ok(),
    }
}

impl QtestMachine {
    fn mem_read(&self, addr: u64, buf: &mut [u8]) {
        if self.memory.read_slice(buf, GuestAddress(addr)).is_ok() {
            return;
        }
        // Not (all) RAM: device MMIO, or nothing (reads as zero, as in QEMU).
        if !self.mmio.read(addr, buf) {
            buf.fill(0);
        }
    }

    fn mem_write(&self, addr: u64, data: &[u8]) {
        if self.memory.write_slice(data, GuestAddress(addr)).is_ok() {
            return;
        }
        self.mmio.write(addr, data);
    }

    /// Process one command line; returns the reply line (without newline).
    pub fn command(&self, line: &str) -> String {
        let words: Vec<&str> = line.split(' ').collect();
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
            "endianness" => "OK little".to_string(),
            "clock_step" | "clock_set" => "OK 0".to_string(),
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

fn serve_stream<R: BufRead, W: Write>(slot: &QtestSlot, reader: R, mut writer: W) {
    for line in reader.split(b'\n') {
        let Ok(line) = line else { return };
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches('\r');
        let reply = match slot.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(machine) => machine.command(text),
            None => "FAIL the machine is not built".to_string(),
        };
        if writer
            .write_all(format!("{reply}\n").as_bytes())
            .and_then(|_| writer.flush())
            .is_err()
        {
            return;
        }
    }
}

fn serve_unix(slot: &QtestSlot, stream: UnixStream) {
    if let Ok(reader) = stream.try_clone() {
        serve_stream(slot, BufReader::new(reader), stream);
    }
}

/// Start serving `endpoint` on a thread of its own.
pub fn start(endpoint: &QtestEndpoint, slot: QtestSlot) -> Result<(), QtestError> {
    match endpoint {
        QtestEndpoint::Stdio => {
            std::thread::spawn(move || {
                serve_stream(&slot, std::io::stdin().lock(), std::io::stdout());
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
    }
}
