#!/usr/bin/env bash
# fibd benchmark (issue 5): reproduces the original load test on a 1 CPU / 512 MB box and
# measures how far past it fibd goes, next to Debian's nginx on the same core.
#
#   scripts/bench.sh                      # full run, 30 s per load phase (about 6 minutes)
#   BENCH_DURATION=5 scripts/bench.sh     # quick run
#
# What it does, in order (docs/BENCHMARKS.md explains every row):
#   0. installs what it lacks: wrk, nginx-light, gnuplot-nox, linux-perf (Debian), oha
#      (crates.io); builds the static musl binary with scripts/build-static.sh and, when
#      podman works, the FROM-scratch image from the Containerfile;
#   1. binary size, and start-up-to-ready time of the bare binary (20 starts);
#   2. fibd in the box: the podman container with --cpus 1 --memory 512m pinned to
#      core $BENCH_SERVER_CPU, else the bare binary under taskset on that core. Every load
#      generator runs under taskset on the other core ($BENCH_LOAD_CPU);
#   3. scenarios: seed (three constant-rate oha runs at once, latency corrected for
#      coordinated omission) on fibd then on nginx (one worker, fixed body, same core),
#      the disk's floor under the steps' latency (bench/disk_floor.py), the seed on
#      tiny_http alone (bench/tiny_http_alone.rs: fibd's reply, no work of its own),
#      peak read (wrk) on fibd, on tiny_http alone and on nginx, peak durable write (wrk,
#      alternating /next and /previous), 5,000 idle connections, RSS throughout; then a
#      fresh fibd with --batch-max 1 for the write scenario with group commit off, and one
#      with its state file on tmpfs (where fdatasync costs nothing) for the disk's share;
#   4. bench/report.py prints one table row per scenario, writes $BENCH_OUT/latest.json,
#      and gnuplot draws the seed latency-percentile plot to docs/img/seed-latency.svg.
#
# Loopback only. Every phase is bounded in time (and wrapped in `timeout`), and every
# process and container it starts is stopped by the EXIT trap, by its own id.
#
# Environment (defaults in brackets):
#   BENCH_DURATION [30]      seconds per load phase
#   BENCH_RATE [1000]        seed scenario: requests/s per route
#   BENCH_CONNS [100]        connections per route / per peak run
#   BENCH_IDLE_CONNS [5000]  idle connections for the memory case
#   BENCH_ISOLATION [auto]   podman | taskset | auto (podman if it can run a container)
#   BENCH_SERVER_CPU [0]     core for fibd and nginx;  BENCH_LOAD_CPU [1] core for the load
#   BENCH_WRK_THREADS [2]    wrk threads (the original test used 2)
#   BENCH_READ_ROUNDS [3]    peak read: interleaved fibd/alone/nginx rounds sharing BENCH_DURATION
#   BENCH_ALONE_THREADS [16] threads of the tiny_http-alone server (fibd's default worker count)
#   BENCH_OUT [bench/results]  where latest.json goes;  BENCH_PLOT [docs/img/seed-latency.svg]
#   BENCH_KEEP_RAW [0]       1 keeps the raw tool outputs in $BENCH_OUT/raw/
#   BENCH_INSTALL [1]        0 skips package installs (fails if a tool is missing)
#   FIBD_BIN                 benchmark this binary instead of building one
#   CARGO_TARGET_DIR         honoured by the build, as cargo does
set -Eeuo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/children.sh
. scripts/children.sh

DURATION="${BENCH_DURATION:-30}"
RATE="${BENCH_RATE:-1000}"
CONNS="${BENCH_CONNS:-100}"
IDLE_CONNS="${BENCH_IDLE_CONNS:-5000}"
ISOLATION="${BENCH_ISOLATION:-auto}"
SERVER_CPU="${BENCH_SERVER_CPU:-0}"
LOAD_CPU="${BENCH_LOAD_CPU:-1}"
WRK_THREADS="${BENCH_WRK_THREADS:-2}"
READ_ROUNDS="${BENCH_READ_ROUNDS:-3}"
ALONE_THREADS="${BENCH_ALONE_THREADS:-16}"
OUT="${BENCH_OUT:-$root/bench/results}"
PLOT="${BENCH_PLOT:-$root/docs/img/seed-latency.svg}"
KEEP_RAW="${BENCH_KEEP_RAW:-0}"
INSTALL="${BENCH_INSTALL:-1}"
# Hard ceiling for any one load phase: its own duration plus slack for start and drain.
PHASE_TIMEOUT=$((DURATION + 60))
# Where the cursor is parked before step-heavy runs: the middle of 0..=186, so a random
# walk (seed) or the in-flight skew of alternating steps (peak write) rarely reaches a bound.
PARK_INDEX=93

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

