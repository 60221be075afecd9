"""The parse's data: a run's nodes (``NodeInfo``), the executed attempts being cut (``Task``), where pass 1 left a
task's rows (``Block``) and everything the parse produced and observed (``ParseResult``, the audit's input)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from tracekit.core import schema
from tracekit.core.errors import BadRunFolder
from tracekit.core.jsonl import BadLines
from tracekit.trace.intervals import TaskStats, TaskWindow
from tracekit.trace.vocabulary import (
    INVOCATIONS,
    NODES,
    NOT_NODE_DIRS,
    PROC_METRICS,
    RAW_NODE_FILES,
    has_run,
    utilisation_bin_ms,
)

# ---- nodes ----


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

    @property
    def us_per_tick(self) -> float:
        """CPU µs per clock tick of the collecting host."""
        return 1_000_000 / self.clk_tck

    @property
    def kb_per_page(self) -> float:
        """KB per memory page of the collecting host."""
        return self.page_size / 1024

    def row(self) -> dict:
        """The node's ``nodes.json`` entry (``schema.NODE_FIELDS``)."""
        m, w = self.meta, self.worker
        vals = {
            "node_id": self.node_id, "stage": m.get("stage"), "cpu_cores": m.get("cpu_cores", w.get("cpu_cores")),
            "mem_mb": m.get("mem_mb", w.get("mem_mb")), "cpu_model": m.get("cpu_model"),
            "cpu_freq_mhz": m.get("cpu_freq_mhz"), "capacity": w.get("capacity"),
            "allocation_ratio": w.get("allocation_ratio"), "parallel": w.get("parallel"),
            "binding": w.get("binding"), "clock_offset_ms": self.offset_ms, "clock_rtt_ms": self.rtt_ms,
            "clk_tck": self.clk_tck, "page_size": self.page_size, "hostname": m.get("hostname"),
            "boot_time_ms": m.get("boot_time_ms"),
        }
        return {k: vals.get(k) for k in schema.NODE_FIELDS}


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
        raise BadRunFolder(f"no such run folder: {run_dir}", path=run_dir)
    found = []
    for d in sorted(run_dir.iterdir()):
        if d.is_dir() and d.name not in NOT_NODE_DIRS and any((d / f).exists() for f in RAW_NODE_FILES):
            found.append(d.name)
    return found


def discover_nodes_quiet(run_dir: Path) -> list[str]:
    """``discover_nodes`` that returns [] instead of raising for a missing folder."""
    return discover_nodes(run_dir) if run_dir.is_dir() else []


# ---- tasks and their rows ----


@dataclass
class Task:
    """One executed attempt being cut into rows."""

    inv: dict
    start: float  # controller ms (node time + the node's clock offset)
    end: float
    use_cg: bool  # CPU from the task cgroup's µs counter (its exec event has one), else from clock ticks
    window: TaskWindow
    template: str  # its proc_metrics line template, made when first needed
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


class Block(NamedTuple):
    """Where pass 1 left one task's proc_metrics lines: ``nbytes`` of text at byte ``offset`` of a text scratch
    file, or, when ``rows`` >= 0, ``rows`` binary rows from row ``offset`` of a columnar scratch file that pass 2
    formats (``columnar.write_rows``) into ``nbytes`` of text."""

    path: Path
    offset: int
    nbytes: int
    rows: int = -1


