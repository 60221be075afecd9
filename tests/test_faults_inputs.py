"""The bad-input corpus, end to end through the real worker and scheduler (real Redis, real ffmpeg).

Only what the other suites do not already cover (see docs/faults.md "Bad input" for the full map): bad media,
missing inputs, unicode and spaces in paths, injection through the worker, oversized payloads, malformed JSON put
straight into a node queue, Redis refused/down at start for every client script, a Redis outage while a task ends,
a truncated event log at parse, the wall clock stepping back during sampling, and a full disk under outputs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import TOOLS, Daemons, push, run_script, wait_for, with_profiles
from conftest import task_payload as task
from tracekit.cluster.redis_server import RedisServer, free_port
from tracekit.core import paths
from tracekit.core.keys import Keys
from tracekit.node import collector
from tracekit.trace import audit, cts

K = Keys()
PROFILES = {
    "tiny": {"app": "ffmpeg", "cpu_units": 1, "threads": 1, "scale": "160x120", "codec": "libx264",
             "preset": "ultrafast", "crf": 35},
    "small": {"app": "ffmpeg-synth", "cpu_units": 1, "threads": 1, "scale": "160x120", "codec": "libx264",
              "preset": "ultrafast", "crf": 51, "seconds": 0.1},
    # lossless 640x480 for 2 s: megabytes, far beyond a 64 KiB disk
    "big": {"app": "ffmpeg-synth", "cpu_units": 1, "threads": 1, "scale": "640x480", "codec": "libx264",
            "preset": "ultrafast", "crf": 0, "seconds": 2.0},
    "nap": {"app": "command", "cpu_units": 1, "argv": ["sleep", "{seconds}"], "seconds": 1.5},
}


@pytest.fixture
def env(run_env, tmp_path, monkeypatch):
    return with_profiles(run_env, tmp_path, monkeypatch, PROFILES)







def records(client) -> tuple[dict, dict]:
    done = {k: json.loads(v) for k, v in client.hgetall(K.done).items()}
    failed = {k: json.loads(v) for k, v in client.hgetall(K.failed).items()}
    return done, failed


def finished(client, tids) -> bool:
    done, failed = records(client)
    return all(t in done or t in failed for t in tids)


def node_events(env: dict, node: str) -> list[dict]:
    p = paths.events_path(env["RUN_ID"], node)
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []


def assert_node_idle(client, node: str) -> None:
    assert client.get(K.cap(node)) == client.get(K.cap_total(node))
    assert client.get(K.run_count(node)) == "0"
    assert client.llen(K.running(node)) == 0 and client.llen(K.queue(node)) == 0


def make_clip(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=160x120:rate=15:duration=0.5", "-c:v", "libx264", "-preset", "ultrafast",
                    str(path)], check=True, timeout=60)


def test_bad_media_paths_and_injection_through_the_worker(env, daemons, redis_client, tmp_path):
    inputs, outputs = Path(env["TRACEKIT_INPUTS"]), Path(env["TRACEKIT_OUTPUTS"])
    make_clip(inputs / "vidéo ü clip" / "été 1.mp4")
    (inputs / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + os.urandom(3000))
    (inputs / "empty.mp4").write_bytes(b"")
    (inputs / "notes.mp4").write_text("these are notes, not a video\n" * 20)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outputs / "link").symlink_to(outside)
    w = daemons.start("scheduler/worker.py", "--node-id", "f1", "--capacity-units", "2")
    wait_for(lambda: redis_client.zcard(K.nodes) == 1)
    daemons.start("scheduler/scheduler_central.py", "--reap-interval", "0.3")
    corpus = {
        "ok": task("ok", "tiny", input="vidéo ü clip/été 1.mp4", output="sortie ü/résultat 1.mp4"),
        "corrupt": task("corrupt", "tiny", input="corrupt.mp4", output="o/corrupt.mp4"),
        "empty": task("empty", "tiny", input="empty.mp4", output="o/empty.mp4"),
        "text": task("text", "tiny", input="notes.mp4", output="o/text.mp4"),
        "missing": task("missing", "tiny", input="nope.mp4", output="o/missing.mp4"),
        "abs_in": task("abs_in", "tiny", input="/etc/passwd", output="o/abs.mp4"),
        "out_up": task("out_up", "small", output="../../evil.mp4"),
        "out_abs": task("out_abs", "small", output=str(tmp_path / "evil2.mp4")),
        "out_link": task("out_link", "small", output="link/evil3.mp4"),
        "out_opt": task("out_opt", "small", output="-f"),
        "codec": task("codec", "small", output="o/codec.mp4", params={"codec": "x; rm -rf /"}),
        "preset": task("preset", "small", output="o/preset.mp4", params={"preset": "$(reboot)"}),
    }
    push(redis_client, *corpus.values())
    wait_for(lambda: finished(redis_client, corpus), timeout=60)
    done, failed = records(redis_client)
    assert set(done) == {"ok"}, failed
    final = outputs / "sortie ü" / "résultat 1.mp4"
    assert final.is_file() and final.stat().st_size > 0
    ev = {e["trace_id"]: e for e in node_events(env, "f1")}
    assert ev["ok"]["kind"] == "exec" and ev["ok"]["argv"][0].endswith("ffmpeg")
    assert str(inputs / "vidéo ü clip" / "été 1.mp4") in ev["ok"]["argv"]  # one argv element: no shell, no split
    for bad in ("corrupt", "empty", "text"):  # ffmpeg ran and failed: its own words are the reason
        assert failed[bad]["reason"].startswith("application failed: exit code"), failed[bad]
        assert ev[bad]["kind"] == "exec" and ev[bad]["status"] == "failed" and ev[bad]["error"]
    expect = {"missing": "does not exist", "abs_in": "escapes", "out_up": "escapes", "out_abs": "escapes",
              "out_link": "escapes", "out_opt": "'-'", "codec": "codec must be one of", "preset": "preset must be"}
    for tid, words in expect.items():
        assert words in failed[tid]["reason"], (tid, failed[tid])
        assert ev[tid]["kind"] == "reject" and words in ev[tid]["reason"]  # nothing ran
    # nothing written outside the outputs root, no temporary file left, the worker still serves
    assert not (tmp_path / "evil.mp4").exists() and not (tmp_path / "evil2.mp4").exists()
    assert list(outside.iterdir()) == []
    assert not [p for p in outputs.rglob(".*part*")]
    assert w.poll() is None
    assert_node_idle(redis_client, "f1")

    # a crash mid-write truncates the event log's last line: the parser counts it and goes on (no traceback)
    ev_path = paths.events_path(env["RUN_ID"], "f1")
    with open(ev_path, "a") as fh:
        fh.write('{"kind":"exec","trace_id":"half","attem')
    p = run_script("parse_cts.py", "--run-id", env["RUN_ID"], "--no-plots", "--quiet", env=env)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert "WARN Input lines" in p.stdout
    inv = [json.loads(x) for x in (paths.cts_dir(env["RUN_ID"]) / "invocations.jsonl").read_text().splitlines()]
    assert {i["trace_id"] for i in inv} == set(corpus)


def test_oversized_and_malformed_payloads_in_the_queues(env, daemons, redis_client):
    daemons.start("scheduler/worker.py", "--node-id", "m1", "--capacity-units", "2")
    wait_for(lambda: redis_client.zcard(K.nodes) == 1)
    daemons.start("scheduler/scheduler_central.py", "--reap-interval", "0.3")
    huge = task("huge", "small", output="o/huge.mp4", pad="x" * 70_000)
    push(redis_client, huge, b"\xc3\x28 not utf-8")
    # straight into the node queue, bypassing the scheduler (a buggy or hostile producer)
    redis_client.rpush(K.queue("m1"), "{not json", "[1, 2]", b"\xff\xfe\x00", json.dumps({"trace_id": 5}))
    wait_for(lambda: redis_client.hexists(K.failed, "huge") and redis_client.hlen(K.failed) >= 6, timeout=30)
    done, failed = records(redis_client)
    assert "exceeds" in failed["huge"]["reason"]
    bad = {k: v for k, v in failed.items() if k.startswith("bad-")}
    assert len(bad) == 5 and all(v["reason"] for v in bad.values())
    rejects = [e for e in node_events(env, "m1") if e["kind"] == "reject"]
    # the two pushed to q:pending are refused by the scheduler's payload gate before placement: only the four put
    # straight into q:m1 reach the worker
    assert len(rejects) == 4 and all(len(e["payload_excerpt"]) <= 200 for e in rejects)
    # capacity was never taken for the injected payloads, so it must not come back twice either
    assert_node_idle(redis_client, "m1")
    push(redis_client, task("after", "small", output="o/after.mp4"))
    wait_for(lambda: redis_client.hexists(K.done, "after"), timeout=30)
    assert all(p.poll() is None for p in daemons.procs)  # neither the worker nor the scheduler died
    assert (Path(env["TRACEKIT_OUTPUTS"]) / "o" / "after.mp4").is_file()


@pytest.mark.parametrize("script, args", [
    ("scheduler/dispatcher.py", ["--inputs", ".", "--mix", "small=1", "--total", "1"]),
    ("scheduler/status.py", []),
    ("scheduler/admin.py", ["clean"]),
    ("scheduler/worker.py", ["--node-id", "x1"]),
    ("scheduler/scheduler_central.py", []),
])
def test_redis_refused_or_down_at_start_is_one_line(env, script, args):
    bad_pw = dict(env, TRACEKIT_REDIS_PASSWORD="wrong-secret-123")
    down = dict(env, TRACEKIT_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    for e, words in ((bad_pw, "rejected the password"), (down, "cannot reach Redis")):
        p = run_script(script, *args, env=e, timeout=30)
        assert p.returncode == 2, (script, p.stdout, p.stderr)
        assert words in p.stderr and "Traceback" not in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "wrong-secret-123" not in p.stderr + p.stdout and env["TRACEKIT_REDIS_PASSWORD"] not in p.stderr


def test_redis_down_while_a_task_ends_the_completion_is_retried(env, tmp_path):
    srv = RedisServer(appendonly=True, workdir=tmp_path / "aof").start()
    e = dict(env, TRACEKIT_REDIS_URL=srv.url, TRACEKIT_REDIS_PASSWORD=srv.password)
    d = Daemons(e, tmp_path)
    try:
        # a long heartbeat TTL: this test is about the completion, not about the node being declared dead
        w = d.start("scheduler/worker.py", "--node-id", "o1", "--capacity-units", "1", "--heartbeat-ttl", "20")
        d.start("scheduler/scheduler_central.py", "--reap-interval", "0.3")
        c = srv.client()
        wait_for(lambda: c.zcard(K.nodes) == 1)
        push(c, task("r1", "nap", output="o/r1.out"))
        wait_for(lambda: c.llen(K.running("o1")) == 1)
        srv.stop()  # the task (1.5 s) ends while Redis is away
        time.sleep(2.5)
        srv.start()
        c = srv.client()
        rec = json.loads(wait_for(lambda: c.hget(K.done, "r1"), timeout=30))
        assert rec["attempt"] == 1 and rec["node_id"] == "o1"
        assert_node_idle(c, "o1")
        assert w.poll() is None
        log = paths.daemon_log_path(env["RUN_ID"], "o1", "worker")
        assert not log.exists() or srv.password not in log.read_text()
    finally:
        d.close()
        srv.stop()


def test_wall_clock_stepping_back_during_sampling(run_env, monkeypatch):
    """The real collector loop and Sampler on a real task, the wall clock stepped back 2 s mid-run at the
    collector's clock seam (``collector.wall_ms``): stepping the machine's real clock would disturb every other
    process. Sampling keeps its monotonic grid; the parser drops the ticks that went back, says so in the audit,
    and the task's rows still add up to its exact CPU total."""
    rid, node = run_env["RUN_ID"], "n1"
    env = dict(run_env, NODE_ID=node, TIME_SYNC="0", TRACE_ID="w1", ATTEMPT="1")
    pid_dir = paths.pid_dir(rid)
    pid_dir.mkdir(parents=True, exist_ok=True)
    calls = {"n": 0}
    real = collector.wall_ms

    def stepped() -> float:
        calls["n"] += 1
        return real() - (2000.0 if calls["n"] > 6 else 0.0)

    monkeypatch.setattr(collector, "wall_ms", stepped)
    argv = [sys.executable, str(TOOLS / "adapters" / "cmd_wrapper.py"), "--", sys.executable, "-c",
            "import time\nwhile time.process_time() < 0.8: pass"]  # CPU time, not wall: a loaded machine
    task_proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    sampler = collector.Sampler(node, pid_dir)
    out = paths.samples_path(rid, node)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    stats = {"ticks": 0, "samples": 0, "late_ticks": 0}
    done = threading.Event()
    threading.Thread(target=lambda: (task_proc.wait(), done.set()), daemon=True).start()
    t0 = time.monotonic()
    try:
        flag = collector.StopFlag()
        threading.Thread(target=lambda: (done.wait(), time.sleep(0.2), setattr(flag, "stop", True)),
                         daemon=True).start()
        collector.sample_loop(sampler, fd, 50, flag, stats=stats)
    finally:
        os.close(fd)
    elapsed = time.monotonic() - t0
    assert task_proc.returncode == 0
    ticks = [json.loads(x) for x in out.read_text().splitlines()]
    assert any(b["ts"] < a["ts"] for a, b in zip(ticks, ticks[1:])), "the injected step must show in the samples"
    assert all(b["mono"] > a["mono"] for a, b in zip(ticks, ticks[1:]))  # the grid stays monotonic
    assert stats["ticks"] >= 0.6 * elapsed / 0.05  # no stall after the step
    r = cts.parse_run(paths.run_dir(rid))
    assert r.non_monotonic_ticks.get(node, 0) >= 1
    temporal = audit.check_temporal(r)
    assert temporal.verdict == audit.FAIL and any("back in time" in d for d in temporal.details)
    cpu = audit.check_cpu(r)
    assert not any("do not add up" in d for d in cpu.details)  # rows still sum to the exact total
    inv = [i for i in r.invocations if i["trace_id"] == "w1"]
    assert len(inv) == 1 and inv[0]["status"] == "ok" and inv[0]["cpu_ms"] > 500


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs as the outputs root (skipped when this machine cannot mount one)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) here: cannot make a tiny tmpfs")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", f"tk-tiny-{uuid.uuid4().hex[:6]}",
                        str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip() or 'not root'})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_under_outputs_fails_the_task_with_the_reason(env, redis_client, tiny_disk, tmp_path):
    e = dict(env, TRACEKIT_OUTPUTS=str(tiny_disk))
    d = Daemons(e, tmp_path)
    try:
        w = d.start("scheduler/worker.py", "--node-id", "d1", "--capacity-units", "1", "--outputs", str(tiny_disk))
        wait_for(lambda: redis_client.zcard(K.nodes) == 1)
        d.start("scheduler/scheduler_central.py", "--reap-interval", "0.3")
        push(redis_client, task("big", "big", output="o/big.mp4"))
        wait_for(lambda: finished(redis_client, ["big"]), timeout=60)
        _, failed = records(redis_client)
        assert failed["big"]["reason"].startswith("application failed"), failed
        ev = {x["trace_id"]: x for x in node_events(e, "d1")}
        assert "No space left on device" in (ev["big"]["error"] or ""), ev["big"]
        assert not list(tiny_disk.rglob("*.mp4")), "the partial output is deleted, freeing the disk"
        # the disk is usable again: a small task succeeds, the worker never stopped
        push(redis_client, task("small", "small", output="o/small.mp4"))
        wait_for(lambda: finished(redis_client, ["small"]), timeout=60)
        done, _ = records(redis_client)
        assert "small" in done and (tiny_disk / "o" / "small.mp4").is_file()
        assert w.poll() is None
        assert_node_idle(redis_client, "d1")
    finally:
        d.close()