case "$DURATION$RATE$CONNS$IDLE_CONNS$SERVER_CPU$LOAD_CPU$WRK_THREADS$READ_ROUNDS$ALONE_THREADS" in
    *[!0-9]*) die "BENCH_* numbers must be plain integers" ;;
esac
[ "$SERVER_CPU" != "$LOAD_CPU" ] || die "server and load must be on different cores"
[ "$READ_ROUNDS" -ge 1 ] || die "BENCH_READ_ROUNDS must be at least 1"
if [ "$ALONE_THREADS" -lt 1 ] || [ "$ALONE_THREADS" -gt 64 ]; then die "BENCH_ALONE_THREADS must be 1..=64"; fi
# Each peak-read round gets an equal share of BENCH_DURATION, 2 s at the least.
READ_SECONDS=$((DURATION / READ_ROUNDS))
[ "$READ_SECONDS" -ge 2 ] || READ_SECONDS=2
[ "$(nproc --all)" -ge 2 ] || die "needs two cores: one for the server, one for the load"

# ---------------------------------------------------------------------------------------
# Cleanup: everything started is recorded here and stopped by id on exit.
work="$(mktemp -d "${TMPDIR:-/tmp}/fibd-bench.XXXXXX")"
raw="$work/raw"
mkdir -p "$raw"
pids=()
containers=()
shm_work="" # the tmpfs directory of the no-disk write phase, once made
cleanup() {
    local rc=$?
    set +e
    for c in "${containers[@]}"; do
        podman rm -f -t 2 "$c" >/dev/null 2>&1
    done
    for p in "${pids[@]}"; do
        if is_child "$p"; then
            kill -TERM "$p" 2>/dev/null
            for _ in 1 2 3 4 5 6 7 8 9 10; do is_child "$p" || break; sleep 0.2; done
            if is_child "$p"; then kill -KILL "$p" 2>/dev/null; fi
        fi
    done
    wait 2>/dev/null
    if [ "$KEEP_RAW" = 1 ] && [ -d "$raw" ]; then
        rm -rf "$OUT/raw" && mkdir -p "$OUT" && cp -r "$raw" "$OUT/raw"
    fi
    rm -rf "$work"
    if [ -n "$shm_work" ]; then rm -rf "$shm_work"; fi
    exit "$rc"
}
trap cleanup EXIT
# Under set -e a failed command ends the script; say which one, instead of ending silently.
trap 'log "error: line $LINENO: \"$BASH_COMMAND\" failed (exit $?)"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

kv() { printf '%s=%s\n' "$1" "$2" >>"$raw/kv.txt"; }
: >"$raw/kv.txt"

# ---------------------------------------------------------------------------------------
# 0. Tools
need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v nginx >/dev/null || need_apt+=(nginx-light)
command -v gnuplot >/dev/null || need_apt+=(gnuplot-nox)
command -v perf >/dev/null || need_apt+=(linux-perf)
command -v taskset >/dev/null || need_apt+=(util-linux)
command -v file >/dev/null || need_apt+=(file)
command -v curl >/dev/null || need_apt+=(curl)
command -v nstat >/dev/null || need_apt+=(iproute2)
if [ "${#need_apt[@]}" -gt 0 ]; then
    [ "$INSTALL" = 1 ] || die "missing: ${need_apt[*]} (BENCH_INSTALL=0)"
    log "installing Debian packages: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    # Debian's nginx package starts a service on port 80 where a service manager runs;
    # policy-rc.d keeps it from doing so, as this script starts its own nginx.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2
        rm -f /usr/sbin/policy-rc.d
    else
        apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2
    fi
fi
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v oha >/dev/null; then
    [ "$INSTALL" = 1 ] || die "missing: oha (BENCH_INSTALL=0)"
    log "installing oha from crates.io (takes a few minutes)"
    cargo install oha --locked --version '^1.16' >&2
fi
perf_ok=0
# Counting a syscall tracepoint needs tracefs and permission; probe it on a 1-process run.
if perf stat -e syscalls:sys_enter_fdatasync -x, true >/dev/null 2>&1; then perf_ok=1; fi

