"""CTS -> OpenDC workload trace (docs/traces.md): ``tasks.parquet``, ``fragments.parquet``, topology + experiment JSON.

OpenDC types strictly, so both files are written with the explicit arrow schemas below (int32 ids, int64 ms,
double MHz, required columns non-nullable). Tasks are sorted by submission (``vocabulary.invocation_order_key``, the
order the parser already wrote proc_metrics in), ids are dense int32 in that order, the trace_id is kept in ``name``.
Fragments are the CTS intervals, read through ``reader.CtsFolder.task_rows`` (batches stream out):
``duration`` = dt_ms and ``cpu_usage`` = cpu_ms / dt_ms x the node's per-core MHz, so
sum(cpu_usage x duration) = CPU ms x MHz exactly.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tracekit.core.errors import BadInput, BadRunFolder, UsageError
from tracekit.trace.reader import NotGrouped, open_cts
from tracekit.trace.rowcache import ROWS_CACHE
from tracekit.trace.vocabulary import PROC_METRICS, has_run, invocation_order_key, submission_ms

TASKS, FRAGMENTS, TOPOLOGY, EXPERIMENT = "tasks.parquet", "fragments.parquet", "topology.json", "experiment.json"

TASK_SCHEMA = pa.schema([
    pa.field("id", pa.int32(), nullable=False),
    pa.field("submission_time", pa.int64(), nullable=False),  # epoch ms
    pa.field("duration", pa.int64(), nullable=False),  # ms = sum of the task's fragments
    pa.field("cpu_count", pa.int32(), nullable=False),  # requested cpu_units
    pa.field("cpu_capacity", pa.float64(), nullable=False),  # MHz for the whole task = cores x per-core MHz
    pa.field("mem_capacity", pa.int64(), nullable=False),  # KB (peak RSS)
    pa.field("name", pa.string(), nullable=True),  # the trace_id
])
FRAGMENT_SCHEMA = pa.schema([
    pa.field("id", pa.int32(), nullable=False),
    pa.field("duration", pa.int64(), nullable=False),  # ms
    pa.field("cpu_usage", pa.float64(), nullable=False),  # MHz across the task's cores
])
REQUIRED_TASK_COLUMNS = tuple(f.name for f in TASK_SCHEMA if not f.nullable)
REQUIRED_FRAGMENT_COLUMNS = tuple(f.name for f in FRAGMENT_SCHEMA if not f.nullable)


def node_mhz(nodes: list[dict], needed: set, cpu_freq_mhz: float | None) -> dict[str, float]:
    """Per-core MHz per node: nodes.json cpu_freq_mhz, else --cpu-freq-mhz, else a clear error (never a constant)."""
    out, missing = {}, []
    by_id = {n.get("node_id"): n for n in nodes}
    for nid in sorted(needed, key=str):
        mhz = (by_id.get(nid) or {}).get("cpu_freq_mhz")
        if isinstance(mhz, (int, float)) and mhz > 0:
            out[nid] = float(mhz)
        elif cpu_freq_mhz:
            out[nid] = float(cpu_freq_mhz)
        else:
            missing.append(str(nid))
    if missing:
        raise UsageError(f"per-core CPU MHz unknown for node(s) {', '.join(missing)} (no cpu_freq_mhz in nodes.json): "
                         "pass --cpu-freq-mhz MHZ")
    return out


@dataclass
class ExportSummary:
    """What the export wrote (printed by the script, returned to tests)."""

    out_dir: Path
    tasks: int = 0
    fragments: int = 0
    first_submission_ms: int | None = None
    last_end_ms: int | None = None
    cpu_ms: float = 0.0
    mhz_ms: float = 0.0  # sum of cpu_ms x per-core MHz (the round-trip invariant)
    skipped: Counter = field(default_factory=Counter)
    over_capacity_fragments: int = 0
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def lines(self) -> list[str]:
        span = ((self.last_end_ms - self.first_submission_ms) / 1000
                if self.first_submission_ms is not None and self.last_end_ms is not None else 0.0)
        out = [*self.notes,
               f"OpenDC trace: {self.out_dir}",
               f"  tasks {self.tasks}, fragments {self.fragments}, time span {span:.3f} s, "
               f"CPU {self.cpu_ms / 3.6e6:.6f} CPU-hours"]
        if self.skipped:
            out.append("  left out: " + ", ".join(f"{v} {k}" for k, v in sorted(self.skipped.items())))
        if self.over_capacity_fragments:
            out.append(f"  {self.over_capacity_fragments} fragment(s) use more CPU than the task's cpu_capacity "
                       "(the task used more cores than its cpu_units; kept as measured)")
        out += [f"  wrote {p}" for p in self.files]
        return out


def select_tasks(invocations: list[dict], include_failed: bool, summary: ExportSummary) -> list[dict]:
    """Executed invocations to export, in submission order (ok; failed too with --include-failed; never fenced)."""
    chosen = []
    for inv in invocations:
        status = inv.get("status")
        ran = has_run(inv)
        if status == "ok" or (include_failed and status == "failed" and ran):
            if not ran:
                summary.skipped["without a run"] += 1
                continue
            chosen.append(inv)
        else:
            summary.skipped["fenced (duplicate execution)" if status == "fenced"
                            else "failed" + ("" if ran else " before running")] += 1
    chosen.sort(key=invocation_order_key)
    return chosen


def export(input_dir: str | Path, out_dir: str | Path, include_failed: bool = False,
           cpu_freq_mhz: float | None = None, progress: bool = False) -> ExportSummary:
    """Write the OpenDC trace of a run (``input_dir`` = logs/RUN_ID or its CTS folder) into ``out_dir``."""
    out = Path(out_dir)
    cts = open_cts(input_dir, progress)
    cts_dir = cts.path
    summary = ExportSummary(out_dir=out, notes=list(cts.notes))
    invs = cts.invocations()
    nodes = cts.nodes()
    tasks = select_tasks(invs, include_failed, summary)
    if not tasks:
        raise BadRunFolder(f"{cts_dir}: no task to export ({dict(summary.skipped) or 'no invocations'})",
                           path=cts_dir)
    mhz = node_mhz(nodes, {t["node_id"] for t in tasks}, cpu_freq_mhz)
    n = len(tasks)
    task_mhz = np.array([mhz[t["node_id"]] for t in tasks], dtype=np.float64)
    cpu_count = np.array([int(t.get("cpu_units") or 1) for t in tasks], dtype=np.int32)
    out.mkdir(parents=True, exist_ok=True)

    frag_tmp = out / (FRAGMENTS + ".tmp")
    pm = cts_dir / PROC_METRICS
    try:  # as the parser wrote them (the row cache, or the file grouped by task in task order), in file order
        agg = _write_fragments(_progress(cts.task_rows(tasks), progress), frag_tmp, n, task_mhz, cpu_count, pm)
        if cts.row_cache() is not None:
            summary.notes.append(f"fragments read from the parser's row cache ({ROWS_CACHE})")
    except NotGrouped:  # hand-edited / concatenated CTS: let DuckDB join and order the rows
        try:
            agg = _write_fragments(_progress(cts.sorted_task_rows(tasks, out / ".export-spill"), progress),
                                   frag_tmp, n, task_mhz, cpu_count, pm)
        except BaseException:
            frag_tmp.unlink(missing_ok=True)
            raise
    except BaseException:
        frag_tmp.unlink(missing_ok=True)
        raise
    dur_sum, rows, peak, cpu_sum, summary.over_capacity_fragments = agg
    start = np.array([t["ts_start"] for t in tasks], dtype=np.int64)
    end = np.array([t["ts_end"] for t in tasks], dtype=np.int64)
    no_frag = np.flatnonzero(rows == 0)
    if no_frag.size:
        frag_tmp.unlink(missing_ok=True)
        raise BadInput(f"{no_frag.size} task(s) have no proc_metrics rows (e.g. {tasks[no_frag[0]]['trace_id']}): "
                       "OpenDC would drop them silently; re-run make parse", path=pm)
    bad_dur = np.flatnonzero(dur_sum != end - start)
    if bad_dur.size:
        frag_tmp.unlink(missing_ok=True)
        k = bad_dur[0]
        raise BadInput(f"{bad_dur.size} task(s) whose rows do not cover ts_start..ts_end (e.g. "
                       f"{tasks[k]['trace_id']}: {dur_sum[k]} vs {end[k] - start[k]} ms); re-run make parse", path=pm)
    mem = np.array([max(int(t.get("max_rss_kb") or 0), int(p)) for t, p in zip(tasks, peak)], dtype=np.int64)
    sub = np.array([submission_ms(t) for t in tasks], dtype=np.int64)
    table = pa.Table.from_arrays([
        pa.array(np.arange(n, dtype=np.int32), pa.int32()), pa.array(sub, pa.int64()),
        pa.array(dur_sum, pa.int64()), pa.array(cpu_count, pa.int32()),
        pa.array(cpu_count * task_mhz, pa.float64()), pa.array(mem, pa.int64()),
        pa.array([str(t["trace_id"]) for t in tasks], pa.string())], schema=TASK_SCHEMA)
    task_tmp = out / (TASKS + ".tmp")
    pq.write_table(table, task_tmp)
    os.replace(task_tmp, out / TASKS)
    os.replace(frag_tmp, out / FRAGMENTS)

    summary.tasks = n
    summary.fragments = int(rows.sum())
    summary.first_submission_ms = int(sub.min())
    summary.last_end_ms = int(end.max())
    summary.cpu_ms = float(cpu_sum.sum())
    summary.mhz_ms = float((cpu_sum * task_mhz).sum())
    topo = topology(nodes, mhz, cpu_freq_mhz)
    (out / TOPOLOGY).write_text(json.dumps(topo, indent=2) + "\n")
    run_name = cts_dir.parent.name if cts_dir.name == "CTS" else cts_dir.name
    (out / EXPERIMENT).write_text(json.dumps(experiment(out, run_name), indent=2) + "\n")
    summary.files = [out / TASKS, out / FRAGMENTS, out / TOPOLOGY, out / EXPERIMENT]
    return summary


def _write_fragments(batches: Iterable[pa.RecordBatch], frag_tmp: Path, n: int, task_mhz: np.ndarray,
                     cpu_count: np.ndarray, pm: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Stream batches (id, ts_ms, dt_ms, cpu_ms, rss_kb; ordered by id) into fragments.parquet; per-task totals."""
    dur_sum = np.zeros(n, dtype=np.int64)
    rows = np.zeros(n, dtype=np.int64)
    peak = np.zeros(n, dtype=np.int64)
    cpu_sum = np.zeros(n, dtype=np.float64)
    over = 0
    with pq.ParquetWriter(frag_tmp, FRAGMENT_SCHEMA) as writer:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            ids = batch["id"].to_numpy(zero_copy_only=False).astype(np.int32)
            dt = batch["dt_ms"].to_numpy(zero_copy_only=False)
            if batch["cpu_ms"].null_count or batch["dt_ms"].null_count or (dt <= 0).any():
                raise BadInput(f"{pm}: a row without cpu_ms/dt_ms or with dt_ms <= 0; re-run make parse", path=pm)
            cpu = batch["cpu_ms"].to_numpy(zero_copy_only=False)
            rss = batch["rss_kb"].fill_null(0).to_numpy(zero_copy_only=False)
            dur_sum += np.bincount(ids, weights=dt, minlength=n).astype(np.int64)
            rows += np.bincount(ids, minlength=n)
            cpu_sum += np.bincount(ids, weights=cpu, minlength=n)
            starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])  # rows come ordered by id
            first = ids[starts]
            peak[first] = np.maximum(peak[first], np.maximum.reduceat(rss, starts))
            usage = cpu / dt * task_mhz[ids]
            over += int(np.count_nonzero(usage > cpu_count[ids] * task_mhz[ids] * 1.0001))
            writer.write_batch(pa.RecordBatch.from_arrays(
                [pa.array(ids, pa.int32()), pa.array(dt, pa.int64()), pa.array(usage, pa.float64())],
                schema=FRAGMENT_SCHEMA))
    return dur_sum, rows, peak, cpu_sum, over


