//! block_resize (issue 14: QEMU's virtio-blk resize/config/msix paths): the image file on
//! disk takes the new size, the guest reads the new capacity from the virtio-blk config
//! space and gets a config-change interrupt (ISR bits 0 and 1, as QEMU's
//! virtio_notify_config sets them); read-only and unknown drives are refused with QEMU's
//! texts and leave the image alone.

mod common;

use common::{machina, require_kvm};
use machina_tests::qmp_client::QmpClient;
use machina_tests::qtest_client::Qtest;
use machina_tests::TempDir;
use serde_json::{json, Value};
use std::time::Duration;

const BDF: (u8, u8, u8) = (0, 4, 0);
/// Where the test puts the transitional device's legacy I/O BAR.
const IO: u64 = 0xc000;

/// The capacity (sectors) in the legacy config space (offset 20 with MSI-X off).
fn capacity(q: &mut Qtest) -> u64 {
    let lo = q.value(&format!("inl {:#x}", IO + 20));
    let hi = q.value(&format!("inl {:#x}", IO + 24));
    hi << 32 | lo
}

fn isr(q: &mut Qtest) -> u64 {
    q.value(&format!("inb {:#x}", IO + 19))
}

#[test]
fn block_resize_changes_the_image_and_the_guest_capacity() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("block-resize");
    let img = dir.join("disk.img");
    let ro = dir.join("ro.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    std::fs::File::create(&ro)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let qmp_path = dir.join("qmp.sock");
    let args: Vec<String> = [
        "-M".to_string(),
        "pc".into(),
        "-nodefaults".into(),
        "-drive".into(),
        format!("if=none,id=drive0,file={},format=raw", img.display()),
        "-drive".into(),
        format!(
            "if=none,id=ro0,file={},format=raw,readonly=on",
            ro.display()
        ),
        "-device".into(),
        "virtio-blk-pci,drive=drive0,addr=04.0".into(),
        "-device".into(),
        "virtio-blk-pci,drive=ro0,addr=05.0".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp_path.display()),
    ]
    .to_vec();
    let mut q = Qtest::start(&machina(), &args);
    q.cfg_write(BDF, 0x10, 4, IO as u32);
    q.cfg_write(BDF, 0x04, 2, 1);
    // ACKNOWLEDGE | DRIVER | DRIVER_OK.
    q.cmd(&format!("outb {:#x} 0x7", IO + 18));
    assert_eq!(capacity(&mut q), 2048, "1 MiB image");
    assert_eq!(isr(&mut q), 0);

    let mut qmp = QmpClient::connect(&qmp_path, Duration::from_secs(20));
    qmp.ok("qmp_capabilities", Value::Null);

    // Grow, by device name.
    let r = qmp.ok("block_resize", json!({"device": "drive0", "size": 4 << 20}));
    assert_eq!(r, json!({}));
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 4 << 20);
    assert_eq!(isr(&mut q), 3, "a config change sets ISR bits 0 and 1");
    assert_eq!(isr(&mut q), 0, "reading the ISR clears it");
    assert_eq!(capacity(&mut q), 8192);

    // Shrink, by node name; a size that is not whole sectors leaves the capacity rounded down.
    qmp.ok(
        "block_resize",
        json!({"node-name": "drive0", "size": (512 << 10) + 100}),
    );
    assert_eq!(std::fs::metadata(&img).unwrap().len(), (512 << 10) + 100);
    assert_eq!(isr(&mut q), 3);
    assert_eq!(capacity(&mut q), 1024);

    // Refusals, QEMU's texts; nothing changes.
    assert_eq!(
        qmp.error("block_resize", json!({"device": "ro0", "size": 4 << 20})),
        "Image is read-only"
    );
    assert_eq!(std::fs::metadata(&ro).unwrap().len(), 1 << 20);
    assert_eq!(
        qmp.error("block_resize", json!({"device": "nope", "size": 512})),
        "Cannot find device='nope' nor node-name=''"
    );
    assert_eq!(
        qmp.error("block_resize", json!({"device": "drive0", "size": -1})),
        "Parameter 'size' expects a >0 size"
    );
    assert_eq!(
        qmp.error("block_resize", json!({"size": 512})),
        "Cannot find device='' nor node-name=''"
    );
    assert_eq!(std::fs::metadata(&img).unwrap().len(), (512 << 10) + 100);
    assert_eq!(isr(&mut q), 0, "a refused resize raises no interrupt");
    assert_eq!(capacity(&mut q), 1024);
    q.finish();
}
