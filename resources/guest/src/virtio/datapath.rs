//! The `virtio-datapath` test: the first virtio-blk on bus 0, driven through
//! its modern interface with MSI-X on (vector 0 for the queue and config,
//! aimed at this CPU's APIC; the guest keeps interrupts off and polls), then:
//! a write and read-back; the memory BAR moved 1 MiB up while the driver is
//! live (memory decode off meanwhile) and a second write and read-back
//! through the moved doorbell; a request while vector 0 is masked (its
//! pending bit must be set) and the unmask (the bit must clear: the device
//! delivered it). What it sees is printed on one line for the host.

use super::*;

const COM_MSIX_CONFIG: u64 = 0x10;
const COM_QUEUE_MSIX_VECTOR: u64 = 0x1a;
const MSI_ADDRESS: u32 = 0xfee0_0000;
const MSI_VECTOR: u32 = 0x41;
const MOVE_BY: u64 = 0x10_0000;

struct Msix {
    cap: u16,
    table: u64,
    pba: u64,
}

/// The MSI-X capability and where its table and PBA are now.
fn msix(dev: &Device) -> Option<Msix> {
    let cfg = &Cf8;
    let cap =
        pci::capabilities(cfg, dev.bdf).find(|&off| cfg.read32(dev.bdf, off) as u8 == CAP_MSIX)?;
    let at = |reg: u16| {
        let v = cfg.read32(dev.bdf, cap + reg);
        let bar = dev.bars.get((v & 7) as usize).copied().flatten()?;
        Some(bar.addr + u64::from(v & !7))
    };
    Some(Msix {
        cap,
        table: at(4)?,
        pba: at(8)?,
    })
}

fn set_msix_enable(dev: &Device, cap: u16, on: bool) {
    let cfg = &Cf8;
    let head = cfg.read32(dev.bdf, cap);
    let head = if on {
        head | 1 << 31
    } else {
        head & !(1 << 31)
    };
    cfg.write32(dev.bdf, cap, head);
}

fn mask_vector0(m: &Msix, masked: bool) {
    phys::mmio_write(m.table + 12, u32::from(masked));
}

fn pba0(m: &Msix) -> u32 {
    phys::mmio_read::<u32>(m.pba).unwrap_or(u32::MAX) & 1
}

/// One 4 KiB pattern write and read-back at `sector`.
fn write_read(q: &mut Queue, seed: u64, sector: u64) -> Result<bool, Reason> {
    for i in 0..BLK_BLOCK {
        dma_write(BLK_BUF + i, blk_pattern(seed, sector, i));
    }
    let w = blk_request(
        q,
        BLK_T_OUT,
        sector,
        Some(Buf::out(BLK_BUF, BLK_BLOCK)),
        "write-timeout",
    )?;
    if !w.ok() {
        return Err("write-failed");
    }
    dma_fill(BLK_BUF, BLK_BLOCK, 0);
    let r = blk_request(
        q,
        BLK_T_IN,
        sector,
        Some(Buf::into(BLK_BUF, BLK_BLOCK)),
        "read-timeout",
    )?;
    if !r.ok() {
        return Err("read-failed");
    }
    Ok((0..BLK_BLOCK).all(|i| dma_read::<u8>(BLK_BUF + i) == blk_pattern(seed, sector, i)))
}

/// Moves 64-bit memory BAR `index` of `dev` by MOVE_BY with memory decode
/// off meanwhile, as an OS rebalancing resources does; returns (from, to).
fn move_bar(dev: &mut Device, index: usize) -> Option<(u64, u64)> {
    let cfg = &Cf8;
    let bdf = dev.bdf;
    let bar = dev.bars.get(index).copied().flatten()?;
    if bar.kind != BarKind::Mem64 {
        return None;
    }
    let to = bar.addr + MOVE_BY;
    let reg = pci::REG_BAR0 + 4 * index as u16;
    let command = cfg.read32(bdf, pci::REG_COMMAND) & 0xffff;
    cfg.write32(bdf, pci::REG_COMMAND, command & !pci::COMMAND_MEM);
    let low_flags = cfg.read32(bdf, reg) & 0xf;
    cfg.write32(bdf, reg, to as u32 | low_flags);
    cfg.write32(bdf, reg + 4, (to >> 32) as u32);
    cfg.write32(bdf, pci::REG_COMMAND, command);
    let lo = cfg.read32(bdf, reg) & !0xf;
    let hi = cfg.read32(bdf, reg + 4);
    let now = u64::from(hi) << 32 | u64::from(lo);
    if let Some(b) = dev.bars[index].as_mut() {
        b.addr = now;
    }
    Some((bar.addr, now))
}

