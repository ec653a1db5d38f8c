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

# --- pci-scan-ecam, virtio, config-fuzz -------------------------------------

# Under PVM (the CI hosts' KVM) CPL-3 port I/O at 0x8000 and above kills the
# guest, and SeaBIOS puts I/O BARs at 0xc000: there the guest moves them.
if [ "$ACCEL" = tcg ]; then
    IOOPT="machina.max-io-port=0xffff"
else
    IOOPT="machina.max-io-port=0x7fff machina.virtio-io-base=0x7000"
fi

DISK=$(mktemp /tmp/machina-guest-disk.XXXXXX)
trap 'rm -f "$DISK"' EXIT

# check_pattern SEED SECTOR...: the documented virtio-blk pattern is on disk.
check_pattern() {
    local seed=$1
    shift
    if ! command -v python3 >/dev/null; then
        echo "  (python3 missing: disk pattern not checked)"
        return
    fi
    if python3 - "$DISK" "$seed" "$@" <<'PY'; then
import sys
data = open(sys.argv[1], "rb").read()
seed = int(sys.argv[2])
for s in map(int, sys.argv[3:]):
    want = bytes((seed * 31 + s * 7 + i) & 0xff for i in range(4096))
    if data[s * 512:s * 512 + 4096] != want:
        sys.exit(f"sector {s}: pattern mismatch")
PY
        echo "ok   disk pattern seed=$seed sectors=$*"
    else
        echo "FAIL disk pattern seed=$seed sectors=$*"
        failures=$((failures + 1))
    fi
}

run "q35 pci-scan-ecam" '^bridge: 00:01\.0 secondary=01 subordinate=01$' \
    '^pci: 01:00\.0 1af4:1041 class=020000' \
    '^bar: 01:00\.0 index=4 kind=mem64 pf=1 addr=0x[0-9a-f]+ size=0x4000$' \
    '^bar: 00:1f\.3 index=4 kind=io pf=0 addr=0x700 size=0x40$' \
    '^pci-scan-ecam: done functions=6 buses=2$' '^bar: 00:1f\.2 ' '^pci-scan: done functions=6 buses=2$' \
    -- -M q35 -device pcie-root-port,id=rp1,chassis=1 -device virtio-net-pci,bus=rp1,romfile= \
    -append "machina.test=pci-scan-ecam,pci-scan machina.pci-bars=1"

run "pc pci-scan-ecam (no MCFG)" '^pci-scan-ecam: no-mcfg$' "$off" \
    -- -M pc -append "machina.test=pci-scan-ecam"

truncate -s 1M "$DISK"
run "q35 virtio (modern blk on root port, transitional rng/net/serial)" \
    '^virtio: 01:00\.0 type=2 legacy=no modern=yes$' '^virtio-legacy: 01:00\.0 result=no-io-bar$' \
    '^virtio-blk: 01:00\.0 path=modern capacity=2048 ro=no write=ok read=ok match=yes flush=ok get-id=ok id=SER-1$' \
    '^virtio-modern: 01:00\.0 result=ok$' \
    '^virtio: 00:02\.0 type=4 legacy=yes modern=yes$' \
    '^virtio-rng: 00:02\.0 path=legacy bytes=64 nonzero=yes$' '^virtio-rng: 00:02\.0 path=modern bytes=64 nonzero=yes$' \
    '^virtio-net: 00:03\.0 path=legacy mac=52:54:00:12:34:56$' '^virtio-net: 00:03\.0 path=modern mac=52:54:00:12:34:56$' \
    '^virtio-serial: 00:04\.0 path=modern multiport=yes ports=31$' \
    '!result=error' '^virtio: done devices=4$' "$off" \
    -- -M q35 -device pcie-root-port,id=rp1,chassis=1 \
    -drive "file=$DISK,if=none,id=d0,format=raw" -device virtio-blk-pci,drive=d0,bus=rp1,serial=SER-1 \
    -device virtio-rng-pci -device virtio-net-pci,netdev=n0,romfile= -netdev user,id=n0 \
    -device virtio-serial-pci -append "machina.test=virtio machina.blk-seed=5 $IOOPT"
check_pattern 5 16

