#!/usr/bin/env bash
# docs/SECURITY.md's pipelining flood, in the benchmark's box: 16 clients that
# pipeline without reading and reconnect whenever fibd hangs up on them, for
# 10 s, against the scratch image with 1 CPU and 512 MB (fibd pinned to one
# core and the flood to the other, where there are two). Before the queue-lag
# gauge, 12 such clients got fibd OOM-killed within 10 s. fibd must stay up
# and small, say that it fell behind, keep answering an ordinary client, and
# serve normally afterwards.
# shellcheck source=tests/deploy/lib.sh
. "$(dirname "$0")/lib.sh"
need_root
need_podman
if ! command -v python3 >/dev/null 2>&1; then
    skip "pipelining flood" "python3 is not installed"
    exit 0
fi

CLIENTS=16
SECONDS_FLOODED=10
# Far above the 30-100 MiB fibd peaks at here, far below the box's 512 MiB.
RESIDENT_MAX_KIB=$((256 * 1024))

image="localhost/$RUN_ID:flood"
if ! build_image "$image" "$WORK/build.log"; then
    fail "podman build --pull=never" "$(tail -n 5 "$WORK/build.log" | tr '\n' ' ')"
    exit 0
fi

port=$(free_port)
base="http://127.0.0.1:$port"
mkdir "$WORK/state"
chown 65532:65532 "$WORK/state"
name="$RUN_ID-flood"
on_exit "pm rm -f -t 0 $name"
# allowed_cpus: the CPUs this test may run on, one per line.
allowed_cpus() {
    local part
    for part in $(awk '/^Cpus_allowed_list:/ {print $2}' /proc/self/status | tr ',' ' '); do
        case $part in
            *-*) seq "${part%-*}" "${part#*-}" ;;
            *) echo "$part" ;;
        esac
    done
}
box=() flood_core=()
mapfile -t cpus < <(allowed_cpus)
if [ "${#cpus[@]}" -ge 2 ] && command -v taskset >/dev/null 2>&1; then
    box=(--cpuset-cpus "${cpus[0]}")
    flood_core=(taskset -c "${cpus[1]}")
else
    info "fibd and the flood share the CPUs: fewer than two, or no taskset"
fi
# Started from the work directory: conmon, which stays behind as the container's
# monitor, writes a file named oom into its working directory when the kernel
# kills the container's process for memory.
if ! (cd "$WORK" && pm run -d --name "$name" "${PM_RUN[@]}" "${box[@]}" --cpus 1 --memory 512m \
    --memory-swap 512m --read-only -v "$WORK/state:/var/lib/fibd" -e "FIBD_LISTEN=127.0.0.1:$port" \
    "$image" >"$WORK/run.log" 2>&1); then
    fail "fibd starts in the box" "$(tail -n 3 "$WORK/run.log" | tr '\n' ' ')"
    exit 0
fi
if ! wait_ready "$base" 20; then
    fail "fibd starts in the box" "$(pm logs "$name" 2>&1 | tail -n 3 | tr '\n' ' ')"
    exit 0
fi
pid=$(pm inspect -f '{{.State.Pid}}' "$name")

"${flood_core[@]}" python3 "$REPO/bench/pipeline_flood.py" "$port" "$CLIENTS" "$SECONDS_FLOODED" \
    >"$WORK/flood.out" 2>&1 &
flood=$!
on_exit "kill_wait $flood"
peak=0
while kill -0 "$flood" 2>/dev/null; do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    if [ -n "$rss" ] && [ "$rss" -gt "$peak" ]; then
        peak=$rss
    fi
    sleep 0.1
done
wait "$flood" || true
info "$(cat "$WORK/flood.out")"
info "fibd's peak resident memory: $((peak / 1024)) MiB"

check_eq "fibd is still running after the flood" \
    "$(pm inspect -f '{{.State.Running}} {{.State.OOMKilled}}' "$name")" "true false" || true
if [ "$peak" -gt 0 ] && [ "$peak" -le "$RESIDENT_MAX_KIB" ]; then
    pass "resident memory stayed under $((RESIDENT_MAX_KIB / 1024)) MiB ($((peak / 1024)) MiB)"
else
    fail "resident memory stayed under $((RESIDENT_MAX_KIB / 1024)) MiB" "peak $((peak / 1024)) MiB"
fi
logs=$(pm logs "$name" 2>&1 || true)
check "fibd said it fell behind" grep -q 'event=fell_behind' <<<"$logs" || true
ordinary=$(sed -n 's/.* ordinary=\([0-9]*\/[0-9]*\) .*/\1/p' "$WORK/flood.out")
answered=${ordinary%/*} asked=${ordinary#*/}
# At least half: each request is on a new connection, which a purge spares (it sends one
# small request), so all are answered in quiet runs (96 of 96), late where fibd falls far
# behind; one that reuses the port of an abandoned connection is closed unanswered.
if [ -n "$ordinary" ] && [ "$asked" -gt 0 ] && [ $((answered * 2)) -ge "$asked" ]; then
    pass "the ordinary client was answered during the flood ($ordinary)"
else
    fail "the ordinary client was answered during the flood" "${ordinary:-no result}"
fi
check "fibd serves normally afterwards" http "$base/current" || true
check "fibd_connections_purged_total counted the hang-ups" sh -c \
    "curl -fsS --max-time 5 '$base/metrics' | grep -Eq '^fibd_connections_purged_total [1-9]'" || true
