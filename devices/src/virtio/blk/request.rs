//! A request's descriptor chain, walked once: every buffer is bounds-checked against guest
//! RAM and kept as a host pointer, so that the header, the data iovecs and the status byte
//! come from one pass without further lookups. The chain checks are QEMU's virtqueue_pop
//! ones (`device::check_chain`), made during the same walk.

use crate::virtio::device::DeviceError;
use virtio_queue::DescriptorChain;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

/// virtio_blk_outhdr: type, ioprio, sector.
pub(super) const REQ_HDR_LEN: usize = 16;

/// A vector that keeps its first `N` elements inline: requests are built and queued per
/// I/O, and most have a handful of buffers, so this saves an allocation per request.
pub(super) struct SmallVec<T: Copy, const N: usize> {
    len: usize,
    inline: [T; N],
    spill: Vec<T>,
}

impl<T: Copy, const N: usize> SmallVec<T, N> {
    /// An empty vector; `fill` only initialises the unused inline slots.
    pub fn new(fill: T) -> Self {
        Self {
            len: 0,
            inline: [fill; N],
            spill: Vec::new(),
        }
    }

    pub fn push(&mut self, v: T) {
        if self.spill.is_empty() && self.len < N {
            self.inline[self.len] = v;
        } else {
            if self.spill.is_empty() {
                self.spill.extend_from_slice(&self.inline[..self.len]);
            }
            self.spill.push(v);
        }
        self.len += 1;
    }

    pub fn as_slice(&self) -> &[T] {
        if self.spill.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spill
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        if self.spill.is_empty() {
            &mut self.inline[..self.len]
        } else {
            &mut self.spill
        }
    }
}

/// The data buffers of a request as iovecs over guest RAM.
pub(super) type Iovecs = SmallVec<libc::iovec, 4>;

pub(super) fn no_iovecs() -> Iovecs {
    Iovecs::new(libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    })
}

/// One piece of a buffer, inside one guest memory region.
#[derive(Clone, Copy)]
struct Seg {
    base: *mut u8,
    len: usize,
    writable: bool,
}

/// One guest memory region: guest addresses `start..start + len` at host `host`.
struct Region {
    start: u64,
    len: u64,
    host: *mut u8,
}

impl Region {
    /// The region holding guest address `addr`, if any.
    fn of(mem: &GuestMemoryMmap, addr: GuestAddress) -> Option<Self> {
        let r = mem.find_region(addr)?;
        Some(Self {
            start: r.start_addr().0,
            len: r.len(),
            host: r.get_host_address(MemoryRegionAddress(0)).ok()?,
        })
    }

    /// The host address of `len` bytes at guest address `addr` if they all lie in this
    /// region.
    fn offset(&self, addr: u64, len: usize) -> Option<*mut u8> {
        let off = addr.checked_sub(self.start)?;
        let end = off.checked_add(len as u64)?;
        if end > self.len {
            return None;
        }
        // SAFETY: off + len <= the region's length, so the pointer stays inside its
        // mapping (which lives as long as the guest memory).
        Some(unsafe { self.host.add(off as usize) })
    }
}

/// A walked chain: its buffers in order (device-readable first), their total sizes.
pub(super) struct Chain {
    segs: SmallVec<Seg, 8>,
    pub readable: usize,
    pub writable: usize,
}

