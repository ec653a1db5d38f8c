//! virtconsole input (issue 13): what the client of the console's chardev socket sends
//! reaches the guest's receive buffers. The guest is a qtest client driving virtio-serial's
//! modern interface without MULTIPORT (port 0 is then the console, open from DRIVER_OK).

mod common;

use common::{machina, require_kvm};
use machina_tests::qtest_client::Qtest;
use machina_tests::TempDir;
use std::io::Write;
use std::time::{Duration, Instant};

const BAR4: u64 = 0xe000_0000;
const BDF: (u8, u8, u8) = (0, 5, 0);
const DESC: u64 = 0x10_0000;
const AVAIL: u64 = 0x10_1000;
const USED: u64 = 0x10_2000;
const BUF: u64 = 0x10_3000;

/// Set up receiveq0 with one 64-byte device-writable buffer and start the device.
fn driver_with_one_buffer(q: &mut Qtest) {
    q.cfg_write(BDF, 0x20, 4, BAR4 as u32);
    q.cfg_write(BDF, 0x24, 4, (BAR4 >> 32) as u32);
    q.cfg_write(BDF, 0x04, 2, 0x6);
    let ok = |q: &mut Qtest, cmd: String| assert_eq!(q.cmd(&cmd), "OK", "{cmd}");
    ok(q, format!("writeb {:#x} 0x3", BAR4 + 0x14));
    // VERSION_1 only: no MULTIPORT.
    ok(q, format!("writel {:#x} 0x1", BAR4 + 0x08));
    ok(q, format!("writel {:#x} 0x1", BAR4 + 0x0c));
    ok(q, format!("writel {:#x} 0x0", BAR4 + 0x08));
    ok(q, format!("writel {:#x} 0x0", BAR4 + 0x0c));
    ok(q, format!("writeb {:#x} 0xb", BAR4 + 0x14));
    ok(q, format!("writew {:#x} 0x0", BAR4 + 0x16));
    ok(q, format!("writew {:#x} 0x8", BAR4 + 0x18));
    for (off, addr) in [(0x20, DESC), (0x28, AVAIL), (0x30, USED)] {
        ok(q, format!("writel {:#x} {addr:#x}", BAR4 + off));
        ok(q, format!("writel {:#x} 0x0", BAR4 + off + 4));
    }
    // Descriptor 0: 64 device-writable bytes at BUF.
    ok(q, format!("writeq {DESC:#x} {BUF:#x}"));
    ok(q, format!("writel {:#x} 0x40", DESC + 8));
    ok(q, format!("writew {:#x} 0x2", DESC + 12));
    ok(q, format!("writew {:#x} 0x0", AVAIL + 4));
    ok(q, format!("writew {:#x} 0x1", AVAIL + 2));
    ok(q, format!("writew {:#x} 0x1", BAR4 + 0x1c));
    ok(q, format!("writeb {:#x} 0xf", BAR4 + 0x14));
}

#[test]
fn the_guest_reads_what_the_console_chardev_sends() {
    if !require_kvm() {
        return;
    }
    let scratch = TempDir::new("vcon-in");
    let sock = scratch.join("console.sock");
    let args: Vec<String> = [
        "-machine".to_string(),
        "q35".into(),
        "-nodefaults".into(),
        "-chardev".into(),
        format!("socket,id=c0,path={},server=on,wait=off", sock.display()),
        "-device".into(),
        "virtio-serial-pci,addr=05.0".into(),
        "-device".into(),
        "virtconsole,chardev=c0".into(),
    ]
    .into();
    let mut q = Qtest::start(&machina(), &args);
    driver_with_one_buffer(&mut q);
    let mut client = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
    client.write_all(b"hello\n").expect("send");
    // The chardev thread and the device thread deliver it; wait (a hang guard) for the
    // used ring to advance.
    let deadline = Instant::now() + Duration::from_secs(30);
    while q.value(&format!("readw {:#x}", USED + 2)) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        q.value(&format!("readw {:#x}", USED + 2)),
        1,
        "one buffer used"
    );
    assert_eq!(
        q.value(&format!("readl {:#x}", USED + 8)),
        6,
        "its used length"
    );
    assert_eq!(q.cmd(&format!("read {BUF:#x} 6")), "OK 0x68656c6c6f0a");
    drop(q);
}
