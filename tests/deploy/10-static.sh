#!/usr/bin/env bash
# The static binary needs nothing from the host: run it in a chroot that holds
# only the binary (no /etc, /lib, /dev or /proc) and have it serve requests,
# survive SIGKILL with its state, and stop cleanly on SIGTERM.
# shellcheck source=tests/deploy/lib.sh
. "$(dirname "$0")/lib.sh"
need_root

desc=$(file -b "$FIBD_BIN")
case $desc in
    *"static-pie linked"* | *"statically linked"*) pass "file says static ($(wc -c <"$FIBD_BIN") bytes)" ;;
    *) fail "file says static" "$desc" ;;
esac
case $desc in
    *"not stripped"*) fail "stripped" "$desc" ;;
    *stripped*) pass "stripped" ;;
    *) fail "stripped" "$desc" ;;
esac

root="$WORK/root"
mkdir -p "$root"
cp "$FIBD_BIN" "$root/fibd"
check_eq "chroot holds only the binary" "$(cd "$root" && find . | sort | tr '\n' ' ')" ". ./fibd "

check "--version in the empty chroot" chroot "$root" /fibd --version

# start_fibd: run fibd in the chroot on a free port; sets $pid and $base.
start_fibd() {
    : >"$WORK/stderr"
    chroot "$root" /fibd --listen 127.0.0.1:0 --state-file /fibd.state 2>>"$WORK/stderr" &
    pid=$!
    on_exit "kill_wait $pid"
    local port=
    for _ in $(seq 50); do
        port=$(sed -n 's/.*event=start.* listen=[^ ]*:\([0-9][0-9]*\)\( .*\)\{0,1\}$/\1/p' "$WORK/stderr" | head -n 1)
        [ -n "$port" ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$port" ]; then
        fail "fibd starts in the chroot" "$(tail -n 3 "$WORK/stderr" | tr '\n' ' ')"
        exit 0
    fi
    base="http://127.0.0.1:$port"
}

start_fibd
pass "starts in the empty chroot and logs its real port (${base##*:})"
check_eq "serves /fib/10 from the chroot" "$(http "$base/fib/10" || true)" 55
# A static binary maps no shared objects: no ld.so, no libc.so.
if grep -q '\.so' "/proc/$pid/maps" 2>/dev/null; then
    fail "maps no shared libraries" "$(grep '\.so' "/proc/$pid/maps" | head -n 2 | tr '\n' ' ')"
else
    pass "maps no shared libraries"
fi
smoke "smoke test against the chroot" "$base" || true

advance "$base" 7
kill_wait "$pid"
check "state file created 0600 in the chroot" test "$(stat -c %a "$root/fibd.state")" = 600
start_fibd
check_eq "state survives SIGKILL (index 7)" "$(http "$base/current" || true)" "$(fib 7)"

start=$(now_ms)
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
took=$(($(now_ms) - start))
check_eq "SIGTERM exits 0" "$rc" 0
if [ "$took" -le 2000 ]; then
    pass "SIGTERM exit within 2 s (${took} ms)"
else
    fail "SIGTERM exit within 2 s" "took ${took} ms"
fi
