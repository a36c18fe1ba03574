#!/bin/sh
# Install (or upgrade, or remove) fibd as a system service on this host.
#
# Meant to run as root on the target machine after copying the files over:
#   scp -r target/x86_64-unknown-linux-musl/release/fibd scripts/install.sh init HOST:
#   ssh -t HOST sudo sh ./install.sh
# It also works from a checkout of the repository.
#
# Usage: install.sh [--binary PATH] [--listen IP:PORT] [--init systemd|openrc]
#        install.sh --uninstall [--purge]
#
#   --binary PATH   the fibd binary to install (default: ./fibd next to this
#                   script, or the musl release build in a checkout)
#   --listen ADDR   listen address written to the config file (default for a
#                   new install 0.0.0.0:8080; an existing config is kept
#                   unless this is given)
#   --init NAME     service manager to use instead of detecting it
#   --uninstall     stop and remove the service, binaries, config and user; the
#                   state in /var/lib/fibd (and OpenRC logs) are kept
#   --purge         with --uninstall (or alone): also delete the state and logs
#
# Running it again upgrades in place: the binary and service files are
# replaced and the service restarted, while the state and config are kept. The
# replaced binary is kept as /usr/local/bin/fibd.prev; to roll back, run
#   install.sh --binary /usr/local/bin/fibd.prev
# (which swaps the two).
#
# POSIX sh, so it also runs under busybox (Alpine) for OpenRC hosts.
set -eu

BIN=/usr/local/bin/fibd
STATE_DIR=/var/lib/fibd
LOG_DIR=/var/log/fibd
SVC_USER=fibd
UNIT=/etc/systemd/system/fibd.service
ENV_FILE=/etc/default/fibd
INITD=/etc/init.d/fibd
CONFD=/etc/conf.d/fibd
LOGROTATE=/etc/logrotate.d/fibd
DEFAULT_LISTEN=0.0.0.0:8080
READY_TIMEOUT=${FIBD_INSTALL_READY_TIMEOUT:-30}

say() { echo "install.sh: $*"; }
die() {
    echo "install.sh: error: $*" >&2
    exit 1
}

usage() {
    sed -n '/^# Usage:/,/^# POSIX sh/p' "$0" | sed 's/^# \{0,1\}//' | sed '$d'
}

binary_arg=
listen_arg=
init_arg=
mode=install
purge=no
while [ $# -gt 0 ]; do
    case $1 in
        --binary) [ $# -ge 2 ] || die "--binary needs a path"; binary_arg=$2; shift ;;
        --binary=*) binary_arg=${1#*=} ;;
        --listen) [ $# -ge 2 ] || die "--listen needs IP:PORT"; listen_arg=$2; shift ;;
        --listen=*) listen_arg=${1#*=} ;;
        --init) [ $# -ge 2 ] || die "--init needs systemd or openrc"; init_arg=$2; shift ;;
        --init=*) init_arg=${1#*=} ;;
        --uninstall) mode=uninstall ;;
        --purge) mode=uninstall; purge=yes ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done

[ "$(id -u)" = 0 ] || die "must run as root"

here=$(cd "$(dirname "$0")" && pwd)

detect_init() {
    if [ -n "$init_arg" ]; then
        case $init_arg in
            systemd | openrc) echo "$init_arg" ;;
            *) die "--init must be systemd or openrc, not '$init_arg'" ;;
        esac
    # The same test sd_booted() uses: systemd is PID 1 and running.
    elif [ -d /run/systemd/system ]; then
        echo systemd
    elif command -v openrc-run >/dev/null 2>&1 || [ -x /sbin/openrc-run ]; then
        echo openrc
    else
        die "found neither a running systemd nor OpenRC; use --init to choose"
    fi
}

# find_first -f|-d CANDIDATE...: print the first existing file (-f) or
# directory (-d) among the candidates.
find_first() {
    _t=$1
    shift
    for _c in "$@"; do
        if { [ "$_t" = -f ] && [ -f "$_c" ]; } || { [ "$_t" = -d ] && [ -d "$_c" ]; }; then
            echo "$_c"
            return 0
        fi
    done
    return 1
}

