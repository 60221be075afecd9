"""CTS -> Chrome trace-event JSON for ui.perfetto.dev: task slices per node and slot, queue waits, CPU counters.

Layout: one process per node (threads = slots: concurrently running tasks never share one), one "queue" process
with the waits (enqueue -> start), and per node a counter "CPU (cores)": the exact step function of the traced
tasks' CPU rate (sum of cpu_ms/dt_ms of the rows alive at each instant), averaged into bins only when it has more
than ``max_points`` changes. Times are µs since the first enqueue/start (the epoch ms origin is in metadata).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tracekit.trace.intervals import assign_lanes
from tracekit.trace.reader import CtsFolder, open_cts


def cpu_step(starts: np.ndarray, ends: np.ndarray, rates: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Step function (times, level after each time) of the summed rates; averaged into bins past ``max_points``."""
    t = np.concatenate([starts, ends]).astype(np.float64)
    d = np.concatenate([rates, -rates])
    if t.size == 0:
        return t, d
    order = np.argsort(t, kind="stable")
    t, d = t[order], d[order]
    ut, first = np.unique(t, return_index=True)
    level = np.add.reduceat(d, first).cumsum()
    level[np.abs(level) < 1e-9] = 0.0  # float noise after the last task ends
    if ut.size <= max_points:
        return ut, level
    area = np.concatenate([[0.0], np.cumsum(level[:-1] * np.diff(ut))])  # integral of the step at each change
    edges = np.linspace(ut[0], ut[-1], max_points + 1)
    avg = np.diff(np.interp(edges, ut, area)) / np.diff(edges)
    return edges[:-1], avg


class NodeCpu:
    """One node's CPU counter, fed rows ``[a, b)`` with rates in batches: the exact step function (``cpu_step``) while
    the rows are few, else the average level in ``max_points`` equal bins over ``[lo, hi]`` (the node's first start
    and last end), which is what ``cpu_step`` gives for many rows, accumulated without keeping the rows."""

    def __init__(self, lo: float, hi: float, max_points: int, keep_rows: int | None = None) -> None:
        self.max_points = max_points
        self.edges = np.linspace(float(lo), float(max(hi, lo + 1)), max_points + 1)
        self.area = np.zeros(max_points)  # integral of the level (cores x ms) over each bin
        self.through = np.zeros(max_points + 1)  # difference array of rates over bins a row covers whole
        self.rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = []
        self.kept = 0
        self.keep_rows = 4 * max_points if keep_rows is None else keep_rows

    def add(self, starts: np.ndarray, ends: np.ndarray, rate: np.ndarray) -> None:
        """Rows ``[starts, ends)`` (ms) at ``rate`` cores."""
        a, b = starts, ends
        if self.rows is not None:
            self.rows.append((a, b, rate))
            self.kept += len(a)
            if self.kept > self.keep_rows:
                self.rows = None  # too many for the exact step function: the bins carry on alone
        e, nb = self.edges, self.max_points
        i = np.clip(np.searchsorted(e, a, side="right") - 1, 0, nb - 1)
        j = np.clip(np.searchsorted(e, b, side="right") - 1, 0, nb - 1)
        one = i == j
        self.area += np.bincount(i[one], weights=rate[one] * (b[one] - a[one]), minlength=nb)
        i, j, a, b, r = i[~one], j[~one], a[~one], b[~one], rate[~one]
        self.area += np.bincount(i, weights=r * (e[i + 1] - a), minlength=nb)  # the first, partial bin
        self.area += np.bincount(j, weights=r * (b - e[j]), minlength=nb)  # the last, partial bin
        np.add.at(self.through, i + 1, r)
        np.add.at(self.through, j, -r)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(times, level after each time)."""
        if self.rows is not None:
            if not self.rows:
                return np.zeros(0), np.zeros(0)
            return cpu_step(*(np.concatenate([c[k] for c in self.rows]) for k in range(3)), self.max_points)
        width = np.diff(self.edges)
        return self.edges[:-1], (self.area + np.cumsum(self.through[:-1]) * width) / width


def _cpu_rows(cts: CtsFolder, nodes: list[str]) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(node, start ms, end ms, CPU rate in cores) batches of every proc_metrics row."""
    for node, ts_ms, dt_ms, cpu_ms in cts.node_rows(nodes):
        yield node, *_spans(ts_ms, dt_ms, cpu_ms)


