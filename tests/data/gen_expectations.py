#!/usr/bin/env python3
"""Generate the qtest conformance expectations from QEMU (the oracle).

    python3 tests/data/gen_expectations.py            # writes tests/data/qtest_*.json
    python3 tests/data/gen_expectations.py --compare target/debug/machina
                                                      # also prints what machina differs in

Needs qemu-system-x86_64 (Debian 12: QEMU 7.2, `apt-get install qemu-system-x86`). The
Rust tests read only the JSON files; they never run QEMU.

How QEMU is run: `-accel tcg -S -display none -qtest unix:...` (Debian's 7.2 has no qtest
accelerator; with -S no guest code runs, so PCI config space is QEMU's reset state). The
machine gets `smm=off` because machina resolves smm=auto to off (it has no SMM); the rest of
the command line is exactly what the test gives machina (`-accel qtest`).

The walk (qtestlib.py, mirrored by tests/src/qtest_client.rs): number bridges depth-first in
devfn order, enable ECAM on q35 (PCIEXBAR = 0xb0000001), read every function's 256 bytes,
walk capabilities, probe BARs/ROM/bridge windows with all-ones and restore.

Firmware facts come from a second QEMU run without -S: SeaBIOS (with a debugcon log to know
when it is done) numbers the buses and programs the chipset; the tests compare machina's
`machina_firmware_init` with that.

Where QEMU 7.2 differs from the QEMU 10.2 machina models, the 10.2 value is written instead
and listed in VERSION_OVERRIDES with its source.
"""

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qtestlib import (QEMU, Qtest, all_functions, fmt_bdf, present, qemu_args,  # noqa: E402
                      walk)

HERE = os.path.dirname(os.path.abspath(__file__))

RP = "pcie-root-port"
# Config-space scenarios: name, command line (shared by QEMU and machina).
CONFIG = [
    ("q35", "-M q35 -nodefaults"),
    ("pc", "-M pc -nodefaults"),
    ("q35_sata_off_smbus_off", "-M q35,sata=off,smbus=off -nodefaults"),
    ("pc_acpi_off", "-M pc,acpi=off -nodefaults"),
    ("q35_usb", "-M q35,usb=on -nodefaults"),
    ("pc_usb", "-M pc,usb=on -nodefaults"),
    ("q35_defaults", "-M q35"),
    ("pc_defaults", "-M pc"),
    ("q35_endpoints", "-M q35 -nodefaults -device VGA -device e1000 -device e1000e"),
    ("pc_endpoints", "-M pc -nodefaults -device VGA -device e1000 -device e1000e"),
    ("q35_root_port_pcie_pci_bridge",
     "-M q35 -nodefaults -device %s,id=rp1,chassis=1,addr=2 -device pcie-pci-bridge,id=ppb,bus=rp1"
     " -device e1000,bus=ppb,addr=1 -device virtio-net-pci,bus=ppb,addr=2" % RP),
    ("q35_switch",
     "-M q35 -nodefaults -device %s,id=rp1,chassis=1 -device x3130-upstream,id=up,bus=rp1"
     " -device xio3130-downstream,id=dn1,bus=up,chassis=2,slot=1"
     " -device xio3130-downstream,id=dn2,bus=up,chassis=2,slot=2,addr=1"
     " -device e1000e,bus=dn1 -device virtio-net-pci,bus=dn2" % RP),
    ("q35_ioh3420_multifunction_root_ports",
     "-M q35 -nodefaults -device ioh3420,id=p1,chassis=1,slot=1 -device e1000e,bus=p1"
     " -device %s,id=rp2,chassis=2,port=16,addr=3.0,multifunction=on"
     " -device %s,id=rp3,chassis=3,port=17,addr=3.1,slot=7"
     " -device %s,id=rp4,chassis=4,port=18,addr=3.2,hotplug=off -device e1000e,bus=rp3" % (RP, RP, RP)),
    ("q35_dmi_pci_bridge",
     "-M q35 -nodefaults -device i82801b11-bridge,id=dmi -device pci-bridge,id=pb,bus=dmi,chassis_nr=1,addr=1"
     " -device e1000,bus=pb,addr=1 -device e1000,bus=dmi,addr=2"),
    ("pc_pci_bridge",
     "-M pc -nodefaults -device pci-bridge,id=pb,chassis_nr=1 -device e1000,bus=pb,addr=1"
     " -device pci-bridge,id=pb2,bus=pb,chassis_nr=2,addr=2 -device virtio-net-pci,bus=pb2,addr=3"),
    ("q35_all_bridges",
     "-M q35 -nodefaults -device %s,id=rp1,chassis=1,addr=2 -device pcie-pci-bridge,id=ppb,bus=rp1"
     " -device pci-bridge,id=pb,bus=ppb,chassis_nr=5,addr=1 -device e1000,bus=pb,addr=1"
     " -device %s,id=rp2,chassis=2,addr=3 -device x3130-upstream,id=up,bus=rp2"
     " -device xio3130-downstream,id=dn,bus=up,chassis=3,slot=1 -device virtio-net-pci,bus=dn"
     " -device ioh3420,id=p3,chassis=4,slot=1,addr=4 -device e1000e,bus=p3"
     " -device i82801b11-bridge,id=dmi,addr=5 -device pci-bridge,id=pb6,bus=dmi,chassis_nr=6,addr=1"
     " -device virtio-rng-pci,bus=pb6,addr=2" % (RP, RP)),
]

