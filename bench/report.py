#!/usr/bin/env python3
"""Parsers and the report for scripts/bench.sh. Standard library only.

  report.py seq STATE_FILE
      prints the highest slot sequence number in a fibd state file (one per commit), read
      from the slot layout documented in src/slot.rs: magic at 0, sequence (u64 LE) at 12.
  report.py report RAW_DIR --json OUT.json [--plot-data DIR --plot OUT.svg]
      reads the raw tool outputs bench.sh left in RAW_DIR, prints one table row per
      scenario, writes every figure to OUT.json (layout in docs/BENCHMARKS.md), and draws
      the seed latency-percentile plot with gnuplot (bench/seed-latency.gp).
  report.py markdown OUT.json
      prints a Markdown summary of a run (the "Latest figures" of docs/BENCHMARKS.md).
"""
import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys

SLOT_BYTES = 4096
SLOT_MAGIC = b"FIBDSLOT"
ROUTES = ("current", "next", "previous")

# The targets from issue 5, in one place.
TARGET_P99_RATIO = 1.2          # fibd seed p99 <= 1.2 x nginx seed p99, per route
TARGET_MEAN_MS = 1.1            # the original test's mean latency
TARGET_READ_RATIO = 0.45        # fibd peak read >= 0.45 x nginx peak read
TARGET_WRITE_VS_READ = 0.7      # durable steps/s >= 0.7 x fibd peak read
TARGET_WRITE_VS_UNBATCHED = 5.0 # durable steps/s >= 5 x the --batch-max 1 run
TARGET_RSS_SEED_KB = 16 * 1024  # 16 MB
BOX_KB = 512 * 1024
TARGET_RSS_IDLE_CONNS_KB = BOX_KB // 4  # "far inside 512 MB": we call that under a quarter
TARGET_STARTUP_MS = 50.0
TARGET_BINARY_BYTES = 2_000_000  # "under 2 MB", decimal, the stricter reading


def state_seq(path):
    data = open(path, "rb").read()
    best = 0
    for off in range(0, len(data) - SLOT_BYTES + 1, SLOT_BYTES):
        slot = data[off:off + SLOT_BYTES]
        if slot[:8] == SLOT_MAGIC:
            best = max(best, struct.unpack_from("<Q", slot, 12)[0])
    return best


def read_kv(path):
    kv = {}
    for line in open(path):
        if "=" in line:
            k, _, v = line.rstrip("\n").partition("=")
            kv[k] = v
    return kv


def num(kv, key, cast=float):
    v = kv.get(key, "")
    try:
        return cast(v)
    except ValueError:
        return None


def parse_oha(path):
    d = json.load(open(path))
    s, p = d["summary"], d["latencyPercentiles"]
    statuses = {int(k): v for k, v in d.get("statusCodeDistribution", {}).items()}
    transport_errors = sum(d.get("errorDistribution", {}).values())
    total = sum(statuses.values()) + transport_errors
    ms = lambda x: None if x is None else x * 1000.0
    return {
        "requests": total,
        "rps": s["requestsPerSec"],
        "mean_ms": ms(s["average"]),
        "p50_ms": ms(p["p50"]),
        "p90_ms": ms(p["p90"]),
        "p99_ms": ms(p["p99"]),
        "p99.9_ms": ms(p["p99.9"]),
        "p99.99_ms": ms(p["p99.99"]),
        "max_ms": ms(s["slowest"]),
        "status": statuses,
        "status_409": statuses.get(409, 0),
        # Anything but 200 and the expected 409 at the bounds, plus transport errors.
        "errors": transport_errors + sum(v for k, v in statuses.items() if k not in (200, 409)),
        "error_kinds": d.get("errorDistribution", {}),
        "percentiles_ms": {k: ms(v) for k, v in p.items()},
    }


def wrk_duration_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if not m:
        return None
    v, u = float(m.group(1)), m.group(2)
    return v * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[u]


