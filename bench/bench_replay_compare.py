#!/usr/bin/env python3
"""Replay under OpenDC's rules + sim-vs-real comparison of 100 k tasks vs pandas reading the same
``task.parquet``.

Writes a CTS of N tasks (``invocations.jsonl``, ``proc_metrics.jsonl`` with 200 ms rows, ``nodes.json``) as the
parser writes them, for a FIFO first-fit run on 4 nodes x 4 slots, and an OpenDC result of it in OpenDC's
``task.parquet`` schema (one row per task per 1 s export interval, start times shifted onto a 1 s grid). Then:

- the OpenDC export of that CTS is replayed under OpenDC's rules (``tracekit.trace.replay_io.run_replay``, both
  grids) and timed; the 1 ms grid's ``task.parquet`` is what gets compared;
- ``tools/compare_opendc.py`` runs as a user runs it (its own process: imports, reading, metrics, report, three
  plots), wall time measured;
- baseline in the same invocation: pandas reading the same ``task.parquet`` and taking each task's last row (the
  least any comparison must do).

Target: replay + compare of 100 k tasks under 30 s on this 2-core machine. Quick and full mode both use 100 k
tasks (the target's size; ~25 s of setup); ``--tasks N`` changes it.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchlib import print_table
from tracekit.core import schema

HERE = Path(__file__).resolve().parent
TOOLS = HERE.parent / "tools"
NODES, SLOTS, MHZ = 4, 4, 2400.0
ROW_MS = 200
T0 = 1_760_000_000_000
TARGET_S = 30.0

TASK_SCHEMA = pa.schema([  # OpenDC's task table (DfltTaskExportColumns.kt)
    ("timestamp", pa.int64()), ("timestamp_absolute", pa.int64()), ("task_id", pa.int32()),
    ("task_name", pa.string()), ("host_name", pa.string()), ("mem_capacity", pa.int64()), ("cpu_count", pa.int32()),
    ("cpu_limit", pa.float32()), ("cpu_usage", pa.float32()), ("cpu_demand", pa.float32()),
    ("cpu_time_active", pa.int64()), ("cpu_time_idle", pa.int64()), ("cpu_time_steal", pa.int64()),
    ("cpu_time_lost", pa.int64()), ("uptime", pa.int64()), ("downtime", pa.int64()), ("num_failures", pa.int64()),
    ("num_pauses", pa.int64()), ("schedule_time", pa.int64()), ("submission_time", pa.int64()),
    ("finish_time", pa.int64()), ("task_state", pa.string()), ("scheduling_delay", pa.int64()),
    ("failure_delay", pa.int64()), ("checkpoint_delay", pa.int64())])


def make_cts(cts: Path, n: int, seed: int = 1) -> dict:
    """A CTS folder of n tasks as the parser writes it (blocks in invocation order, rows covering each run)."""
    rng = random.Random(seed)
    cts.mkdir(parents=True, exist_ok=True)
    free = [(0, k) for k in range(NODES * SLOTS)]  # (free at, slot); slot // SLOTS = node
    heapq.heapify(free)
    t_enq, runs = 0, []
    for i in range(n):
        t_enq += rng.randint(0, 330)
        dur = rng.randint(500, 4000)
        at, slot = heapq.heappop(free)
        disp = max(t_enq, at) + rng.randint(0, 3)
        start = disp + rng.randint(100, 400)
        end = start + dur
        heapq.heappush(free, (end + rng.randint(20, 200), slot))
        runs.append((i, t_enq, disp, start, end, slot // SLOTS + 1, rng.uniform(0.3, 1.0)))
    inv_lines, pm_lines = [], []
    for i, enq, disp, start, end, node, load in runs:
        tid, nid = f"t{i + 1:07d}", f"node{node}"
        cuts = list(range(start + ROW_MS, end, ROW_MS)) + [end]
        prev, cpu_total = start, 0
        for ts in cuts:
            cpu_us = int((ts - prev) * 1000 * load)
            cpu_total += cpu_us
            pm_lines.append(f'{{"ts_ms":{T0 + ts},"pid":{1000 + i},"dt_ms":{ts - prev},"cpu_ms":{cpu_us // 1000}.'
                            f'{cpu_us % 1000:03d},"rss_kb":1000,"node_id":"{nid}","trace_id":"{tid}","attempt":1,'
                            f'"starttime":{i}}}\n')
            prev = ts
        rec = dict.fromkeys(schema.INVOCATION_FIELDS)
        rec.update(trace_id=tid, pid=1000 + i, ts_enqueue=T0 + enq, ts_start=T0 + start, ts_end=T0 + end,
                   node_id=nid, attempt=1, profile="synth1c", cpu_units=1, ts_dispatch=T0 + disp, status="ok",
                   exit_code=0, cpu_ms=cpu_total / 1000, max_rss_kb=1000, starttime=i, binding="exclusive")
        inv_lines.append(json.dumps(rec, separators=(",", ":")) + "\n")
    (cts / "invocations.jsonl").write_text("".join(inv_lines))
    (cts / "proc_metrics.jsonl").write_text("".join(pm_lines))
    nodes = [dict.fromkeys(schema.NODE_FIELDS) | dict(node_id=f"node{k}", stage="bench", cpu_cores=SLOTS,
                                                        mem_mb=16000, cpu_freq_mhz=MHZ, capacity=SLOTS,
                                                        allocation_ratio=1.0, binding="exclusive", clk_tck=100,
                                                        page_size=4096)
             for k in range(1, NODES + 1)]
    (cts / "nodes.json").write_text(json.dumps(nodes, indent=1))
    return {"runs": runs, "rows": len(pm_lines)}


def make_sim(path: Path, runs: list, grid_ms: int = 1000, interval_ms: int = 1000) -> int:
    """An OpenDC result of the run: each task placed at the next whole second after its real placement, for its
    real slot length; one row per task per export interval until the tick after it ends."""
    rows = {f.name: [] for f in TASK_SCHEMA}
    for i, enq, disp, _start, end, node, load in runs:
        sched = int(math.ceil(disp / grid_ms) * grid_ms)
        fin = sched + (end - disp)
        ts = (enq // interval_ms + 1) * interval_ms
        while True:
            placed, done = ts >= sched, ts >= fin
            run_ = placed and not done
            for k, v in (("timestamp", ts), ("timestamp_absolute", T0 + ts), ("task_id", i),
                         ("task_name", f"t{i + 1:07d}"), ("host_name", f"node{node}" if run_ else ""),
                         ("mem_capacity", 1000), ("cpu_count", 1), ("cpu_limit", MHZ),
                         ("cpu_usage", MHZ * load if run_ else 0.0), ("cpu_demand", MHZ * load if run_ else 0.0),
                         ("cpu_time_active", 0), ("cpu_time_idle", 0), ("cpu_time_steal", 0), ("cpu_time_lost", 0),
                         ("uptime", 0), ("downtime", 0), ("num_failures", 0), ("num_pauses", 0),
                         ("schedule_time", sched if placed else None), ("submission_time", enq),
                         ("finish_time", fin if done else None),
                         ("task_state", "COMPLETED" if done else ("RUNNING" if placed else "PROVISIONING")),
                         ("scheduling_delay", 0), ("failure_delay", 0), ("checkpoint_delay", 0)):
                rows[k].append(v)
            if done:
                break
            ts += interval_ms
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows, schema=TASK_SCHEMA), path)
    return len(rows["timestamp"])


def _timed(argv: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} exited {out.returncode}: {out.stderr[-1500:]}")
    return wall, out.stdout


def pandas_baseline(task_parquet: Path) -> float:
    """pandas reads the task table and takes each task's last row."""
    import pandas as pd

    t0 = time.perf_counter()
    df = pd.read_parquet(task_parquet)
    last = df.sort_values(["task_id", "timestamp"]).groupby("task_id").tail(1)
    assert len(last) > 0
    return time.perf_counter() - t0


