"""Pure interval arithmetic: the cutter behind every CTS row, lanes, and the capacity sweep."""

from __future__ import annotations

import random

import numpy as np
import pytest

from oracles.task_intervals import TaskIntervals, cut_task
from tracekit.trace.intervals import TaskWindow, assign_lanes, cut_rows, cut_rows_columnar, max_overlap, round_ms


def _contiguous(rows, start: int, end: int) -> None:
    assert rows[0].ts_ms - rows[0].dt_ms == start
    assert rows[-1].ts_ms == end
    for a, b in zip(rows, rows[1:]):
        assert b.ts_ms - b.dt_ms == a.ts_ms, "no gap, no overlap"
    assert all(r.dt_ms > 0 for r in rows)


def test_rows_cover_run_and_add_up_to_exact_total():
    # start 1000.4 -> 1000, end 2000.6 -> 2001; samples every 200 ms with tick-quantised cumulative CPU
    samples = [(1000.4 + 200 * k, 150_000 * k, 1000 + k) for k in range(1, 5)]
    rows, st = cut_task(1000.4, 2000.6, 777_777, samples, rss_fallback_kb=5)
    _contiguous(rows, 1000, 2001)
    assert [r.ts_ms for r in rows] == [1200, 1400, 1600, 1800, 2001]
    assert sum(r.cpu_us for r in rows) == 777_777
    assert rows[-1].cpu_us == 777_777 - 600_000, "the tail comes from the exact total"
    assert rows[-1].rss_kb == 1004, "the tail keeps the last RSS seen"
    assert st.samples_used == 4 and st.last_sampled_us == 600_000 and st.over_us == 0


def test_task_without_samples_gets_one_row_with_the_total():
    rows, st = cut_task(5000.0, 5300.2, 1234, [], rss_fallback_kb=42)
    assert len(rows) == 1
    assert (rows[0].ts_ms, rows[0].dt_ms, rows[0].cpu_us, rows[0].rss_kb) == (5300, 300, 1234, 42)
    assert st.samples_used == 0


def test_oversampled_cpu_is_capped_and_reported():
    rows, st = cut_task(0.0, 1000.0, 100_000, [(400.0, 80_000, None), (800.0, 130_000, None)])
    assert sum(r.cpu_us for r in rows) == 100_000
    assert all(r.cpu_us >= 0 for r in rows)
    assert st.over_us == 30_000


def test_decreasing_counter_is_clamped_not_negative():
    rows, st = cut_task(0.0, 1000.0, 100_000, [(300.0, 50_000, 1), (600.0, 40_000, 2)])
    assert [r.cpu_us for r in rows] == [50_000, 0, 50_000]
    assert st.non_monotonic == 1


def test_samples_outside_the_run_or_in_the_same_ms_are_ignored():
    samples = [(99.0, 0, 1), (100.2, 10, 1), (300.1, 20_000, 1), (300.3, 21_000, 1), (400.0, 30_000, 1),
               (401.0, 99_000, 1)]
    rows, st = cut_task(100.0, 400.2, 50_000, samples)
    _contiguous(rows, 100, 400)
    assert [r.ts_ms for r in rows] == [300, 400]
    assert st.samples_before == 2 and st.samples_merged == 1 and st.samples_after == 2


def test_zero_length_run_still_covers_one_ms():
    rows, _ = cut_task(10.2, 10.3, 5, [])
    assert (rows[0].ts_ms, rows[0].dt_ms) == (11, 1)


@pytest.mark.parametrize("seed", range(20))
def test_random_tasks_keep_invariants(seed):
    rng = random.Random(seed)
    start = rng.uniform(1e12, 1e12 + 1e6)
    end = start + rng.uniform(0.1, 20_000)
    total = rng.randint(0, 50_000_000)
    t, cum, samples = start - 50, 0, []
    while t < end + 300:
        t += rng.uniform(0.2, 400)
        cum += rng.randint(-1000, 600_000)
        samples.append((t, max(cum, 0), rng.randint(1, 10**6)))
    cutter = TaskIntervals(start, end, total)
    rows = [r for s in samples if (r := cutter.add(*s)) is not None] + [cutter.finish()]
    _contiguous(rows, round_ms(start), max(round_ms(end), round_ms(start) + 1))
    assert sum(r.cpu_us for r in rows) == total
    assert all(r.cpu_us >= 0 for r in rows)


def test_assign_lanes_never_overlaps_and_uses_the_fewest_lanes():
    spans = [(0, 10), (5, 15), (10, 20), (12, 13), (20, 30), (0, 30)]
    lanes = assign_lanes(spans)
    for i, a in enumerate(spans):
        for j, b in enumerate(spans):
            if i < j and lanes[i] == lanes[j]:
                assert a[1] <= b[0] or b[1] <= a[0]
    # greedy by start is optimal for intervals: lanes = the largest number alive at one instant (4 at t=12)
    assert max(lanes) + 1 == max_overlap([(s, e, 1) for s, e in spans])[0] == 4


