//! virtio-rng (type 4): every device-writable buffer is filled from an entropy source
//! (/dev/urandom, or the `filename` of an rng-random object).

use super::device::{DeviceError, QueueContext, VirtioDevice};
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

pub const DEVICE_TYPE: u16 = 4;
const QUEUE_SIZE: u16 = 8;
/// Bytes handed out per request at most, so one huge buffer cannot stall the worker.
const MAX_CHUNK: usize = 64 * 1024;

pub struct Rng {
    source: Box<dyn Read + Send>,
    /// A read of the source failed and was reported (once: it fails at every request).
    failed: bool,
}

impl Rng {
    pub fn new(source: Box<dyn Read + Send>) -> Self {
        Self {
            source,
            failed: false,
        }
    }

    /// Open `path` (the rng-random `filename`, default /dev/urandom).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Ok(Self::new(Box::new(File::open(path)?)))
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn config_len(&self) -> usize {
        0
    }

    fn read_config(&self, _offset: usize, data: &mut [u8]) {
        data.fill(0);
    }

    fn process_queue(&mut self, idx: usize, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        let ctx_name = ctx.name;
        let used = ctx.drain_queue(idx, |mem, chain| {
            let written = match chain.writer(mem) {
                Ok(mut w) => {
                    let want = w.available_bytes().min(MAX_CHUNK);
                    let mut buf = vec![0u8; want];
                    match self.source.read(&mut buf) {
                        Ok(n) => w.write_all(&buf[..n]).map(|_| n).unwrap_or(0),
                        Err(e) => {
                            if !std::mem::replace(&mut self.failed, true) {
                                log::error!(
                                    "{ctx_name}: reading the entropy source failed: {e} (the \
                                     guest gets empty buffers; further failures are not \
                                     reported)"
                                );
                            }
                            0
                        }
                    }
                }
                // A buffer outside guest memory gets nothing.
                Err(_) => 0,
            };
            crate::trace_event!(
                virtio_rng_pushed,
                "rng {}: {written} bytes pushed",
                ctx_name
            );
            Ok(written as u32)
        })?;
        if used == Some(true) {
            ctx.notify(idx);
        }
        Ok(())
    }
}
