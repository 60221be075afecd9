"""``make chaos``: a fault-injection run on the emulated cluster that proves nothing is lost.

A :class:`tracekit.cluster.emulation.Cluster` (Redis with AOF on) runs ``total`` tiny synthetic ffmpeg tasks on
``nodes`` emulated nodes. While they run, a fault thread injects, one at a time:

    worker     SIGKILL one node's worker (a node with running tasks when there is one), wait 0.3-4.5 s
               (sometimes longer than the heartbeat TTL, so the scheduler recovers the node first),
               restart it
    scheduler  SIGKILL the central scheduler, wait 0.2-2 s, restart it
    redis      stop redis-server (SIGTERM: the AOF is flushed), wait 0.5-2 s, start it on the same port
    cut        take one node off the network (its veth down) for longer than the heartbeat TTL, so the
               scheduler declares it dead and re-queues its tasks, then heal it (its late completions
               must be fenced). Without network namespaces the worker is frozen (SIGSTOP/SIGCONT)
               instead, and the report says so.
    rediserr   Redis answers with error replies for 1-3 s: over maxmemory (OOM), min-replicas-to-write
               (NOREPLICAS on every write) or an ACL denying EVALSHA/EVAL/BLMOVE (NOPERM); the daemons back
               off (the calls per second per daemon are recorded) and every daemon is healthy again after
    payload    a payload storm: malformed payloads (NaN/1e400, deep nesting, huge, not UTF-8, wrong shapes,
               bad fields, unknown profile, duplicates) pushed straight into q:pending and into a busy node's
               queue; each must end as one failed record with a reason, no daemon may die

The first round injects every kind once (random order), later faults are random until every task has
finished. Each fault is one line in ``logs/$RUN_ID/chaos.jsonl`` and on screen. At the end the harness
checks (:func:`final_checks`) the control-plane state *before* stopping anything, then stops the
cluster, runs ``tools/parse_cts.py --strict`` and checks the CTS and the outputs. The report goes to
the screen and ``logs/$RUN_ID/chaos_report.json``; the exit status is 0 only if every check passes.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tracekit.cluster.emulation import (
    CONTROLLER,
    Cluster,
    ClusterConfig,
    env_setting,
    log_tail,
    require_scripts,
    script,
)
from tracekit.control.profiles import PROFILES_ENV
from tracekit.core import paths
from tracekit.core.errors import EXIT_FAILURE, Conflict, UsageError
from tracekit.core.jsonl import append_line, read_jsonl

FAULTS = ("worker", "scheduler", "redis", "cut", "rediserr", "payload")
# rediserr: Redis answers with error replies for a while (mode -> how to switch it on and off)
REDIS_ERROR_MODES = {
    "oom": (("CONFIG", "SET", "maxmemory", "1"), ("CONFIG", "SET", "maxmemory", "0")),
    "noreplicas": (("CONFIG", "SET", "min-replicas-to-write", "1"), ("CONFIG", "SET", "min-replicas-to-write", "0")),
    "noperm": (("ACL", "SETUSER", "default", "-evalsha", "-eval", "-blmove"), ("ACL", "SETUSER", "default", "+@all")),
}
STORM_SIZE = 60  # payloads per storm (Injector._payload)
PROFILE = "chaos-synth"
HEARTBEAT_TTL_S = 3.0  # the worker's default --heartbeat-ttl


# ---- configuration, check results, the synthetic profile and batches ----


@dataclass
class ChaosConfig:
    """Settings of one chaos run (``make chaos`` variables / flags)."""

    run_id: str | None = None  # None: a new ``chaos-...`` id
    nodes: int = 4
    total: int = 300
    seed: int = 20250901
    seconds: float = 0.2  # length of each synthetic clip (160x120)
    gap_s: tuple[float, float] = (1.0, 3.0)  # pause between two faults
    cut_s: float = 2 * HEARTBEAT_TTL_S  # how long a node stays cut off (> heartbeat TTL)
    duration_s: float = 120.0  # feed the tasks in batches over about this long (0: all at once)
    max_attempts: int = 5  # scheduler --max-attempts
    timeout_s: float = 540.0  # the tasks must finish within this
    faults: tuple[str, ...] | None = None  # fixed sequence (tests); None: every kind once, then random
    netns: str | None = None  # "auto" | "0" | "1"
    ratio: float = 1.0
    plots: bool = True
    progress: bool = True


@dataclass
class Check:
    """One verdict of the final report."""

    name: str
    ok: bool
    detail: str
    problems: list[str] = field(default_factory=list)


def profile_def(seconds: float) -> dict:
    """The tiny synthetic task: 160x120 test pattern, ``seconds`` long, one thread, one capacity unit."""
    return {PROFILE: {"app": "ffmpeg-synth", "cpu_units": 1, "threads": 1, "scale": "160x120", "codec": "libx264",
                      "preset": "ultrafast", "crf": 35, "seconds": seconds}}


def batch_sizes(total: int, duration_s: float, gap_s: tuple[float, float]) -> list[int]:
    """Split ``total`` tasks into batches, one per fault cycle, so feeding spans about ``duration_s``.

    A cycle (feed, fault, gap) lasts the mean gap plus ~3 s of fault; ``duration_s`` 0 = one batch.
    """
    cycle = (gap_s[0] + gap_s[1]) / 2 + 3.0
    n = max(1, min(total, int(round(duration_s / cycle)))) if duration_s > 0 else 1
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


# ---- safe Redis reads and waits during faults ----


def _safe(fn, default=None):
    """A Redis read during an outage yields ``default`` instead of an exception (the harness keeps going)."""
    import redis

    try:
        return fn()
    except (redis.RedisError, OSError):
        return default


ABORT = threading.Event()  # set when the run is interrupted: recovery waits end at once, restores still happen


def _wait(pred, timeout: float, step: float = 0.1) -> float | None:
    """Seconds until ``pred()`` held, or None after ``timeout`` (or when the run is aborted)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and not ABORT.is_set():
        if _safe(pred, False):
            return time.monotonic() - t0
        time.sleep(step)
    return None


