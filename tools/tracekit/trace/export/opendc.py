"""CTS -> OpenDC (docs/traces.md): ``tasks.parquet``, ``fragments.parquet``, ``topology.json`` (also written as
``small_datacenter.json``) and ``experiment.json``, in one folder that OpenDC's current CLI runs as it is
(``opendc run <folder>/experiment.json``).

What each file holds (the replay and the comparison read them; keys and units exactly):

``tasks.parquet`` (``TASK_SCHEMA``, OpenDC types strictly: int32 ids, int64 ms, double MHz, required columns
non-nullable), one row per exported attempt, in CTS order (``vocabulary.invocation_order_key``), ids dense 0..n-1:
    ``submission_time`` epoch ms: ``ts_enqueue`` for a first attempt, ``ts_requeue`` (when the controller put it
    back into the queue) for attempt n > 1 (so a retry's submission can be later than the next id's; OpenDC sorts
    by submission time with a stable sort); never after the slot starts.
    ``duration`` ms = the sum of the task's fragments = its slot: placement (``ts_dispatch``) to the release of its
    capacity (``ts_release``) by default; ``ts_start`` to ``ts_end`` with ``app_only``.
    ``cpu_count`` = ``cpu_units``; ``cpu_capacity`` MHz = ``cpu_units`` x the node's per-core MHz; ``mem_capacity``
    KB = peak RSS; ``name`` = the trace_id.
``fragments.parquet`` (``FRAGMENT_SCHEMA``), grouped by task in id order, in time order within a task:
    ``id`` the task id; ``duration`` ms (> 0); ``cpu_usage`` MHz across the task's cores. A task's fragments are
    its lead (placement -> start, only when > 0 ms), its CTS rows, its trail (end -> release, only when > 0 ms);
    ``sum(cpu_usage x duration) / MHz`` = the task's exact CPU ms; no fragment above the task's physical ceiling
    (``fragments.ceiling_cores``: ``cpu_units`` cores when bound exclusively, the node's cores otherwise) unless
    the task measured more CPU than that ceiling allows over its whole slot (counted in the summary).
Task ids (``task_ids``, ``--task-id-mode``): ``dense`` 0..n-1 (default); the original Tracekit's schemes: ``pid``
    (id = the execution's PID; refused when PIDs repeat among the exported tasks), ``sequential`` (1..n in task
    order), ``auto`` (``pid`` when the PIDs are unique, else ``sequential``, as the original decided).
``small_datacenter.json`` in the original's format on request (``original_small_datacenter``, ``--small-datacenter
    original``): ``{"clusters": [{"name": "C01", "hosts": [{"name": "H01", "count": N, "cpu": {"coreCount": C,
    "coreSpeed": <int MHz>}, "memory": {"memorySize": <bytes>}}, ...]}]}``, one host entry per distinct (cores,
    MHz, memory) with the number of such nodes, names H01.. in sorted spec order; MHz rounded to 100 and memory
    to whole GiB, as the original's ``nodes.json`` held them.
``topology.json`` (= ``small_datacenter.json`` by default):
    ``{"clusters": [{"name": "tracekit", "count": 1, "hosts": [...]}]}``,
    one host entry per node, in node order: ``{"name": <node_id>, "count": 1, "cpu": {"coreCount": <cpu_cores>,
    "coreSpeed": "<per-core MHz / 1000> GHz", "count": 1, "modelName": <cpu_model>}, "memory": {"size":
    "<mem_mb> MiB" | "<GiB> GiB"}}``. One entry per node (not one per identical spec with ``count``): OpenDC names
    a host after its entry and offers one empty host per entry as a candidate, so each node stays a candidate
    under its own name, as in the real scheduler.
``experiment.json``: ``{"name", "topologies": [{"importFrom": "topology.json"}], "workloads": [{"type": "trace",
    "source": {"type": "uri", "uri": "."}, "scalingPolicy": "NoDelay", "sampleFraction": 1.0, "deferAll": false}],
    "allocationPolicies": [allocation_policy(...)], "exportModels": [{"exportInterval": "<N> seconds"}], "runs": 1,
    "initialSeed": 0}``. Paths are relative to the experiment file, so the folder can be moved whole.

The allocation policy is ``allocation_policy(weigher, order, allocation_ratio, parallel)`` (public and pure, the
replay uses the same mapping): a ``filter`` policy, filters ``vcpu`` at the run's allocation ratio (``capacity /
cpu_cores`` of the workers, ``export_ratio``) and ``ram`` at 1.0, plus ``instanceCount`` with ``limit`` =
``parallel`` when the workers had slot tokens; weighers: none for first-fit, ``instanceCount`` (multiplier -1.0 for
``min``, +1.0 for ``max``) for ``instances``, ``vcpu`` (+1.0 for ``min``, -1.0 for ``max``) for ``vcpu``; OpenDC
takes the highest weighted score. ``policy_differences`` says what is not exact.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tracekit.core.errors import BadInput, BadRunFolder, UsageError
from tracekit.trace.export.fragments import ceiling_cores, fit_run, insert_slot_edges, row_caps_us
from tracekit.trace.reader import NotGrouped, open_cts
from tracekit.trace.rowcache import ROWS_CACHE
from tracekit.trace.vocabulary import PROC_METRICS, has_run, invocation_order_key, shared_hosts

TASKS, FRAGMENTS, TOPOLOGY, EXPERIMENT = "tasks.parquet", "fragments.parquet", "topology.json", "experiment.json"
SMALL_DATACENTER = "small_datacenter.json"  # the topology again, under the name the original seed promised

TASK_SCHEMA = pa.schema([
    pa.field("id", pa.int32(), nullable=False),
    pa.field("submission_time", pa.int64(), nullable=False),  # epoch ms
    pa.field("duration", pa.int64(), nullable=False),  # ms = sum of the task's fragments
    pa.field("cpu_count", pa.int32(), nullable=False),  # requested cpu_units
    pa.field("cpu_capacity", pa.float64(), nullable=False),  # MHz for the whole task = cores x per-core MHz
    pa.field("mem_capacity", pa.int64(), nullable=False),  # KB (peak RSS)
    pa.field("name", pa.string(), nullable=True),  # the trace_id
])
FRAGMENT_SCHEMA = pa.schema([
    pa.field("id", pa.int32(), nullable=False),
    pa.field("duration", pa.int64(), nullable=False),  # ms
    pa.field("cpu_usage", pa.float64(), nullable=False),  # MHz across the task's cores
])
REQUIRED_TASK_COLUMNS = tuple(f.name for f in TASK_SCHEMA if not f.nullable)
REQUIRED_FRAGMENT_COLUMNS = tuple(f.name for f in FRAGMENT_SCHEMA if not f.nullable)


def node_mhz(nodes: list[dict], needed: set, cpu_freq_mhz: float | None) -> dict[str, float]:
    """Per-core MHz per node: nodes.json cpu_freq_mhz, else --cpu-freq-mhz, else a clear error (never a constant)."""
    out, missing = {}, []
    by_id = {n.get("node_id"): n for n in nodes}
    for nid in sorted(needed, key=str):
        mhz = (by_id.get(nid) or {}).get("cpu_freq_mhz")
        if isinstance(mhz, (int, float)) and mhz > 0:
            out[nid] = float(mhz)
        elif cpu_freq_mhz:
            out[nid] = float(cpu_freq_mhz)
        else:
            missing.append(str(nid))
    if missing:
        raise UsageError(f"per-core CPU MHz unknown for node(s) {', '.join(missing)} (no cpu_freq_mhz in nodes.json): "
                         "pass --cpu-freq-mhz MHZ")
    return out


# ---- the real scheduler in OpenDC's terms (pure; the replay uses the same mapping) ----
WEIGHER_MULTIPLIER = {  # (weigher, order) -> (OpenDC weigher type, multiplier); OpenDC prefers the highest score
    # OpenDC's FilterScheduler starts its best weight at Double.MIN_VALUE (the smallest positive double), so a
    # weigher with a negative multiplier never beats it and the first candidate wins: "fewest tasks" and "most
    # used" must be said with a positive multiplier on another weigher.
    ("instances", "min"): ("vcpu", 1.0),  # most free vCPUs first: spreads like fewest tasks per capacity unit
    ("instances", "max"): ("instanceCount", 1.0),  # most tasks first
    ("vcpu", "min"): ("vcpu", 1.0),  # OpenDC's vcpu weight = cores x ratio - provisioned cores: most free first
    ("vcpu", "max"): ("instanceCount", 1.0),  # most used first, by task count (the negative vcpu weigher cannot)
}


def allocation_policy(weigher: str, order: str, allocation_ratio: float, parallel: int = 0) -> dict:
    """The ``allocationPolicies`` entry closest to Tracekit's scheduler (``weigher`` '' = first-fit; ``order`` min |
    max; ``allocation_ratio`` = capacity / cores of the workers; ``parallel`` > 0 = slot tokens per node)."""
    if not (allocation_ratio > 0 and np.isfinite(allocation_ratio)):
        raise ValueError(f"allocation ratio must be > 0, not {allocation_ratio!r}")
    filters: list[dict] = [{"type": "vcpu", "allocationRatio": float(allocation_ratio)},
                           {"type": "ram", "allocationRatio": 1.0}]
    if parallel and parallel > 0:
        filters.append({"type": "instanceCount", "limit": int(parallel)})
    weighers = []
    if weigher:
        try:
            kind, mult = WEIGHER_MULTIPLIER[(weigher, order)]
        except KeyError:
            raise ValueError(f"no OpenDC weigher for weigher {weigher!r} order {order!r}") from None
        weighers.append({"type": kind, "multiplier": mult})
    return {"type": "filter", "filters": filters, "weighers": weighers, "subsetSize": 1}


def policy_differences(weigher: str, order: str) -> list[str]:
    """What OpenDC's policy (``allocation_policy``) does differently from the real placement (docs/traces.md)."""
    out = ["OpenDC schedules on a 1 s grid (ComputeSteps.kt schedulingQuantum), the real scheduler at once",
           "the ram filter has no counterpart in the real scheduler (it only matters when the peak RSS of a "
           "node's tasks together exceeds its memory)"]
    if not weigher:
        out.insert(0, "no exact equivalent of first-fit (OpenDC has no FirstFit): with no weigher OpenDC takes the "
                      "first fitting host among the used ones (kept sorted by the vcpu filter's score: free cores, "
                      "fewest first, with ratio 1), then an empty one in topology order (FilterScheduler.kt, "
                      "SortedHostViewList.kt); the real scheduler takes the first fitting node in node_id order")
    else:
        metric = "run_count / cap_total" if weigher == "instances" else "(cap_total - cap) / cap_total"
        kind, _ = WEIGHER_MULTIPLIER[(weigher, order)]
        theirs = {"instanceCount": "instance count", "vcpu": "free vCPUs (cores x ratio - provisioned cores)"}[kind]
        out.insert(0, f"weigher {weigher}/{order}: the real scheduler compares {metric} (normalised per capacity), "
                      f"OpenDC the absolute {theirs}: the same choice only when nodes have equal capacity and, "
                      "where the weigher differs, tasks have equal cpu_units; OpenDC's negative multipliers pick the "
                      "first candidate (FilterScheduler.kt: best weight starts at Double.MIN_VALUE), so they are not "
                      "used; ties go to node_id order in the real run, to OpenDC's candidate order (used hosts, then "
                      "empty ones) there, and OpenDC's weight array is not reset between calls (FilterScheduler.kt)")
    return out


