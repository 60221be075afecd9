"""The replay check's files (docs/traces.md, Replay check): read an exported trace + its SDK-model experiment, run
``trace.replay.simulate`` on OpenDC's 1 s grid and on a 1 ms grid, write OpenDC's ``task.parquet`` for each, compare
with the real run (CTS) and put a "Replay (OpenDC rules)" section into ``audit_report.md``.

Input: ``<trace>/{tasks,fragments}.parquet`` (the export's contract) and ``experiment.json`` in OpenDC's current
SDK model (``opendc-sdk/opendc-sdk-model``): ``{"importFrom": ...}`` composes files relative to the importing file
(``opendc-cli/.../ExperimentImports.kt``), ``topologies[0].clusters[].hosts[]`` with unit strings, and
``allocationPolicies[0]`` (default: prefab Mem). A legacy experiment (``topologies: [{"pathToFile": ...}]``) is
refused with one line.

Output, OpenDC's layout (``opendc-sdk-runner/.../sink/ParquetSink.kt``):
``<out>/<grid>/<experiment name>/raw-output/0/seed=0/task.parquet`` for grid ``1s`` and ``1ms``, with the columns
and physical types of ``DfltTaskExportColumns.kt`` (``TASK_OUTPUT_SCHEMA``), and ``<out>/replay.json`` (figures).
OpenDC writes one row per task per export interval; the replay writes one row per task, at its finish (the row
OpenDC writes last for it carries the same ``schedule_time``/``finish_time``/``task_state``). As in OpenDC,
``submission_time`` is the trace's epoch ms, ``timestamp``, ``schedule_time`` and ``finish_time`` are simulated ms
since the first submission and ``timestamp_absolute`` = ``timestamp`` + the first submission. CPU columns come from
the fragments (the replay does not model the host's CPU sharing): ``cpu_limit`` = the task's ``cpu_capacity``,
``cpu_usage`` = ``cpu_demand`` = its mean MHz over the run, ``cpu_time_active`` = CPU-ms at that limit.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tracekit.core.errors import BadInput
from tracekit.trace import replay as rp
from tracekit.trace.export.opendc import policy_differences
from tracekit.trace.vocabulary import INVOCATIONS, has_run

TASKS, FRAGMENTS, EXPERIMENT = "tasks.parquet", "fragments.parquet", "experiment.json"
OUTPUT_DIR = "opendc-replay"  # beside the trace folder: logs/RUN_ID/opendc-replay
TASK_OUTPUT = "task.parquet"
SUMMARY = "replay.json"
GRIDS = ((rp.QUANTUM_OPENDC_MS, "1s"), (rp.QUANTUM_JUDGE_MS, "1ms"))
REPORT_BEGIN, REPORT_END = "<!-- replay:begin -->", "<!-- replay:end -->"

# opendc-compute/opendc-compute-simulator/.../telemetry/parquet/DfltTaskExportColumns.kt (required = not null)
TASK_OUTPUT_SCHEMA = pa.schema([
    pa.field("timestamp", pa.int64(), nullable=False),
    pa.field("timestamp_absolute", pa.int64(), nullable=False),
    pa.field("task_id", pa.int32(), nullable=False),
    pa.field("task_name", pa.string(), nullable=False),
    pa.field("host_name", pa.string(), nullable=False),
    pa.field("mem_capacity", pa.int64(), nullable=False),
    pa.field("cpu_count", pa.int32(), nullable=False),
    pa.field("cpu_limit", pa.float32(), nullable=False),
    pa.field("cpu_usage", pa.float32(), nullable=False),
    pa.field("cpu_demand", pa.float32(), nullable=False),
    pa.field("cpu_time_active", pa.int64(), nullable=False),
    pa.field("cpu_time_idle", pa.int64(), nullable=False),
    pa.field("cpu_time_steal", pa.int64(), nullable=False),
    pa.field("cpu_time_lost", pa.int64(), nullable=False),
    pa.field("uptime", pa.int64(), nullable=False),
    pa.field("downtime", pa.int64(), nullable=False),
    pa.field("num_failures", pa.int64(), nullable=False),
    pa.field("num_pauses", pa.int64(), nullable=False),
    pa.field("schedule_time", pa.int64(), nullable=True),
    pa.field("submission_time", pa.int64(), nullable=True),
    pa.field("finish_time", pa.int64(), nullable=True),
    pa.field("task_state", pa.string(), nullable=True),
    pa.field("scheduling_delay", pa.int64(), nullable=True),
    pa.field("failure_delay", pa.int64(), nullable=True),
    pa.field("checkpoint_delay", pa.int64(), nullable=True),
])


# --- units (opendc-common/.../units/{Frequency,DataSize,UnitSerializer}.kt) ---------------------------------------

_NUM = r"\s*([\de.-]+)\s*"
_FREQ = re.compile(_NUM + r"(k|kilo|m|mega|g|giga)?\s*(?:hz|hertz)\s*", re.IGNORECASE)
_FREQ_MHZ = {None: 1e-6, "k": 1e-3, "kilo": 1e-3, "m": 1.0, "mega": 1.0, "g": 1e3, "giga": 1e3}
_SIZE = re.compile(_NUM + r"(K|Kilo|k|kilo|Ki|Kibi|ki|kibi|M|Mega|m|mega|Mi|Mebi|mi|mebi|G|Giga|g|giga|Gi|Gibi|gi|"
                   r"gibi|T|Tera|t|tera|Ti|Tebi|ti|tebi)?\s*(B|[Bb]ytes?|b|[Bb]its?)\s*")
_SIZE_BYTES = {None: 1.0, "k": 1e3, "kilo": 1e3, "ki": 1024.0, "kibi": 1024.0, "m": 1e6, "mega": 1e6,
               "mi": 1024.0 ** 2, "mebi": 1024.0 ** 2, "g": 1e9, "giga": 1e9, "gi": 1024.0 ** 3, "gibi": 1024.0 ** 3,
               "t": 1e12, "tera": 1e12, "ti": 1024.0 ** 4, "tebi": 1024.0 ** 4}


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise BadInput(f"{what}: {text!r} is not a number") from None


def frequency_mhz(value: object, what: str = "coreSpeed") -> float:
    """"2.4454 GHz" -> 2445.4; a bare number is MHz (as OpenDC assumes, with a warning there)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = _FREQ.fullmatch(value) if isinstance(value, str) else None
    if not m:
        raise BadInput(f"{what}: {value!r} is not a frequency OpenDC reads (e.g. \"2.4 GHz\")")
    return _number(m.group(1), what) * _FREQ_MHZ[(m.group(2) or "").lower() or None]


