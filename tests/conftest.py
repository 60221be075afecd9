"""Shared fixtures: a real password-protected redis-server on a free loopback port, isolated run dirs; the
``system`` marker, applied here (not in the test files) to every test that needs the machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tracekit.cluster.redis_server import RedisServer
from tracekit.core.keys import Keys

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"

# ---- the `system` marker (`make test-fast` = pytest -m "not system") ----

# A real redis-server (run_env and every fixture built on these use it too: pytest's fixture closure).
SYSTEM_FIXTURES = frozenset({"redis_server", "redis_client", "run_env"})
# Modules whose tests need the machine whatever their fixtures: a whole (emulated) cluster, network namespaces,
# cgroups, process supervision (test_cluster_*), the demo or the chaos harness end to end, a TLS redis-server
# with daemons, ffmpeg, the collector sampling live processes.
SYSTEM_MODULE_PREFIXES = ("test_cluster_", "test_demo_e2e", "test_faults_chaos", "test_faults_secrets",
                          "test_node_videos", "test_node_collector")


def pytest_collection_modifyitems(config, items):
    """Mark ``system`` every test that uses a system fixture (also through another fixture) or is in a system
    module; ``-m "not system"`` then leaves the pure-logic tests."""
    for item in items:
        module = item.module.__name__.rpartition(".")[2] if item.module else ""
        if SYSTEM_FIXTURES.intersection(item.fixturenames) or module.startswith(SYSTEM_MODULE_PREFIXES):
            item.add_marker(pytest.mark.system)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One redis-server for the session; tests use ``redis_client`` (flushed) or their own prefix."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    srv = RedisServer(workdir=tmp_path_factory.mktemp("redis")).start()
    yield srv
    srv.stop()


@pytest.fixture
def redis_client(redis_server):
    """A decoded client on an emptied database."""
    client = redis_server.client()
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def run_env(tmp_path, redis_server, monkeypatch):
    """Environment for a run in a private folder: RUN_ID, logs/inputs/outputs roots, Redis URL/password.

    The password goes in the environment, never in argv. Returns the env dict for subprocesses too.
    """
    rid = f"t{uuid.uuid4().hex[:8]}"
    env = {
        "RUN_ID": rid,
        "TRACEKIT_LOGS": str(tmp_path / "logs"),
        "TRACEKIT_INPUTS": str(tmp_path / "inputs"),
        "TRACEKIT_OUTPUTS": str(tmp_path / "outputs"),
        "TRACEKIT_REDIS_URL": redis_server.url,
        "TRACEKIT_REDIS_PASSWORD": redis_server.password,
        "PYTHONPATH": str(TOOLS),
    }
    for k in ("TRACEKIT_LOGS", "TRACEKIT_INPUTS", "TRACEKIT_OUTPUTS"):
        Path(env[k]).mkdir(parents=True, exist_ok=True)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    redis_server.client().flushdb()
    full = dict(os.environ)
    full.update(env)
    return full


def with_profiles(run_env: dict, tmp_path: Path, monkeypatch, profiles: dict) -> dict:
    """``run_env`` plus a profiles file holding ``profiles`` (TRACEKIT_PROFILES set here and for subprocesses)."""
    import json

    prof = tmp_path / "profiles.json"
    prof.write_text(json.dumps(profiles))
    monkeypatch.setenv("TRACEKIT_PROFILES", str(prof))
    return dict(run_env, TRACEKIT_PROFILES=str(prof))


def wait_for(pred, timeout: float = 15.0, step: float = 0.01):
    """Poll ``pred`` until it returns something truthy (returned); AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(step)


def run_script(script: str, *args: str, env: dict | None = None, timeout: float = 120, check: bool = False):
    """Run ``tools/<script>`` with this Python; returns CompletedProcess with text output. The user's own
    ``run_id.env`` never leaks into a test (an empty one stands in unless the test names one)."""
    if env is not None:
        env = {"TRACEKIT_RUN_ID_FILE": os.devnull, **env}
    proc = subprocess.run([sys.executable, str(TOOLS / script), *args], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


class Daemons:
    """Worker/scheduler subprocesses of one test, each logging to its own file (a pipe nobody reads can fill up and
    block a daemon); all killed at the end. ``output(p)`` is what a daemon printed so far."""

    def __init__(self, env: dict, folder: Path) -> None:
        self.env, self.folder, self.procs = env, folder, []
        self.logs: dict[int, Path] = {}

    def start(self, script: str, *args: str, env: dict | None = None, **extra: str) -> subprocess.Popen:
        log_path = self.folder / f"daemon{len(self.procs)}.log"
        with open(log_path, "w") as log:
            p = subprocess.Popen([sys.executable, str(TOOLS / script), *args], env=dict(env or self.env, **extra),
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        self.logs[p.pid] = log_path
        return p

    def worker(self, node: str, *args: str, env: dict | None = None) -> subprocess.Popen:
        return self.start("scheduler/worker.py", "--node-id", node, *args, env=env)

    def scheduler(self, *args: str) -> subprocess.Popen:
        return self.start("scheduler/scheduler_central.py", "--reap-interval", "0.3", *args)

    def output(self, proc: subprocess.Popen) -> str:
        return self.logs[proc.pid].read_text(errors="replace")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


@pytest.fixture
def daemons(env, tmp_path):
    """``Daemons`` of the test module's ``env`` fixture (its environment: Redis, run id, profiles)."""
    d = Daemons(env, tmp_path)
    yield d
    d.close()


def task_payload(trace_id: str, profile: str = "nap", **fields) -> str:
    """A valid task payload (attempt 1, 1 unit, enqueued now) with ``fields`` added or replaced."""
    d = {"trace_id": trace_id, "profile": profile, "cpu_units": 1, "ts_enqueue": int(time.time() * 1000),
         "attempt": 1}
    d.update(fields)
    return json.dumps(d)


DEFAULT_KEYS = Keys()


def push(client, *raws: str, keys: Keys = DEFAULT_KEYS) -> None:
    """RPUSH payloads on q:pending and wake the scheduler, as the dispatcher does."""
    client.rpush(keys.pending, *raws)
    client.lpush(keys.wake, "1")
