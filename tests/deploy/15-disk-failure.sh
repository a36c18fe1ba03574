#!/usr/bin/env bash
# A disk that fails, end to end: strace makes the state file's fdatasync fail (EIO) in the
# real binary, and fibd must answer the step 503, write nothing more, exit 1 for its
# supervisor, and start again from the file. Also a failure at start-up (the fdatasync of the
# state it recovered), one while a SIGTERM drains the last steps, and a disk that stalls
# (an fdatasync that does not return): it must show in /metrics and /readyz, leave reads
# answering, make a stop exit 1, and, once the disk answers, leave fibd ready again; a
# failed fsync of the state file's directory at start-up; during a stall, a client that
# does not read its refusals, which must not hold up reads; a failed fsync of a new state
# file before it is linked into place; a file system that has no hard links; and a direct
# read of the slots at start-up that fails (EIO: refused) or is not supported (EINVAL). The unit
# tests inject the same faults below the file API; this is the whole process, signals and
# exit codes included.
# shellcheck source=tests/deploy/lib.sh
. "$(dirname "$0")/lib.sh"
need_root

if ! command -v strace >/dev/null 2>&1; then
    skip "disk failures" "strace is not installed"
    exit 0
fi
if ! strace -qq -o /dev/null true 2>/dev/null; then
    skip "disk failures" "ptrace is not permitted here"
    exit 0
fi

state="$WORK/fibd.state"

# start_fibd: fibd on a free port with $state; sets $pid and $base, or fails.
start_fibd() {
    : >"$WORK/stderr"
    "$FIBD_BIN" --listen 127.0.0.1:0 --state-file "$state" 2>>"$WORK/stderr" &
    pid=$!
    on_exit "kill_wait $pid"
    wait_for 10 grep -q 'event=start' "$WORK/stderr" || return 1
    base="http://127.0.0.1:$(sed -n 's/.*event=start.* listen=[^ ]*:\([0-9][0-9]*\) .*/\1/p' "$WORK/stderr")"
}

# traced: true once every thread of $pid has a tracer, so no fdatasync escapes the injection.
traced() {
    local status
    for status in /proc/"$pid"/task/*/status; do
        grep -q '^TracerPid:[[:space:]]*0$' "$status" && return 1
    done
    return 0
}

# inject SPEC: attach strace to the running fibd (every thread) with `-e inject=SPEC`, after
# start-up, so that only the steps' fdatasyncs meet it; the trace goes to $WORK/trace.
inject() {
    strace -f -qq -p "$pid" -o "$WORK/trace" -e trace=pwrite64,fdatasync -e "inject=$1" &
    on_exit "kill_wait $!"
    wait_for 10 traced
}

# wait_exit: sets $rc to the exit status of $pid once it has exited, or to "running" if it
# is still running after 10 s. (Not a command substitution: only this shell can wait for it.)
wait_exit() {
    rc=running
    timeout 10 tail --pid="$pid" -f /dev/null 2>/dev/null || return 0
    rc=0
    wait "$pid" || rc=$?
}

# step_in_background: POST /next without waiting; its status code lands in $WORK/code
# ("000" if the connection ends without an answer).
step_in_background() {
    rm -f "$WORK/code"
    curl -s -o /dev/null -w '%{http_code}' -X POST "$base/next" >"$WORK/code" &
    on_exit "kill_wait $!"
}

# in_flight_over SECONDS: the commit in progress has run longer than SECONDS.
in_flight_over() {
    curl -s "$base/metrics" |
        awk -v s="$1" '$1 == "fibd_commit_in_flight_seconds" && $2 > s { ok = 1 } END { exit !ok }'
}

# 1. A step whose fdatasync fails.
start_fibd || { fail "fibd starts" "$(tail -n 3 "$WORK/stderr" | tr '\n' ' ')"; exit 0; }
check_eq "a step before the failure" "$(curl -s -X POST "$base/next")" "1" || true
inject fdatasync:error=EIO || { fail "strace attaches"; exit 0; }
code=$(curl -s -o "$WORK/body" -w '%{http_code}' -X POST "$base/next" || true)
check_eq "the step whose fdatasync failed is answered 503" "$code" "503" || true
wait_exit
check_eq "fibd exits 1, for its supervisor to restart it" "$rc" "1" || true
kill_wait "$pid" # should it still run, the restart below would find the file locked
check "the log names the operation and the file" \
    grep -q "event=storage_failed error=\"cannot fdatasync state file $state: " "$WORK/stderr" || true
check "its last line is an error, exit=1" \
    sh -c "tail -n 1 '$WORK/stderr' | grep -q 'level=error event=stopped .* exit=1\$'" || true
# After the failed fdatasync, nothing is written or synced again: no blind retry.
check_eq "no write or fdatasync after the failed one" \
    "$(sed -n '/fdatasync.*INJECTED/,$p' "$WORK/trace" | grep -c -E 'pwrite64|fdatasync')" "1" || true
start_fibd || { fail "fibd starts again" "$(tail -n 3 "$WORK/stderr" | tr '\n' ' ')"; exit 0; }
# The failed step's write reached the page cache (strace skips only the fdatasync itself,
# so the page stays dirty), and the restart may find it there. It was never acknowledged, so
# index 1 and index 2 are both right. (Whether the restart made it durable first is for the
# unit tests on the simulated disk: nothing here can tell.)
index=$(curl -s -H 'Accept: application/json' "$base/current" | sed -n 's/.*"index":\([0-9]*\).*/\1/p')
case $index in
    1 | 2) pass "restarted from the file at index $index (1 acknowledged, 2 not)" ;;
    *) fail "restarted from the file" "index '$index'" ;;
