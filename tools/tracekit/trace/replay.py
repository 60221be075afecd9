"""Replay of an exported OpenDC trace under OpenDC's own rules: pure logic, no I/O (docs/traces.md, Replay check).

What OpenDC would do with ``tasks.parquet`` / ``fragments.parquet`` on the exported topology with the exported
allocation policy, decided the way OpenDC's source decides it (``atlarge-research/opendc`` at 691036d; the facts and
paths are in ``/work/shared/opendc/FACTS.md``). Every rule below names the OpenDC file it models. The file reading and
writing lives in ``trace/replay_io.py``; this module takes and returns plain arrays so the rules can be tested on
hand-built traces.

Time: the simulation clock starts at 0 = the first submission (``ScenarioReplayer.kt``); ``schedule`` and ``finish``
are simulated ms, ``origin_ms`` converts them back to epoch ms. Units of a task as OpenDC holds them: memory in MB
(``mem_capacity`` KB / 1000, rounded), cores, runtime ms; a host's memory in MiB, cores = coreCount x cpu count.

What is not modelled: the host's CPU distributor (max-min sharing of MHz between guests) and power; failures,
checkpoints, dependencies (Tracekit writes no ``parents``/``children``), the ``Perfect`` scaling policy, prefabs other
than the filter/weigher ones below. None of them changes when a task is placed or how long it holds its host under
``NoDelay``, which is all the check needs.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

# org.opendc.compute.api.TaskState (opendc-compute/opendc-compute-api/.../TaskState.kt): the names OpenDC writes.
COMPLETED, TERMINATED, STUCK = "COMPLETED", "TERMINATED", "PROVISIONING"
# Java's Double.MIN_VALUE (the smallest positive double), the start value OpenDC's weighers use for "max".
JAVA_DOUBLE_MIN = 5e-324
JAVA_DOUBLE_MAX = 1.7976931348623157e308
QUANTUM_OPENDC_MS = 1000  # ComputeSteps.kt: schedulingQuantum defaults to 1 s; no experiment field changes it
QUANTUM_JUDGE_MS = 1  # the trace judged on its own: a 1 ms grid (ComputeService.Builder's own default quantum)


# --- topology and policy --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    """One simulated host (a topology host entry with ``count`` N gives N of these)."""

    name: str  # unique, as OpenDC names them: "<entry name>", then "<entry name>-0", "-1", ...
    type: str  # the host entry's name: FilterScheduler keeps one list of empty hosts per type
    cores: int  # coreCount x cpu.count (MachineModel.java merges the CPUs of a host into one)
    core_mhz: float
    mem_mib: int  # memory.size in MiB, truncated (TopologyFactory.kt: size.toMiB().toLong())


@dataclass(frozen=True)
class HostFilterSpec:
    kind: str  # "vcpu" | "ram" | "compute"
    allocation_ratio: float = 1.0


@dataclass(frozen=True)
class WeigherSpec:
    kind: str  # "instanceCount" | "vcpu" | "ram"
    multiplier: float = 1.0


@dataclass(frozen=True)
class Policy:
    """A FilterScheduler (opendc-compute-simulator/.../scheduler/FilterScheduler.kt)."""

    filters: tuple[HostFilterSpec, ...]
    weighers: tuple[WeigherSpec, ...] = ()
    subset_size: int = 1
    label: str = ""

    def describe(self) -> str:
        f = ", ".join(f"{x.kind}" + (f" x{x.allocation_ratio:g}" if x.kind in ("vcpu", "ram") else "")
                      for x in self.filters) or "none"
        w = ", ".join(f"{x.kind} {x.multiplier:+g}" for x in self.weighers) or "none (first candidate)"
        return f"{self.label + ': ' if self.label else ''}filters [{f}], weighers [{w}]"


FILTER_KINDS = ("vcpu", "ram", "compute")
WEIGHER_KINDS = ("instanceCount", "vcpu", "ram")

# ComputeSchedulers.kt, createPrefabComputeScheduler: the prefabs built from filters and weighers this replay models
# (cpu and ram allocation ratios fixed at 1.0 there). ComputeFilter passes every host that is UP: all of them here.
_C, _V, _R = HostFilterSpec("compute"), HostFilterSpec("vcpu", 1.0), HostFilterSpec("ram", 1.0)
PREFABS = {
    "mem": Policy((_V, _R), (WeigherSpec("ram", 1.0),), label="prefab Mem"),
    "meminv": Policy((_C, _V, _R), (WeigherSpec("ram", -1.0),), label="prefab MemInv"),
    "activeservers": Policy((_C, _V, _R), (WeigherSpec("instanceCount", -1.0),), label="prefab ActiveServers"),
    "activeserversinv": Policy((_C, _V, _R), (WeigherSpec("instanceCount", 1.0),), label="prefab ActiveServersInv"),
    "provisionedcores": Policy((_C, _V, _R), (WeigherSpec("vcpu", 1.0),), label="prefab ProvisionedCores"),
    "provisionedcoresinv": Policy((_C, _V, _R), (WeigherSpec("vcpu", -1.0),), label="prefab ProvisionedCoresInv"),
}
# ExperimentSpec: allocationPolicies defaults to the prefab Mem = VCpuFilter + RamFilter + RamWeigher.
DEFAULT_POLICY = PREFABS["mem"]


# --- the task set -------------------------------------------------------------------------------------------------


@dataclass
class Tasks:
    """The trace as OpenDC loads it, one entry per row of ``tasks.parquet`` (file order)."""

    id: np.ndarray  # int32
    name: list  # str | None
    submission_ms: np.ndarray  # int64 epoch ms
    runtime_ms: np.ndarray  # int64: sum of the task's fragment durations (NoDelay)
    cpu_count: np.ndarray  # int32
    cpu_capacity: np.ndarray  # float64 MHz
    mem_kb: np.ndarray  # int64 (the trace's mem_capacity)
    fragments: np.ndarray  # int64: number of fragments (0 = OpenDC drops the task)
    cpu_mhz_ms: np.ndarray | None = None  # float64: sum(cpu_usage x duration), for the output's CPU columns

    def __len__(self) -> int:
        return len(self.id)

    @property
    def mem_mb(self) -> np.ndarray:
        # ComputeWorkloadLoader.kt: memUsage = mem_capacity / 1000.0 (KB -> MB), then roundToLong() (half up)
        return np.floor(self.mem_kb / 1000.0 + 0.5).astype(np.int64)


# --- the FilterScheduler ----------------------------------------------------------------------------------------


class _View:
    """HostView.java: the service's bookkeeping of one host."""

    __slots__ = ("idx", "host", "instances", "avail_mem", "prov_cores", "avail_cores")

    def __init__(self, idx: int, host: Host) -> None:
        self.idx, self.host = idx, host
        self.instances = 0
        self.avail_mem = host.mem_mib
        self.prov_cores = 0
        self.avail_cores = host.cores


