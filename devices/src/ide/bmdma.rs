//! Bus-master DMA of one IDE channel (Programming Interface for Bus Master IDE Controller,
//! rev 1.0; QEMU's hw/ide/pci.c): command and status registers, the PRD table pointer, and
//! the walk of the guest's PRD table. A table is read at most one page long (QEMU's fail
//! safe), so a guest cannot make the walk unbounded.

/// Guest memory as a bus master sees it: reads of anything that is not RAM give zeros,
/// writes there are dropped (QEMU's unassigned memory).
pub trait DmaMemory: Send + Sync {
    fn read(&self, addr: u64, buf: &mut [u8]);
    fn write(&self, addr: u64, data: &[u8]);
}

impl DmaMemory for vm_memory::GuestMemoryMmap {
    fn read(&self, addr: u64, buf: &mut [u8]) {
        use vm_memory::{Bytes, GuestAddress};
        if self.read_slice(buf, GuestAddress(addr)).is_ok() {
            return;
        }
        // Partly outside RAM: page by page.
        let mut done = 0usize;
        while done < buf.len() {
            let a = addr.wrapping_add(done as u64);
            let n = ((4096 - (a & 4095)) as usize).min(buf.len() - done);
            let piece = &mut buf[done..done + n];
            if self.read_slice(piece, GuestAddress(a)).is_err() {
                piece.fill(0);
            }
            done += n;
        }
    }

    fn write(&self, addr: u64, data: &[u8]) {
        use vm_memory::{Bytes, GuestAddress};
        if self.write_slice(data, GuestAddress(addr)).is_ok() {
            return;
        }
        let mut done = 0usize;
        while done < data.len() {
            let a = addr.wrapping_add(done as u64);
            let n = ((4096 - (a & 4095)) as usize).min(data.len() - done);
            let _ = self.write_slice(&data[done..done + n], GuestAddress(a));
            done += n;
        }
    }
}

pub const CMD_START: u8 = 0x01;
/// Direction: set when the device writes guest memory (a read command).
pub const CMD_WRITE: u8 = 0x08;
pub const STATUS_ACTIVE: u8 = 0x01;
pub const STATUS_ERROR: u8 = 0x02;
pub const STATUS_INT: u8 = 0x04;
/// Drive 0/1 DMA capable: software-settable bits.
const STATUS_CAPABLE: u8 = 0x60;
/// The PRD table is read at most this far (QEMU's BMDMA_PAGE_SIZE fail safe).
const TABLE_LIMIT: u32 = 4096;
const PRD_EOT: u32 = 0x8000_0000;

/// A contiguous piece of guest memory a transfer goes to or comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: u64,
    pub len: u64,
}

#[derive(Debug, Default, Clone)]
pub struct Bmdma {
    pub cmd: u8,
    pub status: u8,
    /// PRD table address (dword aligned).
    pub addr: u32,
    cur_addr: u32,
    cur_prd_addr: u32,
    cur_prd_len: u32,
    cur_prd_last: bool,
}

impl Bmdma {
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// A DMA command starts: its walk begins at the next entry (bmdma_start_dma).
    pub fn begin(&mut self) {
        self.cur_prd_last = false;
        self.cur_prd_addr = 0;
        self.cur_prd_len = 0;
    }

    /// The start bit went from 0 to 1: the walk restarts at the table.
    pub fn rewind(&mut self) {
        self.cur_addr = self.addr;
    }

    pub fn status_write(&mut self, val: u8) {
        self.status = (val & STATUS_CAPABLE)
            | (self.status & STATUS_ACTIVE)
            | (self.status & !val & (STATUS_ERROR | STATUS_INT));
    }

