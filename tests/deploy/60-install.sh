#!/usr/bin/env bash
# The sh -c scripts run inside the container or namespace.
# shellcheck disable=SC2016
# scripts/install.sh, run as an operator would after
#   scp -r fibd scripts/install.sh init HOST:
# on a systemd host (a container booted with systemd) and on an OpenRC host (a
# namespace over a Debian root with OpenRC): a first install, a second run that
# upgrades in place keeping state and config, an upgrade that keeps the old
# binary as fibd.prev and a rollback to it, --uninstall keeping the state, a
# reinstall that picks the kept state up, a --listen that is no address refused
# before anything changes, and --purge.
# shellcheck source=tests/deploy/lib.sh
. "$(dirname "$0")/lib.sh"
need_root
need_debootstrap

# The files as they land in the operator's home directory on the target.
upload="$WORK/upload"
mkdir -p "$upload"
cp "$FIBD_BIN" "$upload/fibd"
cp "$REPO/scripts/install.sh" "$upload/install.sh"
cp -r "$REPO/init" "$upload/init"

# --- systemd ------------------------------------------------------------------
systemd_host() {
    if ! command -v podman >/dev/null 2>&1; then
        skip "systemd host" "podman is not installed and could not be installed"
        return 0
    fi
    if ! ensure_systemd_image >"$WORK/prepare-systemd.log" 2>&1; then
        fail "build the systemd test image" "$(tail -n 5 "$WORK/prepare-systemd.log" | tr '\n' ' ')"
        return 0
    fi
    local port base name out rc started now
    port=$(free_port)
    base="http://127.0.0.1:$port"
    name="$RUN_ID-install"
    on_exit "pm rm -f -t 0 $name"
    pm run -d --name "$name" --systemd=always "${PM_RUN[@]}" \
        -v "$upload:/root/upload:ro" "$SYSTEMD_IMAGE" /sbin/init >/dev/null
    ex() { pm exec -w /root/upload "$name" "$@"; }
    booted() { ex systemctl is-system-running 2>/dev/null | grep -Eq '^(running|degraded)$'; }
    if ! wait_for 60 booted; then
        fail "systemd boots in the container" "$(ex systemctl is-system-running 2>&1)"
        return 0
    fi

    rc=0
    out=$(ex sh ./install.sh --listen "127.0.0.1:$port" 2>&1) || rc=$?
    indent "$out"
    if [ "$rc" = 0 ] && grep -q 'fibd is ready' <<<"$out" && wait_ready "$base" 5; then
        pass "systemd: install.sh installs, starts and waits for readiness"
    else
        fail "systemd: install.sh installs, starts and waits for readiness" "exit $rc"
        return 0
    fi
    check_eq "systemd: service enabled and active" \
        "$(ex systemctl is-enabled fibd.service) $(ex systemctl is-active fibd.service)" "enabled active" || true
    check "systemd: fibd is a system user without a login shell" \
        podman --runtime runc --cgroup-manager cgroupfs exec "$name" sh -c \
        'test "$(id -u fibd)" -lt 1000 && getent passwd fibd | grep -q ":/var/lib/fibd:.*nologin$"' || true
    check_eq "systemd: state directory is 0700 fibd" "$(ex stat -c '%a %U' /var/lib/fibd)" "700 fibd" || true
    check_eq "systemd: binary is root's, 0755" "$(ex stat -c '%a %U' /usr/local/bin/fibd)" "755 root" || true
    smoke "systemd: smoke test after install" "$base" || true

    # Upgrade: state and a local config change must survive a second run, and
    # the service must restart. The restart is judged by the start time fibd itself
    # reports, so that each condition below fails with its own message.
    advance "$base" 5
    ex sh -c 'echo FIBD_WORKERS=2 >>/etc/default/fibd'
    started=$(start_time "$base")
    rc=0
    out=$(ex sh ./install.sh 2>&1) || rc=$?
    if [ "$rc" = 0 ] && grep -q 'kept the existing state' <<<"$out"; then
        pass "systemd: second run upgrades in place, saying it kept the state"
    else
        indent "$out"
        fail "systemd: second run upgrades in place, saying it kept the state" "exit $rc"
    fi
    now=$(start_time "$base")
    if [ -n "$started" ] && [ -n "$now" ] && [ "$now" != "$started" ]; then
        pass "systemd: second run restarts the service"
    else
        fail "systemd: second run restarts the service" "process_start_time_seconds '$started' before, '$now' after"
    fi
    check_eq "systemd: upgrade keeps the state (index 5)" "$(http "$base/current" || true)" "$(fib 5)" || true
    check "systemd: upgrade keeps the config (fibd started with workers=2)" \
        podman --runtime runc --cgroup-manager cgroupfs exec "$name" sh -c \
        'journalctl -u fibd.service --no-pager | tail -n 3 | grep -q "event=start.*workers=2"' || true

    rc=0
    out=$(ex sh ./install.sh --uninstall 2>&1) || rc=$?
    if [ "$rc" = 0 ] && ! ex test -e /etc/systemd/system/fibd.service && ! ex test -e /usr/local/bin/fibd &&
        ! ex id fibd >/dev/null 2>&1 && [ "$(ex systemctl is-active fibd.service 2>&1)" != active ] &&
        ! curl -fsS -o /dev/null --max-time 2 "$base/healthz" 2>/dev/null; then
        pass "systemd: --uninstall stops and removes service, binary and user"
    else
        fail "systemd: --uninstall stops and removes service, binary and user" "exit $rc: $(echo "$out" | tail -n 2 | tr '\n' ' ')"
    fi
    check "systemd: --uninstall keeps the state" ex test -s /var/lib/fibd/fibd.state || true

    ex sh ./install.sh --listen "127.0.0.1:$port" >/dev/null 2>&1 || true
    check_eq "systemd: reinstall picks up the kept state (index 5)" "$(http "$base/current" || true)" "$(fib 5)" || true

    # A --listen that is no address is refused before anything changes: the
    # running service and its config are left as they were.
    rc=0
    out=$(ex sh ./install.sh --listen localhost:9000 2>&1) || rc=$?
    if [ "$rc" != 0 ] && grep -q "must be IP:PORT.*localhost:9000" <<<"$out" &&
        ex grep -q "^FIBD_LISTEN=\"127.0.0.1:$port\"" /etc/default/fibd &&
        curl -fsS -o /dev/null --max-time 2 "$base/healthz"; then
        pass "systemd: install.sh refuses a --listen that is no address, changing nothing"
    else
        fail "systemd: install.sh refuses a bad --listen, changing nothing" "exit $rc: $(echo "$out" | tail -n 2 | tr '\n' ' ')"
    fi

    rc=0
    ex sh ./install.sh --uninstall --purge >/dev/null 2>&1 || rc=$?
    if [ "$rc" = 0 ] && ! ex test -e /var/lib/fibd; then
        pass "systemd: --purge also deletes the state"
    else
        fail "systemd: --purge also deletes the state" "exit $rc"
    fi

    # A fibd that cannot start (an address of no interface here: it cannot bind
    # it, and exits 1) must make install.sh fail loudly with the service's logs,
    # not report success.
    rc=0
    out=$(pm exec -w /root/upload -e FIBD_INSTALL_READY_TIMEOUT=3 "$name" \
        sh ./install.sh --listen 192.0.2.1:9 2>&1) || rc=$?
    if [ "$rc" != 0 ] && grep -Eq 'did not (start|become ready)' <<<"$out" &&
        grep -q 'fibd\[[0-9]*\]: .*listen_failed.*192.0.2.1:9' <<<"$out"; then
        pass "systemd: install.sh fails, showing the logs, when fibd cannot start"
    else
        fail "systemd: install.sh fails when fibd cannot start" "exit $rc: $(echo "$out" | tail -n 2 | tr '\n' ' ')"
    fi
    ex sh ./install.sh --purge >/dev/null 2>&1 || true
    pm rm -f -t 0 "$name" >/dev/null 2>&1 || true
}

