//! NUMA topology: QEMU's `-numa node|cpu|dist` rules (hw/core/numa.c and machine.c's
//! `machine_set_cpu_numa_node`), applied in command-line order to the possible CPUs of the
//! resolved `-smp` topology, with QEMU's checks and texts. The result (each node's RAM, each
//! possible CPU's node, the distance matrix) is what `info numa`, QMP's CPU `node-id`, the
//! ACPI SRAT/SLIT and fw_cfg's NUMA item describe.

use crate::error::PlanError;
use crate::smp::CpuTopology;
use serde::{Deserialize, Serialize};

/// QEMU's MAX_NODES.
pub const MAX_NODES: u32 = 128;
/// The distance of a node to itself (ACPI SLIT).
pub const DISTANCE_MIN: u8 = 10;

/// One `-numa` option (or QMP `set-numa-node`), as given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum NumaOption {
    Node {
        #[serde(default)]
        nodeid: Option<u32>,
        #[serde(default)]
        cpus: Vec<u32>,
        /// `mem=` in bytes (legacy, refused by machine types without `numa_mem_supported`).
        #[serde(default)]
        mem: Option<u64>,
        #[serde(default)]
        memdev: Option<String>,
        /// The size of `memdev`, filled in by whoever knows the backends; `None` when no such
        /// memory backend exists.
        #[serde(default)]
        memdev_size: Option<u64>,
        #[serde(default)]
        initiator: Option<u32>,
    },
    Cpu {
        #[serde(default)]
        node_id: Option<u32>,
        #[serde(default)]
        socket_id: Option<u32>,
        #[serde(default)]
        die_id: Option<u32>,
        #[serde(default)]
        cluster_id: Option<u32>,
        #[serde(default)]
        core_id: Option<u32>,
        #[serde(default)]
        thread_id: Option<u32>,
    },
    Dist {
        src: u32,
        dst: u32,
        val: u32,
    },
    /// `hmat-lb`: one latency or bandwidth between an initiator and a target node.
    HmatLb {
        initiator: u32,
        target: u32,
        hierarchy: HmatHierarchy,
        data_type: HmatDataType,
        #[serde(default)]
        latency: Option<u64>,
        #[serde(default)]
        bandwidth: Option<u64>,
    },
    /// `hmat-cache`: a memory side cache of a node.
    HmatCache {
        node_id: u32,
        size: u64,
        level: u8,
        associativity: HmatAssociativity,
        policy: HmatPolicy,
        line: u16,
    },
}

/// Defines a QAPI enum: its values in QEMU's order (the order is the ACPI encoding).
macro_rules! qapi_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),*
        }

        impl $name {
            pub const NAMES: &'static [&'static str] = &[$($text),*];

            pub fn parse(text: &str) -> Option<Self> {
                [$(Self::$variant),*].into_iter().zip(Self::NAMES).find(|(_, n)| **n == text).map(|(v, _)| v)
            }

            /// The value ACPI's HMAT stores.
            pub fn code(self) -> u8 {
                self as u8
            }
        }
    };
}

qapi_enum!(
    /// QEMU's HmatLBMemoryHierarchy.
    HmatHierarchy { Memory = "memory", FirstLevel = "first-level", SecondLevel = "second-level", ThirdLevel = "third-level" }
);
qapi_enum!(
    /// QEMU's HmatLBDataType.
    HmatDataType {
        AccessLatency = "access-latency",
        ReadLatency = "read-latency",
        WriteLatency = "write-latency",
        AccessBandwidth = "access-bandwidth",
        ReadBandwidth = "read-bandwidth",
        WriteBandwidth = "write-bandwidth",
    }
);
qapi_enum!(
    /// QEMU's HmatCacheAssociativity.
    HmatAssociativity { None = "none", Direct = "direct", Complex = "complex" }
);
qapi_enum!(
    /// QEMU's HmatCacheWritePolicy.
    HmatPolicy { None = "none", WriteBack = "write-back", WriteThrough = "write-through" }
);

impl HmatDataType {
    pub fn is_latency(self) -> bool {
        self.code() <= HmatDataType::WriteLatency.code()
    }
}

