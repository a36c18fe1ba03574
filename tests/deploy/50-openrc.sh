#!/usr/bin/env bash
# The awk programs run inside the container or namespace; $2 and $4 are awk's.
# shellcheck disable=SC2016
# init/openrc/fibd under a real OpenRC and supervise-daemon (in a PID and
# mount namespace rooted at a debootstrap'd Debian): it starts with nothing
# providing "net" (Debian with ifupdown), takes its address and settings from
# /etc/conf.d/fibd, passes its health checks on an address other than
# 127.0.0.1, runs as fibd, is respawned after kill -9 with the state intact
# (more often than supervise-daemon's default limit of 10 allows), is restarted
# when hung but not for one failed health check, logs to
# /var/log/fibd (rotated by the shipped logrotate snippet), stops cleanly,
# starts again from a state file restored as root, and refuses --listen or
# --state-file in FIBD_OPTS.
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
# Not 127.0.0.1: the health check must probe the address fibd listens on, not
# loopback with the same port (the namespace shares the host's network, where
# all of 127.0.0.0/8 is local).
addr="127.0.0.2:$port"
base="http://$addr"
install -m 0755 "$FIBD_BIN" "$root/usr/local/bin/fibd"
install -m 0755 "$REPO/init/openrc/fibd" "$root/etc/init.d/fibd"
# The address reaches fibd only through conf.d, so this also checks that it is read.
sed "s/^FIBD_LISTEN=.*/FIBD_LISTEN=\"$addr\"/" "$REPO/init/openrc/fibd.confd" \
    >"$root/etc/conf.d/fibd"
# Health checks every 2 s, so the hang test below is quick; a setting fibd
# reads only from its environment, to check that conf.d's variables reach it.
printf 'FIBD_HEALTHCHECK_DELAY=2\nFIBD_HEALTHCHECK_TIMER=2\nFIBD_WORKERS=3\n' >>"$root/etc/conf.d/fibd"
grep -q "$addr" "$root/etc/conf.d/fibd" || fail "conf.d template has a FIBD_LISTEN line"
chroot "$root" useradd --system --user-group --home-dir /var/lib/fibd --no-create-home \
    --shell /usr/sbin/nologin fibd

if ! start_openrc_ns "$root"; then
    fail "namespace for OpenRC starts"
    exit 0
fi

rc=0
out=$(inns rc-service fibd start 2>&1) || rc=$?
if [ "$rc" = 0 ] && wait_ready "$base" 20; then
    pass "rc-service fibd start, with nothing providing net, on the address from conf.d"
else
    fail "rc-service fibd start" "exit $rc: $(echo "$out" | tail -n 3 | tr '\n' ' ')"
    exit 0
fi
started_at=$SECONDS
child() { inns cat /run/openrc/options/fibd/child_pid; }
pid=$(child)
check "conf.d's FIBD_WORKERS reaches fibd (exported)" \
    grep -q "event=start.*workers=3" "$root/var/log/fibd/fibd.log" || true
check_eq "runs as the fibd user" "$(inns awk '/^Uid:/ {print $2}' "/proc/$pid/status")" "$(inns id -u fibd)" || true
check_eq "supervised by supervise-daemon" \
    "$(inns ps -o args= -p "$(inns ps -o ppid= -p "$pid" | tr -d ' ')" | awk '{print $1, $2}')" "supervise-daemon fibd" || true
check_eq "state directory is 0700 fibd" "$(inns stat -c '%a %U' /var/lib/fibd)" "700 fibd" || true
check_eq "open-file limit from conf.d" "$(inns awk '/^Max open files/ {print $4}' "/proc/$pid/limits")" 8192 || true
smoke "smoke test under OpenRC" "$base" || true
# With health checks every 2 s after 2 s, a probe of the wrong address would
# have restarted fibd by now.
sleep $((started_at + 8 - SECONDS > 0 ? started_at + 8 - SECONDS : 0))
# (The child's pid alone would not show it: after a failed check supervise-daemon
# stops fibd at once but starts it again only about 10 s later.)
check_eq "health checks on $addr pass: not stopped, no restart in 8 s, no failure counted" \
    "$(grep -c 'event=shutdown' "$root/var/log/fibd/fibd.log")/$(child 2>/dev/null || true)/$(inns cat /run/openrc/options/fibd/healthcheck_failures 2>/dev/null || echo 0)" "0/$pid/0" || true

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

