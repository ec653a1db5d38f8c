//! The NUMA tables: SRAT (CPU and memory affinity), SLIT (distances) and HMAT (latency,
//! bandwidth and memory side caches).

use super::*;

/// One SRAT memory affinity structure (type 1).
pub(super) fn srat_memory(body: &mut Vec<u8>, base: u64, len: u64, node: u32, flags: u32) {
    body.extend([1u8, 40]);
    body.extend(node.to_le_bytes());
    body.extend(0u16.to_le_bytes());
    body.extend(base.to_le_bytes());
    body.extend(len.to_le_bytes());
    body.extend(0u32.to_le_bytes());
    body.extend(flags.to_le_bytes());
    body.extend(0u64.to_le_bytes());
}

/// The SRAT as QEMU's build_srat lays it out: every possible CPU's node by APIC id, each
/// node's RAM ranges (around the legacy and PCI holes), padding entries, and the memory
/// hot-plug area on the last node.
pub(super) fn srat(cfg: &AcpiConfig) -> Vec<u8> {
    const ENABLED: u32 = 1;
    const HOTPLUGGABLE: u32 = 2;
    let numa = &cfg.numa;
    let mut body = Vec::new();
    body.extend(1u32.to_le_bytes()); // reserved, 1 for compatibility
    body.extend(0u64.to_le_bytes());
    for cpu in 0..cfg.max_cpus.max(cfg.cpus) {
        let node = numa.node_of(cpu).unwrap_or(0);
        let apic_id = cfg.topology.apic_id(cpu);
        match u8::try_from(apic_id) {
            // Processor local APIC affinity (type 0): proximity domain bits 7:0 here,
            // 31:8 after the SAPIC EID.
            Ok(id) if id != 0xff => {
                body.extend([0u8, 16, node as u8, id]);
                body.extend(ENABLED.to_le_bytes());
                body.push(0);
                body.extend(&(node >> 8).to_le_bytes()[..3]);
                body.extend(0u32.to_le_bytes());
            }
            // Processor local x2APIC affinity (type 2).
            _ => {
                body.extend([2u8, 24, 0, 0]);
                body.extend(node.to_le_bytes());
                body.extend(apic_id.to_le_bytes());
                body.extend(ENABLED.to_le_bytes());
                body.extend(0u32.to_le_bytes());
                body.extend(0u32.to_le_bytes());
            }
        }
    }
    let ranges = numa.memory_ranges(cfg.ram_below_4g);
    for &(node, base, len) in &ranges {
        srat_memory(&mut body, base, len, node, ENABLED);
    }
    // QEMU pads to (nodes + 2) memory entries for old guests.
    for _ in ranges.len()..numa.nodes.len() + 2 {
        srat_memory(&mut body, 0, 0, 0, 0);
    }
    if let Some(area) = cfg.device_memory.filter(|r| r.size > 0) {
        let last = numa.nodes.len().saturating_sub(1) as u32;
        srat_memory(
            &mut body,
            area.base,
            area.size,
            last,
            ENABLED | HOTPLUGGABLE,
        );
    }
    sdt(b"SRAT", 1, &body)
}

/// The SLIT: the node count, then the distance matrix row by row.
pub(super) fn slit(numa: &machine::NumaPlan) -> Vec<u8> {
    let mut body = (numa.nodes.len() as u64).to_le_bytes().to_vec();
    for row in &numa.distances {
        body.extend(row);
    }
    sdt(b"SLIT", 1, &body)
}

/// The HMAT (revision 2) as QEMU's build_hmat lays it out (hw/acpi/hmat.c): a Memory
/// Proximity Domain Attributes structure per node with RAM, a System Locality Latency and
/// Bandwidth structure per given hierarchy and data type, a Memory Side Cache structure per
/// given cache.
pub(super) fn hmat(numa: &machine::NumaPlan, hmat: &machine::HmatPlan) -> Vec<u8> {
    const INITIATOR_VALID: u16 = 1;
    let mut body = 0u32.to_le_bytes().to_vec(); // reserved
    for (i, node) in numa.nodes.iter().enumerate() {
        // Linux rejects the whole table if a node without memory is a target.
        if node.mem == 0 {
            continue;
        }
        let initiator = hmat.initiators.get(i).copied().flatten();
        body.extend(0u16.to_le_bytes()); // type 0
        body.extend(0u16.to_le_bytes());
        body.extend(40u32.to_le_bytes());
        let flags = if initiator.is_some() {
            INITIATOR_VALID
        } else {
            0
        };
        body.extend(flags.to_le_bytes());
        body.extend(0u16.to_le_bytes());
        // QEMU writes MAX_NODES for "no initiator".
        body.extend(initiator.unwrap_or(machine::numa::MAX_NODES).to_le_bytes());
        body.extend((i as u32).to_le_bytes());
        body.extend(0u32.to_le_bytes());
        body.extend(0u64.to_le_bytes()); // deprecated address range
        body.extend(0u64.to_le_bytes());
    }
    let initiators = &hmat.initiator_nodes;
    let targets = numa.nodes.len() as u32;
    for table in &hmat.lb {
        let n = initiators.len() as u32;
        let len = 32 + 4 * n + 4 * targets + 2 * n * targets;
        body.extend(1u16.to_le_bytes()); // type 1
        body.extend(0u16.to_le_bytes());
        body.extend(len.to_le_bytes());
        body.push(table.hierarchy.code());
        body.push(table.data_type.code());
        body.extend(0u16.to_le_bytes());
        body.extend(n.to_le_bytes());
        body.extend(targets.to_le_bytes());
        body.extend(0u32.to_le_bytes());
        // Latencies in picoseconds, bandwidths in MB/s.
        let base = if table.data_type.is_latency() {
            table.base.saturating_mul(1000)
        } else {
            table.base >> 20
        };
        body.extend(base.to_le_bytes());
        for &i in initiators {
            body.extend(i.to_le_bytes());
        }
        for t in 0..targets {
            body.extend(t.to_le_bytes());
        }
        let mut entries = vec![0u16; (n * targets) as usize];
        for &(i, t, data) in &table.entries {
            if let Some(row) = initiators.iter().position(|&x| x == i) {
                let slot = row * targets as usize + t as usize;
                if let Some(e) = entries.get_mut(slot) {
                    *e = (data / table.base.max(1)) as u16;
                }
            }
        }
        for e in entries {
            body.extend(e.to_le_bytes());
        }
    }
    for cache in &hmat.caches {
        let attributes = u32::from(cache.total_levels)
            | u32::from(cache.level) << 4
            | u32::from(cache.associativity.code()) << 8
            | u32::from(cache.policy.code()) << 12
            | u32::from(cache.line) << 16;
        body.extend(2u16.to_le_bytes()); // type 2
        body.extend(0u16.to_le_bytes());
        body.extend(32u32.to_le_bytes());
        body.extend(cache.node.to_le_bytes());
        body.extend(0u32.to_le_bytes());
        body.extend(cache.size.to_le_bytes());
        body.extend(attributes.to_le_bytes());
        body.extend(0u16.to_le_bytes());
        body.extend(0u16.to_le_bytes()); // no SMBIOS handles
    }
    sdt(b"HMAT", 2, &body)
}
