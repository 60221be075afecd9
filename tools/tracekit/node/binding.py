"""CPU binding of a task: exclusive cpusets, shared weights/quotas, and max-min fair rebalancing.

Exclusive: CPU affinity set in the child before exec, so every thread the application creates
inherits it. Shared: where systemd is PID 1, a ``systemd-run --scope`` with CPUWeight/CPUQuota;
otherwise a cgroup the adapter creates (v2 ``cpu.weight``/``cpu.max``, v1
``cpu.shares``/``cpu.cfs_quota_us``); otherwise none. The mechanism used is recorded in the event.

``TRACEKIT_SHARED_MECHANISM`` (``auto`` default, or ``systemd-run``, ``cgroup-v2``, ``cgroup-v1``,
``none``) forces one, e.g. to compare with and without cgroups.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tracekit.core import paths
from tracekit.core.errors import Unsupported, UsageError
from tracekit.node import cgroupfs
from tracekit.node.procfs import format_cpu_list, parse_cpu_list

MECHANISM_ENV = "TRACEKIT_SHARED_MECHANISM"
MECHANISMS = ("systemd-run", "cgroup-v2", "cgroup-v1", "none")
BINDINGS = ("exclusive", "shared", "none")
MAX_NAME = 200  # cgroup dir / unit names must stay below NAME_MAX (255) with prefixes


# ---------------------------------------------------------------- pure logic


def task_cgroup_name(run_id: str, node_id: str, trace_id: str, attempt: int) -> str:
    """The per-task cgroup dir name (under ``tracekit/``) and systemd scope stem; unique per attempt."""
    name = f"{run_id}.{node_id}.{trace_id}.a{int(attempt)}"
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:16]
        name = f"{name[: MAX_NAME - 17]}-{digest}"
    return name


def scope_unit_name(cg_name: str) -> str:
    """The systemd scope unit of a task (unit names allow letters, digits, ':', '_', '.', '-')."""
    return f"tracekit-{cg_name}.scope"


def fair_quotas(demands: dict, capacity: float) -> dict:
    """Max-min fair allocation (water filling) of ``capacity`` among ``demands`` (same unit, e.g. %).

    Every task gets min(demand, fair share); what small tasks leave is shared by the larger ones.
    The result never exceeds a demand, and sums to min(capacity, sum of demands).
    """
    out: dict = {}
    left = max(0.0, float(capacity))
    todo = sorted(demands.items(), key=lambda kv: (kv[1], str(kv[0])))
    n = len(todo)
    for i, (key, demand) in enumerate(todo):
        share = left / (n - i)
        give = min(max(0.0, float(demand)), share)
        out[key] = give
        left -= give
    return out


def shares_from_weight(weight: int) -> int:
    """v1 ``cpu.shares`` equivalent of a systemd CPUWeight (100 -> 1024), within the kernel's range."""
    return max(2, min(262144, round(int(weight) * 1024 / 100)))


def v2_weight(weight: int) -> int:
    """CPUWeight clamped to cgroup v2's ``cpu.weight`` range."""
    return max(1, min(10000, int(weight)))


def quota_us(percent: float | None, period_us: int = cgroupfs.CFS_PERIOD_US) -> int | None:
    """CFS quota per period for ``percent`` % of one CPU (None/<=0 = unlimited; at least 1 ms as the kernel needs)."""
    if percent is None or percent <= 0:
        return None
    return max(1000, round(percent / 100.0 * period_us))


def parse_cpuset(text: str, allowed: set[int] | None = None) -> list[int]:
    """A ``TC_CPUSET`` value as a CPU list, checked against the CPUs this process may use."""
    try:
        cpus = parse_cpu_list(text)
    except ValueError as exc:
        raise UsageError(f"bad cpuset {text!r}: {exc}") from None
    allowed = allowed if allowed is not None else os.sched_getaffinity(0)
    missing = sorted(set(cpus) - set(allowed))
    if missing:
        raise Unsupported(f"cpuset {text!r} names CPUs {format_cpu_list(missing)} this node does not offer "
                          f"(allowed: {format_cpu_list(sorted(allowed))})")
    return cpus


