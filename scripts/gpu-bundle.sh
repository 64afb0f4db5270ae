#!/usr/bin/env bash
# Build what scripts/gpu-check.sh needs, with the CUDA executor, and put it, stripped
# (about 15 MB), in one folder to copy to a GPU machine:
#
#   scripts/gpu-bundle.sh [OUT]          # OUT defaults to target/gpu
#   scripts/gpu-check.sh target/gpu      # on the GPU machine, from a checkout
#
# The folder holds ivshmem-setup, vgpu-mediator, vgpu-client, vgpu-cuda-bench and
# cuda-tests (the mediator's unit tests, whose GPU tests gpu-check runs first).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/gpu}
target=${CARGO_TARGET_DIR:-target}
cargo build --release --workspace --features vgpu-mediator/cuda
tests=$(cargo test --release -p vgpu-mediator --features cuda --lib --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "vgpu_mediator" \
            and m["profile"]["test"] and m.get("executable"):
        print(m["executable"])')
[ -n "$tests" ] || { echo "gpu-bundle: the mediator's test binary was not found" >&2; exit 1; }
mkdir -p "$out"
for b in ivshmem-setup vgpu-mediator vgpu-client vgpu-cuda-bench; do
    strip -o "$out/$b" "$target/release/$b"
done
strip -o "$out/cuda-tests" "$tests"
du -sh "$out"
