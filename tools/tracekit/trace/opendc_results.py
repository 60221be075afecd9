"""Read what OpenDC writes after a run: ``task.parquet`` (and ``host.parquet`` when present) of one output folder.

OpenDC's task table (``DfltTaskExportColumns.kt``) has one row per task per export interval: ``timestamp`` and
``timestamp_absolute`` (ms), ``task_id`` (int32 in the OpenDC release this toolkit targets; a string in later
ones), ``task_name``, ``host_name`` ("" while the task has no host), ``cpu_count``, ``cpu_limit``/``cpu_usage``/
``cpu_demand`` (MHz), ``cpu_time_*``, ``uptime``, ``downtime``, ``num_failures``, ``num_pauses``, and the optional
``schedule_time``, ``submission_time``, ``finish_time`` (ms, the simulation's clock, the same clock as
``timestamp``) and ``task_state``. A task's times are those of its last row; its host is the last non-empty
``host_name``. The host table (``DfltHostExportColumns.kt``): ``timestamp``, ``host_name``, ``core_count``,
``cpu_capacity``/``cpu_usage`` (MHz), ... Each row's usage is taken as the level over the export interval that
ends at its ``timestamp``.

Public API::

    find_output(path) -> (task.parquet path, host.parquet path or None)   searches nested folders
    read_tasks(task_path) -> SimTasks
    host_cpu(host_path) -> SimCpu          cores x ms per host from host.parquet
    task_cpu(tasks) -> SimCpu              MHz x ms per host from the task rows (divide by the per-core MHz)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tracekit.core.errors import BadInput

TASK_FILE, HOST_FILE = "task.parquet", "host.parquet"
TASK_COLUMNS = ("task_id", "task_name", "host_name", "timestamp", "cpu_usage", "cpu_count", "submission_time",
                "schedule_time", "finish_time", "task_state")
TASK_REQUIRED = ("task_id", "timestamp", "submission_time", "schedule_time", "finish_time")
HOST_REQUIRED = ("timestamp", "host_name", "cpu_usage", "cpu_capacity", "core_count")


def find_output(path: str | Path) -> tuple[Path, Path | None]:
    """The ``task.parquet`` under ``path`` (the file itself, or the only one in its sub-folders, e.g.
    ``output/<name>/raw-output/<run>/seed=<n>/``) and the ``host.parquet`` beside it, if any."""
    p = Path(path)
    if p.is_file():
        task = p
    elif p.is_dir():
        found = sorted(p.rglob(TASK_FILE))
        if not found:
            raise BadInput(f"{p}: no {TASK_FILE} in this folder or below it (is it OpenDC's output folder, and did "
                           "the run finish?)", path=p)
        if len(found) > 1:
            names = ", ".join(str(f.parent) for f in found[:5]) + (" ..." if len(found) > 5 else "")
            raise BadInput(f"{p}: {len(found)} {TASK_FILE} files (several runs or seeds): pass one of their folders: "
                           f"{names}", path=p)
        task = found[0]
    else:
        raise BadInput(f"{p}: no such file or folder", path=p)
    host = task.parent / HOST_FILE
    return task, (host if host.exists() else None)


@dataclass
class SimTasks:
    """One entry per simulated task (its last row), plus the rows needed for CPU from the task table."""

    path: Path
    rows: int
    key: list  # task_id values (int or str)
    key_is_int: bool
    name: np.ndarray  # object: task_name, "" when absent
    host: np.ndarray  # int: index into ``hosts`` of the last non-empty host_name, -1 when never placed
    hosts: list[str]
    submission: np.ndarray  # float ms (nan when null)
    schedule: np.ndarray
    finish: np.ndarray
    state: np.ndarray  # object
    interval_ms: float  # the export interval (median step between distinct timestamps)
    row_task: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # CPU rows: task index
    row_time: np.ndarray = field(default_factory=lambda: np.zeros(0))  # CPU rows: timestamp
    row_usage: np.ndarray = field(default_factory=lambda: np.zeros(0))  # CPU rows: cpu_usage MHz
    row_host: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # CPU rows: host index

    @property
    def finished(self) -> np.ndarray:
        return ~np.isnan(self.finish) & ~np.isnan(self.schedule)


@dataclass
class SimCpu:
    """Intervals of CPU use per simulated host: ``hosts[k] -> (start_ms, end_ms, amount)``, ``unit`` = "core_ms"
    (from host.parquet) or "mhz_ms" (from the task rows: divide by the host's per-core MHz)."""

    source: str
    unit: str
    hosts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]


