"""Shared qtest client and config-space walker for gen_expectations.py.

The walk here is the one the Rust tests (tests/src/qtest_client.rs) do, step for step:
bus numbering depth-first in devfn order, then a read of every function, BAR/ROM and
bridge-window probing by writing all-ones and restoring, and capability walks.
It drives either QEMU (the oracle) or machina (to compare while developing).
"""

import os
import socket
import subprocess
import tempfile
import time

QEMU = os.environ.get("QEMU", "qemu-system-x86_64")
QEMU_BASE = ["-accel", "tcg", "-display", "none", "-qtest-log", "/dev/null"]
ECAM_BASE = 0xB0000000
UNASSIGNED = ["inb 0x1234", "inl 0x1234", "readl 0xe0000000", "readq 0x100000000"]


class Qtest:
    def __init__(self, binary, args, kind, stopped=True, extra=()):
        self.dir = tempfile.mkdtemp(prefix="qt-")
        self.sock = os.path.join(self.dir, "qtest.sock")
        if kind == "qemu":
            argv = [binary] + QEMU_BASE + (["-S"] if stopped else []) + list(extra) + list(args)
        else:
            argv = [binary, "-accel", "qtest"] + list(args)
        argv += ["-qtest", "unix:%s,server=on,wait=off" % self.sock]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 20
        while True:
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(self.sock)
                break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("%s exited: %s" % (argv, self.proc.stderr.read().decode()))
                if time.time() > deadline:
                    raise RuntimeError("no qtest socket from %s" % argv)
                time.sleep(0.02)
        s.settimeout(20)
        self.s = s
        self.f = s.makefile("rw")
        # machina listens before the machine is built and answers FAIL until it is.
        while self.cmd("endianness") != "OK little":
            if time.time() > deadline:
                raise RuntimeError("machine never became ready: %s" % argv)
            time.sleep(0.01)

    def cmd(self, line):
        self.f.write(line + "\n")
        self.f.flush()
        while True:
            r = self.f.readline()
            if not r:
                raise RuntimeError("qtest closed on %r" % line)
            r = r.strip()
            if r.startswith("IRQ"):
                continue
            return r

    def val(self, line):
        r = self.cmd(line)
        assert r.startswith("OK "), (line, r)
        return int(r.split()[1], 16)

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass
        self.proc.kill()
        self.proc.wait()
        for n in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, n))
        os.rmdir(self.dir)

    # --- config access through 0xcf8/0xcfc ---------------------------------------------
    @staticmethod
    def addr(b, d, f, off):
        return 0x80000000 | (b << 16) | (d << 11) | (f << 8) | (off & 0xFC)

    def cfg_read(self, bdf, off, size):
        b, d, f = bdf
        self.cmd("outl 0xcf8 0x%x" % self.addr(b, d, f, off))
        port = 0xCFC + (off & 3)
        op = {1: "inb", 2: "inw", 4: "inl"}[size]
        return self.val("%s 0x%x" % (op, port))

    def cfg_write(self, bdf, off, size, value):
        b, d, f = bdf
        self.cmd("outl 0xcf8 0x%x" % self.addr(b, d, f, off))
        port = 0xCFC + (off & 3)
        op = {1: "outb", 2: "outw", 4: "outl"}[size]
        r = self.cmd("%s 0x%x 0x%x" % (op, port, value))
        assert r == "OK", r

    def ecam_read(self, bdf, off):
        b, d, f = bdf
        return self.val("readl 0x%x" % (ECAM_BASE + (b << 20) + (d << 15) + (f << 12) + off)) & 0xFFFFFFFF


def fmt_bdf(bdf):
    return "%02x:%02x.%x" % bdf


def present(q, bdf):
    return q.cfg_read(bdf, 0, 4) & 0xFFFF != 0xFFFF


def scan_bus(q, bus):
    found = []
    for d in range(32):
        for f in range(8):
            if present(q, (bus, d, f)):
                found.append((bus, d, f))
    return found


def number_buses(q):
    """Depth-first bus numbering in devfn order, as SeaBIOS does it. Returns
    {bdf: reset value of dword 0x18} for every bridge, in numbering order."""
    state = {"next": 1}
    resets = {}

    def walk(bus):
        for bdf in scan_bus(q, bus):
            if q.cfg_read(bdf, 0x0E, 1) & 0x7F != 1:
                continue
            resets[bdf] = q.cfg_read(bdf, 0x18, 4)
            sec = state["next"]
            state["next"] += 1
            q.cfg_write(bdf, 0x18, 1, bus)
            q.cfg_write(bdf, 0x19, 1, sec)
            q.cfg_write(bdf, 0x1A, 1, 0xFF)
            walk(sec)
            q.cfg_write(bdf, 0x1A, 1, state["next"] - 1)

    walk(0)
    return resets