# The value of KEY in a shell-style KEY=value config file, quotes removed.
config_value() {
    [ -f "$2" ] || return 0
    sed -n "s/^[[:space:]]*$1=//p" "$2" | tail -n 1 | tr -d "\"'"
}

# Set KEY=value in a config file, replacing an existing assignment.
config_set() {
    if grep -q "^[[:space:]]*$1=" "$3"; then
        _tmp="$3.tmp.$$"
        sed "s|^[[:space:]]*$1=.*|$1=\"$2\"|" "$3" >"$_tmp"
        cat "$_tmp" >"$3"
        rm -f "$_tmp"
    else
        echo "$1=\"$2\"" >>"$3"
    fi
}

remove_user() {
    if id -u "$SVC_USER" >/dev/null 2>&1; then
        if command -v userdel >/dev/null 2>&1; then
            userdel "$SVC_USER"
        else
            deluser "$SVC_USER"
        fi
        say "removed user $SVC_USER"
    fi
    # userdel drops the user's own group only with USERGROUPS_ENAB; make sure.
    if grep -q "^$SVC_USER:" /etc/group; then
        if command -v groupdel >/dev/null 2>&1; then
            groupdel "$SVC_USER"
        else
            delgroup "$SVC_USER"
        fi
    fi
}

uninstall() {
    if [ -f "$UNIT" ] || [ -L "/etc/systemd/system/multi-user.target.wants/fibd.service" ]; then
        if [ -d /run/systemd/system ]; then
            systemctl disable --now fibd.service >/dev/null 2>&1 || true
        fi
        rm -f "$UNIT" /etc/systemd/system/multi-user.target.wants/fibd.service "$ENV_FILE"
        if [ -d /run/systemd/system ]; then
            systemctl daemon-reload
            systemctl reset-failed fibd.service >/dev/null 2>&1 || true
        fi
        say "stopped and removed the systemd service and $ENV_FILE"
    fi
    if [ -f "$INITD" ]; then
        rc-service fibd stop >/dev/null 2>&1 || true
        rc-update del fibd default >/dev/null 2>&1 || true
        rm -f "$INITD" "$CONFD" "$LOGROTATE"
        say "stopped and removed the OpenRC service, $CONFD and $LOGROTATE"
    fi
    if [ -e "$BIN" ] || [ -e "$BIN.prev" ]; then
        rm -f "$BIN" "$BIN.prev"
        say "removed $BIN and $BIN.prev"
    fi
    remove_user
    if [ "$purge" = yes ]; then
        rm -rf "$STATE_DIR" "$LOG_DIR"
        say "purged $STATE_DIR and $LOG_DIR"
    elif [ -d "$STATE_DIR" ]; then
        say "kept the state in $STATE_DIR (--purge deletes it)"
    fi
    say "fibd uninstalled"
}

ensure_user() {
    if id -u "$SVC_USER" >/dev/null 2>&1; then
        say "user $SVC_USER exists (uid $(id -u "$SVC_USER"))"
        return 0
    fi
    nologin=$(command -v nologin 2>/dev/null || echo /sbin/nologin)
    if command -v useradd >/dev/null 2>&1; then
        # A group left over from an earlier install is reused.
        if grep -q "^$SVC_USER:" /etc/group; then
            group_opt="--gid $SVC_USER"
        else
            group_opt=--user-group
        fi
        # shellcheck disable=SC2086 # group_opt is one or two words on purpose
        useradd --system $group_opt --home-dir "$STATE_DIR" --no-create-home \
            --shell "$nologin" --comment "fibd daemon" "$SVC_USER"
    else
        # busybox (Alpine)
        grep -q "^$SVC_USER:" /etc/group || addgroup -S "$SVC_USER"
        adduser -S -D -H -h "$STATE_DIR" -s "$nologin" -G "$SVC_USER" -g "fibd daemon" "$SVC_USER"
    fi
    say "created system user $SVC_USER (uid $(id -u "$SVC_USER"))"
}

