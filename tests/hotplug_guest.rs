//! PCI hot-plug with the tiny guest on the other side (issue 11): it waits for each
//! mechanism's announcement (ACPI PCI hot-plug, a PCIe slot, a bridge's SHPC), finds,
//! programs and uses the hot-added virtio devices, and ejects them when `device_del` asks,
//! as Linux's acpiphp, pciehp and shpchp do. The QMP-level checks (placement, refusals,
//! registers played through qtest) are in tests/hotplug.rs.

mod common;

use common::{machina, require_kvm};
use serde_json::{json, Value};
use std::time::Duration;

/// The console's whole lines once `line` appeared `count` times.
fn wait_console(path: &std::path::Path, line: &str, count: usize) -> String {
    machina_tests::process::wait_console(path, line, count, Duration::from_secs(120))
}

/// The host end of the hot-added NICs' netdev (`-netdev dgram` to a UDP socket of the
/// test): every frame with the guest's ethertype (0x88b5) is answered with a pong, as
/// `machina.net-test=1` expects; returns the payloads seen, once `count` were.
fn pong_udp(s: std::net::UdpSocket, count: usize) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(300)))
            .expect("timeout");
        let mut buf = [0u8; 2048];
        while seen.len() < count {
            let Ok((n, from)) = s.recv_from(&mut buf) else {
                break;
            };
            let frame = &buf[..n];
            if n < 14 || frame[12..14] != [0x88, 0xb5] {
                continue;
            }
            let payload: Vec<u8> = frame[14..]
                .iter()
                .copied()
                .take_while(|b| *b != 0)
                .collect();
            let mut reply = frame[6..12].to_vec();
            reply.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x88, 0xb5]);
            reply.extend_from_slice(b"host-pong");
            reply.resize(60, 0);
            let _ = s.send_to(&reply, from);
            seen.push(String::from_utf8_lossy(&payload).into_owned());
        }
        seen
    })
}