def _progress(batches: Iterable[pa.RecordBatch], progress: bool) -> Iterator[pa.RecordBatch]:
    if not progress:
        yield from batches
        return
    from tqdm import tqdm

    with tqdm(desc="export fragments", unit=" rows", unit_scale=True, mininterval=0.5, leave=False) as bar:
        for b in batches:
            bar.update(b.num_rows)
            yield b


def _fmt_mhz(mhz: float) -> str:
    """Per-core speed as the unit string OpenDC's topology reader parses ("2.1 GHz")."""
    return f"{mhz / 1000:g} GHz"


def _fmt_mem(mem_mb: int) -> str:
    """Memory as OpenDC's unit string ("16 GiB", or MiB when not a whole number of GiB)."""
    return f"{mem_mb // 1024} GiB" if mem_mb and mem_mb % 1024 == 0 else f"{mem_mb} MiB"


def topology(nodes: list[dict], mhz: dict[str, float], default_mhz: float | None) -> dict:
    """OpenDC topology: one cluster, nodes grouped by identical spec (cores, per-core MHz, memory, CPU model)."""
    groups: dict[tuple, list[str]] = {}
    for nd in sorted(nodes, key=lambda x: str(x.get("node_id"))):
        speed = mhz.get(nd.get("node_id")) or nd.get("cpu_freq_mhz") or default_mhz
        if not speed:
            continue  # a node that ran nothing exported and has no known MHz: not simulated
        spec = (int(nd.get("cpu_cores") or 1), float(speed), int(nd.get("mem_mb") or 0), str(nd.get("cpu_model")))
        groups.setdefault(spec, []).append(str(nd.get("node_id")))
    hosts = []
    for (cores, speed, mem_mb, model), ids in groups.items():
        hosts.append({"name": ids[0] if len(ids) == 1 else f"{ids[0]}..{ids[-1]}", "count": len(ids),
                      "cpu": {"modelName": model, "coreCount": cores, "coreSpeed": _fmt_mhz(speed)},
                      "memory": {"size": _fmt_mem(mem_mb)}})
    return {"clusters": [{"name": "tracekit", "hosts": hosts}]}


def experiment(out: Path, run_name: str) -> dict:
    """OpenDC experiment (docs/traces.md) for the current ``opendc`` CLI, written inside the exported folder.

    Paths are relative to the experiment file, so the folder can be moved or copied whole: the trace
    workload is a *named* source resolved from the experiment file's folder (``../<folder name>``).
    """
    return {"name": f"tracekit-{run_name}",
            "outputFolder": "opendc-output",
            "topologies": [{"pathToFile": TOPOLOGY}],
            "workloads": [{"type": "trace", "source": {"type": "named", "name": f"../{out.resolve().name}"}}]}
