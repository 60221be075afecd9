"""The worker's side of the warm launcher (``tracekit.node.launcher``): start it, ask it to launch, wait, signal.

The worker is multi-threaded, so it never forks itself: it starts the launcher once (a fresh interpreter,
``subprocess``), and from then on every task is a fork of that warm, single-threaded process. When the launcher
cannot start, dies, or ``TRACEKIT_LAUNCHER=0`` is set, the worker falls back to one fresh adapter process per
task (``tools/adapters/*_wrapper.py``), as before.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import tracekit
from tracekit.node.adapter import FORWARDED

log = logging.getLogger("worker")
LAUNCHER_ENV = "TRACEKIT_LAUNCHER"  # 0 = always the subprocess path
START_TIMEOUT_S = 10.0
REPLY_TIMEOUT_S = 5.0
MAX_MSG = 1 << 20
DIED_STATUS = 137 << 8  # what a task whose launcher vanished reports: exit code 137 (as if SIGKILLed)


def spawn_adapter(argv: list[str], **popen_kw) -> subprocess.Popen:
    """Start a task's adapter interpreter in its own session (the subprocess path) with its stop signals blocked:
    the mask survives exec, so a stop sent while it starts waits until the adapter can forward it and record the
    attempt, instead of killing it before it records anything. Only for an adapter: it unblocks them itself."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    try:
        return subprocess.Popen(argv, start_new_session=True, **popen_kw)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


class LauncherUnavailable(Exception):
    """The launcher is not running (never started, or died): use the subprocess path."""


def launcher_enabled(env: dict | None = None) -> bool:
    """False when ``TRACEKIT_LAUNCHER=0`` forces the subprocess path."""
    return (os.environ if env is None else env).get(LAUNCHER_ENV, "1") != "0"


class LaunchedProc:
    """A task adapter forked by the launcher; the subset of ``subprocess.Popen`` the worker uses."""

    def __init__(self, client: LauncherClient, pid: int, ts_forked: float | None) -> None:
        self.client, self.pid, self.ts_forked = client, pid, ts_forked
        self.returncode: int | None = None
        self.status: int | None = None
        self.done = threading.Event()

    def _exited(self, status: int) -> None:
        self.status = status
        self.returncode = os.waitstatus_to_exitcode(status)
        self.done.set()

    def wait(self, timeout: float | None = None) -> int | None:
        self.done.wait(timeout)
        return self.returncode

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int, group: bool = False) -> None:
        """Through the launcher, which signals only a child it has not reaped (never a reused pid)."""
        if not self.done.is_set():
            self.client.kill(self.pid, sig, group)


class LauncherClient:
    """One launcher process and the thread that reads its replies."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.proc: subprocess.Popen | None = None
        self.ids = itertools.count(1)
        self.lock = threading.Lock()
        self.pending: dict[int, list] = {}  # request id -> [Event, reply]
        self.procs: dict[int, LaunchedProc] = {}
        self.early: dict[int, int] = {}  # exit statuses that arrived before the started reply was handled
        self.alive = False
        self.reader: threading.Thread | None = None

    def start(self, env: dict, log_path: Path) -> bool:
        """Start the launcher (True) or say why not in the log (False: the subprocess path is used)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        root = str(Path(tracekit.__file__).resolve().parent.parent)
        code = (f"import sys; sys.path.insert(0, {root!r}); from tracekit.node.launcher import main; "
                f"sys.exit(main([{theirs.fileno()}, {os.getpid()}]))")
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as out:
                self.proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.DEVNULL,
                                             stdout=out, stderr=out, pass_fds=(theirs.fileno(),),
                                             start_new_session=True)
        except OSError as exc:
            log.warning("launcher not started (%s): tasks start through a fresh adapter process each", exc)
            ours.close()
            theirs.close()
            return False
        finally:
            theirs.close()
        self.sock = ours
        self.alive = True
        self.reader = threading.Thread(target=self._read, daemon=True, name="launcher-reader")
        self.reader.start()
        log.info("launcher started: pid %d (tasks are forked from it)", self.proc.pid)
        return True

    def _send(self, msg: dict) -> None:
        if not self.alive or self.sock is None:
            raise LauncherUnavailable("launcher not running")
        try:
            self.sock.send(json.dumps(msg, separators=(",", ":")).encode())
        except OSError as exc:
            raise LauncherUnavailable(f"launcher unreachable: {exc}") from None

    def launch(self, app: str, argv: list, env: dict, log_path: Path) -> LaunchedProc:
        """Fork one adapter for ``argv``; raises :class:`LauncherUnavailable` (nothing started) or OSError."""
        rid = next(self.ids)
        slot = [threading.Event(), None]
        with self.lock:
            self.pending[rid] = slot
        try:
            self._send({"op": "launch", "id": rid, "app": app, "argv": list(argv), "env": env,
                        "log": str(log_path)})
            if not slot[0].wait(REPLY_TIMEOUT_S) or slot[1] is None:
                if self.alive:  # hung: kill it (PDEATHSIG stops what it forked), never launch a task twice
                    self.alive = False
                    with contextlib.suppress(OSError):
                        self.proc.kill()
                raise LauncherUnavailable("launcher did not answer")
        finally:
            with self.lock:
                self.pending.pop(rid, None)
        reply = slot[1]
        if reply.get("op") != "started":
            raise OSError(reply.get("error") or "launcher could not start the task")
        return reply["proc"]  # made by the reader thread, which may already have delivered its exit

    def _proc_for(self, reply: dict) -> LaunchedProc:
        with self.lock:
            p = self.procs.get(reply["pid"])
            if p is None:
                p = self.procs[reply["pid"]] = LaunchedProc(self, reply["pid"], reply.get("ts_forked"))
            early = self.early.pop(reply["pid"], None)
        if early is not None:
            self._finish(p, early)
        return p

    def _finish(self, p: LaunchedProc, status: int) -> None:
        with self.lock:
            self.procs.pop(p.pid, None)
        p._exited(status)

    def kill(self, pid: int, sig: int, group: bool = False) -> None:
        with contextlib.suppress(LauncherUnavailable):
            self._send({"op": "kill", "pid": pid, "sig": int(sig), "group": bool(group)})

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(MAX_MSG)
            except OSError:
                data = b""
            if not data:
                break
            try:
                msg = json.loads(data)
            except ValueError:
                continue
            op = msg.get("op")
            if op in ("started", "error"):
                if op == "started":  # register first: its exit may be the very next datagram
                    msg["proc"] = self._proc_for(msg)
                with self.lock:
                    slot = self.pending.get(msg.get("id"))
                if slot is not None:
                    slot[1] = msg
                    slot[0].set()
            elif op == "exit":
                with self.lock:
                    p = self.procs.get(msg["pid"])
                    if p is None:
                        self.early[msg["pid"]] = msg["status"]
                if p is not None:
                    self._finish(p, msg["status"])
        self.alive = False
        with self.lock:
            procs = list(self.procs.values())
            slots = list(self.pending.values())
        if procs:
            log.error("the launcher died: its %d running task(s) are reported failed", len(procs))
        for p in procs:  # PDEATHSIG stopped them (SIGTERM, then SIGKILL): report them as killed
            self._finish(p, DIED_STATUS)
        for s in slots:
            s[0].set()

    def close(self, timeout: float = 5.0) -> None:
        """Close the socket (the launcher exits) and wait for it."""
        self.alive = False
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.reader is not None:
            self.reader.join(timeout)
