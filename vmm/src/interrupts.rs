//! KVM implementations of the device crate's interrupt and notification seams: INTx lines
//! as in-kernel irqchip GSI levels, MSI/MSI-X messages through irqfds on GSI routes
//! (KVM_SIGNAL_MSI for the first message of a route), queue notifications as ioeventfds.

use crate::kvm_vm::GsiRouter;
use devices::pci::interrupt::{IntxSink, MsiSink};
use devices::virtio::{IoEvent, IoEventRegistrar, IoEventSpace};
use kvm_bindings::kvm_msi;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// Level-triggered GSIs on the in-kernel PIC/IOAPIC.
pub struct KvmIntx(pub Arc<VmFd>);

impl IntxSink for KvmIntx {
    fn set_level(&self, gsi: u32, level: bool) {
        set_irq_line(&self.0, gsi, level);
    }
}

/// KVM_IRQ_LINE. A failure (a GSI outside the routing table: a device-model bug, not a
/// guest one) loses the edge, the only safe reaction at interrupt time; it is reported once
/// per process, since the same cause repeats at every interrupt.
fn set_irq_line(vm: &VmFd, gsi: u32, level: bool) {
    static REPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Err(e) = vm.set_irq_line(gsi, level) {
        if !REPORTED.swap(true, Ordering::Relaxed) {
            log::error!(
                "KVM_IRQ_LINE for GSI {gsi} failed: {e} (the interrupt is lost; further \
                 failures are not reported)"
            );
        }
    }
}

/// One INTx GSI as a level-triggered irqfd with a resample fd.
struct IntxLine {
    irqfd: EventFd,
    resample: EventFd,
    /// The level the PCI host last drove.
    level: bool,
}

