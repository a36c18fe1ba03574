#!/usr/bin/env bash
# Runs every test of fibd: formatting, lints, unit and integration tests, the Prometheus
# checks, the benchmark report's tests, and the deployment tests. Installs what it needs
# (Rust components, Debian packages).
#
#   scripts/test.sh           everything (what CI runs)
#   scripts/test.sh --quick   only fmt, clippy and cargo test: the inner loop while coding
#   scripts/test.sh --long    everything, plus a crash-torture soak (FIBD_TORTURE_CYCLES,
#                             default 5000) and fuzzing (FIBD_FUZZ_SECONDS per target, 300)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
long=0
case "${1:-}" in
    --quick) quick=1 ;;
    --long) long=1 ;;
    "") ;;
    *) echo "usage: scripts/test.sh [--quick|--long]" >&2; exit 2 ;;
esac

step() { printf '\n==> %s\n' "$*"; }
started=$SECONDS

if command -v rustup >/dev/null 2>&1; then
    installed=$(rustup component list --installed 2>/dev/null || true)
    for component in rustfmt clippy; do
        grep -q "^$component" <<<"$installed" || rustup component add "$component"
    done
fi

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets --quiet -- -D warnings

step "cargo test"
# --no-fail-fast: one failing test binary must not hide what the others would report.
trap 'rm -f /tmp/fibd-cargo-test.$$' EXIT
cargo test --locked --no-fail-fast 2>&1 | tee /tmp/fibd-cargo-test.$$ | grep -Ev '^test .* \.\.\. ok$'
summary=$(grep -E '^test result:' /tmp/fibd-cargo-test.$$ | awk '{p += $4; f += $6} END {print p+0, f+0}')
rm -f /tmp/fibd-cargo-test.$$
read -r rust_passed rust_failed <<<"$summary"

if [ "$quick" -eq 1 ]; then
    echo
    echo "quick run: $rust_passed passed, $rust_failed failed ($((SECONDS - started)) s)"
    exit 0
fi

step "Prometheus: metrics format and alerting rules"
scripts/test-prometheus.sh

step "Kubernetes manifest schema"
tests/deploy/k8s_validate.sh

step "Benchmark report: bench/report.py on a recorded run"
python3 bench/test_report.py

step "Deployment: static binary, container, systemd, OpenRC, install.sh, smoke.sh"
scripts/test-deploy.sh

if [ "$long" -eq 1 ]; then
    step "Soak: crash torture"
    FIBD_TORTURE_CYCLES=${FIBD_TORTURE_CYCLES:-5000} cargo test --locked --release --test torture -- --nocapture
    step "Fuzzing"
    scripts/fuzz.sh "${FIBD_FUZZ_SECONDS:-300}"
fi

echo
echo "all tests passed in $((SECONDS - started)) s"