# ---------------------------------------------------------------------------------------
# 0b. The binary and the image
if [ -n "${FIBD_BIN:-}" ]; then
    bin="$FIBD_BIN"
else
    log "building the static binary (scripts/build-static.sh)"
    scripts/build-static.sh >&2
    bin="${CARGO_TARGET_DIR:-$root/target}/x86_64-unknown-linux-musl/release/fibd"
fi
[ -x "$bin" ] || die "no fibd binary at $bin"
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
binary_desc="$(file -b "$bin")"
case "$binary_desc" in
    *"statically linked"* | *"static-pie linked"*) kv binary_static 1 ;;
    *) kv binary_static 0 ;;
esac
kv binary_bytes "$(stat -c %s "$bin")"
kv binary_path "$bin"

# tiny_http alone (the peak-read reference below), from this source tree and with fibd's release profile and target.
log "building bench/tiny_http_alone.rs"
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
    [ "$INSTALL" = 1 ] || die "missing: the musl target (BENCH_INSTALL=0)"
    rustup target add x86_64-unknown-linux-musl >&2
fi
cargo build --release --locked --target x86_64-unknown-linux-musl --example tiny_http_alone >&2
alone_bin="${CARGO_TARGET_DIR:-$root/target}/x86_64-unknown-linux-musl/release/examples/tiny_http_alone"
[ -x "$alone_bin" ] || die "no tiny_http_alone binary at $alone_bin"
# Absolute, as podman takes a relative source of -v for the name of a volume.
alone_bin="$(cd "$(dirname "$alone_bin")" && pwd)/$(basename "$alone_bin")"

# The podman invocation this machine needs: runc and cgroupfs (no systemd here), host
# networking (loopback), and explicit limits so the defaults cannot cap the 5,000-
# connection case: fibd's HTTP library (tiny_http) runs one thread per open connection,
# and podman's default pids limit (2048) would refuse threads long before 512 MB is used.
podman_global=(--runtime runc --cgroup-manager cgroupfs)
# The box itself: the brief's 1 CPU and 512 MB, on the server core, loopback networking.
# No health check: where podman has systemd to run the image's, it would add a probe every
# 15 s to some phases and not others; where it has none, it logs an error at every start.
podman_box=(--network host --cpus 1 --cpuset-cpus "$SERVER_CPU"
    --memory 512m --memory-swap 512m --pids-limit 16384
    --ulimit nofile=20000:20000 --ulimit nproc=16384:16384 --read-only --no-healthcheck)
image="localhost/fibd-bench:latest"
if [ "$ISOLATION" = auto ] || [ "$ISOLATION" = podman ]; then
    if command -v podman >/dev/null && [ -f Containerfile ]; then
        # Build context: the project's Containerfile and the files it copies, with the
        # binary under test placed where the Containerfile expects it.
        ctx="$work/image"
        mkdir -p "$ctx/target/x86_64-unknown-linux-musl/release" "$ctx/init/container/state"
        cp Containerfile "$ctx/"
        cp "$bin" "$ctx/target/x86_64-unknown-linux-musl/release/fibd"
        if podman build -q --format docker -t "$image" "$ctx" >"$raw/podman-build.log" 2>&1; then
            ISOLATION=podman
        elif [ "$ISOLATION" = podman ]; then
            cat "$raw/podman-build.log" >&2
            die "podman build failed"
        else
            log "podman build failed; falling back to taskset (see BENCH_KEEP_RAW=1 podman-build.log)"
            ISOLATION=taskset
        fi
    elif [ "$ISOLATION" = podman ]; then
        die "podman or Containerfile missing"
    else
        ISOLATION=taskset
    fi
fi
kv isolation "$ISOLATION"
log "isolation: $ISOLATION; server core $SERVER_CPU, load core $LOAD_CPU; ${DURATION}s phases"