def parse_wrk(path):
    text = open(path).read()
    out = {"raw_tail": text.strip().splitlines()[-3:]}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    out["rps"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", text)
    if m:
        out["requests"] = int(m.group(1))
        out["seconds"] = wrk_duration_ms(m.group(2) + m.group(3)) / 1000.0
    m = re.search(r"Latency\s+([\d.]+\w+)\s+([\d.]+\w+)\s+([\d.]+\w+)", text)
    if m:
        out["mean_ms"] = wrk_duration_ms(m.group(1))
        out["max_ms"] = wrk_duration_ms(m.group(3))
    for q in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{q}%\s+([\d.]+\w+)", text, re.M)
        if m:
            out[f"p{q}_ms"] = wrk_duration_ms(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"STATUS ok=(\d+) bound409=(\d+) other=(\d+)", text)
    if m:
        out["ok"], out["bound409"], out["other"] = (int(x) for x in m.groups())
    return out


def parse_line(path, tag):
    """KEY=VALUE pairs from the first line of a file that starts with TAG."""
    if not os.path.exists(path):
        return {}
    for line in open(path):
        if line.startswith(tag + " "):
            return dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
    return {}


def step_answers(raw, tag):
    """Answers to /next and /previous by status over a run, from fibd's
    fibd_requests_total counters scraped before and after it: {200: n, 409: n, other: n}."""
    _, before = prom_histograms(os.path.join(raw, f"metrics-{tag}-before.txt"))
    _, after = prom_histograms(os.path.join(raw, f"metrics-{tag}-after.txt"))
    if not after:
        return None
    out = {"200": 0, "409": 0, "other": 0}
    for (name, labels), v in after.items():
        if name != "fibd_requests_total":
            continue
        route = re.search(r'route="([^"]*)"', labels)
        code = re.search(r'code="([^"]*)"', labels)
        if not route or route.group(1) not in ("/next", "/previous") or not code:
            continue
        d = int(v - before.get((name, labels), 0.0))
        key = code.group(1) if code.group(1) in ("200", "409") else "other"
        out[key] += d
    return out


def write_summary(w, kv, raw):
    """Durable steps/s and mean steps per commit for one write run."""
    if not w or w.get("rps") is None:
        return w
    secs = w.get("seconds") or 1.0
    answers = step_answers(raw, w["tag"])
    if answers is not None:
        # fibd's count of step answers; it also counts the few answered after wrk's deadline.
        w["ok"], w["bound409"], w["other"] = answers["200"], answers["409"], answers["other"]
        w["answers_source"] = "fibd_requests_total"
    elif "ok" not in w and w.get("requests") is not None:
        w["ok"] = w["requests"] - w.get("non_2xx", 0)
        w["answers_source"] = "wrk requests - non-2xx"
    ok = w.get("ok")
    w["steps_per_s"] = ok / secs if ok is not None else None
    tag = w["tag"]
    sources = {}
    for name, key in (("metrics", f"{tag}_metric_commits"), ("state_file_seq", f"{tag}_seq_delta"),
                      ("perf_fdatasync", f"{tag}_perf_fdatasync")):
        v = num(kv, key, int)
        if v:
            sources[name] = v
    w["commits"] = sources
    steps_metric = num(kv, f"{tag}_metric_steps", int)
    # Steps per commit. With metrics, both numbers are the server's own; otherwise the steps
    # are the 200 answers wrk saw and the commits are counted on disk (state file sequence).
    if "metrics" in sources and steps_metric:
        w["steps_per_commit"] = steps_metric / sources["metrics"]
        w["steps_per_commit_source"] = "fibd_commit_steps _sum/_count"
    elif "state_file_seq" in sources and ok:
        w["steps_per_commit"] = ok / sources["state_file_seq"]
        w["steps_per_commit_source"] = "wrk 200 answers / state-file commits"
    elif "perf_fdatasync" in sources and ok:
        w["steps_per_commit"] = ok / sources["perf_fdatasync"]
        w["steps_per_commit_source"] = "wrk 200 answers / fdatasync calls"
    else:
        w["steps_per_commit"] = None
        w["steps_per_commit_source"] = "not measured"
    if "perf_fdatasync" in sources:
        w["fdatasync_per_s"] = sources["perf_fdatasync"] / secs
    c = histogram_delta(os.path.join(raw, f"metrics-{tag}-before.txt"),
                        os.path.join(raw, f"metrics-{tag}-after.txt"), "fibd_commit_duration_seconds")
    if c:
        w["commit_s"] = c
    return w


def prom_histograms(path):
    """{(name, labels-without-le): [(le, cumulative count)], ...} plus _sum/_count, from a
    Prometheus text exposition."""
    hist, scalars = {}, {}
    if not os.path.exists(path):
        return hist, scalars
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{([^}]*)\})?\s+(\S+)", line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(3) or "", float(m.group(4))
        if name.endswith("_bucket"):
            le = re.search(r'le="([^"]+)"', labels).group(1)
            rest = ",".join(l for l in labels.split(",") if not l.startswith("le=") and l)
            hist.setdefault((name[:-7], rest), []).append((float("inf") if le == "+Inf" else float(le), value))
        else:
            scalars[(name, labels)] = value
    return hist, scalars