/// The members of an `hmat-lb` or `hmat-cache` option from `key=value` text, checked as
/// QEMU's options visitor does (mandatory members in schema order, then unknown ones).
pub fn hmat_option(ty: &str, pairs: &[(String, String)]) -> Result<NumaOption, String> {
    let members: &[&str] = match ty {
        "hmat-lb" => &[
            "initiator",
            "target",
            "hierarchy",
            "data-type",
            "latency",
            "bandwidth",
        ],
        _ => &[
            "node-id",
            "size",
            "level",
            "associativity",
            "policy",
            "line",
        ],
    };
    let get = |k: &str| {
        pairs
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let need = |k: &str| get(k).ok_or_else(|| format!("Parameter '{k}' is missing"));
    let uint = |k: &str, max: u64| -> Result<Option<u64>, String> {
        get(k)
            .map(|v| {
                crate::parse_u64_auto(v)
                    .filter(|n| *n <= max)
                    .ok_or_else(|| format!("Parameter '{k}' expects a uint64 value"))
            })
            .transpose()
    };
    let size = |k: &str| -> Result<Option<u64>, String> {
        get(k)
            .map(|v| {
                crate::parse_size(v).ok_or_else(|| format!("Parameter '{k}' expects a size value"))
            })
            .transpose()
    };
    fn choice<T>(k: &str, v: &str, parse: fn(&str) -> Option<T>) -> Result<T, String> {
        parse(v).ok_or_else(|| format!("Parameter '{k}' does not accept value '{v}'"))
    }
    let u32max = u64::from(u32::MAX);
    let option = if ty == "hmat-lb" {
        let initiator = uint("initiator", u32max)?.ok_or("Parameter 'initiator' is missing")?;
        let target = uint("target", u32max)?.ok_or("Parameter 'target' is missing")?;
        let hierarchy = choice("hierarchy", need("hierarchy")?, HmatHierarchy::parse)?;
        let data_type = choice("data-type", need("data-type")?, HmatDataType::parse)?;
        NumaOption::HmatLb {
            initiator: initiator as u32,
            target: target as u32,
            hierarchy,
            data_type,
            latency: uint("latency", u64::MAX)?,
            bandwidth: size("bandwidth")?,
        }
    } else {
        let node_id = uint("node-id", u32max)?.ok_or("Parameter 'node-id' is missing")?;
        let size = size("size")?.ok_or("Parameter 'size' is missing")?;
        let level = uint("level", u64::from(u8::MAX))?.ok_or("Parameter 'level' is missing")?;
        let associativity = choice(
            "associativity",
            need("associativity")?,
            HmatAssociativity::parse,
        )?;
        let policy = choice("policy", need("policy")?, HmatPolicy::parse)?;
        let line = uint("line", u64::from(u16::MAX))?.ok_or("Parameter 'line' is missing")?;
        NumaOption::HmatCache {
            node_id: node_id as u32,
            size,
            level: level as u8,
            associativity,
            policy,
            line: line as u16,
        }
    };
    if let Some((k, _)) = pairs
        .iter()
        .find(|(k, _)| k != "type" && !members.contains(&k.as_str()))
    {
        return Err(format!("Invalid parameter '{k}'"));
    }
    Ok(option)
}

/// Levels of the memory hierarchy HMAT describes (memory and three cache levels).
pub const HMAT_LB_LEVELS: u8 = 4;

/// One System Locality Latency and Bandwidth table of the HMAT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HmatLbTable {
    pub hierarchy: HmatHierarchy,
    pub data_type: HmatDataType,
    /// Entry base unit: ns for latencies, bytes/s for bandwidths (QEMU's units).
    pub base: u64,
    /// (initiator node, target node, value as given).
    pub entries: Vec<(u32, u32, u64)>,
}

/// One Memory Side Cache Information structure of the HMAT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HmatCacheInfo {
    pub node: u32,
    pub total_levels: u8,
    pub level: u8,
    pub size: u64,
    pub associativity: HmatAssociativity,
    pub policy: HmatPolicy,
    pub line: u16,
}

/// What `-machine hmat=on` makes the HMAT say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HmatPlan {
    /// Each node's initiator proximity domain, if it has one.
    pub initiators: Vec<Option<u32>>,
    /// The nodes with CPUs (the initiator proximity domains), in node order.
    pub initiator_nodes: Vec<u32>,
    /// Tables by hierarchy, then data type.
    pub lb: Vec<HmatLbTable>,
    /// Caches by node, then level.
    pub caches: Vec<HmatCacheInfo>,
}

/// A `-numa` option with the text it came from (errors name it as QEMU's do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaArg {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    pub option: NumaOption,
}

/// A node of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaNode {
    /// RAM of the node in bytes; nodes own consecutive slices of guest RAM in node order.
    pub mem: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memdev: Option<String>,
}

/// The machine's NUMA topology; no nodes when NUMA is not configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaPlan {
    pub nodes: Vec<NumaNode>,
    /// The node of each possible CPU (index = CPU index); empty without nodes.
    pub cpu_nodes: Vec<u32>,
    /// `distances[src][dst]`, complete, when any `-numa dist` was given; empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distances: Vec<Vec<u8>>,
    /// `-machine hmat=on`: the HMAT's contents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmat: Option<HmatPlan>,
}

impl NumaPlan {
    pub fn is_enabled(&self) -> bool {
        !self.nodes.is_empty()
    }

    /// The node of CPU `index`, when NUMA is configured.
    pub fn node_of(&self, index: u32) -> Option<u32> {
        self.cpu_nodes.get(index as usize).copied()
    }

    /// Each node's RAM as guest-physical ranges `(node, base, len)`, split around the
    /// 640 KiB-1 MiB hole and the PCI hole below 4 GiB as QEMU's `build_srat` does.
    pub fn memory_ranges(&self, below_4g: u64) -> Vec<(u32, u64, u64)> {
        const HOLE_640K_START: u64 = 640 << 10;
        const HOLE_640K_END: u64 = 1 << 20;
        const ABOVE_4G_START: u64 = 1 << 32;
        let mut out = Vec::new();
        let mut next_base = 0u64;
        for (i, node) in self.nodes.iter().enumerate() {
            let i = i as u32;
            let mut mem_base = next_base;
            let mut mem_len = node.mem;
            next_base = mem_base + mem_len;
            if mem_base <= HOLE_640K_START && next_base > HOLE_640K_START {
                mem_len -= next_base - HOLE_640K_START;
                if mem_len > 0 {
                    out.push((i, mem_base, mem_len));
                }
                if next_base <= HOLE_640K_END {
                    next_base = HOLE_640K_END;
                    continue;
                }
                mem_base = HOLE_640K_END;
                mem_len = next_base - HOLE_640K_END;
            }
            if mem_base <= below_4g && next_base > below_4g {
                mem_len -= next_base - below_4g;
                if mem_len > 0 {
                    out.push((i, mem_base, mem_len));
                }
                mem_base = ABOVE_4G_START;
                mem_len = next_base - below_4g;
                next_base = mem_base + mem_len;
            }
            if mem_len > 0 {
                out.push((i, mem_base, mem_len));
            }
        }
        out
    }
}

