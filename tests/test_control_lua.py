"""Control plane atomic steps (Lua) on a real redis-server: placement, recovery, reconciliation, fencing."""

from __future__ import annotations

import json
import random

import pytest

from tracekit.control import placement
from tracekit.control.central import LogDrain
from tracekit.control.lua import Scripts, weigher_lua
from tracekit.control.placement import NodeState, Weigher, choose
from tracekit.core.jsonl import append_line, read_jsonl
from tracekit.core.keys import Keys
from tracekit.core.paths import controller_dir, placements_path

K = Keys("lt:")


@pytest.fixture
def sc(redis_client):
    return Scripts(redis_client, K)


def task(tid, units=1, attempt=1):
    return json.dumps({"trace_id": tid, "profile": "synth1c", "cpu_units": units, "ts_enqueue": 1, "attempt": attempt})


def register(sc, node, cap, parallel=0, inst=None, mode="0"):
    return sc.register(args=[node, inst or f"i-{node}", cap, parallel, 3000, mode])


def place(sc, weigher="", order="min", limit=1000, full=False):
    return sc.place(args=[weigher, order, limit, "1" if full else "0"])


def queued(r, node):
    return [json.loads(x)["trace_id"] for x in r.lrange(K.queue(node), 0, -1)]


def test_fifo_first_fit_scripted_scenario(redis_client, sc):
    r = redis_client
    register(sc, "b", 4)
    register(sc, "a", 4)
    r.rpush(K.pending, *[task("t1", 2), task("t2", 2), task("t3", 4), task("t4", 1)])
    assert place(sc) == [3, "blocked"]
    assert queued(r, "a") == ["t1", "t2"] and queued(r, "b") == ["t3"]
    # head-of-line: t4 (1 unit) waits although nothing else is queued behind it
    assert r.lrange(K.pending, 0, -1) == [task("t4", 1)]
    assert r.mget(K.cap("a"), K.cap("b"), K.run_count("a"), K.run_count("b")) == ["0", "0", "2", "1"]
    placed = json.loads(r.lindex(K.queue("a"), 0))
    assert placed["node"] == "a" and isinstance(placed["ts_dispatch"], int)
    # completion of t3 frees b -> t4 goes there
    raw = r.lmove(K.queue("b"), K.running("b"), "LEFT", "RIGHT")
    rec = json.dumps({"trace_id": "t3", "attempt": 1, "node_id": "b", "by": "worker"})
    assert sc.complete(args=["b", raw, "t3", 1, "done", rec]) == "ok"
    assert r.get(K.cap("b")) == "4" and r.get(K.run_count("b")) == "0"
    assert place(sc) == [1, "empty"]
    assert queued(r, "b") == ["t4"]


def test_slots_mode_and_cap_only(redis_client, sc):
    r = redis_client
    register(sc, "s", 8, parallel=2)
    register(sc, "z", 1)
    assert r.lrange(K.slots, 0, -1) == ["s", "s"]
    r.rpush(K.pending, *[task(f"t{i}") for i in range(4)])
    place(sc)
    assert queued(r, "s") == ["t0", "t1"] and queued(r, "z") == ["t2"]  # s out of slots, z cap-only
    assert r.llen(K.slots) == 0 and r.get(K.cap("s")) == "6"
    raw = r.lmove(K.queue("s"), K.running("s"), "LEFT", "RIGHT")
    sc.complete(args=["s", raw, "t0", 1, "done", "{}"])
    assert r.lrange(K.slots, 0, -1) == ["s"]
    place(sc)
    assert queued(r, "s") == ["t1", "t3"]


@pytest.mark.parametrize("weigher, order", [("", "min"), ("instances", "min"), ("instances", "max"),
                                            ("vcpu", "min"), ("vcpu", "max")])
def test_lua_matches_reference_policy_on_random_states(redis_client, sc, weigher, order):
    lua_matches_reference_on_random_states(redis_client, sc, weigher, order)


