#!/usr/bin/env bash
# The full test suite: every unit, integration, multi-process and doc test of the
# workspace, the loom models of the ring, and the tests that need something a machine
# may lack (QEMU, root, a GPU): each runs where its requirement is met and is reported
# as skipped, with the reason, where it is not.
set -euo pipefail
cd "$(dirname "$0")/.."

# The system tests run the real binaries (and the C library): build them all first.
cargo build --workspace
cargo test --workspace --all-targets
cargo test --workspace --doc
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=3 \
    cargo test -p vgpu-ring --release --test loom

# The CUDA executor builds and its tests pass without a GPU; scripts/gpu-check.sh runs
# it on a GPU machine.
cargo build --workspace --features vgpu-mediator/cuda
cargo test -p vgpu-mediator --features cuda

# Tests that need something: run where it is there, a visible skip where it is not.
skipped=0
requires() { # NAME REASON CONDITION... -- COMMAND...
    local name=$1 reason=$2
    shift 2
    local condition=()
    while [[ $1 != -- ]]; do condition+=("$1"); shift; done
    shift
    if "${condition[@]}" >/dev/null 2>&1; then
        "$@"
    else
        echo "skipped: $name ($reason)"
        skipped=$((skipped + 1))
    fi
}
requires qemu_accepts_the_printed_arguments "qemu-system-x86_64 is not installed" \
    command -v qemu-system-x86_64 -- \
    cargo test -p ivshmem-setup --test cli -- --ignored --exact qemu_accepts_the_printed_arguments
# A Linux guest under QEMU (TCG) served through ivshmem-doorbell: the image is a Debian
# kernel and an initramfs with a static vgpu-client (scripts/guest-image.sh).
guest_image() {
    command -v qemu-system-x86_64 && scripts/guest-image.sh target/guest 2>target/guest-image.err
}
requires a_qemu_guest_is_served_through_its_doorbell_after_idle \
    "no qemu-system-x86_64, or no guest image: target/guest-image.err says why" \
    guest_image -- \
    env VGPU_GUEST_IMAGE="$PWD/target/guest" cargo test -p vgpu-tests --test guest -- --ignored
requires create_on_a_full_tmpfs_fails_cleanly_and_leaves_nothing "not root: cannot mount a tmpfs" \
    test "$(id -u)" = 0 -- \
    cargo test -p ivshmem-setup --test cli -- --ignored --exact create_on_a_full_tmpfs_fails_cleanly_and_leaves_nothing
requires doctor_finds_a_too_small_tmpfs "not root: cannot mount a tmpfs" \
    test "$(id -u)" = 0 -- \
    cargo test -p ivshmem-setup --test cli -- --ignored --exact doctor_finds_a_too_small_tmpfs
# The Python package: a wheel built with maturin into a virtual environment, pytest
# against the real mediator (needs python3's venv and PyPI for maturin, pytest, numpy).
python_env() {
    local venv=${VGPU_PY_VENV:-target/py-venv}
    "$venv/bin/python" -c 'import maturin, pytest, numpy' ||
        { python3 -m venv "$venv" && "$venv/bin/pip" install -q maturin pytest numpy; }
}
requires python_package "no python3 venv with maturin, pytest and numpy (PyPI unreachable?)" \
    python_env -- \
    scripts/test-python.sh
requires cuda_executor_on_a_gpu "no NVIDIA GPU (nvidia-smi finds none)" \
    nvidia-smi -L -- \
    cargo test -p vgpu-mediator --features cuda --lib -- --ignored cuda::tests::
echo "requirement-gated tests skipped: $skipped"
