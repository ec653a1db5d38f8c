//! End-to-end tests: a real server on temporary sockets, driven by a small client.

use machina_tests::TempDir;
use qmp::{
    BoundAddr, CommandDef, EventDef, Map, QmpEndpoint, QmpError, Registry, Server, Session, Type,
    Value,
};
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::io::IntoRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Hang guard for reads that must succeed: generous, as the host may be loaded (a full
/// workspace run on two busy cores once took over 5 s to deliver an event).
const TIMEOUT: Duration = Duration::from_secs(60);

/// A socket path in a temporary folder of its own, removed with the folder on drop.
struct Sock {
    path: PathBuf,
    _dir: TempDir,
}

impl std::ops::Deref for Sock {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.path
    }
}

impl AsRef<Path> for Sock {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

fn temp_sock(tag: &str) -> Sock {
    let dir = TempDir::new(&format!("qmp-test-{tag}"));
    Sock {
        path: dir.join("qmp.sock"),
        _dir: dir,
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(
        CommandDef::new("cont"),
        |_: Map<String, Value>, ctx: &mut Session| {
            ctx.events().emit("RESUME", Value::Null);
            Ok(Value::Null)
        },
    )
    .unwrap();
    r.register(
        CommandDef::new("quit").allow_preconfig(true),
        |_: Map<String, Value>, ctx: &mut Session| {
            ctx.events().emit(
                "SHUTDOWN",
                json!({"guest": false, "reason": "host-qmp-quit"}),
            );
            Ok(Value::Null)
        },
    )
    .unwrap();
    r.register(
        CommandDef::new("echo")
            .arg("s", Type::Str)
            .opt("n", Type::Int)
            .opt("b", Type::Bool)
            .opt("mode", Type::enumeration("EchoMode", &["loud", "quiet"]))
            .opt("list", Type::array(Type::Uint8))
            .returns(Type::Any)
            .allow_preconfig(true),
        |args: Map<String, Value>, _: &mut Session| Ok(Value::Object(args)),
    )
    .unwrap();
    r.register(
        CommandDef::new("query-status")
            .returns(Type::object(
                qmp::ObjectType::new("StatusInfo")
                    .member("running", Type::Bool)
                    .member("status", Type::Str),
            ))
            .allow_preconfig(true),
        |_: Map<String, Value>, ctx: &mut Session| {
            let running = ctx.server().machine_ready();
            Ok(json!({"running": running, "status": if running {"running"} else {"prelaunch"}}))
        },
    )
    .unwrap();
    r.register(
        CommandDef::new("device_add")
            .arg("driver", Type::Str)
            .opt("id", Type::Str)
            .extra_args(true)
            .feature("json-cli")
            .feature("json-cli-hotplug"),
        |args: Map<String, Value>, _: &mut Session| -> Result<Value, QmpError> {
            if args.get("driver") == Some(&json!("nope")) {
                return Err(QmpError::generic("'nope' is not a valid device model name"));
            }
            Ok(Value::Null)
        },
    )
    .unwrap();
    r.register(
        CommandDef::new("yank")
            .allow_oob(true)
            .allow_preconfig(true),
        |_: Map<String, Value>, _: &mut Session| Ok(Value::Null),
    )
    .unwrap();
    r.register(
        CommandDef::new("boom"),
        |_: Map<String, Value>, _: &mut Session| -> Result<Value, QmpError> {
            panic!("handler bug")
        },
    )
    .unwrap();
    r.register_event(
        EventDef::new("SHUTDOWN")
            .member("guest", Type::Bool)
            .member("reason", Type::Str),
    )
    .unwrap();
    r.register_event(EventDef::new("RESUME")).unwrap();
    r
}

struct Client {
    out: Box<dyn Write>,
    input: BufReader<Box<dyn Read>>,
}

impl Client {
    fn unix(path: &PathBuf) -> Client {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let r = s.try_clone().unwrap();
        Client {
            out: Box::new(s),
            input: BufReader::new(Box::new(r)),
        }
    }

    fn tcp(addr: std::net::SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let r = s.try_clone().unwrap();
        Client {
            out: Box::new(s),
            input: BufReader::new(Box::new(r)),
        }
    }

    /// One raw line, CRLF included.
    fn raw_line(&mut self) -> String {
        let mut l = String::new();
        self.input.read_line(&mut l).unwrap();
        l
    }

    fn recv(&mut self) -> Value {
        let l = self.raw_line();
        assert!(l.ends_with("\r\n"), "line not CRLF-terminated: {l:?}");
        assert!(l.is_ascii());
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}"))
    }

    fn send(&mut self, text: &str) {
        self.out.write_all(text.as_bytes()).unwrap();
        self.out.flush().unwrap();
    }

    fn cmd(&mut self, req: Value) -> Value {
        self.send(&req.to_string());
        self.recv()
    }

    /// Connects, checks the greeting, negotiates.
    fn ready(mut self) -> Client {
        let g = self.recv();
        assert!(g.get("QMP").is_some());
        assert_eq!(
            self.cmd(json!({"execute": "qmp_capabilities"})),
            json!({"return": {}})
        );
        self
    }

    fn eof(&mut self) -> bool {
        let mut l = String::new();
        matches!(self.input.read_line(&mut l), Ok(0))
    }
}

fn start() -> (Server, Sock) {
    let server = Server::new(registry());
    let path = temp_sock("s");
    let ep = QmpEndpoint::parse_qmp(format!("unix:{},server=on,wait=off", path.display())).unwrap();
    assert_eq!(server.listen(&ep).unwrap(), BoundAddr::Unix(path.clone()));
    (server, path)
}

fn err(class: &str, desc: &str) -> Value {
    json!({"error": {"class": class, "desc": desc}})
}

fn err_id(class: &str, desc: &str, id: Value) -> Value {
    json!({"error": {"class": class, "desc": desc}, "id": id})
}

#[test]
fn greeting_is_qemu_shaped_with_crlf() {
    let (server, path) = start();
    let mut c = Client::unix(&path);
    let line = c.raw_line();
    assert!(line.ends_with("}}\r\n"));
    assert!(line.starts_with(
        "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 2, \"major\": 10}, \"package\": \"machina-"
    ));
    let g: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(g["QMP"]["capabilities"], json!(["oob"]));
    assert_eq!(
        g["QMP"]["version"]["package"],
        json!(format!("machina-{}", env!("CARGO_PKG_VERSION")))
    );
    server.shutdown();
}

#[test]
fn socket_file_is_private_and_stale_file_replaced() {
    let path = temp_sock("stale");
    std::fs::write(&path, b"stale").unwrap();
    let server = Server::new(registry());
    server
        .listen(&QmpEndpoint::Unix {
            path: path.clone(),
            server: true,
            wait: false,
        })
        .unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let _c = Client::unix(&path).ready();
    server.shutdown();
    assert!(!path.exists(), "socket file removed at shutdown");
}

#[test]
fn capabilities_negotiation() {
    let (server, path) = start();
    let mut c = Client::unix(&path);
    c.recv();
    let neg = "Expecting capabilities negotiation with 'qmp_capabilities'";
    assert_eq!(
        c.cmd(json!({"execute": "query-version", "id": 1})),
        err_id("CommandNotFound", neg, json!(1))
    );
    assert_eq!(
        c.cmd(json!({"execute": "nonexistent"})),
        err("CommandNotFound", neg)
    );
    // Errors of other classes are not rewritten.
    assert_eq!(
        c.cmd(json!({"execute": "qmp_capabilities", "arguments": {"bogus": 1}})),
        err("GenericError", "Parameter 'bogus' is unexpected")
    );
    assert_eq!(
        c.cmd(json!({"execute": "qmp_capabilities", "arguments": {"enable": ["foo"]}})),
        err(
            "GenericError",
            "Parameter 'null' does not accept value 'foo'"
        )
    );
    // Events are not delivered before negotiation.
    server.events().emit("STOP", Value::Null);
    assert_eq!(
        c.cmd(json!({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}, "id": "c"})),
        json!({"return": {}, "id": "c"})
    );
    assert_eq!(
        c.cmd(json!({"execute": "qmp_capabilities"})),
        err(
            "CommandNotFound",
            "Capabilities negotiation is already complete, command ignored"
        )
    );
    let v = c.cmd(json!({"execute": "query-version"}));
    assert_eq!(
        v["return"]["qemu"],
        json!({"major": 10, "minor": 2, "micro": 2})
    );
    server.shutdown();
}

