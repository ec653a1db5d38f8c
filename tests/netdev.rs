//! Socket-like netdevs (`-netdev socket|stream|dgram|hubport`): frames relayed between
//! sockets the test holds (through a hub, with `-M none`: no KVM needed), QEMU's stream
//! framing with partial and oversized input, stream servers and clients with their QMP
//! events, `info network`, QEMU's option errors; with KVM, the tiny guest's virtio-net
//! frames through a socket pair and a hub.

mod common;

use common::{machina, require_kvm};
use machina_tests::qmp_client::QmpClient;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A machina process with a QMP socket, killed when dropped.
struct Vm {
    child: Child,
    qmp: PathBuf,
    dir: PathBuf,
}

impl Vm {
    /// Start machina with `args`, the descriptors `pass` inherited (their numbers unchanged).
    fn start(tag: &str, args: &[String], pass: &[RawFd], stdout: bool) -> Vm {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("machina-netdev-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let qmp = dir.join("qmp.sock");
        for fd in pass {
            // SAFETY: clearing FD_CLOEXEC on a descriptor this test owns, so the child keeps it.
            assert!(unsafe { libc::fcntl(*fd, libc::F_SETFD, 0) } == 0);
        }
        let child = Command::new(machina())
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(if stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .spawn()
            .expect("start machina");
        Vm { child, qmp, dir }
    }

    fn client(&self) -> QmpClient {
        let mut c = QmpClient::connect(&self.qmp, Duration::from_secs(30));
        c.ok("qmp_capabilities", Value::Null);
        c
    }

    fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn hmp(c: &mut QmpClient, line: &str) -> String {
    c.ok("human-monitor-command", json!({ "command-line": line }))
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `info network` until it equals `want` (the network thread works asynchronously).
fn wait_info(c: &mut QmpClient, want: &str) {
    let mut last = String::new();
    for _ in 0..600 {
        last = hmp(c, "info network");
        if last == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("info network stayed {last:?}, expected {want:?}");
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn framed(frame: &[u8]) -> Vec<u8> {
    let mut v = (frame.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(frame);
    v
}

fn read_framed(s: &mut UnixStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("frame length");
    let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut frame).expect("frame");
    frame
}

#[test]
fn a_hub_relays_frames_between_a_stream_and_a_datagram_socket() {
    let (mut stream, stream_peer) = UnixStream::pair().unwrap();
    let (dgram, dgram_peer) = UnixDatagram::pair().unwrap();
    let (mut third, third_peer) = UnixStream::pair().unwrap();
    for s in [&stream, &third] {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    }
    dgram
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (a, b, c) = (
        stream_peer.as_raw_fd(),
        dgram_peer.as_raw_fd(),
        third_peer.as_raw_fd(),
    );
    let vm = Vm::start(
        "hub",
        &args(&[
            "-M",
            "none",
            "-nodefaults",
            "-S",
            "-netdev",
            &format!("socket,id=s0,fd={a}"),
            "-netdev",
            &format!("socket,id=d0,fd={b}"),
            "-netdev",
            &format!("socket,id=s1,fd={c}"),
            "-netdev",
            "hubport,id=h0,hubid=1,netdev=s0",
            "-netdev",
            "hubport,id=h1,hubid=1,netdev=d0",
            "-netdev",
            "hubport,id=h2,hubid=1,netdev=s1",
        ]),
        &[a, b, c],
        false,
    );
    drop((stream_peer, dgram_peer, third_peer));
    let mut q = vm.client();
    wait_info(
        &mut q,
        &format!(
            "hub 1\r\n \\ h2: s1: index=0,type=socket,socket: fd={c}\r\n \\ h1: d0: index=0,type=socket,socket: fd={b} unix\r\n \\ h0: s0: index=0,type=socket,socket: fd={a}\r\n"
        ),
    );
    // A frame from the stream, its length header and body split into single bytes (partial
    // reads), reaches the datagram socket and the other stream, each once.
    let frame = b"\xff\xff\xff\xff\xff\xff\x02\x00\x00\x00\x00\x01\x88\xb5hub-frame-1";
    for byte in framed(frame) {
        stream.write_all(&[byte]).unwrap();
        stream.flush().unwrap();
    }
    let mut buf = [0u8; 2048];
    let n = dgram
        .recv(&mut buf)
        .expect("the datagram port gets the frame");
    assert_eq!(&buf[..n], frame);
    assert_eq!(read_framed(&mut third), frame);
    // A datagram goes back out framed on both streams, not to the datagram socket itself.
    let reply = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x88\xb5hub-frame-2";
    dgram.send(reply).unwrap();
    assert_eq!(read_framed(&mut stream), reply);
    assert_eq!(read_framed(&mut third), reply);
    dgram.set_nonblocking(true).unwrap();
    assert!(
        dgram.recv(&mut buf).is_err(),
        "a hub never echoes to the source"
    );
    // An oversized length from a stream peer ends that connection (QEMU: "connection
    // terminated"), nothing more: the process and the other ports keep working.
    stream.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "machina closed the connection");
    wait_info(
        &mut q,
        &format!(
            "hub 1\r\n \\ h2: s1: index=0,type=socket,socket: fd={c}\r\n \\ h1: d0: index=0,type=socket,socket: fd={b} unix\r\n \\ h0: s0: index=0,type=socket,\r\n"
        ),
    );
    third.write_all(&framed(b"after")).unwrap();
    dgram.set_nonblocking(false).unwrap();
    let n = dgram.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"after");
}

#[test]
fn udp_netdevs_exchange_frames_through_a_hub() {
    let test_sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    test_sock
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let test_port = test_sock.local_addr().unwrap().port();
    let free = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let vm_port = free.local_addr().unwrap().port();
    drop(free);
    let (mut stream, peer) = UnixStream::pair().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let fd = peer.as_raw_fd();
    let dgram = format!(
        "dgram,id=u0,local.type=inet,local.host=127.0.0.1,local.port={vm_port},remote.type=inet,remote.host=127.0.0.1,remote.port={test_port}"
    );
    let vm = Vm::start(
        "udp",
        &args(&[
            "-M",
            "none",
            "-nodefaults",
            "-S",
            "-netdev",
            &dgram,
            "-netdev",
            &format!("stream,id=st,addr.type=fd,addr.str={fd}"),
            "-netdev",
            "hubport,id=p0,hubid=0,netdev=u0",
            "-netdev",
            "hubport,id=p1,hubid=0,netdev=st",
        ]),
        &[fd],
        false,
    );
    drop(peer);
    let mut q = vm.client();
    wait_info(
        &mut q,
        &format!(
            "hub 0\r\n \\ p1: st: index=0,type=stream,unix:\r\n \\ p0: u0: index=0,type=dgram,udp=127.0.0.1:{vm_port}/127.0.0.1:{test_port}\r\n"
        ),
    );
    stream.write_all(&framed(b"to-udp")).unwrap();
    let mut buf = [0u8; 256];
    let (n, from) = test_sock.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"to-udp");
    assert_eq!(from.port(), vm_port, "sent from the bound local address");
    test_sock
        .send_to(b"from-udp", ("127.0.0.1", vm_port))
        .unwrap();
    assert_eq!(read_framed(&mut stream), b"from-udp");
}

fn stream_args(id: &str, server: bool, path: &Path, extra: &str) -> Vec<String> {
    args(&[
        "-M",
        "none",
        "-nodefaults",
        "-S",
        "-netdev",
        &format!(
            "stream,id={id},server={},addr.type=unix,addr.path={}{extra}",
            if server { "on" } else { "off" },
            path.display()
        ),
    ])
}

#[test]
fn stream_server_and_client_report_connections_and_reconnect() {
    let dir = std::env::temp_dir().join(format!("machina-netdev-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("st.sock");
    let server = Vm::start("srv", &stream_args("st0", true, &path, ""), &[], false);
    let mut s = server.client();
    wait_info(&mut s, "st0: index=0,type=stream,listening\r\n");
    let client = Vm::start(
        "cli",
        &stream_args("st1", false, &path, ",reconnect-ms=100"),
        &[],
        false,
    );
    let ev = s.wait_event("NETDEV_STREAM_CONNECTED");
    assert_eq!(ev["data"]["netdev-id"], "st0");
    assert_eq!(
        ev["data"]["addr"],
        json!({"type": "unix", "path": path.to_str().unwrap()})
    );
    let uri = format!("unix:{}", path.display());
    wait_info(&mut s, &format!("st0: index=0,type=stream,{uri}\r\n"));
    let mut c = client.client();
    wait_info(&mut c, &format!("st1: index=0,type=stream,{uri}\r\n"));
    // The server goes: the client reports it and keeps trying.
    drop(s);
    drop(server);
    let ev = c.wait_event("NETDEV_STREAM_DISCONNECTED");
    assert_eq!(ev["data"], json!({"netdev-id": "st1"}));
    let info = hmp(&mut c, "info network");
    assert!(
        info == "st1: index=0,type=stream,connecting\r\n"
            || info.starts_with("st1: index=0,type=stream,error: Failed to connect"),
        "{info}"
    );
    let server = Vm::start("srv2", &stream_args("st0", true, &path, ""), &[], false);
    let ev = c.wait_event("NETDEV_STREAM_CONNECTED");
    assert_eq!(ev["data"]["netdev-id"], "st1");
    let mut s = server.client();
    wait_info(&mut s, &format!("st0: index=0,type=stream,{uri}\r\n"));
    // netdev_del closes the client's socket: the server sees the peer go.
    c.ok("netdev_del", json!({"id": "st1"}));
    assert_eq!(hmp(&mut c, "info network"), "");
    assert_eq!(
        c.error("netdev_del", json!({"id": "st1"})),
        "Device 'st1' not found"
    );
    s.wait_event("NETDEV_STREAM_DISCONNECTED");
    wait_info(&mut s, "st0: index=0,type=stream,listening\r\n");
    drop(client);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_stream_server_survives_bad_peers_and_accepts_again() {
    let dir = std::env::temp_dir().join(format!("machina-netdev-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("st.sock");
    let vm = Vm::start("bad", &stream_args("st0", true, &path, ""), &[], false);
    let mut q = vm.client();
    wait_info(&mut q, "st0: index=0,type=stream,listening\r\n");
    let fds = vm.fd_count();
    for round in 0..3 {
        let mut peer = UnixStream::connect(&path).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        q.wait_event("NETDEV_STREAM_CONNECTED");
        // Half a header, then a length QEMU refuses (more than 69632 bytes): the server
        // drops the connection without reading (or allocating) that much.
        peer.write_all(&[0x7f, 0xff]).unwrap();
        peer.write_all(&[0xff, 0xff]).unwrap();
        let mut rest = Vec::new();
        let _ = peer.read_to_end(&mut rest);
        q.wait_event("NETDEV_STREAM_DISCONNECTED");
        wait_info(&mut q, "st0: index=0,type=stream,listening\r\n");
        assert_eq!(
            vm.fd_count(),
            fds,
            "round {round}: no descriptor left behind"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn netdev_options_are_checked_with_qemus_texts() {
    let cases: &[(&str, &str)] = &[
        ("socket,id=n0", "exactly one of listen=, connect=, mcast= or udp= is required"),
        ("socket,id=n0,listen=:1,connect=127.0.0.1:2", "exactly one of listen=, connect=, mcast= or udp= is required"),
        ("socket,id=n0,connect=127.0.0.1:2,localaddr=1.2.3.4", "localaddr= is only valid with mcast= or udp="),
        ("socket,id=n0,udp=127.0.0.1:2", "localaddr= is mandatory with udp="),
        ("socket,id=n0,mcast=127.0.0.1:2", "specified mcastaddr 127.0.0.1 (0x7f000001) does not contain a multicast address"),
        ("socket,id=n0,fd=250", "Can't use file descriptor 250: Bad file descriptor"),
        ("socket,id=n0,fd=x", "Invalid file descriptor number 'x'"),
        ("stream,id=n0", "Parameter 'addr' is missing"),
        ("stream,id=n0,server=on,addr.type=unix,addr.path=/tmp/x,reconnect-ms=5", "'reconnect' and 'reconnect-ms' options are incompatible with socket in server mode"),
        ("stream,id=n0,addr.type=unix,addr.path=/tmp/x,reconnect=1,reconnect-ms=5", "'reconnect' and 'reconnect-ms' are mutually exclusive"),
        ("stream,id=n0,addr.type=unix", "Parameter 'addr.path' is missing"),
        ("stream,id=n0,server=on,addr.type=inet,addr.host=example.org,addr.port=1", "address resolution failed for example.org:1"),
        ("dgram,id=n0", "dgram requires local= parameter"),
        ("dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port=1", "type=inet or type=unix requires remote parameter"),
        ("dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port=1,remote.type=unix,remote.path=/x", "remote and local types must be the same"),
        ("hubport,id=n0", "Parameter 'hubid' is missing"),
        ("hubport,id=n0,hubid=0,netdev=nope", "netdev 'nope' not found"),
        ("hubport,id=n0,hubid=x", "Parameter 'hubid' expects int32"),
        ("tap,id=n0,queues=x", "Parameter 'queues' expects a uint64 value"),
        ("tap,id=n0,queues=-1", "Parameter 'queues' expects a uint64 value"),
        ("tap,id=n0,queues=0", "tap: queues must be at least 1"),
        ("tap,id=n0,fds=3:4,ifname=x", "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, and vhostfd= are invalid with fds="),
        ("tap,id=n0,fds=3:4,queues=2", "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, and vhostfd= are invalid with fds="),
        ("tap,id=n0,queues=2,fd=3", "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, fds=, and vhostfds= are invalid with fd="),
        ("tap,id=n0,fds=250:251", "n0: Can't use file descriptor 250: Bad file descriptor"),
    ];
    for (spec, want) in cases {
        let r = machina_tests::run(
            &machina(),
            &["-M", "none", "-nodefaults", "-S", "-netdev", spec],
            Duration::from_secs(60),
        );
        let stderr = &r.stderr;
        assert_eq!(r.status, Some(1), "{spec}: {stderr}");
        assert!(
            stderr.contains(&format!("-netdev {spec}: {want}")),
            "{spec}: want {want:?}, got {stderr:?}"
        );
        assert_eq!(stderr.lines().count(), 1, "{spec}: one line: {stderr:?}");
    }
}

/// The tiny guest's virtio-net test (resources/guest/README.md): a ping out on the legacy
/// and the modern path, and a frame with ethertype 0x88b5 expected back each time.
fn guest_args(netdev_args: &[String]) -> Vec<String> {
    let mut a = args(&["-M", "q35", "-nodefaults", "-serial", "stdio"]);
    a.extend_from_slice(netdev_args);
    a.extend(args(&[
        "-device",
        "virtio-net-pci,netdev=g0,mac=02:00:00:00:00:01",
        "-append",
        "machina.test=virtio machina.net-test=1",
    ]));
    a
}

/// Answer each guest ping read from `s` with a pong; returns the payloads seen.
fn pong(s: UnixStream) -> std::thread::JoinHandle<Vec<String>> {
    pong_n(s, 2)
}

/// `pong` for `count` pings.
fn pong_n(mut s: UnixStream, count: usize) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        while seen.len() < count {
            let mut len = [0u8; 4];
            if s.read_exact(&mut len).is_err() {
                break;
            }
            let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
            if s.read_exact(&mut frame).is_err() {
                break;
            }
            if frame.len() < 14 || frame[12..14] != [0x88, 0xb5] {
                continue;
            }
            let payload: Vec<u8> = frame[14..]
                .iter()
                .copied()
                .take_while(|b| *b != 0)
                .collect();
            let text = String::from_utf8_lossy(&payload).into_owned();
            let mut reply = frame[6..12].to_vec();
            reply.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x88, 0xb5]);
            reply.extend_from_slice(
                format!("host-pong-{}", &text[text.len().saturating_sub(6)..]).as_bytes(),
            );
            reply.resize(60, 0);
            let _ = s.write_all(&framed(&reply));
            seen.push(text);
        }
        seen
    })
}

fn guest_output(vm: &mut Vm) -> (Option<i32>, String) {
    let mut out = String::new();
    if let Some(mut o) = vm.child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    let status = vm.child.wait().ok().and_then(|s| s.code());
    (status, out)
}

fn check_guest_frames(out: &str, seen: &[String]) {
    for path in ["legacy", "modern"] {
        let line = out
            .lines()
            .find(|l| l.contains("virtio-net: ") && l.contains(&format!("path={path} tx=")))
            .unwrap_or("");
        assert!(
            line.contains("tx=ok rx=ok") && line.contains("rx-payload=host-pong-"),
            "{path}: a frame out and one back ({line}); host saw {seen:?}\n{out}"
        );
    }
    assert!(
        seen.iter().any(|s| s.contains("machina-guest-ping-legacy")),
        "the host saw the guest's frames: {seen:?}"
    );
}

#[test]
fn guest_frames_cross_a_socket_pair() {
    if !require_kvm() {
        return;
    }
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fd = theirs.as_raw_fd();
    let mut vm = Vm::start(
        "guest",
        &guest_args(&args(&["-netdev", &format!("socket,id=g0,fd={fd}")])),
        &[fd],
        true,
    );
    drop(theirs);
    let responder = pong(ours);
    let (status, out) = guest_output(&mut vm);
    let seen = responder.join().unwrap();
    assert_eq!(status, Some(0), "{out}");
    check_guest_frames(&out, &seen);
}

#[test]
fn guest_frames_reach_every_port_of_a_hub() {
    if !require_kvm() {
        return;
    }
    let (ours, theirs) = UnixStream::pair().unwrap();
    let (listener, listener_peer) = UnixDatagram::pair().unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let (fd, lfd) = (theirs.as_raw_fd(), listener_peer.as_raw_fd());
    let mut vm = Vm::start(
        "guesthub",
        &guest_args(&args(&[
            "-netdev",
            &format!("socket,id=s0,fd={fd}"),
            "-netdev",
            &format!("socket,id=s1,fd={lfd}"),
            "-netdev",
            "hubport,id=g0,hubid=7",
            "-netdev",
            "hubport,id=p1,hubid=7,netdev=s0",
            "-netdev",
            "hubport,id=p2,hubid=7,netdev=s1",
        ])),
        &[fd, lfd],
        true,
    );
    drop((theirs, listener_peer));
    let mut q = vm.client();
    let info = hmp(&mut q, "info network");
    assert!(
        info.starts_with(&format!(
            "hub 7\r\n \\ p2: s1: index=0,type=socket,socket: fd={lfd} unix\r\n \\ p1: s0: index=0,type=socket,socket: fd={fd}\r\n \\ g0: virtio-net-pci.0: index=0,type=nic,model=virtio-net-pci,macaddr=02:00:00:00:00:01\r\n"
        )),
        "{info}"
    );
    let responder = pong(ours);
    // The third port sees the guest's pings and the responder's pongs, once each.
    let mut buf = [0u8; 2048];
    let mut heard = Vec::new();
    while heard.len() < 4 {
        match listener.recv(&mut buf) {
            Ok(n) => heard.push(
                String::from_utf8_lossy(&buf[14..n])
                    .trim_end_matches('\0')
                    .to_string(),
            ),
            Err(_) => break,
        }
    }
    let (status, out) = guest_output(&mut vm);
    let seen = responder.join().unwrap();
    assert_eq!(status, Some(0), "{out}");
    check_guest_frames(&out, &seen);
    assert_eq!(
        heard
            .iter()
            .filter(|h| h.starts_with("machina-guest-ping"))
            .count(),
        2,
        "{heard:?}"
    );
    assert_eq!(
        heard.iter().filter(|h| h.starts_with("host-pong")).count(),
        2,
        "{heard:?}"
    );
}

#[test]
fn packet_filters_mirror_and_redirect_frames() {
    let (mut src, src_peer) = UnixStream::pair().unwrap();
    let (dst, dst_peer) = UnixDatagram::pair().unwrap();
    let (mut mirror, mirror_peer) = UnixStream::pair().unwrap();
    let (mut redirect, redirect_peer) = UnixStream::pair().unwrap();
    for s in [&src, &mirror, &redirect] {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    }
    let fds = [
        src_peer.as_raw_fd(),
        dst_peer.as_raw_fd(),
        mirror_peer.as_raw_fd(),
        redirect_peer.as_raw_fd(),
    ];
    let vm = Vm::start(
        "filters",
        &args(&[
            "-M",
            "none",
            "-nodefaults",
            "-S",
            "-netdev",
            &format!("socket,id=s0,fd={}", fds[0]),
            "-netdev",
            &format!("socket,id=s1,fd={}", fds[1]),
            "-netdev",
            "hubport,id=h0,hubid=0,netdev=s0",
            "-netdev",
            "hubport,id=h1,hubid=0,netdev=s1",
            "-chardev",
            &format!("socket,id=m0,fd={}", fds[2]),
            "-chardev",
            &format!("socket,id=r0,fd={}", fds[3]),
            "-object",
            "filter-mirror,id=f0,netdev=s0,queue=tx,outdev=m0",
            "-object",
            "filter-redirector,id=f1,netdev=s1,queue=rx,outdev=r0",
        ]),
        &fds,
        false,
    );
    drop((src_peer, dst_peer, mirror_peer, redirect_peer));
    let mut q = vm.client();
    let _ = hmp(&mut q, "info network");
    // s0 sends: the mirror copies it; the hub takes it to s1, whose rx redirector takes it
    // to r0 instead of s1's socket.
    src.write_all(&framed(b"filtered-frame")).unwrap();
    assert_eq!(read_framed(&mut mirror), b"filtered-frame");
    assert_eq!(read_framed(&mut redirect), b"filtered-frame");
    // The other way nothing is filtered (the mirror watches s0's tx only).
    dst.send(b"back").unwrap();
    assert_eq!(read_framed(&mut src), b"back");
    // The network thread handled the first frame before this one: had it reached s1's
    // socket, it would be waiting there now.
    dst.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    assert!(dst.recv(&mut buf).is_err(), "redirected, not delivered");
    drop(vm);
}

#[test]
fn netdevs_come_and_go_over_qmp() {
    let vm = Vm::start(
        "qmp",
        &args(&["-M", "none", "-nodefaults", "-S"]),
        &[],
        false,
    );
    let path = vm.dir.join("q.sock");
    let mut q = vm.client();
    q.ok(
        "netdev_add",
        json!({"type": "stream", "id": "q0", "server": true,
               "addr": {"type": "unix", "path": path.to_str().unwrap()}}),
    );
    q.ok(
        "netdev_add",
        json!({"type": "hubport", "id": "h0", "hubid": 3}),
    );
    assert_eq!(
        hmp(&mut q, "info network"),
        "hub 3\r\n \\ h0\r\nq0: index=0,type=stream,listening\r\n"
    );
    // The listener is real: a client connects and is reported.
    let _peer = UnixStream::connect(&path).unwrap();
    q.wait_event("NETDEV_STREAM_CONNECTED");
    // A descriptor number over QMP could name any descriptor of the process.
    let e = q.error(
        "netdev_add",
        json!({"type": "socket", "id": "s0", "fd": "1"}),
    );
    assert!(e.contains("command line only"), "{e}");
    assert_eq!(
        q.error(
            "netdev_add",
            json!({"type": "hubport", "id": "h0", "hubid": 1})
        ),
        "Duplicate ID 'h0' for netdev"
    );
    q.ok("netdev_del", json!({"id": "q0"}));
    q.ok("netdev_del", json!({"id": "h0"}));
    assert_eq!(hmp(&mut q, "info network"), "");
}

/// Poll `query-status` until the run state is `want` (a hang guard, not a timing check).
fn wait_status(q: &mut QmpClient, want: &str) {
    for _ in 0..2400 {
        if q.ok("query-status", Value::Null)["status"] == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the machine never reached {want}");
}

#[test]
fn a_reset_machine_keeps_its_socket_netdev() {
    if !require_kvm() {
        return;
    }
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fd = theirs.as_raw_fd();
    let dir = std::env::temp_dir().join(format!("machina-netdev-rst-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let serial = dir.join("serial.log");
    let vm = Vm::start(
        "reset",
        &args(&[
            "-M",
            "q35",
            "-nodefaults",
            "-no-shutdown",
            "-serial",
            &format!("file:{}", serial.display()),
            "-netdev",
            &format!("socket,id=g0,fd={fd}"),
            "-device",
            "virtio-net-pci,netdev=g0,mac=02:00:00:00:00:01",
            "-append",
            "machina.test=virtio machina.net-test=1",
        ]),
        &[fd],
        false,
    );
    drop(theirs);
    let responder = pong_n(ours, 4);
    let mut q = vm.client();
    wait_status(&mut q, "shutdown");
    let fds = vm.fd_count();
    assert_eq!(
        hmp(&mut q, "info network"),
        format!("virtio-net-pci.0: index=0,type=nic,model=virtio-net-pci,macaddr=02:00:00:00:00:01\r\n \\ g0: index=0,type=socket,socket: fd={fd}\r\n")
    );
    // A rebuilt machine's NIC gets the same netdev (a new descriptor on the same socket
    // pair): the second boot's frames cross as the first's did, nothing accumulates.
    q.ok("system_reset", Value::Null);
    q.ok("cont", Value::Null);
    wait_status(&mut q, "running");
    wait_status(&mut q, "shutdown");
    let seen = responder.join().unwrap();
    let out = std::fs::read_to_string(&serial).unwrap_or_default();
    let crossed = out
        .lines()
        .filter(|l| l.contains("virtio-net: ") && l.contains("tx=ok rx=ok rx-payload=host-pong-"))
        .count();
    assert_eq!(
        crossed, 4,
        "two paths on each of two boots; host saw {seen:?}\n{out}"
    );
    assert!(
        vm.fd_count() <= fds,
        "no descriptor left behind by the rebuild"
    );
    // The responder has closed its end: a `-netdev socket` stream shows no peer then, as in
    // QEMU.
    assert_eq!(
        hmp(&mut q, "info network"),
        "virtio-net-pci.0: index=0,type=nic,model=virtio-net-pci,macaddr=02:00:00:00:00:01\r\n \\ g0: index=0,type=socket,\r\n"
    );
    drop(vm);
    let _ = std::fs::remove_dir_all(&dir);
}
