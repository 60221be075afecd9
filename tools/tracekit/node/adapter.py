"""The adapter core: run one execution of an application and measure it exactly.

Sequence (docs/node-side.md "Exactness"):
1. The parent prepares the binding (shared mode: creates the task cgroup) and forks.
2. The child closes stdin (``/dev/null``), routes stderr into a pipe, applies the binding (affinity
   or cgroup), reads its own ``starttime``, writes the PID sentinel, takes the wall/monotonic time,
   sends both through a CLOEXEC pipe and execs. The pipe closes at exec, so the parent learns the exact
   pre-exec time and whether exec succeeded (a failing exec writes its reason into the same pipe).
3. The parent forwards SIGINT/SIGTERM, tees the child's stderr (keeping the last ~2 KB) and waits for
   the exit with ``waitid(WNOWAIT)``, which leaves the process a zombie whose /proc counters still hold
   its final CPU time. If this node's collector is running and has not yet sampled the process (a task
   shorter than one interval), the parent keeps the zombie for at most two intervals (+250 ms) until the
   collector acknowledges it (``<pid>.ack``). Then it reaps with ``wait4`` (exact rusage), reads the
   task cgroup's totals, removes the sentinel and the cgroup, and appends one ``exec`` event.

Exit code: the application's; 128+N when it died of signal N; 125 when the adapter failed before exec.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import struct
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from tracekit.core import paths
from tracekit.core.clock import mono_ms, wall_ms
from tracekit.core.errors import TracekitError, UsageError
from tracekit.core.jsonl import append_line
from tracekit.core.schema import EXEC_FIELDS
from tracekit.node import binding as bind
from tracekit.node import cgroupfs, procfs, sentinel
from tracekit.node import container as ctr

EXIT_PRE_EXEC = 125
# the stop signals an adapter forwards to its application; whoever starts an adapter blocks them until the adapter
# can forward them (a stop arriving while it starts would kill it before it records anything)
FORWARDED = {signal.SIGINT, signal.SIGTERM}
_PR_SET_PDEATHSIG = 1
try:  # loaded before fork: the child must not import anything
    _LIBC = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - no libc symbols (static Python)
    _LIBC = None
STDERR_TAIL_BYTES = 2048
HOLD_SLACK_MS = 250  # a loaded collector may be a little late; a missing one costs no wait at all
_TS = struct.Struct("=ddd")  # ts_sentinel, ts_start (wall), mono_start
ORPHAN_GRACE_S = 5.0  # launcher-forked adapter whose launcher died: SIGKILL the application after this


@dataclass
class AdapterConfig:
    """Everything one execution needs; built from the worker's environment (docs/internals.md)."""

    argv: list
    run_id: str
    node_id: str
    trace_id: str
    attempt: int = 1
    profile: str | None = None
    cpu_units: int | None = None
    ts_enqueue: float | None = None
    ts_dispatch: float | None = None
    event_log: Path | None = None
    pid_dir: Path | None = None
    binding: str = "none"
    cpuset: str | None = None
    cpu_weight: int | None = None
    cpu_quota_pct: float | None = None
    unit_name: str | None = None  # shared + systemd-run: the task's own scope name (TC_UNIT_NAME)
    input: str | None = None
    output: str | None = None
    output_tmp: str | None = None
    ack_wait: bool = True
    final_sample: bool = False
    launch_path: str | None = None
    ts_taken: float | None = None
    ts_checked: float | None = None
    ts_bound: float | None = None
    ts_forked: float | None = None
    parent_pid: int | None = None  # set by the launcher: when this parent dies, a forwarded signal escalates
    service: bool = False  # TC_SERVICE=1: a service, stopped by SIGTERM (docs/services.md)
    stop_grace_s: float = 5.0  # TC_STOP_GRACE_S: a service still running this long after SIGTERM gets SIGKILL
    container: ctr.ContainerSpec | None = None  # run in this container (TC_CONTAINER_*; docs/containers.md)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls, argv: list, env: dict | None = None) -> AdapterConfig:
        """Read the contract's variables; :class:`UsageError` with one line when one is malformed."""
        env = os.environ if env is None else env
        if not argv:
            raise UsageError("no command given: use  ... -- <command> [args]")
        rid = paths.run_id(env.get("RUN_ID"))
        node = paths.node_id(env.get("NODE_ID"))
        tid = env.get("TRACE_ID")
        if not tid or not paths.SAFE_ID.match(tid):
            raise UsageError(f"TRACE_ID missing or unsafe: {tid!r} (letters, digits, '_', '.', '-')")

        def num(name: str, kind=float, lo: float | None = None):
            v = env.get(name)
            if v in (None, ""):
                return None
            try:
                x = kind(v)
            except ValueError:
                raise UsageError(f"{name} must be a {kind.__name__}, got {v!r}") from None
            if lo is not None and x < lo:
                raise UsageError(f"{name} must be >= {lo}, got {v!r}")
            return x

        b = env.get("TC_BINDING") or "none"
        if b not in bind.BINDINGS:
            raise UsageError(f"TC_BINDING must be one of {', '.join(bind.BINDINGS)}, got {b!r}")
        units = num("CPU_UNITS", int, 1)
        weight = num("TC_CPU_WEIGHT", int, 1)
        return cls(
            argv=list(argv),
            run_id=rid,
            node_id=node,
            trace_id=tid,
            attempt=num("ATTEMPT", int, 1) or 1,
            profile=env.get("PROFILE") or None,
            cpu_units=units,
            ts_enqueue=_int_if_whole(num("TS_ENQUEUE")),
            ts_dispatch=_int_if_whole(num("TS_DISPATCH")),
            event_log=Path(env["TC_EVENT_LOG"]) if env.get("TC_EVENT_LOG") else paths.events_path(rid, node),
            pid_dir=Path(env["PROC_PID_DIR"]) if env.get("PROC_PID_DIR") else paths.pid_dir(rid),
            binding=b,
            cpuset=env.get("TC_CPUSET") or None,
            cpu_weight=weight if weight is not None else (100 * units if units else None),
            cpu_quota_pct=num("TC_CPU_QUOTA_PCT", float, 0),
            unit_name=env.get("TC_UNIT_NAME") or None,
            input=env.get("TC_INPUT") or None,
            output=env.get("TC_OUTPUT") or None,
            output_tmp=env.get("TC_OUTPUT_TMP") or None,
            ack_wait=env.get("TC_ACK_WAIT", "1") != "0",
            final_sample=env.get("TC_FINAL_SAMPLE", "0") == "1",
            launch_path=env.get("TC_LAUNCH_PATH") or None,
            ts_taken=num("TC_TS_TAKEN"),
            ts_checked=num("TC_TS_CHECKED"),
            ts_bound=num("TC_TS_BOUND"),
            service=env.get("TC_SERVICE") == "1",
            stop_grace_s=(lambda g: 5.0 if g is None else g)(num("TC_STOP_GRACE_S", float, 0)),
            container=ctr.spec_from_env(env),
        )