def all_functions(q):
    """Every function on every numbered bus, in bus order."""
    out = []
    buses = [0]
    i = 0
    while i < len(buses):
        for bdf in scan_bus(q, buses[i]):
            out.append(bdf)
            if q.cfg_read(bdf, 0x0E, 1) & 0x7F == 1:
                sec = q.cfg_read(bdf, 0x19, 1)
                if sec and sec not in buses:
                    buses.append(sec)
        i += 1
    return sorted(out)


def std_caps(q, bdf):
    caps = []
    if not q.cfg_read(bdf, 0x06, 2) & 0x10:
        return caps
    ptr = q.cfg_read(bdf, 0x34, 1) & 0xFC
    seen = set()
    while ptr and ptr not in seen and len(caps) < 48:
        seen.add(ptr)
        caps.append([ptr, q.cfg_read(bdf, ptr, 1)])
        ptr = q.cfg_read(bdf, ptr + 1, 1) & 0xFC
    return caps


def ext_caps(q, bdf):
    caps = []
    off = 0x100
    seen = set()
    while off >= 0x100 and off not in seen and len(caps) < 64:
        seen.add(off)
        hdr = q.ecam_read(bdf, off)
        if hdr in (0, 0xFFFFFFFF):
            break
        caps.append([off, hdr & 0xFFFF, (hdr >> 16) & 0xF])
        off = (hdr >> 20) & 0xFFC
    return caps


def cap_fields(q, bdf, caps):
    """Identity fields of some capabilities: whole vendor-specific caps (virtio's cfg_type,
    BAR, offset, length, notify multiplier), MSI/MSI-X/PCIe/PM/SHPC/SSVID control words."""
    out = {}
    for off, cid in caps:
        key = "0x%02x" % off
        if cid == 0x09:
            ln = q.cfg_read(bdf, off + 2, 1)
            out[key] = "".join("%02x" % q.cfg_read(bdf, off + i, 1) for i in range(min(ln, 0x40)))
        elif cid == 0x11:  # MSI-X: control, table, PBA
            out[key] = [q.cfg_read(bdf, off + 2, 2), q.cfg_read(bdf, off + 4, 4), q.cfg_read(bdf, off + 8, 4)]
        elif cid == 0x05:  # MSI: control
            out[key] = [q.cfg_read(bdf, off + 2, 2)]
        elif cid == 0x10:  # PCIe: flags, devcap, lnkcap, sltcap
            out[key] = [q.cfg_read(bdf, off + 2, 2), q.cfg_read(bdf, off + 4, 4),
                        q.cfg_read(bdf, off + 0x0C, 4), q.cfg_read(bdf, off + 0x14, 4)]
        elif cid == 0x01:  # PM: PMC
            out[key] = [q.cfg_read(bdf, off + 2, 2)]
        elif cid == 0x0D:  # bridge subsystem vendor ID
            out[key] = [q.cfg_read(bdf, off + 4, 4)]
        elif cid == 0x04:  # slot ID
            out[key] = [q.cfg_read(bdf, off + 2, 1)]
    return out


def probe32(q, bdf, reg, ones):
    orig = q.cfg_read(bdf, reg, 4)
    q.cfg_write(bdf, reg, 4, ones)
    got = q.cfg_read(bdf, reg, 4)
    q.cfg_write(bdf, reg, 4, orig)
    return orig, got


def describe_bar(reg, reset, probe, reset_hi=None, probe_hi=None):
    bar = {"reg": reg, "reset": reset, "probe": probe}
    if reg in (0x30, 0x38):
        mask = probe & 0xFFFFF800
        bar.update(kind="rom" if mask else "none", size=(mask & -mask) if mask else 0)
        return bar
    if probe == 0:
        bar.update(kind="none", size=0)
        return bar
    if probe & 1:
        mask = probe & 0xFFFFFFFC
        bar.update(kind="io", size=mask & -mask)
        return bar
    pf = bool(probe & 8)
    if (probe >> 1) & 3 == 2:
        mask = ((probe_hi or 0) << 32) | (probe & 0xFFFFFFF0)
        bar.update(kind="mem64", prefetch=pf, size=mask & -mask, reset_hi=reset_hi, probe_hi=probe_hi)
    else:
        mask = probe & 0xFFFFFFF0
        bar.update(kind="mem32", prefetch=pf, size=mask & -mask)
    return bar


def probe_bars(q, bdf, htype):
    bars = []
    regs = [0x10, 0x14, 0x18, 0x1C, 0x20, 0x24] if htype == 0 else [0x10, 0x14]
    i = 0
    while i < len(regs):
        reg = regs[i]
        reset, probe = probe32(q, bdf, reg, 0xFFFFFFFF)
        if probe & 1 == 0 and (probe >> 1) & 3 == 2 and i + 1 < len(regs):
            reset_hi, probe_hi = probe32(q, bdf, reg + 4, 0xFFFFFFFF)
            bars.append(describe_bar(reg, reset, probe, reset_hi, probe_hi))
            i += 2
            continue
        bars.append(describe_bar(reg, reset, probe))
        i += 1
    rom = 0x30 if htype == 0 else 0x38
    reset, probe = probe32(q, bdf, rom, 0xFFFFFFFE)
    bars.append(describe_bar(rom, reset, probe))
    return bars


