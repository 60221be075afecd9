"""Direct-to-node dispatching: the original Tracekit's default dispatcher mode, without a central scheduler.

The dispatcher decides each task's node itself and pushes the payload straight onto ``q:<node>``; the node's
worker takes it from there as from any placement. Placement policies (pure functions, unit-tested):

    rr3                           task i (enqueue order) goes to node i mod n (the original's round-robin)
    duration-greedy, lpt-duration longest input first (ffprobe duration), each to the node with the least
                                  duration so far (ties: the first in ``--nodes`` order); offline, before pushing
    duration-online               (alias online-duration) longest first; every ``--dribble-interval`` s push up to
                                  ``--batch-size`` tasks, each to the node whose q:<node> is shortest (then least
                                  duration so far) among those below ``--backlog-limit``; waits while none is

Direct tasks hold no capacity (``cap:<node>`` is the central scheduler's bookkeeping), as in the original. A worker
hands back to ``q:pending`` what is still in its ``q:<node>`` when it registers or stops, so the workers of the
named nodes must run first: :func:`check_nodes` refuses a node without a live worker. docs/migrating.md.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable

import redis

from tracekit.control.dispatch import Plan, check_batch, redis_ms, summary, wait_all
from tracekit.control.task import Task
from tracekit.core import paths
from tracekit.core.errors import UsageError
from tracekit.core.jsonl import append_line
from tracekit.core.keys import Keys

DEFAULT_NODES = "cloud0,cloud1,cloud2"  # the original dispatcher's --nodes default
POLICIES = ("rr3", "duration-greedy", "lpt-duration", "duration-online", "online-duration")
OFFLINE_DURATION = ("duration-greedy", "lpt-duration")
ONLINE_DURATION = ("duration-online", "online-duration")
TASK_FIELDS = ("trace_id", "profile", "cpu_units", "ts_enqueue", "attempt", "input", "output")


# ---- pure placement policies ----


def parse_nodes(text: str) -> list[str]:
    """``"cloud0, cloud1"`` -> ["cloud0", "cloud1"]; each a safe node id, none twice, at least one."""
    nodes = [n.strip() for n in (text or "").split(",") if n.strip()]
    if not nodes:
        raise UsageError("--nodes: no node given (e.g. --nodes cloud1,cloud2)")
    for n in nodes:
        if not paths.SAFE_ID.match(n):
            raise UsageError(f"--nodes: {n!r} is not a node id (letters, digits, '_', '.', '-')")
    if len(set(nodes)) != len(nodes):
        raise UsageError("--nodes: a node is named twice")
    return nodes


def round_robin(n_tasks: int, nodes: list[str]) -> list[str]:
    """The node of each task: task i -> nodes[i mod len(nodes)] (policy ``rr3``)."""
    return [nodes[i % len(nodes)] for i in range(n_tasks)]


def longest_first(durations: list[float]) -> list[int]:
    """Task indexes by decreasing duration; equal durations keep their order (a stable sort, as the original)."""
    return sorted(range(len(durations)), key=lambda i: -durations[i])


def duration_greedy(durations: list[float], nodes: list[str]) -> list[str]:
    """The node of each task under LPT: longest first, each to the least-loaded node (load = sum of durations;
    ties: the first in ``nodes`` order). Policies ``duration-greedy`` / ``lpt-duration``."""
    load = {n: 0.0 for n in nodes}
    out = [""] * len(durations)
    for i in longest_first(durations):
        n = min(nodes, key=lambda k: load[k])
        out[i] = n
        load[n] += max(0.0, durations[i])
    return out


def online_pick(nodes: list[str], backlog: dict[str, int], load: dict[str, float], limit: int) -> str | None:
    """``duration-online``: among nodes whose backlog is below ``limit``, the one with the smallest backlog, then
    the smallest load, then the first in ``nodes`` order; None when every node is full."""
    candidates = [n for n in nodes if backlog.get(n, 0) < limit]
    if not candidates:
        return None
    return min(candidates, key=lambda k: (backlog.get(k, 0), load.get(k, 0.0)))


# ---- I/O ----


def probe_duration(path: str) -> float:
    """The media duration in seconds by ffprobe; 0.0 when it cannot be read (as the original)."""
    try:
        out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of",
                              "default=nokey=1:noprint_wrappers=1", path], capture_output=True, text=True,
                             timeout=60, stdin=subprocess.DEVNULL)
        return max(0.0, float(out.stdout.strip()))
    except (OSError, ValueError, subprocess.SubprocessError):
        return 0.0


def check_nodes(client: redis.Redis, keys: Keys, nodes: list[str]) -> None:
    """Refuse (one line) nodes without a live worker: what sits in q:<node> when a worker registers goes back to
    q:pending, where no central scheduler may be running to place it."""
    pipe = client.pipeline(transaction=False)
    for n in nodes:
        pipe.exists(keys.heartbeat(n))
    dead = [n for n, alive in zip(nodes, pipe.execute()) if not alive]
    if dead:
        raise UsageError(f"direct mode: no live worker on node(s) {', '.join(dead)}: start their workers first "
                         "(tracekit-worker --node-id ...), or use the central scheduler (no --policy/--nodes)")


def push_to(client: redis.Redis, keys: Keys, run_id: str, node: str, batch: list[dict]) -> None:
    """Stamp ``ts_enqueue`` (Redis TIME), check the batch with the payload gate and RPUSH it onto q:<node>; each
    task gets a dispatch.jsonl line with its node."""
    now = redis_ms(client)
    raws = []
    for d in batch:
        d["ts_enqueue"] = now
        raws.append(Task(**{k: d.get(k) for k in TASK_FIELDS}, params=d.get("params") or {}).to_json())
    check_batch(client, keys, raws)
    client.rpush(keys.queue(node), *raws)
    for d in batch:
        append_line(paths.dispatch_path(run_id), {"seq": d.get("seq"), "trace_id": d["trace_id"],
                                                  "profile": d["profile"], "cpu_units": d["cpu_units"],
                                                  "ts_enqueue": now, "input": d.get("input"),
                                                  "output": d.get("output"), "node": node})


def assign(policy: str, tasks: list[dict], nodes: list[str], duration_of: Callable[[dict], float]) -> list[str]:
    """The node of each task for an offline policy (``rr3``, ``duration-greedy``, ``lpt-duration``)."""
    if policy == "rr3":
        return round_robin(len(tasks), nodes)
    if policy in OFFLINE_DURATION:
        return duration_greedy([duration_of(t) for t in tasks], nodes)
    raise UsageError(f"unknown policy {policy!r} (known: {', '.join(POLICIES)})")


def dispatch_direct(client: redis.Redis, keys: Keys, run_id: str, tasks: list[dict], nodes: list[str],
                    policy: str, duration_of: Callable[[dict], float], batch_size: int = 1,
                    backlog_limit: int = 1, interval: float = 1.0, drip: bool = False,
                    stop: threading.Event | None = None, say: Callable[[str], None] = print) -> dict[str, int]:
    """Push ``tasks`` onto the nodes' queues by ``policy``; returns the count per node.

    Offline policies push everything at once, or with ``drip`` ``batch_size`` tasks every ``interval`` s to
    nodes whose q:<node> is shorter than ``backlog_limit`` (a task waits for its node; none is skipped).
    ``duration-online`` decides each node at push time (:func:`online_pick`)."""
    stop = stop or threading.Event()
    check_nodes(client, keys, nodes)
    counts = {n: 0 for n in nodes}
    if policy in ONLINE_DURATION:
        durations = [duration_of(t) for t in tasks]
        order = [tasks[i] for i in longest_first(durations)]
        dur = {id(t): d for t, d in zip(tasks, durations)}
        load = {n: 0.0 for n in nodes}
        i = 0
        while i < len(order) and not stop.is_set():
            backlog = dict(zip(nodes, (int(x) for x in _llens(client, keys, nodes))))
            sent = 0
            while sent < batch_size and i < len(order):
                n = online_pick(nodes, backlog, load, backlog_limit)
                if n is None:
                    break
                push_to(client, keys, run_id, n, [order[i]])
                backlog[n] += 1
                load[n] += dur[id(order[i])]
                counts[n] += 1
                i, sent = i + 1, sent + 1
            say(f"[online] batch={sent}, total={i}, backlog=" + ", ".join(f"{k}:{backlog[k]}" for k in nodes))
            if i < len(order):
                stop.wait(interval)
        return counts
    where = assign(policy, tasks, nodes, duration_of)
    if not drip:
        for n in nodes:
            mine = [t for t, w in zip(tasks, where) if w == n]
            if mine:
                push_to(client, keys, run_id, n, mine)
                counts[n] = len(mine)
        say(f"enqueued {len(tasks)} tasks: " + ", ".join(f"{n}={counts[n]}" for n in nodes))
        return counts
    i = 0
    while i < len(tasks) and not stop.is_set():
        backlog = dict(zip(nodes, (int(x) for x in _llens(client, keys, nodes))))
        sent = 0
        while sent < batch_size and i < len(tasks) and backlog[where[i]] < backlog_limit:
            push_to(client, keys, run_id, where[i], [tasks[i]])
            backlog[where[i]] += 1
            counts[where[i]] += 1
            i, sent = i + 1, sent + 1
        say(f"[drip] batch={sent}, total={i}, backlog=" + ", ".join(f"{k}:{backlog[k]}" for k in nodes))
        if i < len(tasks):
            stop.wait(interval)
    return counts


def _llens(client: redis.Redis, keys: Keys, nodes: list[str]) -> list:
    pipe = client.pipeline(transaction=False)
    for n in nodes:
        pipe.llen(keys.queue(n))
    return pipe.execute()


def input_duration(task: dict) -> float:
    """The ffprobe duration of a task's input (0.0 for a task without input or an unreadable file)."""
    return probe_duration(str(paths.inputs_root() / task["input"])) if task.get("input") else 0.0


