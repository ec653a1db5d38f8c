//! The net part of the `virtio-bench` test (`machina.bench-dev=net`): the first
//! virtio-net on bus 0 through its modern interface, driven at CPL 3 and polled
//! (no interrupts), for a fixed TSC budget per case: frames of 64 and 1514 bytes
//! sent (tx), then received (rx) from a host that floods the tap.
//!
//! Every tx chain is one descriptor over the same header and frame; every rx
//! chain one descriptor over the same 1536-byte buffer (the contents do not
//! matter). The ring is kept full; after each pass over the used ring the
//! driver republishes what came back and notifies once.
//!
//! Each case prints `virtio-bench: net op=.. size=.. frames=N tsc=T`. Before a
//! tx case the guest prints `virtio-bench: net tx-start size=S`; before an rx
//! case `virtio-bench: net rx-start size=S` (the host starts flooding frames of
//! that size), and it starts the clock at the first frame of that size; after
//! it `virtio-bench: net rx-done` (the host stops).

use super::*;
use crate::tsc::rdtsc;

const HDR: usize = 12;
const TX_BUF: usize = DATA;
const RX_BUF: usize = DATA + 2048;
const RX_BUF_LEN: usize = 1536;
/// Host address the frames go to (nobody has it: the tap's kernel side drops them).
const PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

fn setup(m: &Modern, index: u16) -> Result<Queue, Reason> {
    m.w16(COM_QUEUE_SELECT, index);
    let size = m.r16(COM_QUEUE_SIZE).min(256);
    if size == 0 {
        return Err("no-queue");
    }
    let off = u64::from(m.r16(COM_QUEUE_NOTIFY_OFF)) * u64::from(m.notify_mult);
    let q = Queue::new(
        index,
        usize::from(index) * QUEUE_SLOT,
        size,
        Notify::Mmio(m.notify + off),
    )?;
    m.w16(COM_QUEUE_SIZE, size);
    m.w64(COM_QUEUE_DESC, dma_addr(q.desc));
    m.w64(COM_QUEUE_DRIVER, dma_addr(q.avail));
    m.w64(COM_QUEUE_DEVICE, dma_addr(q.used));
    m.w16(COM_QUEUE_ENABLE, 1);
    Ok(q)
}

/// Sends `size`-byte frames for `ticks`; returns (frames, elapsed ticks).
fn tx(q: &mut Queue, mac: [u8; 6], size: usize, ticks: u64) -> Result<(u64, u64), Reason> {
    dma_fill(TX_BUF, HDR + size, 0);
    let f = TX_BUF + HDR;
    dma_copy_in(f, &PEER);
    dma_copy_in(f + 6, &mac);
    dma_copy_in(f + 12, &NET_ETHERTYPE.to_be_bytes());
    for d in 0..q.size {
        q.chain(d, &[Buf::out(TX_BUF, HDR + size)])?;
    }
    let start = rdtsc();
    for d in 0..q.size {
        q.publish(d);
    }
    q.kick();
    let mut done = 0u64;
    let mut idle = Deadline::after_ms(REQUEST_TIMEOUT_MS);
    loop {
        let mut any = false;
        let going = rdtsc().wrapping_sub(start) < ticks;
        while let Some((id, _)) = q.try_used() {
            any = true;
            done += 1;
            if going {
                q.publish(id as u16);
            }
        }
        if any {
            if !going {
                if q.next_avail == q.last_used {
                    return Ok((done, rdtsc().wrapping_sub(start)));
                }
            } else {
                q.kick();
            }
            idle = Deadline::after_ms(REQUEST_TIMEOUT_MS);
        } else if idle.expired() {
            return Err("tx-timeout");
        }
    }
}

/// Receives for `ticks` from the first frame on; returns (frames, elapsed ticks).
fn rx(q: &mut Queue, size: usize, ticks: u64) -> Result<(u64, u64), Reason> {
    println!("virtio-bench: net rx-start size={}", size);
    let mut wait = Deadline::after_ms(REQUEST_TIMEOUT_MS);
    let mut start = None;
    let mut done = 0u64;
    loop {
        let mut any = false;
        while let Some((id, len)) = q.try_used() {
            any = true;
            // Frames of the previous case still queued in the tap neither count nor
            // start the clock: it starts at the first frame of this size.
            if len as usize == HDR + size {
                let begun = *start.get_or_insert_with(rdtsc);
                if rdtsc().wrapping_sub(begun) < ticks {
                    done += 1;
                }
            }
            q.publish(id as u16);
        }
        if any {
            // Also before returning: the device may be waiting for these buffers.
            q.kick();
        }
        if let Some(begun) = start {
            let elapsed = rdtsc().wrapping_sub(begun);
            if elapsed >= ticks {
                println!("virtio-bench: net rx-done");
                return Ok((done, elapsed));
            }
        }
        if any {
            wait = Deadline::after_ms(REQUEST_TIMEOUT_MS);
        } else if wait.expired() {
            println!("virtio-bench: net rx-done");
            return Err("rx-timeout");
        }
    }
}

fn run_on(dev: &Device, ms: u64) -> Result<(), Reason> {
    enable(dev.bdf);
    let t = dev.modern_transport()?;
    let Transport::Modern(m) = &t else {
        return Err("no-modern");
    };
    let (_, features) = t.negotiate(NET_F_MAC)?;
    let mut rxq = setup(m, 0)?;
    let mut txq = setup(m, 1)?;
    for d in 0..rxq.size {
        rxq.chain(d, &[Buf::into(RX_BUF, RX_BUF_LEN)])?;
    }
    t.driver_ok();
    let mut mac = NET_DEFAULT_MAC;
    if features & NET_F_MAC != 0 {
        for (i, b) in mac.iter_mut().enumerate() {
            *b = t.cfg8(i as u16);
        }
    }
    let ticks = ms * 3_000_000;
    for size in [64usize, 1514] {
        println!("virtio-bench: net tx-start size={}", size);
        let (n, elapsed) = tx(&mut txq, mac, size, ticks)?;
        println!(
            "virtio-bench: net op=tx size={} frames={} tsc={}",
            size, n, elapsed
        );
    }
    // Every receive buffer available from here on.
    for d in 0..rxq.size {
        rxq.publish(d);
    }
    rxq.kick();
    for size in [64usize, 1514] {
        let (n, elapsed) = rx(&mut rxq, size, ticks)?;
        println!(
            "virtio-bench: net op=rx size={} frames={} tsc={}",
            size, n, elapsed
        );
    }
    t.reset()
}

/// The net benchmark; `ms` is the budget per case.
pub(crate) fn run(ms: u64) {
    let mut net = None;
    pci::walk(&Cf8, |f| {
        let is_net = f.vendor() == VENDOR_VIRTIO
            && (f.device() == FIRST_TRANSITIONAL || f.device() == FIRST_MODERN + TYPE_NET);
        if net.is_none() && is_net && f.bdf.bus == 0 {
            net = Some(Device::probe(f));
        }
    });
    match net {
        Some(dev) => match run_on(&dev, ms) {
            Ok(()) => println!("virtio-bench: result=ok"),
            Err(reason) => println!("virtio-bench: result=error reason={}", reason),
        },
        None => println!("virtio-bench: result=no-device"),
    }
}
