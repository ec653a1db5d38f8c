#!/usr/bin/env bash
# Boots machina-guest under QEMU (PVH via -kernel) in several machine
# configurations and checks its serial output. This exercises the guest
# itself, independently of the machina VMM.
#
#   ./qemu-smoke.sh            # TCG
#   ACCEL=kvm ./qemu-smoke.sh  # KVM (slow under PVM: SeaBIOS runs at CPL 0)
#
# Needs qemu-system-x86_64 (Debian: apt-get install qemu-system-x86).
set -euo pipefail
cd "$(dirname "$0")"

ACCEL=${ACCEL:-tcg}
KERNEL=target/release/machina-guest
cargo build --release --quiet

failures=0

# run NAME PATTERN... -- QEMU_ARGS...
# Each PATTERN (grep -E) must match a line; a PATTERN starting with '!' must
# match none. QEMU must exit 0 (the guest powered off or reset).
run() {
    local name=$1
    shift
    local patterns=()
    while [ "$1" != "--" ]; do
        patterns+=("$1")
        shift
    done
    shift
    local out rc=0
    out=$(timeout 60 qemu-system-x86_64 -accel "$ACCEL" -m 256 -nodefaults \
        -nographic -serial stdio -no-reboot -kernel "$KERNEL" "$@" 2>&1 |
        sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g; s/\x1bc//g; s/^.*Booting from ROM\.\.//') || rc=$?
    local ok=1
    [ "$rc" -eq 0 ] || ok=0
    for p in "${patterns[@]}"; do
        if [ "${p:0:1}" = "!" ]; then
            if grep -qE -- "${p:1}" <<<"$out"; then
                echo "  unexpected: ${p:1}"
                ok=0
            fi
        elif ! grep -qE -- "$p" <<<"$out"; then
            echo "  missing: $p"
            ok=0
        fi
    done
    if [ "$ok" -eq 1 ]; then
        echo "ok   $name"
    else
        echo "FAIL $name (rc=$rc)"
        sed 's/^/  | /' <<<"$out"
        failures=$((failures + 1))
    fi
}

banner='^machina-guest: version=0\.1 cmdline="'
off='^poweroff: pm1a_cnt=0x604$'

run "q35 pci-scan,acpi,ecam" "$banner" '^pci: 00:00\.0 8086:29c0 class=060000 rev=00 hdr=00$' \
    '^pci-scan: done functions=4 buses=1$' '^acpi: rsdp=0x[0-9a-f]+ revision=0 oem=BOCHS$' \
    '^acpi: table=FACP addr=0x[0-9a-f]+ len=244$' '^acpi: table=MCFG ' \
    '^acpi: fadt pm1a_evt=0x600 pm1a_cnt=0x604 pm_tmr=0x608 sci=9 reset_reg=0xcf9 reset_value=0xf$' \
    '^acpi: mcfg base=0xb0000000 segment=0 bus_start=0 bus_end=255$' \
    '^ecam: 00:00\.0 8086:29c0$' '^ecam: match=yes$' "$off" \
    -- -M q35 -append "machina.test=pci-scan,acpi,ecam"

run "pc pci-scan,acpi,ecam" '^pci: 00:01\.0 8086:7000 class=060100 rev=00 hdr=80$' \
    '^pci: 00:01\.3 ' '^acpi: fadt pm1a_evt=0x600 pm1a_cnt=0x604 ' '^ecam: no-mcfg$' "$off" \
    -- -M pc -append "machina.test=pci-scan,acpi,ecam"

run "q35 pcie-root-port" '^bridge: 00:01\.0 secondary=01 subordinate=01$' \
    '^pci: 01:00\.0 1af4:1041 class=020000' '^pci-scan: done functions=6 buses=2$' \
    -- -M q35 -device pcie-root-port,id=rp1,chassis=1 -device virtio-net-pci,bus=rp1 \
    -append "machina.test=pci-scan"

run "pc nested pci-bridge" '^bridge: 00:02\.0 secondary=01 subordinate=02$' \
    '^bridge: 01:05\.0 secondary=02 subordinate=02$' '^pci: 02:00\.0 8086:100e ' \
    '^pci-scan: done functions=8 buses=3$' \
    -- -M pc -device pci-bridge,chassis_nr=1,id=b1 -device e1000,bus=b1 \
    -device pci-bridge,chassis_nr=2,id=b2,bus=b1,addr=5 -device e1000,bus=b2 \
    -append "machina.test=pci-scan"

run "default test" '^pci-scan: done ' "$off" -- -M q35

run "echo, unknown test stops the list" '^echo: hello world$' '^error: unknown test=bogus$' "$off" \
    -- -M q35 -append 'machina.test=echo,bogus,pci-scan machina.echo="hello world"'

run "start-info" '^start-info: addr=0x[0-9a-f]+ magic=0x336ec578 version=1 ' \
    '^memmap: addr=0x100000 size=0x[0-9a-f]+ type=1$' \
    -- -M q35 -append "machina.test=start-info"

run "panic powers off" '^panic: requested by machina.test=panic' "$off" \
    -- -M q35 -append "machina.test=panic"

run "microvm (hardware-reduced ACPI)" '^acpi: root=XSDT ' \
    '^poweroff: sleep_ctl=0x[0-9a-f]+ space=mem value=0x34$' \
    -- -M microvm -append "machina.test=acpi"

# With -no-reboot QEMU exits 0 on reset and triple fault alike; what is
# checked is that nothing runs afterwards.
run "triple-fault" '^triple-fault: now$' '!^poweroff' -- -M pc -append "machina.test=triple-fault"
run "reset" '^reset: now$' '!^reset: failed' '!^echo' -- -M q35 -append "machina.test=reset,echo"

if [ "$failures" -ne 0 ]; then
    echo "$failures failure(s)"
    exit 1
fi
echo "all passed"
