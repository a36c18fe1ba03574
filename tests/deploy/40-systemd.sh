#!/usr/bin/env bash
# The awk programs run inside the container or namespace; $2 and $4 are awk's.
# shellcheck disable=SC2016
# init/systemd/fibd.service under a real systemd (PID 1 of a container booted
# from a debootstrap'd Debian): verify and security pass, it runs as the fibd
# user with its limits and state directory, systemd restarts it after kill -9
# with the state intact, repeated crashes never leave it dead, a state file
# restored as root is given back to fibd, running out of descriptors for longer than the
# watchdog's 10 s is not mistaken for a hang, and stop is clean.
# shellcheck source=tests/deploy/lib.sh
. "$(dirname "$0")/lib.sh"
need_root
need_podman
need_debootstrap

if ! ensure_systemd_image >"$WORK/prepare.log" 2>&1; then
    fail "build the systemd test image" "$(tail -n 5 "$WORK/prepare.log" | tr '\n' ' ')"
    exit 0
fi

port=$(free_port)
base="http://127.0.0.1:$port"
echo "FIBD_LISTEN=127.0.0.1:$port" >"$WORK/default"
name="$RUN_ID-systemd"
on_exit "pm rm -f -t 0 $name"
pm run -d --name "$name" --systemd=always "${PM_RUN[@]}" \
    -v "$REPO/init/systemd/fibd.service:/etc/systemd/system/fibd.service:ro" \
    -v "$FIBD_BIN:/usr/local/bin/fibd:ro" \
    -v "$WORK/default:/etc/default/fibd:ro" \
    "$SYSTEMD_IMAGE" /sbin/init >/dev/null
ex() { pm exec "$name" "$@"; }
booted() { ex systemctl is-system-running 2>/dev/null | grep -Eq '^(running|degraded)$'; }
if ! wait_for 60 booted; then
    fail "systemd boots in the container" "$(ex systemctl is-system-running 2>&1)"
    exit 0
fi
# What install.sh does on a real host; the unit expects the user to exist.
ex useradd --system --user-group --home-dir /var/lib/fibd --no-create-home \
    --shell /usr/sbin/nologin fibd

rc=0
out=$(ex systemd-analyze verify /etc/systemd/system/fibd.service 2>&1) || rc=$?
if [ "$rc" = 0 ] && [ -z "$out" ]; then
    pass "systemd-analyze verify is clean"
else
    fail "systemd-analyze verify is clean" "exit $rc: $(echo "$out" | head -n 5 | tr '\n' ' ')"
fi

exposure=$(ex systemd-analyze security fibd.service 2>&1 |
    sed -n 's/.*Overall exposure level for fibd.service: \([0-9.]*\).*/\1/p')
if [ -n "$exposure" ] && awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }'; then
    pass "systemd-analyze security exposure $exposure <= 2.0"
else
    fail "systemd-analyze security exposure <= 2.0" "got '${exposure:-no result}'"
fi

ex systemctl start fibd.service
if wait_ready "$base" 20; then
    pass "starts under systemd"
else
    fail "starts under systemd" "$(ex systemctl status --no-pager fibd 2>&1 | tail -n 5 | tr '\n' ' ')"
    exit 0
fi
mainpid() { ex systemctl show -p MainPID --value fibd.service; }
nrestarts() { ex systemctl show -p NRestarts --value fibd.service; }
pid=$(mainpid)
check_eq "runs as the fibd user" "$(ex awk '/^Uid:/ {print $2}' "/proc/$pid/status")" "$(ex id -u fibd)" || true
check_eq "state directory is 0700 fibd" "$(ex stat -c '%a %U' /var/lib/fibd)" "700 fibd" || true
check_eq "state file is 0600 fibd" "$(ex stat -c '%a %U' /var/lib/fibd/fibd.state)" "600 fibd" || true
check_eq "open-file limit applied" \
    "$(ex awk '/^Max open files/ {print $4}' "/proc/$pid/limits")" 8192 || true
check_eq "memory limit configured" "$(ex systemctl show -p MemoryMax --value fibd.service)" 469762048 || true
smoke "smoke test under systemd" "$base" || true
# Type=notify: "starts under systemd" above already needed READY=1. The watchdog must be armed,
# and fed: a fibd that sends no WATCHDOG=1 would be killed after 10 s.
check_eq "Type=notify with a 10 s watchdog" \
    "$(ex systemctl show -p Type -p WatchdogUSec --value fibd.service | tr '\n' ' ')" "notify 10s " || true
sleep 12
check_eq "the watchdog is fed: no restart after 12 s" "$(nrestarts)/$(mainpid)" "0/$pid" || true

advance "$base" 5
before=$(nrestarts)
ex systemctl kill -s KILL --kill-whom=main fibd.service
# came_back N OLDPID: NRestarts reached N and a new main process is ready.
came_back() {
    [ "$(nrestarts)" = "$1" ] && [ "$(mainpid)" != "$2" ] && [ "$(mainpid)" != 0 ] &&
        curl -fsS -o /dev/null --max-time 2 "$base/readyz"
}
if wait_for 20 came_back $((before + 1)) "$pid"; then
    pass "systemd restarts it after SIGKILL (NRestarts=$(nrestarts))"
