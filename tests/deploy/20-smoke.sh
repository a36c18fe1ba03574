#!/usr/bin/env bash
# scripts/smoke.sh itself: it passes against the real fibd wherever the cursor
# is (including both ends), leaves the cursor where it was, and fails, naming
# the check, against a server that is down or gives wrong answers. Also lints
# the deployment shell scripts.
# shellcheck source=tests/deploy/lib.sh
. "$(dirname "$0")/lib.sh"

if command -v shellcheck >/dev/null 2>&1; then
    check "shellcheck of the deployment scripts" shellcheck -x \
        "$REPO"/scripts/*.sh "$REPO/.ci/run" \
        "$REPO"/tests/deploy/{[0-9]*,lib,prepare}.sh "$REPO/init/openrc/fibd" || true
else
    skip "shellcheck of the deployment scripts" "shellcheck is not installed"
fi

start_bare || exit 0

# Indexes where smoke.sh must take different paths: the start (409 on
# previous), F(1) = F(2) = 1 (ambiguous value), the middle, the end (409 on
# next) and the one before it.
at=0
for index in 0 1 2 3 100 185 186; do
    advance "$base" $((index - at)) || true
    at=$index
    if out=$(sh "$SMOKE" "$base" 2>&1); then
        after=$(http "$base/current" || true)
        check_eq "passes at index $index and leaves the cursor there" "$after" "$(fib "$index")" || true
    else
        fail "passes at index $index" "$(echo "$out" | grep '^FAIL' | head -n 3 | tr '\n' ' ')"
    fi
done

# Down: nothing listens on the port any more.
kill_wait "$pid"
rc=0
out=$(SMOKE_READY_TIMEOUT=1 sh "$SMOKE" "$base" 2>&1) || rc=$?
if [ "$rc" != 0 ] && grep -q '^FAIL healthz' <<<"$out"; then
    pass "fails naming healthz when the service is down"
else
    fail "fails naming healthz when the service is down" "exit $rc: $(echo "$out" | tail -n 1)"
fi

# Wrong answers: a static file server that says ok everywhere but gets
# F(10) wrong must not pass.
if command -v python3 >/dev/null 2>&1; then
    mkdir -p "$WORK/www/fib"
    echo ok >"$WORK/www/healthz"
    echo ok >"$WORK/www/readyz"
    echo 56 >"$WORK/www/fib/10"
    port=$(free_port)
    (cd "$WORK/www" && exec python3 -m http.server --bind 127.0.0.1 "$port") >/dev/null 2>&1 &
    on_exit "kill_wait $!"
    wait_for 10 curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" || true
    rc=0
    out=$(sh "$SMOKE" "http://127.0.0.1:$port" 2>&1) || rc=$?
    if [ "$rc" != 0 ] && grep -q '^FAIL fib/10:' <<<"$out" &&
        grep -q '^ok   healthz' <<<"$out" &&
        echo "$out" | tail -n 1 | grep -q 'FAILED.*fib/10'; then
        pass "fails naming fib/10 when F(10) is wrong"
    else
        fail "fails naming fib/10 when F(10) is wrong" "exit $rc: $(echo "$out" | tail -n 1)"
    fi
else
    skip "fails when F(10) is wrong" "python3 is not installed"
fi
