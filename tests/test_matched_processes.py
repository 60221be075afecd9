"""Matched processes (sampled by name, launched by no adapter) and the container id of every sampled process:
the pure /proc/<pid>/cgroup parser, both CTS readers writing the same processes.jsonl, and the real collector."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import wait_for
from test_node_helpers import node_env, start_collector, stop_collector
from tracekit.cluster import synthlogs
from tracekit.cluster.synthlogs import SynthSpec
from tracekit.core import paths, schema
from tracekit.node import procfs
from tracekit.trace import audit, cts

CID = "3f" * 32  # a 64-hex container id
CID2 = "a1b2c3d4" * 8

# Fake /proc/<pid>/cgroup texts of the forms each runtime writes (hybrid v1 lines, v2 "0::" lines).
CGROUP_CASES = [
    ("docker, cgroupfs driver (v1)", f"12:cpu,cpuacct:/docker/{CID}\n11:memory:/docker/{CID}\n0::/\n", CID),
    ("docker, systemd driver (v2)", f"0::/system.slice/docker-{CID}.scope\n", CID),
    ("podman, cgroupfs manager (v1)", f"4:memory:/libpod_parent/libpod-{CID}\n1:cpu:/libpod_parent/libpod-{CID}\n",
     CID),
    ("podman, systemd (v2)", f"0::/machine.slice/libpod-{CID}.scope/container\n", CID),
    ("podman's conmon is no container process", f"0::/machine.slice/libpod-conmon-{CID}.scope\n", None),
    ("containerd CRI, systemd", f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678."
                               f"slice/cri-containerd-{CID}.scope\n", CID),
    ("CRI-O", f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podabc.slice/crio-{CID}.scope\n",
     CID),
    ("Kubernetes, cgroupfs driver", f"3:cpu:/kubepods/besteffort/pod0f1e2d3c-aaaa-bbbb-cccc-0123456789ab/{CID}\n",
     CID),
    ("a pod's own cgroup is no container", "3:cpu:/kubepods/besteffort/pod0f1e2d3c-aaaa-bbbb-cccc-0123456789ab\n",
     None),
    ("nested: the innermost container", f"0::/libpod_parent/libpod-{CID}/system.slice/docker-{CID2}.scope\n", CID2),
    ("bare metal, systemd", "0::/user.slice/user-1000.slice/session-2.scope\n1:name=systemd:/init.scope\n", None),
    ("a 32-hex id is no container id", "4:memory:/process_api/01cfc2b14289547541ff3a81d6912e3c\n0::/\n", None),
    ("empty", "", None),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in CGROUP_CASES], ids=[c[0] for c in CGROUP_CASES])
def test_container_id_from_cgroup_text(text, expected):
    assert procfs.container_id_from_cgroup(text) == expected


def test_container_id_of_live_processes():
    """This process's id follows from its own cgroup file; a gone process has none."""
    with open("/proc/self/cgroup") as fh:
        assert procfs.container_id(os.getpid()) == procfs.container_id_from_cgroup(fh.read())
    assert procfs.container_id(2 ** 22 + 5) is None


def _append_matched(run_dir, t0: float) -> None:
    """Ticks with a name-matched process (no trace_id) on node01: comm and container id, CPU growing 50 ticks a
    tick, one sample without starttime."""
    path = run_dir / "node01" / "samples.jsonl"
    ends_line = path.read_bytes().endswith(b"\n")
    with open(path, "a") as fh:
        if not ends_line:  # a truncated last line (malformed logs) stays one bad line
            fh.write("\n")
        for k in range(4):
            procs = [schema.sample_row(pid=4242, starttime=777, trace_id=None, cpu_ticks=100 + 50 * k,
                                       rss_pages=10 + k, cg_cpu_us=None, cg_mem_kb=None, comm="nginx",
                                       container_id=CID)]
            if k == 2:
                procs.append(schema.sample_row(pid=99, starttime=None, trace_id=None, cpu_ticks=7, rss_pages=1,
                                               cg_cpu_us=None, cg_mem_kb=None, comm="redis-server",
                                               container_id=None))
            fh.write(json.dumps({"ts": t0 + 1000 * k, "mono": 1.0e7 + 1000 * k, "procs": procs}) + "\n")


