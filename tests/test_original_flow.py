"""Acceptance: the original README's "Complete test flow" on an emulated node (docs/migrating.md).

The flow's commands are copied from the original README with only these changes:
- addresses and the password: ``~/Tracekit`` -> a scratch checkout (symlinks to this repo), ``<controller_ip>:6379``
  -> the private redis-server on the emulated network's bridge, ``Wsr123`` -> its random password;
- cleanup: ``pkill -f ...`` -> ``make stop-node``, the ``redis-cli ... DEL`` lines -> ``make clean-run`` (which
  refuses while workers are alive: the controller's cleanup therefore runs before the workers start; with pkill and
  DEL the order did not matter);
- ``sudo -E`` is dropped (tests run as root, without sudo); the worker is started with ``exec`` in the background
  and the central scheduler's pid is written down, so the test stops exactly what it started, by pid;
- the workload is tiny: 4 tasks (``--total 20``), pulses of 2 (``--pulse-size 10``) 1 s apart
  (``--pulse-interval 100``), clips of 0.4 s; ``hevc1080p`` (4 capacity units) leaves the mix when the node's
  capacity (1.25 x its cores) is below 4, as it could never be placed.
The environment (not the commands) points the toolkit's roots into the checkout and sets ``TIME_SYNC=0`` (no query to
a public NTP pool from a test).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import REPO, wait_for
from tracekit.cluster import netns
from tracekit.cluster.redis_server import RedisServer

OK, WHY = netns.namespaces_available()
pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(not OK, reason=f"network namespaces unavailable here: {WHY}"),
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed (apt-get install -y ffmpeg)"),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed"),
]

NODE = "cloud1"

# --- the original README, "Complete test flow", with the changes listed above ---

CONTROLLER_CLEANUP = r"""
cd {checkout} && source run_id.env
# Kill old control-plane processes
make stop-node RUN_ID=$RUN_ID || true
# Clean Redis queues from last run
TRACEKIT_REDIS_URL="redis://{ip}:{port}/0?password={password}" make clean-run RUN_ID=$RUN_ID
"""

WORKER_PREPARE = r"""
cd {checkout} && source run_id.env
# Clean previous artifacts on this worker
USE_PY_COLLECT=1 STOP_ALL=1 make stop-collect RUN_ID=$RUN_ID || true; make stop-node RUN_ID=$RUN_ID || true
rm -rf outputs/* logs/$RUN_ID/pids || true; mkdir -p logs/$RUN_ID/pids

# Start collector in PID whitelist mode (recommended) at 1000ms
USE_PY_COLLECT=1 PROC_INTERVAL_MS=1000 \
  PROC_PID_DIR="logs/$RUN_ID/pids" PROC_MATCH='^ffmpeg$|^ffprobe$' \
  NODE_ID=$(hostname) STAGE=cloud VM_IP={ip} \
  make start-collect RUN_ID=$RUN_ID
"""

WORKER_START = r"""
cd {checkout} && source run_id.env
# Start worker (shared mode + 1.25 overprovision). Use sudo so CPUQuota/CPUWeight can be applied.
exec env RUN_ID=$RUN_ID python3 tools/scheduler/worker.py \
  --outputs outputs \
  --allocation-ratio 1.25 \
  --cpu-binding shared \
  --redis "redis://{ip}:{port}/0?password={password}"
"""

CONTROLLER_RUN = r"""
cd {checkout} && source run_id.env
# Start central with weigher=instances (prefer fewer running instances)
mkdir -p "logs/$RUN_ID"
nohup python3 tools/scheduler/scheduler_central.py \
  --redis "redis://{ip}:{port}/0?password={password}" \
  --weigher instances --weigher-order min \
  > "logs/$RUN_ID/central.log" 2>&1 &
echo $! > {central_pid}

# Enqueue 20 tasks (seed unchanged)
python3 tools/scheduler/dispatcher.py \
  --inputs inputs/ffmpeg \
  --outputs outputs \
  --pending --pending-mode pulse --pulse-size 2 --pulse-interval 1 \
  --mix "{mix}" \
  --total 4 --seed 20250901 \
  --redis "redis://{ip}:{port}/0?password={password}"
"""

WORKER_FINISH = r"""
cd {checkout} && source run_id.env
make stop-collect RUN_ID=$RUN_ID && make parse RUN_ID=$RUN_ID
make stop-node RUN_ID=$RUN_ID
"""


def checkout(tmp: Path, rid: str) -> Path:
    """A scratch ``~/Tracekit``: the repo's Makefile, tools, venv and package lists, its own data folders."""
    co = tmp / "Tracekit"
    co.mkdir()
    for name in ("Makefile", "tools", ".venv", "pyproject.toml", "requirements.txt", "requirements-dev.txt"):
        (co / name).symlink_to(REPO / name)
    for name in ("logs", "outputs", "inputs/ffmpeg"):
        (co / name).mkdir(parents=True)
    (co / "run_id.env").write_text(f"RUN_ID={rid}\n")
    for i in range(4):
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                        f"testsrc2=size=160x120:rate=10:duration=0.4,hue=h={i * 40}", "-c:v", "libx264", "-preset",
                        "ultrafast", str(co / "inputs" / "ffmpeg" / f"clip{i}.mp4")], check=True, timeout=60)
    return co


def bash(script: str, env: dict, net=None, timeout: float = 120) -> subprocess.CompletedProcess:
    argv = ["bash", "-c", script]
    argv = net.wrap(NODE, argv) if net is not None else argv
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"exit {p.returncode}\n{script}\n--- stdout\n{p.stdout[-3000:]}\n--- stderr\n" \
                              f"{p.stderr[-3000:]}"
    return p


def test_original_complete_flow_on_an_emulated_node(tmp_path):
    rid = f"orig{uuid.uuid4().hex[:6]}"
    co = checkout(tmp_path, rid)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TRACEKIT_") and k not in ("RUN_ID", "NODE_ID", "REDIS_URL", "STAGE")}
    env.update(PATH=f"{REPO / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}", TRACEKIT_LOGS=str(co / "logs"),
               TRACEKIT_INPUTS=str(co / "inputs"), TRACEKIT_OUTPUTS=str(co / "outputs"),
               TRACEKIT_RUN_ID_FILE=str(co / "run_id.env"), TIME_SYNC="0")
    cores = len(os.sched_getaffinity(0))
    mix = "fast1080p=2,medium480p=3,hevc1080p=2,light1c=3" if int(1.25 * cores) >= 4 else \
        "fast1080p=2,medium480p=3,light1c=3"
    central_pid = tmp_path / "central.pid"
    worker = srv = None
    with netns.make_network([NODE], mode="1") as net:
        try:
            srv = RedisServer(host=net.gateway, workdir=tmp_path / "redis").start()
            fill = dict(checkout=co, ip=net.gateway, port=srv.port, password=srv.password, mix=mix,
                        central_pid=central_pid)
            client = srv.client()

            bash(CONTROLLER_CLEANUP.format(**fill), env)
            bash(WORKER_PREPARE.format(**fill), env, net)
            with open(tmp_path / "worker.log", "w") as log:
                worker = subprocess.Popen(net.wrap(NODE, ["bash", "-c", WORKER_START.format(**fill)]), env=env,
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            wait_for(lambda: client.exists(f"hb:{NODE}"), 60)
            out = bash(CONTROLLER_RUN.format(**fill), env)
            assert "enqueued 4 task(s)" in out.stderr
            wait_for(lambda: client.hlen("done") + client.hlen("failed") >= 4, 180, 0.2)
            assert client.hlen("done") == 4, client.hgetall("failed")
            bash(WORKER_FINISH.format(**fill), env, net, timeout=300)
            worker.wait(timeout=60)  # make stop-node stopped it through its pidfile
        finally:
            if worker is not None and worker.poll() is None:
                worker.kill()
                worker.wait()
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(central_pid.read_text()), signal.SIGTERM)
            subprocess.run([sys.executable, str(REPO / "tools" / "collect_sys.py"), "stop"], capture_output=True,
                           env=dict(env, RUN_ID=rid, STOP_ALL="1"), timeout=60)
            if srv is not None:
                srv.stop()

    run = co / "logs" / rid
    inv = [json.loads(x) for x in (run / "CTS" / "invocations.jsonl").read_text().splitlines() if x.strip()]
    assert len({r["trace_id"] for r in inv}) == 4 and all(r["status"] == "ok" for r in inv)
    outs = list((co / "outputs").rglob("*.mp4"))
    assert len(outs) == 4 and all(o.stat().st_size > 0 for o in outs)
    execs = [json.loads(x) for x in (run / NODE / "events.jsonl").read_text().splitlines() if '"exec"' in x]
    assert all("-crf" in e["argv"] and e["argv"][e["argv"].index("-crf") + 1] == "28" and "-c:a" in e["argv"]
               for e in execs)  # the original's workload
    ts = sorted(e["ts_enqueue"] for e in execs)
    assert ts[1] - ts[0] >= 900  # the tasks of a pulse 1 s apart, as the original dispatcher spaced them
    placements = [json.loads(x) for x in (run / "placements.jsonl").read_text().splitlines() if x.strip()]
    assert len(placements) >= 4 and {p.get("node_id") or p.get("node") for p in placements} == {NODE}
    assert (run / "central.log").exists()
    for f in run.rglob("*"):  # the password given in --redis URLs never reaches a file under logs/
        if f.is_file():
            assert srv.password not in f.read_text(errors="replace"), f
