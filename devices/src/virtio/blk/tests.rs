use super::*;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
/// A write the image refuses (opened read-only behind a writable drive) is an error
/// naming the device, and the guest gets S_IOERR.
#[test]
fn a_backend_failure_is_an_error_naming_the_device() {
    let log = crate::logging::captured();
    let dir = machina_tests::TempDir::new("blk-fail");
    let path = dir.join("disk.img");
    std::fs::write(&path, vec![0u8; 4096]).unwrap();
    let backend = BlockBackend {
        file: File::open(&path).unwrap(),
        read_only: false,
        direct: false,
        writeback: true,
        stats: Arc::default(),
        size: None,
        disk_size: Arc::default(),
        auto_num_queues: 1,
    };
    let mut dev = Block::new(backend, BlockOptions::default()).unwrap();
    let name = "virtio-blk-pci id=failing (pcie.0:04.0)";
    dev.set_name(name);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let (desc, avail, used) = (0x1000u64, 0x2000u64, 0x3000u64);
    let mut q = Queue::new(16).unwrap();
    q.set_desc_table_address(Some(desc as u32), Some(0));
    q.set_avail_ring_address(Some(avail as u32), Some(0));
    q.set_used_ring_address(Some(used as u32), Some(0));
    q.set_ready(true);
    // OUT request for sector 0: header, 512 bytes of data, the status byte.
    mem.write_obj(T_OUT, GuestAddress(0x8000)).unwrap();
    mem.write_obj(0u64, GuestAddress(0x8008)).unwrap();
    let descs = [(0x8000u64, 16u32, 1u16), (0x9000, 512, 1), (0xa000, 1, 2)];
    for (i, (addr, len, flags)) in descs.iter().enumerate() {
        let d = desc + 16 * i as u64;
        mem.write_obj(*addr, GuestAddress(d)).unwrap();
        mem.write_obj(*len, GuestAddress(d + 8)).unwrap();
        mem.write_obj(*flags, GuestAddress(d + 12)).unwrap();
        mem.write_obj(i as u16 + 1, GuestAddress(d + 14)).unwrap();
    }
    mem.write_obj(0u16, GuestAddress(avail + 4)).unwrap();
    mem.write_obj(1u16, GuestAddress(avail + 2)).unwrap();
    let irq = super::super::VirtioInterrupt::new(None, 1);
    let mut queues = [q];
    let mut ctx = QueueContext {
        name,
        queues: &mut queues,
        mem: &mem,
        features: 0,
        irq: &irq,
    };
    dev.process_queue(0, &mut ctx).unwrap();
    dev.settle(&mut ctx).unwrap();
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0xa000)).unwrap(), S_IOERR);
    let lines = log.lock().unwrap().clone();
    let ours: Vec<_> = lines.iter().filter(|(_, m)| m.starts_with(name)).collect();
    assert_eq!(ours.len(), 1, "{lines:?}");
    assert!(ours[0].0.starts_with("devices::virtio::blk"), "{ours:?}");
    assert!(
        ours[0]
            .1
            .starts_with(&format!("{name}: write of 512 bytes at sector 0 failed: ")),
        "{ours:?}"
    );
}

mod driven {
    //! A virtio-blk driven through its PCI function as a guest driver does.
    use super::super::BlockStats;
    use crate::testing::{block_backend, virtio_plan, Driver, Ring, DEVICE_BLK};
    use crate::virtio::regs::features::VERSION_1;
    use std::os::unix::fs::FileExt;
    use std::sync::Arc;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const QSIZE: u16 = 256;
    const DESC: u64 = 0x10000;
    const AVAIL: u64 = 0x11000;
    const USED: u64 = 0x12000;
    const HDRS: u64 = 0x20000;
    const STATUS: u64 = 0x30000;
    const DATA: u64 = 0x40000;
    const F_FLUSH: u64 = 1 << 9;

    struct Blk {
        d: Driver,
        ring: Ring,
        stats: Arc<BlockStats>,
        file: std::fs::File,
        _dir: machina_tests::TempDir,
    }

    fn blk() -> Blk {
        let dir = machina_tests::TempDir::new("blk-batch");
        let path = dir.join("disk.img");
        // Written (so in the page cache) before the device opens it.
        std::fs::write(&path, vec![0x11u8; 1 << 20]).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let stats = Arc::new(BlockStats::default());
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut d = Driver::new(
            &virtio_plan(DEVICE_BLK, false, false, &[]),
            block_backend(file.try_clone().unwrap(), stats.clone()),
            mem,
        );
        d.modern_begin(VERSION_1 | F_FLUSH);
        d.modern_queue(0, QSIZE, DESC, AVAIL, USED);
        d.modern_driver_ok();
        d.w.poll();
        Blk {
            d,
            ring: Ring::new(QSIZE, DESC, AVAIL, USED),
            stats,
            file,
            _dir: dir,
        }
    }