# virtio placements (issue 5). {dev} is the device type, {extra} its backend properties.
VIRTIO_TYPES = {
    "virtio-net-pci": "",
    "virtio-blk-pci": ",drive=d{n}",
    "virtio-rng-pci": "",
    "virtio-serial-pci": "",
}
VIRTIO_BACKEND = {"virtio-blk-pci": "-blockdev driver=file,node-name=d{n},filename={disk}{n}"}
VIRTIO_Q35 = [
    # (what, -device lines); the device under test gets {dev}{extra}
    ("pcie.0", ["{dev}{extra},addr=3"]),
    ("pcie.0 -non-transitional", ["{dev}-non-transitional{extra},addr=4"]),
    ("pcie.0 -transitional", ["{dev}-transitional{extra},addr=5"]),
    ("behind pcie-root-port (modern-only)", [RP + ",id=rp1,chassis=1,addr=6", "{dev}{extra},bus=rp1"]),
    ("behind pcie-root-port, disable-legacy=off",
     [RP + ",id=rp2,chassis=2,addr=7", "{dev}{extra},bus=rp2,disable-legacy=off"]),
    ("behind pcie-root-port -non-transitional",
     [RP + ",id=rp3,chassis=3,addr=8", "{dev}-non-transitional{extra},bus=rp3"]),
    ("behind pcie-root-port -transitional",
     [RP + ",id=rp4,chassis=4,addr=9", "{dev}-transitional{extra},bus=rp4"]),
    ("behind xio3130-downstream (modern-only)",
     [RP + ",id=rp5,chassis=5,addr=0xa", "x3130-upstream,id=up,bus=rp5",
      "xio3130-downstream,id=dn,bus=up,chassis=6,slot=1", "{dev}{extra},bus=dn"]),
    ("behind pcie-pci-bridge (transitional)",
     [RP + ",id=rp7,chassis=7,addr=0xb", "pcie-pci-bridge,id=ppb,bus=rp7", "{dev}{extra},bus=ppb,addr=1"]),
    ("behind i82801b11-bridge/pci-bridge (transitional)",
     ["i82801b11-bridge,id=dmi,addr=0xc", "pci-bridge,id=pb,bus=dmi,chassis_nr=8,addr=1",
      "{dev}{extra},bus=pb,addr=2"]),
]
VIRTIO_PC = [
    ("pci.0", ["{dev}{extra},addr=3"]),
    ("pci.0 -non-transitional", ["{dev}-non-transitional{extra},addr=4"]),
    ("pci.0 -transitional", ["{dev}-transitional{extra},addr=5"]),
    ("pci.0 disable-legacy=on", ["{dev}{extra},addr=6,disable-legacy=on"]),
    ("behind pci-bridge (transitional)", ["pci-bridge,id=pb,chassis_nr=1,addr=7", "{dev}{extra},bus=pb,addr=1"]),
]