/// What the machine type contributes.
#[derive(Debug, Clone, Copy)]
pub struct NumaRules {
    /// The machine type accepts `-numa node,mem=` (types before 5.1).
    pub mem_supported: bool,
    /// The machine has CPUs to map (not `none`).
    pub supported: bool,
    /// Memory hot-plug is configured (`-m slots=` or `maxmem=` above the RAM): QEMU's PC
    /// machines then add one node holding all RAM when none was given.
    pub auto_enable: bool,
    /// `-machine hmat=on`.
    pub hmat: bool,
}

/// `-machine hmat=on` among the machine options (the last one counts).
pub fn hmat_requested(options: &[(String, String)]) -> bool {
    options
        .iter()
        .rev()
        .find(|(k, _)| k == "hmat")
        .and_then(|(_, v)| crate::qapi_bool_parse(v))
        .unwrap_or(false)
}

const HMAT_DISABLED: &str = "ACPI Heterogeneous Memory Attribute Table (HMAT) is disabled, \
                             enable it with -machine hmat=on before using any of hmat specific \
                             options";

fn err(text: &Option<String>, message: impl Into<String>) -> PlanError {
    let message = message.into();
    PlanError::Numa(match text {
        Some(t) => format!("-numa {t}: {message}"),
        None => message,
    })
}

struct Slot {
    socket: u32,
    die: u32,
    core: u32,
    thread: u32,
    node: Option<u32>,
}

#[derive(Default, Clone)]
struct NodeInfo {
    present: bool,
    mem: u64,
    memdev: Option<String>,
    distance: Vec<u8>,
    /// HMAT: the node's initiator, whether CPUs map to it, and which of latency (bit 0)
    /// and bandwidth (bit 1) were given with it as target.
    initiator: Option<u32>,
    has_cpu: bool,
    lb_info_provided: u8,
}

/// One latency/bandwidth table being filled (QEMU's HMAT_LB_Info).
#[derive(Default, Clone)]
struct LbInfo {
    base: u64,
    range_bitmap: u64,
    list: Vec<(u32, u32, u64)>,
}

/// HMAT state while the options are applied.
struct HmatState {
    lb: Vec<Vec<LbInfo>>,
    caches: std::collections::BTreeMap<(u32, u8), (u64, HmatAssociativity, HmatPolicy, u16)>,
}

impl Default for HmatState {
    fn default() -> Self {
        HmatState {
            lb: vec![vec![LbInfo::default(); HmatDataType::NAMES.len()]; HMAT_LB_LEVELS as usize],
            caches: Default::default(),
        }
    }
}

/// With HMAT on, a node CPUs map to is its own initiator (machine_set_cpu_numa_node).
fn mark_cpu_node(
    nodes: &mut [NodeInfo],
    node: u32,
    hmat: bool,
    text: &Option<String>,
) -> Result<(), PlanError> {
    if !hmat {
        return Ok(());
    }
    let info = &mut nodes[node as usize];
    if let Some(i) = info.initiator.filter(|&i| i != node) {
        return Err(err(
            text,
            format!("The initiator of CPU NUMA node {node} should be itself (got {i})"),
        ));
    }
    info.has_cpu = true;
    info.initiator = Some(node);
    Ok(())
}

/// A `-numa cpu` selector (QEMU's CpuInstanceProperties).
struct Selector {
    node: u32,
    socket: Option<u32>,
    die: Option<u32>,
    cluster: Option<u32>,
    core: Option<u32>,
    thread: Option<u32>,
}

fn set_cpu_node(
    slots: &mut [Slot],
    topology: &CpuTopology,
    sel: &Selector,
    text: &Option<String>,
) -> Result<(), PlanError> {
    // x86 CPUs have socket, core and thread ids, and a die id when there are several dies.
    if sel.cluster.is_some() {
        return Err(err(text, "cluster-id is not supported"));
    }
    if sel.die.is_some() && topology.dies <= 1 {
        return Err(err(text, "die-id is not supported"));
    }
    let mut matched = false;
    for slot in slots.iter_mut() {
        let differs = |want: Option<u32>, have: u32| want.is_some_and(|w| w != have);
        if differs(sel.thread, slot.thread)
            || differs(sel.core, slot.core)
            || differs(sel.die, slot.die)
            || differs(sel.socket, slot.socket)
        {
            continue;
        }
        if let Some(node) = slot.node.filter(|&n| n != sel.node) {
            return Err(err(
                text,
                format!("CPU is already assigned to node-id: {node}"),
            ));
        }
        matched = true;
        slot.node = Some(sel.node);
    }
    if !matched {
        return Err(err(text, "no match found"));
    }
    Ok(())
}

/// The state after the options are applied, before QEMU's completion step.
struct Applied {
    nodes: Vec<NodeInfo>,
    num_nodes: u32,
    max_nodeid: u32,
    have_distance: bool,
    slots: Vec<Slot>,
    hmat: HmatState,
}

/// Apply the `-numa` options in order with the checks QEMU makes as each is given (what QMP
/// `set-numa-node` refuses); the whole configuration is checked by `resolve`.
pub fn check(
    args: &[NumaArg],
    topology: &CpuTopology,
    max_cpus: u32,
    rules: NumaRules,
) -> Result<(), PlanError> {
    apply(args, topology, max_cpus, rules).map(|_| ())
}

