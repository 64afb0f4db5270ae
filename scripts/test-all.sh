#!/usr/bin/env bash
# The full test suite: every unit, integration, multi-process and doc test of the
# workspace, then the loom models of the ring (own target directory, release build).
set -euo pipefail
cd "$(dirname "$0")/.."

# The system tests run the real binaries: build them all first.
cargo build --workspace --bins
cargo test --workspace --all-targets
cargo test --workspace --doc
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=3 \
    cargo test -p vgpu-ring --release --test loom

# The CUDA executor builds and its tests pass without a GPU (GPU-only tests say they
# skipped); scripts/gpu-check.sh runs it on a GPU machine.
cargo build --workspace --features vgpu-mediator/cuda
cargo test -p vgpu-mediator --features cuda