#[test]
fn stdio_like_stream_does_not_offer_oob() {
    let server = Server::new(registry());
    let (a, b) = UnixStream::pair().unwrap();
    a.set_read_timeout(Some(TIMEOUT)).unwrap();
    server.serve_stream(b.try_clone().unwrap(), b, false);
    let mut c = Client {
        out: Box::new(a.try_clone().unwrap()),
        input: BufReader::new(Box::new(a)),
    };
    assert_eq!(c.recv()["QMP"]["capabilities"], json!([]));
    assert_eq!(
        c.cmd(json!({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}})),
        err("GenericError", "Capability oob not available")
    );
    assert_eq!(
        c.cmd(json!({"execute": "qmp_capabilities"})),
        json!({"return": {}})
    );
    server.shutdown();
}

#[test]
fn id_is_echoed_verbatim() {
    let (server, path) = start();
    let mut c = Client::unix(&path).ready();
    for id in [
        json!("libvirt-1"),
        json!(42),
        json!(-1.5),
        json!({"any": ["json", 1]}),
        json!(null),
    ] {
        let r = c.cmd(json!({"execute": "yank", "id": id.clone()}));
        assert_eq!(r, json!({"return": {}, "id": id}));
        let r = c.cmd(json!({"execute": "bogus", "id": id.clone()}));
        assert_eq!(
            r,
            err_id(
                "CommandNotFound",
                "The command bogus has not been found",
                id
            )
        );
    }
    server.shutdown();
}

