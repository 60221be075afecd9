"""Central scheduler benchmark: placements per second with 10 and 100 registered nodes, beside the same Redis's
raw LPUSH+LPOP round-trip rate, and enqueue -> placement latency p50/p99.

Runs a private redis-server and the real scheduler loop (``tracekit.control.central.run``, placement log written to a
temporary logs folder). Throughput: M synthetic tasks are preloaded on q:pending and the scheduler places them
all (first-fit, cap-only nodes with ample capacity, so nothing blocks). Latency: with the scheduler idle, one
task at a time is pushed and a client blocked on the node queue measures push -> arrival (µs resolution).
Target: at least 5,000 placements/s at 100 nodes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import print_table
from tracekit.cluster.redis_server import RedisServer
from tracekit.control import central
from tracekit.control.lua import Scripts
from tracekit.core.keys import Keys


def _task(i: int) -> str:
    return json.dumps({"trace_id": f"b{i:07d}", "profile": "synth1c", "cpu_units": 1, "ts_enqueue": 0, "attempt": 1})


def _setup(client, keys: Keys, nodes: int) -> None:
    client.flushdb()
    sc = Scripts(client, keys)
    for i in range(nodes):
        sc.register(args=[f"node{i:03d}", f"bench{i}", 10**7, 0, 3_600_000, "0"])


def _start_scheduler(client, keys: Keys, run_id: str, idle_exit: bool, weigher: str = ""):
    stop = threading.Event()
    cfg = central.SchedulerConfig(run_id=run_id, weigher=weigher, exit_when_idle=idle_exit, reap_interval=1.0)
    th = threading.Thread(target=central.run, args=(client, keys, cfg, stop), daemon=True)
    th.start()
    return th, stop


def placements_per_s(srv: RedisServer, nodes: int, m: int, run_id: str, weigher: str = "") -> float:
    client, keys = srv.client(), Keys()
    _setup(client, keys, nodes)
    pipe = client.pipeline(transaction=False)
    for i in range(m):
        pipe.rpush(keys.pending, _task(i))
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    t0 = time.perf_counter()
    th, _ = _start_scheduler(srv.client(), keys, run_id, idle_exit=True, weigher=weigher)
    th.join()
    dt = time.perf_counter() - t0
    placed = sum(client.llen(keys.queue(f"node{i:03d}")) for i in range(nodes))
    assert placed == m, f"placed {placed} of {m}"
    return m / dt


def raw_rate(srv: RedisServer, n: int) -> float:
    """LPUSH + LPOP pairs per second, one client, no pipelining (one round trip each)."""
    c = srv.client()
    t0 = time.perf_counter()
    for i in range(n):
        c.lpush("bench:raw", i)
        c.lpop("bench:raw")
    return n / (time.perf_counter() - t0)


def latency_ms(srv: RedisServer, nodes: int, samples: int, run_id: str) -> list[float]:
    client, keys = srv.client(), Keys()
    _setup(client, keys, nodes)
    th, stop = _start_scheduler(srv.client(), keys, run_id, idle_exit=False)
    time.sleep(0.2)
    out = []
    for i in range(samples):
        t0 = time.perf_counter()
        pipe = client.pipeline(transaction=True)
        pipe.rpush(keys.pending, _task(i))
        pipe.lpush(keys.wake, "1")
        pipe.ltrim(keys.wake, 0, 0)
        pipe.execute()
        got = client.blpop([keys.queue("node000")], timeout=5)  # first-fit: always the first node
        assert got is not None, "task not placed within 5 s"
        out.append((time.perf_counter() - t0) * 1000)
    stop.set()
    th.join(5)
    return out


def run(quick: bool = True) -> list[dict]:
    """Benchmark rows for bench/run_all.py."""
    logging.getLogger("scheduler_central").setLevel(logging.WARNING)
    m = 5000 if quick else 30000
    rows = []
    saved = os.environ.get("TRACEKIT_LOGS")
    with tempfile.TemporaryDirectory(prefix="tk-bench-") as tmp:
        os.environ["TRACEKIT_LOGS"] = tmp  # the placement log of the benchmark goes to a throwaway folder
        srv = RedisServer(workdir=Path(tmp) / "redis").start()
        try:
            raw = raw_rate(srv, 2000 if quick else 20000)
            for nodes in (10, 100):
                rate = placements_per_s(srv, nodes, m, f"bench{nodes}")
                rows.append({"bench": "scheduler", "metric": f"placements/s, {nodes} nodes", "ours": rate,
                             "baseline": raw, "ratio": rate / raw,
                             "target": ">= 5000/s at 100 nodes (baseline: raw LPUSH+LPOP pairs/s)"})
            rate = placements_per_s(srv, 100, m, "benchw", weigher="instances")
            rows.append({"bench": "scheduler", "metric": "placements/s, 100 nodes, weigher instances", "ours": rate,
                         "baseline": raw, "ratio": rate / raw,
                         "target": "(all 100 nodes scored and logged per placement)"})
            lat = latency_ms(srv, 100, 200 if quick else 1000, "benchlat")
            q = statistics.quantiles(lat, n=100)
            base = 1000 / raw  # one LPUSH+LPOP round trip pair, ms
            rows.append({"bench": "scheduler", "metric": "enqueue->placement p50 ms (100 nodes)", "ours": q[49],
                         "baseline": base, "ratio": q[49] / base, "target": "a few ms (baseline: LPUSH+LPOP pair)"})
            rows.append({"bench": "scheduler", "metric": "enqueue->placement p99 ms (100 nodes)", "ours": q[98],
                         "baseline": base, "ratio": q[98] / base, "target": "< 10 ms"})
        finally:
            srv.stop()
            if saved is None:
                os.environ.pop("TRACEKIT_LOGS", None)
            else:
                os.environ["TRACEKIT_LOGS"] = saved
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="30,000 tasks and 1,000 latency samples")
    args = ap.parse_args()
    print_table(run(quick=not args.full))
    return 0


if __name__ == "__main__":
    sys.exit(main())