def histogram_delta(before, after, name, labels=""):
    """Quantiles of what a histogram observed between two scrapes. Bucketed, so each
    quantile is reported as its bucket's upper bound ('at most')."""
    hb, sb = prom_histograms(before)
    ha, sa = prom_histograms(after)
    a = ha.get((name, labels))
    if not a:
        return None
    b = dict(hb.get((name, labels), []))
    buckets = [(le, c - b.get(le, 0.0)) for le, c in sorted(a)]
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None
    s = sa.get((name + "_sum", labels), 0.0) - sb.get((name + "_sum", labels), 0.0)
    out = {"count": int(total), "mean": s / total}
    for q in (0.5, 0.9, 0.99, 0.999):
        out[f"p{q * 100:g}_le"] = next((le for le, c in buckets if c >= q * total), None)
    return out


def fmt(v, spec=".2f", unit=""):
    if v is None:
        return "n/a"
    return f"{v:{spec}}{unit}"


def durable_write(run):
    """Steps/s, steps per fsync and mean commit time of one peak durable-write run."""
    commit_mean = run.get('commit_s', {}).get('mean')
    # On tmpfs a commit takes microseconds, which milliseconds to two places would show as 0.
    commit = (f"{fmt(commit_mean * 1e6, '.1f')} µs" if commit_mean is not None and commit_mean < 1e-4
              else f"{fmt(commit_mean and commit_mean * 1000)} ms")
    return (f"{fmt(run.get('steps_per_s'), ',.0f')} steps/s, "
            f"{fmt(run.get('steps_per_commit'), '.1f')} steps/fsync, "
            f"commit mean {commit}")


# Foreign load or steal on the server core, in % of it, at or above which a phase's figures
# are not compared with a target: nginx's seed p99 rose fivefold at 5% steal in one run.
NOISE_PCT = 5


def noisy(cpu, *tags):
    """True when any of the phases `tags` had foreign load or steal of NOISE_PCT or more."""
    return any((cpu.get(t, {}).get(k) or 0) >= NOISE_PCT for t in tags for k in ("foreign", "steal"))


def verdict(ok, noise=False):
    if ok is None:
        return "n/a"
    return "NOISY" if noise else ("PASS" if ok else "MISS")


def cpu_per_phase(kv):
    """CPU per phase (bench.sh phase_begin/phase_end), in % of a core."""
    cpu = {}
    kinds = ("server_core", "server_proc", "softirq", "foreign", "steal", "load_core")
    rounds_of = lambda tag: sorted({k.split("_cpu_")[0] for k in kv
                                    if re.match(rf"^{re.escape(tag)}-\d+_cpu_", k)})
    for tag in ("seed-fibd", "seed-nginx", "seed-alone",
                "peak-read-fibd", "peak-read-alone", "peak-read-nginx",
                "write-fibd", "write-fibd-b1", "write-fibd-tmpfs"):
        tags = rounds_of(tag) or [tag]  # peak read: the mean over its rounds
        per = [{k: num(kv, f"{t}_cpu_{k}_pct", int) for k in kinds} for t in tags]
        per = [p for p in per if p["server_core"] is not None]
        if per:
            cpu[tag] = {k: round(sum(p[k] or 0 for p in per) / len(per)) for k in kinds}
            for k in ("tcp_listen_overflows", "tcp_syn_retrans"):
                cpu[tag][k] = sum(num(kv, f"{t}_{k}", int) or 0 for t in tags)
            # Tick accounting splits softirq and process time only roughly; the remainder
            # ("foreign": anything else on the server core) can come out slightly negative.
            cpu[tag]["foreign"] = max(0, cpu[tag]["foreign"])
    return cpu


def ratio(a, b):
    return a / b if a is not None and b else None