def _dict_indices(col: pa.ChunkedArray) -> tuple[np.ndarray, list]:
    """Dictionary-encode a column: (index per row, the distinct values); nulls get -1."""
    enc = pc.dictionary_encode(col).combine_chunks()
    idx = enc.indices.to_numpy(zero_copy_only=False)
    if enc.indices.null_count:
        idx = np.where(enc.indices.is_null().to_numpy(zero_copy_only=False), -1, idx)
    return idx.astype(np.int64), enc.dictionary.to_pylist()


def _float(col: pa.ChunkedArray) -> np.ndarray:
    return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> nan


def _interval(ts: np.ndarray) -> float:
    u = np.unique(ts[~np.isnan(ts)])
    d = np.diff(u)
    d = d[d > 0]
    return float(np.median(d)) if d.size else math.nan


def read_tasks(task_path: str | Path) -> SimTasks:
    """Read OpenDC's ``task.parquet``: one entry per task (last row by timestamp), plus its CPU rows."""
    path = Path(task_path)
    try:
        have = set(pq.read_schema(path).names)
        cols = [c for c in TASK_COLUMNS if c in have]
        missing = [c for c in TASK_REQUIRED if c not in have]
        if missing:
            raise BadInput(f"{path}: not OpenDC's task table (no column {', '.join(missing)}); export it with the "
                           "default task columns", path=path)
        t = pq.read_table(path, columns=cols)
    except (OSError, pa.ArrowInvalid) as exc:
        raise BadInput(f"{path}: unreadable parquet ({str(exc).splitlines()[0]})", path=path) from None
    n = t.num_rows
    gid, keys = _dict_indices(t["task_id"])
    if (gid < 0).any():
        raise BadInput(f"{path}: rows without task_id", path=path)
    ts = _float(t["timestamp"])
    order = np.lexsort((np.arange(n), ts, gid))
    g_sorted = gid[order]
    last = order[np.r_[g_sorted[1:] != g_sorted[:-1], True]] if n else np.zeros(0, np.int64)
    task_of_last = gid[last]
    k = len(keys)
    pick = np.empty(k, np.int64)
    pick[task_of_last] = last

    def col_last(name: str) -> np.ndarray:
        return _float(t[name])[pick] if name in cols else np.full(k, math.nan)

    if "task_name" in cols:
        nid, names = _dict_indices(t["task_name"])
        names_arr = np.array([("" if x is None else str(x)) for x in names] + [""], dtype=object)
        name = names_arr[nid[pick]]
    else:
        name = np.full(k, "", dtype=object)
    if "task_state" in cols:
        sid, states = _dict_indices(t["task_state"])
        state = np.array([("" if x is None else str(x)) for x in states] + [""], dtype=object)[sid[pick]]
    else:
        state = np.full(k, "", dtype=object)
    host = np.full(k, -1, np.int64)
    hosts: list[str] = []
    row_host = np.full(n, -1, np.int64)
    if "host_name" in cols:
        hid, hnames = _dict_indices(t["host_name"])
        real_host = np.array([h is not None and str(h) != "" for h in hnames] + [False], dtype=bool)
        hosts_all = ["" if h is None else str(h) for h in hnames]
        placed = real_host[hid]
        # compact the host list to the non-empty names
        remap = np.full(len(hosts_all) + 1, -1, np.int64)
        keep = [j for j, ok in enumerate(real_host[:-1]) if ok]
        remap[keep] = np.arange(len(keep))
        hosts = [hosts_all[j] for j in keep]
        row_host = remap[hid]
        po = order[placed[order]]  # placed rows in (task, time) order
        if po.size:
            gp = gid[po]
            lastp = po[np.r_[gp[1:] != gp[:-1], True]]
            host[gid[lastp]] = row_host[lastp]
    key_is_int = pa.types.is_integer(t.schema.field("task_id").type)
    usage = _float(t["cpu_usage"]) if "cpu_usage" in cols else np.zeros(n)
    placed_rows = order[row_host[order] >= 0]  # rows on a host, in (task, time) order
    return SimTasks(path=path, rows=n, key=keys, key_is_int=key_is_int, name=name, host=host, hosts=hosts,
                    submission=col_last("submission_time"), schedule=col_last("schedule_time"),
                    finish=col_last("finish_time"), state=state, interval_ms=_interval(ts),
                    row_task=gid[placed_rows], row_time=ts[placed_rows], row_usage=usage[placed_rows],
                    row_host=row_host[placed_rows])


