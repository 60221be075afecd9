"""Events of a run -> invocations: the nodes' ``events.jsonl`` (exec, reject, fenced), the controller's events,
``dispatch.jsonl`` and ``placements.jsonl``. Events are small (one line per task) and are read whole."""

from __future__ import annotations

from tracekit.core import paths, schema
from tracekit.core.jsonl import read_jsonl
from tracekit.trace.intervals import TaskWindow, round_ms
from tracekit.trace.model import NodeInfo, ParseResult, Task
from tracekit.trace.vocabulary import is_number


def load_events(result: ParseResult) -> dict[str, list[Task]]:
    """Read every node's events (and the controller's) into ``result.invocations``; returns node -> its executed
    attempts with a process (the tasks to cut)."""
    r = result
    seen: set[tuple] = set()
    fenced: set[tuple] = set()
    tasks: dict[str, list[Task]] = {}
    for node in r.nodes:
        path = r.run_dir / node.node_id / "events.jsonl"
        if not path.exists():
            continue
        node_tasks: list[Task] = []
        for lineno, ev in read_jsonl(path, r.bad):
            where = f"{path}:{lineno}"
            kind = ev.get("kind")
            if kind == "exec":
                if not isinstance(ev.get("trace_id"), str):
                    r.bad.add(where, "exec event without trace_id")
                    continue
                ident = (node.node_id, ev.get("trace_id"), ev.get("attempt"), ev.get("pid"), ev.get("starttime"))
                if ident in seen:
                    r.duplicate_events += 1
                    continue
                seen.add(ident)
                inv = _exec_invocation(ev, node)
                r.invocations.append(inv)
                r.launches.append(_launch(ev, inv, node))
                # starttime may be missing (worker fallback without the adapter): such a task is matched to
                # samples by pid within its run window instead (streaming.NodeCut.match)
                ran = isinstance(ev.get("pid"), int) and isinstance(ev.get("starttime"), (int, type(None))) \
                    and is_number(ev.get("ts_start")) and is_number(ev.get("ts_end"))
                if ran:
                    node_tasks.append(_new_task(inv, ev, node))
            elif kind == "reject" or kind == "failed":
                r.invocations.append(_reject_invocation({**ev, "node_id": ev.get("node_id") or node.node_id},
                                                        node.offset_ms))
            elif kind == "fenced":
                fenced.add((ev.get("trace_id"), ev.get("attempt")))
            else:
                r.unknown_events += 1
                r.bad.add(where, f"unknown event kind {kind!r}")
        tasks[node.node_id] = node_tasks
    cfile = r.run_dir / paths.CONTROLLER_DIR / "events.jsonl"
    slots = _SlotRecords()
    if cfile.exists():
        for lineno, ev in read_jsonl(cfile, r.bad):
            kind = ev.get("kind")
            if kind in ("failed", "reject"):
                r.invocations.append(_reject_invocation(ev, 0.0))
                slots.add(ev)
            elif kind == "fenced":
                fenced.add((ev.get("trace_id"), ev.get("attempt")))
            elif kind in ("requeue", "release"):
                if not slots.add(ev):
                    r.bad.add(f"{cfile}:{lineno}", f"{kind} record without trace_id, attempt, node_id or numeric ts")
            else:
                r.bad.add(f"{cfile}:{lineno}", f"unexpected controller event kind {kind!r}")
    slots.apply(r.invocations)
    for inv in r.invocations:
        if inv.get("pid") is not None and (inv["trace_id"], inv["attempt"]) in fenced:
            inv["status"] = "fenced"
            inv["error"] = inv.get("error") or "completion refused: the task had been recovered and re-queued"
    return tasks