def probe_windows(q, bdf):
    """Bridge windows: reset value and what reads back after writing all-ones."""
    out = {}
    for reg, size in [(0x1C, 2), (0x20, 4), (0x24, 4), (0x28, 4), (0x2C, 4), (0x30, 4)]:
        ones = (1 << (8 * size)) - 1
        orig = q.cfg_read(bdf, reg, size)
        q.cfg_write(bdf, reg, size, ones)
        got = q.cfg_read(bdf, reg, size)
        q.cfg_write(bdf, reg, size, orig)
        out["0x%02x" % reg] = [orig, got]
    return out


def read_function(q, bdf, ecam):
    dump = [q.cfg_read(bdf, off, 4) for off in range(0, 256, 4)]
    raw = b"".join(v.to_bytes(4, "little") for v in dump)
    htype = raw[0x0E]
    fn = {
        "bdf": fmt_bdf(bdf),
        "vendor": raw[0] | raw[1] << 8,
        "device": raw[2] | raw[3] << 8,
        "command": raw[4] | raw[5] << 8,
        "status": raw[6] | raw[7] << 8,
        "revision": raw[8],
        "class": raw[9] | raw[10] << 8 | raw[11] << 16,
        "header_type": htype,
        "interrupt_line": raw[0x3C],
        "interrupt_pin": raw[0x3D],
    }
    if htype & 0x7F == 0:
        fn["subsystem_vendor"] = raw[0x2C] | raw[0x2D] << 8
        fn["subsystem"] = raw[0x2E] | raw[0x2F] << 8
    else:
        fn["bus_numbers"] = raw[0x18] | raw[0x19] << 8 | raw[0x1A] << 16
        fn["secondary_status"] = raw[0x1E] | raw[0x1F] << 8
        fn["bridge_control"] = raw[0x3E] | raw[0x3F] << 8
    caps = std_caps(q, bdf)
    fn["caps"] = caps
    fn["cap_fields"] = cap_fields(q, bdf, caps)
    if ecam:
        fn["ext_0x100"] = q.ecam_read(bdf, 0x100)
        fn["ext_caps"] = ext_caps(q, bdf)
        if fn["ext_0x100"] != 0xFFFFFFFF:
            # The extended space of a PCIe function: every non-zero dword.
            ext = {}
            for off in range(0x100, 0x1000, 4):
                v = q.ecam_read(bdf, off)
                if v:
                    ext["0x%03x" % off] = v
            fn["ext_nonzero"] = ext
    fn["bars"] = probe_bars(q, bdf, htype & 0x7F)
    if htype & 0x7F == 1:
        fn["windows"] = probe_windows(q, bdf)
    fn["dump"] = raw.hex()
    return fn


def enable_ecam(q):
    q.cfg_write((0, 0, 0), 0x64, 4, 0)
    q.cfg_write((0, 0, 0), 0x60, 4, ECAM_BASE | 1)


def walk(q, q35):
    """The whole conformance walk. Returns (facts, functions)."""
    facts = {}
    # What reads of nothing return (I/O: all-ones; unassigned memory: QEMU's 0).
    facts["unassigned"] = {c: q.cmd(c) for c in UNASSIGNED}
    if q35:
        facts["pciexbar"] = q.cfg_read((0, 0, 0), 0x60, 4)
        facts["pciexbar_hi"] = q.cfg_read((0, 0, 0), 0x64, 4)
        facts["pmbase"] = q.cfg_read((0, 0x1F, 0), 0x40, 4)
        facts["acpi_cntl"] = q.cfg_read((0, 0x1F, 0), 0x44, 1)
    elif present(q, (0, 1, 3)):
        facts["pmbase"] = q.cfg_read((0, 1, 3), 0x40, 4)
        facts["pmregmisc"] = q.cfg_read((0, 1, 3), 0x80, 1)
    resets = number_buses(q)
    facts["bridges"] = {fmt_bdf(b): v for b, v in resets.items()}
    if q35:
        enable_ecam(q)
    funcs = [read_function(q, bdf, q35) for bdf in all_functions(q)]
    return facts, funcs


def qemu_args(args):
    """machina resolves smm=auto to off (it has no SMM); QEMU is told so explicitly."""
    out = list(args)
    for i, a in enumerate(out):
        if a in ("-M", "-machine") and i + 1 < len(out) and "smm=" not in out[i + 1]:
            out[i + 1] += ",smm=off"
    return out
