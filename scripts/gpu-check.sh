#!/usr/bin/env bash
# Check the CUDA executor on a GPU machine, with binaries built elsewhere:
#
#   scripts/gpu-bundle.sh                 # on any machine: builds, strips into target/gpu
#   scripts/gpu-check.sh target/gpu       # on the GPU machine (target/gpu copied there)
#
# (or `scripts/gpu-check.sh target/release` after building with
# `--features vgpu-mediator/cuda` on the GPU machine itself).
# With `cuda-tests` (the mediator's unit tests, which gpu-bundle.sh adds) in BIN_DIR it first runs
# the GPU tests: every operation equal to the CPU executor's, on a registered (DMA) and a
# staged arena.
# Builds nothing. Creates regions for a CUDA pool (G) and a CPU pool (C), starts the
# mediator, runs every GPU operation at several sizes through vgpu-client on both pools
# (the client checks each result against its own CPU computation, so both pools must
# agree with it), and prints per-request latency (median, p99) on the GPU and on the
# CPU, next to the same operation called directly on the CUDA executor in one process
# (vgpu-cuda-bench), and the mediator's overhead over that direct call; then whether the
# GPU pool's arena was registered with the driver (DMA) or staged.
set -euo pipefail

bin=${1:-target/release}
runs=${RUNS:-200}
for b in ivshmem-setup vgpu-mediator vgpu-client vgpu-cuda-bench; do
    [ -x "$bin/$b" ] || { echo "gpu-check: $bin/$b missing (build with --features vgpu-mediator/cuda)" >&2; exit 2; }
done
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | sed 's/^/GPU: /'
# The libraries the executor may load: the driver always, NVRTC only for an old GPU.
ldconfig -p 2>/dev/null | grep -E 'libcuda\.so|libnvrtc\.so' | sed 's/^/library: /' || true
# A failure here is reported, and the table is still made (one run says everything).
tests_failed=0
if [ -x "$bin/cuda-tests" ]; then
    "$bin/cuda-tests" --ignored --test-threads 1 --nocapture cuda::tests:: ||
        { echo "gpu-check: the GPU tests FAILED (the table follows)"; tests_failed=1; }
fi

# On tmpfs, as regions are in production: the driver may refuse to pin (register) the
# pages of a file on a disk file system, and the table would then show staging.
work=$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d)
mediator_pid=
cleanup() {
    [ -n "$mediator_pid" ] && kill "$mediator_pid" 2>/dev/null && wait "$mediator_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/vgpu.toml" <<TOML
[regions]
dir = "$work"
size = "64M"
arena_size = "32M"
[pools.G]
backend = "cuda"
device = 0
[pools.C]
backend = "cpu"
[[vm]]
id = 1
pool = "G"
priority = 2
[[vm]]
id = 2
pool = "C"
priority = 2
TOML

"$bin/ivshmem-setup" create --config "$work/vgpu.toml" >/dev/null
"$bin/vgpu-mediator" --config "$work/vgpu.toml" --quiet-requests >"$work/mediator.log" 2>&1 &
mediator_pid=$!
for _ in $(seq 100); do
    grep -q "Daemon Started" "$work/mediator.log" && break
    kill -0 "$mediator_pid" 2>/dev/null || { cat "$work/mediator.log"; exit 1; }
    sleep 0.1
done
grep -q "Pool G: CUDA device 0" "$work/mediator.log" || { echo "gpu-check: pool G is not on the GPU"; cat "$work/mediator.log"; exit 1; }

# One request type, many times, through the client; prints "median p99" in ns.
through_mediator() {
    local vm=$1; shift
    "$bin/vgpu-client" --region "$work/vgpu-vm$vm" --spin --json --count "$runs" "$@" | python3 -c '
import json, sys
r = json.load(sys.stdin)
if r["status"] != 1 or r["result_error"]:
    sys.exit("FAILED: %s %s" % (r["response"], r["result_error"]))
l = sorted(r["latency_ns"])
print(l[len(l) // 2], l[(len(l) - 1) * 99 // 100])'
}

printf '%-11s %9s %12s %12s %12s %12s %12s %12s %10s\n' op size gpu_med_ns gpu_p99_ns cpu_med_ns cpu_p99_ns direct_ns overhead_ns overhead%
failed=0
check() {
    local op=$1 size=$2; shift 2
    local gpu cpu direct
    if ! gpu=$(through_mediator 1 "$op" "$@") || ! cpu=$(through_mediator 2 "$op" "$@"); then
        echo "$op $size: FAILED (result differs from the CPU computation)"; failed=1; return
    fi
    direct=$("$bin/vgpu-cuda-bench" "$op" "$size" "$runs" | awk '{print $3}')
    read -r gmed gp99 <<<"$gpu"
    read -r cmed cp99 <<<"$cpu"
    printf '%-11s %9s %12s %12s %12s %12s %12s %12s %9.1f%%\n' "$op" "$size" "$gmed" "$gp99" "$cmed" "$cp99" "$direct" \
        $((gmed - direct)) "$(python3 -c "print(100 * ($gmed - $direct) / $direct)")"
}
for n in 1024 65536 1048576; do
    check VECTOR_ADD "$n" --n "$n"
    check SAXPY "$n" --n "$n" --a 1.5
    check DOT "$n" --n "$n"
done
for n in 64 256 512; do
    check MATMUL "$n" --m "$n" --k "$n" --n "$n"
done
# How pool G's operands moved: by DMA from the registered arena, or staged.
if grep -q "arena registered" "$work/mediator.log"; then
    echo "pool G: the VM's arena is registered with the driver (operands move by DMA)"
else
    echo "pool G: the VM's arena is NOT registered (operands staged through host buffers):"
    grep "cannot register" "$work/mediator.log" || true
fi
exit $((failed | tests_failed))
