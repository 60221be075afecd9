"""The names and small pure helpers every part of the CTS parse and its readers share.

File names of a CTS folder, the identity and order of invocations, the text of a proc_metrics line, the judge of a
``samples.jsonl`` line and the positions of the sample columns (from ``core.schema.SAMPLE_COLUMNS``). Imports
``core`` only; the streaming and columnar readers, the parse, the CTS reader and the exporters build on it.
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Iterator

from tracekit.core import paths, schema
from tracekit.core.jsonl import fast_loads

# ---- CTS folder ----
INVOCATIONS = "invocations.jsonl"
PROC_METRICS = "proc_metrics.jsonl"
NODES = "nodes.json"
PROCESSES = "processes.jsonl"  # matched processes: sampled by name, no adapter (schema.MATCHED_PROCESS_FIELDS)
NOT_NODE_DIRS = {"CTS", "opendc", "pids", paths.CONTROLLER_DIR}  # sub-folders of a run folder that are no node
RAW_NODE_FILES = ("events.jsonl", "samples.jsonl", "node.json", "worker.json")
WINDOW_SLACK_MS = 1000  # a sample belongs to a task by pid alone only within its run window +- this


def task_key(node_id: str | None, trace_id: str | None, attempt: int | None) -> tuple:
    """Identity of one executed attempt (an invocation row) in CTS."""
    return (node_id, trace_id, attempt)


def submission_ms(inv: dict) -> int | None:
    """When the task was submitted: ``ts_enqueue``, else the first known later timestamp."""
    for k in ("ts_enqueue", "ts_dispatch", "ts_start"):
        if inv.get(k) is not None:
            return int(inv[k])
    return None


def invocation_order_key(inv: dict) -> tuple:
    """Total order of invocations (and of proc_metrics blocks, and of OpenDC tasks): submission first."""
    sub = submission_ms(inv)
    return (sub if sub is not None else 0, str(inv.get("trace_id")), inv.get("attempt") or 0,
            str(inv.get("node_id")), inv.get("ts_start") or 0)


def has_run(inv: dict) -> bool:
    """An invocation that executed: its pid, ts_start and ts_end are known."""
    return inv.get("pid") is not None and inv.get("ts_start") is not None and inv.get("ts_end") is not None


def utilisation_bin_ms(span_ms: float, max_bins: int = 300) -> int:
    """A round bin width (100 ms, 200 ms, 500 ms, 1 s, 2 s, 5 s, ...) giving at most ``max_bins`` bins."""
    step = 100
    while True:
        for m in (1, 2, 5):
            if step * m * max_bins >= span_ms:
                return step * m
        step *= 10


@contextlib.contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (restored after).

    The parse builds millions of containers that live long (invocations, tasks, buffered samples) and makes no
    reference cycles; the collector would traverse them again and again (about 40 % of the time spent reading
    events, ~6 % of the cut). Reference counting still frees everything as usual.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# ---- proc_metrics line text ----
ROW_VARS = ("ts_ms", "dt_ms", "cpu_ms", "rss_kb")  # the per-row parts of a proc_metrics line
VAR_ORDER = tuple(f for f in schema.PROC_METRIC_FIELDS if f in ROW_VARS)  # those parts in line order
CPU_SLOT = "%d.%03d"  # cpu_ms as exact µs with 3 decimals, in one printf step (cpu_us // 1000, cpu_us % 1000)


def json_value(value: object) -> str:
    """``json.dumps(value, ensure_ascii=False)``, without its cost for the usual ids (once per task)."""
    if type(value) is int:
        return str(value)
    if value is None:
        return "null"
    if type(value) is str and value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'  # printable ASCII without quote or backslash: JSON needs no escape
    return json.dumps(value, ensure_ascii=False)


def row_template(inv: dict, cpu_slot: str = "%s") -> str:
    """printf template of one proc_metrics line for this task, fields in ``schema.PROC_METRIC_FIELDS`` order.

    Every variable field is a ``%s`` slot, except ``cpu_ms`` which is ``cpu_slot`` (``CPU_SLOT``: ms and the µs
    remainder, one formatting step per row).
    """
    parts = []
    for f in schema.PROC_METRIC_FIELDS:
        if f in ROW_VARS:
            parts.append(f'"{f}":' + (cpu_slot if f == "cpu_ms" else "%s"))
        else:
            parts.append(f'"{f}":' + json_value(inv.get(f)).replace("%", "%%"))
    return "{" + ",".join(parts) + "}\n"


def row_template_parts(inv: dict) -> list[str]:
    """The constant text of this task's proc_metrics lines around the ``VAR_ORDER`` values (what ``row_template``
    holds between its slots, without printf escaping)."""
    parts, cur = [], "{"
    for k, f in enumerate(schema.PROC_METRIC_FIELDS):
        cur += ("," if k else "") + f'"{f}":'
        if f in ROW_VARS:
            parts.append(cur)
            cur = ""
        else:
            cur += json_value(inv.get(f))
    parts.append(cur + "}\n")
    return parts


def format_row(template: str, ts_ms: int, dt_ms: int, cpu_us: int, rss_kb: int | None) -> str:
    """One proc_metrics line from a ``row_template(inv, CPU_SLOT)``, for any order of ``ROW_VARS`` in the schema."""
    rss = "null" if rss_kb is None else rss_kb
    values = {"ts_ms": (ts_ms,), "dt_ms": (dt_ms,), "cpu_ms": (cpu_us // 1000, cpu_us % 1000), "rss_kb": (rss,)}
    return template % tuple(v for f in VAR_ORDER for v in values[f])


def cpu_ms_text(cpu_us: int) -> str:
    """CPU ms as written in proc_metrics: exact µs, always 3 decimals (every writer gives the same bytes)."""
    return f"{cpu_us // 1000}.{cpu_us % 1000:03d}"


# ---- samples.jsonl lines ----
NUMBER_TYPES = frozenset((int, float))  # type(x) in NUMBER_TYPES: a JSON number (bool excluded), cheap in hot loops

# Positions of the sample columns in a ``procs`` entry (``schema.SAMPLE_COLUMNS`` is the one definition).
PID = schema.SAMPLE_INDEX["pid"]
STARTTIME = schema.SAMPLE_INDEX["starttime"]
TRACE_ID = schema.SAMPLE_INDEX["trace_id"]
CPU_TICKS = schema.SAMPLE_INDEX["cpu_ticks"]
RSS_PAGES = schema.SAMPLE_INDEX["rss_pages"]
CG_CPU_US = schema.SAMPLE_INDEX["cg_cpu_us"]
CG_MEM_KB = schema.SAMPLE_INDEX["cg_mem_kb"]
COMM = schema.SAMPLE_INDEX["comm"]
CONTAINER_ID = schema.SAMPLE_INDEX["container_id"]
MIN_VALUES, MAX_VALUES = schema.SAMPLE_MIN_VALUES, schema.SAMPLE_MAX_VALUES
BAD_ENTRY = (f"sample entry is not a list of {MAX_VALUES} values" if MIN_VALUES == MAX_VALUES
             else f"sample entry is not a list of {MIN_VALUES} to {MAX_VALUES} values")


def is_number(value: object) -> bool:
    """A JSON number (bool is not one); parsed JSON holds only exact int/float/bool, so a type test suffices."""
    return type(value) in NUMBER_TYPES


def read_tick(raw: bytes) -> tuple[dict | None, str]:
    """One ``samples.jsonl`` line -> ``(tick, "")``, or ``(None, why it is no tick)`` with ``""`` for a blank line
    (skipped silently). Every reader of sample lines judges them by this."""
    try:
        tick = fast_loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        if not raw.strip():
            return None, ""
        kind = "truncated line" if not raw.endswith(b"\n") else "malformed JSON"
        return None, f"{kind} ({exc.__class__.__name__})"
    if type(tick) is not dict:
        return None, "not a JSON object"
    if type(tick.get("ts")) not in NUMBER_TYPES or type(tick.get("procs")) is not list:
        return None, "sample tick without numeric ts / procs list"
    return tick, ""


# ---- nodes that share one machine ----
SAME_BOOT_MS = 2000  # two boot times this close (each measured as now - uptime) are one kernel's


def shared_hosts(nodes: list[dict]) -> list[list[str]]:
    """Groups (2+ nodes each, in ``nodes`` order) of nodes that run on one machine and so share its physical cores:
    the same kernel (``boot_time_ms`` within ``SAME_BOOT_MS``) with the same ``hostname`` or both emulated
    (``stage`` "emu", network namespaces give each its own host name), or the same host name when boot times are
    unknown. ``nodes`` are ``nodes.json`` entries."""
    groups: list[list[dict]] = []
    for nd in nodes:
        for g in groups:
            o = g[0]
            b1, b2 = nd.get("boot_time_ms"), o.get("boot_time_ms")
            same_name = nd.get("hostname") is not None and nd.get("hostname") == o.get("hostname")
            if is_number(b1) and is_number(b2):
                same = abs(b1 - b2) <= SAME_BOOT_MS and (same_name or nd.get("stage") == o.get("stage") == "emu")
            else:
                same = same_name
            if same:
                g.append(nd)
                break
        else:
            groups.append([nd])
    return [[str(n.get("node_id")) for n in g] for g in groups if len(g) > 1]
