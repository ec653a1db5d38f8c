//! Unit tests of the command-line parser (spelling, syntax and QEMU's error texts).

use super::*;

fn p(args: &str) -> Result<CliOptions, CliError> {
    parse(args.split_whitespace())
}

#[test]
fn sizes_follow_qemu() {
    for (text, bytes) in [
        ("512", 512u64 << 20),
        ("512M", 512 << 20),
        ("2G", 2 << 30),
        ("1.5G", 3 << 29),
        ("65536k", 64 << 20),
        ("size=256M", 256 << 20),
    ] {
        assert_eq!(parse_ram_size(text), Ok(bytes), "{text}");
    }
    // QEMU 7.2's answers (query-memory-size-summary before alignment, or its error).
    type Row<'a> = (&'a str, Result<(u64, u64, Option<u64>), &'a str>);
    let table: &[Row] = &[
        ("0", Ok((DEFAULT_RAM_SIZE, 0, None))),
        ("", Ok((DEFAULT_RAM_SIZE, 0, None))),
        ("1", Ok((1 << 20, 0, None))),
        ("0.5k", Ok((512, 0, None))),
        ("1b", Ok((1, 0, None))),
        ("1.5M", Ok((3 << 19, 0, None))),
        ("0x100", Ok((256 << 20, 0, None))),
        ("256k", Ok((256 << 10, 0, None))),
        (" 256", Ok((256 << 20, 0, None))),
        ("512,size=256", Ok((256 << 20, 0, None))),
        ("size=256,slots=2,maxmem=1G", Ok((256 << 20, 2, Some(1 << 30)))),
        ("256M,maxmem=1G,slots=2,slots=3", Ok((256 << 20, 3, Some(1 << 30)))),
        ("256,slots=-1,maxmem=1G", Ok((256 << 20, u64::MAX, Some(1 << 30)))),
        ("256,foo=bar", Err("-m 256,foo=bar: Invalid parameter 'foo'")),
        ("256,foo", Err("-m 256,foo: Invalid parameter 'foo'")),
        ("512Q", Err("-m 512Q: Parameter 'size' expects a non-negative number below 2^64")),
        ("1.5", Err("-m 1.5: Parameter 'size' expects a non-negative number below 2^64")),
        ("-1", Err("-m -1: Parameter 'size' expects a non-negative number below 2^64")),
        ("1e3", Err("-m 1e3: Parameter 'size' expects a non-negative number below 2^64")),
        ("256KiB", Err("-m 256KiB: Parameter 'size' expects a non-negative number below 2^64")),
        ("size=", Err("-m size=: Parameter 'size' expects a non-negative number below 2^64")),
        (",slots=0", Err("-m ,slots=0: Parameter 'size' expects a non-negative number below 2^64")),
        ("16E", Err("-m 16E: Value '16E' is out of range for parameter 'size'")),
        (
            "18446744073709551616",
            Err("-m 18446744073709551616: Value '18446744073709551616' is out of range for parameter 'size'"),
        ),
        ("99999999999999", Err("-m 99999999999999: Parameter 'memory.size' expects size")),
        ("256,slots=", Err("-m 256,slots=: Parameter 'slots' expects a number")),
        (
            "256,maxmem=x",
            Err("-m 256,maxmem=x: Parameter 'maxmem' expects a non-negative number below 2^64"),
        ),
    ];
    for (text, want) in table {
        let got = parse_memory(text)
            .map(|m| (m.size, m.slots, m.maxmem))
            .map_err(|e| e.to_string());
        assert_eq!(got, want.map_err(str::to_string), "-m {text}");
    }
}

#[test]
fn no_hpet_is_machine_hpet_off() {
    let catalog = machine::Catalog::builtin();
    let plan_of = |args: &str| {
        let opts = p(args).unwrap();
        crate::config::prepare(&opts, catalog).unwrap().1
    };
    let with = plan_of("-M q35");
    let without = plan_of("-M q35 -no-hpet");
    assert_eq!(without.options.text("hpet").as_deref(), Some("off"));
    let has_hpet = |plan: &machine::Plan| {
        let value = serde_json::to_value(plan).unwrap();
        value["isa"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["type_name"] == "hpet")
    };
    assert!(has_hpet(&with), "q35 has an HPET by default");
    assert!(!has_hpet(&without), "-no-hpet removes it from the plan");
}

#[test]
fn machine_and_options() {
    let o = p(
        "-M q35,usb=off,accel=kvm -m 256 -smp 2 -nodefaults -S -name guest=vm1,debug-threads=on",
    )
    .unwrap();
    assert_eq!(o.machine.as_deref(), Some("q35"));
    assert_eq!(o.machine_options, vec![("usb".into(), "off".into())]);
    assert_eq!(o.ram_size, 256 << 20);
    assert_eq!(o.smp.cpus, 2);
    assert!(o.nodefaults && o.start_paused);
    assert_eq!(o.name.as_deref(), Some("vm1"));
    assert_eq!(p("-machine help").unwrap().action, Action::MachineHelp);
    assert_eq!(
        p("-device pcie-root-port,help").unwrap().action,
        Action::DeviceProperties("pcie-root-port".into())
    );
    assert_eq!(p("-smp cpus=3,sockets=3").unwrap().smp.cpus, 3);
    let smp = p("-smp sockets=2,cores=2").unwrap().smp;
    assert_eq!(
        (smp.cpus, smp.keys.sockets, smp.keys.cores),
        (4, Some(2), Some(2))
    );
    assert_eq!(p("-smp maxcpus=8").unwrap().smp.cpus, 8);
    assert_eq!(p("-smp 2,maxcpus=4").unwrap().smp.max_cpus, Some(4));
}

