"""CTS -> OpenDC workload trace (DESIGN.md §9): ``tasks.parquet``, ``fragments.parquet``, topology + experiment JSON.

OpenDC types strictly, so both files are written with the explicit arrow schemas below (int32 ids, int64 ms,
double MHz, required columns non-nullable). Tasks are sorted by submission (``cts.invocation_order_key``, the order
the parser already wrote proc_metrics in), ids are dense int32 in that order, the trace_id is kept in ``name``.
Fragments are the CTS intervals (DuckDB reads, joins and orders them, spilling to disk; batches stream out):
``duration`` = dt_ms and ``cpu_usage`` = cpu_ms / dt_ms x the node's per-core MHz, so
sum(cpu_usage x duration) = CPU ms x MHz exactly.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq

from tracekit.core.errors import UserError
from tracekit.core.jsonl import BadLines, read_jsonl
from tracekit.trace import columnar, cts, duck

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
# Columns of proc_metrics the export reads (names from schema.PROC_METRIC_FIELDS), with their arrow types.
PM_READ_SCHEMA = pa.schema([("node_id", pa.string()), ("trace_id", pa.string()), ("attempt", pa.int64()),
                            ("ts_ms", pa.int64()), ("dt_ms", pa.int64()), ("cpu_ms", pa.float64()),
                            ("rss_kb", pa.int64())])


def iter_proc_metrics(path: Path, schema: pa.Schema = PM_READ_SCHEMA, block_size: int = 8 << 20):
    """Stream ``proc_metrics.jsonl`` as arrow record batches of the given columns (multithreaded C++ reader)."""
    if path.stat().st_size == 0:
        return  # no rows (a run without executed tasks): pyarrow would call it an empty JSON stream
    ropts = pj.ReadOptions(block_size=block_size)
    popts = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        if hasattr(pj, "open_json"):
            yield from pj.open_json(path, read_options=ropts, parse_options=popts)
        else:  # pragma: no cover - pyarrow < 17 reads the whole file (still columnar)
            yield from pj.read_json(path, read_options=ropts, parse_options=popts).to_batches()
    except pa.ArrowInvalid as exc:
        raise UserError(f"{path}: unreadable CTS row ({str(exc).splitlines()[0]}); re-run make parse") from None


def resolve_cts(input_dir: Path, progress: bool = False) -> tuple[Path, list[str]]:
    """The CTS folder for ``--input``: the run folder's ``CTS/``, the CTS folder itself, or parse raw logs now."""
    notes = []
    for cand in (input_dir / "CTS", input_dir):
        if (cand / cts.INVOCATIONS).exists() and (cand / cts.PROC_METRICS).exists():
            return cand, notes
    if input_dir.is_dir() and cts.discover_nodes(input_dir):
        from tracekit.trace.audit import parse_and_audit

        parse_and_audit(input_dir, progress=progress)
        notes.append(f"no CTS yet: parsed the raw logs of {input_dir} first (see CTS/audit_report.md)")
        return input_dir / "CTS", notes
    raise UserError(f"{input_dir}: no CTS files (CTS/invocations.jsonl) and no raw node logs; "
                    "pass --input logs/RUN_ID after `make parse RUN_ID=...`")


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
        raise UserError(f"per-core CPU MHz unknown for node(s) {', '.join(missing)} (no cpu_freq_mhz in nodes.json): "
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
        ran = cts.has_run(inv)
        if status == "ok" or (include_failed and status == "failed" and ran):
            if not ran:
                summary.skipped["without a run"] += 1
                continue
            chosen.append(inv)
        else:
            summary.skipped["fenced (duplicate execution)" if status == "fenced"
                            else "failed" + ("" if ran else " before running")] += 1
    chosen.sort(key=cts.invocation_order_key)
    return chosen


def export(input_dir: str | Path, out_dir: str | Path, include_failed: bool = False,
           cpu_freq_mhz: float | None = None, progress: bool = False) -> ExportSummary:
    """Write the OpenDC trace of a run (``input_dir`` = logs/RUN_ID or its CTS folder) into ``out_dir``."""
    input_dir, out = Path(input_dir), Path(out_dir)
    cts_dir, notes = resolve_cts(input_dir, progress)
    summary = ExportSummary(out_dir=out, notes=notes)
    bad = BadLines()
    invs = [inv for _, inv in read_jsonl(cts_dir / cts.INVOCATIONS, bad)]
    if bad.count:
        raise UserError(f"{cts_dir / cts.INVOCATIONS}: {bad.count} bad line(s), first {bad.examples[0]}; "
                        "re-run make parse")
    try:
        nodes = json.loads((cts_dir / cts.NODES).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{cts_dir / cts.NODES}: unreadable ({exc.__class__.__name__}); re-run make parse") from None
    tasks = select_tasks(invs, include_failed, summary)
    if not tasks:
        raise UserError(f"{cts_dir}: no task to export ({dict(summary.skipped) or 'no invocations'})")
    mhz = node_mhz(nodes, {t["node_id"] for t in tasks}, cpu_freq_mhz)
    n = len(tasks)
    task_mhz = np.array([mhz[t["node_id"]] for t in tasks], dtype=np.float64)
    cpu_count = np.array([int(t.get("cpu_units") or 1) for t in tasks], dtype=np.int32)
    out.mkdir(parents=True, exist_ok=True)

    frag_tmp = out / (FRAGMENTS + ".tmp")
    pm = cts_dir / cts.PROC_METRICS
    cache = columnar.read_rows_cache(cts_dir)
    try:
        if cache is not None:  # the parser's binary copy of these very rows (it checks it still mirrors the files)
            agg = _write_fragments(_progress(_cached_rows(cache, tasks), progress), frag_tmp, n, task_mhz,
                                   cpu_count, pm)
            summary.notes.append(f"fragments read from the parser's row cache ({columnar.ROWS_CACHE})")
        try:  # fast path: proc_metrics as the parser wrote it (grouped by task in task order), read in file order
            if cache is None:
                agg = _write_fragments(_progress(_grouped_rows(pm, tasks), progress), frag_tmp, n, task_mhz,
                                       cpu_count, pm)
        except _NotGrouped:  # hand-edited / concatenated CTS: let DuckDB join and order the rows
            agg = _write_fragments(_progress(_fragment_rows(pm, tasks, out), progress), frag_tmp, n, task_mhz,
                                   cpu_count, pm)
    except BaseException:
        frag_tmp.unlink(missing_ok=True)
        raise
    dur_sum, rows, peak, cpu_sum, summary.over_capacity_fragments = agg
    start = np.array([t["ts_start"] for t in tasks], dtype=np.int64)
    end = np.array([t["ts_end"] for t in tasks], dtype=np.int64)
    no_frag = np.flatnonzero(rows == 0)
    if no_frag.size:
        frag_tmp.unlink(missing_ok=True)
        raise UserError(f"{no_frag.size} task(s) have no proc_metrics rows (e.g. {tasks[no_frag[0]]['trace_id']}): "
                        "OpenDC would drop them silently; re-run make parse")
    bad_dur = np.flatnonzero(dur_sum != end - start)
    if bad_dur.size:
        frag_tmp.unlink(missing_ok=True)
        k = bad_dur[0]
        raise UserError(f"{bad_dur.size} task(s) whose rows do not cover ts_start..ts_end (e.g. "
                        f"{tasks[k]['trace_id']}: {dur_sum[k]} vs {end[k] - start[k]} ms); re-run make parse")
    mem = np.array([max(int(t.get("max_rss_kb") or 0), int(p)) for t, p in zip(tasks, peak)], dtype=np.int64)
    sub = np.array([cts.submission_ms(t) for t in tasks], dtype=np.int64)
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


_DUCK_TYPES = {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.float64(): "DOUBLE"}


class _NotGrouped(Exception):
    """proc_metrics.jsonl is not grouped by task in task order: use the join + sort path."""


def _write_fragments(batches, frag_tmp: Path, n: int, task_mhz: np.ndarray, cpu_count: np.ndarray, pm: Path):
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
                raise UserError(f"{pm}: a row without cpu_ms/dt_ms or with dt_ms <= 0; re-run make parse")
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


def _cached_rows(cache: columnar.RowsCache, tasks: list[dict], batch_rows: int = 1 << 20):
    """Batches (id, ts_ms, dt_ms, cpu_ms, rss_kb) of the exported tasks from the parser's row cache."""
    first = np.zeros(len(tasks), np.int64)
    count = np.zeros(len(tasks), np.int64)
    for k, t in enumerate(tasks):
        first[k], count[k] = cache.index.get((t["node_id"], t["trace_id"], t["attempt"]), (0, 0))
    lo = 0
    while lo < len(tasks):
        hi = min(max(int(np.searchsorted(np.cumsum(count[lo:]), batch_rows, side="right")) + lo, lo + 1),
                 len(tasks))
        c = count[lo:hi]
        ends = np.cumsum(c)
        wanted = np.repeat(first[lo:hi] - (ends - c), c) + np.arange(int(ends[-1]))
        base = int(wanted.min()) if len(wanted) else 0
        # the exported tasks' rows lie in one span (file order = task order), with the left-out tasks' rows
        span = cache.read(base, int(wanted.max()) + 1 - base) if len(wanted) else cache.read(0, 0)
        contiguous = len(span) == len(wanted) and bool((np.diff(wanted) == 1).all())  # nothing left out between
        sel = span if contiguous else span[wanted - base]
        yield pa.RecordBatch.from_arrays(
            [pa.array(np.repeat(np.arange(lo, hi, dtype=np.int32), c)), pa.array(sel["ts_ms"]),
             pa.array(sel["dt_ms"]), pa.array(sel["cpu_us"] / 1000), pa.array(sel["rss_kb"], mask=sel["rss_null"])],
            names=["id", "ts_ms", "dt_ms", "cpu_ms", "rss_kb"])
        lo = hi


def _grouped_rows(path: Path, tasks: list[dict], batch_rows: int = 1 << 20):
    """Batches with task ids for a proc_metrics file in the parser's order, read in file order (no join, no sort).

    Raises ``_NotGrouped`` as soon as the file is not one block per task in task order with increasing times.
    """
    try:
        import duckdb
    except ImportError:
        raise UserError("the OpenDC export needs the duckdb package: pip install -r requirements.txt") from None
    lookup = {(str(t["node_id"]), str(t["trace_id"]), int(t["attempt"] or 0)): k for k, t in enumerate(tasks)}
    cols = ", ".join(f"'{f.name}': '{_DUCK_TYPES[f.type]}'" for f in PM_READ_SCHEMA)
    src = str(path).replace("'", "''")
    con = duck.connect(preserve_insertion_order=True)
    last_key, last_id, last_ts = None, -1, None
    try:
        rel = con.sql(f"SELECT * FROM read_json('{src}', format='newline_delimited', columns={{{cols}}})")
        reader = rel.to_arrow_reader(batch_rows) if hasattr(rel, "to_arrow_reader") else rel.record_batch(batch_rows)
        for b in reader:
            nrow = b.num_rows
            if nrow == 0:
                continue
            node, trace = b["node_id"].fill_null(""), b["trace_id"].fill_null("")
            att = b["attempt"].fill_null(0)
            if nrow > 1:
                ch = pc.or_(pc.or_(pc.not_equal(node.slice(1), node.slice(0, nrow - 1)),
                                   pc.not_equal(trace.slice(1), trace.slice(0, nrow - 1))),
                            pc.not_equal(att.slice(1), att.slice(0, nrow - 1)))
                starts = np.flatnonzero(np.r_[True, ch.to_numpy(zero_copy_only=False)])
            else:
                starts = np.array([0])
            bkeys = zip(node.take(starts).to_pylist(), trace.take(starts).to_pylist(), att.take(starts).to_pylist())
            ts = b["ts_ms"].to_numpy(zero_copy_only=False)
            bids = np.empty(starts.size, dtype=np.int64)
            for k, key in enumerate(bkeys):
                tid = lookup.get(key, -1)
                if k == 0 and key == last_key:  # the previous batch's last block goes on
                    if ts[0] <= last_ts:
                        raise _NotGrouped
                elif tid >= 0:
                    if tid <= last_id:  # a task out of order, or in two blocks
                        raise _NotGrouped
                    last_id = tid
                bids[k] = tid
                last_key = key
            inside = np.ones(nrow, dtype=bool)
            inside[starts] = False
            if np.any((np.diff(ts, prepend=ts[0]) <= 0) & inside):
                raise _NotGrouped
            ids = np.repeat(bids, np.diff(np.r_[starts, nrow]))
            keep = ids >= 0
            out = pa.RecordBatch.from_arrays([pa.array(ids.astype(np.int32)), b["ts_ms"], b["dt_ms"], b["cpu_ms"],
                                              b["rss_kb"]], names=["id", "ts_ms", "dt_ms", "cpu_ms", "rss_kb"])
            last_ts = int(ts[-1])
            yield out.filter(pa.array(keep)) if not keep.all() else out
    except duckdb.Error as exc:
        msg = str(exc).strip().splitlines()[0][:300]
        raise UserError(f"{path}: unreadable CTS rows ({msg}); re-run make parse") from None
    finally:
        con.close()


def _fragment_rows(path: Path, tasks: list[dict], out: Path, batch_rows: int = 1 << 20):
    """Arrow batches (id, ts_ms, dt_ms, cpu_ms, rss_kb) of the exported tasks' rows, ordered by (id, ts_ms).

    DuckDB reads the JSON (multithreaded), joins the rows to the exported tasks and sorts them, spilling to a scratch
    folder under ``out`` beyond its memory limit: the export never needs the whole file in memory, and does not
    depend on the order of proc_metrics.jsonl.
    """
    try:
        import duckdb
    except ImportError:
        raise UserError("the OpenDC export needs the duckdb package: pip install -r requirements.txt") from None

    keys = pa.table({"node_id": pa.array([str(t["node_id"]) for t in tasks], pa.string()),
                     "trace_id": pa.array([str(t["trace_id"]) for t in tasks], pa.string()),
                     "attempt": pa.array([int(t["attempt"] or 0) for t in tasks], pa.int64()),
                     "id": pa.array(range(len(tasks)), pa.int32())})
    spill = out / ".export-spill"
    cols = ", ".join(f"'{f.name}': '{_DUCK_TYPES[f.type]}'" for f in PM_READ_SCHEMA)
    src = str(path).replace("'", "''")
    query = (f"SELECT t.id AS id, p.ts_ms, p.dt_ms, p.cpu_ms, p.rss_kb "
             f"FROM read_json('{src}', format='newline_delimited', columns={{{cols}}}) p "
             "JOIN task_keys t ON p.node_id = t.node_id AND p.trace_id = t.trace_id AND p.attempt = t.attempt "
             "ORDER BY t.id, p.ts_ms")
    con = duck.connect(memory_limit="1GB", temp_directory=str(spill))
    try:
        con.register("task_keys", keys)
        rel = con.sql(query)
        reader = rel.to_arrow_reader(batch_rows) if hasattr(rel, "to_arrow_reader") else rel.record_batch(batch_rows)
        yield from reader
    except duckdb.Error as exc:
        msg = str(exc).strip().splitlines()[0][:300]
        raise UserError(f"{path}: unreadable CTS rows ({msg}); re-run make parse") from None
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)


def _progress(batches, progress: bool):
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
    """OpenDC experiment (DESIGN.md §9) for the current ``opendc`` CLI, written inside the exported folder.

    Paths are relative to the experiment file, so the folder can be moved or copied whole: the trace
    workload is a *named* source resolved from the experiment file's folder (``../<folder name>``).
    """
    return {"name": f"tracekit-{run_name}",
            "outputFolder": "opendc-output",
            "topologies": [{"pathToFile": TOPOLOGY}],
            "workloads": [{"type": "trace", "source": {"type": "named", "name": f"../{out.resolve().name}"}}]}