# The server side may hold 5,000+ sockets; the load side too.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# ---------------------------------------------------------------------------------------
# Server control. start_fibd NAME [fibd flags...] sets fibd_port and fibd_pid (host pid).
# The state directory is made under $state_root: the work directory, on the disk under test.
fibd_port=""
fibd_pid=""
fibd_name=""
state_dir=""
state_root="$work"
start_fibd() {
    local name="$1"; shift
    state_dir="$state_root/state-$name"
    mkdir -p "$state_dir"
    local logf="$raw/fibd-$name.log"
    fibd_name="$name"
    if [ "$ISOLATION" = podman ]; then
        local cname="fibd-bench-$$-$name"
        # The image runs as 65532; the host directory mounted as its state dir must be its.
        chown 65532:65532 "$state_dir"
        containers+=("$cname")
        podman "${podman_global[@]}" run -d --rm --name "$cname" "${podman_box[@]}" \
            -v "$state_dir:/var/lib/fibd" \
            -e FIBD_LISTEN=127.0.0.1:0 -e FIBD_STATE_FILE=/var/lib/fibd/fibd.state \
            "$image" "$@" >/dev/null
        fibd_pid="$(podman inspect -f '{{.State.Pid}}' "$cname")"
        for _ in $(seq 1 100); do
            podman logs "$cname" >"$logf" 2>&1 || true
            grep -q 'event=start' "$logf" && break
            sleep 0.05
        done
    else
        taskset -c "$SERVER_CPU" "$bin" --listen 127.0.0.1:0 \
            --state-file "$state_dir/fibd.state" "$@" 2>"$logf" &
        fibd_pid=$!
        pids+=("$fibd_pid")
        for _ in $(seq 1 100); do
            grep -q 'event=start' "$logf" && break
            sleep 0.05
        done
    fi
    fibd_port="$(grep -m 1 -o 'listen=127\.0\.0\.1:[0-9]*' "$logf" | cut -d: -f2 || true)"
    [ -n "$fibd_port" ] || { cat "$logf" >&2; die "fibd ($name) did not log its start line"; }
    for _ in $(seq 1 100); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$fibd_port/readyz")" = 200 ] && return 0
        sleep 0.05
    done
    die "fibd ($name) not ready"
}

stop_fibd() {
    if [ "$ISOLATION" = podman ]; then
        podman logs "fibd-bench-$$-$fibd_name" >"$raw/fibd-$fibd_name.log" 2>&1 || true
        podman stop -t 5 "fibd-bench-$$-$fibd_name" >/dev/null 2>&1 || true
    else
        kill -TERM "$fibd_pid" 2>/dev/null || true
        wait "$fibd_pid" 2>/dev/null || true
    fi
}

# Peak and current resident set size of a process, in KiB, from /proc.
rss() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }
# Resets the process's peak-RSS mark (VmHWM) to its current RSS (proc(5): clear_refs 5),
# so each memory figure is the peak of its own phase, not of everything before it.
reset_peak() { echo 5 >"/proc/$1/clear_refs"; }

# CPU accounting per phase, so a figure can be trusted or discounted: how busy the server
# core was, how much of that was the server itself (the rest is foreign load: anything else
# running on this machine), how busy the load core was (near 100% means the load generator,
# not the server, may be the limit), and hypervisor steal. From /proc/stat and the server's
# /proc/PID/stat (utime + stime of all its threads), in clock ticks.
cpu_snap() { # cpu_snap PID -> "srv_busy srv_all srv_steal srv_softirq load_busy load_all proc_ticks"
    local s l p
    s="$(awk -v c="cpu$SERVER_CPU" '$1 == c { b = $2+$3+$4+$7+$8; print b, b+$5+$6+$9, $9, $8 }' /proc/stat)"
    l="$(awk -v c="cpu$LOAD_CPU" '$1 == c { b = $2+$3+$4+$7+$8; print b, b+$5+$6+$9 }' /proc/stat)"
    p="$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0)"
    echo "$s $l $p"
}
phase_pid=""
phase_snap=""
# TCP counters (machine-wide): a listen-queue overflow makes the client retry its SYN after
# 1 s, which shows up as a 1 s latency outlier; these say whether that happened.
tcp_snap() {
    nstat -asz TcpExtListenOverflows TcpExtTCPSynRetrans 2>/dev/null |
        awk '$1 == "TcpExtListenOverflows" { o = $2 } $1 == "TcpExtTCPSynRetrans" { r = $2 }
             END { print o + 0, r + 0 }'
}
phase_tcp=""
phase_begin() { phase_pid="$1"; phase_snap="$(cpu_snap "$1")"; phase_tcp="$(tcp_snap)"; }
phase_end() { # phase_end TAG: records TAG_cpu_* percentages
    local now tcp_now
    now="$(cpu_snap "$phase_pid")"
    tcp_now="$(tcp_snap)"
    read -r a_lo a_sr <<<"$phase_tcp"
    read -r b_lo b_sr <<<"$tcp_now"
    kv "${1}_tcp_listen_overflows" "$((b_lo - a_lo))"
    kv "${1}_tcp_syn_retrans" "$((b_sr - a_sr))"
    read -r a_sb a_sa a_st a_si a_lb a_la a_p <<<"$phase_snap"
    read -r b_sb b_sa b_st b_si b_lb b_la b_p <<<"$now"
    local sa=$((b_sa - a_sa)) la=$((b_la - a_la))
    [ "$sa" -gt 0 ] && [ "$la" -gt 0 ] || return 0
    kv "${1}_cpu_server_core_pct" "$(( 100 * (b_sb - a_sb) / sa ))"
    kv "${1}_cpu_server_proc_pct" "$(( 100 * (b_p - a_p) / sa ))"
    # Softirq time is mostly the loopback network work done on the server's behalf;
    # shown apart, and not counted as foreign.
    kv "${1}_cpu_softirq_pct" "$(( 100 * (b_si - a_si) / sa ))"
    kv "${1}_cpu_foreign_pct" "$(( 100 * ((b_sb - a_sb) - (b_si - a_si) - (b_p - a_p)) / sa ))"
    kv "${1}_cpu_steal_pct" "$(( 100 * (b_st - a_st) / sa ))"
    kv "${1}_cpu_load_core_pct" "$(( 100 * (b_lb - a_lb) / la ))"
}