#[test]
fn single_quotes_and_streaming_input() {
    let (server, path) = start();
    let mut c = Client::unix(&path).ready();
    c.send("{'execute': 'echo', 'arguments': {'s': 'it\\'s'}, 'id': 'sq'}");
    assert_eq!(c.recv(), json!({"return": {"s": "it's"}, "id": "sq"}));
    // Two messages in one write, and one message split over writes.
    c.send("{\"execute\": \"yank\", \"id\": 1}{\"execute\": \"yank\", \"id\": 2}\n{\"exec");
    assert_eq!(c.recv()["id"], json!(1));
    assert_eq!(c.recv()["id"], json!(2));
    c.send("ute\": \"yank\",");
    c.send(" \"id\": 3}");
    assert_eq!(c.recv(), json!({"return": {}, "id": 3}));
    server.shutdown();
}

#[test]
fn malformed_input_and_recovery() {
    let (server, path) = start();
    let mut c = Client::unix(&path).ready();
    assert_eq!(
        c.cmd(json!([1, 2])),
        err("GenericError", "QMP input must be a JSON object")
    );
    assert_eq!(
        c.cmd(json!({"id": 7})),
        err_id("GenericError", "QMP input lacks member 'execute'", json!(7))
    );
    assert_eq!(
        c.cmd(json!({"execute": "yank", "arguments": []})),
        err(
            "GenericError",
            "QMP input member 'arguments' must be an object"
        )
    );
    c.send("{\"execute\": }");
    assert_eq!(
        c.recv(),
        err("GenericError", "JSON parse error, expecting value")
    );
    // A control character abandons a half-sent message.
    c.send("{\"execute\": \"yank\", \x01");
    let e = c.recv();
    assert_eq!(e["error"]["class"], "GenericError");
    assert!(e["error"]["desc"]
        .as_str()
        .unwrap()
        .starts_with("JSON parse error, "));
    assert!(e.get("id").is_none());
    assert_eq!(c.cmd(json!({"execute": "yank", "id": "ok"}))["id"], "ok");
    server.shutdown();
}

