//! The `virtio-bench` test: the first virtio-blk on bus 0 through its modern
//! interface, driven at CPL 3 (native speed on PVM hosts; every doorbell
//! still reaches the VMM or its ioeventfd) for a fixed TSC budget per case:
//! 4 KiB and 64 KiB reads and writes at queue depth 1, 4 KiB reads at queue
//! depth 32. Completions are polled (no interrupts). Each case prints
//! `virtio-bench: op=.. size=.. qd=.. requests=N tsc=T`; the host turns TSC
//! ticks into seconds, so the same guest compares VMMs on one host.
//!
//! Data buffers overlap (every request uses the same 4 KiB page, 64 KiB as
//! 16 descriptors on it): the contents do not matter, the sectors move
//! through the whole disk image sequentially.

use super::*;
use crate::tsc::rdtsc;

/// Queue size for the benchmark (the chains of 32 requests in flight fit).
const BENCH_QUEUE: u16 = 128;
const DEPTH: u16 = 32;
const HDRS: usize = DATA;
const STATUS: usize = DATA + 1024;
const BUF: usize = DATA + 4096;
/// Descriptors per request slot in the ring: header, up to 16 data, status.
const SLOT_DESCS: u16 = 4;

fn setup(m: &Modern, size: u16) -> Result<Queue, Reason> {
    m.w16(COM_QUEUE_SELECT, 0);
    let max = m.r16(COM_QUEUE_SIZE);
    if max < size {
        return Err("queue-too-small");
    }
    let off = u64::from(m.r16(COM_QUEUE_NOTIFY_OFF)) * u64::from(m.notify_mult);
    let q = Queue::new(0, 0, size, Notify::Mmio(m.notify + off))?;
    m.w16(COM_QUEUE_SIZE, size);
    m.w64(COM_QUEUE_DESC, dma_addr(q.desc));
    m.w64(COM_QUEUE_DRIVER, dma_addr(q.avail));
    m.w64(COM_QUEUE_DEVICE, dma_addr(q.used));
    m.w16(COM_QUEUE_ENABLE, 1);
    Ok(q)
}

/// Writes request `slot`'s chain (header, `size` bytes of data, status) at
/// descriptor `first`; returns the head.
fn request(q: &mut Queue, first: u16, slot: usize, kind: u32, size: usize) -> Result<u16, Reason> {
    let hdr = HDRS + 16 * slot;
    dma_write(hdr, kind);
    dma_write(hdr + 4, 0u32);
    let mut bufs = [Buf::out(hdr, 16); 18];
    let pieces = size.div_ceil(4096).clamp(1, 16);
    for (k, b) in bufs.iter_mut().skip(1).take(pieces).enumerate() {
        let len = (size - k * 4096).min(4096);
        *b = if kind == BLK_T_IN {
            Buf::into(BUF, len)
        } else {
            Buf::out(BUF, len)
        };
    }
    bufs[pieces + 1] = Buf::into(STATUS + slot, 1);
    q.chain(first, &bufs[..pieces + 2])
}

fn set_sector(slot: usize, sector: u64) {
    dma_write(HDRS + 16 * slot + 8, sector);
}

