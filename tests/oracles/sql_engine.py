"""Test oracle: a second, independent implementation of the CTS cut in SQL (DuckDB): samples -> proc_metrics rows.

It exists as a cross-check of the product's parse (``tracekit.trace.cts.parse_run``: the columnar and streaming
readers): the tests run both on the same raw logs and require byte-identical files. It shares only the event
reading, the line text of a row and the sample column definitions with the product (``parse_run`` below); the
cut is its own. Measured on a 2-core machine it is not faster (3 M samples: 11.7 s vs 9.4 s) and needs more memory,
which is why it lives here and not in the product. The semantics it re-implements:

* a tick is dropped when its time (node wall + offset) is below the largest earlier tick time of its node;
* a sample makes a boundary ``b = floor(t + 0.5)`` only when ``b_start < b < b_end`` and it is the first sample of
  its task in that ms; the cumulative CPU at a boundary is ``min(max(0, running max of samples), total)``;
* each row's RSS is the last RSS seen (falling back to ``max_rss_kb``); the tail row ends at ``b_end`` with the
  exact total.

Malformed lines are found by a Python pre-scan (the same tolerant reader and messages as the product, with
``file:line``); when a node's file has any, DuckDB reads a sanitised copy without them.
"""

from __future__ import annotations

import bisect
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa

from tracekit.core import schema
from tracekit.trace import cts, duck
from tracekit.trace.events import load_controller, load_events
from tracekit.trace.intervals import TaskStats
from tracekit.trace.model import MatchedProcess, NodeInfo, ParseResult, Task
from tracekit.trace.rowcache import drop_rows_cache
from tracekit.trace.streaming import read_ticks
from tracekit.trace.vocabulary import (
    BAD_ENTRY,
    PROC_METRICS,
    WINDOW_SLACK_MS,
    invocation_order_key,
    no_cyclic_gc,
    row_template_parts,
    task_key,
)

MEMORY_LIMIT = "1GB"
_NUM_TYPES = "('UBIGINT', 'BIGINT', 'DOUBLE', 'HUGEINT')"
_MIN, _MAX = schema.SAMPLE_MIN_VALUES, schema.SAMPLE_MAX_VALUES


def _at(name: str) -> str:
    """JSON path of a sample column in a ``procs`` entry (its position from ``schema.SAMPLE_COLUMNS``)."""
    return f"'$[{schema.SAMPLE_INDEX[name]}]'"


def parse_run(run_dir: str | Path, out_dir: str | Path) -> ParseResult:
    """The whole parse with the SQL cut: the same CTS files as ``tracekit.trace.cts.parse_run``."""
    run_dir, out = Path(run_dir), Path(out_dir)
    with no_cyclic_gc():
        r = cts.start_parse(run_dir, out)
        tasks = load_events(r)
        load_controller(r)
        r.invocations.sort(key=invocation_order_key)
        out.mkdir(parents=True, exist_ok=True)
        drop_rows_cache(out)
        scratch_dir = out / ".parse-scratch"
        shutil.rmtree(scratch_dir, ignore_errors=True)
        scratch_dir.mkdir()
        final_tmp = out / (PROC_METRICS + ".tmp")
        try:
            cut_all(r, tasks, scratch_dir, final_tmp)
            os.replace(final_tmp, out / PROC_METRICS)
        finally:
            shutil.rmtree(scratch_dir, ignore_errors=True)
            final_tmp.unlink(missing_ok=True)
        cts.write_small_files(r, out)
    return r


