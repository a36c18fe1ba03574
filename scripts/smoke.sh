#!/bin/sh
# Smoke test for any running fibd deployment.
#
# Usage: scripts/smoke.sh [BASE_URL]        (default http://127.0.0.1:8080)
#
# Needs only a POSIX shell, curl and the standard POSIX utilities, so an
# operator can run it from any box that reaches the service. It moves the
# cursor one step and back, so it leaves the index where it found it — as long
# as nobody else moves the cursor while it runs.
#
# Environment:
#   SMOKE_READY_TIMEOUT  seconds to wait for /readyz before giving up (default 10)
#   SMOKE_CURL_TIMEOUT   per-request timeout in seconds (default 5)
#
# Prints one line per check ("ok   NAME" or "FAIL NAME: why") and exits 1
# naming the failed checks, or 0 when all passed.
set -eu

BASE=${1:-http://127.0.0.1:8080}
BASE=${BASE%/}
READY_TIMEOUT=${SMOKE_READY_TIMEOUT:-10}
CURL_TIMEOUT=${SMOKE_CURL_TIMEOUT:-5}

# Known values from the contract; the whole sequence is also fetched from
# /fib?n=187 below, but these are checked against constants so a server that is
# consistently wrong with itself still fails.
F10=55
F50=12586269025
F93=12200160415121876738
F186=332825110087067562321196029789634457848

passed=0
failed=0
failed_names=

NL='
'

ok() {
    passed=$((passed + 1))
    echo "ok   $1"
}

bad() {
    failed=$((failed + 1))
    failed_names="${failed_names:+$failed_names, }$1"
    echo "FAIL $1: $2"
}

# req METHOD PATH [ACCEPT] -> sets $code (HTTP status, 000 when unreachable)
# and $body (response body without trailing newlines). One request only, so a
# state-changing call is never repeated.
req() {
    _accept=${3:-text/plain}
    if [ "$1" = HEAD ]; then
        # -X HEAD would make curl wait for a body the server never sends.
        code=$(curl -sS --max-time "$CURL_TIMEOUT" -I -o /dev/null \
            -w '%{http_code}' "$BASE$2" 2>/dev/null) || true
        code=${code:-000}
        body=
        return 0
    fi
    # The status goes on its own line after the body; split on the last newline.
    _out=$(curl -sS --max-time "$CURL_TIMEOUT" -X "$1" -H "Accept: $_accept" \
        -w "${NL}%{http_code}" "$BASE$2" 2>/dev/null) || true
    case $_out in
        *"$NL"*)
            code=${_out##*"$NL"}
            body=${_out%"$NL"*}
            # Drop the trailing newline(s) of the body itself.
            body=$(printf '%s' "$body")
            ;;
        *)
            code=${_out:-000}
            body=
            ;;
    esac
}

# expect NAME METHOD PATH STATUS [BODY]: one check of status and optional body.
expect() {
    req "$2" "$3"
    if [ "$code" != "$4" ]; then
        bad "$1" "$2 $3 gave HTTP $code, want $4"
        return 1
    fi
    if [ $# -ge 5 ] && [ "$body" != "$5" ]; then
        bad "$1" "$2 $3 gave body '$body', want '$5'"
        return 1
    fi
    ok "$1"
}

# fib_at I: the value at index I of the sequence fetched from /fib?n=187.
fib_at() {
    printf '%s\n' "$SEQ" | sed -n "$(($1 + 1))p"
}

# --- liveness and readiness -------------------------------------------------
expect healthz GET /healthz 200 ok || true

waited=0
while :; do
    req GET /readyz
    [ "$code" = 200 ] && break
    if [ "$waited" -ge "$READY_TIMEOUT" ]; then
        break
    fi
    sleep 1
    waited=$((waited + 1))
done
if [ "$code" = 200 ]; then
    ok "readyz (after ${waited}s)"
else
    bad readyz "GET /readyz gave HTTP $code after ${waited}s"
fi

expect index GET / 200 || true

# --- the whole sequence -----------------------------------------------------
req GET '/fib?n=187'
SEQ=$body
lines=$(printf '%s\n' "$SEQ" | wc -l | tr -d ' ')
if [ "$code" = 200 ] && [ "$lines" = 187 ] &&
    [ "$(fib_at 0)" = 0 ] && [ "$(fib_at 1)" = 1 ] && [ "$(fib_at 2)" = 1 ] &&
    [ "$(fib_at 10)" = "$F10" ] && [ "$(fib_at 186)" = "$F186" ]; then
    ok 'fib?n=187'
else
    bad 'fib?n=187' "HTTP $code, $lines lines, first '$(fib_at 0)', last '$(fib_at 186)'"
fi
req GET '/fib?n=0'
if [ "$code" = 200 ] && [ -z "$body" ]; then ok 'fib?n=0'; else bad 'fib?n=0' "HTTP $code body '$body'"; fi
req GET '/fib?n=188'
case $code in
    4??) ok 'fib?n=188 rejected' ;;
    *) bad 'fib?n=188 rejected' "HTTP $code, want 4xx" ;;