def export_ratio(nodes: list[dict]) -> tuple[float, list[str]]:
    """The one vcpu-filter allocation ratio that admits what every worker admitted, and notes when none does.

    A worker admits tasks while the sum of their ``cpu_units`` <= ``capacity`` (= floor(ratio x cores), or
    ``--capacity-units``); OpenDC's vcpu filter while provisioned + requested <= cores x ratio. Both sums are whole
    numbers, so any ratio R with capacity <= cores x R < capacity + 1 on every node decides the same.
    """
    specs = [(str(n.get("node_id")), int(n["cpu_cores"]), int(n["capacity"]), n.get("allocation_ratio"))
             for n in nodes if isinstance(n.get("cpu_cores"), int) and n["cpu_cores"] > 0
             and isinstance(n.get("capacity"), int) and n["capacity"] > 0]
    if not specs:
        ratios = [float(n["allocation_ratio"]) for n in nodes if isinstance(n.get("allocation_ratio"), (int, float))]
        r = ratios[0] if ratios else 1.0
        return r, [f"allocation ratio {r:g}: capacity or cores of the workers unknown"]

    def fits(r: float) -> bool:
        return all(cap <= cores * r < cap + 1 for _, cores, cap, _ in specs)

    cands = [float(s[3]) for s in specs if isinstance(s[3], (int, float)) and s[3] > 0]
    cands += [max(cap / cores for _, cores, cap, _ in specs)]
    for r in cands:
        if fits(r):
            return r, []
    lo = max(cap / cores for _, cores, cap, _ in specs)
    r = Counter(cands[:-1] or [lo]).most_common(1)[0][0]
    bad = [f"{nid} ({cap} units on {cores} cores)" for nid, cores, cap, _ in specs if not cap <= cores * r < cap + 1]
    return r, [f"no single allocation ratio reproduces every worker's capacity: ratio {r:g} is exported, OpenDC "
               f"admits a different number of cores on {', '.join(bad)}"]


