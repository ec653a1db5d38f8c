//! virtio-blk device-model throughput: requests per second and MB/s the device model
//! processes for 4 KiB and 64 KiB reads and writes against a file in the page cache, next
//! to the physical reference: a preadv/pwritev loop (one iovec) on the same file with the
//! same offsets into the device's own data buffers in guest memory (issue 12's yardstick).
//! A pread/pwrite loop into a heap buffer of the same footprint is printed beside it (the
//! cheaper call, without the iovec import: the device's RWF_NOWAIT attempt needs preadv2).
//!
//! There is no guest: a synthetic driver brings the function up through its modern
//! interface (config space + BAR accesses), fills a 256-entry queue in guest memory with
//! requests (one indirect descriptor per request: header, data, status, as Linux does with
//! VIRTIO_RING_F_INDIRECT_DESC), notifies through the notify BAR, lets the worker process
//! the queue (`VirtioWorker::poll`: the handler parses the chains and hands them to the
//! device's I/O engine, whose workers, two per host CPU, run them; poll waits for them and
//! puts them in the used ring), checks every status byte and recycles the used entries.
//! The reference is one thread; the device model's figure includes its workers running in
//! parallel (as a guest at queue depth 256 gets them). Offsets are aligned to the request size, either sequential (wrapping at the end
//! of the file) or uniformly random (xorshift, fixed seed).
//!
//! Each case alternates device and references `MACHINA_BENCH_ROUNDS` times (default 3) and
//! prints the median rates, and the median CPU time (user + system, every thread) per
//! request of each with their ratio: on a shared host the wall-clock ratio moves with the
//! load, the CPU-time one much less.
//!
//! `cargo bench -p devices --bench virtio_blk` runs each round for about a second;
//! `MACHINA_BENCH_SECS` and `MACHINA_BENCH_FILE_MB` change the time per case and the file
//! size (default 256 MiB, less when the temp dir is short of space), `MACHINA_BENCH_ONLY`
//! (e.g. `read-4-seq`) runs one case. Without `--bench`
//! (`cargo test --benches`) it does one tiny batch per case.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use devices::virtio::regs::features;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const QSIZE: u16 = 256;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const TABLES: u64 = 0x1_0000;
const HEADERS: u64 = 0x2_0000;
const STATUS: u64 = 0x2_1000;
const DATA: u64 = 0x10_0000;
const SLOT: u64 = 64 * 1024;
const MEM: usize = 32 << 20;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Read,
    Write,
}

#[derive(Clone, Copy, PartialEq)]
enum Pattern {
    Sequential,
    Random,
}

struct Offsets {
    pattern: Pattern,
    size: u64,
    slots: u64,
    next: u64,
    rng: XorShift,
}

impl Offsets {
    fn new(pattern: Pattern, size: u64, file_len: u64) -> Self {
        Self {
            pattern,
            size,
            slots: file_len / size,
            next: 0,
            rng: XorShift::new(0x5eed),
        }
    }

    fn next(&mut self) -> u64 {
        let slot = match self.pattern {
            Pattern::Sequential => {
                let s = self.next;
                self.next = (self.next + 1) % self.slots;
                s
            }
            Pattern::Random => self.rng.below(self.slots),
        };
        slot * self.size
    }
}

struct Measured {
    requests: u64,
    bytes: u64,
    elapsed: Duration,
    /// CPU time the process used meanwhile (every thread: the device's workers too).
    cpu: Duration,
}

impl Measured {
    fn rate(&self) -> (f64, f64) {
        let s = self.elapsed.as_secs_f64().max(1e-9);
        (self.requests as f64 / s, self.bytes as f64 / s / 1e6)
    }

    fn cpu_ns_per_request(&self) -> f64 {
        self.cpu.as_nanos() as f64 / self.requests.max(1) as f64
    }
}

/// CPU time (user + system) of the whole process so far.
fn cpu_now() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage writes one rusage into the storage it is given.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) } != 0 {
        return Duration::ZERO;
    }
    // SAFETY: getrusage returned 0, so it filled the struct.
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The device and its driver state: queue 0 with every request in an indirect table.
struct Bench {
    d: Driver,
    mem: GuestMemoryMmap,
    ring: Ring,
}