def set_pdeathsig(sig: int, parent: int) -> bool:
    """Die with ``sig`` when the parent dies (``PR_SET_PDEATHSIG``); False when ``parent`` is already gone."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(sig))
    return os.getppid() == parent


def _int_if_whole(x: float | None) -> float | int | None:
    """Controller epoch ms arrive as text: keep them integers when they are."""
    return int(x) if x is not None and float(x).is_integer() else x


class _StderrTee(threading.Thread):
    """Copy the child's stderr to ours and keep its last bytes for the event's ``error``."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.tail: deque = deque()
        self.size = 0

    def run(self) -> None:
        """Copy until EOF (the application and everything it started closed its stderr)."""
        out = sys.stderr.buffer if hasattr(sys.stderr, "buffer") else None
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            if out is not None:
                with contextlib.suppress(OSError, ValueError):
                    out.write(chunk)
                    out.flush()
            self.tail.append(chunk)
            self.size += len(chunk)
            while self.size - len(self.tail[0]) >= STDERR_TAIL_BYTES:
                self.size -= len(self.tail.popleft())
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def text(self) -> str:
        """The last ``STDERR_TAIL_BYTES`` of the application's stderr, as text."""
        data = b"".join(self.tail)[-STDERR_TAIL_BYTES:]
        return data.decode("utf-8", errors="replace").strip()