ensure_state_dir() {
    if [ -d "$STATE_DIR" ]; then
        # The user may have been removed and recreated with another uid since
        # the state was written (uninstall keeps the state).
        chown -R "$SVC_USER:$SVC_USER" "$STATE_DIR"
        chmod 0700 "$STATE_DIR"
        say "kept the existing state in $STATE_DIR"
    else
        mkdir -p "$STATE_DIR"
        chown "$SVC_USER:$SVC_USER" "$STATE_DIR"
        chmod 0700 "$STATE_DIR"
        say "created $STATE_DIR (mode 0700, owner $SVC_USER)"
    fi
}

install_binary() {
    # Run the new binary once before anything is replaced: a wrong
    # architecture or a truncated copy fails here, not as a crash loop.
    new_version=$("$src_bin" --version 2>/dev/null) || die "$src_bin does not run on this host"
    old_version=none
    if [ -x "$BIN" ]; then
        old_version=$("$BIN" --version 2>/dev/null || echo unknown)
    fi
    mkdir -p "$(dirname "$BIN")"
    # Copy then rename, so a running fibd keeps its old file and nothing ever
    # sees a half-written binary.
    cp "$src_bin" "$BIN.new"
    chown 0:0 "$BIN.new"
    chmod 0755 "$BIN.new"
    # Keep the binary being replaced as $BIN.prev for a rollback, unless it is
    # the same file (a rerun must not lose the real previous version). Copied
    # to .new first, so --binary $BIN.prev swaps the two.
    if [ -f "$BIN" ] && ! cmp -s "$BIN.new" "$BIN"; then
        ln -f "$BIN" "$BIN.prev"
        say "kept the previous binary ($old_version) as $BIN.prev"
    fi
    mv -f "$BIN.new" "$BIN"
    say "installed $BIN ($old_version -> $new_version)"
}

# The config file of the chosen service manager: created once, then only
# touched when --listen is given.
write_config() {
    _file=$1
    _template=$2
    if [ ! -f "$_file" ]; then
        mkdir -p "$(dirname "$_file")"
        cp "$_template" "$_file"
        chmod 0644 "$_file"
        config_set FIBD_LISTEN "${listen_arg:-$DEFAULT_LISTEN}" "$_file"
        say "created $_file"
    elif [ -n "$listen_arg" ]; then
        config_set FIBD_LISTEN "$listen_arg" "$_file"
        say "set FIBD_LISTEN=$listen_arg in $_file"
    else
        say "kept the existing $_file"
    fi
}

install_systemd() {
    install -m 0644 "$init_dir/systemd/fibd.service" "$UNIT"
    say "installed $UNIT"
    env_template=$(mktemp)
    cat >"$env_template" <<'EOF'
# Settings for fibd.service (see `fibd --help`); kept across upgrades.
# FIBD_WORKERS=16
# FIBD_BATCH_MAX=1024
# FIBD_IDLE_TIMEOUT_MS=15000
# FIBD_ACCESS_LOG=1
EOF
    write_config "$ENV_FILE" "$env_template"
    rm -f "$env_template"
    systemctl daemon-reload
    systemctl enable fibd.service >/dev/null 2>&1
    # restart also starts a stopped service, and picks up a new binary.
    if ! systemctl restart fibd.service; then
        service_logs >&2
        die "fibd.service did not start"
    fi
    say "enabled and (re)started fibd.service"
}

install_openrc() {
    install -m 0755 "$init_dir/openrc/fibd" "$INITD"
    say "installed $INITD"
    write_config "$CONFD" "$init_dir/openrc/fibd.confd"
    # supervise-daemon appends fibd's log to one file forever; rotate it where
    # logrotate is installed.
    if [ -d "$(dirname "$LOGROTATE")" ]; then
        install -m 0644 "$init_dir/openrc/fibd.logrotate" "$LOGROTATE"
        say "installed $LOGROTATE"
    else
        say "no $(dirname "$LOGROTATE"): $LOG_DIR/fibd.log will not be rotated"
    fi
    if ! rc-update show default 2>/dev/null | grep -q '^ *fibd '; then
        rc-update add fibd default >/dev/null
    fi
    if rc-service fibd status >/dev/null 2>&1; then
        action=restart
    else
        action=start
    fi
    if ! rc-service fibd "$action"; then
        service_logs >&2
        die "rc-service fibd $action failed"
    fi
    say "added fibd to the default runlevel and (re)started it"
}

