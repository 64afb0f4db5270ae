#!/usr/bin/env bash
# NOOP round trip and 1K-float VECTOR_ADD through the mediator from Rust (vgpu-client),
# C (examples/c/vgpu_example.c on libvgpuclient) and Python (the vgpu wheel), in one
# run against one release mediator, clients busy-polling; medians of N each. Then
# 50 N NOOPs pipelined 64 deep from each (submitted and waited for by tag).
#
#   scripts/bench-languages.sh [N]        (default 20000; Python: the venv of
#                                          scripts/test-python.sh, VGPU_PY_VENV)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20000}
target=${CARGO_TARGET_DIR:-target}
venv=${VGPU_PY_VENV:-target/py-venv}
cargo build --quiet --release -p vgpu-mediator -p vgpu-client -p ivshmem-setup -p vgpu-client-ffi
[[ -x $venv/bin/python ]] && "$venv/bin/python" -c 'import vgpu' 2>/dev/null ||
    { echo "the vgpu wheel is not installed in $venv: run scripts/test-python.sh first" >&2; exit 1; }
work=$(mktemp -d -p /dev/shm)
trap 'kill $mediator 2>/dev/null; rm -rf "$work"' EXIT
prefix=$(scripts/install-c-library.sh "$work/prefix" "$target/release")
cc -O2 examples/c/vgpu_example.c -I"$prefix/include" -L"$prefix/lib" -lvgpuclient \
    -Wl,-rpath,"$prefix/lib" -o "$work/vgpu_example"
cat >"$work/vgpu.toml" <<TOML
[regions]
dir = "$work"
size = "4M"
ring_entries = 256
arena_size = "1M"
[pools.A]
[[vm]]
id = 1
pool = "A"
priority = 1
TOML
"$target/release/ivshmem-setup" create --config "$work/vgpu.toml" >/dev/null
# The mediator busy-polls on one core, every client on the other.
taskset -c 1 "$target/release/vgpu-mediator" --config "$work/vgpu.toml" --quiet-requests \
    >"$work/mediator.log" 2>&1 &
mediator=$!
region=$work/vgpu-vm1
until "$target/release/ivshmem-setup" inspect "$region" | grep -q epoch; do sleep 0.05; done
median() { sed -n 's/.* median \([0-9]*\) ns.*/\1/p' | head -1; }
rust_noop=$(taskset -c 0 "$target/release/vgpu-client" --region "$region" --spin --count "$n" NOOP | median)
rust_add=$(taskset -c 0 "$target/release/vgpu-client" --region "$region" --spin --count "$n" --n 1024 VECTOR_ADD | median)
rate() { sed -n 's/.* \([0-9][0-9]*\) requests\/s.*/\1/p' | head -1; }
rust_pipe=$(taskset -c 0 "$target/release/vgpu-client" --region "$region" --spin --count $((50 * n)) --depth 64 NOOP | rate)
c_out=$(taskset -c 0 "$work/vgpu_example" "$region" --bench "$n")
c_noop=$(grep 'c noop' <<<"$c_out" | median)
c_add=$(grep 'c vector_add_1k' <<<"$c_out" | median)
c_pipe=$(grep 'c pipelined' <<<"$c_out" | rate)
py_out=$(taskset -c 0 "$venv/bin/python" - "$region" "$n" <<'PY'
import sys, time
import numpy as np
import vgpu
region, n = sys.argv[1], int(sys.argv[2])
a, b = np.arange(1024, dtype=np.float32), np.ones(1024, dtype=np.float32)
with vgpu.Client(region, spin=True) as gpu:
    for name, call in (("noop", gpu.noop), ("vector_add_1k", lambda: gpu.vector_add(a, b))):
        t = []
        for _ in range(n):
            start = time.perf_counter_ns()
            call()
            t.append(time.perf_counter_ns() - start)
        print(f"python {name} median {sorted(t)[n // 2]} ns")
    tags, total = [], 50 * n
    start = time.perf_counter()
    for _ in range(total):
        tags.append(gpu.submit(vgpu.Opcode.NOOP))
        if len(tags) == 64:
            gpu.wait(tags.pop(0))
    for tag in tags:
        gpu.wait(tag)
    print(f"python pipelined noop {int(total / (time.perf_counter() - start))} requests/s")
PY
)
py_noop=$(grep 'python noop' <<<"$py_out" | median)
py_add=$(grep 'python vector_add_1k' <<<"$py_out" | median)
py_pipe=$(grep 'python pipelined' <<<"$py_out" | rate)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo "| median round trip, ns ($n each) | NOOP | / Rust | VECTOR_ADD 1K floats | / Rust |"
echo "|---|---:|---:|---:|---:|"
echo "| Rust (vgpu-client) | $rust_noop | 1.00 | $rust_add | 1.00 |"
echo "| C (libvgpuclient) | $c_noop | $(ratio "$c_noop" "$rust_noop") | $c_add | $(ratio "$c_add" "$rust_add") |"
echo "| Python (vgpu wheel, NumPy) | $py_noop | $(ratio "$py_noop" "$rust_noop") | $py_add | $(ratio "$py_add" "$rust_add") |"
echo
echo "| NOOPs pipelined 64 deep | requests/s | / Rust |"
echo "|---|---:|---:|"
echo "| Rust (vgpu-client --depth 64, a clock read per request) | $rust_pipe | 1.00 |"
echo "| C (vgpu_submit, vgpu_wait) | $c_pipe | $(ratio "$c_pipe" "$rust_pipe") |"
echo "| Python (submit, wait) | $py_pipe | $(ratio "$py_pipe" "$rust_pipe") |"