@dataclass
class MatchedProcess:
    """A process sampled by name (``PROC_MATCH``) that no adapter launched, summed over its samples: one line of
    ``processes.jsonl`` (``schema.MATCHED_PROCESS_FIELDS``)."""

    node_id: str
    pid: int
    starttime: int | None
    t_first: float  # controller ms
    t_last: float
    cum_first_us: int | None  # its cumulative CPU counter at the first / last sample that had one
    cum_last_us: int | None
    samples: int = 0
    max_rss_kb: int | None = None
    comm: str | None = None
    container_id: str | None = None

    def add(self, t: float, cum_us: int | None, rss_kb: int | None, comm, container_id) -> None:
        """One more sample (samples arrive in time order)."""
        self.samples += 1
        self.t_last = t
        if cum_us is not None:
            if self.cum_first_us is None:
                self.cum_first_us = cum_us
            self.cum_last_us = cum_us
        if rss_kb is not None and (self.max_rss_kb is None or rss_kb > self.max_rss_kb):
            self.max_rss_kb = rss_kb
        if comm is not None:
            self.comm = comm
        if container_id is not None:
            self.container_id = container_id

    def row(self) -> dict:
        """The ``processes.jsonl`` line (times rounded to ms, CPU as exact µs in ms)."""
        cpu = None if self.cum_first_us is None else (self.cum_last_us - self.cum_first_us) / 1000
        total = None if self.cum_last_us is None else self.cum_last_us / 1000
        vals = {"node_id": self.node_id, "pid": self.pid, "starttime": self.starttime, "comm": self.comm,
                "container_id": self.container_id, "ts_first": int(self.t_first + 0.5),
                "ts_last": int(self.t_last + 0.5), "samples": self.samples, "cpu_ms": cpu, "cpu_ms_total": total,
                "max_rss_kb": self.max_rss_kb}
        return {k: vals[k] for k in schema.MATCHED_PROCESS_FIELDS}


def matched_order_key(m: MatchedProcess) -> tuple:
    """processes.jsonl order: node, first sample, pid, starttime (deterministic for either reader)."""
    return (m.node_id, m.t_first, m.pid, m.starttime if m.starttime is not None else -1)


# ---- the result ----


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
    # one entry per exec event: node_id, launch_path and the launch stages (schema.LAUNCH_STAGES), controller ms
    launches: list[dict] = field(default_factory=list)
    # matched processes (sampled by name, no exec event): (node_id, pid, starttime) -> MatchedProcess
    matched: dict[tuple, MatchedProcess] = field(default_factory=dict)

    _executed: list[dict] | None = field(default=None, repr=False, compare=False)

    def executed(self) -> list[dict]:
        """The invocations that ran (``has_run``), in invocation order; computed once."""
        if self._executed is None:
            self._executed = [i for i in self.invocations if has_run(i)]
        return self._executed

    def files(self) -> dict[str, Path]:
        return {n: self.out_dir / n for n in (INVOCATIONS, PROC_METRICS, NODES)}

    def set_utilisation_grid(self, tasks: dict[str, list[Task]]) -> int:
        """Fix the CPU-utilisation bins over the executed tasks' runs (``util_bin_ms``, ``util_t0``); returns how
        many bins a node needs."""
        spans = [(t.start, t.end) for node_tasks in tasks.values() for t in node_tasks]
        lo = min((s for s, _ in spans), default=0.0)
        hi = max((e for _, e in spans), default=1.0)
        self.util_bin_ms = utilisation_bin_ms(hi - lo)
        self.util_t0 = int(lo // self.util_bin_ms * self.util_bin_ms)
        return int((hi - self.util_t0) // self.util_bin_ms) + 2

    def merge(self, part: ParseResult) -> None:
        """Add what one node's cut (a separate ``ParseResult``) observed."""
        for name in ("orphan_samples", "untracked_samples", "trace_mismatch", "samples_read", "ticks_read",
                     "rows_written"):
            setattr(self, name, getattr(self, name) + getattr(part, name))
        for name in ("stats", "task_samples", "rows_per_task", "cpu_rows_us", "exact_us", "cpu_source",
                     "non_monotonic_ticks", "util", "matched"):
            getattr(self, name).update(getattr(part, name))
        self.missing_samples_file += part.missing_samples_file
        self.reader_notes += part.reader_notes
        self.orphan_examples = (self.orphan_examples + part.orphan_examples)[:10]
        for tid, c in part.orphan_by_trace.items():
            self.orphan_by_trace[tid] = self.orphan_by_trace.get(tid, 0) + c
        self.bad.count += part.bad.count
        self.bad.examples = (self.bad.examples + part.bad.examples)[: self.bad.keep]
