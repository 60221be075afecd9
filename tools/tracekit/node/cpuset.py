"""Exclusive cpuset allocation, pure: each running task gets its own cores while free cores exist.

A task asking for ``n`` cores gets the ``n`` lowest-numbered free cores. When fewer than ``n`` are
free (over-provisioned capacity, ``--allocation-ratio > 1``), it gets every free core plus the
least-shared busy ones (fewest current holders, then lowest number), so sharing only starts when the
node has no free core left and is spread evenly.
"""

from __future__ import annotations

from collections import Counter

from tracekit.node.procfs import format_cpu_list


def allocate(cores: list[int], held: dict[object, list[int]], units: int) -> list[int]:
    """Cores for a new task of ``units`` CPU units, given the cores ``held`` by running tasks."""
    if not cores:
        return []
    units = max(1, min(units, len(cores)))
    use = Counter(c for cs in held.values() for c in cs)
    free = [c for c in sorted(cores) if use[c] == 0]
    if len(free) >= units:
        return free[:units]
    busy = sorted((c for c in cores if use[c] > 0), key=lambda c: (use[c], c))
    return sorted(free + busy[: units - len(free)])


def check_requested(cpus: list[int], cores: list[int], held: dict[object, list[int]]) -> str | None:
    """Why a task's own cpuset ``cpus`` cannot run here, or None: every CPU must be one of this node's ``cores``
    and none may be held by a running task (``held``: task -> its cores), so a payload's cpuset never silently
    shares cores with another exclusive task."""
    if not cpus:
        return "cpuset is empty"
    outside = sorted(set(cpus) - set(cores))
    if outside:
        return f"cpuset names CPU(s) {format_cpu_list(outside)} outside this node's cores {format_cpu_list(cores)}"
    for key, cs in held.items():
        both = sorted(set(cpus) & set(cs))
        if both:
            who = key[0] if isinstance(key, tuple) else key
            return f"cpuset overlaps CPU(s) {format_cpu_list(both)} of running task {who}"
    return None
