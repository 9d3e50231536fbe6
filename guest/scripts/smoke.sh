#!/bin/bash
# Boots the test guest and checks its serial report. Needs root (network namespace, TAP).
#   guest/scripts/smoke.sh qemu   - QEMU microvm (KVM if usable, else TCG), 2 vCPUs: cmdline,
#                                   memmap, acpi, smp, blk, rng, net (+ host pings the guest), tick,
#                                   power button; vsock too if vhost-device-vsock is on PATH
#   guest/scripts/smoke.sh vmm [path/to/bulkhead-vmm]
#                                 - the same on bulkhead-vmm, plus vsock both directions
# Prints SKIPPED: <reason> and exits 0 when a prerequisite is missing.
set -euo pipefail
mode=${1:-qemu}
here=$(cd "$(dirname "$0")/.." && pwd)
vmm=${2:-$here/../target-vmm/debug/bulkhead-vmm}

skip() { echo "SKIPPED: $*"; exit 0; }
[ "$(id -u)" = 0 ] || skip "needs root (network namespace and TAP device)"
command -v ip >/dev/null || skip "iproute2 (ip) not installed"
command -v busybox >/dev/null || skip "busybox not installed (used for ping)"
command -v python3 >/dev/null || skip "python3 not installed (host side of vsock and power button)"
case $mode in
qemu) command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 not installed" ;;
vmm)
    [ -x "$vmm" ] || skip "bulkhead-vmm not built at $vmm"
    [ -w /dev/kvm ] || skip "/dev/kvm not usable"
    ;;
*) echo "usage: $0 qemu|vmm [bulkhead-vmm]" >&2; exit 2 ;;
esac

(cd "$here" && cargo build --release --quiet 2>/dev/null) || (cd "$here" && cargo build --release)
elf=$here/target/release/bulkhead-guest

