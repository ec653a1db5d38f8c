//! A blocking client for QEMU's qtest protocol as machina serves it (`-accel qtest -qtest
//! unix:PATH,server=on`) and as QEMU serves it (`-accel tcg -qtest ...`): commands, config
//! space through the config ports and ECAM. The conformance walk over it is
//! [`crate::config_walk`].

pub use crate::rng::XorShift;
use crate::TempDir;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where q35's firmware (and these tests) put ECAM.
pub const ECAM_BASE: u64 = 0xb000_0000;

/// (bus, device, function).
pub type Bdf = (u8, u8, u8);

pub fn fmt_bdf((b, d, f): Bdf) -> String {
    format!("{b:02x}:{d:02x}.{f:x}")
}

/// A machina process serving qtest on a private socket; killed when dropped.
pub struct Qtest {
    child: Child,
    /// Holds the socket; removed after the process is killed (fields drop after `drop`).
    _dir: TempDir,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// The command line after the qtest options, for messages.
    pub args: Vec<String>,
}

impl Qtest {
    /// Start `binary -accel qtest -qtest unix:...,server=on ARGS` and wait until the machine
    /// is built (machina answers FAIL until then). Panics with stderr if it exits instead.
    pub fn start(binary: &Path, args: &[String]) -> Qtest {
        Self::try_start(binary, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like `start`, but returns why the machine was not built (e.g. machina's error).
    pub fn try_start(binary: &Path, args: &[String]) -> Result<Qtest, String> {
        Self::launch(binary, args, |qtest| {
            let mut argv = vec!["-accel".into(), "qtest".into(), "-qtest".into()];
            argv.push(format!("{qtest},server=on"));
            argv.extend(args.iter().cloned());
            argv
        })
    }

    /// QEMU itself, the oracle the expectations come from:
    /// `-accel tcg -display none -qtest-log /dev/null [-S] EXTRA ARGS -qtest ...`. Debian's
    /// QEMU 7.2 has no qtest accelerator; with `stopped` (-S) no guest code runs, so config
    /// space is QEMU's reset state.
    pub fn start_qemu(
        binary: &Path,
        args: &[String],
        stopped: bool,
        extra: &[String],
    ) -> Result<Qtest, String> {
        Self::launch(binary, args, |qtest| {
            let mut argv: Vec<String> = ["-accel", "tcg", "-display", "none"]
                .into_iter()
                .chain(["-qtest-log", "/dev/null"])
                .map(String::from)
                .collect();
            if stopped {
                argv.push("-S".into());
            }
            argv.extend(extra.iter().cloned());
            argv.extend(args.iter().cloned());
            argv.push("-qtest".into());
            argv.push(format!("{qtest},server=on,wait=off"));
            argv
        })
    }

    /// Start `binary` with the command line `argv` builds around the qtest socket
    /// (`unix:PATH`), connect, and wait until the machine answers.
    fn launch(
        binary: &Path,
        args: &[String],
        argv: impl FnOnce(&str) -> Vec<String>,
    ) -> Result<Qtest, String> {
        let dir = TempDir::new("qtest");
        let socket = dir.join("qtest.sock");
        let mut child = Command::new(binary)
            .args(argv(&format!("unix:{}", socket.display())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let start = Instant::now();
        let stream = loop {
            if let Ok(s) = UnixStream::connect(&socket) {
                break s;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return Err(format!(
                    "{} {args:?} exited with {status} before serving qtest: {err}",
                    binary.display()
                ));
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} {args:?}: no qtest socket after 20 s",
                    binary.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| format!("read timeout: {e}"))?;
        let writer = stream
            .try_clone()
            .map_err(|e| format!("clone stream: {e}"))?;
        let mut q = Qtest {
            child,
            _dir: dir,
            reader: BufReader::new(stream),
            writer,
            args: args.to_vec(),
        };
        loop {
            match q.try_cmd("endianness") {
                Ok(r) if r == "OK little" => return Ok(q),
                Ok(_) if start.elapsed() < Duration::from_secs(20) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Ok(r) => {
                    return Err(format!(
                        "{} {args:?}: machine never built ({r})",
                        binary.display()
                    ))
                }
                Err(e) => return Err(format!("{} {args:?}: {e}", binary.display())),
            }
        }
    }

    /// Stop the process and return what it wrote on stderr.
    pub fn finish(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        err
    }

    /// The process id (for /proc/PID counts).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Send one command line, return the reply line (without newline). Panics on EOF or a
    /// read timeout, naming the command.
    pub fn cmd(&mut self, line: &str) -> String {
        self.try_cmd(line)
            .unwrap_or_else(|e| panic!("qtest {line:?} ({:?}): {e}", self.args))
    }

    /// Like `cmd`, but returns an error instead of panicking.
    pub fn try_cmd(&mut self, line: &str) -> Result<String, String> {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        loop {
            let mut reply = String::new();
            match self.reader.read_line(&mut reply) {
                Ok(0) => return Err("connection closed".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("read: {e}")),
            }
            let reply = reply.trim_end();
            if !reply.starts_with("IRQ") {
                return Ok(reply.to_string());
            }
        }
    }

    /// Send one command; return its reply and the `IRQ raise N` / `IRQ lower N` lines that
    /// came before it (intercepted interrupt changes the command caused).
    pub fn cmd_irqs(&mut self, line: &str) -> (String, Vec<String>) {
        let ctx = format!("qtest {line:?} ({:?})", self.args);
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .unwrap_or_else(|e| panic!("{ctx}: write: {e}"));
        let mut irqs = Vec::new();
        loop {
            let mut reply = String::new();
            match self.reader.read_line(&mut reply) {
                Ok(0) => panic!("{ctx}: connection closed"),
                Ok(_) => {}
                Err(e) => panic!("{ctx}: read: {e}"),
            }
            let reply = reply.trim_end().to_string();
            if reply.starts_with("IRQ") {
                irqs.push(reply);
            } else {
                return (reply, irqs);
            }
        }
    }

    /// A command answering `OK VALUE`; returns VALUE.
    pub fn value(&mut self, line: &str) -> u64 {
        let r = self.cmd(line);
        let v = r
            .strip_prefix("OK 0x")
            .unwrap_or_else(|| panic!("qtest {line:?} answered {r:?}"));
        u64::from_str_radix(v, 16).unwrap_or_else(|_| panic!("qtest {line:?} answered {r:?}"))
    }

    fn ok(&mut self, line: &str) {
        let r = self.cmd(line);
        assert_eq!(r, "OK", "qtest {line:?} ({:?})", self.args);
    }

    fn select(&mut self, (b, d, f): Bdf, off: u16) {
        let addr = 0x8000_0000u32
            | u32::from(b) << 16
            | u32::from(d) << 11
            | u32::from(f) << 8
            | u32::from(off & 0xfc);
        self.ok(&format!("outl 0xcf8 {addr:#x}"));
    }

    /// Config read through 0xcf8/0xcfc.
    pub fn cfg_read(&mut self, bdf: Bdf, off: u16, size: u8) -> u32 {
        self.select(bdf, off);
        let op = match size {
            1 => "inb",
            2 => "inw",
            _ => "inl",
        };
        self.value(&format!("{op} {:#x}", 0xcfc + (off & 3))) as u32
    }

    /// Config write through 0xcf8/0xcfc.
    pub fn cfg_write(&mut self, bdf: Bdf, off: u16, size: u8, value: u32) {
        self.select(bdf, off);
        let op = match size {
            1 => "outb",
            2 => "outw",
            _ => "outl",
        };
        self.ok(&format!("{op} {:#x} {value:#x}", 0xcfc + (off & 3)));
    }

    pub fn ecam_addr((b, d, f): Bdf, off: u16) -> u64 {
        ECAM_BASE
            + (u64::from(b) << 20)
            + (u64::from(d) << 15)
            + (u64::from(f) << 12)
            + u64::from(off)
    }

    /// A dword through ECAM (`readl`).
    pub fn ecam_read(&mut self, bdf: Bdf, off: u16) -> u32 {
        self.value(&format!("readl {:#x}", Self::ecam_addr(bdf, off))) as u32
    }
}

impl Drop for Qtest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok())
        .collect()
}
