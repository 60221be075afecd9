"""Interval arithmetic for traces (pure: no I/O).

* ``cut_rows`` (one task, the streaming reader) and ``cut_rows_columnar`` (many tasks in arrays, the columnar
  reader) turn the cumulative CPU samples of a task into contiguous CTS intervals that start at ``ts_start``, end
  at ``ts_end`` (the tail up to exit comes from the exact total) and never overlap. Boundaries are rounded once to
  integer ms (``TaskWindow``), so neighbouring rows share them exactly; CPU is kept in integer µs so the rows add
  up to the exact total to the µs. (The incremental one-sample-at-a-time writing of the same rule is a test
  oracle, tests/oracles/task_intervals.py.)
* ``assign_lanes`` packs intervals into the fewest lanes (Gantt rows, timeline threads).
* ``max_overlap`` is the sweep line behind the capacity check.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

_floor = math.floor


def round_ms(x: float) -> int:
    """Round half up to an integer ms (the same rule for every boundary, so shared boundaries stay equal)."""
    return math.floor(x + 0.5)


@dataclass
class TaskStats:
    """What happened while cutting one task: the numbers the audit reports."""

    samples_used: int = 0  # samples that became an interval boundary
    samples_before: int = 0  # at or before ts_start (e.g. the pre-exec instant the sentinel allows)
    samples_after: int = 0  # at or after ts_end
    samples_merged: int = 0  # inside the run but in the same ms as the previous boundary
    non_monotonic: int = 0  # cumulative CPU went down (a descendant exited unreaped): clamped
    over_us: int = 0  # largest amount by which sampled cumulative CPU exceeded the exact total (capped)
    last_sampled_us: int = 0  # cumulative CPU at the last used sample (the tail is total - this)
    rows: int = 0


@dataclass(frozen=True)
class TaskWindow:
    """What the cut needs of one task: its run ``(b_start, b_end]`` in integer ms, its exact CPU total (µs) and the
    RSS (KB) for rows before any RSS was seen (None when unknown)."""

    b_start: int
    b_end: int
    total_us: int
    rss_fallback_kb: int | None

    @classmethod
    def of(cls, start: float, end: float, total_us: int, rss_fallback_kb: int | None = None) -> TaskWindow:
        """The window of a run from ``start`` to ``end`` (float ms in the controller time base)."""
        b_start = round_ms(start)
        # A run always covers at least 1 ms so every task has a fragment of non-zero duration.
        return cls(b_start, max(round_ms(end), b_start + 1), max(0, int(total_us)), rss_fallback_kb)


def cut_rows(b_start: int, b_end: int, total_us: int, samples: Iterable[tuple[float, int, int | None]],
             rss_last: int | None = None) -> tuple[list[tuple[int, int, int, int | None]], TaskStats]:
    """One task's rows from its samples ``(t controller ms, cumulative CPU µs, RSS KB or None)`` in time order, in
    one tight loop (the streaming reader's cut).

    ``b_start``/``b_end``/``total_us`` as computed by ``TaskWindow``; rows are ``(ts_ms, dt_ms, cpu_us, rss_kb)``.
    A sample makes a boundary ``b = round_ms(t)`` only when ``b_start < b < b_end`` and it is the task's first in
    that ms; cumulative CPU is clamped to be non-decreasing and at most the total; each row's RSS is the last seen.
    """
    rows: list[tuple[int, int, int, int | None]] = []
    append = rows.append
    floor = _floor
    b_prev, cum_prev = b_start, 0
    before = after = merged = down = used = over = 0
    for t, cum, rss in samples:
        b = floor(t + 0.5)
        if b <= b_start:
            before += 1
            continue
        if b >= b_end:
            after += 1
            continue
        if b <= b_prev:
            merged += 1
            continue
        if cum < cum_prev:
            down += 1
            cum = cum_prev
        if cum > total_us:
            if cum - total_us > over:
                over = cum - total_us
            cum = total_us
        if rss is not None:
            rss_last = rss
        append((b, b - b_prev, cum - cum_prev, rss_last))
        b_prev, cum_prev = b, cum
        used += 1
    append((b_end, b_end - b_prev, total_us - cum_prev, rss_last))
    return rows, TaskStats(samples_used=used, samples_before=before, samples_after=after, samples_merged=merged,
                           non_monotonic=down, over_us=over, last_sampled_us=cum_prev, rows=used + 1)


@dataclass
class ColumnarCut:
    """``cut_rows`` of many tasks at once. Rows are grouped by task (0..n-1) in time order, each task's tail last.

    Row arrays: ``task``, ``ts_ms``, ``dt_ms``, ``cpu_us``, ``rss_kb`` (``rss_null`` where no RSS is known);
    per-task arrays: ``first_row`` (n + 1 boundaries) and the ``TaskStats`` fields.
    """

    task: np.ndarray
    ts_ms: np.ndarray
    dt_ms: np.ndarray
    cpu_us: np.ndarray
    rss_kb: np.ndarray
    rss_null: np.ndarray
    first_row: np.ndarray
    used: np.ndarray
    before: np.ndarray
    after: np.ndarray
    merged: np.ndarray
    down: np.ndarray
    over_us: np.ndarray
    last_us: np.ndarray

    def task_stats(self) -> list[TaskStats]:
        """Every task's ``TaskStats``, in task order."""
        return [TaskStats(*v) for v in zip(self.used.tolist(), self.before.tolist(), self.after.tolist(),
                                           self.merged.tolist(), self.down.tolist(), self.over_us.tolist(),
                                           self.last_us.tolist(), (self.used + 1).tolist())]


_SEGMENT_LIMIT = 1 << 62  # segment id x span must stay inside int64 for the segmented running maxima


def _segmented_cummax(seg: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Running maximum of non-negative ``values`` restarting at each new (sorted) ``seg`` id."""
    if not len(values):
        return values.copy()
    span = int(values.max()) + 1
    if (int(seg.max()) + 1) * span >= _SEGMENT_LIMIT:
        raise OverflowError("values too large for a segmented running maximum")
    base = seg.astype(np.int64) * span
    return np.maximum.accumulate(base + values) - base


def _starts(seg: np.ndarray) -> np.ndarray:
    """True where a new segment begins in a sorted segment-id array."""
    out = np.ones(len(seg), bool)
    out[1:] = seg[1:] != seg[:-1]
    return out


def _shifted(a: np.ndarray, starts: np.ndarray, fill: np.ndarray | int) -> np.ndarray:
    """Each element's predecessor within its segment; ``fill`` (scalar or per start) at segment starts."""
    out = np.empty_like(a)
    out[1:] = a[:-1]
    out[starts] = fill
    return out


def cut_rows_columnar(task: np.ndarray, t_ms: np.ndarray, cum: np.ndarray, has_cum: np.ndarray, rss: np.ndarray,
                      has_rss: np.ndarray, b_start: np.ndarray, b_end: np.ndarray, total_us: np.ndarray,
                      rss_fb: np.ndarray, has_fb: np.ndarray) -> ColumnarCut:
    """``cut_rows`` for n tasks in array form (same rows and stats, without a Python loop per sample).

    Samples: ``task`` (sorted, 0..n-1; each task's samples in time order), ``t_ms`` controller ms, cumulative CPU
    ``cum`` µs where ``has_cum`` (samples without one are ignored, as ``cut_rows`` never sees them) and RSS ``rss`` KB
    where ``has_rss``. Tasks: ``b_start``/``b_end``/``total_us`` as ``TaskWindow`` computes them, RSS fallback
    ``rss_fb`` where ``has_fb``. Raises OverflowError for values beyond int64 arithmetic (callers fall back).
    """
    n = len(b_start)
    ok = np.flatnonzero(has_cum)
    task, t, cum, rss, has_rss = task[ok], t_ms[ok], cum[ok], rss[ok], has_rss[ok]
    b = np.floor(t + 0.5).astype(np.int64)  # round_ms
    bs = b_start[task]
    before = b <= bs
    after = ~before & (b >= b_end[task])
    inwin = np.flatnonzero(~before & ~after)
    w_task, w_rel = task[inwin], b[inwin] - bs[inwin]  # >= 1
    # a boundary is kept when it is later than every earlier in-window boundary of its task (else merged)
    prev = _shifted(_segmented_cummax(w_task, w_rel), _starts(w_task), 0)
    kept = w_rel > prev
    k = inwin[kept]
    kt, kb, v = task[k], b[k], cum[k]
    tot = total_us[kt]
    # clamped cumulative CPU: min(running max of max(0, v), total); min(v, total) first keeps the span small
    c = np.minimum(_segmented_cummax(kt, np.clip(v, 0, tot)), tot)
    first = _starts(kt)
    c_prev = _shifted(c, first, 0)
    b_prev = _shifted(kb, first, b_start[kt[first]])
    down = v < c_prev
    over = np.zeros(n, np.int64)
    big = np.flatnonzero(v > tot)
    np.maximum.at(over, kt[big], v[big] - tot[big])
    # RSS at each kept row: the last one seen in the task so far, else the fallback
    pos = np.arange(len(k))
    seg_first = np.maximum.accumulate(np.where(first, pos, 0))
    last_rss = np.maximum.accumulate(np.where(has_rss[k], pos, -1))
    seen = last_rss >= seg_first
    k_rss = np.where(seen, rss[k][np.maximum(last_rss, 0)], rss_fb[kt])
    k_null = ~seen & ~has_fb[kt]
    used = np.bincount(kt, minlength=n)
    # tails: one per task, after its kept rows
    last = np.cumsum(used) - 1
    has_rows = used > 0
    li = np.where(has_rows, last, 0)
    c_last = np.where(has_rows, c[li] if len(c) else 0, 0)
    b_last = np.where(has_rows, kb[li] if len(kb) else 0, b_start)
    t_rss = np.where(has_rows, k_rss[li] if len(k_rss) else 0, rss_fb)
    t_null = np.where(has_rows, k_null[li] if len(k_null) else False, ~has_fb)
    first_row = np.concatenate(([0], np.cumsum(used + 1)))
    out = np.empty(len(kt) + n, np.int64)
    kpos = first_row[kt] + (pos - seg_first)
    tpos = first_row[1:] - 1
    rows_task, ts, dt, cpu, rss_out = (out.copy() for _ in range(5))
    rss_null = np.empty(len(out), bool)
    for arr, kv, tv in ((rows_task, kt, np.arange(n)), (ts, kb, b_end), (dt, kb - b_prev, b_end - b_last),
                        (cpu, c - c_prev, total_us - c_last), (rss_out, k_rss, t_rss), (rss_null, k_null, t_null)):
        arr[kpos] = kv
        arr[tpos] = tv

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(task[mask], minlength=n)

    return ColumnarCut(task=rows_task, ts_ms=ts, dt_ms=dt, cpu_us=cpu, rss_kb=rss_out, rss_null=rss_null,
                       first_row=first_row, used=used, before=count(before), after=count(after),
                       merged=np.bincount(w_task[~kept], minlength=n), down=np.bincount(kt[down], minlength=n),
                       over_us=over, last_us=c_last)


def assign_lanes(spans: Sequence[tuple[float, float]]) -> list[int]:
    """Lane index per span so spans in one lane never overlap (greedy by start: the fewest lanes).

    Each span, in start order, takes the lowest-numbered lane that is free at its start (ended at or before it), else
    a new lane. Heaps of free and busy lanes make it O(n log n) even with thousands of lanes (a deep queue).
    """
    order = sorted(range(len(spans)), key=lambda i: (spans[i][0], spans[i][1], i))
    busy: list[tuple[float, int]] = []  # (end, lane)
    free: list[int] = []
    lanes = [0] * len(spans)
    count = 0
    for i in order:
        s, e = spans[i]
        while busy and busy[0][0] <= s:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            lane = heapq.heappop(free)
        else:
            lane, count = count, count + 1
        lanes[i] = lane
        heapq.heappush(busy, (e, lane))
    return lanes


def max_overlap(spans: Iterable[tuple[float, float, float]]) -> tuple[float, float | None]:
    """Largest sum of weights of spans ``[start, end)`` alive at one instant, and the first instant it occurs.

    Half-open: a span ending at t and one starting at t do not overlap (release happens before the next start).
    """
    events: list[tuple[float, int, float]] = []
    for s, e, w in spans:
        if e <= s:
            continue
        events.append((s, 1, w))
        events.append((e, 0, -w))  # 0 sorts before 1: ends before starts at the same instant
    events.sort(key=lambda x: (x[0], x[1]))
    cur = best = 0.0
    at: float | None = None
    for t, _kind, w in events:
        cur += w
        if cur > best + 1e-9:
            best, at = cur, t
    return best, at
