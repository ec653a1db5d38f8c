//! `-numa` (QEMU's NUMA options): the plan's nodes as QMP (`query-cpus-fast`,
//! `query-hotpluggable-cpus` node-id), the human monitor (`info numa`) and the guest (ACPI
//! SRAT/SLIT, dumped with `MACHINA_ACPI_DUMP`) see them; bad configurations get QEMU's texts.

mod common;

use common::{machina, require_kvm};
use machina_tests::process::start_with_acpi_dump;
use machina_tests::TempDir;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

/// Start the machine of `args` stopped, with its ACPI tables dumped to `dir`, run `commands`
/// over QMP on stdio and return their answers (in order).
fn session(dir: &std::path::Path, args: &[&str], commands: &[Value]) -> Vec<Value> {
    let mut child = start_with_acpi_dump(&machina(), dir, args, Stdio::piped());
    let mut stdin = child.stdin.take().expect("stdin");
    let mut input = String::from("{\"execute\":\"qmp_capabilities\"}\n");
    for c in commands {
        input.push_str(&c.to_string());
        input.push('\n');
    }
    input.push_str("{\"execute\":\"quit\"}\n");
    stdin.write_all(input.as_bytes()).expect("write QMP");
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    let answers: Vec<Value> = out
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .filter(|v| v.get("return").is_some() || v.get("error").is_some())
        .collect();
    drop(stdin);
    let _ = child.wait();
    // qmp_capabilities first, quit last.
    assert_eq!(answers.len(), commands.len() + 2, "{answers:?}");
    answers[1..=commands.len()].to_vec()
}

/// `(type, length, body offset)` of each SRAT structure.
fn srat_entries(srat: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 48;
    while at + 2 <= srat.len() && srat[at + 1] > 0 {
        let len = usize::from(srat[at + 1]);
        out.push(&srat[at..at + len]);
        at += len;
    }
    out
}

#[test]
fn nodes_reach_qmp_the_human_monitor_and_the_srat_and_slit() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("numa");
    let tables = dir.join("tables");
    let answers = session(
        &tables,
        &[
            "-machine",
            "q35,smp.cpus=4,smp.sockets=2,smp.cores=2",
            "-m",
            "256M",
            "-object",
            "memory-backend-ram,id=m0,size=64M",
            "-object",
            "memory-backend-ram,id=m1,size=192M",
            "-numa",
            "node,nodeid=0,memdev=m0",
            "-numa",
            "node,nodeid=1,memdev=m1",
            "-numa",
            "cpu,node-id=1,socket-id=0",
            "-numa",
            "cpu,node-id=0,socket-id=1",
            "-numa",
            "dist,src=0,dst=1,val=21",
        ],
        &[
            json!({"execute": "query-cpus-fast"}),
            json!({"execute": "query-hotpluggable-cpus"}),
            json!({"execute": "human-monitor-command",
                   "arguments": {"command-line": "info numa"}}),
            json!({"execute": "set-numa-node",
                   "arguments": {"type": "node", "nodeid": 2}}),
        ],
    );
    let nodes: Vec<(u64, u64)> = answers[0]["return"]
        .as_array()
        .expect("cpus")
        .iter()
        .map(|c| {
            (
                c["cpu-index"].as_u64().expect("index"),
                c["props"]["node-id"].as_u64().expect("node-id"),
            )
        })
        .collect();
    assert_eq!(nodes, [(0, 1), (1, 1), (2, 0), (3, 0)]);
    for slot in answers[1]["return"].as_array().expect("slots") {
        let socket = slot["props"]["socket-id"].as_u64().expect("socket");
        assert_eq!(
            slot["props"]["node-id"].as_u64(),
            Some(1 - socket),
            "{slot}"
        );
    }
    assert_eq!(
        // The human monitor ends lines with CRLF, as QEMU's does.
        answers[2]["return"]
            .as_str()
            .expect("info numa")
            .replace("\r\n", "\n"),
        "2 nodes\nnode 0 cpus: 2 3\nnode 0 size: 64 MB\nnode 0 plugged: 0 MB\n\
         node 1 cpus: 0 1\nnode 1 size: 192 MB\nnode 1 plugged: 0 MB\n"
    );
    assert_eq!(
        answers[3]["error"]["desc"],
        "The command is permitted only before the machine has been created"
    );

    let srat = std::fs::read(tables.join("srat.dat")).expect("SRAT");
    let entries = srat_entries(&srat);
    // CPUs: APIC ids 0..3 (2 sockets of 2 cores), socket 0 on node 1.
    let cpus: Vec<(u8, u8)> = entries
        .iter()
        .filter(|e| e[0] == 0)
        .map(|e| (e[3], e[2]))
        .collect();
    assert_eq!(cpus, [(0, 1), (1, 1), (2, 0), (3, 0)]);
    let mems: Vec<(u32, u64, u64)> = entries
        .iter()
        .filter(|e| e[0] == 1 && e[28] & 1 == 1)
        .map(|e| {
            (
                u32::from_le_bytes(e[2..6].try_into().expect("node")),
                u64::from_le_bytes(e[8..16].try_into().expect("base")),
                u64::from_le_bytes(e[16..24].try_into().expect("len")),
            )
        })
        .collect();
    assert_eq!(
        mems,
        [
            (0, 0, 640 << 10),
            (0, 1 << 20, 63 << 20),
            (1, 64 << 20, 192 << 20)
        ]
    );
    let slit = std::fs::read(tables.join("slit.dat")).expect("SLIT");
    assert_eq!(&slit[36..], &[2, 0, 0, 0, 0, 0, 0, 0, 10, 21, 21, 10]);
}

