"""The payload gate (control/payload.py): property-based fuzzing of the Python rules, the Lua gate agreeing with
them on a corpus of bad payloads, and the regressions of the payload items (NaN / 1e400, deep nesting,
non-UTF-8, duplicates, cpu_units out of range, size before parsing)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracekit.control import payload
from tracekit.control.central import LogDrain
from tracekit.control.dispatch import check_batch
from tracekit.control.lua import Scripts
from tracekit.control.status import snapshot
from tracekit.core.errors import BadTask
from tracekit.core.jsonl import read_jsonl
from tracekit.core.keys import Keys
from tracekit.core.paths import controller_dir

K = Keys("pg:")
BASE = {"trace_id": "b15", "profile": "sleepy", "cpu_units": 1, "ts_enqueue": 1700000000000, "attempt": 1}


def raw(**kw) -> str:
    return json.dumps({**BASE, **kw})


# ---- a corpus of bad payloads (and a few good ones), hand-written ----

CORPUS: list = [
    raw(),
    raw(cpu_units=2.0),
    raw(params=[]),
    raw(attempt=None, node=None, input=None),
    '{"trace_id":"b15","profile":"sleepy","cpu_units":1,"ts_enqueue":1e400,"attempt":1}',
    raw(ts_enqueue=float("nan")),
    raw(x=[1, float("inf")]),
    raw(cpu_units=float("-inf")),
    '{"trace_id":"b15","profile":"p","cpu_units":1,"ts_enqueue":1,"x":' + "1" * 400 + "}",
    '{"trace_id":"b15","x":nan}', '{"trace_id":"b15","x":inf}', '{"trace_id":"b15","x":0x10}',
    '{"trace_id":"b15","x":01}', '{"trace_id":"b15","x":+1}', '{"trace_id":"b15","x":1.}', '{"trace_id":"b15","x":.5}',
    '{"trace_id":"b15","x":"\\ud800"}', '{"trace_id":"b15","x":"\\udc00"}', raw(x="\U0001f600"),
    '{"trace_id":"b15","x":1}x', '{"trace_id":"b15","x":1}{}', '{"trace_id":"b15",}', "{'trace_id':'b15'}",
    '{"trace_id":"b15","x":TRUE}', "", "   ", "[]", "{}", '"b15"', "null", "1e400", "[1,2]",
    '{"trace_id":"b15","profile":"p","cpu_units":1,"ts_enqueue":1,"x":' + "[" * 995 + "]" * 995 + "}",
    '{"trace_id":"b15","x":' + "{\"a\":" * 40 + "1" + "}" * 40 + "}",
    '{"trace_id":"b15","x":' + "[" * 33 + "]" * 33 + "}",
    '{"trace_id":"b15","x":' + "[" * 32 + "]" * 32 + ',"profile":"p","cpu_units":1,"ts_enqueue":1}',
    '{"trace_id":"b15","x":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[","profile":"p","cpu_units":1,"ts_enqueue":1}',
    '{"trace_id":"b15","x":"\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[","profile":"p","cpu_units":1,"ts_enqueue":1}',
    b'{"trace_id":"\xff\xfe","profile":"p","cpu_units":1,"ts_enqueue":1}',
    b'{"trace_id":"b15","profile":"p\xc3\x28","cpu_units":1,"ts_enqueue":1}',
    b'{"trace_id":"b15","x":"\xed\xa0\x80"}', b'{"trace_id":"b15","x":"\xc0\xaf"}', b'\xef\xbb\xbf{"trace_id":"b15"}',
    b'{"trace_id":"b15","x":"\xf4\x90\x80\x80"}', b'{"trace_id":"b15","x":"\xe1\x80\xf0\x90\x80\x80\x80"}',
    '{"trace_id":"b15","x":"a\x01b"}', '{"trace_id":"b15","x":1}\x00', '{"trace_id":"b15","x":"\t\n"}',
    raw(trace_id="a\n"), raw(trace_id="-x"), raw(trace_id="x" * 129), raw(trace_id="x" * 128), raw(trace_id=7),
    raw(trace_id="caf\u00e9"), raw(profile=None), raw(profile=["a"]), raw(profile="has space"),
    raw(cpu_units=0), raw(cpu_units=-1), raw(cpu_units=1.5), raw(cpu_units=1025), raw(cpu_units="2"),
    raw(cpu_units=True), raw(cpu_units=None), json.dumps({k: v for k, v in BASE.items() if k != "cpu_units"}),
    raw(attempt=0), raw(attempt=1.5), raw(attempt=10_001), raw(attempt="1"), raw(attempt=False),
    raw(ts_enqueue=-1), raw(ts_enqueue=10**14), raw(ts_enqueue="now"), raw(ts_enqueue=None), raw(ts_dispatch=-5),
    raw(node=3), raw(input=""), raw(input=5), raw(output="a\x00b"), raw(output="o" * 4097), raw(params=[1]),
    raw(params="x"), raw(params={"codec": "libx264"}), raw(pad="x" * 70_000),
    raw(cpuset="0-1"), raw(cpuset="2,5-7"), raw(cpuset="1-0"), raw(cpuset=3), raw(cpuset=""), raw(cpuset="0,,1"),
    raw(cpuset="a"), raw(cpuset="12345"), raw(cpu_quota=150), raw(cpu_quota=0), raw(cpu_quota=1.5),
    raw(cpu_weight=10_001), raw(cpu_weight=200), raw(unit_name="tk-n1-1700000000000-0.scope"),
    raw(unit_name="bad name"), raw(unit_name=5),
    '{"x":{"trace_id":"victim"},"trace_id":"b15","y":1e400,"profile":"p","cpu_units":1,"ts_enqueue":1}',
    '{"trace_id":"b15","trace_id":"b16","x":NaN}', '{"trace_id" : "b15" , "x":' + "[" * 40 + "]" * 40 + "}",
    '{"trace_id":"b15","x":-Infinity}', '{"trace_id":"b15","x":Infinity,"y":1.5e308,"z":-0}',
]


def lua_verdict(sc: Scripts, p) -> tuple:
    rule, tid, _ = sc.gate(args=[p])
    return rule or None, tid or None


def py_verdict(p) -> tuple:
    rule, tid, _ = payload.verdict(p)
    return rule, tid


# ---- pure properties of the Python gate (Hypothesis) ----

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(10**20), 10**20),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8), inner, max_size=4), max_leaves=30)
field_value = st.one_of(json_value, st.integers(-3, 2000),
                        st.sampled_from(["", "a", "t-1", "x" * 200, "-f", "o/x.mp4"]))
payload_dict = st.fixed_dictionaries(
    {}, optional={k: field_value for k in ("trace_id", "profile", "cpu_units", "attempt", "ts_enqueue", "ts_dispatch",
                                            "node", "input", "output", "params", "extra")}).map(lambda d: {**BASE, **d}
                                                                                                 if len(d) < 3 else d)


def mutate(data: st.DataObject, b: bytes) -> bytes:
    """A random byte-level damage: cut, insert, flip."""
    kind = data.draw(st.sampled_from(["none", "cut", "insert", "flip", "nest"]))
    if not b or kind == "none":
        return b
    i = data.draw(st.integers(0, len(b) - 1))
    if kind == "cut":
        return b[:i]
    if kind == "insert":
        return b[:i] + data.draw(st.binary(min_size=1, max_size=4)) + b[i:]
    if kind == "flip":
        return b[:i] + bytes([b[i] ^ data.draw(st.integers(1, 255))]) + b[i + 1:]
    n = data.draw(st.integers(1, 60))
    return b[:1] + b'"deep":' + b"[" * n + b"]" * n + b"," + b[1:]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_gate_never_raises_anything_but_its_verdict(data):
    d = data.draw(payload_dict)
    b = mutate(data, json.dumps(d, allow_nan=True).encode())
    try:
        env = payload.check(b)
    except payload.InvalidPayload as exc:
        assert exc.rule in payload.RULES and str(exc)
        assert exc.trace_id is None or payload.safe_id(exc.trace_id)
        return
    # what passes can always be re-encoded (no NaN, no Infinity), is small and shallow, and names its trace_id
    assert len(b) <= payload.MAX_PAYLOAD_BYTES and payload.depth_of(b) <= payload.MAX_DEPTH
    json.dumps(env.data, allow_nan=False)
    assert payload.safe_id(env.trace_id) and env.trace_id == env.data["trace_id"]
    assert env.cpu_units is None or payload.CPU_UNITS[0] <= env.cpu_units <= payload.CPU_UNITS[1]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=200))
def test_gate_on_arbitrary_bytes_and_text(b):
    rule, tid, reason = payload.verdict(b)
    assert rule is None or (rule in payload.RULES and reason)


@settings(max_examples=200, deadline=None)
@given(units=st.integers(1, 1024), attempt=st.integers(1, 10_000), ts=st.integers(0, 10**14 - 1),
       tid=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z"), extra=json_value)
def test_valid_payloads_pass_whatever_else_they_carry(units, attempt, ts, tid, extra):
    d = {"trace_id": tid, "profile": "p", "cpu_units": units, "attempt": attempt, "ts_enqueue": ts, "extra": extra}
    finite = all(not isinstance(v, float) or math.isfinite(v) for v in _leaves(extra))
    rule, got, reason = payload.verdict(json.dumps(d))
    if finite:
        assert rule is None and got == tid, reason
    else:
        assert rule == "number" and got == tid


def _leaves(v):
    if isinstance(v, dict):
        for x in v.values():
            yield from _leaves(x)
    elif isinstance(v, list):
        for x in v:
            yield from _leaves(x)
    else:
        yield v


def test_size_is_checked_before_anything_is_parsed(monkeypatch):
    """Regression: a payload was fully parsed before the 64 KiB size check."""
    def no_parse(*a, **kw):
        raise AssertionError("parsed an oversized payload")

    monkeypatch.setattr(payload.json, "loads", no_parse)
    big = raw(pad="x" * 70_000)
    with pytest.raises(payload.InvalidPayload) as exc:
        payload.check(big)
    assert exc.value.rule == "size" and exc.value.trace_id == "b15" and "exceeds" in str(exc.value)
    from tracekit.control.task import InvalidTask, parse_task

    with pytest.raises(InvalidTask, match="exceeds"):
        parse_task(big)


def test_deep_nesting_is_refused_without_recursion():
    """Regression (item 2): ~995 levels in 2 KB made the worker's json.loads raise RecursionError."""
    deep = '{"trace_id":"b2","profile":"p","cpu_units":1,"ts_enqueue":1,"x":' + "[" * 995 + "]" * 995 + "}"
    assert payload.verdict(deep)[:2] == ("depth", "b2")
    from tracekit.control.task import InvalidTask, parse_task

    with pytest.raises(InvalidTask) as exc:
        parse_task(deep)
    assert exc.value.trace_id == "b2"


