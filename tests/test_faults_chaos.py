"""Chaos, short form: 60 tiny synthetic tasks on 3 emulated nodes through a worker SIGKILL + restart, a scheduler
SIGKILL + restart, a redis-server restart (AOF) and a cut longer than the heartbeat TTL, then heal. Nothing lost,
nothing recorded twice, the audit passes. Plus the harness's checks on broken states (they must be able to fail)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracekit import paths
from tracekit.chaos import FAULTS, ChaosConfig, check_cts, check_outputs, check_records, check_state, run_chaos
from tracekit.jsonl import read_jsonl
from tracekit.netns import namespaces_available


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    for name in ("LOGS", "INPUTS", "OUTPUTS"):
        (tmp_path / name.lower()).mkdir()
        monkeypatch.setenv(f"TRACEKIT_{name}", str(tmp_path / name.lower()))
    for k in ("TRACEKIT_REDIS_URL", "TRACEKIT_REDIS_PASSWORD", "TRACEKIT_REDIS_PASSWORD_FILE", "REDIS_URL"):
        monkeypatch.delenv(k, raising=False)
    return tmp_path


def test_short_chaos_run_loses_nothing_and_fences_late_results(dirs, capsys):
    rid = "chaos-test"
    # the cut first, while the queue is full, so the cut node surely has attempts in flight
    cfg = ChaosConfig(run_id=rid, nodes=3, total=60, seconds=0.3, gap_s=(0.3, 0.8), cut_s=4.5, duration_s=0,
                      faults=("cut", "worker", "scheduler", "redis"), plots=False, progress=False, timeout_s=80)
    code = run_chaos(cfg)
    out = capsys.readouterr().out
    assert code == 0, out[-4000:]
    report = json.loads(paths.chaos_report_path(rid).read_text())
    assert report["ok"] and all(c["ok"] for c in report["checks"])
    assert {f: report["faults"].get(f) for f in FAULTS} == dict.fromkeys(FAULTS, 1)
    faults = [r for _, r in read_jsonl(paths.chaos_log_path(rid))]
    assert all(isinstance(r["ts"], int) and r["ts"] > 1.6e12 for r in faults)
    cut = next(r for r in faults if r["fault"] == "cut" and r["phase"] == "cut")
    healed = next(r for r in faults if r["fault"] == "cut" and r["phase"] == "healed")
    if namespaces_available()[0]:
        assert cut["how"] == "veth down"
    assert healed["cut_s"] > 3.0 and healed["declared_dead_after_s"] is not None  # longer than the heartbeat TTL
    # the cut node's in-flight attempts re-ran elsewhere; their late results were fenced, not accepted
    assert cut["running"] >= 1
    inv = [i for _, i in read_jsonl(paths.cts_dir(rid) / "invocations.jsonl")]
    fenced = [i for i in inv if i["status"] == "fenced"]
    assert any(i["node_id"] == cut["node"] for i in fenced), fenced
    ok = [i for i in inv if i["status"] == "ok"]
    assert len(ok) == len({i["trace_id"] for i in ok}) == 60
    assert "chaos: PASS" in out and "recovery times" in out


# --- the checks themselves catch broken states --------------------------------------------------------------------
def test_state_check_catches_leaked_capacity_and_leftovers():
    good = {"pending": 0, "slots": 0, "nodes": {"n1": {"cap": "2", "cap_total": "2", "run_count": "0", "queued": 0,
                                                       "running": 0, "registered": True}}}
    assert check_state(good).ok
    bad = json.loads(json.dumps(good))
    bad["nodes"]["n1"].update(cap="1", run_count="1", running=1)
    bad["slots"] = 1
    c = check_state(bad)
    assert not c.ok and len(c.problems) == 4


def test_records_and_cts_checks_catch_loss_and_duplicates():
    done = {"t1": {"attempt": 2, "node_id": "n1"}}
    failed = {"t2": {"reason": ""}}
    c = check_records(done, failed, ["t1", "t2", "t3"], 3)
    assert not c.ok and any("lost" in p for p in c.problems) and any("without a reason" in p for p in c.problems)
    inv = [{"trace_id": "t1", "attempt": 1, "node_id": "n2", "status": "ok"},
           {"trace_id": "t1", "attempt": 2, "node_id": "n1", "status": "ok"}]
    assert "2 ok invocations" in check_cts(inv, done, {}).problems[0]
    inv[0]["status"] = "fenced"
    assert check_cts(inv, done, {}).ok


def test_output_check_catches_stray_parts_and_double_renames(dirs):
    rid = "r1"
    out = paths.outputs_root() / rid
    out.mkdir(parents=True)
    (out / "t1.mp4").write_bytes(b"x" * 10)
    inv = [{"trace_id": "t1", "attempt": 2, "status": "ok", "output": str(out / "t1.mp4"), "bytes_out": 10}]
    done = {"t1": {"attempt": 2, "node_id": "n1"}}
    assert check_outputs(rid, ["n1"], inv, done).ok
    (out / ".t1.t1.a1.part.mp4").write_bytes(b"y")
    log = paths.daemon_log_path(rid, "n1", "worker")
    log.parent.mkdir(parents=True)
    log.write_text("done t1 attempt 1 (exit 0)\ndone t1 attempt 2 (exit 0)\n")
    c = check_outputs(rid, ["n1"], inv, done)
    assert not c.ok and any("stray" in p for p in c.problems) and any("more than one" in p for p in c.problems)
    inv[0]["bytes_out"] = 11
    assert any("bytes" in p for p in check_outputs(rid, ["n1"], inv, done).problems)
    assert Path(log).exists()
