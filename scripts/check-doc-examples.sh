#!/usr/bin/env bash
# Every public item of the Rust libraries has an example (rustdoc's
# missing_doc_code_examples lint, nightly only); the examples themselves run with the
# doctests. The C API's examples are C, compiled and run by tests/tests/c_library.rs;
# the Python package's run in client-py/tests.
set -euo pipefail
cd "$(dirname "$0")/.."
lint=(-Z unstable-options -Zcrate-attr="feature(rustdoc_missing_doc_code_examples)"
    -D rustdoc::missing-doc-code-examples)
for crate in vgpu-ring vgpu-client vgpu-config vgpu-doorbell; do
    cargo +nightly rustdoc --quiet -p "$crate" --lib -- "${lint[@]}"
done
cargo +nightly rustdoc --quiet -p vgpu-mediator --lib --features cuda -- "${lint[@]}"
echo "every public item of the libraries has an example"
