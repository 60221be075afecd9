"""The payload gate's fast paths (control/payload.py ``check``): each one gives the verdict the full check gives.

The oracle is the implementation before the fast paths, kept in ``bench/bench_payload.py`` (``reference_check``):
on every payload here both must say exactly the same thing (rule, trace_id, attempt, profile, reason; or the same
Envelope). The Lua gate must agree on rule and trace_id too, as in ``tests/test_control_payload.py``. The payloads
sit right at each fast path's boundary: MAX_DEPTH and MAX_DEPTH+1 opening brackets inside and outside strings,
``\\u`` escapes (lone surrogates, pairs, an escaped backslash before a ``u``), 308/309-digit integers,
exponents, NaN/Infinity, non-ASCII and non-printable characters, control characters, and the field types the
one-pass field check lets through or hands to the full one.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_control_payload import CORPUS, K, lua_verdict, mutate, payload_dict
from tracekit.control import payload
from tracekit.control.lua import Scripts

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load_reference():
    """bench/bench_payload.py as a module (it imports bench/benchlib.py: bench/ is on the path while it loads)."""
    spec = importlib.util.spec_from_file_location("bench_payload_reference", BENCH / "bench_payload.py")
    mod = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCH))
        spec.loader.exec_module(mod)
    return mod


REF = _load_reference()
D = payload.MAX_DEPTH
GOOD = {"trace_id": "f15", "profile": "p", "cpu_units": 1, "ts_enqueue": 1764259200123, "attempt": 2}


def good(**kw) -> str:
    """A payload that passes, with ``kw`` merged in (compact, as the dispatcher's may be)."""
    return json.dumps({**GOOD, **kw}, separators=(",", ":"), allow_nan=True)


def with_raw(text: str) -> str:
    """A passing payload with ``"x":<text>`` (raw JSON text, not re-encoded) appended."""
    return good()[:-1] + ',"x":' + text + "}"


def nest(n: int, leaf: str = "1") -> str:
    return "[" * n + leaf + "]" * n


def nest_obj(n: int) -> str:
    return '{"a":' * n + "1" + "}" * n


BIG_INT = "9" * 309  # beyond a double: inf
FIT_INT = "1" + "0" * 308  # 309 digits, 1e308: finite

BOUNDARY: list = [
    # the usual payloads
    good(), good(ts_enqueue=1764259200123.456), good(cpu_units=None, attempt=None), good(params={}), good(params=[]),
    good(ts_dispatch=1764259200456.5, node="n1", input="/in/a.mp4", output="/out/a.mp4", params={"crf": 23}),
    # depth: the scan runs only past MAX_DEPTH opening brackets in the whole text (the payload's own '{' counts)
    with_raw(nest(D - 2)), with_raw(nest(D - 1)), with_raw(nest(D)), with_raw(nest(D + 1)),
    with_raw(nest_obj(D - 1)), with_raw(nest_obj(D)), "[" * D + "]" * D, "[" * (D + 1) + "]" * (D + 1),
    with_raw('"' + "[" * (D + 5) + '"'), with_raw('"' + "{" * D + '"'),  # brackets in strings: never depth
    with_raw('["' + "[" * D + '",' + nest(D - 2) + "]"),  # past the count, under the limit: the scan decides
    with_raw('"\\"' + "[" * (D + 1) + '"'),  # an escaped quote: the brackets are still in the string
    with_raw(nest(D - 1, '"\\\\"')), with_raw(nest(D, '"\\\\"')),
    "[" * (D + 1), "{" * (D + 1), "]" * (D + 1),  # unbalanced: depth first, else json
    # \u escapes: a lone surrogate is json, a pair is a character, \\u is no escape
    with_raw('"\\ud800"'), with_raw('"\\udc00"'), with_raw('"\\uDFFF"'), with_raw('"\\ud83d\\ude00"'),
    with_raw('"\\ud83d"'), with_raw('"\\u0041"'), with_raw('"\\\\ud800"'), with_raw('{"\\ud800":1}'),
    with_raw('["\\udc00", 1e400]'), with_raw('[1e400, "\\udc00"]'), '"\\ud800"', '["\\ud800"]',
    good(trace_id="\ud800"), good(profile="\udfff"), good(node="\ud83d\ude00"), good(**{"\ud800": 1}),
    good()[:-1] + ',"trace_id":"\\ud800"}',
    # integers at the double's edge: 308 digits always fit; 309 may not; 4301+ digits are beyond int()'s limit
    with_raw("9" * 308), with_raw("-" + "9" * 308), with_raw(FIT_INT), with_raw(BIG_INT), with_raw("-" + BIG_INT),
    with_raw("[" + BIG_INT + "]"), with_raw('{"y":' + BIG_INT + "}"), with_raw("1" * 5000), with_raw("1" * 4301),
    with_raw('"' + BIG_INT + '"'), with_raw('"' + BIG_INT + '",' + '"z":' + "9" * 308),
    with_raw("9" * 308 + ".5"), with_raw(BIG_INT + ".5"), with_raw("0." + "9" * 400), with_raw("0" + "9" * 308),
    good()[:-1].replace("1764259200123", BIG_INT) + "}", good()[:-1].replace('"cpu_units":1', '"cpu_units":'
                                                                                 + BIG_INT) + "}",
    good()[:-1].replace('"attempt":2', '"attempt":' + BIG_INT) + "}", BIG_INT, "9" * 308, "[" + BIG_INT + "]",
    # exponents, NaN, Infinity
    with_raw("1e308"), with_raw("1e309"), with_raw("1E400"), with_raw("-1e400"), with_raw("1.5e-400"),
    with_raw("2e0"), with_raw("1.7976931348623157e308"), with_raw("1.7976931348623159e308"), with_raw("NaN"),
    with_raw("Infinity"), with_raw("-Infinity"), with_raw("[1,[2,[NaN]]]"), with_raw('{"a":{"b":Infinity}}'),
    with_raw("-0"), with_raw("-0.0"), with_raw("0e400"), good(ts_enqueue=1.764e12), good(cpu_units=2e0),
    good()[:-1].replace("1764259200123", "1.764259200123e12") + "}", "NaN", "Infinity", "1e400", "[NaN]",
    good()[:-1].replace("1764259200123", "NaN") + "}", good()[:-1].replace('"attempt":2', '"attempt":1e400') + "}",
    # non-ASCII, non-printable, control characters
    good(node="caf\u00e9"), good(input="/in/\u00e9t\u00e9.mp4"), good(trace_id="caf\u00e9"), good(x="\U0001f600"),
    good(x="\u00a0"), good(x="\u0085"), good(x="\u2028"), good(x="\u200b"), good(x="\x7f"), good(x="\ufeff"),
    "\ufeff" + good(), b"\xef\xbb\xbf" + good().encode(), good()[:-1] + ",\u00a0" + '"x":1}',
    good().replace(",", ",\t").replace(":", ":\n"), good() + "\r\n", good(x="a\tb\nc\rd"),
    with_raw('"a\x01b"'), with_raw('"a\x1fb"'), with_raw('"\x00"'), good() + "\x0b", "\x0c" + good(),
    with_raw('"\u00e9\x01"'), with_raw('"\x7f\x01"'), b'{"trace_id":"f15","x":"\xc3\xa9\x01"}',
    b'{"trace_id":"f15","x":"\xff"}', b'{"trace_id":"f15","x":"\xed\xa0\x80"}', b"\x01\xff",
    # field types: what the one-pass check passes, what it hands to the full one
    good(cpu_units=2.0), good(cpu_units=1024), good(cpu_units=1025), good(cpu_units=0), good(cpu_units=True),
    good(cpu_units="1"), good(cpu_units=1.5), good(attempt=3.0), good(attempt=10_000), good(attempt=10_001),
    good(attempt=0), good(attempt=True), good(attempt=None), good(ts_enqueue=0), good(ts_enqueue=10**14 - 1),
    good(ts_enqueue=10**14), good(ts_enqueue=-0.5), good(ts_enqueue=True), good(ts_enqueue=None),
    good(ts_enqueue="1"), good(ts_dispatch=10**14), good(ts_dispatch=False), good(ts_dispatch=0.5),
    good(node=""), good(node=3), good(node=None), good(input=""), good(input="a" * 4096), good(input="a" * 4097),
    good(input="\u00e9" * 2048), good(input="\u00e9" * 2049), good(output="a\x00b"), good(output=None),
    good(params=[1]), good(params="x"), good(params=None), good(params={"a": [1, 2.5, None]}),
    good(trace_id="x" * 128), good(trace_id="x" * 129), good(trace_id="a\n"), good(trace_id="-a"), good(trace_id=7),
    good(profile="p" * 128), good(profile="p" * 129), good(profile=None), good(profile="a b"),
    good(cpuset="0-1"), good(cpuset="1-0"), good(cpuset=None), good(cpu_quota=150), good(cpu_quota=0),
    good(cpu_weight=10_000), good(cpu_weight=10_001), good(unit_name="a.scope"), good(unit_name="a b"),
    json.dumps({k: v for k, v in GOOD.items() if k != "trace_id"}), json.dumps({k: v for k, v in GOOD.items()
                                                                               if k != "ts_enqueue"}),
    good()[:-1] + ',"trace_id":"f16"}', good()[:-1] + ',"cpu_units":0}',
    # not JSON, not an object
    "", " ", "{}", "[]", "null", "1", '"f15"', good() + "x", good()[:-1], "{'trace_id':'f15'}", good() + " {}",
]


def outcome(p) -> tuple:
    return REF.outcome(payload.check, p)


def reference(p) -> tuple:
    return REF.outcome(REF.reference_check, p)


def test_the_boundary_payloads_get_the_reference_verdict():
    differ = [(p, outcome(p), reference(p)) for p in BOUNDARY if outcome(p) != reference(p)]
    assert not differ, differ


def test_the_boundary_payloads_hit_every_rule_and_both_sides_of_each_fast_path():
    """The corpus is what it claims: each limit is met on both sides (else the tests above prove little)."""
    rules = {outcome(p)[1] if outcome(p)[0] == "refused" else None for p in BOUNDARY}
    assert rules >= {None, "utf8", "control", "depth", "json", "object", "number", "trace_id", "profile",
                     "cpu_units", "attempt", "ts_enqueue", "ts_dispatch", "node", "input", "output", "params",
                     "binding"}
    openers = {p.count("[") + p.count("{") for p in BOUNDARY if isinstance(p, str)}
    assert {D, D + 1} <= openers
    assert outcome(with_raw(BIG_INT))[1] == "number" and outcome(with_raw(FIT_INT))[0] == "passed"
    assert outcome(with_raw("1" * 5000))[1] == "number"  # int() would refuse it (4300 digits): the callback's
    assert outcome(with_raw("9" * 308))[0] == "passed" and outcome(with_raw("1e309"))[1] == "number"
    assert outcome(with_raw('"\\ud800"'))[1] == "json" and outcome(with_raw('"\\\\ud800"'))[0] == "passed"
    assert outcome(with_raw(nest(D - 1)))[0] == "passed" and outcome(with_raw(nest(D)))[1] == "depth"
    assert outcome(good(x="\x7f"))[0] == "passed" and outcome(with_raw('"a\x01b"'))[1] == "control"


def test_the_envelope_is_the_same_object():
    """A passing payload's fields keep their types: an integral float stays in data, the Envelope holds ints."""
    env = payload.check(good(cpu_units=2.0, attempt=3.0))
    assert (env.cpu_units, env.attempt) == (2, 3) and type(env.cpu_units) is int and type(env.attempt) is int
    assert env.data["cpu_units"] == 2.0 and type(env.data["cpu_units"]) is float
    env = payload.check(good())
    assert type(env.data["ts_enqueue"]) is int and env.attempt == 2 and env.cpu_units == 1


def test_the_existing_corpus_gets_the_reference_verdict():
    differ = [(p, outcome(p), reference(p)) for p in CORPUS if outcome(p) != reference(p)]
    assert not differ, differ


piece = st.sampled_from([
    "1", "-0", "2.5", "1e5", "1E-5", "1e400", "NaN", "Infinity", "-Infinity", "9" * 308, BIG_INT, FIT_INT,
    '"a"', '"\\ud800"', '"\\ud83d\\ude00"', '"\\\\u"', '"\\u00e9"', '"\u00e9"', '"\x01"', '"\x7f"', '"\u0085"',
    '"' + "[" * 20 + '"', "[]", "{}", "null", "true", '"\\""', "[" * 16, "]" * 16, "{", "}", ",", ":", " "])


@st.composite
def pieced(draw) -> str:
    """A payload built from pieces near the fast paths' edges, nested to about MAX_DEPTH."""
    n = draw(st.integers(D - 3, D + 1))
    inner = draw(st.lists(piece, min_size=1, max_size=6).map("".join))
    return with_raw("[" * n + inner + "]" * n) if draw(st.booleans()) else with_raw(inner)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=pieced())
def test_pieced_payloads_get_the_reference_verdict(p):
    assert outcome(p) == reference(p), p


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_generated_payloads_get_the_reference_verdict(data):
    b = mutate(data, json.dumps(data.draw(payload_dict), allow_nan=True).encode())
    assert outcome(b) == reference(b), b


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_arbitrary_bytes_and_text_get_the_reference_verdict(b):
    assert outcome(b) == reference(b)


# ---- the Lua gate agrees on the same payloads (real Redis) ----


@pytest.fixture
def sc(redis_client):
    return Scripts(redis_client, K)


def _py(p) -> tuple:
    rule, tid, _ = payload.verdict(p)
    return rule, tid


def test_lua_agrees_on_the_boundary_payloads(sc):
    differ = [(p, _py(p), lua_verdict(sc, p)) for p in BOUNDARY if _py(p) != lua_verdict(sc, p)]
    assert not differ, differ


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(p=pieced())
def test_lua_agrees_on_pieced_payloads(sc, p):
    assert _py(p) == lua_verdict(sc, p), p
