"""Daemons survive a Redis restart or outage: retry with backoff, one log line when it breaks and one when
it is back. Scripts are EVALSHA'd by redis-py, which reloads them after a restart (NOSCRIPT)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, TypeVar

import redis

T = TypeVar("T")
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, ConnectionError, OSError)


class Retrier:
    """Calls a function until it succeeds; backoff 0.2 s doubling to 5 s; ``stop`` event aborts."""

    def __init__(self, log: logging.Logger, stop: threading.Event | None = None) -> None:
        self.log = log
        self.stop = stop or threading.Event()
        self._down = False
        self._lock = threading.Lock()

    def __call__(self, operation: Callable[[], T], what: str) -> T:
        delay = 0.2
        while True:
            try:
                out = operation()
            except TRANSIENT as exc:
                with self._lock:
                    if not self._down:
                        self._down = True
                        self.log.warning("Redis unavailable (%s: %s); retrying with backoff", what,
                                         exc.__class__.__name__)
                if self.stop.wait(delay) and what != "complete":
                    raise
                delay = min(delay * 2, 5.0)
                continue
            with self._lock:
                if self._down:
                    self._down = False
                    self.log.warning("Redis is back")
            return out


def sleep_until(event: threading.Event, seconds: float) -> bool:
    """Sleep up to ``seconds`` unless ``event`` is set; True if it was set."""
    return event.wait(max(0.0, seconds))


def monotonic() -> float:
    return time.monotonic()