@pytest.mark.parametrize("spec", [dict(nodes=2, tasks=20), dict(nodes=2, tasks=20, malformed=True)])
def test_both_readers_write_the_same_matched_processes(tmp_path, spec, monkeypatch):
    """The columnar and the streaming reader hand name-matched samples to the same summary: identical
    processes.jsonl (and the rest of the CTS), one line per (node_id, pid, starttime), counted apart from tasks."""
    from tracekit.trace import columnar

    if not columnar.available():
        pytest.skip("duckdb is not installed")
    truth = synthlogs.generate(tmp_path / "run", SynthSpec(**spec))
    last = max(json.loads(x)["ts"] for x in (truth.run_dir / "node01" / "samples.jsonl").read_text().splitlines()
               if x.startswith('{"ts":') and x.endswith("}"))
    _append_matched(truth.run_dir, last + 10)
    out = {}
    for use_columnar in (True, False):
        monkeypatch.setattr(cts, "COLUMNAR", use_columnar)
        r = cts.parse_run(truth.run_dir, tmp_path / str(use_columnar))
        out[use_columnar] = (r, audit.render(r, audit.run_checks(r)).replace(str(tmp_path / str(use_columnar)), "X"))
        if use_columnar and not spec.get("malformed"):
            assert r.reader_notes == [], "matched processes stay on the columnar path"
    for name in ("invocations.jsonl", "proc_metrics.jsonl", "nodes.json", "processes.jsonl"):
        assert (tmp_path / "True" / name).read_bytes() == (tmp_path / "False" / name).read_bytes(), name
    assert out[True][1] == out[False][1]
    rows = [json.loads(x) for x in (tmp_path / "True" / "processes.jsonl").read_text().splitlines()]
    assert all(tuple(m) == schema.MATCHED_PROCESS_FIELDS for m in rows)
    by = {(m["node_id"], m["pid"], m["starttime"]): m for m in rows}
    assert set(by) == {("node01", 4242, 777), ("node01", 99, None)}
    m = by[("node01", 4242, 777)]
    tick_ms = 1000 / 100  # synthlogs' CLK_TCK is 100
    assert (m["comm"], m["container_id"], m["samples"]) == ("nginx", CID, 4)
    assert m["cpu_ms"] == 150 * tick_ms and m["cpu_ms_total"] == 250 * tick_ms
    assert m["ts_last"] - m["ts_first"] == 3000
    r = out[True][0]
    assert r.untracked_samples == 5 and len(r.matched) == 2
    assert len(r.executed()) == sum(1 for i in r.invocations if i.get("pid") is not None), "no task was added"
    assert "2 matched process(es) kept in processes.jsonl" in out[True][1]


def test_collector_keeps_a_matched_process_with_its_name_and_container(run_env, tmp_path):
    """A real process found by PROC_MATCH (no sentinel, no adapter) ends up in processes.jsonl with its command
    name, its container id (this host's: none unless the tests run in a container) and its CPU."""
    exe = tmp_path / "tkmatch-busy"
    exe.symlink_to(sys.executable)  # the command name is the executed file's name
    env = node_env(run_env, PROC_INTERVAL_MS="100", PROC_MATCH="^tkmatch-")
    env.pop("PROC_PID_DIR", None)
    start_collector(env)
    try:
        p = subprocess.Popen([str(exe), "-c", "import time\nt = time.time()\nwhile time.time() - t < 0.8: pass"],
                             stdin=subprocess.DEVNULL)
        st = wait_for(lambda: procfs.starttime(p.pid))
        _, status, ru = os.wait4(p.pid, 0)  # its exact CPU, to compare the samples with
        p.returncode = os.waitstatus_to_exitcode(status)
        assert p.returncode == 0
    finally:
        stop_collector(env)
    r = cts.parse_run(paths.run_dir(env["RUN_ID"]))
    rows = [json.loads(x) for x in (r.out_dir / "processes.jsonl").read_text().splitlines()]
    mine = [m for m in rows if (m["pid"], m["starttime"]) == (p.pid, st)]
    assert len(mine) == 1, rows
    m = mine[0]
    assert m["node_id"] == "n1" and m["comm"] == "tkmatch-busy"
    assert m["container_id"] == procfs.container_id(os.getpid())
    exact_ms = (ru.ru_utime + ru.ru_stime) * 1000
    # counters in clock ticks (10 ms); the last sample may precede the exit by an interval (more under load)
    assert m["samples"] >= 3 and 0 < m["cpu_ms"] <= m["cpu_ms_total"] <= exact_ms + 20
    assert m["cpu_ms_total"] >= 0.5 * exact_ms, (m, exact_ms)
    assert not r.invocations, "a matched process is no task"