@pytest.mark.parametrize("units", [0, -1, 1.5, "1e400"])
def test_cpu_units_out_of_range_name_the_trace_id(units):
    p = raw(cpu_units=units) if units != "1e400" else raw().replace('"cpu_units": 1', '"cpu_units": 1e400')
    rule, tid, _ = payload.verdict(p)
    assert rule in ("cpu_units", "number") and tid == "b15"


# ---- the Lua gate agrees with the Python gate (real Redis) ----


@pytest.fixture
def sc(redis_client):
    return Scripts(redis_client, K)


def test_lua_and_python_gates_agree_on_the_corpus(sc):
    disagree = [(p, py_verdict(p), lua_verdict(sc, p)) for p in CORPUS if py_verdict(p) != lua_verdict(sc, p)]
    assert not disagree, disagree
    rules = {py_verdict(p)[0] for p in CORPUS}
    assert rules >= set(payload.RULES) - {"ts_dispatch"} | {None}  # the corpus exercises (nearly) every rule


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(st.data())
def test_lua_and_python_gates_agree_on_generated_payloads(sc, data):
    d = data.draw(payload_dict)
    b = mutate(data, json.dumps(d, allow_nan=True).encode())
    assert py_verdict(b) == lua_verdict(sc, b), b


def test_lua_limits_are_the_python_constants(sc):
    """The Lua is rendered from payload.lua_constants(): one byte over each limit is refused on both sides."""
    at = '{"trace_id":"b15","profile":"p","cpu_units":1,"ts_enqueue":1,"pad":"'
    fill = payload.MAX_PAYLOAD_BYTES - len(at) - 2
    for n, rule in ((fill, None), (fill + 1, "size")):
        p = at + "x" * n + '"}'
        assert py_verdict(p)[0] == lua_verdict(sc, p)[0] == rule
    for n, rule in ((payload.MAX_DEPTH - 1, None), (payload.MAX_DEPTH, "depth")):
        p = raw(x=json.loads("[" * n + "]" * n))
        assert py_verdict(p)[0] == lua_verdict(sc, p)[0] == rule


