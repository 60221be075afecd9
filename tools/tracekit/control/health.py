"""Daemon health, published for ``status``, and threads that never die silently.

:class:`Health` keeps what is failing in one daemon (per operation: take, complete, place, ...) and writes it to
the ``health`` hash (field = the daemon, e.g. ``worker:n1`` or ``scheduler``; value = JSON ``{state, since_ms,
problems}``); the field is deleted once everything works again. Writing may itself be refused (a Redis that
refuses writes refuses this one too): it is retried after the next successful call, and ``status`` also reads
the server's own reasons to refuse writes (:func:`redis_write_blockers`).

:func:`guarded` wraps a thread's target: an exception that escapes it is logged with its traceback and handed to
``on_crash`` (the daemon then stops loudly) instead of ending the thread with a line on stderr nobody reads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from typing import Callable

import redis

from tracekit.core.keys import Keys


class Health:
    """The degraded/ok state of one daemon, mirrored (best effort) into the ``health`` hash."""

    def __init__(self, client: redis.Redis, keys: Keys, daemon: str) -> None:
        self.client, self.keys, self.daemon = client, keys, daemon
        self._lock = threading.Lock()
        self.problems: dict[str, str] = {}
        self.since_ms: int | None = None
        self._dirty = False

    @property
    def degraded(self) -> bool:
        return bool(self.problems)

    def problem(self, what: str, kind: str, detail: str) -> None:
        with self._lock:
            if self.problems.get(what) == f"{kind}: {detail}":
                return
            self.problems[what] = f"{kind}: {detail}"
            self.since_ms = self.since_ms or int(time.time() * 1000)
            self._dirty = True
        self.flush()

    def ok(self, what: str) -> None:
        with self._lock:
            if what in self.problems:
                del self.problems[what]
                if not self.problems:
                    self.since_ms = None
                self._dirty = True
            if not self._dirty:
                return
        self.flush()

    def flush(self) -> None:
        """Write the current state; on failure it stays dirty and the next call tries again."""
        with self._lock:
            if not self._dirty:
                return
            record = ({"state": "degraded", "since_ms": self.since_ms, "problems": dict(self.problems)}
                      if self.problems else None)
            self._dirty = False
        try:
            if record is None:
                self.client.hdel(self.keys.health, self.daemon)
            else:
                self.client.hset(self.keys.health, self.daemon, json.dumps(record, separators=(",", ":")))
        except (redis.RedisError, OSError):
            with self._lock:
                self._dirty = True

    def clear(self) -> None:
        """The daemon stops: remove its record (best effort)."""
        with contextlib.suppress(redis.RedisError, OSError):
            self.client.hdel(self.keys.health, self.daemon)


def guarded(target: Callable[[], None], name: str, log: logging.Logger,
            on_crash: Callable[[BaseException], None]) -> Callable[[], None]:
    """``target`` for a thread: an escaping exception is logged (with traceback) and passed to ``on_crash``."""
    def run() -> None:
        try:
            target()
        except Exception as exc:
            log.critical("thread %s died: %s: %s", name, exc.__class__.__name__, exc, exc_info=True)
            on_crash(exc)
    return run


def read_health(client: redis.Redis, keys: Keys) -> dict[str, dict]:
    """The ``health`` hash: daemon -> record (unreadable records are reported as such)."""
    out = {}
    for daemon, raw in (client.hgetall(keys.health) or {}).items():
        try:
            rec = json.loads(raw)
            out[daemon] = rec if isinstance(rec, dict) else {"state": "unreadable"}
        except ValueError:
            out[daemon] = {"state": "unreadable"}
    return out


def redis_write_blockers(client: redis.Redis) -> list[str]:
    """Why this Redis refuses writes right now, from INFO (empty when it accepts them or INFO is denied)."""
    try:
        info = client.info()
    except (redis.RedisError, OSError):
        return []
    out = []
    maxmem, used = int(info.get("maxmemory", 0) or 0), int(info.get("used_memory", 0) or 0)
    if maxmem and used > maxmem and str(info.get("maxmemory_policy", "")) == "noeviction":
        out.append(f"used_memory {used} > maxmemory {maxmem} (OOM: writes refused)")
    if info.get("role") in ("slave", "replica"):
        out.append("this Redis is a replica (READONLY: writes refused)")
    if info.get("aof_last_write_status") == "err" or info.get("rdb_last_bgsave_status") == "err":
        out.append("Redis failed to persist (MISCONF: writes may be refused)")
    try:
        need = int(client.config_get("min-replicas-to-write").get("min-replicas-to-write", 0))
    except (redis.RedisError, OSError, ValueError):
        need = 0
    if need and int(info.get("connected_slaves", 0) or 0) < need:
        out.append(f"min-replicas-to-write {need} but {info.get('connected_slaves', 0)} replica(s) (NOREPLICAS)")
    return out