# Bad command lines (issue 4): QEMU's stderr and status with -S.
ERRORS = [
    "-M q35 -device e1000,addr=0x1f",
    "-M q35 -device e1000,addr=0x20",
    "-M q35 -device e1000,addr=0x3.0x8",
    "-M q35 -device e1000,addr=0",
    "-M pc -device e1000,addr=0",
    "-M pc -device e1000,addr=0x1.0x1",
    "-M q35 -device e1000,addr=0x3 -device e1000,addr=0x3",
    "-M pc -device e1000,addr=0x1f.0x7 -device e1000,addr=0x1f.0x7",
    "-M q35 -device e1000,addr=3.0 -device e1000,addr=3.1",
    "-M q35 -device e1000,addr=3.1 -device e1000,addr=3.0",
    "-M q35 -device e1000,addr=2.0,multifunction=off -device e1000,addr=2.1,multifunction=on",
    "-M q35,usb=on -device e1000,addr=0x1d.0x7",
    "-M q35 -device e1000,addr=0x1f.0x2",
    "-M q35 -device e1000,addr=0x1f.0x3",
    "-M pc -device pci-bridge",
    "-M pc -device pci-bridge,chassis_nr=0",
    "-M q35 -device i82801b11-bridge,id=dmi -device pci-bridge,bus=dmi",
    "-M q35 -device pcie-root-port -device pcie-root-port",
    "-M q35 -device ioh3420 -device pcie-root-port",
    "-M q35 -device pcie-root-port,chassis=1,slot=1 -device ioh3420,chassis=1,slot=1",
    "-M q35 -device x3130-upstream,id=u -device xio3130-downstream,bus=u -device xio3130-downstream,bus=u,addr=1",
    "-M q35 -device pcie-root-port,chassis=300",
    "-M q35 -device pcie-root-port,id=rp,chassis=1 -device pcie-root-port,id=rp,chassis=2",
    "-M q35 -device virtio-blk-pci",
    "-M q35 -device e1000,bus=nosuch",
    "-M q35 -device nosuch-dev",
    "-M q35 -device e1000,foo=bar",
    "-M q35 -device virtio-net-pci,disable-legacy=maybe",
    "-M q35 -device virtio-net-pci-transitional,disable-legacy=on",
    "-M q35 -device virtio-net-pci,disable-modern=on,disable-legacy=on",
    "-M q35 -device pcie-root-port,id=rp -device virtio-net-pci,bus=rp,disable-modern=on",
    # Accepted by QEMU (it is permissive about PCI vs PCIe placement, docs/pcie.txt section 2):
    # machina must build these too.
    "-M pc -device x3130-upstream",
    "-M pc -device xio3130-downstream",
    "-M q35 -device xio3130-downstream",
    "-M pc -device pcie-pci-bridge",
    "-M pc -device pcie-root-port",
    "-M q35 -device pcie-root-port,id=rp -device pcie-root-port,bus=rp,chassis=2",
    "-M q35 -device pcie-root-port,id=rp -device e1000,bus=rp,addr=1",
    "-M q35 -device pcie-root-port,id=rp -device virtio-net-pci-transitional,bus=rp",
    "-M q35 -device pcie-pci-bridge,id=b -device e1000,bus=b,addr=0",
    "-M q35 -device pcie-root-port,id=rp,chassis=1 -device pcie-pci-bridge,id=b,bus=rp -device e1000,bus=b,addr=0",
    "-M pc -device pci-bridge,chassis_nr=1,id=b -device e1000,bus=b,addr=0",
    "-M q35 -device i82801b11-bridge,id=b -device e1000,bus=b,addr=0",
    "-M q35,sata=off -device e1000,addr=0x1f.0x2",
    "-M q35 -device e1000,multifunction=on,addr=0x1f.0x5",
    "-M pc -device pci-bridge,chassis_nr=1,id=b -device pci-bridge,chassis_nr=1,bus=b",
]

# Registers the firmware step programs, compared with SeaBIOS: (bdf, offset, size).
FW_REGS_Q35 = [((0, 0, 0), 0x60, 4), ((0, 0, 0), 0x64, 4),
               ((0, 0x1F, 0), 0x40, 4), ((0, 0x1F, 0), 0x44, 1),
               ((0, 0x1F, 0), 0x60, 4), ((0, 0x1F, 0), 0x68, 4), ((0, 0x1F, 0), 0xF0, 4),
               ((0, 0x1F, 3), 0x20, 4), ((0, 0x1F, 3), 0x40, 1)]
FW_REGS_PC = [((0, 1, 0), 0x60, 4), ((0, 1, 3), 0x40, 4), ((0, 1, 3), 0x80, 1),
              ((0, 1, 3), 0x90, 4), ((0, 1, 3), 0xD2, 1)]

# QEMU 7.2 -> 10.2 differences in what the walk sees (machina models pc-*-10.2).
VERSION_OVERRIDES = [
    {
        "device": (0x8086, 0x29C0), "bytes": {0x50: 0x00, 0x9D: 0x00, 0x9E: 0x00},
        "why": "mch_reset (hw/pci-host/q35.c, QEMU >= 9.0) sets SMRAM 0x9d=0x02, ESMRAMC 0x9e=0x38 and"
               " EXT_TSEG_MBYTES 0x50 only when has_smm_ranges (x86_machine_is_smm_enabled); with"
               " smm=off they stay 0. QEMU 7.2 set them unconditionally.",
    },
]