def task_cpu(tasks: SimTasks) -> SimCpu:
    """CPU per host from the task rows, amounts in MHz x ms. A task's usage is a step function through its rows on
    a host: each row's ``cpu_usage`` holds since the task's previous row (since ``schedule_time`` for its first),
    and its last row's holds until ``finish_time`` (the row after the end has no host and no usage); everything
    clipped to [schedule_time, finish_time]."""
    t, ts = tasks.row_task, tasks.row_time
    first = np.r_[True, t[1:] != t[:-1]] if t.size else np.zeros(0, bool)
    last = np.r_[t[1:] != t[:-1], True] if t.size else np.zeros(0, bool)
    sched, fin = tasks.schedule[t], tasks.finish[t]
    start = np.where(first, np.where(np.isnan(sched), ts - np.nan_to_num(tasks.interval_ms), sched),
                     np.r_[ts[:1], ts[:-1]])
    end = np.where(last & ~np.isnan(fin), np.maximum(ts, np.nan_to_num(fin)), ts)
    start = np.where(np.isnan(sched), start, np.maximum(start, sched))
    end = np.where(np.isnan(fin), end, np.minimum(end, fin))
    ok = (end > start) & (tasks.row_usage > 0)
    amount = tasks.row_usage * (end - start)
    out = {}
    for h, name in enumerate(tasks.hosts):
        sel = ok & (tasks.row_host == h)
        out[name] = (start[sel], end[sel], amount[sel])
    return SimCpu(source=TASK_FILE, unit="mhz_ms", hosts=out)


def host_cpu(host_path: str | Path) -> SimCpu:
    """CPU per host from ``host.parquet``: ``cpu_usage / (cpu_capacity / core_count)`` cores over each export
    interval (the step between a host's consecutive timestamps; the median for its first row); cores x ms."""
    path = Path(host_path)
    try:
        have = set(pq.read_schema(path).names)
        missing = [c for c in HOST_REQUIRED if c not in have]
        if missing:
            raise BadInput(f"{path}: not OpenDC's host table (no column {', '.join(missing)})", path=path)
        t = pq.read_table(path, columns=list(HOST_REQUIRED))
    except (OSError, pa.ArrowInvalid) as exc:
        raise BadInput(f"{path}: unreadable parquet ({str(exc).splitlines()[0]})", path=path) from None
    hid, names = _dict_indices(t["host_name"])
    ts = _float(t["timestamp"])
    usage, cap, cores = _float(t["cpu_usage"]), _float(t["cpu_capacity"]), _float(t["core_count"])
    iv = _interval(ts)
    per_core = np.where((cap > 0) & (cores > 0), cap / np.maximum(cores, 1), math.nan)
    level = np.where(np.isnan(per_core), 0.0, usage / np.where(np.isnan(per_core), 1.0, per_core))
    out = {}
    for h, name in enumerate(names):
        if name is None or str(name) == "":
            continue
        sel = np.flatnonzero(hid == h)
        sel = sel[np.argsort(ts[sel], kind="stable")]
        end = ts[sel]
        start = np.r_[end[0] - (iv if not math.isnan(iv) else 0.0), end[:-1]] if sel.size else end
        out[str(name)] = (start, end, level[sel] * (end - start))
    return SimCpu(source=HOST_FILE, unit="core_ms", hosts=out)
