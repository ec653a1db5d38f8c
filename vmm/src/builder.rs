//! Builds a machine from its plan, and only from its plan: every device mapped here is one
//! the plan lists, at the resources the plan gives it.

use crate::acpi::{self, AcpiConfig};
use crate::boot::{self, BootSpec, Entry};
use crate::cpuid;
use crate::kvm_vm::KvmVm;
use crate::vcpu::setup::{setup_boot_cpu, setup_common, write_boot_tables};
use devices::bus::{Bus, SharedDevice};
use devices::kinds;
use devices::legacy::cmos::Cmos;
use devices::legacy::kind::{IsaContext, RtcInputs};
use devices::legacy::serial::SerialPort;
use devices::legacy::serial::SharedWriter;
use devices::legacy::IrqLine;
use devices::lifecycle::Lifecycle;
use devices::pci::{ConfigPorts, FirmwareLayout, PciConfigIo, PciHost, SharedHost};
use kvm_ioctls::{Kvm, VcpuFd};
use machine::{Family, IsaDevicePlan, Plan};
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Vm(#[from] crate::kvm_vm::KvmVmError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    #[error(transparent)]
    VcpuSetup(#[from] crate::vcpu::setup::SetupError),
    #[error(transparent)]
    Firmware(#[from] crate::firmware::FirmwareError),
    #[error(transparent)]
    Cpuid(#[from] crate::cpuid::CpuidError),
    #[error("cannot create vCPU {index}: {source}")]
    CreateVcpu {
        index: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot set up the interrupt of {device}: {source}")]
    Interrupt {
        device: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{device}: cannot map {what} at {base:#x}: {source}")]
    Map {
        device: String,
        what: &'static str,
        base: u64,
        #[source]
        source: devices::bus::BusError,
    },
    #[error("{device}: the plan gives it no {what}")]
    MissingResource { device: String, what: &'static str },
    #[error(transparent)]
    Pci(#[from] devices::pci::PciError),
    #[error(transparent)]
    Isa(#[from] devices::legacy::kind::IsaError),
    #[error(transparent)]
    FwCfg(#[from] devices::legacy::fw_cfg::FwCfgError),
}

pub type Result<T> = std::result::Result<T, BuildError>;

/// A machine built from a plan, with its vCPUs created but not yet running.
pub struct BuiltMachine {
    pub vm: KvmVm,
    pub io: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub serial: Option<Arc<Mutex<SerialPort>>>,
    /// The RTC, whose RAM and time a reset carries over.
    pub rtc: Option<Arc<Mutex<Cmos>>>,
    pub vcpus: Vec<VcpuFd>,
    pub pci: Option<Arc<Mutex<devices::pci::PciHost>>>,
    /// What the firmware step programmed (bus numbers, windows, PM base), when booted.
    pub layout: Option<devices::pci::FirmwareLayout>,
    /// Virtio workers for the event loop, and the INTx forwarder of virtio functions.
    pub virtio: crate::virtio_devices::VirtioSet,
    pub intx_forwarder: Arc<crate::virtio_devices::IntxForwarder>,
}

/// Inputs besides the plan.
pub struct BuildInputs<'a> {
    pub console: SharedWriter,
    pub lifecycle: Lifecycle,
    /// What to boot; None leaves RAM empty and the vCPUs at reset (qtest-style).
    pub boot: Option<BootSpec<'a>>,
    /// Backends the plan's devices refer to.
    pub backends: &'a [crate::backends::Backend],
    /// Where guest RAM comes from (`-machine memory-backend=`).
    pub ram: crate::memory::RamBacking,
    /// Guest RAM of the incarnation a reset replaced: RAM keeps its contents over a
    /// system reset, as in QEMU (None at the first build).
    pub kept_ram: Option<crate::memory::GuestMemory>,
    /// Seconds the RTC runs ahead of the host's UTC clock (`-rtc base=`).
    pub rtc_offset: i64,
    /// The RTC's RAM and time before a reset (None at the first build).
    pub rtc_state: Option<devices::legacy::cmos::CmosState>,
    /// The clock the RTC runs on (`-rtc clock=`).
    pub rtc_clock: Arc<devices::timer::TimerQueue>,
    /// The boot order the CMOS shows firmware this build (`-boot once=` for the first
    /// build, then `order=`; QEMU's default "cad") and whether the floppy boot-sector check
    /// is on (not `-no-fd-bootchk`).
    pub boot_order: String,
    pub fd_bootchk: bool,
    /// Where ISA interrupt levels go instead of the in-kernel irqchip (qtest).
    pub isa_irq_sink: Option<Arc<dyn devices::pci::interrupt::IntxSink>>,
    /// Their open handles, kept across builds.
    pub open: &'a mut crate::virtio_devices::OpenBackends,
    /// What fw_cfg holds besides what the plan says.
    pub fw_cfg: crate::fw_cfg::FwCfgInputs,
    /// `-cpu MODEL`.
    pub cpu_model: crate::cpuid::CpuModel,
    /// `-cpu MODEL,+feat,-feat,...`: features turned on or off in the guest CPUID.
    pub cpu_features: &'a crate::cpuid::FeatureRequest,
    /// The system firmware (`-bios`, flash); the `none` board has none, as in QEMU.
    pub firmware: Option<&'a crate::firmware::Firmware>,
}

fn map(
    bus: &Bus,
    base: u64,
    size: u64,
    dev: &SharedDevice,
    device: &str,
    what: &'static str,
) -> Result<()> {
    bus.insert(base, size, dev.clone())
        .map_err(|source| BuildError::Map {
            device: device.to_string(),
            what,
            base,
            source,
        })
}

fn map_io_ranges(bus: &Bus, isa: &IsaDevicePlan, dev: &SharedDevice) -> Result<()> {
    if isa.io.is_empty() {
        return Err(BuildError::MissingResource {
            device: isa.type_name.clone(),
            what: "I/O ports",
        });
    }
    for r in &isa.io {
        map(bus, r.base, r.size, dev, &isa.type_name, "I/O ports")?;
    }
    Ok(())
}

/// An eventfd wired to the in-kernel irqchip's `irq` (an ISA device's interrupt line).
fn isa_irqfd(vm: &KvmVm, irq: u32) -> std::io::Result<EventFd> {
    let evt = EventFd::new(libc::EFD_NONBLOCK)?;
    vm.fd
        .register_irqfd(&evt, irq)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    Ok(evt)
}

/// An ISA line driven by level into an irqfd: a rising edge injects (edge-triggered ISA
/// interrupts on the in-kernel PIC/IOAPIC).
struct IrqfdLine {
    evt: EventFd,
    level: std::sync::atomic::AtomicBool,
}

impl IrqLine for IrqfdLine {
    fn set_level(&self, level: bool) {
        let was = self.level.swap(level, std::sync::atomic::Ordering::SeqCst);
        if level && !was {
            // A full counter still signals KVM: nothing is lost by a failed write.
            let _ = self.evt.write(1);
        }
    }
}

/// An ISA line whose level goes to a sink (the qtest view of the interrupt controller).
struct SinkLine {
    sink: Arc<dyn devices::pci::interrupt::IntxSink>,
    gsi: u32,
}

impl IrqLine for SinkLine {
    fn set_level(&self, level: bool) {
        self.sink.set_level(self.gsi, level);
    }
}

/// The ISA devices of the plan that have a model, mapped at the plan's ports; the first
/// serial port (the console's) comes back too.
struct IsaDevices {
    serial: Option<Arc<Mutex<SerialPort>>>,
    rtc: Option<Arc<Mutex<Cmos>>>,
    /// The DSDT describes these and nothing else.
    modelled: Vec<IsaDevicePlan>,
}

fn build_isa(
    vm: &KvmVm,
    io: &Bus,
    plan: &Plan,
    inputs: &mut BuildInputs,
    board_cmos: &[(u8, u8)],
) -> Result<IsaDevices> {
    let mut serial = None;
    let mut rtc = None;
    let mut modelled = Vec::new();
    let mut console = Some(inputs.console.clone());
    let mut fw_cfg = Some(crate::fw_cfg::for_plan(plan, &vm.memory, &inputs.fw_cfg)?);
    let irq_line = |irq| isa_irqfd(vm, irq);
    let sink = inputs.isa_irq_sink.clone();
    let level_line = |irq| -> std::io::Result<Arc<dyn IrqLine>> {
        Ok(match &sink {
            Some(sink) => Arc::new(SinkLine {
                sink: sink.clone(),
                gsi: irq,
            }),
            None => Arc::new(IrqfdLine {
                evt: isa_irqfd(vm, irq)?,
                level: Default::default(),
            }),
        })
    };
    for isa in &plan.isa {
        // Entries without a kind: the PICs, PIT and IOAPIC (KVM's in-kernel models), the
        // ports the PCI host and the PM function decode themselves (config ports, reset
        // control, APM, GPE0) and devices with no model yet (HPET, vmport, DMA, ...).
        let Some(kind) = devices::kinds::isa_kind(&isa.type_name) else {
            continue;
        };
        let built = kind.build(&mut IsaContext {
            device: isa,
            plan,
            lifecycle: &inputs.lifecycle,
            irq_line: &irq_line,
            level_line: &level_line,
            console: &mut console,
            rtc: RtcInputs {
                offset: inputs.rtc_offset,
                clock: inputs.rtc_clock.clone(),
                state: inputs.rtc_state.take(),
                boot_order: inputs.boot_order.clone(),
                fd_bootchk: inputs.fd_bootchk,
            },
            board_cmos,
            fw_cfg: &mut fw_cfg,
        })?;
        map_io_ranges(io, isa, &built.device)?;
        serial = serial.or(built.console);
        rtc = rtc.or(built.rtc);
        modelled.push(isa.clone());
    }
    Ok(IsaDevices {
        serial,
        rtc,
        modelled,
    })
}

/// The PCI host with every function of the plan (virtio ones with their backends), its
/// interrupts wired to KVM and its config ports mapped.
fn build_pci(
    vm: &KvmVm,
    buses: (&Arc<Bus>, &Arc<Bus>),
    plan: &Plan,
    inputs: &mut BuildInputs,
    intx_forwarder: &Arc<crate::virtio_devices::IntxForwarder>,
    virtio: &mut crate::virtio_devices::VirtioSet,
    ide: &mut crate::ide_devices::IdeSet,
) -> Result<Option<SharedHost>> {
    let (io, mmio) = buses;
    if plan.family == Family::None {
        return Ok(None);
    }
    let lifecycle = inputs.lifecycle.clone();
    let mut virtio_external = crate::virtio_devices::factory(
        inputs.backends,
        plan,
        &vm.memory,
        intx_forwarder,
        virtio,
        inputs.open,
        Some(Arc::new(crate::interrupts::KvmIoEvents(vm.fd.clone()))),
    );
    // IDE controllers with drives get their images and guest memory here.
    let ide_memory: Arc<dyn devices::ide::DmaMemory> = Arc::new(vm.memory.clone());
    let mut external = |f: &machine::PciFunctionPlan| {
        ide.build(plan, f, ide_memory.clone(), &lifecycle)
            .or_else(|| virtio_external(f))
    };
    let mut host = PciHost::from_plan_with(
        plan,
        inputs.lifecycle.clone(),
        io.clone(),
        mmio.clone(),
        devices::kinds::kind_of,
        &mut external,
    )?;
    // INTx through resampling irqfds; KVM_IRQ_LINE if the thread cannot start.
    let intx: Arc<dyn devices::pci::interrupt::IntxSink> =
        match crate::interrupts::KvmIntxIrqfd::new(vm.fd.clone()) {
            Ok(sink) => Arc::new(sink),
            Err(_) => Arc::new(crate::interrupts::KvmIntx(vm.fd.clone())),
        };
    host.set_intx_sink(intx);
    // The host bridge remaps memory (PAM, SMRAM) through the machine's view.
    host.set_memory_view(vm.view.clone());
    // The legacy IDE channels' IRQ 14 and 15 (edge-triggered ISA lines).
    let mut isa_lines = Vec::new();
    for (_, _, irq) in devices::ide::piix::LEGACY {
        let evt = isa_irqfd(vm, irq).map_err(|source| BuildError::Interrupt {
            device: "IDE".to_string(),
            source,
        })?;
        isa_lines.push((irq, evt));
    }
    host.set_isa_irq_sink(Arc::new(crate::ide_devices::EdgeIrqfds(isa_lines)));
    host.set_msi_sink(Arc::new(crate::interrupts::KvmMsiIrqfd::new(
        vm.gsi.clone(),
        std::env::var_os("MACHINA_TRACE").is_some(),
    )));
    let host = host.into_shared();
    let ports = ConfigPorts::from_plan(plan).ok_or_else(|| BuildError::MissingResource {
        device: "PCI host".to_string(),
        what: "config ports",
    })?;
    let config_io: SharedDevice = Arc::new(Mutex::new(PciConfigIo::new(host.clone(), ports)));
    for r in ports.ranges() {
        map(io, r.base, r.size, &config_io, "PCI host", "config ports")?;
    }
    Ok(Some(host))
}

/// The vCPUs of the plan with their CPUID; KVM's vCPU id is the APIC id, which the
/// topology spaces out.
fn create_vcpus(
    vm: &KvmVm,
    plan: &Plan,
    model: cpuid::CpuModel,
    features: &cpuid::FeatureRequest,
) -> Result<Vec<VcpuFd>> {
    let mut vcpus = Vec::new();
    for index in 0..plan.cpus {
        let fd = vm
            .fd
            .create_vcpu(u64::from(plan.topology.apic_id(index)))
            .map_err(|source| BuildError::CreateVcpu { index, source })?;
        let mut cpuid =
            cpuid::for_vcpu(&vm.supported_cpuid, model, features, index, &plan.topology)?;
        cpuid::apply_features(&mut cpuid, &vm.supported_cpuid, features);
        fd.set_cpuid2(&cpuid)
            .map_err(|source| BuildError::CreateVcpu { index, source })?;
        setup_common(&fd)?;
        vcpus.push(fd);
    }
    Ok(vcpus)
}

/// What firmware would do before handing over to the kernel: the firmware step on the PCI
/// host and the ACPI tables describing its result (none without a PM block, e.g.
/// `pc,acpi=off`, as with QEMU). Returns the layout and the RSDP address.
fn firmware(
    vm: &KvmVm,
    plan: &Plan,
    host: &SharedHost,
    modelled_isa: &[IsaDevicePlan],
) -> Result<(FirmwareLayout, Option<u64>)> {
    let layout = host
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .firmware_init(plan)?;
    let (Some(pm_base), Some((gpe0_base, gpe0_len))) = (layout.pm_base, layout.gpe0) else {
        return Ok((layout, None));
    };
    let missing = |what| BuildError::MissingResource {
        device: "ACPI".to_string(),
        what,
    };
    let sci_irq = layout
        .sci_irq
        .ok_or_else(|| missing("SCI interrupt (sci-irq)"))?;
    let ioapic = plan
        .memory
        .region(devices::pci::firmware::IOAPIC_REGION)
        .map(|r| r.range.base as u32)
        .ok_or_else(|| missing("IOAPIC region"))?;
    let cfg = AcpiConfig {
        family: plan.family,
        cpus: plan.cpus,
        max_cpus: plan.max_cpus,
        topology: plan.topology,
        pm_base,
        gpe0: (gpe0_base, gpe0_len.min(255) as u8),
        sci_irq,
        ioapic,
        isa_bridge: plan
            .pci
            .iter()
            .find(|f| plan.bus(&f.bus).is_some_and(|b| b.is_root) && kinds::kind_of(f).isa_bridge())
            .map(|f| f.devfn()),
        config_ports: ConfigPorts::from_plan(plan)
            .map(|p| p.span())
            .ok_or_else(|| missing("PCI config ports"))?,
        ecam: layout.ecam,
        last_bus: layout.last_bus,
        pci_hole32: plan.memory.pci_hole32,
        pci_hole64: plan.memory.pci_hole64,
        isa: modelled_isa.to_vec(),
        prt: acpi::root_prt(plan.family, &layout.pirq_irqs, sci_irq),
        bridges: plan
            .buses
            .iter()
            .find(|b| b.is_root)
            .map(|root| acpi::bridge_tree(plan, &root.id))
            .unwrap_or_default(),
        numa: plan.numa.clone(),
        ram_below_4g: plan.memory.ram_below_4g,
        device_memory: plan.memory.device_memory,
        native_pcie_hotplug: !plan.acpi_bridge_hotplug,
        pci_hotplug: devices::pci::acpi_hotplug::PCIHP
            .find(plan)
            .and_then(|d| d.io.first())
            .and_then(|r| acpi::PciHotplugAml::from_plan(plan, r.base as u16)),
        cpu_hotplug: devices::chipset::cpu_hotplug::CPUHP
            .find(plan)
            .and_then(|d| d.io.first())
            .map(|r| r.base as u16),
    };
    let rsdp = acpi::write_tables(&vm.memory, &cfg)?;
    Ok((layout, Some(rsdp)))
}

pub fn build(kvm: &Kvm, plan: &Plan, mut inputs: BuildInputs) -> Result<BuiltMachine> {
    let system_firmware = inputs
        .firmware
        .filter(|_| plan.family != machine::Family::None);
    if let Some(f) = system_firmware {
        if matches!(f, crate::firmware::Firmware::Flash(_)) {
            crate::firmware::check_readonly_memory(kvm)?;
        }
    }
    // With the firmware step ahead (a kernel booted directly), the first memslots take the
    // shape it leaves and the view is held until the build is done: the models publish
    // their reset state and then the firmware's, and KVM sees only the final diff, empty.
    // A memslot change after the irqchip exists would wait out an SRCU grace period
    // (4-10 ms) before the first guest instruction.
    let firmware_step = inputs.boot.is_some();
    let layers = plan
        .pci
        .iter()
        .flat_map(|f| match firmware_step {
            true => kinds::kind_of(f).firmware_memory_layers(f, plan),
            false => kinds::kind_of(f).reset_memory_layers(f, plan),
        })
        .collect();
    let vm = KvmVm::new(
        kvm,
        &plan.memory,
        &inputs.ram,
        inputs.kept_ram.take(),
        layers,
    )?;
    let hold = vm.view.hold();
    let io = Arc::new(Bus::new());
    let mmio = Arc::new(Bus::new());
    if let Some(f) = system_firmware {
        f.install(&vm.view, &mmio)?;
    }
    // IDE drives first: the CMOS holds their geometry.
    let mut ide = crate::ide_devices::IdeSet::open(plan, inputs.backends)?;
    let isa = build_isa(&vm, &io, plan, &mut inputs, &ide.cmos_bytes())?;

    let intx_forwarder = Arc::new(crate::virtio_devices::IntxForwarder::new().map_err(
        |source| BuildError::Interrupt {
            device: "virtio".to_string(),
            source,
        },
    )?);
    let mut virtio = crate::virtio_devices::VirtioSet::default();
    let pci = build_pci(
        &vm,
        (&io, &mmio),
        plan,
        &mut inputs,
        &intx_forwarder,
        &mut virtio,
        &mut ide,
    )?;
    let vcpus = create_vcpus(&vm, plan, inputs.cpu_model, inputs.cpu_features)?;

    let mut firmware_layout = None;
    if let Some(spec) = inputs.boot.take() {
        let rsdp = match &pci {
            Some(host) => {
                // The firmware step's remapping (PAM) reaches KVM as one memslot diff.
                let _hold = vm.view.hold();
                let (layout, rsdp) = firmware(&vm, plan, host, &isa.modelled)?;
                firmware_layout = Some(layout);
                rsdp
            }
            None => None,
        };
        let spec = BootSpec { rsdp, ..spec };
        let entry: Entry = boot::load(&vm.memory, &plan.memory, &spec)?;
        write_boot_tables(&vm.memory, entry)?;
        if let Some(bsp) = vcpus.first() {
            setup_boot_cpu(bsp, entry)?;
        }
    } else if system_firmware.is_some() {
        // The firmware runs from the reset vector; APs wait for INIT/SIPI.
        // EDX holds the processor signature (CPUID leaf 1 EAX), as QEMU sets it.
        let signature = vm
            .supported_cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == 1)
            .map_or(0x600, |e| e.eax);
        if let Some(bsp) = vcpus.first() {
            crate::vcpu::setup::setup_reset_vector(bsp, signature)?;
        }
    }

    // Before any vCPU runs: the memslots now follow the view again.
    drop(hold);
    Ok(BuiltMachine {
        vm,
        io,
        mmio,
        serial: isa.serial,
        rtc: isa.rtc,
        vcpus,
        pci,
        layout: firmware_layout,
        virtio,
        intx_forwarder,
    })
}