#[test]
fn without_numa_there_is_no_srat_and_no_node_id() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("numa-none");
    let tables = dir.join("tables");
    let answers = session(
        &tables,
        &["-machine", "q35", "-smp", "2"],
        &[
            json!({"execute": "query-cpus-fast"}),
            json!({"execute": "human-monitor-command",
                   "arguments": {"command-line": "info numa"}}),
        ],
    );
    for cpu in answers[0]["return"].as_array().expect("cpus") {
        assert!(cpu["props"].get("node-id").is_none(), "{cpu}");
    }
    assert_eq!(answers[1]["return"], "0 nodes\r\n");
    assert!(!tables.join("srat.dat").exists());
}

/// The first line of machina's error for `args` (stopped, no display, no defaults), after
/// checking that it exited with status 1.
fn refusal(args: &[&str]) -> String {
    let out = Command::new(machina())
        .args(args)
        .args(["-S", "-display", "none", "-nodefaults"])
        .output()
        .expect("run machina");
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr.lines().next().unwrap_or_default().to_string()
}

#[test]
fn bad_numa_configurations_get_qemus_texts() {
    for (args, text) in [
        (
            vec!["-smp", "4", "-numa", "node,cpus=0-9"],
            "machina: -numa node,cpus=0-9: CPU index (4) should be smaller than maxcpus (4)",
        ),
        (
            vec!["-numa", "node,memdev=nope"],
            "machina: -numa node,memdev=nope: memdev=nope is ambiguous",
        ),
        (
            vec!["-numa", "node,nodeid=1"],
            "machina: numa: Node ID missing: 0",
        ),
        (
            vec!["-numa", "node", "-numa", "node"],
            "machina: total memory for NUMA nodes (0x0) should equal RAM size (0x8000000)",
        ),
        (
            vec!["-numa", "node", "-numa", "cpu,socket-id=0"],
            "machina: -numa cpu,socket-id=0: Missing mandatory node-id property",
        ),
        (
            vec!["-numa", "node,mem=64M", "-numa", "node,mem=64M"],
            "machina: -numa node,mem=64M: Parameter -numa node,mem is not supported by this \
             machine type",
        ),
        (
            vec!["-machine", "smp.foo=1"],
            "machina: Parameter 'smp.foo' is unexpected",
        ),
        (
            vec![
                "-numa",
                "node",
                "-numa",
                "node",
                "-numa",
                "dist,src=0,dst=0,val=20",
            ],
            "machina: -numa dist,src=0,dst=0,val=20: Local distance of node 0 should be 10.",
        ),
        (
            vec![
                "-object",
                "memory-backend-ram,id=m,size=128M",
                "-machine",
                "pc,memory-backend=m",
                "-numa",
                "node,memdev=m",
            ],
            "machina: '-machine memory-backend' and '-numa memdev' properties are mutually \
             exclusive",
        ),
    ] {
        assert_eq!(refusal(&args), text, "{args:?}");
    }
}

/// `qom-get` of the first CPU's property `prop`.
fn cpu0_get(prop: &str) -> Value {
    let cpu0 = "/machine/unattached/device[0]";
    json!({"execute": "qom-get", "arguments": {"path": cpu0, "property": prop}})
}

/// The word of `words` (X86CPUFeatureWordInfo list) for leaf `eax`, register `reg`.
fn word(words: &Value, eax: u64, reg: &str) -> u64 {
    words
        .as_array()
        .expect("feature words")
        .iter()
        .find(|w| w["cpuid-input-eax"] == eax && w["cpuid-register"] == reg)
        .and_then(|w| w["features"].as_u64())
        .unwrap_or(0)
}

