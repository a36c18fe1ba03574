#!/usr/bin/env bash
# The scratch image: builds from the Containerfile without pulling, stays
# under 2 MB, runs as a non-root user with a read-only root file system and
# 1 CPU / 512 MB, keeps its state on a volume across SIGKILL and a new
# container, is brought back by --restart when its process dies, and stops
# cleanly (exit 0) on podman stop.
# shellcheck source=tests/deploy/lib.sh
. "$(dirname "$0")/lib.sh"
need_root
need_podman

image="localhost/$RUN_ID:test"
volume="$RUN_ID-state"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n 1)
if build_image "$image" "$WORK/build.log"; then
    pass "podman build --pull=never"
else
    fail "podman build --pull=never" "$(tail -n 5 "$WORK/build.log" | tr '\n' ' ')"
    exit 0
fi

size=$(pm image inspect --format '{{.Size}}' "$image")
if [ "$size" -lt 2000000 ]; then
    pass "image is under 2 MB ($size bytes)"
else
    fail "image is under 2 MB" "$size bytes"
fi
check_eq "runs as numeric non-root user" "$(pm image inspect --format '{{.Config.User}}' "$image")" "65532:65532" || true
check_eq "OCI version label" \
    "$(pm image inspect --format '{{index .Config.Labels "org.opencontainers.image.version"}}' "$image")" "$version" || true
check_eq "OCI title label" \
    "$(pm image inspect --format '{{index .Config.Labels "org.opencontainers.image.title"}}' "$image")" fibd || true
check "sets FIBD_LISTEN=0.0.0.0:8080 and the state file on the volume" sh -c \
    "podman --runtime runc --cgroup-manager cgroupfs image inspect --format '{{json .Config.Env}}' '$image' |
     grep -q 'FIBD_LISTEN=0.0.0.0:8080.*FIBD_STATE_FILE=/var/lib/fibd/fibd.state'" || true
check "declares the state volume and port" sh -c \
    "podman --runtime runc --cgroup-manager cgroupfs image inspect --format '{{json .Config.Volumes}} {{json .Config.ExposedPorts}}' '$image' |
     grep -q '/var/lib/fibd.*8080/tcp'" || true

# The image holds the binary, an empty state directory owned by the runtime
# user, and nothing else: no shell, no /etc, not the build context.
mnt=$(pm image mount "$image")
on_exit "pm image unmount $image"
files=$(cd "$mnt" && find . -mindepth 1 -printf '%y %U:%G %m %p\n' | sort | tr '\n' ';')
want="d 0:0 755 ./usr;d 0:0 755 ./usr/local;d 0:0 755 ./usr/local/bin;d 0:0 755 ./var;d 0:0 755 ./var/lib;d 65532:65532 755 ./var/lib/fibd;f 0:0 555 ./usr/local/bin/fibd;"
check_eq "image contents" "$files" "$want" || true
pm image unmount "$image" >/dev/null 2>&1 || true

port=$(free_port)
base="http://127.0.0.1:$port"
pm volume create "$volume" >/dev/null
on_exit "pm volume rm -f $volume"

# run NAME [EXTRA...]: the production flags plus a free port on the host network.
run() {
    local name="$RUN_ID-$1"
    shift
    on_exit "pm rm -f -t 0 $name"
    pm run -d --name "$name" "${PM_RUN[@]}" --cpus 1 --memory 512m --read-only \
        -v "$volume:/var/lib/fibd" -e "FIBD_LISTEN=127.0.0.1:$port" "$@" "$image" >/dev/null
}

run one
if wait_ready "$base" 20; then
    pass "starts read-only with 1 CPU, 512 MB and a volume"
else
    fail "starts read-only with 1 CPU, 512 MB and a volume" "$(pm logs "$RUN_ID-one" 2>&1 | tail -n 3 | tr '\n' ' ')"
    exit 0
fi
hostpid=$(pm inspect --format '{{.State.Pid}}' "$RUN_ID-one")
check_eq "process runs as uid 65532" "$(awk '/^Uid:/ {print $2}' "/proc/$hostpid/status")" 65532 || true
check "logs the start line on stderr" sh -c "podman --runtime runc --cgroup-manager cgroupfs logs $RUN_ID-one 2>&1 | grep -q 'event=start.*state_file=/var/lib/fibd/fibd.state'" || true
smoke "smoke test against the container" "$base" || true
check "HEALTHCHECK (fibd probe) passes inside the scratch image" pm healthcheck run "$RUN_ID-one" || true

advance "$base" 5
pm kill -s KILL "$RUN_ID-one" >/dev/null
pm wait "$RUN_ID-one" >/dev/null 2>&1 || true
check_eq "SIGKILL leaves exit code 137" "$(pm inspect --format '{{.State.ExitCode}}' "$RUN_ID-one")" 137 || true
pm rm -f "$RUN_ID-one" >/dev/null

run two
wait_ready "$base" 20 || true
check_eq "new container on the same volume keeps the state (index 5)" "$(http "$base/current" || true)" "$(fib 5)" || true

t0=$(now_ms)
pm stop -t 10 "$RUN_ID-two" >/dev/null
took=$(($(now_ms) - t0))
code=$(pm inspect --format '{{.State.ExitCode}}' "$RUN_ID-two")
# Exit 0 is the SIGTERM handled (a SIGKILL after the 10 s would show 137); under 9 s leaves
# room for podman's own work on a busy machine and still tells a stop from a kill.
if [ "$code" = 0 ] && [ "$took" -lt 9000 ]; then
    pass "podman stop: SIGTERM, exit 0 in ${took} ms"
else
    fail "podman stop: SIGTERM, exit 0" "exit $code after ${took} ms"
fi
pm rm -f "$RUN_ID-two" >/dev/null

# --restart: kill the process from outside (as the OOM killer or a crash
# would); podman must start it again on the same volume.
run three --restart always
wait_ready "$base" 20 || true
advance "$base" 2
pid1=$(pm inspect --format '{{.State.Pid}}' "$RUN_ID-three")
kill -9 "$pid1"
restarted() {
    local pid
    pid=$(pm inspect --format '{{.State.Pid}}' "$RUN_ID-three" 2>/dev/null) &&
        [ "$pid" != 0 ] && [ "$pid" != "$pid1" ] &&
        curl -fsS -o /dev/null --max-time 2 "$base/readyz"
}
if wait_for 30 restarted; then
    pass "--restart always brings it back after kill -9 (restarts: $(pm inspect --format '{{.RestartCount}}' "$RUN_ID-three"))"
    check_eq "state survives the restart (index 7)" "$(http "$base/current" || true)" "$(fib 7)" || true
else
    fail "--restart always brings it back after kill -9" "$(pm ps -a --filter "name=$RUN_ID-three" --format '{{.Status}}')"
fi
