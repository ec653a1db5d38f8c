//! Unit tests of the `-numa` rules: CPU mappings, QEMU's refusals, memory hot-plug and
//! HMAT's 16-bit entries.

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
