#!/usr/bin/env python3
"""Tests of bench/report.py against the raw results of one recorded benchmark run.

The benchmark itself cannot run in CI (it needs minutes of quiet cores), but its report can:
bench/testdata/run-20261201T1308 holds what scripts/bench.sh left in its raw directory for
the run that docs/BENCHMARKS.md shows as the latest figures (its logs left out). These tests
check that the report reads every row of it with the figures the docs quote, that a run
without the optional phases still reports the rest, and that a noisy phase is not judged.

    python3 bench/test_report.py        (standard library only; scripts/test.sh runs it)
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPORT = os.path.join(HERE, "report.py")
RUN = os.path.join(HERE, "testdata", "run-20261201T1308")


def report(raw):
    """Runs `report.py report RAW` (no plot) and returns its JSON and its printed table."""
    with tempfile.TemporaryDirectory() as out:
        path = os.path.join(out, "latest.json")
        done = subprocess.run([sys.executable, REPORT, "report", raw, "--json", path],
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise AssertionError(f"report.py failed ({done.returncode}):\n{done.stderr}")
        with open(path) as fh:
            return json.load(fh), done.stdout


def rows(result):
    """The report's table, by scenario name."""
    return {row["scenario"]: row for row in result["table"]}


def copy_run(into, leave_out=()):
    """Copies the recorded run into a fresh directory, without files starting with any of
    `leave_out`, and returns the directory's path."""
    raw = os.path.join(into, "raw")
    shutil.copytree(RUN, raw, ignore=lambda _dir, names: [
        n for n in names if n.startswith(tuple(leave_out))])
    return raw


def set_kv(raw, key, value):
    """Sets one `key=value` line of the run's kv.txt, as bench.sh writes them."""
    path = os.path.join(raw, "kv.txt")
    with open(path) as fh:
        lines = [line for line in fh.read().splitlines() if not line.startswith(key + "=")]
    lines.append(f"{key}={value}")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


class RecordedRun(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.result, cls.printed = report(RUN)
        cls.rows = rows(cls.result)

    def test_every_row_is_reported(self):
        for name in ("1 seed /current 1000/s", "1 seed /next 1000/s", "1 seed /previous 1000/s",
                     "1 seed, tiny_http alone (fibd's bytes, no commit)",
                     "1 seed, inside fibd (its metrics)", "1 seed, the disk's floor for steps",
                     "2 peak read /current", "2b peak read, tiny_http alone (16 threads, fibd's bytes)",
                     "3 peak durable write", "3b durable write, --batch-max 1",
                     "3c durable write, state file on tmpfs", "4 memory: idle / seed peak RSS",
                     "4 memory: 5000 idle conns", "start-up to ready (bare binary)",
                     "static binary size"):
            self.assertIn(name, self.rows)
            self.assertIn(name, self.printed)

    def test_seed_figures_and_verdicts(self):
        seed = self.result["scenarios"]["seed"]
        self.assertAlmostEqual(seed["fibd"]["current"]["p99_ms"], 0.16, delta=0.005)
        self.assertEqual(seed["fibd"]["current"]["errors"], 0)
        self.assertEqual(self.rows["1 seed /current 1000/s"]["ratio"], "p99 0.729x")
        self.assertEqual(self.rows["1 seed /current 1000/s"]["verdict"], "PASS")
        self.assertEqual(self.rows["1 seed /next 1000/s"]["verdict"], "MISS")
        alone = seed["alone"]["current"]
        self.assertAlmostEqual(alone["p99_vs_nginx"], 0.954, delta=0.001)
        self.assertAlmostEqual(alone["fibd_p99_vs_this"], 0.16 / 0.21, delta=0.03)
        self.assertEqual(self.rows["1 seed, tiny_http alone (fibd's bytes, no commit)"]["verdict"], "info")

    def test_peak_read(self):
        read = self.result["scenarios"]["peak_read"]
        self.assertEqual(round(read["fibd"]["rps"]), 109650)
        self.assertEqual(self.rows["2 peak read /current"]["ratio"], "0.55x")
        self.assertEqual(self.rows["2 peak read /current"]["verdict"], "PASS")

    def test_durable_writes_and_the_disks_share(self):
        write = self.result["scenarios"]["peak_write"]
        batched, no_disk = write["batched"], write["no_disk"]
        self.assertEqual(round(batched["steps_per_s"]), 69827)
        self.assertAlmostEqual(batched["steps_per_commit"], 88.4, delta=0.05)
        # Three independent counts of the commits agree: fibd's metrics, the state file's
        # sequence number, and the kernel's count of fdatasync calls.
        commits = batched["commits"]
        self.assertEqual(set(commits), {"metrics", "state_file_seq", "perf_fdatasync"})
        self.assertLessEqual(max(commits.values()) - min(commits.values()), 2)
        self.assertEqual(self.rows["3 peak durable write"]["verdict"], "MISS")
        self.assertEqual(round(no_disk["steps_per_s"]), 95462)
        self.assertAlmostEqual(no_disk["vs_read"], 0.87, delta=0.005)
        self.assertAlmostEqual(no_disk["disk_keeps"], 69827 / 95462, delta=0.001)
        row = self.rows["3c durable write, state file on tmpfs"]
        self.assertIn("commit mean 2.3 µs", row["fibd"])
        self.assertEqual(row["verdict"], "info")
        # The --batch-max 1 phase had 5% steal: its comparison is shown, not judged.
        self.assertEqual(self.rows["3b durable write, --batch-max 1"]["verdict"], "NOISY")

    def test_targets_carry_a_verdict_each(self):
        targets = {t["name"]: t for t in self.result["targets"]}
        self.assertIs(targets["seed /current: p99 vs nginx"]["pass"], True)
        self.assertIs(targets["peak durable write vs fibd peak read"]["pass"], False)
        noisy = targets["group commit gain (batched / batch-max 1)"]
        self.assertIs(noisy["noisy"], True)
        self.assertIsNone(noisy["pass"])


class PartialRuns(unittest.TestCase):
    def test_a_run_without_the_optional_phases_reports_the_rest(self):
        # A machine without a tmpfs at /dev/shm skips row 3c; a run from before the seed on
        # tiny_http alone has no such files. Neither may take the other rows with it.
        with tempfile.TemporaryDirectory() as tmp:
            raw = copy_run(tmp, leave_out=("write-fibd-tmpfs", "metrics-write-fibd-tmpfs",
                                           "seed-alone"))
            result, _ = report(raw)
        names = rows(result)
        self.assertNotIn("3c durable write, state file on tmpfs", names)
        self.assertNotIn("1 seed, tiny_http alone (fibd's bytes, no commit)", names)
        self.assertNotIn("no_disk", result["scenarios"]["peak_write"])
        self.assertEqual(names["3 peak durable write"]["verdict"], "MISS")
        self.assertEqual(names["1 seed /current 1000/s"]["verdict"], "PASS")

    def test_a_noisy_tmpfs_phase_is_not_judged(self):
        with tempfile.TemporaryDirectory() as tmp:
            raw = copy_run(tmp)
            set_kv(raw, "write-fibd-tmpfs_cpu_steal_pct", 7)
            result, _ = report(raw)
        self.assertEqual(rows(result)["3c durable write, state file on tmpfs"]["verdict"], "NOISY")
        self.assertEqual(result["cpu_pct"]["write-fibd-tmpfs"]["steal"], 7)


if __name__ == "__main__":
    unittest.main(verbosity=1)