service_logs() {
    if [ "$init" = systemd ]; then
        systemctl status --no-pager fibd.service 2>&1 | tail -n 20 || true
        journalctl -u fibd.service -n 20 --no-pager 2>/dev/null || true
    else
        rc-service fibd status 2>&1 || true
        tail -n 20 "$LOG_DIR/fibd.log" 2>/dev/null || true
    fi
}

wait_ready() {
    # Ask the address fibd was configured with; a wildcard listener is
    # reachable on loopback.
    listen=$(config_value FIBD_LISTEN "$config_file")
    listen=${listen:-$DEFAULT_LISTEN}
    port=${listen##*:}
    host=${listen%:*}
    case $host in
        0.0.0.0 | '') host=127.0.0.1 ;;
        '[::]') host='[::1]' ;;
    esac
    url="http://$host:$port/readyz"
    if command -v curl >/dev/null 2>&1; then
        probe() { curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; }
    elif command -v wget >/dev/null 2>&1; then
        probe() { wget -q -O /dev/null -T 2 "$url" 2>/dev/null; }
    else
        say "neither curl nor wget found: not waiting for $url"
        return 0
    fi
    _waited=0
    while ! probe; do
        if [ "$_waited" -ge "$READY_TIMEOUT" ]; then
            service_logs >&2
            die "fibd did not become ready at $url within ${READY_TIMEOUT}s"
        fi
        sleep 1
        _waited=$((_waited + 1))
    done
    say "fibd is ready at $url"
}

if [ "$mode" = uninstall ]; then
    uninstall
    exit 0
fi

init=$(detect_init)
if [ -n "$binary_arg" ]; then
    src_bin=$binary_arg
else
    src_bin=$(find_first -f "$here/fibd" ./fibd \
        "$here/../target/x86_64-unknown-linux-musl/release/fibd") ||
        die "no fibd binary next to this script or in ./; use --binary PATH"
fi
[ -f "$src_bin" ] || die "$src_bin does not exist"
# A bare name (--binary fibd-new) would be looked up in PATH when run for its version check,
# finding another binary or none: make the path absolute.
case $src_bin in
    /*) ;;
    *) src_bin=$(pwd)/$src_bin ;;
esac
# Check --listen before anything is changed: a typo would replace a working setting and
# leave the service restarting. `fibd probe /PATH` reads FIBD_LISTEN as fibd itself does
# and exits 2 when it cannot parse it (a parsed address is probed once, harmlessly).
if [ -n "$listen_arg" ]; then
    _rc=0
    FIBD_LISTEN=$listen_arg "$src_bin" probe / --timeout-ms 1 >/dev/null 2>&1 || _rc=$?
    [ "$_rc" != 2 ] || die "--listen must be IP:PORT (for example 127.0.0.1:8080), not '$listen_arg'"
fi
init_dir=$(find_first -d "$here/init" ./init "$here/../init") ||
    die "no init/ directory next to this script or in ./ (copy it with scp -r)"

say "installing for $init from $src_bin and $init_dir"
ensure_user
ensure_state_dir
install_binary
if [ "$init" = systemd ]; then
    config_file=$ENV_FILE
    install_systemd
else
    config_file=$CONFD
    install_openrc
fi
wait_ready
say "done: fibd runs under $init as user $SVC_USER, listening on $listen;" \
    "state in $STATE_DIR, settings in $config_file"
case ${listen%:*} in
    0.0.0.0 | '[::]' | '')
        say "note: fibd listens on all interfaces and has no authentication: anyone" \
            "who can reach port ${listen##*:} can move the cursor. Restrict it with" \
            "--listen 127.0.0.1:${listen##*:} (or a private address) or a firewall."
        ;;
esac