@pytest.mark.parametrize("seed", range(3))
def test_assign_lanes_equals_the_first_free_lane_rule(seed):
    """The heap-based lanes equal the plain rule (each span, by start, takes the first lane free at its start)."""
    rng = random.Random(seed)
    spans = [(s, s + rng.choice([0, 1, rng.randint(0, 50)])) for s in (rng.randint(0, 200) for _ in range(400))]
    order = sorted(range(len(spans)), key=lambda i: (spans[i][0], spans[i][1], i))
    lane_end: list[int] = []
    want = [0] * len(spans)
    for i in order:
        s, e = spans[i]
        k = next((k for k, le in enumerate(lane_end) if le <= s), len(lane_end))
        lane_end[k:k + 1] = [e]
        want[i] = k
    assert assign_lanes(spans) == want


def test_max_overlap_half_open_and_weighted():
    assert max_overlap([(0, 10, 2), (10, 20, 2)]) == (2, 0)
    assert max_overlap([(0, 10, 2), (5, 20, 3), (6, 7, 1)]) == (6, 6)
    assert max_overlap([]) == (0, None)


@pytest.mark.parametrize("seed", range(10))
def test_batch_cutter_equals_incremental_cutter(seed):
    """cut_rows (the parser's hot path) gives exactly the rows and stats of TaskIntervals (the reference)."""
    rng = random.Random(100 + seed)
    start = rng.uniform(1e12, 1e12 + 1e6)
    end = start + rng.uniform(0.1, 5_000)
    samples, t, cum = [], start - 30, 0
    while t < end + 100:
        t += rng.choice([0.2, 0.4, 50.0, 100.0, 200.0])
        cum += rng.randint(-2000, 300_000)
        samples.append((t, max(cum, 0), rng.choice([None, rng.randint(1, 9999)])))
    total = rng.randint(0, 3_000_000)
    ref = TaskIntervals(start, end, total, 77)
    expected = [r for s in samples if (r := ref.add(*s)) is not None] + [ref.finish()]
    rows, st = cut_rows(ref.b_start, ref.b_end, ref.total_us, samples, 77)
    assert rows == [(r.ts_ms, r.dt_ms, r.cpu_us, r.rss_kb) for r in expected]
    assert st == ref.stats


@pytest.mark.parametrize("seed", range(4))
def test_columnar_cutter_equals_batch_cutter(seed):
    """The parser's columnar fast path must give the reference rows and stats for every task, edge cases included
    (samples before/after the run, several in one ms, counters going down or beyond the total, missing CPU or RSS,
    tasks without samples or without an RSS fallback)."""
    rng = random.Random(seed)
    for _ in range(150):
        tasks = []
        for _ in range(rng.randint(1, 6)):
            start = rng.uniform(0, 1000)
            cutter = TaskIntervals(start, start + rng.choice([0.2, 1, rng.uniform(0, 3000)]),
                                   rng.choice([0, rng.randint(0, 10**6)]), rng.choice([None, rng.randint(0, 5000)]))
            t, samples = start - rng.uniform(0, 300), []
            for _ in range(rng.randint(0, 30)):
                t += rng.choice([0, 0.3, 1, rng.uniform(0, 400)])
                samples.append((t, rng.choice([None, rng.randint(-100, 2 * 10**6)]),
                                rng.choice([None, rng.randint(0, 9999)])))
            tasks.append((cutter, samples))
        flat = [(j, s) for j, (_, ss) in enumerate(tasks) for s in ss]

        def col(f, dtype=np.int64, rows=flat):
            return np.array([f(x) for x in rows], dtype=dtype)

        def per_task(f, dtype=np.int64, ts=tasks):
            return np.array([f(c) for c, _ in ts], dtype=dtype)

        got = cut_rows_columnar(
            col(lambda x: x[0]), col(lambda x: x[1][0], float), col(lambda x: x[1][1] or 0),
            col(lambda x: x[1][1] is not None, bool), col(lambda x: x[1][2] or 0),
            col(lambda x: x[1][2] is not None, bool), per_task(lambda c: c.b_start), per_task(lambda c: c.b_end),
            per_task(lambda c: c.total_us), per_task(lambda c: c.rss_fallback_kb or 0),
            per_task(lambda c: c.rss_fallback_kb is not None, bool))
        for j, (c, samples) in enumerate(tasks):
            rows, st = cut_rows(c.b_start, c.b_end, c.total_us, [s for s in samples if s[1] is not None],
                                c.rss_fallback_kb)
            a, b = got.first_row[j], got.first_row[j + 1]
            assert (got.task[a:b] == j).all()
            assert [(int(got.ts_ms[i]), int(got.dt_ms[i]), int(got.cpu_us[i]),
                     None if got.rss_null[i] else int(got.rss_kb[i])) for i in range(a, b)] == rows
            assert got.task_stats()[j] == st


@pytest.mark.parametrize("seed", range(3))
def test_task_window_equals_the_incremental_cutter_bounds(seed):
    """The product's run window (what both readers cut against) is the oracle's: rounded bounds, >= 1 ms, total."""
    rng = random.Random(seed)
    for _ in range(500):
        start = rng.uniform(-1e3, 1e12)
        end = start + rng.choice([0.0, 0.2, 0.5, 1.0, rng.uniform(-5, 5), rng.uniform(0, 1e6)])
        total, fb = rng.randint(-10, 10**7), rng.choice([None, rng.randint(0, 99)])
        ref = TaskIntervals(start, end, total, fb)
        assert TaskWindow.of(start, end, total, fb) == TaskWindow(ref.b_start, ref.b_end, ref.total_us, fb)