def size_mib(value: object, what: str = "memory.size") -> float:
    """"24105 MiB" -> 24105.0, "16 GiB" -> 16384.0, "8 GB" -> 7629.39...; a bare number is MiB (as OpenDC)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if not m:
        raise BadInput(f"{what}: {value!r} is not a data size OpenDC reads (e.g. \"16 GiB\", \"24105 MiB\")")
    prefix = (m.group(2) or "").lower() or None
    bits = m.group(3) == "b" or m.group(3).lower().startswith("bit")
    return _number(m.group(1), what) * _SIZE_BYTES[prefix] / (8 if bits else 1) / 1024.0 ** 2


# --- experiment and topology (SDK model) ------------------------------------------------------------------------


def resolve_imports(value: object, base_dir: Path, chain: tuple[Path, ...]) -> object:
    """ExperimentImports.kt: any object may name ``importFrom`` (relative to the file declaring it); the imported
    object supplies the fields, the local keys win; imports nest; a cycle or a missing file is an error."""
    if isinstance(value, list):
        return [resolve_imports(v, base_dir, chain) for v in value]
    if not isinstance(value, dict):
        return value
    local = {k: resolve_imports(v, base_dir, chain) for k, v in value.items() if k != "importFrom"}
    if "importFrom" not in value:
        return local
    ref = value["importFrom"]
    if not isinstance(ref, str):
        raise BadInput(f"{chain[-1]}: 'importFrom' must be a path")
    path = (Path(ref) if Path(ref).is_absolute() else base_dir / ref).resolve()
    if path in chain:
        raise BadInput(f"{chain[-1]}: '{ref}' imports itself ({' -> '.join(p.name for p in (*chain, path))})")
    if not path.is_file():
        raise BadInput(f"{chain[-1]}: the imported file '{ref}' does not exist (looked in {path})", path=path)
    imported = _read_json_object(path)
    return {**resolve_imports(imported, path.parent, (*chain, path)), **local}


def _read_json_object(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path}: not readable as JSON ({exc})", path=path) from None
    if not isinstance(doc, dict):
        raise BadInput(f"{path}: must contain a JSON object", path=path)
    return doc


@dataclass
class Experiment:
    """What the replay needs from an SDK-model experiment."""

    path: Path
    name: str
    hosts: list[rp.Host]
    policy: rp.Policy
    workload: Path | None  # the trace folder the workload names (resolved), if any
    notes: list[str] = field(default_factory=list)


def read_experiment(path: str | Path) -> Experiment:
    """experiment.json (SDK model, FACTS.md §4) -> hosts, policy, workload folder; a clear one-line error otherwise."""
    path = Path(path).resolve()
    if not path.is_file():
        raise BadInput(f"{path}: no experiment file (run make export first)", path=path)
    raw = _read_json_object(path)
    topos = raw.get("topologies")
    if isinstance(topos, list) and any(isinstance(t, dict) and "pathToFile" in t for t in topos):
        raise BadInput(f"{path}: legacy experiment (topologies[].pathToFile is only read by `opendc --legacy`); "
                       "the replay reads OpenDC's current SDK model ({\"importFrom\": \"topology.json\"}): "
                       "re-export with the current exporter", path=path)
    doc = resolve_imports(raw, path.parent, (path,))
    notes: list[str] = []
    topos = doc.get("topologies")
    if not isinstance(topos, list) or not topos or not isinstance(topos[0], dict):
        raise BadInput(f"{path}: 'topologies' (required) must be a non-empty list of topologies", path=path)
    if len(topos) > 1:
        notes.append(f"{len(topos)} topologies: the replay uses the first")
    hosts = topology_hosts(topos[0], f"{path.name}: topologies[0]")
    pols = doc.get("allocationPolicies")
    if pols in (None, []):
        policy = rp.DEFAULT_POLICY
        notes.append("no allocationPolicies: OpenDC's default prefab Mem (VCpuFilter + RamFilter + RamWeigher)")
    elif not isinstance(pols, list) or not isinstance(pols[0], dict):
        raise BadInput(f"{path}: 'allocationPolicies' must be a list of policies", path=path)
    else:
        if len(pols) > 1:
            notes.append(f"{len(pols)} allocation policies: the replay uses the first")
        policy = allocation_policy(pols[0], f"{path.name}: allocationPolicies[0]")
    workload = None
    loads = doc.get("workloads")
    if not isinstance(loads, list) or not loads or not isinstance(loads[0], dict):
        raise BadInput(f"{path}: 'workloads' (required) must be a non-empty list", path=path)
    w = loads[0]
    if w.get("scalingPolicy", "NoDelay") != "NoDelay":
        notes.append(f"workload scalingPolicy {w.get('scalingPolicy')!r}: the replay models NoDelay only")
    src = w.get("source") if isinstance(w.get("source"), dict) else {}
    ref = src.get("name") if src.get("type") == "named" else src.get("uri") if src.get("type") == "uri" else None
    if isinstance(ref, str):  # a named reference and a scheme-less uri resolve against the experiment's folder
        ref = ref[len("file://"):] if ref.startswith("file://") else ref
        workload = (Path(ref) if Path(ref).is_absolute() else path.parent / ref).resolve()
    name = doc.get("name") if isinstance(doc.get("name"), str) and doc.get("name") else "experiment"
    return Experiment(path, name, hosts, policy, workload, notes)


def topology_hosts(topo: dict, where: str) -> list[rp.Host]:
    """TopologySpec -> hosts, named as opendc-sdk-runner/.../factory/TopologyFactory.kt names them."""
    clusters = topo.get("clusters")
    if not isinstance(clusters, list) or not clusters:
        raise BadInput(f"{where}: 'clusters' (required) must be a non-empty list")
    seen: dict[str, int] = {}

    def unique(name: str) -> str:  # TopologyNaming.unique: "name", then "name-0", "name-1", ...
        if name not in seen:
            seen[name] = 0
            return name
        seen[name] += 1
        return f"{name}-{seen[name] - 1}"

    hosts = []
    for ci, cl in enumerate(clusters):
        if not isinstance(cl, dict) or not isinstance(cl.get("hosts"), list) or not cl["hosts"]:
            raise BadInput(f"{where}.clusters[{ci}]: 'hosts' (required) must be a non-empty list")
        for _ in range(_count(cl, f"{where}.clusters[{ci}]")):
            for hi, h in enumerate(cl["hosts"]):
                at = f"{where}.clusters[{ci}].hosts[{hi}]"
                cpu, mem = h.get("cpu"), h.get("memory")
                if not isinstance(cpu, dict) or not isinstance(mem, dict):
                    raise BadInput(f"{at}: 'cpu' and 'memory' are required objects")
                cores = cpu.get("coreCount")
                if not isinstance(cores, int) or isinstance(cores, bool) or cores < 1:
                    raise BadInput(f"{at}.cpu.coreCount: must be an integer >= 1 (got {cores!r})")
                cores *= _count(cpu, f"{at}.cpu")  # MachineModel.java: the CPUs of a host become one
                if "coreSpeed" not in cpu or "size" not in mem:
                    raise BadInput(f"{at}: cpu.coreSpeed and memory.size are required")
                mhz = frequency_mhz(cpu["coreSpeed"], f"{at}.cpu.coreSpeed")
                mib = int(size_mib(mem["size"], f"{at}.memory.size"))  # toMiB().toLong(): truncated
                hname = h.get("name", "Host")  # HostSpec.kt default name
                for _ in range(_count(h, at)):
                    hosts.append(rp.Host(unique(str(hname)), str(hname), cores, mhz, mib))
    return hosts


def _count(obj: dict, where: str) -> int:
    n = obj.get("count", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise BadInput(f"{where}.count: must be an integer >= 1 (got {n!r})")
    return n


def allocation_policy(spec: dict, where: str) -> rp.Policy:
    """AllocationPolicySpec.kt (prefab | filter) -> Policy; what the replay cannot model is a one-line error."""
    kind = spec.get("type")
    if kind == "prefab":
        name = str(spec.get("prefabName", "Mem"))
        pol = rp.PREFABS.get(name.strip().lower())
        if pol is None:
            raise BadInput(f"{where}: prefab {name!r} is not modelled by the replay (modelled: Mem, MemInv, "
                           "ActiveServers(Inv), ProvisionedCores(Inv))")
        return pol
    if kind != "filter":
        raise BadInput(f"{where}: policy type {kind!r} is not modelled by the replay (modelled: filter, prefab)")
    filters = []
    for i, f in enumerate(spec.get("filters", [{"type": "compute"}])):  # FilterAllocationPolicySpec defaults
        t = f.get("type") if isinstance(f, dict) else None
        if t not in rp.FILTER_KINDS:
            raise BadInput(f"{where}.filters[{i}]: filter {t!r} is not modelled (modelled: "
                           f"{', '.join(rp.FILTER_KINDS)})")
        ratio = f.get("allocationRatio", 1.0)
        if t != "compute" and (not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or ratio <= 0):
            raise BadInput(f"{where}.filters[{i}].allocationRatio: must be a number > 0 (got {ratio!r})")
        filters.append(rp.HostFilterSpec(t, float(ratio) if t != "compute" else 1.0))
    weighers = []
    for i, w in enumerate(spec.get("weighers", [])):
        t = w.get("type") if isinstance(w, dict) else None
        if t not in rp.WEIGHER_KINDS:
            raise BadInput(f"{where}.weighers[{i}]: weigher {t!r} is not modelled (modelled: "
                           f"{', '.join(rp.WEIGHER_KINDS)})")
        mult = w.get("multiplier", 1.0)
        if not isinstance(mult, (int, float)) or isinstance(mult, bool) or not math.isfinite(mult):
            raise BadInput(f"{where}.weighers[{i}].multiplier: must be a number (got {mult!r})")
        weighers.append(rp.WeigherSpec(t, float(mult)))
    subset = spec.get("subsetSize", 1)
    if subset != 1:
        raise BadInput(f"{where}.subsetSize: {subset!r} (random choice among the best) is not modelled; use 1")
    return rp.Policy(tuple(filters), tuple(weighers), 1, label="filter")


# --- the trace -------------------------------------------------------------------------------------------------


def load_tasks(trace_dir: str | Path) -> rp.Tasks:
    """tasks.parquet + fragments.parquet -> Tasks (runtime = sum of each task's fragment durations)."""
    d = Path(trace_dir)
    need = {"id", "submission_time", "duration", "cpu_count", "cpu_capacity", "mem_capacity"}
    try:
        t = pq.read_table(d / TASKS)
        f = pq.read_table(d / FRAGMENTS, columns=["id", "duration", "cpu_usage"])
    except (OSError, pa.ArrowInvalid) as exc:
        raise BadInput(f"{d}: not an exported OpenDC trace ({exc}); run make export first", path=d) from None
    missing = need - set(t.column_names)
    if missing:
        raise BadInput(f"{d / TASKS}: missing column(s) {', '.join(sorted(missing))}", path=d / TASKS)
    ids = t["id"].to_numpy().astype(np.int64)
    n = len(ids)
    fid = f["id"].to_numpy().astype(np.int64)
    fdur = f["duration"].to_numpy().astype(np.int64)
    fuse = f["cpu_usage"].to_numpy().astype(np.float64)
    # fragments -> their task's row (ids need not be dense); fragments of unknown ids are ignored, as OpenDC does
    sorter = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids[sorter], fid)
    pos = np.minimum(pos, max(n - 1, 0))
    hit = (n > 0) & (ids[sorter][pos] == fid) if n else np.zeros(len(fid), dtype=bool)
    row = sorter[pos[hit]]
    runtime = np.bincount(row, weights=fdur[hit], minlength=n).astype(np.int64)
    count = np.bincount(row, minlength=n).astype(np.int64)
    mhz_ms = np.bincount(row, weights=fuse[hit] * fdur[hit], minlength=n)
    names = t["name"].to_pylist() if "name" in t.column_names else [None] * n
    return rp.Tasks(ids.astype(np.int32), names, t["submission_time"].to_numpy().astype(np.int64), runtime,
                    t["cpu_count"].to_numpy().astype(np.int32), t["cpu_capacity"].to_numpy().astype(np.float64),
                    t["mem_capacity"].to_numpy().astype(np.int64), count, mhz_ms)


