"""Raw logs of a run -> CTS (DESIGN.md §8): ``invocations.jsonl``, ``proc_metrics.jsonl``, ``nodes.json``.

Events are small (one line per task) and are read whole. Samples are cut node by node (nodes in parallel processes)
in two passes: pass 1 reads a node's samples and cuts each task into rows when it ends, keeping only the samples of
running tasks in memory; pass 2 puts every task's block of rows in its place in the final file. Pass 1 has two
readers giving the same bytes: ``columnar`` (DuckDB + numpy, binary rows formatted in pass 2) for every
well-formed file, and the streaming reference here (``_Parser._cut_node``: orjson line by line, text blocks copied
in pass 2), which takes over any file the columnar reader cannot read exactly. Processes are keyed by
(node_id, pid, starttime); node timestamps get the node's clock offset; CPU ticks and pages are converted with the
collecting host's CLK_TCK and page size.

Order (deterministic, byte-identical on re-runs): invocations by ``invocation_order_key``; proc_metrics grouped
by task in the same order, each task's rows by time. The OpenDC export relies on this grouping.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import heapq
import json
import os
import shutil
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from tracekit.core import paths, schema
from tracekit.core.errors import UserError
from tracekit.core.jsonl import BadLines, dumps, fast_loads, read_jsonl
from tracekit.trace.intervals import TaskIntervals, TaskStats, cut_rows, round_ms

NOT_NODE_DIRS = {"CTS", "opendc", "pids", paths.CONTROLLER_DIR}
RAW_NODE_FILES = ("events.jsonl", "samples.jsonl", "node.json", "worker.json")
INVOCATIONS = "invocations.jsonl"
PROC_METRICS = "proc_metrics.jsonl"
NODES = "nodes.json"
_ROW_VARS = ("ts_ms", "dt_ms", "cpu_ms", "rss_kb")  # the per-row parts of a proc_metrics line
COLUMNAR = True  # cut well-formed samples files with columnar (tests switch it off to compare)
WINDOW_SLACK_MS = 1000  # a sample belongs to a task by pid alone only within its run window +- this


def utilisation_bin_ms(span_ms: float, max_bins: int = 300) -> int:
    """A round bin width (100 ms, 200 ms, 500 ms, 1 s, 2 s, 5 s, ...) giving at most ``max_bins`` bins."""
    step = 100
    while True:
        for m in (1, 2, 5):
            if step * m * max_bins >= span_ms:
                return step * m
        step *= 10


def invocation_order_key(inv: dict) -> tuple:
    """Total order of invocations (and of proc_metrics blocks, and of OpenDC tasks): submission first."""
    sub = submission_ms(inv)
    return (sub if sub is not None else 0, str(inv.get("trace_id")), inv.get("attempt") or 0,
            str(inv.get("node_id")), inv.get("ts_start") or 0)


def submission_ms(inv: dict) -> int | None:
    """When the task was submitted: ``ts_enqueue``, else the first known later timestamp."""
    for k in ("ts_enqueue", "ts_dispatch", "ts_start"):
        if inv.get(k) is not None:
            return int(inv[k])
    return None


def has_run(inv: dict) -> bool:
    """An invocation that executed: its pid, ts_start and ts_end are known."""
    return inv.get("pid") is not None and inv.get("ts_start") is not None and inv.get("ts_end") is not None


def task_key(node_id: str | None, trace_id: str | None, attempt: int | None) -> tuple:
    """Identity of one executed attempt (an invocation row) in CTS."""
    return (node_id, trace_id, attempt)


class Block(NamedTuple):
    """Where pass 1 left one task's proc_metrics lines: ``nbytes`` of text at byte ``offset`` of a text scratch
    file, or, when ``rows`` >= 0, ``rows`` binary rows from row ``offset`` of a columnar scratch file that pass 2
    formats (``columnar.write_rows``) into ``nbytes`` of text."""

    path: Path
    offset: int
    nbytes: int
    rows: int = -1


@dataclass
class NodeInfo:
    """One node's metadata with the source of every value the parser depends on."""

    node_id: str
    meta: dict
    worker: dict
    offset_ms: float
    offset_source: str
    rtt_ms: float | None
    clk_tck: int
    page_size: int
    defaults_used: list[str] = field(default_factory=list)

    def row(self) -> dict:
        """The node's ``nodes.json`` entry (``schema.NODE_FIELDS``)."""
        m, w = self.meta, self.worker
        vals = {
            "node_id": self.node_id, "stage": m.get("stage"), "cpu_cores": m.get("cpu_cores", w.get("cpu_cores")),
            "mem_mb": m.get("mem_mb", w.get("mem_mb")), "cpu_model": m.get("cpu_model"),
            "cpu_freq_mhz": m.get("cpu_freq_mhz"), "capacity": w.get("capacity"),
            "allocation_ratio": w.get("allocation_ratio"), "parallel": w.get("parallel"),
            "binding": w.get("binding"), "clock_offset_ms": self.offset_ms, "clock_rtt_ms": self.rtt_ms,
            "clk_tck": self.clk_tck, "page_size": self.page_size,
        }
        return {k: vals.get(k) for k in schema.NODE_FIELDS}


@contextlib.contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (restored after).

    The parse builds millions of containers that live long (invocations, tasks, buffered samples) and makes no
    reference cycles; the collector would traverse them again and again (about 40 % of the time spent reading
    events, ~6 % of the cut). Reference counting still frees everything as usual.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _read_json(path: Path, bad: BadLines) -> dict:
    if not path.exists():
        return {}
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        bad.add(f"{path}:1", f"unreadable JSON ({exc.__class__.__name__})")
        return {}
    if not isinstance(obj, dict):
        bad.add(f"{path}:1", "not a JSON object")
        return {}
    return obj