fn apply(
    args: &[NumaArg],
    topology: &CpuTopology,
    max_cpus: u32,
    rules: NumaRules,
) -> Result<Applied, PlanError> {
    if !rules.supported {
        if let Some(arg) = args.first() {
            return Err(err(&arg.text, "NUMA is not supported by this machine-type"));
        }
    }
    let mut nodes = vec![NodeInfo::default(); MAX_NODES as usize];
    let mut num_nodes = 0u32;
    let mut max_nodeid = 0u32;
    let mut have_memdevs = false;
    let mut have_mem = false;
    let mut have_distance = false;
    let mut hmat = HmatState::default();
    let mut slots: Vec<Slot> = (0..max_cpus)
        .map(|i| {
            let ids = topology.ids(i);
            Slot {
                socket: ids.socket,
                die: ids.die,
                core: ids.core,
                thread: ids.thread,
                node: None,
            }
        })
        .collect();
    for arg in args {
        let text = &arg.text;
        match &arg.option {
            NumaOption::Node {
                nodeid,
                cpus,
                mem,
                memdev,
                memdev_size,
                initiator,
            } => {
                let nodenr = nodeid.unwrap_or(num_nodes);
                if nodenr >= MAX_NODES {
                    return Err(err(
                        text,
                        format!("Max number of NUMA nodes reached: {nodenr}"),
                    ));
                }
                if nodes[nodenr as usize].present {
                    return Err(err(text, format!("Duplicate NUMA nodeid: {nodenr}")));
                }
                if let Some(initiator) = *initiator {
                    if !rules.hmat {
                        return Err(err(text, HMAT_DISABLED));
                    }
                    if initiator >= MAX_NODES {
                        return Err(err(
                            text,
                            format!(
                                "The initiator id {initiator} expects an integer between 0 \
                                 and {}",
                                MAX_NODES - 1
                            ),
                        ));
                    }
                    nodes[nodenr as usize].initiator = Some(initiator);
                }
                for &cpu in cpus {
                    if cpu >= max_cpus {
                        return Err(err(
                            text,
                            format!(
                                "CPU index ({cpu}) should be smaller than maxcpus ({max_cpus})"
                            ),
                        ));
                    }
                    let ids = topology.ids(cpu);
                    let sel = Selector {
                        node: nodenr,
                        socket: Some(ids.socket),
                        die: (topology.dies > 1).then_some(ids.die),
                        cluster: None,
                        core: Some(ids.core),
                        thread: Some(ids.thread),
                    };
                    set_cpu_node(&mut slots, topology, &sel, text)?;
                    mark_cpu_node(&mut nodes, nodenr, rules.hmat, text)?;
                }
                have_memdevs |= memdev.is_some();
                have_mem |= mem.is_some();
                if (mem.is_some() && have_memdevs) || (memdev.is_some() && have_mem) {
                    return Err(err(
                        text,
                        "numa configuration should use either mem= or memdev=,mixing both is \
                         not allowed",
                    ));
                }
                let info = &mut nodes[nodenr as usize];
                if let Some(mem) = mem {
                    if !rules.mem_supported {
                        return Err(err(
                            text,
                            "Parameter -numa node,mem is not supported by this machine type",
                        ));
                    }
                    info.mem = *mem;
                }
                if let Some(id) = memdev {
                    let size = memdev_size
                        .ok_or_else(|| err(text, format!("memdev={id} is ambiguous")))?;
                    info.mem = size;
                    info.memdev = Some(id.clone());
                }
                info.present = true;
                max_nodeid = max_nodeid.max(nodenr + 1);
                num_nodes += 1;
            }
            NumaOption::Cpu {
                node_id,
                socket_id,
                die_id,
                cluster_id,
                core_id,
                thread_id,
            } => {
                let node =
                    node_id.ok_or_else(|| err(text, "Missing mandatory node-id property"))?;
                if node >= MAX_NODES || !nodes[node as usize].present {
                    return Err(err(
                        text,
                        format!(
                            "Invalid node-id={node}, NUMA node must be defined with -numa \
                             node,nodeid=ID before it's used with -numa cpu,node-id=ID"
                        ),
                    ));
                }
                let sel = Selector {
                    node,
                    socket: *socket_id,
                    die: *die_id,
                    cluster: *cluster_id,
                    core: *core_id,
                    thread: *thread_id,
                };
                set_cpu_node(&mut slots, topology, &sel, text)?;
                mark_cpu_node(&mut nodes, node, rules.hmat, text)?;
            }
            NumaOption::Dist { src, dst, val } => {
                set_distance(&mut nodes, *src, *dst, *val, text)?;
                have_distance = true;
            }
            NumaOption::HmatLb {
                initiator,
                target,
                hierarchy,
                data_type,
                latency,
                bandwidth,
            } => {
                if !rules.hmat {
                    return Err(err(text, HMAT_DISABLED));
                }
                let lb = &mut hmat.lb[hierarchy.code() as usize][data_type.code() as usize];
                hmat_lb(
                    &mut nodes, num_nodes, lb, *initiator, *target, *data_type, *latency,
                    *bandwidth,
                )
                .map_err(|m| err(text, m))?;
            }
            NumaOption::HmatCache {
                node_id,
                size,
                level,
                associativity,
                policy,
                line,
            } => {
                if !rules.hmat {
                    return Err(err(text, HMAT_DISABLED));
                }
                hmat_cache(&nodes, num_nodes, &mut hmat, *node_id, *size, *level)
                    .map_err(|m| err(text, m))?;
                hmat.caches
                    .insert((*node_id, *level), (*size, *associativity, *policy, *line));
            }
        }
    }
    Ok(Applied {
        nodes,
        num_nodes,
        max_nodeid,
        have_distance,
        slots,
        hmat,
    })
}