fibd_get() { curl -s --max-time 5 -H 'Accept: application/json' "http://127.0.0.1:$fibd_port$1"; }
index_now() { fibd_get /current | sed -n 's/.*"index":\([0-9]*\).*/\1/p'; }

# Moves the cursor to PARK_INDEX with single steps (each durable; ~100 requests at most).
park() {
    local i
    i="$(index_now)"
    [ -n "$i" ] || die "could not read the cursor index"
    while [ "$i" -lt "$PARK_INDEX" ]; do fibd_get /next >/dev/null; i=$((i + 1)); done
    while [ "$i" -gt "$PARK_INDEX" ]; do fibd_get /previous >/dev/null; i=$((i - 1)); done
    [ "$(index_now)" = "$PARK_INDEX" ] || die "parking the cursor failed"
}

# Commit counters, taken before and after a write run, from three independent sources:
#   metrics: fibd_commit_steps_sum/_count from GET /metrics (absent before metrics land);
#   seq: the state file's highest slot sequence number, one per commit (read off disk);
#   perf: fdatasync syscalls counted by the kernel tracepoint while the run lasts.
metric() { # metric NAME -> value or empty
    # awk reads to the end (no early exit): an early exit would SIGPIPE curl, and under
    # pipefail that failed pipeline would end the whole script.
    curl -s --max-time 5 "http://127.0.0.1:$fibd_port/metrics" 2>/dev/null |
        awk -v n="$1" '$1 == n && !found { print $2; found = 1 }' || true
}
scrape() { curl -s --max-time 5 "http://127.0.0.1:$fibd_port/metrics" >"$1" || true; }
state_seq() { python3 "$root/bench/report.py" seq "$state_dir/fibd.state"; }

# ---------------------------------------------------------------------------------------
# Load generators, all on the load core, all bounded.
# Always started in the background and waited for, so that the EXIT trap runs at once on a
# signal (bash defers traps while a foreground command runs) and can stop the load by id.
# `timeout` passes a TERM on to the tool it runs.
on_load_bg() { # sets last_bg
    taskset -c "$LOAD_CPU" timeout -k 5 "$PHASE_TIMEOUT" "$@" &
    last_bg=$!
    pids+=("$last_bg")
}
on_load() { on_load_bg "$@"; wait "$last_bg"; }

# seed PREFIX PORT: the original test, three constant-rate runs at once. oha -q keeps the
# rate, --latency-correction measures from when each request was due (coordinated omission),
# -w waits for requests still in flight at the deadline instead of counting them as errors.
seed() {
    local prefix="$1" port="$2" route pids_seed=()
    for route in current next previous; do
        on_load_bg oha --no-tui -w --latency-correction -q "$RATE" -c "$CONNS" -z "${DURATION}s" \
            --worker-threads 1 --output-format json -o "$raw/$prefix-$route.json" \
            "http://127.0.0.1:$port/$route"
        pids_seed+=("$last_bg")
    done
    local rc=0
    for p in "${pids_seed[@]}"; do wait "$p" || rc=$?; done
    [ "$rc" = 0 ] || die "oha failed ($prefix)"
}