def write_states(r, states):
    """Node states written straight into the node keys (then REINDEX builds the placement index from them)."""
    pipe = r.pipeline(transaction=False)
    for st in states:
        node = st.node
        pipe.zadd(K.nodes, {node: 0})
        pipe.mset({K.cap(node): st.cap, K.cap_total(node): st.cap_total, K.run_count(node): st.run_count})
        pipe.hset(K.node_info(node), mapping={"parallel": st.parallel, "instance": f"i-{node}"})
        if st.alive:
            pipe.set(K.heartbeat(node), f"i-{node}", px=600_000)
        for _ in range(st.free_slots):
            pipe.rpush(K.slots, node)
    pipe.execute()


def random_state(rng, node, total_max=8):
    total = rng.randint(1, total_max)
    par = rng.choice([0, 0, 2])
    return NodeState(node, rng.random() > 0.2, rng.randint(0, total), total, rng.randint(0, 5), par,
                     rng.randint(0, 2) if par else 0)


def last_placement(r):
    return json.loads(r.xrevrange(K.controller_log, count=1)[0][1]["r"])


def check_log(r, model, units, weigher, dead=()):
    """The placement line explains the decision the way the pure model does (chosen, runner-up, feasible). A node
    whose heartbeat expired unnoticed (``dead``) counts as feasible until a placement or the reaper meets it."""
    rec = last_placement(r)
    unnoticed = sum(1 for n in dead if (r.zscore(K.index("cap"), n) or 0) >= units)
    assert (rec["node"], rec["runner_up"] and rec["runner_up"]["node"], rec["feasible"], rec["cpu_units"]) == (
        model.node, model.runner_up, model.feasible + unnoticed, units)
    assert rec["value"] == pytest.approx(model.candidates[0]["value"] if not weigher else
                                         next(c["value"] for c in model.candidates if c["node"] == model.node),
                                         abs=1e-5)
    assert "candidates" not in rec


def lua_matches_reference_on_random_states(r, sc, weigher, order):
    """40 random node states: the Lua script places the head task where the pure model does."""
    rng = random.Random(f"{weigher}-{order}")
    for _ in range(40):
        r.flushdb()
        states = []
        for _ in range(rng.randint(1, 6)):
            node = f"n{rng.randint(0, 99):02d}"
            if any(s.node == node for s in states):
                continue
            states.append(random_state(rng, node))
        write_states(r, states)
        sc.reindex()
        units = rng.randint(1, 4)
        r.rpush(K.pending, task("t", units))
        place(sc, weigher, order, 1)
        got = next((s.node for s in states if r.llen(K.queue(s.node))), None)
        model = choose(states, units, weigher, order)
        assert got == model.node
        if got:
            check_log(r, model, units, weigher)


@pytest.mark.parametrize("weigher, order, total_max", [
    ("", "min", 6), ("instances", "min", 6), ("instances", "max", 6), ("vcpu", "min", 6), ("vcpu", "max", 6),
    # capacities beyond 2^16: idx:big is not empty, PLACE compares each group of equal scores exactly
    ("instances", "max", 300_000), ("vcpu", "min", 300_000)])