# --- OpenRC -------------------------------------------------------------------
openrc_host() {
    if ! ensure_openrc_root >"$WORK/prepare-openrc.log" 2>&1; then
        fail "build the OpenRC test root" "$(tail -n 5 "$WORK/prepare-openrc.log" | tr '\n' ' ')"
        return 0
    fi
    local root="$WORK/openrc-root" port base out rc
    openrc_root "$root"
    cp -r "$upload" "$root/root/upload"
    port=$(free_port)
    base="http://127.0.0.1:$port"
    if ! start_openrc_ns "$root"; then
        fail "namespace for OpenRC starts"
        return 0
    fi
    run_install() { inns sh -c 'cd /root/upload && sh ./install.sh "$@"' install.sh "$@"; }

    rc=0
    out=$(run_install --listen "127.0.0.1:$port" 2>&1) || rc=$?
    indent "$out"
    if [ "$rc" = 0 ] && grep -q 'installing for openrc' <<<"$out" &&
        grep -q 'fibd is ready' <<<"$out" && wait_ready "$base" 5; then
        pass "OpenRC: install.sh detects OpenRC, installs, starts and waits for readiness"
    else
        fail "OpenRC: install.sh installs, starts and waits for readiness" "exit $rc"
        return 0
    fi
    check "OpenRC: fibd is in the default runlevel" test -L "$root/etc/runlevels/default/fibd" || true
    check_eq "OpenRC: state directory is 0700 fibd" "$(inns stat -c '%a %U' /var/lib/fibd)" "700 fibd" || true
    smoke "OpenRC: smoke test after install" "$base" || true

    advance "$base" 3
    rc=0
    out=$(run_install 2>&1) || rc=$?
    if [ "$rc" = 0 ] && grep -q "kept the existing /etc/conf.d/fibd" <<<"$out"; then
        pass "OpenRC: second run upgrades in place, keeping conf.d"
    else
        indent "$out"
        fail "OpenRC: second run upgrades in place, keeping conf.d" "exit $rc"
    fi
    wait_ready "$base" 10 || true
    check_eq "OpenRC: upgrade keeps the state (index 3)" "$(http "$base/current" || true)" "$(fib 3)" || true
    check "OpenRC: logrotate snippet installed (/etc/logrotate.d exists)" \
        cmp "$REPO/init/openrc/fibd.logrotate" "$root/etc/logrotate.d/fibd" || true
    check "OpenRC: rerunning with the same binary makes no fibd.prev" \
        test ! -e "$root/usr/local/bin/fibd.prev" || true

    # An upgrade to another build keeps the replaced binary for a rollback, and
    # installing fibd.prev rolls back (swapping the two). The new build is named bare, as
    # it was copied: --binary must not look it up in PATH.
    cp "$upload/fibd" "$root/root/upload/fibd-next"
    printf 'another build\n' >>"$root/root/upload/fibd-next"
    rc=0
    out=$(run_install --binary fibd-next 2>&1) || rc=$?
    if [ "$rc" = 0 ] && cmp -s "$root/root/upload/fibd-next" "$root/usr/local/bin/fibd" &&
        cmp -s "$upload/fibd" "$root/usr/local/bin/fibd.prev"; then
        pass "OpenRC: an upgrade keeps the replaced binary as /usr/local/bin/fibd.prev"
    else
        fail "OpenRC: an upgrade keeps the replaced binary as fibd.prev" "exit $rc: $(echo "$out" | tail -n 2 | tr '\n' ' ')"
    fi
    rc=0
    out=$(run_install --binary /usr/local/bin/fibd.prev 2>&1) || rc=$?
    if [ "$rc" = 0 ] && cmp -s "$upload/fibd" "$root/usr/local/bin/fibd" &&
        cmp -s "$root/root/upload/fibd-next" "$root/usr/local/bin/fibd.prev" && wait_ready "$base" 10; then
        pass "OpenRC: install.sh --binary /usr/local/bin/fibd.prev rolls back"
    else
        fail "OpenRC: install.sh --binary /usr/local/bin/fibd.prev rolls back" "exit $rc: $(echo "$out" | tail -n 2 | tr '\n' ' ')"
    fi
    check_eq "OpenRC: rollback keeps the state (index 3)" "$(http "$base/current" || true)" "$(fib 3)" || true

    rc=0
    out=$(run_install --uninstall 2>&1) || rc=$?
    if [ "$rc" = 0 ] && [ ! -e "$root/etc/init.d/fibd" ] && [ ! -e "$root/etc/runlevels/default/fibd" ] &&
        [ ! -e "$root/usr/local/bin/fibd" ] && [ ! -e "$root/usr/local/bin/fibd.prev" ] &&
        [ ! -e "$root/etc/logrotate.d/fibd" ] && ! grep -q '^fibd:' "$root/etc/passwd" &&
        ! curl -fsS -o /dev/null --max-time 2 "$base/healthz" 2>/dev/null; then
        pass "OpenRC: --uninstall stops and removes service, binaries, logrotate snippet and user"
    else
        fail "OpenRC: --uninstall stops and removes service, binary and user" "exit $rc: $(echo "$out" | tail -n 2 | tr '\n' ' ')"
    fi
    check "OpenRC: --uninstall keeps the state" test -s "$root/var/lib/fibd/fibd.state" || true
}

systemd_host
openrc_host
