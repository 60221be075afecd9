"""Service profiles, their argv, the adapter's stop verdict, the demo service's parameters: pure logic."""

from __future__ import annotations

import json
import signal
import sys

import pytest

from tracekit.control.profiles import check_profile, load_profiles
from tracekit.control.service import advertised_host, service_env
from tracekit.control.task import build_command, parse_task
from tracekit.core.errors import BadInput
from tracekit.node.adapter import service_stopped
from tracekit.node.demo_service import thumb_args


def test_builtin_service_profiles():
    p = load_profiles()
    for name in ("thumbsvc", "httpserver"):
        assert p[name]["app"] == "service" and not p[name]["needs_input"] and p[name]["port"] == 0
    assert p["thumbsvc"]["ready"] == {"http": "/ping"} and p["httpserver"]["ready"] == {"tcp": True}
    assert service_env(p["thumbsvc"]) == {"TC_SERVICE": "1", "TC_STOP_GRACE_S": "5"}


def test_service_profile_defaults_and_refusals():
    ok = check_profile("s", {"app": "service", "cpu_units": 1, "argv": ["srv", "{port}"]})
    assert ok["ready"] == {"tcp": True} and ok["seconds"] == 3600 and ok["stop_grace_s"] == 5
    assert check_profile("s", {"app": "service", "cpu_units": 1, "argv": ["srv"], "port": 8080})["port"] == 8080
    for bad in ({"argv": ["srv"]},  # port 0 but no {port}: nobody would know where it listens
                {"argv": ["srv", "{port}"], "port": 70000}, {"argv": ["srv", "{port}"], "ready": {"http": "x"}},
                {"argv": ["srv", "{port}"], "ready": {"udp": 1}}, {"argv": ["srv", "{port}"], "seconds": 0},
                {"argv": ["srv", "{port}"], "stop_grace_s": -1}, {"argv": []}):
        with pytest.raises(BadInput):
            check_profile("s", {"app": "service", "cpu_units": 1, **bad})


def test_service_argv_gets_a_free_port_and_this_interpreter(tmp_path):
    task = parse_task(json.dumps({"trace_id": "s1", "profile": "thumbsvc", "ts_enqueue": 1, "attempt": 1,
                                  "params": {"seconds": 30}}))
    assert task.params["seconds"] == 30
    cmd = build_command(task, tmp_path, tmp_path)
    assert cmd.argv[:3] == [sys.executable, "-m", "tracekit.node.demo_service"]
    assert cmd.argv[-2:] == ["--port", str(cmd.port)] and 0 < cmd.port < 65536
    http = build_command(parse_task(json.dumps({"trace_id": "s2", "profile": "httpserver", "ts_enqueue": 1})),
                         tmp_path, tmp_path)
    assert http.argv[-2:] == ["--directory", str(tmp_path)]


def test_adapter_counts_a_stopped_service_as_success():
    term, kill = signal.SIGTERM, signal.SIGKILL
    assert service_stopped(True, [term], None, 0)  # exited cleanly on SIGTERM
    assert service_stopped(True, [term], term, 128 + term)  # default SIGTERM death
    assert service_stopped(True, [term], kill, 128 + kill)  # SIGKILL after the grace
    assert service_stopped(True, [term], None, 143)
    assert not service_stopped(True, [term], None, 1)  # crashed while stopping
    assert not service_stopped(True, [], term, 128 + term)  # killed by someone else: a failure
    assert not service_stopped(False, [term], term, 128 + term)  # a batch task stopped is not done


def test_advertised_host_for_local_redis():
    assert advertised_host("localhost") == "127.0.0.1" and advertised_host(None) == "127.0.0.1"
    assert advertised_host("127.0.0.1") == "127.0.0.1"


def test_thumb_args():
    assert thumb_args({"t": "1.5", "w": "321"}, 3.0) == (1.5, 320)
    assert thumb_args({"t": "99"}, 3.0) == (2.9, 320)  # clamped into the clip
    for bad in ({"t": "nan"}, {"t": "-1"}, {"w": "8"}, {"w": "5000"}, {"t": "x"}):
        with pytest.raises(ValueError):
            thumb_args(bad, 3.0)
