"""Central scheduler benchmark: what a cluster does at steady state, beside Redis's own LPUSH/LPOP rate.

Runs a private redis-server and the real scheduler loop (``tracekit.control.central.run``, placement log written to a
temporary logs folder). For 100 / 1,000 / 5,000 nodes of small capacities (1, 2, 4 units in turn, cap-only), and for
first-fit and every weigher of ``placement.WEIGHER_TABLE`` in both orders:

- steady state: M one-unit tasks are preloaded on q:pending; the nodes fill up, then a completer process (a fake
  worker for every node: it tails placements.jsonl, moves each placed task to the node's running list and completes
  it with the real COMPLETE script, one call per task, capacity back) frees capacity while placement goes on. It
  stands for workers on other machines, so it speaks the Redis protocol by hand to cost this machine little CPU.
  Placements/s is counted from the placement after the cluster first filled (N x capacity placements) to the last
  one, with the placement timestamps (Redis TIME).
- enqueue -> placement latency at 1,000 nodes while a producer pushes tasks open-loop at half the steady-state rate
  just measured: placement ``ts`` (Redis TIME, ms resolution) minus the task's ``ts_enqueue`` (the producer's clock,
  µs; same host clock).
- placements.jsonl bytes per placement (default log; must not grow with the node count).
- where the time goes: Redis main-thread CPU per task at steady state, the Python processes' CPU per task (the
  scheduler's process, the fake workers), and Redis's own time per script call (INFO commandstats while the nodes
  fill: PLACE per placement, COMPLETE per call).
- baseline: ``redis-benchmark -t lpush,lpop`` against the same private server (one client, no pipelining: the
  scheduler's own connection pattern; and 50 clients, redis-benchmark's default).

Targets: 1,000 nodes: first-fit >= 20,000 placements/s, every weigher >= 10,000/s; 5,000 nodes no more than
2x slower than 1,000; p99 enqueue -> placement <= 5 ms at 1,000 nodes at half the peak rate; log bytes per placement
independent of the node count. ``--quick`` (what ``make bench`` runs): 100 and 1,000 nodes, first-fit and one
weigher, about a minute.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import multiprocessing as mp
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import print_table
from tracekit.cluster.redis_server import RedisServer
from tracekit.control import central
from tracekit.control.head_gate import HeadGate, read_head
from tracekit.control.lua import Scripts, library, weigher_lua
from tracekit.control.placement import ORDERS, WEIGHER_TABLE
from tracekit.core import paths
from tracekit.core.keys import Keys

CAPS = (1, 2, 4)
_RUNS = itertools.count()


def _task(i: int, ts: float = 0) -> str:
    return json.dumps({"trace_id": f"b{i:07d}", "profile": "synth1c", "cpu_units": 1, "ts_enqueue": ts, "attempt": 1})


def _node(i: int) -> str:
    return f"node{i:05d}"


def _setup(client, keys: Keys, nodes: int, caps: tuple = CAPS) -> int:
    """Register the nodes (capacities ``caps`` in turn); returns the cluster's total capacity."""
    client.flushdb()
    sc = Scripts(client, keys)
    pipe = client.pipeline(transaction=False)
    for i in range(nodes):
        sc.register(args=[_node(i), f"bench{i}", caps[i % len(caps)], 0, 3_600_000, "0"], client=pipe)
        if i % 500 == 499:
            pipe.execute()
    pipe.execute()
    return sum(caps[i % len(caps)] for i in range(nodes))


_PLACED = re.compile(rb'"trace_id":"([^"]+)","attempt":(\d+),"node":"([^"]+)"')