# ---------------------------------------------------------------- detection


def systemd_is_pid1() -> bool:
    """True when PID 1 is systemd (a ``systemd-run --scope`` can then be used)."""
    try:
        return Path("/proc/1/comm").read_text().strip() == "systemd"
    except OSError:
        return False


def detect_shared_mechanism() -> str:
    """The best shared-mode mechanism this machine offers (or the one forced by the environment)."""
    forced = os.environ.get(MECHANISM_ENV, "auto")
    if forced != "auto":
        if forced not in MECHANISMS:
            raise UsageError(f"{MECHANISM_ENV} must be auto or one of {', '.join(MECHANISMS)}, got {forced!r}")
        return forced
    if systemd_is_pid1() and shutil.which("systemd-run"):
        return "systemd-run"
    if cgroupfs.v2_available():
        return "cgroup-v2"
    if cgroupfs.v1_available():
        return "cgroup-v1"
    return "none"


def unavailable_reason(mechanism: str) -> str | None:
    """Why ``mechanism`` cannot work here (None when it can): used by tests to skip with the reason."""
    if mechanism == "systemd-run":
        if not systemd_is_pid1():
            return "PID 1 is not systemd"
        return None if shutil.which("systemd-run") else "systemd-run not installed"
    if mechanism == "cgroup-v2":
        return None if cgroupfs.v2_available() else "no writable cgroup v2 hierarchy with the cpu controller"
    if mechanism == "cgroup-v1":
        return None if cgroupfs.v1_available() else "no writable cgroup v1 cpu/cpuacct hierarchies"
    return None


# ---------------------------------------------------------------- shared mode


