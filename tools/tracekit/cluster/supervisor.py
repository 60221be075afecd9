"""Supervisor for the long-running processes of a run (collectors, workers, scheduler, dispatcher).

Every process is started with:

- its own session (process group), stdin closed, stdout+stderr appended to
  ``logs/$RUN_ID/<node>/<name>.log`` (``paths.daemon_log_path``) and a pidfile next to it;
- secrets only in the environment: :meth:`Supervisor.start` refuses an argv that contains one;
- two environment markers, ``TRACEKIT_SUPERVISOR=<token>`` and ``TRACEKIT_PROC=<node>/<name>``, that
  every descendant inherits. They let :meth:`Supervisor.leftovers` find any process of the run that
  is still alive, even one re-parented to init after its parent died (adapters, ffmpeg).

Stopping is SIGTERM to the process, then, after a grace period, SIGKILL to it and to every
descendant that carries its marker. The chaos harness uses :meth:`kill` (one signal to the process
alone, like a crash) and :meth:`restart`.

Crash safety: a supervisor registers itself (owner pid + start time, token, adopted pids such as the
private redis-server) in ``/run/tracekit-procs/<token>.json`` (``$TRACEKIT_PROCS_STATE``; a temp dir
when /run is not writable). :func:`cleanup_stale_runs` kills what a supervisor that died without
cleaning up (``kill -9`` of the demo) left running; :class:`tracekit.cluster.emulation.Cluster` calls it first.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tracekit.core import paths
from tracekit.core.clock import wall_ms
from tracekit.core.errors import Conflict, DependencyMissing, UsageError

TOKEN_ENV = "TRACEKIT_SUPERVISOR"
NAME_ENV = "TRACEKIT_PROC"
DEFAULT_GRACE_S = 10.0

Wrap = Callable[[str, list[str]], list[str]]


def registry_dir() -> Path:
    """Where live supervisors register (``$TRACEKIT_PROCS_STATE``, /run/tracekit-procs, or a temp dir)."""
    env = os.environ.get("TRACEKIT_PROCS_STATE")
    if env:
        return Path(env)
    run = Path("/run")
    if os.access(run, os.W_OK):
        return run / "tracekit-procs"
    import tempfile

    return Path(tempfile.gettempdir()) / f"tracekit-procs-{os.getuid()}"


def _start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _same_process(pid: int, start: float | None) -> bool:
    now = _start_time(pid)
    return now is not None and (start is None or abs(now - start) < 0.5)


def cleanup_stale_runs() -> list[str]:
    """Kill the processes of supervisors whose owner died; return descriptions of what was killed."""
    d = registry_dir()
    killed: list[str] = []
    if not d.is_dir():
        return killed
    for f in sorted(d.glob("*.json")):
        try:
            st = json.loads(f.read_text())
        except (OSError, ValueError):
            f.unlink(missing_ok=True)
            continue
        if _same_process(st.get("owner_pid", -1), st.get("owner_start")):
            continue
        victims = marked_processes(st.get("token", "-"))
        for pid, start in st.get("adopted", []):
            if _same_process(pid, start):
                with contextlib.suppress(psutil.Error):
                    victims.append(psutil.Process(pid))
        for p in victims:
            with contextlib.suppress(psutil.Error):
                killed.append(f"{p.pid} {' '.join(p.cmdline())[:80]}")
        _kill_all(victims, signal.SIGTERM)
        _, alive = psutil.wait_procs(victims, timeout=3)
        _kill_all(alive, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=3)
        f.unlink(missing_ok=True)
    return killed


@dataclass
class Proc:
    """One supervised process (the latest incarnation of ``node``/``name``)."""

    node: str
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    pidfile: Path
    wrap: bool
    popen: subprocess.Popen | None = None
    started_ms: float = 0.0
    restarts: int = 0

    @property
    def label(self) -> str:
        return f"{self.node}/{self.name}"

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen else None


def _environ(p: psutil.Process) -> dict[str, str]:
    try:
        return p.environ()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return {}


def marked_processes(token: str, label: str | None = None) -> list[psutil.Process]:
    """Live processes (not zombies) whose environment carries ``token`` (and ``label`` if given)."""
    me = os.getpid()
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        if p.pid == me or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        env = _environ(p)
        if env.get(TOKEN_ENV) == token and (label is None or env.get(NAME_ENV) == label):
            out.append(p)
    return out


def _kill_all(procs: Iterable[psutil.Process], sig: int) -> None:
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            p.send_signal(sig)


@dataclass
class Supervisor:
    """Starts and stops the processes of one run; ``wrap(node, argv)`` places a process in its node."""

    run_id: str
    wrap: Wrap | None = None
    secrets: tuple[str, ...] = ()
    grace_s: float = DEFAULT_GRACE_S
    token: str = field(default_factory=lambda: secrets.token_hex(8))
    procs: dict[tuple[str, str], Proc] = field(default_factory=dict)
    order: list[tuple[str, str]] = field(default_factory=list)

    adopted: list[tuple[int, float | None]] = field(default_factory=list)
    registered: bool = False

    def _registry_file(self) -> Path:
        return registry_dir() / f"{self.token}.json"

    def _register(self) -> None:
        me = os.getpid()
        d = registry_dir()
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = d / f".{self.token}.tmp"
        tmp.write_text(json.dumps({"token": self.token, "owner_pid": me, "owner_start": _start_time(me),
                                   "run_id": self.run_id, "adopted": self.adopted}))
        tmp.replace(self._registry_file())
        self.registered = True

    def adopt(self, pid: int) -> None:
        """Also clean up ``pid`` (started elsewhere, e.g. the private redis-server) if this owner dies."""
        self.adopted.append((pid, _start_time(pid)))
        self._register()

    def unregister(self) -> None:
        """Forget the registration (after a clean stop)."""
        self._registry_file().unlink(missing_ok=True)
        self.registered = False

    def _check_argv(self, argv: list[str]) -> None:
        for secret in self.secrets:
            if secret and any(secret in a for a in argv):
                raise UsageError("refusing to start a process with a secret in its command line (use the environment)")

    def start(self, node: str, name: str, argv: list[str], env: dict[str, str] | None = None,
              *, wrap: bool = True, cwd: str | os.PathLike | None = None) -> Proc:
        """Start ``argv`` as ``node``/``name`` (inside the node's namespace when ``wrap``)."""
        key = (node, name)
        if key in self.procs and self.procs[key].alive():
            raise Conflict(f"{node}/{name} is already running (pid {self.procs[key].pid})")
        self._check_argv(argv)
        if not self.registered:
            self._register()  # before the first process: a crash from here on is cleaned next time
        proc = Proc(node=node, name=name, argv=list(argv), env=dict(env if env is not None else os.environ),
                    log=paths.daemon_log_path(self.run_id, node, name),
                    pidfile=paths.daemon_pidfile_path(self.run_id, node, name), wrap=wrap)
        if key in self.procs:
            proc.restarts = self.procs[key].restarts + 1
        self._spawn(proc, cwd)
        self.procs[key] = proc
        if key not in self.order:
            self.order.append(key)
        return proc

    def _spawn(self, proc: Proc, cwd: str | os.PathLike | None) -> None:
        env = dict(proc.env)
        env[TOKEN_ENV] = self.token
        env[NAME_ENV] = proc.label
        argv = self.wrap(proc.node, proc.argv) if (proc.wrap and self.wrap) else proc.argv
        proc.log.parent.mkdir(parents=True, exist_ok=True)
        with open(proc.log, "ab") as log:
            log.write(f"# tracekit: start {proc.label} at {wall_ms():.0f} ms: {' '.join(proc.argv)}\n".encode())
            log.flush()
            try:
                proc.popen = subprocess.Popen(argv, env=env, cwd=cwd or paths.REPO_ROOT, stdin=subprocess.DEVNULL,
                                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                raise DependencyMissing(f"cannot start {proc.label} ({argv[0]}): {exc.strerror}",
                                        name=argv[0]) from None
        proc.started_ms = wall_ms()
        proc.pidfile.write_text(f"{proc.popen.pid}\n")

    def get(self, node: str, name: str) -> Proc:
        try:
            return self.procs[(node, name)]
        except KeyError:
            raise UsageError(f"no process {node}/{name} in this run") from None

    def kill(self, node: str, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the process alone (its children live on, as after a real crash)."""
        proc = self.get(node, name)
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.popen.pid, sig)

    def stop(self, node: str, name: str, grace_s: float | None = None) -> int | None:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL the process and its marked descendants.

        Returns the exit status (negative = killed by that signal), or None if it never started.
        """
        proc = self.get(node, name)
        grace = self.grace_s if grace_s is None else grace_s
        if proc.popen is None:
            return None
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.popen.pid, signal.SIGTERM)
            try:
                proc.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with open(proc.log, "ab") as log:
                    log.write(f"# tracekit: {proc.label} ignored SIGTERM for {grace:.0f} s: SIGKILL\n".encode())
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait()
        # descendants that outlived their parent (re-parented to init) carry its marker
        rest = marked_processes(self.token, proc.label)
        if rest:
            _kill_all(rest, signal.SIGTERM)
            _, alive = psutil.wait_procs(rest, timeout=min(grace, 3.0))
            _kill_all(alive, signal.SIGKILL)
            psutil.wait_procs(alive, timeout=3.0)
        proc.pidfile.unlink(missing_ok=True)
        return proc.popen.returncode

    def restart(self, node: str, name: str, grace_s: float | None = None) -> Proc:
        """Stop (if running) and start again with the same argv and environment."""
        proc = self.get(node, name)
        self.stop(node, name, grace_s)
        return self.start(node, name, proc.argv, proc.env, wrap=proc.wrap)

    def stop_all(self, grace_s: float | None = None) -> dict[str, int | None]:
        """Stop every process in reverse start order; then kill anything of the run still alive."""
        codes = {}
        for node, name in reversed(self.order):
            codes[f"{node}/{name}"] = self.stop(node, name, grace_s)
        self.reap()
        if not self.adopted:  # adopted processes are stopped by their owner, which then unregisters
            self.unregister()
        return codes

    def leftovers(self) -> list[psutil.Process]:
        """Processes of this run still alive (any descendant of any supervised process)."""
        return marked_processes(self.token)

    def reap(self, grace_s: float = 3.0) -> list[str]:
        """Kill every leftover process (SIGTERM, then SIGKILL); return descriptions of those found."""
        rest = self.leftovers()
        found = []
        for p in rest:
            with contextlib.suppress(psutil.Error):
                found.append(f"{p.pid} {' '.join(p.cmdline())[:80]}")
        _kill_all(rest, signal.SIGTERM)
        _, alive = psutil.wait_procs(rest, timeout=grace_s)
        _kill_all(alive, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=grace_s)
        return found

    def wait_exit(self, node: str, name: str, timeout: float) -> int | None:
        """Wait up to ``timeout`` s for a process to exit by itself; its status, or None if still running."""
        proc = self.get(node, name)
        deadline = time.monotonic() + timeout
        while proc.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        return proc.returncode