esac
check_eq "steps work again after the restart" "$(curl -s -o /dev/null -w '%{http_code}' -X POST "$base/next")" "200" || true
kill_wait "$pid"

# 2. The fdatasync of start-up, which makes the recovered state durable before serving.
before=$(od -An -tx1 "$state" | md5sum)
strace -f -qq -o /dev/null -e trace=fdatasync -e inject=fdatasync:error=EIO:when=1 \
    "$FIBD_BIN" --listen 127.0.0.1:0 --state-file "$state" 2>"$WORK/stderr" &
pid=$!
# Here $pid is strace's; killing it would leave fibd running, detached: kill fibd first.
on_exit "is_child $pid && pkill -9 -P $pid; kill_wait $pid"
wait_exit
if is_child "$pid"; then pkill -9 -P "$pid" 2>/dev/null || true; fi
check_eq "a failed start-up fdatasync exits 1" "$rc" "1" || true
check "it is logged as an unusable state file, naming the operation" \
    grep -q "event=state_file_unusable error=\"cannot fdatasync state file $state: " "$WORK/stderr" || true
check "no event=start: nothing was served" sh -c "! grep -q 'event=start' '$WORK/stderr'" || true
check_eq "the file is as it was" "$(od -An -tx1 "$state" | md5sum)" "$before" || true

# 3. A failure while SIGTERM drains the last steps still exits 1 (not 0), however many
# signals came first (an impatient operator, or a supervisor repeating its stop).
start_fibd || { fail "fibd starts" "$(tail -n 3 "$WORK/stderr" | tr '\n' ' ')"; exit 0; }
# The fdatasync fails 1 s in: after the last of the signals below (a few tenths of a second
# in), and inside the grace period the first of them starts (1.5 s).
inject fdatasync:error=EIO:delay_enter=1000000 || { fail "strace attaches"; exit 0; }
step_in_background
# The step is in its (delayed) commit when the signals arrive: once stopping, fibd takes no
# new requests, so a step still on its way would never meet the failure.
check "the step's commit has begun" wait_for 5 in_flight_over 0 || true
for _ in $(seq 20); do
    kill -TERM "$pid" 2>/dev/null || true
    sleep 0.01
done
wait_exit
check_eq "a commit failing during shutdown exits 1" "$rc" "1" || true
check "and says so in the log" grep -q "event=failed_while_stopping reason=storage_failed" "$WORK/stderr" || true
check "its last line is an error, exit=1" \
    sh -c "tail -n 1 '$WORK/stderr' | grep -q 'level=error event=stopped .* exit=1\$'" || true
