"""The load generator's pure logic (control/loadplan.py), its target guard, and the request linking of the CTS
(trace/requests.py): no network, no Redis."""

from __future__ import annotations

import statistics

import pytest

from tracekit.control import loadplan as lp
from tracekit.control.loadgen import check_target, is_loopback_url
from tracekit.control.service import same_target, service_url
from tracekit.core.errors import BadInput, UsageError
from tracekit.core.schema import REQUEST_FIELDS, REQUEST_RAW_FIELDS
from tracekit.trace import requests as rq


def test_constant_arrivals_are_exact_and_bounded():
    assert lp.arrival_offsets(4, 1.0, None) == [0, 0.25, 0.5, 0.75]
    assert lp.arrival_offsets(4, 10.0, 3) == [0, 0.25, 0.5]  # the count bounds first
    assert len(lp.arrival_offsets(2000, 3.0, None)) == 6000
    assert lp.arrival_offsets(3, None, 2) == [0, 1 / 3]


def test_poisson_arrivals_seeded_mean_rate_and_bounds():
    a = lp.arrival_offsets(100, 50.0, None, "poisson", seed=3)
    assert a == lp.arrival_offsets(100, 50.0, None, "poisson", seed=3)
    assert a != lp.arrival_offsets(100, 50.0, None, "poisson", seed=4)
    assert a == sorted(a) and a[0] == 0 and a[-1] < 50.0
    assert 4500 < len(a) < 5500  # mean rate 100/s over 50 s
    gaps = [y - x for x, y in zip(a, a[1:], strict=False)]
    assert 0.009 < statistics.mean(gaps) < 0.011 and 0.008 < statistics.stdev(gaps) < 0.012  # exponential
    assert len(lp.arrival_offsets(100, None, 7, "poisson", seed=1)) == 7


@pytest.mark.parametrize("kw", [dict(count=None, duration_s=None), dict(count=0, duration_s=None),
                                dict(count=lp.MAX_REQUESTS + 1, duration_s=None),
                                dict(count=None, duration_s=lp.MAX_DURATION_S + 1)])
def test_the_load_is_always_bounded(kw):
    with pytest.raises(UsageError):
        lp.check_bounds(kw["count"], kw["duration_s"])


def test_bad_rate_and_arrival_refused():
    for rate in (0, -1, lp.MAX_RATE * 2):
        with pytest.raises(UsageError):
            lp.arrival_offsets(rate, 1.0, None)
    with pytest.raises(UsageError):
        lp.arrival_offsets(10, 1.0, None, "bursty")


def test_mix_picks_follow_weights_and_are_the_same_in_any_chunking():
    picks = lp.choose_mix([3, 1], 8000, seed=5)
    assert 0.72 < picks.count(0) / 8000 < 0.78
    p = lp.MixPicker([3, 1], 5)
    assert [p[k] for k in (5000, 10, 7999)] == [picks[5000], picks[10], picks[7999]]  # random access, same draws
    assert lp.choose_mix([1], 5) == [0] * 5
    assert lp.choose_mix([1, 1], 50, seed=1) != lp.choose_mix([1, 1], 50, seed=2)


def test_closed_loop_next():
    assert lp.closed_loop_next(0, 0.0, 1, None) and not lp.closed_loop_next(1, 0.0, 1, None)
    assert lp.closed_loop_next(10**6, 0.5, None, 1.0) and not lp.closed_loop_next(0, 1.0, None, 1.0)


def test_parse_mix_jsonl_and_list():
    m = lp.parse_mix('{"path": "/ping", "weight": 3}\n# comment\n{"method": "post", "path": "/x?a=1", "body": "hi"}')
    assert m == [lp.MixEntry("GET", "/ping", b"", 3.0), lp.MixEntry("POST", "/x?a=1", b"hi", 1.0)]
    assert lp.parse_mix('[{"path": "/"}]') == [lp.MixEntry("GET", "/")]


@pytest.mark.parametrize("text", [
    "", '{"path": "http://evil.example/"}', '{"path": "//evil.example/x"}', '{"path": "ping"}',
    '{"path": "/a b"}', '{"path": "/a\\r\\nHost: x"}', '{"path": "/", "method": "CONNECT"}',
    '{"path": "/", "weight": 0}', '{"path": "/", "weight": true}', '{"path": "/", "body": 3}',
    '{"path": "/", "url": "http://x"}', "not json"])
