//! DMA area: two queue slots and a data area in the image.

use super::*;

pub(crate) const QUEUE_SLOT: usize = 32 * 1024;
pub(crate) const DATA_AREA: usize = 16 * 1024;
pub(crate) const DATA: usize = 2 * QUEUE_SLOT;
pub(crate) const DMA_SIZE: usize = DATA + DATA_AREA;

#[repr(C, align(4096))]
pub(crate) struct DmaArea(pub(crate) UnsafeCell<[u8; DMA_SIZE]>);

// SAFETY: the guest is single-threaded, and the area is only ever accessed
// through the volatile raw-pointer helpers below, never through references,
// so sharing the static cannot create aliasing references.
unsafe impl Sync for DmaArea {}

pub(crate) static DMA: DmaArea = DmaArea(UnsafeCell::new([0; DMA_SIZE]));

/// Physical (= virtual) address of offset `off` of the DMA area.
pub(crate) fn dma_addr(off: usize) -> u64 {
    DMA.0.get() as u64 + off as u64
}

pub(crate) fn dma_ptr<T>(off: usize) -> *mut T {
    assert!(
        off + core::mem::size_of::<T>() <= DMA_SIZE && off & (core::mem::align_of::<T>() - 1) == 0
    );
    // SAFETY: `off` plus the access size lies inside the static (asserted),
    // so the resulting pointer stays within the same allocation.
    unsafe { DMA.0.get().cast::<u8>().add(off).cast::<T>() }
}

pub(crate) fn dma_read<T: Copy>(off: usize) -> T {
    // SAFETY: dma_ptr checked bounds and alignment; the area is plain
    // memory in the image that only volatile accesses touch (the device may
    // write it concurrently, hence volatile).
    unsafe { core::ptr::read_volatile(dma_ptr::<T>(off)) }
}

pub(crate) fn dma_write<T: Copy>(off: usize, value: T) {
    // SAFETY: as for dma_read.
    unsafe { core::ptr::write_volatile(dma_ptr::<T>(off), value) }
}

pub(crate) fn dma_fill(off: usize, len: usize, byte: u8) {
    for i in off..off + len {
        dma_write(i, byte);
    }
}

pub(crate) fn dma_copy_in(off: usize, bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        dma_write(off + i, b);
    }
}