class _SlotRecords:
    """The controller's ``release`` / ``requeue`` / ``failed`` records -> ``ts_release`` and ``ts_requeue``.

    ``ts_release`` of an attempt: its ``release`` record (accepted completion: capacity back at that instant);
    else the ``requeue`` record that took the task off that node (attempt n+1, or n when handed back unstarted);
    else the controller's ``failed`` record for that attempt on that node (given up: capacity reclaimed). ``ts_requeue``
    of attempt n > 1: the ``requeue`` record that created it (``bump``). All are Redis TIME ms: no clock offset.
    """

    def __init__(self) -> None:
        self.release: dict[tuple, int] = {}
        self.reclaim: dict[tuple, int] = {}  # (trace_id, attempt that lost the slot, node) -> ts
        self.created: dict[tuple, int] = {}  # (trace_id, attempt) -> ts of the requeue that created it

    def add(self, ev: dict) -> bool:
        tid, att, node, ts = ev.get("trace_id"), ev.get("attempt"), ev.get("node_id"), ev.get("ts")
        if not (isinstance(tid, str) and isinstance(att, int) and isinstance(node, str) and is_number(ts)):
            return False
        ms = round_ms(float(ts))
        kind = ev.get("kind")
        if kind == "release":
            self.release.setdefault((tid, att, node), ms)
        elif kind == "requeue":
            lost = att - 1 if ev.get("bump") else att
            self.reclaim.setdefault((tid, lost, node), ms)
            if ev.get("bump"):
                self.created.setdefault((tid, att), ms)
        else:  # failed: the controller gave the task up (its capacity on that node was reclaimed then)
            self.reclaim.setdefault((tid, att, node), ms)
        return True

    def apply(self, invocations: list[dict]) -> None:
        if not (self.release or self.reclaim or self.created):
            return
        for inv in invocations:
            key = (inv.get("trace_id"), inv.get("attempt"), inv.get("node_id"))
            ts = self.release.get(key, self.reclaim.get(key))
            if ts is not None and inv.get("pid") is not None:
                inv["ts_release"] = ts
            if isinstance(inv.get("attempt"), int) and inv["attempt"] > 1:
                inv["ts_requeue"] = self.created.get((inv.get("trace_id"), inv["attempt"]))


def load_controller(result: ParseResult) -> None:
    """Fill the invocations from ``dispatch.jsonl`` and ``placements.jsonl`` (enqueue time, profile, placement),
    then fence the attempts a later attempt superseded."""
    r = result
    dpath = r.run_dir / paths.dispatch_path("_").name
    ppath = r.run_dir / paths.placements_path("_").name
    r.dispatch = [d for _, d in read_jsonl(dpath, r.bad)] if dpath.exists() else []
    r.placements = [p for _, p in read_jsonl(ppath, r.bad)] if ppath.exists() else []
    by_tid = {d.get("trace_id"): d for d in r.dispatch}
    placed = {(p.get("trace_id"), p.get("attempt")): p for p in r.placements}
    for inv in r.invocations:
        d = by_tid.get(inv["trace_id"])
        if d:
            for k in ("ts_enqueue", "profile", "cpu_units", "input", "output"):
                if inv.get(k) is None and d.get(k) is not None:
                    inv[k] = d[k]
        p = placed.get((inv["trace_id"], inv["attempt"]))
        if p and inv.get("ts_dispatch") is None and is_number(p.get("ts")):
            inv["ts_dispatch"] = round_ms(float(p["ts"]))
        if inv.get("node_id") is None and p:
            inv["node_id"] = p.get("node")
    _fence_superseded(r)


