//! vCPU hot-plug on the running machine, as QEMU's x86 machines do it: `device_add` of the
//! machine's CPU type into a free `query-hotpluggable-cpus` slot creates the KVM vCPU (with
//! the APIC id the topology gives the slot) and its thread, which waits in KVM for the
//! guest's INIT/SIPI, and announces it through the ACPI CPU hot-plug block (GPE0 bit 2).
//! `device_del` asks the guest to release it; when the guest ejects it the thread stops and
//! DEVICE_DELETED follows. KVM cannot destroy a vCPU, so an ejected vCPU's fd is parked and
//! reused when the same slot is filled again.

use crate::control::{Controller, VmState};
use crate::kvm_vm::KvmVm;
use crate::vcpu::{RunGate, Vcpu};
use devices::bus::Bus;
use devices::lifecycle::{Lifecycle, Request};
use kvm_ioctls::VcpuFd;
use machine::Plan;
use qmp::{Map, QmpError, Value};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmm_sys_util::signal::{Killable, SIGRTMIN};

/// A refused CPU `device_add`/`device_del`, with QEMU's texts.
#[derive(Debug, thiserror::Error)]
pub enum CpuPlugError {
    #[error("Invalid CPU type, expected cpu type: '{0}'")]
    WrongType(String),
    #[error("CPU {0} is not set")]
    NotSet(&'static str),
    #[error("Invalid CPU {name}: {value} must be in range 0:{max}")]
    OutOfRange {
        name: &'static str,
        value: i64,
        max: u32,
    },
    #[error("Parameter '{0}' expects integer")]
    NotInteger(&'static str),
    #[error(
        "Invalid CPU [socket: {socket}, die: {die}, core: {core}, thread: {thread}] with APIC ID {apic_id}, valid index range 0:{last}"
    )]
    NoSlot {
        socket: u32,
        die: u32,
        core: u32,
        thread: u32,
        apic_id: u32,
        last: u32,
    },
    #[error("CPU[{index}] with APIC ID {apic_id} exists")]
    Exists { index: u32, apic_id: u32 },
    #[error("Duplicate device ID '{0}'")]
    DuplicateId(String),
    #[error("CPU hotplug not supported without ACPI")]
    NoAcpi,
    #[error("Boot CPU is unpluggable")]
    BootCpu,
    #[error("Device {0} is already in the process of unplug")]
    Pending(String),
    #[error("acpi: device unplug request for not supported device type: {0}")]
    LegacyUnplug(String),
}

impl From<CpuPlugError> for QmpError {
    fn from(e: CpuPlugError) -> Self {
        QmpError::generic(e.to_string())
    }
}

/// A CPU added at run time and present now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotCpu {
    pub id: Option<String>,
}

/// Whether `driver` names an x86 CPU type (QEMU's `*-x86_64-cpu`).
pub fn is_cpu_driver(driver: &str) -> bool {
    driver.ends_with("-x86_64-cpu")
}

/// The machine's CPU type (what query-hotpluggable-cpus reports).
pub fn cpu_type(state: &VmState) -> &'static str {
    state
        .config
        .cpu_model
        .unwrap_or(crate::cpuid::CpuModel::Host)
        .type_name()
}

/// Whether CPU `index` of `plan` is present: a boot CPU or one added since.
pub fn present(state: &VmState, plan: &Plan, index: u32) -> bool {
    index < plan.cpus || state.hot_cpus.contains_key(&index)
}

/// The QOM path of present CPU `index` (QEMU: boot CPUs are unattached, `device_add`ed ones
/// peripheral, by id or anonymous).
pub fn qom_path(state: &VmState, index: u32) -> String {
    match state.hot_cpus.get(&index) {
        Some(HotCpu { id: Some(id) }) => format!("/machine/peripheral/{id}"),
        Some(HotCpu { id: None }) => format!("/machine/peripheral-anon/device[{index}]"),
        None => format!("/machine/unattached/device[{index}]"),
    }
}

