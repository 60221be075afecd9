"""The original Tracekit's data formats and their conversion into this toolkit's raw logs (pure: no I/O).

The original wrote, per worker, into ``logs/$RUN_ID/`` (no node sub-folder; several workers' folders were gathered
as ``<dir>/<node>/``), every format documented in docs/traces.md "Importing the original Tracekit's data":

``node_meta.json``       the collector: ``ORIGINAL_NODE_META_FIELDS`` (``node``, not ``node_id``; MHz from
                         ``CPU_FREQ_MHZ`` or lscpu, 0 when unknown).
``proc_metrics.jsonl``   the collector, raw: ``ORIGINAL_RAW_SAMPLE_FIELDS``, one line per PID and tick; ``utime`` /
                         ``stime`` cumulative clock ticks (CLK_TCK not recorded), ``rss_kb`` = resident pages x 4.
``events.ffmpeg.jsonl``  the adapter, one line per ffmpeg execution: ``ORIGINAL_EVENT_FIELDS`` (``trace_id`` a
                         fresh uuid4 per execution, ``status`` the exit code, times epoch ms of the node).
``events.jsonl``         ``make parse``: every ``events.*.jsonl`` merged and sorted, ``node`` / ``stage`` filled in.
``CTS/``                 ``make parse`` (``cctf/`` in older versions): ``invocations.jsonl``
                         (``ORIGINAL_INVOCATION_FIELDS``), ``proc_metrics.jsonl`` (``ORIGINAL_PROC_METRIC_FIELDS``:
                         per-PID differences, the first sample of a PID ``dt_ms = cpu_ms = 0``), ``nodes.json`` (a
                         list of one ``ORIGINAL_NODE_FIELDS`` entry, MHz rounded to 100, memory to GiB),
                         ``audit_report.md``.

``convert_node`` turns one worker's records (raw, or its CTS when the raw files are gone) into this toolkit's raw
logs of one node (``node.json``, ``exec`` events, ``samples.jsonl`` ticks; docs/internals.md "CTS" and
``core.schema``), which the normal parse then cuts into CTS. Units of the imported samples: CPU in ms (``clk_tck``
1000) and memory in KB (``page_size`` 1024), so values pass through unchanged. What the old data does not hold is
counted in ``NodeImport.notes`` under the labels of ``NOTE_LABELS`` (the audit's "Imported data" section).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from tracekit.core import paths, schema
from tracekit.trace.vocabulary import WINDOW_SLACK_MS

# ---- the original's formats (names exactly as it wrote them) ----
ORIGINAL_NODE_META = "node_meta.json"
ORIGINAL_RAW_SAMPLES = "proc_metrics.jsonl"
ORIGINAL_ADAPTER_EVENTS = "events.ffmpeg.jsonl"  # one of events.*.jsonl (one file per adapter)
ORIGINAL_EVENTS_GLOB = "events.*.jsonl"
ORIGINAL_MERGED_EVENTS = "events.jsonl"
ORIGINAL_CTS_DIRS = ("CTS", "cctf")  # cctf: the name before CTS
ORIGINAL_CTS_NODES = "nodes.json"
ORIGINAL_CTS_INVOCATIONS = "invocations.jsonl"
ORIGINAL_CTS_PROC_METRICS = "proc_metrics.jsonl"
ORIGINAL_AUDIT = "audit_report.md"

ORIGINAL_NODE_META_FIELDS = ("run_id", "node", "stage", "host", "iface", "cpu_cores", "mem_mb", "cpu_model",
                             "cpu_freq_mhz")
ORIGINAL_RAW_SAMPLE_FIELDS = ("ts_ms", "pid", "rss_kb", "utime", "stime")
ORIGINAL_EVENT_FIELDS = ("trace_id", "span_id", "parent_id", "module_id", "instance_id", "ts_enqueue", "ts_start",
                         "ts_end", "node", "stage", "method", "path", "input", "output", "pid", "cpuset", "bytes_in",
                         "bytes_out", "status")
ORIGINAL_INVOCATION_FIELDS = ("trace_id", "pid", "ts_enqueue", "ts_start", "ts_end")
ORIGINAL_PROC_METRIC_FIELDS = ("ts_ms", "pid", "dt_ms", "cpu_ms", "rss_kb")
ORIGINAL_NODE_FIELDS = ("node_id", "stage", "cpu_cores", "mem_mb", "cpu_model", "cpu_freq_mhz")
ORIGINAL_RSS_KB_PER_PAGE = 4  # the original's collector: statm resident pages x 4

# The original dispatcher's profiles (scale, codec, preset) -> (name, cpu_units), and its output names
# ``<input stem>_<W>x<H>_<codec>_<preset>_n<NNNN>.mp4``, from which an execution's profile is recovered.
ORIGINAL_PROFILES = {("1920x1080", "h264", "fast"): ("fast1080p", 2), ("854x480", "h264", "medium"): ("medium480p", 2),
                     ("1920x1080", "hevc", "medium"): ("hevc1080p", 4), ("854x480", "h264", "veryfast"): ("light1c", 1)}
OUTPUT_NAME = re.compile(r"_(\d+x\d+)_([a-z0-9]+)_([a-z]+)_n\d+\.[A-Za-z0-9]+$")

ASSUMED_CLK_TCK = 100  # the original never recorded CLK_TCK; its parse used this host's (100 on Linux)
IMPORT_CLK_TCK = 1000  # imported samples count CPU in ms
IMPORT_PAGE_SIZE = 1024  # ... and memory in KB
IMPORT_NOTE = "imported.json"  # in the imported run folder: where the data came from and what it lacks

# Labels of NodeImport.notes: (key, kind, text). kind: "recovered" (exact), "estimated", "assumed" (a value the old
# data does not hold was filled in), "unrecoverable" (lost for good).
NOTE_LABELS = (
    ("exec_from_raw", "recovered", "executions read from the adapter's events (pid, times, cpuset, status, files)"),
    ("exec_from_cts", "recovered", "executions read from the original CTS invocations (pid, times only)"),
    ("head_exact", "recovered", "tasks whose CPU from process start is exact (cumulative /proc ticks)"),
    ("profile_from_name", "recovered", "profiles and cpu_units recovered from the dispatcher's output names"),
    ("trace_id_kept", "recovered", "trace ids kept (the adapter's uuid per execution: not the dispatcher's task)"),
    ("cpu_units_from_cpuset", "estimated", "cpu_units taken from the size of the task's cpuset"),
    ("trace_id_made", "assumed", "trace ids made up (missing, unusable or repeated in the old data)"),
    ("cpu_units_assumed", "assumed", "cpu_units assumed 1 (no profile, no cpuset)"),
    ("status_assumed", "assumed", "exit status assumed ok (the original CTS does not record it)"),
    ("clk_tck_assumed", "assumed", f"nodes whose CLK_TCK was assumed {ASSUMED_CLK_TCK} (never recorded)"),
    ("mhz_unknown", "unrecoverable", "nodes without a CPU MHz (0 in the old metadata): export needs --cpu-freq-mhz"),
    ("exact_total", "unrecoverable", "exact CPU totals (cpu_ms = the last sampled value, a lower bound)"),
    ("tail", "unrecoverable", "tail intervals (last sample -> exit: written with 0 CPU)"),
    ("task_trace_id", "unrecoverable", "the dispatcher's task ids (the original had none: executions of one task "
                                       "cannot be linked; each execution is its own task, attempt 1)"),
    ("head_lost", "unrecoverable", "head CPU (process start -> first sample: the original CTS kept differences)"),
    ("no_samples", "unrecoverable", "executions without any sample (one row of 0 CPU)"),
    ("starttime", "unrecoverable", "process start times (PIDs told apart by time window; starttime = a counter)"),
    ("clock_offset", "unrecoverable", "clock offsets to the controller (node clocks taken as they are)"),
    ("placement", "unrecoverable", "placement and release times (ts_dispatch, ts_release: no controller log)"),
    ("start_before_enqueue", "unrecoverable", "starts before their enqueue (the original's ts_start: /proc starttime "
                                              "plus a boot time in whole seconds, up to 1 s early)"),
    ("samples_unmatched", "unrecoverable", "samples of a PID without an execution record (kept, untracked)"),
    ("bad_records", "unrecoverable", "records skipped: a field missing or not a number"),
)
NOTE_KIND = {k: kind for k, kind, _ in NOTE_LABELS}
NOTE_TEXT = {k: text for k, _, text in NOTE_LABELS}


@dataclass
class NodeImport:
    """One node of the original in this toolkit's raw formats, and what the conversion could not recover."""

    node_id: str
    node_json: dict
    events: list[dict] = field(default_factory=list)  # "exec" events, schema.EXEC_FIELDS
    ticks: list[dict] = field(default_factory=list)  # samples.jsonl lines, schema.SAMPLE_TICK_FIELDS
    notes: Counter = field(default_factory=Counter)


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def node_of(meta: dict, fallback: str) -> str:
    """The node id of an original node_meta.json (``node``) or nodes.json entry (``node_id``), made path-safe."""
    raw = str(meta.get("node") or meta.get("node_id") or meta.get("host") or fallback)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", raw).lstrip("_.-") or fallback
    return safe[:128]


