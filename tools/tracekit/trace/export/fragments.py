"""The OpenDC export's fragment shaping, pure (numpy in, numpy out; no I/O): physical ceilings and the slot.

Units: durations in integer ms, CPU in integer µs (the CTS's exact unit), ceilings in cores (CPU ms per wall ms).

Ceiling (``fit_to_ceiling``). A row may not carry more CPU than the task could physically use in it:
``ceiling x dt x 1000`` µs, where the ceiling is the task's ``cpu_units`` when it was bound exclusively and the
node's cores otherwise (``ceiling_cores``). Sampling puts CPU into the wrong interval now and then (a counter read a
few ms late, the tail from the last sample to exit that takes the residual of the exact total): such excess moves to
the nearest rows that have headroom, nearest first, the earlier one first at equal distance (the residual of a
tail was used before it), filling each to its ceiling. Totals stay exact to the µs. Only when the rows cannot hold
the total at all (the task measured more CPU than its ceiling x its run time) is the rest spread over every row in
proportion to its length (``Fit.over_us`` > 0): such rows stay above the ceiling, and the caller says so.

Slot (``slot_rows``). The real slot is held from placement (``ts_dispatch``) to the release of the capacity, longer
than the application's run: a leading fragment (placement -> ``ts_start``) and a trailing fragment (``ts_end`` ->
release) of exactly the measured lengths, with the task's own CPU during them (0 unless the run rows could not
hold it: then it goes there, within their ceiling, before any row is pushed above its ceiling). A zero-length
lead or trail is left out, so no fragment has duration 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def ceiling_cores(cpu_units: int, node_cores: int | None, binding: str | None,
                  binding_mechanism: str | None) -> float:
    """Cores a task could use at most: its ``cpu_units`` when bound exclusively (never above the node's cores),
    else the node's cores (shared or unbound: it may use all of them); ``cpu_units`` when the cores are unknown."""
    units = max(1, int(cpu_units or 1))
    cores = int(node_cores) if node_cores else None
    if binding == "exclusive" and binding_mechanism != "none":
        return float(min(units, cores) if cores else units)
    return float(cores if cores else units)


def row_caps_us(dt_ms: np.ndarray, cores: float | np.ndarray) -> np.ndarray:
    """Ceiling of every row in µs: floor(cores x dt x 1000)."""
    return np.floor(np.asarray(cores, dtype=np.float64) * np.asarray(dt_ms, dtype=np.float64) * 1000.0 + 1e-6
                    ).astype(np.int64)


@dataclass
class Fit:
    """The CPU of every row after ``fit_to_ceiling``; ``moved_us`` moved to other rows, ``over_us`` left above the
    ceilings (0 unless the total exceeds the sum of the ceilings)."""

    cpu_us: np.ndarray
    moved_us: int = 0
    over_us: int = 0


def _order_by_distance(i: int, n: int) -> list[int]:
    out = []
    for d in range(1, n):
        if i - d >= 0:
            out.append(i - d)
        if i + d < n:
            out.append(i + d)
    return out


def fit_to_ceiling(cpu_us: np.ndarray, caps_us: np.ndarray) -> Fit:
    """Rows' CPU moved under their ceilings, total unchanged (module docstring)."""
    cpu = np.asarray(cpu_us, dtype=np.int64).copy()
    caps = np.asarray(caps_us, dtype=np.int64)
    n = len(cpu)
    over_rows = np.flatnonzero(cpu > caps)
    if not over_rows.size:
        return Fit(cpu)
    excess = cpu - np.minimum(cpu, caps)
    moved = int(excess.sum())
    x = np.minimum(cpu, caps)
    for i in over_rows:
        e = int(excess[i])
        for j in _order_by_distance(int(i), n):
            room = int(caps[j] - x[j])
            if room <= 0:
                continue
            take = min(room, e)
            x[j] += take
            e -= take
            if e == 0:
                break
        excess[i] = e
    left = int(excess.sum())
    if left:  # the total is above every ceiling together: spread the rest by row length (largest remainder)
        moved -= left
        x += _largest_remainder(left, caps + 1)
    return Fit(x, moved, left)


@dataclass
class Slot:
    """One exported task's fragments: ``dt_ms`` (all > 0) and ``cpu_us``, and what the ceiling fit did."""

    dt_ms: np.ndarray
    cpu_us: np.ndarray
    moved_us: int = 0
    over_us: int = 0


@dataclass
class RunFit:
    """A task's run rows' CPU after the ceiling fit, the CPU its lead and trail carry, and what moved."""

    run_cpu_us: np.ndarray
    lead_cpu_us: int = 0
    trail_cpu_us: int = 0
    moved_us: int = 0
    over_us: int = 0


def fit_run(dt_ms: np.ndarray, cpu_us: np.ndarray, cores: float, lead_ms: int = 0, trail_ms: int = 0) -> RunFit:
    """The ceiling fit of one task's run rows, with its lead and trail as the last resort (module docstring)."""
    dt = np.asarray(dt_ms, dtype=np.int64)
    cpu = np.asarray(cpu_us, dtype=np.int64)
    if (dt <= 0).any():
        raise ValueError("a run row with dt_ms <= 0")
    lead, trail = max(0, int(lead_ms)), max(0, int(trail_ms))
    caps = row_caps_us(dt, cores)
    total = int(cpu.sum())
    if total <= int(caps.sum()):
        fit = fit_to_ceiling(cpu, caps)
        return RunFit(fit.cpu_us, 0, 0, fit.moved_us, 0)
    # the run rows cannot hold it: fill them, then the trail and the lead (within their ceilings), then spread what
    # is still left over the run rows by length (above their ceilings: reported as over_us)
    run = caps.copy()
    left = total - int(caps.sum())
    trail_cpu = min(left, int(row_caps_us(np.array([trail]), cores)[0])) if trail else 0
    left -= trail_cpu
    lead_cpu = min(left, int(row_caps_us(np.array([lead]), cores)[0])) if lead else 0
    left -= lead_cpu
    if left:
        run = run + _largest_remainder(left, dt)
    moved = int(np.maximum(cpu - caps, 0).sum()) - left
    return RunFit(run, lead_cpu, trail_cpu, moved, left)


def slot_rows(dt_ms: np.ndarray, cpu_us: np.ndarray, cores: float, lead_ms: int = 0, trail_ms: int = 0) -> Slot:
    """A task's run rows with its lead and trail (module docstring), every fragment within ``cores`` when the
    total allows it; ``sum(cpu_us)`` unchanged, ``sum(dt_ms)`` = run + lead + trail."""
    dt = np.asarray(dt_ms, dtype=np.int64)
    f = fit_run(dt, cpu_us, cores, lead_ms, trail_ms)
    return _assemble(dt, f.run_cpu_us, max(0, int(lead_ms)), f.lead_cpu_us, max(0, int(trail_ms)), f.trail_cpu_us,
                     f.moved_us, f.over_us)


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    share = total * w / w.sum()
    base = np.floor(share).astype(np.int64)
    rest = total - int(base.sum())
    if rest:
        base[np.argsort(-(share - base), kind="stable")[:rest]] += 1
    return base


def _assemble(dt: np.ndarray, run_cpu: np.ndarray, lead: int, lead_cpu: int, trail: int, trail_cpu: int,
              moved: int, over: int) -> Slot:
    dts, cpus = [dt], [run_cpu]
    if lead:
        dts.insert(0, np.array([lead], dtype=np.int64))
        cpus.insert(0, np.array([lead_cpu], dtype=np.int64))
    if trail:
        dts.append(np.array([trail], dtype=np.int64))
        cpus.append(np.array([trail_cpu], dtype=np.int64))
    return Slot(np.concatenate(dts), np.concatenate(cpus), moved, over)


def insert_slot_edges(ids: np.ndarray, dt_ms: np.ndarray, cpu_us: np.ndarray, lead_ms: np.ndarray,
                      trail_ms: np.ndarray, lead_cpu_us: np.ndarray | None = None,
                      trail_cpu_us: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised lead/trail insertion for many whole tasks at once.

    ``ids`` (rows ordered by task, each task's rows contiguous and complete), ``lead_ms`` / ``trail_ms`` indexed by
    task id; a task gets a lead row before its first row when its lead > 0 and a trail row after its last when its
    trail > 0 (CPU from ``lead_cpu_us`` / ``trail_cpu_us``, else 0). Returns the new (ids, dt_ms, cpu_us).
    """
    n = len(ids)
    if n == 0:
        return ids, dt_ms, cpu_us
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], n]
    task = ids[starts]
    lead = np.asarray(lead_ms, dtype=np.int64)[task]
    trail = np.asarray(trail_ms, dtype=np.int64)[task]
    lcpu = np.zeros(len(task), np.int64) if lead_cpu_us is None else np.asarray(lead_cpu_us, np.int64)[task]
    tcpu = np.zeros(len(task), np.int64) if trail_cpu_us is None else np.asarray(trail_cpu_us, np.int64)[task]
    hl, ht = lead > 0, trail > 0
    # trails first at a shared index (the previous task's trail comes before the next task's lead): stable order
    pos = np.r_[ends[ht], starts[hl]]
    key = np.r_[ends[ht] * 2, starts[hl] * 2 + 1]
    order = np.argsort(key, kind="stable")
    pos = pos[order]
    new_ids = np.r_[task[ht], task[hl]][order]
    new_dt = np.r_[trail[ht], lead[hl]][order]
    new_cpu = np.r_[tcpu[ht], lcpu[hl]][order]
    return (np.insert(ids, pos, new_ids), np.insert(dt_ms.astype(np.int64), pos, new_dt),
            np.insert(cpu_us.astype(np.int64), pos, new_cpu))