def report(args):
    raw = args.raw
    kv = read_kv(os.path.join(raw, "kv.txt"))
    res = {"machine": {}, "config": {}, "scenarios": {}, "targets": []}
    for k in ("cpu_model", "kernel", "date_utc", "git_rev", "isolation", "nginx_version",
              "oha_version", "wrk_version"):
        res["machine" if k in ("cpu_model", "kernel") else "config"][k] = kv.get(k)
    res["machine"]["cores"] = os.cpu_count()
    for k in ("duration_s", "rate_per_route", "conns", "idle_conns_target", "wrk_threads",
              "server_cpu", "load_cpu"):
        res["config"][k] = num(kv, k, int)
    targets = res["targets"]
    cpu = cpu_per_phase(kv)

    def target(name, value, goal, ok, unit="", noise=False):
        # A noisy phase's figure is kept and marked, not judged (see NOISE_PCT).
        targets.append({"name": name, "value": value, "target": goal, "unit": unit,
                        "pass": None if noise else ok, "noisy": noise})

    # Seed
    seed = {}
    for server in ("fibd", "nginx", "alone"):
        seed[server] = {}
        for r in ROUTES:
            f = os.path.join(raw, f"seed-{server}-{r}.json")
            if os.path.exists(f):
                seed[server][r] = parse_oha(f)
    res["scenarios"]["seed"] = seed
    rows = []
    f_all, n_all = seed.get("fibd", {}), seed.get("nginx", {})
    for r in ROUTES:
        f, n = f_all.get(r), n_all.get(r)
        if not f:
            continue
        rr = ratio(f["p99_ms"], n and n["p99_ms"])
        seed_noise = noisy(cpu, "seed-fibd", "seed-nginx")
        rows.append((
            f"1 seed /{r} {kv.get('rate_per_route')}/s",
            f"p50 {fmt(f['p50_ms'])} p99 {fmt(f['p99_ms'])} p99.9 {fmt(f['p99.9_ms'])} "
            f"max {fmt(f['max_ms'], '.1f')} mean {fmt(f['mean_ms'])} ms; "
            f"err {f['errors']}, 409 {f['status_409']}",
            f"p99 {fmt(n and n['p99_ms'])} mean {fmt(n and n['mean_ms'])} ms" if n else "n/a",
            f"p99 {fmt(rr, '.3f')}x",  # 3 places: 1.201 must not print as a passing 1.20
            f"p99 <= {TARGET_P99_RATIO}x, mean < {TARGET_MEAN_MS} ms, 0 err",
            verdict(None if rr is None else (rr <= TARGET_P99_RATIO and f["mean_ms"] < TARGET_MEAN_MS
                                             and f["errors"] == 0), seed_noise),
        ))
        target(f"seed /{r}: p99 vs nginx", rr, TARGET_P99_RATIO, None if rr is None else rr <= TARGET_P99_RATIO, "x",
               seed_noise)
        target(f"seed /{r}: mean latency", f["mean_ms"], TARGET_MEAN_MS, f["mean_ms"] < TARGET_MEAN_MS, "ms")
        target(f"seed /{r}: errors (not 409)", f["errors"], 0, f["errors"] == 0)
    if f_all:
        reqs = sum(x["requests"] for x in f_all.values())
        mean = sum(x["mean_ms"] * x["requests"] for x in f_all.values()) / max(reqs, 1)
        seed["fibd_mean_all_ms"] = mean
        if n_all:
            nreqs = sum(x["requests"] for x in n_all.values())
            seed["nginx_mean_all_ms"] = sum(x["mean_ms"] * x["requests"] for x in n_all.values()) / max(nreqs, 1)
        target("seed: mean latency, all routes", mean, TARGET_MEAN_MS, mean < TARGET_MEAN_MS, "ms")

    # tiny_http alone under the seed's clients (every route answered like /current, with no
    # commit): the HTTP library's own tail under this load, as row 2b is its peak.
    a_all = seed.get("alone", {})
    if a_all:
        for r, a in a_all.items():
            n = n_all.get(r)
            a["p99_vs_nginx"] = ratio(a["p99_ms"], n and n["p99_ms"])
            f = f_all.get(r)
            a["fibd_p99_vs_this"] = ratio(f and f["p99_ms"], a["p99_ms"])
        cur = a_all.get("current", {})
        rows.append(("1 seed, tiny_http alone (fibd's bytes, no commit)",
                     "p99 " + " / ".join(f"{fmt(a_all[r]['p99_ms'])}" for r in ROUTES if r in a_all)
                     + f" ms ({'/'.join(r for r in ROUTES if r in a_all)}); p99.9 /current "
                     f"{fmt(cur.get('p99.9_ms'))} ms; err {sum(a['errors'] for a in a_all.values())}",
                     f"p99 {fmt(n_all.get('current', {}).get('p99_ms'))} ms (/current)" if n_all else "n/a",
                     f"p99 {fmt(cur.get('p99_vs_nginx'), '.3f')}x",
                     "(what tiny_http allows /current)", "info"))

    # fibd's own histograms over the seed phase: where the step latency goes.
    inside = {}
    before, after = os.path.join(raw, "metrics-seed-before.txt"), os.path.join(raw, "metrics-seed-after.txt")
    for key, name, labels in (("read_request_s", "fibd_request_duration_seconds", 'kind="read"'),
                              ("step_request_s", "fibd_request_duration_seconds", 'kind="step"'),
                              ("commit_s", "fibd_commit_duration_seconds", ""),
                              ("commit_steps", "fibd_commit_steps", "")):
        h = histogram_delta(before, after, name, labels)
        if h:
            inside[key] = h
    if inside:
        seed["fibd_metrics"] = inside
        c, st = inside.get("commit_s"), inside.get("step_request_s")
        if c and st:
            rows.append(("1 seed, inside fibd (its metrics)",
                         f"step p99 <= {fmt(st['p99_le'] * 1000, '.2g')} ms, commit (write+fdatasync) "
                         f"mean {fmt(c['mean'] * 1000)} ms p99 <= {fmt(c['p99_le'] * 1000, '.2g')} ms, "
                         f"{fmt(inside.get('commit_steps', {}).get('mean'), '.1f')} steps/commit",
                         "-", "-", "(explains step latency)", "info"))

    # The disk's floor (bench/disk_floor.py): an ideal group-commit server at the seed's step
    # rate on the state file's file system. No server that answers a step after its
    # fdatasync can do better here, so this says how much of the steps' p99 ratio the disk
    # alone takes.
    floor_path = os.path.join(raw, "disk-floor.json")
    if os.path.exists(floor_path):
        with open(floor_path) as fh:
            floor = json.load(fh)
        seed["disk_floor"] = floor
        fs = floor["steps"]
        step_p99s = [n_all[r]["p99_ms"] for r in ("next", "previous") if n_all.get(r)]
        nginx_step_p99 = sum(step_p99s) / len(step_p99s) if step_p99s else None
        floor["p99_vs_nginx"] = ratio(fs["p99_ms"], nginx_step_p99)
        rows.append(("1 seed, the disk's floor for steps",
                     f"ideal group commit, {floor['rate_per_s']:,.0f} steps/s: p50 {fmt(fs['p50_ms'])} "
                     f"p99 {fmt(fs['p99_ms'])} p99.9 {fmt(fs['p99.9_ms'])} mean {fmt(fs['mean_ms'])} ms, "
                     f"{fmt(floor['steps_per_commit'], '.1f')} steps/commit, "
                     f"commit (write+fdatasync) p99 {fmt(floor['commits']['p99_ms'])} ms",
                     f"p99 {fmt(nginx_step_p99)} ms (steps)" if nginx_step_p99 else "n/a",
                     f"p99 {fmt(floor['p99_vs_nginx'], '.3f')}x",
                     "(the steps cannot go below)", "info"))

    # Peak read
    pr = {}
    for server in ("fibd", "alone", "nginx"):
        rounds = []
        i = 1
        while os.path.exists(os.path.join(raw, f"peak-read-{server}-{i}.txt")):
            rounds.append(parse_wrk(os.path.join(raw, f"peak-read-{server}-{i}.txt")))
            i += 1
        rounds = [r for r in rounds if r.get("rps") is not None]
        if rounds:
            # The median round by requests/s stands for the server; all rounds are kept.
            med = sorted(rounds, key=lambda r: r["rps"])[(len(rounds) - 1) // 2]
            pr[server] = dict(med, rounds_rps=[r["rps"] for r in rounds],
                              non_2xx=sum(r["non_2xx"] for r in rounds),
                              socket_errors=sum(r["socket_errors"] for r in rounds))
    res["scenarios"]["peak_read"] = pr
    fr, nr = pr.get("fibd", {}).get("rps"), pr.get("nginx", {}).get("rps")
    rr = ratio(fr, nr)
    read_noise = noisy(cpu, "peak-read-fibd", "peak-read-nginx")
    spread = lambda srv: "/".join(f"{x / 1000:.0f}k" for x in pr[srv]["rounds_rps"])
    if fr is not None:
        errs = pr["fibd"]["non_2xx"] + pr["fibd"]["socket_errors"]
        rows.append(("2 peak read /current", f"{fmt(fr, ',.0f')} req/s median of rounds {spread('fibd')} "
                     f"(p99 {fmt(pr['fibd'].get('p99_ms'))} ms, err {errs})",
                     f"{fmt(nr, ',.0f')} req/s ({spread('nginx')})" if nr else "n/a", f"{fmt(rr)}x",
                     f">= {TARGET_READ_RATIO}x nginx",
                     verdict(None if rr is None else rr >= TARGET_READ_RATIO, read_noise)))
        target("peak read vs nginx", rr, TARGET_READ_RATIO, None if rr is None else rr >= TARGET_READ_RATIO, "x",
               read_noise)
    # tiny_http alone (bench/tiny_http_alone.rs), answering with fibd's bytes and doing nothing
    # else: alone/nginx is what the HTTP library allows; fibd/alone is what fibd keeps of it.
    lr = pr.get("alone", {}).get("rps")
    if lr is not None:
        alone = pr["alone"]
        alone["threads"] = num(kv, "alone_threads", int)
        alone["vs_nginx"], alone["fibd_vs_this"] = ratio(lr, nr), ratio(fr, lr)
        rows.append((f"2b peak read, tiny_http alone ({alone['threads']} threads, fibd's bytes)",
                     f"{fmt(lr, ',.0f')} req/s ({spread('alone')}); fibd is {fmt(alone['fibd_vs_this'])}x of it",
                     f"{fmt(nr, ',.0f')} req/s" if nr else "n/a", f"{fmt(alone['vs_nginx'])}x",
                     "(what tiny_http allows)", "info"))

    # Peak durable write
    pw = {}
    for tag, key in (("write-fibd", "batched"), ("write-fibd-b1", "batch_max_1"),
                     ("write-fibd-tmpfs", "no_disk")):
        f = os.path.join(raw, f"{tag}.txt")
        if os.path.exists(f):
            w = parse_wrk(f)
            w["tag"] = tag
            pw[key] = write_summary(w, kv, raw)
    res["scenarios"]["peak_write"] = pw
    b, b1, nd = pw.get("batched"), pw.get("batch_max_1"), pw.get("no_disk")
    if b:
        write_noise = noisy(cpu, "write-fibd", "peak-read-fibd")
        gain_noise = noisy(cpu, "write-fibd", "write-fibd-b1")
        vs_read = ratio(b.get("steps_per_s"), fr)
        vs_b1 = ratio(b.get("steps_per_s"), b1 and b1.get("steps_per_s"))
        rows.append(("3 peak durable write",
                     f"{durable_write(b)} "
                     f"(409 {b.get('bound409')}, other {b.get('other')}, sock err {b.get('socket_errors')})",
                     "-", f"{fmt(vs_read)}x read", f">= {TARGET_WRITE_VS_READ}x peak read",
                     verdict(None if vs_read is None else vs_read >= TARGET_WRITE_VS_READ, write_noise)))
        target("peak durable write vs fibd peak read", vs_read, TARGET_WRITE_VS_READ,
               None if vs_read is None else vs_read >= TARGET_WRITE_VS_READ, "x", write_noise)
        if b1:
            rows.append(("3b durable write, --batch-max 1",
                         durable_write(b1),
                         "-", f"{fmt(vs_b1, '.1f')}x gain", f"batched >= {TARGET_WRITE_VS_UNBATCHED}x this",
                         verdict(None if vs_b1 is None else vs_b1 >= TARGET_WRITE_VS_UNBATCHED, gain_noise)))
            target("group commit gain (batched / batch-max 1)", vs_b1, TARGET_WRITE_VS_UNBATCHED,
                   None if vs_b1 is None else vs_b1 >= TARGET_WRITE_VS_UNBATCHED, "x", gain_noise)
    if nd:
        # The same steps with fdatasync free: row 3 / this is what the disk leaves of them.
        nd["vs_read"] = ratio(nd.get("steps_per_s"), fr)
        nd["disk_keeps"] = ratio(b and b.get("steps_per_s"), nd.get("steps_per_s"))
        nd_noise = noisy(cpu, "write-fibd", "write-fibd-tmpfs", "peak-read-fibd")
        rows.append(("3c durable write, state file on tmpfs",
                     durable_write(nd), "-", f"{fmt(nd['vs_read'])}x read",
                     f"(row 3 is {fmt(nd['disk_keeps'])}x of it: the disk's share)",
                     "NOISY" if nd_noise else "info"))

    # Memory
    idle = parse_line(os.path.join(raw, "idle.txt"), "IDLE")
    mem = {
        "idle_hwm_kb": num(kv, "rss_idle_hwm_kb", int),
        "seed_hwm_kb": num(kv, "rss_seed_hwm_kb", int),
        "idle_conns_rss_kb": num(kv, "rss_idle_conns_kb", int),
        "idle_conns_hwm_kb": num(kv, "rss_idle_conns_hwm_kb", int),
        "threads": {k: num(kv, f"threads_{k}", int) for k in ("idle", "seed", "idle_conns")},
        "idle_conns": {k: int(v) if v.isdigit() else v for k, v in idle.items()},
    }
    res["scenarios"]["memory"] = mem
    mb = lambda k: None if k is None else k / 1024.0
    if mem["seed_hwm_kb"] is not None:
        rows.append(("4 memory: idle / seed peak RSS",
                     f"{fmt(mb(mem['idle_hwm_kb']), '.1f')} / {fmt(mb(mem['seed_hwm_kb']), '.1f')} MiB",
                     "-", "-", f"seed < {TARGET_RSS_SEED_KB // 1024} MiB",
                     verdict(mem["seed_hwm_kb"] < TARGET_RSS_SEED_KB)))
        target("peak RSS under seed load", mb(mem["seed_hwm_kb"]), TARGET_RSS_SEED_KB / 1024,
               mem["seed_hwm_kb"] < TARGET_RSS_SEED_KB, "MiB")
    if mem["idle_conns_hwm_kb"] is not None:
        want = num(kv, "idle_conns_target", int)
        held = int(idle.get("still_open", 0) or 0)
        answered = int(idle.get("answered", 0) or 0)
        ok = mem["idle_conns_hwm_kb"] < TARGET_RSS_IDLE_CONNS_KB and held == want and answered == want
        rows.append((f"4 memory: {want} idle conns",
                     f"{fmt(mb(mem['idle_conns_hwm_kb']), '.1f')} MiB peak, {answered} answered, "
                     f"{held} held, {mem['threads']['idle_conns']} threads"
                     + (f" [{idle['error']}]" if "error" in idle else ""),
                     "-", f"{fmt(100.0 * mem['idle_conns_hwm_kb'] / BOX_KB, '.0f')}% of box",
                     f"all held, < {TARGET_RSS_IDLE_CONNS_KB // 1024} MiB", verdict(ok)))
        target(f"peak RSS with {want} idle connections", mb(mem["idle_conns_hwm_kb"]),
               TARGET_RSS_IDLE_CONNS_KB / 1024, ok, "MiB")

    # Start-up and size
    st = parse_line(os.path.join(raw, "startup.txt"), "STARTUP")
    res["scenarios"]["startup"] = {k: float(v) for k, v in st.items()}
    cst = num(kv, "container_start_to_ready_ms", int)
    if cst is not None:
        res["scenarios"]["startup"]["container_start_to_ready_ms"] = cst
    if st:
        med, mx = float(st["median_ms"]), float(st["max_ms"])
        rows.append(("start-up to ready (bare binary)",
                     f"median {med:.1f} ms, max {mx:.1f}, first boot {float(st['first_ms']):.1f}"
                     + (f"; container {cst} ms" if cst is not None else ""),
                     "-", "-", f"< {TARGET_STARTUP_MS:.0f} ms", verdict(mx < TARGET_STARTUP_MS)))
        target("start-up to ready (worst of runs)", mx, TARGET_STARTUP_MS, mx < TARGET_STARTUP_MS, "ms")
    size = num(kv, "binary_bytes", int)
    static = kv.get("binary_static") == "1"
    res["scenarios"]["binary"] = {"bytes": size, "static": static}
    if size is not None:
        rows.append(("static binary size", f"{size:,} bytes ({'static' if static else 'NOT static'})",
                     "-", "-", "< 2 MB, static", verdict(size < TARGET_BINARY_BYTES and static)))
        target("static binary size", size, TARGET_BINARY_BYTES, size < TARGET_BINARY_BYTES and static, "bytes")

    res["cpu_pct"] = cpu

    res["table"] = [dict(zip(("scenario", "fibd", "nginx", "ratio", "target", "verdict"), r)) for r in rows]
    with open(args.json, "w") as fh:
        json.dump(res, fh, indent=2, sort_keys=False)
        fh.write("\n")
    print_table(rows, kv)
    if cpu:
        print()
        print_cpu(cpu)
    if args.plot:
        plot(seed, args.plot_data, args.plot, kv.get("rate_per_route"), kv.get("conns"))
    return 0


def print_table(rows, kv):
    head = ("scenario", "fibd", "nginx (same core)", "ratio", "target", "verdict")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: " | ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    print(f"fibd benchmark: {kv.get('date_utc')} rev {kv.get('git_rev')}, {kv.get('isolation')} box, "
          f"{kv.get('duration_s')} s phases, {kv.get('cpu_model')}")
    print(line(head))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