def _resp(*args: bytes) -> bytes:
    """One command in the Redis protocol."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def _completer(host: str, port: int, password: str, path: str, expected: int, done: mp.Event) -> None:
    """A fake worker for every node: each placement line -> LMOVE q:<node> -> running:<node> -> COMPLETE (the real
    script, one call per task as a worker makes it). It stands for workers on other machines, so it is written to
    cost this machine little CPU: the Redis protocol by hand on one socket, hiredis replies, placement lines read
    with one regex (the placement line starts with trace_id, attempt, node)."""
    import socket

    import hiredis
    import redis

    keys = Keys()
    client = redis.Redis(host=host, port=port, password=password)
    # the worker's call: FCALL of the loaded library (Redis >= 7), else EVALSHA of the script
    code, names = library(keys.prefix, weigher_lua())
    try:
        client.function_load(code, replace=True)
        cmd, name = b"FCALL", names["complete"].encode()
    except redis.exceptions.ResponseError:
        cmd, name = b"EVALSHA", client.script_load(Scripts(redis.Redis(), keys).complete.script).encode()
    sock = socket.create_connection((host, port))
    reader = hiredis.Reader()

    def call(payload: bytes, n: int) -> list:
        sock.sendall(payload)
        out: list = []
        while len(out) < n:
            r = reader.gets()
            while r is False:
                reader.feed(sock.recv(1 << 20))
                r = reader.gets()
            if isinstance(r, hiredis.ReplyError):
                raise RuntimeError(r)
            out.append(r)
        return out

    call(_resp(b"AUTH", password.encode()), 1)
    seen, buf = 0, b""
    while not os.path.exists(path):
        time.sleep(0.001)
    with open(path, "rb") as fh:
        while seen < expected and not done.is_set():
            chunk = fh.read(1 << 20)
            if not chunk:
                time.sleep(0.0005)
                continue
            buf += chunk
            cut = buf.rfind(b"\n") + 1
            recs, buf = _PLACED.findall(buf, 0, cut), buf[cut:]
            for s in range(0, len(recs), 1000):
                part = recs[s:s + 1000]
                raws = call(b"".join(_resp(b"LMOVE", keys.queue(nd.decode()).encode(),
                                           keys.running(nd.decode()).encode(), b"LEFT", b"RIGHT")
                                     for _, _, nd in part), len(part))
                call(b"".join(_resp(cmd, name, b"0", nd, raw, tid, att, b"done", b"{}")
                              for (tid, att, nd), raw in zip(part, raws)), len(part))
            seen += len(recs)


def _run_scheduler(srv: RedisServer, keys: Keys, cfg: central.SchedulerConfig, stop, cpu) -> None:
    central.run(srv.client(), keys, cfg, stop)
    cpu.value = time.process_time()  # the scheduler process's CPU: its loop and its log-drain thread


def _scheduler(srv: RedisServer, keys: Keys, run_id: str, weigher: str, order: str, idle_exit: bool):
    """The real scheduler loop in a process of its own, as it runs in a cluster (no thread of the bench's shares
    its interpreter lock)."""
    ctx = mp.get_context("fork")
    stop, cpu = ctx.Event(), ctx.Value("d", 0.0)
    cfg = central.SchedulerConfig(run_id=run_id, weigher=weigher, order=order, exit_when_idle=idle_exit,
                                  reap_interval=1.0)
    proc = ctx.Process(target=_run_scheduler, args=(srv, keys, cfg, stop, cpu), daemon=True)
    proc.start()
    return proc, stop, cpu


def _redis_cpu(client) -> float:
    """CPU seconds (user + system) of redis-server's main thread so far."""
    info = client.info("cpu")
    return float(info.get("used_cpu_user_main_thread", info["used_cpu_user"])) + float(
        info.get("used_cpu_sys_main_thread", info["used_cpu_sys"]))


def _script_usec(stats: dict) -> float:
    """Redis's time in the steps (FCALL on Redis >= 7, EVALSHA before), µs, from INFO commandstats."""
    return sum(stats.get(k, {}).get("usec", 0) for k in ("cmdstat_evalsha", "cmdstat_fcall"))


def _placements(run_id: str) -> tuple[list[dict], int]:
    p = paths.placements_path(run_id)
    data = p.read_bytes()
    return [json.loads(x) for x in data.splitlines() if x], len(data)