impl Bench {
    fn new(file: std::fs::File) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).expect("guest memory");
        let mut d = Driver::new(
            &plan(DEVICE_BLK, false, false, &[("queue-size", "256")]),
            block_backend(file, Default::default()),
            mem.clone(),
        );
        // FLUSH as Linux negotiates it: a write cache (without it the device is writethrough,
        // as QEMU's, and every write is synced).
        const BLK_F_FLUSH: u64 = 1 << 9;
        let st = d.modern_begin(features::VERSION_1 | features::RING_INDIRECT_DESC | BLK_F_FLUSH);
        assert_ne!(st & 8, 0, "FEATURES_OK");
        d.modern_queue(0, QSIZE, DESC, AVAIL, USED);
        d.modern_driver_ok();
        // The kick DRIVER_OK queues finds nothing to do.
        d.w.poll();
        let ring = Ring::new(QSIZE, DESC, AVAIL, USED);
        Self { d, mem, ring }
    }

    /// Lay out request slot `i`: descriptor `i` points at its indirect table.
    fn prepare(&mut self, size: u32, op: Op) {
        let data_flags = match op {
            Op::Read => VRING_DESC_F_WRITE,
            Op::Write => 0,
        };
        for i in 0..QSIZE {
            let table = TABLES + 64 * u64::from(i);
            let hdr = HEADERS + 16 * u64::from(i);
            let data = DATA + SLOT * u64::from(i);
            let status = STATUS + u64::from(i);
            let t = [
                Ring::desc_bytes(hdr, 16, VRING_DESC_F_NEXT, 1),
                Ring::desc_bytes(data, size, data_flags | VRING_DESC_F_NEXT, 2),
                Ring::desc_bytes(status, 1, VRING_DESC_F_WRITE, 0),
            ];
            self.mem
                .write_slice(&t.concat(), GuestAddress(table))
                .unwrap();
            self.ring
                .write_desc(&self.mem, i, table, 48, VRING_DESC_F_INDIRECT, 0);
            let ty = if op == Op::Read { T_IN } else { T_OUT };
            self.mem
                .write_obj(ty, GuestAddress(hdr))
                .expect("header type");
            if op == Op::Write {
                let fill = vec![(i as u8) | 1; size as usize];
                self.mem.write_slice(&fill, GuestAddress(data)).unwrap();
            }
        }
    }

    /// Submit one full queue of requests at the given offsets, process, check, recycle.
    fn batch(&mut self, offsets: &mut Offsets) {
        for i in 0..QSIZE {
            let sector = offsets.next() / 512;
            let hdr = HEADERS + 16 * u64::from(i);
            self.mem
                .write_obj(sector, GuestAddress(hdr + 8))
                .expect("header sector");
            self.mem
                .write_obj(0xffu8, GuestAddress(STATUS + u64::from(i)))
                .expect("status");
            self.ring.stage(&self.mem, i);
        }
        self.ring.publish(&self.mem);
        self.d.notify_modern(0);
        self.d.w.poll();
        let used = self.ring.used_idx(&self.mem);
        assert_eq!(
            used.wrapping_sub(self.ring.used_seen),
            QSIZE,
            "the device completed the whole queue"
        );
        self.ring.used_seen = used;
        let mut st = [0u8; QSIZE as usize];
        self.mem
            .read_slice(&mut st, GuestAddress(STATUS))
            .expect("status bytes");
        assert!(st.iter().all(|&s| s == 0), "every request succeeded");
    }
}

