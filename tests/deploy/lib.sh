# Shared helpers for the deployment tests; sourced by tests/deploy/*.sh.
# shellcheck shell=bash
#
# Each test prints lines starting with PASS, FAIL or SKIP; scripts/test-deploy.sh
# counts them. Everything a test starts is registered with on_exit so it is
# cleaned up however the test ends.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SMOKE="$REPO/scripts/smoke.sh"
# is_child: cleanups signal only processes that are still our children.
# shellcheck source=scripts/children.sh
. "$REPO/scripts/children.sh"
# Slow-to-build things (debootstrap roots, the systemd image) live outside the
# work tree so a second run is fast.
CACHE=${FIBD_TEST_CACHE:-/var/cache/fibd-test}
# Debian's mirror, as configured for apt on this machine.
MIRROR=${FIBD_TEST_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
# The binary under test; scripts/test-deploy.sh builds it and exports this.
FIBD_BIN=${FIBD_BIN:-$REPO/target/x86_64-unknown-linux-musl/release/fibd}
# A prefix for names of containers, volumes and images this run creates, so
# parallel runs never touch each other's.
RUN_ID="fibd-test-$$"

TEST_NAME=$(basename "$0" .sh)
WORK=$(mktemp -d "/tmp/$RUN_ID-$TEST_NAME.XXXXXX")

_cleanups=()
on_exit() { _cleanups+=("$1"); }
_run_cleanups() {
    local i
    for ((i = ${#_cleanups[@]} - 1; i >= 0; i--)); do
        eval "${_cleanups[i]}" >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
trap _run_cleanups EXIT
trap 'exit 130' INT TERM

pass() { echo "PASS $TEST_NAME: $1"; }
fail() { echo "FAIL $TEST_NAME: $1${2:+ -- $2}"; }
skip() { echo "SKIP $TEST_NAME: $1${2:+ -- $2}"; }
info() { echo "     $*"; }
# indent TEXT: show command output in the log, set off from the result lines.
indent() { printf '%s\n' "$1" | sed 's/^/     /'; }

# check NAME CMD...: PASS when CMD succeeds, FAIL (with its output) otherwise.
# (Locals are _-prefixed: bash scoping is dynamic, and CMD may be a function
# that reads the caller's variables, such as a container's $name.)
check() {
    local _check_name=$1 _check_out
    shift
    if _check_out=$("$@" 2>&1); then
        pass "$_check_name"
    else
        fail "$_check_name" "$(echo "$_check_out" | tail -n 5 | tr '\n' ' ')"
        return 1
    fi
}

# check_eq NAME GOT WANT
check_eq() {
    if [ "$2" = "$3" ]; then
        pass "$1"
    else
        fail "$1" "got '$2', want '$3'"
        return 1
    fi
}

# podman as this machine needs it (no systemd cgroup manager, runc).
pm() { podman --runtime runc --cgroup-manager cgroupfs "$@"; }
# shellcheck disable=SC2034 # used by the tests that source this file
PM_RUN=(--network host --ulimit nofile=20000:20000 --ulimit nproc=4096:4096)

# build_image IMAGE LOG: the scratch image from the real Containerfile and
# .containerignore, in a copy of the repository's build inputs laid out as in
# the repository (so cargo's target directory may be elsewhere), tagged IMAGE
# and removed when the test ends. --layers=false: no layer cache (podman 4.3
# reuses a cached COPY layer even when only --chown changed, which would hide
# a broken Containerfile), and no intermediate images left behind.
build_image() {
    local ctx="$WORK/ctx" version
    # Callers test the status, which turns set -e off in here: each step says so itself.
    mkdir -p "$ctx/target/x86_64-unknown-linux-musl/release" "$ctx/init/container" || return 1
    cp "$REPO/Containerfile" "$REPO/.containerignore" "$ctx/" || return 1
    cp -r "$REPO/init/container/state" "$ctx/init/container/" || return 1
    cp "$FIBD_BIN" "$ctx/target/x86_64-unknown-linux-musl/release/fibd" || return 1
    on_exit "pm rmi -f $1"
    version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n 1)
    pm build --pull=never --layers=false --format docker -f "$ctx/Containerfile" -t "$1" \
        --build-arg "VERSION=$version" "$ctx" >"$2" 2>&1
}

# A TCP port that no socket uses right now, below the kernel's ephemeral
# range so an outgoing connection cannot take it before fibd binds it. Only
# tests that cannot use port 0 (service managers and containers, whose address
# is in a config file or flag) need this.
free_port() {
    local low p i
    low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    for ((i = 0; i < 200; i++)); do
        p=$((10000 + RANDOM % (low - 10000)))
        if ! awk '{print $2}' /proc/net/tcp /proc/net/tcp6 2>/dev/null |
            grep -qi ":$(printf '%04X' "$p")\$"; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# http PATH-URL: the body of a GET, empty and non-zero on failure.
http() { curl -fsS --max-time 5 "$@"; }

# start_bare: run $FIBD_BIN on a free loopback port with $WORK/fibd.state,
# logging to $WORK/stderr; sets $pid, $port and $base. On failure it reports
# "fibd starts" as failed and returns 1.
start_bare() {
    "$FIBD_BIN" --listen 127.0.0.1:0 --state-file "$WORK/fibd.state" 2>"$WORK/stderr" &
    pid=$!
    # A test may leave it stopped (SIGSTOP): continue it, or SIGKILL alone reaps it.
    on_exit "is_child $pid && kill -CONT $pid; kill_wait $pid"
    wait_for 10 grep -q 'event=start' "$WORK/stderr" || true
    port=$(sed -n 's/.*event=start.* listen=[^ ]*:\([0-9][0-9]*\)\( .*\)\{0,1\}$/\1/p' "$WORK/stderr" | head -n 1)
    if [ -z "$port" ]; then
        fail "fibd starts" "$(tail -n 3 "$WORK/stderr" | tr '\n' ' ')"
        return 1
    fi
    # shellcheck disable=SC2034 # for the test that sourced this file
    base="http://127.0.0.1:$port"
}

# start_time BASE_URL: the serving process's start time from /metrics (seconds
# since the epoch, to the millisecond); empty when fibd does not answer. A
# restart changes it.
start_time() {
    curl -fsS --max-time 5 "$1/metrics" 2>/dev/null | sed -n 's/^process_start_time_seconds //p' || true
}

# now_us: microseconds since the epoch. (Deadlines are kept in these, not in $SECONDS,
# which counts whole seconds: a wait of N seconds measured in it may end after N - 1.)
now_us() {
    local t=$EPOCHREALTIME
    echo "${t//[!0-9]/}"
}

# wait_ready BASE_URL [SECONDS]: until /readyz answers 200.
wait_ready() {
    local deadline=$(($(now_us) + ${2:-20} * 1000000))
    while ! curl -fsS -o /dev/null --max-time 2 "$1/readyz" 2>/dev/null; do
        [ "$(now_us)" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

# kill_wait PID: SIGKILL a child and reap it, without bash's "Killed" notice; nothing if it
# is no longer our child.
kill_wait() {
    is_child "$1" || return 0
    { kill -9 "$1" && wait "$1"; } 2>/dev/null || true
}

# wait_for SECONDS CMD...: until CMD succeeds.
wait_for() {
    local deadline=$(($(now_us) + $1 * 1000000))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$(now_us)" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

# smoke NAME BASE_URL: run scripts/smoke.sh; its output goes to the log.
smoke() {
    local out rc=0
    out=$(sh "$SMOKE" "$2" 2>&1) || rc=$?
    if [ "$rc" = 0 ]; then
        pass "$1 ($(echo "$out" | tail -n 1))"
    else
        echo "$out" | grep -E '^FAIL' | sed 's/^/     smoke: /'
        fail "$1" "$(echo "$out" | tail -n 1)"
        return 1
    fi
}

# advance BASE_URL N: step the cursor N times forward, over one connection.
advance() {
    local i args=()
    [ "$2" -gt 0 ] || return 0
    for ((i = 0; i < $2; i++)); do
        args+=(-o /dev/null "$1/next")
    done
    curl -fsS --max-time 30 -X POST "${args[@]}"
}

now_ms() { echo $(($(now_us) / 1000)); }

# Known values of the sequence, for state checks. Shell arithmetic is 64-bit,
# so the few larger ones the tests use are spelled out.
fib() {
    case $1 in
        100) echo 354224848179261915075; return ;;
        185) echo 205697230343233228174223751303346572685; return ;;
        186) echo 332825110087067562321196029789634457848; return ;;
    esac
    [ "$1" -le 92 ] || { echo "fib: no value for $1" >&2; return 1; }
    local a=0 b=1 i t
    for ((i = 0; i < $1; i++)); do
        t=$((a + b))
        a=$b
        b=$t
    done
    echo "$a"
}

# need_root: SKIP the whole test (exit 0) when not root.
need_root() {
    if [ "$(id -u)" != 0 ]; then
        skip "all checks" "needs root (chroot, namespaces, podman)"
        exit 0
    fi
}

need_podman() {
    if ! command -v podman >/dev/null 2>&1; then
        skip "all checks" "podman is not installed and could not be installed"
        exit 0
    fi
}

need_debootstrap() {
    if ! command -v debootstrap >/dev/null 2>&1; then
        skip "all checks" "debootstrap is not installed and could not be installed"
        exit 0
    fi
}

# The key of a cached root: a hash of the recipe, so changing what goes into
# it rebuilds it instead of reusing a stale one.
recipe_key() { echo "$*" | sha256sum | cut -c1-12; }

# with_cache_lock NAME CMD...: serialise builds of one cache entry between
# runs (and with the prefetch that scripts/test-deploy.sh starts in the
# background); different entries build in parallel.
with_cache_lock() {
    mkdir -p "$CACHE"
    local name=$1
    shift
    (
        flock 9
        "$@"
    ) 9>"$CACHE/.lock-$name"
}

# debootstrap_root DIR INCLUDE: a minbase Debian root with extra packages.
_debootstrap_root() {
    local dir=$1 include=$2
    rm -rf "$dir.tmp"
    if ! debootstrap --variant=minbase --include="$include" "$SUITE" "$dir.tmp" "$MIRROR" \
        >"$dir.log" 2>&1; then
        tail -n 20 "$dir.log" >&2
        rm -rf "$dir.tmp"
        return 1
    fi
    # Package caches only make the copies slower.
    rm -rf "$dir.tmp"/var/cache/apt/archives/*.deb "$dir.tmp"/var/lib/apt/lists/*
    mv "$dir.tmp" "$dir"
}

SYSTEMD_RECIPE="minbase $SUITE systemd,systemd-sysv,curl v1"
SYSTEMD_IMAGE="localhost/fibd-test-systemd:$(recipe_key "$SYSTEMD_RECIPE")"
# logrotate (and cron, the alternative of its dependency we want) so that the shipped
# logrotate snippet is installed and run as on a real host.
OPENRC_PACKAGES=openrc,procps,curl,logrotate,cron
OPENRC_RECIPE="minbase $SUITE $OPENRC_PACKAGES v1"
OPENRC_ROOT="$CACHE/openrc-$(recipe_key "$OPENRC_RECIPE")"

_build_systemd_image() {
    pm image exists "$SYSTEMD_IMAGE" && return 0
    local dir
    dir="$CACHE/systemd-$(recipe_key "$SYSTEMD_RECIPE")"
    [ -d "$dir" ] || _debootstrap_root "$dir" systemd,systemd-sysv,curl
    tar -C "$dir" -c . | pm import - "$SYSTEMD_IMAGE" >/dev/null
    # The image now holds the root; the directory is not needed again.
    rm -rf "$dir"
    # Images of older recipes are dead weight.
    local old
    for old in $(pm images --format '{{.Repository}}:{{.Tag}}' | grep '^localhost/fibd-test-systemd:'); do
        [ "$old" = "$SYSTEMD_IMAGE" ] || pm rmi "$old" >/dev/null 2>&1 || true
    done
}

_build_openrc_root() {
    [ -d "$OPENRC_ROOT" ] && return 0
    _debootstrap_root "$OPENRC_ROOT" "$OPENRC_PACKAGES"
    # Roots of older recipes are dead weight.
    local old
    for old in "$CACHE"/openrc-*; do
        case $old in "$OPENRC_ROOT" | "$OPENRC_ROOT".log) ;; *) rm -rf "$old" ;; esac
    done
}

ensure_systemd_image() { with_cache_lock systemd _build_systemd_image; }
ensure_openrc_root() { with_cache_lock openrc _build_openrc_root; }

# openrc_root DIR: a private copy of the cached OpenRC root at DIR. Like Debian
# with ifupdown, nothing in it provides "net" (fibd's depend() only uses it).
openrc_root() {
    local dir=$1
    cp -a "$OPENRC_ROOT" "$dir"
    mkdir -p "$dir/etc/conf.d"
}

# start_openrc_ns ROOT: a PID and mount namespace rooted at ROOT that looks
# like a booted OpenRC system to rc-service (a fresh /run with OpenRC's state
# folders and softlevel); sets nspid for inns.
start_openrc_ns() {
    # shellcheck disable=SC2016 # the script runs inside the namespace
    unshare --kill-child --pid --fork --mount --mount-proc --root="$1" /bin/sh -c '
        mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
        for d in started starting stopping inactive wasinactive failed \
            exclusive scheduled options daemons tmp; do
            mkdir -p /run/openrc/$d
        done
        echo default >/run/openrc/softlevel
        # PID 1 must reap orphans: supervise-daemon daemonizes, and its stop
        # waits for the old supervisor to be gone, not a zombie. The shell
        # reaps every exited child each time it waits for sleep.
        while :; do sleep 1; done' >/dev/null 2>&1 &
    local up=$!
    # Killed by the cleanup; bash need not report that.
    disown "$up"
    on_exit "kill_wait $up"
    nspid=
    local i
    for ((i = 0; i < 50; i++)); do
        nspid=$(awk '{print $1}' "/proc/$up/task/$up/children" 2>/dev/null)
        [ -n "$nspid" ] && break
        sleep 0.1
    done
    [ -n "$nspid" ] || return 1
    # Killing the namespace's init kills everything in it.
    on_exit "is_child $nspid $up && kill -9 $nspid"
    wait_for 10 inns test -f /run/openrc/softlevel
}
inns() { nsenter -t "$nspid" -m -p -r -w -- "$@"; }