AER_UNC_MASK_WHY = ("AER Uncorrectable Error Mask (AER + 0x08) = 0x02400000 (INTN | TLP prefix blocked):"
                    " QEMU >= 8.1 sets it in pcie_aer_init (x-pcie-err-unc-mask, off only for <= 8.0"
                    " machine types); 7.2 left it 0.")


def apply_overrides(fn, notes):
    for off, cid, _ in fn.get("ext_caps", []):
        if cid == 0x0001:
            fn["ext_nonzero"]["0x%03x" % (off + 8)] = 0x02400000
            notes.add(AER_UNC_MASK_WHY)
    for o in VERSION_OVERRIDES:
        if (fn["vendor"], fn["device"]) != o["device"]:
            continue
        raw = bytearray(bytes.fromhex(fn["dump"]))
        for off, v in o["bytes"].items():
            raw[off] = v
        fn["dump"] = raw.hex()
        notes.add(o["why"])


def run_walk(binary, kind, args, q35):
    q = Qtest(binary, qemu_args(args) if kind == "qemu" else args, kind)
    try:
        return walk(q, q35)
    finally:
        q.close()


def seabios(args, q35):
    """Run SeaBIOS and read what it programmed."""
    log = tempfile.mktemp(prefix="seabios-")
    qmp_path = tempfile.mktemp(prefix="seabios-qmp-")
    q = Qtest(QEMU, qemu_args(args), "qemu", stopped=False,
              extra=["-chardev", "file,id=dbg,path=" + log,
                     "-device", "isa-debugcon,iobase=0x402,chardev=dbg",
                     "-qmp", "unix:%s,server=on,wait=off" % qmp_path])
    try:
        deadline = time.time() + 60
        while True:
            text = open(log, errors="replace").read() if os.path.exists(log) else ""
            if "enter handle_19" in text:
                break
            if time.time() > deadline:
                raise RuntimeError("SeaBIOS did not finish: %s" % args)
            time.sleep(0.05)
        # Stop the vCPU: option ROMs and the boot loop also use 0xcf8/0xcfc.
        qmp = socket.socket(socket.AF_UNIX)
        qmp.connect(qmp_path)
        qf = qmp.makefile("rw")
        qf.readline()
        for cmd in ("qmp_capabilities", "stop"):
            qf.write(json.dumps({"execute": cmd}) + "\n")
            qf.flush()
            while "return" not in json.loads(qf.readline()):
                pass
        fw = {"regs": [], "functions": {}}
        for bdf, off, size in (FW_REGS_Q35 if q35 else FW_REGS_PC):
            if present(q, bdf):
                fw["regs"].append([fmt_bdf(bdf), off, size, q.cfg_read(bdf, off, size)])
        for bdf in all_functions(q):
            f = {"command": q.cfg_read(bdf, 4, 2), "interrupt_line": q.cfg_read(bdf, 0x3C, 1)}
            if q.cfg_read(bdf, 0x0E, 1) & 0x7F == 1:
                f["bus_numbers"] = q.cfg_read(bdf, 0x18, 4) & 0xFFFFFF
            fw["functions"][fmt_bdf(bdf)] = f
        return fw
    finally:
        q.close()
        for path in (log, qmp_path):
            if os.path.exists(path):
                os.unlink(path)


def config_scenarios(compare):
    out = []
    for name, cmdline in CONFIG:
        args = shlex.split(cmdline)
        q35 = "q35" in args[1]
        facts, funcs = run_walk(QEMU, "qemu", args, q35)
        notes = set()
        for fn in funcs:
            apply_overrides(fn, notes)
        fw = seabios(args, q35)
        assert sorted(fw["functions"]) == [f["bdf"] for f in funcs], (name, sorted(fw["functions"]))
        out.append({"name": name, "args": args, "q35": q35, "facts": facts, "functions": funcs,
                    "firmware": fw, "notes": sorted(notes)})
        print("config %-40s %d functions" % (name, len(funcs)), file=sys.stderr)
        if compare:
            diff(name, facts, funcs, *run_walk(compare, "machina", args, q35))
    return out