truncate -s 0 "$DISK" && truncate -s 1M "$DISK"
run "pc virtio (transitional blk, legacy-only rng, modern-only rng)" \
    '^virtio-blk: 00:02\.0 path=legacy capacity=2048 ro=no write=ok read=ok match=yes flush=ok get-id=ok id=$' \
    '^virtio-blk: 00:02\.0 path=modern capacity=2048 ' \
    '^virtio: 00:03\.0 type=4 legacy=yes modern=no$' '^virtio-modern: 00:03\.0 result=no-caps$' \
    '^virtio: 00:04\.0 type=4 legacy=no modern=yes$' '^virtio-legacy: 00:04\.0 result=no-io-bar$' \
    '!result=error' '^virtio: done devices=3$' "$off" \
    -- -M pc -drive "file=$DISK,if=none,id=d0,format=raw" -device virtio-blk-pci,drive=d0 \
    -device virtio-rng-pci,disable-modern=on -device virtio-rng-pci-non-transitional \
    -append "machina.test=virtio machina.blk-seed=9 $IOOPT"
check_pattern 9 8 16

if [ "$ACCEL" = tcg ]; then
truncate -s 0 "$DISK" && truncate -s 1M "$DISK"
run "q35 virtio behind pcie-pci-bridge" '^virtio: 01:03\.0 type=2 legacy=yes modern=yes$' \
    '^virtio-legacy: 01:03\.0 result=ok$' '^virtio-modern: 01:03\.0 result=ok$' "$off" \
    -- -M q35 -device pcie-pci-bridge,id=pb -drive "file=$DISK,if=none,id=d0,format=raw" \
    -device virtio-blk-pci,drive=d0,bus=pb,addr=3 -append "machina.test=virtio $IOOPT"
check_pattern 1 8 16
fi

run "virtio legacy I/O BAR above max-io-port" \
    '^virtio-legacy: 00:01\.0 result=io-port-above-limit port=0xc[0-9a-f]{3}$' \
    '^virtio-modern: 00:01\.0 result=ok$' "$off" \
    -- -M q35 -device virtio-rng-pci -append "machina.test=virtio machina.max-io-port=0x7fff"

run "virtio legacy I/O BAR relocated" '^virtio-legacy: 00:01\.0 relocated from=0xc[0-9a-f]{3} to=0x7000$' \
    '^virtio-legacy: 00:01\.0 result=ok$' '^virtio-modern: 00:01\.0 result=ok$' "$off" \
    -- -M q35 -device virtio-rng-pci -append "machina.test=virtio machina.virtio-io-base=0x7000"

# A UDP socket sending to itself echoes the guest's frame back.
port=$((40000 + RANDOM % 20000))
run "virtio-net tx/rx (UDP loopback)" \
    '^virtio-net: 00:01\.0 path=legacy tx=ok rx=ok rx-payload=machina-guest-ping-legacy$' \
    '^virtio-net: 00:01\.0 path=modern tx=ok rx=ok rx-payload=machina-guest-ping-modern$' "$off" \
    -- -M q35 -device virtio-net-pci,netdev=n0,romfile= \
    -netdev "socket,id=n0,udp=127.0.0.1:$port,localaddr=127.0.0.1:$port" \
    -append "machina.test=virtio machina.net-test=1 $IOOPT"

run "64-bit BAR above 4 GiB" '^bar: 00:02\.0 index=4 kind=mem64 pf=1 addr=0x1[0-9a-f]{8} size=0x4000$' \
    '^virtio-modern: 00:02\.0 result=ok$' "$off" \
    -- -M q35 -object memory-backend-ram,id=mb,size=2G -device ivshmem-plain,memdev=mb \
    -device virtio-rng-pci -append "machina.test=pci-scan-ecam,virtio"

for m in q35 pc; do
    run "$m config-fuzz then virtio" '^config-fuzz: functions=7 rounds=3 seed=7 max-writes=20000$' \
        '^config-fuzz: done writes=1323 reads=448 restored=7 ' '^virtio: done devices=2$' \
        '!result=error' "$off" \
        -- -M "$m" -device virtio-rng-pci -device pci-bridge,chassis_nr=1,id=b1 -device virtio-rng-pci,bus=b1 \
        -append "machina.test=config-fuzz,virtio machina.seed=7 machina.fuzz-rounds=3 $IOOPT"
done

if [ "$failures" -ne 0 ]; then
    echo "$failures failure(s)"
    exit 1
fi
echo "all passed"
