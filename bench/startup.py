#!/usr/bin/env python3
"""Start-up-to-ready time of the fibd binary: from just before the process is spawned to
the first 200 answer on /readyz, repeated --runs times, pinned to one core.

The first run creates the state file (first boot); the others reopen it (a restart, the
case a supervisor cares about). Polls every 0.5 ms, so the figures carry up to ~0.5 ms of
polling slack. Bounded: each run gives up after --timeout seconds.

Prints: STARTUP first_ms=F median_ms=M max_ms=X runs=N
"""
import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            head = s.recv(64)
            return head.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def one_run(binary, state, cpu, timeout):
    port = free_port()
    cmd = [binary, "--listen", f"127.0.0.1:{port}", "--state-file", state]
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=pin)
    try:
        while time.perf_counter() - t0 < timeout:
            if ready(port):
                return (time.perf_counter() - t0) * 1000.0
            if proc.poll() is not None:
                raise RuntimeError(f"fibd exited with {proc.returncode} before ready")
            time.sleep(0.0005)
        raise RuntimeError("not ready within timeout")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main():
    # On TERM (bench.sh's cleanup, or `timeout`), unwind so one_run's finally stops the
    # fibd it started instead of leaving it behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--cpu", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=5.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fibd-startup-") as d:
        state = os.path.join(d, "fibd.state")
        times = [one_run(args.binary, state, args.cpu, args.timeout) for _ in range(args.runs)]
    print(f"STARTUP first_ms={times[0]:.2f} median_ms={statistics.median(times[1:] or times):.2f} "
          f"max_ms={max(times):.2f} runs={len(times)}")


if __name__ == "__main__":
    sys.exit(main())
