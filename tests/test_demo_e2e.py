"""End to end: `tools/demo.py` on an emulated 2-node cluster (and the plain-process fallback), real everything."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import psutil
import pytest

from tracekit.cluster import netns
from tracekit.cluster.demo import NEEDED
from tracekit.cluster.emulation import SCRIPTS, TOOLS

MISSING = [f"tools/{SCRIPTS[n]}" for n in NEEDED if not (TOOLS / SCRIPTS[n]).is_file()]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"the demo needs {', '.join(MISSING)}, not written yet")


def run_env_procs(rid: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("RUN_ID") == rid and p.pid != os.getpid():
                out.append(p)
        except (psutil.Error, OSError):
            pass
    return out


def is_task_ffmpeg(p: psutil.Process) -> bool:
    """An ffmpeg started under the supervisor (a task), not one of the input generator."""
    try:
        return p.name() == "ffmpeg" and "TRACEKIT_PROC" in p.environ()
    except psutil.Error:
        return False


def spy(rid: str, stop: threading.Event, seen: dict) -> None:
    """While the demo runs: the password its children got (env), and every command line of the run."""
    while not stop.is_set():
        for p in run_env_procs(rid):
            try:
                env, cmd = p.environ(), " ".join(p.cmdline())
            except psutil.Error:
                continue
            if env.get("TRACEKIT_REDIS_PASSWORD"):
                seen["password"] = env["TRACEKIT_REDIS_PASSWORD"]
            seen.setdefault("cmdlines", set()).add(cmd)
            if env.get("NODE_ID"):
                seen.setdefault("nodes", set()).add(env["NODE_ID"])
        time.sleep(0.1)


def assert_no_namespace_left(out: str, spaces_before: set) -> None:
    """Only this demo's namespaces count (tk<tag>-<node>, tag from its bridge tkbr<tag>): other runs may be live."""
    tag = re.search(r"on bridge tkbr(\w+) ", out)
    if tag:
        assert not [s for s in netns.list_namespaces() if s.startswith(f"tk{tag.group(1)}-")]
    else:
        others = {lk.netns for st in netns.live_states() for lk in st.links}  # live networks of other runs
        assert not [s for s in set(netns.list_namespaces()) - spaces_before - others if s.startswith("tk")]


@pytest.mark.parametrize("mode", ["auto", "0"])
def test_demo_runs_whole_pipeline_and_leaves_nothing(tmp_path, mode):
    rid = f"e2e{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEKIT_REDIS") and k != "REDIS_URL"}
    env.update(TRACEKIT_LOGS=str(tmp_path / "logs"), TRACEKIT_INPUTS=str(tmp_path / "inputs"),
               TRACEKIT_OUTPUTS=str(tmp_path / "outputs"), TRACEKIT_RUN_ID_FILE=str(tmp_path / "run_id.env"),
               PYTHONPATH=str(TOOLS), NODES="2", TOTAL="6", MIX="light1c=2,medium480p=1", NETNS=mode, TIMEOUT="120")
    (tmp_path / "inputs").mkdir()
    spaces_before = set(netns.list_namespaces())
    seen: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=spy, args=(rid, stop, seen), daemon=True)
    watcher.start()
    try:
        proc = subprocess.run([sys.executable, str(TOOLS / "demo.py"), "--run-id", rid, "--no-setup"], env=env,
                              capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    finally:
        stop.set()
        watcher.join()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    out = proc.stdout
    if mode == "0" or not netns.namespaces_available()[0]:
        assert "FALLBACK: plain processes" in out
    else:
        assert "cluster: network namespaces on bridge" in out
    assert (tmp_path / "run_id.env").read_text().startswith(f"export RUN_ID={rid}\n")

    run = tmp_path / "logs" / rid
    inv = [json.loads(x) for x in (run / "CTS" / "invocations.jsonl").read_text().splitlines() if x.strip()]
    assert len({r["trace_id"] for r in inv}) == 6 and all(r["status"] == "ok" for r in inv)
    assert {r["node_id"] for r in inv} <= {"node1", "node2"}
    assert seen.get("nodes", set()) >= {"node1", "node2"}
    assert (run / "CTS" / "audit_report.md").is_file()
    assert (run / "opendc" / "tasks.parquet").is_file() and (run / "opendc" / "fragments.parquet").is_file()
    assert (run / "timeline.json").is_file()
    for label in ("CTS traces", "audit report", "OpenDC trace", "Perfetto timeline"):
        line = next(x for x in out.splitlines() if x.strip().startswith(label))
        assert "(missing)" not in line

    # nothing left behind: processes, namespaces, pidfiles
    assert run_env_procs(rid) == []
    assert_no_namespace_left(out, spaces_before)
    assert not list(run.glob("*/*.pid"))
    assert (run / "controller" / "redis.log").is_file()  # kept with the run; its config (password) is deleted
    # the password reached the children by environment only: not in argv, not in any file of the run
    pw = seen.get("password")
    assert pw, "no child process of the run was observed"
    assert not any(pw in c for c in seen["cmdlines"])
    for f in run.rglob("*"):
        if f.is_file():
            assert pw.encode() not in f.read_bytes(), f"password found in {f}"


def test_ctrl_c_mid_run_stops_everything(tmp_path):
    rid = f"int{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEKIT_REDIS") and k != "REDIS_URL"}
    env.update(TRACEKIT_LOGS=str(tmp_path / "logs"), TRACEKIT_INPUTS=str(tmp_path / "inputs"),
               TRACEKIT_OUTPUTS=str(tmp_path / "outputs"), TRACEKIT_RUN_ID_FILE=str(tmp_path / "run_id.env"),
               PYTHONPATH=str(TOOLS), NODES="2", TOTAL="40", MIX="medium480p=1")
    (tmp_path / "inputs").mkdir()
    spaces_before = set(netns.list_namespaces())
    proc = subprocess.Popen([sys.executable, str(TOOLS / "demo.py"), "--run-id", rid, "--no-setup"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until tasks run (an ffmpeg of the run exists)
        if any(is_task_ffmpeg(p) for p in run_env_procs(rid)):
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("no task started within 60 s")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert "demo: interrupted" in err and "Traceback" not in err
    assert run_env_procs(rid) == []
    assert_no_namespace_left(out, spaces_before)
    assert not list((tmp_path / "logs" / rid).glob("*/*.pid"))
