#!/usr/bin/env bash
# Counts the CPU instructions fibd spends per request, with valgrind's callgrind (issue 5:
# "profile before you optimise"). Throughput moves by tens of percent between runs on a
# shared machine; instruction counts move by about 1%, so they show what a change to
# fibd's own code is worth (docs/BENCHMARKS.md, "How much of the peak-read gap is fibd's").
#
#   scripts/profile.sh                    # GET /current, 10 s of load
#   PROFILE_LOAD=steps scripts/profile.sh # alternating /next and /previous, each durable
#   PROFILE_ALONE=1 scripts/profile.sh    # also tiny_http alone (bench/tiny_http_alone.rs)
#
# It builds fibd (and tiny_http alone) with fibd's release profile and target, but with
# symbols, into $PROFILE_TARGET_DIR; runs it under callgrind on core $PROFILE_SERVER_CPU with
# a temporary state file; loads it with wrk (100 connections) from core $PROFILE_LOAD_CPU;
# stops it, and prints the instructions per request, in all and in fibd's largest
# functions (inclusive). The callgrind files are kept for callgrind_annotate.
#
# Settings (environment):
#   PROFILE_LOAD [reads]       reads | steps
#   PROFILE_SECONDS [10]       seconds of load (under valgrind fibd serves ~7,000 requests/s)
#   PROFILE_ALONE [0]          1 also profiles tiny_http alone under the same load (reads)
#   PROFILE_OUT [target/profile/callgrind]   directory for the callgrind files
#   PROFILE_TARGET_DIR [target/profile]      cargo target directory of the symbol builds
#   PROFILE_SERVER_CPU [1], PROFILE_LOAD_CPU [0]
#   PROFILE_INSTALL [1]        0 fails instead of installing valgrind, wrk or curl
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/children.sh
. scripts/children.sh
root="$(pwd)"

LOAD="${PROFILE_LOAD:-reads}"
SECONDS_OF_LOAD="${PROFILE_SECONDS:-10}"
ALONE="${PROFILE_ALONE:-0}"
TARGET_DIR="${PROFILE_TARGET_DIR:-$root/target/profile}"
OUT="${PROFILE_OUT:-$TARGET_DIR/callgrind}"
SERVER_CPU="${PROFILE_SERVER_CPU:-1}"
LOAD_CPU="${PROFILE_LOAD_CPU:-0}"
INSTALL="${PROFILE_INSTALL:-1}"
# tiny_http starts a thread per connection, and under valgrind, which runs one thread at a
# time, a burst of them can pass valgrind's default limit of 500, which aborts the run.
VALGRIND_THREADS_MAX=4000
# Where the cursor is parked before a steps load: the middle of 0..=186, so alternating
# steps never reach a bound.
PARK_INDEX=93
# Functions of fibd listed in the summary: those above this many instructions per request.
LISTED_INSTRUCTIONS_MIN=100

log() { printf '[profile %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

case "$LOAD" in reads | steps) ;; *) die "PROFILE_LOAD must be reads or steps" ;; esac
case "$SECONDS_OF_LOAD$SERVER_CPU$LOAD_CPU" in
    *[!0-9]*) die "PROFILE_SECONDS and the CPUs must be plain integers" ;;
esac
[ "$SERVER_CPU" != "$LOAD_CPU" ] || die "server and load must be on different cores"
[ "$LOAD" = reads ] || [ "$ALONE" != 1 ] || die "tiny_http alone answers reads only"

work="$(mktemp -d "${TMPDIR:-/tmp}/fibd-profile.XXXXXX")"
pids=()
cleanup() {
    local rc=$?
    set +e
    for p in "${pids[@]}"; do is_child "$p" && kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

need_apt=()
command -v valgrind >/dev/null || need_apt+=(valgrind)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v curl >/dev/null || need_apt+=(curl)
command -v taskset >/dev/null || need_apt+=(util-linux)
if [ "${#need_apt[@]}" -gt 0 ]; then
    [ "$INSTALL" = 1 ] || die "missing: ${need_apt[*]} (PROFILE_INSTALL=0)"
    log "installing Debian packages: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2
fi
export PATH="$HOME/.cargo/bin:$PATH"

log "building fibd with symbols into $TARGET_DIR"
rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1 || true
export CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=1
build=(cargo build --release --locked --target x86_64-unknown-linux-musl --target-dir "$TARGET_DIR")
"${build[@]}" >&2
[ "$ALONE" != 1 ] || "${build[@]}" --example tiny_http_alone >&2
release="$TARGET_DIR/x86_64-unknown-linux-musl/release"
mkdir -p "$OUT"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits until a server on PORT answers, or fails after a minute (valgrind starts slowly).
await() {
    for _ in $(seq 300); do
        curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/$2" && return 0
        sleep 0.2
    done
    die "nothing answers on port $1"
}

# The instructions in the callgrind file FILE, in all.
# awk reads to the end: leaving early would end callgrind_annotate with SIGPIPE, a failure
# under pipefail.
total_instructions() {
    callgrind_annotate "$1" 2>/dev/null |
        awk '/PROGRAM TOTALS/ && !found { gsub(",", "", $1); print $1; found = 1 }'
}

# profile_fibd OUTFILE COUNTFILE: fibd under callgrind and wrk; writes the requests it
# answered to COUNTFILE. (Not run in a command substitution: a subshell's `pids+=` would be
# lost, and its processes left running by a `die`.)
profile_fibd() {
    local out="$1" port pid answered
    port="$(free_port)"
    taskset -c "$SERVER_CPU" valgrind --tool=callgrind --max-threads="$VALGRIND_THREADS_MAX" \
        --callgrind-out-file="$out" "$release/fibd" --listen "127.0.0.1:$port" \
        --state-file "$work/fibd.state" 2>"$work/fibd.log" &
    pid=$!
    pids+=("$pid")
    await "$port" healthz
    local target=/current script=()
    if [ "$LOAD" = steps ]; then
        for _ in $(seq "$PARK_INDEX"); do curl -s -o /dev/null -X POST "http://127.0.0.1:$port/next"; done
        target="" script=(-s "$root/bench/alternate.lua")
    fi
    taskset -c "$LOAD_CPU" wrk -t2 -c100 -d"${SECONDS_OF_LOAD}s" "${script[@]}" \
        "http://127.0.0.1:$port$target" >"$work/wrk.txt"
    # fibd counts every request it answered but its watchdog's probes (about one a second,
    # negligible here), the start-up probes and the parking included.
    answered="$(curl -s "http://127.0.0.1:$port/metrics" |
        awk '/^fibd_requests_total\{/ { n += $2 } END { printf "%d", n }')"
    kill -INT "$pid"
    wait "$pid" || die "fibd under valgrind exited non-zero (log: $(tail -3 "$work/fibd.log"))"
    [ "$answered" -gt 0 ] || die "fibd answered nothing"
    echo "$answered" >"$2"
}