def prescan(result: ParseResult, node: NodeInfo, out_path: Path) -> tuple[Path | None, list[int], int]:
    """Validate a node's samples file line by line (file:line bad lines into ``result.bad``).

    Returns (file DuckDB should read or None, sorted excluded line numbers, number of lines).
    """
    path = result.run_dir / node.node_id / "samples.jsonl"
    if not path.exists():
        return None, [], 0
    bad = result.bad
    good: set[int] = set()
    for lineno, tick in read_ticks(path, bad):
        good.add(lineno)
        for p in tick["procs"]:
            if type(p) is not list or not _MIN <= len(p) <= _MAX:
                bad.add(f"{path}:{lineno}", BAD_ENTRY)
    with open(path, "rb") as fh:
        nlines = sum(1 for _ in fh)
    excluded = [n for n in range(1, nlines + 1) if n not in good]
    if not excluded:
        return path, [], nlines
    with open(path, "rb") as src, open(out_path, "wb") as dst:
        for lineno, raw in enumerate(src, 1):
            if lineno in good:
                dst.write(raw if raw.endswith(b"\n") else raw + b"\n")
    return out_path, excluded, nlines


def _sql_str(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _clean(con, path: Path) -> bool:
    """True when every line is a tick DuckDB reads like the Python reader (no pre-scan needed)."""
    lines, last, double_nl = 0, b"\n", False
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            lines += chunk.count(b"\n")
            double_nl = double_nl or b"\n\n" in chunk or (last == b"\n" and chunk[:1] == b"\n")
            last = chunk[-1:]
    if last != b"\n" or double_nl:  # truncated last line, or blank lines (they would shift line numbers)
        return False
    import duckdb

    src = f"read_json({_sql_str(path)}, format='newline_delimited', columns={{'ts': 'JSON', 'procs': 'JSON[]'}})"
    try:
        rows, bad = con.execute(f"""
            SELECT count(*), count(*) FILTER (WHERE ts IS NULL OR json_type(ts) NOT IN {_NUM_TYPES} OR procs IS NULL)
            FROM {src}""").fetchall()[0]
        bad += con.execute(f"""
            SELECT count(*) FROM (SELECT unnest(procs) AS p FROM {src})
            WHERE json_type(p) <> 'ARRAY' OR json_array_length(p) NOT BETWEEN {_MIN} AND {_MAX}""").fetchall()[0][0]
    except duckdb.Error:
        return False
    return rows == lines and bad == 0


def _line_of(rn: int, excluded: list[int]) -> int:
    """File line number of the rn-th kept line (1-based), given the sorted excluded line numbers."""
    line = rn
    while True:
        n = line - bisect.bisect_right(excluded, line)
        if n >= rn:
            return line
        line += rn - n


def cut_all(result: ParseResult, tasks: dict[str, list[Task]], scratch_dir: Path, final_path: Path) -> None:
    """Pass 1 + 2 of the parse in DuckDB: write ``final_path`` (proc_metrics) and fill ``result``."""
    r = result
    order = {task_key(i["node_id"], i["trace_id"], i["attempt"]): k for k, i in enumerate(r.invocations)}
    nbins = r.set_utilisation_grid(tasks)

    # tasks table
    cols: dict[str, list] = {k: [] for k in ("idx", "node_id", "pid", "starttime", "trace_id", "b_start", "b_end",
                                             "total_us", "use_cg", "rss_fb", "p0", "p1", "p2", "p3", "p4")}
    tasks_by_idx = {}
    for node in r.nodes:
        for t in tasks.get(node.node_id, []):
            key = task_key(t.inv["node_id"], t.inv["trace_id"], t.inv["attempt"])
            idx = order[key]
            tasks_by_idx[idx] = (key, t)
            parts = row_template_parts(t.inv)
            vals = dict(idx=idx, node_id=node.node_id, pid=t.inv["pid"], starttime=t.inv["starttime"],
                        trace_id=t.inv["trace_id"], b_start=t.window.b_start, b_end=t.window.b_end,
                        total_us=t.window.total_us, use_cg=t.use_cg, rss_fb=t.window.rss_fallback_kb,
                        p0=parts[0], p1=parts[1], p2=parts[2], p3=parts[3], p4=parts[4])
            for k, v in vals.items():
                cols[k].append(v)
    tasks_tbl = pa.table({
        "idx": pa.array(cols["idx"], pa.int64()), "node_id": pa.array(cols["node_id"], pa.string()),
        "pid": pa.array(cols["pid"], pa.int64()), "starttime": pa.array(cols["starttime"], pa.int64()),
        "trace_id": pa.array(cols["trace_id"], pa.string()), "b_start": pa.array(cols["b_start"], pa.int64()),
        "b_end": pa.array(cols["b_end"], pa.int64()), "total_us": pa.array(cols["total_us"], pa.int64()),
        "use_cg": pa.array(cols["use_cg"], pa.bool_()), "rss_fb": pa.array(cols["rss_fb"], pa.int64()),
        **{f"p{k}": pa.array(cols[f"p{k}"], pa.string()) for k in range(5)}})
    nodes_tbl = pa.table({"node_id": [n.node_id for n in r.nodes], "off": [float(n.offset_ms) for n in r.nodes],
                          "us_per_tick": [1_000_000 / n.clk_tck for n in r.nodes],
                          "kb_per_page": [n.page_size / 1024 for n in r.nodes]})

    spill = scratch_dir / "duckdb-spill"
    con = duck.connect(memory_limit=MEMORY_LIMIT, temp_directory=str(spill), preserve_insertion_order=True)
    try:
        # sources: the node's file when DuckDB and a line count agree it is clean, else the Python pre-scan
        # (bad lines with file:line, the same messages as the Python engine) and a sanitised copy
        sources, excluded_of = [], {}
        for k, node in enumerate(r.nodes):
            path = r.run_dir / node.node_id / "samples.jsonl"
            if not path.exists():
                r.missing_samples_file.append(node.node_id)
                continue
            if _clean(con, path):
                src, excluded = path, []
            else:
                src, excluded, _n = prescan(r, node, scratch_dir / f"{k}.samples.jsonl")
            excluded_of[node.node_id] = (src, excluded)
            sources.append((node.node_id, src))
        con.register("tasks_t", tasks_tbl)
        con.register("nodes_t", nodes_tbl)

        def reads(cols: str, what: str) -> str:
            if not sources:
                return f"SELECT NULL::VARCHAR AS node_id, 0::BIGINT AS rn, {what} LIMIT 0"
            return " UNION ALL ".join(
                f"SELECT '{nid}' AS node_id, row_number() OVER () AS rn, * FROM read_json("
                f"{_sql_str(src)}, format='newline_delimited', columns={{{cols}}})" for nid, src in sources)

        con.execute(f"""
            CREATE TEMP TABLE ticks AS
            SELECT node_id, rn, t, (prev_max IS NULL OR t >= prev_max) AS keep FROM (
                SELECT x.node_id, x.rn, x.ts + n.off AS t,
                       max(x.ts + n.off) OVER (PARTITION BY x.node_id ORDER BY x.rn
                                               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_max
                FROM ({reads("'ts': 'DOUBLE'", "0.0::DOUBLE AS ts")}) x JOIN nodes_t n USING (node_id))""")
        con.execute(f"""
            CREATE TEMP TABLE smp AS
            SELECT k.node_id, k.rn, k.t, u.pos,
                   {_number("pid")} AS pid, {_number("starttime")} AS st,
                   json_type(u.p, {_at("trace_id")}) AS tid_type, json_extract_string(u.p, {_at("trace_id")}) AS tid,
                   {_number("cpu_ticks")} AS ticks, {_number("rss_pages")} AS rss_pages,
                   {_number("cg_cpu_us")} AS cg_us, {_number("cg_mem_kb")} AS cg_kb,
                   CASE WHEN json_type(u.p, {_at("comm")}) = 'VARCHAR'
                        THEN json_extract_string(u.p, {_at("comm")}) END AS comm,
                   CASE WHEN json_type(u.p, {_at("container_id")}) = 'VARCHAR'
                        THEN json_extract_string(u.p, {_at("container_id")}) END AS cid
            FROM (SELECT node_id, rn, unnest(procs) AS p, generate_subscripts(procs, 1) AS pos
                  FROM ({reads("'procs': 'JSON[]'", "[]::JSON[] AS procs")})) u
            JOIN ticks k USING (node_id, rn)
            WHERE k.keep AND json_type(u.p) = 'ARRAY' AND json_array_length(u.p) BETWEEN {_MIN} AND {_MAX}""")
        # per node: ticks kept / dropped, samples read
        for nid, kept, dropped in con.execute("""
                SELECT node_id, count(*) FILTER (WHERE keep), count(*) FILTER (WHERE NOT keep)
                FROM ticks GROUP BY node_id""").fetchall():
            r.ticks_read += kept
            r.non_monotonic_ticks[nid] = dropped
        for node in r.nodes:
            r.non_monotonic_ticks.setdefault(node.node_id, 0)
        r.samples_read += con.execute("SELECT count(*) FROM smp").fetchall()[0][0]
        # samples matched to a task (all of them count as "seen"), the rest are untracked or orphans
        con.execute(f"""
            CREATE TEMP TABLE m AS
            SELECT s.*, t.idx, t.b_start, t.b_end, t.total_us,
                   floor(s.t + 0.5)::BIGINT AS b,
                   CASE WHEN t.use_cg AND s.cg_us IS NOT NULL THEN trunc(s.cg_us)::BIGINT
                        WHEN s.ticks IS NOT NULL THEN trunc(s.ticks * n.us_per_tick)::BIGINT END AS cum,
                   CASE WHEN s.rss_pages IS NOT NULL THEN trunc(s.rss_pages * n.kb_per_page)::BIGINT
                        ELSE trunc(s.cg_kb)::BIGINT END AS rss,
                   (s.tid_type IS DISTINCT FROM 'VARCHAR' OR s.tid <> t.trace_id) AS mismatch
            FROM smp s JOIN tasks_t t ON s.node_id = t.node_id AND s.pid = t.pid
                 AND (s.st = t.starttime OR (t.starttime IS NULL AND NOT EXISTS (
                      SELECT 1 FROM tasks_t e WHERE e.node_id = s.node_id AND e.pid = s.pid AND e.starttime = s.st)
                      AND s.t BETWEEN t.b_start - {WINDOW_SLACK_MS} AND t.b_end + {WINDOW_SLACK_MS}))
            JOIN nodes_t n ON s.node_id = n.node_id""")
        r.untracked_samples += con.execute("""
            SELECT count(*) FROM smp s ANTI JOIN m USING (node_id, rn, pos)
            WHERE s.tid_type = 'NULL' OR s.tid_type IS NULL""").fetchall()[0][0]
        # matched processes: untracked samples summed per (node, pid, starttime), in sample order
        for nid, pid, st, t0, t1, n, c0, c1, rss, comm, cid in con.execute("""
                SELECT s.node_id, s.pid, s.st, min(s.t), max(s.t), count(*),
                       arg_min(trunc(s.ticks * n.us_per_tick)::BIGINT, s.rn * 100000 + s.pos)
                           FILTER (WHERE s.ticks IS NOT NULL),
                       arg_max(trunc(s.ticks * n.us_per_tick)::BIGINT, s.rn * 100000 + s.pos)
                           FILTER (WHERE s.ticks IS NOT NULL),
                       max(trunc(s.rss_pages * n.kb_per_page)::BIGINT),
                       arg_max(s.comm, s.rn * 100000 + s.pos) FILTER (WHERE s.comm IS NOT NULL),
                       arg_max(s.cid, s.rn * 100000 + s.pos) FILTER (WHERE s.cid IS NOT NULL)
                FROM smp s ANTI JOIN m USING (node_id, rn, pos) JOIN nodes_t n USING (node_id)
                WHERE s.tid_type = 'NULL' OR s.tid_type IS NULL
                GROUP BY s.node_id, s.pid, s.st""").fetchall():
            st = None if st is None else int(st)
            r.matched[(nid, int(pid), st)] = MatchedProcess(nid, int(pid), st, t0, t1, c0, c1, n, rss, comm, cid)
        orphans = con.execute("""
            SELECT s.node_id, s.rn, s.pid, s.st, s.tid FROM smp s ANTI JOIN m USING (node_id, rn, pos)
            WHERE s.tid_type IS DISTINCT FROM 'NULL' AND s.tid_type IS NOT NULL
            ORDER BY s.node_id, s.rn, s.pos""").fetchall()
        node_pos = {n.node_id: k for k, n in enumerate(r.nodes)}
        orphans.sort(key=lambda o: (node_pos[o[0]], o[1]))
        for nid, rn, pid, st, tid in orphans:
            r.orphan_samples += 1
            r.orphan_by_trace[tid] = r.orphan_by_trace.get(tid, 0) + 1
            if len(r.orphan_examples) < 10:
                src, excl = excluded_of[nid]
                path = r.run_dir / nid / "samples.jsonl"
                r.orphan_examples.append(f"{path}:{_line_of(rn, excl)}: pid {_num(pid)} starttime {_num(st)} "
                                         f"trace_id {tid}")
        # boundaries: in the run window, the first sample of a task in each ms, with a usable CPU counter
        con.execute("""
            CREATE TEMP TABLE kept AS
            SELECT idx, b, total_us, cum, rss FROM (
                SELECT *, row_number() OVER (PARTITION BY idx, b ORDER BY rn, pos) AS k FROM m
                WHERE b > b_start AND b < b_end AND cum IS NOT NULL) WHERE k = 1""")
        con.execute("""
            CREATE TEMP TABLE brow AS
            SELECT idx, b, cum, total_us, rss_ff,
                   least(greatest(0, max(cum) OVER w), total_us) AS c,
                   coalesce(least(greatest(0, max(cum) OVER wp), total_us), 0) AS c_prev,
                   coalesce(lag(b) OVER (PARTITION BY idx ORDER BY b), NULL) AS b_prev
            FROM (SELECT k.*, coalesce(last_value(k.rss IGNORE NULLS) OVER (PARTITION BY k.idx ORDER BY k.b
                                                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW), t.rss_fb) AS rss_ff
                  FROM kept k JOIN tasks_t t USING (idx))
            WINDOW w AS (PARTITION BY idx ORDER BY b ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
                   wp AS (PARTITION BY idx ORDER BY b ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)""")
        con.execute("""
            CREATE TEMP TABLE rowsx AS
            SELECT b.idx, b.b AS ts_ms, b.b - coalesce(b.b_prev, t.b_start) AS dt_ms, b.c - b.c_prev AS cpu_us,
                   b.rss_ff AS rss_kb
            FROM brow b JOIN tasks_t t USING (idx)
            UNION ALL
            SELECT t.idx, t.b_end, t.b_end - coalesce(l.b, t.b_start), t.total_us - coalesce(l.c, 0),
                   coalesce(l.rss_ff, t.rss_fb)
            FROM tasks_t t LEFT JOIN (SELECT idx, arg_max(b, b) AS b, arg_max(c, b) AS c, arg_max(rss_ff, b) AS rss_ff
                                      FROM brow GROUP BY idx) l USING (idx)""")
        # per-task stats
        seen = dict(con.execute("SELECT idx, count(*) FROM m GROUP BY idx").fetchall())
        mism = dict(con.execute("SELECT idx, count(*) FROM m WHERE mismatch GROUP BY idx").fetchall())
        used = {i: (n, last, over, down) for i, n, last, over, down in con.execute("""
            SELECT idx, count(*), arg_max(c, b), greatest(0, max(cum) - any_value(total_us)),
                   count(*) FILTER (WHERE cum < c_prev)
            FROM brow GROUP BY idx""").fetchall()}
        rows_agg = {i: (n, s) for i, n, s in con.execute(
            "SELECT idx, count(*), sum(cpu_us) FROM rowsx GROUP BY idx").fetchall()}
        for idx, (key, t) in tasks_by_idx.items():
            n_used, last, over, down = used.get(idx, (0, 0, 0, 0))
            nrows, cpu_sum = rows_agg.get(idx, (0, 0))
            st = TaskStats(samples_used=n_used, non_monotonic=down, over_us=int(over), last_sampled_us=int(last),
                           rows=nrows)
            r.stats[key] = st
            r.task_samples[key] = seen.get(idx, 0)
            r.rows_per_task[key] = nrows
            r.exact_us[key] = t.window.total_us
            r.cpu_rows_us[key] = int(cpu_sum)
            r.cpu_source[key] = "cgroup" if t.use_cg else "ticks"
            r.trace_mismatch += mism.get(idx, 0)
            r.rows_written += nrows
        # utilisation bins (integer µs, so sums do not depend on the order of parallel aggregation)
        w, t0 = r.util_bin_ms, r.util_t0
        for node in r.nodes:
            r.util[node.node_id] = [0.0] * nbins
        for nid, k, us in con.execute(f"""
            WITH x AS (SELECT t.node_id, r.ts_ms - r.dt_ms AS a, r.ts_ms AS b, r.dt_ms AS dt, r.cpu_us
                       FROM rowsx r JOIN tasks_t t USING (idx)),
                 y AS (SELECT *, floor((a - {t0}) / {w})::BIGINT AS i, floor((b - {t0}) / {w})::BIGINT AS j FROM x),
                 z AS (SELECT node_id, j AS k, cpu_us AS us FROM y WHERE i = j OR dt <= 0
                       UNION ALL
                       SELECT node_id, k, (cpu_us * (least(b, {t0} + (k + 1) * {w}) - greatest(a, {t0} + k * {w}))
                                           // dt) AS us
                       FROM (SELECT *, unnest(range(greatest(i, 0), least(j, {nbins - 1}) + 1)) AS k FROM y
                             WHERE i <> j AND dt > 0))
            SELECT node_id, k, sum(us)::BIGINT FROM z WHERE k >= 0 AND k < {nbins} GROUP BY node_id, k""").fetchall():
            r.util[nid][k] = us / 1000
        # the file: one JSON line per row, built from the same template parts as the Python engine
        rel = con.sql("""
            SELECT t.p0 || r.ts_ms || t.p1 || r.dt_ms || t.p2 || (r.cpu_us // 1000) || '.' ||
                   lpad((r.cpu_us % 1000)::VARCHAR, 3, '0') || t.p3 || coalesce(r.rss_kb::VARCHAR, 'null') || t.p4
                   AS line
            FROM rowsx r JOIN tasks_t t USING (idx) ORDER BY r.idx, r.ts_ms""")
        if tuple(f for f in schema.PROC_METRIC_FIELDS if f in ("ts_ms", "dt_ms", "cpu_ms", "rss_kb")) != (
                "ts_ms", "dt_ms", "cpu_ms", "rss_kb"):
            raise RuntimeError("PROC_METRIC_FIELDS order changed: update sql_engine's line builder")
        reader = rel.to_arrow_reader(1 << 18) if hasattr(rel, "to_arrow_reader") else rel.record_batch(1 << 18)
        with open(final_path, "wb") as dst:
            for batch in reader:
                _write_string_column(dst, batch.column(0))
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)


def _number(name: str) -> str:
    """SQL of a sample column's value as DOUBLE when it is a JSON number, else NULL (entry ``u.p``)."""
    at = _at(name)
    return f"CASE WHEN json_type(u.p, {at}) IN {_NUM_TYPES} THEN json_extract_string(u.p, {at})::DOUBLE END"


def _num(x):
    return int(x) if x is not None and float(x).is_integer() else x


def _write_string_column(dst, arr: pa.Array) -> None:
    """Write the concatenated values of a string array (each already ends with a newline) without copying rows."""
    if len(arr) == 0:
        return
    if arr.null_count:
        raise RuntimeError("a proc_metrics line is NULL (a template part was NULL)")
    if pa.types.is_string_view(arr.type):
        arr = arr.cast(pa.large_string())
    offsets_dtype = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=offsets_dtype)
    start, end = int(offsets[arr.offset]), int(offsets[arr.offset + len(arr)])
    dst.write(memoryview(bufs[2])[start:end])


def available() -> bool:
    """Whether the SQL oracle can run here (DuckDB installed)."""
    try:
        import duckdb  # noqa: F401
    except ImportError:
        return False
    return True


__all__ = ["available", "cut_all", "parse_run", "prescan"]