def task_table(tasks: rp.Tasks, res: rp.ReplayResult) -> pa.Table:
    """One row per task OpenDC knows (dropped tasks have none), in task order, in ``TASK_OUTPUT_SCHEMA``."""
    keep = np.array([s is not None for s in res.state], dtype=bool)
    idx = np.flatnonzero(keep)
    state = [res.state[i] for i in idx]
    sched = res.schedule[idx]
    placed = sched >= 0
    end_sim = int(max(res.finish.max(initial=0), res.submit.max(initial=0)))
    fin = res.finish[idx]
    ts = np.where(fin >= 0, fin, end_sim)  # a task still queued at the end: the replay's last instant
    uptime = np.where(placed, fin - sched, 0)
    limit = tasks.cpu_capacity[idx]
    mhz_ms = tasks.cpu_mhz_ms[idx] if tasks.cpu_mhz_ms is not None else np.zeros(idx.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(placed & (uptime > 0), mhz_ms / np.maximum(uptime, 1), 0.0)
        active = np.where(placed & (limit > 0), np.minimum(np.rint(mhz_ms / np.where(limit > 0, limit, 1)), uptime),
                          0).astype(np.int64)
    hosts = [res.hosts[h].name if h >= 0 else "" for h in res.host[idx]]
    names = [tasks.name[i] if tasks.name[i] is not None else "" for i in idx]
    zeros = np.zeros(idx.size, dtype=np.int64)
    null_unplaced = pa.array(sched, pa.int64(), mask=~placed)
    cols = {
        "timestamp": pa.array(ts, pa.int64()),
        "timestamp_absolute": pa.array(ts + res.origin_ms, pa.int64()),
        "task_id": pa.array(tasks.id[idx], pa.int32()),
        "task_name": pa.array(names, pa.string()),
        "host_name": pa.array(hosts, pa.string()),
        "mem_capacity": pa.array(tasks.mem_mb[idx], pa.int64()),  # TaskInfo.memCapacity: the task's MB
        "cpu_count": pa.array(tasks.cpu_count[idx], pa.int32()),
        "cpu_limit": pa.array(limit.astype(np.float32), pa.float32()),
        "cpu_usage": pa.array(mean.astype(np.float32), pa.float32()),
        "cpu_demand": pa.array(mean.astype(np.float32), pa.float32()),
        "cpu_time_active": pa.array(active, pa.int64()),
        "cpu_time_idle": pa.array(uptime - active, pa.int64()),
        "cpu_time_steal": pa.array(zeros, pa.int64()),
        "cpu_time_lost": pa.array(zeros, pa.int64()),
        "uptime": pa.array(uptime, pa.int64()),
        "downtime": pa.array(zeros, pa.int64()),
        "num_failures": pa.array(zeros, pa.int64()),
        "num_pauses": pa.array(zeros, pa.int64()),
        "schedule_time": null_unplaced,
        "submission_time": pa.array(tasks.submission_ms[idx], pa.int64()),  # ServiceTask.submittedAt: epoch ms
        "finish_time": pa.array(fin, pa.int64(), mask=fin < 0),
        "task_state": pa.array(state, pa.string()),
        # ComputeService.doSchedule: clock - request submit time (both simulated)
        "scheduling_delay": pa.array(sched - res.submit[idx], pa.int64(), mask=~placed),
        "failure_delay": pa.array(zeros, pa.int64()),
        "checkpoint_delay": pa.array(zeros, pa.int64()),
    }
    return pa.Table.from_arrays([cols[f.name] for f in TASK_OUTPUT_SCHEMA], schema=TASK_OUTPUT_SCHEMA)


def write_task_parquet(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


# --- the real run ----------------------------------------------------------------------------------------------


def real_reference(invocations: list[dict], tasks: rp.Tasks
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, list[str | None]]:
    """Per task of the trace: the real placement (``ts_dispatch``, else ``ts_start``), end (``ts_release`` when
    the CTS has it, else ``ts_end``) and submission (``ts_enqueue``), epoch ms; -1 where no executed attempt
    matches. A task's ``name`` is its trace_id; the k-th task of a name takes that trace_id's k-th executed attempt
    (fenced executions are never exported). Returns the arrays, the number of unmatched tasks and the real node of
    each task (None when unmatched)."""
    by_id: dict[str, list[dict]] = {}
    for inv in invocations:
        if inv.get("status") != "fenced" and has_run(inv) and inv.get("trace_id") is not None:
            by_id.setdefault(str(inv["trace_id"]), []).append(inv)
    for lst in by_id.values():
        lst.sort(key=lambda i: (i.get("attempt") or 0, i.get("ts_start") or 0))
    n = len(tasks)
    place, end, sub = (np.full(n, -1, dtype=np.int64) for _ in range(3))
    nodes: list[str | None] = [None] * n
    used: dict[str, int] = {}
    unmatched = 0
    for k, name in enumerate(tasks.name):
        lst = by_id.get(str(name)) if name is not None else None
        j = used.get(str(name), 0)
        if not lst or j >= len(lst):
            unmatched += 1
            continue
        used[str(name)] = j + 1
        inv = lst[j]
        p = inv.get("ts_dispatch") if inv.get("ts_dispatch") is not None else inv.get("ts_start")
        e = inv.get("ts_release") if inv.get("ts_release") is not None else inv.get("ts_end")
        s = inv.get("ts_enqueue") if inv.get("ts_enqueue") is not None else int(tasks.submission_ms[k])
        place[k], end[k], sub[k] = int(p), int(e), int(s)
        nodes[k] = inv.get("node_id")
    return place, end, sub, unmatched, nodes


def placement_agreement(res: rp.ReplayResult, real_nodes: list[str | None], differences: list[str]) -> str:
    """How many tasks the replay put on the node the real scheduler chose (hosts are named after nodes); when some
    differ, why: what OpenDC's policy does differently (``export.opendc.policy_differences``)."""
    names = [res.hosts[h].name if h >= 0 else None for h in res.host]
    pairs = [(real, sim) for real, sim in zip(real_nodes, names) if real is not None]
    same = sum(real == sim for real, sim in pairs)
    line = f"placement: {same} of {len(pairs)} task(s) on the node the real scheduler chose"
    if same < len(pairs) and differences:
        line += ("; the others follow OpenDC's policy, which differs from the real one: " + "; ".join(differences))
    return line


# --- the whole check -------------------------------------------------------------------------------------------


@dataclass
class ReplayRun:
    """What ``run_replay`` did."""

    verdict: str
    section: str
    outputs: list[Path]
    figures: dict[str, rp.Figures]
    notes: list[str]
    report: Path | None = None

    def lines(self) -> list[str]:
        out = [f"replay (OpenDC rules): {self.verdict}"]
        for grid, f in self.figures.items():
            out.append(f"  {grid} grid: {f.tasks} task(s), makespan real {f.makespan_real_ms / 1000:.3f} s, replay "
                       f"{f.makespan_sim_ms / 1000:.3f} s ({f.makespan_err:+.2%}); start error p50 "
                       f"{f.start_pct(0.5):.0f} ms, p95 {f.start_pct(0.95):.0f} ms")
        out += [f"  {n}" for n in self.notes]
        out += [f"  wrote {p}" for p in self.outputs]
        if self.report:
            out.append(f"  section 'Replay (OpenDC rules)' in {self.report}")
        return out


def default_cts(trace_dir: Path) -> Path | None:
    cand = trace_dir.resolve().parent / "CTS"
    return cand if (cand / INVOCATIONS).is_file() else None


def run_replay(trace_dir: str | Path, experiment: str | Path | None = None, cts_dir: str | Path | None = None,
               out_dir: str | Path | None = None, update_report: bool = True) -> ReplayRun:
    """Replay ``trace_dir`` on both grids, write task.parquet + replay.json, add the section to the audit report."""
    from tracekit.trace.reader import CtsFolder

    trace = Path(trace_dir)
    if not (trace / TASKS).is_file():
        raise BadInput(f"{trace}: no {TASKS} (run make export first)", path=trace)
    exp = read_experiment(Path(experiment) if experiment else trace / EXPERIMENT)
    notes = list(exp.notes)
    if exp.workload is not None and exp.workload != trace.resolve():
        notes.append(f"the experiment's workload is {exp.workload}; replayed {trace.resolve()}")
    tasks = load_tasks(trace)
    if len(tasks) == 0:
        raise BadInput(f"{trace / TASKS}: no task", path=trace / TASKS)
    out = Path(out_dir) if out_dir else trace.resolve().parent / OUTPUT_DIR
    cts = Path(cts_dir) if cts_dir else default_cts(trace)
    real = None
    real_nodes: list[str | None] = []
    differences: list[str] = []
    if cts is not None:
        folder = CtsFolder(cts / "CTS" if (cts / "CTS" / INVOCATIONS).is_file() else cts)
        place, end, sub, unmatched, real_nodes = real_reference(folder.invocations(), tasks)
        real = (place, end, sub)
        if unmatched:
            notes.append(f"{unmatched} task(s) of the trace match no executed attempt in {folder.path}: not compared")
        policies = folder.placement_policies()
        if policies:
            differences = policy_differences(*policies.most_common(1)[0][0])
    figs: dict[str, rp.Figures] = {}
    outputs: list[Path] = []
    summary: dict = {"experiment": str(exp.path), "trace": str(trace.resolve()), "policy": exp.policy.describe(),
                     "hosts": [h.__dict__ for h in exp.hosts], "grids": {}}
    for quantum, grid in GRIDS:
        res = rp.simulate(tasks, exp.hosts, exp.policy, quantum)
        path = out / grid / exp.name / "raw-output" / "0" / "seed=0" / TASK_OUTPUT
        write_task_parquet(path, task_table(tasks, res))
        outputs.append(path)
        g = {"quantum_ms": quantum, "makespan_sim_ms": res.makespan_ms(), "terminated": res.terminated,
             "stuck": res.stuck, "dropped": res.dropped, "task_parquet": str(path)}
        if real is not None:
            f = rp.figures(res, *real)
            figs[grid] = f
            g.update(tasks_compared=f.tasks, makespan_real_ms=f.makespan_real_ms,
                     makespan_compared_sim_ms=f.makespan_sim_ms, makespan_err=f.makespan_err,
                     start_err_p50_ms=f.start_pct(0.5), start_err_p95_ms=f.start_pct(0.95),
                     start_err_max_ms=f.start_pct(1.0))
        summary["grids"][grid] = g
        if grid == "1ms":
            if real_nodes:
                notes.append(placement_agreement(res, real_nodes, differences))
            if res.dropped:
                notes.append(f"{res.dropped} task(s) without fragments: OpenDC drops them silently")
            if res.terminated:
                notes.append(f"{res.terminated} task(s) larger than every host: terminated (\"does not fit\")")
            if res.stuck:
                notes.append(f"{res.stuck} task(s) fit no single host yet are not larger than every host: "
                             "OpenDC would wait for them forever")
    section, verdict = rp.render_section(figs.get("1ms"), figs.get("1s"), exp.policy, exp.hosts, notes,
                                         [f"`{p}`" for p in outputs])
    summary.update(verdict=verdict, notes=notes)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    outputs.append(out / SUMMARY)
    report = None
    if update_report and cts is not None:
        rpath = (cts / "CTS" if (cts / "CTS" / INVOCATIONS).is_file() else cts) / "audit_report.md"
        if rpath.is_file():
            splice_report(rpath, section)
            report = rpath
    return ReplayRun(verdict, section, outputs, figs, notes, report)


def splice_report(path: Path, section: str) -> None:
    """Put ``section`` between the replay markers of ``audit_report.md``: in place of an earlier one, else before
    the plots (or at the end)."""
    text = path.read_text()
    block = f"{REPORT_BEGIN}\n{section.rstrip()}\n{REPORT_END}\n"
    if REPORT_BEGIN in text and REPORT_END in text:
        head, rest = text.split(REPORT_BEGIN, 1)
        text = head + block + rest.split(REPORT_END, 1)[1].lstrip("\n")
    elif "\n## Plots\n" in text:  # before the plots, after the checks
        head, tail = text.split("\n## Plots\n", 1)
        text = head.rstrip("\n") + "\n\n" + block + "\n## Plots\n" + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
