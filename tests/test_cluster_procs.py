"""Process supervisor: logs, pidfiles, graceful then forced stop, orphans found and reaped, no secret in argv."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import wait_for
from tracekit.cluster.supervisor import NAME_ENV, TOKEN_ENV, Supervisor, cleanup_stale_runs, marked_processes
from tracekit.core import paths
from tracekit.core.errors import Conflict, DependencyMissing, UsageError

PY = sys.executable


@pytest.fixture
def sup(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACEKIT_LOGS", str(tmp_path / "logs"))
    s = Supervisor("r1", secrets=("s3cret-value-xyz",), grace_s=1.0)
    yield s
    s.stop_all(grace_s=0.5)
    assert s.leftovers() == []


def said(p, word: str) -> bool:
    """The process printed ``word`` on a line of its own (the log header quotes the argv, so not a substring)."""
    return word in p.log.read_text().splitlines()



def test_log_pidfile_and_graceful_stop(sup):
    code = ("import signal,sys,time\n"
            "signal.signal(signal.SIGTERM, lambda *a: (print('got TERM', flush=True), sys.exit(3)))\n"
            "print('ready', flush=True); time.sleep(60)")
    p = sup.start("node1", "worker", [PY, "-c", code])
    assert p.log == paths.daemon_log_path("r1", "node1", "worker")
    assert wait_for(lambda: said(p, "ready"))
    assert int(p.pidfile.read_text()) == p.pid and p.pidfile == paths.daemon_pidfile_path("r1", "node1", "worker")
    assert psutil.Process(p.pid).environ()[NAME_ENV] == "node1/worker"
    assert sup.stop("node1", "worker") == 3
    assert said(p, "got TERM") and not p.pidfile.exists()


def test_sigterm_ignored_then_killed_with_its_whole_tree(sup):
    # the child escapes the process group (setsid) and ignores SIGTERM: only the marker finds it
    code = ("import os,signal,subprocess,time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "subprocess.Popen(['setsid','sh','-c','trap \"\" TERM; sleep 60'])\nprint('ready', flush=True)\n"
            "time.sleep(60)")
    p = sup.start("node1", "stubborn", [PY, "-c", code])
    assert wait_for(lambda: said(p, "ready") and len(marked_processes(sup.token)) >= 3)
    t0 = time.monotonic()
    assert sup.stop("node1", "stubborn", grace_s=0.5) == -signal.SIGKILL
    assert time.monotonic() - t0 < 10
    assert sup.leftovers() == []
    assert "ignored SIGTERM" in p.log.read_text()


def test_kill_hits_only_the_process_and_reap_finds_the_orphans(sup):
    code = "import subprocess,time\nsubprocess.Popen(['sleep','60'])\nprint('ready', flush=True)\ntime.sleep(60)"
    p = sup.start("node2", "worker", [PY, "-c", code])
    assert wait_for(lambda: said(p, "ready"))
    sup.kill("node2", "worker", signal.SIGKILL)
    assert wait_for(lambda: not p.alive())
    orphans = sup.leftovers()
    assert [o.name() for o in orphans] == ["sleep"]  # the crash left its child running, re-parented
    found = sup.reap(grace_s=1)
    assert len(found) == 1 and "sleep" in found[0]
    assert sup.leftovers() == []


def test_restart_gives_a_new_process_with_same_command(sup):
    p1 = sup.start("node1", "collector", [PY, "-c", "import time; time.sleep(60)"])
    pid1 = p1.pid
    with pytest.raises(Conflict, match="already running"):
        sup.start("node1", "collector", [PY, "-c", "pass"])
    p2 = sup.restart("node1", "collector", grace_s=1)
    assert p2.alive() and p2.pid != pid1 and p2.restarts == 1 and not psutil.pid_exists(pid1)
    assert p2.log.read_text().count("# tracekit: start node1/collector") == 2


def test_secret_never_in_argv_but_available_in_env(sup):
    with pytest.raises(UsageError, match="secret"):
        sup.start("node1", "leaky", [PY, "-c", "pass", "--redis", "redis://:s3cret-value-xyz@h/0"])
    env = {**os.environ, "TRACEKIT_REDIS_PASSWORD": "s3cret-value-xyz"}
    code = "import os,time; print(len(os.environ['TRACEKIT_REDIS_PASSWORD']), flush=True); time.sleep(30)"
    p = sup.start("node1", "ok", [PY, "-c", code], env=env)
    assert wait_for(lambda: said(p, "16"))
    for proc in marked_processes(sup.token):
        assert "s3cret" not in " ".join(proc.cmdline())
        assert proc.environ()[TOKEN_ENV] == sup.token
    assert "s3cret" not in p.log.read_text()


def test_start_failure_is_a_clear_error(sup):
    with pytest.raises(DependencyMissing, match="cannot start node1/x"):
        sup.start("node1", "x", [str(Path("/nonexistent/binary"))])


def test_stop_all_reverse_order(sup):
    code = ("import signal,sys,time\n"
            "signal.signal(signal.SIGTERM, lambda *a: (print(time.monotonic_ns(), flush=True), sys.exit(0)))\n"
            "print('ready', flush=True); time.sleep(60)")
    for name in ("a", "b", "c"):
        sup.start("controller", name, [PY, "-c", code], wrap=False)
    assert wait_for(lambda: all(said(sup.get("controller", n), "ready") for n in "abc"))
    codes = sup.stop_all(grace_s=2)
    assert list(codes) == ["controller/c", "controller/b", "controller/a"]
    stamps = [int(sup.get("controller", n).log.read_text().split()[-1]) for n in "abc"]
    assert stamps[0] > stamps[1] > stamps[2]


def test_processes_of_a_killed_supervisor_are_cleaned_up_later(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACEKIT_PROCS_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("TRACEKIT_LOGS", str(tmp_path / "logs"))
    adopted = subprocess.Popen(["sleep", "60"])  # stands for the private redis-server: not started by the supervisor
    code = ("import sys,time\nsys.path.insert(0, sys.argv[1])\nfrom tracekit.cluster.supervisor import Supervisor\n"
            "s = Supervisor('crash')\ns.start('n1', 'worker', ['sleep', '60'])\ns.adopt(int(sys.argv[2]))\n"
            "print(s.token, flush=True)\ntime.sleep(60)")
    owner = subprocess.Popen([PY, "-c", code, str(Path(paths.__file__).parents[1]), str(adopted.pid)],
                             stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    token = owner.stdout.readline().strip()
    assert token and len(marked_processes(token)) == 1
    assert cleanup_stale_runs() == []  # the owner lives: nothing is touched
    owner.kill()
    owner.wait()
    killed = cleanup_stale_runs()
    assert len(killed) == 2 and marked_processes(token) == []
    assert adopted.wait(5) is not None
    assert list((tmp_path / "state").glob("*.json")) == []