def profile_of(output: str | None) -> tuple[str, int] | None:
    """(profile, cpu_units) from an output file name the original dispatcher made, else None."""
    m = OUTPUT_NAME.search(output or "")
    return ORIGINAL_PROFILES.get((m.group(1), m.group(2), m.group(3))) if m else None


def cpuset_size(cpuset: str | None) -> int:
    """Number of CPUs of a list such as ``0-1,4`` (0 when empty or unreadable)."""
    cpus: set[int] = set()
    for part in str(cpuset or "").split(","):
        a, _, b = part.strip().partition("-")
        try:
            cpus.update(range(int(a), int(b or a) + 1))
        except ValueError:
            continue
    return len(cpus)


def node_json(meta: dict, node_id: str, notes: Counter, clk_tck_known: bool) -> dict:
    """Our ``node.json`` (``schema.NODE_META_FIELDS``) from an original node_meta.json or nodes.json entry."""
    mhz = meta.get("cpu_freq_mhz")
    if not (_num(mhz) and mhz > 0):
        mhz = None
        notes["mhz_unknown"] += 1
    if not clk_tck_known:
        notes["clk_tck_assumed"] += 1
    notes["clock_offset"] += 1
    out = dict.fromkeys(schema.NODE_META_FIELDS)
    out.update(node_id=node_id, stage=meta.get("stage"), hostname=meta.get("host"), cpu_cores=meta.get("cpu_cores"),
               cpu_model=meta.get("cpu_model"), cpu_freq_mhz=mhz, mem_mb=meta.get("mem_mb"),
               clk_tck=IMPORT_CLK_TCK, page_size=IMPORT_PAGE_SIZE)
    return out


