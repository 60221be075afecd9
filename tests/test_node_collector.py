"""The collector on the real machine: sentinels, PID identity, match mode, node.json, start/stop, secrets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_script
from test_node_helpers import (
    FFMPEG_Q,
    alive,
    event_of,
    node_env,
    run_adapter,
    sample_rows,
    start_collector,
    stop_collector,
    wait_for,
)
from tracekit.cluster.redis_server import free_port
from tracekit.core import paths
from tracekit.core.schema import NODE_META_FIELDS, SAMPLE_MIN_VALUES, SAMPLE_PROC_FIELDS, SAMPLE_TICK_FIELDS
from tracekit.node import procfs, sentinel
from tracekit.node.collector import Sampler, collector_pidfile


@pytest.fixture
def sleeper():
    p = subprocess.Popen(["sleep", "30"], stdin=subprocess.DEVNULL)
    yield p
    p.kill()
    p.wait()


def _write(pid_dir: Path, pid: int, starttime: int, node: str = "n1", trace: str = "t1") -> None:
    sentinel.write_sentinel(pid_dir, {"trace_id": trace, "attempt": 1, "node_id": node, "pid": pid,
                                      "starttime": starttime, "cgroup": None, "ts_created": 0})


def test_reused_pid_never_merges_two_processes(tmp_path, sleeper):
    """A sentinel whose starttime is not the live process's is another process: never sampled as it."""
    st = procfs.starttime(sleeper.pid)
    s = Sampler("n1", tmp_path)
    _write(tmp_path, sleeper.pid, st - 1, trace="old")  # the PID's previous owner
    assert s.tick() == []
    _write(tmp_path, sleeper.pid, st, trace="new")  # replaced file (new inode): the current owner
    rows = s.tick()
    assert [(r[0], r[1], r[2]) for r in rows] == [(sleeper.pid, st, "new")]
    assert len(rows[0]) == len(SAMPLE_PROC_FIELDS)
    assert sentinel.is_acked(tmp_path, sleeper.pid, st) and not sentinel.is_acked(tmp_path, sleeper.pid, st - 1)


def test_other_nodes_sentinels_are_ignored_and_never_deleted(tmp_path, sleeper):
    st = procfs.starttime(sleeper.pid)
    _write(tmp_path, sleeper.pid, st, node="n2")
    s = Sampler("n1", tmp_path)
    assert s.tick() == [] and s.tick() == []
    assert (tmp_path / str(sleeper.pid)).exists()
    assert not sentinel.ack_path(tmp_path, sleeper.pid).exists()