def export_interval_s(span_ms: float) -> int:
    """An ``exportInterval`` (whole seconds) that suits a run of this length: about 300 samples, at least 1 s."""
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if span_ms <= step * 1000 * 300:
            return step
    return 3600


TASK_ID_MODES = ("dense", "auto", "pid", "sequential")
SMALL_DATACENTER_FORMATS = ("tracekit", "original")


def task_ids(tasks: list[dict], mode: str) -> tuple[np.ndarray, str]:
    """The exported task ids in task order (int32) and a note saying which scheme (module docstring)."""
    n = len(tasks)
    if mode not in TASK_ID_MODES:
        raise UsageError(f"--task-id-mode must be one of {', '.join(TASK_ID_MODES)}, not {mode!r}")
    if mode == "dense":
        return np.arange(n, dtype=np.int32), "task ids: dense 0..n-1"
    pids = [t.get("pid") for t in tasks]
    counts = Counter(pids)
    repeated = sorted((p for p, c in counts.items() if c > 1), key=str)
    if mode == "sequential" or (mode == "auto" and repeated):
        why = f" (auto: {len(repeated)} PID(s) repeat, e.g. {repeated[0]})" if mode == "auto" else ""
        return np.arange(1, n + 1, dtype=np.int32), f"task ids: sequential 1..n in task order{why}"
    if repeated:
        raise BadInput(f"--task-id-mode pid: {len(repeated)} PID(s) ran more than one exported task (e.g. PID "
                       f"{repeated[0]} ran {counts[repeated[0]]}): their ids would collide; use --task-id-mode auto "
                       "or sequential")
    return np.array(pids, dtype=np.int32), "task ids: the PIDs" + (" (auto: PIDs unique)" if mode == "auto" else "")