#[test]
fn cpu_features_follow_qemus_precedence_and_names() {
    let o = p("-cpu max,-fpu,+fpu,-mce,mce=on,+cx8,cx8=off,+sse4_1,sse4-2=on,mmx=off").unwrap();
    assert_eq!(o.cpu_model, Some(crate::cpuid::CpuModel::Max));
    let f = |name: &str| {
        o.cpu_features
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, on)| *on)
    };
    // `-feat` beats `+feat`; both beat `feat=`; underscores and `sse4-N` are aliases.
    assert_eq!(f("fpu"), Some(false));
    assert_eq!(f("mce"), Some(false));
    assert_eq!(f("cx8"), Some(true));
    assert_eq!(f("sse4.1"), Some(true));
    assert_eq!(f("sse4.2"), Some(true));
    assert_eq!(f("mmx"), Some(false));
    assert_eq!(
        p("-cpu max,+foo").unwrap_err().to_string(),
        "Property 'max-x86_64-cpu.foo' not found"
    );
    assert_eq!(
        p("-cpu max,mmx=maybe").unwrap_err().to_string(),
        "can't apply global max-x86_64-cpu.mmx=maybe: Parameter 'mmx' expects 'on' or 'off'"
    );
}

#[test]
fn machine_smp_keys_and_numa_options() {
    let o = p("-machine q35,smp.cpus=8,smp.sockets=2 -numa node,cpus=0-3 -numa node").unwrap();
    assert_eq!((o.smp.cpus, o.smp.keys.sockets), (8, Some(2)));
    assert_eq!(o.machine.as_deref(), Some("q35"));
    assert!(o
        .machine_options
        .iter()
        .all(|(k, _)| !k.starts_with("smp.")));
    assert_eq!(o.numa.len(), 2);
    assert_eq!(
        p("-machine smp.cpus=x").unwrap_err().to_string(),
        "Parameter 'smp.cpus' expects integer"
    );
}

#[test]
fn errors_name_the_option() {
    let cases = [
        ("-foo", "-foo: invalid option"),
        ("-m", "-m: requires an argument"),
        (
            "-smp 0",
            "-smp 0: Invalid CPU topology: CPU topology parameters must be greater than zero",
        ),
        ("-smp abc", "-smp abc: Parameter 'smp.cpus' expects integer"),
        (
            "-serial bogus:x",
            "-serial bogus:x: 'bogus:x' is not a valid char driver",
        ),
        ("stray", "stray: invalid option"),
        (
            "-smp 2,foo=1",
            "-smp 2,foo=1: Parameter 'smp.foo' is unexpected",
        ),
        (
            "-smp 2,cores=x",
            "-smp 2,cores=x: Parameter 'smp.cores' expects integer",
        ),
        ("-cpu foo", "unable to find CPU model 'foo'"),
        (
            "-cpu host,xyz=on",
            "can't apply global host-x86_64-cpu.xyz=on: Property 'host-x86_64-cpu.xyz' not found",
        ),
    ];
    for (args, message) in cases {
        assert_eq!(p(args).unwrap_err().to_string(), message, "{args}");
    }
    assert!(p("-accel tcg").is_err());
    assert!(p("-display gtk").is_err());
}