# ---- PLACE: refused payloads are recorded under their own trace_id, never popped first, never twice ----


def register(sc, node, cap):
    return sc.register(args=[node, f"i-{node}", cap, 0, 3000, "0"])


def place(sc):
    return sc.place(args=["", "min", 1000])


def test_nan_and_1e400_are_failed_under_their_trace_id_and_the_scheduler_lives(redis_client, sc, run_env):
    """Regression (item 1): PLACE popped the task, then cjson.encode failed: task lost, scheduler dead."""
    r = redis_client
    register(sc, "a", 2)
    r.rpush(K.pending, '{"trace_id":"b15","profile":"sleepy","cpu_units":1,"ts_enqueue":1e400,"attempt":1}',
            raw(trace_id="b16", x=float("nan")), raw(trace_id="ok"))
    assert place(sc) == [1, "empty"]
    assert r.llen(K.pending) == 0 and [json.loads(x)["trace_id"] for x in r.lrange(K.queue("a"), 0, -1)] == ["ok"]
    for tid in ("b15", "b16"):
        rec = json.loads(r.hget(K.failed, tid))
        assert "not finite" in rec["reason"] and rec["trace_id"] == tid
    assert LogDrain(r, K, run_env["RUN_ID"]).drain() == 3


@pytest.mark.parametrize("units", ["0", "-1", "1.5", "1e400", "Infinity"])
def test_bad_cpu_units_are_failed_under_the_payloads_trace_id(redis_client, sc, units):
    """Regression (item 11 and 'cpu_units 0, -1 or 1.5 failed under a synthetic bad-<sha1> key'): 1e400 blocked
    the head forever; the others were recorded as bad-<sha1>, so whoever waited on the trace_id never heard."""
    r = redis_client
    register(sc, "a", 4)
    r.rpush(K.pending, raw().replace('"cpu_units": 1', f'"cpu_units": {units}'), raw(trace_id="next"))
    assert place(sc) == [1, "empty"]
    rec = json.loads(r.hget(K.failed, "b15"))
    assert rec["trace_id"] == "b15" and ("cpu_units" in rec["reason"] or "not finite" in rec["reason"])
    assert not [k for k in r.hkeys(K.failed) if k.startswith("bad-")]


