#!/usr/bin/env bash
# tiny_http's accept thread, stalled or idle, with strace holding fibd's system calls.
#
# 1. A shutdown while the accept thread is stalled and the listen queue is full. As
# tiny_http's Server is dropped, it connects to its own address to wake its accept thread;
# with the queue full that connect waits through SYN retries. fibd must not wait for it: its
# stop must still be clean (level=info, no "grace period over" note) and prompt. strace
# stalls the accept thread (a delay before each accept4); python3 fills the queue with
# connections that are never accepted.
#
# 2. An accept that times out. The listening socket's receive timeout (the idle timeout its
# connections inherit) also ends an accept that waits that long; fibd's own probes keep that
# from happening, unless fibd does not run. strace holds every connect of fibd's for 1 s, so
# no probe arrives: tiny_http's accept loop ends on the timeout, and fibd must restart it,
# log it as event=accept_idled and not count it as a failure to accept (whose alert says
# descriptors or threads ran out).
# shellcheck source=tests/deploy/lib.sh
. "$(dirname "$0")/lib.sh"
need_root # strace attaches to a running fibd, which Yama's ptrace_scope refuses to others

if ! command -v strace >/dev/null 2>&1 || ! command -v python3 >/dev/null 2>&1; then
    skip "the accept thread stalled" "strace or python3 is not installed"
    exit 0
fi
if ! strace -qq -o /dev/null true 2>/dev/null; then
    skip "the accept thread stalled" "ptrace is not permitted here"
    exit 0
fi
if [ "$(uname -m)" != x86_64 ]; then
    skip "the accept thread stalled" "the accept4 system call number below is x86_64's"
    exit 0
fi

start_bare || exit 0

# The accept thread is the one thread blocked in accept4 (system call 288 on x86_64); it
# is briefly out of it whenever the nudger or the watchdog connects, so look again if need be.
# find_accepting: sets $accepting to the threads of fibd in accept4; true if there is one.
find_accepting() {
    accepting=()
    local task nr
    for task in /proc/"$pid"/task/*; do
        read -r nr _ <"$task/syscall" 2>/dev/null || continue
        [ "$nr" = 288 ] && accepting+=("${task##*/}")
    done
    [ "${#accepting[@]}" = 1 ]
}
for _ in $(seq 50); do find_accepting && break; sleep 0.1; done
check_eq "one thread of fibd waits in accept4" "${#accepting[@]}" "1" || exit 0
tid=${accepting[0]}

# Every accept4 of that thread, from its next one on, waits 6 s first: the stall.
strace -qq -p "$tid" -o /dev/null -e trace=accept4 -e inject=accept4:delay_enter=6000000 &
on_exit "kill_wait $!"
wait_for 10 grep -Eq 'TracerPid:[[:space:]]*[1-9]' "/proc/$pid/task/$tid/status" || true
# One connection, so that the thread enters a stalled accept4 even if the attach did not
# restart the one it was in. (Opened and closed; its answer is not awaited.)
(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || true

python3 - "$port" <<'PY' &
import socket, sys, time
port = int(sys.argv[1])
held = []
for _ in range(1300):  # more than fibd's listen backlog of 1024
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    held.append(s)
time.sleep(20)
PY
on_exit "kill_wait $!"
# queued: how many connections wait in the listen queue.
queued() { ss -Hltn "sport = :$port" | awk '{ print $2 }'; }
queue_full() { [ "$(queued)" -ge 1024 ]; }
wait_for 10 queue_full || true
check "the listen queue is full ($(queued) waiting)" queue_full || true

kill -TERM "$pid"
wait_for 5 grep -q 'event=stopped' "$WORK/stderr" || true
stopped=$(grep 'event=stopped' "$WORK/stderr" || true)
info "$stopped"
check "the stop is clean: info, no grace-period note, exit 0" \
    sh -c "printf '%s\n' '$stopped' | grep -q 'level=info event=stopped index=[0-9]* exit=0\$'" || true
shutdown_ms=$(sed -n 's/^ts=[^ ]*T\([0-9:]*\)\.\([0-9]*\)Z.*event=shutdown.*/\1.\2/p' "$WORK/stderr")
stopped_ms=$(sed -n 's/^ts=[^ ]*T\([0-9:]*\)\.\([0-9]*\)Z.*event=stopped.*/\1.\2/p' "$WORK/stderr")
info "shutdown at $shutdown_ms, stopped at $stopped_ms (UTC)"
# The process itself ends once strace lets the stalled thread go (up to 6 s): the kernel
# finishes a traced thread's exit only when its tracer resumes it.
rc=0
wait "$pid" || rc=$?
check_eq "fibd exits 0" "$rc" "0" || true

# 2. Every connect of fibd's (the watchdog's probes, the nudger's) held for 1 s, for 3 s.
"$FIBD_BIN" --listen 127.0.0.1:0 --state-file "$WORK/idle.state" --idle-timeout-ms 300 \
    2>"$WORK/stderr-idle" &
pid=$!
on_exit "kill_wait $pid"
wait_for 10 grep -q 'event=start' "$WORK/stderr-idle" || true
port=$(sed -n 's/.*event=start.* listen=[^ ]*:\([0-9][0-9]*\) .*/\1/p' "$WORK/stderr-idle")
timeout 3 strace -f -qq -p "$pid" -o /dev/null -e trace=connect \
    -e inject=connect:delay_enter=1000000 || true
check "the accept loop ended on its timeout, and this was logged as accept_idled" \
    grep -q 'level=warn event=accept_idled ' "$WORK/stderr-idle" || true
info "$(grep -c event=accept_idled "$WORK/stderr-idle") accept_idled lines in 3 s"
check_eq "fibd serves on" "$(http "http://127.0.0.1:$port/current" || true)" "0" || true
check_eq "no failure to accept was logged or counted" \
    "$(grep -c event=accept_failed "$WORK/stderr-idle")/$(http "http://127.0.0.1:$port/metrics" | sed -n 's/^fibd_accept_failures_total //p')" \
    "0/0" || true
rc=0
kill -TERM "$pid"
wait "$pid" || rc=$?
check_eq "and stops cleanly (exit 0)" "$rc" "0" || true