def original_small_datacenter(nodes: list[dict], mhz: dict[str, float]) -> dict:
    """``small_datacenter.json`` in the original Tracekit's format (module docstring): identical hosts aggregated."""
    specs: Counter = Counter()
    for nd in nodes:
        speed = float(mhz.get(nd.get("node_id")) or nd.get("cpu_freq_mhz") or 0)
        mem_mb = int(nd.get("mem_mb") or 0)
        # rounded as the original's nodes.json was (its parse: MHz to 100, memory to whole GiB)
        speed = int(round(speed / 100) * 100) if speed > 0 else 0
        mem_mb = int(round(mem_mb / 1024) * 1024) if mem_mb > 0 else 0
        specs[(int(nd.get("cpu_cores") or 0), speed, mem_mb * 1024 * 1024)] += 1
    hosts = [{"name": f"H{k:02d}", "count": c, "cpu": {"coreCount": cores, "coreSpeed": freq},
              "memory": {"memorySize": mem}}
             for k, ((cores, freq, mem), c) in enumerate(sorted(specs.items()), start=1)]
    return {"clusters": [{"name": "C01", "hosts": hosts}]}


@dataclass
class ExportSummary:
    """What the export wrote (printed by the script, returned to tests)."""

    out_dir: Path
    tasks: int = 0
    fragments: int = 0
    first_submission_ms: int | None = None
    last_end_ms: int | None = None  # last slot end (= last ts_end with app_only)
    cpu_ms: float = 0.0
    mhz_ms: float = 0.0  # sum of cpu_ms x per-core MHz (the round-trip invariant)
    skipped: Counter = field(default_factory=Counter)
    over_capacity_fragments: int = 0  # fragments above the task's cpu_capacity (cpu_units x MHz) as exported
    over_ceiling_fragments: int = 0  # fragments above the task's physical ceiling as exported (0 unless impossible)
    ceiling_fixed_tasks: int = 0  # tasks whose rows had CPU above the ceiling, moved to neighbouring rows
    ceiling_moved_ms: float = 0.0
    ceiling_max_before: float = 0.0  # highest row usage / ceiling in the CTS rows
    app_only: bool = False
    lead_ms: list = field(default_factory=list)  # [min, median, max] of the leading fragments (placement -> start)
    trail_ms: list = field(default_factory=list)
    no_release: int = 0  # tasks whose release time is not in the CTS (slot ends at ts_end)
    retries: int = 0
    retries_without_requeue: int = 0
    lost_attempts: int = 0
    real_span_ms: int | None = None  # the real run: first ts_enqueue -> last release (or ts_end) of every attempt
    policy: dict = field(default_factory=dict)
    policy_source: str = ""
    policy_notes: list[str] = field(default_factory=list)
    host_notes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def lines(self) -> list[str]:
        span = ((self.last_end_ms - self.first_submission_ms) / 1000
                if self.first_submission_ms is not None and self.last_end_ms is not None else 0.0)
        out = [*self.notes,
               f"OpenDC trace: {self.out_dir}",
               f"  tasks {self.tasks}, fragments {self.fragments}, time span {span:.3f} s, "
               f"CPU {self.cpu_ms / 3.6e6:.6f} CPU-hours"]
        if self.app_only:
            out.append("  durations: the application alone (ts_start -> ts_end; --app-only)")
        else:
            q = "/".join(f"{v:g}" for v in self.trail_ms) or "-"
            out.append(f"  durations: the slot, placement -> capacity release (lead min/median/max "
                       f"{'/'.join(f'{v:g}' for v in self.lead_ms) or '-'} ms, trail {q} ms)"
                       + (f"; {self.no_release} task(s) without a release record end at ts_end"
                          if self.no_release else ""))
        if self.real_span_ms is not None:
            out.append(f"  real run: {self.real_span_ms / 1000:.3f} s from first enqueue to last release; exported "
                       f"slots: {span:.3f} s")
        if self.skipped:
            out.append("  left out: " + ", ".join(f"{v} {k}" for k, v in sorted(self.skipped.items())))
        if self.retries:
            out.append(f"  {self.retries} retried attempt(s) submitted when re-queued"
                       + (f" ({self.retries_without_requeue} without a requeue record: submitted at placement)"
                          if self.retries_without_requeue else "")
                       + "; OpenDC queues them at the tail, the real scheduler put them at the head")
        if self.lost_attempts:
            out.append(f"  {self.lost_attempts} lost attempt(s) exported (--include-lost): their slot until the "
                       "controller reclaimed it")
        if self.ceiling_fixed_tasks:
            out.append(f"  ceilings: {self.ceiling_fixed_tasks} task(s) had rows above their physical ceiling "
                       f"(highest {self.ceiling_max_before:.2f}x): {self.ceiling_moved_ms:.3f} CPU ms moved to "
                       f"neighbouring rows; {self.over_ceiling_fragments} fragment(s) above the ceiling as exported")
        else:
            out.append("  ceilings: no row above its task's physical ceiling")
        if self.over_capacity_fragments:
            out.append(f"  {self.over_capacity_fragments} fragment(s) use more CPU than the task's cpu_capacity "
                       "(shared/unbound tasks that used more cores than their cpu_units; kept as measured)")
        if self.policy:
            kinds = ", ".join(f"{w['type']} x{w['multiplier']:g}" for w in self.policy.get("weighers", [])) or "none"
            out.append(f"  allocation policy ({self.policy_source}): filter {self.policy['filters']}, weighers {kinds}")
        out += [f"    not exact: {n}" for n in self.policy_notes]
        out += [f"  hosts: {n}" for n in self.host_notes]
        out += [f"  wrote {p}" for p in self.files]
        return out