def _cum_ms_raw(s: dict, clk_tck: int) -> float | None:
    ut, st = s.get("utime"), s.get("stime")
    return (ut + st) * 1000 / clk_tck if _num(ut) and _num(st) else None


def convert_node(meta: dict, executions: list[dict], samples: list[dict], *, form: str, fallback_node: str,
                 clk_tck: int | None = None) -> NodeImport:
    """One original node -> our raw records (module docstring).

    ``form`` "raw": ``executions`` are adapter events (``ORIGINAL_EVENT_FIELDS``), ``samples`` raw collector lines
    (``ORIGINAL_RAW_SAMPLE_FIELDS``); "cts": the original CTS invocations and proc_metrics rows. ``clk_tck`` of
    the raw ticks when known (else ``ASSUMED_CLK_TCK``, noted). Samples of a PID belong to the execution of that
    PID whose run (± ``WINDOW_SLACK_MS``) holds them (PIDs repeat; the original never recorded start times).
    """
    if form not in ("raw", "cts"):
        raise ValueError(f"form must be raw or cts, not {form!r}")
    notes: Counter = Counter()
    node = node_of(meta, fallback_node)
    tck = clk_tck or ASSUMED_CLK_TCK
    res = NodeImport(node, node_json(meta, node, notes, form == "cts" or bool(clk_tck)), notes=notes)

    runs = []
    for ev in executions:
        if not (isinstance(ev.get("pid"), int) and _num(ev.get("ts_start")) and _num(ev.get("ts_end"))):
            notes["bad_records"] += 1
            continue
        runs.append(ev)
    runs.sort(key=lambda e: (e["ts_start"], e["pid"]))
    by_pid: dict[int, list[int]] = defaultdict(list)
    for k, ev in enumerate(runs):
        by_pid[ev["pid"]].append(k)

    # samples -> (run index or None, ts, cumulative CPU ms or per-row CPU ms, rss KB)
    per_run: dict[int, list[tuple[float, float, int | None]]] = defaultdict(list)
    unmatched: list[tuple[float, int, float, int | None]] = []
    cts_cum: dict[int, float] = defaultdict(float)
    for s in sorted((s for s in samples if isinstance(s.get("pid"), int) and _num(s.get("ts_ms"))),
                    key=lambda s: s["ts_ms"]):
        pid, t = s["pid"], float(s["ts_ms"])
        cpu = _cum_ms_raw(s, tck) if form == "raw" else float(s["cpu_ms"]) if _num(s.get("cpu_ms")) else None
        if cpu is None:
            notes["bad_records"] += 1
            continue
        rss = int(s["rss_kb"]) if _num(s.get("rss_kb")) else None
        k = _owner(runs, by_pid.get(pid, ()), t)
        if k is None:
            if form == "cts":
                cts_cum[pid] += cpu
                cpu = cts_cum[pid]
            unmatched.append((t, pid, cpu, rss))
        else:
            per_run[k].append((t, cpu, rss))
    notes["samples_unmatched"] += len(unmatched)

    used_ids: set[str] = set()
    ticks: dict[float, list[list]] = defaultdict(list)
    for k, ev in enumerate(runs):
        starttime = k + 1
        notes["starttime"] += 1
        notes["placement"] += 1
        notes["task_trace_id"] += 1
        tid = ev.get("trace_id")
        if isinstance(tid, str) and paths.SAFE_ID.match(tid) and tid not in used_ids:
            notes["trace_id_kept"] += 1
        else:
            tid = f"pid{ev['pid']}-{k + 1}"
            notes["trace_id_made"] += 1
        used_ids.add(tid)
        start, end = float(ev["ts_start"]), float(ev["ts_end"])
        if _num(ev.get("ts_enqueue")) and ev["ts_enqueue"] > start:
            notes["start_before_enqueue"] += 1
        rows = per_run.get(k, [])
        cum_rows: list[tuple[float, float, int | None]] = []
        if form == "raw":
            cum_rows = rows
            if rows:
                notes["head_exact"] += 1
        else:
            acc = 0.0
            for j, (t, cpu, rss) in enumerate(rows):
                acc += 0.0 if j == 0 else cpu  # the first row's difference reaches before this process
                cum_rows.append((t, acc, rss))
            if rows:
                notes["head_lost"] += 1
        inside = [c for t, c, _ in cum_rows if start < t < end]
        total = max(inside, default=0.0)
        notes["exact_total"] += 1
        notes["tail"] += 1
        if not rows:
            notes["no_samples"] += 1
        for t, cum, rss in cum_rows:
            ticks[t].append(schema.sample_row(pid=ev["pid"], starttime=starttime, trace_id=tid,
                                              cpu_ticks=round(cum), rss_pages=rss, cg_cpu_us=None, cg_mem_kb=None))
        res.events.append(_exec_event(ev, form, node, tid, starttime, round(total),
                                      max((r for _, _, r in rows if r is not None), default=None), notes))
    for t, pid, cum, rss in unmatched:
        ticks[t].append(schema.sample_row(pid=pid, starttime=0, trace_id=None, cpu_ticks=round(cum), rss_pages=rss,
                                          cg_cpu_us=None, cg_mem_kb=None))
    t0 = min(ticks, default=0.0)
    res.ticks = [{"ts": t, "mono": t - t0, "procs": ticks[t]} for t in sorted(ticks)]
    return res


