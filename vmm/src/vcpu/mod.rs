//! vCPU threads: one per vCPU, running KVM_RUN and dispatching port I/O and MMIO exits to
//! the buses. Any exit we cannot handle is reported with the registers and ends the machine;
//! nothing here panics or spins on a dead vCPU.

pub mod emulate;
pub mod setup;

use devices::bus::Bus;
use devices::lifecycle::{Lifecycle, Request};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// KVM_SYSTEM_EVENT types.
const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;

/// Lets vCPUs run or holds them (`-S`, prelaunch, QMP `stop`/`cont`). vCPUs check it before
/// every KVM_RUN; a paused vCPU parks on the condition variable and is counted, so `stop`
/// can wait until every vCPU is really out of the guest.
#[derive(Default)]
pub struct RunGate {
    running: AtomicBool,
    parked: AtomicUsize,
    lock: Mutex<()>,
    changed: Condvar,
    /// NMIs requested for every vCPU (watchdog action inject-nmi), counted: each vCPU
    /// injects once per request it has not seen.
    nmi_requests: AtomicU64,
}

impl RunGate {
    pub fn new(running: bool) -> Self {
        Self {
            running: AtomicBool::new(running),
            ..Default::default()
        }
    }

    pub fn set_running(&self, running: bool) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.running.store(running, Ordering::SeqCst);
        self.changed.notify_all();
    }

    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Ask every vCPU to take an NMI before it next enters the guest (kick the threads out
    /// of KVM_RUN so that it happens now).
    pub fn request_nmi(&self) {
        self.nmi_requests.fetch_add(1, Ordering::SeqCst);
    }

    /// vCPUs currently held by the gate.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::SeqCst)
    }

    /// Block until running or `stop` is set; true if the vCPU may run.
    fn wait(&self, stop: &AtomicBool) -> bool {
        if self.running.load(Ordering::SeqCst) {
            return !stop.load(Ordering::SeqCst);
        }
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.parked.fetch_add(1, Ordering::SeqCst);
        while !self.running.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
            guard = self
                .changed
                .wait_timeout(guard, std::time::Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        self.parked.fetch_sub(1, Ordering::SeqCst);
        !stop.load(Ordering::SeqCst)
    }
}

/// Everything a vCPU thread needs.
pub struct Vcpu {
    pub fd: VcpuFd,
    pub index: u32,
    pub io: Arc<Bus>,
    pub mmio: Arc<Bus>,
    /// The address space: an MMIO exit may be a remapped range (PAM, SMRAM, a ROM).
    pub view: crate::memory::SharedView,
    pub lifecycle: Lifecycle,
    pub stop: Arc<AtomicBool>,
    pub gate: Arc<RunGate>,
    /// Set when tracing boot times: the process start to compare the first entry against.
    pub trace_start: Option<Instant>,
}

/// CLOCK_MONOTONIC in microseconds: the trace's absolute time, which a parent that read
/// the same clock before starting the process turns into time since process start (`us=`
/// counts from `main`, after the loader).
fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1000
}

/// Why a vCPU stopped.
enum Stop {
    Requested,
    Failed(String),
}

impl Vcpu {
    /// The thread body: run until told to stop or until the guest ends the machine.
    pub fn run(&mut self) {
        if !self.gate.wait(&self.stop) {
            return;
        }
        if let Some(start) = self.trace_start.filter(|_| self.index == 0) {
            eprintln!(
                "machina-trace: first-vcpu-entry us={} memslot-changes={} monotonic-us={}",
                start.elapsed().as_micros(),
                crate::memory::slot_changes(),
                monotonic_us()
            );
        }
        let stop = self.run_loop();
        if self.trace_start.is_some() && self.index == 0 {
            eprintln!("machina-trace: {}", emulate::counters());
        }
        if let Stop::Failed(reason) = stop {
            let registers = self.describe_registers();
            eprintln!(
                "machina: vCPU {} stopped: {reason}\n{registers}",
                self.index
            );
            self.lifecycle.request(Request::Crash);
        }
    }

