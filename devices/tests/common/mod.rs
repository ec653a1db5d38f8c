//! Helpers shared by the virtio integration tests and the virtio-blk benchmark on top of
//! `devices::testing` (catalog plans, the synthetic guest driver, split virtqueues) and
//! `machina_tests` (the seeded generator, temp folders): scratch images, and guest memory
//! surrounded by host-side canaries.

// Each test or bench target uses a different subset.
#![allow(dead_code)]

pub use devices::testing::{virtio_plan as plan, *};
pub use machina_tests::rng::XorShift;
use machina_tests::TempDir;
use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use vm_memory::mmap::MmapRegion;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

// ---------------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------------

/// A scratch image in a folder of its own (unique per process and `tag`); both are removed
/// on drop.
pub struct TempImage {
    pub path: PathBuf,
    _dir: TempDir,
}

impl TempImage {
    pub fn new(tag: &str) -> Self {
        let dir = TempDir::new(&format!("virtio-{tag}"));
        Self {
            path: dir.join("disk.img"),
            _dir: dir,
        }
    }

    /// (Re)create the file with `len` bytes of `content` (repeated / truncated) and open it
    /// read-write, or read-only.
    pub fn create(&self, content: &[u8], len: u64, read_only: bool) -> File {
        {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&self.path)
                .expect("create image");
            f.set_len(len).expect("size image");
            if !content.is_empty() {
                use std::os::unix::fs::FileExt;
                let want = len.min(1 << 20) as usize;
                let mut chunk = Vec::with_capacity(want + content.len());
                while chunk.len() < want {
                    chunk.extend_from_slice(content);
                }
                let mut off = 0u64;
                while off < len {
                    let n = (len - off).min(chunk.len() as u64) as usize;
                    f.write_all_at(&chunk[..n], off).expect("fill image");
                    off += n as u64;
                }
            }
        }
        OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&self.path)
            .expect("open image")
    }

    pub fn len(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------------------
// Guest memory with canaries around it
// ---------------------------------------------------------------------------------------

pub const PAGE: usize = 4096;
/// Region A: guest [0, 1 MiB).
pub const A_SIZE: u64 = 1 << 20;
/// The hole between the two regions, in guest physical and host virtual space alike.
pub const HOLE: u64 = 0x1_0000;
/// Region B (optional): guest [1 MiB + 64 KiB, + 64 KiB).
pub const B_BASE: u64 = A_SIZE + HOLE;
pub const B_SIZE: u64 = 0x1_0000;
/// One past the highest guest address that can ever be mapped.
pub const MEM_END: u64 = B_BASE + B_SIZE;

/// One anonymous host mapping laid out as
/// `[canary page][region A][hole canary][region B or canary][canary page]`, so the host
/// bytes right before, between and after the guest regions are the ones an address
/// computation that escaped a region would hit. The canaries hold a fixed pattern that
/// [`GuardedMemory::check_host_canaries`] verifies.
///
/// The mapping is never unmapped: `GuestMemoryMmap` handles to it may be cloned into device
/// models whose lifetime the harness does not control, so it lives for the whole process
/// (one per fuzz target, 1.2 MiB each).
pub struct GuardedMemory {
    base: *mut u8,
    total: usize,
    two_regions: bool,
    /// The canary pattern for every host offset.
    pattern: Vec<u8>,
}

fn canary_byte(off: usize) -> u8 {
    (off.wrapping_mul(131) as u8) ^ 0xa5
}

impl GuardedMemory {
    const A_OFF: usize = PAGE;
    const B_OFF: usize = PAGE + (A_SIZE + HOLE) as usize;

    pub fn new() -> Self {
        let total = Self::B_OFF + B_SIZE as usize + PAGE;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected and the
        // result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap guest memory");
        Self {
            base: p.cast(),
            total,
            two_regions: false,
            pattern: (0..total).map(canary_byte).collect(),
        }
    }

    fn host(&mut self) -> &mut [u8] {
        // SAFETY: `base..base+total` is our private mapping, never unmapped. The harness
        // drives devices from this thread only, and the slice is used between device calls,
        // so no device access overlaps it; `&mut self` keeps harness accesses exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.base, self.total) }
    }

    /// Host ranges that are not guest memory right now.
    fn canary_ranges(&self) -> Vec<std::ops::Range<usize>> {
        let a_end = Self::A_OFF + A_SIZE as usize;
        let b_end = Self::B_OFF + B_SIZE as usize;
        if self.two_regions {
            vec![0..Self::A_OFF, a_end..Self::B_OFF, b_end..self.total]
        } else {
            vec![0..Self::A_OFF, a_end..self.total]
        }
    }

    /// A fresh guest memory over the mapping (region B only with `two_regions`): guest bytes
    /// zeroed, canaries rewritten.
    pub fn guest(&mut self, two_regions: bool) -> GuestMemoryMmap {
        self.two_regions = two_regions;
        self.host().fill(0);
        self.reset_host_canaries();
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        let mut regions = Vec::new();
        let mut add = |off: usize, size: u64, gpa: u64| {
            // SAFETY: `base + off .. + size` lies inside our mapping (the layout constants
            // keep it there), which is page aligned, never unmapped, and has the protection
            // and flags given here.
            let r = unsafe {
                MmapRegion::<()>::build_raw(self.base.add(off), size as usize, prot, flags)
            }
            .expect("region over guarded mapping");
            regions.push(GuestRegionMmap::new(r, GuestAddress(gpa)).expect("guest region"));
        };
        add(Self::A_OFF, A_SIZE, 0);
        if two_regions {
            add(Self::B_OFF, B_SIZE, B_BASE);
        }
        GuestMemoryMmap::from_regions(regions).expect("guest memory")
    }

    pub fn reset_host_canaries(&mut self) {
        for r in self.canary_ranges() {
            let pat = self.pattern[r.clone()].to_vec();
            self.host()[r].copy_from_slice(&pat);
        }
    }

    /// Change one host byte in the hole between the regions, as a stray write would (for
    /// checking that the canary check notices).
    pub fn poke_hole(&mut self) {
        let off = Self::A_OFF + A_SIZE as usize + 100;
        self.host()[off] ^= 0xff;
    }

    /// The first host byte outside the guest regions that changed, if any.
    pub fn check_host_canaries(&mut self) -> Result<(), String> {
        for r in self.canary_ranges() {
            let pat = self.pattern[r.clone()].to_vec();
            let host = &self.host()[r.clone()];
            if host != pat.as_slice() {
                let i = host.iter().zip(&pat).position(|(a, b)| a != b).unwrap_or(0);
                return Err(format!(
                    "host byte {:#x} outside guest memory changed ({:#x}); region A starts at \
                     host offset {:#x}",
                    r.start + i,
                    host[i],
                    Self::A_OFF
                ));
            }
        }
        Ok(())
    }
}

impl Default for GuardedMemory {
    fn default() -> Self {
        Self::new()
    }
}
