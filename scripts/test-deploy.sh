#!/usr/bin/env bash
# Deployment tests (issue 4): the static binary in an empty chroot, a failing disk
# (strace injects EIO into the real binary's fdatasync), a connection flood past a task
# limit (prlimit --nproc), clients that reset their connections early, a stop while the
# accept thread is stalled and the listen queue full, an accept that times out, the scratch
# container under podman, the systemd unit under a real systemd (in a container), the OpenRC
# service under a real supervise-daemon (in a PID and mount namespace), install.sh under
# both, and scripts/smoke.sh itself.
#
# Usage: scripts/test-deploy.sh [TEST...]   e.g. scripts/test-deploy.sh 30-container
#
# Installs what it needs with apt-get (CI is a fresh Debian 12 as root). The
# slow parts (debootstrap roots, the systemd image) are cached in
# $FIBD_TEST_CACHE (default /var/cache/fibd-test) and podman's storage, keyed
# by their recipe. Tests print PASS/FAIL/SKIP lines; the last line is
# "N passed, M failed" and the exit status is non-zero on any failure.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
# shellcheck source=scripts/children.sh
. scripts/children.sh
export FIBD_TEST_CACHE=${FIBD_TEST_CACHE:-/var/cache/fibd-test}
started=$SECONDS

say() { echo "test-deploy: $*"; }

# --- tools ----------------------------------------------------------------------
# apt_install PKG...: install the packages whose command is missing. Returns
# non-zero when that is impossible, so callers can decide what to skip.
apt_updated=no
apt_install() {
    [ $# -gt 0 ] || return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        say "cannot install $* (not root, or no apt-get)"
        return 1
    fi
    if [ "$apt_updated" = no ]; then
        apt-get update -qq >/dev/null || true
        apt_updated=yes
    fi
    say "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 ||
        {
            say "apt-get install $* failed"
            return 1
        }
}

missing=()
for pair in curl:curl file:file flock:util-linux unshare:util-linux \
    nsenter:util-linux shellcheck:shellcheck debootstrap:debootstrap strace:strace \
    python3:python3; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    # shellcheck disable=SC2046 # package names have no spaces
    apt_install $(printf '%s\n' "${missing[@]}" | sort -u) || true
fi
# podman separately: if it cannot be had, only the container tests skip.
if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1; then
    apt_install podman runc || true
fi
for tool in curl file; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        say "$tool is required and could not be installed"
        echo "0 passed, 1 failed"
        exit 1
    fi
done

# --- prefetch ---------------------------------------------------------------------
# Building the cached roots takes a minute each when cold; start them now so
# they overlap with the cargo build and the quick tests. The tests that need
# them wait on the same lock, and build them themselves if this failed. Each
# runs in its own process group so that an early exit stops debootstrap too.
logdir=$(mktemp -d /tmp/fibd-test-deploy.XXXXXX)
prefetch=()
cleanup() {
    local p
    for p in "${prefetch[@]}"; do
        if is_child "$p"; then kill -- "-$p" 2>/dev/null || true; fi
    done
    rm -rf "$logdir"
}
trap cleanup EXIT
# Only for a full run: a single test builds what it needs itself.
if [ $# = 0 ] && [ "$(id -u)" = 0 ] && command -v debootstrap >/dev/null 2>&1; then
    if command -v podman >/dev/null 2>&1; then
        setsid bash tests/deploy/prepare.sh systemd >"$logdir/prepare-systemd.log" 2>&1 &
        prefetch+=($!)
    fi
    setsid bash tests/deploy/prepare.sh openrc >"$logdir/prepare-openrc.log" 2>&1 &
    prefetch+=($!)
fi

# --- build -------------------------------------------------------------------------
if ! sh scripts/build-static.sh >"$logdir/build.log" 2>&1; then
    tail -n 30 "$logdir/build.log"
    echo "FAIL build-static: scripts/build-static.sh failed"
    echo "0 passed, 1 failed"
    exit 1
fi
tail -n 1 "$logdir/build.log"
export FIBD_BIN
FIBD_BIN=$(cd "$REPO" && realpath "${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-musl/release/fibd")

# --- tests -------------------------------------------------------------------------
if [ $# -gt 0 ]; then
    tests=()
    for t in "$@"; do tests+=("tests/deploy/${t%.sh}.sh"); done
else
    tests=(tests/deploy/[0-9]*.sh)
fi

passed=0
failed=0
skipped=0
for t in "${tests[@]}"; do
    name=$(basename "$t" .sh)
    say "running $name"
    t0=$SECONDS
    rc=0
    bash "$t" >"$logdir/$name.out" 2>&1 || rc=$?
    cat "$logdir/$name.out"
    p=$(grep -c '^PASS ' "$logdir/$name.out" || true)
    f=$(grep -c '^FAIL ' "$logdir/$name.out" || true)
    s=$(grep -c '^SKIP ' "$logdir/$name.out" || true)
    # A test that dies without saying FAIL must still count as failed.
    if [ "$rc" != 0 ]; then
        echo "FAIL $name: exited with status $rc"
        f=$((f + 1))
    fi
    if [ $((p + f + s)) = 0 ]; then
        echo "FAIL $name: ran no checks"
        f=1
    fi
    passed=$((passed + p))
    failed=$((failed + f))
    skipped=$((skipped + s))
    say "$name: $p passed, $f failed, $s skipped in $((SECONDS - t0)) s"
done

say "finished in $((SECONDS - started)) s; $skipped skipped"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
