//! The `virtio` test: polled virtio-pci drivers (blk, rng, net, console)
//! through the legacy (virtio 0.9, I/O BAR0) and the modern (virtio 1.0,
//! vendor capabilities) interface of every virtio-pci function.
//!
//! The guest takes no interrupts: requests are published on the available
//! ring, the device is notified, and the used ring is polled with a bounded
//! TSC deadline. Queues and buffers live in one static, page-aligned area
//! of the image's .bss (identity mapped, so its virtual address is the
//! physical address the device sees). Only one device is driven at a time.

use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::{fence, Ordering};

use crate::cmdline::Cmdline;
use crate::pci::{self, Bar, BarKind, Bdf, Cf8, ConfigSpace, Function};
use crate::phys;
use crate::port::{inb, inl, inw, outb, outl, outw};
use crate::tsc::Deadline;

const VENDOR_VIRTIO: u16 = 0x1af4;
const FIRST_TRANSITIONAL: u16 = 0x1000;
const FIRST_MODERN: u16 = 0x1040;
const LAST_MODERN: u16 = 0x107f;
const MAX_DEVICES: usize = 64;

const TYPE_NET: u16 = 1;
const TYPE_BLK: u16 = 2;
const TYPE_CONSOLE: u16 = 3;
const TYPE_RNG: u16 = 4;

// Device status bits.
const STATUS_ACKNOWLEDGE: u8 = 1;
const STATUS_DRIVER: u8 = 2;
const STATUS_DRIVER_OK: u8 = 4;
const STATUS_FEATURES_OK: u8 = 8;

const F_VERSION_1: u64 = 1 << 32;
const BLK_F_RO: u64 = 1 << 5;
const BLK_F_FLUSH: u64 = 1 << 9;
const NET_F_MAC: u64 = 1 << 5;
const NET_F_GUEST_CSUM: u64 = 1 << 1;
const NET_F_GUEST_TSO4: u64 = 1 << 7;
const NET_F_MRG_RXBUF: u64 = 1 << 15;
const NET_F_CTRL_VQ: u64 = 1 << 17;
const NET_F_MQ: u64 = 1 << 22;
const CONSOLE_F_MULTIPORT: u64 = 1 << 1;

// PCI capability IDs and virtio capability types.
const CAP_VENDOR: u8 = 0x09;
const CAP_MSIX: u8 = 0x11;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_DEVICE: u8 = 4;
const CFG_PCI: u8 = 5;

// Legacy I/O BAR0 registers.
const LEG_HOST_FEATURES: u16 = 0x00;
const LEG_GUEST_FEATURES: u16 = 0x04;
const LEG_QUEUE_PFN: u16 = 0x08;
const LEG_QUEUE_SIZE: u16 = 0x0c;
const LEG_QUEUE_SELECT: u16 = 0x0e;
const LEG_QUEUE_NOTIFY: u16 = 0x10;
const LEG_STATUS: u16 = 0x12;
/// Device config offset with MSI-X disabled (0x18 when it is enabled).
const LEG_CONFIG: u16 = 0x14;
const LEG_CONFIG_MSIX: u16 = 0x18;
/// Bytes of I/O space the legacy registers (up to the config) need.
const LEG_MIN_IO: u64 = 0x20;
/// Default `machina.max-io-port`: every port. Under QEMU with KVM on PVM hosts a CPL-3
/// `in`/`out` to ports >= 0x8000 faults (the TSS QEMU's firmware leaves denies them), so
/// runs there pass 0x7fff (see README); machina's PVH entry state allows every port.
const DEFAULT_MAX_IO_PORT: u64 = 0xffff;

// Modern common configuration structure.
const COM_DEVICE_FEATURE_SELECT: u64 = 0x00;
const COM_DEVICE_FEATURE: u64 = 0x04;
const COM_DRIVER_FEATURE_SELECT: u64 = 0x08;
const COM_DRIVER_FEATURE: u64 = 0x0c;
const COM_DEVICE_STATUS: u64 = 0x14;
const COM_CONFIG_GENERATION: u64 = 0x15;
const COM_QUEUE_SELECT: u64 = 0x16;
const COM_QUEUE_SIZE: u64 = 0x18;
const COM_QUEUE_ENABLE: u64 = 0x1c;
const COM_QUEUE_NOTIFY_OFF: u64 = 0x1e;
const COM_QUEUE_DESC: u64 = 0x20;
const COM_QUEUE_DRIVER: u64 = 0x28;
const COM_QUEUE_DEVICE: u64 = 0x30;
const COM_LEN: u32 = 0x38;

