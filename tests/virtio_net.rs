//! virtio-net's data path over a tap in a test namespace, driven by the tiny guest's net
//! driver: merged receive buffers (a frame larger than one buffer arrives in several, with
//! num_buffers saying how many), the receive offloads the guest negotiates reaching the tap
//! (the tap's ethtool features as its host side sees them), and `mq=on` over a multiqueue
//! tap with both queue pairs carrying frames.

mod common;

use common::{machina, require_kvm};
use machina_tests::netns::Netns;
use machina_tests::RunResult;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The host side: creates the tap, then for each frame the guest sends answers with a
/// 1200-byte frame and says what the tap's offload features were at that moment
/// (ETHTOOL_GTXCSUM, ETHTOOL_GTSO: what TUNSETOFFLOAD turned on) and the frame's byte sum.
const RESPONDER: &str = r#"
import ctypes, fcntl, socket, struct, subprocess, sys
tap, frames, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
subprocess.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"] + mode, check=True)
subprocess.run(["ip", "link", "set", tap, "up"], check=True)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88b5))
s.bind((tap, 0))
s.settimeout(30)
def ethtool(cmd):
    value = ctypes.create_string_buffer(struct.pack("II", cmd, 0))
    ifr = struct.pack("16sP", tap.encode(), ctypes.addressof(value)).ljust(40, b"\0")
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fcntl.ioctl(c.fileno(), 0x8946, ifr)
    c.close()
    return struct.unpack("II", value.raw[:8])[1]
print("ready", flush=True)
for _ in range(frames):
    frame = s.recv(2048)
    tag = frame[14:].rstrip(b"\0")[-6:]
    csum, tso = ethtool(0x16), ethtool(0x1e)
    body = (b"host-pong-" + tag).ljust(64, b"\0")
    body += bytes((i * 7) % 251 + 1 for i in range(1200 - 14 - 64))
    reply = frame[6:12] + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + body
    s.send(reply)
    print("sent", tag.decode(errors="replace"), "len", len(reply), "sum", sum(reply),
          "tx-csum", csum, "tso", tso, flush=True)
"#;

struct Responder {
    child: Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Responder {
    /// None (after saying why) where the host forbids taps in a namespace.
    fn start(ns: &Netns, tap: &str, frames: usize, mode: &[&str]) -> Option<Responder> {
        let mut args = vec!["netns", "exec", &ns.0, "python3", "-c", RESPONDER, tap];
        let frames = frames.to_string();
        args.push(&frames);
        args.extend_from_slice(mode);
        let mut child = Command::new("ip")
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the responder");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("piped"));
        let mut ready = String::new();
        let _ = out.read_line(&mut ready);
        if ready.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("SKIP: this host forbids tap creation in a namespace ({tap})");
            return None;
        }
        Some(Responder { child, out })
    }

    fn finish(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut self.out, &mut s);
        s
    }
}

fn run_guest(ns: &Netns, args: &[&str]) -> RunResult {
    let binary = machina();
    let mut all = vec!["netns", "exec", &ns.0, binary.to_str().unwrap()];
    all.extend_from_slice(&["-M", "q35", "-nodefaults", "-serial", "stdio"]);
    all.extend_from_slice(args);
    machina_tests::run(Path::new("ip"), &all, Duration::from_secs(60))
}

/// `key=value` of a line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// The responder's `sent` lines, keyed by the guest's tag.
fn sent(responder: &str) -> Vec<Vec<&str>> {
    responder
        .lines()
        .filter(|l| l.starts_with("sent "))
        .map(|l| l.split_whitespace().collect())
        .collect()
}

#[test]
fn merged_rx_buffers_and_guest_offloads_reach_the_tap() {
    if !require_kvm() {
        return;
    }
    let Some(ns) = Netns::create("vnetmrg") else {
        eprintln!("SKIP: this host forbids creating a network namespace (ip netns add failed)");
        return;
    };
    for (mode, buffers, offloads) in [("mrg", "3", "1"), ("1", "1", "0")] {
        let tap = format!("mrg{mode}");
        let Some(resp) = Responder::start(&ns, &tap, 2, &[]) else {
            return;
        };
        let netdev = format!("tap,id=n0,ifname={tap},script=no,downscript=no");
        let append = format!("machina.test=virtio machina.net-test={mode}");
        let r = run_guest(
            &ns,
            &[
                "-netdev",
                &netdev,
                "-device",
                "virtio-net-pci,netdev=n0",
                "-append",
                &append,
            ],
        );
        let out = resp.finish();
        r.check(r.status == Some(0), "exit 0");
        let sent = sent(&out);
        for path in ["legacy", "modern"] {
            let line = r
                .lines_with("virtio-net: ")
                .into_iter()
                .find(|l| l.contains(&format!("path={path} tx=")))
                .unwrap_or("");
            let tag = if path == "legacy" { "legacy" } else { "modern" };
            let host = sent.iter().find(|s| s.get(1) == Some(&tag));
            r.check(
                line.contains("tx=ok rx=ok") && host.is_some(),
                &format!("{mode} {path}: a frame each way ({line}); responder: {out}"),
            );
            let host = host.unwrap();
            // 1200 bytes and the 12-byte header in 512-byte buffers take three.
            r.check(
                field(line, "rx-buffers") == Some(buffers)
                    && field(line, "rx-len") == Some("1200")
                    && field(line, "rx-sum") == host.get(5).copied(),
                &format!(
                    "{mode} {path}: the whole frame in {buffers} buffer(s): {line}; host {host:?}"
                ),
            );
            // The receive offloads the guest negotiated (GUEST_CSUM, GUEST_TSO4 with mrg,
            // none otherwise) are what the tap may hand it.
            r.check(
                host.get(7) == Some(&offloads) && host.get(9) == Some(&offloads),
                &format!("{mode} {path}: tap offloads {host:?}, want {offloads}"),
            );
        }
    }
}

