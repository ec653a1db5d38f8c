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