def test_non_utf8_trace_id_neither_kills_the_drain_nor_status(redis_client, sc, run_env):
    """Regression (item 3): a non-UTF-8 trace_id reached controller:log and the decoding drain died (the scheduler
    crash-looped); status crashed on such a head."""
    r = redis_client
    register(sc, "a", 2)
    bad = b'{"trace_id":"\xff\xfe","profile":"p","cpu_units":1,"ts_enqueue":1}'
    r.rpush(K.pending, bad)
    s = snapshot(r, K)
    assert s["head"]["trace_id"] is None and "UTF-8" in s["head"]["why"]
    assert place(sc) == [0, "empty"]
    (key,) = r.hkeys(K.failed)
    assert key.startswith("bad-") and "UTF-8" in json.loads(r.hget(K.failed, key))["reason"]
    # a record that is not UTF-8 in the stream (written by anything): the drain writes it escaped and goes on
    r.xadd(K.controller_log, {"f": "c", "r": b'{"trace_id":"\xff"}'})
    r.xadd(K.controller_log, {"f": "c", "r": "not json \u00e9"})
    d = LogDrain(r, K, run_env["RUN_ID"])
    assert d.drain() == 3 and r.xlen(K.controller_log) == 0
    lines = [o for _, o in read_jsonl(controller_dir(run_env["RUN_ID"]) / "events.jsonl")]
    assert len(lines) == 3 and all("sid" in o for o in lines)
    assert lines[1]["raw"] == '{"trace_id":"\\xff"}'