peak_read() { # peak_read OUTFILE PORT
    on_load wrk -t "$WRK_THREADS" -c "$CONNS" -d "${READ_SECONDS}s" --latency \
        "http://127.0.0.1:$2/current" >"$1"
}

peak_write() { # peak_write TAG: alternating steps against the running fibd
    local tag="$1" perf_pid="" m0 m1 c0 c1 s0 s1
    park
    m0="$(metric fibd_commit_steps_sum)"; c0="$(metric fibd_commit_steps_count)"
    s0="$(state_seq)"
    if [ "$perf_ok" = 1 ]; then
        perf stat -x, -e syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync \
            -p "$fibd_pid" -o "$raw/$tag.perf" &
        perf_pid=$!
        pids+=("$perf_pid")
        sleep 0.3
    fi
    scrape "$raw/metrics-$tag-before.txt"
    phase_begin "$fibd_pid"
    on_load wrk -t "$WRK_THREADS" -c "$CONNS" -d "${DURATION}s" --latency \
        -s "$root/bench/alternate.lua" "http://127.0.0.1:$fibd_port" >"$raw/$tag.txt"
    phase_end "$tag"
    sleep 0.3 # replies of the last steps are sent after their commit; let them land
    if [ -n "$perf_pid" ]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
    scrape "$raw/metrics-$tag-after.txt"
    m1="$(metric fibd_commit_steps_sum)"; c1="$(metric fibd_commit_steps_count)"
    s1="$(state_seq)"
    kv "${tag}_seq_delta" "$((s1 - s0))"
    if [ -n "$m0" ] && [ -n "$m1" ]; then
        kv "${tag}_metric_steps" "$(python3 -c "print(int(float('$m1') - float('$m0')))")"
        kv "${tag}_metric_commits" "$(python3 -c "print(int(float('$c1') - float('$c0')))")"
    fi
    if [ -f "$raw/$tag.perf" ]; then
        kv "${tag}_perf_fdatasync" "$(awk -F, '/sys_enter_fdatasync/ { print $1 }' "$raw/$tag.perf")"
        kv "${tag}_perf_fsync" "$(awk -F, '/sys_enter_fsync/ { print $1 }' "$raw/$tag.perf")"
    fi
}

# ---------------------------------------------------------------------------------------
# 1. Start-up to ready, bare binary pinned to the server core.
log "start-up to ready (20 starts)"
timeout -k 5 120 python3 "$root/bench/startup.py" --binary "$bin" --cpu "$SERVER_CPU" \
    --runs 20 >"$raw/startup.txt" &
startup_pid=$!
pids+=("$startup_pid")
wait "$startup_pid"
if [ "$ISOLATION" = podman ]; then
    # For information: the container's own start (podman + runc) dominates this one.
    t0=$(date +%s%N)
    start_fibd startup
    t1=$(date +%s%N)
    kv container_start_to_ready_ms "$(( (t1 - t0) / 1000000 ))"
    stop_fibd
fi

# 2. The nginx reference, started now and left idle until its turn, so each fibd run and
# the matching nginx run follow each other directly: on a shared machine, background load
# drifts over minutes, and back-to-back pairs keep the ratios honest.
nginx_prefix="$work/nginx"
mkdir -p "$nginx_prefix"
nginx_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
# The body is F(93), the value fibd answers /current with while parked: same length.
body="12200160415121876738"
sed -e "s#@PREFIX@#$nginx_prefix#g" -e "s#@PORT@#$nginx_port#g" -e "s#@BODY@#$body#g" \
    "$root/bench/nginx.conf.in" >"$nginx_prefix/nginx.conf"
taskset -c "$SERVER_CPU" nginx -p "$nginx_prefix" -c "$nginx_prefix/nginx.conf" \
    -e "$nginx_prefix/error.log" 2>"$raw/nginx.log" &
nginx_pid=$!
pids+=("$nginx_pid")
for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$nginx_port/current")" = 200 ] && break
    sleep 0.05
done
kv nginx_version "$(nginx -v 2>&1 | sed 's#.*/##')"
# The worker does the serving; the master only waits. Account the worker's CPU.
nginx_worker="$(pgrep -P "$nginx_pid" | head -n 1 || true)"
[ -n "$nginx_worker" ] || die "nginx did not start (see BENCH_KEEP_RAW=1 nginx.log)"

