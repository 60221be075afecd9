"""Chaos, short form: 60 tiny synthetic tasks on 3 emulated nodes through a worker SIGKILL + restart, a scheduler
SIGKILL + restart, a redis-server restart (AOF) and a cut longer than the heartbeat TTL, then heal. Nothing lost,
nothing recorded twice, the audit passes. Plus the harness's checks on broken states (they must be able to fail)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracekit.cluster.chaos import FAULTS, ChaosConfig, check_cts, check_outputs, check_records, check_state, run_chaos
from tracekit.cluster.netns import namespaces_available
from tracekit.core import paths
from tracekit.core.jsonl import read_jsonl


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
                      faults=("cut", "worker", "scheduler", "redis", "rediserr", "payload"), plots=False,
                      progress=False,
                      timeout_s=80)
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


# --- fencing after a heal, without over-commit ------------------------------------------------------------------
def test_healed_node_stops_its_doomed_attempt_before_taking_new_work(run_env, tmp_path, redis_client):
    """A node frozen past its heartbeat TTL (like a cut) is declared dead and its task re-queued as attempt 2.
    When it comes back, its still-running attempt 1 can never be accepted: the worker stops it *before*
    re-registering, so attempt 2 (placed on the same, only node) never runs beside it: no over-commit, and
    attempt 1 is recorded as a separate, fenced attempt."""
    import signal
    import subprocess
    import sys

    from conftest import TOOLS
    from conftest import wait_for as wait
    from tracekit.core.keys import Keys

    k = Keys()
    prof = tmp_path / "profiles.json"
    prof.write_text(json.dumps({"long": {"app": "command", "cpu_units": 1, "argv": ["sleep", "{seconds}"],
                                         "seconds": 8.0}}))
    env = dict(run_env, TRACEKIT_PROFILES=str(prof))
    rid = env["RUN_ID"]

    def start(script, *args):
        return subprocess.Popen([sys.executable, str(TOOLS / script), *args], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    procs = [start("scheduler/worker.py", "--node-id", "h1", "--capacity-units", "1")]
    try:
        wait(lambda: redis_client.zcard(k.nodes) == 1)
        procs.append(start("scheduler/scheduler_central.py", "--reap-interval", "0.3"))
        redis_client.rpush(k.pending, json.dumps({"trace_id": "L1", "profile": "long", "cpu_units": 1,
                                                  "ts_enqueue": 1, "attempt": 1, "output": "o/L1.out"}))
        redis_client.lpush(k.wake, "1")
        wait(lambda: redis_client.llen(k.running("h1")) == 1)
        # and its adapter is up (the task's PID sentinel is there): a worker frozen between taking a task and
        # starting its adapter is another race (an adapter stopped before it installs its handlers records nothing)
        pids = Path(env.get("PROC_PID_DIR") or paths.run_dir(rid) / "pids")
        wait(lambda: pids.is_dir() and any(pids.iterdir()))
        procs[0].send_signal(signal.SIGSTOP)  # no heartbeat; its task keeps running
        try:
            wait(lambda: redis_client.zcard(k.nodes) == 0, timeout=10)
        finally:
            procs[0].send_signal(signal.SIGCONT)
        rec = json.loads(wait(lambda: redis_client.hget(k.done, "L1"), timeout=40))
        assert rec["attempt"] == 2 and rec["node_id"] == "h1"
    finally:
        for p in procs:
            p.kill()
            p.wait()

    def both_execs() -> dict | None:
        """Attempt -> exec event, once both attempts wrote theirs (each adapter appends its own line as it
        exits: on a loaded machine that can trail the done record)."""
        found = {e["attempt"]: e for _, e in read_jsonl(paths.events_path(rid, "h1")) if e["kind"] == "exec"}
        return found if {1, 2} <= set(found) else None

    ex = wait(both_execs, timeout=20)
    ev = [e for _, e in read_jsonl(paths.events_path(rid, "h1"))]
    assert ex[1]["status"] == "failed" and ex[1]["ts_end"] - ex[1]["ts_start"] < 7000  # stopped, not run out
    assert [(e["trace_id"], e["attempt"]) for e in ev if e["kind"] == "fenced"] == [("L1", 1)]
    assert ex[2]["ts_start"] >= ex[1]["ts_end"]  # never both at once on a 1-unit node


def test_restarted_worker_stops_the_adapters_its_killed_predecessor_left(run_env, tmp_path, redis_client):
    """SIGKILL a worker mid-task (its adapter lives on, as after an OOM kill), start a new one by hand (no
    supervisor to clean up): the new worker stops the orphan before it registers, so attempt 2 never runs beside
    it; the parser records attempt 1 as a fenced (superseded) execution."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from conftest import TOOLS
    from conftest import wait_for as wait
    from tracekit.core.keys import Keys

    k = Keys()
    prof = tmp_path / "profiles.json"
    prof.write_text(json.dumps({"long": {"app": "command", "cpu_units": 1, "argv": ["sleep", "{seconds}"],
                                         "seconds": 6.0}}))
    # the subprocess path (TRACEKIT_LAUNCHER=0): there an adapter can outlive its worker; forked by the warm
    # launcher it dies with it (test_control_scripts: test_forced_subprocess_path_and_nothing_outlives_...)
    env = dict(run_env, TRACEKIT_PROFILES=str(prof), TRACEKIT_LAUNCHER="0")
    rid = env["RUN_ID"]

    def start(script, *args):
        return subprocess.Popen([sys.executable, str(TOOLS / script), *args], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    procs = [start("scheduler/worker.py", "--node-id", "o1", "--capacity-units", "1")]
    try:
        wait(lambda: redis_client.zcard(k.nodes) == 1)
        procs.append(start("scheduler/scheduler_central.py", "--reap-interval", "0.3"))
        redis_client.rpush(k.pending, json.dumps({"trace_id": "O1", "profile": "long", "cpu_units": 1,
                                                  "ts_enqueue": 1, "attempt": 1, "output": "o/O1.out"}))
        redis_client.lpush(k.wake, "1")
        wait(lambda: redis_client.llen(k.running("o1")) == 1)
        time.sleep(0.3)
        orphans = [c for c in psutil.Process(procs[0].pid).children() if "cmd_wrapper.py" in " ".join(c.cmdline())]
        assert len(orphans) == 1
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        assert orphans[0].is_running()  # the adapter outlived its worker
        procs.append(start("scheduler/worker.py", "--node-id", "o1", "--capacity-units", "1"))
        wait(lambda: not orphans[0].is_running() or orphans[0].status() == psutil.STATUS_ZOMBIE, timeout=10)
        rec = json.loads(wait(lambda: redis_client.hget(k.done, "O1"), timeout=30))
        assert rec["attempt"] == 2
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    ev = [e for _, e in read_jsonl(paths.events_path(rid, "o1"))]
    ex = {e["attempt"]: e for e in ev if e["kind"] == "exec"}
    assert ex[1]["status"] == "failed" and ex[1]["ts_end"] - ex[1]["ts_start"] < 5000  # stopped early
    assert ex[2]["ts_start"] >= ex[1]["ts_end"]
    from tracekit.trace import cts

    r = cts.parse_run(paths.run_dir(rid))
    status = {i["attempt"]: i["status"] for i in r.invocations if i["trace_id"] == "O1"}
    assert status == {1: "fenced", 2: "ok"}