/// `-numa dist`: QEMU's parse_numa_distance checks, then the distance recorded.
fn set_distance(
    nodes: &mut [NodeInfo],
    src: u32,
    dst: u32,
    val: u32,
    text: &Option<String>,
) -> Result<(), PlanError> {
    if src >= MAX_NODES || dst >= MAX_NODES {
        let which = if src >= MAX_NODES { "src" } else { "dst" };
        return Err(err(
            text,
            format!(
                "Parameter '{which}' expects an integer between 0 and {}",
                MAX_NODES - 1
            ),
        ));
    }
    if !nodes[src as usize].present || !nodes[dst as usize].present {
        return Err(err(
            text,
            "Source/Destination NUMA node is missing. Please use '-numa node' \
                 option to declare it first.",
        ));
    }
    let val = u8::try_from(val).map_err(|_| err(text, "Parameter 'val' expects uint8_t"))?;
    if val < DISTANCE_MIN {
        return Err(err(
            text,
            format!(
                "NUMA distance ({val}) is invalid, it shouldn't be less than \
                     {DISTANCE_MIN}."
            ),
        ));
    }
    if src == dst && val != DISTANCE_MIN {
        return Err(err(
            text,
            format!("Local distance of node {src} should be {DISTANCE_MIN}."),
        ));
    }
    let d = &mut nodes[src as usize].distance;
    if d.is_empty() {
        d.resize(MAX_NODES as usize, 0);
    }
    d[dst as usize] = val;
    Ok(())
}

/// QEMU's parse_numa_hmat_lb: the checks, and the entry base and compressed range kept so
/// that every value fits the table's 16-bit entries.
#[allow(clippy::too_many_arguments)]
fn hmat_lb(
    nodes: &mut [NodeInfo],
    num_nodes: u32,
    lb: &mut LbInfo,
    initiator: u32,
    target: u32,
    data_type: HmatDataType,
    latency: Option<u64>,
    bandwidth: Option<u64>,
) -> Result<(), String> {
    // QEMU compares with `>`, so the node one past the last reaches the next checks.
    if initiator > num_nodes {
        return Err(format!(
            "Invalid initiator={initiator}, it should be less than {num_nodes}"
        ));
    }
    if target > num_nodes {
        return Err(format!(
            "Invalid target={target}, it should be less than {num_nodes}"
        ));
    }
    if !nodes[initiator as usize].has_cpu {
        return Err(format!(
            "Invalid initiator={initiator}, it isn't an initiator proximity domain"
        ));
    }
    if !nodes[target as usize].present {
        return Err(format!(
            "The target={target} should point to an existing node"
        ));
    }
    let duplicate = lb
        .list
        .iter()
        .any(|(i, t, _)| *i == initiator && *t == target);
    let data = if data_type.is_latency() {
        let latency = latency.ok_or("Missing 'latency' option")?;
        if bandwidth.is_some() {
            return Err("Invalid option 'bandwidth' since the data type is latency".into());
        }
        if duplicate {
            return Err(format!(
                "Duplicate configuration of the latency for initiator={initiator} and \
                 target={target}"
            ));
        }
        if lb.base == 0 {
            lb.base = u64::MAX;
        }
        if latency != 0 {
            let mut temp_base = 1u64;
            let mut max_entry = latency;
            while max_entry % 10 == 0 {
                max_entry /= 10;
                temp_base *= 10;
            }
            let temp_base = lb.base.min(temp_base);
            let max_entry = (latency / lb.base).max(lb.range_bitmap);
            if max_entry >= u64::from(u16::MAX) {
                return Err(format!(
                    "Latency {latency} between initiator={initiator} and target={target} \
                     should not differ from previously entered min or max values on more \
                     than {}",
                    u16::MAX - 1
                ));
            }
            lb.base = temp_base;
            lb.range_bitmap = max_entry;
            nodes[target as usize].lb_info_provided |= 1;
        }
        latency
    } else {
        let bandwidth = bandwidth.ok_or("Missing 'bandwidth' option")?;
        if latency.is_some() {
            return Err("Invalid option 'latency' since the data type is bandwidth".into());
        }
        if bandwidth % (1 << 20) != 0 {
            return Err(format!(
                "Bandwidth {bandwidth} between initiator={initiator} and target={target} \
                 should be 1MB aligned"
            ));
        }
        if duplicate {
            return Err(format!(
                "Duplicate configuration of the bandwidth for initiator={initiator} and \
                 target={target}"
            ));
        }
        if lb.base == 0 {
            lb.base = 1;
        }
        if bandwidth != 0 {
            let bitmap = lb.range_bitmap | bandwidth;
            let first_bit = bitmap.trailing_zeros();
            let temp_base = 1u64 << first_bit;
            let max_entry = bandwidth / temp_base;
            let last_bit = 64 - bitmap.leading_zeros();
            if last_bit - first_bit > 16 || max_entry >= u64::from(u16::MAX) {
                return Err(format!(
                    "Bandwidth {bandwidth} between initiator={initiator} and target={target} \
                     should not differ from previously entered values on more than {}",
                    u16::MAX - 1
                ));
            }
            lb.base = temp_base;
            lb.range_bitmap = bitmap;
            nodes[target as usize].lb_info_provided |= 2;
        }
        bandwidth
    };
    lb.list.push((initiator, target, data));
    Ok(())
}

/// QEMU's parse_numa_hmat_cache checks.
fn hmat_cache(
    nodes: &[NodeInfo],
    num_nodes: u32,
    hmat: &mut HmatState,
    node: u32,
    size: u64,
    level: u8,
) -> Result<(), String> {
    if node >= num_nodes {
        return Err(format!(
            "Invalid node-id={node}, it should be less than {num_nodes}"
        ));
    }
    if nodes[node as usize].lb_info_provided != 3 {
        return Err(format!(
            "The latency and bandwidth information of node-id={node} should be provided \
             before memory side cache attributes"
        ));
    }
    if !(1..HMAT_LB_LEVELS).contains(&level) {
        return Err(format!(
            "Invalid level={level}, it should be larger than 0 and less than or equal to {}",
            HMAT_LB_LEVELS - 1
        ));
    }
    let size_of = |l: u8| hmat.caches.get(&(node, l)).map(|c| c.0);
    if size_of(level).is_some() {
        return Err(format!(
            "Duplicate configuration of the side cache for node-id={node} and level={level}"
        ));
    }
    if level > 1 {
        let below = size_of(level - 1)
            .ok_or_else(|| format!("Cache level={} shall be defined first", level - 1))?;
        if size <= below {
            return Err(format!(
                "Invalid size={size}, the size of level={level} should be larger than the \
                 size({below}) of level={}",
                level - 1
            ));
        }
    }
    if let Some(above) = size_of(level + 1).filter(|&a| level < HMAT_LB_LEVELS - 1 && size >= a) {
        return Err(format!(
            "Invalid size={size}, the size of level={level} should be less than the \
             size({above}) of level={}",
            level + 1
        ));
    }
    Ok(())
}

