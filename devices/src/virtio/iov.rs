//! Descriptor chains as iovecs over guest RAM, for vectored I/O straight into guest memory.
//! Every range is checked against the guest's memory regions (the guest is untrusted) and
//! split where regions meet.

use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// The guest-memory byte ranges of a request's data: the device-readable (`writable` false)
/// or device-writable descriptors of `chain`, past the first `skip` bytes, `take` bytes long.
pub(crate) fn data_ranges(
    chain: &DescriptorChain<&GuestMemoryMmap>,
    writable: bool,
    mut skip: usize,
    mut take: usize,
) -> Vec<(GuestAddress, usize)> {
    let mut out = Vec::new();
    for d in chain.clone() {
        if take == 0 {
            break;
        }
        if d.is_write_only() != writable {
            continue;
        }
        let mut len = d.len() as usize;
        let mut addr = d.addr().0;
        if skip >= len {
            skip -= len;
            continue;
        }
        addr += skip as u64;
        len -= skip;
        skip = 0;
        let n = len.min(take);
        out.push((GuestAddress(addr), n));
        take -= n;
    }
    out
}

/// iovecs over guest RAM for `ranges`; None if any byte lies outside guest memory (a range
/// that crosses regions is split where they meet).
pub(crate) fn guest_iovecs(
    mem: &GuestMemoryMmap,
    ranges: &[(GuestAddress, usize)],
) -> Option<Vec<libc::iovec>> {
    let mut iovs = Vec::with_capacity(ranges.len());
    for &(addr, len) in ranges {
        let mut covered = 0;
        for slice in mem.get_slices(addr, len) {
            let slice = slice.ok()?;
            iovs.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
            covered += slice.len();
        }
        if covered != len {
            return None;
        }
    }
    Some(iovs)
}

/// iovecs over every device-readable (`writable` false) or device-writable buffer of `chain`.
pub(crate) fn chain_iovecs(
    mem: &GuestMemoryMmap,
    chain: &DescriptorChain<&GuestMemoryMmap>,
    writable: bool,
) -> Option<Vec<libc::iovec>> {
    guest_iovecs(mem, &data_ranges(chain, writable, 0, usize::MAX))
}
