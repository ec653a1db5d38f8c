//! Split virtqueue, polled.

use super::*;

pub(crate) enum Notify {
    Io(u16),
    Mmio(u64),
}

pub(crate) struct Queue {
    pub(crate) index: u16,
    pub(crate) size: u16,
    pub(crate) desc: usize,
    pub(crate) avail: usize,
    pub(crate) used: usize,
    pub(crate) next_avail: u16,
    pub(crate) last_used: u16,
    pub(crate) notify: Notify,
}

/// One buffer of a descriptor chain.
#[derive(Clone, Copy)]
pub(crate) struct Buf {
    pub(crate) off: usize,
    pub(crate) len: u32,
    pub(crate) device_writes: bool,
}

impl Buf {
    pub(crate) fn out(off: usize, len: usize) -> Self {
        Self {
            off,
            len: len as u32,
            device_writes: false,
        }
    }

    pub(crate) fn into(off: usize, len: usize) -> Self {
        Self {
            off,
            len: len as u32,
            device_writes: true,
        }
    }
}

/// Offsets of the split-ring parts inside a queue slot, laid out as the
/// legacy interface requires (the used ring on the next 4096 boundary);
/// `None` if that does not fit in the slot.
pub(crate) fn ring_layout(slot: usize, size: u16) -> Option<(usize, usize, usize)> {
    let size = usize::from(size);
    let desc = slot;
    let avail = desc + 16 * size;
    let used = (avail + 6 + 2 * size).next_multiple_of(4096);
    (used + 6 + 8 * size <= slot + QUEUE_SLOT).then_some((desc, avail, used))
}

impl Queue {
    /// Zeroes the slot and returns the queue laid out in it.
    pub(crate) fn new(index: u16, slot: usize, size: u16, notify: Notify) -> Result<Self, Reason> {
        let (desc, avail, used) = ring_layout(slot, size).ok_or("queue-too-big")?;
        dma_fill(slot, QUEUE_SLOT, 0);
        dma_write(avail, AVAIL_F_NO_INTERRUPT);
        Ok(Self {
            index,
            size,
            desc,
            avail,
            used,
            next_avail: 0,
            last_used: 0,
            notify,
        })
    }

    /// Writes `bufs` as a chain at descriptors `first..` and returns `first`.
    pub(crate) fn chain(&mut self, first: u16, bufs: &[Buf]) -> Result<u16, Reason> {
        if usize::from(first) + bufs.len() > usize::from(self.size) {
            return Err("queue-too-small");
        }
        for (k, b) in bufs.iter().enumerate() {
            let d = first + k as u16;
            let at = self.desc + 16 * usize::from(d);
            let mut flags = if b.device_writes { DESC_F_WRITE } else { 0 };
            if k + 1 < bufs.len() {
                flags |= DESC_F_NEXT;
            }
            dma_write(at, dma_addr(b.off));
            dma_write(at + 8, b.len);
            dma_write(at + 12, flags);
            dma_write(at + 14, d + 1);
        }
        Ok(first)
    }

    /// Makes the chain at `head` available (the device is not notified).
    pub(crate) fn publish(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * usize::from(self.next_avail % self.size);
        dma_write(slot, head);
        fence(Ordering::SeqCst);
        self.next_avail = self.next_avail.wrapping_add(1);
        dma_write(self.avail + 2, self.next_avail);
        fence(Ordering::SeqCst);
    }

    pub(crate) fn kick(&self) {
        match self.notify {
            Notify::Io(port) => outw(port, self.index),
            Notify::Mmio(addr) => {
                phys::mmio_write(addr, self.index);
            }
        }
    }

    /// The next used element (head id, written length) if there is one.
    pub(crate) fn try_used(&mut self) -> Option<(u32, u32)> {
        let idx: u16 = dma_read(self.used + 2);
        if idx == self.last_used {
            return None;
        }
        fence(Ordering::SeqCst);
        let at = self.used + 4 + 8 * usize::from(self.last_used % self.size);
        self.last_used = self.last_used.wrapping_add(1);
        Some((dma_read(at), dma_read(at + 4)))
    }

    pub(crate) fn wait_used(&mut self, deadline: &mut Deadline) -> Option<(u32, u32)> {
        loop {
            if let Some(used) = self.try_used() {
                return Some(used);
            }
            if deadline.expired() {
                return None;
            }
        }
    }

    /// Publishes a chain, notifies, and waits for its completion.
    pub(crate) fn request(&mut self, bufs: &[Buf], timeout: Reason) -> Result<u32, Reason> {
        let head = self.chain(0, bufs)?;
        self.publish(head);
        self.kick();
        let (_, len) = self
            .wait_used(&mut Deadline::after_ms(REQUEST_TIMEOUT_MS))
            .ok_or(timeout)?;
        Ok(len)
    }
}
