"""Payload storms end to end: the real central scheduler and two real workers, random and malformed payloads pushed
straight into q:pending and into the node queues (a buggy or hostile producer). No daemon may die, every payload
ends in done/failed with a reason, every node gets its capacity back."""

from __future__ import annotations

import json
import random
import time

import pytest

from conftest import wait_for, with_profiles
from test_faults_inputs import node_events
from tracekit.control import payload
from tracekit.core.keys import Keys

K = Keys()
PROFILES = {
    "quick": {"app": "command", "cpu_units": 1, "argv": ["true"]},
    "nap": {"app": "command", "cpu_units": 1, "argv": ["sleep", "{seconds}"], "seconds": 2.0},
}
NODES = ("w1", "w2")


@pytest.fixture
def env(run_env, tmp_path, monkeypatch):
    return with_profiles(run_env, tmp_path, monkeypatch, PROFILES)




def base(tid: str, **kw) -> dict:
    d = {"trace_id": tid, "profile": "quick", "cpu_units": 1, "ts_enqueue": int(time.time() * 1000), "attempt": 1}
    d.update(kw)
    return d


def storm(rng: random.Random, n: int) -> list[bytes]:
    """``n`` payloads: a few good ones, the rest valid JSON of wrong shapes, NaN/Infinity/1e400, deep nesting,
    huge strings, non-UTF-8 bytes, control characters, bad fields, and duplicates of earlier ones."""
    out: list[bytes] = []
    for i in range(n):
        tid = f"z{i:05d}"
        # few good ones: each runs a real adapter process, the CPU of this 2-core machine is the limit
        kind = rng.choices(["good", "shape", "nan", "deep", "huge", "bytes", "control", "field", "profile", "dup",
                            "truncate"], weights=[1, 3, 4, 3, 2, 3, 2, 5, 1, 3, 2])[0]
        if kind == "good":
            p = json.dumps(base(tid)).encode()
        elif kind == "shape":
            p = json.dumps(rng.choice([[1, 2], "x", None, 3.5, {}, {"trace_id": tid}, [base(tid)],
                                       {"payload": base(tid)}])).encode()
        elif kind == "nan":
            field = rng.choice(["cpu_units", "ts_enqueue", "attempt", "extra", "ts_dispatch"])
            v = rng.choice(["NaN", "Infinity", "-Infinity", "1e400", "-1e999", "1" * 400])
            p = json.dumps(base(tid, **{field: 0})).replace(f'"{field}": 0', f'"{field}": {v}').encode()
        elif kind == "deep":
            k = rng.choice([33, 100, 995, 5000])
            o, c = rng.choice([("[", "]"), ('{"a":', "}")])
            p = json.dumps(base(tid)).replace('"attempt": 1', f'"attempt": 1, "x": {o * k}1{c * k}').encode()
        elif kind == "huge":
            p = json.dumps(base(tid, pad="x" * rng.choice([30_000, 70_000, 200_000]))).encode()
        elif kind == "bytes":
            p = json.dumps(base(tid)).encode()
            j = rng.randrange(len(p))
            p = p[:j] + bytes([rng.choice([0x80, 0xC3, 0xED, 0xFF, 0xFE])]) + p[j:]
        elif kind == "control":
            p = json.dumps(base(tid, note="a\x01b")).encode()
        elif kind == "field":
            field, v = rng.choice([("cpu_units", 0), ("cpu_units", -1), ("cpu_units", 1.5), ("cpu_units", 2000),
                                   ("cpu_units", "1"), ("attempt", 0), ("trace_id", "-x"), ("trace_id", "a b"),
                                   ("ts_enqueue", -5), ("params", [1]), ("input", ""), ("output", 7),
                                   ("profile", None), ("trace_id", "q:pending")])
            p = json.dumps(base(tid, **{field: v})).encode()
        elif kind == "profile":
            p = json.dumps(base(tid, profile="nope")).encode()
        elif kind == "dup" and out:
            p = rng.choice(out)
        else:
            p = json.dumps(base(tid)).encode()[: rng.randrange(1, 40)]
        out.append(p)
    return out