#[test]
fn argument_validation() {
    let (server, path) = start();
    let mut c = Client::unix(&path).ready();
    let gen = |d: &str| err("GenericError", d);
    assert_eq!(
        c.cmd(json!({"execute": "echo", "arguments": {"s": "x", "bogus": 1}})),
        gen("Parameter 'bogus' is unexpected")
    );
    assert_eq!(
        c.cmd(json!({"execute": "echo", "arguments": {}})),
        gen("Parameter 's' is missing")
    );
    assert_eq!(
        c.cmd(json!({"execute": "echo"})),
        gen("Parameter 's' is missing")
    );
    assert_eq!(
        c.cmd(json!({"execute": "echo", "arguments": {"s": 5}})),
        gen("Invalid parameter type for 's', expected: string")
    );
    assert_eq!(
        c.cmd(json!({"execute": "echo", "arguments": {"s": "x", "n": "5"}})),
        gen("Invalid parameter type for 'n', expected: integer")
    );
    assert_eq!(
        c.cmd(json!({"execute": "echo", "arguments": {"s": "x", "b": 1}})),
        gen("Invalid parameter type for 'b', expected: boolean")
    );
    assert_eq!(
        c.cmd(json!({"execute": "echo", "arguments": {"s": "x", "mode": "shout"}})),
        gen("Parameter 'mode' does not accept value 'shout'")
    );
    assert_eq!(
        c.cmd(json!({"execute": "echo", "arguments": {"s": "x", "list": [1, 300]}})),
        gen("Parameter 'null' expects uint8_t")
    );
    assert_eq!(
        c.cmd(json!({"execute": "echo", "arguments": {"s": "x", "list": [true]}})),
        gen("Parameter 'list[0]' expects uint64")
    );
    assert_eq!(
        c.cmd(json!({"execute": "yank", "arguments": {"x": 1}})),
        gen("Parameter 'x' is unexpected")
    );
    let ok = c.cmd(json!({"execute": "echo", "arguments": {"s": "x", "n": -3, "mode": "loud", "list": [0, 255]}}));
    assert_eq!(
        ok,
        json!({"return": {"s": "x", "n": -3, "mode": "loud", "list": [0, 255]}})
    );
    // 'gen': false style commands take extra members but still check declared ones.
    assert_eq!(
        c.cmd(json!({"execute": "device_add", "arguments": {"driver": "virtio-net-pci", "bus": "pci.1", "addr": "0x0"}})),
        json!({"return": {}})
    );
    assert_eq!(
        c.cmd(json!({"execute": "device_add", "arguments": {"id": "x"}})),
        gen("Parameter 'driver' is missing")
    );
    assert_eq!(
        c.cmd(json!({"execute": "device_add", "arguments": {"driver": "nope"}})),
        gen("'nope' is not a valid device model name")
    );
    server.shutdown();
}

#[test]
fn events_reach_all_clients_and_precede_the_return() {
    let (server, path) = start();
    let mut a = Client::unix(&path).ready();
    let mut b = Client::unix(&path).ready();
    a.send(&json!({"execute": "cont", "id": "a1"}).to_string());
    let ev = a.recv();
    assert_eq!(ev["event"], "RESUME");
    assert!(ev.get("data").is_none());
    assert!(ev["timestamp"]["seconds"].as_i64().unwrap() > 0);
    assert!(ev["timestamp"]["microseconds"].is_i64());
    assert_eq!(a.recv(), json!({"return": {}, "id": "a1"}));
    assert_eq!(b.recv()["event"], "RESUME");

    b.send(&json!({"execute": "quit"}).to_string());
    let ev = b.recv();
    assert_eq!(ev["event"], "SHUTDOWN");
    assert_eq!(
        ev["data"],
        json!({"guest": false, "reason": "host-qmp-quit"})
    );
    assert_eq!(b.recv(), json!({"return": {}}));
    assert_eq!(a.recv()["event"], "SHUTDOWN");

    // Emitted from outside any command (e.g. a vCPU thread).
    server.events().emit("POWERDOWN", Value::Null);
    assert_eq!(a.recv()["event"], "POWERDOWN");
    assert_eq!(b.recv()["event"], "POWERDOWN");
    assert_eq!(server.events().listeners(), 2);
    server.shutdown();
}