wait_for 5 test -s "$WORK/code" || true
check_eq "the step in flight is answered 503" "$(cat "$WORK/code")" "503" || true

# 4. A disk that stalls: the fdatasync of a step does not return (strace holds it for 8 s).
# The stall shows in /metrics while reads go on. A SIGTERM logs it as an error once the
# grace period (1.5 s) is over, and the process then exits 1, not 0, as soon as the call
# returns (no process can end while a thread of it is stuck in such a call). The step in
# the stalled commit is never acknowledged.
kill_wait "$pid"
start_fibd || { fail "fibd starts" "$(tail -n 3 "$WORK/stderr" | tr '\n' ' ')"; exit 0; }
before=$(curl -s "$base/current")
inject fdatasync:delay_enter=8000000 || { fail "strace attaches"; exit 0; }
step_in_background
check "a stalled commit shows in fibd_commit_in_flight_seconds" wait_for 3 in_flight_over 0.2 || true
# not_ready_stalled: /readyz answers 503 and names the stalled disk.
not_ready_stalled() {
    [ "$(curl -s -o "$WORK/ready" -w '%{http_code}' --max-time 2 "$base/readyz")" = 503 ] &&
        grep -q 'stalled disk' "$WORK/ready"
}
check "/readyz turns 503, naming the stalled disk, once the commit has run 1 s" \
    wait_for 3 not_ready_stalled || true
check_eq "/healthz stays 200: the process is alive, a restart would not help" \
    "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$base/healthz")" "200" || true
check_eq "reads are answered while the disk stalls" "$(curl -s --max-time 2 "$base/current")" "$before" || true
# A step sent now would wait behind the stalled commit for as long as the disk does.
code=$(curl -s -D "$WORK/headers" -o "$WORK/body" -w '%{http_code}' --max-time 2 -H 'Accept: application/json' -X POST "$base/next" || true)
check_eq "a step sent during the stall is refused at once, 503" "$code" "503" || true
check "as disk_stalled, with Retry-After" sh -c \
    "grep -q '\"error\":\"disk_stalled\"' '$WORK/body' && grep -qi '^retry-after: 1' '$WORK/headers'" || true
kill -TERM "$pid"
check "the stall is logged as an error when the grace period ends" \
    wait_for 3 grep -q 'level=error event=stopped .*the disk is stalled' "$WORK/stderr" || true
wait_exit
check_eq "a stop with a commit stalled exits 1" "$rc" "1" || true
wait_for 5 test -s "$WORK/code" || true
check_eq "the step in the stalled commit is not acknowledged" "$(cat "$WORK/code")" "000" || true

# 5. A stall that ends (the first fdatasync after attaching takes 4 s): /readyz is 503 while
# it lasts (from 1 s in) and 200 again once the disk answers, and the step that waited for it
# is acknowledged.
kill_wait "$pid"
start_fibd || { fail "fibd starts" "$(tail -n 3 "$WORK/stderr" | tr '\n' ' ')"; exit 0; }
before=$(curl -s -H 'Accept: application/json' "$base/current" | sed -n 's/.*"index":\([0-9]*\).*/\1/p')
inject fdatasync:delay_enter=4000000:when=1 || { fail "strace attaches"; exit 0; }
step_in_background
check "/readyz turns 503 during a 4 s stall" wait_for 5 not_ready_stalled || true
ready_again() {
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$base/readyz")" = 200 ]
}
check "/readyz is 200 again once the disk answers" wait_for 8 ready_again || true
wait_for 5 test -s "$WORK/code" || true
check_eq "the step that waited out the stall is acknowledged" "$(cat "$WORK/code")" "200" || true
after=$(curl -s -H 'Accept: application/json' "$base/current" | sed -n 's/.*"index":\([0-9]*\).*/\1/p')
check_eq "and the cursor moved by one" "$after" "$((before + 1))" || true
kill_wait "$pid"

# 6. Start-up makes the state file's name durable with an fsync of its directory (on an
# existing file the only fsync fibd makes: its commits use fdatasync). If that fails, fibd
# must not serve: steps acknowledged later could live in a file a power cut unlinks. (A
# timeout, so that a fibd that skipped the fsync and served fails the check, not the run.)
rc=0
timeout 10 strace -f -qq -y -o "$WORK/trace-start" -e trace=fsync -e inject=fsync:error=EIO \
    "$FIBD_BIN" --listen 127.0.0.1:0 --state-file "$state" 2>"$WORK/stderr-start" || rc=$?