def print_cpu(cpu):
    head = ("phase (CPU %)", "server core busy", "server process", "softirq", "other (foreign)",
            "steal", "load core busy", "listen overflows", "SYN retries")
    rows = [(t, *(fmt(v.get(k), "d") for k in ("server_core", "server_proc", "softirq", "foreign",
                                                "steal", "load_core", "tcp_listen_overflows",
                                                "tcp_syn_retrans"))) for t, v in cpu.items()]
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: " | ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    print(line(head))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    loud = [t for t in cpu if noisy(cpu, t)]
    if loud:
        print(f"warning: other load or steal of {NOISE_PCT}% or more of the server core during: "
              f"{', '.join(loud)}; those figures understate what the box can do, and their "
              "comparisons with a target read NOISY")
    saturated = [t for t, v in cpu.items() if t.startswith("peak") and (v.get("load_core") or 0) >= 95]
    if saturated:
        print(f"note: load core at >= 95% during {', '.join(saturated)}; the load generator may be "
              "the limit there")


# Percentile -> x position on a "nines" axis, 1/(1-p): 50% at 2, 99% at 100, 99.9% at 1000.
def nines(p):
    return 1.0 / (1.0 - p)


def plot(seed, data_dir, out, rate, conns):
    if not shutil.which("gnuplot"):
        print("plot: gnuplot not found; skipped", file=sys.stderr)
        return
    os.makedirs(data_dir, exist_ok=True)
    series = []
    for server in ("fibd", "nginx"):
        for r in ROUTES:
            s = seed.get(server, {}).get(r)
            if not s:
                continue
            pts = []
            for key, v in s["percentiles_ms"].items():
                x = nines(float(key[1:]) / 100.0)
                # A percentile finer than 1 in N requests is not resolved by N samples.
                if x <= s["requests"]:
                    pts.append((x, v))
            # The slowest request is the (1 - 1/N) quantile of N requests.
            if s["requests"] > 1:
                pts.append((float(s["requests"]), s["max_ms"]))
            pts.sort()
            path = os.path.join(data_dir, f"{server}-{r}.dat")
            with open(path, "w") as fh:
                for x, y in pts:
                    fh.write(f"{x:.6g} {y:.6g}\n")
            series.append((server, r, path))
    if not series:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    gp = os.path.join(here, "seed-latency.gp")
    curves = []
    for server, r, path in series:
        style = ROUTES.index(r) + 1 + (0 if server == "fibd" else 3)
        curves.append(f"'{path}' using 1:2 with linespoints ls {style} title '{server} /{r}'")
    ttl = (f"Seed scenario: /current, /next, /previous at once, {rate} req/s and {conns} connections "
           f"each, one core; latency corrected for coordinated omission")
    cmd = ["gnuplot", "-e", f"out='{out}'; ttl='{ttl}'", gp]
    if out.endswith(".png"):  # the script draws SVG; a .png name switches the terminal
        cmd += ["-e", f"set terminal pngcairo size 1000,600 font 'sans,10'; set output '{out}'"]
    subprocess.run(cmd + ["-e", "plot " + ", ".join(curves)], check=True)
    print(f"plot: {out}")