# A fibd silent for one health check (stopped, as a flood that uses up its
# descriptors silences it) is not restarted: healthcheck() fails only after three
# failed probes in a row. Continued as soon as one probe has failed, it answers
# the next, which starts the count again.
failures() { inns cat /run/openrc/options/fibd/healthcheck_failures; }
one_failure() { [ "$(failures)" = "$pid:1" ]; }
pid=$(child 2>/dev/null || true)
starts=$(grep -c 'event=start' "$root/var/log/fibd/fibd.log")
inns kill -STOP "$pid"
if wait_for 20 one_failure; then
    inns kill -CONT "$pid"
    sleep 6
    check_eq "one failed health check neither restarts fibd nor stays counted" \
        "$(child 2>/dev/null || true)/$(grep -c 'event=start' "$root/var/log/fibd/fibd.log")/$(failures 2>/dev/null || true)" \
        "$pid/$starts/0" || true
else
    inns kill -CONT "$pid"
    fail "a failed health check is counted" "failures: $(failures 2>&1 || true), child $(child 2>&1 || true) (was $pid)"
fi

# A hung fibd (stopped, so alive but silent) fails healthcheck() (fibd probe) three
# times in a row, and supervise-daemon replaces it.
pid=$(child 2>/dev/null || true)
inns kill -STOP "$pid"
if wait_for 60 came_back "$pid"; then
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

# The runbook's restore, done carelessly: a state file copied in by root is
# root's, mode 0600, and fibd could not open it ("Permission denied" at every
# respawn). start_pre gives an existing state file back to fibd.
inns cp -p /var/lib/fibd/fibd.state /root/fibd.state.backup
inns cp /root/fibd.state.backup /var/lib/fibd/fibd.state
inns chown root:root /var/lib/fibd/fibd.state
rc=0
out=$(inns rc-service fibd start 2>&1) || rc=$?
if [ "$rc" = 0 ] && wait_ready "$base" 20; then
    pass "starts from a state file restored as root"
else
    fail "starts from a state file restored as root" \
        "exit $rc: $(echo "$out" | tail -n 2 | tr '\n' ' ') $(tail -n 2 "$root/var/log/fibd/fibd.log" | tr '\n' ' ')"
fi
check_eq "the restored state file is 0600 fibd again" "$(inns stat -c '%a %U' /var/lib/fibd/fibd.state)" "600 fibd" || true
check_eq "the restored state is served (index 5)" "$(http "$base/current" || true)" "$(fib 5)" || true

# The shipped logrotate snippet rotates the log while supervise-daemon holds
# it open (copytruncate): the old lines move to fibd.log.1, and fibd's next
# lines land at the start of the emptied fibd.log, not after a hole.
inns install -m 0644 /dev/stdin /etc/logrotate.d/fibd <"$REPO/init/openrc/fibd.logrotate"
rc=0
out=$(inns logrotate --force --state /root/logrotate.state /etc/logrotate.d/fibd 2>&1) || rc=$?
pid=$(child 2>/dev/null || true)
inns kill -9 "$pid"
wait_for 20 came_back "$pid" || true
if [ "$rc" = 0 ] && grep -q 'event=start' "$root/var/log/fibd/fibd.log.1" &&
    head -c 200 "$root/var/log/fibd/fibd.log" | grep -q '^ts=.*event=start'; then
    pass "logrotate rotates the log in place (copytruncate)"
else
    fail "logrotate rotates the log in place (copytruncate)" \
        "exit $rc: $(echo "$out" | tail -n 2 | tr '\n' ' ') log: $(head -c 100 "$root/var/log/fibd/fibd.log" | tr -d '\0' | tr '\n' ' ')"
fi
inns rc-service fibd stop >/dev/null 2>&1 || true

# FIBD_OPTS may carry other flags, but not the address (the health check probes
# FIBD_LISTEN) nor the state file (start_pre's ownership fix, the install and
# the docs all mean /var/lib/fibd/fibd.state): start_pre refuses both.
cp "$root/etc/conf.d/fibd" "$WORK/confd.saved"
# (A tab before the flag, as a hand-edited conf.d may have: the shell splits on it too.)
for opts in "--listen 127.0.0.1:$port" "	--state-file=/var/lib/fibd/other.state"; do
    flag=${opts#	}
    flag=${flag%%[ =]*}
    sed -i "s|^FIBD_OPTS=.*|FIBD_OPTS=\"--workers 2 $opts\"|" "$root/etc/conf.d/fibd"
    rc=0
    out=$(inns rc-service fibd start 2>&1) || rc=$?
    if [ "$rc" != 0 ] && [[ $out == *"$flag"* ]] && [ -z "$(child 2>/dev/null || true)" ]; then
        pass "refuses $flag in FIBD_OPTS"
    else
        fail "refuses $flag in FIBD_OPTS" "exit $rc: $(echo "$out" | tail -n 2 | tr '\n' ' ')"
    fi
    inns rc-service fibd stop >/dev/null 2>&1 || true
done
cp "$WORK/confd.saved" "$root/etc/conf.d/fibd"
