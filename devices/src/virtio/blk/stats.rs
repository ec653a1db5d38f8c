//! Per-drive request counters (QMP's `query-blockstats`).

use std::sync::atomic::{AtomicU64, Ordering};

use super::{S_IOERR, S_OK};

/// Per-drive request counters, shared with the VMM and kept across device resets. Updated
/// as each request completes (on the I/O engine's threads).
#[derive(Debug, Default)]
pub struct BlockStats {
    pub rd_bytes: AtomicU64,
    pub wr_bytes: AtomicU64,
    pub rd_operations: AtomicU64,
    pub wr_operations: AtomicU64,
    pub flush_operations: AtomicU64,
    pub unmap_operations: AtomicU64,
    pub failed_rd_operations: AtomicU64,
    pub failed_wr_operations: AtomicU64,
    pub failed_flush_operations: AtomicU64,
    pub failed_unmap_operations: AtomicU64,
    /// Requests refused before any I/O (out of range, unaligned, read-only).
    pub invalid_rd_operations: AtomicU64,
    pub invalid_wr_operations: AtomicU64,
    /// One past the highest byte written.
    pub wr_highest_offset: AtomicU64,
    /// Time spent in completed requests, in nanoseconds.
    pub rd_total_time_ns: AtomicU64,
    pub wr_total_time_ns: AtomicU64,
    pub flush_total_time_ns: AtomicU64,
}

impl BlockStats {
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Count a read that moved `moved` bytes (or failed) and return its virtio status.
    pub(super) fn read_done(&self, ok: bool, moved: usize, elapsed_ns: u64) -> u8 {
        if ok {
            Self::add(&self.rd_operations, 1);
            Self::add(&self.rd_bytes, moved as u64);
            Self::add(&self.rd_total_time_ns, elapsed_ns);
            S_OK
        } else {
            Self::add(&self.failed_rd_operations, 1);
            S_IOERR
        }
    }

    /// Count `n` reads that moved `bytes` in `ns` altogether.
    pub(super) fn reads_done(&self, n: u64, bytes: u64, ns: u64) {
        Self::add(&self.rd_operations, n);
        Self::add(&self.rd_bytes, bytes);
        Self::add(&self.rd_total_time_ns, ns);
    }

    /// Count `n` writes of `bytes` in `ns` altogether, the highest ending at byte `end`.
    pub(super) fn writes_done(&self, n: u64, bytes: u64, ns: u64, end: u64) {
        Self::add(&self.wr_operations, n);
        Self::add(&self.wr_bytes, bytes);
        Self::add(&self.wr_total_time_ns, ns);
        self.wr_highest_offset.fetch_max(end, Ordering::Relaxed);
    }

    /// Count a write of `len` bytes at byte `offset` (or its failure) and return its status.
    pub(super) fn write_done(&self, ok: bool, offset: u64, len: usize, elapsed_ns: u64) -> u8 {
        if ok {
            Self::add(&self.wr_operations, 1);
            Self::add(&self.wr_bytes, len as u64);
            Self::add(&self.wr_total_time_ns, elapsed_ns);
            self.wr_highest_offset
                .fetch_max(offset + len as u64, Ordering::Relaxed);
            S_OK
        } else {
            Self::add(&self.failed_wr_operations, 1);
            S_IOERR
        }
    }

    /// Count a flush (or its failure) and return its status.
    pub(super) fn flush_done(&self, ok: bool, elapsed_ns: u64) -> u8 {
        if ok {
            Self::add(&self.flush_operations, 1);
            Self::add(&self.flush_total_time_ns, elapsed_ns);
            S_OK
        } else {
            Self::add(&self.failed_flush_operations, 1);
            S_IOERR
        }
    }

    /// Count a discard or write-zeroes request as QEMU does (unmap operations, or writes for
    /// write-zeroes) and return `status`.
    pub(super) fn discard_done(&self, write_zeroes: bool, status: u8) -> u8 {
        let counter = match (write_zeroes, status == S_OK) {
            (false, true) => &self.unmap_operations,
            (false, false) => &self.failed_unmap_operations,
            (true, true) => &self.wr_operations,
            (true, false) => &self.failed_wr_operations,
        };
        Self::add(counter, 1);
        status
    }
}