def _file_size(p: str | None) -> int | None:
    if not p:
        return None
    try:
        return os.stat(p).st_size
    except OSError:
        return None


def _base_event(cfg: AdapterConfig) -> dict:
    ev = dict.fromkeys(EXEC_FIELDS)
    ev.update(kind="exec", trace_id=cfg.trace_id, attempt=cfg.attempt, node_id=cfg.node_id, profile=cfg.profile,
              cpu_units=cfg.cpu_units, ts_enqueue=cfg.ts_enqueue, ts_dispatch=cfg.ts_dispatch, binding=cfg.binding,
              binding_mechanism="none", input=cfg.input, output=cfg.output, argv=list(cfg.argv),
              bytes_in=_file_size(cfg.input), launch_path=cfg.launch_path, ts_taken=cfg.ts_taken,
              ts_checked=cfg.ts_checked, ts_bound=cfg.ts_bound,
              ts_forked=round(cfg.ts_forked, 3) if cfg.ts_forked is not None else None)
    return ev


def _child(cfg: AdapterConfig, cpus: list | None, shared: bind.SharedBinding | None, exec_argv: list,
           ts_w: int, err_w: int, parent: int) -> None:
    """Runs in the forked child; never returns (exec or ``_exit``)."""
    stage = "prepare the child"
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)  # a blocked mask would survive exec
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(err_w, 2)
        os.close(err_w)
        pid = os.getpid()
        if _LIBC is not None:  # the application dies with the adapter: never an unmeasured orphan
            # a container runtime's client gets SIGTERM instead: it forwards it to the container (a child of the
            # runtime's monitor, which SIGKILL of the client would leave running) and exits with it
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM if isinstance(shared, ctr.ContainerRun) else signal.SIGKILL)
            if os.getppid() != parent:
                os._exit(EXIT_PRE_EXEC)  # the adapter died before prctl took effect
        if cpus is not None:
            stage = f"bind to CPUs {cfg.cpuset}"
            os.sched_setaffinity(0, cpus)  # inherited by every thread created after exec
        if shared is not None:
            stage = f"join the task cgroup ({shared.mechanism})"
            shared.attach(pid)
        stage = f"write the PID sentinel in {cfg.pid_dir}"
        st = procfs.starttime(pid)
        sentinel.write_sentinel(cfg.pid_dir, {
            "trace_id": cfg.trace_id, "attempt": cfg.attempt, "node_id": cfg.node_id, "pid": pid,
            "starttime": st, "cgroup": shared.cgroup if shared else None, "ts_created": round(wall_ms(), 3)})
        ts_sentinel = wall_ms()
        os.write(ts_w, b"T" + _TS.pack(ts_sentinel, wall_ms(), mono_ms()))
        stage = f"execute {exec_argv[0]!r}"
        os.execvp(exec_argv[0], exec_argv)
    except BaseException as exc:  # noqa: BLE001 - any failure must reach the parent, then _exit
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        with contextlib.suppress(OSError):
            os.write(ts_w, b"E" + f"cannot {stage}: {reason}".encode()[:1000])
    os._exit(EXIT_PRE_EXEC)


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        b = os.read(fd, 4096)
        if not b:
            break
        chunks.append(b)
    os.close(fd)
    return b"".join(chunks)


def _collector_interval_ms(cfg: AdapterConfig) -> float | None:
    """Interval of this node's live collector, or None when none runs (then nothing to wait for)."""
    from tracekit.node.collector import running_collector  # local: keeps the adapter's start light

    info = running_collector(cfg.run_id, cfg.node_id)
    return info[1] if info else None