def select_tasks(invocations: list[dict], include_failed: bool, summary: ExportSummary,
                 include_lost: bool = False) -> list[dict]:
    """Executed invocations to export, in CTS order (ok; failed with ``include_failed``; lost attempts = fenced
    executions superseded by a retry with ``include_lost``)."""
    chosen = []
    for inv in invocations:
        status = inv.get("status")
        ran = has_run(inv)
        if status == "ok" or (include_failed and status == "failed" and ran) or \
                (include_lost and status == "fenced" and ran):
            if not ran:
                summary.skipped["without a run"] += 1
                continue
            chosen.append(inv)
        else:
            summary.skipped["fenced (lost or duplicate execution)" if status == "fenced"
                            else "failed" + ("" if ran else " before running")] += 1
    chosen.sort(key=invocation_order_key)
    return chosen


def task_times(tasks: list[dict], app_only: bool, summary: ExportSummary) -> tuple[np.ndarray, ...]:
    """Per task: (submission, slot start, slot end, lead ms, trail ms) as int64 arrays (module docstring)."""
    n = len(tasks)
    sub = np.zeros(n, np.int64)
    s0 = np.zeros(n, np.int64)
    s1 = np.zeros(n, np.int64)
    for k, t in enumerate(tasks):
        start, end = int(t["ts_start"]), int(t["ts_end"])
        disp, rel = t.get("ts_dispatch"), t.get("ts_release")
        slot0 = start if app_only or disp is None else min(int(disp), start)
        if app_only:
            slot1 = end
        elif rel is None:
            slot1 = end
            summary.no_release += 1
        else:
            slot1 = max(int(rel), end)
        if (t.get("attempt") or 1) > 1:
            summary.retries += 1
            if t.get("ts_requeue") is not None:
                s = int(t["ts_requeue"])
            else:
                summary.retries_without_requeue += 1
                s = slot0
        else:
            s = t.get("ts_enqueue")
            s = int(s) if s is not None else slot0
        if t.get("status") == "fenced":
            summary.lost_attempts += 1
        sub[k], s0[k], s1[k] = min(s, slot0), slot0, slot1
    start = np.array([t["ts_start"] for t in tasks], np.int64)
    end = np.array([t["ts_end"] for t in tasks], np.int64)
    return sub, s0, s1, start - s0, s1 - end


