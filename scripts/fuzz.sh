#!/usr/bin/env bash
# Fuzzes request routing and state recovery with cargo-fuzz (libFuzzer, nightly toolchain),
# each target for a bounded time. A crash leaves its input in fuzz/artifacts/TARGET/; copy it
# into fuzz/regressions/TARGET/ so tests/fuzz_regressions.rs keeps it fixed.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]    (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

for target in route_request recover_state; do
    corpus=$(mktemp -d)
    # Start from the regression inputs, so the fuzzer begins where past findings left off.
    cp fuzz/regressions/"$target"/* "$corpus"/ 2>/dev/null || true
    echo "==> fuzzing $target for ${seconds}s"
    status=0
    cargo +nightly fuzz run "$target" "$corpus" -- -max_total_time="$seconds" -max_len=4096 \
        >"$corpus.log" 2>&1 || status=$?
    grep -E '(DONE|Done|SUMMARY|artifact|panicked)' "$corpus.log" || tail -5 "$corpus.log"
    rm -rf "$corpus" "$corpus.log"
    if [ "$status" -ne 0 ]; then
        echo "FAIL fuzz $target (see fuzz/artifacts/$target/)"
        exit 1
    fi
    echo "PASS fuzz $target"
done
