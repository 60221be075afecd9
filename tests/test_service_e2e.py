"""A service task end to end (docs/services.md): real redis-server, scheduler, worker, adapter, collector, the
demo aiohttp service with ffmpeg, the load generator, the parse and the audit."""

from __future__ import annotations

import json
import shutil
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Daemons, push, run_script, task_payload, wait_for, with_profiles
from test_node_helpers import node_env, start_collector, stop_collector
from tracekit.control.service import probe
from tracekit.control.task import free_port
from tracekit.core import paths
from tracekit.core.keys import Keys

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
RATE, SECONDS = 40, 3


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_service_under_adapter_driven_by_loadgen(run_env, redis_client, tmp_path):
    env = node_env(run_env, "n1", PROC_INTERVAL_MS="100")
    rid = env["RUN_ID"]
    d = Daemons(env, tmp_path)
    try:
        start_collector(env)
        d.scheduler()
        w = d.worker("n1", "--capacity-units", "2", "--exit-when-idle")
        push(redis_client, task_payload("svc1", "thumbsvc", params={"seconds": 120}))
        mix = tmp_path / "mix.jsonl"
        mix.write_text('{"path": "/ping", "weight": 3}\n{"path": "/thumb?t=1.0&w=160", "weight": 1}\n')
        lg = run_script("loadgen.py", "--service", "svc1", "--mix", str(mix), "--rate", str(RATE), "--duration",
                        str(SECONDS), "--seed", "7", "--stop-after", "--wait-ready", "60", env=env, timeout=120)
        assert lg.returncode == 0, lg.stderr
        assert f"{RATE * SECONDS} requests, 0 errors" in lg.stdout
        keys = Keys()
        wait_for(lambda: redis_client.hget(keys.done, "svc1"), timeout=30)
        wait_for(lambda: redis_client.hget(keys.service("svc1"), "state") == "stopped", timeout=5)
        w.wait(30)
    finally:
        stop_collector(env)
        d.close()
    # a loadgen aimed elsewhere than the service's published address is refused
    bad = run_script("loadgen.py", "--service", "svc1", "--url", "http://127.0.0.1:9", "--rate", "1",
                     "--count", "1", "--wait-ready", "1", env=env)
    assert bad.returncode == 2 and "svc1" in bad.stderr and bad.stderr.count("\n") == 1
    r = run_script("parse_cts.py", "--run-id", rid, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    cts = paths.cts_dir(rid)
    inv = [i for i in _lines(cts / "invocations.jsonl") if i["trace_id"] == "svc1"]
    assert len(inv) == 1 and inv[0]["status"] == "ok" and inv[0]["exit_code"] == 0, inv
    inv = inv[0]
    reqs = _lines(cts / "requests.jsonl")
    # exactly the requests sent: one line each, numbered 1..N, all answered
    assert [q["request_id"] for q in reqs] == [f"svc1-r{k}" for k in range(1, RATE * SECONDS + 1)]
    assert all(q["status"] == 200 and q["error"] is None for q in reqs)
    thumbs = [q for q in reqs if q["path"].startswith("/thumb")]
    assert thumbs and all(q["resp_bytes"] > 1000 for q in thumbs), "real JPEGs"
    # linked to the service's process identity, sent while it ran
    assert {(q["node_id"], q["pid"], q["starttime"]) for q in reqs} == {("n1", inv["pid"], inv["starttime"])}
    assert all(inv["ts_start"] <= q["ts_send"] <= q["ts_end"] <= inv["ts_end"] for q in reqs)
    # open loop at a constant rate: scheduled 1/RATE apart, µs resolution
    gaps = [b["ts_sched"] - a["ts_sched"] for a, b in zip(reqs, reqs[1:], strict=False)]
    assert all(abs(g - 1000 / RATE) < 0.01 for g in gaps)
    # the client's latency holds the server's own handling time (the demo service's X-Handle-Us header)
    for q in reqs:
        assert q["server_ms"] is not None and q["latency_ms"] >= q["server_ms"] - 0.5, q
        assert q["ts_send"] <= q["ts_first_byte"] <= q["ts_end"]
    assert sum(q["server_ms"] for q in thumbs) / len(thumbs) > 5, "ffmpeg ran per /thumb request"
    # ... and it is most of what the client saw (the rest: network and the client's own handling)
    assert statistics.median(q["server_ms"] / q["latency_ms"] for q in thumbs) > 0.5
    # its CPU: samples from start to stop, adding up to the exact total (the audit's rules)
    rows = [m for m in _lines(cts / "proc_metrics.jsonl") if m["trace_id"] == "svc1"]
    assert rows and abs((rows[0]["ts_ms"] - rows[0]["dt_ms"]) - inv["ts_start"]) <= 1
    assert abs(rows[-1]["ts_ms"] - inv["ts_end"]) <= 1
    assert all(abs((b["ts_ms"] - b["dt_ms"]) - a["ts_ms"]) <= 1 for a, b in zip(rows, rows[1:], strict=False))
    assert abs(sum(m["cpu_ms"] for m in rows) - inv["cpu_ms"]) <= max(1.0, 0.01 * inv["cpu_ms"])
    assert inv["cpu_ms"] > 100, "the thumbnails' ffmpeg CPU is the service's"
    report = (cts / "audit_report.md").read_text()
    assert "| Requests | PASS |" in report and "| CPU accounting | PASS |" in report, report
    assert (cts / "requests.png").stat().st_size > 10_000
    states = [s["state"] for s in _lines(paths.services_path(rid, "n1"))]
    assert states == ["starting", "ready", "stopping", "stopped"]
    # OpenDC: the service is one long task whose fragments are its measured CPU (request data stays in the CTS)
    out = tmp_path / "opendc"
    r = run_script("export_opendc.py", "--input", str(paths.run_dir(rid)), "--output", str(out), env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    import pyarrow.parquet as pq

    tasks = pq.read_table(out / "tasks.parquet").to_pylist()
    frags = pq.read_table(out / "fragments.parquet").to_pylist()
    assert [t["name"] for t in tasks] == ["svc1"] and tasks[0]["cpu_count"] == 1
    assert sum(f["duration"] for f in frags) == tasks[0]["duration"] >= inv["ts_end"] - inv["ts_start"]
    mhz = tasks[0]["cpu_capacity"] / tasks[0]["cpu_count"]
    assert len(frags) >= len(rows)
    exported_cpu_ms = sum(f["cpu_usage"] * f["duration"] for f in frags) / mhz
    assert abs(exported_cpu_ms - inv["cpu_ms"]) <= max(1.0, 0.01 * inv["cpu_ms"])


def test_plain_server_bound_admin_stop_and_never_ready(run_env, redis_client, tmp_path, monkeypatch):
    """Any HTTP server by command (``httpserver``) stopped by its ``seconds`` bound; the demo service stopped by
    ``tracekit-admin stop-service``; a service that never becomes ready is stopped and recorded failed."""
    env = node_env(with_profiles(run_env, tmp_path, monkeypatch, {"neverready": {
        "app": "service", "cpu_units": 1, "argv": ["sleep", "30"], "port": 1, "ready_timeout_s": 0.5}}), "n1")
    keys = Keys()
    d = Daemons(env, tmp_path)
    try:
        d.scheduler()
        w = d.worker("n1", "--capacity-units", "2", "--exit-when-idle")
        (Path(env["TRACEKIT_INPUTS"]) / "hello.txt").write_text("hello\n")
        push(redis_client, task_payload("plain", "httpserver", params={"seconds": 2.5}),
             task_payload("never", "neverready"), task_payload("demo", "thumbsvc"))
        lg = run_script("loadgen.py", "--service", "plain", "--concurrency", "2", "--count", "30", "--path",
                        "/hello.txt", "--wait-ready", "30", env=env, timeout=60)
        assert lg.returncode == 0 and "30 requests, 0 errors" in lg.stdout, lg.stderr
        wait_for(lambda: redis_client.hget(keys.service("demo"), "state") == "ready", timeout=60)
        r = run_script("scheduler/admin.py", "stop-service", "demo", "--reason", "test", env=env)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: all(redis_client.hget(keys.service(t), "state") == "stopped"
                             for t in ("plain", "never", "demo")), timeout=30)
        assert w.wait(30) == 0
    finally:
        d.close()
    done, failed = redis_client.hgetall(keys.done), redis_client.hgetall(keys.failed)
    assert set(done) == {"plain", "demo"} and set(failed) == {"never"}, (done, failed)
    reasons = {s["trace_id"]: s["stop_reason"] for s in _lines(paths.services_path(env["RUN_ID"], "n1"))
               if s["state"] == "stopping"}
    assert reasons == {"plain": "ran its 2.5 s bound", "never": "not ready after 0.5 s",
                       "demo": "stop requested: test"}
    lines = _lines(paths.requests_dir(env["RUN_ID"]) / "plain.jsonl")
    assert len(lines) == 30 and all(q["status"] == 200 and q["resp_bytes"] == 6 for q in lines)
    assert all(q["ts_sched"] == q["ts_send"] for q in lines), "closed loop: sent when scheduled"
    execs = {e["trace_id"]: e for e in _lines(paths.events_path(env["RUN_ID"], "n1")) if e.get("kind") == "exec"}
    assert execs["plain"]["status"] == "ok" and execs["plain"]["signal"] == 15  # SIGTERM's death = its stop
    assert execs["never"]["status"] == "failed" and "SIGINT" in execs["never"]["error"]


def test_loadgen_split_over_processes_on_loopback(run_env, tmp_path):
    """``--procs 2``: the schedule split over two processes still yields each request exactly once, on one clock;
    a non-loopback --url without a service is refused."""
    port = free_port()
    svc = subprocess.Popen([sys.executable, "-m", "tracekit.node.demo_service", "--host", "127.0.0.1", "--port",
                            str(port)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: probe("127.0.0.1", port, "/ping"), timeout=30, step=0.05)
        out = tmp_path / "split.jsonl"
        r = run_script("loadgen.py", "--url", f"http://127.0.0.1:{port}", "--path", "/ping", "--rate", "400",
                       "--arrival", "poisson", "--seed", "3", "--count", "300", "--procs", "2", "--output", str(out),
                       env=run_env)
        assert r.returncode == 0, r.stderr
    finally:
        svc.terminate()
        svc.wait(10)
    lines = _lines(out)
    assert [q["request_id"] for q in lines] == [f"local-r{k}" for k in range(1, 301)]
    assert all(q["status"] == 200 for q in lines)
    sched = [q["ts_sched"] for q in lines]
    assert sched == sorted(sched)  # both processes on one time base, the Poisson schedule in order
    meta = json.loads(out.with_name("split.meta.json").read_text())
    assert meta["sent"] == 300 and meta["arrival"] == "poisson" and meta["cpu_s"] > 0
    bad = run_script("loadgen.py", "--url", "http://192.0.2.1:80", "--rate", "1", "--count", "1", env=run_env)
    assert bad.returncode == 2 and "not a loopback address" in bad.stderr


def test_worker_stop_stops_its_services(run_env, redis_client, tmp_path):
    """A worker asked to stop stops its services (they never end by themselves), completes them, and leaves."""
    env = node_env(run_env, "n1")
    keys = Keys()
    d = Daemons(env, tmp_path)
    try:
        d.scheduler()
        w = d.worker("n1", "--capacity-units", "1")
        push(redis_client, task_payload("svc", "thumbsvc"))
        wait_for(lambda: redis_client.hget(keys.service("svc"), "state") == "ready", timeout=60)
        w.send_signal(signal.SIGTERM)
        assert w.wait(30) == 0
    finally:
        d.close()
    assert "svc" in redis_client.hgetall(keys.done)
    assert redis_client.hget(keys.service("svc"), "stop_reason") == "worker stopping"
