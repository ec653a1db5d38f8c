//! The transmit path: each chain of a pair's transmit queue is one write (or writev) from guest
//! memory to the backend (the header stripped for a socket peer).

use super::iovec::{chain_iovecs_into, skip_front, vectored};
use super::*;

/// Send one frame; a full backend drops it, as a congested link would. Another failure is
/// an error naming the device, reported once until a send works again (`failing`).
pub(super) fn send_reported(fd: RawFd, iovs: &[libc::iovec], name: &str, failing: &mut bool) {
    match vectored(fd, true, iovs) {
        Ok(_) => *failing = false,
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.raw_os_error() == Some(libc::ENOBUFS) => {}
        Err(e) => {
            if !std::mem::replace(failing, true) {
                log::error!(
                    "{name}: cannot send a frame to its network backend: {e}; frames are dropped"
                );
            }
        }
    }
}

impl Net {
    pub(super) fn transmit(
        &mut self,
        pair: usize,
        ctx: &mut QueueContext,
    ) -> Result<(), DeviceError> {
        let Some(p) = self.pairs.get_mut(pair) else {
            return Ok(());
        };
        let tap = p.tap.as_raw_fd();
        // A socket peer takes the bare frame: the guest's header stays behind.
        let strip = if self.socket { self.hdr_len } else { 0 };
        let (name, tx_failing) = (&self.name, &mut p.tx_failing);
        let iovs = &mut self.tx_scratch.0;
        let txq = 2 * pair + 1;
        let used = ctx.drain_queue(txq, |mem, chain| {
            iovs.clear();
            // Buffers outside guest RAM or a frame too large for a tap: dropped. (The
            // chain passed drain_queue's checks already.)
            if chain_iovecs_into(mem, &chain, false, iovs) == Ok(true) {
                let n: usize = iovs.iter().map(|v| v.iov_len).sum();
                if n > strip && n <= MAX_FRAME && skip_front(iovs, strip) {
                    send_reported(tap, iovs, name, tx_failing);
                }
            }
            Ok(0)
        })?;
        iovs.clear();
        if used == Some(true) {
            ctx.notify(txq);
        }
        Ok(())
    }
}