def export(input_dir: str | Path, out_dir: str | Path, include_failed: bool = False,
           cpu_freq_mhz: float | None = None, progress: bool = False, app_only: bool = False,
           include_lost: bool = False, task_id_mode: str = "dense",
           small_datacenter: str = "tracekit") -> ExportSummary:
    """Write the OpenDC trace of a run (``input_dir`` = logs/RUN_ID or its CTS folder) into ``out_dir``;
    ``task_id_mode`` and ``small_datacenter`` as in the module docstring."""
    if small_datacenter not in SMALL_DATACENTER_FORMATS:
        raise UsageError(f"small_datacenter must be one of {', '.join(SMALL_DATACENTER_FORMATS)}")
    out = Path(out_dir)
    cts = open_cts(input_dir, progress)
    cts_dir = cts.path
    summary = ExportSummary(out_dir=out, notes=list(cts.notes), app_only=app_only)
    invs = cts.invocations()
    nodes = cts.nodes()
    tasks = select_tasks(invs, include_failed, summary, include_lost)
    if not tasks:
        raise BadRunFolder(f"{cts_dir}: no task to export ({dict(summary.skipped) or 'no invocations'})",
                           path=cts_dir)
    ids, id_note = task_ids(tasks, task_id_mode)
    if task_id_mode != "dense":
        summary.notes.append(id_note)
    mhz = node_mhz(nodes, {t["node_id"] for t in tasks}, cpu_freq_mhz)
    by_node = {n.get("node_id"): n for n in nodes}
    n = len(tasks)
    task_mhz = np.array([mhz[t["node_id"]] for t in tasks], dtype=np.float64)
    cpu_count = np.array([int(t.get("cpu_units") or 1) for t in tasks], dtype=np.int32)
    ceil = np.array([ceiling_cores(t.get("cpu_units") or 1, (by_node.get(t["node_id"]) or {}).get("cpu_cores"),
                                   t.get("binding"), t.get("binding_mechanism")) for t in tasks], dtype=np.float64)
    sub, slot0, slot1, lead, trail = task_times(tasks, app_only, summary)
    out.mkdir(parents=True, exist_ok=True)

    frag_tmp = out / (FRAGMENTS + ".tmp")
    pm = cts_dir / PROC_METRICS
    shape = _Shaper(n, task_mhz, cpu_count, ceil, lead, trail)
    try:  # as the parser wrote them (the row cache, or the file grouped by task in task order), in file order
        _write_fragments(_progress(cts.task_rows(tasks), progress), frag_tmp, shape, pm, ids)
        if cts.row_cache() is not None:
            summary.notes.append(f"fragments read from the parser's row cache ({ROWS_CACHE})")
    except NotGrouped:  # hand-edited / concatenated CTS: let DuckDB join and order the rows
        shape = _Shaper(n, task_mhz, cpu_count, ceil, lead, trail)
        try:
            _write_fragments(_progress(cts.sorted_task_rows(tasks, out / ".export-spill"), progress),
                             frag_tmp, shape, pm, ids)
        except BaseException:
            frag_tmp.unlink(missing_ok=True)
            raise
    except BaseException:
        frag_tmp.unlink(missing_ok=True)
        raise
    start = np.array([t["ts_start"] for t in tasks], dtype=np.int64)
    end = np.array([t["ts_end"] for t in tasks], dtype=np.int64)
    no_frag = np.flatnonzero(shape.rows == 0)
    if no_frag.size:
        frag_tmp.unlink(missing_ok=True)
        raise BadInput(f"{no_frag.size} task(s) have no proc_metrics rows (e.g. {tasks[no_frag[0]]['trace_id']}): "
                       "OpenDC would drop them silently; re-run make parse", path=pm)
    bad_dur = np.flatnonzero(shape.run_ms != end - start)
    if bad_dur.size:
        frag_tmp.unlink(missing_ok=True)
        k = bad_dur[0]
        raise BadInput(f"{bad_dur.size} task(s) whose rows do not cover ts_start..ts_end (e.g. "
                       f"{tasks[k]['trace_id']}: {shape.run_ms[k]} vs {end[k] - start[k]} ms); re-run make parse",
                       path=pm)
    duration = slot1 - slot0
    if not np.array_equal(shape.dur_sum, duration):  # the shaper's own invariant: fragments = the slot
        frag_tmp.unlink(missing_ok=True)
        raise AssertionError("fragment durations do not add up to the slot")
    mem = np.array([max(int(t.get("max_rss_kb") or 0), int(p)) for t, p in zip(tasks, shape.peak)], dtype=np.int64)
    table = pa.Table.from_arrays([
        pa.array(ids, pa.int32()), pa.array(sub, pa.int64()),
        pa.array(duration, pa.int64()), pa.array(cpu_count, pa.int32()),
        pa.array(cpu_count * task_mhz, pa.float64()), pa.array(mem, pa.int64()),
        pa.array([str(t["trace_id"]) for t in tasks], pa.string())], schema=TASK_SCHEMA)
    task_tmp = out / (TASKS + ".tmp")
    pq.write_table(table, task_tmp)
    os.replace(task_tmp, out / TASKS)
    os.replace(frag_tmp, out / FRAGMENTS)

    summary.tasks = n
    summary.fragments = shape.fragments
    summary.first_submission_ms = int(sub.min())
    summary.last_end_ms = int(slot1.max())
    summary.cpu_ms = float(shape.cpu_us.sum()) / 1000
    summary.mhz_ms = float((shape.cpu_us / 1000 * task_mhz).sum())
    summary.over_capacity_fragments = shape.over_capacity
    summary.over_ceiling_fragments = shape.over_ceiling
    summary.ceiling_fixed_tasks = shape.fixed_tasks
    summary.ceiling_moved_ms = shape.moved_us / 1000
    summary.ceiling_max_before = shape.max_ratio
    if not app_only:
        summary.lead_ms = [int(lead.min()), float(np.median(lead)), int(lead.max())]
        summary.trail_ms = [int(trail.min()), float(np.median(trail)), int(trail.max())]
    summary.real_span_ms = _real_span(invs)

    weigher, order, summary.policy_source, notes = _run_policy(cts.placement_policies())
    ratio, ratio_notes = export_ratio(nodes)
    pars = sorted({int(nd.get("parallel") or 0) for nd in nodes}) or [0]
    par = pars[-1]
    if len(pars) > 1:
        notes.append(f"workers had different slot-token counts (parallel {pars}; 0 = none): the instanceCount "
                     f"filter's limit {par} applies to every host")
    summary.policy = allocation_policy(weigher, order, ratio, par)
    summary.policy_notes = [*notes, *ratio_notes, *policy_differences(weigher, order)]
    topo = topology(nodes, mhz, cpu_freq_mhz)
    summary.host_notes = host_notes(nodes, topo, tasks)
    (out / TOPOLOGY).write_text(json.dumps(topo, indent=2) + "\n")
    small = topo if small_datacenter == "tracekit" else original_small_datacenter(
        [nd for nd in nodes if nd.get("node_id") in mhz], mhz)
    (out / SMALL_DATACENTER).write_text(json.dumps(small, indent=2) + "\n")
    run_name = cts_dir.parent.name if cts_dir.name == "CTS" else cts_dir.name
    span = int(slot1.max() - sub.min())
    (out / EXPERIMENT).write_text(json.dumps(experiment(run_name, summary.policy, span), indent=2) + "\n")
    summary.files = [out / TASKS, out / FRAGMENTS, out / TOPOLOGY, out / SMALL_DATACENTER, out / EXPERIMENT]
    return summary