work=$(mktemp -d /tmp/bulkhead-guest-smoke.XXXXXX)
ns=bkg$$
tap=bkgtap$$
cleanup() {
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

python3 - "$work/disk.img" <<'PY' 2>/dev/null || { head -c 1048576 /dev/zero > "$work/disk.img"; printf 'BULKHEAD-DISK-0!' | dd of="$work/disk.img" conv=notrunc status=none; }
import sys
d = bytearray(1 << 20); d[:16] = b"BULKHEAD-DISK-0!"
open(sys.argv[1], "wb").write(d)
PY

ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" ip tuntap add "$tap" mode tap
ip netns exec "$ns" ip link set "$tap" up
ip netns exec "$ns" ip addr add 10.0.2.1/24 dev "$tap"

checks=cmdline,memmap,acpi,smp,blk,rng,net,tick
params="blk.write=smoke-sector-1 net.ip=10.0.2.15 net.peer=10.0.2.1 net.serve_ms=6000 tick.count=2"
expect=(cmdline memmap acpi smp blk rng net net.serve tick)
# vsock: always on bulkhead-vmm; under QEMU only through vhost-user with rust-vmm's
# vhost-device-vsock (cargo install vhost-device-vsock), when it is on PATH.
vsock=no
if [ "$mode" = vmm ] || command -v vhost-device-vsock >/dev/null; then
    vsock=yes
fi
[ $vsock = yes ] && { checks=$checks,vsock; params="$params vsock.port=1234 vsock.listen=5678"; expect+=(vsock vsock.listen); }
# power: the host presses the power button (bulkhead-vmm: control socket `shutdown`;
# QEMU: monitor `system_powerdown`) once the guest says it is waiting.
checks=$checks,power
params="$params power.wait_ms=30000"
expect+=(power)
cmdline="checks=$checks $params"

press_button() {
    for _ in $(seq 1 600); do
        grep -q "BULKHEAD-GUEST power.wait ready" "$work/serial" 2>/dev/null && break
        sleep 0.1
    done
    python3 - "$1" "$2" > "$work/button" 2>&1 <<'PY' || true
import socket, sys, time
path, line = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
s.sendall(line.encode() + b"\n")
time.sleep(0.5)
print("sent", line)
PY
}

vsock_host() {
    python3 - "$1" 1234 5678 > "$work/vsock-host" 2>&1 <<'PY'
import os, socket, sys, time
uds, port, listen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(f"{uds}_{port}"); srv.listen(1); srv.settimeout(60)
c, _ = srv.accept(); c.settimeout(10)
got = b""
while not got.endswith(b"\n"):
    d = c.recv(100)
    if not d: break
    got += d
print("guest said:", got)
c.sendall(b"hello from host\n"); time.sleep(0.2); c.close()
for _ in range(300):
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(uds); break
    except OSError:
        time.sleep(0.1)
s.settimeout(10)
s.sendall(f"CONNECT {listen}\n".encode())
r = b""
while not r.endswith(b"\n"):
    d = s.recv(1)
    if not d: break
    r += d
print("connect:", r)
s.sendall(b"shout this\n")
e = b""
while not e.endswith(b"\n"):
    d = s.recv(100)
    if not d: break
    e += d
print("echo:", e)
PY
}

# Host side of the ping test: forget the guest's MAC (so the guest must answer ARP),
# then ping it while it serves.
(
    for _ in $(seq 1 100); do
        grep -q "BULKHEAD-GUEST net ok" "$work/serial" 2>/dev/null && break
        sleep 0.1
    done
    ip netns exec "$ns" ip neigh flush dev "$tap" || true
    ip netns exec "$ns" busybox ping -c 3 -W 2 10.0.2.15 > "$work/ping" 2>&1 || true
) &
pinger=$!

if [ "$mode" = qemu ]; then
    accel="-enable-kvm -cpu host,-arch-capabilities"
    [ -w /dev/kvm ] || accel="-accel tcg"
    machine=microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=on
    vsockdev=()
    if [ $vsock = yes ]; then
        vhost-device-vsock --guest-cid 3 --socket "$work/vu.sock" --uds-path "$work/v.sock" \
            > "$work/vhost-device-vsock.log" 2>&1 &
        vdv=$!
        for _ in $(seq 1 50); do [ -S "$work/vu.sock" ] && break; sleep 0.1; done
        machine=$machine,memory-backend=mem
        vsockdev=(-object memory-backend-memfd,id=mem,size=128M,share=on
            -chardev socket,id=vu,path="$work/vu.sock" -device vhost-user-vsock-device,chardev=vu)
        vsock_host "$work/v.sock" &
        pyhost=$!
    fi
    press_button "$work/mon.sock" system_powerdown &
    button=$!
    # shellcheck disable=SC2086
    ip netns exec "$ns" timeout 120 qemu-system-x86_64 \
        -M $machine $accel "${vsockdev[@]}" -monitor unix:"$work/mon.sock",server=on,wait=off \
        -m 128 -smp 2 -nodefaults -no-user-config -nographic -serial stdio -no-reboot \
        -global virtio-mmio.force-legacy=false \
        -device virtio-blk-device,drive=d -drive id=d,file="$work/disk.img",format=raw,if=none \
        -device virtio-rng-device \
        -netdev tap,id=n,ifname="$tap",script=no,downscript=no -device virtio-net-device,netdev=n \
        -kernel "$elf" -append "$cmdline" > "$work/serial" 2>&1 || true
    if [ $vsock = yes ]; then
        wait "$pyhost" || true
        kill "$vdv" 2>/dev/null || true
    fi
else
    vsock_host "$work/v.sock" &
    pyhost=$!
    press_button "$work/api.sock" '{"op":"shutdown","timeout_secs":20}' &
    button=$!
    ip netns exec "$ns" timeout 120 "$vmm" --no-jail --kernel "$elf" --mem 128M --vcpus 2 --api-sock "$work/api.sock" \
        --cmdline "$cmdline" --serial stdout --disk "$work/disk.img" --net tap="$tap" \
        --vsock cid=3,uds="$work/v.sock" --rng > "$work/serial" 2>&1 || true
    wait "$pyhost" || true
fi
wait "$pinger" || true
wait "$button" || true

cat "$work/serial"
fail=0
for c in "${expect[@]}"; do
    grep -q "^BULKHEAD-GUEST $c ok" "$work/serial" || { echo "MISSING: $c ok"; fail=1; }
done
grep -q "^BULKHEAD-GUEST done ${#expect[@]} 0" "$work/serial" || { echo "MISSING: done ${#expect[@]} 0"; fail=1; }
grep -q "^BULKHEAD-GUEST blk ok .*head=BULKHEAD-DISK-0!" "$work/serial" || { echo "WRONG: sector 0"; fail=1; }
grep -q "^BULKHEAD-GUEST smp ok cpus=2 started=1" "$work/serial" || { echo "WRONG: second vCPU"; fail=1; }
[ "$(dd if="$work/disk.img" bs=1 skip=512 count=14 status=none)" = smoke-sector-1 ] || { echo "WRONG: sector 1 not written"; fail=1; }
grep -q "3 packets received" "$work/ping" || { echo "WRONG: host could not ping the guest"; cat "$work/ping"; fail=1; }
grep -q "echo_replies=[1-9]" "$work/serial" || { echo "WRONG: guest answered no pings"; fail=1; }
if [ $vsock = yes ]; then
    cat "$work/vsock-host"
    grep -q "reply=hello from host" "$work/serial" || { echo "WRONG: vsock reply"; fail=1; }
    grep -q "echo: b'SHOUT THIS\\\\n'" "$work/vsock-host" || { echo "WRONG: vsock echo"; fail=1; }
fi
[ $fail = 0 ] && echo "PASS: guest smoke test ($mode)"
exit $fail
