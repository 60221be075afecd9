"""Pass 1 of the CTS cut for one node, streaming: orjson line by line, each task cut into rows when it ends.

The reference reader: it reads every file exactly, malformed lines included (reported with ``file:line``). The
columnar reader (``columnar``) is faster for well-formed files and hands this one what it cannot place
(``NodeCut.match``, ``NodeCut.flush``, ``NodeCut.add_utilisation``); the parse (``cts``) falls back to this whole
reader for any file the columnar one cannot read exactly. Processes are keyed by (node_id, pid, starttime); node
timestamps get the node's clock offset; CPU ticks and pages are converted with the collecting host's CLK_TCK and
page size.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from tracekit.core.jsonl import BadLines
from tracekit.trace.intervals import cut_rows
from tracekit.trace.model import Block, MatchedProcess, NodeInfo, ParseResult, Task
from tracekit.trace.vocabulary import (
    BAD_ENTRY,
    CG_CPU_US,
    CG_MEM_KB,
    COMM,
    CONTAINER_ID,
    CPU_SLOT,
    CPU_TICKS,
    MAX_VALUES,
    MIN_VALUES,
    NUMBER_TYPES,
    PID,
    RSS_PAGES,
    STARTTIME,
    TRACE_ID,
    WINDOW_SLACK_MS,
    format_row,
    read_tick,
    row_template,
    task_key,
)


def processes(tasks: list[Task]) -> dict[tuple, list[Task]]:
    """The node's tasks by process ``(pid, starttime)`` (starttime None for exec events without one)."""
    by_proc: dict[tuple, list[Task]] = {}
    for t in tasks:
        by_proc.setdefault((t.inv["pid"], t.inv["starttime"]), []).append(t)
    return by_proc


def read_ticks(path: Path, bad: BadLines, progress: bool = False) -> Iterator[tuple[int, dict]]:
    """``(line number, tick)`` of a samples file; lines that are no tick (``read_tick``) go to ``bad`` with
    ``file:line``; a byte-based progress bar when ``progress``."""
    from tqdm import tqdm

    size = path.stat().st_size
    with open(path, "rb") as fh, tqdm(total=size, unit="B", unit_scale=True, desc=f"parse {path.parent.name}",
                                      disable=not progress, mininterval=0.5, leave=False) as bar:
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


def convert(raw: list[tuple[float, list]], use_cg: bool, us_per_tick: float,
            kb_per_page: float) -> list[tuple[float, int, int | None]]:
    """Raw proc entries -> ``(t, cumulative CPU µs, RSS KB or None)``; entries without a CPU counter are dropped.

    CPU: the cgroup's µs counter when the task ran in its own cgroup and the entry has it, else ticks x µs/tick;
    RSS: pages x KB/page, else the cgroup's memory, else None. Values must be JSON numbers (bool is not one).
    """
    numt = NUMBER_TYPES
    i_ticks, i_rss, i_cg_us, i_cg_kb = CPU_TICKS, RSS_PAGES, CG_CPU_US, CG_MEM_KB  # locals: read once per sample
    out = []
    append = out.append
    for t, p in raw:
        ticks, rss_pages, cg_us, cg_kb = p[i_ticks], p[i_rss], p[i_cg_us], p[i_cg_kb]
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


def _count_late(task: Task) -> Callable[[tuple[float, list]], None]:
    """The fast-path sink of a task already cut: it only counts the sample."""
    def sink(_sample: tuple[float, list]) -> None:
        task.late += 1
    return sink


