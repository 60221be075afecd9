"""Interval arithmetic for traces (pure: no I/O).

* ``TaskIntervals`` turns the cumulative CPU samples of one task into contiguous CTS intervals that start at
  ``ts_start``, end at ``ts_end`` (the tail up to exit comes from the exact total) and never overlap. Boundaries
  are rounded once to integer ms, so neighbouring rows share them exactly; CPU is kept in integer µs so the rows
  add up to the exact total to the µs.
* ``assign_lanes`` packs intervals into the fewest lanes (Gantt rows, timeline threads).
* ``max_overlap`` is the sweep line behind the capacity check.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

_floor = math.floor


def round_ms(x: float) -> int:
    """Round half up to an integer ms (the same rule for every boundary, so shared boundaries stay equal)."""
    return math.floor(x + 0.5)


@dataclass
class Row:
    """One CTS interval ``(ts_ms - dt_ms, ts_ms]`` with its CPU (µs) and RSS at its end (KB, or None)."""

    ts_ms: int
    dt_ms: int
    cpu_us: int
    rss_kb: int | None


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


@dataclass
class TaskIntervals:
    """Incremental cutter for one task: feed samples in time order with ``add``, then call ``finish``.

    ``start``/``end`` are float ms in the controller time base; ``total_us`` is the exact CPU total at exit.
    ``rss_fallback_kb`` is used for rows that end before any RSS was seen (e.g. a task without samples).
    """

    start: float
    end: float
    total_us: int
    rss_fallback_kb: int | None = None
    stats: TaskStats = field(default_factory=TaskStats)

    def __post_init__(self) -> None:
        self.b_start = round_ms(self.start)
        # A run always covers at least 1 ms so every task has a fragment of non-zero duration.
        self.b_end = max(round_ms(self.end), self.b_start + 1)
        self._b_prev = self.b_start
        self._cum_prev = 0
        self._rss_last = self.rss_fallback_kb
        self.total_us = max(0, int(self.total_us))
        self.done = False

    def add(self, t: float, cum_us: int, rss_kb: int | None) -> Row | None:
        """One sample at ``t`` (controller ms) with cumulative CPU ``cum_us``; returns the row it closes, if any."""
        st = self.stats
        b = _floor(t + 0.5)  # round_ms, inlined: this runs once per sample
        if b <= self.b_start:
            st.samples_before += 1
            return None
        if b >= self.b_end:
            st.samples_after += 1
            return None
        if b <= self._b_prev:
            st.samples_merged += 1
            return None
        if cum_us < self._cum_prev:
            st.non_monotonic += 1
            cum_us = self._cum_prev
        if cum_us > self.total_us:
            st.over_us = max(st.over_us, cum_us - self.total_us)
            cum_us = self.total_us
        if rss_kb is not None:
            self._rss_last = rss_kb
        row = Row(b, b - self._b_prev, cum_us - self._cum_prev, rss_kb if rss_kb is not None else self._rss_last)
        self._b_prev = b
        self._cum_prev = cum_us
        st.samples_used += 1
        st.last_sampled_us = cum_us
        st.rows += 1
        return row

    def finish(self) -> Row:
        """The tail row up to exit: takes whatever the exact total has beyond the last sample."""
        self.done = True
        self.stats.rows += 1
        return Row(self.b_end, self.b_end - self._b_prev, self.total_us - self._cum_prev, self._rss_last)


def cut_rows(b_start: int, b_end: int, total_us: int, samples: Iterable[tuple[float, int, int | None]],
             rss_last: int | None = None) -> tuple[list[tuple[int, int, int, int | None]], TaskStats]:
    """``TaskIntervals`` over a whole list of samples in one tight loop (the parser's hot path; same results).

    ``b_start``/``b_end``/``total_us`` as computed by ``TaskIntervals``; rows are ``(ts_ms, dt_ms, cpu_us, rss_kb)``.
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


def cut_task(start: float, end: float, total_us: int, samples: Iterable[tuple[float, int, int | None]],
             rss_fallback_kb: int | None = None) -> tuple[list[Row], TaskStats]:
    """All rows of one task at once (convenience over ``TaskIntervals`` for tests and small inputs)."""
    cutter = TaskIntervals(start, end, total_us, rss_fallback_kb)
    rows = [r for t, c, m in samples if (r := cutter.add(t, c, m)) is not None]
    rows.append(cutter.finish())
    return rows, cutter.stats


def assign_lanes(spans: Sequence[tuple[float, float]]) -> list[int]:
    """Lane index per span so spans in one lane never overlap (greedy by start: the fewest lanes)."""
    order = sorted(range(len(spans)), key=lambda i: (spans[i][0], spans[i][1], i))
    lane_end: list[float] = []
    lanes = [0] * len(spans)
    for i in order:
        s, e = spans[i]
        for k, le in enumerate(lane_end):
            if le <= s:
                lanes[i] = k
                lane_end[k] = e
                break
        else:
            lanes[i] = len(lane_end)
            lane_end.append(e)
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