#[test]
fn query_commands_and_schema_describe_the_registry() {
    let (server, path) = start();
    let mut c = Client::unix(&path).ready();
    let names: Vec<String> = c.cmd(json!({"execute": "query-commands"}))["return"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    for n in [
        "qmp_capabilities",
        "query-version",
        "query-commands",
        "query-qmp-schema",
        "cont",
        "echo",
        "device_add",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }
    let schema = c.cmd(json!({"execute": "query-qmp-schema"}))["return"].clone();
    let find = |name: &str| qmp::schema::find_entity(&schema, name).cloned().unwrap();
    for n in &names {
        assert_eq!(find(n)["meta-type"], "command");
    }
    let echo = find("echo");
    let args = find(echo["arg-type"].as_str().unwrap());
    assert_eq!(args["meta-type"], "object");
    let members = args["members"].as_array().unwrap();
    assert_eq!(members[0], json!({"name": "s", "type": "str"}));
    assert_eq!(
        members[1],
        json!({"name": "n", "type": "int", "default": null})
    );
    let mode = find(members[3]["type"].as_str().unwrap());
    assert_eq!(mode["values"], json!(["loud", "quiet"]));
    assert_eq!(members[4]["type"], "[int]");
    assert_eq!(echo["ret-type"], "any");
    assert_eq!(
        find("device_add")["features"],
        json!(["json-cli", "json-cli-hotplug"])
    );
    assert_eq!(find("yank")["allow-oob"], json!(true));
    assert_eq!(find("SHUTDOWN")["meta-type"], "event");
    let qv = find("query-version");
    let ret = find(qv["ret-type"].as_str().unwrap());
    assert_eq!(ret["members"][1], json!({"name": "package", "type": "str"}));
    server.shutdown();
}

#[test]
fn oob_rules() {
    let (server, path) = start();
    let mut c = Client::unix(&path).ready();
    assert_eq!(
        c.cmd(json!({"exec-oob": "yank", "id": 1})),
        err_id(
            "GenericError",
            "QMP input member 'exec-oob' is unexpected",
            json!(1)
        )
    );
    let mut c = Client::unix(&path);
    c.recv();
    c.cmd(json!({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}));
    assert_eq!(
        c.cmd(json!({"exec-oob": "cont", "id": 2})),
        err_id(
            "GenericError",
            "The command cont does not support OOB",
            json!(2)
        )
    );
    assert_eq!(
        c.cmd(json!({"exec-oob": "yank", "id": 3})),
        json!({"return": {}, "id": 3})
    );
    server.shutdown();
}

/// A gate the `block` command of `oob_start` waits on (or until its client is cancelled).
#[derive(Default)]
struct Gate {
    open: std::sync::Mutex<bool>,
    cond: std::sync::Condvar,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cond.notify_all();
    }

    fn close(&self) {
        *self.open.lock().unwrap() = false;
    }
}

/// A server whose `block` command waits for the gate, as a blockdev-add waits for a FIFO.
fn oob_start() -> (Server, Sock, std::sync::Arc<Gate>) {
    let gate = std::sync::Arc::new(Gate::default());
    let mut r = registry();
    let g = gate.clone();
    r.register(
        CommandDef::new("block").opt("tag", Type::Str),
        move |_: Map<String, Value>, ctx: &mut Session| -> Result<Value, QmpError> {
            let mut open = g.open.lock().unwrap();
            while !*open {
                if ctx.cancelled() {
                    return Err(QmpError::generic("cancelled"));
                }
                open = g
                    .cond
                    .wait_timeout(open, Duration::from_millis(20))
                    .unwrap()
                    .0;
            }
            Ok(Value::Null)
        },
    )
    .unwrap();
    let server = Server::new(r);
    let path = temp_sock("oob");
    let ep = QmpEndpoint::parse_qmp(format!("unix:{},server=on,wait=off", path.display())).unwrap();
    server.listen(&ep).unwrap();
    (server, path, gate)
}

fn oob_client(path: &PathBuf) -> Client {
    oob_client_with_stream(path).0
}

/// Also a handle on the socket, to change its read timeout.
fn oob_client_with_stream(path: &PathBuf) -> (Client, UnixStream) {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let handle = s.try_clone().unwrap();
    let r = s.try_clone().unwrap();
    let mut c = Client {
        out: Box::new(s),
        input: BufReader::new(Box::new(r)),
    };
    c.recv();
    assert_eq!(
        c.cmd(json!({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}})),
        json!({"return": {}})
    );
    (c, handle)
}

