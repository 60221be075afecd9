"""The adapter on the real machine: ffmpeg on tiny clips, the real /proc, the real collector and cgroups."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TOOLS
from test_node_helpers import (
    FFMPEG_Q,
    alive,
    event_of,
    node_env,
    run_adapter,
    sample_rows,
    sentinels,
    start_adapter,
    start_collector,
    stop_collector,
    wait_for,
)
from tracekit.core import paths
from tracekit.core.schema import EXEC_FIELDS
from tracekit.node import binding, procfs

TICK_MS = 1000 / procfs.CLK_TCK


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """One tiny real H.264 clip (320x240, 1 s) made by the generator itself."""
    out = tmp_path_factory.mktemp("clips")
    r = subprocess.run([sys.executable, str(TOOLS / "generate_test_videos.py"), "--quick", "--count", "1",
                        "--out", str(out), "--no-progress"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return next(out.glob("*.mp4"))


@pytest.fixture
def collector_env(run_env):
    """A node env with its collector running at 100 ms; stopped afterwards."""
    env = node_env(run_env, PROC_INTERVAL_MS="100")
    start_collector(env)
    yield env
    stop_collector(env)


def test_short_task_gets_exact_totals_and_a_sample(run_env):
    env = node_env(run_env, PROC_INTERVAL_MS="1000")  # the task is far shorter than one interval
    start_collector(env)
    try:
        r = run_adapter(env, ["true"], TRACE_ID="short1", TS_ENQUEUE="1700000000000", CPU_UNITS="1")
    finally:
        stop_collector(env)
    assert r.returncode == 0, r.stderr
    ev = event_of(env, "short1")
    assert set(EXEC_FIELDS) <= set(ev)
    assert ev["status"] == "ok" and ev["exit_code"] == 0 and ev["signal"] is None
    assert ev["ts_end"] >= ev["ts_start"] and ev["ts_end"] - ev["ts_start"] < 1000
    assert ev["ts_end"] - ev["ts_start"] == pytest.approx(ev["mono_end"] - ev["mono_start"], abs=0.01)
    assert ev["cpu_ms"] == pytest.approx(ev["utime_ms"] + ev["stime_ms"], abs=0.01)
    assert ev["max_rss_kb"] > 0 and ev["ts_enqueue"] == 1700000000000
    rows = sample_rows(env, "short1")
    assert rows, "a task shorter than one interval must still be sampled"
    assert all(row[0] == ev["pid"] and row[1] == ev["starttime"] for _, _, row in rows)
    # the only sample may be of the zombie: its cumulative CPU can never exceed the exact total
    assert rows[-1][2][3] * TICK_MS <= ev["cpu_ms"] + TICK_MS
    assert not (paths.run_dir(env["RUN_ID"]) / "pids" / str(ev["pid"])).exists()
    assert not list((paths.run_dir(env["RUN_ID"]) / "pids").glob("*.ack")), "collector leaves no ack behind"


def _ffmpeg_encode(seconds: int = 5) -> list:
    return FFMPEG_Q + ["-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=30:duration={seconds}",
                       "-c:v", "libx264", "-preset", "medium", "-threads", "2", "-f", "null", "-"]


def test_sampled_cpu_plus_exact_tail_equals_rusage(collector_env):
    env = collector_env
    r = run_adapter(env, _ffmpeg_encode(), "ffmpeg_wrapper.py", TRACE_ID="acct1", TC_FINAL_SAMPLE="1")
    assert r.returncode == 0, r.stderr
    ev = event_of(env, "acct1")
    rows = sample_rows(env, "acct1")
    assert len(rows) >= 3, "a task of several intervals has several samples"
    cum = [row[3] * TICK_MS for _, _, row in rows]
    assert cum == sorted(cum), "cumulative counters never go back"
    assert all(rows[i][1] < rows[i + 1][1] for i in range(len(rows) - 1))
    # the sampled CPU (sum of increments = last cumulative) plus the exact tail equals rusage
    tail = ev["cpu_ms"] - cum[-1]
    assert abs(tail) <= max(0.01 * ev["cpu_ms"], 20), (ev["cpu_ms"], cum[-1])
    assert ev["cpu_ms"] > 100  # a real encode, not a no-op
    assert rows[-1][2][4] == 0, "final sample was taken of the exited process (zombie, no RSS)"


def test_tail_is_bounded_without_final_sample(collector_env):
    env = collector_env
    r = run_adapter(env, _ffmpeg_encode(3), "ffmpeg_wrapper.py", TRACE_ID="acct2")
    assert r.returncode == 0, r.stderr
    ev = event_of(env, "acct2")
    rows = sample_rows(env, "acct2")
    assert rows
    last_ts, _, last = rows[-1]
    tail = ev["cpu_ms"] - last[3] * TICK_MS
    assert tail >= -TICK_MS * 2, "samples never count more than the exact total"
    # the tail can only hold what the process could burn after the last sample on the node's CPUs
    assert tail <= (ev["ts_end"] - last_ts) * os.cpu_count() + 20


def test_failing_ffmpeg_on_corrupt_input_is_recorded(run_env, tmp_path):
    env = node_env(run_env)
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"not a video" + os.urandom(4000))
    tmp_out = tmp_path / ".out.t.a1.part.mp4"
    tmp_out.write_bytes(b"half a file")
    argv = FFMPEG_Q + ["-i", str(bad), "-c:v", "libx264", str(tmp_out)]
    r = run_adapter(env, argv, "ffmpeg_wrapper.py", TRACE_ID="bad1", TC_INPUT=str(bad),
                    TC_OUTPUT=str(tmp_path / "out.mp4"), TC_OUTPUT_TMP=str(tmp_out))
    assert r.returncode not in (0, 125)
    assert "Traceback" not in r.stderr
    ev = event_of(env, "bad1")
    assert ev["status"] == "failed" and ev["exit_code"] == r.returncode
    assert "Invalid data" in ev["error"] and ev["error"].startswith(f"exit code {r.returncode}")
    assert ev["bytes_in"] == bad.stat().st_size
    assert not tmp_out.exists(), "the adapter deletes the partial output of a failed task"


def test_ffmpeg_success_records_bytes(run_env, clip, tmp_path):
    env = node_env(run_env)
    tmp_out = tmp_path / ".o.t.a1.part.mp4"
    argv = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", str(clip), "-c:v", "libx264",
            "-preset", "ultrafast", str(tmp_out)]  # no -nostdin: the ffmpeg wrapper adds it
    r = run_adapter(env, argv, "ffmpeg_wrapper.py", TRACE_ID="ok1", TC_INPUT=str(clip), TC_OUTPUT_TMP=str(tmp_out),
                    TC_OUTPUT=str(tmp_path / "o.mp4"))
    assert r.returncode == 0, r.stderr
    ev = event_of(env, "ok1")
    assert "-nostdin" in ev["argv"]
    assert ev["bytes_in"] == clip.stat().st_size and ev["bytes_out"] == tmp_out.stat().st_size > 0
    assert tmp_out.exists(), "the adapter never renames or deletes a successful output"


def test_exec_failure_and_bad_setup(run_env):
    env = node_env(run_env)
    r = run_adapter(env, ["/nonexistent/tool", "x"], TRACE_ID="nx1")
    assert r.returncode == 125
    ev = event_of(env, "nx1")
    assert ev["status"] == "failed" and "No such file" in ev["error"] and "execute" in ev["error"]
    assert "Traceback" not in r.stderr and "adapter: error: cannot execute" in r.stderr
    assert not sentinels(env)
    blocker = Path(env["TRACEKIT_LOGS"]) / "not-a-dir"
    blocker.write_text("")
    r = run_adapter(env, ["true"], TRACE_ID="sd1", PROC_PID_DIR=str(blocker / "pids"))
    assert r.returncode == 125 and "Traceback" not in r.stderr and event_of(env, "sd1")["status"] == "failed"
    r = run_adapter(env, ["true"], TRACE_ID="ev1", TC_EVENT_LOG=str(blocker / "events.jsonl"))
    assert r.returncode == 0 and "Traceback" not in r.stderr and "cannot append the exec event" in r.stderr
    r = run_adapter(env, ["true"], TRACE_ID="cs1", TC_BINDING="exclusive", TC_CPUSET="0,99")
    assert r.returncode == 125 and "does not offer" in event_of(env, "cs1")["error"]
    r = run_adapter(env, ["true"], TRACE_ID="b1", TC_BINDING="bogus")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "TC_BINDING" in r.stderr
    r = run_adapter({k: v for k, v in env.items() if k != "TRACE_ID"}, ["true"])
    assert r.returncode == 2 and "TRACE_ID" in r.stderr


def test_stdin_is_closed_and_signals_are_forwarded(run_env):
    env = node_env(run_env)
    r = run_adapter(env, ["cat"], TRACE_ID="stdin1", timeout=20)  # would block forever on a terminal/pipe
    assert r.returncode == 0
    r = run_adapter(env, ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"], TRACE_ID="mask1")
    masks = dict(line.split(":\t") for line in r.stdout.splitlines())
    assert int(masks["SigBlk"], 16) == 0, "the application starts with no blocked signal"
    assert not int(masks["SigIgn"], 16) & (1 << (signal.SIGTERM - 1) | 1 << (signal.SIGINT - 1))
    p = start_adapter(env, ["sleep", "30"], TRACE_ID="sig1")
    s = wait_for(lambda: sentinels(env).get("sig1"))
    assert s, "sentinel exists while the task runs"
    assert procfs.starttime(s["pid"]) == s["starttime"]
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 128 + signal.SIGTERM
    ev = event_of(env, "sig1")
    assert ev["signal"] == signal.SIGTERM and ev["exit_code"] is None and ev["status"] == "failed"
    assert "SIGTERM" in ev["error"]
    assert not alive(s["pid"])


def _threads_cpus(pid: int) -> dict:
    return procfs.cpus_allowed_of_threads(pid)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPUs for two disjoint cpusets")
def test_exclusive_cpusets_disjoint_and_inherited_by_every_thread(run_env, clip):
    env = node_env(run_env)
    argv = FFMPEG_Q + ["-re", "-i", str(clip), "-c:v", "libx264", "-preset", "ultrafast", "-threads", "2",
                       "-f", "null", "-"]
    procs = {tid: start_adapter(env, argv, "ffmpeg_wrapper.py", TRACE_ID=tid, TC_BINDING="exclusive", TC_CPUSET=cs)
             for tid, cs in (("ex0", "0"), ("ex1", "1"))}
    seen: dict = {"ex0": {}, "ex1": {}}
    try:
        s = wait_for(lambda: (lambda d: d if {"ex0", "ex1"} <= set(d) else None)(sentinels(env)))
        assert s, "both sentinels appear"
        # sample the threads of both ffmpeg processes for a while (they run ~1 s in real time: -re)
        for _ in range(40):
            for tid in ("ex0", "ex1"):
                seen[tid].update(_threads_cpus(s[tid]["pid"]))
            time.sleep(0.02)
    finally:
        for p in procs.values():
            p.communicate(timeout=30)
    assert all(p.returncode == 0 for p in procs.values())
    for tid, cs in (("ex0", "0"), ("ex1", "1")):
        assert len(seen[tid]) > 1, "ffmpeg ran several threads"
        assert set(seen[tid].values()) == {cs}, f"every thread of {tid} is bound to {cs}: {seen[tid]}"
        ev = event_of(env, tid)
        assert ev["binding"] == "exclusive" and ev["binding_mechanism"] == "affinity" and ev["cpuset"] == cs
    assert not set(procfs.parse_cpu_list("0")) & set(procfs.parse_cpu_list("1"))


def _read(d: str, name: str) -> int:
    return int(Path(d, name).read_text().split()[0])


@pytest.mark.skipif(binding.unavailable_reason("cgroup-v1") is not None,
                    reason=f"cgroup v1: {binding.unavailable_reason('cgroup-v1')}")
def test_shared_cgroup_v1_weights_quotas_and_rebalance(run_env, clip, monkeypatch):
    monkeypatch.setenv(binding.MECHANISM_ENV, "cgroup-v1")
    env = node_env(run_env, **{binding.MECHANISM_ENV: "cgroup-v1"})
    argv = FFMPEG_Q + ["-re", "-i", str(clip), "-c:v", "libx264", "-preset", "ultrafast", "-threads", "2",
                       "-f", "null", "-"]
    pa = start_adapter(env, argv, "ffmpeg_wrapper.py", TRACE_ID="sh2", CPU_UNITS="2", TC_BINDING="shared",
                       TC_CPU_WEIGHT="200", TC_CPU_QUOTA_PCT="150")
    pb = start_adapter(env, argv, "ffmpeg_wrapper.py", TRACE_ID="sh1", CPU_UNITS="1", TC_BINDING="shared",
                       TC_CPU_WEIGHT="100")
    try:
        s = wait_for(lambda: (lambda d: d if {"sh1", "sh2"} <= set(d) else None)(sentinels(env)))
        assert s
        cga, cgb = s["sh2"]["cgroup"], s["sh1"]["cgroup"]
        assert cga["version"] == 1 and cga["cpu"].endswith(binding.task_cgroup_name(env["RUN_ID"], "n1", "sh2", 1))
        assert _read(cga["cpu"], "cpu.shares") == 2048 and _read(cgb["cpu"], "cpu.shares") == 1024
        assert _read(cga["cpu"], "cpu.cfs_quota_us") == 150_000
        assert _read(cgb["cpu"], "cpu.cfs_quota_us") == -1
        own = Path(f"/proc/{s['sh2']['pid']}/cgroup").read_text()
        assert binding.task_cgroup_name(env["RUN_ID"], "n1", "sh2", 1) in own
        # three tasks demand 2+1+4 CPUs of 2 cores: max-min gives 2/3 CPU each; a gone task is skipped
        q = binding.rebalance_shared(env["RUN_ID"], "n1", {("sh2", 1): 2, ("sh1", 1): 1, ("gone", 1): 4}, cores=2)
        assert q[("sh1", 1)] == pytest.approx(200 / 3) and sum(q.values()) == pytest.approx(200)
        assert _read(cga["cpu"], "cpu.cfs_quota_us") == binding.quota_us(200 / 3)
        assert _read(cgb["cpu"], "cpu.cfs_quota_us") == binding.quota_us(200 / 3)
        q = binding.rebalance_shared(env["RUN_ID"], "n1", {("sh2", 1): 2, ("sh1", 1): 1}, cores=2)
        assert q == {("sh2", 1): 100.0, ("sh1", 1): 100.0}
        assert _read(cga["cpu"], "cpu.cfs_quota_us") == 100_000
    finally:
        for p in (pa, pb):
            p.communicate(timeout=30)
    assert pa.returncode == 0 and pb.returncode == 0
    ev = event_of(env, "sh2")
    assert ev["binding"] == "shared" and ev["binding_mechanism"] == "cgroup-v1"
    assert ev["cpu_weight"] == 200 and ev["cpu_quota_pct"] == 150
    # the task cgroup's own counter agrees with rusage (µs vs ms)
    assert ev["cg_cpu_us"] / 1000 == pytest.approx(ev["cpu_ms"], rel=0.1, abs=15)
    assert ev["cg_peak_kb"] and ev["cg_peak_kb"] > 1000
    assert not Path(cga["cpu"]).exists() and not Path(cga["cpuacct"]).exists(), "task cgroup removed at exit"


@pytest.mark.parametrize("mech", ["systemd-run", "cgroup-v2"])
def test_shared_other_mechanisms(run_env, mech, monkeypatch):
    reason = binding.unavailable_reason(mech)
    if reason:
        pytest.skip(f"{mech} unavailable on this machine: {reason}")
    env = node_env(run_env, **{binding.MECHANISM_ENV: mech})
    r = run_adapter(env, ["sh", "-c", "cat /proc/self/cgroup"], TRACE_ID="m1", TC_BINDING="shared", CPU_UNITS="1",
                    TC_CPU_QUOTA_PCT="50")
    assert r.returncode == 0, r.stderr
    assert binding.task_cgroup_name(env["RUN_ID"], "n1", "m1", 1) in r.stdout
    assert event_of(env, "m1")["binding_mechanism"] == mech


def test_shared_without_mechanism_runs_and_says_so(run_env):
    env = node_env(run_env, **{binding.MECHANISM_ENV: "none"})
    r = run_adapter(env, ["true"], TRACE_ID="nm1", TC_BINDING="shared", CPU_UNITS="1")
    assert r.returncode == 0
    ev = event_of(env, "nm1")
    assert ev["binding"] == "shared" and ev["binding_mechanism"] == "none"


def test_application_dies_with_a_killed_adapter(run_env):
    """kill -9 of the adapter leaves no unmeasured orphan behind (PR_SET_PDEATHSIG)."""
    env = node_env(run_env)
    p = start_adapter(env, ["sleep", "30"], TRACE_ID="orph1")
    s = wait_for(lambda: sentinels(env).get("orph1"))
    assert s
    p.kill()
    p.communicate(timeout=10)
    assert wait_for(lambda: not alive(s["pid"]), timeout=5), "the application must not outlive its adapter"


@pytest.mark.skipif(binding.unavailable_reason("cgroup-v1") is not None,
                    reason=f"cgroup v1: {binding.unavailable_reason('cgroup-v1')}")
def test_shared_task_started_after_rebalance_gets_its_quota(run_env, monkeypatch):
    """The worker rebalances right after launching: the adapter, not yet in its cgroup, picks its quota up."""
    monkeypatch.setenv(binding.MECHANISM_ENV, "cgroup-v1")
    env = node_env(run_env, **{binding.MECHANISM_ENV: "cgroup-v1"})
    q = binding.rebalance_shared(env["RUN_ID"], "n1", {("late1", 1): 2, ("other", 1): 2, ("x", 1): 2}, cores=2)
    assert q[("late1", 1)] == pytest.approx(200 / 3)
    p = start_adapter(env, ["sleep", "1"], TRACE_ID="late1", TC_BINDING="shared", CPU_UNITS="2")
    try:
        s = wait_for(lambda: sentinels(env).get("late1"))
        assert s and _read(s["cgroup"]["cpu"], "cpu.cfs_quota_us") == binding.quota_us(200 / 3)
    finally:
        p.communicate(timeout=20)
    assert event_of(env, "late1")["cpu_quota_pct"] == pytest.approx(200 / 3, abs=0.01)