def _test(f: HostFilterSpec, v: _View, cores: int, mem: int) -> bool:
    if f.kind == "vcpu":  # filters/VCpuFilter.kt
        if f.allocation_ratio == 1.0:
            return v.avail_cores >= cores
        if cores > v.host.cores:  # no overcommit against itself
            return False
        return v.host.cores * f.allocation_ratio - v.prov_cores >= cores
    if f.kind == "ram":  # filters/RamFilter.kt
        if f.allocation_ratio == 1.0:
            return v.avail_mem >= mem
        cap = v.host.mem_mib
        if mem > cap:
            return False
        return cap * f.allocation_ratio - (cap - v.avail_mem) >= mem
    return True  # filters/ComputeFilter.kt: the host is UP (hosts never fail in this replay)


def _score(f: HostFilterSpec, v: _View) -> float:
    # HostFilter.score, the sort key of SortedHostViewList.kt (HostFilter.kt's default: 0.0)
    if f.kind == "vcpu":
        return float(v.avail_cores) if f.allocation_ratio == 1.0 else v.host.cores * f.allocation_ratio
    if f.kind == "ram":
        return float(v.avail_mem) if f.allocation_ratio == 1.0 else v.host.mem_mib * f.allocation_ratio
    return 0.0


def _weight(w: WeigherSpec, v: _View) -> float:
    if w.kind == "instanceCount":  # weights/InstanceCountWeigher.kt
        return float(v.instances)
    if w.kind == "ram":  # weights/RamWeigher.kt: available memory
        return float(v.avail_mem)
    # weights/VCpuWeigher.kt: allocationRatio - provisionedCpuCores; the SDK builds it with allocationRatio = 1.0
    # (opendc-sdk-runner/.../factory/SchedulerFactory.kt)
    return 1.0 - v.prov_cores


