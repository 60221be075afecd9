"""The scheduler's own payload gate for the head of q:pending (control/head_gate.py) and how PLACE trusts it: only
for entries byte-identical to the ones at their positions; anything else passes the Lua gate. Real Redis."""

from __future__ import annotations

import json

from tracekit.control.head_gate import HeadGate, read_head
from tracekit.control.lua import Scripts
from tracekit.core.keys import Keys

K = Keys("hg:")


def task(tid, units=1, **extra):
    return json.dumps({"trace_id": tid, "profile": "synth1c", "cpu_units": units, "ts_enqueue": 1764259200123.456,
                       "attempt": 1, **extra}, separators=(",", ":"))


def setup(r, nodes=(("a", 4),)):
    sc = Scripts(r, K)
    for node, cap in nodes:
        sc.register(args=[node, f"i-{node}", cap, 0, 3000, "0"])
    return sc


def place_checked(sc, r, gate, n=16):
    return sc.place(args=["", "min", 256, "0", *gate.place_args(read_head(r, K.pending, n))])


def test_place_args_stop_at_the_first_entry_the_lua_gate_must_see():
    gate = HeadGate()
    ok1, ok2 = task("t1").encode(), task("t2", 2).encode()
    no_units = json.dumps({"trace_id": "t3", "profile": "p", "ts_enqueue": 1}).encode()
    assert gate.place_args([ok1, ok2]) == [ok1, b"t1", b"1", b"1", ok2, b"t2", b"1", b"2"]
    assert gate.place_args([ok1, b"{not json", ok2]) == [ok1, b"t1", b"1", b"1"]
    assert gate.place_args([no_units, ok1]) == []  # PLACE records why it cannot place it
    assert gate.cache[b"{not json"] is None and gate.cache[ok2] == (b"t2", b"1", b"2")
    small = HeadGate(cache_size=2)
    small.warm([ok1, ok2, no_units])
    assert list(small.cache) == [no_units]  # bounded: cleared when full


def test_checked_head_is_placed_with_its_text_kept_and_node_and_dispatch_time_appended(redis_client):
    r, gate = redis_client, HeadGate()
    sc = setup(r)
    raws = [task("t1"), task("t2", 2)]
    r.rpush(K.pending, *raws)
    assert sc.place(args=["", "min", 256, "0", *gate.place_args(read_head(r, K.pending, 16))]) == [2, "empty"]
    stored = r.lrange(K.queue("a"), 0, -1)
    for raw, got in zip(raws, stored):
        ts = json.loads(got)["ts_dispatch"]
        assert got == raw[:-1] + f',"node":"a","ts_dispatch":{ts}}}'  # ts_enqueue exact, not re-encoded
    assert r.get(K.cap("a")) == "1" and r.exists(K.pending) == 0


def test_an_entry_pushed_to_the_head_after_the_check_still_passes_the_lua_gate(redis_client):
    r, gate = redis_client, HeadGate()
    sc = setup(r)
    r.rpush(K.pending, task("t1"), task("t2"))
    args = gate.place_args(read_head(r, K.pending, 16))
    r.lpush(K.pending, json.dumps({"trace_id": "evil", "profile": "synth1c", "cpu_units": 0, "ts_enqueue": 1}))
    assert sc.place(args=["", "min", 256, "0", *args]) == [2, "empty"]
    assert "cpu_units" in json.loads(r.hget(K.failed, "evil"))["reason"]
    assert [json.loads(x)["trace_id"] for x in r.lrange(K.queue("a"), 0, -1)] == ["t1", "t2"]


def test_arguments_that_do_not_match_the_head_are_not_trusted(redis_client):
    r = redis_client
    sc = setup(r)
    bad = json.dumps({"trace_id": "t9", "profile": "synth1c", "cpu_units": 5000, "ts_enqueue": 1})
    r.rpush(K.pending, bad)
    # arguments that vouch for another text (and claim 1 unit): the head passes the Lua gate and is refused
    assert sc.place(args=["", "min", 256, "0", task("t9"), "t9", "1", "1"]) == [0, "empty"]
    assert "cpu_units must be an integer" in json.loads(r.hget(K.failed, "t9"))["reason"]
    assert r.get(K.cap("a")) == "4"


def test_payloads_that_name_node_or_hold_escapes_are_re_encoded(redis_client):
    r, gate = redis_client, HeadGate()
    sc = setup(r)
    raws = [task("t1", node="elsewhere"), task("t2", input="/in/a\\u00e9.mp4"), task("t3", params={"x": "node"})]
    r.rpush(K.pending, *raws)
    assert place_checked(sc, r, gate)[0] == 3
    got = [json.loads(x) for x in r.lrange(K.queue("a"), 0, -1)]
    assert [(g["trace_id"], g["node"]) for g in got] == [("t1", "a"), ("t2", "a"), ("t3", "a")]
    assert got[1]["input"] == "/in/a\\u00e9.mp4" and got[2]["params"] == {"x": "node"}


def test_complete_gives_back_the_placed_units_read_from_the_text_or_decoded(redis_client):
    r, gate = redis_client, HeadGate()
    sc = setup(r, (("a", 8),))
    # cpu_units named once; named twice (a nested member: the text is decoded); with an escape (decoded)
    raws = [task("t1", 3), task("t2", 2, params={"cpu_units": 7}), task("t3", 1, output="/o/\\u00e9")]
    r.rpush(K.pending, *raws)
    assert place_checked(sc, r, gate)[0] == 3 and r.get(K.cap("a")) == "2"
    expect = 2
    for tid, units in (("t1", 3), ("t2", 2), ("t3", 1)):
        raw = r.lmove(K.queue("a"), K.running("a"), "LEFT", "RIGHT")
        assert sc.complete(args=["a", raw, tid, 1, "done", json.dumps({"trace_id": tid})]) == "ok"
        expect += units
        assert r.get(K.cap("a")) == str(expect)