def test_children_are_followed(tmp_path):
    """CPU of an application's child processes counts in the application's row."""
    p = subprocess.Popen(["sh", "-c", "i=0; while [ $i -lt 5000000 ]; do i=$((i+1)); done & wait"],
                         stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        _write(tmp_path, p.pid, procfs.starttime(p.pid))
        s = Sampler("n1", tmp_path)
        kids = wait_for(lambda: procfs.children(p.pid))
        assert kids
        wait_for(lambda: (procfs.read_stat(kids[0]) or procfs.read_stat(p.pid)).utime > 5, timeout=10)
        # children are looked for at least once every kid_every ticks (then every tick)
        found = False
        for _ in range(s.kid_every):
            rows = s.tick()
            own = procfs.read_stat(p.pid)
            assert rows and own is not None
            found = found or rows[0][3] > own.cpu_ticks
        assert found, "the busy child's ticks are included"
        assert rows[0][3] > procfs.read_stat(p.pid).cpu_ticks, "once found, children are followed every tick"
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # the busy child too
        p.wait()


def test_collector_daemon_node_json_clock_and_no_secret(run_env):
    env = node_env(run_env, STAGE="cloud", PROC_INTERVAL_MS="100")
    pid = start_collector(env)
    r = run_script("collect_sys.py", "start", env=env)
    assert r.returncode == 2 and "already runs" in r.stderr and r.stderr.count("\n") == 1
    assert env["TRACEKIT_REDIS_PASSWORD"].encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    run_adapter(env, ["sleep", "0.3"], TRACE_ID="d1")
    stop_collector(env)
    assert not alive(pid)
    meta = json.loads(paths.node_meta_path(env["RUN_ID"], "n1").read_text())
    assert set(NODE_META_FIELDS) <= set(meta)
    assert meta["stage"] == "cloud" and meta["cpu_cores"] == os.cpu_count() and meta["clk_tck"] == procfs.CLK_TCK
    assert isinstance(meta["clock"]["offset_ms"], float) and meta["clock"]["rtt_ms"] >= 0
    assert isinstance(meta["clock_stop"]["offset_ms"], float), "measured again at stop (drift)"
    # same host, same clock: the controller offset is tiny and the same at both ends
    off0, off1 = meta["clock"]["offset_ms"], meta["clock_stop"]["offset_ms"]
    assert abs(off0) < 50 and abs(off1 - off0) < 50
    c = meta["collector"]
    assert c["interval_ms"] == 100 and c["ticks"] >= 3 and c["samples"] >= 1 and c["cpu_s"] >= 0
    assert c["stopped_ms"] > c["started_ms"]
    log = (paths.node_dir(env["RUN_ID"], "n1") / "collector.log").read_text()
    assert "stopped: ticks=" in log and "cpu_s=" in log
    for f in paths.run_dir(env["RUN_ID"]).rglob("*"):
        if f.is_file():
            assert env["TRACEKIT_REDIS_PASSWORD"] not in f.read_text(errors="replace"), f
    ticks = [json.loads(x) for x in paths.samples_path(env["RUN_ID"], "n1").read_text().splitlines()]
    assert ticks and all(list(t) == list(SAMPLE_TICK_FIELDS) for t in ticks)
    assert sample_rows(env, "d1")


def test_collector_runs_when_redis_is_unreachable(run_env):
    env = node_env(run_env, TRACEKIT_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", PROC_INTERVAL_MS="100")
    start_collector(env)
    try:
        run_adapter(env, ["sleep", "0.2"], TRACE_ID="u1")
    finally:
        stop_collector(env)
    meta = json.loads(paths.node_meta_path(env["RUN_ID"], "n1").read_text())
    assert meta["clock"]["offset_ms"] is None and "cannot reach Redis" in meta["clock"]["error"]
    assert sample_rows(env, "u1")


def test_match_mode_samples_unwrapped_ffmpeg(run_env, tmp_path):
    env = node_env(run_env, PROC_INTERVAL_MS="100")
    env.pop("PROC_PID_DIR", None)
    start_collector(env)
    try:
        p = subprocess.Popen(FFMPEG_Q + ["-re", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=30:duration=0.6",
                                         "-f", "null", "-"], stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        st = wait_for(lambda: procfs.starttime(p.pid))
        assert p.wait(timeout=30) == 0
    finally:
        stop_collector(env)
    # other ffmpeg processes of this host may be sampled too: ours is known by (pid, starttime)
    rows = [row for _, _, row in sample_rows(env, pid=p.pid) if row[1] == st]
    assert rows, "the ffmpeg process was found by name"
    assert all(r[2] is None for r in rows), "no sentinel, no trace id"


def test_make_stop_collect_stop_all_leaves_no_process(run_env):
    envs = [node_env(run_env, n, PROC_INTERVAL_MS="200") for n in ("n1", "n2")]
    pids = [start_collector(e) for e in envs]
    assert all(alive(p) for p in pids)
    r = subprocess.run(["make", "-s", "-C", str(REPO), "stop-collect", f"RUN_ID={envs[0]['RUN_ID']}"],
                       env=dict(envs[0], STOP_ALL="1"), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "n1" in r.stdout and "n2" in r.stdout
    assert wait_for(lambda: not any(alive(p) for p in pids), timeout=5)
    assert not any(collector_pidfile(envs[0]["RUN_ID"], n).exists() for n in ("n1", "n2"))
    # no collector of this run anywhere
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                environ = (d / "environ").read_bytes()
            except OSError:
                continue
            cmd = (d / "cmdline").read_bytes() if (d / "cmdline").exists() else b""
            assert not (b"collect_sys" in cmd and f"RUN_ID={envs[0]['RUN_ID']}".encode() in environ)
    r = run_script("collect_sys.py", "stop", env=envs[0])
    assert r.returncode == 0 and "no collector running" in r.stdout


def test_make_start_collect_and_stop_one_node(run_env):
    env = node_env(run_env, "n3")
    r = subprocess.run(["make", "-s", "-C", str(REPO), "start-collect", f"RUN_ID={env['RUN_ID']}"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    pid = int(collector_pidfile(env["RUN_ID"], "n3").read_text())
    assert alive(pid)
    r = subprocess.run(["make", "-s", "-C", str(REPO), "stop-collect", f"RUN_ID={env['RUN_ID']}"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "stopped" in r.stdout
    assert not alive(pid)


def test_stale_pidfile_is_cleared(run_env):
    env = node_env(run_env, "n4")
    pf = collector_pidfile(env["RUN_ID"], "n4")
    pf.parent.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen(["true"])
    p.wait()
    pf.write_text(f"{p.pid}\n")  # a dead process
    pid = start_collector(env)
    assert pid != p.pid and alive(pid)
    stop_collector(env)
    assert not alive(pid)


def test_event_and_samples_share_identity(run_env):
    env = node_env(run_env, PROC_INTERVAL_MS="100")
    start_collector(env)
    try:
        run_adapter(env, ["sleep", "0.35"], TRACE_ID="id1", ATTEMPT="2")
    finally:
        stop_collector(env)
    ev = event_of(env, "id1")
    rows = sample_rows(env, "id1")
    assert ev["attempt"] == 2 and rows
    assert {(r[0], r[1]) for _, _, r in rows} == {(ev["pid"], ev["starttime"])}
    assert rows[0][0] >= ev["ts_start"] - 1 and rows[-1][0] <= ev["ts_end"] + 2000


def test_shell_fallback_writes_the_same_formats(run_env):
    env = node_env(run_env, USE_PY_COLLECT="0", PROC_INTERVAL_MS="100", STAGE="cloud")
    pid = start_collector(env)
    assert b"collect_sys.sh" in Path(f"/proc/{pid}/cmdline").read_bytes()
    try:
        run_adapter(env, ["sleep", "0.3"], TRACE_ID="sh1")
        run_adapter(env, ["true"], TRACE_ID="sh2", TC_FINAL_SAMPLE="1")
    finally:
        stop_collector(env)
    assert not alive(pid)
    ticks = [json.loads(x) for x in paths.samples_path(env["RUN_ID"], "n1").read_text().splitlines()]
    assert ticks and all(list(t) == list(SAMPLE_TICK_FIELDS) for t in ticks)
    # the shell collector writes the required columns and no optional one (comm, container_id: docs/containers.md)
    assert all(SAMPLE_MIN_VALUES <= len(r) <= len(SAMPLE_PROC_FIELDS) for t in ticks for r in t["procs"])
    for tid in ("sh1", "sh2"):
        ev = event_of(env, tid)
        rows = sample_rows(env, tid)
        assert rows and {(r[0], r[1]) for _, _, r in rows} == {(ev["pid"], ev["starttime"])}
    meta = json.loads(paths.node_meta_path(env["RUN_ID"], "n1").read_text())
    assert set(NODE_META_FIELDS) <= set(meta) and meta["stage"] == "cloud"
    assert meta["collector"]["mode"] == "sh-whitelist" and meta["collector"]["cpu_s"] is not None
    assert not list((paths.run_dir(env["RUN_ID"]) / "pids").glob("*.ack"))


def test_garbage_in_the_sentinel_folder_is_ignored(tmp_path, sleeper):
    (tmp_path / "123456").write_text("{not json")
    (tmp_path / "notes.txt").write_text("hello")
    st = procfs.starttime(sleeper.pid)
    _write(tmp_path, sleeper.pid, st)
    rows = Sampler("n1", tmp_path).tick()
    assert [r[0] for r in rows] == [sleeper.pid]
    assert (tmp_path / "123456").exists() and (tmp_path / "notes.txt").exists()


def test_time_sync_is_best_effort_and_logged(run_env):
    env = node_env(run_env, "n5", TIME_SYNC="1", NTP_POOL="127.0.0.1")  # loopback only: no outside traffic
    pid = start_collector(env)
    log = paths.run_dir(env["RUN_ID"]) / "timesync.log"
    assert wait_for(lambda: log.exists() and "pool=127.0.0.1" in log.read_text(), timeout=20)
    assert alive(pid), "a failed or skipped sync never stops the collector"
    stop_collector(env)
    assert "step=0" in log.read_text()


def _tick_for(s: Sampler, seconds: float, step: float = 0.1) -> list:
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out.append(s.tick())
        time.sleep(step)
    return out


def test_idle_process_that_wakes_up_is_seen(tmp_path):
    """An idle process is checked cheaply (schedstat); once it runs, its CPU shows at once."""
    code = "import time\ntime.sleep(0.6)\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\n" \
           "time.sleep(30)"
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL)
    try:
        _write(tmp_path, p.pid, wait_for(lambda: procfs.starttime(p.pid)))
        s = Sampler("n1", tmp_path, None, kid_every=10, full_every=10**9)  # no periodic re-read: schedstat only
        ticks = _tick_for(s, 0.5)
        assert s._live[0].idle, "an idle single-threaded process is watched through schedstat"
        before = ticks[-1][0][3]
        # tick until the burst (0.4 s of CPU, however loaded the host) is over and sampled
        done = wait_for(lambda: (lambda row, own: row == own and (row - before) * 1000 / procfs.CLK_TCK >= 380)(
            s.tick()[0][3], procfs.read_stat(p.pid).cpu_ticks), timeout=20, step=0.1)
        assert done, "the CPU of the burst shows in the samples"
    finally:
        p.kill()
        p.wait()


def test_child_forked_after_an_idle_spell_is_followed(tmp_path):
    p = subprocess.Popen(["sh", "-c", "sleep 0.5; i=0; while [ $i -lt 5000000 ]; do i=$((i+1)); done & wait"],
                         stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        _write(tmp_path, p.pid, wait_for(lambda: procfs.starttime(p.pid)))
        s = Sampler.for_interval("n1", tmp_path, None, 100)
        _tick_for(s, 0.4)
        ticks = _tick_for(s, 1.8)
        own = procfs.read_stat(p.pid).cpu_ticks
        assert ticks[-1][0][3] > own + 20, "the busy child's CPU is in the parent's row"
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
