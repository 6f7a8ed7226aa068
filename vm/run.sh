#!/bin/sh
# Boot the cgroup v2 test VM and wait for its test run: run.sh BUILD RESULTS [kernel args...]
# TCG (no KVM: nested virtualisation does not run a guest here), 2 vCPUs, 2 GiB, no network.
# Results, the guest's log and the console log end up in RESULTS; exit code = pytest's.
set -eu
B=$(cd "$1" && pwd); R=$2; shift 2
SRC=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$R"; mkdir -p "$R"; R=$(cd "$R" && pwd)
[ -n "${SBXVM_PYTEST_ARGS:-}" ] && echo "$SBXVM_PYTEST_ARGS" > "$R/pytest-args"
start=$(date +%s)
truncate -s 256M "$R/io.img"
truncate -s 256M "$R/swap.img"
timeout "${SBXVM_TIMEOUT:-2400}" qemu-system-x86_64 -accel tcg -smp 2 -m 2048 \
    -nographic -no-reboot -nic none \
    -kernel "$B/vmlinuz" -initrd "$B/initrd.img" \
    -append "console=ttyS0 quiet panic=-1 sbxvm.src=$SRC sbxvm.modules=$B/kernel/lib/modules $*" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -virtfs local,path="$R",mount_tag=results,security_model=none,multidevs=remap \
    -drive file="$R/io.img",if=virtio,format=raw,cache=unsafe \
    -drive file="$R/swap.img",if=virtio,format=raw,cache=unsafe \
    > "$R/console.log" 2>&1 || echo "vm: qemu ended with $?" >&2
rm -f "$R/io.img" "$R/swap.img"
echo "vm: $(( $(date +%s) - start )) s from boot to power-off"
tail -n 40 "$R/guest.log" 2>/dev/null || tail -n 40 "$R/console.log"
python3 "$SRC/vm/report.py" "$R" || true
test -f "$R/exit-code" || { echo "vm: the guest wrote no exit code (see $R/console.log)" >&2; exit 1; }
exit "$(cat "$R/exit-code")"
