//! Applying the `-numa` options in command-line order with the checks QEMU makes as each
//! is given: nodes, CPU selectors (`-numa cpu`), distances; HMAT options go to `hmat`.

use super::hmat::{hmat_cache, hmat_lb, mark_cpu_node, HmatState, HMAT_DISABLED};
use super::{
    err, Applied, NodeInfo, NumaArg, NumaOption, NumaRules, Slot, DISTANCE_MIN, MAX_NODES,
};
use crate::error::PlanError;
use crate::smp::CpuTopology;

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

pub(super) fn apply(
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