esac

# --- cursor semantics, relative to wherever the cursor is now --------------
cursor_ok=1
req GET /current
cur=$body
if [ "$code" = 200 ] && [ -n "$cur" ]; then
    ok "current ($cur)"
else
    bad current "GET /current gave HTTP $code body '$cur'"
    cursor_ok=0
fi
req HEAD /current
if [ "$code" = 200 ]; then ok 'HEAD current'; else bad 'HEAD current' "HTTP $code"; fi

if [ "$cursor_ok" = 1 ]; then
    req POST /next
    if [ "$code" = 409 ]; then
        # At the end of the sequence: the value must be F(186), and one step
        # back and forth must work.
        if [ "$cur" = "$F186" ]; then ok 'next at 186 is 409'; else bad 'next at 186 is 409' "409 but current is '$cur'"; fi
        expect 'previous from 186' POST /previous 200 "$(fib_at 185)" || true
        expect 'next back to 186' GET /next 200 "$F186" || true
    elif [ "$code" = 200 ]; then
        nxt=$body
        # (F(i), F(i+1)) pairs are unique even though F(1) = F(2), so the
        # value before and after one step pin down the index i.
        i=$(printf '%s\n' "$SEQ" | awk -v c="$cur" -v n="$nxt" \
            'prev "" == c "" && $0 "" == n "" { print NR - 2; exit } { prev = $0 }')
        if [ -n "$i" ]; then
            ok "next (index $i -> $((i + 1)))"
        else
            bad next "after '$cur' came '$nxt', which is not the next Fibonacci number"
        fi
        # Step back first in any case, so the cursor is restored even if the
        # check above failed.
        expect 'previous restores' GET /previous 200 "$cur" || true
        if [ -n "$i" ] && [ "$i" = 0 ]; then
            expect 'previous at 0 is 409' POST /previous 409 || true
            expect 'still at 0' GET /current 200 0 || true
        elif [ -n "$i" ]; then
            expect 'previous' POST /previous 200 "$(fib_at $((i - 1)))" || true
            expect 'next restores' POST /next 200 "$cur" || true
        fi
    else
        bad next "POST /next gave HTTP $code"
    fi
    expect 'cursor unchanged' GET /current 200 "$cur" || true
fi

# --- /fib/{n} known values and errors ------------------------------------------
expect 'fib/0' GET /fib/0 200 0 || true
expect 'fib/1' GET /fib/1 200 1 || true
expect 'fib/10' GET /fib/10 200 "$F10" || true
expect 'fib/50' GET /fib/50 200 "$F50" || true
expect 'fib/93' GET /fib/93 200 "$F93" || true
expect 'fib/186' GET /fib/186 200 "$F186" || true
expect 'fib/187 is 422' GET /fib/187 422 || true
expect 'fib/huge is 422' GET /fib/100000000000000000000000000000 422 || true
expect 'fib/abc is 400' GET /fib/abc 400 || true
expect 'fib/-1 is 400' GET /fib/-1 400 || true
expect 'fib/1.5 is 400' GET /fib/1.5 400 || true

req GET /fib/10 application/json
case $body in
    *55*) ok 'fib/10 as JSON' ;;
    *) bad 'fib/10 as JSON' "HTTP $code body '$body'" ;;
esac
ctype=$(curl -sS --max-time "$CURL_TIMEOUT" -o /dev/null -w '%{content_type}' \
    -H 'Accept: application/json' "$BASE/fib/10" 2>/dev/null) || true
case $ctype in
    application/json*) ok 'JSON content type' ;;
    *) bad 'JSON content type' "got '$ctype'" ;;
esac

# --- routing errors ------------------------------------------------------------
expect 'unknown path is 404' GET /no-such-path 404 || true
expect 'DELETE current is 405' DELETE /current 405 || true
allow=$(curl -sS --max-time "$CURL_TIMEOUT" -o /dev/null -D - -X DELETE "$BASE/current" 2>/dev/null |
    tr -d '\r' | sed -n 's/^[Aa][Ll][Ll][Oo][Ww]: *//p') || true
case $allow in
    *GET*) ok "405 has Allow ($allow)" ;;
    *) bad '405 has Allow' "Allow header '$allow'" ;;
esac
expect 'POST fib/10 is 405' POST /fib/10 405 || true

if [ "$failed" -gt 0 ]; then
    echo "smoke: $failed of $((passed + failed)) checks FAILED against $BASE: $failed_names" >&2
    exit 1
fi
echo "smoke: all $passed checks passed against $BASE"
