//! Protocol abuse against one machina whose guest keeps running (`machina.test=powerbutton`
//! polls until `system_powerdown`): malformed JSON, 1 MiB lines, 10,000-deep nesting,
//! non-UTF-8 bytes, clients that hang up mid-command, a client that floods commands and never
//! reads its answers, 100 clients at once.
//!
//! Each abuser gets protocol errors (or is dropped); after each abuse a well-behaved client's
//! `query-status` still answers `running`; the VMM's resident memory grows by less than
//! 50 MiB over the whole run; finally `system_powerdown` gives POWERDOWN, SHUTDOWN and exit 0.

mod common;

use common::{machina, require_kvm};
use machina_tests::process::MachinaProcess;
use machina_tests::qmp_client::QmpClient;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// One kind of abuse: what it is, and a function doing it against the socket.
type Abuse = (&'static str, fn(&Path));

const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// A client that writes raw bytes and reads raw lines.
struct Raw {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Raw {
    /// Connected; the greeting is read, capabilities are negotiated when `negotiate`.
    fn connect(path: &Path, negotiate: bool) -> Raw {
        let stream = UnixStream::connect(path).expect("connect to the QMP socket");
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut raw = Raw { stream, reader };
        let greeting = raw.line().expect("greeting");
        assert!(greeting.starts_with("{\"QMP\": "), "{greeting}");
        if negotiate {
            raw.send(b"{\"execute\": \"qmp_capabilities\"}\n");
            assert_eq!(raw.line().as_deref(), Some("{\"return\": {}}"));
        }
        raw
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to QMP");
    }

    /// The next line without its CRLF; None at EOF. Panics on a timeout or a line that is
    /// not CRLF-terminated ASCII.
    fn line(&mut self) -> Option<String> {
        let mut buf = Vec::new();
        let n = self
            .reader
            .read_until(b'\n', &mut buf)
            .expect("read from QMP (timed out?)");
        if n == 0 {
            return None;
        }
        assert!(buf.ends_with(b"\r\n"), "not CRLF-terminated");
        assert!(buf.is_ascii(), "QMP output is ASCII");
        buf.truncate(buf.len() - 2);
        Some(String::from_utf8(buf).unwrap())
    }

    /// Send a sentinel command and collect every line before its answer, which must come
    /// (the parser recovered and the session still works).
    fn until_sentinel(&mut self, limit: usize) -> Vec<Value> {
        // A newline first: it ends any token left pending and resets a lexer in recovery.
        self.send(b"\n{\"execute\": \"query-status\", \"id\": \"sentinel\"}\n");
        let mut lines = Vec::new();
        loop {
            let line = self.line().expect("connection closed before the sentinel");
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("bad JSON {}: {e}", &line[..line.len().min(200)]));
            if v["id"] == "sentinel" {
                assert_eq!(v["return"]["status"], "running", "{v}");
                return lines;
            }
            lines.push(v);
            assert!(lines.len() <= limit, "more than {limit} answers");
        }
    }
}

/// Every answer is a GenericError whose text starts with one of `prefixes`; only an error
/// about a parsed request ("QMP input ...") may carry an id.
fn all_errors(answers: &[Value], prefixes: &[&str]) {
    for a in answers {
        assert_eq!(a["error"]["class"], "GenericError", "{a}");
        let desc = a["error"]["desc"].as_str().unwrap_or("");
        assert!(
            a.get("id").is_none() || desc.starts_with("QMP input "),
            "{a}"
        );
        assert!(
            prefixes.iter().any(|p| desc.starts_with(p)),
            "unexpected error {}",
            &desc[..desc.len().min(200)]
        );
    }
}

fn count(answers: &[Value], desc: &str) -> usize {
    answers
        .iter()
        .filter(|a| a["error"]["desc"] == desc)
        .count()
}

/// The monitor still serves a well-behaved client and the guest still runs.
fn healthy(vm: &mut MachinaProcess, good: &mut QmpClient, after: &str) {
    assert!(
        vm.alive(),
        "machina died after {after}: {}",
        vm.stderr_text()
    );
    let status = good.execute("query-status", Value::Null);
    assert_eq!(
        status["return"],
        json!({"status": "running", "running": true}),
        "after {after}"
    );
}

fn malformed_json(path: &Path) {
    let mut raw = Raw::connect(path, true);
    let pieces: &[&[u8]] = &[
        b"{\"execute\": }",
        b"{'execute' 'query-status'}",
        b"]]]",
        b"{\"execute\": \"query-status\",}",
        b"{\"execute\": \"query-status\" \"id\": 1}",
        b"{\"execute\": tru}",
        b"{\"a\": 1, \"a\": 2}",
        b"{\"execute\": \"query-status\", \"id\": 01}",
        b"@#$%",
        b"\"unterminated\n",
        b"{\"execute\": \"\\x41\"}",
        b"[1, 2]",
        b"{\"id\": 7}",
    ];
    for p in pieces {
        raw.send(p);
        raw.send(b"\n");
    }
    let answers = raw.until_sentinel(100);
    assert!(answers.len() >= pieces.len(), "{answers:?}");
    all_errors(&answers, &["JSON parse error, ", "QMP input "]);
    assert_eq!(
        answers[0]["error"]["desc"], "JSON parse error, expecting value",
        "{answers:?}"
    );
    assert!(count(&answers, "QMP input must be a JSON object") >= 1);
    // A message without `execute` keeps its id in the error.
    assert!(
        answers.contains(&json!({"error": {"class": "GenericError",
            "desc": "QMP input lacks member 'execute'"}, "id": 7})),
        "{answers:?}"
    );
}

fn megabyte_lines(path: &Path) {
    const MIB: usize = 1 << 20;
    let mut raw = Raw::connect(path, true);
    // A valid message with a 1 MiB string argument.
    let mut msg = b"{\"execute\": \"query-status\", \"arguments\": {\"x\": \"".to_vec();
    msg.extend(std::iter::repeat_n(b'A', MIB));
    msg.extend(b"\"}}\n");
    raw.send(&msg);
    assert_eq!(
        raw.line().as_deref(),
        Some(
            "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Parameter 'x' is unexpected\"}}"
        )
    );
    // A 1 MiB command name comes back in the error.
    let name = "q".repeat(MIB);
    raw.send(format!("{{\"execute\": \"{name}\"}}\n").as_bytes());
    let v: Value = serde_json::from_str(&raw.line().unwrap()).unwrap();
    assert_eq!(v["error"]["class"], "CommandNotFound");
    assert_eq!(
        v["error"]["desc"],
        format!("The command {name} has not been found")
    );
    // 1 MiB of a bare word, then 1 MiB of garbage: one error each.
    raw.send(&[b'a'; MIB]);
    raw.send(b"\n");
    raw.send(&[b'@'; MIB]);
    let answers = raw.until_sentinel(10);
    assert_eq!(answers.len(), 2, "one error per line");
    all_errors(
        &answers,
        &[
            "JSON parse error, invalid keyword 'aaaa",
            "JSON parse error, stray '@'",
        ],
    );
}

fn deep_nesting(path: &Path) {
    const DEPTH: usize = 10_000;
    let mut raw = Raw::connect(path, true);
    for (open, close) in [("[", "]"), ("{\"a\": ", "}")] {
        raw.send(open.repeat(DEPTH).as_bytes());
        raw.send(close.repeat(DEPTH).as_bytes());
        let answers = raw.until_sentinel(3 * DEPTH);
        all_errors(
            &answers,
            &[
                "JSON nesting depth limit exceeded",
                "JSON parse error, ",
                "QMP input ",
            ],
        );
        // QEMU's streamer: an error at each 1025th level, then every extra closer alone.
        assert_eq!(
            count(&answers, "JSON nesting depth limit exceeded"),
            DEPTH / 1025,
            "{open}"
        );
    }
    // Right at the limit (1024 levels in all): parsed, checked, answered, the id echoed.
    let deep = |depth: usize| format!("{}1{}", "{\"a\": ".repeat(depth), "}".repeat(depth));
    let id = deep(1023);
    raw.send(format!("{{\"execute\": \"query-status\", \"id\": {id}}}\n").as_bytes());
    let line = raw
        .line()
        .expect("an answer to a 1023-deep id (did machina crash?)");
    assert!(
        line.starts_with("{\"return\": {\"running\": true, \"status\": \"running\"}, \"id\": {")
            && line.ends_with(&format!("{id}}}")),
        "{}",
        &line[..100]
    );
    let msg = format!(
        "{{\"execute\": \"query-status\", \"arguments\": {{\"x\": {}}}}}\n",
        deep(1022)
    );
    raw.send(msg.as_bytes());
    assert_eq!(
        raw.line().as_deref(),
        Some(
            "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Parameter 'x' is unexpected\"}}"
        )
    );
}

fn non_utf8(path: &Path) {
    let mut raw = Raw::connect(path, true);
    let pieces: &[&[u8]] = &[
        b"{\"execute\": \"\xff\xfe\"}",
        b"{\"execute\": \"query-\xc3\x28status\"}",
        b"\x80\x81\x82",
        b"{\"execute\": \"query-status\", \"id\": \"\xed\xa0\x80\"}",
        b"{\"execute\": \"\xc0\xaf\"}",
        b"{\"execute\": \"query-status\", \"id\": \"\xf4\x90\x80\x80\"}",
        b"\xfe\xff",
    ];
    for p in pieces {
        raw.send(p);
        raw.send(b"\n");
    }
    let answers = raw.until_sentinel(100);
    assert!(answers.len() >= pieces.len(), "{answers:?}");
    all_errors(&answers, &["JSON parse error, "]);
    // Valid UTF-8 beyond ASCII is fine, and comes back escaped as QEMU does (%04X).
    raw.send("{\"execute\": \"query-status\", \"id\": \"é😀\"}\n".as_bytes());
    let line = raw.line().unwrap();
    assert!(
        line.ends_with("\"id\": \"\\u00E9\\uD83D\\uDE00\"}"),
        "{line}"
    );
}

fn hang_ups(path: &Path) {
    // Half a command, then gone.
    let mut raw = Raw::connect(path, true);
    raw.send(b"{\"execute\": \"query-sta");
    drop(raw);
    // Half a command, then only the write side closed: nothing is answered, EOF.
    let mut raw = Raw::connect(path, true);
    raw.send(b"{\"execute\": \"query-status\", \"argu");
    raw.stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(raw.line(), None, "no answer to half a command");
    // Gone before reading the greeting.
    drop(UnixStream::connect(path).unwrap());
    // Gone before negotiating, with a command in flight.
    let mut s = UnixStream::connect(path).unwrap();
    s.write_all(b"{\"execute\": \"query-status\"}\n").unwrap();
    drop(s);
    // Big answers requested, never read.
    let mut raw = Raw::connect(path, true);
    for _ in 0..20 {
        raw.send(
            b"{\"execute\": \"query-qmp-schema\"}\n{\"execute\": \"x-query-machine-definition\"}\n",
        );
    }
    drop(raw);
    // A thousand commands in one write, then gone.
    let mut raw = Raw::connect(path, true);
    raw.send("{\"execute\": \"query-status\"}".repeat(1000).as_bytes());
    drop(raw);
}

/// A client that sends commands and never reads is hung up on once 64 MiB of answers wait
/// for it (QEMU's monitor has no such bound): what it can still read is little more than the
/// socket buffers held, the memory peaks near the bound and is given back once it is gone.
fn never_reads(vm: &mut MachinaProcess, good: &mut QmpClient, base_kib: u64) {
    let mut raw = Raw::connect(&vm.socket, true);
    let start = Instant::now();
    let request = "{\"execute\": \"query-qmp-schema\"}".repeat(64);
    let mut sent = 0;
    while raw.stream.write_all(request.as_bytes()).is_ok() {
        sent += 64;
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "still connected after {sent} unread schemas"
        );
    }
    let peak = vm.rss_kib().unwrap_or(0);
    let flood = start.elapsed();
    let mut unread = 0;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match std::io::Read::read(&mut raw.reader, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => unread += n,
        }
    }
    assert!(
        unread < 16 << 20,
        "{unread} bytes were still sent after {sent} requests"
    );
    healthy(vm, good, "a client that never reads");
    assert!(
        peak < base_kib + 100 * 1024,
        "VmRSS {peak} KiB with 64 MiB queued (from {base_kib} KiB)"
    );
    let hung_up = Instant::now();
    let after = loop {
        let rss = vm.rss_kib().unwrap_or(0);
        if rss < base_kib + 50 * 1024 || hung_up.elapsed() > Duration::from_secs(10) {
            break rss;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!(
        "never-reading client: hung up after {sent} requests in {flood:?}, VmRSS {base_kib} -> \
         {peak} -> {after} KiB ({:?} later)",
        hung_up.elapsed()
    );
    assert!(
        after < base_kib + 50 * 1024,
        "VmRSS still {after} KiB after the client was hung up"
    );
}

fn hundred_clients(path: &Path, good: &mut QmpClient) {
    const N: usize = 100;
    let ready = Arc::new(Barrier::new(N + 1));
    let events = Arc::new(Barrier::new(N + 1));
    let threads: Vec<_> = (0..N)
        .map(|i| {
            let path = path.to_path_buf();
            let ready = ready.clone();
            let events = events.clone();
            std::thread::spawn(move || -> Result<(), String> {
                // Connect, negotiate and query all at once; wait for each other while
                // connected; then every one gets the events of a stop/cont.
                let result = std::panic::catch_unwind(move || {
                    let mut c = QmpClient::connect(&path, Duration::from_secs(20));
                    assert_eq!(c.greeting["QMP"]["version"]["qemu"]["major"], 10);
                    c.ok("qmp_capabilities", Value::Null);
                    let s = c.ok("query-status", Value::Null);
                    assert_eq!(s["status"], "running", "client {i}");
                    c
                });
                ready.wait();
                let mut c = result.map_err(|_| format!("client {i} failed"))?;
                events.wait();
                let stop = c.wait_event("STOP");
                let resume = c.wait_event("RESUME");
                if stop["event"] != "STOP" || resume["event"] != "RESUME" {
                    return Err(format!("client {i}: {stop} {resume}"));
                }
                Ok(())
            })
        })
        .collect();
    ready.wait();
    events.wait();
    good.ok("stop", Value::Null);
    good.ok("cont", Value::Null);
    good.wait_event("STOP");
    good.wait_event("RESUME");
    let failures: Vec<String> = threads
        .into_iter()
        .filter_map(|t| match t.join() {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some("a client thread panicked".into()),
        })
        .collect();
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn abusers_get_errors_and_everyone_else_is_served() {
    if !require_kvm() {
        return;
    }
    let start = Instant::now();
    let mut vm = MachinaProcess::start(
        &machina(),
        "abuse",
        &[
            "-M",
            "q35",
            "-nographic",
            "-append",
            "machina.test=powerbutton",
        ]
        .map(String::from),
    );
    let mut good = vm.client();
    healthy(&mut vm, &mut good, "start");
    let path = vm.socket.clone();
    // Warm up what every session allocates once, then take the baseline.
    drop(Raw::connect(&path, true));
    let rss_before = vm.rss_kib().expect("VmRSS");

    let steps: [Abuse; 5] = [
        ("malformed JSON", malformed_json),
        ("1 MiB lines", megabyte_lines),
        ("10,000-deep nesting", deep_nesting),
        ("non-UTF-8 bytes", non_utf8),
        ("clients hanging up mid-command", hang_ups),
    ];
    for (what, step) in steps {
        step(&path);
        healthy(&mut vm, &mut good, what);
    }
    hundred_clients(&path, &mut good);
    healthy(&mut vm, &mut good, "100 clients at once");
    never_reads(&mut vm, &mut good, rss_before);
    // Everything again: memory must not creep up per abuse.
    for (what, step) in steps {
        step(&path);
        healthy(&mut vm, &mut good, what);
    }

    let rss_after = vm.rss_kib().expect("VmRSS");
    eprintln!(
        "VmRSS {rss_before} KiB before, {rss_after} KiB after the abuse ({:?})",
        start.elapsed()
    );
    assert!(
        rss_after < rss_before + 50 * 1024,
        "VmRSS grew from {rss_before} KiB to {rss_after} KiB"
    );

    // The guest was never disturbed: it powers off when asked.
    good.ok("system_powerdown", Value::Null);
    good.wait_event("POWERDOWN");
    let shutdown = good.wait_event("SHUTDOWN");
    assert_eq!(
        shutdown["data"],
        json!({"guest": true, "reason": "guest-shutdown"})
    );
    assert_eq!(vm.wait_exit(Duration::from_secs(20)), Some(0));
}