def test_parse_mix_refuses_anything_that_could_leave_the_service(text):
    with pytest.raises(BadInput):
        lp.parse_mix(text)


def test_percentile():
    assert lp.percentile([], 50) is None
    assert lp.percentile([1, 2, 3, 4], 50) == 2.5 and lp.percentile([5], 99) == 5


def test_target_guard():
    pub = "http://10.1.0.2:4000"
    assert check_target("http://10.1.0.2:4000/", pub) == pub
    for bad in ("http://10.1.0.3:4000", "http://10.1.0.2:4001", "https://10.1.0.2:4000", "http://10.1.0.2:4000/x"):
        with pytest.raises(UsageError):
            check_target(bad, pub)
    assert check_target("http://127.0.0.1:9000", None) == "http://127.0.0.1:9000"
    assert is_loopback_url("http://[::1]:80") and is_loopback_url("http://localhost:1")
    for bad in ("http://10.0.0.1:80", "http://example.org:80", "ftp://127.0.0.1:21"):
        with pytest.raises(UsageError):
            check_target(bad, None)
    assert service_url("::1", 80) == "http://[::1]:80" and same_target("http://[::1]:80/", "http://[::1]:80")


def _raw(n, ts_send, **kw):
    d = dict.fromkeys(REQUEST_RAW_FIELDS)
    d.update(request_id=f"s1-r{n}", trace_id="s1", method="GET", path="/", ts_sched=ts_send, ts_send=ts_send,
             ts_first_byte=ts_send + 1, ts_end=ts_send + 2.5, status=200, req_bytes=0, resp_bytes=4, server_ms=1.0)
    d.update(kw)
    return d


def test_link_requests_to_the_execution_that_ran_them():
    invs = [{"trace_id": "s1", "attempt": 1, "node_id": "a", "pid": 10, "starttime": 5, "ts_start": 0, "ts_end": 100},
            {"trace_id": "s1", "attempt": 2, "node_id": "b", "pid": 11, "starttime": 6, "ts_start": 200,
             "ts_end": 300},
            {"trace_id": "x", "attempt": 1, "node_id": "a", "pid": 12, "starttime": 7, "ts_start": 0, "ts_end": 9}]
    rows, unlinked = rq.link([_raw(1, 50), _raw(2, 250), _raw(3, 120), _raw(4, 5, trace_id="nope")], invs)
    assert [list(r) for r in rows] == [list(REQUEST_FIELDS)] * 4
    assert [(r["node_id"], r["pid"], r["starttime"], r["attempt"]) for r in rows[:3]] == [
        ("a", 10, 5, 1), ("b", 11, 6, 2), ("a", 10, 5, 1)]  # 120: nearest run (ended 20 ms before)
    assert rows[0]["latency_ms"] == 2.5 and unlinked == 1 and rows[3]["pid"] is None


def test_request_figures_and_verdict():
    lines, _ = rq.link([_raw(k, 1000.0 + 10 * k) for k in range(1, 101)] + [_raw(101, 2100.0, error="timeout",
                                                                              status=None)],
                       [{"trace_id": "s1", "attempt": 1, "node_id": "a", "pid": 1, "starttime": 1, "ts_start": 0,
                         "ts_end": 5000}])
    services = rq.group(lines)
    f = rq.service_figures(services["s1"])
    assert f["count"] == 101 and f["errors"] == 1 and f["p50"] == 2.5 and f["gap_p50"] == 1.5
    v, summary, details = rq.verdict(services)
    assert v == "WARN" and "1 errors" in summary and "p50/p90/p99 2.50/2.50/2.50" in details[0]
    starts, ok, err = rq.throughput(lines)
    assert ok.sum() == 100 and err.sum() == 1
    assert rq.verdict(rq.group(lines[:50] + lines[51:]))[0] == "FAIL"  # request 51 lost
    assert rq.verdict(rq.group(lines + lines[:1]))[0] == "FAIL"  # request 1 twice
    lines[0]["server_ms"] = 10.0  # the server says it took longer than the client saw: a broken clock or link
    assert rq.verdict(rq.group(lines))[0] == "FAIL"