@dataclass
class SharedBinding:
    """What the adapter applies for a shared-mode task."""

    mechanism: str
    name: str
    weight: int | None
    quota_pct: float | None
    cgroup: dict | None = None  # for cgroup-v1 / cgroup-v2
    argv_prefix: list = field(default_factory=list)  # for systemd-run
    note: str | None = None  # why a weaker mechanism was used

    def attach(self, pid: int) -> None:
        """Child side, before exec: join the task cgroup."""
        if self.cgroup:
            cgroupfs.attach(self.cgroup, pid)

    def release(self) -> list:
        """After the task: remove the cgroup (best effort); returns the dirs still busy (a leftover process).

        A systemd-run scope is stopped: where systemd gets no "cgroup empty" notice (a container on a hybrid
        cgroup host) an empty scope would otherwise stay active, with its quota, for the life of systemd."""
        if self.mechanism == "systemd-run" and self.argv_prefix:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(["systemctl", "stop", "--no-block", scope_unit_name(self.name)],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        return cgroupfs.remove(self.cgroup) if self.cgroup else []


def prepare_shared(run_id: str, node_id: str, trace_id: str, attempt: int, weight: int | None,
                   quota_pct: float | None, mechanism: str | None = None, unit: str | None = None) -> SharedBinding:
    """Create the task's cgroup (or the systemd-run prefix); falls back to ``none`` if creation fails.
    ``unit``: the scope unit name a task asked for (systemd-run only; default :func:`scope_unit_name`)."""
    mech = mechanism or detect_shared_mechanism()
    name = task_cgroup_name(run_id, node_id, trace_id, attempt)
    if quota_pct is None:
        quota_pct = pending_quota(run_id, node_id, name)
    w = int(weight) if weight else 100
    b = SharedBinding(mech, name, w, quota_pct)
    q = quota_us(quota_pct)
    try:
        if mech == "systemd-run":
            b.argv_prefix = ["systemd-run", "--scope", "--quiet", "--collect",
                             f"--unit={unit or scope_unit_name(name)}",
                             "-p", f"CPUWeight={v2_weight(w)}"]
            if quota_pct:
                b.argv_prefix += ["-p", f"CPUQuota={quota_pct:.0f}%"]
            b.argv_prefix.append("--")
        elif mech == "cgroup-v2":
            b.cgroup = cgroupfs.create_v2(name, v2_weight(w), q)
        elif mech == "cgroup-v1":
            b.cgroup = cgroupfs.create_v1(name, shares_from_weight(w), q)
    except OSError as exc:
        b.note = f"{mech} failed ({exc.strerror or exc}); ran without a CPU share mechanism"
        if b.cgroup:
            cgroupfs.remove(b.cgroup)
        b.cgroup = None
        b.mechanism = "none"
    return b


def apply_quota(mechanism: str, name: str, percent: float | None) -> bool:
    """Set the CPU quota (% of one CPU) of a running task's cgroup/scope; False when it is gone."""
    q = quota_us(percent)
    try:
        if mechanism == "cgroup-v1":
            cg = cgroupfs.v1_dirs(name)
            if not Path(cg["cpu"]).is_dir():
                return False
            cgroupfs.set_quota(cg, q)
        elif mechanism == "cgroup-v2":
            cg = cgroupfs.v2_dirs(name)
            if not Path(cg["cpu"]).is_dir():
                return False
            cgroupfs.set_quota(cg, q)
        elif mechanism == "systemd-run":
            value = f"CPUQuota={percent:.0f}%" if percent else "CPUQuota="
            r = subprocess.run(["systemctl", "set-property", "--runtime", scope_unit_name(name), value],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
            return r.returncode == 0
        else:
            return False
    except OSError:
        return False  # the task ended between the check and the write
    return True


def shared_capacity(cores: int, reserved_pct: float = 0.0) -> float:
    """CPU % the max-min sharing divides: the node's cores x 100 % less what tasks with their own fixed quota hold
    (never below 1 %: a quota of 0 would mean unlimited)."""
    return max(1.0, 100.0 * max(1, int(cores)) - max(0.0, float(reserved_pct)))


def rebalance_shared(run_id: str, node_id: str, running: dict, cores: int, reserved_pct: float = 0.0) -> dict:
    """Max-min fair CPU quotas (%) for the running shared tasks, applied to each task's cgroup/scope.

    ``running`` maps (trace_id, attempt) -> cpu_units; each task demands cpu_units x 100 % and the
    node offers :func:`shared_capacity` (cores x 100 % less ``reserved_pct``, the quotas tasks fixed themselves).
    Tasks that ended meanwhile are skipped silently. Returns the quotas.
    """
    demands = {key: 100.0 * max(0, int(units)) for key, units in running.items()}
    quotas = fair_quotas(demands, shared_capacity(cores, reserved_pct))
    mech = detect_shared_mechanism()
    names = {key: task_cgroup_name(run_id, node_id, key[0], key[1]) for key in quotas}
    # a task launched just now may not have created its cgroup yet: it reads its quota from this file
    _write_pending(run_id, node_id, {names[k]: round(q, 3) for k, q in quotas.items()})
    for key, pct in quotas.items():
        apply_quota(mech, names[key], pct)
    return quotas


def quotas_path(run_id: str, node_id: str) -> Path:
    """``logs/$RUN_ID/<node>/quotas.json``: the last max-min quotas (%) by task cgroup name."""
    return paths.node_dir(run_id, node_id) / "quotas.json"


def _write_pending(run_id: str, node_id: str, quotas: dict) -> None:
    p = quotas_path(run_id, node_id)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(quotas))
        os.replace(tmp, p)
    except OSError:
        pass  # best effort: the quota is applied to existing cgroups anyway


def pending_quota(run_id: str, node_id: str, name: str) -> float | None:
    """The quota the last rebalance computed for a task cgroup not yet created, if any."""
    try:
        v = json.loads(quotas_path(run_id, node_id).read_text()).get(name)
    except (OSError, ValueError, AttributeError):
        return None
    return float(v) if isinstance(v, (int, float)) and v > 0 else None