def _real_span(invs: list[dict]) -> int | None:
    firsts = [int(i["ts_enqueue"]) for i in invs if i.get("ts_enqueue") is not None]
    lasts = [int(i.get("ts_release") or i["ts_end"]) for i in invs if has_run(i)]
    return max(lasts) - min(firsts) if firsts and lasts else None


def _run_policy(seen: Counter) -> tuple[str, str, str, list[str]]:
    """(weigher, order, where it came from, notes) from the placements' Counter of (weigher, order)."""
    if not seen:
        return "", "min", "first-fit assumed: no placements.jsonl next to the CTS", []
    (weigher, order), count = seen.most_common(1)[0]
    notes = []
    if len(seen) > 1:
        notes.append("the run changed its weigher: " + ", ".join(f"{w or 'first-fit'}/{o} x{c}"
                                                                  for (w, o), c in seen.most_common()))
    name = f"weigher {weigher}, order {order}" if weigher else "first-fit"
    return weigher, order, f"{name}, from {count} placement(s) in placements.jsonl", notes


class _Shaper:
    """Turns whole tasks' CTS rows into fragments (fragments.py) and keeps the per-task totals."""

    def __init__(self, n: int, task_mhz: np.ndarray, cpu_count: np.ndarray, ceil: np.ndarray, lead: np.ndarray,
                 trail: np.ndarray) -> None:
        self.task_mhz, self.cpu_count, self.ceil, self.lead, self.trail = task_mhz, cpu_count, ceil, lead, trail
        self.run_ms = np.zeros(n, np.int64)
        self.dur_sum = np.zeros(n, np.int64)
        self.rows = np.zeros(n, np.int64)
        self.peak = np.zeros(n, np.int64)
        self.cpu_us = np.zeros(n, np.int64)
        self.fragments = self.over_capacity = self.over_ceiling = self.fixed_tasks = self.moved_us = 0
        self.max_ratio = 0.0

    def shape(self, ids: np.ndarray, dt: np.ndarray, cpu_us: np.ndarray, rss: np.ndarray) -> tuple[np.ndarray, ...]:
        n = len(self.run_ms)
        self.run_ms += np.bincount(ids, weights=dt, minlength=n).astype(np.int64)
        self.rows += np.bincount(ids, minlength=n)
        self.cpu_us += np.bincount(ids, weights=cpu_us, minlength=n).astype(np.int64)
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        first = ids[starts]
        self.peak[first] = np.maximum(self.peak[first], np.maximum.reduceat(rss, starts))
        caps = row_caps_us(dt, self.ceil[ids])
        over = cpu_us > caps
        lead_cpu = trail_cpu = None
        if over.any():
            ratio = cpu_us / np.maximum(caps, 1)
            self.max_ratio = max(self.max_ratio, float(ratio[over].max()))
            cpu_us = cpu_us.copy()
            lead_cpu = np.zeros(n, np.int64)
            trail_cpu = np.zeros(n, np.int64)
            ends = np.r_[starts[1:], len(ids)]
            for k in np.unique(np.searchsorted(starts, np.flatnonzero(over), side="right") - 1):
                a, b = starts[k], ends[k]
                t = ids[a]
                f = fit_run(dt[a:b], cpu_us[a:b], self.ceil[t], self.lead[t], self.trail[t])
                cpu_us[a:b] = f.run_cpu_us
                lead_cpu[t], trail_cpu[t] = f.lead_cpu_us, f.trail_cpu_us
                self.fixed_tasks += 1
                self.moved_us += f.moved_us
        ids, dt, cpu_us = insert_slot_edges(ids, dt, cpu_us, self.lead, self.trail, lead_cpu, trail_cpu)
        self.dur_sum += np.bincount(ids, weights=dt, minlength=n).astype(np.int64)
        self.fragments += len(ids)
        usage = cpu_us / 1000 / dt * self.task_mhz[ids]
        self.over_capacity += int(np.count_nonzero(usage > self.cpu_count[ids] * self.task_mhz[ids] * 1.0001))
        self.over_ceiling += int(np.count_nonzero(cpu_us > row_caps_us(dt, self.ceil[ids])))
        return ids, dt, usage


def _whole_tasks(batches: Iterable[pa.RecordBatch], pm: Path) -> Iterator[tuple[np.ndarray, ...]]:
    """(ids, dt_ms, cpu_us, rss_kb) numpy chunks holding whole tasks only (a task split across batches is joined)."""
    carry: tuple | None = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        if batch["cpu_ms"].null_count or batch["dt_ms"].null_count:
            raise BadInput(f"{pm}: a row without cpu_ms/dt_ms; re-run make parse", path=pm)
        ids = batch["id"].to_numpy(zero_copy_only=False).astype(np.int64)
        dt = batch["dt_ms"].to_numpy(zero_copy_only=False).astype(np.int64)
        if (dt <= 0).any():
            raise BadInput(f"{pm}: a row with dt_ms <= 0; re-run make parse", path=pm)
        cpu = np.rint(batch["cpu_ms"].to_numpy(zero_copy_only=False) * 1000).astype(np.int64)
        rss = batch["rss_kb"].fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        cols = (ids, dt, cpu, rss)
        if carry is not None:
            cols = tuple(np.concatenate([c, x]) for c, x in zip(carry, cols))
        last = np.searchsorted(cols[0], cols[0][-1], side="left")  # ids are ordered: the last task starts here
        carry = tuple(c[last:] for c in cols)
        if last:
            yield tuple(c[:last] for c in cols)
    if carry is not None and len(carry[0]):
        yield carry