def _div(a: float, b: float) -> float:
    """IEEE division as the JVM does it (Python raises on overflow nowhere here, but be explicit about 1/tiny)."""
    try:
        return a / b
    except ZeroDivisionError:  # pragma: no cover - b == 0 is skipped by the caller
        return math.copysign(math.inf, a) if a else math.nan


class FilterScheduler:
    """FilterScheduler.kt with SortedHostViewList.kt, state for state.

    Candidates: the used hosts (kept sorted by the filters' scores) from the lower bound of the first filter on,
    that pass the other filters, then the first empty host of each host type that passes every filter. Without
    weighers the first candidate wins (a used host before an empty one). With weighers, OpenDC's arithmetic is kept
    exactly, including that its accumulated ``weights`` array is never reset between calls (indexed by candidate
    position) and that ``maxWeight`` is updated with the raw weight: placement with weighers is stateful in OpenDC,
    and so it is here. Two consequences worth knowing (both OpenDC's, reproduced, not fixed): a weigher whose
    candidates all weigh 0 (``instanceCount`` on empty hosts) gets range = Double.MIN_VALUE, so inf x 0 puts NaN in
    those positions for good; and with a negative multiplier no accumulated weight ever exceeds ``maxWeight``'s
    start (Double.MIN_VALUE), so the first candidate wins: ``instanceCount -1`` does not spread in OpenDC.
    """

    def __init__(self, hosts: list[Host], policy: Policy) -> None:
        self.policy = policy
        self.filters = policy.filters
        self.views = [_View(i, h) for i, h in enumerate(hosts)]
        self.used: list[_View] = []
        self.empty: dict[str, list[_View]] = {}  # mutableMapOf: insertion order of the types
        # SchedulerFactory.kt passes numHosts = the number of hosts; DoubleArray(numHosts), never reset
        self.weights = [0.0] * max(1, len(hosts))
        for v in self.views:  # ComputeService.addHost -> FilterScheduler.addHost
            self.empty.setdefault(v.host.type, []).append(v)

    # SortedHostViewList.kt
    def _key(self, v: _View) -> tuple:
        return tuple(_score(f, v) for f in self.filters)

    def _add_sorted(self, v: _View) -> None:
        if not self.filters:
            self.used.append(v)
            return
        key, lst = self._key(v), self.used
        low, high = 0, len(lst) - 1  # kotlin.collections.binarySearch: returns the index of an equal element
        while low <= high:
            mid = (low + high) >> 1
            mk = self._key(lst[mid])
            if mk < key:
                low = mid + 1
            elif mk > key:
                high = mid - 1
            else:
                low = mid
                break
        lst.insert(low, v)

    def _remove_used(self, v: _View) -> None:
        for i, x in enumerate(self.used):  # ArrayList.remove(Object): identity (HostView has no equals)
            if x is v:
                del self.used[i]
                return

    def _fitting(self, cores: int, mem: int) -> list[_View]:
        hosts = self.used
        if not self.filters:
            return list(hosts)
        first = self.filters[0]
        low, high = 0, len(hosts)  # findIndex: lower bound on the first filter's test
        while low < high:
            mid = (low + high) >> 1
            if _test(first, hosts[mid], cores, mem):
                high = mid
            else:
                low = mid + 1
        if low == 0 and not (hosts and _test(first, hosts[0], cores, mem)):
            return []
        others = self.filters[1:]
        return [v for v in hosts[low:] if all(_test(f, v, cores, mem) for f in others)]

    def select(self, cores: int, mem: int) -> _View | None:
        """The host for a task, or None (FAILURE: the head waits or is terminated by the service)."""
        fitting = self._fitting(cores, mem)
        for lst in self.empty.values():
            if lst and all(_test(f, lst[0], cores, mem) for f in self.filters):
                fitting.append(lst[0])
        if not fitting:
            return None
        if self.policy.weighers:
            max_weight, max_index = JAVA_DOUBLE_MIN, 0
            for w in self.policy.weighers:
                raw = [_weight(w, v) for v in fitting]  # HostWeigher.getWeights: min from MAX_VALUE, max from MIN_VALUE
                lo, hi = min([JAVA_DOUBLE_MAX, *raw]), max([JAVA_DOUBLE_MIN, *raw])
                rng = hi - lo
                if rng == 0.0:  # all weights equal: skipped
                    continue
                factor = _div(w.multiplier, rng)
                for i, x in enumerate(raw):
                    self.weights[i] += factor * (x - lo)
                    if self.weights[i] > max_weight:
                        max_index = i
                        max_weight = x  # sic: FilterScheduler.kt stores the raw weight
            chosen = fitting[max_index]
        else:
            chosen = fitting[0]
        if chosen.instances == 0:  # host.isEmpty(): it moves from its type's empty list to the used list
            self.empty[chosen.host.type].remove(chosen)  # placed() adds it to the used list
        return chosen

    def placed(self, v: _View, cores: int, mem: int) -> None:
        """ComputeService.doSchedule after a SUCCESS: the view's counters, then updateHost."""
        v.instances += 1
        v.prov_cores += cores
        v.avail_cores -= cores
        v.avail_mem -= mem
        # select() added a newly used host with its old scores and updateHost re-sorts it (remove + addSorted):
        # the same as one addSorted with the new scores.
        self._remove_used(v)
        self._add_sorted(v)

    def released(self, v: _View, cores: int, mem: int) -> None:
        """ComputeService's host listener on COMPLETED: counters back, then updateHost (empty -> setHostEmpty)."""
        v.instances -= 1
        v.prov_cores -= cores
        v.avail_cores += cores
        v.avail_mem += mem
        self._remove_used(v)
        if v.instances == 0:
            self.empty.setdefault(v.host.type, []).append(v)  # setHostEmpty appends at the end of its type's list
        else:
            self._add_sorted(v)