def test_lua_matches_reference_on_a_large_cluster_over_a_sequence(redis_client, sc, weigher, order, total_max):
    """1,000 random nodes (ids in random order, many ties), then 300 placements one by one with the state evolving:
    completions give capacity back (COMPLETE), heartbeats expire (found lazily by PLACE), workers drain (DRAIN)
    and come back (BEAT). Every decision and its log line match the pure model on the same state."""
    r = redis_client
    rng = random.Random(f"large-{weigher}-{order}")
    names = rng.sample(range(100_000), 1000)
    states = {f"n{i}": random_state(rng, f"n{i}", total_max=total_max) for i in names}
    write_states(r, list(states.values()))
    assert sc.reindex() == sum(1 for s in states.values() if s.alive and s.cap > 0 and
                               (s.parallel <= 0 or s.free_slots > 0))
    assert (r.scard(K.index("big")) > 0) == (total_max > 65536)
    placed: list[tuple[str, str, int]] = []  # (node, trace_id, units)
    for step in range(300):
        ev = rng.random()
        if ev < 0.3 and placed:  # a completion: capacity, run_count and slot token back
            node, tid, units = placed.pop(rng.randrange(len(placed)))
            raw = next(x for x in r.lrange(K.queue(node), 0, -1) if json.loads(x)["trace_id"] == tid)
            r.lrem(K.queue(node), 1, raw)
            r.rpush(K.running(node), raw)
            assert sc.complete(args=[node, raw, tid, 1, "done", "{}"]) == "ok"
            s = states[node]
            states[node] = NodeState(node, s.alive, min(s.cap + units, s.cap_total), s.cap_total,
                                     max(0, s.run_count - 1), s.parallel, s.free_slots + (1 if s.parallel > 0 else 0))
        elif ev < 0.35:  # a heartbeat expires (nobody tells the index)
            node = rng.choice(list(states))
            r.delete(K.heartbeat(node))
            states[node] = NodeState(**{**states[node].__dict__, "alive": False})
        elif ev < 0.38:  # a dead node's worker beats again
            dead = [n for n, s in states.items() if not s.alive]
            if dead:
                node = rng.choice(dead)
                r.set(K.heartbeat(node), f"i-{node}", px=1)  # lapsed instance: BEAT re-indexes the node
                r.delete(K.heartbeat(node))
                assert sc.beat(args=[node, f"i-{node}", 600_000]) == 1
                states[node] = NodeState(**{**states[node].__dict__, "alive": True})
        units = rng.choice([1, 1, 1, 2, 3])
        tid = f"t{step}"
        r.rpush(K.pending, task(tid, units))
        place(sc, weigher, order, 1)
        model = choose(list(states.values()), units, weigher, order)
        got = json.loads(r.lindex(K.queue(model.node), -1))["trace_id"] if model.node else None
        assert got == (tid if model.node else None), f"step {step}"
        if model.node is None:
            assert r.lpop(K.pending) == task(tid, units)  # blocked head: take it away, go on
            continue
        check_log(r, model, units, weigher, [n for n, s in states.items() if not s.alive])
        states = {n: s for n, s in zip(states, placement.apply(list(states.values()), model.node, units))}
        placed.append((model.node, tid, units))
    # a drained node leaves the index at once
    node = next(n for n, s in states.items() if s.alive and s.cap > 0)
    assert sc.drain(args=[node, f"i-{node}"])[0] >= 0
    assert r.zscore(K.index("free"), node) is None


@pytest.fixture
def free_weigher(monkeypatch):
    """A throwaway weigher ``free`` = cap / cap_total, registered the way a real one is: one table entry."""
    monkeypatch.setitem(placement.WEIGHER_TABLE, "free",
                        Weigher(lambda cap, cap_total, run_count: cap, "cap", "cap/cap_total"))
    # WEIGHERS is derived from the table at import; a registration at run time re-derives it
    monkeypatch.setattr(placement, "WEIGHERS", ("", *placement.WEIGHER_TABLE))
    return "free"


@pytest.mark.parametrize("order", ["min", "max"])
def test_a_weigher_registered_in_the_table_reaches_the_lua(redis_client, free_weigher, order):
    sc = Scripts(redis_client, K)  # after the registration: the scripts are generated from the table
    assert 'METRICS["free"]' in weigher_lua()
    lua_matches_reference_on_random_states(redis_client, sc, free_weigher, order)
    # the logged candidates and their normalised values agree too (Lua prints %.6g, Python rounds to 6 places)
    redis_client.flushdb()
    register(sc, "a", 4)
    register(sc, "b", 8)
    redis_client.set(K.cap("b"), 3)
    redis_client.rpush(K.pending, task("t", 1))
    place(sc, free_weigher, order, 1, full=True)
    logged = json.loads(redis_client.xrange(K.controller_log)[-1][1]["r"])
    states = [NodeState("a", True, 4, 4, 0), NodeState("b", True, 3, 8, 0)]
    model = choose(states, 1, free_weigher, order)
    assert logged["node"] == model.node == ("b" if order == "min" else "a")
    assert [(c["node"], c["value"]) for c in logged["candidates"]] == [
        (c["node"], pytest.approx(c["value"], abs=1e-6)) for c in model.candidates]


