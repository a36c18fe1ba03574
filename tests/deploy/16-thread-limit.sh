#!/usr/bin/env bash
# Running out of threads, end to end: tiny_http spends a thread per connection, so a flood
# of idle connections reaches a task limit (systemd's TasksMax, RLIMIT_NPROC, a container's
# pids limit) before or beside the descriptor limit. fibd must survive it as it survives
# running out of descriptors: shed what waits, keep trying to start an accept loop, and
# serve again once the flood is gone. It must never abort; a supervisor that restarts it on
# every flood would be a denial of service.
#
# RLIMIT_NPROC is not enforced for root, so fibd runs here as an unprivileged uid, with the
# limit a few threads above what it starts with.
# shellcheck source=tests/deploy/lib.sh
. "$(dirname "$0")/lib.sh"
need_root

for tool in setpriv prlimit; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        fail "thread limit" "$tool (util-linux) is not installed"
        exit 0
    fi
done

uid=64999 # no account needed: setpriv takes numbers
chmod 0711 "$WORK"
install -d -o "$uid" -g "$uid" -m 0700 "$WORK/state"

# start_fibd [NPROC]: fibd as $uid on a free port, under the task limit NPROC if given;
# sets $pid and $base, or fails.
start_fibd() {
    local limit=()
    [ $# = 0 ] || limit=(prlimit "--nproc=$1" --)
    : >"$WORK/stderr"
    setpriv --reuid="$uid" --regid="$uid" --clear-groups "${limit[@]}" \
        "$FIBD_BIN" --listen 127.0.0.1:0 --state-file "$WORK/state/fibd.state" \
        --workers 2 --idle-timeout-ms 3000 2>>"$WORK/stderr" &
    pid=$!
    on_exit "kill_wait $pid"
    wait_for 10 grep -q 'event=start' "$WORK/stderr" || return 1
    base="http://127.0.0.1:$(sed -n 's/.*event=start.* listen=[^ ]*:\([0-9][0-9]*\) .*/\1/p' "$WORK/stderr")"
}

# The threads fibd starts with, tiny_http's included (the watchdog's first probe has come
# and gone after a second).
start_fibd || { fail "fibd starts" "$(tail -n 3 "$WORK/stderr" | tr '\n' ' ')"; exit 0; }
sleep 1
threads=$(find "/proc/$pid/task" -mindepth 1 -maxdepth 1 | wc -l)
kill_wait "$pid"
info "fibd starts with $threads threads"

# flood N: opens N idle connections (fewer if the kernel refuses), on descriptors in $fds.
flood() {
    fds=()
    for _ in $(seq "$1"); do
        exec {fd}<>"/dev/tcp/127.0.0.1/$port" || break
        fds+=("$fd")
    done
}
unflood() {
    for fd in "${fds[@]}"; do exec {fd}>&-; done
}
served() { [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$base/current")" = 200 ]; }

# 1. Eight threads to spare, and a flood that stays: it takes them all, tiny_http's accept
# thread dies failing to spawn a connection thread, and fibd's restarts of the loop find no
# thread either. fibd must shed, retry and stay up (it aborted here before).
start_fibd $((threads + 8)) || { fail "fibd starts under a task limit" "$(tail -n 3 "$WORK/stderr" | tr '\n' ' ')"; exit 0; }
port=${base##*:}
flood 30
held=("${fds[@]}")
# More keep coming, so that whatever thread frees up is taken again before the next restart.
for _ in $(seq 20); do
    flood 5
    held+=("${fds[@]}")
    sleep 0.1
done
fds=("${held[@]}")
check "fibd stays up through a flood past its task limit" kill -0 "$pid" || true
check "tiny_http's accept thread ran out of threads, and the loop was retired" \
    grep -q 'event=accept_failed error="tiny_http.s accept thread panicked: file descriptors or threads ran out"' "$WORK/stderr" || true
check "restarting the accept loop failed for want of a thread, and was retried" \
    grep -q 'event=accept_restart_failed error="tiny_http could not start: failed to spawn thread' "$WORK/stderr" || true
check "the connections waiting meanwhile were shed, not left hanging" \
    grep -q 'event=connections_shed' "$WORK/stderr" || true
check_eq "no panic: running out of threads is not a broken invariant" \
    "$(grep -c 'event=panic' "$WORK/stderr" || true)" "0" || true
unflood
kill_wait "$pid"

# 2. Recovery: with a few dozen threads to spare, as fibd needs beside its connections, it
# serves again once each flood is gone, however many come. (Its pool threads linger for
# seconds after their connections end, so with only a handful to spare a restart can keep
# failing until the watchdog's restart.)
start_fibd $((threads + 16)) || { fail "fibd starts under a task limit" "$(tail -n 3 "$WORK/stderr" | tr '\n' ' ')"; exit 0; }
port=${base##*:}
rounds=3
for round in $(seq "$rounds"); do
    flood 40
    sleep 0.5
    kill -0 "$pid" 2>/dev/null || break
    unflood
    wait_for 10 served || break
    info "round $round: flood of ${#fds[@]} connections survived"
done
check "fibd survives $rounds floods past its task limit" kill -0 "$pid" || true
check "the floods did reach the limit" grep -q 'event=accept_failed' "$WORK/stderr" || true
check "serves again once the flood is gone" served || true
check_eq "and the cursor still steps" "$(curl -s -X POST --max-time 2 "$base/next")" "1" || true
# What an operator's alerts read (FibdThreadsNearLimit, FibdRefusingConnections).
metrics=$(curl -s --max-time 2 "$base/metrics")
check_eq "fibd_threads_max shows the task limit" \
    "$(echo "$metrics" | sed -n 's/^fibd_threads_max //p')" "$((threads + 16))" || true
check "fibd_accept_failures_total counts the failed accept loops" \
    test "$(echo "$metrics" | sed -n 's/^fibd_accept_failures_total //p')" -gt 0 || true
check_eq "no panic" "$(grep -c 'event=panic' "$WORK/stderr" || true)" "0" || true
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
check_eq "stops with exit 0" "$rc" "0" || true
