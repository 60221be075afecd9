"""The launch path: placement (``ts_dispatch``) to the application's exec (``ts_start``), and trivial-task throughput.

- ``launch``: 200 trivial tasks (``true`` through the command adapter) on one idle emulated node with capacity 2;
  p50 and p95 of ``ts_start - ts_dispatch`` (node clock, corrected by the worker's measured offset) through the
  warm launcher (ours) vs. a bare ``subprocess.Popen(["true"])`` loop in the same run (baseline: the time
  ``Popen`` takes to fork and exec). Targets: p50 <= 15 ms, p95 <= 40 ms. A third row is the same workload on the
  old path (``TRACEKIT_LAUNCHER=0``: one fresh adapter interpreter per task), for the before/after.
- ``throughput``: trivial tasks through the whole cluster (dispatcher to ``done``) on 2 emulated nodes, tasks/s.
  Target >= 100 tasks/s, measured as the dispatcher's makespan (first enqueue to the last ``done`` record).
  Each node has capacity 16: a task shorter than one collector interval (200 ms) keeps its slot until the
  collector sampled it (the held-zombie sample, docs/node-side.md), so the rate is slots / ~(hold + launch):
  with capacity 8 it is ~75 tasks/s on this 2-core machine, bounded by the sampling, not by the launch path.

Run: ``python3 bench/bench_launch.py [--full]`` (or via ``make bench``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest.mock import patch

from benchlib import print_table
from tracekit.cluster.emulation import CONTROLLER, Cluster, ClusterConfig, script
from tracekit.core import paths

PY = sys.executable
PROFILES = {"noop": {"app": "command", "cpu_units": 1, "argv": ["true"]}}


def pct(xs: list, q: float) -> float:
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1)))))
    return xs[k]


def _offset(rid: str, node: str) -> float:
    try:
        clock = json.loads(paths.worker_meta_path(rid, node).read_text()).get("clock") or {}
        return float(clock.get("offset_ms") or 0.0)
    except (OSError, ValueError):
        return 0.0


def _execs(rid: str, node: str) -> list[dict]:
    p = paths.events_path(rid, node)
    return [e for e in map(json.loads, p.read_text().splitlines()) if e.get("kind") == "exec"]


def run_cluster(rid: str, nodes: int, total: int, capacity: int, launcher: bool) -> tuple[float, list[dict], dict]:
    """Dispatch ``total`` noop tasks and wait for them; (s from the first enqueue to the last done, exec events,
    clock offsets)."""
    with patch.dict(os.environ, TRACEKIT_LAUNCHER="1" if launcher else "0"):
        cfg = ClusterConfig(run_id=rid, nodes=nodes, netns_mode="0", grace_s=5,
                            worker_args=["--capacity-units", str(capacity)])
        with Cluster(cfg) as cl:
            for n in cl.node_ids:
                cl.start_node_processes(n)
            cl.wait_nodes_registered()
            cl.start_scheduler()
            time.sleep(0.5)  # let the collectors take their first tick: the node is idle when the tasks come
            t0 = time.monotonic()
            cl.start_controller_process("dispatcher", [PY, str(script("dispatcher")), "--inputs",
                                                       str(paths.inputs_root()), "--mix", "noop=1", "--total",
                                                       str(total), "--seed", "1", "--wait", "--no-progress",
                                                       "--run-id", rid])
            code = cl.sup.wait_exit(CONTROLLER, "dispatcher", 600)
            elapsed = time.monotonic() - t0
            if code != 0:
                raise RuntimeError(f"dispatcher exited {code} ({rid})")
            node_ids = list(cl.node_ids)
            c = cl.client()
            done = [json.loads(v) for v in c.hgetall(cl.keys.done).values()]
            ends = [d["ts_done"] for d in done if d.get("ts_done")]
    evs = [e for n in node_ids for e in _execs(rid, n)]
    enq = [e["ts_enqueue"] for e in evs if e.get("ts_enqueue") is not None]
    if ends and enq:  # the dispatcher's makespan: first enqueue to the last task recorded done (controller ms)
        elapsed = (max(ends) - min(enq)) / 1000
    return elapsed, evs, {n: _offset(rid, n) for n in node_ids}


def latencies(evs: list[dict], offsets: dict) -> list[float]:
    """ts_start (node clock + offset = controller clock) - ts_dispatch (controller clock), ms."""
    return [e["ts_start"] + offsets.get(e["node_id"], 0.0) - e["ts_dispatch"] for e in evs
            if e.get("status") == "ok" and e.get("ts_dispatch") is not None]


def popen_baseline(total: int) -> list[float]:
    """The time a bare Popen(["true"]) takes (fork + exec, it returns once exec succeeded), 2 at a time."""
    out, live = [], []
    for _ in range(total):
        t = time.perf_counter()
        p = subprocess.Popen(["true"], stdin=subprocess.DEVNULL)
        out.append((time.perf_counter() - t) * 1000)
        live.append(p)
        if len(live) >= 2:
            live.pop(0).wait()
    for p in live:
        p.wait()
    return out


def stages(evs: list[dict], offsets: dict) -> str:
    """Median ms of each launch stage, in order: dispatch->taken->checked->bound->forked->sentinel->exec."""
    names = ("ts_taken", "ts_checked", "ts_bound", "ts_forked", "ts_sentinel", "ts_start")
    parts = []
    for e in evs:
        if e.get("ts_dispatch") is None or any(e.get(n) is None for n in names):
            continue
        off = offsets.get(e["node_id"], 0.0)
        ts = [e["ts_dispatch"]] + [e[n] + off for n in names]
        parts.append([b - a for a, b in zip(ts, ts[1:])])
    if not parts:
        return ""
    med = [statistics.median(col) for col in zip(*parts)]
    labels = ("queue", "check", "bind", "fork", "sentinel", "exec")
    return " ".join(f"{lab} {m:.1f}" for lab, m in zip(labels, med))


def run(quick: bool = True) -> list[dict]:
    """Rows for bench/run_all.py."""
    total = 200
    rows = []
    with tempfile.TemporaryDirectory(prefix="tk-bench-") as d:
        root = Path(d)
        prof = root / "profiles.json"
        prof.write_text(json.dumps(PROFILES))
        (root / "in").mkdir()
        with patch.dict(os.environ, TRACEKIT_LOGS=str(root / "logs"), TRACEKIT_INPUTS=str(root / "in"),
                        TRACEKIT_OUTPUTS=str(root / "out"), TRACEKIT_PROFILES=str(prof)):
            base = popen_baseline(total)
            _, evs, offs = run_cluster("bl1", 1, total, 2, launcher=True)
            lat = latencies(evs, offs)
            b50, b95 = pct(base, 50), pct(base, 95)
            o50, o95 = pct(lat, 50), pct(lat, 95)
            print(f"launch stages, median ms (launcher): {stages(evs, offs)}", file=sys.stderr)
            rows.append({"bench": "launch", "metric": f"placement->exec p50 ms, {len(lat)} tasks, 1 node cap 2",
                         "ours": round(o50, 2), "baseline": round(b50, 2), "ratio": round(o50 / b50, 1),
                         "target": "ours <= 15 ms"})
            rows.append({"bench": "launch", "metric": "placement->exec p95 ms", "ours": round(o95, 2),
                         "baseline": round(b95, 2), "ratio": round(o95 / b95, 1), "target": "ours <= 40 ms"})
            old_total = 50 if quick else total
            _, evs0, offs0 = run_cluster("bs1", 1, old_total, 2, launcher=False)
            lat0 = latencies(evs0, offs0)
            print(f"launch stages, median ms (subprocess): {stages(evs0, offs0)}", file=sys.stderr)
            rows.append({"bench": "launch", "metric": f"p50/p95 ms, old subprocess path ({len(lat0)} tasks)",
                         "ours": f"{pct(lat0, 50):.1f}/{pct(lat0, 95):.1f}", "baseline": None, "ratio": None,
                         "target": "(before, for comparison)"})
            n = 400 if quick else 1000
            wall, evs2, _ = run_cluster("bt1", 2, n, 16, launcher=True)
            ok = sum(e.get("status") == "ok" for e in evs2)
            rows.append({"bench": "launch", "metric": f"throughput tasks/s, {n} noop tasks, 2 nodes cap 16",
                         "ours": round(ok / wall, 1), "baseline": None, "ratio": None, "target": ">= 100 tasks/s"})
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="the old path with all 200 tasks; 1000 for throughput")
    print_table(run(quick=not ap.parse_args().full))