def _hold_for_ack(cfg: AdapterConfig, pid: int, starttime: int) -> bool:
    """Keep the zombie until the collector has sampled it, at most two intervals + ``HOLD_SLACK_MS``.

    Default: until it was sampled at least once (only short tasks wait). ``TC_FINAL_SAMPLE=1``: until
    it was sampled after its exit, so the last sample holds its final counters.
    """
    if not cfg.ack_wait:
        return False
    final = cfg.final_sample
    if sentinel.is_acked(cfg.pid_dir, pid, starttime, final):
        return True
    interval = _collector_interval_ms(cfg)
    if interval is None:
        return False
    deadline = time.monotonic() + (2 * interval + HOLD_SLACK_MS) / 1000
    while time.monotonic() < deadline:
        if sentinel.is_acked(cfg.pid_dir, pid, starttime, final):
            return True
        time.sleep(0.005)
    return False


def run(cfg: AdapterConfig) -> int:
    """Run the application once, write the ``exec`` event, return the exit code (see module doc)."""
    ev = _base_event(cfg)
    cpus: list | None = None
    shared: bind.SharedBinding | ctr.ContainerRun | None = None
    exec_argv = list(cfg.argv)
    try:
        if cfg.container is not None:  # the runtime's own flags bind it; measured from its parent cgroup
            shared = ctr.prepare(cfg.container, cfg.run_id, cfg.node_id, cfg.trace_id, cfg.attempt, cfg.binding,
                                 cfg.cpuset, cfg.cpu_weight, cfg.cpu_quota_pct, cfg.input, cfg.output_tmp)
            ev.update(binding_mechanism=shared.mechanism, cpuset=cfg.cpuset if cfg.binding == "exclusive" else None,
                      cpu_weight=shared.weight, cpu_quota_pct=shared.quota_pct, container_image=cfg.container.image)
            exec_argv = shared.argv_prefix + exec_argv
            if shared.note:
                print(f"adapter: warning: {shared.note}", file=sys.stderr)
        elif cfg.binding == "exclusive":
            if not cfg.cpuset:
                raise UsageError("TC_BINDING=exclusive needs TC_CPUSET (e.g. 0,1)")
            cpus = bind.parse_cpuset(cfg.cpuset)
            ev.update(binding_mechanism="affinity", cpuset=procfs.format_cpu_list(cpus))
        elif cfg.binding == "shared":
            shared = bind.prepare_shared(cfg.run_id, cfg.node_id, cfg.trace_id, cfg.attempt, cfg.cpu_weight,
                                         cfg.cpu_quota_pct, unit=cfg.unit_name)
            ev.update(binding_mechanism=shared.mechanism, cpu_weight=shared.weight, cpu_quota_pct=shared.quota_pct)
            exec_argv = shared.argv_prefix + exec_argv
            if shared.note:
                print(f"adapter: warning: {shared.note}", file=sys.stderr)
        Path(cfg.pid_dir).mkdir(parents=True, exist_ok=True)
    except (TracekitError, OSError) as exc:
        msg = str(exc) if isinstance(exc, TracekitError) else f"adapter setup failed: {exc}"
        return _finish_pre_exec(cfg, ev, shared, msg)

    ts_r, ts_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    parent = os.getpid()
    received: list[int] = []
    child: list[int] = []
    escalate: list = []

    def forward(signum, _frame):
        received.append(signum)
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child[0], signum)
            if cfg.service and len(received) == 1:  # SIGTERM: a stop; SIGINT: the worker gave up on it
                stop_timer(child[0])
            if cfg.parent_pid is not None and os.getppid() != cfg.parent_pid and not escalate:
                # our launcher died (PR_SET_PDEATHSIG sent this): nothing may outlive the worker, even an
                # application that ignores the signal
                escalate.append(threading.Timer(ORPHAN_GRACE_S, _kill_quietly, (child[0],)))
                escalate[0].daemon = True
                escalate[0].start()

    def stop_timer(pid: int) -> None:  # a service that outlives its stop grace is killed (docs/services.md)
        t = threading.Timer(cfg.stop_grace_s, _kill_quietly, (pid,))
        t.daemon = True
        t.start()
        escalate.append(t)

    # blocked across fork: a signal arriving meanwhile is delivered once the parent knows the child's pid
    # (forwarded), and in the child only after it restored the default handlers (it then dies of it)
    old = {s: signal.signal(s, forward) for s in FORWARDED}
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    pid = os.fork()
    if pid == 0:  # child
        os.close(ts_r)
        os.close(err_r)
        _child(cfg, cpus, shared, exec_argv, ts_w, err_w, parent)
    child.append(pid)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    os.close(ts_w)
    os.close(err_w)
    tee = _StderrTee(err_r)
    tee.start()
    try:
        data = _read_all(ts_r)
        container_id = procfs.container_id(pid)  # after exec (or exit): the container it runs in, if any
        exec_error = None
        if data[:1] == b"T" and len(data) >= 1 + _TS.size:
            ts_sentinel, ts_start, mono_start = _TS.unpack(data[1 : 1 + _TS.size])
            rest = data[1 + _TS.size :]
        else:  # failed before it could take the time
            ts_sentinel = ts_start = mono_start = None
            rest = data
        if rest[:1] == b"E":
            exec_error = rest[1:].decode(errors="replace")
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        mono_end = mono_ms()
        st = procfs.starttime(pid)  # the zombie still carries it
        if exec_error is None and st is not None:
            _hold_for_ack(cfg, pid, st)
        _, status, ru = os.wait4(pid, 0)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for t in escalate:
            t.cancel()
    tee.join(timeout=2.0)
    if st is not None:
        sentinel.remove_sentinel(cfg.pid_dir, pid, st)
    if isinstance(shared, ctr.ContainerRun):
        container_id = shared.container_id()
    ev["container_id"] = container_id
    if shared is not None and shared.cgroup:
        ev["cg_cpu_us"] = cgroupfs.cpu_usage_us(shared.cgroup)
        ev["cg_peak_kb"] = cgroupfs.memory_peak_kb(shared.cgroup)
        busy = shared.release()
        if busy:
            print(f"adapter: warning: task cgroup still has processes, left in place: {', '.join(busy)}",
                  file=sys.stderr)
    elif shared is not None:  # a systemd-run scope: stopped (binding.SharedBinding.release)
        shared.release()
    utime_ms, stime_ms = ru.ru_utime * 1000, ru.ru_stime * 1000
    ev.update(pid=pid, starttime=st, utime_ms=round(utime_ms, 3), stime_ms=round(stime_ms, 3),
              cpu_ms=round(utime_ms + stime_ms, 3), max_rss_kb=ru.ru_maxrss)
    if ts_start is None:
        now = round(wall_ms(), 3)
        ev.update(ts_start=now, ts_end=now)
    else:
        ev.update(ts_start=round(ts_start, 3), mono_start=round(mono_start, 3), mono_end=round(mono_end, 3),
                  ts_end=round(ts_start + (mono_end - mono_start), 3), ts_sentinel=round(ts_sentinel, 3))
    if exec_error is not None:
        code, sig = EXIT_PRE_EXEC, None
        error = exec_error
        print(f"adapter: error: {exec_error}", file=sys.stderr)
    elif os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        code = 128 + sig
        error = f"killed by signal {signal.Signals(sig).name}"
    else:
        sig, code = None, os.WEXITSTATUS(status)
        error = None if code == 0 else f"exit code {code}"
    ok = code == 0
    if exec_error is None and service_stopped(cfg.service, received, sig, code):
        ok, code, error = True, 0, None  # a service ends when it is stopped: that is its success
    if not ok:
        tail = tee.text()
        if tail and exec_error is None:
            error = f"{error}: {tail}"
    if received and error:
        error = f"{error} (after forwarding {', '.join(signal.Signals(s).name for s in received)})"
    ev.update(status="ok" if ok else "failed", exit_code=None if sig else code, signal=sig, error=error,
              bytes_out=_file_size(cfg.output_tmp or cfg.output))
    if not ok:
        _remove_tmp(cfg)
    _append_event(cfg, ev)
    return code


