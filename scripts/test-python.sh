#!/usr/bin/env bash
# The Python package `vgpu`: builds its abi3 wheel with maturin, installs it into a
# virtual environment and runs pytest (client-py/tests) against the real mediator.
#
#   scripts/test-python.sh        (the environment: VGPU_PY_VENV, default target/py-venv)
#
# The environment is created, with maturin, pytest and numpy from PyPI, if it lacks them.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VGPU_PY_VENV:-target/py-venv}
if ! "$venv/bin/python" -c 'import maturin, pytest, numpy' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q maturin pytest numpy
fi
target=${CARGO_TARGET_DIR:-target}
rm -rf "$target/wheels"
"$venv/bin/maturin" build --quiet --release -m client-py/Cargo.toml -o "$target/wheels"
"$venv/bin/pip" install -q --force-reinstall --no-deps "$target"/wheels/vgpu-*.whl
cargo build --quiet -p vgpu-mediator -p ivshmem-setup
VGPU_BIN="$(cd "$target/debug" && pwd)" "$venv/bin/python" -m pytest -q client-py/tests