def test_reap_requeues_to_head_with_attempt_and_removes_capacity(redis_client, sc):
    r = redis_client
    register(sc, "a", 2, parallel=2)
    register(sc, "b", 2)
    r.rpush(K.pending, *[task("t1"), task("t2"), task("t3")])
    place(sc)
    r.lmove(K.queue("a"), K.running("a"), "LEFT", "RIGHT")  # t1 running, t2 placed on a, t3 on b
    r.rpush(K.pending, task("t9", 8))  # blocked head stays behind the recovered ones
    r.delete(K.heartbeat("a"))  # as if the TTL expired
    assert sc.reap() == [1, 2, 0]
    back = [json.loads(x) for x in r.lrange(K.pending, 0, -1)]
    assert [(t["trace_id"], t["attempt"]) for t in back] == [("t1", 2), ("t2", 2), ("t9", 1)]
    assert "node" not in back[0] and "ts_dispatch" not in back[0]
    assert not r.exists(K.cap("a"), K.cap_total("a"), K.run_count("a"), K.running("a"), K.queue("a"))
    assert r.lrange(K.slots, 0, -1) == [] and r.zrange(K.nodes, 0, -1) == ["b"]


def test_max_attempts_records_failed(redis_client, sc, run_env):
    r = redis_client
    r.hset(K.config, "max_attempts", 2)
    register(sc, "a", 2)
    r.rpush(K.pending, task("t1", 1, attempt=2))
    place(sc)
    r.delete(K.heartbeat("a"))
    assert sc.reap() == [1, 0, 1]
    rec = json.loads(r.hget(K.failed, "t1"))
    assert rec["kind"] == "failed" and rec["attempt"] == 2 and "max 2" in rec["reason"]
    LogDrain(r, K, run_env["RUN_ID"]).drain()
    ev = [o for _, o in read_jsonl(controller_dir(run_env["RUN_ID"]) / "events.jsonl")]
    assert [(e["kind"], e["trace_id"]) for e in ev] == [("failed", "t1")]


def test_completion_after_recovery_is_fenced(redis_client, sc):
    r = redis_client
    register(sc, "a", 2)
    r.rpush(K.pending, task("t1"))
    place(sc)
    raw = r.lmove(K.queue("a"), K.running("a"), "LEFT", "RIGHT")
    r.delete(K.heartbeat("a"))
    sc.reap()
    register(sc, "a", 2, inst="i-new")  # the node heals and re-registers
    place(sc)  # attempt 2 is placed on the same node
    rec = json.dumps({"trace_id": "t1", "attempt": 1, "node_id": "a", "by": "worker"})
    assert sc.complete(args=["a", raw, "t1", 1, "done", rec]) == "fenced"
    assert not r.hexists(K.done, "t1") and r.get(K.cap("a")) == "1"
    assert json.loads(r.lindex(K.queue("a"), 0))["attempt"] == 2


def test_slot_records_reach_the_controller_log(redis_client, sc, run_env):
    """requeue (with the attempt it goes back as, the node it left and bump) and release records, Redis TIME ms:
    the OpenDC export's retry submissions and slot ends (trace/events.py reads them)."""
    r = redis_client
    register(sc, "a", 2)
    register(sc, "b", 2)
    r.rpush(K.pending, task("t1"), task("t2"))
    place(sc)  # t1 and t2 on a (first-fit)
    raw1 = r.lmove(K.queue("a"), K.running("a"), "LEFT", "RIGHT")
    rec = json.dumps({"trace_id": "t1", "attempt": 1, "node_id": "a", "by": "worker"})
    assert sc.complete(args=["a", raw1, "t1", 1, "done", rec]) == "ok"
    r.lmove(K.queue("a"), K.running("a"), "LEFT", "RIGHT")  # t2 running when a is lost
    r.delete(K.heartbeat("a"))
    sc.reap()
    LogDrain(r, K, run_env["RUN_ID"]).drain()
    ev = [o for _, o in read_jsonl(controller_dir(run_env["RUN_ID"]) / "events.jsonl")]
    rel = next(e for e in ev if e["kind"] == "release")
    assert (rel["trace_id"], rel["attempt"], rel["node_id"], rel["outcome"]) == ("t1", 1, "a", "done")
    req = next(e for e in ev if e["kind"] == "requeue")
    assert (req["trace_id"], req["attempt"], req["node_id"], req["bump"]) == ("t2", 2, "a", True)
    assert isinstance(rel["ts"], int) and req["ts"] >= rel["ts"] > 1_600_000_000_000