# 3. fibd (and nginx) scenarios
log "fibd: idle"
start_fibd main
sleep 2
kv rss_idle_hwm_kb "$(rss "$fibd_pid" VmHWM)"
kv rss_idle_kb "$(rss "$fibd_pid" VmRSS)"
kv threads_idle "$(awk '$1 == "Threads:" { print $2 }' "/proc/$fibd_pid/status")"

log "fibd: seed scenario (3 x $RATE req/s x $CONNS conns, ${DURATION}s)"
park
reset_peak "$fibd_pid"
# fibd's own view of the same phase (request and commit latency histograms, commits):
# splits the client-observed latency into time inside fibd, fdatasync, and the rest.
scrape "$raw/metrics-seed-before.txt"
phase_begin "$fibd_pid"
seed seed-fibd "$fibd_port"
phase_end seed-fibd
scrape "$raw/metrics-seed-after.txt"
kv rss_seed_hwm_kb "$(rss "$fibd_pid" VmHWM)"
kv threads_seed "$(awk '$1 == "Threads:" { print $2 }' "/proc/$fibd_pid/status")"

log "nginx: seed scenario"
phase_begin "$nginx_worker"
seed seed-nginx "$nginx_port"
phase_end seed-nginx

# The disk's floor under the steps' latency: an ideal group-commit server (no network, no
# HTTP, no threads) at the seed's step rate, on the server core and the file system that
# holds fibd's state. No server that answers a step after its fdatasync can do better here.
log "disk floor: ideal group commit at $((2 * RATE)) steps/s (${DURATION}s)"
mkdir -p "$work/disk-floor"
taskset -c "$SERVER_CPU" timeout -k 5 "$PHASE_TIMEOUT" python3 "$root/bench/disk_floor.py" \
    --dir "$work/disk-floor" --rate "$((2 * RATE))" --seconds "$DURATION" \
    --json "$raw/disk-floor.json" >"$raw/disk-floor.txt" &
floor_pid=$!
pids+=("$floor_pid")
wait "$floor_pid"

# tiny_http alone, in a box like fibd's (its own container, from the same image, with the
# same limits), answering every request with the very bytes fibd answers /current with now
# (the cursor does not move while reads run). What separates it from nginx is tiny_http's;
# what separates fibd from it is fibd's. With fibd's container on the core, the same server
# run bare was about a fifth slower, so it runs boxed whenever fibd does.
alone_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
curl -s -i --max-time 5 "http://127.0.0.1:$fibd_port/current" >"$work/alone-reply"
if [ "$ISOLATION" = podman ]; then
    # The FROM-scratch image runs it as well as fibd: both binaries are static.
    alone_name="fibd-bench-$$-alone"
    containers+=("$alone_name")
    podman "${podman_global[@]}" run -d --rm --name "$alone_name" "${podman_box[@]}" \
        -v "$alone_bin:/tiny_http_alone:ro" -v "$work/alone-reply:/reply:ro" \
        --entrypoint /tiny_http_alone "$image" "127.0.0.1:$alone_port" "$ALONE_THREADS" /reply \
        >/dev/null
    alone_pid="$(podman inspect -f '{{.State.Pid}}' "$alone_name")"
else
    taskset -c "$SERVER_CPU" "$alone_bin" "127.0.0.1:$alone_port" "$ALONE_THREADS" \
        "$work/alone-reply" 2>"$raw/alone.log" &
    alone_pid=$!
    pids+=("$alone_pid")
fi
for _ in $(seq 1 100); do
    curl -s -i --max-time 5 "http://127.0.0.1:$alone_port/current" >"$work/alone-check" 2>/dev/null && break
    sleep 0.05
done
cmp -s "$work/alone-reply" "$work/alone-check" || die "tiny_http_alone does not answer with fibd's bytes"
kv alone_threads "$ALONE_THREADS"

# The seed's clients against tiny_http alone, every route answered like /current without a
# commit: the tail the HTTP library itself has under this load, beside fibd's and nginx's.
log "tiny_http alone: seed scenario"
phase_begin "$alone_pid"
seed seed-alone "$alone_port"
phase_end seed-alone

