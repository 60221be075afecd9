"""Read a CTS folder: the one reader every exporter uses.

Public API::

    open_cts(input_dir, progress=False) -> CtsFolder
        ``input_dir`` is a run folder (its ``CTS/`` is used) or a CTS folder; a run folder with raw logs but no CTS
        yet is parsed first (``CtsFolder.notes`` says so); the original Tracekit's data (``legacy_io``) is imported
        into ``<input_dir>/imported`` and parsed first. BadRunFolder when there is neither.
    CtsFolder(path)                          a CTS folder (``path``), its ``notes``
        .invocations(strict=True)            invocations.jsonl as dicts, file order (strict: a bad line is BadInput;
                                             otherwise bad lines are skipped)
        .nodes(strict=True)                  nodes.json entries (strict: unreadable is BadInput; otherwise [])
        .row_cache()                         the parser's binary copy of proc_metrics when it is fresh, else None
        .proc_metrics_batches(columns)       proc_metrics.jsonl as arrow batches of the given columns (file order)
        .task_rows(tasks)                    rows of the given invocations as arrow batches (id, ts_ms, dt_ms,
                                             cpu_ms, rss_kb), id = position in ``tasks``, ordered by id then time;
                                             raises NotGrouped (possibly after some batches) when proc_metrics.jsonl
                                             is not in the parser's order: then use ``sorted_task_rows``
        .sorted_task_rows(tasks, spill_dir)  the same for any row order (DuckDB joins and sorts, spilling to disk)
        .node_rows(nodes)                    (node, ts_ms, dt_ms, cpu_ms) numpy batches of every row of those nodes
        .placement_policies()                Counter of (weigher, order) over the run's placements.jsonl (the
                                             controller's file next to CTS/; empty when there is none)

Rows come from the row cache (``rowcache``) whenever it is fresh, else from ``proc_metrics.jsonl``; both give the
same values (cpu_ms = cpu_us / 1000, the exact decimal the JSON holds).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from tracekit.core import paths
from tracekit.core.errors import BadInput, BadRunFolder, DependencyMissing
from tracekit.core.jsonl import BadLines, read_jsonl
from tracekit.trace import duck
from tracekit.trace.legacy_io import find_original, import_and_parse
from tracekit.trace.model import discover_nodes
from tracekit.trace.rowcache import RowsCache, read_rows_cache
from tracekit.trace.vocabulary import INVOCATIONS, NODES, PROC_METRICS

# Columns of proc_metrics read for task rows (names from schema.PROC_METRIC_FIELDS), with their arrow types.
PM_READ_SCHEMA = pa.schema([("node_id", pa.string()), ("trace_id", pa.string()), ("attempt", pa.int64()),
                            ("ts_ms", pa.int64()), ("dt_ms", pa.int64()), ("cpu_ms", pa.float64()),
                            ("rss_kb", pa.int64())])
NODE_ROW_SCHEMA = pa.schema([("node_id", pa.string()), ("ts_ms", pa.int64()), ("dt_ms", pa.int64()),
                             ("cpu_ms", pa.float64())])
TASK_ROW_NAMES = ["id", "ts_ms", "dt_ms", "cpu_ms", "rss_kb"]
PLACEMENTS = paths.placements_path("_").name
_DUCK_TYPES = {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.float64(): "DOUBLE"}
_DUCKDB_MISSING = "the OpenDC export needs the duckdb package: pip install -r requirements.txt"  # (its only user)


class NotGrouped(Exception):
    """proc_metrics.jsonl is not grouped by task in task order: read it with ``CtsFolder.sorted_task_rows``."""


def open_cts(input_dir: str | Path, progress: bool = False) -> CtsFolder:
    """The CTS folder for an exporter's ``--input``: the run folder's ``CTS/``, the CTS folder itself, or the raw
    logs of a run parsed now."""
    input_dir = Path(input_dir)
    if find_original(input_dir):  # the original Tracekit's folder (its CTS looks like ours): import it first
        res, r, _, _ = import_and_parse(input_dir, with_plots=False, progress=progress)
        return CtsFolder(r.out_dir, [f"{input_dir} holds the original Tracekit's data: imported into {res.dest} and "
                                     "parsed first (tracekit-import-original; see its CTS/audit_report.md)"])
    for cand in (input_dir / "CTS", input_dir):
        if (cand / INVOCATIONS).exists() and (cand / PROC_METRICS).exists():
            return CtsFolder(cand)
    if input_dir.is_dir() and discover_nodes(input_dir):
        from tracekit.trace.audit import parse_and_audit

        parse_and_audit(input_dir, progress=progress)
        return CtsFolder(input_dir / "CTS", [f"no CTS yet: parsed the raw logs of {input_dir} first (see "
                                             "CTS/audit_report.md)"])
    raise BadRunFolder(f"{input_dir}: no CTS files (CTS/invocations.jsonl) and no raw node logs; "
                       "pass --input logs/RUN_ID after `make parse RUN_ID=...`", path=input_dir)


class CtsFolder:
    """One CTS folder (``path``) as written by the parse; ``notes`` say how it was found."""

    def __init__(self, path: Path, notes: list[str] | None = None) -> None:
        self.path = Path(path)
        self.notes = list(notes or [])
        self._cache: RowsCache | None = None
        self._cache_read = False

    # ---- invocations and nodes ----
    def invocations(self, strict: bool = True) -> list[dict]:
        """invocations.jsonl in file order (the parser's ``invocation_order_key`` order)."""
        path = self.path / INVOCATIONS
        bad = BadLines()
        invs = [inv for _, inv in read_jsonl(path, bad)]
        if strict and bad.count:
            raise BadInput(f"{path}: {bad.count} bad line(s), first {bad.examples[0]}; re-run make parse", path=path)
        return invs

    def nodes(self, strict: bool = True) -> list[dict]:
        """The entries of nodes.json (``schema.NODE_FIELDS``)."""
        path = self.path / NODES
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            if not strict:
                return []
            raise BadInput(f"{path}: unreadable ({exc.__class__.__name__}); re-run make parse", path=path) from None

    # ---- the controller's placements (the run folder around the CTS) ----
    def placement_policies(self) -> Counter:
        """How the run's placements were made: Counter of ``(weigher, order)`` (``weigher`` '' = first-fit) over
        ``placements.jsonl`` of the run folder holding this CTS (or this folder itself); empty when absent."""
        out: Counter = Counter()
        for cand in (self.path.parent, self.path):
            path = cand / PLACEMENTS
            if path.is_file():
                for _, rec in read_jsonl(path, BadLines()):
                    if isinstance(rec.get("weigher"), str) and isinstance(rec.get("order"), str):
                        out[(rec["weigher"], rec["order"])] += 1
                break
        return out

    # ---- proc_metrics rows ----
    def row_cache(self) -> RowsCache | None:
        """The parser's row cache when it still mirrors the CTS files (checked once), else None."""
        if not self._cache_read:
            self._cache, self._cache_read = read_rows_cache(self.path), True
        return self._cache

    def proc_metrics_batches(self, columns: pa.Schema = PM_READ_SCHEMA,
                             block_size: int = 8 << 20) -> Iterator[pa.RecordBatch]:
        """Stream ``proc_metrics.jsonl`` as arrow record batches of the given columns (multithreaded C++ reader)."""
        path = self.path / PROC_METRICS
        if path.stat().st_size == 0:
            return  # no rows (a run without executed tasks): pyarrow would call it an empty JSON stream
        ropts = pj.ReadOptions(block_size=block_size)
        popts = pj.ParseOptions(explicit_schema=columns, unexpected_field_behavior="ignore")
        try:
            if hasattr(pj, "open_json"):
                yield from pj.open_json(path, read_options=ropts, parse_options=popts)
            else:  # pragma: no cover - pyarrow < 17 reads the whole file (still columnar)
                yield from pj.read_json(path, read_options=ropts, parse_options=popts).to_batches()
        except pa.ArrowInvalid as exc:
            raise BadInput(f"{path}: unreadable CTS row ({str(exc).splitlines()[0]}); re-run make parse",
                           path=path) from None

    def node_rows(self, nodes: list[str]) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        """``(node, ts_ms, dt_ms, cpu_ms)`` batches of every proc_metrics row of ``nodes``, in file order."""
        cache = self.row_cache()
        if cache is not None:  # the parser's binary copy: no JSON to read
            node_of_row = np.repeat(np.array([b[0] for b in cache.blocks], dtype=object),
                                    [b[4] for b in cache.blocks]) if cache.blocks else np.zeros(0, dtype=object)
            for lo in range(0, cache.rows, 1 << 20):
                rows = cache.read(lo, min(1 << 20, cache.rows - lo))
                owner = node_of_row[lo:lo + len(rows)]
                for n in nodes:
                    mine = rows[owner == n]
                    if len(mine):
                        yield n, mine["ts_ms"], mine["dt_ms"], mine["cpu_us"] / 1000
            return
        for batch in self.proc_metrics_batches(NODE_ROW_SCHEMA):
            tbl = pa.Table.from_batches([batch])
            for n in nodes:
                sub = tbl.filter(pc.equal(tbl["node_id"], n))
                if sub.num_rows:
                    yield n, sub["ts_ms"].to_numpy(), sub["dt_ms"].to_numpy(), sub["cpu_ms"].to_numpy()

    def task_rows(self, tasks: list[dict], batch_rows: int = 1 << 20) -> Iterator[pa.RecordBatch]:
        """Batches (id, ts_ms, dt_ms, cpu_ms, rss_kb) of the rows of ``tasks`` (id = index in ``tasks``, which must
        be in the parser's invocation order), ordered by id then time: from the row cache, else from
        ``proc_metrics.jsonl`` in file order (no join, no sort). Raises ``NotGrouped`` as soon as the file is not
        one block per task in task order with increasing times (hand-edited or concatenated CTS)."""
        cache = self.row_cache()
        if cache is not None:
            yield from _cached_rows(cache, tasks, batch_rows)
        else:
            yield from _grouped_rows(self.path / PROC_METRICS, tasks, batch_rows)

    def sorted_task_rows(self, tasks: list[dict], spill_dir: Path,
                         batch_rows: int = 1 << 20) -> Iterator[pa.RecordBatch]:
        """``task_rows`` for a ``proc_metrics.jsonl`` in any row order.

        DuckDB reads the JSON (multithreaded), joins the rows to ``tasks`` and sorts them, spilling to
        ``spill_dir`` (created, removed after) beyond its memory limit: never the whole file in memory.
        """
        try:
            import duckdb
        except ImportError:
            raise DependencyMissing(_DUCKDB_MISSING, name="duckdb") from None
        path = self.path / PROC_METRICS
        keys = pa.table({"node_id": pa.array([str(t["node_id"]) for t in tasks], pa.string()),
                         "trace_id": pa.array([str(t["trace_id"]) for t in tasks], pa.string()),
                         "attempt": pa.array([int(t["attempt"] or 0) for t in tasks], pa.int64()),
                         "id": pa.array(range(len(tasks)), pa.int32())})
        cols = ", ".join(f"'{f.name}': '{_DUCK_TYPES[f.type]}'" for f in PM_READ_SCHEMA)
        src = str(path).replace("'", "''")
        query = (f"SELECT t.id AS id, p.ts_ms, p.dt_ms, p.cpu_ms, p.rss_kb "
                 f"FROM read_json('{src}', format='newline_delimited', columns={{{cols}}}) p "
                 "JOIN task_keys t ON p.node_id = t.node_id AND p.trace_id = t.trace_id AND p.attempt = t.attempt "
                 "ORDER BY t.id, p.ts_ms")
        con = duck.connect(memory_limit="1GB", temp_directory=str(spill_dir))
        try:
            con.register("task_keys", keys)
            rel = con.sql(query)
            reader = (rel.to_arrow_reader(batch_rows) if hasattr(rel, "to_arrow_reader")
                      else rel.record_batch(batch_rows))
            yield from reader
        except duckdb.Error as exc:
            msg = str(exc).strip().splitlines()[0][:300]
            raise BadInput(f"{path}: unreadable CTS rows ({msg}); re-run make parse", path=path) from None
        finally:
            con.close()
            shutil.rmtree(spill_dir, ignore_errors=True)


# ---- task rows, two sources ----


def _cached_rows(cache: RowsCache, tasks: list[dict], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Batches (id, ts_ms, dt_ms, cpu_ms, rss_kb) of ``tasks`` from the parser's row cache."""
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
        # the wanted tasks' rows lie in one span (file order = task order), with the left-out tasks' rows
        span = cache.read(base, int(wanted.max()) + 1 - base) if len(wanted) else cache.read(0, 0)
        contiguous = len(span) == len(wanted) and bool((np.diff(wanted) == 1).all())  # nothing left out between
        sel = span if contiguous else span[wanted - base]
        yield pa.RecordBatch.from_arrays(
            [pa.array(np.repeat(np.arange(lo, hi, dtype=np.int32), c)), pa.array(sel["ts_ms"]),
             pa.array(sel["dt_ms"]), pa.array(sel["cpu_us"] / 1000), pa.array(sel["rss_kb"], mask=sel["rss_null"])],
            names=TASK_ROW_NAMES)
        lo = hi


def _grouped_rows(path: Path, tasks: list[dict], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Batches with task ids for a proc_metrics file in the parser's order, read in file order (no join, no sort).

    Raises ``NotGrouped`` as soon as the file is not one block per task in task order with increasing times.
    """
    try:
        import duckdb
    except ImportError:
        raise DependencyMissing(_DUCKDB_MISSING, name="duckdb") from None
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
                        raise NotGrouped
                elif tid >= 0:
                    if tid <= last_id:  # a task out of order, or in two blocks
                        raise NotGrouped
                    last_id = tid
                bids[k] = tid
                last_key = key
            inside = np.ones(nrow, dtype=bool)
            inside[starts] = False
            if np.any((np.diff(ts, prepend=ts[0]) <= 0) & inside):
                raise NotGrouped
            ids = np.repeat(bids, np.diff(np.r_[starts, nrow]))
            keep = ids >= 0
            out = pa.RecordBatch.from_arrays([pa.array(ids.astype(np.int32)), b["ts_ms"], b["dt_ms"], b["cpu_ms"],
                                              b["rss_kb"]], names=TASK_ROW_NAMES)
            last_ts = int(ts[-1])
            yield out.filter(pa.array(keep)) if not keep.all() else out
    except duckdb.Error as exc:
        msg = str(exc).strip().splitlines()[0][:300]
        raise BadInput(f"{path}: unreadable CTS rows ({msg}); re-run make parse", path=path) from None
    finally:
        con.close()