/// INTx (and the SCI) through level-triggered irqfds with resampling (KVM_IRQFD_FLAG_RESAMPLE),
/// one per GSI, made the first time the GSI is driven: raising a line is an eventfd write; KVM
/// lowers it at the guest's EOI and signals the resample fd, and a small thread re-raises it
/// if the host still drives it high (a device that is still asserting). Lowering needs no
/// call: an ISR read clears the device's level before the EOI. A GSI whose irqfd cannot be
/// made falls back to KVM_IRQ_LINE.
pub struct KvmIntxIrqfd {
    vm: Arc<VmFd>,
    lines: Arc<Mutex<HashMap<u32, IntxLine>>>,
    epoll: Arc<vmm_sys_util::epoll::Epoll>,
    /// EOIs handled (resample signals seen), for tests.
    resamples: Arc<AtomicU64>,
    stop: EventFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Epoll data of the stop eventfd (GSIs are below it).
const RESAMPLE_STOP: u64 = u64::MAX;

impl KvmIntxIrqfd {
    pub fn new(vm: Arc<VmFd>) -> std::io::Result<Self> {
        use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
        let epoll = Arc::new(Epoll::new()?);
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            std::os::fd::AsRawFd::as_raw_fd(&stop),
            EpollEvent::new(EventSet::IN, RESAMPLE_STOP),
        )?;
        let lines: Arc<Mutex<HashMap<u32, IntxLine>>> = Arc::default();
        let resamples = Arc::new(AtomicU64::new(0));
        let thread = {
            let (epoll, lines, count) = (epoll.clone(), lines.clone(), resamples.clone());
            std::thread::Builder::new()
                .name("intx-resample".into())
                .spawn(move || {
                    let mut events = vec![EpollEvent::default(); 32];
                    loop {
                        let n = match epoll.wait(-1, &mut events) {
                            Ok(n) => n,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                            Err(_) => return,
                        };
                        for e in &events[..n] {
                            if e.data() == RESAMPLE_STOP {
                                return;
                            }
                            let gsi = e.data() as u32;
                            let lines = lines.lock().unwrap_or_else(|e| e.into_inner());
                            if let Some(line) = lines.get(&gsi) {
                                let _ = line.resample.read();
                                // The guest's EOI lowered the line; a device still asserting
                                // raises it again (QEMU's resample handling).
                                if line.level {
                                    let _ = line.irqfd.write(1);
                                }
                                count.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                })?
        };
        Ok(Self {
            vm,
            lines,
            epoll,
            resamples,
            stop,
            thread: Some(thread),
        })
    }

    /// Resample signals (guest EOIs of a raised line) handled so far.
    pub fn eois_handled(&self) -> u64 {
        self.resamples.load(Ordering::SeqCst)
    }

    fn make_line(&self, gsi: u32) -> Option<IntxLine> {
        use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).ok()?;
        let resample = EventFd::new(libc::EFD_NONBLOCK).ok()?;
        self.vm
            .register_irqfd_with_resample(&irqfd, &resample, gsi)
            .ok()?;
        let added = self.epoll.ctl(
            ControlOperation::Add,
            std::os::fd::AsRawFd::as_raw_fd(&resample),
            EpollEvent::new(EventSet::IN, u64::from(gsi)),
        );
        if added.is_err() {
            let _ = self.vm.unregister_irqfd(&irqfd, gsi);
            return None;
        }
        Some(IntxLine {
            irqfd,
            resample,
            level: false,
        })
    }
}

impl IntxSink for KvmIntxIrqfd {
    fn set_level(&self, gsi: u32, level: bool) {
        use std::collections::hash_map::Entry;
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let line = match lines.entry(gsi) {
            Entry::Occupied(e) => e.into_mut(),
            // Never raised through an irqfd: KVM_IRQ_LINE may still hold it (a fallback).
            Entry::Vacant(_) if !level => {
                set_irq_line(&self.vm, gsi, false);
                return;
            }
            Entry::Vacant(v) => match self.make_line(gsi) {
                Some(line) => v.insert(line),
                None => {
                    set_irq_line(&self.vm, gsi, level);
                    return;
                }
            },
        };
        line.level = level;
        if level {
            let _ = line.irqfd.write(1);
        }
    }
}

impl Drop for KvmIntxIrqfd {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let lines = std::mem::take(&mut *self.lines.lock().unwrap_or_else(|e| e.into_inner()));
        for (gsi, line) in lines {
            let _ = self.vm.unregister_irqfd(&line.irqfd, gsi);
        }
    }
}

/// MSI writes injected with one KVM_SIGNAL_MSI each; the in-kernel LAPICs decode address
/// and data.
pub struct KvmMsi(pub Arc<VmFd>);

fn signal_msi(vm: &VmFd, address: u64, data: u32) {
    let msi = kvm_msi {
        address_lo: address as u32,
        address_hi: (address >> 32) as u32,
        data,
        ..Default::default()
    };
    // A message to a nonexistent APIC is dropped by KVM, as on hardware (Ok(0)). A failed
    // ioctl loses the interrupt; reported once per process, as it repeats at every message.
    static REPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Err(e) = vm.signal_msi(msi) {
        if !REPORTED.swap(true, Ordering::Relaxed) {
            log::error!(
                "KVM_SIGNAL_MSI (address {address:#x}, data {data:#x}) failed: {e} (the \
                 interrupt is lost; further failures are not reported)"
            );
        }
    }
}

impl MsiSink for KvmMsi {
    fn send(&self, address: u64, data: u32) {
        signal_msi(&self.0, address, data);
    }
}

/// Routes kept per VM: enough for every vector of every device of a large machine; past
/// it the least recently used route is recycled.
const MSI_IRQFD_ROUTES: usize = 256;

struct MsiRoute {
    fd: EventFd,
    gsi: u32,
    last_use: u64,
}

#[derive(Default)]
struct MsiRoutes {
    by_message: HashMap<(u64, u32), MsiRoute>,
    clock: u64,
}

/// Counters of how MSI messages went out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MsiStats {
    /// Delivered by writing an irqfd (no VM ioctl).
    pub irqfd: u64,
    /// Delivered by KVM_SIGNAL_MSI (no route could be made).
    pub signal_msi: u64,
    /// Routes (GSI + irqfd) created.
    pub routes_made: u64,
}