/// One case: `depth` requests kept in flight for `ticks` TSC ticks.
fn case(
    q: &mut Queue,
    kind: u32,
    size: usize,
    depth: u16,
    ticks: u64,
    sectors: u64,
) -> Result<(u64, u64), Reason> {
    let step = (size / 512) as u64;
    let span = sectors / step * step;
    if span == 0 {
        return Err("disk-too-small");
    }
    let mut sector = 0u64;
    let mut next = || {
        let s = sector;
        sector = (sector + step) % span;
        s
    };
    // Request i's chain starts at descriptor stride * i (18 descriptors for 64 KiB).
    let stride = if size > 4096 { 18 } else { SLOT_DESCS };
    if u32::from(stride) * u32::from(depth) > u32::from(q.size) {
        return Err("queue-too-small");
    }
    let mut heads = [0u16; DEPTH as usize];
    for i in 0..usize::from(depth) {
        heads[i] = request(q, stride * i as u16, i, kind, size)?;
        set_sector(i, next());
    }
    let start = rdtsc();
    for &h in heads.iter().take(usize::from(depth)) {
        q.publish(h);
    }
    q.kick();
    let mut done = 0u64;
    let mut idle = Deadline::after_ms(REQUEST_TIMEOUT_MS);
    loop {
        let mut any = false;
        while let Some((id, _)) = q.try_used() {
            any = true;
            done += 1;
            let slot = heads
                .iter()
                .position(|&h| u32::from(h) == id)
                .ok_or("bad-used-id")?;
            if dma_read::<u8>(STATUS + slot) != 0 {
                return Err("request-failed");
            }
            if rdtsc().wrapping_sub(start) < ticks {
                set_sector(slot, next());
                q.publish(heads[slot]);
            }
        }
        let elapsed = rdtsc().wrapping_sub(start);
        if any {
            if elapsed >= ticks {
                // Wait for what is still in flight, then stop.
                let in_flight = q.next_avail.wrapping_sub(q.last_used);
                if in_flight == 0 {
                    return Ok((done, elapsed));
                }
            } else {
                q.kick();
            }
            idle = Deadline::after_ms(REQUEST_TIMEOUT_MS);
        } else if idle.expired() {
            return Err("request-timeout");
        }
    }
}

fn run_on(dev: &Device, ms: u64) -> Result<(), Reason> {
    enable(dev.bdf);
    let t = dev.modern_transport()?;
    let Transport::Modern(m) = &t else {
        return Err("no-modern");
    };
    // FLUSH as Linux negotiates it: a write cache, writes not synced one by one.
    t.negotiate(BLK_F_FLUSH)?;
    let mut q = setup(m, BENCH_QUEUE)?;
    t.driver_ok();
    let sectors = t.cfg64(0);
    let ticks = ms * 3_000_000;
    for (kind, size, depth) in [
        (BLK_T_IN, 4096, 1),
        (BLK_T_OUT, 4096, 1),
        (BLK_T_IN, 65536, 1),
        (BLK_T_OUT, 65536, 1),
        (BLK_T_IN, 4096, DEPTH),
    ] {
        let (n, elapsed) = case(&mut q, kind, size, depth, ticks, sectors)?;
        println!(
            "virtio-bench: op={} size={} qd={} requests={} tsc={}",
            if kind == BLK_T_IN { "read" } else { "write" },
            size,
            depth,
            n,
            elapsed
        );
    }
    t.reset()
}

/// The `virtio-bench` test; `machina.bench-ms` is the budget per case,
/// `machina.bench-dev=net` benchmarks virtio-net instead.
pub fn run(cmdline: &Cmdline<'_>) {
    let ms = cmdline.get_u64(b"machina.bench-ms", 500);
    // `machina.bench-dev=net`: the virtio-net benchmark instead (bench_net.rs).
    if cmdline.get(b"machina.bench-dev") == Some(b"net") {
        return super::bench_net::run(ms);
    }
    let mut blk = None;
    pci::walk(&Cf8, |f| {
        let is_blk = f.vendor() == VENDOR_VIRTIO
            && (f.device() == FIRST_TRANSITIONAL + 1 || f.device() == FIRST_MODERN + TYPE_BLK);
        if blk.is_none() && is_blk && f.bdf.bus == 0 {
            blk = Some(Device::probe(f));
        }
    });
    match blk {
        Some(dev) => match run_on(&dev, ms) {
            Ok(()) => println!("virtio-bench: result=ok"),
            Err(reason) => println!("virtio-bench: result=error reason={}", reason),
        },
        None => println!("virtio-bench: result=no-device"),
    }
}