fn run_device(
    bench: &mut Bench,
    op: Op,
    size: u64,
    pattern: Pattern,
    file_len: u64,
    budget: Duration,
    min_batches: u64,
) -> Measured {
    bench.prepare(size as u32, op);
    let mut offsets = Offsets::new(pattern, size, file_len);
    // Untimed warm-up: first touches of the buffers, allocator, branch predictors.
    bench.batch(&mut offsets);
    let cpu = cpu_now();
    let start = Instant::now();
    let mut batches = 0u64;
    while batches < min_batches || start.elapsed() < budget {
        bench.batch(&mut offsets);
        batches += 1;
    }
    let requests = batches * u64::from(QSIZE);
    Measured {
        requests,
        bytes: requests * size,
        elapsed: start.elapsed(),
        cpu: cpu_now().saturating_sub(cpu),
    }
}

/// How the reference moves the data.
#[derive(Clone, Copy, PartialEq)]
enum Reference {
    /// preadv/pwritev of one iovec into the device's own data buffers in guest memory (the
    /// issue's yardstick: raw vectored I/O over the same buffers).
    Vectored,
    /// pread/pwrite into a heap buffer of the same footprint (the cheaper system call).
    Plain,
}

#[allow(clippy::too_many_arguments)]
fn run_reference(
    file: &std::fs::File,
    mem: &GuestMemoryMmap,
    how: Reference,
    op: Op,
    size: u64,
    pattern: Pattern,
    file_len: u64,
    budget: Duration,
    min_batches: u64,
) -> Measured {
    use std::os::fd::AsRawFd;
    use vm_memory::GuestMemoryBackend;
    // The same buffer footprint as the device's requests: one SLOT per queue entry (a
    // single hot buffer would keep the copies in the CPU caches that the guest's buffers,
    // 256 of them, do not fit).
    let mut slots = vec![0x5au8; (SLOT * u64::from(QSIZE)) as usize];
    let guest = mem
        .get_host_address(GuestAddress(DATA))
        .expect("data buffers in guest memory");
    let fd = file.as_raw_fd();
    let mut offsets = Offsets::new(pattern, size, file_len);
    let mut one = |i: u16, off: u64| {
        let at = (SLOT * u64::from(i)) as usize;
        if how == Reference::Vectored {
            // SAFETY: DATA + SLOT * i .. + size lies inside the guest memory mapping
            // (MEM bytes from 0), which outlives this loop.
            let base = unsafe { guest.add(at) };
            let v = libc::iovec {
                iov_base: base.cast(),
                iov_len: size as usize,
            };
            // SAFETY: one iovec over that mapping; the kernel reads or writes only it.
            let n = unsafe {
                match op {
                    Op::Read => libc::preadv(fd, &v, 1, off as libc::off_t),
                    Op::Write => libc::pwritev(fd, &v, 1, off as libc::off_t),
                }
            };
            assert_eq!(n, size as isize, "preadv/pwritev");
            return;
        }
        let buf = &mut slots[at..at + size as usize];
        match op {
            Op::Read => file.read_exact_at(buf, off).expect("pread"),
            Op::Write => file.write_all_at(buf, off).expect("pwrite"),
        }
    };
    for i in 0..QSIZE {
        one(i, offsets.next());
    }
    let cpu = cpu_now();
    let start = Instant::now();
    let mut requests = 0u64;
    // Same batching as the device so the clock is read as often.
    while requests < min_batches * u64::from(QSIZE) || start.elapsed() < budget {
        for i in 0..QSIZE {
            one(i, offsets.next());
        }
        requests += u64::from(QSIZE);
    }
    Measured {
        requests,
        bytes: requests * size,
        elapsed: start.elapsed(),
        cpu: cpu_now().saturating_sub(cpu),
    }
}

