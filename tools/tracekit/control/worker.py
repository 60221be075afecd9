"""The worker: register with a heartbeat, take placed tasks atomically, run each through the adapter, complete
them with fencing, recover its own keys when it (re)starts.

Lifecycle:
    start      refuse if this node's worker pidfile names a live process; write the pidfile and worker.json;
               ``register`` (Lua) reconciles q:<node>, running:<node>, cap, run_count and slot tokens
    heartbeat  a thread refreshes ``hb:<node>`` (TTL ``--heartbeat-ttl``, default 3 s) every second; when
               the node was recovered meanwhile it re-registers (its still-running attempts will be fenced)
    take       ``BLMOVE q:<node> running:<node>`` (blocks up to 1 s; no polling)
    run        validate the payload (invalid -> ``reject`` event + failed record), pick the binding
               (exclusive cpuset or shared weight), launch ``tools/adapters/<app>_wrapper.py -- argv``
    complete   ``complete`` (Lua): accepted only if this exact payload is still in running:<node>;
               accepted + success -> rename the tmp output onto the output; refused -> ``fenced`` event
    stop       first SIGINT/SIGTERM: take nothing new, wait for running tasks; second: forward it to them.
               Then ``leave`` (Lua): placed-not-started tasks go back to the head of q:pending.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis

from tracekit.control import payload
from tracekit.control.health import Health, guarded
from tracekit.control.launch import LauncherClient, LauncherUnavailable, launcher_enabled, spawn_adapter
from tracekit.control.lua import Scripts
from tracekit.control.profiles import load_profiles
from tracekit.control.redis_retry import RedisFatal, Retrier
from tracekit.control.service import HOST_ENV, ServiceWatch, advertised_host, service_env
from tracekit.control.task import Command, InvalidTask, Task, build_command, parse_task, tmp_output_for
from tracekit.core import paths
from tracekit.core.clock import redis_clock_offset, wall_ms
from tracekit.core.errors import Conflict, StepFailed, TracekitError, UsageError
from tracekit.core.jsonl import append_line
from tracekit.core.keys import Keys
from tracekit.core.schema import EXEC_FIELDS, FENCED_FIELDS, REJECT_FIELDS, WORKER_META_FIELDS
from tracekit.node.binding import fair_quotas, rebalance_shared, shared_capacity
from tracekit.node.container import env_for_profile as container_env
from tracekit.node.cpuset import allocate, check_requested
from tracekit.node.procfs import format_cpu_list, parse_cpu_list

log = logging.getLogger("worker")
ADAPTERS = paths.REPO_ROOT / "tools" / "adapters"
BEAT_EVERY_S = 1.0
RECONCILE_EVERY_S = 2.0  # how often the take loop compares running:<node> with what this worker holds


# ---- configuration ----


@dataclass
class WorkerConfig:
    """The worker's flags."""

    run_id: str
    node: str
    outputs: Path
    parallel: int = 0
    allocation_ratio: float = 1.0
    capacity_units: int = 0
    cpu_binding: str = "exclusive"
    cpuweight_per_vcpu: int = 100
    reset_capacity: bool = False
    clear_queue: bool = False
    heartbeat_ttl_ms: int = 3000
    exit_when_idle: bool = False  # tests: leave once nothing is placed or running for ~2 s


# ---- capacity, running tasks, pidfiles and stale outputs ----


def capacity_for(ratio: float, cores: int, units: int = 0) -> int:
    """Capacity units: ``units`` when > 0, else floor(ratio x logical cores)."""
    if units > 0:
        return units
    if not (ratio > 0 and math.isfinite(ratio)):
        raise UsageError("--allocation-ratio must be a positive number")
    cap = int(math.floor(ratio * cores + 1e-9))
    if cap < 1:
        raise UsageError(f"capacity would be 0: --allocation-ratio {ratio:g} x {cores} logical core(s) floors to 0; "
                         "raise the ratio or set --capacity-units")
    return cap


@dataclass
class Running:
    """One task attempt this worker is executing."""

    raw: str
    task: Task
    cmd: Command
    proc: subprocess.Popen | object  # a Popen, or a launch.LaunchedProc (same subset: pid, wait, returncode)
    cpus: list = field(default_factory=list)
    fallback: bool = False


def live_worker_pid(pid: int) -> bool:
    """``pid`` is a live worker.py process other than this one and its ancestors (pidfile check)."""
    if pid <= 0 or pid == os.getpid() or pid in {p.pid for p in psutil.Process().parents()}:
        return False
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and any("worker.py" in a for a in proc.cmdline())
    except psutil.Error:
        return False


def _remove_superseded_tmp(output: Path, trace_id: str, attempt: int) -> None:
    """Delete temporary outputs of this task's earlier attempts: their completion can never be accepted now.

    An adapter that outlived a SIGKILLed worker and exited 0 leaves its ``.part`` file (only the worker renames
    or deletes it); the accepted later attempt is the one place that knows it is garbage.
    """
    for a in range(1, attempt):
        with contextlib.suppress(OSError):
            tmp_output_for(output, trace_id, a).unlink(missing_ok=True)