def load_node(run_dir: Path, node_id: str, bad: BadLines) -> NodeInfo:
    """Read ``node.json`` + ``worker.json``; fall back (and say so) for offset, CLK_TCK and page size."""
    ndir = run_dir / node_id
    meta = _read_json(ndir / "node.json", bad)
    worker = _read_json(ndir / "worker.json", bad)
    defaults: list[str] = []
    clock = meta.get("clock") if isinstance(meta.get("clock"), dict) else None
    wclock = worker.get("clock") if isinstance(worker.get("clock"), dict) else None
    if clock and isinstance(clock.get("offset_ms"), (int, float)):
        offset, src, rtt = float(clock["offset_ms"]), "node.json", clock.get("rtt_ms")
    elif wclock and isinstance(wclock.get("offset_ms"), (int, float)):
        offset, src, rtt = float(wclock["offset_ms"]), "worker.json", wclock.get("rtt_ms")
    else:
        offset, src, rtt = 0.0, "missing", None
        defaults.append("clock offset (0 assumed)")
    clk = meta.get("clk_tck")
    if not isinstance(clk, int) or clk <= 0:
        clk = os.sysconf("SC_CLK_TCK")
        defaults.append(f"clk_tck (this host's {clk})")
    page = meta.get("page_size")
    if not isinstance(page, int) or page <= 0:
        page = os.sysconf("SC_PAGE_SIZE")
        defaults.append(f"page_size (this host's {page})")
    return NodeInfo(node_id, meta, worker, offset, src, rtt, clk, page, defaults)


def discover_nodes(run_dir: Path) -> list[str]:
    """Node folders of a run: sub-folders holding at least one raw node file."""
    if not run_dir.is_dir():
        raise UserError(f"no such run folder: {run_dir}")
    found = []
    for d in sorted(run_dir.iterdir()):
        if d.is_dir() and d.name not in NOT_NODE_DIRS and any((d / f).exists() for f in RAW_NODE_FILES):
            found.append(d.name)
    return found


def discover_nodes_quiet(run_dir: Path) -> list[str]:
    """``discover_nodes`` that returns [] instead of raising for a missing folder."""
    return discover_nodes(run_dir) if run_dir.is_dir() else []


@dataclass
class Task:
    """One executed attempt being cut into rows."""

    inv: dict
    start: float
    end: float
    use_cg: bool
    cutter: TaskIntervals
    template: str
    raw: list[tuple[float, list]] = field(default_factory=list)  # (t, raw proc entry) while it runs
    late: int = 0  # samples seen after the task was cut (all "after ts_end")
    samples: int = 0
    trace_mismatch: int = 0
    done: bool = False
    trace_id: str = ""
    stats: TaskStats | None = None

    def reset(self) -> None:
        """Forget what a cut attempt gathered (before the node is cut again from the start)."""
        self.raw, self.late, self.samples, self.trace_mismatch, self.done, self.stats = [], 0, 0, 0, False, None


@dataclass
class ParseResult:
    """Everything the parse produced and observed (the audit's input)."""

    run_dir: Path
    out_dir: Path
    nodes: list[NodeInfo] = field(default_factory=list)
    invocations: list[dict] = field(default_factory=list)
    stats: dict[tuple, TaskStats] = field(default_factory=dict)  # task_key -> cutting stats
    task_samples: dict[tuple, int] = field(default_factory=dict)  # task_key -> samples seen
    rows_per_task: dict[tuple, int] = field(default_factory=dict)
    cpu_rows_us: dict[tuple, int] = field(default_factory=dict)  # task_key -> sum of its rows' CPU (µs)
    exact_us: dict[tuple, int] = field(default_factory=dict)
    cpu_source: dict[tuple, str] = field(default_factory=dict)
    bad: BadLines = field(default_factory=BadLines)
    orphan_samples: int = 0  # samples carrying a trace_id whose process has no exec event
    untracked_samples: int = 0  # samples without trace_id (name-matched processes that are no task)
    orphan_examples: list[str] = field(default_factory=list)
    orphan_by_trace: dict[str, int] = field(default_factory=dict)  # trace_id -> orphan samples (audit splits them)
    non_monotonic_ticks: dict[str, int] = field(default_factory=dict)
    trace_mismatch: int = 0
    duplicate_events: int = 0
    unknown_events: int = 0
    samples_read: int = 0
    ticks_read: int = 0
    rows_written: int = 0
    missing_samples_file: list[str] = field(default_factory=list)
    reader_notes: list[str] = field(default_factory=list)  # nodes the columnar reader left to the streaming one
    dispatch: list[dict] = field(default_factory=list)
    placements: list[dict] = field(default_factory=list)
    util_bin_ms: int = 1000
    util_t0: int = 0
    util: dict[str, list[float]] = field(default_factory=dict)  # node -> CPU ms per bin

    _executed: list[dict] | None = field(default=None, repr=False, compare=False)

    def executed(self) -> list[dict]:
        """The invocations that ran (``has_run``), in invocation order; computed once."""
        if self._executed is None:
            self._executed = [i for i in self.invocations if has_run(i)]
        return self._executed

    def files(self) -> dict[str, Path]:
        return {n: self.out_dir / n for n in (INVOCATIONS, PROC_METRICS, NODES)}


def json_value(v) -> str:
    """``json.dumps(v, ensure_ascii=False)``, without its cost for the usual ids (once per task)."""
    if type(v) is int:
        return str(v)
    if v is None:
        return "null"
    if type(v) is str and v.isascii() and v.isprintable() and '"' not in v and "\\" not in v:
        return f'"{v}"'  # printable ASCII without quote or backslash: JSON needs no escape
    return json.dumps(v, ensure_ascii=False)


