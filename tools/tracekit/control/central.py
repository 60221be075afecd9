"""The central scheduler loop: place (Lua, atomic), drain the controller log, reap dead nodes, sleep.

It never polls: between rounds it blocks on the ``wake`` list (pushed by the dispatcher, worker
completions, registrations, recoveries) with a timeout equal to the time left until the next reap
(``--reap-interval``, default 1 s). A lock key (TTL 5 s, refreshed every round) keeps a second
scheduler of the same prefix from running; a lock left by a dead scheduler on this host is taken over at
once (its pid is gone), one from another host expires within 5 s.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis

from tracekit.control.head_gate import HeadGate, read_head
from tracekit.control.health import Health
from tracekit.control.lua import Scripts
from tracekit.control.placement import ORDERS, WEIGHERS
from tracekit.control.redis_retry import Retrier
from tracekit.core import paths
from tracekit.core.errors import Conflict, UsageError
from tracekit.core.keys import Keys

LOCK_TTL_MS = 5000
LOCK_REFRESH_S = LOCK_TTL_MS / 1000 / 3  # the longest wait between two refreshes of the lock, whatever --reap-interval
SWITCH_INTERVAL_S = 0.0005
log = logging.getLogger("scheduler_central")


@dataclass
class SchedulerConfig:
    """Settings of one scheduler run (the script's flags)."""

    run_id: str
    weigher: str = ""
    order: str = "min"
    max_attempts: int = 3
    batch: int = 256
    reap_interval: float = 1.0
    log_candidates: bool = False  # placements.jsonl lists every feasible node (O(nodes) per placement; debugging)
    exit_when_idle: bool = False  # tests/bench: stop once q:pending is empty (after a final drain)


def _sid(s: str) -> tuple[int, int]:
    a, _, b = s.partition("-")
    return int(a), int(b or 0)


def last_sid(path: Path) -> tuple[int, int]:
    """The stream id of the last complete line of a controller log file ((0, 0) when none)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            tail = fh.read()
    except FileNotFoundError:
        return (0, 0)
    for line in reversed(tail.split(b"\n")):
        try:
            sid = json.loads(line).get("sid")
        except (ValueError, AttributeError):
            continue
        if isinstance(sid, str):
            return _sid(sid)
    return (0, 0)


class LogDrain:
    """Moves ``controller:log`` stream entries into placements.jsonl / controller/events.jsonl, each once."""

    def __init__(self, client: redis.Redis, keys: Keys, run_id: str) -> None:
        self.client, self.keys = client, keys
        self.files = {"p": paths.placements_path(run_id), "c": paths.controller_dir(run_id) / "events.jsonl"}
        self.last = {f: last_sid(p) for f, p in self.files.items()}
        self.written = 0
        self.lock = threading.Lock()  # one drain at a time, whichever thread calls it
        # the same connections, without redis-py's XRANGE reply parsing (the drain reads the bare reply faster)
        self.raw = redis.Redis(connection_pool=client.connection_pool)
        self.raw.response_callbacks.pop("XRANGE", None)

    def drain(self) -> int:
        """Write every pending entry; returns the number of lines written."""
        with self.lock:
            return self._drain()

    def _drain(self) -> int:
        n = 0
        while True:
            entries = read_log_entries(self.raw, self.keys.controller_log, 2000)
            if not entries:
                return n
            out: dict[str, list[bytes]] = {f: [] for f in self.files}
            pos = dict(self.last)  # committed only once the lines are written
            for sid, fields in entries:
                f, rec = fields.get("f"), fields.get("r") or ""
                at = _sid(sid)
                if f not in self.files or at <= pos[f]:
                    continue  # written before a crash, not yet deleted
                out[f].append(log_line(rec, sid))
                pos[f] = at
                n += 1
            for f, chunk in out.items():
                if chunk:  # a failed write raises before its position moves and before anything is deleted
                    _append_all(self.files[f], b"".join(chunk))
                self.last[f] = pos[f]
            # the entries read are the stream's first ones (ids only grow: every XADD uses '*'), so trimming
            # below the next id deletes exactly them, without sending every id back (XDEL)
            ms, seq = _sid(entries[-1][0])
            self.client.xtrim(self.keys.controller_log, minid=f"{ms}-{seq + 1}", approximate=False)
            self.written += n


def read_log_entries(client: redis.Redis, key: str, count: int) -> list[tuple[str, dict]]:
    """The first ``count`` entries of a log stream, read as bytes (never decoded by the client: one entry that is
    not UTF-8 must not stop the drain), with the ids and field names as text and the values as bytes (the ``f``
    field as text). Takes the reply parsed by redis-py or bare (a client without the XRANGE callback)."""
    from redis.client import NEVER_DECODE

    raw = client.execute_command("XRANGE", key, "-", "+", "COUNT", count, **{NEVER_DECODE: True}) or []
    out = []
    for sid, fields in raw:
        sid = sid.decode("ascii", "replace") if isinstance(sid, bytes) else str(sid)
        if isinstance(fields, dict):
            fields = [x for kv in fields.items() for x in kv]
        fields = fields or []
        if len(fields) == 4 and fields[0] == b"f" and fields[2] == b"r":  # what every step writes: f, then r
            f = fields[1]
            out.append((sid, {"f": f.decode("utf-8", "replace") if isinstance(f, bytes) else f, "r": fields[3]}))
            continue
        it = iter(fields)
        out.append((sid, {(k.decode("utf-8", "replace") if isinstance(k, bytes) else k):
                          (v.decode("utf-8", "replace") if k in (b"f", "f") and isinstance(v, bytes) else v)
                          for k, v in zip(it, it)}))
    return out


def log_line(rec: bytes | str, sid: str) -> bytes:
    """One JSON line for a stream record with its stream id spliced in. A record that is not a JSON object in
    valid UTF-8 is kept whole, escaped, as ``{"raw": ...}``: the line is always valid JSON."""
    if isinstance(rec, str):
        rec = rec.encode("utf-8", "surrogateescape")
    try:
        rec.decode("utf-8")
        whole = rec[:1] == b"{" and rec[-1:] == b"}"
    except UnicodeDecodeError:
        whole = False
    if not whole:
        rec = json.dumps({"raw": rec.decode("utf-8", "backslashreplace")}).encode()
    # the record is a JSON object from cjson: splice the stream id in without re-encoding
    return b"%s%s\"sid\":\"%s\"}\n" % (rec[:-1], b"," if len(rec) > 2 else b"", sid.encode())


def _append_all(path: Path, data: bytes) -> None:
    """One O_APPEND write of many complete lines (a crash leaves whole lines; the stream ids dedupe a retry)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(client: redis.Redis, keys: Keys, owner: str) -> None:
    """Take the scheduler lock or raise :class:`Conflict` naming the holder."""
    if client.set(keys.scheduler_lock, owner, nx=True, px=LOCK_TTL_MS):
        return
    holder = client.get(keys.scheduler_lock) or ""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
        client.set(keys.scheduler_lock, owner, px=LOCK_TTL_MS)  # its previous owner died on this host
        return
    raise Conflict(f"another central scheduler holds {keys.scheduler_lock} ({holder}); stop it first "
                   "(or wait 5 s if it died on another host)")


def run(client: redis.Redis, keys: Keys, cfg: SchedulerConfig, stop: threading.Event | None = None) -> int:
    """Run the scheduler until SIGINT/SIGTERM (or until idle with ``exit_when_idle``)."""
    if cfg.weigher not in WEIGHERS or cfg.order not in ORDERS:
        raise UsageError(f"--weigher must be one of {WEIGHERS} and --weigher-order one of {ORDERS}")
    if cfg.max_attempts < 1:
        raise UsageError("--max-attempts must be >= 1")
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():  # the daemon's own process
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        # the log drain's thread parses thousands of entries at a time: the placement loop, woken by a reply,
        # must not wait the default 5 ms for the interpreter lock (enqueue -> placement latency, Redis left idle)
        sys.setswitchinterval(SWITCH_INTERVAL_S)
    me = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    health = Health(client, keys, "scheduler")
    retry = Retrier(log, stop, health)
    retry(lambda: acquire_lock(client, keys, me), "lock")
    health.clear()  # a record left by a killed predecessor
    retry(lambda: client.hset(keys.config, "max_attempts", cfg.max_attempts), "config")
    scripts = Scripts(client, keys)
    # the placement index, rebuilt from the node keys
    indexed = retry(lambda: scripts.reindex(args=[cfg.weigher, cfg.order]), "reindex")
    drain = LogDrain(client, keys, cfg.run_id)
    # the log drain runs beside placement (its own thread): a placement round is then one PLACE call, and Redis
    # places the next batch while the last one's lines are written
    drain_wake, drain_stop = threading.Event(), threading.Event()

    def drain_loop() -> None:
        while not drain_stop.is_set():
            drain_wake.wait(0.2)
            drain_wake.clear()
            try:
                drain.drain()
            except OSError as exc:  # the records stay in the stream and are written once the disk is back
                log.error("cannot write the controller logs (%s); will retry", exc)
                drain_stop.wait(0.5)
            except redis.RedisError:  # the placement loop reports and rides out a Redis outage
                drain_stop.wait(0.1)

    drainer = threading.Thread(target=drain_loop, name="log-drain", daemon=True)
    drainer.start()
    log.info("central scheduler up (weigher=%r order=%s max_attempts=%d run=%s, %s node(s) with free capacity)",
             cfg.weigher, cfg.order, cfg.max_attempts, cfg.run_id, indexed)
    total_placed, next_reap, last_report = 0, 0.0, time.monotonic()
    gate = HeadGate()
    # how much of the head to read and check for the next round: about what the last rounds placed (a head that
    # waits for capacity is not read whole again every round)
    want = 16

    own = [keys.scheduler_lock], [me, LOCK_TTL_MS, ""]

    def lock_and_head(wait: float | None = None) -> tuple[list, list[bytes]]:
        # check and refresh the lock (the OWN step: taken again if it expired, never from another) and read the
        # head, this round's and the next's, in one round trip; with a wait, the wake list is waited on first in
        # the same pipeline, so the head is read the moment the scheduler is woken
        pipe = client.pipeline(transaction=False)
        if wait is not None:
            pipe.blpop([keys.wake], timeout=wait)
        scripts.own(keys=own[0], args=own[1], client=pipe)
        read_head(pipe, keys.pending, 2 * want)
        *woke, lock, head = pipe.execute(raise_on_error=False)
        for reply in (*woke, head):
            if isinstance(reply, Exception):
                raise reply
        if isinstance(lock, Exception):
            lock = scripts.own(keys=own[0], args=own[1])  # e.g. the library was lost: the usual call loads it
        return lock, head

    def round_once(read: list) -> tuple[int, str]:
        # read: the lock and head read when the wait ended (taken once: a retried round reads them again)
        nonlocal want
        lock, head = read.pop() if read else lock_and_head()
        held, holder = lock
        if not int(held):
            raise Conflict(f"lost the scheduler lock to {holder}; exiting")
        finish = scripts.place.begin([cfg.weigher, cfg.order, cfg.batch, "1" if cfg.log_candidates else "0",
                                      *gate.place_args(head[:want])])
        try:
            gate.warm(head[want:])  # the next round's head, checked while Redis places this one's
        finally:
            placed, status = finish()
        want = min(cfg.batch, max(16, 2 * int(placed)))
        drain_wake.set()
        return int(placed), status

    read: list = []
    try:
        while not stop.is_set():
            try:
                placed, status = retry(lambda r=read: round_once(r), "place")
            except redis.RedisError:
                if stop.is_set():
                    break
                raise
            total_placed += placed
            now = time.monotonic()
            if now >= next_reap:
                def reap() -> list:
                    client.hset(keys.config, "max_attempts", cfg.max_attempts)  # survives a Redis restart
                    return scripts.reap()

                dead, back, failed = retry(reap, "reap")
                if dead:
                    log.warning("recovered %d dead node(s): %d task(s) requeued, %d failed", dead, back, failed)
                    drain_wake.set()
                next_reap = now + cfg.reap_interval
            if now - last_report >= 10 and total_placed:
                log.info("placed %d task(s) so far", total_placed)
                last_report = now
            if status == "limit":
                continue
            if cfg.exit_when_idle and status == "empty":
                break
            timeout = max(0.05, min(cfg.reap_interval, next_reap - time.monotonic(), LOCK_REFRESH_S))
            try:
                read = [retry(lambda t=timeout: lock_and_head(t), "wait")]
            except redis.RedisError:
                if stop.is_set():
                    break
                raise
    finally:
        drain_stop.set()
        drainer.join()
        try:
            drain.drain()  # what the last rounds logged
        except (OSError, redis.RedisError) as exc:
            log.error("controller log records left in Redis (%s); the next scheduler writes them", exc)
        try:
            if client.get(keys.scheduler_lock) == me:
                client.delete(keys.scheduler_lock)
        except redis.RedisError:
            pass
        health.clear()
    log.info("central scheduler stopped after %d placement(s)", total_placed)
    return 0
