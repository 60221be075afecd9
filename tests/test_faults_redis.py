"""Redis error replies, lost replies, reserved names, duplicates of a node, draining and other daemon faults.

Each test starts its own daemons on a private redis-server when it changes the server's configuration (maxmemory,
min-replicas-to-write, ACL), so the session server of the other tests is never degraded. Tasks are `sleep`s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from conftest import TOOLS, Daemons, push, run_script, wait_for, with_profiles
from conftest import task_payload as task
from tracekit.cluster.redis_server import RedisServer
from tracekit.control.redis_retry import RedisFatal, Retrier, backoff_delays, classify
from tracekit.core import paths
from tracekit.core.keys import Keys

K = Keys()
PROFILES = {
    "nap": {"app": "command", "cpu_units": 1, "argv": ["sleep", "{seconds}"], "seconds": 0.3},
    "long": {"app": "command", "cpu_units": 1, "argv": ["sleep", "{seconds}"], "seconds": 3.0},
    "write": {"app": "command", "cpu_units": 1, "argv": ["cp", "/etc/hostname", "{output}"]},
}


@pytest.fixture
def env(run_env, tmp_path, monkeypatch):
    return with_profiles(run_env, tmp_path, monkeypatch, PROFILES)






def finished(client, tids) -> bool:
    return all(client.hexists(K.done, t) or client.hexists(K.failed, t) for t in tids)


def assert_idle(client, node: str) -> None:
    assert client.get(K.cap(node)) == client.get(K.cap_total(node)), node
    assert client.get(K.run_count(node)) == "0"
    assert client.llen(K.running(node)) == 0 and client.llen(K.queue(node)) == 0


# ---- classification (pure) ----


def test_error_classification_and_backoff():
    R = redis.ResponseError
    assert classify(redis.ConnectionError("x"))[0] == "transient"
    assert classify(redis.BusyLoadingError("x"))[0] == "transient"
    for exc in (redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
                redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
                R("MISCONF Redis is configured to save RDB snapshots"), R("NOREPLICAS Not enough good replicas"),
                redis.exceptions.NoPermissionError("this user has no permissions to run the 'evalsha' command"),
                R("BUSY Redis is busy running a script"), R("ERR something new")):
        assert classify(exc)[0] == "retry", exc
    assert classify(R("WRONGTYPE Operation against a key holding the wrong kind of value"))[0] == "fatal"
    assert classify(R("ERR unknown command 'BLMOVE'"))[0] == "fatal"
    import random

    waits = [w for w, _ in zip(backoff_delays(rng=random.Random(1)), range(12))]
    assert 0.1 <= waits[0] <= 0.2 and max(waits) <= 5.0 and waits[-1] >= 2.5
    assert sum(1 for _ in waits) == 12


def test_retrier_retries_error_replies_and_stops_on_fatal():
    import logging

    calls = []

    def op():
        calls.append(1)
        if len(calls) < 3:
            raise redis.exceptions.OutOfMemoryError("command not allowed")
        return "ok"

    r = Retrier(logging.getLogger("t"))
    t0 = time.monotonic()
    assert r(op, "x") == "ok" and len(calls) == 3 and time.monotonic() - t0 >= 0.15

    def wrong():
        raise redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    with pytest.raises(RedisFatal, match="WRONGTYPE"):
        r(wrong, "x")


# ---- acceptance: error replies while tasks flow ----


def _calls(client) -> int:
    stats = client.info("commandstats")
    return sum(int(v.get("calls", 0)) + int(v.get("rejected_calls", 0)) + int(v.get("failed_calls", 0))
               for v in stats.values())


def test_injected_redis_error_replies_kill_no_daemon_and_lose_no_task(env, tmp_path):
    """maxmemory 1 (OOM), min-replicas-to-write 1 (NOREPLICAS on every write) and an ACL denying EVALSHA, EVAL and
    BLMOVE (NOPERM), 3 s each, while 40 tasks run on two workers: no daemon dies, each makes at most a few
    calls per second while Redis refuses, status shows the degraded daemons, every task completes after."""
    srv = RedisServer(workdir=tmp_path / "redis").start()
    e = dict(env, TRACEKIT_REDIS_URL=srv.url, TRACEKIT_REDIS_PASSWORD=srv.password)
    d = Daemons(e, tmp_path)
    admin = srv.client()
    rates: dict[str, float] = {}
    try:
        ws = [d.worker("e1", "--capacity-units", "2"), d.worker("e2", "--capacity-units", "2")]
        sched = d.scheduler()
        wait_for(lambda: admin.zcard(K.nodes) == 2)
        tids = [f"e{i:03d}" for i in range(40)]
        push(admin, *[task(t) for t in tids])
        wait_for(lambda: admin.hlen(K.done) >= 4)
        phases = [
            ("oom", lambda: admin.config_set("maxmemory", 1), lambda: admin.config_set("maxmemory", 0)),
            ("noreplicas", lambda: admin.config_set("min-replicas-to-write", 1),
             lambda: admin.config_set("min-replicas-to-write", 0)),
            ("noperm", lambda: admin.execute_command("ACL", "SETUSER", "default", "-evalsha", "-eval", "-blmove"),
             lambda: admin.execute_command("ACL", "SETUSER", "default", "+@all")),
        ]
        status_lines = []
        for name, on, off in phases:
            c0 = _calls(admin)
            t0 = time.monotonic()
            on()
            time.sleep(2.0)
            if name == "noperm":  # writes work: the daemons' health records are there
                p = run_script("scheduler/status.py", env=e, timeout=30)
                status_lines += [ln for ln in p.stdout.splitlines() if ln.startswith(("health:", "redis:"))]
            if name == "oom":
                p = run_script("scheduler/status.py", env=e, timeout=30)
                status_lines += [ln for ln in p.stdout.splitlines() if ln.startswith("redis:")]
            time.sleep(1.0)
            off()
            rates[name] = (_calls(admin) - c0) / (time.monotonic() - t0) / 3  # 3 daemons
            time.sleep(1.0)
        wait_for(lambda: finished(admin, tids), timeout=60)
        assert all(p.poll() is None for p in ws + [sched]), [d.output(p)[-2000:] for p in ws + [sched]
                                                              if p.poll() is not None]
        done = admin.hgetall(K.done)
        assert len(done) == 40 and admin.hlen(K.failed) == 0
        for n in ("e1", "e2"):
            wait_for(lambda n=n: admin.get(K.run_count(n)) == "0")
            assert_idle(admin, n)
        assert max(rates.values()) < 100, rates
        assert any(ln.startswith("health: worker:") for ln in status_lines), status_lines
        assert any("OOM" in ln for ln in status_lines), status_lines
        wait_for(lambda: admin.hlen(K.health) == 0, timeout=10)  # every daemon reported itself healthy again
        print("redis calls per second per daemon while refused:", {k: round(v, 1) for k, v in rates.items()})
    finally:
        with_admin_restored(admin)
        d.close()
        srv.stop()


def with_admin_restored(admin) -> None:
    try:
        admin.config_set("maxmemory", 0)
        admin.config_set("min-replicas-to-write", 0)
        admin.execute_command("ACL", "SETUSER", "default", "+@all")
    except redis.RedisError:
        pass


def test_completion_refused_by_redis_is_retried_not_lost(env, tmp_path):
    """Item 4: the task ends while Redis refuses every write (NOREPLICAS, like MISCONF/READONLY): the completion
    waits with backoff and is accepted afterwards; the capacity comes back, the worker lives on."""
    srv = RedisServer(workdir=tmp_path / "redis").start()
    e = dict(env, TRACEKIT_REDIS_URL=srv.url, TRACEKIT_REDIS_PASSWORD=srv.password)
    d = Daemons(e, tmp_path)
    c = srv.client()
    try:
        w = d.worker("c1", "--capacity-units", "1", "--heartbeat-ttl", "20")
        d.scheduler()
        wait_for(lambda: c.zcard(K.nodes) == 1)
        push(c, task("c001", seconds=1.0))
        wait_for(lambda: c.llen(K.running("c1")) == 1)
        c.config_set("min-replicas-to-write", 1)
        time.sleep(2.5)  # the task ends meanwhile
        assert not c.hexists(K.done, "c001")
        c.config_set("min-replicas-to-write", 0)
        rec = json.loads(wait_for(lambda: c.hget(K.done, "c001"), timeout=20))
        assert rec["attempt"] == 1
        assert_idle(c, "c1")
        assert w.poll() is None
    finally:
        with_admin_restored(c)
        d.close()
        srv.stop()


# ---- lost replies, reserved names, one worker per node, draining ----


def test_a_take_whose_reply_was_lost_is_reconciled_and_run(env, daemons, redis_client):
    """A BLMOVE that Redis executed but whose reply never arrived leaves the payload in running:<node> with its
    capacity reserved: the live worker finds it (reconciliation) and runs it, so nothing stays orphaned."""
    w = daemons.worker("r1", "--capacity-units", "2")
    wait_for(lambda: redis_client.zcard(K.nodes) == 1)
    raw = task("lost1", node="r1", ts_dispatch=1)
    redis_client.rpush(K.running("r1"), raw)  # as PLACE + BLMOVE did, the reply lost on the way
    redis_client.decr(K.cap("r1"))
    redis_client.incr(K.run_count("r1"))
    redis_client.hset(K.trace_ids, "lost1", "p1@r1")  # PLACE's mark: the capacity it reserved comes back
    rec = json.loads(wait_for(lambda: redis_client.hget(K.done, "lost1"), timeout=15))
    assert rec["node_id"] == "r1" and rec["attempt"] == 1
    assert_idle(redis_client, "r1")
    assert w.poll() is None


@pytest.mark.parametrize("node", ["pending", "controller", "pids", "placements.jsonl", "CTS"])
def test_reserved_node_ids_are_refused(env, node):
    p = run_script("scheduler/worker.py", "--node-id", node, env=env, timeout=30)
    assert p.returncode == 2 and "reserved" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_two_workers_with_one_node_id_never_both_run(env, daemons, redis_client, tmp_path):
    """A second worker with the same NODE_ID but another logs root (so another pidfile) is refused by the owner
    token in Redis; the live worker's task is untouched (before: the second one's orphan sweep killed it)."""
    daemons.worker("same", "--capacity-units", "1")
    daemons.scheduler()
    wait_for(lambda: redis_client.zcard(K.nodes) == 1)
    push(redis_client, task("s1", "long", seconds=2.0))
    wait_for(lambda: redis_client.llen(K.running("same")) == 1)
    other = dict(env, TRACEKIT_LOGS=str(tmp_path / "other-logs"))
    p = run_script("scheduler/worker.py", "--node-id", "same", env=other, timeout=30)
    assert p.returncode == 2 and "already running" in p.stderr and "Traceback" not in p.stderr, p.stderr
    rec = json.loads(wait_for(lambda: redis_client.hget(K.done, "s1"), timeout=15))
    assert rec["status"] == "ok"


def test_output_path_that_is_a_directory_fails_the_task(env, daemons, redis_client):
    out_root = Path(env["TRACEKIT_OUTPUTS"])
    (out_root / "o" / "d.out").mkdir(parents=True)
    daemons.worker("o1", "--capacity-units", "1")
    daemons.scheduler()
    wait_for(lambda: redis_client.zcard(K.nodes) == 1)
    push(redis_client, task("dir1", "write", output="o/d.out"), task("file1", "write", output="o/f.out"))
    wait_for(lambda: finished(redis_client, ["dir1", "file1"]))
    rec = json.loads(redis_client.hget(K.failed, "dir1") or "{}")
    assert "is a directory" in rec.get("reason", ""), rec
    assert not redis_client.hexists(K.done, "dir1")
    assert redis_client.hexists(K.done, "file1") and (out_root / "o" / "f.out").is_file()
    assert not list((out_root / "o").glob(".*part*"))


def test_log_drain_keeps_lines_whose_write_failed(redis_client, run_env):
    from tracekit.control.central import LogDrain

    rid = run_env["RUN_ID"]
    redis_client.xadd(K.controller_log, {"f": "p", "r": '{"trace_id":"x1"}'})
    target = paths.placements_path(rid)
    drain = LogDrain(redis_client, K, rid)
    target.mkdir(parents=True)  # the write fails (IsADirectoryError)
    with pytest.raises(OSError):
        drain.drain()
    target.rmdir()
    drain.drain()
    assert [json.loads(x)["trace_id"] for x in target.read_text().splitlines()] == ["x1"]
    assert redis_client.xlen(K.controller_log) == 0


def test_a_stopping_worker_gets_no_new_placement(env, daemons, redis_client):
    """First SIGTERM: the node is marked draining; the scheduler places new tasks elsewhere at once (before: they
    sat in its queue until its running task ended)."""
    d1 = daemons.worker("d1", "--capacity-units", "2")
    wait_for(lambda: redis_client.zcard(K.nodes) == 1)
    daemons.worker("d2", "--capacity-units", "2")
    wait_for(lambda: redis_client.zcard(K.nodes) == 2)
    daemons.scheduler()
    push(redis_client, task("l1", "long"))
    wait_for(lambda: redis_client.llen(K.running("d1")) == 1)
    d1.send_signal(signal.SIGTERM)
    wait_for(lambda: redis_client.hget(K.node_info("d1"), "draining") == "1", timeout=5)
    p = run_script("scheduler/status.py", "--json", env=env, timeout=30)
    rows = {r["node"]: r for r in json.loads(p.stdout)["nodes"]}
    assert rows["d1"]["draining"] is True and rows["d2"]["draining"] is False
    t0 = time.monotonic()
    push(redis_client, task("n1"))
    rec = json.loads(wait_for(lambda: redis_client.hget(K.done, "n1"), timeout=10))
    assert rec["node_id"] == "d2" and time.monotonic() - t0 < 2.0
    assert d1.wait(15) == 0
    assert json.loads(redis_client.hget(K.done, "l1"))["node_id"] == "d1"


def test_scheduler_lock_is_refreshed_whatever_the_reap_interval(env, daemons, redis_client):
    daemons.start("scheduler/scheduler_central.py", "--reap-interval", "8")
    wait_for(lambda: redis_client.get(K.scheduler_lock))
    deadline = time.monotonic() + 7.0
    while time.monotonic() < deadline:  # TTL 5 s: it must be refreshed without any wake-up
        assert redis_client.get(K.scheduler_lock), "the scheduler lock expired"
        time.sleep(0.25)


def test_orphan_sweep_finds_adapters_of_another_checkout(run_env, tmp_path, redis_client):
    """An adapter started from another checkout (a redeploy to a new folder) is still this node's task: the
    sweep recognises it by its environment, not by its path."""
    import shutil

    import psutil

    from tracekit.control.worker import Worker, WorkerConfig

    other = tmp_path / "checkout2" / "tools" / "adapters"
    other.mkdir(parents=True)
    shutil.copy(TOOLS / "adapters" / "cmd_wrapper.py", other / "cmd_wrapper.py")
    rid = run_env["RUN_ID"]
    env = dict(run_env, NODE_ID="sw1", TRACE_ID="sw-t1", ATTEMPT="1", PROFILE="x", CPU_UNITS="1",
               TC_EVENT_LOG=str(paths.events_path(rid, "sw1")), TC_BINDING="none")
    paths.node_dir(rid, "sw1").mkdir(parents=True, exist_ok=True)
    orphan = subprocess.Popen([sys.executable, str(other / "cmd_wrapper.py"), "--", "sleep", "30"], env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        time.sleep(0.5)
        w = Worker(redis_client, K, WorkerConfig(run_id=rid, node="sw1", outputs=tmp_path, capacity_units=1))
        assert w.stop_orphans(timeout=5) == 1
        assert orphan.wait(5) is not None
    finally:
        if orphan.poll() is None:
            os.killpg(orphan.pid, signal.SIGKILL)
        orphan.wait()
    assert not psutil.pid_exists(orphan.pid) or psutil.Process(orphan.pid).status() == psutil.STATUS_ZOMBIE


# ---- no daemon thread dies silently ----


def place_directly(client, node: str, raw: str) -> None:
    """Put ``raw`` in q:<node> as PLACE would: with its mark in trace_ids (REGISTER keeps only such payloads)."""
    t = json.loads(raw)
    client.hset(K.trace_ids, t["trace_id"], f"p{t.get('attempt', 1)}@{node}")
    client.rpush(K.queue(node), raw)


def _worker(redis_client, run_env, tmp_path, node: str):
    from tracekit.control.worker import Worker, WorkerConfig

    return Worker(redis_client, K, WorkerConfig(run_id=run_env["RUN_ID"], node=node, outputs=tmp_path,
                                                capacity_units=1, exit_when_idle=True))


def test_a_task_thread_that_dies_stops_the_worker_loudly(env, redis_client, tmp_path, caplog):
    from tracekit.core.errors import StepFailed

    w = _worker(redis_client, env, tmp_path, "th1")

    def broken(*a, **k):
        raise RuntimeError("injected")
    w._complete = broken
    place_directly(redis_client, "th1", task("th-t1", seconds=0.1))
    with pytest.raises(StepFailed, match="thread died: RuntimeError: injected"):
        w.run()
    assert any("thread task-th-t1 died" in r.getMessage() for r in caplog.records)


def test_the_heartbeat_thread_survives_an_injected_error(env, redis_client, tmp_path, caplog):
    w = _worker(redis_client, env, tmp_path, "th2")
    real = w.scripts.beat
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected")
        return real(*a, **k)
    w.scripts.beat = flaky
    place_directly(redis_client, "th2", task("th-t2", "long", seconds=2.5))
    assert w.run() == 0
    assert len(calls) >= 2 and redis_client.hexists(K.done, "th-t2")
    assert any("heartbeat: RuntimeError: injected" in r.getMessage() for r in caplog.records)


def test_the_scheduler_loop_survives_error_replies_and_exits_loudly_on_a_bug(redis_client, run_env, monkeypatch):
    from tracekit.control import central

    calls = []

    class Flaky(central.Scripts):
        def __init__(self, client, keys):
            super().__init__(client, keys)
            real = self.place.begin  # the scheduler sends PLACE and waits for its reply later

            def begin(*a, **k):
                calls.append(1)
                if len(calls) <= 3:
                    raise redis.exceptions.ReadOnlyError("You can't write against a read only replica.")
                if len(calls) == 5:
                    raise RuntimeError("injected bug")
                return real(*a, **k)
            self.place.begin = begin
    monkeypatch.setattr(central, "Scripts", Flaky)
    cfg = central.SchedulerConfig(run_id=run_env["RUN_ID"], reap_interval=0.2)
    with pytest.raises(RuntimeError, match="injected bug"):
        central.run(redis_client, K, cfg)
    assert len(calls) == 5 and redis_client.get(K.scheduler_lock) is None


# ---- secrets: URL passwords of any characters ----


PASSWORDS = ["s3cr/t+x", "a#bcdef", "q?rstuv", "p@ssw0rd", "x:y:zzz", "Zm9v/YmFy+Kz?#@:end=="]


@pytest.mark.parametrize("pw", PASSWORDS)
def test_url_passwords_of_any_characters_are_never_printed(pw, env):
    from tracekit.core.redis_conn import _url_password, redact, strip_password

    for url in (f"redis://:{pw}@127.0.0.1:6379/0", f"rediss://default:{pw}@h.example:6380/1?ssl_ca_certs=/ca.pem",
                f"redis://127.0.0.1:6379/0?password={pw.replace('+', '%2B')}"):
        assert _url_password(url) == pw
        assert pw not in redact(url) and pw not in strip_password(url)
        assert "***" in redact(url)
    from tracekit.cluster.redis_server import free_port

    e = {k: v for k, v in env.items() if k not in ("TRACEKIT_REDIS_PASSWORD", "TRACEKIT_REDIS_URL")}
    p = run_script("scheduler/status.py", "--redis", f"redis://:{pw}@127.0.0.1:{free_port()}/0", env=e, timeout=30)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert pw not in p.stdout + p.stderr and len(p.stderr.strip().splitlines()) == 1
