#!/usr/bin/env python3
"""Collector cost: CPU per PID-sample of Tracekit's collector vs ``pidstat -u -r -p <pids> 1`` on the same PIDs.

Both sample the same ``sleep`` processes (64 and 512) at the same time, both every second: ours is the
collector's own sampling loop (``collector.sample_loop``: ticks, JSON lines, sleeps and wake-ups) run in
this process, measured with the process CPU clock (ns resolution); pidstat runs as a
child for K one-second reports, its CPU from ``wait4`` rusage, divided by the PID-samples it read
(PIDs x (K+1) reads). Target: ours <= 1/4 of pidstat per PID-sample. Then ours alone at 200 ms gives the
collector's CPU share (% of one CPU) at its default interval; its baseline is pidstat's per-PID-sample cost
at that rate.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import print_table
from tracekit.node import procfs, sentinel
from tracekit.node.collector import Sampler, sample_loop, settle_heap

NODE = "bench"
INTERVAL_S = 0.2


def _spawn_sleepers(n: int) -> list:
    return [subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL) for _ in range(n)]


def _write_sentinels(pid_dir: Path, procs: list) -> None:
    for i, p in enumerate(procs):
        sentinel.write_sentinel(pid_dir, {"trace_id": f"b{i}", "attempt": 1, "node_id": NODE, "pid": p.pid,
                                          "starttime": procfs.starttime(p.pid), "cgroup": None, "ts_created": 0})


def ours_cost(pid_dir: Path, out: Path, n: int, ticks: int, interval_s: float = INTERVAL_S) -> tuple[float, int]:
    """(CPU seconds, PID-samples) of ``ticks`` ticks of the collector's own loop (sleeps and wake-ups included)."""
    sampler = Sampler.for_interval(NODE, pid_dir, None, interval_s * 1000)  # as the daemon at this interval
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        sampler.tick()  # first tick reads the sentinels and writes acks: a one-off per task, not steady state
        settle_heap()  # as the daemon does before its loop
        time.sleep(interval_s)
        c0 = time.process_time()
        stats = sample_loop(sampler, fd, interval_s * 1000, max_ticks=ticks)
        cpu = time.process_time() - c0
    finally:
        os.close(fd)
    if stats["samples"] != n * ticks:
        raise RuntimeError(f"collector sampled {stats['samples']} PID-samples, expected {n * ticks}")
    return cpu, stats["samples"]


def start_pidstat(pids: list, reports: int) -> subprocess.Popen:
    """``pidstat -u -r -p <pids> 1 <reports>``, output discarded (its formatting cost counts, as in real use)."""
    cmd = ["pidstat", "-u", "-r", "-p", ",".join(map(str, pids)), "1", str(reports)]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, LC_ALL="C"))


def pidstat_cost(p: subprocess.Popen, n: int, reports: int) -> tuple[float, int]:
    """(CPU seconds, PID-samples) of a finished ``start_pidstat`` run."""
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"pidstat exited {p.returncode}")
    return ru.ru_utime + ru.ru_stime, n * (reports + 1)


def run(quick: bool = True) -> list[dict]:
    """Benchmark rows for bench/run_all.py (quick: < 60 s)."""
    if shutil.which("pidstat") is None:
        raise RuntimeError("pidstat not installed (apt-get install -y sysstat)")
    ticks, reports = (15, 6) if quick else (50, 20)
    rows: list[dict] = []
    from tqdm import tqdm

    sizes = (64, 512)
    with tempfile.TemporaryDirectory(prefix="tk-bench-coll-") as tmp, \
            tqdm(total=2 * len(sizes), desc="collector bench", unit="step", file=sys.stderr) as bar:
        for n in sizes:
            pid_dir = Path(tmp) / f"pids{n}"
            pid_dir.mkdir()
            procs = _spawn_sleepers(n)
            try:
                _write_sentinels(pid_dir, procs)
                ps = start_pidstat([p.pid for p in procs], reports)  # same PIDs, same seconds, same rate
                time.sleep(0.5)  # half a period apart: the two never wake at the same instant
                ours_s, ours_n = ours_cost(pid_dir, Path(tmp) / f"samples{n}.jsonl", n, reports, 1.0)
                base_s, base_n = pidstat_cost(ps, n, reports)
                bar.update()
                share_s, _ = ours_cost(pid_dir, Path(tmp) / f"samples{n}.jsonl", n, ticks, INTERVAL_S)
                bar.update()
            finally:
                for p in procs:
                    p.kill()
                for p in procs:
                    p.wait()
            ours_us = ours_s / ours_n * 1e6
            base_us = base_s / base_n * 1e6
            rows.append({"bench": "collector", "metric": f"cpu_us_per_pid_sample@{n}pids", "ours": ours_us,
                         "baseline": base_us, "ratio": ours_us / base_us if base_us else float("nan"),
                         "target": "ratio <= 0.25 (both every 1 s)"})
            share = share_s / ticks / INTERVAL_S * 100
            base_share = base_us * n / INTERVAL_S / 1e6 * 100
            rows.append({"bench": "collector", "metric": f"cpu_share_pct@200ms,{n}pids", "ours": share,
                         "baseline": base_share, "ratio": share / base_share if base_share else float("nan"),
                         "target": "report; baseline = pidstat's cost at 200 ms"})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="20 one-second rounds and 50 ticks at 200 ms per size (slower)")
    args = ap.parse_args()
    print_table(run(quick=not args.full))
    return 0


if __name__ == "__main__":
    sys.exit(main())