/// The tiny guest's hotplug mode (`machina.test=hotplug`): it waits for the announcement
/// (GPE0 bit 1 for ACPI, presence detect for a PCIe slot, an SHPC slot event), finds the
/// new function, assigns its BARs and uses it, releases it, and on the eject request
/// ejects it (ACPI eject register; slot powered off; SHPC slot disabled), which gives
/// DEVICE_DELETED. Three rounds, each into the slot the previous one freed: a virtio-blk
/// (a block written and read back), a virtio-net (a ping out through `-netdev dgram` to
/// this test, which answers it) and a virtio-rng (64 bytes read).
/// None where /dev/kvm is not usable (skipped); else the console.
fn guest_round_trip(
    machine: &str,
    extra: &[&str],
    devices: &[&str],
    append: &str,
    placement: Value,
) -> Option<String> {
    if !require_kvm() {
        return None;
    }
    let dir = machina_tests::TempDir::new("hotplug-guest");
    let disk = dir.path.join("disk");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(1 << 20))
        .expect("disk");
    let console = dir.path.join("console");
    let host = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let host_port = host.local_addr().expect("addr").port();
    let vm_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port();
    let pongs = pong_udp(host, 1);
    let mut args: Vec<String> = vec!["-M".into(), machine.into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    for d in devices {
        args.extend(["-device".to_string(), d.to_string()]);
    }
    args.extend(
        [
            "-nodefaults",
            "-serial",
            &format!("file:{}", console.display()),
            "-blockdev",
            &format!("driver=file,node-name=d0,filename={}", disk.display()),
            "-netdev",
            &format!(
                "dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port={vm_port},\
                 remote.type=inet,remote.host=127.0.0.1,remote.port={host_port}"
            ),
            "-append",
            &format!("machina.test=hotplug machina.hotplug-rounds=3 {append}"),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let mut vm = machina_tests::process::MachinaProcess::start(&machina(), "hotplug-guest", &args);
    let mut qmp = vm.client();
    wait_console(&console, "hotplug: waiting", 1);
    let rounds = [
        (
            "virtio-blk",
            json!({"driver": "virtio-blk-pci", "id": "hd", "drive": "d0"}),
        ),
        (
            "virtio-net",
            json!({"driver": "virtio-net-pci", "id": "nic", "netdev": "n0"}),
        ),
        (
            "virtio-rng",
            json!({"driver": "virtio-rng-pci", "id": "rng"}),
        ),
    ];
    let mut slots = Vec::new();
    for (round, (kind, mut dev)) in rounds.into_iter().enumerate() {
        let round = round + 1;
        let id = dev["id"].as_str().unwrap_or_default().to_string();
        for (k, v) in placement.as_object().into_iter().flatten() {
            dev[k] = v.clone();
        }
        qmp.ok("device_add", dev);
        let text = wait_console(&console, "hotplug: released", round);
        assert!(
            text.contains(&format!("{kind} driver result=ok")),
            "the guest drove the {kind}:\n{text}"
        );
        assert_eq!(
            qmp.events
                .iter()
                .filter(|e| e["event"] == "DEVICE_DELETED")
                .count(),
            0,
            "nothing deleted before the guest ejects"
        );
        qmp.ok("device_del", json!({ "id": id }));
        while qmp.wait_event("DEVICE_DELETED")["data"]["device"] != id.as_str() {}
        qmp.events.clear();
        let text = wait_console(&console, " gone", round);
        let slot = text
            .lines()
            .filter(|l| l.starts_with("hotplug: ejected slot="))
            .nth(round - 1)
            .map(str::to_string)
            .expect("ejected line");
        slots.push(slot);
    }
    assert!(
        slots.iter().all(|s| *s == slots[0]),
        "each device took the slot the previous one freed: {slots:?}"
    );
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    for line in [
        "write=ok read=ok match=yes",
        "tx=ok rx=ok rx-payload=host-pong",
        "bytes=64 nonzero=yes",
    ] {
        assert_eq!(text.matches(line).count(), 1, "{line:?}:\n{text}");
    }
    assert_eq!(
        pongs.join().expect("pong thread"),
        ["machina-guest-ping-modern"],
        "the host saw the guest's frame"
    );
    assert_eq!(vm.wait_exit(Duration::from_secs(60)), Some(0), "{text}");
    Some(text)
}

/// shpchp's steps, once per round, on slot 7 of the bridge.
fn assert_shpc_steps(text: &str) {
    for line in [
        "hotplug: event round=0 shpc presence slot=7",
        "hotplug: event round=1 shpc presence slot=7",
        "hotplug: event round=2 shpc presence slot=7",
        "hotplug: eject request attention-button slot=7",
    ] {
        assert!(text.contains(line), "{line:?} missing:\n{text}");
    }
    assert_eq!(
        text.matches("shpc slot=7 enabled=true").count(),
        3,
        "{text}"
    );
    assert_eq!(
        text.matches("shpc slot=7 disabled=true").count(),
        3,
        "{text}"
    );
}

#[test]
fn guest_uses_and_ejects_hot_added_virtio_devices_on_pc() {
    guest_round_trip("pc", &[], &[], "", json!({}));
}

#[test]
fn guest_uses_and_ejects_hot_added_virtio_devices_on_q35_native() {
    guest_round_trip(
        "pc-q35-6.0",
        &[],
        &["pcie-root-port,id=rp1,chassis=1,addr=3"],
        "machina.hotplug-port=3 machina.hotplug=native",
        json!({"bus": "rp1"}),
    );
}

#[test]
fn guest_uses_and_ejects_hot_added_virtio_devices_on_q35_acpi() {
    guest_round_trip(
        "pc-q35-10.2",
        &[],
        &["pcie-root-port,id=rp1,chassis=1,addr=3"],
        "machina.hotplug-port=3 machina.pcihp=0xcc0 machina.hotplug-bsel=0",
        json!({"bus": "rp1"}),
    );
}

/// pciehp on a switch's downstream port (root port 00:03.0, x3130-upstream, then
/// xio3130-downstream two buses further down): the guest opens every bridge's windows.
#[test]
fn guest_uses_and_ejects_hot_added_virtio_devices_on_q35_downstream_port() {
    let Some(text) = guest_round_trip(
        "pc-q35-6.0",
        &[],
        &[
            "pcie-root-port,id=rp1,chassis=1,addr=3",
            "x3130-upstream,id=up,bus=rp1",
            "xio3130-downstream,id=dn,bus=up,chassis=2",
        ],
        "machina.hotplug-port=3 machina.hotplug-down=2 machina.hotplug=native",
        json!({"bus": "dn"}),
    ) else {
        return;
    };
    assert_eq!(
        text.matches("hotplug: eject request attention-button port=02:00.0")
            .count(),
        3,
        "the downstream port's own slot:\n{text}"
    );
}

/// pc's ACPI hot-plug on a cold-plugged pci-bridge's bus (BSEL 1): the guest programs
/// the bridge's windows and ejects through the bus's BSEL.
#[test]
fn guest_uses_and_ejects_hot_added_virtio_devices_on_pc_bridge() {
    let Some(text) = guest_round_trip(
        "pc",
        &[],
        &["pci-bridge,id=br,chassis_nr=1,addr=5"],
        "machina.hotplug-port=5 machina.hotplug-bsel=1",
        json!({"bus": "br", "addr": "7"}),
    ) else {
        return;
    };
    for round in 0..3 {
        let line = format!("hotplug: event round={round} bsel=1 up=0x80");
        assert!(text.contains(&line), "{line:?} missing:\n{text}");
    }
}

const SHPC_BRIDGE: &str = "pci-bridge,id=br,chassis_nr=1,addr=5";
const SHPC_APPEND: &str = "machina.hotplug-port=5 machina.hotplug=shpc";

/// shpchp's steps on q35 6.0's pci-bridge: the presence event, slot enable, the device
/// used, the attention button on device_del, slot disable (which frees it).
#[test]
fn guest_uses_and_ejects_hot_added_virtio_devices_on_q35_shpc() {
    let placement = json!({"bus": "br", "addr": "7"});
    if let Some(text) = guest_round_trip("pc-q35-6.0", &[], &[SHPC_BRIDGE], SHPC_APPEND, placement)
    {
        assert_shpc_steps(&text);
    }
}

/// The same on pc with ACPI hot-plug for pci.0 only (bridges keep their SHPC).
#[test]
fn guest_uses_and_ejects_hot_added_virtio_devices_on_pc_shpc() {
    let global = [
        "-global",
        "PIIX4_PM.acpi-pci-hotplug-with-bridge-support=off",
    ];
    let placement = json!({"bus": "br", "addr": "7"});
    if let Some(text) = guest_round_trip("pc", &global, &[SHPC_BRIDGE], SHPC_APPEND, placement) {
        assert_shpc_steps(&text);
    }
}

/// As libvirt lays q35 out (root ports as functions of one slot, a cold-plugged device in
/// the first) with the bus not told to the guest (`machina.hotplug-scan`): it finds the
/// BSEL whose UP bit is set and the port whose bus gained the slot, as acpiphp rescans.
#[test]
fn guest_finds_the_port_of_a_hot_added_device_on_q35_acpi() {
    let Some(text) = guest_round_trip(
        "pc-q35-10.2",
        &[],
        &[
            "pcie-root-port,id=pci.1,chassis=1,addr=2.0,multifunction=on",
            "pcie-root-port,id=pci.2,chassis=2,addr=2.1",
            "pcie-root-port,id=pci.3,chassis=3,addr=2.2",
            "virtio-rng-pci,bus=pci.1",
        ],
        "machina.pcihp=0xcc0 machina.hotplug-scan=1",
        json!({"bus": "pci.3"}),
    ) else {
        return;
    };
    assert_eq!(
        text.matches("hotplug: found behind port=00:02.2").count(),
        3,
        "{text}"
    );
}