# --- the service: queue, pacer, completions -----------------------------------------------------------------------


@dataclass
class ReplayResult:
    """Per task (same order as ``Tasks``): simulated ms since the first submission; -1 where it does not apply."""

    quantum_ms: int
    origin_ms: int  # epoch ms of the first submission (simulated time 0)
    submit: np.ndarray  # int64 simulated submission
    schedule: np.ndarray  # int64, -1 = never placed
    finish: np.ndarray  # int64, -1 = dropped (no fragments)
    host: np.ndarray  # int32 host index, -1 = none
    state: list  # COMPLETED | TERMINATED | None (dropped: no fragments)
    hosts: list[Host] = field(default_factory=list)
    policy: Policy | None = None

    @property
    def dropped(self) -> int:
        return sum(s is None for s in self.state)

    @property
    def terminated(self) -> int:
        return sum(s == TERMINATED for s in self.state)

    @property
    def stuck(self) -> int:
        return sum(s == STUCK for s in self.state)

    def makespan_ms(self) -> int:
        """First submission to the last finish, simulated ms."""
        done = self.finish[self.finish >= 0]
        return int(done.max()) if done.size else 0


def simulate(tasks: Tasks, hosts: list[Host], policy: Policy, quantum_ms: int = QUANTUM_OPENDC_MS) -> ReplayResult:
    """Replay ``tasks`` on ``hosts`` under ``policy``; a heap of completions and one FIFO queue: O(N log N + N x H)."""
    if quantum_ms < 1:
        raise ValueError("quantum_ms must be >= 1")
    n = len(tasks)
    submit = np.full(n, -1, dtype=np.int64)
    schedule = np.full(n, -1, dtype=np.int64)
    finish = np.full(n, -1, dtype=np.int64)
    host_of = np.full(n, -1, dtype=np.int32)
    state: list = [None] * n
    # ComputeWorkloadLoader.kt: a task without fragments is dropped silently; the rest sorted by submission with a
    # stable sort (equal times keep file order); ScenarioReplayer.kt sorts again (stable) and shifts all times by the
    # first submission.
    keep = np.flatnonzero(tasks.fragments > 0)
    order = keep[np.argsort(tasks.submission_ms[keep], kind="stable")]
    origin = int(tasks.submission_ms[order[0]]) if order.size else 0
    if not order.size:
        return ReplayResult(quantum_ms, origin, submit, schedule, finish, host_of, state, list(hosts), policy)
    submit[order] = tasks.submission_ms[order] - origin
    cores_a = tasks.cpu_count.astype(np.int64)
    mem_a = tasks.mem_mb
    run_a = tasks.runtime_ms.astype(np.int64)
    # ComputeService.addHost: maxCores / maxMemory over all hosts, for the "does not fit" test
    max_cores = max((h.cores for h in hosts), default=0)
    max_mem = max((h.mem_mib for h in hosts), default=0)
    sched = FilterScheduler(hosts, policy)

    queue: deque[int] = deque()
    done: list[tuple[int, int, int]] = []  # (finish, seq, task): heap of running tasks
    pending_slot = -1  # Pacer.java: the one pending scheduling cycle (-1 = none)
    nxt, m, seq = 0, len(order), 0
    sub_sorted = submit[order]

    def request_cycle(now: int) -> int:
        # ComputeService.requestSchedulingCycle -> Pacer.enqueue: bail out on an empty queue; at most one pending
        # cycle, at the next slot of the quantum grid (now itself when on the grid)
        if pending_slot >= 0 or not queue:
            return pending_slot
        return now + (quantum_ms - now % quantum_ms) % quantum_ms

    while nxt < m or done or (pending_slot >= 0 and queue):
        t_sub = int(sub_sorted[nxt]) if nxt < m else None
        t_done = done[0][0] if done else None
        t_cyc = pending_slot if pending_slot >= 0 else None
        now = min(t for t in (t_sub, t_done, t_cyc) if t is not None)
        # every event at `now` first (completions free capacity, submissions join the queue), then the cycle: in
        # OpenDC each of them requests a cycle, which runs at once (delay 0) when `now` is on the grid
        while done and done[0][0] == now:  # ComputeService host listener, TaskState.COMPLETED
            _, _, k = heapq.heappop(done)
            sched.released(sched.views[host_of[k]], int(cores_a[k]), int(mem_a[k]))
            pending_slot = request_cycle(now)
        while nxt < m and sub_sorted[nxt] == now:  # ComputeService.schedule: append to the FIFO queue
            queue.append(int(order[nxt]))
            nxt += 1
            pending_slot = request_cycle(now)
        if pending_slot != now:
            continue
        pending_slot = -1
        # ComputeService.doSchedule: strict FIFO, only the head is considered
        while queue:
            k = queue[0]
            c, mm = int(cores_a[k]), int(mem_a[k])
            v = sched.select(c, mm)
            if v is None:
                if mm > max_mem or c > max_cores:  # "does not fit": terminated, the queue moves on
                    queue.popleft()
                    state[k] = TERMINATED
                    finish[k] = now
                    continue
                break  # fits somewhere, but not now: head-of-line blocking
            queue.popleft()
            sched.placed(v, c, mm)
            schedule[k], host_of[k], state[k] = now, v.idx, COMPLETED
            # SimTraceWorkload.java, NoDelay: each fragment lasts exactly its duration from placement
            finish[k] = now + int(run_a[k])
            seq += 1
            heapq.heappush(done, (int(finish[k]), seq, k))
    for k in queue:  # fits no host as it is, yet not larger than every host: waits forever (OpenDC never ends)
        state[k] = STUCK
    return ReplayResult(quantum_ms, origin, submit, schedule, finish, host_of, state, list(hosts), policy)