def test_status_says_why_a_bad_head_waits(redis_client, sc):
    """Regression (item 11): status crashed with OverflowError on cpu_units 1e400 at the head."""
    r = redis_client
    register(sc, "a", 2)
    r.rpush(K.pending, raw().replace('"cpu_units": 1', '"cpu_units": 1e400'))
    h = snapshot(r, K)["head"]
    assert h["trace_id"] == "b15" and "not finite" in h["why"] and "scheduler records it failed" in h["why"]
    r.delete(K.pending)
    r.rpush(K.pending, raw(cpu_units=3))
    assert "needs 3" in snapshot(r, K)["head"]["why"] or "most free" in snapshot(r, K)["head"]["why"]


def test_a_duplicate_trace_id_is_placed_once_and_failed_with_a_reason(redis_client, sc):
    """Regression (item 7): the same payload pushed twice ran twice and both completions were accepted."""
    r = redis_client
    register(sc, "a", 4)
    p = raw(trace_id="dup")
    r.rpush(K.pending, p, p, p)
    assert place(sc) == [1, "empty"]
    assert r.llen(K.queue("a")) == 1 and r.get(K.cap("a")) == "3"
    dups = {k: json.loads(v) for k, v in r.hgetall(K.failed).items()}
    assert len(dups) == 2 and all(k.startswith("bad-") and "duplicate trace_id dup" in v["reason"]
                                  for k, v in dups.items())
    # the original runs and completes; a copy put straight into the node queue cannot overwrite its record
    taken = r.lmove(K.queue("a"), K.running("a"), "LEFT", "RIGHT")
    rec = json.dumps({"trace_id": "dup", "attempt": 1, "node_id": "a", "by": "worker", "status": "ok"})
    assert sc.complete(args=["a", taken, "dup", 1, "done", rec]) == "ok"
    r.rpush(K.running("a"), taken)
    assert sc.complete(args=["a", taken, "dup", 1, "done", rec]) == "duplicate"
    assert json.loads(r.hget(K.done, "dup"))["status"] == "ok" and not r.hexists(K.failed, "dup")
    assert len(r.hkeys(K.failed)) == 3
    # a re-queued task (node lost) is placed again: its own payload is not a duplicate
    r.rpush(K.pending, raw(trace_id="re"))
    place(sc)
    r.lmove(K.queue("a"), K.running("a"), "LEFT", "RIGHT")
    r.delete(K.heartbeat("a"))
    register(sc, "b", 4)
    assert sc.reap() == [1, 1, 0]
    assert place(sc) == [1, "empty"] and json.loads(r.lindex(K.queue("b"), 0))["attempt"] == 2


def test_the_dispatcher_refuses_bad_and_duplicate_payloads(redis_client):
    r = redis_client
    with pytest.raises(BadTask, match="twice"):
        check_batch(r, K, [raw(trace_id="d1"), raw(trace_id="d1")])
    with pytest.raises(BadTask, match="bad payload"):
        check_batch(r, K, [raw(trace_id="d2", cpu_units=0)])
    r.hset(K.done, "d3", "{}")
    with pytest.raises(BadTask, match="already used"):
        check_batch(r, K, [raw(trace_id="d4"), raw(trace_id="d3")])
    check_batch(r, K, [raw(trace_id="d4"), raw(trace_id="d5")])


def test_the_worker_does_not_parse_an_oversized_payload(redis_client, run_env, tmp_path, monkeypatch):
    """Regression ('a payload is fully parsed before the 64 KiB size check'): the worker json.loads'ed every
    payload to find its trace_id before any check; the gate reads the trace_id from the raw text instead."""
    from tracekit.control import task, worker

    w = worker.Worker(redis_client, K, worker.WorkerConfig(run_id=run_env["RUN_ID"], node="s1", outputs=tmp_path))

    def no_parse(*a, **kw):
        raise AssertionError("parsed an oversized payload")

    for mod in (worker, task, payload):
        monkeypatch.setattr(mod.json, "loads", no_parse)
    big = raw(pad="x" * 200_000)
    redis_client.rpush(K.running("s1"), big)
    w.handle(big)
    monkeypatch.undo()
    rec = json.loads(redis_client.hget(K.failed, "b15"))
    assert "exceeds" in rec["reason"] and redis_client.llen(K.running("s1")) == 0
