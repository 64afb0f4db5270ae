#!/usr/bin/env bash
# Run every fuzz target (fuzz/fuzz_targets) for SECONDS seconds each (default 30), from
# its checked-in seeds, with no single allocation over 64 MiB. Needs the nightly
# toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# `scripts/fuzz.sh 0 10000000` runs each target for ten million executions instead.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-30}
runs=${2:-0}
limits=(-rss_limit_mb=2048 -malloc_limit_mb=64 -print_final_stats=1)
if ((runs > 0)); then limits+=(-runs="$runs"); else limits+=(-max_total_time="$seconds"); fi
cargo +nightly fuzz build -O
for target in $(cargo +nightly fuzz list); do
    mkdir -p "corpus/$target"
    # Only this run's failures count.
    rm -rf "artifacts/$target"
    echo "== fuzz target $target"
    cargo +nightly fuzz run -O "$target" "corpus/$target" "seeds/$target" -- "${limits[@]}" 2>&1 |
        grep -E '^Done|stat::number_of_executed_units|stat::average_exec_per_sec|cov: .*(DONE|INITED)|panicked|ERROR' || true
    # libFuzzer leaves a crash artifact for any failure.
    if compgen -G "artifacts/$target/*" >/dev/null; then
        echo "fuzz target $target found a failure: fuzz/artifacts/$target" >&2
        exit 1
    fi
done
