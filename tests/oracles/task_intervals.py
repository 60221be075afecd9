"""Test oracle: the CTS cut written a second way, one sample at a time (``TaskIntervals``).

The product cuts a whole task at once (``tracekit.trace.intervals.cut_rows``, the streaming reader) or many tasks
in arrays (``cut_rows_columnar``, the columnar reader). This incremental writing of the same rule is kept here, out
of the product, so the tests can check those two against an independent implementation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from tracekit.trace.intervals import TaskStats, round_ms

_floor = math.floor


@dataclass
class Row:
    """One CTS interval ``(ts_ms - dt_ms, ts_ms]`` with its CPU (µs) and RSS at its end (KB, or None)."""

    ts_ms: int
    dt_ms: int
    cpu_us: int
    rss_kb: int | None


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


def cut_task(start: float, end: float, total_us: int, samples: Iterable[tuple[float, int, int | None]],
             rss_fallback_kb: int | None = None) -> tuple[list[Row], TaskStats]:
    """All rows of one task at once (convenience over ``TaskIntervals`` for tests and small inputs)."""
    cutter = TaskIntervals(start, end, total_us, rss_fallback_kb)
    rows = [r for t, c, m in samples if (r := cutter.add(t, c, m)) is not None]
    rows.append(cutter.finish())
    return rows, cutter.stats