#[test]
fn cpu_features_on_the_command_line_reach_the_cpu_object() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("cpu-features");
    let answers = session(
        &dir.join("tables"),
        &["-cpu", "max,-mmx,+invtsc,sse4_2=off"],
        &[
            cpu0_get("mmx"),
            cpu0_get("sse4.2"),
            cpu0_get("feature-words"),
            cpu0_get("filtered-features"),
        ],
    );
    assert_eq!(answers[0]["return"], false);
    assert_eq!(answers[1]["return"], false);
    let (words, filtered) = (&answers[2]["return"], &answers[3]["return"]);
    assert_eq!(word(words, 1, "EDX") & (1 << 23), 0, "mmx off");
    assert_eq!(word(words, 1, "ECX") & (1 << 20), 0, "sse4.2 off");
    // invtsc is on where KVM offers it, and filtered where it does not, never both.
    let on = word(words, 0x8000_0007, "EDX") & (1 << 8) != 0;
    let withheld = word(filtered, 0x8000_0007, "EDX") & (1 << 8) != 0;
    assert!(on != withheld, "invtsc: on {on}, filtered {withheld}");
}

#[test]
fn the_qemu64_model_gives_its_signature_and_only_its_features() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("qemu64");
    let answers = session(
        &dir.join("tables"),
        &["-cpu", "qemu64,apic-id=0"],
        &[
            cpu0_get("vendor"),
            cpu0_get("family"),
            cpu0_get("model"),
            cpu0_get("model-id"),
            cpu0_get("feature-words"),
            cpu0_get("type"),
            json!({"execute": "query-cpu-definitions"}),
        ],
    );
    assert_eq!(answers[0]["return"], "AuthenticAMD");
    assert_eq!(answers[1]["return"], 15);
    assert_eq!(answers[2]["return"], 107);
    assert_eq!(answers[3]["return"], "QEMU Virtual CPU version 2.5+");
    let words = &answers[4]["return"];
    // No leaf-7 features (AVX2, ...) and none of 0x80000007 (invtsc): qemu64 has none.
    assert_eq!(word(words, 7, "EBX"), 0);
    assert_eq!(word(words, 0x8000_0007, "EDX"), 0);
    // lm, syscall and nx where KVM has them (every x86-64 host does).
    assert_eq!(word(words, 0x8000_0001, "EDX") & (1 << 29), 1 << 29);
    assert_eq!(answers[5]["return"], "qemu64-x86_64-cpu");
    let defs = answers[6]["return"].as_array().expect("definitions");
    let qemu64 = defs
        .iter()
        .find(|d| d["name"] == "qemu64")
        .expect("qemu64 listed");
    assert_eq!(qemu64["typename"], "qemu64-x86_64-cpu");
    assert!(qemu64["unavailable-features"].is_array());

    // A guest boots on it.
    let r = common::boot(&["-cpu", "qemu64", "-smp", "2", "-m", "256", "-nographic"]);
    r.check(
        r.status == Some(0) && r.stdout.contains("poweroff"),
        "qemu64 guest runs to its poweroff",
    );
}

/// Dump the tables of `args` (stopped, q35) into `dir`.
fn dump(dir: &std::path::Path, args: &[&str]) {
    let mut all = vec!["-machine", "q35"];
    all.extend_from_slice(args);
    session(dir, &all, &[]);
}

#[test]
fn srat_and_slit_match_qemus_bios_tables_test_expectations() {
    if !require_kvm() {
        return;
    }
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/qemu-acpi");
    let body = |path: std::path::PathBuf| std::fs::read(&path).expect("table")[36..].to_vec();
    let dir = TempDir::new("numa-qemu");
    let numamem = dir.join("numamem");
    dump(
        &numamem,
        &[
            "-object",
            "memory-backend-ram,id=ram0,size=128M",
            "-numa",
            "node",
            "-numa",
            "node,memdev=ram0",
        ],
    );
    assert_eq!(
        body(numamem.join("srat.dat")),
        body(data.join("SRAT.numamem"))
    );
    let memhp = dir.join("memhp");
    dump(
        &memhp,
        &[
            "-m",
            "128,slots=3,maxmem=1G",
            "-object",
            "memory-backend-ram,id=ram0,size=64M",
            "-object",
            "memory-backend-ram,id=ram1,size=64M",
            "-numa",
            "node,memdev=ram0",
            "-numa",
            "node,memdev=ram1",
            "-numa",
            "dist,src=0,dst=1,val=21",
        ],
    );
    assert_eq!(body(memhp.join("srat.dat")), body(data.join("SRAT.memhp")));
    assert_eq!(body(memhp.join("slit.dat")), body(data.join("SLIT.memhp")));
}

