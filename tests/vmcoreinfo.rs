//! `-device vmcoreinfo` (libvirt's `<vmcoreinfo/>`): the fw_cfg file `etc/vmcoreinfo` a
//! guest kernel reads and writes over fw_cfg DMA, driven here through qtest as a guest
//! would; QEMU's refusals for the device.

mod common;

use common::{boot, machina};
use machina_tests::qtest_client::Qtest;

const FW_CFG: u16 = 0x510;
const DMA: u16 = 0x514;
const FILE_DIR: u16 = 0x19;
const CTL_ERROR: u32 = 1;
const CTL_READ: u32 = 2;
const CTL_SELECT: u32 = 8;
const CTL_WRITE: u32 = 0x10;
/// Guest RAM the test uses for the DMA descriptor and data.
const DESC: u64 = 0x10000;
const BUF: u64 = 0x11000;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_mem(q: &mut Qtest, addr: u64, len: usize) -> Vec<u8> {
    let line = q.cmd(&format!("read 0x{addr:x} 0x{len:x}"));
    let data = line.trim().strip_prefix("OK 0x").expect("read answer");
    machina_tests::qtest_client::hex_bytes(data)
}

/// One DMA request: control (with the selector in the top half), length, address; returns
/// the control word the device leaves (0, or the error bit).
fn dma(q: &mut Qtest, control: u32, len: u32, addr: u64) -> u32 {
    let mut desc = control.to_be_bytes().to_vec();
    desc.extend(len.to_be_bytes());
    desc.extend(addr.to_be_bytes());
    q.cmd(&format!("write 0x{DESC:x} 0x10 0x{}", hex(&desc)));
    // The descriptor address, big-endian, high half then low half.
    q.cmd(&format!(
        "outl 0x{DMA:x} 0x{:x}",
        ((DESC >> 32) as u32).swap_bytes()
    ));
    q.cmd(&format!(
        "outl 0x{:x} 0x{:x}",
        DMA + 4,
        (DESC as u32).swap_bytes()
    ));
    let status = read_mem(q, DESC, 4);
    u32::from_be_bytes([status[0], status[1], status[2], status[3]])
}

/// The key and size of fw_cfg file `name`, from the directory read byte by byte.
fn file(q: &mut Qtest, name: &str) -> Option<(u16, u32)> {
    q.cmd(&format!("outw 0x{FW_CFG:x} 0x{FILE_DIR:x}"));
    let mut byte = || q.value(&format!("inb 0x{:x}", FW_CFG + 1)) as u8;
    let count = u32::from_be_bytes([byte(), byte(), byte(), byte()]);
    let mut found = None;
    for _ in 0..count {
        let entry: Vec<u8> = (0..64).map(|_| byte()).collect();
        let size = u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]);
        let key = u16::from_be_bytes([entry[4], entry[5]]);
        let end = entry[8..].iter().position(|b| *b == 0).unwrap_or(56);
        if &entry[8..8 + end] == name.as_bytes() {
            found = Some((key, size));
        }
    }
    found
}

#[test]
fn the_guest_writes_and_reads_back_etc_vmcoreinfo() {
    let args: Vec<String> = ["-machine", "q35", "-nodefaults", "-device", "vmcoreinfo"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut q = Qtest::start(&machina(), &args);
    let (key, size) = file(&mut q, "etc/vmcoreinfo").expect("etc/vmcoreinfo is listed");
    assert_eq!(size, 16, "FWCfgVMCoreInfo");
    let select = CTL_SELECT | (u32::from(key) << 16);
    // At reset: host_format ELF, nothing from the guest.
    assert_eq!(dma(&mut q, select | CTL_READ, 16, BUF), 0);
    let mut reset = vec![1u8, 0];
    reset.extend([0u8; 14]);
    assert_eq!(read_mem(&mut q, BUF, 16), reset);
    // The guest's note: guest_format ELF, 1 MiB at 0xffffff00.
    let mut info = 1u16.to_le_bytes().to_vec();
    info.extend(1u16.to_le_bytes());
    info.extend((1u32 << 20).to_le_bytes());
    info.extend(0xffff_ff00u64.to_le_bytes());
    q.cmd(&format!("write 0x{BUF:x} 0x10 0x{}", hex(&info)));
    assert_eq!(dma(&mut q, select | CTL_WRITE, 16, BUF), 0);
    q.cmd(&format!("write 0x{BUF:x} 0x10 0x{}", hex(&[0; 16])));
    assert_eq!(dma(&mut q, select | CTL_READ, 16, BUF), 0);
    assert_eq!(read_mem(&mut q, BUF, 16), info);
    // A write past the file's end, or to a read-only item, is refused.
    assert_eq!(dma(&mut q, select | CTL_WRITE, 17, BUF), CTL_ERROR);
    let (e820, _) = file(&mut q, "etc/e820").expect("etc/e820");
    assert_eq!(
        dma(
            &mut q,
            CTL_SELECT | (u32::from(e820) << 16) | CTL_WRITE,
            4,
            BUF
        ),
        CTL_ERROR
    );
    // Without the device there is no such file.
    let plain: Vec<String> = ["-machine", "q35", "-nodefaults"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut q = Qtest::start(&machina(), &plain);
    assert_eq!(file(&mut q, "etc/vmcoreinfo"), None);
}

#[test]
fn qemus_refusals() {
    for (args, text) in [
        (
            &[
                "-M",
                "q35",
                "-device",
                "vmcoreinfo",
                "-device",
                "vmcoreinfo",
            ][..],
            "machina: -device vmcoreinfo: at most one vmcoreinfo device is permitted",
        ),
        (
            &["-M", "none", "-device", "vmcoreinfo"][..],
            "machina: -device vmcoreinfo: vmcoreinfo device requires fw_cfg with DMA",
        ),
        (
            &["-M", "q35", "-device", "vmcoreinfo,bus=pcie.0"][..],
            "machina: -device vmcoreinfo,bus=pcie.0: Device 'vmcoreinfo' can't go on PCIE bus",
        ),
        (
            &["-M", "pc", "-device", "vmcoreinfo,foo=1"][..],
            "machina: -device vmcoreinfo,foo=1: Property 'vmcoreinfo.foo' not found",
        ),
    ] {
        let mut all = args.to_vec();
        all.extend(["-S", "-nodefaults"]);
        let r = boot(&all);
        assert_eq!(r.status, Some(1), "{args:?}");
        assert_eq!(r.stderr.trim_end(), text, "{args:?}");
    }
}
