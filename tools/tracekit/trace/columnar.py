"""Columnar fast path of the CTS cut for one node: the same rows as the streaming reference, far fewer µs per sample.

DuckDB reads the node's ``samples.jsonl`` into arrow columns in batches of ticks (every JSON value kept as its
text, so types can be checked), numpy matches samples to tasks by ``(pid, starttime)`` and cuts them
(``intervals.cut_rows_columnar``), pyarrow formats the proc_metrics lines. The result is byte-identical to the
streaming reference (``streaming.NodeCut.cut_file``). Lines DuckDB cannot read (garbage, a truncated last line)
come back as nulls and are judged and reported by the reference's rules (``vocabulary.read_tick``). Whatever else
only the reference reads exactly (a tick with a bad entry, a value of an unexpected JSON type, an escaped trace_id,
a number beyond 2^53, a blank line when a line number must be reported) raises ``NeedsStreaming`` and the node is
re-read by the reference. Samples the arrays cannot place (several tasks share a ``(pid, starttime)``, exec events
without starttime, orphans, untracked processes) go through the reference's own ``NodeCut.match`` and
``NodeCut.flush``. Sample values are found by column name (``core.schema.SAMPLE_COLUMNS``).

Two passes, like the reference: pass 1 (``cut_node``) writes each task's rows as binary columns (``ROW_DTYPE``, a
fifth of the text's size) with the exact byte length its text will have; once every block's place in the final
file is known, pass 2 (``write_rows``) formats the rows and writes each block straight to its place (and into the
row cache, ``rowcache``).
"""

from __future__ import annotations

import heapq
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tracekit.core import schema
from tracekit.core.jsonl import BadLines
from tracekit.trace import duck
from tracekit.trace.intervals import ColumnarCut, cut_rows_columnar
from tracekit.trace.model import Block, Task
from tracekit.trace.rowcache import ROW_DTYPE
from tracekit.trace.streaming import NodeCut, processes
from tracekit.trace.vocabulary import BAD_ENTRY, MAX_VALUES, MIN_VALUES, VAR_ORDER, json_value, read_tick, task_key

BATCH_TICKS = 1 << 16  # ticks per arrow batch: bounds memory (plus the samples of tasks still running)
FORMAT_ROWS = 1 << 18  # proc_metrics lines formatted per pyarrow call (~40 MB of text: bounds the memory)
_EXACT = float(1 << 53)  # beyond this a JSON number is not exact in float64: leave it to the reference
_PID_BITS = 22  # Linux pid_max <= 2^22; (pid, starttime) packs into one int64 key below 2^63
_ST_LIMIT = 1 << 40


# ---- reading the file ----


class NeedsStreaming(Exception):
    """The file holds something only the streaming reference reads exactly; the message says what."""


def available() -> bool:
    """True when DuckDB (the columnar reader) is installed."""
    try:
        import duckdb  # noqa: F401
    except ImportError:
        return False
    return True