/// A command line of memory backends and `-numa` options in order: the HMAT configurations
/// of QEMU's bios-tables-test and their refusals.
struct NumaArgs(Vec<String>);

impl NumaArgs {
    /// `-machine MACHINE -smp SMP -m MEMORY`.
    fn new(machine: &str, smp: &str, memory: &str) -> NumaArgs {
        NumaArgs(
            ["-machine", machine, "-smp", smp, "-m", memory]
                .map(str::to_string)
                .to_vec(),
        )
    }

    /// `-object memory-backend-ram,size=SIZE,id=ID`.
    fn ram(mut self, size: &str, id: &str) -> NumaArgs {
        self.0.push("-object".into());
        self.0
            .push(format!("memory-backend-ram,size={size},id={id}"));
        self
    }

    /// `-numa OPTION`.
    fn numa(mut self, option: &str) -> NumaArgs {
        self.0.push("-numa".into());
        self.0.push(option.into());
        self
    }

    /// `-numa node,nodeid=NODE,memdev=MEMDEV`.
    fn node(self, node: u32, memdev: &str) -> NumaArgs {
        self.numa(&format!("node,nodeid={node},memdev={memdev}"))
    }

    /// `-numa cpu,node-id=NODE,socket-id=SOCKET`.
    fn cpu(self, node: u32, socket: u32) -> NumaArgs {
        self.numa(&format!("cpu,node-id={node},socket-id={socket}"))
    }

    /// `-numa hmat-lb` of the memory hierarchy: `data_type` `access-latency` (the value in
    /// `latency=`) or `access-bandwidth` (in `bandwidth=`).
    fn lb(self, initiator: u32, target: u32, data_type: &str, value: &str) -> NumaArgs {
        let unit = if data_type.ends_with("latency") {
            "latency"
        } else {
            "bandwidth"
        };
        self.numa(&format!(
            "hmat-lb,initiator={initiator},target={target},hierarchy=memory,\
             data-type={data_type},{unit}={value}"
        ))
    }

    /// `-numa hmat-cache` as bios-tables-test gives each node: 10K, level 1, direct-mapped,
    /// write-back, 8-byte lines.
    fn cache(self, node: u32) -> NumaArgs {
        self.numa(&format!(
            "hmat-cache,node-id={node},size=10K,level=1,associativity=direct,\
             policy=write-back,line=8"
        ))
    }

    fn strs(&self) -> Vec<&str> {
        self.0.iter().map(String::as_str).collect()
    }
}

/// `-machine hmat=on` with QEMU's bios-tables-test HMAT configurations: the HMAT (and the
/// SRAT) the guest reads are QEMU's expected tables, byte for byte after the header.
#[test]
fn hmat_matches_qemus_bios_tables_test_expectations() {
    if !require_kvm() {
        return;
    }
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/qemu-acpi");
    let body = |path: std::path::PathBuf| std::fs::read(&path).expect("table")[36..].to_vec();
    let dir = TempDir::new("numa-hmat");
    // tests/qtest/bios-tables-test.c test_acpi_tcg_acpi_hmat.
    let args = NumaArgs::new("hmat=on", "2,sockets=2", "128M,slots=2,maxmem=1G")
        .ram("64M", "m0")
        .ram("64M", "m1")
        .node(0, "m0")
        .numa("node,nodeid=1,memdev=m1,initiator=0")
        .cpu(0, 0)
        .cpu(0, 1)
        .lb(0, 0, "access-latency", "1")
        .lb(0, 0, "access-bandwidth", "65534M")
        .lb(0, 1, "access-latency", "65534")
        .lb(0, 1, "access-bandwidth", "32767M")
        .cache(0)
        .cache(1);
    let hmat = dir.join("hmat");
    dump(&hmat, &args.strs());
    assert_eq!(
        body(hmat.join("hmat.dat")),
        body(data.join("HMAT.acpihmat"))
    );
    assert_eq!(
        body(hmat.join("srat.dat")),
        body(data.join("SRAT.acpihmat"))
    );
    let index = std::fs::read_to_string(hmat.join("index.txt")).unwrap_or_default();
    assert!(index.contains("hmat"), "{index}");

    // test_acpi_q35_tcg_acpi_hmat_noinitiator: a node with no CPU and no initiator.
    let mut args = NumaArgs::new("hmat=on", "4,sockets=2", "128M")
        .ram("32M", "ram0")
        .ram("32M", "ram1")
        .ram("64M", "ram2")
        .node(0, "ram0")
        .node(1, "ram1")
        .node(2, "ram2")
        .cpu(0, 0)
        .cpu(0, 0)
        .cpu(1, 1)
        .cpu(1, 1);
    for (i, t, latency, bandwidth) in [
        (0, 0, 10, 10485760),
        (0, 1, 20, 5242880),
        (0, 2, 30, 1048576),
        (1, 0, 20, 5242880),
        (1, 1, 10, 10485760),
        (1, 2, 30, 1048576),
    ] {
        args = args.lb(i, t, "access-latency", &latency.to_string()).lb(
            i,
            t,
            "access-bandwidth",
            &bandwidth.to_string(),
        );
    }
    let noinit = dir.join("noinitiator");
    dump(&noinit, &args.strs());
    assert_eq!(
        body(noinit.join("hmat.dat")),
        body(data.join("HMAT.acpihmat-noinitiator"))
    );

    // Without hmat=on there is no HMAT.
    let off = dir.join("off");
    dump(
        &off,
        &[
            "-object",
            "memory-backend-ram,size=64M,id=m0",
            "-object",
            "memory-backend-ram,size=64M,id=m1",
            "-numa",
            "node,memdev=m0",
            "-numa",
            "node,memdev=m1",
        ],
    );
    assert!(!off.join("hmat.dat").exists());
}

