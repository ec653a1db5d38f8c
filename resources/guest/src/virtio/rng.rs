//! virtio-rng driver.

use super::*;

pub(crate) const RNG_BYTES: usize = 64;

pub(crate) fn run_rng(t: &Transport, bdf: Bdf, path: Path) -> Result<(), Reason> {
    t.negotiate(0)?;
    let mut q = t.setup_queue(0, 0)?;
    t.driver_ok();
    dma_fill(DATA, RNG_BYTES, 0);
    let mut got = 0;
    // The device may return fewer bytes than asked; ask again (boundedly).
    for _ in 0..RNG_BYTES {
        if got == RNG_BYTES {
            break;
        }
        let len = q.request(&[Buf::into(DATA + got, RNG_BYTES - got)], "timeout")?;
        got += (len as usize).min(RNG_BYTES - got);
    }
    let nonzero = (0..got).any(|i| dma_read::<u8>(DATA + i) != 0);
    println!(
        "virtio-rng: {} path={} bytes={} nonzero={}",
        bdf,
        path,
        got,
        if nonzero { "yes" } else { "no" }
    );
    if got == RNG_BYTES {
        Ok(())
    } else {
        Err("short-read")
    }
}