    /// Write `width` bytes of the table address at byte `offset` (0..=3).
    pub fn addr_write(&mut self, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            let shift = (offset as usize + i) * 8;
            if shift >= 32 {
                break;
            }
            self.addr &= !(0xff << shift);
            self.addr |= u32::from(b) << shift;
        }
        self.addr &= !3;
    }

    pub fn addr_read(&self, offset: u64, data: &mut [u8]) {
        let bytes = self.addr.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    /// Load the next PRD when the current one is used up; false at the end of the table.
    fn next_prd(&mut self, mem: &dyn DmaMemory) -> bool {
        if self.cur_prd_len != 0 {
            return true;
        }
        if self.cur_prd_last || self.cur_addr.wrapping_sub(self.addr) >= TABLE_LIMIT {
            return false;
        }
        let mut prd = [0u8; 8];
        mem.read(u64::from(self.cur_addr), &mut prd);
        self.cur_addr = self.cur_addr.wrapping_add(8);
        let addr = u32::from_le_bytes([prd[0], prd[1], prd[2], prd[3]]);
        let size = u32::from_le_bytes([prd[4], prd[5], prd[6], prd[7]]);
        let len = size & 0xfffe;
        self.cur_prd_len = if len == 0 { 0x10000 } else { len };
        self.cur_prd_addr = addr;
        self.cur_prd_last = size & PRD_EOT != 0;
        true
    }

    /// bmdma_prepare_buf: the segments for `limit` bytes, and how many bytes the PRDs
    /// describe in all (every remaining PRD is consumed, up to the end of the table).
    pub fn prepare(&mut self, mem: &dyn DmaMemory, limit: u64) -> (Vec<Segment>, u64) {
        let mut segs = Vec::new();
        let mut taken = 0u64;
        let mut described = 0u64;
        while self.next_prd(mem) {
            let l = u64::from(self.cur_prd_len);
            let n = (limit - taken).min(l);
            if n > 0 {
                segs.push(Segment {
                    addr: u64::from(self.cur_prd_addr),
                    len: n,
                });
                taken += n;
            }
            self.cur_prd_addr = self.cur_prd_addr.wrapping_add(self.cur_prd_len);
            self.cur_prd_len = 0;
            described += l;
        }
        (segs, described)
    }

    /// bmdma_rw_buf: move `data` to guest memory (`to_memory`) or fill it from there along
    /// the PRDs; false when the table ended before all of it moved.
    pub fn transfer(&mut self, mem: &dyn DmaMemory, data: &mut [u8], to_memory: bool) -> bool {
        let mut done = 0usize;
        while done < data.len() {
            if !self.next_prd(mem) {
                return false;
            }
            let n = (data.len() - done).min(self.cur_prd_len as usize);
            let addr = u64::from(self.cur_prd_addr);
            if to_memory {
                mem.write(addr, &data[done..done + n]);
            } else {
                mem.read(addr, &mut data[done..done + n]);
            }
            self.cur_prd_addr = self.cur_prd_addr.wrapping_add(n as u32);
            self.cur_prd_len -= n as u32;
            done += n;
        }
        true
    }
}

/// Scatter `data` into (`to_memory`) or gather it from the segments, starting `skip` bytes
/// into them.
pub fn copy_segments(
    mem: &dyn DmaMemory,
    segs: &[Segment],
    mut skip: u64,
    data: &mut [u8],
    to_memory: bool,
) {
    let mut done = 0usize;
    for s in segs {
        if done >= data.len() {
            break;
        }
        if skip >= s.len {
            skip -= s.len;
            continue;
        }
        let n = ((s.len - skip) as usize).min(data.len() - done);
        let addr = s.addr.wrapping_add(skip);
        if to_memory {
            mem.write(addr, &data[done..done + n]);
        } else {
            mem.read(addr, &mut data[done..done + n]);
        }
        skip = 0;
        done += n;
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Guest memory for tests: `size` bytes at 0, the rest unassigned.
    pub struct TestMemory(pub Mutex<Vec<u8>>);

    impl DmaMemory for TestMemory {
        fn read(&self, addr: u64, buf: &mut [u8]) {
            let m = self.0.lock().unwrap();
            for (i, b) in buf.iter_mut().enumerate() {
                *b = m.get(addr as usize + i).copied().unwrap_or(0);
            }
        }
        fn write(&self, addr: u64, data: &[u8]) {
            let mut m = self.0.lock().unwrap();
            for (i, b) in data.iter().enumerate() {
                if let Some(x) = m.get_mut(addr as usize + i) {
                    *x = *b;
                }
            }
        }
    }

    #[test]
    fn prd_walk_is_bounded() {
        // A table of zeros: every entry is 64 KiB without EOT; the walk stops after a page.
        let mem = TestMemory(Mutex::new(vec![0; 8192]));
        let mut bm = Bmdma::default();
        bm.rewind();
        bm.begin();
        let (segs, described) = bm.prepare(&mem, 512 * 512);
        assert_eq!(segs.iter().map(|s| s.len).sum::<u64>(), 512 * 512);
        assert_eq!(described, 512 * 0x10000);
        // A table at the top of the address space wraps without panicking.
        bm.addr_write(0, &0xffff_fffcu32.to_le_bytes());
        bm.rewind();
        bm.begin();
        let mut data = [0u8; 16];
        assert!(bm.transfer(&mem, &mut data, true));
    }

    #[test]
    fn status_bits() {
        let mut bm = Bmdma {
            status: STATUS_ACTIVE | STATUS_INT | STATUS_ERROR,
            ..Default::default()
        };
        bm.status_write(STATUS_INT | 0x20);
        assert_eq!(bm.status, STATUS_ACTIVE | STATUS_ERROR | 0x20);
    }
}