class NodeCut:
    """One node's pass 1: its own ``result`` (merged into the run's later), its utilisation bins ``util`` and
    ``index`` (task_key -> the ``Block`` of the task's rows)."""

    def __init__(self, run_dir: Path, out_dir: Path, node: NodeInfo, bin_ms: int, t0: int, nbins: int,
                 progress: bool = False) -> None:
        self.result = ParseResult(run_dir=run_dir, out_dir=out_dir)
        self.result.util_bin_ms, self.result.util_t0 = bin_ms, t0
        self.util: list[float] = self.result.util.setdefault(node.node_id, [0.0] * nbins)
        self.node = node
        self.progress = progress
        self.index: dict[tuple, Block] = {}

    # ---- the whole file, streaming ----
    def cut_file(self, tasks: list[Task], scratch: BinaryIO) -> None:
        """Stream the node's samples file; each sample goes to its task's buffer, cut when the task ends.

        Hot path (once per sample): a sample whose ``(pid, starttime)`` names exactly one task is appended to that
        task's buffer as it is (validation and unit conversion happen per task in ``flush``); the rest (no task,
        several tasks, exec events without starttime) take ``match``.
        """
        r = self.result
        node = self.node
        path = r.run_dir / node.node_id / "samples.jsonl"
        by_proc = processes(tasks)
        fast = {k: c[0].raw.append for k, c in by_proc.items() if len(c) == 1}
        heap = [(t.end, i) for i, t in enumerate(tasks)]
        heapq.heapify(heap)
        off = node.offset_ms
        last_t = float("-inf")
        nonmono = 0
        lo, hi = MIN_VALUES, MAX_VALUES
        pid_at, st_at = PID, STARTTIME
        nsamples = nticks = 0
        next_end = heap[0][0] if heap else float("inf")
        if not path.exists():
            r.missing_samples_file.append(node.node_id)
        else:
            bad = r.bad
            fast_get = fast.get
            heappop = heapq.heappop
            for lineno, tick in read_ticks(path, r.bad, self.progress):
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
                        self.flush(task, scratch)
                        k = (task.inv["pid"], task.inv["starttime"])
                        if k in fast:
                            fast[k] = _count_late(task)
                    next_end = heap[0][0] if heap else float("inf")
                nsamples += len(procs)
                for p in procs:
                    if type(p) is not list or len(p) != hi:
                        if type(p) is list and lo <= len(p) < hi:
                            p = p + [None] * (hi - len(p))  # raw logs from before an optional column was added
                        else:
                            nsamples -= 1
                            bad.add(f"{path}:{lineno}", BAD_ENTRY)
                            continue
                    sink = fast_get((p[pid_at], p[st_at]))
                    if sink is not None:
                        sink((t_ctrl, p))
                    else:
                        self.match(by_proc, p, t_ctrl, path, lineno)
        r.samples_read += nsamples
        r.ticks_read += nticks
        while heap:
            self.flush(tasks[heapq.heappop(heap)[1]], scratch)
        for t in tasks:
            if t.late:  # samples after the task's end: only the audit's "after ts_end" count sees them
                t.stats.samples_after += t.late
        r.non_monotonic_ticks[node.node_id] = nonmono

    # ---- what the columnar reader hands over too ----
    def match(self, by_proc: dict[tuple, list[Task]], entry: list, t_ctrl: float, path: Path, lineno: int) -> None:
        """A sample ``entry`` (a full ``procs`` entry) at ``t_ctrl`` the fast path could not place: to a task by pid
        and run window, else counted as an orphan or untracked."""
        r = self.result
        pid, st, tid = entry[PID], entry[STARTTIME], entry[TRACE_ID]
        cands = by_proc.get((pid, st))
        if not cands and (pid, None) in by_proc:  # exec events without starttime: by pid and run window
            cands = [c for c in by_proc[(pid, None)]
                     if c.window.b_start - WINDOW_SLACK_MS <= t_ctrl <= c.window.b_end + WINDOW_SLACK_MS]
        if not cands:
            if tid is None:
                r.untracked_samples += 1  # matched by name (PROC_MATCH), not a traced task: a matched process
                self.add_matched(entry, t_ctrl)
                return
            r.orphan_samples += 1
            r.orphan_by_trace[tid] = r.orphan_by_trace.get(tid, 0) + 1
            if len(r.orphan_examples) < 10:
                r.orphan_examples.append(f"{path}:{lineno}: pid {pid} starttime {st} trace_id {tid}")
            return
        task = cands[0]
        if len(cands) > 1:  # same (pid, starttime) twice on one node (reboot): pick by time window
            task = next((c for c in cands if c.window.b_start - WINDOW_SLACK_MS <= t_ctrl
                         <= c.window.b_end + WINDOW_SLACK_MS), cands[0])
        if task.done or t_ctrl >= task.end:  # (the same: a task is cut at the first tick at or after its end)
            task.late += 1
        else:
            task.raw.append((t_ctrl, entry))

    def add_matched(self, entry: list, t_ctrl: float) -> None:
        """A sample of a process matched by name that no adapter launched: into its ``processes.jsonl`` summary."""
        pid, st = entry[PID], entry[STARTTIME]
        key = (self.node.node_id, pid, st)
        m = self.result.matched.get(key)
        if m is None:
            m = self.result.matched[key] = MatchedProcess(self.node.node_id, pid, st, t_ctrl, t_ctrl, None, None)
        ticks, pages = entry[CPU_TICKS], entry[RSS_PAGES]
        comm, cid = entry[COMM], entry[CONTAINER_ID]
        m.add(t_ctrl, int(ticks * self.node.us_per_tick) if type(ticks) in NUMBER_TYPES else None,
              int(pages * self.node.kb_per_page) if type(pages) in NUMBER_TYPES else None,
              comm if type(comm) is str else None, cid if type(cid) is str else None)

    def flush(self, task: Task, scratch: BinaryIO) -> None:
        """The task ended: cut its buffered raw samples into rows (``intervals.cut_rows``) and write its text
        block at the end of ``scratch``."""
        r = self.result
        w = task.window
        raw = task.raw
        task.raw = []
        task.done = True
        if not task.template:
            task.template = row_template(task.inv, CPU_SLOT)
        task.samples += len(raw)
        rows, st = cut_rows(w.b_start, w.b_end, w.total_us,
                            convert(raw, task.use_cg, self.node.us_per_tick, self.node.kb_per_page),
                            w.rss_fallback_kb)
        for ts, dt, cpu, _rss in rows:
            self.add_utilisation(ts, dt, cpu)
        data = "".join(format_row(task.template, ts, dt, cpu, rss) for ts, dt, cpu, rss in rows).encode()
        mismatch = sum(1 for _, p in raw if p[TRACE_ID] != task.trace_id)
        cpu_sum = sum(row[2] for row in rows)
        task.trace_mismatch += mismatch
        task.stats = st
        key = task_key(task.inv["node_id"], task.inv["trace_id"], task.inv["attempt"])
        self.index[key] = Block(Path(scratch.name), scratch.tell(), len(data))
        scratch.write(data)
        r.stats[key] = st
        r.task_samples[key] = task.samples
        r.rows_per_task[key] = st.rows
        r.exact_us[key] = w.total_us
        r.cpu_rows_us[key] = cpu_sum
        r.cpu_source[key] = "cgroup" if task.use_cg else "ticks"
        r.trace_mismatch += task.trace_mismatch
        r.rows_written += st.rows

    def add_utilisation(self, ts_ms: int, dt_ms: int, cpu_us: int) -> None:
        """Spread a row's CPU over the utilisation bins it overlaps, in proportion to the overlap."""
        util = self.util
        w, t0 = self.result.util_bin_ms, self.result.util_t0
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