impl Chain {
    /// Walk `chain` of queue `queue`: QEMU's chain checks, and each buffer bounds-checked
    /// against guest RAM (a buffer outside it is a device error, as virtio-queue's
    /// Reader/Writer make it).
    pub fn walk(
        queue: usize,
        mem: &GuestMemoryMmap,
        chain: &DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<Self, DeviceError> {
        let bad = |reason: String| DeviceError::BadChain { queue, reason };
        let mut out = Self {
            segs: SmallVec::new(Seg {
                base: std::ptr::null_mut(),
                len: 0,
                writable: false,
            }),
            readable: 0,
            writable: 0,
        };
        let mut last_has_next = None;
        let mut seen_write = false;
        let mut region: Option<Region> = None;
        for d in chain.clone() {
            let writable = d.is_write_only();
            seen_write |= writable;
            if !writable && seen_write {
                return Err(bad(
                    "device-readable descriptor after a device-writable one".into(),
                ));
            }
            last_has_next = Some(d.has_next());
            let len = d.len() as usize;
            if writable {
                out.writable += len;
            } else {
                out.readable += len;
            }
            // A chain's buffers are nearly always in the region of the one before: no
            // lookup for those.
            let fits = |r: &Region| r.offset(d.addr().0, len);
            if region.as_ref().and_then(fits).is_none() {
                region = Region::of(mem, d.addr());
            }
            if let Some(at) = region.as_ref().and_then(fits) {
                if len > 0 {
                    out.segs.push(Seg {
                        base: at,
                        len,
                        writable,
                    });
                }
                continue;
            }
            // Across regions (or outside guest RAM): piece by piece.
            let which = if writable { "writable" } else { "readable" };
            let mut covered = 0;
            for slice in mem.get_slices(d.addr(), len) {
                let slice = slice.map_err(|e| {
                    bad(format!(
                        "{which} buffers: {}",
                        virtio_queue::Error::GuestMemoryError(e)
                    ))
                })?;
                covered += slice.len();
                out.segs.push(Seg {
                    base: slice.ptr_guard_mut().as_ptr(),
                    len: slice.len(),
                    writable,
                });
            }
            if covered != len {
                return Err(bad(format!("{which} buffers: not all in guest memory")));
            }
        }
        match last_has_next {
            Some(false) => Ok(out),
            Some(true) => Err(bad(
                "looped, or next past the table, or unreadable descriptor".into(),
            )),
            None => Err(bad(
                "head index past the table, or its descriptor unreadable".into(),
            )),
        }
    }

    /// The pieces of the readable (`writable` false) or writable buffers past their first
    /// `skip` bytes, `take` bytes at most.
    fn pieces(
        &self,
        writable: bool,
        mut skip: usize,
        mut take: usize,
    ) -> impl Iterator<Item = (*mut u8, usize)> + '_ {
        self.segs
            .as_slice()
            .iter()
            .filter(move |s| s.writable == writable)
            .filter_map(move |s| {
                if take == 0 {
                    return None;
                }
                if skip >= s.len {
                    skip -= s.len;
                    return None;
                }
                let n = (s.len - skip).min(take);
                // SAFETY: skip < s.len, so the pointer stays inside the piece.
                let p = unsafe { s.base.add(skip) };
                skip = 0;
                take -= n;
                Some((p, n))
            })
    }

    /// Copy readable bytes from offset `skip` into `out`; how many there were.
    pub fn read(&self, skip: usize, out: &mut [u8]) -> usize {
        let mut at = 0;
        for (p, n) in self.pieces(false, skip, out.len()) {
            for (i, b) in out[at..at + n].iter_mut().enumerate() {
                // SAFETY: p..p+n lies in guest RAM (checked by walk), mapped while the
                // device lives; volatile because the guest may change it concurrently.
                *b = unsafe { p.add(i).read_volatile() };
            }
            at += n;
        }
        at
    }

    /// Copy `data` into the writable buffers from their start; how many bytes fitted.
    pub fn write(&self, data: &[u8]) -> usize {
        let mut at = 0;
        for (p, n) in self.pieces(true, 0, data.len()) {
            for (i, b) in data[at..at + n].iter().enumerate() {
                // SAFETY: as in `read`; the guest made these buffers device-writable.
                unsafe { p.add(i).write_volatile(*b) };
            }
            at += n;
        }
        at
    }

    /// iovecs over `take` bytes of the readable or writable buffers after `skip`.
    pub fn iovecs(&self, writable: bool, skip: usize, take: usize) -> Iovecs {
        let mut iovs = no_iovecs();
        for (p, n) in self.pieces(writable, skip, take) {
            iovs.push(libc::iovec {
                iov_base: p.cast(),
                iov_len: n,
            });
        }
        iovs
    }

    /// The status byte: the last writable byte. None without writable bytes.
    pub fn status(&self) -> Option<StatusByte> {
        let last = self
            .segs
            .as_slice()
            .iter()
            .rev()
            .find(|s| s.writable && s.len > 0)?;
        // SAFETY: len > 0, so base + len - 1 is the piece's last byte.
        Some(StatusByte(unsafe { last.base.add(last.len - 1) }))
    }
}

/// Where a request's status byte goes, in guest RAM.
#[derive(Clone, Copy)]
pub(super) struct StatusByte(*mut u8);

// SAFETY: the pointer is into guest RAM, which stays mapped while the device (and so the
// requests it tracks) lives; it is only written through `set`.
unsafe impl Send for StatusByte {}

impl StatusByte {
    /// A status byte at `b`, for unit tests of the engine.
    #[cfg(test)]
    pub fn test_only(b: &mut u8) -> Self {
        Self(b)
    }

    pub fn set(self, status: u8) {
        // SAFETY: a device-writable byte of guest RAM, checked by Chain::walk, mapped while
        // the device lives (it waits for its requests before it goes).
        unsafe { self.0.write_volatile(status) }
    }
}