def _row_template(inv: dict, cpu_slot: str = "%s") -> str:
    """printf template of one proc_metrics line for this task, fields in ``schema.PROC_METRIC_FIELDS`` order.

    Every variable field is a ``%s`` slot, except ``cpu_ms`` which is ``cpu_slot``: the Python engine passes
    ``"%d.%03d"`` (ms and the µs remainder: one formatting step per row), ``cts_sql`` splits the default at ``%s``.
    """
    parts = []
    for f in schema.PROC_METRIC_FIELDS:
        if f in _ROW_VARS:
            parts.append(f'"{f}":' + (cpu_slot if f == "cpu_ms" else "%s"))
        else:
            parts.append(f'"{f}":' + json_value(inv.get(f)).replace("%", "%%"))
    return "{" + ",".join(parts) + "}\n"


def row_template_parts(inv: dict) -> list[str]:
    """The constant text of this task's proc_metrics lines around the ``VAR_ORDER`` values (what
    ``_row_template`` holds between its slots, without printf escaping)."""
    parts, cur = [], "{"
    for k, f in enumerate(schema.PROC_METRIC_FIELDS):
        cur += ("," if k else "") + f'"{f}":'
        if f in _ROW_VARS:
            parts.append(cur)
            cur = ""
        else:
            cur += json_value(inv.get(f))
    parts.append(cur + "}\n")
    return parts


_CPU_SLOT = "%d.%03d"  # cpu_ms as exact µs with 3 decimals, in one printf step (cpu_us // 1000, cpu_us % 1000)
VAR_ORDER = tuple(f for f in schema.PROC_METRIC_FIELDS if f in _ROW_VARS)


NUMBER_TYPES = frozenset((int, float))  # type(x) in NUMBER_TYPES: a JSON number (bool excluded), cheap in the hot loop


def cpu_ms_text(cpu_us: int) -> str:
    """CPU ms as written in proc_metrics: exact µs, always 3 decimals (both parse engines write the same bytes)."""
    return f"{cpu_us // 1000}.{cpu_us % 1000:03d}"


