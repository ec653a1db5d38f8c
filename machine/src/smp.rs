//! `-smp` topology: QEMU's rules (hw/core/machine-smp.c, QEMU 7.2) for computing omitted
//! sockets/dies/cores/threads/maxcpus, its error texts, and the x86 APIC-id layout
//! (include/hw/i386/topology.h) that CPUID leaves 0xb/0x1f, the MADT and QMP's CPU
//! properties are derived from.

use crate::error::PlanError;
use serde::{Deserialize, Serialize};

/// The topology keys of `-smp` as given; `None` when omitted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SmpKeys {
    pub sockets: Option<u32>,
    pub dies: Option<u32>,
    pub clusters: Option<u32>,
    pub cores: Option<u32>,
    pub threads: Option<u32>,
}

/// A resolved CPU topology: `max_cpus` = sockets * dies * cores * threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuTopology {
    pub sockets: u32,
    pub dies: u32,
    pub cores: u32,
    pub threads: u32,
}

impl Default for CpuTopology {
    fn default() -> Self {
        CpuTopology {
            sockets: 1,
            dies: 1,
            cores: 1,
            threads: 1,
        }
    }
}

/// Where CPU `index` sits in the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuIds {
    pub socket: u32,
    pub die: u32,
    pub core: u32,
    pub thread: u32,
}

/// What a machine type allows (QEMU's `MachineClass.smp_props`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmpRules {
    /// Machine types before 6.2 fill omitted sockets before cores.
    pub prefer_sockets: bool,
    pub dies_supported: bool,
}

