"""Status view of the control plane: nodes, queues, the head task and why it waits, done/failed counts."""

from __future__ import annotations

import json
import sys
import time

import redis
from redis.client import NEVER_DECODE

from tracekit.control import payload
from tracekit.control.health import read_health, redis_write_blockers
from tracekit.control.placement import NodeState, choose
from tracekit.core.keys import Keys


def snapshot(client: redis.Redis, keys: Keys) -> dict:
    """Everything the status view shows, read in one pipeline (consistent enough for a human view)."""
    nodes = client.zrange(keys.nodes, 0, -1)

    def read(transaction: bool) -> list:
        pipe = client.pipeline(transaction=transaction)
        pipe.llen(keys.pending)
        pipe.llen(keys.pending)  # (keeps the positions below; the head itself is read as bytes, see below)
        pipe.lrange(keys.slots, 0, -1)
        pipe.hlen(keys.done)
        pipe.hlen(keys.failed)
        pipe.get(keys.scheduler_lock)
        for n in nodes:
            pipe.mget(keys.heartbeat(n), keys.cap(n), keys.cap_total(n), keys.run_count(n))
            pipe.hgetall(keys.node_info(n))
            pipe.llen(keys.queue(n))
            pipe.llen(keys.running(n))
        return pipe.execute()

    try:
        res = read(True)
    except redis.ResponseError:  # a Redis over maxmemory refuses MULTI too: read without a transaction
        res = read(False)
    pending, _, slots, n_done, n_failed, lock = res[:6]
    # as bytes: a pipeline would decode it, and any payload may be at the head, even one that is not UTF-8
    head = client.execute_command("LINDEX", keys.pending, 0, **{NEVER_DECODE: True})
    rows, states = [], []
    for i, n in enumerate(nodes):
        (hb, cap, total, rc), info, qlen, rlen = res[6 + 4 * i: 10 + 4 * i]
        par = int(info.get("parallel", 0) or 0)
        draining = info.get("draining") == "1"
        row = {"node": n, "alive": hb is not None, "draining": draining, "cap": int(cap or 0),
               "cap_total": int(total or 0),
               "run_count": int(rc or 0), "parallel": par, "free_slots": slots.count(n) if par > 0 else None,
               "queued": qlen, "running": rlen, "binding": info.get("binding"), "host": info.get("host")}
        rows.append(row)
        states.append(NodeState(n, row["alive"] and not draining, row["cap"], row["cap_total"], row["run_count"], par,
                                slots.count(n)))
    head_info = None if head is None else head_status(client, keys, head, states, lock)
    return {"pending": pending, "head": head_info, "nodes": rows, "done": n_done, "failed": n_failed,
            "scheduler": lock, "slot_tokens": len(slots), **health_snapshot(client, keys)}


def health_snapshot(client: redis.Redis, keys: Keys) -> dict:
    """Degraded daemons (their ``health`` records) and why Redis refuses writes, if it does."""
    try:
        daemons = read_health(client, keys)
    except (redis.RedisError, OSError):
        daemons = {}
    return {"health": daemons, "redis_problems": redis_write_blockers(client)}


def health_lines(snapshot: dict) -> list[str]:
    """One line per degraded daemon and per reason Redis refuses writes (none when all is well)."""
    out = [f"redis: {p}" for p in snapshot.get("redis_problems") or []]
    now = time.time() * 1000
    for daemon, rec in sorted((snapshot.get("health") or {}).items()):
        since = rec.get("since_ms")
        age = f" for {max(0.0, (now - since) / 1000):.0f} s" if isinstance(since, (int, float)) else ""
        problems = "; ".join(f"{k}: {v}" for k, v in (rec.get("problems") or {}).items())
        out.append(f"health: {daemon} {rec.get('state', 'degraded')}{age}: {problems or '?'}"[:300])
    return out


def head_status(client: redis.Redis, keys: Keys, head: bytes, states: list, lock: str | None) -> dict:
    """The head of q:pending and why it waits; a payload the gate refuses is named with the rule it breaks (the
    scheduler records it failed and moves on, or would once one runs)."""
    later = "" if lock else " once a central scheduler runs"
    try:
        env = payload.check(head)
    except payload.InvalidPayload as exc:
        return {"trace_id": exc.trace_id, "profile": exc.profile, "cpu_units": None, "attempt": exc.attempt,
                "why": f"bad payload, the scheduler records it failed{later}: {exc}"}
    base = {"trace_id": env.trace_id, "profile": env.profile, "cpu_units": env.cpu_units, "attempt": env.attempt}
    if env.cpu_units is None:
        return {**base, "why": f"no cpu_units: the scheduler records it failed{later}"}
    mark = client.hget(keys.trace_ids, env.trace_id)
    if mark and mark != f"q{env.attempt}":
        return {**base, "why": f"duplicate trace_id (already used in this run): the scheduler records it failed{later}"}
    dec = choose(states, env.cpu_units)
    why = (f"placeable on {dec.node}" + ("" if lock else " but no central scheduler is running")
           if dec.node else dec.reason)
    return {**base, "why": why}


def render(snapshot: dict) -> str:
    """The snapshot as a small text table."""
    out = [f"scheduler: {snapshot['scheduler'] or 'not running'}    q:pending {snapshot['pending']}    "
           f"done {snapshot['done']}    failed {snapshot['failed']}"]
    out += health_lines(snapshot)
    if snapshot["head"]:
        h = snapshot["head"]
        out.append(f"head: {h.get('trace_id')} {h.get('profile', '')} cpu_units={h.get('cpu_units', '?')} "
                   f"attempt={h.get('attempt', '?')}: {h['why']}")
    cols = ("node", "alive", "draining", "cap", "cap_total", "run_count", "free_slots", "queued", "running", "binding")
    table = [cols] + [tuple("-" if r[c] is None else str(r[c]) for c in cols) for r in snapshot["nodes"]]
    w = [max(len(row[i]) for row in table) for i in range(len(cols))]
    out += ["  ".join(v.ljust(w[i]) for i, v in enumerate(row)) for row in table]
    if not snapshot["nodes"]:
        out.append("(no worker registered)")
    return "\n".join(out)


def show(client: redis.Redis, keys: Keys, watch: bool, interval: float, as_json: bool) -> int:
    """Print the status once, or refresh it every ``interval`` s with ``watch``."""
    while True:
        s = snapshot(client, keys)
        text = json.dumps(s, indent=1) if as_json else render(s)
        if watch and sys.stdout.isatty():
            sys.stdout.write("\x1b[H\x1b[2J")
        print(text + (f"\n(refresh every {interval:g} s, Ctrl-C to quit)" if watch else ""), flush=True)
        if not watch:
            return 0
        time.sleep(interval)
