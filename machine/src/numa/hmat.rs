//! HMAT (`-machine hmat=on`): its `hmat-lb` and `hmat-cache` options with QEMU's checks
//! (the latency/bandwidth base and 16-bit compression), each node's initiator, and the
//! tables and caches the HMAT describes.

use super::{
    err, HmatAssociativity, HmatDataType, HmatHierarchy, HmatPolicy, NodeInfo, NumaOption,
};
use crate::error::PlanError;
use serde::{Deserialize, Serialize};

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

/// `-machine hmat=on` among the machine options (the last one counts).
pub fn hmat_requested(options: &[(String, String)]) -> bool {
    options
        .iter()
        .rev()
        .find(|(k, _)| k == "hmat")
        .and_then(|(_, v)| crate::qapi_bool_parse(v))
        .unwrap_or(false)
}

pub(super) const HMAT_DISABLED: &str =
    "ACPI Heterogeneous Memory Attribute Table (HMAT) is disabled, \
                             enable it with -machine hmat=on before using any of hmat specific \
                             options";

/// One latency/bandwidth table being filled (QEMU's HMAT_LB_Info).
#[derive(Default, Clone)]
pub(super) struct LbInfo {
    base: u64,
    range_bitmap: u64,
    list: Vec<(u32, u32, u64)>,
}

/// HMAT state while the options are applied.
pub(super) struct HmatState {
    pub(super) lb: Vec<Vec<LbInfo>>,
    pub(super) caches:
        std::collections::BTreeMap<(u32, u8), (u64, HmatAssociativity, HmatPolicy, u16)>,
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
pub(super) fn mark_cpu_node(
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

/// QEMU's parse_numa_hmat_lb: the checks, and the entry base and compressed range kept so
/// that every value fits the table's 16-bit entries.
#[allow(clippy::too_many_arguments)]
pub(super) fn hmat_lb(
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
pub(super) fn hmat_cache(
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

/// The CPUs' final nodes become initiators (machine_numa_finish_cpu_init), every given
/// initiator must be a node with CPUs (numa_validate_initiator), and the HMAT's contents.
pub(super) fn hmat_plan(
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
