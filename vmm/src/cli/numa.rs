//! `-numa node|cpu|dist|hmat-lb|hmat-cache` (QEMU's NumaOptions): syntax and QEMU's parse texts; the rules that
//! need the machine (CPU indexes, node ids, RAM) are the planner's (machine::numa).

use super::{option_err, split_keyval, CliError};
use machine::{NumaArg, NumaOption};

fn uint(text: &str, key: &str, v: &str) -> Result<u32, CliError> {
    v.parse::<u32>().map_err(|_| {
        option_err(
            "numa",
            text,
            format!("Parameter '{key}' expects a uint64 value"),
        )
    })
}

/// `cpus=N` or `cpus=A-B` (repeatable).
fn cpu_range(text: &str, v: &str, out: &mut Vec<u32>) -> Result<(), CliError> {
    let bad = || {
        option_err(
            "numa",
            text,
            "Parameter 'cpus' expects a uint64 value or range",
        )
    };
    let (a, b) = v.split_once('-').unwrap_or((v, v));
    let a: u32 = a.parse().map_err(|_| bad())?;
    let b: u32 = b.parse().map_err(|_| bad())?;
    if b < a {
        return Err(bad());
    }
    out.extend(a..=b);
    Ok(())
}

/// Parse one `-numa` argument.
pub fn parse_numa(text: &str) -> Result<NumaArg, CliError> {
    let items = split_keyval(text);
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item.split_once('=') {
            Some((k, v)) => pairs.push((k.to_string(), v.to_string())),
            None if i == 0 => pairs.push(("type".into(), item.clone())),
            None => pairs.push((item.clone(), "on".into())),
        }
    }
    let ty = pairs
        .iter()
        .find(|(k, _)| k == "type")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| option_err("numa", text, "Parameter 'type' is missing"))?;
    let invalid = |k: &str| option_err("numa", text, format!("Invalid parameter '{k}'"));
    let option = match ty.as_str() {
        "node" => {
            let (mut nodeid, mut cpus, mut mem, mut memdev, mut initiator) =
                (None, Vec::new(), None, None, None);
            for (k, v) in pairs.iter().filter(|(k, _)| k != "type") {
                match k.as_str() {
                    "nodeid" => nodeid = Some(uint(text, k, v)?),
                    "cpus" => cpu_range(text, v, &mut cpus)?,
                    // A size without a suffix is in MiB (QEMU's legacy format).
                    "mem" => {
                        let bytes = if v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty() {
                            v.parse::<u64>().ok().and_then(|n| n.checked_mul(1 << 20))
                        } else {
                            machine::parse_size(v)
                        };
                        mem = Some(bytes.ok_or_else(|| {
                            option_err("numa", text, "Parameter 'mem' expects a size value")
                        })?);
                    }
                    "memdev" => memdev = Some(v.clone()),
                    "initiator" => initiator = Some(uint(text, k, v)?),
                    other => return Err(invalid(other)),
                }
            }
            NumaOption::Node {
                nodeid,
                cpus,
                mem,
                memdev,
                memdev_size: None,
                initiator,
            }
        }
        "cpu" => {
            let mut ids: [Option<u32>; 6] = [None; 6];
            for (k, v) in pairs.iter().filter(|(k, _)| k != "type") {
                let slot = match k.as_str() {
                    "node-id" => 0,
                    "socket-id" => 1,
                    "die-id" => 2,
                    "cluster-id" => 3,
                    "core-id" => 4,
                    "thread-id" => 5,
                    other => return Err(invalid(other)),
                };
                ids[slot] = Some(uint(text, k, v)?);
            }
            NumaOption::Cpu {
                node_id: ids[0],
                socket_id: ids[1],
                die_id: ids[2],
                cluster_id: ids[3],
                core_id: ids[4],
                thread_id: ids[5],
            }
        }
        "dist" => {
            let mut v3: [Option<u32>; 3] = [None; 3];
            for (k, v) in pairs.iter().filter(|(k, _)| k != "type") {
                let slot = match k.as_str() {
                    "src" => 0,
                    "dst" => 1,
                    "val" => 2,
                    other => return Err(invalid(other)),
                };
                v3[slot] = Some(uint(text, k, v)?);
            }
            let need = |i: usize, name: &str| {
                v3[i].ok_or_else(|| {
                    option_err("numa", text, format!("Parameter '{name}' is missing"))
                })
            };
            NumaOption::Dist {
                src: need(0, "src")?,
                dst: need(1, "dst")?,
                val: need(2, "val")?,
            }
        }
        // Whether `-machine hmat=on` allows them is the planner's check, as in QEMU.
        "hmat-lb" | "hmat-cache" => {
            machine::numa::hmat_option(&ty, &pairs).map_err(|m| option_err("numa", text, m))?
        }
        other => {
            return Err(option_err(
                "numa",
                text,
                format!("Parameter 'type' does not accept value '{other}'"),
            ))
        }
    };
    Ok(NumaArg {
        text: Some(text.to_string()),
        option,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nodes_cpus_and_distances() {
        let a = parse_numa("node,nodeid=1,cpus=0-2,cpus=5,memdev=m").unwrap();
        assert_eq!(
            a.option,
            NumaOption::Node {
                nodeid: Some(1),
                cpus: vec![0, 1, 2, 5],
                mem: None,
                memdev: Some("m".into()),
                memdev_size: None,
                initiator: None
            }
        );
        assert_eq!(
            parse_numa("node,mem=64").unwrap().option,
            NumaOption::Node {
                nodeid: None,
                cpus: vec![],
                mem: Some(64 << 20),
                memdev: None,
                memdev_size: None,
                initiator: None
            }
        );
        assert!(matches!(
            parse_numa("cpu,node-id=1,socket-id=0").unwrap().option,
            NumaOption::Cpu {
                node_id: Some(1),
                socket_id: Some(0),
                core_id: None,
                ..
            }
        ));
        assert_eq!(
            parse_numa("dist,src=0,dst=1,val=20").unwrap().option,
            NumaOption::Dist {
                src: 0,
                dst: 1,
                val: 20
            }
        );
    }

    #[test]
    fn qemu_texts() {
        for (arg, text) in [
            (
                "foo",
                "-numa foo: Parameter 'type' does not accept value 'foo'",
            ),
            ("node,foo=1", "-numa node,foo=1: Invalid parameter 'foo'"),
            (
                "node,nodeid=x",
                "-numa node,nodeid=x: Parameter 'nodeid' expects a uint64 value",
            ),
            (
                "node,cpus=a",
                "-numa node,cpus=a: Parameter 'cpus' expects a uint64 value or range",
            ),
            (
                "node,cpus=3-1",
                "-numa node,cpus=3-1: Parameter 'cpus' expects a uint64 value or range",
            ),
            (
                "node,mem=1x",
                "-numa node,mem=1x: Parameter 'mem' expects a size value",
            ),
            ("dist,src=0", "-numa dist,src=0: Parameter 'dst' is missing"),
        ] {
            assert_eq!(parse_numa(arg).unwrap_err().to_string(), text, "{arg}");
        }
    }
}