#[test]
fn firmware_options_follow_qemu() {
    let o = p("-bios /fw/bios.bin -L /a -L /b").unwrap();
    assert_eq!(o.bios, Some(PathBuf::from("/fw/bios.bin")));
    assert_eq!(o.data_dirs, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
    // -machine firmware= names the same image; the later one wins, as in QEMU.
    let o = p("-bios a.bin -machine pc,firmware=b.bin").unwrap();
    assert_eq!(o.bios, Some(PathBuf::from("b.bin")));
    // Legacy flash drives: QEMU's default ids, the next free unit, commas kept.
    let o =
        p("-drive if=pflash,format=raw,file=/x,,y -drive file=/v,if=pflash,readonly=on").unwrap();
    let ids = o.pflash_drives.clone().map(|d| d.map(|(id, _)| id));
    assert_eq!(ids, [Some("pflash0".into()), Some("pflash1".into())]);
    let specs: Vec<String> = o.backends.iter().map(|(_, s)| lossy(s)).collect();
    assert_eq!(
        specs,
        [
            "format=raw,file=/x,,y,id=pflash0,if=none",
            "file=/v,readonly=on,id=pflash1,if=none"
        ]
    );
    let o = p("-drive if=pflash,unit=1,id=vars,file=/v").unwrap();
    assert_eq!(
        o.pflash_drives[1].as_ref().map(|d| d.0.as_str()),
        Some("vars")
    );
    let o = p("-drive if=pflash,index=1,file=/v").unwrap();
    assert_eq!(
        o.pflash_drives,
        [
            None,
            Some(("pflash1".into(), "-drive if=pflash,index=1,file=/v".into()))
        ]
    );
    let cases = [
        (
            "-drive if=pflash,file=f,unit=2",
            "-drive if=pflash,file=f,unit=2: machine type does not support if=pflash,bus=0,unit=2",
        ),
        (
            "-drive if=pflash,file=f,bus=1",
            "-drive if=pflash,file=f,bus=1: machine type does not support if=pflash,bus=1,unit=0",
        ),
        (
            "-drive if=pflash,file=f,unit=x",
            "-drive if=pflash,file=f,unit=x: Parameter 'unit' expects a number",
        ),
        (
            "-drive if=pflash,file=f,unit=1,index=1",
            "-drive if=pflash,file=f,unit=1,index=1: index cannot be used with bus and unit",
        ),
        (
            "-drive if=pflash,file=f -drive if=pflash,file=f,unit=0",
            "-drive if=pflash,file=f,unit=0: drive with bus=0, unit=0 (index=-1) exists",
        ),
        ("-bios", "-bios: requires an argument"),
        ("-L", "-L: requires an argument"),
    ];
    for (args, message) in cases {
        assert_eq!(p(args).unwrap_err().to_string(), message, "{args}");
    }
}

#[test]
fn os_string_keyval_keeps_bytes() {
    let arg = OsString::from_vec(b"file=/tmp/a,,\xe9,id=d0,,x".to_vec());
    let pairs = keyval_pairs_os(&arg);
    assert_eq!(pairs[0].0, "file");
    assert_eq!(pairs[0].1.as_bytes(), b"/tmp/a,\xe9");
    assert_eq!(
        (pairs[1].0.as_str(), pairs[1].1.as_bytes()),
        ("id", &b"d0,x"[..])
    );
    let o = parse([
        OsString::from("-kernel"),
        OsString::from_vec(b"/k\xff".to_vec()),
    ])
    .unwrap();
    assert_eq!(o.kernel.unwrap().as_os_str().as_bytes(), b"/k\xff");
}

#[test]
fn libvirt_options() {
    use super::host_options::rtc_date_epoch;
    let o = p("-uuid 5b527e88-b569-4732-a094-f2b6cc2aaa31 -rtc base=utc -boot strict=on -overcommit mem-lock=off -msg timestamp=on -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny -audiodev none,id=a -name guest=g,debug-threads=on,process=p")
        .unwrap();
    assert_eq!(o.uuid.unwrap()[..4], [0x5b, 0x52, 0x7e, 0x88]);
    assert!(o.boot.strict && o.msg.timestamp && o.name_options.debug_threads);
    assert_eq!(o.name.as_deref(), Some("g"));
    assert_eq!(o.name_options.process.as_deref(), Some("p"));
    assert_eq!(o.audiodevs, vec!["a".to_string()]);
    assert_eq!(o.sandbox.unwrap().settings.len(), 4);
    assert_eq!(rtc_date_epoch("2006-06-17T16:01:21"), Some(1_150_560_081));
    assert_eq!(rtc_date_epoch("1970-01-01"), Some(0));
    assert_eq!(rtc_date_epoch("2006-6-17"), None);
    assert_eq!(rtc_date_epoch("2006-13-17"), None);
    let o = p("-rtc base=2006-06-17").unwrap();
    assert!(o.rtc.offset < 0 && o.rtc.base == "2006-06-17");
    assert_eq!(p("-overcommit mem-lock=on").unwrap().mem_lock, MemLock::On);
    assert!(p("-overcommit cpu-pm=on").is_err());
    assert!(p("-boot order=cc").is_err());
    assert!(p("-uuid 5b527e88-b569-4732-a094-f2b6cc2aaa3").is_err());
}

#[test]
fn reported_keyval_options_are_accepted() {
    for (option, keys) in KEYVAL_OPTIONS {
        for key in *keys {
            let value = match (*option, *key) {
                ("machine", "accel") => "q35,accel=kvm".to_string(),
                ("machine", _) => format!("{key}=q35"),
                _ => format!("{key}=1"),
            };
            let args = [format!("-{option}"), value];
            assert!(parse(args.iter().cloned()).is_ok(), "-{option} {key}");
        }
    }
}

#[test]
fn serial_backends() {
    assert_eq!(p("-serial stdio").unwrap().serial, vec![SerialSpec::Stdio]);
    assert_eq!(
        p("-serial file:/tmp/x").unwrap().serial,
        vec![SerialSpec::File("/tmp/x".into())]
    );
    assert_eq!(
        p("-serial unix:/tmp/s,server=on,wait=off").unwrap().serial,
        vec![SerialSpec::UnixServer {
            path: "/tmp/s".into(),
            wait: false
        }]
    );
    assert!(p("-serial unix:/tmp/s").is_err());
}
