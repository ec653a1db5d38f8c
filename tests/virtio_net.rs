//! virtio-net's data path over a tap in a test namespace, driven by the tiny guest's net
//! driver: merged receive buffers (a frame larger than one buffer arrives in several, with
//! num_buffers saying how many), the receive offloads the guest negotiates reaching the tap
//! (the tap's ethtool features as its host side sees them), and `mq=on` over a multiqueue
//! tap with both queue pairs carrying frames.

mod common;

use common::{machina, require_kvm};
use machina_tests::netns::Netns;
use machina_tests::RunResult;
use std::time::Duration;

fn run_guest(ns: &Netns, args: &[&str]) -> RunResult {
    let binary = machina();
    let mut all = vec![binary.to_str().unwrap()];
    all.extend_from_slice(&["-M", "q35", "-nodefaults", "-serial", "stdio"]);
    all.extend_from_slice(args);
    ns.run(&all, Duration::from_secs(60))
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
    let Some(ns) = Netns::create_or_skip("vnetmrg") else {
        return;
    };
    for (mode, buffers, offloads) in [("mrg", "3", "1"), ("1", "1", "0")] {
        let tap = format!("mrg{mode}");
        // Answers of 1200 bytes: more than one 512-byte receive buffer.
        let Some(resp) = ns.tap_responder(&tap, 2, 1200, &[]) else {
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
tap, argv = sys.argv[1], sys.argv[2:]
add_tap(tap, ["multi_queue"])
s = packet_socket(tap, 0x0800)
def checksum(b):
    total = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while total > 0xffff:
        total = (total & 0xffff) + (total >> 16)
    return (~total) & 0xffff
def answer(answered):
    seen = set()
    listed = False
    try:
        while len(seen) < 2:
            f = s.recv(2048)
            if RUNNING and not listed:
                # The guest runs: the machine and its device threads are built.
                names = sorted(n for n in thread_names(RUNNING[0]) if n.startswith("virtio-io"))
                answered.append("io-threads: " + ",".join(names))
                listed = True
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
            reply = reply_header(f, 0x0800) + bytes(ip) + udp + body
            s.send(reply.ljust(60, b"\0"))
            answered.append("answered %d %s" % (sport, payload.decode(errors="replace")))
    except OSError:
        pass
fds = []
if any("FDS" in a for a in argv):
    # Two queues with IFF_MULTI_QUEUE.
    fds = [open_tap(tap, 0x0100) for _ in range(2)]
run_machina([a.replace("FDS", ":".join(map(str, fds))) for a in argv], fds, answer)
"#;

#[test]
fn two_queue_pairs_each_carry_a_flow_both_ways() {
    if !require_kvm() {
        return;
    }
    let Some(ns) = Netns::create_or_skip("vnetmq") else {
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
        let r = ns.python(
            MQ_RESPONDER,
            &[
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
        // Each queue pair ran on a thread of its own (the control queue with pair 0's).
        let threads = r.lines_with("io-threads:").first().copied().unwrap_or("");
        r.check(
            threads.trim() == "io-threads: virtio-io 0,virtio-io 0.1",
            &format!("{netdev}: a thread per queue pair while the guest ran: {threads}"),
        );
    }
}