def undeliverable(tmp: Path | None, output: Path | None) -> str | None:
    """Why the renaming of ``tmp`` onto ``output`` would fail (checked before a success is reported), or None."""
    if tmp is None or output is None or not tmp.exists():
        return None
    if output.is_dir() and not output.is_symlink():
        return f"{output} is a directory"
    if not os.access(output.parent, os.W_OK | os.X_OK):
        return f"cannot write in {output.parent}"
    return None


def signal_task(proc, sig: int, group: bool = False) -> None:
    """Signal a task's adapter (``group``: its whole session); through the launcher when it forked it."""
    if hasattr(proc, "client"):  # LaunchedProc: the launcher signals only a child it has not reaped yet
        proc.send_signal(sig, group)
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)


def task_env() -> dict:
    """The worker's environment minus what tasks must never see (the Redis password, maybe in the URL)."""
    env = dict(os.environ)
    for name in ("TRACEKIT_REDIS_PASSWORD", "TRACEKIT_REDIS_URL", "REDIS_URL"):
        env.pop(name, None)
    return env


def is_task_leader(p: psutil.Process) -> bool:
    """``p`` leads its own session, as every task the worker launches does (``start_new_session``)."""
    try:
        return os.getsid(p.pid) == p.pid
    except OSError:
        return False