fn run_on(dev: &mut Device, seed: u64) -> Result<(), Reason> {
    let bdf = dev.bdf;
    enable(bdf);
    let t = dev.modern_transport()?;
    let Transport::Modern(m) = &t else {
        return Err("no-modern");
    };
    let mx = msix(dev).ok_or("no-msix")?;
    // Vector 0 to APIC 0, unmasked; MSI-X on.
    phys::mmio_write(mx.table, MSI_ADDRESS);
    phys::mmio_write(mx.table + 4, 0u32);
    phys::mmio_write(mx.table + 8, MSI_VECTOR);
    mask_vector0(&mx, false);
    set_msix_enable(dev, mx.cap, true);

    t.negotiate(BLK_F_FLUSH)?;
    m.w16(COM_MSIX_CONFIG, 0);
    let mut q = t.setup_queue(0, 0)?;
    // Interrupts wanted (the polled drivers suppress them).
    dma_write(q.avail, 0u16);
    m.w16(COM_QUEUE_SELECT, 0);
    m.w16(COM_QUEUE_MSIX_VECTOR, 0);
    let vector = m.r16(COM_QUEUE_MSIX_VECTOR);
    t.driver_ok();
    let first = write_read(&mut q, seed, 24)?;

    // The notify capability's BAR moves while the queue is live.
    let notify_bar = usize::from(dev.caps.notify.map_or(0, |(loc, _)| loc.bar));
    let notify_before = match &q.notify {
        Notify::Mmio(a) => *a,
        Notify::Io(_) => 0,
    };
    let (from, to) = move_bar(dev, notify_bar).ok_or("bar-not-movable")?;
    let moved = dev.modern_transport()?;
    let Transport::Modern(m2) = &moved else {
        return Err("no-modern");
    };
    q.notify = Notify::Mmio(notify_before - from + to);
    let second = write_read(&mut q, seed, 32)?;
    let status_after_move = m2.r8(COM_DEVICE_STATUS);

    // Masked vector: the completion's interrupt waits in the PBA; unmasking sends it.
    let mx = msix(dev).ok_or("no-msix")?;
    mask_vector0(&mx, true);
    let flush = blk_request(&mut q, BLK_T_FLUSH, 0, None, "flush-timeout")?;
    let pending_masked = pba0(&mx);
    mask_vector0(&mx, false);
    let pending_unmasked = pba0(&mx);

    println!(
        "virtio-datapath: {} vector={} write1={} moved from=0x{:x} to=0x{:x} status=0x{:x} write2={} flush={} pba-masked={} pba-unmasked={}",
        bdf,
        vector,
        if first { "ok" } else { "mismatch" },
        from,
        to,
        status_after_move,
        if second { "ok" } else { "mismatch" },
        flush,
        pending_masked,
        pending_unmasked
    );
    let reset = moved.reset();
    set_msix_enable(dev, mx.cap, false);
    reset
}

/// The `virtio-datapath` test.
pub fn run(cmdline: &Cmdline<'_>) {
    let seed = cmdline.get_u64(b"machina.blk-seed", 1);
    let mut blk = None;
    pci::walk(&Cf8, |f| {
        let is_blk = f.vendor() == VENDOR_VIRTIO
            && (f.device() == FIRST_TRANSITIONAL + 1 || f.device() == FIRST_MODERN + TYPE_BLK);
        if blk.is_none() && is_blk && f.bdf.bus == 0 {
            blk = Some(Device::probe(f));
        }
    });
    match blk.as_mut() {
        Some(dev) => match run_on(dev, seed) {
            Ok(()) => println!("virtio-datapath: result=ok"),
            Err(reason) => println!("virtio-datapath: result=error reason={}", reason),
        },
        None => println!("virtio-datapath: result=no-device"),
    }
}