    impl Blk {
        /// Stage request `i` (type `ty`, `sector`, `data` buffers after the header) with
        /// its chain at descriptor 4 * i; published with the others by `publish`.
        fn stage(&mut self, i: u16, ty: u32, sector: u64, data: Option<(u64, u32, bool)>) {
            let mem = &self.d.mem;
            let hdr = HDRS + 16 * u64::from(i);
            mem.write_obj(ty, GuestAddress(hdr)).unwrap();
            mem.write_obj(sector, GuestAddress(hdr + 8)).unwrap();
            mem.write_obj(0xffu8, GuestAddress(STATUS + u64::from(i)))
                .unwrap();
            let mut bufs = vec![(hdr, 16, false)];
            bufs.extend(data);
            bufs.push((STATUS + u64::from(i), 1, true));
            let first = 4 * i;
            for (k, &(addr, len, write)) in bufs.iter().enumerate() {
                let idx = first + k as u16;
                let last = k + 1 == bufs.len();
                let flags = u16::from(write) * 2 + u16::from(!last);
                self.ring
                    .write_desc(mem, idx, addr, len, flags, if last { 0 } else { idx + 1 });
            }
            self.ring.stage(mem, first);
        }

        /// Publish what was staged, notify once and let the device run.
        fn go(&mut self) {
            self.ring.publish(&self.d.mem);
            self.d.notify_modern(0);
            self.d.w.poll();
        }

        fn used(&self) -> Vec<(u32, u32)> {
            let n = self.ring.used_idx(&self.d.mem);
            (0..n)
                .map(|k| self.ring.used_elem(&self.d.mem, k))
                .collect()
        }

        fn status(&self, i: u16) -> u8 {
            self.d
                .mem
                .read_obj(GuestAddress(STATUS + u64::from(i)))
                .unwrap()
        }
    }

    fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
        BlockStats::get(c)
    }

    /// Many requests made available at once (more than one publication's worth): every
    /// one is used once, with its status and length, the writes are on the image
    /// (those over cached pages are done by the handler itself) and the reads bring them
    /// back; each is counted once.
    #[test]
    fn a_burst_of_requests_is_served_whole_in_order_and_counted() {
        let mut b = blk();
        let n = 3 * super::super::PUBLISH_EVERY as u16 + 1;
        for i in 0..n {
            let buf = DATA + 0x1000 * u64::from(i);
            b.d.mem
                .write_slice(&[i as u8 + 1; 4096], GuestAddress(buf))
                .unwrap();
            b.stage(
                i,
                super::super::T_OUT,
                8 * u64::from(i),
                Some((buf, 4096, false)),
            );
        }
        b.go();
        // Used once each; in any order: a write the handler does not do inline (its pages
        // under writeback, or after a write that slept) goes to the pool, whose workers
        // complete in any order, as virtio allows.
        let want: Vec<(u32, u32)> = (0..n).map(|i| (u32::from(4 * i), 1)).collect();
        let mut used = b.used();
        used.sort_unstable();
        assert_eq!(used, want, "every write used once");
        for i in 0..n {
            assert_eq!(b.status(i), super::super::S_OK, "write {i}");
            let mut disk = [0u8; 4096];
            b.file
                .read_exact_at(&mut disk, 4096 * u64::from(i))
                .unwrap();
            assert!(disk.iter().all(|&x| x == i as u8 + 1), "write {i} on disk");
        }
        let n64 = u64::from(n);
        assert_eq!(get(&b.stats.wr_operations), n64);
        assert_eq!(get(&b.stats.wr_bytes), 4096 * n64);
        assert_eq!(get(&b.stats.wr_highest_offset), 4096 * n64);
        // Read them back, the other way round, into fresh buffers.
        b.d.mem
            .write_slice(&vec![0u8; 0x1000 * usize::from(n)], GuestAddress(DATA))
            .unwrap();
        for i in 0..n {
            let buf = DATA + 0x1000 * u64::from(i);
            let sector = 8 * u64::from(n - 1 - i);
            b.stage(i, super::super::T_IN, sector, Some((buf, 4096, true)));
        }
        b.go();
        let mut reads = b.used().split_off(usize::from(n));
        reads.sort_unstable();
        let want: Vec<(u32, u32)> = (0..n).map(|i| (u32::from(4 * i), 4097)).collect();
        assert_eq!(reads, want, "every read used once, with its length");
        for i in 0..n {
            assert_eq!(b.status(i), super::super::S_OK, "read {i}");
            let mut back = [0u8; 4096];
            b.d.mem
                .read_slice(&mut back, GuestAddress(DATA + 0x1000 * u64::from(i)))
                .unwrap();
            assert!(back.iter().all(|&x| x == (n - i) as u8), "read {i} data");
        }
        assert_eq!(get(&b.stats.rd_operations), n64);
        assert_eq!(get(&b.stats.rd_bytes), 4096 * n64);
        assert!(get(&b.stats.rd_total_time_ns) > 0, "read time counted");
        assert!(get(&b.stats.wr_total_time_ns) > 0, "write time counted");
    }

    /// The requests made available before a malformed chain still complete (QEMU pushes
    /// them as it pops) although the device then stops for a reset.
    #[test]
    fn requests_before_a_bad_chain_still_complete() {
        let mut b = blk();
        for i in 0..3u16 {
            let buf = DATA + 0x1000 * u64::from(i);
            b.stage(i, super::super::T_IN, u64::from(i), Some((buf, 512, true)));
        }
        // Request 3's header lies outside guest memory.
        b.stage(3, super::super::T_IN, 0, None);
        b.ring.write_desc(&b.d.mem, 12, 0xdead_0000_0000, 16, 1, 13);
        b.go();
        assert_eq!(b.used(), vec![(0, 513), (4, 513), (8, 513)]);
        for i in 0..3 {
            assert_eq!(b.status(i), super::super::S_OK);
        }
        assert_eq!(b.status(3), 0xff, "the bad chain is not answered");
        assert!(b.d.needs_reset(), "the device stopped");
    }
}
