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
                if initiator.is_some() {
                    // machina builds no HMAT, so `-machine hmat=on` is never in effect.
                    return Err(err(
                        text,
                        "ACPI Heterogeneous Memory Attribute Table (HMAT) is disabled, enable \
                         it with -machine hmat=on before using any of hmat specific options",
                    ));
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
            }
            NumaOption::Dist { src, dst, val } => {
                let (src, dst) = (*src, *dst);
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
                let val =
                    u8::try_from(*val).map_err(|_| err(text, "Parameter 'val' expects uint8_t"))?;
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
                have_distance = true;
            }
        }
    }
    Ok(Applied {
        nodes,
        num_nodes,
        max_nodeid,
        have_distance,
        slots,
    })
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
    let cpu_nodes = slots
        .iter()
        .map(|s| match s.node {
            Some(n) => n,
            None if default_mapping => s.socket % num_nodes,
            None => 0,
        })
        .collect();
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
}