def run(client: redis.Redis, keys: Keys, run_id: str, the_plan: Plan, nodes: list[str], policy: str,
        batch_size: int = 1, backlog_limit: int = 1, interval: float = 1.0, drip: bool = False, wait: bool = False,
        progress: bool = True) -> int:
    """The dispatcher's direct mode: push the plan by ``policy``, optionally wait for every task (as
    :func:`tracekit.control.dispatch.dispatch`); prints a summary."""
    tasks = the_plan.tasks
    print(f"dispatcher: run {run_id}, {len(tasks)} task(s), seed {the_plan.seed}, direct mode, policy {policy}, "
          f"nodes {','.join(nodes)}", file=sys.stderr)
    dispatch_direct(client, keys, run_id, tasks, nodes, policy, input_duration, batch_size=batch_size,
                    backlog_limit=backlog_limit, interval=interval, drip=drip)
    if not wait:
        return 0
    from tqdm import tqdm  # as dispatch.dispatch: only when waiting

    bar = tqdm(total=len(tasks), desc="finished", unit="task", disable=not progress, file=sys.stderr)
    try:
        done, failed = wait_all(client, keys, [t["trace_id"] for t in tasks], threading.Event(), bar)
    finally:
        bar.close()
    text, code = summary(tasks, done, failed)
    print(text)
    return code