check_eq "a failed fsync of the state file's directory at start-up exits 1" "$rc" "1" || true
check "it says which operation on which file failed" \
    grep -q "event=state_file_unusable .*fsync directory of state file.*$state" "$WORK/stderr-start" || true
check "the fsync that failed was the directory's" grep -q "^[0-9]* *fsync([0-9]*<$WORK>) = -1 EIO" "$WORK/trace-start" || true

# 7. During a stall, a client that steps and reads none of the refusals, until one cannot be
# written, holds up one worker: the acceptor, which refuses the steps, hands the writes on to
# the workers, and reads go on. (Written by the acceptor itself, every request would wait
# behind the stuck one until the hang-up, 1.5 s on.)
start_fibd || { fail "fibd starts" "$(tail -n 3 "$WORK/stderr" | tr '\n' ' ')"; exit 0; }
inject fdatasync:delay_enter=30000000 || { fail "strace attaches"; exit 0; }
step_in_background
# Once the commit has run 1 s, steps are refused at once rather than queued behind it.
check "the disk stalls" wait_for 3 not_ready_stalled || true
# refused: steps refused so far.
refused() {
    curl -s "$base/metrics" |
        awk '$1 == "fibd_requests_total{route=\"/next\",code=\"503\"}" { n = $2 } END { print n + 0 }'
}
# Each read's start and end, in microseconds.
(
    while :; do
        began=$(now_us)
        curl -s -o /dev/null --max-time 10 "$base/current"
        echo "$began $(now_us)"
        sleep 0.05
    done
) >"$WORK/reads" &
prober=$!
on_exit "kill_wait $prober"
exec 7<>"/dev/tcp/127.0.0.1/${base##*:}"
# Half the pipelining bound at a time, each once the last is refused: never abandoned for
# pipelining, so the buffers fill until a refusal cannot be written.
window=$(for _ in $(seq 64); do printf 'POST /next HTTP/1.1\r\nHost: t\r\n\r\n'; done)
# Stuck: no refusal written for a second while some are due.
# (The deadline is generous: every request passes a strace that stops each system call, and
# the buffers take thousands of refusals to fill.)
sent=$(refused) seen=-1 moved_us=$(now_us) stuck=no deadline=$((SECONDS + 60))
while [ "$stuck" = no ] && [ "$SECONDS" -lt "$deadline" ]; do
    done_now=$(refused)
    if [ "$done_now" != "$seen" ]; then
        seen=$done_now moved_us=$(now_us)
    elif [ $(($(now_us) - moved_us)) -ge 1000000 ]; then
        stuck=yes
    fi
    if [ "$done_now" -ge "$sent" ]; then
        # (The command substitution above dropped the last request's final newline.)
        printf '%s\n' "$window" >&7
        sent=$((sent + 64))
    fi
    sleep 0.01
done
check_eq "a refusal to the client that does not read gets stuck" "$stuck" yes || true
# Past the send timeout, by when the stuck write has been given up on.
sleep 2
kill_wait "$prober"
exec 7>&-
# Reads begun and answered while the refusal was stuck (from just after the last one written
# until the hang-up 1.5 s on, less a margin): written by the acceptor itself, the refusal
# would hold every later request until then, and none would fit.
inside=$(awk -v from="$moved_us" -v until=$((moved_us + 1400000)) \
    '$1 >= from && $2 <= until { n++ } END { print n + 0 }' "$WORK/reads")
check "reads went on meanwhile ($inside answered inside the first 1.4 s of the stuck write)" \
    test "$inside" -ge 3 || true
kill_wait "$pid"