    /// A KVM_EXIT_IO: `count` elements of `size` bytes (more than one for a string
    /// instruction), each one access to the port, as the CPU makes them.
    fn port_io(&mut self) {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit being handled is KVM_EXIT_IO, so `io` is the union member KVM
        // filled.
        let io = unsafe { run.__bindgen_anon_1.io };
        let size = usize::from(io.size);
        let len = size * io.count as usize;
        if !matches!(size, 1 | 2 | 4) || len == 0 {
            return;
        }
        // SAFETY: KVM places the `len` data bytes at `data_offset` inside the vCPU's
        // kvm_run mapping (whose size KVM_GET_VCPU_MMAP_SIZE covers it), which lives as
        // long as the vCPU fd; nothing else touches it while this thread handles the exit.
        let data = unsafe {
            std::slice::from_raw_parts_mut(
                (run as *mut kvm_bindings::kvm_run as *mut u8).add(io.data_offset as usize),
                len,
            )
        };
        let port = u64::from(io.port);
        for element in data.chunks_mut(size) {
            if u32::from(io.direction) == kvm_bindings::KVM_EXIT_IO_IN {
                if !self.io.read(port, element) {
                    element.fill(0xff);
                }
            } else {
                self.io.write(port, element);
            }
        }
    }

    fn run_loop(&mut self) -> Stop {
        // Under MACHINA_TRACE, vCPU 0's first exit shows when the guest first ran (the
        // tiny guest's first instruction is an `out` to port 0x80).
        let mut first_exit = self.trace_start.filter(|_| self.index == 0);
        // Requests made before this vCPU existed (an earlier incarnation) do not apply.
        let mut nmis_seen = self.gate.nmi_requests.load(Ordering::SeqCst);
        loop {
            if !self.gate.wait(&self.stop) {
                return Stop::Requested;
            }
            let nmis = self.gate.nmi_requests.load(Ordering::SeqCst);
            if nmis != nmis_seen {
                nmis_seen = nmis;
                // KVM_NMI: queued on the local APIC; fails only on a vCPU fd gone bad,
                // which KVM_RUN then reports.
                let _ = self.fd.nmi();
            }
            let exit = self.fd.run();
            if let (Some(start), Ok(e)) = (first_exit, &exit) {
                if !matches!(e, VcpuExit::Intr) {
                    eprintln!(
                        "machina-trace: first-vcpu-exit us={} monotonic-us={} {e:?}",
                        start.elapsed().as_micros(),
                        monotonic_us()
                    );
                    first_exit = None;
                }
            }
            let mut port_io = false;
            match exit {
                // Handled below from the exit's own description: a string instruction
                // (`rep insw`, as firmware reads an IDE sector) is `count` accesses.
                Ok(VcpuExit::IoIn(..) | VcpuExit::IoOut(..)) => port_io = true,
                // The view decides: RAM or ROM behind a read-only slot, a black hole, or
                // the MMIO bus (unassigned memory reads as zero on QEMU's x86 machines).
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    self.view.read(addr, data, &self.mmio);
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    self.view.write(addr, data, &self.mmio);
                }
                Ok(VcpuExit::Hlt) => {
                    // With the in-kernel irqchip KVM handles HLT itself; an exit here means a
                    // halt nothing can wake.
                    return Stop::Failed("guest halted with no way to wake (HLT exit)".into());
                }
                Ok(VcpuExit::Shutdown) => {
                    return Stop::Failed("guest shutdown (triple fault)".into());
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => {
                    match kind {
                        KVM_SYSTEM_EVENT_SHUTDOWN => self.lifecycle.request(Request::PowerOff),
                        KVM_SYSTEM_EVENT_RESET => self.lifecycle.request(Request::Reset),
                        other => {
                            return Stop::Failed(format!("unhandled KVM system event {other}"))
                        }
                    }
                    return Stop::Requested;
                }
                Ok(VcpuExit::InternalError) => {
                    let run = self.fd.get_kvm_run();
                    // SAFETY: KVM filled the `internal` member of the exit union for
                    // KVM_EXIT_INTERNAL_ERROR, the exit we are handling.
                    let internal = unsafe { run.__bindgen_anon_1.internal };
                    let n = (internal.ndata as usize).min(internal.data.len());
                    if internal.suberror != KVM_INTERNAL_ERROR_EMULATION {
                        return Stop::Failed(format!(
                            "KVM internal error: suberror {}, data {:x?}",
                            internal.suberror,
                            &internal.data[..n]
                        ));
                    }
                    let data = internal.data;
                    if let Err(reason) = self.emulation_failure(&data[..n]) {
                        return Stop::Failed(reason);
                    }
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    return Stop::Failed(format!(
                        "KVM entry failed: hardware reason {reason:#x} on host cpu {cpu}"
                    ));
                }
                Ok(VcpuExit::Intr) => {}
                Ok(other) => return Stop::Failed(format!("unhandled vCPU exit {other:?}")),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                }
                Err(e) => return Stop::Failed(format!("KVM_RUN failed: {e}")),
            }
            if port_io {
                self.port_io();
            }
        }
    }

    /// KVM's emulator gave up on an instruction (PVM hosts emulate all CPL 0 code). Emulate
    /// `int3` and `fwait` and continue; anything else stops the machine with the bytes and
    /// the instruction's name.
    fn emulation_failure(&mut self, data: &[u64]) -> Result<(), String> {
        let Some(bytes) = emulate::reported_bytes(data) else {
            return Err(format!(
                "KVM internal error: instruction emulation failed (no instruction bytes), data {data:x?}"
            ));
        };
        let regs = self
            .fd
            .get_regs()
            .map_err(|e| format!("instruction emulation failed; KVM_GET_REGS: {e}"))?;
        let sregs = self
            .fd
            .get_sregs()
            .map_err(|e| format!("instruction emulation failed; KVM_GET_SREGS: {e}"))?;
        const EFER_LMA: u64 = 1 << 10;
        let long_mode = sregs.efer & EFER_LMA != 0 && sregs.cs.l != 0;
        let decoded = emulate::decode(&bytes, long_mode);
        let exception = match (&decoded.kind, decoded.len) {
            (emulate::Kind::Int3, Some(len)) => {
                // #BP is trap-like: the handler sees RIP past the int3.
                self.set_rip(regs, regs.rip.wrapping_add(len as u64))?;
                emulate::INT3_EMULATED.fetch_add(1, Ordering::Relaxed);
                Some(3)
            }
            (emulate::Kind::Fwait, Some(len)) => {
                let fpu = self
                    .fd
                    .get_fpu()
                    .map_err(|e| format!("emulating fwait; KVM_GET_FPU: {e}"))?;
                emulate::FWAIT_EMULATED.fetch_add(1, Ordering::Relaxed);
                let fault = emulate::fwait_outcome(sregs.cr0, fpu.fcw, fpu.fsw);
                if fault.is_none() {
                    self.set_rip(regs, regs.rip.wrapping_add(len as u64))?;
                }
                fault
            }
            (kind, _) => {
                let name = match kind {
                    emulate::Kind::Other(Some(name)) => format!(" ({name})"),
                    _ => String::new(),
                };
                return Err(format!(
                    "KVM internal error: instruction emulation failed at {:#x}: bytes {}{name}; {}",
                    regs.rip,
                    emulate::hex(&bytes),
                    emulate::counters()
                ));
            }
        };
        if let Some(vector) = exception {
            let mut events = self
                .fd
                .get_vcpu_events()
                .map_err(|e| format!("injecting exception {vector}; KVM_GET_VCPU_EVENTS: {e}"))?;
            events.exception.injected = 1;
            events.exception.nr = vector;
            events.exception.has_error_code = 0;
            events.exception.error_code = 0;
            events.exception.pending = 0;
            self.fd
                .set_vcpu_events(&events)
                .map_err(|e| format!("injecting exception {vector}; KVM_SET_VCPU_EVENTS: {e}"))?;
        }
        Ok(())
    }

    fn set_rip(&self, mut regs: kvm_bindings::kvm_regs, rip: u64) -> Result<(), String> {
        regs.rip = rip;
        self.fd
            .set_regs(&regs)
            .map_err(|e| format!("instruction emulation; KVM_SET_REGS: {e}"))
    }

    fn describe_registers(&self) -> String {
        let regs = match self.fd.get_regs() {
            Ok(r) => r,
            Err(e) => return format!("(registers unavailable: {e})"),
        };
        let sregs = match self.fd.get_sregs() {
            Ok(s) => s,
            Err(e) => return format!("(special registers unavailable: {e})"),
        };
        format!(
            "RAX={:016x} RBX={:016x} RCX={:016x} RDX={:016x}\n\
             RSI={:016x} RDI={:016x} RBP={:016x} RSP={:016x}\n\
             R8 ={:016x} R9 ={:016x} R10={:016x} R11={:016x}\n\
             R12={:016x} R13={:016x} R14={:016x} R15={:016x}\n\
             RIP={:016x} RFL={:08x} CPL={}\n\
             CS={:04x} SS={:04x} DS={:04x} CR0={:08x} CR2={:016x} CR3={:016x} CR4={:08x} EFER={:x}",
            regs.rax,
            regs.rbx,
            regs.rcx,
            regs.rdx,
            regs.rsi,
            regs.rdi,
            regs.rbp,
            regs.rsp,
            regs.r8,
            regs.r9,
            regs.r10,
            regs.r11,
            regs.r12,
            regs.r13,
            regs.r14,
            regs.r15,
            regs.rip,
            regs.rflags,
            sregs.cs.dpl,
            sregs.cs.selector,
            sregs.ss.selector,
            sregs.ds.selector,
            sregs.cr0,
            sregs.cr2,
            sregs.cr3,
            sregs.cr4,
            sregs.efer
        )
    }
}
