#!/usr/bin/env bash
# Builds the Linux guest of the QEMU guest test (tests/tests/guest.rs): a Debian kernel
# and an initramfs holding busybox, a static vgpu-client and tests/guest/init.
#
#   scripts/guest-image.sh [OUT]     (default: target/guest)
#
# OUT gets vmlinuz and initrd.gz. The kernel is VGPU_GUEST_KERNEL if set, else the one
# Debian's linux-image-amd64 depends on (downloaded once, kept in OUT). busybox-static
# and cpio are installed with apt-get when missing and this runs as root. Exits non-zero,
# saying what is missing, where the image cannot be built.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/guest}
mkdir -p "$out"
out=$(cd "$out" && pwd)

missing=()
command -v cpio >/dev/null || missing+=(cpio)
[[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1 || missing+=(busybox-static)
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
            { apt-get update >/dev/null 2>&1 &&
                apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1; } ||
            { echo "guest-image: cannot install ${missing[*]}" >&2; exit 1; }
    else
        echo "guest-image: needs ${missing[*]}" >&2
        exit 1
    fi
fi

# The kernel: ivshmem needs no guest driver, any x86_64 kernel with PCI, sysfs,
# devtmpfs and a serial console will do.
if [[ -n ${VGPU_GUEST_KERNEL:-} ]]; then
    cp "$VGPU_GUEST_KERNEL" "$out/vmlinuz"
elif [[ ! -s $out/vmlinuz ]]; then
    command -v apt-get >/dev/null || { echo "guest-image: no apt-get; set VGPU_GUEST_KERNEL" >&2; exit 1; }
    package=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
    [[ -n $package ]] || { echo "guest-image: apt knows no linux-image-amd64" >&2; exit 1; }
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && apt-get download "$package" >/dev/null 2>&1) ||
        { echo "guest-image: cannot download $package" >&2; exit 1; }
    dpkg-deb --fsys-tarfile "$work"/*.deb | tar -C "$work" -x --wildcards './boot/vmlinuz-*'
    mv "$work"/boot/vmlinuz-* "$out/vmlinuz"
fi

# The guest program, statically linked so that the initramfs needs no C library.
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols" CARGO_PROFILE_RELEASE_DEBUG=0 \
    cargo build --quiet --release -p vgpu-client --target "$host" \
    --target-dir "${CARGO_TARGET_DIR:-target}/guest-build"
client="${CARGO_TARGET_DIR:-target}/guest-build/$host/release/vgpu-client"

root=$(mktemp -d)
trap 'rm -rf "$root" ${work:+"$work"}' EXIT
mkdir -p "$root"/{bin,proc,sys,dev}
cp /bin/busybox "$root/bin/busybox"
for applet in sh mount echo uname poweroff; do ln -s busybox "$root/bin/$applet"; done
cp "$client" "$root/bin/vgpu-client"
install -m 0755 tests/guest/init "$root/init"
(cd "$root" && find . | LC_ALL=C sort | cpio --quiet -o -H newc --reproducible | gzip -9n) >"$out/initrd.gz"
echo "$out"