def service_stopped(service: bool, received: list[int], sig: int | None, code: int) -> bool:
    """A service that ended because it was stopped (SIGTERM forwarded, then its exit, SIGTERM's default death, or
    SIGKILL after the grace) counts as a success; anything else is judged like a batch task."""
    if not service or signal.SIGTERM not in received:
        return False
    return code == 0 or sig in (signal.SIGTERM, signal.SIGKILL) or code == 128 + signal.SIGTERM


def _kill_quietly(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def _append_event(cfg: AdapterConfig, ev: dict) -> None:
    try:
        append_line(cfg.event_log, ev)
    except OSError as exc:  # the task ran; say why its record is missing, in one line
        print(f"adapter: error: cannot append the exec event of {cfg.trace_id} to {cfg.event_log}: "
              f"{exc.strerror or exc}", file=sys.stderr)


def _remove_tmp(cfg: AdapterConfig) -> None:
    if cfg.output_tmp:
        with contextlib.suppress(OSError):
            os.unlink(cfg.output_tmp)


def _finish_pre_exec(cfg: AdapterConfig, ev: dict, shared: bind.SharedBinding | None, msg: str) -> int:
    if shared is not None:
        shared.release()
    now = round(wall_ms(), 3)
    ev.update(status="failed", exit_code=EXIT_PRE_EXEC, error=msg, ts_start=now, ts_end=now)
    _remove_tmp(cfg)
    _append_event(cfg, ev)
    print(f"adapter: error: {msg}", file=sys.stderr)
    return EXIT_PRE_EXEC


ENV_HELP = """environment (docs/internals.md):
  RUN_ID, NODE_ID                    identity (RUN_ID required; NODE_ID defaults to the hostname)
  TRACE_ID (required), ATTEMPT [1], PROFILE, CPU_UNITS, TS_ENQUEUE, TS_DISPATCH   the task
  TC_EVENT_LOG      events file [logs/$RUN_ID/<node>/events.jsonl]
  PROC_PID_DIR      sentinel folder [logs/$RUN_ID/pids]
  TC_BINDING        exclusive | shared | none [none]
  TC_CPUSET         exclusive: CPUs such as 0,1 or 0-3
  TC_CPU_WEIGHT     shared: CPUWeight [100 x CPU_UNITS]; TC_CPU_QUOTA_PCT shared: % of one CPU [unlimited]
  TC_UNIT_NAME      shared with systemd-run: the scope's unit name [tracekit-<run>.<node>.<trace>.a<n>.scope]
  TC_INPUT, TC_OUTPUT, TC_OUTPUT_TMP   files for bytes_in / bytes_out (TC_OUTPUT_TMP is deleted on failure)
  TC_ACK_WAIT       0 = never hold a short task's zombie for the collector [1]
  TC_FINAL_SAMPLE   1 = hold every task's zombie until the collector sampled it after exit [0]
  TRACEKIT_SHARED_MECHANISM  auto | systemd-run | cgroup-v2 | cgroup-v1 | none [auto]
  TC_CONTAINER_IMAGE, TC_CONTAINER_RUNTIME [podman], TC_CONTAINER_MEMORY   run the command in a container of
                    that image (podman or docker), bound by the runtime's flags (docs/containers.md)
exit code: the application's; 128+N if killed by signal N; 125 if the adapter failed before exec;
2 for a usage error (nothing ran, no event)."""


def ffmpeg_fixup(argv: list) -> list:
    """ffmpeg must never wait for a key on stdin: add ``-nostdin`` when the caller did not."""
    if argv and os.path.basename(argv[0]).startswith("ffmpeg") and "-nostdin" not in argv:
        return [argv[0], "-nostdin", *argv[1:]]
    return argv


LEGACY_ENV = ("CPUSET", "CPU_QUOTA", "CPU_WEIGHT", "UNIT_NAME", "TS_ENQUEUE", "STAGE")


def legacy_io(args: list) -> tuple[str | None, str | None]:
    """The input (after ``-i``) and output (the last non-option argument) of ffmpeg arguments, as the original
    adapter read them for bytes_in / bytes_out."""
    inp = out = None
    i = 0
    while i < len(args):
        if args[i] == "-i" and i + 1 < len(args):
            inp = args[i + 1]
            i += 1
        elif not args[i].startswith("-"):
            out = args[i]
        i += 1
    return inp, out


def legacy_call(args: list, env: dict) -> tuple[list, dict]:
    """The original adapter's call ``ffmpeg_wrapper.py <ffmpeg args>`` (no ``--``, no command name), with its
    environment (``CPUSET``, ``CPU_QUOTA``, ``CPU_WEIGHT``, ``UNIT_NAME``, ``TS_ENQUEUE``, ``STAGE``), turned into
    this adapter's: the argv ``ffmpeg <args>`` and the ``TC_*`` variables (docs/migrating.md).

    ``CPUSET`` -> exclusive binding (``TC_CPUSET``); else ``CPU_WEIGHT`` / ``CPU_QUOTA`` (percent) / ``UNIT_NAME``
    -> shared binding. A missing ``TRACE_ID`` gets a fresh UUID, as the original's. ``TS_ENQUEUE`` is read as is;
    ``STAGE`` belongs to the node (the collector writes it to node.json)."""
    import uuid

    out = dict(env)
    out.setdefault("TRACE_ID", str(uuid.uuid4()))
    if env.get("CPUSET"):
        out.update(TC_BINDING="exclusive", TC_CPUSET=env["CPUSET"])
        ignored = [k for k in ("CPU_QUOTA", "CPU_WEIGHT", "UNIT_NAME") if env.get(k)]
        if ignored:
            print(f"adapter: note: {', '.join(ignored)} not applied: CPUSET pins the task (exclusive binding)",
                  file=sys.stderr)
    elif any(env.get(k) for k in ("CPU_QUOTA", "CPU_WEIGHT", "UNIT_NAME")):
        out["TC_BINDING"] = "shared"
        for old, new in (("CPU_WEIGHT", "TC_CPU_WEIGHT"), ("CPU_QUOTA", "TC_CPU_QUOTA_PCT"),
                         ("UNIT_NAME", "TC_UNIT_NAME")):
            if env.get(old):
                out[new] = env[old]
    inp, outp = legacy_io(args)
    if inp and not out.get("TC_INPUT"):
        out["TC_INPUT"] = inp
    if outp and not out.get("TC_OUTPUT"):
        out["TC_OUTPUT"] = outp
    return ["ffmpeg", *args], out


def wrapper_main(args: list, prog: str, doc: str | None, app_fixup=None, ts_forked: float | None = None,
                 parent_pid: int | None = None) -> int:
    """Entry of the wrapper scripts: ``args`` = ``[--] <command> [args]``; ``app_fixup`` adjusts the command."""
    if args and args[0] in ("-h", "--help"):
        print(f"usage: {prog} [-h] -- <command> [args]\n\n{(doc or '').strip()}\n\n{ENV_HELP}")
        return 0
    if args and args[0] == "--":
        args = args[1:]
    elif args and args[0].startswith("-"):
        raise UsageError(f"unknown option {args[0]!r}: put the command after '--'")
    cfg = AdapterConfig.from_env(app_fixup(args) if app_fixup else args)
    if cfg.launch_path is not None:  # launched by the worker: the adapter core runs from here on
        cfg.ts_forked = wall_ms() if ts_forked is None else ts_forked
    cfg.parent_pid = parent_pid
    return run(cfg)