# 8. A new state file is written under a temporary name and fsynced before it is linked into
# place, so that a power cut never leaves the name on an empty or half-written file (fibd
# would refuse it). So the first fsync of a first start is the temporary file's, and when it
# fails, fibd exits 1 leaving neither the state file nor the temporary one.
fresh="$WORK/fresh"
mkdir -p "$fresh"
rc=0
timeout 10 strace -f -qq -y -o "$WORK/trace-create" -e trace=fsync,linkat \
    -e inject=fsync:error=EIO:when=1 \
    "$FIBD_BIN" --listen 127.0.0.1:0 --state-file "$fresh/fibd.state" 2>"$WORK/stderr-create" || rc=$?
check_eq "a failed fsync of a new state file exits 1" "$rc" "1" || true
check "the fsync that failed was the new file's, under its temporary name" \
    grep -q "^[0-9]* *fsync([0-9]*<$fresh/fibd\.state\.new\.[0-9.]*>) = -1 EIO" "$WORK/trace-create" || true
check_eq "nothing was linked, and nothing is left in the directory" \
    "$(grep -c linkat "$WORK/trace-create")/$(ls -A "$fresh")" "0/" || true

# 9. A file system without hard links (vfat, some CIFS mounts) refuses the link that puts a
# new state file in place, with EPERM: fibd must say so, exit 1 and leave nothing behind.
nolinks="$WORK/nolinks"
mkdir -p "$nolinks"
rc=0
timeout 10 strace -f -qq -o /dev/null -e trace=link,linkat -e inject=link,linkat:error=EPERM \
    "$FIBD_BIN" --listen 127.0.0.1:0 --state-file "$nolinks/fibd.state" 2>"$WORK/stderr-nolinks" || rc=$?
check_eq "a refused hard link of a new state file exits 1" "$rc" "1" || true
check "it is logged as the state file's creation failing" \
    grep -q "event=state_file_unusable error=\"cannot create state file $nolinks/fibd.state: Operation not permitted" "$WORK/stderr-nolinks" || true
check_eq "and nothing is left in the directory" "$(ls -A "$nolinks")" "" || true

# 10. Start-up reads the slots past the page cache (O_DIRECT), since the cache may hold a slot
# whose fdatasync failed. When the disk fails that very read (EIO), fibd must not fall back to
# the cache's copy and commit over the disk's: it exits 1 and touches nothing. A file system
# that takes the flag but not the read (EINVAL) is not a failing disk: fibd starts from the
# cache's copy, as where the flag is refused outright.
before=$(od -An -tx1 "$state" | md5sum)
if ! dd if="$state" of=/dev/null bs=8192 count=1 iflag=direct 2>/dev/null; then
    skip "a failed direct read at start-up" "$WORK's file system refuses O_DIRECT, so there is no such read"
else
    rc=0
    timeout 10 strace -f -qq -y -o "$WORK/trace-direct" -e trace=pread64 -e inject=pread64:error=EIO \
        "$FIBD_BIN" --listen 127.0.0.1:0 --state-file "$state" 2>"$WORK/stderr-direct" || rc=$?
    check "start-up read the state file past the page cache" \
        grep -q "pread64([0-9]*<$state>.* = -1 EIO" "$WORK/trace-direct" || true
    check_eq "a failed direct read at start-up exits 1" "$rc" "1" || true
    check "it says which operation on which file failed" \
        grep -q "event=state_file_unusable error=\"cannot read state file $state: .*(os error 5)" "$WORK/stderr-direct" || true
    check "no event=start: nothing was served" sh -c "! grep -q 'event=start' '$WORK/stderr-direct'" || true
    check_eq "the file is as it was" "$(od -An -tx1 "$state" | md5sum)" "$before" || true

    strace -f -qq -o /dev/null -e trace=pread64 -e inject=pread64:error=EINVAL \
        "$FIBD_BIN" --listen 127.0.0.1:0 --state-file "$state" 2>"$WORK/stderr-einval" &
    pid=$!
    # Here $pid is strace's, which exits with fibd's status; fibd is its child.
    on_exit "is_child $pid && pkill -9 -P $pid; kill_wait $pid"
    check "a direct read refused with EINVAL: fibd starts from the cache's copy" \
        wait_for 10 grep -q 'event=start' "$WORK/stderr-einval" || true
    pkill -TERM -P "$pid" 2>/dev/null || true
    wait_exit
    check_eq "and stops cleanly" "$rc" "0" || true
fi