def _write_fragments(batches: Iterable[pa.RecordBatch], frag_tmp: Path, shape: _Shaper, pm: Path,
                     task_id: np.ndarray) -> None:
    """Stream whole tasks' rows (id, ts_ms, dt_ms, cpu_ms, rss_kb; ordered by id) into fragments.parquet; a task's
    position k is written as ``task_id[k]``."""
    with pq.ParquetWriter(frag_tmp, FRAGMENT_SCHEMA) as writer:
        for ids, dt, cpu, rss in _whole_tasks(batches, pm):
            fids, fdt, usage = shape.shape(ids, dt, cpu, rss)
            writer.write_batch(pa.RecordBatch.from_arrays(
                [pa.array(task_id[fids], pa.int32()), pa.array(fdt, pa.int64()),
                 pa.array(usage, pa.float64())], schema=FRAGMENT_SCHEMA))


def _progress(batches: Iterable[pa.RecordBatch], progress: bool) -> Iterator[pa.RecordBatch]:
    if not progress:
        yield from batches
        return
    from tqdm import tqdm

    with tqdm(desc="export fragments", unit=" rows", unit_scale=True, mininterval=0.5, leave=False) as bar:
        for b in batches:
            bar.update(b.num_rows)
            yield b


def _fmt_mhz(mhz: float) -> str:
    """Per-core speed as the unit string OpenDC's topology reader parses ("2.1 GHz")."""
    return f"{mhz / 1000:g} GHz"


def _fmt_mem(mem_mb: int) -> str:
    """Memory as OpenDC's unit string ("16 GiB", or MiB when not a whole number of GiB)."""
    return f"{mem_mb // 1024} GiB" if mem_mb and mem_mb % 1024 == 0 else f"{mem_mb} MiB"


def topology(nodes: list[dict], mhz: dict[str, float], default_mhz: float | None) -> dict:
    """OpenDC topology (module docstring): one cluster ``tracekit``, one host entry per node, in node order."""
    hosts = []
    for nd in sorted(nodes, key=lambda x: str(x.get("node_id"))):
        speed = mhz.get(nd.get("node_id")) or nd.get("cpu_freq_mhz") or default_mhz
        if not speed:
            continue  # a node that ran nothing exported and has no known MHz: not simulated (host_notes says so)
        hosts.append({"name": str(nd.get("node_id")), "count": 1,
                      "cpu": {"coreCount": int(nd.get("cpu_cores") or 1), "coreSpeed": _fmt_mhz(float(speed)),
                              "count": 1, "modelName": str(nd.get("cpu_model") or "unknown")},
                      "memory": {"size": _fmt_mem(int(nd.get("mem_mb") or 0))}})
    return {"clusters": [{"name": "tracekit", "count": 1, "hosts": hosts}]}


def host_notes(nodes: list[dict], topo: dict, tasks: list[dict]) -> list[str]:
    """What the summary (and the audit) say about the hosts: shared machines, nodes left out, big tasks."""
    out = []
    by_id = {str(n.get("node_id")): n for n in nodes}
    for group in shared_hosts(nodes):
        cores = sum(int(by_id[g].get("cpu_cores") or 0) for g in group)
        phys = max(int(by_id[g].get("cpu_cores") or 0) for g in group)
        out.append(f"{', '.join(group)} run on one machine (same kernel: emulated or overlapping nodes): "
                   f"exported as {len(group)} hosts with {cores} cores, but they shared {phys} physical cores; the "
                   "measured fragments already carry that contention, a simulation of other loads on this "
                   "topology would not")
    names = {h["name"] for c in topo["clusters"] for h in c["hosts"]}
    missing = sorted(str(n.get("node_id")) for n in nodes if str(n.get("node_id")) not in names)
    if missing:
        out.append(f"not in the topology (per-core MHz unknown and nothing exported from them): {', '.join(missing)}")
    cores = {h["name"]: h["cpu"]["coreCount"] for c in topo["clusters"] for h in c["hosts"]}
    big = sum(1 for t in tasks if int(t.get("cpu_units") or 1) > max(cores.values(), default=0))
    if big:
        out.append(f"{big} task(s) ask for more cores than any host has: OpenDC's vcpu filter never admits them "
                   "(\"does not fit\")")
    return out


def experiment(run_name: str, policy: dict, span_ms: int) -> dict:
    """OpenDC experiment (SDK model; module docstring), written next to the trace and the topology."""
    return {"name": f"tracekit-{run_name}",
            "topologies": [{"importFrom": TOPOLOGY}],
            "workloads": [{"type": "trace", "source": {"type": "uri", "uri": "."}, "scalingPolicy": "NoDelay",
                           "sampleFraction": 1.0, "deferAll": False}],
            "allocationPolicies": [policy],
            "exportModels": [{"exportInterval": f"{export_interval_s(span_ms)} seconds"}],
            "runs": 1,
            "initialSeed": 0}