else
    fail "systemd restarts it after SIGKILL" "NRestarts=$(nrestarts) $(ex systemctl is-active fibd.service)"
fi
check_eq "state survives the restart (index 5)" "$(http "$base/current" || true)" "$(fib 5)" || true

# A crash loop: kill it every 0.1 s, whatever state it is in, until systemd has restarted it
# 6 times (60 s at most). With RestartSec=1s that is normally 6 starts in under 10 s, past
# systemd's default start limit (5 starts in 10 s): without StartLimitIntervalSec=0 the unit
# would end up failed and stay dead. (The bound allows for a few of the 10 s stop timeouts
# described below.)
check_eq "the unit has no start limit" \
    "$(ex systemctl show -p StartLimitIntervalUSec --value fibd.service)" "0" || true
before=$(nrestarts)
started_loop=$SECONDS
ex sh -c 'end=$(($(date +%s) + 60)) want=$(($1 + 6))
    while [ "$(date +%s)" -lt "$end" ] &&
        [ "$(systemctl show -p NRestarts --value fibd.service)" -lt "$want" ]; do
        systemctl kill -s KILL --kill-whom=main fibd.service 2>/dev/null
        sleep 0.1
    done' sh "$before"
crashes=$(($(nrestarts) - before))
loop_s=$((SECONDS - started_loop))
back() { [ "$(ex systemctl is-active fibd.service)" = active ] && curl -fsS -o /dev/null --max-time 2 "$base/readyz"; }
# Under podman's cgroupfs manager, systemd sometimes misses that a killed unit's cgroup has
# emptied and waits out TimeoutStopSec (10 s) in "deactivating (stop-sigterm)" before it
# restarts the service; allow for that plus RestartSec and start-up.
if [ "$crashes" -ge 6 ] && wait_for 25 back; then
    pass "comes back after a crash loop ($crashes restarts in $loop_s s)"
else
    fail "comes back after a crash loop" "$crashes restarts; now $(ex systemctl is-active fibd.service)"
    { ex systemctl status --no-pager fibd.service 2>&1 || true; } | tail -n 8 | sed 's/^/    status: /'
    { ex journalctl -u fibd.service --no-pager -n 25 2>&1 || true; } | sed 's/^/    journal: /'
fi
check_eq "state survives the crash loop (index 5)" "$(http "$base/current" || true)" "$(fib 5)" || true
check "logs reach the journal" sh -c \
    "podman --runtime runc --cgroup-manager cgroupfs exec $name journalctl -u fibd.service --no-pager | grep -q 'event=start'" || true

# The runbook's restore, done carelessly: a state file copied in by root is
# root's, and fibd could not open it ("Permission denied" at every restart).
# The unit's privileged ExecStartPre gives it back to fibd.
ex systemctl stop fibd.service
ex sh -c 'cp /var/lib/fibd/fibd.state /root/backup && cp /root/backup /var/lib/fibd/fibd.state &&
    chown root:root /var/lib/fibd/fibd.state'
# (Without the fix, start fails: fibd exits before READY=1.)
ex systemctl start fibd.service 2>/dev/null || true
if wait_ready "$base" 20; then
    pass "starts from a state file restored as root"
else
    fail "starts from a state file restored as root" \
        "$(ex journalctl -u fibd.service --no-pager -n 3 2>&1 | tr '\n' ' ')"
fi
check_eq "the restored state file is fibd's again" "$(ex stat -c '%U' /var/lib/fibd/fibd.state)" fibd || true
check_eq "the restored state is served (index 5)" "$(http "$base/current" || true)" "$(fib 5)" || true

# Out of descriptors for longer than WatchdogSec (10 s), shorter than fibd's own judgement of
# deafness (most probes failing over two idle timeouts): systemd must not kill it, since it
# serves again once the connections that hold the descriptors end. 64 descriptors are about
# 27 connections; 40 are opened and held for 13 s, under the 15 s idle timeout.
ex mkdir -p /etc/systemd/system/fibd.service.d
ex sh -c 'printf "[Service]\nLimitNOFILE=64\n" >/etc/systemd/system/fibd.service.d/fds.conf'
ex systemctl daemon-reload
ex systemctl restart fibd.service
wait_ready "$base" 20 || true
pid=$(mainpid)
before=$(nrestarts)
held=()
for _ in $(seq 40); do
    exec {fd}<>"/dev/tcp/127.0.0.1/$port" || break
    held+=("$fd")
done
sleep 13
check "its self-probes failed meanwhile (descriptors ran out)" sh -c \
    "podman --runtime runc --cgroup-manager cgroupfs exec $name journalctl -u fibd.service --no-pager _PID=$pid | grep -q 'event=probe_failed'" || true
for fd in "${held[@]}"; do exec {fd}>&-; done
check_eq "systemd's watchdog did not kill it, out of descriptors for 13 s" "$(nrestarts)/$(mainpid)" "$before/$pid" || true
check "it serves again once those connections end" wait_ready "$base" 20 || true
ex rm -r /etc/systemd/system/fibd.service.d
ex systemctl daemon-reload

ex systemctl stop fibd.service
check_eq "stops cleanly (Result, exit status)" \
    "$(ex systemctl show -p Result --value fibd.service) $(ex systemctl show -p ExecMainStatus --value fibd.service)" \
    "success 0" || true