/// The host side of the multiqueue test: a multiqueue tap; each UDP frame to port 7777
/// gets an answer of the same flow (addresses and ports swapped), which the tap steers to
/// the queue the flow arrived on. It runs machina (the rest of its arguments), replacing
/// `FDS` with two queue descriptors it opened itself (libvirt's way: `fds=a:b`).
const MQ_RESPONDER: &str = r#"
import fcntl, os, socket, struct, subprocess, sys, threading
tap, argv = sys.argv[1], sys.argv[2:]
subprocess.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr", "multi_queue"], check=True)
subprocess.run(["ip", "link", "set", tap, "up"], check=True)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
s.bind((tap, 0))
s.settimeout(30)
def checksum(b):
    total = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while total > 0xffff:
        total = (total & 0xffff) + (total >> 16)
    return (~total) & 0xffff
answered = []
def answer():
    seen = set()
    try:
        while len(seen) < 2:
            f = s.recv(2048)
            if len(f) < 42 or f[23] != 17:
                continue
            sport, dport = struct.unpack("!HH", f[34:38])
            if dport != 7777 or sport in seen:
                continue
            seen.add(sport)
            payload = f[42:].rstrip(b"\0")
            body = b"host-mq-" + payload[-1:]
            ip = bytearray(f[14:34])
            ip[2:4] = struct.pack("!H", 20 + 8 + len(body))
            ip[12:16], ip[16:20] = f[30:34], f[26:30]
            ip[10:12] = b"\0\0"
            ip[10:12] = struct.pack("!H", checksum(bytes(ip)))
            udp = struct.pack("!HHHH", 7777, sport, 8 + len(body), 0)
            reply = f[6:12] + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + bytes(ip) + udp + body
            s.send(reply.ljust(60, b"\0"))
            answered.append("answered %d %s" % (sport, payload.decode(errors="replace")))
    except OSError:
        pass
t = threading.Thread(target=answer, daemon=True)
t.start()
fds = []
if any("FDS" in a for a in argv):
    for _ in range(2):
        fd = os.open("/dev/net/tun", os.O_RDWR)
        # TUNSETIFF: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE.
        fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH22x", tap.encode(), 0x0002 | 0x1000 | 0x4000 | 0x0100))
        fds.append(fd)
argv = [a.replace("FDS", ":".join(map(str, fds))) for a in argv]
r = subprocess.run(argv, pass_fds=fds, capture_output=True, text=True, timeout=120)
t.join(1)
sys.stdout.write(r.stdout)
sys.stderr.write(r.stderr)
print("\n".join(answered))
print("machina-exit", r.returncode)
"#;

#[test]
fn two_queue_pairs_each_carry_a_flow_both_ways() {
    if !require_kvm() {
        return;
    }
    let Some(ns) = Netns::create("vnetmq") else {
        eprintln!("SKIP: this host forbids creating a network namespace (ip netns add failed)");
        return;
    };
    let binary = machina();
    // The tap opened by machina (queues=2), then two queues passed to it (fds=).
    for (tap, netdev) in [
        (
            "mqtap0",
            "tap,id=n0,ifname=mqtap0,script=no,downscript=no,queues=2,vhost=off",
        ),
        ("mqtap1", "tap,id=n0,fds=FDS,vhost=off"),
    ] {
        let r = machina_tests::run(
            Path::new("ip"),
            &[
                "netns",
                "exec",
                &ns.0,
                "python3",
                "-c",
                MQ_RESPONDER,
                tap,
                binary.to_str().unwrap(),
                "-M",
                "q35",
                "-nodefaults",
                "-serial",
                "stdio",
                "-netdev",
                netdev,
                "-device",
                "virtio-net-pci,netdev=n0,mq=on,disable-legacy=on",
                "-append",
                "machina.test=virtio machina.net-test=mq",
            ],
            Duration::from_secs(120),
        );
        if r.stderr.contains("Operation not permitted") && !r.stdout.contains("machina-exit") {
            eprintln!(
                "SKIP: this host forbids multiqueue taps in a namespace: {}",
                r.stderr
            );
            return;
        }
        r.check(
            r.stdout.contains("machina-exit 0"),
            &format!("{netdev}: exit 0"),
        );
        let line = r
            .lines_with("virtio-net: ")
            .into_iter()
            .find(|l| l.contains(" mq "))
            .unwrap_or("");
        r.check(
            line.contains("pairs=2 ctrl=ok tx0=ok tx1=ok"),
            &format!("{netdev}: two pairs, VQ_PAIRS_SET taken, a frame out of each: {line}"),
        );
        r.check(
            r.stdout.contains("answered 40000 machina-mq-0")
                && r.stdout.contains("answered 40001 machina-mq-1"),
            &format!("{netdev}: the host got both flows"),
        );
        // Each answer came back on the queue pair its flow left from.
        r.check(
            line.contains("answer0-rxq=0 answer1-rxq=1"),
            &format!("{netdev}: answers on their own pair's rx queue: {line}"),
        );
    }
}
