//! NUMA topology: QEMU's `-numa node|cpu|dist` rules (hw/core/numa.c and machine.c's
//! `machine_set_cpu_numa_node`), applied in command-line order to the possible CPUs of the
//! resolved `-smp` topology, with QEMU's checks and texts. The result (each node's RAM, each
//! possible CPU's node, the distance matrix) is what `info numa`, QMP's CPU `node-id`, the
//! ACPI SRAT/SLIT and fw_cfg's NUMA item describe.
//!
//! This file holds the types (with the QAPI enums of the HMAT options) and the completion
//! step (`resolve`); `apply` applies the options in order; `hmat` holds the HMAT's options
//! and contents.

mod apply;
mod hmat;
#[cfg(test)]
mod tests;

pub use apply::check;
pub use hmat::{hmat_option, hmat_requested, HmatCacheInfo, HmatLbTable, HmatPlan, HMAT_LB_LEVELS};

use apply::apply;
use hmat::{hmat_plan, HmatState};

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

/// The state after the options are applied, before QEMU's completion step.
struct Applied {
    nodes: Vec<NodeInfo>,
    num_nodes: u32,
    max_nodeid: u32,
    have_distance: bool,
    slots: Vec<Slot>,
    hmat: HmatState,
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