fn id_arg(args: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, CpuPlugError> {
    match args.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or(CpuPlugError::NotInteger(name)),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| CpuPlugError::NotInteger(name)),
        Some(_) => Err(CpuPlugError::NotInteger(name)),
    }
}

/// x86_cpu_pre_plug's checks of a CPU `device_add` on the running machine: the slot index
/// it fills.
pub fn check_add(state: &VmState, plan: &Plan, args: &Map<String, Value>) -> Result<u32, QmpError> {
    let driver = args.get("driver").and_then(Value::as_str).unwrap_or("");
    let expected = cpu_type(state);
    if driver != expected {
        return Err(CpuPlugError::WrongType(expected.to_string()).into());
    }
    let topo = &plan.topology;
    let field = |name: &'static str, count: u32, optional: bool| -> Result<u32, CpuPlugError> {
        match id_arg(args, name)? {
            None if optional => Ok(0),
            None => Err(CpuPlugError::NotSet(name)),
            Some(v) if v < 0 => Err(CpuPlugError::NotSet(name)),
            Some(v) if v > i64::from(count.max(1) - 1) => Err(CpuPlugError::OutOfRange {
                name,
                value: v,
                max: count.max(1) - 1,
            }),
            Some(v) => Ok(v as u32),
        }
    };
    // die-id stays optional with one die per socket (QEMU 4.0 compatibility).
    let socket = field("socket-id", topo.sockets, false)?;
    let die = field("die-id", topo.dies, topo.dies <= 1)?;
    let core = field("core-id", topo.cores, false)?;
    let thread = field("thread-id", topo.threads, false)?;
    let threads = topo.threads.max(1);
    let cores = topo.cores.max(1);
    let dies = topo.dies.max(1);
    let index = ((socket * dies + die) * cores + core) * threads + thread;
    let apic_id = topo.apic_id(index);
    let possible = plan.max_cpus.max(plan.cpus);
    if index >= possible {
        return Err(CpuPlugError::NoSlot {
            socket,
            die,
            core,
            thread,
            apic_id,
            last: possible - 1,
        }
        .into());
    }
    if present(state, plan, index) {
        return Err(CpuPlugError::Exists { index, apic_id }.into());
    }
    if let Some(id) = args.get("id").and_then(Value::as_str) {
        let taken = plan
            .pci
            .iter()
            .filter_map(|f| f.id.as_deref())
            .chain(plan.isa.iter().filter_map(|d| d.id.as_deref()))
            .chain(plan.virtio_ports.iter().filter_map(|p| p.id.as_deref()))
            .chain(state.hot_cpus.values().filter_map(|c| c.id.as_deref()))
            .any(|t| t == id);
        if taken {
            return Err(CpuPlugError::DuplicateId(id.to_string()).into());
        }
    }
    let acpi = state
        .pci
        .as_ref()
        .and_then(|h| h.lock().unwrap_or_else(|e| e.into_inner()).cpu_hotplug())
        .is_some();
    if !acpi {
        return Err(CpuPlugError::NoAcpi.into());
    }
    Ok(index)
}

/// The CPU `device_del` names: a hot-added CPU's id or QOM path, or the boot CPU's path.
fn cpu_named(state: &VmState, id: &str) -> Option<u32> {
    if id == "/machine/unattached/device[0]" {
        return Some(0);
    }
    state
        .hot_cpus
        .iter()
        .find(|(i, c)| c.id.as_deref() == Some(id) || qom_path(state, **i) == id)
        .map(|(i, _)| *i)
}