# profile_alone OUTFILE COUNTFILE: tiny_http alone under callgrind and wrk; writes the
# requests answered to COUNTFILE.
profile_alone() {
    local out="$1" port pid fibd_port fibd_pid
    rm -f "$out" "$out".[0-9]*
    # It answers with fibd's own bytes for /current, taken from a fibd started for the purpose.
    fibd_port="$(free_port)"
    "$release/fibd" --listen "127.0.0.1:$fibd_port" --state-file "$work/alone.state" 2>/dev/null &
    fibd_pid=$!
    pids+=("$fibd_pid")
    await "$fibd_port" healthz
    curl -s -i "http://127.0.0.1:$fibd_port/current" >"$work/reply"
    kill -TERM "$fibd_pid"
    wait "$fibd_pid" || true
    port="$(free_port)"
    taskset -c "$SERVER_CPU" valgrind --tool=callgrind --max-threads="$VALGRIND_THREADS_MAX" \
        --callgrind-out-file="$out" "$release/examples/tiny_http_alone" "127.0.0.1:$port" 16 \
        "$work/reply" 2>"$work/alone.log" &
    pid=$!
    pids+=("$pid")
    await "$port" current
    taskset -c "$LOAD_CPU" wrk -t2 -c100 -d"${SECONDS_OF_LOAD}s" "http://127.0.0.1:$port/current" \
        >"$work/wrk-alone.txt"
    # It has no way to stop but a signal, and valgrind writes its file only on a clean exit
    # or when asked: ask, then kill it. Requests are those wrk counted, and the one above.
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill -KILL "$pid"
    wait "$pid" 2>/dev/null || true
    awk '/requests in/ { print $1 + 2; exit }' "$work/wrk-alone.txt" >"$2"
}

log "fibd under callgrind: $LOAD, ${SECONDS_OF_LOAD}s of wrk at 100 connections"
fibd_out="$OUT/fibd-$LOAD.callgrind"
profile_fibd "$fibd_out" "$work/fibd.requests"
fibd_requests="$(cat "$work/fibd.requests")"
fibd_total="$(total_instructions "$fibd_out")"
echo "fibd ($LOAD): $fibd_requests requests, $((fibd_total / fibd_requests)) instructions per request"
echo "  fibd's functions over $LISTED_INSTRUCTIONS_MIN instructions per request (inclusive):"
callgrind_annotate --inclusive=yes "$fibd_out" 2>/dev/null |
    awk -v n="$fibd_requests" -v min="$LISTED_INSTRUCTIONS_MIN" '
        /src\/[a-z_]+\.rs:fibd::/ && !/backtrace/ {
            c = $1; gsub(",", "", c)
            if (c / n >= min) {
                name = $0; sub(/.*:fibd::/, "fibd::", name); sub(/ [[(].*/, "", name)
                if (!(name in seen)) { seen[name] = 1; printf "  %8d  %s\n", c / n, name }
            }
        }'
echo "  callgrind file: $fibd_out"

if [ "$ALONE" = 1 ]; then
    log "tiny_http alone under callgrind: reads, ${SECONDS_OF_LOAD}s of wrk at 100 connections"
    alone_out="$OUT/tiny_http_alone.callgrind"
    profile_alone "$alone_out" "$work/alone.requests"
    alone_requests="$(cat "$work/alone.requests")"
    # callgrind_control's first dump goes to OUTFILE.1.
    alone_file="$alone_out.1"
    [ -s "$alone_file" ] || die "callgrind wrote no profile for tiny_http alone"
    alone_total="$(total_instructions "$alone_file")"
    echo "tiny_http alone: $alone_requests requests, $((alone_total / alone_requests)) instructions per request"
    echo "  fibd's own share: $(( fibd_total / fibd_requests - alone_total / alone_requests )) instructions per request"
    echo "  callgrind file: $alone_file"
fi