#[test]
fn bad_hmat_configurations_get_qemus_texts() {
    let base = NumaArgs::new("pc,hmat=on", "2,sockets=2", "128M")
        .ram("64M", "m0")
        .ram("64M", "m1")
        .node(0, "m0")
        .cpu(0, 0)
        .cpu(0, 1);
    let node1 = "node,nodeid=1,memdev=m1,initiator=0";
    let lat = "hmat-lb,initiator=0,target=0,hierarchy=memory,data-type=access-latency,latency=1";
    for (extra, text) in [
        (
            vec!["-numa", "node,nodeid=1,memdev=m1,initiator=1"],
            "machina: The initiator of NUMA node 1 is invalid".to_string(),
        ),
        (
            vec![
                "-numa", node1, "-numa",
                "hmat-lb,initiator=0,target=1,hierarchy=memory,data-type=access-bandwidth,bandwidth=1048575",
            ],
            "machina: -numa hmat-lb,initiator=0,target=1,hierarchy=memory,\
             data-type=access-bandwidth,bandwidth=1048575: Bandwidth 1048575 between \
             initiator=0 and target=1 should be 1MB aligned"
                .into(),
        ),
        (
            vec![
                "-numa", node1, "-numa",
                "hmat-lb,initiator=1,target=0,hierarchy=memory,data-type=access-latency,latency=5",
            ],
            "machina: -numa hmat-lb,initiator=1,target=0,hierarchy=memory,\
             data-type=access-latency,latency=5: Invalid initiator=1, it isn't an initiator \
             proximity domain"
                .into(),
        ),
        (
            vec![
                "-numa", node1, "-numa",
                "hmat-cache,node-id=0,size=10K,level=1,associativity=direct,policy=write-back,line=8",
            ],
            "machina: -numa hmat-cache,node-id=0,size=10K,level=1,associativity=direct,\
             policy=write-back,line=8: The latency and bandwidth information of node-id=0 \
             should be provided before memory side cache attributes"
                .into(),
        ),
        (
            vec![
                "-numa", node1, "-numa", lat, "-numa",
                "hmat-lb,initiator=0,target=1,hierarchy=memory,data-type=access-latency,latency=65535",
            ],
            "machina: -numa hmat-lb,initiator=0,target=1,hierarchy=memory,\
             data-type=access-latency,latency=65535: Latency 65535 between initiator=0 and \
             target=1 should not differ from previously entered min or max values on more \
             than 65534"
                .into(),
        ),
        (
            vec!["-numa", node1, "-numa", "hmat-lb,initiator=0,target=0,data-type=access-latency"],
            "machina: -numa hmat-lb,initiator=0,target=0,data-type=access-latency: Parameter \
             'hierarchy' is missing"
                .into(),
        ),
    ] {
        let mut args = base.strs();
        args.extend(extra.iter().copied());
        assert_eq!(refusal(&args), text, "{extra:?}");
    }
    // Without hmat=on: QEMU's refusal of every HMAT option.
    let out = Command::new(machina())
        .args(["-numa", "node", "-numa", lat, "-S", "-nodefaults"])
        .output()
        .expect("run machina");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "ACPI Heterogeneous Memory Attribute Table (HMAT) is disabled, enable it with -machine \
         hmat=on before using any of hmat specific options"
    ));
}
