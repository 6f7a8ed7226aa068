#!/bin/sh
# Boot the v2 test VM: run.sh BUILD RESULTS [extra kernel args]
set -eu
B=$(cd "$1" && pwd); R=$2; shift 2
SRC=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$R"
truncate -s 256M "$R/io.img"; truncate -s 256M "$R/swap.img"
exec qemu-system-x86_64 -accel tcg -smp 2 -m 2048 -nographic -no-reboot -nic none \
    -kernel "$B/vmlinuz" -initrd "$B/initrd.img" \
    -append "console=ttyS0 quiet panic=-1 sbxvm.src=$SRC sbxvm.modules=$B/kernel/lib/modules $*" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -virtfs local,path="$R",mount_tag=results,security_model=none,multidevs=remap \
    -drive file="$R/io.img",if=virtio,format=raw,cache=unsafe \
    -drive file="$R/swap.img",if=virtio,format=raw,cache=unsafe