def _ms(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


# ---- the worker ----


class Worker:
    """One worker process for one node."""

    def __init__(self, client: redis.Redis, keys: Keys, cfg: WorkerConfig) -> None:
        self.client, self.keys, self.cfg = client, keys, cfg
        self.scripts = Scripts(client, keys)
        self.instance = uuid.uuid4().hex[:12]
        self.stop = threading.Event()
        self.signals = 0
        paths.check_node_id(cfg.node)
        self.health = Health(client, keys, f"worker:{cfg.node}")
        self.retry = Retrier(log, health=self.health)  # completions and registration: retried until Redis answers
        self.take_retry = Retrier(log, self.stop, self.health)  # taking stops retrying once we are asked to stop
        self.beat_retry = Retrier(log, health=self.health)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{self.instance}"
        self.held: Counter = Counter()  # payloads (bytes) taken and not yet completed: reconciled with Redis
        self.orphans: list = []  # payloads found in running:<node> that no take returned (lost reply)
        self.next_reconcile = 0.0
        self.fatal: BaseException | None = None
        self.lock = threading.RLock()  # re-entrant: the signal handler may run while the main thread holds it
        self.running: dict[tuple[str, int], Running] = {}
        self.threads: list[threading.Thread] = []
        self.cores = sorted(os.sched_getaffinity(0))
        self.capacity = capacity_for(cfg.allocation_ratio, os.cpu_count() or 1, cfg.capacity_units)
        self.offset_ms = 0.0
        self.pidfile = paths.daemon_pidfile_path(cfg.run_id, cfg.node, "worker")
        self.events = paths.events_path(cfg.run_id, cfg.node)
        self.task_log = paths.daemon_log_path(cfg.run_id, cfg.node, "tasks")
        self.replaced = False
        self.launcher: LauncherClient | None = None

    # ---- registration, orphans, heartbeat ----

    def _claim_pidfile(self) -> None:
        try:
            old = int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            old = 0
        if live_worker_pid(old):
            raise Conflict(f"a worker for node {self.cfg.node} is already running (pid {old}, {self.pidfile}); "
                           "stop it first (make stop-node)")
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.pidfile.write_text(f"{os.getpid()}\n")

    def stop_orphans(self, timeout: float = 5.0) -> int:
        """Stop adapters that a previous, killed worker of this node left running; returns how many.

        ``register`` re-queues their attempts (attempt+1), so their completion can never be accepted: left alone
        they would burn CPU beside the new attempts (over-committing the node). SIGTERM lets the adapter forward
        the signal, record the attempt as failed and delete its temporary output.
        """
        found = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            if p.pid == os.getpid() or not is_task_leader(p):
                continue
            try:
                env = p.environ()
            except psutil.Error:
                continue
            # any checkout, any install path: a task this node's worker launched carries these in its environment
            if (env.get("RUN_ID") == self.cfg.run_id and env.get("NODE_ID") == self.cfg.node and env.get("TRACE_ID")
                    and env.get("TC_EVENT_LOG")):
                found.append(p)
                log.warning("stopping adapter pid %d of %s attempt %s left by a previous worker", p.pid,
                            env.get("TRACE_ID"), env.get("ATTEMPT"))
        for p in found:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(found, timeout=timeout)
        for p in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)  # adapters run in their own session: the group is the task
        return len(found)

    def stop_doomed(self, timeout: float = 10.0) -> None:
        """Stop every attempt still running here, after the control plane re-queued them (node declared dead).

        Their completion can never be accepted; left running they would burn CPU beside the tasks this node gets
        once it re-registers with its full capacity (over-commit). SIGTERM goes to the adapter, which forwards it
        and records the attempt; the completion is then refused and written as a ``fenced`` event.
        """
        with self.lock:
            procs = [r.proc for r in self.running.values()]
        for p in procs:
            signal_task(p, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if not self.running:
                    return
            time.sleep(0.05)
        for p in procs:  # an application that ignores SIGTERM: its whole session (the adapter's group)
            signal_task(p, signal.SIGKILL, group=True)

    def claim_node(self, wait_s: float | None = None) -> None:
        """Become the one worker of this node (owner token in Redis, whatever the logs root) or raise Conflict.

        A token left by a dead worker of this host is taken over at once; one held by a live worker (or by a
        worker of another host) is waited for up to the heartbeat TTL + 1 s, then refused with one line.
        """
        key = self.keys.owner(self.cfg.node)
        ttl = self.cfg.heartbeat_ttl_ms
        deadline = time.monotonic() + (ttl / 1000 + 1.0 if wait_s is None else wait_s)
        while True:
            ok, holder = self.retry(lambda: self.scripts.own(keys=[key], args=[self.token, ttl, ""]), "own")
            if int(ok) == 1:
                return
            host, _, rest = (holder or "").partition(":")
            pid = rest.partition(":")[0]
            if host == socket.gethostname() and pid.isdigit() and not live_worker_pid(int(pid)):
                ok, _ = self.retry(lambda h=holder: self.scripts.own(keys=[key], args=[self.token, ttl, h]), "own")
                if int(ok) == 1:
                    log.warning("took over node %s from a dead worker (%s)", self.cfg.node, holder)
                    return
                continue
            if time.monotonic() >= deadline:
                raise Conflict(f"a worker for node {self.cfg.node} is already running ({holder}, owner key {key}); "
                               "stop it first (make stop-node) or use another --node-id")
            time.sleep(0.2)

    def _release_node(self) -> None:
        key = self.keys.owner(self.cfg.node)
        with contextlib.suppress(redis.RedisError, OSError):
            if self.client.get(key) == self.token:
                self.client.delete(key)

    def register(self) -> None:
        """(Re)register: reconcile this node's keys in one atomic step and write worker.json."""
        mode = "1" if self.cfg.clear_queue else ("2" if self.cfg.reset_capacity else "0")
        info = {"cores": len(self.cores), "mem_mb": psutil.virtual_memory().total // 2**20,
                "host": socket.gethostname(), "pid": os.getpid(), "binding": self.cfg.cpu_binding,
                "allocation_ratio": self.cfg.allocation_ratio,
                "cpuweight_per_vcpu": self.cfg.cpuweight_per_vcpu, "run_id": self.cfg.run_id}
        flat = [str(x) for kv in info.items() for x in kv]
        back, failed, kept, cleared = self.retry(lambda: self.scripts.register(args=[
            self.cfg.node, self.instance, self.capacity, self.cfg.parallel, self.cfg.heartbeat_ttl_ms, mode, *flat]),
            "register")
        log.info("registered node %s: capacity %d, parallel %d, binding %s; reconciled: %d kept placed, %d requeued, "
                 "%d failed, %d cleared", self.cfg.node, self.capacity, self.cfg.parallel, self.cfg.cpu_binding, kept,
                 back, failed, cleared)
        try:
            off = redis_clock_offset(self.client)
            self.offset_ms = off.offset_ms
            clock = off.as_dict()
        except redis.RedisError:
            clock = None
        meta = {"node_id": self.cfg.node, "cpu_cores": len(self.cores), "mem_mb": info["mem_mb"],
                "capacity": self.capacity, "allocation_ratio": self.cfg.allocation_ratio,
                "parallel": self.cfg.parallel, "binding": self.cfg.cpu_binding,
                "cpuweight_per_vcpu": self.cfg.cpuweight_per_vcpu, "clock": clock, "started_ms": round(wall_ms(), 3)}
        path = paths.worker_meta_path(self.cfg.run_id, self.cfg.node)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({k: meta[k] for k in WORKER_META_FIELDS}, indent=1) + "\n")
        os.replace(tmp, path)

    def _heartbeat(self) -> None:
        while not self.done_event.is_set():
            try:
                owned, holder = self.beat_retry(lambda: self.scripts.own(
                    keys=[self.keys.owner(self.cfg.node)], args=[self.token, self.cfg.heartbeat_ttl_ms, ""]), "beat")
                if int(owned) == 0:
                    log.error("another worker (%s) owns node %s now; stopping", holder, self.cfg.node)
                    self.replaced = True
                    self.stop.set()
                    self.stop_doomed()
                    return
                ok = self.beat_retry(lambda: self.scripts.beat(args=[self.cfg.node, self.instance,
                                                                     self.cfg.heartbeat_ttl_ms]), "beat")
                if ok == 0:
                    holder = self.client.hget(self.keys.node_info(self.cfg.node), "instance")
                    if holder:
                        log.error("another worker instance (%s) registered node %s; stopping", holder, self.cfg.node)
                        self.replaced = True
                        self.stop.set()
                    else:
                        with self.lock:
                            n = len(self.running)
                        log.warning("node %s was recovered while unreachable; stopping its %d attempt(s) still "
                                    "running (re-queued meanwhile: they will be fenced), then re-registering",
                                    self.cfg.node, n)
                        self.stop_doomed()
                        self.register()
                        if self.stop.is_set():
                            self._drain()
            except RedisFatal:
                raise  # the daemon stops loudly (guarded thread)
            except redis.RedisError as exc:  # the beat retrier logs the outage; the TTL tells the scheduler
                log.debug("heartbeat failed: %s", exc)
            except Exception as exc:  # the heartbeat thread must outlive any local error (disk full, ...)
                log.error("heartbeat: %s: %s", exc.__class__.__name__, exc)
            self.done_event.wait(BEAT_EVERY_S)

    # ---- events ----

    def _event(self, fields: tuple, **values) -> None:
        rec = {k: values.get(k) for k in fields}
        append_line(self.events, rec)

    def _ctl_ms(self) -> int:
        return int(round(wall_ms() + self.offset_ms))

    # ---- one task: take, launch, wait, complete ----

    def _reject(self, raw: str, exc: Exception, tid: str | None, attempt: int, profile: str | None) -> None:
        reason = str(exc)
        tid = tid or payload.bad_key(raw)  # as the Lua steps name it
        log.warning("rejected payload (%s): %s", tid, reason)
        self._event(REJECT_FIELDS, kind="reject", trace_id=tid, attempt=attempt, node_id=self.cfg.node,
                    profile=profile, ts=round(wall_ms(), 3), reason=reason, payload_excerpt=raw[:200])
        self._complete(raw, tid, attempt, "failed", {"status": "rejected", "reason": reason})

    def _take(self) -> str | bytes | None:
        """BLMOVE q:<node> -> running:<node> (1 s); the payload as str, or as bytes when it is not UTF-8.

        Read undecoded: a decoding client would raise on a non-UTF-8 payload *after* Redis moved it, leaving it
        stuck in running:<node> and killing the take loop.
        """
        from redis.client import NEVER_DECODE

        got = self.client.execute_command("BLMOVE", self.keys.queue(self.cfg.node), self.keys.running(self.cfg.node),
                                          "LEFT", "RIGHT", 1.0, **{NEVER_DECODE: True})
        if got is None:
            return None
        with self.lock:
            self.held[got] += 1
        try:
            return got.decode()
        except UnicodeDecodeError:
            return got

    def _release(self, raw: str | bytes) -> None:
        """The completion of ``raw`` returned (accepted, dup or fenced): this worker holds it no more."""
        b = raw if isinstance(raw, bytes) else raw.encode()
        with self.lock:
            if self.held.get(b, 0) > 1:
                self.held[b] -= 1
            else:
                self.held.pop(b, None)

    def reconcile(self) -> int:
        """Compare running:<node> with what this worker holds; payloads nobody holds are orphans (a BLMOVE that
        Redis executed but whose reply was lost): they are handed to the take loop as if just taken, so they
        run and complete (their capacity comes back). Called from the take loop only (no take in flight).
        Returns the number of orphans found."""
        from redis.client import NEVER_DECODE

        with self.lock:
            held = Counter(self.held)
        items = self.take_retry(lambda: self.client.execute_command(
            "LRANGE", self.keys.running(self.cfg.node), 0, -1, **{NEVER_DECODE: True}), "reconcile")
        orphans = Counter(items or []) - held
        for raw, n in orphans.items():
            for _ in range(n):
                log.warning("found a payload in %s that no take returned (lost reply?): running it (%s)",
                            self.keys.running(self.cfg.node), raw[:80].decode(errors="replace"))
                with self.lock:
                    self.held[raw] += 1
                try:
                    self.orphans.append(raw.decode())
                except UnicodeDecodeError:
                    self.orphans.append(raw)
        return sum(orphans.values())

    def _next(self) -> str | bytes | None:
        """The next payload: an orphan found by :meth:`reconcile`, else a take (BLMOVE, up to 1 s)."""
        if not self.orphans and time.monotonic() >= self.next_reconcile:
            self.next_reconcile = time.monotonic() + RECONCILE_EVERY_S
            self.reconcile()
        if self.orphans:
            return self.orphans.pop(0)
        return self.take_retry(self._take, "take")

    def _drain(self) -> None:
        """First signal: mark the node draining (no new placement) and hand back its placed-not-started tasks."""
        back, _ = self.retry(lambda: self.scripts.drain(args=[self.cfg.node, self.instance]), "drain")
        if int(back) > 0:
            log.info("draining: %d placed task(s) went back to q:pending", back)

    def _crashed(self, exc: BaseException) -> None:
        """A daemon thread died: stop loudly (the main loop raises once the other threads are done)."""
        if self.fatal is None:
            self.fatal = exc
        self.stop.set()

    def _reject_bytes(self, raw: bytes) -> None:
        _, tid, reason = payload.verdict(raw)  # rule utf8; the trace_id when it can be read
        tid = tid or payload.bad_key(raw)
        log.warning("rejected payload (%s): %s", tid, reason)
        self._event(REJECT_FIELDS, kind="reject", trace_id=tid, attempt=1, node_id=self.cfg.node, profile=None,
                    ts=round(wall_ms(), 3), reason=reason, payload_excerpt=raw[:200].decode(errors="replace"))
        rec = {"trace_id": tid, "attempt": 1, "node_id": self.cfg.node, "by": "worker", "ts_done": self._ctl_ms(),
               "status": "rejected", "reason": reason}
        # the exact bytes go back to the Lua step, so it finds (and removes) them in running:<node>
        self.retry(lambda: self.scripts.complete(args=[self.cfg.node, raw, tid, 1, "failed",
                                                       json.dumps(rec, separators=(",", ":"))]), "complete")
        self._release(raw)

    def _complete(self, raw: str, tid: str, attempt: int, outcome: str, extra: dict) -> str:
        rec = {"trace_id": tid, "attempt": attempt, "node_id": self.cfg.node, "by": "worker", "ts_done": self._ctl_ms()}
        rec.update(extra)
        out = self.retry(lambda: self.scripts.complete(args=[self.cfg.node, raw, tid, attempt, outcome,
                                                              json.dumps(rec, separators=(",", ":"))]), "complete")
        self._release(raw)
        return out

    def _binding_env(self, task: Task) -> tuple[dict, list[int]]:
        """The binding of a task: its own ``cpuset`` (exclusive), ``cpu_weight`` / ``cpu_quota`` / ``unit_name``
        (shared) when the payload names them (the original Tracekit's task fields, docs/migrating.md), else the
        worker's choice. A cpuset outside this node's cores or overlapping a running task's raises InvalidTask."""
        env = {"TC_BINDING": self.cfg.cpu_binding}
        cpus: list[int] = []
        own = task.extra
        if self.cfg.cpu_binding == "exclusive":
            with self.lock:
                held = {k: r.cpus for k, r in self.running.items()}
                if own.get("cpuset") is not None:
                    cpus = parse_cpu_list(own["cpuset"])
                    why = check_requested(cpus, self.cores, held)
                    if why:
                        raise InvalidTask(f"refused the task's own {why}", trace_id=task.trace_id)
                else:
                    cpus = allocate(self.cores, held, task.cpu_units)
            env["TC_CPUSET"] = format_cpu_list(cpus)
            ignored = [k for k in ("cpu_quota", "cpu_weight", "unit_name") if own.get(k) is not None]
            if ignored:
                log.warning("%s: %s apply in shared binding only; exclusive binding caps it by its cpuset",
                            task.trace_id, ", ".join(ignored))
        else:
            weight = own.get("cpu_weight")
            env["TC_CPU_WEIGHT"] = str(int(weight) if weight is not None else
                                       self.cfg.cpuweight_per_vcpu * task.cpu_units)
            if own.get("cpu_quota") is not None:
                env["TC_CPU_QUOTA_PCT"] = str(int(own["cpu_quota"]))
            elif self.cfg.cpu_binding == "shared":
                # its max-min quota with it running, so its cgroup / systemd scope starts with it (the rebalance
                # right after the launch gives the others theirs; without this the adapter could read the
                # pending quotas before that rebalance wrote them and start unlimited: docs/containers.md)
                key = (task.trace_id, task.attempt)
                shared, reserved = self._sharing()
                demands = {k: 100.0 * units for k, units in {**shared, key: task.cpu_units}.items()}
                quota = fair_quotas(demands, shared_capacity(len(self.cores), reserved))[key]
                env["TC_CPU_QUOTA_PCT"] = f"{quota:.3f}"
            if own.get("unit_name") is not None:
                env["TC_UNIT_NAME"] = str(own["unit_name"])
            if own.get("cpuset") is not None:
                log.warning("%s: its cpuset %s is not applied in shared binding (no core pinning)", task.trace_id,
                            own["cpuset"])
        return env, cpus

    def _sharing(self) -> tuple[dict, float]:
        """The running tasks the max-min sharing divides the CPU among ((trace_id, attempt) -> cpu_units), and the
        CPU % held by tasks with their own ``cpu_quota``: those keep what they asked for, the others share what
        is left. A task naming its own ``unit_name`` keeps the scope it was started with (its quota is not
        rebalanced: the scope's name is not the worker's)."""
        shared: dict = {}
        reserved = 0.0
        with self.lock:
            for key, r in self.running.items():
                if r.task.extra.get("cpu_quota") is not None:
                    reserved += float(r.task.extra["cpu_quota"])
                elif r.task.extra.get("unit_name") is None:
                    shared[key] = r.task.cpu_units
        return shared, reserved

    def _rebalance(self) -> None:
        if self.cfg.cpu_binding != "shared":
            return
        shared, reserved = self._sharing()
        try:
            rebalance_shared(self.cfg.run_id, self.cfg.node, shared, len(self.cores), reserved)
        except Exception as exc:  # binding trouble must never stop the worker
            log.warning("rebalance_shared failed: %s", exc)

    def _duplicate(self, task: Task) -> InvalidTask | None:
        """A payload whose trace_id already runs here with the same or a later attempt: refused (recorded under a
        bad-<sha1> key, so the running attempt keeps its trace_id), never started beside it: one process, one
        cpuset per trace_id. An *earlier* attempt still running here is doomed (the control plane re-queued it,
        its completion can never be accepted, e.g. it was taken just before this node was declared dead): it is
        stopped first, then the new attempt runs."""
        with self.lock:
            clash = next((a for (t, a) in self.running if t == task.trace_id and a >= task.attempt), None)
            older = [(a, r.proc) for (t, a), r in self.running.items() if t == task.trace_id and a < task.attempt]
        if clash is not None:
            return InvalidTask(f"duplicate trace_id {task.trace_id}: attempt {clash} of it is already running on "
                               f"{self.cfg.node}")
        for a, proc in older:
            log.warning("stopping %s attempt %d: attempt %d of it arrived (the earlier one will be fenced)",
                        task.trace_id, a, task.attempt)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10.0
        while older and time.monotonic() < deadline:
            with self.lock:
                older = [x for x in older if (task.trace_id, x[0]) in self.running]
            time.sleep(0.05)
        for _, proc in older:  # ignores SIGTERM: its whole session
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        return None

    def handle(self, raw: str, taken_ms: float | None = None) -> None:
        """Validate and launch one taken payload (never raises for a bad payload).

        The payload gate runs first (``task.parse_task``), before anything else reads the payload: no parser sees
        a payload that is too big, too deep or not UTF-8."""
        task = None
        try:
            task = parse_task(raw)
            dup = self._duplicate(task)
            if dup is not None:
                self._reject(raw, dup, None, task.attempt, task.profile)
                return
            cmd = build_command(task, paths.inputs_root(), self.cfg.outputs)
            if cmd.input_path is not None and not cmd.input_path.is_file():
                raise InvalidTask(f"input {task.input} does not exist under {paths.inputs_root()}",
                                  trace_id=task.trace_id)
        except InvalidTask as exc:  # recorded under the payload's own trace_id once the gate could read it
            if task is not None:
                self._reject(raw, exc, task.trace_id, task.attempt, task.profile)
            else:
                self._reject(raw, exc, exc.trace_id, exc.attempt, exc.profile)
            return
        except TracekitError as exc:  # e.g. a broken profiles file: same treatment, the worker goes on
            _, tid, _ = payload.verdict(raw)
            self._reject(raw, exc, tid, 1, None)
            return
        ts_checked = wall_ms()
        try:
            bind_env, cpus = self._binding_env(task)
        except InvalidTask as exc:  # the payload's own cpuset does not fit this node now: refused with the reason
            self._reject(raw, exc, task.trace_id, task.attempt, task.profile)
            return
        profile = load_profiles()[task.profile]
        app = profile["app"]
        wrapper = ADAPTERS / ("cmd_wrapper.py" if app == "command" else "ffmpeg_wrapper.py")
        env = task_env()  # tasks never talk to Redis: keep the password (maybe in the URL) away from them
        env.update(bind_env)
        env.update(container_env(profile))  # TC_CONTAINER_* (docs/containers.md)
        env.update({"RUN_ID": self.cfg.run_id, "NODE_ID": self.cfg.node, "TRACE_ID": task.trace_id,
                    "ATTEMPT": str(task.attempt), "PROFILE": task.profile, "CPU_UNITS": str(task.cpu_units),
                    "TS_ENQUEUE": str(task.ts_enqueue), "TS_DISPATCH": str(task.ts_dispatch or ""),
                    "TC_EVENT_LOG": str(self.events), "PROC_PID_DIR": str(paths.pid_dir(self.cfg.run_id)),
                    "TC_INPUT": str(cmd.input_path or ""), "TC_OUTPUT": str(cmd.output_path or ""),
                    "TC_OUTPUT_TMP": str(cmd.tmp_output_path or "")})
        if app == "service":
            env.update(service_env(profile))
        if cmd.tmp_output_path is not None:
            cmd.tmp_output_path.parent.mkdir(parents=True, exist_ok=True)
        self.task_log.parent.mkdir(parents=True, exist_ok=True)
        fallback = not wrapper.exists()
        launcher = self.launcher if self.launcher is not None and self.launcher.alive and not fallback else None
        env.update({"TC_TS_TAKEN": _ms(taken_ms), "TC_TS_CHECKED": _ms(ts_checked),
                    "TC_LAUNCH_PATH": "launcher" if launcher is not None else "subprocess"})
        proc = None
        if launcher is not None:
            try:
                env["TC_TS_BOUND"] = _ms(wall_ms())
                t0 = wall_ms()
                proc = launcher.launch("command" if app == "service" else app, cmd.argv, env, self.task_log)
            except LauncherUnavailable as exc:
                log.warning("launcher unavailable (%s): starting %s through a fresh adapter process", exc,
                            task.trace_id)
                env["TC_LAUNCH_PATH"] = "subprocess"
            except OSError as exc:
                self._finish_failed_launch(raw, task, cmd, str(exc))
                return
        if proc is None:
            proc = self._popen(raw, task, cmd, wrapper, fallback, env, cpus)
            if proc is None:
                return
            t0 = proc.t0
        run = Running(raw, task, cmd, proc, cpus, fallback)
        with self.lock:
            self.running[(task.trace_id, task.attempt)] = run
        log.info("started %s attempt %d (%s, %s) pid %d%s", task.trace_id, task.attempt, task.profile,
                 bind_env.get("TC_CPUSET") or bind_env.get("TC_CPU_WEIGHT"), proc.pid,
                 " [no adapter: direct launch]" if fallback else "")
        self._rebalance()
        th = threading.Thread(target=guarded(lambda: self._wait(run, t0), f"task-{task.trace_id}", log, self._crashed),
                              daemon=True, name=f"task-{task.trace_id}")
        th.start()
        self.threads.append(th)
        if app == "service":
            self._watch_service(run)

    def _watch_service(self, run: Running) -> None:
        """A service task: publish its address and readiness, stop it when asked (control/service.py)."""
        task = run.task
        prof = load_profiles()[task.profile]
        host = os.environ.get(HOST_ENV) or advertised_host(self.client.connection_pool.connection_kwargs.get("host"))
        key = (task.trace_id, task.attempt)
        watch = ServiceWatch(self.client, self.keys, self.cfg.node, task.trace_id, task.attempt, prof,
                             float(task.params.get("seconds") or prof["seconds"]), run.cmd.port, host,
                             paths.services_path(self.cfg.run_id, self.cfg.node),
                             done=lambda: self.running.get(key) is not run, worker_stopping=self.stop,
                             terminate=lambda sig: signal_task(run.proc, sig))
        th = threading.Thread(target=guarded(watch.run, f"service-{task.trace_id}", log, self._crashed), daemon=True,
                              name=f"service-{task.trace_id}")
        th.start()
        self.threads.append(th)

    def _popen(self, raw: str, task: Task, cmd: Command, wrapper: Path, fallback: bool, env: dict,
               cpus: list) -> subprocess.Popen | None:
        """The subprocess path: one fresh adapter interpreter (or the bare command when no adapter exists)."""
        with open(self.task_log, "ab") as out:
            try:
                env["TC_TS_BOUND"] = _ms(wall_ms())
                t0 = wall_ms()
                if fallback:
                    pre = (lambda c=tuple(cpus): os.sched_setaffinity(0, c)) if cpus else None
                    proc = subprocess.Popen(cmd.argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                            preexec_fn=pre, start_new_session=True)
                else:
                    proc = spawn_adapter([sys.executable, str(wrapper), "--", *cmd.argv], env=env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out)
            except OSError as exc:
                self._finish_failed_launch(raw, task, cmd, str(exc))
                return None
        proc.t0 = t0
        return proc

    def _start_launcher(self) -> None:
        """The warm launcher (tracekit.node.launcher), unless TRACEKIT_LAUNCHER=0; without it: subprocess path."""
        if not launcher_enabled():
            log.info("TRACEKIT_LAUNCHER=0: every task starts through a fresh adapter process")
            return
        client = LauncherClient()
        if client.start(task_env(), paths.daemon_log_path(self.cfg.run_id, self.cfg.node, "launcher")):
            self.launcher = client

    def _launch_error(self, raw: str, exc: Exception) -> None:
        try:
            env = payload.check(raw)
            tid, attempt = env.trace_id, env.attempt
        except payload.InvalidPayload as bad:
            tid, attempt = bad.trace_id or payload.bad_key(raw), bad.attempt
        log.error("could not start %s: %s", tid, exc)
        with self.lock:
            run = self.running.get((tid, attempt))
            if run is not None and run.raw == raw:  # only this payload's own entry, never another process's
                del self.running[(tid, attempt)]
        self._complete(raw, tid, attempt, "failed", {"status": "failed", "reason": f"worker could not start it: {exc}"})

    def _finish_failed_launch(self, raw: str, task: Task, cmd: Command, reason: str) -> None:
        log.warning("could not launch %s: %s", task.trace_id, reason)
        self._complete(raw, task.trace_id, task.attempt, "failed", {"status": "failed", "reason": reason})

    def _wait(self, run: Running, t0: float) -> None:
        try:
            self._wait_inner(run, t0)
        except Exception as exc:  # never leave a task in running:<node> because a log write failed
            log.error("task %s: %s", run.task.trace_id, exc)
            with self.lock:
                self.running.pop((run.task.trace_id, run.task.attempt), None)
            self._complete(run.raw, run.task.trace_id, run.task.attempt, "failed",
                           {"status": "failed", "reason": f"worker error after the run: {exc}"})

    def _wait_inner(self, run: Running, t0: float) -> None:
        task, cmd = run.task, run.cmd
        m0 = time.monotonic_ns()
        if run.fallback:
            _, status, ru = os.wait4(run.proc.pid, 0)
            run.proc.returncode = os.waitstatus_to_exitcode(status)
            rc = run.proc.returncode
            t1 = t0 + (time.monotonic_ns() - m0) / 1e6
            self._event(EXEC_FIELDS, kind="exec", trace_id=task.trace_id, attempt=task.attempt, node_id=self.cfg.node,
                        pid=run.proc.pid, profile=task.profile, cpu_units=task.cpu_units, ts_enqueue=task.ts_enqueue,
                        ts_dispatch=task.ts_dispatch, ts_start=round(t0, 3), ts_end=round(t1, 3),
                        status="ok" if rc == 0 else "failed", exit_code=rc if rc >= 0 else None,
                        signal=-rc if rc < 0 else None,
                        cpu_ms=round((ru.ru_utime + ru.ru_stime) * 1000, 3), utime_ms=round(ru.ru_utime * 1000, 3),
                        stime_ms=round(ru.ru_stime * 1000, 3), max_rss_kb=ru.ru_maxrss,
                        binding=self.cfg.cpu_binding,
                        binding_mechanism="affinity" if run.cpus else "none",
                        cpuset=format_cpu_list(run.cpus) if run.cpus else None,
                        input=str(cmd.input_path) if cmd.input_path else None,
                        output=str(cmd.output_path) if cmd.output_path else None,
                        error=None if rc == 0 else f"exit status {rc}", argv=cmd.argv)
        else:
            rc = run.proc.wait()
        with self.lock:
            self.running.pop((task.trace_id, task.attempt), None)
        self._rebalance()
        tmp = cmd.tmp_output_path
        problem = undeliverable(tmp, cmd.output_path) if rc == 0 else None
        if problem:
            log.warning("%s attempt %d exited 0 but its output cannot be delivered: %s", task.trace_id,
                        task.attempt, problem)
            outcome, extra = "failed", {"status": "failed", "exit_code": 0,
                                        "reason": f"output not delivered: {problem}"}
        elif rc == 0:
            outcome, extra = "done", {"status": "ok", "exit_code": 0}
        else:
            why = f"killed by signal {-rc}" if rc < 0 else (f"killed by signal {rc - 128}" if rc > 128 else
                                                             f"exit code {rc}")
            outcome, extra = "failed", {"status": "failed", "exit_code": rc, "reason": f"application failed: {why}"}
        verdict = self._complete(run.raw, task.trace_id, task.attempt, outcome, extra)
        if verdict in ("ok", "dup"):
            if outcome == "done" and tmp is not None and tmp.exists():
                os.replace(tmp, cmd.output_path)
            elif tmp is not None:
                tmp.unlink(missing_ok=True)
            if cmd.output_path is not None:
                _remove_superseded_tmp(cmd.output_path, task.trace_id, task.attempt)
            log.info("%s %s attempt %d (exit %s)", outcome, task.trace_id, task.attempt, rc)
        else:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            reason = ("completion refused: another payload with this trace_id was recorded first (duplicate)"
                      if verdict == "duplicate" else
                      "completion refused: the task was recovered and re-queued while this attempt ran")
            self._event(FENCED_FIELDS, kind="fenced", trace_id=task.trace_id, attempt=task.attempt,
                        node_id=self.cfg.node, ts=round(wall_ms(), 3), reason=reason)
            log.warning("fenced %s attempt %d: %s", task.trace_id, task.attempt, reason)

    # ---- signals and main loop ----

    def _on_signal(self, signum, _frame) -> None:
        self.signals += 1
        if self.signals == 1:
            log.info("signal %d: taking no new task, waiting for %d running", signum, len(self.running))
            self.stop.set()
            return
        with self.lock:
            procs = [r.proc for r in self.running.values()]
        log.info("signal %d again: forwarding it to %d running task(s)", signum, len(procs))
        for p in procs:
            signal_task(p, signum)

    def run(self) -> int:
        """Serve until stopped; returns the exit code."""
        self._claim_pidfile()
        self.done_event = threading.Event()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._on_signal)
            signal.signal(signal.SIGTERM, self._on_signal)
        claimed = False
        try:
            self.claim_node()
            claimed = True
            self.health.clear()  # a record left by a killed predecessor of this node
            self.stop_orphans()
            self._start_launcher()
            self.register()
            hb = threading.Thread(target=guarded(self._heartbeat, "heartbeat", log, self._crashed), daemon=True,
                                  name="heartbeat")
            hb.start()
            idle_since = time.monotonic()
            while not self.stop.is_set():
                try:
                    raw = self._next()
                except redis.RedisError:  # only once stopping: the take retrier retries everything else
                    continue
                if isinstance(raw, bytes):  # not UTF-8: it can never be a task; reject it, keep serving
                    self._reject_bytes(raw)
                    idle_since = time.monotonic()
                    continue
                if raw is not None:
                    try:
                        self.handle(raw, wall_ms())
                    except Exception as exc:  # output folder not writable, a bug: fail the task, keep serving
                        if not isinstance(exc, (OSError, ValueError)):
                            log.exception("unexpected error handling a payload")
                        self._launch_error(raw, exc)
                    idle_since = time.monotonic()
                elif self.cfg.exit_when_idle:
                    with self.lock:
                        busy = bool(self.running)
                    if busy:
                        idle_since = time.monotonic()
                    elif time.monotonic() - idle_since > 2.0:
                        self.stop.set()
            if not self.replaced and self.fatal is None:
                self._drain()
            for th in self.threads:
                th.join()
            if self.fatal is not None:
                if isinstance(self.fatal, TracekitError):
                    raise self.fatal
                raise StepFailed(f"worker {self.cfg.node} stopped: a thread died: {self.fatal.__class__.__name__}: "
                                 f"{self.fatal} (traceback in the log)")
            if not self.replaced:
                back, failed = self.retry(lambda: self.scripts.leave(args=[self.cfg.node, self.instance]), "leave")
                if back or failed:
                    log.info("left the pool: %d placed task(s) went back to q:pending", back)
            self.done_event.set()
            self.health.clear()
            log.info("worker %s stopped", self.cfg.node)
            return 0
        finally:
            self.done_event.set()
            if self.launcher is not None:
                self.launcher.close()
            if claimed and not self.replaced:
                self._release_node()
            try:
                if self.pidfile.read_text().split()[0] == str(os.getpid()):
                    self.pidfile.unlink()
            except (OSError, IndexError):
                pass
