"""``make demo SCENARIO=service`` end to end: the demo service on an emulated node (its own network namespace when
possible), driven from the controller side over the emulated network by the load generator; CTS, audit, export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pyarrow.parquet as pq

from tracekit.cluster import netns
from tracekit.cluster.emulation import TOOLS

RATE, SECONDS = 20, 3


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_demo_service_scenario_over_the_emulated_network(tmp_path):
    rid = f"svc{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEKIT_REDIS") and k != "REDIS_URL"}
    env.update(TRACEKIT_LOGS=str(tmp_path / "logs"), TRACEKIT_INPUTS=str(tmp_path / "inputs"),
               TRACEKIT_OUTPUTS=str(tmp_path / "outputs"), TRACEKIT_RUN_ID_FILE=str(tmp_path / "run_id.env"),
               PYTHONPATH=str(TOOLS), NODES="1", SCENARIO="service", RATE=str(RATE), DURATION=str(SECONDS),
               TIMEOUT="120")
    (tmp_path / "inputs").mkdir()
    proc = subprocess.run([sys.executable, str(TOOLS / "demo.py"), "--run-id", rid, "--no-setup"], env=env,
                          capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    run = tmp_path / "logs" / rid
    emulated = netns.namespaces_available()[0]
    states = _lines(run / "node1" / "services.jsonl")
    host = states[0]["host"]
    if emulated:  # the load generator crossed the emulated network to the node's own address
        assert "cluster: network namespaces on bridge" in proc.stdout and not host.startswith("127.")
    assert [s["state"] for s in states] == ["starting", "ready", "stopping", "stopped"]
    inv = _lines(run / "CTS" / "invocations.jsonl")
    assert len(inv) == 1 and inv[0]["status"] == "ok" and inv[0]["profile"] == "thumbsvc"
    reqs = _lines(run / "CTS" / "requests.jsonl")
    assert len(reqs) == RATE * SECONDS and all(q["status"] == 200 for q in reqs)
    assert {(q["node_id"], q["pid"], q["starttime"]) for q in reqs} == {("node1", inv[0]["pid"], inv[0]["starttime"])}
    assert all(q["latency_ms"] >= q["server_ms"] - 0.5 for q in reqs)
    report = (run / "CTS" / "audit_report.md").read_text()
    assert "| Requests | PASS |" in report and "| CPU accounting | PASS |" in report
    tasks = pq.read_table(run / "opendc" / "tasks.parquet").to_pylist()
    assert [t["name"] for t in tasks] == ["t000001"] and tasks[0]["duration"] >= inv[0]["ts_end"] - inv[0]["ts_start"]
