//! Descriptor chains as iovecs over guest RAM, for vectored I/O straight into guest memory.
//! Every range is checked against the guest's memory regions (the guest is untrusted) and
//! split where regions meet.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

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

/// Whether `chain` (of a queue whose descriptor table is at `table`, `size` entries) was cut
/// short only because its buffers add up to more than 2^32 bytes: virtio-queue's iterator
/// ends such a chain there (VIRTIO 1.2 2.7.5.2 forbids it), which otherwise looks like a
/// chain whose `next` is bad. The descriptor after the last one yielded is read again to
/// tell: it exists, and its length is what overflows.
pub(crate) fn longer_than_4g(
    mem: &GuestMemoryMmap,
    table: GuestAddress,
    size: u16,
    chain: &DescriptorChain<&GuestMemoryMmap>,
) -> bool {
    const DESC: u64 = std::mem::size_of::<Descriptor>() as u64;
    let read = |base: GuestAddress, i: u16| {
        base.0
            .checked_add(u64::from(i) * DESC)
            .and_then(|a| mem.read_obj::<Descriptor>(GuestAddress(a)).ok())
    };
    let Some(head) = read(table, chain.head_index()) else {
        return false;
    };
    // An indirect chain's descriptors are those of the table the head points to.
    let (base, entries) = if head.refers_to_indirect_table() {
        (head.addr(), head.len() as u64 / DESC)
    } else {
        (table, u64::from(size))
    };
    let mut total = 0u64;
    let mut count = 0u64;
    let mut last = None;
    for d in chain.clone() {
        total += u64::from(d.len());
        count += 1;
        last = Some(d);
    }
    match last {
        // A chain as long as its table has looped (or is a ring of `next`s): not this case.
        Some(d) if d.has_next() && u64::from(d.next()) < entries && count < entries => {
            read(base, d.next()).is_some_and(|n| total + u64::from(n.len()) > u64::from(u32::MAX))
        }
        _ => false,
    }
}