def _spans(ts: np.ndarray, dt: np.ndarray, cpu_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ts, dt = ts.astype(np.float64), dt.astype(np.float64)
    return ts - dt, ts, np.divide(cpu_ms, dt, out=np.zeros_like(cpu_ms, dtype=np.float64), where=dt > 0)


def export_timeline(input_dir: str | Path, output: str | Path, max_points: int = 20000) -> dict:
    """Write the timeline JSON; returns counts {slices, counters, nodes}."""
    cts = open_cts(input_dir)
    cts_dir = cts.path
    invs = cts.invocations(strict=False)
    try:
        nodes = [n["node_id"] for n in cts.nodes(strict=False)]
    except (KeyError, TypeError):
        nodes = []
    ran = [i for i in invs if i.get("ts_start") is not None and i.get("ts_end") is not None and i.get("pid")]
    nodes = sorted(set(nodes) | {i["node_id"] for i in ran}, key=str)
    origin = min([i["ts_start"] for i in ran] + [i["ts_enqueue"] for i in ran if i.get("ts_enqueue") is not None],
                 default=0)
    pid_of = {n: k + 1 for k, n in enumerate(nodes)}
    queue_pid = len(nodes) + 1
    events: list[dict] = []

    def us(ms: float) -> float:
        return round((ms - origin) * 1000.0, 3)

    for n, pid in pid_of.items():
        events.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": f"node {n}"}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}})
        mine = [i for i in ran if i["node_id"] == n]
        lanes = assign_lanes([(i["ts_start"], i["ts_end"]) for i in mine])
        for lane in sorted(set(lanes)):
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": lane + 1,
                           "args": {"name": f"slot {lane}"}})
        for inv, lane in zip(mine, lanes):
            events.append({"ph": "X", "name": f"{inv['trace_id']} [{inv.get('profile')}]", "cat": inv.get("status"),
                           "pid": pid, "tid": lane + 1, "ts": us(inv["ts_start"]),
                           "dur": round((inv["ts_end"] - inv["ts_start"]) * 1000.0, 3),
                           "args": {k: inv.get(k) for k in ("trace_id", "attempt", "status", "profile", "cpu_units",
                                                            "cpu_ms", "max_rss_kb", "exit_code", "error")}})
    waits = [i for i in ran if i.get("ts_enqueue") is not None and i["ts_start"] >= i["ts_enqueue"]]
    if waits:
        events.append({"ph": "M", "name": "process_name", "pid": queue_pid,
                       "args": {"name": "queue (enqueue -> start)"}})
        lanes = assign_lanes([(i["ts_enqueue"], i["ts_start"]) for i in waits])
        for inv, lane in zip(waits, lanes):
            events.append({"ph": "X", "name": f"wait {inv['trace_id']}", "cat": "queue", "pid": queue_pid,
                           "tid": lane + 1, "ts": us(inv["ts_enqueue"]),
                           "dur": round((inv["ts_start"] - inv["ts_enqueue"]) * 1000.0, 3),
                           "args": {"trace_id": inv["trace_id"], "node_id": inv["node_id"]}})
    slices = sum(1 for e in events if e["ph"] == "X")
    # CPU counters from proc_metrics (or the parser's row cache of it), per node
    cpu = {n: NodeCpu(min((i["ts_start"] for i in ran if i["node_id"] == n), default=0),
                      max((i["ts_end"] for i in ran if i["node_id"] == n), default=1), max_points) for n in nodes}
    for node, a, b, rate in _cpu_rows(cts, nodes):
        cpu[node].add(a, b, rate)
    counters = 0
    for n, acc in cpu.items():
        t, level = acc.result()
        for ti, lv in zip(t, level):
            events.append({"ph": "C", "name": "CPU (cores)", "pid": pid_of[n], "ts": us(float(ti)),
                           "args": {"cores": round(float(lv), 4)}})
        counters += t.size
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write('{"displayTimeUnit":"ms","metadata":' + json.dumps({"origin_epoch_ms": origin,
                                                                      "source": str(cts_dir)}))
        fh.write(',"traceEvents":[\n')
        fh.write(",\n".join(json.dumps(e, separators=(",", ":")) for e in events))
        fh.write("\n]}\n")
    os.replace(tmp, out)
    return {"slices": slices, "counters": counters, "nodes": len(nodes), "output": str(out)}