def test_register_reconciles_without_reset(redis_client, sc):
    r = redis_client
    register(sc, "a", 4, parallel=3)
    r.rpush(K.pending, *[task("t1", 1), task("t2", 2), task("t3", 1)])
    place(sc)
    r.lmove(K.queue("a"), K.running("a"), "LEFT", "RIGHT")  # t1 was running when the worker died
    r.set(K.cap("a"), 99)  # stale garbage must not survive
    # restart with less capacity: t2 (2 units) still fits, t3 does not fit after it -> back to pending
    assert register(sc, "a", 2, parallel=3, inst="i2") == [2, 0, 1, 0]
    assert queued(r, "a") == ["t2"]
    assert [(json.loads(x)["trace_id"], json.loads(x)["attempt"]) for x in r.lrange(K.pending, 0, -1)] == [
        ("t1", 2), ("t3", 1)]
    assert r.mget(K.cap("a"), K.cap_total("a"), K.run_count("a")) == ["0", "2", "1"]
    assert r.lrange(K.slots, 0, -1) == ["a", "a"]
    assert r.llen(K.running("a")) == 0


def test_register_reset_and_clear(redis_client, sc):
    r = redis_client
    register(sc, "a", 4)
    r.rpush(K.pending, task("t1"), task("t2"))
    place(sc)
    register(sc, "a", 4, inst="i2", mode="2")  # --reset-capacity: everything placed goes back
    assert r.get(K.cap("a")) == "4" and r.llen(K.pending) == 2
    place(sc)
    register(sc, "a", 4, inst="i3", mode="1")  # --clear-queue: recorded failed, not lost silently
    assert r.llen(K.queue("a")) == 0 and r.hlen(K.failed) == 2
    assert "cleared" in json.loads(r.hget(K.failed, "t1"))["reason"]


def test_malformed_head_is_failed_and_does_not_block(redis_client, sc, run_env):
    r = redis_client
    register(sc, "a", 2)
    r.rpush(K.pending, "not json", json.dumps({"trace_id": "x", "cpu_units": "two"}), task("ok"))
    assert place(sc) == [1, "empty"]
    assert queued(r, "a") == ["ok"] and r.hlen(K.failed) == 2
    d = LogDrain(r, K, run_env["RUN_ID"])
    assert d.drain() == 3
    assert d.drain() == 0
    lines = [o for _, o in read_jsonl(placements_path(run_env["RUN_ID"]))]
    assert [p["trace_id"] for p in lines] == ["ok"]
    assert lines[0]["node"] == "a" and lines[0]["feasible"] == 1 and "sid" in lines[0]


def test_log_drain_never_repeats_a_line_after_a_crash(redis_client, sc, run_env):
    r = redis_client
    register(sc, "a", 10)
    r.rpush(K.pending, *[task(f"t{i}") for i in range(5)])
    place(sc)
    rid = run_env["RUN_ID"]
    # a scheduler that crashed after writing 3 lines but before deleting their stream entries
    for sid, f in r.xrange(K.controller_log)[:3]:
        append_line(placements_path(rid), {**json.loads(f["r"]), "sid": sid})
    assert LogDrain(r, K, rid).drain() == 2
    ids = [o["trace_id"] for _, o in read_jsonl(placements_path(rid))]
    assert ids == [f"t{i}" for i in range(5)]
