#!/usr/bin/env bash
# Install the C library of the guest: libvgpuclient.so and .a, include/vgpu_client.h and
# vgpu-client.pc, under PREFIX (lib/, include/, lib/pkgconfig/).
#
#   scripts/install-c-library.sh PREFIX [LIBDIR]
#
# LIBDIR holds libvgpuclient.{so,a} already built; without it the release build is made
# here (cargo build --release -p vgpu-client-ffi). Then, e.g.:
#   PKG_CONFIG_PATH=PREFIX/lib/pkgconfig cc prog.c $(pkg-config --cflags --libs vgpu-client)
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:?usage: install-c-library.sh PREFIX [LIBDIR]}
libdir=${2:-}
if [[ -z $libdir ]]; then
    cargo build --quiet --release -p vgpu-client-ffi
    libdir=${CARGO_TARGET_DIR:-target}/release
fi
mkdir -p "$prefix/lib/pkgconfig" "$prefix/include"
prefix=$(cd "$prefix" && pwd)
install -m 0755 "$libdir/libvgpuclient.so" "$prefix/lib/"
install -m 0644 "$libdir/libvgpuclient.a" "$prefix/lib/"
install -m 0644 include/vgpu_client.h "$prefix/include/"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" client-ffi/vgpu-client.pc.in \
    >"$prefix/lib/pkgconfig/vgpu-client.pc"
echo "$prefix"