/// Apply the `-numa` options in order and complete the configuration as QEMU does
/// (`numa_complete_configuration`, `machine_numa_finish_cpu_init`).
pub fn resolve(
    args: &[NumaArg],
    topology: &CpuTopology,
    max_cpus: u32,
    ram_size: u64,
    rules: NumaRules,
) -> Result<NumaPlan, PlanError> {
    if !rules.supported && args.is_empty() {
        return Ok(NumaPlan::default());
    }
    let Applied {
        mut nodes,
        mut num_nodes,
        mut max_nodeid,
        have_distance,
        slots,
        hmat,
    } = apply(args, topology, max_cpus, rules)?;
    if num_nodes == 0 && rules.auto_enable {
        nodes[0].present = true;
        nodes[0].mem = ram_size;
        num_nodes = 1;
        max_nodeid = 1;
    }
    // No sparse node ids; report the largest missing one first, as QEMU does.
    for i in (0..max_nodeid).rev() {
        if !nodes[i as usize].present {
            return Err(PlanError::Numa(format!("numa: Node ID missing: {i}")));
        }
    }
    if num_nodes == 0 {
        return Ok(NumaPlan::default());
    }
    let nodes = &mut nodes[..num_nodes as usize];
    let total: u64 = nodes.iter().map(|n| n.mem).sum();
    if total != ram_size {
        return Err(PlanError::Numa(format!(
            "total memory for NUMA nodes (0x{total:x}) should equal RAM size (0x{ram_size:x})"
        )));
    }
    let distances = if have_distance {
        complete_distances(nodes)?
    } else {
        Vec::new()
    };

    // CPUs no option mapped: the board's default (socket modulo nodes) when no CPU was
    // mapped at all, node 0 otherwise (QEMU warns about such partial mappings).
    let default_mapping = slots.iter().all(|s| s.node.is_none());
    let cpu_nodes: Vec<u32> = slots
        .iter()
        .map(|s| match s.node {
            Some(n) => n,
            None if default_mapping => s.socket % num_nodes,
            None => 0,
        })
        .collect();
    let hmat = if rules.hmat {
        Some(hmat_plan(nodes, &cpu_nodes, hmat)?)
    } else {
        None
    };
    Ok(NumaPlan {
        nodes: nodes
            .iter()
            .map(|n| NumaNode {
                mem: n.mem,
                memdev: n.memdev.clone(),
            })
            .collect(),
        cpu_nodes,
        distances,
        hmat,
    })
}

/// The CPUs' final nodes become initiators (machine_numa_finish_cpu_init), every given
/// initiator must be a node with CPUs (numa_validate_initiator), and the HMAT's contents.
fn hmat_plan(
    nodes: &mut [NodeInfo],
    cpu_nodes: &[u32],
    state: HmatState,
) -> Result<HmatPlan, PlanError> {
    for &n in cpu_nodes {
        mark_cpu_node(nodes, n, true, &None)?;
    }
    for (i, node) in nodes.iter().enumerate() {
        let Some(initiator) = node.initiator else {
            continue;
        };
        match nodes.get(initiator as usize) {
            Some(n) if n.present && n.has_cpu => {}
            Some(n) if n.present => {
                return Err(PlanError::Numa(format!(
                    "The initiator of NUMA node {i} is invalid"
                )))
            }
            _ => {
                return Err(PlanError::Numa(format!(
                    "NUMA node {initiator} is missing, use '-numa node' option to declare it \
                     first"
                )))
            }
        }
    }
    let mut lb = Vec::new();
    for (h, types) in state.lb.into_iter().enumerate() {
        for (t, info) in types.into_iter().enumerate() {
            if info.list.is_empty() {
                continue;
            }
            lb.push(HmatLbTable {
                hierarchy: [
                    HmatHierarchy::Memory,
                    HmatHierarchy::FirstLevel,
                    HmatHierarchy::SecondLevel,
                    HmatHierarchy::ThirdLevel,
                ][h],
                data_type: [
                    HmatDataType::AccessLatency,
                    HmatDataType::ReadLatency,
                    HmatDataType::WriteLatency,
                    HmatDataType::AccessBandwidth,
                    HmatDataType::ReadBandwidth,
                    HmatDataType::WriteBandwidth,
                ][t],
                base: info.base,
                entries: info.list,
            });
        }
    }
    let mut caches = Vec::new();
    for node in 0..nodes.len() as u32 {
        let levels: Vec<_> = state
            .caches
            .range((node, 0)..(node + 1, 0))
            .map(|(&(_, level), c)| (level, *c))
            .collect();
        let total_levels = levels.len() as u8;
        // QEMU walks levels 0..=total: a level above the count is left out.
        for (level, (size, associativity, policy, line)) in levels {
            if level <= total_levels {
                caches.push(HmatCacheInfo {
                    node,
                    total_levels,
                    level,
                    size,
                    associativity,
                    policy,
                    line,
                });
            }
        }
    }
    Ok(HmatPlan {
        initiators: nodes.iter().map(|n| n.initiator).collect(),
        initiator_nodes: (0..nodes.len() as u32)
            .filter(|&i| nodes[i as usize].has_cpu)
            .collect(),
        lb,
        caches,
    })
}