# Peak read in interleaved rounds (fibd, tiny_http alone, nginx, fibd, ...), each a share of
# BENCH_DURATION; report.py takes each server's median round. Short-lived background load
# then hits every server alike instead of deciding the ratios.
for round in $(seq 1 "$READ_ROUNDS"); do
    log "peak read, round $round/$READ_ROUNDS: fibd, tiny_http alone, nginx (${READ_SECONDS}s each)"
    phase_begin "$fibd_pid"
    peak_read "$raw/peak-read-fibd-$round.txt" "$fibd_port"
    phase_end "peak-read-fibd-$round"
    phase_begin "$alone_pid"
    peak_read "$raw/peak-read-alone-$round.txt" "$alone_port"
    phase_end "peak-read-alone-$round"
    phase_begin "$nginx_worker"
    peak_read "$raw/peak-read-nginx-$round.txt" "$nginx_port"
    phase_end "peak-read-nginx-$round"
done
kill -TERM "$nginx_pid" 2>/dev/null || true
wait "$nginx_pid" 2>/dev/null || true
if [ "$ISOLATION" = podman ]; then
    podman rm -f -t 2 "$alone_name" >/dev/null 2>&1 || true
else
    kill -TERM "$alone_pid" 2>/dev/null || true
    wait "$alone_pid" 2>/dev/null || true
fi

log "fibd: peak durable write (group commit on)"
peak_write write-fibd

log "fibd: $IDLE_CONNS idle connections"
sleep 1
reset_peak "$fibd_pid"
rm -f "$work/idle-ready"
on_load_bg python3 "$root/bench/idle_conns.py" --port "$fibd_port" --count "$IDLE_CONNS" \
    --hold 5 --ready-file "$work/idle-ready" >"$raw/idle.txt"
idle_pid="$last_bg"
for _ in $(seq 1 600); do [ -e "$work/idle-ready" ] && break; kill -0 "$idle_pid" 2>/dev/null || break; sleep 0.1; done
sleep 1
kv rss_idle_conns_kb "$(rss "$fibd_pid" VmRSS)"
kv threads_idle_conns "$(awk '$1 == "Threads:" { print $2 }' "/proc/$fibd_pid/status")"
wait "$idle_pid" || true
kv rss_idle_conns_hwm_kb "$(rss "$fibd_pid" VmHWM)"
stop_fibd
# fibd logs one line per event; errors or warnings during the load would explain odd figures.
kv fibd_log_errors "$(grep -c 'level=error' "$raw/fibd-main.log" || true)"
kv fibd_log_warnings "$(grep -c 'level=warn' "$raw/fibd-main.log" || true)"

log "fibd --batch-max 1: peak durable write (group commit off)"
start_fibd batch1 --batch-max 1
peak_write write-fibd-b1
stop_fibd

# The same load with the state file on tmpfs, where write + fdatasync cost a memory copy:
# what fibd's step path allows by itself, so that row 3's gap to the reads can be split
# into fibd's share and the disk's. Skipped where /dev/shm is not a writable tmpfs.
if [ "$(stat -f -c %T /dev/shm 2>/dev/null || true)" = tmpfs ] &&
    shm_work="$(mktemp -d /dev/shm/fibd-bench.XXXXXX 2>/dev/null)"; then
    log "fibd, state file on tmpfs: peak durable write (no disk)"
    state_root="$shm_work"
    start_fibd tmpfs
    peak_write write-fibd-tmpfs
    stop_fibd
    state_root="$work"
    rm -rf "$shm_work" && shm_work=""
else
    log "no writable tmpfs at /dev/shm: the no-disk write row is skipped"
fi

# ---------------------------------------------------------------------------------------
# 4. Report
kv duration_s "$DURATION"
kv rate_per_route "$RATE"
kv conns "$CONNS"
kv idle_conns_target "$IDLE_CONNS"
kv wrk_threads "$WRK_THREADS"
kv read_rounds "$READ_ROUNDS"
kv read_seconds "$READ_SECONDS"
kv server_cpu "$SERVER_CPU"
kv load_cpu "$LOAD_CPU"
kv oha_version "$(oha --version | awk '{print $2}')"
kv wrk_version "$({ wrk -v 2>&1 || true; } | awk 'NR==1 {print $2}')" # wrk -v exits 1
kv cpu_model "$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
kv kernel "$(uname -r)"
kv date_utc "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
kv git_rev "$(git rev-parse --short HEAD 2>/dev/null || echo none)"
mkdir -p "$OUT" "$(dirname "$PLOT")"
python3 "$root/bench/report.py" report "$raw" --json "$OUT/latest.json" \
    --plot-data "$work/plot" --plot "$PLOT"