# ---- fault log ----


class FaultLog:
    """chaos.jsonl + live lines (through tqdm.write so the progress bar stays intact)."""

    def __init__(self, rid: str, start_mono: float, write) -> None:
        self.path = paths.chaos_log_path(rid)
        self.t0 = start_mono
        self.write = write
        self.records: list[dict] = []
        self.lock = threading.Lock()

    def __call__(self, kind: str, node: str | None, phase: str, **info) -> dict:
        from tracekit.core.clock import wall_ms

        rec = {"ts": int(wall_ms()), "t_s": round(time.monotonic() - self.t0, 2), "fault": kind, "node": node,
               "phase": phase, **info}
        with self.lock:
            append_line(self.path, rec)
            self.records.append(rec)
        extra = " ".join(f"{k}={v}" for k, v in info.items())
        self.write(f"chaos: +{rec['t_s']:6.1f}s {kind:9} {node or '':10} {phase:8} {extra}")
        return rec


# ---- fault injector (one thread: feeds batches, injects worker/scheduler/redis/cut faults) ----


class Injector:
    """The fault thread: injects faults one at a time until told to stop (after its mandatory first round)."""

    def __init__(self, cluster: Cluster, cfg: ChaosConfig, fault_log: FaultLog, all_done: threading.Event) -> None:
        self.cluster, self.cfg, self.fault_log, self.all_done = cluster, cfg, fault_log, all_done
        self.rng = random.Random(cfg.seed)
        self.client = cluster.client()
        self.expected_down: set[tuple[str, str]] = set()  # processes the harness killed on purpose
        self.counts: Counter = Counter()
        self.skipped: list[str] = []
        self.errors: list[str] = []
        self.batch = 0
        self.fed = 0
        self.fatal: str | None = None  # the feed failed: the run cannot finish
        self.storms = 0
        self.storm_sent = 0  # payloads pushed by payload storms: one failed record each
        self.thread = threading.Thread(target=self._run, name="chaos-faults", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    def _sequence(self):
        """The mandatory first round (every kind once, or the fixed sequence), then random kinds."""
        first = list(self.cfg.faults) if self.cfg.faults is not None else self.rng.sample(FAULTS, len(FAULTS))
        yield from first
        while self.cfg.faults is None:
            yield self.rng.choice(FAULTS)

    def _run(self) -> None:
        batches = batch_sizes(self.cfg.total, self.cfg.duration_s, self.cfg.gap_s)
        kinds = self._sequence()
        mandatory = len(self.cfg.faults) if self.cfg.faults is not None else len(FAULTS)
        step = 0
        while not ABORT.is_set():
            # fed from this thread, so a dispatcher never runs while Redis is being restarted
            if batches and not self._feed(batches.pop(0)):
                return
            if self.all_done.is_set() and not batches and step >= mandatory:
                return
            kind = next(kinds, None)
            if (kind is None and not batches) or ABORT.is_set():
                return
            if kind is not None:
                try:
                    getattr(self, f"_{kind}")()
                    self.counts[kind] += 1
                except Exception as exc:  # a fault that could not be injected is reported, the run goes on
                    self.errors.append(f"{kind}: {exc}")
                    self.fault_log(kind, None, "error", error=str(exc)[:200])
            step += 1
            self.all_done.wait(self.rng.uniform(*self.cfg.gap_s))

    def _feed(self, n: int) -> bool:
        """Enqueue ``n`` more tasks with the real dispatcher (trace ids continue the run's counter)."""
        self.batch += 1
        argv = [sys.executable, str(script("dispatcher")), "--inputs", str(paths.inputs_root()), "--mix",
                f"{PROFILE}=1", "--total", str(n), "--seed", str(self.cfg.seed + self.batch), "--no-progress",
                "--run-id", self.cluster.cfg.run_id]
        self.cluster.start_controller_process("dispatcher", argv)
        code = self.cluster.sup.wait_exit(CONTROLLER, "dispatcher", 120)
        if code != 0:
            tail = log_tail(self.cluster.sup.get(CONTROLLER, "dispatcher").log)
            self.fatal = f"dispatcher exited with {code}: {tail}"
            self.errors.append(self.fatal)
            return False
        self.fed += n
        return True

    def _busy_node(self) -> str:
        """A node with running tasks (faults there exercise recovery and fencing), else a random one."""
        busy: list[str] = []
        deadline = time.monotonic() + 3.0
        while not busy and time.monotonic() < deadline and not self.all_done.is_set():
            busy = [n for n in self.cluster.node_ids
                    if _safe(lambda n=n: self.client.llen(self.cluster.keys.running(n)), 0)]
            if not busy:
                time.sleep(0.05)
        return self.rng.choice(busy or self.cluster.node_ids)

    def _registered(self, node: str, old_instance: str | None) -> bool:
        k = self.cluster.keys
        inst = self.client.hget(k.node_info(node), "instance")
        return bool(inst) and inst != old_instance and bool(self.client.exists(k.heartbeat(node)))

    # ---- the faults ----

    def _worker(self) -> None:
        node = self._busy_node()
        k = self.cluster.keys
        old = _safe(lambda: self.client.hget(k.node_info(node), "instance"))
        running = _safe(lambda: self.client.llen(k.running(node)), 0)
        down = round(self.rng.uniform(0.3, 1.5 * HEARTBEAT_TTL_S), 2)
        self.expected_down.add((node, "worker"))
        self.cluster.kill(node, "worker", signal.SIGKILL)
        self.fault_log("worker", node, "killed", signal="SIGKILL", running=running, down_s=down)
        time.sleep(down)
        reaped = _safe(lambda: self.client.zscore(k.nodes, node) is None, False)
        self.cluster.restart(node, "worker")
        self.expected_down.discard((node, "worker"))
        back = _wait(lambda: self._registered(node, old), 30)
        self.fault_log("worker", node, "restored", reaped_before_restart=reaped,
                  back_s=None if back is None else round(back, 2))

    def _scheduler(self) -> None:
        k = self.cluster.keys
        self.expected_down.add((CONTROLLER, "scheduler"))
        self.cluster.kill(CONTROLLER, "scheduler", signal.SIGKILL)
        down = round(self.rng.uniform(0.2, 2.0), 2)
        self.fault_log("scheduler", CONTROLLER, "killed", signal="SIGKILL", down_s=down)
        time.sleep(down)
        proc = self.cluster.restart(CONTROLLER, "scheduler")
        self.expected_down.discard((CONTROLLER, "scheduler"))
        back = _wait(lambda: f":{proc.pid}:" in (self.client.get(k.scheduler_lock) or ""), 30)
        self.fault_log("scheduler", CONTROLLER, "restored", back_s=None if back is None else round(back, 2))

    def _redis(self) -> None:
        srv = self.cluster.redis
        if srv is None:
            self.skipped.append("redis: an external Redis (REDIS_URL) is not restarted by the harness")
            self.fault_log("redis", None, "skipped", reason="external Redis")
            return
        down = round(self.rng.uniform(0.5, 2.0), 2)
        srv.stop()  # SIGTERM: redis-server flushes the AOF before it exits
        self.fault_log("redis", None, "stopped", down_s=down)
        time.sleep(down)
        t = time.monotonic()
        srv.start(timeout=30)  # same port, same data dir: the AOF replays the queues
        if self.cluster.sup is not None and hasattr(self.cluster.sup, "adopt") and srv.proc is not None:
            self.cluster.sup.adopt(srv.proc.pid)  # a crashed harness must not leave the new server behind
        up = time.monotonic() - t
        k = self.cluster.keys
        # recovered = every worker beat again since the restart: the AOF replays hb:<node> with what was left of
        # its TTL (<= TTL - down_s), a fresh beat sets it back above that
        fresh_ms = (HEARTBEAT_TTL_S - 0.5) * 1000
        seen: set[str] = set()  # nodes beat at different phases: each is back once seen fresh

        def all_beat() -> bool:
            seen.update(n for n in self.cluster.node_ids if self.client.pttl(k.heartbeat(n)) > fresh_ms)
            return len(seen) == len(self.cluster.node_ids)
        beats = _wait(all_beat, 30, 0.05)
        self.fault_log("redis", None, "restored", up_s=round(up, 2), heartbeats_back_s=None if beats is None
                  else round(beats, 2))

    def _rediserr(self) -> None:
        srv = self.cluster.redis
        if srv is None:
            self.skipped.append("rediserr: an external Redis (REDIS_URL) is not reconfigured by the harness")
            self.fault_log("rediserr", None, "skipped", reason="external Redis")
            return
        mode = self.rng.choice(sorted(REDIS_ERROR_MODES))
        on, off = REDIS_ERROR_MODES[mode]
        down = round(self.rng.uniform(1.0, 3.0), 2)
        admin = srv.client()

        def calls() -> int:
            return sum(int(v.get("calls", 0)) + int(v.get("rejected_calls", 0)) + int(v.get("failed_calls", 0))
                       for v in admin.info("commandstats").values())
        c0, t0 = calls(), time.monotonic()
        admin.execute_command(*on)
        try:
            self.fault_log("rediserr", None, "refused", mode=mode, down_s=down)
            time.sleep(down)
        finally:
            admin.execute_command(*off)
        daemons = len(self.cluster.node_ids) + 1  # the Redis clients that loop: workers and the scheduler
        rate = (calls() - c0) / (time.monotonic() - t0) / daemons
        back = _wait(lambda: self.client.hlen(self.cluster.keys.health) == 0, 30, 0.1)
        self.fault_log("rediserr", None, "restored", mode=mode, calls_per_s_per_daemon=round(rate, 1),
                       healthy_back_s=None if back is None else round(back, 2))

    def _payload(self) -> None:
        """A payload storm into q:pending and a busy node's queue (see :func:`storm_payloads`)."""
        node = self._busy_node()
        k = self.cluster.keys
        self.storms += 1
        raws = storm_payloads(self.rng, STORM_SIZE, f"storm{self.storms}")
        half = len(raws) // 2
        self.client.rpush(k.pending, *raws[:half])
        self.client.rpush(k.queue(node), *raws[half:])
        self.client.lpush(k.wake, "1")
        self.storm_sent += len(raws)
        self.fault_log("payload", node, "pushed", pending=half, node_queue=len(raws) - half)
        settled = _wait(lambda: storm_records(self.client, k) >= self.storm_sent, 30)
        self.fault_log("payload", node, "restored", recorded_s=None if settled is None else round(settled, 2))

    def _cut(self) -> None:
        node = self._busy_node()
        k = self.cluster.keys
        running = _safe(lambda: self.client.llen(k.running(node)), 0)
        old = _safe(lambda: self.client.hget(k.node_info(node), "instance"))
        if self.cluster.emulated:
            self.cluster.cut(node)
            how = "veth down"
        else:  # no namespaces: freeze the worker instead (no heartbeat; its tasks keep running)
            self.cluster.kill(node, "worker", signal.SIGSTOP)
            how = "SIGSTOP (no network namespaces)"
            self.skipped.append(f"cut emulated by SIGSTOP of {node}'s worker: no network namespaces")
        t0 = time.monotonic()
        self.fault_log("cut", node, "cut", how=how, running=running)
        detected = _wait(lambda: self.client.zscore(k.nodes, node) is None, max(30.0, self.cfg.cut_s * 3))
        rest = max(0.0, self.cfg.cut_s - (time.monotonic() - t0))
        time.sleep(rest + (1.0 if detected is not None else 0.0))
        length = time.monotonic() - t0
        if self.cluster.emulated:
            self.cluster.heal(node)
        else:
            self.cluster.kill(node, "worker", signal.SIGCONT)
        back = _wait(lambda: self._registered(node, None) and self.client.zscore(k.nodes, node) is not None, 30)
        self.fault_log("cut", node, "healed", cut_s=round(length, 2),
                  declared_dead_after_s=None if detected is None else round(detected, 2),
                  rejoined_s=None if back is None else round(back, 2), old_instance_kept=_safe(
                      lambda: self.client.hget(k.node_info(node), "instance") == old))


# ---- payload storms ----


def storm_payloads(rng: random.Random, n: int, tag: str) -> list[bytes]:
    """``n`` payloads that must never run: each breaks a rule of the payload gate or names an unknown profile;
    some repeat an earlier one (duplicates). Their readable trace_ids start with ``tag``."""
    out: list[bytes] = []
    for i in range(n):
        tid = f"{tag}-{i}"
        d = {"trace_id": tid, "profile": PROFILE, "cpu_units": 1, "ts_enqueue": 1, "attempt": 1}
        kind = rng.choice(["nan", "big", "deep", "bytes", "shape", "units", "profile", "control", "dup"])
        if kind == "dup" and out:
            out.append(rng.choice(out))
            continue
        if kind == "nan":
            p = json.dumps(d).replace('"ts_enqueue": 1', f'"ts_enqueue": {rng.choice(["NaN", "Infinity", "1e400"])}')
        elif kind == "big":
            p = json.dumps({**d, "pad": "x" * 70_000})
        elif kind == "deep":
            p = json.dumps(d)[:-1] + ', "x": ' + "[" * 995 + "]" * 995 + "}"
        elif kind == "bytes":  # not UTF-8
            out.append(json.dumps(d).encode().replace(b'"attempt"', b'"\xffattempt"'))
            continue
        elif kind == "shape":
            p = json.dumps(rng.choice([[d], "x", None, {"payload": d}]))
        elif kind == "units":
            p = json.dumps({**d, "cpu_units": rng.choice([0, -1, 1.5, 5000])})
        elif kind == "profile":
            p = json.dumps({**d, "profile": "no-such-profile"})
        else:  # a raw control character (json.dumps would escape it)
            out.append(json.dumps(d).encode()[:-1] + b', "note": "a\x01b"}')
            continue
        out.append(p.encode())
    return out


def storm_records(client, keys) -> int:
    """Failed records of payload storms: under a storm trace_id or a ``bad-<sha1>`` key."""
    return sum(1 for f in client.hkeys(keys.failed) if f.startswith(("storm", "bad-")))


def _task_records(client, keys) -> int:
    """done + failed records of dispatched tasks (payload storms' records left out)."""
    return client.hlen(keys.done) + client.hlen(keys.failed) - storm_records(client, keys)


def check_storms(failed: dict, injector: Injector) -> Check:
    """Every storm payload ended as one failed record with a reason; none ran."""
    mine = {t: r for t, r in failed.items() if t.startswith(("storm", "bad-"))}
    problems = []
    if len(mine) != injector.storm_sent:
        problems.append(f"{injector.storm_sent} storm payload(s) pushed, {len(mine)} failed record(s)")
    problems += [f"{t}: no reason" for t, r in mine.items() if not r.get("reason")][:5]
    return Check("payload storms accounted for", not problems,
                 f"{injector.storms} storm(s), {injector.storm_sent} payloads, {len(mine)} failed with a reason",
                 problems)


# ---- following the run ----


def _tqdm_write(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stdout)
    sys.stdout.flush()


def follow(cluster: Cluster, injector: Injector, total: int, cfg: ChaosConfig, all_done: threading.Event) -> list[str]:
    """Progress bar until every task has a done/failed record; returns unexpected daemon deaths."""
    from tqdm import tqdm

    client = cluster.client()
    k = cluster.keys
    deadline = time.monotonic() + cfg.timeout_s
    daemons = [(n, name) for n in cluster.node_ids for name in ("collector", "worker")] + [(CONTROLLER, "scheduler")]
    deaths: list[str] = []
    tty = sys.stdout.isatty()
    last = (-1, 0.0)
    with tqdm(total=total, desc="chaos", unit="task", dynamic_ncols=True, file=sys.stdout,
              disable=not cfg.progress) as bar:
        while True:
            finished = _safe(lambda: _task_records(client, k))
            if finished is not None:
                failed = _safe(lambda: client.hlen(k.failed), 0)
                bar.n = min(total, finished)
                bar.set_postfix_str(f"failed={failed} faults={sum(injector.counts.values())}", refresh=False)
                if tty or bar.n != last[0] or time.monotonic() - last[1] > 10:
                    bar.refresh()
                    last = (bar.n, time.monotonic())
                if finished >= total:
                    all_done.set()
                    return deaths
            if injector.fatal:
                all_done.set()
                deaths.append(injector.fatal)
                return deaths
            for key in daemons:
                p = cluster.sup.procs.get(key)
                if p is not None and not p.alive() and key not in injector.expected_down:
                    time.sleep(0.3)  # the injector may be between its kill and its bookkeeping
                    if p.alive() or key in injector.expected_down:
                        continue
                    deaths.append(f"{p.label} exited with {p.returncode}: {log_tail(p.log)}")
                    _tqdm_write(f"chaos: UNEXPECTED {deaths[-1]}; restarting it")
                    cluster.restart(*key)
            if time.monotonic() > deadline:
                all_done.set()
                deaths.append(f"timeout: the tasks did not finish within {cfg.timeout_s:g} s")
                return deaths
            time.sleep(0.5)


# ---- checks after the run ----


def node_state(cluster: Cluster) -> dict:
    """Per node cap / cap_total / run_count / queue lengths, plus q:pending and free slot tokens."""
    c = cluster.client()
    k = cluster.keys
    out: dict = {"pending": c.llen(k.pending), "slots": c.llen(k.slots), "nodes": {}}
    for n in cluster.node_ids:
        cap, total, rc = c.mget(k.cap(n), k.cap_total(n), k.run_count(n))
        out["nodes"][n] = {"cap": cap, "cap_total": total, "run_count": rc, "queued": c.llen(k.queue(n)),
                           "running": c.llen(k.running(n)), "registered": c.zscore(k.nodes, n) is not None}
    return out


def quiesce(cluster: Cluster, timeout: float = 30.0) -> dict:
    """Wait until every queue is empty and every node idle (late completions settled); the state then."""
    def idle() -> bool:
        st = node_state(cluster)
        return st["pending"] == 0 and all(v["registered"] and v["queued"] == 0 and v["running"] == 0
                                          and v["run_count"] == "0" for v in st["nodes"].values())
    _wait(idle, timeout, 0.2)
    return node_state(cluster)


def check_state(state: dict) -> Check:
    """Every node: cap == cap_total, run_count == 0, nothing queued or running; no slot token; q:pending empty."""
    problems = []
    for n, v in state["nodes"].items():
        if not v["registered"]:
            problems.append(f"{n} is not registered at the end")
        if v["cap"] != v["cap_total"] or v["cap"] is None:
            problems.append(f"{n}: cap {v['cap']} != cap_total {v['cap_total']}")
        if v["run_count"] != "0":
            problems.append(f"{n}: run_count {v['run_count']}")
        if v["queued"] or v["running"]:
            problems.append(f"{n}: {v['queued']} queued, {v['running']} in running:{n}")
    if state["pending"]:
        problems.append(f"q:pending holds {state['pending']} task(s)")
    if state["slots"]:
        problems.append(f"{state['slots']} slot token(s) left in slots:available (cap-only run)")
    caps = ", ".join(f"{n} {v['cap']}/{v['cap_total']}" for n, v in state["nodes"].items())
    return Check("node state", not problems, f"cap/cap_total {caps}; run_count 0; queues empty", problems)


def check_records(done: dict, failed: dict, dispatched: list[str], max_attempts: int) -> Check:
    """Redis: every dispatched trace_id is done xor failed; a failure carries its reason."""
    problems = []
    both = sorted(set(done) & set(failed))
    lost = [t for t in dispatched if t not in done and t not in failed]
    if both:
        problems.append(f"{len(both)} trace_id(s) both done and failed: {both[:5]}")
    if lost:
        problems.append(f"{len(lost)} trace_id(s) lost (no done/failed record): {lost[:5]}")
    noreason = [t for t, r in failed.items() if not r.get("reason")]
    if noreason:
        problems.append(f"{len(noreason)} failed without a reason: {noreason[:5]}")
    gave_up = sum(1 for r in failed.values() if "attempt" in str(r.get("reason", "")))
    detail = (f"{len(dispatched)} dispatched: {len(done)} done, {len(failed)} failed ({gave_up} after "
              f"{max_attempts} attempts), {len(lost)} lost; max attempt of a done task "
              f"{max((r.get('attempt', 1) for r in done.values()), default=0)}")
    return Check("every task done or failed", not problems, detail, problems)


def check_cts(invocations: list[dict], done: dict, failed: dict) -> Check:
    """CTS: exactly one ok invocation per done trace_id (the accepted attempt), none for a failed one."""
    ok = defaultdict(list)
    for i in invocations:
        if i.get("status") == "ok":
            ok[i["trace_id"]].append(i)
    problems = []
    for tid, rec in done.items():
        got = ok.get(tid, [])
        if len(got) != 1:
            problems.append(f"{tid}: {len(got)} ok invocations")
        elif got[0].get("attempt") != rec.get("attempt") or got[0].get("node_id") != rec.get("node_id"):
            problems.append(f"{tid}: ok invocation is attempt {got[0].get('attempt')} on {got[0].get('node_id')}, "
                            f"accepted was attempt {rec.get('attempt')} on {rec.get('node_id')}")
    for tid in failed:
        if ok.get(tid):
            problems.append(f"{tid}: failed in Redis but {len(ok[tid])} ok invocation(s) in CTS")
    fenced = sum(1 for i in invocations if i.get("status") == "fenced")
    retried = len({i["trace_id"] for i in invocations if (i.get("attempt") or 1) > 1})
    return Check("exactly one success per trace_id", not problems,
                 f"{len(invocations)} invocations: {sum(len(v) for v in ok.values())} ok, {fenced} fenced, "
                 f"{sum(1 for i in invocations if i.get('status') == 'failed')} failed; {retried} task(s) re-ran",
                 problems[:20])


DONE_LINE = re.compile(r"\bdone (\S+) attempt (\d+) \(exit 0\)")


def check_outputs(rid: str, nodes: list[str], invocations: list[dict], done: dict) -> Check:
    """Outputs: each done task's final file exists, is its accepted attempt's file, was renamed once; no .part."""
    problems = []
    renames: dict[str, set] = defaultdict(set)
    for n in nodes:
        log = paths.daemon_log_path(rid, n, "worker")
        if log.exists():
            for m in DONE_LINE.finditer(log.read_text(errors="replace")):
                renames[m.group(1)].add((n, int(m.group(2))))
    twice = {t: sorted(v) for t, v in renames.items() if len(v) > 1}
    if twice:
        problems.append(f"{len(twice)} output(s) written by more than one attempt: {list(twice.items())[:3]}")
    accepted = {(i["trace_id"], i.get("attempt")): i for i in invocations if i.get("status") == "ok"}
    out_dir = paths.outputs_root() / rid
    for tid, rec in done.items():
        i = accepted.get((tid, rec.get("attempt")))
        out = Path(i["output"]) if i and i.get("output") else None
        if out is None or not out.is_file():
            problems.append(f"{tid}: final output missing ({out})")
        elif i.get("bytes_out") is not None and out.stat().st_size != i["bytes_out"]:
            problems.append(f"{tid}: {out.name} has {out.stat().st_size} bytes, its accepted attempt wrote "
                            f"{i['bytes_out']}")
    finals = [p for p in out_dir.rglob("*") if p.is_file() and not p.name.startswith(".")] if out_dir.exists() else []
    parts = [p for p in out_dir.rglob(".*.part*")] if out_dir.exists() else []
    if parts:
        problems.append(f"{len(parts)} stray temporary output(s): {[p.name for p in parts[:5]]}")
    if len(finals) != len(done):
        problems.append(f"{len(finals)} final output file(s) for {len(done)} done task(s)")
    return Check("outputs written once", not problems,
                 f"{len(finals)} final outputs, {len(parts)} .part file(s), {len(twice)} renamed twice", problems[:20])


def check_daemons(deaths: list[str], injector: Injector) -> Check:
    problems = list(deaths) + [f"could not inject {e}" for e in injector.errors]
    missing = [f for f in (injector.cfg.faults or FAULTS) if not injector.counts.get(f)]  # FAULTS=...: only those asked
    if missing:
        problems.append(f"fault kinds never injected: {', '.join(missing)}")
    counts = ", ".join(f"{f} {injector.counts.get(f, 0)}" for f in FAULTS)
    return Check("faults injected, no unexpected death", not problems, f"faults: {counts}", problems)


# ---- report ----


def recovery_stats(records: list[dict]) -> dict[str, str]:
    """Median / max of each recovery time in chaos.jsonl, per fault kind."""
    vals: dict[str, list[float]] = defaultdict(list)
    for r in records:
        for key in ("back_s", "heartbeats_back_s", "declared_dead_after_s", "rejoined_s", "healthy_back_s"):
            if isinstance(r.get(key), (int, float)):
                vals[f"{r['fault']} {key}"].append(float(r[key]))
    return {k: f"median {statistics.median(v):.2f} s, max {max(v):.2f} s (n={len(v)})" for k, v in sorted(vals.items())}


def run_parse(rid: str, plots: bool) -> tuple[Check, str]:
    """``tools/parse_cts.py --strict`` as the user would run it (no Redis settings in its environment)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEKIT_REDIS") and k != "REDIS_URL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(paths.REPO_ROOT / "tools"), os.environ.get("PYTHONPATH")]))
    argv = [sys.executable, str(script("parse")), "--run-id", rid, "--strict", "--quiet"]
    if not plots:
        argv.append("--no-plots")
    p = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    out = (p.stdout + p.stderr).strip()
    (paths.controller_dir(rid) / "parse.log").write_text(out + "\n")
    verdict = next((ln for ln in out.splitlines() if ln.startswith("audit:")), out.splitlines()[-1] if out else "")
    problems = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("FAIL")]
    return Check("audit (parse_cts.py --strict)", p.returncode == 0, verdict[:160], problems), out


def print_report(checks: list[Check], stats: dict[str, str], elapsed: float, rid: str, notes: list[str]) -> None:
    width = max(len(c.name) for c in checks)
    print(f"\nchaos: RUN_ID={rid}, {elapsed:.0f} s")
    print(f"  {'check':{width}}  verdict  detail")
    for c in checks:
        print(f"  {c.name:{width}}  {'PASS' if c.ok else 'FAIL':7}  {c.detail}")
        for p in c.problems[:8]:
            print(f"  {'':{width}}           - {p}")
    if stats:
        print("  recovery times:")
        for k, v in stats.items():
            print(f"    {k:32} {v}")
    for n in notes:
        print(f"  note: {n}")
    print(f"  faults: {paths.chaos_log_path(rid)}; report: {paths.chaos_report_path(rid)}; "
          f"audit: {paths.cts_dir(rid) / 'audit_report.md'}")
    print(f"chaos: {'PASS' if all(c.ok for c in checks) else 'FAIL'}")


# ---- the whole run ----


def run_chaos(cfg: ChaosConfig) -> int:
    """The whole chaos run; 0 when every check passes, 1 otherwise."""
    from tracekit.cluster.setup import new_run_id

    t_start = time.monotonic()
    require_scripts(["collector", "worker", "scheduler", "dispatcher", "parse"])
    rid = paths.check_id("RUN_ID", cfg.run_id) if cfg.run_id else new_run_id("chaos")
    run_dir = paths.run_dir(rid)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise Conflict(f"logs/{rid} already holds a run: choose another RUN_ID")
    run_dir.mkdir(parents=True, exist_ok=True)
    prof_file = run_dir / "chaos_profiles.json"
    prof_file.write_text(json.dumps(profile_def(cfg.seconds), indent=1) + "\n")
    old_prof = os.environ.get(PROFILES_ENV)
    os.environ[PROFILES_ENV] = str(prof_file)  # every process of the cluster inherits it
    print(f"chaos: RUN_ID={rid}; {cfg.nodes} nodes, {cfg.total} tasks of {cfg.seconds:g} s (160x120), seed {cfg.seed},"
          f" max attempts {cfg.max_attempts}, cut {cfg.cut_s:g} s (heartbeat TTL {HEARTBEAT_TTL_S:g} s)", flush=True)
    ccfg = ClusterConfig(run_id=rid, nodes=cfg.nodes, ratio=cfg.ratio, netns_mode=cfg.netns, redis_appendonly=True,
                         scheduler_args=["--max-attempts", str(cfg.max_attempts)], grace_s=10.0)
    cl = Cluster(ccfg)
    checks: list[Check] = []
    notes: list[str] = []
    all_done = threading.Event()
    inj: Injector | None = None
    try:
        cl.start()
        print(("chaos: cluster: " if cl.emulated else "chaos: FALLBACK: ") + cl.describe(), flush=True)
        for n in cl.node_ids:
            cl.start_node_processes(n)
        cl.wait_nodes_registered()
        cl.start_scheduler()
        flog = FaultLog(rid, t_start, _tqdm_write)
        inj = Injector(cl, cfg, flog, all_done)
        inj.start()
        deaths = follow(cl, inj, cfg.total, cfg, all_done)
        inj.join(120)
        st = quiesce(cl)
        client = cl.client()
        done = {t: json.loads(v) for t, v in client.hgetall(cl.keys.done).items()}
        failed = {t: json.loads(v) for t, v in client.hgetall(cl.keys.failed).items()}
        checks.append(check_state(st))
        checks.append(check_daemons(deaths, inj))
        checks.append(check_storms(failed, inj))
        failed = {t: r for t, r in failed.items() if not t.startswith(("storm", "bad-"))}  # the dispatched tasks'
        notes += inj.skipped
    finally:
        if inj is not None and inj.thread.is_alive():  # interrupted or failed: let the current fault restore first
            ABORT.set()
            all_done.set()
            inj.join(30)
        report = cl.stop()
        ABORT.clear()
        if old_prof is None:
            os.environ.pop(PROFILES_ENV, None)
        else:
            os.environ[PROFILES_ENV] = old_prof
        all_done.set()
        if report["leftovers"]:
            notes.append(f"killed {len(report['leftovers'])} process(es) left behind at the stop")
    dispatched = [d["trace_id"] for _, d in read_jsonl(paths.dispatch_path(rid))]
    checks.insert(0, check_records(done, failed, dispatched, cfg.max_attempts))
    audit_check, _ = run_parse(rid, cfg.plots)
    inv_path = paths.cts_dir(rid) / "invocations.jsonl"
    inv = [i for _, i in read_jsonl(inv_path)] if inv_path.exists() else []
    checks.insert(1, check_cts(inv, done, failed))
    checks.insert(2, check_outputs(rid, cl.node_ids, inv, done))
    checks.append(audit_check)
    stats = recovery_stats(flog.records)
    elapsed = time.monotonic() - t_start
    paths.chaos_report_path(rid).write_text(json.dumps({
        "run_id": rid, "config": {**asdict(cfg), "run_id": rid}, "elapsed_s": round(elapsed, 1),
        "ok": all(c.ok for c in checks), "checks": [asdict(c) for c in checks], "recovery": stats,
        "faults": dict(inj.counts) if inj else {}, "notes": notes}, indent=1) + "\n")
    print_report(checks, stats, elapsed, rid, notes)
    return 0 if all(c.ok for c in checks) else EXIT_FAILURE


# ---- command line ----


def parse_args(argv: list[str] | None = None) -> ChaosConfig:
    """Flags; each defaults to the environment variable in brackets (``make chaos NODES=3 TOTAL=100``)."""
    import argparse

    p = argparse.ArgumentParser(prog="chaos.py", description=__doc__.split("\n\n")[0] + " Every flag defaults to "
                                "the environment variable in brackets.")
    p.add_argument("--run-id", default=env_setting("CHAOS_RUN_ID", None),
                   help="[CHAOS_RUN_ID] run id (default: a new chaos-... id; run_id.env is not touched)")
    p.add_argument("--nodes", type=int, default=env_setting("NODES", 4, int), help="[NODES] emulated nodes (4)")
    p.add_argument("--total", type=int, default=env_setting("TOTAL", 300, int), help="[TOTAL] synthetic tasks (300)")
    p.add_argument("--seed", type=int, default=env_setting("SEED", 20250901, int),
                   help="[SEED] seeds the task sequence and the fault schedule (20250901)")
    p.add_argument("--seconds", type=float, default=env_setting("TASK_SECONDS", 0.2, float),
                   help="[TASK_SECONDS] length of each synthetic clip, 160x120 (0.2)")
    p.add_argument("--fault-gap", type=float, nargs=2, metavar=("MIN", "MAX"),
                   default=[env_setting("FAULT_GAP_MIN", 1.0, float), env_setting("FAULT_GAP_MAX", 3.0, float)],
                   help="[FAULT_GAP_MIN FAULT_GAP_MAX] seconds between two faults (1 3)")
    p.add_argument("--cut", type=float, default=env_setting("CUT_S", 2 * HEARTBEAT_TTL_S, float),
                   help=f"[CUT_S] seconds a node stays cut off, > the heartbeat TTL ({2 * HEARTBEAT_TTL_S:g})")
    p.add_argument("--duration", type=float, default=env_setting("DURATION", 120.0, float),
                   help="[DURATION] feed the tasks in batches, one per fault, over about this many seconds; "
                        "0 = all at once (120)")
    p.add_argument("--max-attempts", type=int, default=env_setting("MAX_ATTEMPTS", 5, int),
                   help="[MAX_ATTEMPTS] scheduler --max-attempts (5)")
    p.add_argument("--timeout", type=float, default=env_setting("TIMEOUT", 540.0, float),
                   help="[TIMEOUT] seconds the tasks may take (540)")
    p.add_argument("--faults", default=env_setting("FAULTS", None),
                   help="[FAULTS] fixed comma-separated fault sequence, e.g. worker,cut (default: each kind once in "
                        "random order, then random faults until every task finished)")
    p.add_argument("--netns", default=env_setting("NETNS", None), choices=["auto", "0", "1"],
                   help="[NETNS] auto (default): namespaces when possible; 0: plain processes (cut = SIGSTOP)")
    p.add_argument("--no-plots", action="store_true", help="skip the audit's PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if not 1 <= a.nodes <= 64:
        raise UsageError(f"NODES must be 1..64 (got {a.nodes})")
    if a.total < 1:
        raise UsageError(f"TOTAL must be >= 1 (got {a.total})")
    if a.cut <= HEARTBEAT_TTL_S:
        raise UsageError(f"CUT_S must exceed the heartbeat TTL of {HEARTBEAT_TTL_S:g} s (got {a.cut:g})")
    if not 0 < a.seconds <= 60:
        raise UsageError(f"TASK_SECONDS must be in (0, 60] (got {a.seconds:g})")
    if a.fault_gap[0] < 0 or a.fault_gap[1] < a.fault_gap[0]:
        raise UsageError("--fault-gap needs 0 <= MIN <= MAX")
    if a.duration < 0:
        raise UsageError("DURATION must be >= 0")
    if a.max_attempts < 1:
        raise UsageError("MAX_ATTEMPTS must be >= 1")
    faults = None
    if a.faults:
        faults = tuple(f.strip() for f in a.faults.split(",") if f.strip())
        bad = [f for f in faults if f not in FAULTS]
        if bad:
            raise UsageError(f"unknown fault {bad[0]!r} (known: {', '.join(FAULTS)})")
    return ChaosConfig(run_id=a.run_id, nodes=a.nodes, total=a.total, seed=a.seed, seconds=a.seconds,
                       gap_s=(a.fault_gap[0], a.fault_gap[1]), cut_s=a.cut, duration_s=a.duration,
                       max_attempts=a.max_attempts, timeout_s=a.timeout, faults=faults, netns=a.netns,
                       plots=not a.no_plots, progress=not a.no_progress)


def _sigterm(signum, frame):  # a terminated chaos run cleans up like a Ctrl-C'd one
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point of tools/chaos.py."""
    signal.signal(signal.SIGTERM, _sigterm)
    return run_chaos(parse_args(argv))
