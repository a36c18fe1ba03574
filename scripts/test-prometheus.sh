#!/usr/bin/env bash
# Checks fibd's Prometheus surface with Prometheus's own tool: a live /metrics scrape must
# pass `promtool check metrics`, and the alerting rules must pass `promtool check rules` and
# their unit tests. Installs promtool (Debian's prometheus package) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/children.sh
. scripts/children.sh

passed=0
failed=0
check() {
    local name=$1
    shift
    if "$@"; then
        echo "PASS $name"
        passed=$((passed + 1))
    else
        echo "FAIL $name"
        failed=$((failed + 1))
    fi
}

if ! command -v promtool >/dev/null 2>&1; then
    echo "installing promtool (Debian package prometheus)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    # The package's service is not wanted, only its promtool; without systemd as PID 1
    # nothing is started anyway.
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

bin=${FIBD_BIN:-target/debug/fibd}
[ -x "$bin" ] || cargo build --locked --quiet
work=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && is_child "$pid" && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# fibd reports its thread limit (fibd_threads_max, which an alert reads) when one binds it.
# RLIMIT_NPROC does not bind root, so as root fibd runs as an unprivileged user, from a copy
# of the binary that user can reach; either way under an RLIMIT_NPROC of its own.
threads_max=4096
cp "$bin" "$work/fibd"
run_as=()
if [ "$(id -u)" = 0 ]; then
    chmod 0777 "$work"
    run_as=(setpriv --reuid=64999 --regid=64999 --clear-groups)
fi
"${run_as[@]}" prlimit --nproc="$threads_max" -- "$work/fibd" --listen 127.0.0.1:0 \
    --state-file "$work/fibd.state" 2>"$work/log" &
pid=$!
for _ in $(seq 100); do
    grep -q 'event=start' "$work/log" 2>/dev/null && break
    sleep 0.05
done
addr=$(sed -n 's/.*event=start.* listen=\([^ ]*\).*/\1/p' "$work/log")
[ -n "$addr" ] || { cat "$work/log"; echo "FAIL fibd did not start"; exit 1; }

# Traffic that touches every family: steps, reads, each error status.
for path in next next previous current fib/10 fib/x fib/999 nowhere 'fib?n=3'; do
    curl -s -o /dev/null "http://$addr/$path"
done
curl -s -o /dev/null -X DELETE "http://$addr/next"
curl -s "http://$addr/metrics" >"$work/metrics.txt"

check "promtool check metrics (live scrape)" promtool check metrics <"$work/metrics.txt"
check "metrics scrape has requests by route" grep -q 'fibd_requests_total{route="/next",code="200"} 2' "$work/metrics.txt"
thread_limit_seen() {
    local seen
    seen=$(sed -n 's/^fibd_threads_max //p' "$work/metrics.txt")
    if [ -n "$seen" ] && [ "$seen" -gt 0 ] && [ "$seen" -le "$threads_max" ]; then
        return 0
    fi
    echo "  fibd_threads_max is '$seen', want 1..$threads_max"
    return 1
}
check "fibd_threads_max reports the RLIMIT_NPROC it runs under (or a tighter cgroup's)" thread_limit_seen
check "promtool check rules" promtool check rules deploy/prometheus/alerts.yml
check "promtool test rules" promtool test rules deploy/prometheus/alerts_test.yml

# Every alert has a unit test, links its runbook entry, and the entry exists (an anchor the
# link lands on): an on-call reader must never follow a page to nothing.
alerts_documented() {
    local name anchor rc=0 seen=0
    while read -r name; do
        seen=$((seen + 1))
        anchor=$(tr '[:upper:]' '[:lower:]' <<<"$name")
        grep -q "alertname: $name\$" deploy/prometheus/alerts_test.yml ||
            { echo "  $name: no test in alerts_test.yml"; rc=1; }
        grep -q "RUNBOOK.md#$anchor\." deploy/prometheus/alerts.yml ||
            { echo "  $name: no link to RUNBOOK.md#$anchor"; rc=1; }
        grep -q "id=\"$anchor\"" docs/RUNBOOK.md ||
            { echo "  $name: docs/RUNBOOK.md has no entry with id=\"$anchor\""; rc=1; }
    done < <(sed -n 's/^ *- alert: //p' deploy/prometheus/alerts.yml)
    [ "$seen" -gt 0 ] || { echo "  no alerts found in alerts.yml"; rc=1; }
    return "$rc"
}
check "every alert is tested and has a runbook entry" alerts_documented

# Every fibd or process metric an alert reads is one fibd exports: a rule on a misspelt or
# removed metric would never fire, and promtool cannot tell.
alert_metrics_exported() {
    local metric rc=0 seen=0
    while read -r metric; do
        seen=$((seen + 1))
        grep -q -E "^${metric}[ {]" "$work/metrics.txt" ||
            { echo "  $metric: read by alerts.yml, absent from /metrics"; rc=1; }
    done < <(grep -o -E '\b(fibd|process)_[a-z0-9_]+' deploy/prometheus/alerts.yml | sort -u)
    [ "$seen" -gt 0 ] || { echo "  no metric names found in alerts.yml"; rc=1; }
    return "$rc"
}
check "every metric the alerts read is exported" alert_metrics_exported

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