def test_payload_storm_end_to_end(env, daemons, redis_client):
    r = redis_client
    t0 = time.monotonic()
    workers = [daemons.start("scheduler/worker.py", "--node-id", n, "--capacity-units", "2") for n in NODES]
    wait_for(lambda: r.zcard(K.nodes) == len(NODES))
    sched = daemons.start("scheduler/scheduler_central.py", "--reap-interval", "0.5")
    rng = random.Random(20250912)
    payloads = storm(rng, 2400)
    pending, direct = [], {n: [] for n in NODES}
    for p in payloads:
        (pending if rng.random() < 0.5 else direct[rng.choice(NODES)]).append(p)
    for i in range(0, max(len(pending), *map(len, direct.values())), 100):  # interleaved, in chunks
        for key, items in [(K.pending, pending), *((K.queue(n), direct[n]) for n in NODES)]:
            if items[i:i + 100]:
                r.rpush(key, *items[i:i + 100])
        r.lpush(K.wake, "1")

    def settled() -> bool:
        return (r.hlen(K.done) + r.hlen(K.failed) >= len(payloads) and r.llen(K.pending) == 0
                and all(r.llen(K.queue(n)) == 0 and r.llen(K.running(n)) == 0 for n in NODES))
    try:
        wait_for(settled, timeout=90, step=0.2)
    except AssertionError:
        state = {"done": r.hlen(K.done), "failed": r.hlen(K.failed), "pending": r.llen(K.pending),
                 **{n: (r.llen(K.queue(n)), r.llen(K.running(n))) for n in NODES},
                 "alive": [p.poll() for p in daemons.procs]}
        raise AssertionError(f"not settled: {state} of {len(payloads)}") from None
    elapsed = time.monotonic() - t0
    done = {k: json.loads(v) for k, v in r.hgetall(K.done).items()}
    failed = {k: json.loads(v) for k, v in r.hgetall(K.failed).items()}
    # every payload accounted for: exactly one record each (a refused duplicate gets its own bad-<sha1> record)
    assert len(done) + len(failed) == len(payloads), (len(done), len(failed), len(payloads))
    assert all(rec.get("reason") for rec in failed.values())
    assert all(payload.safe_id(k) for k in list(done) + list(failed))
    # a payload whose trace_id could be read is recorded under it (or refused as a duplicate of it)
    readable = {tid for p in payloads if (tid := payload.verdict(p)[1])}
    assert readable <= set(done) | set(failed)
    # 0 daemon deaths, capacity back everywhere
    assert sched.poll() is None and all(w.poll() is None for w in workers)
    for n in NODES:
        assert r.get(K.cap(n)) == r.get(K.cap_total(n)) == "2" and r.get(K.run_count(n)) == "0"
    # the controller logs were drained (the drain did not die) and every line is JSON
    wait_for(lambda: r.xlen(K.controller_log) == 0, timeout=10)
    outcomes = {"done": len(done), "failed": len(failed),
                "duplicates": sum("duplicate" in str(v.get("reason")) for v in failed.values())}
    print(f"\npayload storm: {len(payloads)} payloads ({len(pending)} via q:pending, "
          f"{sum(map(len, direct.values()))} straight into node queues) in {elapsed:.1f} s: {outcomes}; 0 deaths")
    assert elapsed < 120


def test_worker_survives_deep_nesting_and_runs_a_duplicate_once(env, daemons, redis_client):
    """Regressions at the worker: item 2 (a ~995-deep payload killed every worker that took it, RecursionError)
    and item 7 (a duplicate in the node queue was started beside the running one; the running map lost the first
    process and handed its cpuset out again)."""
    r = redis_client
    w = daemons.start("scheduler/worker.py", "--node-id", "w1", "--capacity-units", "2")
    wait_for(lambda: r.zcard(K.nodes) == 1)
    deep = json.dumps(base("b2")).replace('"attempt": 1', '"attempt": 1, "x": ' + "[" * 995 + "]" * 995)
    r.rpush(K.queue("w1"), deep)
    rec = json.loads(wait_for(lambda: r.hget(K.failed, "b2"), timeout=15))
    assert "deeper than" in rec["reason"] and w.poll() is None
    nap = json.dumps(base("n1", profile="nap"))
    r.rpush(K.queue("w1"), nap, nap)
    rec = json.loads(wait_for(lambda: r.hget(K.done, "n1"), timeout=20))
    assert rec["status"] == "ok" and w.poll() is None
    dups = [json.loads(v) for k, v in r.hgetall(K.failed).items() if k.startswith("bad-")]
    assert len(dups) == 1 and "already running" in dups[0]["reason"]
    execs = [e for e in node_events(env, "w1") if e["kind"] == "exec" and e["trace_id"] == "n1"]
    assert len(execs) == 1  # one process for one trace_id
    assert r.get(K.cap("w1")) == r.get(K.cap_total("w1")) and r.llen(K.running("w1")) == 0