def try_replay(work: Path, run_dir: Path) -> tuple[float | None, Path | None, str]:
    """Export the CTS and replay the export under OpenDC's rules (``replay_io.run_replay``): (seconds, the folder of
    the 1 ms grid's task.parquet, what happened)."""
    from tracekit.trace.export import opendc
    from tracekit.trace.replay_io import run_replay

    trace = work / "trace"
    opendc.export(run_dir, trace)
    out = work / "replay-out"
    t0 = time.perf_counter()
    run_replay(trace, cts_dir=run_dir, out_dir=out, update_report=False)
    dt = time.perf_counter() - t0
    found = sorted((out / "1ms").rglob("task.parquet"))
    if not found:
        return dt, None, "the replay wrote no task.parquet: compare of the generated result instead"
    return dt, found[0].parent, f"replay (both grids): {dt:.2f} s"


def run(quick: bool, tasks: int = 100_000, keep: bool = False) -> list[dict]:
    """Rows for bench/run_all.py."""
    work = Path(tempfile.mkdtemp(prefix="tk-bench-compare-"))
    try:
        run_dir = work / "run"
        t0 = time.perf_counter()
        info = make_cts(run_dir / "CTS", tasks)
        sim_dir = work / "opendc" / "output" / "bench" / "raw-output" / "0" / "seed=0"
        nrows = make_sim(sim_dir / "task.parquet", info["runs"])
        print(f"bench_replay_compare: {tasks} tasks, {info['rows']} proc_metrics rows, {nrows} task.parquet rows "
              f"(setup {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
        replay_s, replay_out, note = try_replay(work, run_dir)
        print(f"bench_replay_compare: {note}", file=sys.stderr)
        target = replay_out or sim_dir
        py = sys.executable
        compare_s, stdout = _timed([py, str(TOOLS / "compare_opendc.py"), "--opendc", str(target), "--input",
                                    str(run_dir), "--output", str(work / "report")])
        verdict = next((line for line in stdout.splitlines() if line.startswith("compare:")), "?")
        print(f"bench_replay_compare: {verdict[:100]}", file=sys.stderr)
        base = pandas_baseline(target / "task.parquet")
        total = replay_s + compare_s
        rows = [
            {"bench": "replay_compare", "metric": f"replay {tasks // 1000}k tasks, 2 grids (s)", "ours": replay_s,
             "baseline": base, "ratio": replay_s / base, "target": ""},
            {"bench": "replay_compare", "metric": f"compare {tasks // 1000}k tasks, report + plots (s)",
             "ours": compare_s, "baseline": base, "ratio": compare_s / base, "target": ""},
            {"bench": "replay_compare", "metric": "replay + compare (s)", "ours": total, "baseline": base,
             "ratio": total / base, "target": f"< {TARGET_S:g} s: {'met' if total < TARGET_S else 'NOT met'}"},
        ]
        return rows
    finally:
        if keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    a = ap.parse_args()
    print_table(run(quick=True, tasks=a.tasks, keep=a.keep))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