/// `device_del` of a hot-added CPU: ask the guest to release it (GPE0 bit 2, the slot's
/// remove flag). None when `id` is no CPU.
pub fn device_del(state: &mut VmState, id: &str) -> Option<Result<Value, QmpError>> {
    let index = cpu_named(state, id)?;
    if index == 0 {
        return Some(Err(CpuPlugError::BootCpu.into()));
    }
    let running = state.status == crate::control::RunState::Running;
    if let Some(expires) = state.unplug_pending.get(id) {
        if !running || Instant::now() < *expires {
            return Some(Err(CpuPlugError::Pending(id.to_string()).into()));
        }
    }
    let block = state
        .pci
        .as_ref()
        .and_then(|h| h.lock().unwrap_or_else(|e| e.into_inner()).cpu_hotplug());
    let Some(block) = block else {
        return Some(Err(CpuPlugError::NoAcpi.into()));
    };
    if block.lock().unwrap_or_else(|e| e.into_inner()).is_legacy() {
        let ty = cpu_type(state).to_string();
        return Some(Err(CpuPlugError::LegacyUnplug(ty).into()));
    }
    // QEMU's pending_deleted_expires_ms for ACPI: a repeat is accepted 1 ms later.
    state
        .unplug_pending
        .insert(id.to_string(), Instant::now() + Duration::from_millis(1));
    block
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .unplug_request(index);
    Some(Ok(Value::Null))
}

/// What a hot-added vCPU thread shares with the machine's other vCPUs.
pub struct VcpuContext<'a> {
    pub control: &'a Controller,
    pub vm: &'a KvmVm,
    pub plan: &'a Plan,
    pub io: &'a Arc<Bus>,
    pub mmio: &'a Arc<Bus>,
    pub lifecycle: &'a Lifecycle,
    pub gate: &'a Arc<RunGate>,
}

struct HotThread {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
    /// The thread leaves its vCPU fd here when it ends, for the slot's next occupant.
    fd: Arc<Mutex<Option<VcpuFd>>>,
}

/// The vCPU threads of hot-added CPUs and the fds of ejected ones, by CPU index.
#[derive(Default)]
pub struct HotCpus {
    threads: HashMap<u32, HotThread>,
    parked: HashMap<u32, VcpuFd>,
}

/// The calling thread's host thread id.
fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments, cannot fail and touches no memory.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

impl HotCpus {
    /// Threads that may be in the guest (for `stop`'s wait until all are parked).
    pub fn handles(&self) -> impl Iterator<Item = &JoinHandle<()>> {
        self.threads.values().map(|t| &t.handle)
    }

    /// Create (or take back from the parked ones) the vCPU of slot `index` and start its
    /// thread, which waits for INIT/SIPI. Returns its host thread id.
    pub fn start(&mut self, ctx: VcpuContext, index: u32) -> Result<i32, String> {
        let fd = match self.parked.remove(&index) {
            Some(fd) => {
                // A used vCPU goes back to the state of a fresh AP: waiting for INIT.
                let state = kvm_bindings::kvm_mp_state {
                    mp_state: kvm_bindings::KVM_MP_STATE_UNINITIALIZED,
                };
                fd.set_mp_state(state)
                    .map_err(|e| format!("cannot reset the parked vCPU {index}: {e}"))?;
                fd
            }
            None => {
                let fd = ctx
                    .vm
                    .fd
                    .create_vcpu(u64::from(ctx.plan.topology.apic_id(index)))
                    .map_err(|e| format!("cannot create vCPU {index}: {e}"))?;
                // The boot CPUs' model and -cpu features.
                let (model, features) = {
                    let config = &ctx.control.state().config;
                    (
                        config.cpu_model.unwrap_or(crate::cpuid::CpuModel::Host),
                        config.cpu_features.clone(),
                    )
                };
                let supported = &ctx.vm.supported_cpuid;
                let mut cpuid =
                    crate::cpuid::for_vcpu(supported, model, &features, index, &ctx.plan.topology)
                        .map_err(|e| e.to_string())?;
                crate::cpuid::apply_features(&mut cpuid, supported, &features);
                fd.set_cpuid2(&cpuid)
                    .map_err(|e| format!("cannot set vCPU {index}'s CPUID: {e}"))?;
                crate::vcpu::setup::setup_common(&fd).map_err(|e| e.to_string())?;
                fd
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let slot = Arc::new(Mutex::new(None));
        let mut vcpu = Vcpu {
            fd,
            index,
            io: ctx.io.clone(),
            mmio: ctx.mmio.clone(),
            view: ctx.vm.view.clone(),
            lifecycle: ctx.lifecycle.clone(),
            stop: stop.clone(),
            gate: ctx.gate.clone(),
            trace_start: None,
        };
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let back = slot.clone();
        let crash = ctx.lifecycle.clone();
        let handle = std::thread::Builder::new()
            .name(format!("CPU {index}/KVM"))
            .spawn(move || {
                let _ = tid_tx.send(gettid());
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| vcpu.run()));
                if outcome.is_err() {
                    eprintln!("machina: vCPU {index} stopped: internal error (panic)");
                    crash.request(Request::Crash);
                    return;
                }
                *back.lock().unwrap_or_else(|e| e.into_inner()) = Some(vcpu.fd);
            })
            .map_err(|e| format!("cannot start vCPU {index}'s thread: {e}"))?;
        let tid = tid_rx.recv().unwrap_or(0);
        self.threads.insert(
            index,
            HotThread {
                stop,
                handle,
                fd: slot,
            },
        );
        Ok(tid)
    }