def markdown(path):
    """A Markdown summary of a latest.json, for docs/BENCHMARKS.md."""
    d = json.load(open(path))
    c, m = d["config"], d["machine"]
    print(f"Run {c.get('date_utc')} at revision {c.get('git_rev')} (plus any uncommitted changes), "
          f"{c.get('isolation')} box, {c.get('duration_s')} s phases; {m.get('cpu_model')}, "
          f"{m.get('cores')} cores, kernel {m.get('kernel')}; nginx {c.get('nginx_version')}, "
          f"oha {c.get('oha_version')}, wrk {c.get('wrk_version')}.")
    print()
    print("| row | fibd | nginx (same core) | ratio | target | verdict |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in d["table"]:
        cells = [r[k].replace("|", "/") for k in ("scenario", "fibd", "nginx", "ratio", "target", "verdict")]
        print("| " + " | ".join(cells) + " |")
    if d.get("cpu_pct"):
        print()
        print("| phase | server core busy % | fibd/nginx process % | softirq % | foreign % | steal % | load core busy % | listen overflows |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for t, v in d["cpu_pct"].items():
            print(f"| {t} | {v['server_core']} | {v['server_proc']} | {v['softirq']} | {v['foreign']} | "
                  f"{v['steal']} | {v['load_core']} | {v.get('tcp_listen_overflows', 'n/a')} |")
    return 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("seq")
    s.add_argument("state_file")
    r = sub.add_parser("report")
    r.add_argument("raw")
    r.add_argument("--json", required=True)
    r.add_argument("--plot-data")
    r.add_argument("--plot")
    md = sub.add_parser("markdown")
    md.add_argument("json")
    args = ap.parse_args()
    if args.cmd == "markdown":
        return markdown(args.json)
    if args.cmd == "seq":
        print(state_seq(args.state_file))
        return 0
    return report(args)


if __name__ == "__main__":
    sys.exit(main())