/// Bits of an APIC id needed to number `count` items (QEMU's apicid_bitwidth_for_count).
pub fn bitwidth(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

impl CpuTopology {
    /// Compute the topology from `cpus` (None: omitted), `maxcpus` and the keys, as QEMU 7.2's
    /// `machine_parse_smp_config` does. Returns (topology, cpus, max_cpus).
    pub fn resolve(
        cpus: Option<u32>,
        maxcpus: Option<u32>,
        keys: &SmpKeys,
        rules: SmpRules,
    ) -> Result<(CpuTopology, u32, u32), PlanError> {
        let given = [
            cpus,
            maxcpus,
            keys.sockets,
            keys.dies,
            keys.clusters,
            keys.cores,
            keys.threads,
        ];
        if given.contains(&Some(0)) {
            return Err(PlanError::ZeroCpus);
        }
        let cpus = cpus.unwrap_or(0);
        let mut maxcpus = maxcpus.unwrap_or(0);
        let mut sockets = keys.sockets.unwrap_or(0);
        let mut cores = keys.cores.unwrap_or(0);
        let mut threads = keys.threads.unwrap_or(0);
        let dies = keys.dies.unwrap_or(1);
        let clusters = keys.clusters.unwrap_or(1);
        if !rules.dies_supported && dies > 1 {
            return Err(PlanError::Topology(
                "dies not supported by this machine's CPU topology".into(),
            ));
        }
        if clusters > 1 {
            return Err(PlanError::Topology(
                "clusters not supported by this machine's CPU topology".into(),
            ));
        }
        // Divisions below use at least 1 so that nothing divides by zero; QEMU's products
        // cannot be zero there either (each factor is given or defaulted first).
        let div = |a: u32, b: u64| (u64::from(a) / b.max(1)) as u32;
        let prod = |v: &[u32]| v.iter().map(|&x| u64::from(x)).product::<u64>();
        if cpus == 0 && maxcpus == 0 {
            sockets = sockets.max(1);
            cores = cores.max(1);
            threads = threads.max(1);
        } else {
            if maxcpus == 0 {
                maxcpus = cpus;
            }
            if rules.prefer_sockets {
                if sockets == 0 {
                    cores = cores.max(1);
                    threads = threads.max(1);
                    sockets = div(maxcpus, prod(&[dies, clusters, cores, threads]));
                } else if cores == 0 {
                    threads = threads.max(1);
                    cores = div(maxcpus, prod(&[sockets, dies, clusters, threads]));
                }
            } else if cores == 0 {
                sockets = sockets.max(1);
                threads = threads.max(1);
                cores = div(maxcpus, prod(&[sockets, dies, clusters, threads]));
            } else if sockets == 0 {
                threads = threads.max(1);
                sockets = div(maxcpus, prod(&[dies, clusters, cores, threads]));
            }
            if threads == 0 {
                threads = div(maxcpus, prod(&[sockets, dies, clusters, cores]));
            }
        }
        let product = prod(&[sockets, dies, clusters, cores, threads]);
        if maxcpus == 0 {
            // An overflowing product then fails the hierarchy check below.
            maxcpus = u32::try_from(product).unwrap_or(u32::MAX);
        }
        let cpus = if cpus == 0 { maxcpus } else { cpus };
        let hierarchy = if rules.dies_supported {
            format!("sockets ({sockets}) * dies ({dies}) * cores ({cores}) * threads ({threads})")
        } else {
            format!("sockets ({sockets}) * cores ({cores}) * threads ({threads})")
        };
        if product != u64::from(maxcpus) {
            return Err(PlanError::Topology(format!(
                "Invalid CPU topology: product of the hierarchy must match maxcpus: \
                 {hierarchy} != maxcpus ({maxcpus})"
            )));
        }
        if maxcpus < cpus {
            return Err(PlanError::Topology(format!(
                "Invalid CPU topology: maxcpus must be equal to or greater than smp: \
                 {hierarchy} == maxcpus ({maxcpus}) < smp_cpus ({cpus})"
            )));
        }
        let topology = CpuTopology {
            sockets,
            dies,
            cores,
            threads,
        };
        Ok((topology, cpus, maxcpus))
    }

    /// CPU `index`'s socket, die, core and thread (QEMU's x86_topo_ids_from_idx).
    pub fn ids(&self, index: u32) -> CpuIds {
        let threads = self.threads.max(1);
        let cores = self.cores.max(1);
        let dies = self.dies.max(1);
        CpuIds {
            thread: index % threads,
            core: index / threads % cores,
            die: index / (threads * cores) % dies,
            socket: index / (threads * cores * dies),
        }
    }

    /// Shift of the core field in an APIC id.
    pub fn core_offset(&self) -> u32 {
        bitwidth(self.threads)
    }

    pub fn die_offset(&self) -> u32 {
        self.core_offset() + bitwidth(self.cores)
    }

    /// Shift of the package (socket) field in an APIC id.
    pub fn pkg_offset(&self) -> u32 {
        self.die_offset() + bitwidth(self.dies)
    }

    /// The initial APIC id of CPU `index` (QEMU's x86_apicid_from_cpu_idx).
    pub fn apic_id(&self, index: u32) -> u32 {
        let ids = self.ids(index);
        (ids.socket << self.pkg_offset())
            | (ids.die << self.die_offset())
            | (ids.core << self.core_offset())
            | ids.thread
    }

    /// Logical processors in one package.
    pub fn per_package(&self) -> u32 {
        self.dies * self.cores * self.threads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW: SmpRules = SmpRules {
        prefer_sockets: false,
        dies_supported: true,
    };
    const OLD: SmpRules = SmpRules {
        prefer_sockets: true,
        dies_supported: true,
    };

    fn keys(s: Option<u32>, d: Option<u32>, c: Option<u32>, t: Option<u32>) -> SmpKeys {
        SmpKeys {
            sockets: s,
            dies: d,
            clusters: None,
            cores: c,
            threads: t,
        }
    }

    fn err(r: Result<(CpuTopology, u32, u32), PlanError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn qemu_rules_and_texts() {
        let (t, cpus, max) =
            CpuTopology::resolve(Some(4), None, &keys(Some(2), None, Some(2), None), NEW).unwrap();
        assert_eq!((t.sockets, t.cores, t.threads, cpus, max), (2, 2, 1, 4, 4));
        // Since 6.2 omitted values go to cores, before to sockets.
        let (t, _, max) = CpuTopology::resolve(Some(4), Some(8), &SmpKeys::default(), NEW).unwrap();
        assert_eq!((t.sockets, t.cores, max), (1, 8, 8));
        let (t, _, _) = CpuTopology::resolve(Some(4), None, &SmpKeys::default(), OLD).unwrap();
        assert_eq!((t.sockets, t.cores), (4, 1));
        let (t, cpus, _) =
            CpuTopology::resolve(None, None, &keys(Some(2), Some(2), None, None), NEW).unwrap();
        assert_eq!((t.sockets, t.dies, cpus), (2, 2, 4));
        assert_eq!(
            err(CpuTopology::resolve(
                Some(8),
                None,
                &keys(Some(1), None, Some(1), Some(1)),
                NEW
            )),
            "Invalid CPU topology: product of the hierarchy must match maxcpus: sockets (1) * \
             dies (1) * cores (1) * threads (1) != maxcpus (8)"
        );
        assert_eq!(
            err(CpuTopology::resolve(
                Some(2),
                None,
                &keys(Some(3), None, None, None),
                NEW
            )),
            "Invalid CPU topology: product of the hierarchy must match maxcpus: sockets (3) * \
             dies (1) * cores (0) * threads (1) != maxcpus (2)"
        );
        assert_eq!(
            err(CpuTopology::resolve(
                Some(2),
                Some(1),
                &SmpKeys::default(),
                NEW
            )),
            "Invalid CPU topology: maxcpus must be equal to or greater than smp: sockets (1) * \
             dies (1) * cores (1) * threads (1) == maxcpus (1) < smp_cpus (2)"
        );
        let clusters = SmpKeys {
            clusters: Some(2),
            ..Default::default()
        };
        assert_eq!(
            err(CpuTopology::resolve(Some(4), None, &clusters, NEW)),
            "clusters not supported by this machine's CPU topology"
        );
    }

    #[test]
    fn apic_ids_leave_gaps_for_non_power_of_two_counts() {
        let t = CpuTopology {
            sockets: 2,
            dies: 1,
            cores: 3,
            threads: 2,
        };
        assert_eq!((t.core_offset(), t.die_offset(), t.pkg_offset()), (1, 3, 3));
        let ids: Vec<u32> = (0..12).map(|i| t.apic_id(i)).collect();
        assert_eq!(ids, [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13]);
        assert_eq!(
            t.ids(7),
            CpuIds {
                socket: 1,
                die: 0,
                core: 0,
                thread: 1
            }
        );
        assert_eq!(bitwidth(1), 0);
        assert_eq!(bitwidth(3), 2);
        assert_eq!(bitwidth(4), 2);
    }
}
