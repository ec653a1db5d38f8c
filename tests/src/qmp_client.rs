//! A small blocking QMP client for integration tests: connects to machina's unix socket,
//! negotiates, runs commands, and keeps the events that arrive in between.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct QmpClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Events received so far, in order.
    pub events: Vec<Value>,
    pub greeting: Value,
}

impl QmpClient {
    /// Connect (retrying until the socket appears or `limit` passes) and read the greeting.
    pub fn connect(path: &Path, limit: Duration) -> QmpClient {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if start.elapsed() < limit => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("cannot connect to {}: {e}", path.display()),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        let writer = stream.try_clone().expect("clone stream");
        let mut client = QmpClient {
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
            greeting: Value::Null,
        };
        client.greeting = client.read_message();
        client
    }

    fn read_message(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read from QMP");
        assert!(n > 0, "QMP connection closed");
        assert!(line.ends_with("\r\n"), "QMP lines end with CRLF: {line:?}");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad QMP JSON {line:?}: {e}"))
    }

    /// Send one message as it is, without waiting for an answer (pipelined requests).
    pub fn send(&mut self, msg: &Value) {
        let text = format!("{msg}\n");
        self.writer
            .write_all(text.as_bytes())
            .expect("write to QMP");
    }

    /// The next response (events are kept in `events`).
    pub fn recv(&mut self) -> Value {
        loop {
            let m = self.read_message();
            if m.get("event").is_some() {
                self.events.push(m);
            } else {
                return m;
            }
        }
    }

    /// Send `command` with `args` and return the whole response (`return` or `error`).
    pub fn execute(&mut self, command: &str, args: Value) -> Value {
        let mut msg = json!({ "execute": command });
        if !args.is_null() {
            msg["arguments"] = args;
        }
        let mut text = msg.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .expect("write to QMP");
        loop {
            let m = self.read_message();
            if m.get("event").is_some() {
                self.events.push(m);
            } else {
                return m;
            }
        }
    }

    /// Send `command` with `fd` attached (SCM_RIGHTS, as libvirt passes fds for `getfd`) and
    /// return the whole response.
    pub fn execute_with_fd(&mut self, command: &str, args: Value, fd: std::os::fd::RawFd) -> Value {
        use std::os::fd::AsRawFd;
        let text = format!("{}\n", json!({ "execute": command, "arguments": args }));
        let fd_size = std::mem::size_of::<std::os::fd::RawFd>() as u32;
        // SAFETY: pure size computations.
        let (space, len) = unsafe { (libc::CMSG_SPACE(fd_size), libc::CMSG_LEN(fd_size)) };
        let mut control = vec![0u64; (space as usize).div_ceil(8)];
        let mut iov = libc::iovec {
            iov_base: text.as_ptr() as *mut libc::c_void,
            iov_len: text.len(),
        };
        // SAFETY: an all-zero msghdr is valid; the pointers set below outlive sendmsg.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer has room for one header and one fd (CMSG_SPACE).
        let sent = unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = len as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<std::os::fd::RawFd>(), fd);
            libc::sendmsg(self.writer.as_raw_fd(), &msg, 0)
        };
        assert_eq!(sent, text.len() as isize, "sendmsg to QMP");
        loop {
            let m = self.read_message();
            if m.get("event").is_some() {
                self.events.push(m);
            } else {
                return m;
            }
        }
    }

    /// Run `command` and return its `return` value, panicking on an error.
    pub fn ok(&mut self, command: &str, args: Value) -> Value {
        let r = self.execute(command, args);
        match r.get("return") {
            Some(v) => v.clone(),
            None => panic!("{command} failed: {r}"),
        }
    }

    /// The error description of `command`, panicking if it succeeded.
    pub fn error(&mut self, command: &str, args: Value) -> String {
        let r = self.execute(command, args);
        r["error"]["desc"]
            .as_str()
            .unwrap_or_else(|| panic!("{command} should have failed: {r}"))
            .to_string()
    }

    /// Wait for event `name` (already received or arriving within the read timeout).
    pub fn wait_event(&mut self, name: &str) -> Value {
        loop {
            if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
                return self.events.remove(i);
            }
            let m = self.read_message();
            if m.get("event").is_some() {
                self.events.push(m);
            }
        }
    }
}
