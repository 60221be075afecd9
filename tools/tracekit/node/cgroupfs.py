"""cgroup file system: detect the usable version, create/remove a task cgroup, read its counters.

Policy (which mechanism, names, quotas) lives in ``binding.py``; this module only touches files.

A task cgroup is described by a small dict (stored in the PID sentinel, schema.py ``cgroup``):
    ``{"version": 1, "cpu": <dir>, "cpuacct": <dir>, "memory": <dir>}``  (v1; cpuacct holds the µs CPU)
    ``{"version": 2, "cpu": <dir>, "memory": <dir>}``                    (v2; one dir for both)
Task cgroups live under ``<hierarchy root>/tracekit/<name>`` so any process of the node (worker,
adapter, collector) finds one by its name alone.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT = "tracekit"
V1_CONTROLLERS = ("cpu", "cpuacct", "memory")
CFS_PERIOD_US = 100_000


def _writable_dir(p: Path) -> bool:
    return p.is_dir() and os.access(p, os.W_OK)


def v2_available(root: Path = CGROUP_ROOT) -> bool:
    """A unified hierarchy mounted at the root with the cpu controller available and writable."""
    try:
        ctrls = (root / "cgroup.controllers").read_text().split()
    except OSError:
        return False
    return "cpu" in ctrls and _writable_dir(root)


def v1_available(root: Path = CGROUP_ROOT) -> bool:
    """Legacy hierarchies with writable cpu (``cpu.shares``/``cpu.cfs_quota_us``) and cpuacct."""
    cpu = root / "cpu"
    return (cpu / "cpu.shares").exists() and (cpu / "cpu.cfs_quota_us").exists() and _writable_dir(cpu) \
        and _writable_dir(root / "cpuacct")


def _write(path: Path, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def v1_dirs(name: str, root: Path = CGROUP_ROOT) -> dict:
    """The dirs a v1 task cgroup ``name`` has (whether or not they exist)."""
    d: dict = {"version": 1}
    for ctrl in V1_CONTROLLERS:
        d[ctrl] = str(root / ctrl / PARENT / name)
    if not _writable_dir(root / "memory"):
        d["memory"] = None
    return d


def v2_dirs(name: str, root: Path = CGROUP_ROOT) -> dict:
    """The dir of a v2 task cgroup ``name`` (cpu and memory share it)."""
    p = str(root / PARENT / name)
    return {"version": 2, "cpu": p, "memory": p}


def create_v1(name: str, shares: int, quota_us: int | None, root: Path = CGROUP_ROOT) -> dict:
    """Create the v1 cgroup dirs of a task and set ``cpu.shares`` / ``cpu.cfs_quota_us``; OSError if not."""
    cg = v1_dirs(name, root)
    seen: set[str] = set()
    for ctrl in V1_CONTROLLERS:
        if not cg[ctrl]:
            continue
        real = os.path.realpath(cg[ctrl])  # cpu and cpuacct may be one co-mounted hierarchy
        if real in seen:
            continue
        seen.add(real)
        Path(cg[ctrl]).mkdir(parents=True, exist_ok=True)
    cpu = Path(cg["cpu"])
    _write(cpu / "cpu.shares", str(int(shares)))
    _write(cpu / "cpu.cfs_period_us", str(CFS_PERIOD_US))
    _write(cpu / "cpu.cfs_quota_us", str(int(quota_us)) if quota_us else "-1")
    return cg


def _enable_v2_controllers(path: Path) -> None:
    with contextlib.suppress(OSError):
        _write(path / "cgroup.subtree_control", "+cpu +memory")


def create_v2(name: str, weight: int, quota_us: int | None, root: Path = CGROUP_ROOT) -> dict:
    """Create a v2 task cgroup and set ``cpu.weight`` / ``cpu.max``; OSError if the machine refuses."""
    cg = v2_dirs(name, root)
    parent = root / PARENT
    _enable_v2_controllers(root)
    parent.mkdir(exist_ok=True)
    _enable_v2_controllers(parent)
    p = Path(cg["cpu"])
    p.mkdir(exist_ok=True)
    _write(p / "cpu.weight", str(int(weight)))
    _write(p / "cpu.max", f"{int(quota_us) if quota_us else 'max'} {CFS_PERIOD_US}")
    return cg


def set_quota(cgroup: dict, quota_us: int | None) -> None:
    """Set the CFS quota of an existing task cgroup (None = unlimited); OSError when it is gone."""
    p = Path(cgroup["cpu"])
    if cgroup["version"] == 2:
        _write(p / "cpu.max", f"{int(quota_us) if quota_us else 'max'} {CFS_PERIOD_US}")
    else:
        _write(p / "cpu.cfs_quota_us", str(int(quota_us)) if quota_us else "-1")


def _dirs(cg: dict) -> list[str]:
    """The task cgroup's distinct dirs (v2 has one for every controller; v1 one per hierarchy)."""
    return list(dict.fromkeys(d for key in ("cpu", "cpuacct", "memory") if (d := cg.get(key))))


def attach(cgroup: dict, pid: int) -> None:
    """Move ``pid`` into every dir of the task cgroup (called by the child before exec)."""
    for d in _dirs(cgroup):
        _write(Path(d) / "cgroup.procs", str(pid))


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cpu_usage_us(cgroup: dict) -> int | None:
    """Cumulative CPU of the task cgroup in µs, or None."""
    if cgroup.get("version") == 2:
        try:
            for line in (Path(cgroup["cpu"]) / "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1])
        except (OSError, ValueError):
            return None
        return None
    ns = _read_int(Path(cgroup["cpuacct"]) / "cpuacct.usage") if cgroup.get("cpuacct") else None
    return None if ns is None else ns // 1000


def _memory_kb(cg: dict, v2_file: str, v1_file: str) -> int | None:
    if not cg.get("memory"):
        return None
    b = _read_int(Path(cg["memory"]) / (v2_file if cg.get("version") == 2 else v1_file))
    return None if b is None else b // 1024


def memory_kb(cgroup: dict) -> int | None:
    """Current memory of the task cgroup in KiB, or None."""
    return _memory_kb(cgroup, "memory.current", "memory.usage_in_bytes")


def memory_peak_kb(cgroup: dict) -> int | None:
    """Peak memory of the task cgroup in KiB (v2 needs ``memory.peak``, kernel >= 5.19), or None."""
    return _memory_kb(cgroup, "memory.peak", "memory.max_usage_in_bytes")


def remove(cgroup: dict) -> list[str]:
    """Remove the task cgroup dirs; returns the dirs that could not be removed (still busy)."""
    left: list[str] = []
    for d in _dirs(cgroup):
        try:
            os.rmdir(d)
        except FileNotFoundError:
            pass
        except OSError:
            left.append(d)
    return left
