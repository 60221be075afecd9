"""Where things live: the run id, the node id and the files of a run.

Layout of ``logs/$RUN_ID/`` (documented in README "Files and formats"):

    placements.jsonl          central scheduler, one line per placement
    dispatch.jsonl            dispatcher, one line per enqueued task
    controller/events.jsonl   tasks the controller recorded as failed (max attempts, bad payload)
    pids/<pid>                PID sentinels (default PROC_PID_DIR), shared by the nodes of one host
    <node_id>/events.jsonl    adapter + worker events of that node (schema.py)
    <node_id>/samples.jsonl   collector samples of that node (schema.py)
    <node_id>/node.json       collector node metadata (schema.py)
    <node_id>/worker.json     worker registration (capacity, binding, clock offset)
    <node_id>/*.log, *.pid    daemon logs and pidfiles
    timesync.log              best-effort time sync log
    chaos.jsonl, chaos_report.json   make chaos: injected faults, final checks
    CTS/                      parser output
    opendc/                   OpenDC export (default)

Gathering a multi-node run = copying each node's ``logs/$RUN_ID/`` into the controller's: every node
writes under its own ``<node_id>/`` folder, so nothing collides.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from tracekit.core.errors import UsageError

REPO_ROOT = Path(__file__).resolve().parents[3]
RUN_ID_FILE = REPO_ROOT / "run_id.env"
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
CONTROLLER_DIR = "controller"


def check_id(kind: str, value: str) -> str:
    """A run or node id must be a safe single path component (and a safe Redis key part)."""
    if not SAFE_ID.match(value or ""):
        raise UsageError(f"bad {kind} {value!r}: use letters, digits, '_', '.', '-' (max 128)")
    return value


def logs_root() -> Path:
    """``$TRACEKIT_LOGS`` or ``<repo>/logs``."""
    return Path(os.environ.get("TRACEKIT_LOGS", REPO_ROOT / "logs"))


def read_run_id_file(path: Path | None = None) -> str | None:
    """The ``RUN_ID=...`` value of a ``run_id.env`` file (default: :func:`run_id_file`), if any."""
    path = path or run_id_file()
    try:
        for line in path.read_text().splitlines():
            line = line.strip()
            if line.startswith("export "):
                line = line[len("export ") :]
            if line.startswith("RUN_ID="):
                return line.split("=", 1)[1].strip().strip("'\"") or None
    except OSError:
        return None
    return None


def run_id_file() -> Path:
    """The shared ``run_id.env``: ``$TRACEKIT_RUN_ID_FILE`` (as ``make demo`` writes it) or the repo root's."""
    return Path(os.environ.get("TRACEKIT_RUN_ID_FILE") or RUN_ID_FILE)


def run_id(explicit: str | None = None) -> str:
    """The run id: explicit value, else ``$RUN_ID``, else ``run_id.env``; a clear error otherwise."""
    value = explicit or os.environ.get("RUN_ID") or read_run_id_file()
    if not value:
        raise UsageError("no RUN_ID: pass it (RUN_ID=... or --run-id) or write it to run_id.env")
    return check_id("RUN_ID", value)


def node_id(explicit: str | None = None) -> str:
    """The node id: explicit value, else ``$NODE_ID``, else the hostname; never a reserved name."""
    return check_node_id(explicit or os.environ.get("NODE_ID") or socket.gethostname())


def reserved_node_ids() -> frozenset[str]:
    """Names a node id may not take: what sits beside the node folders in ``logs/$RUN_ID/`` (``controller``,
    ``pids``, ``placements.jsonl``, ``CTS``, ...) and what would make a node key one of the fixed Redis keys
    (``pending``: ``q:pending``)."""
    from tracekit.core.keys import reserved_node_ids as key_names

    rid = "r"
    files = [controller_dir(rid), placements_path(rid), dispatch_path(rid), chaos_log_path(rid),
             chaos_report_path(rid), cts_dir(rid), run_dir(rid) / "opendc", run_dir(rid) / "timesync.log",
             run_dir(rid) / "chaos_profiles.json"]
    names = {p.name for p in files}
    if Path(pid_dir(rid)).parent == run_dir(rid):
        names.add(Path(pid_dir(rid)).name)
    names.add("pids")
    return frozenset(names | set(key_names()))


def check_node_id(value: str) -> str:
    """A node id: :func:`check_id` and not a reserved name (one-line :class:`UsageError` otherwise)."""
    check_id("NODE_ID", value)
    if value in reserved_node_ids():
        raise UsageError(f"NODE_ID {value!r} is reserved (it would share a Redis key or a folder of the run with "
                         f"the control plane): choose another, e.g. {value}-1")
    return value


def run_dir(rid: str) -> Path:
    return logs_root() / rid


def node_dir(rid: str, node: str) -> Path:
    return run_dir(rid) / node


def controller_dir(rid: str) -> Path:
    return run_dir(rid) / CONTROLLER_DIR


def pid_dir(rid: str) -> Path:
    """Default ``PROC_PID_DIR``: ``$PROC_PID_DIR`` or ``logs/$RUN_ID/pids``."""
    return Path(os.environ.get("PROC_PID_DIR") or run_dir(rid) / "pids")


def events_path(rid: str, node: str) -> Path:
    return node_dir(rid, node) / "events.jsonl"


def samples_path(rid: str, node: str) -> Path:
    return node_dir(rid, node) / "samples.jsonl"


def node_meta_path(rid: str, node: str) -> Path:
    return node_dir(rid, node) / "node.json"


def worker_meta_path(rid: str, node: str) -> Path:
    return node_dir(rid, node) / "worker.json"


def daemon_log_path(rid: str, node: str, name: str) -> Path:
    """stdout+stderr of a supervised daemon ``name`` (worker, collector, ...) of ``node`` (or "controller")."""
    return node_dir(rid, node) / f"{name}.log"


def daemon_pidfile_path(rid: str, node: str, name: str) -> Path:
    """Pidfile of a supervised daemon ``name`` of ``node`` (or "controller")."""
    return node_dir(rid, node) / f"{name}.pid"


def services_path(rid: str, node: str) -> Path:
    """The worker's service state lines (``schema.SERVICE_FIELDS``): docs/services.md."""
    return node_dir(rid, node) / "services.jsonl"


def requests_dir(rid: str) -> Path:
    """The load generator's raw request lines, ``<trace_id>.jsonl`` (+ ``.meta.json``): docs/services.md."""
    return controller_dir(rid) / "requests"


def placements_path(rid: str) -> Path:
    return run_dir(rid) / "placements.jsonl"


def dispatch_path(rid: str) -> Path:
    return run_dir(rid) / "dispatch.jsonl"


def chaos_log_path(rid: str) -> Path:
    """``make chaos``: one JSON line per injected fault (and its recovery)."""
    return run_dir(rid) / "chaos.jsonl"


def chaos_report_path(rid: str) -> Path:
    """``make chaos``: the final checks and fault statistics (JSON)."""
    return run_dir(rid) / "chaos_report.json"


def cts_dir(rid: str) -> Path:
    return run_dir(rid) / "CTS"


def inputs_root() -> Path:
    """``$TRACEKIT_INPUTS`` or ``<repo>/inputs``: tasks may only read below it."""
    return Path(os.environ.get("TRACEKIT_INPUTS", REPO_ROOT / "inputs")).resolve()


def outputs_root() -> Path:
    """``$TRACEKIT_OUTPUTS`` or ``<repo>/outputs``: tasks may only write below it."""
    return Path(os.environ.get("TRACEKIT_OUTPUTS", REPO_ROOT / "outputs")).resolve()
