"""Real raw logs: the ffmpeg adapter + the /proc collector on two emulated nodes, then parse, audit, export."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from conftest import TOOLS
from test_trace_parse import check_cts_invariants
from tracekit.core import paths
from tracekit.trace import audit
from tracekit.trace.export import opendc

WRAPPER = TOOLS / "adapters" / "ffmpeg_wrapper.py"
COLLECTOR = TOOLS / "collect_sys.py"
FFMPEG = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
          "testsrc2=size=320x240:rate=25:duration=3", "-c:v", "libx264", "-preset", "medium", "-threads", "1",
          "-f", "null", "-"]

pytestmark = [
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed"),
    pytest.mark.skipif(not WRAPPER.exists() or not COLLECTOR.exists(),
                       reason="tools/adapters/ffmpeg_wrapper.py or tools/collect_sys.py not written yet"),
]


def _start_collector(env: dict) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(COLLECTOR), "run"], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    meta = paths.node_meta_path(env["RUN_ID"], env["NODE_ID"])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # the collector is ready once node.json carries the clock offset
        if meta.exists():
            try:
                if "clock" in json.loads(meta.read_text()):
                    return proc
            except ValueError:
                pass
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    out, err = proc.communicate()
    raise AssertionError(f"collector did not start: {err[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("collector did not stop on SIGINT") from None


def _adapter(env: dict, trace_id: str, node: str) -> subprocess.Popen:
    now = int(time.time() * 1000)
    e = dict(env, NODE_ID=node, PROC_PID_DIR=str(paths.pid_dir(env["RUN_ID"])), TRACE_ID=trace_id, ATTEMPT="1",
             PROFILE="synth1c", CPU_UNITS="1", TS_ENQUEUE=str(now - 20), TS_DISPATCH=str(now - 10), TC_BINDING="none")
    return subprocess.Popen([sys.executable, str(WRAPPER), "--", *FFMPEG], env=e, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_real_adapter_and_collector_logs_parse_into_consistent_cts(run_env, tmp_path):
    nodes = ("n1", "n2")
    collectors = {}
    try:
        for n in nodes:
            # whitelist mode (the recommended setting): only sentinel processes, i.e. traced tasks, are sampled
            collectors[n] = _start_collector(dict(run_env, NODE_ID=n, TIME_SYNC="0", PROC_INTERVAL_MS="50",
                                                  PROC_PID_DIR=str(paths.pid_dir(run_env["RUN_ID"]))))
        # n1: two tasks one after the other; n2: one task at the same time (the PIDs of the nodes interleave)
        a = _adapter(run_env, "real-a", "n1")
        b = _adapter(run_env, "real-b", "n2")
        assert a.wait(60) == 0, a.stderr.read()
        c = _adapter(run_env, "real-c", "n1")
        assert b.wait(60) == 0, b.stderr.read()
        assert c.wait(60) == 0, c.stderr.read()
    finally:
        for p in collectors.values():
            _stop(p)
    run_dir = paths.run_dir(run_env["RUN_ID"])
    r, checks, report = audit.parse_and_audit(run_dir, with_plots=False)
    invs, rows = check_cts_invariants(r.out_dir)
    assert sorted(i["trace_id"] for i in invs) == ["real-a", "real-b", "real-c"]
    assert all(i["status"] == "ok" and i["cpu_ms"] > 50 for i in invs), invs
    assert {i["node_id"] for i in invs} == set(nodes)
    by = {c.name: c for c in checks}
    # on a real run every task is sampled (50 ms interval, ~0.4 s encodes) and no sample lacks a task
    assert by["Cross-reference"].verdict == audit.PASS, by["Cross-reference"].details
    assert by["Temporal consistency"].verdict != audit.FAIL, by["Temporal consistency"].details
    assert by["CPU accounting"].verdict == audit.PASS, by["CPU accounting"].details
    assert r.bad.count == 0
    for inv in invs:
        mine = [x for x in rows if x["trace_id"] == inv["trace_id"]]
        assert len(mine) >= 3, "a ~0.4 s task sampled every 50 ms has several intervals"
    nodes_meta = json.loads((r.out_dir / "nodes.json").read_text())
    mhz = None if all(n.get("cpu_freq_mhz") for n in nodes_meta) else 1000.0
    s = opendc.export(run_dir, tmp_path / "od", cpu_freq_mhz=mhz)
    t = pq.read_table(tmp_path / "od" / "tasks.parquet").to_pandas()
    f = pq.read_table(tmp_path / "od" / "fragments.parquet").to_pandas()
    # the slot's lead (placement -> start) and trail (end -> release) fragments, when longer than 0 ms
    edges = sum((i.get("ts_dispatch") is not None and i["ts_dispatch"] < i["ts_start"])
                + (i.get("ts_release") is not None and i["ts_release"] > i["ts_end"]) for i in invs)
    assert s.tasks == 3 and len(f) == len(rows) + edges
    assert (f.groupby("id")["duration"].sum().to_numpy() == t["duration"].to_numpy()).all()
    assert report.exists()


def test_tasks_shorter_than_one_interval_are_sampled_at_exit_and_pass_the_audit(run_env):
    """`true` ends long before the first tick: the adapter holds it for the collector; the audit counts that sample."""
    env = dict(run_env, NODE_ID="n1", TIME_SYNC="0", PROC_INTERVAL_MS="500",
               PROC_PID_DIR=str(paths.pid_dir(run_env["RUN_ID"])))
    coll = _start_collector(env)
    try:
        for i in range(3):
            e = dict(env, TRACE_ID=f"short-{i}", TC_BINDING="none")
            p = subprocess.run([sys.executable, str(TOOLS / "adapters" / "cmd_wrapper.py"), "--", "true"], env=e,
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
            assert p.returncode == 0, p.stderr
    finally:
        _stop(coll)
    r, checks, _ = audit.parse_and_audit(paths.run_dir(run_env["RUN_ID"]), with_plots=False)
    invs, rows = check_cts_invariants(r.out_dir)
    assert len(invs) == 3 and len(rows) == 3  # one row each, carrying the exact total
    xref = next(c for c in checks if c.name == "Cross-reference")
    assert xref.verdict == audit.PASS and "3 only at exit" in xref.summary, (xref.summary, xref.details)
