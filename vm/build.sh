#!/bin/sh
# Build the cgroup v2 test VM from Debian packages, into $1 (default build/vm); idempotent.
#   kernel/     Debian's linux-image-6.1.0-*-amd64, fetched with apt-get download, dpkg-deb -x
#   initrd.img  busybox-static + the 9p/virtio/overlay modules + vm/init
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-$HERE/../build/vm}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# ---- kernel: the newest 6.1 generic flavour Debian offers (it ships 9p; -cloud does not)
if [ ! -f "$OUT/kernel/.done" ]; then
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/.*Depends: \(linux-image-6\.1\.[^ ]*-amd64\)$/\1/p' | head -1)
    if [ -z "$pkg" ]; then
        apt-get update -qq
        pkg=$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: \(linux-image-6\.1\.[^ ]*-amd64\)$/\1/p' | head -1)
    fi
    [ -n "$pkg" ] || { echo "build.sh: no linux-image-6.1.0-*-amd64 package found" >&2; exit 1; }
    rm -rf "$OUT/kernel" "$OUT/deb"
    mkdir -p "$OUT/deb"
    (cd "$OUT/deb" && apt-get download -q "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
    dpkg-deb -x "$OUT"/deb/"$pkg"_*.deb "$OUT/kernel"
    kver=${pkg#linux-image-}
    depmod -b "$OUT/kernel" "$kver"
    echo "$kver" > "$OUT/kernel/.done"
    rm -rf "$OUT/deb"
fi
KVER=$(cat "$OUT/kernel/.done")
ln -sf "kernel/boot/vmlinuz-$KVER" "$OUT/vmlinuz"

# ---- initramfs: busybox, the modules to reach the root (in load order), init, guest units
stamp="$OUT/initrd.stamp"
inputs="$HERE/init $HERE/build.sh $(find "$HERE/guest" -type f | sort)"
want=$(cat $inputs | md5sum | cut -d' ' -f1)-$KVER
if [ ! -f "$OUT/initrd.img" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    tree="$OUT/initrd"
    rm -rf "$tree"
    mkdir -p "$tree/bin" "$tree/proc" "$tree/sys" "$tree/dev" "$tree/modules" "$tree/guest"
    cp /bin/busybox "$tree/bin/busybox"
    ln -s busybox "$tree/bin/sh"
    cp "$HERE/init" "$tree/init"
    chmod 755 "$tree/init"
    cp "$HERE"/guest/*.service "$HERE"/guest/*.target "$tree/guest/"
    : > "$tree/modules.order"
    for mod in virtio_pci 9pnet_virtio 9p overlay virtio_blk; do
        modprobe -d "$OUT/kernel" -S "$KVER" --show-depends "$mod" | while read -r _ path _; do
            name=$(basename "$path")
            grep -qx "$name" "$tree/modules.order" && continue
            cp "$path" "$tree/modules/$name"
            echo "$name" >> "$tree/modules.order"
        done
    done
    (cd "$tree" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$OUT/initrd.img.tmp"
    mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"
    echo "$want" > "$stamp"
fi

echo "vm: kernel $KVER and initrd in $OUT"