def _count_lines(path: Path) -> int:
    """Lines in the file, a last line without newline included (DuckDB must have read exactly these)."""
    lines, last = 0, b"\n"
    with open(path, "rb") as fh:
        while chunk := fh.read(16 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")


def _batches(path: Path, threads: int):
    """The file's lines as arrow batches of (ts, procs), every value as its JSON text (nulls where unreadable)."""
    import duckdb

    con = duck.connect(threads=threads)
    src = "'" + str(path).replace("'", "''") + "'"
    try:
        rel = con.sql(f"SELECT ts, procs FROM read_json({src}, format='newline_delimited', ignore_errors=true, "
                      "columns={'ts': 'JSON', 'procs': 'JSON[][]'})")  # an unreadable line: a row of nulls
        reader = rel.to_arrow_reader if hasattr(rel, "to_arrow_reader") else rel.fetch_record_batch  # duckdb < 1.4
        yield from reader(BATCH_TICKS)
    except duckdb.Error as exc:
        raise NeedsStreaming(f"DuckDB could not read it ({str(exc).splitlines()[0][:160]})") from None
    finally:
        con.close()


def _raw_lines(path: Path, numbers: list[int]):
    """(line number, bytes) of the given lines of a file, in file order."""
    wanted = set(numbers)
    if not wanted:
        return
    last = max(wanted)
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno in wanted:
                yield lineno, raw
            if lineno >= last:
                return


def _report_bad_lines(bad: BadLines, path: Path, numbers: list[int]) -> None:
    """Report the lines that were no tick here the way the streaming reader does."""
    for lineno, raw in _raw_lines(path, numbers):
        tick, why = read_tick(raw)
        if tick is not None:
            raise NeedsStreaming(f"line {lineno} is a tick DuckDB could not read")
        if why:
            bad.add(f"{path}:{lineno}", why)


# ---- JSON values as arrays ----


def _numbers(arr: pa.Array, what: str) -> tuple[np.ndarray, np.ndarray]:
    """JSON number texts -> (float64 values with 0 for null, present mask); anything else is NeedsStreaming."""
    try:
        vals = pc.cast(arr, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise NeedsStreaming(f"a {what} value is not a JSON number") from None
    present = ~np.asarray(vals.is_null(), dtype=bool)
    out = np.asarray(vals.fill_null(0.0))
    if not (np.abs(out) < _EXACT).all():  # also false for NaN / inf
        raise NeedsStreaming(f"a {what} value is not a finite number below 2^53")
    return out, present


def _ints(arr: pa.Array, what: str) -> tuple[np.ndarray, np.ndarray]:
    """JSON integer texts -> (int64 values with 0 for null, present mask)."""
    try:
        vals = pc.cast(arr, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise NeedsStreaming(f"a {what} value is not a JSON integer") from None
    return np.asarray(vals.fill_null(0)), ~np.asarray(vals.is_null(), dtype=bool)


def _strings(arr: pa.Array, what: str) -> pa.Array:
    """JSON string texts without escapes -> their values (nulls stay null)."""
    if arr.null_count < len(arr):
        quoted = pc.and_(pc.starts_with(arr, '"'), pc.ends_with(arr, '"'))
        if not pc.all(quoted.fill_null(True)).as_py() or pc.any(pc.match_substring(arr, "\\")).as_py():
            raise NeedsStreaming(f"a {what} value is not a plain JSON string")
    return pc.utf8_slice_codeunits(arr, 1, -1)


# ---- one batch of samples, and the fast tasks ----


class _Samples:
    """One batch's samples (accepted ticks only) as columns."""

    def __init__(self, batch: pa.RecordBatch, off: float, last_t: float) -> None:
        ts_txt, procs = batch.column(0), batch.column(1)
        # a line DuckDB could not read (null, null) or a tick without numeric ts / procs list: the streaming
        # reader's rules decide what it is (vocabulary.read_tick); it is no tick here
        try:  # the usual case: every line a tick
            if ts_txt.null_count or procs.null_count:
                raise NeedsStreaming("a line without ts or procs")
            ts, _ = _numbers(ts_txt, "ts")
            usable = np.ones(len(ts), dtype=bool)
        except NeedsStreaming:
            usable = np.asarray(pc.and_(procs.is_valid(), pc.match_substring_regex(ts_txt, r"^-?[0-9]"))
                                .fill_null(False), dtype=bool)
            ts, _ = _numbers(pc.if_else(pa.array(usable), ts_txt, "0"), "ts")
        self.bad_rows = np.flatnonzero(~usable)
        self.tick_t = np.where(usable, ts + off, -np.inf)
        run = np.maximum.accumulate(np.concatenate(([last_t], self.tick_t)))
        accepted = usable & (self.tick_t >= run[:-1])  # a tick below an earlier one: the node's clock stepped back
        self.last_t, self.ticks = float(run[-1]), int(accepted.sum())
        self.nonmono = int((usable & ~accepted).sum())
        entries = procs.flatten()
        lengths = np.asarray(pc.list_value_length(entries).fill_null(-1))
        if ((lengths < MIN_VALUES) | (lengths > MAX_VALUES)).any():
            raise NeedsStreaming(f"a {BAD_ENTRY}")
        tick = np.repeat(np.arange(len(ts)), np.asarray(pc.list_value_length(procs).fill_null(0)))
        keep = accepted[tick]
        sel = np.flatnonzero(keep)
        if len(sel) < len(tick):
            entries = entries.take(pa.array(sel))
        self.tick = tick[sel]
        self.t = self.tick_t[self.tick]
        lengths = lengths[sel]

        def field(name: str) -> pa.Array:
            k = schema.SAMPLE_INDEX[name]
            if (lengths > k).all():
                return pc.list_element(entries, k)
            # an optional column that raw logs written before it was added lack: null there
            has = lengths > k
            at = np.asarray(entries.offsets)[:-1] + k
            values = entries.values.take(pa.array(np.where(has, at, 0)))
            return pc.if_else(pa.array(has), values, pa.nulls(len(has), values.type))

        self.pid, pid_ok = _ints(field("pid"), "pid")
        if not pid_ok.all():
            raise NeedsStreaming("a sample without pid")
        self.st, self.has_st = _ints(field("starttime"), "starttime")
        self.tid = _strings(field("trace_id"), "trace_id")
        self.ticks_v, self.has_ticks = _numbers(field("cpu_ticks"), "cpu_ticks")
        self.rss_v, self.has_rss = _numbers(field("rss_pages"), "rss_pages")
        self.cgu_v, self.has_cgu = _numbers(field("cg_cpu_us"), "cg_cpu_us")
        self.cgk_v, self.has_cgk = _numbers(field("cg_mem_kb"), "cg_mem_kb")
        self._field = field
        self._names: tuple | None = None  # comm and container_id, read only when a sample needs the reference

    def names(self) -> tuple:
        """The string columns only matched processes use (``comm``, ``container_id``), read once when first needed."""
        if self._names is None:
            self._names = (_strings(self._field("comm"), "comm"),
                           _strings(self._field("container_id"), "container_id"))
        return self._names

    def cpu_and_rss(self, m: np.ndarray, use_cg: np.ndarray, us_per_tick: float,
                    kb_per_page: float) -> tuple[np.ndarray, ...]:
        """Cumulative CPU (µs) and RSS (KB) of samples ``m`` with their presence masks, from the sources the
        reference prefers (``cts._convert``): the cgroup's µs when the task has its own cgroup, else ticks; pages,
        else the cgroup's memory. ``use_cg``: whether each sample's task ran in its own cgroup."""
        use_cg = use_cg & self.has_cgu[m]
        has_cum = use_cg | self.has_ticks[m]
        cum = np.where(use_cg, np.trunc(self.cgu_v[m]), np.trunc(self.ticks_v[m] * us_per_tick)).astype(np.int64)
        has_rss = self.has_rss[m] | self.has_cgk[m]
        rss = np.where(self.has_rss[m], np.trunc(self.rss_v[m] * kb_per_page), np.trunc(self.cgk_v[m]))
        return cum, has_cum, rss.astype(np.int64), has_rss

    def keys(self) -> np.ndarray:
        """Packed (pid, starttime) per sample; -1 where it cannot name a fast task."""
        ok = self.has_st & (self.pid >= 0) & (self.pid < (1 << _PID_BITS)) & (self.st >= 0) & (self.st < _ST_LIMIT)
        return np.where(ok, (self.st << _PID_BITS) | self.pid, -1)

    def raw_entry(self, i: int) -> list:
        """Sample ``i`` as the reference's raw list (for ``NodeCut.match``)."""
        def num(v: np.ndarray, has: np.ndarray) -> float | None:
            return float(v[i]) if has[i] else None

        comm, cid = self.names()
        return schema.sample_row(pid=int(self.pid[i]), starttime=int(self.st[i]) if self.has_st[i] else None,
                                 trace_id=self.tid[i].as_py(), cpu_ticks=num(self.ticks_v, self.has_ticks),
                                 rss_pages=num(self.rss_v, self.has_rss), cg_cpu_us=num(self.cgu_v, self.has_cgu),
                                 cg_mem_kb=num(self.cgk_v, self.has_cgk), comm=comm[i].as_py(),
                                 container_id=cid[i].as_py())


class _FastTasks:
    """The node's tasks whose ``(pid, starttime)`` names exactly one task, as arrays (index = fast id)."""

    def __init__(self, tasks: list[Task], by_proc: dict[tuple, list[Task]]) -> None:
        self.tasks = [t for t in tasks if len(by_proc[(t.inv["pid"], t.inv["starttime"])]) == 1
                      and isinstance(t.inv["starttime"], int) and 0 <= t.inv["pid"] < (1 << _PID_BITS)
                      and 0 <= t.inv["starttime"] < _ST_LIMIT]
        ts = self.tasks
        keys = np.array([(t.inv["starttime"] << _PID_BITS) | t.inv["pid"] for t in ts], dtype=np.int64)
        self.order = np.argsort(keys, kind="stable")
        self.keys = keys[self.order]
        self.end = np.array([t.end for t in ts], dtype=float)
        self.b_start = np.array([t.window.b_start for t in ts], dtype=np.int64)
        self.b_end = np.array([t.window.b_end for t in ts], dtype=np.int64)
        self.total = np.array([t.window.total_us for t in ts], dtype=np.int64)
        fb = [t.window.rss_fallback_kb for t in ts]
        self.rss_fb = np.array([x or 0 for x in fb], dtype=np.int64)
        self.has_fb = np.array([x is not None for x in fb], dtype=bool)
        self.use_cg = np.array([t.use_cg for t in ts], dtype=bool)
        self.tid = pa.array([t.trace_id for t in ts], type=pa.string())
        self.const_bytes = _const_bytes(const_parts([t.inv for t in ts]), len(ts))

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Fast id per packed key, -1 when none."""
        if not len(self.keys):
            return np.full(len(keys), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[pos] == keys, self.order[pos], -1)


# ---- line text (pass 2 formatting, pass 1 lengths) ----


_DECIMALS = pa.array([f".{k:03d}" for k in range(1000)])  # the µs part of cpu_ms, by table (faster than padding)
_POW10 = 10 ** np.arange(1, 19, dtype=np.int64)


def _json_texts(values: list) -> str | pa.Array:
    """JSON text of each value (``vocabulary.json_value``) as a string array, or one str when they are all equal."""
    if values and all(v == values[0] and type(v) is type(values[0]) for v in values):
        return json_value(values[0])
    kinds = {type(v) for v in values} - {type(None)}
    arr = None
    if kinds == {int}:
        arr = pc.cast(pa.array(values, pa.int64()), pa.string())
    elif kinds == {str}:
        arr = pa.array(values, pa.string())
        plain = pc.and_(pc.ascii_is_printable(arr), pc.invert(pc.match_substring_regex(arr, r'["\\]')))
        arr = pc.binary_join_element_wise('"', arr, '"', "") if pc.all(plain.fill_null(True)).as_py() else None
    if arr is None:  # anything else (escapes, mixed types): the reference formatting, value by value
        return pa.array([json_value(v) for v in values], pa.string())
    return arr.fill_null("null")


def const_parts(invs: list[dict]) -> list[str | pa.Array]:
    """``vocabulary.row_template_parts`` of many tasks at once: per part a str (the same for all) or one string each."""
    parts: list[str | pa.Array] = []
    pieces: list[str | pa.Array] = ["{"]
    for k, f in enumerate(schema.PROC_METRIC_FIELDS):
        pieces.append(("," if k else "") + f'"{f}":')
        if f in VAR_ORDER:
            parts.append(_join(pieces))
            pieces = []
        else:
            pieces.append(_json_texts([inv.get(f) for inv in invs]))
    parts.append(_join([*pieces, "}\n"]))
    return parts


def _join(pieces: list[str | pa.Array]) -> str | pa.Array:
    if all(isinstance(p, str) for p in pieces):
        return "".join(pieces)
    return pc.binary_join_element_wise(*pieces, "")


def _const_bytes(parts: list[str | pa.Array], n: int) -> np.ndarray:
    """Bytes of each task's line besides the digits of its values: the constant parts, "." and 3 decimals."""
    out = np.full(n, 4, dtype=np.int64)
    for p in parts:
        out += len(p.encode()) if isinstance(p, str) else np.asarray(pc.binary_length(p), dtype=np.int64)
    return out


def _digits(x: np.ndarray) -> np.ndarray:
    """Characters of each integer's decimal text (a minus sign included)."""
    return np.searchsorted(_POW10, np.abs(x), side="right") + 1 + (x < 0)


def _text_bytes(cut: ColumnarCut, const_bytes: np.ndarray) -> np.ndarray:
    """Exact length of each cut task's proc_metrics text (what ``_format`` will write for it)."""
    per_row = (const_bytes[cut.task] + _digits(cut.ts_ms) + _digits(cut.dt_ms) + _digits(cut.cpu_us // 1000)
               + np.where(cut.rss_null, 4, _digits(cut.rss_kb)))
    return np.add.reduceat(per_row, cut.first_row[:-1]) if len(per_row) else np.zeros(0, np.int64)


def _format(rows: np.ndarray, row_task: np.ndarray, parts: list) -> pa.StringArray:
    """proc_metrics lines of binary ``rows``; ``parts[k]`` is a constant part, or per-task parts taken by
    ``row_task``."""
    def text(x: np.ndarray) -> pa.Array:
        return pc.cast(pa.array(x), pa.string())

    cpu = rows["cpu_us"]
    values = {"ts_ms": [text(rows["ts_ms"])], "dt_ms": [text(rows["dt_ms"])],
              "cpu_ms": [text(cpu // 1000), _DECIMALS.take(pa.array(cpu % 1000))],
              "rss_kb": [pc.cast(pa.array(rows["rss_kb"], mask=rows["rss_null"]), pa.string()).fill_null("null")]}
    take = pa.array(row_task)
    pieces: list = []
    for k, part in enumerate(parts):
        pieces.append(part if isinstance(part, str) else part.take(take))
        if k < len(VAR_ORDER):
            pieces += values[VAR_ORDER[k]]
    return pc.binary_join_element_wise(*pieces, "")


# ---- pass 2: write_rows ----


def write_rows(cols_path: Path, blocks: list[tuple[int, int, int, int, dict, int]], final_path: Path,
               cache: tuple[Path, int] | None = None) -> None:
    """Pass 2 for one columnar scratch file: format each block ``(row offset, rows, text bytes, offset in the
    final file, invocation, row in the final file)`` and write it to its place in the (pre-sized) final file, and
    its binary rows to their place in the row cache ``(path, byte offset of row 0)`` when there is one."""
    blocks = sorted(blocks, key=lambda b: b[0])
    fd = os.open(final_path, os.O_WRONLY)
    cache_fd = os.open(cache[0], os.O_WRONLY) if cache else -1
    try:
        lo = 0
        while lo < len(blocks):
            hi, nrows = lo, 0
            while hi < len(blocks) and (hi == lo or nrows + blocks[hi][1] <= FORMAT_ROWS):
                nrows += blocks[hi][1]
                hi += 1
            chunk = blocks[lo:hi]
            first = chunk[0][0]
            sel = np.fromfile(cols_path, dtype=ROW_DTYPE, count=chunk[-1][0] + chunk[-1][1] - first,
                              offset=first * ROW_DTYPE.itemsize)
            counts = np.array([b[1] for b in chunk], dtype=np.int64)
            starts = np.array([b[0] for b in chunk], dtype=np.int64) - first
            if len(sel) != counts.sum() or (starts != np.concatenate(([0], np.cumsum(counts)[:-1]))).any():
                raise RuntimeError(f"{cols_path}: row blocks are not contiguous (internal error)")
            parts = const_parts([b[4] for b in chunk])
            lines = _format(sel, np.repeat(np.arange(len(chunk)), counts), parts)
            offs = np.frombuffer(lines.buffers()[1], dtype=np.int32, count=len(lines) + 1, offset=lines.offset * 4)
            data = memoryview(lines.buffers()[2])
            bounds = offs[np.concatenate(([0], np.cumsum(counts)))]
            binary = memoryview(sel.view(np.uint8))
            row = 0
            for (_, count, nbytes, dst, _, dst_row), a, b in zip(chunk, bounds[:-1], bounds[1:]):
                if b - a != nbytes:
                    raise RuntimeError(f"{cols_path}: a block is {b - a} bytes, {nbytes} expected (internal error)")
                _pwrite_all(fd, data[a:b], dst)
                if cache:
                    size = ROW_DTYPE.itemsize
                    _pwrite_all(cache_fd, binary[row * size:(row + count) * size], cache[1] + dst_row * size)
                row += count
            lo = hi
    finally:
        os.close(fd)
        if cache:
            os.close(cache_fd)


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


# ---- pass 1: cut_node ----


def cut_node(cut: NodeCut, tasks: list[Task], path: Path, scratch: BinaryIO, cols: BinaryIO,
             threads: int = 1) -> None:
    """Pass 1 for one node's samples file ``path``: the effects of ``cut.cut_file`` (the streaming reader).

    Tasks the arrays cut get ``cut.index[key] = Block(cols file, first row, text bytes, rows)``; the rest go through
    the reference's ``cut.flush`` (text into ``scratch``). Raises ``NeedsStreaming`` for a file only the streaming
    reader reads exactly (the caller then starts the node again with it)."""
    r = cut.result
    node = cut.node
    by_proc = processes(tasks)
    fast = _FastTasks(tasks, by_proc)
    fast_ids = {id(t) for t in fast.tasks}
    slow = [t for t in tasks if id(t) not in fast_ids]
    heap = [(t.end, i) for i, t in enumerate(slow)]
    heapq.heapify(heap)
    us_per_tick = node.us_per_tick
    kb_per_page = node.kb_per_page
    n = len(fast.tasks)
    late = np.zeros(n, np.int64)
    seen = np.zeros(n, np.int64)
    mismatch = np.zeros(n, np.int64)
    is_cut = np.zeros(n, bool)
    pending: list[tuple[np.ndarray, ...]] = []
    # DuckDB skips blank lines, which would shift the line numbers the reference's matching reports: the file's
    # lines are counted (once) when a progress bar needs the total or a sample took that path
    expected = _count_lines(path) if cut.progress else None
    lines = 0
    matched_by_reference = False
    bad_lines: list[int] = []  # line numbers (if no line is blank) of the lines that are no tick here
    last_t = float("-inf")
    nonmono = nsamples = nticks = 0
    from tqdm import tqdm

    with tqdm(total=expected, unit="tick", unit_scale=True, leave=False, mininterval=0.5,
              desc=f"parse {node.node_id}", disable=not cut.progress) as bar:
        for batch in (_batches(path, threads) if path.stat().st_size else ()):
            s = _Samples(batch, node.offset_ms, last_t)
            bad_lines += (lines + 1 + s.bad_rows).tolist()
            last_t = s.last_t
            nonmono += s.nonmono
            nticks += s.ticks
            nsamples += len(s.t)
            fid = fast.lookup(s.keys())
            for i in np.flatnonzero(fid < 0):  # what the arrays cannot place: the reference's matching
                cut.match(by_proc, s.raw_entry(i), float(s.t[i]), path, lines + 1 + int(s.tick[i]))
                matched_by_reference = True
            lines += batch.num_rows
            bar.update(batch.num_rows)
            m = np.flatnonzero(fid >= 0)
            f, t = fid[m], s.t[m]
            is_late = t >= fast.end[f]
            late += np.bincount(f[is_late], minlength=n)
            on = ~is_late
            m, f, t = m[on], f[on], t[on]
            seen += np.bincount(f, minlength=n)
            differs = np.asarray(pc.not_equal(s.tid.take(pa.array(m)), fast.tid.take(pa.array(f))).fill_null(True))
            mismatch += np.bincount(f[differs], minlength=n)
            pending.append((f, t, *s.cpu_and_rss(m, fast.use_cg[f], us_per_tick, kb_per_page)))
            done = ~is_cut & (fast.end <= last_t)
            if done.any():
                pending = _cut_done(cut, fast, np.flatnonzero(done), pending, cols, seen, mismatch)
                is_cut |= done
            while heap and heap[0][0] <= last_t:
                cut.flush(slow[heapq.heappop(heap)[1]], scratch)
    if (matched_by_reference or bad_lines) and expected is None:
        expected = _count_lines(path)
    if expected is not None and lines != expected:
        raise NeedsStreaming(f"DuckDB read {lines} ticks from {expected} lines (blank lines?)")
    _report_bad_lines(r.bad, path, bad_lines)
    if (~is_cut).any():
        _cut_done(cut, fast, np.flatnonzero(~is_cut), pending, cols, seen, mismatch)
    while heap:
        cut.flush(slow[heapq.heappop(heap)[1]], scratch)
    for t in slow:
        if t.late:
            t.stats.samples_after += t.late
    for t, count in zip(fast.tasks, late.tolist()):
        if count:
            t.stats.samples_after += count
    r.samples_read += nsamples
    r.ticks_read += nticks
    r.non_monotonic_ticks[node.node_id] = nonmono


def _cut_done(cut: NodeCut, fast: _FastTasks, ids: np.ndarray, pending: list, cols: BinaryIO,
              seen: np.ndarray, mismatch: np.ndarray) -> list:
    """Cut the finished fast tasks ``ids`` from the pending samples into ``cols``; returns the samples still
    pending."""
    data = [np.concatenate(c) for c in zip(*pending)] if pending else [np.zeros(0, np.int64)] * 6
    local = np.full(len(fast.tasks), -1, np.int64)
    local[ids] = np.arange(len(ids))
    j = local[data[0]]
    mine = j >= 0
    rest = [c[~mine] for c in data]
    order = np.argsort(j[mine], kind="stable")
    t, cum, has_cum, rss, has_rss = (c[mine][order] for c in data[1:])
    try:
        rows_cut = cut_rows_columnar(j[mine][order], t, cum, has_cum.astype(bool), rss, has_rss.astype(bool),
                                     fast.b_start[ids], fast.b_end[ids], fast.total[ids], fast.rss_fb[ids],
                                     fast.has_fb[ids])
    except OverflowError as exc:
        raise NeedsStreaming(str(exc)) from None
    _add_util(cut, rows_cut)
    rec = np.empty(len(rows_cut.task), ROW_DTYPE)
    for name in ROW_DTYPE.names:
        rec[name] = getattr(rows_cut, name)
    first_row = cols.tell() // ROW_DTYPE.itemsize
    cols.write(rec.view(np.uint8).data)
    nbytes = _text_bytes(rows_cut, fast.const_bytes[ids])
    cpu_sum = (np.add.reduceat(rows_cut.cpu_us, rows_cut.first_row[:-1]) if len(rows_cut.cpu_us)
               else np.zeros(0, np.int64))
    path = Path(cols.name)
    r = cut.result
    tasks = [fast.tasks[fi] for fi in ids.tolist()]
    keys = [task_key(t.inv["node_id"], t.inv["trace_id"], t.inv["attempt"]) for t in tasks]
    rows = (rows_cut.used + 1).tolist()
    stats = rows_cut.task_stats()
    for t, st in zip(tasks, stats):
        t.stats = st
    starts = (first_row + rows_cut.first_row[:-1]).tolist()
    cut.index.update(zip(keys, (Block(path, a, b, n) for a, b, n in zip(starts, nbytes.tolist(), rows))))
    r.stats.update(zip(keys, stats))
    r.task_samples.update(zip(keys, seen[ids].tolist()))
    r.rows_per_task.update(zip(keys, rows))
    r.exact_us.update(zip(keys, fast.total[ids].tolist()))
    r.cpu_rows_us.update(zip(keys, cpu_sum.tolist()))
    r.cpu_source.update(zip(keys, np.where(fast.use_cg[ids], "cgroup", "ticks").tolist()))
    r.trace_mismatch += int(mismatch[ids].sum())
    r.rows_written += int(rows_cut.used.sum()) + len(ids)
    return [rest] if len(rest[0]) else []


def _add_util(cut: NodeCut, rows_cut: ColumnarCut) -> None:
    """CPU of the cut rows into the utilisation bins (rows crossing a bin edge through the reference's split)."""
    util = cut.util
    w, t0, nb = cut.result.util_bin_ms, cut.result.util_t0, len(util)
    a = rows_cut.ts_ms - rows_cut.dt_ms
    i, j = (a - t0) // w, (rows_cut.ts_ms - t0) // w
    same = (i == j) | (rows_cut.dt_ms <= 0)
    inside = same & (j >= 0) & (j < nb)
    sums = np.bincount(j[inside], weights=rows_cut.cpu_us[inside] / 1000, minlength=nb)
    for k in np.flatnonzero(sums):
        util[k] += float(sums[k])
    for k in np.flatnonzero(~same):
        cut.add_utilisation(int(rows_cut.ts_ms[k]), int(rows_cut.dt_ms[k]), int(rows_cut.cpu_us[k]))

