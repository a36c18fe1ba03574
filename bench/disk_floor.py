#!/usr/bin/env python3
"""The disk's floor under the seed scenario's step latency.

An ideal group-commit server, with no network, no HTTP and no threads, on the file system that
holds fibd's state: steps arrive as a Poisson stream at the seed's step rate (two routes of
BENCH_RATE each); whenever the one commit in flight ends, every step that arrived meanwhile
shares the next commit, which is what fibd's state owner does: a 4 KiB write to alternating
slots of one file, then fdatasync. A step's latency is its commit's end minus its arrival.

The timeline is virtual, so that Python's own cost and its sleep's late wake-ups add nothing: a
commit starts at the later of the previous commit's end and its first step's arrival, and lasts
as long as the real write + fdatasync took, run at that moment in real time. No server that
answers a step only after its fdatasync, one commit at a time, can have a lower latency at the
same rate on the same disk with steps arriving at random, whatever its request handling costs;
and whatever the arrivals, no step can be answered sooner than one whole commit after it
arrived, so the commits' own latency is a floor too.

    disk_floor.py --dir DIR --rate STEPS_PER_S --seconds S [--seed N] [--json OUT]
"""

import argparse
import json
import os
import random
import time

SLOT_BYTES = 4096


def quantiles(values):
    values = sorted(values)
    at = lambda q: values[min(len(values) - 1, int(q * len(values)))] * 1000
    return {"count": len(values), "mean_ms": sum(values) / len(values) * 1000,
            "p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99), "p99.9_ms": at(0.999),
            "max_ms": values[-1] * 1000}


def run(directory, rate, seconds, seed):
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            break
        arrivals.append(t)
    path = os.path.join(directory, "disk-floor.state")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.pwrite(fd, bytes(2 * SLOT_BYTES), 0)
        os.fsync(fd)
        latencies, commits = [], []
        free_at, i, sequence = 0.0, 0, 0
        origin = time.perf_counter()
        while i < len(arrivals):
            start = max(free_at, arrivals[i])
            wait = start - (time.perf_counter() - origin)
            if wait > 0:
                time.sleep(wait)
            j = i
            while j < len(arrivals) and arrivals[j] <= start:
                j += 1
            slot = bytes([sequence % 256]) * SLOT_BYTES
            began = time.perf_counter()
            os.pwrite(fd, slot, (sequence % 2) * SLOT_BYTES)
            os.fdatasync(fd)
            took = time.perf_counter() - began
            sequence += 1
            commits.append(took)
            free_at = start + took
            latencies.extend(free_at - a for a in arrivals[i:j])
            i = j
    finally:
        os.close(fd)
        os.unlink(path)
    return {"rate_per_s": rate, "seconds": seconds, "steps": quantiles(latencies),
            "commits": quantiles(commits), "steps_per_commit": len(latencies) / len(commits)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", required=True, help="a directory on the state file's file system")
    p.add_argument("--rate", type=float, required=True, help="steps per second")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--seed", type=int, default=1, help="seed of the arrival times")
    p.add_argument("--json", help="write the result here as JSON")
    args = p.parse_args()
    result = run(args.dir, args.rate, args.seconds, args.seed)
    s = result["steps"]
    print(f"{s['count']} steps at {args.rate:g}/s, {result['steps_per_commit']:.2f} per commit: "
          f"p50 {s['p50_ms']:.3f} p99 {s['p99_ms']:.3f} p99.9 {s['p99.9_ms']:.3f} "
          f"mean {s['mean_ms']:.3f} ms; commit mean {result['commits']['mean_ms']:.3f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