def virtio_scenarios(compare, disk):
    out = []
    for dev, extra in VIRTIO_TYPES.items():
        for machine, placements in (("q35", VIRTIO_Q35), ("pc", VIRTIO_PC)):
            args = ["-M", machine, "-nodefaults"]
            what = []
            for n, (label, devices) in enumerate(placements):
                if dev in VIRTIO_BACKEND:
                    args += shlex.split(VIRTIO_BACKEND[dev].format(n=n, disk="{disk}"))
                for d in devices:
                    args += ["-device", d.format(dev=dev, extra=extra.format(n=n))]
                what.append(label)
            real = [a.replace("{disk}", disk) for a in args]
            q35 = machine == "q35"
            facts, funcs = run_walk(QEMU, "qemu", real, q35)
            notes = set()
            for fn in funcs:
                apply_overrides(fn, notes)
            name = "%s_%s" % (dev, machine)
            out.append({"name": name, "args": args, "q35": q35, "placements": what,
                        "facts": facts, "functions": funcs, "notes": sorted(notes)})
            print("virtio %-40s %d functions" % (name, len(funcs)), file=sys.stderr)
            if compare:
                diff(name, facts, funcs, *run_walk(compare, "machina", real, q35))
    return out


def normalize(text):
    return (text.replace("pc-q35-7.2", "pc-q35-10.2").replace("pc-i440fx-7.2", "pc-i440fx-10.2"))


def error_cases():
    out = []
    for cmdline in ERRORS:
        args = shlex.split(cmdline)
        argv = [QEMU, "-accel", "tcg", "-S", "-display", "none", "-nodefaults"] + args
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=3)
            status, err = p.returncode, p.stderr.decode()
        except subprocess.TimeoutExpired as e:
            status, err = None, (e.stderr or b"").decode()
        lines = [ln for ln in err.splitlines() if "has no peer" not in ln and "terminating on signal" not in ln]
        prefix = "qemu-system-x86_64: "
        lines = [ln[len(prefix):] if ln.startswith(prefix) else ln for ln in lines]
        case = {"args": args, "status": status, "stderr": [normalize(ln) for ln in lines]}
        if status is not None:
            # "-device ARGS: message": the message without QEMU's location prefix.
            first = case["stderr"][0]
            options = ["%s %s" % (args[i], args[i + 1]) for i in range(len(args) - 1) if args[i].startswith("-")]
            loc = next((o for o in options if first.startswith(o + ": ")), None)
            case["location"] = loc
            case["message"] = first[len(loc) + 2:] if loc else first
        out.append(case)
        print("error %-80s -> %s %s" % (cmdline, status, case["stderr"][:1]), file=sys.stderr)
    return out


def diff(name, facts_a, funcs_a, facts_b, funcs_b):
    print("== %s" % name)
    if facts_a != facts_b:
        print("  facts qemu %s machina %s" % (facts_a, facts_b))
    fa = {f["bdf"]: f for f in funcs_a}
    fb = {f["bdf"]: f for f in funcs_b}
    if fa.keys() != fb.keys():
        print("  BDFs qemu %s machina %s" % (sorted(fa), sorted(fb)))
    for k in sorted(set(fa) & set(fb)):
        x, y = fa[k], fb[k]
        for key in x:
            if key != "dump" and x[key] != y.get(key):
                print("  %s %04x:%04x %s qemu %s machina %s" % (k, x["vendor"], x["device"], key, x[key], y.get(key)))
        dx, dy = bytes.fromhex(x["dump"]), bytes.fromhex(y["dump"])
        d = ["%02x:%02x/%02x" % (i, dx[i], dy[i]) for i in range(256) if dx[i] != dy[i]]
        if d:
            print("  %s bytes (off:qemu/machina) %s" % (k, " ".join(d)))


def qemu_version():
    return subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout.splitlines()[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--compare", metavar="MACHINA", help="also walk machina and print differences")
    ap.add_argument("--only", choices=["config", "virtio", "errors"])
    a = ap.parse_args()
    header = {"generated_by": "tests/data/gen_expectations.py", "qemu": qemu_version(),
              "qemu_extra_machine_options": "smm=off",
              "version_overrides": [o["why"] for o in VERSION_OVERRIDES] + [AER_UNC_MASK_WHY]}
    if a.only in (None, "config"):
        data = dict(header, scenarios=config_scenarios(a.compare))
        write("qtest_config.json", data)
    if a.only in (None, "virtio"):
        d = tempfile.mkdtemp(prefix="virtio-disk-")
        disk = os.path.join(d, "disk")
        for n in range(len(VIRTIO_Q35)):
            with open(disk + str(n), "wb") as f:
                f.truncate(1 << 20)
        data = dict(header, scenarios=virtio_scenarios(a.compare, disk))
        write("qtest_virtio.json", data)
        for n in os.listdir(d):
            os.unlink(os.path.join(d, n))
        os.rmdir(d)
    if a.only in (None, "errors"):
        write("qtest_errors.json", dict(header, cases=error_cases()))


def write(name, data):
    path = os.path.join(HERE, name)
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    print("wrote %s" % path, file=sys.stderr)


if __name__ == "__main__":
    main()