/// MSI/MSI-X through irqfds on GSI routes: the first message to an (address, data) gets a
/// GSI routed to it and an irqfd on that GSI; that message and every later one is an
/// eventfd write, which KVM injects without a VM ioctl from the device thread. Masking and
/// pending bits are the device model's (`Msix`): only deliverable messages arrive here, so
/// a guest that reprograms a vector's address or data simply uses another route.
pub struct KvmMsiIrqfd {
    router: Arc<GsiRouter>,
    routes: Mutex<MsiRoutes>,
    irqfd: AtomicU64,
    signal: AtomicU64,
    made: AtomicU64,
    /// Print the counters when dropped (MACHINA_TRACE).
    trace: bool,
}

impl KvmMsiIrqfd {
    pub fn new(router: Arc<GsiRouter>, trace: bool) -> Self {
        Self {
            router,
            routes: Mutex::new(MsiRoutes::default()),
            irqfd: AtomicU64::new(0),
            signal: AtomicU64::new(0),
            made: AtomicU64::new(0),
            trace,
        }
    }

    pub fn stats(&self) -> MsiStats {
        MsiStats {
            irqfd: self.irqfd.load(Ordering::Relaxed),
            signal_msi: self.signal.load(Ordering::Relaxed),
            routes_made: self.made.load(Ordering::Relaxed),
        }
    }

    fn make_route(&self, address: u64, data: u32) -> Option<MsiRoute> {
        let fd = EventFd::new(libc::EFD_NONBLOCK).ok()?;
        let gsi = self.router.add_msi(address, data).ok()?;
        if self.router.vm().register_irqfd(&fd, gsi).is_err() {
            self.router.remove_msi(gsi);
            return None;
        }
        self.made.fetch_add(1, Ordering::Relaxed);
        Some(MsiRoute {
            fd,
            gsi,
            last_use: 0,
        })
    }

    fn drop_route(&self, route: MsiRoute) {
        let _ = self.router.vm().unregister_irqfd(&route.fd, route.gsi);
        self.router.remove_msi(route.gsi);
    }
}