def steady(srv: RedisServer, nodes: int, m: int, weigher: str, order: str, rate: float = 0.0,
           seconds: float = 0.0, caps: tuple = CAPS) -> dict:
    """One run: preloaded (rate 0) or open-loop at ``rate`` tasks/s for ``seconds``. Returns the figures."""
    client, keys = srv.client(), Keys()
    total = _setup(client, keys, nodes, caps)
    run_id = f"b{nodes}-{weigher or 'ff'}-{order}-{int(rate)}-{next(_RUNS)}"  # one placements.jsonl per run
    enq: dict[str, float] = {}
    if rate:
        m = int(rate * seconds)
    else:
        pipe = client.pipeline(transaction=False)
        for i in range(m):
            pipe.rpush(keys.pending, _task(i))
            if i % 5000 == 4999:
                pipe.execute()
        pipe.execute()
    done = mp.Event()
    comp = mp.get_context("fork").Process(
        target=_completer, args=(srv.host, srv.port, srv.password, str(paths.placements_path(run_id)), m, done),
        daemon=True)
    comp.start()
    client.config_resetstat()
    cpu0 = _redis_cpu(client)
    kids0 = os.times()
    wall0 = time.perf_counter()
    sched, stop, sched_cpu = _scheduler(srv, keys, run_id, weigher, order, idle_exit=not rate)
    if rate:
        deadline = time.monotonic() + 10
        while not client.exists(keys.scheduler_lock) and time.monotonic() < deadline:
            time.sleep(0.01)  # the scheduler is up (lock taken, index rebuilt) before the first task
        time.sleep(0.2)
        t0, i, step = time.perf_counter(), 0, 0.002
        while i < m:
            due = min(m, int((time.perf_counter() - t0) * rate) + 1)
            if due > i:
                pipe = client.pipeline(transaction=True)
                now = time.time() * 1000
                for j in range(i, due):
                    enq[f"b{j:07d}"] = now
                    pipe.rpush(keys.pending, _task(j, round(now, 3)))
                pipe.lpush(keys.wake, "1")
                pipe.ltrim(keys.wake, 0, 0)
                pipe.execute()
                i = due
            time.sleep(step)
    comp.join(120)
    wall = time.perf_counter() - wall0
    cpu = _redis_cpu(client) - cpu0
    done.set()
    stop.set()
    sched.join(30)
    # the Python side: the scheduler process (loop and log drain) and the completer (fake workers)
    kids = os.times()
    comp_cpu = kids.children_user + kids.children_system - kids0.children_user - kids0.children_system - sched_cpu.value
    stats = client.info("commandstats")
    if os.environ.get("TK_BENCH_STATS"):
        print({k: (v["calls"], v["usec"] // m) for k, v in sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:8]})
    recs, size = _placements(run_id)
    assert len(recs) == m, f"placed {len(recs)} of {m}"
    # where Redis's time goes: its main thread's CPU over the run, and the scripts' share (PLACE, COMPLETE, REAP)
    out = {"bytes_per_placement": size / m, "placed": m, "redis_us_per_task": cpu * 1e6 / m,
           "script_us_per_task": _script_usec(stats) / m, "redis_busy": cpu / wall,
           "scheduler_us_per_task": sched_cpu.value * 1e6 / m, "completer_us_per_task": comp_cpu * 1e6 / m}
    if rate:
        lat = [p["ts"] - enq[p["trace_id"]] for p in recs]
        q = statistics.quantiles(lat, n=100)
        out.update(p50=q[49], p99=q[98])
    else:
        ts = sorted(p["ts"] for p in recs)
        first = ts[min(total, m - 1)]
        out["rate"] = (m - total) / max(1e-3, (ts[-1] - first) / 1000)
        out["fill_ms"] = first - ts[0]
    return out


def fill(srv: RedisServer, nodes: int, weigher: str, order: str) -> dict:
    """Placements/s while empty nodes fill up and nothing completes (Redis does nothing but PLACE calls of 256, the
    scheduler's batch): one task per free unit, repeated on a fresh cluster until 5,000 placements were timed.

    PLACE is called as the scheduler calls it: with the head it read (``LRANGE``) and checked (``HeadGate``).
    Also Redis's own time per script call (INFO commandstats, the least of the repeats: a figure of Redis alone,
    though the OS may still preempt it): PLACE per placement (with its share of the head reads), and COMPLETE per
    call for every placed task (taken by a pipelined LMOVE first, as a worker takes it)."""
    client, keys = srv.client(), Keys()
    sc, gate = Scripts(client, keys), HeadGate()
    placed, spent, place_us, complete_us = 0, 0.0, [], []
    while placed < 5000:
        total = _setup(client, keys, nodes)
        pipe = client.pipeline(transaction=False)
        for i in range(total):
            pipe.rpush(keys.pending, _task(i))
        pipe.execute()
        sc.reindex(args=[weigher, order])
        gate.warm(read_head(client, keys.pending, total))  # the scheduler checks the next head while Redis places
        client.config_resetstat()
        t0 = time.perf_counter()
        n = 0
        while n < total:
            head = gate.place_args(read_head(client, keys.pending, 256))
            n += int(sc.place(args=[weigher, order, 256, "0", *head])[0])
        spent += time.perf_counter() - t0
        placed += total
        stats = client.info("commandstats")
        place_us.append((_script_usec(stats) + stats.get("cmdstat_lrange", {}).get("usec", 0)) / total)
        recs = [json.loads(f["r"]) for _, f in client.xrange(keys.controller_log, "-", "+") if f["f"] == "p"]
        pipe = client.pipeline(transaction=False)
        for r in recs:
            pipe.lmove(keys.queue(r["node"]), keys.running(r["node"]), "LEFT", "RIGHT")
        raws = pipe.execute()
        client.config_resetstat()
        pipe = client.pipeline(transaction=False)
        for r, raw in zip(recs, raws):
            sc.complete(args=[r["node"], raw, r["trace_id"], 1, "done", "{}"], client=pipe)
        assert all(v == "ok" for v in pipe.execute())
        complete_us.append(_script_usec(client.info("commandstats")) / len(recs))
    return {"rate": placed / spent, "place_us": min(place_us), "complete_us": min(complete_us)}


def redis_benchmark(srv: RedisServer, n: int) -> dict:
    """LPUSH / LPOP requests/s from redis-benchmark against the bench's own server (1 client and 50 clients)."""
    exe = shutil.which("redis-benchmark")
    if not exe:
        return {}
    out = {}
    # redis-benchmark takes a password only on its command line: a throwaway ACL user (list commands only),
    # deleted right after, never the server's own password
    client, token = srv.client(), secrets.token_urlsafe(16)
    client.acl_setuser("tk-bench", enabled=True, passwords=[f"+{token}"], commands=["+@list", "+ping", "+config"],
                       keys=["*"])
    try:
        for clients in (1, 50):
            res = subprocess.run([exe, "-h", srv.host, "-p", str(srv.port), "--user", "tk-bench", "-a", token,
                                  "-t", "lpush,lpop", "-n", str(n), "-c", str(clients), "--csv"],
                                 capture_output=True, text=True, timeout=300)
            for line in res.stdout.splitlines():
                cells = [c.strip('"') for c in line.split(",")]
                if len(cells) > 1 and cells[0] in ("LPUSH", "LPOP"):
                    out[f"{cells[0]} c={clients}"] = float(cells[1])
    finally:
        client.acl_deluser("tk-bench")
    return out


def run(quick: bool = True) -> list[dict]:
    """Benchmark rows for bench/run_all.py."""
    logging.getLogger("scheduler_central").setLevel(logging.WARNING)
    policies = [("", "min")] + [(w, o) for w in WEIGHER_TABLE for o in ORDERS]
    if quick:
        sizes, policies, m = (100, 1000), [("", "min"), ("instances", "min")], 20_000
    else:
        sizes, m = (100, 1000, 5000), 60_000
    rows = []
    saved = os.environ.get("TRACEKIT_LOGS")
    with tempfile.TemporaryDirectory(prefix="tk-bench-") as tmp:
        os.environ["TRACEKIT_LOGS"] = tmp  # the placement log of the benchmark goes to a throwaway folder
        srv = RedisServer(workdir=Path(tmp) / "redis").start()
        try:
            base = redis_benchmark(srv, 20_000 if quick else 100_000)
            raw = base.get("LPUSH c=1", 0.0)
            for name, v in base.items():
                rows.append({"bench": "scheduler", "metric": f"redis-benchmark {name} req/s", "ours": v})
            res: dict = {}
            for nodes in sizes:
                for w, o in policies:
                    r = steady(srv, nodes, max(m, 6 * nodes * 2), w, o)
                    res[(nodes, w, o)] = r
                    label = f"{w or 'first-fit'}{'' if not w else ' ' + o}"
                    target = ""
                    if nodes == 1000:
                        target = ">= 20000/s" if not w else ">= 10000/s"
                    elif nodes == 5000:
                        target = f">= {res[(1000, w, o)]['rate'] / 2:.0f}/s (half of 1,000 nodes)"
                    rows.append({"bench": "scheduler", "metric": f"steady placements/s, {nodes} nodes, {label}",
                                 "ours": r["rate"], "baseline": raw, "ratio": r["rate"] / raw if raw else None,
                                 "target": target})
                    rows.append({"bench": "scheduler", "metric": f"log bytes/placement, {nodes} nodes, {label}",
                                 "ours": r["bytes_per_placement"], "target": "independent of nodes"})
                    rows.append({"bench": "scheduler",
                                 "metric": f"redis CPU us/task (scripts' share), busy, {nodes} nodes, {label}",
                                 "ours": r["redis_us_per_task"], "baseline": r["script_us_per_task"],
                                 "ratio": r["redis_busy"], "target": "(where the time goes: ratio = busy share)"})
                    rows.append({"bench": "scheduler",
                                 "metric": f"python CPU us/task: scheduler process / fake workers, {nodes} nodes, "
                                 f"{label}", "ours": r["scheduler_us_per_task"], "baseline": r["completer_us_per_task"],
                                 "target": "(the same 2 cores as Redis)"})
                    f = fill(srv, nodes, w, o)
                    rows.append({"bench": "scheduler", "metric": f"fill placements/s (no completions), {nodes} "
                                 f"nodes, {label}", "ours": f["rate"], "baseline": raw,
                                 "ratio": f["rate"] / raw if raw else None, "target": ""})
                    rows.append({"bench": "scheduler", "metric": f"redis us per PLACE placement / per COMPLETE call, "
                                 f"{nodes} nodes, {label}", "ours": f["place_us"], "baseline": f["complete_us"],
                                 "target": "(commandstats, least of the repeats)"})
            for w, o in policies[:1] if quick else policies:
                peak = res[(1000, w, o)]["rate"]
                # nodes of 8, 16, 32 units: the fake workers' completion lag never makes a task wait for capacity,
                # so the figure is the scheduler's own latency
                lat = steady(srv, 1000, 0, w, o, rate=peak / 2, seconds=3 if quick else 6, caps=(8, 16, 32))
                label = f"{w or 'first-fit'}{'' if not w else ' ' + o}"
                for q in ("p50", "p99"):
                    rows.append({"bench": "scheduler",
                                 "metric": f"enqueue->placement {q} ms, 1000 nodes, {label}, {peak / 2:.0f}/s",
                                 "ours": lat[q], "baseline": 1000 / raw if raw else None,
                                 "ratio": lat[q] / (1000 / raw) if raw else None,
                                 "target": "<= 5 ms (p99)" if q == "p99" else "(ms resolution)"})
        finally:
            srv.stop()
            if saved is None:
                os.environ.pop("TRACEKIT_LOGS", None)
            else:
                os.environ["TRACEKIT_LOGS"] = saved
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="100 / 1,000 / 5,000 nodes, every weigher and order")
    args = ap.parse_args()
    print_table(run(quick=not args.full))
    return 0


if __name__ == "__main__":
    sys.exit(main())
