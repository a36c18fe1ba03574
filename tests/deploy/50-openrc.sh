#!/usr/bin/env bash
# The awk programs run inside the container or namespace; $2 and $4 are awk's.
# shellcheck disable=SC2016
# init/openrc/fibd under a real OpenRC and supervise-daemon (in a PID and
# mount namespace rooted at a debootstrap'd Debian): it takes its address from
# /etc/conf.d/fibd, pulls in the network, runs as fibd, is respawned after
# kill -9 with the state intact (more often than supervise-daemon's default
# limit of 10 allows), logs to /var/log/fibd, and stops cleanly.
# shellcheck source=tests/deploy/lib.sh
. "$(dirname "$0")/lib.sh"
need_root
need_debootstrap

if ! ensure_openrc_root >"$WORK/prepare.log" 2>&1; then
    fail "build the OpenRC test root" "$(tail -n 5 "$WORK/prepare.log" | tr '\n' ' ')"
    exit 0
fi

root="$WORK/root"
openrc_root "$root"
port=$(free_port)
base="http://127.0.0.1:$port"
install -m 0755 "$FIBD_BIN" "$root/usr/local/bin/fibd"
install -m 0755 "$REPO/init/openrc/fibd" "$root/etc/init.d/fibd"
# The port reaches fibd only through conf.d, so this also checks that it is read.
sed "s/^FIBD_LISTEN=.*/FIBD_LISTEN=\"127.0.0.1:$port\"/" "$REPO/init/openrc/fibd.confd" \
    >"$root/etc/conf.d/fibd"
# Health checks every 2 s, so the hang test below is quick.
printf 'FIBD_HEALTHCHECK_DELAY=2\nFIBD_HEALTHCHECK_TIMER=2\n' >>"$root/etc/conf.d/fibd"
grep -q "127.0.0.1:$port" "$root/etc/conf.d/fibd" || fail "conf.d template has a FIBD_LISTEN line"
chroot "$root" useradd --system --user-group --home-dir /var/lib/fibd --no-create-home \
    --shell /usr/sbin/nologin fibd

if ! start_openrc_ns "$root"; then
    fail "namespace for OpenRC starts"
    exit 0
fi

rc=0
out=$(inns rc-service fibd start 2>&1) || rc=$?
if [ "$rc" = 0 ] && wait_ready "$base" 20; then
    pass "rc-service fibd start, on the address from conf.d"
else
    fail "rc-service fibd start" "exit $rc: $(echo "$out" | tail -n 3 | tr '\n' ' ')"
    exit 0
fi
check "need net started the net provider" inns rc-service testnet status || true
child() { inns cat /run/openrc/options/fibd/child_pid; }
pid=$(child)
check_eq "runs as the fibd user" "$(inns awk '/^Uid:/ {print $2}' "/proc/$pid/status")" "$(inns id -u fibd)" || true
check_eq "supervised by supervise-daemon" \
    "$(inns ps -o args= -p "$(inns ps -o ppid= -p "$pid" | tr -d ' ')" | awk '{print $1, $2}')" "supervise-daemon fibd" || true
check_eq "state directory is 0700 fibd" "$(inns stat -c '%a %U' /var/lib/fibd)" "700 fibd" || true
check_eq "open-file limit from conf.d" "$(inns awk '/^Max open files/ {print $4}' "/proc/$pid/limits")" 8192 || true
smoke "smoke test under OpenRC" "$base" || true

advance "$base" 5
# came_back OLDPID: a new fibd is supervised and ready.
came_back() {
    local now
    now=$(child 2>/dev/null) && [ -n "$now" ] && [ "$now" != "$1" ] &&
        curl -fsS -o /dev/null --max-time 2 "$base/readyz"
}
inns kill -9 "$pid"
if wait_for 20 came_back "$pid"; then
    pass "supervise-daemon respawns it after kill -9"
else
    fail "supervise-daemon respawns it after kill -9" "$(inns rc-service fibd status 2>&1 | tr '\n' ' ' || true)"
fi
check_eq "state survives the respawn (index 5)" "$(http "$base/current" || true)" "$(fib 5)" || true

# supervise-daemon gives up after 10 respawns by default; respawn_max=0 must
# keep it coming back.
ok=yes
for n in $(seq 2 11); do
    pid=$(child 2>/dev/null || true)
    if [ -z "$pid" ]; then
        ok="no: before crash $n nothing is supervised: $(inns rc-service fibd status 2>&1 | tr '\n' ' ' || true)"
        break
    fi
    inns kill -9 "$pid"
    if ! wait_for 20 came_back "$pid"; then
        ok="no: after crash $n: $(inns rc-service fibd status 2>&1 | tr '\n' ' ' || true)"
        break
    fi
done
if [ "$ok" = yes ]; then
    pass "comes back from 11 crashes in a row"
else
    fail "comes back from 11 crashes in a row" "$ok"
fi
check_eq "stderr goes to /var/log/fibd/fibd.log" "$(grep -c 'event=start' "$root/var/log/fibd/fibd.log")" 12 || true

# A hung fibd (stopped, so alive but silent) fails healthcheck() (fibd probe), and
# supervise-daemon replaces it.
pid=$(child 2>/dev/null || true)
inns kill -STOP "$pid"
if wait_for 40 came_back "$pid"; then
    pass "healthcheck() (fibd probe) makes supervise-daemon restart a hung fibd"
else
    inns kill -CONT "$pid" 2>/dev/null || true
    fail "healthcheck() restarts a hung fibd" "$(inns rc-service fibd status 2>&1 | tr '\n' ' ' || true)"
fi

rc=0
out=$(inns rc-service fibd stop 2>&1) || rc=$?
if [ "$rc" = 0 ] && ! inns kill -0 "$(child 2>/dev/null || echo 999999)" 2>/dev/null &&
    tail -n 1 "$root/var/log/fibd/fibd.log" | grep -q 'event=stopped'; then
    pass "rc-service fibd stop is clean (fibd logged event=stopped)"
else
    fail "rc-service fibd stop is clean" "exit $rc: $(tail -n 1 "$root/var/log/fibd/fibd.log")"
fi
