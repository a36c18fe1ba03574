#!/usr/bin/env bash
# Clients that reset their connections before fibd takes them. tiny_http panics
# on each such connection's thread (it unwraps the peer address, which a reset
# socket no longer has); fibd survives that, counts every panic in
# fibd_tiny_http_panics_total, and logs them at most 10 lines a second, the
# first line after a held-back spell saying how many it held back. A client
# must not be able to fill the log, or journald's rate limit, at its own pace.
# The resets need SO_LINGER 0, which std cannot set: the client is python3.
# shellcheck source=tests/deploy/lib.sh
. "$(dirname "$0")/lib.sh"

if ! command -v python3 >/dev/null 2>&1; then
    skip "client resets" "python3 is not installed"
    exit 0
fi

start_bare || exit 0

# resets N: N connections that each send a request and close with a reset.
resets() {
    python3 - "$port" "$1" <<'PY'
import socket, struct, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /current HTTP/1.1\r\nHost: t\r\n\r\n")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
PY
}
panics() { http "$base/metrics" | sed -n 's/^fibd_tiny_http_panics_total //p'; }
lines() { grep -c 'event=tiny_http_panic' "$WORK/stderr" || true; }
# settled: wait until the panic count has not moved for half a second.
settled() {
    local before after
    before=$(panics)
    for _ in $(seq 40); do
        sleep 0.5
        after=$(panics)
        [ "$after" = "$before" ] && return 0
        before=$after
    done
    return 1
}

# While fibd is stopped the connections wait in its listen queue, so every one
# is reset before tiny_http accepts it: the panics come in one burst.
kill -STOP "$pid"
resets 300
kill -CONT "$pid"
start=$(now_ms)
settled || true
elapsed_s=$((($(now_ms) - start) / 1000))
burst=$(panics)
burst_lines=$(lines)
info "300 resets: $burst panics, $burst_lines log lines, in about ${elapsed_s} s"
check "the resets made tiny_http panic (at least 50 of 300)" test "${burst:-0}" -ge 50 || true
check "at most 10 lines a second were logged" test "$burst_lines" -le $((10 * (elapsed_s + 2))) || true
check_eq "fibd still serves" "$(http "$base/current" || true)" "0" || true

# After a quiet second, the next panic is logged, and says how many were held
# back: every panic is accounted for, in lines or in that count. The reset is
# made while fibd is stopped too: against a running fibd, tiny_http usually
# takes the connection before the reset arrives, and nothing panics.
sleep 1.1
for _ in $(seq 20); do
    kill -STOP "$pid"
    resets 1
    kill -CONT "$pid"
    sleep 0.2
    [ "$(panics)" != "$burst" ] && break
done
more_lines() { [ "$(lines)" -gt "$burst_lines" ]; }
wait_for 5 more_lines || true
suppressed() {
    sed -n 's/.*event=tiny_http_panic.* lines_suppressed=\([0-9]*\).*/\1/p' "$WORK/stderr" | awk '{ s += $1 } END { print s + 0 }'
}
# A panic is counted a moment before its line is written: wait for the two to agree, so
# that a panic between the reads below cannot make them differ.
accounted() { [ "$(($(lines) + $(suppressed)))" = "$(panics)" ]; }
wait_for 5 accounted || true
total=$(panics)
logged=$(lines)
suppressed=$(suppressed)
check_eq "lines written + lines held back = panics counted" "$((logged + suppressed))" "$total" || true
check "the later line says how many were held back" test "$suppressed" -gt 0 || true
rc=0
kill -TERM "$pid"
wait "$pid" || rc=$?
check_eq "fibd stops cleanly after them (exit 0)" "$rc" "0" || true
check "and its last line says so" sh -c "tail -n 1 '$WORK/stderr' | grep -q 'level=info event=stopped .* exit=0\$'" || true
