"""The warm launcher: a single-threaded process, started once by the worker, that forks one adapter per task.

Starting a fresh interpreter and importing the adapter for every task costs ~100 ms on a loaded node. The
launcher pays that once: it is started by the worker (``python -c ...`` with :func:`main`, never a fork of the
multi-threaded worker), imports the adapter core, and then serves launch requests over a ``SOCK_SEQPACKET``
socket pair. For each request it forks; the child becomes exactly what ``tools/adapters/*_wrapper.py`` would
be (own session, stdin ``/dev/null``, stdout/stderr appended to the task log, the task's environment) and runs
the same :func:`tracekit.node.adapter.wrapper_main` in-process, then ``_exit``\\ s with its code. Every
guarantee of the adapter contract is therefore the adapter's own (sentinel before exec, binding before exec,
``wait4`` totals, the held zombie, signal forwarding).

Protocol (one JSON object per datagram):

    worker -> launcher  {"op": "launch", "id": n, "app": "command"|"ffmpeg", "argv": [...], "env": {...},
                         "log": "<task log>"}
                        {"op": "kill", "pid": p, "sig": s, "group": bool}   only while p is not reaped
    launcher -> worker  {"op": "started", "id": n, "pid": p, "ts_forked": ms} | {"op": "error", "id": n, ...}
                        {"op": "exit", "pid": p, "status": <raw wait status>}

Nothing outlives the worker: the launcher has ``PR_SET_PDEATHSIG=SIGKILL`` towards the worker and exits when
the socket closes; each adapter it forks has ``PR_SET_PDEATHSIG=SIGTERM`` towards the launcher (it forwards the
signal to the application, records the attempt and escalates to SIGKILL after ``ORPHAN_GRACE_S``); the
application has the adapter's ``PR_SET_PDEATHSIG=SIGKILL`` as always.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import socket
import sys
import traceback

from tracekit.core import keys  # noqa: F401 - imported once here, not in every task (the collector lookup)
from tracekit.core.cli import exit_code
from tracekit.core.clock import wall_ms
from tracekit.core.errors import TracekitError
from tracekit.node import adapter, collector  # noqa: F401 - collector: imported here once, not per task
from tracekit.node.cli import CMD_WRAPPER_DOC, FFMPEG_WRAPPER_DOC

MAX_MSG = 1 << 20


def _adapter_child(req: dict, launcher: int, ts_forked: float, keep: tuple) -> None:
    """The forked adapter process: never returns."""
    code = adapter.EXIT_PRE_EXEC
    try:
        signal.set_wakeup_fd(-1)
        for fd in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
        gc.disable()  # a short-lived copy: no collection touching (and copying) the launcher's pages
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        # the stop signals stay blocked (since the fork) until the adapter can forward them; the rest unblocked
        signal.pthread_sigmask(signal.SIG_SETMASK, adapter.FORWARDED)
        os.setsid()  # like start_new_session: the task's group is killable as one
        if not adapter.set_pdeathsig(signal.SIGTERM, launcher):
            os._exit(adapter.EXIT_PRE_EXEC)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        out = os.open(req["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.environ.clear()
        os.environ.update(req["env"])
        ffmpeg = req.get("app") != "command"
        try:
            code = adapter.wrapper_main(
                ["--", *req["argv"]], "ffmpeg_wrapper.py" if ffmpeg else "cmd_wrapper.py",
                FFMPEG_WRAPPER_DOC if ffmpeg else CMD_WRAPPER_DOC, adapter.ffmpeg_fixup if ffmpeg else None,
                ts_forked=ts_forked, parent_pid=launcher)
        except TracekitError as exc:
            print(f"{'ffmpeg' if ffmpeg else 'cmd'}_wrapper.py: error: {exc}", file=sys.stderr)
            code = exit_code(exc)
    except BaseException:  # noqa: BLE001 - report, then _exit: never return into the launcher's loop
        with contextlib.suppress(Exception):
            traceback.print_exc()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code if isinstance(code, int) else adapter.EXIT_PRE_EXEC)


class Launcher:
    """The serving loop (single thread): launch requests, kill requests, reaping."""

    def __init__(self, sock: socket.socket, worker: int) -> None:
        self.sock, self.worker = sock, worker
        self.children: set[int] = set()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def send(self, msg: dict) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(json.dumps(msg, separators=(",", ":")).encode())

    def launch(self, req: dict) -> None:
        launcher = os.getpid()
        old = signal.pthread_sigmask(signal.SIG_BLOCK, adapter.FORWARDED)  # the child starts with them blocked
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            self.send({"op": "error", "id": req.get("id"), "error": f"fork failed: {exc}"})
            return
        if pid == 0:
            _adapter_child(req, launcher, wall_ms(), (self.sock.fileno(), self.wake_r, self.wake_w))
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        self.children.add(pid)
        self.send({"op": "started", "id": req.get("id"), "pid": pid, "ts_forked": round(wall_ms(), 3)})

    def kill(self, req: dict) -> None:
        pid = int(req["pid"])
        if pid not in self.children:  # already reaped: the pid may belong to someone else now
            return
        with contextlib.suppress(OSError):
            if req.get("group"):
                os.killpg(pid, int(req["sig"]))
            else:
                os.kill(pid, int(req["sig"]))

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)
            self.send({"op": "exit", "pid": pid, "status": status})

    def serve(self) -> int:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        while True:
            for fd, _ in poller.poll(1000):
                if fd == self.wake_r:
                    with contextlib.suppress(OSError):
                        while os.read(self.wake_r, 512):
                            pass
                    continue
                try:
                    data = self.sock.recv(MAX_MSG)
                except OSError:
                    data = b""
                if not data:  # the worker closed its end (or died): our children follow via PDEATHSIG
                    return 0
                try:
                    req = json.loads(data)
                except ValueError:
                    continue
                if req.get("op") == "launch":
                    self.launch(req)
                elif req.get("op") == "kill":
                    self.kill(req)
            self.reap()
            if os.getppid() != self.worker:
                return 0


def main(argv: list[str] | None = None) -> int:
    """``main([fd, worker_pid])``: serve on the inherited socket ``fd``."""
    argv = sys.argv[1:] if argv is None else argv
    fd, worker = int(argv[0]), int(argv[1])
    if not adapter.set_pdeathsig(signal.SIGKILL, worker):
        return 0
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides what a Ctrl-C means for its tasks
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    gc.collect()
    gc.freeze()  # everything imported so far stays shared with the forked adapters (no copy-on-write by the GC)
    return Launcher(sock, worker).serve()


if __name__ == "__main__":
    sys.exit(main())