/// Free bytes in the file system holding `dir`.
fn free_space(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` points to writable storage of the
    // right type; statvfs only writes into it.
    let r = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if r != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let st = unsafe { st.assume_init() };
    // The field types differ between targets (u64 here, u32 on some 32-bit ones).
    #[allow(clippy::unnecessary_cast)]
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let secs: f64 = std::env::var("MACHINA_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let mut file_mb: u64 = std::env::var("MACHINA_BENCH_FILE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let (budget, min_batches, mut rounds) = if full {
        (Duration::from_secs_f64(secs), 4, 3)
    } else {
        file_mb = 1;
        (Duration::ZERO, 1, 1)
    };
    if let Some(r) = std::env::var("MACHINA_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        rounds = r.max(1);
    }
    let free = free_space(&std::env::temp_dir()).unwrap_or(u64::MAX);
    while file_mb > 16 && file_mb << 20 > free / 4 {
        file_mb /= 2;
    }
    let file_len = file_mb << 20;
    let only = std::env::var("MACHINA_BENCH_ONLY").ok();

    // Fill the file with data and read it back so every page is in the page cache.
    let img = TempImage::new("bench-blk");
    let mut pattern = vec![0u8; 1 << 20];
    XorShift::new(1).fill(&mut pattern);
    let file = img.create(&pattern, file_len, false);
    let mut chunk = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < file_len {
        let n = (file_len - off).min(chunk.len() as u64) as usize;
        file.read_exact_at(&mut chunk[..n], off)
            .expect("warm the page cache");
        off += n as u64;
    }
    let reference = file.try_clone().expect("second handle");
    let mut bench = Bench::new(file);

    println!(
        "virtio-blk device model vs pread/pwrite: {} MiB file in {} (page cache), queue \
         {QSIZE}, indirect descriptors, MB = 10^6 bytes{}",
        file_mb,
        std::env::temp_dir().display(),
        if full {
            ""
        } else {
            " (quick run: pass --bench to measure)"
        }
    );
    for pattern in [Pattern::Sequential, Pattern::Random] {
        for op in [Op::Read, Op::Write] {
            for size in [4096u64, 65536] {
                let (op_name, ref_name, plain_name) = match op {
                    Op::Read => ("read", "preadv", "pread"),
                    Op::Write => ("write", "pwritev", "pwrite"),
                };
                let pat = match pattern {
                    Pattern::Sequential => "seq",
                    Pattern::Random => "rand",
                };
                // MACHINA_BENCH_ONLY=read-4-seq (op-KiB-pattern) runs one case, for profiling.
                let name = format!("{op_name}-{}-{pat}", size / 1024);
                if only.as_ref().is_some_and(|o| *o != name) {
                    continue;
                }
                // Alternate the two, `rounds` times, and take medians: the host may be
                // shared, and its load comes and goes.
                let (mut dev, mut vect, mut plain) = (Vec::new(), Vec::new(), Vec::new());
                for _ in 0..rounds {
                    dev.push(run_device(
                        &mut bench,
                        op,
                        size,
                        pattern,
                        file_len,
                        budget,
                        min_batches,
                    ));
                    for (how, out) in [
                        (Reference::Vectored, &mut vect),
                        (Reference::Plain, &mut plain),
                    ] {
                        out.push(run_reference(
                            &reference,
                            &bench.mem,
                            how,
                            op,
                            size,
                            pattern,
                            file_len,
                            budget,
                            min_batches,
                        ));
                    }
                }
                let rates = |m: &[Measured]| {
                    (
                        median(m.iter().map(|x| x.rate().0).collect()),
                        median(m.iter().map(|x| x.rate().1).collect()),
                        median(m.iter().map(Measured::cpu_ns_per_request).collect()),
                    )
                };
                let (dr, dm, dc) = rates(&dev);
                let (vr, vm, vc) = rates(&vect);
                let (_, _, pc) = rates(&plain);
                println!(
                    "virtio-blk {op_name:<5} {:>2} KiB {pat:<4}: {:>9.0} req/s, {:>8.1} MB/s \
                     (device model) | {ref_name:<7}: {:>9.0} req/s, {:>8.1} MB/s | ratio {:.2} \
                     | CPU/req {:>6.0} ns vs {:>6.0} ns, ratio {:.2} | {plain_name} {:>6.0} ns, \
                     ratio {:.2}",
                    size / 1024,
                    dr,
                    dm,
                    vr,
                    vm,
                    dr / vr.max(1e-9),
                    dc,
                    vc,
                    vc / dc.max(1e-9),
                    pc,
                    pc / dc.max(1e-9)
                );
            }
        }
    }
}