// Split virtqueue.
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Queue size the modern path asks for (the device's maximum if smaller).
const MODERN_QUEUE_SIZE: u16 = 16;

/// Bounded waits (see tsc.rs for what a millisecond means).
const REQUEST_TIMEOUT_MS: u64 = 3000;
const RX_TIMEOUT_MS: u64 = 5000;
const RESET_TIMEOUT_MS: u64 = 1000;

pub mod bench;
mod bench_net;
mod blk;
mod console;
pub mod datapath;
mod discovery;
mod dma;
pub(crate) mod errors;
mod net;
mod queue;
mod rng;
mod transport;

use blk::*;
use console::*;
use discovery::*;
use dma::*;
use errors::*;
use net::*;
use queue::*;
use rng::*;
use transport::*;

/// Options of the virtio test.
struct Options {
    blk_seed: u64,
    net_test: NetTest,
    /// Highest I/O port the legacy path may touch (see README: under PVM,
    /// CPL-3 port I/O at 0x8000 and above kills the guest).
    max_io_port: u64,
    /// `machina.virtio-io-base`: where to move an I/O BAR0 above
    /// `max_io_port` (bus 0 only), 0x100 apart per device.
    io_relocate: Option<u64>,
}

/// Runs the driver for `dev`'s type over `t`; `None` for types without one.
fn run_driver(
    dev: &Device,
    t: &Transport,
    path: Path,
    opts: &Options,
) -> Option<Result<(), Reason>> {
    let bdf = dev.bdf;
    let result = match dev.kind {
        TYPE_BLK => run_blk(t, bdf, path, opts.blk_seed),
        TYPE_RNG => run_rng(t, bdf, path),
        TYPE_NET => run_net(t, bdf, path, opts.net_test),
        TYPE_CONSOLE => run_console(t, bdf, path),
        _ => return None,
    };
    // Leave the device quiescent whatever happened.
    let reset = t.reset();
    Some(result.and(reset))
}

fn print_result(word: &str, bdf: Bdf, result: Result<Option<()>, Reason>) {
    match result {
        Ok(Some(())) => println!("{}: {} result=ok", word, bdf),
        Ok(None) => println!("{}: {} result=skipped", word, bdf),
        Err(reason) => println!("{}: {} result=error reason={}", word, bdf, reason),
    }
}

/// Moves BAR0 of `dev` (on bus 0) to `port` with I/O decoding off meanwhile.
fn relocate_io_bar0(dev: &mut Device, port: u64) {
    let cfg = &Cf8;
    let bdf = dev.bdf;
    let command = cfg.read32(bdf, pci::REG_COMMAND) & 0xffff;
    cfg.write32(bdf, pci::REG_COMMAND, command & !pci::COMMAND_IO);
    cfg.write32(bdf, pci::REG_BAR0, port as u32 | 1);
    cfg.write32(bdf, pci::REG_COMMAND, command);
    if let Some(bar) = dev.bars[0].as_mut() {
        bar.addr = u64::from(cfg.read32(bdf, pci::REG_BAR0) & !3);
    }
}

fn run_device(dev: &Device, opts: &Options, relocated: &mut u64) {
    let mut dev = *dev;
    let dev = &mut dev;
    let bdf = dev.bdf;
    println!(
        "virtio: {} type={} legacy={} modern={}",
        bdf,
        dev.kind,
        if dev.legacy() { "yes" } else { "no" },
        if dev.caps.any { "yes" } else { "no" }
    );
    enable(bdf);

    // Legacy (virtio 0.9) path.
    if dev.io_bar0().is_none() {
        println!("virtio-legacy: {} result=no-io-bar", bdf);
    } else if !dev.legacy() {
        println!("virtio-legacy: {} result=not-transitional", bdf);
    } else if let Some(bar) = dev
        .io_bar0()
        .filter(|b| b.addr + LEG_MIN_IO - 1 > opts.max_io_port)
        .filter(|_| !(opts.io_relocate.is_some() && bdf.bus == 0))
    {
        println!(
            "virtio-legacy: {} result=io-port-above-limit port=0x{:x}",
            bdf, bar.addr
        );
    } else {
        if let (Some(bar), Some(base)) = (dev.io_bar0(), opts.io_relocate) {
            if bar.addr + LEG_MIN_IO - 1 > opts.max_io_port {
                let to = base + 0x100 * *relocated;
                *relocated += 1;
                relocate_io_bar0(dev, to);
                println!(
                    "virtio-legacy: {} relocated from=0x{:x} to=0x{:x}",
                    bdf,
                    bar.addr,
                    dev.io_bar0().map_or(0, |b| b.addr)
                );
            }
        }
        let result = dev
            .legacy_transport()
            .and_then(|t| run_driver(dev, &t, Path::Legacy, opts).transpose());
        print_result("virtio-legacy", bdf, result);
    }

    // Modern (virtio 1.0) path.
    if !dev.caps.any {
        println!("virtio-modern: {} result=no-caps", bdf);
    } else {
        let result = dev
            .modern_transport()
            .and_then(|t| run_driver(dev, &t, Path::Modern, opts).transpose());
        print_result("virtio-modern", bdf, result);
    }
}

/// Drives the virtio function `f` once through its modern interface (hot-plug: the
/// caller assigned its BARs): a virtio-blk writes and reads back a block, a virtio-rng
/// is read, a virtio-net sends a ping and waits for an answer (`machina.net-test=1`'s
/// exchange). Its device type (1 net, 2 blk, 4 rng) and the result; None when it is no
/// virtio device, or the result None when there is no driver for its type here.
pub fn drive_modern(f: &Function, blk_seed: u64) -> Option<(u16, Option<Result<(), Reason>>)> {
    let is_virtio =
        f.vendor() == VENDOR_VIRTIO && (FIRST_TRANSITIONAL..=LAST_MODERN).contains(&f.device());
    if !is_virtio {
        return None;
    }
    let dev = Device::probe(f);
    enable(dev.bdf);
    let opts = Options {
        blk_seed,
        net_test: NetTest::Basic,
        max_io_port: DEFAULT_MAX_IO_PORT,
        io_relocate: None,
    };
    let result = dev
        .modern_transport()
        .and_then(|t| run_driver(&dev, &t, Path::Modern, &opts).transpose())
        .transpose();
    Some((dev.kind, result))
}

/// The `virtio` test.
pub fn run(cmdline: &Cmdline<'_>) {
    let opts = Options {
        blk_seed: cmdline.get_u64(b"machina.blk-seed", 1),
        net_test: match cmdline.get(b"machina.net-test") {
            Some(b"1") => NetTest::Basic,
            Some(b"mrg") => NetTest::Merged,
            Some(b"mq") => NetTest::MultiQueue,
            _ => NetTest::Off,
        },
        max_io_port: cmdline.get_u64(b"machina.max-io-port", DEFAULT_MAX_IO_PORT),
        io_relocate: cmdline
            .get(b"machina.virtio-io-base")
            .map(|_| cmdline.get_u64(b"machina.virtio-io-base", 0) & 0xff00),
    };
    let mut found = [None::<Device>; MAX_DEVICES];
    let mut count = 0;
    pci::walk(&Cf8, |f| {
        let is_virtio =
            f.vendor() == VENDOR_VIRTIO && (FIRST_TRANSITIONAL..=LAST_MODERN).contains(&f.device());
        if is_virtio && count < MAX_DEVICES {
            found[count] = Some(Device::probe(f));
            count += 1;
        }
    });
    let mut relocated = 0;
    for dev in found.iter().flatten() {
        run_device(dev, &opts, &mut relocated);
    }
    println!("virtio: done devices={}", count);
}