def _fmt(template: str, ts_ms: int, dt_ms: int, cpu_us: int, rss_kb: int | None) -> str:
    """One row with a ``_CPU_SLOT`` template, for any order of ``_ROW_VARS`` in the schema."""
    rss = "null" if rss_kb is None else rss_kb
    vals = {"ts_ms": (ts_ms,), "dt_ms": (dt_ms,), "cpu_ms": (cpu_us // 1000, cpu_us % 1000), "rss_kb": (rss,)}
    return template % tuple(v for f in VAR_ORDER for v in vals[f])


def _num(x) -> bool:
    """A JSON number (bool is not one); parsed JSON holds only exact int/float/bool, so a type test suffices."""
    return type(x) in NUMBER_TYPES


def _empty_inv() -> dict:
    return dict.fromkeys(schema.INVOCATION_FIELDS)


def _exec_invocation(ev: dict, node: NodeInfo) -> dict:
    inv = {k: ev.get(k) for k in schema.INVOCATION_FIELDS}
    inv["node_id"] = node.node_id
    for k in ("ts_start", "ts_end"):
        inv[k] = round_ms(float(ev[k]) + node.offset_ms) if _num(ev.get(k)) else None
    if inv["ts_start"] is not None and inv["ts_end"] is not None and inv["ts_end"] <= inv["ts_start"]:
        inv["ts_end"] = inv["ts_start"] + 1  # same rule as the rows: a run covers at least 1 ms
    for k in ("ts_enqueue", "ts_dispatch"):
        inv[k] = round_ms(float(ev[k])) if _num(ev.get(k)) else None
    status = ev.get("status") or "failed"
    code = ev.get("exit_code")
    if status == "ok" and ((code not in (0, None)) or ev.get("signal")):
        status = "failed"
    inv["status"] = "ok" if status == "ok" else "failed"
    if inv["status"] == "failed" and not inv.get("error"):
        inv["error"] = f"exit code {code}" if code is not None else f"signal {ev.get('signal')}"
    use_cg = _num(ev.get("cg_cpu_us"))
    if use_cg:
        inv["cpu_ms"] = int(round(ev["cg_cpu_us"])) / 1000
    elif _num(ev.get("cpu_ms")):
        inv["cpu_ms"] = int(round(ev["cpu_ms"] * 1000)) / 1000
    return inv


def _reject_invocation(ev: dict, offset: float) -> dict:
    inv = _empty_inv()
    for k in ("trace_id", "attempt", "node_id", "profile"):
        inv[k] = ev.get(k)
    inv["status"] = "failed"
    inv["error"] = ev.get("reason") or f"{ev.get('kind')} event without a reason"
    if _num(ev.get("ts")):
        inv["ts_end"] = round_ms(float(ev["ts"]) + offset)
    return inv


def read_tick(raw: bytes) -> tuple[dict | None, str]:
    """One ``samples.jsonl`` line -> ``(tick, "")``, or ``(None, why it is no tick)`` with ``""`` for a blank line
    (skipped silently). Every reader of sample lines judges them by this."""
    try:
        tick = fast_loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        if not raw.strip():
            return None, ""
        kind = "truncated line" if not raw.endswith(b"\n") else "malformed JSON"
        return None, f"{kind} ({exc.__class__.__name__})"
    if type(tick) is not dict:
        return None, "not a JSON object"
    if type(tick.get("ts")) not in NUMBER_TYPES or type(tick.get("procs")) is not list:
        return None, "sample tick without numeric ts / procs list"
    return tick, ""


class _Parser:
    def __init__(self, run_dir: Path, out_dir: Path, progress: bool) -> None:
        self.r = ParseResult(run_dir=run_dir, out_dir=out_dir)
        self.progress = progress
        self.tasks: dict[str, list[Task]] = {}  # node -> its executed attempts with a process
        self.fenced: set[tuple] = set()

    # ---- events ------------------------------------------------------------------------------------------------
    def load_events(self) -> None:
        r = self.r
        seen: set[tuple] = set()
        for node in r.nodes:
            path = r.run_dir / node.node_id / "events.jsonl"
            if not path.exists():
                continue
            node_tasks: list[Task] = []
            for lineno, ev in read_jsonl(path, r.bad):
                where = f"{path}:{lineno}"
                kind = ev.get("kind")
                if kind == "exec":
                    if not isinstance(ev.get("trace_id"), str):
                        r.bad.add(where, "exec event without trace_id")
                        continue
                    ident = (node.node_id, ev.get("trace_id"), ev.get("attempt"), ev.get("pid"), ev.get("starttime"))
                    if ident in seen:
                        r.duplicate_events += 1
                        continue
                    seen.add(ident)
                    inv = _exec_invocation(ev, node)
                    r.invocations.append(inv)
                    # starttime may be missing (worker fallback without the adapter): such a task is matched to
                    # samples by pid within its run window instead (see _cut_node)
                    ran = isinstance(ev.get("pid"), int) and isinstance(ev.get("starttime"), (int, type(None))) \
                        and _num(ev.get("ts_start")) and _num(ev.get("ts_end"))
                    if ran:
                        node_tasks.append(self._new_task(inv, ev, node))
                elif kind == "reject" or kind == "failed":
                    r.invocations.append(_reject_invocation({**ev, "node_id": ev.get("node_id") or node.node_id},
                                                            node.offset_ms))
                elif kind == "fenced":
                    self.fenced.add((ev.get("trace_id"), ev.get("attempt")))
                else:
                    r.unknown_events += 1
                    r.bad.add(where, f"unknown event kind {kind!r}")
            self.tasks[node.node_id] = node_tasks
        cfile = r.run_dir / paths.CONTROLLER_DIR / "events.jsonl"
        if cfile.exists():
            for lineno, ev in read_jsonl(cfile, r.bad):
                if ev.get("kind") in ("failed", "reject"):
                    r.invocations.append(_reject_invocation(ev, 0.0))
                elif ev.get("kind") == "fenced":
                    self.fenced.add((ev.get("trace_id"), ev.get("attempt")))
                else:
                    r.bad.add(f"{cfile}:{lineno}", f"unexpected controller event kind {ev.get('kind')!r}")
        for inv in r.invocations:
            if inv.get("pid") is not None and (inv["trace_id"], inv["attempt"]) in self.fenced:
                inv["status"] = "fenced"
                inv["error"] = inv.get("error") or "completion refused: the task had been recovered and re-queued"

    def load_controller(self) -> None:
        r = self.r
        dpath = r.run_dir / paths.dispatch_path("_").name
        ppath = r.run_dir / paths.placements_path("_").name
        r.dispatch = [d for _, d in read_jsonl(dpath, r.bad)] if dpath.exists() else []
        r.placements = [p for _, p in read_jsonl(ppath, r.bad)] if ppath.exists() else []
        by_tid = {d.get("trace_id"): d for d in r.dispatch}
        placed = {(p.get("trace_id"), p.get("attempt")): p for p in r.placements}
        for inv in r.invocations:
            d = by_tid.get(inv["trace_id"])
            if d:
                for k in ("ts_enqueue", "profile", "cpu_units", "input", "output"):
                    if inv.get(k) is None and d.get(k) is not None:
                        inv[k] = d[k]
            p = placed.get((inv["trace_id"], inv["attempt"]))
            if p and inv.get("ts_dispatch") is None and _num(p.get("ts")):
                inv["ts_dispatch"] = round_ms(float(p["ts"]))
            if inv.get("node_id") is None and p:
                inv["node_id"] = p.get("node")
        self._fence_superseded()

    def _fence_superseded(self) -> None:
        """An executed attempt with a later attempt of the same task was never accepted: mark it fenced.

        attempt+1 exists only when the control plane recovered attempt N from running:<node> (its node died,
        was cut off, or its worker restarted), and an accepted completion removes the task from running:<node>
        atomically; so attempt N's completion was refused, or never sent (its worker was killed), even when no
        ``fenced`` event was written (e.g. the adapter outlived a SIGKILLed worker and exited 0).
        """
        r = self.r
        last: dict[str, int] = {}
        for rec in [*r.invocations, *r.placements]:
            a = rec.get("attempt")
            if isinstance(a, int) and isinstance(rec.get("trace_id"), str):
                last[rec["trace_id"]] = max(a, last.get(rec["trace_id"], a))
        for inv in r.invocations:
            a = inv.get("attempt")
            if inv.get("pid") is not None and inv["status"] != "fenced" and isinstance(a, int) \
                    and a < last.get(inv["trace_id"], a):
                inv["status"] = "fenced"
                inv["error"] = inv.get("error") or (f"superseded: attempt {last[inv['trace_id']]} re-ran the task "
                                                    "after this attempt's node or worker was lost")

    def _new_task(self, inv: dict, ev: dict, node: NodeInfo) -> Task:
        start = float(ev["ts_start"]) + node.offset_ms
        end = float(ev["ts_end"]) + node.offset_ms
        use_cg = _num(ev.get("cg_cpu_us"))
        total_us = int(round(inv["cpu_ms"] * 1000)) if inv.get("cpu_ms") is not None else 0
        rss = ev.get("max_rss_kb") if isinstance(ev.get("max_rss_kb"), int) else None
        cutter = TaskIntervals(start, end, total_us, rss)
        return Task(inv, start, end, use_cg, cutter, "", trace_id=inv["trace_id"])

    # ---- samples -----------------------------------------------------------------------------------------------
    def cut_samples(self, scratch_dir: Path, meanwhile=None) -> dict[tuple, Block]:
        """Stream every node's samples (nodes in parallel processes when there are several cores).

        ``meanwhile`` (optional, called exactly once) is work for this process while the node workers run (the
        cut needs only the executed tasks, not the controller's files). Returns task_key -> the ``Block`` of the
        task's rows.
        """
        r = self.r
        spans = [(t.start, t.end) for ts in self.tasks.values() for t in ts]
        lo = min((s for s, _ in spans), default=0.0)
        hi = max((e for _, e in spans), default=1.0)
        r.util_bin_ms = utilisation_bin_ms(hi - lo)
        r.util_t0 = int(lo // r.util_bin_ms * r.util_bin_ms)
        nbins = int((hi - r.util_t0) // r.util_bin_ms) + 2
        workers = min(len(r.nodes), os.cpu_count() or 1)
        threads = max(1, (os.cpu_count() or 1) // max(workers, 1))  # DuckDB threads per node being cut
        jobs = [(r.run_dir, r.out_dir, node, self.tasks.get(node.node_id, []), r.util_bin_ms, r.util_t0, nbins,
                 threads, scratch_dir / f"{k}.rows") for k, node in enumerate(r.nodes)]
        results = None
        pending = [meanwhile] if meanwhile else []
        if workers > 1:
            try:
                results = self._cut_parallel(jobs, workers, pending)
            except (OSError, NotImplementedError, ImportError):
                results = None  # no process pool here (e.g. no /dev/shm semaphores): same result, one process
        while pending:
            pending.pop()()
        if results is None:
            results = [_cut_one_node(*job, progress=self.progress) for job in jobs]
        index: dict[tuple, Block] = {}
        for part, idx in results:
            self._merge(part)
            index.update(idx)
        return index

    def _cut_parallel(self, jobs: list, workers: int, pending: list) -> list:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from tqdm import tqdm

        global _FORK_JOBS
        # With fork the workers inherit the jobs (the node's tasks: tens of MB at 100 k tasks) instead of
        # unpickling them, which cost about a second per worker.
        fork = "fork" in multiprocessing.get_all_start_methods()
        _FORK_JOBS = jobs if fork else None
        try:
            with ProcessPoolExecutor(max_workers=workers,
                                     mp_context=multiprocessing.get_context("fork") if fork else None) as pool:
                futs = [pool.submit(_cut_forked_job, k) if fork else pool.submit(_cut_one_node, *job)
                        for k, job in enumerate(jobs)]
                while pending:  # this process's own work, while the workers cut
                    pending.pop()()
                with tqdm(total=len(futs), desc="parse nodes", unit="node", disable=not self.progress) as bar:
                    for f in futs:
                        f.add_done_callback(lambda _f: bar.update(1))
                    return [f.result() for f in futs]  # node order: deterministic merge
        except BrokenProcessPool:
            raise UserError("a parse worker process died (out of memory?): re-run, or free memory") from None
        finally:
            _FORK_JOBS = None

    def _merge(self, part: ParseResult) -> None:
        r = self.r
        for name in ("orphan_samples", "untracked_samples", "trace_mismatch", "samples_read", "ticks_read",
                     "rows_written"):
            setattr(r, name, getattr(r, name) + getattr(part, name))
        for name in ("stats", "task_samples", "rows_per_task", "cpu_rows_us", "exact_us", "cpu_source",
                     "non_monotonic_ticks", "util"):
            getattr(r, name).update(getattr(part, name))
        r.missing_samples_file += part.missing_samples_file
        r.reader_notes += part.reader_notes
        r.orphan_examples = (r.orphan_examples + part.orphan_examples)[:10]
        for tid, c in part.orphan_by_trace.items():
            r.orphan_by_trace[tid] = r.orphan_by_trace.get(tid, 0) + c
        r.bad.count += part.bad.count
        r.bad.examples = (r.bad.examples + part.bad.examples)[: r.bad.keep]

    def _flush(self, t: Task, scratch, index: dict, util: list[float], us_per_tick: float,
               kb_per_page: float) -> None:
        """The task ended: cut its buffered raw samples into rows (``intervals.cut_rows``) and write its block."""
        r = self.r
        c = t.cutter
        raw = t.raw
        t.raw = []
        t.done = True
        if not t.template:
            t.template = _row_template(t.inv, _CPU_SLOT)
        t.samples += len(raw)
        rows, st = cut_rows(c.b_start, c.b_end, c.total_us, _convert(raw, t.use_cg, us_per_tick, kb_per_page),
                            c.rss_fallback_kb)
        for ts, dt, cpu, _rss in rows:
            self._util_add(util, ts, dt, cpu)
        data = "".join(_fmt(t.template, ts, dt, cpu, rss) for ts, dt, cpu, rss in rows).encode()
        mismatch = sum(1 for _, p in raw if p[2] != t.trace_id)
        cpu_sum = sum(row[2] for row in rows)
        t.trace_mismatch += mismatch
        t.stats = st
        key = task_key(t.inv["node_id"], t.inv["trace_id"], t.inv["attempt"])
        index[key] = Block(Path(scratch.name), scratch.tell(), len(data))
        scratch.write(data)
        r.stats[key] = st
        r.task_samples[key] = t.samples
        r.rows_per_task[key] = st.rows
        r.exact_us[key] = c.total_us
        r.cpu_rows_us[key] = cpu_sum
        r.cpu_source[key] = "cgroup" if t.use_cg else "ticks"
        r.trace_mismatch += t.trace_mismatch
        r.rows_written += st.rows

    def _util_add(self, util: list[float], ts_ms: int, dt_ms: int, cpu_us: int) -> None:
        """Spread a row's CPU over the utilisation bins it overlaps, in proportion to the overlap."""
        w, t0 = self.r.util_bin_ms, self.r.util_t0
        a, b = ts_ms - dt_ms, ts_ms
        i, j = (a - t0) // w, (b - t0) // w
        if i == j or dt_ms <= 0:
            if 0 <= j < len(util):
                util[j] += cpu_us / 1000
            return
        rate = cpu_us / 1000 / dt_ms
        for k in range(max(i, 0), min(j, len(util) - 1) + 1):
            lo, hi = max(a, t0 + k * w), min(b, t0 + (k + 1) * w)
            if hi > lo:
                util[k] += rate * (hi - lo)

    def _cut_node(self, node: NodeInfo, tasks: list[Task], scratch, index: dict, util: list[float]) -> None:
        """Stream one node's samples file; each sample goes to its task's buffer, cut when the task ends.

        Hot path (once per sample): a sample whose ``(pid, starttime)`` names exactly one task is appended to that
        task's buffer as it is (validation and unit conversion happen per task in ``_flush``); the rest (no task,
        several tasks, exec events without starttime) take ``_match``.
        """
        r = self.r
        path = r.run_dir / node.node_id / "samples.jsonl"
        by_proc: dict[tuple[int, int], list[Task]] = {}
        for t in tasks:
            by_proc.setdefault((t.inv["pid"], t.inv["starttime"]), []).append(t)
        fast = {k: c[0].raw.append for k, c in by_proc.items() if len(c) == 1}
        heap = [(t.end, i) for i, t in enumerate(tasks)]
        heapq.heapify(heap)
        off = node.offset_ms
        us_per_tick = 1_000_000 / node.clk_tck
        kb_per_page = node.page_size / 1024
        last_t = float("-inf")
        nonmono = 0
        nfields = len(schema.SAMPLE_PROC_FIELDS)
        nsamples = nticks = 0
        next_end = heap[0][0] if heap else float("inf")
        if not path.exists():
            r.missing_samples_file.append(node.node_id)
        else:
            bad = r.bad
            fast_get = fast.get
            heappop = heapq.heappop
            for lineno, tick in self._ticks(path):
                procs = tick["procs"]
                t_ctrl = tick["ts"] + off
                if t_ctrl < last_t:
                    nonmono += 1  # the node's wall clock stepped back: the tick cannot be placed in time
                    continue
                last_t = t_ctrl
                nticks += 1
                if t_ctrl >= next_end:  # a task ended: cut it before this tick's samples
                    while heap and heap[0][0] <= t_ctrl:
                        task = tasks[heappop(heap)[1]]
                        self._flush(task, scratch, index, util, us_per_tick, kb_per_page)
                        k = (task.inv["pid"], task.inv["starttime"])
                        if k in fast:
                            fast[k] = _count_late(task)
                    next_end = heap[0][0] if heap else float("inf")
                nsamples += len(procs)
                for p in procs:
                    if type(p) is not list or len(p) != nfields:
                        nsamples -= 1
                        bad.add(f"{path}:{lineno}", f"sample entry is not a list of {nfields} values")
                        continue
                    sink = fast_get((p[0], p[1]))
                    if sink is not None:
                        sink((t_ctrl, p))
                    else:
                        self._match(by_proc, p, t_ctrl, path, lineno)
        r.samples_read += nsamples
        r.ticks_read += nticks
        while heap:
            self._flush(tasks[heapq.heappop(heap)[1]], scratch, index, util, us_per_tick, kb_per_page)
        for t in tasks:
            if t.late:  # samples after the task's end: only the audit's "after ts_end" count sees them
                t.stats.samples_after += t.late
        r.non_monotonic_ticks[node.node_id] = nonmono

    def _match(self, by_proc: dict, p: list, t_ctrl: float, path: Path, lineno: int) -> None:
        """A sample the fast path could not place: by pid and run window, orphan, or untracked."""
        r = self.r
        pid, st, tid = p[0], p[1], p[2]
        cands = by_proc.get((pid, st))
        if not cands and (pid, None) in by_proc:  # exec events without starttime: by pid and run window
            cands = [c for c in by_proc[(pid, None)]
                     if c.cutter.b_start - WINDOW_SLACK_MS <= t_ctrl <= c.cutter.b_end + WINDOW_SLACK_MS]
        if not cands:
            if tid is None:
                r.untracked_samples += 1  # matched by name (PROC_MATCH), not a traced task: not ours
                return
            r.orphan_samples += 1
            r.orphan_by_trace[tid] = r.orphan_by_trace.get(tid, 0) + 1
            if len(r.orphan_examples) < 10:
                r.orphan_examples.append(f"{path}:{lineno}: pid {pid} starttime {st} trace_id {tid}")
            return
        task = cands[0]
        if len(cands) > 1:  # same (pid, starttime) twice on one node (reboot): pick by time window
            task = next((c for c in cands if c.cutter.b_start - WINDOW_SLACK_MS <= t_ctrl
                         <= c.cutter.b_end + WINDOW_SLACK_MS), cands[0])
        if task.done or t_ctrl >= task.end:  # (the same: a task is cut at the first tick at or after its end)
            task.late += 1
        else:
            task.raw.append((t_ctrl, p))

    def _ticks(self, path: Path) -> Iterator[tuple[int, dict]]:
        """``(line number, tick)`` of a samples file, bad lines reported (``read_tick``), with a byte-based
        progress bar."""
        from tqdm import tqdm

        bad = self.r.bad
        size = path.stat().st_size
        with open(path, "rb") as fh, tqdm(total=size, unit="B", unit_scale=True, desc=f"parse {path.parent.name}",
                                          disable=not self.progress, mininterval=0.5, leave=False) as bar:
            last = 0
            for lineno, raw in enumerate(fh, 1):
                if not lineno % 50000:
                    pos = fh.tell()
                    bar.update(pos - last)
                    last = pos
                tick, why = read_tick(raw)
                if tick is not None:
                    yield lineno, tick
                elif why:
                    bad.add(f"{path}:{lineno}", why)
            bar.update(size - last)


def _count_late(task: Task):
    """The fast-path sink of a task already cut: it only counts the sample."""
    def sink(_sample) -> None:
        task.late += 1
    return sink


def _convert(raw: list[tuple[float, list]], use_cg: bool, us_per_tick: float, kb_per_page: float) -> list[tuple]:
    """Raw proc entries -> ``(t, cumulative CPU µs, RSS KB or None)``; entries without a CPU counter are dropped.

    CPU: the cgroup's µs counter when the task ran in its own cgroup and the entry has it, else ticks x µs/tick;
    RSS: pages x KB/page, else the cgroup's memory, else None. Values must be JSON numbers (bool is not one).
    """
    numt = NUMBER_TYPES
    out = []
    append = out.append
    for t, p in raw:
        _pid, _st, _tid, ticks, rss_pages, cg_us, cg_kb = p
        if use_cg and type(cg_us) in numt:
            cum = int(cg_us)
        elif type(ticks) in numt:
            cum = int(ticks * us_per_tick)
        else:
            continue
        if type(rss_pages) in numt:
            append((t, cum, int(rss_pages * kb_per_page)))
        else:
            append((t, cum, int(cg_kb) if type(cg_kb) in numt else None))
    return out


_FORK_JOBS: list | None = None  # the jobs of _cut_parallel, inherited by forked workers


def _cut_forked_job(k: int) -> tuple[ParseResult, dict]:
    """``_cut_one_node`` of job ``k`` in a forked worker (the job list came with the fork, not through a pipe)."""
    assert _FORK_JOBS is not None
    return _cut_one_node(*_FORK_JOBS[k])


def _cut_one_node(run_dir: Path, out_dir: Path, node: NodeInfo, tasks: list[Task], bin_ms: int, t0: int,
                  nbins: int, threads: int, scratch_path: Path, progress: bool = False) -> tuple[ParseResult, dict]:
    """Pass 1 for one node (a separate process when nodes run in parallel): rows into its own scratch file."""
    samples = run_dir / node.node_id / "samples.jsonl"
    with open(scratch_path, "wb") as scratch, no_cyclic_gc():
        fallback = None
        if samples.exists() and COLUMNAR:
            from tracekit.trace import columnar

            if columnar.available():
                p, util, index = _node_parser(run_dir, out_dir, node, bin_ms, t0, nbins, progress)
                try:
                    with open(scratch_path.with_suffix(".cols"), "wb") as cols:
                        columnar.cut_node(p, node, tasks, samples, scratch, cols, index, util, threads)
                    return p.r, index
                except columnar.Unsupported as why:  # the reference reads it (and reports its bad lines)
                    fallback = f"{samples}: streaming reader used ({why})"
                scratch.seek(0)
                scratch.truncate()
                for t in tasks:
                    t.reset()
        p, util, index = _node_parser(run_dir, out_dir, node, bin_ms, t0, nbins, progress)
        p._cut_node(node, tasks, scratch, index, util)
        if fallback:
            p.r.reader_notes.append(fallback)
    return p.r, index


def _node_parser(run_dir: Path, out_dir: Path, node: NodeInfo, bin_ms: int, t0: int, nbins: int,
                 progress: bool) -> tuple[_Parser, list[float], dict]:
    """A fresh parser for one node's cut: its result, utilisation bins and block index."""
    p = _Parser(run_dir, out_dir, progress)
    p.r.util_bin_ms, p.r.util_t0 = bin_ms, t0
    return p, p.r.util.setdefault(node.node_id, [0.0] * nbins), {}


def _assemble(invocations: list[dict], index: dict[tuple, Block], final_tmp: Path,
              meanwhile=None) -> list[list] | None:
    """Pass 2: put each task's block of rows in its place in the final file, in the invocation order.

    Every block's place is known from the block lengths. Text blocks are copied by the kernel
    (``os.copy_file_range``, which releases the GIL; ``pread``/``pwrite`` where it cannot) in contiguous ranges by
    one thread per core; binary row blocks are formatted and written in place by one process per scratch file.
    When every block is binary they also fill the row cache (``columnar.ROWS_CACHE``) next to the final file,
    and the cache's block list is returned (else None). ``meanwhile`` (optional) runs here while they work.
    """
    text: list[tuple[Path, int, int, int]] = []  # (scratch file, offset there, length, offset in the final file)
    rows: dict[Path, list] = {}  # columnar scratch file -> (first row, rows, length, final offset, inv, final row)
    cached: list[list] = []
    size = nrows = 0
    for inv in invocations:
        blk = index.get(task_key(inv["node_id"], inv["trace_id"], inv["attempt"]))
        if blk is None or blk.nbytes <= 0:
            continue
        if blk.rows < 0:
            text.append((blk.path, blk.offset, blk.nbytes, size))
        else:
            rows.setdefault(blk.path, []).append((blk.offset, blk.rows, blk.nbytes, size, inv, nrows))
            cached.append([inv["node_id"], inv["trace_id"], inv["attempt"], nrows, blk.rows])
            nrows += blk.rows
        size += blk.nbytes
    with open(final_tmp, "wb") as fh:
        fh.truncate(size)
    cache = None
    if rows and not text:
        from tracekit.trace import columnar

        path = final_tmp.with_name(columnar.ROWS_CACHE + ".tmp")
        cache = (path, columnar.create_rows_cache(path, nrows))
    jobs = [(path, blocks, final_tmp, cache) for path, blocks in rows.items()]
    workers = min(len(jobs), os.cpu_count() or 1)
    pool = _fork_pool(workers) if workers > 1 else None
    global _ASSEMBLE_JOBS
    _ASSEMBLE_JOBS = jobs  # set before the first submit forks the workers
    with pool or contextlib.nullcontext():
        try:
            futs = [pool.submit(_write_rows_job, k) for k in range(len(jobs))] if pool else []
            if meanwhile:
                meanwhile()
            _copy_text(text, size, final_tmp)
            if not pool:
                for k in range(len(jobs)):
                    _write_rows_job(k)
            for f in futs:
                f.result()
        except BrokenProcessPool:
            raise UserError("a parse worker process died (out of memory?): re-run, or free memory") from None
        finally:
            _ASSEMBLE_JOBS = None
    return cached if cache else None


_ASSEMBLE_JOBS: list | None = None  # the pass-2 jobs of _assemble, inherited by forked workers


def _write_rows_job(k: int) -> None:
    from tracekit.trace import columnar

    assert _ASSEMBLE_JOBS is not None
    columnar.write_rows(*_ASSEMBLE_JOBS[k])


def _fork_pool(workers: int):
    """A process pool whose workers are forked (they inherit the jobs), or None where that is not possible."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    try:
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
    except (OSError, NotImplementedError, ImportError):
        return None


def _copy_text(plan: list[tuple[Path, int, int, int]], size: int, final_tmp: Path) -> None:
    """Copy text blocks ``(src, src offset, length, dst offset)`` into the final file, one thread per range."""
    parts = min(os.cpu_count() or 1, 4) if size > 64 << 20 else 1
    starts = [b[3] for b in plan]
    bounds = [0] + [bisect.bisect_left(starts, size * k // parts) for k in range(1, parts)] + [len(plan)]
    ranges = [plan[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
    if len(ranges) <= 1:
        for r in ranges:
            _copy_range(r, final_tmp)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(ranges)) as pool:
        for f in [pool.submit(_copy_range, r, final_tmp) for r in ranges]:
            f.result()


def _copy_range(blocks: list[tuple[Path, int, int, int]], final_tmp: Path) -> None:
    """Copy blocks ``(src, src offset, length, dst offset)`` into the (pre-sized) final file."""
    files: dict[Path, int] = {}
    kernel_copy = hasattr(os, "copy_file_range")
    out = os.open(final_tmp, os.O_WRONLY)
    try:
        for path, off, left, dst in blocks:
            src = files.get(path)
            if src is None:
                src = files[path] = os.open(path, os.O_RDONLY)
            while left > 0 and kernel_copy:
                try:
                    n = os.copy_file_range(src, out, left, off, dst)
                except OSError:
                    n = 0
                if n <= 0:
                    kernel_copy = False  # not supported here (or nothing copied): plain reads from now on
                    break
                off, dst, left = off + n, dst + n, left - n
            while left > 0:
                data = os.pread(src, min(left, 1 << 24), off)
                if not data:
                    raise UserError(f"scratch file {path} is shorter than expected (disk full?)")
                n = os.pwrite(out, data, dst)
                off, dst, left = off + n, dst + n, left - n
    finally:
        os.close(out)
        for fd in files.values():
            os.close(fd)


def _write_small_files(r: ParseResult, out: Path) -> None:
    """invocations.jsonl and nodes.json (final once the invocations are merged and sorted)."""
    _atomic_write(out / INVOCATIONS, "".join(dumps(inv) + "\n" for inv in r.invocations))
    _atomic_write(out / NODES, json.dumps([n.row() for n in r.nodes], indent=1, ensure_ascii=False) + "\n")


def _atomic_write(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


ENGINES = ("python", "duckdb")


def check_engine(engine: str) -> str:
    """``python``: the columnar reader with the streaming one as reference and fallback (default); ``duckdb``: an
    independent SQL implementation of the same cut that writes byte-identical files (a cross-check; on 2 cores it
    is slower and uses more memory)."""
    if engine not in ENGINES:
        raise UserError(f"unknown parse engine {engine!r} (use {', '.join(ENGINES)})")
    if engine == "duckdb":
        from tracekit.trace import cts_sql

        if not cts_sql.available():
            raise UserError("--engine duckdb needs the duckdb package: pip install -r requirements.txt")
    return engine


def parse_run(run_dir: str | Path, out_dir: str | Path | None = None, progress: bool = False,
              engine: str = "python") -> ParseResult:
    """Parse (and merge) every node of ``run_dir`` into CTS files under ``out_dir`` (default ``run_dir/CTS``).

    ``engine``: ``python`` cuts with ``columnar`` or the streaming reader (nodes in parallel processes);
    ``duckdb`` does the same cut in SQL (``cts_sql``); both write identical files (see ``check_engine``).
    """
    with no_cyclic_gc():
        return _parse_run(Path(run_dir), Path(out_dir) if out_dir else Path(run_dir) / "CTS", progress, engine)


def _parse_run(run_dir: Path, out: Path, progress: bool, engine: str) -> ParseResult:
    node_ids = discover_nodes(run_dir)
    if not node_ids:
        raise UserError(f"{run_dir}: no node folders with raw logs (events.jsonl, samples.jsonl, node.json)")
    p = _Parser(run_dir, out, progress)
    p.r.nodes = [load_node(run_dir, n, p.r.bad) for n in node_ids]
    engine = check_engine(engine)
    p.load_events()

    def finish_invocations() -> None:
        p.load_controller()
        p.r.invocations.sort(key=invocation_order_key)

    if engine == "duckdb":
        finish_invocations()
    out.mkdir(parents=True, exist_ok=True)
    from tracekit.trace import columnar

    columnar.drop_rows_cache(out)  # a re-parse never leaves the previous run's cache behind
    cached = None
    scratch_dir = out / ".parse-scratch"
    shutil.rmtree(scratch_dir, ignore_errors=True)
    scratch_dir.mkdir()
    final_tmp = out / (PROC_METRICS + ".tmp")
    try:
        if engine == "duckdb":
            from tracekit.trace import cts_sql

            cts_sql.cut_all(p, scratch_dir, final_tmp)
        else:  # the controller's files are read while the node workers cut (the cut does not need them)
            index = p.cut_samples(scratch_dir, meanwhile=finish_invocations)
            cached = _assemble(p.r.invocations, index, final_tmp, meanwhile=lambda: _write_small_files(p.r, out))
        os.replace(final_tmp, out / PROC_METRICS)
    finally:
        shutil.rmtree(scratch_dir, ignore_errors=True)
        final_tmp.unlink(missing_ok=True)
    if engine == "duckdb":
        _write_small_files(p.r, out)
    if cached is not None:  # the row cache mirrors these two files exactly: the export may read it instead
        os.replace(out / (columnar.ROWS_CACHE + ".tmp"), out / columnar.ROWS_CACHE)
        columnar.write_rows_cache_meta(out, cached, [out / PROC_METRICS, out / INVOCATIONS])
    return p.r