def _owner(runs: list[dict], candidates, t: float) -> int | None:
    """The run of this PID whose window (± WINDOW_SLACK_MS) holds ``t``; the nearest start when several do."""
    best, best_d = None, None
    for k in candidates:
        ev = runs[k]
        if ev["ts_start"] - WINDOW_SLACK_MS <= t <= ev["ts_end"] + WINDOW_SLACK_MS:
            d = abs(t - ev["ts_start"]) if t < ev["ts_start"] else 0 if t <= ev["ts_end"] else t - ev["ts_end"]
            if best_d is None or d < best_d:
                best, best_d = k, d
    return best


def _exec_event(ev: dict, form: str, node: str, tid: str, starttime: int, cpu_ms: int, max_rss: int | None,
                notes: Counter) -> dict:
    """Our ``exec`` event (``schema.EXEC_FIELDS``) for one original execution."""
    out = dict.fromkeys(schema.EXEC_FIELDS)
    prof = profile_of(ev.get("output"))
    cpuset = ev.get("cpuset") if isinstance(ev.get("cpuset"), str) and ev.get("cpuset") else None
    if prof:
        profile, units = prof
        notes["profile_from_name"] += 1
    elif cpuset_size(cpuset):
        profile, units = None, cpuset_size(cpuset)
        notes["cpu_units_from_cpuset"] += 1
    else:
        profile, units = None, 1
        notes["cpu_units_assumed"] += 1
    if form == "raw":
        notes["exec_from_raw"] += 1
        code = ev.get("status")  # Popen's returncode: -N when killed by signal N
        status = "ok" if code == 0 else "failed"
        exit_code = code if isinstance(code, int) and code >= 0 else None
        sig = -code if isinstance(code, int) and code < 0 else None
    else:
        notes["exec_from_cts"] += 1
        notes["status_assumed"] += 1
        status, exit_code, sig = "ok", 0, None
    enq = ev.get("ts_enqueue")
    out.update(kind="exec", trace_id=tid, attempt=1, node_id=node, pid=ev["pid"], starttime=starttime,
               profile=profile, cpu_units=units, ts_enqueue=enq if _num(enq) else None,
               ts_start=float(ev["ts_start"]), ts_end=float(ev["ts_end"]), status=status, exit_code=exit_code,
               cpu_ms=cpu_ms, max_rss_kb=max_rss, binding="exclusive" if cpuset else None,
               binding_mechanism="affinity" if cpuset else None, cpuset=cpuset,
               input=ev.get("input"), output=ev.get("output"),
               bytes_in=ev.get("bytes_in") if _num(ev.get("bytes_in")) else None,
               bytes_out=ev.get("bytes_out") if _num(ev.get("bytes_out")) else None,
               signal=sig, error=None if status == "ok" else f"signal {sig}" if sig else f"exit code {exit_code}")
    return out


def summarize(notes: Counter) -> dict[str, dict[str, int]]:
    """``{kind: {text: count}}`` of the non-zero notes, kinds in ``NOTE_LABELS`` order (for ``imported.json``)."""
    out: dict[str, dict[str, int]] = {}
    for key, kind, text in NOTE_LABELS:
        if notes.get(key):
            out.setdefault(kind, {})[text] = int(notes[key])
    return out