/// QEMU's validate_numa_distance and complete_init_numa_distance.
fn complete_distances(nodes: &mut [NodeInfo]) -> Result<Vec<Vec<u8>>, PlanError> {
    let n = nodes.len();
    for node in nodes.iter_mut() {
        node.distance.resize(MAX_NODES as usize, 0);
    }
    let d = |nodes: &[NodeInfo], s: usize, t: usize| nodes[s].distance[t];
    let mut asymmetric = false;
    for src in 0..n {
        for dst in src..n {
            if d(nodes, src, dst) == 0 && d(nodes, dst, src) == 0 && src != dst {
                return Err(PlanError::Numa(format!(
                    "The distance between node {src} and {dst} is missing, at least one \
                     distance value between each nodes should be provided."
                )));
            }
            let (a, b) = (d(nodes, src, dst), d(nodes, dst, src));
            if a != 0 && b != 0 && a != b {
                asymmetric = true;
            }
        }
    }
    if asymmetric {
        for src in 0..n {
            for dst in 0..n {
                if src != dst && d(nodes, src, dst) == 0 {
                    return Err(PlanError::Numa(
                        "At least one asymmetrical pair of distances is given, please provide \
                         distances for both directions of all node pairs."
                            .into(),
                    ));
                }
            }
        }
    }
    Ok((0..n)
        .map(|src| {
            (0..n)
                .map(|dst| match d(nodes, src, dst) {
                    0 if src == dst => DISTANCE_MIN,
                    0 => d(nodes, dst, src),
                    v => v,
                })
                .collect()
        })
        .collect())
}

