//! Option syntax: which options take an argument, which take `key=value` lists (what
//! `query-command-line-options` reports), and the `--help` text.

/// The options that take `key=value` lists, with the keys the parser acts on: what QMP's
/// `query-command-line-options` reports (`-machine` adds the machine type's options).
pub const KEYVAL_OPTIONS: &[(&str, &[&str])] = &[
    ("machine", &["type", "accel"]),
    (
        "smp",
        &[
            "cpus", "maxcpus", "sockets", "dies", "clusters", "cores", "threads",
        ],
    ),
    ("name", &["guest"]),
    ("trace", &["enable", "events", "file"]),
];

/// Options that take an argument, with their canonical spelling.
pub(super) fn takes_argument(name: &str) -> bool {
    matches!(
        name,
        "machine"
            | "M"
            | "m"
            | "smp"
            | "numa"
            | "cpu"
            | "kernel"
            | "bios"
            | "L"
            | "initrd"
            | "append"
            | "serial"
            | "display"
            | "name"
            | "accel"
            | "device"
            | "machine-definition"
            | "qmp"
            | "drive"
            | "blockdev"
            | "netdev"
            | "object"
            | "qtest"
            | "qtest-log"
            | "qmp-pretty"
            | "chardev"
            | "mon"
            | "monitor"
            | "vga"
            | "nic"
            | "net"
            | "pidfile"
            | "uuid"
            | "overcommit"
            | "rtc"
            | "boot"
            | "add-fd"
            | "audiodev"
            | "audio"
            | "sandbox"
            | "msg"
            | "d"
            | "D"
            | "trace"
            | "action"
            | "watchdog-action"
            | "global"
            | "readconfig"
    )
}

/// Text of `--help`.
pub fn help_text() -> String {
    format!(
        "machina {} - a KVM virtual machine monitor for QEMU's q35 and pc machine types\n\
usage: machina [options]\n\
\n\
-machine TYPE[,prop=value...]  select the machine type (pc, q35, pc-q35-X.Y, none); -machine help lists them\n\
-M TYPE[,...]                  same as -machine\n\
-machine-definition FILE       load extra machine/device type definitions (JSON, see docs/PLAN.md)\n\
-m [size=]SIZE[,slots=N,maxmem=SIZE]  guest RAM (512, 512M, 2G; default 128M)\n\
-smp N[,maxcpus=M,sockets=S,dies=D,cores=C,threads=T]  vCPUs and their topology (QEMU's rules)\n\
-numa node[,nodeid=N][,cpus=A-B][,memdev=ID][,initiator=N] | cpu,node-id=N[,socket-id=S,...] | dist,src=A,dst=B,val=D\n\
       | hmat-lb,initiator=N,target=N,hierarchy=H,data-type=T,latency=NS|bandwidth=SIZE | hmat-cache,node-id=N,...\n\
                               NUMA nodes, their CPUs and RAM, distances, HMAT with -machine hmat=on (ACPI SRAT/SLIT/HMAT)\n\
-cpu host|max|MODEL[,+feat,-feat,feat=on|off,enforce=on]  the guest CPU: KVM's supported CPUID (host,\n\
                               max, the default) or a QEMU model (qemu64, Haswell, EPYC, ...; query-cpu-definitions);\n\
                               features off, or on where KVM has them (a warning each, or refused with enforce=on)\n\
-kernel FILE                   bzImage or ELF with a PVH note (default: the bundled tiny guest)\n\
-initrd FILE                   initial ram disk\n\
-append CMDLINE                kernel command line\n\
-serial stdio|null|none|file:PATH|unix:PATH,server=on,wait=off\n\
-nographic                     serial on stdio, no display\n\
-display none                  no display (machina has none)\n\
-device TYPE[,prop=value...]   add a device; -device help lists types, -device TYPE,help its properties\n\
-drive file=PATH,if=none,id=ID,format=raw[,readonly=on][,cache=MODE]   a raw disk for -device ...,drive=ID\n\
-blockdev driver=file,node-name=ID,filename=PATH   the same as a block node\n\
-netdev tap,id=ID,ifname=NAME,script=no,downscript=no   a tap backend for -device ...,netdev=ID\n\
-chardev file|null|stdio|socket|pty,id=ID,...   a character backend (-mon chardev=ID,mode=control for QMP;\n\
                               -device isa-serial,chardev=ID for a serial port)\n\
-add-fd set=N,fd=M[,opaque=TEXT]   pass an fd; open it as /dev/fdset/N\n\
-object secret,id=ID,format=raw|base64,file=PATH|data=TEXT   a secret\n\
-object memory-backend-ram|memory-backend-memfd|memory-backend-file,id=ID,size=SIZE[,mem-path=PATH]\n\
                               guest RAM from that backend with -machine memory-backend=ID\n\
-uuid UUID                     the machine's UUID\n\
-overcommit mem-lock=on|off    lock all memory\n\
-rtc base=utc|localtime|DATE,clock=host|rt|vm   the RTC's start and the clock it runs on\n\
-boot [order=]DRIVES,once=DRIVES,strict=on|off,...   the CMOS boot order and firmware settings\n\
-no-fd-bootchk                 the CMOS tells firmware to skip the floppy signature check\n\
-action reboot=reset|shutdown,shutdown=poweroff|pause,panic=pause|shutdown|exit-failure|none,\n\
        watchdog=reset|shutdown|poweroff|pause|debug|none|inject-nmi   what guest events do\n\
-watchdog-action ACTION        the same as -action watchdog=ACTION\n\
-global ICH9-LPC.noreboot=on|off   the TCO watchdog's no-reboot strap\n\
-audiodev none,id=ID | -audio none   no sound (machina has no sound device)\n\
-sandbox on|off,...            parsed only: machina installs no seccomp filter\n\
-msg timestamp=on              prefix errors with the time\n\
-d guest_errors,unimp,trace:PATTERN   log what the guest got wrong, what machina lacks, trace events (-d help)\n\
-D FILE                        write the -d and -trace log to FILE instead of stderr\n\
-trace [enable=]PATTERN|events=FILE|file=FILE   enable trace events (-trace help lists them)\n\
-object rng-random,id=ID,filename=PATH | rng-builtin,id=ID   an entropy source for virtio-rng-pci,rng=ID\n\
-readconfig FILE               read options from QEMU's configuration file ([device \"id\"], [memory], ...)\n\
-nodefaults                    create no default devices\n\
-no-user-config                accepted (machina reads no user config)\n\
-no-reboot                     exit instead of rebooting when the guest resets\n\
-no-hpet                       same as -machine hpet=off\n\
-no-shutdown                   stop, not exit, when the guest powers off (QMP system_reset, cont)\n\
-S                             do not start the vCPUs\n\
-qmp unix:PATH,server=on,wait=off | tcp:HOST:PORT,server=on,wait=off | stdio   QMP monitor\n\
-chardev socket,id=ID,path=PATH,server=on,wait=off  -mon chardev=ID,mode=control   QMP on a chardev\n\
-delay-machine-init (also --preconfig)  start QMP before the machine exists; build on x-exit-preconfig\n\
-name NAME                     guest name\n\
-pidfile FILE                  write the process id to FILE (locked; removed at exit)\n\
-daemonize                     detach once the monitors listen (the caller exits 0, or 1 on error)\n\
-accel kvm                     the accelerator (-accel qtest with -qtest: no vCPU runs)\n\
-qtest unix:PATH[,server=on] | stdio   QEMU's qtest protocol: drive I/O and memory from a test\n\
-h, --help                     this text\n\
--version                      version\n",
        env!("CARGO_PKG_VERSION")
    )
}
