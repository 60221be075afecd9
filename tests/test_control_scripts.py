"""Control plane scripts as real subprocesses: dispatcher modes, worker + scheduler runs, SIGKILL recovery."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from conftest import TOOLS, run_script, wait_for, with_profiles
from tracekit.control import lua
from tracekit.core import paths
from tracekit.core.jsonl import read_jsonl
from tracekit.core.keys import Keys
from tracekit.core.paths import dispatch_path, events_path, placements_path, worker_meta_path

K = Keys()
PROFILES = {
    "nap": {"app": "command", "cpu_units": 1, "argv": ["sleep", "{seconds}"], "seconds": 0.2},
    "nap2": {"app": "command", "cpu_units": 2, "argv": ["sleep", "{seconds}"], "seconds": 0.2},
    "long": {"app": "command", "cpu_units": 1, "argv": ["sleep", "{seconds}"], "seconds": 2.5},
    "quick": {"app": "command", "cpu_units": 1, "argv": ["true"]},
}


@pytest.fixture
def env(run_env, tmp_path, monkeypatch):
    return with_profiles(run_env, tmp_path, monkeypatch, PROFILES)


class Procs:
    """Background scripts, always killed at the end of a test."""

    def __init__(self, env):
        self.env, self.procs = env, []

    def start(self, script, *args, **extra):
        p = subprocess.Popen([sys.executable, str(TOOLS / script), *args], env=dict(self.env, **extra),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def worker(self, node, *args, **extra):
        return self.start("scheduler/worker.py", "--node-id", node, *args, **extra)

    def scheduler(self, *args):
        return self.start("scheduler/scheduler_central.py", "--reap-interval", "0.3", *args)

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stdout.close()
            p.stderr.close()


@pytest.fixture
def procs(env):
    p = Procs(env)
    yield p
    p.close()



def dispatch(env, *args, timeout=60):
    return run_script("scheduler/dispatcher.py", "--inputs", env["TRACEKIT_INPUTS"], "--no-progress", *args,
                      env=env, timeout=timeout)


def lines(path):
    return [o for _, o in read_jsonl(path)] if Path(path).exists() else []


@pytest.mark.parametrize("script", ["dispatcher.py", "scheduler_central.py", "worker.py", "status.py", "admin.py"])
def test_help(script):
    p = run_script(f"scheduler/{script}", "--help")
    assert p.returncode == 0 and "--" in p.stdout


def test_redis_unreachable_or_wrong_password_is_one_line(env, redis_server):
    p = run_script("scheduler/status.py", "--redis", "redis://127.0.0.1:1/0", env=env)
    assert p.returncode == 2 and "cannot reach Redis" in p.stderr and "Traceback" not in p.stderr
    bad = dict(env, TRACEKIT_REDIS_PASSWORD="wrong-secret")
    for script in ("scheduler/scheduler_central.py", "scheduler/worker.py"):
        p = run_script(script, env=bad, timeout=20)
        assert p.returncode == 2 and "rejected the password" in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1 and "wrong-secret" not in p.stderr


def test_end_to_end_run_with_wait(env, procs, redis_client):
    rid = env["RUN_ID"]
    w1 = procs.worker("n1", "--capacity-units", "2", "--exit-when-idle")
    w2 = procs.worker("n2", "--capacity-units", "2", "--parallel", "2", "--exit-when-idle")
    wait_for(lambda: redis_client.zcard(K.nodes) == 2)
    procs.scheduler()
    p = dispatch(env, "--mix", "nap=2,nap2=1,synth1c=1", "--total", "8", "--seed", "0", "--wait")
    assert p.returncode == 0, p.stderr
    assert "done 8 / failed 0" in p.stdout and "makespan" in p.stdout
    disp = lines(dispatch_path(rid))
    placed = lines(placements_path(rid))
    assert [d["trace_id"] for d in disp] == [x["trace_id"] for x in placed]  # strict FIFO
    assert {x["node"] for x in placed} == {"n1", "n2"}
    assert all(d["ts_enqueue"] <= x["ts"] for d, x in zip(disp, placed))
    synth = [d for d in disp if d["profile"] == "synth1c"]
    assert synth and all((Path(env["TRACEKIT_OUTPUTS"]) / d["output"]).stat().st_size > 0 for d in synth)
    # exclusive binding: attempts that overlap in time on one worker never share a core
    for node in ("n1", "n2"):
        ex = [e for e in lines(events_path(rid, node)) if e["kind"] == "exec"]
        assert ex and all(e["binding"] == "exclusive" and e["cpuset"] for e in ex)
        for a in ex:
            for b in ex:
                if a is not b and a["ts_start"] < b["ts_end"] and b["ts_start"] < a["ts_end"]:
                    assert not set(a["cpuset"].split(",")) & set(b["cpuset"].split(","))
        # forked by the warm launcher, every launch stage recorded in order (node clock)
        for e in ex:
            assert e["launch_path"] == "launcher"
            stages = [e[k] for k in ("ts_taken", "ts_checked", "ts_bound", "ts_forked", "ts_sentinel", "ts_start")]
            assert stages == sorted(stages), e
    assert w1.wait(20) == 0 and w2.wait(20) == 0
    assert redis_client.zcard(K.nodes) == 0  # they left the pool cleanly
    meta = json.loads(worker_meta_path(rid, "n2").read_text())
    assert meta["capacity"] == 2 and meta["parallel"] == 2 and "offset_ms" in meta["clock"]


def test_same_seed_same_sequence(env):
    seqs = []
    for prefix in ("s1:", "s2:", "s3:"):
        seed = "0" if prefix != "s3:" else "1"
        p = dispatch(env, "--key-prefix", prefix, "--mix", "nap=1,nap2=1,quick=1", "--total", "12", "--seed", seed)
        assert p.returncode == 0, p.stderr
        seqs.append([d["profile"] for d in lines(dispatch_path(env["RUN_ID"]))][-12:])
    assert seqs[0] == seqs[1] and seqs[0] != seqs[2]
    assert sorted(seqs[0]) == sorted(["nap"] * 4 + ["nap2"] * 4 + ["quick"] * 4)


def test_pulse_mode(env, redis_client):
    p = dispatch(env, "--mix", "nap=1", "--total", "7", "--pending", "--pulse-size", "3", "--pulse-interval", "0.3",
                 "--pulse-spacing", "0")
    assert p.returncode == 0, p.stderr
    groups = {}
    for d in lines(dispatch_path(env["RUN_ID"])):
        groups.setdefault(d["ts_enqueue"], []).append(d["trace_id"])
    assert [len(g) for g in groups.values()] == [3, 3, 1]
    ts = sorted(groups)
    assert ts[1] - ts[0] >= 250 and redis_client.llen(K.pending) == 7


def _consume(redis_client, stop, observed, to_node=None):
    """Plays the scheduler (and the worker, with to_node): records the backlog it saw before each step."""
    while not stop.is_set():
        if to_node:
            observed.append(redis_client.llen(K.pending) + redis_client.llen(K.queue(to_node)))
            redis_client.lpop(K.queue(to_node))
            redis_client.lmove(K.pending, K.queue(to_node), "LEFT", "RIGHT")
        else:
            observed.append(redis_client.llen(K.pending))
            redis_client.lpop(K.pending)
        time.sleep(0.08)


@pytest.mark.parametrize("mode", ["fifo", "drip"])
def test_fifo_and_drip_keep_the_backlog_bounded(env, redis_client, mode):
    stop, observed = threading.Event(), []
    node = "dn" if mode == "drip" else None
    if node:
        redis_client.zadd(K.nodes, {node: 0})
    th = threading.Thread(target=_consume, args=(redis_client, stop, observed, node))
    th.start()
    try:
        args = (["--pending", "--pending-mode", "fifo", "--pending-max", "2"] if mode == "fifo" else
                ["--drip", "--backlog-limit", "1"])
        p = dispatch(env, "--mix", "nap=1", "--total", "6", "--dribble-interval", "0.03", *args)
    finally:
        stop.set()
        th.join()
    assert p.returncode == 0, p.stderr
    assert len(lines(dispatch_path(env["RUN_ID"]))) == 6  # nothing skipped
    assert max(observed) <= (2 if mode == "fifo" else 1)


def test_forced_subprocess_path_and_nothing_outlives_a_killed_worker(env, procs, redis_client):
    rid = env["RUN_ID"]
    w = procs.worker("old", "--capacity-units", "1", "--exit-when-idle", TRACEKIT_LAUNCHER="0")
    wait_for(lambda: redis_client.zcard(K.nodes) == 1)
    procs.scheduler()
    assert dispatch(env, "--mix", "nap=1", "--total", "2", "--seed", "1", "--wait").returncode == 0
    assert w.wait(20) == 0
    ex = [e for e in lines(events_path(rid, "old")) if e["kind"] == "exec"]
    assert len(ex) == 2 and {e["launch_path"] for e in ex} == {"subprocess"}
    assert all(e["ts_taken"] <= e["ts_forked"] <= e["ts_sentinel"] <= e["ts_start"] for e in ex)
    # the launcher path: SIGKILL the worker mid-task; launcher, adapter and application all go
    w = procs.worker("warm", "--capacity-units", "1")
    wait_for(lambda: redis_client.zcard(K.nodes) == 1)
    assert dispatch(env, "--mix", "long=1", "--total", "1", "--seed", "2").returncode == 0
    sent = wait_for(lambda: [json.loads(f.read_text()) for f in paths.pid_dir(rid).glob("[0-9]*")], timeout=20)
    app = sent[0]["pid"]
    family = [q.pid for q in psutil.Process(w.pid).children(recursive=True)]
    assert app in family and len(family) >= 3  # launcher -> adapter -> application
    os.kill(w.pid, signal.SIGKILL)
    def running(x):
        try:
            return psutil.Process(x).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    wait_for(lambda: not any(map(running, family)), timeout=15)


def test_worker_sigkill_mid_task_is_recovered(env, procs, redis_client):
    rid = env["RUN_ID"]
    w = procs.worker("victim", "--capacity-units", "1", "--parallel", "1")
    wait_for(lambda: redis_client.zcard(K.nodes) == 1)
    procs.scheduler("--max-attempts", "3")
    p = dispatch(env, "--mix", "long=1", "--total", "1", "--seed", "1")
    assert p.returncode == 0
    wait_for(lambda: redis_client.llen(K.running("victim")) == 1)
    os.kill(w.pid, signal.SIGKILL)
    t_kill = time.monotonic()
    head = wait_for(lambda: redis_client.lindex(K.pending, 0), timeout=10)
    assert time.monotonic() - t_kill < 10
    t = json.loads(head)
    assert t["attempt"] == 2 and "node" not in t
    assert not redis_client.exists(K.cap("victim"), K.cap_total("victim"), K.run_count("victim"))
    assert redis_client.llen(K.slots) == 0 and redis_client.zcard(K.nodes) == 0
    # a restarted worker (no --reset-capacity) picks it up and finishes attempt 2
    procs.worker("victim", "--capacity-units", "1", "--parallel", "1")
    rec = wait_for(lambda: redis_client.hget(K.done, t["trace_id"]), timeout=20)
    assert json.loads(rec)["attempt"] == 2
    attempts = [x["attempt"] for x in lines(placements_path(rid))]
    assert attempts == [1, 2]


def test_scheduler_sigkill_loop_places_every_task_exactly_once(env, procs, redis_client):
    rid = env["RUN_ID"]
    for n in ("k1", "k2"):
        procs.worker(n, "--capacity-units", "4")
    wait_for(lambda: redis_client.zcard(K.nodes) == 2)
    p = dispatch(env, "--mix", "quick=1", "--total", "200", "--seed", "3")
    assert p.returncode == 0, p.stderr
    rng = random.Random(5)
    kills = 0
    deadline = time.monotonic() + 90
    while redis_client.hlen(K.done) < 200 and time.monotonic() < deadline:
        s = procs.scheduler("--batch", "4")
        time.sleep(rng.uniform(0.05, 0.4))
        s.send_signal(signal.SIGKILL)
        s.wait()
        kills += 1
    if redis_client.hlen(K.done) < 200:  # let a last scheduler finish the run
        procs.scheduler()
        wait_for(lambda: redis_client.hlen(K.done) == 200, timeout=60)
    else:
        procs.scheduler("--exit-when-idle").wait(20)  # drains the controller log left by the last kill
    assert kills >= 3
    placed = [x["trace_id"] for x in lines(placements_path(rid))]
    wait_for(lambda: len(lines(placements_path(rid))) == 200, timeout=10)
    placed = [x["trace_id"] for x in lines(placements_path(rid))]
    assert len(placed) == 200 and len(set(placed)) == 200
    assert placed == [d["trace_id"] for d in lines(dispatch_path(rid))]  # FIFO order kept across restarts
    assert redis_client.hlen(K.failed) == 0
    assert all(json.loads(v)["attempt"] == 1 for v in redis_client.hvals(K.done))
    assert redis_client.mget(K.cap("k1"), K.cap("k2"), K.run_count("k1"), K.run_count("k2")) == ["4", "4", "0", "0"]


def test_malformed_payloads_are_rejected_and_worker_keeps_running(env, procs, redis_client):
    rid = env["RUN_ID"]
    w = procs.worker("m1", "--capacity-units", "2")
    wait_for(lambda: redis_client.zcard(K.nodes) == 1)
    procs.scheduler()
    bad = [
        {"trace_id": "b1", "profile": "nope", "cpu_units": 1, "ts_enqueue": 1, "attempt": 1},
        {"trace_id": "b2", "profile": "light1c", "cpu_units": 1, "ts_enqueue": 1, "attempt": 1,
         "input": "../../etc/passwd", "output": "x.mp4"},
        {"trace_id": "b3", "profile": "nap", "cpu_units": 1, "ts_enqueue": 1, "attempt": 1, "params": {"x": "-vf"}},
    ]
    redis_client.rpush(K.pending, *[json.dumps(b) for b in bad], "{broken", json.dumps(
        {"trace_id": "g1", "profile": "nap", "cpu_units": 1, "ts_enqueue": 1, "attempt": 1}))
    redis_client.lpush(K.wake, "1")
    wait_for(lambda: redis_client.hexists(K.done, "g1"), timeout=20)
    assert w.poll() is None
    failed = {k: json.loads(v) for k, v in redis_client.hgetall(K.failed).items()}
    assert {"b1", "b2", "b3"} <= set(failed) and len(failed) == 4
    assert "unknown profile" in failed["b1"]["reason"] and "escapes" in failed["b2"]["reason"]
    rejects = [e for e in lines(events_path(rid, "m1")) if e["kind"] == "reject"]
    assert {e["trace_id"] for e in rejects} == {"b1", "b2", "b3"} and all(e["reason"] for e in rejects)
    assert redis_client.get(K.cap("m1")) == "2" and redis_client.llen(K.running("m1")) == 0


def test_allocation_ratio_slots_status_and_graceful_stop(env, procs, redis_client):
    rid = env["RUN_ID"]
    w = procs.worker("r1", "--allocation-ratio", "1.5", "--parallel", "2", "--cpu-binding", "shared")
    wait_for(lambda: redis_client.get(K.cap_total("r1")))
    assert redis_client.get(K.cap_total("r1")) == str(int(1.5 * os.cpu_count()))
    assert redis_client.lrange(K.slots, 0, -1) == ["r1", "r1"]
    # a head task too big for any node: status says why it waits
    redis_client.rpush(K.pending, json.dumps({"trace_id": "big", "profile": "nap", "cpu_units": 64,
                                              "ts_enqueue": 1, "attempt": 1}))
    st = run_script("scheduler/status.py", env=env)
    assert st.returncode == 0 and "big" in st.stdout and "cap_total" in st.stdout and "r1" in st.stdout
    assert "needs 64 units" in st.stdout
    redis_client.delete(K.pending)
    procs.scheduler()
    assert dispatch(env, "--mix", "long=1", "--total", "1").returncode == 0
    wait_for(lambda: redis_client.llen(K.running("r1")) == 1)
    w.send_signal(signal.SIGTERM)  # waits for the running task, then leaves
    assert w.wait(20) == 0
    assert redis_client.hlen(K.done) == 1 and redis_client.zcard(K.nodes) == 0
    ex = [e for e in lines(events_path(rid, "r1")) if e["kind"] == "exec"]
    assert ex and ex[0]["binding"] == "shared"
    assert not (Path(env["TRACEKIT_LOGS"]) / rid / "r1" / "worker.pid").exists()


def test_admin_clean_deletes_the_run_keys(env, redis_client):
    redis_client.rpush(K.pending, "x")
    redis_client.set(K.cap("n9"), 3)
    redis_client.zadd(K.nodes, {"n9": 0})
    redis_client.set("other:key", 1)
    p = run_script("scheduler/admin.py", "clean", env=env)
    assert p.returncode == 0, p.stderr
    assert not redis_client.exists(K.pending, K.cap("n9"), K.nodes) and redis_client.exists("other:key")


def test_admin_clean_deletes_the_runs_function_libraries_only(env, redis_client):
    # Redis keeps a loaded library (in its RDB too) after the run's keys are gone: clean removes this prefix's
    for prefix in (K.prefix, "other:"):
        redis_client.function_load(lua.library(prefix, lua.weigher_lua())[0], replace=True)
    mine, other = (lua.library(prefix, lua.weigher_lua())[0].split("\n", 1)[0].split("=", 1)[1]
                   for prefix in (K.prefix, "other:"))
    p = run_script("scheduler/admin.py", "clean", env=env)
    assert p.returncode == 0, p.stderr
    assert re.search(r"and [1-9]\d* function librar(y|ies) ", p.stdout), p.stdout
    left = [dict(zip(lib[::2], lib[1::2]))["library_name"] for lib in redis_client.function_list()]
    assert mine not in left and other in left  # (the module's earlier tests may have loaded others of theirs)


def test_partitioned_worker_heals_and_its_late_completion_is_fenced(env, procs, redis_client):
    rid = env["RUN_ID"]
    w = procs.worker("p1", "--capacity-units", "1")
    wait_for(lambda: redis_client.zcard(K.nodes) == 1)
    procs.scheduler()
    assert dispatch(env, "--mix", "long=1", "--total", "1").returncode == 0
    wait_for(lambda: redis_client.llen(K.running("p1")) == 1)
    w.send_signal(signal.SIGSTOP)  # frozen like a cut-off node: no heartbeat, its task keeps running
    try:
        wait_for(lambda: redis_client.zcard(K.nodes) == 0, timeout=10)  # recovered by the scheduler
        assert json.loads(redis_client.lindex(K.pending, 0))["attempt"] == 2
    finally:
        w.send_signal(signal.SIGCONT)
    # it heals: re-registers, gets attempt 2; the late completion of attempt 1 is refused
    rec = wait_for(lambda: redis_client.hget(K.done, "t000001"), timeout=20)
    assert json.loads(rec)["attempt"] == 2
    ev = lines(events_path(rid, "p1"))
    fenced = [e for e in ev if e["kind"] == "fenced"]
    assert [(e["trace_id"], e["attempt"]) for e in fenced] == [("t000001", 1)]
    out = Path(env["TRACEKIT_OUTPUTS"])
    assert not list(out.rglob(".*.part*"))  # no half-written or orphaned tmp output left behind


def test_second_signal_is_forwarded_to_running_tasks(env, procs, redis_client):
    w = procs.worker("g1", "--capacity-units", "1")
    wait_for(lambda: redis_client.zcard(K.nodes) == 1)
    procs.scheduler()
    assert dispatch(env, "--mix", "long=1", "--total", "1").returncode == 0
    wait_for(lambda: redis_client.llen(K.running("g1")) == 1)
    w.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert w.poll() is None  # still waiting for its task
    w.send_signal(signal.SIGTERM)
    assert w.wait(10) == 0
    rec = json.loads(redis_client.hget(K.failed, "t000001"))
    assert "signal" in rec["reason"] and rec["attempt"] == 1


def test_daemons_survive_a_redis_restart(env, tmp_path):
    from tracekit.cluster.redis_server import RedisServer

    srv = RedisServer(appendonly=True, workdir=tmp_path / "redis-aof").start()
    env = dict(env, TRACEKIT_REDIS_URL=srv.url, TRACEKIT_REDIS_PASSWORD=srv.password)
    ps = Procs(env)
    try:
        ps.worker("o1", "--capacity-units", "2")
        ps.scheduler()
        client = srv.client()
        wait_for(lambda: client.zcard(K.nodes) == 1)
        disp = ps.start("scheduler/dispatcher.py", "--inputs", env["TRACEKIT_INPUTS"], "--no-progress",
                        "--mix", "nap=1", "--total", "12", "--wait")
        wait_for(lambda: client.hlen(K.done) >= 2)
        srv.stop()
        time.sleep(1.0)
        srv.start()
        out, err = disp.communicate(timeout=60)
        assert disp.returncode == 0, err
        assert "done 12 / failed 0" in out and "Redis unavailable" in err
        assert srv.client().hlen(K.done) == 12
    finally:
        ps.close()
        srv.stop()


def test_dispatcher_rejects_a_bad_mix_before_touching_redis(tmp_path):
    from tracekit.cluster.redis_server import free_port

    env = dict(os.environ, RUN_ID="mixcheck", PYTHONPATH=str(TOOLS),
               TRACEKIT_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    p = run_script("scheduler/dispatcher.py", "--inputs", str(tmp_path), "--mix", "nope=1", env=env)
    assert p.returncode == 2 and "unknown profile 'nope'" in p.stderr and "Traceback" not in p.stderr