# --- judging the replay against the real run ---------------------------------------------------------------------


@dataclass
class Figures:
    """Replay vs real run at one quantum."""

    quantum_ms: int
    tasks: int  # tasks compared (placed in the replay and matched to an executed attempt)
    makespan_real_ms: int
    makespan_sim_ms: int
    start_err_ms: np.ndarray  # |sim placement - real placement| per compared task
    terminated: int = 0
    dropped: int = 0
    stuck: int = 0

    @property
    def makespan_err(self) -> float:
        """Relative error of the simulated makespan (signed: > 0 = the replay takes longer)."""
        return (self.makespan_sim_ms - self.makespan_real_ms) / self.makespan_real_ms if self.makespan_real_ms else 0.0

    def start_pct(self, q: float) -> float:
        return percentile(self.start_err_ms, q)


def percentile(values: np.ndarray, q: float) -> float:
    """Nearest rank (the audit's convention): the value at index int(q x n) of the sorted values."""
    if values.size == 0:
        return 0.0
    s = np.sort(values)
    return float(s[min(s.size - 1, int(q * s.size))])


def figures(res: ReplayResult, real_place_ms: np.ndarray, real_end_ms: np.ndarray,
            real_submit_ms: np.ndarray) -> Figures:
    """Compare a replay with the real run; real arrays are per task (epoch ms, -1 = no executed attempt matched).

    Real placement = the controller's ``ts_dispatch`` (the moment the slot was taken, as OpenDC's schedule_time);
    real makespan = first ``ts_enqueue`` to the last end, over the compared tasks.
    """
    ok = (res.schedule >= 0) & (real_place_ms >= 0)
    sim_place = res.schedule[ok] + res.origin_ms
    err = np.abs(sim_place - real_place_ms[ok]).astype(np.int64)
    if ok.any():
        real_span = int(real_end_ms[ok].max() - real_submit_ms[ok].min())
        sim_span = int((res.finish[ok] + res.origin_ms).max() - real_submit_ms[ok].min())
    else:
        real_span = sim_span = 0
    return Figures(res.quantum_ms, int(ok.sum()), real_span, sim_span, err, res.terminated, res.dropped, res.stuck)


PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
MAKESPAN_TOL = 0.02  # the targets, judged on the 1 ms grid
START_P95_TOL_MS = 500


def verdict(judge: Figures) -> tuple[str, str]:
    """PASS when, on the 1 ms grid, the makespan is within 2 % and the start error p95 <= 500 ms; WARN when within
    twice that; FAIL beyond, or when a task was terminated or nothing could be compared."""
    if judge.tasks == 0:
        return FAIL, "no task could be compared with the real run"
    if judge.terminated:
        return FAIL, f"{judge.terminated} task(s) terminated: larger than every host (OpenDC would not run them)"
    if judge.stuck:
        return FAIL, f"{judge.stuck} task(s) fit no single host: OpenDC would wait for them forever"
    mk, p95 = abs(judge.makespan_err), judge.start_pct(0.95)
    why = (f"1 ms grid: makespan error {judge.makespan_err:+.2%} (limit ±{MAKESPAN_TOL:.0%}), start error p95 "
           f"{p95:.0f} ms (limit {START_P95_TOL_MS} ms)")
    if mk <= MAKESPAN_TOL and p95 <= START_P95_TOL_MS:
        return PASS, why
    if mk <= 2 * MAKESPAN_TOL and p95 <= 2 * START_P95_TOL_MS:
        return WARN, why
    return FAIL, why


def render_section(judge: Figures | None, opendc: Figures | None, policy: Policy, hosts: list[Host],
                   notes: list[str], outputs: list[str]) -> tuple[str, str]:
    """The audit report's "Replay (OpenDC rules)" section (Markdown, no time stamps) and its verdict."""
    v, why = verdict(judge) if judge is not None else (WARN, "no real run to compare with (no CTS)")
    lines = [f"## Replay (OpenDC rules): {v}", "", why, "",
             f"Policy: {policy.describe()}. Hosts: {len(hosts)} (" +
             ", ".join(f"{h.name} {h.cores}c {h.core_mhz:g} MHz {h.mem_mib} MiB" for h in hosts[:8]) +
             (", ..." if len(hosts) > 8 else "") + "). Scaling NoDelay; FIFO with head-of-line blocking.", ""]
    rows = [f for f in (judge, opendc) if f is not None]
    if rows:
        lines += ["| grid | tasks | makespan real | makespan replay | error | start error p50 | p95 | max |",
                  "|---|---|---|---|---|---|---|---|"]
        for f in rows:
            grid = f"{f.quantum_ms} ms" if f.quantum_ms < 1000 else f"{f.quantum_ms / 1000:g} s"
            lines.append(f"| {grid} | {f.tasks} | {f.makespan_real_ms / 1000:.3f} s | "
                         f"{f.makespan_sim_ms / 1000:.3f} s | {f.makespan_err:+.2%} | {f.start_pct(0.5):.0f} ms | "
                         f"{f.start_pct(0.95):.0f} ms | {f.start_pct(1.0):.0f} ms |")
        lines.append("")
    lines.append("Start error = |replayed placement - real `ts_dispatch`| per task; makespan = first `ts_enqueue` to "
                 "the last end. The 1 ms grid judges the trace itself; the 1 s grid is OpenDC's scheduling quantum "
                 "(a queued task waits for the next whole second), reported for information.")
    lines += [f"- {x}" for x in notes + outputs]
    return "\n".join(lines).rstrip() + "\n", v