/// With `oob` enabled, an `exec-oob` command is answered while an in-band command waits;
/// the in-band commands after it (a malformed one too) are answered later, in order.
#[test]
fn oob_overtakes_a_waiting_in_band_command() {
    let (server, path, gate) = oob_start();
    let mut c = oob_client(&path);
    c.send(r#"{"execute": "block", "id": "ib-1"}{"execute": "echo", "arguments": {"s": "x"}, "id": "ib-2"}"#);
    c.send(r#"{"exec-oob": "yank", "id": "oob-1"}{"exec-oob": "echo", "id": "oob-2"}"#);
    assert_eq!(c.recv(), json!({"return": {}, "id": "oob-1"}));
    assert_eq!(
        c.recv(),
        err_id(
            "GenericError",
            "The command echo does not support OOB",
            json!("oob-2")
        )
    );
    gate.open();
    assert_eq!(c.recv(), json!({"return": {}, "id": "ib-1"}));
    assert_eq!(c.recv(), json!({"return": {"s": "x"}, "id": "ib-2"}));

    gate.close();
    c.send(r#"{"execute": "block", "id": "b-2"}{"id": "err-2"}[1"#);
    c.send(r#"]{"exec-oob": "yank", "id": "oob-3"}"#);
    assert_eq!(c.recv(), json!({"return": {}, "id": "oob-3"}));
    gate.open();
    assert_eq!(c.recv(), json!({"return": {}, "id": "b-2"}));
    assert_eq!(
        c.recv(),
        err_id(
            "GenericError",
            "QMP input lacks member 'execute'",
            json!("err-2")
        )
    );
    assert_eq!(
        c.recv(),
        err("GenericError", "QMP input must be a JSON object")
    );
    // A second client's in-band commands do not wait for the first client's.
    gate.close();
    c.send(r#"{"execute": "block", "id": "b-3"}"#);
    let mut d = oob_client(&path);
    assert_eq!(
        d.cmd(json!({"execute": "echo", "arguments": {"s": "y"}, "id": 1})),
        json!({"return": {"s": "y"}, "id": 1})
    );
    gate.open();
    assert_eq!(c.recv(), json!({"return": {}, "id": "b-3"}));
    server.shutdown();
}

/// Eight in-band requests may wait behind a running one; past that the client's input is
/// not read (QEMU suspends the monitor), so a later `exec-oob` waits its turn too.
#[test]
fn oob_queue_limit_suspends_reading() {
    let (server, path, gate) = oob_start();
    let (mut c, handle) = oob_client_with_stream(&path);
    c.send(r#"{"execute": "block", "id": 0}"#);
    for i in 1..=9 {
        c.send(&format!(
            r#"{{"execute": "echo", "arguments": {{"s": "{i}"}}, "id": {i}}}"#
        ));
    }
    c.send(r#"{"exec-oob": "yank", "id": "late"}"#);
    // The queue is full: nothing may come (a slow host can only make this pass).
    handle
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut line = String::new();
    let early = c.input.read_line(&mut line);
    assert!(
        early.is_err() && line.is_empty(),
        "answered while suspended: {line}"
    );
    handle.set_read_timeout(Some(TIMEOUT)).unwrap();
    gate.open();
    let ids: Vec<Value> = (0..11).map(|_| c.recv()["id"].clone()).collect();
    // In-band answers in order; the OOB one once its message was read, after some of them.
    let in_band: Vec<Value> = ids
        .iter()
        .filter(|v| **v != json!("late"))
        .cloned()
        .collect();
    assert_eq!(in_band, (0..=9).map(|i| json!(i)).collect::<Vec<_>>());
    assert!(ids.contains(&json!("late")));
    server.shutdown();
}

/// Shutting down while an in-band command waits: the command sees it cancelled, the
/// shutdown completes instead of waiting for it for ever.
#[test]
fn shutdown_cancels_a_waiting_command() {
    let (server, path, _gate) = oob_start();
    let mut c = oob_client(&path);
    c.send(r#"{"execute": "block", "id": 1}"#);
    c.send(r#"{"exec-oob": "yank", "id": 2}"#);
    assert_eq!(c.recv(), json!({"return": {}, "id": 2}));
    server.shutdown();
    // The client is let go: whatever comes, the stream ends.
    let mut rest = String::new();
    let _ = c.input.read_to_string(&mut rest);
}

#[test]
fn preconfig_gate() {
    let (server, path) = start();
    server.set_machine_ready(false);
    let mut c = Client::unix(&path).ready();
    assert_eq!(
        c.cmd(json!({"execute": "query-status"}))["return"]["status"],
        "prelaunch"
    );
    assert_eq!(
        c.cmd(json!({"execute": "cont"})),
        err(
            "GenericError",
            "The command 'cont' is permitted only after machine initialization has completed"
        )
    );
    server.set_machine_ready(true);
    assert_eq!(c.cmd(json!({"execute": "cont"}))["event"], "RESUME");
    assert_eq!(c.recv(), json!({"return": {}}));
    server.shutdown();
}

#[test]
fn a_panicking_handler_does_not_kill_the_session() {
    let (server, path) = start();
    let mut c = Client::unix(&path).ready();
    let r = c.cmd(json!({"execute": "boom", "id": 1}));
    assert_eq!(r["error"]["class"], "GenericError");
    assert_eq!(
        c.cmd(json!({"execute": "yank", "id": 2})),
        json!({"return": {}, "id": 2})
    );
    server.shutdown();
}

#[test]
fn tcp_ephemeral_port() {
    let server = Server::new(registry());
    let ep = QmpEndpoint::parse_qmp("tcp:127.0.0.1:0,server=on,wait=off").unwrap();
    let BoundAddr::Tcp(addr) = server.listen(&ep).unwrap() else {
        panic!("not tcp")
    };
    assert_ne!(addr.port(), 0);
    let mut c = Client::tcp(addr).ready();
    assert_eq!(
        c.cmd(json!({"execute": "yank", "id": "t"})),
        json!({"return": {}, "id": "t"})
    );
    server.shutdown();
    assert!(c.eof());
}

#[test]
fn wait_on_blocks_until_a_client_connects() {
    let path = temp_sock("wait");
    let p2 = path.clone();
    let t = std::thread::spawn(move || {
        for _ in 0..500 {
            if let Ok(s) = UnixStream::connect(&p2) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("server never listened");
    });
    let server = Server::new(registry());
    let ep = QmpEndpoint::parse_qmp(format!("unix:{},server", path.display())).unwrap();
    server.listen(&ep).unwrap();
    let s = t.join().unwrap();
    assert_eq!(server.client_count(), 1);
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut c = Client {
        out: Box::new(s.try_clone().unwrap()),
        input: BufReader::new(Box::new(s)),
    }
    .ready();
    assert_eq!(c.cmd(json!({"execute": "yank"})), json!({"return": {}}));
    server.shutdown();
}

#[test]
fn inherited_listening_fd_and_client_mode() {
    // libvirt: -chardev socket,id=charmonitor,fd=N,server=on,wait=off
    let path = temp_sock("fd");
    let l = UnixListener::bind(&path).unwrap();
    let fd = l.into_raw_fd();
    let cd = qmp::ChardevSpec::parse(format!("socket,id=charmonitor,fd={fd},server=on,wait=off"))
        .unwrap();
    let mon = qmp::MonSpec::parse("chardev=charmonitor,id=monitor,mode=control").unwrap();
    let eps = qmp::resolve_monitors(&[cd], &[mon]).unwrap();
    let server = Server::new(registry());
    assert_eq!(server.listen(&eps[0]).unwrap(), BoundAddr::Fd(fd));
    let mut c = Client::unix(&path).ready();
    assert_eq!(c.cmd(json!({"execute": "yank"})), json!({"return": {}}));

    // Client mode: the server connects out to a listening peer.
    let peer_path = temp_sock("peer");
    let peer = UnixListener::bind(&peer_path).unwrap();
    server
        .listen(&QmpEndpoint::Unix {
            path: peer_path.clone(),
            server: false,
            wait: false,
        })
        .unwrap();
    let (s, _) = peer.accept().unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut p = Client {
        out: Box::new(s.try_clone().unwrap()),
        input: BufReader::new(Box::new(s)),
    }
    .ready();
    assert_eq!(p.cmd(json!({"execute": "yank", "id": 9}))["id"], 9);
    server.shutdown();
}

#[test]
fn shutdown_flushes_and_disconnects() {
    let (server, path) = start();
    let mut a = Client::unix(&path).ready();
    let mut idle = Client::unix(&path); // never negotiates
    idle.recv();
    server.events().emit("STOP", Value::Null);
    server.shutdown();
    assert_eq!(a.recv()["event"], "STOP");
    assert!(a.eof());
    assert!(idle.eof());
    assert!(UnixStream::connect(&path).is_err());
    assert!(server.listen(&QmpEndpoint::Stdio).is_err());
}