impl MsiSink for KvmMsiIrqfd {
    fn send(&self, address: u64, data: u32) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.clock += 1;
        let now = routes.clock;
        if !routes.by_message.contains_key(&(address, data)) {
            if routes.by_message.len() >= MSI_IRQFD_ROUTES {
                let oldest = routes
                    .by_message
                    .iter()
                    .min_by_key(|(_, r)| r.last_use)
                    .map(|(k, _)| *k);
                if let Some(route) = oldest.and_then(|k| routes.by_message.remove(&k)) {
                    self.drop_route(route);
                }
            }
            match self.make_route(address, data) {
                Some(route) => {
                    routes.by_message.insert((address, data), route);
                }
                None => {
                    self.signal.fetch_add(1, Ordering::Relaxed);
                    drop(routes);
                    signal_msi(self.router.vm(), address, data);
                    return;
                }
            }
        }
        if let Some(route) = routes.by_message.get_mut(&(address, data)) {
            route.last_use = now;
            // The eventfd counter cannot overflow at one write per interrupt.
            let _ = route.fd.write(1);
            self.irqfd.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for KvmMsiIrqfd {
    fn drop(&mut self) {
        let routes = std::mem::take(
            &mut self
                .routes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .by_message,
        );
        for (_, route) in routes {
            self.drop_route(route);
        }
        if self.trace {
            let s = self.stats();
            eprintln!(
                "machina-trace: msi irqfd={} signal-msi={} routes={}",
                s.irqfd, s.signal_msi, s.routes_made
            );
        }
    }
}

/// Queue notifications as KVM ioeventfds (KVM_IOEVENTFD): a guest write to a notify address
/// signals the queue's EventFd inside KVM, without an exit to the VMM.
pub struct KvmIoEvents(pub Arc<VmFd>);

fn ioevent_call(
    event: &IoEvent,
    assign: bool,
    vm: &VmFd,
    fd: &EventFd,
) -> std::result::Result<(), kvm_ioctls::Error> {
    let addr = match event.space {
        IoEventSpace::Pio => IoEventAddress::Pio(event.addr),
        IoEventSpace::Mmio => IoEventAddress::Mmio(event.addr),
    };
    // The datamatch type's size is the access length KVM matches.
    macro_rules! call {
        ($d:expr) => {
            if assign {
                vm.register_ioevent(fd, &addr, $d)
            } else {
                vm.unregister_ioevent(fd, &addr, $d)
            }
        };
    }
    let event_name = match event.space {
        IoEventSpace::Pio => "kvm_set_ioeventfd_pio",
        IoEventSpace::Mmio => "kvm_set_ioeventfd_mmio",
    };
    log::trace!(
        target: &format!("{}{event_name}", devices::logging::TRACE_PREFIX),
        "fd: {} @{:#x} val={:#x} assign: {} size: {} match: {}",
        std::os::fd::AsRawFd::as_raw_fd(fd),
        event.addr,
        event.datamatch.unwrap_or(0),
        u8::from(assign),
        event.len,
        u8::from(event.datamatch.is_some())
    );
    match (event.len, event.datamatch) {
        (0, None) => call!(NoDatamatch),
        (1, Some(d)) => call!(d as u8),
        (2, Some(d)) => call!(d as u16),
        (4, Some(d)) => call!(d as u32),
        (8, Some(d)) => call!(d),
        _ => Err(kvm_ioctls::Error::new(libc::EINVAL)),
    }
}

impl IoEventRegistrar for KvmIoEvents {
    fn register(&self, event: &IoEvent, fd: &EventFd) -> std::io::Result<()> {
        ioevent_call(event, true, &self.0, fd)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    fn unregister(&self, event: &IoEvent, fd: &EventFd) -> std::io::Result<()> {
        ioevent_call(event, false, &self.0, fd)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_ioctls::{Kvm, VcpuFd};
    use std::time::{Duration, Instant};

    const APIC_SVR: usize = 0xf0;
    const APIC_IRR: usize = 0x200;

    fn reg(lapic: &kvm_bindings::kvm_lapic_state, off: usize) -> u32 {
        let b = &lapic.regs[off..off + 4];
        u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
    }

    fn irr_has(vcpu: &VcpuFd, vector: u8) -> bool {
        let lapic = vcpu.get_lapic().expect("KVM_GET_LAPIC");
        let off = APIC_IRR + usize::from(vector / 32) * 0x10;
        reg(&lapic, off) & (1 << (vector % 32)) != 0
    }

    /// Waits (bounded: a hang guard, not a timing assertion) for KVM's irqfd injection.
    fn wait_irr(vcpu: &VcpuFd, vector: u8) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if irr_has(vcpu, vector) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn msi_goes_out_through_an_irqfd_route_into_the_lapic() {
        let Ok(kvm) = Kvm::new() else {
            eprintln!("SKIP: no /dev/kvm");
            return;
        };
        let vm = Arc::new(kvm.create_vm().expect("VM"));
        vm.create_irq_chip().expect("irqchip");
        let router = Arc::new(GsiRouter::new(vm.clone()).expect("routes"));
        let vcpu = vm.create_vcpu(0).expect("vCPU");
        // Software-enable the LAPIC (SVR bit 8) so that it accepts fixed interrupts.
        let mut lapic = vcpu.get_lapic().expect("KVM_GET_LAPIC");
        let svr = (reg(&lapic, APIC_SVR) | 0x1ff).to_le_bytes();
        for (i, b) in svr.iter().enumerate() {
            lapic.regs[APIC_SVR + i] = *b as _;
        }
        vcpu.set_lapic(&lapic).expect("KVM_SET_LAPIC");

        let sink = KvmMsiIrqfd::new(router.clone(), false);
        // Physical destination APIC 0, fixed delivery, vector 0x45.
        sink.send(0xfee0_0000, 0x45);
        assert!(wait_irr(&vcpu, 0x45), "vector 0x45 reached the LAPIC");
        sink.send(0xfee0_0000, 0x45);
        sink.send(0xfee0_0000, 0x46);
        assert!(wait_irr(&vcpu, 0x46), "vector 0x46 reached the LAPIC");
        let stats = sink.stats();
        assert_eq!(stats.irqfd, 3, "every message went through an irqfd");
        assert_eq!(stats.signal_msi, 0);
        assert_eq!(stats.routes_made, 2, "one route per message, reused");
        assert_eq!(router.msi_routes(), 2);
        drop(sink);
        assert_eq!(router.msi_routes(), 0, "the sink's routes go with it");
    }

    fn ioapic_irr(vm: &VmFd) -> u32 {
        let mut chip = kvm_bindings::kvm_irqchip {
            chip_id: kvm_bindings::KVM_IRQCHIP_IOAPIC,
            ..Default::default()
        };
        vm.get_irqchip(&mut chip).expect("KVM_GET_IRQCHIP");
        // SAFETY: chip_id IOAPIC selects the ioapic member of the union.
        unsafe { chip.chip.ioapic.irr }
    }

    fn clear_ioapic_irr(vm: &VmFd) {
        let mut chip = kvm_bindings::kvm_irqchip {
            chip_id: kvm_bindings::KVM_IRQCHIP_IOAPIC,
            ..Default::default()
        };
        vm.get_irqchip(&mut chip).expect("KVM_GET_IRQCHIP");
        chip.chip.ioapic.irr = 0;
        vm.set_irqchip(&chip).expect("KVM_SET_IRQCHIP");
    }

    fn wait_for(what: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if what() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn intx_goes_out_through_a_resampling_irqfd() {
        let Ok(kvm) = Kvm::new() else {
            eprintln!("SKIP: no /dev/kvm");
            return;
        };
        let vm = Arc::new(kvm.create_vm().expect("VM"));
        vm.create_irq_chip().expect("irqchip");
        let _router = GsiRouter::new(vm.clone()).expect("routes");
        let sink = KvmIntxIrqfd::new(vm.clone()).expect("sink");
        let pin = 1u32 << 10;
        sink.set_level(10, true);
        assert!(
            wait_for(|| ioapic_irr(&vm) & pin != 0),
            "GSI 10 raised by its irqfd"
        );
        assert_eq!(sink.lines.lock().unwrap().len(), 1, "one irqfd for the GSI");
        // What KVM does at the guest's EOI: lower the line, signal the resample fd. The
        // device still asserts, so the line comes back.
        clear_ioapic_irr(&vm);
        sink.lines.lock().unwrap()[&10].resample.write(1).unwrap();
        assert!(wait_for(|| sink.eois_handled() == 1));
        assert!(
            wait_for(|| ioapic_irr(&vm) & pin != 0),
            "re-raised after EOI"
        );
        // The device lowers its level (ISR read); the next EOI leaves the line low.
        sink.set_level(10, false);
        clear_ioapic_irr(&vm);
        sink.lines.lock().unwrap()[&10].resample.write(1).unwrap();
        // Once the resample thread has handled that EOI, the line is still low.
        assert!(wait_for(|| sink.eois_handled() == 2));
        assert_eq!(
            ioapic_irr(&vm) & pin,
            0,
            "not re-raised once the device is idle"
        );
        // Dropping the sink stops its thread and leaves no irqfd.
        drop(sink);
    }

    #[test]
    fn msi_routes_are_recycled_past_the_limit() {
        let Ok(kvm) = Kvm::new() else {
            eprintln!("SKIP: no /dev/kvm");
            return;
        };
        let vm = Arc::new(kvm.create_vm().expect("VM"));
        vm.create_irq_chip().expect("irqchip");
        let router = Arc::new(GsiRouter::new(vm).expect("routes"));
        let sink = KvmMsiIrqfd::new(router.clone(), false);
        // A guest reprogramming its vectors endlessly cannot exhaust the GSI space.
        for data in 0..(MSI_IRQFD_ROUTES as u32 + 10) {
            sink.send(0xfee0_0000, 0x30 + (data % 0xc0) + (data / 0xc0) * 0x1000);
        }
        assert_eq!(router.msi_routes(), MSI_IRQFD_ROUTES);
        assert_eq!(sink.stats().irqfd, MSI_IRQFD_ROUTES as u64 + 10);
    }
}