    /// Stop CPU `index`'s thread (kicked out of KVM_RUN) and keep its fd for a re-add.
    pub fn park(&mut self, index: u32) {
        let Some(t) = self.threads.remove(&index) else {
            return;
        };
        if let Some(fd) = stop_thread(index, t) {
            self.parked.insert(index, fd);
        }
    }
}

fn stop_thread(index: u32, t: HotThread) -> Option<VcpuFd> {
    t.stop.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !t.handle.is_finished() && Instant::now() < deadline {
        let _ = t.handle.kill(SIGRTMIN());
        std::thread::sleep(Duration::from_millis(1));
    }
    if !t.handle.is_finished() {
        eprintln!("machina: vCPU {index} does not stop (blocked in a device); left behind");
        return None;
    }
    let _ = t.handle.join();
    let fd = t.fd.lock().unwrap_or_else(|e| e.into_inner()).take();
    fd
}

impl Drop for HotCpus {
    fn drop(&mut self) {
        for (index, t) in std::mem::take(&mut self.threads) {
            drop(stop_thread(index, t));
        }
    }
}

/// The run loop's half of a CPU `device_add`: start the vCPU, record it, announce it
/// (or, for a CPU kept over a reset, mark it present without an event).
pub fn plug(
    control: &Controller,
    cpus: &mut HotCpus,
    ctx: VcpuContext,
    index: u32,
    id: Option<String>,
    announce: bool,
) -> Result<Value, QmpError> {
    let block = {
        let state = control.state();
        state
            .pci
            .as_ref()
            .and_then(|h| h.lock().unwrap_or_else(|e| e.into_inner()).cpu_hotplug())
    };
    let Some(block) = block else {
        return Err(CpuPlugError::NoAcpi.into());
    };
    let tid = cpus.start(ctx, index).map_err(QmpError::generic)?;
    {
        let mut state = control.state();
        let slot = index as usize;
        if state.vcpu_thread_ids.len() <= slot {
            state.vcpu_thread_ids.resize(slot + 1, 0);
        }
        state.vcpu_thread_ids[slot] = tid;
        state.hot_cpus.insert(index, HotCpu { id });
    }
    let mut block = block.lock().unwrap_or_else(|e| e.into_inner());
    if announce {
        block.plug(index);
    } else {
        block.set_present(index);
    }
    Ok(Value::Null)
}

/// The guest ejected CPU `index`: park its vCPU, forget it, DEVICE_DELETED.
pub fn eject(control: &Controller, cpus: &mut HotCpus, index: u32) {
    cpus.park(index);
    let path = {
        let mut state = control.state();
        let path = qom_path(&state, index);
        let Some(cpu) = state.hot_cpus.remove(&index) else {
            return;
        };
        if let Some(t) = state.vcpu_thread_ids.get_mut(index as usize) {
            *t = 0;
        }
        if let Some(id) = &cpu.id {
            state.unplug_pending.remove(id.as_str());
        }
        (path, cpu.id)
    };
    let mut data = json!({ "path": path.0 });
    if let Some(id) = path.1 {
        data["device"] = json!(id);
    }
    control.emit("DEVICE_DELETED", data);
}