impl crate::Catalog {
    /// QEMU's checks of `req.numa` as each option is given (QMP `set-numa-node` before the
    /// machine exists), against the machine type and `-smp` topology of `req`.
    pub fn check_numa(&self, req: &crate::PlanRequest) -> Result<(), PlanError> {
        let machine = self.machine_for(req)?;
        let has_cpus = machine.family != crate::plan::Family::None;
        let smp_rules = crate::smp::SmpRules {
            prefer_sockets: machine.smp_prefer_sockets,
            dies_supported: has_cpus,
        };
        let (topology, _, max_cpus) =
            CpuTopology::resolve(Some(req.cpus), req.max_cpus, &req.smp, smp_rules)?;
        let rules = NumaRules {
            mem_supported: machine.numa_mem_supported,
            supported: has_cpus,
            auto_enable: false,
            hmat: hmat_requested(&req.options),
        };
        check(&req.numa, &topology, max_cpus, rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: NumaRules = NumaRules {
        mem_supported: false,
        supported: true,
        auto_enable: false,
        hmat: false,
    };
    const M: u64 = 1 << 20;

    fn node(nodeid: Option<u32>, cpus: &[u32], memdev_size: Option<u64>) -> NumaArg {
        NumaArg {
            text: None,
            option: NumaOption::Node {
                nodeid,
                cpus: cpus.to_vec(),
                mem: None,
                memdev: memdev_size.map(|_| "m".into()),
                memdev_size,
                initiator: None,
            },
        }
    }

    fn topo(sockets: u32, cores: u32, threads: u32) -> CpuTopology {
        CpuTopology {
            sockets,
            dies: 1,
            cores,
            threads,
        }
    }

    fn cpu(node: u32, socket: Option<u32>, core: Option<u32>, thread: Option<u32>) -> NumaArg {
        NumaArg {
            text: Some("cpu".into()),
            option: NumaOption::Cpu {
                node_id: Some(node),
                socket_id: socket,
                die_id: None,
                cluster_id: None,
                core_id: core,
                thread_id: thread,
            },
        }
    }

    #[test]
    fn default_partial_and_explicit_cpu_mappings() {
        // No CPU mapped: socket modulo the node count.
        let p = resolve(
            &[node(None, &[], Some(128 * M)), node(None, &[], None)],
            &topo(8, 1, 1),
            8,
            128 * M,
            RULES,
        )
        .unwrap();
        assert_eq!(p.cpu_nodes, [0, 1, 0, 1, 0, 1, 0, 1]);
        assert_eq!(p.nodes[0].mem, 128 * M);
        assert_eq!(p.nodes[1].mem, 0);
        // Some mapped: the others go to node 0.
        let p = resolve(
            &[
                node(Some(0), &[0, 1], Some(128 * M)),
                node(Some(1), &[4, 5], None),
            ],
            &topo(1, 8, 1),
            8,
            128 * M,
            RULES,
        )
        .unwrap();
        assert_eq!(p.cpu_nodes, [0, 0, 0, 0, 1, 1, 0, 0]);
        // -numa cpu selects by socket, core and thread.
        let p = resolve(
            &[
                node(Some(0), &[], Some(128 * M)),
                node(Some(1), &[], None),
                cpu(1, Some(0), None, None),
                cpu(0, Some(1), Some(0), None),
                cpu(0, Some(1), Some(1), Some(0)),
                cpu(1, Some(1), Some(1), Some(1)),
            ],
            &topo(2, 2, 2),
            8,
            128 * M,
            RULES,
        )
        .unwrap();
        assert_eq!(p.cpu_nodes, [1, 1, 1, 1, 0, 0, 0, 1]);
    }

    #[test]
    fn qemu_refusals() {
        let e = |args: &[NumaArg]| {
            resolve(args, &topo(2, 1, 1), 2, 128 * M, RULES)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            e(&[
                node(Some(0), &[], Some(128 * M)),
                cpu(0, Some(0), None, None),
                node(Some(1), &[0], None),
            ]),
            "CPU is already assigned to node-id: 0"
        );
        assert_eq!(
            e(&[
                node(Some(0), &[], Some(128 * M)),
                cpu(0, Some(5), None, None)
            ]),
            "-numa cpu: no match found"
        );
        assert_eq!(
            e(&[node(Some(0), &[], Some(128 * M)), node(Some(0), &[], None)]),
            "Duplicate NUMA nodeid: 0"
        );
        assert_eq!(
            e(&[node(Some(0), &[], Some(64 * M))]),
            "total memory for NUMA nodes (0x4000000) should equal RAM size (0x8000000)"
        );
        let dist = |src, dst, val| NumaArg {
            text: None,
            option: NumaOption::Dist { src, dst, val },
        };
        let three = [
            node(None, &[], Some(128 * M)),
            node(None, &[], None),
            node(None, &[], None),
        ];
        let mut args = three.to_vec();
        args.push(dist(0, 1, 20));
        assert_eq!(
            e(&args),
            "The distance between node 0 and 2 is missing, at least one distance value between \
             each nodes should be provided."
        );
        args.extend([dist(0, 2, 30), dist(1, 2, 40), dist(1, 0, 21)]);
        assert_eq!(
            e(&args),
            "At least one asymmetrical pair of distances is given, please provide distances \
             for both directions of all node pairs."
        );
        // Symmetric: the missing directions are filled in.
        let mut args = three.to_vec();
        args.extend([dist(0, 1, 20), dist(0, 2, 30), dist(2, 1, 40)]);
        let p = resolve(&args, &topo(2, 1, 1), 2, 128 * M, RULES).unwrap();
        assert_eq!(p.distances, [[10, 20, 30], [20, 10, 40], [30, 40, 10]]);
    }

    #[test]
    fn memory_hot_plug_makes_one_node_of_all_ram() {
        let rules = NumaRules {
            auto_enable: true,
            ..RULES
        };
        let p = resolve(&[], &topo(2, 1, 1), 2, 128 * M, rules).unwrap();
        assert_eq!(p.nodes.len(), 1);
        assert_eq!(p.nodes[0].mem, 128 * M);
        assert_eq!(p.cpu_nodes, [0, 0]);
    }

    fn hmat_args(extra: &[&str]) -> Vec<NumaArg> {
        let mut args = vec![
            node(Some(0), &[], Some(64 << 20)),
            NumaArg {
                text: None,
                option: NumaOption::Node {
                    nodeid: Some(1),
                    cpus: vec![],
                    mem: None,
                    memdev: Some("m1".into()),
                    memdev_size: Some(64 << 20),
                    initiator: Some(0),
                },
            },
            cpu(0, Some(0), None, None),
            cpu(0, Some(1), None, None),
        ];
        for e in extra {
            let pairs: Vec<(String, String)> = e
                .split(',')
                .skip(1)
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let ty = e.split(',').next().unwrap();
            args.push(NumaArg {
                text: Some(e.to_string()),
                option: hmat_option(ty, &pairs).unwrap(),
            });
        }
        args
    }

    #[test]
    fn hmat_values_must_fit_sixteen_bit_entries() {
        let rules = NumaRules {
            hmat: true,
            ..RULES
        };
        let t = topo(2, 1, 1);
        let lb = |t: u32, ty: &str, v: &str| {
            let unit = if ty.ends_with("latency") {
                "latency"
            } else {
                "bandwidth"
            };
            format!("hmat-lb,initiator=0,target={t},hierarchy=memory,data-type={ty},{unit}={v}")
        };
        let ok = [lb(0, "access-latency", "1"), lb(0, "access-bandwidth", "0")];
        let ok: Vec<&str> = ok.iter().map(String::as_str).collect();
        let plan = resolve(&hmat_args(&ok), &t, 2, 128 << 20, rules).unwrap();
        let hmat = plan.hmat.unwrap();
        assert_eq!(hmat.initiators, [Some(0), Some(0)]);
        assert_eq!(hmat.initiator_nodes, [0]);
        assert_eq!(hmat.lb.len(), 2);
        assert_eq!((hmat.lb[0].base, hmat.lb[1].base), (1, 1));
        // 65535 ns with a 1 ns base needs an entry of 65535: refused (QEMU's erange).
        let mut bad = ok.clone();
        let latency = lb(1, "access-latency", "65535");
        bad.push(&latency);
        let e = check(&hmat_args(&bad), &t, 2, rules)
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with(
                "should not differ from previously entered min or max values on more than 65534"
            ),
            "{e}"
        );
        // A zero bandwidth marks nothing: a cache needs both kinds for its node.
        let mut bad = ok.clone();
        let cache =
            "hmat-cache,node-id=0,size=10240,level=1,associativity=direct,policy=write-back,line=8";
        bad.push(cache);
        let e = check(&hmat_args(&bad), &t, 2, rules)
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("should be provided before memory side cache attributes"),
            "{e}"
        );
        // Bandwidths spanning more than 16 bits.
        let mut bad = vec![];
        let (a, b) = (
            lb(0, "access-bandwidth", "1M"),
            lb(1, "access-bandwidth", "65535M"),
        );
        bad.push(a.as_str());
        bad.push(b.as_str());
        let e = check(&hmat_args(&bad), &t, 2, rules)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("should not differ from previously entered values"),
            "{e}"
        );
        // Without hmat=on: QEMU's refusal.
        let e = check(&hmat_args(&[]), &t, 2, RULES)
            .unwrap_err()
            .to_string();
        assert!(e.contains("(HMAT) is disabled"), "{e}");
    }
}
