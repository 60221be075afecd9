"""Daemons survive every Redis error: the one place that classifies them, and the retry loop with backoff.

Classification (:func:`classify`, table :data:`ERROR_CLASSES`, documented in docs/faults.md "Redis errors"):

    transient  the connection broke or Redis is starting (ConnectionError, TimeoutError, LOADING, OSError):
               retry with backoff, one log line "Redis unavailable" when it starts and one when it is back
    retry      an error reply for a state of the server that an operator or time fixes (OOM, READONLY,
               MISCONF, NOREPLICAS, NOPERM, BUSY, NOAUTH, ...; and any error reply not known to be fatal):
               retry with backoff, one log line "Redis refused" when it starts and one when it is back
    fatal      an error reply no wait can fix (WRONGTYPE: a key of the wrong type; an unknown command: Redis
               too old): :class:`RedisFatal` with a one-line message; the daemon exits (exit code 2)

Backoff: 0.2 s doubling to 5 s, each wait jittered to 50-100 % of it, so a daemon makes at most a few calls
per second per loop while Redis refuses. Scripts are EVALSHA'd by redis-py, which reloads them after a restart
(NOSCRIPT). A :class:`tracekit.control.health.Health` given to the :class:`Retrier` publishes the degraded state
(``status`` shows it).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable, TypeVar

import redis

from tracekit.core.errors import RedisUnavailable

T = TypeVar("T")
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, ConnectionError, OSError)
BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 5.0

# error-reply code (first word of the reply) -> (class, what it means); codes not listed are "retry"
ERROR_CLASSES: dict[str, tuple[str, str]] = {
    "LOADING": ("transient", "Redis is loading its data set"),
    "OOM": ("retry", "Redis is over maxmemory and refuses writes"),
    "READONLY": ("retry", "Redis is a read-only replica (after a failover?)"),
    "MISCONF": ("retry", "Redis cannot persist (disk full?) and refuses writes"),
    "NOREPLICAS": ("retry", "Redis has fewer good replicas than min-replicas-to-write"),
    "NOPERM": ("retry", "the Redis ACL user may not run this command or key"),
    "NOAUTH": ("retry", "Redis asks for a password (restarted with requirepass?)"),
    "WRONGPASS": ("retry", "Redis rejects the password (changed?)"),
    "BUSY": ("retry", "a script or module is running too long on Redis"),
    "TRYAGAIN": ("retry", "Redis asks to try again"),
    "MASTERDOWN": ("retry", "the replica lost its master"),
    "CLUSTERDOWN": ("retry", "the Redis cluster is down"),
    "NOSCRIPT": ("retry", "the script cache was flushed"),
    "EXECABORT": ("retry", "a transaction was aborted"),
    "WRONGTYPE": ("fatal", "a control-plane key holds the wrong type (another program wrote it? "
                           "admin.py clean)"),
    "ERR unknown command": ("fatal", "this Redis lacks a command Tracekit needs (Redis >= 6.2 required)"),
}


class RedisFatal(RedisUnavailable):
    """A Redis error reply no retry can get past: the daemon stops with this one line (exit code 2)."""


def error_code(exc: BaseException) -> str:
    """The error-reply code (``OOM``, ``NOPERM``, ...; ``ERR`` for a generic reply; '' when not a reply)."""
    if not isinstance(exc, redis.ResponseError):
        return ""
    text = str(exc).strip()
    # redis-py strips the code of some replies it maps to a class; give it back
    E = redis.exceptions
    for cls, code in ((E.OutOfMemoryError, "OOM"), (E.ReadOnlyError, "READONLY"),
                      (E.NoPermissionError, "NOPERM"), (E.NoScriptError, "NOSCRIPT"),
                      (E.TryAgainError, "TRYAGAIN")):
        if isinstance(exc, cls) and not text.startswith(code):
            return code
    word = text.split(" ", 1)[0]
    return word if word.isupper() else "ERR"


def classify(exc: BaseException) -> tuple[str, str]:
    """``(class, meaning)`` of an exception met while talking to Redis: class is transient, retry or fatal."""
    if isinstance(exc, redis.ResponseError):
        text = str(exc)
        for prefix, verdict in ERROR_CLASSES.items():
            if " " in prefix and text.startswith(prefix):
                return verdict
        code = error_code(exc)
        if code in ERROR_CLASSES:
            return ERROR_CLASSES[code]
        return "retry", "Redis answered with an error"
    if isinstance(exc, TRANSIENT):
        return "transient", "the connection to Redis broke"
    if isinstance(exc, redis.RedisError):
        return "retry", "the Redis client failed"
    return "fatal", "not a Redis error"


def backoff_delays(first: float = BACKOFF_FIRST_S, cap: float = BACKOFF_MAX_S, rng: random.Random | None = None):
    """Endless jittered waits: ``first`` doubling to ``cap``, each drawn in [50 %, 100 %] of its step."""
    rng = rng or random.Random()
    step = first
    while True:
        yield step * rng.uniform(0.5, 1.0)
        step = min(step * 2, cap)


def short(exc: BaseException, limit: int = 160) -> str:
    """One line naming the error (no traceback), for logs and health records."""
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text[:limit]}"


class Retrier:
    """Calls a function until it succeeds, with jittered exponential backoff; ``stop`` event aborts.

    Transient errors and error replies of class ``retry`` are retried (one log line when Redis starts failing
    and one when it is back); ``fatal`` ones raise :class:`RedisFatal`. When ``stop`` is set, the error is
    re-raised instead of retried, except for ``forever`` calls (completions: a finished task's result must
    reach Redis). ``health`` (optional) is told when this retrier is degraded and when it recovers.
    """

    def __init__(self, log: logging.Logger, stop: threading.Event | None = None, health=None) -> None:
        self.log = log
        self.stop = stop or threading.Event()
        self.health = health
        self._down = False
        self._lock = threading.Lock()
        self.failures = 0  # error replies and connection errors seen (tests, status)

    def __call__(self, operation: Callable[[], T], what: str, forever: bool = False) -> T:
        delays = backoff_delays()
        forever = forever or what == "complete"
        while True:
            try:
                out = operation()
            except (redis.RedisError, *TRANSIENT) as exc:
                kind, meaning = classify(exc)
                self.failures += 1
                if kind == "fatal":
                    self.log.error("Redis error no retry can fix (%s: %s): %s", what, short(exc), meaning)
                    raise RedisFatal(f"Redis answered {what} with {short(exc)}: {meaning}") from None
                self._went_down(what, kind, meaning, exc)
                if self.stop.wait(next(delays)) and not forever:
                    raise
                continue
            self._came_back(what)
            return out

    def _went_down(self, what: str, kind: str, meaning: str, exc: BaseException) -> None:
        with self._lock:
            first = not self._down
            self._down = True
        if first:
            if kind == "transient":
                self.log.warning("Redis unavailable (%s: %s); retrying with backoff", what, exc.__class__.__name__)
            else:
                self.log.warning("Redis refused %s (%s): %s; retrying with backoff", what, short(exc), meaning)
        if self.health is not None:
            self.health.problem(what, kind, f"{short(exc)} ({meaning})")

    def _came_back(self, what: str) -> None:
        with self._lock:
            was = self._down
            self._down = False
        if was:
            self.log.warning("Redis is back")
        if self.health is not None:
            self.health.ok(what)


def sleep_until(event: threading.Event, seconds: float) -> bool:
    """Sleep up to ``seconds`` unless ``event`` is set; True if it was set."""
    return event.wait(max(0.0, seconds))


def monotonic() -> float:
    return time.monotonic()
