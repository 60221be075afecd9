"""The warm launcher (tracekit.node.launcher) driven by the worker's client (tracekit.control.launch): the same
adapter contract as the stand-alone adapter, plus the launch stages, signal forwarding and no leftover."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from test_node_helpers import adapter_cmd, alive, event_of, node_env, sentinels, wait_for
from tracekit.control.launch import LauncherClient, LauncherUnavailable, spawn_adapter
from tracekit.core import paths


@pytest.fixture
def launcher(run_env, tmp_path):
    env = node_env(run_env)
    client = LauncherClient()
    assert client.start(dict(os.environ, **env), tmp_path / "launcher.log")
    yield client, env, tmp_path / "task.log"
    client.close()


def _task_env(env: dict, tid: str, **extra) -> dict:
    e = dict(os.environ, **env)
    e.update(TRACE_ID=tid, ATTEMPT="1", PROFILE="t", CPU_UNITS="1", TS_ENQUEUE="1700000000000",
             TS_DISPATCH="1700000000001", TC_LAUNCH_PATH="launcher", TC_TS_TAKEN="1.5", TC_TS_CHECKED="2.5",
             TC_TS_BOUND="3.5", TC_BINDING="exclusive", TC_CPUSET="0", TC_ACK_WAIT="0")
    e.update({k: str(v) for k, v in extra.items()})
    return e


def test_launched_task_keeps_the_contract_and_records_its_stages(launcher):
    client, env, log = launcher
    p = client.launch("command", ["sh", "-c", "grep Cpus_allowed_list /proc/self/status; exit 3"],
                      _task_env(env, "l1"), log)
    assert p.wait(30) == 3
    ev = event_of(env, "l1")
    assert ev["status"] == "failed" and ev["exit_code"] == 3 and ev["pid"] != p.pid
    assert ev["launch_path"] == "launcher" and ev["cpuset"] == "0" and ev["binding_mechanism"] == "affinity"
    assert (ev["ts_taken"], ev["ts_checked"], ev["ts_bound"]) == (1.5, 2.5, 3.5)
    assert ev["ts_forked"] <= ev["ts_sentinel"] <= ev["ts_start"] <= ev["ts_end"]
    assert ev["cpu_ms"] is not None and ev["max_rss_kb"] > 0
    assert "Cpus_allowed_list:\t0" in log.read_text()  # affinity set before exec; stdout went to the task log
    assert "l1" not in sentinels(env)  # removed after the exit
    assert os.getsid(0) != p.pid


def test_unknown_command_fails_before_exec(launcher):
    client, env, log = launcher
    p = client.launch("command", ["no-such-command-xyz"], _task_env(env, "l2"), log)
    assert p.wait(30) == 125
    assert event_of(env, "l2")["error"].startswith("cannot execute")


def test_signals_go_through_the_launcher(launcher):
    client, env, log = launcher
    p = client.launch("command", ["sleep", "30"], _task_env(env, "l3"), log)
    wait_for(lambda: "l3" in sentinels(env), 10)
    app = sentinels(env)["l3"]["pid"]
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 128 + signal.SIGTERM
    ev = event_of(env, "l3")
    assert ev["signal"] == signal.SIGTERM and "forwarding SIGTERM" in ev["error"]
    assert not alive(app)


def test_nothing_outlives_the_launcher(launcher):
    client, env, log = launcher
    # an application that ignores SIGTERM: the orphaned adapter escalates to SIGKILL
    p = client.launch("command", ["sh", "-c", "trap '' TERM; sleep 60"], _task_env(env, "l4"), log)
    wait_for(lambda: "l4" in sentinels(env), 10)
    app = sentinels(env)["l4"]["pid"]
    client.proc.kill()  # as when the worker dies: the launcher gets SIGKILL from its PDEATHSIG
    assert p.wait(30) is not None
    wait_for(lambda: not alive(p.pid) and not alive(app), 15)
    with pytest.raises(LauncherUnavailable):
        client.launch("command", ["true"], _task_env(env, "l5"), log)
    ev = event_of(env, "l4")  # the adapter still recorded the attempt
    assert ev["status"] == "failed"


def test_many_quick_launches(launcher):
    client, env, log = launcher
    procs = [client.launch("command", ["true"], _task_env(env, f"m{i}"), log) for i in range(20)]
    assert [p.wait(30) for p in procs] == [0] * 20
    assert {e["trace_id"] for e in map(lambda i: event_of(env, f"m{i}"), range(20))} == {f"m{i}" for i in range(20)}
    assert paths.events_path(env["RUN_ID"], env["NODE_ID"]).exists()


def test_audit_launch_overhead_per_node(tmp_path):
    from tracekit.trace import audit
    from tracekit.trace.model import ParseResult

    def la(node, d, start, end, path="launcher"):
        return {"node_id": node, "trace_id": f"t{d}", "attempt": 1, "launch_path": path, "status": "ok",
                "ts_end": end, "ts_dispatch": d, "ts_taken": d + 1, "ts_checked": d + 1.5, "ts_bound": d + 2,
                "ts_forked": d + 4, "ts_sentinel": d + 9, "ts_start": start}

    r = ParseResult(run_dir=tmp_path, out_dir=tmp_path,
                    launches=[la("a", 0, 10, 1000), la("a", 100, 120, 1100), la("b", 0, 50, 150, "subprocess")])
    lines = audit.launch_overhead(r)
    row_a = next(x for x in lines if x.startswith("| `a`"))
    row_b = next(x for x in lines if x.startswith("| `b`"))
    cells = [c.strip() for c in row_a.strip("|").split("|")]
    assert cells[1:7] == ["2", "launcher 2", "20.0", "20.0", "20.0", "1.5 %"]  # 30 ms of 2000 ms slot time
    assert cells[7:] == ["1.0", "0.5", "0.5", "2.0", "5.0", "6.0"]  # medians of each stage (exec: 1 and 11)
    assert "subprocess 1" in row_b and "33.3 %" in row_b
    assert audit.launch_overhead(ParseResult(run_dir=tmp_path, out_dir=tmp_path)) == [
        "no exec event with ts_dispatch and ts_start"]


def test_a_stop_sent_while_the_adapter_starts_is_forwarded_and_recorded(launcher):
    """SIGTERM the moment the launcher forked the adapter (before it installed its handlers): the adapter starts
    with it blocked, forwards it once it can, and records the attempt (it used to die of it, recording nothing)."""
    client, env, log = launcher
    for i in range(5):
        p = client.launch("command", ["sleep", "30"], _task_env(env, f"s{i}"), log)
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 128 + signal.SIGTERM
        assert event_of(env, f"s{i}")["signal"] == signal.SIGTERM


def test_a_stop_sent_while_an_adapter_interpreter_starts_is_recorded(run_env):
    """The subprocess path (``launch.spawn_adapter``, a fresh interpreter): the same, through exec."""
    env = node_env(run_env)
    for i in range(3):
        e = dict(os.environ, **env)
        e.update(_task_env(env, f"f{i}", TC_LAUNCH_PATH="subprocess"))
        p = spawn_adapter(adapter_cmd(["sleep", "30"]), env=e, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 128 + signal.SIGTERM
        assert event_of(env, f"f{i}")["signal"] == signal.SIGTERM
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the caller's mask is back
