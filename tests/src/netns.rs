//! Private network namespaces for the tests' taps (`ip netns`, from iproute2), and the host
//! side of a tap in one: Python scripts run in the namespace with helpers for taps and raw
//! frames ([`TAP_PY`]), and one frame responder ([`TapResponder`]).

use crate::RunResult;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

/// Runs `cmd` quietly and says whether it succeeded.
pub fn sh(cmd: &[&str]) -> bool {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A network namespace named after the test and this process, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    /// None where the host forbids creating one (the caller skips with a reason).
    pub fn create(tag: &str) -> Option<Netns> {
        let name = format!("machina-{tag}-{}", std::process::id());
        sh(&["ip", "netns", "add", &name]).then_some(Netns(name))
    }

    /// `create`, or None after saying that the test is skipped.
    pub fn create_or_skip(tag: &str) -> Option<Netns> {
        let ns = Netns::create(tag);
        if ns.is_none() {
            eprintln!("SKIP: this host forbids creating a network namespace (ip netns add failed)");
        }
        ns
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    /// `ip netns exec NAME ARGS...` with no stdin, killed after `limit`.
    pub fn run(&self, args: &[&str], limit: Duration) -> RunResult {
        let mut all = vec!["netns", "exec", &self.0];
        all.extend_from_slice(args);
        crate::run(Path::new("ip"), &all, limit)
    }

    /// `python3 -c SCRIPT ARGS...` in the namespace, with [`TAP_PY`]'s helpers defined
    /// first, killed after `limit`.
    pub fn python(&self, script: &str, args: &[&str], limit: Duration) -> RunResult {
        let program = format!("{TAP_PY}{script}");
        let mut all = vec!["python3", "-c", &program];
        all.extend_from_slice(args);
        self.run(&all, limit)
    }

    /// A [`TapResponder`] on a new tap `tap` (`ip tuntap add ... vnet_hdr MODE...`) for
    /// `frames` frames, each answered with a frame of `reply_len` bytes (at least 60).
    /// None (after saying that the test is skipped) where the host forbids the tap.
    pub fn tap_responder(
        &self,
        tap: &str,
        frames: usize,
        reply_len: usize,
        mode: &[&str],
    ) -> Option<TapResponder> {
        TapResponder::start(self, tap, frames, reply_len, mode)
    }

    /// Tap interfaces in the namespace.
    pub fn taps(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.0, "ip", "-o", "link", "show", "type", "tun",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.lines()
            .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.0]);
    }
}

/// Python helpers for a tap's host side, defined before each script [`Netns::python`] runs.
pub const TAP_PY: &str = r#"
import ctypes, fcntl, os, socket, struct, subprocess, sys, threading
def add_tap(tap, mode=()):
    # A persistent tap, up before the guest starts; machina attaches to it by name.
    subprocess.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"] + list(mode), check=True)
    subprocess.run(["ip", "link", "set", tap, "up"], check=True)
def open_tap(tap, flags=0):
    # TUNSETIFF with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (| flags), as libvirt opens a tap
    # for virtio; the descriptor is passed to machina.
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH22x", tap.encode(), 0x0002 | 0x1000 | 0x4000 | flags))
    return fd
def packet_socket(tap, ethertype):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype))
    s.bind((tap, 0))
    s.settimeout(30)
    return s
def reply_header(frame, ethertype):
    # Back to the frame's sender, from the host's address 02:00:00:00:00:01.
    return frame[6:12] + b"\x02\x00\x00\x00\x00\x01" + struct.pack("!H", ethertype)
def ethtool(tap, cmd):
    value = ctypes.create_string_buffer(struct.pack("II", cmd, 0))
    ifr = struct.pack("16sP", tap.encode(), ctypes.addressof(value)).ljust(40, b"\0")
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fcntl.ioctl(c.fileno(), 0x8946, ifr)
    c.close()
    return struct.unpack("II", value.raw[:8])[1]
RUNNING = []
def thread_names(proc):
    # The names of a running process's threads (/proc/PID/task/*/comm).
    names = []
    task = "/proc/%d/task" % proc.pid
    for t in os.listdir(task):
        try:
            with open("%s/%s/comm" % (task, t)) as c:
                names.append(c.read().strip())
        except OSError:
            pass
    return names
def run_machina(argv, fds, serve):
    # machina (argv) with `fds` passed, while serve(lines) answers its frames in a thread:
    # machina's output, then the lines serve gave, then machina's exit status.
    # While it runs, RUNNING holds its Popen (serve may look at its threads).
    lines = []
    t = threading.Thread(target=serve, args=(lines,), daemon=True)
    t.start()
    with subprocess.Popen(argv, pass_fds=fds, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        RUNNING.append(p)
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
    for fd in fds:
        os.close(fd)
    t.join(1)
    sys.stdout.write(out)
    sys.stderr.write(err)
    print("\n".join(lines))
    print("machina-exit", p.returncode)
"#;

/// The responder: creates the tap, then answers each frame of the guest's ethertype
/// (0x88b5) with `host-pong-TAG` (TAG: the last 6 bytes of the guest's payload), padded with
/// a byte pattern to the reply length, and says what it sent, its byte sum, the tap's
/// offload features at that moment (ETHTOOL_GTXCSUM, ETHTOOL_GTSO: what TUNSETOFFLOAD
/// turned on) and the guest's payload:
/// `sent TAG len N sum S tx-csum C tso T payload PAYLOAD`.
const RESPONDER_PY: &str = r#"
tap, frames, reply_len, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
add_tap(tap, mode)
s = packet_socket(tap, 0x88b5)
print("ready", flush=True)
for _ in range(frames):
    frame = s.recv(2048)
    payload = frame[14:].rstrip(b"\0")
    tag = payload[-6:]
    csum, tso = ethtool(tap, 0x16), ethtool(tap, 0x1e)
    body = b"host-pong-" + tag
    if reply_len > 60:
        body = body.ljust(64, b"\0")
        body += bytes((i * 7) % 251 + 1 for i in range(reply_len - 14 - 64))
    reply = (reply_header(frame, 0x88b5) + body).ljust(60, b"\0")
    s.send(reply)
    print("sent", tag.decode(errors="replace"), "len", len(reply), "sum", sum(reply),
          "tx-csum", csum, "tso", tso, "payload", payload.decode(errors="replace"), flush=True)
"#;

/// The host end of a tap in a namespace, answering the guest's frames while the test runs
/// machina there ([`Netns::tap_responder`]); killed by `finish`.
pub struct TapResponder {
    child: Child,
    out: std::io::BufReader<ChildStdout>,
}

impl TapResponder {
    fn start(
        ns: &Netns,
        tap: &str,
        frames: usize,
        reply_len: usize,
        mode: &[&str],
    ) -> Option<TapResponder> {
        let program = format!("{TAP_PY}{RESPONDER_PY}");
        let (frames, reply_len) = (frames.to_string(), reply_len.to_string());
        let mut args = vec!["netns", "exec", &ns.0, "python3", "-c", &program, tap];
        args.extend([frames.as_str(), reply_len.as_str()]);
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
        Some(TapResponder { child, out })
    }

    /// Stops the responder; what it said (its `sent` lines).
    pub fn finish(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut self.out, &mut s);
        s
    }
}