def _fence_superseded(r: ParseResult) -> None:
    """An executed attempt with a later attempt of the same task was never accepted: mark it fenced.

    attempt+1 exists only when the control plane recovered attempt N from running:<node> (its node died,
    was cut off, or its worker restarted), and an accepted completion removes the task from running:<node>
    atomically; so attempt N's completion was refused, or never sent (its worker was killed), even when no
    ``fenced`` event was written (e.g. the adapter outlived a SIGKILLed worker and exited 0).
    """
    last: dict[str, int] = {}
    for rec in [*r.invocations, *r.placements]:
        a = rec.get("attempt")
        if isinstance(a, int) and isinstance(rec.get("trace_id"), str):
            last[rec["trace_id"]] = max(a, last.get(rec["trace_id"], a))
    for inv in r.invocations:
        a = inv.get("attempt")
        if inv.get("pid") is not None and inv["status"] != "fenced" and isinstance(a, int) \
                and a < last.get(inv["trace_id"], a):
            inv["status"] = "fenced"
            inv["error"] = inv.get("error") or (f"superseded: attempt {last[inv['trace_id']]} re-ran the task "
                                                "after this attempt's node or worker was lost")


def _exec_invocation(ev: dict, node: NodeInfo) -> dict:
    inv = {k: ev.get(k) for k in schema.INVOCATION_FIELDS}
    inv["node_id"] = node.node_id
    for k in ("ts_start", "ts_end"):
        inv[k] = round_ms(float(ev[k]) + node.offset_ms) if is_number(ev.get(k)) else None
    if inv["ts_start"] is not None and inv["ts_end"] is not None and inv["ts_end"] <= inv["ts_start"]:
        inv["ts_end"] = inv["ts_start"] + 1  # same rule as the rows: a run covers at least 1 ms
    for k in ("ts_enqueue", "ts_dispatch"):
        inv[k] = round_ms(float(ev[k])) if is_number(ev.get(k)) else None
    status = ev.get("status") or "failed"
    code = ev.get("exit_code")
    if status == "ok" and ((code not in (0, None)) or ev.get("signal")):
        status = "failed"
    inv["status"] = "ok" if status == "ok" else "failed"
    if inv["status"] == "failed" and not inv.get("error"):
        inv["error"] = f"exit code {code}" if code is not None else f"signal {ev.get('signal')}"
    use_cg = is_number(ev.get("cg_cpu_us"))
    if use_cg:
        inv["cpu_ms"] = int(round(ev["cg_cpu_us"])) / 1000
    elif is_number(ev.get("cpu_ms")):
        inv["cpu_ms"] = int(round(ev["cpu_ms"] * 1000)) / 1000
    return inv


def _launch(ev: dict, inv: dict, node: NodeInfo) -> dict:
    """The launch stages of one exec event on the controller's clock (floats: sub-ms stages stay visible)."""
    out = {"node_id": node.node_id, "trace_id": inv["trace_id"], "attempt": inv["attempt"],
           "launch_path": ev.get("launch_path"), "status": inv["status"], "ts_end": inv["ts_end"]}
    for k in schema.LAUNCH_STAGES:
        off = 0.0 if k == "ts_dispatch" else node.offset_ms
        out[k] = float(ev[k]) + off if is_number(ev.get(k)) else None
    return out


def _reject_invocation(ev: dict, offset: float) -> dict:
    inv = dict.fromkeys(schema.INVOCATION_FIELDS)
    for k in ("trace_id", "attempt", "node_id", "profile"):
        inv[k] = ev.get(k)
    inv["status"] = "failed"
    inv["error"] = ev.get("reason") or f"{ev.get('kind')} event without a reason"
    if is_number(ev.get("ts")):
        inv["ts_end"] = round_ms(float(ev["ts"]) + offset)
    return inv


def _new_task(inv: dict, ev: dict, node: NodeInfo) -> Task:
    start = float(ev["ts_start"]) + node.offset_ms
    end = float(ev["ts_end"]) + node.offset_ms
    use_cg = is_number(ev.get("cg_cpu_us"))
    total_us = int(round(inv["cpu_ms"] * 1000)) if inv.get("cpu_ms") is not None else 0
    rss = ev.get("max_rss_kb") if isinstance(ev.get("max_rss_kb"), int) else None
    return Task(inv, start, end, use_cg, TaskWindow.of(start, end, total_us, rss), "", trace_id=inv["trace_id"])
